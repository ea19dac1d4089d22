"""Tiny random HF models (built with transformers + torch, fixed seeds) for parity tests. No downloads."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import transformers

CONFIG_CLASSES = {"qwen2": transformers.Qwen2Config, "llama": transformers.LlamaConfig,
                  "qwen3": transformers.Qwen3Config}
BASE = dict(vocab_size=128, hidden_size=64, intermediate_size=112, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=256, rms_norm_eps=1e-6)


def tiny_config(model_type: str, **overrides: Any) -> transformers.PretrainedConfig:
    return CONFIG_CLASSES[model_type](**{**BASE, **overrides})


def tiny_model(model_type: str, token_classification: bool = False, seed: int = 0,
               **overrides: Any) -> transformers.PreTrainedModel:
    """A random model whose every parameter (biases and norms included) is perturbed, so mappings matter."""
    torch.manual_seed(seed)
    config = tiny_config(model_type, **overrides)
    auto = transformers.AutoModelForTokenClassification if token_classification else transformers.AutoModelForCausalLM
    model = auto.from_config(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


def save_tiny(model: transformers.PreTrainedModel, path: Path, **kwargs: Any) -> Path:
    model.save_pretrained(path, **kwargs)
    return path


def left_padded_batch(vocab: int = 128, batch: int = 4, length: int = 24, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Token ids and an attention mask with a different amount of left padding per row."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, vocab, (batch, length))
    mask = np.ones((batch, length), np.int64)
    for row in range(batch):
        mask[row, : (row * 5) % (length - 4)] = 0
    return ids, mask


def hf_logits(model: transformers.PreTrainedModel, ids: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """HF reference output; positions count real tokens, as jaxmath does for left-padded rows."""
    kwargs: dict[str, Any] = {"input_ids": torch.tensor(ids)}
    if mask is not None:
        kwargs["attention_mask"] = torch.tensor(mask)
        kwargs["position_ids"] = torch.tensor(np.clip(mask.cumsum(1) - 1, 0, None))
    with torch.no_grad():
        return model(**kwargs).logits.float().numpy()
