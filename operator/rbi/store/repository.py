"""`ResultStore`: the one way into the results database.

Callers get frozen dataclasses back, never ORM objects, so no session leaks out of this module. Every
write is one transaction; every database failure (unreachable server, unwritable or corrupt file,
refused write) becomes a `StoreError` whose message names the database with its password masked.
"""

from __future__ import annotations

import hashlib
import json
import math
import numbers
import os
import random
import sqlite3
import time
import weakref
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy import ColumnElement, Connection, Engine, case, create_engine, event, func, select, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, IntegrityError, SQLAlchemyError, StatementError
from sqlalchemy.orm import Session, sessionmaker

from rbi.errors import StoreError
from rbi.outcome import RunOutcome, Status
from rbi.store.models import (
    IDEA_STATUSES,
    LLM_OUTCOMES,
    RUN_KINDS,
    SAMPLES,
    BacktestResult,
    LlmCall,
    LoopIdea,
    OptimizationHistory,
    OptimizationRun,
    OptimizationTrial,
    StrategyVersion,
    utcnow,
)

_MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
_CONNECT_TIMEOUT_S = 5
# Parallel optimizer workers queue on SQLite's single write lock; a backtest write is milliseconds long.
_SQLITE_BUSY_TIMEOUT_S = 30
_REGISTER_ATTEMPTS = 8
# Any constant works; it only has to be the same in every process that migrates this database.
_PG_MIGRATION_LOCK = 0x7262_6930
_WRITE_OPTION = "rbi_write"

# Seed columns that mirror a statistic: sorting on them needs no JSON in SQL.
_SEED_COLUMNS: dict[str, str] = {
    "return_pct": "total_return",
    "sharpe_ratio": "sharpe_ratio",
    "max_drawdown_pct": "max_drawdown",
    "win_rate_pct": "win_rate",
    "num_trades": "num_trades",
}


# --- Records handed to callers --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RunRecord:
    id: int
    strategy_name: str
    version: int
    code_hash: str
    status: str
    execution_time: float
    total_return: float | None
    sharpe_ratio: float | None
    max_drawdown: float | None
    win_rate: float | None
    num_trades: int | None
    error_type: str | None
    error_message: str | None
    error_line: int | None
    error_detail: str | None
    mode: str | None
    params: dict[str, Any]
    stats: dict[str, Any]
    dataset_hash: str | None
    dataset_name: str | None
    peak_memory_bytes: int | None
    stdout_tail: str
    stderr_tail: str
    sample: str
    run_kind: str
    trial_id: int | None
    labels: dict[str, Any] | None
    created_at: datetime


@dataclass(frozen=True, slots=True)
class VersionRecord:
    strategy_name: str
    version: int
    code: str
    code_hash: str
    params: dict[str, Any]
    parent_version: int | None
    source: str
    created_at: datetime
    # The newest plain run (not an optimizer trial) of this version, if any.
    latest_run: RunRecord | None


@dataclass(frozen=True, slots=True)
class OptimizationRecord:
    id: int
    strategy_name: str
    parent_version: int
    child_version: int
    optimization_type: str
    changes_made: str
    performance_delta: float | None
    details: dict[str, Any] | None
    created_at: datetime


@dataclass(frozen=True, slots=True)
class TrialRecord:
    id: int
    strategy_name: str
    parent_version: int
    iteration: int
    trial_number: int
    params: dict[str, Any]
    objective: float | None
    status: str
    stats: dict[str, Any]
    sample: str
    created_at: datetime


@dataclass(frozen=True, slots=True)
class LlmCallRecord:
    id: int
    agent: str
    model: str
    prompt_name: str
    prompt_version: int
    attempt: int
    prompt_tokens: int
    completion_tokens: int
    cost: float | None
    outcome: str
    error_kind: str | None
    error_message: str | None
    duration_seconds: float
    strategy_name: str | None
    version: int | None
    idea_key: str | None
    created_at: datetime


@dataclass(frozen=True, slots=True)
class IdeaRecord:
    id: int
    idea_key: str
    idea: str
    strategy_name: str | None
    stage: str
    status: str
    attempts: int
    failure_class: str | None
    failure_message: str | None
    research: dict[str, Any] | None
    code: str | None
    version: int | None
    best_version: int | None
    best: dict[str, Any] | None
    created_at: datetime
    updated_at: datetime


# Fields of a loop idea that `update_idea` may set.
_IDEA_FIELDS = frozenset({"strategy_name", "stage", "status", "attempts", "failure_class", "failure_message",
                          "research", "code", "version", "best_version", "best"})


# --- Pure helpers ---------------------------------------------------------------------------------


def code_hash(code: str) -> str:
    """The identity of a strategy's code: sha256 of its UTF-8 text, in hex."""
    return hashlib.sha256(code.encode("utf-8")).hexdigest()


def clean_text(value: str) -> str:
    """Text that both backends accept: PostgreSQL rejects NUL, and no driver encodes lone surrogates."""
    value = value.replace("\x00", "\ufffd")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        value = value.encode("utf-8", "backslashreplace").decode("utf-8")
    return value


def storable_json(value: Any) -> Any:
    """`value` as strict JSON data that both backends accept: NaN and infinities become None.

    `rbi.stats.json_safe` already cleans statistics where they are made; this is the store's own last
    line, for any caller, and needs neither numpy nor pandas. Strict JSON has no NaN (a run without
    trades has a NaN Sharpe ratio), and PostgreSQL rejects it outright.
    """
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str):
        return clean_text(value)
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return _finite(value)
    if isinstance(value, Mapping):
        return {clean_text(str(key)): storable_json(item) for key, item in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [storable_json(item) for item in value]
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, timedelta):
        return value.total_seconds()
    item = getattr(value, "item", None)
    if callable(item):
        # numpy and pandas scalars: unwrap to the Python scalar, then clean that.
        try:
            return storable_json(item())
        except (TypeError, ValueError):
            pass
    return clean_text(str(value))


def _finite(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _whole(value: Any) -> int | None:
    number = _finite(value)
    return None if number is None else int(number)


def _canonical(params: Any) -> str:
    return json.dumps(params, sort_keys=True, separators=(",", ":"))


def _aware(moment: datetime) -> datetime:
    # SQLite hands timestamps back without a zone; they were written in UTC.
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _check_one_of(what: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise StoreError(f"{what} {value!r} is not one of {', '.join(allowed)}")


# --- Engine ---------------------------------------------------------------------------------------

_ENGINES: weakref.WeakSet[Engine] = weakref.WeakSet()


def _forget_parent_connections() -> None:
    # A forked optimizer worker must not reuse its parent's sockets or SQLite handles.
    for engine in list(_ENGINES):
        engine.dispose(close=False)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_parent_connections)


def _normalise_url(url: URL) -> URL:
    # A bare postgresql:// would pick psycopg2, which rbi does not ship.
    if url.drivername in ("postgresql", "postgres"):
        return url.set(drivername="postgresql+psycopg")
    return url


def _sqlite_path(url: URL) -> Path | None:
    database = url.database
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return Path(database)


def _build_engine(url: URL) -> Engine:
    dumps = partial(json.dumps, allow_nan=False)
    backend = url.get_backend_name()
    if backend == "sqlite":
        engine = create_engine(url, json_serializer=dumps, connect_args={"timeout": _SQLITE_BUSY_TIMEOUT_S})
        event.listen(engine, "connect", _sqlite_on_connect)
        event.listen(engine, "begin", _sqlite_on_begin)
    elif backend == "postgresql":
        connect_args: dict[str, Any] = {}
        if "connect_timeout" not in url.query:
            connect_args["connect_timeout"] = _CONNECT_TIMEOUT_S
        engine = create_engine(url, json_serializer=dumps, pool_pre_ping=True, connect_args=connect_args)
    else:
        engine = create_engine(url, json_serializer=dumps, pool_pre_ping=True)
    _ENGINES.add(engine)
    return engine


def _sqlite_on_connect(dbapi_connection: Any, _record: Any) -> None:
    # pysqlite's own transaction handling skips BEGIN before DDL and cannot take the write lock up
    # front; turning it off lets `_sqlite_on_begin` emit the BEGIN that each transaction needs.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(f"PRAGMA busy_timeout = {_SQLITE_BUSY_TIMEOUT_S * 1000}")
        _sqlite_use_wal(cursor)
        cursor.execute("PRAGMA foreign_keys = ON")
    finally:
        cursor.close()


def _sqlite_use_wal(cursor: Any) -> None:
    """Put the file in WAL mode, waiting up to the busy timeout for a rival connection doing the same.

    WAL lets readers run beside the writer, so a report never stalls a worker's write. Switching a
    rollback-journal file to WAL takes the write lock while this connection holds a read lock, so when
    several processes open a fresh file at once SQLite answers SQLITE_BUSY at once to all but one,
    without calling the busy handler (waiting could deadlock). The mode is stored in the file, so only
    a file's first connections ever switch it; they retry here, and every later one only reads it.
    """
    deadline = time.monotonic() + _SQLITE_BUSY_TIMEOUT_S
    delay = 0.001
    while True:
        try:
            if cursor.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                cursor.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            # Anything but lock contention (a read-only or corrupt file) surfaces as it is.
            if exc.sqlite_errorcode & 0xFF != sqlite3.SQLITE_BUSY or time.monotonic() + delay > deadline:
                raise
        time.sleep(delay * random.uniform(0.5, 1.5))
        delay = min(delay * 2, 0.1)


def _sqlite_on_begin(connection: Connection) -> None:
    # A write transaction takes the lock at BEGIN: a deferred one that reads first and then writes
    # can fail with SQLITE_BUSY at once, without the busy timeout, when another process wrote between.
    write = connection.get_execution_options().get(_WRITE_OPTION, False)
    connection.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")


def _alembic_config() -> Config:
    config = Config()
    # ConfigParser interpolates '%', which a path may contain.
    config.set_main_option("script_location", str(_MIGRATIONS_DIR).replace("%", "%%"))
    config.set_main_option("path_separator", "os")
    return config


# --- The store ------------------------------------------------------------------------------------


class ResultStore:
    """Strategy versions, runs, trials and lineage in one SQL database (SQLite or PostgreSQL)."""

    def __init__(self, url: str) -> None:
        try:
            parsed = _normalise_url(make_url(url))
        except ArgumentError as exc:
            raise StoreError(f"results database URL is not valid: {exc}") from exc
        self._url = parsed
        self.display_url = parsed.render_as_string(hide_password=True)
        path = _sqlite_path(parsed)
        if path is not None:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StoreError(
                    f"results database {self.display_url}: cannot create directory {path.parent}: {exc.strerror or exc}"
                ) from exc
        with self._guard("open"):
            self._engine = _build_engine(parsed)
        self._read_sessions = sessionmaker(self._engine, expire_on_commit=False)
        self._write_sessions = sessionmaker(
            self._engine.execution_options(**{_WRITE_OPTION: True}), expire_on_commit=False
        )

    @classmethod
    def default_url(cls) -> str:
        """`RBI_DB_URL`, else a SQLite file under `RBI_HOME` (default ~/.rbi)."""
        explicit = os.environ.get("RBI_DB_URL")
        if explicit:
            return explicit
        home = Path(os.environ.get("RBI_HOME") or Path.home() / ".rbi").expanduser()
        return f"sqlite:///{home.resolve() / 'rbi.db'}"

    @property
    def engine(self) -> Engine:
        """The underlying engine, for tooling and tests; application code uses the methods."""
        return self._engine

    def close(self) -> None:
        self._engine.dispose()

    def __enter__(self) -> ResultStore:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # --- Schema -----------------------------------------------------------------------------------

    def migrate(self) -> None:
        """Bring the schema to the newest revision; a no-op when it is there already."""
        config = _alembic_config()
        script = ScriptDirectory.from_config(config)
        with (
            self._guard("migrate the schema"),
            self._engine.execution_options(**{_WRITE_OPTION: True}).begin() as connection,
        ):
            if connection.dialect.name == "postgresql":
                # Two processes starting at once must not both create the tables.
                connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_MIGRATION_LOCK})
            current = MigrationContext.configure(connection).get_current_revision()
            known = {revision.revision for revision in script.walk_revisions()}
            if current is not None and current not in known:
                raise StoreError(
                    f"results database {self.display_url} is at schema revision {current!r}, which this "
                    "version of rbi does not know; a newer rbi wrote it, so upgrade rbi"
                )
            config.attributes["connection"] = connection
            command.upgrade(config, "head")

    def current_revision(self) -> str | None:
        with self._guard("read the schema revision"), self._engine.connect() as connection:
            return MigrationContext.configure(connection).get_current_revision()

    @staticmethod
    def head_revision() -> str:
        head = ScriptDirectory.from_config(_alembic_config()).get_current_head()
        if head is None:
            raise StoreError("the packaged migrations have no head revision")
        return head

    # --- Versions ---------------------------------------------------------------------------------

    def register_version(
        self,
        strategy_name: str,
        *,
        code: str,
        params: dict[str, Any],
        parent_version: int | None = None,
        source: str = "user",
    ) -> int:
        """The version number of this code with these parameters, registering it when it is new."""
        digest = code_hash(code)
        safe_params = storable_json(params)
        with self._guard(f"register a version of {strategy_name!r}"):
            for attempt in range(1, _REGISTER_ATTEMPTS + 1):
                try:
                    with self._writing() as session:
                        return self._register(
                            session,
                            strategy_name=strategy_name,
                            code=clean_text(code),
                            digest=digest,
                            params=safe_params,
                            parent_version=parent_version,
                            source=source,
                        )
                except IntegrityError:
                    # Another process took this version number between our read and our insert;
                    # the next attempt sees its row and either reuses it or takes the next number.
                    if attempt == _REGISTER_ATTEMPTS:
                        raise
                    time.sleep(random.uniform(0.005, 0.05) * attempt)
        raise AssertionError("unreachable")  # pragma: no cover

    @staticmethod
    def _register(
        session: Session,
        *,
        strategy_name: str,
        code: str,
        digest: str,
        params: dict[str, Any],
        parent_version: int | None,
        source: str,
    ) -> int:
        # Read the highest number BEFORE looking for the same code. A version v is only ever written by a
        # transaction that saw v - 1 committed, so once we have seen the highest number n committed,
        # every version up to n is committed and the next statement sees the same code if any of them
        # holds it. In the other order, a rival committing between the two reads makes a duplicate.
        latest = session.scalar(
            select(func.max(StrategyVersion.version)).where(StrategyVersion.strategy_name == strategy_name)
        )
        same_code = session.scalars(
            select(StrategyVersion)
            .where(StrategyVersion.strategy_name == strategy_name, StrategyVersion.code_hash == digest)
            .order_by(StrategyVersion.version)
        )
        wanted = _canonical(params)
        for existing in same_code:
            if _canonical(existing.params) == wanted:
                return existing.version
        version = (latest or 0) + 1
        session.add(
            StrategyVersion(
                strategy_name=strategy_name,
                version=version,
                code=code,
                code_hash=digest,
                params=params,
                parent_version=parent_version,
                source=source,
            )
        )
        session.flush()
        return version

    def versions(self, strategy_name: str) -> list[VersionRecord]:
        """Every version of a strategy, oldest first, each with its newest run."""
        with self._guard(f"read the versions of {strategy_name!r}"), self._reading() as session:
            rows = session.scalars(
                select(StrategyVersion)
                .where(StrategyVersion.strategy_name == strategy_name)
                .order_by(StrategyVersion.version)
            ).all()
            newest_ids = (
                select(func.max(BacktestResult.id))
                .where(BacktestResult.strategy_name == strategy_name, BacktestResult.run_kind == "run")
                .group_by(BacktestResult.version)
            )
            runs = session.scalars(select(BacktestResult).where(BacktestResult.id.in_(newest_ids))).all()
            by_version = {run.version: _run_record(run) for run in runs}
            return [
                VersionRecord(
                    strategy_name=row.strategy_name,
                    version=row.version,
                    code=row.code,
                    code_hash=row.code_hash,
                    params=row.params,
                    parent_version=row.parent_version,
                    source=row.source,
                    created_at=_aware(row.created_at),
                    latest_run=by_version.get(row.version),
                )
                for row in rows
            ]

    # --- Runs -------------------------------------------------------------------------------------

    def record_run(
        self,
        strategy_name: str,
        outcome: RunOutcome,
        *,
        version: int,
        dataset_hash: str | None,
        dataset_name: str | None,
        sample: str = "full",
        run_kind: str = "run",
        trial_id: int | None = None,
        labels: dict[str, Any] | None = None,
    ) -> int:
        """Store one run with all its statistics; returns the new row's id."""
        _check_one_of("sample", sample, SAMPLES)
        _check_one_of("run kind", run_kind, RUN_KINDS)
        status = Status(outcome.status)
        stats: dict[str, Any] = storable_json(outcome.stats)
        if outcome.no_trades_reason:  # kept with the run's figures: `rbi results --json` and the dashboards read it
            stats["no_trades_reason"] = clean_text(outcome.no_trades_reason)[:500]
        error = outcome.error
        with self._guard(f"record a run of {strategy_name!r} v{version}"), self._writing() as session:
            digest = outcome.code_hash or self._known_code_hash(session, strategy_name, version)
            row = BacktestResult(
                strategy_name=strategy_name,
                version=version,
                code_hash=digest,
                execution_time=_finite(outcome.execution_time) or 0.0,
                total_return=_finite(stats.get("return_pct")),
                sharpe_ratio=_finite(stats.get("sharpe_ratio")),
                max_drawdown=_finite(stats.get("max_drawdown_pct")),
                win_rate=_finite(stats.get("win_rate_pct")),
                num_trades=_whole(stats.get("num_trades")),
                error_message=clean_text(error.message) if error else None,
                status=str(status),
                error_type=str(error.type) if error else None,
                error_line=error.line if error else None,
                error_detail=clean_text(error.detail) if error and error.detail else None,
                mode=outcome.mode,
                params=storable_json(outcome.params),
                stats=stats,
                dataset_hash=dataset_hash,
                dataset_name=clean_text(dataset_name) if dataset_name else None,
                peak_memory_bytes=outcome.peak_memory_bytes,
                stdout_tail=clean_text(outcome.stdout_tail),
                stderr_tail=clean_text(outcome.stderr_tail),
                sample=sample,
                trial_id=trial_id,
                run_kind=run_kind,
                labels=storable_json(labels) if labels is not None else None,
            )
            session.add(row)
            session.flush()
            return row.id

    @staticmethod
    def _known_code_hash(session: Session, strategy_name: str, version: int) -> str:
        digest = session.scalar(
            select(StrategyVersion.code_hash).where(
                StrategyVersion.strategy_name == strategy_name, StrategyVersion.version == version
            )
        )
        return digest or ""

    def get_run(self, run_id: int) -> RunRecord | None:
        with self._guard(f"read run {run_id}"), self._reading() as session:
            row = session.get(BacktestResult, run_id)
            return _run_record(row) if row is not None else None

    def list_runs(
        self,
        *,
        name: str | None = None,
        status: str | None = None,
        best_by: str | None = None,
        limit: int = 50,
    ) -> list[RunRecord]:
        """Runs, newest first; with `best_by` (a stat key), best first, failed runs left out.

        "Best" is the largest value, which for the negative `max_drawdown_pct` is the shallowest.
        Runs without a numeric value for the key come last.
        """
        if status is not None:
            _check_one_of("status", status, tuple(str(item) for item in Status))
        if limit < 1:
            raise StoreError(f"limit must be at least 1, not {limit}")
        query = select(BacktestResult)
        if name is not None:
            query = query.where(BacktestResult.strategy_name == name)
        if status is not None:
            query = query.where(BacktestResult.status == status)
        with self._guard("list runs"), self._reading() as session:
            if best_by is None:
                query = query.order_by(BacktestResult.created_at.desc(), BacktestResult.id.desc())
                return [_run_record(row) for row in session.scalars(query.limit(limit))]
            query = query.where(BacktestResult.status != str(Status.FAILED))
            key = _stat_sort_key(session.get_bind().dialect.name, best_by)
            if key is not None:
                query = query.order_by(key.desc().nulls_last(), BacktestResult.id.desc())
                return [_run_record(row) for row in session.scalars(query.limit(limit))]
            # A backend without JSON functions we know: correct, if slower, in Python.
            records = [_run_record(row) for row in session.scalars(query)]
        return _best_first(records, best_by)[:limit]

    # --- Optimization -----------------------------------------------------------------------------

    def record_optimization(
        self,
        *,
        strategy_name: str,
        parent_version: int,
        child_version: int,
        optimization_type: str,
        changes_made: str,
        performance_delta: float | None,
        details: dict[str, Any] | None = None,
    ) -> int:
        """Store one lineage step (parent -> child); returns its id.

        Idempotent per (parent, child, type): an optimisation rerun after a crash that
        promotes the same child again returns the existing row instead of a duplicate.
        """
        with self._guard(f"record an optimization of {strategy_name!r}"), self._writing() as session:
            existing = session.scalars(
                select(OptimizationHistory).where(
                    OptimizationHistory.strategy_name == strategy_name,
                    OptimizationHistory.parent_version == parent_version,
                    OptimizationHistory.child_version == child_version,
                    OptimizationHistory.optimization_type == optimization_type,
                )
            ).first()
            if existing is not None:
                return existing.id
            row = OptimizationHistory(
                strategy_name=strategy_name,
                parent_version=parent_version,
                child_version=child_version,
                optimization_type=optimization_type,
                changes_made=clean_text(changes_made),
                performance_delta=_finite(performance_delta),
                details=storable_json(details) if details is not None else None,
            )
            session.add(row)
            session.flush()
            return row.id

    def lineage(self, strategy_name: str) -> list[OptimizationRecord]:
        """Every optimization step of a strategy, in the order they were recorded."""
        with self._guard(f"read the lineage of {strategy_name!r}"), self._reading() as session:
            rows = session.scalars(
                select(OptimizationHistory)
                .where(OptimizationHistory.strategy_name == strategy_name)
                .order_by(OptimizationHistory.id)
            )
            return [
                OptimizationRecord(
                    id=row.id,
                    strategy_name=row.strategy_name,
                    parent_version=row.parent_version,
                    child_version=row.child_version,
                    optimization_type=row.optimization_type,
                    changes_made=row.changes_made,
                    performance_delta=row.performance_delta,
                    details=row.details,
                    created_at=_aware(row.created_at),
                )
                for row in rows
            ]

    def record_trial(
        self,
        *,
        strategy_name: str,
        parent_version: int,
        iteration: int,
        trial_number: int,
        params: dict[str, Any],
        objective: float | None,
        status: str,
        stats: dict[str, Any] | None = None,
        sample: str = "full",
    ) -> int:
        """Store one optimizer trial; returns its id, for `record_run(..., trial_id=)`."""
        _check_one_of("sample", sample, SAMPLES)
        with self._guard(f"record a trial of {strategy_name!r}"), self._writing() as session:
            row = OptimizationTrial(
                strategy_name=strategy_name,
                parent_version=parent_version,
                iteration=iteration,
                trial_number=trial_number,
                params=storable_json(params),
                objective=_finite(objective),
                status=status,
                stats=storable_json(stats or {}),
                sample=sample,
            )
            session.add(row)
            session.flush()
            return row.id

    def trials(
        self, strategy_name: str, *, parent_version: int | None = None, iteration: int | None = None
    ) -> list[TrialRecord]:
        """Trials of a strategy in the order they were recorded."""
        query = select(OptimizationTrial).where(OptimizationTrial.strategy_name == strategy_name)
        if parent_version is not None:
            query = query.where(OptimizationTrial.parent_version == parent_version)
        if iteration is not None:
            query = query.where(OptimizationTrial.iteration == iteration)
        with self._guard(f"read the trials of {strategy_name!r}"), self._reading() as session:
            return [
                TrialRecord(
                    id=row.id,
                    strategy_name=row.strategy_name,
                    parent_version=row.parent_version,
                    iteration=row.iteration,
                    trial_number=row.trial_number,
                    params=row.params,
                    objective=row.objective,
                    status=row.status,
                    stats=row.stats,
                    sample=row.sample,
                    created_at=_aware(row.created_at),
                )
                for row in session.scalars(query.order_by(OptimizationTrial.id))
            ]

    def record_study_trial(self, *, study: str, **fields: Any) -> int:
        """`record_trial` for a trial of an Optuna study: once only, however often a batch is replayed."""
        with self._guard(f"record a trial of {fields.get('strategy_name')!r}"), self._writing() as session:
            existing = session.scalar(
                select(OptimizationTrial.id).where(
                    OptimizationTrial.study == study,
                    OptimizationTrial.trial_number == int(fields["trial_number"]),
                )
            )
            if existing is not None:
                return int(existing)
            _check_one_of("sample", fields.get("sample", "in_sample"), SAMPLES)
            row = OptimizationTrial(
                strategy_name=fields["strategy_name"],
                parent_version=int(fields["parent_version"]),
                iteration=int(fields["iteration"]),
                trial_number=int(fields["trial_number"]),
                params=storable_json(fields["params"]),
                objective=_finite(fields.get("objective")),
                status=str(fields["status"]),
                stats=storable_json(fields.get("stats") or {}),
                sample=fields.get("sample", "in_sample"),
                study=study,
            )
            session.add(row)
            session.flush()
            return row.id

    def save_optimization_state(self, run_id: int | None, *, run_key: str, strategy_name: str,
                                state: dict[str, Any]) -> int:
        """Keep an optimisation's state machine (a new row when `run_id` is None); returns the row's id."""
        with self._guard(f"save the optimisation state of {strategy_name!r}"), self._writing() as session:
            row = session.get(OptimizationRun, run_id) if run_id is not None else None
            if row is None:
                row = OptimizationRun(run_key=run_key, strategy_name=strategy_name, stage=str(state.get("stage")),
                                      state=storable_json(state))
                session.add(row)
            else:
                row.state = storable_json(state)
                row.stage = str(state.get("stage"))
                row.updated_at = utcnow()
            session.flush()
            return row.id

    def open_optimization(self, run_key: str) -> tuple[int, dict[str, Any]] | None:
        """The newest unfinished optimisation with this key (an interrupted one, to carry on), if any."""
        with self._guard("read the optimisation state"), self._reading() as session:
            row = session.scalars(
                select(OptimizationRun)
                .where(OptimizationRun.run_key == run_key, OptimizationRun.stage != "done")
                .order_by(OptimizationRun.id.desc())
            ).first()
            return None if row is None else (row.id, dict(row.state))

    def optimization_states(self, strategy_name: str) -> list[dict[str, Any]]:
        """Every stored optimisation state of a strategy, oldest first."""
        with self._guard("read the optimisation states"), self._reading() as session:
            rows = session.scalars(
                select(OptimizationRun).where(OptimizationRun.strategy_name == strategy_name)
                .order_by(OptimizationRun.id)
            )
            return [dict(row.state) for row in rows]

    @property
    def url(self) -> str:
        """The database URL with its password, for Optuna's storage on the same database (never shown)."""
        return self._url.render_as_string(hide_password=False)

    # --- LLM calls --------------------------------------------------------------------------------

    def record_llm_call(
        self,
        *,
        agent: str,
        model: str,
        prompt_name: str,
        prompt_version: int,
        outcome: str,
        attempt: int = 1,
        prompt_tokens: int = 0,
        completion_tokens: int = 0,
        cost: float | None = None,
        error_kind: str | None = None,
        error_message: str | None = None,
        duration_seconds: float = 0.0,
        strategy_name: str | None = None,
        version: int | None = None,
        idea_key: str | None = None,
    ) -> int:
        """Store one LLM agent call; returns its id (for `attach_llm_calls` once the version exists)."""
        _check_one_of("LLM call outcome", outcome, LLM_OUTCOMES)
        with self._guard(f"record an LLM call of agent {agent!r}"), self._writing() as session:
            row = LlmCall(
                agent=agent, model=clean_text(model)[:200], prompt_name=prompt_name, prompt_version=prompt_version,
                attempt=attempt, prompt_tokens=max(0, prompt_tokens), completion_tokens=max(0, completion_tokens),
                cost=_finite(cost), outcome=outcome, error_kind=error_kind,
                error_message=clean_text(error_message) if error_message else None,
                duration_seconds=_finite(duration_seconds) or 0.0, strategy_name=strategy_name, version=version,
                idea_key=idea_key,
            )
            session.add(row)
            session.flush()
            return row.id

    def attach_llm_calls(self, call_ids: list[int], *, strategy_name: str, version: int) -> None:
        """Say which strategy version these calls produced (the version is registered after the calls)."""
        if not call_ids:
            return
        with self._guard(f"link LLM calls to {strategy_name!r} v{version}"), self._writing() as session:
            for row in session.scalars(select(LlmCall).where(LlmCall.id.in_(call_ids))):
                row.strategy_name, row.version = strategy_name, version

    def llm_calls(
        self, *, strategy_name: str | None = None, version: int | None = None, idea_key: str | None = None
    ) -> list[LlmCallRecord]:
        """LLM calls in the order they were made, optionally of one strategy (version) or one idea."""
        query = select(LlmCall)
        if strategy_name is not None:
            query = query.where(LlmCall.strategy_name == strategy_name)
        if version is not None:
            query = query.where(LlmCall.version == version)
        if idea_key is not None:
            query = query.where(LlmCall.idea_key == idea_key)
        with self._guard("read LLM calls"), self._reading() as session:
            return [_llm_call_record(row) for row in session.scalars(query.order_by(LlmCall.id))]

    # --- The hands-free loop's ideas ----------------------------------------------------------------

    def start_idea(self, idea_key: str, *, idea: str) -> IdeaRecord:
        """The stored state of an idea, creating it (pending) when it is new. Safe to call concurrently."""
        with self._guard(f"register idea {idea_key}"):
            for _attempt in range(_REGISTER_ATTEMPTS):
                existing = self.get_idea(idea_key)
                if existing is not None:
                    return existing
                try:
                    with self._writing() as session:
                        row = LoopIdea(idea_key=idea_key, idea=clean_text(idea), stage="queued", status="pending",
                                       attempts=0)
                        session.add(row)
                        session.flush()
                        return _idea_record(row)
                except IntegrityError:
                    continue  # another process registered it first: read theirs
        raise StoreError(f"results database {self.display_url}: cannot register idea {idea_key}")

    def get_idea(self, idea_key: str) -> IdeaRecord | None:
        with self._guard(f"read idea {idea_key}"), self._reading() as session:
            row = session.scalars(select(LoopIdea).where(LoopIdea.idea_key == idea_key)).first()
            return _idea_record(row) if row is not None else None

    def update_idea(self, idea_key: str, **fields: Any) -> IdeaRecord:
        """Set some of an idea's fields (stage, status, attempts, checkpoints, best figures) in one transaction."""
        unknown = set(fields) - _IDEA_FIELDS
        if unknown:
            raise ValueError(f"unknown idea field(s): {sorted(unknown)}")
        if "status" in fields:
            _check_one_of("idea status", fields["status"], IDEA_STATUSES)
        with self._guard(f"update idea {idea_key}"), self._writing() as session:
            row = session.scalars(select(LoopIdea).where(LoopIdea.idea_key == idea_key)).first()
            if row is None:
                raise StoreError(f"results database {self.display_url}: no idea {idea_key} to update")
            for name, value in fields.items():
                if name in ("research", "best") and value is not None:
                    value = storable_json(value)
                elif isinstance(value, str):
                    value = clean_text(value)
                setattr(row, name, value)
            row.updated_at = utcnow()
            session.flush()
            return _idea_record(row)

    def ideas(self, *, status: str | None = None) -> list[IdeaRecord]:
        """Every idea the loop has seen, in the order it first saw them."""
        query = select(LoopIdea)
        if status is not None:
            query = query.where(LoopIdea.status == status)
        with self._guard("read the loop's ideas"), self._reading() as session:
            return [_idea_record(row) for row in session.scalars(query.order_by(LoopIdea.id))]

    # --- Sessions and errors ----------------------------------------------------------------------

    @contextmanager
    def _writing(self) -> Iterator[Session]:
        # One transaction: committed when the block ends, rolled back when anything in it raises.
        with self._write_sessions() as session, session.begin():
            yield session

    @contextmanager
    def _reading(self) -> Iterator[Session]:
        with self._read_sessions() as session:
            yield session

    @contextmanager
    def _guard(self, action: str) -> Iterator[None]:
        """Turn any database failure inside the block into a StoreError that names the database."""
        try:
            yield
        except StoreError:
            raise
        except (SQLAlchemyError, CommandError, OSError, ImportError) as exc:
            raise StoreError(f"results database {self.display_url}: cannot {action}: {self._reason(exc)}") from exc

    def _reason(self, exc: BaseException) -> str:
        cause: BaseException = exc
        if isinstance(exc, StatementError) and exc.orig is not None:
            cause = exc.orig
        lines = [line.strip() for line in str(cause).splitlines() if line.strip()]
        reason = "; ".join(lines) or type(cause).__name__
        password = self._url.password
        if password:
            reason = reason.replace(str(password), "***")
        if isinstance(exc, DBAPIError) and _is_missing_table(reason):
            reason += " (the schema is missing or old: ResultStore.migrate() brings it up to date)"
        return reason


def _is_missing_table(reason: str) -> bool:
    lowered = reason.lower()
    return "no such table" in lowered or ("relation" in lowered and "does not exist" in lowered)


def _stat_sort_key(dialect: str, key: str) -> ColumnElement[Any] | None:
    """A SQL expression for stats[key] as a number (NULL when it is not one), or None to sort in Python."""
    column = _SEED_COLUMNS.get(key, key if key in _SEED_COLUMNS.values() else None)
    if column is not None:
        return getattr(BacktestResult, column)  # type: ignore[no-any-return]
    if dialect == "sqlite" and '"' not in key:
        path = f'$."{key}"'
        return case(
            (
                func.json_type(BacktestResult.stats, path).in_(("integer", "real")),
                func.json_extract(BacktestResult.stats, path),
            ),
            else_=None,
        )
    if dialect == "postgresql":
        element = BacktestResult.stats[key]
        return case((func.json_typeof(element) == "number", element.as_float()), else_=None)
    return None


def _best_first(records: list[RunRecord], key: str) -> list[RunRecord]:
    def rank(record: RunRecord) -> tuple[bool, float, int]:
        value = _finite(record.stats.get(key))
        return (value is None, -(value or 0.0), -record.id)

    return sorted(records, key=rank)


def _run_record(row: BacktestResult) -> RunRecord:
    return RunRecord(
        id=row.id,
        strategy_name=row.strategy_name,
        version=row.version,
        code_hash=row.code_hash,
        status=row.status,
        execution_time=row.execution_time,
        total_return=row.total_return,
        sharpe_ratio=row.sharpe_ratio,
        max_drawdown=row.max_drawdown,
        win_rate=row.win_rate,
        num_trades=row.num_trades,
        error_type=row.error_type,
        error_message=row.error_message,
        error_line=row.error_line,
        error_detail=row.error_detail,
        mode=row.mode,
        params=row.params,
        stats=row.stats,
        dataset_hash=row.dataset_hash,
        dataset_name=row.dataset_name,
        peak_memory_bytes=row.peak_memory_bytes,
        stdout_tail=row.stdout_tail,
        stderr_tail=row.stderr_tail,
        sample=row.sample,
        run_kind=row.run_kind,
        trial_id=row.trial_id,
        labels=row.labels,
        created_at=_aware(row.created_at),
    )


def _llm_call_record(row: LlmCall) -> LlmCallRecord:
    return LlmCallRecord(
        id=row.id, agent=row.agent, model=row.model, prompt_name=row.prompt_name, prompt_version=row.prompt_version,
        attempt=row.attempt, prompt_tokens=row.prompt_tokens, completion_tokens=row.completion_tokens,
        cost=row.cost, outcome=row.outcome, error_kind=row.error_kind, error_message=row.error_message,
        duration_seconds=row.duration_seconds, strategy_name=row.strategy_name, version=row.version,
        idea_key=row.idea_key, created_at=_aware(row.created_at),
    )


def _idea_record(row: LoopIdea) -> IdeaRecord:
    return IdeaRecord(
        id=row.id, idea_key=row.idea_key, idea=row.idea, strategy_name=row.strategy_name, stage=row.stage,
        status=row.status, attempts=row.attempts, failure_class=row.failure_class,
        failure_message=row.failure_message, research=row.research, code=row.code, version=row.version,
        best_version=row.best_version, best=row.best, created_at=_aware(row.created_at),
        updated_at=_aware(row.updated_at),
    )
