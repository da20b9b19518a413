"""LLM agent calls and the hands-free loop's ideas.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_NOW = sa.text("CURRENT_TIMESTAMP")


def upgrade() -> None:
    op.create_table(
        "llm_calls",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("agent", sa.String(length=40), nullable=False),
        sa.Column("model", sa.String(length=200), nullable=False),
        sa.Column("prompt_name", sa.String(length=100), nullable=False),
        sa.Column("prompt_version", sa.Integer(), nullable=False),
        sa.Column("attempt", sa.Integer(), server_default="1", nullable=False),
        sa.Column("prompt_tokens", sa.Integer(), server_default="0", nullable=False),
        sa.Column("completion_tokens", sa.Integer(), server_default="0", nullable=False),
        sa.Column("cost", sa.Float(), nullable=True),
        sa.Column("outcome", sa.String(length=20), nullable=False),
        sa.Column("error_kind", sa.String(length=40), nullable=True),
        sa.Column("error_message", sa.Text(), nullable=True),
        sa.Column("duration_seconds", sa.Float(), server_default="0", nullable=False),
        sa.Column("strategy_name", sa.String(length=200), nullable=True),
        sa.Column("version", sa.Integer(), nullable=True),
        sa.Column("idea_key", sa.String(length=64), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=_NOW, nullable=False),
        sa.CheckConstraint(
            "outcome IN ('ok', 'error', 'rate_limited', 'garbage')", name=op.f("ck_llm_calls_outcome")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_llm_calls")),
    )
    op.create_index(op.f("ix_llm_calls_strategy_name_version"), "llm_calls", ["strategy_name", "version"])
    op.create_index(op.f("ix_llm_calls_idea_key"), "llm_calls", ["idea_key"])
    op.create_index(op.f("ix_llm_calls_created_at"), "llm_calls", ["created_at"])

    op.create_table(
        "loop_ideas",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("idea_key", sa.String(length=64), nullable=False),
        sa.Column("idea", sa.Text(), nullable=False),
        sa.Column("strategy_name", sa.String(length=200), nullable=True),
        sa.Column("stage", sa.String(length=20), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        sa.Column("failure_class", sa.String(length=40), nullable=True),
        sa.Column("failure_message", sa.Text(), nullable=True),
        sa.Column("research", sa.JSON(), nullable=True),
        sa.Column("code", sa.Text(), nullable=True),
        sa.Column("version", sa.Integer(), nullable=True),
        sa.Column("best_version", sa.Integer(), nullable=True),
        sa.Column("best", sa.JSON(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=_NOW, nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=_NOW, nullable=False),
        sa.CheckConstraint(
            "status IN ('pending', 'running', 'succeeded', 'failed')", name=op.f("ck_loop_ideas_status")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_loop_ideas")),
        sa.UniqueConstraint("idea_key", name=op.f("uq_loop_ideas_idea_key")),
    )
    op.create_index(op.f("ix_loop_ideas_status"), "loop_ideas", ["status"])


def downgrade() -> None:
    op.drop_index(op.f("ix_loop_ideas_status"), table_name="loop_ideas")
    op.drop_table("loop_ideas")
    op.drop_index(op.f("ix_llm_calls_created_at"), table_name="llm_calls")
    op.drop_index(op.f("ix_llm_calls_idea_key"), table_name="llm_calls")
    op.drop_index(op.f("ix_llm_calls_strategy_name_version"), table_name="llm_calls")
    op.drop_table("llm_calls")
