"""`jaxmath train` (also launch/train.py): train, resume or dry-run a run from a YAML config plus overrides."""
from __future__ import annotations

import argparse
import sys

from jaxmath.commands.options import add_compile_cache_argument, add_quiet_argument
from jaxmath.progress import configure_logging


def train_main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """Train (or resume, or dry-run) a run described by a YAML config plus dotted overrides."""
    import json

    from jaxmath.config import ConfigError, load_config

    parser = argparse.ArgumentParser(prog=prog, description=train_main.__doc__)
    parser.add_argument("--config", required=True, help="YAML config (see configs/)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key, e.g. --set optimizer.lr=1e-5 (repeatable)")
    parser.add_argument("--output-dir", default=None, help="run directory (default: the config's output_dir)")
    parser.add_argument("--resume", action="store_true", help="continue from the latest checkpoint")
    parser.add_argument("--dry-run", action="store_true",
                        help="compile the train step and print per-device memory (with model.remat: auto, a "
                             "table of every remat option and the one training would take); loads no weights")
    parser.add_argument("--wandb-project", default=None, metavar="NAME",
                        help="log to this Weights & Biases project (sets logging.wandb.project)")
    add_quiet_argument(parser)
    add_compile_cache_argument(parser)
    args = parser.parse_args(argv)
    if args.compile_cache is not None:  # the flag beats the config's train.compile_cache
        args.set.append(f"train.compile_cache={json.dumps(args.compile_cache)}")
    if args.wandb_project is not None:
        args.set.insert(0, f"logging.wandb.project={json.dumps(args.wandb_project)}")
    configure_logging(args.quiet)
    from jaxmath.tracking import TrackingError
    from jaxmath.train.config import TrainConfig
    from jaxmath.train.publish import PublishError
    from jaxmath.train.trainer import TrainingError, dry_run, train
    from jaxmath.verify.sandbox import SandboxUnavailable

    try:
        config = load_config(TrainConfig, args.config, args.set)
        if args.dry_run:
            report = dry_run(config, args.output_dir)
            if "remat_options" in report:
                from jaxmath.train.remat import format_options
                print(format_options(report["remat_options"]))
            print(json.dumps(report, indent=2))
            return 0
        print(json.dumps(train(config, args.output_dir, resume=args.resume, progress=not args.quiet), indent=2))
    except (ConfigError, TrainingError, FileNotFoundError, ValueError, SandboxUnavailable, TrackingError,
            PublishError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0
