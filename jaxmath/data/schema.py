"""The one record schema every data source is mapped into, and the error a row that cannot be one raises."""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

REQUIRED_FIELDS = ("id", "question", "answer")


class BadRow(ValueError):
    """A row that cannot become an example; `reason` is the category counted in skip reports."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclasses.dataclass(frozen=True)
class Record:
    """One math problem: a question, its final reference answer and optionally a worked solution."""

    id: str
    question: str
    answer: str
    solution: str | None = None
    source: str = ""
    metadata: dict[str, Any] = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, row: Mapping[str, Any]) -> "Record":
        """Build a record from a mapping with the schema's field names; raises naming a missing field."""
        missing = [f for f in REQUIRED_FIELDS if row.get(f) in (None, "")]
        if missing:
            raise ValueError(f"record is missing required field(s) {missing}: {dict(row)!r:.200}")
        return cls(
            id=str(row["id"]),
            question=str(row["question"]),
            answer=str(row["answer"]),
            solution=None if row.get("solution") in (None, "") else str(row["solution"]),
            source=str(row.get("source") or ""),
            metadata=dict(row.get("metadata") or {}),
        )
