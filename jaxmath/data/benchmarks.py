"""Evaluation benchmarks: which source and split each one scores on, so evaluation reads them and training refuses them.

This table is the one statement of "which splits are evaluation splits": `jaxmath.evaluation` loads the
benchmarks from it, and the dataset builder and the pair builder refuse those splits as training data
(unless asked for by name) and decontaminate against the copies present under a data directory.
"""
from __future__ import annotations

import dataclasses
import os

from jaxmath.data.readers import FieldMap
from jaxmath.data.sources import SOURCES, SourceSpec, local_files


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
