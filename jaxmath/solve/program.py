"""The `pot` strategy: the model writes a program, the sandbox runs it, and what it computes is the answer. A run
that fails (an error, a timeout, no `answer`) goes back to the model with the sandbox's message for up to R repair
rounds: jaxmath.revise's verify-then-revise conversation, with no gold answer (success is a clean run)."""
from __future__ import annotations

from typing import Sequence

from jaxmath.data.formats import get_format
from jaxmath.revise import Attempt, revision_messages
from jaxmath.solve.context import Toolkit
from jaxmath.solve.policy import complete_requests
from jaxmath.solve.result import Candidate, SolveResult
from jaxmath.verify.verdict import Outcome, Verdict

POT = get_format("pot")
UNGRADED = Verdict(Outcome.UNVERIFIABLE, "no gold answer while solving")


def _attempt(candidate: Candidate) -> Attempt:
    """The revision loop's view of a program attempt (what its feedback quotes)."""
    run = candidate.program
    return Attempt(candidate.solution, candidate.answer, UNGRADED, run.program if run else None,
                   run.status if run else None, run.error if run else None)


def pot(kit: Toolkit, questions: Sequence[str]) -> list[SolveResult]:
    """One program per question, repaired while its run fails, for up to `repair_rounds` rounds."""
    budgets = kit.budgets(len(questions))
    histories: list[list[Candidate]] = [[] for _ in questions]
    program_kit = Toolkit(kit.settings, kit.policy, POT, kit.compare, None)
    for round_ in range(kit.settings.repair_rounds + 1):
        pending = [q for q, h in enumerate(histories) if not h or h[-1].answer is None]
        requests, owners = [], []
        for q in pending:
            limit = budgets[q].grant(1, kit.policy.max_new_tokens)
            if limit:
                messages = revision_messages(POT, questions[q], [_attempt(c) for c in histories[q]])
                requests.append((kit.policy.render(messages), limit, (), 1))
                owners.append(q)
        if not requests:
            break
        completions = [c for (c,) in complete_requests(kit.policy, requests)]
        for q, c in zip(owners, completions):
            budgets[q].charge(c.tokens)
        read = program_kit.candidates([questions[q] for q in owners], [c.text for c in completions],
                                      [c.tokens for c in completions], scored=False)
        for q, candidate in zip(owners, read):
            histories[q].append(candidate)
    results = []
    for question, budget, history in zip(questions, budgets, histories):
        last = history[-1] if history else None
        if last is None:
            how = "no budget to write a program"
        elif last.answer is None:
            how = f"no program ran cleanly in {len(history)} attempt(s)"
        else:
            how = "the program's answer" + (f" after {len(history) - 1} repair round(s)" if len(history) > 1 else "")
        results.append(SolveResult(question, last.answer if last else None, last.solution if last else "",
                                   kit.settings.strategy, how, budget.spent, budget.limit, tuple(history),
                                   program=last.program if last else None, rounds=max(len(history) - 1, 0)))
    return results
