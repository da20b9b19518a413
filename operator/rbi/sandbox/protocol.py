"""Length-prefixed JSON frames between the host and its warm workers."""

from __future__ import annotations

import json
import os
import struct
from typing import Any

_HEADER = struct.Struct("!I")
MAX_FRAME = 64 * 2**20


class ProtocolError(Exception):
    pass


def _read_exact(fd: int, size: int) -> bytes:
    chunks = bytearray()
    while len(chunks) < size:
        chunk = os.read(fd, size - len(chunks))
        if not chunk:
            raise EOFError("worker channel closed")
        chunks += chunk
    return bytes(chunks)


def read_frame(fd: int) -> dict[str, Any]:
    (size,) = _HEADER.unpack(_read_exact(fd, _HEADER.size))
    if size > MAX_FRAME:
        raise ProtocolError(f"frame of {size} bytes exceeds {MAX_FRAME}")
    data = json.loads(_read_exact(fd, size))
    if not isinstance(data, dict):
        raise ProtocolError("frame is not a JSON object")
    return data


def write_frame(fd: int, message: dict[str, Any]) -> None:
    payload = json.dumps(message, separators=(",", ":")).encode()
    view = memoryview(_HEADER.pack(len(payload)) + payload)
    while view:
        view = view[os.write(fd, view):]
