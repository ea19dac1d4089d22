"""Regression suite for answer equivalence: every category of issue 3, false positives and false
negatives counted separately, plus the known weak spots of math-verify 0.9."""
from __future__ import annotations

import collections

import pytest
import sympy

from jaxmath.verify import Verdict, is_equivalent
from jaxmath.verify.equivalence import judge
from jaxmath.verify.limits import TooLarge, check_magnitude, check_text
from jaxmath.verify.normalize import normalize
from jaxmath.verify.parse import Kind, Unparsable, parse_answer

# (category, prediction, gold): each pair must be judged equivalent.
SAME = [
    ("integer", "42", "42"), ("integer", "+7", "7"), ("integer", "-0", "0"),
    ("rational", "1/2", r"\frac{1}{2}"), ("rational", r"\frac{2}{4}", "1/2"), ("rational", "-3/6", r"-\frac12"),
    ("rational", r"137 \frac{1}{2}", r"\frac{275}{2}"),
    ("decimal", "0.5", r"\frac{1}{2}"), ("decimal", ".35625", "0.35625"), ("decimal", "18.00", "18"),
    ("decimal", "3.1416", "3.14"), ("decimal", "0.125", "0.13"), ("decimal", r"\frac{17}{50}", "0.34"), ("decimal", r"\pi", "3.14"),
    ("normalise", r"\left( 1, 2 \right)", "(1,2)"), ("normalise", r"\dfrac{3}{4}", r"\tfrac34"),
    ("normalise", r"\frac12", "0.5"), ("normalise", r"5 \text{ cm}", "5"), ("normalise", r"4\mbox{ inches}", "4"),
    ("normalise", r"90^\circ", "90"), ("normalise", "90\u00b0", "90"), ("normalise", r"30^{\circ}", "30"),
    ("normalise", "1,000", "1000"), ("normalise", "1{,}000", "1000"), ("normalise", r"1\,000", "1000"),
    ("normalise", r"\$18.90", "18.90"), ("normalise", r"10\%", "10"), ("normalise", "\u22123", "-3"),
    ("normalise", "3\u00d74", "12"), ("normalise", "2\u03c0", r"2\pi"), ("normalise", "\u221a2", r"\sqrt{2}"),
    ("normalise", "1e6", "1000000"), ("normalise", "2.5e-3", "0.0025"), ("normalise", r"\emptyset", r"\varnothing"),
    ("normalise", "$x+1$", "1+x"), ("normalise", r"\sqrt2", r"\sqrt{2}"),
    ("symbolic", r"2\sqrt{2}", r"\sqrt{8}"), ("symbolic", r"\frac{\sqrt{21}}{5}", r"\sqrt{21}/5"),
    ("symbolic", r"\frac{\pi}{2}", r"\pi/2"), ("symbolic", r"x^2+2x+1", r"(x+1)^2"), ("symbolic", "p-q", "-q+p"),
    ("symbolic", r"\log_2 8", "3"), ("symbolic", r"\sin^2 x + \cos^2 x", "1"), ("symbolic", r"e^{i\pi}", "-1"),
    ("symbolic", r"\frac{1}{\sqrt{2}}", r"\frac{\sqrt{2}}{2}"), ("symbolic", r"2^{10}", "1024"),
    ("symbolic", r"\frac{1}{2004!}", r"\frac{2005 \cdot 2006}{2006!}"),
    ("complex", "6-5i", "-5i+6"), ("complex", r"\sqrt{-4}", "2i"), ("complex", "(1+i)^2", "2i"),
    ("interval", r"(3,\infty)", "x > 3"), ("interval", "x > 3", r"(3, \infty)"), ("interval", r"x \ge 3", r"[3,\infty)"),
    ("interval", "1 < x < 3", "(1,3)"), ("interval", r"1 \le x < 3", "[1,3)"), ("interval", "3 > x > 1", "(1,3)"),
    ("interval", r"(-\infty, 0) \cup (1, \infty)", r"(-\infty,0)\cup(1,\infty)"),
    ("interval", r"(2,12) \cup (12,102)", r"(2, 12)\cup (12, 102)"),
    ("set", r"1 \pm \sqrt2", r"1-\sqrt2, 1+\sqrt2"), ("set", r"\{3, 1, 2\}", "1, 2, 3"), ("set", "1, 2, 2", "2, 1, 2"),
    ("set", r"2 \text{ and } 3", "3, 2"), ("set", r"\{5\}", "5"),
    ("tuple", "(1,2)", "(1, 2)"), ("tuple", "(6,31,-1)", r"(6, 31, -1)"), ("tuple", r"(\frac12, 3)", "(0.5, 3)"),
    ("matrix", r"\begin{pmatrix}1\\2\end{pmatrix}", "(1,2)"),
    ("matrix", r"\begin{pmatrix} -1/3 \\ 2/3 \end{pmatrix}", r"\begin{pmatrix} -\frac13 \\ \frac23 \end{pmatrix}"),
    ("matrix", r"\begin{bmatrix}1&2\\3&4\end{bmatrix}", r"\begin{pmatrix}1 & 2\\ 3 & 4\end{pmatrix}"),
    ("equation", "x=3", "3"), ("equation", "3", "x = 3"), ("equation", "2x+4y=8", "x+2y=4"),
    ("equation", "y = 2x+3", "2x - y + 3 = 0"), ("equation", "k=1", "k = 1"),
    ("text", r"\text{Evelyn}", "Evelyn"), ("text", "evelyn", r"\text{Evelyn}"), ("text", r"\text{odd}", "odd"),
    ("letter", "C", r"\text{(C)}"), ("letter", "(C)", "C"),
    ("base", "204_5", "204_{5}"), ("base", r"1011_{2}", "1011_2"),
]

# (category, prediction, gold): each pair must be judged NOT equivalent.
DIFFERENT = [
    ("integer", "41", "42"), ("integer", "-7", "7"),
    ("rational", "1/3", r"\frac{1}{2}"), ("rational", r"\frac{1}{2^{99}}", r"\frac{1}{2^{98}}"),
    ("rational", r"\frac{1}{2004!}", r"\frac{1}{2006!}"),
    ("decimal", "0.0000001", "0.0000002"), ("decimal", "0.33", r"\frac13"), ("decimal", "0.3", r"\frac14"),
    ("decimal", "3.13", "3.14"), ("decimal", "3.14", r"\pi"), ("decimal", "0.124", "0.13"),
    ("normalise", "1e6", "1"), ("normalise", r"\sqrt{3}", r"\sqrt{2}"),
    ("symbolic", r"x^2+2x", r"(x+1)^2"), ("symbolic", "q-p", "p-q"), ("symbolic", r"2\pi", r"\pi"),
    ("symbolic", "y", "x"), ("symbolic", r"\sin x", r"\cos x"), ("symbolic", r"10^{100}+1", r"10^{100}"),
    ("symbolic", r"\sqrt{10^{100}+1}", r"10^{50}"),
    ("complex", "6+5i", "6-5i"), ("complex", "i", "1"),
    ("interval", r"[3,\infty)", "x > 3"), ("interval", "(1,3]", "(1,3)"), ("interval", "x < 3", r"(3,\infty)"),
    ("interval", r"(0,9] \cup (9,36)", r"(0,9)\cup(9,36)"),
    ("set", "1, 2", "1, 2, 2"), ("set", r"1+\sqrt2", r"1 \pm \sqrt2"), ("set", r"\{1, 3\}", r"\{1, 2\}"),
    ("set", r"\emptyset", r"\{0\}"),
    ("tuple", "(1,2)", "(2,1)"), ("tuple", "(1,2,3)", "(1,2)"),
    ("matrix", r"\begin{pmatrix}1\\2\end{pmatrix}", r"\begin{pmatrix}2\\1\end{pmatrix}"),
    ("matrix", r"\begin{pmatrix}1&2\\3&4\end{pmatrix}", r"\begin{pmatrix}1&3\\2&4\end{pmatrix}"),
    ("equation", "x=3", "y=3"), ("equation", "x=4", "3"), ("equation", "2x+4y=8", "x+2y=5"),
    ("text", r"\text{Evelyn}", r"\text{Devon}"), ("letter", "B", "C"), ("letter", "(A)", r"\text{(C)}"),
    ("base", "204_5", "204"), ("base", "204", "204_5"), ("base", "204_6", "204_5"),
]


def _report(pairs, expected: bool) -> dict[str, list[tuple[str, str]]]:
    misses = collections.defaultdict(list)
    for category, pred, gold in pairs:
        if is_equivalent(pred, gold) != expected:
            misses[category].append((pred, gold))
    return dict(misses)


def test_no_false_negatives():
    misses = _report(SAME, True)
    assert not misses, f"{sum(map(len, misses.values()))} false negatives by category: {misses}"


def test_no_false_positives():
    misses = _report(DIFFERENT, False)
    assert not misses, f"{sum(map(len, misses.values()))} false positives by category: {misses}"


def test_suite_covers_every_category():
    categories = {"integer", "rational", "decimal", "symbolic", "complex", "interval", "set", "tuple",
                  "matrix", "equation", "text", "letter", "base", "normalise"}
    assert {c for c, _, _ in SAME} == categories
    assert {c for c, _, _ in DIFFERENT} == categories


@pytest.mark.parametrize("pred,gold,expected", [
    ("1/2004!", "1/2006!", False),               # math-verify rounds both to 0
    ("0.0000001", "0.0000002", False),           # idem
    ("1e6", "1", False),                         # math-verify reads 1e6 as 1
    ("1e6", "10^6", True),
    ("204_5", "204", False),                     # math-verify drops the base
    (r"\emptyset", r"\varnothing", True),        # math-verify does not match these
])
def test_math_verify_weak_spots(pred, gold, expected):
    assert is_equivalent(pred, gold) is expected


@pytest.mark.parametrize("text,kind", [
    ("42", Kind.INTEGER), (r"\frac{3}{4}", Kind.RATIONAL), ("0.25", Kind.DECIMAL), (r"\sqrt{2}+x", Kind.EXPRESSION),
    (r"[1, 2)", Kind.INTERVAL), (r"\{1, 2\}", Kind.SET), ("(1, 2, 3)", Kind.TUPLE),
    (r"\begin{pmatrix}1&2\end{pmatrix}", Kind.MATRIX), ("y = 2x", Kind.EQUATION), ("x > 3", Kind.INEQUALITY),
    (r"\text{Evelyn}", Kind.TEXT), ("(D)", Kind.LETTER), ("204_5", Kind.BASED),
])
def test_parse_kinds(text, kind):
    assert parse_answer(text).kind is kind


def test_decimal_keeps_written_places():
    answer = parse_answer("2.50")
    assert answer.places == 2 and answer.value == sympy.Rational(5, 2)


def test_normalize_examples():
    assert normalize(r"\left[ \dfrac12, 3 \right)") == r"[ \frac{1}{2}, 3 )"
    assert normalize(r"\$1{,}234.50") == "1234.50"
    assert normalize("5e3") == r"5\times 10^{3}"


@pytest.mark.parametrize("text", [r"\frac{1}{", "(1, 2", "1/0", "x = "])
def test_unparsable_answers_raise_value_error(text):
    with pytest.raises(Unparsable):
        parse_answer(text)


@pytest.mark.parametrize("text", ["1" * 20_000, "x\x00", "{" * 50 + "}" * 50, "9!!!"])
def test_check_text_rejects(text):
    with pytest.raises(TooLarge):
        check_text(text)


def test_check_magnitude_bounds_towers_and_factorials():
    ten = sympy.Integer(10)
    check_magnitude(sympy.Pow(ten, 1000, evaluate=False))
    check_magnitude(sympy.factorial(sympy.Integer(2006), evaluate=False))
    with pytest.raises(TooLarge):
        check_magnitude(sympy.Pow(ten, sympy.Pow(ten, 10, evaluate=False), evaluate=False))
    with pytest.raises(TooLarge):
        check_magnitude(sympy.factorial(sympy.Pow(ten, 7, evaluate=False), evaluate=False))


def test_judge_outcomes_and_reasons():
    assert judge("3", "3").outcome is Verdict.CORRECT
    assert judge(None, "3") == Verdict(Verdict.WRONG, "no answer found")
    bad_gold = judge("3", r"\frac{1}{")
    assert bad_gold.outcome is Verdict.UNVERIFIABLE and "gold" in bad_gold.reason
    huge = judge(r"10^{10^{10^{10}}}", "1")
    assert huge.outcome is Verdict.UNVERIFIABLE and "power tower" in huge.reason
