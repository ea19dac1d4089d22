"""The one set of decoding settings, used by evaluation, GRPO rollouts, teacher synthesis, PRM labelling and the
command line (`jaxmath.commands.options.add_sampling_arguments`); configs nest it as `sampling: {...}`."""
from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

SEED_STRIDE = 1_000_003  # seeds derived from one base are this far apart: far from any batch offset
PLAIN_TEXT_STOP = "\nQuestion:"  # where a plain-text ("Question: ... Answer:") prompt's answer ends


@dataclasses.dataclass(frozen=True)
class Sampling:
    """Decoding settings: greedy when temperature is 0; top-k 0 and top-p / min-p at their neutral values
    (1, 0) are off. `stop_strings` end a completion (cut before the stop string)."""

    max_new_tokens: int = 1024
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    seed: int = 0
    stop_strings: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"sampling.max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"sampling.temperature must be >= 0, got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"sampling.top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"sampling.top_k must be >= 0, got {self.top_k}")
        if not 0.0 <= self.min_p <= 1.0:
            raise ValueError(f"sampling.min_p must be in [0, 1], got {self.min_p}")
        if isinstance(self.stop_strings, str):
            raise ValueError(f"sampling.stop_strings must be a list of strings, got {self.stop_strings!r}")
        object.__setattr__(self, "stop_strings", tuple(self.stop_strings))


def offset_seed(base: int, index: int) -> int:
    """The seed of the `index`-th derived stream of `base` (a revision round, a run seed's rollouts)."""
    return base + index * SEED_STRIDE


def round_seed(sampling: Sampling, round_: int) -> Sampling:
    """`sampling` for round `round_` of a repeated request: a seed of its own, so the coin flips of one round
    do not repeat those of the last."""
    return dataclasses.replace(sampling, seed=offset_seed(sampling.seed, round_))


def plain_text_stops(sampling: Sampling, tokenizer: PreTrainedTokenizerBase) -> Sampling:
    """Plain-text prompts end in "Answer:": unless stop strings are given, stop where a new question starts."""
    if tokenizer.chat_template or sampling.stop_strings:
        return sampling
    return dataclasses.replace(sampling, stop_strings=(PLAIN_TEXT_STOP,))
