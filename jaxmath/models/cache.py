"""The key/value cache for incremental decoding: preallocated, stacked over layers, updated in place.

Slots carry the position and segment of the token written there (segment 0 = empty or padding), so the
attention mask for any query is "same segment and not in the future", for prefill and decode alike.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from jaxmath.models.config import ModelConfig


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class KVCache:
    """Keys and values [layers, batch, slots, kv_heads, head_dim] plus each slot's position and segment."""

    keys: jax.Array
    values: jax.Array
    positions: jax.Array  # [batch, slots] int32
    segments: jax.Array  # [batch, slots] int32, 0 = empty

    @classmethod
    def init(cls, config: ModelConfig, batch: int, slots: int, dtype: str | jnp.dtype | None = None) -> "KVCache":
        """An empty cache; `dtype` defaults to the model's compute dtype (bfloat16 halves its memory)."""
        shape = (config.num_layers, batch, slots, config.num_kv_heads, config.head_dim)
        dtype = config.compute_dtype if dtype is None else jnp.dtype(dtype)
        return cls(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype),
                   jnp.zeros((batch, slots), jnp.int32), jnp.zeros((batch, slots), jnp.int32))

    @property
    def slots(self) -> int:
        return self.keys.shape[2]


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class CacheView:
    """One layer's window onto the cache during a forward pass over new tokens written at `index`."""

    keys: jax.Array  # the full stacked cache; written in place at (layer, :, index)
    values: jax.Array
    kv_positions: jax.Array  # [batch, slots], already including the new tokens
    kv_segments: jax.Array
    q_positions: jax.Array  # [batch, new]
    q_segments: jax.Array
    layer: jax.Array  # scalar int32
    index: jax.Array  # scalar int32: slot of the first new token

    def write(self, k: jax.Array, v: jax.Array) -> "CacheView":
        at = (self.layer, 0, self.index, 0, 0)
        keys = jax.lax.dynamic_update_slice(self.keys, k[None].astype(self.keys.dtype), at)
        values = jax.lax.dynamic_update_slice(self.values, v[None].astype(self.values.dtype), at)
        return dataclasses.replace(self, keys=keys, values=values)

    def layer_kv(self, dtype: jnp.dtype) -> tuple[jax.Array, jax.Array]:
        keys = jax.lax.dynamic_index_in_dim(self.keys, self.layer, axis=0, keepdims=False)
        values = jax.lax.dynamic_index_in_dim(self.values, self.layer, axis=0, keepdims=False)
        return keys.astype(dtype), values.astype(dtype)
