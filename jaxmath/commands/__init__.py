"""The command registry: every `jaxmath` subcommand that does one piece of work, by name. The `jaxmath` command
(jaxmath.cli) and a pipeline's command stages (jaxmath.pipeline) both run commands from here.

Each command family lives in its own module (argument parsing, error reporting, exit status); the library
below never parses arguments. A command is `main(argv, prog) -> exit status`.
"""
from __future__ import annotations

import sys
from typing import Callable, Mapping

from jaxmath.commands.convert import hf_to_jax_main, jax_to_hf_main
from jaxmath.commands.data import main as data_main
from jaxmath.commands.evaluate import eval_main
from jaxmath.commands.generate import generate_main
from jaxmath.commands.push import push_main
from jaxmath.commands.solve import solve_main
from jaxmath.commands.train import train_main

Command = Callable[[list[str], str], int]  # (argv, prog) -> exit status
# name -> {subcommand: command}; "" is a command without subcommands
CommandTable = Mapping[str, Mapping[str, Command]]

COMMANDS: dict[str, dict[str, Command]] = {
    "convert": {"hf-to-jax": hf_to_jax_main, "jax-to-hf": jax_to_hf_main},
    "data": {"": data_main},
    "eval": {"": eval_main},
    "generate": {"": generate_main},
    "push": {"": push_main},
    "solve": {"": solve_main},
    "train": {"": train_main},
}


def run_command(argv: list[str], commands: CommandTable = COMMANDS, usage: str = "") -> int:
    """Run `argv` ([name, (subcommand,) arguments...]) through `commands` and return the command's exit status;
    no arguments or -h print `usage` (exit 0), an unknown name prints it too (exit 2)."""
    usage = usage or f"usage: jaxmath {{{','.join(commands)}}} ..."
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in commands:
        print(usage)
        return 0 if not argv or argv[0] in ("-h", "--help") else 2
    group, rest = commands[argv[0]], argv[1:]
    if "" in group:
        return group[""](rest, f"jaxmath {argv[0]}")
    if not rest or rest[0] not in group:
        print(f"usage: jaxmath {argv[0]} {{{','.join(group)}}} ...", file=sys.stderr)
        return 2
    return group[rest[0]](rest[1:], f"jaxmath {argv[0]} {rest[0]}")
