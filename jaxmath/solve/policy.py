"""The policy a strategy samples from: prompts in, completions out, each with its token count and why it ended;
and the token budget each question's search spends.

`ModelPolicy` runs a loaded model through the shared sampler's continuous batching
(`jaxmath.inference.sampler.generate_continuous`) on a decode copy of its weights made once. The k samples of one
prompt share its prefill; a continuation of a partial solution is a prompt that ends in that partial solution,
so the next step re-reads the prefix (no cache is kept between calls).
"""
from __future__ import annotations

import contextlib
import dataclasses
from typing import Mapping, Protocol, Sequence

import jax
from jax.sharding import Mesh
from transformers import PreTrainedTokenizerBase

from jaxmath.data.formats import render_messages
from jaxmath.inference.config import Sampling, offset_seed
from jaxmath.inference.sampler import decode_weights, generate_continuous, truncate_at_stop
from jaxmath.inference.weights import DecodeWeights
from jaxmath.models import CausalLM

FINISHES = ("eos", "stop", "length")


@dataclasses.dataclass(frozen=True)
class Completion:
    """One completion: text (cut before any stop string), tokens generated, and how it ended: "eos" (the model
    ended its turn), "stop" (`stop_string` appeared) or "length" (the token limit)."""

    text: str
    tokens: int
    finish: str
    stop_string: str | None = None


class Policy(Protocol):
    """What strategies need from a model: render a conversation as a prompt, and complete prompts."""

    max_new_tokens: int  # the longest whole solution a strategy asks for
    stop_strings: tuple[str, ...]  # where every completion ends (a plain-text prompt's next "Question:")

    def render(self, messages: Sequence[Mapping[str, str]]) -> str:
        """The prompt text for chat turns (system, user, ...), up to where the model writes."""
        ...

    def complete(self, prompts: Sequence[str], max_new_tokens: int, stop_strings: Sequence[str] = (),
                 samples: int = 1) -> list[list[Completion]]:
        """`samples` sampled completions per prompt, at most `max_new_tokens` tokens each, ended also by
        `stop_strings`."""
        ...


class ModelPolicy:
    """A causal LM behind the `Policy` interface, decoded by the shared sampler's continuous batching
    (`generate_continuous`): the samples of one prompt share its prefill, and each call draws with a fresh seed."""

    def __init__(self, model: CausalLM | DecodeWeights, tokenizer: PreTrainedTokenizerBase, eos_ids: Sequence[int],
                 sampling: Sampling = Sampling(), batch_size: int = 32, mesh: Mesh | None = None):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.tokenizer, self.eos_ids = tokenizer, tuple(eos_ids)
        self.sampling, self.batch_size, self.mesh = sampling, batch_size, mesh
        self.max_new_tokens = sampling.max_new_tokens
        self.stop_strings = tuple(sampling.stop_strings)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        with self._mesh():
            self.weights = decode_weights(model)  # once: every search step decodes with the same weights
        self._calls = 0

    def _mesh(self) -> contextlib.AbstractContextManager:
        return jax.set_mesh(self.mesh) if self.mesh is not None else contextlib.nullcontext()

    def render(self, messages: Sequence[Mapping[str, str]]) -> str:
        """Through the tokenizer's chat template when it has one (`jaxmath.data.formats.render_messages`)."""
        return render_messages(messages, self.tokenizer)

    def complete(self, prompts: Sequence[str], max_new_tokens: int, stop_strings: Sequence[str] = (),
                 samples: int = 1) -> list[list[Completion]]:
        """`batch_size` rows decode at a time (`batch_size // samples` prompts with their samples)."""
        if max_new_tokens < 1 or samples < 1:
            raise ValueError(f"max_new_tokens and samples must be >= 1, got {max_new_tokens} and {samples}")
        if not prompts:
            return []
        stops = tuple(dict.fromkeys((*self.stop_strings, *stop_strings)))
        encoded = [self.tokenizer.encode(p, add_special_tokens=False) for p in prompts]
        empty = [i for i, ids in enumerate(encoded) if not ids]
        if empty:
            raise ValueError(f"prompt(s) {empty} encode to no tokens")
        s = self.sampling
        with self._mesh():
            out = generate_continuous(self.weights, encoded, slots=max(1, self.batch_size // samples),
                                      num_samples=samples, max_new_tokens=max_new_tokens, temperature=s.temperature,
                                      top_p=s.top_p, top_k=s.top_k, min_p=s.min_p, eos_token_id=list(self.eos_ids),
                                      pad_token_id=self.pad_id, seed=offset_seed(s.seed, self._calls),
                                      stop_strings=stops or None, tokenizer=self.tokenizer)
        self._calls += 1
        return [[self._completion(c.tokens.tolist(), stops) for c in per_prompt] for per_prompt in out]

    def _completion(self, tokens: list[int], stops: tuple[str, ...]) -> Completion:
        raw = self.tokenizer.decode(tokens, skip_special_tokens=True)
        text = truncate_at_stop(raw, stops)
        if len(text) < len(raw):
            hit = next(s for s in sorted(stops, key=len, reverse=True) if raw.startswith(s, len(text)))
            return Completion(text, len(tokens), "stop", hit)
        return Completion(text, len(tokens), "eos" if tokens and tokens[-1] in self.eos_ids else "length")


class Budget:
    """Tokens one question may still generate: `limit` None means no limit beyond each request's own."""

    def __init__(self, limit: int | None = None):
        if limit is not None and limit < 1:
            raise ValueError(f"a token budget must be >= 1, got {limit}")
        self.limit, self.spent = limit, 0

    def grant(self, rows: int, wanted: int) -> int:
        """Tokens per row for `rows` completions of up to `wanted` tokens each, so that even if every row runs
        to its limit the budget holds; 0 when not even one token per row fits."""
        if self.limit is None:
            return wanted
        return max(0, min(wanted, (self.limit - self.spent) // max(rows, 1)))

    def charge(self, tokens: int) -> None:
        """Record tokens generated."""
        self.spent += tokens


Request = tuple[str, int, tuple[str, ...], int]  # (prompt, max_new_tokens, stop_strings, samples)


def complete_requests(policy: Policy, requests: Sequence[Request]) -> list[list[Completion]]:
    """Completions for the requests of many questions: one `complete` call per distinct limit, stop set and
    sample count, results in request order."""
    groups: dict[tuple[int, tuple[str, ...], int], list[int]] = {}
    for i, (_, limit, stops, samples) in enumerate(requests):
        groups.setdefault((limit, stops, samples), []).append(i)
    results: list[list[Completion]] = [[] for _ in requests]
    for (limit, stops, samples), members in groups.items():
        for i, completions in zip(members, policy.complete([requests[i][0] for i in members], limit, stops, samples)):
            results[i] = completions
    return results
