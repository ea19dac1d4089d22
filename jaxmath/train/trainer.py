"""The training loop for every objective (sft / dpo / prm): data -> sharded train step -> metrics,
evaluation, checkpoints, final export. What differs per objective is in `jaxmath.train.tasks`.

Everything a run writes lives in its output directory: config.yaml, metrics.jsonl, tensorboard/,
checkpoints/<step>/ (resumable), tokenizer/, reference/ (DPO's precomputed reference log-probs), and at
the end final_model/ (jaxmath) and hf/ (transformers; a PRM as `*ForTokenClassification`), plus hf_adapter/
(a PEFT adapter directory) for a LoRA run.
"""
from __future__ import annotations

import collections
import dataclasses
import itertools
import json
import logging
import math
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from tqdm.auto import tqdm

from jaxmath.checkpoint import peft_io
from jaxmath.checkpoint.convert import model_config_from_hf, to_host
from jaxmath.checkpoint.hub import resolve_model_dir
from jaxmath.checkpoint.pretrained import (export_to_hf, from_pretrained, hf_config_of, is_jaxmath_dir,
                                           save_jaxmath)
from jaxmath.config import dump_yaml
from jaxmath.data.formats import get_format
from jaxmath.data.pipelines import Pipeline, PipelineOptions
from jaxmath.data.tokenizer import ensure_pad_token, load_tokenizer, train_tokenizer
from jaxmath.models.attention import describe as describe_attention
from jaxmath.models.config import ModelConfig
from jaxmath.models.quantize import dequantize_params, quantize_params
from jaxmath.models.transformer import build_model
from jaxmath.objectives import metric_means
from jaxmath.parallel import initialize_distributed, make_mesh, process_max, sync_processes
from jaxmath.train import reference as ref
from jaxmath.train import remat
from jaxmath.train.checkpointing import TrainCheckpointer
from jaxmath.train.config import TrainConfig, check_context
from jaxmath.train.metrics import MetricsWriter, peak_flops, train_flops_per_token
from jaxmath.train.optimizer import make_optimizer
from jaxmath.train.preflight import check_outputs, ensure_writable
from jaxmath.train.publish import check_token, push_to_hub
from jaxmath.train.state import (TrainState, init_train_state, param_shardings, partition, state_shardings,
                                 trainable_predicate)
from jaxmath.train.step import ReferenceModel, batch_shardings, make_eval_step, make_train_step, to_global
from jaxmath.train.tasks import Row, Task, task_for
from jaxmath.tracking import check_wandb

log = logging.getLogger(__name__)


class TrainingError(RuntimeError):
    """The run cannot go on (e.g. too many consecutive non-finite steps)."""


# ---------------------------------------------------------------- model and tokenizer


def _hf_config_dict(config: TrainConfig, tokenizer: Any | None) -> dict[str, Any]:
    """The HF config.json dict of the model being trained (source checkpoint's, or built from model.init)."""
    if config.model.path is not None:
        path = resolve_model_dir(config.model.path, config_only=True)
        return hf_config_of(path) if is_jaxmath_dir(path) else json.loads((path / "config.json").read_text())
    hf = dict(config.model.init or {})
    if tokenizer is not None:
        hf.setdefault("vocab_size", len(tokenizer))
        for key, token in (("eos_token_id", tokenizer.eos_token_id), ("pad_token_id", tokenizer.pad_token_id),
                           ("bos_token_id", tokenizer.bos_token_id)):
            if token is not None:
                hf.setdefault(key, token)
    return hf


def model_config(config: TrainConfig, hf_config: Mapping[str, Any]) -> ModelConfig:
    """The model trained: the checkpoint's (or model.init's) architecture with the objective's head."""
    m = config.model
    runtime = {**m.options(), **m.quantize_options()}
    if m.adapter is not None:
        runtime.update(peft_io.lora_options(resolve_model_dir(m.adapter)))
    path = resolve_model_dir(m.path, config_only=True) if m.path is not None else None
    if path is not None and is_jaxmath_dir(path):
        marker = json.loads((path / "jaxmath.json").read_text())
        mconfig = ModelConfig(**{**marker["model_config"], **runtime})
    else:
        mconfig = model_config_from_hf(hf_config, **runtime)
    num_labels = task_for(config).num_labels
    if num_labels:
        return mconfig.replace(num_labels=num_labels)
    if mconfig.num_labels:
        raise ValueError(f"objective {config.objective} trains a causal LM, but model.path={m.path} is a token "
                         f"classifier ({mconfig.num_labels} labels)")
    return mconfig


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


def prepare_tokenizer(config: TrainConfig, records: list[Row], out: Path) -> Any:
    """The run's tokenizer, saved under out/tokenizer so a resumed run uses the very same one. Process 0 builds
    and saves it; every process then loads that one, so all processes tokenise alike."""
    saved = out / "tokenizer"
    if not saved.is_dir() and config.data.tokenizer is None and config.model.path is None:
        raise ValueError("data.tokenizer is not set and model.path has no tokenizer: set data.tokenizer")
    if jax.process_index() == 0 and not saved.is_dir():
        build_tokenizer(config, records).save_pretrained(saved)
    sync_processes("jaxmath tokenizer saved")
    return ensure_pad_token(load_tokenizer(saved))


def build_tokenizer(config: TrainConfig, records: list[Row]) -> Any:
    """A BPE fitted to the records (`data.tokenizer: train`), else data.tokenizer's or model.path's."""
    if config.data.tokenizer == "train":
        texts = task_for(config).tokenizer_texts(records, get_format(config.data.format))
        tokenizer = train_tokenizer(texts, vocab_size=config.data.tokenizer_vocab_size)
    else:
        source = resolve_model_dir(config.data.tokenizer or config.model.path)
        tokenizer = load_tokenizer(source / "hf_files" if is_jaxmath_dir(source) else source)
    return ensure_pad_token(tokenizer)


# ---------------------------------------------------------------- data


def load_records(config: TrainConfig) -> tuple[list[Row], list[Row]]:
    """(train, eval) rows from files and generators (records for SFT, pairs for DPO, traces for PRM);
    eval falls back to a held-out fraction."""
    task = task_for(config)
    train: list[Row] = []
    for path in config.data.train:
        train.extend(task.read_rows(path))
    for k, (name, count) in enumerate(sorted(config.data.synthetic.items())):
        train.extend(task.synthetic_rows(name, count, seed=config.data.seed + k))
    evaluation: list[Row] = [r for path in config.data.eval for r in task.read_rows(path)]
    if not evaluation and config.data.eval_fraction > 0:
        order = np.random.default_rng(config.data.seed).permutation(len(train))
        held = max(1, int(len(train) * config.data.eval_fraction))
        evaluation = [train[i] for i in order[:held]]
        train = [train[i] for i in order[held:]]
    if not train:
        raise ValueError("no training records: set data.train files or data.synthetic generators")
    return train, evaluation


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


# ---------------------------------------------------------------- the run


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
    task: Task = dataclasses.field(default_factory=Task)
    reference: ReferenceModel | None = None  # the frozen reference evaluated inside the step (DPO on the fly)
    reference_tables: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)  # split -> precomputed
    optimizer: optax.GradientTransformation | None = None  # the run's Optax chain (its schedule: `schedule`)


def build_run(config: TrainConfig, output_dir: str | Path | None = None, with_data: bool = True,
              task: Task | None = None) -> Run:
    """Everything but the weights: mesh, data, tokenizer, model config, shardings and compiled-on-first-use
    steps. Without data (dry runs) the tokenizer is built only when the vocabulary size depends on it.
    `task` defaults to the objective's (`jaxmath.train.tasks.task_for`)."""
    task = task or task_for(config)
    out = ensure_writable(Path(output_dir or config.output_dir))
    config = with_measured_remat(config, output_dir)
    mesh = make_mesh(config.mesh)
    needs_tokenizer = with_data or "vocab_size" not in (config.model.init or {"vocab_size": None})
    train_records, eval_records = load_records(config) if needs_tokenizer else ([], [])
    tokenizer = prepare_tokenizer(config, train_records, out) if needs_tokenizer else None
    hf_config = _hf_config_dict(config, tokenizer)
    mconfig = model_config(config, hf_config)
    log.info(describe_attention(mconfig.attention_impl, dtype=mconfig.compute_dtype, head_dim=mconfig.head_dim))
    if tokenizer is not None and len(tokenizer) > mconfig.vocab_size:
        raise ValueError(f"tokenizer has {len(tokenizer)} tokens but the model's vocab_size is {mconfig.vocab_size}")
    check_context(config, mconfig.max_position_embeddings, "the max_position_embeddings of "
                  + (f"model.path={config.model.path}" if config.model.path else "model.init"))
    check_batch_split(config, mesh)
    abstract = nnx.eval_shape(lambda: build_model(mconfig))
    graphdef, abstract_state = nnx.split(abstract)
    p_shard = param_shardings(abstract, mesh)
    optimizer, schedule = make_optimizer(config.optimizer, config.optimizer_steps)
    trainable = trainable_predicate(config.optimizer.freeze, lora=mconfig.lora_rank > 0)
    shardings = state_shardings(p_shard, optimizer, nnx.to_pure_dict(abstract_state), mesh, trainable)
    loss_fn = task.loss(config)
    example = task.example_batch(config)
    reference = None
    if task.reference_mode(config) == "on_the_fly":
        reference = ReferenceModel(graphdef, p_shard, task.reference_fields)
    step_fn = make_train_step(loss_fn, optimizer, mesh, graphdef, shardings, example, config.optimizer.grad_accum,
                              trainable, reference=reference)
    eval_fn = make_eval_step(loss_fn, mesh, graphdef, p_shard, example, reference, task.eval_outputs)
    return Run(config, out, mesh, mconfig, hf_config, tokenizer, graphdef, trainable, shardings, step_fn, eval_fn,
               batch_shardings(mesh, example), schedule, train_records, eval_records, task, reference,
               optimizer=optimizer)


def check_batch_split(config: TrainConfig, mesh: jax.sharding.Mesh) -> None:
    """data.batch_size splits evenly over the processes and the mesh's batch shards (GRPO's minibatches are
    checked when its run is built)."""
    shards = mesh.shape["data"] * mesh.shape["fsdp"]
    if config.grpo is None and config.data.batch_size % math.lcm(shards, jax.process_count()):
        raise ValueError(f"data.batch_size={config.data.batch_size} does not split over the mesh's {shards} batch "
                         f"shards (mesh.data x mesh.fsdp = {mesh.shape['data']} x {mesh.shape['fsdp']}) and "
                         f"{jax.process_count()} processes")


def abstract_state(run: Run) -> TrainState:
    return jax.tree.map(lambda s, a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), run.shardings,
                        jax.eval_shape(lambda: _fresh_state_shapes(run)))


def _fresh_state_shapes(run: Run) -> TrainState:
    params = nnx.to_pure_dict(nnx.state(build_model(run.model_config)))
    opt_state = run.optimizer.init(partition(params, run.trainable)[0])
    return TrainState(jnp.zeros((), jnp.int32), params, opt_state, jax.random.PRNGKey(0))


def dry_run(config: TrainConfig, output_dir: str | Path | None = None) -> dict[str, Any]:
    """Compile the train step for the config's shapes and report per-device memory, loading no weights.
    With `model.remat: auto` every remat option is measured: the chosen one's report, plus `remat` and the
    `remat_options` table."""
    if config.model.remat == remat.AUTO:
        options = _measure_remat(config, output_dir, stop_at_first_fit=False)
        chosen = remat.first_fit(options) or options[-1]
        return {**chosen.report, "remat": chosen.remat, "remat_fits": chosen.fits,
                "remat_options": [option.row() for option in options]}
    run = build_run(config, output_dir, with_data=False)
    state = abstract_state(run)
    batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=run.batch_sharding[k])
             for k, v in run.task.example_batch(config).items()}
    reference = (state.params,) if run.reference is not None else ()
    compiled = run.step_fn.lower(state, batch, *reference).compile()
    report = memory_report(state, compiled.memory_analysis())
    if config.objective == "grpo":
        from jaxmath.train.rl import with_rollout_memory
        return with_rollout_memory(report, run)
    return report


def _with_remat(config: TrainConfig, policy: str) -> TrainConfig:
    return dataclasses.replace(config, model=dataclasses.replace(config.model, remat=policy))


def _measure_remat(config: TrainConfig, output_dir: str | Path | None,
                   stop_at_first_fit: bool) -> list[remat.RematOption]:
    return remat.measure_options(lambda policy: dry_run(_with_remat(config, policy), output_dir),
                                 remat.budget_gib(), stop_at_first_fit)


def with_measured_remat(config: TrainConfig, output_dir: str | Path | None = None) -> TrainConfig:
    """The config with `model.remat: auto` replaced by the least recomputation whose compiled step fits (one
    dry-run compile per option tried; every process takes process 0's choice)."""
    if config.model.remat != remat.AUTO:
        return config
    options = _measure_remat(config, output_dir, stop_at_first_fit=True)
    chosen = remat.first_fit(options)
    none_fits = len(remat.REMAT_ORDER)
    index = none_fits if chosen is None else remat.REMAT_ORDER.index(chosen.remat)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        index = int(multihost_utils.broadcast_one_to_all(np.int32(index)))
    table = remat.format_options([option.row() for option in options])
    if index == none_fits:
        raise TrainingError(f"model.remat: auto found no remat policy whose train step fits this device:\n{table}\n"
                            "make micro-batches smaller (optimizer.grad_accum, data.batch_size, data.seq_len) or "
                            "shard the weights over more devices (mesh.fsdp)")
    log.info("model.remat: auto chose %s\n%s", remat.REMAT_ORDER[index], table)
    return _with_remat(config, remat.REMAT_ORDER[index])


def memory_report(state: TrainState, stats: Any) -> dict[str, float]:
    """Whole-state sizes and a compiled step's per-device memory (`compiled.memory_analysis()`), in GiB."""
    gib = 2**30
    report = {
        "devices": jax.device_count(),
        "params_gib_total": sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(state.params)) / gib,
        "optimizer_gib_total": sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(state.opt_state)) / gib,
    }
    if stats is not None:
        report.update({
            "argument_gib_per_device": stats.argument_size_in_bytes / gib,
            "output_gib_per_device": stats.output_size_in_bytes / gib,
            "temp_gib_per_device": stats.temp_size_in_bytes / gib,
            "alias_gib_per_device": stats.alias_size_in_bytes / gib,
        })
        report["peak_gib_per_device"] = (stats.argument_size_in_bytes + stats.output_size_in_bytes
                                         + stats.temp_size_in_bytes - stats.alias_size_in_bytes) / gib
    return report


# ---------------------------------------------------------------- the frozen reference (DPO)


def reference_inputs(run: Run, params: Any | None) -> tuple[Any, ...]:
    """The step's extra arguments: the frozen reference's params when it runs inside the step (on the fly),
    else none. With `precompute` the reference instead makes one pass over the data first, whose table a
    resumed run (`params` None) reads back, and is dropped. The reference is `dpo.reference_model`, else
    the initial policy (`params`, or reloaded when resuming)."""
    mode = run.task.reference_mode(run.config)
    if mode is None:
        return ()
    saved = ref.reference_file(run.out)
    if mode == "precompute" and params is None and saved.is_file():
        run.reference_tables = ref.load_tables(saved)
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
    ref.save_tables(saved, run.reference_tables)
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
            tables[split] = ref.precompute(forward, params, pipeline, pipeline.num_examples, columns, padding,
                                           sharding, run.mesh, desc=f"reference ({split})")
    return tables


# ---------------------------------------------------------------- evaluation


def evaluate(run: Run, params: Any, reference: tuple[Any, ...] = ()) -> dict[str, float]:
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


def evaluate_accuracy(run: Run, params: Any) -> float | None:
    """Greedy pass@1 on the first `train.eval_generate` held-out problems, graded by the verifier."""
    count = run.config.train.eval_generate
    if not count or not run.eval_records:
        return None
    from jaxmath.evaluation import Sampling, evaluate_benchmark, stop_token_ids
    from jaxmath.verify import Verifier

    model = nnx.merge(run.graphdef, params)
    eos_ids = stop_token_ids(run.tokenizer, run.out / "tokenizer")
    sampling = Sampling(max_new_tokens=run.config.train.eval_max_new_tokens)
    with Verifier(workers=1, timeout=5) as verifier:
        metrics, _ = evaluate_benchmark("held-out", run.eval_records[:count], model, run.tokenizer,
                                        get_format(run.config.data.format), verifier, num_samples=1,
                                        sampling=sampling, eos_ids=eos_ids, batch_size=min(32, count))
    return metrics["pass@1"]


# ---------------------------------------------------------------- training


def train(config: TrainConfig, output_dir: str | Path | None = None, resume: bool = False,
          progress: bool = True) -> dict[str, Any]:
    """Run (or resume) training; returns a summary with the final loss and the last evaluation's figures
    (GRPO: rewards and held-out accuracy before and after)."""
    check_wandb(config.logging.wandb)  # fail now, naming the fix, not after loading and training
    if config.train.push_to_hub:
        check_token()
    if config.objective == "grpo":
        from jaxmath.train.rl import train_grpo
        return train_grpo(config, output_dir, resume, progress)
    initialize_distributed()
    run = build_run(config, output_dir)
    check_outputs(run)  # room for a checkpoint; the final export works (tiny model) before any weight loads
    out, tc = run.out, config.train
    if jax.process_index() == 0:
        dump_yaml(run.config, out / "config.yaml")  # as resolved (model.remat: auto -> the measured choice)
    checkpointer = TrainCheckpointer(out / "checkpoints", keep=tc.keep_checkpoints)
    restoring = resume and checkpointer.latest_step() is not None
    if resume and not restoring:
        log.warning("--resume: no checkpoint in %s, starting from scratch", checkpointer.directory)
    params = None if restoring else load_params(config, run.model_config, run.mesh, run.shardings.params)
    reference = reference_inputs(run, params)
    data = iter(make_pipeline(run, "train").dataset)
    if restoring:
        state, data_state, _ = checkpointer.restore(abstract_state(run))
        data.set_state(data_state)
        log.info("resumed from step %d", int(state.step))
    else:
        state = init_train_state(params, run.optimizer, tc.seed, run.shardings, run.trainable)
    del params  # the state holds them (and the step donates it)
    writer = MetricsWriter(out, enabled=jax.process_index() == 0, config=run.config)
    start = int(state.step)
    summary = _loop(run, state, data, checkpointer, writer, start, progress, reference)
    writer.close(summary)
    checkpointer.close()
    return summary


def _loop(run: Run, state: TrainState, data: Iterator, checkpointer: TrainCheckpointer, writer: MetricsWriter,
          start: int, progress: bool, reference: tuple[Any, ...] = ()) -> dict[str, Any]:
    tc = run.config.train
    flops_per_token = train_flops_per_token(run.model_config, run.config.data.seq_len)
    peak = peak_flops(jax.devices()[0], run.model_config.dtype)
    bar = tqdm(total=tc.steps, initial=start, desc="train", unit="step", disable=not progress)
    bad_steps, last_loss, summary_accuracy = 0, math.nan, None
    evaluation: dict[str, float] = {}
    window = {"tokens": 0, "positions": 0, "time": time.perf_counter()}
    pending: tuple[int, dict[str, jax.Array]] | None = None
    extra: dict[str, float] = {}  # eval results, written with the next logged row

    def settle(step: int, metrics: dict[str, jax.Array]) -> None:
        """Read back a finished step's metrics (one step late, so the device never waits for the host)."""
        nonlocal bad_steps, last_loss
        values = {k: float(v) for k, v in jax.device_get(metrics).items()}
        bad_steps = bad_steps + 1 if values["skipped"] else 0
        if bad_steps >= tc.max_bad_steps:
            raise TrainingError(f"{bad_steps} consecutive steps had a non-finite loss or gradient (last at step "
                                f"{step}); stopping. Lower the learning rate or check the data.")
        last_loss = values["loss"]
        bar.set_postfix(loss=f"{last_loss:.4f}")
        if step % tc.log_every == 0 or step == tc.steps:
            elapsed = time.perf_counter() - window["time"]
            tokens_per_second = window["tokens"] / elapsed
            row = {"loss": values["loss"], "learning_rate": float(run.schedule(step - 1)),
                   "grad_norm": values["grad_norm"], "tokens_per_second": tokens_per_second,
                   "skipped_steps": int(values["skipped"])}
            row.update(metric_means(run.config.objective, values))
            if peak:
                row["mfu"] = flops_per_token * window["positions"] / elapsed / (peak * jax.device_count())
            writer.write(step, {**row, **extra})
            extra.clear()
            window.update(tokens=0, positions=0, time=time.perf_counter())

    for step in range(start + 1, tc.steps + 1):
        batch = next(data)
        tokens, positions = run.task.token_counts(batch)
        window["tokens"] += tokens * jax.process_count()
        window["positions"] += positions * jax.process_count()
        state, metrics = run.step_fn(state, to_global(batch, run.batch_sharding), *reference)
        if pending is not None:
            settle(*pending)
        pending = (step, metrics)
        bar.update(1)
        if (tc.eval_every and step % tc.eval_every == 0) or step == tc.steps:
            evaluation = evaluate(run, state.params, reference)
            extra.update(evaluation)
            accuracy = evaluate_accuracy(run, state.params)
            if accuracy is not None:
                extra["eval_accuracy"] = summary_accuracy = accuracy
        if (tc.save_every and step % tc.save_every == 0) or step == tc.steps:
            checkpointer.save(step, state, data.get_state(), {"step": step})
    if pending is not None:
        settle(*pending)
    bar.close()
    checkpointer.wait()
    if tc.export_hf:
        export_final(run, state.params)
        push_final(run)
    return {"steps": tc.steps, "final_loss": last_loss, "eval_loss": evaluation.get("eval_loss"), **evaluation,
            "eval_accuracy": summary_accuracy, "output_dir": str(run.out)}


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
