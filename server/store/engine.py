"""Database URLs and engines for the store: where the SQLite file lives, driver options, safe logging."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import sqlalchemy as sa
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import StaticPool

DEFAULT_DB_FILE = "axonsim.db"


class StoreUnavailable(RuntimeError):
    """The database cannot be reached or prepared at start-up (the CLI exits with code 2).
    `unusable`: it answers, but AxonSim cannot keep its records there (see StoreUnusable)."""

    def __init__(self, message: str, unusable: bool = False) -> None:
        super().__init__(message)
        self.unusable = unusable


class StoreUnusable(RuntimeError):
    """The database answers, but its tables are not ones AxonSim can write: columns missing (changed
    by hand), a revision this version does not know, tables without a version, no right to insert.
    Waiting does not fix it; an operator does."""


def resolve_url(url: str | None, config_path: str | Path | None = None) -> str:
    """The URL the store opens. None means `axonsim.db` next to the config file (or in the working
    directory without one); a relative SQLite path is taken relative to the config file too, so a
    config and its database move together."""
    base = Path(config_path).resolve().parent if config_path is not None else Path.cwd()
    if url is None:
        return f"sqlite+aiosqlite:///{base / DEFAULT_DB_FILE}"
    u = make_url(url)
    if u.get_backend_name() == "sqlite" and u.database and u.database != ":memory:" \
            and not u.database.startswith("file:") and not Path(u.database).is_absolute():
        return u.set(database=str(base / u.database)).render_as_string(hide_password=False)
    return url


# Query options that carry a credential (the drivers take `?password=` as the password too).
_SECRET_OPTIONS = ("password", "passwd", "sslpassword")


def safe_url(url: str) -> str:
    """The URL (a database's or Redis's) with its password masked, in the user part or as a query
    option: the only form that may reach a log line or an exception.

    Libraries disagree on where a password ends: SQLAlchemy at the first "@" (so it may hold "/",
    "?" or "#"), redis-py at the last "@" before the path. Everything from the user's ":" up to the
    later of the two is masked, which hides the password under either reading."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url if "@" not in url and "?" not in url else "<unparsable url>"
    ends = []
    first = rest.find("@")
    if first != -1:
        if "/" not in rest[:first].split(":", 1)[0]:  # else that "@" ends no user part (SQLAlchemy's reading)
            ends.append(first)
    host_end = min((i for i in (rest.find(c) for c in "/?#") if i != -1), default=len(rest))
    last = rest.rfind("@", 0, host_end)
    if last != -1:
        ends.append(last)
    at = max(ends, default=-1)
    if at != -1:
        userinfo = rest[:at]
        colon = userinfo.find(":")
        rest = (userinfo[:colon] + ":***" if colon != -1 else userinfo) + rest[at:]
    q = rest.find("?", at + 1)
    if q != -1:
        query, hash_, fragment = rest[q + 1:].partition("#")
        query = "&".join(f"{p.split('=', 1)[0]}=***" if unquote(p.split("=", 1)[0]).lower() in _SECRET_OPTIONS
                         else p for p in query.split("&"))
        rest = rest[:q + 1] + query + hash_ + fragment
    return f"{scheme}://{rest}"


def url_password(url: str) -> str | None:
    """The password the URL gives (user part first, else a `password` query option), to scrub."""
    try:
        u = make_url(url)
    except Exception:
        return None
    if u.password:
        return str(u.password)
    for k, v in u.query.items():
        if k.lower() in _SECRET_OPTIONS and v:
            return v if isinstance(v, str) else str(v[0])
    return None


def is_memory_sqlite(url: str) -> bool:
    u = make_url(url)
    return u.get_backend_name() == "sqlite" and (not u.database or u.database == ":memory:")


_NOTHING: dict[object, None] = {}
_NULL = _NOTHING.get  # a C callable that answers None for None (an adapter must take the value)


def bind_null_and_bool_directly() -> None:
    """Spare every NULL and bool the sqlite3 module's adapter search.

    The module binds exact int, float, str and bytearray values as they are; anything else, None
    and bool included, first goes through its adapter lookup, and for a type with no adapter
    registered that is a tuple, a dict miss and two failed attribute searches: ~3k instructions a
    value. A request's rows bind ~8 NULLs, which cost the store's thread ~26k instructions per
    request (callgrind) — as much as SQLite's own inserts. Adapters that hand back what would
    have been bound anyway (None stays None, so NULL; a bool becomes the int it is) turn that
    into one dict hit. They are process-wide, and change nothing any other sqlite3 user binds."""
    sqlite3.register_adapter(type(None), _NULL)
    sqlite3.register_adapter(bool, int)


def sqlite_file_id(path: str | None) -> tuple[int, int] | None:
    """The identity (device, inode) of the file at `path` now; None if there is none."""
    if not path:
        return None
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def make_engine(url: str, *, connect_timeout: float = 5.0, schema: str | None = None) -> AsyncEngine:
    """An async engine with the options the store relies on.

    `schema` (PostgreSQL only) sets the search_path, so tests and tenants can keep their tables apart.
    """
    u = make_url(url)
    backend = u.get_backend_name()
    kw: dict[str, Any] = {}
    if backend == "sqlite":
        if schema is not None:
            raise ValueError("schema is only supported on PostgreSQL")
        # `timeout` is SQLite's busy wait: how long a write waits for another writer's lock before
        # it fails (and the batch is retried later) rather than stalling the writer indefinitely.
        kw["connect_args"] = {"timeout": connect_timeout}
        if is_memory_sqlite(url):
            kw["poolclass"] = StaticPool  # every connection must see the same in-memory database
        bind_null_and_bool_directly()
    elif backend == "postgresql":
        args: dict[str, Any] = {"timeout": connect_timeout}
        if schema is not None:
            args["server_settings"] = {"search_path": schema}
        kw["connect_args"] = args
        # Pooled connections die with the database; a ping on checkout replaces them after it returns.
        kw["pool_pre_ping"] = True
    else:
        raise ValueError(f"unsupported store backend {backend!r}: use sqlite+aiosqlite or postgresql+asyncpg")
    engine = create_async_engine(url, **kw)
    if backend == "sqlite":
        memory = is_memory_sqlite(url)

        @sa.event.listens_for(engine.sync_engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, record: Any) -> None:
            cur = dbapi_conn.cursor()
            if not memory:
                # WAL lets the admin API read while the writer writes. The mode is kept in the file
                # once one connection has set it; switching needs the file to itself, and SQLite
                # answers "locked" at once (no busy wait) while another connection is using it — say
                # another worker starting on the same new file, which sets WAL itself.
                try:
                    cur.execute("PRAGMA journal_mode=WAL")
                except Exception as exc:
                    if "locked" not in str(exc):
                        raise
                cur.execute("PRAGMA synchronous=NORMAL")
            # A multi-row INSERT inside the batch's transaction keeps a statement journal; on disk
            # (the default) every batch created, wrote and deleted temporary files: ~2 syscalls per
            # record and ~10 % of the writer thread's CPU (benchmarks/store_write.py).
            cur.execute("PRAGMA temp_store=MEMORY")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

    return engine
