"""`IdeaLoop` end to end: the real openai client against a scripted server, real sandbox runs, real SQL."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from sqlalchemy import func, select, table

from rbi import metrics
from rbi.engine import LocalExecutor
from rbi.llm import LLMClient
from rbi.loop import IdeaLoop, IdeaState, LoopSettings, parse_ideas
from rbi.store import ResultStore
from tests.llm.fake_openai import Reply, ScriptedOpenAI

from .conftest import QUICK_OPTIMIZATION, fenced, research_answer, strategy_code


def count(store: ResultStore, name: str) -> int:
    with store.engine.connect() as connection:
        return int(connection.scalar(select(func.count()).select_from(table(name))) or 0)


def calls_metric(agent: str, outcome: str) -> float:
    return metrics.REGISTRY.get_sample_value("rbi_llm_calls_total", {"agent": agent, "outcome": outcome}) or 0.0


def settings(data: Path | None, **changes: object) -> LoopSettings:
    base = LoopSettings(concurrency=1, data=data, optimization=dict(QUICK_OPTIMIZATION))
    return replace(base, **changes)  # type: ignore[arg-type]


def loop(server: ScriptedOpenAI, store: ResultStore, executor: LocalExecutor, loop_settings: LoopSettings,
         **config: object) -> IdeaLoop:
    client = LLMClient(server.config(**config))
    return IdeaLoop(store=store, client=client, executor=executor, settings=loop_settings)


def test_good_path_end_to_end_on_the_bundled_data(store: ResultStore, executor: LocalExecutor,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-live-NEVER-IN-THE-SANDBOX-123456")
    ideas = parse_ideas("Buy when the 10-bar SMA crosses above the 40-bar SMA; sell on the opposite cross.\n")
    code = strategy_code("SmaCrossTrend")
    ok_before = calls_metric("research", "ok")
    with ScriptedOpenAI(Reply.text(research_answer("sma-cross-trend")), Reply.text(fenced(code))) as server:
        summary = loop(server, store, executor, settings(None), model="gpt-4o-mini").run(ideas)
        requests = server.requests

    assert len(requests) == 2
    (state,) = summary.ideas
    assert state.status == "succeeded", state
    assert summary.to_json()["succeeded"] == 1 and not summary.failures_by_class
    assert state.baseline is not None and state.best is not None
    # Tokens and cost are accounted per call and in the summary (gpt-4o-mini has a list price).
    assert summary.prompt_tokens > 0 and summary.completion_tokens > 0 and summary.cost > 0
    calls = store.llm_calls(strategy_name="sma-cross-trend")
    assert [(c.agent, c.prompt_name, c.outcome, c.version) for c in calls] == [
        ("research", "research_idea", "ok", 1), ("backtest", "backtest_code", "ok", 1)]
    assert all(c.model == "gpt-4o-mini" and c.prompt_version >= 1 and c.cost and c.cost > 0 for c in calls)
    assert calls_metric("research", "ok") == ok_before + 1
    (v1, *_rest) = store.versions("sma-cross-trend")
    assert v1.source == "llm" and v1.params == {"fast": 10, "slow": 40}
    assert v1.latest_run is not None and v1.latest_run.status == "succeeded" and v1.latest_run.num_trades
    idea = store.get_idea(ideas[0].key)
    assert idea is not None and idea.status == "succeeded" and idea.stage == "done"
    assert idea.best is not None and idea.best["objective"] == "sharpe_ratio"
    # The key went to the server as a bearer token, never into a request body.
    assert all("NEVER-IN-THE-SANDBOX" not in r.text for r in requests)
