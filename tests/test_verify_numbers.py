r"""Numbers as LaTeX writes them: thousands separators (`3,\!250`, `{,}`, `\,`, `\ `, `\;`, `1,234,567`),
currency, percent and degree signs, trailing `\text{}` units (with their power), `\dfrac`/`\tfrac` and
scientific notation, on either side of the comparison; and the spellings that must stay what they are
(`1,2` a pair, `(1,234)` a pair, `\{1,2\}` a set, `3{,}14` no thousands).

The round-trip test reads tests/fixtures/verify/reference_answers.jsonl: 77 reference answers of MATH-500
(`answer`) and minerva_math (the last `\boxed{}` of `solution`), chosen for their number formats, units,
intervals, matrices and scientific notation; bench/verify.py runs the same check on all of them.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxmath.verify.equivalence import judge
from jaxmath.verify.normalize import normalize
from jaxmath.verify.parse import Kind, parse_answer
from jaxmath.verify.reformat import REWRITES, variants

FIXTURE = Path(__file__).parent / "fixtures" / "verify" / "reference_answers.jsonl"

# (gold, prediction, same answer?): each pair is also judged the other way round.
TABLE = [
    # thousands separators
    ("3250", r"3,\!250", True), (r"\$1,\!234.50", "1234.5", True), ("1234", r"1{,}234", True),
    ("1234", r"1\,234", True), ("1234", r"1\ 234", True), ("1234", r"1\;234", True), ("1234567", "1,234,567", True),
    (r"11,\! 111,\! 111,\! 100", "11111111100", True), (r"\$32,\!348", "32,348", True),
    (r"(1{,}234, 5)", "(1234, 5)", True), (r"1,\!234.5", "1234.50", True), ("-1,000", r"-1{,}000", True),
    # currency, percent, degrees
    ("5", r"\$5", True), ("5", "$5$", True), ("5", r"5\text{ dollars}", True), ("18.90", r"\$18.9", True),
    ("50", r"50\%", True), ("50", "50%", True), ("30", r"30^\circ", True), ("30", r"30^{\circ}", True),
    ("30", r"30\degree", True), (r"30^\circ", r"30 \text{ degrees}", True), ("20", "20\u00b0", True),
    # units
    ("5", r"5\text{ cm}", True), ("12", r"12 \text{ inches}^2", True), (r"864 \mbox{ inches}^2", "864", True),
    (r"15\mbox{ cm}^2", r"15\text{ cm}^{2}", True), ("5", r"5\mathrm{~cm}", True), ("5", r"\text{5 cm}", True),
    (r"5.4 \text{ cents}", "5.4", True), (r"\frac{270}7\text{ degrees}", r"\frac{270}{7}", True),
    # fractions and scientific notation
    (r"\frac{1}{2}", r"\dfrac{1}{2}", True), (r"\tfrac{3}{4}", "0.75", True), (r"\dfrac{17}{50}", "0.34", True),
    ("1500", r"1.5\times10^{3}", True), ("1500", r"1.5 \cdot 10^3", True), ("1500", "1.5e3", True),
    (r"1.5\times 10^{3}", r"1,\!500", True), ("4.5e33", r"4.5 \times 10^{33}", True), ("2.5e-3", "0.0025", True),
    ("1.77e-6", "0.00000177", True), ("4.5e33", "4" + "5" + "0" * 32, True), (r"3 \cdot 10^{2}", "300.0", True),
    # no new false positives: item separators stay separators, a unit's power is no exponent
    ("12", "1,2", False), ("(1,2)", "12", False), ("1234", "(1,234)", False), ("1234", r"\{1,234\}", False),
    ("1234", "[1,234]", False), ("1234", "1, 234", False), ("123", "1,23", False), ("12345", "1,2345", False),
    ("12", r"1{,}2", False), ("12", r"1\,2", False), ("314", r"3{,}14", False), ("12", r"1\ 2", False),
    ("25", r"5\text{ cm}^2", False), ("1.5", "1.5e3", False), ("1500", r"1.5\times10^{4}", False),
    ("4.5e33", "4.47e33", False), ("1.77e-6", "0.0000017", False),
    ("50", r"0.5\%", False), ("3250", r"3,\!25", False), ("1234", r"1,\!234,\!5", False),
    (r"\$32,\!348", "32,349", False), ("(1,234)", "(1234)", False), (r"x \in [-2,7]", "[-2,8]", False),
]


@pytest.mark.parametrize("gold,pred,same", TABLE)
def test_number_spellings_both_ways(gold, pred, same):
    assert judge(pred, gold).correct is same, (pred, gold)
    assert judge(gold, pred).correct is same, (gold, pred)


@pytest.mark.parametrize("text,kind,value", [
    ("1,234", Kind.INTEGER, 1234), ("(1,234)", Kind.TUPLE, (1, 234)), (r"\{1,234\}", Kind.SET, (1, 234)),
    ("1,2", Kind.SET, (1, 2)), (r"(1{,}234, 5)", Kind.TUPLE, (1234, 5)), (r"1,\!234,\!567", Kind.INTEGER, 1234567),
    (r"3\,250", Kind.INTEGER, 3250), (r"12 \text{ inches}^2", Kind.INTEGER, 12),
])
def test_separators_parse_to_the_intended_structure(text, kind, value):
    answer = parse_answer(text)
    assert answer.kind is kind
    got = tuple(int(item.value) for item in answer.value) if isinstance(value, tuple) else int(answer.value)
    assert got == value


def test_normalised_spellings():
    assert normalize(r"11,\! 111,\! 111,\! 100") == "11111111100"
    assert normalize(r"\$1,\!234.50") == "1234.50"
    assert normalize(r"5\text{ cm}^2") == "5"
    assert normalize(r"\mathrm{e}^{2}") == "e^{2}"  # text kept: its power stays
    assert normalize(r"\begin{pmatrix} 1 \\ 234 \end{pmatrix}") == r"\begin{pmatrix} 1 \\ 234 \end{pmatrix}"


SEPARATORS = ["", ",\\!", ", \\!", "{,}", "\\,", "\\ ", "\\;", ","]
PREFIXES = ["", "\\$", "$"]
SUFFIXES = ["", "\\%", "%", "^\\circ", "^{\\circ}", "\\degree", "\\text{ cm}", " \\mbox{ inches}^2", "\\mathrm{~m}",
            "\\text{ dollars}"]


def _spell(value: int, separator: str) -> str:
    digits = str(abs(value))
    head = len(digits) % 3 or 3
    grouped = separator.join([digits[:head]] + [digits[k:k + 3] for k in range(head, len(digits), 3)])
    return ("-" if value < 0 else "") + grouped


@settings(max_examples=300, deadline=None, database=None)
@given(value=st.integers(-10**12, 10**12), cents=st.sampled_from(["", ".5", ".25", ".05"]),
       separator=st.sampled_from(SEPARATORS), prefix=st.sampled_from(PREFIXES), suffix=st.sampled_from(SUFFIXES))
def test_any_spelling_of_a_number_is_that_number(value, cents, separator, prefix, suffix):
    """A number written with any separator, sign and unit equals its plain digits, and not its neighbour's."""
    plain = str(value) + cents
    spelled = prefix + _spell(value, separator) + cents + suffix
    assert judge(spelled, plain).correct and judge(plain, spelled).correct, (spelled, plain)
    neighbour = str(value + 1) + cents
    assert not judge(spelled, neighbour).correct and not judge(neighbour, spelled).correct, (spelled, neighbour)


@settings(max_examples=60, deadline=None, database=None)
@given(mantissa=st.integers(1, 999), point=st.integers(0, 2), exponent=st.integers(-30, 30),
       form=st.sampled_from(["{m}e{e}", "{m}E{e}", "{m}\\times10^{{{e}}}", "{m} \\times 10^{{{e}}}",
                             "{m}\\cdot 10^{{{e}}}"]))
def test_scientific_notation_is_the_exact_value(mantissa, point, exponent, form):
    digits = str(mantissa).rjust(point + 1, "0")
    written = f"{digits[:len(digits) - point]}.{digits[len(digits) - point:]}" if point else digits
    spelled = form.format(m=written, e=exponent)
    exact = f"\\frac{{{mantissa * 10 ** max(exponent - point, 0)}}}{{{10 ** max(point - exponent, 0)}}}"
    assert judge(spelled, exact).correct and judge(exact, spelled).correct, (spelled, exact)
    assert not judge(spelled, f"{exact} + 10^{{{exponent - point - 1}}}").correct


def _references() -> list[str]:
    return [json.loads(line)["answer"] for line in FIXTURE.read_text().splitlines()]


def test_reformatters_change_only_what_they_name():
    assert variants(r"10,\!080")["separators removed"] == "10080"
    assert variants("2220")["thousands ,\\!"] == r"2,\!220"
    assert variants("13535")["thousands {,}"] == "13{,}535"
    assert "thousands ," not in variants("(2220, 1)")  # a plain comma there would make a triple
    assert variants("1011_2") == {}  # a base subscript: no separator, no unit
    assert variants("4.5e33")["scientific"] == r"4.5\times10^{33}"
    assert variants(r"\dfrac{17}{50}")["\\frac"] == r"\frac{17}{50}"
    assert variants(r"x \in [-2,7]")["spaces removed"] == r"x\in[-2,7]"


@pytest.mark.slow
def test_reference_answers_equal_themselves_reformatted():
    references = _references()
    failures, checked = [], 0
    for answer in references:
        for name, variant in variants(answer).items():
            checked += 1
            if not (judge(variant, answer).correct and judge(answer, variant).correct):
                failures.append((name, answer, variant))
    assert checked >= 2 * len(references) and not failures, failures
    # The negative control: each variant against the next reference (all differ) is never equal.
    wrong = [(variant, other) for answer, other in zip(references, references[1:] + references[:1])
             for variant in variants(answer).values() if judge(variant, other).correct]
    assert not wrong, wrong
    assert set(REWRITES) == {name for answer in references for name in variants(answer)}  # each rewrite used
