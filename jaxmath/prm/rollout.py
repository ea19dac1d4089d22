"""Step labels from Monte-Carlo rollouts (Math-Shepherd): a step is good when at least one of k continuations
of the solution up to and including it reaches the gold answer.

For each step of each solution (split by `jaxmath.prm.steps.split_steps`), the policy continues the prompt
followed by the solution's own text up to the end of that step, k times, in batches through the KV-cache
sampler; each continuation, appended to its prefix, is graded by the verifier in its worker processes. The
row records the hard label and the soft one (the share of continuations that reached the answer).
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
from transformers import PreTrainedTokenizerBase

from jaxmath.data.encode import check_text
from jaxmath.data.formats import PromptFormat, render_prompt
from jaxmath.data.schema import BadRow
from jaxmath.inference.completions import sample_completions
from jaxmath.inference.config import Sampling
from jaxmath.inference.weights import DecodeWeights
from jaxmath.models import CausalLM
from jaxmath.prm.steps import split_steps
from jaxmath.verify.answers import extract_answers, grade_answers
from jaxmath.verify.pool import Verifier


def monte_carlo_labels(policy: CausalLM | DecodeWeights, tokenizer: PreTrainedTokenizerBase, fmt: PromptFormat,
                       solutions: Sequence[Mapping[str, Any]], verifier: Verifier, *, rollouts: int = 8,
                       sampling: Sampling = Sampling(max_new_tokens=512, temperature=0.7),
                       eos_ids: Sequence[int] = (), batch_size: int = 32,
                       fallback_last_number: bool = False, quiet: bool = False) -> list[dict[str, Any] | None]:
    """PRM rows `{"question", "answer", "steps", "labels", "soft_labels"}` for solutions given as
    `{"question", "solution", "answer"}` (answer = the gold); None for a solution without steps.

    Sampling settings (temperature, max_new_tokens, stop strings) apply to every rollout; `eos_ids` are the
    policy's end-of-turn tokens (see `jaxmath.inference.loading.stop_token_ids`).
    """
    if rollouts < 1:
        raise ValueError(f"rollouts must be >= 1, got {rollouts}")
    items = []
    for i, row in enumerate(solutions):
        try:
            items.append(tuple(check_text(row.get(key), key) for key in ("question", "solution", "answer")))
        except (BadRow, AttributeError) as err:
            raise ValueError(f"solution {i}: {err}") from None
    steps = [split_steps(solution) for _, solution, _ in items]
    prefixes = [(q, solution[:step.end], gold) for (q, solution, gold), trace in zip(items, steps) for step in trace]
    prompts = [render_prompt(fmt, q, tokenizer) + prefix for q, prefix, _ in prefixes]
    continuations = sample_completions(policy, tokenizer, prompts, rollouts, sampling, eos_ids, batch_size,
                                       label="prm rollouts", quiet=quiet)
    texts = [prefix + text for (_, prefix, _), per_prefix in zip(prefixes, continuations) for text, _ in per_prefix]
    answers = extract_answers(texts, fmt.extraction_style, fallback_last_number)
    verdicts = grade_answers(verifier, answers, [gold for _, _, gold in prefixes for _ in range(rollouts)])
    reached = np.asarray([v.correct for v in verdicts], bool).reshape(len(prefixes), rollouts)
    rows: list[dict[str, Any] | None] = []
    first = 0
    for (question, _, gold), trace in zip(items, steps):
        if not trace:
            rows.append(None)
            continue
        hits = reached[first:first + len(trace)]
        first += len(trace)
        rows.append({"question": question, "answer": gold, "steps": [step.text for step in trace],
                     "labels": hits.any(axis=1).astype(int).tolist(), "soft_labels": hits.mean(axis=1).tolist()})
    return rows
