"""A GRPO reward from a process reward model: each completion's aggregated step score (P(good) in [0, 1]).

`prm_step_bonus(scorer, how="min")` returns a function with the reward signature
`f(completions, examples) -> float32[n]` of `jaxmath.verify.rewards`, to be weighted next to correctness
(an optional step-quality bonus). A completion without steps scores 0. The PRM registers the same bonus as the
reward `prm_steps` (`PRM_REWARDS`, collected by `jaxmath.rewards`): in a GRPO config
`rewards: {correctness: 1.0, prm_steps: 0.2}` with `reward_params: {prm_steps: {model: runs/prm/final_model,
how: min}}`.
"""
from __future__ import annotations

import functools
from typing import Any, Mapping, Sequence

import numpy as np

from jaxmath.data.schema import Record
from jaxmath.objectives.prm import STEP_AGGREGATIONS
from jaxmath.prm.scorer import PRMScorer
from jaxmath.verify.rewards import RewardConfigError, RewardFn


def _question(example: Record | Mapping[str, Any], index: int) -> str:
    question = example.question if isinstance(example, Record) else \
        example.get("question") if isinstance(example, Mapping) else None
    if not isinstance(question, str) or not question.strip():
        raise ValueError(f"example {index} has no 'question' for the PRM to read: {str(example)[:200]}")
    return question


def prm_step_bonus(scorer: PRMScorer, how: str = "min") -> RewardFn:
    """A reward function scoring each completion by its `how`-aggregated PRM step scores."""
    if how not in STEP_AGGREGATIONS:
        raise ValueError(f"unknown step aggregation {how!r}; choose one of {sorted(STEP_AGGREGATIONS)}")

    def prm_bonus(completions: Sequence[str], examples: Sequence[Record | Mapping[str, Any]]) -> np.ndarray:
        """Aggregated PRM step score of each completion (0 without steps)."""
        if len(completions) != len(examples):
            raise ValueError(f"{len(completions)} completions but {len(examples)} examples")
        questions = [_question(example, i) for i, example in enumerate(examples)]
        scores = scorer.aggregate(scorer.score_solutions(questions, list(completions)), how)
        return np.asarray([0.0 if s is None else s for s in scores], np.float32)

    return prm_bonus


@functools.lru_cache(maxsize=4)
def loaded_step_bonus(model: str, how: str = "min", fmt: str = "boxed") -> RewardFn:
    """`prm_step_bonus` of the PRM in directory `model`, loaded once per (model, how, format) per process."""
    return prm_step_bonus(PRMScorer.from_pretrained(model, fmt, progress=False), how)


def prm_steps(completions: Sequence[str], examples: Sequence[Mapping], *, model: str = "", how: str = "min",
              format: str = "boxed", max_chars: int = 64_000) -> np.ndarray:
    """Step-quality bonus: each completion's `how`-aggregated step score (P(good)) from the process reward
    model in directory `model`, trained in prompt `format`; loaded once per process; 0 without steps.
    A completion over `max_chars` characters scores 0 without a PRM pass (its attention would not fit)."""
    if not model:
        raise RewardConfigError("reward prm_steps needs its PRM directory: reward_params: {prm_steps: {model: PATH}}")
    try:
        bonus = loaded_step_bonus(model, how, format)
    except Exception as err:  # a missing or wrong model directory, an unknown aggregation: no row can score
        raise RewardConfigError(f"reward prm_steps cannot use the PRM {model!r}: {err}") from err
    scores = np.zeros(len(completions), dtype=np.float32)
    fits = [i for i, text in enumerate(completions) if len(text) <= max_chars]
    if fits:
        scores[fits] = bonus([completions[i] for i in fits], [examples[i] for i in fits])
    return scores


PRM_REWARDS: dict[str, RewardFn] = {"prm_steps": prm_steps}  # registered in jaxmath.rewards
