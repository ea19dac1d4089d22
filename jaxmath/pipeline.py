"""Multi-stage pipelines (the Qwen2.5-Math recipe: data -> teacher synthesis -> SFT -> GRPO -> PRM step labels ->
PRM -> self-evolution -> revision data -> DPO pairs -> DPO -> length-aware GRPO).

A pipeline config lists stages in order. A training stage names a run config (configs/<stage>/*.yaml) plus
dotted overrides, and `init_from` an earlier stage whose final model and tokenizer it starts from; a command
stage runs a `jaxmath` subcommand (e.g. `data synthesize`, `data prm-label`, `data pairs`, `eval`) whose
arguments may name `{out}` (the pipeline's directory), `{stage}` (this stage's directory) or `{NAME}` (stage
NAME's directory); a self-evolution stage (`rounds: N` with an `evolve:` section, jaxmath.recipe.evolve)
samples, filters and fine-tunes its `init_from` model N times with its run config.
Before anything runs, the stages' hand-offs are checked (jaxmath.recipe.handoffs): every output one stage reads
from another is in the format it expects (an error names both stages), and every stage's output is read later
or is marked `final: true`. Each stage runs in `<output_dir>/<name>/` and marks itself done (`stage.json`,
written atomically, with its format, time, data counts and held-out figures) when it finishes; a rerun skips
finished stages and resumes an interrupted training stage from its last checkpoint (a self-evolution stage from
its last finished round), and `--from-stage NAME` reruns NAME and everything after it. With a `heldout:`
section every stage that produces a language model is scored on the same held-out questions; at the end
report.md, report.json and report.svg summarise every stage (jaxmath.recipe.report). `--dry-run` checks the
hand-offs and prints each training stage's compiled step memory per device, running nothing.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from jaxmath.commands import COMMANDS, run_command
from jaxmath.commands.options import add_compile_cache_argument, add_quiet_argument
from jaxmath.compilation import ENV_VAR
from jaxmath.config import ConfigError, load_config
from jaxmath.progress import configure_logging
from jaxmath.recipe.evolve import EvolveSection
from jaxmath.recipe.handoffs import StageIO, Use, check_handoffs, check_stage, resolve_formats
from jaxmath.recipe.heldout import HeldoutSection
from jaxmath.tracking import LoggingSection, check_wandb, log_pipeline_report

DONE = "stage.json"
log = logging.getLogger(__name__)
# The prompt format of a command stage's output when its arguments give no --format: None for format-free
# records (`data build`), INHERITS for commands whose output is in their inputs' format (`data pairs`).
INHERITS = "inherits"
COMMAND_FORMATS: dict[tuple[str, ...], str | None] = {
    ("data", "build"): None, ("data", "pairs"): INHERITS, ("data", "synthesize"): "pot", ("data", "revise"): "pot",
    ("data", "prm-label"): "boxed", ("data", "prm-filter"): "boxed", ("eval",): "boxed"}


@dataclasses.dataclass(frozen=True)
class Stage:
    """One step of a pipeline: a training run (`config`) or a jaxmath subcommand (`command`)."""

    name: str
    config: str | None = None  # a training config (YAML), relative to the working directory
    set: list[str] = dataclasses.field(default_factory=list)  # dotted overrides of that config
    init_from: str | None = None  # an earlier stage: its final_model/ and tokenizer/ seed this one
    command: list[str] | None = None  # e.g. [data, pairs, --input, "{eval}/samples.jsonl", ...]
    rounds: int | None = None  # self-evolution: this many rounds of `evolve`, each fine-tuning with `config`
    evolve: EvolveSection | None = None
    final: bool = False  # a named final artifact: no later stage needs to read its output

    def __post_init__(self) -> None:
        if (self.config is None) == (self.command is None):
            raise ValueError(f"stage {self.name!r}: set exactly one of config (training) and command")
        if self.command is not None and (self.set or self.init_from):
            raise ValueError(f"stage {self.name!r}: set and init_from apply to training stages only")
        if (self.rounds is None) != (self.evolve is None):
            raise ValueError(f"stage {self.name!r}: a self-evolution stage sets both rounds and evolve")
        if self.rounds is not None and (self.rounds < 1 or self.config is None or self.init_from is None):
            raise ValueError(f"stage {self.name!r}: self-evolution needs rounds >= 1, a fine-tuning config and "
                             "init_from (the model the first round samples)")
        if self.command is not None and (not self.command or self.command[0] not in COMMANDS):
            raise ValueError(f"stage {self.name!r}: command {self.command[:1]} is not one a stage can run; stage "
                             f"commands: {', '.join(COMMANDS)}")


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
    output_dir: str = "runs/pipeline"
    stages: list[Stage] = dataclasses.field(default_factory=list)
    # logging.wandb: every training stage without its own logs there (named after the stage, grouped under the
    # pipeline), and the pipeline's report (pipeline.json) is logged as a run of its own
    logging: LoggingSection = dataclasses.field(default_factory=LoggingSection)
    heldout: HeldoutSection | None = None  # questions every model-producing stage is scored on

    def __post_init__(self) -> None:
        if not self.stages:
            raise ValueError("a pipeline needs at least one stage")
        seen: set[str] = set()
        for stage in self.stages:
            if stage.name in seen or not stage.name.isidentifier():
                raise ValueError(f"stage names must be unique identifiers, got {stage.name!r}")
            if stage.init_from is not None and stage.init_from not in seen:
                raise ValueError(f"stage {stage.name!r}: init_from {stage.init_from!r} is not an earlier stage")
            seen.add(stage.name)


def start_from(source: Path) -> list[str]:
    """Overrides that start a run from the model and tokenizer of a run directory `source`."""
    return ["model.init=null", f"model.path={source / 'final_model'}", f"data.tokenizer={source / 'tokenizer'}"]


def stage_train_config(stage: Stage, out: Path, names: list[str], extra: list[str] = ()) -> Any:
    """The TrainConfig of a training stage: its YAML, its overrides, its directory, and the model and
    tokenizer of `init_from` in place of the config's own; `extra` overrides come last."""
    from jaxmath.train.config import TrainConfig

    overrides = [_expand(item, stage, out, names) for item in stage.set] + [f"output_dir={out / stage.name}"]
    if stage.init_from is not None:
        overrides += start_from(out / stage.init_from)
    overrides += list(extra)
    try:
        return load_config(TrainConfig, stage.config, overrides)
    except ConfigError as err:
        raise ConfigError(f"stage {stage.name}: {err}") from err


def with_pipeline_logging(config: Any, logging: LoggingSection, stage: Stage, out: Path) -> Any:
    """A stage's TrainConfig logging to the pipeline's W&B project when it names none of its own."""
    if logging.wandb is None or config.logging.wandb is not None:
        return config
    wandb = dataclasses.replace(logging.wandb, name=stage.name, group=logging.wandb.group or out.name)
    return dataclasses.replace(config, logging=LoggingSection(wandb=wandb))


def _expand(argument: str, stage: Stage, out: Path, names: list[str]) -> str:
    """`{out}`, `{stage}` and `{NAME}` (a stage) replaced by directories; other braces (YAML) left alone."""
    places = {"out": str(out), "stage": str(out / stage.name), **{n: str(out / n) for n in names}}
    return re.sub(r"\{(\w+)\}", lambda m: places.get(m.group(1), m.group(0)), argument)


def run_stage(stage: Stage, out: Path, names: list[str], logging: LoggingSection = LoggingSection(),
              quiet: bool = False, heldout: Any = None) -> dict[str, Any]:
    """Run one stage (resuming a training run from its own checkpoints, a self-evolution stage from its last
    finished round); returns its summary. `quiet` turns progress bars off (a command stage gets --quiet);
    `heldout(model_dir)` scores a model (self-evolution rounds)."""
    (out / stage.name).mkdir(parents=True, exist_ok=True)
    if stage.command is not None:
        argv = [_expand(a, stage, out, names) for a in stage.command]
        code = run_command(argv + ["--quiet"] if quiet and "--quiet" not in argv else argv)
        if code != 0:
            raise RuntimeError(f"stage {stage.name}: `jaxmath {' '.join(argv)}` exited with {code}")
        return {"command": argv}
    from jaxmath.train.trainer import train

    if stage.evolve is not None:
        return run_evolve_stage(stage, out, names, logging, heldout)
    config = with_pipeline_logging(stage_train_config(stage, out, names), logging, stage, out)
    if stage.init_from is not None and not (out / stage.init_from / "final_model").is_dir():
        raise FileNotFoundError(f"stage {stage.name}: {out / stage.init_from / 'final_model'} does not exist "
                                f"(did stage {stage.init_from} export its model? train.export_hf must be true)")
    return train(config, config.output_dir, resume=True, progress=not quiet)


def run_evolve_stage(stage: Stage, out: Path, names: list[str], logging: LoggingSection,
                     heldout: Any) -> dict[str, Any]:
    """Self-evolution rounds from `init_from`'s model, each fine-tuning with the stage's run config."""
    from jaxmath.recipe.evolve import run_evolution
    from jaxmath.train.trainer import train

    assert stage.evolve is not None and stage.rounds is not None and stage.init_from is not None
    section = _expand_section(stage.evolve, stage, out, names)
    fmt = stage_train_config(stage, out, names).data.format

    def finetune(train_file: Path, model_dir: str, run_dir: Path) -> dict[str, Any]:
        extra = [*start_from(Path(model_dir).parent), f"data.train=[{train_file}]", "data.synthetic={}",
                 f"output_dir={run_dir}"]
        config = stage_train_config(stage, out, names, extra)
        config = with_pipeline_logging(config, logging, dataclasses.replace(stage, name=f"{stage.name}-{run_dir.name}"),
                                       out)
        return train(config, run_dir, resume=True)

    return run_evolution(section, stage.rounds, fmt, out / stage.init_from, out / stage.name, finetune,
                         heldout or (lambda model_dir: None), log=lambda m: log.info("%s: %s", stage.name, m))


def _expand_section(section: EvolveSection, stage: Stage, out: Path, names: list[str]) -> EvolveSection:
    """The evolve section with `{NAME}` in its file paths replaced by stage directories."""
    def expand(value: str) -> str:
        return _expand(value, stage, out, names)

    return dataclasses.replace(section, questions=[expand(p) for p in section.questions],
                               earlier=[expand(p) for p in section.earlier],
                               prm=None if section.prm is None else expand(section.prm))


def _references(texts: list[str], names: list[str]) -> list[str]:
    """The stages `{NAME}` placeholders in `texts` name, in order of first mention."""
    found = [m for text in texts for m in re.findall(r"\{(\w+)\}", text) if m in names]
    return list(dict.fromkeys(found))


def command_format(argv: list[str]) -> str | None:
    """The prompt format of a command stage's output: its --format argument, else the command's default
    (COMMAND_FORMATS; INHERITS: its inputs' format)."""
    for i, arg in enumerate(argv):
        if arg == "--format" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--format="):
            return arg.split("=", 1)[1]
    return COMMAND_FORMATS.get(tuple(argv[:2]), COMMAND_FORMATS.get(tuple(argv[:1])))


def _producer(path: str, out: Path, names: list[str]) -> str | None:
    """The stage whose directory holds `path`, if any."""
    parts = Path(path).parts
    root = out.parts
    if len(parts) > len(root) and parts[:len(root)] == root and parts[len(root)] in names:
        return parts[len(root)]
    return None


def stage_io(stage: Stage, out: Path, names: list[str]) -> StageIO:
    """What a stage reads from earlier stages and in which format, for the hand-off checks."""
    if stage.command is not None:
        fmt = command_format(stage.command)
        inherits = fmt == INHERITS
        expects = None if inherits else fmt
        uses = tuple(Use(name, expects, f"`jaxmath {' '.join(stage.command[:2])}` input")
                     for name in _references(stage.command, names))
        return StageIO(stage.name, None if inherits else fmt, uses, inherits, stage.final)
    config = stage_train_config(stage, out, names)
    fmt = config.data.format
    texts = list(stage.set)
    if stage.evolve is not None:
        texts += [*stage.evolve.questions, *stage.evolve.earlier, stage.evolve.prm or ""]
    uses = [Use(name, fmt, "data" if name != stage.init_from else "model") for name in _references(texts, names)]
    if stage.init_from is not None:
        uses.append(Use(stage.init_from, fmt, "init_from model"))
    if config.grpo is not None and "prm_steps" in config.grpo.rewards:
        params = dict(config.grpo.reward_params.get("prm_steps") or {})
        producer = _producer(str(params.get("model", "")), out, names)
        if producer is not None:
            uses.append(Use(producer, str(params.get("format", "boxed")), "reward prm_steps (its format parameter)"))
    return StageIO(stage.name, fmt, tuple(uses), final=stage.final)


def _recorded_formats(out: Path, names: list[str]) -> dict[str, str | None]:
    """The formats finished stages recorded in their stage.json."""
    recorded = {}
    for name in names:
        marker = out / name / DONE
        if marker.is_file():
            summary = json.loads(marker.read_text())
            if "format" in summary:
                recorded[name] = summary["format"]
    return recorded


def data_counts(directory: Path) -> dict[str, int]:
    """Rows of each JSONL file a stage wrote (not its caches, drop reports or training metrics)."""
    counts = {}
    for path in sorted(directory.glob("*.jsonl")):
        if path.name != "metrics.jsonl" and "cache" not in path.name and "dropped" not in path.name:
            with open(path, "rb") as handle:
                counts[path.name] = sum(1 for line in handle if line.strip())
    return counts


def stage_kind(stage: Stage, out: Path, names: list[str]) -> str:
    """What a stage is, for the report: the command it runs, self-evolution, or its training objective."""
    if stage.command is not None:
        return " ".join(arg for arg in stage.command[:2] if not arg.startswith("-"))
    return "self-evolution" if stage.evolve is not None else stage_train_config(stage, out, names).objective


def produces_language_model(stage: Stage, out: Path, names: list[str]) -> bool:
    """Whether the stage ends with a causal LM (not a command, not a PRM)."""
    return stage.config is not None and stage_train_config(stage, out, names).objective != "prm"


def make_heldout(section: HeldoutSection | None, out: Path, names: list[str]) -> Any:
    """`score(model_dir, format) -> figures` on the held-out questions (read on first use), or None."""
    if section is None:
        return None
    from jaxmath.data.readers import read_records
    from jaxmath.recipe.heldout import heldout_metrics

    path = re.sub(r"\{(\w+)\}", lambda m: str(out / m.group(1)) if m.group(1) in names else m.group(0),
                  section.data.replace("{out}", str(out)))
    records: list = []

    def score(model_dir: str, fmt: str) -> dict[str, Any]:
        if not records:
            records.extend(read_records(path)[:section.limit])
        return heldout_metrics(model_dir, records, fmt, section.max_new_tokens, section.batch_size)

    return score


def forget_run(stage: Stage, directory: Path) -> None:
    """Make a stage run afresh: drop its done marker, a training stage's checkpoints and a self-evolution stage's
    rounds (all made from earlier stages' outputs, which may have changed); a command stage keeps its files (a
    teacher's completion cache is keyed by what was asked, so it stays valid)."""
    (directory / DONE).unlink(missing_ok=True)
    if stage.config is not None:
        for stale in [directory / "checkpoints", *directory.glob("round_*")]:
            shutil.rmtree(stale, ignore_errors=True)


def _mark_done(directory: Path, summary: dict[str, Any]) -> None:
    tmp = directory / f".{DONE}.tmp"
    tmp.write_text(json.dumps(summary, indent=2, default=str) + "\n")
    os.replace(tmp, directory / DONE)


def check_pipeline(config: PipelineConfig, out: Path) -> list[StageIO]:
    """The stages' hand-offs (formats agree, every output read or final), against the formats finished stages
    recorded; raises HandoffError (a ConfigError) naming the stages."""
    names = [s.name for s in config.stages]
    ios = [stage_io(stage, out, names) for stage in config.stages]
    heldout_reads = _references([config.heldout.data], names) if config.heldout else []
    check_handoffs(ios, _recorded_formats(out, names), heldout_reads)
    return ios


def run_pipeline(config: PipelineConfig, output_dir: str | Path | None = None,
                 from_stage: str | None = None, quiet: bool = False) -> dict[str, dict[str, Any]]:
    """Run the stages in order, skipping those already done (unless at or after `from_stage`); writes
    pipeline.json and the report. `quiet` turns progress bars off."""
    from jaxmath.recipe.report import write_report

    out = Path(output_dir or config.output_dir)
    names = [s.name for s in config.stages]
    if from_stage is not None and from_stage not in names:
        raise ConfigError(f"--from-stage {from_stage!r} is not a stage; stages: {names}")
    check_wandb(config.logging.wandb)  # before the first stage, not after the last
    out.mkdir(parents=True, exist_ok=True)
    first_forced = names.index(from_stage) if from_stage else len(names)
    for stage in config.stages[first_forced:]:
        forget_run(stage, out / stage.name)  # rerun it and everything after it
    ios = check_pipeline(config, out)
    score = make_heldout(config.heldout, out, names)
    summaries: dict[str, dict[str, Any]] = {}
    for index, (stage, io) in enumerate(zip(config.stages, ios)):
        marker = out / stage.name / DONE
        if marker.exists():
            summaries[stage.name] = json.loads(marker.read_text())
            log.info("stage %d/%d %s: done already, skipped", index + 1, len(names), stage.name)
            continue
        formats = resolve_formats(ios, _recorded_formats(out, names))
        check_stage(io, formats)  # the outputs it reads were written in the format it expects
        log.info("stage %d/%d %s: running in %s", index + 1, len(names), stage.name, out / stage.name)
        start, level = time.perf_counter(), logging.getLogger().level
        fmt = formats[stage.name]
        round_score = None if score is None else (lambda model_dir, fmt=fmt: score(model_dir, fmt))
        summary = run_stage(stage, out, names, config.logging, quiet, round_score)
        logging.getLogger().setLevel(level)  # a command stage set up logging for itself (its own --quiet)
        summary = {**summary, "kind": stage_kind(stage, out, names), "seconds": round(time.perf_counter() - start, 1),
                   "format": fmt, "data": data_counts(out / stage.name)}
        if score is not None and produces_language_model(stage, out, names):
            rounds = summary.get("rounds")
            summary["heldout"] = rounds[-1]["heldout"] if rounds else score(str(out / stage.name / "final_model"),
                                                                            fmt)
        _mark_done(out / stage.name, summary)
        summaries[stage.name] = summary
    (out / "pipeline.json").write_text(json.dumps(summaries, indent=2, default=str) + "\n")
    write_report(out, summaries)
    if config.logging.wandb is not None:
        import jax

        if jax.process_index() == 0:
            log_pipeline_report(config.logging.wandb, summaries, out)
    return summaries


def dry_run_config(stage: Stage, stages: dict[str, Stage], out: Path, names: list[str]) -> Any:
    """A training stage's config for a dry run, before any stage has run: the model of the first stage in its
    init_from chain in place of the (not yet written) model it starts from, and a vocabulary of the tokenizer
    size the config asks for when the tokenizer is to be fitted to data."""
    root = stage
    while root.init_from is not None:
        root = stages[root.init_from]
    own = stage_train_config(stage, out, names)
    model = stage_train_config(root, out, names).model
    init = dict(model.init) if model.init is not None else None
    if init is not None and "vocab_size" not in init:
        init["vocab_size"] = own.data.tokenizer_vocab_size
    model = dataclasses.replace(own.model, path=model.path, init=init)
    return dataclasses.replace(own, model=model)


def dry_run_pipeline(config: PipelineConfig, output_dir: str | Path | None = None) -> dict[str, dict[str, Any]]:
    """Check the hand-offs and compile every training stage's step (jaxmath.train.trainer.dry_run): per stage,
    its objective and per-device memory. Runs nothing and writes nothing under the output directory."""
    from jaxmath.train.trainer import dry_run

    out = Path(output_dir or config.output_dir)
    names = [s.name for s in config.stages]
    check_pipeline(config, out)
    stages = {s.name: s for s in config.stages}
    reports = {}
    with tempfile.TemporaryDirectory(prefix="jaxmath-dry-run-") as scratch:
        for stage in config.stages:
            if stage.config is None:
                continue
            run_config = dry_run_config(stage, stages, out, names)
            reports[stage.name] = {"objective": run_config.objective, "remat": run_config.model.remat,
                                   **dry_run(run_config, Path(scratch) / stage.name)}
    return reports


def format_dry_run(reports: dict[str, dict[str, Any]], budget_gib: float | None = None) -> str:
    """One line per training stage: objective, remat policy, compiled step peak memory per device and its parts,
    and whether it fits `budget_gib`."""
    lines = [f"{'stage':<14} {'objective':<9} {'remat':<14} {'peak GiB/device':>15} {'arguments':>9} {'temp':>8} "
             f"{'params GiB (all)':>16}" + (f"  fits {budget_gib:.1f} GiB" if budget_gib else "")]
    for name, r in reports.items():
        fits = ""
        if budget_gib:
            fits = "  yes" if r.get("peak_gib_per_device", 0.0) <= budget_gib else "  NO"
        lines.append(f"{name:<14} {r['objective']:<9} {str(r.get('remat', '-')):<14} "
                     f"{r.get('peak_gib_per_device', float('nan')):>15.3f} "
                     f"{r.get('argument_gib_per_device', float('nan')):>9.3f} "
                     f"{r.get('temp_gib_per_device', float('nan')):>8.3f} {r['params_gib_total']:>16.3f}{fits}")
    return "\n".join(lines)


def pipeline_main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """Run a multi-stage pipeline config; finished stages are skipped, an interrupted one resumes."""
    parser = argparse.ArgumentParser(prog=prog, description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="pipeline YAML (see configs/pipeline/)")
    parser.add_argument("--output-dir", default=None, help="pipeline directory (default: the config's output_dir)")
    parser.add_argument("--from-stage", default=None, metavar="NAME", help="rerun this stage and all after it")
    parser.add_argument("--dry-run", action="store_true",
                        help="check the stages' hand-offs and print each training stage's compiled step memory per "
                             "device (against this device's memory); load no weights, run nothing")
    add_quiet_argument(parser)
    add_compile_cache_argument(parser)
    args = parser.parse_args(argv)
    if args.compile_cache is not None:  # every stage's `auto` (train stages and commands alike) follows the flag
        os.environ[ENV_VAR] = args.compile_cache
    configure_logging(args.quiet)
    try:
        config = load_config(PipelineConfig, args.config)
        if args.dry_run:
            from jaxmath.train.remat import budget_gib

            print(format_dry_run(dry_run_pipeline(config, args.output_dir), budget_gib()))
            return 0
        summaries = run_pipeline(config, args.output_dir, args.from_stage, args.quiet)
    except (ConfigError, FileNotFoundError, ValueError, RuntimeError) as err:  # Training/TrackingError: RuntimeErrors
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(json.dumps(summaries, indent=2, default=str))
    return 0
