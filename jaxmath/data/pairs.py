"""DPO preference pairs from sampled, graded completions: correct vs incorrect, and concise vs verbose.

Input rows, per question, come in three layouts:
- grouped: `{"question", "answer"?, "completions": [str, ...], "correct": [bool | None, ...]}`;
- labelled solutions: `{"question", NAME: {"solution": str, "is_correct": bool}, ...}`, every field holding
  a solution and its label being one completion (GSM8K's `example_model_solutions.jsonl`: four models'
  solutions per test problem);
- `samples.jsonl` from `jaxmath eval`: one row per sample (`benchmark`, `id`, `completion`, `verdict`),
  grouped by (benchmark, id); the question text comes from the benchmark itself (`questions=`).
Output rows are `{"id", "question", "chosen", "rejected", "kind"}`, what `preference_pipeline` reads.
Questions of an evaluation benchmark are training data only when asked for: `sample_benchmarks` names the
benchmarks samples.jsonl rows come from, and `drop_contaminated` removes questions that overlap an index of
evaluation questions (`jaxmath.data.decontaminate`).

Completions are deduplicated per question on a normal form: for program-of-thought (a fenced Python
block that parses) the program with comments, docstrings and print statements removed, re-printed by
`ast.unparse`; otherwise the text with whitespace collapsed. Lengths (for concise vs verbose) are
measured in characters of that normal form. Unverifiable completions (verdict None) are never paired.
Pairs are drawn per question in a seeded order, the kinds taking turns, up to a cap per question.
"""
from __future__ import annotations

import ast
import collections
import dataclasses
import os
import random
from typing import Any, Iterable, Mapping, Sequence

from jaxmath.data.benchmarks import ALLOW_FLAG, BENCHMARKS, EvalSplitError, load_benchmark
from jaxmath.data.decontaminate import NgramIndex
from jaxmath.data.readers import Located, SkipLog
from jaxmath.data.schema import BadRow
from jaxmath.progress import progress_bar
from jaxmath.verify.answers import extract_program

KINDS = ("correct_incorrect", "concise_verbose")
VERDICTS = {"correct": True, "wrong": False, "unverifiable": None}


@dataclasses.dataclass(frozen=True)
class PairConfig:
    """Which pairs to build. A concise/verbose pair needs the verbose solution to be at least
    `min_length_ratio` times as long as the concise one (both correct)."""

    kinds: tuple[str, ...] = KINDS
    max_pairs_per_question: int = 4
    min_length_ratio: float = 1.5
    seed: int = 0

    def __post_init__(self) -> None:
        unknown = sorted(set(self.kinds) - set(KINDS))
        if unknown or not self.kinds:
            raise ValueError(f"pair kinds {list(self.kinds)}: choose some of {list(KINDS)}")
        if self.max_pairs_per_question < 1:
            raise ValueError(f"max_pairs_per_question must be >= 1, got {self.max_pairs_per_question}")
        if self.min_length_ratio < 1.0:
            raise ValueError(f"min_length_ratio must be >= 1, got {self.min_length_ratio}")


@dataclasses.dataclass
class Sampled:
    """One question's sampled completions and their verdicts (True correct, False wrong, None unverifiable)."""

    id: str
    question: str
    completions: list[str] = dataclasses.field(default_factory=list)
    correct: list[bool | None] = dataclasses.field(default_factory=list)


class _StripProgram(ast.NodeTransformer):
    """Drops statements that are a bare `print(...)` call or a bare constant (docstrings, stray strings)."""

    def visit_Expr(self, node: ast.Expr) -> ast.AST | None:
        value = node.value
        if isinstance(value, ast.Constant):
            return None
        if isinstance(value, ast.Call) and isinstance(value.func, ast.Name) and value.func.id == "print":
            return None
        return node


def strip_program(code: str) -> str:
    """`code` without comments, docstrings and print statements, printed canonically by `ast.unparse`
    (a body left empty gets `pass`). Raises SyntaxError for code that does not parse."""
    tree = _StripProgram().visit(ast.parse(code))
    for node in ast.walk(tree):
        if isinstance(getattr(node, "body", None), list) and not node.body:
            node.body = [ast.Pass()]
    return ast.unparse(ast.fix_missing_locations(tree))


def normal_form(completion: str) -> str:
    """What deduplication compares and length measures: the stripped program of a program-of-thought
    completion, else the text with whitespace collapsed."""
    program = extract_program(completion)
    if program is not None:
        try:
            return strip_program(program)
        except SyntaxError:
            pass
    return " ".join(completion.split())


@dataclasses.dataclass
class PairStats:
    """What building did: pairs per kind, and why questions or completions gave none."""

    questions: int = 0
    pairs: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    duplicates: int = 0
    unverifiable: int = 0
    without_pairs: int = 0

    def summary(self) -> str:
        kinds = ", ".join(f"{kind} {self.pairs[kind]}" for kind in KINDS)
        return (f"{sum(self.pairs.values())} pairs ({kinds}) from {self.questions} questions; "
                f"{self.without_pairs} questions gave none; {self.duplicates} duplicate and "
                f"{self.unverifiable} unverifiable completions left out")


def _candidates(sampled: Sampled, config: PairConfig, stats: PairStats) -> dict[str, list[tuple[str, str]]]:
    """(chosen, rejected) candidates per kind among the question's distinct, verified completions."""
    seen: dict[str, tuple[str, bool | None]] = {}
    for text, verdict in zip(sampled.completions, sampled.correct):
        if verdict is None:
            stats.unverifiable += 1
            continue
        key = normal_form(text)
        if key in seen:
            stats.duplicates += 1
            if seen[key][1] != verdict:  # the same solution graded both ways: trust neither
                seen[key] = (seen[key][0], None)
            continue
        seen[key] = (text, verdict)
    good = [(text, len(key)) for key, (text, verdict) in seen.items() if verdict is True]
    bad = [text for text, verdict in seen.values() if verdict is False]
    out: dict[str, list[tuple[str, str]]] = {}
    if "correct_incorrect" in config.kinds:
        out["correct_incorrect"] = [(c, w) for c, _ in good for w in bad]
    if "concise_verbose" in config.kinds:
        out["concise_verbose"] = [(short, long) for short, n in good for long, m in good
                                  if m >= config.min_length_ratio * n and m > n]
    return out


def build_pairs(questions: Iterable[Sampled], config: PairConfig = PairConfig(),
                quiet: bool = False) -> tuple[list[dict], PairStats]:
    """Preference rows from each question's completions (see the module docstring), and what was done; a
    progress bar over the questions unless `quiet`."""
    rng = random.Random(config.seed)
    stats = PairStats()
    rows: list[dict[str, str]] = []
    for sampled in progress_bar(questions, desc="pairs", unit="question", quiet=quiet):
        stats.questions += 1
        pools = _candidates(sampled, config, stats)
        for pool in pools.values():
            rng.shuffle(pool)
        taken = 0
        while taken < config.max_pairs_per_question and any(pools.values()):
            for kind, pool in pools.items():
                if pool and taken < config.max_pairs_per_question:
                    chosen, rejected = pool.pop()
                    rows.append({"id": f"{sampled.id}-{taken}", "question": sampled.question, "chosen": chosen,
                                 "rejected": rejected, "kind": kind})
                    stats.pairs[kind] += 1
                    taken += 1
        stats.without_pairs += taken == 0
    return rows, stats


def _verdicts(row: Mapping[str, Any]) -> list[bool | None]:
    completions, correct = row.get("completions"), row.get("correct")
    if not isinstance(completions, list) or not all(isinstance(c, str) for c in completions):
        raise BadRow("bad completions", "'completions' must be a list of strings")
    if (not isinstance(correct, list) or len(correct) != len(completions)
            or any(v not in (True, False, None) for v in correct)):
        raise BadRow("bad verdicts", f"'correct' must hold one true/false/null per completion "
                                     f"({len(completions)}), got {correct!r:.80}")
    return [None if v is None else bool(v) for v in correct]


def _labelled(row: Mapping[str, Any]) -> tuple[list[str], list[bool | None]]:
    """(solutions, labels) of a labelled-solutions row: every field holding `solution` and `is_correct`."""
    completions, verdicts = [], []
    for key, value in row.items():
        if isinstance(value, Mapping) and {"solution", "is_correct"} <= value.keys():
            if not isinstance(value["solution"], str) or not isinstance(value["is_correct"], bool):
                raise BadRow("bad solution", f"field {key!r} needs a string 'solution' and a true/false 'is_correct'")
            completions.append(value["solution"])
            verdicts.append(value["is_correct"])
    return completions, verdicts


def group_samples(rows: Iterable[Located], skips: SkipLog,
                  questions: Mapping[tuple[str, str], str] | None = None) -> list[Sampled]:
    """One `Sampled` per question from rows of any layout, questions merged on their text (first-seen
    order); `questions` maps (benchmark, id) to the question text of `samples.jsonl` rows."""
    grouped: dict[str, Sampled] = {}
    for where, _, row in rows:
        try:
            if "completions" in row:
                question, completions, verdicts = row.get("question"), row["completions"], _verdicts(row)
                row_id = str(row.get("id") or os.path.basename(where))
            elif "completion" not in row and (labelled := _labelled(row))[0]:
                question, (completions, verdicts) = row.get("question"), labelled
                row_id = str(row.get("id") or os.path.basename(where))
            else:
                if not isinstance(row.get("completion"), str) or str(row.get("verdict")) not in VERDICTS:
                    raise BadRow("not a sample", "expected 'completions' + 'correct', fields holding 'solution' + "
                                                 "'is_correct', or a samples.jsonl row with 'completion' and a "
                                                 f"verdict in {sorted(VERDICTS)}")
                key = (str(row.get("benchmark")), str(row.get("id")))
                question = (questions or {}).get(key)
                if question is None:
                    raise BadRow("unknown question", f"no question text for benchmark {key[0]!r} id {key[1]!r} "
                                                     "(pass the benchmark's data with --data-dir)")
                completions, verdicts, row_id = [row["completion"]], [VERDICTS[row["verdict"]]], key[1]
            if not isinstance(question, str) or not question.strip():
                raise BadRow("missing field", "field 'question' is missing or empty")
        except BadRow as err:
            skips.skip(where, err)
            continue
        sampled = grouped.setdefault(question, Sampled(row_id, question))
        sampled.completions.extend(completions)
        sampled.correct.extend(verdicts)
    return list(grouped.values())


def sample_benchmarks(rows: Sequence[Located], allow_eval_splits: bool = False, local: bool = True) -> list[str]:
    """The benchmarks `samples.jsonl` rows come from. Their questions are the split each benchmark scores
    (locally or on the Hub), so EvalSplitError names the first such row unless `allow_eval_splits`."""
    first_row: dict[str, str] = {}  # benchmark -> where its first sample is, in reading order
    for where, _, row in rows:
        if "completion" in row and "benchmark" in row:
            first_row.setdefault(str(row["benchmark"]), where)
    name = next((name for name in first_row if name in BENCHMARKS), None)
    if name is not None and not allow_eval_splits:
        bench = BENCHMARKS[name]
        raise EvalSplitError(f"{first_row[name]}: a sample of benchmark {name}, whose questions are source "
                             f"{bench.source.name!r}, split {bench.split(local)!r}, which evaluation scores; pairs "
                             f"from them would contaminate {name}. Pass {ALLOW_FLAG} to build pairs from them anyway.")
    return sorted(first_row)


def benchmark_questions(rows: Sequence[Located], data_dir: str | None) -> dict[tuple[str, str], str]:
    """(benchmark, id) -> question for the benchmarks `samples.jsonl` rows name (local copies or the Hub)."""
    names = sample_benchmarks(rows, allow_eval_splits=True)
    if not names:
        return {}
    return {(name, record.id): record.question for name in names for record in load_benchmark(name, data_dir)}


def drop_contaminated(questions: Iterable[Sampled], index: NgramIndex,
                      threshold: float) -> tuple[list[Sampled], collections.Counter]:
    """The questions whose best overlap with an evaluation question stays below `threshold`, and how many
    each evaluation set removed."""
    kept, removed = [], collections.Counter()
    for sampled in questions:
        if (match := index.contaminating(sampled.question, threshold)) is not None:
            removed[match.eval_set] += 1
        else:
            kept.append(sampled)
    return kept, removed

