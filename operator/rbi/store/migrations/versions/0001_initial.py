"""Initial schema: strategy versions, backtest results, optimization history and trials.

Revision ID: 0001
Revises:
Create Date: 2025-11-25
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_NOW = sa.text("CURRENT_TIMESTAMP")
_SAMPLE_CHECK = "sample IN ('full', 'in_sample', 'out_of_sample')"


def upgrade() -> None:
    op.create_table(
        "strategy_versions",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("strategy_name", sa.String(length=200), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("code", sa.Text(), nullable=False),
        sa.Column("code_hash", sa.String(length=64), nullable=False),
        sa.Column("params", sa.JSON(), nullable=False),
        sa.Column("parent_version", sa.Integer(), nullable=True),
        sa.Column("source", sa.String(length=40), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=_NOW, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_strategy_versions")),
        sa.UniqueConstraint("strategy_name", "version", name=op.f("uq_strategy_versions_strategy_name_version")),
    )
    op.create_index(
        op.f("ix_strategy_versions_strategy_name_code_hash"),
        "strategy_versions",
        ["strategy_name", "code_hash"],
    )

    op.create_table(
        "optimization_trials",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("strategy_name", sa.String(length=200), nullable=False),
        sa.Column("parent_version", sa.Integer(), nullable=False),
        sa.Column("iteration", sa.Integer(), nullable=False),
        sa.Column("trial_number", sa.Integer(), nullable=False),
        sa.Column("params", sa.JSON(), nullable=False),
        sa.Column("objective", sa.Float(), nullable=True),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("stats", sa.JSON(), nullable=False),
        sa.Column("sample", sa.String(length=20), server_default="full", nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=_NOW, nullable=False),
        sa.CheckConstraint(_SAMPLE_CHECK, name=op.f("ck_optimization_trials_sample")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_optimization_trials")),
    )
    op.create_index(
        op.f("ix_optimization_trials_strategy_name_parent_version_iteration"),
        "optimization_trials",
        ["strategy_name", "parent_version", "iteration"],
    )
    op.create_index(op.f("ix_optimization_trials_status"), "optimization_trials", ["status"])
    op.create_index(op.f("ix_optimization_trials_created_at"), "optimization_trials", ["created_at"])

    op.create_table(
        "backtest_results",
        # The seed plan's columns.
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("strategy_name", sa.String(length=200), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("code_hash", sa.String(length=64), nullable=False),
        sa.Column("execution_time", sa.Float(), nullable=False),
        sa.Column("total_return", sa.Float(), nullable=True),
        sa.Column("sharpe_ratio", sa.Float(), nullable=True),
        sa.Column("max_drawdown", sa.Float(), nullable=True),
        sa.Column("win_rate", sa.Float(), nullable=True),
        sa.Column("num_trades", sa.Integer(), nullable=True),
        sa.Column("error_message", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=_NOW, nullable=False),
        # Added beside them.
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("error_type", sa.String(length=40), nullable=True),
        sa.Column("error_line", sa.Integer(), nullable=True),
        sa.Column("error_detail", sa.Text(), nullable=True),
        sa.Column("mode", sa.String(length=20), nullable=True),
        sa.Column("params", sa.JSON(), nullable=False),
        sa.Column("stats", sa.JSON(), nullable=False),
        sa.Column("dataset_hash", sa.String(length=64), nullable=True),
        sa.Column("dataset_name", sa.String(length=300), nullable=True),
        sa.Column("peak_memory_bytes", sa.BigInteger(), nullable=True),
        sa.Column("stdout_tail", sa.Text(), server_default="", nullable=False),
        sa.Column("stderr_tail", sa.Text(), server_default="", nullable=False),
        sa.Column("sample", sa.String(length=20), server_default="full", nullable=False),
        sa.Column("trial_id", sa.Integer(), nullable=True),
        sa.Column("run_kind", sa.String(length=10), server_default="run", nullable=False),
        sa.Column("labels", sa.JSON(), nullable=True),
        sa.CheckConstraint("status IN ('succeeded', 'no_trades', 'failed')", name=op.f("ck_backtest_results_status")),
        sa.CheckConstraint(_SAMPLE_CHECK, name=op.f("ck_backtest_results_sample")),
        sa.CheckConstraint("run_kind IN ('run', 'trial')", name=op.f("ck_backtest_results_run_kind")),
        sa.ForeignKeyConstraint(
            ["trial_id"],
            ["optimization_trials.id"],
            name=op.f("fk_backtest_results_trial_id_optimization_trials"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_backtest_results")),
    )
    op.create_index(
        op.f("ix_backtest_results_strategy_name_created_at"),
        "backtest_results",
        ["strategy_name", "created_at"],
    )
    op.create_index(op.f("ix_backtest_results_strategy_name_version"), "backtest_results", ["strategy_name", "version"])
    op.create_index(op.f("ix_backtest_results_created_at"), "backtest_results", ["created_at"])
    op.create_index(op.f("ix_backtest_results_status"), "backtest_results", ["status"])
    op.create_index(op.f("ix_backtest_results_trial_id"), "backtest_results", ["trial_id"])

    op.create_table(
        "optimization_history",
        # The seed plan's columns.
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("strategy_name", sa.String(length=200), nullable=False),
        sa.Column("parent_version", sa.Integer(), nullable=False),
        sa.Column("child_version", sa.Integer(), nullable=False),
        sa.Column("optimization_type", sa.String(length=40), nullable=False),
        sa.Column("changes_made", sa.Text(), nullable=False),
        sa.Column("performance_delta", sa.Float(), nullable=True),
        # Added beside them.
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=_NOW, nullable=False),
        sa.Column("details", sa.JSON(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_optimization_history")),
    )
    op.create_index(
        op.f("ix_optimization_history_strategy_name_created_at"),
        "optimization_history",
        ["strategy_name", "created_at"],
    )


def downgrade() -> None:
    op.drop_table("optimization_history")
    op.drop_table("backtest_results")
    op.drop_table("optimization_trials")
    op.drop_table("strategy_versions")
