"""Synthetic generators: deterministic per seed, answers the verifier grades, values recomputed independently."""
import json
import math
import random
import re
from fractions import Fraction

import numpy as np
import pytest

from jaxmath import verify
from jaxmath.data import generators
from jaxmath.data.generators import base

ALL = generators.generator_names()


def test_registry_covers_every_family_the_issue_names():
    fams = generators.families()
    for family in ("arithmetic", "fractions", "algebra", "polynomials", "calculus", "linear_algebra", "probability",
                   "combinatorics", "numbers", "comparison", "measurement", "technical_analysis"):
        assert family in fams, family
    for name in ("ta__sma", "ta__ema", "ta__rsi", "ta__macd", "ta__bollinger_upper", "ta__atr", "ta__obv",
                 "ta__mfi", "ta__vwap", "algebra__inequality", "calculus__limit", "linear_algebra__eigenvalues"):
        assert name in ALL, name


@pytest.mark.parametrize("name", ALL)
def test_same_seed_same_records_and_answers_grade_correct(name):
    records = generators.generate(name, 3, seed=11)
    assert records == generators.generate(name, 3, seed=11)
    assert records != generators.generate(name, 3, seed=12)
    for record in records:
        assert record.question and record.answer and record.source.startswith("synthetic/")
        assert json.loads(json.dumps(record.to_dict())) == record.to_dict()  # writable as JSONL, losslessly
        assert verify.grade(f"So the answer is $\\boxed{{{record.answer}}}$.", record.answer, style="boxed"), record


def _fraction(text: str) -> Fraction:
    """Parse `12`, `-3.5`, `\\frac{3}{4}` or `-\\frac{3}{4}` (the generators' exact forms)."""
    match = re.fullmatch(r"(-?)\\frac\{(\d+)\}\{(\d+)\}", text.strip())
    if match:
        return Fraction(int(match.group(2)), int(match.group(3))) * (-1 if match.group(1) else 1)
    return Fraction(text)


def _matrix(text: str) -> list[list[Fraction]]:
    body = re.search(r"\\begin\{pmatrix\}(.*)\\end\{pmatrix\}", text).group(1)
    return [[_fraction(cell) for cell in row.split("&")] for row in body.split("\\\\")]


def test_linear_equations_are_satisfied_by_their_answer():
    for record in generators.generate("algebra__linear_1d", 20, seed=3):
        p, root = record.metadata, int(record.answer)
        assert p["a"] * root + p["b"] == p["c"] * root + p["d"]


def test_linear_algebra_answers_match_numpy():
    for record in generators.generate("linear_algebra__determinant", 10, seed=1):
        assert int(record.answer) == round(np.linalg.det(np.array(record.metadata["matrix"], float)))
    for record in generators.generate("linear_algebra__eigenvalues", 10, seed=1):
        expected = sorted(np.linalg.eigvals(np.array(record.metadata["matrix"], float)).real)
        assert np.allclose(sorted(float(_fraction(v)) for v in record.answer.split(",")), expected)
    for record in generators.generate("linear_algebra__inverse", 10, seed=1):
        product = np.array(record.metadata["matrix"], float) @ np.array(_matrix(record.answer), float)
        assert np.allclose(product, np.eye(len(product)))


def test_number_theory_and_arithmetic_answers_match_python():
    for record in generators.generate("numbers__gcd", 10, seed=2):
        assert int(record.answer) == math.gcd(record.metadata["a"], record.metadata["b"])
    for record in generators.generate("numbers__lcm", 10, seed=2):
        assert int(record.answer) == math.lcm(record.metadata["a"], record.metadata["b"])
    for record in generators.generate("arithmetic__mixed", 20, seed=2):
        assert math.isclose(float(_fraction(record.answer)), eval(record.metadata["expression"]), abs_tol=1e-9)


def _ema(values, span):
    alpha, out = 2 / (span + 1), values[0]
    for v in values[1:]:
        out = alpha * v + (1 - alpha) * out
    return out


def test_technical_indicators_match_their_textbook_formulas():
    """Recompute each indicator with numpy from the series kept in the metadata (not with `ta`)."""
    formulas = {
        "ta__sma": lambda m, n: np.mean(m["close"][-n:]),
        "ta__ema": lambda m, n: _ema(m["close"], n),
        "ta__macd": lambda m, n: _ema(m["close"], 12) - _ema(m["close"], 26),
        "ta__bollinger_upper": lambda m, n: np.mean(m["close"][-n:]) + 2 * np.std(m["close"][-n:]),
        "ta__bollinger_lower": lambda m, n: np.mean(m["close"][-n:]) - 2 * np.std(m["close"][-n:]),
        "ta__obv": lambda m, n: m["volume"][0] + sum(v if c >= p else -v for p, c, v in
                                                     zip(m["close"], m["close"][1:], m["volume"][1:])),
        "ta__vwap": lambda m, n: (sum((h + l + c) / 3 * v for h, l, c, v in
                                      list(zip(m["high"], m["low"], m["close"], m["volume"]))[-n:])
                                  / sum(m["volume"][-n:])),
    }
    for name, formula in formulas.items():
        for record in generators.generate(name, 4, seed=5):
            expected = formula(record.metadata, record.metadata.get("window"))
            assert abs(float(record.answer) - expected) <= 0.005 + 1e-9, (name, record.answer, expected)


def test_rsi_matches_wilder_smoothing_from_zero():
    for record in generators.generate("ta__rsi", 4, seed=5):
        close, n = record.metadata["close"], record.metadata["window"]
        gain = loss = 0.0
        for prev, cur in zip(close, close[1:]):
            gain = (gain * (n - 1) + max(cur - prev, 0)) / n
            loss = (loss * (n - 1) + max(prev - cur, 0)) / n
        assert abs(float(record.answer) - (100 - 100 / (1 + gain / loss))) <= 0.005 + 1e-9


def test_a_generator_the_verifier_rejects_fails_loudly(monkeypatch):
    always_wrong = base.Generator("broken", "test", lambda rng: base.Problem("q", "1", "2"))
    monkeypatch.setitem(base.REGISTRY, "broken", always_wrong)
    with pytest.raises(generators.GeneratorError, match="rejected"):
        generators.generate("broken", 2, seed=0)
    flaky = base.Generator("flaky", "test", lambda rng: base.Problem("q", "1", rng.choice(["1", "2"])))
    monkeypatch.setitem(base.REGISTRY, "flaky", flaky)
    with pytest.warns(generators.GeneratorWarning, match="dropped"):
        records = generators.generate("flaky", 5, seed=0)
    assert len(records) == 5


def test_unknown_generator_and_helpers():
    with pytest.raises(generators.GeneratorError, match="unknown generator 'nope'"):
        generators.generate("nope", 1, 0)
    assert generators.generate("numbers__gcd", 0, 0) == []
    assert base.latex_number(Fraction(-3, 4)) == "-\\frac{3}{4}" and base.plain_number(Fraction(6, 3)) == "2"
    assert base.decimal_text(2.675, 2) == "2.68" and base.decimal_text(-0.5, 0) == "-1"
    assert [base.ordinal(k) for k in (1, 2, 3, 4, 11, 12, 21)] == ["1st", "2nd", "3rd", "4th", "11th", "12th", "21st"]
    assert base.nonzero(random.Random(0), -1, 1) in (-1, 1)
