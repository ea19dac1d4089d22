"""Evaluation benchmarks: which source and split each one scores on, so evaluation reads them and training refuses them.

This table is the one statement of "which splits are evaluation splits": `load_benchmark` reads a benchmark's
problems from it (for `jaxmath.evaluation` and the pair builder), and the dataset builder and the pair builder
refuse those splits as training data (unless asked for by name) and decontaminate against the copies present
under a data directory.
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Iterator

from jaxmath.data.readers import FieldMap, SkipLog, dataset_rows, file_rows, map_rows
from jaxmath.data.schema import Record
from jaxmath.data.sources import SOURCES, SourceError, SourceSpec, local_files


ALLOW_FLAG = "--allow-eval-splits"  # the command-line opt-in to training on an evaluation split


class EvalSplitError(ValueError):
    """Training data would come from a split that an evaluation benchmark scores, and nobody asked for it."""


@dataclasses.dataclass(frozen=True)
class Benchmark:
    """An evaluation set: the source that reads it, the split used locally and on the Hub, and any other
    splits of that source whose problems the benchmark also scores (they are evaluation data too)."""

    name: str
    source: SourceSpec
    local_split: str = "test"
    hub_split: str = "test"
    also_scores: tuple[str, ...] = ()

    @property
    def scored_splits(self) -> tuple[str, ...]:
        """Every split of `source` that holds problems this benchmark scores."""
        return tuple(dict.fromkeys((self.local_split, self.hub_split, *self.also_scores)))

    def split(self, local: bool) -> str:
        """The split evaluation reads: from a local data directory, or from the Hub."""
        return self.local_split if local else self.hub_split


def _extra_source(name: str, hub_id: str, hub_split: str, rows: int, layouts: tuple[FieldMap, ...],
                  description: str) -> SourceSpec:
    """A source jaxmath.data.sources does not list (evaluation-only sets)."""
    return SourceSpec(name=name, hub_id=hub_id, hub_config=None, local_dir=name, splits={hub_split: rows},
                      default_split=hub_split, license="see the dataset card", description=description,
                      layouts=layouts)


BENCHMARKS: dict[str, Benchmark] = {b.name: b for b in (
    Benchmark("gsm8k", SOURCES["gsm8k"]),
    Benchmark("math500", SOURCES["math500"]),
    # The local svamp/test.jsonl holds all 1000 SVAMP problems (chal-1 .. chal-1000): the Hub's 700-row train
    # split and 300-row test split together.
    Benchmark("svamp", SOURCES["svamp"], also_scores=("train",)),
    Benchmark("asdiv", SOURCES["asdiv"], hub_split="validation"),
    Benchmark("aqua", SOURCES["aqua_rat"]),
    Benchmark("mawps", SOURCES["mawps"]),
    Benchmark("minerva_math", _extra_source(
        "minerva_math", "math-ai/minervamath", "test", 272,
        (FieldMap(question=("problem",), solution="solution", answer_style="boxed", id="idx"),
         FieldMap(question=("question",), answer="answer")),
        "Minerva OCW STEM problems; the answer is the solution's \\boxed{}")),
    Benchmark("aime24", _extra_source(
        "aime24", "HuggingFaceH4/aime_2024", "train", 30,
        (FieldMap(question=("problem",), answer="answer", solution="solution", id="id"),),
        "AIME 2024 I and II"), hub_split="train"),
    Benchmark("amc23", _extra_source(
        "amc23", "math-ai/amc23", "test", 40,
        (FieldMap(question=("problem",), answer="answer", id="id"),
         FieldMap(question=("question",), answer="answer", id="id")),
        "AMC 2023")),
)}


def scoring_benchmarks(source: str, split: str) -> list[str]:
    """The benchmarks that score problems of `split` of the source named `source` (empty: a training split)."""
    return [b.name for b in BENCHMARKS.values() if b.source.name == source and split in b.scored_splits]


def evaluation_splits() -> dict[str, list[str]]:
    """Source name -> its splits that some benchmark scores, for listings and error messages."""
    out: dict[str, list[str]] = {}
    for bench in BENCHMARKS.values():
        out.setdefault(bench.source.name, [])
        out[bench.source.name] += [s for s in bench.scored_splits if s not in out[bench.source.name]]
    return out


def local_benchmarks(data_dir: str | os.PathLike) -> list[str]:
    """The benchmarks whose evaluation split is present under `data_dir` (in BENCHMARKS order)."""
    return [b.name for b in BENCHMARKS.values() if local_files(b.source, b.local_split, data_dir)]


def _listing(path: Path) -> str:
    entries = sorted(p.name for p in path.iterdir()) if path.is_dir() else []
    return ", ".join(entries) if entries else "nothing"


def load_benchmark(name: str, data_dir: str | os.PathLike | None = None, limit: int | None = None) -> list[Record]:
    """The problems of benchmark `name`: from `data_dir/<name>/` when given, else from the Hub."""
    if name not in BENCHMARKS:
        raise SourceError(f"unknown benchmark {name!r}; known benchmarks: {', '.join(BENCHMARKS)}")
    bench = BENCHMARKS[name]
    skips = SkipLog()
    if data_dir is None:
        import datasets

        try:
            dataset = datasets.load_dataset(bench.source.hub_id, bench.source.hub_config, split=bench.hub_split)
        except Exception as err:  # offline, missing dataset or split: one clear message
            raise SourceError(f"{name}: cannot load {bench.source.hub_id} [{bench.hub_split}] from the Hub "
                              f"({err}); pass --data-dir with a local copy") from err
        rows: Iterator = dataset_rows(dataset, f"{bench.source.hub_id}[{bench.hub_split}]")
    else:
        root = Path(data_dir)
        if not root.is_dir():
            raise SourceError(f"data directory {root} does not exist; {root.parent} holds: {_listing(root.parent)}")
        paths = local_files(bench.source, bench.local_split, root)
        if not paths:
            folder = root / bench.source.local_dir
            where = (f"{folder} holds: {_listing(folder)}" if folder.is_dir()
                     else f"{root} holds: {_listing(root)}")
            raise SourceError(f"{name}: no {bench.local_split}.jsonl or .parquet under {folder}; {where}")
        rows = (row for path in paths for row in file_rows(path, skips))
    records = list(map_rows(rows, bench.source.layouts, name, skips, prepare=bench.source.prepare))
    skips.warn()
    if not records:
        raise SourceError(f"{name}: no usable problems ({skips.summary() or 'the source is empty'})")
    return records[:limit] if limit else records
