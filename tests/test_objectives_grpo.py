"""GRPO objective: advantages, every loss option (value and gradient) against a float64 numpy reference
written with loops, and the adapter training a tiny model through the sharded train step."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxmath.models import ModelConfig, build_model
from jaxmath.objectives import (GRPOConfig, completion_log_probs, compute_advantages, grpo_loss_terms, make_loss,
                                metric_means)
from jaxmath.parallel import make_mesh
from jaxmath.train.optimizer import OptimizerConfig, make_optimizer
from jaxmath.train.step import setup_training

# A plain HF-style config dict: no transformers/torch import needed for these tests.
TINY = {"model_type": "qwen2", "vocab_size": 64, "hidden_size": 32, "intermediate_size": 64,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2}
# ---------------------------------------------------------------- shared helpers (also used by the DPO/PRM tests)


def numeric_grad(f, x, h=1e-6):
    """Central finite differences of a float64 numpy function."""
    x = np.array(x, np.float64)
    grad = np.zeros_like(x)
    for index in np.ndindex(x.shape):
        up, down = x.copy(), x.copy()
        up[index] += h
        down[index] -= h
        grad[index] = (f(up) - f(down)) / (2 * h)
    return grad


def tiny_model(num_labels=0):
    """A random tiny Qwen2 (token classifier when num_labels > 0)."""
    return build_model(ModelConfig.from_hf(TINY, num_labels=num_labels), seed=0)


def train_metrics(model, loss_fn, batch, steps=8, lr=3e-3):
    """Metrics of `steps` train steps from `model` on one fixed batch, on an 8-device data-parallel mesh."""
    opt = OptimizerConfig(lr=lr, warmup_steps=0, clip_norm=1.0, weight_decay=0.0)
    optimizer, _ = make_optimizer(opt, steps)
    state, step = setup_training(model, loss_fn, optimizer, make_mesh((8, 1, 1)), batch)
    history = []
    for _ in range(steps):
        state, metrics = step(state, batch)
        history.append(jax.device_get(metrics))
    return history


# ---------------------------------------------------------------- advantages


def test_group_advantages_known_answer():
    rewards = np.array([1.0, 0.0, 0.0, 1.0, 2.0, 2.0, 2.0, 2.0])
    std = np.sqrt(((np.array([1, 0, 0, 1]) - 0.5) ** 2).sum() / 3)  # sample std of the first group
    expected = np.concatenate([(np.array([1, 0, 0, 1]) - 0.5) / (std + 1e-4), np.zeros(4)])
    np.testing.assert_allclose(compute_advantages(rewards, 4, "grpo"), expected, rtol=1e-6)
    np.testing.assert_allclose(compute_advantages(rewards, 4, "grpo_no_std"), [0.5, -0.5, -0.5, 0.5, 0, 0, 0, 0])


def test_rloo_advantages_subtract_the_mean_of_the_others():
    rewards = np.random.default_rng(0).normal(size=12)
    expected = [rewards[i] - np.mean([rewards[j] for j in range(g * 3, g * 3 + 3) if j != i])
                for g in range(4) for i in range(g * 3, g * 3 + 3)]
    np.testing.assert_allclose(compute_advantages(rewards, 3, "rloo"), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("rewards,group,estimator,message", [
    (np.zeros(7), 4, "grpo", "do not split"),
    (np.zeros(4), 1, "rloo", "at least 2"),
    (np.zeros((2, 2)), 2, "grpo", "1-D"),
    (np.zeros(4), 2, "ppo", "unknown advantage estimator"),
])
def test_advantage_errors_name_the_problem(rewards, group, estimator, message):
    with pytest.raises(ValueError, match=message):
        compute_advantages(rewards, group, estimator)


# ---------------------------------------------------------------- the loss against numpy


def reference_loss(logp, old, adv, mask, ref, cfg):
    """Float64, loop-by-loop GRPO loss (DeepSeekMath eq. 3 with the chosen options)."""
    rows, length = logp.shape
    eps_low, eps_high = cfg["epsilon"], cfg.get("epsilon_high") or cfg["epsilon"]
    per_row_sums, per_row_counts = [], []
    for i in range(rows):
        tokens = [t for t in range(length) if mask[i, t]]
        seq_log_ratio = np.mean([logp[i, t] - old[i, t] for t in tokens]) if tokens else 0.0
        total = 0.0
        for t in tokens:
            log_ratio = seq_log_ratio if cfg.get("importance_level") == "sequence" else logp[i, t] - old[i, t]
            r = np.exp(log_ratio)
            loss = -min(r * adv[i], min(max(r, 1 - eps_low), 1 + eps_high) * adv[i])
            if cfg["beta"] > 0:
                x = ref[i, t] - logp[i, t]  # log(pi_ref / pi)
                kl = {"k1": -x, "k2": x * x / 2, "k3": np.exp(x) - x - 1}[cfg.get("kl_estimator", "k3")]
                loss += cfg["beta"] * kl
            total += loss
        per_row_sums.append(total)
        per_row_counts.append(len(tokens))
    live = [k for k in range(rows) if per_row_counts[k]]
    aggregation = cfg.get("aggregation", "sequence_mean")
    if aggregation == "sequence_mean":
        return np.mean([per_row_sums[k] / per_row_counts[k] for k in live])
    if aggregation == "token_mean":
        return sum(per_row_sums) / sum(per_row_counts)
    return sum(per_row_sums) / (len(live) * cfg["max_completion_length"])


def random_inputs(seed=0, rows=6, length=10):
    rng = np.random.default_rng(seed)
    logp = np.log(rng.uniform(0.05, 0.95, (rows, length)))
    old = logp + rng.normal(0, 0.25, (rows, length))
    ref = logp + rng.normal(0, 0.3, (rows, length))
    mask = np.zeros((rows, length), np.int32)
    for i in range(rows - 1):  # the last row is all padding and must not count
        start = int(rng.integers(1, 4))
        mask[i, start:start + int(rng.integers(2, length - start + 1))] = 1
    return logp, old, rng.normal(size=rows), mask, ref


CASES = {
    "paper_k3": dict(epsilon=0.2, beta=0.04),
    "k1": dict(epsilon=0.2, beta=0.1, kl_estimator="k1"),
    "k2": dict(epsilon=0.2, beta=0.1, kl_estimator="k2"),
    "dapo_token_mean": dict(epsilon=0.2, beta=0.04, aggregation="token_mean"),
    "dr_grpo_constant": dict(epsilon=0.2, beta=0.04, aggregation="constant", max_completion_length=12),
    "clip_higher": dict(epsilon=0.2, epsilon_high=0.28, beta=0.0, aggregation="token_mean"),
    "gspo": dict(epsilon=0.05, beta=0.0, importance_level="sequence"),
    "gspo_k3_token_mean": dict(epsilon=0.05, beta=0.04, importance_level="sequence", aggregation="token_mean"),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_loss_and_gradient_match_numpy(name):
    cfg = CASES[name]
    logp, old, adv, mask, ref = random_inputs()
    config = GRPOConfig(**cfg)
    ref_in = jnp.asarray(ref, jnp.float32) if cfg["beta"] > 0 else None

    def loss(lp):
        num, den, _ = grpo_loss_terms(lp, jnp.asarray(old, jnp.float32), jnp.asarray(adv, jnp.float32),
                                      jnp.asarray(mask), config, ref_in)
        return num / den

    value, grad = jax.value_and_grad(loss)(jnp.asarray(logp, jnp.float32))
    expected = reference_loss(logp, old, adv, mask, ref, cfg)
    assert float(value) == pytest.approx(expected, rel=1e-5, abs=1e-6)
    expected_grad = numeric_grad(lambda lp: reference_loss(lp, old, adv, mask, ref, cfg), logp)
    np.testing.assert_allclose(np.asarray(grad), expected_grad, rtol=1e-4, atol=1e-6)
    assert np.all(np.asarray(grad)[mask == 0] == 0)


def test_clip_higher_changes_the_loss_only_through_the_upper_bound():
    logp, old, adv, mask, ref = random_inputs(seed=3)
    ratio = np.exp(logp - old)
    assert np.any((ratio > 1.2) & (ratio < 1.28) & (mask > 0))  # the inputs exercise the widened band
    args = (jnp.asarray(logp), jnp.asarray(old), jnp.asarray(np.abs(adv)), jnp.asarray(mask))
    sym = grpo_loss_terms(*args, GRPOConfig(epsilon=0.2, beta=0.0))
    high = grpo_loss_terms(*args, GRPOConfig(epsilon=0.2, epsilon_high=0.28, beta=0.0))
    assert float(high[0]) < float(sym[0])  # positive advantages: a higher cap gives a lower loss
    assert float(high[2]["clipped_tokens"]) < float(sym[2]["clipped_tokens"])


def test_metrics_are_the_numpy_totals():
    logp, old, adv, mask, ref = random_inputs(seed=1)
    _, _, metrics = grpo_loss_terms(jnp.asarray(logp), jnp.asarray(old), jnp.asarray(adv), jnp.asarray(mask),
                                    GRPOConfig(epsilon=0.2, beta=0.1), jnp.asarray(ref))
    ratio = np.exp(logp - old)
    clipped = ((ratio > 1.2) & (adv[:, None] > 0)) | ((ratio < 0.8) & (adv[:, None] < 0))
    x = ref - logp
    assert float(metrics["tokens"]) == mask.sum()
    assert float(metrics["sequences"]) == (mask.sum(1) > 0).sum()
    assert float(metrics["clipped_tokens"]) == (clipped & (mask > 0)).sum()
    assert float(metrics["ratio_sum"]) == pytest.approx((ratio * mask).sum(), rel=1e-5)
    assert float(metrics["kl_sum"]) == pytest.approx(((np.exp(x) - x - 1) * mask).sum(), rel=1e-5)
    means = metric_means("grpo", jax.device_get(metrics))
    assert means["clip_fraction"] == pytest.approx((clipped & (mask > 0)).sum() / mask.sum())
    assert "entropy_mean" not in means  # only the model adapter measures entropy


@pytest.mark.parametrize("aggregation", ["sequence_mean", "token_mean", "constant"])
def test_terms_add_up_over_row_splits(aggregation):
    """Numerators, denominators and metrics of two halves sum to the whole: exact under accumulation."""
    logp, old, adv, mask, ref = (jnp.asarray(a) for a in random_inputs(seed=2))
    config = GRPOConfig(beta=0.04, aggregation=aggregation, max_completion_length=16)
    whole = grpo_loss_terms(logp, old, adv, mask, config, ref)
    halves = [grpo_loss_terms(logp[s], old[s], adv[s], mask[s], config, ref[s]) for s in (slice(0, 3), slice(3, 6))]
    for k in range(2):
        assert float(whole[k]) == pytest.approx(float(halves[0][k] + halves[1][k]), rel=1e-6)
    for key, value in whole[2].items():
        assert float(value) == pytest.approx(float(halves[0][2][key] + halves[1][2][key]), rel=1e-6)


def test_garbage_at_masked_positions_cannot_poison_the_loss():
    logp, old, adv, mask, ref = random_inputs(seed=4)
    old = np.where(mask > 0, old, -1e4)  # exp(logp - old) would overflow there
    ref = np.where(mask > 0, ref, 1e4)
    config = GRPOConfig(beta=0.04)
    clean = grpo_loss_terms(jnp.asarray(logp), jnp.asarray(np.where(mask > 0, old, 0.0)), jnp.asarray(adv),
                            jnp.asarray(mask), config, jnp.asarray(np.where(mask > 0, ref, 0.0)))[0]
    grad_fn = jax.value_and_grad(lambda lp: grpo_loss_terms(lp, jnp.asarray(old), jnp.asarray(adv), jnp.asarray(mask),
                                                            config, jnp.asarray(ref))[0])
    value, grad = grad_fn(jnp.asarray(logp, jnp.float32))
    assert float(value) == pytest.approx(float(clean), rel=1e-6)
    assert np.isfinite(np.asarray(grad)).all()


def test_bad_settings_are_named():
    with pytest.raises(ValueError, match="kl_estimator"):
        GRPOConfig(kl_estimator="k4")
    with pytest.raises(ValueError, match="aggregation"):
        GRPOConfig(aggregation="median")
    with pytest.raises(ValueError, match="max_completion_length"):
        GRPOConfig(aggregation="constant")
    with pytest.raises(ValueError, match="importance_level"):
        GRPOConfig(importance_level="segment")
    with pytest.raises(ValueError, match="ref_logprobs"):
        grpo_loss_terms(*(jnp.zeros((2, 3)),) * 2, jnp.zeros(2), jnp.ones((2, 3)), GRPOConfig(beta=0.1))


def test_registry_builds_losses_and_rejects_unknown_names():
    loss = make_loss("grpo", beta=0.0, aggregation="token_mean")
    assert loss.keywords["config"] == GRPOConfig(beta=0.0, aggregation="token_mean")
    with pytest.raises(ValueError, match="unknown objective 'ppo'"):
        make_loss("ppo")
    with pytest.raises(ValueError, match=r"unknown grpo option\(s\) \['betta'\]"):
        make_loss("grpo", betta=0.1)
    with pytest.raises(ValueError, match="takes no options"):
        make_loss("prm", beta=0.1)


# ---------------------------------------------------------------- the adapter through the train step


@pytest.mark.slow
def test_grpo_adapter_learns_on_an_eight_device_mesh():
    rows, prompt, length = 8, 6, 16
    rng = np.random.default_rng(0)
    ids = rng.integers(1, 64, (rows, length)).astype(np.int32)
    attention = np.ones((rows, length), np.int32)
    attention[::2, :2] = 0  # left-padded prompts
    completion = np.zeros((rows, length), np.int32)
    completion[:, prompt:] = 1
    completion[1::3, -3:] = 0  # shorter completions (right padding)
    attention[1::3, -3:] = 0
    model = tiny_model()
    old = np.asarray(nnx.jit(lambda m: completion_log_probs(m(ids, attention_mask=attention), ids))(model))
    rewards = np.array([1, 0, 0, 1, 0, 1, 1, 1], np.float32)
    batch = {"input_ids": ids, "attention_mask": attention, "completion_mask": completion, "old_logprobs": old,
             "ref_logprobs": old, "advantages": np.asarray(compute_advantages(rewards, 4))}
    history = train_metrics(model, make_loss("grpo", beta=0.04), batch)
    losses = [float(m["loss"]) for m in history]
    assert abs(losses[0]) < 1e-3  # ratio 1, KL 0 and zero-mean advantages: the loss starts at 0
    assert losses[-1] < losses[0] - 0.05
    first, last = metric_means("grpo", history[0]), metric_means("grpo", history[-1])
    assert first["ratio_mean"] == pytest.approx(1.0, abs=1e-4) and first["kl_mean"] == pytest.approx(0.0, abs=1e-5)
    assert last["kl_mean"] > 0 and 0 < first["entropy_mean"] <= np.log(64) + 1e-4
    assert first["completion_length_mean"] == pytest.approx(completion.sum() / rows)
