#!/usr/bin/env python
"""One-command GPU check of jaxmath: one table and one JSON line, nothing downloaded, < 8 minutes on one GPU.

Sections (each in its own processes, with its own deadline; one failing or late section never loses the others):
  sft      one SFT train step of the Qwen2.5-Math-1.5B shape at 8 x 2048 with the shipped config's defaults
           (configs/sft/qwen2.5-math-1.5b.yaml: dtype, master weights, remat, attention, AdamW; random weights
           built from the shape): tokens/s, MFU of the device's dense peak (jaxmath.train.metrics.PEAK_FLOPS),
           peak memory; when torch sees a GPU, the same workload in transformers + torch (autocast, sdpa, fused
           AdamW) on the very same weights, and both first losses.
  decode   greedy jaxmath.generate of the 1.5B shape (bf16 weights and cache) at batch 64 (prompt 128 + 256 new)
           and batch 256 (128 + 512): tokens/s and the fraction of the HBM roofline (HBM_BANDWIDTH).
  grpo     one iteration of the reference GRPO config (configs/grpo/qwen2.5-0.5b-instruct-gsm8k.yaml, random
           Qwen2.5-0.5B weights, synthetic prompts) through bench/grpo.py's run_variant.
  trainer  launch/train.py on configs/sft/qwen2.5-0.5b-instruct.yaml (random 0.5B weights, synthetic data, a
           fitted tokenizer) -> checkpoint -> HF export -> transformers reloads it and its logits are compared
           with jaxmath's on CPU.

--smoke runs the same code with tiny shapes on CPU (tests/test_bench_gpu.py runs it). With --out DIR every part's
log, the table and the JSON are kept there. Exit status 0 when every section passed.

    python bench/gpu.py                      # on one GPU
    python bench/gpu.py --out runs/gpu-check --sections sft decode
    python bench/gpu.py --smoke              # tiny shapes on CPU: ~75 CPU-seconds, 1-2 minutes on 2 idle cores
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import yaml

from memory import HF_CONFIGS  # bench/memory.py: the published config.json values

ROOT = Path(__file__).resolve().parents[1]
SFT_CONFIG = ROOT / "configs" / "sft" / "qwen2.5-math-1.5b.yaml"
TRAINER_CONFIG = ROOT / "configs" / "sft" / "qwen2.5-0.5b-instruct.yaml"
GIB = 2**30
SECTIONS = ("sft", "decode", "grpo", "trainer")
# First losses of jaxmath and torch on the same weights and batch: both are ~ln(vocab) (11.93) at random init
# and differ only by bfloat16 rounding at different places (torch keeps its residual stream in float32).
LOSS_TOLERANCE = 0.01
# jaxmath vs transformers logits of the exported model, both float32 on CPU: |diff| <= this x max(1, max|logit|).
LOGIT_TOLERANCE = 1e-4
GRACE_S = 20  # a part past its deadline gets this long to write what it has before it is killed

# HBM bandwidth in bytes/s by jax.devices()[0].device_kind (NVIDIA datasheets); the first match wins.
HBM_BANDWIDTH: tuple[tuple[str, str, float], ...] = (
    (r"\bh200\b", "H200", 4.8e12),  # \b keeps "GH200" out: its bandwidth depends on the memory fitted
    (r"\bh100\b.*\bpcie\b", "H100 PCIe", 2.0e12),
    (r"\bh100\b.*\bnvl\b", "H100 NVL", 3.9e12),
    (r"\bh100\b", "H100 SXM", 3.35e12),
    (r"\ba100\b.*\b40gb\b", "A100 40 GB", 1.555e12),
    (r"\ba100\b.*\b80gb\b.*\bpcie\b", "A100 80 GB PCIe", 1.935e12),
    (r"\ba100\b.*\b80gb\b", "A100 80 GB SXM", 2.039e12),
)

TINY_QWEN2: dict[str, Any] = dict(
    architectures=["Qwen2ForCausalLM"], model_type="qwen2", hidden_act="silu", vocab_size=512, hidden_size=64,
    intermediate_size=176, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
    max_position_embeddings=1024, rope_theta=10000.0, rms_norm_eps=1e-6, tie_word_embeddings=True)
TOKEN_IDS = ("bos_token_id", "eos_token_id", "pad_token_id")  # a trained tokenizer supplies its own


@dataclasses.dataclass(frozen=True)
class Plan:
    """The shapes and time limits of one run: the GPU workload, or --smoke's tiny one on CPU."""

    platform: str  # "gpu" or "cpu"
    sft_model: dict[str, Any]  # HF config.json of the random model
    sft_batch: int
    sft_seq: int
    warmup: int  # untimed steps (the first compiles)
    steps: int  # timed steps (median reported)
    decode: tuple[tuple[int, int, int], ...]  # (batch, prompt tokens, new tokens)
    decode_repeats: int
    grpo_model: dict[str, Any]
    grpo: dict[str, Any]  # grpo section settings replaced in the reference config
    grpo_records: int
    tokenizer_vocab: int
    trainer: dict[str, Any]  # trainer config keys set on the command line (besides model.init)
    trainer_model: dict[str, Any]
    deadlines: dict[str, float]  # seconds per section
    budget_s: float  # the whole run


FULL = Plan(
    platform="gpu", sft_model=HF_CONFIGS["Qwen/Qwen2.5-Math-1.5B"], sft_batch=8, sft_seq=2048, warmup=2, steps=5,
    decode=((64, 128, 256), (256, 128, 512)), decode_repeats=2,
    grpo_model=HF_CONFIGS["Qwen/Qwen2.5-0.5B-Instruct"], grpo={}, grpo_records=512, tokenizer_vocab=32000,
    trainer={"data.batch_size": 16, "optimizer.grad_accum": 1, "data.seq_len": 2048, "train.steps": 40,
             "train.log_every": 10, "train.eval_batches": 2, "data.tokenizer_vocab_size": 1024,
             "data.synthetic": {"arithmetic__add_or_sub": 2000, "arithmetic__mul": 2000}},
    trainer_model={k: v for k, v in HF_CONFIGS["Qwen/Qwen2.5-0.5B-Instruct"].items() if k not in TOKEN_IDS},
    deadlines={"sft": 210, "decode": 100, "grpo": 100, "trainer": 150}, budget_s=470)

SMOKE = Plan(
    platform="cpu", sft_model=TINY_QWEN2, sft_batch=2, sft_seq=64, warmup=1, steps=2,
    decode=((4, 8, 8), (8, 8, 16)), decode_repeats=1,
    grpo_model={k: v for k, v in TINY_QWEN2.items() if k != "vocab_size"},  # the tokenizer's size
    grpo={"prompts_per_step": 2, "group_size": 2, "sampling": {"max_new_tokens": 8}}, grpo_records=64,
    tokenizer_vocab=512,
    trainer={"data.batch_size": 4, "optimizer.grad_accum": 1, "data.seq_len": 128, "train.steps": 8,
             "train.log_every": 2, "train.eval_batches": 1, "data.tokenizer_vocab_size": 384,
             "data.synthetic": {"arithmetic__add_or_sub": 200}},
    trainer_model=TINY_QWEN2, deadlines={"sft": 150, "decode": 90, "grpo": 120, "trainer": 150}, budget_s=600)


# ---------------------------------------------------------------- pure figures


def hbm_bandwidth(device_kind: str) -> tuple[str, float] | None:
    """(name, bytes/s) of the device's HBM, or None for a device not in HBM_BANDWIDTH (CPU, unknown GPU)."""
    kind = device_kind.lower()
    for pattern, name, bandwidth in HBM_BANDWIDTH:
        if re.search(pattern, kind):
            return name, bandwidth
    return None


def decode_weight_bytes(mconfig: Any) -> int:
    """Weight bytes one decode step reads: every parameter, except the input embedding table when the LM head
    is a separate matrix (the lookup reads only the batch's rows)."""
    params = mconfig.num_params() - (0 if mconfig.tie_word_embeddings else mconfig.vocab_size * mconfig.hidden_size)
    return params * np.dtype(mconfig.weight_dtype).itemsize


def kv_bytes_per_token(mconfig: Any, cache_dtype: Any) -> int:
    """Bytes of keys and values one token keeps in the cache, all layers."""
    return 2 * mconfig.num_layers * mconfig.num_kv_heads * mconfig.head_dim * np.dtype(cache_dtype).itemsize


def decode_roofline_seconds(weight_bytes: int, kv_token_bytes: int, batch: int, prompt: int, new: int,
                            bandwidth: float) -> float:
    """HBM lower bound of one greedy call making `new` tokens: the prefill and each of the new - 1 decode steps
    read every weight once, and decode step j (1 .. new-1) reads the cached prompt + j tokens of every row."""
    kv = batch * kv_token_bytes * ((new - 1) * prompt + (new - 1) * new // 2)
    return (new * weight_bytes + kv) / bandwidth


def flow(value: Any) -> str:
    """A value as one line of YAML (a `--set KEY=VALUE` value; floats keep a form YAML reads back as floats)."""
    return yaml.safe_dump(value, default_flow_style=True, width=1 << 30).strip().removesuffix("\n...").strip()


def sft_overrides(plan: Plan) -> list[str]:
    """The shipped 1.5B SFT config on one device with random weights of the plan's shape at its batch."""
    return ["model.path=null", f"model.init={flow(plan.sft_model)}", "mesh.data=1", "mesh.fsdp=1", "mesh.tensor=1",
            f"data.batch_size={plan.sft_batch}", f"data.seq_len={plan.sft_seq}", "optimizer.grad_accum=1",
            "data.train=[]"]


def trainer_overrides(plan: Plan, extra: list[str]) -> list[str]:
    """The trainer section's --set arguments: random weights, synthetic data and a tokenizer fitted to it."""
    fixed = {"model.path": None, "model.init": plan.trainer_model, "data.train": [], "data.tokenizer": "train",
             "train.eval_every": 0, "train.save_every": 0, "train.keep_checkpoints": 1, **plan.trainer}
    return [f"{key}={flow(value)}" for key, value in fixed.items()] + list(extra)


def steady_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Logged rows without the first window (compilation) and the last (evaluation, checkpoint, export)."""
    return rows[1:-1] or rows


# ---------------------------------------------------------------- child processes: one part each


class Result:
    """A part's JSON result, rewritten whole at each update so a killed part leaves what it had measured."""

    def __init__(self, path: Path):
        self.path, self.data = path, {}

    def update(self, **fields: Any) -> None:
        self.data.update(fields)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, default=str))
        os.replace(tmp, self.path)


def device_info() -> dict[str, Any]:
    import jax

    device = jax.devices()[0]
    return {"device_kind": device.device_kind, "backend": jax.default_backend(), "devices": jax.device_count(),
            "jax": jax.__version__}


def device_peak_gib() -> float | None:
    """Peak bytes the device allocator held in this process (GPU/TPU memory_stats); None where there are none."""
    import jax

    stats = jax.devices()[0].memory_stats() or {}
    return stats["peak_bytes_in_use"] / GIB if "peak_bytes_in_use" in stats else None


def part_probe(plan: Plan, work: Path, deadline: float, result: Result) -> None:
    """What JAX sees (without preallocating device memory)."""
    import jax

    stats = jax.devices()[0].memory_stats() or {}
    result.update(**device_info(), memory_gib=stats.get("bytes_limit", 0) / GIB or None,
                  mem_fraction=os.environ.get("XLA_PYTHON_CLIENT_MEM_FRACTION", "unset (JAX default 0.75)"))


def part_torch_probe(plan: Plan, work: Path, deadline: float, result: Result) -> None:
    import torch

    result.update(torch=torch.__version__, cuda=torch.cuda.is_available(),
                  device_name=torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)


def attention_used(mc: Any, length: int, cached: bool = False) -> str:
    """What the model config's attention_impl runs as here for a pass of `length` queries ("auto -> cudnn")."""
    from jaxmath.models.attention import Hardware, resolve

    used = resolve(mc.attention_impl, dtype=mc.compute_dtype, head_dim=mc.head_dim, hw=Hardware.detect(),
                   q_len=length, kv_len=length if not cached else length + 1, cached=cached, training=not cached)
    return used if used == mc.attention_impl else f"{mc.attention_impl} -> {used}"


def part_sft_jaxmath(plan: Plan, work: Path, deadline: float, result: Result, export: bool) -> None:
    """The trainer's own step (build_run, load_params, init_train_state) for the shipped config at the plan's
    batch; with `export`, the initial weights are first written as a HF checkpoint for the torch part."""
    import jax

    from jaxmath.checkpoint.convert import write_hf_checkpoint
    from jaxmath.config import load_config
    from jaxmath.train.config import TrainConfig
    from jaxmath.train.metrics import peak_flops, train_flops_per_token
    from jaxmath.train.state import init_train_state
    from jaxmath.train.step import to_global
    from jaxmath.train.run import load_params
    from jaxmath.train.trainer import build_run, memory_report
    from train_step import full_rows_batch, timed, train_batch

    config = load_config(TrainConfig, SFT_CONFIG, sft_overrides(plan))
    run = build_run(config, work / "sft_run", with_data=False)
    mc, batch_rows, seq = run.model_config, plan.sft_batch, plan.sft_seq
    peak = peak_flops(jax.devices()[0], mc.dtype)
    result.update(**device_info(), config=SFT_CONFIG.name, batch=batch_rows, seq_len=seq, params=mc.num_params(),
                  vocab_size=mc.vocab_size, dtype=mc.dtype, param_dtype=mc.param_dtype, remat=mc.remat,
                  attention_impl=attention_used(mc, seq), optimizer=dataclasses.asdict(config.optimizer),
                  flops_per_token=train_flops_per_token(mc, seq), peak_flops=peak)
    params = load_params(config, mc, run.mesh, run.shardings.params)
    if export:
        start = time.perf_counter()
        write_hf_checkpoint(work / "sft_weights", params, mc, run.hf_config, mc.param_dtype)
        result.update(export_s=time.perf_counter() - start)
    state = init_train_state(params, run.optimizer, config.train.seed, run.shardings, run.trainable)
    del params  # the state holds them, and the step donates it
    batch = to_global(full_rows_batch(train_batch(mc.vocab_size, batch_rows, seq)), run.batch_sharding)
    start = time.perf_counter()
    compiled = run.step_fn.lower(state, batch).compile()
    memory = memory_report(state, compiled.memory_analysis())
    result.update(compile_s=time.perf_counter() - start, peak_gib_compiled=memory.get("peak_gib_per_device"))
    holder = {"state": state}
    del state

    def step() -> float:
        holder["state"], metrics = compiled(holder["state"], batch)
        return float(metrics["loss"])  # waits for the step

    first, times, losses = timed(step, plan.warmup, plan.steps, deadline)
    result.update(first_step_s=first, losses=losses, first_loss=losses[0], peak_gib=device_peak_gib())
    if not times:
        result.update(status="partial", error="deadline reached before a timed step")
        return
    tokens_per_s = batch_rows * seq / statistics.median(times)
    result.update(median_step_s=statistics.median(times), timed_steps=len(times), tokens_per_s=tokens_per_s,
                  mfu=tokens_per_s * train_flops_per_token(mc, seq) / peak if peak else None)


def part_sft_torch(plan: Plan, work: Path, deadline: float, result: Result) -> None:
    """transformers + torch on the weights and batch of the jaxmath part, with its AdamW settings and clipping
    (not its learning-rate schedule, which does not change what a step costs)."""
    import torch

    from train_step import timed, torch_step, train_batch

    ours = json.loads((work / "sft-jaxmath.json").read_text())
    device = "cuda" if plan.platform == "gpu" else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        result.update(status="skipped", reason="torch sees no GPU")
        return
    opt = ours["optimizer"]
    autocast = None if ours["dtype"] == "float32" else ours["dtype"]
    result.update(torch=torch.__version__, device=device, autocast=autocast, attention="sdpa", fused_adamw=True)
    ids = train_batch(ours["vocab_size"], ours["batch"], ours["seq_len"])
    step = torch_step(work / "sft_weights", ids, adamw={k: opt[k] for k in ("lr", "b1", "b2", "eps", "weight_decay")},
                      device=device, autocast=autocast, fused=True, clip_norm=opt["clip_norm"], attention="sdpa")
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    first, times, losses = timed(step, plan.warmup, plan.steps, deadline)
    peak_gib = torch.cuda.max_memory_allocated() / GIB if device == "cuda" else None
    result.update(first_step_s=first, losses=losses, first_loss=losses[0], peak_gib=peak_gib)
    if not times:
        result.update(status="partial", error="deadline reached before a timed step")
        return
    tokens_per_s = ours["batch"] * ours["seq_len"] / statistics.median(times)
    peak = ours["peak_flops"]
    result.update(median_step_s=statistics.median(times), timed_steps=len(times), tokens_per_s=tokens_per_s,
                  mfu=tokens_per_s * ours["flops_per_token"] / peak if peak else None)


def part_decode(plan: Plan, work: Path, deadline: float, result: Result) -> None:
    """Greedy decode of a random model of the 1.5B shape with the shipped SFT config's model settings and
    weights in its compute dtype, against the HBM roofline."""
    from generate import bench_jaxmath
    from jaxmath.checkpoint.convert import model_config_from_hf
    from jaxmath.config import load_config
    from jaxmath.models.transformer import build_model
    from jaxmath.train.config import TrainConfig

    config = load_config(TrainConfig, SFT_CONFIG, sft_overrides(plan))
    mc = model_config_from_hf(plan.sft_model, **{**config.model.options(), "param_dtype": config.model.dtype})
    info = device_info()
    bandwidth = hbm_bandwidth(info["device_kind"])
    attention = f"prefill {attention_used(mc, 128, cached=True)}, decode: the sampler's two-part cache attention"
    result.update(**info, dtype=mc.dtype, param_dtype=mc.param_dtype, attention_impl=attention,
                  remat=mc.remat, bandwidth=bandwidth, rows=[])
    from jaxmath.inference.sampler import decode_cost
    from jaxmath.inference.weights import prepare_weights

    weights = prepare_weights(build_model(mc, seed=0))  # the decode copy, as evaluation and GRPO make it
    weight_bytes, kv_token = decode_weight_bytes(mc), kv_bytes_per_token(mc, mc.compute_dtype)
    rows: list[dict[str, Any]] = []
    for k, (batch, prompt, new) in enumerate(plan.decode):
        if time.time() > deadline:
            skipped = ", ".join(f"batch {b}" for b, _, _ in plan.decode[k:])
            result.update(status="partial", error=f"deadline reached: {skipped} not run")
            return
        prompts = np.random.default_rng(1234).integers(0, mc.vocab_size, (batch, prompt), dtype=np.int32)
        out = bench_jaxmath(weights, prompts, plan.decode_repeats, new)
        seconds = statistics.median(out["times_s"])
        cost = decode_cost(weights, batch, prompt, new) if time.time() < deadline else {}
        roofline = (decode_roofline_seconds(weight_bytes, kv_token, batch, prompt, new, bandwidth[1])
                    if bandwidth else None)
        rows.append({"batch": batch, "prompt": prompt, "new_tokens": new, "seconds": seconds,
                     "warmup_s": out["warmup_s"], "tokens_per_s": batch * new / seconds,
                     "weight_bytes": weight_bytes, "kv_bytes_per_token": kv_token, "roofline_s": roofline,
                     "roofline_fraction": roofline / seconds if roofline else None,
                     "xla_bytes_per_step": cost.get("xla_bytes_gather_rows"),
                     "minimum_bytes_per_step": cost.get("minimum_bytes")})
        result.update(rows=rows, peak_gib=device_peak_gib())
        print(json.dumps(rows[-1]), flush=True)


def part_grpo(plan: Plan, work: Path, deadline: float, result: Result) -> None:
    """One timed iteration (after a compiling one) of the reference GRPO config, on synthetic prompts."""
    from grpo import REFERENCE_CONFIG, prepare_inputs, reference_config, run_variant
    from jaxmath.data.generators import generate

    reference = yaml.safe_load(REFERENCE_CONFIG.read_text())
    g = {**reference["grpo"], **plan.grpo,
         "sampling": {**reference["grpo"]["sampling"], **plan.grpo.get("sampling", {})}}
    fmt, beta, minibatches = reference["data"]["format"], g["loss"]["beta"], g["minibatches"]
    result.update(**device_info(), config=REFERENCE_CONFIG.name, prompts_per_step=g["prompts_per_step"],
                  group_size=g["group_size"], max_prompt_len=g["max_prompt_len"],
                  max_new_tokens=g["sampling"]["max_new_tokens"],
                  beta=beta, minibatches=minibatches, grad_accum=reference["optimizer"].get("grad_accum", 1),
                  dtype=reference["model"].get("dtype"))
    records = generate("arithmetic__add_or_sub", plan.grpo_records, seed=0)
    (work / "grpo").mkdir()
    tokenizer, prompts = prepare_inputs(records, work / "grpo", fmt, g["max_prompt_len"],
                                        vocab_size=plan.tokenizer_vocab)
    raw = reference_config(REFERENCE_CONFIG, tokenizer, prompts, work / "grpo" / "run", beta, minibatches, steps=2,
                           init=plan.grpo_model, grpo=plan.grpo)
    result.update(**run_variant(raw, warmup=1, iters=1), peak_gib=device_peak_gib())


def part_trainer_check(plan: Plan, work: Path, deadline: float, result: Result) -> None:
    """Read the trainer run's figures, then reload its HF export in transformers and compare logits with
    jaxmath's final_model (both float32 on CPU)."""
    import jax.numpy as jnp
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import jaxmath
    from jaxmath.train.metrics import read_metrics

    run = work / "trainer_run"
    rows = steady_rows(read_metrics(run / "metrics.jsonl"))
    config = yaml.safe_load((run / "config.yaml").read_text())
    mfus = [r["mfu"] for r in rows if "mfu" in r]
    result.update(attention_impl=config["model"].get("attention_impl"), remat=config["model"].get("remat"),
                  dtype=config["model"].get("dtype"), batch=config["data"]["batch_size"],
                  seq_len=config["data"]["seq_len"], grad_accum=config["optimizer"]["grad_accum"],
                  steps=config["train"]["steps"], logged_steps=[r["step"] for r in rows],
                  tokens_per_s=statistics.median(r["tokens_per_second"] for r in rows),
                  mfu=statistics.median(mfus) if mfus else None,
                  checkpoints=sorted(int(p.name) for p in (run / "checkpoints").iterdir() if p.name.isdigit()))
    ours = jaxmath.from_pretrained(run / "final_model", dtype="float32")
    theirs = AutoModelForCausalLM.from_pretrained(run / "hf", dtype=torch.float32).eval()
    vocab = len(AutoTokenizer.from_pretrained(run / "hf"))
    ids = np.random.default_rng(0).integers(0, vocab, (2, 32), dtype=np.int64)
    ours_logits = np.asarray(ours(jnp.asarray(ids, jnp.int32)), np.float32)
    with torch.no_grad():
        their_logits = theirs(torch.from_numpy(ids)).logits.float().numpy()
    diff, scale = float(np.max(np.abs(ours_logits - their_logits))), float(np.max(np.abs(their_logits)))
    same = diff <= LOGIT_TOLERANCE * max(1.0, scale)
    result.update(max_logit_diff=diff, max_logit=scale, logits_match=same)
    if not same:
        result.update(status="error", error=f"HF export's logits differ from jaxmath's: max |diff| {diff:.2e} > "
                                            f"{LOGIT_TOLERANCE} x max(1, {scale:.2f})")


PARTS: dict[str, Callable[..., None]] = {
    "probe": part_probe, "torch-probe": part_torch_probe, "sft-jaxmath": part_sft_jaxmath,
    "sft-torch": part_sft_torch, "decode": part_decode, "grpo": part_grpo, "trainer-check": part_trainer_check}


def child_main(args: argparse.Namespace) -> int:
    """Run one part, writing its JSON result (status "error" with the exception's message on failure)."""
    plan = SMOKE if args.smoke else FULL
    result = Result(Path(args.result))
    kwargs = {"export": args.export} if args.part == "sft-jaxmath" else {}
    try:
        PARTS[args.part](plan, Path(args.work), args.deadline, result, **kwargs)
    except BaseException as err:  # SystemExit from bench code too: report it, as every other failure
        import traceback

        traceback.print_exc()
        result.update(status="error", error=f"{type(err).__name__}: {err}"[:1000])
        return 1
    result.update(status=result.data.get("status", "ok"))
    return 0 if result.data["status"] in ("ok", "partial", "skipped") else 1


# ---------------------------------------------------------------- the parent: sections, deadlines, report


@dataclasses.dataclass(frozen=True)
class Part:
    name: str
    command: list[str]
    env: dict[str, str]
    result: Path | None  # the JSON the part writes (None: judged by its exit status alone)


def child_env(smoke: bool) -> dict[str, str]:
    """Children see one device (the first GPU, or one CPU device), this checkout's jaxmath, and no network."""
    env = dict(os.environ)
    flags = [f for f in env.get("XLA_FLAGS", "").split() if "xla_force_host_platform_device_count" not in f]
    env["XLA_FLAGS"] = " ".join(flags)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    if smoke:
        env["JAX_PLATFORMS"] = "cpu"
    else:
        env["CUDA_VISIBLE_DEVICES"] = env.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0]
    return env


def run_part(part: Part, deadline: float, log_dir: Path) -> dict[str, Any]:
    """Run one part in its own process group until `deadline` (+ GRACE_S), then kill it; its result JSON
    (whatever it wrote) with status, seconds and, on failure, the error."""
    remaining = deadline - time.time()
    if remaining <= 0:
        return {"status": "timeout", "seconds": 0.0, "error": "the section's deadline passed before this part"}
    print(f"[gpu.py] {part.name} (up to {remaining:.0f} s) ...", file=sys.stderr, flush=True)
    log_path = log_dir / f"{part.name}.log"
    start = time.time()
    with log_path.open("w") as log:
        log.write("$ " + shlex.join(part.command) + "\n")
        log.flush()
        proc = subprocess.Popen(part.command, env=part.env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True, cwd=ROOT)
        try:
            code, killed = proc.wait(timeout=remaining + GRACE_S), False
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            code, killed = proc.wait(), True
        except BaseException:  # Ctrl-C: its own session would keep the part (and the GPU) busy
            os.killpg(proc.pid, signal.SIGKILL)
            raise
    result: dict[str, Any] = {}
    if part.result is not None and part.result.is_file():
        result = json.loads(part.result.read_text())
    result["seconds"] = time.time() - start
    if killed:
        result.update(status="timeout", error=f"deadline exceeded: killed after {result['seconds']:.0f} s")
    elif code != 0 and result.get("status") in (None, "ok"):
        result.update(status="error", error=f"exit status {code}: {last_line(log_path)}")
    else:
        result.setdefault("status", "ok")
    print(f"[gpu.py] {part.name}: {result['status']} ({result['seconds']:.0f} s)"
          + (f": {result['error']}" if result.get("error") else ""), file=sys.stderr, flush=True)
    if result["status"] in ("error", "timeout"):
        print("".join(log_path.read_text().splitlines(keepends=True)[-15:]), file=sys.stderr, flush=True)
    return result


def last_line(path: Path) -> str:
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    return lines[-1][:300] if lines else "(no output)"


def child(name: str, args: argparse.Namespace, work: Path, env: dict[str, str], deadline: float,
          *extra: str) -> Part:
    command = [sys.executable, str(Path(__file__).resolve()), "--part", name, "--work", str(work),
               "--deadline", str(deadline), "--result", str(work / f"{name}.json"), *extra]
    return Part(name, command + (["--smoke"] if args.smoke else []), env, work / f"{name}.json")


def section_parts(name: str, plan: Plan, args: argparse.Namespace, work: Path, env: dict[str, str],
                  deadline: float, torch_gpu: bool) -> list[Part]:
    """The processes of one section, run in order; each needs the previous ones to have succeeded."""
    cpu_env = {**env, "JAX_PLATFORMS": "cpu"}
    if name == "sft":
        with_torch = not args.skip_torch and (args.smoke or torch_gpu)
        parts = [child("sft-jaxmath", args, work, env, deadline, *(["--export"] if with_torch else []))]
        return parts + ([child("sft-torch", args, work, env, deadline)] if with_torch else [])
    if name == "trainer":
        train = [sys.executable, str(ROOT / "launch" / "train.py"), "--config", str(TRAINER_CONFIG), "--output-dir",
                 str(work / "trainer_run")]
        for override in trainer_overrides(plan, args.trainer_set):
            train += ["--set", override]
        return [Part("trainer-run", train, env, None), child("trainer-check", args, work, cpu_env, deadline)]
    return [child(name, args, work, env, deadline)]


def run_section(name: str, plan: Plan, args: argparse.Namespace, work: Path, env: dict[str, str], deadline: float,
                torch_gpu: bool, log_dir: Path) -> dict[str, Any]:
    """Run a section's parts in order (a part runs only if the ones before it succeeded) and derive its figures."""
    start, parts = time.time(), {}
    for part in section_parts(name, plan, args, work, env, deadline, torch_gpu):
        if any(p["status"] != "ok" for p in parts.values()):
            parts[part.name] = {"status": "skipped", "error": "an earlier part of this section did not finish"}
            continue
        parts[part.name] = run_part(part, deadline, log_dir)
    statuses = [p["status"] for p in parts.values()]
    status = next((s for s in ("error", "timeout", "partial") if s in statuses), "ok")
    section = {"status": status, "seconds": time.time() - start, "parts": parts}
    if name == "sft" and "sft-torch" in parts and "first_loss" in parts["sft-torch"]:
        ours, theirs = parts["sft-jaxmath"], parts["sft-torch"]
        difference = abs(ours["first_loss"] - theirs["first_loss"])
        section.update(first_loss_difference=difference, same_first_loss=difference <= LOSS_TOLERANCE,
                       loss_tolerance=LOSS_TOLERANCE)
        if "tokens_per_s" in ours and "tokens_per_s" in theirs:
            section["speedup_vs_torch"] = ours["tokens_per_s"] / theirs["tokens_per_s"]
        if difference > LOSS_TOLERANCE and section["status"] == "ok":
            section.update(status="error", error=f"first losses differ by {difference:.4f} > {LOSS_TOLERANCE}: "
                                                 "not the same workload")
    return section


def skipped_section(reason: str) -> dict[str, Any]:
    return {"status": "skipped", "seconds": 0.0, "parts": {}, "error": reason}


# ---------------------------------------------------------------- the table


def rate(tokens_per_s: float | None) -> str:
    if tokens_per_s is None:
        return "n/a"
    return f"{tokens_per_s / 1e3:.1f}k tok/s" if tokens_per_s >= 1e3 else f"{tokens_per_s:.1f} tok/s"


def percent(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1%}"


def gib(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f} GiB"


def settings(part: dict[str, Any]) -> str:
    """Attention implementation and remat the part's model config used (null as YAML writes it)."""
    return f"attention {flow(part.get('attention_impl'))}, remat {flow(part.get('remat'))}"


def part_status(part: dict[str, Any]) -> str:
    text = {"ok": "ok", "skipped": "skipped", "partial": "PARTIAL", "error": "ERROR", "timeout": "TIMEOUT"}
    out = f"{text.get(part['status'], part['status'])} {part.get('seconds', 0):.0f} s"
    why = part.get("error") or part.get("reason")
    return f"{out}: {why[:160]}" if why else out


def sft_rows(section: dict[str, Any]) -> list[tuple[str, str, str]]:
    rows = []
    ours = section["parts"].get("sft-jaxmath", {})
    if ours:
        rows.append((f"jaxmath {ours.get('batch')} x {ours.get('seq_len')}, {ours.get('dtype')} / "
                     f"{ours.get('param_dtype')} master, {settings(ours)}",
                     f"{rate(ours.get('tokens_per_s'))}, MFU {percent(ours.get('mfu'))}, "
                     f"peak {gib(ours.get('peak_gib'))} (compiled estimate {gib(ours.get('peak_gib_compiled'))}), "
                     f"compile {ours.get('compile_s', 0):.0f} s",
                     part_status(ours)))
    theirs = section["parts"].get("sft-torch")
    if theirs:
        rows.append((f"transformers + torch ({theirs.get('device', '?')}), autocast {theirs.get('autocast')}, sdpa, "
                     "fused AdamW", f"{rate(theirs.get('tokens_per_s'))}, MFU {percent(theirs.get('mfu'))}, peak "
                     f"{gib(theirs.get('peak_gib'))}", part_status(theirs)))
    if "first_loss_difference" in section:
        speedup = section.get("speedup_vs_torch")
        rows.append(("jaxmath vs torch, same weights and batch",
                     (f"{speedup:.2f}x tokens/s; " if speedup else "")
                     + f"first loss {ours['first_loss']:.4f} vs {theirs['first_loss']:.4f} (|diff| "
                       f"{section['first_loss_difference']:.1e}, tolerance {LOSS_TOLERANCE})",
                     "same" if section["same_first_loss"] else "DIFFERENT"))
    elif ours.get("status") == "ok" and not theirs:
        rows.append(("transformers + torch", "not run", "skipped: torch sees no GPU (or --skip-torch)"))
    return rows


def decode_rows(section: dict[str, Any]) -> list[tuple[str, str, str]]:
    part = section["parts"].get("decode", {})
    bandwidth = part.get("bandwidth")
    rows = []
    for r in part.get("rows", []):
        roof = (f"{r['roofline_fraction']:.1%} of HBM roofline ({r['roofline_s']:.2f} s at {bandwidth[0]} "
                f"{bandwidth[1] / 1e12:.2f} TB/s)" if bandwidth else
                f"roofline n/a ({part.get('device_kind')} not in HBM_BANDWIDTH)")
        rows.append((f"greedy batch {r['batch']}, {r['prompt']} + {r['new_tokens']}, {part.get('dtype')}, "
                     f"{settings(part)}", f"{rate(r['tokens_per_s'])} ({r['seconds']:.2f} s), {roof}, first call "
                                          f"{r['warmup_s']:.1f} s", "ok"))
    if not rows or part.get("status") != "ok":
        rows.append(("greedy decode", "", part_status(part) if part else section.get("error", "")))
    return rows


def grpo_rows(section: dict[str, Any]) -> list[tuple[str, str, str]]:
    p = section["parts"].get("grpo", {})
    work = (f"{p.get('config')}: {p.get('prompts_per_step')} x {p.get('group_size')} x {p.get('max_new_tokens')}, "
            f"beta {p.get('beta')}, {p.get('dtype')}, {settings(p)}")
    if "total_s" not in p:
        return [(work, "", part_status(p) if p else section.get("error", ""))]
    share = p["rollout_s"] / p["total_s"] if p["total_s"] else 0.0
    compiled = f" ({p['warmup_compile_s']:.1f} s XLA compile)" if "warmup_compile_s" in p else ""
    ratio = (f"; first update |log ratio| trainer vs sampler mean {p['log_ratio_mean']:.1e}, max "
             f"{p['log_ratio_max']:.1e}" if "log_ratio_max" in p else "")
    return [(work, f"{p['total_s']:.2f} s/iteration (rollout {p['rollout_s']:.2f} s = {share:.0%}, reward "
                   f"{p['reward_s']:.2f}, log-probs {p['logprob_s']:.2f}, update {p['update_s']:.2f}); first "
                   f"iteration {p['warmup_s']:.1f} s{compiled}; rollout {rate(p['rollout_tok_s'])}{ratio}",
             part_status(p))]


def trainer_rows(section: dict[str, Any]) -> list[tuple[str, str, str]]:
    run, check = section["parts"].get("trainer-run", {}), section["parts"].get("trainer-check", {})
    work = (f"launch/train.py {TRAINER_CONFIG.name}, {check.get('batch')} x {check.get('seq_len')} (grad_accum "
            f"{check.get('grad_accum')}), {check.get('steps')} steps, {settings(check)}")
    rows = [(work, f"{rate(check.get('tokens_per_s'))}, MFU {percent(check.get('mfu'))} (logged steps "
                   f"{check.get('logged_steps')})" if "tokens_per_s" in check else "", part_status(run) if run else
             section.get("error", ""))]
    if "max_logit_diff" in check:
        rows.append(("checkpoint -> HF export -> transformers reload",
                     f"checkpoint step(s) {check['checkpoints']}; max |logit diff| {check['max_logit_diff']:.1e} "
                     f"(max |logit| {check['max_logit']:.1f})", part_status(check)))
    elif check:
        rows.append(("checkpoint -> HF export -> transformers reload", "", part_status(check)))
    return rows


def table(report: dict[str, Any]) -> str:
    """One table: section | workload | figures | status."""
    rows: list[tuple[str, str, str, str]] = []
    makers = {"sft": sft_rows, "decode": decode_rows, "grpo": grpo_rows, "trainer": trainer_rows}
    for name, section in report["sections"].items():
        made = makers[name](section) if section["parts"] else [("", "", f"skipped: {section.get('error')}")]
        rows += [(name, *row) for row in made]
    header = ("section", "workload", "figures", "status")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(3)]
    lines = [f"jaxmath GPU check on {report['device_kind']} ({report['backend']}), jax {report['versions'].get('jax')}"
             f", {'smoke (tiny shapes, CPU)' if report['smoke'] else 'full workload'}; "
             f"{report['total_s']:.0f} s of a {report['budget_s']:.0f} s budget"]
    lines.append(" | ".join(h.ljust(w) for h, w in zip(header, widths)) + " | status")
    lines.append("-+-".join("-" * w for w in widths) + "-+-" + "-" * 6)
    lines += [" | ".join(c.ljust(w) for c, w in zip(row, widths)) + " | " + row[3] for row in rows]
    lines.append("MFU: model FLOPs (6 x matmul params + attention, per token) / the device's dense peak for the "
                 "compute dtype (jaxmath.train.metrics.PEAK_FLOPS). HBM roofline of a decode call: (new tokens x "
                 "weight bytes + KV bytes of the filled cache read at each step) / bandwidth.")
    return "\n".join(lines)


def versions() -> dict[str, str | None]:
    from importlib import metadata

    out = {}
    for name in ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "transformers", "torch"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="tiny shapes on CPU (the test suite runs this)")
    parser.add_argument("--out", type=Path, default=None, help="keep every part's log, the table and the JSON here")
    parser.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS), help="run only these")
    parser.add_argument("--budget", type=float, default=None,
                        help="seconds for the whole run (default 470, --smoke 600); sections past it are skipped")
    parser.add_argument("--skip-torch", action="store_true", help="no transformers + torch SFT comparison")
    parser.add_argument("--trainer-set", action="append", default=[], metavar="KEY=VALUE",
                        help="extra override for the trainer section's launch/train.py (e.g. optimizer.grad_accum=4 "
                             "on an A100 40 GB); repeatable")
    parser.add_argument("--part", choices=sorted(PARTS), help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    parser.add_argument("--deadline", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    parser.add_argument("--export", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.part:
        return child_main(args)
    plan = SMOKE if args.smoke else FULL
    budget = args.budget or plan.budget_s
    start = time.time()
    with tempfile.TemporaryDirectory(prefix="jaxmath_bench_gpu_") as tmp:
        work = Path(tmp)
        log_dir = args.out or work / "logs"
        log_dir.mkdir(parents=True, exist_ok=True)
        env = child_env(args.smoke)
        probe = run_part(child("probe", args, work, {**env, "XLA_PYTHON_CLIENT_PREALLOCATE": "false"},
                               start + 120), start + 120, log_dir)
        torch_gpu = False
        if not args.smoke and not args.skip_torch and "sft" in args.sections:
            torch_gpu = bool(run_part(child("torch-probe", args, work, env, time.time() + 60), time.time() + 60,
                                      log_dir).get("cuda"))
        sections: dict[str, dict[str, Any]] = {}
        if probe["status"] != "ok":
            sections = {name: skipped_section(f"JAX did not start: {probe.get('error')}") for name in args.sections}
        elif not args.smoke and probe["backend"] == "cpu":
            sections = {name: skipped_section("JAX sees no accelerator (backend cpu): install jax with CUDA "
                                              "(pip install -e '.[gpu]'), or run --smoke") for name in args.sections}
        for name in args.sections:
            if name in sections:
                continue
            deadline = min(time.time() + plan.deadlines[name], start + budget)
            if deadline <= time.time():
                sections[name] = skipped_section(f"the run's budget of {budget:.0f} s was spent")
                continue
            sections[name] = run_section(name, plan, args, work, env, deadline, torch_gpu, log_dir)
        if (work / "trainer_run" / "metrics.jsonl").is_file() and args.out:
            for name in ("metrics.jsonl", "config.yaml"):
                if (work / "trainer_run" / name).is_file():
                    (args.out / "trainer_run").mkdir(exist_ok=True)
                    shutil.copy2(work / "trainer_run" / name, args.out / "trainer_run" / name)
    report = {"bench": "gpu", "smoke": args.smoke, "device_kind": probe.get("device_kind"),
              "backend": probe.get("backend"), "memory_gib": probe.get("memory_gib"),
              "mem_fraction": probe.get("mem_fraction"), "versions": {**versions(), "jax": probe.get("jax")},
              "budget_s": budget, "total_s": time.time() - start, "sections": sections}
    text = table(report)
    line = json.dumps(report, default=str)
    print(text)
    print(line)
    if args.out:
        (args.out / "table.txt").write_text(text + "\n")
        (args.out / "result.json").write_text(line + "\n")
    return 0 if all(s["status"] == "ok" for s in sections.values()) else 1



if __name__ == "__main__":
    sys.exit(main())
