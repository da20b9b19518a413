"""The agents' and the loop's tables (llm_calls, loop_ideas) on real SQLite files and, via
RBI_TEST_POSTGRES_URL, a real PostgreSQL."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from alembic.command import downgrade, upgrade
from sqlalchemy import inspect

from rbi.errors import StoreError
from rbi.store import ResultStore
from rbi.store.repository import _alembic_config


def test_revision_0002_adds_the_tables_and_downgrades_cleanly(store: ResultStore) -> None:
    assert store.current_revision() == store.head_revision() >= "0002"
    tables = set(inspect(store.engine).get_table_names())
    assert {"llm_calls", "loop_ideas"} <= tables
    columns = {c["name"] for c in inspect(store.engine).get_columns("llm_calls")}
    assert {"agent", "model", "prompt_name", "prompt_version", "attempt", "prompt_tokens", "completion_tokens",
            "cost", "outcome", "error_kind", "duration_seconds", "strategy_name", "version", "idea_key"} <= columns
    config = _alembic_config()
    with store.engine.begin() as connection:
        config.attributes["connection"] = connection
        downgrade(config, "0001")
    assert not {"llm_calls", "loop_ideas"} & set(inspect(store.engine).get_table_names())
    with store.engine.begin() as connection:
        config.attributes["connection"] = connection
        upgrade(config, "head")
    assert {"llm_calls", "loop_ideas"} <= set(inspect(store.engine).get_table_names())


def test_llm_calls_are_linked_to_the_version_they_produced(store: ResultStore) -> None:
    first = store.record_llm_call(agent="research", model="gpt-4o-mini", prompt_name="research_idea",
                                  prompt_version=1, outcome="ok", prompt_tokens=120, completion_tokens=80,
                                  cost=0.00007, duration_seconds=1.5, idea_key="abc")
    second = store.record_llm_call(agent="backtest", model="gpt-4o-mini", prompt_name="backtest_code",
                                   prompt_version=2, outcome="garbage", error_kind="no_code",
                                   error_message="no code\x00 here", attempt=2, cost=float("nan"), idea_key="abc")
    store.record_llm_call(agent="debug", model="m", prompt_name="debug_code", prompt_version=1,
                          outcome="rate_limited", idea_key="other")
    version = store.register_version("sma", code="class S: pass\n", params={}, source="llm")
    store.attach_llm_calls([first, second], strategy_name="sma", version=version)

    calls = store.llm_calls(strategy_name="sma", version=version)
    assert [(c.agent, c.prompt_name, c.prompt_version, c.attempt, c.outcome) for c in calls] == [
        ("research", "research_idea", 1, 1, "ok"), ("backtest", "backtest_code", 2, 2, "garbage")]
    assert calls[0].cost == pytest.approx(0.00007) and calls[1].cost is None  # NaN is not a cost
    assert calls[0].prompt_tokens == 120 and calls[0].duration_seconds == 1.5
    assert calls[1].error_message == "no code\ufffd here"
    assert [c.idea_key for c in store.llm_calls(idea_key="other")] == ["other"]
    with pytest.raises(StoreError, match="LLM call outcome"):
        store.record_llm_call(agent="x", model="m", prompt_name="p", prompt_version=1, outcome="great")


def test_ideas_keep_their_checkpoints(store: ResultStore) -> None:
    created = store.start_idea("k1", idea="Buy the dip")
    assert (created.status, created.stage, created.attempts, created.research, created.code) == (
        "pending", "queued", 0, None, None)
    assert store.start_idea("k1", idea="Buy the dip").id == created.id  # idempotent
    store.update_idea("k1", stage="research", status="running",
                      research={"name": "dip", "parameters": [{"low": float("inf")}]}, strategy_name="dip")
    updated = store.update_idea("k1", code="class S: pass\n", version=1, attempts=2,
                                best={"baseline": float("nan"), "best": 1.5})
    assert updated.research == {"name": "dip", "parameters": [{"low": None}]}
    assert updated.best == {"baseline": None, "best": 1.5}
    assert (updated.stage, updated.status, updated.version, updated.attempts) == ("research", "running", 1, 2)
    assert updated.updated_at >= created.created_at
    store.start_idea("k2", idea="Sell the rip")
    store.update_idea("k2", status="failed", failure_class="no_code", failure_message="prose")
    assert [i.idea_key for i in store.ideas()] == ["k1", "k2"]
    assert [i.idea_key for i in store.ideas(status="failed")] == ["k2"]
    with pytest.raises(ValueError, match="unknown idea field"):
        store.update_idea("k1", colour="red")
    with pytest.raises(StoreError, match="idea status"):
        store.update_idea("k1", status="done")
    with pytest.raises(StoreError, match="no idea"):
        store.update_idea("missing", status="failed")


def test_concurrent_starts_of_one_idea_make_one_row(db_url: str, tmp_path: Path) -> None:
    with ResultStore(db_url) as setup:
        setup.migrate()
    results: list[int] = []
    errors: list[BaseException] = []

    def start() -> None:
        try:
            with ResultStore(db_url) as own:
                results.append(own.start_idea("same", idea="one idea").id)
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors and len(set(results)) == 1
    with ResultStore(db_url) as check:
        assert len(check.ideas()) == 1
