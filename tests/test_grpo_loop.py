"""The GRPO loop: rollout arithmetic (overlong rules, useful groups, batch layout) against hand-computed
values, sampler log-probs against a full forward pass, and the loop itself (metrics, exact resume)."""
from __future__ import annotations

import copy
import json

import jax
import numpy as np
import pytest
from flax import nnx

from jaxmath.config import ConfigError, from_dict
from jaxmath.inference.config import Sampling
from jaxmath.train.config import GRPOSection, TrainConfig
from jaxmath.train.rollout import (group_rows, overlong_rewards, pick_groups, reward_statistics, take_rows,
                                   train_batch, useful_groups)

# ---------------------------------------------------------------- pure rollout arithmetic


def test_overlong_rules():
    rewards = np.array([1.0, 1.0, 0.5, 1.0], np.float32)
    lengths = np.array([10, 16, 14, 20])
    truncated = np.array([False, False, False, True])
    same, weight = overlong_rewards(rewards, lengths, truncated, 20, "none")
    np.testing.assert_array_equal(same, rewards)
    np.testing.assert_array_equal(weight, 1.0)
    zeroed, _ = overlong_rewards(rewards, lengths, truncated, 20, "zero")
    np.testing.assert_array_equal(zeroed, [1.0, 1.0, 0.5, 0.0])
    # DAPO soft penalty with a 8-token buffer before the 20-token limit: starts past length 12.
    soft, weight = overlong_rewards(rewards, lengths, truncated, 20, "penalty", buffer=8, penalty=1.0)
    np.testing.assert_allclose(soft, [1.0, 1.0 - 4 / 8, 0.5 - 2 / 8, 1.0 - 1.0])
    np.testing.assert_array_equal(weight, 1.0)
    masked, weight = overlong_rewards(rewards, lengths, truncated, 20, "mask")
    np.testing.assert_array_equal(masked, rewards)
    np.testing.assert_array_equal(weight, [1.0, 1.0, 1.0, 0.0])
    with pytest.raises(ValueError, match="overlong rule 'drop'"):
        overlong_rewards(rewards, lengths, truncated, 20, "drop")


def test_useful_groups_and_picking():
    rewards = np.array([1, 0, 1, 0, 0, 0, 0.5, 0.5, 0.5, 1, 0, 1], np.float32)
    useful = useful_groups(rewards, 3)
    np.testing.assert_array_equal(useful, [True, False, False, True])
    np.testing.assert_array_equal(pick_groups(useful, 2), [0, 3])
    np.testing.assert_array_equal(pick_groups(useful, 3), [0, 1, 3])  # topped up with the first flat group
    np.testing.assert_array_equal(group_rows(np.array([0, 3]), 3), [0, 1, 2, 9, 10, 11])
    with pytest.raises(ValueError, match="only 4 groups"):
        pick_groups(useful, 5)


def test_train_batch_layout():
    prompt_ids = np.array([[0, 5, 6], [7, 8, 9]])
    prompt_mask = np.array([[0, 1, 1], [1, 1, 1]])
    completion = np.array([[11, 12, 2, 0], [13, 0, 0, 0]])
    logprobs = np.array([[-0.1, -0.2, -0.3, 0.0], [-0.4, 0.0, 0.0, 0.0]], np.float32)
    batch = train_batch(prompt_ids, prompt_mask, completion, np.array([3, 1]), logprobs, np.array([0.5, -0.5]),
                        np.array([1.0, 0.0]))
    np.testing.assert_array_equal(batch["input_ids"], [[0, 5, 6, 11, 12, 2, 0], [7, 8, 9, 13, 0, 0, 0]])
    np.testing.assert_array_equal(batch["attention_mask"], [[0, 1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 0, 0, 0]])
    np.testing.assert_array_equal(batch["completion_mask"], [[0, 0, 0, 1, 1, 1, 0], [0, 0, 0, 0, 0, 0, 0]])
    np.testing.assert_allclose(batch["old_logprobs"][0], [0, 0, 0, -0.1, -0.2, -0.3, 0])
    np.testing.assert_allclose(batch["old_logprobs"][1], [0, 0, 0, -0.4, 0, 0, 0])
    np.testing.assert_array_equal(take_rows(batch, np.array([1]))["advantages"], [-0.5])


def test_reward_statistics():
    stats = reward_statistics(np.array([1.0, 0.0]), {"correctness": np.array([1.0, 0.0])})
    assert stats == {"reward_mean": 0.5, "reward_std": 0.5, "reward/correctness_mean": 0.5,
                     "reward/correctness_std": 0.5}


# ---------------------------------------------------------------- config


TINY: dict = {
    "objective": "grpo",
    "model": {"init": {"model_type": "qwen2", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                       "num_attention_heads": 2, "num_key_value_heads": 1, "max_position_embeddings": 256,
                       "tie_word_embeddings": True}},
    "mesh": {"data": -1, "fsdp": 1, "tensor": 1},
    "optimizer": {"lr": 1e-3, "schedule": "constant", "clip_norm": 1.0},
    "data": {"synthetic": {"arithmetic__add_small": 64}, "eval_fraction": 0.1, "format": "boxed",
             "tokenizer": "train", "tokenizer_vocab_size": 300},
    "grpo": {"group_size": 4, "prompts_per_step": 4, "max_prompt_len": 80,
             "sampling": {"max_new_tokens": 12},
             "rewards": {"correctness": 1.0, "length_bonus": 0.1}, "reward_params": {"length_bonus": {"target_tokens": 12}},
             "loss": {"beta": 0.04, "epsilon_high": 0.28}, "mu": 2, "minibatches": 2,
             "ref_refresh_every": 2},
    "train": {"steps": 3, "log_every": 1, "save_every": 1, "keep_checkpoints": 5, "export_hf": False},
}


def tiny(**sections) -> TrainConfig:
    raw = copy.deepcopy(TINY)
    for name, values in sections.items():
        raw.setdefault(name, {}).update(values)
    return from_dict(TrainConfig, raw)


def test_config_errors_name_the_key():
    with pytest.raises(ConfigError, match="grpo.group_size must be >= 2"):
        tiny(grpo={"group_size": 1})
    with pytest.raises(ConfigError, match="do not split into grpo.minibatches=3"):
        tiny(grpo={"minibatches": 3})
    with pytest.raises(ConfigError, match="grpo.overlong_buffer"):
        tiny(grpo={"overlong": "penalty"})
    with pytest.raises(ConfigError, match="unknown config key.*grpo.loss.bta"):
        tiny(grpo={"loss": {"bta": 0.1}})
    with pytest.raises(ConfigError, match="needs a grpo section"):
        raw = copy.deepcopy(TINY)
        del raw["grpo"]
        from_dict(TrainConfig, raw)


def test_rollout_sampling_is_one_nested_section_and_old_flat_keys_show_the_new_spelling():
    section = from_dict(GRPOSection, {"sampling": {"temperature": 0.7, "min_p": 0.05}})
    # keys left out keep the section's defaults (256 new tokens), not the Sampling class's (1024)
    assert section.sampling == Sampling(max_new_tokens=256, temperature=0.7, min_p=0.05)
    assert tiny().grpo.sampling == Sampling(max_new_tokens=12, temperature=1.0)
    with pytest.raises(ConfigError, match=r"grpo.temperature is now grpo.sampling.temperature "
                                          r"\(write `sampling: \{temperature: 0.9\}`\)"):
        tiny(grpo={"temperature": 0.9})
    with pytest.raises(ConfigError, match=r"grpo.stop_strings is now grpo.sampling.stop_strings .*"
                                          r"grpo.top_p is now grpo.sampling.top_p"):
        tiny(grpo={"top_p": 0.9, "stop_strings": ["\n\n"]})
    with pytest.raises(ConfigError, match="grpo.sampling.temperature must be > 0"):
        tiny(grpo={"sampling": {"temperature": 0.0}})
    with pytest.raises(ConfigError, match="sampling.min_p must be in"):
        tiny(grpo={"sampling": {"min_p": 2.0}})


# ---------------------------------------------------------------- the loop


@pytest.mark.slow
def test_sampler_logprobs_equal_the_loss_forward(tmp_path):
    """Old log-probs taken from the sampler equal a forward pass over the assembled batch (the layout the
    loss reads), so 'sampler' needs no extra pass."""
    from jaxmath.data.formats import get_format
    from jaxmath.data.pipelines import PipelineOptions, rl_prompt_pipeline
    from jaxmath.models.transformer import build_model
    from jaxmath.train.rl import rollout_weights, sample
    from jaxmath.train.step import to_global
    from jaxmath.train.trainer import build_rl_run

    rl = build_rl_run(tiny(mesh={"data": 2, "fsdp": 2, "tensor": 2}), tmp_path)
    params = jax.jit(lambda: nnx.to_pure_dict(nnx.state(build_model(rl.run.model_config, 3))),
                     out_shardings=rl.run.shardings.params)()

    prompts = next(iter(rl_prompt_pipeline(rl.run.train_records, rl.run.tokenizer, get_format("boxed"),
                                           max_prompt_len=80, prompts_per_batch=4, group_size=4,
                                           options=PipelineOptions(seed=0, num_epochs=None))))
    rollout = sample(rl, rollout_weights(rl, params), prompts, seed=7)
    assert rollout["lengths"].min() >= 1 and rollout["tokens"].shape == (16, 12)
    batch = train_batch(prompts["input_ids"], prompts["attention_mask"], rollout["tokens"], rollout["lengths"],
                        rollout["logprobs"], np.zeros(16), np.ones(16))
    chunk = to_global({k: v[:8] for k, v in batch.items()},
                      {k: rl.run.batch_sharding[k] for k in ("input_ids", "attention_mask")})
    forward = np.asarray(rl.logprob_fn(params, chunk))
    mask = batch["completion_mask"][:8] > 0
    np.testing.assert_allclose(forward[mask], batch["old_logprobs"][:8][mask], atol=1e-4)


def _rows(path):
    return [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_loop_logs_metrics_and_resumes_exactly(tmp_path):
    from jaxmath.train.trainer import train as train_grpo

    straight = train_grpo(tiny(), tmp_path / "straight", progress=False)
    rows = _rows(tmp_path / "straight")
    assert [r["step"] for r in rows] == [1, 2, 3]
    for key in ("reward_mean", "reward_std", "reward/correctness_mean", "reward/length_bonus_std", "accuracy",
                "kl_mean", "clip_fraction", "entropy_mean", "completion_length_mean", "completion_length_max",
                "zero_variance_groups", "rollout_tokens_per_second", "update_tokens_per_second", "rollout_seconds",
                "reward_seconds", "update_seconds", "loss", "grad_norm", "learning_rate", "compile_seconds",
                "compile_cache_hits", "iteration_seconds"):
        assert key in rows[-1], key
    assert rows[0]["compile_seconds"] > 0  # the first iteration compiles (or reads from the cache) its programs
    assert np.isfinite(rows[-1]["loss"]) and rows[-1]["completion_length_max"] <= 12
    assert straight["reward_mean"] == rows[-1]["reward_mean"]

    # Crash after iteration 2 (checkpoint 3 never written), then resume: iteration 3 must match exactly,
    # including the reference refreshed at iteration 2 and the prompt stream.
    train_grpo(tiny(train={"steps": 2}), tmp_path / "resumed", progress=False)
    train_grpo(tiny(), tmp_path / "resumed", resume=True, progress=False)
    resumed = _rows(tmp_path / "resumed")
    assert resumed[-1]["step"] == 3
    for key in ("reward_mean", "loss", "kl_mean", "grad_norm", "completion_length_mean"):
        assert resumed[-1][key] == pytest.approx(rows[-1][key], rel=1e-5, abs=1e-7), key


@pytest.mark.slow
def test_dynamic_sampling_refills_slots_continuously_and_keeps_useful_groups(tmp_path, monkeypatch):
    """With dynamic sampling in one process, groups are scored as they finish and their slots take prompts of
    the next batch until prompts_per_step groups have unequal rewards: the kept groups are those, their rows
    line up with their prompts (the loss's forward gives the sampler's log-probs), and the statistics count
    every finished group. Rewards here are a function of the first sampled token, so groups go both ways."""
    from jaxmath.data.formats import get_format
    from jaxmath.data.pipelines import PipelineOptions, rl_prompt_pipeline
    from jaxmath.models.transformer import build_model
    from jaxmath.train import rl as rl_module
    from jaxmath.train.step import to_global
    from jaxmath.train.trainer import build_rl_run

    def first_token_reward(rl, rollout, records):
        rewards = (rollout["tokens"][:, 0] % 3 == 0).astype(np.float32)
        return {"rewards": rewards, "per_function": {"first_token": rewards}, "loss_weight": np.ones_like(rewards)}

    monkeypatch.setattr(rl_module, "score", first_token_reward)
    runs = []  # one continuous run of the sampler, not one sampler call per prompt batch
    decode = rl_module.generate_continuous
    monkeypatch.setattr(rl_module, "generate_continuous", lambda *a, **k: runs.append(1) or decode(*a, **k))
    monkeypatch.setattr(rl_module, "sample", None)
    rl = build_rl_run(tiny(grpo={"dynamic_sampling": True, "max_sampling_rounds": 3}), tmp_path)
    params = jax.jit(lambda: nnx.to_pure_dict(nnx.state(build_model(rl.run.model_config, 3))),
                     out_shardings=rl.run.shardings.params)()
    prompts = iter(rl_prompt_pipeline(rl.run.train_records, rl.run.tokenizer, get_format("boxed"),
                                      max_prompt_len=80, prompts_per_batch=4, group_size=4,
                                      options=PipelineOptions(seed=0, num_epochs=None)))
    chosen, stats = rl_module.collect(rl, params, prompts, iteration=0)
    assert runs == [1] and chosen["tokens"].shape == (16, 12) and 1 <= stats["sampling_rounds"] <= 3
    np.testing.assert_array_equal(chosen["rewards"], (chosen["tokens"][:, 0] % 3 == 0).astype(np.float32))
    kept_useful = useful_groups(chosen["rewards"], 4)
    assert kept_useful.all() or stats["sampling_rounds"] == 3  # enough useful groups, or every batch was drawn
    assert 0.0 <= stats["zero_variance_groups"] < 1.0
    batch = train_batch(chosen["input_ids"], chosen["attention_mask"], chosen["tokens"], chosen["lengths"],
                        chosen["logprobs"], np.zeros(16), np.ones(16))
    forward = np.asarray(rl.logprob_fn(params, to_global(batch, {k: rl.run.batch_sharding[k]
                                                                  for k in ("input_ids", "attention_mask")})))
    mask = batch["completion_mask"] > 0
    np.testing.assert_allclose(forward[mask], batch["old_logprobs"][mask], atol=1e-4)
    questions = [r.question for r in chosen["records"]]
    assert all(len(set(questions[i:i + 4])) == 1 for i in range(0, 16, 4))  # a group's rows share its prompt
