"""Number theory: gcd, lcm, remainders, prime factors, place value, rounding, bases, modular powers,
divisor counts (DeepMind `numbers__*` families, generated natively)."""
from __future__ import annotations

import math
import random

import sympy

from jaxmath.data.generators.base import Problem, decimal_text, register


@register("numbers__gcd", "numbers")
def gcd(rng: random.Random) -> Problem:
    common = rng.randint(1, 60)
    a, b = common * rng.randint(1, 80), common * rng.randint(1, 80)
    value = math.gcd(a, b)
    return Problem(f"What is the greatest common divisor of {a} and {b}?", str(value), str(value),
                   params={"a": a, "b": b})


@register("numbers__lcm", "numbers")
def lcm(rng: random.Random) -> Problem:
    a, b = rng.randint(2, 150), rng.randint(2, 150)
    value = math.lcm(a, b)
    return Problem(f"What is the least common multiple of {a} and {b}?", str(value), str(value),
                   params={"a": a, "b": b})


@register("numbers__div_remainder", "numbers")
def div_remainder(rng: random.Random) -> Problem:
    divisor = rng.randint(2, 99)
    dividend = rng.randint(divisor, 100000)
    value = dividend % divisor
    solution = f"{dividend} = {divisor} * {dividend // divisor} + {value}"
    return Problem(f"What is the remainder when {dividend} is divided by {divisor}?", str(value), str(value), solution)


@register("numbers__list_prime_factors", "numbers")
def list_prime_factors(rng: random.Random) -> Problem:
    value = rng.randint(2, 20000)
    primes = sorted(sympy.primefactors(value))
    return Problem(f"List the distinct prime factors of {value}, separated by commas.",
                   ", ".join(map(str, primes)), ", ".join(map(str, reversed(primes))))


@register("numbers__place_value", "numbers")
def place_value(rng: random.Random) -> Problem:
    value = rng.randint(10, 10 ** 7)
    places = ["units", "tens", "hundreds", "thousands", "ten thousands", "hundred thousands", "millions"]
    position = rng.randrange(len(str(value)))
    digit = value // 10 ** position % 10
    return Problem(f"What is the {places[position]} digit of {value}?", str(digit), str(digit))


@register("numbers__round_number", "numbers")
def round_number(rng: random.Random) -> Problem:
    value = rng.randint(-10 ** 7, 10 ** 7) / 1000
    places = rng.choice([-3, -2, -1, 0, 1, 2])
    names = {-3: "thousand", -2: "hundred", -1: "ten", 0: "integer", 1: "one decimal place", 2: "two decimal places"}
    rounded = decimal_text(value, max(places, 0)) if places >= 0 else \
        str(int(decimal_text(value / 10 ** -places, 0)) * 10 ** -places)
    target = f"the nearest {names[places]}" if places <= 0 else names[places]
    return Problem(f"Round {value} to {target}.", rounded, rounded, params={"value": value, "places": places})


def _digits(value: int, base: int) -> str:
    """`value` (>= 0) written in `base` (<= 10)."""
    out = ""
    while True:
        value, digit = divmod(value, base)
        out = str(digit) + out
        if value == 0:
            return out


@register("numbers__base_conversion", "numbers")
def base_conversion(rng: random.Random) -> Problem:
    base = rng.choice([2, 3, 4, 5, 6, 7, 8, 9])
    value = rng.randint(1, 5000)
    if rng.random() < 0.5:
        return Problem(f"Convert {_digits(value, base)} from base {base} to base 10.", str(value), str(value))
    written = _digits(value, base)
    return Problem(f"Write the base-10 number {value} in base {base}. Give just the digits.", written, written,
                   params={"base": base})


@register("numbers__modular_power", "numbers")
def modular_power(rng: random.Random) -> Problem:
    base, exponent, modulus = rng.randint(2, 50), rng.randint(2, 500), rng.randint(3, 97)
    value = pow(base, exponent, modulus)
    return Problem(f"What is the remainder when ${base}^{{{exponent}}}$ is divided by {modulus}?",
                   str(value), str(value))


@register("numbers__divisor_count", "numbers")
def divisor_count(rng: random.Random) -> Problem:
    value = rng.randint(2, 5000)
    count = sum(1 for d in range(1, value + 1) if value % d == 0)
    return Problem(f"How many positive divisors does {value} have?", str(count), str(sympy.divisor_count(value)))
