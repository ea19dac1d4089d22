"""The sampler: prefill each prompt once, then decode its samples; greedy, temperature, top-k, top-p, min-p,
stop ids and stop strings, all inside the compiled step.

`generate` is shaped like `transformers`' `generate`: padded prompts in, token ids and per-token
log-probabilities out. It runs on the model's decode copy (jaxmath.inference.weights) and the two-part cache
of jaxmath.inference.forward. Three compiled pieces: start (prefill + first tokens), decode (a
`jax.lax.while_loop` of steps that exits when every row stopped, the generated-token cache is full, or a
prompt slot frees up for continuous batching), and grow (the cache's next size bucket). Under an ambient mesh
(`jax.set_mesh`) weights and cache are sharded like the model's activations.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import TYPE_CHECKING, Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxmath.inference.config import Sampling
from jaxmath.inference.forward import Cache, decode_step, empty_suffix, grow_suffix, prefill
from jaxmath.inference.weights import DecodeWeights, prepare_weights
from jaxmath.models import CausalLM, ModelConfig

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

NO_CHAR = -1  # fills stop-string windows where there is no text yet; never equals a character
SUFFIX_BUCKET = 128  # the first size of the generated-token cache; it doubles as rows grow past it
LENGTH_BUCKET = 64  # prompts are padded to a multiple of this, so a run compiles once per bucket


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


class _Knobs(NamedTuple):
    """Sampling settings passed as traced scalars, so changing them does not recompile."""

    temperature: jax.Array
    top_p: jax.Array
    min_p: jax.Array


class _Rows(NamedTuple):
    """The decoding state of B = U x G rows (row r continues prompt slot r // G)."""

    cache: Cache
    last: jax.Array  # [B] the token each row feeds next
    tokens: jax.Array  # [B, N] chosen tokens, pad after the stop
    logprobs: jax.Array  # [B, N]
    sampling_logprobs: jax.Array  # [B, N]
    lengths: jax.Array  # [B] tokens chosen so far
    done: jax.Array  # [B]
    window: jax.Array  # [B, width] tail of each row's text, for stop strings
    keys: jax.Array  # [B] each row's random stream (fold_in the token index per draw)


def _choose(logits: jax.Array, index: jax.Array, row_keys: jax.Array, knobs: _Knobs,
            static: _Static) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Next token per row (the `index`-th of its completion), its log-prob under the raw model distribution and
    under the sampling one."""
    logits = logits.astype(jnp.float32)
    if static.greedy:
        token = jnp.argmax(logits, axis=-1).astype(jnp.int32)
        sampling_logprob = jnp.zeros(token.shape, jnp.float32)
    else:
        scores, ids = warp_logits(logits, knobs.temperature, static.top_k,
                                  knobs.top_p if static.use_top_p else None,
                                  knobs.min_p if static.use_min_p else None)
        keys = jax.vmap(jax.random.fold_in)(row_keys, index)
        choice = jax.vmap(jax.random.categorical)(keys, scores)[:, None]
        token = (choice if ids is None else jnp.take_along_axis(ids, choice, axis=-1))[:, 0].astype(jnp.int32)
        sampling_logprob = jnp.take_along_axis(jax.nn.log_softmax(scores, axis=-1), choice, axis=-1)[:, 0]
    logprob = jnp.take_along_axis(jax.nn.log_softmax(logits, axis=-1), token[:, None], axis=-1)[:, 0]
    return token, logprob, sampling_logprob


def _record(rows: _Rows, choice: tuple[jax.Array, jax.Array, jax.Array], tables: StopTables | None,
            static: _Static) -> _Rows:
    """Write each active row's chosen token at its own index and mark rows that just stopped."""
    token, logprob, sampling_logprob = choice
    active = ~rows.done
    token = jnp.where(active, token, static.pad_token_id)
    stopped = jnp.isin(token, jnp.asarray(static.eos_ids, jnp.int32)) if static.eos_ids else jnp.zeros_like(active)
    window = rows.window
    if tables is not None:
        hit, moved = stop_string_hits(tables, window, token)
        stopped, window = stopped | hit, jnp.where(active[:, None], moved, window)
    at = (jnp.arange(token.shape[0]), jnp.where(active, rows.lengths, static.max_new_tokens))  # inactive: dropped

    def put(buffer: jax.Array, value: jax.Array) -> jax.Array:
        return buffer.at[at].set(value.astype(buffer.dtype), mode="drop")

    lengths = rows.lengths + active
    return rows._replace(last=token, tokens=put(rows.tokens, token), logprobs=put(rows.logprobs, logprob),
                         sampling_logprobs=put(rows.sampling_logprobs, sampling_logprob), lengths=lengths,
                         done=rows.done | (active & (stopped | (lengths >= static.max_new_tokens))), window=window)


def _start(weights: DecodeWeights, ids: jax.Array, prompt_lengths: jax.Array, keys: jax.Array, knobs: _Knobs,
           tables: StopTables | None, group_size: int, slots: int, static: _Static) -> _Rows:
    """Prefill U right-padded prompts once and choose the first token of each of their G rows."""
    logits, prefix_keys, prefix_values = prefill(weights, ids, prompt_lengths)
    batch = ids.shape[0] * group_size
    suffix_keys, suffix_values = empty_suffix(batch, slots, weights, prefix_keys[0].dtype)
    cache = Cache(tuple(prefix_keys), tuple(prefix_values), prompt_lengths, suffix_keys, suffix_values,
                  jnp.zeros((batch,), jnp.int32), jnp.int32(0))
    new, width = static.max_new_tokens, 0 if tables is None else tables.width
    rows = _Rows(cache, jnp.zeros((batch,), jnp.int32), jnp.full((batch, new), static.pad_token_id, jnp.int32),
                 jnp.zeros((batch, new), jnp.float32), jnp.zeros((batch, new), jnp.float32),
                 jnp.zeros((batch,), jnp.int32), jnp.zeros((batch,), bool),
                 jnp.full((batch, width), NO_CHAR, jnp.int32), keys)
    logits = jnp.repeat(logits, group_size, axis=0)
    return _record(rows, _choose(logits, rows.lengths, keys, knobs, static), tables, static)


def _step(weights: DecodeWeights, rows: _Rows, knobs: _Knobs, tables: StopTables | None, static: _Static) -> _Rows:
    """Feed every row's last token and choose its next one."""
    cache = rows.cache
    positions = jnp.repeat(cache.prefix_lengths, cache.group_size) + cache.suffix_lengths
    logits, cache = decode_step(weights, rows.last, positions, cache)
    rows = rows._replace(cache=cache)
    return _record(rows, _choose(logits, rows.lengths, rows.keys, knobs, static), tables, static)


def _full(rows: _Rows) -> jax.Array:
    """Whether an active row's next key would fall past the suffix slots (the cache must grow first)."""
    return (~rows.done & (rows.cache.suffix_lengths >= rows.cache.suffix_slots)).any()


def _group_free(rows: _Rows) -> jax.Array:
    """Whether some prompt slot has all its rows done (continuous batching hands it new work)."""
    return rows.done.reshape(-1, rows.cache.group_size).all(axis=1).any()


def _decode(weights: DecodeWeights, rows: _Rows, knobs: _Knobs, tables: StopTables | None, until_free: jax.Array,
            static: _Static) -> tuple[_Rows, jax.Array]:
    """Decode until every row is done, the suffix cache is full, or (`until_free`) a prompt slot frees up.
    Returns the rows and whether the cache must grow (a replicated scalar the host may read)."""
    def running(r: _Rows) -> jax.Array:
        return (~r.done).any() & ~_full(r) & ~(until_free & _group_free(r))

    rows = jax.lax.while_loop(running, lambda r: _step(weights, r, knobs, tables, static), rows)
    return rows, _full(rows)


_start_jit = jax.jit(_start, static_argnames=("group_size", "slots", "static"))
_decode_jit = jax.jit(_decode, static_argnames=("static",), donate_argnames=("rows",))
_grow_jit = jax.jit(lambda rows, slots: rows._replace(cache=grow_suffix(rows.cache, slots)),
                    static_argnames=("slots",))  # new shapes: nothing to donate


def suffix_buckets(max_new_tokens: int, first: int | None = None) -> list[int]:
    """The suffix-cache sizes a run moves through: doubling from `first`, the last just fits max_new_tokens - 1
    fed tokens (the last chosen token is never fed). A step reads at most twice the filled slots."""
    need = max(max_new_tokens - 1, 1)
    sizes = [min(first or SUFFIX_BUCKET, need)]
    while sizes[-1] < need:
        sizes.append(min(2 * sizes[-1], need))
    return sizes


def row_keys(seed: int, requests: jax.Array, samples: jax.Array) -> jax.Array:
    """The random streams of rows [n * G]: row (i, g) gets fold_in(fold_in(key(seed), requests[i]),
    samples[i, g]). A sample draws the same tokens whichever batch or slot it runs in."""
    per_request = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(jax.random.key(seed), requests)
    return jax.vmap(lambda k, s: jax.vmap(jax.random.fold_in, in_axes=(None, 0))(k, s))(per_request,
                                                                                       samples).reshape(-1)


def _right_align_prompts(ids: jax.Array, mask: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(prompt ids with padding first (as reported), the same with real tokens first (as prefilled), lengths)."""
    left = jnp.argsort(mask, axis=1, stable=True)
    right = jnp.argsort(1 - mask, axis=1, stable=True)
    return (jnp.take_along_axis(ids, left, axis=1).astype(jnp.int32),
            jnp.take_along_axis(ids, right, axis=1).astype(jnp.int32), mask.sum(axis=1).astype(jnp.int32))


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


def _settings(config: ModelConfig, max_new_tokens: int, temperature: float, top_p: float, top_k: int,
              min_p: float, eos_token_id: int | Sequence[int] | None, pad_token_id: int,
              stop_strings: Sequence[str] | None, tokenizer: PreTrainedTokenizerBase | None
              ) -> tuple[_Static, _Knobs, StopTables | None]:
    """Check the decoding settings (naming a wrong one, by `Sampling`'s own checks) and split them into
    compiled-in and traced parts."""
    Sampling(max_new_tokens, temperature, top_p, top_k, min_p, stop_strings=stop_strings or ())
    if stop_strings and tokenizer is None:
        raise ValueError("stop_strings need the tokenizer (pass tokenizer=...)")
    static = _Static(max_new_tokens=int(max_new_tokens), greedy=temperature == 0.0, top_k=int(top_k),
                     use_top_p=top_p < 1.0, use_min_p=min_p > 0.0, eos_ids=_as_ids(eos_token_id),
                     pad_token_id=int(pad_token_id))
    knobs = _Knobs(*(jnp.float32(x) for x in (temperature or 1.0, top_p, min_p)))
    tables = stop_tables(tokenizer, tuple(stop_strings), config.vocab_size) if stop_strings else None
    return static, knobs, tables


def decode_weights(model: CausalLM | DecodeWeights, dtype: str | None = None) -> DecodeWeights:
    """`model`'s decode copy (made here) or the given one; `dtype` (e.g. "bfloat16") overrides a model's
    compute dtype."""
    if isinstance(model, DecodeWeights):
        if dtype is not None and jnp.dtype(dtype) != model.dtype:
            raise ValueError(f"cache_dtype={dtype} differs from the prepared weights' dtype {model.dtype}; "
                             f"prepare them in {dtype} (jaxmath.inference.weights.prepare_weights)")
        return model
    if not isinstance(model, CausalLM):
        raise TypeError(f"generate needs a CausalLM or its DecodeWeights, got {type(model).__name__}")
    return prepare_weights(model, dtype)


def generate(model: CausalLM | DecodeWeights, input_ids: jax.Array | np.ndarray,
             attention_mask: jax.Array | np.ndarray | None = None, max_new_tokens: int = 128,
             temperature: float = 0.0, top_p: float = 1.0, top_k: int = 0, min_p: float = 0.0,
             eos_token_id: int | Sequence[int] | None = None, pad_token_id: int = 0, seed: int = 0,
             cache_dtype: str | None = None, stop_strings: Sequence[str] | None = None,
             tokenizer: PreTrainedTokenizerBase | None = None, num_samples: int = 1,
             prompt_repeats: int = 1) -> GenerationOutput:
    """Continue a batch of prompts, `num_samples` completions each (rows i * num_samples + g); greedy when
    temperature is 0.

    Each prompt is prefilled once and its samples share its keys and values. Prompts may carry padding on
    either side (`attention_mask` 0). A row stops after an `eos_token_id` token or once its text contains one
    of `stop_strings` (which needs `tokenizer`); later slots hold `pad_token_id`. Sampling applies
    temperature, then top-k, top-p and min-p (transformers' order); sample g of prompt i draws from its own
    stream of `seed`; when each prompt comes as `prompt_repeats` consecutive copies (a global batch split over
    processes), copy c of prompt i draws the stream of its sample c * num_samples + g, as if unrepeated. `model`
    is a CausalLM or its `prepare_weights` copy (make that once when calling many
    times with the same weights); `cache_dtype` (e.g. "bfloat16") sets the compute and cache dtype of a
    model (default: its compute dtype). Under `jax.set_mesh(mesh)` weights and cache are sharded like the
    model's activations.
    """
    if num_samples < 1 or prompt_repeats < 1:
        raise ValueError(f"num_samples and prompt_repeats must be >= 1, got {num_samples} and {prompt_repeats}")
    weights = decode_weights(model, cache_dtype)
    static, knobs, tables = _settings(weights.config, max_new_tokens, temperature, top_p, top_k, min_p,
                                      eos_token_id, pad_token_id, stop_strings, tokenizer)
    ids, mask = _check_prompts(input_ids, attention_mask)
    left, right, lengths = _right_align_prompts(ids, mask)
    index = jnp.arange(ids.shape[0])
    samples = (index % prompt_repeats)[:, None] * num_samples + jnp.arange(num_samples)
    keys = row_keys(seed, index // prompt_repeats, samples)
    buckets = suffix_buckets(static.max_new_tokens)
    rows = _start_jit(weights, right, lengths, keys, knobs, tables, group_size=num_samples, slots=buckets[0],
                      static=static)
    for slots in buckets[1:] + [None]:
        rows, full = _decode_jit(weights, rows, knobs, tables, jnp.bool_(False), static=static)
        if slots is None or not bool(full):
            break
        rows = _grow_jit(rows, slots=slots)
    prompts = jnp.repeat(left, num_samples, axis=0)
    return GenerationOutput(jnp.concatenate([prompts, rows.tokens], axis=1), rows.logprobs, rows.sampling_logprobs,
                            rows.lengths)


def _insert(rows: _Rows, new: _Rows, groups: jax.Array) -> _Rows:
    """`rows` with prompt slots `groups` [n] (and their G rows each) replaced by the n started ones in `new`;
    an index past the last slot drops that entry (padding of the start batch)."""
    g = rows.cache.group_size
    members = (groups[:, None] * g + jnp.arange(g)).reshape(-1)

    def put(at: jax.Array) -> Any:
        return lambda old, fresh: old.at[at].set(fresh, mode="drop")

    prefix = ("prefix_keys", "prefix_values", "prefix_lengths")
    cache = Cache(**{f.name: jax.tree.map(put(groups if f.name in prefix else members), getattr(rows.cache, f.name),
                                          getattr(new.cache, f.name))
                     for f in dataclasses.fields(Cache) if f.name != "suffix_next"},
                  suffix_next=rows.cache.suffix_next)  # the ring's write slot is shared; new rows see nothing yet
    return _Rows(cache, *(jax.tree.map(put(members), getattr(rows, f), getattr(new, f)) for f in _Rows._fields[1:]))


_insert_jit = jax.jit(_insert, donate_argnums=(0,))


@dataclasses.dataclass(frozen=True)
class Completion:
    """One sampled completion: its tokens (through the stopping token), their log-probs under the model and
    under the sampling distribution."""

    tokens: np.ndarray
    logprobs: np.ndarray
    sampling_logprobs: np.ndarray


def pad_batch(rows: Sequence[Sequence[int]], batch_size: int, pad_id: int, *, left: bool,
              bucket: int = LENGTH_BUCKET, width: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """[batch_size, width] ids and mask (width: the longest row rounded up to `bucket`, unless given), rows
    padded on the left or the right; missing rows repeat the first (their output is dropped)."""
    width = width or -(-max(len(r) for r in rows) // bucket) * bucket
    ids = np.full((batch_size, width), pad_id, np.int32)
    mask = np.zeros((batch_size, width), np.int32)
    for i in range(batch_size):
        row = rows[i] if i < len(rows) else rows[0]
        place = slice(width - len(row), width) if left else slice(0, len(row))
        ids[i, place], mask[i, place] = row, 1
    return ids, mask


def generate_continuous(model: CausalLM | DecodeWeights, prompts: Sequence[Sequence[int]], *, slots: int = 32,
                        num_samples: int = 1, max_new_tokens: int = 128, temperature: float = 0.0,
                        top_p: float = 1.0, top_k: int = 0, min_p: float = 0.0,
                        eos_token_id: int | Sequence[int] | None = None, pad_token_id: int = 0, seed: int = 0,
                        cache_dtype: str | None = None, stop_strings: Sequence[str] | None = None,
                        tokenizer: PreTrainedTokenizerBase | None = None,
                        on_finish: Callable[[int, list[Completion]], bool | None] | None = None,
                        more: Callable[[], Sequence[Sequence[int]]] | None = None) -> list[list[Completion]]:
    """`num_samples` completions of each prompt (token-id lists), with `slots` prompts decoding at a time:
    when all samples of a prompt stop, the next prompt takes its slot (continuous batching), so one long
    completion does not hold the batch. Sample g of prompt i gets the tokens `generate` would give it with
    the same seed (its random stream depends on i and g only). `on_finish(i, completions)` is called as
    prompts finish (progress); when it returns True the run stops there (prompts still decoding get no
    completions). `more()` is asked for further prompts whenever a slot is free and none wait (an empty answer
    ends the supply); they are numbered on from the last. Single-process: the host reads which rows stopped
    between decode runs."""
    prompts = list(prompts)
    if not prompts:
        return []
    if num_samples < 1 or slots < 1:
        raise ValueError(f"num_samples and slots must be >= 1, got {num_samples} and {slots}")
    empty = [i for i, p in enumerate(prompts) if len(p) == 0]
    if empty:
        raise ValueError(f"prompt(s) {empty[:10]} have no tokens")
    weights = decode_weights(model, cache_dtype)
    static, knobs, tables = _settings(weights.config, max_new_tokens, temperature, top_p, top_k, min_p,
                                      eos_token_id, pad_token_id, stop_strings, tokenizer)
    width = -(-max(len(p) for p in prompts) // LENGTH_BUCKET) * LENGTH_BUCKET  # one prefix size for the run
    slots = min(slots, len(prompts))
    buckets = suffix_buckets(static.max_new_tokens)
    queue = list(range(len(prompts)))
    owner = np.full(slots, -1)
    results: list[list[Completion]] = [[] for _ in prompts]
    supplied = more is not None  # more() may still give prompts

    def start(requests: list[int], count: int, size: int) -> _Rows:
        long = [i for i in requests if len(prompts[i]) > width]
        if long:
            raise ValueError(f"prompt(s) {long[:10]} are longer than the run's prefix size {width}: supply them "
                             f"at the start, or no longer than the first prompts rounded up to {LENGTH_BUCKET}")
        ids, mask = pad_batch([prompts[i] for i in requests], count, pad_token_id, left=False, width=width)
        numbers = jnp.asarray(requests + [requests[0]] * (count - len(requests)), jnp.int32)
        samples = jnp.broadcast_to(jnp.arange(num_samples), (count, num_samples))
        return _start_jit(weights, jnp.asarray(ids), jnp.asarray(mask.sum(axis=1)), row_keys(seed, numbers, samples),
                          knobs, tables, group_size=num_samples, slots=size, static=static)

    first, queue = queue[:slots], queue[slots:]
    rows, owner[:len(first)] = start(first, slots, buckets[0]), first
    bucket = 0
    while True:
        rows, full = _decode_jit(weights, rows, knobs, tables, jnp.bool_(bool(queue) or supplied), static=static)
        done = np.asarray(rows.done).reshape(slots, num_samples).all(axis=1)
        finished = np.flatnonzero(done & (owner >= 0))
        if finished.size:
            tokens, logprobs, sampled, lengths = (np.asarray(x) for x in (rows.tokens, rows.logprobs,
                                                                           rows.sampling_logprobs, rows.lengths))
            for slot in finished:
                request = int(owner[slot])
                members = range(slot * num_samples, (slot + 1) * num_samples)
                results[request] = [Completion(tokens[r, :lengths[r]], logprobs[r, :lengths[r]],
                                               sampled[r, :lengths[r]]) for r in members]
                owner[slot] = -1
                if on_finish is not None and on_finish(request, results[request]):
                    return results
        free = np.flatnonzero(owner < 0)
        if supplied and not queue and free.size:
            extra = [list(p) for p in more()]
            if any(len(p) == 0 for p in extra):
                raise ValueError("more() gave a prompt with no tokens")
            supplied = bool(extra)
            queue = list(range(len(prompts), len(prompts) + len(extra)))
            prompts += extra
            results += [[] for _ in extra]
        if queue and free.size:
            take, queue = queue[:free.size], queue[free.size:]
            count = min(1 << (len(take) - 1).bit_length(), slots)  # a power of two: few compiled start shapes
            at = np.full(count, slots, np.int32)  # slot index `slots` = dropped padding
            at[:len(take)] = free[:len(take)]
            rows = _insert_jit(rows, start(take, count, rows.cache.suffix_slots), jnp.asarray(at))
            owner[free[:len(take)]] = take
        elif (owner < 0).all():
            return results
        if bool(full) and bucket + 1 < len(buckets):
            bucket += 1
            rows = _grow_jit(rows, slots=buckets[bucket])


def decode_cost(weights: DecodeWeights, batch: int, prompt_len: int, max_new_tokens: int,
                num_samples: int = 1) -> dict[str, float]:
    """Bytes per decode step over a whole run (every row generating `max_new_tokens`), by XLA's cost analysis of
    the compiled step in each cache bucket the run passes through, next to the least a step must read: the
    weights (`nbytes_read_per_step`) plus the filled keys and values (each prompt once, each row's tokens so
    far). XLA counts a gather's whole table, so the figure with the embedding gather counted as the rows a step
    reads is given too."""
    static, knobs, tables = _settings(weights.config, max_new_tokens, 0.0, 1.0, 0, 0.0, None, 0, None, None)
    prompts = batch // num_samples
    ids = jnp.ones((prompts, prompt_len), jnp.int32)
    keys = row_keys(0, jnp.arange(prompts), jnp.broadcast_to(jnp.arange(num_samples), (prompts, num_samples)))
    step = jax.jit(_step, static_argnames=("static",), donate_argnums=(1,))  # in place, as inside the loop
    c, item = weights.config, jnp.dtype(weights.dtype).itemsize
    per_token_kv = 2 * c.num_layers * c.num_kv_heads * c.head_dim * item
    xla = minimum = 0.0
    steps, first = 0, 1
    for slots in suffix_buckets(max_new_tokens):
        rows = jax.eval_shape(functools.partial(_start, group_size=num_samples, slots=slots, static=static),
                              weights, ids, jnp.full((prompts,), prompt_len, jnp.int32), keys, knobs, tables)
        cost = step.lower(weights, rows, knobs, tables, static=static).compile().cost_analysis()
        cost = cost[0] if isinstance(cost, list) else cost
        filled = range(first, slots + 1)  # suffix tokens a step attends to in this bucket
        xla += len(filled) * float(cost["bytes accessed"])
        minimum += sum(weights.nbytes_read_per_step() + per_token_kv * (prompts * prompt_len + batch * n)
                       for n in filled)
        steps, first = steps + len(filled), slots + 1
    gather_rows = batch * c.hidden_size * item - weights.embed.size * item
    return {"xla_bytes": xla / steps, "xla_bytes_gather_rows": xla / steps + gather_rows,
            "minimum_bytes": minimum / steps}


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
