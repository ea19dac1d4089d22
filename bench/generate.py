#!/usr/bin/env python
"""Decode throughput of jaxmath.generate next to Tunix's sampler and transformers' generate, on the same checkpoint,
in one run, against this CPU's memory read bandwidth measured in the same run.

Workload (as in ../shared/peers): greedy, prompts of 64 random token ids, 128 new tokens (no early stop),
float32, batch 8 / 32 / 64, on a ~55M-parameter Qwen2-shaped model built here with a fixed seed (the peers'
`small` preset) unless --model names a checkpoint. Each figure is the median over --repeats timed calls
after one warm-up call (which includes jaxmath's compilation, reported separately).

Rows, one per system and batch:
  read bandwidth  numpy's sum over a 256 MB float32 array, best of 5: the rate a decode step's weight reads
                  can at best reach on this CPU
  jaxmath         jaxmath.generate; weight GB/s = decode steps per second x the bytes of weights one step must
                  read (every parameter but the input embedding table, which is only gathered; in the compute
                  dtype), and that as a share of the read bandwidth
  tunix           Tunix's Sampler through the peers' harness (../shared/peers/tunix_bench.py --sections gen, run
                  with /tmp/venv-tunix/bin/python): batch 8 only (the harness's fixed workload), float32, the same
                  prompts; its greedy tokens are checked against transformers' (jaxmath's with
                  --skip-transformers)
  transformers    transformers' generate (torch, --threads threads)

    python bench/generate.py                  # CPU: all three systems at batch 8, jaxmath and transformers at 32, 64
    python bench/generate.py --batches 8 --repeats 3
    python bench/generate.py --model Qwen2.5-0.5B --batches 64 256 --skip-transformers --skip-tunix --dtype bfloat16
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SMALL = dict(vocab_size=32000, hidden_size=512, num_hidden_layers=8, num_attention_heads=8, num_key_value_heads=2,
             intermediate_size=1408, tie_word_embeddings=False, max_position_embeddings=2048, rope_theta=1e6,
             rms_norm_eps=1e-6)
PROMPT_LEN, NEW_TOKENS = 64, 128
PEERS = Path(__file__).resolve().parents[2] / "shared" / "peers"  # ../shared/peers from the project root
TUNIX_PYTHON = Path("/tmp/venv-tunix/bin/python")
TUNIX_BATCH = 8  # ../shared/peers/workload.py GEN_BATCH: the harness's only batch


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


def bench_jaxmath(weights, prompts: np.ndarray, repeats: int, new_tokens: int = NEW_TOKENS) -> dict:
    """Greedy jaxmath.generate of `new_tokens` after `prompts` on the decode copy of the weights (made once, as
    evaluation and each GRPO iteration do): warm-up (compiling) and timed seconds."""
    import jax

    import jaxmath

    def call():
        out = jaxmath.generate(weights, prompts, max_new_tokens=new_tokens)
        return jax.block_until_ready(out.sequences)

    warm, times, out = timed(call, repeats)
    return {"warmup_s": warm, "times_s": times, "tokens": np.asarray(out)[:, prompts.shape[1]:]}


def read_bandwidth(megabytes: int = 256, repeats: int = 5) -> float:
    """This CPU's memory read bandwidth in bytes/s: numpy's sum over a `megabytes` float32 array, best of
    `repeats` (the array is 10x larger than the last-level cache, so every pass reads memory)."""
    array = np.ones(megabytes * 2**20 // 4, np.float32)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        array.sum()
        best = min(best, time.perf_counter() - start)
    return array.nbytes / best


def peer_prompts(peers: Path, vocab: int) -> np.ndarray:
    """The peers' decode prompts (workload.py in their folder)."""
    sys.path.insert(0, str(peers))
    try:
        import workload
    finally:
        sys.path.remove(str(peers))
    return workload.gen_prompts(vocab)


def bench_tunix(peers: Path, model_dir: Path, reference_tokens: np.ndarray, repeats: int) -> dict:
    """Tunix's Sampler on the peers' decode workload, run by their harness in Tunix's own venv: tokens/s (median
    over `repeats`), warm-up seconds and the share of greedy tokens equal to `reference_tokens`."""
    with tempfile.TemporaryDirectory(prefix="jaxmath_bench_tunix_") as name:
        ref = Path(name) / "ref.npz"
        np.savez(ref, greedy_tokens=reference_tokens)  # the gen section reads only this array of --ref
        env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "PYTHONPATH")}  # one CPU device
        proc = subprocess.run([str(TUNIX_PYTHON), str(peers / "tunix_bench.py"), str(model_dir), "--ref", str(ref),
                               "--sections", "gen", "--gen-repeats", str(repeats), "--log-dir", name],
                              capture_output=True, text=True, env=env, check=False)
    try:
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        return {"times_s": result["gen_times_s"], "tok_s": result["gen_tokens_per_s_median"],
                "warmup_s": result["gen_warmup_s_incl_compile"],
                "same_tokens": result["gen_greedy_token_agree_frac_vs_hf"], "version": result["tunix"]}
    except (IndexError, KeyError, json.JSONDecodeError):
        raise SystemExit(f"the tunix harness failed (rc {proc.returncode}):\n{proc.stderr[-3000:]}") from None


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


def system_row(system: str, batch: int, tok_s: float, warmup_s: float, weight_bytes: int, bandwidth: float,
               same_tokens: float | None) -> dict:
    """One table row: tokens/s, the weight bytes per second that rate implies, and its share of `bandwidth`."""
    weight_rate = tok_s / batch * weight_bytes  # one decode step per `batch` tokens
    return {"system": system, "batch": batch, "tok_s": tok_s, "weight_gb_s": weight_rate / 1e9,
            "bandwidth_fraction": weight_rate / bandwidth, "same_tokens": same_tokens, "warmup_s": warmup_s}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="HF checkpoint dir (default: build the 55M `small` model)")
    parser.add_argument("--cache-dir", default="/tmp/jaxmath_bench_small", help="where the built model is kept")
    parser.add_argument("--batches", type=int, nargs="+", default=[8, 32, 64])
    parser.add_argument("--repeats", type=int, default=2, help="timed calls per system and batch")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="jaxmath compute dtype")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads (transformers)")
    parser.add_argument("--skip-transformers", action="store_true", help="time jaxmath only (e.g. on a GPU)")
    parser.add_argument("--skip-tunix", action="store_true", help="no Tunix row (it needs /tmp/venv-tunix)")
    parser.add_argument("--peers-dir", type=Path, default=PEERS, help=f"the peers' harness (default {PEERS})")
    args = parser.parse_args(argv)
    peers = args.peers_dir
    if not args.skip_tunix and not (TUNIX_PYTHON.exists() and (peers / "tunix_bench.py").is_file()):
        parser.error(f"the Tunix row needs {TUNIX_PYTHON} and {peers / 'tunix_bench.py'} (or pass --skip-tunix)")
    import jax

    import jaxmath

    load = os.getloadavg()
    bandwidth = read_bandwidth()
    model_dir = Path(args.model) if args.model else build_small(Path(args.cache_dir))
    from jaxmath.inference.sampler import decode_cost
    from jaxmath.inference.weights import prepare_weights

    model = jaxmath.from_pretrained(model_dir, dtype=args.dtype)
    vocab = json.loads((model_dir / "config.json").read_text())["vocab_size"]
    start = time.perf_counter()
    weights = jax.block_until_ready(prepare_weights(model))
    prepare_s = time.perf_counter() - start
    ours_bytes = weights.nbytes_read_per_step()
    float32_bytes = ours_bytes // jax.numpy.dtype(args.dtype).itemsize * 4
    print(f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}), prompt {PROMPT_LEN}, "
          f"{NEW_TOKENS} new tokens, greedy, repeats {args.repeats}; load average {load[0]:.1f} on "
          f"{os.cpu_count()} cores; read bandwidth {bandwidth / 1e9:.1f} GB/s; weights read per decode step "
          f"{ours_bytes / 1e6:.1f} MB (jaxmath, {args.dtype}), {float32_bytes / 1e6:.1f} MB (float32); decode copy "
          f"of the weights made in {prepare_s:.2f}s (once per run)", flush=True)
    rows = []
    for batch in args.batches:
        prompts = np.random.default_rng(1234).integers(0, vocab, (batch, PROMPT_LEN), dtype=np.int64)
        ours = bench_jaxmath(weights, prompts.astype(np.int32), args.repeats)
        cost = decode_cost(weights, batch, PROMPT_LEN, NEW_TOKENS)
        print(f"batch {batch}: bytes per decode step, mean over the run: XLA cost analysis "
              f"{cost['xla_bytes'] / 1e6:.1f} MB ({cost['xla_bytes_gather_rows'] / 1e6:.1f} MB counting the "
              f"embedding gather as the {batch} rows it reads) vs minimum (weights + filled KV) "
              f"{cost['minimum_bytes'] / 1e6:.1f} MB: {cost['xla_bytes_gather_rows'] / cost['minimum_bytes']:.2f}x",
              flush=True)
        theirs = None if args.skip_transformers else bench_transformers(model_dir, prompts, args.repeats, args.threads)
        reference = ours["tokens"] if theirs is None else theirs["tokens"]
        same = None if theirs is None else float(np.mean(ours["tokens"] == theirs["tokens"]))
        rows.append(system_row("jaxmath", batch, batch * NEW_TOKENS / statistics.median(ours["times_s"]),
                               ours["warmup_s"], ours_bytes, bandwidth, same))
        if batch == TUNIX_BATCH and not args.skip_tunix:
            if not np.array_equal(peer_prompts(peers, vocab), prompts):
                raise SystemExit("the peers' decode prompts differ from this bench's: not the same workload")
            tunix = bench_tunix(peers, model_dir, reference, args.repeats)
            rows.append(system_row(f"tunix {tunix['version']}", batch, tunix["tok_s"], tunix["warmup_s"],
                                   float32_bytes, bandwidth, tunix["same_tokens"]))
        if theirs is not None:
            rows.append(system_row("transformers", batch, batch * NEW_TOKENS / statistics.median(theirs["times_s"]),
                                   theirs["warmup_s"], float32_bytes, bandwidth, None))
        for row in rows[-3:]:
            if row["batch"] == batch:
                print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}), flush=True)
    compared = "transformers" if not args.skip_transformers else "jaxmath"
    transformers_rate = {r["batch"]: r["tok_s"] for r in rows if r["system"] == "transformers"}
    header = ["system", "batch", "tok/s", "x transformers", "weight GB/s", "of read bandwidth",
              f"same greedy tokens as {compared}'", "warm-up s"]
    print("\n" + " | ".join(header))
    print(" | ".join(["read bandwidth (numpy sum, 256 MB)", "", "", "", f"{bandwidth / 1e9:.1f}", "100%", "", ""]))
    for r in rows:
        versus = r["tok_s"] / transformers_rate[r["batch"]] if r["batch"] in transformers_rate else float("nan")
        same = "reference" if r["system"] == compared else ("" if r["same_tokens"] is None
                                                            else f"{100 * r['same_tokens']:.1f}%")
        print(" | ".join([r["system"], str(r["batch"]), f"{r['tok_s']:.1f}", f"{versus:.2f}x",
                          f"{r['weight_gb_s']:.1f}", f"{100 * r['bandwidth_fraction']:.0f}%", same,
                          f"{r['warmup_s']:.1f}"]))
    print(f"load average {load[0]:.1f} at the start, {os.getloadavg()[0]:.1f} at the end ({os.cpu_count()} cores, "
          "shared: figures are noisy)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
