"""Benchmark evaluation: sample completions with the KV-cache sampler, grade them, report pass@k and maj@k.

    python launch/evaluate.py --model ckpt_or_hf_dir --benchmarks gsm8k math500 \\
        --data-dir ../shared/data --format boxed --num-samples 8 --temperature 0.7 --out results/

Benchmarks are read through jaxmath.data's readers (local files in the public layouts, or the Hub when no
data directory is given); prompts use jaxmath.data.formats; answers are graded by jaxmath.verify in its
bounded worker processes. `--out` receives samples.jsonl (one row per sample) and summary.json
({benchmark: {metric: value, "n": problems}}); the summary table is also printed. `--select prm --prm PRM_DIR`
also scores every sample with a process reward model and reports prm@N, the accuracy of the top-scored one.
"""
from __future__ import annotations

import json
import math
import os
import re
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import jax
import numpy as np
from transformers import PreTrainedTokenizerBase

from jaxmath.data.benchmarks import load_benchmark
from jaxmath.data.formats import PromptFormat, get_format, render_messages, render_prompt
from jaxmath.data.schema import Record
from jaxmath.data.tables import format_table
from jaxmath.inference.completions import sample_completions
from jaxmath.inference.config import Sampling, plain_text_stops, round_seed
from jaxmath.inference.loading import load_for_generation
from jaxmath.inference.weights import DecodeWeights, prepare_weights
from jaxmath.models import CausalLM
from jaxmath.objectives.prm import STEP_AGGREGATIONS, aggregate_step_scores, best_of_n
from jaxmath.verify import Verifier

if TYPE_CHECKING:
    from jaxmath.prm.scorer import PRMScorer


class EvaluationError(RuntimeError):
    """An evaluation cannot start: a bad option (unknown benchmarks and missing data are SourceErrors)."""


# --- metrics ------------------------------------------------------------------------------------------

def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k (Chen et al. 2021): chance that k of n samples, c of them correct, hold a correct one."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass_at_k needs 0 <= c <= n and 1 <= k <= n, got n={n} c={c} k={k}")
    return 1.0 if n - c < k else 1.0 - math.comb(n - c, k) / math.comb(n, k)


def answer_key(answer: str) -> str:
    """What majority voting compares: the extracted answer without whitespace or surrounding `$`."""
    return re.sub(r"\s+", "", answer).strip("$")


def majority_correct(answers: Sequence[str | None], correct: Sequence[bool]) -> bool:
    """Whether the most common extracted answer (ties: the one seen first) is a correct one."""
    keys = [answer_key(a) if a else None for a in answers]
    counts = Counter(k for k in keys if k is not None)
    if not counts:
        return False
    top = max(counts.values())
    winner = next(k for k in keys if k is not None and counts[k] == top)
    return any(ok for k, ok in zip(keys, correct) if k == winner)


def benchmark_metrics(answers: Sequence[Sequence[str | None]], correct: Sequence[Sequence[bool]],
                      prm_picks: Sequence[int] | None = None) -> dict[str, float]:
    """pass@1, maj@n, prm@n (with `prm_picks`, each problem's PRM-selected sample) and pass@k (k = 2, 4, ...
    up to n, and n) over problems with n samples each."""
    n = len(correct[0])
    if any(len(c) != n for c in correct):
        raise ValueError("every problem needs the same number of samples")
    ks = sorted({2 ** i for i in range(1, n.bit_length())} | {n}) if n > 1 else []
    metrics = {"pass@1": float(np.mean([sum(c) / n for c in correct]))}
    if n > 1:
        metrics[f"maj@{n}"] = float(np.mean([majority_correct(a, c) for a, c in zip(answers, correct)]))
    if prm_picks is not None:
        metrics[f"prm@{n}"] = float(np.mean([c[pick] for c, pick in zip(correct, prm_picks)]))
    for k in ks:
        metrics[f"pass@{k}"] = float(np.mean([pass_at_k(n, sum(c), k) for c in correct]))
    return {key: round(value, 6) for key, value in metrics.items()} | {"n": len(correct)}


def summary_table(summary: dict[str, dict[str, float]]) -> str:
    """The summary as a text table: one row per benchmark, metrics in percent."""
    metrics = [m for m in dict.fromkeys(k for row in summary.values() for k in row) if m != "n"]
    return format_table([["benchmark", "n", *metrics]] + [
        [name, str(row["n"]), *(f"{100 * row[m]:.1f}" if m in row else "-" for m in metrics)]
        for name, row in summary.items()])


def evaluate_benchmark(name: str, records: Sequence[Record], model: CausalLM | DecodeWeights,
                       tokenizer: PreTrainedTokenizerBase,
                       fmt: PromptFormat, verifier: Verifier, num_samples: int, sampling: Sampling,
                       eos_ids: Sequence[int], batch_size: int, fallback_last_number: bool = False,
                       repair_rounds: int = 0, scorer: PRMScorer | None = None, prm_aggregation: str = "min",
                       quiet: bool = False) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """Metrics for one benchmark and its sample rows (for samples.jsonl). `repair_rounds` > 0 revises failed
    samples with the verifier's feedback (jaxmath.revise) and adds pass@1 after each round; with a PRM
    `scorer`, each row gets its step scores and their `prm_aggregation`, and the metrics prm@N (the
    top-scored sample's accuracy)."""
    from jaxmath.revise import check_attempts, repair_metrics, revise, revision_history

    prompts = [render_prompt(fmt, r.question, tokenizer) for r in records]
    completions = sample_completions(model, tokenizer, prompts, num_samples, sampling, eos_ids, batch_size, name,
                                     quiet)
    flat = [text for per_problem in completions for text, _ in per_problem]
    golds = [r.answer for r in records for _ in range(num_samples)]
    attempts = check_attempts(flat, golds, fmt, verifier, fallback_last_number=fallback_last_number)
    answers, verdicts = [a.answer for a in attempts], [a.verdict for a in attempts]
    rows = [{"benchmark": name, "id": r.id, "sample": s, "question": r.question, "prompt": prompts[p],
             "completion": text, "tokens": length,
             "extracted": answers[p * num_samples + s], "gold": r.answer,
             "verdict": verdicts[p * num_samples + s].outcome.value, "reason": verdicts[p * num_samples + s].reason}
            for p, r in enumerate(records) for s, (text, length) in enumerate(completions[p])]
    per_problem = [range(p * num_samples, (p + 1) * num_samples) for p in range(len(records))]
    picks = None
    if scorer is not None:
        step_scores = scorer.score_solutions([r.question for r in records for _ in range(num_samples)], flat)
        picks = [best_of_n([step_scores[i] for i in idx], prm_aggregation) for idx in per_problem]
        for row, scores in zip(rows, step_scores):
            row["prm_score"] = aggregate_step_scores(scores, prm_aggregation) if len(scores) else None
            row["prm_step_scores"] = [round(float(x), 6) for x in scores]
    metrics = benchmark_metrics([[answers[i] for i in idx] for idx in per_problem],
                                [[verdicts[i].correct for i in idx] for idx in per_problem], picks)
    if repair_rounds:
        def respond(conversations: list, round_: int) -> list[str]:
            prompts = [render_messages(c, tokenizer) for c in conversations]
            return [s[0][0] for s in sample_completions(model, tokenizer, prompts, 1, round_seed(sampling, round_),
                                                        eos_ids, batch_size, f"{name} repair {round_}", quiet)]

        histories = revise([r.question for r in records for _ in range(num_samples)], golds, attempts, respond,
                           fmt, verifier, repair_rounds, fallback_last_number=fallback_last_number)
        metrics = {"pass@1": metrics["pass@1"], **repair_metrics(histories, num_samples, repair_rounds), **metrics}
        for row, history in zip(rows, histories):
            row["revisions"], row["final_verdict"] = revision_history(history, fmt), history[-1].verdict.outcome.value
    return metrics, rows


def evaluate(model_path: str, benchmarks: Sequence[str], out_dir: str | os.PathLike,
             data_dir: str | os.PathLike | None = None, format_name: str = "boxed", num_samples: int = 1,
             sampling: Sampling = Sampling(), batch_size: int = 32, limit: int | None = None,
             dtype: str | None = None, tokenizer_path: str | None = None, verifier_workers: int | None = None,
             fallback_last_number: bool = False, repair_rounds: int = 0, prm: str | None = None,
             prm_aggregation: str = "min", quiet: bool = False) -> dict[str, dict[str, float]]:
    """Evaluate a model directory on benchmarks; writes samples.jsonl and summary.json into `out_dir`. With a
    PRM directory `prm`, samples are also scored by it (in the same prompt format) and prm@N is reported.
    `quiet` turns the progress bars off."""
    if num_samples < 1 or batch_size < 1 or repair_rounds < 0:
        raise EvaluationError(f"--num-samples and --batch-size must be >= 1 and --repair-rounds >= 0, got "
                              f"{num_samples}, {batch_size} and {repair_rounds}")
    fmt = get_format(format_name)
    problems = {name: load_benchmark(name, data_dir, limit) for name in benchmarks}  # fail fast on bad names
    if prm_aggregation not in STEP_AGGREGATIONS:
        raise EvaluationError(f"unknown PRM aggregation {prm_aggregation!r}; choose one of "
                              f"{sorted(STEP_AGGREGATIONS)}")
    model, tokenizer, eos_ids, mesh = load_for_generation(model_path, dtype, tokenizer_path)
    scorer = None
    if prm is not None:
        from jaxmath.prm.scorer import PRMScorer

        scorer = PRMScorer.from_pretrained(prm, fmt, dtype, mesh, batch_size=batch_size, progress=not quiet)
    sampling = plain_text_stops(sampling, tokenizer)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary: dict[str, dict[str, float]] = {}
    with Verifier(workers=verifier_workers) as verifier, jax.set_mesh(mesh), \
            open(out / "samples.jsonl", "w", encoding="utf-8") as samples:
        weights = prepare_weights(model)  # the sampler's copy, made once for every benchmark and repair round
        for name, records in problems.items():
            summary[name], rows = evaluate_benchmark(name, records, weights, tokenizer, fmt, verifier, num_samples,
                                                     sampling, eos_ids, batch_size, fallback_last_number,
                                                     repair_rounds, scorer, prm_aggregation, quiet)
            samples.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
            samples.flush()
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary
