"""Framing of a batch's result channel: one frame per trial, in order.

The channel is written by the sandboxed child, so strategy code can write to it too: every
frame is untrusted. The reader accepts only well-formed frames (magic, the expected trial
index, a bounded length) and stops at the first thing that is not one; what that means for
the trials is the monitor's decision (rbi.sandbox.worker).
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field

MAGIC = b"RBIF"
_HEADER = struct.Struct("!4sII")
HEADER_SIZE = _HEADER.size


def encode(index: int, payload: bytes) -> bytes:
    return _HEADER.pack(MAGIC, index, len(payload)) + payload


def write(fd: int, index: int, payload: bytes) -> None:
    view = memoryview(encode(index, payload))
    while view:
        view = view[os.write(fd, view):]


class FrameError(Exception):
    """The channel carried something that is not the next trial's frame."""

    def __init__(self, message: str, *, kind: str, index: int | None = None) -> None:
        super().__init__(message)
        self.kind = kind  # "malformed", "oversize", "out_of_order" or "extra"
        self.index = index


@dataclass(slots=True)
class FrameReader:
    """Incremental parser: feed() bytes as they arrive, get back the frames completed by them."""

    expected: int
    max_payload: int
    next_index: int = 0
    _buffer: bytearray = field(default_factory=bytearray)

    def feed(self, chunk: bytes) -> list[tuple[int, bytes]]:
        self._buffer += chunk
        done: list[tuple[int, bytes]] = []
        while len(self._buffer) >= HEADER_SIZE:
            magic, index, size = _HEADER.unpack_from(self._buffer)
            if magic != MAGIC:
                raise FrameError("the result channel carried bytes that are not a result frame", kind="malformed")
            if size > self.max_payload:
                raise FrameError(f"a result frame of {size} bytes exceeds {self.max_payload}", kind="oversize")
            if index != self.next_index:
                raise FrameError(f"result frame for trial {index} while trial {self.next_index} was running",
                                 kind="out_of_order", index=index)
            if self.next_index >= self.expected:
                raise FrameError("more result frames than trials", kind="extra", index=index)
            if len(self._buffer) < HEADER_SIZE + size:
                break
            payload = bytes(self._buffer[HEADER_SIZE:HEADER_SIZE + size])
            del self._buffer[:HEADER_SIZE + size]
            done.append((index, payload))
            self.next_index += 1
        return done

    @property
    def pending(self) -> int:
        """Bytes of a frame not yet complete (a trial cut off mid-write)."""
        return len(self._buffer)
