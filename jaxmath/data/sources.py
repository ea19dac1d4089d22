"""Named public math datasets: where each lives (Hub id, local folder), its layouts and answer extraction.

`load_source(name, split, data_dir=None)` reads from the Hugging Face Hub through
`datasets.load_dataset`, or, when `data_dir` is given, from `data_dir/<folder>/<split>.jsonl|.parquet`
(the public releases' layouts, as in `../shared/data`). Both paths run the same field mapping.
"""
from __future__ import annotations

import dataclasses
import glob
import os
import re
from typing import Callable, Iterator

from jaxmath.data.readers import FieldMap, Located, Row, SkipLog, dataset_rows, file_rows, map_rows
from jaxmath.data.schema import BadRow, Record


class SourceError(RuntimeError):
    """A named source cannot be loaded (unknown name, missing split or file, Hub unreachable)."""


@dataclasses.dataclass(frozen=True)
class SourceSpec:
    """One named dataset: its Hub copy, its local folder, its layouts and what is known of its size and licence."""

    name: str
    hub_id: str
    hub_config: str | None
    local_dir: str
    splits: dict[str, int | None]  # Hub split -> rows (None: size not published on the dataset card)
    default_split: str
    license: str
    description: str
    layouts: tuple[FieldMap, ...]
    prepare: Callable[[Row], Row] | None = None


_CHOICE = re.compile(r"^\s*\(?([A-Ea-e])\s*\)\s*(.*)$", re.DOTALL)
_UNIT = re.compile(r"^(.*?)\s*\(([^()]*)\)\s*$")


def aqua_question(row: Row) -> Row:
    """AQuA-RAT: append the options to the question as `Answer Choices: (A) ... (B) ...`."""
    options = row.get("options")
    if not isinstance(options, (list, tuple)) or not options:
        raise BadRow("missing field", "field 'options' is missing or not a list")
    choices = []
    for option in options:
        match = _CHOICE.match(str(option))
        if not match:
            raise BadRow("bad options", f"option {option!r} does not start with a letter A-E")
        choices.append(f"({match.group(1).upper()}) {match.group(2).strip()}")
    return {**row, "question": f"{row.get('question') or ''}\nAnswer Choices: {' '.join(choices)}".strip()}


def asdiv_unit(row: Row) -> Row:
    """ASDiv: split a unit off the answer (`9 (apples)` -> answer `9`, unit `apples`)."""
    match = _UNIT.match(str(row.get("answer") or ""))
    if not match or not match.group(1):
        return row
    return {**row, "answer": match.group(1), "unit": match.group(2)}


_MATH_LAYOUT = FieldMap(question=("problem",), answer="answer", solution="solution", id="unique_id",
                        answer_style="boxed", metadata=("level", "type", "subject"))

SOURCES: dict[str, SourceSpec] = {spec.name: spec for spec in (
    SourceSpec(
        name="gsm8k", hub_id="openai/gsm8k", hub_config="main", local_dir="gsm8k",
        splits={"train": 7473, "test": 1319}, default_split="train", license="MIT",
        description="grade-school word problems; solutions end in '#### <number>'",
        layouts=(FieldMap(question=("question",), solution="answer", answer_style="gsm8k"),),
    ),
    SourceSpec(
        name="math", hub_id="DigitalLearningGmbH/MATH-lighteval", hub_config="default", local_dir="math",
        splits={"train": 7500, "test": 5000}, default_split="train", license="MIT",
        description="competition MATH (Hendrycks et al.); answers taken from the solution's \\boxed{}",
        layouts=(_MATH_LAYOUT,),
    ),
    SourceSpec(
        name="math500", hub_id="HuggingFaceH4/MATH-500", hub_config=None, local_dir="math500",
        splits={"test": 500}, default_split="test", license="MIT",
        description="MATH-500, the 500-problem MATH test subset (evaluation)",
        layouts=(_MATH_LAYOUT,),
    ),
    SourceSpec(
        name="svamp", hub_id="ChilleD/SVAMP", hub_config=None, local_dir="svamp",
        splits={"train": 700, "test": 300}, default_split="train", license="MIT",
        description="SVAMP arithmetic word problems; question = Body + Question",
        layouts=(FieldMap(question=("Body", "Question"), answer="Answer", id="ID", metadata=("Equation", "Type")),),
    ),
    SourceSpec(
        name="asdiv", hub_id="EleutherAI/asdiv", hub_config=None, local_dir="asdiv",
        splits={"validation": 2305}, default_split="validation", license="CC BY-NC 4.0",
        description="ASDiv word problems; the unit is split off the answer into metadata",
        layouts=(FieldMap(question=("body", "question"), answer="answer", id="idx",
                          metadata=("unit", "formula", "solution_type")),),
        prepare=asdiv_unit,
    ),
    SourceSpec(
        name="aqua_rat", hub_id="deepmind/aqua_rat", hub_config="raw", local_dir="aqua",
        splits={"train": 97467, "validation": 254, "test": 254}, default_split="train", license="Apache-2.0",
        description="AQuA-RAT multiple choice (A-E) with rationales; the answer is the letter",
        layouts=(FieldMap(question=("question",), answer="correct", solution="rationale", metadata=("options",)),),
        prepare=aqua_question,
    ),
    SourceSpec(
        name="mawps", hub_id="MU-NLPC/Calc-mawps", hub_config="default", local_dir="mawps",
        splits={"train": None, "validation": None, "test": None}, default_split="train", license="MIT",
        description="MAWPS word problems (1K-10K rows on the Hub; local files use input/target)",
        layouts=(FieldMap(question=("input",), answer="target", id="idx", metadata=("type",)),
                 FieldMap(question=("question",), answer="result", id="id", metadata=("equation",))),
    ),
    SourceSpec(
        name="big_math", hub_id="SynthLabsAI/Big-Math-RL-Verified", hub_config=None, local_dir="big_math",
        splits={"train": 251122}, default_split="train", license="Apache-2.0",
        description="Big-Math: RL problems with closed-form verifiable answers",
        layouts=(FieldMap(question=("problem",), answer="answer",
                          metadata=("source", "domain", "llama8b_solve_rate")),),
    ),
)}


def get_source(name: str) -> SourceSpec:
    """The source called `name`; raises SourceError listing the known names."""
    try:
        return SOURCES[name]
    except KeyError:
        raise SourceError(f"unknown source {name!r}; known sources: {sorted(SOURCES)}") from None


def local_files(spec: SourceSpec, split: str, data_dir: str | os.PathLike) -> list[str]:
    """The files holding `split` of `spec` under `data_dir` (`<split>.jsonl`, `.parquet` or Parquet shards)."""
    folder = os.path.join(os.fspath(data_dir), spec.local_dir)
    candidates = [os.path.join(folder, f"{split}.jsonl"), os.path.join(folder, f"{split}.parquet")]
    found = [path for path in candidates if os.path.isfile(path)]
    return found[:1] or sorted(glob.glob(os.path.join(folder, f"{split}-*.parquet")))


def local_splits(spec: SourceSpec, data_dir: str | os.PathLike) -> list[str]:
    """The split names present for `spec` under `data_dir`."""
    folder = os.path.join(os.fspath(data_dir), spec.local_dir)
    names = {re.sub(r"-\d+-of-\d+$", "", os.path.splitext(f)[0]) for f in os.listdir(folder)
             if f.endswith((".jsonl", ".parquet"))} if os.path.isdir(folder) else set()
    return sorted(names)


def _local_rows(spec: SourceSpec, split: str, data_dir: str | os.PathLike, skips: SkipLog) -> Iterator[Located]:
    paths = local_files(spec, split, data_dir)
    if not paths:
        raise SourceError(f"{spec.name}: no {split!r} split under {os.path.join(os.fspath(data_dir), spec.local_dir)}"
                          f" (found splits: {local_splits(spec, data_dir) or 'none'})")
    for path in paths:
        yield from file_rows(path, skips)


def _hub_rows(spec: SourceSpec, split: str) -> Iterator[Located]:
    import datasets

    try:
        dataset = datasets.load_dataset(spec.hub_id, spec.hub_config, split=split)
    except Exception as err:  # network, auth and missing-split errors all surface as one clear message
        raise SourceError(f"{spec.name}: cannot load {spec.hub_id} split {split!r} from the Hub ({err}); "
                          f"pass a local data directory instead") from err
    return dataset_rows(dataset, f"{spec.hub_id}[{split}]")


def load_source(name: str, split: str | None = None, data_dir: str | os.PathLike | None = None,
                skips: SkipLog | None = None) -> list[Record]:
    """All records of one split of a named source, from the Hub or from `data_dir` when given.

    Bad rows are skipped and counted in `skips` (one summary warning at the end when none is given).
    """
    spec = get_source(name)
    log = skips if skips is not None else SkipLog()
    records = source_records(spec, split or spec.default_split, data_dir, log)
    if skips is None:
        log.warn()
    return records


def source_records(spec: SourceSpec, split: str, data_dir: str | os.PathLike | None, skips: SkipLog) -> list[Record]:
    """All records of `split` of `spec` (the Hub, or `data_dir` when given); bad rows go to `skips`."""
    rows = _local_rows(spec, split, data_dir, skips) if data_dir is not None else _hub_rows(spec, split)
    return list(map_rows(rows, spec.layouts, spec.name, skips, prepare=spec.prepare, id_prefix=f"{spec.name}-{split}"))


def describe_sources() -> str:
    """A table of the named sources: Hub id, splits with sizes, licence and what each holds."""
    header = ("name", "hub id", "splits (rows)", "licence", "local folder", "what")
    rows = [header]
    for spec in SOURCES.values():
        sizes = ", ".join(f"{split} {'?' if n is None else f'{n:,}'}" for split, n in spec.splits.items())
        rows.append((spec.name, spec.hub_id + (f" ({spec.hub_config})" if spec.hub_config else ""), sizes,
                     spec.license, spec.local_dir + "/", spec.description))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header) - 1)]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)) + "  " + row[-1] for row in rows)
