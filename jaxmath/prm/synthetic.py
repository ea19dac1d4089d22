"""Seeded arithmetic chains with step labels, for training and testing process reward models.

A problem is a chain of small additions and subtractions ("Start with 7. Add 5, then subtract 3. What is
the result?"), one step per operation ("7 + 5 = 12"). A corrupted candidate writes a wrong result in one
step and every later step carries the wrong value on, so the error is visible in that step's own
arithmetic and the final answer is wrong. Labels follow Math-Shepherd: a step is bad (0) from the first
error on, good (1) before it.
"""
from __future__ import annotations

import random
from typing import Any, Sequence

OPERATIONS = {"+": ("add", lambda a, b: a + b), "-": ("subtract", lambda a, b: a - b)}


def _chain(rng: random.Random, num_steps: int, max_operand: int, max_value: int) -> tuple[int, list[tuple[str, int]]]:
    """A start value and (operator, operand) pairs whose true running values stay in 0..max_value."""
    start = rng.randint(1, max_operand)
    value, ops = start, []
    for _ in range(num_steps):
        choices = [op for op in OPERATIONS if 0 <= OPERATIONS[op][1](value, 1) <= max_value]
        op = rng.choice(choices)
        limit = value if op == "-" else max_value - value
        operand = rng.randint(1, min(max_operand, limit))
        ops.append((op, operand))
        value = OPERATIONS[op][1](value, operand)
    return start, ops


def _question(start: int, ops: Sequence[tuple[str, int]]) -> str:
    words = [f"{OPERATIONS[op][0]} {operand}" for op, operand in ops]
    return f"Start with {start}. {', then '.join(words).capitalize()}. What is the result?"


def _candidate(start: int, ops: Sequence[tuple[str, int]], error_step: int | None, offset: int) -> dict[str, Any]:
    """Steps of one solution; from `error_step` on the written value is off by `offset` (carried on)."""
    steps, labels, value, written = [], [], start, start
    for i, (op, operand) in enumerate(ops):
        value = OPERATIONS[op][1](value, operand)
        result = OPERATIONS[op][1](written, operand) + (offset if i == error_step else 0)
        steps.append(f"{written} {op} {operand} = {result}")
        labels.append(int(error_step is None or i < error_step))
        written = result
    return {"steps": steps, "labels": labels, "final": str(written), "correct": error_step is None}


def chain_problems(n: int, seed: int = 0, *, num_steps: tuple[int, int] = (2, 4), num_candidates: int = 4,
                   max_operand: int = 9, max_value: int = 30,
                   offsets: Sequence[int] = (-3, -2, -1, 1, 2, 3)) -> list[dict[str, Any]]:
    """`n` problems `{"id", "question", "answer", "candidates"}`, identical for the same seed.

    Each candidate is `{"steps", "labels", "final", "correct"}`. With two or more candidates, the first
    drawn is correct and the second corrupted (so every problem has both), the others are corrupted with
    probability 1/2; candidates are then shuffled. A corruption adds one of `offsets` to one step's
    result.
    """
    if n < 0 or num_candidates < 1 or not 1 <= num_steps[0] <= num_steps[1] or not offsets or 0 in offsets:
        raise ValueError(f"chain_problems: need n >= 0, num_candidates >= 1, 1 <= num_steps[0] <= num_steps[1] "
                         f"and non-zero offsets; got n={n}, num_candidates={num_candidates}, "
                         f"num_steps={num_steps}, offsets={offsets}")
    rng = random.Random(f"prm-chains/{seed}")
    problems = []
    for index in range(n):
        start, ops = _chain(rng, rng.randint(*num_steps), max_operand, max_value)
        candidates = []
        for c in range(num_candidates):
            corrupt = c == 1 or (c > 1 and rng.random() < 0.5)
            error_step = rng.randrange(len(ops)) if corrupt else None
            offset = rng.choice(offsets)
            candidates.append(_candidate(start, ops, error_step, offset))
        rng.shuffle(candidates)
        problems.append({"id": f"chain-{seed}-{index}", "question": _question(start, ops),
                         "answer": _candidate(start, ops, None, 0)["final"], "candidates": candidates})
    return problems


def trace_rows(problems: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One PRM training row `{"question", "answer", "steps", "labels"}` per candidate of each problem."""
    return [{"id": f"{p['id']}/{i}", "question": p["question"], "answer": p["answer"], "steps": c["steps"],
             "labels": c["labels"]} for p in problems for i, c in enumerate(p["candidates"])]
