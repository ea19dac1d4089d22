"""`MathSolver`: a policy (and optionally a PRM) loaded onto the devices once, answering questions one at a time
or in batches with any strategy.

    from jaxmath import MathSolver
    solver = MathSolver("runs/sft/hf", prm_path="runs/prm/final_model", strategy="beam")
    result = solver.solve("What is the integral of x^2 from 0 to 3?")
    print(result.answer, result.tokens)
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Sequence

from jaxmath.data.formats import PromptFormat, get_format
from jaxmath.inference.config import Sampling, plain_text_stops
from jaxmath.solve.context import Scorer, SolveSettings, Toolkit
from jaxmath.solve.defaults import DEFAULT_SAMPLING, NEEDS_PRM
from jaxmath.solve.policy import ModelPolicy, Policy
from jaxmath.solve.result import SolveResult
from jaxmath.solve.strategies import STRATEGY_FUNCTIONS
from jaxmath.solve.voting import verifier_compare
from jaxmath.verify.pool import Verifier


class MathSolver:
    """Answers math questions with a policy model, a prompt format and a strategy (see jaxmath.solve).

    `model_path`: a jaxmath model directory or a Hugging Face checkpoint; `prm_path`: a PRM directory (needed
    by best_of_n, beam and tree; breaks self-consistency ties). `settings` fields (strategy, samples, beam,
    budget, ...) may be given as keyword arguments and overridden per `solve` call.
    """

    def __init__(self, model_path: str | os.PathLike, prm_path: str | os.PathLike | None = None, *,
                 format: str = "boxed", sampling: Sampling | None = None, batch_size: int = 32,
                 dtype: str | None = None, tokenizer_path: str | os.PathLike | None = None,
                 verifier_workers: int | None = None, **settings: Any):
        from jaxmath.inference.loading import load_for_generation

        fmt = get_format(format)
        self.settings = SolveSettings(**settings)  # bad settings fail before anything loads
        model, tokenizer, eos_ids, mesh = load_for_generation(model_path, dtype, tokenizer_path)
        scorer = None
        if prm_path is not None:
            from jaxmath.prm.scorer import PRMScorer

            scorer = PRMScorer.from_pretrained(prm_path, fmt, dtype, mesh, batch_size=batch_size, progress=False)
        policy = ModelPolicy(model, tokenizer, eos_ids, plain_text_stops(sampling or DEFAULT_SAMPLING, tokenizer),
                             batch_size, mesh)
        self._setup(policy, fmt, scorer, None, verifier_workers)

    @classmethod
    def from_policy(cls, policy: Policy, fmt: PromptFormat | str = "boxed", scorer: Scorer | None = None,
                    verifier: Verifier | None = None, **settings: Any) -> "MathSolver":
        """A solver around an already loaded policy (and PRM scorer, and verifier pool to share)."""
        solver = cls.__new__(cls)
        solver.settings = SolveSettings(**settings)
        solver._setup(policy, get_format(fmt) if isinstance(fmt, str) else fmt, scorer, verifier, None)
        return solver

    def _setup(self, policy: Policy, fmt: PromptFormat, scorer: Scorer | None, verifier: Verifier | None,
               verifier_workers: int | None) -> None:
        self.policy, self.fmt, self.scorer = policy, fmt, scorer
        self._verifier, self._owns_verifier, self._verifier_workers = verifier, verifier is None, verifier_workers

    @property
    def verifier(self) -> Verifier:
        """The verifier pool that groups equivalent answers (started on first use)."""
        if self._verifier is None:
            self._verifier = Verifier(workers=self._verifier_workers)
        return self._verifier

    def solve(self, question: str, **overrides: Any) -> SolveResult:
        """The answer to one question (`overrides`: settings for this call, e.g. strategy="tree")."""
        return self.solve_batch([question], **overrides)[0]

    def solve_batch(self, questions: Sequence[str], **overrides: Any) -> list[SolveResult]:
        """Answers to several questions, their samples batched together; ValueError names a bad question."""
        for i, question in enumerate(questions):
            if not isinstance(question, str) or not question.strip():
                raise ValueError(f"question {i} must be a non-empty string, got {str(question)[:80]!r}")
        settings = dataclasses.replace(self.settings, **overrides) if overrides else self.settings
        if settings.strategy in NEEDS_PRM and self.scorer is None:
            raise ValueError(f"strategy {settings.strategy!r} ranks solutions with a process reward model: give one "
                             "(MathSolver(..., prm_path=PATH), --prm PATH)")
        if not questions:
            return []
        kit = Toolkit(settings, self.policy, self.fmt, verifier_compare(self.verifier), self.scorer)
        return STRATEGY_FUNCTIONS[settings.strategy](kit, list(questions))

    def close(self) -> None:
        """Stop the verifier pool this solver started (idempotent)."""
        if self._owns_verifier and self._verifier is not None:
            self._verifier.close()
            self._verifier = None

    def __enter__(self) -> "MathSolver":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
