"""`model.remat: auto`: the least recomputation whose compiled train step fits the device's memory.

Options go from least to most recomputation; each is measured by compiling the train step for the run's
shapes (`compiled.memory_analysis()`, what `--dry-run` reports), not estimated. Training takes the first
option whose peak fits FIT_FRACTION of the device memory; a dry run measures them all and prints the table.
"""
from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any, Callable

import jax

from jaxmath.models.config import REMAT_POLICIES

log = logging.getLogger(__name__)

AUTO = "auto"
FIT_FRACTION = 0.9  # of the device memory: room for what the compiled step does not count (cuDNN workspace, ...)
GIB = 2**30


def device_memory_bytes(device: jax.Device | None = None) -> int:
    """Memory one device may use: the allocator's limit on GPUs and TPUs, on CPU the host's RAM shared by
    its local devices."""
    device = device or jax.local_devices()[0]
    try:
        stats = device.memory_stats() or {}
    except Exception:  # some backends do not implement memory_stats
        stats = {}
    if "bytes_limit" in stats:
        return int(stats["bytes_limit"])
    host = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return host // max(1, jax.local_device_count())


@dataclasses.dataclass(frozen=True)
class RematOption:
    """One remat policy's measured peak per device (GiB), or why it could not be measured."""

    remat: str
    peak_gib: float | None
    budget_gib: float
    error: str | None = None
    report: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def fits(self) -> bool:
        return self.peak_gib is not None and self.peak_gib <= self.budget_gib

    def row(self) -> dict[str, Any]:
        return {"remat": self.remat, "peak_gib_per_device": self.peak_gib, "budget_gib": round(self.budget_gib, 2),
                "fits": self.fits, **({"error": self.error} if self.error else {})}


def measure_options(measure: Callable[[str], dict[str, Any]], budget_gib: float, stop_at_first_fit: bool
                    ) -> list[RematOption]:
    """Measure remat options in REMAT_POLICIES' order (each: a dry-run report with `peak_gib_per_device`); a
    compile that runs out of memory counts as not fitting, any other error is raised."""
    options = []
    for remat in REMAT_POLICIES:
        try:
            report = measure(remat)
            option = RematOption(remat, float(report["peak_gib_per_device"]), budget_gib, report=report)
        except Exception as error:  # noqa: BLE001 - only running out of memory is a measurement; the rest raises
            if not is_out_of_memory(error):
                raise
            option = RematOption(remat, None, budget_gib, error=f"{type(error).__name__}: {error}"[:300])
        options.append(option)
        log.info("remat=%s: peak %s GiB per device of a %.1f GiB budget%s", remat,
                 "?" if option.peak_gib is None else f"{option.peak_gib:.2f}", budget_gib,
                 " (fits)" if option.fits else "")
        if option.fits and stop_at_first_fit:
            break
    return options


def is_out_of_memory(error: BaseException) -> bool:
    """XLA's allocation failures (RESOURCE_EXHAUSTED, "out of memory"), as a compile on a full device raises."""
    text = str(error).lower()
    return "resource_exhausted" in text or "out of memory" in text


def first_fit(options: list[RematOption]) -> RematOption | None:
    return next((option for option in options if option.fits), None)


def format_options(rows: list[dict[str, Any]]) -> str:
    """Rows of `RematOption.row()` as a text table, the first that fits marked as chosen (dry runs print it)."""
    lines = [f"{'remat':<14} {'peak GiB/device':>16} {'budget GiB':>11}  verdict"]
    chosen = next((row for row in rows if row["fits"]), None)
    for row in rows:
        peak = "-" if row["peak_gib_per_device"] is None else f"{row['peak_gib_per_device']:.2f}"
        verdict = "fits" if row["fits"] else ("error: " + row["error"] if row.get("error") else "does not fit")
        mark = "  <- chosen" if row is chosen else ""
        lines.append(f"{row['remat']:<14} {peak:>16} {row['budget_gib']:>11.1f}  {verdict}{mark}")
    return "\n".join(lines)


def budget_gib() -> float:
    return FIT_FRACTION * device_memory_bytes() / GIB
