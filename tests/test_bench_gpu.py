"""bench/gpu.py, the one-command GPU check: its roofline and device tables, its handling of late and failing
parts, its table of GPU figures, and `--smoke` end to end (the same code with tiny shapes on CPU) so it cannot rot."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from jaxmath.models.config import REMAT_POLICIES

from jaxmath.config import load_config
from jaxmath.models.config import ModelConfig
from jaxmath.train.config import TrainConfig

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "gpu.py"


@pytest.fixture(scope="module")
def gpu():
    """bench/gpu.py as a module (bench/ is on the path only while it and bench/memory.py are imported)."""
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        import gpu as module
    finally:
        sys.path.remove(str(ROOT / "bench"))
    return module


@pytest.mark.parametrize("kind, bandwidth", [
    ("NVIDIA H200", 4.8e12), ("NVIDIA H100 80GB HBM3", 3.35e12), ("NVIDIA H100 PCIe", 2.0e12),
    ("NVIDIA A100-SXM4-40GB", 1.555e12), ("NVIDIA A100-PCIE-40GB", 1.555e12), ("NVIDIA A100-SXM4-80GB", 2.039e12),
    ("NVIDIA A100 80GB PCIe", 1.935e12), ("NVIDIA GH200 480GB", None), ("cpu", None), ("TPU v5 lite", None)])
def test_hbm_bandwidth_by_device_kind(gpu, kind, bandwidth):
    found = gpu.hbm_bandwidth(kind)
    assert (found[1] if found else None) == bandwidth


def test_decode_roofline_of_the_published_shapes(gpu):
    from memory import HF_CONFIGS

    qwen = ModelConfig.from_hf(HF_CONFIGS["Qwen/Qwen2.5-Math-1.5B"], dtype="bfloat16", param_dtype="bfloat16")
    assert gpu.decode_weight_bytes(qwen) == 1_543_714_304 * 2  # the Hub's parameter count, tied head
    deepseek = ModelConfig.from_hf(HF_CONFIGS["deepseek-ai/deepseek-math-7b-instruct"], param_dtype="bfloat16")
    assert gpu.decode_weight_bytes(deepseek) == (6_910_365_696 - 102400 * 4096) * 2  # its input table is a lookup
    kv = gpu.kv_bytes_per_token(qwen, "bfloat16")
    assert kv == 2 * 28 * 2 * 128 * 2  # keys and values, 28 layers, 2 KV heads of 128, bfloat16
    weights, batch, prompt, new = 1_543_714_304 * 2, 64, 128, 256
    step_bytes = [weights] + [weights + batch * kv * (prompt + j) for j in range(1, new)]  # prefill, then steps
    expected = sum(step_bytes) / 4.8e12
    assert gpu.decode_roofline_seconds(weights, kv, batch, prompt, new, 4.8e12) == pytest.approx(expected, rel=1e-12)


def test_run_part_kills_a_late_part_keeping_its_figures_and_reports_a_failing_one(gpu, tmp_path, monkeypatch):
    monkeypatch.setattr(gpu, "GRACE_S", 0)
    result = tmp_path / "late.json"
    late = gpu.Part("late", [sys.executable, "-c", f"import json, time; open({str(result)!r}, 'w').write("
                             "json.dumps({'rows': [1]})); time.sleep(60)"], dict(os.environ), result)
    start = time.time()
    got = gpu.run_part(late, time.time() + 2, tmp_path)
    assert time.time() - start < 30
    assert got["status"] == "timeout" and "deadline exceeded" in got["error"]
    assert got["rows"] == [1]  # what the part wrote before it was killed
    failing = gpu.Part("failing", [sys.executable, "-c", "import sys; print('boom: no GPU'); sys.exit(3)"],
                       dict(os.environ), None)
    got = gpu.run_part(failing, time.time() + 60, tmp_path)
    assert got["status"] == "error" and "exit status 3" in got["error"] and "boom: no GPU" in got["error"]
    assert (tmp_path / "failing.log").read_text().startswith("$ ")
    assert gpu.run_part(failing, time.time() - 1, tmp_path)["status"] == "timeout"  # never started


def test_table_shows_gpu_figures(gpu):
    """The GPU-only branches (MFU, device peak memory, roofline fraction) that --smoke on CPU cannot reach."""
    sft = {"status": "ok", "seconds": 120.0, "batch": 8, "seq_len": 2048, "dtype": "bfloat16",
           "param_dtype": "float32", "attention_impl": "cudnn", "remat": "none", "tokens_per_s": 40_600.0, "mfu": 0.424,
           "peak_gib": 87.7, "peak_gib_compiled": 85.0, "compile_s": 50.0, "first_loss": 11.9301}
    torch = {"status": "ok", "seconds": 30.0, "device": "cuda", "autocast": "bfloat16", "tokens_per_s": 36_000.0,
             "mfu": 0.376, "peak_gib": 99.0, "first_loss": 11.9304}
    row = {"batch": 256, "prompt": 128, "new_tokens": 512, "seconds": 5.02, "warmup_s": 30.0, "tokens_per_s": 26_100.0,
           "roofline_s": 0.6024, "roofline_fraction": 0.12}
    decode = {"status": "ok", "seconds": 70.0, "dtype": "bfloat16", "attention_impl": "cudnn", "remat": "none",
              "bandwidth": ["H200", 4.8e12], "rows": [row]}
    report = {"device_kind": "NVIDIA H200", "backend": "gpu", "versions": {"jax": "0.11.2"}, "smoke": False,
              "total_s": 300.0, "budget_s": 470.0, "sections": {
                  "sft": {"status": "ok", "parts": {"sft-jaxmath": sft, "sft-torch": torch},
                          "first_loss_difference": 3e-4, "same_first_loss": True, "speedup_vs_torch": 40.6 / 36.0},
                  "decode": {"status": "ok", "parts": {"decode": decode}},
                  "grpo": {"status": "skipped", "parts": {}, "error": "the run's budget of 470 s was spent"}}}
    text = gpu.table(report)
    assert "jaxmath 8 x 2048, bfloat16 / float32 master, attention cudnn, remat none" in text
    assert "40.6k tok/s, MFU 42.4%, peak 87.7 GiB" in text
    assert "36.0k tok/s, MFU 37.6%, peak 99.0 GiB" in text
    assert "1.13x tokens/s; first loss 11.9301 vs 11.9304" in text
    assert "26.1k tok/s (5.02 s), 12.0% of HBM roofline (0.60 s at H200 4.80 TB/s)" in text
    assert "skipped: the run's budget of 470 s was spent" in text


def smoke(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess, dict]:
    proc = subprocess.run([sys.executable, str(SCRIPT), "--smoke", "--out", str(tmp_path), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=1200)
    lines = proc.stdout.strip().splitlines()
    assert lines, proc.stderr[-3000:]
    return proc, json.loads(lines[-1])


@pytest.mark.slow
def test_smoke_runs_every_section(gpu, tmp_path):
    import transformers

    proc, report = smoke(tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    sections = report["sections"]
    assert list(sections) == list(gpu.SECTIONS)
    assert {name: s["status"] for name, s in sections.items()} == dict.fromkeys(gpu.SECTIONS, "ok")
    assert report["device_kind"] == "cpu" and report["smoke"] is True

    ours, theirs = sections["sft"]["parts"]["sft-jaxmath"], sections["sft"]["parts"]["sft-torch"]
    assert ours["first_loss"] == pytest.approx(math.log(512), abs=0.05)  # random init: ~uniform over 512 tokens
    assert abs(ours["first_loss"] - theirs["first_loss"]) <= gpu.LOSS_TOLERANCE and sections["sft"]["same_first_loss"]
    assert ours["tokens_per_s"] > 0 and theirs["tokens_per_s"] > 0
    shipped = load_config(TrainConfig, gpu.SFT_CONFIG).model
    assert (shipped.attention_impl, shipped.remat) == ("auto", "auto")  # the config's defaults, resolved here:
    assert ours["attention_impl"] == "auto -> chunked" and ours["remat"] in REMAT_POLICIES

    decode = sections["decode"]["parts"]["decode"]
    assert [(r["batch"], r["prompt"], r["new_tokens"]) for r in decode["rows"]] == [(4, 8, 8), (8, 8, 16)]
    hf = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**gpu.TINY_QWEN2))
    assert decode["rows"][0]["weight_bytes"] == hf.num_parameters() * 2  # bfloat16 weights, tied head
    assert decode["rows"][0]["kv_bytes_per_token"] == 2 * 2 * 2 * 16 * 2
    assert all(r["tokens_per_s"] > 0 and r["roofline_fraction"] is None for r in decode["rows"])  # CPU: no roofline

    grpo = sections["grpo"]["parts"]["grpo"]
    assert grpo["total_s"] > 0 and grpo["rollout_tok_s"] > 0 and grpo["config"] == "qwen2.5-0.5b-instruct-gsm8k.yaml"
    assert grpo["warmup_compile_s"] > 0 and grpo["dtype"] == "bfloat16"
    assert 0 <= grpo["log_ratio_mean"] <= grpo["log_ratio_max"] <= 0.1  # bfloat16 (tests/test_rollout_logprobs.py)

    trainer = sections["trainer"]["parts"]["trainer-check"]
    assert trainer["logits_match"] and trainer["max_logit_diff"] <= gpu.LOGIT_TOLERANCE * max(1, trainer["max_logit"])
    assert trainer["checkpoints"] == [8] and trainer["logged_steps"] == [4, 6]

    table = proc.stdout.strip().splitlines()[:-1]
    for name in gpu.SECTIONS:
        assert any(line.startswith(name) for line in table), name
    for name in ("table.txt", "result.json", "probe.log", "sft-jaxmath.log", "sft-torch.log", "decode.log",
                 "grpo.log", "trainer-run.log", "trainer-check.log", "trainer_run/metrics.jsonl"):
        assert (tmp_path / name).is_file(), name


@pytest.mark.slow
def test_spent_budget_skips_sections_with_a_message(gpu, tmp_path):
    proc, report = smoke(tmp_path, "--sections", "decode", "grpo", "--budget", "0.001")
    assert proc.returncode == 1
    for name in ("decode", "grpo"):
        assert report["sections"][name]["status"] == "skipped"
        assert "budget" in report["sections"][name]["error"]
    assert "skipped: the run's budget of 0 s was spent" in proc.stdout
