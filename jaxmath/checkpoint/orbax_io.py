"""Parameter trees as Orbax checkpoints, written and read one parameter at a time.

A leaf may be a `HostArraySource`: a shape, a dtype and a function producing the array. Saving loads each
source only when its turn to be written comes (the next one is loaded while the previous one is written),
so converting a checkpoint holds about two parameters in host memory instead of the whole model. On disk
it is an ordinary numpy leaf: any Orbax restore reads it, as numpy or straight onto a device mesh.
Host arrays are written without Orbax's defensive deep copy (nothing mutates them during the save).
"""
from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import jax
import numpy as np
import orbax.checkpoint as ocp
import tensorstore as ts
from orbax.checkpoint import type_handlers

PathTuple = tuple[str, ...]
# Uncompressed (weights barely compress) and without OCDBT: one plain zarr directory per parameter, which
# tensorstore writes several times faster here than the OCDBT b-tree; restores read either layout.
USE_OCDBT = False


@dataclasses.dataclass(frozen=True)
class HostArraySource:
    """A parameter that is produced on demand (e.g. read from safetensors, or restored from Orbax)."""

    shape: tuple[int, ...]
    dtype: np.dtype
    produce: Callable[[], np.ndarray]

    def load(self) -> np.ndarray:
        array = self.produce()
        if tuple(array.shape) != tuple(self.shape) or array.dtype != self.dtype:
            raise ValueError(f"source produced {array.dtype}{list(array.shape)}, declared "
                             f"{np.dtype(self.dtype)}{list(self.shape)}")
        return array


class _SourceHandler(type_handlers.NumpyHandler):
    """Writes `HostArraySource` leaves as numpy arrays, loading each only when it is written."""

    def __init__(self) -> None:
        super().__init__(deepcopy_host_arrays=False)

    async def serialize(self, values: Sequence[HostArraySource], infos: Sequence[type_handlers.ParamInfo],
                        args: Sequence[ocp.SaveArgs] | None = None) -> list[ocp.future.Future]:
        args = args or [ocp.SaveArgs()] * len(values)
        return [ocp.future.CommitFutureAwaitingContractedSignals(self._write(values, infos, args),
                                                                 name="jaxmath_sources")]

    async def _write(self, sources: Sequence[HostArraySource], infos: Sequence[type_handlers.ParamInfo],
                     args: Sequence[ocp.SaveArgs]) -> None:
        if jax.process_index() != 0:  # as Orbax's numpy handler: host arrays are written by the primary process
            return
        pending = None
        for source, info, arg in zip(sources, infos, args):
            await info.await_path_creation()
            spec = type_handlers.get_json_tspec_write(
                info, use_ocdbt=info.is_ocdbt_checkpoint, global_shape=tuple(source.shape),
                local_shape=tuple(source.shape), dtype=np.dtype(source.dtype), process_index=jax.process_index(),
                arg=arg)
            store = await ts.open(ts.Spec(spec), create=True, open=True, context=info.ts_context)
            array = await asyncio.to_thread(source.load)  # overlaps with the previous write
            if pending is not None:
                await pending
            pending = store.write(array, can_reference_source_data_indefinitely=True)
        if pending is not None:
            await pending


def _handler() -> ocp.PyTreeCheckpointHandler:
    registry = type_handlers.create_type_handler_registry(
        (HostArraySource, _SourceHandler()),
        (np.ndarray, type_handlers.NumpyHandler(deepcopy_host_arrays=False)),
        (jax.Array, type_handlers.ArrayHandler()))
    return ocp.PyTreeCheckpointHandler(use_ocdbt=USE_OCDBT, use_compression=False, type_handler_registry=registry)


def save_params(directory: Path, params: Mapping[str, Any]) -> None:
    """Write a nested dict of host arrays, jax arrays or `HostArraySource`s as an Orbax PyTree checkpoint."""
    ocp.Checkpointer(_handler()).save(Path(directory).absolute(), args=ocp.args.PyTreeSave(dict(params)))


def nest(flat: Mapping[PathTuple, Any]) -> dict[str, Any]:
    """{("a", "b"): v} -> {"a": {"b": v}}."""
    tree: dict[str, Any] = {}
    for path, value in flat.items():
        node = tree
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = value
    return tree


def leaf(tree: Mapping[str, Any], path: PathTuple) -> Any:
    for key in path:
        tree = tree[key]
    return tree


def restore_leaf(directory: Path, path: PathTuple) -> np.ndarray:
    """One parameter of a checkpoint as a numpy array in its stored dtype; nothing else is read."""
    restored = ocp.PyTreeCheckpointer().restore(
        Path(directory).absolute(),
        args=ocp.args.PyTreeRestore(item=nest({path: 0}), partial_restore=True,
                                    restore_args=nest({path: ocp.RestoreArgs(restore_type=np.ndarray)})))
    return leaf(restored, path)


def restored_sources(directory: Path, shapes: Mapping[PathTuple, tuple[int, ...]],
                     dtype: np.dtype) -> dict[PathTuple, HostArraySource]:
    """A source per parameter (stored with these shapes and dtype) that restores it to the host when loaded."""
    return {path: HostArraySource(tuple(shape), np.dtype(dtype), lambda path=path: restore_leaf(directory, path))
            for path, shape in shapes.items()}
