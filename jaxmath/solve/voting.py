"""Voting over answers: candidates whose answers the verifier judges equivalent (`0.5` and `\\frac12`) form one
class; the largest class wins, ties go to the class with the higher PRM score, then to the class seen first."""
from __future__ import annotations

from typing import Callable, Sequence

from jaxmath.solve.result import Vote
from jaxmath.verify.pool import Verifier

Compare = Callable[[Sequence[str], Sequence[str]], list[bool]]  # (answers, references) -> equal, pairwise


def verifier_compare(verifier: Verifier) -> Compare:
    """Pairwise equivalence by the verifier's bounded workers (one batch per call)."""
    return lambda answers, references: [v.correct for v in verifier.compare_batch(answers, references)]


def answer_classes(answers: Sequence[str | None], compare: Compare) -> list[list[int]]:
    """Indices of the answers grouped into equivalence classes, in order of first appearance; None answers are
    in no class. Identical spellings join at once; distinct spellings are compared pairwise in one batch (both
    directions, since a judge parses its reference more strictly than its prediction)."""
    spellings: dict[str, list[int]] = {}
    for i, answer in enumerate(answers):
        if answer is not None:
            spellings.setdefault(answer, []).append(i)
    keys = list(spellings)
    pairs = [(a, b) for a in range(len(keys)) for b in range(a + 1, len(keys))]
    equal = compare([keys[b] for _, b in pairs] + [keys[a] for a, _ in pairs],
                    [keys[a] for a, _ in pairs] + [keys[b] for _, b in pairs]) if pairs else []
    parent = list(range(len(keys)))

    def root(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for (a, b), forward, backward in zip(pairs, equal[:len(pairs)], equal[len(pairs):]):
        if forward or backward:
            parent[max(root(a), root(b))] = min(root(a), root(b))
    classes: dict[int, list[int]] = {}
    for k, key in enumerate(keys):
        classes.setdefault(root(k), []).extend(spellings[key])
    return [sorted(members) for _, members in sorted(classes.items())]


def vote(answers: Sequence[str | None], compare: Compare,
         scores: Sequence[float | None] | None = None) -> tuple[list[Vote], list[list[int]]]:
    """Votes (winner first: most members, then best PRM score, then first seen) and each vote's member indices."""
    classes = answer_classes(answers, compare)

    def best(members: list[int]) -> float | None:
        known = [scores[i] for i in members if scores is not None and scores[i] is not None]
        return max(known) if known else None

    ranked = sorted(enumerate(classes), key=lambda c: (-len(c[1]), -(best(c[1]) if best(c[1]) is not None
                                                                     else float("-inf")), c[0]))
    return ([Vote(answers[members[0]], len(members), best(members)) for _, members in ranked],  # type: ignore[arg-type]
            [members for _, members in ranked])
