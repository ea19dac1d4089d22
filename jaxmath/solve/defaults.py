"""Names and defaults the command line needs without importing jax: the strategies, which need a PRM, and the
sampling settings a solve uses unless told otherwise."""
from __future__ import annotations

from jaxmath.inference.config import Sampling

STRATEGIES = ("cot", "pot", "self_consistency", "best_of_n", "beam", "tree")  # run by jaxmath.solve.strategies
NEEDS_PRM = ("best_of_n", "beam", "tree")
# what `jaxmath eval --strategy` offers: "sample" is evaluation's own pass@k / maj@k; the rest run through MathSolver
EVAL_STRATEGIES = ("sample", "self_consistency", "best_of_n", "beam", "tree")
DEFAULT_SAMPLING = Sampling(max_new_tokens=1024, temperature=0.7, top_p=0.95)
