"""GRPO (DeepSeekMath) policy objective: group advantages, clipped importance ratio, KL to a reference.

Small pure functions registered by name (advantage estimators, KL estimators, loss aggregations), one
`grpo_loss_terms` that combines them on arrays, and the `grpo_loss(model, batch, rng, config)` adapter the
train step calls.

Batch layout (every per-token array is aligned with `input_ids`: entry t describes token t):
  input_ids        [B, T] int   prompt (left-padded) followed by the completion (right-padded)
  attention_mask   [B, T] int   1 on real tokens
  completion_mask  [B, T] int   1 on the completion tokens to score (never position 0)
  old_logprobs     [B, T] float log-prob of each token under the policy that sampled it
  ref_logprobs     [B, T] float log-prob under the reference policy; may be omitted when beta = 0
  advantages       [B]    float one advantage per completion (see `compute_advantages`)
Rows are completions; a group's G completions need not be adjacent once advantages are computed.

Metrics are additive totals (tokens, clipped_tokens, ratio_sum, kl_sum, entropy_sum, sequences) so they
stay exact when the train step sums them over micro-batches; `GRPO_MEANS` says how to turn them into means.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Callable, Mapping

import jax
import jax.numpy as jnp
from flax import nnx

from jaxmath.objectives.sft import chunked_log_probs_and_entropy, token_log_probs

# ---------------------------------------------------------------- advantage estimators


def _groups(rewards: jax.Array, group_size: int) -> jax.Array:
    """[num_groups * G] -> [num_groups, G] (each group's completions adjacent), with the sizes checked."""
    rewards = jnp.asarray(rewards, jnp.float32)
    if rewards.ndim != 1:
        raise ValueError(f"rewards must be 1-D [num_groups * group_size], got shape {rewards.shape}")
    if group_size < 2:
        raise ValueError(f"group_size must be at least 2 for group-relative advantages, got {group_size}")
    if rewards.shape[0] % group_size:
        raise ValueError(f"{rewards.shape[0]} rewards do not split into groups of {group_size}")
    return rewards.reshape(-1, group_size)


def group_advantages(rewards: jax.Array, group_size: int, scale_by_std: bool = True, eps: float = 1e-4) -> jax.Array:
    """GRPO: (r - group mean) / (group std + eps), std with ddof=1 as TRL; `scale_by_std=False` only centres
    (Dr. GRPO), which avoids up-weighting groups whose rewards barely differ."""
    r = _groups(rewards, group_size)
    centred = r - r.mean(axis=1, keepdims=True)
    if scale_by_std:
        centred = centred / (r.std(axis=1, ddof=1, keepdims=True) + eps)
    return centred.reshape(-1)


def rloo_advantages(rewards: jax.Array, group_size: int) -> jax.Array:
    """RLOO: r_i minus the mean of the other G - 1 rewards of its group (an unbiased leave-one-out baseline)."""
    r = _groups(rewards, group_size)
    others = (r.sum(axis=1, keepdims=True) - r) / (group_size - 1)
    return (r - others).reshape(-1)


ADVANTAGE_ESTIMATORS: dict[str, Callable[[jax.Array, int], jax.Array]] = {
    "grpo": group_advantages,
    "grpo_no_std": functools.partial(group_advantages, scale_by_std=False),
    "rloo": rloo_advantages,
}


def compute_advantages(rewards: jax.Array, group_size: int, estimator: str = "grpo") -> jax.Array:
    """Per-completion advantages [num_groups * G] from rewards laid out group after group."""
    return _lookup(ADVANTAGE_ESTIMATORS, estimator, "advantage estimator")(rewards, group_size)


# ---------------------------------------------------------------- KL estimators
# Each takes d = log pi_ref - log pi per token (sampled from pi) and estimates KL(pi || pi_ref) (Schulman, 2020).


def kl_k1(d: jax.Array) -> jax.Array:
    """log(pi / pi_ref): unbiased, high variance, can be negative."""
    return -d


def kl_k2(d: jax.Array) -> jax.Array:
    """(log(pi_ref / pi))^2 / 2: biased, low variance, never negative."""
    return 0.5 * jnp.square(d)


def kl_k3(d: jax.Array) -> jax.Array:
    """pi_ref / pi - log(pi_ref / pi) - 1: unbiased and never negative (the DeepSeekMath choice)."""
    return jnp.expm1(d) - d


KL_ESTIMATORS: dict[str, Callable[[jax.Array], jax.Array]] = {"k1": kl_k1, "k2": kl_k2, "k3": kl_k3}

# ---------------------------------------------------------------- aggregations
# Each maps masked per-token losses [B, T] and the float mask to (numerator, denominator) of the step loss.


def aggregate_sequence_mean(losses: jax.Array, mask: jax.Array, max_completion_length: int | None
                            ) -> tuple[jax.Array, jax.Array]:
    """Mean over each sequence's tokens, then over sequences (DeepSeekMath): rows without scored tokens
    do not count."""
    counts = mask.sum(axis=1)
    per_sequence = (losses * mask).sum(axis=1) / jnp.maximum(counts, 1.0)
    return per_sequence.sum(), (counts > 0).sum().astype(jnp.float32)


def aggregate_token_mean(losses: jax.Array, mask: jax.Array, max_completion_length: int | None
                         ) -> tuple[jax.Array, jax.Array]:
    """Mean over every scored token of the batch (DAPO): long completions weigh as much per token."""
    return (losses * mask).sum(), mask.sum()


def aggregate_constant(losses: jax.Array, mask: jax.Array, max_completion_length: int | None
                       ) -> tuple[jax.Array, jax.Array]:
    """Token sum over (sequences x max_completion_length) (Dr. GRPO): no length bias in either direction."""
    if not max_completion_length:
        raise ValueError("the 'constant' aggregation needs max_completion_length > 0")
    sequences = (mask.sum(axis=1) > 0).sum().astype(jnp.float32)
    return (losses * mask).sum(), sequences * float(max_completion_length)


AGGREGATIONS: dict[str, Callable[[jax.Array, jax.Array, int | None], tuple[jax.Array, jax.Array]]] = {
    "sequence_mean": aggregate_sequence_mean,
    "token_mean": aggregate_token_mean,
    "constant": aggregate_constant,
}

IMPORTANCE_LEVELS = ("token", "sequence")

# How the additive metric totals become means: mean name -> (total key, count key).
GRPO_MEANS: dict[str, tuple[str, str]] = {
    "clip_fraction": ("clipped_tokens", "tokens"),
    "ratio_mean": ("ratio_sum", "tokens"),
    "kl_mean": ("kl_sum", "tokens"),
    "entropy_mean": ("entropy_sum", "tokens"),
    "completion_length_mean": ("tokens", "sequences"),
}


def _lookup(table: Mapping[str, Callable], name: str, what: str) -> Callable:
    if name not in table:
        raise ValueError(f"unknown {what} {name!r}; choose one of {sorted(table)}")
    return table[name]


@dataclasses.dataclass(frozen=True)
class GRPOConfig:
    """GRPO loss settings. `epsilon_high` (clip-higher, DAPO uses 0.28) defaults to `epsilon`; beta = 0 drops
    the KL term and the need for reference log-probs; `importance_level="sequence"` is GSPO (use a much
    smaller epsilon there, e.g. 3e-4 / 4e-4); `max_completion_length` is the Dr. GRPO normaliser."""

    epsilon: float = 0.2
    epsilon_high: float | None = None
    beta: float = 0.04
    kl_estimator: str = "k3"
    importance_level: str = "token"
    aggregation: str = "sequence_mean"
    max_completion_length: int | None = None
    compute_entropy: bool = True

    def __post_init__(self) -> None:
        if not 0.0 < self.epsilon < 1.0:
            raise ValueError(f"epsilon must lie in (0, 1), got {self.epsilon}")
        if self.epsilon_high is not None and self.epsilon_high <= 0.0:
            raise ValueError(f"epsilon_high must be positive, got {self.epsilon_high}")
        if self.beta < 0.0:
            raise ValueError(f"beta must be >= 0, got {self.beta}")
        _lookup(KL_ESTIMATORS, self.kl_estimator, "kl_estimator")
        _lookup(AGGREGATIONS, self.aggregation, "aggregation")
        if self.importance_level not in IMPORTANCE_LEVELS:
            raise ValueError(f"unknown importance_level {self.importance_level!r}; choose one of {IMPORTANCE_LEVELS}")
        if self.aggregation == "constant" and not (self.max_completion_length and self.max_completion_length > 0):
            raise ValueError("aggregation 'constant' needs max_completion_length > 0")

    @property
    def upper_epsilon(self) -> float:
        return self.epsilon if self.epsilon_high is None else self.epsilon_high


# ---------------------------------------------------------------- the objective


def grpo_loss_terms(logprobs: jax.Array, old_logprobs: jax.Array, advantages: jax.Array,
                    completion_mask: jax.Array, config: GRPOConfig, ref_logprobs: jax.Array | None = None
                    ) -> tuple[jax.Array, jax.Array, dict[str, jax.Array]]:
    """(numerator, denominator, metric totals) of the clipped GRPO loss on token-aligned [B, T] log-probs.

    Per token: -min(rho * A, clip(rho, 1 - eps, 1 + eps_high) * A) + beta * KL, where rho = pi / pi_old per
    token, or (GSPO) the sequence's length-normalised ratio exp(mean_t log(pi / pi_old)) on all its tokens.
    """
    mask = completion_mask.astype(jnp.float32)
    scored = mask > 0
    logprobs = logprobs.astype(jnp.float32)
    # Masked positions are zeroed before exp, so garbage there cannot overflow into inf * 0 = NaN.
    log_ratio = jnp.where(scored, logprobs - old_logprobs.astype(jnp.float32), 0.0)
    if config.importance_level == "sequence":
        per_sequence = log_ratio.sum(axis=1) / jnp.maximum(mask.sum(axis=1), 1.0)
        log_ratio = jnp.where(scored, per_sequence[:, None], 0.0)
    ratio = jnp.exp(log_ratio)
    clipped_ratio = jnp.clip(ratio, 1.0 - config.epsilon, 1.0 + config.upper_epsilon)
    adv = advantages.astype(jnp.float32)[:, None]
    unclipped, clipped = ratio * adv, clipped_ratio * adv
    losses = -jnp.minimum(unclipped, clipped)
    metrics = {"tokens": mask.sum(), "sequences": (mask.sum(axis=1) > 0).sum().astype(jnp.float32),
               "clipped_tokens": ((clipped < unclipped) * mask).sum(),
               "ratio_sum": jax.lax.stop_gradient(ratio * mask).sum()}
    if config.beta > 0.0:
        if ref_logprobs is None:
            raise ValueError("beta > 0 needs reference log-probs (batch key 'ref_logprobs'); set beta = 0 to skip")
        d = jnp.where(scored, ref_logprobs.astype(jnp.float32) - logprobs, 0.0)
        kl = KL_ESTIMATORS[config.kl_estimator](d)
        losses = losses + config.beta * kl
        metrics["kl_sum"] = jax.lax.stop_gradient(kl * mask).sum()
    numerator, denominator = AGGREGATIONS[config.aggregation](losses, mask, config.max_completion_length)
    return numerator, denominator, metrics


def completion_log_probs(logits: jax.Array, input_ids: jax.Array) -> jax.Array:
    """Token-aligned log-probs [B, T]: entry t is log p(token t | tokens < t); entry 0 (no context) is 0."""
    picked = token_log_probs(logits[:, :-1], input_ids[:, 1:])
    return jnp.concatenate([jnp.zeros_like(picked[:, :1]), picked], axis=1)


def policy_log_probs(model: nnx.Module, batch: Mapping[str, jax.Array]) -> tuple[jax.Array, jax.Array]:
    """Token-aligned log-probs and predictive entropies [B, T] of `batch["input_ids"]` (entry 0 is 0),
    projecting to the vocabulary in chunks so long completions never hold [B, T, V] float32 logits."""
    ids = batch["input_ids"]
    hidden = model.model(ids, attention_mask=batch["attention_mask"])
    logprobs, entropy = chunked_log_probs_and_entropy(model, hidden[:, :-1], ids[:, 1:])
    zero = jnp.zeros_like(logprobs[:, :1])
    return jnp.concatenate([zero, logprobs], axis=1), jnp.concatenate([zero, entropy], axis=1)


def grpo_loss(model: nnx.Module, batch: Mapping[str, jax.Array], rng: jax.Array, config: GRPOConfig = GRPOConfig()
              ) -> tuple[jax.Array, jax.Array, dict[str, jax.Array]]:
    """The train-step loss function for GRPO on the batch layout in this module's docstring."""
    logprobs, entropy = policy_log_probs(model, batch)
    ref = batch.get("ref_logprobs") if config.beta > 0.0 else None
    numerator, denominator, metrics = grpo_loss_terms(logprobs, batch["old_logprobs"], batch["advantages"],
                                                      batch["completion_mask"], config, ref)
    if config.compute_entropy:
        mask = batch["completion_mask"].astype(jnp.float32)
        metrics["entropy_sum"] = (jax.lax.stop_gradient(entropy) * mask).sum()
    return numerator, denominator, metrics
