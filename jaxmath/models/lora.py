"""LoRA helpers: which parameters are adapters, and merging them into the base.

The adapters themselves live in the model (see `layers.add_lora` / `layers.project`); these functions
work on the pure-dict parameter trees that the trainer, checkpoints and exporters pass around.
"""
from __future__ import annotations

from typing import Any

import numpy as np
from flax import traverse_util

from jaxmath.models.config import ModelConfig

LORA_MARK = "_lora_"


def is_lora_path(path: str | tuple[str, ...]) -> bool:
    name = path if isinstance(path, str) else "/".join(map(str, path))
    return LORA_MARK in name


def merge_lora(params: dict[str, Any], config: ModelConfig, xp: Any = np) -> dict[str, Any]:
    """Base parameters with W + (alpha / rank) A B folded in and the adapters removed, computed with the array
    module `xp`: numpy on the host (export), jax.numpy inside a jitted function (the sampler's weights)."""
    flat = {k: xp.asarray(v) for k, v in traverse_util.flatten_dict(params).items()}
    merged = {k: v for k, v in flat.items() if not is_lora_path(k)}
    for key, a in flat.items():
        if not key[-1].endswith("_lora_a"):
            continue
        name = key[-1][: -len("_lora_a")]
        b = flat[(*key[:-1], f"{name}_lora_b")]
        kernel_key = (*key[:-1], name)
        kernel = merged[kernel_key]
        lead = a.ndim + b.ndim - 2 - kernel.ndim  # 1 when stacked over layers, else 0
        a2 = a.reshape(*a.shape[:lead], -1, a.shape[-1]).astype(xp.float32)
        b2 = b.reshape(*b.shape[:lead], b.shape[lead], -1).astype(xp.float32)
        # A B is [in, out]; kernels are stored [out..., in...] (HF layout).
        delta = (xp.swapaxes(a2 @ b2, -1, -2) * config.lora_scale).reshape(kernel.shape)
        merged[kernel_key] = (kernel.astype(xp.float32) + delta).astype(kernel.dtype)
    return traverse_util.unflatten_dict(merged)
