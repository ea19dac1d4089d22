"""A blockwise-quantised frozen base for LoRA (model.quantize): the nf4 / int8 round trip against a numpy
reference of the same scheme, the quantised model against the float model, a tiny 4-bit LoRA run (it trains,
checkpoints, and exports adapters merged into the dequantised base that transformers loads), config errors."""
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import transformers
from flax import nnx, traverse_util

import jaxmath
from jaxmath.models.config import LORA_TARGETS as PROJECTIONS  # the names of all seven projection kernels
from jaxmath.models.quantize import (QuantizedKernel, is_quantized, pack_nibbles, quantize_kernel, quantize_params,
                                     unpack_nibbles)
from jaxmath.models.transformer import build_model
from tiny_hf import hf_logits, left_padded_batch, save_tiny, tiny_model

pytest.importorskip("qwix")

# QLoRA's NormalFloat4 code book (Dettmers et al. 2023, "QLoRA", appendix E), typed from the paper.
NF4_CODE = np.array([-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
                     -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
                     0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
                     0.7229568362236023, 1.0], np.float32)
BLOCK = 16  # divides the tiny models' input dims (hidden 64, intermediate 112, head_dim 16)


def reference_quantize(w: np.ndarray, kind: str, block: int) -> tuple[np.ndarray, np.ndarray]:
    """(codes [..., in], scale [..., in / block]) by the scheme's definition: per block of `block` weights along
    the last dim, absmax; nf4: the nearest code to w / absmax; int8: round(w / s), s = absmax / 127.5, clipped
    to [-128, 127]. An all-zero block gets scale 1 (any scale dequantises it to 0)."""
    blocks = w.astype(np.float32).reshape(*w.shape[:-1], -1, block)
    absmax = np.abs(blocks).max(axis=-1, keepdims=True)
    scale = absmax / np.float32(1.0 if kind == "nf4" else 127.5)
    scale = np.where(absmax == 0, np.float32(1.0), scale).astype(np.float32)
    x = blocks / scale
    if kind == "nf4":
        codes = np.abs(x[..., None] - NF4_CODE).argmin(axis=-1).astype(np.uint8)
    else:
        codes = np.clip(np.round(x), -128, 127).astype(np.int8)
    return codes.reshape(w.shape), scale[..., 0]


def near_tie(w: np.ndarray, scale: np.ndarray, kind: str) -> np.ndarray:
    """Where w / scale lies within float error of the midpoint between two quantisation levels."""
    x = (w.reshape(*scale.shape, -1) / scale[..., None]).reshape(w.shape)
    if kind == "nf4":
        midpoints = (NF4_CODE[1:] + NF4_CODE[:-1]) / 2
        return np.abs(x[..., None] - midpoints).min(axis=-1) < 1e-5
    return np.abs(np.abs(x) % 1 - 0.5) < 1e-4


def reference_dequantize(codes: np.ndarray, scale: np.ndarray, kind: str) -> np.ndarray:
    values = NF4_CODE[codes] if kind == "nf4" else codes.astype(np.float32)
    return (values.reshape(*scale.shape, -1) * scale[..., None]).reshape(codes.shape)


def ours_codes(kernel: QuantizedKernel) -> np.ndarray:
    return np.asarray(unpack_nibbles(kernel.codes) if kernel.kind == "nf4" else kernel.codes)


@pytest.mark.parametrize("kind", ["nf4", "int8"])
def test_round_trip_matches_a_numpy_reference_of_the_scheme(kind):
    rng = np.random.default_rng(0)
    w = rng.standard_normal((3, 5, 4 * BLOCK)).astype(np.float32) * rng.uniform(0.01, 2, (3, 5, 1)).astype(np.float32)
    w[0, 0, :BLOCK] = 0.0  # an all-zero block
    w[1, 2, 3] = -np.abs(w[1, 2, :BLOCK]).max() * 1.5  # a block whose absmax is negative
    kernel = quantize_kernel(jnp.asarray(w), kind, BLOCK)
    codes, scale = reference_quantize(w, kind, BLOCK)
    np.testing.assert_allclose(np.asarray(kernel.scale), scale, rtol=3e-7)  # absmax / 127.5: XLA may round it 1 ulp off
    # Codes agree except at rounding ties (w / scale within float error of a midpoint between two levels, e.g. a
    # block's negative absmax at -127.5 for int8), where XLA's w * (1 / scale) and numpy's w / scale may fall
    # either side; both neighbouring codes are then right.
    ours, tie = ours_codes(kernel), near_tie(w, scale, kind)
    np.testing.assert_array_equal(ours[~tie], codes[~tie])
    assert np.all(np.abs(ours[tie].astype(int) - codes[tie].astype(int)) <= 1)
    assert tie.mean() < 2 / BLOCK  # int8: about one a block (its absmax at +-127.5); nf4: rare
    dequantized = np.asarray(kernel.dequantize(jnp.float32))
    np.testing.assert_allclose(dequantized, reference_dequantize(ours, scale, kind), rtol=1e-6)
    # the scheme's own error bound: half the widest gap between neighbouring levels, times the block's absmax
    absmax = np.repeat(np.abs(w.reshape(3, 5, -1, BLOCK)).max(-1), BLOCK, axis=-1)
    half_gap = np.diff(NF4_CODE).max() / 2 if kind == "nf4" else 0.5 / 127.5
    assert np.all(np.abs(dequantized - w) <= (half_gap + 1e-6) * absmax)  # + float32 rounding of w and code*scale
    assert kernel.shape == w.shape and kernel.block_size == BLOCK
    expected_code_bytes = w.size // 2 if kind == "nf4" else w.size  # two 4-bit codes a byte
    assert kernel.codes.nbytes == expected_code_bytes and kernel.scale.size == w.size // BLOCK


def test_nibble_packing_round_trips_and_puts_the_even_index_low():
    codes = np.random.default_rng(1).integers(0, 16, (3, 10)).astype(np.uint8)
    packed = np.asarray(pack_nibbles(jnp.asarray(codes)))
    np.testing.assert_array_equal(packed, codes[:, 0::2] | (codes[:, 1::2] << 4))
    np.testing.assert_array_equal(np.asarray(unpack_nibbles(jnp.asarray(packed))), codes)


@pytest.fixture(scope="module")
def float_model(tmp_path_factory):
    """A tiny random Qwen2 (every parameter perturbed) loaded with LoRA adapters whose B is random too."""
    base_dir = save_tiny(tiny_model("qwen2"), tmp_path_factory.mktemp("base"))
    model = jaxmath.from_pretrained(base_dir, lora_rank=4, lora_alpha=8.0)
    rng = np.random.default_rng(0)
    flat = {k: (rng.normal(0, 0.05, v.shape).astype(np.float32) if k[-1].endswith("_lora_b") else np.asarray(v))
            for k, v in traverse_util.flatten_dict(nnx.to_pure_dict(nnx.state(model))).items()}
    return nnx.merge(nnx.graphdef(model), traverse_util.unflatten_dict(flat))


def quantized(model, kind: str):
    """`model` with its projection kernels quantised (what the trainer's load_params does after loading)."""
    config = model.config.replace(quantize_weights=kind, quantize_block_size=BLOCK)
    abstract = nnx.eval_shape(lambda: build_model(config))
    params = quantize_params(jax.tree.map(jnp.copy, nnx.to_pure_dict(nnx.state(model))),
                             nnx.to_pure_dict(nnx.state(abstract)))
    return nnx.merge(nnx.graphdef(abstract), params)


def logits(model, ids, mask) -> np.ndarray:
    return np.asarray(model(jnp.asarray(ids), attention_mask=jnp.asarray(mask)))


@pytest.mark.parametrize("kind", ["nf4", "int8"])
def test_quantised_projections_compute_with_the_numpy_dequantised_kernels(float_model, kind):
    """Dequantising inside the projections (layer-stacked, packed, in the scan) changes nothing else: the float
    model with each kernel replaced by the numpy dequantisation of the quantised model's codes and scales gives
    the same logits, adapters included. (The codes themselves are checked in the round-trip test.)"""
    model = quantized(float_model, kind)
    flat = traverse_util.flatten_dict(nnx.to_pure_dict(nnx.state(model)))
    replaced = {path: (reference_dequantize(ours_codes(value), np.asarray(value.scale), kind) if is_quantized(value)
                       else value) for path, value in flat.items()}
    assert sum(is_quantized(value) for value in flat.values()) == len(PROJECTIONS)
    reference = nnx.merge(nnx.graphdef(float_model), traverse_util.unflatten_dict(replaced))
    ids, mask = left_padded_batch()
    real = mask.astype(bool)
    np.testing.assert_allclose(logits(model, ids, mask)[real], logits(reference, ids, mask)[real], atol=2e-5)


@pytest.mark.parametrize("kind", ["nf4", "int8"])
def test_step0_logits_stay_within_the_first_order_quantisation_bound(float_model, kind):
    """Relative logit error <= 3 * num_layers * eps, eps = the largest relative (Frobenius) error of a kernel,
    computed in numpy. Why: a projection's output moves by ~eps of its size (the rounding error is unrelated to
    its input); a decoder layer has at most three quantised projections in sequence (gate/up -> down; v -> o
    has two), the layers' errors add along the residual stream, and the final RMSNorm and the float LM head
    keep relative error. With block 16: nf4 eps ~ 0.08, int8 eps ~ 0.005 (measured: about 2 eps here)."""
    model = nnx.merge(*_zero_lora_b(float_model))  # step 0: B = 0, the LoRA term vanishes
    flat = traverse_util.flatten_dict(nnx.to_pure_dict(nnx.state(model)))
    eps = max(np.linalg.norm(reference_dequantize(*reference_quantize(np.asarray(v), kind, BLOCK), kind) - v)
              / np.linalg.norm(v) for k, v in flat.items() if k[-1] in PROJECTIONS)
    ids, mask = left_padded_batch()
    real = mask.astype(bool)
    exact, approx = logits(model, ids, mask)[real], logits(quantized(model, kind), ids, mask)[real]
    relative = np.linalg.norm(approx - exact) / np.linalg.norm(exact)
    assert 0.1 * eps < relative <= 3 * model.config.num_layers * eps


def _zero_lora_b(model):
    graphdef, state = nnx.split(model)
    flat = {k: (np.zeros_like(v) if k[-1].endswith("_lora_b") else v)
            for k, v in traverse_util.flatten_dict(nnx.to_pure_dict(state)).items()}
    return graphdef, traverse_util.unflatten_dict(flat)


def quantized_run_overrides(base_dir: Path, steps: int, **extra: str) -> list[str]:
    from test_peft import lora_run_overrides

    return lora_run_overrides(base_dir, steps, **{"model.quantize": f"{{weights: nf4, block_size: {BLOCK}}}",
                                                  "mesh.data": 4, "mesh.fsdp": 2, **extra})


@pytest.mark.slow
def test_a_4bit_lora_run_trains_and_exports_adapters_merged_into_the_dequantised_base(tmp_path):
    from jaxmath.config import load_config
    from jaxmath.train.checkpointing import TrainCheckpointer
    from jaxmath.train.config import TrainConfig
    from jaxmath.train.run import abstract_state
    from jaxmath.train.trainer import build_run, train
    from test_peft import arithmetic_base

    tiny = Path(__file__).resolve().parents[1] / "configs" / "sft" / "tiny-cpu.yaml"
    base_dir = arithmetic_base(tmp_path / "base")
    config = load_config(TrainConfig, tiny, quantized_run_overrides(base_dir, steps=12))
    run_dir = tmp_path / "run"
    train(config, run_dir, progress=False)
    losses = [json.loads(line)["loss"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()
              if "loss" in json.loads(line)]
    assert np.mean(losses[-3:]) < 0.9 * np.mean(losses[:3])  # the adapters learn on the 4-bit base (5.5 -> 4.7)

    # the final checkpoint holds the 4-bit base (uint8 codes, two per byte) and the trained adapters
    run = build_run(config, tmp_path / "restore", with_data=False)
    checkpointer = TrainCheckpointer(run_dir / "checkpoints")
    state, _, _ = checkpointer.restore(abstract_state(run))
    checkpointer.close()
    params = jax.device_get(state.params)  # host arrays: the models below run on one device, like their inputs
    kernel = params["model"]["layers"]["mlp"]["down_proj"]
    assert is_quantized(kernel) and kernel.codes.dtype == np.uint8 and kernel.kind == "nf4"
    ours = nnx.merge(run.graphdef, params)

    ids, mask = left_padded_batch(vocab=128)
    real = mask.astype(bool)
    exported = hf_logits(transformers.AutoModelForCausalLM.from_pretrained(run_dir / "hf"), ids, mask)
    np.testing.assert_allclose(exported[real], logits(ours, ids, mask)[real], atol=1e-4)
    # ... which is not the float base plus the adapters: the export carries the 4-bit base's values
    float_base = jaxmath.from_pretrained(base_dir, lora_rank=4, lora_alpha=8.0,
                                         lora_targets=("q_proj", "v_proj", "o_proj", "up_proj", "down_proj"))
    adapters = {k: v for k, v in traverse_util.flatten_dict(params).items() if "_lora_" in k[-1]}
    flat = {k: adapters.get(k, v) for k, v in traverse_util.flatten_dict(nnx.to_pure_dict(nnx.state(float_base)))
            .items()}
    unquantized = logits(nnx.merge(nnx.graphdef(float_base), traverse_util.unflatten_dict(flat)), ids, mask)
    assert np.abs(unquantized - exported)[real].max() > 1e-2


@pytest.mark.parametrize("overrides,message", [
    ({"model.quantize": "{weights: fp4}"}, "model.quantize.weights='fp4'; expected one of"),
    ({"model.quantize": "{weights: nf4, block_size: 7}"}, "model.quantize.block_size=7 must be a positive"),
    ({"model.quantize": "{weights: nf4, bits: 4}"}, "unknown config key.*model.quantize.bits"),
    ({"model.quantize": "{weights: int8}", "model.lora": "null"}, "model.quantize keeps the base frozen"),
])
def test_bad_quantize_settings_are_errors_naming_the_key(tmp_path, overrides, message):
    from jaxmath.config import load_config
    from jaxmath.train.config import TrainConfig

    tiny = Path(__file__).resolve().parents[1] / "configs" / "sft" / "tiny-cpu.yaml"
    with pytest.raises(Exception, match=message):
        load_config(TrainConfig, tiny, quantized_run_overrides(tmp_path, steps=1, **overrides))


def test_a_block_size_not_dividing_an_input_dim_is_an_error_naming_the_key(tmp_path):
    from jaxmath.config import load_config
    from jaxmath.train.config import TrainConfig
    from jaxmath.train.trainer import build_run

    tiny = Path(__file__).resolve().parents[1] / "configs" / "sft" / "tiny-cpu.yaml"
    base_dir = save_tiny(tiny_model("qwen2"), tmp_path / "base")  # head_dim 16, intermediate 112
    config = load_config(TrainConfig, tiny, quantized_run_overrides(
        base_dir, steps=1, **{"model.quantize": "{weights: int8, block_size: 32}"}))
    with pytest.raises(ValueError, match="model.quantize.block_size=32 does not divide the projections' input dim "
                                         "intermediate_size=112"):
        build_run(config, tmp_path / "run", with_data=False)


def test_the_4bit_7b_config_is_the_7b_lora_config_with_an_nf4_base_and_2048_tokens():
    import dataclasses

    from jaxmath.config import load_config
    from jaxmath.train.config import QuantizeSection, TrainConfig

    configs = Path(__file__).resolve().parents[1] / "configs" / "sft"
    base = load_config(TrainConfig, configs / "deepseek-math-7b-lora.yaml")
    quant = load_config(TrainConfig, configs / "deepseek-math-7b-lora-4bit.yaml")
    assert quant.model.quantize == QuantizeSection(weights="nf4", block_size=64)
    assert quant.data.seq_len == 2048
    assert dataclasses.replace(quant, output_dir=base.output_dir, model=dataclasses.replace(quant.model, quantize=None),
                               data=dataclasses.replace(quant.data, seq_len=base.data.seq_len)) == base
