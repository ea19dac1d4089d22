"""Experiment tracking with Weights & Biases: the `logging.wandb` config section, the checks made before a run
starts, and the W&B run that the metrics writer feeds.

A run with `logging: {wandb: {project: ...}}` logs, from process 0 only, every metrics.jsonl scalar at its step,
the resolved config, the final summary and (GRPO) tables of sampled completions; a pipeline logs its report.
wandb is an optional dependency (`pip install 'jaxmath[wandb]'`), imported only when a config asks for it; a
missing package, or a missing login in online mode, is an error when the run starts, naming the fix.
"""
from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence

RUN_ID_FILE = "wandb_run_id"  # in the run directory: a resumed run continues the same W&B run


class TrackingError(RuntimeError):
    """Tracking was asked for but cannot work (package missing, not logged in); the message says the fix."""


@dataclasses.dataclass(frozen=True)
class WandbConfig:
    """Where a run shows up in W&B. `mode` null follows $WANDB_MODE (else online); offline runs are written
    under the run directory's wandb/ and uploaded later with `wandb sync`."""

    project: str
    entity: str | None = None
    name: str | None = None  # default: W&B's generated name
    group: str | None = None  # e.g. the stages of one pipeline
    mode: Literal["online", "offline", "disabled"] | None = None
    tags: list[str] = dataclasses.field(default_factory=list)
    samples_every: int = 10  # GRPO: a table of rollouts every this many iterations (0: none)
    sample_rows: int = 16  # rows in each such table

    def __post_init__(self) -> None:
        if not self.project.strip():
            raise ValueError("logging.wandb.project must not be empty")
        if self.samples_every < 0 or self.sample_rows < 1:
            raise ValueError(f"logging.wandb.samples_every must be >= 0 and sample_rows >= 1, got "
                             f"{self.samples_every} and {self.sample_rows}")

    @property
    def effective_mode(self) -> str:
        return self.mode or os.environ.get("WANDB_MODE") or "online"


@dataclasses.dataclass(frozen=True)
class LoggingSection:
    """Where metrics go besides metrics.jsonl and TensorBoard (always written)."""

    wandb: WandbConfig | None = None


def check_wandb(config: WandbConfig | None) -> None:
    """Fail now, naming the fix, when W&B logging is asked for but could not work: the wandb package is
    missing, or mode is online and this machine has no W&B credentials (checked locally, no network)."""
    if config is None or config.effective_mode == "disabled":
        return
    try:
        import wandb
    except ImportError as err:
        raise TrackingError("logging.wandb is set but the wandb package is not installed: "
                            "pip install 'jaxmath[wandb]' (or remove logging.wandb)") from err
    if config.effective_mode == "online" and not wandb.login(prompt=False, verify=False):
        raise TrackingError("logging.wandb.mode is online but W&B has no credentials on this machine: run "
                            "`wandb login` or set WANDB_API_KEY, or set logging.wandb.mode: offline (upload later "
                            "with `wandb sync`)")


def scalars(row: Mapping[str, Any]) -> dict[str, float | int]:
    """The numeric entries of a metrics row (strings and lists, e.g. sandbox layers, stay in metrics.jsonl)."""
    return {k: v for k, v in row.items() if isinstance(v, (int, float)) and k != "step"}


class WandbRun:
    """One W&B run: metrics rows, tables, the summary. Create it on process 0 only."""

    def __init__(self, config: WandbConfig, run_config: Mapping[str, Any], out: str | Path, job_type: str = "train"):
        check_wandb(config)
        import wandb

        self.config = config
        out = Path(out)
        id_file = out / RUN_ID_FILE
        run_id = id_file.read_text().strip() if id_file.is_file() else None
        self.run = wandb.init(project=config.project, entity=config.entity, name=config.name, group=config.group,
                              tags=list(config.tags), mode=config.effective_mode, job_type=job_type,
                              config=dict(run_config), id=run_id, resume="allow" if run_id else None,
                              dir=None if os.environ.get("WANDB_DIR") else str(out))
        id_file.write_text(self.run.id + "\n")

    def log(self, step: int, row: Mapping[str, Any]) -> None:
        values = scalars(row)
        if values:
            self.run.log(values, step=step)

    def wants_samples(self, step: int) -> bool:
        return bool(self.config.samples_every) and step % self.config.samples_every == 0

    def table(self, step: int, name: str, columns: Mapping[str, Sequence[Any]], rows: int | None = None) -> None:
        """Log a table (column name -> values, first `rows` rows) under `name` at `step`."""
        import wandb

        names = list(columns)
        count = min(len(v) for v in columns.values()) if rows is None else min(rows, *map(len, columns.values()))
        data = [[_plain(columns[c][i]) for c in names] for i in range(count)]
        self.run.log({name: wandb.Table(columns=names, data=data)}, step=step)

    def summary(self, values: Mapping[str, Any]) -> None:
        self.run.summary.update({k: v for k, v in values.items()
                                 if isinstance(v, (int, float, str)) and not isinstance(v, bool)})

    def save(self, path: str | Path) -> None:
        """Attach a file of the run directory to the W&B run (its Files tab)."""
        path = Path(path)
        self.run.save(str(path), base_path=str(path.parent), policy="now")

    def finish(self) -> None:
        self.run.finish()


def _plain(value: Any) -> Any:
    """numpy scalars as Python ones (W&B tables take JSON-like cells)."""
    return value.item() if hasattr(value, "item") else value


def log_pipeline_report(config: WandbConfig, summaries: Mapping[str, Mapping[str, Any]], out: str | Path) -> None:
    """A `pipeline` W&B run with the pipeline's report: one table row per stage, each stage's numeric results in
    the summary as `<stage>/<key>`, and pipeline.json attached."""
    out = Path(out)
    run = WandbRun(config, {"stages": list(summaries)}, out, job_type="pipeline")
    run.table(0, "pipeline", {"stage": list(summaries),
                              "seconds": [s.get("seconds") for s in summaries.values()],
                              "summary": [json.dumps(s, default=str) for s in summaries.values()]})
    run.summary({f"{stage}/{k}": v for stage, summary in summaries.items() for k, v in summary.items()})
    if (out / "pipeline.json").is_file():
        run.save(out / "pipeline.json")
    run.finish()
