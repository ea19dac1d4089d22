"""DPO pair builder: program stripping, deduplication, both pair kinds, the cap, seeding, the three input
layouts, refusing benchmark questions and the `jaxmath data pairs` command."""
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxmath.commands.data import main as data_main
from jaxmath.data.pairs import PairConfig, Sampled, build_pairs, group_samples, normal_form, strip_program
from jaxmath.data.readers import BadRowError, BadRowWarning, Located, SkipLog
from test_data_decontaminate import printed_removed

FIXTURES = Path(__file__).parent / "fixtures"

VERBOSE_PROGRAM = '''
def solve():
    """Work out the pens."""
    boxes = 9  # boxes on the table
    print("boxes", boxes)
    per_box = 2
    # multiply
    total = boxes * per_box
    print(f"total = {total}")
    return total

answer = solve()
print(answer)
'''


def pot(program: str) -> str:
    return f"Let me write a program.\n```python\n{program.strip()}\n```"


def test_strip_program_drops_comments_docstrings_and_prints_only():
    assert strip_program(VERBOSE_PROGRAM) == ("def solve():\n    boxes = 9\n    per_box = 2\n"
                                              "    total = boxes * per_box\n    return total\nanswer = solve()")
    # a body left empty gets `pass`; print used as a value, other calls and method calls named print stay
    assert strip_program("if x:\n    print(x)\nelse:\n    y = 1") == "if x:\n    pass\nelse:\n    y = 1"
    assert strip_program("p = print\nlog.print(1)\nf(2)") == "p = print\nlog.print(1)\nf(2)"
    with pytest.raises(SyntaxError):
        strip_program("def (")


def test_normal_form_identifies_programs_up_to_comments_and_prints_and_text_up_to_spaces():
    terse = pot("def solve():\n    boxes = 9\n    per_box = 2\n    total = boxes * per_box\n    return total\n"
                "answer = solve()")
    assert normal_form(pot(VERBOSE_PROGRAM)) == normal_form(terse)
    assert normal_form("  The answer\n is  18. ") == "The answer is 18."
    assert normal_form("```python\ndef (\n```") == "```python def ( ```"  # not Python: compared as text


def sampled(completions, correct, question="Q?", id="q"):
    return Sampled(id, question, list(completions), list(correct))


SHORT, LONG, WRONG = "9 * 2 = 18. \\boxed{18}", "Nine boxes, two pens each: 9 * 2 = 18 pens. \\boxed{18}", "\\boxed{11}"


def test_pairs_correct_vs_incorrect_and_concise_vs_verbose_deduplicated():
    question = sampled([SHORT, LONG, WRONG, "  9 * 2 =  18. \\boxed{18}", "\\boxed{?}"],
                       [True, True, False, True, None])
    rows, stats = build_pairs([question], PairConfig(seed=0))
    got = {(r["kind"], r["chosen"], r["rejected"]) for r in rows}
    assert got == {("correct_incorrect", SHORT, WRONG), ("correct_incorrect", LONG, WRONG),
                   ("concise_verbose", SHORT, LONG)}
    assert all(r["question"] == "Q?" for r in rows) and len({r["id"] for r in rows}) == 3
    assert (stats.duplicates, stats.unverifiable, stats.without_pairs) == (1, 1, 0)
    assert stats.pairs == {"correct_incorrect": 2, "concise_verbose": 1}
    # the length ratio decides what counts as verbose
    rows, _ = build_pairs([question], PairConfig(kinds=("concise_verbose",), min_length_ratio=5.0))
    assert rows == []


def test_cap_takes_kinds_in_turn_and_the_seed_fixes_the_draw():
    correct = [f"{'step ' * k}\\boxed{{18}}" for k in range(1, 7)]  # lengths grow with k
    wrong = [f"{'x ' * k}\\boxed{{1{k}}}" for k in range(6)]
    question = sampled(correct + wrong, [True] * 6 + [False] * 6)
    rows, stats = build_pairs([question], PairConfig(max_pairs_per_question=5, seed=3))
    assert [r["kind"] for r in rows] == ["correct_incorrect", "concise_verbose"] * 2 + ["correct_incorrect"]
    assert len({(r["chosen"], r["rejected"]) for r in rows}) == 5
    again, _ = build_pairs([question], PairConfig(max_pairs_per_question=5, seed=3))
    other, _ = build_pairs([question], PairConfig(max_pairs_per_question=5, seed=4))
    assert again == rows and other != rows
    for r in rows:
        if r["kind"] == "concise_verbose":
            assert len(r["rejected"]) >= 1.5 * len(r["chosen"])


def test_program_of_thought_length_is_measured_after_stripping():
    commented = pot(VERBOSE_PROGRAM)  # longer on the page, shorter once comments and prints are gone
    long_code = pot("def solve():\n    boxes = 9\n    per_box = 2\n    pens_in_all_boxes = boxes * per_box\n"
                    "    checked = pens_in_all_boxes + 0 * boxes\n    return checked\nanswer = solve()")
    assert len(commented) > len(long_code)
    rows, _ = build_pairs([sampled([long_code, commented], [True, True])],
                          PairConfig(kinds=("concise_verbose",), min_length_ratio=1.2))
    assert [(r["chosen"], r["rejected"]) for r in rows] == [(commented, long_code)]


def test_a_solution_graded_both_ways_is_not_paired():
    rows, stats = build_pairs([sampled([SHORT, SHORT + " ", WRONG], [True, False, False])],
                              PairConfig(kinds=("correct_incorrect",)))
    assert rows == [] and stats.without_pairs == 1


def located(rows):
    return [Located(f"in.jsonl:{i + 1}", i + 1, row) for i, row in enumerate(rows)]


def test_grouping_both_layouts_merges_questions_and_names_bad_rows():
    rows = located([
        {"question": "Q1", "completions": [SHORT, WRONG], "correct": [True, False]},
        {"benchmark": "gsm8k", "id": "gsm8k-1", "completion": LONG, "verdict": "correct"},
        {"benchmark": "gsm8k", "id": "gsm8k-1", "completion": WRONG, "verdict": "unverifiable"},
        {"question": "Q1", "completions": [LONG], "correct": [True]},
        {"question": "Q2", "completions": [SHORT], "correct": [True, False]},
        {"benchmark": "gsm8k", "id": "gsm8k-9", "completion": LONG, "verdict": "correct"},
    ])
    skips = SkipLog()
    groups = group_samples(rows, skips, {("gsm8k", "gsm8k-1"): "Tom has 9 boxes?"})
    assert [(g.question, g.completions, g.correct) for g in groups] == [
        ("Q1", [SHORT, WRONG, LONG], [True, False, True]), ("Tom has 9 boxes?", [LONG, WRONG], [True, None])]
    assert skips.counts == {"bad verdicts": 1, "unknown question": 1}
    assert "in.jsonl:5" in skips.first["bad verdicts"] and "gsm8k-9" in skips.first["unknown question"]
    with pytest.raises(BadRowError, match="in.jsonl:5"):
        group_samples(rows, SkipLog(strict=True), {("gsm8k", "gsm8k-1"): "Tom has 9 boxes?"})


def test_cli_reads_eval_samples_with_benchmark_questions(tmp_path, capsys):
    samples = tmp_path / "samples.jsonl"
    with samples.open("w") as f:
        for text, verdict in ((SHORT, "correct"), (LONG, "correct"), (WRONG, "wrong"), ("??", "unverifiable")):
            f.write(json.dumps({"benchmark": "gsm8k", "id": "gsm8k-1", "sample": 0, "prompt": "...",
                                "completion": text, "verdict": verdict}) + "\n")
        f.write("not json\n")
    out = tmp_path / "pairs.jsonl"
    with pytest.warns(BadRowWarning, match="invalid JSON"):
        code = data_main(["pairs", "--input", str(samples), "--output", str(out), "--allow-eval-splits",
                          "--data-dir", str(FIXTURES / "eval"), "--max-pairs-per-question", "2"])
    assert code == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 2 and {r["kind"] for r in rows} == {"correct_incorrect", "concise_verbose"}
    assert rows[0]["question"] == "Tom has 9 boxes with 2 pens in each box. How many pens does he have?"
    assert "2 pairs (correct_incorrect 1, concise_verbose 1) from 1 questions" in capsys.readouterr().out
    assert data_main(["pairs", "--input", str(tmp_path / "missing.jsonl"), "--output", str(out)]) == 1
    capsys.readouterr()
    # without the opt-in, benchmark samples (GSM8K's test questions here) are refused
    out.unlink()
    assert data_main(["pairs", "--input", str(samples), "--output", str(out),
                      "--data-dir", str(FIXTURES / "eval")]) == 1
    err = capsys.readouterr().err
    assert f"{samples}:1: a sample of benchmark gsm8k" in err and "source 'gsm8k', split 'test'" in err
    assert "--allow-eval-splits" in err and not out.exists()


MODEL_SOLUTIONS = FIXTURES / "pairs" / "model_solutions.jsonl"


def test_labelled_model_solutions_are_read_directly(tmp_path, capsys):
    """GSM8K's example_model_solutions.jsonl layout: each field holding {solution, is_correct} is a completion."""
    with open(MODEL_SOLUTIONS, encoding="utf-8") as handle:
        first = json.loads(handle.readline())
    short, long, wrong = (first[k]["solution"] for k in ("6b_finetuning", "6b_verification", "175b_finetuning"))
    out = tmp_path / "pairs.jsonl"
    with pytest.warns(BadRowWarning, match=r"bad solution: 1 \(first at .*model_solutions.jsonl:3: field '6b_fine"):
        assert data_main(["pairs", "--input", str(MODEL_SOLUTIONS), "--output", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    # question 1: two correct solutions, one wrong one written twice; question 2: four wrong ones, no pair
    assert {(r["kind"], r["chosen"], r["rejected"]) for r in rows} == {
        ("correct_incorrect", short, wrong), ("correct_incorrect", long, wrong), ("concise_verbose", short, long)}
    assert {r["question"] for r in rows} == {first["question"]}
    assert ("3 pairs (correct_incorrect 2, concise_verbose 1) from 2 questions; 1 questions gave none; "
            "1 duplicate") in capsys.readouterr().out


def test_pairs_drop_questions_of_the_benchmarks_under_data_dir(tmp_path, capsys):
    out = tmp_path / "pairs.jsonl"
    with pytest.warns(BadRowWarning):
        assert data_main(["pairs", "--input", str(MODEL_SOLUTIONS), "--output", str(out),
                          "--data-dir", str(FIXTURES / "decontamination")]) == 0
    printed = capsys.readouterr().out
    # question 2 is a GSM8K test question of that folder, question 1 is no benchmark's
    assert printed_removed(printed) == {"gsm8k": ["2", "1"], "svamp": ["2", "0"], "minerva_math": ["1", "0"],
                                    "amc23": ["2", "0"], "total": ["7", "1"]}
    assert "3 pairs (correct_incorrect 2, concise_verbose 1) from 1 questions; 0 questions gave none" in printed


JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=20),
                    lambda inner: (st.lists(inner, max_size=4)
                                   | st.dictionaries(st.text(max_size=12), inner, max_size=4)),
                    max_leaves=12)
FIELDS = st.sampled_from(["question", "completions", "correct", "completion", "verdict", "benchmark", "id",
                          "solution", "is_correct", "6b_finetuning"])


@settings(max_examples=100, deadline=None)
@given(rows=st.lists(st.dictionaries(FIELDS | st.text(max_size=8), JSON, max_size=6), max_size=5))
def test_any_rows_group_into_questions_or_skip_with_a_reason(rows):
    skips = SkipLog()
    groups = group_samples(located(rows), skips)
    assert len(groups) + skips.total <= len(rows) + sum(len(g.completions) for g in groups)
    for group in groups:
        assert isinstance(group.question, str) and group.question.strip()
        assert len(group.completions) == len(group.correct) and all(isinstance(c, str) for c in group.completions)
        assert all(v in (True, False, None) for v in group.correct)
    build_pairs(groups)
