"""Attention paths against XLA's plain attention, the rule that picks one, and the memory the choice saves."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxmath
from jaxmath.models import ModelConfig, build_model
from jaxmath.models.attention import (QUERY_CHUNK, AttentionUnavailableError, Hardware, attend, chunked_attention,
                                      describe, resolve, splash_attention, visible_mask)
from jaxmath.parallel import make_mesh
from tiny_hf import left_padded_batch, tiny_config

CPU, TPU = Hardware("cpu"), Hardware("tpu")
A100, H100 = Hardware("gpu", nvidia=True, compute_capability=8.0), Hardware("gpu", nvidia=True, compute_capability=9.0)
ROCM = Hardware("gpu", nvidia=False)


def qkv(batch=2, length=40, heads=4, kv_heads=2, head_dim=16, seed=0, dtype=jnp.float32):
    rng = np.random.default_rng(seed)
    shape_q, shape_kv = (batch, length, heads, head_dim), (batch, length, kv_heads, head_dim)
    return tuple(jnp.asarray(rng.normal(size=s), dtype) for s in (shape_q, shape_kv, shape_kv))


def packed_and_padded_segments(batch: int, length: int) -> jax.Array:
    """Row 0: three packed segments and trailing padding; row 1: left padding then one sequence."""
    seg = np.ones((batch, length), np.int32)
    seg[0, length // 3:] = 2
    seg[0, 2 * length // 3:] = 3
    seg[0, -3:] = 0
    seg[1, :7] = 0
    return jnp.asarray(seg)


def reference(q, k, v, seg, index):
    mask = visible_mask(seg, seg, index, index)[:, None]
    return jax.nn.dot_product_attention(q, k, v, mask=mask, is_causal=True, implementation="xla")


@pytest.mark.parametrize("chunk", [16, 512])
def test_chunked_equals_xla_on_packed_and_padded_rows_with_gradients(chunk):
    q, k, v = qkv()
    seg = packed_and_padded_segments(2, 40)
    index = jnp.broadcast_to(jnp.arange(40), (2, 40))
    real = np.asarray(seg) > 0
    ours = chunked_attention(q, k, v, seg, seg, index, index, chunk=chunk)
    np.testing.assert_allclose(np.asarray(ours)[real], np.asarray(reference(q, k, v, seg, index))[real], atol=2e-6)

    def loss(fn):  # a loss over real tokens only (padding rows are never read)
        return lambda q, k, v: jnp.sum(jnp.where(seg[:, :, None, None] > 0, fn(q, k, v), 0) ** 2)

    ours_grads = jax.grad(loss(lambda q, k, v: chunked_attention(q, k, v, seg, seg, index, index, chunk)),
                          argnums=(0, 1, 2))(q, k, v)
    ref_grads = jax.grad(loss(lambda q, k, v: reference(q, k, v, seg, index)), argnums=(0, 1, 2))(q, k, v)
    for ours_g, ref_g in zip(ours_grads, ref_grads):
        np.testing.assert_allclose(np.asarray(ours_g), np.asarray(ref_g), atol=5e-5)


def test_chunked_decode_over_a_cache_equals_xla():
    """One new token per row against cache slots masked by segment and position (left-padded prompts)."""
    q, _, _ = qkv(length=1, seed=1)
    _, k, v = qkv(length=24, seed=2)
    kv_seg = np.ones((2, 24), np.int32)
    kv_seg[1, :5] = 0
    kv_seg[:, 20:] = 0  # empty slots after the written ones
    kv_pos = np.maximum(np.cumsum(kv_seg, axis=1) - 1, 0).astype(np.int32)
    q_seg, q_pos = jnp.ones((2, 1), jnp.int32), jnp.asarray(kv_pos[:, 19:20])
    kv_seg, kv_pos = jnp.asarray(kv_seg), jnp.asarray(kv_pos)
    mask = visible_mask(q_seg, kv_seg, q_pos, kv_pos)[:, None]
    ref = jax.nn.dot_product_attention(q, k, v, mask=mask, implementation="xla")
    for impl in ("chunked", "auto"):
        ours = attend(q, k, v, q_segments=q_seg, kv_segments=kv_seg, q_index=q_pos, kv_index=kv_pos,
                      requested=impl, cached=True)
        np.testing.assert_allclose(np.asarray(ours), np.asarray(ref), atol=2e-6)


@pytest.mark.slow
def test_splash_kernel_equals_xla_in_interpret_mode_under_a_mesh():
    """The TPU kernel, run by Pallas' interpreter, per device under shard_map (batch x tensor shards)."""
    q, k, v = qkv(batch=2, length=128, heads=4, kv_heads=2, head_dim=32, seed=3)
    seg = packed_and_padded_segments(2, 128)
    index = jnp.broadcast_to(jnp.arange(128), (2, 128))
    ref = reference(q, k, v, seg, index)
    real = np.asarray(seg) > 0
    np.testing.assert_allclose(np.asarray(splash_attention(q, k, v, seg, interpret=True))[real],
                               np.asarray(ref)[real], atol=2e-5)
    mesh = make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    with jax.set_mesh(mesh):
        sharded = jax.jit(lambda q, k, v, s: splash_attention(q, k, v, s, interpret=True))(q, k, v, seg)
    np.testing.assert_allclose(np.asarray(sharded)[real], np.asarray(ref)[real], atol=2e-5)


@pytest.mark.parametrize("impl", ["xla", "chunked", "auto", None])
def test_model_logits_and_cached_decode_agree_across_implementations(impl):
    """Full forward of a left-padded batch equals the XLA model, and prefill + one decode step equal it too."""
    base = ModelConfig.from_hf(tiny_config("qwen2").to_dict())
    ref_model = build_model(base.replace(attention_impl="xla"), seed=4)
    model = build_model(base.replace(attention_impl=impl), seed=4)
    ids, mask = left_padded_batch()
    ids, mask = jnp.asarray(ids), jnp.asarray(mask)
    ref = np.asarray(ref_model(ids, attention_mask=mask))
    ours = np.asarray(model(ids, attention_mask=mask))
    real = np.asarray(mask).astype(bool)
    np.testing.assert_allclose(ours[real], ref[real], atol=2e-5)
    out = jaxmath.generate(model, ids, attention_mask=mask, max_new_tokens=3, temperature=0.0)
    ref_out = jaxmath.generate(ref_model, ids, attention_mask=mask, max_new_tokens=3, temperature=0.0)
    np.testing.assert_array_equal(np.asarray(out.sequences), np.asarray(ref_out.sequences))
    np.testing.assert_allclose(np.asarray(out.logprobs), np.asarray(ref_out.logprobs), atol=1e-4)


RULES = [  # (hardware, dtype, head_dim, lengths, cached, expected)
    (A100, jnp.bfloat16, 128, (2048, 2048), False, "cudnn"),
    (A100, jnp.float16, 64, (2048, 2048), False, "cudnn"),
    (A100, jnp.float32, 128, (2048, 2048), False, "chunked"),
    (A100, jnp.bfloat16, 256, (2048, 2048), False, "chunked"),  # head_dim 256 needs Hopper
    (H100, jnp.bfloat16, 256, (2048, 2048), False, "cudnn"),
    (A100, jnp.bfloat16, 120, (2047, 2047), False, "chunked"),  # odd lengths cannot train with a mask
    (A100, jnp.bfloat16, 128, (129, 640), True, "cudnn"),  # prefill into the cache
    (ROCM, jnp.bfloat16, 128, (2048, 2048), False, "chunked"),
    (TPU, jnp.bfloat16, 128, (2048, 2048), False, "splash"),
    (TPU, jnp.bfloat16, 128, (2000, 2000), False, "chunked"),
    (TPU, jnp.bfloat16, 128, (128, 640), True, "chunked"),
    (CPU, jnp.float32, 64, (4096, 4096), False, "chunked"),
    (CPU, jnp.bfloat16, 64, (1, 100), True, "chunked"),
]


@pytest.mark.parametrize("hw,dtype,head_dim,lengths,cached,expected", RULES)
def test_auto_picks_the_kernel_that_applies(hw, dtype, head_dim, lengths, cached, expected):
    got = resolve("auto", dtype=dtype, head_dim=head_dim, hw=hw, q_len=lengths[0], kv_len=lengths[1], cached=cached)
    assert got == expected
    assert resolve(None, dtype=dtype, head_dim=head_dim, hw=hw, q_len=lengths[0], kv_len=lengths[1],
                   cached=cached) == expected


@pytest.mark.parametrize("requested,hw,dtype,head_dim,says", [
    ("cudnn", CPU, jnp.bfloat16, 64, "NVIDIA GPU"),
    ("cudnn", A100, jnp.float32, 64, "model.dtype: bfloat16"),
    ("cudnn", A100, jnp.bfloat16, 100, "multiple of 8"),
    ("cudnn", A100, jnp.bfloat16, 256, "at most 128"),
    ("splash", A100, jnp.bfloat16, 128, "TPU kernel"),
    ("flash", CPU, jnp.float32, 64, "expected one of"),
])
def test_an_explicit_choice_that_cannot_run_says_why_and_what_to_pick(requested, hw, dtype, head_dim, says):
    with pytest.raises(ValueError, match=says) as info:
        resolve(requested, dtype=dtype, head_dim=head_dim, hw=hw)
    if requested != "flash":
        assert isinstance(info.value, AttentionUnavailableError) and "auto" in str(info.value)


def test_describe_names_each_pass():
    line = describe("auto", dtype=jnp.bfloat16, head_dim=128, hw=A100)
    assert "cudnn for training" in line and "two-part cache attention for decode" in line and "gpu" in line


def _attention_grad_temp_bytes(impl: str, length: int) -> int:
    q, k, v = qkv(batch=1, length=length, heads=4, kv_heads=4, head_dim=16)
    seg = jnp.ones((1, length), jnp.int32)
    index = jnp.broadcast_to(jnp.arange(length), (1, length))

    def loss(q, k, v):
        out = attend(q, k, v, q_segments=seg, kv_segments=seg, q_index=index, kv_index=index, requested=impl,
                     cached=False, hw=CPU)
        return jnp.sum(out ** 2)

    compiled = jax.jit(jax.grad(loss, argnums=(0, 1, 2))).lower(q, k, v).compile()
    return compiled.memory_analysis().temp_size_in_bytes


def test_chunked_gradient_never_holds_the_whole_score_matrix():
    """XLA's attention keeps [heads, T, T] float32 scores (and their gradients) for the backward pass; the
    chunked path holds a few [heads, chunk, T] buffers at a time (compiled temp memory, compile only)."""
    length = 4096
    scores = 4 * length * length * 4  # heads x T x T float32
    chunk_scores = 4 * QUERY_CHUNK * length * 4
    assert _attention_grad_temp_bytes("xla", length) >= scores
    assert _attention_grad_temp_bytes("chunked", length) <= 5 * chunk_scores < scores
