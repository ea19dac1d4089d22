"""What a solve returns: the chosen answer and solution, the candidates and votes behind the choice, any program
that ran and what it printed, and the tokens generated; `to_dict()` / `to_json()` for files and `--json`."""
from __future__ import annotations

import dataclasses
import json
from typing import Any


@dataclasses.dataclass(frozen=True)
class Candidate:
    """One complete solution a strategy considered: its text, final answer (normalised), tokens and PRM score."""

    solution: str
    answer: str | None
    tokens: int = 0  # tokens of this sample; 0 in step-level search, where solutions share their prefixes
    score: float | None = None  # the PRM's aggregated step score; None without a PRM or without steps
    program: "ProgramRun | None" = None  # the sandbox run that gave a `pot` solution its answer


@dataclasses.dataclass(frozen=True)
class Vote:
    """One answer class of a vote: the answer (its first spelling), how many candidates said it, and the best
    PRM score among them (None without a PRM)."""

    answer: str
    count: int
    score: float | None = None


@dataclasses.dataclass(frozen=True)
class ProgramRun:
    """A program the sandbox ran for the answer: its code, what it printed, how it ended, its error."""

    program: str
    output: str
    status: str
    error: str | None = None


@dataclasses.dataclass(frozen=True)
class SolveResult:
    """The answer to one question and how it was reached.

    `answer` is normalised (jaxmath.verify.normalize), None when no candidate stated one. `chosen_by` says in
    words how the strategy picked the solution; `votes` (self-consistency) and `candidates` (every complete
    solution seen, with its PRM score when there is a PRM) are the evidence; `program` is set when a sandbox
    run produced the answer; `tokens` counts every token the policy generated for this question, within
    `budget` when one was set; `rounds` counts program repair rounds.
    """

    question: str
    answer: str | None
    solution: str
    strategy: str
    chosen_by: str
    tokens: int
    budget: int | None = None
    candidates: tuple[Candidate, ...] = ()
    votes: tuple[Vote, ...] = ()
    program: ProgramRun | None = None
    rounds: int = 0

    def to_dict(self) -> dict[str, Any]:
        """The result as plain JSON-ready data (nested dataclasses become dicts, tuples lists)."""
        return dataclasses.asdict(self, dict_factory=lambda items: {k: list(v) if isinstance(v, tuple) else v
                                                                    for k, v in items})

    def to_json(self, indent: int | None = None) -> str:
        """`to_dict()` as a JSON string (non-ASCII kept)."""
        return json.dumps(self.to_dict(), ensure_ascii=False, indent=indent)
