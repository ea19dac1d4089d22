"""GRPO rollout arithmetic on host arrays: overlong handling, useful groups, and the train-batch layout.

Pure numpy functions (no model, no I/O) so each rule is tested on its own; `jaxmath.train.rl` drives them.
Rows are completions laid out group after group (G adjacent rows share a prompt).
"""
from __future__ import annotations

from typing import Mapping

import numpy as np


def overlong_rewards(rewards: np.ndarray, lengths: np.ndarray, truncated: np.ndarray, max_new_tokens: int,
                     rule: str, buffer: int = 0, penalty: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """(rewards, loss weight per row) after the overlong rule.

    none: unchanged. zero: a truncated completion's reward is 0. penalty (DAPO's soft overlong punishment):
    a length L within the last `buffer` tokens loses penalty * (L - (max - buffer)) / buffer, so a
    completion cut off at the limit loses `penalty`. mask: truncated rows keep their reward for the
    group statistics but are left out of the loss (weight 0).
    """
    rewards = np.asarray(rewards, np.float32).copy()
    truncated = np.asarray(truncated, bool)
    weight = np.ones_like(rewards)
    if rule == "zero":
        rewards[truncated] = 0.0
    elif rule == "penalty":
        over = np.clip(np.asarray(lengths, np.float32) - (max_new_tokens - buffer), 0.0, float(buffer))
        rewards -= np.float32(penalty) * over / np.float32(buffer)
    elif rule == "mask":
        weight[truncated] = 0.0
    elif rule != "none":
        raise ValueError(f"unknown overlong rule {rule!r}; choose none, zero, penalty or mask")
    return rewards, weight


def useful_groups(rewards: np.ndarray, group_size: int) -> np.ndarray:
    """bool [num_groups]: groups whose rewards are not all equal (only they carry a learning signal)."""
    grouped = np.asarray(rewards, np.float32).reshape(-1, group_size)
    return grouped.max(axis=1) - grouped.min(axis=1) > 1e-6


def pick_groups(useful: np.ndarray, count: int) -> np.ndarray:
    """Indices (ascending) of `count` groups: useful ones first in sampling order, then zero-variance ones
    to fill a fixed-size batch when too few useful groups were found."""
    useful = np.asarray(useful, bool)
    if useful.size < count:
        raise ValueError(f"only {useful.size} groups were sampled but {count} are needed")
    order = np.concatenate([np.flatnonzero(useful), np.flatnonzero(~useful)])
    return np.sort(order[:count])


def group_rows(groups: np.ndarray, group_size: int) -> np.ndarray:
    """Row indices of the given group indices, each group's rows adjacent."""
    return (np.asarray(groups)[:, None] * group_size + np.arange(group_size)[None, :]).reshape(-1)


def train_batch(prompt_ids: np.ndarray, prompt_mask: np.ndarray, completion_ids: np.ndarray,
                lengths: np.ndarray, logprobs: np.ndarray, advantages: np.ndarray,
                loss_weight: np.ndarray) -> dict[str, np.ndarray]:
    """The GRPO loss's batch (see jaxmath.objectives.grpo): prompt then completion, token-aligned masks.

    prompt_ids/prompt_mask [B, P] left-padded; completion_ids [B, N] with `lengths` [B] real tokens (the
    stopping token included); logprobs [B, N] the sampling policy's log-prob of each generated token.
    """
    batch, new = completion_ids.shape
    real = (np.arange(new)[None, :] < np.asarray(lengths)[:, None]).astype(np.int32)
    scored = real * (np.asarray(loss_weight)[:, None] > 0)
    zeros = np.zeros_like(prompt_mask, dtype=np.int32)
    return {
        "input_ids": np.concatenate([prompt_ids, completion_ids], axis=1).astype(np.int32),
        "attention_mask": np.concatenate([prompt_mask, real], axis=1).astype(np.int32),
        "completion_mask": np.concatenate([zeros, scored], axis=1).astype(np.int32),
        "old_logprobs": np.concatenate([zeros.astype(np.float32), np.where(real, logprobs, 0.0)],
                                       axis=1).astype(np.float32),
        "advantages": np.asarray(advantages, np.float32).reshape(batch),
    }


def take_rows(batch: Mapping[str, np.ndarray], rows: np.ndarray) -> dict[str, np.ndarray]:
    """The same batch restricted to (and ordered by) `rows`."""
    return {key: np.asarray(value)[rows] for key, value in batch.items()}


def reward_statistics(total: np.ndarray, per_function: Mapping[str, np.ndarray]) -> dict[str, float]:
    """Mean and std of the combined reward and of each reward function (logged every iteration)."""
    stats = {"reward_mean": float(np.mean(total)), "reward_std": float(np.std(total))}
    for name, scores in per_function.items():
        stats[f"reward/{name}_mean"] = float(np.mean(scores))
        stats[f"reward/{name}_std"] = float(np.std(scores))
    return stats


def sample_columns(groups: Mapping[str, np.ndarray]) -> dict[str, list]:
    """An iteration's completions as table columns (prompt, completion, gold answer, reward, each reward
    function's value, length, truncation), rows in rollout order, for the W&B samples table."""
    records = groups["records"]
    columns: dict[str, list] = {"prompt": [r.question for r in records], "completion": list(groups["texts"]),
                                "answer": [r.answer for r in records],
                                "reward": np.asarray(groups["rewards"], float).tolist()}
    for name, values in groups["per_function"].items():
        columns[f"reward_{name}"] = np.asarray(values, float).tolist()
    columns["length"] = np.asarray(groups["lengths"]).tolist()
    columns["truncated"] = np.asarray(groups["truncated"]).tolist()
    return columns
