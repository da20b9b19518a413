"""The operator end to end: kopf against kmock over HTTP, Jobs run by the test kubelet in the sandbox."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from k8s_operator.conftest import REPO, Cluster, Operators
from k8s_operator.kubelet import Kubelet

pytestmark = [pytest.mark.asyncio, pytest.mark.slow]
SMA = (REPO / "examples" / "strategies" / "sma_cross.py").read_text()


def strategy(name: str, code: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "rbi.dev/v1alpha1", "kind": "BacktestStrategy", "metadata": {"name": name},
            "spec": {"code": code, "mode": "class", "data": {"dataset": "BTC-USD-15m"}, **spec}}


async def test_strategy_succeeds_with_figures(cluster: Cluster, operators: Operators, tmp_path: Path) -> None:
    state = await operators.start()
    await cluster.apply(strategy("sma", SMA, params={"fast": 10, "slow": 40}))
    body = await cluster.wait_phase("sma", {"Succeeded", "NoTrades", "Failed"})
    status = body["status"]
    assert status["phase"] == "Succeeded", status
    assert status["result"]["trades"] > 0
    assert isinstance(status["result"]["sharpe"], float)
    assert status["version"] == 1 and status["runId"]
    runs = state.store.list_runs(name="sma")
    assert len(runs) == 1 and runs[0].num_trades == status["result"]["trades"]
    await wait_events(cluster, {"JobCreated", "ResultParsed"})


async def wait_events(cluster: Cluster, reasons: set[str]) -> list[dict[str, Any]]:
    """kopf posts Events in the background: poll until these reasons are there (what kubectl describe shows)."""
    async def check() -> list[dict[str, Any]] | None:
        events = await cluster.events()
        return events if reasons <= {e.get("reason") for e in events} else None

    found: list[dict[str, Any]] = await cluster.wait_for(f"events {reasons}", check, timeout=20)
    return found


FAILING = '''
from backtesting import Strategy


class Broken(Strategy):
    def init(self):
        pass

    def next(self):
        if len(self.data) > 50:
            raise ZeroDivisionError("the strategy divided by zero")
'''

SLOW = '''
from backtesting import Strategy


class Forever(Strategy):
    def init(self):
        while True:
            pass

    def next(self):
        pass
'''

HUNGRY = '''
from backtesting import Strategy


class Hungry(Strategy):
    def init(self):
        self.blocks = []
        while True:
            self.blocks.append(bytearray(64 * 2**20))

    def next(self):
        pass
'''


async def test_failing_strategy_has_its_class(cluster: Cluster, operators: Operators) -> None:
    state = await operators.start()
    await cluster.apply(strategy("broken", FAILING))
    body = await cluster.wait_phase("broken", {"Succeeded", "NoTrades", "Failed"})
    status = body["status"]
    assert status["phase"] == "Failed"
    assert status["failureClass"] == "runtime_error"
    assert status["reason"] == "RuntimeError"
    assert "divided by zero" in status["message"]
    [run] = state.store.list_runs(name="broken")
    assert run.status == "failed" and run.error_type == "runtime_error"
    await wait_events(cluster, {"RunFailed"})


async def test_timeout_is_deadline_exceeded(cluster: Cluster, operators: Operators) -> None:
    await operators.start()
    await cluster.apply(strategy("slow", SLOW, limits={"timeoutSeconds": 3}))
    body = await cluster.wait_phase("slow", {"Succeeded", "NoTrades", "Failed"})
    assert body["status"]["failureClass"] == "timeout", body["status"]
    [job] = await cluster.jobs()
    assert job["spec"]["activeDeadlineSeconds"] == 3 + 60
    assert job["status"]["conditions"][0]["reason"] == "DeadlineExceeded"


async def test_oom_killed_is_memory_limit(cluster: Cluster, operators: Operators) -> None:
    await operators.start()
    await cluster.apply(strategy("hungry", HUNGRY, limits={"memory": "256Mi"}))
    body = await cluster.wait_phase("hungry", {"Succeeded", "NoTrades", "Failed"})
    assert body["status"]["failureClass"] == "memory_limit", body["status"]
    assert "OOMKilled" in body["status"]["message"]


@pytest.mark.parametrize(("spec", "needle"), [
    ({"code": SMA, "idea": "buy low"}, "exactly one of code, codeFrom, idea"),
    ({"code": SMA, "paramz": {"fast": 1}}, "unknown field(s) in spec"),
    ({"code": SMA, "limits": {"memory": "lots"}}, "spec.limits"),
    ({"code": "import os\nos.system('curl evil')\n"}, "line 2: os.system is not allowed"),
])
async def test_malformed_resource_is_rejected_with_a_clear_message(cluster: Cluster, operators: Operators,
                                                                   spec: dict[str, Any], needle: str) -> None:
    await operators.start()
    await cluster.apply({"apiVersion": "rbi.dev/v1alpha1", "kind": "BacktestStrategy",
                         "metadata": {"name": "bad"}, "spec": spec})
    body = await cluster.wait_phase("bad", {"Failed"})
    assert needle in body["status"]["message"], body["status"]
    assert body["status"]["reason"] in ("InvalidSpec", "ValidationError")
    assert await cluster.jobs() == []


async def test_restart_mid_run_keeps_one_job_and_the_result(cluster: Cluster, operators: Operators,
                                                            kubelet: Kubelet) -> None:
    kubelet.hold.clear()
    first = await operators.start()
    await cluster.apply(strategy("sma", SMA))
    await cluster.wait_for("the pod to run", lambda: _some(kubelet.running_pods))
    await operators.stop(first)  # the operator dies while the Job runs …
    kubelet.hold.set()  # … and the Job finishes while no operator watches

    async def job_done() -> bool:
        return all(j.get("status", {}).get("conditions") for j in await cluster.jobs())

    await cluster.wait_for("the Job to finish", job_done)
    assert (await cluster.get("sma"))["status"]["phase"] == "Running"  # type: ignore[index]
    second = await operators.start()
    body = await cluster.wait_phase("sma", {"Succeeded", "NoTrades", "Failed"})
    assert body["status"]["phase"] == "Succeeded"
    jobs = await cluster.jobs()
    assert len(jobs) == 1 and list(kubelet.jobs_started.values()) == [1]
    assert len(second.store.list_runs(name="sma")) == 1


async def test_restart_while_queued_and_running_creates_no_duplicates(cluster: Cluster, operators: Operators,
                                                                      kubelet: Kubelet) -> None:
    kubelet.hold.clear()
    first = await operators.start(max_active_jobs=2)
    for index in range(5):
        await cluster.apply(strategy(f"s{index}", SMA, params={"fast": 5 + index, "slow": 40}))
    await cluster.wait_for("two pods", lambda: _some(len(kubelet.running_pods) == 2 or None))
    assert len(await cluster.jobs()) == 2  # the bound holds: three wait in the queue
    await operators.stop(first)
    second = await operators.start(max_active_jobs=2)
    kubelet.hold.set()
    for index in range(5):
        await cluster.wait_phase(f"s{index}", {"Succeeded", "NoTrades", "Failed"}, timeout=90)
    assert kubelet.max_concurrent_jobs <= 2
    assert len(await cluster.jobs()) == 5 and set(kubelet.jobs_started.values()) == {1}
    assert second.queue.stats.peak_active <= 2
    assert len(second.store.list_runs(limit=100)) == 5


async def _some(value: Any) -> Any:
    return value


async def test_image_pull_errors_are_sandbox_errors(cluster: Cluster, operators: Operators) -> None:
    from rbi.k8s.manifests import JobOptions

    await operators.start(job=JobOptions(image="registry.invalid/does-not-exist:1"))
    await cluster.apply(strategy("nopull", SMA))
    body = await cluster.wait_phase("nopull", {"Succeeded", "NoTrades", "Failed"})
    assert body["status"]["failureClass"] == "sandbox_error" and "ImagePullBackOff" in body["status"]["message"]
    await cluster.wait_for("the stuck Job to be deleted", lambda: _none(cluster.jobs()))


async def test_metrics_and_liveness_are_served(cluster: Cluster, operators: Operators) -> None:
    import socket

    import aiohttp

    from rbi import metrics

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    before = metrics.RUNS.labels(executor="job", status="succeeded", failure_class="none")._value.get()
    await operators.start(liveness_port=port)
    await cluster.apply(strategy("sma", SMA))
    await cluster.wait_phase("sma", {"Succeeded"})
    async with aiohttp.ClientSession() as session, session.get(f"http://127.0.0.1:{port}/healthz") as response:
        assert response.status == 200
    assert metrics.RUNS.labels(executor="job", status="succeeded", failure_class="none")._value.get() == before + 1
    assert metrics.JOBS_CREATED._value.get() >= 1 and metrics.ACTIVE_JOBS._value.get() == 0
    assert metrics.QUEUE_DEPTH._value.get() == 0


async def _none(awaitable: Any) -> bool:
    return not await awaitable
