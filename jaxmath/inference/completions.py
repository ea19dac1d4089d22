"""Prompts in, completions out: tokenised prompts padded into bucketed batches, run through the sampler with
one `Sampling`, decoded and cut at stop strings, with progress."""
from __future__ import annotations

import time
from typing import Sequence

import numpy as np
from transformers import PreTrainedTokenizerBase

from jaxmath.inference.config import Sampling
from jaxmath.inference.sampler import completion_texts, generate
from jaxmath.models import CausalLM

LENGTH_BUCKET = 64  # rows are padded to a multiple of this, so a run compiles once per bucket


def pad_batch(rows: Sequence[Sequence[int]], batch_size: int, pad_id: int, *, left: bool,
              bucket: int = LENGTH_BUCKET) -> tuple[np.ndarray, np.ndarray]:
    """[batch_size, bucketed width] ids and mask, rows padded on the left (prompts) or the right (scored texts);
    missing rows repeat the first (their output is dropped)."""
    width = -(-max(len(r) for r in rows) // bucket) * bucket
    ids = np.full((batch_size, width), pad_id, np.int32)
    mask = np.zeros((batch_size, width), np.int32)
    for i in range(batch_size):
        row = rows[i] if i < len(rows) else rows[0]
        place = slice(width - len(row), width) if left else slice(0, len(row))
        ids[i, place], mask[i, place] = row, 1
    return ids, mask


def sample_completions(model: CausalLM, tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str], num_samples: int,
                       sampling: Sampling, eos_ids: Sequence[int], batch_size: int = 32,
                       label: str = "generate") -> list[list[tuple[str, int]]]:
    """`num_samples` completions (text, generated tokens) per prompt, longest prompts first, with progress."""
    encoded = [tokenizer.encode(p, add_special_tokens=False) for p in prompts]
    jobs = sorted(((i, s) for i in range(len(prompts)) for s in range(num_samples)), key=lambda j: -len(encoded[j[0]]))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    results: list[list[tuple[str, int]]] = [[("", 0)] * num_samples for _ in prompts]
    start, tokens = time.perf_counter(), 0
    for first in range(0, len(jobs), batch_size):
        batch = jobs[first:first + batch_size]
        ids, mask = pad_batch([encoded[i] for i, _ in batch], batch_size, pad_id, left=True)
        out = generate(model, ids, attention_mask=mask, max_new_tokens=sampling.max_new_tokens,
                       temperature=sampling.temperature, top_p=sampling.top_p, top_k=sampling.top_k,
                       min_p=sampling.min_p, eos_token_id=list(eos_ids), pad_token_id=pad_id,
                       seed=sampling.seed + first, stop_strings=sampling.stop_strings or None, tokenizer=tokenizer)
        texts, lengths = completion_texts(out, tokenizer, sampling.stop_strings), np.asarray(out.lengths)
        for row, (i, s) in enumerate(batch):
            results[i][s] = (texts[row], int(lengths[row]))
        tokens += int(lengths[:len(batch)].sum())
        done, elapsed = first + len(batch), time.perf_counter() - start
        print(f"[{label}] {done}/{len(jobs)} samples | {tokens} tokens | {tokens / elapsed:.1f} tok/s | "
              f"{elapsed:.0f}s elapsed, ~{elapsed / done * (len(jobs) - done):.0f}s left", flush=True)
    return results
