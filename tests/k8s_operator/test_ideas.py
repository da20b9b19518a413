"""spec.idea in the cluster: the operator asks the agents for code, runs it, and debugs a failure.

The agents themselves are tested against a scripted LLM server in tests/agents; here they are
replaced by stand-ins that honour their contract, to test what the operator does with them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

from k8s_operator.conftest import NAMESPACE, Cluster, Operators
from k8s_operator.test_e2e import FAILING, SMA, wait_events

pytestmark = [pytest.mark.asyncio, pytest.mark.slow]


@dataclass
class Generated:
    name: str
    code: str
    strategy_class: str | None = None
    params: dict[str, Any] | None = None


@dataclass
class Debugged:
    code: str
    changed: bool = True
    gave_up: bool = False
    reason: str = ""


async def test_idea_is_generated_then_debugged_until_it_runs(cluster: Cluster, operators: Operators,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    import rbi.agents

    calls: list[str] = []

    def generate_strategy(idea: str, *, client: Any, store: Any = None, name: str | None = None) -> Generated:
        calls.append(f"generate:{idea}")
        return Generated(name=name or "x", code=FAILING)

    def debug_code(code: str, outcome: Any, *, client: Any, attempt: int, previous_errors: Any = ()) -> Debugged:
        calls.append(f"debug:{attempt}:{outcome.error.type}")
        return Debugged(code=SMA)

    monkeypatch.setattr(rbi.agents, "generate_strategy", generate_strategy)
    monkeypatch.setattr(rbi.agents, "debug_code", debug_code)
    state = await operators.start()
    state.llm_client_factory = lambda: object()
    await cluster.apply({"apiVersion": "rbi.dev/v1alpha1", "kind": "BacktestStrategy", "metadata": {"name": "idea"},
                         "spec": {"idea": "buy when the fast average crosses the slow one", "mode": "class"}})
    body = await cluster.wait_phase("idea", {"Succeeded", "NoTrades"}, timeout=90)
    assert calls == ["generate:buy when the fast average crosses the slow one", "debug:1:runtime_error"]
    assert body["status"]["attempt"] == 1 and body["status"]["result"]["trades"] > 0
    code = await cluster.call("GET", f"/api/v1/namespaces/{NAMESPACE}/configmaps/idea-code")
    assert code["data"]["strategy.py"] == SMA
    assert "OPENAI" not in str(await cluster.jobs()) and "OPENAI" not in str(code)
    runs = state.store.list_runs(name="idea")
    assert sorted(r.status for r in runs) == ["failed", "succeeded"]
    await wait_events(cluster, {"CodeGenerated", "CodeDebugged", "RunFailed", "ResultParsed"})


async def test_idea_without_an_llm_endpoint_fails_clearly(cluster: Cluster, operators: Operators,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    for key in ("OPENAI_BASE_URL", "OPENAI_API_KEY", "RBI_LLM_CONFIG"):
        monkeypatch.delenv(key, raising=False)
    await operators.start()
    await cluster.apply({"apiVersion": "rbi.dev/v1alpha1", "kind": "BacktestStrategy", "metadata": {"name": "idea"},
                         "spec": {"idea": "mean reversion"}})
    body = await cluster.wait_phase("idea", {"Failed"})
    assert body["status"]["reason"] == "LLMNotConfigured" and "OPENAI_BASE_URL" in body["status"]["message"]
