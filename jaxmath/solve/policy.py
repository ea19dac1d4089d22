"""The policy a strategy samples from: prompts in, completions out, each with its token count and why it ended;
and the token budget each question's search spends.

`ModelPolicy` runs a loaded model through the shared KV-cache sampler (`jaxmath.inference.sampler.generate`), in
batches bucketed by prompt length and row count so a search compiles few shapes. A continuation of a partial
solution is a prompt that ends in that partial solution: the sampler re-reads the prefix each call (no cache is
kept between calls).
"""
from __future__ import annotations

import contextlib
import dataclasses
from typing import Mapping, Protocol, Sequence

import jax
import numpy as np
from jax.sharding import Mesh
from transformers import PreTrainedTokenizerBase

from jaxmath.data.formats import render_messages
from jaxmath.inference.completions import pad_batch
from jaxmath.inference.config import Sampling, offset_seed
from jaxmath.inference.sampler import generate, truncate_at_stop
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

    def complete(self, prompts: Sequence[str], max_new_tokens: int,
                 stop_strings: Sequence[str] = ()) -> list[Completion]:
        """One sampled completion per prompt, at most `max_new_tokens` tokens, ended also by `stop_strings`."""
        ...


class ModelPolicy:
    """A causal LM behind the `Policy` interface; each `complete` call draws with a fresh seed."""

    def __init__(self, model: CausalLM, tokenizer: PreTrainedTokenizerBase, eos_ids: Sequence[int],
                 sampling: Sampling = Sampling(), batch_size: int = 32, mesh: Mesh | None = None):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model, self.tokenizer, self.eos_ids = model, tokenizer, tuple(eos_ids)
        self.sampling, self.batch_size, self.mesh = sampling, batch_size, mesh
        self.max_new_tokens = sampling.max_new_tokens
        self.stop_strings = tuple(sampling.stop_strings)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self._calls = 0

    def render(self, messages: Sequence[Mapping[str, str]]) -> str:
        """Through the tokenizer's chat template when it has one (`jaxmath.data.formats.render_messages`)."""
        return render_messages(messages, self.tokenizer)

    def complete(self, prompts: Sequence[str], max_new_tokens: int,
                 stop_strings: Sequence[str] = ()) -> list[Completion]:
        """Longest prompts first, `batch_size` rows at a time (fewer rows padded to a power of two)."""
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        stops = tuple(dict.fromkeys((*self.stop_strings, *stop_strings)))
        encoded = [self.tokenizer.encode(p, add_special_tokens=False) for p in prompts]
        empty = [i for i, ids in enumerate(encoded) if not ids]
        if empty:
            raise ValueError(f"prompt(s) {empty} encode to no tokens")
        order = sorted(range(len(prompts)), key=lambda i: -len(encoded[i]))
        results: list[Completion | None] = [None] * len(prompts)
        mesh = jax.set_mesh(self.mesh) if self.mesh is not None else contextlib.nullcontext()
        with mesh:
            for first in range(0, len(order), self.batch_size):
                rows = order[first:first + self.batch_size]
                width = min(self.batch_size, 1 << (len(rows) - 1).bit_length())
                ids, mask = pad_batch([encoded[i] for i in rows], width, self.pad_id, left=True)
                s = self.sampling
                out = generate(self.model, ids, attention_mask=mask, max_new_tokens=max_new_tokens,
                               temperature=s.temperature, top_p=s.top_p, top_k=s.top_k, min_p=s.min_p,
                               eos_token_id=list(self.eos_ids), pad_token_id=self.pad_id,
                               seed=offset_seed(s.seed, self._calls), stop_strings=stops or None,
                               tokenizer=self.tokenizer)
                self._calls += 1
                new = out.logprobs.shape[1]
                tokens, lengths = np.asarray(out.sequences[:, -new:]), np.asarray(out.lengths)
                for row, i in enumerate(rows):
                    results[i] = self._completion(tokens[row, :lengths[row]].tolist(), stops)
        return results  # type: ignore[return-value]

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


def complete_requests(policy: Policy, requests: Sequence[tuple[str, int, tuple[str, ...]]]) -> list[Completion]:
    """Completions for (prompt, max_new_tokens, stop_strings) requests of many questions: one `complete` call per
    distinct limit and stop set, results in request order."""
    groups: dict[tuple[int, tuple[str, ...]], list[int]] = {}
    for i, (_, limit, stops) in enumerate(requests):
        groups.setdefault((limit, stops), []).append(i)
    results: list[Completion | None] = [None] * len(requests)
    for (limit, stops), members in groups.items():
        for i, completion in zip(members, policy.complete([requests[i][0] for i in members], limit, stops)):
            results[i] = completion
    return results  # type: ignore[return-value]
