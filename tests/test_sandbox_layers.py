"""Sandbox layers: what is hidden, which layers are reported, the once-per-process warning, `sandbox.require`.

A kernel that refuses a layer is simulated for real: a helper process (this file run as a script) installs
a seccomp filter that makes `unshare` or `prctl(PR_SET_SECCOMP)` fail, as a locked-down kernel or container
would, and then starts sandboxes, which inherit the filter.
"""
from __future__ import annotations

import ctypes
import errno
import json
import os
import platform
import subprocess
import sys
import warnings

import pytest

from jaxmath.verify.sandbox import LAYERS, Sandbox, SandboxConfig, SandboxUnavailable, shared_sandbox
from jaxmath.verify.sandbox.confine import _ARCH, _SockFprog, _insn, hiding_plan

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SECRET = "jaxmath-layers-secret-51c9"


@pytest.fixture(scope="module")
def bare():
    with Sandbox(timeout=2.0, memory_mb=512, workers=1, python_guards=False) as sb:
        yield sb


def test_hiding_plan_covers_outer_dirs_and_binds_back_only_the_needed_paths(tmp_path):
    for d in ("home/u/.pyenv/lib/python3/site-packages", "home/u/.ssh", "tmp/venv/lib", "opt/py/lib", "run"):
        (tmp_path / d).mkdir(parents=True)
    (tmp_path / "home/u/lib.zip").write_text("")
    t = str(tmp_path)
    plan = hiding_plan([f"{t}/home", f"{t}/home/u", f"{t}/tmp", f"{t}/run", f"{t}/absent", "/"],
                       [f"{t}/home/u/.pyenv/lib/python3", f"{t}/home/u/.pyenv/lib/python3/site-packages",
                        f"{t}/home/u/lib.zip", f"{t}/tmp/venv/lib", f"{t}/opt/py/lib", f"{t}/missing"])
    assert plan == {f"{t}/home": [f"{t}/home/u/.pyenv/lib/python3", f"{t}/home/u/lib.zip"],
                    f"{t}/run": [], f"{t}/tmp": [f"{t}/tmp/venv/lib"]}
    (tmp_path / "link").symlink_to(tmp_path / "tmp")  # hidden and needed paths are compared resolved
    assert hiding_plan([f"{t}/link"], [f"{t}/link/venv/lib"]) == {f"{t}/tmp": [f"{t}/tmp/venv/lib"]}


def test_every_layer_is_achieved_or_reported_missing_with_a_reason(bare):
    layers, missing = bare.layers, bare.missing_layers
    assert set(layers) | set(missing) == set(LAYERS) and not set(layers) & set(missing)
    assert list(layers) == [name for name in LAYERS if name in layers]  # in the order applied
    assert all(isinstance(why, str) and why for why in missing.values())
    assert {"no_capabilities", "rlimits"} <= set(layers)  # never optional: a child that cannot get them never runs
    assert bare.run("answer = 1").layers == layers


def test_required_layers_that_are_achieved_start_and_unknown_names_are_refused(bare):
    achieved = bare.layers
    with Sandbox(require=achieved) as sb:
        assert sb.start() == achieved
    with pytest.raises(ValueError, match=r"unknown sandbox layer\(s\) 'selinux' \(known: user_namespace, "):
        Sandbox(require=["seccomp", "selinux"])
    with pytest.raises(ValueError, match="'chroot'"):
        SandboxConfig(require=["chroot"])


def test_config_sections_and_flags_take_sandbox_require(tmp_path, capsys):
    from jaxmath.config import ConfigError, from_dict
    from jaxmath.commands.data import main as data_main
    from jaxmath.synthesis.config import SynthesisConfig
    from jaxmath.train.config import TrainConfig

    config = from_dict(SynthesisConfig, {"output": "x.jsonl", "sandbox": {"require": ["seccomp", "hidden_dirs"]}})
    assert config.sandbox.require == ["seccomp", "hidden_dirs"]
    with pytest.raises(ConfigError, match=r"sandbox: unknown sandbox layer\(s\) 'bogus'"):
        from_dict(SynthesisConfig, {"output": "x.jsonl", "sandbox": {"require": ["bogus"]}})
    with pytest.raises(ConfigError, match="sandbox.require is checked by GRPO runs only, and objective is 'sft'"):
        from_dict(TrainConfig, {"sandbox": {"require": ["seccomp"]}})
    with pytest.raises(SystemExit):
        data_main(["synthesize", "--output", "x", "--require-sandbox", "bogus"])
    assert "argument --require-sandbox: invalid choice: 'bogus'" in capsys.readouterr().err


def test_a_working_directory_inside_a_hidden_dir_is_not_reachable(tmp_path, monkeypatch):
    (tmp_path / "canary.txt").write_text(SECRET)
    monkeypatch.chdir(tmp_path)  # the server and its children start here
    with Sandbox(timeout=2.0, workers=1, python_guards=False) as sb:
        if "hidden_dirs" in sb.missing_layers:
            pytest.skip(f"this kernel refuses the hidden_dirs layer: {sb.missing_layers['hidden_dirs']}")
        result = sb.run("import os\ntry:\n    text = open('canary.txt').read()\nexcept OSError as exc:\n"
                        "    text = type(exc).__name__\nanswer = (os.getcwd(), text, 'canary.txt' in os.listdir('.'))")
    assert result.value == "('/', 'FileNotFoundError', False)", result


# --- kernels that refuse a layer, simulated with a seccomp filter in a helper process ----------------

_LD, _JEQ, _JSET, _RET = 0x20, 0x15, 0x45, 0x06
_ALLOW, _ERRNO = 0x7FFF0000, 0x00050000
_PRCTL = {"x86_64": 157, "aarch64": 167}
# scenario -> (syscall, argument tested, how, value, errno returned) and the layers then missing
SCENARIOS = {
    "namespaces": (("unshare", 0, None, 0, errno.EPERM),
                   ("user_namespace", "namespaces", "readonly_fs", "private_proc", "hidden_dirs")),
    "user_namespace": (("unshare", 0, _JSET, 0x10000000, errno.EPERM), ("user_namespace",)),  # CLONE_NEWUSER
    # mounting a fresh proc (flags MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC), as Docker's masked /proc refuses
    "private_proc": (("mount", 3, _JEQ, 15, errno.EPERM), ("private_proc",)),
    "seccomp": (("prctl", 0, _JEQ, 22, errno.EINVAL), ("seccomp",)),  # PR_SET_SECCOMP
}


def refusing_filter(machine: str, syscall: str, arg: int, test: int | None, value: int, err: int) -> bytes:
    """A BPF program that fails `syscall` with `err` (when argument `arg` passes `test` against `value`)."""
    arch, numbers = _ARCH[machine]
    nr = _PRCTL[machine] if syscall == "prctl" else numbers[syscall]
    prog = [_insn(_LD, 4), _insn(_JEQ, arch, jt=1), _insn(_RET, _ALLOW), _insn(_LD, 0)]
    if test is None:
        prog += [_insn(_JEQ, nr, jf=1), _insn(_RET, _ERRNO | err)]
    else:  # the low 32 bits of the argument (seccomp_data.args[arg] at offset 16 + 8 * arg, little-endian)
        prog += [_insn(_JEQ, nr, jf=3), _insn(_LD, 16 + 8 * arg), _insn(test, value, jf=1),
                 _insn(_RET, _ERRNO | err)]
    return b"".join(prog + [_insn(_RET, _ALLOW)])


def _refused_main(scenario: str, canary: str, tmp: str, end_to_end: bool) -> dict:
    """In the helper process: refuse the scenario's syscall, then report what sandboxes see and do."""
    code = refusing_filter(platform.machine(), *SCENARIOS[scenario][0])
    buf = ctypes.create_string_buffer(code, len(code))
    prog = _SockFprog(len(code) // 8, ctypes.cast(buf, ctypes.c_void_p))
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(38, 1, 0, 0, 0) or libc.prctl(22, 2, ctypes.byref(prog), 0, 0):
        return {"unsupported": os.strerror(ctypes.get_errno())}
    out: dict = {}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with Sandbox(python_guards=False, timeout=2.0, workers=1) as sb:
            out.update(layers=sb.layers, missing=sb.missing_layers,
                       read=sb.run(f"answer = open({canary!r}).read()").value,
                       proc=sb.run("import os\nanswer = sorted(os.listdir('/proc'))").value,
                       result_layers=sb.run("answer = 1").layers)
        try:
            Sandbox(require=["rlimits", SCENARIOS[scenario][1][0]]).start()
        except SandboxUnavailable as exc:
            out["require_error"] = str(exc)
    out["warnings"] = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    if end_to_end:  # each command that runs programs fails at start, naming the layer
        from jaxmath.cli import main as cli_main

        layer = SCENARIOS[scenario][1][0]
        commands = {"synthesize": ["data", "synthesize", "--input", f"{tmp}/none.jsonl", "--output", f"{tmp}/o.jsonl",
                                   "--teacher", "http://127.0.0.1:9/v1", "--teacher-model", "m",
                                   "--require-sandbox", layer],
                    "eval": ["eval", "--model", f"{tmp}/none", "--benchmarks", "gsm8k", "--format", "pot",
                             "--out", f"{tmp}/eval", "--require-sandbox", layer],
                    "train": ["train", "--config", os.path.join(REPO, "configs/grpo/tiny-cpu.yaml"),
                              "--output-dir", f"{tmp}/run", "--set", f"sandbox.require=[{layer}]"]}
        for name, argv in commands.items():
            out[name] = cli_main(argv)
            out[f"{name}_made"] = sorted(os.listdir(tmp))
    return out


@pytest.mark.parametrize("scenario", [pytest.param("namespaces"),
                                      pytest.param("user_namespace", marks=pytest.mark.slow),
                                      pytest.param("private_proc", marks=pytest.mark.slow),
                                      pytest.param("seccomp", marks=pytest.mark.slow)])
def test_a_refused_layer_is_reported_warned_once_and_fails_when_required(scenario, tmp_path, capfd):
    if platform.machine() not in _ARCH:
        pytest.skip(f"no syscall table for {platform.machine()}")
    canary = tmp_path / "canary.txt"
    canary.write_text(SECRET)
    work = tmp_path / "work"
    work.mkdir()
    end_to_end = scenario == "seccomp"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([REPO, os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), scenario, str(canary), str(work),
                           str(int(end_to_end))], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    if "unsupported" in out:
        pytest.skip(f"this kernel refuses seccomp filters, so refusals cannot be simulated: {out['unsupported']}")
    expected = SCENARIOS[scenario][1]
    assert set(out["missing"]) == set(expected) and not set(out["layers"]) & set(expected)
    assert set(out["layers"]) | set(out["missing"]) == set(LAYERS)
    assert not set(out["result_layers"]) & set(expected)
    first = out["missing"][expected[0]]
    assert os.strerror(SCENARIOS[scenario][0][-1]) in first, first  # the kernel's refusal, as it said it
    assert len(out["warnings"]) == 1, out["warnings"]  # two sandboxes, one warning
    assert all(name in out["warnings"][0] for name in expected) and first in out["warnings"][0]
    assert out["require_error"].startswith(f"required sandbox layer(s) missing on this machine: {expected[0]} ")
    assert first in out["require_error"] and "rlimits" not in out["require_error"]
    # The report is honest: without a mount namespace the canary is readable, with one it is hidden.
    assert out["read"] == (SECRET if "hidden_dirs" in expected else None)
    if scenario == "private_proc":  # covered: other processes' /proc/PID/root would reach hidden directories
        assert out["proc"] == "[]"
    elif scenario != "namespaces":  # the PID namespace's own, in which the program is PID 1
        assert out["proc"].startswith("['1', 'acpi'")
    if end_to_end:
        for name in ("synthesize", "eval", "train"):
            assert out[name] == 1, name
            assert out[f"{name}_made"] == [], name  # failed before writing anything
        err = proc.stderr
        assert err.count("error: required sandbox layer(s) missing on this machine: seccomp") == 3, err[-3000:]


@pytest.mark.slow
def test_grpo_records_the_layers_in_its_first_metrics_row(tmp_path):
    pytest.importorskip("tensorboardX")
    from jaxmath.config import load_config
    from jaxmath.train.config import TrainConfig
    from jaxmath.train.metrics import read_metrics
    from jaxmath.train.trainer import train as train_grpo

    layers = shared_sandbox().layers
    config = load_config(TrainConfig, os.path.join(REPO, "configs/grpo/tiny-cpu.yaml"),
                         ["train.steps=2", "train.log_every=1", "train.eval_generate=0", "train.export_hf=false",
                          "train.save_every=0", f"sandbox.require=[{','.join(layers)}]"])
    summary = train_grpo(config, tmp_path / "run", progress=False)
    rows = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert [r.get("sandbox_layers") for r in rows] == [list(layers), None]
    assert summary["sandbox_layers"] == list(layers)


if __name__ == "__main__":
    print(json.dumps(_refused_main(sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4] == "1")))
