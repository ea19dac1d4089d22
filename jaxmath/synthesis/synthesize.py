"""Teacher synthesis: ask a teacher for solutions, run and grade them, keep the verified ones as SFT records.

For each problem (question + gold answer) the teacher gets the format's prompt (`pot`: write a Python
program that stores the answer in `answer`); each program runs in the sandbox and its value is compared
with the gold by the Verifier. Verified, distinct solutions become records in the SFT schema (the program
in `metadata["program"]`, so `data.format: pot` trains on it). Completions are cached (see cache.py).
"""
from __future__ import annotations

import dataclasses
import re
from typing import Any, Sequence

from jaxmath.data.formats import get_format
from jaxmath.data.readers import write_records
from jaxmath.data.schema import Record
from jaxmath.progress import progress_bar
from jaxmath.revise import Attempt, check_attempts
from jaxmath.synthesis.cache import AskCounts, CompletionCache, ask
from jaxmath.synthesis.config import GenerationConfig, SynthesisConfig, load_problems
from jaxmath.synthesis.teacher import Teacher
from jaxmath.synthesis.teachers import make_teacher
from jaxmath.verify import Verifier
from jaxmath.verify.sandbox import require_layers, shared_sandbox

@dataclasses.dataclass
class Tally:
    """Counts for the summary: completions asked / served from the cache, programs run, answers verified."""

    problems: int = 0
    ran: int = 0
    verified: int = 0
    kept: int = 0
    ask: AskCounts = dataclasses.field(default_factory=AskCounts)

    def postfix(self) -> dict[str, int]:
        """The counts a progress bar shows after its problems done and rate."""
        return {"asked": self.ask.asked, "cached": self.ask.cached, "ran": self.ran, "verified": self.verified,
                "kept": self.kept}

    def summary(self) -> dict[str, int]:
        return {"problems": self.problems, "asked": self.ask.asked, "cached": self.ask.cached, "ran": self.ran,
                "verified": self.verified, "kept": self.kept}


def first_attempts(teacher: Teacher, problems: Sequence[Record], config: GenerationConfig, cache: CompletionCache,
                   verifier: Verifier, tally: Tally) -> list[list[Attempt]]:
    """`config.samples` graded attempts per problem (asked through the cache); counts them into `tally`."""
    fmt = get_format(config.format)
    completions = ask(teacher, [fmt.messages(r.question) for r in problems], config.samples, config.sampling,
                      cache, tally.ask)
    attempts = check_attempts([c for per in completions for c in per],
                              [r.answer for r in problems for _ in range(config.samples)], fmt, verifier,
                              timeout=config.sandbox_timeout)
    tally.problems += len(problems)
    tally.ran += sum(a.status is not None for a in attempts)
    tally.verified += sum(a.correct for a in attempts)
    return [attempts[p * config.samples:(p + 1) * config.samples] for p in range(len(problems))]


def solution_key(attempt: Attempt) -> str:
    """What makes two solutions the same: the program (else the completion) without whitespace differences."""
    return re.sub(r"\s+", " ", attempt.program if attempt.program is not None else attempt.completion).strip()


def solution_record(problem: Record, attempt: Attempt, sample: int, teacher: Teacher, suffix: str = "synth",
                    **metadata) -> Record:
    """An SFT record of a verified solution: the problem's question and gold, the teacher's text as solution."""
    extra = {"program": attempt.program} if attempt.program is not None else {}
    return Record(id=f"{problem.id}#{suffix}{sample}", question=problem.question, answer=problem.answer,
                  solution=attempt.completion, source=f"{suffix}:{problem.source or 'input'}",
                  metadata={**problem.metadata, **extra, "source_id": problem.id, "sample": sample,
                            "teacher": f"{teacher.backend}:{teacher.model}", "teacher_answer": attempt.answer,
                            **metadata})


def keep_verified(problem: Record, attempts: Sequence[Attempt], teacher: Teacher, limit: int | None) -> list[Record]:
    """Records of the distinct verified attempts of one problem, at most `limit`."""
    kept, seen = [], set()
    for sample, attempt in enumerate(attempts):
        key = solution_key(attempt)
        if attempt.correct and key not in seen and (limit is None or len(kept) < limit):
            seen.add(key)
            kept.append(solution_record(problem, attempt, sample, teacher))
    return kept


def require_sandbox(config: GenerationConfig) -> None:
    """Fail at start (SandboxUnavailable) when a layer in `sandbox.require` is missing on this machine."""
    if config.sandbox.require:
        require_layers(config.sandbox.require)


def sandbox_summary(config: GenerationConfig) -> dict[str, list[str]]:
    """For the summary: the isolation layers the programs ran under (formats that run programs only)."""
    if get_format(config.format).extraction_style != "pot":
        return {}
    return {"sandbox_layers": list(shared_sandbox().layers)}


def synthesize(config: SynthesisConfig, quiet: bool = False) -> dict[str, Any]:
    """Run a synthesis: writes `config.output` (records, atomically) and returns the summary counts; a progress
    bar over the problems (with the counts so far) unless `quiet`."""
    require_sandbox(config)
    problems = load_problems(config)
    teacher = make_teacher(config.teacher)
    tally, kept = Tally(), []
    try:
        with CompletionCache(config.cache or f"{config.output}.cache.jsonl") as cache, \
                Verifier(workers=config.verifier_workers) as verifier, \
                progress_bar(total=len(problems), desc="synthesize", unit="problem", quiet=quiet) as bar:
            for first in range(0, len(problems), config.chunk):
                chunk = problems[first:first + config.chunk]
                for problem, attempts in zip(chunk, first_attempts(teacher, chunk, config, cache, verifier, tally)):
                    kept += keep_verified(problem, attempts, teacher, config.keep_per_problem)
                tally.kept = len(kept)
                bar.set_postfix(tally.postfix(), refresh=False)
                bar.update(len(chunk))
    finally:
        teacher.close()
    write_records(kept, config.output)
    return {**tally.summary(), **sandbox_summary(config)}
