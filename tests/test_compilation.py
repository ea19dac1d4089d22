"""The persistent compilation cache (jaxmath.compilation): which directory a setting means, and that a second
process running the same jitted function, or the same tiny GRPO config through `jaxmath train`, reads its
programs from the cache that the first wrote (jax's cache-hit monitoring event, counted by CompileClock)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from jaxmath.compilation import CompileCacheError, cache_dir_for, default_cache_dir, enable_compile_cache

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    for name in ("JAXMATH_COMPILE_CACHE", "JAX_COMPILATION_CACHE_DIR", "XDG_CACHE_HOME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    return monkeypatch


def test_setting_then_environment_then_default(clean_env, tmp_path):
    assert cache_dir_for("auto") == tmp_path / "home" / ".cache" / "jaxmath" / "xla" == default_cache_dir()
    clean_env.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir_for(None) == cache_dir_for(True) == tmp_path / "xdg" / "jaxmath" / "xla"
    clean_env.setenv("JAX_COMPILATION_CACHE_DIR", str(tmp_path / "jax"))
    assert cache_dir_for("auto") == tmp_path / "jax"
    clean_env.setenv("JAXMATH_COMPILE_CACHE", str(tmp_path / "env"))
    assert cache_dir_for("auto") == tmp_path / "env"
    assert cache_dir_for(str(tmp_path / "given")) == tmp_path / "given"
    assert cache_dir_for("~/c") == tmp_path / "home" / "c"
    for off in ("off", "OFF", "none", "false", "0", "", False):
        assert cache_dir_for(off) is None, off
    clean_env.setenv("JAXMATH_COMPILE_CACHE", "off")
    assert cache_dir_for("auto") is None
    assert cache_dir_for(str(tmp_path / "given")) == tmp_path / "given"  # an explicit setting beats the environment


def test_an_unusable_explicit_directory_is_an_error_naming_the_setting(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(CompileCacheError, match=r"train.compile_cache: cannot create .*file/xla"):
        enable_compile_cache(str(blocker / "xla"), source="train.compile_cache")


PROBE = """
import json, sys
from jaxmath.compilation import CompileClock, enable_compile_cache
import jax, jax.numpy as jnp
directory = enable_compile_cache(sys.argv[1])
clock = CompileClock()
f = jax.jit(lambda x: jnp.tanh(x @ x.T).sum(axis=0) * 3.0)
f(jnp.ones((64, 64))).block_until_ready()
print(json.dumps({**clock.read(), "directory": directory and str(directory),
                  "min_compile": jax.config.jax_persistent_cache_min_compile_time_secs,
                  "max_size": jax.config.jax_compilation_cache_max_size}))
"""


def _clean_env(**extra: str) -> dict[str, str]:
    """This environment without the compile cache settings (the tests' conftest sets jax's), plus `extra`."""
    names = ("JAXMATH_COMPILE_CACHE", "JAX_COMPILATION_CACHE_DIR", "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS",
             "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES")
    env = {k: v for k, v in os.environ.items() if k not in names}
    return {**env, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu", **extra}


def _probe(setting: str, **env: str) -> dict:
    proc = subprocess.run([sys.executable, "-c", PROBE, setting], capture_output=True, text=True, cwd=ROOT,
                          env=_clean_env(**env), timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _entries(cache: Path) -> list[str]:
    return sorted(p.name for p in cache.iterdir() if p.name.endswith("-cache"))


def test_a_second_process_reads_the_program_from_the_cache(tmp_path):
    cache = tmp_path / "xla"
    first = _probe(str(cache))
    assert first["directory"] == str(cache)
    assert (first["min_compile"], first["max_size"]) == (0.1, 8 * 2**30)  # jaxmath's choices
    assert first["compile_cache_hits"] == 0 and first["compile_seconds"] > 0
    assert _entries(cache) == []  # the probe compiles in far less than 0.1 s: not worth an entry

    # jax's own variable, where set, wins: with no floor the program is written, and a second process reads it
    first = _probe(str(cache), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
    entries = _entries(cache)
    assert first["min_compile"] == 0 and first["compile_cache_hits"] == 0
    assert any(name.startswith("jit__lambda-") for name in entries)  # (with jnp.ones's own little programs)
    second = _probe("auto", JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", JAXMATH_COMPILE_CACHE=str(cache))
    assert second["directory"] == str(cache) and second["compile_cache_hits"] == len(entries)
    assert _entries(cache) == entries  # nothing new written
    off = _probe("off", JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", JAXMATH_COMPILE_CACHE=str(cache))
    assert off["directory"] is None and off["compile_cache_hits"] == 0


@pytest.mark.slow
def test_a_second_grpo_run_starts_warm(tmp_path):
    """`jaxmath train --compile-cache DIR` twice on the tiny GRPO config: the second run's first iteration
    reads its programs from the cache (and both log compile_seconds > 0 at step 1)."""
    cache = tmp_path / "xla"
    hits = []
    for run in ("cold", "warm"):
        proc = subprocess.run(
            [sys.executable, "-m", "jaxmath.cli", "train", "--config", "configs/grpo/tiny-cpu.yaml",
             "--compile-cache", str(cache), "--output-dir", str(tmp_path / run), "--set", "train.steps=1",
             "--set", "train.eval_generate=0", "--set", "train.export_hf=false", "--set", "model.remat=none"],
            capture_output=True, text=True, cwd=ROOT, env=_clean_env(), timeout=900)
        assert proc.returncode == 0, proc.stderr[-3000:]
        rows = [json.loads(line) for line in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]
        step = next(r for r in rows if r["step"] == 1)
        assert step["compile_seconds"] > 0 and step["iteration_seconds"] > 0
        hits.append(step["compile_cache_hits"])
    assert any(cache.iterdir())
    assert hits[0] == 0 and hits[1] >= 3  # the warm run read the decode loop, log-prob pass and train step
