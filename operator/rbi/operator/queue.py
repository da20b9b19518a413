"""A bound on active Jobs with a FIFO queue in front of it.

Applying 1,000 strategies at once puts 1,000 entries here, not 1,000 Jobs on the cluster:
at most `limit` Jobs exist at a time, the rest wait in order, and handlers return at once
(they enqueue and leave), so the operator keeps serving events while the queue drains.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from rbi import metrics

logger = logging.getLogger(__name__)
Starter = Callable[[], Awaitable[bool]]


@dataclass(slots=True)
class _Waiting:
    key: str
    start: Starter
    group: str = ""
    enqueued: float = field(default_factory=time.monotonic)


@dataclass(slots=True)
class QueueStats:
    peak_waiting: int = 0
    peak_active: int = 0
    admitted: int = 0
    waits: list[float] = field(default_factory=list)


class JobQueue:
    """Keys are Job names; a key is either waiting, active (its Job exists and runs), or unknown."""

    def __init__(self, limit: int) -> None:
        self.limit = max(1, limit)
        self._waiting: OrderedDict[str, _Waiting] = OrderedDict()
        self._active: set[str] = set()
        self._starting: set[str] = set()
        self._released_while_starting: set[str] = set()
        self._wake = asyncio.Event()
        self.stats = QueueStats()
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    @property
    def active(self) -> int:
        return len(self._active | self._starting)

    def knows(self, key: str) -> bool:
        return key in self._waiting or key in self._active or key in self._starting

    def submit(self, key: str, start: Starter, *, group: str = "") -> bool:
        """Queue a Job to create; False when this key is queued or running already (idempotent)."""
        if self.knows(key):
            return False
        self._waiting[key] = _Waiting(key, start, group)
        self.stats.peak_waiting = max(self.stats.peak_waiting, len(self._waiting))
        self._changed()
        return True

    def attach(self, key: str) -> None:
        """A Job that exists already (seen on a watch, or found after a restart) holds a slot."""
        self._waiting.pop(key, None)
        if key not in self._active:
            self._active.add(key)
            self._changed()

    def release(self, key: str) -> None:
        """A Job that finished or was deleted, or a queued run that is no longer wanted."""
        changed = self._waiting.pop(key, None) is not None
        if key in self._starting:
            self._released_while_starting.add(key)
        if key in self._active:
            self._active.discard(key)
            changed = True
        if changed:
            self._changed()

    def forget(self, group: str) -> None:
        """Drop every queued entry of one resource (it was deleted)."""
        for key in [k for k, entry in self._waiting.items() if entry.group == group]:
            del self._waiting[key]
        self._changed()

    def _changed(self) -> None:
        metrics.QUEUE_DEPTH.set(len(self._waiting))
        metrics.ACTIVE_JOBS.set(self.active)
        self.stats.peak_active = max(self.stats.peak_active, self.active)
        self._wake.set()

    async def run(self) -> None:
        """Admit waiting entries while slots are free; runs for the life of the operator."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._waiting and self.active < self.limit:
                key, entry = self._waiting.popitem(last=False)
                self._starting.add(key)
                wait = time.monotonic() - entry.enqueued
                metrics.QUEUE_WAIT.observe(wait)
                self.stats.waits.append(wait)
                self.stats.admitted += 1
                self._changed()
                task = asyncio.create_task(self._start(key, entry))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    async def _start(self, key: str, entry: _Waiting) -> None:
        try:
            created = await entry.start()
        except Exception:  # the starter records its own failure; the slot must not leak
            logger.exception("starting %s failed", key)
            created = False
        self._starting.discard(key)
        if created and key not in self._released_while_starting:
            self._active.add(key)
        self._released_while_starting.discard(key)
        self._changed()
