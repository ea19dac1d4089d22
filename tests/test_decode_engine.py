"""The decode engine: its weights copy, two-part cache, prompt sharing, cache buckets and continuous batching,
against the model's own full forward pass and against decoding without those tricks."""
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx, traverse_util
from hypothesis import given, settings
from hypothesis import strategies as st

import jaxmath
from jaxmath.inference import sampler
from jaxmath.inference.forward import Cache, decode_step, empty_suffix, prefill
from jaxmath.inference.sampler import generate, generate_continuous, suffix_buckets
from jaxmath.inference.weights import prepare_weights
from jaxmath.models import ModelConfig, build_model
from tiny_hf import left_padded_batch, save_tiny, tiny_config, tiny_model

EOS = [5, 7, 9, 11]  # frequent enough in a tiny random model that rows stop at different lengths


def full_forward_logits(model, ids: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """The training forward's logits of right-padded rows (the reference)."""
    mask = (np.arange(ids.shape[1]) < lengths[:, None]).astype(np.int32)
    return np.asarray(model(jnp.asarray(ids), attention_mask=jnp.asarray(mask)))


@pytest.mark.parametrize("model_type,overrides", [("qwen2", {}), ("qwen3", dict(head_dim=24)),
                                                  ("llama", dict(attention_bias=True, mlp_bias=True))])
def test_prefill_then_decode_steps_equal_the_full_forward(model_type, overrides):
    """Two prompts (lengths 5 and 9), each continued by G = 2 rows with their own tokens, one step at a time."""
    config = ModelConfig.from_hf(tiny_config(model_type, **overrides).to_dict())
    model = build_model(config, seed=2)
    weights = prepare_weights(model)
    rng = np.random.default_rng(0)
    lengths, steps, group = np.asarray([5, 9]), 6, 2
    prompts = rng.integers(3, config.vocab_size, (2, 9)).astype(np.int32)
    continuations = rng.integers(3, config.vocab_size, (4, steps)).astype(np.int32)
    logits, keys, values = prefill(weights, jnp.asarray(prompts), jnp.asarray(lengths))
    rows = [np.concatenate([prompts[r // group, :lengths[r // group]], continuations[r]]) for r in range(4)]
    for r in range(4):  # the prompt's last logits
        ref = full_forward_logits(model, rows[r][None], np.asarray([len(rows[r])]))[0]
        np.testing.assert_allclose(np.asarray(logits)[r // group], ref[lengths[r // group] - 1], atol=1e-5)
    suffix_keys, suffix_values = empty_suffix(4, 8, weights, keys[0].dtype)
    cache = Cache(tuple(keys), tuple(values), jnp.asarray(lengths), suffix_keys, suffix_values,
                  jnp.zeros(4, jnp.int32), jnp.int32(5))  # any ring slot to start from
    for t in range(steps):
        positions = jnp.asarray(np.repeat(lengths, group) + t)
        step_logits, cache = decode_step(weights, jnp.asarray(continuations[:, t]), positions, cache)
        for r in range(4):
            ref = full_forward_logits(model, rows[r][None], np.asarray([len(rows[r])]))[0]
            np.testing.assert_allclose(np.asarray(step_logits)[r], ref[lengths[r // group] + t], atol=1e-5)
    np.testing.assert_array_equal(np.asarray(cache.suffix_lengths), [steps] * 4)


@pytest.mark.slow
def test_lora_and_quantised_models_decode_like_their_forward(tmp_path):
    """The weights copy merges LoRA (B nonzero) and dequantises int8 kernels: greedy decode's log-probs equal
    the model's own forward pass over the generated text."""
    from test_quantize import quantized

    src = save_tiny(tiny_model("qwen2", seed=1), tmp_path)
    lora = jaxmath.from_pretrained(src, lora_rank=4, lora_alpha=8.0)
    state = traverse_util.flatten_dict(nnx.to_pure_dict(nnx.state(lora)))
    rng = np.random.default_rng(0)
    state = {k: rng.normal(0, 0.05, v.shape).astype(np.float32) if k[-1].endswith("_lora_b") else v
             for k, v in state.items()}
    lora = nnx.merge(nnx.graphdef(lora), traverse_util.unflatten_dict(state))
    for kind, model in (("lora", lora), ("int8", quantized(jaxmath.from_pretrained(src), "int8"))):
        ids, mask = left_padded_batch(batch=2, length=7, seed=3)
        out = generate(model, ids, attention_mask=mask, max_new_tokens=6)
        sequences = np.asarray(out.sequences)
        full_mask = np.concatenate([mask, np.ones((2, 6), mask.dtype)], axis=1)
        logits = np.asarray(model(jnp.asarray(sequences), attention_mask=jnp.asarray(full_mask)))[:, -7:-1]
        logp = np.asarray(jax.nn.log_softmax(jnp.asarray(logits), axis=-1))
        expected = np.take_along_axis(logp, sequences[:, -6:, None], axis=-1)[..., 0]
        np.testing.assert_allclose(np.asarray(out.logprobs), expected, atol=1e-4, err_msg=kind)
        np.testing.assert_array_equal(sequences[:, -6:], logits.argmax(-1))


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return jaxmath.from_pretrained(save_tiny(tiny_model("qwen2", seed=3), tmp_path_factory.mktemp("m")))


def test_samples_of_a_prompt_share_its_prefill_and_draw_their_own_streams(model):
    """num_samples = G equals the prompts repeated G times (each copy drawing sample c's stream); greedy
    samples of one prompt are identical, sampled ones are not."""
    ids = np.random.default_rng(0).integers(1, 100, (3, 7))
    kwargs = dict(max_new_tokens=10, temperature=1.0, seed=5)
    shared = generate(model, ids, num_samples=4, **kwargs)
    repeated = generate(model, np.repeat(ids, 4, axis=0), prompt_repeats=4, **kwargs)
    np.testing.assert_array_equal(np.asarray(shared.sequences), np.asarray(repeated.sequences))
    np.testing.assert_allclose(np.asarray(shared.logprobs), np.asarray(repeated.logprobs), atol=1e-5)
    new = np.asarray(shared.sequences)[:, 7:].reshape(3, 4, -1)
    assert all(len({tuple(s) for s in per_prompt}) > 1 for per_prompt in new)
    greedy = np.asarray(generate(model, ids, num_samples=3, max_new_tokens=10).sequences).reshape(3, 3, -1)
    assert (greedy == greedy[:, :1]).all()


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_continuous_batching_gives_each_prompt_what_it_gets_alone(model, monkeypatch, temperature):
    """Seven prompts of varied lengths through 2 slots (rows stop at EOS at different steps, slots refill,
    the generated-token cache grows through its buckets) give the tokens and log-probs of one batch of all."""
    monkeypatch.setattr(sampler, "SUFFIX_BUCKET", 4)
    rng = np.random.default_rng(1)
    prompts = [list(rng.integers(1, 100, rng.integers(3, 20))) for _ in range(7)]
    kwargs = dict(max_new_tokens=20, temperature=temperature, eos_token_id=EOS, seed=3)
    finished = []
    ours = generate_continuous(model, prompts, slots=2, num_samples=3, on_finish=lambda i, c: finished.append(i),
                               **kwargs)
    width = max(map(len, prompts))
    ids, mask = np.zeros((7, width), np.int32), np.zeros((7, width), np.int32)
    for i, p in enumerate(prompts):
        ids[i, :len(p)], mask[i, :len(p)] = p, 1
    batch = generate(model, ids, mask, num_samples=3, **kwargs)
    tokens, logprobs, lengths = (np.asarray(x) for x in (batch.sequences[:, width:], batch.logprobs, batch.lengths))
    assert sorted(finished) == list(range(7)) and len(set(lengths.tolist())) > 2  # stops at different steps
    for i in range(7):
        for g in range(3):
            row = 3 * i + g
            np.testing.assert_array_equal(ours[i][g].tokens, tokens[row, :lengths[row]])
            np.testing.assert_allclose(ours[i][g].logprobs, logprobs[row, :lengths[row]], atol=1e-5)


def test_a_completion_started_alone_is_the_same_in_a_batch(model):
    """Greedy rows do not depend on what else is in the batch (prefix lengths, other rows' stops)."""
    rng = np.random.default_rng(2)
    prompts = [list(rng.integers(1, 100, n)) for n in (4, 13, 8)]
    together = generate_continuous(model, prompts, slots=3, max_new_tokens=12, eos_token_id=EOS)
    for i, prompt in enumerate(prompts):
        alone = generate(model, np.asarray([prompt]), max_new_tokens=12, eos_token_id=EOS)
        n = int(alone.lengths[0])
        np.testing.assert_array_equal(together[i][0].tokens, np.asarray(alone.sequences)[0, len(prompt):][:n])


def _copies(hlo: str) -> list[str]:
    return re.findall(r"= \w+\[([0-9,]+)\]\{[^}]*\} copy\(", hlo)


def test_the_compiled_decode_loop_copies_no_weights_and_no_cache(model):
    """Per step, XLA must read each weight matrix and the cache in place: no copy of their shapes in the loop."""
    weights = prepare_weights(model)
    static, knobs, tables = sampler._settings(weights.config, 64, 0.0, 1.0, 0, 0.0, None, 0, None, None)
    ids = jnp.asarray(np.random.default_rng(0).integers(1, 100, (4, 16)), jnp.int32)
    rows = sampler._start_jit(weights, ids, jnp.full((4,), 16, jnp.int32),
                              sampler.row_keys(0, jnp.arange(2), jnp.tile(jnp.arange(2), (2, 1))), knobs, tables,
                              group_size=2, slots=64, static=static)
    hlo = sampler._decode_jit.lower(weights, rows, knobs, tables, jnp.bool_(False), static=static).compile().as_text()
    big = {",".join(map(str, leaf.shape)) for leaf in jax.tree.leaves((weights.head, weights.layers)) if leaf.ndim == 2}
    big |= {",".join(map(str, x.shape)) for x in (*rows.cache.suffix_keys, *rows.cache.prefix_keys,
                                                  *rows.cache.suffix_values, *rows.cache.prefix_values)}
    assert big and not [shape for shape in _copies(hlo) if shape in big]


@settings(max_examples=50, deadline=None)
@given(st.integers(1, 100_000), st.integers(1, 512))
def test_suffix_buckets_cover_the_completion_and_at_most_double(max_new_tokens, first):
    sizes = suffix_buckets(max_new_tokens, first)
    assert sizes[-1] == max(max_new_tokens - 1, 1) and sizes[0] <= first
    assert all(b > a and b <= 2 * a for a, b in zip(sizes, sizes[1:]))
    assert len(sizes) <= 2 + int(np.log2(max(max_new_tokens / first, 1)))


def test_bad_requests_are_named(model):
    with pytest.raises(ValueError, match=r"prompt\(s\) \[1\] have no tokens"):
        generate_continuous(model, [[1, 2], []])
    with pytest.raises(ValueError, match="num_samples"):
        generate(model, np.ones((1, 3), np.int32), num_samples=0)
    with pytest.raises(ValueError, match="differs from the prepared weights"):
        generate(prepare_weights(model), np.ones((1, 3), np.int32), cache_dtype="bfloat16")
    with pytest.raises(TypeError, match="CausalLM"):
        prepare_weights(object())


def test_prompts_supplied_later_and_an_early_stop(model):
    """Prompts handed over by `more()` as slots free up get what they would get in one batch of all (numbered
    on from the first ones); `on_finish` returning True ends the run with the prompts still decoding empty."""
    rng = np.random.default_rng(3)
    prompts = [list(rng.integers(1, 100, rng.integers(3, 12))) for _ in range(6)]
    kwargs = dict(max_new_tokens=12, temperature=1.0, eos_token_id=EOS, seed=4, num_samples=2)
    supplies = [prompts[2:4], prompts[4:], []]
    calls = []
    later = generate_continuous(model, prompts[:2], slots=2, more=lambda: calls.append(1) or supplies.pop(0),
                                **kwargs)
    at_once = generate_continuous(model, prompts, slots=6, **kwargs)
    assert len(later) == 6 and len(calls) == 3
    for ours, theirs in zip(later, at_once):
        assert [c.tokens.tolist() for c in ours] == [c.tokens.tolist() for c in theirs]
    order = []
    stopped = generate_continuous(model, prompts, slots=2, on_finish=lambda i, c: order.append(i) or len(order) == 3,
                                  **kwargs)
    assert sum(bool(r) for r in stopped) == 3 and all(stopped[i] for i in order)
    with pytest.raises(ValueError, match="longer than the run's prefix size"):
        generate_continuous(model, [[1, 2]], slots=1, more=lambda: [list(range(1, 80))], **kwargs)
