"""The KV-cache sampler against transformers (greedy parity, warpers) and against host-side references."""
import jax
import numpy as np
import pytest
import torch
from flax import nnx
from transformers.generation.logits_process import (MinPLogitsWarper, TemperatureLogitsWarper, TopKLogitsWarper,
                                                    TopPLogitsWarper)

import jaxmath
from jaxmath.data.tokenizer import train_tokenizer
from jaxmath.models import ModelConfig, build_model
from jaxmath.parallel import make_mesh
from jaxmath.inference.sampler import (completion_texts, stop_string_hits, stop_tables_from_texts, truncate_at_stop,
                              warp_logits)
from tiny_hf import hf_logits, save_tiny, tiny_config, tiny_model

NEW = 10


def prompts(vocab: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """Four prompts of lengths 11, 7, 3 and 9, left padded to 11."""
    rng = np.random.default_rng(7)
    ids = rng.integers(3, vocab, (4, 11))
    mask = np.ones_like(ids)
    for row, length in enumerate((11, 7, 3, 9)):
        mask[row, :11 - length] = 0
        ids[row, :11 - length] = 0
    return ids, mask


def hf_greedy(hf, ids: np.ndarray, mask: np.ndarray, new: int = NEW, **kwargs) -> np.ndarray:
    hf.generation_config.eos_token_id = None
    with torch.no_grad():
        out = hf.generate(torch.tensor(ids), attention_mask=torch.tensor(mask), do_sample=False,
                          max_new_tokens=new, pad_token_id=0, **kwargs)
    return out.numpy()


def chosen_logprobs(hf, sequences: np.ndarray, mask: np.ndarray, new: int) -> np.ndarray:
    """Reference: log-softmax of one full HF forward pass over prompt + completion, at the chosen tokens."""
    full_mask = np.concatenate([mask, np.ones((mask.shape[0], new), mask.dtype)], axis=1)
    logits = torch.tensor(hf_logits(hf, sequences, full_mask)[:, -new - 1:-1])
    logp = torch.log_softmax(logits.double(), dim=-1).numpy()
    return np.take_along_axis(logp, sequences[:, -new:, None], axis=-1)[..., 0]


@pytest.fixture(scope="module")
def qwen2_dir(tmp_path_factory):
    hf = tiny_model("qwen2")
    return hf, save_tiny(hf, tmp_path_factory.mktemp("qwen2"))


@pytest.fixture(scope="module")
def qwen2(qwen2_dir):
    hf, path = qwen2_dir
    return hf, jaxmath.from_pretrained(path)


@pytest.mark.parametrize("model_type,overrides", [("qwen2", {}), ("llama", dict(attention_bias=True)),
                                                  ("qwen3", dict(head_dim=24, tie_word_embeddings=True))])
def test_greedy_equals_transformers_and_logprobs_equal_full_forward(model_type, overrides, tmp_path):
    hf = tiny_model(model_type, seed=1, **overrides)
    model = jaxmath.from_pretrained(save_tiny(hf, tmp_path / "hf"))
    ids, mask = prompts()
    out = jaxmath.generate(model, ids, attention_mask=mask, max_new_tokens=NEW)
    expected = hf_greedy(hf, ids, mask)
    np.testing.assert_array_equal(np.asarray(out.sequences), expected)
    np.testing.assert_array_equal(np.asarray(out.lengths), [NEW] * 4)
    np.testing.assert_allclose(np.asarray(out.logprobs), chosen_logprobs(hf, expected, mask, NEW), atol=1e-4)
    assert not np.asarray(out.sampling_logprobs).any()  # greedy is deterministic: log-prob 0


def test_right_padded_prompts_are_left_aligned(qwen2):
    _, model = qwen2
    ids, mask = prompts()
    left = jaxmath.generate(model, ids, attention_mask=mask, max_new_tokens=4)
    order = np.argsort(-mask, axis=1, kind="stable")  # real tokens first, padding last
    right = jaxmath.generate(model, np.take_along_axis(ids, order, 1), np.take_along_axis(mask, order, 1),
                             max_new_tokens=4)
    np.testing.assert_array_equal(np.asarray(right.sequences), np.asarray(left.sequences))


def test_eos_stops_each_row_and_pads_after(qwen2):
    hf, model = qwen2
    ids, mask = prompts()
    free = np.asarray(jaxmath.generate(model, ids, attention_mask=mask, max_new_tokens=NEW).sequences)[:, -NEW:]
    eos = int(free[0, 3])
    pad = 1
    out = jaxmath.generate(model, ids, attention_mask=mask, max_new_tokens=NEW, eos_token_id=[eos, 127],
                           pad_token_id=pad)
    tokens, logprobs = np.asarray(out.sequences)[:, -NEW:], np.asarray(out.logprobs)
    for row in range(4):
        hits = np.flatnonzero(np.isin(free[row], [eos, 127]))
        length = hits[0] + 1 if hits.size else NEW
        assert out.lengths[row] == length
        np.testing.assert_array_equal(tokens[row, :length], free[row, :length])
        assert (tokens[row, length:] == pad).all() and (logprobs[row, length:] == 0).all()
        assert (logprobs[row, :length] < 0).all()
    with torch.no_grad():  # transformers pads finished rows the same way
        reference = hf.generate(torch.tensor(ids), attention_mask=torch.tensor(mask), do_sample=False,
                                max_new_tokens=NEW, eos_token_id=[eos, 127], pad_token_id=pad).numpy()
    np.testing.assert_array_equal(np.asarray(out.sequences)[:, :reference.shape[1]], reference)


@pytest.mark.slow
def test_top_k_one_equals_greedy_and_sampling_is_seeded(qwen2):
    _, model = qwen2
    ids, mask = prompts()
    greedy = jaxmath.generate(model, ids, attention_mask=mask, max_new_tokens=NEW)
    top1 = jaxmath.generate(model, ids, attention_mask=mask, max_new_tokens=NEW, temperature=0.8, top_k=1, seed=5)
    np.testing.assert_array_equal(np.asarray(top1.sequences), np.asarray(greedy.sequences))
    np.testing.assert_allclose(np.asarray(top1.logprobs), np.asarray(greedy.logprobs), atol=1e-6)
    assert not np.asarray(top1.sampling_logprobs).any()  # one candidate: probability 1

    def sample(seed: int):
        return jaxmath.generate(model, ids, attention_mask=mask, max_new_tokens=NEW, temperature=1.0, seed=seed)

    first, again, other = sample(3), sample(3), sample(4)
    np.testing.assert_array_equal(np.asarray(first.sequences), np.asarray(again.sequences))
    assert (np.asarray(first.sequences) != np.asarray(other.sequences)).any()
    assert (np.asarray(first.sequences) != np.asarray(greedy.sequences)).any()
    # At temperature 1 with no truncation the sampling distribution is the model's own.
    np.testing.assert_allclose(np.asarray(first.sampling_logprobs), np.asarray(first.logprobs), atol=1e-5)


@pytest.mark.parametrize("settings", [dict(temperature=0.7, top_k=10), dict(temperature=1.3, top_p=0.8),
                                      dict(temperature=1.0, min_p=0.1),
                                      dict(temperature=0.6, top_k=20, top_p=0.9, min_p=0.05)])
def test_warped_distribution_equals_transformers_warpers(settings):
    logits = np.random.default_rng(0).normal(0, 3, (6, 50)).astype(np.float32)
    warpers = [TemperatureLogitsWarper(settings["temperature"])]
    if "top_k" in settings:
        warpers.append(TopKLogitsWarper(settings["top_k"]))
    if "top_p" in settings:
        warpers.append(TopPLogitsWarper(settings["top_p"]))
    if "min_p" in settings:
        warpers.append(MinPLogitsWarper(settings["min_p"]))
    scores = torch.tensor(logits)
    for warper in warpers:
        scores = warper(None, scores)
    expected = torch.log_softmax(scores, dim=-1).numpy()

    ours, ids = warp_logits(jax.numpy.asarray(logits), settings["temperature"], settings.get("top_k", 0),
                            settings.get("top_p"), settings.get("min_p"))
    ours = np.asarray(jax.nn.log_softmax(ours, axis=-1))
    full = np.full_like(expected, -np.inf)
    ids = np.broadcast_to(np.arange(50), ours.shape) if ids is None else np.asarray(ids)
    np.put_along_axis(full, ids, ours, axis=-1)
    np.testing.assert_array_equal(np.isfinite(full), np.isfinite(expected))
    assert 0 < np.isfinite(expected).sum() < expected.size  # the settings really truncate
    np.testing.assert_allclose(full[np.isfinite(full)], expected[np.isfinite(expected)], atol=1e-5)


def test_sharded_generation_equals_unsharded(qwen2_dir, qwen2):
    _, path = qwen2_dir
    ids, mask = prompts()
    settings = dict(attention_mask=mask, max_new_tokens=NEW, temperature=1.0, seed=11)
    single = jaxmath.generate(qwen2[1], ids, **settings)
    mesh = make_mesh((2, 2, 2))
    sharded_model = jaxmath.from_pretrained(path, mesh=mesh)
    with jax.set_mesh(mesh):
        sharded = jaxmath.generate(sharded_model, ids, **settings)
    np.testing.assert_array_equal(np.asarray(sharded.sequences), np.asarray(single.sequences))
    np.testing.assert_allclose(np.asarray(sharded.logprobs), np.asarray(single.logprobs), atol=1e-5)


def test_bfloat16_cache_tracks_float32(qwen2):
    _, model = qwen2
    ids, mask = prompts()
    f32 = jaxmath.generate(model, ids, attention_mask=mask, max_new_tokens=1)
    bf16 = jaxmath.generate(model, ids, attention_mask=mask, max_new_tokens=1, cache_dtype="bfloat16")
    np.testing.assert_array_equal(np.asarray(bf16.sequences), np.asarray(f32.sequences))
    np.testing.assert_allclose(np.asarray(bf16.logprobs), np.asarray(f32.logprobs), atol=3e-2)


def first_stop(texts: list[str], tokens: np.ndarray, stops: list[str]) -> int | None:
    """Host reference: the first step after which the concatenated token texts contain a stop string."""
    text = ""
    for step, token in enumerate(tokens):
        text += texts[token]
        if any(s in text for s in stops):
            return step
    return None


def test_stop_string_hits_equal_a_host_search():
    texts = ["ab", "c", "abc", "x", "cab", "", "b", "xabcx", "a"]
    stops = ["abc", "bx", "cc"]
    tables = stop_tables_from_texts(texts, stops)
    sequences = np.random.default_rng(0).integers(0, len(texts), (64, 12))
    window = jax.numpy.full((64, tables.width), -1, jax.numpy.int32)
    hits = []
    for step in range(sequences.shape[1]):
        hit, window = stop_string_hits(tables, window, jax.numpy.asarray(sequences[:, step]))
        hits.append(np.asarray(hit))
    hits = np.stack(hits, axis=1)
    expected = [first_stop(texts, row, stops) for row in sequences]
    assert sum(e is not None for e in expected) > 40 and any(e is None or e > 3 for e in expected)
    for row, first in enumerate(expected):
        ours = np.flatnonzero(hits[row])
        assert (ours[0] if ours.size else None) == first, (row, sequences[row])


@pytest.mark.slow
def test_stop_strings_end_rows_in_generation(tmp_path):
    tokenizer = train_tokenizer(["The answer is 42. Then 17 + 25 = 42 and so on."] * 20, vocab_size=300)
    model = jaxmath.from_pretrained(save_tiny(tiny_model("qwen2", seed=3, vocab_size=len(tokenizer)), tmp_path))
    ids = np.asarray([tokenizer.encode("The answer is")] * 3)
    free = jaxmath.generate(model, ids, max_new_tokens=16, temperature=1.0, seed=1)
    texts = [tokenizer.decode([t]) for t in range(len(tokenizer))]
    generated = np.asarray(free.sequences)[:, ids.shape[1]:]
    row0 = "".join(texts[t] for t in generated[0])
    stop = next(row0[i:i + 3] for i in range(len(row0) - 3)  # ASCII, and first complete at step 2 or later
                if row0[i:i + 3].isascii() and first_stop(texts, generated[0], [row0[i:i + 3]]) >= 2)
    out = jaxmath.generate(model, ids, max_new_tokens=16, temperature=1.0, seed=1, stop_strings=[stop],
                           tokenizer=tokenizer)
    for row in range(3):
        first = first_stop(texts, generated[row], [stop])
        length = 16 if first is None else first + 1
        assert int(out.lengths[row]) == length
        np.testing.assert_array_equal(np.asarray(out.sequences)[row, ids.shape[1]:][:length], generated[row, :length])
    completions = completion_texts(out, tokenizer, [stop])
    length0 = int(out.lengths[0])  # decoded jointly: byte-level tokens may merge into characters across tokens
    assert stop not in completions[0] and tokenizer.decode(generated[0, :length0]).startswith(completions[0])


def test_truncate_at_stop_cuts_at_the_earliest_stop():
    assert truncate_at_stop("x = 1\nQuestion: y\n\n", ["\n\n", "Question:"]) == "x = 1\n"
    assert truncate_at_stop("no stop here", ["Question:"]) == "no stop here"


def test_bad_arguments_are_named(qwen2):
    _, model = qwen2
    ids, mask = prompts()
    mask[2] = 0
    with pytest.raises(ValueError, match=r"row\(s\) \[2\]"):
        jaxmath.generate(model, ids, attention_mask=mask)
    with pytest.raises(ValueError, match="tokenizer"):
        jaxmath.generate(model, ids, stop_strings=["\n\n"])
    with pytest.raises(ValueError, match="list of strings"):
        jaxmath.generate(model, ids, stop_strings="\n\n")
    with pytest.raises(ValueError, match="top_p"):
        jaxmath.generate(model, ids, top_p=0.0)
    with pytest.raises(ValueError, match="attention_mask shape"):
        jaxmath.generate(model, ids, attention_mask=mask[:, 1:])
    classifier = nnx.eval_shape(lambda: build_model(ModelConfig.from_hf(tiny_config("qwen2").to_dict(), num_labels=2)))
    with pytest.raises(TypeError, match="CausalLM"):
        jaxmath.generate(classifier, ids)
