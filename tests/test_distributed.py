"""Two JAX processes of 4 CPU devices each (jax.distributed, gloo collectives) behave like one process with 8
devices: same train losses on the same global batches; the trainer's evaluation over rows that do not split
evenly, its graded generation and its export finish on both processes and report what one process reports;
GRPO's metrics cover every process's rollouts. Every wait has a timeout, so a hang fails the test."""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from distributed_worker import grpo_config, sft_config, train_losses

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


def stack_dump(proc: subprocess.Popen) -> str:
    """End a worker and return the end of its stderr, where it printed its Python stacks (on SIGUSR1)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGUSR1)
        time.sleep(5)
        proc.kill()
    return proc.communicate()[1][-6000:]


def run_workers(*args: str, timeout: float = TIMEOUT_S) -> list[dict]:
    """Start two worker processes, wait for both, return their JSON results (process order)."""
    port = free_port()
    procs = [start(i, port, *args) for i in range(2)]
    results = []
    try:
        for proc in procs:
            try:
                out, err = proc.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                stacks = "\n".join(stack_dump(other) for other in procs[procs.index(proc):])
                pytest.fail(f"worker {proc.args[2:]} still running after {timeout}s: a collective hangs\n{stacks}")
            assert proc.returncode == 0, f"worker failed (exit {proc.returncode}):\n{err[-3000:]}"
            results.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return sorted(results, key=lambda r: r["process"])


@pytest.mark.slow
def test_two_processes_match_one_process_with_eight_devices():
    results = run_workers()
    assert sorted(r["process"] for r in results) == [0, 1]
    assert all(r["devices"] == 8 for r in results)
    reference = train_losses()  # this pytest process: one process, 8 simulated devices (conftest)
    assert len(reference) == 3 and np.all(np.isfinite(reference))
    for r in results:
        np.testing.assert_allclose(r["losses"], reference, rtol=1e-6)


def write_records(path: Path, count: int, seed: int) -> Path:
    """`count` addition problems with worked solutions, one JSON record per line."""
    rng = np.random.default_rng(seed)
    with path.open("w") as f:
        for i in range(count):
            a, b = (int(x) for x in rng.integers(1, 50, 2))
            f.write(json.dumps({"id": f"add-{seed}-{i}", "question": f"What is {a} + {b}?", "answer": str(a + b),
                                "solution": f"{a} + {b} = {a + b}. The answer is \\boxed{{{a + b}}}."}) + "\n")
    return path


@pytest.mark.slow
def test_sft_evaluates_uneven_rows_and_exports_across_two_processes(tmp_path):
    """9 held-out rows: process 0 holds 5 (2 eval batches of 4), process 1 holds 4 (1 batch). Both processes
    finish, their evaluation equals one process's over the same rows with the exported weights, and the HF
    export gives transformers the logits jaxmath computes from final_model/."""
    import torch
    import transformers

    import jaxmath
    from jaxmath.train.run import held_out_accuracy as evaluate_accuracy
    from jaxmath.train.run import held_out_figures as evaluate
    from jaxmath.train.run import load_params
    from jaxmath.train.trainer import build_run

    train_file = write_records(tmp_path / "train.jsonl", 64, seed=0)
    eval_file = write_records(tmp_path / "eval.jsonl", 9, seed=1)
    out = tmp_path / "run"
    results = run_workers("sft", str(out), str(train_file), str(eval_file), timeout=4 * TIMEOUT_S)
    first, second = (r["summary"] for r in results)
    assert first == second
    last = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()][-1]
    assert last["step"] == 2 and last["eval_loss"] == first["eval_loss"]
    assert last["eval_accuracy"] == first["eval_accuracy"] in (0.0, 0.5, 1.0)

    # One process, the same rows, the weights the two processes exported.
    config = sft_config(str(train_file), str(eval_file))
    shutil.copytree(out / "tokenizer", tmp_path / "one" / "tokenizer")
    run = build_run(config, tmp_path / "one")
    params = load_params(config, run.model_config, run.mesh, run.shardings.params, path=str(out / "final_model"))
    one = evaluate(run, params)
    assert one["eval_loss"] == pytest.approx(first["eval_loss"], rel=1e-5)
    assert evaluate_accuracy(run, params) == first["eval_accuracy"]

    hf = transformers.AutoModelForCausalLM.from_pretrained(out / "hf").eval()
    ids = np.asarray([run.tokenizer.encode("What is 12 + 30? The answer is")])
    with torch.no_grad():
        theirs = hf(input_ids=torch.tensor(ids)).logits.numpy()
    ours = np.asarray(jaxmath.from_pretrained(out / "final_model")(ids))
    np.testing.assert_allclose(ours, theirs, atol=1e-4)


@pytest.mark.slow
def test_grpo_metrics_cover_both_processes_and_equal_one_process(tmp_path):
    """2 GRPO iterations with rollouts split over two processes (weights sharded over fsdp=4 across the process
    boundary) log the metrics one process with 8 devices logs. Every prompt is the same problem, so both runs
    sample the same global batch (rows differ only by their position's random stream) and the rewards differ
    row by row; the figures must cover every process's rows, not process 0's alone."""
    from jaxmath.train.trainer import train as train_grpo

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"p{i}", "question": "What is 17 + 25?", "answer": "42"}) + "\n"
                               for i in range(8)))
    results = run_workers("grpo", str(tmp_path / "two"), str(prompts), timeout=4 * TIMEOUT_S)
    assert [r["devices"] for r in results] == [8, 8]
    assert results[0]["rows"] == results[1]["rows"]
    train_grpo(grpo_config(str(prompts)), tmp_path / "one", progress=False)
    one = [json.loads(line) for line in (tmp_path / "one" / "metrics.jsonl").read_text().splitlines()]
    two = results[0]["rows"]
    assert [r["step"] for r in two] == [r["step"] for r in one] == [1, 2]
    for mine, theirs in zip(two, one):
        # sandbox_layers appears once a process's shared sandbox exists, which here depends on which tests ran
        # earlier in this worker process, and compile_cache_hits on what earlier runs left in the compilation
        # cache: not figures of the run
        mine, theirs = ({k: v for k, v in row.items() if k not in ("sandbox_layers", "compile_cache_hits")}
                        for row in (mine, theirs))
        assert set(mine) == set(theirs)
        figures = [key for key in mine if not key.endswith(("_seconds", "_per_second"))]  # not timings
        assert {k: mine[k] for k in figures} == pytest.approx({k: theirs[k] for k in figures}, rel=1e-5, abs=1e-7)
    # The test can tell: process 0's rows alone give other figures than both processes' rows.
    local = [np.asarray(r["local_rewards"]) for r in results]
    assert any(np.mean(zero) != np.mean(np.concatenate([zero, other])) for zero, other in zip(*local))
    assert [np.mean(np.concatenate(iteration)) for iteration in zip(*local)] == pytest.approx(
        [r["reward_mean"] for r in two], rel=1e-6)
