"""The decoder family (Qwen2 / Qwen3 / Llama) in Flax NNX, with causal-LM and token-classification heads."""
from jaxmath.models.config import ModelConfig, UnsupportedConfigError
from jaxmath.models.transformer import CausalLM, Decoder, TokenClassifier, build_model

__all__ = ["ModelConfig", "UnsupportedConfigError", "CausalLM", "Decoder", "TokenClassifier", "build_model"]
