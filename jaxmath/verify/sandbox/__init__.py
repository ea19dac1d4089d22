"""Program-of-thought sandbox: run model-written Python in confined, disposable processes.

The boundary is the process (namespaces, read-only filesystem, rlimits, seccomp, wall-clock kill);
the import allowlist and restricted builtins are hygiene on top.
"""
from .confine import LAYERS
from .host import (BASE_MODULES, STATUSES, ProgramResult, Sandbox, SandboxConfig, SandboxUnavailable,
                   check_layer_names, require_layers, run_program, shared_layers, shared_sandbox)

__all__ = ["BASE_MODULES", "LAYERS", "STATUSES", "ProgramResult", "Sandbox", "SandboxConfig", "SandboxUnavailable",
           "check_layer_names", "require_layers", "run_program", "shared_layers", "shared_sandbox"]
