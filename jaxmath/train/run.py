"""What every objective's training run shares: the `Run` (built once by jaxmath.train.trainer.build_run), the
weights it starts from, its data pipelines, held-out evaluation and the final export. The training loop
(jaxmath.train.trainer), the tasks' hooks (jaxmath.train.tasks), the preflight and GRPO (jaxmath.train.rl) all
use these; nothing here imports them back.
"""
from __future__ import annotations

import collections
import dataclasses
import itertools
import logging
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from jaxmath.checkpoint import peft_io
from jaxmath.checkpoint.convert import to_host
from jaxmath.checkpoint.hub import resolve_model_dir
from jaxmath.checkpoint.pretrained import export_to_hf, from_pretrained, is_jaxmath_dir, save_jaxmath
from jaxmath.data.formats import get_format
from jaxmath.data.pipelines import Pipeline, PipelineOptions
from jaxmath.evaluation import evaluate_benchmark
from jaxmath.inference.config import Sampling
from jaxmath.inference.loading import stop_token_ids
from jaxmath.models.config import ModelConfig
from jaxmath.models.quantize import dequantize_params, quantize_params
from jaxmath.models.transformer import build_model
from jaxmath.objectives import metric_means
from jaxmath.parallel import process_max, sync_processes
from jaxmath.train.config import TrainConfig
from jaxmath.train.publish import push_to_hub
from jaxmath.train.state import TrainState, partition
from jaxmath.train.step import ReferenceModel, to_global
from jaxmath.verify import Verifier

log = logging.getLogger(__name__)
Row = Any  # a Record (SFT, GRPO) or a mapping (DPO pair, PRM trace)


class TrainingError(RuntimeError):
    """The run cannot go on (e.g. too many consecutive non-finite steps)."""


@dataclasses.dataclass
class Run:
    """What the loop needs, built once from the config."""

    config: TrainConfig
    out: Path
    mesh: jax.sharding.Mesh
    model_config: ModelConfig
    hf_config: dict[str, Any]
    tokenizer: Any
    graphdef: nnx.GraphDef
    trainable: Callable[[str], bool]
    shardings: TrainState
    step_fn: Callable  # (state, batch) -> (state, metrics); (state, batch, reference params) with `reference`
    eval_fn: Callable  # (params, batch[, reference params]) -> (numerator, denominator, metric totals, outputs)
    batch_sharding: dict[str, Any]
    schedule: Callable
    train_records: list[Row]
    eval_records: list[Row]
    task: Any  # the objective's Task (jaxmath.train.tasks): its data, loss and the loop's hooks
    reference: ReferenceModel | None = None  # the frozen reference evaluated inside the step (DPO on the fly)
    reference_tables: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)  # split -> precomputed
    optimizer: optax.GradientTransformation | None = None  # the run's Optax chain (its schedule: `schedule`)


def load_params(config: TrainConfig, mconfig: ModelConfig, mesh: jax.sharding.Mesh,
                shardings: dict[str, Any], path: str | None = None) -> dict[str, Any]:
    """Pretrained weights placed on the mesh (from `path`, default model.path; a causal LM's decoder under a
    fresh head when `mconfig` is a classifier), or a random init created directly in its shards. With
    model.quantize the loaded base's projection kernels are then quantised, one at a time."""
    adapter = config.model.adapter if path is None else None  # the policy's own weights: base + adapter
    path = path or config.model.path
    if path is not None:
        params = nnx.to_pure_dict(nnx.state(from_pretrained(
            resolve_model_dir(path), mesh=mesh, num_labels=mconfig.num_labels or None,
            adapter=None if adapter is None else resolve_model_dir(adapter), **config.model.options())))
        got = jax.tree.map(np.shape, params)
        want = jax.tree.map(lambda s: s.shape, _abstract_params(mconfig.replace(quantize_weights=None)))
        if got != want:
            raise ValueError(f"{path}: its parameters do not have the shapes of the model trained "
                             f"({mconfig.model_type}, {mconfig.num_layers} layers, hidden {mconfig.hidden_size})")
        return quantize_params(params, _abstract_params(mconfig), shardings)
    init = jax.jit(lambda: nnx.to_pure_dict(nnx.state(build_model(mconfig, config.model.seed))),
                   out_shardings=shardings)
    return init()


def _abstract_params(mconfig: ModelConfig) -> dict[str, Any]:
    return nnx.to_pure_dict(nnx.state(nnx.eval_shape(lambda: build_model(mconfig))))


def abstract_state(run: Run) -> TrainState:
    return jax.tree.map(lambda s, a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), run.shardings,
                        jax.eval_shape(lambda: _fresh_state_shapes(run)))


def _fresh_state_shapes(run: Run) -> TrainState:
    params = nnx.to_pure_dict(nnx.state(build_model(run.model_config)))
    opt_state = run.optimizer.init(partition(params, run.trainable)[0])
    return TrainState(jnp.zeros((), jnp.int32), params, opt_state, jax.random.PRNGKey(0))


def make_pipeline(run: Run, split: str, ordered: bool = False) -> Pipeline:
    """The train (endless, shuffled) or eval (one epoch) pipeline of this process; `ordered`: one unshuffled
    epoch (the reference pass). Precomputed reference fields join the examples."""
    config = run.config
    rows = run.train_records if split == "train" else run.eval_records
    endless = split == "train" and not ordered
    options = PipelineOptions(seed=config.data.seed, num_epochs=None if endless else 1, shuffle=endless,
                              strict=config.data.strict)
    reference = None if ordered else run.reference_tables.get(split)
    return run.task.pipeline(config, rows, run.tokenizer, options, reference)


def held_out_figures(run: Run, params: Any, reference: tuple[Any, ...] = ()) -> dict[str, float]:
    """Held-out figures over `train.eval_batches` batches: eval_loss, the objective's metric means (DPO reward
    accuracy and margins, PRM step accuracy) and its own figures (PRM step ROC AUC), each prefixed eval_."""
    if not run.eval_records:
        return {}
    numerator = denominator = 0.0
    totals: dict[str, float] = collections.defaultdict(float)
    outputs: dict[str, list[np.ndarray]] = collections.defaultdict(list)
    for batch in eval_batches(run):
        n, d, metrics, extra = run.eval_fn(params, to_global(batch, run.batch_sharding), *reference)
        numerator, denominator = numerator + float(n), denominator + float(d)
        for key, value in jax.device_get(metrics).items():
            totals[key] += float(value)
        for key, value in extra.items():
            outputs[key].append(to_host(value))
    result = {"loss": numerator / max(denominator, 1.0), **metric_means(run.config.objective, totals)}
    if outputs:
        result.update(run.task.eval_summary({k: np.concatenate(v) for k, v in outputs.items()}))
    return {f"eval_{k}": v for k, v in result.items()}


def eval_batches(run: Run) -> list[dict[str, Any]]:
    """This process's held-out batches (at most `train.eval_batches`), topped up with padding batches to the
    largest count of any process: shards can yield different numbers of batches, and every process must run
    each (collective) evaluation step. Padding rows have no scored tokens, so they change no figure."""
    batches = list(itertools.islice(make_pipeline(run, "eval"), run.config.train.eval_batches))
    padding = run.task.padding_batch(run.config)
    return batches + [padding] * (process_max(len(batches)) - len(batches))


def held_out_accuracy(run: Run, params: Any) -> float | None:
    """Greedy pass@1 on the first `train.eval_generate` held-out problems, graded by the verifier."""
    count = run.config.train.eval_generate
    if not count or not run.eval_records:
        return None
    model = nnx.merge(run.graphdef, params)
    eos_ids = stop_token_ids(run.tokenizer, run.out / "tokenizer")
    sampling = Sampling(max_new_tokens=run.config.train.eval_max_new_tokens)
    with Verifier(workers=1, timeout=5) as verifier:
        metrics, _ = evaluate_benchmark("held-out", run.eval_records[:count], model, run.tokenizer,
                                        get_format(run.config.data.format), verifier, num_samples=1,
                                        sampling=sampling, eos_ids=eos_ids, batch_size=min(32, count))
    return metrics["pass@1"]


def export_final(run: Run, params: Any) -> None:
    """final_model/ (jaxmath model directory), hf/ (transformers checkpoint with the tokenizer, LoRA merged)
    and, for a LoRA run, hf_adapter/ (the adapters alone, as a PEFT adapter directory for the base model).
    Every process takes part in gathering the params to the host (a collective); process 0 writes the
    directories (Orbax saves host arrays from process 0 alone, see jaxmath.checkpoint.orbax_io); all return
    once they exist."""
    host = jax.tree.map(to_host, params)
    if jax.process_index() == 0:
        side = sorted((run.out / "tokenizer").glob("*"))
        # a quantised base is written dequantised (the kernels the run trained against), adapters alongside
        host = dequantize_params(host, run.model_config.weight_dtype)
        mconfig = run.model_config.replace(quantize_weights=None)
        save_jaxmath(run.out / "final_model", host, mconfig, run.hf_config, side, overwrite=True)
        export_to_hf(run.out / "final_model", run.out / "hf", overwrite=True)
        if mconfig.lora_rank:
            base = run.config.model.path
            peft_io.save_adapter(run.out / "hf_adapter", host, mconfig, overwrite=True,
                                 base_model=None if base is None or is_jaxmath_dir(base) else base)
    sync_processes("jaxmath export_final")


def push_final(run: Run) -> None:
    """Upload hf/ with a generated model card to `train.push_to_hub` (process 0), after the final export."""
    if run.config.train.push_to_hub and jax.process_index() == 0:
        url = push_to_hub(run.out / "hf", run.config.train.push_to_hub, private=run.config.train.hub_private)
        log.info("pushed %s to %s", run.out / "hf", url)
