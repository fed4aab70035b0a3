"""Alembic migrations for the store, run programmatically (no alembic.ini): `await upgrade(url)`.

Several workers may start at once against one database; the upgrade holds a lock while it runs
(a PostgreSQL advisory lock; SQLite's write lock via BEGIN IMMEDIATE), so exactly one of them
migrates and the others find the schema at head.

Alembic itself (with Mako and Pygments behind it) is imported only when a database really has to
be migrated: a database already at head needs one version query, and an empty one is built from
the models and stamped at head — Alembic's own recipe for a new database ("create_all, then stamp
head"). That keeps ~12 MB of modules out of every proxy process that starts on a current schema.
tests/test_store.py checks that the models and the migrated schema agree, and that a database built
either way is the same.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from server.store.engine import StoreUnusable

if TYPE_CHECKING:
    from alembic.config import Config as AlembicConfig

HERE = Path(__file__).resolve().parent
HEAD = "head"
# The newest revision in versions/ (tests check that it is Alembic's head): move it with each new migration.
HEAD_REVISION = "0001"
# Any fixed 64-bit number that no other application on the database uses for an advisory lock.
_PG_LOCK_ID = 0x4158_4F4E_5349_4D01  # "AXONSIM" + 1

# The table Alembic keeps its revision in, as Alembic creates it.
_version_table = sa.Table(
    "alembic_version", sa.MetaData(),
    sa.Column("version_num", sa.String(32), nullable=False),
    sa.PrimaryKeyConstraint("version_num", name="alembic_version_pkc"),
)


def alembic_config(connection: Connection | None = None, url: str | None = None) -> AlembicConfig:
    from alembic.config import Config as AlembicConfig

    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(HERE))
    if url is not None:
        cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


def _stamped(connection: Connection) -> tuple[bool, list[str]]:
    """(whether the version table exists, the revisions stamped in it)."""
    if not sa.inspect(connection).has_table(_version_table.name):
        return False, []
    return True, [str(r) for r in connection.execute(sa.select(_version_table.c.version_num)).scalars()]


def _upgrade_sync(connection: Connection, revision: str) -> None:
    if connection.dialect.name == "postgresql":
        connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_PG_LOCK_ID})")
    elif connection.dialect.name == "sqlite":
        # pysqlite opens transactions lazily and not for DDL; take the write lock up front so the
        # version check and the DDL are one atomic step across processes.
        connection.exec_driver_sql("BEGIN IMMEDIATE")
    if revision == HEAD:
        has_table, stamped = _stamped(connection)
        if stamped == [HEAD_REVISION]:
            _check_writable(connection)  # "at head" is only what the version row says
            return
        if not stamped and _has_store_tables(connection):
            raise StoreUnusable("the database has AxonSim's tables but no migration version (alembic_version): "
                                "they were not made by AxonSim's migrations, or the version was removed")
        if not stamped and not has_table:
            from server.store.models import Base

            Base.metadata.create_all(connection)
            _version_table.create(connection)
            connection.execute(_version_table.insert().values(version_num=HEAD_REVISION))
            return
    from alembic import command
    from alembic.util import CommandError

    try:
        command.upgrade(alembic_config(connection), revision)
    except CommandError as exc:  # e.g. a revision a newer AxonSim wrote
        raise StoreUnusable(f"cannot migrate the database: {exc}") from None
    if revision == HEAD:
        _check_writable(connection)


# A request id no real request has (real ones are req_ + hex): the write check's row, never committed.
_CHECK_ID = "axonsim-write-check"


def _check_writable(connection: Connection) -> None:
    """The tables are there with every column the models have, and this role may insert into them:
    tables dropped under a running gateway are made again; anything else is StoreUnusable. The check
    inserts one request and one attempt in a savepoint that is rolled back."""
    from sqlalchemy import exc as sa_exc

    from server.store.models import Base, attempts_table, requests_table

    inspector = sa.inspect(connection)
    names = set(inspector.get_table_names())
    for name, table in Base.metadata.tables.items():
        if name not in names:
            table.create(connection)  # indexes included
            continue
        have = {c["name"] for c in inspector.get_columns(name)}
        missing = [c.name for c in table.columns if c.name not in have]
        if missing:
            raise StoreUnusable(f"table {name!r} lacks column(s) {', '.join(missing)}: the schema was changed "
                                "outside AxonSim's migrations")
    savepoint = connection.begin_nested()
    try:
        connection.execute(requests_table.insert().values(
            id=_CHECK_ID, created_at=0.0, day="1970-01-01", project="", client_format="", model="", stream=False,
            status=0, outcome=""))
        connection.execute(attempts_table.insert().values(
            request_id=_CHECK_ID, n=0, created_at=0.0, channel="", upstream_model="", status=0))
    except sa_exc.DBAPIError as exc:
        raise StoreUnusable(f"cannot write the store's tables: {str(exc.orig).strip().splitlines()[0][:300]}") from None
    finally:
        savepoint.rollback()


def _has_store_tables(connection: Connection) -> bool:
    from server.store.models import Base

    names = set(sa.inspect(connection).get_table_names())
    return any(t in names for t in Base.metadata.tables)


def _current_sync(connection: Connection) -> Any:
    from alembic.runtime.migration import MigrationContext

    return MigrationContext.configure(connection).get_current_revision()


async def upgrade(target: str | AsyncEngine, revision: str = HEAD) -> None:
    """Bring the database at `target` (a URL or an engine) to `revision`, in one transaction.
    A revision other than "head" always goes through Alembic's own scripts."""
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
