"""Teachers: models that write solutions, behind one interface (chat turns in, completions out).

Two backends implement `Teacher`: `ChatCompletionsTeacher` (jaxmath.synthesis.chat) for any OpenAI-compatible
endpoint, and `LocalTeacher` (jaxmath.synthesis.local) for a jaxmath or Hugging Face checkpoint run with
jaxmath's own sampler. `TeacherConfig` names either; `jaxmath.synthesis.teachers.make_teacher` resolves it (and
the environment) into one.
"""
from __future__ import annotations

import abc
import dataclasses
import os
from typing import Any, Iterator, Mapping, Sequence

Messages = Sequence[Mapping[str, str]]
BASE_URL_ENV = ("JAXMATH_TEACHER_BASE_URL", "OPENAI_BASE_URL")
API_KEY_ENV = ("JAXMATH_TEACHER_API_KEY", "OPENAI_API_KEY")
MODEL_ENV = ("JAXMATH_TEACHER_MODEL",)


class TeacherError(RuntimeError):
    """A teacher cannot answer: a bad request, an endpoint that keeps failing, or a missing setting."""


@dataclasses.dataclass(frozen=True)
class TeacherConfig:
    """Where solutions come from: an endpoint (`base_url`, served `model`, `api_key`) or a checkpoint `path`.

    Unset endpoint fields fall back to $JAXMATH_TEACHER_BASE_URL / $OPENAI_BASE_URL, $JAXMATH_TEACHER_MODEL
    and $JAXMATH_TEACHER_API_KEY / $OPENAI_API_KEY. Retries back off exponentially (`backoff_s` doubling up
    to `max_backoff_s`, with jitter); `concurrency` requests are in flight at once. `dtype`, `tokenizer`
    and `batch_size` apply to a local checkpoint.
    """

    base_url: str | None = None
    path: str | None = None
    model: str | None = None
    api_key: str | None = None
    timeout_s: float = 120.0
    max_retries: int = 6
    backoff_s: float = 1.0
    max_backoff_s: float = 60.0
    concurrency: int = 4
    dtype: str | None = None
    tokenizer: str | None = None
    batch_size: int = 32

    def __post_init__(self):
        if self.base_url and self.path:
            raise ValueError("set teacher.base_url (an endpoint) or teacher.path (a checkpoint), not both")
        if self.timeout_s <= 0 or self.max_retries < 0 or self.backoff_s < 0 or self.max_backoff_s < 0:
            raise ValueError("teacher.timeout_s must be > 0 and max_retries, backoff_s, max_backoff_s >= 0")
        if self.concurrency < 1 or self.batch_size < 1:
            raise ValueError("teacher.concurrency and teacher.batch_size must be >= 1")


def first_env(names: Sequence[str]) -> str | None:
    """The value of the first of these environment variables that is set and not empty, else None."""
    return next((os.environ[n] for n in names if os.environ.get(n)), None)


class Teacher(abc.ABC):
    """Writes completions for chat conversations. `backend` and `model` identify it in cache keys."""

    backend: str
    model: str

    @abc.abstractmethod
    def prompt_text(self, messages: Messages) -> str:
        """The prompt exactly as this teacher sees it (what cache keys hash)."""

    @abc.abstractmethod
    def sample(self, conversations: Sequence[Messages], wanted: Sequence[Sequence[int]],
               sampling: Any) -> Iterator[tuple[int, list[str]]]:
        """Yield (i, completions) as each is ready, in any order: one completion per sample index in
        `wanted[i]` (a teacher that can seed per sample uses them; the rest only count them)."""

    def close(self) -> None:
        """Release what the teacher holds (threads, model weights)."""
