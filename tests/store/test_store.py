"""The results store against real databases: SQLite files and, via RBI_TEST_POSTGRES_URL, PostgreSQL."""

from __future__ import annotations

import json
import math
import os
import socket
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import event, func, inspect, select, table, text
from sqlalchemy.exc import OperationalError

from rbi.errors import StoreError
from rbi.outcome import FailureClass, RunError, RunOutcome, Status
from rbi.store import ResultStore, code_hash, repository
from rbi.store.models import Base
from rbi.store.repository import storable_json

SEED_RESULT_COLUMNS = {
    "id", "strategy_name", "version", "code_hash", "execution_time", "total_return", "sharpe_ratio",
    "max_drawdown", "win_rate", "num_trades", "error_message", "created_at",
}  # fmt: skip
ADDED_RESULT_COLUMNS = {
    "status", "error_type", "error_line", "error_detail", "mode", "params", "stats", "dataset_hash",
    "dataset_name", "peak_memory_bytes", "stdout_tail", "stderr_tail", "sample", "trial_id", "run_kind",
    "labels",
}  # fmt: skip
SEED_HISTORY_COLUMNS = {
    "id", "strategy_name", "parent_version", "child_version", "optimization_type", "changes_made",
    "performance_delta",
}  # fmt: skip

CODE = "class Strategy:\n    n = 10\n"


def succeeded(**stats: Any) -> RunOutcome:
    return RunOutcome(status=Status.SUCCEEDED, stats=stats, execution_time=1.25, mode="class")


def count(store: ResultStore, table_name: str) -> int:
    with store.engine.connect() as connection:
        return int(connection.scalar(select(func.count()).select_from(table(table_name))) or 0)


def raw_json(store: ResultStore, column: str, run_id: int) -> str:
    """The JSON text as the database holds it, not as the driver parses it."""
    with store.engine.connect() as connection:
        value = connection.execute(
            text(f"SELECT CAST({column} AS TEXT) FROM backtest_results WHERE id = :id"), {"id": run_id}
        ).scalar_one()
    return str(value)


def migrations_dir() -> str:
    return str(resources.files("rbi.store").joinpath("migrations"))


# --- Schema ---------------------------------------------------------------------------------------


def test_migrate_is_idempotent_and_records_head(db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The migrations are found from the package, whatever the working directory is.
    monkeypatch.chdir(tmp_path)
    head = ScriptDirectory(migrations_dir()).get_current_head()
    with ResultStore(db_url) as store:
        assert store.current_revision() is None
        store.migrate()
        store.migrate()
        with store.engine.connect() as connection:
            versions = connection.execute(text("SELECT version_num FROM alembic_version")).scalars().all()
        assert versions == [head]
        assert store.current_revision() == head == ResultStore.head_revision()
    # A second process starting later migrates the same database again without harm.
    with ResultStore(db_url) as again:
        again.migrate()
        assert again.current_revision() == head


def test_tables_have_seed_and_added_columns(store: ResultStore) -> None:
    inspector = inspect(store.engine)
    assert {"backtest_results", "strategy_versions", "optimization_history", "optimization_trials"} <= set(
        inspector.get_table_names()
    )
    result_columns = {column["name"] for column in inspector.get_columns("backtest_results")}
    assert result_columns >= SEED_RESULT_COLUMNS | ADDED_RESULT_COLUMNS
    history_columns = {column["name"] for column in inspector.get_columns("optimization_history")}
    assert SEED_HISTORY_COLUMNS | {"created_at", "details"} <= history_columns
    version_columns = {column["name"] for column in inspector.get_columns("strategy_versions")}
    assert {"strategy_name", "version", "code", "code_hash", "params", "parent_version", "source"} <= (version_columns)
    unique = inspector.get_unique_constraints("strategy_versions")
    assert any(set(constraint["column_names"]) == {"strategy_name", "version"} for constraint in unique)
    indexed = {tuple(index["column_names"]) for index in inspector.get_indexes("backtest_results")}
    assert {("strategy_name", "created_at"), ("status",), ("created_at",)} <= indexed


def test_models_and_migrations_agree(store: ResultStore) -> None:
    with store.engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        assert compare_metadata(context, Base.metadata) == []


def test_newer_schema_revision_is_refused(store: ResultStore) -> None:
    with store.engine.begin() as connection:
        connection.execute(text("UPDATE alembic_version SET version_num = 'fromthefuture'"))
    with pytest.raises(StoreError, match=r"fromthefuture.*upgrade rbi"):
        store.migrate()


def test_unmigrated_database_names_the_fix(db_url: str) -> None:
    with ResultStore(db_url) as store, pytest.raises(StoreError, match=r"migrate\(\)"):
        store.list_runs()


def test_sqlite_uses_wal_and_waits_for_the_write_lock(tmp_path: Path) -> None:
    with ResultStore(f"sqlite:///{tmp_path / 'rbi.db'}") as store, store.engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert int(connection.exec_driver_sql("PRAGMA busy_timeout").scalar() or 0) >= 5000
        assert connection.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1


# --- Versions -------------------------------------------------------------------------------------


def test_register_version_reuses_identical_code_and_params(store: ResultStore) -> None:
    first = store.register_version("sma", code=CODE, params={"n": 10})
    assert store.register_version("sma", code=CODE, params={"n": 10}) == first
    changed_code = store.register_version("sma", code=CODE + "# tweak\n", params={"n": 10}, parent_version=first)
    changed_params = store.register_version("sma", code=CODE, params={"n": 20}, source="params")
    assert [first, changed_code, changed_params] == [1, 2, 3]
    # Key order is not part of a parameter set's identity.
    params = {"a": 1, "b": 2}
    mixed = store.register_version("sma", code=CODE, params=params)
    assert store.register_version("sma", code=CODE, params=dict(reversed(params.items()))) == mixed
    # Numbering is per strategy.
    assert store.register_version("rsi", code=CODE, params={"n": 10}) == 1

    versions = store.versions("sma")
    assert [record.version for record in versions] == [1, 2, 3, 4]
    by_number = {record.version: record for record in versions}
    assert by_number[2].parent_version == first
    assert by_number[2].code == CODE + "# tweak\n"
    assert by_number[2].code_hash == code_hash(CODE + "# tweak\n")
    assert by_number[3].source == "params"
    assert by_number[3].params == {"n": 20}
    assert count(store, "strategy_versions") == 5


def test_code_hash_is_sha256_hex_of_the_exact_text() -> None:
    digest = code_hash(CODE)
    assert len(digest) == 64
    assert int(digest, 16) >= 0
    assert code_hash(CODE) == digest
    assert code_hash(CODE + " ") != digest


def test_versions_carry_their_newest_plain_run(store: ResultStore) -> None:
    v1 = store.register_version("sma", code=CODE, params={})
    v2 = store.register_version("sma", code=CODE + "#2\n", params={})
    store.record_run("sma", succeeded(sharpe_ratio=0.5), version=v1, dataset_hash=None, dataset_name=None)
    newest = store.record_run("sma", succeeded(sharpe_ratio=0.7), version=v1, dataset_hash=None, dataset_name=None)
    # Optimizer trials run other parameters, so they do not stand for the version.
    store.record_run(
        "sma", succeeded(sharpe_ratio=9.0), version=v1, dataset_hash=None, dataset_name=None, run_kind="trial"
    )
    records = {record.version: record for record in store.versions("sma")}
    latest = records[v1].latest_run
    assert latest is not None
    assert latest.id == newest
    assert latest.sharpe_ratio == 0.7
    assert records[v2].latest_run is None
    assert store.versions("unknown") == []


# --- Runs -----------------------------------------------------------------------------------------


def test_record_run_for_each_status(store: ResultStore) -> None:
    version = store.register_version("sma", code=CODE, params={"n": 10})
    ok_stats = {
        "return_pct": 12.5,
        "sharpe_ratio": float("nan"),
        "max_drawdown_pct": -7.25,
        "win_rate_pct": 55.0,
        "num_trades": 8,
        "sortino_ratio": float("inf"),
        "nested": {"values": [1.0, float("-inf"), float("nan")]},
    }
    ok = succeeded(**ok_stats)
    ok.peak_memory_bytes = 5 * 2**30  # beyond a 32-bit integer
    ok.stdout_tail = "bought\x00sold"
    ok.params = {"n": 10}
    ok_id = store.record_run(
        "sma", ok, version=version, dataset_hash="d" * 64, dataset_name="BTC-USD-15m", labels={"ci": "yes"}
    )
    idle = RunOutcome(
        status=Status.NO_TRADES,
        stats={"return_pct": 0.0, "sharpe_ratio": float("nan"), "num_trades": 0, "win_rate_pct": float("nan")},
    )
    idle_id = store.record_run("sma", idle, version=version, dataset_hash=None, dataset_name=None)
    error = RunError(type=FailureClass.RUNTIME_ERROR, message="division by zero", line=12, detail="ZeroDivisionError")
    failed_id = store.record_run(
        "sma", RunOutcome.failed(error, stderr_tail="Traceback"), version=version, dataset_hash=None, dataset_name=None
    )

    stored = store.get_run(ok_id)
    assert stored is not None
    assert stored.status == "succeeded"
    assert stored.total_return == ok_stats["return_pct"]
    assert stored.max_drawdown == ok_stats["max_drawdown_pct"]
    assert stored.win_rate == ok_stats["win_rate_pct"]
    assert stored.num_trades == ok_stats["num_trades"]
    assert stored.sharpe_ratio is None
    assert stored.stats["sharpe_ratio"] is None
    assert stored.stats["sortino_ratio"] is None
    assert stored.stats["nested"] == {"values": [1.0, None, None]}
    assert stored.code_hash == code_hash(CODE)  # taken from the registered version
    assert stored.peak_memory_bytes == ok.peak_memory_bytes
    assert "\x00" not in stored.stdout_tail
    assert stored.stdout_tail.startswith("bought")
    assert stored.dataset_hash == "d" * 64
    assert stored.dataset_name == "BTC-USD-15m"
    assert stored.labels == {"ci": "yes"}
    assert stored.params == {"n": 10}
    assert stored.mode == "class"
    assert stored.sample == "full"
    assert stored.run_kind == "run"
    assert abs(stored.created_at - datetime.now(UTC)) < timedelta(minutes=5)
    for token in ("NaN", "Infinity"):
        assert token not in raw_json(store, "stats", ok_id)

    idle_stored = store.get_run(idle_id)
    assert idle_stored is not None
    assert (idle_stored.status, idle_stored.num_trades, idle_stored.win_rate) == ("no_trades", 0, None)
    assert idle_stored.error_type is None

    failed_stored = store.get_run(failed_id)
    assert failed_stored is not None
    assert failed_stored.status == "failed"
    assert failed_stored.error_type == "runtime_error"
    assert failed_stored.error_message == error.message
    assert failed_stored.error_line == error.line
    assert failed_stored.error_detail == error.detail
    assert failed_stored.stderr_tail == "Traceback"
    assert failed_stored.total_return is None
    assert store.get_run(failed_id + 1000) is None


def test_record_run_rejects_unknown_sample_without_writing(store: ResultStore) -> None:
    with pytest.raises(StoreError, match="sample"):
        store.record_run("sma", succeeded(), version=1, dataset_hash=None, dataset_name=None, sample="oos")
    assert count(store, "backtest_results") == 0


def _seed_runs(store: ResultStore) -> dict[str, int]:
    """Runs across two strategies and all statuses; returns ids by a short label."""
    ids: dict[str, int] = {}

    def add(label: str, name: str, outcome: RunOutcome) -> None:
        ids[label] = store.record_run(name, outcome, version=1, dataset_hash=None, dataset_name=None)

    add("low", "sma", succeeded(sharpe_ratio=0.2, return_pct=30.0, max_drawdown_pct=-20.0, profit_factor=1.1))
    add("high", "sma", succeeded(sharpe_ratio=1.4, return_pct=10.0, max_drawdown_pct=-5.0, profit_factor="n/a"))
    add("nan", "sma", succeeded(sharpe_ratio=float("nan"), return_pct=5.0, profit_factor=2.5))
    add("idle", "sma", RunOutcome(status=Status.NO_TRADES, stats={"sharpe_ratio": None, "num_trades": 0}))
    error = RunError(type=FailureClass.TIMEOUT, message="ran past 60 s")
    # A failed run never ranks, whatever figures it carries.
    add("failed", "sma", RunOutcome.failed(error, stats={"sharpe_ratio": 99.0, "profit_factor": 99.0}))
    add("other", "rsi", succeeded(sharpe_ratio=5.0, return_pct=1.0, profit_factor=0.5))
    return ids


def test_list_runs_filters_and_orders(store: ResultStore) -> None:
    ids = _seed_runs(store)

    newest_first = [run.id for run in store.list_runs()]
    assert newest_first == sorted(ids.values(), reverse=True)
    assert {run.strategy_name for run in store.list_runs(name="rsi")} == {"rsi"}
    assert [run.id for run in store.list_runs(status="failed")] == [ids["failed"]]
    assert [run.id for run in store.list_runs(name="sma", status="no_trades")] == [ids["idle"]]
    assert len(store.list_runs(limit=2)) == 2

    by_sharpe = [run.id for run in store.list_runs(name="sma", best_by="sharpe_ratio")]
    # Runs without a value come last, newest first among themselves.
    assert by_sharpe == [ids["high"], ids["low"], ids["idle"], ids["nan"]]
    assert [run.id for run in store.list_runs(best_by="sharpe_ratio", limit=1)] == [ids["other"]]
    by_return = [run.id for run in store.list_runs(name="sma", best_by="return_pct")]
    assert by_return[:3] == [ids["low"], ids["high"], ids["nan"]]
    # The shallowest (least negative) drawdown is the best one.
    by_drawdown = [run.id for run in store.list_runs(name="sma", best_by="max_drawdown_pct")]
    assert by_drawdown[:2] == [ids["high"], ids["low"]]
    # A key without a seed column is read from the stats JSON; text values rank with the missing ones.
    by_factor = [run.id for run in store.list_runs(best_by="profit_factor")]
    assert by_factor[:3] == [ids["nan"], ids["low"], ids["other"]]
    assert ids["failed"] not in by_factor
    assert by_factor[3:] == [ids["idle"], ids["high"]]


def test_best_by_sorts_the_same_in_python(store: ResultStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """The fallback for backends without known JSON functions ranks exactly as the SQL does."""
    _seed_runs(store)
    keys = ["profit_factor", "sharpe_ratio", "return_pct", "missing_key"]
    in_sql = {key: [run.id for run in store.list_runs(best_by=key)] for key in keys}
    monkeypatch.setattr(repository, "_stat_sort_key", lambda dialect, key: None)
    in_python = {key: [run.id for run in store.list_runs(best_by=key)] for key in keys}
    assert in_python == in_sql
    assert [run.id for run in store.list_runs(best_by="sharpe_ratio", limit=2)] == in_sql["sharpe_ratio"][:2]


def test_list_runs_rejects_unknown_status(store: ResultStore) -> None:
    with pytest.raises(StoreError, match="succeeded"):
        store.list_runs(status="done")


# --- Optimization ---------------------------------------------------------------------------------


def test_lineage_in_recorded_order(store: ResultStore) -> None:
    parent = store.register_version("sma", code=CODE, params={"n": 10})
    child = store.register_version("sma", code=CODE, params={"n": 14}, parent_version=parent, source="params")
    grandchild = store.register_version("sma", code=CODE + "#x\n", params={}, parent_version=child)
    details = {"in_sample": {"sharpe_ratio": 1.2}, "out_of_sample": {"sharpe_ratio": float("nan")}}
    first = store.record_optimization(
        strategy_name="sma",
        parent_version=parent,
        child_version=child,
        optimization_type="params",
        changes_made="n: 10 -> 14",
        performance_delta=0.3,
        details=details,
    )
    second = store.record_optimization(
        strategy_name="sma",
        parent_version=child,
        child_version=grandchild,
        optimization_type="llm_code",
        changes_made="added a trend filter",
        performance_delta=float("nan"),
    )
    store.record_optimization(
        strategy_name="rsi",
        parent_version=1,
        child_version=2,
        optimization_type="params",
        changes_made="-",
        performance_delta=None,
    )
    steps = store.lineage("sma")
    assert [step.id for step in steps] == [first, second]
    assert [(step.parent_version, step.child_version) for step in steps] == [(parent, child), (child, grandchild)]
    assert steps[0].details == {"in_sample": {"sharpe_ratio": 1.2}, "out_of_sample": {"sharpe_ratio": None}}
    assert steps[0].performance_delta == 0.3
    assert steps[1].performance_delta is None
    assert steps[1].changes_made == "added a trend filter"
    assert store.lineage("none") == []


def test_trials_and_their_runs(store: ResultStore) -> None:
    trial_ids = [
        store.record_trial(
            strategy_name="sma",
            parent_version=1,
            iteration=iteration,
            trial_number=number,
            params={"n": 5 + number},
            objective=float("nan") if number == 1 else 0.1 * number,
            status="succeeded",
            stats={"sharpe_ratio": 0.1 * number},
            sample="in_sample",
        )
        for iteration in (1, 2)
        for number in range(3)
    ]
    run_id = store.record_run(
        "sma",
        succeeded(sharpe_ratio=0.2),
        version=1,
        dataset_hash=None,
        dataset_name=None,
        sample="in_sample",
        run_kind="trial",
        trial_id=trial_ids[2],
    )
    run = store.get_run(run_id)
    assert run is not None
    assert (run.trial_id, run.run_kind, run.sample) == (trial_ids[2], "trial", "in_sample")
    second_iteration = store.trials("sma", parent_version=1, iteration=2)
    assert [trial.id for trial in second_iteration] == trial_ids[3:]
    assert [trial.objective for trial in second_iteration][1] is None
    assert second_iteration[0].params == {"n": 5}
    assert len(store.trials("sma")) == len(trial_ids)


# --- Transactions ---------------------------------------------------------------------------------


def test_failed_write_rolls_back_and_keeps_earlier_rows(store: ResultStore) -> None:
    version = store.register_version("sma", code=CODE, params={})
    kept = [
        store.record_run("sma", succeeded(sharpe_ratio=float(i)), version=version, dataset_hash=None, dataset_name=None)
        for i in range(3)
    ]

    # The INSERT reaches the database, then the connection "fails" before the commit.
    def fail_after_insert(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.lstrip().upper().startswith("INSERT INTO BACKTEST_RESULTS"):
            raise OperationalError(statement, None, Exception("simulated disk I/O error"))

    event.listen(store.engine, "after_cursor_execute", fail_after_insert)
    try:
        with pytest.raises(StoreError, match="simulated disk I/O error"):
            store.record_run("sma", succeeded(), version=version, dataset_hash=None, dataset_name=None)
    finally:
        event.remove(store.engine, "after_cursor_execute", fail_after_insert)
    assert count(store, "backtest_results") == len(kept)
    assert [run.id for run in store.list_runs()] == sorted(kept, reverse=True)

    # The database itself refuses: a trial that does not exist.
    with pytest.raises(StoreError, match="cannot record a run"):
        store.record_run("sma", succeeded(), version=version, dataset_hash=None, dataset_name=None, trial_id=4242)
    assert count(store, "backtest_results") == len(kept)

    # A version insert that fails leaves no half-registered version behind.
    def fail_version_insert(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.lstrip().upper().startswith("INSERT INTO STRATEGY_VERSIONS"):
            raise OperationalError(statement, None, Exception("simulated crash"))

    event.listen(store.engine, "after_cursor_execute", fail_version_insert)
    try:
        with pytest.raises(StoreError, match="simulated crash"):
            store.register_version("sma", code=CODE + "#new\n", params={})
    finally:
        event.remove(store.engine, "after_cursor_execute", fail_version_insert)
    assert [record.version for record in store.versions("sma")] == [version]

    # And the store is still usable afterwards.
    store.record_run("sma", succeeded(), version=version, dataset_hash=None, dataset_name=None)
    assert count(store, "backtest_results") == len(kept) + 1


# --- Concurrency ----------------------------------------------------------------------------------

_WORKER = textwrap.dedent(
    """
    import json, os, sys, time
    from rbi.outcome import RunOutcome, Status
    from rbi.store import ResultStore

    url, code, rounds, barrier = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    store = ResultStore(url)
    open(os.path.join(barrier, f"ready-{os.getpid()}"), "w").close()
    while not os.path.exists(os.path.join(barrier, "go")):
        time.sleep(0.005)
    # Every worker starts on an empty database: migrations must settle among themselves too.
    store.migrate()
    versions = []
    for i in range(rounds):
        version = store.register_version("race", code=f"{code}# round {i}\\n", params={"p": 1})
        outcome = RunOutcome(status=Status.SUCCEEDED, stats={"sharpe_ratio": float(i)})
        store.record_run("race", outcome, version=version, dataset_hash=None, dataset_name=None)
        versions.append(version)
    print(json.dumps(versions))
    """
)


def _race(url: str, codes: list[str], rounds: int, barrier: Path) -> list[list[int]]:
    barrier.mkdir()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", _WORKER, url, code, str(rounds), str(barrier)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for code in codes
    ]
    deadline = time.monotonic() + 120
    while len(list(barrier.glob("ready-*"))) < len(workers):
        assert time.monotonic() < deadline, "workers did not start"
        assert all(worker.poll() is None for worker in workers), [w.communicate() for w in workers]
        time.sleep(0.01)
    (barrier / "go").touch()
    results = []
    for worker in workers:
        out, err = worker.communicate(timeout=120)
        assert worker.returncode == 0, err
        results.append(json.loads(out))
    return results


_MIGRATOR = textwrap.dedent(
    """
    import os, sys, time
    from rbi.store import ResultStore

    home, rounds, barrier = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    open(os.path.join(barrier, f"ready-{os.getpid()}"), "w").close()
    stores = [ResultStore(f"sqlite:///{home}/{r}/rbi.db") for r in range(rounds)]
    for r, store in enumerate(stores):
        while not os.path.exists(os.path.join(barrier, f"go-{r}")):
            time.sleep(0.001)
        # Connect before anything else so that the workers' first connections collide.
        store.engine.connect().close()
        store.migrate()
        store.close()
        open(os.path.join(barrier, f"done-{r}-{os.getpid()}"), "w").close()
    """
)


@pytest.mark.slow
def test_processes_opening_a_fresh_sqlite_file_at_once_all_migrate(tmp_path: Path) -> None:
    # Each round, every worker opens and migrates the same brand-new file at the same moment: the
    # first connections to a file race to switch it to WAL, which SQLite does not queue on its own.
    workers_count, rounds = 6, 8
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    args = [sys.executable, "-c", _MIGRATOR, str(tmp_path / "home"), str(rounds), str(barrier)]
    workers = [
        subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
        for _ in range(workers_count)
    ]

    def wait_for(pattern: str) -> None:
        while len(list(barrier.glob(pattern))) < workers_count:
            # A worker that failed never reaches the barrier; the others would wait for it forever.
            failed = [worker.communicate()[1] for worker in workers if worker.poll() not in (None, 0)]
            assert not failed, failed
            time.sleep(0.005)

    try:
        wait_for("ready-*")
        for r in range(rounds):
            (barrier / f"go-{r}").touch()
            wait_for(f"done-{r}-*")
    except BaseException:
        for worker in workers:
            worker.kill()
        raise
    for worker in workers:
        _, err = worker.communicate(timeout=120)
        assert worker.returncode == 0, err
    for r in range(rounds):
        with ResultStore(f"sqlite:///{tmp_path / 'home' / str(r) / 'rbi.db'}") as store:
            assert store.current_revision() == ResultStore.head_revision()


@pytest.mark.slow
def test_parallel_workers_register_and_record(db_url: str, tmp_path: Path) -> None:
    # Pairs of workers register the same codes at the same moments, on a database nobody migrated yet.
    codes = [CODE, CODE + "# variant\n"] * 2
    rounds = 8
    got = _race(db_url, codes, rounds, tmp_path / "barrier")
    distinct_codes = len(set(codes))
    assert sorted({v for versions in got for v in versions}) == list(range(1, distinct_codes * rounds + 1))
    by_code: dict[str, list[int]] = {}
    for code, versions in zip(codes, got, strict=True):
        assert by_code.setdefault(code, versions) == versions
    with ResultStore(db_url) as store:
        assert len(store.versions("race")) == distinct_codes * rounds
        assert count(store, "backtest_results") == len(codes) * rounds


def test_sqlite_waits_for_a_rival_switching_a_fresh_file_to_wal(tmp_path: Path) -> None:
    # A rival's `PRAGMA journal_mode = WAL` on a fresh file holds the rollback journal's write lock
    # while it writes the header. Our own switch then asks for that lock while holding a read lock, and
    # SQLite answers SQLITE_BUSY at once instead of calling the busy handler (waiting could deadlock).
    path = tmp_path / "rbi.db"
    rival = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        rival.execute("BEGIN IMMEDIATE")
        rival.execute("CREATE TABLE rival (x)")
        # Released later, from another thread: the store must wait for it, not fail.
        release = threading.Timer(0.3, rival.execute, ["COMMIT"])
        release.start()
        try:
            with ResultStore(f"sqlite:///{path}") as store:
                store.migrate()
                assert store.current_revision() == ResultStore.head_revision()
                with store.engine.connect() as connection:
                    assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        finally:
            release.join()
    finally:
        rival.close()


@pytest.mark.postgres
def test_register_version_when_a_rival_commits_inside_our_transaction(empty_postgres_url: str) -> None:
    """The races of parallel workers, made deterministic: a rival commits at a chosen statement of ours."""
    with ResultStore(empty_postgres_url) as ours, ResultStore(empty_postgres_url) as rival:
        ours.migrate()
        # (code the rival registers, how many of our reads of strategy_versions it waits for)
        plan: list[tuple[str, int]] = []
        reads: list[str] = []

        def rival_commits(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
            normalised = statement.lstrip().upper()
            if not plan or "STRATEGY_VERSIONS" not in normalised:
                return
            code, after_reads = plan[0]
            is_insert = normalised.startswith("INSERT")
            if normalised.startswith("SELECT"):
                reads.append(statement)
            if is_insert or len(reads) > after_reads:
                plan.pop(0)
                reads.clear()
                rival.register_version("sma", code=code, params={})

        event.listen(ours.engine, "before_cursor_execute", rival_commits)
        try:
            # Between our reads and our insert, the rival takes the number we chose: ours takes the next.
            plan.append((CODE + "# rival\n", 99))
            assert ours.register_version("sma", code=CODE + "# ours\n", params={}) == 2
            # Same, but the rival registers the very code that we register: ours reuses its number.
            plan.append((CODE, 99))
            assert ours.register_version("sma", code=CODE, params={}) == 3
            # The rival registers our code between our first and second read: still no duplicate.
            plan.append((CODE + "# both\n", 1))
            assert ours.register_version("sma", code=CODE + "# both\n", params={}) == 4
        finally:
            event.remove(ours.engine, "before_cursor_execute", rival_commits)
        codes = [record.code for record in ours.versions("sma")]
        assert codes == [CODE + "# rival\n", CODE + "# ours\n", CODE, CODE + "# both\n"]


# --- Dead databases -------------------------------------------------------------------------------


def test_unwritable_sqlite_path(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    url = f"sqlite:///{blocker / 'sub' / 'rbi.db'}"
    with pytest.raises(StoreError, match="cannot create directory") as caught:
        ResultStore(url).migrate()
    assert url in str(caught.value)


@pytest.mark.skipif(not Path("/proc/self").exists(), reason="needs Linux /proc")
def test_sqlite_file_that_cannot_be_created() -> None:
    # Not even root may create files in /proc.
    with pytest.raises(StoreError, match="unable to open database file"):
        ResultStore("sqlite:////proc/rbi.db").migrate()


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
def test_sqlite_in_read_only_directory(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        with pytest.raises(StoreError, match="results database"):
            ResultStore(f"sqlite:///{locked / 'rbi.db'}").migrate()
    finally:
        locked.chmod(0o700)


def test_corrupt_sqlite_file(tmp_path: Path) -> None:
    path = tmp_path / "rbi.db"
    path.write_bytes(b"this is not a database, just text " * 200)
    with pytest.raises(StoreError, match="not a database") as caught:
        ResultStore(f"sqlite:///{path}").migrate()
    assert str(path) in str(caught.value)


def test_invalid_url_or_missing_driver() -> None:
    with pytest.raises(StoreError, match="URL"):
        ResultStore("not a url at all")
    with pytest.raises(StoreError, match=r"mysql://u:\*\*\*@db.example/rbi: cannot open"):
        ResultStore("mysql://u:secret@db.example/rbi")


def test_dead_postgres_fails_fast_with_masked_password() -> None:
    url = "postgresql+psycopg://rbi:hunter2@127.0.0.1:1/rbi"
    started = time.monotonic()
    with pytest.raises(StoreError) as caught:
        ResultStore(url).migrate()
    assert time.monotonic() - started < 5
    message = str(caught.value)
    assert "hunter2" not in message
    assert "postgresql+psycopg://rbi:***@127.0.0.1:1/rbi" in message
    assert "Connection refused" in message


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A port that accepts TCP connections and then never answers, like a hung server or a firewall."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        yield listener.getsockname()[1]


@pytest.mark.slow
def test_hung_postgres_times_out(silent_server: int) -> None:
    errors: list[BaseException] = []

    def attempt() -> None:
        try:
            ResultStore(f"postgresql://rbi:pw@127.0.0.1:{silent_server}/rbi").list_runs()
        except BaseException as exc:
            errors.append(exc)

    # A daemon thread, so that a missing timeout fails this test instead of hanging the session.
    worker = threading.Thread(target=attempt, daemon=True)
    worker.start()
    # connect_timeout is 5 s; without it libpq would wait on the silent socket indefinitely.
    worker.join(timeout=15)
    assert not worker.is_alive(), "connecting to a silent server did not time out"
    assert len(errors) == 1
    assert isinstance(errors[0], StoreError)
    assert "timeout" in str(errors[0]).lower()


@pytest.mark.postgres
def test_wrong_postgres_password_is_masked(postgres_url: str) -> None:
    from sqlalchemy.engine import make_url

    wrong = make_url(postgres_url).set(password="not-the-password")
    with pytest.raises(StoreError, match="password authentication failed") as caught:
        ResultStore(wrong.render_as_string(hide_password=False)).migrate()
    assert "not-the-password" not in str(caught.value)


# --- Configuration and pure helpers ---------------------------------------------------------------


def test_default_url(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("RBI_DB_URL", "postgresql+psycopg://u@h/db")
    assert ResultStore.default_url() == "postgresql+psycopg://u@h/db"
    monkeypatch.delenv("RBI_DB_URL")
    monkeypatch.setenv("RBI_HOME", str(tmp_path / "rbi-home"))
    assert ResultStore.default_url() == f"sqlite:///{tmp_path / 'rbi-home' / 'rbi.db'}"
    monkeypatch.delenv("RBI_HOME")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert ResultStore.default_url() == f"sqlite:///{tmp_path / '.rbi' / 'rbi.db'}"
    # The default creates its directory and works.
    with ResultStore(ResultStore.default_url()) as store:
        store.migrate()
    assert (tmp_path / ".rbi" / "rbi.db").is_file()


def test_json_safe() -> None:
    value = {
        "nan": float("nan"),
        "inf": np.float64("inf"),
        "np_int": np.int64(7),
        "np_float": np.float32(0.5),
        "np_bool": np.bool_(True),
        "when": datetime(2024, 1, 2, tzinfo=UTC),
        "span": timedelta(minutes=90),
        "items": (1, "x\x00y", [float("-inf")]),
        3: "int key",
    }
    safe = storable_json(value)
    assert safe == {
        "nan": None,
        "inf": None,
        "np_int": 7,
        "np_float": 0.5,
        "np_bool": True,
        "when": "2024-01-02T00:00:00+00:00",
        "span": 5400.0,
        "items": [1, "x\ufffdy", [None]],
        "3": "int key",
    }
    assert type(safe["np_int"]) is int
    json.dumps(safe, allow_nan=False)
    assert not any(isinstance(v, float) and not math.isfinite(v) for v in safe.values())
