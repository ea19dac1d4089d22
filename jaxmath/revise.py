"""Verify-then-revise: a failed solution goes back to the model with the verifier's verdict (and, for
programs, the sandbox's error) for up to R rounds, stopping for each sample once it verifies.

Evaluation uses it through `--repair-rounds R` (pass@1 before revision and after each round, each sample's
revision history in samples.jsonl); `jaxmath data revise` (jaxmath.synthesis.revisions) turns failed
attempt + feedback -> verified revision into SFT records and DPO pairs. The follow-up is a chat turn
(rendered with the tokenizer's chat template when it has one, else as a plain-text continuation).
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Any, Callable, Sequence

from jaxmath.data.formats import PromptFormat
from jaxmath.verify import Verifier
from jaxmath.verify.answers import (PROGRAM_STYLE, extract_answers, extract_program, grade_answers, program_answers,
                                    run_completions)
from jaxmath.verify.verdict import Outcome, Verdict

Respond = Callable[[list[list[dict[str, str]]], int], list[str]]  # (conversations, round) -> one completion each
ERROR_CHARS = 1500  # the tail of a sandbox error that feedback quotes
ANSWER_CHARS = 200  # the head of a wrong answer that feedback quotes
log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Attempt:
    """One graded completion; for programs also what ran and how the sandbox ended it."""

    completion: str
    answer: str | None
    verdict: Verdict
    program: str | None = None
    status: str | None = None  # sandbox status ("ok", "error", "timeout", ...); None when nothing ran
    error: str | None = None  # the sandbox's error message

    @property
    def correct(self) -> bool:
        return self.verdict.correct


def check_attempts(completions: Sequence[str], golds: Sequence[str], fmt: PromptFormat, verifier: Verifier, *,
                   fallback_last_number: bool = False, timeout: float | None = None) -> list[Attempt]:
    """Grade completions against golds in the format's style; `pot` programs run in the sandbox."""
    if fmt.extraction_style == PROGRAM_STYLE:
        results = run_completions(completions, timeout)
        answers = program_answers(results)
    else:
        results = [None] * len(completions)
        answers = extract_answers(completions, fmt.extraction_style, fallback_last_number)
    verdicts = grade_answers(verifier, answers, golds)
    return [Attempt(text, answer, verdict, extract_program(text) if result is not None else None,
                    result.status if result is not None else None, result.error if result is not None else None)
            for text, answer, verdict, result in zip(completions, answers, verdicts, results)]


def feedback_text(attempt: Attempt, fmt: PromptFormat) -> str:
    """What the model is told about a failed attempt: what went wrong (never the gold answer) and the format."""
    program, answer = fmt.extraction_style == "pot", (attempt.answer or "")[:ANSWER_CHARS]
    if program and attempt.status is None:
        problem = "Your reply has no ```python code block, so there was no program to run."
    elif program and attempt.status != "ok":
        error = (attempt.error or "")[-ERROR_CHARS:]
        problem = f"Running your program failed ({attempt.status}):\n{error}" if error else \
            f"Running your program failed ({attempt.status})."
    elif attempt.answer is None:
        problem = ("Your program ran but set no `answer` variable and printed nothing." if program
                   else "No final answer was found in your reply.")
    elif attempt.verdict.outcome is Outcome.UNVERIFIABLE:
        problem = f"Your final answer, {answer}, could not be checked ({attempt.verdict.reason})."
    else:
        problem = f"Your final answer, {answer}, is wrong."
    return f"{problem}\nFind the mistake and write a corrected solution. {fmt.system_prompt}"


def revision_messages(fmt: PromptFormat, question: str, attempts: Sequence[Attempt]) -> list[dict[str, str]]:
    """The conversation asking for the next revision: the question, then each attempt and its feedback."""
    messages = fmt.messages(question)
    for attempt in attempts:
        messages += [{"role": "assistant", "content": attempt.completion},
                     {"role": "user", "content": feedback_text(attempt, fmt)}]
    return messages


def revise(questions: Sequence[str], golds: Sequence[str], first: Sequence[Attempt], respond: Respond,
           fmt: PromptFormat, verifier: Verifier, rounds: int, *, fallback_last_number: bool = False,
           timeout: float | None = None) -> list[list[Attempt]]:
    """Each sample's attempts: `first`, then one revision per round until it verifies or `rounds` are done.

    `respond(conversations, round)` gets the conversations of the samples still failing and returns one
    completion for each.
    """
    if rounds < 0:
        raise ValueError(f"revision rounds must be >= 0, got {rounds}")
    if not len(questions) == len(golds) == len(first):
        raise ValueError(f"{len(questions)} questions, {len(golds)} golds and {len(first)} first attempts")
    histories = [[attempt] for attempt in first]
    for round_ in range(1, rounds + 1):
        failing = [i for i, history in enumerate(histories) if not history[-1].correct]
        if not failing:
            break
        completions = respond([revision_messages(fmt, questions[i], histories[i]) for i in failing], round_)
        if len(completions) != len(failing):
            raise ValueError(f"respond returned {len(completions)} completions for {len(failing)} conversations")
        attempts = check_attempts(completions, [golds[i] for i in failing], fmt, verifier,
                                  fallback_last_number=fallback_last_number, timeout=timeout)
        for i, attempt in zip(failing, attempts):
            histories[i].append(attempt)
        log.info("revision round %d/%d: %d of %d failing samples now verify", round_, rounds,
                 sum(a.correct for a in attempts), len(failing))
    return histories


def repair_metrics(histories: Sequence[Sequence[Attempt]], num_samples: int, rounds: int) -> dict[str, float]:
    """`pass@1_after_repair_r` for r = 1..rounds: a sample counts once any of its first r revisions verifies."""
    problems = [histories[p:p + num_samples] for p in range(0, len(histories), num_samples)]
    return {f"pass@1_after_repair_{r}": round(sum(
        sum(any(a.correct for a in h[:r + 1]) for h in samples) / num_samples for samples in problems)
        / len(problems), 6) for r in range(1, rounds + 1)}


def revision_history(history: Sequence[Attempt], fmt: PromptFormat) -> list[dict[str, Any]]:
    """A sample's revisions as samples.jsonl rows: the feedback each answered, what it wrote, its verdict."""
    return [{"round": r, "feedback": feedback_text(history[r - 1], fmt), "completion": a.completion,
             "extracted": a.answer, "verdict": a.verdict.outcome.value, "reason": a.verdict.reason}
            for r, a in enumerate(history[1:], start=1)]
