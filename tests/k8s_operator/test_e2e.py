"""The operator end to end: kopf against kmock over HTTP, Jobs run by the test kubelet in the sandbox."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from rbi.store import ResultStore
from k8s_operator.conftest import REPO, Cluster, Operators

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
