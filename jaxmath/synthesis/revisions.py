"""Revision training data: failed attempt + the verifier's feedback -> a verified revision.

The teacher samples attempts (as in synthesis, through the same cache); each failed one is revised up to
R rounds (jaxmath.revise). Every sample that ends verified after a revision gives one row, one SFT record
(question -> the verified revision) and one DPO pair per distinct failed attempt before it
({"question", "chosen": revision, "rejected": failed attempt}, the layout `encode_preference` reads).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

from jaxmath.data.formats import get_format
from jaxmath.data.readers import write_records
from jaxmath.data.schema import Record
from jaxmath.inference.config import round_seed
from jaxmath.revise import Attempt, feedback_text, revise, revision_history
from jaxmath.synthesis.cache import CompletionCache, ask
from jaxmath.synthesis.config import RevisionConfig, load_problems
from jaxmath.progress import progress_bar
from jaxmath.synthesis.synthesize import Tally, first_attempts, require_sandbox, sandbox_summary, solution_record
from jaxmath.synthesis.teacher import Teacher
from jaxmath.synthesis.teachers import make_teacher
from jaxmath.verify import Verifier


def revision_outputs(problem: Record, sample: int, history: Sequence[Attempt], teacher: Teacher,
                     fmt_name: str) -> tuple[dict[str, Any], Record, list[dict[str, str]]] | None:
    """(row, SFT record, DPO pairs) of one sample's history, or None unless a revision verified."""
    if len(history) < 2 or not history[-1].correct:
        return None
    fmt = get_format(fmt_name)
    failed, revision = history[:-1], history[-1]
    row = {"id": f"{problem.id}#s{sample}", "question": problem.question, "answer": problem.answer,
           "attempt": failed[-1].completion, "feedback": feedback_text(failed[-1], fmt),
           "revision": revision.completion, "rounds": len(failed), "first_attempt": history[0].completion,
           "history": revision_history(history, fmt)}
    record = solution_record(problem, revision, sample, teacher, suffix="rev", rounds=len(failed),
                             failed_attempt=row["attempt"], feedback=row["feedback"])
    rejected = dict.fromkeys(attempt.completion for attempt in failed)  # distinct, in order
    pairs = [{"id": f"{row['id']}-r{r}", "question": problem.question, "chosen": revision.completion,
              "rejected": text} for r, text in enumerate(rejected)]
    return row, record, pairs


def _write_jsonl(rows: Sequence[dict[str, Any]], path: Path) -> None:
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    tmp.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    os.replace(tmp, path)


def build_revisions(config: RevisionConfig, quiet: bool = False) -> dict[str, Any]:
    """Run `jaxmath data revise`: writes revisions.jsonl, sft.jsonl and dpo.jsonl into `config.output_dir`; a
    progress bar over the problems (with the counts so far) unless `quiet`."""
    require_sandbox(config)
    problems, fmt = load_problems(config), get_format(config.format)
    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    teacher = make_teacher(config.teacher)
    tally = Tally()
    rows, records, pairs, revisions = [], [], [], 0
    try:
        with CompletionCache(config.cache or out / "cache.jsonl") as cache, \
                Verifier(workers=config.verifier_workers) as verifier, \
                progress_bar(total=len(problems), desc="revise", unit="problem", quiet=quiet) as bar:
            def respond(conversations: list, round_: int) -> list[str]:
                sampling = round_seed(config.sampling, round_)
                return [texts[0] for texts in ask(teacher, conversations, 1, sampling, cache, tally.ask)]

            for first in range(0, len(problems), config.chunk):
                chunk = problems[first:first + config.chunk]
                attempts = [a for per in first_attempts(teacher, chunk, config, cache, verifier, tally) for a in per]
                histories = revise([p.question for p in chunk for _ in range(config.samples)],
                                   [p.answer for p in chunk for _ in range(config.samples)], attempts, respond, fmt,
                                   verifier, config.rounds, timeout=config.sandbox_timeout)
                for k, history in enumerate(histories):
                    revisions += len(history) - 1
                    tally.ran += sum(a.status is not None for a in history[1:])
                    made = revision_outputs(chunk[k // config.samples], k % config.samples, history, teacher,
                                            config.format)
                    if made is not None:
                        rows.append(made[0])
                        records.append(made[1])
                        pairs += made[2]
                tally.kept = len(rows)
                bar.set_postfix({**tally.postfix(), "revisions": revisions}, refresh=False)
                bar.update(len(chunk))
    finally:
        teacher.close()
    _write_jsonl(rows, out / "revisions.jsonl")
    write_records(records, out / "sft.jsonl")
    _write_jsonl(pairs, out / "dpo.jsonl")
    return {"problems": tally.problems, "samples": tally.problems * config.samples, "asked": tally.ask.asked,
            "cached": tally.ask.cached, "ran": tally.ran, "verified_first_try": tally.verified,
            "revisions": revisions, "verified_after_revision": len(rows), "dpo_pairs": len(pairs),
            **sandbox_summary(config)}
