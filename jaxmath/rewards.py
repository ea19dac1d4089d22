"""The reward registry GRPO configs name rewards from: the verifier's rewards (`jaxmath.verify.rewards`) and the
process reward model's step bonus (`jaxmath.prm.reward`), each declared in its own package and registered here.

`combine_rewards` weights and sums the named rewards from a config mapping, each also logged on its own. A
reward that raises on a row, or scores it non-finite, costs only that row when the caller passes
`RewardFailures` (the GRPO loop): the row scores 0 for it and is counted; a configuration error
(`RewardConfigError`: an unknown reward or parameter, `prm_steps` without its model) always raises.
"""
from __future__ import annotations

import functools
import inspect
import logging
import math
import traceback
from collections import Counter
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from jaxmath.prm.reward import PRM_REWARDS
from jaxmath.verify.rewards import VERIFIER_REWARDS, RewardConfigError, RewardFn

__all__ = ["REWARDS", "RewardConfigError", "RewardFailures", "RewardFn", "combine_rewards", "get_reward",
           "guarded_scores", "register"]

REWARDS: dict[str, RewardFn] = {}
log = logging.getLogger(__name__)




def register(name: str) -> Callable[[RewardFn], RewardFn]:
    """Add a reward function to the registry under `name` (used by configs and `combine_rewards`)."""
    def add(fn: RewardFn) -> RewardFn:
        if name in REWARDS:
            raise ValueError(f"reward {name!r} is already registered")
        REWARDS[name] = fn
        return fn
    return add


def get_reward(name: str, **params: Any) -> RewardFn:
    """The registered reward `name` with its keyword parameters bound; errors name what is unknown."""
    if name not in REWARDS:
        raise RewardConfigError(f"unknown reward {name!r}; known rewards: {sorted(REWARDS)}")
    fn = REWARDS[name]
    accepted = set(inspect.signature(fn).parameters) - {"completions", "examples", "num_tokens"}
    unknown = sorted(set(params) - accepted)
    if unknown:
        raise RewardConfigError(f"reward {name!r} has no parameter(s) {unknown}; it accepts {sorted(accepted)}")
    return functools.partial(fn, **params) if params else fn


class RewardFailures:
    """Rows whose reward function raised (or gave a non-finite score), counted per function; the first
    traceback of each function is logged once, later failures only counted."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self._logged: set[str] = set()

    def record(self, name: str, row: int, error: BaseException) -> None:
        """Count one failed row of reward `name`; log its traceback if it is the function's first."""
        self.counts[name] += 1
        if name not in self._logged:
            self._logged.add(name)
            detail = "".join(traceback.format_exception(error)).rstrip()
            log.error("reward %r failed on row %d; the row scores 0 for it (later failures are only counted "
                      "in reward_errors/%s):\n%s", name, row, name, detail)

    def take(self, names: Sequence[str]) -> dict[str, int]:
        """`reward_errors/<name>` for each name (0 when none) since the last call, then reset the counts."""
        counts = {f"reward_errors/{name}": self.counts[name] for name in names}
        self.counts.clear()
        return counts


def _call(name: str, completions: Sequence[str], examples: Sequence[Mapping], params: Mapping[str, Any],
          num_tokens: Sequence[int] | np.ndarray | None) -> np.ndarray:
    """Reward `name`'s float32 scores, one per completion (any finite or not); errors propagate."""
    fn = get_reward(name, **params)
    takes_tokens = "num_tokens" in inspect.signature(REWARDS[name]).parameters
    scores = fn(completions, examples, num_tokens=num_tokens) if takes_tokens else fn(completions, examples)
    scores = np.asarray(scores, dtype=np.float32)
    if scores.shape != (len(completions),):
        raise ValueError(f"reward {name!r} returned shape {scores.shape} for {len(completions)} completions")
    return scores


def guarded_scores(name: str, completions: Sequence[str], examples: Sequence[Mapping], failures: RewardFailures,
                   params: Mapping[str, Any] | None = None,
                   num_tokens: Sequence[int] | np.ndarray | None = None) -> np.ndarray:
    """Reward `name`'s scores where a failure costs one row, not the batch: when the batch call raises, each
    row is scored alone; a row that raises or scores non-finite scores 0 and is recorded in `failures`.
    A RewardConfigError (wrong name or parameters) still raises: no row can be scored."""
    params = dict(params or {})
    try:
        scores = _call(name, completions, examples, params, num_tokens)
    except RewardConfigError:
        raise
    except Exception:  # any failure of a reward function on any text: find the rows that cause it
        tokens = None if num_tokens is None else np.asarray(num_tokens).reshape(-1)
        scores = np.zeros(len(completions), dtype=np.float32)
        for i in range(len(completions)):
            try:
                scores[i] = _call(name, completions[i:i + 1], examples[i:i + 1], params,
                                  None if tokens is None else tokens[i:i + 1])[0]
            except RewardConfigError:
                raise
            except Exception as err:  # the same, for this row alone
                failures.record(name, i, err)
    for i in np.flatnonzero(~np.isfinite(scores)):
        failures.record(name, int(i), FloatingPointError(f"reward {name!r} scored row {i} {scores[i]}"))
        scores[i] = 0.0
    return scores


def combine_rewards(completions: Sequence[str], examples: Sequence[Mapping], weights: Mapping[str, float], *,
                    params: Mapping[str, Mapping[str, Any]] | None = None,
                    num_tokens: Sequence[int] | np.ndarray | None = None,
                    failures: RewardFailures | None = None,
                    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Weighted sum of the named rewards, and each reward's own (unweighted) scores for logging.

    `weights` maps reward names to weights (a config's `rewards:` section); `params` optionally maps a
    name to keyword parameters (e.g. {"brevity": {"per_token": -0.0005}}); `num_tokens` goes to the
    length rewards. Without `failures` any reward error raises; with it (the GRPO loop) a row on which a
    reward fails scores 0 for that reward and is counted there (see `guarded_scores`).
    """
    if len(completions) != len(examples):
        raise ValueError(f"{len(completions)} completions but {len(examples)} examples")
    if num_tokens is not None and np.shape(num_tokens) != (len(completions),):
        raise ValueError(f"num_tokens needs one count per completion ({len(completions)}), "
                         f"got shape {np.shape(num_tokens)}")
    params = dict(params or {})
    stray = sorted(set(params) - set(weights))
    if stray:
        raise RewardConfigError(f"reward params given for {stray}, which have no weight")
    total = np.zeros(len(completions), dtype=np.float32)
    per_function: dict[str, np.ndarray] = {}
    for name, weight in weights.items():
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight):
            raise RewardConfigError(f"reward weight for {name!r} must be a finite number, got {weight!r}")
        if failures is not None:
            scores = guarded_scores(name, completions, examples, failures, params.get(name), num_tokens)
        else:
            scores = _call(name, completions, examples, params.get(name, {}), num_tokens)
            if not np.all(np.isfinite(scores)):
                raise ValueError(f"reward {name!r} returned non-finite values for {len(completions)} completions")
        per_function[name] = scores
        total += np.float32(weight) * scores
    return total, per_function


for _provider in (VERIFIER_REWARDS, PRM_REWARDS):
    for _name, _fn in _provider.items():
        register(_name)(_fn)
