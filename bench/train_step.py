#!/usr/bin/env python
"""Tokens/s and MFU of jaxmath's SFT train step next to HF transformers + torch, on one CPU device.

Workload (the peers' one, /work/shared/peers): a random ~55M-parameter Qwen2 (vocab 32000, hidden 512,
8 layers, 8 heads / 2 KV heads, MLP 1408, untied), batch 8 x 256 random token ids, next-token loss on every
position, AdamW (lr 1e-5, betas 0.9/0.999, eps 1e-8, weight decay 0.01), float32. Both frameworks start from
the very same weights (one HF checkpoint) and must report the same first loss. MFU is model FLOPs
(6 x matmul params + attention, per token) over the CPU's float32 matmul peak, measured in this run as the
best of several jitted 2048^3 matmuls.

    python bench/train_step.py [--steps 5] [--warmup 2] [--skip-torch]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

SMALL_QWEN2 = dict(vocab_size=32000, hidden_size=512, num_hidden_layers=8, num_attention_heads=8,
                   num_key_value_heads=2, intermediate_size=1408, tie_word_embeddings=False,
                   max_position_embeddings=2048, rope_theta=1e6, rms_norm_eps=1e-6)
BATCH, SEQ = 8, 256
ADAMW = dict(lr=1e-5, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.01)
THREADS = 2


def train_batch(vocab_size: int, batch: int = BATCH, seq: int = SEQ) -> np.ndarray:
    """The peers' training batch (workload.py: numpy seed 5678)."""
    return np.random.default_rng(5678).integers(0, vocab_size, (batch, seq), dtype=np.int64)


def full_rows_batch(ids: np.ndarray) -> dict[str, np.ndarray]:
    """jaxmath's SFT batch for `ids`: every row one sequence, a loss on every next token (HF's labels=ids)."""
    ones = np.ones(ids.shape, np.int32)
    return {"input_ids": ids.astype(np.int32), "loss_mask": ones, "segment_ids": ones,
            "positions": np.broadcast_to(np.arange(ids.shape[1], dtype=np.int32), ids.shape).copy()}


def make_checkpoint(path: Path) -> int:
    """The peers' `small` model: seeded HF Qwen2 with random q/k/v biases, saved as safetensors."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(bos_token_id=None, eos_token_id=None, pad_token_id=None, **SMALL_QWEN2)
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(config).float()
    with torch.no_grad():
        generator = torch.Generator().manual_seed(1)
        for layer in model.model.layers:
            for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                proj.bias.copy_(0.02 * torch.randn(proj.bias.shape, generator=generator))
    model.save_pretrained(path, safe_serialization=True)
    return sum(p.numel() for p in model.parameters())


def timed(step: Callable[[], float], warmup: int, steps: int,
          deadline: float | None = None) -> tuple[float, list[float], list[float]]:
    """(first call's seconds, timed steps' seconds, losses of all calls); `step` must block until done.
    Past `deadline` (a time.time() value) no further step starts, so fewer steps may be timed."""
    times, losses = [], []
    first = 0.0
    for i in range(warmup + steps):
        if deadline is not None and i and time.time() > deadline:
            print(f"  deadline reached: {warmup + steps - i} of {warmup + steps} steps not run", flush=True)
            break
        start = time.perf_counter()
        losses.append(step())
        elapsed = time.perf_counter() - start
        if i == 0:
            first = elapsed
        if i >= warmup:
            times.append(elapsed)
        print(f"  step {i + 1}/{warmup + steps}: {elapsed:.2f}s loss {losses[-1]:.4f}", flush=True)
    return first, times, losses


def matmul_peak(size: int = 2048, repeats: int = 10) -> float:
    """Best float32 FLOP/s of a jitted size^3 matmul on the default JAX device."""
    import jax
    import jax.numpy as jnp

    keys = jax.random.split(jax.random.PRNGKey(0))
    a = jax.random.normal(keys[0], (size, size), jnp.float32)
    b = jax.random.normal(keys[1], (size, size), jnp.float32)
    matmul = jax.jit(jnp.matmul)
    matmul(a, b).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        matmul(a, b).block_until_ready()
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


def jaxmath_step(model_dir: Path, ids: np.ndarray) -> Callable[[], float]:
    """A closure running one jaxmath SFT train step (the trainer's own factory) on a 1-device mesh."""
    import jax

    from jaxmath.checkpoint.pretrained import from_pretrained
    from jaxmath.objectives.sft import sft_loss
    from jaxmath.parallel import make_mesh
    from jaxmath.train.optimizer import OptimizerConfig, make_optimizer
    from jaxmath.train.step import setup_training

    mesh = make_mesh((1, 1, 1))
    model = from_pretrained(model_dir, dtype="float32", mesh=mesh)
    optimizer, _ = make_optimizer(OptimizerConfig(**ADAMW, schedule="constant", clip_norm=None), 1000)
    batch = full_rows_batch(ids)
    state, step_fn = setup_training(model, sft_loss, optimizer, mesh, batch)
    del model  # its arrays were copied into the state
    batch = jax.device_put(batch)
    holder = {"state": state}

    def step() -> float:
        holder["state"], metrics = step_fn(holder["state"], batch)
        return float(metrics["loss"])  # blocks until the step is done
    return step


def torch_step(model_dir: Path, ids: np.ndarray, adamw: dict[str, float] = ADAMW, device: str = "cpu",
               autocast: str | None = None, fused: bool = False, clip_norm: float | None = None,
               attention: str = "sdpa") -> Callable[[], float]:
    """A closure running one HF transformers + torch step on `device`: loss(labels=ids) (under autocast to
    `autocast`, e.g. "bfloat16", with float32 master weights), backward, optional gradient clipping, AdamW."""
    import contextlib

    import torch
    from transformers import AutoModelForCausalLM

    if device == "cpu":
        torch.set_num_threads(THREADS)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation=attention)
    model = model.to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=adamw["lr"], betas=(adamw["b1"], adamw["b2"]),
                                  eps=adamw["eps"], weight_decay=adamw["weight_decay"], fused=fused)
    batch = torch.from_numpy(ids).to(device)

    def step() -> float:
        optimizer.zero_grad(set_to_none=True)
        with (torch.autocast(device, dtype=getattr(torch, autocast)) if autocast else contextlib.nullcontext()):
            loss = model(input_ids=batch, labels=batch, use_cache=False).loss
        loss.backward()
        if clip_norm is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip_norm)
        optimizer.step()
        return float(loss.detach())  # waits for the step to finish
    return step


def row(name: str, first: float, times: list[float], flops_per_token: float, peak: float) -> dict[str, Any]:
    tokens_per_second = BATCH * SEQ / statistics.median(times)
    return {"system": name, "first_step_s": first, "median_step_s": statistics.median(times),
            "tokens_per_s": tokens_per_second, "mfu": tokens_per_second * flops_per_token / peak}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per system (median reported)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first (the first one compiles)")
    parser.add_argument("--skip-torch", action="store_true", help="measure jaxmath only")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.warmup < 1:
        parser.error("--steps and --warmup must be >= 1")
    os.environ.pop("XLA_FLAGS", None)  # one CPU device, as in the peers' runs (before jax is imported)
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    import jax

    from jaxmath.models.config import ModelConfig
    from jaxmath.train.metrics import train_flops_per_token

    config = ModelConfig.from_hf({"model_type": "qwen2", **SMALL_QWEN2})
    flops_per_token = train_flops_per_token(config, SEQ)
    print(f"devices: {jax.devices()} | model {config.num_params() / 1e6:.1f}M params, "
          f"{flops_per_token / 1e6:.0f} MFLOP/token, batch {BATCH} x {SEQ}", flush=True)
    peak = matmul_peak()
    print(f"float32 matmul peak (jitted 2048^3, best of 10): {peak / 1e9:.1f} GFLOP/s", flush=True)
    ids = train_batch(config.vocab_size)
    rows, first_losses = [], {}
    with tempfile.TemporaryDirectory(prefix="jaxmath_bench_train_") as tmp:
        model_dir = Path(tmp) / "small"
        print(f"checkpoint: {make_checkpoint(model_dir):,} parameters (HF Qwen2, seed 0)", flush=True)
        systems = [("jaxmath (JAX, jit)", jaxmath_step)] + ([] if args.skip_torch else
                                                           [("HF transformers + torch", torch_step)])
        for name, build in systems:
            print(f"{name}:", flush=True)
            first, times, losses = timed(build(model_dir, ids), args.warmup, args.steps)
            rows.append(row(name, first, times, flops_per_token, peak))
            first_losses[name] = losses[0]
    print(f"\nSFT train step, {BATCH} x {SEQ} tokens, AdamW, float32, 1 CPU device "
          f"(peak {peak / 1e9:.1f} GFLOP/s)")
    print(f"{'system':<26} {'first step s':>12} {'median s':>9} {'tokens/s':>9} {'MFU':>6} {'loss 1':>8}")
    for r in rows:
        print(f"{r['system']:<26} {r['first_step_s']:>12.2f} {r['median_step_s']:>9.3f} {r['tokens_per_s']:>9.1f} "
              f"{r['mfu']:>6.1%} {first_losses[r['system']]:>8.4f}")
    if len(rows) == 2:
        print(f"jaxmath / torch tokens/s: {rows[0]['tokens_per_s'] / rows[1]['tokens_per_s']:.2f}x")
        if abs(first_losses[rows[0]["system"]] - first_losses[rows[1]["system"]]) > 1e-3:
            print("error: the two systems' first losses differ: not the same workload", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
