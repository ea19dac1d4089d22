"""HF <-> jaxmath weight conversion and model directories."""
from jaxmath.checkpoint.hf_io import CheckpointError
from jaxmath.checkpoint.pretrained import convert_hf_to_jax, export_to_hf, from_pretrained, save_jaxmath

__all__ = ["CheckpointError", "convert_hf_to_jax", "export_to_hf", "from_pretrained", "save_jaxmath"]
