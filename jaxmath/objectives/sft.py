"""Supervised fine-tuning: masked next-token cross-entropy on completion tokens, packing-aware."""
from __future__ import annotations

from typing import Mapping

import jax
import jax.numpy as jnp


def next_token_targets(batch: Mapping[str, jax.Array]) -> tuple[jax.Array, jax.Array]:
    """Targets (input shifted left) and their weights: the target must be a completion token of the same
    packed segment as the position predicting it."""
    ids = batch["input_ids"]
    targets = jnp.concatenate([ids[:, 1:], jnp.zeros_like(ids[:, :1])], axis=1)
    weights = jnp.concatenate([batch["loss_mask"][:, 1:], jnp.zeros_like(ids[:, :1])], axis=1).astype(jnp.float32)
    segments = batch.get("segment_ids")
    if segments is not None:
        same = jnp.concatenate([segments[:, 1:] == segments[:, :-1], jnp.zeros_like(ids[:, :1], bool)], axis=1)
        weights = weights * (same & (segments > 0))
    return targets, weights


def token_log_probs(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """log p(target) per position, computed in float32."""
    logits = logits.astype(jnp.float32)
    picked = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    return picked - jax.nn.logsumexp(logits, axis=-1)


def token_log_probs_and_entropy(logits: jax.Array, targets: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(log p(target), entropy of the predictive distribution) per position, in float32."""
    logits = logits.astype(jnp.float32)
    lse = jax.nn.logsumexp(logits, axis=-1)
    picked = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    entropy = lse - jnp.sum(jax.nn.softmax(logits, axis=-1) * logits, axis=-1)
    return picked - lse, entropy


# Vocabulary logits are materialised this many positions at a time (and recomputed in the backward
# pass), so a 4096 x 151936 float32 logit tensor and its gradient never exist at once.
LOGITS_CHUNK = 1024


def _in_vocab_chunks(model, hidden: jax.Array, targets: jax.Array, per_chunk, chunk: int):
    """Apply `per_chunk(logits, targets) -> tuple of [batch, c] arrays` to the vocabulary logits of `chunk`
    positions at a time (under jax.checkpoint) and stitch the results back to [batch, length]."""
    batch, length = targets.shape
    if length <= chunk:
        return per_chunk(model.logits_from_hidden(hidden), targets)
    pad = -length % chunk
    h = jnp.pad(hidden, ((0, 0), (0, pad), (0, 0))).reshape(batch, -1, chunk, hidden.shape[-1])
    t = jnp.pad(targets, ((0, 0), (0, pad))).reshape(batch, -1, chunk)

    @jax.checkpoint
    def one(xs: tuple[jax.Array, jax.Array]):
        return per_chunk(model.logits_from_hidden(xs[0]), xs[1])

    out = jax.lax.map(one, (jnp.swapaxes(h, 0, 1), jnp.swapaxes(t, 0, 1)))  # each [chunks, batch, chunk]
    return tuple(jnp.swapaxes(x, 0, 1).reshape(batch, -1)[:, :length] for x in out)


def chunked_target_log_probs(model, hidden: jax.Array, targets: jax.Array,
                             chunk: int = LOGITS_CHUNK) -> jax.Array:
    """log p(target) [batch, length] from final hidden states, projecting to the vocabulary in chunks
    of `chunk` positions; equal to token_log_probs(model.logits_from_hidden(hidden), targets)."""
    return _in_vocab_chunks(model, hidden, targets, lambda lg, tg: (token_log_probs(lg, tg),), chunk)[0]


def chunked_log_probs_and_entropy(model, hidden: jax.Array, targets: jax.Array,
                                  chunk: int = LOGITS_CHUNK) -> tuple[jax.Array, jax.Array]:
    """(log p(target), predictive entropy) [batch, length] from final hidden states, in vocabulary chunks."""
    return _in_vocab_chunks(model, hidden, targets, token_log_probs_and_entropy, chunk)


def sft_loss_terms(logits: jax.Array, batch: Mapping[str, jax.Array]) -> tuple[jax.Array, jax.Array]:
    """(sum of masked token losses, number of masked tokens). Dividing the two over the whole global batch
    gives the token mean, never a mean of per-device or per-micro-batch means."""
    targets, weights = next_token_targets(batch)
    nll = -token_log_probs(logits, targets)
    return jnp.sum(nll * weights), jnp.sum(weights)


def sft_loss(model, batch: Mapping[str, jax.Array], rng: jax.Array) -> tuple[jax.Array, jax.Array, dict]:
    """The train-step loss function for SFT (packed or padded batches); vocabulary logits in chunks."""
    hidden = model.model(batch["input_ids"], segment_ids=batch.get("segment_ids"),
                         positions=batch.get("positions"), dropout_rng=rng)
    targets, weights = next_token_targets(batch)
    nll = -chunked_target_log_probs(model, hidden, targets)
    return jnp.sum(nll * weights), jnp.sum(weights), {}
