"""Train checkpoints with Orbax's CheckpointManager: async, atomic, last K kept, restorable onto any mesh.

A checkpoint holds the train state (params, optimizer state, step, RNG), the data iterator's state and a
small JSON of run facts, so `--resume` continues with exactly the batches and random numbers the
uninterrupted run would have used.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

from jaxmath.train.state import TrainState


def _as_tree(state: TrainState) -> dict[str, Any]:
    return {f.name: getattr(state, f.name) for f in dataclasses.fields(TrainState)}


def _target(tree: Any) -> Any:
    """Restore targets: each leaf's shape, dtype and sharding."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)


class TrainCheckpointer:
    """Save/restore TrainState + data-iterator state + metadata under `directory/<step>/`."""

    def __init__(self, directory: str | Path, keep: int = 3, async_save: bool = True):
        self.directory = Path(directory).absolute()
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                               enable_async_checkpointing=async_save)
        self.manager = ocp.CheckpointManager(self.directory, options=options)

    def save(self, step: int, state: TrainState, data_state: dict[str, Any] | None,
             meta: dict[str, Any] | None = None, force: bool = False, reference: Any | None = None) -> bool:
        """Save asynchronously; `reference` (e.g. GRPO's refreshed reference params) is stored alongside."""
        items = dict(state=ocp.args.StandardSave(_as_tree(state)), data=ocp.args.JsonSave(data_state or {}),
                     meta=ocp.args.JsonSave(meta or {}))
        if reference is not None:
            items["reference"] = ocp.args.StandardSave(reference)
        return self.manager.save(step, args=ocp.args.Composite(**items), force=force)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def _step(self, step: int | None) -> int:
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint to resume from in {self.directory}")
        return step

    def restore(self, abstract_state: TrainState, step: int | None = None
                ) -> tuple[TrainState, dict[str, Any], dict[str, Any]]:
        """Restore (state, data_state, meta); `abstract_state` gives shapes, dtypes and target shardings."""
        restored = self.manager.restore(self._step(step), args=ocp.args.Composite(
            state=ocp.args.StandardRestore(_target(_as_tree(abstract_state))), data=ocp.args.JsonRestore(),
            meta=ocp.args.JsonRestore()))
        state = TrainState(**restored["state"])
        return state, dict(restored["data"] or {}), dict(restored["meta"] or {})

    def restore_reference(self, abstract_params: Any, step: int | None = None) -> Any:
        """The `reference` params saved with a checkpoint, placed like `abstract_params`."""
        restored = self.manager.restore(self._step(step), args=ocp.args.Composite(
            reference=ocp.args.StandardRestore(_target(abstract_params))))
        return restored["reference"]

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()
