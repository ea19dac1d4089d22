"""PEFT LoRA adapters: jaxmath's export loads in `peft` onto the HF base with the merged model's logits, and
jaxmath loads a PEFT adapter (one peft itself wrote, too) back with peft's logits."""
import json
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import nnx, traverse_util
from safetensors.numpy import load_file, save_file

import jaxmath
from jaxmath.checkpoint import CheckpointError
from jaxmath.checkpoint.peft_io import CONFIG_FILE, WEIGHTS_FILE, save_adapter
from tiny_hf import hf_logits, left_padded_batch, save_tiny, tiny_model

peft = pytest.importorskip("peft")

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def adapted_model(base_dir: Path, seed: int = 0, **lora):
    """A jaxmath model of the base with LoRA factors A and B both random (B starts at zero in training)."""
    model = jaxmath.from_pretrained(base_dir, **{"lora_rank": 4, "lora_alpha": 8.0, **lora})
    rng = np.random.default_rng(seed)
    flat = {k: (rng.normal(0, 0.05, v.shape).astype(np.float32) if "_lora_" in k[-1] else np.asarray(v))
            for k, v in traverse_util.flatten_dict(nnx.to_pure_dict(nnx.state(model))).items()}
    return nnx.merge(nnx.graphdef(model), traverse_util.unflatten_dict(flat))


def peft_logits(base_dir: Path, adapter_dir: Path, ids, mask, token_classification: bool = False) -> np.ndarray:
    auto = (transformers.AutoModelForTokenClassification if token_classification
            else transformers.AutoModelForCausalLM)
    model = peft.PeftModel.from_pretrained(auto.from_pretrained(base_dir), adapter_dir).eval()
    return hf_logits(model, ids, mask)


@pytest.mark.parametrize("model_type,targets", [("qwen2", TARGETS), ("llama", ["q_proj", "v_proj", "down_proj"])])
def test_exported_adapter_loads_in_peft_with_the_merged_logits(tmp_path, model_type, targets):
    hf = tiny_model(model_type)
    base_dir = save_tiny(hf, tmp_path / "base")
    model = adapted_model(base_dir, lora_targets=tuple(targets))
    merged_dir = jaxmath.export_to_hf(model, tmp_path / "merged", hf_config=hf.config.to_dict())
    adapter_dir = save_adapter(tmp_path / "adapter", nnx.to_pure_dict(nnx.state(model)), model.config,
                               base_model=str(base_dir))
    assert json.loads((adapter_dir / CONFIG_FILE).read_text())["target_modules"] == sorted(targets)
    ids, mask = left_padded_batch()
    merged = hf_logits(transformers.AutoModelForCausalLM.from_pretrained(merged_dir), ids, mask)
    through_peft = peft_logits(base_dir, adapter_dir, ids, mask)
    base = hf_logits(hf, ids, mask)
    real = mask.astype(bool)
    assert np.abs(merged - base)[real].max() > 1e-2  # the adapter changes the model
    np.testing.assert_allclose(through_peft[real], merged[real], atol=2e-5)
    # and jaxmath reads the adapter back onto the base with the same logits
    loaded = jaxmath.from_pretrained(base_dir, adapter=adapter_dir)
    ours = np.asarray(loaded(jnp.asarray(ids), attention_mask=jnp.asarray(mask)))
    np.testing.assert_allclose(ours[real], through_peft[real], atol=2e-5)


def test_an_adapter_written_by_peft_loads_in_jaxmath(tmp_path):
    hf = tiny_model("qwen2")
    base_dir = save_tiny(hf, tmp_path / "base")
    config = peft.LoraConfig(r=8, lora_alpha=32, target_modules=["k_proj", "o_proj", "up_proj"],
                             task_type=peft.TaskType.CAUSAL_LM, init_lora_weights=False)  # random A and B
    torch.manual_seed(1)
    peft_model = peft.get_peft_model(tiny_model("qwen2"), config)
    peft_model.save_pretrained(tmp_path / "adapter")
    ids, mask = left_padded_batch()
    reference = peft_logits(base_dir, tmp_path / "adapter", ids, mask)
    loaded = jaxmath.from_pretrained(base_dir, adapter=tmp_path / "adapter")
    assert (loaded.config.lora_rank, loaded.config.lora_alpha) == (8, 32.0)
    assert loaded.config.lora_targets == ("k_proj", "o_proj", "up_proj")
    real = mask.astype(bool)
    ours = np.asarray(loaded(jnp.asarray(ids), attention_mask=jnp.asarray(mask)))
    assert np.abs(reference - hf_logits(hf, ids, mask))[real].max() > 1e-2
    np.testing.assert_allclose(ours[real], reference[real], atol=2e-5)


def test_token_classifier_adapter_carries_its_head(tmp_path):
    hf = tiny_model("qwen2", token_classification=True)
    base_dir = save_tiny(hf, tmp_path / "base")
    model = adapted_model(base_dir, lora_targets=("q_proj", "down_proj"))
    head = traverse_util.flatten_dict(nnx.to_pure_dict(nnx.state(model)))
    rng = np.random.default_rng(3)  # a head that differs from the base checkpoint's, as a trained PRM's does
    head[("score",)] = head[("score",)] + rng.normal(0, 0.1, head[("score",)].shape).astype(np.float32)
    model = nnx.merge(nnx.graphdef(model), traverse_util.unflatten_dict(head))
    adapter_dir = save_adapter(tmp_path / "adapter", nnx.to_pure_dict(nnx.state(model)), model.config)
    config = json.loads((adapter_dir / CONFIG_FILE).read_text())
    assert config["task_type"] == "TOKEN_CLS" and "score" in config["modules_to_save"]
    ids, mask = left_padded_batch()
    real = mask.astype(bool)
    ours = np.asarray(model(jnp.asarray(ids), attention_mask=jnp.asarray(mask)))
    np.testing.assert_allclose(peft_logits(base_dir, adapter_dir, ids, mask, True)[real], ours[real], atol=2e-5)
    loaded = jaxmath.from_pretrained(base_dir, adapter=adapter_dir)
    np.testing.assert_allclose(np.asarray(loaded(jnp.asarray(ids), attention_mask=jnp.asarray(mask)))[real],
                               ours[real], atol=2e-5)


@pytest.fixture
def adapter(tmp_path):
    hf = tiny_model("qwen2")
    base_dir = save_tiny(hf, tmp_path / "base")
    model = adapted_model(base_dir)
    return base_dir, save_adapter(tmp_path / "adapter", nnx.to_pure_dict(nnx.state(model)), model.config)


@pytest.mark.parametrize("key,value,message", [
    ("use_rslora", True, "use_rslora=True is not supported"),
    ("use_dora", True, "use_dora=True is not supported"),
    ("peft_type", "IA3", "only LORA adapters"),
    ("target_modules", ["q_proj", "lm_head"], "target_modules="),
    ("target_modules", ".*proj", "target_modules="),
    ("layers_to_transform", [0], "layers_to_transform=[0] is not supported"),
    ("r", 0, "r=0 must be a positive number"),
])
def test_unsupported_adapter_configs_are_refused_by_key(adapter, key, value, message):
    base_dir, adapter_dir = adapter
    config = json.loads((adapter_dir / CONFIG_FILE).read_text())
    (adapter_dir / CONFIG_FILE).write_text(json.dumps({**config, key: value}))
    with pytest.raises(CheckpointError, match=message.replace("[", r"\[").replace("]", r"\]")):
        jaxmath.from_pretrained(base_dir, adapter=adapter_dir)


def test_bad_adapter_tensors_are_named(adapter):
    base_dir, adapter_dir = adapter
    tensors = load_file(adapter_dir / WEIGHTS_FILE)
    name = "base_model.model.model.layers.1.mlp.up_proj.lora_B.weight"
    save_file({k: v for k, v in tensors.items() if k != name}, adapter_dir / WEIGHTS_FILE, metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=f"tensor '{name}' is missing"):
        jaxmath.from_pretrained(base_dir, adapter=adapter_dir)
    save_file({**tensors, name: tensors[name][:, :2]}, adapter_dir / WEIGHTS_FILE, metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=r"has shape \[112, 2\], expected \[112, 4\]"):
        jaxmath.from_pretrained(base_dir, adapter=adapter_dir)
    extra = "base_model.model.model.layers.0.self_attn.q_proj.lora_magnitude_vector"
    save_file({**tensors, extra: np.ones(4, np.float32)}, adapter_dir / WEIGHTS_FILE, metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="no place for"):
        jaxmath.from_pretrained(base_dir, adapter=adapter_dir)


def test_adapter_settings_conflicting_with_options_are_an_error(adapter):
    base_dir, adapter_dir = adapter
    with pytest.raises(CheckpointError, match="differ from the options given"):
        jaxmath.from_pretrained(base_dir, adapter=adapter_dir, lora_rank=8)


def arithmetic_base(directory: Path) -> Path:
    """A tiny random Qwen2 checkpoint with a BPE tokenizer fitted to arithmetic, as a HF base model."""
    from jaxmath.data.tokenizer import train_tokenizer

    rng = np.random.default_rng(0)
    texts = [f"What is {a} + {b}? {a} + {b} = {a + b}. The answer is \\boxed{{{a + b}}}."
             for a, b in rng.integers(1, 99, (400, 2))]
    tokenizer = train_tokenizer(texts, vocab_size=300)
    hf = tiny_model("qwen2", vocab_size=len(tokenizer), eos_token_id=tokenizer.eos_token_id,
                    pad_token_id=tokenizer.pad_token_id)
    save_tiny(hf, directory)
    tokenizer.save_pretrained(directory)
    return directory


def lora_run_overrides(base_dir: Path, steps: int, **extra: str) -> list[str]:
    settings = {"model.init": "null", "model.path": str(base_dir), "model.remat": "none",
                "model.lora": "{rank: 4, alpha: 8.0, targets: [q_proj, v_proj, o_proj, up_proj, down_proj]}",
                "data.tokenizer": "null", "data.synthetic": "{arithmetic__add_or_sub: 96}", "data.eval_fraction": 0,
                "data.seq_len": 256, "train.steps": steps, "train.log_every": 1, "train.eval_every": 0,
                "train.save_every": 0, "optimizer.lr": 2e-2, "optimizer.warmup_steps": 0, **extra}
    return [f"{k}={v}" for k, v in settings.items()]


@pytest.mark.slow
def test_lora_run_exports_an_adapter_and_training_continues_from_one(tmp_path):
    from jaxmath.checkpoint.peft_io import load_adapter
    from jaxmath.config import load_config
    from jaxmath.train.config import TrainConfig
    from jaxmath.train.run import load_params
    from jaxmath.train.trainer import build_run, train

    tiny = Path(__file__).resolve().parents[1] / "configs" / "sft" / "tiny-cpu.yaml"
    base_dir = arithmetic_base(tmp_path / "base")
    run = tmp_path / "run"
    train(load_config(TrainConfig, tiny, lora_run_overrides(base_dir, steps=6)), run, progress=False)
    assert json.loads((run / "hf_adapter" / CONFIG_FILE).read_text())["base_model_name_or_path"] == str(base_dir)
    ids, mask = left_padded_batch(vocab=128)
    real = mask.astype(bool)
    merged = hf_logits(transformers.AutoModelForCausalLM.from_pretrained(run / "hf"), ids, mask)
    base = hf_logits(transformers.AutoModelForCausalLM.from_pretrained(base_dir), ids, mask)
    assert np.abs(merged - base)[real].max() > 1e-2  # the run trained its adapters
    np.testing.assert_allclose(peft_logits(base_dir, run / "hf_adapter", ids, mask)[real], merged[real], atol=2e-5)

    # model.adapter starts a run at base + that adapter (its settings replace model.lora)
    overrides = lora_run_overrides(base_dir, steps=2, **{"model.lora": "null",
                                                         "model.adapter": str(run / "hf_adapter")})
    config = load_config(TrainConfig, tiny, overrides)
    built = build_run(config, tmp_path / "continued")
    assert built.model_config.lora_targets == ("q_proj", "v_proj", "o_proj", "up_proj", "down_proj")
    params = traverse_util.flatten_dict(load_params(config, built.model_config, built.mesh, built.shardings.params))
    for path, value in load_adapter(run / "hf_adapter", built.model_config).items():
        np.testing.assert_array_equal(np.asarray(params[path]), value)
    train(config, tmp_path / "continued", progress=False)
    continued = hf_logits(transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "continued" / "hf"), ids, mask)
    np.testing.assert_allclose(peft_logits(base_dir, tmp_path / "continued" / "hf_adapter", ids, mask)[real],
                               continued[real], atol=2e-5)
