"""`jaxmath solve` on the scripted tiny model of test_evaluation (it answers \\boxed{18} or \\boxed{28} by coin flip,
11 tokens each): one question as text and as JSON, a questions file with resume, and errors that name the line."""
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxmath.commands.solve import InputError, read_questions, solve_main
from jaxmath.data.tokenizer import train_tokenizer
from test_evaluation import CHAIN, scripted_model

QUESTION = "Tom has 9 boxes with 2 pens in each box. How many pens?"
FAST = ["--max-new-tokens", "16", "--temperature", "1.0", "--verifier-workers", "1", "--batch-size", "8", "--quiet"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    tokenizer = train_tokenizer([QUESTION] * 10, vocab_size=300)
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False,
                                           add_generation_prompt=True)
    path = tmp_path_factory.mktemp("scripted")
    scripted_model(tokenizer, tokenizer.encode(prompt)[-1]).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.mark.slow
def test_solve_one_question_as_json_and_as_text(model_dir, capsys):
    assert solve_main(["--model", str(model_dir), "--strategy", "self_consistency", "--samples", "5", "--json",
                       "--seed", "2", *FAST, QUESTION]) == 0
    result = json.loads(capsys.readouterr().out)
    answers = [c["answer"] for c in result["candidates"]]
    assert sorted(set(answers)) <= ["18", "28"] and len(answers) == 5
    majority = max(["18", "28"], key=answers.count)
    assert result["answer"] == majority and result["votes"][0] == {"answer": majority, "count": answers.count(majority),
                                                                   "score": None}
    assert result["tokens"] == 5 * len(CHAIN) and result["strategy"] == "self_consistency"
    assert solve_main(["--model", str(model_dir), *FAST, QUESTION]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("Answer: ") and printed.split("\n")[0][8:] in ("18", "28")
    assert f"(cot: the single sample; {len(CHAIN)} tokens)" in printed and "\\boxed{" in printed


@pytest.mark.slow
def test_solve_a_file_resumes_where_it_stopped(model_dir, tmp_path, capsys):
    questions = tmp_path / "questions.jsonl"
    questions.write_text("".join(json.dumps({"id": f"q{i}", "question": f"{QUESTION} ({i})"}) + "\n"
                                 for i in range(3)))
    answers = tmp_path / "out" / "answers.jsonl"
    answers.parent.mkdir()
    kept = {"id": "q1", "answer": "kept from an earlier run"}
    answers.write_text(json.dumps(kept) + "\n" + '{"id": "q2", "answ')  # q2's write was cut short
    args = ["--model", str(model_dir), "--input", str(questions), "--output", str(answers), *FAST]
    assert solve_main(args) == 0
    assert "solved 2 question(s)" in capsys.readouterr().err
    rows = [json.loads(line) for line in answers.read_text().splitlines()]
    assert [r["id"] for r in rows] == ["q1", "q0", "q2"] and rows[0] == kept
    for row in rows[1:]:
        assert row["question"] == f"{QUESTION} ({row['id'][1]})" and row["answer"] in ("18", "28")
        assert row["tokens"] == len(CHAIN)
    assert solve_main(args) == 0
    assert "solved 0 question(s)" in capsys.readouterr().err
    assert len(answers.read_text().splitlines()) == 3


def test_solve_errors_name_what_is_wrong(model_dir, tmp_path, capsys):
    questions = tmp_path / "questions.jsonl"
    questions.write_text(json.dumps({"question": "ok"}) + "\n{not json\n")
    out = tmp_path / "answers.jsonl"
    assert solve_main(["--model", str(model_dir), "--input", str(questions), "--output", str(out), *FAST]) == 1
    assert f"{questions} line 2: not valid JSON" in capsys.readouterr().err and not out.exists()
    questions.write_text(json.dumps({"id": 1, "question": ""}) + "\n")
    assert solve_main(["--model", str(model_dir), "--input", str(questions), "--output", str(out), *FAST]) == 1
    assert "line 1: needs a non-empty string 'question'" in capsys.readouterr().err
    for argv, message in [(["--strategy", "beam", QUESTION], "--strategy beam needs --prm PATH"),
                          ([], "give a question or --input FILE"),
                          (["--input", str(questions), QUESTION], "give a question or --input FILE"),
                          (["--input", str(questions)], "--input and --output go together")]:
        with pytest.raises(SystemExit) as exit_:
            solve_main(["--model", str(model_dir), *argv])
        assert exit_.value.code == 2 and message in capsys.readouterr().err
    assert solve_main(["--model", str(tmp_path / "missing"), QUESTION, *FAST]) == 1
    assert "error:" in capsys.readouterr().err


def test_solve_help_lists_the_strategies(capsys):
    with pytest.raises(SystemExit) as exit_:
        solve_main(["--help"], "jaxmath solve")
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    assert "usage: jaxmath solve" in text and "self_consistency" in text and "--budget" in text


@pytest.fixture(scope="module")
def prm_dir(model_dir, tmp_path_factory):
    """An untrained 2-label PRM over the scripted model's tokenizer: its scores are arbitrary but fixed."""
    from flax import nnx

    from jaxmath.checkpoint.pretrained import save_jaxmath
    from jaxmath.models import ModelConfig, build_model
    from test_prm import PRM_HF_CONFIG

    files = sorted(p for p in model_dir.glob("*") if "token" in p.name or p.name == "special_tokens_map.json")
    hf_config = PRM_HF_CONFIG | {"vocab_size": json.loads((model_dir / "config.json").read_text())["vocab_size"]}
    model = build_model(ModelConfig.from_hf(hf_config, num_labels=2), seed=0)
    return save_jaxmath(tmp_path_factory.mktemp("prm") / "model", nnx.to_pure_dict(nnx.state(model)), model.config,
                        hf_config, files)


@pytest.mark.slow
def test_eval_strategies_report_accuracy_and_tokens(model_dir, prm_dir, tmp_path, capsys):
    from jaxmath.commands.evaluate import eval_main
    from test_evaluation import FIXTURES

    base = ["--model", str(model_dir), "--benchmarks", "gsm8k", "--data-dir", str(FIXTURES), "--temperature", "1.0",
            "--max-new-tokens", "16", "--batch-size", "8", "--verifier-workers", "1", "--seed", "3", "--quiet"]
    for strategy, extra in [("self_consistency", ["--num-samples", "5"]),
                            ("beam", ["--num-samples", "3", "--beam", "2", "--budget", "40", "--prm", str(prm_dir)])]:
        out = tmp_path / strategy
        assert eval_main(base + ["--strategy", strategy, "--out", str(out), *extra]) == 0
        summary = json.loads((out / "summary.json").read_text())["gsm8k"]
        rows = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
        assert len(rows) == summary["n"] == 2 and all(r["strategy"] == strategy for r in rows)
        assert summary["accuracy"] == pytest.approx(sum(r["answer"] == r["gold"] for r in rows) / 2)
        assert summary["tokens/question"] == pytest.approx(sum(r["tokens"] for r in rows) / 2)
        assert f"{summary['tokens/question']:.1f}" in capsys.readouterr().out
        if strategy == "self_consistency":
            assert all(r["tokens"] == 5 * len(CHAIN) for r in rows)
            for r in rows:
                answers = [c["answer"] for c in r["candidates"]]
                assert r["answer"] == max(dict.fromkeys(answers), key=answers.count)
        else:  # the budget holds 3 samples of one 11-token step, and no second round
            assert all(r["tokens"] == 3 * len(CHAIN) and len(r["candidates"]) <= 2 for r in rows)
    with pytest.raises(SystemExit):
        eval_main(base + ["--strategy", "tree", "--out", str(tmp_path / "x")])
    assert "--strategy tree needs --prm PATH" in capsys.readouterr().err


@settings(max_examples=60, deadline=None)
@given(lines=st.lists(st.one_of(st.text(max_size=40), st.builds(json.dumps, st.dictionaries(
    st.sampled_from(["id", "question", "other"]), st.one_of(st.text(max_size=20), st.integers(), st.none()),
    max_size=3))), max_size=5))
def test_any_questions_file_reads_or_names_its_bad_line(tmp_path_factory, lines):
    path = tmp_path_factory.mktemp("q") / "questions.jsonl"
    path.write_text("\n".join(lines), encoding="utf-8")
    try:
        rows = read_questions(path)
    except InputError as err:
        assert str(err).startswith(f"{path} line ")
        return
    assert all(isinstance(i, str) and isinstance(q, str) and q.strip() for i, q in rows)
    assert len({i for i, _ in rows}) == len(rows)
