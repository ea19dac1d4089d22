"""Answering questions at inference time: `MathSolver` and its strategies.

    defaults.py    strategy names and default sampling (light: no jax)
    result.py      SolveResult (answer, solution, program run, how chosen, votes / scores, tokens) and to_json
    policy.py      the Policy interface, ModelPolicy over the shared sampler, per-question token budgets
    reading.py     a solution's normalised answer (pot: its program run in the sandbox); when a step ends
    voting.py      answers grouped by the verifier's equivalence; the vote and its PRM tie-break
    context.py     SolveSettings, and the Toolkit every strategy gets (policy, format, comparer, PRM)
    whole.py       cot, self_consistency, best_of_n: strategies over whole sampled solutions
    program.py     pot: the model's program run in the sandbox, repaired from its error for R rounds
    steps.py       continue partial solutions by one step, batched over questions, within budget
    search.py      beam: step-level beam search by PRM prefix score
    tree.py        tree: shallow MCTS-like search (PRM value + exploration bonus)
    strategies.py  the strategies by name
    solver.py      MathSolver: load once, solve one question or a batch

`jaxmath solve` (jaxmath.commands.solve) is the command line; `jaxmath eval --strategy` measures strategies on
benchmarks (jaxmath.evaluation).
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {"MathSolver": "jaxmath.solve.solver", "SolveSettings": "jaxmath.solve.context",
            "SolveResult": "jaxmath.solve.result", "Candidate": "jaxmath.solve.result", "Vote": "jaxmath.solve.result",
            "ProgramRun": "jaxmath.solve.result", "STRATEGIES": "jaxmath.solve.defaults",
            "NEEDS_PRM": "jaxmath.solve.defaults"}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    """Load names on first use, so the command line's `--help` does not import jax."""
    if name not in _EXPORTS:
        raise AttributeError(f"module 'jaxmath.solve' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
