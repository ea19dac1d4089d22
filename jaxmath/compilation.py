"""XLA compilation: the persistent compilation cache every run uses, and a clock of the seconds spent compiling.

The cache (jax's own, `jax_compilation_cache_dir`) lets a second run of the same config start warm: each
compiled program is written to disk under a key of its HLO, devices and compile options, and read back instead
of compiled. Where it lives, in order: an explicit setting (a run config's `train.compile_cache`, a command's
`--compile-cache`), then `$JAXMATH_COMPILE_CACHE`, then jax's own `$JAX_COMPILATION_CACHE_DIR`, then
`$XDG_CACHE_HOME/jaxmath/xla` (`~/.cache/jaxmath/xla`). `off` (any of OFF_VALUES) runs without it.

Only programs that took at least MIN_COMPILE_SECONDS to compile are written (jax's default is 1 s, which on a
2-core CPU skipped the 0.6-1.0 s compile of a tiny model's GRPO log-prob pass; the single-operation programs of
eager jnp calls take 0.002-0.06 s and would fill the directory with thousands of entries). Reading one back
took 1-2 ms for small programs and 0.05-0.25 s for the tiny-cpu GRPO config's train and decode programs, which
took 3-8.5 s to compile. The cache is kept under MAX_CACHE_BYTES by jax's least-recently-used eviction.
As jax's own documentation warns, a cache directory is trusted: whoever can write to it can run code in the runs
that read it, so never point it at a directory others can write.
"""
from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

log = logging.getLogger(__name__)

ENV_VAR = "JAXMATH_COMPILE_CACHE"
AUTO = "auto"  # the setting that defers to the environment, then the default directory
OFF_VALUES = ("off", "none", "false", "0", "")
MIN_COMPILE_SECONDS = 0.1  # jax_persistent_cache_min_compile_time_secs (jax's default: 1.0)
MIN_ENTRY_BYTES = 0  # jax_persistent_cache_min_entry_size_bytes: no size floor (jax's default too); time decides
MAX_CACHE_BYTES = 8 * 2**30  # jax_compilation_cache_max_size (jax's default: -1, unbounded)
# jax's monitoring events (jax/_src/dispatch.py, jax/_src/compiler.py)
BACKEND_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"  # XLA compile, or a persistent-cache read
CACHE_HIT_EVENT = "/jax/compilation_cache/cache_hits"


class CompileCacheError(ValueError):
    """A compile cache setting names a directory that cannot be used; the message names the setting."""


def default_cache_dir() -> Path:
    """`$XDG_CACHE_HOME/jaxmath/xla`, else `~/.cache/jaxmath/xla`."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "jaxmath" / "xla"


def _is_auto(setting: str | bool | None) -> bool:
    return setting is None or setting is True or (isinstance(setting, str) and setting.strip().lower() == AUTO)


def cache_dir_for(setting: str | bool | None = AUTO) -> Path | None:
    """The cache directory a setting means (None: no cache): a directory, an off value (or False, as YAML reads
    `off`), or `auto` (or None, True), which takes $JAXMATH_COMPILE_CACHE, then $JAX_COMPILATION_CACHE_DIR, then
    `default_cache_dir()`."""
    if setting is False:
        return None
    for value in (setting, os.environ.get(ENV_VAR), os.environ.get("JAX_COMPILATION_CACHE_DIR")):
        if _is_auto(value):
            continue
        return None if value.strip().lower() in OFF_VALUES else Path(value).expanduser()
    return default_cache_dir()


def enable_compile_cache(setting: str | bool | None = AUTO, *,
                         source: str = "the compile cache setting") -> Path | None:
    """Point jax's persistent compilation cache at the directory `setting` means (`cache_dir_for`), or turn it
    off; returns the directory. Calling it again with the same outcome changes nothing. An explicit directory
    that cannot be created is a `CompileCacheError` naming `source`; the default one only logs a warning."""
    import jax
    from jax.experimental.compilation_cache import compilation_cache

    directory = cache_dir_for(setting)
    if directory is not None:
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            if not _is_auto(setting):
                raise CompileCacheError(f"{source}: cannot create the compile cache directory {directory}: "
                                        f"{err.strerror or err}") from err
            log.warning("running without the XLA compilation cache: cannot create %s (%s); set $%s to another "
                        "directory or to off", directory, err.strerror or err, ENV_VAR)
            directory = None
    wanted = str(directory) if directory is not None else None
    if (jax.config.jax_compilation_cache_dir, jax.config.jax_enable_compilation_cache) == (wanted, wanted is not None):
        return directory
    jax.config.update("jax_enable_compilation_cache", wanted is not None)
    jax.config.update("jax_compilation_cache_dir", wanted)
    # jax's own environment variables, where set, win over jaxmath's choices.
    if "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS" not in os.environ:
        jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_SECONDS)
    if "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES" not in os.environ:
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", MIN_ENTRY_BYTES)
    if "JAX_COMPILATION_CACHE_MAX_SIZE" not in os.environ:
        jax.config.update("jax_compilation_cache_max_size", MAX_CACHE_BYTES)
    compilation_cache.reset_cache()  # jax opens its cache once per process: a new directory needs a fresh one
    log.info("XLA compilation cache: %s", wanted or "off")
    return directory


class _CompileCounters:
    """Running totals, for this process, of jax's compile events (listeners registered once, on first use)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.seconds = 0.0
        self.compiles = 0
        self.cache_hits = 0
        self.registered = False

    def register(self) -> None:
        from jax import monitoring

        with self.lock:
            if self.registered:
                return
            monitoring.register_event_duration_secs_listener(self._on_duration)
            monitoring.register_event_listener(self._on_event)
            self.registered = True

    def _on_duration(self, event: str, duration: float, **_: object) -> None:
        if event == BACKEND_COMPILE_EVENT:
            with self.lock:
                self.seconds += duration
                self.compiles += 1

    def _on_event(self, event: str, **_: object) -> None:
        if event == CACHE_HIT_EVENT:
            with self.lock:
                self.cache_hits += 1


_COUNTERS = _CompileCounters()


class CompileClock:
    """XLA compile seconds, programs compiled and persistent-cache hits since the clock started (or was last
    read with `lap`), from jax's monitoring events; a program read from the persistent cache counts its read
    time as compile time, since that is what it cost."""

    def __init__(self) -> None:
        _COUNTERS.register()
        self._start = self._totals()

    @staticmethod
    def _totals() -> tuple[float, int, int]:
        with _COUNTERS.lock:
            return _COUNTERS.seconds, _COUNTERS.compiles, _COUNTERS.cache_hits

    def read(self) -> dict[str, float]:
        """`compile_seconds`, `compiles` and `compile_cache_hits` since the start (or the last `lap`)."""
        now = self._totals()
        seconds, compiles, hits = (b - a for a, b in zip(self._start, now))
        return {"compile_seconds": seconds, "compiles": compiles, "compile_cache_hits": hits}

    def lap(self) -> dict[str, float]:
        """`read`, then start again from now."""
        figures, self._start = self.read(), self._totals()
        return figures
