"""Step-level search guided by a process reward model.

`beam`: each partial solution is continued by k sampled next steps; the PRM scores every new prefix and the b
best are kept (a complete one leaves the beam as a finished candidate) until no partial solution is left, the
step limit (the last step is written to the end) or the budget. `tree`: a shallow MCTS-like search; selection
descends by mean PRM value plus an exploration bonus, expansion samples k next steps of the selected leaf
(at the depth limit it writes the rest), each child's PRM score is backed up along its path; iterations and
the budget bound it, and a finished solution's value is the PRM's score of the whole solution. Both answer with
the finished solution the PRM scores highest.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

from jaxmath.solve.context import Toolkit, needs_scorer, rank_key
from jaxmath.solve.policy import Budget
from jaxmath.solve.result import SolveResult
from jaxmath.solve.steps import Child, Expansion, expand


@dataclasses.dataclass(frozen=True)
class Partial:
    """A partial (or finished) solution in a search: text, PRM score of its steps so far, complete or not."""

    text: str
    score: float | None
    finished: bool


def score_children(kit: Toolkit, questions: Sequence[str], owners: Sequence[int],
                   children: Sequence[Child]) -> list[Partial]:
    """Each child as a Partial with the PRM's score of its steps (`owners[i]`: the question of child i)."""
    scores = kit.scores([questions[q] for q in owners], [c.text for c in children])
    return [Partial(c.text, s, c.finished) for c, s in zip(children, scores)]


def answer_result(kit: Toolkit, question: str, budget: Budget, finished: list[Partial], unfinished: list[Partial],
                  what: str) -> SolveResult:
    """The best-scored finished solution (else the best partial one) as the result; every one is a candidate."""
    pool = finished or unfinished
    candidates = kit.candidates([question] * len(pool), [p.text for p in pool], [0] * len(pool), scored=False)
    candidates = [dataclasses.replace(c, score=p.score) for c, p in zip(candidates, pool)]
    if not candidates:
        return SolveResult(question, None, "", kit.settings.strategy, f"{what}: no budget to write a step",
                           budget.spent, budget.limit)
    best = max(range(len(pool)), key=lambda i: rank_key(pool[i].score))
    how = (f"{what}: highest PRM score of {len(pool)} finished solutions" if finished
           else f"{what}: no solution finished within the budget; the best-scored partial one")
    chosen = candidates[best]
    return SolveResult(question, chosen.answer, chosen.solution, kit.settings.strategy, how, budget.spent,
                       budget.limit, tuple(candidates), program=chosen.program)


def beam(kit: Toolkit, questions: Sequence[str]) -> list[SolveResult]:
    """Step-level beam search: k next steps per beam, the b best prefixes by PRM score kept."""
    needs_scorer(kit)
    s = kit.settings
    prompts, budgets = [kit.prompt(q) for q in questions], kit.budgets(len(questions))
    beams: list[list[Partial]] = [[Partial("", None, False)] for _ in questions]
    finished: list[list[Partial]] = [[] for _ in questions]
    stopped: list[list[Partial]] = [[] for _ in questions]  # the beams of a question whose budget ran out
    for depth in range(s.max_steps):
        jobs = [Expansion(q, p.text, to_end=depth == s.max_steps - 1) for q, ps in enumerate(beams) for p in ps]
        if not jobs:
            break
        children, starved = expand(kit, prompts, budgets, jobs, s.samples)
        owners = [jobs[c.source].question for c in children]
        scored = score_children(kit, questions, owners, children)
        for q in range(len(questions)):
            if q in starved:
                stopped[q], beams[q] = beams[q], []
                continue
            ranked = sorted((p for p, owner in zip(scored, owners) if owner == q), key=lambda p: -rank_key(p.score))
            kept = list({p.text: p for p in reversed(ranked)}.values())[::-1][:s.beam]  # repeats: the best copy
            finished[q] += [p for p in kept if p.finished]
            beams[q] = [p for p in kept if not p.finished]
    return [answer_result(kit, question, budget, done, [p for p in left + rest if p.text],
                    f"beam search (b={s.beam}, k={s.samples})")
            for question, budget, done, left, rest in zip(questions, budgets, finished, stopped, beams)]
