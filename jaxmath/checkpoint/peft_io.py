"""PEFT LoRA adapter directories (adapter_config.json + adapter_model.safetensors) <-> jaxmath LoRA parameters.

PEFT keeps each adapted nn.Linear's factors as `lora_A.weight` [rank, in] and `lora_B.weight` [out, rank] under
`base_model.model.<HF module name>`, and adds (lora_alpha / r) * B A x to the base output. jaxmath's factors are
A [in..., rank] and B [rank, out...] (stacked over layers on axis 0) with the same scale, so a conversion
flattens the head dims the way the HF <-> JAX mapping table does for the kernel and transposes. Tensor names
come from that table (`mapping.rules_for`): the kernel's HF name with `.weight` -> `.lora_A.weight`. A token
classifier (PRM) also carries its head, as PEFT's `modules_to_save` does for TOKEN_CLS adapters.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np
from safetensors import safe_open

from jaxmath.checkpoint.convert import PathTuple, expected_shapes, to_host
from jaxmath.checkpoint.hf_io import (SINGLE_FILE, CheckpointError, TensorSpec, atomic_directory, numpy_dtype,
                                      write_safetensors_shards)
from jaxmath.checkpoint.mapping import Rule, rules_for
from jaxmath.checkpoint.orbax_io import leaf
from jaxmath.models.config import LORA_TARGETS, ModelConfig
from jaxmath.models.transformer import HEAD_PARAMS

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
PREFIX = "base_model.model."
HEAD_MODULES = ["classifier", "score"]  # what PEFT itself saves for TOKEN_CLS adapters
# adapter_config.json keys whose non-default values change the math: jaxmath refuses them rather than
# loading a different function than PEFT would compute.
UNSUPPORTED = {"use_rslora": False, "use_dora": False, "fan_in_fan_out": False, "bias": "none",
               "lora_bias": False, "layers_to_transform": None, "rank_pattern": {}, "alpha_pattern": {},
               "layer_replication": None, "target_parameters": None, "trainable_token_indices": None,
               "use_qalora": False, "alora_invocation_tokens": None, "exclude_modules": None}


def adapter_rules(config: ModelConfig) -> list[Rule]:
    """The mapping rules of the kernels that carry LoRA factors in a model of `config`."""
    return [rule for rule in rules_for(config) if config.has_lora(rule.jax_path[-1])]


def head_rules(config: ModelConfig) -> list[Rule]:
    """A token classifier's head (its base checkpoint has none, or a random one): saved with the adapter."""
    return [rule for rule in rules_for(config) if config.num_labels > 0 and rule.jax_path[0] in HEAD_PARAMS]


def _factor_path(rule: Rule, factor: str) -> PathTuple:
    return (*rule.jax_path[:-1], f"{rule.jax_path[-1]}_lora_{factor}")


def _peft_name(hf_name: str, factor: str) -> str:
    return PREFIX + hf_name.removesuffix(".weight") + f".lora_{factor.upper()}.weight"


def _names(config: ModelConfig) -> Iterator[tuple[PathTuple, str, int | None, str]]:
    """(jaxmath path, PEFT tensor name, layer or None, factor "a" / "b" / "head") for every adapter tensor."""
    for rule in adapter_rules(config):
        for factor in ("a", "b"):
            for i, name in enumerate(rule.hf_names(config)):
                yield _factor_path(rule, factor), _peft_name(name, factor), i if rule.stacked else None, factor
    for rule in head_rules(config):
        yield rule.jax_path, PREFIX + rule.hf_name, None, "head"


def to_peft(factor: str, array: np.ndarray) -> np.ndarray:
    """One layer's jaxmath factor in PEFT's layout: A [in..., r] -> [r, in]; B [r, out...] -> [out, r]."""
    if factor == "a":
        return array.reshape(-1, array.shape[-1]).T
    if factor == "b":
        return array.reshape(array.shape[0], -1).T
    return array


def from_peft(factor: str, tensor: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """The inverse of `to_peft`: a PEFT tensor as one layer's jaxmath factor of `shape`."""
    return tensor.T.reshape(shape) if factor in ("a", "b") else tensor.reshape(shape)


def adapter_config(config: ModelConfig, base_model: str | None) -> dict[str, Any]:
    """adapter_config.json for the LoRA settings of `config` (PEFT's own keys; PEFT fills any others)."""
    token_classifier = config.num_labels > 0
    return {"peft_type": "LORA", "task_type": "TOKEN_CLS" if token_classifier else "CAUSAL_LM",
            "base_model_name_or_path": base_model, "revision": None, "r": config.lora_rank,
            "lora_alpha": config.lora_alpha, "lora_dropout": config.lora_dropout,
            "target_modules": sorted(config.lora_targets),
            "modules_to_save": HEAD_MODULES if token_classifier else None,
            "init_lora_weights": True, "inference_mode": True, "layers_pattern": None, **UNSUPPORTED}


def save_adapter(out: str | Path, params: Mapping[str, Any], config: ModelConfig, base_model: str | None = None,
                 overwrite: bool = False) -> Path:
    """Write the LoRA factors of `params` (a pure dict of host or device arrays) as a PEFT adapter directory,
    atomically, in the parameter dtype. `base_model` is recorded as base_model_name_or_path."""
    if not config.lora_rank:
        raise ValueError("save_adapter: the model has no LoRA adapters (lora_rank is 0)")
    dtype = numpy_dtype(config.param_dtype)
    entries = list(_names(config))
    hosts = {path: to_host(leaf(params, path)) for path in dict.fromkeys(p for p, *_ in entries)}
    tensors = [(name, to_peft(factor, hosts[path] if layer is None else hosts[path][layer]).astype(dtype))
               for path, name, layer, factor in entries]
    specs = [TensorSpec(name, tuple(t.shape), dtype) for name, t in tensors]
    out = Path(out)
    with atomic_directory(out, overwrite=overwrite) as tmp:
        write_safetensors_shards(tmp, specs, ((name, np.ascontiguousarray(t)) for name, t in tensors),
                                 max_shard_bytes=1 << 62)  # one file, named as PEFT expects below
        (tmp / SINGLE_FILE).rename(tmp / WEIGHTS_FILE)
        (tmp / CONFIG_FILE).write_text(json.dumps(adapter_config(config, base_model), indent=2) + "\n")
    return out


def read_adapter_config(path: str | Path) -> dict[str, Any]:
    """adapter_config.json of a PEFT LoRA adapter that jaxmath computes exactly; anything else is an error
    naming the key."""
    file = Path(path) / CONFIG_FILE
    try:
        raw = json.loads(file.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{file}: not a readable PEFT adapter config ({err})") from err
    if not isinstance(raw, dict) or raw.get("peft_type") != "LORA":
        raise CheckpointError(f"{file}: peft_type is {raw.get('peft_type') if isinstance(raw, dict) else raw!r}; "
                              "only LORA adapters can be loaded")
    for key, default in UNSUPPORTED.items():
        if raw.get(key) is not None and raw[key] != default:
            raise CheckpointError(f"{file}: {key}={raw[key]!r} is not supported (jaxmath computes plain LoRA: "
                                  f"{key}={default!r})")
    targets = raw.get("target_modules")
    if isinstance(targets, str) or not targets or not set(targets) <= set(LORA_TARGETS):
        raise CheckpointError(f"{file}: target_modules={targets!r}; expected a list of module names from "
                              f"{list(LORA_TARGETS)}")
    for key in ("r", "lora_alpha"):
        if not isinstance(raw.get(key), (int, float)) or isinstance(raw.get(key), bool) or raw[key] <= 0:
            raise CheckpointError(f"{file}: {key}={raw.get(key)!r} must be a positive number")
    return raw


def lora_options(path: str | Path) -> dict[str, Any]:
    """The ModelConfig LoRA fields (lora_rank, lora_alpha, lora_dropout, lora_targets) of an adapter directory."""
    raw = read_adapter_config(path)
    if int(raw["r"]) != raw["r"]:
        raise CheckpointError(f"{Path(path) / CONFIG_FILE}: r={raw['r']!r} must be an integer")
    return {"lora_rank": int(raw["r"]), "lora_alpha": float(raw["lora_alpha"]),
            "lora_dropout": float(raw.get("lora_dropout") or 0.0),
            "lora_targets": tuple(t for t in LORA_TARGETS if t in raw["target_modules"])}


def load_adapter(path: str | Path, config: ModelConfig) -> dict[PathTuple, np.ndarray]:
    """The adapter's tensors as jaxmath parameters {path: array in the parameter dtype} for a model of `config`
    (whose LoRA settings are the adapter's, see `lora_options`); every tensor is checked for presence and shape,
    and tensors the model has no place for are an error."""
    file = Path(path) / WEIGHTS_FILE
    if not file.is_file():
        raise CheckpointError(f"{file}: adapter weights are missing")
    shapes, dtype = expected_shapes(config), numpy_dtype(config.param_dtype)
    entries = list(_names(config))
    out = {p: np.empty(shapes[p], dtype) for p in dict.fromkeys(p for p, *_ in entries)}
    try:
        with safe_open(file, framework="np") as handle:
            stored = set(handle.keys())
            for jax_path, name, layer, factor in entries:
                if name not in stored:
                    raise CheckpointError(f"{file}: tensor {name!r} is missing")
                target = out[jax_path] if layer is None else out[jax_path][layer]
                tensor = handle.get_tensor(name)
                want = to_peft(factor, target).shape
                if tuple(tensor.shape) != tuple(want):
                    raise CheckpointError(f"{file}: tensor {name!r} has shape {list(tensor.shape)}, expected "
                                          f"{list(want)} for this base model")
                target[...] = from_peft(factor, tensor, target.shape)
    except CheckpointError:
        raise
    except Exception as err:  # safetensors raises its own types for corrupt files
        raise CheckpointError(f"{file}: cannot read adapter weights ({err})") from err
    unexpected = sorted(stored - {name for _, name, _, _ in entries})
    if unexpected:
        raise CheckpointError(f"{file}: tensor(s) this model has no place for: {unexpected[:5]}"
                              f"{' ...' if len(unexpected) > 5 else ''}")
    return out
