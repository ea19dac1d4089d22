"""Preflight: before the first step, prove that a run can write what it writes at its end.

A run that trains for hours and then cannot save loses the hours. Before loading any weights the trainer
checks that the output directory is writable and has room for one checkpoint (parameter + optimizer-state
bytes), then writes the end-of-run outputs (the jaxmath model directory and the HF export, with the very
function the run ends with) once for a tiny model of the same family into a temporary directory inside the
output directory, and removes it. A failure raises `PreflightError` naming the path or the library, its
version and the fix.
"""
from __future__ import annotations

import dataclasses
import importlib.metadata
import math
import re
import shutil
import sys
import tempfile
import types
from pathlib import Path
from typing import Any, Callable

import jax
import numpy as np
from flax import nnx

from jaxmath.models.config import ModelConfig
from jaxmath.models.transformer import build_model
from jaxmath.train.run import Run, abstract_state, export_final

# The library a failure in the end-of-run writers is blamed on when no frame of another library raised it:
# both the model directory and the HF export (which reads the model directory back) go through Orbax.
WRITER_LIBRARY = "orbax-checkpoint"
REPORTED_LIBRARIES = ("orbax-checkpoint", "tensorstore", "jax", "flax", "numpy", "safetensors")


class PreflightError(RuntimeError):
    """The run would fail when it writes its outputs; raised before the first step."""


def ensure_writable(out: Path) -> Path:
    """Create the output directory if needed and prove a file can be written in it (mode bits alone do not
    tell: root ignores them, read-only mounts and immutable directories do not show in them)."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".preflight-"):
            pass
    except OSError as err:
        raise PreflightError(f"output directory {out} is not writable ({err}); set output_dir (or --output-dir) "
                             "to a directory this user can write, or fix its permissions") from err
    return out


def checkpoint_bytes(state: Any) -> tuple[int, int]:
    """(parameter bytes, optimizer-state bytes) of a train state of arrays or shape/dtype structs."""
    def total(tree: Any) -> int:
        return sum(leaf.size * leaf.dtype.itemsize for leaf in jax.tree.leaves(tree))
    return total(state.params), total(state.opt_state)


def check_free_space(out: Path, params: int, optimizer: int) -> None:
    """Raise unless the file system of `out` has room for one checkpoint (parameters + optimizer state)."""
    needed, free = params + optimizer, shutil.disk_usage(out).free
    if free < needed:
        raise PreflightError(
            f"{out}: {free} bytes ({_human(free)}) free, one checkpoint needs {needed} bytes ({_human(needed)}: "
            f"parameters {params} + optimizer state {optimizer}); free some space or set output_dir to a larger "
            "disk")


def _human(size: int) -> str:
    """1375496 -> "1.3 MiB"."""
    power = min(3, max(0, (size.bit_length() - 1) // 10))
    return f"{size / 1024**power:.1f} {('B', 'KiB', 'MiB', 'GiB')[power]}"


def tiny_config(config: ModelConfig) -> ModelConfig:
    """A few-kilobyte model of the same family: same type, head, biases, norms, RoPE, LoRA and dtypes."""
    grouped = config.num_heads != config.num_kv_heads
    return config.replace(vocab_size=32, hidden_size=16, intermediate_size=32, num_layers=2,
                          num_heads=2 if grouped else 1, num_kv_heads=1, head_dim=8,
                          lora_rank=min(config.lora_rank, 2),
                          quantize_block_size=math.gcd(config.quantize_block_size, 8))  # divides the tiny dims


def tiny_hf_config(hf_config: dict[str, Any], tiny: ModelConfig) -> dict[str, Any]:
    """The run's config.json with the tiny model's shapes."""
    return {**hf_config, "vocab_size": tiny.vocab_size, "hidden_size": tiny.hidden_size,
            "intermediate_size": tiny.intermediate_size, "num_hidden_layers": tiny.num_layers,
            "num_attention_heads": tiny.num_heads, "num_key_value_heads": tiny.num_kv_heads,
            "head_dim": tiny.head_dim}


def tiny_params(config: ModelConfig, seed: int = 0) -> dict[str, Any]:
    """Random host arrays with the model's parameter tree, shapes and dtypes. Only shapes are traced (building
    the model for real compiles every initialiser: ~15 s even for a tiny model on a busy CPU)."""
    abstract = nnx.to_pure_dict(nnx.state(nnx.eval_shape(lambda: build_model(config))))
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda leaf: (0.02 * rng.standard_normal(leaf.shape)).astype(leaf.dtype), abstract)


def check_export(run: Run, export: Callable[[Run, Any], None]) -> None:
    """Run `export` (the run's end-of-run writer, `export_final`) for a tiny model of the run's family into a temporary
    directory inside the output directory, then remove it; a failure names the library to blame."""
    tiny = tiny_config(run.model_config)
    params = tiny_params(tiny)
    scratch = Path(tempfile.mkdtemp(prefix=".preflight-", dir=run.out))
    try:
        export(dataclasses.replace(run, out=scratch, model_config=tiny,
                                   hf_config=tiny_hf_config(run.hf_config, tiny)), params)
    except Exception as err:
        raise PreflightError(failure_message(err, scratch)) from err
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def check_outputs(run: Run) -> None:
    """Before the first step: room for one checkpoint, and the end-of-run model directory and HF export
    written once for a tiny model (see the module docstring)."""
    check_free_space(run.out, *checkpoint_bytes(abstract_state(run)))
    if run.config.train.export_hf:
        check_export(run, export_final)


def failure_message(err: BaseException, scratch: Path) -> str:
    """What failed, in which library and version, and how to fix it."""
    if isinstance(err, OSError) and not _blamed_distribution(err):
        return f"writing the final model into {scratch.parent} failed ({type(err).__name__}: {err})"
    library = _blamed_distribution(err) or WRITER_LIBRARY
    versions = ", ".join(f"{name} {_version(name)}" for name in dict.fromkeys((library, *REPORTED_LIBRARIES)))
    requirement = _jaxmath_requirement(library)
    fix = (f"jaxmath supports {requirement}: pip install --upgrade '{requirement}'" if requirement else
           f"pip install --upgrade {library}")
    return (f"the end-of-run writers (jaxmath model directory, HF export) fail for a tiny model before training "
            f"starts, in {library} {_version(library)} ({type(err).__name__}: {err}). Installed: {versions}. "
            f"Fix: {fix}")


def _version(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "(not installed)"


def _jaxmath_requirement(distribution: str) -> str | None:
    """jaxmath's own requirement on `distribution` (e.g. "orbax-checkpoint>=0.11.36"), when jaxmath is installed."""
    try:
        requirements = importlib.metadata.requires("jaxmath") or []
    except importlib.metadata.PackageNotFoundError:
        return None
    for requirement in requirements:
        match = re.match(r"([A-Za-z0-9_.\-]+)\s*([^;]*)", requirement)
        if match and _normal(match[1]) == _normal(distribution) and "extra ==" not in requirement:
            return f"{match[1]}{match[2].strip()}"
    return None


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _blamed_distribution(err: BaseException) -> str | None:
    """The distribution of the innermost frame outside jaxmath and the standard library that the error (or the
    error it was raised from) passed through, e.g. "orbax-checkpoint"."""
    owners = importlib.metadata.packages_distributions()
    blamed = None
    chain: BaseException | None = err
    seen = set()
    while chain is not None and id(chain) not in seen:
        seen.add(id(chain))
        trace: types.TracebackType | None = chain.__traceback__
        while trace is not None:
            top = str(trace.tb_frame.f_globals.get("__name__", "")).split(".")[0]
            if top and top != "jaxmath" and top not in sys.stdlib_module_names and top in owners:
                blamed = owners[top][0]
            trace = trace.tb_next
        chain = chain.__cause__ or chain.__context__
    return blamed
