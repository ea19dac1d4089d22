"""Progress everywhere a person waits: long commands draw bars with counts on stderr, --quiet leaves only the
result, every command takes --quiet, and library code reports through `logging` and `progress_bar`, never a
bare print or tqdm."""
import ast
import logging
import re
from pathlib import Path

import pytest
from safetensors import safe_open

from jaxmath import cli
from jaxmath.commands.convert import hf_to_jax_main, jax_to_hf_main
from jaxmath.commands.data import main as data_main
from jaxmath.progress import configure_logging, progress_bar
from tiny_hf import save_tiny, tiny_model

PACKAGE = Path(__file__).resolve().parent.parent / "jaxmath"
# modules whose prints are a command's own output (results, tables, usage); everything else logs
PRINTING_MODULES = {"cli.py", "demo.py", "pipeline.py", "commands/__init__.py", "commands/convert.py",
                    "commands/data.py", "commands/evaluate.py", "commands/generate.py", "commands/push.py",
                    "commands/synthesis.py", "commands/train.py"}


def _calls(tree: ast.AST, name: str) -> list[int]:
    return [node.lineno for node in ast.walk(tree)
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == name]


def test_library_modules_neither_print_nor_draw_their_own_tqdm():
    prints, tqdms = [], []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = path.relative_to(PACKAGE).as_posix()
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        if module not in PRINTING_MODULES:
            prints += [f"jaxmath/{module}:{line}" for line in _calls(tree, "print")]
        imported = [alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names]
        imported += [node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)]
        if module != "progress.py" and any(name.split(".")[0] == "tqdm" for name in imported):
            tqdms.append(f"jaxmath/{module}")
    assert not prints, f"print() in library code (use logging.getLogger(__name__)): {prints}"
    assert not tqdms, f"tqdm used directly (use jaxmath.progress.progress_bar): {tqdms}"
    assert all((PACKAGE / module).exists() for module in PRINTING_MODULES)  # the lists stay current


def _bar(err: str, desc: str) -> str:
    """The last state tqdm drew of the bar named `desc` (bars redraw in place with carriage returns)."""
    states = [part for part in re.split(r"[\r\n]", err) if part.startswith(f"{desc}:")]
    assert states, f"no {desc!r} bar in {err!r}"
    return states[-1]


def test_data_build_shows_a_bar_per_stage_and_quiet_leaves_only_the_report(tmp_path, capfd):
    out = tmp_path / "train.jsonl"
    argv = ["build", "--output", str(out), "--include-synthetic", "--generators", "arithmetic__add_small",
            "--synthetic-samples", "8"]
    assert data_main(argv) == 0
    printed = capfd.readouterr()
    assert len(out.read_text().splitlines()) == 8
    assert "1/1" in _bar(printed.err, "collect") and "source/s" in _bar(printed.err, "collect")
    for desc in ("filter", "write"):
        assert "100%" in _bar(printed.err, desc) and "8/8" in _bar(printed.err, desc)
        assert "record/s" in _bar(printed.err, desc)
    assert "INFO jaxmath.data.builder: [1/4] collecting records" in printed.err
    assert f"wrote 8 records to {out}" in printed.out

    assert data_main([*argv, "--quiet"]) == 0
    quiet = capfd.readouterr()
    assert quiet.err == ""
    assert f"wrote 8 records to {out}" in quiet.out and quiet.out.splitlines()[0].split()[0] == "source"


def test_conversion_counts_every_tensor_and_quiet_leaves_only_the_result(tmp_path, capfd):
    hf = save_tiny(tiny_model("qwen2"), tmp_path / "hf")
    with safe_open(hf / "model.safetensors", "np") as handle:
        tensors = len(list(handle.keys()))
    steps = [(hf_to_jax_main, ["--hf", str(hf), "--out", str(tmp_path / "ckpt")], "HF -> JAX"),
             (jax_to_hf_main, ["--ckpt", str(tmp_path / "ckpt"), "--out", str(tmp_path / "back")], "JAX -> HF")]
    for main, argv, desc in steps:
        assert main(argv) == 0
        printed = capfd.readouterr()
        bar = _bar(printed.err, desc)
        assert "100%" in bar and f"{tensors}/{tensors}" in bar and "tensor/s" in bar
        assert printed.out.startswith("wrote ")
    for main, argv, desc in steps:
        assert main([*argv, "--overwrite", "--quiet"]) == 0
        printed = capfd.readouterr()
        assert printed.err == ""
        assert re.fullmatch(r"wrote \S+ in [0-9.]+s\n", printed.out)


def _data_subcommands(capsys) -> list[str]:
    with pytest.raises(SystemExit):
        cli.main(["data", "--help"])
    return re.search(r"\{([a-z,-]+)\}", capsys.readouterr().out).group(1).split(",")


def test_every_command_takes_quiet(capsys):
    assert {"build", "synthesize", "revise", "pairs", "prm-filter"} <= set(_data_subcommands(capsys))
    argvs = [[name, *([sub] if sub else [])] for name, group in cli.COMMANDS.items() for sub in group if name != "data"]
    argvs += [["data", sub] for sub in _data_subcommands(capsys)]
    for argv in argvs:
        with pytest.raises(SystemExit) as exit_info:
            cli.main([*argv, "--help"])
        assert exit_info.value.code == 0
        assert "--quiet" in capsys.readouterr().out, f"`jaxmath {' '.join(argv)}` has no --quiet"


def test_logging_reaches_the_stderr_of_the_moment_above_a_bar(capfd):
    """A record logged while a bar is drawn is written on a line of its own, to whatever stderr is now."""
    configure_logging()
    with progress_bar(total=3, desc="work", unit="job") as bar:
        bar.update(2)
        logging.getLogger("jaxmath.test").info("halfway: %d", 2)
        bar.update(1)
    err = capfd.readouterr().err
    assert re.search(r"(^|[\r\n])\S+ \S+ INFO jaxmath.test: halfway: 2\n", err)
    assert "3/3" in _bar(err, "work")
    configure_logging(quiet=True)
    logging.getLogger("jaxmath.test").info("hidden")
    logging.getLogger("jaxmath.test").warning("shown")
    err = capfd.readouterr().err
    assert "hidden" not in err and "WARNING jaxmath.test: shown" in err
