"""`LocalTeacher`: a jaxmath or Hugging Face checkpoint answering through jaxmath's own sampler."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any, Iterator, Sequence

from jaxmath.synthesis.teacher import Messages, Teacher


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
        self._loaded: tuple[Any, list[int], Any] | None = None  # (decode weights, eos ids, mesh)

    def prompt_text(self, messages: Messages) -> str:
        from jaxmath.data.formats import render_messages

        return render_messages(messages, self.tokenizer)

    def _generator(self) -> tuple[Any, list[int], Any]:
        if self._loaded is None:
            import jax

            from jaxmath.inference.loading import load_for_generation
            from jaxmath.inference.weights import prepare_weights

            model, self.tokenizer, eos_ids, mesh = load_for_generation(self.path, self.dtype, self.tokenizer_path)
            with jax.set_mesh(mesh):
                self._loaded = (prepare_weights(model), eos_ids, mesh)  # the sampler's copy; the model is let go
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
