"""Linear algebra: determinants, inverses and eigenvalues of small integer matrices, exact via sympy."""
from __future__ import annotations

import random

import numpy as np
import sympy

from jaxmath.data.generators.base import Problem, latex_number, nonzero, number_list, register


def _pmatrix(matrix: sympy.Matrix) -> str:
    """A matrix as `\\begin{pmatrix} ... \\end{pmatrix}` with exact entries."""
    rows = [" & ".join(latex_number(v) for v in matrix.row(i)) for i in range(matrix.rows)]
    return "\\begin{pmatrix} " + " \\\\ ".join(rows) + " \\end{pmatrix}"


def _unimodular(rng: random.Random, size: int) -> sympy.Matrix:
    """An integer matrix with determinant +-1 (unit lower times unit upper triangular, rows permuted)."""
    lower = sympy.eye(size)
    upper = sympy.eye(size)
    for i in range(size):
        for j in range(i):
            lower[i, j] = rng.randint(-2, 2)
            upper[j, i] = rng.randint(-2, 2)
    order = list(range(size))
    rng.shuffle(order)
    return (lower * upper).extract(order, list(range(size)))


@register("linear_algebra__determinant", "linear_algebra")
def determinant(rng: random.Random) -> Problem:
    size = rng.choice([2, 3, 3])
    matrix = sympy.Matrix(size, size, [rng.randint(-9, 9) for _ in range(size * size)])
    value = int(matrix.det())
    numeric = int(round(float(np.linalg.det(np.array(matrix.tolist(), dtype=float)))))
    return Problem(f"Compute the determinant of ${_pmatrix(matrix)}$.", str(value), str(numeric),
                   params={"matrix": [[int(v) for v in row] for row in matrix.tolist()]})


@register("linear_algebra__inverse", "linear_algebra")
def inverse(rng: random.Random) -> Problem:
    size = rng.choice([2, 2, 3])
    scale = sympy.diag(*[nonzero(rng, -3, 3) for _ in range(size)])
    matrix = _unimodular(rng, size) * scale
    inv = matrix.inv()
    return Problem(f"Find the inverse of the matrix ${_pmatrix(matrix)}$.", _pmatrix(inv), sympy.latex(inv),
                   params={"matrix": [[int(v) for v in row] for row in matrix.tolist()]})


@register("linear_algebra__eigenvalues", "linear_algebra")
def eigenvalues(rng: random.Random) -> Problem:
    size = rng.choice([2, 2, 3])
    values = rng.sample(range(-6, 7), size)
    basis = _unimodular(rng, size)
    matrix = basis * sympy.diag(*values) * basis.inv()
    answer, reference = number_list(values)
    return Problem(f"Find the eigenvalues of ${_pmatrix(matrix)}$. List them separated by commas.", answer, reference,
                   params={"matrix": [[int(v) for v in row] for row in matrix.tolist()]})
