"""The plain-text summary tables the data commands print."""
from __future__ import annotations

from typing import Sequence


def total_table(rows: Sequence[Sequence[str]]) -> str:
    """A header row, body rows and a final total row as aligned text: names left, figures right, rules around
    the body."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths)))
             for row in rows]
    rule = "-" * len(lines[0])
    return "\n".join([lines[0], rule, *lines[1:-1], rule, lines[-1]])
