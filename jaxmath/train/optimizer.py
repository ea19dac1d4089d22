"""The Optax chain from config: schedule, clipping, AdamW with a decay mask, frozen groups, state dtype."""
from __future__ import annotations

import dataclasses
import re
from typing import Any, Literal

import jax
import jax.numpy as jnp
import optax

from jaxmath.models.config import as_dtype


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    """AdamW with warmup + decay schedule and global-norm clipping (the defaults of most LLM fine-tunes)."""

    lr: float = 1e-5
    schedule: Literal["cosine", "linear", "constant"] = "cosine"
    warmup_steps: int = 0
    total_steps: int | None = None  # decay horizon; defaults to the run's step count
    min_lr_ratio: float = 0.0  # final lr = lr * min_lr_ratio for cosine / linear
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 0.0
    clip_norm: float | None = 1.0
    grad_accum: int = 1  # micro-batches per update, accumulated exactly inside the train step
    state_dtype: str = "float32"  # "bfloat16" halves Adam's first-moment memory
    freeze: list[str] = dataclasses.field(default_factory=list)  # regexes over "model/embed_tokens"-style paths;
    # frozen parameters get neither gradients nor optimizer state (see jaxmath.train.state.partition)

    def __post_init__(self) -> None:
        if self.lr <= 0:
            raise ValueError(f"optimizer.lr must be positive, got {self.lr}")
        if self.grad_accum < 1:
            raise ValueError(f"optimizer.grad_accum must be >= 1, got {self.grad_accum}")
        as_dtype(self.state_dtype)
        for pattern in self.freeze:
            re.compile(pattern)


def make_schedule(config: OptimizerConfig, total_steps: int) -> optax.Schedule:
    """Linear warmup to `lr`, then cosine / linear decay to `lr * min_lr_ratio` (or constant)."""
    horizon = max(config.total_steps or total_steps, config.warmup_steps + 1)
    decay_steps = horizon - config.warmup_steps
    final = config.lr * config.min_lr_ratio
    if config.schedule == "cosine":
        decay = optax.cosine_decay_schedule(config.lr, decay_steps, alpha=config.min_lr_ratio)
    elif config.schedule == "linear":
        decay = optax.linear_schedule(config.lr, final, decay_steps)
    else:
        decay = optax.constant_schedule(config.lr)
    if config.warmup_steps == 0:
        return decay
    warmup = optax.linear_schedule(config.lr / config.warmup_steps, config.lr, config.warmup_steps - 1)
    return optax.join_schedules([warmup, decay], [config.warmup_steps])


def param_path(path: tuple[Any, ...]) -> str:
    """'model/layers/self_attn/q_proj' for a pytree key path."""
    return "/".join(str(getattr(k, "key", getattr(k, "name", k))) for k in path)


def decay_mask(params: Any) -> Any:
    """Weight decay applies to matrices, not to norm scales or biases."""
    def decays(path: tuple[Any, ...], _: Any) -> bool:
        name = param_path(path)
        return not (name.endswith("scale") or name.endswith("bias"))
    return jax.tree_util.tree_map_with_path(decays, params)


def make_optimizer(config: OptimizerConfig, total_steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """The Optax chain and its learning-rate schedule (the trainer logs schedule(step))."""
    schedule = make_schedule(config, total_steps)
    parts = []
    if config.clip_norm:
        parts.append(optax.clip_by_global_norm(config.clip_norm))
    parts.append(optax.adamw(schedule, b1=config.b1, b2=config.b2, eps=config.eps,
                             weight_decay=config.weight_decay, mask=decay_mask,
                             mu_dtype=jnp.dtype(as_dtype(config.state_dtype))))
    return optax.chain(*parts), schedule
