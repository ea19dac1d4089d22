"""The one train-step factory every objective (SFT, GRPO, PRM, DPO) uses.

A loss function maps (model, batch, rng) to (numerator, denominator, metrics); the step's loss is
sum(numerators) / sum(denominators) over the whole global batch and all accumulated micro-batches, so a
token mean stays a token mean however the batch is split over devices or micro-batches. A frozen
`ReferenceModel` (DPO's on-the-fly reference) adds fields to each micro-batch inside the step.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxmath.parallel import BATCH_AXES
from jaxmath.train.state import (Predicate, TrainState, combine, init_train_state, param_shardings, partition,
                                 state_shardings)

Batch = Mapping[str, jax.Array]
LossFn = Callable[[nnx.Module, Batch, jax.Array], tuple[jax.Array, jax.Array, dict[str, jax.Array]]]


@dataclasses.dataclass(frozen=True)
class ReferenceModel:
    """A frozen model held apart from the train state (its params are the step's third argument, never
    updated, never donated) whose `fields(model, batch)` join the batch before the loss sees it."""

    graphdef: nnx.GraphDef
    shardings: Any
    fields: Callable[[nnx.Module, Batch], Mapping[str, jax.Array]]

    def extend(self, params: Any, batch: Batch) -> Batch:
        """The batch with the reference's fields added (no gradient flows into them)."""
        return {**batch, **jax.lax.stop_gradient(dict(self.fields(nnx.merge(self.graphdef, params), batch)))}


def batch_shardings(mesh: Mesh, batch: Mapping[str, Any]) -> dict[str, NamedSharding]:
    """Every batch array is split over (data, fsdp) on its leading axis."""
    return {k: NamedSharding(mesh, PartitionSpec(BATCH_AXES, *([None] * (jnp.ndim(v) - 1)))) for k, v in batch.items()}


def to_global(batch: Mapping[str, Any], shardings: Mapping[str, NamedSharding]) -> dict[str, jax.Array]:
    """This process's rows of the batch fields in `shardings` -> global arrays sharded over (data, fsdp);
    other fields (e.g. host-side lists) are left out."""
    return {k: jax.make_array_from_process_local_data(s, np.asarray(batch[k])) for k, s in shardings.items()}


def _micro_batches(batch: Batch, accum: int) -> Batch:
    """[accum * micro, ...] -> [accum, micro, ...], taking rows strided so each device's rows spread evenly."""
    def split(x: jax.Array) -> jax.Array:
        if x.shape[0] % accum:
            raise ValueError(f"batch of {x.shape[0]} rows does not split into {accum} micro-batches")
        return jnp.swapaxes(x.reshape(x.shape[0] // accum, accum, *x.shape[1:]), 0, 1)
    return {k: split(v) for k, v in batch.items()}


def make_train_step(loss_fn: LossFn, optimizer: optax.GradientTransformation, mesh: Mesh, graphdef: nnx.GraphDef,
                    shardings: TrainState, example_batch: Mapping[str, Any], grad_accum: int = 1,
                    trainable: Predicate = lambda path: True, donate: bool = True,
                    reference: ReferenceModel | None = None
                    ) -> Callable[..., tuple[TrainState, dict[str, jax.Array]]]:
    """A jitted `step(state, batch) -> (state, metrics)` with explicit shardings and the state donated;
    with a `reference`, `step(state, batch, reference_params)`.

    Gradients and optimizer state exist only for parameters `trainable` accepts (LoRA adapters, or all
    but the frozen groups). A step whose loss or gradient norm is not finite leaves params and optimizer
    state unchanged (metrics["skipped"] = 1); the trainer decides when to stop.
    """
    def loss_and_grads(trained: Any, frozen: Any, batch: Batch, rng: jax.Array, reference_params: Any):
        if reference is not None:
            batch = reference.extend(reference_params, batch)

        def objective(p: Any):
            numerator, denominator, metrics = loss_fn(nnx.merge(graphdef, combine(p, frozen)), batch, rng)
            return numerator, (denominator, metrics)
        (numerator, (denominator, metrics)), grads = jax.value_and_grad(objective, has_aux=True)(trained)
        return numerator, denominator, metrics, grads

    def step(state: TrainState, batch: Batch, reference_params: Any = None
             ) -> tuple[TrainState, dict[str, jax.Array]]:
        rng, step_rng = jax.random.split(state.rng)
        trained, frozen = partition(state.params, trainable)
        if grad_accum == 1:
            numerator, denominator, metrics, grads = loss_and_grads(trained, frozen, batch, step_rng, reference_params)
        else:
            micro = _micro_batches(batch, grad_accum)
            zeros = jax.tree.map(jnp.zeros_like, trained)

            def accumulate(carry, xs):
                num, den, grads = carry
                mb, key = xs
                n, d, m, g = loss_and_grads(trained, frozen, mb, key, reference_params)
                return (num + n, den + d, jax.tree.map(jnp.add, grads, g)), m

            keys = jax.random.split(step_rng, grad_accum)
            (numerator, denominator, grads), per_micro = jax.lax.scan(
                accumulate, (jnp.zeros(()), jnp.zeros(()), zeros), (micro, keys))
            metrics = jax.tree.map(lambda x: jnp.sum(x, axis=0), per_micro)
        scale = 1.0 / jnp.maximum(denominator, 1e-9)
        grads = jax.tree.map(lambda g: g * scale.astype(g.dtype), grads)
        loss = numerator * scale
        grad_norm = optax.tree.norm(grads)
        updates, opt_state = optimizer.update(grads, state.opt_state, trained)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)  # noqa: E731
        params = combine(keep(optax.apply_updates(trained, updates), trained), frozen)
        new_state = TrainState(step=state.step + 1, params=params,
                               opt_state=keep(opt_state, state.opt_state), rng=rng)
        out = {"loss": loss, "grad_norm": grad_norm, "tokens": denominator,
               "skipped": (~finite).astype(jnp.int32), **metrics}
        return new_state, out

    in_shardings = (shardings, batch_shardings(mesh, example_batch))
    if reference is not None:
        in_shardings += (reference.shardings,)
    return jax.jit(step, in_shardings=in_shardings,
                   out_shardings=(shardings, NamedSharding(mesh, PartitionSpec())),
                   donate_argnums=(0,) if donate else ())


Outputs = Callable[[nnx.Module, Batch], Mapping[str, jax.Array]]


def make_eval_step(loss_fn: LossFn, mesh: Mesh, graphdef: nnx.GraphDef, params_sharding: Any,
                   example_batch: Mapping[str, Any], reference: ReferenceModel | None = None,
                   outputs: Outputs | None = None) -> Callable[..., tuple[jax.Array, jax.Array, dict, dict]]:
    """A jitted `(params, batch[, reference_params]) -> (numerator, denominator, metric totals, outputs)` for
    held-out evaluation; `outputs(model, batch)` (default none) returns per-row arrays, e.g. step scores."""
    def eval_step(params: Any, batch: Batch, reference_params: Any = None):
        if reference is not None:
            batch = reference.extend(reference_params, batch)
        model = nnx.merge(graphdef, params)
        numerator, denominator, metrics = loss_fn(model, batch, jax.random.PRNGKey(0))
        return numerator, denominator, metrics, dict(outputs(model, batch)) if outputs else {}

    in_shardings = (params_sharding, batch_shardings(mesh, example_batch))
    if reference is not None:
        in_shardings += (reference.shardings,)
    return jax.jit(eval_step, in_shardings=in_shardings, out_shardings=NamedSharding(mesh, PartitionSpec()))


def setup_training(model: nnx.Module, loss_fn: LossFn, optimizer: optax.GradientTransformation, mesh: Mesh,
                   example_batch: Mapping[str, Any], *, seed: int = 0, grad_accum: int = 1,
                   trainable: Predicate = lambda path: True
                   ) -> tuple[TrainState, Callable[[TrainState, Batch], tuple[TrainState, dict[str, jax.Array]]]]:
    """A fresh train state for `model`, placed on `mesh`, and its jitted step: what benchmarks, tests and
    scripts need to drive the step without the trainer loop. The state holds copies: since the step
    donates its state, the caller's `model` stays usable."""
    graphdef, state = nnx.split(model)
    params = jax.tree.map(jnp.copy, nnx.to_pure_dict(state))
    p_shard = param_shardings(model, mesh)
    shardings = state_shardings(p_shard, optimizer, params, mesh, trainable)
    train_state = init_train_state(jax.device_put(params, p_shard), optimizer, seed, shardings, trainable)
    step = make_train_step(loss_fn, optimizer, mesh, graphdef, shardings, example_batch, grad_accum, trainable)
    return train_state, step
