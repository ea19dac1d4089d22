"""Step labels from verified solutions (Math-Shepherd convention: a step is bad from the first error on).

The rule, for a solution split into steps by `jaxmath.prm.steps.split_steps`:
- final answer correct: every step is good (1);
- final answer wrong: the first step with an equation that does not hold is bad (0), and so is every
  step after it; when no step has a failing equation, only the last step is bad (the error is somewhere
  the arithmetic cannot see, and at the latest the step that states the wrong result).
A step's equations are its `@@@@ a = b @@@@` blocks (the steps format, GSM8K annotations), or, when it
has none and the whole step is arithmetic (`12 + 5 = 17`), the step itself; they are checked with
`jaxmath.verify.rewards.equation_holds`, as the `step_arithmetic` reward does.
"""
from __future__ import annotations

import re
from typing import Any, Sequence

from jaxmath.prm.steps import step_texts
from jaxmath.verify.answers import PROGRAM_STYLE, extract_answers, grade_answers
from jaxmath.verify.pool import Verifier
from jaxmath.verify.rewards import equation_holds, evaluate_arithmetic

_EQUATION = re.compile(r"@@@@(.*?)@@@@", re.DOTALL)


def step_equations(step: str) -> list[str]:
    """The equations a step states: its `@@@@ ... @@@@` blocks, else the step when it is all arithmetic."""
    marked = [eq.strip() for eq in _EQUATION.findall(step)]
    if marked:
        return marked
    sides = step.split("=")
    if len(sides) < 2:
        return []
    try:
        for side in sides:
            evaluate_arithmetic(side)
    except ValueError:
        return []
    return [step.strip()]


def first_failing_step(steps: Sequence[str]) -> int | None:
    """Index of the first step with an equation that does not hold, or None."""
    for i, step in enumerate(steps):
        if not all(equation_holds(eq) for eq in step_equations(step)):
            return i
    return None


def verified_labels(steps: Sequence[str], correct: bool) -> list[int]:
    """0/1 labels for `steps` from whether the solution's final answer is correct (rule in the module docstring)."""
    if not steps:
        raise ValueError("verified_labels needs at least one step")
    if correct:
        return [1] * len(steps)
    first_bad = first_failing_step(steps)
    first_bad = len(steps) - 1 if first_bad is None else first_bad
    return [int(i < first_bad) for i in range(len(steps))]


def verified_trace(question: str, solution: str, correct: bool) -> dict[str, Any] | None:
    """A PRM row `{"question", "steps", "labels"}` for a graded solution; None when it has no steps."""
    steps = step_texts(solution)
    if not steps:
        return None
    return {"question": question, "steps": steps, "labels": verified_labels(steps, correct)}


def label_solutions(questions: Sequence[str], solutions: Sequence[str], golds: Sequence[str], verifier: Verifier,
                    style: str = "auto") -> list[dict[str, Any] | None]:
    """Grade each solution against its gold answer (verifier workers, `style` extraction; `pot` programs run
    in the sandbox) and label its steps by the rule above; rows carry `answer` (the gold). None where a
    solution has no steps or its verdict could not be reached (timeout, unparsable gold): such a solution is
    neither right nor wrong."""
    if not len(questions) == len(solutions) == len(golds):
        raise ValueError(f"got {len(questions)} questions, {len(solutions)} solutions and {len(golds)} gold answers; "
                         "they must pair up")
    if style == PROGRAM_STYLE:
        verdicts = grade_answers(verifier, extract_answers(list(solutions), style), list(golds))
    else:
        verdicts = verifier.grade_batch(list(solutions), list(golds), style)
    rows: list[dict[str, Any] | None] = []
    for question, solution, gold, verdict in zip(questions, solutions, golds, verdicts):
        row = verified_trace(question, solution, verdict.correct) if verdict.verified else None
        rows.append(None if row is None else row | {"answer": gold})
    return rows
