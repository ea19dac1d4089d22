"""`jaxmath data prm-label`: PRM training traces from a policy's Monte-Carlo rollouts and verified solutions."""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from jaxmath.commands.options import (DTYPE_CHOICES, add_compile_cache_argument, add_quiet_argument,
                                      add_sampling_arguments, sampling_from_args)
from jaxmath.data.formats import FORMATS
from jaxmath.inference.config import Sampling

DEFAULT_SAMPLING = Sampling(max_new_tokens=512, temperature=0.7)


def add_prm_label_parser(commands: Any) -> None:
    """The `prm-label` subcommand's arguments."""
    p = commands.add_parser("prm-label", help="PRM step labels from policy rollouts and verified solutions",
                            description=(
        "Sample --samples solutions per problem from a policy, label every step of each by Monte-Carlo rollouts "
        "(a step is good when at least one of --rollouts continuations of the solution up to it reaches the gold "
        "answer; the share that do is the soft label), add --verified solutions labelled by the verified rule "
        "(graded again; correct: every step good, wrong: bad from the first failing equation, else the last "
        "step), and write the traces {id, question, answer, steps, labels, source} that PRM training reads."),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--policy", required=True, metavar="DIR", help="policy model directory (jaxmath or HF)")
    p.add_argument("--input", action="append", default=[], metavar="PATH",
                   help="problems: a record-schema .jsonl/.parquet file (repeatable)")
    p.add_argument("--verified", action="append", default=[], metavar="PATH",
                   help="records with worked solutions (e.g. `jaxmath data synthesize` output) to label by the "
                        "verified rule (repeatable)")
    p.add_argument("--output", required=True, help="output JSONL of traces (written atomically)")
    p.add_argument("--format", default="boxed", choices=sorted(FORMATS),
                   help="prompt format of the policy and of the PRM to be trained")
    p.add_argument("--samples", type=int, default=4, help="solutions sampled per problem")
    p.add_argument("--rollouts", type=int, default=8, help="continuations per step")
    p.add_argument("--limit", type=int, default=None, help="only the first N problems of --input")
    p.add_argument("--chunk", type=int, default=64, help="problems per sample-and-label round")
    p.add_argument("--batch-size", type=int, default=32, help="rows per generate call")
    p.add_argument("--dtype", choices=DTYPE_CHOICES, default=None,
                   help="compute dtype (default: bfloat16 on GPU/TPU, float32 on CPU)")
    p.add_argument("--verifier-workers", type=int, default=None, help="grading processes (default: CPU cores)")
    add_sampling_arguments(p.add_argument_group("sampling (solutions and rollouts)"), DEFAULT_SAMPLING)
    add_quiet_argument(p)
    add_compile_cache_argument(p)


def prm_label_main(args: argparse.Namespace) -> int:
    """Run `prm-label`: load the policy and the records, label, write, print the counts as JSON."""
    from jaxmath.checkpoint import CheckpointError
    from jaxmath.data.formats import get_format
    from jaxmath.data.readers import BadRowError, read_records, write_jsonl
    from jaxmath.progress import configure_logging, progress_bar

    configure_logging(args.quiet)
    try:
        if not args.input and not args.verified:
            raise ValueError("nothing to label: give --input (problems) and/or --verified (worked solutions)")
        if args.limit is not None and args.limit < 1:
            raise ValueError(f"--limit must be >= 1, got {args.limit}")
        problems = [r for path in args.input for r in read_records(path)][:args.limit]
        verified = [r for path in args.verified for r in read_records(path)]
        rows, counts = _label(args, problems, verified, progress_bar, get_format(args.format))
        write_jsonl(rows, args.output)
    except (BadRowError, CheckpointError, FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(json.dumps({"problems": len(problems), "verified_solutions": len(verified), **counts.summary()}))
    print(f"wrote {args.output}", file=sys.stderr)
    return 0


def _label(args: argparse.Namespace, problems: list, verified: list, progress_bar: Any, fmt: Any) -> tuple:
    import jax

    from jaxmath.inference.config import plain_text_stops
    from jaxmath.inference.loading import load_for_generation
    from jaxmath.prm.traces import build_traces
    from jaxmath.verify import Verifier

    from jaxmath.compilation import enable_compile_cache
    from jaxmath.inference.weights import prepare_weights

    enable_compile_cache(args.compile_cache, source="--compile-cache")
    policy, tokenizer, eos_ids, mesh = load_for_generation(args.policy, args.dtype)
    sampling = plain_text_stops(sampling_from_args(args), tokenizer)
    with progress_bar(total=len(problems) + len(verified), desc="prm-label", unit="problem",
                      quiet=args.quiet) as bar, Verifier(workers=args.verifier_workers) as verifier, \
            jax.set_mesh(mesh):
        return build_traces(prepare_weights(policy), tokenizer, fmt, problems, verified, verifier,
                            samples=args.samples, rollouts=args.rollouts, sampling=sampling, eos_ids=eos_ids,
                            batch_size=args.batch_size, chunk=args.chunk, advance=bar.update, quiet=args.quiet)
