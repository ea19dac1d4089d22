"""Pure loss functions for every objective, and a registry that builds the train-step loss by name.

`make_loss("grpo", beta=0.0, aggregation="token_mean")` gives a `loss_fn(model, batch, rng)` for
`jaxmath.train.step.make_train_step`. Loss metrics are additive totals (exact when summed over devices
and micro-batches); `metric_means(name, totals)` turns a step's totals into the means worth logging.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Mapping

from jaxmath.objectives.dpo import (DPO_MEANS, DPOConfig, dpo_loss, dpo_loss_terms, pair_log_probs, reference_log_probs,
                                   sequence_log_probs)
from jaxmath.objectives.grpo import (ADVANTAGE_ESTIMATORS, AGGREGATIONS, GRPO_MEANS, KL_ESTIMATORS, GRPOConfig,
                                     completion_log_probs, compute_advantages, group_advantages, grpo_loss,
                                     grpo_loss_terms, rloo_advantages)
from jaxmath.objectives.prm import (IGNORE_LABEL, PRM_MEANS, aggregate_step_scores, best_of_n, prm_loss,
                                    prm_loss_terms, roc_auc, step_probabilities)
from jaxmath.objectives.sft import sft_loss, sft_loss_terms, token_log_probs


@dataclasses.dataclass(frozen=True)
class Objective:
    """A registered objective: its loss adapter, its settings dataclass (None: no settings) and how its
    additive metric totals become means."""

    loss: Callable[..., Any]
    config: type | None = None
    means: Mapping[str, tuple[str, str]] = dataclasses.field(default_factory=dict)


OBJECTIVES: dict[str, Objective] = {
    "sft": Objective(sft_loss),
    "grpo": Objective(grpo_loss, GRPOConfig, GRPO_MEANS),
    "dpo": Objective(dpo_loss, DPOConfig, DPO_MEANS),
    "prm": Objective(prm_loss, None, PRM_MEANS),
}


def _objective(name: str) -> Objective:
    if name not in OBJECTIVES:
        raise ValueError(f"unknown objective {name!r}; choose one of {sorted(OBJECTIVES)}")
    return OBJECTIVES[name]


def make_loss(name: str, **options: Any) -> Callable[..., Any]:
    """The `loss_fn(model, batch, rng)` of objective `name` with its settings (e.g. beta=0.04) applied."""
    objective = _objective(name)
    if objective.config is None:
        if options:
            raise ValueError(f"objective {name!r} takes no options, got {sorted(options)}")
        return objective.loss
    known = {f.name for f in dataclasses.fields(objective.config)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise ValueError(f"unknown {name} option(s) {unknown}; known: {sorted(known)}")
    return functools.partial(objective.loss, config=objective.config(**options))


def metric_means(name: str, totals: Mapping[str, float]) -> dict[str, float]:
    """Means (clip fraction, reward accuracy, ...) from one step's metric totals; a mean whose total is
    absent (e.g. kl_mean with beta = 0) or whose count is zero is left out."""
    means = {}
    for mean, (total, count) in _objective(name).means.items():
        if total in totals and count in totals and float(totals[count]) > 0:
            means[mean] = float(totals[total]) / float(totals[count])
    return means


__all__ = [
    "ADVANTAGE_ESTIMATORS", "AGGREGATIONS", "DPOConfig", "GRPOConfig", "IGNORE_LABEL", "KL_ESTIMATORS",
    "OBJECTIVES", "Objective", "aggregate_step_scores", "best_of_n", "completion_log_probs", "compute_advantages",
    "dpo_loss", "dpo_loss_terms", "group_advantages", "grpo_loss", "grpo_loss_terms", "make_loss", "metric_means",
    "pair_log_probs", "prm_loss", "prm_loss_terms", "reference_log_probs", "rloo_advantages", "roc_auc",
    "sequence_log_probs", "sft_loss", "sft_loss_terms", "step_probabilities", "token_log_probs",
]
