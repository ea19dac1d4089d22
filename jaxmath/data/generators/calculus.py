"""Calculus: derivatives (DeepMind `calculus__differentiate`), definite integrals and limits, exact via sympy."""
from __future__ import annotations

import random

import sympy

from jaxmath.data.generators.base import Problem, latex, latex_number, nonzero, plain_number, register

x = sympy.Symbol("x")


def _term(rng: random.Random) -> sympy.Expr:
    """One differentiable building block: a monomial, a scaled sin/cos/exp/log of a linear argument."""
    c, k = nonzero(rng, -6, 6), nonzero(rng, -4, 4)
    return rng.choice([
        lambda: c * x ** rng.randint(1, 6),
        lambda: c * sympy.sin(k * x),
        lambda: c * sympy.cos(k * x),
        lambda: c * sympy.exp(k * x),
        lambda: c * sympy.log(abs(k) * x),
        lambda: c * x ** rng.randint(1, 3) * sympy.exp(k * x),
    ])()


@register("calculus__differentiate", "calculus")
def differentiate(rng: random.Random) -> Problem:
    order = 1 if rng.random() < 0.8 else 2
    expr = sympy.Add(*(_term(rng) for _ in range(rng.randint(1, 3))))
    derivative = sympy.diff(expr, x, order)
    which = "derivative" if order == 1 else "second derivative"
    return Problem(f"Find the {which} of ${latex(expr)}$ with respect to $x$.",
                   latex(derivative), latex(sympy.expand(derivative)), params={"order": order})


@register("calculus__definite_integral", "calculus")
def definite_integral(rng: random.Random) -> Problem:
    degree = rng.randint(1, 3)
    integrand = sympy.Add(*(rng.randint(-6, 6) * x ** k for k in range(degree + 1)))
    if integrand == 0:
        integrand = nonzero(rng, -6, 6) * x
    lo = rng.randint(-4, 3)
    hi = rng.randint(lo + 1, 5)
    value = sympy.integrate(integrand, (x, lo, hi))
    antiderivative = sympy.integrate(integrand, x)
    solution = (f"An antiderivative is $F(x) = {latex(antiderivative)}$, so the integral is "
                f"$F({hi}) - F({lo}) = {latex_number(value)}$.")
    return Problem(f"Evaluate $\\int_{{{lo}}}^{{{hi}}} \\left({latex(integrand)}\\right)\\, dx$.",
                   latex_number(value), plain_number(value), solution)


@register("calculus__limit", "calculus")
def limit(rng: random.Random) -> Problem:
    """Removable singularities, ratios at infinity and sin(ax)/(bx) at 0: each limit finite and rational."""
    kind = rng.randrange(3)
    if kind == 0:
        a, b, c = rng.randint(-6, 6), nonzero(rng, -5, 5), rng.randint(-9, 9)
        numerator = sympy.expand((x - a) * (b * x + c))
        expr, point = numerator / (x - a), a
    elif kind == 1:
        degree = rng.randint(1, 3)
        top = sympy.Add(*(nonzero(rng, -9, 9) * x ** k for k in range(degree + 1)))
        bottom = sympy.Add(*(nonzero(rng, -9, 9) * x ** k for k in range(degree + 1)))
        expr, point = top / bottom, sympy.oo
    else:
        a, b = nonzero(rng, -7, 7), nonzero(rng, -7, 7)
        expr, point = sympy.sin(a * x) / (b * x), 0
    value = sympy.limit(expr, x, point)
    return Problem(f"Compute $\\lim_{{x \\to {latex(point)}}} {latex(expr)}$.", latex_number(value), plain_number(value))
