"""Length-prefixed JSON messages between the host and the sandbox fork server (standard library only)."""
from __future__ import annotations

import json
import os
import select
import struct
import time
from typing import Any

_HEADER = struct.Struct(">Q")
MAX_MESSAGE_BYTES = 1 << 30


def write_all(fd: int, data: bytes) -> None:
    """Write every byte of `data` to a (blocking) file descriptor."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def write_message(fd: int, message: Any) -> None:
    """Send one JSON-serialisable message."""
    body = json.dumps(message).encode()
    write_all(fd, _HEADER.pack(len(body)) + body)


def _read_exact(fd: int, n: int, deadline: float | None) -> bytes | None:
    chunks, left = [], n
    while left:
        if deadline is not None:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
                raise TimeoutError("the sandbox server did not answer in time")
        chunk = os.read(fd, min(left, 1 << 20))
        if not chunk:
            return None
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def read_message(fd: int, deadline: float | None = None) -> Any:
    """Receive one message; None when the other side closed the pipe; TimeoutError past `deadline`."""
    header = _read_exact(fd, _HEADER.size, deadline)
    if header is None:
        return None
    (size,) = _HEADER.unpack(header)
    if size > MAX_MESSAGE_BYTES:
        raise ValueError(f"sandbox message of {size} bytes exceeds the {MAX_MESSAGE_BYTES}-byte limit")
    body = _read_exact(fd, size, deadline)
    if body is None:
        return None
    return json.loads(body)
