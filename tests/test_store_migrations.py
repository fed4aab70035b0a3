"""The store's schema: Alembic's migration and the models agree, and a new database built without Alembic is the same."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from test_store import db, make_store, pg, rec  # noqa: F401  (db, pg: fixtures; db is SQLite and PostgreSQL)

from server.store import StoreUnavailable
from server.store.engine import make_engine
from server.store.migrations import HEAD_REVISION, alembic_config, current, upgrade
from server.store.models import Base

ROOT = Path(__file__).resolve().parent.parent


def _diff(conn: sa.Connection) -> list[Any]:
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    return compare_metadata(MigrationContext.configure(conn), Base.metadata)


def test_head_revision_is_alembics_head() -> None:
    from alembic.script import ScriptDirectory

    assert ScriptDirectory.from_config(alembic_config()).get_current_head() == HEAD_REVISION


async def test_alembics_migration_matches_the_models(db: Any) -> None:  # noqa: F811
    engine = make_engine(db.url, schema=db.schema)
    try:
        await upgrade(engine, HEAD_REVISION)  # an explicit revision always runs Alembic's scripts
        assert await current(engine) == HEAD_REVISION
        async with engine.connect() as conn:
            assert await conn.run_sync(_diff) == []
    finally:
        await engine.dispose()


async def test_a_new_database_is_built_from_the_models_and_stamped_at_head(db: Any) -> None:  # noqa: F811
    store = make_store(db)
    await store.start()
    try:
        # What Alembic itself reads: the revision, and no difference from the models.
        assert await current(store.engine) == HEAD_REVISION
        async with store.engine.connect() as conn:
            assert await conn.run_sync(_diff) == []
        # A second start finds the schema at head and changes nothing.
        await upgrade(store.engine)
        assert await current(store.engine) == HEAD_REVISION
    finally:
        await store.close()


def test_starting_on_a_new_or_current_database_does_not_import_alembic(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'store.db'}"
    code = ("import asyncio, sys\n"
            "from server.store.migrations import upgrade\n"
            f"asyncio.run(upgrade({url!r}))\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('alembic', 'mako')))\n")
    for _ in ("new", "current"):
        out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == "[]"


# -- a database that answers but cannot take the records --------------------------------------------


@pytest.mark.parametrize(("change", "reason"), [
    ("ALTER TABLE requests DROP COLUMN overhead", "lacks column.*overhead"),  # changed by hand
    ("DROP TABLE alembic_version", "no migration version"),  # tables not made by the migrations
])
async def test_tables_the_store_cannot_write_stop_the_start_with_a_reason(db: Any, change: str,  # noqa: F811
                                                                          reason: str) -> None:
    store = make_store(db)
    await store.start()
    await store.close()
    await db.fetch(change)
    with pytest.raises(StoreUnavailable, match=reason) as e:
        await make_store(db).start()
    assert e.value.unusable


async def test_tables_dropped_under_a_running_store_are_made_again(db: Any) -> None:  # noqa: F811
    store = make_store(db)
    await store.start()
    try:
        assert store.submit(rec(0)) and await store.flush(30)
        await db.fetch("DROP TABLE attempts")
        await db.fetch("DROP TABLE requests")
        assert store.submit(rec(1)) and await store.flush(30)
        assert store.written == 2 and store.dropped == 0
        assert await db.fetch("SELECT count(*) FROM requests") == [(1,)]
        assert await db.fetch("SELECT count(*) FROM attempts") == [(1,)]
    finally:
        await store.close()


async def test_a_role_that_may_not_write_stops_the_start_with_a_reason(pg: Any) -> None:  # noqa: F811
    # roles are PostgreSQL's
    store = make_store(pg)
    await store.start()
    await store.close()
    role = f"{pg.schema}_ro"
    await pg.fetch(f'CREATE ROLE "{role}" LOGIN')
    try:
        await pg.fetch(f'GRANT USAGE ON SCHEMA "{pg.schema}" TO "{role}"')
        await pg.fetch(f'GRANT SELECT ON ALL TABLES IN SCHEMA "{pg.schema}" TO "{role}"')
        url = sa.engine.make_url(pg.url).set(username=role, password=None).render_as_string(hide_password=False)
        ro = make_store(pg)
        ro.url = url
        with pytest.raises(StoreUnavailable, match="cannot write the store's tables.*permission denied") as e:
            await ro.start()
        assert e.value.unusable
    finally:
        await pg.fetch(f'DROP OWNED BY "{role}"')
        await pg.fetch(f'DROP ROLE "{role}"')
