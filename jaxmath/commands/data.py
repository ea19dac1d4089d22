"""`jaxmath data`: build a training JSONL from named sources, files and generators (build); synthesize verified
solutions and revision data with a teacher (synthesize, revise); build DPO preference pairs from sampled, graded
completions (pairs); keep generated solutions that are correct and that a PRM rates highly (prm-filter).

    jaxmath data build --output data/train.jsonl --data-dir ../shared/data \\
        --hf-datasets gsm8k --hf-samples 2000 --include-synthetic --synthetic-samples 2000
    jaxmath data build --list-hf-datasets
    jaxmath data synthesize --teacher http://localhost:8000/v1 --teacher-model NAME \\
        --input data/train.jsonl --output data/pot.jsonl --samples 4
    jaxmath data revise --teacher ckpt/ --input data/train.jsonl --rounds 2 --output-dir data/revise
    jaxmath data prm-filter --in results/samples.jsonl --prm runs/prm/final_model --out kept.jsonl
    jaxmath data pairs --input results/samples.jsonl --data-dir ../shared/data --output data/dpo/pairs.jsonl
"""
from __future__ import annotations

import argparse
import logging
import sys

from jaxmath.data.benchmarks import evaluation_splits
from jaxmath.data.builder import BuildConfig, build, build_summary
from jaxmath.data.decontaminate import NGRAM, THRESHOLD
from jaxmath.data.formats import FORMATS
from jaxmath.data.readers import BadRowError, FieldMap
from jaxmath.data.sources import SOURCES, SourceError, describe_sources
from jaxmath.commands.options import DTYPE_CHOICES, PRM_AGGREGATIONS, add_quiet_argument
from jaxmath.commands.synthesis import add_revise_parser, add_synthesize_parser
from jaxmath.commands.synthesis import run as run_synthesis
from jaxmath.progress import configure_logging

log = logging.getLogger(__name__)


def _parser(prog: str | None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=(
        "Build a training JSONL from named sources, files and generators (build); synthesize verified "
        "program-of-thought solutions with a teacher (synthesize); build revision data (revise); build DPO pairs "
        "from graded samples (pairs); keep the generated solutions that are correct and that a process reward "
        "model rates highly (prm-filter)."))
    commands = parser.add_subparsers(dest="command", metavar="{build,synthesize,revise,pairs,prm-filter}")
    b = commands.add_parser("build", help="build a training JSONL", description=(
        "Collect records from named sources (the Hub by default, --data-dir for local copies), local files and "
        "synthetic generators; drop bad rows, exact duplicates and questions that overlap evaluation sets (every "
        "benchmark present under --data-dir, and any named with --decontaminate); write one JSONL in the jaxmath "
        "record schema and print a per-source summary and the rows each evaluation set removed. A split that an "
        "evaluation benchmark scores is refused unless --allow-eval-splits is given."),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    b.add_argument("--output", help="output JSONL path (written atomically)")
    b.add_argument("--list-hf-datasets", action="store_true", help="list the named sources with sizes and licences")
    b.add_argument("--list-generators", action="store_true", help="list the synthetic generators by family")
    src = b.add_argument_group("sources")
    src.add_argument("--hf-datasets", nargs="+", default=[], metavar="NAME", choices=sorted(SOURCES),
                     help=f"named sources to include: {', '.join(SOURCES)}")
    src.add_argument("--hf-samples", type=int, default=None, metavar="N",
                     help="keep at most N records per source or input file (seeded sample; default: all)")
    src.add_argument("--split", nargs="+", default=[], metavar="[SOURCE=]SPLIT",
                     help="split to read: SPLIT for every source, SOURCE=SPLIT for one (default: each source's own, "
                          "e.g. train; never guessed from the files on disk)")
    src.add_argument("--allow-eval-splits", action="store_true",
                     help="read a split that an evaluation benchmark scores (e.g. svamp's test split), which is "
                          "refused otherwise; that benchmark is then not decontaminated against and its scores "
                          "no longer measure held-out problems")
    src.add_argument("--data-dir", default=None,
                     help="read sources from DIR/<folder>/<split>.jsonl|.parquet instead of the Hub")
    src.add_argument("--input", action="append", default=[], metavar="PATH",
                     help="a local .jsonl/.parquet file to include (repeatable)")
    src.add_argument("--field-map", default=None, metavar="SPEC",
                     help="layout of the --input files, e.g. 'question=problem,answer=target' "
                          "(keys: question, answer, solution, id, answer_style, metadata; join keys with +); "
                          "default: files already in the record schema")
    gen = b.add_argument_group("generators")
    gen.add_argument("--include-synthetic", action="store_true", help="add the native synthetic generators")
    gen.add_argument("--synthetic-samples", type=int, default=1000, metavar="N",
                     help="synthetic records in all, spread evenly over --generators")
    gen.add_argument("--generators", nargs="+", default=None, metavar="NAME",
                     help="synthetic generators to use (default: all except ta__*)")
    gen.add_argument("--ta-samples", type=int, default=0, metavar="N",
                     help="technical-analysis records in all, spread over the ta__* generators")
    flt = b.add_argument_group("filters")
    decon = flt.add_mutually_exclusive_group()
    decon.add_argument("--decontaminate", nargs="+", default=[], metavar="EVAL",
                       help="evaluation sets to decontaminate against besides the benchmarks found under --data-dir "
                            "(checked by default): a benchmark name (the split it scores, e.g. aime24), "
                            "SOURCE:SPLIT (e.g. math:test) or a .jsonl/.parquet path")
    decon.add_argument("--no-decontaminate", action="store_true",
                       help="skip decontamination (by default every benchmark present under --data-dir is checked)")
    flt.add_argument("--ngram", type=int, default=NGRAM, help="n-gram length (in words) for decontamination")
    flt.add_argument("--threshold", type=float, default=THRESHOLD,
                     help="drop a record when this share of its n-grams, or of an evaluation question's, is shared")
    flt.add_argument("--dropped-report", default=None, metavar="PATH",
                     help="where to write the decontamination drops (default: OUTPUT.dropped.jsonl)")
    flt.add_argument("--tokenizer", default=None, metavar="DIR", help="tokenizer directory for --max-tokens")
    flt.add_argument("--max-tokens", type=int, default=None, metavar="N",
                     help="skip records whose question + solution exceed N tokens")
    flt.add_argument("--strict", action="store_true", help="stop at the first bad row, naming its file and line")
    b.add_argument("--seed", type=int, default=0, help="seed for sampling and the generators")
    add_quiet_argument(b)
    add_synthesize_parser(commands)
    add_revise_parser(commands)
    f = commands.add_parser("prm-filter", help="keep correct solutions that a PRM scores above a threshold",
                            description=(
        "Read solutions (evaluation's samples.jsonl, or rows with question, solution and answer), drop the wrong "
        "ones, score the rest with a process reward model and keep those whose aggregated step score exceeds "
        "--threshold; write the kept rows with their prm_score and print how many were dropped and why."))
    f.add_argument("--in", dest="input", required=True, metavar="PATH", help="input JSONL of solutions")
    f.add_argument("--prm", required=True, metavar="PATH", help="PRM directory (jaxmath or HF token classifier)")
    f.add_argument("--out", required=True, metavar="PATH", help="output JSONL of kept rows (written atomically)")
    f.add_argument("--threshold", type=float, default=0.6, help="keep scores strictly above this (default 0.6)")
    f.add_argument("--aggregation", choices=PRM_AGGREGATIONS, default="min",
                   help="how step scores become one score (default min)")
    f.add_argument("--format", default="boxed", choices=sorted(FORMATS),
                   help="prompt format the PRM was trained with, and the solutions' answer format (default boxed)")
    f.add_argument("--batch-size", type=int, default=16, help="traces per PRM forward pass (default 16)")
    f.add_argument("--dtype", choices=DTYPE_CHOICES, default=None,
                   help="compute dtype (default: bfloat16 on GPU/TPU, float32 on CPU)")
    f.add_argument("--verifier-workers", type=int, default=None,
                   help="grading processes for rows without a verdict (default: CPU cores)")
    add_quiet_argument(f)
    _pairs_parser(commands)
    return parser


def prm_filter_main(args: argparse.Namespace) -> int:
    """Run `prm-filter`: read, filter, write, print the summary."""
    import jax

    from jaxmath.checkpoint import CheckpointError
    from jaxmath.data.readers import SkipLog, file_rows, write_jsonl
    from jaxmath.parallel import make_mesh
    from jaxmath.prm.filter import prm_filter
    from jaxmath.prm.scorer import PRMScorer
    from jaxmath.verify import Verifier

    try:
        located = list(file_rows(args.input, SkipLog(strict=True)))
        log.info("read %d solutions from %s", len(located), args.input)
        mesh = make_mesh()
        scorer = PRMScorer.from_pretrained(args.prm, args.format, args.dtype, mesh, batch_size=args.batch_size,
                                           progress=not args.quiet)
        with Verifier(workers=args.verifier_workers) as verifier, jax.set_mesh(mesh):
            result = prm_filter([r.row for r in located], scorer, threshold=args.threshold, how=args.aggregation,
                                verifier=verifier, names=[r.where for r in located])
        write_jsonl(result.kept, args.out)
    except (BadRowError, CheckpointError, FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(result.summary())
    print(f"wrote {args.out}")
    return 0


def _pairs_parser(commands: argparse._SubParsersAction) -> None:
    from jaxmath.data.pairs import KINDS, PairConfig

    defaults = PairConfig()
    p = commands.add_parser("pairs", help="build DPO preference pairs from graded samples", description=(
        "Pair each question's sampled completions: correct vs incorrect, and concise vs verbose among the correct "
        "ones (length after stripping comments and print statements from programs). Inputs are samples.jsonl "
        "from `jaxmath eval`, rows {question, completions, correct}, or rows {question, NAME: {solution, "
        "is_correct}, ...} (GSM8K's example_model_solutions.jsonl). Questions overlapping a benchmark present "
        "under --data-dir are removed; samples.jsonl rows (benchmark questions) need --allow-eval-splits. Writes "
        "{id, question, chosen, rejected, kind} rows for objective dpo."),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--input", action="append", required=True, metavar="PATH",
                   help="a .jsonl/.parquet file of graded samples (repeatable)")
    p.add_argument("--output", required=True, help="output JSONL path (written atomically)")
    p.add_argument("--data-dir", default=None,
                   help="directory of local benchmark copies: the questions of samples.jsonl rows (None: the Hub), "
                        "and the evaluation sets questions are decontaminated against")
    p.add_argument("--allow-eval-splits", action="store_true",
                   help="build pairs from samples.jsonl rows, whose questions are a benchmark's evaluation split "
                        "(that benchmark is then not decontaminated against)")
    p.add_argument("--no-decontaminate", action="store_true",
                   help="keep questions that overlap the benchmarks under --data-dir")
    p.add_argument("--kinds", nargs="+", choices=KINDS, default=list(defaults.kinds), help="pair kinds to build")
    p.add_argument("--max-pairs-per-question", type=int, default=defaults.max_pairs_per_question)
    p.add_argument("--min-length-ratio", type=float, default=defaults.min_length_ratio,
                   help="a verbose solution is at least this many times as long as the concise one")
    p.add_argument("--seed", type=int, default=defaults.seed)
    p.add_argument("--strict", action="store_true", help="stop at the first bad row, naming its file and line")
    add_quiet_argument(p)


def _pairs(args: argparse.Namespace) -> None:
    from jaxmath.data.decontaminate import build_index, default_eval_sets, format_removed
    from jaxmath.data.pairs import (PairConfig, benchmark_questions, build_pairs, drop_contaminated, group_samples,
                                    sample_benchmarks)
    from jaxmath.data.readers import SkipLog, file_rows, write_records

    config = PairConfig(kinds=tuple(dict.fromkeys(args.kinds)), max_pairs_per_question=args.max_pairs_per_question,
                        min_length_ratio=args.min_length_ratio, seed=args.seed)
    skips = SkipLog(strict=args.strict)
    rows = [row for path in args.input for row in file_rows(path, skips)]
    benchmarks = sample_benchmarks(rows, args.allow_eval_splits, local=args.data_dir is not None)
    questions = group_samples(rows, skips, benchmark_questions(rows, args.data_dir))
    eval_sets = [] if args.no_decontaminate else default_eval_sets(args.data_dir, exclude=benchmarks)
    if eval_sets:
        index, sizes = build_index(eval_sets, NGRAM, args.data_dir)
        questions, removed = drop_contaminated(questions, index, THRESHOLD)
        print(f"decontamination ({NGRAM}-grams, threshold {THRESHOLD}), questions removed per evaluation set:\n"
              + format_removed(sizes, removed))
    pairs, stats = build_pairs(questions, config, quiet=args.quiet)
    skips.warn()
    write_records(pairs, args.output)
    print(f"wrote {args.output}: {stats.summary()}")


def parse_splits(items: list[str]) -> tuple[str | None, dict[str, str]]:
    """`--split` items: (the split of every source, {source: split}); ValueError on a repeated or empty item."""
    every: list[str] = []
    per_source: dict[str, str] = {}
    for item in items:
        source, sep, split = item.rpartition("=")
        if not split or (sep and not source) or source in per_source:
            raise ValueError(f"--split {item!r}: expected SPLIT or SOURCE=SPLIT, each source once")
        if sep:
            per_source[source] = split
        else:
            every.append(split)
    if len(every) > 1:
        raise ValueError(f"--split names {len(every)} splits for every source ({', '.join(every)}); give one")
    return (every[0] if every else None), per_source


def _config(args: argparse.Namespace) -> BuildConfig:
    from jaxmath.data import generators

    names = []
    if args.include_synthetic:
        names = args.generators or [n for n in generators.generator_names()
                                    if generators.REGISTRY[n].family != generators.TA_FAMILY]
    field_map = FieldMap.parse(args.field_map) if args.field_map else None
    split, source_splits = parse_splits(args.split)
    return BuildConfig(
        output=args.output, sources=list(dict.fromkeys(args.hf_datasets)), samples_per_source=args.hf_samples,
        split=split, source_splits=source_splits, allow_eval_splits=args.allow_eval_splits, data_dir=args.data_dir,
        inputs=[(path, field_map) for path in args.input], generators=names,
        synthetic_samples=args.synthetic_samples if args.include_synthetic else 0, ta_samples=args.ta_samples,
        decontaminate=args.decontaminate, decontaminate_local_benchmarks=not args.no_decontaminate,
        ngram=args.ngram, threshold=args.threshold,
        dropped_report=None if args.no_decontaminate else args.dropped_report or f"{args.output}.dropped.jsonl",
        tokenizer=args.tokenizer, max_tokens=args.max_tokens, strict=args.strict, seed=args.seed)


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """Entry point of `jaxmath data`; returns the exit status."""
    parser = _parser(prog or "jaxmath data")
    args = parser.parse_args(argv)
    configure_logging(getattr(args, "quiet", False))
    if args.command in ("synthesize", "revise"):
        return run_synthesis(args)
    if args.command == "prm-filter":
        return prm_filter_main(args)
    if args.command == "pairs":
        try:
            _pairs(args)
        except (BadRowError, FileNotFoundError, ValueError, RuntimeError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 1
        return 0
    if args.command != "build":
        parser.print_help()
        return 2
    if args.list_hf_datasets:
        print(describe_sources())
        print("\nsplits that evaluation benchmarks score (refused unless --allow-eval-splits): "
              + "; ".join(f"{source} {', '.join(splits)}" for source, splits in evaluation_splits().items()
                          if source in SOURCES))
        return 0
    if args.list_generators:
        from jaxmath.data.generators import families

        for family, names in families().items():
            print(f"{family}: {', '.join(names)}")
        return 0
    if not args.output:
        parser.error("build needs --output (or --list-hf-datasets / --list-generators)")
    try:
        config = _config(args)
        if not (config.sources or config.inputs or config.generators or config.ta_samples):
            parser.error("nothing to build: give --hf-datasets, --input, --include-synthetic or --ta-samples")
        result = build(config, quiet=args.quiet)
    except (SourceError, BadRowError, FileNotFoundError, ValueError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(build_summary(config, result))
    return 0
