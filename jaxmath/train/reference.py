"""Reference batch fields computed once before training (DPO's `reference: precompute`).

One pass of the frozen reference over this process's examples, in the order an unshuffled single epoch
of the pipeline yields them, gives a [num_examples, columns] table that the training pipeline attaches to
its examples. The table is saved in the run directory, so a resumed run needs no reference model.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from tqdm.auto import tqdm

from jaxmath.parallel import BATCH_AXES, process_max
from jaxmath.train.step import to_global

Forward = Callable[[Any, Mapping[str, jax.Array]], Mapping[str, jax.Array]]


def reference_file(out: Path) -> Path:
    """Where this process keeps its table (each process holds its own shard's rows)."""
    return out / "reference" / f"process{jax.process_index()}-of-{jax.process_count()}.npz"


def precompute(forward: Forward, params: Any, batches: Iterable[Mapping[str, np.ndarray]], num_examples: int,
               columns: Sequence[str], padding: Mapping[str, np.ndarray], shardings: Mapping[str, NamedSharding],
               mesh: Mesh, desc: str = "reference") -> np.ndarray:
    """[num_examples, len(columns)] float32: `forward(params, batch)[column]` for each of this process's
    examples, read from `batches` (per-process rows, examples first, padding rows after). Processes whose
    data runs out early feed `padding` batches so all of them run the same jitted passes."""
    rows = len(next(iter(padding.values())))
    passes = process_max(math.ceil(num_examples / rows))
    spec = PartitionSpec(BATCH_AXES)
    stream = iter(batches)
    tables = []
    for _ in tqdm(range(passes), desc=desc, unit="batch", disable=jax.process_index() != 0):
        fields = forward(params, to_global(next(stream, padding), shardings))
        local = multihost_utils.global_array_to_host_local_array({c: fields[c] for c in columns}, mesh, spec)
        tables.append(np.stack([np.asarray(local[c], np.float32) for c in columns], axis=1))
    return np.concatenate(tables)[:num_examples]


def save_tables(path: Path, tables: Mapping[str, np.ndarray]) -> None:
    """Write {split: table} atomically (temporary file, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp-{os.getpid()}.npz")
    np.savez(tmp, **tables)
    os.replace(tmp, path)


def load_tables(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as data:
        return {split: data[split] for split in data.files}
