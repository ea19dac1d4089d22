"""The one training loop, for every objective (sft / dpo / prm / grpo): build the run, prove it can write its
outputs, start or resume, then step -> read the metrics back -> evaluate and save on their cadences -> export.
What one step is and what it logs are the hooks of the objective's task (`jaxmath.train.tasks`); the pieces
every run shares are in `jaxmath.train.run`.

Everything a run writes lives in its output directory: config.yaml, metrics.jsonl, tensorboard/,
checkpoints/<step>/ (resumable), tokenizer/, reference/ (DPO's precomputed reference log-probs), and at
the end final_model/ (jaxmath) and hf/ (transformers; a PRM as `*ForTokenClassification`), plus hf_adapter/
(a PEFT adapter directory) for a LoRA run.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
from pathlib import Path
from typing import Any, Iterator, Mapping

import jax
import numpy as np
from flax import nnx

from jaxmath.checkpoint import peft_io
from jaxmath.checkpoint.convert import model_config_from_hf
from jaxmath.checkpoint.hub import resolve_model_dir
from jaxmath.checkpoint.pretrained import hf_config_of, is_jaxmath_dir
from jaxmath.compilation import enable_compile_cache
from jaxmath.config import dump_yaml
from jaxmath.data.formats import get_format
from jaxmath.data.tokenizer import ensure_pad_token, load_tokenizer, train_tokenizer
from jaxmath.models.attention import describe as describe_attention
from jaxmath.models.config import REMAT_POLICIES, ModelConfig
from jaxmath.models.transformer import build_model
from jaxmath.parallel import initialize_distributed, make_mesh, sync_processes
from jaxmath.progress import progress_bar
from jaxmath.tracking import check_wandb
from jaxmath.train import remat
from jaxmath.train.checkpointing import TrainCheckpointer
from jaxmath.train.config import TrainConfig, check_context
from jaxmath.train.metrics import MetricsWriter
from jaxmath.train.optimizer import make_optimizer
from jaxmath.train.preflight import check_outputs, ensure_writable
from jaxmath.train.publish import check_token
from jaxmath.train.rl import RLRun
from jaxmath.train.run import (Row, Run, TrainingError, abstract_state, export_final, held_out_accuracy, load_params,
                               push_final)
from jaxmath.train.state import TrainState, init_train_state, param_shardings, state_shardings, trainable_predicate
from jaxmath.train.step import ReferenceModel, batch_shardings, make_eval_step, make_train_step
from jaxmath.train.tasks import Settled, Task, task_for

log = logging.getLogger(__name__)


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




# ---------------------------------------------------------------- the run




def build_run(config: TrainConfig, output_dir: str | Path | None = None, with_data: bool = True,
              task: Task | None = None) -> Run:
    """Everything but the weights: mesh, data, tokenizer, model config, shardings and compiled-on-first-use
    steps. Without data (dry runs) the tokenizer is built only when the vocabulary size depends on it.
    `task` defaults to the objective's (`jaxmath.train.tasks.task_for`)."""
    task = task or task_for(config)
    enable_compile_cache(config.train.compile_cache, source="train.compile_cache")
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
    return run.task.report_memory(memory_report(state, compiled.memory_analysis()), run)


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
    none_fits = len(REMAT_POLICIES)
    index = none_fits if chosen is None else REMAT_POLICIES.index(chosen.remat)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        index = int(multihost_utils.broadcast_one_to_all(np.int32(index)))
    table = remat.format_options([option.row() for option in options])
    if index == none_fits:
        raise TrainingError(f"model.remat: auto found no remat policy whose train step fits this device:\n{table}\n"
                            "make micro-batches smaller (optimizer.grad_accum, data.batch_size, data.seq_len) or "
                            "shard the weights over more devices (mesh.fsdp)")
    log.info("model.remat: auto chose %s\n%s", REMAT_POLICIES[index], table)
    return _with_remat(config, REMAT_POLICIES[index])


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


def build_rl_run(config: TrainConfig, output_dir: str | Path | None = None, with_data: bool = True) -> RLRun:
    """A GRPO run built and prepared for rollouts, for benchmarks and tests that drive its iterations."""
    run = build_run(config, output_dir, with_data)
    run.task.prepare(run)
    return run.task.rl


# ---------------------------------------------------------------- the loop


def train(config: TrainConfig, output_dir: str | Path | None = None, resume: bool = False,
          progress: bool = True) -> dict[str, Any]:
    """Run (or resume) training for any objective; returns the task's summary (final loss and the last
    evaluation's figures; GRPO: rewards and held-out accuracy before and after)."""
    check_wandb(config.logging.wandb)  # fail now, naming the fix, not after loading and training
    if config.train.push_to_hub:
        check_token()
    initialize_distributed()
    task = task_for(config)
    task.check_environment(config)
    run = build_run(config, output_dir, task=task)
    task.prepare(run)
    check_outputs(run)  # room for a checkpoint; the final export works (tiny model) before any weight loads
    out, tc = run.out, config.train
    if jax.process_index() == 0:
        dump_yaml(run.config, out / "config.yaml")  # as resolved (model.remat: auto -> the measured choice)
    checkpointer = TrainCheckpointer(out / "checkpoints", keep=tc.keep_checkpoints)
    restoring = resume and checkpointer.latest_step() is not None
    if resume and not restoring:
        log.warning("--resume: no checkpoint in %s, starting from scratch", checkpointer.directory)
    params = None if restoring else load_params(config, run.model_config, run.mesh, run.shardings.params)
    task.start(run, params)
    data = task.train_data(run)
    writer = MetricsWriter(out, enabled=jax.process_index() == 0, config=run.config)
    if restoring:
        state, data_state, meta = checkpointer.restore(abstract_state(run))
        data.set_state(data_state)
        start = task.resume(run, checkpointer, state, meta)
        log.info("resumed from step %d", start)
    else:
        state = init_train_state(params, run.optimizer, tc.seed, run.shardings, run.trainable)
        start = 0
        task.begin(run, state, writer)
    del params  # the state holds them (and the step donates it)
    summary = _loop(run, task, state, data, checkpointer, writer, start, progress)
    writer.close(summary)
    checkpointer.close()
    return summary


def _loop(run: Run, task: Task, state: TrainState, data: Iterator, checkpointer: TrainCheckpointer,
          writer: MetricsWriter, start: int, progress: bool) -> dict[str, Any]:
    """Steps `start + 1 .. train.steps`: each is dispatched, and the one before it read back (its row written at
    log steps, with the evaluation of that step); evaluation and checkpoints on their cadences; the final export."""
    tc = run.config.train
    description, unit = task.progress
    bar = progress_bar(total=tc.steps, initial=start, desc=description, unit=unit, quiet=not progress)
    bad_updates, last, accuracy = 0, None, None
    evaluation: dict[str, float] = {}
    extra: dict[str, float] = {}  # a step's evaluation, written with its row
    pending: tuple[int, Any] | None = None

    def settle(step: int, outcome: Any) -> Settled:
        nonlocal bad_updates
        logged = step % tc.log_every == 0 or step == tc.steps
        settled = task.settle(run, step, outcome, logged)
        for update in settled.updates:
            bad_updates = bad_updates + 1 if update["skipped"] else 0
        if bad_updates >= tc.max_bad_steps:
            raise TrainingError(f"{bad_updates} consecutive updates had a non-finite loss or gradient (last at step "
                                f"{step}); stopping. Lower the learning rate or check the data.")
        bar.set_postfix(task.postfix(settled))
        if settled.samples is not None:
            writer.samples(step, settled.samples)
        if logged:
            writer.write(step, {**settled.row, **extra})
            extra.clear()
        return settled

    for step in range(start + 1, tc.steps + 1):
        state, outcome = task.step(run, state, data, step)
        if pending is not None:
            last = settle(*pending)
        pending = (step, outcome)
        bar.update(1)
        if (tc.eval_every and step % tc.eval_every == 0) or step == tc.steps:
            evaluation = task.held_out(run, state.params)
            extra.update(evaluation)
            if (figure := held_out_accuracy(run, state.params)) is not None:
                extra["eval_accuracy"] = accuracy = figure
        if (tc.save_every and step % tc.save_every == 0) or step == tc.steps:
            meta, kept = task.checkpoint(step)
            checkpointer.save(step, state, data.get_state(), meta, reference=kept)
    if pending is not None:
        last = settle(*pending)
    bar.close()
    checkpointer.wait()
    if tc.export_hf:
        export_final(run, state.params)
        push_final(run)
    return task.summary(run, last, evaluation, accuracy)
