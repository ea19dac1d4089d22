#!/usr/bin/env python
"""Benchmark the SFT data pipeline on GSM8K train: tokens per second from records to packed batches.

Trains a byte-level BPE on the fly (nothing downloaded), then times, for each packing mode, the two
phases of `jaxmath.data.pipelines.sft_pipeline`: preparation (render + tokenise every record, once per
run) and streaming (shuffle, pack, batch, for `--epochs` epochs). Prints tokens/s of each, the share of
batch slots holding real tokens, and the loss-mask tokens/s a train step would consume.

    python bench/data.py [--data-dir ../shared/data] [--format steps] [--seq-len 1024] [--batch-size 16]
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from jaxmath.data.formats import FORMATS, get_format
from jaxmath.data.pipelines import PACKERS, PipelineOptions, sft_pipeline
from jaxmath.data.schema import Record
from jaxmath.data.tokenizer import train_tokenizer

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def default_data_dir() -> Path:
    return Path(os.environ.get("JAXMATH_DATA_DIR") or PROJECT_ROOT.parent / "shared" / "data")


def read_gsm8k(path: Path) -> list[Record]:
    """GSM8K's public layout (`question`, `answer` = worked solution ending in `#### 42`) as Records."""
    records = []
    with open(path, encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            row = json.loads(line)
            final = row["answer"].rsplit("####", 1)
            if len(final) != 2:
                raise ValueError(f"{path}:{line_number}: GSM8K answer has no '#### <number>' line")
            records.append(Record(id=f"gsm8k-train-{line_number}", question=row["question"],
                                  answer=final[1].strip(), solution=row["answer"], source="gsm8k"))
    return records


def load_records(data_dir: Path) -> tuple[list[Record], str]:
    """GSM8K train through the named source when it works here, else the local reader above."""
    try:
        from jaxmath.data.sources import load_source

        return load_source("gsm8k", split="train", data_dir=data_dir), "jaxmath.data.sources.load_source"
    except ImportError as err:  # the source reads `#### 42` with jaxmath.verify, which may not be installed yet
        print(f"  (named source unavailable: {err}; reading the JSONL directly)", flush=True)
        return read_gsm8k(data_dir / "gsm8k" / "train.jsonl"), "bench/data.py read_gsm8k"


def time_packing(records, tokenizer, fmt, packing, args) -> dict[str, float]:
    """Prepare and stream one pipeline; tokens counted as real (segment_ids > 0) and as batch slots."""
    options = PipelineOptions(seed=0, num_epochs=args.epochs, shard_index=0, shard_count=1)
    start = time.perf_counter()
    pipeline = sft_pipeline(records, tokenizer, fmt, seq_len=args.seq_len, batch_size=args.batch_size,
                            options=options, packing=packing, num_packing_bins=args.bins)
    prepared = time.perf_counter()
    batches = real = loss = 0
    for batch in pipeline:
        batches += 1
        real += int((batch["segment_ids"] > 0).sum())
        loss += int(batch["loss_mask"].sum())
    streamed = time.perf_counter()
    slots = batches * args.batch_size * args.seq_len
    prep_s, stream_s = prepared - start, streamed - prepared
    return {"examples": pipeline.num_examples, "skipped": pipeline.skipped.total, "batches": batches,
            "prep_s": prep_s, "prep_tok_s": real / args.epochs / prep_s, "stream_s": stream_s,
            "stream_tok_s": real / stream_s, "slot_tok_s": slots / stream_s, "loss_tok_s": loss / stream_s,
            "fill": real / slots}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=default_data_dir(),
                        help="folder holding gsm8k/train.jsonl ($JAXMATH_DATA_DIR, else ../shared/data)")
    parser.add_argument("--format", default="steps", choices=sorted(FORMATS), help="prompt/answer format")
    parser.add_argument("--seq-len", type=int, default=1024)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=2, help="epochs streamed per packing mode")
    parser.add_argument("--bins", type=int, default=None, help="packing bins (default: the batch size)")
    parser.add_argument("--vocab-size", type=int, default=8192, help="size of the BPE trained on the fly")
    parser.add_argument("--packing", nargs="+", default=[*PACKERS, "none"], choices=[*PACKERS, "none"])
    args = parser.parse_args(argv)

    print(f"reading GSM8K train from {args.data_dir} ...", flush=True)
    start = time.perf_counter()
    records, reader = load_records(args.data_dir)
    print(f"  {len(records)} records via {reader} in {time.perf_counter() - start:.2f} s", flush=True)

    print(f"training a {args.vocab_size}-token BPE on questions and solutions ...", flush=True)
    start = time.perf_counter()
    tokenizer = train_tokenizer((f"{r.question}\n{r.solution}" for r in records), vocab_size=args.vocab_size)
    print(f"  {len(tokenizer)} tokens in {time.perf_counter() - start:.2f} s", flush=True)

    fmt = get_format(args.format)
    header = (f"{'packing':<10} {'examples':>8} {'skipped':>7} {'batches':>7} {'prep s':>7} {'prep tok/s':>11} "
              f"{'stream s':>8} {'stream tok/s':>12} {'slot tok/s':>11} {'loss tok/s':>11} {'fill':>6}")
    print(f"\nSFT pipeline, format {fmt.name}, seq_len {args.seq_len}, batch {args.batch_size}, "
          f"{args.epochs} epochs (tok/s = real tokens per second unless 'slot')", flush=True)
    print(header, flush=True)
    for packing in args.packing:
        r = time_packing(records, tokenizer, fmt, None if packing == "none" else packing, args)
        print(f"{packing:<10} {r['examples']:>8} {r['skipped']:>7} {r['batches']:>7} {r['prep_s']:>7.2f} "
              f"{r['prep_tok_s']:>11,.0f} {r['stream_s']:>8.2f} {r['stream_tok_s']:>12,.0f} "
              f"{r['slot_tok_s']:>11,.0f} {r['loss_tok_s']:>11,.0f} {r['fill']:>6.1%}", flush=True)


if __name__ == "__main__":
    main()
