"""Initial schema: requests and attempts.

Revision ID: 0001
Revises:
Create Date: 2026-11-28

Written out column by column rather than from the models: a migration must keep meaning what it
meant when it shipped, whatever the models become. tests/test_store.py checks that the models and
the migrated schema agree.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "requests",
        sa.Column("id", sa.String(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("day", sa.String(10), nullable=False),
        sa.Column("project", sa.String(), nullable=False),
        sa.Column("key_name", sa.String(), nullable=True),
        sa.Column("client_format", sa.String(), nullable=False),
        sa.Column("model", sa.String(), nullable=False),
        sa.Column("stream", sa.Boolean(), nullable=False),
        sa.Column("status", sa.Integer(), nullable=False),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("latency", sa.Float(), nullable=True),
        sa.Column("ttft", sa.Float(), nullable=True),
        sa.Column("overhead", sa.Float(), nullable=True),
        sa.Column("prompt_tokens", sa.Integer(), nullable=False),
        sa.Column("completion_tokens", sa.Integer(), nullable=False),
        sa.Column("cached_tokens", sa.Integer(), nullable=False),
        sa.Column("reasoning_tokens", sa.Integer(), nullable=False),
        sa.Column("cost", sa.Float(), nullable=True),
        sa.Column("trace_id", sa.String(), nullable=True),
        sa.Column("thread_id", sa.String(), nullable=True),
        sa.Column("channel", sa.String(), nullable=True),
        sa.Column("request_body", sa.Text(), nullable=True),
        sa.Column("response_body", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_requests"),
    )
    op.create_index("ix_requests_created_at", "requests", ["created_at"])
    op.create_index("ix_requests_project_created_at", "requests", ["project", "created_at"])
    op.create_index("ix_requests_model_created_at", "requests", ["model", "created_at"])
    op.create_index("ix_requests_trace_id", "requests", ["trace_id"])
    op.create_index("ix_requests_thread_id", "requests", ["thread_id"])

    op.create_table(
        "attempts",
        sa.Column("request_id", sa.String(), nullable=False),
        sa.Column("n", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("channel", sa.String(), nullable=False),
        sa.Column("key_name", sa.String(), nullable=True),
        sa.Column("upstream_model", sa.String(), nullable=False),
        sa.Column("status", sa.Integer(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("error_kind", sa.String(), nullable=True),
        sa.Column("latency", sa.Float(), nullable=True),
        sa.Column("ttft", sa.Float(), nullable=True),
        sa.Column("cost", sa.Float(), nullable=True),
        sa.Column("decision", sa.JSON(), nullable=True),
        sa.ForeignKeyConstraint(["request_id"], ["requests.id"], ondelete="CASCADE",
                                name="fk_attempts_request_id_requests"),
        sa.PrimaryKeyConstraint("request_id", "n", name="pk_attempts"),
    )
    op.create_index("ix_attempts_channel_created_at", "attempts", ["channel", "created_at"])


def downgrade() -> None:
    op.drop_index("ix_attempts_channel_created_at", table_name="attempts")
    op.drop_table("attempts")
    for ix in ("thread_id", "trace_id", "model_created_at", "project_created_at", "created_at"):
        op.drop_index(f"ix_requests_{ix}", table_name="requests")
    op.drop_table("requests")
