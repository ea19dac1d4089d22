"""Probability and combinatorics: counting, dice, and drawing without replacement (DeepMind
`probability__swr_p_sequence` / `probability__swr_p_level_set`, generated natively)."""
from __future__ import annotations

import itertools
import math
import random
from collections import Counter
from fractions import Fraction

from jaxmath.data.generators.base import Problem, latex_number, plain_number, register

_LETTERS = "abcdefghijklmnopqrstuvwxyz"


def _bag(rng: random.Random) -> Counter[str]:
    """A bag of 2-4 letter kinds with 1-6 copies each."""
    kinds = rng.sample(_LETTERS, rng.randint(2, 4))
    return Counter({kind: rng.randint(1, 6) for kind in kinds})


def _describe(bag: Counter[str]) -> str:
    return "{" + ", ".join(f"{kind}: {count}" for kind, count in sorted(bag.items())) + "}"


def _sequence_probability(bag: Counter[str], sequence: str) -> Fraction:
    """P(drawing `sequence` in order without replacement from `bag`)."""
    left, total, p = Counter(bag), sum(bag.values()), Fraction(1)
    for letter in sequence:
        p *= Fraction(left[letter], total)
        left[letter] -= 1
        total -= 1
    return p


@register("probability__swr_p_sequence", "probability")
def swr_p_sequence(rng: random.Random) -> Problem:
    bag = _bag(rng)
    length = rng.randint(2, min(4, sum(bag.values())))
    sequence = "".join(rng.sample(sorted(bag.elements()), length))
    value = _sequence_probability(bag, sequence)
    question = (f"{length} letters are picked without replacement from {_describe(bag)}. "
                f"What is the probability of the sequence {sequence}?")
    return Problem(question, latex_number(value), plain_number(value), params={"bag": dict(bag)})


@register("probability__swr_p_level_set", "probability")
def swr_p_level_set(rng: random.Random) -> Problem:
    bag = _bag(rng)
    length = rng.randint(2, min(4, sum(bag.values())))
    wanted = Counter(rng.sample(sorted(bag.elements()), length))
    value = sum((_sequence_probability(bag, "".join(order)) for order in set(itertools.permutations(wanted.elements()))),
                Fraction(0))
    counts = ", ".join(f"{count} {kind}" for kind, count in sorted(wanted.items()))
    question = (f"{length} letters are picked without replacement from {_describe(bag)}. "
                f"What is the probability of picking {counts}?")
    return Problem(question, latex_number(value), plain_number(value), params={"bag": dict(bag)})


@register("probability__dice", "probability")
def dice(rng: random.Random) -> Problem:
    count, sides = rng.choice([(2, 6), (2, 6), (3, 6), (2, 4), (2, 8)])
    rolls = [sum(roll) for roll in itertools.product(range(1, sides + 1), repeat=count)]
    hits = 0
    while not 0 < hits < len(rolls):  # redraw certain and impossible events
        target = rng.randint(count, count * sides)
        relation = rng.choice(["equal to", "at least", "at most"])
        test = {"equal to": target.__eq__, "at least": target.__le__, "at most": target.__ge__}[relation]
        hits = sum(1 for total in rolls if test(total))
    value = Fraction(hits, sides ** count)
    question = (f"{count} fair {sides}-sided dice are rolled. What is the probability that the sum is "
                f"{relation} {target}?")
    return Problem(question, latex_number(value), plain_number(value))


@register("combinatorics__counting", "combinatorics")
def counting(rng: random.Random) -> Problem:
    kind = rng.randrange(3)
    if kind == 0:
        total = rng.randint(4, 20)
        pick = rng.randint(1, total - 1)
        value = math.comb(total, pick)
        question = f"In how many ways can a committee of {pick} be chosen from {total} people?"
        solution = f"C({total}, {pick}) = {total}! / ({pick}! * {total - pick}!) = {value}"
    elif kind == 1:
        total = rng.randint(4, 12)
        pick = rng.randint(1, min(5, total))
        value = math.perm(total, pick)
        question = f"In how many ways can the first {pick} places of a race with {total} runners be filled (no ties)?"
        solution = f"P({total}, {pick}) = {total}! / {total - pick}! = {value}"
    else:
        word = "".join(rng.choice("aabbcdeeilmnorst") for _ in range(rng.randint(4, 8)))
        value = math.factorial(len(word))
        for repeat in Counter(word).values():
            value //= math.factorial(repeat)
        question = f"How many distinct arrangements of the letters of the word {word.upper()} are there?"
        solution = None
    return Problem(question, str(value), str(value), solution)
