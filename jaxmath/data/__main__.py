"""`python -m jaxmath.data build ...`: build a training JSONL from named sources, files and generators;
`python -m jaxmath.data pairs ...`: build DPO preference pairs from sampled, graded completions.

    python -m jaxmath.data build --output data/train.jsonl \\
        --hf-datasets gsm8k math svamp aqua_rat --hf-samples 2000 \\
        --ta-samples 1000 --include-synthetic --synthetic-samples 2000
    python -m jaxmath.data build --list-hf-datasets
    python -m jaxmath.data pairs --input results/samples.jsonl --data-dir ../shared/data --output data/dpo/pairs.jsonl
"""
from __future__ import annotations

import argparse
import sys

from jaxmath.data.builder import BuildConfig, build
from jaxmath.data.readers import BadRowError, FieldMap
from jaxmath.data.sources import SOURCES, SourceError, describe_sources


def _parser(prog: str | None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n")[0].strip("`"))
    commands = parser.add_subparsers(dest="command", metavar="{build,pairs}")
    b = commands.add_parser("build", help="build a training JSONL", description=(
        "Collect records from named sources (the Hub by default, --data-dir for local copies), local files and "
        "synthetic generators; drop bad rows, exact duplicates and questions that overlap evaluation sets; "
        "write one JSONL in the jaxmath record schema and print a per-source summary."),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    b.add_argument("--output", help="output JSONL path (written atomically)")
    b.add_argument("--list-hf-datasets", action="store_true", help="list the named sources with sizes and licences")
    b.add_argument("--list-generators", action="store_true", help="list the synthetic generators by family")
    src = b.add_argument_group("sources")
    src.add_argument("--hf-datasets", nargs="+", default=[], metavar="NAME", choices=sorted(SOURCES),
                     help=f"named sources to include: {', '.join(SOURCES)}")
    src.add_argument("--hf-samples", type=int, default=None, metavar="N",
                     help="keep at most N records per source or input file (seeded sample; default: all)")
    src.add_argument("--split", default=None, help="split to read from every source (default: each source's own)")
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
    flt.add_argument("--decontaminate", nargs="+", default=[], metavar="EVAL",
                     help="evaluation sets to decontaminate against: SOURCE[:SPLIT] (e.g. gsm8k:test math500) "
                          "or a .jsonl/.parquet path")
    flt.add_argument("--ngram", type=int, default=13, help="n-gram length (in words) for decontamination")
    flt.add_argument("--threshold", type=float, default=0.5,
                     help="drop a record when at least this share of its n-grams occurs in an evaluation set")
    flt.add_argument("--dropped-report", default=None, metavar="PATH",
                     help="where to write the decontamination drops (default: OUTPUT.dropped.jsonl)")
    flt.add_argument("--tokenizer", default=None, metavar="DIR", help="tokenizer directory for --max-tokens")
    flt.add_argument("--max-tokens", type=int, default=None, metavar="N",
                     help="skip records whose question + solution exceed N tokens")
    flt.add_argument("--strict", action="store_true", help="stop at the first bad row, naming its file and line")
    b.add_argument("--seed", type=int, default=0, help="seed for sampling and the generators")
    b.add_argument("--quiet", action="store_true", help="no progress output")
    _pairs_parser(commands)
    return parser


def _pairs_parser(commands: argparse._SubParsersAction) -> None:
    from jaxmath.data.pairs import KINDS, PairConfig

    defaults = PairConfig()
    p = commands.add_parser("pairs", help="build DPO preference pairs from graded samples", description=(
        "Pair each question's sampled completions: correct vs incorrect, and concise vs verbose among the correct "
        "ones (length after stripping comments and print statements from programs). Inputs are samples.jsonl "
        "from `jaxmath eval`, or rows {question, completions, correct}. Writes {id, question, chosen, rejected, "
        "kind} rows for objective dpo."), formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--input", action="append", required=True, metavar="PATH",
                   help="a .jsonl/.parquet file of graded samples (repeatable)")
    p.add_argument("--output", required=True, help="output JSONL path (written atomically)")
    p.add_argument("--data-dir", default=None,
                   help="directory of local benchmark copies for the questions of samples.jsonl rows (None: the Hub)")
    p.add_argument("--kinds", nargs="+", choices=KINDS, default=list(defaults.kinds), help="pair kinds to build")
    p.add_argument("--max-pairs-per-question", type=int, default=defaults.max_pairs_per_question)
    p.add_argument("--min-length-ratio", type=float, default=defaults.min_length_ratio,
                   help="a verbose solution is at least this many times as long as the concise one")
    p.add_argument("--seed", type=int, default=defaults.seed)
    p.add_argument("--strict", action="store_true", help="stop at the first bad row, naming its file and line")


def _pairs(args: argparse.Namespace) -> None:
    from jaxmath.data.pairs import PairConfig, benchmark_questions, build_pairs, group_samples
    from jaxmath.data.readers import SkipLog, file_rows, write_records

    config = PairConfig(kinds=tuple(dict.fromkeys(args.kinds)), max_pairs_per_question=args.max_pairs_per_question,
                        min_length_ratio=args.min_length_ratio, seed=args.seed)
    skips = SkipLog(strict=args.strict)
    rows = [row for path in args.input for row in file_rows(path, skips)]
    questions = benchmark_questions(rows, args.data_dir)
    pairs, stats = build_pairs(group_samples(rows, skips, questions), config)
    skips.warn()
    write_records(pairs, args.output)
    print(f"wrote {args.output}: {stats.summary()}", file=sys.stderr)


def _config(args: argparse.Namespace) -> BuildConfig:
    from jaxmath.data import generators

    names = []
    if args.include_synthetic:
        names = args.generators or [n for n in generators.generator_names()
                                    if generators.REGISTRY[n].family != generators.TA_FAMILY]
    field_map = FieldMap.parse(args.field_map) if args.field_map else None
    return BuildConfig(
        output=args.output, sources=list(dict.fromkeys(args.hf_datasets)), samples_per_source=args.hf_samples,
        split=args.split, data_dir=args.data_dir, inputs=[(path, field_map) for path in args.input],
        generators=names, synthetic_samples=args.synthetic_samples if args.include_synthetic else 0,
        ta_samples=args.ta_samples, decontaminate=args.decontaminate, ngram=args.ngram, threshold=args.threshold,
        dropped_report=args.dropped_report or (f"{args.output}.dropped.jsonl" if args.decontaminate else None),
        tokenizer=args.tokenizer, max_tokens=args.max_tokens, strict=args.strict, seed=args.seed)


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """Entry point of `python -m jaxmath.data` and `jaxmath data`; returns the exit status."""
    parser = _parser(prog or "python -m jaxmath.data")
    args = parser.parse_args(argv)
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
        build(config, progress=None if args.quiet else lambda m: print(m, file=sys.stderr, flush=True))
    except (SourceError, BadRowError, FileNotFoundError, ValueError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
