"""Program-of-thought sandbox: run model-written Python in confined, disposable processes.

The boundary is the process (namespaces, read-only filesystem, rlimits, seccomp, wall-clock kill);
the import allowlist and restricted builtins are hygiene on top.
"""
from .host import BASE_MODULES, STATUSES, ProgramResult, Sandbox, run_program, shared_sandbox

__all__ = ["BASE_MODULES", "STATUSES", "ProgramResult", "Sandbox", "run_program", "shared_sandbox"]
