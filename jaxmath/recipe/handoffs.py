"""Hand-offs between pipeline stages: each stage reads earlier stages' outputs in one prompt format, and every
stage's output is read by a later stage or is a named final artifact. Checked before the first stage runs (from
the config) and again as each stage starts (against the formats earlier stages recorded when they ran)."""
from __future__ import annotations

import dataclasses
from typing import Mapping, Sequence

from jaxmath.config import ConfigError


class HandoffError(ConfigError):
    """Two stages disagree on a format, or a stage's output is read by nothing."""


@dataclasses.dataclass(frozen=True)
class Use:
    """Stage `producer`'s output read by a stage that expects `format` (None: any), as `what` says."""

    producer: str
    format: str | None
    what: str


@dataclasses.dataclass(frozen=True)
class StageIO:
    """What a stage reads and writes: its own format (None: format-free, e.g. `data build` records, or taken
    from its inputs when `inherits`), and the earlier outputs it uses."""

    name: str
    format: str | None
    uses: tuple[Use, ...] = ()
    inherits: bool = False
    final: bool = False


def resolve_formats(stages: Sequence[StageIO], recorded: Mapping[str, str | None] = {}) -> dict[str, str | None]:
    """Each stage's format: recorded by a finished run, else its own, else (inheriting stages) its inputs'."""
    formats: dict[str, str | None] = {}
    for stage in stages:
        if stage.name in recorded:
            formats[stage.name] = recorded[stage.name]
        elif stage.inherits:
            found = {u.producer: formats.get(u.producer) for u in stage.uses if formats.get(u.producer)}
            if len(set(found.values())) > 1:
                raise HandoffError(f"stage {stage.name} reads outputs in different formats: "
                                   + ", ".join(f"stage {n} ({f})" for n, f in found.items()))
            formats[stage.name] = next(iter(found.values()), None)
        else:
            formats[stage.name] = stage.format
    return formats


def check_stage(stage: StageIO, formats: Mapping[str, str | None]) -> None:
    """HandoffError naming both stages when `stage` expects another format than an output it reads is in."""
    for use in stage.uses:
        theirs = formats.get(use.producer)
        if use.format is not None and theirs is not None and use.format != theirs:
            raise HandoffError(f"stage {stage.name} reads stage {use.producer}'s output ({use.what}) in format "
                               f"{use.format!r}, but stage {use.producer} writes format {theirs!r}; make them agree "
                               f"(data.format of a training stage, --format of a command stage)")


def check_handoffs(stages: Sequence[StageIO], recorded: Mapping[str, str | None] = {},
                   also_read: Sequence[str] = ()) -> dict[str, str | None]:
    """Every hand-off's formats agree and every output but the last stage's is read (by a stage, or `also_read`:
    e.g. the held-out questions) or marked final; returns the resolved formats."""
    formats = resolve_formats(stages, recorded)
    for stage in stages:
        check_stage(stage, formats)
    used = {use.producer for stage in stages for use in stage.uses} | set(also_read)
    unread = [s.name for s in stages[:-1] if s.name not in used and not s.final]
    if unread:
        raise HandoffError(f"the output of stage(s) {', '.join(unread)} is read by no later stage: use it, drop the "
                           "stage, or mark it `final: true` (a named final artifact)")
    return formats
