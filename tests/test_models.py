"""The NNX decoder against transformers' torch implementation (float32, tiny random models)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

import jaxmath
from jaxmath.models import ModelConfig, UnsupportedConfigError, build_model
from jaxmath.models.rope import inverse_frequencies
from jaxmath.models.transformer import segment_positions
from tiny_hf import hf_logits, left_padded_batch, save_tiny, tiny_config, tiny_model

CASES = {
    "qwen2-tied": ("qwen2", dict(tie_word_embeddings=True)),
    "qwen2-untied": ("qwen2", dict(tie_word_embeddings=False)),
    "llama": ("llama", dict(attention_bias=True, mlp_bias=True)),
    "llama-plain": ("llama", dict()),
    "qwen3": ("qwen3", dict(head_dim=24, tie_word_embeddings=True)),
    "llama3-rope": ("llama", dict(rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                                 "high_freq_factor": 4.0, "original_max_position_embeddings": 16})),
    "yarn-rope": ("qwen2", dict(rope_scaling={"rope_type": "yarn", "factor": 4.0,
                                               "original_max_position_embeddings": 16})),
    "linear-rope": ("qwen2", dict(rope_scaling={"rope_type": "linear", "factor": 2.0})),
    "dynamic-rope": ("qwen2", dict(rope_scaling={"rope_type": "dynamic", "factor": 2.0}, max_position_embeddings=12)),
}


@pytest.mark.parametrize("case", list(CASES))
def test_logits_match_transformers_on_left_padded_batch(case, tmp_path):
    model_type, overrides = CASES[case]
    hf = tiny_model(model_type, **overrides)
    model = jaxmath.from_pretrained(save_tiny(hf, tmp_path / "hf"))
    ids, mask = left_padded_batch()
    ours = np.asarray(model(jnp.asarray(ids), attention_mask=jnp.asarray(mask)))
    ref = hf_logits(hf, ids, mask)
    assert ours.shape == ref.shape
    assert np.abs(ours - ref)[mask.astype(bool)].max() <= 1e-4


@pytest.mark.parametrize("model_type", ["qwen2", "llama", "qwen3"])
def test_token_classifier_matches_transformers(model_type, tmp_path):
    hf = tiny_model(model_type, token_classification=True, num_labels=2)
    model = jaxmath.from_pretrained(save_tiny(hf, tmp_path / "hf"))
    ids, mask = left_padded_batch()
    ours = np.asarray(model(jnp.asarray(ids), attention_mask=jnp.asarray(mask)))
    ref = hf_logits(hf, ids, mask)
    assert ours.shape == (*ids.shape, 2)
    assert np.abs(ours - ref)[mask.astype(bool)].max() <= 1e-4


@pytest.mark.slow
def test_packed_sequences_equal_each_sequence_alone():
    config = ModelConfig.from_hf(tiny_config("qwen3", head_dim=24).to_dict())
    model = build_model(config, seed=1)
    rng = np.random.default_rng(3)
    lengths = [5, 9, 3]
    seqs = [rng.integers(0, 128, n) for n in lengths]
    packed = np.zeros((1, 20), np.int64)
    segments = np.zeros((1, 20), np.int32)
    start = 0
    for k, seq in enumerate(seqs):
        packed[0, start:start + len(seq)] = seq
        segments[0, start:start + len(seq)] = k + 1
        start += len(seq)
    out = np.asarray(model(jnp.asarray(packed), segment_ids=jnp.asarray(segments)))
    start = 0
    for seq in seqs:
        alone = np.asarray(model(jnp.asarray(seq[None])))
        np.testing.assert_allclose(out[0, start:start + len(seq)], alone[0], atol=1e-5)
        start += len(seq)


def test_segment_positions_restart_per_segment():
    segments = jnp.array([[1, 1, 1, 2, 2, 3, 0, 0]])
    assert segment_positions(segments).tolist() == [[0, 1, 2, 0, 1, 0, 0, 1]]


@pytest.mark.parametrize("rope", [
    {"rope_type": "linear", "factor": 4.0},
    {"rope_type": "dynamic", "factor": 2.0},
    {"rope_type": "yarn", "factor": 8.0, "original_max_position_embeddings": 64, "beta_fast": 16},
    {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64, "mscale": 0.7, "mscale_all_dim": 1.0},
    {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
     "original_max_position_embeddings": 64},
])
def test_rope_frequencies_match_transformers(rope):
    hf_config = tiny_config("llama", rope_scaling=dict(rope), max_position_embeddings=128, head_dim=32)
    ours, our_factor = inverse_frequencies(ModelConfig.from_hf(hf_config.to_dict()), seq_len=300)
    ref, ref_factor = ROPE_INIT_FUNCTIONS[rope["rope_type"]](hf_config, "cpu", seq_len=300)
    np.testing.assert_allclose(np.asarray(ours), ref.numpy(), rtol=1e-6)
    assert our_factor == pytest.approx(ref_factor)


@pytest.mark.parametrize("key,overrides", [
    ("use_sliding_window", dict(use_sliding_window=True, sliding_window=16)),
    ("rope_type", dict(rope_scaling={"rope_type": "longrope", "short_factor": [1.0], "long_factor": [1.0]})),
    ("hidden_act", dict(hidden_act="gelu")),
])
def test_unsupported_config_names_the_key(key, overrides):
    hf = tiny_config("qwen2").to_dict()
    hf.update(overrides)
    with pytest.raises(UnsupportedConfigError, match=key):
        ModelConfig.from_hf(hf)


def test_unknown_model_type_is_rejected():
    hf = tiny_config("qwen2").to_dict()
    hf["model_type"] = "mistral"
    with pytest.raises(UnsupportedConfigError, match="mistral"):
        ModelConfig.from_hf(hf)


@pytest.mark.slow
def test_bfloat16_compute_stays_close_to_float32():
    config = ModelConfig.from_hf(tiny_config("qwen2").to_dict())
    ids = jnp.asarray(np.random.default_rng(0).integers(0, 128, (2, 16)))
    ref = np.asarray(build_model(config, seed=0)(ids))
    low = build_model(config.replace(dtype="bfloat16"), seed=0)(ids)
    assert low.dtype == jnp.float32  # logits are summed and kept in float32 whatever the compute dtype
    assert np.abs(np.asarray(low, np.float32) - ref).max() < 0.05 * np.abs(ref).max()


@pytest.mark.slow
@pytest.mark.parametrize("remat", ["full", "dots", "dots_no_batch"])
def test_remat_policies_leave_gradients_unchanged(remat):
    from flax import nnx
    config = ModelConfig.from_hf(tiny_config("llama").to_dict())
    ids = jnp.asarray(np.random.default_rng(0).integers(0, 128, (2, 12)))

    def grads(cfg):
        model = build_model(cfg, seed=0)
        loss = lambda m: jnp.mean(jax.nn.log_softmax(m(ids))[..., 0])  # noqa: E731
        return nnx.grad(loss)(model)

    base, rem = grads(config), grads(config.replace(remat=remat))
    for a, b in zip(jax.tree.leaves(base), jax.tree.leaves(rem)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)


def test_num_params_matches_the_built_model():
    from flax import nnx
    for case in ("qwen2-tied", "llama", "qwen3"):
        model_type, overrides = CASES[case]
        config = ModelConfig.from_hf(tiny_config(model_type, **overrides).to_dict())
        counted = sum(x.size for x in jax.tree.leaves(nnx.state(build_model(config), nnx.Param)))
        hf_count = sum(p.numel() for p in tiny_model(model_type, **overrides).parameters())
        assert config.num_params() == counted == hf_count


@pytest.mark.slow
def test_lora_adapters_start_at_the_base_model_and_merge_exactly(tmp_path):
    from flax import nnx, traverse_util
    from jaxmath.models.lora import is_lora_path, merge_lora
    hf = tiny_model("qwen2")
    src = save_tiny(hf, tmp_path / "hf")
    base = jaxmath.from_pretrained(src)
    lora = jaxmath.from_pretrained(src, lora_rank=4, lora_alpha=8.0)
    ids, mask = left_padded_batch()
    np.testing.assert_array_equal(np.asarray(lora(jnp.asarray(ids), attention_mask=jnp.asarray(mask))),
                                  np.asarray(base(jnp.asarray(ids), attention_mask=jnp.asarray(mask))))
    # Give every B factor values, then the merged plain model must equal the adapted one.
    params = nnx.to_pure_dict(nnx.state(lora))
    rng = np.random.default_rng(0)
    flat = {k: (rng.normal(0, 0.05, v.shape).astype(np.float32) if k[-1].endswith("_lora_b") else np.asarray(v))
            for k, v in traverse_util.flatten_dict(params).items()}
    adapted = nnx.merge(nnx.graphdef(lora), traverse_util.unflatten_dict(flat))
    merged_params = merge_lora(traverse_util.unflatten_dict(flat), lora.config)
    assert not any(is_lora_path(k) for k in traverse_util.flatten_dict(merged_params))
    plain = nnx.merge(nnx.graphdef(base), merged_params)
    np.testing.assert_allclose(np.asarray(adapted(jnp.asarray(ids))), np.asarray(plain(jnp.asarray(ids))), atol=1e-5)
    # The HF export of the adapted model is the merged model.
    out = jaxmath.export_to_hf(adapted, tmp_path / "out", hf_config=hf.config.to_dict())
    reloaded = jaxmath.from_pretrained(out)
    np.testing.assert_allclose(np.asarray(reloaded(jnp.asarray(ids))), np.asarray(plain(jnp.asarray(ids))), atol=1e-5)
