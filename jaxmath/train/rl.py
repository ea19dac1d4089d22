"""GRPO's iteration (DeepSeekMath): prompts -> G completions each from the current policy -> verifier rewards
-> group advantages -> `mu` passes of clipped-objective updates over minibatches, with KL to a reference.
`jaxmath.train.tasks.GRPOTask` runs these pieces as the hooks of the one training loop (jaxmath.train.trainer).

One iteration (`train.steps` counts them) samples from the decode copy of the current parameters (made once per
iteration; each prompt prefilled once for its group), scores the
completions with `jaxmath.verify` reward functions (answer checks run in the verifier's worker processes),
applies the overlong rule, optionally drops groups whose rewards are all equal and refills them from new
prompts (DAPO dynamic sampling), and runs the one train step of `jaxmath.train.step` on the rollout batch.
Runs write the same files as SFT (config.yaml, metrics.jsonl, tensorboard/, checkpoints/, final_model/,
hf/) and resume exactly: the prompt iterator, the train state and (when refreshed) the reference policy
are checkpointed, and every sampling seed is a function of the iteration.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils
from jax.sharding import PartitionSpec

from jaxmath.inference.config import offset_seed
from jaxmath.inference.loading import stop_token_ids
from jaxmath.inference.sampler import GenerationOutput, generate, generate_continuous, truncate_at_stop
from jaxmath.inference.weights import DecodeWeights, prepare_weights
from jaxmath.objectives import compute_advantages, metric_means
from jaxmath.objectives.grpo import policy_log_probs
from jaxmath.parallel import BATCH_AXES, all_process_rows
from jaxmath.rewards import RewardFailures, combine_rewards
from jaxmath.train.config import GRPOSection
from jaxmath.train.rollout import (group_rows, overlong_rewards, pick_groups, reward_statistics, take_rows,
                                   train_batch, useful_groups)
from jaxmath.train.run import Run
from jaxmath.train.step import to_global


@dataclasses.dataclass
class RLRun:
    """The GRPO run: the shared `Run` pieces plus the rollout-side functions."""

    run: Run
    logprob_fn: Callable[[Any, dict[str, jax.Array]], jax.Array]
    copy_params: Callable[[Any], Any]  # params -> a reference copy in the compute dtype
    eos_ids: list[int]
    reward_failures: RewardFailures = dataclasses.field(default_factory=RewardFailures)  # rows a reward failed on

    @property
    def grpo(self) -> GRPOSection:
        return self.run.config.grpo

    @property
    def updates_per_iteration(self) -> int:
        return self.grpo.mu * self.grpo.minibatches

    @property
    def minibatch_rows(self) -> int:
        """Global rows of one update (all processes)."""
        return self.grpo.rows // self.grpo.minibatches


def rl_run(run: Run) -> RLRun:
    """The rollout side of a built GRPO run (`jaxmath.train.trainer.build_run`): the log-prob pass (reference and
    recomputed old log-probs), the reference copy and the stop ids."""
    grpo = run.config.grpo
    shards = run.mesh.shape["data"] * run.mesh.shape["fsdp"]
    minibatch = grpo.rows // grpo.minibatches
    if grpo.rows % jax.process_count() or minibatch % shards:
        raise ValueError(f"a GRPO minibatch of {minibatch} rows does not split over {jax.process_count()} "
                         f"processes and the mesh's data*fsdp={shards} batch shards")
    graphdef, p_shard = run.graphdef, run.shardings.params
    token_sharding = {k: run.batch_sharding[k] for k in ("input_ids", "attention_mask")}

    def logprobs(params: Any, batch: dict[str, jax.Array]) -> jax.Array:
        return policy_log_probs(nnx.merge(graphdef, params), batch)[0]  # exactly what the loss computes

    logprob_fn = jax.jit(logprobs, in_shardings=(p_shard, token_sharding),
                         out_shardings=token_sharding["input_ids"])
    compute = jnp.dtype(run.model_config.compute_dtype)

    def as_reference(params: Any) -> Any:
        """A frozen copy in the compute dtype (the forward pass casts the weights to it anyway)."""
        return jax.tree.map(lambda x: x.astype(compute) if jnp.issubdtype(x.dtype, jnp.floating) else x, params)

    copy_params = jax.jit(as_reference, out_shardings=p_shard)
    eos = stop_token_ids(run.tokenizer, run.out / "tokenizer") if run.tokenizer is not None else []
    return RLRun(run, logprob_fn, copy_params, eos)


# ---------------------------------------------------------------- rollouts


def _local(x: jax.Array) -> np.ndarray:
    """This process's rows of a batch-sharded global array."""
    if jax.process_count() == 1:
        return np.asarray(x)
    mesh = x.sharding.mesh
    return np.asarray(multihost_utils.global_array_to_host_local_array(x, mesh, PartitionSpec(BATCH_AXES)))


def _rows(values: list[Any]) -> np.ndarray:
    """A list of per-row Python objects (records, texts) as a 1-D object array, so rows index like arrays."""
    out = np.empty(len(values), dtype=object)
    out[:] = values
    return out


def rollout_weights(rl: RLRun, params: Any) -> DecodeWeights:
    """The sampler's copy of the current params (compute dtype, per layer), made once per iteration."""
    with jax.set_mesh(rl.run.mesh):
        return prepare_weights(nnx.merge(rl.run.graphdef, params))


def sample(rl: RLRun, weights: DecodeWeights, prompts: dict[str, Any], seed: int) -> dict[str, Any]:
    """G completions per prompt: tokens, log-probs, lengths, texts, truncation. In one process each prompt is
    prefilled once for its G samples; over several, every process passes its rows (prompts repeated G
    times) as its share of one global batch."""
    s, tokenizer = rl.grpo.sampling, rl.run.tokenizer
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    group = rl.grpo.group_size if jax.process_count() == 1 else 1
    if group > 1:
        tokens = {k: prompts[k][::group] for k in ("input_ids", "attention_mask")}
    else:  # each process's rows are its share of the global batch; the streams are those of one process
        tokens = to_global(prompts, {k: rl.run.batch_sharding[k] for k in ("input_ids", "attention_mask")})
    with jax.set_mesh(rl.run.mesh):
        out = generate(weights, tokens["input_ids"], tokens["attention_mask"],
                       max_new_tokens=s.max_new_tokens, temperature=s.temperature, top_p=s.top_p, top_k=s.top_k,
                       min_p=s.min_p, eos_token_id=rl.eos_ids, pad_token_id=pad, seed=seed,
                       stop_strings=s.stop_strings or None, tokenizer=tokenizer, num_samples=group,
                       prompt_repeats=rl.grpo.group_size // group)
    local = GenerationOutput(*(_local(x) for x in (out.sequences, out.logprobs, out.sampling_logprobs,
                                                   out.lengths)))
    return completed_rows(rl, local.sequences[:, -s.max_new_tokens:], local.logprobs, local.lengths)


def completed_rows(rl: RLRun, tokens: np.ndarray, logprobs: np.ndarray, lengths: np.ndarray) -> dict[str, Any]:
    """A rollout's rows from sampled tokens [rows, max_new_tokens] (padded after `lengths`): tokens, log-probs,
    lengths, texts (cut at stop strings) and whether each ran out of room before stopping."""
    s, tokenizer = rl.grpo.sampling, rl.run.tokenizer
    full = tokenizer.batch_decode([row[:n].tolist() for row, n in zip(tokens, lengths)], skip_special_tokens=True)
    texts = [truncate_at_stop(text, s.stop_strings) for text in full]  # what completion_texts gives
    last = tokens[np.arange(len(lengths)), np.maximum(lengths - 1, 0)]
    stopped = np.isin(last, rl.eos_ids) | np.array([len(t) < len(f) for t, f in zip(texts, full)], bool)
    return {"tokens": tokens, "logprobs": logprobs, "lengths": lengths, "texts": _rows(texts),
            "truncated": (lengths >= s.max_new_tokens) & ~stopped}


def score(rl: RLRun, rollout: dict[str, Any], records: list[Any]) -> dict[str, Any]:
    """Rewards (weighted sum and per function) after the overlong rule, and each row's loss weight."""
    g = rl.grpo
    examples = [{"question": r.question, "answer": r.answer} for r in records]
    total, per_function = combine_rewards(rollout["texts"], examples, g.rewards, params=g.reward_params,
                                          num_tokens=rollout["lengths"], failures=rl.reward_failures)
    rewards, weight = overlong_rewards(total, rollout["lengths"], rollout["truncated"], g.sampling.max_new_tokens,
                                       g.overlong, g.overlong_buffer, g.overlong_penalty)
    return {"rewards": rewards, "per_function": per_function, "loss_weight": weight}


def _scored_part(rl: RLRun, prompts: dict[str, Any], rollout: dict[str, Any]) -> dict[str, Any]:
    """Rows of an iteration: their prompts (ids, mask, records), rollout, rewards and whether their group is
    useful (rewards not all equal)."""
    records = list(prompts["records"])
    part = {"input_ids": prompts["input_ids"], "attention_mask": prompts["attention_mask"],
            "records": _rows(records), **rollout, **score(rl, rollout, records)}
    part["useful"] = np.repeat(useful_groups(part["rewards"], rl.grpo.group_size), rl.grpo.group_size)
    return part


def _collect_continuously(rl: RLRun, weights: DecodeWeights, prompts: Any, iteration: int
                          ) -> tuple[list[dict[str, Any]], int, float]:
    """Dynamic sampling in one process, as continuous batching: prompts_per_step prompt slots decode at once;
    each group is scored as soon as its G completions stop, and its slot takes the next prompt (from the next
    prompt batch, up to max_sampling_rounds batches) until prompts_per_step groups have unequal rewards.
    Returns the finished groups' rows in finishing order, the batches drawn and the seconds spent scoring."""
    g, s, tokenizer = rl.grpo, rl.grpo.sampling, rl.run.tokenizer
    size, slots = g.group_size, g.prompts_per_step
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    batches: list[dict[str, Any]] = []
    groups: list[dict[str, Any]] = []
    scoring = 0.0

    def draw() -> list[list[int]]:
        if len(batches) >= g.max_sampling_rounds:
            return []
        batches.append(next(prompts))
        ids, mask = batches[-1]["input_ids"][::size], batches[-1]["attention_mask"][::size]
        return [row[m > 0].tolist() for row, m in zip(ids, mask)]

    def finished(request: int, completions: list[Any]) -> bool:
        nonlocal scoring
        start = time.perf_counter()
        batch, rows = batches[request // slots], slice(request % slots * size, (request % slots + 1) * size)
        tokens = np.full((size, s.max_new_tokens), pad, np.int32)
        logprobs = np.zeros((size, s.max_new_tokens), np.float32)
        for r, c in enumerate(completions):
            tokens[r, :len(c.tokens)], logprobs[r, :len(c.tokens)] = c.tokens, c.logprobs
        rollout = completed_rows(rl, tokens, logprobs, np.asarray([len(c.tokens) for c in completions]))
        groups.append(_scored_part(rl, {k: batch[k][rows] for k in ("input_ids", "attention_mask", "records")},
                                  rollout))
        scoring += time.perf_counter() - start
        return sum(bool(p["useful"][0]) for p in groups) >= slots

    with jax.set_mesh(rl.run.mesh):
        generate_continuous(weights, draw(), slots=slots, num_samples=size, max_new_tokens=s.max_new_tokens,
                            temperature=s.temperature, top_p=s.top_p, top_k=s.top_k, min_p=s.min_p,
                            eos_token_id=rl.eos_ids, pad_token_id=pad,
                            seed=offset_seed(g.sampling.seed + iteration * 101, rl.run.config.train.seed),
                            stop_strings=s.stop_strings or None, tokenizer=tokenizer, on_finish=finished, more=draw)
    return groups, len(batches), scoring


def collect(rl: RLRun, params: Any, prompts: Any, iteration: int) -> tuple[dict[str, Any], dict[str, float]]:
    """One iteration's groups: sample and score a prompt batch; with dynamic sampling, keep drawing prompt
    batches (up to max_sampling_rounds) until prompts_per_step groups have unequal rewards, then keep those
    first (in one process continuously, `_collect_continuously`; over several, batch by batch). Returns the
    rows of exactly prompts_per_step local groups, and rollout statistics."""
    g = rl.grpo
    local_groups = g.prompts_per_step // jax.process_count()
    start = time.perf_counter()
    weights = rollout_weights(rl, params)
    if g.dynamic_sampling and jax.process_count() == 1:
        parts, rounds, scoring = _collect_continuously(rl, weights, prompts, iteration)
        timings = {"rollout_seconds": time.perf_counter() - start - scoring, "reward_seconds": scoring}
        sampled_groups, zero_variance = len(parts), sum(not p["useful"][0] for p in parts)
    else:
        parts, rounds, sampled_groups, zero_variance = [], 0, 0, 0
        timings = {"rollout_seconds": time.perf_counter() - start, "reward_seconds": 0.0}
    batchwise = not parts  # no dynamic sampling, or dynamic sampling over several processes
    while batchwise and rounds < (g.max_sampling_rounds if g.dynamic_sampling else 1):
        batch = next(prompts)
        start = time.perf_counter()
        seed = offset_seed(g.sampling.seed + iteration * 101 + rounds, rl.run.config.train.seed)
        rollout = sample(rl, weights, batch, seed=seed)
        timings["rollout_seconds"] += time.perf_counter() - start
        start = time.perf_counter()
        part = _scored_part(rl, batch, rollout)
        timings["reward_seconds"] += time.perf_counter() - start
        parts.append(part)
        rounds += 1
        sampled_groups += local_groups
        zero_variance += int(local_groups - part["useful"].sum() // g.group_size)
        useful = sum(int(p["useful"].sum()) // g.group_size for p in parts)
        if jax.process_count() > 1:  # every process must run the same number of (collective) generate calls
            useful = int(multihost_utils.process_allgather(np.int32(useful)).min())
        if useful >= local_groups:
            break
    merged = jax.tree.map(lambda *rows: np.concatenate(rows), *parts)
    group_useful = merged["useful"].reshape(-1, g.group_size)[:, 0]
    rows = group_rows(pick_groups(group_useful, local_groups), g.group_size)
    chosen = jax.tree.map(lambda x: x[rows], merged)
    stats = {**timings, "sampling_rounds": float(rounds),
             "zero_variance_groups": zero_variance / max(sampled_groups, 1),
             "generated_tokens": float(merged["lengths"].sum()), **rl.reward_failures.take(list(g.rewards))}
    return chosen, stats


def rollout_batch(rl: RLRun, params: Any, ref_params: Any | None, groups: dict[str, Any]) -> dict[str, np.ndarray]:
    """The loss's batch for the chosen groups: advantages, old log-probs and (beta > 0) reference log-probs."""
    g = rl.grpo
    advantages = np.asarray(compute_advantages(groups["rewards"], g.group_size, g.advantage))
    batch = train_batch(groups["input_ids"], groups["attention_mask"], groups["tokens"], groups["lengths"],
                        groups["logprobs"], advantages, groups["loss_weight"])
    needs_old = g.old_logprobs == "recompute"
    if needs_old or g.loss.beta > 0.0:
        rows = rl.minibatch_rows // jax.process_count()  # one minibatch at a time bounds the logits' memory
        old, ref = [], []
        for first in range(0, batch["input_ids"].shape[0], rows):
            chunk = to_global({k: v[first:first + rows] for k, v in batch.items()},
                              {k: rl.run.batch_sharding[k] for k in ("input_ids", "attention_mask")})
            if needs_old:
                old.append(_local(rl.logprob_fn(params, chunk)))
            if g.loss.beta > 0.0:
                ref.append(_local(rl.logprob_fn(ref_params, chunk)))
        if needs_old:
            batch["old_logprobs"] = np.concatenate(old) * (batch["attention_mask"] > 0)
        if ref:
            batch["ref_logprobs"] = np.concatenate(ref).astype(np.float32)
    return batch


def update_policy(rl: RLRun, state: Any, batch: dict[str, np.ndarray], iteration: int
                  ) -> tuple[Any, list[dict[str, float]]]:
    """`mu` passes over the rollout batch in `minibatches` seeded shuffled minibatches, one train step each;
    returns the new state and each update's metrics (read back, so the updates have finished)."""
    g, rows = rl.grpo, rl.minibatch_rows // jax.process_count()
    order_rng = np.random.default_rng([rl.run.config.train.seed, iteration])
    updates = []
    for _ in range(g.mu):
        order = order_rng.permutation(batch["input_ids"].shape[0])
        for k in range(g.minibatches):
            minibatch = take_rows(batch, order[k * rows:(k + 1) * rows])
            state, metrics = rl.run.step_fn(state, to_global(minibatch, rl.run.batch_sharding))
            updates.append(metrics)
    # One read-back after the last update, so the host never waits between dispatching two updates.
    return state, [{key: float(v) for key, v in m.items()} for m in jax.device_get(updates)]


# ---------------------------------------------------------------- metrics


def _all_processes(groups: dict[str, Any], stats: dict[str, float]) -> tuple[dict[str, Any], dict[str, float]]:
    """The iteration's rollout rows and statistics over every process, which holds only its own share of the
    rows (a collective): rows concatenated in global order, counts summed, fractions averaged (every process
    samples as many groups), timings the slowest process's."""
    if jax.process_count() == 1:
        return groups, stats
    keys = sorted(stats)
    rows, values = all_process_rows(({k: groups[k] for k in ("rewards", "per_function", "lengths", "truncated")},
                                     np.asarray([[stats[k] for k in keys]], np.float32)))
    combine = {"zero_variance_groups": np.mean, "sampling_rounds": np.max}
    merged = {k: float((np.max if k.endswith("_seconds") else combine.get(k, np.sum))(np.asarray(column)))
              for k, column in zip(keys, np.asarray(values).T)}
    return jax.tree.map(np.asarray, rows), merged


def log_row(rl: RLRun, iteration: int, stats: dict[str, float], groups: dict[str, Any],
            totals: dict[str, float], updates: list[dict[str, float]], update_seconds: float) -> dict[str, float]:
    """An iteration's metrics row over every process (a collective): rewards, rollout statistics, the updates'
    figures and rates."""
    groups, stats = _all_processes(groups, stats)
    lengths = groups["lengths"]
    row = {**reward_statistics(groups["rewards"], groups["per_function"]), **stats,
           "learning_rate": float(rl.run.schedule(iteration * rl.updates_per_iteration - 1)),
           "loss": float(np.mean([u["loss"] for u in updates])),
           "grad_norm": float(np.mean([u["grad_norm"] for u in updates])),
           "skipped_updates": int(sum(u["skipped"] for u in updates)),
           "completion_length_mean": float(np.mean(lengths)), "completion_length_max": int(np.max(lengths)),
           "truncated_fraction": float(np.mean(groups["truncated"])),
           "update_seconds": update_seconds,
           "rollout_tokens_per_second": stats["generated_tokens"] / max(stats["rollout_seconds"], 1e-9),
           "update_tokens_per_second": totals.get("tokens", 0.0) / max(update_seconds, 1e-9)}
    if "correctness" in groups["per_function"]:
        row["accuracy"] = float(np.mean(groups["per_function"]["correctness"]))
    means = metric_means("grpo", totals)
    means.pop("completion_length_mean", None)  # the rollout's own figure (all rows) is logged above
    return {**row, **means}


def with_rollout_memory(report: dict[str, float], run: Run) -> dict[str, float]:
    """A GRPO dry run's report: the update's memory plus the rollout's KV cache and (beta > 0) the reference
    copy in the compute dtype, per device. Rollouts and updates alternate, so the cache counts against the
    update's arguments, not its temporaries."""
    g, m, gib = run.config.grpo, run.model_config, 2**30
    devices, itemsize = report["devices"], jnp.dtype(m.compute_dtype).itemsize
    cache = 2 * m.num_layers * g.rows * (g.max_prompt_len + g.sampling.max_new_tokens) * m.num_kv_heads * m.head_dim
    reference = m.num_params() if g.loss.beta > 0 else 0
    report = {**report, "kv_cache_gib_per_device": cache * itemsize / devices / gib,
              "reference_gib_per_device": reference * itemsize / devices / gib}
    if "peak_gib_per_device" in report:
        update_peak = report["update_peak_gib_per_device"] = report["peak_gib_per_device"]
        report["peak_gib_per_device"] = (max(update_peak, report["argument_gib_per_device"]
                                             + report["kv_cache_gib_per_device"]) + report["reference_gib_per_device"])
    return report
