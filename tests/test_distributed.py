"""Two JAX processes of 4 CPU devices each (jax.distributed, gloo collectives) train exactly like one process
with 8 devices: same 3 losses on the same global batches."""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np

from distributed_worker import train_losses

WORKER = Path(__file__).resolve().parent / "distributed_worker.py"
TIMEOUT_S = 120


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(process_id: int, port: int, *args: str) -> subprocess.Popen:
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_force_host_platform_device_count=4",
           "JAXMATH_COORDINATOR": f"127.0.0.1:{port}", "JAXMATH_NUM_PROCESSES": "2",
           "JAXMATH_PROCESS_ID": str(process_id)}
    return subprocess.Popen([sys.executable, str(WORKER), *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def run_workers(*args: str, timeout: float = TIMEOUT_S) -> list[dict]:
    """Start two worker processes, wait for both, return their JSON results (process order)."""
    port = free_port()
    procs = [start(i, port, *args) for i in range(2)]
    results = []
    try:
        for proc in procs:
            out, err = proc.communicate(timeout=timeout)
            assert proc.returncode == 0, f"worker failed (exit {proc.returncode}):\n{err[-3000:]}"
            results.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return sorted(results, key=lambda r: r["process"])


def test_two_processes_match_one_process_with_eight_devices():
    results = run_workers()
    assert sorted(r["process"] for r in results) == [0, 1]
    assert all(r["devices"] == 8 for r in results)
    reference = train_losses()  # this pytest process: one process, 8 simulated devices (conftest)
    assert len(reference) == 3 and np.all(np.isfinite(reference))
    for r in results:
        np.testing.assert_allclose(r["losses"], reference, rtol=1e-6)


def test_grpo_runs_across_two_processes(tmp_path):
    """Rollouts, rewards and updates with prompts split over two processes (8 devices, weights sharded over
    fsdp=4 across the process boundary): both processes finish and agree on every update's loss."""
    results = run_workers("grpo", str(tmp_path / "run"), timeout=4 * TIMEOUT_S)
    assert [r["devices"] for r in results] == [8, 8]
    assert len(results[0]["losses"]) == 2 and np.all(np.isfinite(results[0]["losses"]))
    assert results[0]["losses"] == results[1]["losses"]
    assert (tmp_path / "run" / "checkpoints" / "2").is_dir()
