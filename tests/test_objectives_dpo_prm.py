"""DPO and PRM objectives against float64 numpy references written with loops (values and gradients), the
PRM evaluation helpers against known answers, and both adapters training a tiny model on 8 devices."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxmath.objectives import (DPOConfig, aggregate_step_scores, best_of_n, dpo_loss_terms, make_loss, metric_means,
                                pair_log_probs, prm_loss_terms, roc_auc, sequence_log_probs, step_probabilities)
from test_objectives_grpo import numeric_grad, tiny_model, train_metrics


def log_softmax(row):
    return row - np.log(np.sum(np.exp(row - row.max()))) - row.max()


def softplus(x):
    return np.logaddexp(0.0, x)  # -log sigmoid(-x)


# ---------------------------------------------------------------- DPO


def reference_sequence_logps(logits, ids, loss_mask, normalize=False):
    """Per row: sum (or mean) over scored tokens t >= 1 of log softmax(logits[t - 1])[ids[t]]."""
    out = []
    for i in range(ids.shape[0]):
        terms = [log_softmax(logits[i, t - 1])[ids[i, t]] for t in range(1, ids.shape[1]) if loss_mask[i, t]]
        out.append(np.sum(terms) / (len(terms) if normalize else 1))
    return np.array(out)


def reference_dpo(policy_chosen, policy_rejected, ref_chosen, ref_rejected, cfg):
    beta, eps = cfg["beta"], cfg.get("label_smoothing", 0.0)
    losses = []
    for pc, pr, rc, rr in zip(policy_chosen, policy_rejected, ref_chosen, ref_rejected):
        h = (pc - rc) - (pr - rr)
        losses.append({
            "sigmoid": (1 - eps) * softplus(-beta * h) + eps * softplus(beta * h),
            "ipo": (h - 1 / (2 * beta)) ** 2,
            "robust": ((1 - eps) * softplus(-beta * h) - eps * softplus(beta * h)) / (1 - 2 * eps),
        }[cfg["loss_type"]])
    return np.mean(losses)


DPO_CASES = {
    "sigmoid": dict(beta=0.1, loss_type="sigmoid"),
    "sigmoid_label_smoothed_cdpo": dict(beta=0.5, loss_type="sigmoid", label_smoothing=0.1),
    "ipo": dict(beta=0.3, loss_type="ipo"),
    "robust": dict(beta=0.5, loss_type="robust", label_smoothing=0.2),
}


@pytest.mark.parametrize("name", sorted(DPO_CASES))
def test_dpo_loss_and_logit_gradient_match_numpy(name):
    """Through sequence_log_probs: gradients reach the logits of scored positions only."""
    cfg = DPO_CASES[name]
    rng = np.random.default_rng(0)
    pairs, length, vocab = 3, 5, 6
    logits = rng.normal(0, 2, (2 * pairs, length, vocab))
    ids = rng.integers(0, vocab, (2 * pairs, length))
    loss_mask = (np.arange(length) >= 2)[None].repeat(2 * pairs, 0).astype(np.int32)
    loss_mask[1, -1] = 0
    refs = rng.normal(-8, 1, (2, pairs))

    def reference(lg):
        logps = reference_sequence_logps(lg, ids, loss_mask)
        return reference_dpo(logps[:pairs], logps[pairs:], refs[0], refs[1], cfg)

    def loss(lg):
        logps, _ = sequence_log_probs(lg, jnp.asarray(ids), jnp.asarray(loss_mask))
        num, den, _ = dpo_loss_terms(logps[:pairs], logps[pairs:], jnp.asarray(refs[0]), jnp.asarray(refs[1]),
                                     DPOConfig(**cfg))
        return num / den

    value, grad = jax.value_and_grad(loss)(jnp.asarray(logits, jnp.float32))
    assert float(value) == pytest.approx(reference(logits), rel=1e-5)
    np.testing.assert_allclose(np.asarray(grad), numeric_grad(reference, logits), rtol=1e-4, atol=1e-6)
    assert np.all(np.asarray(grad)[:, -1] == 0)  # the last position predicts nothing


def test_dpo_known_values_and_metrics():
    chosen, rejected = np.array([-5.0, -7.0, -4.0]), np.array([-6.0, -6.5, -9.0])
    ref_chosen, ref_rejected = np.array([-5.0, -6.0, -5.0]), np.array([-6.0, -6.0, -8.0])
    num, den, m = dpo_loss_terms(*(jnp.asarray(a) for a in (chosen, rejected, ref_chosen, ref_rejected)),
                                 DPOConfig(beta=0.5), valid=jnp.asarray([True, True, False]))
    # pair 0: h = 0 -> log 2; pair 1: h = -1 + 0.5 = -0.5; pair 2 does not count.
    assert float(den) == 2 and float(num) == pytest.approx(np.log(2) + softplus(0.25), rel=1e-6)
    assert float(m["correct_pairs"]) == 0  # pair 0 ties, pair 1 prefers the rejected answer
    assert float(m["margin_sum"]) == pytest.approx(-0.25)
    means = metric_means("dpo", jax.device_get(m))
    assert means["reward_accuracy"] == 0 and means["chosen_reward"] == pytest.approx(-0.25)
    assert means["rejected_reward"] == pytest.approx(-0.125)


def test_dpo_settings_are_checked():
    with pytest.raises(ValueError, match="loss_type"):
        DPOConfig(loss_type="hinge-ish")
    with pytest.raises(ValueError, match="label_smoothing"):
        DPOConfig(loss_type="robust", label_smoothing=0.5)
    with pytest.raises(ValueError, match="beta"):
        DPOConfig(beta=0.0)
    assert DPOConfig(loss_type="ipo").normalizes_length and not DPOConfig().normalizes_length


def pair_batch(pairs=8, length=12, prompt=4, vocab=64, seed=0):
    """Chosen and rejected rows share a (left-padded) prompt; responses differ and end at different places."""
    rng = np.random.default_rng(seed)
    batch = {}
    prompts = rng.integers(1, vocab, (pairs, prompt))
    for k, side in enumerate(("chosen", "rejected")):
        ids = np.concatenate([prompts, rng.integers(1, vocab, (pairs, length - prompt))], axis=1).astype(np.int32)
        attention = np.ones((pairs, length), np.int32)
        attention[::3, :1] = 0
        loss_mask = np.zeros((pairs, length), np.int32)
        loss_mask[:, prompt:length - k * 2] = 1
        attention[:, length - k * 2:] = 0
        batch.update({f"{side}_input_ids": ids, f"{side}_attention_mask": attention, f"{side}_loss_mask": loss_mask})
    return batch


@pytest.mark.slow
def test_dpo_adapter_matches_numpy_then_learns_on_an_eight_device_mesh():
    """IPO (length-normalised) through the sharded step: the first loss equals numpy's, then it falls."""
    model = tiny_model()
    batch = pair_batch()
    forward = nnx.jit(lambda m, ids, mask: m(ids, attention_mask=mask))
    sums, counts = {}, {}
    for side in ("chosen", "rejected"):
        ids, mask, loss_mask = (batch[f"{side}_{key}"] for key in ("input_ids", "attention_mask", "loss_mask"))
        sums[side] = reference_sequence_logps(np.asarray(forward(model, ids, mask), np.float64), ids, loss_mask)
        counts[side] = loss_mask[:, 1:].sum(1)
    offsets = np.random.default_rng(1).normal(0, 2.0, (2, 8))  # the reference differs from the policy
    batch.update(ref_chosen_logps=sums["chosen"] + offsets[0], ref_rejected_logps=sums["rejected"] + offsets[1])
    expected = reference_dpo(sums["chosen"] / counts["chosen"], sums["rejected"] / counts["rejected"],
                             batch["ref_chosen_logps"] / counts["chosen"],
                             batch["ref_rejected_logps"] / counts["rejected"], dict(beta=0.5, loss_type="ipo"))
    history = train_metrics(model, make_loss("dpo", beta=0.5, loss_type="ipo"), batch, steps=6)
    losses = [float(m["loss"]) for m in history]
    assert losses[0] == pytest.approx(expected, rel=1e-4)
    assert losses[-1] < 0.5 * losses[0]
    assert metric_means("dpo", history[-1])["reward_margin"] > metric_means("dpo", history[0])["reward_margin"]


def test_dpo_batch_errors_name_the_key():
    model = tiny_model()
    batch = pair_batch(pairs=2)
    with pytest.raises(KeyError, match="ref_chosen_logps"):
        make_loss("dpo")(model, batch, jax.random.key(0))
    del batch["rejected_loss_mask"]
    with pytest.raises(KeyError, match="rejected_loss_mask"):
        pair_log_probs(model, batch)


# ---------------------------------------------------------------- PRM


def test_prm_loss_gradient_and_accuracy_match_numpy():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 1.5, (3, 7, 2))
    labels = np.full((3, 7), -1)
    labels[0, [2, 5]] = [1, 0]
    labels[1, 6] = 1
    labels[2, [1, 3, 4]] = [0, 0, 1]

    def reference(lg):
        nll = [-log_softmax(lg[i, t])[labels[i, t]] for i in range(3) for t in range(7) if labels[i, t] >= 0]
        return np.mean(nll)

    def loss(lg):
        num, den, _ = prm_loss_terms(lg, jnp.asarray(labels))
        return num / den

    value, grad = jax.value_and_grad(loss)(jnp.asarray(logits, jnp.float32))
    assert float(value) == pytest.approx(reference(logits), rel=1e-5)
    np.testing.assert_allclose(np.asarray(grad), numeric_grad(reference, logits), rtol=1e-4, atol=1e-6)
    _, _, m = prm_loss_terms(jnp.asarray(logits), jnp.asarray(labels))
    scored = labels >= 0
    assert float(m["steps"]) == scored.sum() == 6
    assert float(m["correct_steps"]) == (logits.argmax(-1) == labels)[scored].sum()
    probs = step_probabilities(logits)
    np.testing.assert_allclose(probs, 1 / (1 + np.exp(logits[..., 0] - logits[..., 1])), rtol=1e-5)


def test_roc_auc_matches_pair_counting():
    assert roc_auc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == pytest.approx(0.75)
    rng = np.random.default_rng(1)
    scores = np.round(rng.uniform(size=200), 1)  # many ties
    labels = (rng.uniform(size=200) < scores).astype(int)
    pos, neg = scores[labels == 1], scores[labels == 0]
    expected = np.mean([(p > n) + 0.5 * (p == n) for p in pos for n in neg])
    assert roc_auc(scores, labels) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("scores,labels,message", [
    ([0.1, 0.2], [1, 1], "both classes"),
    ([0.1, 0.2], [0, 2], "0 or 1"),
    ([0.1], [0, 1], "1 scores but 2 labels"),
    ([0.1, float("nan")], [0, 1], "finite"),
])
def test_roc_auc_rejects_bad_input(scores, labels, message):
    with pytest.raises(ValueError, match=message):
        roc_auc(scores, labels)


def test_step_score_aggregation_and_best_of_n():
    steps = [0.9, 0.5, 0.8]
    assert aggregate_step_scores(steps, "min") == 0.5
    assert aggregate_step_scores(steps, "product") == pytest.approx(0.36)
    assert aggregate_step_scores(steps, "last") == 0.8
    candidates = [[0.9, 0.6, 0.95], [0.7, 0.7], [], [0.95, 0.2, 0.99]]
    assert best_of_n(candidates, "min") == 1  # 0.6, 0.7, -, 0.2
    assert best_of_n(candidates, "product") == 0  # 0.513, 0.49, -, 0.188
    assert best_of_n(candidates, "last") == 3  # 0.95, 0.7, -, 0.99
    assert best_of_n([[], []]) == 0
    with pytest.raises(ValueError, match="unknown step aggregation"):
        aggregate_step_scores(steps, "mean-ish")
    with pytest.raises(ValueError, match="non-empty"):
        aggregate_step_scores([], "min")


@pytest.mark.slow
def test_prm_adapter_learns_on_an_eight_device_mesh():
    rng = np.random.default_rng(0)
    ids = rng.integers(1, 64, (8, 16)).astype(np.int32)
    attention = np.ones((8, 16), np.int32)
    attention[::2, :3] = 0
    labels = np.full((8, 16), -1, np.int32)
    ends = [5, 8, 11, 15]  # step ends; a step is "good" when its last token is even (learnable from the token)
    labels[:, ends] = (ids[:, ends] % 2 == 0).astype(np.int32)
    history = train_metrics(tiny_model(num_labels=2), make_loss("prm"), {"input_ids": ids, "attention_mask": attention,
                                                                          "labels": labels}, steps=10, lr=1e-2)
    losses = [float(m["loss"]) for m in history]
    assert losses[0] == pytest.approx(np.log(2), abs=0.05)  # an untrained head is near chance
    assert losses[-1] < losses[0] - 0.1
    assert metric_means("prm", history[-1])["step_accuracy"] > metric_means("prm", history[0])["step_accuracy"]
