"""Bounded capture of a stream: the head, the tail, and how much was dropped.

A strategy can print gigabytes; the host keeps a few kilobytes of each end and a
count, so memory on the host side stays flat whatever the child does.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(slots=True)
class BoundedCapture:
    head_limit: int = 8 * 1024
    tail_limit: int = 32 * 1024
    total: int = 0
    _head: bytearray = field(default_factory=bytearray)
    _tail: bytearray = field(default_factory=bytearray)

    def feed(self, chunk: bytes) -> None:
        self.total += len(chunk)
        room = self.head_limit - len(self._head)
        if room > 0:
            self._head += chunk[:room]
            chunk = chunk[room:]
        if chunk:
            self._tail += chunk
            if len(self._tail) > self.tail_limit:
                del self._tail[: len(self._tail) - self.tail_limit]

    @property
    def dropped(self) -> int:
        return self.total - len(self._head) - len(self._tail)

    def text(self) -> str:
        """Head and tail joined by a marker that says how much was left out."""
        head = self._head.decode("utf-8", errors="replace")
        tail = self._tail.decode("utf-8", errors="replace")
        if self.dropped > 0:
            return f"{head}\n[... {self.dropped} bytes omitted ...]\n{tail}"
        return head + tail

    def tail_text(self, limit: int) -> str:
        text = self.text()
        return text[-limit:] if len(text) > limit else text
