"""The train-step factory: loss falls, results do not depend on the mesh, accumulation is exact, NaN guard."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmath.models import ModelConfig, build_model
from jaxmath.objectives.sft import sft_loss, sft_loss_terms
from jaxmath.parallel import make_mesh
from jaxmath.train.optimizer import OptimizerConfig, make_optimizer, make_schedule
from jaxmath.train.step import setup_training
from tiny_hf import tiny_config


def tiny_batch(rows=8, length=16, seed=0):
    """Packed-style batch: two segments per row, loss on the second half of each segment."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, 128, (rows, length)).astype(np.int32)
    segments = np.where(np.arange(length) < length // 2, 1, 2)[None].repeat(rows, 0).astype(np.int32)
    segments[:, -2:] = 0  # padding
    positions = np.concatenate([np.arange(length // 2), np.arange(length // 2)])[None].repeat(rows, 0)
    loss_mask = ((positions >= 3) & (segments > 0)).astype(np.int32)
    return {"input_ids": ids, "segment_ids": segments, "positions": positions.astype(np.int32), "loss_mask": loss_mask}


def setup(mesh_shape, opt=OptimizerConfig(lr=1e-2, warmup_steps=0, clip_norm=1.0, weight_decay=0.01), steps=10,
          model_config=None, trainable=lambda path: True):
    config = model_config or ModelConfig.from_hf(tiny_config("qwen2").to_dict())
    optimizer, _ = make_optimizer(opt, steps)
    return setup_training(build_model(config, seed=0), sft_loss, optimizer, make_mesh(mesh_shape), tiny_batch(),
                          grad_accum=opt.grad_accum, trainable=trainable)


def run(mesh_shape, steps=3, **opt_kwargs):
    # lr 1e-3: Adam normalises tiny gradients to O(lr) steps, so float reassociation noise scales with lr.
    opt = OptimizerConfig(**{"lr": 1e-3, "clip_norm": 1.0, "weight_decay": 0.01, **opt_kwargs})
    state, step = setup(mesh_shape, opt)
    losses = []
    for i in range(steps):
        state, metrics = step(state, tiny_batch(seed=i))
        losses.append(float(metrics["loss"]))
    return losses, jax.tree.map(np.asarray, state.params)


@pytest.mark.slow
def test_loss_falls_when_overfitting():
    state, step = setup((8, 1, 1))
    batch = tiny_batch()
    losses = []
    for _ in range(25):
        state, metrics = step(state, batch)
        losses.append(float(metrics["loss"]))
    assert losses[-1] < 0.5 * losses[0]


@pytest.mark.slow
def test_step_loss_is_the_masked_token_mean():
    config = ModelConfig.from_hf(tiny_config("qwen2").to_dict())
    model = build_model(config, seed=0)
    batch = tiny_batch()
    logits = np.asarray(model(batch["input_ids"], segment_ids=batch["segment_ids"], positions=batch["positions"]),
                        np.float64)
    logp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) \
        - logits.max(-1, keepdims=True)
    total, count = 0.0, 0
    ids, seg, mask = batch["input_ids"], batch["segment_ids"], batch["loss_mask"]
    for r in range(ids.shape[0]):
        for t in range(ids.shape[1] - 1):
            if mask[r, t + 1] and seg[r, t] == seg[r, t + 1] and seg[r, t] > 0:
                total -= logp[r, t, ids[r, t + 1]]
                count += 1
    num, den = sft_loss_terms(jnp.asarray(logits, jnp.float32), {k: jnp.asarray(v) for k, v in batch.items()})
    assert int(den) == count
    assert float(num) / float(den) == pytest.approx(total / count, rel=1e-5)


@pytest.mark.slow
def test_same_losses_and_params_on_every_mesh():
    ref_losses, ref_params = run((8, 1, 1))
    for shape in [(2, 4, 1), (1, 4, 2)]:
        losses, params = run(shape)
        np.testing.assert_allclose(losses, ref_losses, rtol=1e-5, atol=1e-5)
        for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(ref_params)):
            np.testing.assert_allclose(a, b, atol=1e-5)


@pytest.mark.slow
def test_gradient_accumulation_equals_the_full_batch():
    full_losses, full_params = run((8, 1, 1), steps=2)
    acc_losses, acc_params = run((8, 1, 1), steps=2, grad_accum=4)  # 4 micro-batches of 2 rows
    np.testing.assert_allclose(acc_losses, full_losses, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(acc_params), jax.tree.leaves(full_params)):
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_non_finite_step_is_skipped():
    state, step = setup((8, 1, 1))
    before = jax.tree.map(np.asarray, state.params)
    bad = tiny_batch()
    state, metrics = step(state, {**bad, "loss_mask": np.zeros_like(bad["loss_mask"])})  # finite: 0/0 guarded
    assert int(metrics["skipped"]) == 0
    poisoned = jax.tree.map(lambda x: x, state.params)
    poisoned["model"]["norm"]["scale"] = poisoned["model"]["norm"]["scale"] * jnp.nan
    state = state.__class__(state.step, poisoned, state.opt_state, state.rng)
    kept = jax.tree.map(np.asarray, state.params)
    state, metrics = step(state, bad)
    assert int(metrics["skipped"]) == 1
    after = jax.tree.map(np.asarray, state.params)
    np.testing.assert_array_equal(after["model"]["layers"]["mlp"]["up_proj"], kept["model"]["layers"]["mlp"]["up_proj"])
    del before


def test_schedule_warmup_then_cosine():
    schedule = make_schedule(OptimizerConfig(lr=1.0, warmup_steps=4, schedule="cosine", min_lr_ratio=0.1), 14)
    values = [float(schedule(i)) for i in range(15)]
    assert values[0] == pytest.approx(0.25) and values[3] == pytest.approx(1.0)
    assert values[4] == pytest.approx(1.0)
    assert values[9] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + np.cos(np.pi * 5 / 10)))
    assert values[14] == pytest.approx(0.1)


@pytest.mark.slow
def test_lora_trains_only_the_adapters():
    from flax import traverse_util
    from jaxmath.models.lora import is_lora_path
    from jaxmath.train.state import trainable_predicate
    config = ModelConfig.from_hf(tiny_config("qwen2").to_dict()).replace(lora_rank=4, lora_alpha=8.0,
                                                                          lora_dropout=0.1)
    state, step = setup((8, 1, 1), OptimizerConfig(lr=1e-2), model_config=config,
                        trainable=trainable_predicate([], lora=True))
    moments = traverse_util.flatten_dict(state.opt_state[1][0].mu, sep="/")
    assert moments and all(is_lora_path(k) for k in moments)  # no optimizer memory for the frozen base
    before = traverse_util.flatten_dict(jax.tree.map(np.asarray, state.params), sep="/")
    losses = []
    for _ in range(8):
        state, metrics = step(state, tiny_batch())
        losses.append(float(metrics["loss"]))
    after = traverse_util.flatten_dict(jax.tree.map(np.asarray, state.params), sep="/")
    for key, value in before.items():
        if is_lora_path(key):
            continue
        np.testing.assert_array_equal(after[key], value, err_msg=key)
    assert any(not np.array_equal(after[k], before[k]) for k in before if k.endswith("_lora_b"))
    assert losses[-1] < losses[0]


@pytest.mark.slow
def test_frozen_groups_get_no_updates():
    from flax import traverse_util
    from jaxmath.train.state import trainable_predicate
    state, step = setup((8, 1, 1), OptimizerConfig(lr=1e-2),
                        trainable=trainable_predicate([r"embed_tokens", r"layers/mlp"], lora=False))
    before = traverse_util.flatten_dict(jax.tree.map(np.asarray, state.params), sep="/")
    state, _ = step(state, tiny_batch())
    after = traverse_util.flatten_dict(jax.tree.map(np.asarray, state.params), sep="/")
    for key in before:
        frozen = "embed_tokens" in key or "layers/mlp" in key
        assert np.array_equal(after[key], before[key]) == frozen, key


@pytest.mark.slow
def test_chunked_vocabulary_projection_equals_the_full_one():
    from flax import nnx
    from jaxmath.objectives.sft import chunked_target_log_probs, token_log_probs
    model = build_model(ModelConfig.from_hf(tiny_config("qwen2").to_dict()), seed=0)
    batch = tiny_batch(rows=2, length=16)
    targets = jnp.asarray(batch["input_ids"][:, ::-1].copy())

    def both(m):
        hidden = m.model(batch["input_ids"], segment_ids=batch["segment_ids"], positions=batch["positions"])
        return (jnp.sum(chunked_target_log_probs(m, hidden, targets, chunk=5)),
                jnp.sum(token_log_probs(m.logits_from_hidden(hidden), targets)))

    chunked, full = both(model)
    assert float(chunked) == pytest.approx(float(full), rel=1e-6)
    g_chunked = nnx.grad(lambda m: both(m)[0])(model)
    g_full = nnx.grad(lambda m: both(m)[1])(model)
    for a, b in zip(jax.tree.leaves(g_chunked), jax.tree.leaves(g_full)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)


def test_chunked_entropy_equals_a_numpy_softmax_entropy():
    from jaxmath.objectives.sft import chunked_log_probs_and_entropy
    model = build_model(ModelConfig.from_hf(tiny_config("qwen2").to_dict()), seed=0)
    batch = tiny_batch(rows=2, length=16)
    targets = jnp.asarray(batch["input_ids"][:, ::-1].copy())
    hidden = model.model(batch["input_ids"], segment_ids=batch["segment_ids"], positions=batch["positions"])
    logprobs, entropy = chunked_log_probs_and_entropy(model, hidden, targets, chunk=5)
    logits = np.asarray(model.logits_from_hidden(hidden), np.float64)
    logp = logits - logits.max(-1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
    np.testing.assert_allclose(np.asarray(entropy), -(np.exp(logp) * logp).sum(-1), atol=1e-4)
    np.testing.assert_allclose(np.asarray(logprobs), np.take_along_axis(logp, np.asarray(targets)[..., None], -1)[..., 0],
                               atol=1e-4)
