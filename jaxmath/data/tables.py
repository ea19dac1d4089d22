"""The plain-text tables the commands print (data build summaries, decontamination, evaluation results)."""
from __future__ import annotations

from typing import Sequence


def format_table(rows: Sequence[Sequence[str]], total: bool = False) -> str:
    """A header row and body rows as aligned text: names left, figures right, a rule under the header; with
    `total`, the last row is a total set off by a rule above it."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths)))
             for row in rows]
    rule = "-" * len(lines[0])
    if total:
        return "\n".join([lines[0], rule, *lines[1:-1], rule, lines[-1]])
    return "\n".join([lines[0], rule, *lines[1:]])
