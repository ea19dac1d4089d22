"""The strategies by name: each maps (toolkit, questions) to one SolveResult per question."""
from __future__ import annotations

from typing import Callable, Sequence

from jaxmath.solve.context import Toolkit
from jaxmath.solve.program import pot
from jaxmath.solve.result import SolveResult
from jaxmath.solve.search import beam
from jaxmath.solve.tree import tree
from jaxmath.solve.whole import best_of_n, cot, self_consistency

Strategy = Callable[[Toolkit, Sequence[str]], list[SolveResult]]
STRATEGY_FUNCTIONS: dict[str, Strategy] = {"cot": cot, "pot": pot, "self_consistency": self_consistency,
                                           "best_of_n": best_of_n, "beam": beam, "tree": tree}
