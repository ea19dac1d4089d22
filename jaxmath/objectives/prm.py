"""Process reward model: masked cross-entropy on step labels, step scores, their aggregation, and ROC AUC.

Batch layout (TokenClassifier with 2 labels):
  input_ids       [B, T] int  question + step-by-step solution
  attention_mask  [B, T] int  1 on real tokens (or segment_ids / positions, as `prm_pipeline` gives them)
  labels          [B, T] int  at each step's last token (or step separator) 1 = good step, 0 = bad step;
                              IGNORE_LABEL (-1) everywhere else
Metrics are additive totals (steps, correct_steps); `PRM_MEANS` gives the step accuracy. Evaluation-side
helpers (`step_probabilities`, `aggregate_step_scores`, `best_of_n`, `roc_auc`) run on host arrays.
"""
from __future__ import annotations

import math
from typing import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
from flax import nnx
import numpy as np
from scipy.stats import rankdata

IGNORE_LABEL = -1
GOOD_LABEL = 1

PRM_MEANS: dict[str, tuple[str, str]] = {"step_accuracy": ("correct_steps", "steps")}


def prm_loss_terms(logits: jax.Array, labels: jax.Array) -> tuple[jax.Array, jax.Array, dict[str, jax.Array]]:
    """(summed cross-entropy over labelled positions, their number, metric totals) for logits [B, T, L]
    and labels [B, T] (IGNORE_LABEL where unlabelled)."""
    logits = logits.astype(jnp.float32)
    weight = (labels != IGNORE_LABEL).astype(jnp.float32)
    safe = jnp.where(labels == IGNORE_LABEL, 0, labels)
    nll = -jnp.take_along_axis(jax.nn.log_softmax(logits, axis=-1), safe[..., None], axis=-1)[..., 0]
    correct = (jnp.argmax(logits, axis=-1) == labels) * weight
    metrics = {"steps": weight.sum(), "correct_steps": correct.sum()}
    return jnp.sum(nll * weight), weight.sum(), metrics


def prm_loss(model: nnx.Module, batch: Mapping[str, jax.Array], rng: jax.Array
             ) -> tuple[jax.Array, jax.Array, dict[str, jax.Array]]:
    """The train-step loss function for PRM training on the batch layout in this module's docstring."""
    logits = model(batch["input_ids"], attention_mask=batch.get("attention_mask"), positions=batch.get("positions"),
                   segment_ids=batch.get("segment_ids"), dropout_rng=rng)
    return prm_loss_terms(logits, batch["labels"])


def step_probabilities(logits: jax.Array | np.ndarray) -> np.ndarray:
    """P(good step) [B, T] at every position from label logits [B, T, 2]; read it at the step positions."""
    return np.asarray(jax.nn.softmax(jnp.asarray(logits, jnp.float32), axis=-1)[..., GOOD_LABEL])


STEP_AGGREGATIONS: dict[str, Callable[[np.ndarray], float]] = {
    "min": lambda s: float(np.min(s)),  # a solution is as good as its weakest step
    "product": lambda s: float(np.prod(s)),  # probability that every step is right (independence)
    "last": lambda s: float(s[-1]),  # the final step's score judges the whole trace
}


def aggregate_step_scores(scores: Sequence[float] | np.ndarray, how: str = "min") -> float:
    """One solution score from its per-step scores (in step order) by min, product or last."""
    if how not in STEP_AGGREGATIONS:
        raise ValueError(f"unknown step aggregation {how!r}; choose one of {sorted(STEP_AGGREGATIONS)}")
    values = np.asarray(scores, np.float64)
    if values.ndim != 1 or values.size == 0:
        raise ValueError(f"need a non-empty 1-D list of step scores, got shape {values.shape}")
    return STEP_AGGREGATIONS[how](values)


def best_of_n(candidates: Sequence[Sequence[float]], how: str = "min") -> int:
    """Index of the candidate solution with the highest aggregated step score; a candidate without any
    scored step ranks last; ties go to the earliest candidate."""
    if not candidates:
        raise ValueError("best_of_n needs at least one candidate")
    totals = [aggregate_step_scores(c, how) if len(c) else -math.inf for c in candidates]
    return int(np.argmax(totals))


def roc_auc(scores: Sequence[float] | np.ndarray, labels: Sequence[int] | np.ndarray) -> float:
    """Area under the ROC curve: P(a random positive scores above a random negative), ties counting half
    (the Mann-Whitney U statistic over n_pos * n_neg)."""
    scores, labels = np.asarray(scores, np.float64).ravel(), np.asarray(labels).ravel()
    if scores.shape != labels.shape:
        raise ValueError(f"{scores.size} scores but {labels.size} labels")
    if not np.isfinite(scores).all():
        raise ValueError(f"scores must be finite; {int((~np.isfinite(scores)).sum())} are not")
    if not np.isin(labels, (0, 1)).all():
        raise ValueError(f"labels must be 0 or 1, got values {sorted(set(labels.tolist()) - {0, 1})[:5]}")
    positives = int(labels.sum())
    negatives = labels.size - positives
    if positives == 0 or negatives == 0:
        raise ValueError(f"AUC needs both classes; got {positives} positive and {negatives} negative labels")
    ranks = rankdata(scores)  # ties share their mean rank
    return float((ranks[labels == 1].sum() - positives * (positives + 1) / 2) / (positives * negatives))
