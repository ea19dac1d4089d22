"""Configs of `jaxmath data synthesize` and `jaxmath data revise` (YAML -> dataclasses, see jaxmath.config)."""
from __future__ import annotations

import dataclasses
from typing import ClassVar

from jaxmath.config import section
from jaxmath.data.readers import read_records
from jaxmath.data.schema import Record
from jaxmath.inference.config import Sampling
from jaxmath.synthesis.teacher import TeacherConfig
from jaxmath.verify.sandbox import SandboxConfig


@dataclasses.dataclass(frozen=True)
class GenerationConfig:
    """What both commands share: the teacher, the problems (record-schema JSONL/Parquet files), the prompt
    format, how many samples per problem and how they are sampled (`sampling`, part of every cache key), the
    cache, and the graders' limits."""

    MOVED_KEYS: ClassVar[dict[str, str]] = {
        **{key: f"sampling.{key}" for key in ("temperature", "top_p", "top_k", "min_p", "max_new_tokens", "seed")},
        "stop": "sampling.stop_strings"}

    teacher: TeacherConfig = dataclasses.field(default_factory=TeacherConfig)
    input: list[str] = dataclasses.field(default_factory=list)
    format: str = "pot"
    samples: int = 4
    sampling: Sampling = section(Sampling(max_new_tokens=1024, temperature=0.7))
    cache: str | None = None  # default: next to the output
    limit: int | None = None  # only the first N problems
    chunk: int = 64  # problems per round of asking, running and grading (progress is printed per chunk)
    sandbox_timeout: float = 5.0
    sandbox: SandboxConfig = dataclasses.field(default_factory=SandboxConfig)  # layers programs must get
    verifier_workers: int | None = None

    def __post_init__(self):
        from jaxmath.data.formats import get_format

        get_format(self.format)
        if self.samples < 1 or self.chunk < 1 or (self.limit is not None and self.limit < 1):
            raise ValueError("samples, chunk and limit must be >= 1")
        if self.sandbox_timeout <= 0:
            raise ValueError("sandbox_timeout must be > 0")


@dataclasses.dataclass(frozen=True, kw_only=True)
class SynthesisConfig(GenerationConfig):
    """`jaxmath data synthesize`: keep the verified solutions, at most `keep_per_problem` distinct ones each."""

    output: str
    keep_per_problem: int | None = None

    def __post_init__(self):
        super().__post_init__()
        if self.keep_per_problem is not None and self.keep_per_problem < 1:
            raise ValueError(f"keep_per_problem must be >= 1, got {self.keep_per_problem}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class RevisionConfig(GenerationConfig):
    """`jaxmath data revise`: revise failed samples up to `rounds` times; write rows, SFT records, DPO pairs."""

    output_dir: str
    rounds: int = 2

    def __post_init__(self):
        super().__post_init__()
        if self.rounds < 1:
            raise ValueError(f"rounds must be >= 1, got {self.rounds}")


def load_problems(config: GenerationConfig) -> list[Record]:
    """The problems of every input file, in order, cut to `limit`; a clear error when there are none."""
    if not config.input:
        raise ValueError("no problems: give --input FILE (record-schema JSONL or Parquet, e.g. from `jaxmath data "
                         "build`) or set `input:` in the config")
    records = [record for path in config.input for record in read_records(path)]
    if not records:
        raise ValueError(f"no usable records in {', '.join(config.input)}")
    return records[:config.limit] if config.limit else records
