#!/usr/bin/env python
"""Decode throughput of jaxmath.generate next to transformers' generate, on the same checkpoint, in one run.

Workload (as in ../shared/peers): greedy, prompts of 64 random token ids, 128 new tokens (no early stop),
float32, batch 8 / 32 / 64, on a ~55M-parameter Qwen2-shaped model built here with a fixed seed (the peers'
`small` preset) unless --model names a checkpoint. Each figure is the median over --repeats timed calls
after one warm-up call (which includes jaxmath's compilation, reported separately).

    python bench/generate.py                       # CPU: jaxmath vs transformers at batch 8, 32, 64
    python bench/generate.py --model Qwen2.5-0.5B --batches 64 256 --skip-transformers --dtype bfloat16
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

SMALL = dict(vocab_size=32000, hidden_size=512, num_hidden_layers=8, num_attention_heads=8, num_key_value_heads=2,
             intermediate_size=1408, tie_word_embeddings=False, max_position_embeddings=2048, rope_theta=1e6,
             rms_norm_eps=1e-6)
PROMPT_LEN, NEW_TOKENS = 64, 128


def build_small(path: Path) -> Path:
    """The peers' `small` Qwen2 (seed 0, random q/k/v biases), saved once as safetensors."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    if (path / "config.json").is_file():
        return path
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(Qwen2Config(bos_token_id=None, eos_token_id=None, pad_token_id=None, **SMALL)).eval()
    with torch.no_grad():
        g = torch.Generator().manual_seed(1)
        for layer in model.model.layers:
            for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                proj.bias.copy_(0.02 * torch.randn(proj.bias.shape, generator=g))
    model.save_pretrained(path)
    print(f"built {sum(p.numel() for p in model.parameters()):,}-parameter model at {path}", flush=True)
    return path


def timed(call, repeats: int) -> tuple[float, list[float], object]:
    """(warm-up seconds, timed seconds, last output)."""
    start = time.perf_counter()
    out = call()
    warm = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = call()
        times.append(time.perf_counter() - start)
    return warm, times, out


def bench_jaxmath(model, prompts: np.ndarray, repeats: int, new_tokens: int = NEW_TOKENS) -> dict:
    """Greedy jaxmath.generate of `new_tokens` after `prompts`: warm-up (compiling) and timed seconds."""
    import jax

    import jaxmath

    def call():
        out = jaxmath.generate(model, prompts, max_new_tokens=new_tokens)
        return jax.block_until_ready(out.sequences)

    warm, times, out = timed(call, repeats)
    return {"warmup_s": warm, "times_s": times, "tokens": np.asarray(out)[:, prompts.shape[1]:]}


def bench_transformers(model_dir: Path, prompts: np.ndarray, repeats: int, threads: int) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(threads)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    ids = torch.from_numpy(prompts)
    kwargs = dict(attention_mask=torch.ones_like(ids), max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS,
                  do_sample=False, use_cache=True, pad_token_id=0)

    def call():
        with torch.inference_mode():
            return model.generate(ids, **kwargs)

    warm, times, out = timed(call, repeats)
    return {"warmup_s": warm, "times_s": times, "tokens": out[:, PROMPT_LEN:].numpy()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="HF checkpoint dir (default: build the 55M `small` model)")
    parser.add_argument("--cache-dir", default="/tmp/jaxmath_bench_small", help="where the built model is kept")
    parser.add_argument("--batches", type=int, nargs="+", default=[8, 32, 64])
    parser.add_argument("--repeats", type=int, default=2, help="timed calls per system and batch")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="jaxmath compute dtype")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads (transformers)")
    parser.add_argument("--skip-transformers", action="store_true", help="time jaxmath only (e.g. on a GPU)")
    args = parser.parse_args(argv)
    import jax

    import jaxmath

    model_dir = Path(args.model) if args.model else build_small(Path(args.cache_dir))
    model = jaxmath.from_pretrained(model_dir, dtype=args.dtype)
    vocab = json.loads((model_dir / "config.json").read_text())["vocab_size"]
    print(f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}), prompt {PROMPT_LEN}, "
          f"{NEW_TOKENS} new tokens, greedy, repeats {args.repeats}", flush=True)
    rows = []
    for batch in args.batches:
        prompts = np.random.default_rng(1234).integers(0, vocab, (batch, PROMPT_LEN), dtype=np.int64)
        ours = bench_jaxmath(model, prompts.astype(np.int32), args.repeats)
        row = {"batch": batch, "jaxmath_tok_s": batch * NEW_TOKENS / statistics.median(ours["times_s"]),
               "jaxmath_warmup_s": ours["warmup_s"]}
        if not args.skip_transformers:
            theirs = bench_transformers(model_dir, prompts, args.repeats, args.threads)
            row["transformers_tok_s"] = batch * NEW_TOKENS / statistics.median(theirs["times_s"])
            row["speedup"] = row["jaxmath_tok_s"] / row["transformers_tok_s"]
            row["same_tokens"] = float(np.mean(ours["tokens"] == theirs["tokens"]))
        rows.append(row)
        print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}), flush=True)
    header = ["batch", "jaxmath tok/s", "transformers tok/s", "speedup", "same tokens", "jaxmath warm-up s"]
    print("\n" + " | ".join(header))
    for r in rows:
        cells = [str(r["batch"]), f"{r['jaxmath_tok_s']:.1f}", f"{r.get('transformers_tok_s', float('nan')):.1f}",
                 f"{r.get('speedup', float('nan')):.2f}x", f"{100 * r.get('same_tokens', float('nan')):.1f}%",
                 f"{r['jaxmath_warmup_s']:.1f}"]
        print(" | ".join(cells))
    return 0


if __name__ == "__main__":
    sys.exit(main())
