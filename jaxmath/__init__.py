"""jaxmath: train math-reasoning language models in JAX."""
from jaxmath.checkpoint import convert_hf_to_jax, export_to_hf, from_pretrained
from jaxmath.models import ModelConfig

__all__ = ["ModelConfig", "convert_hf_to_jax", "export_to_hf", "from_pretrained"]
__version__ = "0.1.0"
