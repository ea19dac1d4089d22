"""Building blocks of the decoder: RMSNorm, grouped-query attention, SwiGLU MLP, one decoder block.

Every parameter carries `logical_axes` metadata (see jaxmath.parallel). Blocks are built with an optional
`num_layers`: parameters then get a leading "layers" dimension so the decoder can scan over them.
"""
from __future__ import annotations

from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxmath.models.attention import attend
from jaxmath.models.config import ModelConfig
from jaxmath.models.quantize import is_quantized, quantize_kernel, quantize_layers, quantized_einsum
from jaxmath.models.rope import apply_rope
from jaxmath.parallel import shard_activation

Initializer = Callable[[jax.Array, Sequence[int], jnp.dtype], jax.Array]


def make_param(rngs: nnx.Rngs, shape: Sequence[int], axes: Sequence[str], init: Initializer,
               dtype: jnp.dtype, num_layers: int | None) -> nnx.Param:
    """A parameter with logical axes, stacked over layers when `num_layers` is given."""
    if num_layers is not None:
        shape, axes = (num_layers, *shape), ("layers", *axes)
    return nnx.Param(init(rngs.params(), tuple(shape), dtype), logical_axes=tuple(axes))


def make_kernel(rngs: nnx.Rngs, shape: Sequence[int], axes: Sequence[str], config: ModelConfig,
                num_layers: int | None) -> nnx.Param:
    """A projection kernel [out..., in...] (normal(0.02) init), blockwise-quantised when the config says so."""
    param = make_param(rngs, shape, axes, normal_init(0.02), config.weight_dtype, num_layers)
    if config.quantize_weights is None:
        return param
    quantize = quantize_kernel if num_layers is None else quantize_layers  # stacked: one layer at a time
    value = quantize(param.get_value(), config.quantize_weights, config.quantize_block_size)
    return nnx.Param(value, logical_axes=param.logical_axes)


def normal_init(stddev: float) -> Initializer:
    return jax.nn.initializers.normal(stddev)


zeros_init: Initializer = jax.nn.initializers.zeros
ones_init: Initializer = jax.nn.initializers.ones


def add_lora(module: nnx.Module, name: str, in_shape: Sequence[int], in_axes: Sequence[str],
             out_shape: Sequence[int], out_axes: Sequence[str], config: ModelConfig, rngs: nnx.Rngs,
             num_layers: int | None) -> None:
    """Give projection `name` (kernel [out..., in...]) LoRA factors `{name}_lora_a` [in..., rank] (random)
    and `{name}_lora_b` [rank, out...] (zeros, so training starts from the base model), when targeted."""
    if not config.has_lora(name):
        return
    fan_in = int(np.prod(in_shape))
    a = make_param(rngs, (*in_shape, config.lora_rank), (*in_axes, "lora_rank"), normal_init(fan_in ** -0.5),
                   config.weight_dtype, num_layers)
    b = make_param(rngs, (config.lora_rank, *out_shape), ("lora_rank", *out_axes), zeros_init,
                   config.weight_dtype, num_layers)
    setattr(module, f"{name}_lora_a", a)
    setattr(module, f"{name}_lora_b", b)


def project(module: nnx.Module, name: str, x: jax.Array, equation: str, rng: jax.Array | None) -> jax.Array:
    """`einsum(equation, x, kernel)` plus the LoRA term when the module has one for `name`.

    A quantised kernel is dequantised here, in x's dtype (`quantized_einsum`). The LoRA path reuses the
    equation's letters: x's dims that the kernel contracts go through A to the rank dim "r", which B maps
    to the kernel's other (output) dims. Dropout applies to the LoRA input only.
    """
    config: ModelConfig = module.config
    kernel = getattr(module, name).get_value()
    out = (quantized_einsum(equation, x, kernel) if is_quantized(kernel)
           else jnp.einsum(equation, x, kernel.astype(x.dtype)))
    if not config.has_lora(name):
        return out
    a, b = getattr(module, f"{name}_lora_a")[...], getattr(module, f"{name}_lora_b")[...]
    (x_sub, k_sub), out_sub = equation.split("->")[0].split(","), equation.split("->")[1]
    in_sub = "".join(c for c in k_sub if c in x_sub)
    kernel_out = "".join(c for c in k_sub if c not in x_sub)
    mid = "".join(c for c in x_sub if c not in in_sub) + "r"
    if config.lora_dropout and rng is not None:
        keep = jax.random.bernoulli(jax.random.fold_in(rng, config.lora_targets.index(name)),
                                    1.0 - config.lora_dropout, x.shape)
        x = jnp.where(keep, x / (1.0 - config.lora_dropout), 0).astype(x.dtype)
    hidden = jnp.einsum(f"{x_sub},{in_sub}r->{mid}", x, a.astype(x.dtype))
    delta = jnp.einsum(f"{mid},r{kernel_out}->{out_sub}", hidden, b.astype(x.dtype))
    return out + (config.lora_scale * delta).astype(out.dtype)


def rms_norm(x: jax.Array, scale: jax.Array, eps: float) -> jax.Array:
    """RMSNorm computed in float32 and cast back, as HF does (weight * normalised.to(input dtype))."""
    x32 = x.astype(jnp.float32)
    normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
    return scale.astype(x.dtype) * normed.astype(x.dtype)


class RMSNorm(nnx.Module):
    def __init__(self, dim: int, eps: float, *, dtype: jnp.dtype, rngs: nnx.Rngs, num_layers: int | None = None):
        self.eps = eps
        self.scale = make_param(rngs, (dim,), ("norm",), ones_init, dtype, num_layers)

    def __call__(self, x: jax.Array) -> jax.Array:
        return rms_norm(x, self.scale[...], self.eps)


class Attention(nnx.Module):
    """Grouped-query self-attention with optional q/k/v/o biases and q/k RMSNorm (Qwen3).

    Kernels are stored [out..., in...] like HF's nn.Linear weights, so conversion only reshapes them.
    """

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs, num_layers: int | None = None):
        c, dt = config, config.weight_dtype
        e, n, k, h = c.hidden_size, c.num_heads, c.num_kv_heads, c.head_dim
        self.config = config
        self.q_proj = make_kernel(rngs, (n, h, e), ("heads", "head_dim", "embed"), c, num_layers)
        self.k_proj = make_kernel(rngs, (k, h, e), ("kv_heads", "head_dim", "embed"), c, num_layers)
        self.v_proj = make_kernel(rngs, (k, h, e), ("kv_heads", "head_dim", "embed"), c, num_layers)
        self.o_proj = make_kernel(rngs, (e, n, h), ("embed", "heads", "head_dim"), c, num_layers)
        for name, heads, axis in (("q_proj", n, "heads"), ("k_proj", k, "kv_heads"), ("v_proj", k, "kv_heads")):
            add_lora(self, name, (e,), ("embed",), (heads, h), (axis, "head_dim"), c, rngs, num_layers)
        add_lora(self, "o_proj", (n, h), ("heads", "head_dim"), (e,), ("embed",), c, rngs, num_layers)
        if c.qkv_bias:
            self.q_bias = make_param(rngs, (n, h), ("heads", "head_dim"), zeros_init, dt, num_layers)
            self.k_bias = make_param(rngs, (k, h), ("kv_heads", "head_dim"), zeros_init, dt, num_layers)
            self.v_bias = make_param(rngs, (k, h), ("kv_heads", "head_dim"), zeros_init, dt, num_layers)
        if c.o_bias:
            self.o_bias = make_param(rngs, (e,), ("embed",), zeros_init, dt, num_layers)
        if c.qk_norm:
            self.q_norm = RMSNorm(h, c.rms_norm_eps, dtype=dt, rngs=rngs, num_layers=num_layers)
            self.k_norm = RMSNorm(h, c.rms_norm_eps, dtype=dt, rngs=rngs, num_layers=num_layers)

    def project_qkv(self, x: jax.Array, cos: jax.Array, sin: jax.Array,
                    rng: jax.Array | None = None) -> tuple[jax.Array, jax.Array, jax.Array]:
        """Queries, keys and values [batch, length, heads, head_dim], biased, normed and rotated."""
        c, dt = self.config, x.dtype
        q = project(self, "q_proj", x, "bte,nhe->btnh", rng)
        k = project(self, "k_proj", x, "bte,khe->btkh", rng)
        v = project(self, "v_proj", x, "bte,khe->btkh", rng)
        if c.qkv_bias:
            q = q + self.q_bias[...].astype(dt)
            k = k + self.k_bias[...].astype(dt)
            v = v + self.v_bias[...].astype(dt)
        if c.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        q = shard_activation(apply_rope(q, cos, sin), ("batch", "length", "act_heads", None))
        k = shard_activation(apply_rope(k, cos, sin), ("batch", "length", "act_kv_heads", None))
        v = shard_activation(v, ("batch", "length", "act_kv_heads", None))
        return q, k, v

    def project_out(self, attended: jax.Array, rng: jax.Array | None = None) -> jax.Array:
        out = project(self, "o_proj", attended, "btnh,enh->bte", rng)
        if self.config.o_bias:
            out = out + self.o_bias[...].astype(out.dtype)
        return out

    def __call__(self, x: jax.Array, cos: jax.Array, sin: jax.Array, segment_ids: jax.Array,
                 rng: jax.Array | None = None) -> jax.Array:
        q, k, v = self.project_qkv(x, cos, sin, rng)
        index = jnp.broadcast_to(jnp.arange(segment_ids.shape[1], dtype=jnp.int32), segment_ids.shape)
        attended = attend(q, k, v, q_segments=segment_ids, kv_segments=segment_ids, q_index=index, kv_index=index,
                          requested=self.config.attention_impl, cached=False)
        return self.project_out(attended, rng)


class MLP(nnx.Module):
    """SwiGLU feed-forward: down(silu(gate(x)) * up(x)); kernels [out, in] like HF's."""

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs, num_layers: int | None = None):
        c, dt = config, config.weight_dtype
        e, m = c.hidden_size, c.intermediate_size
        self.config = config
        self.gate_proj = make_kernel(rngs, (m, e), ("mlp", "embed"), c, num_layers)
        self.up_proj = make_kernel(rngs, (m, e), ("mlp", "embed"), c, num_layers)
        self.down_proj = make_kernel(rngs, (e, m), ("embed", "mlp"), c, num_layers)
        add_lora(self, "gate_proj", (e,), ("embed",), (m,), ("mlp",), c, rngs, num_layers)
        add_lora(self, "up_proj", (e,), ("embed",), (m,), ("mlp",), c, rngs, num_layers)
        add_lora(self, "down_proj", (m,), ("mlp",), (e,), ("embed",), c, rngs, num_layers)
        if c.mlp_bias:
            self.gate_bias = make_param(rngs, (m,), ("mlp",), zeros_init, dt, num_layers)
            self.up_bias = make_param(rngs, (m,), ("mlp",), zeros_init, dt, num_layers)
            self.down_bias = make_param(rngs, (e,), ("embed",), zeros_init, dt, num_layers)

    def __call__(self, x: jax.Array, rng: jax.Array | None = None) -> jax.Array:
        dt, bias = x.dtype, self.config.mlp_bias
        gate = project(self, "gate_proj", x, "bte,me->btm", rng)
        up = project(self, "up_proj", x, "bte,me->btm", rng)
        if bias:
            gate, up = gate + self.gate_bias[...].astype(dt), up + self.up_bias[...].astype(dt)
        hidden = shard_activation(jax.nn.silu(gate) * up, ("batch", "length", "act_mlp"))
        out = project(self, "down_proj", hidden, "btm,em->bte", rng)
        return out + self.down_bias[...].astype(dt) if bias else out


class DecoderBlock(nnx.Module):
    """Pre-norm transformer block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs, num_layers: int | None = None):
        dt, eps = config.weight_dtype, config.rms_norm_eps
        self.input_layernorm = RMSNorm(config.hidden_size, eps, dtype=dt, rngs=rngs, num_layers=num_layers)
        self.self_attn = Attention(config, rngs=rngs, num_layers=num_layers)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, eps, dtype=dt, rngs=rngs, num_layers=num_layers)
        self.mlp = MLP(config, rngs=rngs, num_layers=num_layers)

    def __call__(self, x: jax.Array, cos: jax.Array, sin: jax.Array, segment_ids: jax.Array,
                 rng: jax.Array | None = None) -> jax.Array:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, segment_ids, rng)
        x = x + self.mlp(self.post_attention_layernorm(x), None if rng is None else jax.random.fold_in(rng, 1))
        return shard_activation(x, ("batch", "length", "act_embed"))
