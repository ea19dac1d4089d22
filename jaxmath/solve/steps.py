"""One step of step-level search: continue partial solutions by one step each (several samples per partial
solution, all questions in one batch of policy calls), within each question's token budget."""
from __future__ import annotations

import dataclasses
from typing import Sequence

from jaxmath.solve.context import Toolkit
from jaxmath.solve.policy import Budget, Completion, complete_requests
from jaxmath.solve.reading import states_answer, step_end


@dataclasses.dataclass(frozen=True)
class Expansion:
    """A request to continue `prefix` (a partial solution of question `question`); `to_end` writes the rest of
    the solution instead of one step."""

    question: int
    prefix: str
    to_end: bool = False


@dataclasses.dataclass(frozen=True)
class Child:
    """A continuation: which expansion it answers, the longer partial solution, its tokens, and whether it is
    complete (the model ended, or the text states its final answer)."""

    source: int
    text: str
    tokens: int
    finished: bool


def _child(kit: Toolkit, source: int, expansion: Expansion, completion: Completion) -> Child:
    text = expansion.prefix + completion.text
    if completion.finish == "stop" and completion.stop_string == step_end(kit.fmt) and not expansion.to_end:
        text += completion.stop_string
        finished = states_answer(text, kit.fmt)
    else:  # the model ended, a format stop string (a plain-text prompt's next question) ended it, or its length
        finished = completion.finish != "length" or expansion.to_end or states_answer(text, kit.fmt)
    return Child(source, text, completion.tokens, finished)


def expand(kit: Toolkit, prompts: Sequence[str], budgets: Sequence[Budget], expansions: Sequence[Expansion],
           samples: int) -> tuple[list[Child], set[int]]:
    """`samples` continuations of each expansion, and the questions whose budget could not pay for theirs (those
    expansions get none). A step is at most `step_tokens` tokens; a continuation to the end, at most the
    policy's `max_new_tokens`."""
    rows_per_question: dict[int, int] = {}
    for e in expansions:
        rows_per_question[e.question] = rows_per_question.get(e.question, 0) + samples
    stop = (step_end(kit.fmt),)
    requests, sources, starved = [], [], set()
    for source, e in enumerate(expansions):
        wanted = kit.policy.max_new_tokens if e.to_end else kit.settings.step_tokens
        limit = budgets[e.question].grant(rows_per_question[e.question], wanted)
        if not limit:
            starved.add(e.question)
            continue
        requests.append((prompts[e.question] + e.prefix, limit, () if e.to_end else stop, samples))
        sources.append(source)
    children = []
    for source, completions in zip(sources, complete_requests(kit.policy, requests)):
        for completion in completions:
            budgets[expansions[source].question].charge(completion.tokens)
            children.append(_child(kit, source, expansions[source], completion))
    return children, starved
