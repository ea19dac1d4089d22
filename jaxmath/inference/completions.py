"""Prompts in, completions out: tokenised prompts run through the sampler's continuous batching with one
`Sampling`, decoded and cut at stop strings, with a progress bar."""
from __future__ import annotations

import time
from typing import Sequence

from transformers import PreTrainedTokenizerBase

from jaxmath.inference.config import Sampling
from jaxmath.inference.sampler import Completion, generate_continuous, truncate_at_stop
from jaxmath.inference.weights import DecodeWeights
from jaxmath.models import CausalLM
from jaxmath.progress import progress_bar

def sample_completions(model: CausalLM | DecodeWeights, tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str],
                       num_samples: int, sampling: Sampling, eos_ids: Sequence[int], batch_size: int = 32,
                       label: str = "generate", quiet: bool = False) -> list[list[tuple[str, int]]]:
    """`num_samples` completions (text, generated tokens) per prompt, about `batch_size` rows decoding at a
    time with continuous batching (each prompt prefilled once for all its samples), with a progress bar."""
    if not prompts:
        return []
    encoded = [tokenizer.encode(p, add_special_tokens=False) for p in prompts]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    results: list[list[tuple[str, int]]] = [[] for _ in prompts]
    with progress_bar(total=len(prompts) * num_samples, desc=label, unit="sample", quiet=quiet) as bar:
        start, tokens = time.perf_counter(), 0

        def finished(request: int, completions: list[Completion]) -> None:
            nonlocal tokens
            texts = tokenizer.batch_decode([c.tokens.tolist() for c in completions], skip_special_tokens=True)
            results[request] = [(truncate_at_stop(text, sampling.stop_strings), len(c.tokens))
                                for text, c in zip(texts, completions)]
            tokens += sum(len(c.tokens) for c in completions)
            bar.set_postfix(tok_s=f"{tokens / max(time.perf_counter() - start, 1e-9):.1f}", refresh=False)
            bar.update(len(completions))

        generate_continuous(model, encoded, slots=max(1, batch_size // num_samples), num_samples=num_samples,
                            max_new_tokens=sampling.max_new_tokens, temperature=sampling.temperature,
                            top_p=sampling.top_p, top_k=sampling.top_k, min_p=sampling.min_p,
                            eos_token_id=list(eos_ids), pad_token_id=pad_id, seed=sampling.seed,
                            stop_strings=sampling.stop_strings or None, tokenizer=tokenizer, on_finish=finished)
    return results
