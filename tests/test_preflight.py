"""The trainer's preflight: a run that could not write its outputs fails before its first step, naming the
directory, the free and needed bytes, or the library, its version and the fix; a run that can passes and
leaves nothing behind."""
import collections
import importlib.metadata
import json
import os
import re
import subprocess
from pathlib import Path

import numpy as np
import orbax.checkpoint as ocp
import pytest
import transformers

from jaxmath.config import load_config
from jaxmath.models.config import ModelConfig
from jaxmath.train import preflight, trainer
from jaxmath.train.config import TrainConfig
from jaxmath.train.preflight import PreflightError, check_export, failure_message

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "sft" / "tiny-cpu.yaml"
Usage = collections.namedtuple("Usage", "total used free")


def tiny(**extra) -> TrainConfig:
    overrides = {"data.synthetic": "{arithmetic__add_or_sub: 60}", "data.seq_len": 64, "train.steps": 2,
                 "optimizer.warmup_steps": 0, "train.eval_every": 0, "mesh.data": -1, **extra}
    return load_config(TrainConfig, TINY, [f"{k}={v}" for k, v in overrides.items()])


@pytest.fixture
def no_training(monkeypatch):
    """Loading weights (what comes right after the preflight) fails the test: the run must stop before."""
    def reached(*args, **kwargs):
        raise AssertionError("the run got past its preflight")
    monkeypatch.setattr(trainer, "load_params", reached)


def make_read_only(path: Path) -> None:
    """Mode bits for a normal user; root ignores them, so the directory is made immutable (chattr +i)."""
    if os.geteuid() != 0:
        path.chmod(0o555)
    elif subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode != 0:
        pytest.skip("running as root where chattr +i is unavailable: no way to make a read-only directory")


def make_writable(path: Path) -> None:
    if os.geteuid() == 0:
        subprocess.run(["chattr", "-i", str(path)], capture_output=True)
    path.chmod(0o755)


def test_a_read_only_output_directory_fails_before_the_first_step(tmp_path, no_training):
    out = tmp_path / "out"
    out.mkdir()
    make_read_only(out)
    try:
        with pytest.raises(PreflightError, match=f"output directory {out} is not writable"):
            trainer.train(tiny(), out, progress=False)
        assert list(out.iterdir()) == []
    finally:
        make_writable(out)


def test_too_little_disk_for_one_checkpoint_names_needed_and_free_bytes(tmp_path, monkeypatch, no_training):
    monkeypatch.setattr(preflight.shutil, "disk_usage", lambda path: Usage(10**9, 10**9 - 4096, 4096))
    with pytest.raises(PreflightError) as failure:
        trainer.train(tiny(), tmp_path / "out", progress=False)
    message = str(failure.value)
    assert "4096 bytes" in message and "free" in message
    needed, params, optimizer = (int(x) for x in re.search(
        r"needs (\d+) bytes .*parameters (\d+) \+ optimizer state (\d+)", message).groups())
    # Independently: float32 parameters of the tiny Qwen2 (its vocabulary is the trained tokenizer's), and
    # AdamW's two moments of the same size plus its step counters.
    vocab = len(transformers.AutoTokenizer.from_pretrained(tmp_path / "out" / "tokenizer"))
    init = tiny().model.init
    config = ModelConfig.from_hf({**init, "vocab_size": vocab})
    assert params == 4 * config.num_params()
    assert 2 * params <= optimizer <= 2 * params + 64
    assert needed == params + optimizer


def test_a_library_failure_in_the_save_path_names_library_version_and_fix(tmp_path, monkeypatch, no_training):
    def old_orbax(*args, **kwargs):  # what orbax-checkpoint 0.12.4 raised for a keyword only 0.12.5+ has
        raise TypeError("NumpyHandler.__init__() got an unexpected keyword argument 'deepcopy_host_arrays'")

    monkeypatch.setattr(ocp.Checkpointer, "save", old_orbax)
    with pytest.raises(PreflightError) as failure:
        trainer.train(tiny(), tmp_path / "out", progress=False)
    message = str(failure.value)
    version = importlib.metadata.version("orbax-checkpoint")
    assert f"in orbax-checkpoint {version} (TypeError: NumpyHandler.__init__() got an unexpected keyword" in message
    assert "pip install --upgrade" in message and "orbax-checkpoint" in message.split("Fix:")[1]
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith(".preflight-")]


def test_an_error_raised_inside_a_library_is_blamed_on_that_library(tmp_path):
    with pytest.raises(OSError) as failure:
        np.load(tmp_path / "missing.npy")  # raised in numpy's own code
    assert f"in numpy {np.__version__} (FileNotFoundError" in failure_message(failure.value, tmp_path)


def test_preflight_writes_a_loadable_tiny_export_and_leaves_nothing(tmp_path):
    run = trainer.build_run(tiny(), tmp_path / "out")
    seen = {}

    def export(tiny_run, params):
        trainer.export_final(tiny_run, params)
        hf = tiny_run.out / "hf"
        seen["config"] = json.loads((hf / "config.json").read_text())
        seen["model"] = transformers.AutoModelForCausalLM.from_pretrained(hf)
        seen["dir"] = tiny_run.out

    check_export(run, export)
    assert seen["dir"].parent == run.out and not seen["dir"].exists()  # inside the output directory, removed
    assert seen["config"]["model_type"] == "qwen2" and seen["config"]["hidden_size"] == 16
    assert seen["config"]["tie_word_embeddings"] is True  # the run's family, only smaller
    assert sum(p.numel() for p in seen["model"].parameters()) == preflight.tiny_config(run.model_config).num_params()
    assert sorted(p.name for p in run.out.iterdir()) == ["tokenizer"]
