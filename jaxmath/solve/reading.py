"""Reading a solution: its final answer in the prompt format's style (a `pot` solution's answer is what its
program computes in the sandbox), normalised so equal spellings compare equal, and whether a partial solution
is complete."""
from __future__ import annotations

import dataclasses
from typing import Sequence

from jaxmath.data.formats import PromptFormat
from jaxmath.solve.result import ProgramRun
from jaxmath.verify.answers import PROGRAM_STYLE, extract_program, run_completions
from jaxmath.verify.extract import extract_answer
from jaxmath.verify.normalize import normalize

STEP_ENDS = {"steps": "</STEP>"}  # where one step ends in a format; every other format writes a step per line
LINE_END = "\n"


@dataclasses.dataclass(frozen=True)
class Reading:
    """A solution's final answer (raw and normalised; None when it states none) and the program run behind it."""

    raw: str | None
    answer: str | None
    run: ProgramRun | None = None


def _normalised(raw: str | None) -> str | None:
    if raw is None:
        return None
    answer = normalize(raw)
    return answer or None


def read_solutions(solutions: Sequence[str], fmt: PromptFormat, timeout: float | None = None) -> list[Reading]:
    """Each solution's answer; `pot` programs run in the shared sandbox (concurrently, `timeout` s each)."""
    if fmt.extraction_style != PROGRAM_STYLE:
        return [Reading(raw, _normalised(raw)) for raw in (extract_answer(s, fmt.extraction_style) for s in solutions)]
    readings = []
    for solution, result in zip(solutions, run_completions(solutions, timeout)):
        if result is None:
            readings.append(Reading(None, None))
            continue
        raw = result.value if result.ok else None
        run = ProgramRun(extract_program(solution) or "", result.stdout, result.status, result.error)
        readings.append(Reading(raw, _normalised(raw), run))
    return readings


def step_end(fmt: PromptFormat) -> str:
    """The text that closes one step in `fmt`."""
    return STEP_ENDS.get(fmt.name, LINE_END)


def states_answer(partial: str, fmt: PromptFormat) -> bool:
    """Whether a partial solution is complete: it states a final answer (for `pot`: holds a closed program)."""
    if fmt.extraction_style == PROGRAM_STYLE:
        return extract_program(partial) is not None
    return extract_answer(partial, fmt.extraction_style) is not None
