"""Training metrics: model FLOPs and MFU, and one writer for metrics.jsonl plus TensorBoard."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

import jax

from jaxmath.models.config import ModelConfig

# Dense peak FLOP/s per device for bfloat16 (and float32 where it differs); matched on device_kind.
PEAK_FLOPS: dict[str, dict[str, float]] = {
    "a100": {"bfloat16": 312e12, "float32": 156e12},  # float32 via TF32 tensor cores
    "h100": {"bfloat16": 989e12, "float32": 494e12},
    "h200": {"bfloat16": 989e12, "float32": 494e12},
    "tpu v4": {"bfloat16": 275e12, "float32": 275e12},
    "tpu v5 lite": {"bfloat16": 197e12, "float32": 197e12},  # v5e
    "tpu v5e": {"bfloat16": 197e12, "float32": 197e12},
    "tpu v5p": {"bfloat16": 459e12, "float32": 459e12},
    "tpu v5": {"bfloat16": 459e12, "float32": 459e12},
}


def peak_flops(device: jax.Device, dtype: str) -> float | None:
    """The device's peak dense FLOP/s for `dtype`, or None when the device is not in the table (e.g. CPU)."""
    kind = device.device_kind.lower()
    for name in sorted(PEAK_FLOPS, key=len, reverse=True):
        if name in kind:
            table = PEAK_FLOPS[name]
            return table.get(dtype, table["bfloat16"])
    return None


def train_flops_per_token(config: ModelConfig, seq_len: int) -> float:
    """Forward + backward FLOPs per token: 6 x matmul parameters + attention scores (PaLM appendix B)."""
    embedding = config.vocab_size * config.hidden_size
    matmul_params = config.num_params() - embedding + (embedding if config.tie_word_embeddings else 0)
    attention = 12 * config.num_layers * config.num_heads * config.head_dim * seq_len
    return 6 * matmul_params + attention


class MetricsWriter:
    """Appends one JSON object per logged step to metrics.jsonl and mirrors scalars to TensorBoard and, when the
    run's config has `logging.wandb`, to Weights & Biases (with the resolved config, sample tables and the
    final summary). Only an enabled writer (process 0) writes anything."""

    def __init__(self, output_dir: str | Path, enabled: bool = True, config: Any | None = None):
        self.enabled = enabled
        self.path = Path(output_dir) / "metrics.jsonl"
        self.tensorboard = None
        self.wandb = None
        if enabled:
            from tensorboardX import SummaryWriter
            self.tensorboard = SummaryWriter(str(Path(output_dir) / "tensorboard"))
            wandb_config = getattr(getattr(config, "logging", None), "wandb", None)
            if wandb_config is not None:
                from jaxmath.config import to_dict
                from jaxmath.tracking import WandbRun
                self.wandb = WandbRun(wandb_config, to_dict(config), output_dir)

    def write(self, step: int, metrics: Mapping[str, Any]) -> None:
        if not self.enabled:
            return
        row = {"step": step, **{k: _plain(v) for k, v in metrics.items()}}
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        for key, value in row.items():
            if key != "step" and isinstance(value, (int, float)):
                self.tensorboard.add_scalar(key, value, step)
        self.tensorboard.flush()
        if self.wandb is not None:
            self.wandb.log(step, row)

    def samples(self, step: int, columns: Mapping[str, Any]) -> None:
        """A table of sampled completions (column -> values per row) for W&B, every `samples_every` steps."""
        if self.wandb is not None and self.wandb.wants_samples(step):
            self.wandb.table(step, "samples", columns, rows=self.wandb.config.sample_rows)

    def close(self, summary: Mapping[str, Any] | None = None) -> None:
        """Flush and close; `summary` (the run's final figures) becomes the W&B run's summary."""
        if self.tensorboard is not None:
            self.tensorboard.close()
        if self.wandb is not None:
            self.wandb.summary(summary or {})
            self.wandb.finish()


def _plain(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """The rows of a run's metrics.jsonl (a torn last line from a crash is ignored)."""
    rows = []
    for line in Path(path).read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def plot_metrics(metrics_path: str | Path, keys: Mapping[str, str], out_png: str | Path, title: str = "") -> Path:
    """A PNG with one line per metric key (label -> key) against the step, from a run's metrics.jsonl."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(metrics_path)
    figure, axis = plt.subplots(figsize=(7, 4), dpi=110)
    for label, key in keys.items():
        points = [(r["step"], r[key]) for r in rows if isinstance(r.get(key), (int, float))]
        if points:
            steps, values = zip(*points)
            axis.plot(steps, values, marker="o" if len(points) < 12 else None, label=label)
    axis.set_xlabel("step")
    axis.set_ylim(bottom=0)
    axis.grid(alpha=0.3)
    axis.legend()
    axis.set_title(title)
    figure.tight_layout()
    figure.savefig(out_png)
    plt.close(figure)
    return Path(out_png)
