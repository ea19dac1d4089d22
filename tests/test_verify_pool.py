"""Verifier pool: adversarial inputs return in time without raising, the host's memory stays flat,
workers are replaced after a kill, and batches work from threads."""
from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from jaxmath.verify import Verdict, Verifier

TIMEOUT = 2.0
# An integral sympy tries, and fails, to solve symbolically for far longer than the timeout.
SLOW = r"\int_0^1 e^{-x^{2}} \sin(x^{3}) dx"
ADVERSARIAL = [
    r"10^{10^{10^{10}}}", "9!!!!!!!", r"(10^{1000000})!", "7" * 100_000, "{" * 500 + "}" * 500,
    r"\frac{1}{", r"\left( 1, 2", "1\x002", r"9^{9^{9}}", r"2^{2^{2^{2^{2^{2}}}}}", SLOW,
]


def _rss_kb() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


@pytest.fixture(scope="module")
def verifier():
    with Verifier(workers=2, timeout=TIMEOUT) as v:
        yield v


def test_adversarial_answers_return_in_time_and_never_pass(verifier):
    start = time.monotonic()
    verdicts = verifier.compare_batch(ADVERSARIAL, ["1"] * len(ADVERSARIAL))
    elapsed = time.monotonic() - start
    assert all(isinstance(v, Verdict) for v in verdicts)
    assert not any(v.correct for v in verdicts)
    assert verdicts[-1] == Verdict(Verdict.UNVERIFIABLE, f"timeout after {TIMEOUT:g} s")
    assert elapsed < TIMEOUT * 2 + 3, f"batch took {elapsed:.1f} s"


def test_adversarial_completions_and_golds(verifier):
    completions = [rf"so \boxed{{{a}}}" for a in ADVERSARIAL[:-1]] + ["#### 5"]
    golds = ["1"] * (len(completions) - 1) + [r"10^{10^{10^{10}}}"]
    verdicts = verifier.grade_batch(completions, golds)
    assert not any(v.correct for v in verdicts)
    assert verdicts[-1].outcome is Verdict.UNVERIFIABLE and "gold" in verdicts[-1].reason


def test_host_memory_stays_flat(verifier):
    verifier.compare_batch(ADVERSARIAL[:-1], ["1"] * (len(ADVERSARIAL) - 1))  # warm any host-side caches
    before = _rss_kb()
    for _ in range(3):
        verifier.compare_batch(ADVERSARIAL[:-1], ["1"] * (len(ADVERSARIAL) - 1))
    assert _rss_kb() - before < 20_000


def test_pool_recovers_after_timeouts(verifier):
    verdicts = verifier.compare_batch([SLOW, SLOW, "1/2", r"\sqrt{8}", "x+1"], ["1", "1", "0.5", r"2\sqrt2", "1+x"])
    assert [v.outcome for v in verdicts] == [Verdict.UNVERIFIABLE] * 2 + [Verdict.CORRECT] * 3
    assert len(verifier._all) == verifier.workers


def test_batch_spreads_over_workers_and_keeps_order(verifier):
    preds = [str(k) for k in range(40)]
    golds = [str(k if k % 3 else k + 1) for k in range(40)]
    verdicts = verifier.compare_batch(preds, golds)
    assert [v.correct for v in verdicts] == [k % 3 != 0 for k in range(40)]


def test_usable_from_threads(verifier):
    results: dict[int, list[bool]] = {}

    def work(k: int) -> None:
        verdicts = verifier.grade_batch([rf"\boxed{{{k}}}", "#### 3", "<think>t</think><answer>4</answer>"],
                                        [str(k), "3", "5"])
        results[k] = [v.correct for v in verdicts]

    threads = [threading.Thread(target=work, args=(k,)) for k in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert results == {k: [True, True, False] for k in range(3)}


def test_bad_rows_and_arguments(verifier):
    verdicts = verifier.compare_batch(["1", None], ["1", "1"])  # type: ignore[list-item]
    assert verdicts[0].correct and verdicts[1] == Verdict(Verdict.UNVERIFIABLE, "input is not a string")
    with pytest.raises(ValueError, match="2 answers but 1 gold"):
        verifier.compare_batch(["1", "2"], ["1"])
    with pytest.raises(ValueError, match="unknown extraction style"):
        verifier.grade_batch(["1"], ["1"], style="nope")
    with pytest.raises(ValueError, match="at least one worker"):
        Verifier(workers=0)


def test_workers_run_under_memory_and_cpu_limits(verifier):
    for w in list(verifier._all):
        with open(f"/proc/{w.pid}/limits") as f:
            limits = {line[:26].strip(): line[26:].split() for line in f}
        assert limits["Max address space"][0] == str(2048 << 20)
        assert limits["Max cpu time"][0] != "unlimited"


def test_a_crashed_worker_is_reported_and_replaced(verifier):
    def kill_busy_worker() -> None:
        time.sleep(0.5)
        for w in list(verifier._all):
            with open(f"/proc/{w.pid}/stat") as f:
                running = f.read().rsplit(")", 1)[1].split()[0] == "R"
            if running:
                os.kill(w.pid, signal.SIGKILL)

    killer = threading.Thread(target=kill_busy_worker)
    killer.start()
    verdicts = verifier.compare_batch([SLOW], ["1"])
    killer.join()
    assert verdicts == [Verdict(Verdict.UNVERIFIABLE, "worker died (CPU or memory limit)")]
    assert [v.correct for v in verifier.compare_batch(["2", "3"], ["2", "4"])] == [True, False]
