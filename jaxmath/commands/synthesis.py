"""Argument parsing of `jaxmath data synthesize` and `jaxmath data revise` (flags override a YAML --config)."""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import yaml

from jaxmath.config import ConfigError, apply_overrides, from_dict
from jaxmath.commands.options import DTYPE_CHOICES, SAMPLING_FLAGS, add_quiet_argument, add_sampling_arguments
from jaxmath.data.formats import FORMATS
from jaxmath.synthesis.config import GenerationConfig
from jaxmath.synthesis.teacher import API_KEY_ENV, BASE_URL_ENV, MODEL_ENV, TeacherError
from jaxmath.verify.sandbox import LAYERS, SandboxUnavailable

# command-line flag (argparse dest) -> config key
FLAG_KEYS = {"teacher_model": "teacher.model", "concurrency": "teacher.concurrency",
             "max_retries": "teacher.max_retries", "request_timeout": "teacher.timeout_s", "dtype": "teacher.dtype",
             "batch_size": "teacher.batch_size", "input": "input", "format": "format", "samples": "samples",
             "cache": "cache", "limit": "limit", "chunk": "chunk", "sandbox_timeout": "sandbox_timeout",
             "require_sandbox": "sandbox.require", "verifier_workers": "verifier_workers", "output": "output",
             "keep_per_problem": "keep_per_problem", "output_dir": "output_dir", "rounds": "rounds",
             **{dest: f"sampling.{field}" for dest, field in SAMPLING_FLAGS.items()}}


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags both commands take (each overrides the same key of --config)."""
    parser.add_argument("--config", default=None, metavar="YAML", help="config file (keys as in --set)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key, e.g. --set teacher.concurrency=8 (repeatable)")
    teacher = parser.add_argument_group("teacher")
    teacher.add_argument("--teacher", default=None, metavar="URL_OR_PATH",
                         help="an OpenAI-compatible base URL (http(s)://..., e.g. http://localhost:8000/v1) or a "
                              f"jaxmath/HF checkpoint directory; default ${BASE_URL_ENV[0]} or ${BASE_URL_ENV[1]}")
    teacher.add_argument("--teacher-model", default=None, metavar="NAME",
                         help=f"model name the endpoint serves (default ${MODEL_ENV[0]}); the API key comes from "
                              f"teacher.api_key or ${API_KEY_ENV[0]} / ${API_KEY_ENV[1]}")
    teacher.add_argument("--concurrency", type=int, default=None, help="requests in flight at once (default 4)")
    teacher.add_argument("--max-retries", type=int, default=None,
                         help="retries of a failed request: connection errors, timeouts, 429, 5xx (default 6)")
    teacher.add_argument("--request-timeout", type=float, default=None, metavar="S",
                         help="seconds per HTTP request (default 120)")
    teacher.add_argument("--dtype", choices=DTYPE_CHOICES, default=None,
                         help="compute dtype of a checkpoint teacher")
    teacher.add_argument("--batch-size", type=int, default=None, help="rows per generate call of a checkpoint teacher")
    data = parser.add_argument_group("problems and sampling")
    data.add_argument("--input", action="append", default=None, metavar="PATH",
                      help="problems: a record-schema .jsonl/.parquet file, e.g. from `jaxmath data build` "
                           "(repeatable)")
    data.add_argument("--format", default=None, choices=sorted(FORMATS), help="prompt format (default pot)")
    data.add_argument("--samples", type=int, default=None, help="completions per problem (default 4)")
    add_sampling_arguments(data, GenerationConfig().sampling, overrides_config=True)
    data.add_argument("--limit", type=int, default=None, help="only the first N problems")
    data.add_argument("--chunk", type=int, default=None, help="problems per ask-run-grade round (default 64)")
    data.add_argument("--cache", default=None, metavar="PATH",
                      help="completion cache (JSONL); share it between runs and commands to ask nothing twice")
    data.add_argument("--sandbox-timeout", type=float, default=None, metavar="S",
                      help="seconds per program (default 5)")
    data.add_argument("--require-sandbox", nargs="+", default=None, choices=LAYERS, metavar="LAYER",
                      help="fail at start unless the program sandbox gets these isolation layers on this machine "
                           f"(config sandbox.require; layers: {', '.join(LAYERS)})")
    data.add_argument("--verifier-workers", type=int, default=None, help="grading processes (default: CPU cores)")
    add_quiet_argument(parser)


def add_synthesize_parser(commands: Any) -> None:
    parser = commands.add_parser("synthesize", help="verified program-of-thought solutions from a teacher",
                                 description=(
        "Ask a teacher (an OpenAI-compatible endpoint or a checkpoint) for solutions to each problem, run each "
        "program in the sandbox, grade its value against the gold answer, and write the verified, distinct "
        "ones as SFT records (train on them with data.format: pot). Completions are cached: a re-run asks "
        "nothing twice and a crashed run resumes. Shows a progress bar and prints a summary (asked, cached, ran, verified, "
        "kept)."))
    add_common_arguments(parser)
    parser.add_argument("--output", default=None, help="output JSONL of SFT records (written atomically)")
    parser.add_argument("--keep-per-problem", type=int, default=None, metavar="K",
                        help="keep at most K distinct verified solutions per problem (default: all)")


def add_revise_parser(commands: Any) -> None:
    parser = commands.add_parser("revise", help="revision data: failed attempt + feedback -> verified revision",
                                 description=(
        "Sample attempts from a teacher, send each failed one back with the verifier's verdict (and the sandbox "
        "error for programs) for up to --rounds revisions, and write OUTPUT_DIR/revisions.jsonl (attempt, "
        "feedback, revision), sft.jsonl (SFT records of the verified revisions) and dpo.jsonl (question, chosen "
        "= verified revision, rejected = failed attempt)."))
    add_common_arguments(parser)
    parser.add_argument("--output-dir", default=None, help="directory for revisions.jsonl, sft.jsonl, dpo.jsonl")
    parser.add_argument("--rounds", type=int, default=None, help="revision rounds per failed sample (default 2)")


def _put(data: dict[str, Any], key: str, value: Any) -> None:
    *sections, last = key.split(".")
    for section in sections:
        data = data.setdefault(section, {})
    data[last] = value


def config_from_args(args: argparse.Namespace, cls: type) -> Any:
    """The command's config: --config YAML, then --set overrides, then the flags given."""
    data: dict[str, Any] = {}
    if args.config:
        try:
            with open(args.config, encoding="utf-8") as handle:
                data = yaml.safe_load(handle) or {}
        except (OSError, yaml.YAMLError) as err:
            raise ConfigError(f"cannot read config {args.config}: {err}") from err
        if not isinstance(data, dict):
            raise ConfigError(f"{args.config}: top level must be a mapping")
    data = apply_overrides(data, args.set)
    if args.teacher:
        teacher = data.setdefault("teacher", {})
        for key in ("base_url", "path"):
            teacher.pop(key, None)
        teacher["base_url" if args.teacher.startswith(("http://", "https://")) else "path"] = args.teacher
    for dest, key in FLAG_KEYS.items():
        if getattr(args, dest, None) is not None:
            _put(data, key, getattr(args, dest))
    return from_dict(cls, data)


def run(args: argparse.Namespace) -> int:
    """Run `synthesize` or `revise` from parsed arguments; prints the summary as JSON."""
    from jaxmath.data.readers import BadRowError
    from jaxmath.synthesis.config import RevisionConfig, SynthesisConfig

    try:
        if args.command == "synthesize":
            from jaxmath.synthesis.synthesize import synthesize

            config = config_from_args(args, SynthesisConfig)
            summary = synthesize(config, quiet=args.quiet)
            where = config.output
        else:
            from jaxmath.synthesis.revisions import build_revisions

            config = config_from_args(args, RevisionConfig)
            summary = build_revisions(config, quiet=args.quiet)
            where = config.output_dir
    except (ConfigError, TeacherError, BadRowError, FileNotFoundError, ValueError, SandboxUnavailable) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(json.dumps(summary))
    print(f"wrote {where}", file=sys.stderr)
    return 0
