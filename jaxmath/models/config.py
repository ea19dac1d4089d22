"""ModelConfig: the decoder's hyper-parameters, read from (and kept faithful to) a HF config.json."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Mapping

import jax.numpy as jnp

from jaxmath.models.attention import AUTO, IMPLEMENTATIONS as ATTENTION_IMPLEMENTATIONS
from jaxmath.models.quantize import check_settings as check_quantize_settings
SUPPORTED_MODEL_TYPES = ("qwen2", "llama", "qwen3")
SUPPORTED_ROPE_TYPES = ("default", "linear", "dynamic", "yarn", "llama3")
# what a layer keeps for the backward pass (jaxmath.train.remat measures them), least recomputation first
REMAT_POLICIES = ("none", "dots", "dots_no_batch", "full")
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


class UnsupportedConfigError(ValueError):
    """A HF config asks for something this decoder does not implement; the message names the key."""


def as_dtype(name: str | Any) -> Any:
    """Map "float32"/"bfloat16"/"float16" (or a dtype) to a jnp dtype; raise naming the bad value."""
    if not isinstance(name, str):
        return jnp.dtype(name)
    if name not in DTYPES:
        raise ValueError(f"unknown dtype {name!r}; expected one of {sorted(DTYPES)}")
    return DTYPES[name]


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Everything the decoder needs. Architecture fields mirror HF; runtime fields are jaxmath's own."""

    model_type: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: tuple[tuple[str, Any], ...] = ()  # sorted (key, value) pairs; () means plain RoPE
    max_position_embeddings: int = 32768
    tie_word_embeddings: bool = False
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    qk_norm: bool = False
    num_labels: int = 0  # > 0 for a token-classification head
    # LoRA adapters (rank 0 = none): W x + (alpha / rank) B A dropout(x) on each target projection.
    lora_rank: int = 0
    lora_alpha: float = 16.0
    lora_dropout: float = 0.0
    lora_targets: tuple[str, ...] = LORA_TARGETS
    # A frozen base kept blockwise-quantised (jaxmath.models.quantize): the projection kernels in "nf4" or
    # "int8", one scale per `quantize_block_size` input weights; None keeps them in param_dtype.
    quantize_weights: str | None = None
    quantize_block_size: int = 64
    # Runtime choices (not part of the checkpoint).
    dtype: str = "float32"  # compute dtype
    param_dtype: str = "float32"
    remat: str = "none"
    attention_impl: str = AUTO  # see jaxmath.models.attention; None (YAML null) also means auto

    def __post_init__(self) -> None:
        # Configs read back from JSON carry lists; keep the config hashable (it is static under jit).
        object.__setattr__(self, "rope_scaling", tuple(tuple(item) for item in self.rope_scaling))
        object.__setattr__(self, "lora_targets", tuple(self.lora_targets))
        if self.attention_impl is None:
            object.__setattr__(self, "attention_impl", AUTO)
        if self.model_type not in SUPPORTED_MODEL_TYPES:
            raise UnsupportedConfigError(
                f"model_type={self.model_type!r} is not supported; expected one of {SUPPORTED_MODEL_TYPES}")
        if self.num_heads % self.num_kv_heads:
            raise UnsupportedConfigError(
                f"num_attention_heads={self.num_heads} is not a multiple of num_key_value_heads={self.num_kv_heads}")
        if self.remat not in REMAT_POLICIES:
            raise ValueError(f"remat={self.remat!r}; expected one of {REMAT_POLICIES}")
        if self.attention_impl not in ATTENTION_IMPLEMENTATIONS:
            raise ValueError(f"attention_impl={self.attention_impl!r}; expected one of {ATTENTION_IMPLEMENTATIONS} "
                             f"(or null for auto)")
        as_dtype(self.dtype), as_dtype(self.param_dtype)
        unknown = sorted(set(self.lora_targets) - set(LORA_TARGETS))
        if unknown:
            raise ValueError(f"lora_targets has unknown module(s) {unknown}; expected some of {LORA_TARGETS}")
        if self.lora_rank < 0 or not 0.0 <= self.lora_dropout < 1.0:
            raise ValueError(f"lora_rank={self.lora_rank} must be >= 0 and lora_dropout={self.lora_dropout} in [0, 1)")
        rope_type = self.rope_params.get("rope_type", "default")
        if rope_type not in SUPPORTED_ROPE_TYPES:
            raise UnsupportedConfigError(
                f"rope_scaling.rope_type={rope_type!r} is not supported; expected one of {SUPPORTED_ROPE_TYPES}")
        if self.quantize_weights is not None:
            check_quantize_settings(self.quantize_weights, self.quantize_block_size,
                                    {"hidden_size": self.hidden_size, "intermediate_size": self.intermediate_size,
                                     "head_dim": self.head_dim})

    @property
    def rope_params(self) -> dict[str, Any]:
        return dict(self.rope_scaling)

    def has_lora(self, target: str) -> bool:
        return self.lora_rank > 0 and target in self.lora_targets

    @property
    def lora_scale(self) -> float:
        return self.lora_alpha / self.lora_rank if self.lora_rank else 0.0

    @property
    def compute_dtype(self) -> Any:
        return as_dtype(self.dtype)

    @property
    def weight_dtype(self) -> Any:
        return as_dtype(self.param_dtype)

    def replace(self, **changes: Any) -> "ModelConfig":
        return dataclasses.replace(self, **changes)

    def num_params(self) -> int:
        """Parameter count (embeddings included), computed from the shapes."""
        e, m, h = self.hidden_size, self.intermediate_size, self.head_dim
        q, kv = self.num_heads * h, self.num_kv_heads * h
        per_layer = e * (q + 2 * kv) + q * e + 3 * e * m + 2 * e
        per_layer += (q + 2 * kv) * self.qkv_bias + e * self.o_bias + (2 * m + e) * self.mlp_bias
        per_layer += 2 * h * self.qk_norm
        head = 0 if self.tie_word_embeddings else e * self.vocab_size
        if self.num_labels:
            head = e * self.num_labels + self.num_labels
        return self.vocab_size * e + self.num_layers * per_layer + e + head

    @classmethod
    def from_hf(cls, hf: Mapping[str, Any], *, num_labels: int = 0, **runtime: Any) -> "ModelConfig":
        """Read a HF config dict (transformers 4 or 5 layout); unsupported settings raise naming the key."""
        model_type = hf.get("model_type")
        if model_type not in SUPPORTED_MODEL_TYPES:
            raise UnsupportedConfigError(
                f"config.json: model_type={model_type!r} is not supported; expected one of {SUPPORTED_MODEL_TYPES}")
        _reject_unsupported(hf)
        hidden, heads = _require(hf, "hidden_size"), _require(hf, "num_attention_heads")
        rope_theta, rope_scaling = _rope_settings(hf)
        attention_bias = bool(hf.get("attention_bias", False))
        return cls(
            model_type=model_type,
            vocab_size=_require(hf, "vocab_size"),
            hidden_size=hidden,
            intermediate_size=_require(hf, "intermediate_size"),
            num_layers=_require(hf, "num_hidden_layers"),
            num_heads=heads,
            num_kv_heads=hf.get("num_key_value_heads") or heads,
            head_dim=hf.get("head_dim") or hidden // heads,
            rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
            rope_theta=rope_theta,
            rope_scaling=rope_scaling,
            max_position_embeddings=int(hf.get("max_position_embeddings", 32768)),
            tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
            # Qwen2 always has q/k/v biases; Llama and Qwen3 follow attention_bias for q/k/v/o.
            qkv_bias=True if model_type == "qwen2" else attention_bias,
            o_bias=False if model_type == "qwen2" else attention_bias,
            mlp_bias=bool(hf.get("mlp_bias", False)) if model_type == "llama" else False,
            qk_norm=model_type == "qwen3",
            num_labels=num_labels,
            **runtime,
        )

    @classmethod
    def from_json_file(cls, path: str | Path, **kwargs: Any) -> "ModelConfig":
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no config.json at {path}")
        try:
            hf = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: not valid JSON ({err})") from err
        return cls.from_hf(hf, **kwargs)


def _require(hf: Mapping[str, Any], key: str) -> Any:
    if hf.get(key) is None:
        raise UnsupportedConfigError(f"config.json: required key {key!r} is missing")
    return hf[key]


def _reject_unsupported(hf: Mapping[str, Any]) -> None:
    """Fail loudly on HF settings that would silently change the maths if ignored."""
    act = hf.get("hidden_act", "silu")
    if act != "silu":
        raise UnsupportedConfigError(f"config.json: hidden_act={act!r} is not supported (only 'silu')")
    if hf.get("use_sliding_window"):
        raise UnsupportedConfigError("config.json: use_sliding_window=true is not supported (full attention only)")
    layer_types = hf.get("layer_types") or []
    other = sorted({t for t in layer_types if t != "full_attention"})
    if other:
        raise UnsupportedConfigError(f"config.json: layer_types contains {other}; only 'full_attention' is supported")
    if (hf.get("partial_rotary_factor") or 1.0) != 1.0:
        raise UnsupportedConfigError("config.json: partial_rotary_factor != 1 is not supported")


def _rope_settings(hf: Mapping[str, Any]) -> tuple[float, tuple[tuple[str, Any], ...]]:
    """Normalise transformers-4 (`rope_theta` + `rope_scaling`) and -5 (`rope_parameters`) layouts."""
    params = dict(hf.get("rope_parameters") or {})
    scaling = hf.get("rope_scaling")
    if scaling:
        params.update(scaling)
    if "type" in params and "rope_type" not in params:
        params["rope_type"] = params.pop("type")
    params.pop("type", None)
    theta = float(params.pop("rope_theta", hf.get("rope_theta", 10000.0)))
    if (params.pop("partial_rotary_factor", 1.0) or 1.0) != 1.0:
        raise UnsupportedConfigError("config.json: rope_parameters.partial_rotary_factor != 1 is not supported")
    rope_type = params.get("rope_type", "default")
    if rope_type not in SUPPORTED_ROPE_TYPES:
        key = "rope_parameters" if "rope_parameters" in hf else "rope_scaling"
        raise UnsupportedConfigError(
            f"config.json: {key}.rope_type={rope_type!r} is not supported; expected one of {SUPPORTED_ROPE_TYPES}")
    if rope_type == "default":
        return theta, ()
    if rope_type in ("yarn", "llama3"):
        params.setdefault("original_max_position_embeddings",
                          hf.get("original_max_position_embeddings", hf.get("max_position_embeddings", 32768)))
    return theta, tuple(sorted((k, v) for k, v in params.items() if v is not None))
