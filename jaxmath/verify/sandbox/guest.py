"""Python-level hygiene and execution of one program inside an already confined sandbox child.

The import allowlist, trimmed builtins, the attribute check and the audit hook are hygiene: they give
clear errors for ordinary misuse. The security boundary is the confined process (see confine.py).
Standard library only: the fork server imports this module as a plain script module.
"""
from __future__ import annotations

import ast
import builtins
import io
import os
import sys
from typing import Any

MAX_VALUE_CHARS = 10_000
INT_MAX_STR_DIGITS = 5_000
SOLUTION_FUNCTION = "solution"  # PAL-style programs define solution() and print nothing
_REMOVED_BUILTINS = ("open", "eval", "exec", "compile", "input", "breakpoint", "help", "exit", "quit",
                     "copyright", "credits", "license", "globals", "locals", "vars", "memoryview",
                     "__loader__", "__spec__", "__import__")
_ALLOWED_DUNDERS = frozenset({"__init__", "__name__", "__doc__"})
_FRAME_PREFIXES = ("f_", "gi_", "cr_", "ag_", "tb_", "co_")
_BLOCKED_EVENTS = frozenset({
    "os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork", "os.forkpty", "subprocess.Popen",
    "socket.__new__", "socket.connect", "socket.bind", "socket.getaddrinfo", "ctypes.dlopen",
    "ctypes.dlsym", "ctypes.cdata", "os.kill", "os.killpg", "signal.pthread_kill", "os.remove",
    "os.rename", "os.rmdir", "os.mkdir", "os.chmod", "os.chown", "os.truncate", "os.link", "os.symlink",
    "os.putenv", "os.unsetenv", "_thread.start_new_thread", "sys._current_frames",
    "code.__new__", "function.__new__", "mmap.__new__", "os.chdir", "sys.addaudithook",
})
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC


class OutputLimitExceeded(BaseException):
    """Raised when a program prints more than its output budget (BaseException: `except Exception` misses it)."""


class _CappedOutput(io.TextIOBase):
    def __init__(self, cap: int):
        self.cap, self.parts, self.size, self.truncated = cap, [], 0, False

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        room = self.cap - self.size
        if len(text) > room:
            self.parts.append(text[:max(room, 0)])
            self.size, self.truncated = self.cap, True
            raise OutputLimitExceeded(f"output exceeded {self.cap} characters")
        self.parts.append(text)
        self.size += len(text)
        return len(text)

    def getvalue(self) -> str:
        return "".join(self.parts)


def _forbidden(name: str, attribute: bool) -> bool:
    if name in _ALLOWED_DUNDERS:
        return False
    if attribute:
        return name.startswith("_") or name.startswith(_FRAME_PREFIXES)
    return name.startswith("__")


def check_source(tree: ast.AST) -> None:
    """Reject private/dunder attribute access and frame/code attributes: the usual attribute walks."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and _forbidden(node.attr, True) \
                or isinstance(node, ast.Name) and _forbidden(node.id, False):
            name = node.attr if isinstance(node, ast.Attribute) else node.id
            raise PermissionError(f"line {node.lineno}: access to {name!r} is not allowed in the sandbox")


def _guarded_attr(fn):
    def wrapper(obj, name, *rest):
        if isinstance(name, str) and _forbidden(name, True):
            raise PermissionError(f"access to {name!r} is not allowed in the sandbox")
        return fn(obj, name, *rest)
    wrapper.__name__ = fn.__name__
    return wrapper


def safe_builtins(allowed_modules: frozenset[str]) -> dict[str, Any]:
    """Builtins without file, eval/exec and introspection helpers, with an import allowlist."""
    real_import = builtins.__import__

    def guarded_import(name, globals=None, locals=None, fromlist=(), level=0):
        if level != 0 or name.partition(".")[0] not in allowed_modules:
            raise ImportError(f"import of {name!r} is not allowed in the sandbox "
                              f"(allowed: {', '.join(sorted(allowed_modules))})")
        return real_import(name, globals, locals, fromlist, level)

    table = {k: v for k, v in vars(builtins).items() if k not in _REMOVED_BUILTINS}
    table.update(__import__=guarded_import, getattr=_guarded_attr(getattr), setattr=_guarded_attr(setattr),
                 delattr=_guarded_attr(delattr), hasattr=_guarded_attr(hasattr))
    return table


def _readable_roots() -> tuple[str, ...]:
    paths = [sys.prefix, sys.base_prefix, sys.exec_prefix] + [p for p in sys.path if p]
    return tuple(os.path.realpath(p) for p in paths) + ("/dev/null", "/dev/urandom")


def install_audit_hook() -> None:
    """Refuse processes, sockets, ctypes, file writes, and reads outside the Python installation."""
    roots = _readable_roots()

    def hook(event: str, args: tuple) -> None:
        if event in _BLOCKED_EVENTS:
            raise PermissionError(f"{event} is not allowed in the sandbox")
        if event == "open":
            path, mode, flags = args
            if isinstance(path, int):
                return
            writing = (mode is not None and any(c in mode for c in "wax+")) or (flags or 0) & _WRITE_FLAGS
            real = os.path.realpath(os.fsdecode(path))
            if writing or not any(real == r or real.startswith(r.rstrip("/") + "/") for r in roots):
                raise PermissionError(f"opening {os.fsdecode(path)!r} is not allowed in the sandbox")

    sys.addaudithook(hook)


def _to_text(value: Any) -> str:
    text = value if isinstance(value, str) else repr(value) if isinstance(value, float) else str(value)
    return text[:MAX_VALUE_CHARS]


def _answer_value(namespace: dict[str, Any], stdout: str) -> Any:
    for key in ("answer", "result"):
        if key in namespace and not callable(namespace[key]):
            return namespace[key]
    lines = [line.strip() for line in stdout.splitlines() if line.strip()]
    if lines:
        return lines[-1]
    fn = namespace.get(SOLUTION_FUNCTION)
    if callable(fn):
        return fn()
    return None


def _status_of(exc: BaseException) -> str:
    if isinstance(exc, AssertionError):
        return "assertion_failed"
    if isinstance(exc, MemoryError):
        return "memory_limit"
    if isinstance(exc, OutputLimitExceeded):
        return "output_limit"
    return "error"


def run(code: str, *, allowed_modules: frozenset[str], max_output: int, python_guards: bool) -> dict:
    """Execute `code`; return a JSON-ready dict: value, stdout, status, error, n_asserts, output_truncated."""
    sys.set_int_max_str_digits(INT_MAX_STR_DIGITS)
    out = _CappedOutput(max_output)
    result = {"value": None, "status": "ok", "error": None, "n_asserts": 0}
    try:
        tree = ast.parse(code, "<program>")
    except (SyntaxError, ValueError) as exc:  # ValueError: NUL bytes
        return dict(result, stdout="", status="syntax_error", error=f"{type(exc).__name__}: {exc}",
                    output_truncated=False)
    result["n_asserts"] = sum(isinstance(n, ast.Assert) for n in ast.walk(tree))
    namespace: dict[str, Any] = {"__name__": "__main__"}
    sys.stdout = sys.stderr = out
    try:
        if python_guards:
            check_source(tree)
            namespace["__builtins__"] = safe_builtins(allowed_modules)
            install_audit_hook()
        exec(builtins.compile(tree, "<program>", "exec"), namespace)
    except SystemExit as exc:
        if exc.code not in (None, 0):
            result.update(status="error", error=f"SystemExit: {exc.code}")
    except BaseException as exc:  # the program's failure is the result, whatever it is
        result.update(status=_status_of(exc), error=f"{type(exc).__name__}: {exc}"[:2000])
    if result["status"] == "ok":
        try:
            value = _answer_value(namespace, out.getvalue())
            result["value"] = None if value is None else _to_text(value)
        except BaseException as exc:  # solution() or str(value) failed
            result.update(status=_status_of(exc), error=f"{type(exc).__name__}: {exc}"[:2000])
    sys.stdout, sys.stderr = sys.__stdout__, sys.__stderr__
    return dict(result, stdout=out.getvalue(), output_truncated=out.truncated)
