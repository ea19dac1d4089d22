"""Answer equivalence: is a predicted answer the reference answer?

Exact arithmetic for integers and rationals; decimals match within half a unit of the last decimal
written; expressions compare symbolically and numerically at random points; structures compare by
their own rules (ordered tuples, multiset lists, interval ends, proportional equations, text keys).
Runs in the calling process: `jaxmath.verify.Verifier` adds the hard time and memory bounds.
"""
from __future__ import annotations

import functools
import random
import re

import sympy

from jaxmath.verify.extract import extract_answer
from jaxmath.verify.limits import TooLarge, check_text
from jaxmath.verify.normalize import normalize, text_key
from jaxmath.verify.parse import NUMERIC_KINDS, Answer, Kind, parse_answer
from jaxmath.verify.verdict import Outcome, Verdict

_DIGITS = 30
_NO_PRECISION_BITS = 8  # a Float this imprecise is sympy's "zero within rounding" after cancellation
_POINT_REL_TOL = 1e-9
_POINTS = 5


def _numeric(expr: sympy.Basic) -> complex | None:
    """High-precision complex value of a closed expression, or None when it is not a finite number."""
    try:
        value = sympy.N(expr, _DIGITS)
    except Exception:  # sympy raises many error types for unevaluable expressions
        return None
    if not value.is_number or value.has(sympy.zoo, sympy.oo, sympy.nan, sympy.S.NegativeInfinity):
        return None
    re_part, im_part = value.as_real_imag()
    if not (re_part.is_Number and im_part.is_Number):
        return None
    return sympy.Float(re_part, _DIGITS) + sympy.I * sympy.Float(im_part, _DIGITS)


def _within(value: sympy.Basic, target: sympy.Basic, tol: sympy.Rational) -> bool:
    """|value - target| <= tol, exactly for rationals and at 30 digits otherwise."""
    if isinstance(value, sympy.Rational) and isinstance(target, sympy.Rational):
        return abs(value - target) <= tol
    diff = _numeric(value - target)
    return diff is not None and abs(complex(diff)) <= float(tol) * (1 + 1e-12)


def _closed_equal(a: sympy.Basic, b: sympy.Basic) -> bool:
    """Equality of two closed expressions: sympy evaluates a - b to 30 significant digits (raising its
    working precision through cancellation); equal when that is 0 or has no significant digit left."""
    if isinstance(a, sympy.Rational) and isinstance(b, sympy.Rational):
        return a == b
    try:
        diff = sympy.N(a - b, _DIGITS)
    except Exception:  # sympy raises many error types for unevaluable expressions
        return bool(a == b) or _simplifies_to_zero(a, b)
    if diff == 0:
        return True
    if not diff.is_number or diff.has(sympy.zoo, sympy.oo, sympy.nan, sympy.S.NegativeInfinity):
        return bool(a == b) or _simplifies_to_zero(a, b)
    parts = diff.as_real_imag()
    if not all(p == 0 or isinstance(p, sympy.Float) for p in parts):
        return _simplifies_to_zero(a, b)
    return all(p == 0 or p._prec <= _NO_PRECISION_BITS for p in parts)


def _simplifies_to_zero(a: sympy.Basic, b: sympy.Basic) -> bool:
    try:
        return sympy.simplify(a - b) == 0
    except Exception:  # simplification of exotic objects may fail in many ways
        return False


def _random_points(symbols: list[sympy.Symbol]) -> list[dict]:
    rng = random.Random(1234)
    return [{s: sympy.Rational(rng.randint(1100, 2900), 1000) for s in symbols} for _ in range(_POINTS)]


def _function_values(a: sympy.Basic, b: sympy.Basic) -> list[tuple[complex, complex]]:
    """(a, b) evaluated at random points of their shared variables, points where either is undefined dropped."""
    symbols = sorted(a.free_symbols | b.free_symbols, key=str)
    values = []
    for point in _random_points(symbols):
        va, vb = _numeric(a.subs(point)), _numeric(b.subs(point))
        if va is not None and vb is not None:
            values.append((complex(va), complex(vb)))
    return values


def expressions_equal(a: sympy.Basic, b: sympy.Basic) -> bool:
    """Symbolic equality of two sympy expressions, decided numerically at random points when needed."""
    if a == b:
        return True
    if not a.free_symbols and not b.free_symbols:
        return _closed_equal(a, b)
    values = _function_values(a, b)
    if len(values) < 2:
        return _simplifies_to_zero(a, b)
    return all(abs(va - vb) <= _POINT_REL_TOL * max(abs(va), abs(vb), 1e-300) for va, vb in values)


def _equations_equal(a: tuple, b: tuple) -> bool:
    """`lhs = rhs` pairs describe the same relation when (lhs - rhs) are proportional (`2x+4y=8` ~ `x+2y=4`)."""
    da, db = a[0] - a[1], b[0] - b[1]
    if da.free_symbols != db.free_symbols:
        return False
    if not da.free_symbols:
        return expressions_equal(a[0], b[0]) and expressions_equal(a[1], b[1])
    values = _function_values(da, db)
    ratios = [va / vb for va, vb in values if vb != 0 and va != 0]
    if len(ratios) < 2 or len(ratios) < len(values):
        return _simplifies_to_zero(da, db)
    first = ratios[0]
    return all(abs(r - first) <= _POINT_REL_TOL * abs(first) for r in ratios)


def _numbers_equal(p: Answer, g: Answer) -> bool:
    """Numeric comparison: a decimal gold allows half a unit of its last written decimal; else exact."""
    pv, gv = p.value, g.value
    if g.kind is Kind.DECIMAL:
        return _within(pv, gv, sympy.Rational(1, 2) / 10 ** g.places)
    if p.kind is Kind.DECIMAL:
        return isinstance(gv, sympy.Rational) and pv == gv
    return expressions_equal(pv, gv)


def _as_set(answer: Answer) -> sympy.Set | None:
    """The real set an interval-like answer denotes (a 2-tuple reads as an open interval)."""
    if answer.kind in (Kind.INTERVAL, Kind.INEQUALITY):
        return answer.value
    if answer.kind is Kind.TUPLE and len(answer.value) == 2 and all(a.kind in NUMERIC_KINDS for a in answer.value):
        lo, hi = (a.value for a in answer.value)
        return sympy.Interval.open(lo, hi)
    return None


def _set_pieces(s: sympy.Set) -> list[sympy.Set]:
    return list(s.args) if isinstance(s, sympy.Union) else [s]


def _sets_equal(a: sympy.Set, b: sympy.Set) -> bool:
    """Unions of intervals and points, compared piece by piece (ends and their openness must agree)."""
    if a == b:
        return True
    pa, pb = _set_pieces(a), _set_pieces(b)
    if len(pa) != len(pb):
        return False
    for x, y in zip(pa, pb):
        if isinstance(x, sympy.Interval) and isinstance(y, sympy.Interval):
            if (x.left_open, x.right_open) != (y.left_open, y.right_open):
                return False
            if not (_endpoint_equal(x.start, y.start) and _endpoint_equal(x.end, y.end)):
                return False
        elif isinstance(x, sympy.FiniteSet) and isinstance(y, sympy.FiniteSet):
            if not _multiset_equal(list(x.args), list(y.args), expressions_equal):
                return False
        else:
            return False
    return True


def _endpoint_equal(a: sympy.Basic, b: sympy.Basic) -> bool:
    if a.is_infinite or b.is_infinite:
        return a == b
    return expressions_equal(a, b)


def _multiset_equal(pred: list, gold: list, equal) -> bool:
    """Every gold item matched by a distinct predicted item, and nothing left over."""
    if len(pred) != len(gold):
        return False
    unused = list(pred)
    for g in gold:
        for k, p in enumerate(unused):
            if equal(p, g):
                del unused[k]
                break
        else:
            return False
    return True


def _elements(answer: Answer) -> list[Answer] | None:
    """Items of a tuple, a vector (one-row or one-column matrix) or a list; None for other kinds."""
    if answer.kind in (Kind.TUPLE, Kind.SET):
        return list(answer.value)
    if answer.kind is Kind.MATRIX and 1 in answer.value.shape:
        return [Answer(Kind.EXPRESSION, v, str(v)) for v in answer.value]
    return None


def _matrices_equal(a: sympy.Matrix, b: sympy.Matrix) -> bool:
    return a.shape == b.shape and all(expressions_equal(x, y) for x, y in zip(a, b))


def _solved_value(answer: Answer) -> Answer | None:
    """The right side of `x = value` (a single variable on the left), else None."""
    if answer.kind is Kind.EQUATION and isinstance(answer.value[0], sympy.Symbol):
        value = answer.value[1]
        return Answer(Kind.INTEGER if isinstance(value, sympy.Integer) else Kind.EXPRESSION, value, str(value))
    return None


def answers_equal(p: Answer, g: Answer) -> bool:
    """Whether parsed prediction `p` denotes the same answer as parsed gold `g`."""
    if p.source == g.source:
        return True
    if g.kind in (Kind.TEXT, Kind.LETTER) or p.kind in (Kind.TEXT, Kind.LETTER):
        return text_key(p.source) == text_key(g.source)
    if g.kind is Kind.BASED or p.kind is Kind.BASED:
        return p.kind is g.kind and p.value == g.value
    if g.kind is Kind.EQUATION and p.kind is Kind.EQUATION:
        return _equations_equal(p.value, g.value)
    if g.kind is Kind.EQUATION or p.kind is Kind.EQUATION:
        solved_p, solved_g = _solved_value(p) or p, _solved_value(g) or g
        return (solved_p, solved_g) != (p, g) and answers_equal(solved_p, solved_g)
    if g.kind in NUMERIC_KINDS and p.kind in NUMERIC_KINDS:
        return _numbers_equal(p, g)
    if g.kind is Kind.MATRIX and p.kind is Kind.MATRIX:
        return _matrices_equal(p.value, g.value)
    if g.kind in (Kind.INTERVAL, Kind.INEQUALITY) or p.kind in (Kind.INTERVAL, Kind.INEQUALITY):
        ps, gs = _as_set(p), _as_set(g)
        return ps is not None and gs is not None and _sets_equal(ps, gs)
    if g.kind is Kind.SET or p.kind is Kind.SET:
        gold_items = list(g.value) if g.kind is Kind.SET else [g]
        pred_items = _elements(p) if p.kind is Kind.SET else [p]
        return _multiset_equal(pred_items, gold_items, answers_equal)
    pe, ge = _elements(p), _elements(g)
    if pe is not None and ge is not None:
        return len(pe) == len(ge) and all(answers_equal(x, y) for x, y in zip(pe, ge))
    return False


@functools.lru_cache(maxsize=8192)
def parse_gold(gold: str) -> Answer:
    """Parse (once; cached) a reference answer."""
    return parse_answer(gold)


_SPACES = re.compile(r"(\\[a-zA-Z]+|\d)?\s+")


def _spelling(answer: str) -> str:
    """The normalised answer without the spaces TeX ignores: all but those ending a command before a
    letter (`\\pi x`) and those between two digits (`1 2` is no `12`)."""
    s = normalize(answer)

    def keep(m: re.Match) -> str:
        head, following = m.group(1) or "", s[m.end():m.end() + 1]
        needed = (head.startswith("\\") and following.isalpha()) or (head.isdigit() and following.isdigit())
        return head + (" " if needed else "")
    return _SPACES.sub(keep, s)


def _same_text(pred: str, gold: str) -> bool:
    """Whether both answers are within size limits and are spelled the same (no parse needed)."""
    try:
        check_text(pred)
        check_text(gold)
    except TooLarge:
        return False
    return _spelling(pred) == _spelling(gold)


def judge(pred: str | None, gold: str) -> Verdict:
    """Compare an extracted prediction with a reference answer; never raises."""
    if isinstance(pred, str) and isinstance(gold, str) and _same_text(pred, gold):
        return Verdict(Outcome.CORRECT)
    try:
        g = parse_gold(gold)
    except Exception as err:  # Unparsable, TooLarge, or any sympy failure: the gold cannot be used
        return Verdict(Outcome.UNVERIFIABLE, f"gold answer: {err}")
    if pred is None:
        return Verdict(Outcome.WRONG, "no answer found")
    try:
        p = parse_answer(pred)
    except TooLarge as err:
        return Verdict(Outcome.UNVERIFIABLE, f"answer too large: {err}")
    except Exception as err:  # Unparsable or a sympy failure while evaluating the prediction
        same = normalize(pred) == g.source
        return Verdict(Outcome.CORRECT) if same else Verdict(Outcome.WRONG, f"unparsable answer: {err}")
    try:
        equal = answers_equal(p, g)
    except Exception as err:  # a sympy failure deep in a comparison: report, never propagate
        return Verdict(Outcome.UNVERIFIABLE, f"comparison failed: {type(err).__name__}")
    return Verdict(Outcome.CORRECT) if equal else Verdict(Outcome.WRONG, "not equivalent")


def is_equivalent(pred: str, gold: str) -> bool:
    """Whether extracted answer `pred` equals reference `gold` (in this process; see Verifier for bounds)."""
    return judge(pred, gold).correct


def grade_one(completion: str, gold: str, style: str = "auto") -> Verdict:
    """Extract the final answer of `completion` in `style`, then judge it against `gold`."""
    return judge(extract_answer(completion, style), gold)


def grade(completion: str, gold: str, style: str = "auto") -> bool:
    """Whether the final answer of `completion` equals `gold` (in this process; see Verifier for bounds)."""
    return grade_one(completion, gold, style).correct
