"""PRM data and use: synthetic chains, step splitting, labelling from verified solutions and from Monte-Carlo
rollouts, the scorer against a direct forward, a tiny PRM trained with the shared train step (held-out AUC,
best-of-N against a random pick), quality filtering, the GRPO step bonus, and `--select prm` end to end."""
import json

import jax
import numpy as np
import pytest
from flax import nnx

from jaxmath.checkpoint.pretrained import save_jaxmath
from jaxmath.commands import data as data_cli
from jaxmath.commands.options import PRM_AGGREGATIONS
from jaxmath.data.encode import STEP_SEPARATOR, encode_prm_trace
from jaxmath.data.formats import get_format, render_prompt
from jaxmath.data.pipelines import PipelineOptions, prm_pipeline
from jaxmath.data.tokenizer import train_tokenizer
from jaxmath.commands.evaluate import eval_main as evaluate_main
from jaxmath.inference.completions import sample_completions
from jaxmath.inference.config import Sampling
from jaxmath.models import CausalLM, ModelConfig, build_model
from jaxmath.objectives import IGNORE_LABEL, best_of_n, make_loss, roc_auc
from jaxmath.objectives.prm import STEP_AGGREGATIONS
from jaxmath.parallel import make_mesh
from jaxmath.prm.filter import prm_filter
from jaxmath.prm.labels import first_failing_step, label_solutions, step_equations, verified_labels
from jaxmath.prm.reward import prm_step_bonus
from jaxmath.prm.rollout import monte_carlo_labels
from jaxmath.prm.scorer import PRMScorer
from jaxmath.prm.steps import split_steps, step_texts
from jaxmath.prm.synthetic import chain_problems, trace_rows
from jaxmath.train.optimizer import OptimizerConfig, make_optimizer
from jaxmath.train.step import setup_training
from jaxmath.verify import Verifier
from jaxmath.verify.rewards import equation_holds

FMT = get_format("boxed")
# True running values stay in 0..9 and a corrupted result is off by 10 or 20, so a wrong step is visible to a
# tiny model within a few hundred steps. (With offsets of 1-3 the same model learns the digit arithmetic too
# slowly for a test: held-out AUC stayed near 0.7 after 800 steps.)
DETECTABLE = dict(max_value=9, max_operand=5, offsets=(-20, -10, 10, 20))
PRM_HF_CONFIG = {"model_type": "qwen2", "architectures": ["Qwen2ForTokenClassification"], "num_labels": 2,
                 "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
                 "num_key_value_heads": 2, "max_position_embeddings": 256}


def solution_text(steps):
    return "\n".join(steps)


# ---------------------------------------------------------------- synthetic chains


def test_chains_are_seeded_and_labelled_from_the_first_error_on():
    problems = chain_problems(60, seed=3, num_candidates=4)
    assert problems == chain_problems(60, seed=3, num_candidates=4)
    assert problems != chain_problems(60, seed=4, num_candidates=4)
    for problem in problems:
        kinds = {c["correct"] for c in problem["candidates"]}
        assert kinds == {True, False}  # every problem has a correct and a corrupted candidate
        for c in problem["candidates"]:
            holds = [equation_holds(step) for step in c["steps"]]
            first_error = holds.index(False) if False in holds else None
            assert c["correct"] == (first_error is None) == (c["final"] == problem["answer"])
            expected = [1] * len(c["steps"]) if first_error is None else \
                [int(i < first_error) for i in range(len(c["steps"]))]
            assert c["labels"] == expected
            assert holds.count(False) <= 1  # later steps carry the wrong value on, with right arithmetic
            for before, after in zip(c["steps"], c["steps"][1:]):
                assert after.split(" ")[0] == before.split(" = ")[1]  # each step continues from the last result
    rows = trace_rows(problems[:2])
    assert len(rows) == 8 and set(rows[0]) == {"id", "question", "answer", "steps", "labels"}
    with pytest.raises(ValueError, match="offsets"):
        chain_problems(1, offsets=(0, 1))


# ---------------------------------------------------------------- steps


def test_split_steps_in_each_layout():
    steps_format = "<begin_steps><STEP 1> 2 + 3 = 5 @@@@ 2 + 3 = 5 @@@@ </STEP>\n<STEP 2>  times 4\n is 20 </STEP>\n" \
                   "</end_steps> #### 20"
    found = split_steps(steps_format)
    assert [s.text for s in found] == ["2 + 3 = 5 @@@@ 2 + 3 = 5 @@@@", "times 4 is 20"]
    assert [steps_format[:s.end][-7:] for s in found] == ["</STEP>", "</STEP>"]
    gsm8k = "Janet sells 16 - 3 - 4 = <<16-3-4=9>>9 eggs.\n\nShe makes 9 * 2 = $<<9*2=18>>18.\n#### 18"
    found = split_steps(gsm8k)
    assert [s.text for s in found] == ["Janet sells 16 - 3 - 4 = 9 eggs. @@@@ 16-3-4 = 9 @@@@",
                                       "She makes 9 * 2 = $18. @@@@ 9*2 = 18 @@@@"]
    assert gsm8k[:found[1].end].endswith("$<<9*2=18>>18.")
    assert step_texts("<think>\nAdd them: 5.\n</think>\n<answer>\n5\n</answer>") == ["Add them: 5.", "5"]
    assert step_texts("") == [] and step_texts("\n  \n```python\n```") == []


# ---------------------------------------------------------------- labels from verified solutions


def test_verified_labels_rule():
    steps = ["2 + 3 = 5", "We add 4: @@@@ 5 + 4 = 10 @@@@", "so 10 * 2 = 20 @@@@ 10 * 2 = 20 @@@@"]
    assert step_equations(steps[0]) == ["2 + 3 = 5"] and step_equations("She has 5 apples.") == []
    assert first_failing_step(steps) == 1
    assert verified_labels(steps, correct=True) == [1, 1, 1]
    assert verified_labels(steps, correct=False) == [1, 0, 0]  # the first failing equation and all after it
    assert verified_labels(["She has 5.", "2 + 3 = 5", "So 7."], correct=False) == [1, 1, 0]  # none fails: last
    with pytest.raises(ValueError, match="at least one step"):
        verified_labels([], correct=False)


def test_verified_rule_recovers_the_synthetic_labels():
    """On chains the rule (graded by the final answer) gives exactly the labels the generator wrote."""
    for problem in chain_problems(40, seed=5):
        for c in problem["candidates"]:
            assert verified_labels(c["steps"], c["final"] == problem["answer"]) == c["labels"]


def test_label_solutions_grades_with_the_verifier():
    questions = ["What is 2 + 3, then times 4?"] * 3
    solutions = ["2 + 3 = 5\n5 * 4 = 20\nSo \\boxed{20}.", "2 + 3 = 6\n6 * 4 = 24\nSo \\boxed{24}.",
                 "\\boxed{}"]
    golds = ["20", "20", "20"]
    with Verifier(workers=1) as verifier:
        rows = label_solutions(questions, solutions, golds, verifier, style="boxed")
    assert rows[0] == {"question": questions[0], "steps": ["2 + 3 = 5", "5 * 4 = 20", "So \\boxed{20}."],
                       "labels": [1, 1, 1], "answer": "20"}
    assert rows[1]["labels"] == [0, 0, 0]  # wrong answer; the first step's equation fails
    assert rows[2]["labels"] == [0]  # no answer found: wrong; nothing fails, so the last (only) step is bad
    with pytest.raises(ValueError, match="pair up"):
        label_solutions(questions, solutions[:2], golds, None)


# ---------------------------------------------------------------- labels from Monte-Carlo rollouts


@pytest.mark.slow
def test_monte_carlo_labels_follow_the_rollouts(tmp_path):
    """A scripted policy answers \\boxed{18} or \\boxed{28} by a coin flip after any step; a step is good when
    at least one of its rollouts reaches the gold answer, and the soft label is the share that do."""
    from test_evaluation import scripted_model

    tokenizer = train_tokenizer(["First add. Then check. Finally round."] * 10, vocab_size=300)
    scripted_model(tokenizer, tokenizer.convert_tokens_to_ids(".")).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    from jaxmath.checkpoint import from_pretrained

    policy = from_pretrained(tmp_path)
    assert isinstance(policy, CausalLM)
    solutions = [{"question": "How many pens?", "solution": "First add.\nThen check.", "answer": "18"},
                 {"question": "How many boxes?", "solution": "First add.\n\nThen check.\nFinally round.",
                  "answer": "28"},
                 {"question": "Nothing?", "solution": "```python\n```", "answer": "1"}]
    sampling = Sampling(max_new_tokens=16, temperature=1.0, seed=13)
    eos = [tokenizer.convert_tokens_to_ids("<|im_end|>")]
    with Verifier(workers=1) as verifier:
        rows = monte_carlo_labels(policy, tokenizer, FMT, solutions, verifier, rollouts=3, sampling=sampling,
                                  eos_ids=eos, batch_size=8)
    # The same rollouts, drawn again (same prompts, seeds and batches), judged by hand.
    prefixes = [(s, s["solution"][:step.end]) for s in solutions for step in split_steps(s["solution"])]
    drawn = sample_completions(policy, tokenizer, [render_prompt(FMT, s["question"], tokenizer) + p
                                                   for s, p in prefixes], 3, sampling, eos, 8)
    hits = [[text == f"\\boxed{{{s['answer']}}}" for text, _ in per] for (s, _), per in zip(prefixes, drawn)]
    assert all(text in ("\\boxed{18}", "\\boxed{28}") for per in drawn for text, _ in per)
    assert rows[2] is None
    assert rows[0]["steps"] == ["First add.", "Then check."] and rows[1]["answer"] == "28"
    assert rows[0]["labels"] + rows[1]["labels"] == [int(any(h)) for h in hits]
    assert rows[0]["soft_labels"] + rows[1]["soft_labels"] == pytest.approx([sum(h) / 3 for h in hits])
    soft = rows[0]["soft_labels"] + rows[1]["soft_labels"]
    assert 0.0 in soft and len(set(soft)) > 1  # the coin flips went both ways (fixed seed)


# ---------------------------------------------------------------- scorer


@pytest.fixture(scope="module")
def tokenizer():
    rows = trace_rows(chain_problems(200, seed=0, **DETECTABLE))
    plain = train_tokenizer(["x"], vocab_size=300)
    return train_tokenizer([render_prompt(FMT, r["question"], plain) + STEP_SEPARATOR.join(r["steps"]) for r in rows],
                           vocab_size=400)


def prm_config(tokenizer) -> ModelConfig:
    return ModelConfig.from_hf(PRM_HF_CONFIG | {"vocab_size": len(tokenizer)}, num_labels=2)


@pytest.mark.slow
def test_scorer_reads_the_trained_positions_like_a_direct_forward(tokenizer):
    model = build_model(prm_config(tokenizer), seed=1)
    traces = [("Start with 9. Subtract 2, then add 1. What is the result?", ["9 - 2 = 7", "7 + 1 = 8"]),
              ("Empty?", []),
              ("Start with 1. Add 1, then add 1, then add 1. What is the result?",
               ["1 + 1 = 2", "2 + 1 = 3", "3 + 1 = 4"])]
    scores = PRMScorer(model, tokenizer, FMT, batch_size=3).score(traces)  # 2 traces and a filler row
    assert [len(s) for s in scores] == [2, 0, 3]
    forward = nnx.jit(lambda m, ids: m(ids))
    for (question, steps), got in zip(traces, scores):
        if steps:
            ids, ends = encode_prm_trace(question, steps, tokenizer, FMT)
            logits = np.asarray(forward(model, ids[None]), np.float64)[0, ends]
            expected = np.exp(logits[:, 1]) / np.exp(logits).sum(-1)
            np.testing.assert_allclose(got, expected, rtol=1e-5)
    assert PRMScorer.aggregate(scores, "product")[0] == pytest.approx(float(np.prod(scores[0])), rel=1e-6)
    assert PRMScorer.aggregate(scores, "last")[2] == pytest.approx(float(scores[2][-1]))
    assert PRMScorer.aggregate(scores, "min")[1] is None
    with pytest.raises(ValueError, match="TokenClassifier with 2 labels"):
        PRMScorer(build_model(ModelConfig.from_hf(PRM_HF_CONFIG | {"vocab_size": 300})), tokenizer)


# ---------------------------------------------------------------- a trained PRM


def prm_batch(batch):
    """prm_pipeline's step arrays -> the [B, T] `labels` prm_loss reads (IGNORE_LABEL off the step ends)."""
    labels = np.full(batch["input_ids"].shape, IGNORE_LABEL, np.int32)
    rows, steps = np.nonzero(batch["step_mask"])
    labels[rows, batch["step_positions"][rows, steps]] = batch["step_labels"][rows, steps]
    return {"input_ids": batch["input_ids"], "attention_mask": (batch["segment_ids"] > 0).astype(np.int32),
            "labels": labels}


@pytest.fixture(scope="module")
def trained(tokenizer, tmp_path_factory):
    """A tiny PRM trained for 60 steps on chains (seed 0), its scorer, and its saved model directory."""
    steps = 60
    rows = trace_rows(chain_problems(300, seed=0, **DETECTABLE))
    pipeline = prm_pipeline(rows, tokenizer, FMT, seq_len=112, max_steps=4, batch_size=32,
                            options=PipelineOptions(num_epochs=None, seed=0))
    batches = (prm_batch(b) for b in pipeline)
    first = next(batches)
    model = build_model(prm_config(tokenizer), seed=0)
    optimizer, _ = make_optimizer(OptimizerConfig(lr=3e-3, warmup_steps=10, clip_norm=1.0, weight_decay=0.0,
                                                  schedule="cosine"), steps)
    state, step = setup_training(model, make_loss("prm"), optimizer, make_mesh((1, 1, 1), jax.devices()[:1]), first)
    losses = []
    for batch in [first, *(next(batches) for _ in range(steps - 1))]:
        state, metrics = step(state, batch)
        losses.append(float(metrics["loss"]))
    params = jax.device_get(state.params)
    graphdef, graph_state = nnx.split(model)
    nnx.replace_by_pure_dict(graph_state, params)
    model = nnx.merge(graphdef, graph_state)
    files = tmp_path_factory.mktemp("prm-tokenizer")
    tokenizer.save_pretrained(files)
    path = save_jaxmath(tmp_path_factory.mktemp("prm") / "model", params, model.config,
                        PRM_HF_CONFIG | {"vocab_size": len(tokenizer)}, sorted(files.glob("*")))
    return {"scorer": PRMScorer(model, tokenizer, FMT), "path": path, "losses": losses}


@pytest.fixture(scope="module")
def held_out():
    return chain_problems(60, seed=1, **DETECTABLE)


@pytest.mark.slow
def test_trained_prm_separates_good_from_bad_steps(trained, held_out):
    losses = trained["losses"]
    assert np.mean(losses[-10:]) < 0.5 * np.mean(losses[:10])
    candidates = [c for p in held_out for c in p["candidates"]]
    scores = trained["scorer"].score([(p["question"], c["steps"]) for p in held_out for c in p["candidates"]])
    labels = [label for c in candidates for label in c["labels"]]
    assert roc_auc(np.concatenate(scores), labels) >= 0.9


@pytest.mark.slow
def test_best_of_n_with_the_trained_prm_beats_a_random_pick(trained, held_out):
    scorer = trained["scorer"]
    best, random_pick = [], []
    for problem in held_out:
        candidates = problem["candidates"]
        scores = scorer.score([(problem["question"], c["steps"]) for c in candidates])
        best.append(candidates[best_of_n(scores, "min")]["correct"])
        random_pick.append(np.mean([c["correct"] for c in candidates]))  # the expected accuracy of a random pick
    assert np.mean(best) > np.mean(random_pick)
    assert np.mean(best) >= 0.9


@pytest.mark.slow
def test_saved_prm_loads_and_scores_the_same(trained, held_out):
    loaded = PRMScorer.from_pretrained(trained["path"], FMT, dtype="float32", progress=False)
    traces = [(p["question"], c["steps"]) for p in held_out[:3] for c in p["candidates"]]
    for a, b in zip(loaded.score(traces), trained["scorer"].score(traces)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- filtering and the GRPO bonus


def filter_rows(held_out):
    """Correct and wrong candidates as samples.jsonl rows, a right answer reached through wrong steps, a row to
    grade against its gold answer, and one without steps."""
    rows = []
    for problem in held_out[:6]:
        for c in problem["candidates"][:2]:
            rows.append({"question": problem["question"], "completion": solution_text(c["steps"]),
                         "verdict": "correct" if c["correct"] else "wrong", "good": all(c["labels"])})
    p = held_out[0]
    first = p["candidates"][0]["steps"][0].split(" = ")
    lucky = [f"{first[0]} = {int(first[1]) + 20}", f"{int(first[1]) + 20} - 20 = {first[1]}"]
    rows.append({"question": p["question"], "completion": solution_text(lucky), "correct": True, "good": False})
    rows.append({"question": p["question"], "completion": "It is \\boxed{-1}.", "gold": p["answer"], "good": False})
    rows.append({"question": p["question"], "completion": "<answer>\n</answer>", "verdict": "correct", "good": False})
    return rows


@pytest.mark.slow
def test_prm_filter_keeps_correct_solutions_the_prm_rates_highly(trained, held_out):
    rows = filter_rows(held_out)
    with Verifier(workers=1) as verifier:
        result = prm_filter(rows, trained["scorer"], threshold=0.6, verifier=verifier)
    good = [r for r in rows if r["good"] and r.get("verdict") == "correct"]
    assert [r["completion"] for r in result.kept] == [r["completion"] for r in good]
    assert all(r["prm_score"] > 0.6 for r in result.kept)
    wrong = sum(r.get("verdict") == "wrong" for r in rows) + 1  # + the graded \boxed{-1}
    assert result.dropped == {"wrong answer": wrong, "PRM score <= 0.6": 1, "no steps": 1}
    assert result.summary().startswith(f"kept {len(good)} of {len(rows)} solutions")
    with pytest.raises(ValueError, match="row 0: .*question"):
        prm_filter([{"completion": "1 + 1 = 2", "verdict": "correct"}], trained["scorer"])
    with pytest.raises(ValueError, match="row 0: no 'verdict'"):
        prm_filter([{"question": "q", "completion": "1 + 1 = 2"}], trained["scorer"])


@pytest.mark.slow
def test_prm_step_bonus_is_a_reward_function(trained, held_out):
    p = held_out[0]
    good = next(c for c in p["candidates"] if c["correct"])
    bad = next(c for c in p["candidates"] if not c["correct"])
    reward = prm_step_bonus(trained["scorer"], how="min")
    completions = [solution_text(good["steps"]), solution_text(bad["steps"]), "```python\n```"]
    examples = [{"question": p["question"], "answer": p["answer"]}] * 3
    scores = reward(completions, examples)
    assert scores.dtype == np.float32 and scores.shape == (3,)
    expected = trained["scorer"].score([(p["question"], good["steps"]), (p["question"], bad["steps"])])
    assert scores[:2] == pytest.approx([min(s) for s in expected], rel=1e-6)
    assert scores[0] > 0.6 > scores[1] and scores[2] == 0.0
    with pytest.raises(ValueError, match="example 0 has no 'question'"):
        reward(["1 + 1 = 2"], [{"answer": "2"}])
    with pytest.raises(ValueError, match="unknown step aggregation"):
        prm_step_bonus(trained["scorer"], how="mean")


@pytest.mark.slow
def test_prm_steps_is_a_registered_reward_grpo_configs_can_weight(trained, held_out):
    from jaxmath.rewards import combine_rewards

    p = held_out[0]
    completions = [solution_text(c["steps"]) for c in p["candidates"][:3]]
    examples = [{"question": p["question"], "answer": p["answer"]}] * 3
    total, per_function = combine_rewards(completions, examples, {"prm_steps": 0.5},
                                          params={"prm_steps": {"model": str(trained["path"]), "how": "min"}})
    direct = prm_step_bonus(PRMScorer.from_pretrained(trained["path"], FMT, progress=False), "min")
    np.testing.assert_allclose(per_function["prm_steps"], direct(completions, examples), rtol=1e-5)
    np.testing.assert_allclose(total, 0.5 * per_function["prm_steps"], rtol=1e-6)
    with pytest.raises(ValueError, match="prm_steps needs its PRM directory"):
        combine_rewards(completions, examples, {"prm_steps": 1.0})


@pytest.mark.slow
def test_prm_filter_command(trained, held_out, tmp_path, capsys):
    rows = filter_rows(held_out)
    source = tmp_path / "samples.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "kept.jsonl"
    assert data_cli.main(["prm-filter", "--in", str(source), "--prm", str(trained["path"]), "--out", str(out),
                          "--verifier-workers", "1"]) == 0
    printed = capsys.readouterr().out
    kept = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["completion"] for r in kept] == [r["completion"] for r in rows if r["good"]]
    assert f"kept {len(kept)} of {len(rows)} solutions" in printed and "PRM score <= 0.6: 1" in printed
    source.write_text('{"question": "q"\n')
    assert data_cli.main(["prm-filter", "--in", str(source), "--prm", str(trained["path"]), "--out", str(out)]) == 1
    assert f"{source}:1" in capsys.readouterr().err


def test_prm_filter_help(capsys):
    with pytest.raises(SystemExit) as exit_info:
        data_cli.main(["prm-filter", "--help"])
    assert exit_info.value.code == 0
    assert "--threshold" in capsys.readouterr().out
    assert PRM_AGGREGATIONS == tuple(STEP_AGGREGATIONS)


# ---------------------------------------------------------------- evaluation --select prm


@pytest.mark.slow
def test_evaluate_selects_with_a_prm_end_to_end(trained, tmp_path, capsys):
    """The scripted policy answers 18 or 28 by coin flip; the PRM scores every sample and prm@4 grades the
    top-scored one of each problem."""
    from test_evaluation import FIXTURES, scripted_model

    tokenizer = train_tokenizer(["Tom has 9 boxes with 2 pens in each box. How many pens?"] * 10, vocab_size=300)
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False,
                                           add_generation_prompt=True)
    policy_dir = tmp_path / "policy"
    scripted_model(tokenizer, tokenizer.encode(prompt)[-1]).save_pretrained(policy_dir)
    tokenizer.save_pretrained(policy_dir)
    out = tmp_path / "results"
    args = ["--model", str(policy_dir), "--benchmarks", "gsm8k", "--data-dir", str(FIXTURES), "--num-samples", "4",
            "--temperature", "1.0", "--max-new-tokens", "16", "--batch-size", "8", "--verifier-workers", "1",
            "--seed", "3", "--out", str(out)]
    assert evaluate_main(args + ["--select", "prm", "--prm", str(trained["path"]), "--prm-aggregation", "last"]) == 0
    printed = capsys.readouterr().out
    rows = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    summary = json.loads((out / "summary.json").read_text())["gsm8k"]
    by_problem = {}
    for row in rows:
        assert row["prm_score"] == pytest.approx(row["prm_step_scores"][-1], abs=1e-6) and row["question"]
        by_problem.setdefault(row["id"], []).append(row)
    picked = [max(samples, key=lambda r: (r["prm_score"], -r["sample"])) for samples in by_problem.values()]
    assert summary["prm@4"] == pytest.approx(np.mean([r["verdict"] == "correct" for r in picked]), abs=1e-6)
    assert list(summary) == ["pass@1", "maj@4", "prm@4", "pass@2", "pass@4", "n"]
    assert "prm@4" in printed
    with pytest.raises(SystemExit):
        evaluate_main(args + ["--select", "prm"])
    assert "--select prm and --prm PATH go together" in capsys.readouterr().err
