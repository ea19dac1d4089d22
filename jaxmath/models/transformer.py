"""The decoder (Qwen2 / Qwen2.5 / Qwen3 / Llama / DeepSeek) and its heads: causal LM and token classifier.

Module and attribute names mirror the HF checkpoints ("model.layers.self_attn.q_proj", ...), so the
weight mapping in jaxmath.checkpoint is a short table. Layers are stacked and run with `jax.lax.scan`,
so compile time does not grow with depth; the scan body is rematerialised per `config.remat`.
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
from flax import nnx, traverse_util

from jaxmath.models.config import REMAT_POLICIES, ModelConfig
from jaxmath.models.layers import DecoderBlock, RMSNorm, make_param, normal_init, zeros_init
from jaxmath.models.rope import rope_tables
from jaxmath.parallel import shard_activation

# Top-level parameters of the output heads (CausalLM: lm_head; TokenClassifier: score, score_bias).
HEAD_PARAMS = ("lm_head", "score", "score_bias")

# The jax.checkpoint policy of each remat policy (jaxmath.models.config.REMAT_POLICIES) but "none"
CHECKPOINT_POLICIES = {
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}
assert {"none", *CHECKPOINT_POLICIES} == set(REMAT_POLICIES), "every remat policy needs its jax.checkpoint policy"


def segment_positions(segment_ids: jax.Array) -> jax.Array:
    """Per-segment positions (0, 1, ... restarting wherever the segment id changes) for packed rows."""
    index = jnp.broadcast_to(jnp.arange(segment_ids.shape[1]), segment_ids.shape)
    starts = jnp.concatenate(
        [jnp.ones_like(segment_ids[:, :1], dtype=bool), segment_ids[:, 1:] != segment_ids[:, :-1]], axis=1)
    return index - jax.lax.cummax(jnp.where(starts, index, 0), axis=1)


def resolve_layout(input_ids: jax.Array, attention_mask: jax.Array | None, positions: jax.Array | None,
                   segment_ids: jax.Array | None) -> tuple[jax.Array, jax.Array]:
    """Segment ids and positions for a batch: packed (segment ids), padded (attention mask) or plain.

    With only an attention mask, positions count real tokens, so left padding does not shift them.
    Padding tokens get segment 0 and attend only to each other.
    """
    if segment_ids is None:
        segment_ids = (jnp.ones_like(input_ids) if attention_mask is None else attention_mask).astype(jnp.int32)
        if positions is None and attention_mask is not None:
            positions = jnp.maximum(jnp.cumsum(segment_ids, axis=1) - 1, 0)
    if positions is None:
        positions = segment_positions(segment_ids)
    return segment_ids.astype(jnp.int32), positions.astype(jnp.int32)


class Decoder(nnx.Module):
    """Token embedding, a scanned stack of decoder blocks, and the final norm."""

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        self.config = config
        dt = config.weight_dtype
        self.embed_tokens = make_param(rngs, (config.vocab_size, config.hidden_size), ("vocab", "embed"),
                                       normal_init(0.02), dt, None)
        self.layers = DecoderBlock(config, rngs=rngs, num_layers=config.num_layers)
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps, dtype=dt, rngs=rngs)

    def __call__(self, input_ids: jax.Array, attention_mask: jax.Array | None = None,
                 positions: jax.Array | None = None, segment_ids: jax.Array | None = None,
                 dropout_rng: jax.Array | None = None) -> jax.Array:
        """Final hidden states [batch, length, hidden] in the compute dtype (`dropout_rng`: LoRA dropout)."""
        segment_ids, positions = resolve_layout(input_ids, attention_mask, positions, segment_ids)
        x = jnp.take(self.embed_tokens[...], input_ids, axis=0).astype(self.config.compute_dtype)
        x = shard_activation(x, ("batch", "length", "act_embed"))
        cos, sin = rope_tables(self.config, positions)
        graphdef, stacked = nnx.split(self.layers)

        def body(h: jax.Array, xs: tuple[nnx.State, jax.Array]) -> tuple[jax.Array, None]:
            layer_state, layer = xs
            rng = None if dropout_rng is None else jax.random.fold_in(dropout_rng, layer)
            return nnx.merge(graphdef, layer_state)(h, cos, sin, segment_ids, rng), None

        if self.config.remat != "none":
            body = jax.checkpoint(body, policy=CHECKPOINT_POLICIES[self.config.remat], prevent_cse=False)
        x, _ = jax.lax.scan(body, x, (stacked, jnp.arange(self.config.num_layers, dtype=jnp.int32)))
        return self.norm(x)


class CausalLM(nnx.Module):
    """Decoder + language-model head (tied to the embedding when the checkpoint ties them)."""

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        self.config = config
        self.model = Decoder(config, rngs=rngs)
        if not config.tie_word_embeddings:
            self.lm_head = make_param(rngs, (config.vocab_size, config.hidden_size), ("vocab", "embed"),
                                      normal_init(0.02), config.weight_dtype, None)

    def head_weight(self) -> jax.Array:
        """The [vocab, hidden] output projection (HF layout; the embedding when tied)."""
        if self.config.tie_word_embeddings:
            return self.model.embed_tokens[...]
        return self.lm_head[...]

    def logits_from_hidden(self, hidden: jax.Array) -> jax.Array:
        """Float32 vocabulary logits of hidden states (the products summed in float32 and not rounded to the
        compute dtype, as the sampler's); losses call this in chunks."""
        logits = jnp.einsum("...e,ve->...v", hidden, self.head_weight().astype(hidden.dtype),
                            preferred_element_type=jnp.float32)
        return shard_activation(logits, ("batch", "length", "act_vocab"))

    def __call__(self, input_ids: jax.Array, attention_mask: jax.Array | None = None,
                 positions: jax.Array | None = None, segment_ids: jax.Array | None = None,
                 dropout_rng: jax.Array | None = None) -> jax.Array:
        """Float32 logits [batch, length, vocab]."""
        return self.logits_from_hidden(self.model(input_ids, attention_mask, positions, segment_ids, dropout_rng))


class TokenClassifier(nnx.Module):
    """Decoder + per-token linear classifier (HF `*ForTokenClassification`); the PRM uses it."""

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        if config.num_labels <= 0:
            raise ValueError("TokenClassifier needs config.num_labels > 0")
        self.config = config
        self.model = Decoder(config, rngs=rngs)
        self.score = make_param(rngs, (config.num_labels, config.hidden_size), ("labels", "embed"),
                                normal_init(0.02), config.weight_dtype, None)
        self.score_bias = make_param(rngs, (config.num_labels,), ("labels",), zeros_init, config.weight_dtype, None)

    def __call__(self, input_ids: jax.Array, attention_mask: jax.Array | None = None,
                 positions: jax.Array | None = None, segment_ids: jax.Array | None = None,
                 dropout_rng: jax.Array | None = None) -> jax.Array:
        """Per-token label logits [batch, length, num_labels]."""
        hidden = self.model(input_ids, attention_mask, positions, segment_ids, dropout_rng)
        logits = jnp.einsum("...e,le->...l", hidden, self.score[...].astype(hidden.dtype))
        return logits + self.score_bias[...].astype(hidden.dtype)


def build_model(config: ModelConfig, seed: int = 0) -> CausalLM | TokenClassifier:
    """A randomly initialised model of the right kind for `config` (token classifier when num_labels > 0)."""
    cls = TokenClassifier if config.num_labels > 0 else CausalLM
    return cls(config, rngs=nnx.Rngs(seed))


def init_params(config: ModelConfig, keep: Callable[[tuple[str, ...]], bool], seed: int = 0) -> dict[str, Any]:
    """The freshly initialised parameters whose path `keep` accepts (e.g. LoRA adapters, a new head), as a
    pure dict, without materialising the others: under jit, dead-code elimination drops their initialisers."""
    def selected() -> dict[str, Any]:
        flat = traverse_util.flatten_dict(nnx.to_pure_dict(nnx.state(build_model(config, seed))))
        return traverse_util.unflatten_dict({k: v for k, v in flat.items() if keep(tuple(map(str, k)))})

    return jax.jit(selected)()
