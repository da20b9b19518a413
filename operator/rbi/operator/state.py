"""What one operator process holds in memory: settings, the API client, the store, the queue.

Nothing here must survive a restart: the cluster (resources, their status, Jobs) and the
results store hold the truth, and every handler rebuilds from them.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from rbi.operator.kube import KubeApi
from rbi.operator.queue import JobQueue
from rbi.operator.settings import OperatorSettings
from rbi.store import ResultStore


@dataclass
class OperatorState:
    settings: OperatorSettings
    store: ResultStore
    queue: JobQueue
    api: KubeApi | None = None
    # (namespace, name) → the live Optuna search of an optimisation; lost on restart, rebuilt empty.
    searches: dict[tuple[str, str], Any] = field(default_factory=dict)
    # (namespace, name, iteration) → the asked Optuna trials of a batch in flight, to tell their results.
    asked: dict[tuple[str, str, int], Any] = field(default_factory=dict)
    locks: dict[str, asyncio.Lock] = field(default_factory=dict)
    namespaces_with_policy: set[str] = field(default_factory=set)
    # Phase of each resource, for the rbi_strategies{phase} gauge.
    phases: dict[tuple[str, str], str] = field(default_factory=dict)
    llm_client_factory: Callable[[], Any] | None = None
    _ready: asyncio.Event | None = None
    _queue_task: asyncio.Task[None] | None = None

    def _event(self) -> asyncio.Event:
        if self._ready is None:
            self._ready = asyncio.Event()
        return self._ready

    def connect(self, api: KubeApi) -> None:
        """Logged in: serve the API client and start draining the queue."""
        self.api = api
        self._event().set()

    async def ready(self, timeout: float = 60.0) -> None:
        """Wait for the login; start the queue from the first handler, inside kopf's context (for Events)."""
        await asyncio.wait_for(self._event().wait(), timeout)
        if self._queue_task is None or self._queue_task.done():
            self._queue_task = asyncio.get_running_loop().create_task(self.queue.run(), name="rbi-job-queue")

    async def stop(self) -> None:
        if self._queue_task is not None:
            self._queue_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._queue_task
            self._queue_task = None
        if self.api is not None:
            await self.api.close()
            self.api = None
        self._ready = None

    @property
    def kube(self) -> KubeApi:
        if self.api is None:
            raise RuntimeError("the operator has not logged in to the cluster yet")
        return self.api

    def lock(self, key: str) -> asyncio.Lock:
        lock = self.locks.get(key)
        if lock is None:
            lock = self.locks[key] = asyncio.Lock()
        return lock
