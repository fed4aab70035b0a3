"""SQLite batches written on the event loop's own thread, a slice of records per transaction.

Why not aiosqlite's worker thread (which the engine still uses for migrations, the admin API's
queries and the writer's health checks): the sqlite3 module releases the GIL around every statement
it prepares, steps and resets, so a batch written from a thread hands the GIL back and forth with
the event loop a dozen times or more. On a busy loop each of those waits out the interpreter's
switch interval (5 ms) and then makes the loop stop for the thread. Measured on 2 cores: a batch
of 200 records took 25–60 ms of wall time beside a proxy serving one request at a time; at 64
concurrent requests (~3,000 a second, 20 s) the writer fell behind and the store dropped 7 % of the
records with its database idle; benchmarks/store_write.py counted ~4 context switches and ~107 µs
of CPU a record beside a busy loop, where the inserts alone cost ~8 µs (~0.5 switches, 45–65 µs
and nothing dropped when the loop runs them itself). The loop writes SLICE records per transaction
(under a millisecond) and yields before the next slice, so a request never waits on more than one.

One transaction per slice rather than per batch keeps the write lock short: another worker writing
to the same file gets its turn between slices. A slice is all-or-nothing; a batch that fails part
way is retried whole by the writer, and its committed slices change nothing the second time
(INSERT … ON CONFLICT DO NOTHING).

Checkpoints (copying the write-ahead log into the database file, with an fsync) are the one part
that is slow: SQLite runs one inside the commit that takes the log past 1,000 pages, and that
commit took ~5 ms where the others took well under one. This connection turns them off and runs a PASSIVE checkpoint in
a thread after every CHECKPOINT_EVERY records instead (one GIL handoff per thousands of records;
writers go on meanwhile, which WAL allows).

The connection waits for no lock (SQLite's busy timeout is 0: a busy wait here would stop the event
loop). A slice that finds the file locked by another connection is retried after a short sleep,
until `busy_limit` seconds have passed; then the "database is locked" error goes to the writer like
any other, which counts the database as unavailable and retries the batch with backoff.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from typing import Any
from urllib.parse import quote

from sqlalchemy import exc as sa_exc

from server.store.engine import sqlite_file_id
from server.store.rows import InsertSQL, Prepared

# Records per transaction: ~0.6 ms of the loop's time. Each commit costs ~110 µs (its log pages written);
# benchmarks/store_write.py measured 21, 18, 16 and 15 µs a record with 16, 32, 64 and 128.
SLICE = 64
# Sleeps between tries while another connection holds the write lock: short first (a commit holds it
# for about a millisecond), then capped, so a long holder is polled a few dozen times a second.
_BUSY_FIRST = 0.001
_BUSY_CAP = 0.025
_BUSY_CODES = (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)
# Records between checkpoints: at ~0.4 log pages a record, about what SQLite's own 1,000 pages are.
CHECKPOINT_EVERY = 2000

log = logging.getLogger("axonsim.store")


def _busy(exc: sqlite3.Error) -> bool:
    return isinstance(exc, sqlite3.OperationalError) and getattr(exc, "sqlite_errorcode", None) in _BUSY_CODES


def insert(db: sqlite3.Connection, statements: list[tuple[str, Any]]) -> None:
    """`statements` in one transaction. IMMEDIATE takes the write lock first, so a file another
    connection is writing fails before any work is done."""
    if not db.in_transaction:
        db.execute("BEGIN IMMEDIATE")
    try:
        for stmt, params in statements:
            if type(params) is list:
                db.executemany(stmt, params)
            else:
                db.execute(stmt, params)
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise


def _checkpoint(path: str) -> None:
    """A PASSIVE checkpoint from a connection of its own (run in a thread). It copies what it can
    without waiting for anyone; a failure only leaves the log longer until the next one."""
    try:
        # mode=rw: a file deleted meanwhile is not created again, empty, by the checkpoint.
        db = sqlite3.connect(f"file:{quote(path)}?mode=rw", uri=True, timeout=0, isolation_level=None)
        try:
            db.execute("PRAGMA wal_checkpoint(PASSIVE)")
        finally:
            db.close()
    except sqlite3.Error as exc:
        log.debug("store: checkpoint of %s skipped (%s)", path, exc)


class DirectSQLite:
    """The writer's connection to a SQLite file (not `:memory:`), used only from the event loop."""

    def __init__(self, path: str, sql: InsertSQL, busy_limit: float) -> None:
        self.path = path
        self._sql = sql
        self._busy_limit = busy_limit
        self._db: sqlite3.Connection | None = None
        self._file: tuple[int, int] | None = None  # (device, inode) of the file it has open
        self._unchecked = 0  # records committed since the last checkpoint

    def moved(self) -> bool:
        """Whether the file at `path` is no longer the one this connection last opened (deleted, or
        replaced by a restored backup): its writes would go where nobody reads, and the engine's
        pooled connections have the old file open too. Known after a close, so that reopening after
        an error cannot skip the check."""
        return self._file is not None and self._file != sqlite_file_id(self.path)

    def close(self) -> None:
        """Close the connection; the next write opens it again."""
        db, self._db = self._db, None
        if db is not None:
            db.close()

    def forget(self) -> None:
        """Close, and take whatever file is at `path` next as the one to write to."""
        self.close()
        self._file = None

    def _connect(self) -> sqlite3.Connection:
        # isolation_level None: transactions are exactly the BEGIN/COMMIT written in insert().
        db = sqlite3.connect(self.path, timeout=0, isolation_level=None)
        try:
            # The engine's connections set WAL on the file when they migrate it; the mode is kept in
            # the file, so this only reads it back. The rest is per connection (server/store/engine.py).
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute("PRAGMA temp_store=MEMORY")
            db.execute("PRAGMA foreign_keys=ON")
            db.execute("PRAGMA wal_autocheckpoint=0")  # write() runs _checkpoint in a thread instead
        except BaseException:
            db.close()
            raise
        self._file = sqlite_file_id(self.path)
        self._db = db
        return db

    async def write(self, batch: list[Prepared]) -> None:
        """Insert `batch` a slice at a time. Errors come as SQLAlchemy's, as through the engine, so
        the writer tells a record the database refuses from a database that is unavailable."""
        sql = self._sql
        for i in range(0, len(batch), SLICE):
            if i:
                await asyncio.sleep(0)  # the loop's turn between slices
            part = batch[i:i + SLICE]
            statements = sql.requests.statements([p[0] for p in part])
            attempts = [a for p in part for a in p[1]]
            if attempts:
                statements += sql.attempts.statements(attempts)
            await self._run(statements)
            self._unchecked += len(part)
        if self._unchecked >= CHECKPOINT_EVERY:
            self._unchecked = 0
            await asyncio.to_thread(_checkpoint, self.path)

    async def _run(self, statements: list[tuple[str, Any]]) -> None:
        loop = asyncio.get_running_loop()
        give_up = loop.time() + self._busy_limit
        pause = _BUSY_FIRST
        while True:
            try:
                db = self._db if self._db is not None else self._connect()
                insert(db, statements)
                return
            except sqlite3.Error as exc:
                if _busy(exc) and loop.time() + pause < give_up:
                    await asyncio.sleep(pause)
                    pause = min(pause * 2, _BUSY_CAP)
                    continue
                if not isinstance(exc, (sqlite3.IntegrityError, sqlite3.DataError)):
                    self.close()  # reopened on the next write: the file may have come back
                raise sa_exc.DBAPIError.instance(statements[0][0][:200], None, exc, sqlite3.Error) from exc


__all__ = ["CHECKPOINT_EVERY", "SLICE", "DirectSQLite", "insert"]
