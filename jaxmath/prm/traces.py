"""PRM training traces from a policy (`jaxmath data prm-label`): the policy's own solutions labelled step by step
by Monte-Carlo rollouts (jaxmath.prm.rollout), plus verified solutions labelled by the verified rule
(jaxmath.prm.labels).

For each problem the policy samples `samples` solutions (distinct texts kept); every step of each is labelled by
whether any of `rollouts` continuations from it reaches the gold answer. Verified solutions (e.g. the teacher's
from `jaxmath data synthesize`) are graded again and labelled by the rule (all good when correct). Each row is
`{"id", "question", "answer", "steps", "labels", "source"}` (rollout rows also `soft_labels`), what PRM training
reads; `source` is `rollouts` or `verified`.
"""
from __future__ import annotations

import collections
import dataclasses
from typing import Any, Callable, Sequence

from transformers import PreTrainedTokenizerBase

from jaxmath.data.formats import PromptFormat, render_prompt
from jaxmath.data.schema import Record
from jaxmath.inference.completions import sample_completions
from jaxmath.inference.config import Sampling
from jaxmath.inference.weights import DecodeWeights
from jaxmath.models import CausalLM
from jaxmath.prm.labels import label_solutions
from jaxmath.prm.rollout import monte_carlo_labels
from jaxmath.verify.pool import Verifier

ROLLOUTS, VERIFIED = "rollouts", "verified"


@dataclasses.dataclass
class TraceCounts:
    """What labelling did: solutions sampled and distinct, traces per source, solutions without steps, steps
    labelled good and bad."""

    sampled: int = 0
    distinct: int = 0
    traces: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    without_steps: int = 0
    good_steps: int = 0
    bad_steps: int = 0

    def add(self, rows: Sequence[dict[str, Any] | None], source: str) -> list[dict[str, Any]]:
        """Count `rows` (None: no steps or no verdict) and return the labelled ones."""
        kept = [row for row in rows if row is not None]
        self.without_steps += len(rows) - len(kept)
        self.traces[source] += len(kept)
        for row in kept:
            self.good_steps += sum(row["labels"])
            self.bad_steps += len(row["labels"]) - sum(row["labels"])
        return kept

    def summary(self) -> dict[str, Any]:
        return {"sampled": self.sampled, "distinct": self.distinct, "traces": dict(self.traces),
                "without_steps": self.without_steps, "good_steps": self.good_steps, "bad_steps": self.bad_steps}


def policy_solutions(policy: CausalLM | DecodeWeights, tokenizer: PreTrainedTokenizerBase, fmt: PromptFormat,
                     problems: Sequence[Record], samples: int, sampling: Sampling, eos_ids: Sequence[int],
                     batch_size: int, counts: TraceCounts, quiet: bool = False) -> list[dict[str, str]]:
    """`samples` solutions per problem from the policy, distinct texts only, as `{"id", "question", "solution",
    "answer"}` rows (the id names the problem and the sample)."""
    prompts = [render_prompt(fmt, r.question, tokenizer) for r in problems]
    drawn = sample_completions(policy, tokenizer, prompts, samples, sampling, eos_ids, batch_size, "prm samples",
                               quiet)
    rows = []
    for record, per_problem in zip(problems, drawn):
        seen: set[str] = set()
        for sample, (text, _) in enumerate(per_problem):
            counts.sampled += 1
            if text.strip() and text.strip() not in seen:
                seen.add(text.strip())
                rows.append({"id": f"{record.id}#s{sample}", "question": record.question, "solution": text,
                             "answer": record.answer})
    counts.distinct += len(rows)
    return rows


def rollout_traces(policy: CausalLM | DecodeWeights, tokenizer: PreTrainedTokenizerBase, fmt: PromptFormat,
                   problems: Sequence[Record], verifier: Verifier, *, samples: int, rollouts: int,
                   sampling: Sampling, eos_ids: Sequence[int], batch_size: int, counts: TraceCounts,
                   quiet: bool = False) -> list[dict[str, Any]]:
    """Traces of the policy's own solutions to `problems`, labelled by Monte-Carlo rollouts of the same policy."""
    solutions = policy_solutions(policy, tokenizer, fmt, problems, samples, sampling, eos_ids, batch_size, counts,
                                 quiet)
    labelled = monte_carlo_labels(policy, tokenizer, fmt, solutions, verifier, rollouts=rollouts, sampling=sampling,
                                  eos_ids=eos_ids, batch_size=batch_size, quiet=quiet)
    rows = [None if row is None else {"id": solution["id"], **row, "source": ROLLOUTS}
            for solution, row in zip(solutions, labelled)]
    return counts.add(rows, ROLLOUTS)


def verified_traces(records: Sequence[Record], fmt: PromptFormat, verifier: Verifier,
                    counts: TraceCounts) -> list[dict[str, Any]]:
    """Traces of records' worked solutions, graded against their answers and labelled by the verified rule; a
    record without a solution is a ValueError naming it."""
    missing = [r.id for r in records if not r.solution]
    if missing:
        raise ValueError(f"verified solutions need a 'solution'; record(s) {missing[:5]} have none")
    rows = label_solutions([r.question for r in records], [r.solution or "" for r in records],
                           [r.answer for r in records], verifier, fmt.extraction_style)
    return counts.add([None if row is None else {"id": r.id, **row, "source": VERIFIED}
                       for r, row in zip(records, rows)], VERIFIED)


def build_traces(policy: CausalLM | DecodeWeights, tokenizer: PreTrainedTokenizerBase, fmt: PromptFormat,
                 problems: Sequence[Record], verified: Sequence[Record], verifier: Verifier, *, samples: int = 4,
                 rollouts: int = 8, sampling: Sampling = Sampling(max_new_tokens=512, temperature=0.7),
                 eos_ids: Sequence[int] = (), batch_size: int = 32, chunk: int = 64,
                 advance: Callable[[int], Any] = lambda n: None, quiet: bool = False
                 ) -> tuple[list[dict[str, Any]], TraceCounts]:
    """Rollout traces for `problems` (in chunks of `chunk` problems, `advance(n)` after each) followed by the
    verified traces of `verified`, and the counts; `quiet` turns the sampler's bars off."""
    if samples < 1 or rollouts < 1 or chunk < 1:
        raise ValueError(f"samples, rollouts and chunk must be >= 1, got {samples}, {rollouts} and {chunk}")
    counts, rows = TraceCounts(), []
    for first in range(0, len(problems), chunk):
        part = problems[first:first + chunk]
        rows += rollout_traces(policy, tokenizer, fmt, part, verifier, samples=samples, rollouts=rollouts,
                               sampling=sampling, eos_ids=eos_ids, batch_size=batch_size, counts=counts, quiet=quiet)
        advance(len(part))
    if verified:
        rows += verified_traces(verified, fmt, verifier, counts)
        advance(len(verified))
    return rows, counts
