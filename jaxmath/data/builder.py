"""Build one training JSONL from named sources, local files and generators.

Stages: collect (bad rows skipped and counted, or an error naming file and line when strict) ->
over-length filter (when a tokenizer is given) -> exact de-duplication -> n-gram decontamination
against evaluation sets (what was dropped is reported) -> write, with a per-source summary table.

Test sets never become training data by accident: a split that an evaluation benchmark scores
(`jaxmath.data.benchmarks`) is refused unless `allow_eval_splits` is set, a source's split is never
guessed from what is on disk, and every benchmark present under `data_dir` is decontaminated against
by default (`jaxmath.data.decontaminate`), with the rows each one removed reported.
"""
from __future__ import annotations

import collections
import dataclasses
import functools
import json
import logging
import os
import random
import time
import warnings
from typing import Callable, Iterable, Mapping, Sequence

from jaxmath.data import generators
from jaxmath.data.benchmarks import ALLOW_FLAG, EvalSplitError, evaluation_splits, scoring_benchmarks
from jaxmath.data.decontaminate import (NGRAM, THRESHOLD, build_index, check_eval_set, default_eval_sets,
                                        format_removed)
from jaxmath.data.readers import FieldMap, SkipLog, read_records, write_records
from jaxmath.data.schema import BadRow, Record
from jaxmath.data.sources import SOURCES, SourceError, load_source, local_files, local_splits
from jaxmath.data.tables import format_table
from jaxmath.progress import progress_bar

log = logging.getLogger(__name__)


class EvalSplitWarning(UserWarning):
    """A build reads a split that an evaluation benchmark scores, because it was asked to."""


@dataclasses.dataclass
class BuildConfig:
    """Everything `build` needs; the CLI flags map one to one onto these fields."""

    output: str
    sources: Sequence[str] = ()
    samples_per_source: int | None = None
    split: str | None = None  # the split of every source (default: each source's default_split)
    source_splits: Mapping[str, str] = dataclasses.field(default_factory=dict)  # per source; wins over split
    allow_eval_splits: bool = False  # read splits that evaluation benchmarks score (contaminates them)
    data_dir: str | None = None
    inputs: Sequence[tuple[str, FieldMap | None]] = ()
    generators: Sequence[str] = ()
    synthetic_samples: int = 0
    ta_samples: int = 0
    decontaminate: Sequence[str] = ()  # evaluation sets checked besides the local benchmarks
    decontaminate_local_benchmarks: bool = True  # check against every benchmark present under data_dir
    ngram: int = NGRAM
    threshold: float = THRESHOLD
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
        for name in self.source_splits:
            if name not in self.sources:
                raise ValueError(f"a split is given for source {name!r}, which is not among the sources "
                                 f"{list(self.sources)}")
        for name in self.generators:
            generators.get_generator(name)
        for spec in self.decontaminate:
            check_eval_set(spec)
        for name in self.sources:
            split, benchmarks = self.split_of(name), " and ".join(self.scored_by(name))
            if benchmarks and not self.allow_eval_splits:
                free = [s for s in SOURCES[name].splits if not scoring_benchmarks(name, s)]
                raise EvalSplitError(
                    f"source {name!r}, split {split!r}: evaluation benchmark {benchmarks} scores this split, so "
                    f"training on it would contaminate {benchmarks}. "
                    + (f"Read a split no benchmark scores ({', '.join(free)}: --split {name}=SPLIT), or pass "
                       if free else f"Every split of {name} is evaluation data; pass ")
                    + f"{ALLOW_FLAG} to train on it anyway.")

    def split_of(self, source: str) -> str:
        """The split read from `source`: named for it, named for all, or the source's default."""
        return self.source_splits.get(source) or self.split or SOURCES[source].default_split

    def scored_by(self, source: str) -> list[str]:
        """The benchmarks scoring the split read from `source` (empty for a training split)."""
        return scoring_benchmarks(source, self.split_of(source))


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
    eval_sets: dict[str, int] = dataclasses.field(default_factory=dict)  # checked against: questions in each
    seconds: float = 0.0  # how long the build took

    @property
    def removed(self) -> dict[str, int]:
        """Rows decontamination removed per evaluation set checked (each row counts for its best match)."""
        counts = collections.Counter(item.eval_set for item in self.dropped)
        return {name: counts[name] for name in self.eval_sets}


# ---- collection ---------------------------------------------------------------------------------------

def subsample(records: list[Record], n: int | None, seed: int) -> list[Record]:
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


def check_local_splits(config: BuildConfig) -> None:
    """Raise SourceError when a source's split is missing under `data_dir`, saying which splits are there and
    which of those evaluation scores (a split is never guessed from what is on disk)."""
    if config.data_dir is None:
        return
    scored = evaluation_splits()
    for name in config.sources:
        split, spec = config.split_of(name), SOURCES[name]
        if local_files(spec, split, config.data_dir):
            continue
        present = local_splits(spec, config.data_dir)
        evaluated = [s for s in present if s in scored.get(name, ())]
        found = ", ".join(f"{s} (an evaluation split)" if s in evaluated else s for s in present) or "nothing"
        raise SourceError(f"source {name!r}: no {split!r} split under {os.path.join(config.data_dir, spec.local_dir)}"
                          f" (found: {found}); choose one with --split {name}=SPLIT"
                          + (f"; an evaluation split also needs {ALLOW_FLAG}" if evaluated else ""))


def eval_sets_for(config: BuildConfig) -> list[str]:
    """What to decontaminate against: the benchmarks under `data_dir` (less those whose split the build
    deliberately trains on) and the sets named in `config.decontaminate`."""
    trained_on = [b for name in config.sources for b in config.scored_by(name)]
    for name in config.sources:
        for bench in config.scored_by(name):
            warnings.warn(f"training on source {name!r}, split {config.split_of(name)!r} ({ALLOW_FLAG}): benchmark "
                          f"{bench} scores it, so it is not decontaminated against and its scores no longer measure "
                          "held-out problems", EvalSplitWarning, stacklevel=2)
    local = default_eval_sets(config.data_dir, exclude=trained_on) if config.decontaminate_local_benchmarks else []
    return list(dict.fromkeys([*local, *config.decontaminate]))


@dataclasses.dataclass
class Group:
    """The records one source, file or generator contributed, and how many of its rows were bad."""

    name: str
    records: list[Record]
    bad: int = 0


def read_groups(config: BuildConfig, skips: SkipLog, quiet: bool = False) -> list[Group]:
    """Records of every configured source, input file and generator, grouped by where they came from."""
    reads: list[tuple[str, Callable[[], list[Record]], bool]] = []  # (name, read, subsampled)
    for name in config.sources:
        reads.append((name, functools.partial(load_source, name, config.split_of(name), config.data_dir,
                                              skips=skips), True))
    for path, field_map in config.inputs:
        name = os.path.splitext(os.path.basename(path))[0]
        reads.append((name, functools.partial(read_records, path, field_map, source=name, skips=skips), True))
    counts = {**split_evenly(config.synthetic_samples, list(config.generators)),
              **split_evenly(config.ta_samples, generators.generator_names(generators.TA_FAMILY))}
    reads += [(f"synthetic/{name}", functools.partial(generators.generate, name, n, config.seed), False)
              for name, n in counts.items() if n]
    groups: list[Group] = []
    for name, read, subsampled in progress_bar(reads, desc="collect", unit="source", quiet=quiet):
        start, bad_before = time.perf_counter(), skips.total
        records = read()
        chosen = subsample(records, config.samples_per_source, config.seed) if subsampled else records
        bad = skips.total - bad_before
        log.info("%s: %d records (%d bad rows skipped), kept %d (%.1fs)", name, len(records), bad, len(chosen),
                 time.perf_counter() - start)
        groups.append(Group(name, chosen, bad))
    return groups


# ---- filters ------------------------------------------------------------------------------------------

def question_key(question: str) -> str:
    """The exact-duplicate key: the question with whitespace runs collapsed."""
    return " ".join(question.split())


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

def source_table(stats: dict[str, SourceStats]) -> str:
    """The per-source summary table, with a total row."""
    columns = [f.name for f in dataclasses.fields(SourceStats)]
    total = SourceStats(**{c: sum(getattr(s, c) for s in stats.values()) for c in columns})
    return format_table([["source", *columns]] + [[name, *(str(getattr(s, c)) for c in columns)]
                                                  for name, s in [*stats.items(), ("total", total)]], total=True)


def build(config: BuildConfig, quiet: bool = False) -> BuildResult:
    """Run every stage and write `config.output`, with a progress bar per stage unless `quiet`; returns the
    counts and what decontamination dropped (`build_summary` formats them)."""
    skips = SkipLog(strict=config.strict)
    start = time.perf_counter()
    check_local_splits(config)
    eval_sets = eval_sets_for(config)
    log.info("[1/4] collecting records")
    groups = read_groups(config, skips, quiet)
    stats = {group.name: SourceStats(loaded=len(group.records), bad=group.bad) for group in groups}
    too_long = token_filter(config.tokenizer, config.max_tokens) if config.tokenizer else None
    log.info("[2/4] filtering over-length rows and exact duplicates")
    seen: set[str] = set()
    kept: list[tuple[str, Record]] = []
    with progress_bar(total=sum(len(group.records) for group in groups), desc="filter", unit="record",
                      quiet=quiet) as bar:
        for group in groups:
            name = group.name
            for record in group.records:
                bar.update()
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
    sizes: dict[str, int] = {}
    if eval_sets:
        log.info("[3/4] decontaminating against %s (%d-grams, threshold %s)", ", ".join(eval_sets), config.ngram,
                 config.threshold)
        index, sizes = build_index(eval_sets, config.ngram, config.data_dir, log.info)
        clean = []
        for name, record in progress_bar(kept, desc="decontaminate", unit="record", quiet=quiet):
            if (match := index.contaminating(record.question, config.threshold)) is not None:
                dropped.append(Dropped(record.id, name, record.question, match.eval_set, match.eval_id,
                                       round(match.overlap, 4)))
                stats[name].contaminated += 1
            else:
                clean.append((name, record))
        kept = clean
        if config.dropped_report:
            write_dropped(dropped, config.dropped_report)
            log.info("wrote the %d dropped record(s) to %s", len(dropped), config.dropped_report)
    elif not config.decontaminate_local_benchmarks:
        log.info("[3/4] decontamination: turned off")
    else:
        log.info("[3/4] decontamination: no benchmark copies under --data-dir and no --decontaminate sets: nothing "
                 "checked")
    for name, _ in kept:
        stats[name].written += 1
    log.info("[4/4] writing %s", config.output)
    written = write_records((record for _, record in progress_bar(kept, desc="write", unit="record", quiet=quiet)),
                            config.output)
    skips.warn()
    return BuildResult(written, stats, dropped, skips, sizes, round(time.perf_counter() - start, 1))


def build_summary(config: BuildConfig, result: BuildResult) -> str:
    """What a build reports: the per-source table, the rows each evaluation set removed, and where it wrote."""
    lines = [source_table(result.stats)]
    if result.eval_sets:
        lines += [f"decontamination ({config.ngram}-grams, threshold {config.threshold}), rows removed per "
                  "evaluation set:", format_removed(result.eval_sets, result.removed)]
    return "\n".join([*lines, f"wrote {result.written} records to {config.output} in {result.seconds:.1f}s"])


def write_dropped(dropped: Iterable[Dropped], path: str) -> None:
    """The decontamination report: one JSON object per dropped record."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        for item in dropped:
            handle.write(json.dumps(dataclasses.asdict(item), ensure_ascii=False) + "\n")
