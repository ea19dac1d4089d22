"""`jaxmath eval` (also launch/evaluate.py): sample completions for benchmark problems, grade them, report pass@k,
maj@k and PRM best-of-N, or answer them with a jaxmath.solve strategy (`--strategy beam --prm PRM_DIR`) and report
accuracy next to tokens per problem (`jaxmath.evaluation` does the work).

    jaxmath eval --model ckpt_or_hf_dir --benchmarks gsm8k math500 \\
        --data-dir ../shared/data --format boxed --num-samples 8 --temperature 0.7 --out results/
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from jaxmath.commands.options import (DTYPE_CHOICES, PRM_AGGREGATIONS, add_compile_cache_argument,
                                      add_quiet_argument, add_sampling_arguments, sampling_from_args)
from jaxmath.inference.config import Sampling
from jaxmath.progress import configure_logging
from jaxmath.solve.defaults import EVAL_STRATEGIES, NEEDS_PRM


def eval_main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """Evaluate a model on math benchmarks: pass@1, maj@k and unbiased pass@k, written to --out."""
    from jaxmath.data.benchmarks import BENCHMARKS
    from jaxmath.data.formats import FORMATS
    from jaxmath.verify.sandbox import LAYERS

    parser = argparse.ArgumentParser(prog=prog, description=eval_main.__doc__)
    parser.add_argument("--model", required=True, help="HF checkpoint directory or jaxmath model directory")
    parser.add_argument("--benchmarks", nargs="+", required=True, metavar="NAME",
                        help=f"benchmarks to run: {', '.join(BENCHMARKS)}")
    parser.add_argument("--data-dir", default=os.environ.get("JAXMATH_DATA_DIR"),
                        help="local benchmark folder (<dir>/<benchmark>/test.jsonl); default $JAXMATH_DATA_DIR, "
                             "else the Hugging Face Hub")
    parser.add_argument("--format", default="boxed", choices=sorted(FORMATS), help="prompt format (default boxed)")
    parser.add_argument("--num-samples", type=int, default=1, help="samples per problem (k of maj@k and pass@k)")
    add_sampling_arguments(parser, Sampling(), stop_help="; plain-text prompts stop at '\\nQuestion:' by default")
    parser.add_argument("--batch-size", type=int, default=32, help="rows per generate call")
    parser.add_argument("--limit", type=int, default=None, help="only the first N problems of each benchmark")
    parser.add_argument("--dtype", choices=DTYPE_CHOICES, default=None,
                        help="compute dtype (default: bfloat16 on GPU/TPU, float32 on CPU)")
    parser.add_argument("--tokenizer", default=None, help="tokenizer directory (default: the model's)")
    parser.add_argument("--verifier-workers", type=int, default=None, help="grading processes (default: CPU cores)")
    parser.add_argument("--fallback-last-number", action="store_true",
                        help="grade the last number when no final-answer marker is found (base models)")
    parser.add_argument("--repair-rounds", type=int, default=0, metavar="R",
                        help="revise failed samples up to R times with the verifier's verdict (and the sandbox "
                             "error for pot) as feedback; adds pass@1_after_repair_1..R")
    parser.add_argument("--select", choices=["majority", "prm"], default="majority",
                        help="how to pick one of the N samples besides pass@k: majority vote (maj@N, always "
                             "reported) or also the top-scored by a process reward model (prm@N; needs --prm)")
    parser.add_argument("--prm", default=None, metavar="PATH",
                        help="PRM directory (jaxmath or HF token classifier, trained in --format) for --select prm")
    parser.add_argument("--prm-aggregation", choices=PRM_AGGREGATIONS, default="min",
                        help="how a sample's step scores become one score (default min)")
    search = parser.add_argument_group(
        "strategies", "--strategy sample (the default) samples --num-samples completions per problem and reports "
        "pass@k, maj@k (and prm@k); the others answer each problem with jaxmath.solve and report its accuracy, "
        "--num-samples being the samples per problem (self_consistency, best_of_n) or next steps per partial "
        "solution (beam, tree); every strategy reports tokens generated per problem")
    search.add_argument("--strategy", choices=EVAL_STRATEGIES, default="sample", help="(default sample)")
    search.add_argument("--beam", type=int, default=4, help="partial solutions kept per step (beam; default 4)")
    search.add_argument("--budget", type=int, default=None, metavar="TOKENS",
                        help="tokens generated per problem at most (default: each strategy's own limits)")
    search.add_argument("--max-steps", type=int, default=16, help="steps per solution (beam, tree; default 16)")
    search.add_argument("--step-tokens", type=int, default=64, help="tokens per step (beam, tree; default 64)")
    search.add_argument("--iterations", type=int, default=16, help="tree expansions (default 16)")
    search.add_argument("--exploration", type=float, default=1.0, help="tree exploration weight (default 1)")
    parser.add_argument("--require-sandbox", nargs="+", default=[], choices=LAYERS, metavar="LAYER",
                        help="fail at start unless the program sandbox (--format pot runs each program there) gets "
                             f"these isolation layers on this machine (layers: {', '.join(LAYERS)})")
    parser.add_argument("--out", required=True, help="output directory for samples.jsonl and summary.json")
    add_quiet_argument(parser)
    add_compile_cache_argument(parser)
    args = parser.parse_args(argv)
    configure_logging(args.quiet)
    if args.strategy == "sample" and (args.select == "prm") != (args.prm is not None):
        parser.error("--select prm and --prm PATH go together")
    if args.strategy in NEEDS_PRM and args.prm is None:
        parser.error(f"--strategy {args.strategy} needs --prm PATH")
    if args.num_samples > 1 and args.temperature == 0.0:
        print("warning: --num-samples > 1 with greedy decoding gives identical samples", file=sys.stderr)
    from jaxmath.checkpoint import CheckpointError
    from jaxmath.compilation import enable_compile_cache
    from jaxmath.data.sources import SourceError
    from jaxmath.evaluation import EvaluationError, evaluate, summary_table
    from jaxmath.verify.sandbox import SandboxUnavailable, require_layers

    start = time.perf_counter()
    try:
        sampling = sampling_from_args(args)
        enable_compile_cache(args.compile_cache, source="--compile-cache")
        if args.require_sandbox:
            require_layers(args.require_sandbox)
        summary = evaluate(args.model, args.benchmarks, args.out, args.data_dir, args.format, args.num_samples,
                           sampling, args.batch_size, args.limit, args.dtype, args.tokenizer, args.verifier_workers,
                           args.fallback_last_number, args.repair_rounds, args.prm, args.prm_aggregation,
                           quiet=args.quiet, strategy=args.strategy,
                           search=dict(beam=args.beam, budget=args.budget, max_steps=args.max_steps,
                                       step_tokens=args.step_tokens, iterations=args.iterations,
                                       exploration=args.exploration))
    except (EvaluationError, SourceError, CheckpointError, FileNotFoundError, ValueError, SandboxUnavailable) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(summary_table(summary))
    print(f"wrote {Path(args.out) / 'samples.jsonl'} and summary.json in {time.perf_counter() - start:.1f}s")
    return 0
