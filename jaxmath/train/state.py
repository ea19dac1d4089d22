"""The train state (params as a pure dict, optimizer state, step, RNG) and its shardings."""
from __future__ import annotations

import dataclasses
import re
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx, traverse_util
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxmath.models.lora import is_lora_path
from jaxmath.parallel import named_sharding


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class TrainState:
    """Everything a resumed run needs besides the data-iterator position."""

    step: jax.Array  # int32 scalar: updates attempted so far
    params: Any  # nested dict of arrays (nnx.to_pure_dict layout)
    opt_state: Any
    rng: jax.Array  # uint32[2] (a raw key, so checkpoints stay plain arrays)


Predicate = Callable[[str], bool]


def trainable_predicate(freeze: list[str], lora: bool) -> Predicate:
    """Which parameters (by "model/layers/self_attn/q_proj"-style path) the optimizer updates: with LoRA only
    the adapters; otherwise everything not matched by a `freeze` regex."""
    patterns = [re.compile(p) for p in freeze]

    def trainable(path: str) -> bool:
        if lora and not is_lora_path(path):
            return False
        return not any(p.search(path) for p in patterns)
    return trainable


def partition(params: dict[str, Any], trainable: Predicate) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split a parameter dict into (trainable, frozen) dicts of the same nesting."""
    flat = traverse_util.flatten_dict(params, sep="/")
    pick = {k: trainable(k) for k in flat}
    return (traverse_util.unflatten_dict({k: v for k, v in flat.items() if pick[k]}, sep="/"),
            traverse_util.unflatten_dict({k: v for k, v in flat.items() if not pick[k]}, sep="/"))


def combine(trainable: dict[str, Any], frozen: dict[str, Any]) -> dict[str, Any]:
    flat = {**traverse_util.flatten_dict(frozen, sep="/"), **traverse_util.flatten_dict(trainable, sep="/")}
    return traverse_util.unflatten_dict(flat, sep="/")


def param_shardings(model: nnx.Module, mesh: Mesh) -> dict[str, Any]:
    """NamedShardings (pure-dict layout) from every parameter's logical axes."""
    shardings: dict[str, Any] = {}
    for path, variable in nnx.to_flat_state(nnx.state(model)):
        node = shardings
        for key in path[:-1]:
            node = node.setdefault(str(key), {})
        # a quantised kernel's codes and scales each get the kernel's axes (jaxmath.models.quantize)
        node[str(path[-1])] = jax.tree.map(lambda leaf: named_sharding(mesh, variable.logical_axes, leaf.shape),
                                           variable.get_value())
    return shardings


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def state_shardings(params_sharding: dict[str, Any], optimizer: optax.GradientTransformation,
                    abstract_params: Any, mesh: Mesh, trainable: Predicate = lambda path: True) -> TrainState:
    """Shardings of the whole train state: each optimizer moment (kept for trainable parameters only) is sharded
    like its parameter (ZeRO: no device holds a whole moment that it does not hold of the parameter), found with
    `optax.tree_map_params`; counts and other non-parameter fields are replicated. (The output shardings of a
    compiled `optimizer.init` cannot serve: its zeros do not depend on the parameters and land on one device.)"""
    abstract_opt_state = jax.eval_shape(optimizer.init, partition(abstract_params, trainable)[0])
    opt_sharding = optax.tree_map_params(optimizer, lambda _, sharding: sharding, abstract_opt_state,
                                         partition(params_sharding, trainable)[0],
                                         transform_non_params=lambda _: replicated(mesh),
                                         is_leaf=lambda x: isinstance(x, jax.sharding.Sharding))
    return TrainState(step=replicated(mesh), params=params_sharding, opt_state=opt_sharding, rng=replicated(mesh))


def init_train_state(params: Any, optimizer: optax.GradientTransformation, seed: int,
                     shardings: TrainState, trainable: Predicate = lambda path: True) -> TrainState:
    """A fresh state for (already placed) params; the optimizer state is created directly in its shards."""
    opt_state = jax.jit(optimizer.init, out_shardings=shardings.opt_state)(partition(params, trainable)[0])
    return TrainState(step=jax.device_put(jnp.zeros((), jnp.int32), shardings.step), params=params,
                      opt_state=opt_state, rng=jax.device_put(jax.random.PRNGKey(seed), shardings.rng))
