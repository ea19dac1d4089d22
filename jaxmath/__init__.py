"""jaxmath: train math-reasoning language models in JAX.

Top-level names load lazily, so light users (the verifier's worker processes, `jaxmath.verify`) do not
pay for importing jax.
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "ModelConfig": "jaxmath.models",
    "convert_hf_to_jax": "jaxmath.checkpoint",
    "export_to_hf": "jaxmath.checkpoint",
    "from_pretrained": "jaxmath.checkpoint",
    "generate": "jaxmath.inference.sampler",
    "GenerationOutput": "jaxmath.inference.sampler",
    "MathSolver": "jaxmath.solve",
    "SolveResult": "jaxmath.solve",
}

__all__ = sorted(_EXPORTS)
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'jaxmath' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
