"""Streaming checkpoint I/O: the safetensors writer, parameter sources saved one at a time, one-ahead
prefetching, and a mapping table whose layouts are views (conversion copies, never transposes)."""
import json
import threading
import weakref

import ml_dtypes
import numpy as np
import orbax.checkpoint as ocp
import pytest
from safetensors import safe_open
from safetensors.numpy import load_file

from jaxmath.checkpoint.convert import expected_shapes, hf_view, prefetched
from jaxmath.checkpoint.hf_io import TensorSpec, write_safetensors_shards
from jaxmath.checkpoint.mapping import rules_for
from jaxmath.checkpoint.orbax_io import HostArraySource, restore_leaf, save_params
from jaxmath.models.config import ModelConfig


class LiveCounter:
    """Counts arrays handed out that are still alive (weakref finalizers), and the most alive at once."""

    def __init__(self):
        self.live = self.peak = 0

    def track(self, array: np.ndarray) -> np.ndarray:
        self.live += 1
        self.peak = max(self.peak, self.live)
        weakref.finalize(array, self._release)
        return array

    def _release(self):
        self.live -= 1


def test_safetensors_shards_stream_in_planned_order(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {"a": rng.standard_normal((3, 5)).astype(np.float32),
              "b": rng.standard_normal((40,)).astype(ml_dtypes.bfloat16),
              "big": rng.standard_normal((64, 8)).astype(np.float16),  # 1024 bytes > the shard limit
              "c": rng.standard_normal((2, 3, 4)).astype(np.float32)}
    specs = [TensorSpec(n, a.shape, a.dtype) for n, a in arrays.items()]
    counter = LiveCounter()
    write_safetensors_shards(tmp_path, specs, ((n, counter.track(a.copy())) for n, a in arrays.items()),
                             max_shard_bytes=150)
    assert counter.peak == 1  # each tensor is written as it arrives, none is buffered
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert index["metadata"]["total_size"] == sum(a.nbytes for a in arrays.values())
    # a (60 B) + b (80 B) fit under 150 B; big is alone; c starts a new shard.
    files = sorted(set(index["weight_map"].values()))
    shards = [sorted(n for n, f in index["weight_map"].items() if f == file) for file in files]
    assert shards == [["a", "b"], ["big"], ["c"]]
    for file in files:
        header_length = int.from_bytes((tmp_path / file).read_bytes()[:8], "little")
        assert (8 + header_length) % 8 == 0  # data starts 8-byte aligned, as safetensors writes it
        with safe_open(tmp_path / file, framework="np") as handle:
            assert handle.metadata() == {"format": "pt"}
        for name, value in load_file(tmp_path / file).items():
            assert value.dtype == arrays[name].dtype and np.array_equal(value, arrays[name]), name


def test_safetensors_writer_rejects_tensors_out_of_plan(tmp_path):
    specs = [TensorSpec("a", (2,), np.dtype(np.float32)), TensorSpec("b", (2,), np.dtype(np.float32))]
    with pytest.raises(ValueError, match="expected tensor a"):
        write_safetensors_shards(tmp_path, specs, [("b", np.zeros(2, np.float32))], 1 << 20)
    with pytest.raises(ValueError, match=r"expected tensor b \[2\] float32, got b \[3\]"):
        write_safetensors_shards(tmp_path, specs, [("a", np.zeros(2, np.float32)), ("b", np.zeros(3, np.float32))],
                                 1 << 20)


def test_sources_are_saved_one_at_a_time_and_restore_as_plain_arrays(tmp_path):
    rng = np.random.default_rng(1)
    arrays = {f"p{k}": rng.standard_normal((8 + k, 16)).astype(ml_dtypes.bfloat16) for k in range(6)}
    counter = LiveCounter()
    sources = {name: HostArraySource(a.shape, a.dtype, lambda out, a=a: counter.track(a.copy()))
               for name, a in arrays.items()}
    save_params(tmp_path / "params", {"group": sources, "plain": np.arange(4, dtype=np.float32)})
    assert counter.peak <= 2  # one being written, the next one being produced
    restored = ocp.StandardCheckpointer().restore((tmp_path / "params").absolute())
    assert np.array_equal(restored["plain"], np.arange(4, dtype=np.float32))
    for name, value in arrays.items():
        assert restored["group"][name].dtype == value.dtype and np.array_equal(restored["group"][name], value)
    one = restore_leaf(tmp_path / "params", ("group", "p3"))
    assert isinstance(one, np.ndarray) and np.array_equal(one, arrays["p3"])


def test_sources_filling_recycled_buffers_are_saved_intact(tmp_path):
    rng = np.random.default_rng(2)
    arrays = {f"p{k}": rng.standard_normal((64 - k, 256)).astype(np.float32) for k in range(8)}
    buffers = set()

    def fill(out, a):
        buffers.add(out.base.ctypes.data)
        out[...] = a
        return out

    save_params(tmp_path / "params", {n: HostArraySource(a.shape, a.dtype, lambda out, a=a: fill(out, a))
                                      for n, a in arrays.items()})
    assert len(buffers) == 2  # the two scratch buffers, taken in turn
    restored = ocp.StandardCheckpointer().restore((tmp_path / "params").absolute())
    for name, value in arrays.items():  # no buffer was refilled before its write had finished
        assert np.array_equal(restored[name], value), name


def test_source_with_wrong_shape_fails(tmp_path):
    bad = HostArraySource((4,), np.dtype(np.float32), lambda out: np.zeros(5, np.float32), name="x.weight")
    with pytest.raises(Exception, match=r"x\.weight: got float32\[5\], expected float32\[4\]"):
        save_params(tmp_path / "params", {"x": bad})


def test_prefetch_computes_one_ahead():
    counter, started = LiveCounter(), [threading.Event() for _ in range(5)]

    def loader(k):
        def load():
            started[k].set()
            return counter.track(np.full(3, k))
        return load

    seen = []
    for value in prefetched([loader(k) for k in range(5)]):
        k = int(value[0])
        if k + 1 < 5:  # the next one loads while this one is in use
            assert started[k + 1].wait(timeout=30)
        seen.append(k)
    assert seen == list(range(5)) and counter.peak <= 2


@pytest.mark.parametrize("overrides", [
    dict(model_type="qwen2", qkv_bias=True, tie_word_embeddings=False),
    dict(model_type="llama", o_bias=True, mlp_bias=True, num_labels=3),
    dict(model_type="qwen3", qk_norm=True, head_dim=24),
])
def test_every_layout_is_a_view_both_ways(overrides):
    config = ModelConfig(**{**dict(vocab_size=32, hidden_size=48, intermediate_size=80, num_layers=2, num_heads=4,
                                   num_kv_heads=2, head_dim=12), **overrides})
    shapes = expected_shapes(config)
    for rule in rules_for(config):
        jax_shape = shapes[rule.jax_path][1:] if rule.stacked else shapes[rule.jax_path]
        array = np.arange(np.prod(jax_shape), dtype=np.float32).reshape(jax_shape)
        hf = hf_view(rule, array, config)  # raises if the layout copies
        assert tuple(hf.shape) == tuple(rule.layout.hf_shape(jax_shape))
        back = rule.layout.to_jax(hf, config)
        assert np.shares_memory(back, array) and np.array_equal(back, array), rule.jax_path
