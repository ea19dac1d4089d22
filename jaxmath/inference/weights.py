"""The sampler's copy of a model's weights: one dense array per layer and projection, in the compute dtype.

Training keeps weights stacked over layers ([layers, ...], scanned), in the master dtype, stored [out, in]
like HF, maybe quantised or with LoRA adapters beside them. A decode step reads every weight once, so it
wants none of that: slicing a layer out of a stack, casting, transposing or adding A B would each cost a
copy of the weights per step (on the CPU, XLA materialises the slice and the transposes). `prepare_weights`
does all of it once: per layer, q/k/v fused into one [in, out] matrix, gate/up into another, LoRA merged,
quantised kernels dequantised, everything cast to the compute dtype. GRPO makes this copy once per
iteration; evaluation once per run.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from jaxmath.models import CausalLM, ModelConfig
from jaxmath.models.lora import merge_lora
from jaxmath.models.quantize import is_quantized


@functools.partial(jax.tree_util.register_dataclass, data_fields=["embed", "head", "norm", "layers"],
                   meta_fields=["config"])
@dataclasses.dataclass(frozen=True)
class DecodeWeights:
    """Dense per-layer weights for decoding. layers[i] maps a name to an array (all [in, out]):

    ln1, ln2 [E]; qkv [E, (N + 2K) H] and qkv_bias; q_norm, k_norm [H] (Qwen3); o [N H, E] and o_bias;
    gate_up [E, 2M] and gate_up_bias; down [M, E] and down_bias. Optional entries are absent.
    """

    embed: jax.Array  # [V, E], gathered
    head: jax.Array  # [E, V]
    norm: jax.Array  # [E]
    layers: tuple[dict[str, jax.Array], ...]
    config: ModelConfig

    @property
    def dtype(self) -> Any:
        return self.head.dtype

    def nbytes_read_per_step(self) -> int:
        """Bytes a decode step must read: every weight but the embedding table (one row per token is gathered)."""
        leaves = jax.tree.leaves((self.head, self.norm, self.layers))
        return sum(leaf.size * leaf.dtype.itemsize for leaf in leaves)


def _layer(params: dict[str, Any], i: int, config: ModelConfig, dtype: Any) -> dict[str, jax.Array]:
    """Layer i of the stacked parameter tree, fused and transposed to [in, out]."""
    attn, mlp = params["self_attn"], params["mlp"]
    e = config.hidden_size

    def kernel(tree: dict[str, Any], name: str) -> jax.Array:
        return tree[name][i].astype(dtype)

    q, k, v = (kernel(attn, n).reshape(-1, e) for n in ("q_proj", "k_proj", "v_proj"))  # [out, E]
    layer = {
        "ln1": params["input_layernorm"]["scale"][i].astype(dtype),
        "ln2": params["post_attention_layernorm"]["scale"][i].astype(dtype),
        "qkv": jnp.concatenate([q, k, v], axis=0).T,
        "o": kernel(attn, "o_proj").reshape(e, -1).T,
        "gate_up": jnp.concatenate([kernel(mlp, "gate_proj"), kernel(mlp, "up_proj")], axis=0).T,
        "down": kernel(mlp, "down_proj").T,
    }
    if config.qkv_bias:
        layer["qkv_bias"] = jnp.concatenate([kernel(attn, f"{n}_bias").reshape(-1) for n in "qkv"])
    if config.o_bias:
        layer["o_bias"] = kernel(attn, "o_bias")
    if config.qk_norm:
        layer["q_norm"], layer["k_norm"] = kernel(attn["q_norm"], "scale"), kernel(attn["k_norm"], "scale")
    if config.mlp_bias:
        layer["gate_up_bias"] = jnp.concatenate([kernel(mlp, "gate_bias"), kernel(mlp, "up_bias")])
        layer["down_bias"] = kernel(mlp, "down_bias")
    return layer


@functools.partial(jax.jit, static_argnames=("config", "dtype"))
def _prepare(params: dict[str, Any], config: ModelConfig, dtype: Any) -> DecodeWeights:
    params = jax.tree.map(lambda x: x.dequantize(jnp.float32) if is_quantized(x) else x, params,
                          is_leaf=is_quantized)
    if config.lora_rank:
        params = merge_lora(params, config, xp=jnp)
    decoder = params["model"]
    embed = decoder["embed_tokens"].astype(dtype)
    head = embed.T if config.tie_word_embeddings else params["lm_head"].astype(dtype).T
    layers = tuple(_layer(decoder["layers"], i, config, dtype) for i in range(config.num_layers))
    return DecodeWeights(embed, head, decoder["norm"]["scale"].astype(dtype), layers, config)


def prepare_weights(model: CausalLM, dtype: Any = None) -> DecodeWeights:
    """The decode copy of `model`'s weights in `dtype` (default: the model's compute dtype), made on device."""
    if not isinstance(model, CausalLM):
        raise TypeError(f"the sampler needs a CausalLM, got {type(model).__name__}")
    config = model.config
    dtype = jnp.dtype(config.compute_dtype if dtype is None else dtype)
    return _prepare(nnx.to_pure_dict(nnx.state(model)), config, dtype)
