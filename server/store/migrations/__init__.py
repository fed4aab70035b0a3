"""Alembic migrations for the store, run programmatically (no alembic.ini): `await upgrade(url)`.

Several workers may start at once against one database; the upgrade holds a lock while it runs
(a PostgreSQL advisory lock; SQLite's write lock via BEGIN IMMEDIATE), so exactly one of them
migrates and the others find the schema at head.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config as AlembicConfig
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

HERE = Path(__file__).resolve().parent
HEAD = "head"
# Any fixed 64-bit number that no other application on the database uses for an advisory lock.
_PG_LOCK_ID = 0x4158_4F4E_5349_4D01  # "AXONSIM" + 1


def alembic_config(connection: Connection | None = None, url: str | None = None) -> AlembicConfig:
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(HERE))
    if url is not None:
        cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


def _upgrade_sync(connection: Connection, revision: str) -> None:
    if connection.dialect.name == "postgresql":
        connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_PG_LOCK_ID})")
    elif connection.dialect.name == "sqlite":
        # pysqlite opens transactions lazily and not for DDL; take the write lock up front so the
        # version check and the DDL are one atomic step across processes.
        connection.exec_driver_sql("BEGIN IMMEDIATE")
    command.upgrade(alembic_config(connection), revision)


def _current_sync(connection: Connection) -> Any:
    from alembic.runtime.migration import MigrationContext

    return MigrationContext.configure(connection).get_current_revision()


async def upgrade(target: str | AsyncEngine, revision: str = HEAD) -> None:
    """Bring the database at `target` (a URL or an engine) to `revision`, in one transaction."""
    from server.store.engine import make_engine

    engine = make_engine(target) if isinstance(target, str) else target
    try:
        async with engine.begin() as conn:
            await conn.run_sync(_upgrade_sync, revision)
    finally:
        if isinstance(target, str):
            await engine.dispose()


async def current(engine: AsyncEngine) -> str | None:
    """The revision the database is at (None before the first migration)."""
    async with engine.connect() as conn:
        rev = await conn.run_sync(_current_sync)
    return None if rev is None else str(rev)
