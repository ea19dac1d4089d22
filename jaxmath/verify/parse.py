"""Typed parse of a normalised answer: integer, rational, decimal, expression, interval, set, tuple,
matrix, equation, inequality, text, letter or number in a base.

LaTeX goes through `latex2sympy2_extended` (the ANTLR parser math-verify uses; sympy's own
`parse_latex` needs an exact antlr4 4.11 runtime or the absent `lark`). Lists, brackets and plain
numbers are read here first, so element order and multiplicity survive and numbers skip the parser.
"""
from __future__ import annotations

import dataclasses
import enum
import re
from typing import Any

import sympy
from latex2sympy2_extended.latex2sympy2 import latex2sympy

from jaxmath.verify.limits import MAX_DIGITS, TooLarge, check_magnitude, check_text
from jaxmath.verify.normalize import normalize


class Kind(enum.Enum):
    """The typed forms an answer can take."""

    INTEGER = "integer"
    RATIONAL = "rational"
    DECIMAL = "decimal"
    EXPRESSION = "expression"
    INTERVAL = "interval"
    SET = "set"
    TUPLE = "tuple"
    MATRIX = "matrix"
    EQUATION = "equation"
    INEQUALITY = "inequality"
    TEXT = "text"
    LETTER = "letter"
    BASED = "based"


NUMERIC_KINDS = (Kind.INTEGER, Kind.RATIONAL, Kind.DECIMAL, Kind.EXPRESSION)


@dataclasses.dataclass(frozen=True)
class Answer:
    """One parsed answer. `value` by kind: sympy number/expression (numbers, EXPRESSION), sympy Set
    (INTERVAL), tuple[Answer, ...] (SET, TUPLE), sympy Matrix, (lhs, rhs) (EQUATION), sympy Set of the
    solutions (INEQUALITY), str (TEXT, LETTER), (int value, base) (BASED). `places`: decimals written."""

    kind: Kind
    value: Any
    source: str
    places: int | None = None


class Unparsable(ValueError):
    """The answer cannot be read as any typed form; the message says why."""


_LETTER = re.compile(r"^\(?([A-E])\)?$")
_BASED = re.compile(r"^([0-9A-Z]+)_\{?(\d{1,2})\}?$")
_INTEGER = re.compile(r"^[+-]?\d+$")
_DECIMAL = re.compile(r"^[+-]?\d*\.(\d+)$")
# `1.5\times 10^{3}` (what `1.5e3` normalises to): read exactly, as the value the digits write.
_SCIENTIFIC = re.compile(r"^([+-]?(?:\d+(?:\.\d*)?|\.\d+))\s*\\(?:times|cdot)\s*10\s*"
                         r"\^\s*(?:\{\s*([+-]?\d+)\s*\}|(\d))$")
_FRACTION = re.compile(r"^([+-]?)(?:(\d+)\s*/\s*(\d+)|\\frac\{(\d+)\}\{(\d+)\})$")
_TEXT = re.compile(r"^[A-Za-z][A-Za-z .,'-]*$")
_WORD = re.compile(r"[A-Za-z]{3,}")
_RELATION = re.compile(r"\\le\b|\\ge\b|\\ne\b|<|>")
_RELATION_SPLIT = re.compile(r"(\\le\b|\\ge\b|<|>)")
_VARIABLE = re.compile(r"^[a-zA-Z]$")
_MEMBERSHIP = re.compile(r"^[a-zA-Z]\s*\\in(?![a-zA-Z])\s*")  # `x \in [-2, 7]` answers with the set
_INFINITY = re.compile(r"\\infty|\\infin\b|\boo\b")
_OPEN = {"(": ")", "[": "]", "\\{": "\\}"}
_IMAGINARY = sympy.Symbol("i")


def _tokens(s: str) -> list[str]:
    """Characters of `s` with `\\{` and `\\}` kept as single bracket tokens."""
    return re.findall(r"\\[{}]|\\[A-Za-z]+|.", s, re.DOTALL)


def split_top_level(s: str, sep: str = ",") -> list[str]:
    """Split `s` at separators outside all brackets; raises Unparsable on unbalanced brackets."""
    parts, depth, current = [], 0, []
    for tok in _tokens(s):
        if tok in ("(", "[", "{", "\\{"):
            depth += 1
        elif tok in (")", "]", "}", "\\}"):
            depth -= 1
            if depth < 0:
                raise Unparsable(f"unbalanced brackets in {s!r}")
        if tok == sep and depth == 0:
            parts.append("".join(current).strip())
            current = []
        else:
            current.append(tok)
    if depth != 0:
        raise Unparsable(f"unbalanced brackets in {s!r}")
    parts.append("".join(current).strip())
    return parts


def _enclosing(s: str) -> tuple[str, str, str] | None:
    """(open, inner, close) when one bracket pair encloses all of `s` (closing may differ: `[0, 1)`)."""
    toks = _tokens(s)
    if len(toks) < 2 or toks[0] not in _OPEN or toks[-1] not in (")", "]", "\\}"):
        return None
    depth = 0
    for k, tok in enumerate(toks):
        if tok in ("(", "[", "{", "\\{"):
            depth += 1
        elif tok in (")", "]", "}", "\\}"):
            depth -= 1
            if depth == 0 and k != len(toks) - 1:
                return None
    return toks[0], "".join(toks[1:-1]), toks[-1]


def _latex(s: str) -> Any:
    """latex2sympy, with its parse errors turned into Unparsable."""
    try:
        return latex2sympy(s, normalization_config=None)
    except Exception as err:  # the ANTLR parser raises bare Exceptions and assorted sympy errors
        detail = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise Unparsable(f"cannot parse {s!r}: {detail}") from None


def _evaluate(expr: sympy.Basic) -> sympy.Basic:
    """Bound, then evaluate, an unevaluated parse tree (`i` read as the imaginary unit)."""
    check_magnitude(expr)
    if _IMAGINARY in expr.free_symbols:
        expr = expr.subs(_IMAGINARY, sympy.I)
    return expr.doit()


def _number_kind(value: sympy.Basic, source: str) -> Answer:
    if isinstance(value, sympy.Integer):
        return Answer(Kind.INTEGER, value, source)
    if isinstance(value, sympy.Rational):
        return Answer(Kind.RATIONAL, value, source)
    return Answer(Kind.EXPRESSION, value, source)


def _from_sympy(obj: Any, source: str) -> Answer:
    """Typed form of a latex2sympy result."""
    if isinstance(obj, sympy.MatrixBase):
        return Answer(Kind.MATRIX, sympy.Matrix(obj.shape[0], obj.shape[1], [_evaluate(e) for e in obj]), source)
    if isinstance(obj, sympy.Tuple):
        return Answer(Kind.TUPLE, tuple(_from_sympy(e, str(e)) for e in obj.args), source)
    if isinstance(obj, sympy.FiniteSet):
        return Answer(Kind.SET, tuple(_from_sympy(e, str(e)) for e in obj.args), source)
    if isinstance(obj, (sympy.Interval, sympy.Union, sympy.Intersection, sympy.Complement)):
        return Answer(Kind.INTERVAL, _evaluate(obj), source)
    if obj is sympy.S.EmptySet:
        return Answer(Kind.SET, (), source)
    if isinstance(obj, sympy.Eq):
        return Answer(Kind.EQUATION, (_evaluate(obj.lhs), _evaluate(obj.rhs)), source)
    if isinstance(obj, (sympy.core.relational.Relational, sympy.And, sympy.Or)):
        return Answer(Kind.INEQUALITY, _inequality_set(obj, source), source)
    if isinstance(obj, sympy.Basic):
        return _number_kind(_evaluate(obj), source)
    raise Unparsable(f"{source!r} parses to an unsupported {type(obj).__name__}")


def _inequality_set(rel: sympy.Basic, source: str) -> sympy.Set:
    """The real solution set of a one-variable inequality (`x > 3` -> (3, oo))."""
    check_magnitude(rel)
    symbols = rel.free_symbols
    if len(symbols) != 1:
        raise Unparsable(f"inequality {source!r} must have exactly one variable")
    try:
        return rel.as_set()
    except Exception as err:  # sympy raises NotImplementedError and others for unsolvable relations
        raise Unparsable(f"cannot solve inequality {source!r}: {type(err).__name__}") from None


def _interval(ends: tuple[Answer, ...], brackets: str, source: str) -> sympy.Set:
    """The interval with these two numeric ends; a bracket `(`/`)` or an infinite end leaves it open."""
    if any(e.kind not in NUMERIC_KINDS or e.value.free_symbols for e in ends):
        raise Unparsable(f"interval {source!r} needs numeric ends")
    lo, hi = (e.value for e in ends)
    return sympy.Interval(lo, hi, left_open=brackets[0] == "(", right_open=brackets[1] == ")")


def _as_real_set(piece: Answer, source: str) -> sympy.Set:
    """A piece of a union as a set: an interval, a 2-tuple read as an open interval, or a set of numbers."""
    if piece.kind in (Kind.INTERVAL, Kind.INEQUALITY):
        return piece.value
    if piece.kind is Kind.TUPLE and len(piece.value) == 2:
        return _interval(piece.value, "()", source)
    if piece.kind is Kind.SET and all(e.kind in NUMERIC_KINDS for e in piece.value):
        return sympy.FiniteSet(*(e.value for e in piece.value))
    raise Unparsable(f"{piece.source!r} in {source!r} is not an interval or a set of numbers")


def _bound(op: str, var_left: bool, value: sympy.Basic) -> sympy.Set:
    """The set of x with `x op value` (var_left) or `value op x`."""
    strict = op in ("<", ">")
    below = (op in ("<", "\\le")) == var_left
    if below:
        return sympy.Interval(-sympy.oo, value, right_open=strict)
    return sympy.Interval(value, sympy.oo, left_open=strict)


def _simple_inequality(s: str) -> sympy.Set | None:
    """`x > 3`, `3 \\le x`, `1 < x \\le 2` as sets without the general solver; None for other shapes."""
    parts = [p.strip() for p in _RELATION_SPLIT.split(s)]
    if len(parts) == 3 and _VARIABLE.match(parts[0]) and not _VARIABLE.match(parts[2]):
        return _bound(parts[1], True, _closed_value(parts[2], s))
    if len(parts) == 3 and _VARIABLE.match(parts[2]) and not _VARIABLE.match(parts[0]):
        return _bound(parts[1], False, _closed_value(parts[0], s))
    if len(parts) == 5 and _VARIABLE.match(parts[2]):
        return sympy.Intersection(_bound(parts[1], False, _closed_value(parts[0], s)),
                                  _bound(parts[3], True, _closed_value(parts[4], s)))
    return None


def _closed_value(part: str, source: str) -> sympy.Basic:
    value = _parse(part)
    if value.kind not in NUMERIC_KINDS or value.value.free_symbols:
        raise Unparsable(f"inequality {source!r} needs a number on one side")
    return value.value


def _items(parts: list[str]) -> tuple[Answer, ...]:
    return tuple(_parse(p) for p in parts if p)


def _parse_structure(s: str) -> Answer | None:
    """Bracketed or comma-separated answers; None when `s` is a single item."""
    enclosed = _enclosing(s)
    if enclosed is not None:
        opening, inner, closing = enclosed
        parts = split_top_level(inner)
        if opening == "\\{":
            return Answer(Kind.SET, _items(parts), s)
        if len(parts) < 2:
            return None
        brackets = opening + closing
        items = _items(parts)
        if len(parts) == 2 and (brackets in ("[)", "(]", "[]") or _INFINITY.search(inner)):
            return Answer(Kind.INTERVAL, _interval(items, brackets, s), s)
        return Answer(Kind.TUPLE, items, s)
    if len(pieces := split_top_level(s, "\\cup")) > 1:
        return Answer(Kind.INTERVAL, sympy.Union(*(_as_real_set(_parse(p), s) for p in pieces)), s)
    if "\\cap" in s:
        return _from_sympy(_latex(s), s)
    parts = split_top_level(s)
    if len(parts) > 1:
        return Answer(Kind.SET, _items(parts), s)
    if ";" in s and len(parts := split_top_level(s, ";")) > 1:
        return Answer(Kind.SET, _items(parts), s)
    return None


def _parse_plain(s: str) -> Answer | None:
    """Letters, numbers in a base, integers, decimals and simple fractions, read without sympy's parser."""
    if m := _LETTER.match(s):
        return Answer(Kind.LETTER, m.group(1), s)
    if m := _BASED.match(s):
        digits, base = m.group(1), int(m.group(2))
        try:
            return Answer(Kind.BASED, (int(digits, base), base), s)
        except ValueError:
            return Answer(Kind.TEXT, s, s)
    if _INFINITY.fullmatch(s.lstrip("+-").strip()):
        return Answer(Kind.EXPRESSION, -sympy.oo if s.startswith("-") else sympy.oo, s)
    if _INTEGER.match(s):
        return Answer(Kind.INTEGER, sympy.Integer(s), s)
    if m := _DECIMAL.match(s):
        return Answer(Kind.DECIMAL, sympy.Rational(s), s, places=len(m.group(1)))
    if m := _SCIENTIFIC.match(s):
        exponent = int(m.group(2) or m.group(3))
        if abs(exponent) > MAX_DIGITS:
            raise TooLarge(f"answer {s[:40]!r} has an exponent over {MAX_DIGITS}")
        return _number_kind(sympy.Rational(m.group(1)) * sympy.Integer(10) ** exponent, s)
    if m := _FRACTION.match(s):
        sign, num, den = m.group(1), m.group(2) or m.group(4), m.group(3) or m.group(5)
        if int(den) == 0:
            raise Unparsable(f"division by zero in {s!r}")
        return _number_kind(sympy.Rational(int(sign + num), int(den)), s)
    if _TEXT.match(s) and _WORD.search(s) and not _INFINITY.search(s):
        return Answer(Kind.TEXT, s, s)
    return None


def _parse(s: str) -> Answer:
    if not s:
        raise Unparsable("empty answer")
    if (member := _MEMBERSHIP.match(s)) and member.end() < len(s):
        return _parse(s[member.end():])
    plain = _parse_plain(s)
    if plain is not None:
        return plain
    structured = _parse_structure(s)
    if structured is not None:
        return structured
    if _RELATION.search(s) and (interval := _simple_inequality(s)) is not None:
        return Answer(Kind.INEQUALITY, interval, s)
    if "=" in s and not _RELATION.search(s):
        sides = [p for p in s.split("=")]
        if any(not p.strip() for p in sides):
            raise Unparsable(f"equation {s!r} has an empty side")
        return Answer(Kind.EQUATION, (_evaluate(_latex(sides[0])), _evaluate(_latex(sides[-1]))), s)
    return _from_sympy(_latex(s), s)


def parse_answer(answer: str) -> Answer:
    """Typed form of an extracted answer; raises Unparsable (or TooLarge, a ValueError too) when it has none."""
    if not isinstance(answer, str):
        raise Unparsable(f"answer must be a str, got {type(answer).__name__}")
    check_text(answer)
    return _parse(normalize(answer))
