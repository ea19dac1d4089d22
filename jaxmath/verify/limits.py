"""Size guards: reject answers whose evaluation would exhaust time or memory, before sympy evaluates them.

`check_text` screens the raw string (length, control bytes, brace nesting, factorial chains);
`check_magnitude` bounds the number of digits an *unevaluated* parse tree can produce, so power towers
(`10^{10^{10}}`) and huge factorials (`(10^{6})!`) are refused instead of computed.
"""
from __future__ import annotations

import math
import re

import sympy

MAX_ANSWER_CHARS = 2000
MAX_BRACE_DEPTH = 40
MAX_DIGITS = 100_000
MAX_TREE_NODES = 3000

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_FACTORIAL_CHAIN = re.compile(r"!\s*!\s*!")
_LONG_DIGITS = re.compile(r"\d{%d,}" % (MAX_DIGITS // 10))


class TooLarge(ValueError):
    """An answer exceeds a size bound; the message says which."""


def check_text(answer: str) -> None:
    """Raise TooLarge when `answer` is too long, has control bytes, nests too deep or chains factorials."""
    if len(answer) > MAX_ANSWER_CHARS:
        raise TooLarge(f"answer has {len(answer)} characters (limit {MAX_ANSWER_CHARS})")
    if _CONTROL.search(answer):
        raise TooLarge("answer contains control characters (NUL or similar)")
    depth = deepest = 0
    for ch in answer:
        if ch in "{([":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "})]":
            depth -= 1
    if deepest > MAX_BRACE_DEPTH:
        raise TooLarge(f"answer nests brackets {deepest} deep (limit {MAX_BRACE_DEPTH})")
    if _FACTORIAL_CHAIN.search(answer):
        raise TooLarge("answer chains three or more factorials")
    if _LONG_DIGITS.search(answer):
        raise TooLarge(f"answer writes a number of {MAX_DIGITS // 10} or more digits")


def _log10_bound(expr: sympy.Basic) -> float:
    """An upper bound on log10 of |value| of the unevaluated `expr` (symbols count as magnitude <= 10)."""
    if isinstance(expr, sympy.Rational):
        return max(abs(expr.p).bit_length(), abs(expr.q).bit_length()) * 0.30103
    if isinstance(expr, sympy.Float):
        return math.log10(abs(float(expr)) + 1.0)
    if not expr.args:
        return 1.0
    if isinstance(expr, sympy.Pow):
        base, exponent = expr.args
        if isinstance(exponent, sympy.Rational):
            return abs(float(exponent)) * max(_log10_bound(base), 1.0)
        size = _log10_bound(exponent)
        return math.inf if size > 15 else 10.0 ** size * max(_log10_bound(base), 1.0)
    if isinstance(expr, (sympy.factorial, sympy.factorial2, sympy.subfactorial, sympy.gamma,
                         sympy.binomial, sympy.RisingFactorial, sympy.FallingFactorial)):
        n = max(_log10_bound(a) for a in expr.args)
        if n > 15:
            return math.inf
        size = 10.0 ** n
        return size * max(math.log10(size), 1.0)
    if isinstance(expr, sympy.exp):
        size = _log10_bound(expr.args[0])
        return math.inf if size > 15 else 10.0 ** size * 0.4343
    children = [_log10_bound(a) for a in expr.args]
    if isinstance(expr, sympy.Add):
        return max(children) + math.log10(len(children))
    return sum(children)


def check_magnitude(expr: sympy.Basic) -> None:
    """Raise TooLarge when evaluating the unevaluated `expr` could need more than MAX_DIGITS digits."""
    nodes = 0
    for _ in sympy.preorder_traversal(expr):
        nodes += 1
        if nodes > MAX_TREE_NODES:
            raise TooLarge(f"answer has more than {MAX_TREE_NODES} expression nodes")
    bound = _log10_bound(expr)
    if bound > MAX_DIGITS:
        size = "a power tower or factorial" if math.isinf(bound) else f"about 10^{bound:.3g}"
        raise TooLarge(f"answer could evaluate to {size} (limit 10^{MAX_DIGITS})")
