"""DPO and PRM through the one trainer loop: they learn and log their metrics, DPO's precomputed reference
equals the on-the-fly one, both resume exactly, the PRM starts from a causal LM and exports to transformers
with the same step scores, and config mistakes name the key."""
import json
from pathlib import Path

import jax
import numpy as np
import pytest
import torch
import transformers
from flax import nnx

import jaxmath
from jaxmath.config import ConfigError, load_config
from jaxmath.data.encode import encode_prm_trace
from jaxmath.data.formats import get_format
from jaxmath.data.tokenizer import load_tokenizer
from jaxmath.train import reference, trainer
from jaxmath.train.config import TrainConfig
from jaxmath.train.run import load_params
from jaxmath.train.trainer import build_run, dry_run, load_records, train
from tiny_hf import save_tiny, tiny_model

ROOT = Path(__file__).resolve().parents[1]
DPO = ROOT / "configs" / "dpo" / "tiny-cpu.yaml"
PRM = ROOT / "configs" / "prm" / "tiny-cpu.yaml"
FIXTURES = ROOT / "tests" / "fixtures"
DATA = {DPO: FIXTURES / "dpo" / "pairs.jsonl", PRM: FIXTURES / "prm" / "traces.jsonl"}


def config(path, **extra):
    base = {"data.train": f"[{DATA[path]}]", "train.log_every": 1, "train.eval_every": 0, "train.export_hf": "false",
            "mesh.data": -1, "train.steps": 6, "train.save_every": 3, "train.keep_checkpoints": 5,
            "optimizer.total_steps": 24, "train.eval_batches": 8}
    base.update(extra)
    return load_config(TrainConfig, path, [f"{k}={v}" for k, v in base.items()])


def rows(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def losses(run_dir):
    return {row["step"]: row["loss"] for row in rows(run_dir)}


@pytest.fixture(scope="module")
def dpo_runs(tmp_path_factory):
    """The same 6 DPO steps with the reference precomputed and evaluated on the fly."""
    out = {}
    for mode in ("precompute", "on_the_fly"):
        out[mode] = tmp_path_factory.mktemp(mode)
        out[mode, "summary"] = train(config(DPO, **{"dpo.reference": mode}), out[mode], progress=False)
    return out


@pytest.mark.slow
def test_dpo_learns_and_reports_reward_metrics(dpo_runs):
    run_dir, summary = dpo_runs["precompute"], dpo_runs["precompute", "summary"]
    steps = losses(run_dir)
    assert steps[1] == pytest.approx(np.log(2), abs=1e-5)  # policy == reference: every pair's margin is 0
    assert steps[6] < 0.8 * steps[1]
    last = rows(run_dir)[-1]
    assert last["reward_accuracy"] > 0.5 and last["reward_margin"] > 0
    assert last["chosen_reward"] - last["rejected_reward"] == pytest.approx(last["reward_margin"], rel=1e-4)
    for key in ("eval_loss", "eval_reward_accuracy", "eval_reward_margin", "eval_chosen_reward"):
        assert np.isfinite(summary[key]) and last[key] == summary[key], key
    tables = np.load(run_dir / "reference" / "process0-of-1.npz")
    assert tables["train"].shape == (216, 2) and tables["eval"].shape == (24, 2)  # 240 pairs, 10% held out
    assert (tables["train"] < 0).all()  # summed log-probs of real responses


@pytest.mark.slow
def test_precomputed_reference_equals_the_on_the_fly_one(dpo_runs):
    precomputed, on_the_fly = losses(dpo_runs["precompute"]), losses(dpo_runs["on_the_fly"])
    assert sorted(precomputed) == sorted(on_the_fly) == list(range(1, 7))
    np.testing.assert_allclose([on_the_fly[s] for s in range(1, 7)], [precomputed[s] for s in range(1, 7)],
                               rtol=2e-5)
    assert dpo_runs["on_the_fly", "summary"]["eval_loss"] == pytest.approx(
        dpo_runs["precompute", "summary"]["eval_loss"], rel=2e-5)
    assert not (dpo_runs["on_the_fly"] / "reference").exists()


@pytest.mark.slow
def test_dpo_resume_reads_the_saved_reference_and_is_exact(dpo_runs, tmp_path, monkeypatch):
    train(config(DPO, **{"train.steps": 3}), tmp_path, progress=False)
    monkeypatch.setattr(reference, "precompute_reference", lambda *a: pytest.fail("reference recomputed on resume"))
    for module in (trainer, reference):  # the run's weights, and the reference's
        monkeypatch.setattr(module, "load_params", lambda *a, **k: pytest.fail("weights loaded on resume"))
    train(config(DPO), tmp_path, resume=True, progress=False)
    ref, resumed = losses(dpo_runs["precompute"]), losses(tmp_path)
    assert [resumed[s] for s in (4, 5, 6)] == [ref[s] for s in (4, 5, 6)]


@pytest.fixture(scope="module")
def prm_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("prm")
    summary = train(config(PRM, **{"train.steps": 8, "train.save_every": 4, "train.export_hf": "true"}), out,
                    progress=False)
    return out, summary


@pytest.mark.slow
def test_prm_learns_and_reports_step_accuracy_and_auc(prm_run):
    out, summary = prm_run
    assert losses(out)[1] == pytest.approx(np.log(2), abs=0.05)  # a fresh 2-label head is near chance
    assert all("step_accuracy" in row for row in rows(out))
    # batches differ in their share of good steps, so the held-out loss (fixed steps) shows the learning
    assert summary["eval_loss"] < np.log(2) - 0.1
    assert 0.5 < summary["eval_step_accuracy"] <= 1 and 0.7 < summary["eval_step_auc"] <= 1


def pooled_auc(scores, labels):
    """P(score of a good step > score of a bad step), ties half: counted pair by pair."""
    scores, labels = np.asarray(scores), np.asarray(labels)
    good, bad = scores[labels == 1], scores[labels == 0]
    return float(np.mean((good[:, None] > bad[None, :]) + 0.5 * (good[:, None] == bad[None, :])))


@pytest.mark.slow
def test_prm_export_scores_like_transformers_and_its_auc_matches(prm_run):
    out, summary = prm_run
    hf = transformers.AutoModelForTokenClassification.from_pretrained(out / "hf").eval()
    assert type(hf).__name__ == "Qwen2ForTokenClassification"
    model = jaxmath.from_pretrained(out / "final_model")
    tokenizer, fmt = load_tokenizer(out / "tokenizer"), get_format("boxed")
    _, held_out = load_records(config(PRM))
    traces = [encode_prm_trace(row["question"], row["steps"], tokenizer, fmt) for row in held_out]
    ids = np.zeros((len(traces), max(len(t) for t, _ in traces)), np.int64)
    mask = np.zeros_like(ids)
    for i, (tokens, _) in enumerate(traces):
        ids[i, :len(tokens)], mask[i, :len(tokens)] = tokens, 1  # right padding: positions are unchanged
    with torch.no_grad():
        theirs = torch.softmax(hf(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).logits, -1)
    ours = np.asarray(jax.nn.softmax(model(ids, attention_mask=mask), axis=-1))
    scores, labels = [], []
    for i, (row, (_, ends)) in enumerate(zip(held_out, traces)):
        np.testing.assert_allclose(ours[i, ends, 1], theirs[i, ends, 1].numpy(), atol=1e-4)
        scores += list(theirs[i, ends, 1].numpy())
        labels += row["labels"]
    assert summary["eval_step_auc"] == pytest.approx(pooled_auc(scores, labels), abs=1e-3)  # near-ties may flip


@pytest.mark.slow
def test_prm_resume_is_exact(prm_run, tmp_path):
    ref_dir, _ = prm_run
    train(config(PRM, **{"train.steps": 4, "train.save_every": 4}), tmp_path, progress=False)
    train(config(PRM, **{"train.steps": 8, "train.save_every": 4}), tmp_path, resume=True, progress=False)
    ref, resumed = losses(ref_dir), losses(tmp_path)
    assert [resumed[s] for s in range(5, 9)] == [ref[s] for s in range(5, 9)]


def test_prm_starts_from_a_causal_lm_with_a_fresh_head(tmp_path):
    hf = tiny_model("qwen2", vocab_size=400, seed=1)
    path = save_tiny(hf, tmp_path / "lm")
    cfg = config(PRM, **{"model.path": str(path), "model.init": "null", "data.tokenizer": str(path)})
    run = build_run(cfg, tmp_path / "run", with_data=False)
    assert run.model_config.num_labels == 2 and run.model_config.vocab_size == 400
    model = nnx.merge(run.graphdef, load_params(cfg, run.model_config, run.mesh, run.shardings.params))
    ids = np.random.default_rng(0).integers(0, 400, (2, 12))
    with torch.no_grad():
        theirs = hf.model(input_ids=torch.tensor(ids)).last_hidden_state.numpy()
    np.testing.assert_allclose(np.asarray(model.model(ids)), theirs, atol=1e-4)  # the decoder is the LM's
    score = np.asarray(model.score[...])
    assert score.shape == (2, 64) and 0.01 < score.std() < 0.03 and not np.asarray(model.score_bias[...]).any()
    classifier = save_tiny(tiny_model("qwen2", token_classification=True, num_labels=2), tmp_path / "clf")
    with pytest.raises(ValueError, match="token classifier"):
        build_run(config(DPO, **{"model.path": str(classifier), "model.init": "null",
                                 "data.tokenizer": str(classifier)}), tmp_path / "x", with_data=False)


@pytest.mark.slow
def test_dry_run_holds_the_on_the_fly_reference_in_memory(tmp_path):
    precompute = dry_run(config(DPO), tmp_path / "a")
    on_the_fly = dry_run(config(DPO, **{"dpo.reference": "on_the_fly"}), tmp_path / "b")
    extra = on_the_fly["argument_gib_per_device"] - precompute["argument_gib_per_device"]
    assert extra == pytest.approx(precompute["params_gib_total"], rel=0.05)  # replicated over data parallel
    assert dry_run(config(PRM), tmp_path / "c")["peak_gib_per_device"] > 0


@pytest.mark.parametrize("override,message", [
    (["dpo.bta=0.1"], "dpo.bta"),
    (["dpo.reference=sometimes"], "dpo.reference"),
    (["dpo.loss_type=hinge"], "loss_type"),
    (["dpo.label_smoothing=0.5"], "label_smoothing"),
    (["objective=sft"], "a dpo section is set but objective is 'sft'"),
    (["train.eval_generate=4"], "eval_generate"),
])
def test_dpo_config_errors_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(TrainConfig, DPO, override)


def test_prm_config_errors_name_the_key():
    with pytest.raises(ConfigError, match="prm.max_step"):
        load_config(TrainConfig, PRM, ["prm.max_step=4"])
    with pytest.raises(ConfigError, match="max_steps must be >= 1"):
        load_config(TrainConfig, PRM, ["prm.max_steps=0"])
    with pytest.raises(ValueError, match="objective prm reads step-labelled traces"):
        load_records(config(PRM, **{"data.synthetic": "{arithmetic__mul: 10}"}))
