r"""Meaning-preserving rewritings of a reference answer, for round-trip checks of the verifier.

Each variant writes the same answer another way LaTeX allows (thousands separators added or removed,
`\dfrac` for `\frac`, a `\text{}` unit appended to a bare number, spacing, scientific notation, currency
and degree signs on a bare number); the verifier must judge every variant equal to the original, both
ways. Used by bench/verify.py on MATH-500 and minerva_math and by the verifier's tests on a fixture.
"""
from __future__ import annotations

import re
from typing import Callable

# An integer part of 4+ digits: not after a decimal point, a digit, `^`/`_` (an unbraced `2^1234` is
# 2^1 * 234) or a letter (`x1234`), not before a base subscript (`1011_2`).
_LONG_INTEGER = re.compile(r"(?<![\d.^_a-zA-Z])\d{4,}(?![\d_])")
_SEPARATED = re.compile(r"(?<=\d)(?:,\\!|\{,\}|\\,)(?=\d{3})")
_FRAC = re.compile(r"\\frac(?![a-zA-Z])")
_FRAC_ALIAS = re.compile(r"\\[dt]frac(?![a-zA-Z])")
_BARE_NUMBER = re.compile(r"-?(?:\d+(?:\.\d+)?|\.\d+)(?:e[-+]?\d+)?|-?\\frac\{\d+\}\{\d+\}")
_BARE_DECIMAL = re.compile(r"\d+(?:\.\d+)?")
_E_NOTATION = re.compile(r"^(-?\d+(?:\.\d+)?)e([-+]?\d+)$")
_TIMES_TEN = re.compile(r"^(-?\d+(?:\.\d+)?)\s*\\(?:times|cdot)\s*10\^\{?(-?\d+)\}?$")
_COMMA = re.compile(r",(?!\d{3}(?!\d))(?!\\!)\s*")  # an item separator, not a thousands one
_SPACE = re.compile(r"(?<![a-zA-Z])\s+|\s+(?![a-zA-Z])")  # spaces not between two letters


def _group(digits: str, separator: str) -> str:
    head = len(digits) % 3 or 3
    return separator.join([digits[:head]] + [digits[k:k + 3] for k in range(head, len(digits), 3)])


def _with_separator(separator: str) -> Callable[[str], str]:
    return lambda s: _LONG_INTEGER.sub(lambda m: _group(m.group(), separator), s)


def _plain_commas(s: str) -> str:
    """Thousands as `1,234` only where no bracket or list makes a plain comma an item separator."""
    return s if re.search(r"[,(\[{]", s) else _with_separator(",")(s)


def _scientific(s: str) -> str:
    if m := _E_NOTATION.match(s):
        return f"{m.group(1)}\\times10^{{{m.group(2)}}}"
    if m := _TIMES_TEN.match(s):
        return f"{m.group(1)}e{m.group(2)}"
    return s


def _scientific_cdot(s: str) -> str:
    m = _E_NOTATION.match(s)
    return f"{m.group(1)} \\cdot 10^{{{m.group(2)}}}" if m else s


def _if_bare(fn: Callable[[str], str], pattern: re.Pattern = _BARE_NUMBER) -> Callable[[str], str]:
    return lambda s: fn(s) if pattern.fullmatch(s) else s


REWRITES: dict[str, Callable[[str], str]] = {
    "thousands ,\\!": _with_separator(",\\!"),
    "thousands {,}": _with_separator("{,}"),
    "thousands \\,": _with_separator("\\,"),
    "thousands ,": _plain_commas,
    "separators removed": lambda s: _SEPARATED.sub("", s),
    "\\dfrac": lambda s: _FRAC.sub(r"\\dfrac", s),
    "\\tfrac": lambda s: _FRAC.sub(r"\\tfrac", s),
    "\\frac": lambda s: _FRAC_ALIAS.sub(r"\\frac", s),
    "unit \\text{ cm}": _if_bare(lambda s: s + "\\text{ cm}"),
    "unit \\mbox{ m}^2": _if_bare(lambda s: s + " \\mbox{ m}^2"),
    "spaces removed": lambda s: _SPACE.sub("", s),
    "spaces added": lambda s: _COMMA.sub(", ", s).replace("=", " = "),
    "scientific": _scientific,
    "scientific \\cdot": _scientific_cdot,
    "dollars": _if_bare(lambda s: "\\$" + s, _BARE_DECIMAL),
    "degrees": _if_bare(lambda s: s + "^{\\circ}", _BARE_DECIMAL),
    "percent": _if_bare(lambda s: s + "\\%", _BARE_DECIMAL),
}


def variants(answer: str) -> dict[str, str]:
    """Each named rewriting of `answer` that changes its text (the others are left out)."""
    out = {}
    for name, rewrite in REWRITES.items():
        rewritten = rewrite(answer)
        if rewritten != answer:
            out[name] = rewritten
    return out
