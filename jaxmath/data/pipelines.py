"""Grain pipelines that turn rows into fixed-shape numpy batches for SFT, GRPO prompts, DPO and PRM.

Each pipeline takes this process's share of the rows (row i goes to process i % count), tokenises it
once up front (bad rows skipped and counted, one warning; `strict` raises naming the row), then
streams it through Grain: seeded shuffle (reshuffled each epoch), optional packing, batching. The
iterator's `get_state()` is a JSON-serialisable dict; `set_state()` on a fresh iterator of the same
pipeline resumes with exactly the batches that would have come next.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Mapping, Sequence

import grain
import jax
import numpy as np
from transformers import PreTrainedTokenizerBase

from jaxmath.data.encode import as_record, encode_preference, encode_prm, encode_prompt, encode_sft
from jaxmath.data.formats import PromptFormat
from jaxmath.data.readers import SkipLog
from jaxmath.data.schema import BadRow, Record
from jaxmath.objectives.prm import IGNORE_LABEL

Row = Record | Mapping[str, Any]
Example = dict[str, Any]

PACKERS = {
    "first_fit": grain.experimental.FirstFitPackIterDataset,
    "best_fit": grain.experimental.BestFitPackIterDataset,
}


@dataclasses.dataclass(frozen=True)
class PipelineOptions:
    """What every stage's pipeline shares: order, epochs, this process's shard, bad-row policy.

    Shards can yield different numbers of batches per epoch (their rows differ), so multi-host
    training should stream with num_epochs=None and stop after a fixed number of steps.
    """

    seed: int = 0
    num_epochs: int | None = 1  # None repeats forever
    shuffle: bool = True
    shard_index: int | None = None  # None: jax.process_index()
    shard_count: int | None = None  # None: jax.process_count()
    strict: bool = False

    def shard(self) -> tuple[int, int]:
        """(index, count) of this process's shard, defaulting to JAX's process index and count."""
        if self.shard_index is None or self.shard_count is None:
            index, count = jax.process_index(), jax.process_count()
        else:
            index, count = self.shard_index, self.shard_count
        if not 0 <= index < count:
            raise ValueError(f"shard_index={index} is outside 0..{count - 1} (shard_count={count})")
        return index, count


@dataclasses.dataclass(frozen=True)
class Pipeline:
    """A Grain dataset of batches plus what went into it; iterate it, or `iter(pipeline.dataset)`."""

    dataset: grain.IterDataset
    num_examples: int
    skipped: SkipLog

    def __iter__(self) -> grain.DatasetIterator:
        """A fresh iterator; its get_state()/set_state() checkpoint and resume the stream."""
        return iter(self.dataset)


def _row_name(index: int, row: Any) -> str:
    row_id = row.id if isinstance(row, Record) else row.get("id") if isinstance(row, Mapping) else None
    return f"row {index}" + (f" (id {row_id!r})" if row_id not in (None, "") else "")


def check_length(length: int, limit: int, what: str = "tokens") -> None:
    """BadRow('over-length') when an example's `length` exceeds `limit`."""
    if length > limit:
        raise BadRow("over-length", f"{length} {what} > limit {limit}")


def prepare(rows: Sequence[Row], encode: Callable[[Row], Example], options: PipelineOptions,
            stage: str) -> tuple[list[Example], SkipLog]:
    """Encode this process's shard of `rows`; bad ones are counted with one summary warning (strict: raised)."""
    index, count = options.shard()
    skipped = SkipLog(strict=options.strict)
    examples: list[Example] = []
    for i in range(index, len(rows), count):
        try:
            examples.append(encode(rows[i]))
        except BadRow as err:
            skipped.skip(f"{stage} {_row_name(i, rows[i])}", err)
    skipped.warn()
    if not examples:
        raise ValueError(f"{stage}: shard {index} of {count} has no usable rows "
                         f"({skipped.total} skipped: {dict(skipped.counts)})")
    return examples, skipped


def stream(examples: Sequence[Example], options: PipelineOptions) -> grain.IterDataset:
    """Examples in a seeded order, reshuffled each epoch, for `options.num_epochs` epochs."""
    dataset = grain.MapDataset.source(examples)
    if options.shuffle:
        dataset = dataset.shuffle(seed=options.seed)
    # The examples are in memory: Grain's default 16 reader threads would only contend for the GIL
    # (7x slower on 2 cores); to overlap with the train step, wrap the batches in a prefetch thread.
    return dataset.repeat(options.num_epochs).to_iter_dataset(grain.ReadOptions(num_threads=0))


def _padded_rows(examples: Sequence[Example], batch_size: int, seq_len: int, pad_id: int) -> dict[str, np.ndarray]:
    """Right-padded [batch_size, seq_len] rows, one example each; missing rows are all padding."""
    batch = {
        "input_ids": np.full((batch_size, seq_len), pad_id, np.int32),
        "loss_mask": np.zeros((batch_size, seq_len), np.int32),
        "segment_ids": np.zeros((batch_size, seq_len), np.int32),
        "positions": np.zeros((batch_size, seq_len), np.int32),
    }
    for row, example in enumerate(examples):
        n = len(example["input_ids"])
        batch["input_ids"][row, :n] = example["input_ids"]
        batch["loss_mask"][row, :n] = example.get("loss_mask", 0)
        batch["segment_ids"][row, :n] = 1
        batch["positions"][row, :n] = np.arange(n)
    return batch


def _packed_rows(rows: Sequence[Example], batch_size: int) -> dict[str, np.ndarray]:
    """Stack packed rows from Grain's packer under the batch keys; missing rows are all padding."""
    fields = {"input_ids": "input_ids", "loss_mask": "loss_mask",
              "segment_ids": "input_ids_segment_ids", "positions": "input_ids_positions"}
    batch = {}
    for key, field in fields.items():
        stacked = np.stack([row[field] for row in rows]).astype(np.int32)
        batch[key] = np.pad(stacked, ((0, batch_size - len(rows)), (0, 0)))
    return batch


def sft_pipeline(rows: Sequence[Row], tokenizer: PreTrainedTokenizerBase, fmt: PromptFormat, *,
                 seq_len: int, batch_size: int, options: PipelineOptions = PipelineOptions(),
                 packing: str | None = "first_fit", num_packing_bins: int | None = None) -> Pipeline:
    """SFT batches: `input_ids`, `loss_mask` (1 on completion tokens), `segment_ids`, `positions`.

    All [batch_size, seq_len] int32. `segment_ids` numbers the examples within a row from 1 (0 is
    padding; attention stays within a segment) and `positions` restart at 0 in each segment. With
    `packing=None` each row holds one example. A last partial batch is filled with padding rows.
    """
    if packing not in (None, *PACKERS):
        raise ValueError(f"packing must be None or one of {sorted(PACKERS)}, got {packing!r}")

    def encode(row: Row) -> Example:
        example = encode_sft(row, tokenizer, fmt)
        check_length(len(example["input_ids"]), seq_len)
        return example

    examples, skipped = prepare(rows, encode, options, "SFT")
    dataset = stream(examples, options)
    pad_id = tokenizer.pad_token_id or 0
    if packing is None:
        collate = functools.partial(_padded_rows, batch_size=batch_size, seq_len=seq_len, pad_id=pad_id)
    else:
        dataset = PACKERS[packing](
            dataset,
            length_struct={"input_ids": seq_len, "loss_mask": seq_len},
            meta_features=("loss_mask",),
            padding_struct={"input_ids": pad_id, "loss_mask": 0},
            num_packing_bins=num_packing_bins or batch_size,
            seed=options.seed,
            shuffle_bins=options.shuffle,
        )
        collate = functools.partial(_packed_rows, batch_size=batch_size)
    return Pipeline(dataset.batch(batch_size, batch_fn=collate), len(examples), skipped)


def rl_prompt_pipeline(rows: Sequence[Row], tokenizer: PreTrainedTokenizerBase, fmt: PromptFormat, *,
                       max_prompt_len: int, prompts_per_batch: int, group_size: int,
                       options: PipelineOptions = PipelineOptions()) -> Pipeline:
    """GRPO prompt batches of `prompts_per_batch` prompts, each repeated `group_size` times in a row.

    Batch: `input_ids` and `attention_mask` [prompts_per_batch * group_size, max_prompt_len] int32,
    left-padded so every prompt ends at the last column; `answers` and `records` are lists in the
    same row order. A last partial batch is dropped (run with num_epochs=None to see every prompt).
    """
    if group_size < 1 or prompts_per_batch < 1:
        raise ValueError(f"group_size ({group_size}) and prompts_per_batch ({prompts_per_batch}) must be >= 1")
    pad_id = tokenizer.pad_token_id or 0

    def encode(row: Row) -> Example:
        record = as_record(row)
        ids = encode_prompt(record.question, tokenizer, fmt)
        check_length(len(ids), max_prompt_len, "prompt tokens")
        return {"input_ids": ids, "record": record}

    def collate(batch: Sequence[Example]) -> dict[str, Any]:
        input_ids = np.full((len(batch), max_prompt_len), pad_id, np.int32)
        mask = np.zeros((len(batch), max_prompt_len), np.int32)
        for row, example in enumerate(batch):
            n = len(example["input_ids"])
            input_ids[row, max_prompt_len - n:] = example["input_ids"]
            mask[row, max_prompt_len - n:] = 1
        records = [example["record"] for example in batch for _ in range(group_size)]
        return {"input_ids": np.repeat(input_ids, group_size, axis=0),
                "attention_mask": np.repeat(mask, group_size, axis=0),
                "answers": [record.answer for record in records], "records": records}

    examples, skipped = prepare(rows, encode, options, "RL prompts")
    dataset = stream(examples, options).batch(prompts_per_batch, drop_remainder=True, batch_fn=collate)
    return Pipeline(dataset, len(examples), skipped)


def preference_pipeline(rows: Sequence[Mapping[str, Any]], tokenizer: PreTrainedTokenizerBase,
                        fmt: PromptFormat, *, seq_len: int, batch_size: int,
                        options: PipelineOptions = PipelineOptions(),
                        reference_logps: np.ndarray | None = None) -> Pipeline:
    """DPO batches in the layout of `jaxmath.objectives.dpo`: `{side}_input_ids`, `{side}_attention_mask`,
    `{side}_loss_mask` [batch_size, seq_len] int32 for side in chosen, rejected (row r of both is one pair).

    Rows are `{"question", "chosen", "rejected"}` (see jaxmath.data.encode). `reference_logps` [n, 2]
    (chosen, rejected), one row per usable example of this shard in row order (as an unshuffled single
    epoch of this pipeline yields them), adds `ref_chosen_logps` / `ref_rejected_logps` [batch_size]
    float32. A last partial batch is filled with padding rows (no real tokens, reference 0).
    """
    pad_id = tokenizer.pad_token_id or 0

    def encode(row: Mapping[str, Any]) -> Example:
        pair = encode_preference(row, tokenizer, fmt)
        check_length(max(len(side["input_ids"]) for side in pair.values()), seq_len)
        return pair

    def collate(batch: Sequence[Example]) -> dict[str, Any]:
        out = {}
        for side in ("chosen", "rejected"):
            rows = _padded_rows([pair[side] for pair in batch], batch_size, seq_len, pad_id)
            out.update({f"{side}_input_ids": rows["input_ids"], f"{side}_attention_mask": rows["segment_ids"],
                        f"{side}_loss_mask": rows["loss_mask"]})
            if "reference" in batch[0]:
                logps = np.zeros(batch_size, np.float32)
                logps[:len(batch)] = [pair["reference"][side] for pair in batch]
                out[f"ref_{side}_logps"] = logps
        return out

    examples, skipped = prepare(rows, encode, options, "DPO pairs")
    if reference_logps is not None:
        reference_logps = np.asarray(reference_logps, np.float32)
        if reference_logps.shape != (len(examples), 2):
            raise ValueError(f"reference_logps has shape {reference_logps.shape}, but this shard has "
                             f"{len(examples)} usable pairs: expected ({len(examples)}, 2)")
        examples = [{**pair, "reference": {"chosen": float(c), "rejected": float(r)}}
                    for pair, (c, r) in zip(examples, reference_logps)]
    return Pipeline(stream(examples, options).batch(batch_size, batch_fn=collate), len(examples), skipped)


def prm_pipeline(rows: Sequence[Mapping[str, Any]], tokenizer: PreTrainedTokenizerBase, fmt: PromptFormat, *,
                 seq_len: int, max_steps: int, batch_size: int,
                 options: PipelineOptions = PipelineOptions()) -> Pipeline:
    """PRM batches: `input_ids`, `segment_ids`, `positions`, `labels` [batch, seq_len] and `step_positions`,
    `step_labels`, `step_mask` [batch, max_steps] (the last token of each step, its 0/1 label, 1 for real steps).

    `labels` is the layout `jaxmath.objectives.prm_loss` reads: each step's label at its last token,
    IGNORE_LABEL elsewhere. Rows are `{"question", "steps", "labels"}` (see jaxmath.data.encode). A last
    partial batch is filled with padding rows.
    """
    pad_id = tokenizer.pad_token_id or 0

    def encode(row: Mapping[str, Any]) -> Example:
        trace = encode_prm(row, tokenizer, fmt)
        check_length(len(trace["input_ids"]), seq_len)
        check_length(len(trace["step_labels"]), max_steps, "steps")
        return trace

    def collate(batch: Sequence[Example]) -> dict[str, Any]:
        tokens = _padded_rows(batch, batch_size, seq_len, pad_id)
        del tokens["loss_mask"]
        steps = {key: np.zeros((batch_size, max_steps), np.int32)
                 for key in ("step_positions", "step_labels", "step_mask")}
        labels = np.full((batch_size, seq_len), IGNORE_LABEL, np.int32)
        for row, trace in enumerate(batch):
            n = len(trace["step_labels"])
            steps["step_positions"][row, :n] = trace["step_positions"]
            steps["step_labels"][row, :n] = trace["step_labels"]
            steps["step_mask"][row, :n] = 1
            labels[row, trace["step_positions"]] = trace["step_labels"]
        return tokens | steps | {"labels": labels}

    examples, skipped = prepare(rows, encode, options, "PRM traces")
    return Pipeline(stream(examples, options).batch(batch_size, batch_fn=collate), len(examples), skipped)
