"""Read rows from JSONL / Parquet files and map them into `Record`s through a declarative field mapping.

A `FieldMap` says where a layout keeps each Record field, so a new layout loads without code
(`FieldMap.parse("question=Body+Question,answer=Answer")`). Rows that cannot become records are
handed to a `SkipLog`, which counts them per reason, or raises naming file and line when strict.
"""
from __future__ import annotations

import collections
import dataclasses
import json
import os
import warnings
from typing import Any, Callable, Iterable, Iterator, Mapping, NamedTuple

import numpy as np

from jaxmath.data.schema import BadRow, Record

Row = Mapping[str, Any]
class Located(NamedTuple):
    """A row with where it came from: `where` names it in messages, `index` is its line or row number."""

    where: str
    index: int
    row: Row


class BadRowError(ValueError):
    """Raised in strict mode for the first bad row, naming its file and line."""


class BadRowWarning(UserWarning):
    """The one summary warning a non-strict read emits when it skipped rows."""


class SkipLog:
    """Counts skipped rows per reason (remembering where each reason first occurred), or raises if strict."""

    def __init__(self, strict: bool = False):
        self.strict = strict
        self.counts: collections.Counter[str] = collections.Counter()
        self.first: dict[str, str] = {}

    def skip(self, where: str, error: BadRow) -> None:
        """Record one bad row found at `where`; in strict mode raise BadRowError instead."""
        if self.strict:
            raise BadRowError(f"{where}: {error}") from error
        self.counts[error.reason] += 1
        self.first.setdefault(error.reason, f"{where}: {error.detail}")

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def summary(self) -> str:
        """One line naming the count per reason and the first offending row of each."""
        parts = [f"{reason}: {n} (first at {self.first[reason]})" for reason, n in sorted(self.counts.items())]
        return f"skipped {self.total} bad row(s) -- " + "; ".join(parts)

    def warn(self) -> None:
        """Emit the single summary warning, if anything was skipped."""
        if self.total:
            warnings.warn(self.summary(), BadRowWarning, stacklevel=2)


def value_text(value: Any) -> str:
    """A field value as answer/question text: integral floats without `.0`, lists comma-joined, None as ''."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, (float, np.floating)):
        return str(int(value)) if float(value).is_integer() else np.format_float_positional(value, trim="-")
    if isinstance(value, (list, tuple)):
        return ", ".join(value_text(v) for v in value)
    return str(value).strip()


def check_utf8(text: str, key: str) -> str:
    """`text` if it encodes as UTF-8 (no lone surrogates); BadRow naming `key` otherwise."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        raise BadRow("invalid UTF-8", f"field {key!r} holds {err.object[err.start:err.end]!r}") from None
    return text


_FIELD_MAP_KEYS = ("question", "answer", "solution", "id", "answer_style", "metadata")


@dataclasses.dataclass(frozen=True)
class FieldMap:
    """Where one layout keeps each Record field.

    `question` keys are joined with a space (SVAMP's Body + Question). When `answer` is absent or empty
    the answer is extracted from the `solution` text with `jaxmath.verify.extract_answer(style=answer_style)`.
    """

    question: tuple[str, ...]
    answer: str | None = None
    solution: str | None = None
    id: str | None = None
    answer_style: str | None = None
    metadata: tuple[str, ...] = ()

    def __post_init__(self):
        if not self.question:
            raise ValueError("a FieldMap needs at least one question key")
        if self.answer is None and not (self.solution and self.answer_style):
            raise ValueError("a FieldMap needs an answer key, or a solution key with an answer_style")

    @classmethod
    def parse(cls, spec: str) -> "FieldMap":
        """Parse `question=Body+Question,answer=Answer,solution=sol,id=ID,answer_style=boxed,metadata=a+b`."""
        fields: dict[str, Any] = {}
        for item in filter(None, (part.strip() for part in spec.split(","))):
            key, sep, value = item.partition("=")
            key, value = key.strip(), value.strip()
            if not sep or not value:
                raise ValueError(f"field map item {item!r} is not KEY=VALUE (in {spec!r})")
            if key not in _FIELD_MAP_KEYS:
                raise ValueError(f"unknown field map key {key!r} in {spec!r}; known keys: {list(_FIELD_MAP_KEYS)}")
            multi = key in ("question", "metadata")
            fields[key] = tuple(v.strip() for v in value.split("+")) if multi else value
        if "question" not in fields:
            raise ValueError(f"field map {spec!r} names no question key")
        return cls(**fields)

    def keys(self) -> set[str]:
        """Row keys this layout needs (the answer may come from the solution instead)."""
        return set(self.question) | ({self.answer} if self.answer else {self.solution})

    def to_record(self, row: Row, *, source: str, index: int, id_prefix: str | None = None) -> Record:
        """The Record for `row` (line or row number `index` of its file); raises BadRow saying what is wrong.

        Its id is `<id_prefix or source>-<row id>`, the row's line/row number standing in when it has no id key.
        """
        for key in self.question:
            if not value_text(row.get(key)):
                raise BadRow("missing field", f"field {key!r} is missing or empty")
        question = check_utf8(" ".join(value_text(row[key]) for key in self.question), "question")
        solution = check_utf8(value_text(row.get(self.solution)), self.solution) if self.solution else ""
        answer = value_text(row.get(self.answer)) if self.answer else ""
        if not answer and self.answer_style and solution:
            from jaxmath.verify import extract_answer

            answer = extract_answer(solution, style=self.answer_style) or ""
            if not answer:
                raise BadRow("no answer", f"no {self.answer_style!r}-style answer in field {self.solution!r}")
        if not answer:
            raise BadRow("missing field", f"field {self.answer or self.solution!r} is missing or empty")
        row_id = value_text(row.get(self.id)) if self.id else ""
        return Record(
            id=f"{id_prefix or source}-{row_id or index}",
            question=question,
            answer=check_utf8(answer, self.answer or "answer"),
            solution=solution or None,
            source=source,
            metadata={key: row[key] for key in self.metadata if row.get(key) is not None},
        )


def pick_layout(row: Row, layouts: tuple[FieldMap, ...]) -> FieldMap:
    """The first layout whose keys the row has (else the first, so its error names the missing field)."""
    return next((layout for layout in layouts if layout.keys() <= row.keys()), layouts[0])


def map_rows(rows: Iterable[Located], layouts: FieldMap | tuple[FieldMap, ...], source: str, skips: SkipLog, *,
             prepare: Callable[[Row], Row] | None = None, id_prefix: str | None = None) -> Iterator[Record]:
    """Records from located rows (each first passed through `prepare`) via the matching layout; bad rows go to `skips`."""
    layouts = (layouts,) if isinstance(layouts, FieldMap) else layouts
    for where, index, row in rows:
        try:
            row = prepare(row) if prepare else row
            yield pick_layout(row, layouts).to_record(row, source=source, index=index, id_prefix=id_prefix)
        except BadRow as err:
            skips.skip(where, err)


def record_rows(rows: Iterable[Located], skips: SkipLog) -> Iterator[Record]:
    """Records from rows already in the Record schema (files this package wrote)."""
    for where, _, row in rows:
        try:
            for key in ("id", "question", "answer"):
                if not value_text(row.get(key)):
                    raise BadRow("missing field", f"field {key!r} is missing or empty")
            try:
                record = Record.from_dict(row)
            except (TypeError, ValueError) as err:
                raise BadRow("bad record", str(err)) from None
            for key in ("question", "answer", "solution"):
                check_utf8(getattr(record, key) or "", key)
            yield record
        except BadRow as err:
            skips.skip(where, err)


def jsonl_rows(path: str | os.PathLike, skips: SkipLog) -> Iterator[Located]:
    """Each JSON object of a JSONL file with its `path:line`; undecodable lines go to `skips`."""
    path = os.fspath(path)
    with open(path, "rb") as handle:
        for lineno, raw in enumerate(handle, start=1):
            where = f"{path}:{lineno}"
            if not raw.strip():
                continue
            try:
                row = json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError as err:
                skips.skip(where, BadRow("invalid UTF-8", f"byte {raw[err.start:err.end]!r} at column {err.start}"))
                continue
            except json.JSONDecodeError as err:
                skips.skip(where, BadRow("invalid JSON", err.msg))
                continue
            if not isinstance(row, dict):
                skips.skip(where, BadRow("not an object", f"line holds a JSON {type(row).__name__}"))
                continue
            yield Located(where, lineno, row)


def dataset_rows(dataset: Iterable[Row], name: str) -> Iterator[Located]:
    """Rows of a `datasets.Dataset` located as `name row N` (1-based)."""
    for index, row in enumerate(dataset, start=1):
        yield Located(f"{name} row {index}", index, row)


def parquet_rows(path: str | os.PathLike) -> Iterator[Located]:
    """Rows of a Parquet file, read through `datasets`, located as `path row N`."""
    import datasets

    dataset = datasets.load_dataset("parquet", data_files=os.fspath(path), split="train")
    return dataset_rows(dataset, os.fspath(path))


def file_rows(path: str | os.PathLike, skips: SkipLog) -> Iterator[Located]:
    """Rows of a `.jsonl`/`.json` (one object a line) or `.parquet` file."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"data file {path!r} does not exist")
    if path.endswith((".jsonl", ".json")):
        return jsonl_rows(path, skips)
    if path.endswith(".parquet"):
        return parquet_rows(path)
    raise ValueError(f"cannot read {path!r}: expected a .jsonl, .json or .parquet file")


def read_records(path: str | os.PathLike, field_map: FieldMap | None = None, *, source: str | None = None,
                 skips: SkipLog | None = None) -> list[Record]:
    """All records of a file: rows in the Record schema when `field_map` is None, else mapped through it.

    Without a `skips` log, bad rows are skipped with one summary warning at the end.
    """
    log = skips if skips is not None else SkipLog()
    rows = file_rows(path, log)
    if field_map is None:
        records = list(record_rows(rows, log))
    else:
        name = source or os.path.splitext(os.path.basename(os.fspath(path)))[0]
        records = list(map_rows(rows, field_map, name, log))
    if skips is None:
        log.warn()
    return records


def write_records(records: Iterable[Record | Mapping[str, Any]], path: str | os.PathLike) -> int:
    """Write records (or plain rows) as JSONL atomically (temporary file, then rename); returns how many."""
    return write_jsonl((r.to_dict() if isinstance(r, Record) else dict(r) for r in records), path)


def write_jsonl(rows: Iterable[Row], path: str | os.PathLike) -> int:
    """Write JSON objects one a line, atomically (temporary file, then rename); returns how many were written."""
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    count = 0
    try:
        with open(tmp, "w", encoding="utf-8") as handle:
            for row in rows:
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")
                count += 1
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return count
