#!/usr/bin/env python
"""Does each shipped SFT / DPO / PRM / GRPO config fit one A100 40 GB? Compile its train step for the real model's
shapes and print per-device memory (`jaxmath.train.trainer.dry_run`, i.e. `compiled.memory_analysis()`; for GRPO
the update's figures plus the rollout's KV cache and, with beta > 0, the reference copy).

The published config.json of each model is written into a temporary directory (nothing is downloaded) and
model.path is pointed there; the mesh is one device. The step is compiled by this machine's backend: on a
CPU host the figures are XLA's CPU buffer assignment for the same program, an estimate of the A100's.
XLA:CPU has no bfloat16 matmul: it converts bfloat16 operands to float32, and its loop-invariant code
motion then hoists that conversion of the whole layer-stacked weights out of the layer scan, adding a
float32 copy of every bfloat16 weight (+0.93 GiB per DeepSeek-7B layer) that a GPU never makes. On CPU
the children therefore compile with that pass disabled (--keep-cpu-licm restores it).
Each config compiles in its own process, so one that runs out of host memory does not stop the others.

    python bench/memory.py                                   # every shipped config
    python bench/memory.py --configs sft/qwen2.5-math-1.5b --set data.seq_len=2048
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
GIB = 2**30

# Published config.json values (Hugging Face Hub, main branch) of the models the shipped configs train.
HF_CONFIGS: dict[str, dict[str, Any]] = {
    "Qwen/Qwen2.5-Math-1.5B": dict(
        architectures=["Qwen2ForCausalLM"], model_type="qwen2", hidden_act="silu", vocab_size=151936,
        hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
        num_key_value_heads=2, max_position_embeddings=4096, rope_theta=10000.0, rms_norm_eps=1e-6,
        sliding_window=4096, max_window_layers=21, use_sliding_window=False, tie_word_embeddings=True,
        attention_dropout=0.0, initializer_range=0.02, bos_token_id=151643, eos_token_id=151643,
        torch_dtype="bfloat16", use_cache=True),
    "Qwen/Qwen2.5-0.5B-Instruct": dict(
        architectures=["Qwen2ForCausalLM"], model_type="qwen2", hidden_act="silu", vocab_size=151936,
        hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
        num_key_value_heads=2, max_position_embeddings=32768, rope_theta=1000000.0, rms_norm_eps=1e-6,
        sliding_window=32768, max_window_layers=21, use_sliding_window=False, tie_word_embeddings=True,
        attention_dropout=0.0, initializer_range=0.02, bos_token_id=151643, eos_token_id=151645,
        torch_dtype="bfloat16", use_cache=True),
    "Qwen/Qwen2.5-3B-Instruct": dict(
        architectures=["Qwen2ForCausalLM"], model_type="qwen2", hidden_act="silu", vocab_size=151936,
        hidden_size=2048, intermediate_size=11008, num_hidden_layers=36, num_attention_heads=16,
        num_key_value_heads=2, max_position_embeddings=32768, rope_theta=1000000.0, rms_norm_eps=1e-6,
        sliding_window=32768, max_window_layers=70, use_sliding_window=False, tie_word_embeddings=True,
        attention_dropout=0.0, initializer_range=0.02, bos_token_id=151643, eos_token_id=151645,
        torch_dtype="bfloat16", use_cache=True),
    "deepseek-ai/deepseek-math-7b-instruct": dict(
        architectures=["LlamaForCausalLM"], model_type="llama", hidden_act="silu", vocab_size=102400,
        hidden_size=4096, intermediate_size=11008, num_hidden_layers=30, num_attention_heads=32,
        num_key_value_heads=32, max_position_embeddings=4096, rope_theta=10000.0, rope_scaling=None,
        rms_norm_eps=1e-6, attention_bias=False, pretraining_tp=1, tie_word_embeddings=False,
        initializer_range=0.02, bos_token_id=100000, eos_token_id=100001, torch_dtype="bfloat16",
        use_cache=True),
}

# Shipped config (configs/<stage>/<name>.yaml) -> the Hub model its model.path names.
SHIPPED: dict[str, str] = {
    "sft/qwen2.5-math-1.5b": "Qwen/Qwen2.5-Math-1.5B",
    "sft/qwen2.5-0.5b-instruct": "Qwen/Qwen2.5-0.5B-Instruct",
    "sft/deepseek-math-7b-lora": "deepseek-ai/deepseek-math-7b-instruct",
    "sft/deepseek-math-7b-lora-4bit": "deepseek-ai/deepseek-math-7b-instruct",
    "dpo/qwen2.5-math-1.5b": "Qwen/Qwen2.5-Math-1.5B",
    "prm/qwen2.5-math-1.5b": "Qwen/Qwen2.5-Math-1.5B",
    "grpo/qwen2.5-0.5b-instruct-gsm8k": "Qwen/Qwen2.5-0.5B-Instruct",
    "grpo/qwen2.5-3b-instruct-lora-steps": "Qwen/Qwen2.5-3B-Instruct",
    "grpo/qwen2.5-math-1.5b": "Qwen/Qwen2.5-Math-1.5B",
}


def measure(name: str, overrides: list[str]) -> dict[str, Any]:
    """Compile one shipped config's train step on a 1-device mesh and return the dry-run report."""
    from jaxmath.config import load_config
    from jaxmath.train.config import TrainConfig
    from jaxmath.train.trainer import dry_run

    with tempfile.TemporaryDirectory(prefix=f"jaxmath_memory_{name.replace('/', '_')}_") as tmp:
        model_dir = Path(tmp) / "model"
        model_dir.mkdir()
        (model_dir / "config.json").write_text(json.dumps(HF_CONFIGS[SHIPPED[name]], indent=2))
        path = ROOT / "configs" / f"{name}.yaml"
        config = load_config(TrainConfig, path, [f"model.path={model_dir}", "mesh.data=1", "mesh.fsdp=1",
                                                 "mesh.tensor=1", *overrides])
        start = time.perf_counter()
        report = dry_run(config, Path(tmp) / "run")
        report["compile_s"] = time.perf_counter() - start
    report.setdefault("remat", config.model.remat)  # model.remat: auto reports the policy it measured and chose
    if config.grpo is not None:  # rows of one GRPO update micro-batch x (prompt + completion)
        rows = config.grpo.rows // config.grpo.minibatches // config.optimizer.grad_accum
        report["micro_batch"] = f"{rows} x {config.grpo.max_prompt_len + config.grpo.sampling.max_new_tokens}"
    else:
        report["micro_batch"] = f"{config.data.batch_size // config.optimizer.grad_accum} x {config.data.seq_len}"
    report["host_peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB
    return report


CPU_NO_LICM = "--xla_disable_hlo_passes=while-loop-invariant-code-motion"


def run_child(name: str, overrides: list[str], timeout: float, keep_cpu_licm: bool) -> dict[str, Any]:
    """Measure one config in a fresh process (single CPU device); failures come back as {'error': ...}."""
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # one device, as on the target A100
    env.setdefault("JAX_PLATFORMS", "cpu")
    if env["JAX_PLATFORMS"] == "cpu" and not keep_cpu_licm:
        env["XLA_FLAGS"] = CPU_NO_LICM
    command = [sys.executable, __file__, "--child", name, *[a for o in overrides for a in ("--set", o)]]
    try:
        proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"compile did not finish in {timeout:.0f}s"}
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        why = "killed (out of host memory?)" if proc.returncode in (-9, 137) else f"exit code {proc.returncode}"
        tail = (proc.stderr.strip().splitlines() or [""])[-1]
        return {"error": f"{why}: {tail}"}
    return json.loads(lines[-1])


def print_row(name: str, report: dict[str, Any], budget_gib: float) -> None:
    if "error" in report:
        print(f"{name:<31} ERROR {report['error']}", flush=True)
        return
    peak = report["peak_gib_per_device"]
    verdict = "fits" if peak <= budget_gib else "DOES NOT FIT"
    print(f"{name:<31} {report['micro_batch']:>10} {report['remat']:>13} {report['params_gib_total']:>7.2f} "
          f"{report['optimizer_gib_total']:>7.2f} {report['argument_gib_per_device']:>7.2f} "
          f"{report['temp_gib_per_device']:>7.2f} {peak:>7.2f} {peak / budget_gib:>6.0%}  {verdict:<12} "
          f"{report['compile_s']:>6.0f} {report['host_peak_rss_gib']:>6.1f}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", choices=sorted(SHIPPED), default=list(SHIPPED),
                        help="which shipped configs to check (default: all)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="extra override applied to every config, e.g. data.seq_len=2048 (repeatable)")
    parser.add_argument("--budget-gib", type=float, default=40.0, help="device memory to compare with (GiB)")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds allowed per compile")
    parser.add_argument("--keep-cpu-licm", action="store_true",
                        help="keep XLA:CPU's loop-invariant code motion (adds a float32 copy of bfloat16 weights)")
    parser.add_argument("--child", choices=sorted(SHIPPED), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(measure(args.child, args.set)))
        return 0
    print(f"per-device memory of one train step, 1-device mesh, vs {args.budget_gib:.0f} GiB "
          "(params/optimizer: whole state; args/temp/peak: per device)")
    print(f"{'config':<31} {'micro':>10} {'remat':>13} {'params':>7} {'optim':>7} {'args':>7} {'temp':>7} {'peak':>7} "
          f"{'budget':>6}  {'verdict':<12} {'comp s':>6} {'rss':>6}")
    failed = 0
    for name in args.configs:
        print(f"{name:<31} compiling ...", flush=True)
        report = run_child(name, args.set, args.timeout, args.keep_cpu_licm)
        print_row(name, report, args.budget_gib)
        failed += "error" in report
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
