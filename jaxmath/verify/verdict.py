"""The outcome of grading one completion: correct, wrong, or could-not-verify (with the reason)."""
from __future__ import annotations

import dataclasses
import enum
from typing import ClassVar


class Outcome(enum.Enum):
    """The three grading outcomes."""

    CORRECT = "correct"
    WRONG = "wrong"
    UNVERIFIABLE = "unverifiable"


@dataclasses.dataclass(frozen=True)
class Verdict:
    """One grading result; `reason` explains WRONG/UNVERIFIABLE verdicts (`"timeout"`, `"no answer"`, ...).

    `Verdict.CORRECT` / `.WRONG` / `.UNVERIFIABLE` name the outcomes: `verdict.outcome is Verdict.CORRECT`.
    """

    outcome: Outcome
    reason: str = ""

    CORRECT: ClassVar[Outcome] = Outcome.CORRECT
    WRONG: ClassVar[Outcome] = Outcome.WRONG
    UNVERIFIABLE: ClassVar[Outcome] = Outcome.UNVERIFIABLE

    @property
    def correct(self) -> bool:
        """True only for a CORRECT verdict (rewards treat WRONG and UNVERIFIABLE alike)."""
        return self.outcome is Outcome.CORRECT

    @property
    def verified(self) -> bool:
        """False when the verdict could not be reached (timeout, crash, unparsable gold)."""
        return self.outcome is not Outcome.UNVERIFIABLE
