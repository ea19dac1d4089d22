"""The multi-stage pipeline: the tiny CPU config runs SFT -> GRPO -> PRM -> DPO -> length-aware GRPO end to
end, each stage starting from the previous stage's model; a rerun skips finished stages, --from-stage reruns
from there; bad configs name the stage."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import transformers

from jaxmath.config import ConfigError, from_dict, load_config
from jaxmath.pipeline import DONE, PipelineConfig, run_pipeline

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_tiny_pipeline_runs_end_to_end_and_resumes_by_stage(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)  # the configs name their files relative to the repository
    config = load_config(PipelineConfig, "configs/pipeline/tiny-cpu.yaml")
    summaries = run_pipeline(config, tmp_path)
    names = ["sft", "grpo", "prm", "dpo", "length_rl"]
    assert list(summaries) == names
    for name in names:
        assert (tmp_path / name / DONE).is_file() and (tmp_path / name / "hf" / "config.json").is_file(), name
    # Each stage started from its predecessor's model and tokenizer.
    resolved = (tmp_path / "dpo" / "config.yaml").read_text()
    assert str(tmp_path / "grpo" / "final_model") in resolved and str(tmp_path / "grpo" / "tokenizer") in resolved
    prm = json.loads((tmp_path / "prm" / "hf" / "config.json").read_text())
    assert prm["architectures"][0].endswith("ForTokenClassification")
    assert transformers.AutoModelForTokenClassification.from_pretrained(tmp_path / "prm" / "hf").num_labels == 2
    assert "brevity" in (tmp_path / "length_rl" / "config.yaml").read_text()
    assert json.loads((tmp_path / "pipeline.json").read_text()).keys() == set(names)

    stamps = {n: (tmp_path / n / DONE).stat().st_mtime_ns for n in names}
    run_pipeline(config, tmp_path)  # everything done: nothing reruns
    assert {n: (tmp_path / n / DONE).stat().st_mtime_ns for n in names} == stamps
    run_pipeline(config, tmp_path, from_stage="length_rl")
    after = {n: (tmp_path / n / DONE).stat().st_mtime_ns for n in names}
    assert all(after[n] == stamps[n] for n in names[:-1]) and after["length_rl"] > stamps["length_rl"]


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
