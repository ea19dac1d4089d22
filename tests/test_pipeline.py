"""The multi-stage pipeline: the tiny CPU config runs every stage kind of the math-1.5b recipe (data build ->
teacher synthesis -> SFT -> GRPO -> PRM labels -> PRM -> self-evolution -> revision -> DPO pairs -> DPO ->
length-aware GRPO) against a loopback teacher, each stage reading what the earlier ones wrote; a rerun skips
finished stages (and rounds), --from-stage reruns from there; --dry-run compiles every training stage; bad
configs name the stage."""
from __future__ import annotations

import contextlib
import dataclasses
import io
import json
from pathlib import Path

import loopback_teacher
import pytest
import transformers

from jaxmath.config import ConfigError, from_dict, load_config
from jaxmath.pipeline import DONE, PipelineConfig, dry_run_pipeline, format_dry_run, run_pipeline
from jaxmath.train.config import TrainConfig
from jaxmath.verify.answers import extract_program

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def teacher(monkeypatch):
    """The loopback teacher, found by the tiny config through the environment."""
    server = loopback_teacher.serve(0)
    monkeypatch.setenv("JAXMATH_TEACHER_BASE_URL", loopback_teacher.url(server))
    monkeypatch.setenv("JAXMATH_TEACHER_MODEL", "loopback")
    yield server
    server.shutdown()
    server.server_close()


def program_value(program: str) -> float:
    """What a loopback-teacher program (trusted, plain arithmetic) computes, run directly here."""
    scope: dict = {}
    with contextlib.redirect_stdout(io.StringIO()):
        exec(program, scope)  # noqa: S102 -- our own teacher's arithmetic, not model output
    return float(scope["answer"])


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


STAGES = ["data", "heldout", "teacher", "sft", "grpo", "prm_label", "prm", "evolve", "revise", "pairs", "dpo",
          "length_rl"]


@pytest.mark.slow
def test_tiny_pipeline_runs_every_stage_kind_and_hands_off(tmp_path, monkeypatch, teacher):
    """The tiny recipe end to end: each stage's artifacts, what the next stage read, the report, and resuming by
    stage and by self-evolution round."""
    monkeypatch.chdir(ROOT)  # the configs name their files relative to the repository
    config = load_config(PipelineConfig, "configs/pipeline/tiny-cpu.yaml")
    kinds = {s.name: "command" if s.command else "evolve" if s.rounds else "train" for s in config.stages}
    math = load_config(PipelineConfig, "configs/pipeline/math-1.5b.yaml")
    assert {s.name: "command" if s.command else "evolve" if s.rounds else "train" for s in math.stages} == kinds
    assert [s.command[:2] for s in config.stages if s.command] == [s.command[:2] for s in math.stages if s.command]
    summaries = run_pipeline(config, tmp_path)
    assert list(summaries) == STAGES
    out = tmp_path
    config_of = {name: (out / name / "config.yaml").read_text() for name in ("sft", "grpo", "prm", "dpo", "length_rl")}

    train, heldout = rows(out / "data" / "train.jsonl"), rows(out / "heldout" / "heldout.jsonl")
    assert len(train) == 64 and len(heldout) == 8
    # teacher: of 3 samples per question the loopback writes one wrong (off by one); only verified ones are kept
    pot = rows(out / "teacher" / "pot.jsonl")
    assert len(pot) == 2 * len(train)
    assert all(program_value(r["metadata"]["program"]) == pytest.approx(float(r["answer"])) for r in pot)
    # sft trained on the teacher's programs in pot; grpo started from it with the recipe's settings
    assert str(out / "teacher" / "pot.jsonl") in config_of["sft"] and "format: pot" in config_of["sft"]
    grpo = load_config(TrainConfig, out / "grpo" / "config.yaml")
    assert grpo.model.path == str(out / "sft" / "final_model") and grpo.data.format == "pot"
    assert (grpo.optimizer.lr, grpo.grpo.loss.beta, grpo.grpo.group_size) == (1e-6, 0.02, 4)
    assert grpo.grpo.rewards == {"program_execution": 1.0, "brevity": 1.0}
    assert grpo.grpo.reward_params["brevity"] == {"per_token": -0.0002}
    # prm-label: rollout traces of the GRPO policy's own samples, and the teacher's verified solutions (all good)
    traces = rows(out / "prm_label" / "traces.jsonl")
    verified = [t for t in traces if t["source"] == "verified"]
    assert len(verified) == len(pot) and all(set(t["labels"]) == {1} for t in verified)
    rollouts = [t for t in traces if t["source"] == "rollouts"]
    assert 1 <= len(rollouts) <= 4 * 2 and all(len(t["labels"]) == len(t["steps"]) == len(t["soft_labels"])
                                               for t in rollouts)
    assert all(label == int(soft > 0) for t in rollouts for label, soft in zip(t["labels"], t["soft_labels"]))
    # prm: a token classifier trained on those traces, its held-out AUC reported
    assert str(out / "prm_label" / "traces.jsonl") in config_of["prm"]
    prm = transformers.AutoModelForTokenClassification.from_pretrained(out / "prm" / "hf")
    assert prm.num_labels == 2 and 0.0 <= summaries["prm"]["eval_step_auc"] <= 1.0
    # evolve: two rounds from the GRPO model; the counts agree with the rows each round wrote
    for r in (1, 2):
        round_dir = out / "evolve" / f"round_{r}"
        done = json.loads((round_dir / "round.json").read_text())
        samples = rows(round_dir / "samples.jsonl")
        assert len(samples) == 8 and all(len(s["completions"]) == 4 for s in samples)
        everything = done["acceptance"]["all"]
        assert everything["sampled"] == 32 and everything["correct"] == sum(sum(s["correct"]) for s in samples)
        assert everything["above_threshold"] == sum(score is not None and score > 0.5 for s in samples
                                                    for score in s["prm_scores"])
        assert everything["kept"] == len(rows(round_dir / "kept.jsonl")) == done["mix"]["new"]
        assert sum(v["sampled"] for k, v in done["acceptance"].items() if k != "all") == 32
        assert done["heldout"]["n"] == 8
    assert (out / "evolve" / "final_model").resolve() == Path(done["model"]).resolve()
    assert len(rows(out / "evolve" / "samples.jsonl")) == 16
    # revise: each failed (off-by-one) attempt was repaired; DPO pairs a verified revision over it
    revision_pairs = rows(out / "revise" / "dpo.jsonl")
    assert revision_pairs and all(
        program_value(extract_program(p["chosen"])) == pytest.approx(program_value(extract_program(p["rejected"])) - 1)
        for p in revision_pairs)
    # pairs read the evolved model's samples; dpo trained on them and on the revision pairs, from the evolved model
    assert summaries["pairs"]["command"][3] == str(out / "evolve" / "samples.jsonl")
    dpo = load_config(TrainConfig, out / "dpo" / "config.yaml")
    assert dpo.data.train == [str(out / "pairs" / "pairs.jsonl"), str(out / "revise" / "dpo.jsonl")]
    assert dpo.model.path == str(out / "evolve" / "final_model") and dpo.data.format == "pot"
    assert 0.0 <= summaries["dpo"]["eval_reward_accuracy"] <= 1.0
    # length_rl: the stronger brevity penalty and the PRM's step bonus in the same format
    length_rl = load_config(TrainConfig, out / "length_rl" / "config.yaml")
    assert length_rl.grpo.reward_params["brevity"] == {"per_token": -0.0005}
    assert length_rl.grpo.reward_params["prm_steps"] == {"model": str(out / "prm" / "final_model"), "format": "pot"}
    assert length_rl.model.path == str(out / "dpo" / "final_model")
    # every stage recorded its format; the report has every stage and the accuracy/length curve
    assert {n: summaries[n]["format"] for n in STAGES} == {n: None if n in ("data", "heldout") else "pot"
                                                          for n in STAGES}
    report = json.loads((out / "report.json").read_text())
    assert [row["stage"] for row in report["stages"]] == STAGES
    assert [p["model"] for p in report["curve"]] == ["sft", "grpo", "evolve r1", "evolve r2", "dpo", "length_rl"]
    assert report["stages"][2]["data"] == {"pot.jsonl": len(pot)}
    assert all(0.0 <= p["heldout_accuracy"] <= 1.0 and p["mean_length"] >= 0 for p in report["curve"])
    assert "| evolve | self-evolution | pot |" in (out / "report.md").read_text()
    assert (out / "report.svg").read_text().lstrip().startswith("<?xml") and "<svg" in (out / "report.svg").read_text()

    stamps = {n: (out / n / DONE).stat().st_mtime_ns for n in STAGES}
    run_pipeline(config, out)  # everything done: nothing reruns
    assert {n: (out / n / DONE).stat().st_mtime_ns for n in STAGES} == stamps
    # an interrupted self-evolution stage resumes at its first unfinished round
    first_round = (out / "evolve" / "round_1" / "round.json").stat().st_mtime_ns
    (out / "evolve" / DONE).unlink()
    (out / "evolve" / "round_2" / "round.json").unlink()
    run_pipeline(config, out)
    assert (out / "evolve" / "round_1" / "round.json").stat().st_mtime_ns == first_round
    assert (out / "evolve" / "round_2" / "round.json").is_file()
    run_pipeline(config, out, from_stage="length_rl")
    after = {n: (out / n / DONE).stat().st_mtime_ns for n in STAGES}
    assert all(after[n] == stamps[n] for n in STAGES if n not in ("evolve", "length_rl"))
    assert after["length_rl"] > stamps["length_rl"]


@pytest.mark.slow
def test_dry_run_compiles_each_training_stage_from_the_first_stage_model(tmp_path, monkeypatch, capsys):
    """--dry-run, before anything ran: every training stage compiles its step (an init_from stage on the model of
    the first stage of its chain) and a line per stage names its memory per device; nothing is written."""
    monkeypatch.chdir(ROOT)
    tiny = load_config(PipelineConfig, "configs/pipeline/tiny-cpu.yaml")
    stages = [dataclasses.replace(s, set=[*(x for x in s.set if "prm_label" not in x), "model.remat=none"],
                                  init_from=s.init_from and "sft")
              if s.config else s for s in tiny.stages if s.name in ("data", "teacher", "sft", "prm")]
    config = dataclasses.replace(tiny, stages=stages, heldout=None)
    reports = dry_run_pipeline(config, tmp_path / "out")
    assert list(reports) == ["sft", "prm"] and not (tmp_path / "out").exists()
    assert reports["prm"]["objective"] == "prm" and reports["sft"]["remat"] == "none"
    for report in reports.values():
        assert 0 < report["argument_gib_per_device"] <= report["peak_gib_per_device"]
        # 64-wide, 2 layers, a 384-token vocabulary (the tokenizer the config fits), tied embeddings
        assert report["params_gib_total"] * 2**30 >= 4 * (384 * 64 + 2 * 4 * 64 * 64)
    table = format_dry_run(reports, 1.0).splitlines()
    assert table[1].split()[:3] == ["sft", "sft", "none"] and table[2].endswith("yes")


def test_pipeline_config_errors_name_the_stage(tmp_path):
    with pytest.raises(ConfigError, match="init_from 'sft' is not an earlier stage"):
        from_dict(PipelineConfig, {"stages": [{"name": "grpo", "config": "x.yaml", "init_from": "sft"}]})
    with pytest.raises(ConfigError, match="stage 'a': set exactly one of config"):
        from_dict(PipelineConfig, {"stages": [{"name": "a", "config": "x.yaml", "command": ["eval"]}]})
    with pytest.raises(ConfigError, match="unique identifiers"):
        from_dict(PipelineConfig, {"stages": [{"name": "a", "command": ["eval"]}, {"name": "a", "command": ["eval"]}]})
    config = from_dict(PipelineConfig, {"stages": [{"name": "sft", "config": str(tmp_path / "missing.yaml")}]})
    with pytest.raises(ConfigError, match="stage sft: config file .*missing.yaml does not exist"):
        run_pipeline(config, tmp_path / "out")
    with pytest.raises(ConfigError, match="--from-stage 'dpo' is not a stage"):
        run_pipeline(config, tmp_path / "out", from_stage="dpo")


def test_command_stages_run_commands_from_the_registry(tmp_path, capsys):
    stage = {"name": "data", "command": ["data", "build", "--include-synthetic", "--generators",
                                         "arithmetic__add_small", "--synthetic-samples", "5", "--quiet",
                                         "--output", "{stage}/train.jsonl"]}
    summaries = run_pipeline(from_dict(PipelineConfig, {"stages": [stage]}), tmp_path)
    rows = [json.loads(line) for line in (tmp_path / "data" / "train.jsonl").read_text().splitlines()]
    assert len(rows) == 5 and all(row["answer"] for row in rows)
    assert summaries["data"]["command"][-1] == str(tmp_path / "data" / "train.jsonl")
    failing = {"name": "pairs", "command": ["data", "pairs", "--input", "{out}/none.jsonl", "--output", "x.jsonl"]}
    with pytest.raises(RuntimeError, match="stage pairs: `jaxmath data pairs --input .*none.jsonl .*` exited with 1"):
        run_pipeline(from_dict(PipelineConfig, {"stages": [failing]}), tmp_path)
    with pytest.raises(ConfigError, match=r"stage 'p': command \['pipeline'\] is not one a stage can run; stage "
                                          r"commands: convert, data, eval"):
        from_dict(PipelineConfig, {"stages": [{"name": "p", "command": ["pipeline", "--config", "p.yaml"]}]})
