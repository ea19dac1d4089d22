"""A shortened `jaxmath demo` (one-digit sums, few steps): SFT then GRPO raise the reward, and the run
writes its summary, plot and a Hugging Face export that transformers answers with."""
from __future__ import annotations

import json

import numpy as np

from jaxmath.demo import run_demo
from jaxmath.train.metrics import read_metrics


def test_short_demo_grpo_raises_mean_reward(tmp_path):
    result = run_demo(tmp_path, sft_steps=60, grpo_steps=12, held_out=16, problems={"arithmetic__add_digits": 600})
    rewards = [row["reward_mean"] for row in read_metrics(tmp_path / "grpo" / "metrics.jsonl") if "reward_mean" in row]
    assert len(rewards) == 12
    assert np.mean(rewards[-4:]) > np.mean(rewards[:4]), rewards
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary == result
    for key in ("accuracy_before_grpo", "accuracy_after_grpo"):
        assert 0.0 <= summary[key] <= 1.0
    assert (tmp_path / "grpo_progress.png").stat().st_size > 1000
    assert isinstance(summary["transformers_reply"], str) and summary["transformers_reply"]
    for run in ("sft", "grpo"):
        for name in ("config.yaml", "metrics.jsonl", "final_model", "hf", "tokenizer"):
            assert (tmp_path / run / name).exists(), (run, name)
