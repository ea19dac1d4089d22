"""Resolve a model reference: a local directory as is, or a Hugging Face Hub id downloaded to the HF cache."""
from __future__ import annotations

from pathlib import Path

WEIGHT_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.model", "*.jinja"]


def resolve_model_dir(reference: str | Path, config_only: bool = False) -> Path:
    """`reference` if it is a local directory; otherwise download that Hub repo's config (and weights and
    tokenizer unless `config_only`) with huggingface_hub and return the snapshot directory."""
    path = Path(reference)
    if path.is_dir():
        return path
    if path.exists() or str(reference).startswith((".", "/")) or str(reference).count("/") != 1:
        raise FileNotFoundError(f"{reference}: no such model directory (and not a Hub id like 'Qwen/Qwen2.5-0.5B')")
    from huggingface_hub import snapshot_download

    patterns = ["config.json", "generation_config.json"] if config_only else WEIGHT_PATTERNS
    return Path(snapshot_download(str(reference), allow_patterns=patterns))
