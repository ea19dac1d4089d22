"""Verifier: grading in pre-started, recycled worker processes with hard time and memory bounds.

Workers are forked from a fork server (itself started by exec, so no host state is forked) that has
sympy and the parser imported, so a replacement starts in milliseconds. Each job gets a wall-clock
deadline (the host kills the worker past it: no SIGALRM, so any thread or event loop may call), a
CPU-time limit and an address-space limit. A batch is spread over all idle workers; several threads
may share one Verifier.
"""
from __future__ import annotations

import os
import queue
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import weakref
from collections import deque
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Sequence

from jaxmath.verify.extract import STYLES
from jaxmath.verify.verdict import Outcome, Verdict
from jaxmath.verify.worker import PID_FORMAT

_STARTUP_TIMEOUT = 120.0
_PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])
_BOOT = "import sys; from jaxmath.verify.worker import main; main(sys.argv[1:])"


class _ForkServer:
    """The exec-started process that forks ready-to-work worker processes on request."""

    def __init__(self, memory_bytes: int, cpu_seconds: float):
        self._control, theirs = socket.socketpair()
        env = dict(os.environ)  # make this jaxmath importable even when it is not installed
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [_PACKAGE_ROOT, env.get("PYTHONPATH")]))
        self.process = subprocess.Popen(
            [sys.executable, "-c", _BOOT, str(theirs.fileno()), str(memory_bytes), str(cpu_seconds)],
            pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL, env=env)
        theirs.close()
        self._control.settimeout(_STARTUP_TIMEOUT)
        self._lock = threading.Lock()

    def fork(self) -> tuple[int, Connection]:
        """A new worker: (pid, host end of its connection)."""
        with self._lock:
            try:
                self._control.sendall(b"f")
                msg, fds, _, _ = socket.recv_fds(self._control, 16, 1)
            except OSError as err:
                raise RuntimeError(f"verifier fork server failed: {err}") from err
        if not fds:
            raise RuntimeError(f"verifier fork server exited (code {self.process.poll()})")
        (pid,) = struct.unpack(PID_FORMAT, msg)
        return pid, Connection(fds[0])

    def close(self) -> None:
        self._control.close()
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


class _Worker:
    """One forked worker and the host end of its connection."""

    def __init__(self, server: _ForkServer):
        self.pid, self.conn = server.fork()
        self.jobs = 0

    def kill(self) -> None:
        try:
            os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.conn.close()

    def retire(self) -> None:
        try:
            self.conn.send(None)
        except OSError:
            pass
        self.conn.close()


def _shutdown(workers: set, server: _ForkServer) -> None:
    for w in list(workers):
        w.kill()
    workers.clear()
    server.close()


class Verifier:
    """A pool of grading workers. `grade_batch` and `compare_batch` return one Verdict per pair, in order.

    workers: processes (default: the CPU cores). timeout: wall-clock seconds per item. memory_mb:
    address-space cap per worker. max_jobs: jobs a worker serves before it is replaced by a fresh one.
    """

    def __init__(self, workers: int | None = None, timeout: float = 5.0, memory_mb: int = 2048,
                 max_jobs: int = 2000):
        if workers is not None and workers < 1:
            raise ValueError(f"Verifier needs at least one worker, got workers={workers}")
        if timeout <= 0:
            raise ValueError(f"Verifier timeout must be positive, got {timeout}")
        self.workers = workers or os.cpu_count() or 1
        self.timeout = float(timeout)
        self._max_jobs = max_jobs
        self._server = _ForkServer(int(memory_mb) << 20, self.timeout + 1)
        self._idle: queue.SimpleQueue[_Worker] = queue.SimpleQueue()
        self._all: set[_Worker] = set()
        self._lock = threading.Lock()
        self._closed = False
        self._finalizer = weakref.finalize(self, _shutdown, self._all, self._server)
        try:
            for _ in range(self.workers):
                self._idle.put(self._start())
        except RuntimeError:
            self.close()
            raise

    # -- worker lifecycle -------------------------------------------------------------------------
    def _start(self) -> _Worker:
        w = _Worker(self._server)
        with self._lock:
            self._all.add(w)
        return w

    def _discard(self, w: _Worker, kill: bool) -> None:
        with self._lock:
            self._all.discard(w)
        if kill:
            w.kill()
        else:
            w.retire()

    def _replace(self, w: _Worker, kill: bool) -> None:
        self._discard(w, kill)
        if not self._closed:
            self._idle.put(self._start())

    def _release(self, w: _Worker, retire: bool) -> None:
        w.jobs += 1
        if retire or w.jobs >= self._max_jobs:
            self._replace(w, kill=False)
        else:
            self._idle.put(w)

    def _acquire(self, block: bool) -> _Worker | None:
        while True:
            if self._closed:
                raise RuntimeError("Verifier is closed")
            try:
                return self._idle.get(block=block, timeout=0.5 if block else None)
            except queue.Empty:
                if not block:
                    return None

    # -- running jobs ---------------------------------------------------------------------------
    def _run(self, jobs: list[tuple]) -> list[Verdict]:
        results: list[Verdict | None] = [None] * len(jobs)
        pending = deque(k for k, job in enumerate(jobs) if job is not None)
        for k, job in enumerate(jobs):
            if job is None:
                results[k] = Verdict(Outcome.UNVERIFIABLE, "input is not a string")
        inflight: dict[Connection, tuple[_Worker, int, float]] = {}
        while pending or inflight:
            while pending:
                w = self._acquire(block=not inflight)
                if w is None:
                    break
                k = pending.popleft()
                deadline = time.monotonic() + self.timeout
                try:
                    w.conn.send(jobs[k])
                except OSError:
                    pending.appendleft(k)
                    self._replace(w, kill=True)
                    continue
                inflight[w.conn] = (w, k, deadline)
            if not inflight:
                continue
            soonest = min(d for _, _, d in inflight.values())
            for conn in wait(list(inflight), timeout=max(0.0, soonest - time.monotonic())):
                w, k, _ = inflight.pop(conn)
                try:
                    outcome, reason, retire = conn.recv()
                except (EOFError, OSError):
                    results[k] = Verdict(Outcome.UNVERIFIABLE, "worker died (CPU or memory limit)")
                    self._replace(w, kill=True)
                    continue
                results[k] = Verdict(Outcome(outcome), reason)
                self._release(w, retire)
            now = time.monotonic()
            for conn, (w, k, deadline) in list(inflight.items()):
                if deadline <= now:
                    del inflight[conn]
                    results[k] = Verdict(Outcome.UNVERIFIABLE, f"timeout after {self.timeout:g} s")
                    self._replace(w, kill=True)
        return results  # type: ignore[return-value]

    def grade_batch(self, completions: Sequence[str], golds: Sequence[str], style: str = "auto") -> list[Verdict]:
        """Extract each completion's final answer (in `style`) and judge it against its gold answer."""
        if style not in STYLES:
            raise ValueError(f"unknown extraction style {style!r}; known styles: {', '.join(STYLES)}")
        return self._run(_jobs("grade", completions, golds, style))

    def compare_batch(self, preds: Sequence[str], golds: Sequence[str]) -> list[Verdict]:
        """Judge already-extracted answers against gold answers."""
        return self._run(_jobs("compare", preds, golds, None))

    def grade(self, completion: str, gold: str, style: str = "auto") -> Verdict:
        """One completion: `grade_batch([completion], [gold], style)[0]`."""
        return self.grade_batch([completion], [gold], style)[0]

    def close(self) -> None:
        """Stop every worker and the fork server (idempotent)."""
        self._closed = True
        self._finalizer()

    def __enter__(self) -> "Verifier":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _jobs(kind: str, texts: Sequence[str], golds: Sequence[str], style: str | None) -> list[tuple | None]:
    """Job tuples for the workers; None marks a row whose inputs are not strings."""
    if len(texts) != len(golds):
        raise ValueError(f"got {len(texts)} answers but {len(golds)} gold answers; they must pair up")
    return [(kind, t, g, style) if isinstance(t, str) and isinstance(g, str) else None
            for t, g in zip(texts, golds)]
