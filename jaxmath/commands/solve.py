"""`jaxmath solve`: answer math questions with a model (and optionally a PRM) by one of jaxmath.solve's strategies.

    jaxmath solve --model runs/sft/hf "What is the integral of x^2 from 0 to 3?"
    jaxmath solve --model M --prm P --strategy beam --samples 4 --beam 2 --budget 2048 --json "question"
    jaxmath solve --model M --strategy self_consistency --input questions.jsonl --output answers.jsonl

File mode reads JSONL rows with a "question" (and an "id"; default: the line number) and appends one result row
per question to --output; rerun the same command to resume: ids already in --output are skipped.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from jaxmath.commands.options import (DTYPE_CHOICES, PRM_AGGREGATIONS, add_compile_cache_argument,
                                      add_quiet_argument, add_sampling_arguments, sampling_from_args)
from jaxmath.progress import configure_logging, progress_bar
from jaxmath.solve.defaults import DEFAULT_SAMPLING, NEEDS_PRM, STRATEGIES

log = logging.getLogger(__name__)


class InputError(ValueError):
    """A questions or answers file that cannot be used (the message names the file and line)."""


def read_questions(path: Path) -> list[tuple[str, str]]:
    """(id, question) of each row of a JSONL file; InputError names the line of a bad row or a repeated id."""
    if not path.is_file():
        raise InputError(f"{path}: no such questions file")
    rows, seen = [], set()
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except (json.JSONDecodeError, RecursionError) as err:
            reason = err.msg if isinstance(err, json.JSONDecodeError) else "nested too deeply"
            raise InputError(f"{path} line {number}: not valid JSON ({reason})") from None
        question = row.get("question") if isinstance(row, dict) else None
        if not isinstance(question, str) or not question.strip():
            raise InputError(f"{path} line {number}: needs a non-empty string 'question'")
        row_id = str(row.get("id", number))
        if row_id in seen:
            raise InputError(f"{path} line {number}: id {row_id!r} appears twice")
        seen.add(row_id)
        rows.append((row_id, question))
    return rows


def answered_ids(path: Path) -> set[str]:
    """Ids already in an answers file; a last line cut short by an interrupted run is removed (it is redone)."""
    if not path.exists():
        return set()
    text = path.read_text(encoding="utf-8")
    lines = text.split("\n")
    ids = set()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            ids.add(str(json.loads(line)["id"]))
        except (json.JSONDecodeError, RecursionError, KeyError, TypeError):
            if number == len(lines):  # no newline after it: a write that never finished
                path.write_text(text[:len(text) - len(line)], encoding="utf-8")
                log.warning("%s: dropped an unfinished last line; its question is solved again", path)
                break
            raise InputError(f"{path} line {number}: not a result row with an 'id'; pass a different "
                             "--output or remove the file") from None
    return ids


def show(result: Any, as_json: bool) -> str:
    """A result as printed: its JSON, or the answer, how it was chosen and the solution."""
    if as_json:
        return result.to_json(indent=2)
    return (f"Answer: {result.answer if result.answer is not None else '(none)'}\n"
            f"({result.strategy}: {result.chosen_by}; {result.tokens} tokens)\n\n{result.solution.strip()}")


def solve_file(solver: Any, source: Path, target: Path, chunk: int, quiet: bool) -> int:
    """Solve the questions of `source` not yet in `target`, appending results chunk by chunk; returns how many."""
    rows = read_questions(source)
    done = answered_ids(target)
    pending = [(i, q) for i, q in rows if i not in done]
    if done:
        log.info("%s: %d of %d questions already answered; solving %d", target, len(rows) - len(pending),
                 len(rows), len(pending))
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target, "a", encoding="utf-8") as out, \
            progress_bar(total=len(pending), desc="solve", unit="question", quiet=quiet) as bar:
        for first in range(0, len(pending), chunk):
            part = pending[first:first + chunk]
            results = solver.solve_batch([q for _, q in part])
            out.writelines(json.dumps({"id": i, **r.to_dict()}, ensure_ascii=False) + "\n"
                           for (i, _), r in zip(part, results))
            out.flush()
            bar.update(len(part))
    return len(pending)


def solve_main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """Answer math questions with a model: one question on the command line, or a JSONL file (resumable)."""
    parser = argparse.ArgumentParser(prog=prog, description=solve_main.__doc__)
    parser.add_argument("question", nargs="?", help="the question (or use --input)")
    parser.add_argument("--model", required=True, help="HF checkpoint directory or jaxmath model directory")
    parser.add_argument("--prm", default=None, metavar="PATH",
                        help="process reward model directory (needed by best_of_n, beam, tree; breaks "
                             "self_consistency ties)")
    parser.add_argument("--strategy", choices=STRATEGIES, default="cot",
                        help="cot: one sample; pot: a program run in the sandbox, repaired from its error; "
                             "self_consistency: vote over --samples; best_of_n: the PRM's pick of --samples; beam: "
                             "step-level beam search; tree: shallow MCTS-like search (default cot)")
    parser.add_argument("--samples", type=int, default=8,
                        help="solutions per question (self_consistency, best_of_n) or candidate next steps per "
                             "partial solution (beam, tree) (default 8)")
    parser.add_argument("--beam", type=int, default=4, help="partial solutions kept per step in beam search (default 4)")
    parser.add_argument("--budget", type=int, default=None, metavar="TOKENS",
                        help="tokens the model may generate per question (default: only each strategy's limits)")
    parser.add_argument("--max-steps", type=int, default=16, help="steps per solution in beam and tree (default 16)")
    parser.add_argument("--step-tokens", type=int, default=64, help="tokens per step in beam and tree (default 64)")
    parser.add_argument("--iterations", type=int, default=16, help="tree expansions (default 16)")
    parser.add_argument("--exploration", type=float, default=1.0, help="tree exploration weight (default 1)")
    parser.add_argument("--repair-rounds", type=int, default=2, metavar="R",
                        help="pot: rewrite a failing program up to R times with the sandbox error (default 2)")
    parser.add_argument("--prm-aggregation", choices=PRM_AGGREGATIONS, default="min",
                        help="how a solution's step scores become one (default min)")
    parser.add_argument("--format", default="boxed", help="prompt format (boxed, steps, think_answer; pot is "
                        "--strategy pot) (default boxed)")
    add_sampling_arguments(parser, DEFAULT_SAMPLING, stop_help="; plain-text prompts stop at '\\nQuestion:'")
    parser.add_argument("--batch-size", type=int, default=32, help="rows per generate call and questions per chunk")
    parser.add_argument("--dtype", choices=DTYPE_CHOICES, default=None,
                        help="compute dtype (default: bfloat16 on GPU/TPU, float32 on CPU)")
    parser.add_argument("--tokenizer", default=None, help="tokenizer directory (default: the model's)")
    parser.add_argument("--verifier-workers", type=int, default=None, help="answer-comparing processes "
                        "(default: CPU cores)")
    parser.add_argument("--json", action="store_true", help="print the whole result object as JSON")
    parser.add_argument("--input", type=Path, default=None, help="JSONL file of questions ({'id', 'question'})")
    parser.add_argument("--output", type=Path, default=None, help="JSONL file the results are appended to")
    add_quiet_argument(parser)
    add_compile_cache_argument(parser)
    args = parser.parse_args(argv)
    if (args.input is None) == (args.question is None):
        parser.error("give a question or --input FILE (not both)")
    if (args.input is None) != (args.output is None):
        parser.error("--input and --output go together")
    if args.strategy in NEEDS_PRM and args.prm is None:
        parser.error(f"--strategy {args.strategy} needs --prm PATH")
    configure_logging(args.quiet)
    from jaxmath.checkpoint import CheckpointError
    from jaxmath.compilation import enable_compile_cache
    from jaxmath.solve import MathSolver

    settings = dict(strategy=args.strategy, samples=args.samples, beam=args.beam, budget=args.budget,
                    max_steps=args.max_steps, step_tokens=args.step_tokens, iterations=args.iterations,
                    exploration=args.exploration, repair_rounds=args.repair_rounds,
                    prm_aggregation=args.prm_aggregation)
    try:
        sampling = sampling_from_args(args)
        if args.input is not None:
            read_questions(args.input)  # a bad file fails before the model loads
        enable_compile_cache(args.compile_cache, source="--compile-cache")
        with MathSolver(args.model, args.prm, format=args.format, sampling=sampling, batch_size=args.batch_size,
                        dtype=args.dtype, tokenizer_path=args.tokenizer, verifier_workers=args.verifier_workers,
                        **settings) as solver:
            if args.input is None:
                print(show(solver.solve(args.question), args.json))
                return 0
            solved = solve_file(solver, args.input, args.output, args.batch_size, args.quiet)
    except (InputError, CheckpointError, FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"solved {solved} question(s); results in {os.fspath(args.output)}", file=sys.stderr)
    return 0
