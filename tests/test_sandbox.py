"""Program-of-thought sandbox: correct programs give the right value; escape and abuse attempts fail safely."""
from __future__ import annotations

import ast
import os
import socket
import subprocess
import sys
import threading
import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxmath.verify.sandbox import STATUSES, Sandbox, run_program
from jaxmath.verify.sandbox.confine import HIDDEN_DIRS

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
    "list memory bomb": ("x = [0] * (10 ** 10)", "memory_limit", "MemoryError"),
    "string memory bomb": ("s = 'a' * 2 ** 33", "memory_limit", "MemoryError"),
    "power tower": ("answer = 9 ** 9 ** 9", "timeout", ""),
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


# --- the same attacks with the Python-level guards on and off ---------------------------------------
# With guards off only the OS layers stand between program and host. Each attack names the layer its
# guards-off outcome rests on: where the kernel refuses that layer the case is skipped (after checking
# that the sandbox reports it missing). Outcomes are (status, text in the error or value).

@pytest.fixture(scope="module")
def boxes(sandbox, bare):
    return {True: sandbox, False: bare}


@pytest.fixture(scope="module")
def listener():
    """A host TCP port no sandboxed program may reach (checked after every attack)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(1)
    sock.setblocking(False)
    yield sock
    sock.close()


@pytest.fixture(scope="module")
def canaries():
    """A secret file in /tmp and one in the caller's home directory, under unique names; removed after."""
    name = f".jaxmath-canary-{uuid.uuid4().hex}"
    paths = {"tmp": os.path.join("/tmp", name), "home": os.path.join(os.path.expanduser("~"), name)}
    for path in paths.values():
        with open(path, "w") as f:
            f.write(SECRET)
    yield {**paths, "name": name}
    for path in paths.values():
        os.remove(path)


def _needs(sb: Sandbox, layer: str) -> None:
    """Skip when this kernel refuses `layer`, after checking the sandbox says so."""
    if layer in sb.missing_layers:
        assert layer not in sb.layers
        pytest.skip(f"this kernel refuses the {layer} layer: {sb.missing_layers[layer]}")
    assert layer in sb.layers


IMPORT_BLOCKED = ("error", "ImportError")
OPEN_REMOVED = ("error", "NameError: name 'open' is not defined")
READ_ONLY = ("error", "Read-only file system")
SECCOMP_DENIED = ("error", "PermissionError: [Errno 1] Operation not permitted")
ATTACKS = {  # name: (program, outcome with guards on, outcome with guards off, layer the latter rests on)
    "read /tmp canary": ("answer = open({tmp!r}).read()", OPEN_REMOVED, ("error", "FileNotFoundError"),
                         "hidden_dirs"),
    "read home canary": ("answer = open({home!r}).read()", OPEN_REMOVED, ("error", "FileNotFoundError"),
                         "hidden_dirs"),
    "list /tmp": ("import os\nanswer = os.listdir('/tmp')", IMPORT_BLOCKED, ("ok", ""), "hidden_dirs"),
    "list home": ("import os\nanswer = os.listdir({home_dir!r})", IMPORT_BLOCKED, ("ok", ""), "hidden_dirs"),
    "write /tmp": ("open({tmp_new!r}, 'w').write('x')", OPEN_REMOVED, READ_ONLY, "hidden_dirs"),
    "write /dev/shm": ("open({shm_new!r}, 'w').write('x')", OPEN_REMOVED, READ_ONLY, "hidden_dirs"),
    "write the repository": ("open({repo_new!r}, 'w').write('x')", OPEN_REMOVED, READ_ONLY, "readonly_fs"),
    "network connect": ("import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=1)",
                        IMPORT_BLOCKED, SECCOMP_DENIED, "seccomp"),
    "exec /bin/sh": ("import os\nos.execv('/bin/sh', ['sh', '-c', 'echo x > {tmp_new}'])", IMPORT_BLOCKED,
                     SECCOMP_DENIED, "seccomp"),
    "fork": ("import os\nanswer = os.fork()", IMPORT_BLOCKED, SECCOMP_DENIED, "seccomp"),
    "fork bomb": ("import os\nwhile True:\n    os.fork()", IMPORT_BLOCKED, SECCOMP_DENIED, "seccomp"),
    "thread": ("import threading\nthreading.Thread(target=print).start()", IMPORT_BLOCKED,
               ("error", "can't start new thread"), "seccomp"),
    "subprocess": ("import subprocess\nsubprocess.run(['/bin/sh', '-c', 'echo x > {tmp_new}'])", IMPORT_BLOCKED,
                   SECCOMP_DENIED, "seccomp"),
    "os.system": ("import os\nanswer = os.system('echo x > {tmp_new}')", IMPORT_BLOCKED, ("ok", "32512"),
                  "seccomp"),  # glibc: posix_spawn failed, W_EXITCODE(127, 0)
    "ctypes fork": ("import ctypes\nanswer = [ctypes.CDLL(None).fork() for _ in range(100)][-1]", IMPORT_BLOCKED,
                    ("ok", "-1"), "seccomp"),
    "new session": ("import os\nos.setsid()", IMPORT_BLOCKED, SECCOMP_DENIED, "seccomp"),
    "signal the parent": ("import os\nos.kill(os.getppid(), 9)", IMPORT_BLOCKED, SECCOMP_DENIED, "seccomp"),
    "signal the host": ("import os\nos.kill({host_pid}, 9)", IMPORT_BLOCKED, SECCOMP_DENIED, "seccomp"),
    "ctypes kill": ("import ctypes\nanswer = ctypes.CDLL(None).kill({host_pid}, 9)", IMPORT_BLOCKED,
                    ("ok", "-1"), "seccomp"),
    "ctypes unmount /tmp": ("import ctypes, os\nlibc = ctypes.CDLL(None, use_errno=True)\n"
                            "answer = (libc.umount2(b'/tmp', 2), ctypes.get_errno(), os.listdir('/tmp'))",
                            IMPORT_BLOCKED, ("ok", "(-1, 1, ["), "seccomp"),
    "ctypes mount over /tmp": ("import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\n"
                               "answer = (libc.mount(b'x', b'/tmp', b'tmpfs', 0, None), ctypes.get_errno())",
                               IMPORT_BLOCKED, ("ok", "(-1, 1)"), "seccomp"),
    "memory bomb": ("x = bytearray(2 ** 34)", ("memory_limit", "MemoryError"), ("memory_limit", "MemoryError"),
                    "rlimits"),
    "huge output": ("while True:\n    print('spam' * 100)", ("output_limit", "output"),
                    ("output_limit", "output"), "rlimits"),
    "infinite loop": ("while True:\n    pass", ("timeout", "wall-clock"), ("timeout", "wall-clock"), "rlimits"),
    "signals ignored, then a loop": ("import signal\nfor s in (signal.SIGXCPU, signal.SIGTERM, signal.SIGALRM):\n"
                                     "    signal.signal(s, signal.SIG_IGN)\nwhile True:\n    pass",
                                     IMPORT_BLOCKED, ("timeout", ""), "rlimits"),
}
SLOW_ATTACKS = {"infinite loop", "signals ignored, then a loop"}  # each waits out the wall-clock limit


@pytest.mark.parametrize("guards", [True, False], ids=["guards_on", "guards_off"])
@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW_ATTACKS else n
                                  for n in ATTACKS])
def test_attack_is_blocked_killed_or_limited(boxes, listener, canaries, guards, name):
    program, guarded, bare_outcome, layer = ATTACKS[name]
    sb = boxes[guards]
    if not guards:
        _needs(sb, layer)
    marker = f"jaxmath-sandbox-pwned-{uuid.uuid4().hex}"
    places = {"tmp_new": f"/tmp/{marker}", "shm_new": f"/dev/shm/{marker}",
              "repo_new": os.path.join(os.path.dirname(os.path.abspath(__file__)), marker)}
    sb.start()
    server = sb.server_pid
    result = sb.run(program.format(**canaries, **places, home_dir=os.path.expanduser("~"),
                                   port=listener.getsockname()[1], host_pid=os.getpid()))
    status, text = guarded if guards else bare_outcome
    if name == "write the repository" and not guards and places["repo_new"].startswith(tuple(d + "/" for d in HIDDEN_DIRS)):
        text = "No such file or directory"  # a checkout under /tmp or a home directory is hidden, not read-only
    assert result.status == status, result
    assert text in (result.error or "") + (result.value or ""), result
    assert SECRET not in (result.value or "") + result.stdout + (result.error or "")
    assert canaries["name"] not in (result.value or "")
    assert not any(os.path.exists(p) for p in places.values())
    with pytest.raises(BlockingIOError):
        listener.accept()  # nothing connected
    assert sb.server_pid == server  # the fork server survived
    assert result.duration_s < sb.timeout + 1.0
    _assert_host_unaffected(sb)


def test_guards_off_cannot_read_or_list_canaries_in_home_and_tmp(bare, canaries):
    _needs(bare, "hidden_dirs")
    home = os.path.expanduser("~")
    code = f"""import glob, os
found = {{}}
for path in ({canaries['tmp']!r}, {canaries['home']!r}, '/proc/1/root' + {canaries['tmp']!r},
             '/proc/{bare.server_pid}/root' + {canaries['home']!r}, '/proc/{os.getpid()}/cwd/' + {canaries['name']!r}):
    try:
        found[path] = open(path).read()
    except OSError as exc:
        found[path] = type(exc).__name__
for directory in ('/tmp', {home!r}, '/var/tmp', '/dev/shm', '/run', '/home'):
    found[directory] = sorted(os.listdir(directory)) if os.path.isdir(directory) else None
found['glob'] = glob.glob('/tmp/.jaxmath-canary-*') + glob.glob({home!r} + '/.*')
found['exists'] = [os.path.exists(p) for p in ({canaries['tmp']!r}, {canaries['home']!r})]
answer = repr(found)"""
    result = bare.run(code)
    assert result.status == "ok", result
    found = ast.literal_eval(result.value)
    assert SECRET not in result.value
    for path in list(found)[:5]:
        assert found[path] in ("FileNotFoundError", "PermissionError"), (path, found[path])
    assert found["exists"] == [False, False]
    # Each covered directory shows at most the first step towards a path the interpreter imports from.
    roots = [os.path.realpath(p) for p in sys.path if p and os.path.exists(p)]
    for directory in ("/tmp", home, "/var/tmp", "/dev/shm", "/run", "/home"):
        real = os.path.realpath(directory)
        allowed = {os.path.relpath(r, real).split("/")[0] for r in roots if r.startswith(real.rstrip("/") + "/")}
        if found[directory] is not None:
            assert set(found[directory]) <= allowed, (directory, found[directory], allowed)
    for path in found["glob"]:  # dot-entries of home: only those on the way to the interpreter
        assert any(r == path or r.startswith(path + "/") for r in roots), path


FRAGMENTS = ["answer = 1", "import os", "import sympy", "x = 1 / 0", "print('a' * 50)", "assert False",
             "def solution():\n    return 7", "answer = os.listdir('/')", "raise SystemExit(2)", "answer = '\\x00'",
             "import ctypes", "answer = [1] * 10 ** 6", "result = sympy.Symbol('x') ** 2", "open('/etc/hostname')"]


@pytest.mark.slow
@pytest.mark.parametrize("guards", [True, False], ids=["guards_on", "guards_off"])
@settings(max_examples=15, deadline=None)
@given(codes=st.lists(st.one_of(st.text(max_size=300),
                                st.lists(st.sampled_from(FRAGMENTS), min_size=1, max_size=5).map("\n".join)),
                      min_size=1, max_size=4))
def test_any_text_gives_a_result_never_an_exception(boxes, guards, codes):
    results = boxes[guards].run_batch(codes)
    assert len(results) == len(codes)
    for result in results:
        assert result.status in STATUSES and result.status != "crashed", result
        assert result.value is None or isinstance(result.value, str)
        assert (result.status == "ok") == (result.error is None), result


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


def test_bare_raw_output_does_not_reach_the_host(bare, capfd):
    result = bare.run("import os\nfor _ in range(1000):\n    os.write(1, b'x' * 1000)\nanswer = 1")
    assert (result.status, result.value) == ("ok", "1")
    assert "xxxx" not in capfd.readouterr().out
