"""Heavy optional libraries (pandas, ta, matplotlib, torch) load only where they are used: importing jaxmath's
modules loads none of them, while drawing a technical-analysis problem does load pandas and ta (so the check
can fail). Each check runs in a fresh interpreter, whose sys.modules nothing else has touched."""
from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ("pandas", "ta", "matplotlib", "torch")


def loaded_after(code: str, names: tuple[str, ...] = HEAVY) -> list[str]:
    """Which of `names` are in sys.modules after running `code` in a new interpreter."""
    probe = f"{code}\nimport json, sys\nprint(json.dumps([n for n in {list(names)!r} if n in sys.modules]))"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_importing_the_data_package_and_its_generators_loads_neither_pandas_nor_ta():
    assert loaded_after("import jaxmath.data, jaxmath.data.generators, jaxmath.data.builder") == []
    drawn = "from jaxmath.data.generators import generate\nassert generate('ta__sma', 1, seed=0)[0].answer"
    assert loaded_after(drawn, ("pandas", "ta")) == ["pandas", "ta"]


def test_no_jaxmath_module_loads_a_heavy_optional_library_at_import():
    walk = ("import importlib, pkgutil, jaxmath\n"
            "for module in pkgutil.walk_packages(jaxmath.__path__, 'jaxmath.'):\n"
            "    importlib.import_module(module.name)")
    assert loaded_after(walk) == []
