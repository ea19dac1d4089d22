"""Device mesh (data, fsdp, tensor), the logical-axis -> mesh-axis table, sharding helpers, multi-host init.

Parameters and activations name their dimensions with logical axes ("embed", "heads", ...); the one table
below (LOGICAL_AXIS_RULES) says which mesh axis shards each. Change the table, not the model, to change
the parallelism strategy. A dimension that the chosen mesh axis does not divide is replicated instead.
"""
from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any, Iterable, Mapping, Sequence

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

log = logging.getLogger(__name__)

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

# Logical axis -> mesh axis (or tuple of mesh axes, or None for replicated).
LOGICAL_AXIS_RULES: dict[str, Any] = {
    # weights: ZeRO-3 over fsdp on the model dimension, Megatron over tensor on heads / mlp / vocab
    "vocab": "tensor",
    "embed": "fsdp",
    "heads": "tensor",
    "kv_heads": "tensor",
    "head_dim": None,
    "mlp": "tensor",
    "layers": None,
    "norm": None,
    "labels": None,
    "lora_rank": None,
    # activations
    "batch": BATCH_AXES,
    "length": None,
    "act_embed": None,
    "act_heads": "tensor",
    "act_kv_heads": "tensor",
    "act_mlp": "tensor",
    "act_vocab": "tensor",
}


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """Sizes of the three mesh axes; one size may be -1 to take the remaining devices."""

    data: int = -1
    fsdp: int = 1
    tensor: int = 1

    def shape(self, num_devices: int) -> tuple[int, int, int]:
        sizes = [self.data, self.fsdp, self.tensor]
        free = [i for i, s in enumerate(sizes) if s == -1]
        if len(free) > 1:
            raise ValueError(f"mesh: at most one axis may be -1, got data={self.data} fsdp={self.fsdp} "
                             f"tensor={self.tensor}")
        if any(s == 0 or s < -1 for s in sizes):
            raise ValueError(f"mesh: axis sizes must be positive or -1, got {sizes}")
        known = int(np.prod([s for s in sizes if s != -1]))
        if free:
            if num_devices % known:
                raise ValueError(f"mesh: {num_devices} devices are not divisible by the fixed axes' product {known}")
            sizes[free[0]] = num_devices // known
        if int(np.prod(sizes)) != num_devices:
            raise ValueError(f"mesh: data*fsdp*tensor = {int(np.prod(sizes))} but {num_devices} devices are available")
        return tuple(sizes)  # type: ignore[return-value]


def make_mesh(config: MeshConfig | Mapping[str, int] | Sequence[int] | None = None,
              devices: Sequence[jax.Device] | None = None) -> Mesh:
    """Build a Mesh with axes (data, fsdp, tensor) over all (or the given) devices, Auto-sharded axes."""
    if config is None:
        config = MeshConfig()
    elif isinstance(config, Mapping):
        config = MeshConfig(**config)
    elif not isinstance(config, MeshConfig):
        config = MeshConfig(*config)
    devices = list(devices if devices is not None else jax.devices())
    shape = config.shape(len(devices))
    return jax.make_mesh(shape, MESH_AXES, axis_types=(jax.sharding.AxisType.Auto,) * 3, devices=devices)


def logical_to_spec(logical_axes: Iterable[str | None], mesh: Mesh | None = None,
                    shape: Sequence[int] | None = None,
                    rules: Mapping[str, Any] = LOGICAL_AXIS_RULES) -> PartitionSpec:
    """PartitionSpec for a tensor whose dimensions carry `logical_axes`.

    With a mesh and shape given, a dimension the mesh axes do not divide is replicated, and a mesh axis
    already used by an earlier dimension is not used twice.
    """
    used: set[str] = set()
    spec = []
    for dim, name in enumerate(logical_axes):
        if name is not None and name not in rules:
            raise KeyError(f"logical axis {name!r} has no rule in LOGICAL_AXIS_RULES")
        target = rules.get(name) if name else None
        axes = (target,) if isinstance(target, str) else tuple(target or ())
        axes = tuple(a for a in axes if a not in used)
        if mesh is not None:
            axes = tuple(a for a in axes if mesh.shape[a] > 1)
            if shape is not None and axes and shape[dim] % int(np.prod([mesh.shape[a] for a in axes])):
                axes = ()
        used.update(axes)
        spec.append(axes[0] if len(axes) == 1 else (axes or None))
    return PartitionSpec(*spec)


def named_sharding(mesh: Mesh, logical_axes: Iterable[str | None], shape: Sequence[int] | None = None) -> NamedSharding:
    return NamedSharding(mesh, logical_to_spec(logical_axes, mesh, shape))


def shard_activation(x: jax.Array, logical_axes: Sequence[str | None]) -> jax.Array:
    """Constrain an activation's sharding under the ambient mesh (`jax.set_mesh`); a no-op without one."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or set(mesh.axis_names) != set(MESH_AXES):
        return x
    spec = logical_to_spec(logical_axes, mesh, x.shape)
    return jax.lax.with_sharding_constraint(x, spec)


def batch_sharding(mesh: Mesh, ndim: int = 2) -> NamedSharding:
    """Sharding for a [batch, ...] input: batch over (data, fsdp), the rest replicated."""
    return NamedSharding(mesh, PartitionSpec(BATCH_AXES, *([None] * (ndim - 1))))


def initialize_distributed(coordinator_address: str | None = None, num_processes: int | None = None,
                           process_id: int | None = None, local_device_ids: Sequence[int] | None = None) -> bool:
    """Start multi-host JAX from explicit arguments, JAXMATH_* variables, or the SLURM / TPU environment.

    JAXMATH_DISTRIBUTED=auto makes jax detect the cluster itself (Cloud TPU pod slices: launch/tpu_pod.sh
    sets it). Returns True when JAX runs as several processes; a lone process with nothing set is a no-op.
    """
    if jax.distributed.is_initialized():  # e.g. a launcher started it before calling the trainer
        return jax.process_count() > 1
    coordinator_address = coordinator_address or os.environ.get("JAXMATH_COORDINATOR")
    if num_processes is None and "JAXMATH_NUM_PROCESSES" in os.environ:
        num_processes = int(os.environ["JAXMATH_NUM_PROCESSES"])
    if process_id is None and "JAXMATH_PROCESS_ID" in os.environ:
        process_id = int(os.environ["JAXMATH_PROCESS_ID"])
    explicit = coordinator_address is not None
    slurm = int(os.environ.get("SLURM_NTASKS", "1")) > 1
    tpu_pod = "," in os.environ.get("TPU_WORKER_HOSTNAMES", "")
    auto = os.environ.get("JAXMATH_DISTRIBUTED", "").lower() == "auto"
    if not (explicit or slurm or tpu_pod or auto):
        return False
    if os.environ.get("JAX_PLATFORMS", "").split(",")[0] == "cpu":  # must precede backend start-up
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if explicit:
        if num_processes is None or process_id is None:
            raise ValueError("initialize_distributed: a coordinator address needs num_processes and process_id "
                             "(or JAXMATH_NUM_PROCESSES / JAXMATH_PROCESS_ID)")
        jax.distributed.initialize(coordinator_address, num_processes=num_processes, process_id=process_id,
                                   local_device_ids=local_device_ids)
    else:  # jax detects SLURM and Cloud TPU clusters by itself
        jax.distributed.initialize()
    log.info("jax.distributed: process %d of %d, %d local / %d global devices", jax.process_index(),
             jax.process_count(), jax.local_device_count(), jax.device_count())
    return jax.process_count() > 1


def process_max(value: int) -> int:
    """The largest `value` over all processes, e.g. how many batches each must run so that all run the same
    collectives (a collective itself: every process calls it)."""
    if jax.process_count() == 1:
        return value
    return int(np.max(multihost_utils.process_allgather(np.asarray(value, np.int32))))


def all_process_rows(tree: Any) -> Any:
    """Host arrays with a leading row axis, concatenated over processes in process order (the global batch's
    row order), so statistics cover every process's rows (a collective: every process calls it)."""
    if jax.process_count() == 1:
        return tree
    return multihost_utils.process_allgather(tree, tiled=True)


def sync_processes(name: str) -> None:
    """Wait until every process reaches the barrier `name` (nothing to wait for in a single-process run)."""
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)
