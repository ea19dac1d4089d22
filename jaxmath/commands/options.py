"""Flags more than one command takes: model dtypes, the decoding flags (one per `Sampling` field), --quiet
and the XLA compilation cache."""
from __future__ import annotations

import argparse

from jaxmath.inference.config import Sampling

DTYPE_CHOICES = ["float32", "bfloat16", "float16"]
# jaxmath.objectives.prm.STEP_AGGREGATIONS, named here so `--help` does not import jax (a test checks they agree)
PRM_AGGREGATIONS = ("min", "product", "last")
# argparse destination of each decoding flag -> its `Sampling` field (a config's `sampling.<field>`)
SAMPLING_FLAGS = {"max_new_tokens": "max_new_tokens", "temperature": "temperature", "top_p": "top_p",
                  "top_k": "top_k", "min_p": "min_p", "seed": "seed", "stop": "stop_strings"}


def add_sampling_arguments(parser: argparse.ArgumentParser | argparse._ArgumentGroup, defaults: Sampling, *,
                           overrides_config: bool = False, stop_help: str = "") -> None:
    """--max-new-tokens, --temperature, --top-p, --top-k, --min-p, --seed and --stop. With `overrides_config` every
    flag defaults to None, so it replaces a config's `sampling.<field>` only when given; the help names
    `defaults`' values either way."""
    def default(value: object) -> object:
        return None if overrides_config else value

    d = defaults
    parser.add_argument("--max-new-tokens", type=int, default=default(d.max_new_tokens),
                        help=f"tokens generated at most per completion (default {d.max_new_tokens})")
    parser.add_argument("--temperature", type=float, default=default(d.temperature),
                        help=f"0 = greedy (default {d.temperature:g})")
    parser.add_argument("--top-p", type=float, default=default(d.top_p), help=f"1 = off (default {d.top_p:g})")
    parser.add_argument("--top-k", type=int, default=default(d.top_k), help=f"0 = off (default {d.top_k})")
    parser.add_argument("--min-p", type=float, default=default(d.min_p), help=f"0 = off (default {d.min_p:g})")
    parser.add_argument("--seed", type=int, default=default(d.seed), help=f"sampling seed (default {d.seed})")
    parser.add_argument("--stop", action="append", default=None if overrides_config else [], metavar="TEXT",
                        help="stop string (repeatable)" + stop_help)


def sampling_from_args(args: argparse.Namespace) -> Sampling:
    """The `Sampling` the decoding flags describe."""
    values = {field: getattr(args, dest) for dest, field in SAMPLING_FLAGS.items()}
    return Sampling(**{**values, "stop_strings": tuple(values["stop_strings"])})


def add_quiet_argument(parser: argparse.ArgumentParser) -> None:
    """--quiet: no progress bars and no INFO logs (warnings and errors only); the command's result still prints."""
    parser.add_argument("--quiet", action="store_true",
                        help="no progress bars or progress logs, only warnings, errors and the result")


def add_compile_cache_argument(parser: argparse.ArgumentParser) -> None:
    """--compile-cache DIR|off: where XLA's persistent compilation cache lives (jaxmath.compilation)."""
    parser.add_argument("--compile-cache", default=None, metavar="DIR|off",
                        help="XLA compilation cache directory, or off (default: $JAXMATH_COMPILE_CACHE, else "
                             "$XDG_CACHE_HOME/jaxmath/xla or ~/.cache/jaxmath/xla); a second run of the same "
                             "programs loads them instead of compiling")
