"""The worker side of the Verifier: a fork server and the loop each forked worker runs.

`main([FD, MEMORY_BYTES, CPU_SECONDS])` runs the fork server on the Unix socket
`FD`: it imports sympy and the parser once, then forks one worker per byte `f` it receives and sends
back the worker's pid and the host end of its socket. Started by exec, never by forking the host, so
it is safe from any host thread and never re-imports the host's `__main__`.

Worker jobs are tuples `("grade", completion, gold, style)`, `("compare", pred, gold, None)` or
`("ping", "", "", None)`; replies are `(outcome value, reason, retire)`, where `retire` asks the host to
replace the worker (after a MemoryError its heap may be fragmented). `None` ends the loop.
"""
from __future__ import annotations

import os
import resource
import signal
import socket
import struct
from multiprocessing.connection import Connection

from jaxmath.verify.equivalence import grade_one, judge
from jaxmath.verify.verdict import Outcome

PID_FORMAT = "!i"


def _cpu_used() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _limit_cpu(seconds: float) -> None:
    """Let this process use `seconds` more CPU time; past that the kernel sends SIGXCPU (fatal)."""
    _, hard = resource.getrlimit(resource.RLIMIT_CPU)
    soft = int(_cpu_used() + seconds) + 1
    if hard != resource.RLIM_INFINITY:
        soft = min(soft, hard)
    resource.setrlimit(resource.RLIMIT_CPU, (soft, hard))


def _limit_memory(memory_bytes: int) -> None:
    """Cap this process's address space (allocations beyond it raise MemoryError)."""
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        memory_bytes = min(memory_bytes, hard)
    resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, hard))


def _run(job: tuple) -> tuple[str, str, bool]:
    kind, text, gold, style = job
    if kind == "ping":
        return Outcome.CORRECT.value, "", False
    try:
        verdict = grade_one(text, gold, style) if kind == "grade" else judge(text, gold)
    except MemoryError:
        return Outcome.UNVERIFIABLE.value, "out of memory", True
    except RecursionError:
        return Outcome.UNVERIFIABLE.value, "recursion too deep", True
    return verdict.outcome.value, verdict.reason, False


def serve(conn: Connection, memory_bytes: int, cpu_seconds: float) -> None:
    """Answer jobs from `conn` until it closes or sends None."""
    _limit_memory(memory_bytes)
    while True:
        try:
            job = conn.recv()
        except (EOFError, OSError):
            return
        if job is None:
            return
        _limit_cpu(cpu_seconds)
        conn.send(_run(job))


def fork_server(control: socket.socket, memory_bytes: int, cpu_seconds: float) -> None:
    """Fork a worker for each request byte on `control`; exit when the host closes it."""
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # the kernel reaps finished workers
    judge(r"\frac{x}{2}", "x/2")  # warm the LaTeX parser once, for every worker forked below
    while control.recv(1):
        host_end, worker_end = socket.socketpair()
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                control.close()
                host_end.close()
                serve(Connection(worker_end.detach()), memory_bytes, cpu_seconds)
            except BaseException:  # a worker must never return into the fork server's loop
                code = 1
            finally:
                os._exit(code)
        worker_end.close()
        socket.send_fds(control, [struct.pack(PID_FORMAT, pid)], [host_end.fileno()])
        host_end.close()


def main(argv: list[str]) -> None:
    """Entry point of the fork server process: `FD MEMORY_BYTES CPU_SECONDS`."""
    fd, memory, cpu = argv
    fork_server(socket.socket(fileno=int(fd)), int(memory), float(cpu))
