"""A model directory loaded for generation: weights placed on a mesh, its tokenizer, and its stop token ids."""
from __future__ import annotations

import json
import os
from pathlib import Path

import jax
from jax.sharding import Mesh
from transformers import PreTrainedTokenizerBase

from jaxmath.checkpoint import from_pretrained
from jaxmath.checkpoint.pretrained import is_jaxmath_dir
from jaxmath.data.tokenizer import load_tokenizer
from jaxmath.models import CausalLM
from jaxmath.parallel import make_mesh


def default_dtype() -> str:
    """bfloat16 on accelerators, float32 on CPU (where bfloat16 matmuls are slow)."""
    return "float32" if jax.default_backend() == "cpu" else "bfloat16"


def model_files_dir(model_path: str | os.PathLike) -> Path:
    """Where a model directory keeps its tokenizer and generation config (jaxmath dirs: hf_files/)."""
    path = Path(model_path)
    return path / "hf_files" if is_jaxmath_dir(path) else path


def stop_token_ids(tokenizer: PreTrainedTokenizerBase, files_dir: Path) -> list[int]:
    """End-of-turn ids: the tokenizer's eos, generation_config.json's eos list, and the chat template's
    end-of-turn token (`<|im_end|>`, `<|eot_id|>`) when the vocabulary has one."""
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    config_file = files_dir / "generation_config.json"
    if config_file.is_file():
        eos = json.loads(config_file.read_text()).get("eos_token_id")
        ids.update(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    template = tokenizer.chat_template if isinstance(tokenizer.chat_template, str) else ""
    for marker in ("<|im_end|>", "<|eot_id|>", "<|end|>"):
        if marker in template and marker in tokenizer.get_vocab():
            ids.add(tokenizer.convert_tokens_to_ids(marker))
    return sorted(ids)


def load_for_generation(model_path: str | os.PathLike, dtype: str | None = None,
                        tokenizer_path: str | os.PathLike | None = None
                        ) -> tuple[CausalLM, PreTrainedTokenizerBase, list[int], Mesh]:
    """Model (weights placed on a mesh over all devices, batch split over them), tokenizer and stop token ids."""
    files_dir = model_files_dir(model_path)
    tokenizer = load_tokenizer(tokenizer_path or files_dir)
    mesh = make_mesh()
    model = from_pretrained(model_path, dtype=dtype or default_dtype(), mesh=mesh)
    return model, tokenizer, stop_token_ids(tokenizer, files_dir), mesh
