"""jaxmath: train math-reasoning language models in JAX."""
