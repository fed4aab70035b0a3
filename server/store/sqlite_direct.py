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
and nothing dropped when the loop runs them itself). The loop inserts SLICE records at a time (a
fraction of a millisecond) and yields before the next slice, so a request waits on one at most;
once records queue up, the store's `pace` makes the slices larger (at 64 concurrent requests each
turn of the loop brings more records than SLICE a turn can take).

A transaction holds a few slices (each commit writes the log's pages: it is the costly part of a
small slice), not the whole batch, which keeps the write lock short: another worker
writing to the same file gets its turn between transactions. A transaction is all-or-nothing; a
batch that fails part way is retried whole by the writer, and its committed transactions change
nothing the second time (INSERT … ON CONFLICT DO NOTHING). `committed` counts the records of the
batch under way that are in, for a writer stopped part way (a close that times out: what its open
transaction holds is committed first), so none of them is counted as lost.
Stored bodies cut a slice short at SLICE_BYTES, and a slice with that much is inserted from a
thread, in a transaction of its own: one large body alone took ~300 ms to insert, which the loop
must not spend. That thread is never abandoned: a cancelled await leaves it the connection until it ends (`settle`).

The file: the store names the file it migrated (`expect`), and the connection opens that file only
(read-write, never creating one). A file deleted or replaced at the path, whether before the first
write or after, is `moved`: the store migrates the path again (its engine's pooled connections
have the old file open too) and names the new file.

Checkpoints (copying the write-ahead log into the database file, with an fsync) are the one part
that is slow: SQLite runs one inside the commit that takes the log past 1,000 pages, and that
commit took ~5 ms where the others took well under one. This connection turns them off and starts
a PASSIVE checkpoint in a thread after every CHECKPOINT_EVERY records instead (one GIL handoff per
thousands of records; writers go on meanwhile, which WAL allows), in a task of its own, so that a
slow disk never makes a committed batch look failed.

The connection waits for no lock (SQLite's busy timeout is 0: a busy wait here would stop the event
loop). A transaction that finds the file locked by another connection is retried after a short sleep,
until `busy_limit` seconds have passed; then the "database is locked" error goes to the writer like
any other, which counts the database as unavailable and retries the batch with backoff.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

from sqlalchemy import exc as sa_exc

from server.store.engine import sqlite_file_id
from server.store.rows import REQUEST_BODY, RESPONSE_BODY, InsertSQL, Prepared

# Records per turn of the event loop while the writer keeps up: ~0.15 ms of its time, so a request
# that comes meanwhile waits no longer. With 64 a slice took ~0.6 ms, and a request, which needs a
# few turns of the loop, met several slices: one request in a hundred waited ~2 ms more at one
# request at a time.
SLICE = 16
# Records per transaction: SLICES_PER_GROUP slices, GROUP at least. Each commit costs ~110 µs (its log
# pages written): benchmarks/store_write.py measured 21, 18, 16 and 15 µs a record with 16, 32, 64 and
# 128 records a commit. Once records queue up the slices grow, and the transactions with them: with
# GROUP alone at 64 concurrent requests, the proxy took ~3 µs more CPU a request (paired wrk runs).
GROUP = 64
SLICES_PER_GROUP = 4
# Bytes of stored bodies that end a slice; a slice with this much is inserted from a thread.
SLICE_BYTES = 256 * 1024
# Sleeps between tries while another connection holds the write lock: short first (a commit holds it
# for about a millisecond), then capped, so a long holder is polled a few dozen times a second.
_BUSY_FIRST = 0.001
_BUSY_CAP = 0.025
_BUSY_CODES = (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)
# Records between checkpoints: at ~0.4 log pages a record, about what SQLite's own 1,000 pages are.
CHECKPOINT_EVERY = 2000

log = logging.getLogger("axonsim.store")


def _slice() -> int:
    return SLICE


def _busy(exc: sqlite3.Error) -> bool:
    return isinstance(exc, sqlite3.OperationalError) and getattr(exc, "sqlite_errorcode", None) in _BUSY_CODES


def insert(db: sqlite3.Connection, statements: list[tuple[str, Any]], commit: bool = True) -> None:
    """`statements` in the open transaction, or a new one; committed if `commit`. IMMEDIATE takes
    the write lock first, so a file another connection is writing fails before any work is done.
    A failure rolls back the whole transaction, earlier statements included."""
    if not db.in_transaction:
        db.execute("BEGIN IMMEDIATE")
    try:
        for stmt, params in statements:
            if type(params) is list:
                db.executemany(stmt, params)
            else:
                db.execute(stmt, params)
        if commit:
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
    """The writer's connection to a SQLite file (not `:memory:`), used from the event loop (and from a
    thread for a slice of large bodies, while the loop awaits it)."""

    def __init__(self, path: str, sql: InsertSQL, busy_limit: float) -> None:
        self.path = path
        self._sql = sql
        self._busy_limit = busy_limit
        self._db: sqlite3.Connection | None = None
        self._file: tuple[int, int] | None = None  # (device, inode) of the file the store migrated
        self._unchecked = 0  # records committed since the last checkpoint
        self._checkpoint: asyncio.Task[None] | None = None
        # A slice being inserted from a thread, and the batch position it reaches. Its await may be
        # cancelled (a close that times out, the write timeout) while the thread goes on: until it
        # ends the connection is the thread's, so everything else waits for it (or closes after it).
        self._thread: asyncio.Future[None] | None = None
        self._thread_end = 0
        self.committed = 0  # records of the batch under way that are in (kept across its retries)
        self._batch: list[Prepared] | None = None  # that batch
        self.pace: Callable[[], int] = _slice  # records a turn (the store's: more once records queue up)

    def expect(self, file: tuple[int, int] | None) -> None:
        """The file at `path` now has the schema (the store migrated it): the one to write to."""
        if file != self._file:
            self.close()
            self._batch = None  # what a retried batch had in the old file is not in this one
            self.committed = 0
        self._file = file

    def moved(self) -> bool:
        """Whether the file at `path` is no longer the one the store migrated (deleted, or replaced by
        a restored backup): writes would go where nobody reads, and the engine's pooled connections
        have the old file open too."""
        return self._file is not None and self._file != sqlite_file_id(self.path)

    def close(self) -> None:
        """Close the connection (once a thread inserting on it is done); the next write opens it again."""
        db, self._db = self._db, None
        if db is None:
            return
        thread = self._thread
        if thread is not None and not thread.done():
            thread.add_done_callback(lambda _: db.close())
        else:
            db.close()

    async def settle(self, timeout: float | None = None) -> None:
        """Wait for a slice still being inserted from a thread, whose await was cancelled."""
        thread = self._thread
        if thread is not None:
            await asyncio.wait({thread}, timeout=timeout)

    async def aclose(self, timeout: float = 5.0) -> None:
        """Close, after a checkpoint or a thread's insert under way (bounded: they only finish work
        already begun)."""
        waits = {t for t in (self._checkpoint, self._thread) if t is not None}
        if waits:
            await asyncio.wait(waits, timeout=timeout)
        self.close()

    def _connect(self) -> sqlite3.Connection:
        # mode=rw: the file the store migrated, or an error; a missing file is not created empty.
        # isolation_level None: transactions are exactly the BEGIN/COMMIT written in insert().
        # check_same_thread off: a slice of large bodies is inserted from a thread, while the loop waits.
        db = sqlite3.connect(f"file:{quote(self.path)}?mode=rw", uri=True, timeout=0, isolation_level=None,
                             check_same_thread=False)
        try:
            if sqlite_file_id(self.path) != self._file:
                raise sqlite3.OperationalError("the database file changed since it was migrated")
            # The engine's connections set WAL on the file when they migrate it; the mode is kept in
            # the file. The rest is per connection (server/store/engine.py).
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute("PRAGMA temp_store=MEMORY")
            db.execute("PRAGMA foreign_keys=ON")
            db.execute("PRAGMA wal_autocheckpoint=0")  # write() starts _checkpoint in a thread instead
        except BaseException:
            db.close()
            raise
        self._db = db
        return db

    async def write(self, batch: list[Prepared]) -> None:
        """Insert `batch` a slice at a time. Errors come as SQLAlchemy's, as through the engine, so
        the writer tells a record the database refuses from a database that is unavailable."""
        sql = self._sql
        await self.settle()
        if batch is not self._batch:  # (a retry of the same batch keeps what its last try got in)
            self._batch = batch
            self.committed = 0
        i, n = 0, len(batch)
        group = 0  # where the open transaction's records begin (none open when it is i)
        try:
            while i < n:
                if i:
                    await asyncio.sleep(0)  # the loop's turn between slices
                j, size = i, 0
                most = self.pace()
                while j < n and j - i < most and size < SLICE_BYTES:
                    row = batch[j][0]
                    size += len(row[REQUEST_BODY] or "") + len(row[RESPONSE_BODY] or "")
                    j += 1
                large = size >= SLICE_BYTES
                if large and i > group:
                    self._commit_open()  # the thread's slice goes in a transaction of its own
                    group = i
                part = batch[i:j]
                statements = sql.requests.statements([p[0] for p in part])
                attempts = [a for p in part for a in p[1]]
                if attempts:
                    statements += sql.attempts.statements(attempts)
                self._thread_end = j
                end = large or j == n or j - group >= max(GROUP, SLICES_PER_GROUP * most)
                await self._run(statements, large, end, fresh=i == group)
                if end:
                    group = j
                    self.committed = max(self.committed, j)
                self._unchecked += j - i
                i = j
        except asyncio.CancelledError:
            # Stopped between slices (a close that gives up, the write timeout): the slices already
            # inserted are committed and count as in; the rest of the batch is the writer's to retry.
            if i > group:
                try:
                    self._commit_open()
                except sa_exc.DBAPIError:
                    pass  # not in, then: counted as the rest of the batch is
            raise
        finally:
            db = self._db
            if db is not None and db.in_transaction and self._thread is None:
                try:
                    db.execute("ROLLBACK")  # (only after a failure: every other way out commits)
                except sqlite3.Error:
                    self.close()
        self.committed = 0  # the writer settles the whole batch now, before it next awaits
        self._batch = None
        if self._unchecked >= CHECKPOINT_EVERY and self._checkpoint is None:
            self._unchecked = 0
            self._checkpoint = asyncio.create_task(self._checkpoint_now())

    def take_committed(self, batch: list[Prepared]) -> int:
        """How many records at the front of `batch` a stopped or failed write got in; forgotten
        here, as the caller settles them (a thread still inserting reports its own at its end)."""
        mine = self._batch
        if self._thread is not None or not mine or not batch or mine[0] is not batch[0]:
            return 0  # (the same front: that batch, or the record written alone, one by one, at its front)
        n, self.committed = self.committed, 0
        return n

    def _commit_open(self) -> None:
        """Commit the open transaction (the slices since the last commit); self.committed follows."""
        db = self._db
        if db is not None and db.in_transaction and self._thread is None:
            try:
                db.execute("COMMIT")
            except sqlite3.Error as exc:
                self._failed(exc)
                raise sa_exc.DBAPIError.instance("COMMIT", None, exc, sqlite3.Error) from exc
            self.committed = max(self.committed, self._thread_end)

    def _failed(self, exc: sqlite3.Error) -> None:
        # (An open transaction is rolled back by write()'s `finally`, or with the connection.)
        if not isinstance(exc, (sqlite3.IntegrityError, sqlite3.DataError)):
            self.close()  # reopened on the next write: the file may have come back

    async def _checkpoint_now(self) -> None:
        try:
            await asyncio.to_thread(_checkpoint, self.path)
        finally:
            self._checkpoint = None

    def _thread_done(self, thread: asyncio.Future[None]) -> None:
        if self._thread is thread:
            self._thread = None
        if not thread.cancelled() and thread.exception() is None:
            # In, whether or not its await was still there to hear it (a writer stopped meanwhile).
            self.committed = max(self.committed, self._thread_end)

    async def _run(self, statements: list[tuple[str, Any]], large: bool, commit: bool = True,
                   fresh: bool = True) -> None:
        """Insert a slice: in a new transaction when `fresh` (a lock held elsewhere is waited out),
        else in the open one (a failure rolls it back whole, so it is not retried here)."""
        loop = asyncio.get_running_loop()
        give_up = loop.time() + self._busy_limit
        pause = _BUSY_FIRST
        while True:
            try:
                db = self._db if self._db is not None else self._connect()
                if large:
                    thread = self._thread = loop.run_in_executor(None, insert, db, statements)
                    thread.add_done_callback(self._thread_done)
                    await asyncio.shield(thread)  # cancelled, it leaves the thread to finish (see _thread)
                else:
                    insert(db, statements, commit)
                return
            except sqlite3.Error as exc:
                if fresh and _busy(exc) and loop.time() + pause < give_up:
                    await asyncio.sleep(pause)
                    pause = min(pause * 2, _BUSY_CAP)
                    continue
                self._failed(exc)
                raise sa_exc.DBAPIError.instance(statements[0][0][:200], None, exc, sqlite3.Error) from exc


__all__ = ["CHECKPOINT_EVERY", "GROUP", "SLICE", "SLICES_PER_GROUP", "SLICE_BYTES", "DirectSQLite", "insert"]
