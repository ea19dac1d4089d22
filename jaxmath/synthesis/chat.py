"""An OpenAI-compatible chat-completions teacher over standard-library HTTP, retried with backoff.

    POST {base_url}/chat/completions  {"model", "messages", "n", "temperature", "top_p", "max_tokens", "seed"}

Connection errors, timeouts, HTTP 429 and 5xx are retried with exponential backoff and jitter; a
`Retry-After` header is waited out as given. Any other 4xx fails at once with its status and the server's
message. A bounded thread pool keeps `concurrency` requests in flight.
"""
from __future__ import annotations

import dataclasses
import email.utils
import http.client
import json
import logging
import random
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor, as_completed
from datetime import datetime, timezone
from typing import Any, Callable, Iterator, Sequence

from jaxmath.synthesis.teacher import Messages, Teacher, TeacherError

log = logging.getLogger(__name__)


class _Retryable(Exception):
    """A failure worth another try; `wait` is the server's Retry-After in seconds, when it sent one."""

    def __init__(self, reason: str, wait: float | None = None):
        super().__init__(reason)
        self.reason, self.wait = reason, wait


def retry_after_seconds(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds a `Retry-After` header asks for (delta-seconds or an HTTP date); None when absent or unreadable."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, (when - (now or datetime.now(timezone.utc))).total_seconds())


def error_message(body: bytes) -> str:
    """The message of an error reply: OpenAI's {"error": {"message"}}, other common shapes, else the text."""
    text = body.decode("utf-8", "replace").strip()
    try:
        data = json.loads(text)
    except ValueError:
        return text[:500] or "(empty body)"
    if isinstance(data, dict):
        error = data.get("error")
        for candidate in (error.get("message") if isinstance(error, dict) else error, data.get("message"),
                          data.get("detail")):
            if isinstance(candidate, str) and candidate:
                return candidate[:500]
    return text[:500]


def _choice_text(choice: Any) -> str:
    if isinstance(choice, dict):
        message = choice.get("message")
        content = message.get("content") if isinstance(message, dict) else choice.get("text")
        return content if isinstance(content, str) else ""
    return ""


class ChatCompletionsTeacher(Teacher):
    """Completions from `POST {base_url}/chat/completions`; the API key (if any) goes in `Authorization`.

    `sleep` and `jitter_seed` exist for tests (record the waits; fix the jitter).
    """

    backend = "chat"

    def __init__(self, base_url: str, model: str, api_key: str | None = None, *, timeout_s: float = 120.0,
                 max_retries: int = 6, backoff_s: float = 1.0, max_backoff_s: float = 60.0, concurrency: int = 4,
                 sleep: Callable[[float], None] = time.sleep, jitter_seed: int | None = None):
        if not base_url.startswith(("http://", "https://")):
            raise TeacherError(f"teacher base URL {base_url!r} must start with http:// or https://")
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model, self._api_key = model, api_key
        self.timeout_s, self.max_retries, self.concurrency = timeout_s, max_retries, concurrency
        self.backoff_s, self.max_backoff_s = backoff_s, max_backoff_s
        self._sleep, self._jitter = sleep, random.Random(jitter_seed)

    def prompt_text(self, messages: Messages) -> str:
        return json.dumps([dict(m) for m in messages], ensure_ascii=False)

    def request_body(self, messages: Messages, n: int, sampling: Any) -> dict[str, Any]:
        """The JSON body for `n` completions; top_k / min_p / stop are sent only when set (vLLM accepts them)."""
        body = {"model": self.model, "messages": [dict(m) for m in messages], "n": n,
                "temperature": sampling.temperature, "top_p": sampling.top_p,
                "max_tokens": sampling.max_new_tokens, "seed": sampling.seed}
        if sampling.top_k:
            body["top_k"] = sampling.top_k
        if sampling.min_p:
            body["min_p"] = sampling.min_p
        if sampling.stop_strings:
            body["stop"] = list(sampling.stop_strings)
        return body

    def backoff(self, attempt: int) -> float:
        """Seconds before retry `attempt` (0-based): backoff_s * 2**attempt, capped, times a jitter in [0.5, 1)."""
        return min(self.max_backoff_s, self.backoff_s * 2 ** attempt) * self._jitter.uniform(0.5, 1.0)

    def _post(self, body: dict[str, Any]) -> dict[str, Any]:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        request = urllib.request.Request(self.url, data=json.dumps(body).encode(), headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                raw = response.read()
        except urllib.error.HTTPError as err:
            message = error_message(err.read())
            if err.code == 429 or err.code >= 500:
                raise _Retryable(f"HTTP {err.code}: {message}", retry_after_seconds(err.headers.get("Retry-After")))
            raise TeacherError(f"{self.url} answered HTTP {err.code} ({err.reason}): {message}") from None
        except (urllib.error.URLError, http.client.HTTPException, OSError) as err:  # refused, reset, timed out
            raise _Retryable(f"{type(err).__name__}: {getattr(err, 'reason', err)}") from None
        try:
            reply = json.loads(raw)
        except ValueError:
            raise _Retryable(f"reply is not JSON: {raw[:200]!r}") from None
        if not isinstance(reply, dict) or not isinstance(reply.get("choices"), list) or not reply["choices"]:
            raise TeacherError(f"{self.url}: the reply has no choices: {raw[:300]!r}")
        return reply

    def _post_with_retries(self, body: dict[str, Any]) -> dict[str, Any]:
        for attempt in range(self.max_retries + 1):
            try:
                return self._post(body)
            except _Retryable as failure:
                if attempt == self.max_retries:
                    raise TeacherError(f"{self.url}: no answer after {attempt + 1} attempt(s); "
                                       f"last error: {failure.reason}") from None
                wait = failure.wait if failure.wait is not None else self.backoff(attempt)
                log.warning("teacher: %s; retry %d/%d in %.1fs", failure.reason, attempt + 1, self.max_retries, wait)
                self._sleep(wait)
        raise AssertionError("unreachable")

    def complete(self, messages: Messages, n: int, sampling: Any) -> list[str]:
        """`n` completions of one conversation; asks again for the rest when a server returns fewer choices."""
        texts: list[str] = []
        while len(texts) < n:  # a later request shifts the seed, so seeded servers do not repeat themselves
            more = dataclasses.replace(sampling, seed=sampling.seed + len(texts))
            body = self.request_body(messages, n - len(texts), more)
            texts += [_choice_text(c) for c in self._post_with_retries(body)["choices"]][:n - len(texts)]
        return texts

    def sample(self, conversations: Sequence[Messages], wanted: Sequence[Sequence[int]],
               sampling: Any) -> Iterator[tuple[int, list[str]]]:
        """Requests run in a thread pool; each is seeded with `sampling.seed` + its first sample index."""
        pool = ThreadPoolExecutor(self.concurrency, thread_name_prefix="teacher")
        try:
            futures = {pool.submit(self.complete, conversations[i], len(indices),
                                   dataclasses.replace(sampling, seed=sampling.seed + indices[0])): i
                       for i, indices in enumerate(wanted) if indices}
            for future in as_completed(futures):
                yield futures[future], future.result()
        finally:
            pool.shutdown(wait=False, cancel_futures=True)
