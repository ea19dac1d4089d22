"""`jaxmath demo`, shortened (one-digit sums, 40 SFT steps, 12 GRPO iterations), run as a user runs it: the
mean GRPO reward rises, and the run writes its summary, plot, and a Hugging Face export that transformers
answers with. One device (a fresh process without the suite's 8 simulated devices), as on a laptop."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from jaxmath.train.metrics import read_metrics


@pytest.mark.slow
def test_short_demo_grpo_raises_mean_reward(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    command = [sys.executable, "-m", "jaxmath.cli", "demo", "--output-dir", str(tmp_path), "--sft-steps", "40",
               "--grpo-steps", "12", "--held-out", "32", "--problems", "arithmetic__add_digits=600"]
    done = subprocess.run(command, env={**env, "JAX_PLATFORMS": "cpu"}, capture_output=True, text=True,
                          timeout=1200)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "| after GRPO   |" in done.stdout
    rewards = [row["reward_mean"] for row in read_metrics(tmp_path / "grpo" / "metrics.jsonl") if "reward_mean" in row]
    assert len(rewards) == 12
    assert np.mean(rewards[6:]) > np.mean(rewards[:6]), rewards
    summary = json.loads((tmp_path / "summary.json").read_text())
    for key in ("accuracy_before_grpo", "accuracy_after_grpo"):
        assert 0.0 <= summary[key] <= 1.0
    assert (tmp_path / "grpo_progress.png").stat().st_size > 1000
    assert isinstance(summary["transformers_reply"], str) and summary["transformers_reply"]
    for run in ("sft", "grpo"):
        for name in ("config.yaml", "metrics.jsonl", "final_model", "hf", "tokenizer"):
            assert (tmp_path / run / name).exists(), (run, name)
