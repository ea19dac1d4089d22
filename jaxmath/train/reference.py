"""DPO's frozen reference: evaluated inside every step (`reference: on_the_fly`), or its batch fields computed
once before training (`reference: precompute`).

One pass of the frozen reference over this process's examples, in the order an unshuffled single epoch
of the pipeline yields them, gives a [num_examples, columns] table that the training pipeline attaches to
its examples. The table is saved in the run directory, so a resumed run needs no reference model.
"""
from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxmath.parallel import BATCH_AXES, process_max
from jaxmath.progress import progress_bar
from jaxmath.train.run import Run, load_params, make_pipeline
from jaxmath.train.step import to_global

Forward = Callable[[Any, Mapping[str, jax.Array]], Mapping[str, jax.Array]]
log = logging.getLogger(__name__)


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
    for _ in progress_bar(range(passes), desc=desc, unit="batch", quiet=jax.process_index() != 0):
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


def reference_inputs(run: Run, params: Any | None) -> tuple[Any, ...]:
    """The step's extra arguments: the frozen reference's params when it runs inside the step (on the fly),
    else none. With `precompute` the reference instead makes one pass over the data first, whose table a
    resumed run (`params` None) reads back, and is dropped. The reference is `dpo.reference_model`, else
    the initial policy (`params`, or reloaded when resuming)."""
    mode = run.task.reference_mode(run.config)
    if mode is None:
        return ()
    saved = reference_file(run.out)
    if mode == "precompute" and params is None and saved.is_file():
        run.reference_tables = load_tables(saved)
        log.info("reference log-probs read from %s", saved)
        return ()
    path = run.config.dpo.reference_model
    if path is not None or params is None:
        reference = load_params(run.config, run.model_config, run.mesh, run.shardings.params, path=path)
    elif mode == "on_the_fly":  # the train state is donated at every step: the reference needs its own buffers
        reference = jax.jit(lambda p: jax.tree.map(jnp.copy, p), out_shardings=run.shardings.params)(params)
    else:
        reference = params
    if mode == "on_the_fly":
        return (reference,)
    run.reference_tables = precompute_reference(run, reference)
    save_tables(saved, run.reference_tables)
    return ()


def precompute_reference(run: Run, params: Any) -> dict[str, np.ndarray]:
    """{split: [examples, columns]} reference fields for this process's train and eval examples."""
    columns = run.task.reference_columns
    sharding = {k: s for k, s in run.batch_sharding.items() if k not in columns}
    padding = {k: v for k, v in run.task.padding_batch(run.config).items() if k in sharding}
    forward = jax.jit(lambda p, batch: run.task.reference_fields(nnx.merge(run.graphdef, p), batch),
                      in_shardings=(run.shardings.params, sharding))
    tables = {}
    for split, rows in (("train", run.train_records), ("eval", run.eval_records)):
        if rows:
            pipeline = make_pipeline(run, split, ordered=True)
            tables[split] = precompute(forward, params, pipeline, pipeline.num_examples, columns, padding,
                                           sharding, run.mesh, desc=f"reference ({split})")
    return tables
