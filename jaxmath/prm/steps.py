"""Split a solution into the steps a process reward model scores.

A step is a `<STEP k> ... </STEP>` block when the solution is in the `steps` format, otherwise one
non-empty line (a GSM8K `#### answer` line and lines holding only markup such as `<think>` or a code
fence are not steps). Line steps go through `jaxmath.data.formats.solution_steps`, so GSM8K calculator
annotations read `@@@@ a = b @@@@` as in the steps format. Each step keeps the offset in the solution
just past its last character, so a policy can be asked to continue exactly its own prefix.
"""
from __future__ import annotations

import dataclasses
import re

from jaxmath.data.formats import solution_steps

_STEP_BLOCK = re.compile(r"<STEP\s*\d+\s*>(.*?)</STEP>", re.DOTALL)
_LINE = re.compile(r"[^\n]+")
_MARKUP_ONLY = re.compile(r"(?:\s*(?:</?[A-Za-z_]+>|```[\w-]*))+\s*")


@dataclasses.dataclass(frozen=True)
class Step:
    """One step: the text the PRM reads, and where the step ends in the solution (an offset)."""

    text: str
    end: int


def split_steps(solution: str) -> list[Step]:
    """The solution's steps in order (see the module docstring for the rule); [] when it has none."""
    if not isinstance(solution, str):
        raise TypeError(f"split_steps expects a str solution, got {type(solution).__name__}")
    blocks = [Step(" ".join(m.group(1).split()), m.end()) for m in _STEP_BLOCK.finditer(solution)]
    if blocks:
        return [step for step in blocks if step.text]
    steps = []
    for line in _LINE.finditer(solution):
        if _MARKUP_ONLY.fullmatch(line.group()):
            continue
        steps += [Step(text, line.end()) for text in solution_steps(line.group())]
    return steps


def step_texts(solution: str) -> list[str]:
    """Just the text of each step of `solution`."""
    return [step.text for step in split_steps(solution)]
