"""What every strategy is given: the settings of a solve, the policy, the prompt format, the answer comparer
for votes and the optional PRM; plus the helpers strategies share (prompts, PRM scores, result assembly)."""
from __future__ import annotations

import dataclasses
from typing import Protocol, Sequence

import numpy as np

from jaxmath.data.formats import PromptFormat
from jaxmath.objectives.prm import STEP_AGGREGATIONS, aggregate_step_scores
from jaxmath.solve.defaults import STRATEGIES
from jaxmath.solve.policy import Budget, Policy
from jaxmath.solve.reading import read_solutions
from jaxmath.solve.result import Candidate
from jaxmath.solve.voting import Compare

NEUTRAL_SCORE = 0.5  # how search ranks a partial solution the PRM has no step of yet


class Scorer(Protocol):
    """Per-step P(good) of solutions (jaxmath.prm.scorer.PRMScorer is one)."""

    def score_solutions(self, questions: Sequence[str], solutions: Sequence[str]) -> list[np.ndarray]:
        ...


@dataclasses.dataclass(frozen=True)
class SolveSettings:
    """How to solve: the strategy and its knobs.

    samples: whole solutions per question (self_consistency, best_of_n), or candidate next steps per partial
        solution (beam, tree). beam: partial solutions kept per step (beam). budget: tokens the policy may
        generate per question (None: only each strategy's own limits). max_steps: steps in one solution (beam,
        tree; the last one is written to the end). step_tokens: tokens per step. iterations: expansions of
        the tree. exploration: the tree's exploration weight. repair_rounds: pot revisions after a failed run.
        prm_aggregation: how step scores become one (min, product, last). program_timeout: seconds per run.
    """

    strategy: str = "cot"
    samples: int = 8
    beam: int = 4
    budget: int | None = None
    max_steps: int = 16
    step_tokens: int = 64
    iterations: int = 16
    exploration: float = 1.0
    repair_rounds: int = 2
    prm_aggregation: str = "min"
    program_timeout: float = 5.0

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ValueError(f"unknown strategy {self.strategy!r}; choose one of {', '.join(STRATEGIES)}")
        for name in ("samples", "beam", "max_steps", "step_tokens", "iterations"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {getattr(self, name)!r}")
        if self.budget is not None and (not isinstance(self.budget, int) or self.budget < 1):
            raise ValueError(f"budget must be None or an integer >= 1 (tokens per question), got {self.budget!r}")
        if self.repair_rounds < 0 or self.exploration < 0 or self.program_timeout <= 0:
            raise ValueError(f"repair_rounds and exploration must be >= 0 and program_timeout > 0, got "
                             f"{self.repair_rounds}, {self.exploration} and {self.program_timeout}")
        if self.prm_aggregation not in STEP_AGGREGATIONS:
            raise ValueError(f"unknown PRM aggregation {self.prm_aggregation!r}; choose one of "
                             f"{sorted(STEP_AGGREGATIONS)}")


@dataclasses.dataclass(frozen=True)
class Toolkit:
    """A strategy's inputs besides the questions: settings, policy, format, answer comparer and PRM."""

    settings: SolveSettings
    policy: Policy
    fmt: PromptFormat
    compare: Compare
    scorer: Scorer | None = None

    def prompt(self, question: str) -> str:
        """The prompt that poses `question` in the format."""
        return self.policy.render(self.fmt.messages(question))

    def budgets(self, count: int) -> list[Budget]:
        """A fresh budget per question."""
        return [Budget(self.settings.budget) for _ in range(count)]

    def scores(self, questions: Sequence[str], solutions: Sequence[str]) -> list[float | None]:
        """Each (partial) solution's aggregated PRM score; None without a PRM or without a step to score."""
        if self.scorer is None or not solutions:
            return [None] * len(solutions)
        steps = self.scorer.score_solutions(questions, solutions)
        return [float(aggregate_step_scores(s, self.settings.prm_aggregation)) if len(s) else None for s in steps]

    def candidates(self, questions: Sequence[str], solutions: Sequence[str], tokens: Sequence[int],
                   scored: bool = True) -> list[Candidate]:
        """Complete solutions read (answers normalised; programs run) and, when `scored`, PRM-scored."""
        readings = read_solutions(solutions, self.fmt, self.settings.program_timeout)
        scores = self.scores(questions, solutions) if scored else [None] * len(solutions)
        return [Candidate(s, r.answer, n, score, r.run) for s, r, n, score in zip(solutions, readings, tokens, scores)]


def rank_key(score: float | None) -> float:
    """A score for ordering: None (nothing to score) ranks as neutral."""
    return NEUTRAL_SCORE if score is None else score


def needs_scorer(kit: Toolkit) -> Scorer:
    """The PRM, or a ValueError saying the strategy needs one."""
    if kit.scorer is None:
        raise ValueError(f"strategy {kit.settings.strategy!r} ranks solutions with a process reward model: "
                         "give one (MathSolver(prm_path=...), --prm PATH)")
    return kit.scorer
