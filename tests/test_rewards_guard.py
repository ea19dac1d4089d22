"""A reward function that raises costs the rows it raised on, not the run: guarded scoring against
hand-computed scores, counts and the one logged traceback, and the GRPO loop's reward_errors metrics."""
from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from jaxmath import rewards as R


def _flaky(completions, examples):
    """1 per character pair; raises on a completion containing 'boom' (the whole batch raises with it)."""
    for text in completions:
        if "boom" in text:
            raise ZeroDivisionError(f"flaky reward cannot read {text!r}")
    return np.array([len(t) // 2 for t in completions], np.float32)


@pytest.fixture
def flaky(monkeypatch):
    monkeypatch.setitem(R.REWARDS, "flaky", _flaky)
    return "flaky"


def test_a_raising_row_scores_zero_and_is_counted_and_logged_once(flaky, caplog):
    failures = R.RewardFailures()
    texts = ["abcd", "boom", "ab", "kaboom!"]
    with caplog.at_level(logging.ERROR, logger="jaxmath.rewards"):
        scores = R.guarded_scores(flaky, texts, [{}] * 4, failures)
        again = R.guarded_scores(flaky, ["boom", "abcdef"], [{}] * 2, failures)
    np.testing.assert_array_equal(scores, [2, 0, 1, 0])
    np.testing.assert_array_equal(again, [0, 3])
    assert failures.counts["flaky"] == 3
    logged = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(logged) == 1  # the first failure only; the others are counted
    assert "reward 'flaky' failed on row 1" in logged[0].getMessage()
    assert "ZeroDivisionError: flaky reward cannot read 'boom'" in logged[0].getMessage()  # the traceback
    assert failures.take(["flaky", "format_strict"]) == {"reward_errors/flaky": 3, "reward_errors/format_strict": 0}
    assert failures.take(["flaky"]) == {"reward_errors/flaky": 0}  # taking resets the counts


def test_non_finite_and_misshapen_scores_are_failures(monkeypatch):
    monkeypatch.setitem(R.REWARDS, "nan_on_x", lambda c, e: np.array([np.nan if "x" in t else 1.0 for t in c]))
    monkeypatch.setitem(R.REWARDS, "one_score", lambda c, e: np.ones(1, np.float32))  # wrong for batches > 1
    failures = R.RewardFailures()
    np.testing.assert_array_equal(R.guarded_scores("nan_on_x", ["a", "x", "b"], [{}] * 3, failures), [1, 0, 1])
    np.testing.assert_array_equal(R.guarded_scores("one_score", ["a", "b"], [{}] * 2, failures), [1, 1])
    assert failures.counts == {"nan_on_x": 1}


def test_unguarded_combination_raises_and_guarded_goes_on(flaky):
    weights = {"flaky": 2.0, "tag_count": 1.0}
    with pytest.raises(ZeroDivisionError, match="cannot read 'boom'"):
        R.combine_rewards(["abcd", "boom"], [{}] * 2, weights)
    with pytest.raises(ValueError, match="returned non-finite values"):
        R.combine_rewards(["a"], [{}], {"brevity": 1.0}, num_tokens=[np.inf])
    failures = R.RewardFailures()
    total, per = R.combine_rewards(["abcd", "boom"], [{}] * 2, weights, failures=failures)
    np.testing.assert_array_equal(per["flaky"], [2, 0])
    np.testing.assert_array_equal(total, [4, 0])
    assert failures.take(list(weights)) == {"reward_errors/flaky": 1, "reward_errors/tag_count": 0}


def test_configuration_errors_still_stop_the_run():
    failures = R.RewardFailures()
    with pytest.raises(R.RewardConfigError, match="prm_steps needs its PRM directory"):
        R.combine_rewards(["a"], [{}], {"prm_steps": 1.0}, failures=failures)
    with pytest.raises(R.RewardConfigError, match="has no parameter"):
        R.combine_rewards(["a"], [{}], {"brevity": 1.0}, params={"brevity": {"per_tok": 1}}, failures=failures)
    with pytest.raises(R.RewardConfigError, match="target_tokens must be >= 1"):
        R.combine_rewards(["a"], [{}], {"length_bonus": 1.0}, params={"length_bonus": {"target_tokens": 0}},
                          failures=failures)
    with pytest.raises(ValueError, match="one count per completion"):
        R.combine_rewards(["a", "b"], [{}] * 2, {"brevity": 1.0}, num_tokens=[3], failures=failures)
    assert not failures.counts


@pytest.mark.slow  # imports the PRM stack (jax, transformers)
def test_a_prm_that_cannot_load_stops_the_run():
    failures = R.RewardFailures()
    with pytest.raises(R.RewardConfigError, match="cannot use the PRM '/nonexistent/prm'"):
        R.combine_rewards(["a"], [{}], {"prm_steps": 1.0}, params={"prm_steps": {"model": "/nonexistent/prm"}},
                          failures=failures)
    assert not failures.counts


@pytest.mark.slow
def test_grpo_logs_reward_errors_and_keeps_training(tmp_path, monkeypatch, caplog):
    """A reward raising on completions of odd length: the run finishes, metrics.jsonl counts exactly the rows
    it raised on, per function, and the first traceback is logged once."""
    from test_grpo_loop import tiny

    from jaxmath.train.trainer import train as train_grpo

    raised = []

    def odd_length_fails(completions, examples):
        if len(completions) == 1 and len(completions[0]) % 2:  # a row scored alone: record the failure
            raised.append(completions[0])
        if any(len(t) % 2 for t in completions):
            raise RuntimeError("odd length")
        return np.ones(len(completions), np.float32)

    monkeypatch.setitem(R.REWARDS, "odd_length_fails", odd_length_fails)
    config = tiny(train={"steps": 2}, grpo={"rewards": {"correctness": 1.0, "length_bonus": 0.1,
                                                                "odd_length_fails": 0.5}})
    with caplog.at_level(logging.ERROR, logger="jaxmath.rewards"):
        summary = train_grpo(config, tmp_path, progress=False)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if "reward_mean" in r]
    assert [r["step"] for r in rows] == [1, 2] and summary["steps"] == 2
    assert sum(r["reward_errors/odd_length_fails"] for r in rows) == len(raised) > 0
    assert all(r["reward_errors/correctness"] == 0 for r in rows)
    logged = [r for r in caplog.records if "odd_length_fails" in r.getMessage()]
    assert len(logged) == 1 and "RuntimeError: odd length" in logged[0].getMessage()
