"""model.remat: auto picks the least recomputation whose compiled train step fits, measured by dry runs."""
from pathlib import Path

import pytest

from jaxmath.config import load_config
from jaxmath.models.config import REMAT_POLICIES
from jaxmath.train import remat, trainer
from jaxmath.train.config import TrainConfig
from jaxmath.train.trainer import TrainingError, dry_run, with_measured_remat

TINY = Path(__file__).resolve().parents[1] / "configs" / "sft" / "tiny-cpu.yaml"
TINY_SET = ["data.seq_len=256", "mesh.data=2", "mesh.fsdp=4", "train.export_hf=false"]
PEAKS = {"none": 9.0, "dots": 7.0, "dots_no_batch": 5.0, "full": 3.0}  # GiB, for the fake measurements


def fake_dry_run(config, output_dir=None):
    if config.model.remat == "dots":
        raise RuntimeError("RESOURCE_EXHAUSTED: out of memory while compiling")
    return {"peak_gib_per_device": PEAKS[config.model.remat], "remat_seen": config.model.remat}


@pytest.mark.parametrize("budget,expected,tried", [
    (10.0, "none", ["none"]),
    (8.0, "dots_no_batch", ["none", "dots", "dots_no_batch"]),  # dots' compile failure counts as not fitting
    (5.0, "dots_no_batch", ["none", "dots", "dots_no_batch"]),
    (4.0, "full", ["none", "dots", "dots_no_batch", "full"]),
])
def test_auto_takes_the_first_option_that_fits_in_order_of_recomputation(monkeypatch, budget, expected, tried):
    seen = []
    monkeypatch.setattr(trainer, "dry_run", lambda config, out=None: seen.append(config.model.remat)
                        or fake_dry_run(config))
    monkeypatch.setattr(remat, "budget_gib", lambda: budget)
    config = load_config(TrainConfig, TINY, ["model.remat=auto"])
    assert with_measured_remat(config).model.remat == expected
    assert seen == tried
    assert with_measured_remat(load_config(TrainConfig, TINY, ["model.remat=full"])).model.remat == "full"


def test_auto_with_nothing_that_fits_says_so_with_the_table(monkeypatch):
    monkeypatch.setattr(trainer, "dry_run", lambda config, out=None: fake_dry_run(config))
    monkeypatch.setattr(remat, "budget_gib", lambda: 2.0)
    with pytest.raises(TrainingError) as info:
        with_measured_remat(load_config(TrainConfig, TINY, ["model.remat=auto"]))
    message = str(info.value)
    assert "no remat policy" in message and "mesh.fsdp" in message and "grad_accum" in message
    assert message.count("does not fit") == 3 and "RESOURCE_EXHAUSTED" in message


def test_errors_other_than_running_out_of_memory_are_raised(monkeypatch):
    def broken(config, out=None):
        raise ValueError("model.path: no config.json")

    monkeypatch.setattr(trainer, "dry_run", broken)
    with pytest.raises(ValueError, match="no config.json"):
        with_measured_remat(load_config(TrainConfig, TINY, ["model.remat=auto"]))


def test_options_table_marks_the_choice():
    options = [remat.RematOption("none", 9.0, 6.0), remat.RematOption("dots", None, 6.0, error="boom"),
               remat.RematOption("dots_no_batch", 5.5, 6.0), remat.RematOption("full", 3.0, 6.0)]
    table = remat.format_options([option.row() for option in options]).splitlines()
    assert table[1].split()[:3] == ["none", "9.00", "6.0"] and "does not fit" in table[1]
    assert "error: boom" in table[2]
    assert table[3].endswith("<- chosen") and not table[4].endswith("<- chosen")


def test_remat_typo_is_a_config_error():
    with pytest.raises(Exception, match="model.remat"):
        load_config(TrainConfig, TINY, ["model.remat=sometimes"])


@pytest.mark.slow
def test_auto_chooses_from_real_compiled_peaks(monkeypatch, tmp_path):
    """With a budget between the real peaks of `none` and `dots`, auto compiles `none`, finds it too big,
    and takes `dots`; the dry run reports every option."""
    peaks = {policy: dry_run(load_config(TrainConfig, TINY, [*TINY_SET, f"model.remat={policy}"]),
                             tmp_path / policy)["peak_gib_per_device"] for policy in ("none", "dots")}
    assert peaks["dots"] < peaks["none"]
    monkeypatch.setattr(remat, "budget_gib", lambda: (peaks["none"] + peaks["dots"]) / 2)
    config = load_config(TrainConfig, TINY, [*TINY_SET, "model.remat=auto"])
    assert with_measured_remat(config, tmp_path / "auto").model.remat == "dots"
    report = dry_run(config, tmp_path / "dry")
    assert report["remat"] == "dots" and [row["remat"] for row in report["remat_options"]] == list(REMAT_POLICIES)
    assert report["peak_gib_per_device"] == pytest.approx(peaks["dots"])
    assert [row["fits"] for row in report["remat_options"]] == [False, True, True, True]
