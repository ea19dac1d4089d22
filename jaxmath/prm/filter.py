"""Quality filtering of generated solutions: keep those whose final answer is correct and whose aggregated
PRM score exceeds a threshold (issue #8: 0.6 by default), and count why the others were dropped.

Rows are mappings with `question` and the solution under `completion` (evaluation's samples.jsonl) or
`solution`. Correctness comes from `verdict` ("correct" counts) or `correct` (bool) when the row has one;
otherwise the solution is graded against `gold` or `answer` in the prompt format's extraction style.
Only correct solutions are scored.
"""
from __future__ import annotations

import collections
import dataclasses
from typing import Any, Mapping, Sequence

from jaxmath.data.encode import check_text
from jaxmath.data.formats import PromptFormat
from jaxmath.data.schema import BadRow
from jaxmath.objectives.prm import STEP_AGGREGATIONS
from jaxmath.prm.scorer import PRMScorer
from jaxmath.verify.answers import extract_answers, grade_answers
from jaxmath.verify.pool import Verifier

DEFAULT_THRESHOLD = 0.6
WRONG = "wrong answer"
NO_STEPS = "no steps"


@dataclasses.dataclass(frozen=True)
class FilterResult:
    """The kept rows (each with its `prm_score` added) and the number of dropped rows per reason."""

    kept: list[dict[str, Any]]
    dropped: collections.Counter[str]

    def summary(self) -> str:
        total = len(self.kept) + sum(self.dropped.values())
        share = f" ({100 * len(self.kept) / total:.1f}%)" if total else ""
        reasons = ", ".join(f"{reason}: {n}" for reason, n in self.dropped.most_common()) or "none"
        return f"kept {len(self.kept)} of {total} solutions{share}; dropped: {reasons}"


def _text(row: Mapping[str, Any], name: str) -> tuple[str, str]:
    """(question, solution) of a row; ValueError naming the row and the key otherwise."""
    if not isinstance(row, Mapping):
        raise ValueError(f"{name}: expected a JSON object, got {type(row).__name__}")
    key = "completion" if "completion" in row else "solution"
    try:
        return check_text(row.get("question"), "question"), check_text(row.get(key), key)
    except BadRow as err:
        raise ValueError(f"{name}: {err} (need 'question' and 'completion' or 'solution')") from None


def correctness(rows: Sequence[Mapping[str, Any]], fmt: PromptFormat, verifier: Verifier | None,
                names: Sequence[str]) -> list[bool]:
    """Whether each row's solution is correct: its `verdict` / `correct` field, else graded against its gold."""
    correct: list[bool | None] = []
    to_grade: list[tuple[int, str, str]] = []
    for i, (row, name) in enumerate(zip(rows, names)):
        if "verdict" in row:
            correct.append(row["verdict"] == "correct")
        elif isinstance(row.get("correct"), bool):
            correct.append(row["correct"])
        elif row.get("gold") not in (None, "") or row.get("answer") not in (None, ""):
            correct.append(None)
            to_grade.append((i, _text(row, name)[1], str(row.get("gold") or row.get("answer"))))
        else:
            raise ValueError(f"{name}: no 'verdict', 'correct', 'gold' or 'answer' to tell whether it is correct")
    if to_grade:
        if verifier is None:
            raise ValueError(f"{len(to_grade)} row(s) need grading against their gold answer: pass a Verifier")
        answers = extract_answers([solution for _, solution, _ in to_grade], fmt.extraction_style)
        for (i, _, _), verdict in zip(to_grade, grade_answers(verifier, answers, [g for _, _, g in to_grade])):
            correct[i] = verdict.correct
    return [bool(c) for c in correct]


def prm_filter(rows: Sequence[Mapping[str, Any]], scorer: PRMScorer, *, threshold: float = DEFAULT_THRESHOLD,
               how: str = "min", verifier: Verifier | None = None,
               names: Sequence[str] | None = None) -> FilterResult:
    """Keep the rows that are correct and whose `how`-aggregated PRM score is above `threshold`.

    `names` label rows in error messages (default `row i`); `verifier` is needed only for rows without a
    verdict. Kept rows are copies with `prm_score` added, in input order.
    """
    if how not in STEP_AGGREGATIONS:
        raise ValueError(f"unknown step aggregation {how!r}; choose one of {sorted(STEP_AGGREGATIONS)}")
    names = list(names) if names is not None else [f"row {i}" for i in range(len(rows))]
    texts = [_text(row, name) for row, name in zip(rows, names)]
    correct = correctness(rows, scorer.fmt, verifier, names)
    dropped: collections.Counter[str] = collections.Counter()
    dropped[WRONG] = correct.count(False)
    candidates = [i for i, ok in enumerate(correct) if ok]
    step_scores = scorer.score_solutions([texts[i][0] for i in candidates], [texts[i][1] for i in candidates])
    kept = []
    for i, score in zip(candidates, scorer.aggregate(step_scores, how)):
        if score is None:
            dropped[NO_STEPS] += 1
        elif score <= threshold:
            dropped[f"PRM score <= {threshold:g}"] += 1
        else:
            kept.append(dict(rows[i]) | {"prm_score": score})
    return FilterResult(kept, +dropped)
