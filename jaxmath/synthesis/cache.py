"""A JSONL cache of teacher completions, so a re-run asks nothing twice and a crashed run resumes.

Each completion is one line `{"key", "completion", ...}`, appended and flushed as soon as it arrives. The
key hashes (backend, model, prompt, sampling settings, sample index): asking for more samples later reuses
the ones already paid for. A torn last line (a crash mid-write) is dropped with a warning.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import threading
from typing import Any, Sequence

from jaxmath.synthesis.teacher import Messages, Teacher

log = logging.getLogger(__name__)


def _entry(raw: bytes) -> tuple[str, str] | None:
    """(key, completion) of one cache line, or None when it is not a complete entry."""
    try:
        entry = json.loads(raw)
    except ValueError:
        return None
    if isinstance(entry, dict) and isinstance(entry.get("key"), str) and isinstance(entry.get("completion"), str):
        return entry["key"], entry["completion"]
    return None


def cache_key(teacher: Teacher, prompt: str, sampling: Any, index: int) -> str:
    """The cache key of sample `index` of `prompt` from `teacher` under `sampling` (a dataclass)."""
    identity = [teacher.backend, teacher.model, prompt, dataclasses.asdict(sampling), index]
    return hashlib.sha256(json.dumps(identity, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


class CompletionCache:
    """Completions by key, read from and appended to one JSONL file (thread-safe)."""

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        self._entries: dict[str, str] = {}
        self._lock = threading.Lock()
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        keep, needs_newline = self._load()
        self._handle = open(self.path, "ab")
        if keep < os.path.getsize(self.path):  # cut a torn last line, so the next entry starts a line of its own
            self._handle.truncate(keep)
        if needs_newline:
            self._handle.write(b"\n")

    def _load(self) -> tuple[int, bool]:
        """Read the file: (bytes to keep, whether its last entry lacks its newline)."""
        if not os.path.exists(self.path):
            return 0, False
        with open(self.path, "rb") as handle:
            lines = handle.read().split(b"\n")
        offset = 0
        for lineno, raw in enumerate(lines, start=1):
            tail = lineno == len(lines)  # no newline follows it
            if raw.strip():
                entry = _entry(raw)
                if entry is None and tail:
                    log.warning("%s:%d: ignoring a torn last line (%d bytes, not a complete entry)", self.path,
                                lineno, len(raw))
                    return offset, False
                if entry is None:
                    raise ValueError(f"{self.path}:{lineno}: not a cache entry (a JSON object with 'key' and "
                                     "'completion' strings); delete that line or the file to continue")
                self._entries[entry[0]] = entry[1]
            offset += len(raw) + (0 if tail else 1)
        return offset, bool(lines[-1].strip())

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: str) -> str | None:
        return self._entries.get(key)

    def put(self, key: str, completion: str, **meta: Any) -> None:
        """Record one completion (with optional metadata for people reading the file), flushed at once."""
        line = json.dumps({"key": key, "completion": completion, **meta}, ensure_ascii=False) + "\n"
        with self._lock:
            self._handle.write(line.encode())
            self._handle.flush()
            self._entries[key] = completion

    def close(self) -> None:
        self._handle.close()

    def __enter__(self) -> "CompletionCache":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@dataclasses.dataclass
class AskCounts:
    """Completions newly asked of the teacher and completions served from the cache."""

    asked: int = 0
    cached: int = 0


def ask(teacher: Teacher, conversations: Sequence[Messages], n: int, sampling: Any,
        cache: CompletionCache | None = None, counts: AskCounts | None = None) -> list[list[str]]:
    """`n` completions per conversation: from the cache where it has them, else from the teacher (then cached)."""
    prompts = [teacher.prompt_text(c) for c in conversations]
    keys = [[cache_key(teacher, p, sampling, s) for s in range(n)] for p in prompts]
    out: list[list[str | None]] = [[cache.get(k) if cache else None for k in row] for row in keys]
    missing = [[s for s, text in enumerate(row) if text is None] for row in out]
    counts = counts if counts is not None else AskCounts()
    counts.cached += sum(n - len(m) for m in missing)
    for i, texts in teacher.sample(conversations, missing, sampling):
        for s, text in zip(missing[i], texts):
            out[i][s] = text
            if cache is not None:
                cache.put(keys[i][s], text, backend=teacher.backend, model=teacher.model, sample=s)
        counts.asked += len(texts)
    return out  # type: ignore[return-value]  (every slot is filled)
