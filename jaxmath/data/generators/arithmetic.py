"""Arithmetic, fractions and percentages, comparison and unit conversion (DeepMind `arithmetic__*`,
`comparison__*`, `measurement__conversion` families, generated natively)."""
from __future__ import annotations

import random
from fractions import Fraction

from jaxmath.data.generators.base import (
    Problem, decimal_text, latex_number, nonzero, ordinal, plain_number, register)


def _operand(rng: random.Random, decimals: bool) -> Fraction:
    """An integer in [-999, 999], or a one/two-decimal number when `decimals`."""
    if decimals:
        places = rng.choice([1, 2])
        return Fraction(rng.randint(-9999, 9999), 10 ** places)
    return Fraction(rng.randint(-999, 999))


def _text(value: Fraction) -> str:
    """A terminating rational written as a decimal (`-3.25`), an integer as itself."""
    if value.denominator == 1:
        return str(value.numerator)
    places = next((p for p in range(1, 19) if (value * 10 ** p).denominator == 1), None)
    if places is None:
        raise ValueError(f"{value} has no short terminating decimal form")
    return decimal_text(float(value), places)


def _paren(value: Fraction) -> str:
    return f"({_text(value)})" if value < 0 else _text(value)


@register("arithmetic__add_or_sub", "arithmetic")
def add_or_sub(rng: random.Random) -> Problem:
    decimals = rng.random() < 0.4
    a, b = _operand(rng, decimals), _operand(rng, decimals)
    if rng.random() < 0.5:
        question, value = rng.choice(["What is {a} + {b}?", "Add {a} and {b}.", "Calculate {a} + {b}."]), a + b
        line = f"{_text(a)} + {_paren(b)} = <<{_text(a)}+{_paren(b)}={_text(value)}>>{_text(value)}"
    else:
        question, value = rng.choice(["What is {a} - {b}?", "Subtract {b} from {a}.", "Calculate {a} - {b}."]), a - b
        line = f"{_text(a)} - {_paren(b)} = <<{_text(a)}-{_paren(b)}={_text(value)}>>{_text(value)}"
    return Problem(question.format(a=_text(a), b=_paren(b)), _text(value), plain_number(value), line)


def _column_sum(rng: random.Random, high: int) -> Problem:
    """a + b worked column by column (units, then tens with the carry), as a person does it on paper."""
    a, b = rng.randint(0, high), rng.randint(0, high)
    question = rng.choice(["What is {a} + {b}?", "Add {a} and {b}.", "Calculate {a} + {b}."])
    units = a % 10 + b % 10
    lines = [f"Units: {a % 10} + {b % 10} = <<{a % 10}+{b % 10}={units}>>{units}"]
    if high > 9:
        ta, tb, carry = a // 10, b // 10, units // 10
        tens = ta + tb + carry
        lines.append(f"Tens: {ta} + {tb} + {carry} = <<{ta}+{tb}+{carry}={tens}>>{tens}")
    lines.append(f"{a} + {b} = <<{a}+{b}={a + b}>>{a + b}")
    return Problem(question.format(a=a, b=b), str(a + b), str(a + b), "\n".join(lines))


@register("arithmetic__add_small", "arithmetic")
def add_small(rng: random.Random) -> Problem:
    """Two-digit addition (0-99 + 0-99) in columns: learnable by a tiny model in minutes (the demo's task)."""
    return _column_sum(rng, 99)


@register("arithmetic__add_digits", "arithmetic")
def add_digits(rng: random.Random) -> Problem:
    """One-digit addition (0-9 + 0-9): the quickest curriculum, for tests of the training loops."""
    return _column_sum(rng, 9)


@register("arithmetic__mul", "arithmetic")
def mul(rng: random.Random) -> Problem:
    decimals = rng.random() < 0.3
    a = _operand(rng, decimals) if decimals else Fraction(rng.randint(-99, 99))
    b = Fraction(nonzero(rng, -99, 99)) if not decimals else Fraction(nonzero(rng, -99, 99), 10)
    value = a * b
    question = rng.choice(["What is {a} times {b}?", "Multiply {a} and {b}.", "Calculate {a} * {b}."])
    line = f"{_text(a)} * {_paren(b)} = <<{_text(a)}*{_paren(b)}={_text(value)}>>{_text(value)}"
    return Problem(question.format(a=_text(a), b=_paren(b)), _text(value), plain_number(value), line)


@register("arithmetic__div", "arithmetic")
def div(rng: random.Random) -> Problem:
    b = nonzero(rng, -60, 60)
    quotient = rng.randint(-300, 300)
    a = b * quotient
    question = rng.choice(["What is {a} divided by {b}?", "Divide {a} by {b}.", "Calculate {a} / {b}."])
    line = f"{a} / {b} = <<{a}/{b}={quotient}>>{quotient}"
    return Problem(question.format(a=a, b=f"({b})" if b < 0 else b), str(quotient), str(quotient), line)


def _expression(rng: random.Random, depth: int) -> tuple[str, Fraction]:
    """A random + - * / expression over small integers with its exact value (no division by zero)."""
    if depth == 0:
        value = rng.randint(-12, 12)
        return (f"({value})" if value < 0 else str(value)), Fraction(value)
    left, lv = _expression(rng, depth - 1)
    right, rv = _expression(rng, rng.randint(0, depth - 1))
    op = rng.choice("+-*/" if rv != 0 else "+-*")
    value = {"+": lv + rv, "-": lv - rv, "*": lv * rv, "/": lv / rv if rv else None}[op]
    return f"({left} {op} {right})", value


@register("arithmetic__mixed", "arithmetic")
def mixed(rng: random.Random) -> Problem:
    text, value = _expression(rng, rng.randint(2, 3))
    text = text[1:-1] if text.startswith("(") and text.endswith(")") else text
    return Problem(f"Evaluate {text}.", latex_number(value), plain_number(value),
                   params={"expression": text})


@register("arithmetic__nearest_integer_root", "arithmetic")
def nearest_integer_root(rng: random.Random) -> Problem:
    degree = rng.choice([2, 3])
    n = rng.randint(2, 10 ** (4 if degree == 2 else 6))
    root = round(n ** (1 / degree))
    root = min((root - 1, root, root + 1), key=lambda r: abs(r ** degree - n))  # exact nearest, no float drift
    name = {2: "square", 3: "cube"}[degree]
    return Problem(f"What is the {name} root of {n} to the nearest integer?", str(root), str(root),
                   params={"n": n, "degree": degree})


@register("fractions", "fractions")
def fractions_(rng: random.Random) -> Problem:
    a = Fraction(nonzero(rng, -12, 12), rng.randint(2, 12))
    b = Fraction(nonzero(rng, -12, 12), rng.randint(2, 12))
    op = rng.choice(["+", "-", "\\times", "\\div"])
    value = {"+": a + b, "-": a - b, "\\times": a * b, "\\div": a / b}[op]
    question = f"Compute ${latex_number(a)} {op} {'(' + latex_number(b) + ')' if b < 0 else latex_number(b)}$ " \
               f"and give the answer as a fraction in lowest terms."
    return Problem(question, latex_number(value), plain_number(value), params={"a": str(a), "b": str(b), "op": op})


@register("percentages", "fractions")
def percentages(rng: random.Random) -> Problem:
    kind = rng.randrange(3)
    if kind == 0:
        pct, base = rng.randint(1, 40) * 5, rng.randint(1, 60) * 20
        value = Fraction(pct * base, 100)
        question = f"What is {pct}% of {base}?"
        solution = f"{pct}% of {base} is {pct}/100 * {base} = <<{pct}/100*{base}={_text(value)}>>{_text(value)}."
    elif kind == 1:
        price, pct = rng.randint(4, 200) * 5, rng.choice([5, 10, 12, 15, 20, 25, 30, 40, 50])
        up = rng.random() < 0.5
        value = Fraction(price * (100 + pct if up else 100 - pct), 100)
        question = (f"An item costs ${price}. Its price is {'raised' if up else 'cut'} by {pct}%. "
                    f"What is the new price in dollars?")
        factor = f"{100 + pct if up else 100 - pct}/100"
        solution = f"The new price is {price} * {factor} = <<{price}*{factor}={_text(value)}>>{_text(value)} dollars."
    else:
        base = rng.randint(1, 25) * 20
        part = base // 20 * rng.randint(1, 19)
        value = Fraction(part * 100, base)
        question = f"What percent of {base} is {part}?"
        solution = f"{part}/{base} * 100 = <<{part}/{base}*100={_text(value)}>>{_text(value)} percent."
    return Problem(question, _text(value), plain_number(value), solution)


def _numbers(rng: random.Random, count: int) -> list[Fraction]:
    """Distinct mixed integers, decimals and simple fractions to compare."""
    values: set[Fraction] = set()
    while len(values) < count:
        kind = rng.randrange(3)
        values.add(Fraction(rng.randint(-20, 20)) if kind == 0 else
                   Fraction(rng.randint(-99, 99), 10) if kind == 1 else Fraction(nonzero(rng, -9, 9), rng.randint(2, 9)))
    return rng.sample(sorted(values), count)


def _shown(value: Fraction) -> str:
    """How a comparison item is written: integer, decimal (tenths) or a/b."""
    return _text(value) if (value * 10).denominator == 1 else f"{value.numerator}/{value.denominator}"


@register("comparison__kth_biggest", "comparison")
def kth_biggest(rng: random.Random) -> Problem:
    values = _numbers(rng, rng.randint(3, 6))
    k = rng.randint(1, len(values))
    biggest = rng.random() < 0.5
    chosen = sorted(values, reverse=biggest)[k - 1]
    word = "biggest" if biggest else "smallest"
    question = f"What is the {ordinal(k)} {word} value in {', '.join(_shown(v) for v in values)}?"
    return Problem(question, latex_number(chosen), plain_number(chosen))


@register("comparison__closest", "comparison")
def closest(rng: random.Random) -> Problem:
    while True:
        target, *values = _numbers(rng, rng.randint(4, 6))
        distances = sorted(abs(v - target) for v in values)
        if distances[0] != distances[1]:
            break
    chosen = min(values, key=lambda v: abs(v - target))
    question = f"Which is the nearest to {_shown(target)}? Choose from {', '.join(_shown(v) for v in values)}."
    return Problem(question, latex_number(chosen), plain_number(chosen))


@register("comparison__sort", "comparison")
def sort(rng: random.Random) -> Problem:
    values = _numbers(rng, rng.randint(3, 6))
    descending = rng.random() < 0.5
    ordered = sorted(values, reverse=descending)
    question = f"Sort {', '.join(_shown(v) for v in values)} in {'de' if descending else 'in'}creasing order."
    return Problem(question, ", ".join(latex_number(v) for v in ordered), ", ".join(plain_number(v) for v in ordered))


_UNITS = {  # quantity -> unit -> size in the base unit
    "length": {"millimetres": Fraction(1, 1000), "centimetres": Fraction(1, 100), "metres": Fraction(1),
               "kilometres": Fraction(1000)},
    "mass": {"milligrams": Fraction(1, 1000), "grams": Fraction(1), "kilograms": Fraction(1000),
             "tonnes": Fraction(1000000)},
    "volume": {"millilitres": Fraction(1, 1000), "litres": Fraction(1)},
    "time": {"seconds": Fraction(1), "minutes": Fraction(60), "hours": Fraction(3600), "days": Fraction(86400)},
}


@register("measurement__conversion", "measurement")
def conversion(rng: random.Random) -> Problem:
    quantity = rng.choice(sorted(_UNITS))
    source, target = rng.sample(sorted(_UNITS[quantity]), 2)
    amount = Fraction(rng.randint(1, 999), rng.choice([1, 10, 100]))
    value = amount * _UNITS[quantity][source] / _UNITS[quantity][target]
    question = f"How many {target} are there in {_text(amount)} {source}?"
    answer = _text(value) if (value * 10 ** 12).denominator == 1 else latex_number(value)
    return Problem(question, answer, plain_number(value))
