"""`jaxmath eval` (also launch/evaluate.py): sample completions for benchmark problems, grade them, report pass@k,
maj@k and PRM best-of-N (`jaxmath.evaluation` does the work).

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
    parser.add_argument("--require-sandbox", nargs="+", default=[], choices=LAYERS, metavar="LAYER",
                        help="fail at start unless the program sandbox (--format pot runs each program there) gets "
                             f"these isolation layers on this machine (layers: {', '.join(LAYERS)})")
    parser.add_argument("--out", required=True, help="output directory for samples.jsonl and summary.json")
    add_quiet_argument(parser)
    add_compile_cache_argument(parser)
    args = parser.parse_args(argv)
    configure_logging(args.quiet)
    if (args.select == "prm") != (args.prm is not None):
        parser.error("--select prm and --prm PATH go together")
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
                           quiet=args.quiet)
    except (EvaluationError, SourceError, CheckpointError, FileNotFoundError, ValueError, SandboxUnavailable) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(summary_table(summary))
    print(f"wrote {Path(args.out) / 'samples.jsonl'} and summary.json in {time.perf_counter() - start:.1f}s")
    return 0
