#!/usr/bin/env python
"""Seconds per GRPO iteration of jaxmath's loop, split into rollout, reward, log-prob pass and update.

Workload (issue #7): 8 GSM8K prompts (left-padded to 128 tokens) x 8 completions x 128 sampled tokens on the
peers' random ~55M-parameter Qwen2 (bench/generate.py's `small`: vocab 32000, hidden 512, 8 layers), float32,
one CPU device, temperature 1, the peers' AdamW (lr 1e-5, weight decay 0.01), updates accumulated over
micro-batches of 8 rows (optimizer.grad_accum). Rewards: `correctness` (the verifier's worker processes grade
the decoded text; random text scores 0) + `numeric`. Variants: beta 0 and beta 0.04 (a reference log-prob
pass), 1 and 2 minibatches, mu 1.

Next to the times: the warm-up iteration's XLA compile seconds (jax's monitoring events; a second run reads the
programs from the persistent compilation cache), and, before the first update, mean and max |log ratio| between
the trainer's log-prob pass and the sampler's log-probs of the same tokens (the first update's importance ratio
is exp(log ratio); tests/test_rollout_logprobs.py states the tolerances). `--dtype bfloat16` computes the CPU
workloads in bfloat16 (weights stay float32, as GRPO's mixed precision keeps them).

Every piece is the loop's own (`jaxmath.train.rl`: build_rl_run, collect, rollout_batch, update_policy,
in the order train_grpo calls them); the bench only times them. A fixed workload needs every completion to be
exactly max_new_tokens long, so the run's stop ids are emptied (`RLRun.eos_ids = []`, as the peers put eos
outside the vocabulary): the sampler then never stops early, and the bench checks every length. Prompts and
the byte-level BPE (trained here on GSM8K train, nothing downloaded) come from ../shared/data.

--peer-workload runs tunix's GRPO workload from ../shared/peers (4 prompts x 4 completions, 64-token prompts
and completions, beta 0.04, temperature 0.9, same checkpoint) and prints tunix's figure next to it: run live
when /tmp/venv-tunix exists, else quoted from the peers' README. On an accelerator (--device gpu, or auto when
one is present) the model is Qwen2.5-0.5B-shaped with random weights and the config is the reference one,
configs/grpo/qwen2.5-0.5b-instruct-gsm8k.yaml (bfloat16 compute, per-device batch 4, ...).

    python bench/grpo.py                          # CPU: 3 variants x (warm-up + 1 timed iteration), ~11 CPU-min
    python bench/grpo.py --iters 3 --variants 0.04:1   # a median over 3 iterations
    python bench/grpo.py --peer-workload          # next to tunix's 14.9 s/iter
    python bench/grpo.py --device gpu --iters 5   # Qwen2.5-0.5B shape, the reference GRPO config
"""
from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
REFERENCE_CONFIG = ROOT / "configs" / "grpo" / "qwen2.5-0.5b-instruct-gsm8k.yaml"
PEER_ADAMW = dict(lr=1e-5, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.01)  # ../shared/peers/workload.py
TUNIX_README = {"s_per_iter": 14.9, "first_iter_s": 33.8, "iters": "16.56, 13.29"}  # ../shared/peers/README.md
TOKENIZER_VOCAB = 32000  # BPE merges asked for; GSM8K train yields ~17.8k tokens


@dataclasses.dataclass(frozen=True)
class Workload:
    name: str
    prompts: int
    group_size: int
    prompt_len: int
    new_tokens: int
    temperature: float
    micro_rows: int  # rows per forward/backward pass inside an update (optimizer.grad_accum splits the rest)
    variants: tuple[tuple[float, int], ...]  # (beta, minibatches) run by default


# Micro-batches of 8 rows x 256 positions, as the peers' SFT step: GRPO's loss holds [rows, 256, 32000]
# float32 logits and their gradient, 17 GiB of host memory for all 64 rows at once.
CPU = Workload("issue #7", 8, 8, 128, 128, 1.0, 8, ((0.0, 1), (0.04, 1), (0.04, 2)))
PEER = Workload("tunix peer", 4, 4, 64, 64, 0.9, 16, ((0.04, 1),))  # tunix updates on all 16 rows at once


def parse_variant(text: str) -> tuple[float, int]:
    """'0.04:2' -> (beta 0.04, 2 minibatches)."""
    try:
        beta, minibatches = text.split(":")
        return float(beta), int(minibatches)
    except ValueError:
        raise argparse.ArgumentTypeError(f"variant {text!r} is not BETA:MINIBATCHES (e.g. 0.04:2)") from None


# ---------------------------------------------------------------- inputs


def prepare_inputs(records: list[Any], tmp: Path, fmt_name: str, prompt_len: int, count: int = 256,
                   vocab_size: int = TOKENIZER_VOCAB) -> tuple[Path, Path]:
    """A BPE trained on `records` rendered in the format, as the trainer fits one (`data.tokenizer: train`; saved
    as a tokenizer directory), and the first `count` problems whose prompt fits `prompt_len` tokens (a
    record-schema JSONL), so the pipeline skips nothing."""
    from jaxmath.data.encode import encode_prompt
    from jaxmath.data.formats import get_format
    from jaxmath.data.readers import write_records
    from jaxmath.data.tokenizer import train_tokenizer
    from jaxmath.train.tasks import SFTTask

    start = time.perf_counter()
    fmt = get_format(fmt_name)
    tokenizer = train_tokenizer(SFTTask().tokenizer_texts(records, fmt), vocab_size=vocab_size)
    tokenizer.save_pretrained(tmp / "tokenizer")
    fitting = (r for r in records if len(encode_prompt(r.question, tokenizer, fmt)) <= prompt_len)
    written = write_records(itertools.islice(fitting, count), tmp / "prompts.jsonl")
    if not written:
        raise SystemExit(f"no prompt in format {fmt_name} fits {prompt_len} tokens")
    print(f"{len(records)} problems, BPE of {len(tokenizer)} tokens, {written} prompts <= {prompt_len} tokens "
          f"({time.perf_counter() - start:.1f} s)", flush=True)
    return tmp / "tokenizer", tmp / "prompts.jsonl"


def small_config(model_dir: Path, tokenizer: Path, prompts: Path, out: Path, w: Workload, beta: float,
                 minibatches: int, steps: int, dtype: str = "float32") -> dict[str, Any]:
    """The CPU run: the peers' checkpoint, float32 weights computed in `dtype`, one device, the workload's GRPO
    shapes."""
    return {
        "objective": "grpo", "output_dir": str(out),
        "model": {"path": str(model_dir), "dtype": dtype},
        "mesh": {"data": 1, "fsdp": 1, "tensor": 1},
        "optimizer": {**PEER_ADAMW, "schedule": "constant", "clip_norm": None,
                      "grad_accum": max(1, w.prompts * w.group_size // minibatches // w.micro_rows)},
        "data": {"train": [str(prompts)], "tokenizer": str(tokenizer), "format": "boxed"},
        "grpo": {"group_size": w.group_size, "prompts_per_step": w.prompts, "max_prompt_len": w.prompt_len,
                 "sampling": {"max_new_tokens": w.new_tokens, "temperature": w.temperature},
                 "rewards": {"correctness": 1.0, "numeric": 0.2}, "loss": {"beta": beta},
                 "mu": 1, "minibatches": minibatches, "overlong": "none"},
        "train": {"steps": steps, "export_hf": False},
    }


def reference_config(path: Path, tokenizer: Path, prompts: Path, out: Path, beta: float, minibatches: int,
                     steps: int, init: dict[str, Any] | None = None,
                     grpo: dict[str, Any] | None = None) -> dict[str, Any]:
    """The reference GRPO config with random weights of the `init` shape (default Qwen2.5-0.5B), the bench's
    prompts/tokenizer, and `grpo` settings replaced (bench/gpu.py --smoke shrinks them)."""
    import yaml

    from memory import HF_CONFIGS  # bench/memory.py: the published config.json values

    raw = yaml.safe_load(path.read_text())
    raw["model"].pop("path", None)
    raw["model"]["init"] = init or HF_CONFIGS["Qwen/Qwen2.5-0.5B-Instruct"]
    raw["output_dir"] = str(out)
    raw["data"] = {"train": [str(prompts)], "tokenizer": str(tokenizer), "format": raw["data"]["format"]}
    for key, value in (grpo or {}).items():  # a nested section (sampling) keeps the keys not replaced
        raw["grpo"][key] = {**raw["grpo"].get(key, {}), **value} if isinstance(value, dict) else value
    raw["grpo"]["loss"]["beta"] = beta
    raw["grpo"]["minibatches"] = minibatches
    raw["train"] = {"steps": steps, "export_hf": False}
    raw["optimizer"]["warmup_steps"] = 0  # a few timed iterations: a warmup longer than the run is refused
    return raw


# ---------------------------------------------------------------- one variant


def first_update_log_ratio(rl: Any, params: Any, groups: dict[str, Any]) -> dict[str, float]:
    """mean and max |log ratio| over the scored tokens of an iteration's rollouts: the trainer's log-prob pass
    (`RLRun.logprob_fn`, what the loss computes; minibatch by minibatch as the loop runs it) minus the sampler's
    log-probs. Taken before the first update, where the importance ratio exp(log ratio) should be 1."""
    from jaxmath.train.rollout import train_batch
    from jaxmath.train.step import to_global

    rows = len(groups["lengths"])
    batch = train_batch(groups["input_ids"], groups["attention_mask"], groups["tokens"], groups["lengths"],
                        groups["logprobs"], np.zeros(rows), np.ones(rows))
    step, train = rl.minibatch_rows, []
    for first in range(0, rows, step):
        chunk = to_global({k: batch[k][first:first + step] for k in ("input_ids", "attention_mask")},
                          {k: rl.run.batch_sharding[k] for k in ("input_ids", "attention_mask")})
        train.append(np.asarray(rl.logprob_fn(params, chunk)))
    gap = np.abs(np.concatenate(train).astype(np.float64) - batch["old_logprobs"])[batch["completion_mask"] > 0]
    return {"log_ratio_mean": float(gap.mean()), "log_ratio_max": float(gap.max())}


def run_variant(raw: dict[str, Any], warmup: int, iters: int) -> dict[str, Any]:
    """Build the run, then time `warmup + iters` iterations of collect -> rollout_batch -> updates."""
    import jax

    from jaxmath.compilation import CompileClock
    from jaxmath.config import from_dict
    from jaxmath.data.formats import get_format
    from jaxmath.data.pipelines import PipelineOptions, rl_prompt_pipeline
    from jaxmath.train.config import TrainConfig
    from jaxmath.train.rl import collect, rollout_batch, update_policy
    from jaxmath.train.run import load_params
    from jaxmath.train.state import init_train_state
    from jaxmath.train.trainer import build_rl_run

    config = from_dict(TrainConfig, raw)
    rl = dataclasses.replace(build_rl_run(config), eos_ids=[])  # never stop early: fixed-length completions
    run, g, tc = rl.run, rl.grpo, config.train
    prompts = iter(rl_prompt_pipeline(run.train_records, run.tokenizer, get_format(config.data.format),
                                      max_prompt_len=g.max_prompt_len, prompts_per_batch=g.prompts_per_step,
                                      group_size=g.group_size,
                                      options=PipelineOptions(seed=config.data.seed, num_epochs=None)).dataset)
    params = load_params(config, run.model_config, run.mesh, run.shardings.params)
    state = init_train_state(params, run.optimizer, tc.seed, run.shardings, run.trainable)
    ref_params = rl.copy_params(state.params) if g.loss.beta > 0 else None
    jax.block_until_ready((state, ref_params))
    rows, mismatch = [], {}
    for iteration in range(1, warmup + iters + 1):
        clock, start, cpu_start = CompileClock(), time.perf_counter(), time.process_time()
        groups, stats = collect(rl, state.params, prompts, iteration)
        collected = time.perf_counter()
        batch = rollout_batch(rl, state.params, ref_params, groups)
        prepared = time.perf_counter()
        if iteration == 1:  # not part of the loop: its time (and any compile in it) is left out of the figures
            paused, compiled = time.perf_counter(), clock.read()["compile_seconds"]
            mismatch = first_update_log_ratio(rl, state.params, groups)
            start += time.perf_counter() - paused
            prepared = time.perf_counter()
            left_out_compile = clock.read()["compile_seconds"] - compiled
        state, updates = update_policy(rl, state, batch, iteration)  # reads the metrics back: finished
        tokens = sum(u["tokens"] for u in updates)
        done = time.perf_counter()
        compile_s = clock.read()["compile_seconds"] - (left_out_compile if iteration == 1 else 0.0)
        if np.any(groups["lengths"] != g.sampling.max_new_tokens):
            raise SystemExit(f"completion lengths {sorted(set(groups['lengths'].tolist()))} != "
                             f"{g.sampling.max_new_tokens}: "
                             "not the fixed workload")
        row = {"total_s": done - start, "compile_s": compile_s, "cpu_s": time.process_time() - cpu_start,
               "rollout_s": stats["rollout_seconds"], "reward_s": stats["reward_seconds"],
               "logprob_s": prepared - collected, "update_s": done - prepared,
               "rollout_tok_s": stats["generated_tokens"] / stats["rollout_seconds"],
               "update_tok_s": tokens / (done - prepared), "reward_mean": float(np.mean(groups["rewards"]))}
        rows.append(row)
        kind = "warm-up" if iteration <= warmup else "timed"
        rest = row["total_s"] - sum(row[k] for k in ("rollout_s", "reward_s", "logprob_s", "update_s"))
        print(f"  iteration {iteration}/{warmup + iters} ({kind}): {row['total_s']:.1f} s = rollout "
              f"{row['rollout_s']:.1f} + reward {row['reward_s']:.2f} + log-probs {row['logprob_s']:.1f} + update "
              f"{row['update_s']:.1f} (+ other {rest:.2f}); XLA compile {row['compile_s']:.1f} s of it; "
              f"{row['cpu_s']:.1f} CPU s", flush=True)
    steady = rows[warmup:]
    summary = {key: statistics.median(r[key] for r in steady) for key in steady[0]}
    return {"warmup_s": rows[0]["total_s"], "warmup_compile_s": rows[0]["compile_s"], **summary, **mismatch,
            "iterations_s": [r["total_s"] for r in steady], "dtype": run.model_config.dtype,
            "params": run.model_config.num_params(), "devices": jax.device_count(),
            "attention_impl": run.model_config.attention_impl, "remat": run.model_config.remat}


# ---------------------------------------------------------------- tunix


def tunix_figure(model_dir: Path, tmp: Path) -> dict[str, Any]:
    """tunix's GRPO s/iter on its own workload: run live with /tmp/venv-tunix, else the peers' README figure."""
    python = Path("/tmp/venv-tunix/bin/python")
    if not python.exists():
        return {**TUNIX_README, "source": "../shared/peers/README.md (tunix 0.1.7, this 2-core machine; not rerun: "
                                          "/tmp/venv-tunix does not exist)"}
    ref = tmp / "empty_ref.npz"
    np.savez(ref)  # tunix_bench.py always loads --ref; only its check/gen sections read it
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    print("tunix (live, /tmp/venv-tunix) ...", flush=True)
    out = subprocess.run([str(python), str(SHARED / "peers" / "tunix_bench.py"), str(model_dir), "--ref", str(ref),
                          "--sections", "grpo", "--grpo-iters", "3", "--log-dir", str(tmp / "tunix_logs")],
                         capture_output=True, text=True, env=env, check=False)
    try:
        result = json.loads(out.stdout.strip().splitlines()[-1])
        return {"s_per_iter": result["grpo_s_per_iter_median"],
                "first_iter_s": result["grpo_first_iter_s_incl_compile"],
                "iters": ", ".join(str(t) for t in result["grpo_iter_times_s"]),
                "source": "live run of ../shared/peers/tunix_bench.py --sections grpo --grpo-iters 3"}
    except (IndexError, KeyError, json.JSONDecodeError):
        print(out.stderr[-2000:], file=sys.stderr)
        return {**TUNIX_README, "source": f"../shared/peers/README.md (the live tunix run failed, rc {out.returncode})"}


# ---------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["auto", "cpu", "gpu"], default="auto",
                        help="auto: the accelerator workload when JAX sees one, else the CPU one")
    parser.add_argument("--peer-workload", action="store_true", help="tunix's GRPO workload, next to its figure")
    parser.add_argument("--iters", type=int, default=1, help="timed iterations per variant (median reported)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed iterations first (the first compiles)")
    parser.add_argument("--variants", type=parse_variant, nargs="+", default=None, metavar="BETA:MINIBATCHES",
                        help="default: 0:1 0.04:1 0.04:2 (CPU), 0.04:1 (--peer-workload), the reference "
                             "config's and beta 0 (gpu)")
    parser.add_argument("--data-dir", type=Path, default=Path(os.environ.get("JAXMATH_DATA_DIR") or SHARED / "data"),
                        help="folder holding gsm8k/train.jsonl ($JAXMATH_DATA_DIR, else ../shared/data)")
    parser.add_argument("--cache-dir", type=Path, default=Path("/tmp/jaxmath_bench_small"),
                        help="where the peers' small checkpoint is built once (shared with bench/generate.py)")
    parser.add_argument("--config", type=Path, default=REFERENCE_CONFIG, help="the reference GRPO config (gpu)")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32",
                        help="compute dtype of the CPU workloads (weights stay float32; gpu: the config's)")
    args = parser.parse_args(argv)
    if args.iters < 1 or args.warmup < 1:
        parser.error("--iters and --warmup must be >= 1")
    # One CPU device, as in the peers' runs (tests simulate 8); set before jax is imported.
    flags = [f for f in os.environ.get("XLA_FLAGS", "").split() if "xla_force_host_platform_device_count" not in f]
    os.environ["XLA_FLAGS"] = " ".join(flags)
    if args.device == "cpu":
        os.environ["JAX_PLATFORMS"] = "cpu"
    import jax

    accelerator = jax.default_backend() != "cpu"
    if args.device == "gpu" and not accelerator:
        parser.error(f"--device gpu: JAX sees no accelerator (backend {jax.default_backend()})")
    on_reference = accelerator and not args.peer_workload
    if on_reference and not args.config.is_file():
        parser.error(f"--config {args.config} does not exist (the reference GRPO config)")
    load = os.getloadavg()[0]
    print(f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}), {jax.device_count()} device(s); "
          f"load average {load:.1f} on {os.cpu_count()} cores", flush=True)

    results, tunix = [], None
    with tempfile.TemporaryDirectory(prefix="jaxmath_bench_grpo_") as name:
        tmp = Path(name)
        if on_reference:
            import yaml

            config = yaml.safe_load(args.config.read_text())
            g = config["grpo"]
            fmt, prompt_len = config["data"]["format"], g["max_prompt_len"]
            variants = args.variants or [(g["loss"]["beta"], g["minibatches"]), (0.0, g["minibatches"])]
            workload = (f"reference config {args.config.name}: {g['prompts_per_step']} prompts x {g['group_size']} "
                        f"completions x {g['sampling']['max_new_tokens']} tokens, prompts padded to {prompt_len}, mu "
                        f"{g['mu']}, grad_accum {config['optimizer'].get('grad_accum', 1)}, Qwen2.5-0.5B shape "
                        f"(random weights), {config['model'].get('dtype', 'float32')} compute")
        else:
            from generate import build_small  # bench/generate.py: the peers' seeded `small` checkpoint

            w = PEER if args.peer_workload else CPU
            model_dir = build_small(args.cache_dir)
            fmt, prompt_len, variants = "boxed", w.prompt_len, args.variants or list(w.variants)
            workload = (f"{w.name}: {w.prompts} prompts x {w.group_size} completions x {w.new_tokens} tokens, "
                        f"prompts padded to {w.prompt_len}, temperature {w.temperature}, micro-batches of "
                        f"{w.micro_rows} rows, peers' small Qwen2, float32 weights, {args.dtype} compute")
        from jaxmath.data.sources import load_source

        records = load_source("gsm8k", split="train", data_dir=args.data_dir)
        print(f"GSM8K train from {args.data_dir}", flush=True)
        tokenizer, prompts = prepare_inputs(records, tmp, fmt, prompt_len)
        steps = args.warmup + args.iters
        for beta, minibatches in variants:
            out = tmp / f"run_{beta}_{minibatches}"
            print(f"beta {beta}, minibatches {minibatches}:", flush=True)
            raw = (reference_config(args.config, tokenizer, prompts, out, beta, minibatches, steps) if on_reference
                   else small_config(model_dir, tokenizer, prompts, out, w, beta, minibatches, steps, args.dtype))
            results.append({"beta": beta, "minibatches": minibatches, **run_variant(raw, args.warmup, args.iters)})
        if args.peer_workload:
            tunix = tunix_figure(model_dir, tmp)

    host = {"backend": jax.default_backend(), "load_average_start": load, "load_average_end": os.getloadavg()[0],
            "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}
    print_report(workload, host, results, tunix, args.iters)
    return 0


def print_report(workload: str, host: dict[str, Any], results: list[dict[str, Any]], tunix: dict[str, Any] | None,
                 iters: int) -> None:
    """The table, tunix's figure when there is one, and one JSON line with everything."""
    print(f"\nGRPO iteration, {workload}; {results[0]['params'] / 1e6:.1f}M parameters, {results[0]['devices']} "
          f"{host['backend']} device(s); median of {iters} timed iteration(s); host load average "
          f"{host['load_average_start']:.1f} -> {host['load_average_end']:.1f} on {os.cpu_count()} cores, peak RSS "
          f"{host['peak_rss_gib']:.1f} GiB")
    print(f"{'variant':<16} {'warm-up s':>9} {'compile s':>9} {'total s':>8} {'cpu s':>7} {'rollout s':>9} "
          f"{'reward s':>8} {'logprob s':>9} {'update s':>8} {'rollout tok/s':>13} {'update tok/s':>12} "
          f"{'|log ratio| mean':>16} {'max':>8}")
    for r in results:
        print(f"{'beta ' + str(r['beta']) + ', mb ' + str(r['minibatches']):<16} {r['warmup_s']:>9.1f} "
              f"{r['warmup_compile_s']:>9.1f} {r['total_s']:>8.2f} {r['cpu_s']:>7.1f} {r['rollout_s']:>9.2f} "
              f"{r['reward_s']:>8.2f} {r['logprob_s']:>9.2f} {r['update_s']:>8.2f} {r['rollout_tok_s']:>13.1f} "
              f"{r['update_tok_s']:>12.1f} {r['log_ratio_mean']:>16.2e} {r['log_ratio_max']:>8.2e}")
    print("cpu s = this process's CPU seconds in the iteration, all threads (steadier than wall time on a shared "
          "host); compile s = XLA compile (or compilation-cache read) seconds of the warm-up iteration; logprob s "
          "= the reference (beta > 0) log-prob pass; update tok/s counts scored completion tokens, as "
          "metrics.jsonl does; |log ratio| = |trainer log-prob - sampler log-prob| over the scored tokens before "
          "the first update (the importance ratio there is exp(log ratio))")
    if tunix is not None:
        print(f"tunix GRPOLearner, same workload and checkpoint: {tunix['s_per_iter']:.2f} s/iter median (iterations "
              f"{tunix['iters']}), first iteration {tunix['first_iter_s']:.1f} s; source: {tunix['source']}")
        print(f"jaxmath s/iter / tunix s/iter: {results[0]['total_s'] / tunix['s_per_iter']:.2f} (above 1: jaxmath "
              f"slower; a quoted figure comes from another run, under another host load)")
    print(json.dumps({"workload": workload, **host, "results": results, "tunix": tunix}))


if __name__ == "__main__":
    sys.exit(main())
