"""Host side of the program-of-thought sandbox: the `Sandbox` fork-server client and `run_program`."""
from __future__ import annotations

import atexit
import dataclasses
import json
import os
import subprocess
import sys
import threading
import time
import warnings
import weakref
from typing import Mapping, Sequence

from . import protocol
from .confine import LAYERS

BASE_MODULES = ("math", "fractions", "decimal", "itertools", "sympy")
STATUSES = ("ok", "error", "assertion_failed", "syntax_error", "timeout", "memory_limit", "output_limit",
            "crashed")
_SERVER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "server.py")
# The server gets no secrets: only thread-count settings so numpy's BLAS starts no threads.
_SERVER_ENV = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "LC_ALL": "C.UTF-8"}
_STARTUP_TIMEOUT_S = 120.0
_MARGIN_S = 10.0
_warned_missing = False  # the missing-layer warning is given once per process


class SandboxUnavailable(RuntimeError):
    """A required isolation layer did not take effect on this machine (the message names it and why)."""


def check_layer_names(layers: Sequence[str]) -> tuple[str, ...]:
    """`layers` as a tuple after checking each is a layer name (see LAYERS); ValueError names a wrong one."""
    unknown = [name for name in layers if name not in LAYERS]
    if unknown:
        raise ValueError(f"unknown sandbox layer(s) {', '.join(map(repr, unknown))} (known: {', '.join(LAYERS)})")
    return tuple(layers)


def describe_missing(missing: Mapping[str, str]) -> str:
    """Missing layers and why, those with the same reason together: 'a, b (reason); c (other reason)'."""
    by_reason: dict[str, list[str]] = {}
    for name, why in missing.items():
        by_reason.setdefault(why, []).append(name)
    return "; ".join(f"{', '.join(names)} ({why})" for why, names in by_reason.items())


def check_required(missing: Mapping[str, str], required: Sequence[str]) -> None:
    """Raise SandboxUnavailable naming each required layer that is missing and why."""
    lacking = {name: missing[name] for name in required if name in missing}
    if lacking:
        raise SandboxUnavailable(f"required sandbox layer(s) missing on this machine: {describe_missing(lacking)} "
                                 f"(required by sandbox.require / --require-sandbox)")


@dataclasses.dataclass(frozen=True)
class SandboxConfig:
    """The `sandbox:` config section: isolation layers (see LAYERS) that must take effect, else fail at start."""

    require: list[str] = dataclasses.field(default_factory=list)

    def __post_init__(self) -> None:
        check_layer_names(self.require)


def _warn_missing(missing: Mapping[str, str]) -> None:
    global _warned_missing
    if missing and not _warned_missing:
        _warned_missing = True
        warnings.warn(f"the program sandbox runs without layer(s) {describe_missing(missing)}: programs are less "
                      f"confined on this machine; set sandbox.require / --require-sandbox to fail instead",
                      RuntimeWarning, stacklevel=3)


@dataclasses.dataclass(frozen=True)
class ProgramResult:
    """Outcome of one program: its answer value, printed output and how it ended.

    `value` is the program's `answer` (else `result`) variable, else its last printed line, else the
    return value of a `solution()` function; always a string or None. `status` is one of STATUSES.
    """

    value: str | None
    stdout: str
    status: str
    error: str | None
    n_asserts: int
    duration_s: float
    output_truncated: bool
    layers: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def asserts_passed(self) -> bool:
        """True when the program ran to its end, so every `assert` it reached held."""
        return self.status == "ok"

    @classmethod
    def failed(cls, status: str, error: str) -> "ProgramResult":
        return cls(None, "", status, error, 0, 0.0, False, ())


def _kill_server(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait()
    for stream in (proc.stdin, proc.stdout):
        if stream is not None:
            stream.close()


class Sandbox:
    """Runs untrusted Python programs in confined children of a long-lived fork server (sympy preloaded).

    Thread-safe; `run_batch` runs up to `workers` programs at once. The server restarts itself after a
    failure. Each child is isolated by namespaces, a read-only filesystem with home and temporary
    directories hidden, rlimits, no capabilities and a seccomp filter where the kernel allows: `layers`
    says which took effect, `missing_layers` why the others did not (warned once per process), and a
    layer named in `require` that is missing makes the start fail with SandboxUnavailable.
    `python_guards=False` turns off only the Python-level hygiene (import allowlist, trimmed builtins,
    audit hook), e.g. to test the boundary.
    """

    def __init__(self, *, timeout: float = 5.0, memory_mb: int = 1024, max_output: int = 64_000,
                 allow_numpy: bool = False, extra_modules: Sequence[str] = (), workers: int | None = None,
                 python_guards: bool = True, require: Sequence[str] = ()):
        if timeout <= 0 or memory_mb < 64 or max_output < 1:
            raise ValueError(f"Sandbox needs timeout > 0, memory_mb >= 64, max_output >= 1; got "
                             f"timeout={timeout}, memory_mb={memory_mb}, max_output={max_output}")
        self.timeout, self.allow_numpy = float(timeout), allow_numpy
        modules = BASE_MODULES + (("numpy",) if allow_numpy else ()) + tuple(extra_modules)
        self._options = {"memory_mb": int(memory_mb), "max_output": int(max_output),
                         "allowed_modules": sorted(set(modules)), "python_guards": bool(python_guards),
                         "parallel": max(1, workers or os.cpu_count() or 1)}
        self.require = check_layer_names(require)
        self._lock = threading.Lock()
        self._proc: subprocess.Popen | None = None
        self._finalizer: weakref.finalize | None = None
        self._layers: tuple[str, ...] = ()
        self._missing: dict[str, str] = {}

    def _start(self) -> subprocess.Popen:
        start = {"numpy": self.allow_numpy, "home": os.path.expanduser("~")}
        proc = subprocess.Popen([sys.executable, "-I", _SERVER, json.dumps(start)],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                env=_SERVER_ENV, close_fds=True, start_new_session=True)
        self._finalizer = weakref.finalize(self, _kill_server, proc)
        ready = protocol.read_message(proc.stdout.fileno(), time.monotonic() + _STARTUP_TIMEOUT_S)
        if not (isinstance(ready, dict) and ready.get("ready")):
            _kill_server(proc)
            raise RuntimeError(f"sandbox server failed to start (python {sys.executable}, {_SERVER})")
        probe = ready["probe"]
        if probe["status"] != "ok":
            _kill_server(proc)
            raise RuntimeError(f"the sandbox's probe program failed: {probe['error']}")
        self._layers, self._missing = tuple(probe["layers"]), dict(probe["missing"])
        _warn_missing(self._missing)
        try:
            check_required(self._missing, self.require)
        except SandboxUnavailable:
            _kill_server(proc)
            raise
        return proc

    def start(self) -> tuple[str, ...]:
        """Start the fork server now unless it runs (fails here if a required layer is missing); the layers."""
        with self._lock:
            if self._proc is None or self._proc.poll() is not None:
                self._proc = self._start()
            return self._layers

    def require_layers(self, layers: Sequence[str]) -> tuple[str, ...]:
        """Add `layers` to those required, failing now (SandboxUnavailable) if one is missing; the layers."""
        self.require = tuple(dict.fromkeys(self.require + check_layer_names(layers)))
        achieved = self.start()
        try:
            check_required(self._missing, self.require)
        except SandboxUnavailable:
            self.close()  # a later run restarts the server, and fails the same way
            raise
        return achieved

    def close(self) -> None:
        """Stop the fork server (a later run starts a new one)."""
        with self._lock:
            if self._finalizer is not None:
                self._finalizer()
            self._proc = self._finalizer = None

    def __enter__(self) -> "Sandbox":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def server_pid(self) -> int | None:
        """Process id of the running fork server (None before the first run), e.g. for monitoring."""
        return None if self._proc is None else self._proc.pid

    @property
    def layers(self) -> tuple[str, ...]:
        """Isolation layers that take effect on this machine (the server's probe program at start)."""
        return self.start()

    @property
    def missing_layers(self) -> dict[str, str]:
        """Each layer of LAYERS that did not take effect on this machine, with the reason."""
        self.start()
        return dict(self._missing)

    def run(self, code: str, *, timeout: float | None = None) -> ProgramResult:
        """Run one program; never raises for anything the program does."""
        return self.run_batch([code], timeout=timeout)[0]

    def run_batch(self, codes: Sequence[str], *, timeout: float | None = None) -> list[ProgramResult]:
        """Run programs concurrently (up to `workers` at once); results in input order."""
        for i, code in enumerate(codes):
            if not isinstance(code, str):
                raise TypeError(f"program {i} is {type(code).__name__}, expected str")
        if not codes:
            return []
        options = dict(self._options, timeout=float(timeout or self.timeout))
        rounds = -(-len(codes) // options["parallel"])
        deadline_s = rounds * (options["timeout"] + 1.0) + _MARGIN_S
        with self._lock:
            for attempt in range(2):
                try:
                    return self._request(list(codes), options, deadline_s)
                except SandboxUnavailable:
                    self._proc = None
                    raise
                except (OSError, TimeoutError, RuntimeError, ValueError) as exc:
                    if self._finalizer is not None:
                        self._finalizer()
                    self._proc = None
                    if attempt:
                        return [ProgramResult.failed("crashed", f"sandbox server failed: {exc}")] * len(codes)
        raise AssertionError("unreachable")

    def _request(self, codes: list[str], options: dict, deadline_s: float) -> list[ProgramResult]:
        if self._proc is None or self._proc.poll() is not None:
            self._proc = self._start()
        protocol.write_message(self._proc.stdin.fileno(), {"programs": codes, "options": options})
        reply = protocol.read_message(self._proc.stdout.fileno(), time.monotonic() + deadline_s)
        if not isinstance(reply, dict) or "results" not in reply:
            raise RuntimeError(f"bad reply from the sandbox server: {str(reply)[:200]}")
        return [ProgramResult(value=r["value"], stdout=r["stdout"], status=r["status"], error=r["error"],
                              n_asserts=r["n_asserts"], duration_s=r["duration_s"],
                              output_truncated=r["output_truncated"], layers=tuple(r["layers"]))
                for r in reply["results"]]


_shared: dict[bool, Sandbox] = {}
_shared_lock = threading.Lock()


def shared_sandbox(allow_numpy: bool = False) -> Sandbox:
    """The process-wide Sandbox for this numpy setting (default limits), started on first use."""
    with _shared_lock:
        if allow_numpy not in _shared:
            _shared[allow_numpy] = Sandbox(allow_numpy=allow_numpy)
            atexit.register(_shared[allow_numpy].close)
        return _shared[allow_numpy]


def shared_layers() -> list[str] | None:
    """The layers of this process's shared sandbox if it has started (programs ran), else None."""
    with _shared_lock:
        started = [sb._layers for sb in _shared.values() if sb._layers]
    return list(started[0]) if started else None


def require_layers(layers: Sequence[str]) -> tuple[str, ...]:
    """Fail now (SandboxUnavailable, naming each missing layer and why) unless the process-wide sandbox
    achieves every layer in `layers`; also when it restarts later. Returns the layers it achieves."""
    return shared_sandbox().require_layers(layers)


def run_program(code: str, *, timeout: float = 5.0, allow_numpy: bool = False) -> ProgramResult:
    """Run one untrusted program in the shared sandbox (one fork server per process, started lazily)."""
    return shared_sandbox(allow_numpy).run(code, timeout=timeout)
