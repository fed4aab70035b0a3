"""The store's tables (SQLAlchemy 2 declarative): requests and their attempts.

Usage per project/model/day is a query over `requests` (server.store.queries.usage), not a table
of its own. A rolled-up table would have to be incremented in the same transaction as each insert,
and only for rows that were really new — or a retried batch would count twice; the query needs
no such care, stays exact, and with the (project, created_at) and (model, created_at) indexes and
the stored UTC `day` it reads only the rows of the range asked for. If volumes ever make it slow,
a roll-up can be built from this table later without changing what the writer does.

Times are unix seconds (float) so both SQLite and PostgreSQL compare and sum them the same way;
`day` (UTC, YYYY-MM-DD) is derived at write time because the two databases disagree on date maths.
Migrations (server/store/migrations) create these tables explicitly; a test checks they match.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = sa.MetaData(naming_convention=NAMING)


class RequestRow(Base):
    __tablename__ = "requests"

    id: Mapped[str] = mapped_column(sa.String(), primary_key=True)
    created_at: Mapped[float] = mapped_column(sa.Float(), nullable=False)
    day: Mapped[str] = mapped_column(sa.String(10), nullable=False)
    project: Mapped[str] = mapped_column(sa.String(), nullable=False)
    key_name: Mapped[str | None] = mapped_column(sa.String())
    client_format: Mapped[str] = mapped_column(sa.String(), nullable=False)
    model: Mapped[str] = mapped_column(sa.String(), nullable=False)
    stream: Mapped[bool] = mapped_column(sa.Boolean(), nullable=False, default=False)
    status: Mapped[int] = mapped_column(sa.Integer(), nullable=False)
    outcome: Mapped[str] = mapped_column(sa.String(16), nullable=False)
    error: Mapped[str | None] = mapped_column(sa.Text())
    latency: Mapped[float | None] = mapped_column(sa.Float())
    ttft: Mapped[float | None] = mapped_column(sa.Float())
    overhead: Mapped[float | None] = mapped_column(sa.Float())
    prompt_tokens: Mapped[int] = mapped_column(sa.Integer(), nullable=False, default=0)
    completion_tokens: Mapped[int] = mapped_column(sa.Integer(), nullable=False, default=0)
    cached_tokens: Mapped[int] = mapped_column(sa.Integer(), nullable=False, default=0)
    reasoning_tokens: Mapped[int] = mapped_column(sa.Integer(), nullable=False, default=0)
    cost: Mapped[float | None] = mapped_column(sa.Float())
    trace_id: Mapped[str | None] = mapped_column(sa.String())
    thread_id: Mapped[str | None] = mapped_column(sa.String())
    channel: Mapped[str | None] = mapped_column(sa.String())
    request_body: Mapped[str | None] = mapped_column(sa.Text())
    response_body: Mapped[str | None] = mapped_column(sa.Text())

    attempts: Mapped[list[AttemptRowModel]] = relationship(
        back_populates="request", order_by="AttemptRowModel.n", cascade="all, delete-orphan")

    __table_args__ = (
        sa.Index(None, "created_at"),
        sa.Index(None, "project", "created_at"),
        sa.Index(None, "model", "created_at"),
        sa.Index(None, "trace_id"),
        sa.Index(None, "thread_id"),
    )


class AttemptRowModel(Base):
    __tablename__ = "attempts"

    request_id: Mapped[str] = mapped_column(
        sa.String(), sa.ForeignKey("requests.id", ondelete="CASCADE"), primary_key=True)
    n: Mapped[int] = mapped_column(sa.Integer(), primary_key=True)
    # The request's arrival time, copied so per-channel figures over a time range need no join.
    created_at: Mapped[float] = mapped_column(sa.Float(), nullable=False)
    channel: Mapped[str] = mapped_column(sa.String(), nullable=False)
    key_name: Mapped[str | None] = mapped_column(sa.String())
    upstream_model: Mapped[str] = mapped_column(sa.String(), nullable=False)
    status: Mapped[int] = mapped_column(sa.Integer(), nullable=False)
    error: Mapped[str | None] = mapped_column(sa.Text())
    error_kind: Mapped[str | None] = mapped_column(sa.String())
    latency: Mapped[float | None] = mapped_column(sa.Float())
    ttft: Mapped[float | None] = mapped_column(sa.Float())
    cost: Mapped[float | None] = mapped_column(sa.Float())
    decision: Mapped[dict[str, Any] | None] = mapped_column(sa.JSON())

    request: Mapped[RequestRow] = relationship(back_populates="attempts")

    __table_args__ = (sa.Index(None, "channel", "created_at"),)


requests_table: sa.Table = RequestRow.__table__  # type: ignore[assignment]
attempts_table: sa.Table = AttemptRowModel.__table__  # type: ignore[assignment]
