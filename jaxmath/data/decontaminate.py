"""N-gram decontamination: find the evaluation question a training text overlaps, and by how much.

Texts are compared as lower-cased word tokens (`\\w+`: case, punctuation, LaTeX markup and spacing do not
matter) in n-grams of `n` words; a text shorter than n words is one gram, itself. The overlap of a text with
an evaluation question is the share of the shorter one's n-grams that the other holds (shared / min), so
a near copy, a copy with a few words changed, and an evaluation question embedded in a longer text all
score high, while a short text matches only an identical one. A text is contaminated when its best overlap
reaches the threshold.

Evaluation sets are named as a benchmark (`svamp`: the split it scores), `SOURCE:SPLIT`, or a JSONL/Parquet
path. By default the builder and the pair builder check against every benchmark present under the data
directory (`default_eval_sets`).
"""
from __future__ import annotations

import collections
import dataclasses
import os
import re
from typing import Mapping, Sequence

from jaxmath.data.benchmarks import BENCHMARKS, local_benchmarks
from jaxmath.data.readers import SkipLog, file_rows, value_text
from jaxmath.data.sources import SOURCES, SourceSpec, source_records
from jaxmath.data.tables import format_table

NGRAM = 13  # words per n-gram (the GPT-3 paper's length)
THRESHOLD = 0.5  # overlap at which a text counts as contaminated
_WORD = re.compile(r"\w+")
_EVAL_QUESTION_KEYS = ("question", "problem", "input")
Gram = tuple[str, ...]


def words(text: str) -> list[str]:
    """Lower-cased word tokens, the unit of n-gram overlap."""
    return _WORD.findall(text.lower())


def ngrams(tokens: Sequence[str], n: int) -> set[Gram]:
    """All n-grams of `tokens`; a text shorter than n counts as one gram (itself)."""
    if len(tokens) < n:
        return {tuple(tokens)} if tokens else set()
    return {tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)}


@dataclasses.dataclass(frozen=True)
class Match:
    """The evaluation question a text overlaps most, and the overlap (shared n-grams / the shorter's n-grams)."""

    eval_set: str
    eval_id: str
    overlap: float


class NgramIndex:
    """The n-grams of evaluation questions, each mapped to the questions that hold it."""

    def __init__(self, n: int):
        if n < 1:
            raise ValueError(f"ngram must be >= 1, got {n}")
        self.n = n
        self.items: list[tuple[str, str]] = []  # (eval set, item id) per question
        self.sizes: list[int] = []  # n-grams per question
        self.holders: dict[Gram, list[int]] = {}

    def add(self, text: str, eval_set: str, item_id: str) -> None:
        grams = ngrams(words(text), self.n)
        if not grams:
            return
        index = len(self.items)
        self.items.append((eval_set, item_id))
        self.sizes.append(len(grams))
        for gram in grams:
            self.holders.setdefault(gram, []).append(index)

    def match(self, text: str) -> Match | None:
        """The question `text` overlaps most (ties: more shared n-grams, then the first added), or None."""
        grams = ngrams(words(text), self.n)
        shared = collections.Counter(i for gram in grams for i in self.holders.get(gram, ()))
        if not shared:
            return None
        best = max(shared, key=lambda i: (shared[i] / min(len(grams), self.sizes[i]), shared[i], -i))
        eval_set, item_id = self.items[best]
        return Match(eval_set, item_id, shared[best] / min(len(grams), self.sizes[best]))

    def contaminating(self, text: str, threshold: float) -> Match | None:
        """The match of `text` when its overlap reaches `threshold` (`text` is contaminated), else None."""
        match = self.match(text)
        return match if match is not None and match.overlap >= threshold else None


def _spec_named(name: str) -> SourceSpec | None:
    return SOURCES[name] if name in SOURCES else BENCHMARKS[name].source if name in BENCHMARKS else None


def check_eval_set(spec: str) -> None:
    """Raise ValueError unless `spec` names an evaluation set: a file, a benchmark, or SOURCE[:SPLIT]."""
    if not os.path.isfile(spec) and _spec_named(spec.partition(":")[0]) is None:
        raise ValueError(f"evaluation set {spec!r} is neither a file nor a known benchmark or source "
                         f"(benchmarks: {', '.join(BENCHMARKS)}; sources: {', '.join(SOURCES)})")


def eval_questions(spec: str, data_dir: str | os.PathLike | None, skips: SkipLog) -> list[tuple[str, str]]:
    """(id, question) of an evaluation set: a JSONL/Parquet path, a benchmark name (the split it scores:
    locally when `data_dir` is given, else on the Hub), or `SOURCE[:SPLIT]` (split defaults to test)."""
    check_eval_set(spec)
    if os.path.isfile(spec):
        items = []
        for where, _, row in file_rows(spec, skips):
            text = next((value_text(row[k]) for k in _EVAL_QUESTION_KEYS if value_text(row.get(k))), "")
            if text:
                items.append((where, text))
        return items
    name, _, split = spec.partition(":")
    source = _spec_named(name)
    if not split:
        split = (BENCHMARKS[name].split(local=data_dir is not None) if name in BENCHMARKS
                 else "test" if "test" in source.splits else source.default_split)
    return [(r.id, r.question) for r in source_records(source, split, data_dir, skips)]


def default_eval_sets(data_dir: str | os.PathLike | None, exclude: Sequence[str] = ()) -> list[str]:
    """The benchmarks present under `data_dir` (none without one), less `exclude`."""
    return [] if data_dir is None else [b for b in local_benchmarks(data_dir) if b not in exclude]


def build_index(specs: Sequence[str], n: int, data_dir: str | os.PathLike | None,
                say=lambda message: None) -> tuple[NgramIndex, dict[str, int]]:
    """The n-gram index of all evaluation sets and the questions each contributed (their own unreadable rows
    are skipped without affecting the caller's counts)."""
    index, sizes = NgramIndex(n), {}
    for spec in specs:
        log = SkipLog()
        items = eval_questions(spec, data_dir, log)
        for item_id, text in items:
            index.add(text, spec, item_id)
        sizes[spec] = len(items)
        say(f"  eval set {spec}: {len(items)} questions"
            + (f" ({log.total} unreadable rows ignored)" if log.total else ""))
    return index, sizes


def format_removed(sizes: Mapping[str, int], removed: Mapping[str, int]) -> str:
    """The per-evaluation-set table: questions indexed and rows removed, with a total."""
    rows = [("eval set", "questions", "removed")] + [(s, str(n), str(removed.get(s, 0))) for s, n in sizes.items()]
    return format_table([*rows, ("total", str(sum(sizes.values())), str(sum(removed.get(s, 0) for s in sizes)))],
                        total=True)
