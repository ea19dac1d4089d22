"""Evaluation metrics against hand-computed values, and the evaluate CLI end to end on a scripted tiny model."""
import json
from math import comb
from pathlib import Path

import pytest
import torch

from jaxmath.data.tokenizer import train_tokenizer
from jaxmath.commands.evaluate import eval_main as main
from jaxmath.evaluation import benchmark_metrics, majority_correct, pass_at_k, summary_table
from tiny_hf import tiny_model

FIXTURES = Path(__file__).parent / "fixtures" / "eval"


@pytest.mark.parametrize("n,c,k,expected", [
    (5, 2, 2, 1 - 3 / 10),  # 1 - C(3,2)/C(5,2)
    (10, 3, 1, 0.3),
    (4, 0, 3, 0.0),
    (4, 4, 1, 1.0),
    (4, 2, 3, 1.0),  # any 3 of 4 include a correct one
    (8, 1, 4, 0.5),  # 1 - C(7,4)/C(8,4) = 1 - 35/70
])
def test_pass_at_k_unbiased_estimator(n, c, k, expected):
    assert pass_at_k(n, c, k) == pytest.approx(expected)


def test_pass_at_k_rejects_impossible_counts():
    with pytest.raises(ValueError, match="c <= n"):
        pass_at_k(3, 4, 1)


def test_majority_vote():
    assert majority_correct(["1/2", "0.5", " 1/2 ", None], [True, True, True, False])
    assert not majority_correct(["7", "8", "8", None], [True, False, False, False])
    assert not majority_correct(["7", "8"], [False, True])  # tie: the answer seen first wins
    assert not majority_correct([None, None], [False, False])
    assert majority_correct(["$x=3$", "x = 3", "4"], [True, True, False])


def test_benchmark_metrics_by_hand():
    answers = [["5", "5", "6", "5"], ["1", "2", "2", None]]
    correct = [[True, True, False, True], [True, False, False, False]]
    metrics = benchmark_metrics(answers, correct)
    assert metrics == {
        "pass@1": pytest.approx((3 / 4 + 1 / 4) / 2),
        "maj@4": pytest.approx(0.5),
        "pass@2": pytest.approx((1.0 + (1 - comb(3, 2) / comb(4, 2))) / 2),
        "pass@4": pytest.approx(1.0),
        "n": 2,
    }
    table = summary_table({"gsm8k": metrics})
    assert "gsm8k" in table and "50.0" in table and "maj@4" in table


CHAIN = ["\\", "b", "o", "x", "e", "d", "{", ("1", "2"), "8", "}", "<|im_end|>"]


def scripted_model(tokenizer, start_token: int):
    """A tiny Qwen2 whose attention and MLP are silenced, so each next token depends only on the current one.

    From the prompt's last token it writes `\\boxed{18}` or `\\boxed{28}` (a coin flip at the digit), then
    <|im_end|>: one-hot embeddings of the chain tokens, and an LM head mapping each to its successor.
    """
    hf = tiny_model("qwen2", vocab_size=len(tokenizer), tie_word_embeddings=False)
    ids = [[tokenizer.convert_tokens_to_ids(t) for t in (step if isinstance(step, tuple) else (step,))]
           for step in CHAIN]
    with torch.no_grad():
        for layer in hf.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        hf.model.norm.weight.fill_(1.0)
        hf.model.embed_tokens.weight.zero_()
        hf.lm_head.weight.zero_()
        sources = [[start_token], *ids[:-1]]
        dim = 0
        for current, following in zip(sources, ids):
            for token in current:
                hf.model.embed_tokens.weight[token, dim] = 1.0  # RMSNorm makes this 8 = sqrt(hidden)
                for nxt in following:
                    hf.lm_head.weight[nxt, dim] = 2.0  # logit 16 against 0 for every other token
                dim += 1
    return hf


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    tokenizer = train_tokenizer(["Tom has 9 boxes with 2 pens in each box. How many pens?"] * 10, vocab_size=300)
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False,
                                           add_generation_prompt=True)
    start = tokenizer.encode(prompt)[-1]
    path = tmp_path_factory.mktemp("scripted")
    scripted_model(tokenizer, start).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def test_evaluate_cli_end_to_end(model_dir, tmp_path, capsys):
    out = tmp_path / "results"
    code = main(["--model", str(model_dir), "--benchmarks", "gsm8k", "math500", "--data-dir", str(FIXTURES),
                 "--num-samples", "4", "--temperature", "1.0", "--max-new-tokens", "16", "--batch-size", "8",
                 "--verifier-workers", "1", "--seed", "3", "--out", str(out)])
    captured = capsys.readouterr()
    printed, shown = captured.out, captured.err
    assert code == 0
    rows = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert len(rows) == (2 + 1) * 4
    for row in rows:
        assert row["completion"] in ("\\boxed{18}", "\\boxed{28}") and row["tokens"] == len(CHAIN)
        assert row["extracted"] == row["completion"][7:9]
        assert row["verdict"] == ("correct" if row["extracted"] == row["gold"] else "wrong")
        assert "<|im_start|>assistant" in row["prompt"]
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary) == {"gsm8k", "math500"} and summary["gsm8k"]["n"] == 2 and summary["math500"]["n"] == 1
    per_problem = {}
    for row in rows:
        if row["benchmark"] == "gsm8k":
            per_problem.setdefault(row["id"], []).append(row["verdict"] == "correct")
    counts = [sum(v) for v in per_problem.values()]
    assert 0 < sum(counts) < 8  # the coin flips went both ways
    assert summary["gsm8k"]["pass@1"] == pytest.approx(sum(c / 4 for c in counts) / 2, abs=1e-6)
    assert summary["gsm8k"]["pass@2"] == pytest.approx(
        sum(1 - comb(4 - c, 2) / comb(4, 2) for c in counts) / 2, abs=1e-6)
    assert summary["math500"] == {"pass@1": 0.0, "maj@4": 0.0, "pass@2": 0.0, "pass@4": 0.0, "n": 1}
    assert "maj@4" in printed and "gsm8k: 100%" in shown and "8/8" in shown and "tok_s=" in shown  # 2 x 4 samples


def test_missing_benchmark_or_data_dir_lists_what_exists(model_dir, tmp_path, capsys):
    assert main(["--model", str(model_dir), "--benchmarks", "svamp", "--data-dir", str(FIXTURES),
                 "--out", str(tmp_path)]) == 1
    assert "gsm8k, math500" in capsys.readouterr().err
    assert main(["--model", str(model_dir), "--benchmarks", "gsm8k", "--data-dir", str(FIXTURES / "nope"),
                 "--out", str(tmp_path)]) == 1
    assert "does not exist" in capsys.readouterr().err
    assert main(["--model", str(model_dir), "--benchmarks", "gsm9k", "--out", str(tmp_path)]) == 1
    assert "known benchmarks: gsm8k" in capsys.readouterr().err


def test_generate_command_prints_completions(model_dir, capsys):
    from jaxmath.cli import main as jaxmath_command

    assert jaxmath_command(["generate", "--model", str(model_dir), "--prompt", "What is 17 * 23?",
                            "--max-new-tokens", "16"]) == 0
    printed = capsys.readouterr().out
    assert f"=== prompt 1, sample 1 ({len(CHAIN)} tokens) ===" in printed
    assert "\\boxed{18}" in printed or "\\boxed{28}" in printed
    assert jaxmath_command(["generate", "--model", str(model_dir / "missing"), "--prompt", "x"]) == 1
