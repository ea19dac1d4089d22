"""HF -> jaxmath -> HF conversion: bit-identical round trips, transformers reloads, clear errors on bad input."""
import json
import subprocess
import sys
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
import transformers
from safetensors.numpy import load_file

import jaxmath
from jaxmath.checkpoint import CheckpointError
from jaxmath.models import UnsupportedConfigError
from tiny_hf import hf_logits, left_padded_batch, save_tiny, tiny_model

ROOT = Path(__file__).resolve().parents[1]


def all_tensors(path: Path) -> dict[str, np.ndarray]:
    tensors = {}
    for file in sorted(path.glob("*.safetensors")):
        tensors.update(load_file(file))
    return tensors


def assert_nothing_written(out: Path) -> None:
    assert not out.exists()
    assert not list(out.parent.glob(f".{out.name}.tmp-*"))


@pytest.mark.parametrize("model_type,token_classification,overrides", [
    ("qwen2", False, dict(tie_word_embeddings=False)),
    ("qwen2", False, dict(tie_word_embeddings=True)),
    ("llama", False, dict(attention_bias=True, mlp_bias=True)),
    ("qwen3", False, dict(head_dim=24)),
    ("qwen2", True, dict(num_labels=2)),
])
def test_round_trip_is_bit_identical_and_reloads(tmp_path, model_type, token_classification, overrides):
    hf = tiny_model(model_type, token_classification=token_classification, **overrides)
    src = save_tiny(hf, tmp_path / "hf", max_shard_size="60KB")  # several shards + an index
    assert (src / "model.safetensors.index.json").exists()
    (src / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 256}))
    jaxmath.convert_hf_to_jax(src, tmp_path / "ckpt")
    out = jaxmath.export_to_hf(tmp_path / "ckpt", tmp_path / "out", max_shard_size="60KB")

    before, after = all_tensors(src), all_tensors(out)
    assert set(after) == set(before)
    for name, value in before.items():
        assert after[name].dtype == value.dtype and np.array_equal(after[name], value), name
    original = json.loads((src / "config.json").read_text())
    exported = json.loads((out / "config.json").read_text())
    assert set(original) <= set(exported)
    for key, value in original.items():
        if key not in ("architectures", "torch_dtype", "dtype"):
            assert exported[key] == value, key
    assert (out / "tokenizer_config.json").exists() and (out / "generation_config.json").exists()
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == set(before)

    auto = transformers.AutoModelForTokenClassification if token_classification else transformers.AutoModelForCausalLM
    reloaded = auto.from_pretrained(out).eval()
    ids, mask = left_padded_batch()
    np.testing.assert_array_equal(hf_logits(reloaded, ids, mask), hf_logits(hf, ids, mask))


def test_bfloat16_conversion_round_trip(tmp_path):
    hf = tiny_model("qwen2").to(dtype=__import__("torch").bfloat16)
    src = save_tiny(hf, tmp_path / "hf")
    jaxmath.convert_hf_to_jax(src, tmp_path / "ckpt")  # keeps the source dtype
    model = jaxmath.from_pretrained(tmp_path / "ckpt", dtype="bfloat16")
    assert model.model.embed_tokens[...].dtype == jnp.bfloat16
    out = jaxmath.export_to_hf(tmp_path / "ckpt", tmp_path / "out")
    before, after = all_tensors(src), all_tensors(out)
    for name in before:
        assert str(after[name].dtype) == "bfloat16" and np.array_equal(after[name], before[name]), name
    assert json.loads((out / "config.json").read_text())["torch_dtype"] == "bfloat16"


def test_export_of_float32_as_bfloat16(tmp_path):
    src = save_tiny(tiny_model("llama"), tmp_path / "hf")
    jaxmath.convert_hf_to_jax(src, tmp_path / "ckpt")
    out = jaxmath.export_to_hf(tmp_path / "ckpt", tmp_path / "out", dtype="bfloat16")
    before, after = all_tensors(src), all_tensors(out)
    for name in before:
        np.testing.assert_array_equal(after[name], before[name].astype(after[name].dtype))
        assert str(after[name].dtype) == "bfloat16"


def test_in_memory_model_export(tmp_path):
    hf = tiny_model("qwen3")
    src = save_tiny(hf, tmp_path / "hf")
    model = jaxmath.from_pretrained(src)
    out = jaxmath.export_to_hf(model, tmp_path / "out", hf_config=json.loads((src / "config.json").read_text()))
    ids, mask = left_padded_batch()
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    np.testing.assert_array_equal(hf_logits(reloaded, ids, mask), hf_logits(hf, ids, mask))


@pytest.fixture()
def hf_dir(tmp_path):
    return save_tiny(tiny_model("qwen2"), tmp_path / "hf", max_shard_size="60KB")


def test_missing_config(hf_dir, tmp_path):
    (hf_dir / "config.json").unlink()
    with pytest.raises(CheckpointError, match="config.json"):
        jaxmath.convert_hf_to_jax(hf_dir, tmp_path / "out")
    assert_nothing_written(tmp_path / "out")


def test_missing_weight_file(hf_dir, tmp_path):
    victim = sorted(hf_dir.glob("model-*.safetensors"))[1]
    victim.unlink()
    with pytest.raises(CheckpointError, match=victim.name):
        jaxmath.convert_hf_to_jax(hf_dir, tmp_path / "out")
    assert_nothing_written(tmp_path / "out")


def test_unknown_model_type(hf_dir, tmp_path):
    config = json.loads((hf_dir / "config.json").read_text())
    config["model_type"] = "gpt2"
    (hf_dir / "config.json").write_text(json.dumps(config))
    with pytest.raises(UnsupportedConfigError, match="gpt2"):
        jaxmath.convert_hf_to_jax(hf_dir, tmp_path / "out")
    assert_nothing_written(tmp_path / "out")


def _rewrite_tensors(hf_dir: Path, edit) -> None:
    """Collapse the checkpoint into one file after `edit(tensors)` changes its tensor dict."""
    from safetensors.numpy import save_file
    tensors = all_tensors(hf_dir)
    edit(tensors)
    for file in hf_dir.glob("model*.safetensors*"):
        file.unlink()
    save_file(tensors, str(hf_dir / "model.safetensors"), metadata={"format": "pt"})


def test_missing_tensor(hf_dir, tmp_path):
    _rewrite_tensors(hf_dir, lambda t: t.pop("model.layers.1.mlp.up_proj.weight"))
    with pytest.raises(CheckpointError, match=r"model\.layers\.1\.mlp\.up_proj\.weight"):
        jaxmath.convert_hf_to_jax(hf_dir, tmp_path / "out")
    assert_nothing_written(tmp_path / "out")


def test_tensor_of_wrong_shape(hf_dir, tmp_path):
    def shrink(t):
        t["model.layers.0.self_attn.k_proj.weight"] = t["model.layers.0.self_attn.k_proj.weight"][:-1]
    _rewrite_tensors(hf_dir, shrink)
    with pytest.raises(CheckpointError, match=r"k_proj\.weight.*shape"):
        jaxmath.convert_hf_to_jax(hf_dir, tmp_path / "out")
    assert_nothing_written(tmp_path / "out")


def test_unexpected_tensor(hf_dir, tmp_path):
    def add(t):
        t["model.layers.0.self_attn.mystery.weight"] = np.zeros(3, np.float32)
    _rewrite_tensors(hf_dir, add)
    with pytest.raises(CheckpointError, match="mystery"):
        jaxmath.convert_hf_to_jax(hf_dir, tmp_path / "out")
    assert_nothing_written(tmp_path / "out")


def test_truncated_safetensors_file(hf_dir, tmp_path):
    victim = sorted(hf_dir.glob("model-*.safetensors"))[0]
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=victim.name):
        jaxmath.convert_hf_to_jax(hf_dir, tmp_path / "out")
    assert_nothing_written(tmp_path / "out")


def test_existing_destination_is_kept(hf_dir, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    with pytest.raises(FileExistsError):
        jaxmath.convert_hf_to_jax(hf_dir, out)
    assert (out / "precious.txt").read_text() == "keep me"


@pytest.mark.slow
def test_command_line_scripts(hf_dir, tmp_path):
    run = lambda *args: subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=ROOT)  # noqa
    for script in ("convert/hf_to_jax.py", "convert/jax_to_hf.py"):
        assert "usage" in run(script, "--help").stdout
    done = run("convert/hf_to_jax.py", "--hf", str(hf_dir), "--out", str(tmp_path / "ckpt"), "--dtype", "bfloat16")
    assert done.returncode == 0, done.stderr
    done = run("convert/jax_to_hf.py", "--ckpt", str(tmp_path / "ckpt"), "--out", str(tmp_path / "out"),
               "--max-shard-size", "50KB")
    assert done.returncode == 0, done.stderr
    assert len(list((tmp_path / "out").glob("model-*.safetensors"))) > 1
    failed = run("convert/hf_to_jax.py", "--hf", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x"))
    assert failed.returncode == 1 and "nowhere" in failed.stderr


@pytest.mark.parametrize("tied", [False, True])
def test_a_causal_lm_loads_under_a_fresh_classification_head(tmp_path, tied):
    """The PRM's starting point: the LM's decoder verbatim (HF or jaxmath directory), a new 2-label head."""
    import torch

    hf = tiny_model("qwen2", tie_word_embeddings=tied)
    src = save_tiny(hf, tmp_path / "hf")
    jaxmath.convert_hf_to_jax(src, tmp_path / "jax")
    ids, mask = left_padded_batch()
    with torch.no_grad():
        hidden = hf.model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                          position_ids=torch.tensor(np.clip(mask.cumsum(1) - 1, 0, None))).last_hidden_state.numpy()
    real = mask.astype(bool)
    for source in (src, tmp_path / "jax"):
        model = jaxmath.from_pretrained(source, num_labels=2)
        assert type(model).__name__ == "TokenClassifier" and model.config.num_labels == 2
        np.testing.assert_allclose(np.asarray(model.model(ids, attention_mask=mask))[real], hidden[real], atol=1e-5)
        assert model.score[...].shape == (2, 64) and not np.asarray(model.score_bias[...]).any()
        assert 0.01 < float(np.std(np.asarray(model.score[...]))) < 0.03  # normal(0.02), as transformers inits
    out = jaxmath.export_to_hf(model, tmp_path / "out", hf_config=hf.config.to_dict())
    reloaded = transformers.AutoModelForTokenClassification.from_pretrained(out).eval()
    np.testing.assert_allclose(hf_logits(reloaded, ids, mask)[real], np.asarray(model(ids, attention_mask=mask))[real],
                               atol=1e-4)
    with pytest.raises(ValueError, match="num_labels=0"):
        jaxmath.from_pretrained(out, num_labels=0)


def test_import_casts_float32_to_bfloat16_like_torch(tmp_path):
    import torch
    hf = tiny_model("llama")
    src = save_tiny(hf, tmp_path / "hf", max_shard_size="60KB")
    jaxmath.convert_hf_to_jax(src, tmp_path / "ckpt", dtype="bfloat16")
    out = jaxmath.export_to_hf(tmp_path / "ckpt", tmp_path / "out")
    after = all_tensors(out)
    for name, weight in hf.state_dict().items():
        expected = weight.detach().to(torch.bfloat16).view(torch.int16).numpy()
        assert str(after[name].dtype) == "bfloat16" and np.array_equal(after[name].view(np.int16), expected), name


def test_version_1_directory_is_refused_clearly(hf_dir, tmp_path):
    ckpt = jaxmath.convert_hf_to_jax(hf_dir, tmp_path / "ckpt")
    marker = json.loads((ckpt / "jaxmath.json").read_text())
    (ckpt / "jaxmath.json").write_text(json.dumps({**marker, "version": 1}))
    for load in (lambda: jaxmath.from_pretrained(ckpt), lambda: jaxmath.export_to_hf(ckpt, tmp_path / "out")):
        with pytest.raises(CheckpointError, match=r"jaxmath.json: jaxmath model directory version 1.*convert"):
            load()


def test_outputs_are_as_readable_as_any_new_directory(hf_dir, tmp_path):
    import os
    umask = os.umask(0o022)
    os.umask(umask)
    ckpt = jaxmath.convert_hf_to_jax(hf_dir, tmp_path / "ckpt")
    out = jaxmath.export_to_hf(ckpt, tmp_path / "out")
    for path in (ckpt, out, *out.iterdir()):
        expected = (0o777 if path.is_dir() else 0o666) & ~umask
        assert path.stat().st_mode & 0o777 == expected, path


def test_export_of_a_directory_that_disagrees_with_its_config_names_the_parameter(hf_dir, tmp_path):
    ckpt = jaxmath.convert_hf_to_jax(hf_dir, tmp_path / "ckpt")
    marker = json.loads((ckpt / "jaxmath.json").read_text())
    marker["model_config"]["intermediate_size"] += 8
    (ckpt / "jaxmath.json").write_text(json.dumps(marker))
    with pytest.raises(CheckpointError, match=r"ckpt/params: model/layers/mlp/\w+_proj: "
                                              r"got float32\[2, 112, 64\], expected float32\[2, 120, 64\]"):
        jaxmath.export_to_hf(ckpt, tmp_path / "out")
    assert_nothing_written(tmp_path / "out")
