"""The optimisation state machine's state, and which Optuna study each trial belongs to.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_NOW = sa.text("CURRENT_TIMESTAMP")


def upgrade() -> None:
    op.create_table(
        "optimization_runs",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("run_key", sa.String(length=300), nullable=False),
        sa.Column("strategy_name", sa.String(length=200), nullable=False),
        sa.Column("stage", sa.String(length=40), nullable=False),
        sa.Column("state", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=_NOW, nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=_NOW, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_optimization_runs")),
    )
    op.create_index(op.f("ix_optimization_runs_run_key"), "optimization_runs", ["run_key"])
    with op.batch_alter_table("optimization_trials") as batch:
        batch.add_column(sa.Column("study", sa.String(length=300), nullable=True))
        batch.create_index(batch.f("ix_optimization_trials_study_trial_number"), ["study", "trial_number"])


def downgrade() -> None:
    with op.batch_alter_table("optimization_trials") as batch:
        batch.drop_index(batch.f("ix_optimization_trials_study_trial_number"))
        batch.drop_column("study")
    op.drop_index(op.f("ix_optimization_runs_run_key"), table_name="optimization_runs")
    op.drop_table("optimization_runs")
