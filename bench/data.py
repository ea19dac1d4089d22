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
import os
import time
from pathlib import Path

from jaxmath.data.formats import FORMATS, get_format
from jaxmath.data.pipelines import PACKERS, PipelineOptions, sft_pipeline
from jaxmath.data.sources import load_source
from jaxmath.data.tokenizer import train_tokenizer

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def default_data_dir() -> Path:
    return Path(os.environ.get("JAXMATH_DATA_DIR") or PROJECT_ROOT.parent / "shared" / "data")


def train_step_tokens_per_second(tokenizer, seq_len: int, batch_size: int, steps: int = 5) -> float:
    """Real tokens/s of the jaxmath SFT train step (the demo's tiny model, this CPU) on a full batch,
    so the pipeline's rate can be read against what training consumes."""
    import jax
    import numpy as np

    from jaxmath.models import ModelConfig, build_model
    from jaxmath.objectives.sft import sft_loss
    from jaxmath.parallel import make_mesh
    from jaxmath.train.optimizer import OptimizerConfig, make_optimizer
    from jaxmath.train.step import setup_training

    config = ModelConfig(model_type="qwen2", vocab_size=len(tokenizer), hidden_size=128, intermediate_size=384,
                         num_layers=4, num_heads=4, num_kv_heads=2, head_dim=32, qkv_bias=True,
                         tie_word_embeddings=True)
    optimizer, _ = make_optimizer(OptimizerConfig(lr=1e-3), steps)
    rng = np.random.default_rng(0)
    batch = {"input_ids": rng.integers(0, len(tokenizer), (batch_size, seq_len)).astype(np.int32),
             "loss_mask": np.ones((batch_size, seq_len), np.int32),
             "segment_ids": np.ones((batch_size, seq_len), np.int32),
             "positions": np.tile(np.arange(seq_len, dtype=np.int32), (batch_size, 1))}
    mesh = make_mesh((1, 1, 1), devices=jax.devices()[:1])
    state, step = setup_training(build_model(config), sft_loss, optimizer, mesh, batch)
    state, metrics = step(state, batch)  # compile
    jax.block_until_ready(metrics)
    start = time.perf_counter()
    for _ in range(steps):
        state, metrics = step(state, batch)
    jax.block_until_ready(metrics)
    return steps * batch_size * seq_len / (time.perf_counter() - start)


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
    records = load_source("gsm8k", split="train", data_dir=args.data_dir)
    print(f"  {len(records)} records in {time.perf_counter() - start:.2f} s", flush=True)

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
    streamed = {}
    for packing in args.packing:
        r = streamed[packing] = time_packing(records, tokenizer, fmt, None if packing == "none" else packing, args)
        print(f"{packing:<10} {r['examples']:>8} {r['skipped']:>7} {r['batches']:>7} {r['prep_s']:>7.2f} "
              f"{r['prep_tok_s']:>11,.0f} {r['stream_s']:>8.2f} {r['stream_tok_s']:>12,.0f} "
              f"{r['slot_tok_s']:>11,.0f} {r['loss_tok_s']:>11,.0f} {r['fill']:>6.1%}", flush=True)
    rate = train_step_tokens_per_second(tokenizer, args.seq_len, args.batch_size)
    slowest = min(r["stream_tok_s"] for r in streamed.values())
    print(f"\ntrain step (1M-parameter model, this CPU, batch {args.batch_size} x {args.seq_len}): {rate:,.0f} "
          f"tokens/s; the slowest pipeline above streams {slowest / rate:,.1f}x that.", flush=True)


if __name__ == "__main__":
    main()
