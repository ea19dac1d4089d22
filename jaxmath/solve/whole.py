"""Strategies over whole sampled solutions: `cot` (one sample), `self_consistency` (a vote over k samples,
answers grouped by the verifier's equivalence, ties broken by PRM score) and `best_of_n` (the PRM's top-scored
of k samples). All questions' samples go to the policy together."""
from __future__ import annotations

from typing import Sequence

from jaxmath.solve.context import Toolkit, needs_scorer
from jaxmath.solve.policy import Budget, complete_requests
from jaxmath.solve.result import Candidate, SolveResult
from jaxmath.solve.voting import vote


def sample_solutions(kit: Toolkit, questions: Sequence[str], budgets: Sequence[Budget], n: int,
                     scored: bool) -> list[list[Candidate]]:
    """Up to `n` complete solutions per question, each within the question's budget (none when it is spent)."""
    requests, owners = [], []
    for q, (question, budget) in enumerate(zip(questions, budgets)):
        limit = budget.grant(n, kit.policy.max_new_tokens)
        if limit:
            requests.append((kit.prompt(question), limit, (), n))
            owners += [q] * n
    completions = [c for per_request in complete_requests(kit.policy, requests) for c in per_request]
    for q, c in zip(owners, completions):
        budgets[q].charge(c.tokens)
    flat = kit.candidates([questions[q] for q in owners], [c.text for c in completions],
                          [c.tokens for c in completions], scored)
    per_question: list[list[Candidate]] = [[] for _ in questions]
    for q, candidate in zip(owners, flat):
        per_question[q].append(candidate)
    return per_question


def _result(kit: Toolkit, question: str, budget: Budget, candidates: list[Candidate], chosen: Candidate | None,
            chosen_by: str, **extra) -> SolveResult:
    return SolveResult(question, chosen.answer if chosen else None, chosen.solution if chosen else "",
                       kit.settings.strategy, chosen_by, budget.spent, budget.limit, tuple(candidates),
                       program=chosen.program if chosen else None, **extra)


def cot(kit: Toolkit, questions: Sequence[str]) -> list[SolveResult]:
    """One solution per question in the model's format; its answer is the answer."""
    budgets = kit.budgets(len(questions))
    samples = sample_solutions(kit, questions, budgets, 1, scored=False)
    return [_result(kit, q, b, c, c[0] if c else None, "the single sample" if c else "no budget to sample")
            for q, b, c in zip(questions, budgets, samples)]


def self_consistency(kit: Toolkit, questions: Sequence[str]) -> list[SolveResult]:
    """k samples per question; the answer most of them reach (equivalent spellings together) wins."""
    k = kit.settings.samples
    budgets = kit.budgets(len(questions))
    samples = sample_solutions(kit, questions, budgets, k, scored=kit.scorer is not None)
    results = []
    for question, budget, candidates in zip(questions, budgets, samples):
        votes, members = vote([c.answer for c in candidates], kit.compare, [c.score for c in candidates])
        if not votes:
            chosen = candidates[0] if candidates else None
            results.append(_result(kit, question, budget, candidates, chosen,
                                   f"no answer in {len(candidates)} samples"))
            continue
        winners = [candidates[i] for i in members[0]]
        chosen = max(winners, key=lambda c: -1.0 if c.score is None else c.score) if kit.scorer else winners[0]
        tie = len(votes) > 1 and votes[1].count == votes[0].count
        how = f"majority vote: {votes[0].count} of {len(candidates)} samples agree"
        how += " (tie broken by PRM score)" if tie and kit.scorer else " (tie: first seen)" if tie else ""
        results.append(_result(kit, question, budget, candidates, chosen, how, votes=tuple(votes)))
    return results


def best_of_n(kit: Toolkit, questions: Sequence[str]) -> list[SolveResult]:
    """k samples per question; the one the PRM scores highest (ties: the first) is the answer."""
    needs_scorer(kit)
    k = kit.settings.samples
    budgets = kit.budgets(len(questions))
    samples = sample_solutions(kit, questions, budgets, k, scored=True)
    results = []
    for question, budget, candidates in zip(questions, budgets, samples):
        chosen = max(candidates, key=lambda c: -1.0 if c.score is None else c.score) if candidates else None
        how = (f"highest PRM score ({kit.settings.prm_aggregation} over steps) of {len(candidates)} samples"
               if chosen else "no budget to sample")
        results.append(_result(kit, question, budget, candidates, chosen, how))
    return results
