"""One table mapping HF tensor names to jaxmath parameter paths, with the rule each needs.

The same table drives import (HF -> JAX) and export (JAX -> HF), so the two directions cannot drift
apart. jaxmath stores kernels [out..., in...] like HF's nn.Linear, so each layout's `to_jax` and `to_hf`
are exact inverse reshapes: views of the same bytes, and a conversion is a copy, never a transpose.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Callable

import numpy as np

from jaxmath.models.config import ModelConfig

Transform = Callable[[np.ndarray, ModelConfig], np.ndarray]

# HF tensors that carry no weights (recomputed buffers in older checkpoints): skipped on import.
IGNORED_HF_TENSORS = re.compile(r".*rotary_emb\.inv_freq$")


@dataclasses.dataclass(frozen=True)
class Rule:
    """How one jaxmath parameter is stored in a HF checkpoint.

    `hf_name` contains "{i}" for per-layer tensors; the JAX parameter then stacks them on axis 0.
    """

    jax_path: tuple[str, ...]
    hf_name: str
    layout: Layout

    @property
    def stacked(self) -> bool:
        return "{i}" in self.hf_name

    def hf_names(self, config: ModelConfig) -> list[str]:
        return [self.hf_name.format(i=i) for i in range(config.num_layers)] if self.stacked else [self.hf_name]


@dataclasses.dataclass(frozen=True)
class Layout:
    """How one tensor's HF layout relates to its JAX layout: exact inverse maps plus the HF shape."""

    to_jax: Transform
    to_hf: Transform
    hf_shape: Callable[[tuple[int, ...]], tuple[int, ...]]


SAME = Layout(lambda w, c: w, lambda w, c: w, lambda s: s)


def _heads_in(heads: Callable[[ModelConfig], int]) -> Layout:
    """HF [heads*head_dim, hidden] <-> JAX [heads, head_dim, hidden] (q/k/v projections)."""
    return Layout(lambda w, c: w.reshape(heads(c), c.head_dim, c.hidden_size),
                  lambda w, c: w.reshape(heads(c) * c.head_dim, c.hidden_size),
                  lambda s: (s[0] * s[1], s[2]))


def _heads_bias(heads: Callable[[ModelConfig], int]) -> Layout:
    """HF [heads*head_dim] <-> JAX [heads, head_dim]."""
    return Layout(lambda w, c: w.reshape(heads(c), c.head_dim),
                  lambda w, c: w.reshape(heads(c) * c.head_dim),
                  lambda s: (s[0] * s[1],))


# HF o_proj [hidden, heads*head_dim] <-> JAX [hidden, heads, head_dim].
OUT_HEADS = Layout(
    lambda w, c: w.reshape(c.hidden_size, c.num_heads, c.head_dim),
    lambda w, c: w.reshape(c.hidden_size, c.num_heads * c.head_dim),
    lambda s: (s[0], s[1] * s[2]))


def _q_heads(c: ModelConfig) -> int:
    return c.num_heads


def _kv_heads(c: ModelConfig) -> int:
    return c.num_kv_heads


def rules_for(config: ModelConfig) -> list[Rule]:
    """The mapping for a model of this config (causal LM, or token classifier when num_labels > 0)."""
    layer = "model.layers.{i}."
    attn, mlp = ("model", "layers", "self_attn"), ("model", "layers", "mlp")
    table: list[tuple[tuple[str, ...], str, Layout]] = [
        (("model", "embed_tokens"), "model.embed_tokens.weight", SAME),
        (("model", "norm", "scale"), "model.norm.weight", SAME),
        (("model", "layers", "input_layernorm", "scale"), layer + "input_layernorm.weight", SAME),
        (("model", "layers", "post_attention_layernorm", "scale"), layer + "post_attention_layernorm.weight", SAME),
        ((*attn, "q_proj"), layer + "self_attn.q_proj.weight", _heads_in(_q_heads)),
        ((*attn, "k_proj"), layer + "self_attn.k_proj.weight", _heads_in(_kv_heads)),
        ((*attn, "v_proj"), layer + "self_attn.v_proj.weight", _heads_in(_kv_heads)),
        ((*attn, "o_proj"), layer + "self_attn.o_proj.weight", OUT_HEADS),
        ((*mlp, "gate_proj"), layer + "mlp.gate_proj.weight", SAME),
        ((*mlp, "up_proj"), layer + "mlp.up_proj.weight", SAME),
        ((*mlp, "down_proj"), layer + "mlp.down_proj.weight", SAME),
    ]
    if config.qkv_bias:
        table += [
            ((*attn, "q_bias"), layer + "self_attn.q_proj.bias", _heads_bias(_q_heads)),
            ((*attn, "k_bias"), layer + "self_attn.k_proj.bias", _heads_bias(_kv_heads)),
            ((*attn, "v_bias"), layer + "self_attn.v_proj.bias", _heads_bias(_kv_heads)),
        ]
    if config.o_bias:
        table.append(((*attn, "o_bias"), layer + "self_attn.o_proj.bias", SAME))
    if config.qk_norm:
        table += [
            ((*attn, "q_norm", "scale"), layer + "self_attn.q_norm.weight", SAME),
            ((*attn, "k_norm", "scale"), layer + "self_attn.k_norm.weight", SAME),
        ]
    if config.mlp_bias:
        table += [((*mlp, f"{name}_bias"), layer + f"mlp.{name}_proj.bias", SAME) for name in ("gate", "up", "down")]
    if config.num_labels > 0:
        table += [(("score",), "score.weight", SAME), (("score_bias",), "score.bias", SAME)]
    elif not config.tie_word_embeddings:
        table.append((("lm_head",), "lm_head.weight", SAME))
    return [Rule(path, name, layout) for path, name, layout in table]


def hf_architecture(config: ModelConfig) -> str:
    """The HF class name that loads an export of this model."""
    family = {"qwen2": "Qwen2", "llama": "Llama", "qwen3": "Qwen3"}[config.model_type]
    return f"{family}ForTokenClassification" if config.num_labels > 0 else f"{family}ForCausalLM"
