"""The generator registry, the `Problem` every generator returns, and number/LaTeX helpers they share.

A generator is a function `rng -> Problem`. `Problem.answer` is what the record stores; `Problem.reference`
is the same value written another way (plain fraction, another sympy form, another order). `generate` keeps
a problem only when `jaxmath.verify.is_equivalent(answer, reference)` agrees, so every stored answer is one
the verifier grades.
"""
from __future__ import annotations

import dataclasses
import random
import warnings
from fractions import Fraction
from typing import Any, Callable

import sympy

from jaxmath.data.schema import Record


@dataclasses.dataclass(frozen=True)
class Problem:
    """One generated problem: question, stored answer, its independently written reference, optional solution."""

    question: str
    answer: str
    reference: str
    solution: str | None = None
    params: dict[str, Any] = dataclasses.field(default_factory=dict)  # what was drawn; kept in metadata


@dataclasses.dataclass(frozen=True)
class Generator:
    """A registered generator: its name, the module family it belongs to, and the drawing function."""

    name: str
    family: str
    draw: Callable[[random.Random], Problem]


class GeneratorError(RuntimeError):
    """A generator is unknown or cannot produce answers the verifier accepts."""


class GeneratorWarning(UserWarning):
    """Some drawn problems were dropped because the verifier did not accept their answer."""


REGISTRY: dict[str, Generator] = {}


def register(name: str, family: str) -> Callable[[Callable[[random.Random], Problem]], Callable[[random.Random], Problem]]:
    """Decorator adding a drawing function to the registry under `name` (unique)."""
    def add(draw: Callable[[random.Random], Problem]) -> Callable[[random.Random], Problem]:
        if name in REGISTRY:
            raise ValueError(f"generator {name!r} is registered twice")
        REGISTRY[name] = Generator(name, family, draw)
        return draw
    return add


def get_generator(name: str) -> Generator:
    """The generator called `name`; raises GeneratorError listing the known names."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise GeneratorError(f"unknown generator {name!r}; known generators: {sorted(REGISTRY)}") from None


def generate(name: str, n: int, seed: int) -> list[Record]:
    """`n` records from generator `name`, identical for the same seed, each answer accepted by the verifier."""
    from jaxmath.verify import is_equivalent

    generator = get_generator(name)
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    rng = random.Random(f"{name}/{seed}")
    records: list[Record] = []
    rejected: list[Problem] = []
    while len(records) < n:
        problem = generator.draw(rng)
        if not is_equivalent(problem.answer, problem.reference):
            rejected.append(problem)
            if len(rejected) > max(10, n):
                raise GeneratorError(f"generator {name!r}: the verifier rejected {len(rejected)} answers, e.g. "
                                     f"{problem.answer!r} vs reference {problem.reference!r}")
            continue
        records.append(Record(
            id=f"{name}-{seed}-{len(records)}", question=problem.question, answer=problem.answer,
            solution=problem.solution, source=f"synthetic/{generator.family}",
            metadata={"generator": name, "seed": seed, **problem.params}))
    if rejected:
        warnings.warn(f"generator {name!r}: dropped {len(rejected)} problem(s) whose answer the verifier did not "
                      f"accept, e.g. {rejected[0].answer!r} vs {rejected[0].reference!r}", GeneratorWarning)
    return records


# ---- shared helpers -------------------------------------------------------------------------------------

def nonzero(rng: random.Random, lo: int, hi: int) -> int:
    """A uniform integer in [lo, hi] other than 0."""
    while (value := rng.randint(lo, hi)) == 0:
        pass
    return value


def latex_number(value: Fraction | int | sympy.Rational) -> str:
    """An exact rational in LaTeX: `12`, `-\\frac{3}{4}`."""
    value = Fraction(int(sympy.Rational(value).p), int(sympy.Rational(value).q))
    if value.denominator == 1:
        return str(value.numerator)
    sign = "-" if value < 0 else ""
    return f"{sign}\\frac{{{abs(value.numerator)}}}{{{value.denominator}}}"


def plain_number(value: Fraction | int | sympy.Rational) -> str:
    """An exact rational as plain text: `12`, `-3/4` (the reference form of `latex_number`)."""
    value = sympy.Rational(value)
    return str(value.p) if value.q == 1 else f"{value.p}/{value.q}"


def decimal_text(value: float, places: int) -> str:
    """`value` rounded half-away-from-zero to `places` decimals, written with exactly that many."""
    from decimal import ROUND_HALF_UP, Decimal

    return str(Decimal(repr(float(value))).quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_UP))


def latex(expr: sympy.Basic) -> str:
    """sympy's LaTeX for `expr` (the stored answer form)."""
    return sympy.latex(expr)


def number_list(values: list, *, reverse_reference: bool = True) -> tuple[str, str]:
    """An answer listing exact values (`-3, 2`) and its reference in the opposite order (lists are unordered)."""
    ordered = sorted(values, key=lambda v: float(v))
    text = ", ".join(latex_number(v) for v in ordered)
    reference = ", ".join(plain_number(v) for v in (ordered[::-1] if reverse_reference else ordered))
    return text, reference


def ordinal(k: int) -> str:
    """1 -> '1st', 2 -> '2nd', 11 -> '11th'."""
    suffix = "th" if 10 <= k % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(k % 10, "th")
    return f"{k}{suffix}"
