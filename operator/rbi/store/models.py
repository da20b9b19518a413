"""The tables of the results store, as SQLAlchemy declarative models.

Column types stay portable (SQLite for a laptop, PostgreSQL for a cluster): plain `JSON`, not JSONB,
and timestamps stored in UTC. Constraint names come from one naming convention so that Alembic
migrations can refer to them by name on both backends.

The seed plan's columns of `backtest_results` and `optimization_history` keep their names and meanings;
everything else is added beside them.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING_CONVENTION: dict[str, str] = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

RUN_STATUSES: tuple[str, ...] = ("succeeded", "no_trades", "failed")
SAMPLES: tuple[str, ...] = ("full", "in_sample", "out_of_sample")
RUN_KINDS: tuple[str, ...] = ("run", "trial")


def _one_of(column: str, values: tuple[str, ...]) -> str:
    quoted = ", ".join(f"'{value}'" for value in values)
    return f"{column} IN ({quoted})"


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class StrategyVersion(Base):
    """One version of a strategy: its full code and parameters, and where it came from."""

    __tablename__ = "strategy_versions"
    __table_args__ = (
        # The retry in `register_version` relies on this constraint to settle concurrent registrations.
        UniqueConstraint("strategy_name", "version"),
        Index(None, "strategy_name", "code_hash"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    strategy_name: Mapped[str] = mapped_column(String(200))
    version: Mapped[int] = mapped_column(Integer)
    code: Mapped[str] = mapped_column(Text)
    code_hash: Mapped[str] = mapped_column(String(64))
    params: Mapped[dict[str, Any]] = mapped_column(JSON)
    parent_version: Mapped[int | None] = mapped_column(Integer, nullable=True)
    source: Mapped[str] = mapped_column(String(40))
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, server_default=text("CURRENT_TIMESTAMP")
    )


class OptimizationTrial(Base):
    """One parameter trial of an optimizer iteration, before any child version exists."""

    __tablename__ = "optimization_trials"
    __table_args__ = (
        Index(None, "strategy_name", "parent_version", "iteration"),
        Index(None, "created_at"),
        Index(None, "study", "trial_number"),
        CheckConstraint(_one_of("sample", SAMPLES), name="sample"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    strategy_name: Mapped[str] = mapped_column(String(200))
    parent_version: Mapped[int] = mapped_column(Integer)
    iteration: Mapped[int] = mapped_column(Integer)
    trial_number: Mapped[int] = mapped_column(Integer)
    params: Mapped[dict[str, Any]] = mapped_column(JSON)
    objective: Mapped[float | None] = mapped_column(Float, nullable=True)
    # Free-form on purpose: optimizers have states (pruned, ...) beyond a run's three.
    status: Mapped[str] = mapped_column(String(20), index=True)
    stats: Mapped[dict[str, Any]] = mapped_column(JSON)
    sample: Mapped[str] = mapped_column(String(20), server_default="full")
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, server_default=text("CURRENT_TIMESTAMP")
    )
    # The Optuna study (in the same database) the trial belongs to; its trial_number is the study's.
    study: Mapped[str | None] = mapped_column(String(300), nullable=True)


class OptimizationRun(Base):
    """One optimisation's state machine (rbi.optimize.machine), saved after every step."""

    __tablename__ = "optimization_runs"
    __table_args__ = (Index(None, "run_key"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_key: Mapped[str] = mapped_column(String(300))
    strategy_name: Mapped[str] = mapped_column(String(200))
    stage: Mapped[str] = mapped_column(String(40))
    state: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, server_default=text("CURRENT_TIMESTAMP")
    )
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, server_default=text("CURRENT_TIMESTAMP")
    )


class BacktestResult(Base):
    """One run of one version on one dataset; every statistic is kept in `stats`."""

    __tablename__ = "backtest_results"
    __table_args__ = (
        Index(None, "strategy_name", "created_at"),
        Index(None, "strategy_name", "version"),
        Index(None, "created_at"),
        CheckConstraint(_one_of("status", RUN_STATUSES), name="status"),
        CheckConstraint(_one_of("sample", SAMPLES), name="sample"),
        CheckConstraint(_one_of("run_kind", RUN_KINDS), name="run_kind"),
    )

    # Seed columns.
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    strategy_name: Mapped[str] = mapped_column(String(200))
    version: Mapped[int] = mapped_column(Integer)
    code_hash: Mapped[str] = mapped_column(String(64))
    execution_time: Mapped[float] = mapped_column(Float)
    total_return: Mapped[float | None] = mapped_column(Float, nullable=True)
    sharpe_ratio: Mapped[float | None] = mapped_column(Float, nullable=True)
    max_drawdown: Mapped[float | None] = mapped_column(Float, nullable=True)
    win_rate: Mapped[float | None] = mapped_column(Float, nullable=True)
    num_trades: Mapped[int | None] = mapped_column(Integer, nullable=True)
    error_message: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, server_default=text("CURRENT_TIMESTAMP")
    )

    # Added columns.
    status: Mapped[str] = mapped_column(String(20), index=True)
    error_type: Mapped[str | None] = mapped_column(String(40), nullable=True)
    error_line: Mapped[int | None] = mapped_column(Integer, nullable=True)
    error_detail: Mapped[str | None] = mapped_column(Text, nullable=True)
    mode: Mapped[str | None] = mapped_column(String(20), nullable=True)
    params: Mapped[dict[str, Any]] = mapped_column(JSON)
    stats: Mapped[dict[str, Any]] = mapped_column(JSON)
    dataset_hash: Mapped[str | None] = mapped_column(String(64), nullable=True)
    dataset_name: Mapped[str | None] = mapped_column(String(300), nullable=True)
    # Bytes of a large run overflow a 32-bit integer.
    peak_memory_bytes: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    stdout_tail: Mapped[str] = mapped_column(Text, server_default="")
    stderr_tail: Mapped[str] = mapped_column(Text, server_default="")
    sample: Mapped[str] = mapped_column(String(20), server_default="full")
    trial_id: Mapped[int | None] = mapped_column(
        ForeignKey("optimization_trials.id", ondelete="SET NULL"), nullable=True, index=True
    )
    run_kind: Mapped[str] = mapped_column(String(10), server_default="run")
    labels: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)


class OptimizationHistory(Base):
    """One step of lineage: a child version derived from a parent, and what it changed."""

    __tablename__ = "optimization_history"
    __table_args__ = (Index(None, "strategy_name", "created_at"),)

    # Seed columns.
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    strategy_name: Mapped[str] = mapped_column(String(200))
    parent_version: Mapped[int] = mapped_column(Integer)
    child_version: Mapped[int] = mapped_column(Integer)
    optimization_type: Mapped[str] = mapped_column(String(40))
    changes_made: Mapped[str] = mapped_column(Text)
    performance_delta: Mapped[float | None] = mapped_column(Float, nullable=True)

    # Added columns: in-sample and out-of-sample figures, the guards that accepted the child.
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, server_default=text("CURRENT_TIMESTAMP")
    )
    details: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)


LLM_OUTCOMES: tuple[str, ...] = ("ok", "error", "rate_limited", "garbage")
IDEA_STATUSES: tuple[str, ...] = ("pending", "running", "succeeded", "failed")


class LlmCall(Base):
    """One call of an LLM agent: which model and prompt version, what it cost, and how it ended.

    `strategy_name` and `version` name the strategy version the call helped produce (set once that
    version is registered), so the lineage of every version says which model and prompt wrote it.
    """

    __tablename__ = "llm_calls"
    __table_args__ = (
        Index(None, "strategy_name", "version"),
        Index(None, "idea_key"),
        Index(None, "created_at"),
        CheckConstraint(_one_of("outcome", LLM_OUTCOMES), name="outcome"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    agent: Mapped[str] = mapped_column(String(40))
    model: Mapped[str] = mapped_column(String(200))
    prompt_name: Mapped[str] = mapped_column(String(100))
    prompt_version: Mapped[int] = mapped_column(Integer)
    attempt: Mapped[int] = mapped_column(Integer, server_default="1")
    prompt_tokens: Mapped[int] = mapped_column(Integer, server_default="0")
    completion_tokens: Mapped[int] = mapped_column(Integer, server_default="0")
    cost: Mapped[float | None] = mapped_column(Float, nullable=True)
    outcome: Mapped[str] = mapped_column(String(20))
    error_kind: Mapped[str | None] = mapped_column(String(40), nullable=True)
    error_message: Mapped[str | None] = mapped_column(Text, nullable=True)
    duration_seconds: Mapped[float] = mapped_column(Float, server_default="0")
    strategy_name: Mapped[str | None] = mapped_column(String(200), nullable=True)
    version: Mapped[int | None] = mapped_column(Integer, nullable=True)
    idea_key: Mapped[str | None] = mapped_column(String(64), nullable=True)
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, server_default=text("CURRENT_TIMESTAMP")
    )


class LoopIdea(Base):
    """One idea of the hands-free loop and how far it got: the loop's resumable state."""

    __tablename__ = "loop_ideas"
    __table_args__ = (
        UniqueConstraint("idea_key"),
        Index(None, "status"),
        CheckConstraint(_one_of("status", IDEA_STATUSES), name="status"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    idea_key: Mapped[str] = mapped_column(String(64))
    idea: Mapped[str] = mapped_column(Text)
    strategy_name: Mapped[str | None] = mapped_column(String(200), nullable=True)
    stage: Mapped[str] = mapped_column(String(20))
    status: Mapped[str] = mapped_column(String(20))
    attempts: Mapped[int] = mapped_column(Integer, server_default="0")
    failure_class: Mapped[str | None] = mapped_column(String(40), nullable=True)
    failure_message: Mapped[str | None] = mapped_column(Text, nullable=True)
    # Checkpoints, so an interrupted idea resumes without asking the model again.
    research: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    code: Mapped[str | None] = mapped_column(Text, nullable=True)
    version: Mapped[int | None] = mapped_column(Integer, nullable=True)
    best_version: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # The first successful run's figures and the optimised champion's: {objective, baseline, best, stats...}.
    best: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, server_default=text("CURRENT_TIMESTAMP")
    )
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, server_default=text("CURRENT_TIMESTAMP")
    )
