"""The SFT trainer end to end: run files, exact resume after SIGKILL, restore onto another mesh, dry run."""
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers

from jaxmath.config import ConfigError, load_config
from jaxmath.data.formats import get_format, render_prompt
from jaxmath.train.config import TrainConfig
from jaxmath.train.trainer import dry_run, load_records, train

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "sft" / "tiny-cpu.yaml"


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    """300 distinct sums whose answer is always 10, without worked solutions: every SFT target is the same
    sentence ("The final answer is $\\boxed{10}$."), which the tiny model learns within 24 steps, so the held-out
    accuracy tells a trainer that learns and grades from one that does not."""
    path = tmp_path_factory.mktemp("data") / "arith.jsonl"
    rng = np.random.default_rng(0)
    with path.open("w") as f:
        for i, a in enumerate(rng.permutation(np.arange(-150, 150))):
            f.write(json.dumps({"id": f"add-{i}", "question": f"What is {a} + {10 - a}?", "answer": "10"}) + "\n")
    return path


def overrides(records, **extra):
    base = {"data.synthetic": "{}", "data.train": f"[{records}]", "data.eval_fraction": 0.1,
            "data.seq_len": 128, "train.log_every": 1, "train.eval_every": 0, "train.export_hf": "false",
            "mesh.data": -1, "train.steps": 8, "train.save_every": 2, "train.keep_checkpoints": 20,
            "optimizer.total_steps": 24}
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


def losses(run_dir: Path) -> dict[int, float]:
    """step -> loss of the last row logged for that step."""
    out = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        if "loss" in row:
            out[row["step"]] = row["loss"]
    return out


@pytest.fixture(scope="module")
def reference_run(records, tmp_path_factory):
    out = tmp_path_factory.mktemp("ref")
    config = load_config(TrainConfig, TINY, overrides(records, **{
        "train.steps": 24, "train.export_hf": "true", "train.eval_generate": 4, "train.eval_max_new_tokens": 24}))
    summary = train(config, out, progress=False)
    return out, summary


@pytest.mark.slow
def test_run_writes_every_file_and_learns(records, reference_run):
    out, summary = reference_run
    for name in ("config.yaml", "metrics.jsonl", "checkpoints", "tensorboard", "tokenizer", "final_model", "hf"):
        assert (out / name).exists(), name
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    for key in ("step", "loss", "learning_rate", "grad_norm", "tokens_per_second"):
        assert all(key in row for row in rows), key
    steps = losses(out)
    assert steps[24] < 0.6 * steps[1]
    assert summary["eval_loss"] is not None and np.isfinite(summary["eval_loss"])
    assert summary["eval_accuracy"] == 1.0  # the 4 held-out problems, answered greedily and graded
    assert rows[-1]["eval_accuracy"] == summary["eval_accuracy"]
    # The exported checkpoint answers them too, decoded by transformers and read without jaxmath's verifier.
    model = transformers.AutoModelForCausalLM.from_pretrained(out / "hf").eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(out / "hf")
    assert model.config.vocab_size >= len(tokenizer)
    _, held_out = load_records(load_config(TrainConfig, TINY, overrides(records)))
    for record in held_out[:4]:
        ids = tokenizer(render_prompt(get_format("boxed"), record.question, tokenizer), return_tensors="pt",
                        add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            completion = tokenizer.decode(model.generate(ids, max_new_tokens=24, do_sample=False)[0, ids.shape[1]:])
        assert re.search(r"\\boxed\{(.*?)\}", completion).group(1) == record.answer, completion


# Runs the trainer CLI and SIGKILLs itself right after metrics.jsonl gets the row of step argv[1]: a kill at a
# known step, with no cleanup (as the OOM killer or a pre-emption would), whatever the machine's speed.
KILL_AT_STEP = """
import os, signal, sys
from jaxmath.commands.train import train_main
from jaxmath.train.metrics import MetricsWriter

kill_at, write = int(sys.argv[1]), MetricsWriter.write

def write_then_die(self, step, metrics):
    write(self, step, metrics)
    if step == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)

MetricsWriter.write = write_then_die
sys.exit(train_main(sys.argv[2:]))
"""


@pytest.mark.slow
def test_resume_after_sigkill_is_bit_exact(records, reference_run, tmp_path):
    """Killed at step 11 (checkpoints every 2 steps, written asynchronously), resumed: every step's loss equals
    the uninterrupted run's, bit for bit."""
    ref_dir, _ = reference_run
    out = tmp_path / "killed"
    settings = overrides(records, **{"train.steps": 24, "train.export_hf": "true"})
    args = [sys.executable, "-c", KILL_AT_STEP, "11", "--config", str(TINY), "--output-dir", str(out)]
    for item in settings:
        args += ["--set", item]
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
    proc = subprocess.run(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, timeout=600)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    assert max(losses(out)) == 11
    assert not (out / "checkpoints" / "12").exists() and not (out / "hf").exists()
    train(load_config(TrainConfig, TINY, settings), out, resume=True, progress=False)
    ref, resumed = losses(ref_dir), losses(out)
    assert set(resumed) == set(ref)
    assert resumed == ref  # bit for bit: same floats for every step, killed or not


@pytest.mark.slow
def test_restore_onto_a_different_mesh(records, reference_run, tmp_path):
    """Continue the reference run (mesh 8x1x1) from its step-4 checkpoint on a (2, 4, 1) mesh."""
    ref_dir, _ = reference_run
    shutil.copytree(ref_dir / "tokenizer", tmp_path / "tokenizer")
    shutil.copytree(ref_dir / "checkpoints" / "4", tmp_path / "checkpoints" / "4")
    config = load_config(TrainConfig, TINY, overrides(records, **{
        "train.steps": 6, "mesh.data": 2, "mesh.fsdp": 4, "train.save_every": 0}))
    train(config, tmp_path, resume=True, progress=False)
    ref, got = losses(ref_dir), losses(tmp_path)
    assert sorted(got) == [5, 6]
    np.testing.assert_allclose([got[5], got[6]], [ref[5], ref[6]], rtol=1e-5)


@pytest.mark.slow
def test_dry_run_memory_matches_the_config_shapes(records, tmp_path):
    """The dry run's per-device memory against counts from the config's shapes alone, on a data=2 x fsdp=4 mesh.
    Arguments: fp32 params and AdamW's two fp32 moments, matrices split over fsdp (ZeRO), norm scales and
    biases replicated, plus the device's batch rows. Temporaries: the gradients (sharded like the params) and,
    per batch row on the device, what backprop keeps per token: 10h + 4kv + 4i + 2 heads T floats per layer and
    3 V for the logits. XLA:CPU keeps 2.6x that textbook count (measured, jax 0.10.2: it reuses fewer buffers
    than the count assumes), so the band is 1x to 4x."""
    h, inner, layers, heads, kv_heads, vocab, length = 64, 176, 2, 4, 2, 512, 128  # tiny-cpu.yaml's model
    head_dim, fsdp, batch_shards = h // heads, 4, 8
    matrices = vocab * h + layers * (2 * heads * head_dim * h + 2 * kv_heads * head_dim * h + 3 * h * inner)
    vectors = layers * (2 * h + (heads + 2 * kv_heads) * head_dim) + h  # norm scales, q/k/v biases, final norm
    per_device = 4 * (matrices / fsdp + vectors)  # bytes of one fp32 copy of the params on a device
    per_token = layers * (10 * h + 4 * kv_heads * head_dim + 4 * inner + 2 * heads * length) + 3 * vocab
    gib = 2**30
    for rows in (8, 32):
        config = load_config(TrainConfig, TINY, overrides(records, **{
            "mesh.data": 2, "mesh.fsdp": fsdp, "data.batch_size": rows, "model.init.vocab_size": vocab}))
        report = dry_run(config, tmp_path / str(rows))
        assert report["optimizer_gib_total"] == pytest.approx(2 * report["params_gib_total"], rel=0.01)
        device_rows = rows // batch_shards
        batch = 4 * 4 * device_rows * length  # input_ids, loss_mask, segment_ids, positions: int32
        assert report["argument_gib_per_device"] * gib == pytest.approx(3 * per_device + batch, rel=0.01)
        textbook = per_device + device_rows * 4 * length * per_token
        assert 1.0 <= report["temp_gib_per_device"] * gib / textbook <= 4.0, report
        # The new state aliases the donated one: the peak is arguments + temporaries.
        assert report["peak_gib_per_device"] == pytest.approx(
            report["argument_gib_per_device"] + report["temp_gib_per_device"], rel=0.01)


def test_config_errors_name_the_key(tmp_path):
    with pytest.raises(ConfigError, match="optimizer.learning_rate"):
        load_config(TrainConfig, TINY, ["optimizer.learning_rate=1e-4"])
    with pytest.raises(ConfigError, match="optimizer.lr"):
        load_config(TrainConfig, TINY, ["optimizer.lr=fast"])
    with pytest.raises(ConfigError, match="train.eval_every"):
        load_config(TrainConfig, TINY, ["train.eval_every=3", "train.log_every=2"])


GRPO_TINY = ROOT / "configs" / "grpo" / "tiny-cpu.yaml"


@pytest.mark.parametrize("config,settings,says", [
    (TINY, ["optimizer.warmup_steps=80"], ["optimizer.warmup_steps=80", "train.steps"]),
    (GRPO_TINY, ["optimizer.warmup_steps=17"],
     ["optimizer.warmup_steps=17", "16 optimizer steps (train.steps * grpo.mu * grpo.minibatches)"]),
])
def test_a_warmup_longer_than_a_short_run_is_a_warning_naming_both(config, settings, says, caplog):
    with caplog.at_level("WARNING", logger="jaxmath.train.config"):
        load_config(TrainConfig, config, settings)
    assert all(text in caplog.text for text in says)


@pytest.mark.parametrize("config,settings,keys", [
    # Dr. GRPO's constant normaliser is the generation budget
    (GRPO_TINY, ["grpo.loss.aggregation=constant", "grpo.loss.max_completion_length=100"],
     ["grpo.loss.max_completion_length=100", "grpo.sampling.max_new_tokens=24"]),
    (GRPO_TINY, ["grpo.loss.max_completion_length=24"],
     ["grpo.loss.max_completion_length", "grpo.loss.aggregation='token_mean'"]),
    (GRPO_TINY, ["grpo.loss.beta=0", "grpo.ref_refresh_every=2"], ["grpo.ref_refresh_every=2", "grpo.loss.beta=0"]),
    # sequences fit the model's context
    (TINY, ["data.seq_len=1024"], ["data.seq_len = 1024", "model.init.max_position_embeddings = 512"]),
    (GRPO_TINY, ["grpo.max_prompt_len=400", "grpo.sampling.max_new_tokens=200"],
     ["grpo.max_prompt_len + grpo.sampling.max_new_tokens = 600", "model.init.max_position_embeddings = 512"]),
    # a fitted tokenizer needs a fresh model that holds its vocabulary
    (TINY, ["model.init=null", "model.path=/models/any"], ["data.tokenizer=train", "model.path=/models/any"]),
    (TINY, ["model.init.vocab_size=300"], ["model.init.vocab_size=300", "data.tokenizer_vocab_size=384"]),
    # micro-batches and minibatches
    (TINY, ["optimizer.grad_accum=3"], ["data.batch_size=8", "optimizer.grad_accum=3"]),
    (GRPO_TINY, ["grpo.minibatches=4", "optimizer.grad_accum=3"], ["grpo.minibatches", "optimizer.grad_accum=3"]),
    # the learning-rate schedule covers the run
    (TINY, ["optimizer.warmup_steps=30", "optimizer.total_steps=20"],
     ["optimizer.warmup_steps=30", "optimizer.total_steps=20"]),
    (TINY, ["optimizer.total_steps=40", "optimizer.min_lr_ratio=0"],
     ["optimizer.total_steps=40", "60 optimizer steps (train.steps)", "optimizer.min_lr_ratio=0"]),
    # evaluation has held-out data
    (TINY, ["train.eval_every=30", "data.eval_fraction=0"], ["train.eval_every=30", "data.eval", "data.eval_fraction"]),
    (TINY, ["train.eval_every=0", "train.eval_generate=4", "data.eval_fraction=0"],
     ["train.eval_generate=4", "data.eval_fraction"]),
    (GRPO_TINY, ["train.eval_every=2", "train.eval_generate=0"], ["train.eval_every=2", "train.eval_generate=0"]),
])
def test_settings_that_must_agree_are_refused_naming_both_keys(config, settings, keys):
    with pytest.raises(ConfigError) as err:
        load_config(TrainConfig, config, settings)
    for key in keys:
        assert key in str(err.value), (key, str(err.value))


def test_dr_grpo_constant_follows_max_new_tokens():
    config = load_config(TrainConfig, GRPO_TINY, ["grpo.loss.aggregation=constant", "grpo.sampling.max_new_tokens=40"])
    assert config.grpo.loss.max_completion_length == 40
    same = load_config(TrainConfig, GRPO_TINY, ["grpo.loss.aggregation=constant", "grpo.sampling.max_new_tokens=40",
                                                "grpo.loss.max_completion_length=40"])
    assert same.grpo.loss == config.grpo.loss
    # A schedule that ends early is fine when it ends above 0, and warmup may span a longer schedule's start.
    load_config(TrainConfig, TINY, ["optimizer.total_steps=40", "optimizer.min_lr_ratio=0.1"])
    load_config(TrainConfig, TINY, ["train.steps=8", "train.eval_every=0", "train.save_every=0",
                                    "train.log_every=1", "optimizer.total_steps=24"])


def test_run_checks_the_pretrained_context_and_the_batch_split(records, tmp_path):
    """What needs the pretrained model's config.json or the devices is checked when the run is built."""
    from jaxmath.train.trainer import build_run
    from tiny_hf import save_tiny, tiny_model

    path = save_tiny(tiny_model("qwen2"), tmp_path / "lm")  # max_position_embeddings 256
    settings = overrides(records, **{"model.init": "null", "model.path": str(path), "data.tokenizer": str(path)})
    config = load_config(TrainConfig, TINY, settings + ["data.seq_len=512"])
    with pytest.raises(ValueError, match=f"data.seq_len = 512 exceeds the max_position_embeddings of "
                                         f"model.path={path} = 256"):
        build_run(config, tmp_path / "a", with_data=False)
    config = load_config(TrainConfig, TINY, overrides(records, **{"data.batch_size": 12}))
    with pytest.raises(ValueError, match=r"data.batch_size=12 does not split over the mesh's 8 batch shards "
                                         r"\(mesh.data x mesh.fsdp = 8 x 1\)"):
        build_run(config, tmp_path / "b", with_data=False)


def test_each_objective_has_its_own_task_and_an_unknown_one_is_refused_naming_the_known():
    from types import SimpleNamespace

    from jaxmath.train.tasks import DPOTask, GRPOTask, PRMTask, SFTTask, Task, task_for

    expected = {"sft": SFTTask, "dpo": DPOTask, "prm": PRMTask, "grpo": GRPOTask}
    for objective, kind in expected.items():
        task = task_for(SimpleNamespace(objective=objective))  # task_for reads only the objective
        assert type(task) is kind and isinstance(task, Task)
    config = load_config(TrainConfig, TINY)
    assert type(task_for(config)) is SFTTask and task_for(config) is not task_for(config)  # one per run
    with pytest.raises(ValueError, match="unknown objective 'ppo'; known objectives: sft, dpo, prm, grpo"):
        task_for(SimpleNamespace(objective="ppo"))
