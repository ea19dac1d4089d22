"""A blockwise-quantised frozen base for LoRA (QLoRA): projection kernels kept in 4 (nf4) or 8 (int8) bits.

Each kernel [out..., in...] is quantised in blocks of `block_size` consecutive weights along its last input
dimension, one float32 absmax scale per block, by qwix (`qwix.quantize` with the block as a tile of the last
axis and every other axis channelwise): nf4 is QLoRA's 4-bit NormalFloat code book (Dettmers et al. 2023,
appendix E; w ~ code[i] * absmax), int8 is symmetric int8 (w ~ i * absmax / 127.5, i clipped to [-128, 127]).
Two nf4 codes share one uint8 (qwix's uint4 storage cannot be checkpointed: tensorstore rejects the dtype).

The projections dequantise one layer's kernel where it is used (`quantized_einsum`), in the compute dtype; the
backward pass dequantises again instead of keeping the dequantised kernels of every layer for it.
"""
from __future__ import annotations

import functools
from typing import Any, Mapping

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx, traverse_util

WEIGHT_KINDS = ("nf4", "int8")
QTYPES = {"nf4": "nf4", "int8": jnp.int8}


def qwix_module() -> Any:
    """qwix (an optional dependency), or an ImportError saying how to install it."""
    try:
        import qwix
    except ImportError as err:
        raise ImportError("model.quantize needs the qwix package: pip install 'jaxmath[quant]'") from err
    return qwix


@flax.struct.dataclass
class QuantizedKernel:
    """A kernel [out..., in...] stored blockwise-quantised: `codes` (nf4: uint8 [..., in / 2], two codes a byte,
    the even input index in the low nibble; int8: int8 [..., in]) and float32 `scale` [..., in / block]."""

    codes: jax.Array
    scale: jax.Array
    kind: str = flax.struct.field(pytree_node=False)

    @property
    def shape(self) -> tuple[int, ...]:
        """The shape of the kernel it stands for."""
        *lead, last = self.codes.shape
        return (*lead, last * 2 if self.kind == "nf4" else last)

    @property
    def block_size(self) -> int:
        return self.shape[-1] // self.scale.shape[-1]

    def dequantize(self, dtype: Any = jnp.float32) -> jax.Array:
        """The kernel, code * scale, computed by qwix in the scale's dtype and cast to `dtype`."""
        qwix = qwix_module()
        qvalue = unpack_nibbles(self.codes).astype(jnp.uint4) if self.kind == "nf4" else self.codes
        return qwix.dequantize(qwix.QArray(qvalue, self.scale, qtype=QTYPES[self.kind])).astype(dtype)


nnx.register_data_type(QuantizedKernel)  # a Param may hold one (as it holds an array)


def check_settings(kind: str, block_size: int, in_dims: Mapping[str, int], key: str = "model.quantize") -> None:
    """Raise, naming `key`, unless `kind` is known and `block_size` (even for nf4) divides every input dim."""
    if kind not in WEIGHT_KINDS:
        raise ValueError(f"{key}.weights={kind!r}; expected one of {WEIGHT_KINDS}")
    if block_size < 1 or (kind == "nf4" and block_size % 2):
        raise ValueError(f"{key}.block_size={block_size} must be a positive integer, and even for nf4 "
                         "(two 4-bit codes share a byte)")
    for name, dim in in_dims.items():
        if dim % block_size:
            raise ValueError(f"{key}.block_size={block_size} does not divide the projections' input dim "
                             f"{name}={dim}: blocks run along each kernel's last input dim")


def quantize_kernel(kernel: jax.Array, kind: str, block_size: int) -> QuantizedKernel:
    """`kernel` [..., in] (any leading dims) quantised in blocks of `block_size` along its last dim."""
    check_settings(kind, block_size, {"in": kernel.shape[-1]})
    last = kernel.ndim - 1
    q = qwix_module().quantize(kernel.astype(jnp.float32), QTYPES[kind], channelwise_axes=tuple(range(last)),
                               tiled_axes={last: block_size})
    codes = pack_nibbles(q.qvalue.astype(jnp.uint8)) if kind == "nf4" else q.qvalue
    return QuantizedKernel(codes, q.scale.astype(jnp.float32), kind)


def quantize_layers(kernel: jax.Array, kind: str, block_size: int) -> QuantizedKernel:
    """A [layers, ...] kernel quantised one layer at a time (`lax.map`): the float32 working copy is one layer."""
    return jax.lax.map(functools.partial(quantize_kernel, kind=kind, block_size=block_size), kernel)


def pack_nibbles(codes: jax.Array) -> jax.Array:
    """uint8 codes < 16 [..., 2n] -> [..., n] bytes, element 2i in the low nibble and 2i + 1 in the high one."""
    pairs = codes.reshape(*codes.shape[:-1], -1, 2)
    return pairs[..., 0] | (pairs[..., 1] << 4)


def unpack_nibbles(packed: jax.Array) -> jax.Array:
    """The inverse of `pack_nibbles`: uint8 [..., n] -> codes [..., 2n]."""
    pairs = jnp.stack([packed & 0xF, packed >> 4], axis=-1)
    return pairs.reshape(*packed.shape[:-1], -1)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def quantized_einsum(equation: str, x: jax.Array, kernel: QuantizedKernel) -> jax.Array:
    """`einsum(equation, x, kernel)` with the kernel dequantised in x's dtype. The kernel is frozen: its
    cotangent is zero, and the backward pass keeps only the quantised kernel (not a dequantised copy)."""
    return jnp.einsum(equation, x, kernel.dequantize(x.dtype))


def _quantized_einsum_fwd(equation: str, x: jax.Array, kernel: QuantizedKernel
                          ) -> tuple[jax.Array, QuantizedKernel]:
    return quantized_einsum(equation, x, kernel), kernel


def _quantized_einsum_bwd(equation: str, kernel: QuantizedKernel, g: jax.Array) -> tuple[jax.Array, QuantizedKernel]:
    """dx = einsum(out, kernel -> x) (every x dim is an output dim or contracted with the kernel; the output,
    hence g, has x's dtype)."""
    (x_sub, k_sub), out_sub = equation.split("->")[0].split(","), equation.split("->")[1]
    dx = jnp.einsum(f"{out_sub},{k_sub}->{x_sub}", g, kernel.dequantize(g.dtype))
    zero = QuantizedKernel(np.zeros(kernel.codes.shape, jax.dtypes.float0), jnp.zeros_like(kernel.scale), kernel.kind)
    return dx, zero


quantized_einsum.defvjp(_quantized_einsum_fwd, _quantized_einsum_bwd)


def is_quantized(value: Any) -> bool:
    return isinstance(value, QuantizedKernel)


def quantize_params(params: dict[str, Any], target: dict[str, Any], shardings: dict[str, Any] | None = None
                    ) -> dict[str, Any]:
    """Quantise, in place, each layer-stacked kernel of a pure-dict param tree that is a `QuantizedKernel` in
    `target` (the quantised model's abstract params; kind and block size are read from it), placed per
    `shardings` (a matching tree) when given. In place, so each float kernel is freed as soon as its quantised
    copy exists: loading never holds the float base and the quantised one in full."""
    flat_shardings = traverse_util.flatten_dict(shardings) if shardings is not None else {}
    for path, abstract in traverse_util.flatten_dict(target).items():
        if not is_quantized(abstract):
            continue
        node = params
        for key in path[:-1]:
            node = node[key]
        quantize = jax.jit(functools.partial(quantize_layers, kind=abstract.kind, block_size=abstract.block_size),
                           out_shardings=flat_shardings.get(path))
        node[path[-1]] = quantize(node[path[-1]])
    return params


def dequantize_params(params: dict[str, Any], dtype: Any) -> dict[str, Any]:
    """A param tree with every quantised kernel dequantised to `dtype` on the host (numpy); other leaves kept.
    Runs on the CPU backend where there is one, so exporting a 7B model needs no accelerator memory."""
    try:
        device = jax.local_devices(backend="cpu")[0]
    except RuntimeError:  # JAX_PLATFORMS left the CPU backend out
        device = jax.local_devices()[0]
    dequantize = jax.jit(lambda kernel: kernel.dequantize(dtype))

    def host(value: Any) -> Any:
        return np.asarray(dequantize(jax.device_put(value, device))) if is_quantized(value) else value

    flat = traverse_util.flatten_dict(params)
    return traverse_util.unflatten_dict({path: host(value) for path, value in flat.items()})
