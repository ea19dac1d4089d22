"""KV-cache sampler: prefill, then one compiled decode loop; greedy, temperature, top-k, top-p and min-p.

`generate` is shaped like `transformers`' `generate`: left-padded prompts in, token ids and per-token
log-probabilities out. The whole call (prefill, decode loop, stop checks) is one jitted function, compiled
once per input shape and static setting; the loop is a `jax.lax.while_loop` that exits as soon as every row
has stopped. Under an ambient mesh (`jax.set_mesh`) the cache is sharded like the model's activations
(batch over data/fsdp, kv heads over tensor), so weights and cache stay distributed.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import TYPE_CHECKING, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxmath.models.cache import KVCache
from jaxmath.models.transformer import CausalLM
from jaxmath.parallel import shard_activation

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

NO_CHAR = -1  # fills stop-string windows where there is no text yet; never equals a character


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class GenerationOutput:
    """What `generate` returns; every array has the batch first.

    sequences: [B, prompt + new] prompt ids (left-aligned as fed to the model) then the new tokens,
        `pad_token_id` after each row's stopping token.
    logprobs: [B, new] log-probability of each generated token under the *unmodified* model
        distribution (softmax of the raw logits, temperature 1); 0 after the stopping token.
    sampling_logprobs: [B, new] log-probability under the distribution the token was actually drawn from
        (after temperature, top-k, top-p, min-p): the behaviour policy for importance ratios. 0 for greedy.
    lengths: [B] number of generated tokens per row, the stopping token (EOS or stop string) included.
    """

    sequences: jax.Array
    logprobs: jax.Array
    sampling_logprobs: jax.Array
    lengths: jax.Array


def warp_logits(logits: jax.Array, temperature: float | jax.Array, top_k: int = 0,
                top_p: float | jax.Array | None = None,
                min_p: float | jax.Array | None = None) -> tuple[jax.Array, jax.Array | None]:
    """Sampling scores: logits / temperature, then top-k, top-p and min-p masks (-inf), in transformers' order.

    Returns candidate scores [B, K] and their token ids [B, K], or ids None when the candidates are the
    whole vocabulary in order (no top-k or top-p, which need the logits sorted). `top_p`/`min_p` None
    means not applied.
    """
    scores = logits.astype(jnp.float32) / temperature
    vocab = scores.shape[-1]
    ids = None
    if 0 < top_k < vocab or top_p is not None:
        scores, ids = jax.lax.top_k(scores, top_k if 0 < top_k < vocab else vocab)
    if top_p is not None:  # keep the smallest prefix of the sorted tokens whose mass reaches top_p
        probs = jax.nn.softmax(scores, axis=-1)
        mass_before = jnp.cumsum(probs, axis=-1) - probs
        scores = jnp.where(mass_before < top_p, scores, -jnp.inf)
    if min_p is not None:  # drop tokens less likely than min_p times the most likely one
        probs = jax.nn.softmax(scores, axis=-1)
        scores = jnp.where(probs >= min_p * probs.max(axis=-1, keepdims=True), scores, -jnp.inf)
    return scores, ids


@dataclasses.dataclass(frozen=True)
class StopTables:
    """Stop strings and, per vocabulary token, what of its text a stop-string check needs (code points).

    width = longest stop string - 1: the most characters a match can take from either side of a token
    boundary. head/tail hold each token's first/last `width` characters (NO_CHAR where shorter);
    contains says whether a stop string lies wholly inside the token's text.
    """

    stops: jax.Array  # [S, max_len] int32, NO_CHAR padded
    stop_lengths: jax.Array  # [S]
    head: jax.Array  # [V, width]
    head_lengths: jax.Array  # [V]
    tail: jax.Array  # [V, width]
    contains: jax.Array  # [V] bool

    @property
    def width(self) -> int:
        return self.head.shape[1]


jax.tree_util.register_dataclass(StopTables, data_fields=[f.name for f in dataclasses.fields(StopTables)],
                                 meta_fields=[])


@functools.lru_cache(maxsize=4)
def token_texts(tokenizer: PreTrainedTokenizerBase, vocab_size: int) -> tuple[str, ...]:
    """Each token id's text as it reads *inside* a longer text (leading spaces kept); "" past the tokenizer."""
    prefix = tokenizer.encode("a", add_special_tokens=False)
    prefix_text = tokenizer.decode(prefix, clean_up_tokenization_spaces=False)
    known = min(vocab_size, len(tokenizer))
    decoded = tokenizer.batch_decode([prefix + [t] for t in range(known)], clean_up_tokenization_spaces=False)
    texts = [text[len(prefix_text):] if text.startswith(prefix_text) else text for text in decoded]
    return tuple(texts) + ("",) * (vocab_size - known)


def _code_points(texts: Sequence[str], width: int, from_end: bool = False) -> np.ndarray:
    """[len(texts), width] code points of each text's first (or last) `width` characters, NO_CHAR padded."""
    out = np.full((len(texts), width), NO_CHAR, np.int32)
    for row, text in enumerate(texts):
        part = (text[-width:] if from_end else text[:width]) if width else ""
        if part:
            codes = [ord(c) for c in part]
            if from_end:
                out[row, width - len(codes):] = codes
            else:
                out[row, :len(codes)] = codes
    return out


@functools.lru_cache(maxsize=8)
def stop_tables(tokenizer: PreTrainedTokenizerBase, stop_strings: tuple[str, ...], vocab_size: int) -> StopTables:
    """Precompute, on the host, the per-token tables the compiled loop uses to spot stop strings (cached)."""
    return stop_tables_from_texts(token_texts(tokenizer, vocab_size), stop_strings)


def stop_tables_from_texts(texts: Sequence[str], stop_strings: Sequence[str]) -> StopTables:
    """Stop-string tables for a vocabulary given as each token id's text."""
    stops = list(stop_strings)
    if not stops or any(not isinstance(s, str) or not s for s in stops):
        raise ValueError(f"stop_strings must be non-empty strings, got {stops!r}")
    width = max(len(s) for s in stops) - 1
    return StopTables(
        stops=jnp.asarray(_code_points(stops, width + 1)),
        stop_lengths=jnp.asarray([len(s) for s in stops], jnp.int32),
        head=jnp.asarray(_code_points(texts, width)),
        head_lengths=jnp.asarray([min(len(t), width) for t in texts], jnp.int32),
        tail=jnp.asarray(_code_points(texts, width, from_end=True)),
        contains=jnp.asarray([any(s in t for s in stops) for t in texts], bool),
    )


def stop_string_hits(tables: StopTables, window: jax.Array, tokens: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Whether each row's new token completes a stop string, and each row's updated window.

    `window` [B, width] holds the last `width` characters of each row's generated text (NO_CHAR before the
    start). A match either lies inside the new token (the `contains` table) or starts in the window and
    ends inside the token; matches wholly inside earlier text were caught when their last token arrived.
    """
    hit = tables.contains[tokens]
    width = tables.width
    if width == 0:  # only one-character stop strings: a match always lies inside one token
        return hit, window
    head, count = tables.head[tokens], tables.head_lengths[tokens]
    text = jnp.concatenate([window, head], axis=1)  # [B, 2 * width]
    max_len = tables.stops.shape[1]
    padded = jnp.pad(text, ((0, 0), (0, max_len)), constant_values=NO_CHAR)
    starts = jnp.arange(width)
    candidates = padded[:, starts[:, None] + jnp.arange(max_len)]  # [B, width, max_len]
    beyond = jnp.arange(max_len) >= tables.stop_lengths[:, None]  # [S, max_len]
    same = (candidates[:, None] == tables.stops[None, :, None, :]) | beyond[None, :, None, :]
    ends = starts[None, :] + tables.stop_lengths[:, None]  # [S, width], exclusive
    in_token = (ends > width)[None] & (ends <= width + count[:, None, None])
    hit = hit | (same.all(-1) & in_token).any(axis=(1, 2))
    shifted = jax.vmap(lambda row, n: jax.lax.dynamic_slice(row, (n,), (width,)))(text, count)
    return hit, jnp.where((count >= width)[:, None], tables.tail[tokens], shifted)


@dataclasses.dataclass(frozen=True)
class _Static:
    """The settings that shape the compiled program (one compilation per distinct value)."""

    max_new_tokens: int
    greedy: bool
    top_k: int
    use_top_p: bool
    use_min_p: bool
    eos_ids: tuple[int, ...]
    pad_token_id: int
    cache_dtype: str | None


class _Knobs(NamedTuple):
    """Sampling settings passed as traced scalars, so changing them does not recompile."""

    temperature: jax.Array
    top_p: jax.Array
    min_p: jax.Array


class _Carry(NamedTuple):
    step: jax.Array  # index of the next token to choose
    tokens: jax.Array  # [B, N]
    logprobs: jax.Array  # [B, N]
    sampling_logprobs: jax.Array  # [B, N]
    lengths: jax.Array  # [B]
    done: jax.Array  # [B]
    window: jax.Array  # [B, width] tail of each row's text, for stop strings
    cache: KVCache


def _choose(logits: jax.Array, step: jax.Array, row_keys: jax.Array, knobs: _Knobs,
            static: _Static) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Next token per row, its log-prob under the raw model distribution and under the sampling one."""
    logits = logits.astype(jnp.float32)
    if static.greedy:
        token = jnp.argmax(logits, axis=-1).astype(jnp.int32)
        sampling_logprob = jnp.zeros(token.shape, jnp.float32)
    else:
        scores, ids = warp_logits(logits, knobs.temperature, static.top_k,
                                  knobs.top_p if static.use_top_p else None,
                                  knobs.min_p if static.use_min_p else None)
        keys = jax.vmap(jax.random.fold_in, in_axes=(0, None))(row_keys, step)
        choice = jax.vmap(jax.random.categorical)(keys, scores)[:, None]
        token = (choice if ids is None else jnp.take_along_axis(ids, choice, axis=-1))[:, 0].astype(jnp.int32)
        sampling_logprob = jnp.take_along_axis(jax.nn.log_softmax(scores, axis=-1), choice, axis=-1)[:, 0]
    logprob = jnp.take_along_axis(jax.nn.log_softmax(logits, axis=-1), token[:, None], axis=-1)[:, 0]
    return token, logprob, sampling_logprob


def _record(carry: _Carry, choice: tuple[jax.Array, jax.Array, jax.Array], tables: StopTables | None,
            static: _Static) -> _Carry:
    """Write the chosen tokens at `carry.step` (pad for finished rows) and mark rows that just stopped."""
    token, logprob, sampling_logprob = choice
    active = ~carry.done
    token = jnp.where(active, token, static.pad_token_id)
    stopped = jnp.isin(token, jnp.asarray(static.eos_ids, jnp.int32)) if static.eos_ids else jnp.zeros_like(active)
    window = carry.window
    if tables is not None:
        hit, moved = stop_string_hits(tables, window, token)
        stopped, window = stopped | hit, jnp.where(active[:, None], moved, window)

    def put(buffer: jax.Array, value: jax.Array) -> jax.Array:
        return jax.lax.dynamic_update_slice(buffer, value[:, None].astype(buffer.dtype), (0, carry.step))

    return carry._replace(
        step=carry.step + 1,
        tokens=put(carry.tokens, token),
        logprobs=put(carry.logprobs, jnp.where(active, logprob, 0.0)),
        sampling_logprobs=put(carry.sampling_logprobs, jnp.where(active, sampling_logprob, 0.0)),
        lengths=carry.lengths + active,
        done=carry.done | (active & stopped),
        window=window,
    )


def _empty_cache(model: CausalLM, batch: int, slots: int, dtype: str | None) -> KVCache:
    """A preallocated cache, sharded like the attention activations under an ambient mesh."""
    cache = KVCache.init(model.config, batch, slots, dtype)
    kv_axes = ("layers", "batch", "length", "act_kv_heads", "head_dim")
    return KVCache(shard_activation(cache.keys, kv_axes), shard_activation(cache.values, kv_axes),
                   shard_activation(cache.positions, ("batch", "length")),
                   shard_activation(cache.segments, ("batch", "length")))


def _generate_impl(graphdef: nnx.GraphDef, state: nnx.State, input_ids: jax.Array, attention_mask: jax.Array,
                   key: jax.Array, knobs: _Knobs, tables: StopTables | None, static: _Static) -> GenerationOutput:
    model = nnx.merge(graphdef, state)
    batch, prompt_len = input_ids.shape
    new = static.max_new_tokens
    order = jnp.argsort(attention_mask, axis=1, stable=True)  # left-align: padding first, order kept
    input_ids = jnp.take_along_axis(input_ids, order, axis=1).astype(jnp.int32)
    mask = jnp.take_along_axis(attention_mask, order, axis=1).astype(jnp.int32)
    prompt_tokens = mask.sum(axis=1)
    positions = jnp.maximum(jnp.cumsum(mask, axis=1) - 1, 0)
    cache = _empty_cache(model, batch, prompt_len + new, static.cache_dtype)
    hidden, cache = model.model.extend(input_ids, positions, mask, cache, 0)
    logits = model.logits_from_hidden(hidden[:, -1:])[:, 0]  # only the last prompt token's logits are needed
    row_keys = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(key, jnp.arange(batch))
    width = 0 if tables is None else tables.width
    carry = _Carry(jnp.int32(0), jnp.full((batch, new), static.pad_token_id, jnp.int32),
                   jnp.zeros((batch, new), jnp.float32), jnp.zeros((batch, new), jnp.float32),
                   jnp.zeros((batch,), jnp.int32), jnp.zeros((batch,), bool),
                   jnp.full((batch, width), NO_CHAR, jnp.int32), cache)
    carry = _record(carry, _choose(logits, carry.step, row_keys, knobs, static), tables, static)

    def unfinished(c: _Carry) -> jax.Array:
        return (c.step < new) & ~c.done.all()

    def decode_one(c: _Carry) -> _Carry:
        previous = jax.lax.dynamic_slice_in_dim(c.tokens, c.step - 1, 1, axis=1)
        logits, cache = model.extend(previous, (prompt_tokens + c.step - 1)[:, None], jnp.ones_like(previous),
                                     c.cache, prompt_len + c.step - 1)
        c = c._replace(cache=cache)
        return _record(c, _choose(logits[:, 0], c.step, row_keys, knobs, static), tables, static)

    carry = jax.lax.while_loop(unfinished, decode_one, carry)
    return GenerationOutput(jnp.concatenate([input_ids, carry.tokens], axis=1), carry.logprobs,
                            carry.sampling_logprobs, carry.lengths)


_generate_jit = jax.jit(_generate_impl, static_argnames=("graphdef", "static"))


def _as_ids(eos_token_id: int | Sequence[int] | None) -> tuple[int, ...]:
    if eos_token_id is None:
        return ()
    ids = (eos_token_id,) if isinstance(eos_token_id, (int, np.integer)) else tuple(eos_token_id)
    if not all(isinstance(i, (int, np.integer)) and i >= 0 for i in ids):
        raise ValueError(f"eos_token_id must be a non-negative int or a list of them, got {eos_token_id!r}")
    return tuple(sorted({int(i) for i in ids}))


def _check_prompts(input_ids: jax.Array | np.ndarray,
                   attention_mask: jax.Array | np.ndarray | None) -> tuple[jax.Array, jax.Array]:
    """Validate the prompt batch; raise naming the argument (and the row) that is wrong."""
    ids = jnp.asarray(input_ids)
    if ids.ndim != 2 or ids.shape[1] == 0 or not jnp.issubdtype(ids.dtype, jnp.integer):
        raise ValueError(f"input_ids must be a non-empty [batch, length] integer array, got shape {ids.shape} "
                         f"dtype {ids.dtype}")
    if attention_mask is None:
        return ids, jnp.ones(ids.shape, jnp.int32)
    if isinstance(attention_mask, jax.Array) and not attention_mask.is_fully_addressable:
        return ids, attention_mask.astype(jnp.int32)  # a multi-host global batch: each host checked its rows
    host = np.asarray(attention_mask)
    if host.shape != ids.shape:
        raise ValueError(f"attention_mask shape {host.shape} differs from input_ids shape {ids.shape}")
    if not np.isin(host, (0, 1)).all():
        raise ValueError("attention_mask must hold only 0 and 1")
    empty = np.flatnonzero(host.sum(axis=1) == 0)
    if empty.size:
        raise ValueError(f"prompt row(s) {empty.tolist()} have no tokens (attention_mask all zero)")
    return ids, jnp.asarray(host, jnp.int32)


def generate(model: CausalLM, input_ids: jax.Array | np.ndarray, attention_mask: jax.Array | np.ndarray | None = None,
             max_new_tokens: int = 128, temperature: float = 0.0, top_p: float = 1.0, top_k: int = 0,
             min_p: float = 0.0, eos_token_id: int | Sequence[int] | None = None, pad_token_id: int = 0,
             seed: int = 0, cache_dtype: str | None = None, stop_strings: Sequence[str] | None = None,
             tokenizer: PreTrainedTokenizerBase | None = None) -> GenerationOutput:
    """Continue a batch of prompts with a preallocated KV cache; greedy when temperature is 0.

    Prompts may carry padding on either side (`attention_mask` 0); they are left-aligned before decoding.
    A row stops after an `eos_token_id` token or once its text contains one of `stop_strings` (which needs
    `tokenizer`); later slots hold `pad_token_id`. Sampling applies temperature, then top-k, top-p and
    min-p (transformers' order); `seed` makes it reproducible, and each row draws from its own stream.
    `cache_dtype` (e.g. "bfloat16") defaults to the model's compute dtype. Under `jax.set_mesh(mesh)` the
    cache is sharded over the mesh like the model's activations.
    """
    if not isinstance(model, CausalLM):
        raise TypeError(f"generate needs a CausalLM, got {type(model).__name__}")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    if top_k < 0:
        raise ValueError(f"top_k must be >= 0, got {top_k}")
    if not 0.0 <= min_p <= 1.0:
        raise ValueError(f"min_p must be in [0, 1], got {min_p}")
    if isinstance(stop_strings, str):
        raise ValueError(f"stop_strings must be a list of strings, got the string {stop_strings!r}")
    if stop_strings and tokenizer is None:
        raise ValueError("stop_strings need the tokenizer (pass tokenizer=...)")
    ids, mask = _check_prompts(input_ids, attention_mask)
    static = _Static(max_new_tokens=int(max_new_tokens), greedy=temperature == 0.0, top_k=int(top_k),
                     use_top_p=top_p < 1.0, use_min_p=min_p > 0.0, eos_ids=_as_ids(eos_token_id),
                     pad_token_id=int(pad_token_id), cache_dtype=cache_dtype)
    knobs = _Knobs(*(jnp.float32(x) for x in (temperature or 1.0, top_p, min_p)))
    tables = stop_tables(tokenizer, tuple(stop_strings), model.config.vocab_size) if stop_strings else None
    graphdef, state = nnx.split(model)
    return _generate_jit(graphdef, state, ids, mask, jax.random.key(seed), knobs, tables, static=static)


def completion_texts(output: GenerationOutput, tokenizer: PreTrainedTokenizerBase,
                     stop_strings: Sequence[str] | None = None) -> list[str]:
    """Each row's generated text (special tokens dropped), cut just before the first stop string."""
    new = output.logprobs.shape[1]
    tokens, lengths = np.asarray(output.sequences[:, -new:]), np.asarray(output.lengths)
    texts = tokenizer.batch_decode([row[:n].tolist() for row, n in zip(tokens, lengths)], skip_special_tokens=True)
    return [truncate_at_stop(text, stop_strings or ()) for text in texts]


def truncate_at_stop(text: str, stop_strings: Sequence[str]) -> str:
    """`text` up to (not including) the earliest occurrence of any stop string."""
    cuts = [i for i in (text.find(s) for s in stop_strings) if i >= 0]
    return text[:min(cuts)] if cuts else text
