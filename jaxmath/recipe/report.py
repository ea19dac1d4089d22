"""The pipeline's report: report.json (every stage's time, held-out figures, PRM AUC, DPO reward accuracy and data
counts; self-evolution rounds one by one), report.md (the same as tables) and report.svg (held-out accuracy and
mean completion length across the stages that produce a model, self-evolution rounds included)."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Mapping

PLOT = "report.svg"


def _figure(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def stage_row(name: str, summary: Mapping[str, Any]) -> dict[str, Any]:
    """One stage's report entry from its stage.json summary."""
    heldout = summary.get("heldout") or {}
    row = {"stage": name, "kind": summary.get("kind"), "seconds": summary.get("seconds"),
           "format": summary.get("format"), "heldout_accuracy": _figure(heldout.get("accuracy")),
           "mean_length": _figure(heldout.get("mean_length")), "heldout_n": heldout.get("n"),
           "prm_auc": _figure(summary.get("eval_step_auc")),
           "dpo_reward_accuracy": _figure(summary.get("eval_reward_accuracy")), "data": summary.get("data", {})}
    if "rounds" in summary:
        row["rounds"] = [{"round": r["round"], "seconds": r.get("seconds"), "fine_tuned": r.get("fine_tuned"),
                          "heldout_accuracy": _figure((r.get("heldout") or {}).get("accuracy")),
                          "mean_length": _figure((r.get("heldout") or {}).get("mean_length")),
                          "acceptance": r.get("acceptance", {}), "mix": r.get("mix", {})} for r in summary["rounds"]]
    return row


def curve(rows: list[dict[str, Any]]) -> list[tuple[str, float | None, float | None]]:
    """(label, held-out accuracy, mean length) of every model the pipeline produced, in order."""
    points = []
    for row in rows:
        for r in row.get("rounds", []):
            points.append((f"{row['stage']} r{r['round']}", r["heldout_accuracy"], r["mean_length"]))
        if "rounds" not in row and row["heldout_accuracy"] is not None:
            points.append((row["stage"], row["heldout_accuracy"], row["mean_length"]))
    return points


def plot(points: list[tuple[str, float | None, float | None]], path: Path) -> None:
    """Held-out accuracy (left axis) and mean completion length (right axis) per model, as an SVG."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    labels = [p[0] for p in points]
    xs = range(len(points))
    fig, accuracy_axis = plt.subplots(figsize=(max(6.0, 0.9 * len(points) + 2), 4.0))
    accuracy_axis.plot(xs, [p[1] for p in points], "o-", color="tab:blue", label="held-out accuracy")
    accuracy_axis.set_ylabel("held-out accuracy (greedy pass@1)", color="tab:blue")
    accuracy_axis.set_ylim(-0.02, 1.02)
    length_axis = accuracy_axis.twinx()
    length_axis.plot(xs, [p[2] for p in points], "s--", color="tab:orange", label="mean length")
    length_axis.set_ylabel("mean completion length (tokens)", color="tab:orange")
    accuracy_axis.set_xticks(list(xs), labels, rotation=30, ha="right")
    accuracy_axis.set_title("held-out accuracy and completion length across stages")
    fig.tight_layout()
    fig.savefig(path, format="svg")
    plt.close(fig)


def _cell(value: Any, percent: bool = False) -> str:
    if value is None:
        return "-"
    if percent:
        return f"{100 * value:.1f}%"
    return f"{value:g}" if isinstance(value, float) else str(value)


def markdown(rows: list[dict[str, Any]], total_seconds: float, has_plot: bool) -> str:
    """report.md: the stage table, each self-evolution stage's rounds, and the plot."""
    lines = ["# Pipeline report", "", f"Total time: {total_seconds:.1f} s.", "",
             "| stage | kind | format | time (s) | held-out accuracy | mean length | PRM AUC | DPO reward acc. | data |",
             "|---|---|---|---:|---:|---:|---:|---:|---|"]
    for row in rows:
        data = ", ".join(f"{name} {count}" for name, count in row["data"].items()) or "-"
        lines.append(f"| {row['stage']} | {_cell(row['kind'])} | {_cell(row['format'])} | {_cell(row['seconds'])} | "
                     f"{_cell(row['heldout_accuracy'], True)} | {_cell(row['mean_length'])} | "
                     f"{_cell(row['prm_auc'])} | {_cell(row['dpo_reward_accuracy'], True)} | {data} |")
    for row in rows:
        if "rounds" not in row:
            continue
        lines += ["", f"## {row['stage']}: self-evolution rounds", "",
                  "| round | sampled | correct | above threshold | kept | mixed in (new + earlier) | fine-tuned | "
                  "held-out accuracy | mean length | time (s) |", "|---:|---:|---:|---:|---:|---|---|---:|---:|---:|"]
        for r in row["rounds"]:
            a = r["acceptance"].get("all", {})
            lines.append(f"| {r['round']} | {a.get('sampled', 0)} | {a.get('correct', 0)} | "
                         f"{a.get('above_threshold', 0)} | {a.get('kept', 0)} | "
                         f"{r['mix'].get('new', 0)} + {r['mix'].get('earlier', 0)} | {r['fine_tuned']} | "
                         f"{_cell(r['heldout_accuracy'], True)} | {_cell(r['mean_length'])} | {_cell(r['seconds'])} |")
    if has_plot:
        lines += ["", f"![held-out accuracy and mean completion length across stages]({PLOT})"]
    return "\n".join(lines) + "\n"


def write_report(out: Path, summaries: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """Write report.json, report.md and (when any stage was scored on held-out questions) report.svg in `out`."""
    rows = [stage_row(name, summary) for name, summary in summaries.items()]
    total = round(sum(row["seconds"] or 0.0 for row in rows), 1)
    points = curve(rows)
    if points:
        plot(points, out / PLOT)
    report = {"total_seconds": total, "stages": rows,
              "curve": [{"model": label, "heldout_accuracy": acc, "mean_length": length}
                        for label, acc, length in points], "plot": PLOT if points else None}
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "report.md").write_text(markdown(rows, total, bool(points)))
    return report
