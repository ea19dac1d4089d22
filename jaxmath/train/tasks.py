"""What the one training loop needs to know about each objective, so the loop itself stays objective-free.

A `Task` says how an objective reads its rows, fits a tokenizer to them, turns them into batches (and the
batch layout the step is compiled for), which head the model has, its loss, what evaluation reports
beyond the loss, and how many real tokens a batch holds. SFT trains a causal LM on records; DPO on
preference pairs against a frozen reference; PRM a 2-label token classifier on step-labelled traces.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxmath.data.formats import PromptFormat, get_format
from jaxmath.data.pipelines import Pipeline, PipelineOptions, preference_pipeline, prm_pipeline, sft_pipeline
from jaxmath.data.readers import SkipLog, file_rows, read_records
from jaxmath.objectives import IGNORE_LABEL, make_loss, reference_log_probs, roc_auc
from jaxmath.train.config import TrainConfig
from jaxmath.train.step import Batch, LossFn

Row = Any  # a Record (SFT) or a mapping (DPO pair, PRM trace)


def read_mappings(path: str | os.PathLike) -> list[Mapping[str, Any]]:
    """Every row of a JSONL / Parquet file as a mapping; undecodable lines are skipped with one warning
    (the pipelines check each row's fields and name the bad ones)."""
    skips = SkipLog()
    rows = [located.row for located in file_rows(path, skips)]
    skips.warn()
    return rows


def _strings(*values: Any) -> str:
    return "\n".join(v for v in values if isinstance(v, str))


class Task:
    """SFT: masked next-token cross-entropy on records, through a causal LM. Also the defaults of any
    objective without a task of its own."""

    num_labels = 0  # > 0: the model is a TokenClassifier with this many labels

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
        return sft_pipeline(rows, tokenizer, get_format(config.data.format), seq_len=config.data.seq_len,
                            batch_size=_per_process(config), options=options, packing=config.data.packing)

    def example_batch(self, config: TrainConfig) -> dict[str, np.ndarray]:
        """The global batch layout (keys, shapes, dtypes) the step is compiled for."""
        shape = (config.data.batch_size, config.data.seq_len)
        return {k: np.zeros(shape, np.int32) for k in ("input_ids", "loss_mask", "segment_ids", "positions")}

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
    """GRPO: the clipped policy loss on rollout minibatches of records' prompts (jaxmath.train.rl drives the
    rollouts); `train.steps` counts iterations of `mu * minibatches` updates each."""

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


TASKS: dict[str, Task] = {"sft": Task(), "dpo": DPOTask(), "prm": PRMTask(), "grpo": GRPOTask()}


def task_for(config: TrainConfig) -> Task:
    """The task of `config.objective`; objectives with a loop of their own get the causal-LM defaults."""
    return TASKS.get(config.objective, TASKS["sft"])


def _per_process(config: TrainConfig) -> int:
    return config.data.batch_size // jax.process_count()
