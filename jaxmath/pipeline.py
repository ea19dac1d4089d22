"""Multi-stage pipelines (Qwen2.5-Math style: teacher data -> SFT -> GRPO -> PRM -> DPO -> length-aware RL).

A pipeline config lists stages in order. A training stage names a run config (configs/<stage>/*.yaml) plus
dotted overrides, and `init_from` an earlier stage whose final model and tokenizer it starts from; a command
stage runs a `jaxmath` subcommand (e.g. `data synthesize`, `data pairs`, `eval`) whose arguments may name
`{out}` (the pipeline's directory), `{stage}` (this stage's directory) or `{NAME}` (stage NAME's directory).
Each stage runs in `<output_dir>/<name>/` and marks itself done (`stage.json`, written atomically) when it
finishes; a rerun skips finished stages and resumes an interrupted training stage from its last checkpoint,
and `--from-stage NAME` reruns NAME and everything after it.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

from jaxmath.commands import COMMANDS, run_command
from jaxmath.commands.options import add_compile_cache_argument, add_quiet_argument
from jaxmath.compilation import ENV_VAR
from jaxmath.config import ConfigError, load_config
from jaxmath.progress import configure_logging
from jaxmath.tracking import LoggingSection, check_wandb, log_pipeline_report

DONE = "stage.json"
log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Stage:
    """One step of a pipeline: a training run (`config`) or a jaxmath subcommand (`command`)."""

    name: str
    config: str | None = None  # a training config (YAML), relative to the working directory
    set: list[str] = dataclasses.field(default_factory=list)  # dotted overrides of that config
    init_from: str | None = None  # an earlier stage: its final_model/ and tokenizer/ seed this one
    command: list[str] | None = None  # e.g. [data, pairs, --input, "{eval}/samples.jsonl", ...]

    def __post_init__(self) -> None:
        if (self.config is None) == (self.command is None):
            raise ValueError(f"stage {self.name!r}: set exactly one of config (training) and command")
        if self.command is not None and (self.set or self.init_from):
            raise ValueError(f"stage {self.name!r}: set and init_from apply to training stages only")
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


def stage_train_config(stage: Stage, out: Path, names: list[str]) -> Any:
    """The TrainConfig of a training stage: its YAML, its overrides, its directory, and the model and
    tokenizer of `init_from` in place of the config's own."""
    from jaxmath.train.config import TrainConfig

    overrides = [_expand(item, stage, out, names) for item in stage.set] + [f"output_dir={out / stage.name}"]
    if stage.init_from is not None:
        source = out / stage.init_from
        overrides += ["model.init=null", f"model.path={source / 'final_model'}",
                      f"data.tokenizer={source / 'tokenizer'}"]
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
              quiet: bool = False) -> dict[str, Any]:
    """Run one stage (resuming a training run from its own checkpoints); returns its summary. `quiet` turns
    progress bars off (a command stage gets --quiet)."""
    (out / stage.name).mkdir(parents=True, exist_ok=True)
    if stage.command is not None:
        argv = [_expand(a, stage, out, names) for a in stage.command]
        code = run_command(argv + ["--quiet"] if quiet and "--quiet" not in argv else argv)
        if code != 0:
            raise RuntimeError(f"stage {stage.name}: `jaxmath {' '.join(argv)}` exited with {code}")
        return {"command": argv}
    from jaxmath.train.trainer import train

    config = with_pipeline_logging(stage_train_config(stage, out, names), logging, stage, out)
    if stage.init_from is not None and not (out / stage.init_from / "final_model").is_dir():
        raise FileNotFoundError(f"stage {stage.name}: {out / stage.init_from / 'final_model'} does not exist "
                                f"(did stage {stage.init_from} export its model? train.export_hf must be true)")
    return train(config, config.output_dir, resume=True, progress=not quiet)


def _mark_done(directory: Path, summary: dict[str, Any]) -> None:
    tmp = directory / f".{DONE}.tmp"
    tmp.write_text(json.dumps(summary, indent=2, default=str) + "\n")
    os.replace(tmp, directory / DONE)


def run_pipeline(config: PipelineConfig, output_dir: str | Path | None = None,
                 from_stage: str | None = None, quiet: bool = False) -> dict[str, dict[str, Any]]:
    """Run the stages in order, skipping those already done (unless at or after `from_stage`); `quiet` turns
    progress bars off."""
    out = Path(output_dir or config.output_dir)
    names = [s.name for s in config.stages]
    if from_stage is not None and from_stage not in names:
        raise ConfigError(f"--from-stage {from_stage!r} is not a stage; stages: {names}")
    check_wandb(config.logging.wandb)  # before the first stage, not after the last
    out.mkdir(parents=True, exist_ok=True)
    first_forced = names.index(from_stage) if from_stage else len(names)
    summaries: dict[str, dict[str, Any]] = {}
    for index, stage in enumerate(config.stages):
        marker = out / stage.name / DONE
        if index >= first_forced and marker.exists():
            marker.unlink()  # rerun it and everything after it
        if marker.exists():
            summaries[stage.name] = json.loads(marker.read_text())
            log.info("stage %d/%d %s: done already, skipped", index + 1, len(names), stage.name)
            continue
        log.info("stage %d/%d %s: running in %s", index + 1, len(names), stage.name, out / stage.name)
        start, level = time.perf_counter(), logging.getLogger().level
        summary = {**run_stage(stage, out, names, config.logging, quiet),
                   "seconds": round(time.perf_counter() - start, 1)}
        logging.getLogger().setLevel(level)  # a command stage set up logging for itself (its own --quiet)
        _mark_done(out / stage.name, summary)
        summaries[stage.name] = summary
    (out / "pipeline.json").write_text(json.dumps(summaries, indent=2, default=str) + "\n")
    if config.logging.wandb is not None:
        import jax

        if jax.process_index() == 0:
            log_pipeline_report(config.logging.wandb, summaries, out)
    return summaries


def pipeline_main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """Run a multi-stage pipeline config; finished stages are skipped, an interrupted one resumes."""
    parser = argparse.ArgumentParser(prog=prog, description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="pipeline YAML (see configs/pipeline/)")
    parser.add_argument("--output-dir", default=None, help="pipeline directory (default: the config's output_dir)")
    parser.add_argument("--from-stage", default=None, metavar="NAME", help="rerun this stage and all after it")
    add_quiet_argument(parser)
    add_compile_cache_argument(parser)
    args = parser.parse_args(argv)
    if args.compile_cache is not None:  # every stage's `auto` (train stages and commands alike) follows the flag
        os.environ[ENV_VAR] = args.compile_cache
    configure_logging(args.quiet)
    try:
        summaries = run_pipeline(load_config(PipelineConfig, args.config), args.output_dir, args.from_stage,
                                 args.quiet)
    except (ConfigError, FileNotFoundError, ValueError, RuntimeError) as err:  # Training/TrackingError: RuntimeErrors
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(json.dumps(summaries, indent=2, default=str))
    return 0
