"""Fixtures: an API server (kmock over real HTTP), the test kubelet, and operators to start and stop."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import kmock
import kopf
import pytest
import pytest_asyncio

from k8s_operator.emulator import ApiServer
from k8s_operator.kubelet import Kubelet
from rbi.k8s.manifests import JobOptions
from rbi.operator.queue import JobQueue
from rbi.operator.settings import OperatorSettings
from rbi.operator.state import OperatorState
from rbi.store import ResultStore

NAMESPACE = "rbi-test"
BTS = "/apis/rbi.dev/v1alpha1/namespaces/rbi-test/backteststrategies"
REPO = Path(__file__).resolve().parents[2]


class Cluster:
    """The API server's URL and a plain HTTP client to apply resources and read them, like kubectl."""

    def __init__(self, api: ApiServer, url: str, session: aiohttp.ClientSession) -> None:
        self.api = api
        self.url = url.rstrip("/")
        self.session = session

    async def call(self, method: str, path: str, body: Any = None) -> Any:
        headers = {"Content-Type": "application/merge-patch+json"} if method == "PATCH" else {}
        async with self.session.request(method, self.url + path, json=body, headers=headers) as response:
            if response.status == 404:
                return None
            assert response.status < 400, await response.text()
            return await response.json(content_type=None)

    async def apply(self, document: dict[str, Any]) -> dict[str, Any]:
        document.setdefault("metadata", {})["namespace"] = NAMESPACE
        result: dict[str, Any] = await self.call("POST", BTS, document)
        return result

    async def get(self, name: str) -> dict[str, Any] | None:
        result: dict[str, Any] | None = await self.call("GET", f"{BTS}/{name}")
        return result

    async def items(self, path: str) -> list[dict[str, Any]]:
        result = await self.call("GET", path)
        return list((result or {}).get("items") or [])

    async def jobs(self) -> list[dict[str, Any]]:
        return await self.items(f"/apis/batch/v1/namespaces/{NAMESPACE}/jobs")

    async def events(self) -> list[dict[str, Any]]:
        return await self.items(f"/api/v1/namespaces/{NAMESPACE}/events")

    async def wait_for(self, what: str, check: Callable[[], Awaitable[Any]], timeout: float = 60.0) -> Any:
        """Poll until `check` returns something truthy; fail with `what` after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            value = await check()
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
            await asyncio.sleep(0.1)

    async def wait_phase(self, name: str, phases: set[str], timeout: float = 60.0) -> dict[str, Any]:
        async def check() -> dict[str, Any] | None:
            body = await self.get(name)
            return body if body and (body.get("status") or {}).get("phase") in phases else None

        try:
            result: dict[str, Any] = await self.wait_for(f"{name} to reach {phases}", check, timeout)
        except AssertionError:
            raise AssertionError(f"{name} did not reach {phases}: {await self.get(name)}") from None
        return result


@pytest_asyncio.fixture()
async def cluster() -> AsyncIterator[Cluster]:
    async with ApiServer() as api, kmock.Server(api) as server, aiohttp.ClientSession() as session:
        yield Cluster(api, str(server.url), session)


# Package scope, not session: the sandbox tests that run later count this process's warm workers.
@pytest.fixture(scope="package")
def pool() -> Any:
    from rbi.sandbox.pool import WorkerPool

    workers = WorkerPool(2)
    yield workers
    workers.close()


@pytest_asyncio.fixture()
async def kubelet(cluster: Cluster, pool: Any, tmp_path: Path) -> AsyncIterator[Kubelet]:
    node = Kubelet(cluster.url, NAMESPACE, pool=pool, data_dir=tmp_path / "data")
    cluster.api["get", kmock.resource("", "v1", "pods"), kmock.subresource("log")] << node.serve_log
    await node.start()
    yield node
    await node.stop()


def settings(tmp_path: Path, **overrides: Any) -> OperatorSettings:
    values: dict[str, Any] = {"namespaces": (NAMESPACE,), "metrics_port": None, "liveness_port": None,
                              "max_active_jobs": 4, "db_url": f"sqlite:///{tmp_path / 'rbi.db'}",
                              "job": JobOptions(image="rbi-sandbox:test", trial_parallelism=2),
                              "code_dirs": (REPO / "examples" / "strategies",)}
    values.update(overrides)
    return OperatorSettings(**values)


class Operators:
    """Start an operator; stop it (a crash or a rollout) and start another.

    Each runs in its own thread and event loop, as in production: kopf cancels every task
    of its loop when it stops, which must not include the API server's or the kubelet's.
    """

    def __init__(self, cluster: Cluster, tmp_path: Path) -> None:
        self.cluster = cluster
        self.tmp_path = tmp_path
        self.running: list[tuple[threading.Thread, threading.Event, OperatorState]] = []

    async def start(self, **overrides: Any) -> OperatorState:
        from rbi.cli.operator_cmd import run_operator

        config = settings(self.tmp_path, **overrides)
        store = ResultStore(str(config.db_url))
        store.migrate()
        state = OperatorState(settings=config, store=store, queue=JobQueue(config.max_active_jobs))
        stop, ready = threading.Event(), threading.Event()
        url = self.cluster.url

        def login(**_: Any) -> kopf.ConnectionInfo:
            return kopf.ConnectionInfo(server=url, insecure=True, default_namespace=NAMESPACE)

        def main() -> None:
            asyncio.run(run_operator(config, state=state, login=login, stop_flag=stop, ready_flag=ready))

        thread = threading.Thread(target=main, name="operator", daemon=True)
        thread.start()
        await asyncio.to_thread(ready.wait, 30)
        await self.cluster.wait_for("the operator to log in", lambda: _value(state.api is not None), timeout=30)
        self.running.append((thread, stop, state))
        return state

    async def stop(self, state: OperatorState) -> None:
        for item in list(self.running):
            thread, stop, current = item
            if current is state:
                stop.set()
                await asyncio.to_thread(thread.join, 30)
                assert not thread.is_alive(), "the operator did not stop"
                self.running.remove(item)
                state.store.close()

    async def stop_all(self) -> None:
        for _, _, state in list(self.running):
            await self.stop(state)


async def _value(value: Any) -> Any:
    return value


@pytest_asyncio.fixture()
async def operators(cluster: Cluster, kubelet: Kubelet, tmp_path: Path) -> AsyncIterator[Operators]:
    manager = Operators(cluster, tmp_path)
    yield manager
    await manager.stop_all()
