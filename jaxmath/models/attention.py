"""Attention kernels and the rule that picks one per hardware.

`jax.nn.dot_product_attention(implementation=None)` is XLA's attention: it materialises the
[batch, heads, T, S] scores and, without rematerialisation, keeps them for the backward pass of every layer
(jax 0.10 source: "defaults to XLA for now"; on an H200 the 1.5B SFT step at 8 x 2048 needed 185 GiB that
way). So the model resolves `attention_impl` itself:

- "cudnn": cuDNN's fused flash kernel (NVIDIA GPUs, bfloat16/float16, head_dim a multiple of 8 up to 128,
  or 256 from Hopper on), through `jax.nn.dot_product_attention(implementation="cudnn")`;
- "splash": the Pallas splash-attention kernel on TPUs (packed segments, causal; sequence lengths a multiple
  of 128), run per device under `shard_map`;
- "chunked": queries in chunks of QUERY_CHUNK, each chunk's scores recomputed in the backward pass
  (`jax.checkpoint`), so no [T, S] score matrix of a whole sequence is ever held; pure JAX, any backend;
- "xla": XLA's plain attention, the numerical reference;
- "auto" (default; None means the same): cudnn where it applies, else splash on TPU where it applies,
  else chunked. Decode steps do not come here: the sampler attends over its two-part cache itself
  (jaxmath.inference.forward); prefill does.

Masks are "same segment, and the key's index is not after the query's": segment 0 is padding; the index
is the token's place in the row for full-sequence passes and its position for the KV cache.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp

from jaxmath.parallel import MESH_AXES, logical_to_spec

AUTO = "auto"
IMPLEMENTATIONS = (AUTO, "xla", "chunked", "cudnn", "splash")
QUERY_CHUNK = 512  # queries per chunk of the chunked path: scores held at once are [batch, heads, 512, S]
SPLASH_BLOCK = 128  # the splash kernel's default block size: sequence lengths must be a multiple of it


class AttentionUnavailableError(ValueError):
    """An explicitly chosen attention implementation cannot run here; the message says why and what to pick."""


@dataclasses.dataclass(frozen=True)
class Hardware:
    """What the attention choice depends on: the backend and, on NVIDIA GPUs, the compute capability."""

    platform: str  # "cpu", "gpu", "tpu"
    nvidia: bool = False
    compute_capability: float = 0.0

    @classmethod
    def detect(cls) -> "Hardware":
        device = jax.devices()[0]
        platform = device.platform
        if platform in ("cuda", "rocm"):
            platform = "gpu"
        version = str(getattr(device.client, "platform_version", "")).lower()
        nvidia = platform == "gpu" and "rocm" not in version and device.platform != "rocm"
        capability = float(getattr(device, "compute_capability", 0) or 0) if nvidia else 0.0
        return cls(platform, nvidia, capability)


def _cudnn_problem(dtype: Any, head_dim: int, q_len: int | None, kv_len: int | None, training: bool,
                   hw: Hardware) -> str | None:
    """Why cuDNN's fused attention cannot run this case (None when it can), after jax's own checks."""
    if not hw.nvidia:
        return f"cuDNN attention needs an NVIDIA GPU (this backend is {hw.platform})"
    if jnp.dtype(dtype) not in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16)):
        return (f"cuDNN's fused attention runs in bfloat16 or float16, and the model computes in "
                f"{jnp.dtype(dtype).name} (set model.dtype: bfloat16)")
    head_max = 256 if hw.compute_capability >= 9.0 else 128
    if head_dim % 8 or head_dim > head_max:
        return f"cuDNN attention needs head_dim a multiple of 8 and at most {head_max}, this model has {head_dim}"
    if training and ((q_len or 0) % 2 or (kv_len or 0) % 2):
        return f"cuDNN attention with a mask trains only on even lengths, got {q_len} x {kv_len}"
    return None


def _splash_problem(q_len: int | None, kv_len: int | None, cached: bool, hw: Hardware) -> str | None:
    """Why the splash kernel cannot run this case (None when it can)."""
    if hw.platform != "tpu":
        return f"the splash kernel is a TPU kernel (this backend is {hw.platform})"
    if cached:
        return "the splash kernel covers full-sequence passes, not attention over a KV cache"
    if q_len is not None and (q_len % SPLASH_BLOCK or q_len != kv_len):
        return f"the splash kernel needs a sequence length that is a multiple of {SPLASH_BLOCK}, got {q_len}"
    return None


def resolve(requested: str | None, *, dtype: Any, head_dim: int, hw: Hardware, q_len: int | None = None,
            kv_len: int | None = None, cached: bool = False, training: bool = True) -> str:
    """The implementation that runs for `requested` (None = auto) on this case; raise for an explicit one that
    cannot. Lengths None means "not known yet" (a configuration check): only length-free rules apply."""
    requested = AUTO if requested is None else requested
    if requested not in IMPLEMENTATIONS:
        raise ValueError(f"attention_impl={requested!r}; expected one of {IMPLEMENTATIONS} (or null for auto)")
    if requested in ("xla", "chunked"):
        return requested
    if requested == "cudnn":
        problem = _cudnn_problem(dtype, head_dim, q_len, kv_len, training and not cached, hw)
        if problem:
            raise AttentionUnavailableError(f"attention_impl='cudnn' cannot run: {problem}; use attention_impl: "
                                            f"auto (picks what runs) or chunked")
        return "cudnn"
    if requested == "splash":
        problem = _splash_problem(q_len, kv_len, cached, hw)
        if problem and not (cached and hw.platform == "tpu"):
            raise AttentionUnavailableError(f"attention_impl='splash' cannot run: {problem}; use attention_impl: "
                                            f"auto or chunked")
        if not problem:
            return "splash"
    if _cudnn_problem(dtype, head_dim, q_len, kv_len, training and not cached, hw) is None:
        return "cudnn"
    if _splash_problem(q_len, kv_len, cached, hw) is None:
        return "splash"
    return "chunked"


def visible_mask(q_segments: jax.Array, kv_segments: jax.Array, q_index: jax.Array,
                 kv_index: jax.Array) -> jax.Array:
    """[batch, q, kv]: same segment and the key not after the query."""
    same = q_segments[:, :, None] == kv_segments[:, None, :]
    return same & (q_index[:, :, None] >= kv_index[:, None, :])


def _large_negative(dtype: Any) -> jax.Array:
    """The masked-logit value jax's own attention uses: finite, so a fully masked row stays finite."""
    return jnp.asarray(-0.7 * float(jnp.finfo(jnp.float32).max), dtype)


def _scores_softmax_values(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array) -> jax.Array:
    """softmax(q k^T / sqrt(h), masked) v for grouped queries q [b, c, kv_heads, groups, h]; float32 softmax."""
    logits = jnp.einsum("bckgh,bskh->bkgcs", q, k, preferred_element_type=jnp.float32)
    logits = logits * jnp.float32(q.shape[-1] ** -0.5)
    logits = jnp.where(mask[:, None, None], logits, _large_negative(jnp.float32))
    probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    return jnp.einsum("bkgcs,bskh->bckgh", probs, v)


def chunked_attention(q: jax.Array, k: jax.Array, v: jax.Array, q_segments: jax.Array, kv_segments: jax.Array,
                      q_index: jax.Array, kv_index: jax.Array, chunk: int = QUERY_CHUNK) -> jax.Array:
    """Exact attention over query chunks, each rematerialised in the backward pass: at most one chunk's
    [batch, heads, chunk, S] scores exist at a time, and none are saved between the passes.

    q [b, t, heads, h]; k, v [b, s, kv_heads, h]; segments and indices [b, t] / [b, s].
    """
    b, t, n, h = q.shape
    kv_heads = k.shape[2]
    grouped = q.reshape(b, t, kv_heads, n // kv_heads, h)

    @jax.checkpoint
    def one(q_chunk: jax.Array, seg_chunk: jax.Array, index_chunk: jax.Array) -> jax.Array:
        mask = visible_mask(seg_chunk, kv_segments, index_chunk, kv_index)
        return _scores_softmax_values(q_chunk, k, v, mask)

    if t <= chunk:
        return one(grouped, q_segments, q_index).reshape(b, t, n, h)
    count = -(-t // chunk)
    pad = count * chunk - t
    if pad:  # padded queries see nothing (segment -1) and are cut off below
        grouped = jnp.pad(grouped, ((0, 0), (0, pad), (0, 0), (0, 0), (0, 0)))
        q_segments = jnp.pad(q_segments, ((0, 0), (0, pad)), constant_values=-1)
        q_index = jnp.pad(q_index, ((0, 0), (0, pad)))

    def chunks(x: jax.Array) -> jax.Array:  # [b, count * chunk, ...] -> [count, b, chunk, ...]
        return jnp.moveaxis(x.reshape(b, count, chunk, *x.shape[2:]), 1, 0)

    out = jax.lax.map(lambda xs: one(*xs), (chunks(grouped), chunks(q_segments), chunks(q_index)))
    out = jnp.moveaxis(out, 0, 1).reshape(b, count * chunk, n, h)
    return out[:, :t]


def _splash_local(q: jax.Array, k: jax.Array, v: jax.Array, segments: jax.Array, interpret: bool) -> jax.Array:
    """Causal splash attention with segment ids on one device's shard: q [b, t, n, h], k/v [b, t, kv, h]."""
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as splash
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as masks

    b, t, n, h = q.shape
    kv_heads = k.shape[2]
    groups = n // kv_heads
    mask = masks.MultiHeadMask([masks.CausalMask((t, t)) for _ in range(groups)])
    kernel = splash.make_splash_mqa_single_device(mask, interpret=interpret)
    # Pallas kernels see unscaled logits: fold 1/sqrt(h) into the queries (as jax's reference scales logits).
    grouped = (q * jnp.asarray(h ** -0.5, q.dtype)).reshape(b, t, kv_heads, groups, h)
    grouped = jnp.transpose(grouped, (0, 2, 3, 1, 4))  # [b, kv, groups, t, h]
    keys, values = jnp.transpose(k, (0, 2, 1, 3)), jnp.transpose(v, (0, 2, 1, 3))  # [b, kv, t, h]

    def per_example(q1: jax.Array, k1: jax.Array, v1: jax.Array, seg1: jax.Array) -> jax.Array:
        ids = splash.SegmentIds(q=seg1, kv=seg1)
        return jax.vmap(lambda qg, kg, vg: kernel(qg, kg, vg, segment_ids=ids))(q1, k1, v1)

    out = jax.vmap(per_example)(grouped, keys, values, segments)  # [b, kv, groups, t, h]
    return jnp.transpose(out, (0, 3, 1, 2, 4)).reshape(b, t, n, h)


def splash_attention(q: jax.Array, k: jax.Array, v: jax.Array, segments: jax.Array,
                     interpret: bool = False) -> jax.Array:
    """Causal self-attention within segments by the Pallas splash kernel, per device under `shard_map` over
    the ambient mesh (batch over data/fsdp, heads over tensor when it divides the KV heads).
    `interpret=True` runs the kernel in Pallas' interpreter (CPU tests)."""
    local = functools.partial(_splash_local, interpret=interpret)
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or set(mesh.axis_names) != set(MESH_AXES):
        return local(q, k, v, segments)
    # Query heads shard with their KV heads (head i reads KV head i // groups), so one spec serves q, k and v.
    qkv_spec = logical_to_spec(("batch", None, "act_kv_heads", None), mesh, k.shape)
    seg_spec = jax.sharding.PartitionSpec(qkv_spec[0], None)
    return jax.shard_map(local, mesh=mesh, in_specs=(qkv_spec, qkv_spec, qkv_spec, seg_spec),
                         out_specs=qkv_spec, check_vma=False)(q, k, v, segments)


def attend(q: jax.Array, k: jax.Array, v: jax.Array, *, q_segments: jax.Array, kv_segments: jax.Array,
           q_index: jax.Array, kv_index: jax.Array, requested: str | None, cached: bool,
           hw: Hardware | None = None) -> jax.Array:
    """Attention by the implementation `resolve` picks for these shapes; every path computes the same thing."""
    hw = hw or Hardware.detect()
    impl = resolve(requested, dtype=q.dtype, head_dim=q.shape[-1], hw=hw, q_len=q.shape[1], kv_len=k.shape[1],
                   cached=cached)
    if impl == "chunked":
        return chunked_attention(q, k, v, q_segments, kv_segments, q_index, kv_index)
    if impl == "splash":
        return splash_attention(q, k, v, q_segments)
    mask = visible_mask(q_segments, kv_segments, q_index, kv_index)[:, None]
    # Full-sequence passes are causal by index: cuDNN then skips the blocks above the diagonal.
    return jax.nn.dot_product_attention(q, k, v, mask=mask, is_causal=not cached, implementation=impl)


def describe(requested: str | None, *, dtype: Any, head_dim: int, hw: Hardware | None = None) -> str:
    """One line saying what `requested` runs as here, for the run log (raises for an impossible explicit one)."""
    hw = hw or Hardware.detect()
    full = resolve(requested, dtype=dtype, head_dim=head_dim, hw=hw)
    prefill = resolve(requested, dtype=dtype, head_dim=head_dim, hw=hw, cached=True, training=False)
    return (f"attention_impl={requested or AUTO}: {full} for training and evaluation passes, {prefill} for "
            f"prefill, the sampler's two-part cache attention for decode steps ({hw.platform}, "
            f"{jnp.dtype(dtype).name}, head_dim {head_dim})")

