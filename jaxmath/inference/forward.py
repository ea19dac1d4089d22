"""The decoder's forward pass for sampling: prefill a batch of prompts, then one token per row per step.

It runs on `DecodeWeights` (dense per-layer [in, out] matrices), layer by layer in Python (no scan: each
layer's weights are their own arrays, so nothing is sliced or copied per step), with the model's own pieces
(RMSNorm, rotary tables, the attention kernels of jaxmath.models.attention for prefill).

The cache has two parts. The prefix holds each prompt once: U prompts, keys [U, K, H, P] and values
[U, K, P, H]. The suffix holds what each of the B = U x G rows generated: keys [B, K, H, S], values
[B, K, S, H]; row r continues prompt r // G, so the G samples of a prompt share its keys and values, and a
decode step reads them once per prompt. Keys are stored head_dim-major so both attention products are plain
matrix products (no per-step transpose of the cache). The suffix is a ring: every step writes all rows at one
slot (`suffix_next`, a dynamic-update-slice in place, not a scatter), and row r sees the `suffix_lengths[r]`
slots written last (rotary positions are already in the keys, so their order does not matter). Rows that start
later (continuous batching) just see fewer. The caller sizes S in buckets so that few empty slots are read.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from jaxmath.inference.weights import DecodeWeights
from jaxmath.models.attention import attend
from jaxmath.models.layers import rms_norm
from jaxmath.models.rope import apply_rope, rope_tables
from jaxmath.parallel import shard_activation

KEY_AXES = ("batch", "act_kv_heads", "head_dim", "length")  # keys [rows, K, H, slots]
VALUE_AXES = ("batch", "act_kv_heads", "length", "head_dim")  # values [rows, K, slots, H]


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class Cache:
    """Per-layer prefix (shared by a prompt's G rows) and suffix (each row's own tokens) keys and values."""

    prefix_keys: tuple[jax.Array, ...]  # [U, K, H, P] per layer
    prefix_values: tuple[jax.Array, ...]  # [U, K, P, H]
    prefix_lengths: jax.Array  # [U] prompt tokens in slots 0..len-1
    suffix_keys: tuple[jax.Array, ...]  # [B, K, H, S]
    suffix_values: tuple[jax.Array, ...]  # [B, K, S, H]
    suffix_lengths: jax.Array  # [B] generated tokens whose keys are in the ring, the last len written
    suffix_next: jax.Array  # scalar int32: the ring slot the next step writes

    @property
    def group_size(self) -> int:
        return self.suffix_lengths.shape[0] // self.prefix_lengths.shape[0]

    @property
    def suffix_slots(self) -> int:
        return self.suffix_keys[0].shape[-1]


def _qkv(layer: dict[str, jax.Array], x: jax.Array, rope: tuple[jax.Array, jax.Array],
         weights: DecodeWeights) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Queries [b, t, N, H], keys and values [b, t, K, H]: normed, projected, biased, rotated by the `rope`
    tables (cos, sin) of their positions."""
    c = weights.config
    b, t, _ = x.shape
    n, k, h = c.num_heads, c.num_kv_heads, c.head_dim
    fused = rms_norm(x, layer["ln1"], c.rms_norm_eps) @ layer["qkv"]
    if "qkv_bias" in layer:
        fused = fused + layer["qkv_bias"]
    q, keys, values = jnp.split(fused, [n * h, (n + k) * h], axis=-1)
    q, keys, values = q.reshape(b, t, n, h), keys.reshape(b, t, k, h), values.reshape(b, t, k, h)
    if "q_norm" in layer:
        q, keys = rms_norm(q, layer["q_norm"], c.rms_norm_eps), rms_norm(keys, layer["k_norm"], c.rms_norm_eps)
    return apply_rope(q, *rope), apply_rope(keys, *rope), values


def _finish_block(layer: dict[str, jax.Array], x: jax.Array, attended: jax.Array,
                  weights: DecodeWeights) -> jax.Array:
    """The residual stream after the attention output projection and the SwiGLU MLP."""
    b, t = x.shape[:2]
    out = attended.reshape(b, t, -1) @ layer["o"]
    x = x + (out + layer["o_bias"] if "o_bias" in layer else out)
    gate_up = rms_norm(x, layer["ln2"], weights.config.rms_norm_eps) @ layer["gate_up"]
    if "gate_up_bias" in layer:
        gate_up = gate_up + layer["gate_up_bias"]
    gate, up = jnp.split(gate_up, 2, axis=-1)
    down = (jax.nn.silu(gate) * up) @ layer["down"]
    return x + (down + layer["down_bias"] if "down_bias" in layer else down)


def logits(weights: DecodeWeights, hidden: jax.Array) -> jax.Array:
    """Float32 vocabulary logits of final-normed hidden states [..., E]."""
    return jnp.matmul(hidden, weights.head, preferred_element_type=jnp.float32)


def prefill(weights: DecodeWeights, ids: jax.Array, lengths: jax.Array) -> tuple[jax.Array, list[jax.Array],
                                                                                  list[jax.Array]]:
    """Run right-padded prompts ids [U, P] with `lengths` [U] real tokens: the last real token's logits
    [U, V] (float32) and each layer's keys [U, K, H, P] and values [U, K, P, H] in the cache layout."""
    c = weights.config
    u, p = ids.shape
    positions = jnp.broadcast_to(jnp.arange(p, dtype=jnp.int32), (u, p))
    segments = (positions < lengths[:, None]).astype(jnp.int32)  # padding: segment 0
    x = shard_activation(jnp.take(weights.embed, ids, axis=0), ("batch", "length", "act_embed"))
    rope = rope_tables(c, positions)  # once for every layer
    keys, values = [], []
    for layer in weights.layers:
        q, k, v = _qkv(layer, x, rope, weights)
        attended = attend(q, k, v, q_segments=segments, kv_segments=segments, q_index=positions,
                          kv_index=positions, requested=c.attention_impl, cached=True)
        x = _finish_block(layer, x, attended, weights)
        keys.append(shard_activation(jnp.transpose(k, (0, 2, 3, 1)), KEY_AXES))
        values.append(shard_activation(jnp.transpose(v, (0, 2, 1, 3)), VALUE_AXES))
    last = jnp.take_along_axis(x, (lengths - 1)[:, None, None], axis=1)[:, 0]
    return logits(weights, rms_norm(last, weights.norm, c.rms_norm_eps)), keys, values


def _visible(cache: Cache) -> tuple[jax.Array, jax.Array]:
    """Which slots a decode step's query attends to, the same in every layer: prefix [U, P] (the prompt's
    tokens) and suffix [U, G, S] (the row's last `suffix_lengths` ring slots, this step's included)."""
    u, g = cache.prefix_lengths.shape[0], cache.group_size
    prefix = jnp.arange(cache.prefix_keys[0].shape[-1]) < cache.prefix_lengths[:, None]
    age = (cache.suffix_next - 1 - jnp.arange(cache.suffix_slots)) % cache.suffix_slots  # 0: written last
    return prefix, age < cache.suffix_lengths.reshape(u, g)[..., None]


def _attend_cached(q: jax.Array, prefix: tuple[jax.Array, jax.Array], suffix: tuple[jax.Array, jax.Array],
                   visible: tuple[jax.Array, jax.Array]) -> jax.Array:
    """Attention of each row's one query q [B, N, H] over its prompt's prefix (keys, values) and its own suffix
    (keys, values), masked by `visible` (`_visible`): [B, N, H]. One softmax over both parts (float32), so the
    result equals attention over their concatenation."""
    b, n, h = q.shape
    (pk, pv), (sk, sv) = prefix, suffix
    u, kv = pk.shape[:2]
    g = b // u
    prefix_scores = jnp.einsum("ugknh,ukhp->ugknp", q.reshape(u, g, kv, n // kv, h), pk,
                               preferred_element_type=jnp.float32)
    suffix_scores = jnp.einsum("bknh,bkhs->bkns", q.reshape(b, kv, n // kv, h), sk,
                               preferred_element_type=jnp.float32).reshape(u, g, kv, n // kv, -1)
    low = jnp.float32(-1e30)
    prefix_scores = jnp.where(visible[0][:, None, None, None], prefix_scores * h ** -0.5, low)
    suffix_scores = jnp.where(visible[1][:, :, None, None], suffix_scores * h ** -0.5, low)
    top = jnp.maximum(prefix_scores.max(-1, keepdims=True), suffix_scores.max(-1, keepdims=True))
    prefix_w, suffix_w = jnp.exp(prefix_scores - top), jnp.exp(suffix_scores - top)
    total = prefix_w.sum(-1, keepdims=True) + suffix_w.sum(-1, keepdims=True)
    out = jnp.einsum("ugknp,ukph->ugknh", (prefix_w / total).astype(pv.dtype), pv,
                     preferred_element_type=jnp.float32)
    suffix_p = (suffix_w / total).astype(sv.dtype).reshape(b, kv, n // kv, -1)
    out = out.reshape(b, kv, n // kv, h) + jnp.einsum("bkns,bksh->bknh", suffix_p, sv,
                                                      preferred_element_type=jnp.float32)
    return out.reshape(b, n, h).astype(q.dtype)


def _write(cache_part: jax.Array, new: jax.Array, slot: jax.Array, axis: int) -> jax.Array:
    """Write every row's new key or value (new [B, K, H]) at ring slot `slot` along `axis`, in place."""
    start = [0, 0, 0, 0]
    start[axis] = slot
    return jax.lax.dynamic_update_slice(cache_part, jnp.expand_dims(new.astype(cache_part.dtype), axis), start)


def decode_step(weights: DecodeWeights, tokens: jax.Array, positions: jax.Array,
                cache: Cache) -> tuple[jax.Array, Cache]:
    """Feed one token per row (tokens, positions [B]); their keys and values go to ring slot
    `cache.suffix_next`, and each row's suffix length counts them. Returns float32 logits [B, V] and the cache."""
    c = weights.config
    slot = cache.suffix_next
    cache = dataclasses.replace(cache, suffix_lengths=cache.suffix_lengths + 1,
                                suffix_next=(slot + 1) % cache.suffix_slots)
    x = jnp.take(weights.embed, tokens[:, None], axis=0)  # [B, 1, E]
    rope, visible = rope_tables(c, positions[:, None]), _visible(cache)  # once for every layer
    suffix_keys, suffix_values = [], []
    for i, layer in enumerate(weights.layers):
        q, k, v = _qkv(layer, x, rope, weights)
        suffix_keys.append(_write(cache.suffix_keys[i], k[:, 0], slot, axis=3))
        suffix_values.append(_write(cache.suffix_values[i], v[:, 0], slot, axis=2))
        attended = _attend_cached(q[:, 0], (cache.prefix_keys[i], cache.prefix_values[i]),
                                  (suffix_keys[i], suffix_values[i]), visible)
        x = _finish_block(layer, x, attended[:, None], weights)
    cache = dataclasses.replace(cache, suffix_keys=tuple(suffix_keys), suffix_values=tuple(suffix_values))
    return logits(weights, rms_norm(x[:, 0], weights.norm, c.rms_norm_eps)), cache


def empty_suffix(batch: int, slots: int, weights: DecodeWeights, dtype: Any) -> tuple[tuple[jax.Array, ...], ...]:
    """Zeroed suffix keys and values for `batch` rows of `slots` slots, sharded like activations."""
    c = weights.config
    keys = tuple(shard_activation(jnp.zeros((batch, c.num_kv_heads, c.head_dim, slots), dtype), KEY_AXES)
                 for _ in range(c.num_layers))
    values = tuple(shard_activation(jnp.zeros((batch, c.num_kv_heads, slots, c.head_dim), dtype), VALUE_AXES)
                   for _ in range(c.num_layers))
    return keys, values


def grow_suffix(cache: Cache, slots: int) -> Cache:
    """The cache with room for `slots` suffix slots (entries kept): the ring is unrolled oldest-first and padded,
    one copy per bucket change."""
    extra, oldest = slots - cache.suffix_slots, cache.suffix_next
    keys = tuple(shard_activation(jnp.pad(jnp.roll(k, -oldest, axis=3), ((0, 0), (0, 0), (0, 0), (0, extra))),
                                  KEY_AXES) for k in cache.suffix_keys)
    values = tuple(shard_activation(jnp.pad(jnp.roll(v, -oldest, axis=2), ((0, 0), (0, 0), (0, extra), (0, 0))),
                                    VALUE_AXES) for v in cache.suffix_values)
    return dataclasses.replace(cache, suffix_keys=keys, suffix_values=values,
                               suffix_next=jnp.asarray(cache.suffix_slots, jnp.int32))
