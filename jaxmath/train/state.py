"""The train state (params as a pure dict, optimizer state, step, RNG) and its shardings."""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxmath.parallel import named_sharding


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class TrainState:
    """Everything a resumed run needs besides the data-iterator position."""

    step: jax.Array  # int32 scalar: updates attempted so far
    params: Any  # nested dict of arrays (nnx.to_pure_dict layout)
    opt_state: Any
    rng: jax.Array  # uint32[2] (a raw key, so checkpoints stay plain arrays)


def split_model(model: nnx.Module) -> tuple[nnx.GraphDef, dict[str, Any]]:
    graphdef, state = nnx.split(model)
    return graphdef, nnx.to_pure_dict(state)


def param_shardings(model: nnx.Module, mesh: Mesh) -> dict[str, Any]:
    """NamedShardings (pure-dict layout) from every parameter's logical axes."""
    shardings: dict[str, Any] = {}
    for path, variable in nnx.to_flat_state(nnx.state(model)):
        node = shardings
        for key in path[:-1]:
            node = node.setdefault(str(key), {})
        node[str(path[-1])] = named_sharding(mesh, variable.logical_axes, variable.get_value().shape)
    return shardings


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def state_shardings(params_sharding: dict[str, Any], optimizer: optax.GradientTransformation,
                    abstract_params: Any, mesh: Mesh) -> TrainState:
    """Shardings of the whole train state: optimizer moments follow their parameters (found by compiling
    `optimizer.init` for the sharded parameters, which allocates nothing)."""
    sharded = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                           abstract_params, params_sharding)
    compiled = jax.jit(optimizer.init).lower(sharded).compile().output_shardings
    # Scalars (step counts) come back on one device; replicate them over the mesh instead.
    opt_sharding = jax.tree.map(
        lambda s: s if isinstance(s, NamedSharding) and s.mesh == mesh else replicated(mesh), compiled)
    return TrainState(step=replicated(mesh), params=params_sharding, opt_state=opt_sharding, rng=replicated(mesh))


def init_train_state(params: Any, optimizer: optax.GradientTransformation, seed: int,
                     shardings: TrainState) -> TrainState:
    """A fresh state for (already placed) params; the optimizer state is created directly in its shards."""
    opt_state = jax.jit(optimizer.init, out_shardings=shardings.opt_state)(params)
    return TrainState(step=jax.device_put(jnp.zeros((), jnp.int32), shardings.step), params=params,
                      opt_state=opt_state, rng=jax.device_put(jax.random.PRNGKey(seed), shardings.rng))
