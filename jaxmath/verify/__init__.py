"""Answer verification: extract a completion's final answer and decide whether it equals the reference.

`extract_answer`, `is_equivalent` and `grade` run in the calling process; `Verifier` runs the same
checks in bounded worker processes (time, memory) for training and evaluation.
"""
from jaxmath.verify.equivalence import grade, is_equivalent
from jaxmath.verify.extract import extract_answer
from jaxmath.verify.pool import Verifier
from jaxmath.verify.verdict import Verdict

__all__ = ["Verdict", "Verifier", "extract_answer", "grade", "is_equivalent"]
