"""The SFT trainer end to end: run files, exact resume after SIGKILL, restore onto another mesh, dry run."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from jaxmath.config import ConfigError, load_config
from jaxmath.train.config import TrainConfig
from jaxmath.train.trainer import dry_run, train

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "sft" / "tiny-cpu.yaml"


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "arith.jsonl"
    rng = np.random.default_rng(0)
    with path.open("w") as f:
        for i in range(300):
            a, b = (int(x) for x in rng.integers(1, 99, 2))
            f.write(json.dumps({"id": f"add-{i}", "question": f"What is {a} + {b}?", "answer": str(a + b),
                                "solution": f"{a} + {b} = {a + b}. The answer is \\boxed{{{a + b}}}."}) + "\n")
    return path


def overrides(records, **extra):
    base = {"data.synthetic": "{}", "data.train": f"[{records}]", "data.eval_fraction": 0.1,
            "data.seq_len": 128, "train.log_every": 1, "train.eval_every": 0, "train.export_hf": "false",
            "mesh.data": -1, "train.steps": 8, "train.save_every": 2, "train.keep_checkpoints": 20,
            "optimizer.total_steps": 24}
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


def losses(run_dir: Path) -> dict[int, float]:
    """step -> loss of the last row logged for that step."""
    out = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        if "loss" in row:
            out[row["step"]] = row["loss"]
    return out


@pytest.fixture(scope="module")
def reference_run(records, tmp_path_factory):
    out = tmp_path_factory.mktemp("ref")
    config = load_config(TrainConfig, TINY, overrides(records, **{
        "train.steps": 24, "train.export_hf": "true", "train.eval_generate": 4, "train.eval_max_new_tokens": 12}))
    summary = train(config, out, progress=False)
    return out, summary


def test_run_writes_every_file_and_learns(reference_run):
    out, summary = reference_run
    for name in ("config.yaml", "metrics.jsonl", "checkpoints", "tensorboard", "tokenizer", "final_model", "hf"):
        assert (out / name).exists(), name
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    for key in ("step", "loss", "learning_rate", "grad_norm", "tokens_per_second"):
        assert all(key in row for row in rows), key
    steps = losses(out)
    assert steps[24] < 0.6 * steps[1]
    assert summary["eval_loss"] is not None and np.isfinite(summary["eval_loss"])
    assert summary["eval_accuracy"] in (0.0, 0.25, 0.5, 0.75, 1.0)  # 4 held-out problems, graded
    assert rows[-1]["eval_accuracy"] == summary["eval_accuracy"]
    import transformers
    model = transformers.AutoModelForCausalLM.from_pretrained(out / "hf")
    tokenizer = transformers.AutoTokenizer.from_pretrained(out / "hf")
    assert model.config.vocab_size >= len(tokenizer)


def test_resume_after_sigkill_is_bit_exact(records, reference_run, tmp_path):
    ref_dir, _ = reference_run
    out = tmp_path / "killed"
    args = [sys.executable, str(ROOT / "launch" / "train.py"), "--config", str(TINY), "--output-dir", str(out)]
    for item in overrides(records, **{"train.steps": 24, "train.export_hf": "true"}):
        args += ["--set", item]
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        committed = [p for p in (out / "checkpoints").glob("*") if (p / "commit_success.txt").exists()] \
            if (out / "checkpoints").exists() else []
        if committed:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.02)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    config = load_config(TrainConfig, TINY, overrides(records, **{"train.steps": 24, "train.export_hf": "true"}))
    train(config, out, resume=True, progress=False)
    ref, resumed = losses(ref_dir), losses(out)
    assert set(resumed) == set(ref)
    assert resumed == ref  # bit for bit: same floats for every step, killed or not


def test_restore_onto_a_different_mesh(records, reference_run, tmp_path):
    """Continue the reference run (mesh 8x1x1) from its step-4 checkpoint on a (2, 4, 1) mesh."""
    ref_dir, _ = reference_run
    shutil.copytree(ref_dir / "tokenizer", tmp_path / "tokenizer")
    shutil.copytree(ref_dir / "checkpoints" / "4", tmp_path / "checkpoints" / "4")
    config = load_config(TrainConfig, TINY, overrides(records, **{
        "train.steps": 6, "mesh.data": 2, "mesh.fsdp": 4, "train.save_every": 0}))
    train(config, tmp_path, resume=True, progress=False)
    ref, got = losses(ref_dir), losses(tmp_path)
    assert sorted(got) == [5, 6]
    np.testing.assert_allclose([got[5], got[6]], [ref[5], ref[6]], rtol=1e-5)


def test_dry_run_reports_memory(records, tmp_path):
    config = load_config(TrainConfig, TINY, overrides(records, **{"mesh.data": 2, "mesh.fsdp": 4}))
    report = dry_run(config, tmp_path)
    assert report["peak_gib_per_device"] > 0
    assert report["optimizer_gib_total"] == pytest.approx(2 * report["params_gib_total"], rel=0.01)


def test_config_errors_name_the_key(tmp_path):
    with pytest.raises(ConfigError, match="optimizer.learning_rate"):
        load_config(TrainConfig, TINY, ["optimizer.learning_rate=1e-4"])
    with pytest.raises(ConfigError, match="optimizer.lr"):
        load_config(TrainConfig, TINY, ["optimizer.lr=fast"])
    with pytest.raises(ConfigError, match="train.eval_every"):
        load_config(TrainConfig, TINY, ["train.eval_every=3", "train.log_every=2"])
