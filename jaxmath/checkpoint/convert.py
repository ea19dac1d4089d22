"""HF <-> jaxmath conversion, driven by the one mapping table in `mapping.py`.

HF -> JAX checks every tensor's presence and shape from the safetensors headers alone, so a bad
checkpoint fails before anything is read or written; each parameter is then a source that reads its
tensor(s) from disk straight into the new array (through the layout's HF-shaped view of it, layer by
layer for stacked ones), produced only when it is needed. JAX -> HF streams parameters, one at a time
and one ahead, into size-bounded safetensors shards.
"""
from __future__ import annotations

import functools
import json
import shutil
import types
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, TypeVar

import jax
import numpy as np
from flax import nnx

from jaxmath.checkpoint.hf_io import (CheckpointError, HFCheckpointReader, TensorSpec, atomic_directory,
                                      numpy_dtype, parse_size, write_safetensors_shards)
from jaxmath.checkpoint.mapping import IGNORED_HF_TENSORS, Rule, hf_architecture, rules_for
from jaxmath.checkpoint.orbax_io import HostArraySource, leaf
from jaxmath.models.config import ModelConfig
from jaxmath.models.lora import merge_lora
from jaxmath.models.transformer import build_model
from jaxmath.progress import progress_bar

PathTuple = tuple[str, ...]
T = TypeVar("T")


def is_token_classifier(hf_config: Mapping[str, Any]) -> bool:
    return any(a.endswith("ForTokenClassification") for a in hf_config.get("architectures") or [])


def model_config_from_hf(hf_config: Mapping[str, Any], **runtime: Any) -> ModelConfig:
    """ModelConfig for a HF config dict; a `*ForTokenClassification` checkpoint gets its label count."""
    num_labels = 0
    if is_token_classifier(hf_config):
        num_labels = int(hf_config.get("num_labels") or len(hf_config.get("id2label") or {}) or 2)
    return ModelConfig.from_hf(hf_config, num_labels=num_labels, **runtime)


@functools.lru_cache(maxsize=16)
def expected_shapes(config: ModelConfig) -> Mapping[PathTuple, tuple[int, ...]]:
    """Shape of every parameter of the model for `config`, computed (once per config) without allocating it."""
    abstract = nnx.eval_shape(lambda: build_model(config))
    flat = nnx.to_flat_state(nnx.state(abstract, nnx.Param))
    return types.MappingProxyType({tuple(str(k) for k in path): tuple(v.get_value().shape) for path, v in flat})


def source_dtype(reader: HFCheckpointReader) -> str:
    """The checkpoint's dtype name (from config.json, else the first tensor's safetensors dtype)."""
    named = reader.config.get("torch_dtype") or reader.config.get("dtype")
    if named in ("float32", "bfloat16", "float16"):
        return named
    stored = reader.stored_dtype(reader.names()[0]).name
    return stored if stored in ("float32", "bfloat16", "float16") else "float32"


def validate_hf_checkpoint(reader: HFCheckpointReader, config: ModelConfig,
                           shapes: Mapping[PathTuple, tuple[int, ...]]) -> list[Rule]:
    """Check that every tensor the model needs is present with the right shape, and nothing unknown is."""
    rules = rules_for(config)
    needed: set[str] = set()
    for rule in rules:
        want = tuple(rule.layout.hf_shape(_per_tensor(rule, shapes)))
        for name in rule.hf_names(config):
            needed.add(name)
            got = reader.shape(name)
            if got != want:
                raise CheckpointError(f"{reader.path / reader.weight_map[name]}: tensor {name!r} has shape "
                                      f"{list(got)}, expected {list(want)} for this config.json")
    optional = {"lm_head.weight"} if config.tie_word_embeddings else set()
    unexpected = sorted(n for n in reader.names() if n not in needed and n not in optional
                        and not IGNORED_HF_TENSORS.match(n))
    if unexpected:
        raise CheckpointError(f"{reader.path}: unexpected tensor(s) for a {hf_architecture(config)} model: "
                              f"{unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}")
    return rules


def _per_tensor(rule: Rule, shapes: Mapping[PathTuple, tuple[int, ...]]) -> tuple[int, ...]:
    """JAX shape of one HF tensor of `rule` (one layer's slice when stacked)."""
    shape = shapes[rule.jax_path]
    return shape[1:] if rule.stacked else shape


def hf_view(rule: Rule, array: np.ndarray, config: ModelConfig) -> np.ndarray:
    """`array` (one JAX-layout tensor) seen in its HF layout, as a view: writing it fills `array`."""
    view = rule.layout.to_hf(array, config)
    if not np.may_share_memory(view, array):
        raise AssertionError(f"layout of {'/'.join(rule.jax_path)} must return a view, not a copy")
    return view


def hf_sources(reader: HFCheckpointReader, config: ModelConfig, dtype: str,
               progress: bool = False) -> dict[PathTuple, HostArraySource]:
    """Every parameter as a source that, when loaded, reads its HF tensor(s) straight into a new `dtype` array.

    The checkpoint is validated first; nothing is read until a source is loaded.
    """
    target = numpy_dtype(dtype)
    shapes = expected_shapes(config)
    rules = validate_hf_checkpoint(reader, config, shapes)
    bar = progress_bar(total=sum(len(r.hf_names(config)) for r in rules), desc="HF -> JAX", unit="tensor",
                       quiet=not progress)

    def produce(rule: Rule, out: np.ndarray | None) -> np.ndarray:
        array = np.empty(shapes[rule.jax_path], target) if out is None else out
        for i, name in enumerate(rule.hf_names(config)):
            reader.read_into(name, hf_view(rule, array[i] if rule.stacked else array, config))
            bar.update(1)
        if bar.n == bar.total:
            bar.close()
        return array

    return {rule.jax_path: HostArraySource(shapes[rule.jax_path], target, functools.partial(produce, rule),
                                           name=f"{reader.path}: {rule.hf_name}")
            for rule in rules}


def iter_hf_to_jax(reader: HFCheckpointReader, config: ModelConfig, dtype: str,
                   progress: bool = False) -> Iterator[tuple[PathTuple, np.ndarray]]:
    """Yield (jax_path, numpy array in `dtype`) per parameter, one at a time."""
    for path, source in hf_sources(reader, config, dtype, progress).items():
        yield path, source.load()


def to_host(array: Any) -> np.ndarray:
    """A full numpy copy of a (possibly sharded, possibly multi-host) array; loads a `HostArraySource`."""
    if isinstance(array, HostArraySource):
        return array.load()
    if isinstance(array, jax.Array) and not array.is_fully_addressable:
        from jax.experimental import multihost_utils
        array = multihost_utils.process_allgather(array, tiled=True)
    return np.asarray(array)


def prefetched(loaders: list[Callable[[], T]]) -> Iterator[T]:
    """Results of `loaders` in order, each computed in a background thread while the previous one is used."""
    with ThreadPoolExecutor(1, thread_name_prefix="jaxmath-prefetch") as pool:
        pending = pool.submit(loaders[0]) if loaders else None
        for k in range(len(loaders)):
            value = pending.result()
            pending = pool.submit(loaders[k + 1]) if k + 1 < len(loaders) else None
            yield value
            del value


def hf_tensor_specs(config: ModelConfig, dtype: str) -> list[TensorSpec]:
    """Name, shape and dtype of every HF tensor of the model, in the order `iter_jax_to_hf` yields them."""
    shapes, target = expected_shapes(config), numpy_dtype(dtype)
    return [TensorSpec(name, tuple(rule.layout.hf_shape(_per_tensor(rule, shapes))), target)
            for rule in rules_for(config) for name in rule.hf_names(config)]


def iter_jax_to_hf(params: Mapping[str, Any], config: ModelConfig, dtype: str,
                   progress: bool = False) -> Iterator[tuple[str, np.ndarray]]:
    """Yield (hf_name, numpy array in `dtype`) for every HF tensor of the model; each parameter is fetched
    to the host (or loaded, for a `HostArraySource`) while the previous one is being consumed."""
    target = numpy_dtype(dtype)
    rules = rules_for(config)
    bar = progress_bar(total=sum(len(r.hf_names(config)) for r in rules), desc="JAX -> HF", unit="tensor",
                       quiet=not progress)
    loaders = [functools.partial(to_host, leaf(params, rule.jax_path)) for rule in rules]
    for rule, value in zip(rules, prefetched(loaders)):
        for i, name in enumerate(rule.hf_names(config)):
            yield name, hf_view(rule, value[i] if rule.stacked else value, config).astype(target, copy=False)
            bar.update(1)
    bar.close()


def export_hf_config(hf_config: Mapping[str, Any], config: ModelConfig, dtype: str) -> dict[str, Any]:
    """The source config.json with every original key kept; architecture and dtype set for the export."""
    out = dict(hf_config)
    out["architectures"] = [hf_architecture(config)]
    out["torch_dtype"] = dtype
    if "dtype" in out:
        out["dtype"] = dtype
    if config.num_labels > 0 and "id2label" not in out:
        out["id2label"] = {str(i): f"LABEL_{i}" for i in range(config.num_labels)}
        out["label2id"] = {f"LABEL_{i}": i for i in range(config.num_labels)}
    return out


def write_hf_checkpoint(out: str | Path, params: Mapping[str, Any], config: ModelConfig,
                        hf_config: Mapping[str, Any], dtype: str, side_files: list[Path] = (),
                        max_shard_size: str | int = "5GB", overwrite: bool = False, progress: bool = False) -> Path:
    """Write a HF checkpoint directory atomically: safetensors shards + index, config.json, side files.

    LoRA adapters are merged into their base weights first, so the export is a plain model.
    """
    out = Path(out)
    if config.lora_rank:
        params, config = merge_lora(jax.tree.map(to_host, params), config), config.replace(lora_rank=0)
    with atomic_directory(out, overwrite=overwrite) as tmp:
        write_safetensors_shards(tmp, hf_tensor_specs(config, dtype), iter_jax_to_hf(params, config, dtype, progress),
                                 parse_size(max_shard_size))
        (tmp / "config.json").write_text(json.dumps(export_hf_config(hf_config, config, dtype), indent=2) + "\n")
        for file in side_files:
            shutil.copy2(file, tmp / file.name)
        if not (tmp / "generation_config.json").exists():
            generation = {k: hf_config[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id")
                          if hf_config.get(k) is not None}
            (tmp / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")
    return out
