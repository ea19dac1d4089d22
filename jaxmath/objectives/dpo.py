"""DPO preference objectives (sigmoid / cDPO, IPO, robust rDPO) against precomputed reference log-probs.

Batch layout (chosen and rejected rows padded to the same length T; per-token arrays aligned with the ids):
  chosen_input_ids, rejected_input_ids            [B, T] int   prompt + response
  chosen_attention_mask, rejected_attention_mask  [B, T] int   1 on real tokens
  chosen_loss_mask, rejected_loss_mask            [B, T] int   1 on the response tokens to score
  ref_chosen_logps, ref_rejected_logps            [B]  float   the reference model's *summed* response
                                                               log-probs (`reference_log_probs`)
A pair counts only when both responses have at least one scored token (all-padding rows are ignored).
Metrics are additive totals (pairs, correct_pairs, margin_sum, chosen_reward_sum, rejected_reward_sum);
`DPO_MEANS` turns them into the reward accuracy and mean implicit-reward margin.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Mapping

import jax
import jax.numpy as jnp
from flax import nnx

from jaxmath.objectives.sft import chunked_target_log_probs, next_token_targets, token_log_probs

SIDES = ("chosen", "rejected")


def dpo_sigmoid(h: jax.Array, beta: float, label_smoothing: float) -> jax.Array:
    """-log sigmoid(beta h), or with label smoothing eps the conservative cDPO mix with the flipped label."""
    return -(1.0 - label_smoothing) * jax.nn.log_sigmoid(beta * h) - label_smoothing * jax.nn.log_sigmoid(-beta * h)


def dpo_ipo(h: jax.Array, beta: float, label_smoothing: float) -> jax.Array:
    """IPO (Azar et al.): (h - 1 / (2 beta))^2, a bounded target margin instead of an unbounded push."""
    return jnp.square(h - 0.5 / beta)


def dpo_robust(h: jax.Array, beta: float, label_smoothing: float) -> jax.Array:
    """rDPO (Chowdhury et al.): unbiased under preference labels flipped with probability eps."""
    return ((1.0 - label_smoothing) * -jax.nn.log_sigmoid(beta * h)
            + label_smoothing * jax.nn.log_sigmoid(-beta * h)) / (1.0 - 2.0 * label_smoothing)


DPO_LOSSES: dict[str, Callable[[jax.Array, float, float], jax.Array]] = {
    "sigmoid": dpo_sigmoid, "ipo": dpo_ipo, "robust": dpo_robust}

DPO_MEANS: dict[str, tuple[str, str]] = {
    "reward_accuracy": ("correct_pairs", "pairs"),
    "reward_margin": ("margin_sum", "pairs"),
    "chosen_reward": ("chosen_reward_sum", "pairs"),
    "rejected_reward": ("rejected_reward_sum", "pairs"),
}


@dataclasses.dataclass(frozen=True)
class DPOConfig:
    """DPO settings. `label_smoothing` is the assumed label-flip rate (sigmoid: cDPO; robust: rDPO);
    `length_normalize` averages log-probs over response tokens (default: only for IPO, as TRL does)."""

    beta: float = 0.1
    loss_type: str = "sigmoid"
    label_smoothing: float = 0.0
    length_normalize: bool | None = None

    def __post_init__(self) -> None:
        if self.beta <= 0.0:
            raise ValueError(f"beta must be positive, got {self.beta}")
        if self.loss_type not in DPO_LOSSES:
            raise ValueError(f"unknown loss_type {self.loss_type!r}; choose one of {sorted(DPO_LOSSES)}")
        if not 0.0 <= self.label_smoothing < 0.5:
            raise ValueError(f"label_smoothing must lie in [0, 0.5), got {self.label_smoothing}")

    @property
    def normalizes_length(self) -> bool:
        return self.loss_type == "ipo" if self.length_normalize is None else self.length_normalize


def dpo_loss_terms(chosen_logps: jax.Array, rejected_logps: jax.Array, ref_chosen_logps: jax.Array,
                   ref_rejected_logps: jax.Array, config: DPOConfig, valid: jax.Array | None = None
                   ) -> tuple[jax.Array, jax.Array, dict[str, jax.Array]]:
    """(sum of per-pair losses, number of pairs, metric totals) from per-sequence log-probs [B].

    h = (log pi(y_w) - log ref(y_w)) - (log pi(y_l) - log ref(y_l)); the implicit rewards are beta times
    each bracket. `valid` [B] (default all) says which pairs count.
    """
    chosen_ratio = chosen_logps.astype(jnp.float32) - ref_chosen_logps.astype(jnp.float32)
    rejected_ratio = rejected_logps.astype(jnp.float32) - ref_rejected_logps.astype(jnp.float32)
    weight = jnp.ones_like(chosen_ratio) if valid is None else valid.astype(jnp.float32)
    losses = DPO_LOSSES[config.loss_type](chosen_ratio - rejected_ratio, config.beta, config.label_smoothing)
    chosen_reward = jax.lax.stop_gradient(config.beta * chosen_ratio)
    rejected_reward = jax.lax.stop_gradient(config.beta * rejected_ratio)
    metrics = {"pairs": weight.sum(),
               "correct_pairs": ((chosen_reward > rejected_reward) * weight).sum(),
               "margin_sum": ((chosen_reward - rejected_reward) * weight).sum(),
               "chosen_reward_sum": (chosen_reward * weight).sum(),
               "rejected_reward_sum": (rejected_reward * weight).sum()}
    return (losses * weight).sum(), weight.sum(), metrics


def sequence_log_probs(logits: jax.Array, input_ids: jax.Array, loss_mask: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(summed log-prob of the tokens marked in loss_mask [B], how many there are [B]) for each row."""
    targets, weights = next_token_targets({"input_ids": input_ids, "loss_mask": loss_mask})
    return jnp.sum(token_log_probs(logits, targets) * weights, axis=1), jnp.sum(weights, axis=1)


def _require(batch: Mapping[str, jax.Array], name: str) -> jax.Array:
    if name not in batch:
        raise KeyError(f"DPO batch has no {name!r} (keys: {sorted(batch)})")
    return batch[name]


def pair_log_probs(model: nnx.Module, batch: Mapping[str, jax.Array]
                   ) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """(chosen, rejected) summed response log-probs [B] and (chosen, rejected) token counts [B], from one
    forward pass over both sides; vocabulary logits are projected in chunks (see sft.chunked_target_log_probs)."""
    keys = ("input_ids", "attention_mask", "loss_mask")
    parts = {key: [_require(batch, f"{side}_{key}") for side in SIDES] for key in keys}
    if parts["input_ids"][0].shape != parts["input_ids"][1].shape:
        raise ValueError(f"chosen_input_ids {parts['input_ids'][0].shape} and rejected_input_ids "
                         f"{parts['input_ids'][1].shape} must have the same shape (pad both to one length)")
    ids, mask, loss_mask = (jnp.concatenate(parts[key], axis=0) for key in keys)
    targets, weights = next_token_targets({"input_ids": ids, "loss_mask": loss_mask})
    logps = jnp.sum(chunked_target_log_probs(model, model.model(ids, attention_mask=mask), targets) * weights, axis=1)
    counts = jnp.sum(weights, axis=1)
    rows = parts["input_ids"][0].shape[0]
    return logps[:rows], logps[rows:], counts[:rows], counts[rows:]


def reference_log_probs(model: nnx.Module, batch: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
    """The batch's `ref_chosen_logps` / `ref_rejected_logps` [B] under a frozen reference `model`. The trainer
    runs it once over the data before training (precompute) or inside the train step (on the fly)."""
    chosen, rejected, _, _ = pair_log_probs(model, batch)
    return {"ref_chosen_logps": jax.lax.stop_gradient(chosen), "ref_rejected_logps": jax.lax.stop_gradient(rejected)}


def dpo_loss(model: nnx.Module, batch: Mapping[str, jax.Array], rng: jax.Array, config: DPOConfig = DPOConfig()
             ) -> tuple[jax.Array, jax.Array, dict[str, jax.Array]]:
    """The train-step loss function for DPO on the batch layout in this module's docstring."""
    ref_chosen, ref_rejected = (_require(batch, f"ref_{side}_logps") for side in SIDES)
    chosen, rejected, chosen_n, rejected_n = pair_log_probs(model, batch)
    if config.normalizes_length:
        chosen, ref_chosen = chosen / jnp.maximum(chosen_n, 1.0), ref_chosen / jnp.maximum(chosen_n, 1.0)
        rejected, ref_rejected = rejected / jnp.maximum(rejected_n, 1.0), ref_rejected / jnp.maximum(rejected_n, 1.0)
    valid = (chosen_n > 0) & (rejected_n > 0)
    return dpo_loss_terms(chosen, rejected, ref_chosen, ref_rejected, config, valid)
