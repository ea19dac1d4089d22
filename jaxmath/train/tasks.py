"""Each objective's part of a training run, so that the one training loop (jaxmath.train.trainer.train) stays
objective-free.

A task says how an objective reads its rows, fits a tokenizer to them, turns them into batches (and the
batch layout the step is compiled for), which head the model has, its loss, what evaluation reports beyond
the loss, and how many real tokens a batch holds; and, through its hooks, what one step of the loop is and
what it logs. SFT trains a causal LM on records; DPO on preference pairs against a frozen reference; PRM a
2-label token classifier on step-labelled traces; GRPO a policy on its own rollouts (jaxmath.train.rl).
"""
from __future__ import annotations

import dataclasses
import math
import os
import time
from typing import Any, Iterator, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxmath.compilation import CompileClock
from jaxmath.data.formats import PromptFormat, get_format
from jaxmath.data.pipelines import (Pipeline, PipelineOptions, preference_pipeline, prm_pipeline, rl_prompt_pipeline,
                                    sft_pipeline)
from jaxmath.data.readers import SkipLog, file_rows, read_records
from jaxmath.objectives import IGNORE_LABEL, make_loss, metric_means, reference_log_probs, roc_auc
from jaxmath.train.checkpointing import TrainCheckpointer
from jaxmath.train.config import TrainConfig
from jaxmath.train.metrics import MetricsWriter, peak_flops, train_flops_per_token
from jaxmath.train.reference import reference_inputs
from jaxmath.train.rl import RLRun, collect, log_row, rl_run, rollout_batch, update_policy, with_rollout_memory
from jaxmath.train.rollout import sample_columns
from jaxmath.train.run import Row, Run, abstract_state, held_out_accuracy, held_out_figures, load_params, make_pipeline
from jaxmath.train.state import TrainState
from jaxmath.train.step import Batch, LossFn, to_global
from jaxmath.verify.sandbox import require_layers, shared_layers


def read_mappings(path: str | os.PathLike) -> list[Mapping[str, Any]]:
    """Every row of a JSONL / Parquet file as a mapping; undecodable lines are skipped with one warning
    (the pipelines check each row's fields and name the bad ones)."""
    skips = SkipLog()
    rows = [located.row for located in file_rows(path, skips)]
    skips.warn()
    return rows


def _strings(*values: Any) -> str:
    return "\n".join(v for v in values if isinstance(v, str))


@dataclasses.dataclass
class Settled:
    """A finished step's figures: each optimizer update's metrics in order (the loop's bad-step limit counts
    them), the row the loop writes at log steps, and completions to show (a W&B table) when there are any."""

    updates: list[dict[str, float]]
    row: dict[str, Any]
    samples: Mapping[str, list] | None = None


class Throughput:
    """Tokens and computed positions since the last logged row: tokens/s and, on devices with a known peak,
    model FLOPs utilisation."""

    def __init__(self, run: Run):
        self.flops_per_token = train_flops_per_token(run.model_config, run.config.data.seq_len)
        self.peak = peak_flops(jax.devices()[0], run.model_config.dtype)
        self.reset()

    def reset(self) -> None:
        self.tokens, self.positions, self.start = 0, 0, time.perf_counter()

    def add(self, tokens: int, positions: int) -> None:
        """Count this process's batch once for every process (they take equal shares)."""
        self.tokens += tokens * jax.process_count()
        self.positions += positions * jax.process_count()

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def mfu(self, elapsed: float) -> float | None:
        if not self.peak:
            return None
        return self.flops_per_token * self.positions / elapsed / (self.peak * jax.device_count())


class Task:
    """One objective's part of a training run. A task instance belongs to one run (`task_for` makes a new one),
    so its hooks keep the run's objective state on it.

    Rows default to problem records (from files and the generators). The loop's default hooks run one batch
    of the objective's pipeline through the train step per step and read its metrics back one step late (so
    the device never waits for the host), as SFT, DPO and PRM do; GRPO overrides them.
    """

    num_labels = 0  # > 0: the model is a TokenClassifier with this many labels
    progress = ("train", "step")  # the progress bar's description and unit (one loop step)

    # ---------------------------------------------------------------- rows, batches and loss

    def read_rows(self, path: str | os.PathLike) -> list[Row]:
        return read_records(path)

    def synthetic_rows(self, name: str, count: int, seed: int) -> list[Row]:
        from jaxmath.data.generators import generate

        return generate(name, count, seed=seed)

    def tokenizer_texts(self, rows: Sequence[Row], fmt: PromptFormat) -> list[str]:
        """Texts to fit a BPE tokenizer on (`data.tokenizer: train`)."""
        return [f"{fmt.system_prompt}\n{r.question}\n{fmt.target(r)}" for r in rows]

    def pipeline(self, config: TrainConfig, rows: Sequence[Row], tokenizer: Any, options: PipelineOptions,
                 reference_logps: np.ndarray | None = None) -> Pipeline:
        """This process's batches (its share of data.batch_size rows each)."""
        raise NotImplementedError(f"objective {config.objective} has no batch pipeline")

    def example_batch(self, config: TrainConfig) -> dict[str, np.ndarray]:
        """The global batch layout (keys, shapes, dtypes) the step is compiled for."""
        raise NotImplementedError(f"objective {config.objective} has no batch layout")

    def padding_batch(self, config: TrainConfig) -> dict[str, np.ndarray]:
        """This process's share of a batch with nothing to score (every row padding): what a process whose data
        ran out feeds so that all processes run the same collective steps."""
        return {k: np.zeros((v.shape[0] // jax.process_count(), *v.shape[1:]), v.dtype)
                for k, v in self.example_batch(config).items()}

    def loss(self, config: TrainConfig) -> LossFn:
        return make_loss(config.objective)

    def reference_mode(self, config: TrainConfig) -> str | None:
        """None, or where the frozen reference's `reference_fields` come from: "precompute" (one pass before
        training, stored with the data) or "on_the_fly" (inside the step)."""
        return None

    def eval_outputs(self, model: nnx.Module, batch: Batch) -> dict[str, jax.Array]:
        """Per-row arrays the held-out evaluation needs beyond the loss's metric totals (none by default)."""
        return {}

    def eval_summary(self, outputs: Mapping[str, np.ndarray]) -> dict[str, float]:
        """Evaluation figures from the concatenated `eval_outputs` of all evaluated batches."""
        return {}

    def token_counts(self, batch: Mapping[str, np.ndarray]) -> tuple[int, int]:
        """(real tokens, positions computed) of this process's batch, for tokens/s and MFU."""
        return int(np.sum(batch["segment_ids"] > 0)), int(batch["input_ids"].size)

    # ---------------------------------------------------------------- the training loop's hooks

    def check_environment(self, config: TrainConfig) -> None:
        """Before the run is built: what the machine must offer the objective (nothing by default)."""

    def prepare(self, run: Run) -> None:
        """After the run is built, before any weights load: the objective's own per-run pieces."""
        self.step_inputs: tuple[Any, ...] = ()

    def report_memory(self, report: dict[str, float], run: Run) -> dict[str, float]:
        """A dry run's memory report, with what the objective holds besides the train step."""
        return report

    def start(self, run: Run, params: Any | None) -> None:
        """Before the training data is read, with the initial weights (None when resuming): a frozen reference
        that runs inside the step becomes the step's extra input; a precomputed one joins the data."""
        self.step_inputs = reference_inputs(run, params)

    def train_data(self, run: Run) -> Iterator:
        """This process's training batches: a checkpointable iterator (`get_state` / `set_state`)."""
        return iter(make_pipeline(run, "train").dataset)

    def begin(self, run: Run, state: TrainState, writer: MetricsWriter) -> None:
        """A fresh start, right before the first step."""
        self.throughput = Throughput(run)

    def resume(self, run: Run, checkpointer: TrainCheckpointer, state: TrainState, meta: Mapping[str, Any]) -> int:
        """A resumed start, after the train state and the data iterator are restored: the last step done."""
        self.throughput = Throughput(run)
        return int(state.step)

    def step(self, run: Run, state: TrainState, data: Iterator, step: int) -> tuple[TrainState, Any]:
        """Dispatch step `step`; returns the new state and what `settle` reads back later."""
        batch = next(data)
        self.throughput.add(*self.token_counts(batch))
        return run.step_fn(state, to_global(batch, run.batch_sharding), *self.step_inputs)

    def settle(self, run: Run, step: int, outcome: Any, logged: bool) -> Settled:
        """Read back a dispatched step's figures; the full row (rates since the last logged row) when `logged`."""
        values = {k: float(v) for k, v in jax.device_get(outcome).items()}
        row: dict[str, Any] = {"loss": values["loss"]}
        if logged:
            elapsed = self.throughput.elapsed()
            row = {"loss": values["loss"], "learning_rate": float(run.schedule(step - 1)),
                   "grad_norm": values["grad_norm"], "tokens_per_second": self.throughput.tokens / elapsed,
                   "skipped_steps": int(values["skipped"])}
            row.update(metric_means(run.config.objective, values))
            if (mfu := self.throughput.mfu(elapsed)) is not None:
                row["mfu"] = mfu
            self.throughput.reset()
        return Settled([values], row)

    def postfix(self, settled: Settled) -> dict[str, str]:
        """The progress bar's figures after a settled step."""
        return {"loss": f"{settled.row['loss']:.4f}"}

    def held_out(self, run: Run, params: Any) -> dict[str, float]:
        """Held-out figures at an evaluation step, besides graded generation (eval_loss and the objective's)."""
        return held_out_figures(run, params, self.step_inputs)

    def checkpoint(self, step: int) -> tuple[dict[str, Any], Any | None]:
        """What a checkpoint at `step` stores besides the train state and the data iterator: metadata, and
        params kept next to the state (None: none)."""
        return {"step": step}, None

    def summary(self, run: Run, last: Settled | None, evaluation: Mapping[str, float],
                accuracy: float | None) -> dict[str, Any]:
        """The run's result: the final loss and the last evaluation's figures."""
        return {"steps": run.config.train.steps, "final_loss": last.row["loss"] if last else math.nan,
                "eval_loss": evaluation.get("eval_loss"), **evaluation, "eval_accuracy": accuracy,
                "output_dir": str(run.out)}


class SFTTask(Task):
    """SFT: masked next-token cross-entropy on records, through a causal LM."""

    def pipeline(self, config: TrainConfig, rows: Sequence[Row], tokenizer: Any, options: PipelineOptions,
                 reference_logps: np.ndarray | None = None) -> Pipeline:
        return sft_pipeline(rows, tokenizer, get_format(config.data.format), seq_len=config.data.seq_len,
                            batch_size=_per_process(config), options=options, packing=config.data.packing)

    def example_batch(self, config: TrainConfig) -> dict[str, np.ndarray]:
        shape = (config.data.batch_size, config.data.seq_len)
        return {k: np.zeros(shape, np.int32) for k in ("input_ids", "loss_mask", "segment_ids", "positions")}


class DPOTask(Task):
    """DPO on `{"question", "chosen", "rejected"}` rows against a frozen reference (see DPOSection)."""

    def read_rows(self, path: str | os.PathLike) -> list[Row]:
        return read_mappings(path)

    def synthetic_rows(self, name: str, count: int, seed: int) -> list[Row]:
        raise ValueError("data.synthetic generators make problem records; objective dpo reads preference pairs "
                         "from data.train files (build them with `jaxmath data pairs`)")

    def tokenizer_texts(self, rows: Sequence[Row], fmt: PromptFormat) -> list[str]:
        return [_strings(fmt.system_prompt, r.get("question"), r.get("chosen"), r.get("rejected")) for r in rows]

    def pipeline(self, config: TrainConfig, rows: Sequence[Row], tokenizer: Any, options: PipelineOptions,
                 reference_logps: np.ndarray | None = None) -> Pipeline:
        return preference_pipeline(rows, tokenizer, get_format(config.data.format), seq_len=config.data.seq_len,
                                   batch_size=_per_process(config), options=options, reference_logps=reference_logps)

    def example_batch(self, config: TrainConfig) -> dict[str, np.ndarray]:
        shape = (config.data.batch_size, config.data.seq_len)
        batch = {f"{side}_{key}": np.zeros(shape, np.int32)
                 for side in ("chosen", "rejected") for key in ("input_ids", "attention_mask", "loss_mask")}
        if self.reference_mode(config) == "precompute":
            batch.update({f"ref_{side}_logps": np.zeros(shape[:1], np.float32) for side in ("chosen", "rejected")})
        return batch

    def loss(self, config: TrainConfig) -> LossFn:
        return make_loss("dpo", **config.dpo.loss_options())

    def reference_mode(self, config: TrainConfig) -> str | None:
        return config.dpo.reference

    def reference_fields(self, model: nnx.Module, batch: Batch) -> dict[str, jax.Array]:
        """The frozen reference's batch fields; precomputed, they are stored as `reference_columns`."""
        return reference_log_probs(model, batch)

    reference_columns = ("ref_chosen_logps", "ref_rejected_logps")  # preference_pipeline's reference_logps

    def token_counts(self, batch: Mapping[str, np.ndarray]) -> tuple[int, int]:
        tokens = int(np.sum(batch["chosen_attention_mask"]) + np.sum(batch["rejected_attention_mask"]))
        return tokens, 2 * int(batch["chosen_input_ids"].size)


class PRMTask(Task):
    """PRM on `{"question", "steps", "labels"}` rows: a 2-label token classifier read at each step's end."""

    num_labels = 2

    def read_rows(self, path: str | os.PathLike) -> list[Row]:
        return read_mappings(path)

    def synthetic_rows(self, name: str, count: int, seed: int) -> list[Row]:
        raise ValueError("data.synthetic generators make problem records; objective prm reads step-labelled "
                         "traces from data.train files")

    def tokenizer_texts(self, rows: Sequence[Row], fmt: PromptFormat) -> list[str]:
        texts = []
        for r in rows:
            steps = r.get("steps")
            texts.append(_strings(fmt.system_prompt, r.get("question"),
                                  *(steps if isinstance(steps, list) else ())))
        return texts

    def pipeline(self, config: TrainConfig, rows: Sequence[Row], tokenizer: Any, options: PipelineOptions,
                 reference_logps: np.ndarray | None = None) -> Pipeline:
        return prm_pipeline(rows, tokenizer, get_format(config.data.format), seq_len=config.data.seq_len,
                            max_steps=config.prm.max_steps, batch_size=_per_process(config), options=options)

    def example_batch(self, config: TrainConfig) -> dict[str, np.ndarray]:
        shape = (config.data.batch_size, config.data.seq_len)
        return {k: np.zeros(shape, np.int32) for k in ("input_ids", "segment_ids", "positions", "labels")}

    def padding_batch(self, config: TrainConfig) -> dict[str, np.ndarray]:
        batch = super().padding_batch(config)
        batch["labels"][:] = IGNORE_LABEL  # label 0 is a bad step
        return batch

    def eval_outputs(self, model: nnx.Module, batch: Batch) -> dict[str, jax.Array]:
        logits = model(batch["input_ids"], positions=batch["positions"], segment_ids=batch["segment_ids"])
        return {"p_good": jax.nn.softmax(logits.astype(jnp.float32), axis=-1)[..., 1], "labels": batch["labels"]}

    def eval_summary(self, outputs: Mapping[str, np.ndarray]) -> dict[str, float]:
        """ROC AUC of P(good step) over every labelled step (left out while only one class was seen)."""
        labelled = outputs["labels"] != IGNORE_LABEL
        labels = outputs["labels"][labelled]
        if labels.size == 0 or labels.min() == labels.max():
            return {}
        return {"step_auc": roc_auc(outputs["p_good"][labelled], labels)}


class GRPOTask(Task):
    """GRPO: the clipped policy loss on minibatches of the policy's own rollouts for records' prompts
    (jaxmath.train.rl); one loop step is an iteration of `mu * minibatches` updates."""

    progress = ("grpo", "it")

    def example_batch(self, config: TrainConfig) -> dict[str, np.ndarray]:
        """One GRPO minibatch: prompt + completion tokens, masks, old (and reference) log-probs, advantages."""
        g = config.grpo
        rows, shape = g.rows // g.minibatches, (g.rows // g.minibatches, g.max_prompt_len + g.sampling.max_new_tokens)
        batch = {k: np.zeros(shape, np.int32) for k in ("input_ids", "attention_mask", "completion_mask")}
        batch["old_logprobs"] = np.zeros(shape, np.float32)
        batch["advantages"] = np.zeros((rows,), np.float32)
        if g.loss.beta > 0.0:
            batch["ref_logprobs"] = np.zeros(shape, np.float32)
        return batch

    def loss(self, config: TrainConfig) -> LossFn:
        return make_loss("grpo", **dataclasses.asdict(config.grpo.loss))

    def check_environment(self, config: TrainConfig) -> None:
        if config.sandbox.require:
            require_layers(config.sandbox.require)  # before any model is built

    def prepare(self, run: Run) -> None:
        super().prepare(run)
        self.rl: RLRun = rl_run(run)
        g = run.config.grpo
        self.keeps_reference = g.loss.beta > 0.0 and g.ref_refresh_every > 0  # saved with each checkpoint
        self.ref_params: Any | None = None
        self.accuracy_before: float | None = None
        self.sandbox_layers: list[str] | None = None

    def report_memory(self, report: dict[str, float], run: Run) -> dict[str, float]:
        return with_rollout_memory(report, run)

    def train_data(self, run: Run) -> Iterator:
        """Prompt batches, each prompt repeated `group_size` times."""
        config, g = run.config, run.config.grpo
        options = PipelineOptions(seed=config.data.seed, num_epochs=None, shuffle=True, strict=config.data.strict)
        return iter(rl_prompt_pipeline(run.train_records, run.tokenizer, get_format(config.data.format),
                                       max_prompt_len=g.max_prompt_len,
                                       prompts_per_batch=g.prompts_per_step // jax.process_count(),
                                       group_size=g.group_size, options=options).dataset)

    def begin(self, run: Run, state: TrainState, writer: MetricsWriter) -> None:
        """Held-out accuracy before the first update (logged as step 0); the reference is the initial policy."""
        self.accuracy_before = held_out_accuracy(run, state.params)
        if self.accuracy_before is not None:
            writer.write(0, {"eval_accuracy": self.accuracy_before})
        if run.config.grpo.loss.beta > 0.0:
            self.ref_params = self.rl.copy_params(state.params)

    def resume(self, run: Run, checkpointer: TrainCheckpointer, state: TrainState, meta: Mapping[str, Any]) -> int:
        """The refreshed reference saved with the checkpoint, else the initial policy loaded again."""
        if self.keeps_reference:
            self.ref_params = checkpointer.restore_reference(
                jax.eval_shape(self.rl.copy_params, abstract_state(run).params))
        elif run.config.grpo.loss.beta > 0.0:
            self.ref_params = self.rl.copy_params(
                load_params(run.config, run.model_config, run.mesh, run.shardings.params))
        self.accuracy_before = meta.get("accuracy_before")
        return int(meta["iteration"])

    def step(self, run: Run, state: TrainState, data: Iterator, step: int) -> tuple[TrainState, Any]:
        """One iteration: rollouts and rewards, the loss's batch, the updates (read back), then, every
        `ref_refresh_every` iterations, the reference <- the policy. Its statistics split the wall time into
        `compile_seconds` (XLA compiles and persistent-cache reads) and `iteration_seconds` (the rest)."""
        clock, begin = CompileClock(), time.perf_counter()
        groups, stats = collect(self.rl, state.params, data, step)
        batch = rollout_batch(self.rl, state.params, self.ref_params, groups)
        start = time.perf_counter()
        state, updates = update_policy(self.rl, state, batch, step)
        seconds = time.perf_counter() - start
        if self.keeps_reference and step % run.config.grpo.ref_refresh_every == 0:
            self.ref_params = self.rl.copy_params(state.params)
        compiled = clock.read()  # the updates were read back: every program of the iteration has run
        stats = {**stats, "compile_seconds": compiled["compile_seconds"],
                 "compile_cache_hits": float(compiled["compile_cache_hits"]),
                 "iteration_seconds": time.perf_counter() - begin - compiled["compile_seconds"]}
        return state, (groups, stats, updates, seconds)

    def settle(self, run: Run, step: int, outcome: Any, logged: bool) -> Settled:
        groups, stats, updates, seconds = outcome
        totals = {key: sum(u[key] for u in updates) for key in updates[0]}
        row = log_row(self.rl, step, stats, groups, totals, updates, seconds)
        if logged and self.sandbox_layers is None and (layers := shared_layers()) is not None:
            row["sandbox_layers"] = self.sandbox_layers = layers  # once: what confined the programs
        return Settled(updates, row, sample_columns(groups))

    def postfix(self, settled: Settled) -> dict[str, str]:
        return {"reward": f"{settled.row['reward_mean']:.3f}", "kl": f"{settled.row.get('kl_mean', 0.0):.4f}"}

    def held_out(self, run: Run, params: Any) -> dict[str, float]:
        return {}  # GRPO is evaluated by graded generation only

    def checkpoint(self, step: int) -> tuple[dict[str, Any], Any | None]:
        return ({"iteration": step, "accuracy_before": self.accuracy_before},
                self.ref_params if self.keeps_reference else None)

    def summary(self, run: Run, last: Settled | None, evaluation: Mapping[str, float],
                accuracy: float | None) -> dict[str, Any]:
        """Held-out accuracy before and after, the sandbox layers programs ran under, the last reward."""
        layers = {"sandbox_layers": self.sandbox_layers} if self.sandbox_layers is not None else {}
        row = last.row if last else {}
        return {"accuracy_before": self.accuracy_before, **layers, "accuracy_after": accuracy,
                "steps": run.config.train.steps, "reward_mean": row.get("reward_mean"),
                "accuracy": row.get("accuracy"), "output_dir": str(run.out)}


TASKS: dict[str, type[Task]] = {"sft": SFTTask, "dpo": DPOTask, "prm": PRMTask, "grpo": GRPOTask}


def task_for(config: TrainConfig) -> Task:
    """A new task for `config.objective` (one per run: its hooks keep the run's state)."""
    if config.objective not in TASKS:
        raise ValueError(f"unknown objective {config.objective!r}; known objectives: {', '.join(TASKS)}")
    return TASKS[config.objective]()


def _per_process(config: TrainConfig) -> int:
    return config.data.batch_size // jax.process_count()
