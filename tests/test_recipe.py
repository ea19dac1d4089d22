"""The recipe's pieces without models: format hand-offs between stages, self-evolution's selection, mixing,
per-round files and round-granular resume, the report, `jaxmath data prm-label`'s errors, and verified labels of
program-of-thought solutions."""
import json
from pathlib import Path

import pytest

from jaxmath.commands.data import main as data_main
from jaxmath.config import from_dict
from jaxmath.data.readers import read_records, write_records
from jaxmath.data.schema import Record
from jaxmath.pipeline import PipelineConfig, check_pipeline, command_format
from jaxmath.prm.labels import label_solutions
from jaxmath.recipe import evolve
from jaxmath.recipe.evolve import EvolveSection, mix, run_evolution, select
from jaxmath.recipe.handoffs import HandoffError, StageIO, Use, check_handoffs
from jaxmath.recipe.report import write_report
from jaxmath.verify import Verifier

ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------- hand-offs


def test_a_format_mismatch_names_both_stages():
    stages = [StageIO("samples", "boxed"), StageIO("pairs", None, (Use("samples", None, "input"),), inherits=True),
              StageIO("dpo", "pot", (Use("pairs", "pot", "data"),))]
    with pytest.raises(HandoffError, match="stage dpo reads stage pairs's output .* in format 'pot', but stage "
                                           "pairs writes format 'boxed'"):
        check_handoffs(stages)
    assert check_handoffs(stages[:2] + [StageIO("dpo", "boxed", (Use("pairs", "boxed", "data"),))])["pairs"] == "boxed"
    # what a finished stage recorded counts over the config (the config changed since it ran)
    with pytest.raises(HandoffError, match="stage pairs writes format 'steps'"):
        check_handoffs(stages[:2] + [StageIO("dpo", "boxed", (Use("pairs", "boxed", "data"),))], {"samples": "steps"})
    with pytest.raises(HandoffError, match="reads outputs in different formats: stage a \\(pot\\), stage b \\(boxed\\)"):
        check_handoffs([StageIO("a", "pot"), StageIO("b", "boxed"),
                        StageIO("c", None, (Use("a", None, ""), Use("b", None, "")), inherits=True)])


def test_every_output_is_read_or_final():
    with pytest.raises(HandoffError, match="stage\\(s\\) a is read by no later stage"):
        check_handoffs([StageIO("a", "pot"), StageIO("b", "pot")])
    check_handoffs([StageIO("a", "pot", final=True), StageIO("b", "pot")])
    check_handoffs([StageIO("a", "pot"), StageIO("b", "pot")], also_read=["a"])


def test_the_pipeline_finds_formats_from_configs_and_command_arguments(tmp_path):
    """math-1.5b with its DPO stage back on the boxed format (the bug the recipe had) fails before anything runs;
    command formats come from --format or the command's default."""
    assert command_format(["data", "synthesize", "--input", "x"]) == "pot"
    assert command_format(["data", "prm-label", "--format=steps"]) == "steps"
    assert command_format(["eval", "--format", "think_answer"]) == "think_answer"
    assert command_format(["data", "build"]) is None
    data = json.loads(json.dumps(__import__("yaml").safe_load((ROOT / "configs/pipeline/math-1.5b.yaml").read_text())))
    for stage in data["stages"]:
        stage["config"] = str(ROOT / stage["config"]) if "config" in stage else None
        if stage["name"] == "dpo":
            stage["set"] = [item for item in stage["set"] if item != "data.format=pot"]
    with pytest.raises(HandoffError, match="stage dpo reads stage pairs's output .* 'boxed', but stage pairs writes "
                                           "format 'pot'"):
        check_pipeline(from_dict(PipelineConfig, data), tmp_path)
    for stage in data["stages"]:
        if stage["name"] == "length_rl":
            stage["set"] = [s.replace("format: pot", "format: boxed") for s in stage["set"]]
        if stage["name"] == "dpo":
            stage["set"].append("data.format=pot")
    with pytest.raises(HandoffError, match="stage length_rl reads stage prm's output \\(reward prm_steps"):
        check_pipeline(from_dict(PipelineConfig, data), tmp_path)


# ---------------------------------------------------------------- self-evolution


def records(n: int, source: str = "gen") -> list[Record]:
    return [Record(id=f"q{i}", question=f"What is {i} + 1?", answer=str(i + 1), source=source,
                   metadata={"generator": source}) for i in range(n)]


def test_select_keeps_correct_above_threshold_best_first_and_never_twice():
    section = EvolveSection(questions=["x"], keep_per_question=1, threshold=0.6)
    rs = records(2)
    candidates = [[("```python\nanswer = 1\n```", 5), ("```python\nanswer = 1  # one\n```", 6),
                   ("```python\nanswer = 2\n```", 5)],
                  [("```python\nanswer = 2\n```", 5), ("wrong", 1), ("```python\nanswer = 3\n```", 5)]]
    correct = [[True, True, False], [True, False, True]]
    scores = [[0.7, 0.9, None], [0.5, None, 0.61]]
    seen: set = set()
    kept, counts = select(rs, candidates, correct, scores, section, seen)
    # q0: both correct pass; the better-scored one is taken (it repeats the other once comments are stripped)
    assert kept == [(rs[0], candidates[0][1][0]), (rs[1], candidates[1][2][0])]
    assert counts["all"].__dict__ == {"sampled": 6, "correct": 4, "above_threshold": 3, "kept": 2}
    again, counts = select(rs, candidates, correct, scores, section, seen)
    assert again == [] and counts["gen"].kept == 0 and counts["gen"].above_threshold == 3  # repeats of kept ones


def test_mix_takes_the_stated_share_of_earlier_rows():
    new, earlier = records(6, "new"), records(40, "old")
    rows = mix(new, earlier, replay=0.25, seed=1)
    assert len(rows) == 8 and sum(r.source == "old" for r in rows) == 2  # 2 of 8 = 0.25
    assert len(mix(new, earlier[:3], replay=0.75, seed=1)) == 9  # wanted 18 earlier rows, 3 exist
    assert mix([], earlier, replay=0.5, seed=1) == []
    with pytest.raises(ValueError, match="replay is the share"):
        EvolveSection(questions=["x"], replay=1.0)
    with pytest.raises(ValueError, match="strategy 'beam' is not one of"):
        EvolveSection(questions=["x"], strategy="beam")


def test_rounds_write_their_files_fine_tune_on_the_mix_and_resume(tmp_path, monkeypatch):
    """Two rounds with a scripted generator: round 1 keeps two solutions and fine-tunes on them plus one earlier
    row, round 2 finds nothing new and carries the model on; a rerun reads both rounds back."""
    questions, earlier = tmp_path / "questions.jsonl", tmp_path / "earlier.jsonl"
    write_records(records(3, "arith"), questions)
    write_records([Record(id="e0", question="old?", answer="0", solution="```python\nanswer = 0\n```",
                          metadata={"program": "answer = 0"})], earlier)
    start = tmp_path / "grpo"
    (start / "final_model").mkdir(parents=True)
    (start / "tokenizer").mkdir()

    def scripted(model_dir, rs, section, fmt, round_):
        candidates = [[(f"```python\nanswer = {r.answer}\n```", 4), ("no", 1)] for r in rs]
        return candidates, [[True, False] for _ in rs], [[0.9 if r.id != "q2" else 0.1, None] for r in rs]

    monkeypatch.setattr(evolve, "generate_and_grade", scripted)
    tuned, scored = [], []

    def finetune(train_file, model_dir, run_dir):
        tuned.append((read_records(train_file), model_dir))
        (run_dir / "final_model").mkdir()
        (run_dir / "tokenizer").mkdir()
        return {"steps": 1}

    def heldout(model_dir):
        scored.append(model_dir)
        return {"accuracy": 0.5, "mean_length": 4.0, "n": 2}

    section = EvolveSection(questions=[str(questions)], earlier=[str(earlier)], prm="unused", replay=1 / 3)
    out = tmp_path / "evolve"
    summary = run_evolution(section, 2, "pot", start, out, finetune, heldout)
    first, second = summary["rounds"]
    assert first["acceptance"]["all"] == {"sampled": 6, "correct": 3, "above_threshold": 2, "kept": 2}
    assert first["acceptance"]["arith"]["kept"] == 2 and first["mix"] == {"new": 2, "earlier": 1}
    kept = read_records(out / "round_1" / "kept.jsonl")
    assert [k.metadata["program"].strip() for k in kept] == ["answer = 1", "answer = 2"]
    assert sorted(r.id for r in tuned[0][0]) == ["e0", *sorted(k.id for k in kept)]
    assert tuned[0][1] == str(start / "final_model") and len(tuned) == 1  # round 2 kept nothing new
    assert second["fine_tuned"] is False and second["model"] == str(out / "round_1" / "final_model")
    assert scored == [str(out / "round_1" / "final_model")] * 2
    assert (out / "final_model").resolve() == (out / "round_1" / "final_model").resolve()
    assert (out / "tokenizer").resolve() == (out / "round_1" / "tokenizer").resolve()
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 6 and samples[0]["correct"] == [True, False]
    assert json.loads((out / "round_2" / "round.json").read_text()) == second

    again = run_evolution(section, 2, "pot", start, out, finetune, heldout)
    assert again == summary and len(tuned) == 1 and len(scored) == 2  # both rounds read back, nothing rerun


# ---------------------------------------------------------------- report


def test_report_tables_curve_and_plot(tmp_path):
    summaries = {
        "data": {"kind": "data build", "seconds": 1.0, "format": None, "data": {"train.jsonl": 64}},
        "sft": {"kind": "sft", "seconds": 10.0, "format": "pot", "data": {},
                "heldout": {"accuracy": 0.25, "mean_length": 40.0, "n": 8}},
        "prm": {"kind": "prm", "seconds": 5.0, "format": "pot", "data": {}, "eval_step_auc": 0.8},
        "evolve": {"kind": "self-evolution", "seconds": 7.5, "format": "pot", "data": {"kept.jsonl": 3},
                   "heldout": {"accuracy": 0.5, "mean_length": 30.0, "n": 8},
                   "rounds": [{"round": 1, "seconds": 3.0, "fine_tuned": True, "mix": {"new": 3, "earlier": 3},
                               "heldout": {"accuracy": 0.375, "mean_length": 35.0, "n": 8},
                               "acceptance": {"all": {"sampled": 32, "correct": 9, "above_threshold": 5, "kept": 3}}},
                              {"round": 2, "seconds": 4.5, "fine_tuned": False, "mix": {"new": 0, "earlier": 0},
                               "heldout": {"accuracy": 0.5, "mean_length": 30.0, "n": 8},
                               "acceptance": {"all": {"sampled": 32, "correct": 0, "above_threshold": 0, "kept": 0}}}]},
        "dpo": {"kind": "dpo", "seconds": 2.0, "format": "pot", "data": {}, "eval_reward_accuracy": 0.75,
                "heldout": {"accuracy": 0.625, "mean_length": 20.0, "n": 8}},
    }
    report = write_report(tmp_path, summaries)
    assert report["total_seconds"] == 25.5
    assert report["curve"] == [{"model": "sft", "heldout_accuracy": 0.25, "mean_length": 40.0},
                               {"model": "evolve r1", "heldout_accuracy": 0.375, "mean_length": 35.0},
                               {"model": "evolve r2", "heldout_accuracy": 0.5, "mean_length": 30.0},
                               {"model": "dpo", "heldout_accuracy": 0.625, "mean_length": 20.0}]
    assert json.loads((tmp_path / "report.json").read_text()) == report
    md = (tmp_path / "report.md").read_text()
    assert "| prm | prm | pot | 5 | - | - | 0.8 | - | - |" in md
    assert "| dpo | dpo | pot | 2 | 62.5% | 20 | - | 75.0% | - |" in md
    assert "| 1 | 32 | 9 | 5 | 3 | 3 + 3 | True | 37.5% | 35 | 3 |" in md
    svg = (tmp_path / "report.svg").read_text()
    assert "<svg" in svg and "evolve r2" in svg and "held-out accuracy" in svg


# ---------------------------------------------------------------- prm-label


def test_prm_label_help_and_bad_arguments(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        data_main(["prm-label", "--help"])
    assert exit_.value.code == 0 and "Monte-Carlo rollouts" in capsys.readouterr().out
    assert data_main(["prm-label", "--policy", str(tmp_path), "--output", str(tmp_path / "t.jsonl"), "--quiet"]) == 1
    assert "nothing to label: give --input" in capsys.readouterr().err
    assert data_main(["prm-label", "--policy", str(tmp_path), "--input", str(tmp_path / "none.jsonl"),
                      "--output", str(tmp_path / "t.jsonl"), "--quiet"]) == 1
    assert "none.jsonl" in capsys.readouterr().err and not (tmp_path / "t.jsonl").exists()


def test_label_solutions_runs_programs_for_the_pot_format():
    solutions = ["Add them.\n```python\nx = 2 + 3\nanswer = x * 4\n```", "```python\nanswer = (2 + 3) * 5\n```",
                 "```python\nanswer = 1 / 0\n```"]
    with Verifier(workers=1) as verifier:
        rows = label_solutions(["q"] * 3, solutions, ["20"] * 3, verifier, style="pot")
    assert rows[0]["steps"] == ["Add them.", "x = 2 + 3", "answer = x * 4"] and rows[0]["labels"] == [1, 1, 1]
    assert rows[1]["labels"] == [0] and rows[2]["labels"] == [0]  # wrong value; a crash has no answer
