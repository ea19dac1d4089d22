"""Verify-then-revise with a stubbed model (exact rounds, stopping, feedback), `jaxmath eval --repair-rounds` and a
checkpoint teacher on the scripted tiny model of test_evaluation."""
import copy
import json
from pathlib import Path

import pytest

from jaxmath.commands.data import main as data_main
from jaxmath.data.formats import get_format, render_messages
from jaxmath.data.readers import read_records
from jaxmath.data.tokenizer import train_tokenizer
from jaxmath.commands.evaluate import eval_main as evaluate_main
from jaxmath.revise import check_attempts, feedback_text, repair_metrics, revise, revision_messages
from jaxmath.verify import Verifier
from test_evaluation import FIXTURES, scripted_model

POT = get_format("pot")
RIGHT = "```python\nanswer = 6 * 7\n```"
CRASH = "```python\nanswer = [1, 2][5]\n```"
WRONG = "```python\nanswer = 40\n```"
WRONG_AGAIN = "```python\nanswer = 41\n```"


@pytest.fixture(scope="module")
def verifier():
    with Verifier(workers=1) as v:
        yield v


class StubModel:
    """Answers each conversation from a script keyed by (question, number of assistant turns so far)."""

    def __init__(self, script):
        self.script, self.calls = script, []

    def __call__(self, conversations, round_):
        assert round_ == len(self.calls) + 1
        self.calls.append(conversations)
        return [self.script[(c[1]["content"], sum(t["role"] == "assistant" for t in c))] for c in conversations]


def test_revise_counts_rounds_stops_on_success_and_quotes_the_sandbox_error(verifier):
    questions, golds = ["crash", "wrong", "right"], ["42", "42", "42"]
    first = check_attempts([CRASH, WRONG, RIGHT], golds, POT, verifier)
    assert [a.correct for a in first] == [False, False, True]
    model = StubModel({("crash", 1): RIGHT, ("wrong", 1): WRONG_AGAIN, ("wrong", 2): RIGHT})
    histories = revise(questions, golds, first, model, POT, verifier, rounds=3)

    assert [len(h) for h in histories] == [2, 3, 1] and all(h[-1].correct for h in histories)
    assert len(model.calls) == 2  # round 3 never ran: everything verified after round 2
    round1, round2 = model.calls
    assert [c[1]["content"] for c in round1] == ["crash", "wrong"] and [c[1]["content"] for c in round2] == ["wrong"]
    crash_feedback = round1[0][-1]["content"]
    assert crash_feedback == ("Running your program failed (error):\nIndexError: list index out of range\n"
                              f"Find the mistake and write a corrected solution. {POT.system_prompt}")
    assert round1[1][-1]["content"].startswith("Your final answer, 40, is wrong.\n")
    assert [t["role"] for t in round2[0]] == ["system", "user", "assistant", "user", "assistant", "user"]
    assert [round2[0][2]["content"], round2[0][4]["content"]] == [WRONG, WRONG_AGAIN]
    assert round2[0][5]["content"].startswith("Your final answer, 41, is wrong.")

    metrics = repair_metrics(histories, num_samples=1, rounds=3)
    assert metrics == {"pass@1_after_repair_1": pytest.approx(2 / 3), "pass@1_after_repair_2": 1.0,
                       "pass@1_after_repair_3": 1.0}
    model.calls.clear()
    short = revise(questions, golds, first, model, POT, verifier, rounds=1)
    assert [len(h) for h in short] == [2, 2, 1] and not short[1][-1].correct and len(model.calls) == 1
    assert revise(questions, golds, first, model, POT, verifier, rounds=0) == [[a] for a in first]


def test_repair_metrics_per_sample():
    class A:  # an attempt with only a verdict
        def __init__(self, ok):
            self.correct = ok
    # problem 1: samples (right first, fixed in round 2); problem 2: (never, fixed in round 1)
    histories = [[A(True)], [A(False), A(False), A(True)], [A(False), A(False), A(False)], [A(False), A(True)]]
    assert repair_metrics(histories, num_samples=2, rounds=2) == {
        "pass@1_after_repair_1": pytest.approx((1 / 2 + 1 / 2) / 2),
        "pass@1_after_repair_2": pytest.approx((1 + 1 / 2) / 2)}


def test_feedback_for_each_kind_of_failure(verifier):
    attempts = check_attempts(["I think it is 42.", "```python\nx = 1\n```", "```python\nwhile True: pass\n```"],
                              ["42"] * 3, POT, verifier, timeout=1.0)
    texts = [feedback_text(a, POT) for a in attempts]
    assert texts[0].startswith("Your reply has no ```python code block")
    assert texts[1].startswith("Your program ran but set no `answer` variable")
    assert texts[2].startswith("Running your program failed (timeout)")
    boxed = get_format("boxed")
    plain, wrong = check_attempts(["no idea", "so \\boxed{7}"], ["42", "42"], boxed, verifier)
    assert feedback_text(plain, boxed) == ("No final answer was found in your reply.\nFind the mistake and write a "
                                           f"corrected solution. {boxed.system_prompt}")
    assert feedback_text(wrong, boxed).startswith("Your final answer, 7, is wrong.")
    assert all("42" not in feedback_text(a, boxed) for a in (plain, wrong))


def test_revision_prompt_with_and_without_a_chat_template(verifier):
    tokenizer = train_tokenizer(["What is 2+2? 4 five"] * 10, vocab_size=300)
    attempt = check_attempts(["It is \\boxed{5}."], ["4"], get_format("boxed"), verifier)[0]
    messages = revision_messages(get_format("boxed"), "What is 2+2?", [attempt])
    feedback = feedback_text(attempt, get_format("boxed"))
    system = get_format("boxed").system_prompt
    assert render_messages(messages, tokenizer) == (
        f"<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n"
        f"<|im_start|>assistant\nIt is \\boxed{{5}}.<|im_end|>\n<|im_start|>user\n{feedback}<|im_end|>\n"
        "<|im_start|>assistant\n")
    plain = copy.deepcopy(tokenizer)
    plain.chat_template = None
    assert render_messages(messages, plain) == (f"{system}\n\nQuestion: What is 2+2?\nAnswer: It is \\boxed{{5}}."
                                                f"\n\n{feedback}\nAnswer: ")
    with pytest.raises(ValueError, match="ending with user"):
        render_messages(messages[:3], tokenizer)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    tokenizer = train_tokenizer(["Tom has 9 boxes with 2 pens in each box. How many pens?"] * 10, vocab_size=300)
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False,
                                           add_generation_prompt=True)
    path = tmp_path_factory.mktemp("scripted")
    scripted_model(tokenizer, tokenizer.encode(prompt)[-1]).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def test_evaluate_with_repair_rounds(model_dir, tmp_path):
    """The scripted model answers 18 or 28 at random, on the first try and on every revision (same last token)."""
    out = tmp_path / "results"
    assert evaluate_main(["--model", str(model_dir), "--benchmarks", "gsm8k", "--data-dir", str(FIXTURES),
                          "--num-samples", "4", "--temperature", "1.0", "--max-new-tokens", "16", "--batch-size", "8",
                          "--verifier-workers", "1", "--seed", "1", "--repair-rounds", "2", "--out", str(out)]) == 0
    rows = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    summary = json.loads((out / "summary.json").read_text())["gsm8k"]
    boxed = get_format("boxed")
    by_round = {0: [], 1: [], 2: []}
    for row in rows:
        revisions = row["revisions"]
        if row["verdict"] == "correct":
            assert revisions == [] and row["final_verdict"] == "correct"
        else:
            wrong = "28" if row["gold"] == "18" else "18"
            assert revisions[0]["feedback"] == (f"Your final answer, {wrong}, is wrong.\nFind the mistake and write a "
                                                f"corrected solution. {boxed.system_prompt}")
            assert all(r["verdict"] == "wrong" for r in revisions[:-1]) and len(revisions) <= 2
            assert len(revisions) == 2 or revisions[-1]["verdict"] == "correct"
            assert row["final_verdict"] == revisions[-1]["verdict"]
            assert [r["round"] for r in revisions] == list(range(1, len(revisions) + 1))
        for r in by_round:
            by_round[r].append(row["verdict"] == "correct" or any(x["verdict"] == "correct" for x in revisions[:r]))
    assert sum(by_round[1]) > sum(by_round[0])  # revisions fixed something (seeded coin flips)
    assert summary["pass@1"] == pytest.approx(sum(by_round[0]) / 8, abs=1e-6)
    assert summary["pass@1_after_repair_1"] == pytest.approx(sum(by_round[1]) / 8, abs=1e-6)
    assert summary["pass@1_after_repair_2"] == pytest.approx(sum(by_round[2]) / 8, abs=1e-6)


def test_checkpoint_teacher_synthesizes_and_reruns_without_loading_the_model(model_dir, tmp_path, monkeypatch,
                                                                            capsys):
    problems = tmp_path / "problems.jsonl"
    problems.write_text("".join(json.dumps({"id": f"p{gold}", "question": q, "answer": gold}) + "\n"
                                for q, gold in [("Tom has 9 boxes with 2 pens each. How many pens?", "18"),
                                                ("4 rows of 7 books. How many books?", "28")]))
    out = tmp_path / "boxed.jsonl"
    argv = ["synthesize", "--teacher", str(model_dir), "--input", str(problems), "--output", str(out), "--format",
            "boxed", "--samples", "4", "--temperature", "1.0", "--max-new-tokens", "16", "--verifier-workers", "1",
            "--batch-size", "8"]
    assert data_main(argv) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["asked"] == 8 and summary["cached"] == 0 and summary["ran"] == 0  # boxed: no programs
    cache = [json.loads(line)["completion"] for line in Path(f"{out}.cache.jsonl").read_text().splitlines()]
    assert len(cache) == 8 and set(cache) <= {"\\boxed{18}", "\\boxed{28}"}
    records = read_records(out)
    assert 0 < summary["verified"] < 8 and summary["kept"] == len(records) <= 2  # one distinct solution per problem
    for record in records:
        assert record.solution == f"\\boxed{{{record.answer}}}" and record.metadata["teacher"].startswith("local:")

    def no_model(*args, **kwargs):
        raise AssertionError("a fully cached run must not load the model")

    monkeypatch.setattr("jaxmath.evaluation.load_for_generation", no_model)
    assert data_main(argv) == 0
    again = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert again == {**summary, "asked": 0, "cached": 8}
