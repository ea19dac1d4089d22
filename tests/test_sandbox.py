"""Program-of-thought sandbox: correct programs give the right value; escape and abuse attempts fail safely."""
from __future__ import annotations

import os
import socket
import subprocess
import threading

import pytest

from jaxmath.verify.sandbox import STATUSES, Sandbox, run_program

SECRET = "jaxmath-test-secret-7f3a"


@pytest.fixture(scope="module")
def sandbox():
    os.environ["JAXMATH_TEST_SECRET"] = SECRET  # present in the host; must never reach a program
    with Sandbox(timeout=1.5, memory_mb=512, max_output=10_000, workers=2) as sb:
        yield sb
    os.environ.pop("JAXMATH_TEST_SECRET", None)


@pytest.fixture(scope="module")
def bare():
    """No Python-level hygiene at all: only the process boundary stands between program and host."""
    with Sandbox(timeout=1.5, memory_mb=512, max_output=10_000, workers=2, python_guards=False) as sb:
        yield sb


def _children(pid: int) -> list[int]:
    kids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    stat = f.read()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                kids.append(int(entry))
    return kids


def _assert_host_unaffected(sb: Sandbox) -> None:
    assert not _children(sb.server_pid), "a sandboxed process outlived its run"
    again = sb.run("answer = 2 + 2")
    assert (again.status, again.value) == ("ok", "4")


# --- correct programs -----------------------------------------------------------------------------

CORRECT = [
    ("answer = 6 * 7", "42"),
    ("result = sum(range(101))", "5050"),
    ("print('work')\nprint(17)", "17"),
    ("def solution():\n    total = 3 * 4\n    return total\n", "12"),
    ("from fractions import Fraction\nanswer = Fraction(1, 3) + Fraction(1, 6)", "1/2"),
    ("import math\nanswer = math.comb(10, 3)", "120"),
    ("import itertools\nanswer = sum(1 for p in itertools.permutations(range(4)) if p[0] < p[-1])", "12"),
    ("from decimal import Decimal\nanswer = Decimal('0.1') + Decimal('0.2')", "0.3"),
    ("import sympy as sp\nx = sp.Symbol('x')\nanswer = sorted(sp.solve(x**2 - 5*x + 6, x))", "[2, 3]"),
    ("import sympy\nanswer = sympy.integrate(sympy.Symbol('t')**2, (sympy.Symbol('t'), 0, 3))", "9"),
    ("class Acc:\n    def __init__(self):\n        self.n = 0\na = Acc()\na.n += 5\nanswer = a.n", "5"),
    ("answer = 0.5", "0.5"),
]


@pytest.mark.parametrize("code,expected", CORRECT)
def test_correct_programs_return_their_value(sandbox, code, expected):
    result = sandbox.run(code)
    assert result.status == "ok", result.error
    assert result.value == expected
    assert result.asserts_passed


def test_batch_keeps_order_and_counts_asserts(sandbox):
    codes = ["x = 3\nassert x * 2 == 6\nanswer = x", "assert 1 + 1 == 3\nanswer = 1", "answer = 'n'", "def ("]
    results = sandbox.run_batch(codes)
    assert [r.status for r in results] == ["ok", "assertion_failed", "ok", "syntax_error"]
    assert [r.value for r in results] == ["3", None, "n", None]
    assert [r.n_asserts for r in results] == [1, 1, 0, 0]
    assert [r.asserts_passed for r in results] == [True, False, True, False]
    assert all(r.status in STATUSES for r in results)


def test_layers_include_the_process_boundary(sandbox):
    layers = set(sandbox.layers)
    assert {"rlimits", "no_capabilities"} <= layers
    assert "namespaces" in layers or "seccomp" in layers  # no network without one of them


def test_numpy_is_opt_in():
    assert run_program("import numpy").status == "error"
    result = run_program("import numpy as np\nanswer = int(np.arange(5).sum())", allow_numpy=True)
    assert (result.status, result.value) == ("ok", "10")


def test_bad_argument_is_a_clear_error(sandbox):
    with pytest.raises(TypeError, match="program 1 is int"):
        sandbox.run_batch(["answer = 1", 5])
    with pytest.raises(ValueError, match="timeout"):
        Sandbox(timeout=0)


def test_runs_from_worker_threads(sandbox):
    values = []
    threads = [threading.Thread(target=lambda k=k: values.append(sandbox.run(f"answer = {k} * 2").value))
               for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(values) == ["0", "2", "4", "6"]


# --- escape and abuse attempts, with the Python-level hygiene on -----------------------------------

ESCAPES = {
    "import os": ("import os\nos.system('id')", "error", "ImportError"),
    "import subprocess": ("import subprocess\nsubprocess.run(['id'])", "error", "ImportError"),
    "import socket": ("import socket\nsocket.create_connection(('1.1.1.1', 80))", "error", "ImportError"),
    "__import__": ("__import__('os').system('id')", "error", "not allowed"),
    "importlib": ("import importlib\nimportlib.import_module('os')", "error", "ImportError"),
    "sys.modules": ("import sys\nsys.modules['os'].system('id')", "error", "ImportError"),
    "builtins": ("import builtins\nbuiltins.open('/etc/passwd')", "error", "ImportError"),
    "math.__loader__": ("import math\nmath.__loader__.load_module('os')", "error", "__loader__"),
    "subclasses walk": ("().__class__.__base__.__subclasses__()", "error", "not allowed"),
    "getattr walk": ("getattr(getattr((), '__cla' + 'ss__'), '__base__')", "error", "not allowed"),
    "frame walk": ("g = (i for i in [1])\nanswer = g.gi_frame.f_globals", "error", "not allowed"),
    "open": ("answer = open('/etc/passwd').read()", "error", "NameError"),
    "eval": ("eval('1+1')", "error", "NameError"),
    "exec": ("exec('import os')", "error", "NameError"),
    "compile": ("compile('1', 'f', 'eval')", "error", "NameError"),
    "relative import": ("from . import guest", "error", "ImportError"),
    "sympify os.system": ("import sympy\nsympy.sympify(\"__import__('os').system('touch /x')\")",
                          "error", "os.system is not allowed"),
    "sympify ctypes": ("import sympy\nsympy.sympify(\"__import__('ctypes').CDLL(None)\")", "error", "ctypes"),
    "sympify open write": ("import sympy\nsympy.sympify(\"open('/tmp/pwned', 'w')\")", "error", "not allowed"),
    "sympify read file": ("import sympy\nsympy.sympify(\"open('/etc/hostname').read()\")", "error", "not allowed"),
    "sympify fork": ("import sympy\nsympy.sympify(\"__import__('os').fork()\")", "error", "os.fork"),
    "memory bomb": ("x = [0] * (10 ** 10)", "memory_limit", "MemoryError"),
    "string memory bomb": ("s = 'a' * 2 ** 33", "memory_limit", "MemoryError"),
    "infinite loop": ("while True:\n    pass", "timeout", "wall-clock"),
    "power tower": ("answer = 9 ** 9 ** 9", "timeout", ""),
    "huge output": ("while True:\n    print('spam' * 100)", "output_limit", "output"),
    "huge int to text": ("answer = 10 ** 20000", "error", "ValueError"),
    "deep recursion": ("def f(n):\n    return f(n + 1)\nf(0)", "error", "RecursionError"),
    "decimal precision bomb": ("import decimal\ndecimal.getcontext().prec = 10**9\n"
                               "answer = decimal.Decimal(1) / decimal.Decimal(7)", None, ""),
    "NUL bytes": ("answer = 1\x00", "syntax_error", ""),
    "exit code": ("raise SystemExit(3)", "error", "SystemExit"),
    "catching the output limit": ("while True:\n    try:\n        print('x' * 1000)\n"
                                  "    except Exception:\n        pass", "output_limit", ""),
}


@pytest.mark.parametrize("name", sorted(ESCAPES))
def test_escape_attempt_fails_safely(sandbox, name):
    code, status, message = ESCAPES[name]
    result = sandbox.run(code)
    if status is None:  # any safe failure: a limit, not success and not a sandbox crash
        assert result.status in ("memory_limit", "timeout"), result
    else:
        assert result.status == status, result
        assert message in (result.error or ""), result.error
    assert result.duration_s < sandbox.timeout + 1.0
    _assert_host_unaffected(sandbox)


# --- the boundary on its own: the same attacks with every Python-level guard off ------------------

def test_bare_secrets_stay_in_the_host(bare):
    # A host process whose initial environment holds a secret, readable at /proc/PID/environ.
    holder = subprocess.Popen(["sleep", "30"], env={"JAXMATH_TEST_SECRET": SECRET})
    code = ("import os, glob\nvals = list(os.environ.values())\n"
            "for p in glob.glob('/proc/*/environ'):\n"
            "    try:\n        vals.append(open(p, 'rb').read().decode('latin-1'))\n"
            "    except OSError:\n        pass\n"
            f"answer = any({SECRET!r} in v for v in vals)")
    try:
        result = bare.run(code)
    finally:
        holder.kill()
        holder.wait()
    assert (result.status, result.value) == ("ok", "False"), result


def test_bare_host_processes_are_invisible_and_unkillable(bare):
    result = bare.run(f"import os\nos.kill({os.getpid()}, 9)")
    assert result.status == "error" and "Error" in result.error
    ctypes_kill = bare.run(f"import ctypes\nanswer = ctypes.CDLL(None).kill({os.getpid()}, 9)")
    assert ctypes_kill.value == "-1"
    _assert_host_unaffected(bare)


def test_bare_no_network(bare):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    listener.settimeout(0.2)
    port = listener.getsockname()[1]
    try:
        result = bare.run(f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=1)")
        assert result.status == "error" and ("PermissionError" in result.error or "refused" in result.error)
        with pytest.raises(socket.timeout):
            listener.accept()  # nothing ever connected
    finally:
        listener.close()


@pytest.mark.parametrize("target", ["/tmp", "/dev/shm", "REPO"])
def test_bare_filesystem_is_not_writable(bare, target, tmp_path):
    directory = os.path.dirname(os.path.abspath(__file__)) if target == "REPO" else target
    path = os.path.join(directory, f"sandbox-pwned-{os.getpid()}")
    result = bare.run(f"open({path!r}, 'w').write('x')")
    assert result.status == "error" and "Error" in result.error
    assert not os.path.exists(path)


@pytest.mark.parametrize("code", [
    "import os\nwhile True:\n    os.fork()",
    "import subprocess\nsubprocess.run(['/bin/sh', '-c', 'touch /tmp/sandbox-pwned'])",
    "import os\nos.system('touch /tmp/sandbox-pwned')\nanswer = os.system('true')",
    "import ctypes\nlibc = ctypes.CDLL(None)\nanswer = [libc.fork() for _ in range(100)][-1]",
    "import threading\nfor _ in range(10000):\n    threading.Thread(target=input).start()",
    "import os\nos.setsid()",
])
def test_bare_no_new_processes(bare, code):
    result = bare.run(code)
    assert result.status == "error" or result.value in ("-1", "127", "32512"), result
    assert not os.path.exists("/tmp/sandbox-pwned")
    _assert_host_unaffected(bare)


def test_bare_signal_tampering_cannot_outlive_the_deadline(bare):
    code = ("import signal\nfor s in (signal.SIGXCPU, signal.SIGTERM, signal.SIGINT, signal.SIGALRM):\n"
            "    signal.signal(s, signal.SIG_IGN)\nwhile True:\n    pass")
    result = bare.run(code)
    assert result.status == "timeout"
    _assert_host_unaffected(bare)


def test_bare_raw_output_does_not_reach_the_host(bare, capfd):
    result = bare.run("import os\nfor _ in range(1000):\n    os.write(1, b'x' * 1000)\nanswer = 1")
    assert (result.status, result.value) == ("ok", "1")
    assert "xxxx" not in capfd.readouterr().out
