"""What a person sees while work runs: tqdm bars with counts and rates, and `logging` set up once per command.

Every long loop (data build, evaluation, synthesis, PRM labelling, conversion, training) takes its bar from
`progress_bar`, so `--quiet` means the same everywhere: no bars, warnings and errors only. Log records are
written through tqdm, so a message never breaks a bar in the middle of its line.
"""
from __future__ import annotations

import logging
import sys
from typing import Iterable, TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def progress_bar(iterable: Iterable[T] | None = None, *, total: int | None = None, desc: str = "",
                 unit: str = "it", quiet: bool = False, initial: int = 0) -> tqdm:
    """A tqdm bar on stderr (counts, rate, time left when `total` is known); a silent one when `quiet`."""
    return tqdm(iterable, total=total, desc=desc, unit=unit, initial=initial, disable=quiet, dynamic_ncols=True)


class _BarSafeStderrHandler(logging.Handler):
    """Writes records to the current `sys.stderr` (so redirection and capture see them) above any active bar."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # logging's own contract: a failing handler reports, never raises
            self.handleError(record)


def configure_logging(quiet: bool = False) -> None:
    """Send log records to stderr: INFO and up, or WARNING and up when `quiet`; libraries' chatter muted."""
    handler = _BarSafeStderrHandler()
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO, handlers=[handler], force=True)
    logging.getLogger("absl").setLevel(logging.WARNING)  # Orbax logs every array it writes at INFO
    logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)  # "Unable to initialize backend 'tpu'"
