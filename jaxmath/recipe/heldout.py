"""Held-out accuracy of a stage's model: greedy pass@1 and mean completion length on one fixed question set, so
every stage of a pipeline is measured alike."""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Sequence

from jaxmath.data.schema import Record


@dataclasses.dataclass(frozen=True)
class HeldoutSection:
    """The questions every model-producing stage is scored on (`data`: a record file; `{NAME}` names a stage's
    directory), at most `limit` of them, greedy with `max_new_tokens`, `batch_size` rows per generate call."""

    data: str
    limit: int = 64
    max_new_tokens: int = 256
    batch_size: int = 32

    def __post_init__(self) -> None:
        if self.limit < 1 or self.max_new_tokens < 1 or self.batch_size < 1:
            raise ValueError("heldout.limit, heldout.max_new_tokens and heldout.batch_size must be >= 1")


def heldout_metrics(model_dir: str | os.PathLike, records: Sequence[Record], format_name: str,
                    max_new_tokens: int, batch_size: int) -> dict[str, Any]:
    """{"accuracy": greedy pass@1, "mean_length": mean generated tokens, "n": problems} of a causal LM directory."""
    import jax
    import numpy as np

    from jaxmath.data.formats import get_format
    from jaxmath.evaluation import evaluate_benchmark
    from jaxmath.inference.config import Sampling, plain_text_stops
    from jaxmath.inference.loading import load_for_generation
    from jaxmath.verify import Verifier

    if not records:
        raise ValueError("held-out evaluation needs at least one question")
    model, tokenizer, eos_ids, mesh = load_for_generation(model_dir)
    sampling = plain_text_stops(Sampling(max_new_tokens=max_new_tokens, temperature=0.0), tokenizer)
    with Verifier(workers=1) as verifier, jax.set_mesh(mesh):
        metrics, rows = evaluate_benchmark("heldout", records, model, tokenizer, get_format(format_name), verifier,
                                           1, sampling, eos_ids, min(batch_size, len(records)))
    return {"accuracy": metrics["pass@1"], "mean_length": round(float(np.mean([r["tokens"] for r in rows])), 2),
            "n": len(records)}
