"""Seedable synthetic problem generators; every stored answer is one `jaxmath.verify` accepts.

    from jaxmath.data.generators import generate, generator_names
    records = generate("algebra__linear_1d", n=100, seed=0)   # same seed -> identical records

Names follow DeepMind's mathematics_dataset `<family>__<module>` scheme; those families are generated
natively here (the 1.0.1 package does not import with sympy >= 1.13). `ta__*` generators are the
technical-analysis problems.
"""
from jaxmath.data.generators import (  # noqa: F401  (importing registers the generators)
    algebra, arithmetic, calculus, linear_algebra, number_theory, probability, technical)
from jaxmath.data.generators.base import (
    REGISTRY, Generator, GeneratorError, GeneratorWarning, Problem, generate, get_generator)

TA_FAMILY = "technical_analysis"


def generator_names(family: str | None = None) -> list[str]:
    """Registered generator names (optionally one family's), sorted."""
    return sorted(name for name, gen in REGISTRY.items() if family is None or gen.family == family)


def families() -> dict[str, list[str]]:
    """Family -> its generator names."""
    out: dict[str, list[str]] = {}
    for name in generator_names():
        out.setdefault(REGISTRY[name].family, []).append(name)
    return out


__all__ = ["REGISTRY", "TA_FAMILY", "Generator", "GeneratorError", "GeneratorWarning", "Problem", "families",
           "generate", "generator_names", "get_generator"]
