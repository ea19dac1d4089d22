"""Algebra: linear equations and systems, quadratics, inequalities, sequences and polynomials
(DeepMind `algebra__*` and `polynomials__*` families, generated natively with sympy)."""
from __future__ import annotations

import random
from fractions import Fraction

import sympy

from jaxmath.data.generators.base import Problem, latex, nonzero, number_list, register

x, n = sympy.symbols("x n")
GE, LE = "\\ge", "\\le"
_VARIABLES = sympy.symbols("a b c d f g h k m p q r s t u v w y z")


def _poly(rng: random.Random, var: sympy.Symbol, degree: int, bound: int = 9) -> sympy.Expr:
    """A random integer polynomial of exactly `degree` in `var`."""
    coeffs = [nonzero(rng, -bound, bound)] + [rng.randint(-bound, bound) for _ in range(degree)]
    return sympy.Add(*(c * var ** (degree - i) for i, c in enumerate(coeffs)))


@register("algebra__linear_1d", "algebra")
def linear_1d(rng: random.Random) -> Problem:
    var = rng.choice(_VARIABLES)
    root = rng.randint(-20, 20)
    a, c = nonzero(rng, -12, 12), rng.randint(-12, 12)
    if a == c:
        c += 1
    b = rng.randint(-50, 50)
    d = (a - c) * root + b  # a*v + b = c*v + d holds at v = root
    equation = sympy.Eq(a * var + b, c * var + d)
    solution = (f"Collect the {var} terms: {a - c}*{var} = {d - b}, so {var} = {d - b}/{a - c} = "
                f"<<{d - b}/{a - c}={root}>>{root}.")
    return Problem(f"Solve ${latex(equation)}$ for ${var}$.", str(root), str(root), solution,
                   params={"a": a, "b": b, "c": c, "d": d})


@register("algebra__linear_2d", "algebra")
def linear_2d(rng: random.Random) -> Problem:
    u, v = rng.sample(_VARIABLES, 2)
    while True:
        a, b, c, d = (nonzero(rng, -9, 9) for _ in range(4))
        if a * d - b * c != 0:
            break
    su, sv = rng.randint(-15, 15), rng.randint(-15, 15)
    first, second = sympy.Eq(a * u + b * v, a * su + b * sv), sympy.Eq(c * u + d * v, c * su + d * sv)
    asked, value = (u, su) if rng.random() < 0.5 else (v, sv)
    question = f"Solve ${latex(first)}$ and ${latex(second)}$ for ${asked}$."
    return Problem(question, str(value), str(value), params={"coefficients": [a, b, c, d], "solution": [su, sv]})


@register("algebra__polynomial_roots", "algebra")
def polynomial_roots(rng: random.Random) -> Problem:
    """Quadratics (sometimes cubics) with rational roots, given expanded; the answer lists the roots."""
    degree = 2 if rng.random() < 0.75 else 3
    roots = [Fraction(rng.randint(-9, 9), rng.choice([1, 1, 1, 2, 3])) for _ in range(degree)]
    scale = nonzero(rng, -4, 4)
    poly = sympy.expand(scale * sympy.Mul(*((x - sympy.Rational(r.numerator, r.denominator)) for r in roots)))
    poly = sympy.expand(poly * sympy.lcm([sympy.Rational(c).q for c in sympy.Poly(poly, x).all_coeffs()]))
    distinct = sorted(set(roots))
    answer, reference = number_list(distinct)
    question = f"Find all real solutions of ${latex(sympy.Eq(poly, 0))}$. List them separated by commas."
    return Problem(question, answer, reference, f"Factor: ${latex(sympy.factor(poly))} = 0$.",
                   params={"roots": [str(r) for r in distinct]})


@register("algebra__inequality", "algebra")
def inequality(rng: random.Random) -> Problem:
    """Linear inequalities a*x + b (op) c*x + d; the answer is an interval."""
    a, c = nonzero(rng, -9, 9), rng.randint(-9, 9)
    if a == c:
        c += 1
    bound = Fraction(rng.randint(-20, 20), rng.choice([1, 1, 2, 3]))
    b = rng.randint(-20, 20)
    d = sympy.Rational(bound.numerator, bound.denominator) * (a - c) + b
    if d.q != 1:  # keep the printed coefficients integral
        return inequality(rng)
    op = rng.choice(["<", "<=", ">", ">="])
    relation = sympy.sympify(f"{a}*x + {b} {op} {c}*x + {d}")
    solved = sympy.solve_univariate_inequality(relation, x, relational=False)
    return Problem(f"Solve the inequality ${latex(relation)}$. Give the solution set in interval notation.",
                   latex(solved), _as_relation(solved), params={"bound": str(bound)})


def _as_relation(interval: sympy.Interval) -> str:
    """A half-line interval written as an inequality in x (`(3, oo)` -> `x > 3`), the reference form."""
    if interval.end == sympy.oo:
        return f"x {'>' if interval.left_open else GE} {latex(interval.start)}"
    return f"x {'<' if interval.right_open else LE} {latex(interval.end)}"


@register("algebra__sequence_next_term", "algebra")
def sequence_next_term(rng: random.Random) -> Problem:
    formula = _poly(rng, n, rng.choice([1, 1, 2, 3]), bound=6)
    terms = [int(formula.subs(n, k)) for k in range(1, rng.randint(4, 6) + 1)]
    following = int(formula.subs(n, len(terms) + 1))
    return Problem(f"What comes next: {', '.join(map(str, terms))}?", str(following), str(following),
                   params={"formula": str(formula)})


@register("algebra__sequence_nth_term", "algebra")
def sequence_nth_term(rng: random.Random) -> Problem:
    formula = _poly(rng, n, rng.choice([1, 2]), bound=6)
    terms = [int(formula.subs(n, k)) for k in range(1, 6)]
    reference = latex(sympy.horner(formula, n)) if sympy.degree(formula, n) > 1 else latex(formula)
    return Problem(f"What is the $n$-th term of the sequence {', '.join(map(str, terms))}?",
                   latex(formula), reference)


@register("polynomials__expand", "polynomials")
def expand(rng: random.Random) -> Problem:
    factors = [_poly(rng, x, rng.choice([1, 1, 2]), bound=5) for _ in range(rng.randint(2, 3))]
    product = sympy.Mul(*factors, evaluate=False)
    expanded = sympy.expand(product)
    question = f"Expand ${' '.join('(' + latex(f) + ')' for f in factors)}$."
    return Problem(question, latex(expanded), latex(sympy.factor(expanded)))


@register("polynomials__evaluate", "polynomials")
def evaluate_polynomial(rng: random.Random) -> Problem:
    name = rng.choice("fghpq")
    poly = _poly(rng, x, rng.randint(1, 3), bound=7)
    at = rng.randint(-6, 6)
    value = int(poly.subs(x, at))
    return Problem(f"Let ${name}(x) = {latex(poly)}$. What is ${name}({at})$?", str(value), str(value))


@register("polynomials__coefficient_named", "polynomials")
def coefficient_named(rng: random.Random) -> Problem:
    product = sympy.expand(_poly(rng, x, 1, bound=6) * _poly(rng, x, rng.choice([1, 2]), bound=6))
    degree = sympy.degree(product, x)
    power = rng.randint(0, degree)
    value = sympy.Poly(product, x).coeff_monomial(x ** power)
    factored = sympy.factor(product)
    names = "abcd"[: degree + 1]
    form = " + ".join(f"{names[i]} x^{{{degree - i}}}" if degree - i > 1 else f"{names[i]} x" if degree - i == 1
                      else names[i] for i in range(degree + 1))
    asked = names[degree - power]
    question = f"Express ${latex(factored)}$ in the form ${form}$ and give ${asked}$."
    return Problem(question, str(value), str(value))


@register("polynomials__compose", "polynomials")
def compose(rng: random.Random) -> Problem:
    outer, inner = _poly(rng, x, rng.choice([1, 2]), bound=5), _poly(rng, x, 1, bound=5)
    composed = sympy.expand(outer.subs(x, inner))
    question = f"Let $f(x) = {latex(outer)}$ and $g(x) = {latex(inner)}$. Find $f(g(x))$ in expanded form."
    return Problem(question, latex(composed), latex(sympy.factor(composed)))
