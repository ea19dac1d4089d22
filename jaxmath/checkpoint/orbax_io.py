"""Parameter trees as Orbax checkpoints, written and read one parameter at a time.

A leaf may be a `HostArraySource`: a shape, a dtype and a function producing the array. Saving loads each
source only when its turn to be written comes (the next one is loaded, into a recycled buffer, while the
previous one is written), so converting a checkpoint holds two parameters in host memory instead of the
whole model. On disk it is an ordinary numpy leaf: any Orbax restore reads it, as numpy or onto a mesh.
Host arrays are written without Orbax's defensive deep copy (nothing mutates them during the save).
Only Orbax's public type-handler interface is used, so any orbax-checkpoint that pyproject.toml allows works.
"""
from __future__ import annotations

import asyncio
import copy
import dataclasses
import mmap
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import jax
import numpy as np
import orbax.checkpoint as ocp
import tensorstore as ts
from orbax.checkpoint import type_handlers

from jaxmath.checkpoint.hf_io import CheckpointError

PathTuple = tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class HostArraySource:
    """A parameter that is produced on demand (e.g. read from safetensors, or restored from Orbax).

    `produce(out)` returns the array; given a scratch array `out` of the declared shape and dtype it may
    fill and return that instead of allocating (the saver recycles two buffers this way).
    """

    shape: tuple[int, ...]
    dtype: np.dtype
    produce: Callable[[np.ndarray | None], np.ndarray]
    name: str = "parameter"  # for error messages

    @property
    def size(self) -> int:
        """Element count, as numpy's (Orbax's handlers size their write batches by `size * dtype.itemsize`)."""
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def nbytes(self) -> int:
        return self.size * np.dtype(self.dtype).itemsize

    def load(self, out: np.ndarray | None = None) -> np.ndarray:
        array = self.produce(out)
        if tuple(array.shape) != tuple(self.shape) or array.dtype != self.dtype:
            raise CheckpointError(f"{self.name}: got {array.dtype}{list(array.shape)}, expected "
                                  f"{np.dtype(self.dtype)}{list(self.shape)}")
        return array


class _Scratch:
    """Two byte buffers used in turn, grown as needed, so each parameter is produced into the buffer whose
    write finished a step earlier. Fresh host pages are the dominant cost of a conversion on VMs that hand
    freed memory back to the host, and transparent huge pages (numpy asks for them) cost more still there;
    the buffers are plain anonymous mappings, faulted in once."""

    def __init__(self) -> None:
        self._buffers: list[np.ndarray] = [np.empty(0, np.uint8), np.empty(0, np.uint8)]

    def take(self, k: int, source: HostArraySource) -> np.ndarray:
        if self._buffers[k % 2].nbytes < source.nbytes:
            self._buffers[k % 2] = np.empty(0, np.uint8)  # release the old one first
            self._buffers[k % 2] = np.frombuffer(mmap.mmap(-1, source.nbytes), np.uint8)
        return self._buffers[k % 2][: source.nbytes].view(source.dtype).reshape(source.shape)


class _HostArrayHandler(type_handlers.NumpyHandler):
    """Orbax's numpy handler, tuned for model directories on local disks. Saving writes host arrays and
    `HostArraySource`s itself, in order: each source is produced while the previous parameter is written, nothing
    is deep-copied (Orbax's handler copies every host array first; only its 0.12.5+ constructor can be told not
    to), and files are written without an fsync each (like safetensors and transformers; tensorstore's default
    syncs every file, which runs at disk speed, ~150 MB/s here, instead of page-cache speed). Reads go through
    memory-mapped files (tensorstore's `file_io_mode: memmap`, 2-3x faster here than its read(2) path).

    Only Orbax's public TypeHandler interface is used (`serialize`/`deserialize`, `ParamInfo`,
    `get_json_tspec_write`, `ocp.future`), the same in every orbax-checkpoint that pyproject.toml allows."""

    async def serialize(self, values: Sequence[np.ndarray | HostArraySource],
                        infos: Sequence[type_handlers.ParamInfo],
                        args: Sequence[ocp.SaveArgs] | None = None) -> list[ocp.future.Future]:
        args = args or [ocp.SaveArgs()] * len(values)
        infos = [_with_context(info, WRITE_CONTEXT) for info in infos]
        return [ocp.future.CommitFutureAwaitingContractedSignals(self._write(values, infos, args),
                                                                 name="jaxmath_host_arrays")]

    async def deserialize(self, infos: Sequence[type_handlers.ParamInfo],
                          args: Sequence[ocp.RestoreArgs] | None = None) -> Sequence[np.ndarray]:
        return await super().deserialize([_with_context(info, READ_CONTEXT) for info in infos], args)

    async def _write(self, values: Sequence[np.ndarray | HostArraySource], infos: Sequence[type_handlers.ParamInfo],
                     args: Sequence[ocp.SaveArgs]) -> None:
        if jax.process_index() != 0:  # as Orbax's numpy handler: host arrays are written by the primary process
            return
        writes, previous_source, sources, scratch = [], None, 0, _Scratch()
        for value, info, arg in zip(values, infos, args):
            await info.await_path_creation()
            spec = type_handlers.get_json_tspec_write(
                info, use_ocdbt=info.is_ocdbt_checkpoint, global_shape=tuple(value.shape),
                local_shape=tuple(value.shape), dtype=np.dtype(value.dtype), process_index=jax.process_index(),
                arg=arg)
            # The dtype is given to tensorstore here: orbax-checkpoint < 0.12 leaves it out of that spec.
            store = await ts.open(ts.Spec(spec), create=True, open=True, dtype=ts.dtype(np.dtype(value.dtype).name),
                                  context=info.ts_context)
            if isinstance(value, HostArraySource):
                # Produced while the previous source is written, into the buffer whose write was awaited last time.
                array = await asyncio.to_thread(value.load, scratch.take(sources, value))
                sources += 1
                if previous_source is not None:
                    await previous_source
                # Not kept in `writes`: a finished write's future may still hold its array alive.
                previous_source = store.write(array, can_reference_source_data_indefinitely=True)
                del array
            else:
                writes.append(store.write(np.asarray(value), can_reference_source_data_indefinitely=True))
        if previous_source is not None:
            await previous_source
        for write in writes:
            await write


WRITE_CONTEXT = {"file_io_sync": False}
READ_CONTEXT = {"file_io_mode": {"mode": "memmap"}}


def _with_context(info: type_handlers.ParamInfo, resources: Mapping[str, Any]) -> type_handlers.ParamInfo:
    """A copy of `info` whose tensorstore context is Orbax's plus `resources` (Orbax's alone where this
    tensorstore does not know them)."""
    base = info.ts_context.spec.to_json() if info.ts_context is not None else {}
    try:
        context = ts.Context({**base, **resources})
    except ValueError:
        return info
    info = copy.copy(info)
    info.ts_context = context
    return info


def _checkpointer(local: bool) -> ocp.Checkpointer:
    """An Orbax checkpointer for parameter trees. `local`: the tree is host data of this process alone, so
    Orbax syncs with no other process (its barriers would wait for processes that never call); else every
    process of a multi-process job must call it, as for any collective."""
    options = ocp.options.MultiprocessingOptions()
    if local:
        options = ocp.options.MultiprocessingOptions(primary_host=jax.process_index(),
                                                     active_processes={jax.process_index()})
    host = _HostArrayHandler()
    registry = type_handlers.create_type_handler_registry(
        (HostArraySource, host),
        (np.ndarray, host),
        (jax.Array, type_handlers.ArrayHandler()))
    # Orbax's default layout (OCDBT), uncompressed: weights barely compress and zstd costs seconds per GB.
    handler = ocp.PyTreeCheckpointHandler(use_compression=False, type_handler_registry=registry,
                                          multiprocessing_options=options)
    return ocp.Checkpointer(handler, multiprocessing_options=options)


def save_params(directory: Path, params: Mapping[str, Any]) -> None:
    """Write a nested dict of host arrays, jax arrays or `HostArraySource`s as an Orbax PyTree checkpoint.

    In a multi-process job, a tree holding arrays sharded over several processes is saved collectively (every
    process calls this); a tree of host data is written by process 0 alone (Orbax writes host arrays from
    process 0 only, so other processes cannot write one)."""
    local = all(not isinstance(x, jax.Array) or x.is_fully_addressable for x in jax.tree.leaves(dict(params)))
    if local and jax.process_index() != 0:
        raise RuntimeError(f"{directory}: host arrays are saved by process 0 only; this is process "
                           f"{jax.process_index()}")
    _checkpointer(local).save(Path(directory).absolute(), args=ocp.args.PyTreeSave(dict(params)))


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
    """tree["a"]["b"] for path ("a", "b"); raises naming the parameter when it is absent."""
    for key in path:
        if key not in tree:
            raise CheckpointError(f"parameter {'/'.join(path)} is missing (no {key!r})")
        tree = tree[key]
    return tree


def restore_leaf(directory: Path, path: PathTuple) -> np.ndarray:
    """One parameter of a checkpoint as a numpy array in its stored dtype; nothing else is read. Host data:
    any process may call it alone."""
    try:
        restored = _checkpointer(local=True).restore(
            Path(directory).absolute(),
            args=ocp.args.PyTreeRestore(item=nest({path: 0}), partial_restore=True,
                                        restore_args=nest({path: ocp.RestoreArgs(restore_type=np.ndarray)})))
    except Exception as err:  # Orbax / tensorstore raise many kinds; the message names what is wrong
        raise CheckpointError(f"{directory}: cannot restore {'/'.join(path)} ({err})") from err
    return leaf(restored, path)


def restored_sources(directory: Path, shapes: Mapping[PathTuple, tuple[int, ...]],
                     dtype: np.dtype) -> dict[PathTuple, HostArraySource]:
    """A source per parameter (stored with these shapes and dtype) that restores it to the host when loaded."""
    return {path: HostArraySource(tuple(shape), np.dtype(dtype), lambda out, path=path: restore_leaf(directory, path),
                                  name=f"{directory}: {'/'.join(path)}")
            for path, shape in shapes.items()}
