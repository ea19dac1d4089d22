"""Build one training JSONL from named sources, local files and generators.

Stages: collect (bad rows skipped and counted, or an error naming file and line when strict) ->
over-length filter (when a tokenizer is given) -> exact de-duplication -> n-gram decontamination
against evaluation sets (what was dropped is reported) -> write, with a per-source summary table.
"""
from __future__ import annotations

import collections
import dataclasses
import json
import os
import random
import re
import sys
import time
from typing import Callable, Iterable, Sequence

from jaxmath.data import generators
from jaxmath.data.readers import FieldMap, SkipLog, file_rows, read_records, value_text, write_records
from jaxmath.data.schema import BadRow, Record
from jaxmath.data.sources import SOURCES, load_source

Progress = Callable[[str], None]
_WORD = re.compile(r"\w+")
_EVAL_QUESTION_KEYS = ("question", "problem", "input")


@dataclasses.dataclass
class BuildConfig:
    """Everything `build` needs; the CLI flags map one to one onto these fields."""

    output: str
    sources: Sequence[str] = ()
    samples_per_source: int | None = None
    split: str | None = None
    data_dir: str | None = None
    inputs: Sequence[tuple[str, FieldMap | None]] = ()
    generators: Sequence[str] = ()
    synthetic_samples: int = 0
    ta_samples: int = 0
    decontaminate: Sequence[str] = ()
    ngram: int = 13
    threshold: float = 0.5
    dropped_report: str | None = None
    tokenizer: str | None = None
    max_tokens: int | None = None
    strict: bool = False
    seed: int = 0

    def __post_init__(self):
        if self.ngram < 1:
            raise ValueError(f"ngram must be >= 1, got {self.ngram}")
        if not 0.0 < self.threshold <= 1.0:
            raise ValueError(f"threshold must be in (0, 1], got {self.threshold}")
        if (self.tokenizer is None) != (self.max_tokens is None):
            raise ValueError("tokenizer and max_tokens go together: give both or neither")
        for name in self.sources:
            if name not in SOURCES:
                raise ValueError(f"unknown source {name!r}; known sources: {sorted(SOURCES)}")
        for name in self.generators:
            generators.get_generator(name)


@dataclasses.dataclass
class SourceStats:
    """Per-source counts for the summary table."""

    loaded: int = 0
    bad: int = 0
    over_length: int = 0
    duplicate: int = 0
    contaminated: int = 0
    written: int = 0


@dataclasses.dataclass
class Dropped:
    """One record removed by decontamination, with the evaluation item it overlapped."""

    id: str
    source: str
    question: str
    eval_set: str
    eval_id: str
    overlap: float


@dataclasses.dataclass
class BuildResult:
    written: int
    stats: dict[str, SourceStats]
    dropped: list[Dropped]
    skips: SkipLog


# ---- collection ---------------------------------------------------------------------------------------

def sample(records: list[Record], n: int | None, seed: int) -> list[Record]:
    """At most `n` records drawn without replacement (seeded), kept in their original order."""
    if n is None or n >= len(records):
        return records
    keep = sorted(random.Random(seed).sample(range(len(records)), n))
    return [records[i] for i in keep]


def split_evenly(total: int, names: Sequence[str]) -> dict[str, int]:
    """`total` spread over `names` as evenly as possible (earlier names take the remainder)."""
    if not names:
        return {}
    base, extra = divmod(total, len(names))
    return {name: base + (i < extra) for i, name in enumerate(names)}


def _resolve_split(name: str, split: str | None, data_dir: str | None, say: Progress) -> str | None:
    """The split to read: the requested one, else the source's default, else (locally) the only split present."""
    from jaxmath.data.sources import local_splits

    if split is not None or data_dir is None:
        return split
    spec = SOURCES[name]
    present = local_splits(spec, data_dir)
    if spec.default_split in present or len(present) != 1:
        return None
    say(f"  {name}: no {spec.default_split!r} split in {data_dir}; using {present[0]!r}")
    return present[0]


@dataclasses.dataclass
class Group:
    """The records one source, file or generator contributed, and how many of its rows were bad."""

    name: str
    records: list[Record]
    bad: int = 0


def collect(config: BuildConfig, skips: SkipLog, say: Progress) -> list[Group]:
    """Records of every configured source, input file and generator, grouped by where they came from."""
    groups: list[Group] = []

    def add(name: str, read: Callable[[], list[Record]]) -> None:
        start, bad_before = time.perf_counter(), skips.total
        records = read()
        chosen = sample(records, config.samples_per_source, config.seed)
        bad = skips.total - bad_before
        say(f"  {name}: {len(records)} records ({bad} bad rows skipped), kept {len(chosen)} "
            f"({time.perf_counter() - start:.1f}s)")
        groups.append(Group(name, chosen, bad))

    for name in config.sources:
        split = _resolve_split(name, config.split, config.data_dir, say)
        add(name, lambda: load_source(name, split, config.data_dir, skips=skips))
    for path, field_map in config.inputs:
        name = os.path.splitext(os.path.basename(path))[0]
        add(name, lambda: read_records(path, field_map, source=name, skips=skips))
    counts = {**split_evenly(config.synthetic_samples, list(config.generators)),
              **split_evenly(config.ta_samples, generators.generator_names(generators.TA_FAMILY))}
    for name, n in counts.items():
        if n:
            start = time.perf_counter()
            groups.append(Group(f"synthetic/{name}", generators.generate(name, n, config.seed)))
            say(f"  generated {n} x {name} ({time.perf_counter() - start:.1f}s)")
    return groups


# ---- filters ------------------------------------------------------------------------------------------

def question_key(question: str) -> str:
    """The exact-duplicate key: the question with whitespace runs collapsed."""
    return " ".join(question.split())


def words(text: str) -> list[str]:
    """Lower-cased word tokens, the unit of n-gram overlap."""
    return _WORD.findall(text.lower())


def ngrams(tokens: Sequence[str], n: int) -> set[tuple[str, ...]]:
    """All n-grams of `tokens`; a text shorter than n counts as one gram (itself)."""
    if len(tokens) < n:
        return {tuple(tokens)} if tokens else set()
    return {tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)}


class NgramIndex:
    """N-grams of evaluation questions, each mapped to the first (eval set, item id) that holds it."""

    def __init__(self, n: int):
        self.n = n
        self.owner: dict[tuple[str, ...], tuple[str, str]] = {}

    def add(self, text: str, eval_set: str, item_id: str) -> None:
        for gram in ngrams(words(text), self.n):
            self.owner.setdefault(gram, (eval_set, item_id))

    def overlap(self, text: str) -> tuple[float, tuple[str, str] | None]:
        """Share of `text`'s n-grams found in the index, and the eval item owning most of them."""
        grams = ngrams(words(text), self.n)
        hits = [self.owner[g] for g in grams if g in self.owner]
        if not grams or not hits:
            return 0.0, None
        return len(hits) / len(grams), collections.Counter(hits).most_common(1)[0][0]


def eval_questions(spec: str, data_dir: str | None, skips: SkipLog) -> list[tuple[str, str]]:
    """(id, question) of an evaluation set: a JSONL/Parquet path, or `source[:split]` (split defaults to test)."""
    if os.path.isfile(spec):
        items = []
        for where, _, row in file_rows(spec, skips):
            text = next((value_text(row[k]) for k in _EVAL_QUESTION_KEYS if value_text(row.get(k))), "")
            if text:
                items.append((where, text))
        return items
    name, _, split = spec.partition(":")
    if name not in SOURCES:
        raise ValueError(f"evaluation set {spec!r} is neither a file nor a known source ({sorted(SOURCES)})")
    split = split or ("test" if "test" in SOURCES[name].splits else SOURCES[name].default_split)
    return [(r.id, r.question) for r in load_source(name, split, data_dir, skips=skips)]


def build_index(specs: Sequence[str], n: int, data_dir: str | None, say: Progress) -> NgramIndex:
    """The n-gram index of all evaluation sets (their own bad rows are skipped without affecting the build)."""
    index = NgramIndex(n)
    for spec in specs:
        log = SkipLog()
        items = eval_questions(spec, data_dir, log)
        for item_id, text in items:
            index.add(text, spec, item_id)
        say(f"  eval set {spec}: {len(items)} questions" + (f" ({log.total} unreadable rows ignored)" if log.total else ""))
    return index


def token_filter(tokenizer_path: str, max_tokens: int) -> Callable[[Record], int | None]:
    """A function giving a record's token count when it exceeds `max_tokens` (question + solution or answer)."""
    from jaxmath.data.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(tokenizer_path)

    def too_long(record: Record) -> int | None:
        text = f"{record.question}\n{record.solution or record.answer}"
        count = len(tokenizer(text, add_special_tokens=False)["input_ids"])
        return count if count > max_tokens else None
    return too_long


# ---- the build ----------------------------------------------------------------------------------------

def format_table(stats: dict[str, SourceStats]) -> str:
    """The per-source summary table, with a total row."""
    columns = [f.name for f in dataclasses.fields(SourceStats)]
    total = SourceStats(**{c: sum(getattr(s, c) for s in stats.values()) for c in columns})
    rows = [["source", *columns]] + [[name, *(str(getattr(s, c)) for c in columns)]
                                     for name, s in [*stats.items(), ("total", total)]]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths)))
             for row in rows]
    return "\n".join([lines[0], "-" * len(lines[0]), *lines[1:-1], "-" * len(lines[0]), lines[-1]])


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def build(config: BuildConfig, progress: Progress | None = _stderr) -> BuildResult:
    """Run every stage and write `config.output`; returns the counts and what decontamination dropped."""
    say = progress or (lambda message: None)
    skips = SkipLog(strict=config.strict)
    start = time.perf_counter()
    say("[1/4] collecting records")
    groups = collect(config, skips, say)
    stats = {group.name: SourceStats(loaded=len(group.records), bad=group.bad) for group in groups}
    too_long = token_filter(config.tokenizer, config.max_tokens) if config.tokenizer else None
    say("[2/4] filtering over-length rows and exact duplicates")
    seen: set[str] = set()
    kept: list[tuple[str, Record]] = []
    for group in groups:
        name = group.name
        for record in group.records:
            if too_long and (count := too_long(record)) is not None:
                skips.skip(f"{name} record {record.id}",
                           BadRow("over-length", f"{count} tokens > max_tokens={config.max_tokens}"))
                stats[name].over_length += 1
                continue
            key = question_key(record.question)
            if key in seen:
                stats[name].duplicate += 1
                continue
            seen.add(key)
            kept.append((name, record))
    dropped: list[Dropped] = []
    if config.decontaminate:
        say(f"[3/4] decontaminating against {', '.join(config.decontaminate)} "
            f"({config.ngram}-grams, threshold {config.threshold})")
        index = build_index(config.decontaminate, config.ngram, config.data_dir, say)
        clean = []
        for name, record in kept:
            share, owner = index.overlap(record.question)
            if owner is not None and share >= config.threshold:
                dropped.append(Dropped(record.id, name, record.question, owner[0], owner[1], round(share, 4)))
                stats[name].contaminated += 1
            else:
                clean.append((name, record))
        kept = clean
        if config.dropped_report:
            write_dropped(dropped, config.dropped_report)
            say(f"  wrote the {len(dropped)} dropped record(s) to {config.dropped_report}")
    else:
        say("[3/4] decontamination: no evaluation sets given, skipped")
    for name, _ in kept:
        stats[name].written += 1
    say(f"[4/4] writing {config.output}")
    written = write_records((record for _, record in kept), config.output)
    say(format_table(stats))
    say(f"wrote {written} records to {config.output} in {time.perf_counter() - start:.1f}s")
    skips.warn()
    return BuildResult(written, stats, dropped, skips)


def write_dropped(dropped: Iterable[Dropped], path: str) -> None:
    """The decontamination report: one JSON object per dropped record."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        for item in dropped:
            handle.write(json.dumps(dataclasses.asdict(item), ensure_ascii=False) + "\n")
