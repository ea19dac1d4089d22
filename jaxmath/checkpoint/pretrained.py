"""Load models from HF or jaxmath directories, save them as Orbax model checkpoints, export them to HF.

A jaxmath model directory holds `jaxmath.json` (format marker and version, model config), `hf_config.json`
(the source config.json verbatim, so an export keeps every original key), `params/` (an Orbax PyTree
checkpoint of the parameters, see `orbax_io`) and `hf_files/` (tokenizer and generation files carried
along from the source). Format version 2 stores kernels [out..., in...] (HF layout); version 1 ([in, out])
directories are refused with a message saying how to redo them.
"""
from __future__ import annotations

import dataclasses
import itertools
import json
import shutil
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx, traverse_util
from jax.sharding import Mesh, SingleDeviceSharding

from jaxmath.checkpoint import peft_io
from jaxmath.checkpoint.convert import (PathTuple, expected_shapes, hf_sources, iter_hf_to_jax,
                                        model_config_from_hf, source_dtype, write_hf_checkpoint)
from jaxmath.checkpoint.hf_io import CheckpointError, HFCheckpointReader, atomic_directory, numpy_dtype
from jaxmath.checkpoint.orbax_io import nest, restored_sources, save_params
from jaxmath.models.config import ModelConfig
from jaxmath.models.lora import is_lora_path
from jaxmath.models.transformer import HEAD_PARAMS, CausalLM, TokenClassifier, build_model, init_params
from jaxmath.parallel import named_sharding

FORMAT = "jaxmath.model"
VERSION = 2  # 2: kernels [out..., in...] (HF layout); 1: [in..., out...]
MARKER = "jaxmath.json"
RUNTIME_FIELDS = ("dtype", "param_dtype", "remat", "attention_impl")
LORA_FIELDS = ("lora_rank", "lora_alpha", "lora_dropout", "lora_targets")
Model = CausalLM | TokenClassifier


def is_jaxmath_dir(path: str | Path) -> bool:
    return (Path(path) / MARKER).is_file()


def _abstract(config: ModelConfig) -> tuple[nnx.GraphDef, nnx.State, dict[PathTuple, nnx.Variable]]:
    abstract = nnx.eval_shape(lambda: build_model(config))
    graphdef, state = nnx.split(abstract)
    flat = {tuple(str(k) for k in path): v for path, v in nnx.to_flat_state(state)}
    return graphdef, state, flat


def _sharding(variable: nnx.Variable, mesh: Mesh | None) -> jax.sharding.Sharding:
    if mesh is None:
        return SingleDeviceSharding(jax.devices()[0])
    return named_sharding(mesh, variable.logical_axes, variable.get_value().shape)


def _place(host: np.ndarray, sharding: jax.sharding.Sharding) -> jax.Array:
    """Put a host array onto devices; each device (and host) only materialises its own shard."""
    if isinstance(host, jax.Array) and host.sharding == sharding:
        return host
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def _assemble(config: ModelConfig, arrays: Iterable[tuple[PathTuple, Any]], mesh: Mesh | None,
              new_head: bool = False) -> Model:
    """A model from (path, host array) pairs. Freshly initialised: LoRA adapters the source lacks, and with
    `new_head` the output head (a causal LM's decoder under a new classification head)."""
    graphdef, state, variables = _abstract(config)
    placed = {}
    for path, host in arrays:
        placed[path] = _place(host, _sharding(variables[path], mesh))
    fresh = {p for p in variables if new_head and p[0] in HEAD_PARAMS and p not in placed}
    if config.lora_rank and not any(is_lora_path(p) for p in placed):
        fresh |= {p for p in variables if is_lora_path(p)}
    if fresh:
        for path, value in traverse_util.flatten_dict(init_params(config, fresh.__contains__)).items():
            placed[path] = _place(np.asarray(value), _sharding(variables[path], mesh))
    missing = sorted("/".join(p) for p in variables if p not in placed)
    if missing:
        raise CheckpointError(f"parameters missing after loading: {missing[:5]}")
    nnx.replace_by_pure_dict(state, nest(placed))
    return nnx.merge(graphdef, state)


def _reheaded(config: ModelConfig, num_labels: int | None) -> tuple[ModelConfig, bool]:
    """(target config, whether its head is new) for loading a checkpoint of `config` with `num_labels`."""
    if num_labels is None or num_labels == config.num_labels:
        return config, False
    if num_labels <= 0:
        raise ValueError(f"num_labels={num_labels}: a checkpoint can only be loaded under a classification "
                         "head (num_labels > 0)")
    return config.replace(num_labels=num_labels), True


def _without_head(arrays: Iterable[tuple[PathTuple, Any]]) -> Iterator[tuple[PathTuple, Any]]:
    return ((path, array) for path, array in arrays if path[0] not in HEAD_PARAMS)


def _runtime(dtype: str, param_dtype: str | None, runtime: Mapping[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(runtime) - set(RUNTIME_FIELDS) - set(LORA_FIELDS))
    if unknown:
        raise TypeError(f"from_pretrained: unknown option(s) {unknown}; expected some of "
                        f"{RUNTIME_FIELDS + LORA_FIELDS}")
    return {"dtype": dtype, "param_dtype": param_dtype or dtype, **runtime}


def from_pretrained(path: str | Path, dtype: str = "float32", mesh: Mesh | None = None,
                    param_dtype: str | None = None, num_labels: int | None = None, adapter: str | Path | None = None,
                    **runtime: Any) -> Model:
    """Load a model from a HF checkpoint directory or a jaxmath model directory.

    `dtype` is the compute dtype and, unless `param_dtype` is given, the parameter dtype. With a mesh,
    every parameter is placed straight onto it per the logical-axis rules (each device holds its shard).
    `num_labels` different from the checkpoint's (0 for a causal LM) loads its decoder under a freshly
    initialised classification head of that many labels (a PRM started from a language model).
    `adapter`: a PEFT LoRA adapter directory whose factors (and settings) are loaded onto this base, to
    evaluate base + adapter or to continue training it.
    Extra options: remat, attention_impl, and lora_rank / lora_alpha / lora_dropout / lora_targets to add
    freshly initialised LoRA adapters to a checkpoint that has none.
    """
    path = Path(path)
    if adapter is not None:
        runtime = _with_adapter_options(runtime, Path(adapter))
    options = _runtime(dtype, param_dtype, runtime)
    if is_jaxmath_dir(path):
        return _load_jaxmath(path, mesh, options, num_labels, adapter)
    reader = HFCheckpointReader(path)
    source = model_config_from_hf(reader.config, **options)
    config, new_head = _reheaded(source, num_labels)
    arrays = iter_hf_to_jax(reader, source, source.param_dtype)
    return _assemble(config, _adapted(_without_head(arrays) if new_head else arrays, adapter, config), mesh, new_head)


def _with_adapter_options(runtime: Mapping[str, Any], adapter: Path) -> dict[str, Any]:
    """`runtime` plus the adapter's LoRA settings; LoRA options given as well must agree with them."""
    lora = peft_io.lora_options(adapter)
    clash = {k: runtime[k] for k in lora if k in runtime and runtime[k] != lora[k]}
    if clash:
        raise CheckpointError(f"{adapter}: the adapter's LoRA settings {lora} differ from the options given {clash}")
    return {**runtime, **lora}


def _adapted(arrays: Iterable[tuple[PathTuple, Any]], adapter: str | Path | None,
             config: ModelConfig) -> Iterable[tuple[PathTuple, Any]]:
    """The base arrays followed by the adapter's (its LoRA factors, and a token classifier's head)."""
    if adapter is None:
        return arrays
    return itertools.chain(arrays, peft_io.load_adapter(adapter, config).items())


def read_marker(path: Path) -> dict[str, Any]:
    try:
        marker = json.loads((path / MARKER).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{path / MARKER}: unreadable ({err})") from err
    if marker.get("format") != FORMAT:
        raise CheckpointError(f"{path / MARKER}: format {marker.get('format')!r} is not {FORMAT!r}")
    if marker.get("version") != VERSION:
        raise CheckpointError(
            f"{path / MARKER}: jaxmath model directory version {marker.get('version')!r}, this jaxmath reads "
            f"version {VERSION} (kernels in HF [out, in] layout). Convert the source HF checkpoint again, or "
            "export this directory to HF with the jaxmath version that wrote it and convert that")
    return marker


def _load_jaxmath(path: Path, mesh: Mesh | None, options: Mapping[str, Any], num_labels: int | None = None,
                  adapter: str | Path | None = None) -> Model:
    marker = read_marker(path)
    saved = ModelConfig(**{**marker["model_config"], **{k: v for k, v in options.items() if k in RUNTIME_FIELDS}})
    config = saved.replace(**{k: v for k, v in options.items() if k in LORA_FIELDS})
    if saved.lora_rank and (config != saved or adapter is not None):
        raise CheckpointError(f"{path}: the checkpoint has LoRA adapters (rank {saved.lora_rank}); "
                              "its LoRA settings cannot be changed, nor another adapter loaded onto it")
    _, _, variables = _abstract(saved)
    target = nest({p: jax.ShapeDtypeStruct(v.get_value().shape, config.weight_dtype, sharding=_sharding(v, mesh))
                    for p, v in variables.items()})
    params_dir = _params_dir(path)
    try:
        restored = ocp.StandardCheckpointer().restore(params_dir, target)
    except Exception as err:
        raise CheckpointError(f"{params_dir}: cannot restore parameters ({err})") from err
    arrays = traverse_util.flatten_dict(restored).items()
    config, new_head = _reheaded(config, num_labels)
    return _assemble(config, _adapted(_without_head(arrays) if new_head else arrays, adapter, config), mesh, new_head)


def _stored_params(path: Path) -> tuple[ModelConfig, dict[str, Any]]:
    """The stored config and a tree of sources that restore each parameter to the host when loaded."""
    marker = read_marker(path)
    dtype = marker["param_dtype"]
    config = ModelConfig(**{**marker["model_config"], "dtype": dtype, "param_dtype": dtype})
    return config, nest(restored_sources(_params_dir(path), expected_shapes(config), numpy_dtype(dtype)))


def _params_dir(path: Path) -> Path:
    params_dir = (path / "params").absolute()
    if not params_dir.is_dir():
        raise CheckpointError(f"{params_dir}: parameter directory is missing")
    return params_dir


def hf_config_of(path: Path) -> dict[str, Any]:
    return json.loads((path / "hf_config.json").read_text())


def save_jaxmath(out: str | Path, params: Mapping[str, Any], config: ModelConfig, hf_config: Mapping[str, Any],
                 side_files: Iterable[Path] = (), overwrite: bool = False) -> Path:
    """Write a jaxmath model directory atomically. `params` is a pure nested dict of host or jax arrays, or of
    `HostArraySource`s, which are produced one at a time while saving."""
    out = Path(out)
    with atomic_directory(out, overwrite=overwrite) as tmp:
        save_params(tmp / "params", params)
        architecture = {k: v for k, v in dataclasses.asdict(config).items() if k not in RUNTIME_FIELDS}
        marker = {"format": FORMAT, "version": VERSION, "param_dtype": config.param_dtype,
                  "model_config": architecture}
        (tmp / MARKER).write_text(json.dumps(marker, indent=2) + "\n")
        (tmp / "hf_config.json").write_text(json.dumps(dict(hf_config), indent=2) + "\n")
        (tmp / "hf_files").mkdir()
        for file in side_files:
            shutil.copy2(file, tmp / "hf_files" / file.name)
    return out


def convert_hf_to_jax(hf_dir: str | Path, out: str | Path, dtype: str | None = None, overwrite: bool = False,
                      progress: bool = False) -> Path:
    """HF checkpoint -> jaxmath model directory (Orbax), streaming tensors; dtype defaults to the source's."""
    reader = HFCheckpointReader(hf_dir)
    dtype = dtype or source_dtype(reader)
    config = model_config_from_hf(reader.config, dtype=dtype, param_dtype=dtype)
    sources = nest(hf_sources(reader, config, dtype, progress))  # read one parameter at a time while saving
    return save_jaxmath(out, sources, config, reader.config, reader.side_files(), overwrite)


def export_to_hf(source: str | Path | Model, out: str | Path, dtype: str | None = None,
                 max_shard_size: str | int = "5GB", hf_config: Mapping[str, Any] | None = None,
                 side_files: Iterable[Path] = (), overwrite: bool = False, progress: bool = False) -> Path:
    """Export a jaxmath model directory (or an in-memory model) to a HF checkpoint directory.

    For an in-memory model, pass the source `hf_config` (config.json dict) so every original key is kept.
    """
    if isinstance(source, (CausalLM, TokenClassifier)):
        config, params = source.config, nnx.to_pure_dict(nnx.state(source, nnx.Param))
        if hf_config is None:
            raise ValueError("export_to_hf: an in-memory model needs hf_config (its source config.json dict)")
        side = list(side_files)
    else:
        path = Path(source)
        if not is_jaxmath_dir(path):
            raise CheckpointError(f"{path}: not a jaxmath model directory (no {MARKER})")
        config, params = _stored_params(path)
        hf_config = hf_config or hf_config_of(path)
        side = sorted((path / "hf_files").glob("*")) + list(side_files)
    return write_hf_checkpoint(out, params, config, hf_config, dtype or config.param_dtype, side,
                               max_shard_size, overwrite, progress)
