"""Teachers: models that write solutions, behind one interface (chat turns in, completions out).

Two backends: `ChatCompletionsTeacher` (jaxmath.synthesis.chat) for any OpenAI-compatible endpoint, and
`LocalTeacher` for a jaxmath or Hugging Face checkpoint run with jaxmath's own sampler. `TeacherConfig`
names either; `make_teacher` resolves it (and the environment) into one.
"""
from __future__ import annotations

import abc
import dataclasses
import hashlib
import os
from pathlib import Path
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


def _first_env(names: Sequence[str]) -> str | None:
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


def checkpoint_fingerprint(path: str | os.PathLike) -> str:
    """A short hash of a checkpoint directory's path and its files' names, sizes and modification times."""
    root = Path(path)
    digest = hashlib.sha256(str(root.resolve()).encode())
    if root.is_dir():
        for file in sorted(p for p in root.rglob("*") if p.is_file()):
            stat = file.stat()
            digest.update(f"{file.relative_to(root)}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:16]


class LocalTeacher(Teacher):
    """A jaxmath or HF checkpoint sampled with jaxmath's KV-cache sampler (loaded on the first request).

    Its cache identity is the checkpoint's path plus a fingerprint of its files, so a retrained checkpoint
    at the same path is asked afresh.
    """

    backend = "local"

    def __init__(self, path: str | os.PathLike, dtype: str | None = None, tokenizer: str | None = None,
                 batch_size: int = 32):
        from jaxmath.data.tokenizer import load_tokenizer
        from jaxmath.inference.loading import model_files_dir

        self.path, self.dtype, self.tokenizer_path, self.batch_size = str(path), dtype, tokenizer, batch_size
        self.model = f"{Path(path).resolve()}@{checkpoint_fingerprint(path)}"
        self.tokenizer = load_tokenizer(tokenizer or model_files_dir(path))
        self._loaded: tuple[Any, list[int], Any] | None = None  # (model, eos ids, mesh)

    def prompt_text(self, messages: Messages) -> str:
        from jaxmath.data.formats import render_messages

        return render_messages(messages, self.tokenizer)

    def _generator(self) -> tuple[Any, list[int], Any]:
        if self._loaded is None:
            from jaxmath.inference.loading import load_for_generation

            model, self.tokenizer, eos_ids, mesh = load_for_generation(self.path, self.dtype, self.tokenizer_path)
            self._loaded = (model, eos_ids, mesh)
        return self._loaded

    def sample(self, conversations: Sequence[Messages], wanted: Sequence[Sequence[int]],
               sampling: Any) -> Iterator[tuple[int, list[str]]]:
        import jax

        from jaxmath.inference.completions import sample_completions
        from jaxmath.inference.config import plain_text_stops

        counts = [len(w) for w in wanted]
        asked = [i for i, count in enumerate(counts) if count > 0]
        if not asked:
            return
        model, eos_ids, mesh = self._generator()
        sampling = plain_text_stops(sampling, self.tokenizer)
        for count in sorted({counts[i] for i in asked}):  # one sampler call per number of samples wanted
            group = [i for i in asked if counts[i] == count]
            prompts = [self.prompt_text(conversations[i]) for i in group]
            with jax.set_mesh(mesh):
                results = sample_completions(model, self.tokenizer, prompts, count, sampling, eos_ids,
                                             self.batch_size, label="teacher")
            for i, samples in zip(group, results):
                yield i, [text for text, _ in samples]

    def close(self) -> None:
        self._loaded = None


def make_teacher(config: TeacherConfig) -> Teacher:
    """The teacher a config names; endpoint settings missing from it come from the environment."""
    if config.path:
        if not os.path.isdir(config.path):
            raise TeacherError(f"teacher checkpoint directory {config.path!r} does not exist "
                               "(an endpoint URL starts with http:// or https://)")
        return LocalTeacher(config.path, config.dtype, config.tokenizer, config.batch_size)
    from jaxmath.synthesis.chat import ChatCompletionsTeacher

    base_url = config.base_url or _first_env(BASE_URL_ENV)
    if not base_url:
        raise TeacherError("no teacher: pass --teacher URL_OR_PATH, set teacher.base_url or teacher.path, "
                           f"or set ${' / $'.join(BASE_URL_ENV)}")
    model = config.model or _first_env(MODEL_ENV)
    if not model:
        raise TeacherError(f"the endpoint {base_url} needs a model name: --teacher-model, teacher.model or "
                           f"${MODEL_ENV[0]}")
    return ChatCompletionsTeacher(base_url, model, config.api_key or _first_env(API_KEY_ENV),
                                  timeout_s=config.timeout_s, max_retries=config.max_retries,
                                  backoff_s=config.backoff_s, max_backoff_s=config.max_backoff_s,
                                  concurrency=config.concurrency)
