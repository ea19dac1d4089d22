"""Weights & Biases tracking, run offline (WANDB_MODE=offline, no network): the run's .wandb log is read back with
wandb's own reader (`wandb leet inspect --json`) and compared with metrics.jsonl, config.yaml and the summary;
a missing package or login fails at the start, naming the fix."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from jaxmath.config import load_config
from jaxmath.train.config import TrainConfig
from jaxmath.train.metrics import read_metrics

wandb = pytest.importorskip("wandb")

ROOT = Path(__file__).resolve().parents[1]
SFT = ROOT / "configs" / "sft" / "tiny-cpu.yaml"
GRPO = ROOT / "configs" / "grpo" / "tiny-cpu.yaml"


@pytest.fixture(scope="module")
def offline(tmp_path_factory):
    """W&B offline, with every directory it writes (runs, cache, staging, settings) in a temporary directory.
    Module-wide: wandb reads its environment once per process."""
    root = tmp_path_factory.mktemp("wandb")
    with pytest.MonkeyPatch.context() as patch:
        for name in ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_CONFIG_DIR", "WANDB_ARTIFACT_DIR"):
            (root / name).mkdir()
            patch.setenv(name, str(root / name))
        patch.setenv("WANDB_MODE", "offline")
        patch.setenv("WANDB_SILENT", "true")
        patch.setenv("WANDB_CONSOLE", "off")
        yield root / "WANDB_DIR"


def run_files(root: Path, out: Path) -> Path:
    """The offline run directory of the W&B run that run directory `out` started."""
    run_id = (out / "wandb_run_id").read_text().strip()
    (found,) = root.glob(f"wandb/offline-run-*-{run_id}")
    return found


def wandb_records(run_dir: Path) -> list[dict]:
    """Every record of an offline run, as wandb's own reader prints them."""
    logs = sorted(run_dir.glob("run-*.wandb"))
    assert len(logs) == 1, logs
    out = subprocess.run([sys.executable, "-m", "wandb", "leet", "inspect", "--json", str(logs[0])],
                         capture_output=True, text=True, check=True, timeout=120)
    return [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]


def history(records: list[dict]) -> dict[int, dict]:
    rows: dict[int, dict] = {}
    for r in records:
        if r["type"] == "history":
            rows.setdefault(int(r["history"]["step"].get("num", 0)), {}).update(r["history"]["item"])
    return rows


def summary(records: list[dict]) -> dict:
    values: dict = {}
    for r in records:
        if r["type"] == "summary":
            values.update(r["summary"].get("update", {}))
    return values


def run_record(records: list[dict]) -> dict:
    (run,) = [r["run"] for r in records if r["type"] == "run"]
    return run


def sft_overrides(**extra):
    settings = {"data.synthetic": "{arithmetic__add_or_sub: 120}", "data.seq_len": 128, "model.remat": "none",
                "train.steps": 4, "train.log_every": 2, "train.eval_every": 2, "train.save_every": 0,
                "train.export_hf": "false",
                "logging.wandb": "{project: jaxmath-tests, name: sft-tiny, tags: [tiny, cpu]}", **extra}
    return [f"{k}={v}" for k, v in settings.items()]


def test_sft_run_logs_every_metric_the_config_and_the_summary(offline, tmp_path):
    from jaxmath.train.trainer import train

    out = tmp_path / "run"
    result = train(load_config(TrainConfig, SFT, sft_overrides()), out, progress=False)
    records = wandb_records(run_files(offline, out))
    logged = history(records)
    rows = read_metrics(out / "metrics.jsonl")
    assert [r["step"] for r in rows] == [2, 4]
    for row in rows:  # every scalar of every metrics.jsonl row, at its step
        expected = {k: v for k, v in row.items() if k != "step" and isinstance(v, (int, float))}
        assert "eval_loss" in expected
        assert {k: logged[row["step"]][k] for k in expected} == pytest.approx(expected, rel=1e-12)
    run = run_record(records)
    assert (run["project"], run["display_name"], run["tags"]) == ("jaxmath-tests", "sft-tiny", ["tiny", "cpu"])
    config = {k: v for k, v in run["config"]["update"].items() if k != "_wandb"}
    assert config == yaml.safe_load((out / "config.yaml").read_text())  # the resolved config
    assert config["model"]["remat"] == "none"
    final = summary(records)
    assert final["final_loss"] == pytest.approx(result["final_loss"], rel=1e-12)
    assert final["eval_loss"] == pytest.approx(result["eval_loss"], rel=1e-12)
    assert (out / "wandb_run_id").read_text().strip() == run["run_id"]


@pytest.mark.slow
def test_grpo_run_logs_sample_tables(offline, tmp_path):
    from jaxmath.train.trainer import train

    overrides = {"train.steps": 2, "train.eval_generate": 0, "train.save_every": 0, "train.export_hf": "false",
                 "model.remat": "none", "data.synthetic": "{arithmetic__add_or_sub: 64}", "grpo.overlong": "none",
                 "grpo.rewards": "{correctness: 1.0, length_bonus: 0.5}",
                 "grpo.reward_params": "{length_bonus: {target_tokens: 64}}",
                 "logging.wandb": "{project: jaxmath-tests, samples_every: 1, sample_rows: 16}"}
    out = tmp_path / "grpo"
    train(load_config(TrainConfig, GRPO, [f"{k}={v}" for k, v in overrides.items()]), out, progress=False)
    files = run_files(offline, out)
    rows = {r["step"]: r for r in read_metrics(out / "metrics.jsonl")}
    logged = history(wandb_records(files))
    for step in (1, 2):  # a table at every iteration (samples_every: 1)
        assert logged[step]["samples._type"] == "table-file"
        table = json.loads((files / "files" / logged[step]["samples.path"]).read_text())
        columns = table["columns"]
        assert columns == ["prompt", "completion", "answer", "reward", "reward_correctness", "reward_length_bonus",
                           "length", "truncated"]
        data = [dict(zip(columns, row)) for row in table["data"]]
        assert len(data) == 16  # all 4 prompts x 4 completions
        assert all(isinstance(d["completion"], str) and d["prompt"] and d["answer"] for d in data)
        for d in data:  # each row's reward is the configured sum of its own scores
            bonus = min(1.0, np.log1p(d["length"]) / np.log1p(64))
            assert d["reward_length_bonus"] == pytest.approx(bonus, abs=1e-6)
            assert d["reward"] == pytest.approx(d["reward_correctness"] + 0.5 * bonus, abs=1e-6)
        # and they are the very rollouts that the step's metrics row summarises
        assert np.mean([d["reward"] for d in data]) == pytest.approx(rows[step]["reward_mean"], abs=1e-6)
        assert np.mean([d["length"] for d in data]) == pytest.approx(rows[step]["completion_length_mean"])


def test_pipeline_report_is_logged(offline, tmp_path):
    from jaxmath.tracking import WandbConfig, log_pipeline_report

    summaries = {"sft": {"steps": 20, "final_loss": 1.25, "seconds": 10.5},
                 "grpo": {"steps": 2, "reward_mean": 0.375, "accuracy_after": None, "seconds": 20.0}}
    (tmp_path / "pipeline.json").write_text(json.dumps(summaries))
    log_pipeline_report(WandbConfig(project="jaxmath-tests"), summaries, tmp_path)
    files = run_files(offline, tmp_path)
    records = wandb_records(files)
    final = summary(records)
    assert final["sft/final_loss"] == 1.25 and final["grpo/reward_mean"] == 0.375
    assert "grpo/accuracy_after" not in final  # None is no figure
    (table,) = files.rglob("pipeline_*.table.json")
    data = json.loads(table.read_text())
    assert [row[0] for row in data["data"]] == ["sft", "grpo"]
    assert json.loads(data["data"][1][2]) == summaries["grpo"]
    (saved,) = files.rglob("files/pipeline.json")
    assert json.loads(saved.read_text()) == summaries


def test_pipeline_stages_inherit_the_pipeline_project():
    from jaxmath.pipeline import Stage, with_pipeline_logging
    from jaxmath.tracking import LoggingSection, WandbConfig

    stage = Stage(name="grpo", config=str(GRPO))
    plain = load_config(TrainConfig, GRPO)
    logging = LoggingSection(WandbConfig(project="math", tags=["pipeline"]))
    inherited = with_pipeline_logging(plain, logging, stage, Path("runs/pipe"))
    assert (inherited.logging.wandb.project, inherited.logging.wandb.name, inherited.logging.wandb.group) == \
        ("math", "grpo", "pipe")
    own = load_config(TrainConfig, GRPO, ["logging.wandb={project: mine}"])
    assert with_pipeline_logging(own, logging, stage, Path("runs/pipe")) is own


def test_missing_package_fails_before_anything_runs(tmp_path, monkeypatch):
    from jaxmath.tracking import TrackingError
    from jaxmath.train.trainer import train

    monkeypatch.setitem(sys.modules, "wandb", None)  # `import wandb` raises ImportError
    with pytest.raises(TrackingError, match=r"pip install 'jaxmath\[wandb\]'"):
        train(load_config(TrainConfig, SFT, sft_overrides(**{"logging.wandb.mode": "offline"})), tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_missing_login_fails_at_start_naming_the_fix(tmp_path):
    """`jaxmath train --wandb-project` online with no credentials anywhere (no key, empty netrc, fresh home)."""
    (tmp_path / "netrc").write_text("")
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(HOME=str(tmp_path), NETRC=str(tmp_path / "netrc"), WANDB_CONFIG_DIR=str(tmp_path / "config"),
               PYTHONPATH=str(ROOT))
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "jaxmath.cli", "train", "--config", str(SFT), "--wandb-project",
                           "2024", "--output-dir", str(out)], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 1
    assert "wandb login" in proc.stderr and "WANDB_API_KEY" in proc.stderr and "mode: offline" in proc.stderr
    assert not out.exists()
