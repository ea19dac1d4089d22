"""Accuracy and speed of jaxmath's answer verifier next to math-verify, on real benchmark data.

Three checks (issue 3): MATH-500 boxed solution answers vs their references (all should match); a
negative control pairing each MATH-500 reference with the next problem's (a fixed derangement: only
truly equal pairs should match); GSM8K labelled model solutions, whose verdicts should agree with
`is_correct`. Prints agreement, false positives, false negatives and pairs per second per verifier.
Then round trips (issue 13): every reference answer of MATH-500 and minerva_math (the last \boxed{} of
its solution) against itself reformatted (`jaxmath.verify.reformat`: thousands separators added or
removed, \dfrac <-> \frac, a \text{} unit appended, spacing, scientific notation, currency, degree and
percent signs), both ways; prints how many fail per rewrite and lists a few.

    python bench/verify.py --data-dir ../shared/data
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import sys
import threading
import time
from pathlib import Path

from jaxmath.verify import Verifier, extract_answer
from jaxmath.verify.reformat import variants


@dataclasses.dataclass
class Check:
    """One labelled set of pairs: what each verifier is given, and the expected verdict."""

    name: str
    jaxmath_inputs: list[tuple[str, str]]  # (completion or answer, gold)
    jaxmath_mode: str  # "grade" (extract first) or "compare" (already answers)
    mathverify_inputs: list[tuple[str, str]]  # (prediction text, gold text) for math_verify.parse
    labels: list[bool]


def _read_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        sys.exit(f"missing data file {path} (pass --data-dir or set JAXMATH_DATA_DIR)")
    with path.open() as f:
        return [json.loads(line) for line in f if line.strip()]


def _same_reference(a: str, b: str) -> bool:
    """Label for the negative control: the references are written identically, up to spacing, `\\dfrac`
    and a leading `x =` (the issue counts `x = 3` and `3` as the same answer)."""
    canon = lambda s: re.sub(r"^[a-z]\s*=|\s+|\\[dt](?=frac)|\\left|\\right", "", s)  # noqa: E731
    return canon(a) == canon(b)


def math500_checks(data_dir: Path) -> list[Check]:
    rows = _read_jsonl(data_dir / "math500" / "test.jsonl")
    answers = [r["answer"] for r in rows]
    shifted = answers[1:] + answers[:1]
    return [
        Check("MATH-500 solution vs answer", [(r["solution"], r["answer"]) for r in rows], "grade",
              [(r["solution"], f"${r['answer']}$") for r in rows], [True] * len(rows)),
        Check("MATH-500 negative control", list(zip(answers, shifted)), "compare",
              [(f"${a}$", f"${b}$") for a, b in zip(answers, shifted)],
              [_same_reference(a, b) for a, b in zip(answers, shifted)]),
    ]


def gsm8k_check(data_dir: Path) -> Check:
    rows = _read_jsonl(data_dir / "gsm8k" / "example_model_solutions.jsonl")
    inputs, labels = [], []
    for k, row in enumerate(rows):
        gold = extract_answer(row["ground_truth"], "answer_is")
        if gold is None:
            sys.exit(f"gsm8k row {k}: no 'A: <number>' line in ground_truth")
        for key in ("6b_finetuning", "6b_verification", "175b_finetuning", "175b_verification"):
            inputs.append((row[key]["solution"], gold))
            labels.append(bool(row[key]["is_correct"]))
    return Check("GSM8K labelled solutions", inputs, "grade", inputs, labels)


def reference_answers(data_dir: Path) -> list[tuple[str, str]]:
    """(source, reference answer) for MATH-500 (`answer`) and minerva_math (its solution's last \\boxed{})."""
    refs = [("MATH-500", r["answer"]) for r in _read_jsonl(data_dir / "math500" / "test.jsonl")]
    for k, row in enumerate(_read_jsonl(data_dir / "minerva_math" / "test.jsonl")):
        answer = extract_answer(row["solution"], "boxed")
        if answer is None:
            sys.exit(f"minerva_math row {k}: no \\boxed{{}} answer in solution")
        refs.append(("minerva_math", answer))
    return refs


def round_trips(verifier: Verifier, refs: list[tuple[str, str]], with_math_verify: bool) -> list[str]:
    """Each reference against each of its rewritings, both ways: failure counts per source and rewrite."""
    cases = [(source, name, ref, variant) for source, ref in refs for name, variant in variants(ref).items()]
    forward = verifier.compare_batch([c[3] for c in cases], [c[2] for c in cases])
    backward = verifier.compare_batch([c[2] for c in cases], [c[3] for c in cases])
    jax_fails = [not (f.correct and b.correct) for f, b in zip(forward, backward)]
    mv_fails = [with_math_verify and not (_math_verify_same(variant, ref) and _math_verify_same(ref, variant))
                for _, _, ref, variant in cases]
    lines = ["| source | rewrite | variants | jaxmath fails | math-verify fails |", "|---|---|---|---|---|"]
    for group in sorted({c[:2] for c in cases}):
        ks = [k for k, c in enumerate(cases) if c[:2] == group]
        mv = str(sum(mv_fails[k] for k in ks)) if with_math_verify else "-"
        lines.append(f"| {group[0]} | `{group[1]}` | {len(ks)} | {sum(jax_fails[k] for k in ks)} | {mv} |")
    failed = [c for c, bad in zip(cases, jax_fails) if bad]
    lines.append(f"\njaxmath round-trip failures: {len(failed)} of {len(cases)} variants of {len(refs)} references"
                 + (f"; math-verify: {sum(mv_fails)}" if with_math_verify else ""))
    lines += [f"  {source} {name}: `{ref}` vs `{variant}`" for source, name, ref, variant in failed[:10]]
    return lines


def _math_verify_same(pred: str, gold: str) -> bool:
    return _math_verify_pair_safe(f"${pred}$", f"${gold}$") == "True"


# Known weak spots of math-verify 0.9 (issue 3): (completion, gold, expected verdict).
WEAK_SPOTS = [
    (r"\boxed{\frac{1}{2004!}}", r"\frac{1}{2006!}", False),
    (r"\boxed{0.0000001}", "0.0000002", False),
    (r"\boxed{1e6}", "1", False),
    ("<think>so 5</think><answer>72</answer>", "72", True),
    ("<think>The answer is 72.</think><answer>71</answer>", "72", False),
    (r"\boxed{204_5}", "204", False),
    (r"\boxed{\emptyset}", r"\varnothing", True),
]


def weak_spot_table(verifier: Verifier, with_math_verify: bool) -> list[str]:
    """One line per weak spot: expected verdict, jaxmath's, math-verify's (main thread and worker thread)."""
    lines = ["| completion | gold | expected | jaxmath | math-verify | math-verify in a thread |", "|---|---|---|---|---|---|"]
    jax_verdicts = verifier.grade_batch([c for c, _, _ in WEAK_SPOTS], [g for _, g, _ in WEAK_SPOTS])
    for (completion, gold, expected), verdict in zip(WEAK_SPOTS, jax_verdicts):
        mv = mv_thread = "-"
        if with_math_verify:
            mv = str(_math_verify_pair(completion, f"${gold}$"))
            box: list[str] = []
            thread = threading.Thread(target=lambda: box.append(_math_verify_pair_safe(completion, f"${gold}$")))
            thread.start()
            thread.join()
            mv_thread = box[0]
        lines.append(f"| `{completion}` | `{gold}` | {expected} | {verdict.correct} | {mv} | {mv_thread} |")
    return lines


def _math_verify_pair(pred: str, gold: str) -> bool:
    from math_verify import parse, verify

    return bool(verify(parse(gold), parse(pred)))


def _math_verify_pair_safe(pred: str, gold: str) -> str:
    try:
        return str(_math_verify_pair(pred, gold))
    except Exception as err:  # math-verify's SIGALRM timeouts fail outside the main thread
        return type(err).__name__


def run_jaxmath(check: Check, verifier: Verifier) -> tuple[list[bool], float]:
    texts, golds = zip(*check.jaxmath_inputs)
    start = time.perf_counter()
    if check.jaxmath_mode == "grade":
        verdicts = verifier.grade_batch(list(texts), list(golds))
    else:
        verdicts = verifier.compare_batch(list(texts), list(golds))
    return [v.correct for v in verdicts], time.perf_counter() - start


def run_mathverify(check: Check) -> tuple[list[bool], float]:
    out = []
    start = time.perf_counter()
    for k, (pred, gold) in enumerate(check.mathverify_inputs):
        out.append(_math_verify_pair(pred, gold))
        if (k + 1) % 500 == 0:
            print(f"  math-verify {check.name}: {k + 1}/{len(check.mathverify_inputs)}", file=sys.stderr)
    return out, time.perf_counter() - start


def score(name: str, check: Check, verdicts: list[bool], seconds: float) -> dict:
    agree = sum(v == lab for v, lab in zip(verdicts, check.labels))
    fp = [k for k, (v, lab) in enumerate(zip(verdicts, check.labels)) if v and not lab]
    fn = [k for k, (v, lab) in enumerate(zip(verdicts, check.labels)) if lab and not v]
    return {"check": check.name, "verifier": name, "agree": agree, "total": len(verdicts),
            "false_pos": len(fp), "false_neg": len(fn), "pairs_per_s": len(verdicts) / seconds,
            "fp_rows": fp[:10], "fn_rows": fn[:10]}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path,
                        default=Path(os.environ.get("JAXMATH_DATA_DIR", "../shared/data")),
                        help="folder with math500/, gsm8k/ and minerva_math/ "
                             "(default: $JAXMATH_DATA_DIR or ../shared/data)")
    parser.add_argument("--workers", type=int, default=os.cpu_count(), help="jaxmath verifier processes")
    parser.add_argument("--timeout", type=float, default=5.0, help="jaxmath per-item timeout (seconds)")
    parser.add_argument("--no-math-verify", action="store_true", help="run jaxmath only")
    parser.add_argument("--show-errors", action="store_true", help="print the disagreeing rows")
    args = parser.parse_args(argv)

    checks = [*math500_checks(args.data_dir), gsm8k_check(args.data_dir)]
    refs = reference_answers(args.data_dir)
    rows = []
    with Verifier(workers=args.workers, timeout=args.timeout) as verifier:
        for check in checks:
            print(f"jaxmath ({args.workers} workers): {check.name} ({len(check.labels)} pairs)", file=sys.stderr)
            rows.append(score("jaxmath", check, *run_jaxmath(check, verifier)))
        weak_spots = weak_spot_table(verifier, not args.no_math_verify)
        print("round trips: references against themselves reformatted", file=sys.stderr)
        trips = round_trips(verifier, refs, not args.no_math_verify)
    if not args.no_math_verify:
        for check in checks:
            print(f"math-verify (1 process): {check.name}", file=sys.stderr)
            rows.append(score("math-verify", check, *run_mathverify(check)))

    print("\n| check | verifier | agree | false pos | false neg | pairs/s |\n|---|---|---|---|---|---|")
    for r in sorted(rows, key=lambda r: r["check"]):
        print(f"| {r['check']} | {r['verifier']} | {r['agree']}/{r['total']} | {r['false_pos']} | "
              f"{r['false_neg']} | {r['pairs_per_s']:.0f} |")
    print("\nmath-verify weak spots\n" + "\n".join(weak_spots))
    print("\nround trips: each reference equals itself reformatted (both ways)\n" + "\n".join(trips))
    if args.show_errors:
        by_name = {c.name: c for c in checks}
        for r in rows:
            for kind in ("fp_rows", "fn_rows"):
                for k in r[kind]:
                    text, gold = by_name[r["check"]].jaxmath_inputs[k]
                    print(f"{r['verifier']} {r['check']} {kind[:2]} row {k}: gold={gold!r} "
                          f"pred={extract_answer(text) if by_name[r['check']].jaxmath_mode == 'grade' else text!r}")


if __name__ == "__main__":
    main()
