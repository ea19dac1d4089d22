"""Grading completions: each one's final answer in an extraction style (a `pot` completion's answer is the value
its program computes in the sandbox), then verdicts against the gold answers from a `Verifier`."""
from __future__ import annotations

import re
from typing import Sequence

from jaxmath.verify.extract import extract_answer
from jaxmath.verify.pool import Verifier
from jaxmath.verify.sandbox import ProgramResult, shared_sandbox
from jaxmath.verify.verdict import Outcome, Verdict

PROGRAM_STYLE = "pot"  # the extraction style whose answers come from running the completion's program
_CODE_BLOCK = re.compile(r"```(?:python|py)?[ \t]*\n(.*?)```", re.DOTALL)


def extract_program(completion: str) -> str | None:
    """The last fenced Python code block of a completion (```python ... ```), or None."""
    blocks = _CODE_BLOCK.findall(completion)
    return blocks[-1] if blocks else None


def run_completions(completions: Sequence[str], timeout: float | None = None) -> list[ProgramResult | None]:
    """Each completion's program run in the shared sandbox (concurrently); None where it has no code block."""
    programs = [extract_program(c) for c in completions]
    runnable = [i for i, p in enumerate(programs) if p is not None]
    results: list[ProgramResult | None] = [None] * len(completions)
    for i, result in zip(runnable, shared_sandbox().run_batch([programs[i] for i in runnable], timeout=timeout)):
        results[i] = result
    return results


def program_answers(results: Sequence[ProgramResult | None]) -> list[str | None]:
    """The value each program computed; None where nothing ran or the run failed."""
    return [r.value if r is not None and r.ok else None for r in results]


def extract_answers(completions: Sequence[str], style: str, fallback_last_number: bool = False,
                    timeout: float | None = None) -> list[str | None]:
    """Each completion's final answer in extraction `style` (a prompt format's); `pot` programs run in the
    sandbox (`timeout` seconds each)."""
    if style != PROGRAM_STYLE:
        return [extract_answer(c, style, fallback_last_number) for c in completions]
    return program_answers(run_completions(completions, timeout))


def grade_answers(verifier: Verifier, answers: Sequence[str | None], golds: Sequence[str]) -> list[Verdict]:
    """Verdicts for extracted answers (WRONG "no answer" where none was found)."""
    found = [i for i, a in enumerate(answers) if a is not None]
    verdicts = [Verdict(Outcome.WRONG, "no answer")] * len(answers)
    for i, verdict in zip(found, verifier.compare_batch([answers[i] for i in found], [golds[i] for i in found])):
        verdicts[i] = verdict
    return verdicts
