"""Rotary position embeddings with the scaling types Qwen/Llama/DeepSeek checkpoints ship.

The inverse frequencies follow the published formulas (and transformers' implementation of them):
linear (position interpolation), dynamic NTK, YaRN and Llama 3.1.
"""
from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxmath.models.config import ModelConfig


def _base_inv_freq(theta: float, dim: int) -> np.ndarray:
    return 1.0 / (theta ** (np.arange(0, dim, 2, dtype=np.float32) / dim))


def _yarn(theta: float, dim: int, p: dict[str, Any], max_pos: int) -> tuple[np.ndarray, float]:
    factor = p.get("factor") or max_pos / p["original_max_position_embeddings"]
    original = p["original_max_position_embeddings"]

    def mscale(scale: float, m: float = 1.0) -> float:
        return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

    attention_factor = p.get("attention_factor")
    if attention_factor is None:
        if p.get("mscale") and p.get("mscale_all_dim"):
            attention_factor = mscale(factor, p["mscale"]) / mscale(factor, p["mscale_all_dim"])
        else:
            attention_factor = mscale(factor)
    beta_fast, beta_slow = p.get("beta_fast") or 32, p.get("beta_slow") or 1

    def correction_dim(rotations: float) -> float:
        return dim * math.log(original / (rotations * 2 * math.pi)) / (2 * math.log(theta))

    low, high = correction_dim(beta_fast), correction_dim(beta_slow)
    if p.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001
    ramp = np.clip((np.arange(dim // 2, dtype=np.float32) - low) / (high - low), 0, 1)
    extrapolation_weight = 1 - ramp
    pos_freqs = theta ** (np.arange(0, dim, 2, dtype=np.float32) / dim)
    inv = (1 / (factor * pos_freqs)) * (1 - extrapolation_weight) + (1 / pos_freqs) * extrapolation_weight
    return inv.astype(np.float32), float(attention_factor)


def _llama3(theta: float, dim: int, p: dict[str, Any]) -> np.ndarray:
    inv = _base_inv_freq(theta, dim)
    factor, low_f, high_f = p["factor"], p["low_freq_factor"], p["high_freq_factor"]
    old_len = p["original_max_position_embeddings"]
    low_wavelen, high_wavelen = old_len / low_f, old_len / high_f
    wavelen = 2 * math.pi / inv
    scaled = np.where(wavelen > low_wavelen, inv / factor, inv)
    smooth = (old_len / wavelen - low_f) / (high_f - low_f)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
    return np.where(medium, smoothed, scaled).astype(np.float32)


def inverse_frequencies(config: ModelConfig, seq_len: jax.Array | int | None = None) -> tuple[jax.Array, float]:
    """Return (inv_freq [head_dim/2], attention_factor). `seq_len` only matters for dynamic NTK scaling."""
    theta, dim, p = config.rope_theta, config.head_dim, config.rope_params
    rope_type = p.get("rope_type", "default")
    if rope_type == "linear":
        return jnp.asarray(_base_inv_freq(theta, dim) / p["factor"]), 1.0
    if rope_type == "dynamic":
        max_pos = config.max_position_embeddings
        length = jnp.maximum(jnp.asarray(max_pos if seq_len is None else seq_len, jnp.float32), max_pos)
        factor = p["factor"]
        base = theta * ((factor * length / max_pos) - (factor - 1)) ** (dim / (dim - 2))
        return 1.0 / (base ** (jnp.arange(0, dim, 2, dtype=jnp.float32) / dim)), 1.0
    if rope_type == "yarn":
        inv, attention_factor = _yarn(theta, dim, p, config.max_position_embeddings)
        return jnp.asarray(inv), attention_factor
    if rope_type == "llama3":
        return jnp.asarray(_llama3(theta, dim, p)), 1.0
    return jnp.asarray(_base_inv_freq(theta, dim)), 1.0


def rope_tables(config: ModelConfig, positions: jax.Array) -> tuple[jax.Array, jax.Array]:
    """cos and sin tables [batch, length, head_dim] (float32) for integer `positions` [batch, length]."""
    inv_freq, attention_factor = inverse_frequencies(config, seq_len=jnp.max(positions) + 1)
    angles = positions.astype(jnp.float32)[..., None] * inv_freq
    angles = jnp.concatenate([angles, angles], axis=-1)
    return jnp.cos(angles) * attention_factor, jnp.sin(angles) * attention_factor


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """Rotate `x` [batch, length, heads, head_dim] by the tables (rotate-half convention, as in HF)."""
    half = x.shape[-1] // 2
    x32 = x.astype(jnp.float32)
    rotated = jnp.concatenate([-x32[..., half:], x32[..., :half]], axis=-1)
    out = x32 * cos[:, :, None, :] + rotated * sin[:, :, None, :]
    return out.astype(x.dtype)
