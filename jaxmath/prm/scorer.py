"""PRMScorer: per-step P(good) from a process reward model, for best-of-N, data filtering and RL rewards.

Traces are tokenised by `jaxmath.data.encode.encode_prm_trace`, the function PRM training data goes
through, so a step's score is read at exactly the token its training label sits on. Traces are scored
in padded batches (longest first, `jaxmath.inference.sampler.pad_batch`: a run compiles once per length
bucket).
"""
from __future__ import annotations

import os
from typing import Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh
from transformers import PreTrainedTokenizerBase

from jaxmath.checkpoint import from_pretrained
from jaxmath.data.encode import encode_prm_trace
from jaxmath.data.formats import PromptFormat, get_format
from jaxmath.data.tokenizer import load_tokenizer
from jaxmath.inference.sampler import pad_batch
from jaxmath.inference.loading import default_dtype, model_files_dir
from jaxmath.models import TokenClassifier
from jaxmath.objectives.prm import GOOD_LABEL, aggregate_step_scores
from jaxmath.prm.steps import step_texts
from jaxmath.progress import progress_bar

Trace = tuple[str, Sequence[str]]  # (question, steps)


def _good_probability(graphdef: nnx.GraphDef, state: nnx.State, ids: jax.Array, mask: jax.Array) -> jax.Array:
    logits = nnx.merge(graphdef, state)(ids, attention_mask=mask)
    return jax.nn.softmax(logits.astype(np.float32), axis=-1)[..., GOOD_LABEL]


_good_probability_jit = jax.jit(_good_probability, static_argnames=("graphdef",))


class PRMScorer:
    """Scores (question, steps) traces with a 2-label TokenClassifier; prompts are rendered in `fmt`, which
    should be the format the PRM was trained with."""

    def __init__(self, model: TokenClassifier, tokenizer: PreTrainedTokenizerBase, fmt: PromptFormat | str = "boxed",
                 batch_size: int = 16, progress: bool = False):
        if not isinstance(model, TokenClassifier) or model.config.num_labels != 2:
            kind = type(model).__name__ + (f" with {model.config.num_labels} labels"
                                           if isinstance(model, TokenClassifier) else "")
            raise ValueError(f"a PRM must be a TokenClassifier with 2 labels (bad, good), got a {kind}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.graphdef, self.state = nnx.split(model)
        self.tokenizer = tokenizer
        self.fmt = get_format(fmt) if isinstance(fmt, str) else fmt
        self.batch_size = batch_size
        self.progress = progress

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, fmt: PromptFormat | str = "boxed", dtype: str | None = None,
                        mesh: Mesh | None = None, tokenizer_path: str | os.PathLike | None = None,
                        batch_size: int = 16, progress: bool = True) -> "PRMScorer":
        """Load a PRM (jaxmath model directory or HF `*ForTokenClassification` checkpoint) and its tokenizer."""
        model = from_pretrained(path, dtype=dtype or default_dtype(), mesh=mesh)
        if not isinstance(model, TokenClassifier):
            raise ValueError(f"{os.fspath(path)} holds a causal language model, not a PRM (a token classifier "
                             "with 2 labels)")
        tokenizer = load_tokenizer(tokenizer_path or model_files_dir(path))
        return cls(model, tokenizer, fmt, batch_size, progress)

    def score(self, traces: Sequence[Trace]) -> list[np.ndarray]:
        """P(good) of every step of every trace, as float32 arrays in step order (empty for a trace without steps)."""
        encoded = [encode_prm_trace(question, steps, self.tokenizer, self.fmt) if len(steps) else None
                   for question, steps in traces]
        order = sorted((i for i, e in enumerate(encoded) if e is not None), key=lambda i: -len(encoded[i][0]))
        scores = [np.zeros(0, np.float32) for _ in traces]
        pad_id = self.tokenizer.pad_token_id or 0
        with progress_bar(total=len(order), desc="prm", unit="trace", quiet=not self.progress) as bar:
            for first in range(0, len(order), self.batch_size):
                rows = order[first:first + self.batch_size]
                ids, mask = pad_batch([encoded[i][0] for i in rows], self.batch_size, pad_id, left=False)
                probs = np.asarray(_good_probability_jit(self.graphdef, self.state, ids, mask))
                for row, i in enumerate(rows):
                    scores[i] = probs[row, encoded[i][1]]
                bar.update(len(rows))
        return scores

    def score_solutions(self, questions: Sequence[str], solutions: Sequence[str]) -> list[np.ndarray]:
        """Per-step P(good) of each solution, split into steps by `jaxmath.prm.steps.split_steps`."""
        if len(questions) != len(solutions):
            raise ValueError(f"got {len(questions)} questions but {len(solutions)} solutions; they must pair up")
        return self.score([(q, step_texts(s)) for q, s in zip(questions, solutions)])

    @staticmethod
    def aggregate(step_scores: Sequence[np.ndarray], how: str = "min") -> list[float | None]:
        """One score per solution by min, product or last of its step scores; None for a solution without steps."""
        return [aggregate_step_scores(s, how) if len(s) else None for s in step_scores]
