"""Fork server of the program-of-thought sandbox: preloads sympy once, then forks one confined child per program.

Run by the host as `python -I server.py '<json options>'`; it reads requests from stdin and answers on
stdout (protocol.py) until stdin closes. It never runs model code itself: every program runs in a child
that calls setsid, enters fresh namespaces, forks PID 1 of its PID namespace, confines itself
(confine.py) and only then executes (guest.py). The server kills each child's process group at its
wall-clock deadline and caps what it reads back. At start it runs one probe program and reports which
layers took effect (and why others did not) with its ready message.
"""
from __future__ import annotations

import dataclasses
import json
import os
import pwd
import select
import signal
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import confine  # noqa: E402
import guest  # noqa: E402
import protocol  # noqa: E402

RESULT_OVERHEAD_BYTES = 64_000
_POLL_S = 0.01
PROBE = "answer = 1"
PROBE_OPTIONS = {"timeout": 30.0, "memory_mb": 1024, "max_output": 1000, "allowed_modules": [],
                 "python_guards": True, "parallel": 1}


def preload(numpy: bool) -> None:
    """Import and exercise the allowed libraries once, so children never import anything lazily."""
    import decimal, fractions, itertools, math  # noqa: E401,F401
    import sympy

    x = sympy.Symbol("x")
    sympy.solve(x**2 - 4, x)
    sympy.simplify(sympy.sin(x) ** 2 + sympy.cos(x) ** 2)
    sympy.integrate(x**2, (x, 0, 1)), sympy.factorint(360), sympy.nsimplify(0.5), sympy.isprime(97)
    str(sympy.sympify("x/2 + 1")), sympy.latex(sympy.sqrt(8)), sympy.Matrix([[1, 2], [3, 4]]).det()
    if numpy:
        import numpy as np

        np.linalg.solve(np.eye(2), np.ones(2))


@dataclasses.dataclass
class _Job:
    pid: int
    fd: int | None
    start: float
    deadline: float
    buf: bytearray = dataclasses.field(default_factory=bytearray)
    timed_out: bool = False
    overflow: bool = False


def boundary(home: str | None) -> dict[str, list[str]]:
    """What children hide (temp dirs, /home, the caller's home) and bind back (this interpreter's sys.path)."""
    try:
        homes = [pwd.getpwuid(os.getuid()).pw_dir]
    except KeyError:  # a uid without a passwd entry (containers)
        homes = []
    homes += [home] if home else []
    return {"hidden": list(confine.HIDDEN_DIRS) + homes, "needed": [p for p in sys.path if p]}


def _child(code: str, opts: dict, wfd: int) -> None:
    """Body of the forked child: confine, run, send the result, exit. Never returns."""
    try:
        confine.set_parent_death_signal()
        os.setsid()
        os.chdir("/")  # a working directory inside a hidden one would stay reachable through "."
        conf = confine.enter_namespaces()
        if conf.pid_namespace:
            runner = os.fork()
            if runner:  # stays outside as the runner's parent; its death takes the runner down
                os.close(wfd)
                code = os.waitstatus_to_exitcode(os.waitpid(runner, 0)[1])
                os._exit(128 - code if code < 0 else code)  # shell convention: 128 + signal
            confine.set_parent_death_signal()
        devnull = os.open("/dev/null", os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(devnull, fd)
        os.closerange(3, wfd)
        os.closerange(wfd + 1, 1 << 16)
        if "namespaces" in conf.layers:
            confine.make_filesystem_readonly(conf)
            if "hidden_dirs" not in conf.missing:
                confine.hide_directories(conf, opts["hidden"], opts["needed"])
        confine.drop_privileges(conf)
        limits = confine.Limits(cpu_seconds=int(opts["timeout"]) + 1, memory_bytes=opts["memory_mb"] << 20)
        confine.set_limits(limits, conf)
        confine.install_seccomp(conf)
        result = guest.run(code, allowed_modules=frozenset(opts["allowed_modules"]),
                           max_output=opts["max_output"], python_guards=opts["python_guards"])
        result.update(layers=conf.layers, missing=conf.missing)
    except BaseException as exc:  # a confinement step failed: report it, never run unconfined
        result = {"status": "crashed", "error": f"sandbox setup failed: {exc!r}"}
    try:
        protocol.write_all(wfd, json.dumps(result).encode())
    finally:
        os._exit(0)


def _spawn(code: str, opts: dict) -> _Job:
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(rfd)
        _child(code, opts, wfd)
    os.close(wfd)
    os.set_blocking(rfd, False)
    now = time.monotonic()
    return _Job(pid=pid, fd=rfd, start=now, deadline=now + opts["timeout"])


def _kill(job: _Job) -> None:
    for kill in (os.killpg, os.kill):
        try:
            kill(job.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def _close(job: _Job) -> None:
    if job.fd is not None:
        os.close(job.fd)
        job.fd = None


def _finish(job: _Job, status: int, opts: dict) -> dict:
    base = {"value": None, "stdout": "", "error": None, "n_asserts": 0, "output_truncated": False,
            "layers": [], "duration_s": round(time.monotonic() - job.start, 4)}
    if job.timed_out:
        return dict(base, status="timeout", error=f"wall-clock limit of {opts['timeout']} s exceeded")
    if job.overflow:
        return dict(base, status="output_limit", output_truncated=True, error="result exceeded the output cap")
    try:
        result = json.loads(job.buf)
        return dict(base, **result)
    except ValueError:
        pass
    code = os.waitstatus_to_exitcode(status)
    sig = -code if code < 0 else code - 128 if code > 128 else 0
    if sig == signal.SIGXCPU:
        return dict(base, status="timeout", error="CPU-time limit exceeded")
    if sig:
        name = signal.Signals(sig).name if sig in set(signal.Signals) else str(sig)
        return dict(base, status="crashed", error=f"program killed by {name}")
    return dict(base, status="crashed", error=f"program exited with code {code} without a result")


def _pump(running: dict[int, _Job], opts: dict, results: list) -> None:
    """Advance every running child once: deadlines, reads, reaping."""
    now = time.monotonic()
    for job in running.values():
        if not job.timed_out and now >= job.deadline:
            job.timed_out = True
            _kill(job)
            _close(job)
    fds = [job.fd for job in running.values() if job.fd is not None]
    waits = [job.deadline - now for job in running.values() if job.fd is not None]
    timeout = _POLL_S if len(fds) < len(running) else max(0.0, min(waits, default=_POLL_S))
    if fds:
        readable = set(select.select(fds, [], [], timeout)[0])
    else:
        readable = set()
        time.sleep(timeout)
    cap = opts["max_output"] * 2 + RESULT_OVERHEAD_BYTES
    for job in running.values():
        if job.fd in readable:
            chunk = os.read(job.fd, 1 << 16)
            job.buf += chunk
            if not chunk:
                _close(job)
            elif len(job.buf) > cap:
                job.overflow = True
                _kill(job)
                _close(job)
    for index, job in list(running.items()):
        if job.fd is None:
            pid, status = os.waitpid(job.pid, os.WNOHANG)
            if pid:
                _kill(job)  # anything left in its process group
                results[index] = _finish(job, status, opts)
                del running[index]


def run_batch(programs: list[str], opts: dict) -> list[dict]:
    """Run programs with at most opts['parallel'] children at a time; results in input order."""
    results: list = [None] * len(programs)
    pending = list(range(len(programs)))[::-1]
    running: dict[int, _Job] = {}
    while pending or running:
        while pending and len(running) < opts["parallel"]:
            index = pending.pop()
            running[index] = _spawn(programs[index], opts)
        _pump(running, opts, results)
    return results


def main() -> None:
    options = json.loads(sys.argv[1]) if len(sys.argv) > 1 else {}
    preload(numpy=bool(options.get("numpy")))
    fixed = boundary(options.get("home"))
    probe = run_batch([PROBE], {**PROBE_OPTIONS, **fixed})[0]
    protocol.write_message(1, {"ready": True, "pid": os.getpid(), "probe": probe})
    while True:
        request = protocol.read_message(0)
        if request is None:
            return
        try:
            protocol.write_message(1, {"results": run_batch(request["programs"], {**request["options"], **fixed})})
        except Exception as exc:  # a malformed request must not take the server down
            protocol.write_message(1, {"error": f"{type(exc).__name__}: {exc}"})


if __name__ == "__main__":
    main()
