"""The store: a non-blocking `submit`, a bounded in-memory buffer, and one task that writes it in batches.

Theory of operation. The proxy calls `submit(record)` once per client request; it appends to a
deque and returns — it never awaits the database. One writer task takes up to `batch_size` records
(waiting at most `flush_interval` for a partial batch to fill), turns them into rows (scrubbing
secrets on the way, off the request's path) and writes them in one transaction (to a SQLite file:
from the event loop itself, one transaction per slice of the batch; server.store.sqlite_direct
says why). Rows are tuples
executed with INSERT statements compiled once per engine (server.store.rows), so the per-record
cost is building one tuple per row, not SQLAlchemy compiling and processing a dict per row.

Rules:
1. Bounded memory. Records held (waiting + being written) never exceed `queue_size`; a record
   submitted beyond that is dropped and counted, never blocks the caller.
2. A batch leaves memory only once it is committed. If the database is down the same batch is
   retried with capped exponential backoff while new records queue behind it, so an outage loses
   nothing within the bound.
3. Exactly one row per request id. Inserts are ON CONFLICT DO NOTHING on the primary keys, so a
   batch retried after a commit whose acknowledgement was lost changes nothing the second time.
4. One bad record cannot wedge the queue: a batch the database rejects for its data (not for being
   unreachable) is written record by record, and only the offending records are dropped.
5. Logs say what changed, once: database down, database back, buffer full, buffer has room.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections import deque
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy.ext.asyncio import AsyncEngine

from axonsim.config import Store as StoreSettings
from server.store.engine import (
    StoreUnavailable,
    StoreUnusable,
    is_memory_sqlite,
    make_engine,
    resolve_url,
    safe_url,
    sqlite_file_id,
    url_password,
)
from server.store.migrations import upgrade
from server.store.records import RequestRecord
from server.store.rows import ID, REQUEST_BODY, RESPONSE_BODY, InsertSQL, Prepared, RowBuilder
from server.store.scrub import Scrubber, secrets_from_config
from server.store.sqlite_direct import DirectSQLite, insert

if TYPE_CHECKING:
    from axonsim.config import Config

log = logging.getLogger("axonsim.store")


# SQLSTATE classes of errors that are the data's fault: a data exception (22), an integrity
# constraint (23), a program limit such as a value too large for an index (54). Any other means the
# database cannot take writes now (read-only after a failover: 25006; a lock or statement timeout:
# 55P03, 57014; a full disk: 53100; tables gone: 42P01), whatever name the driver gives the error.
_DATA_SQLSTATES = ("22", "23", "54")


def _sqlstate(exc: BaseException) -> str | None:
    """The SQLSTATE a PostgreSQL error carries (SQLAlchemy's asyncpg adapter sets it on `orig`)."""
    for e in (getattr(exc, "orig", None), exc):
        code = getattr(e, "sqlstate", None)
        if isinstance(code, str) and len(code) == 5:
            return code
    return None


def _classify(exc: BaseException) -> str:
    """"record" when the data itself was refused, "down" when the database is unavailable, and
    "unknown" when only asking the database whether it still answers can tell the two apart."""
    if isinstance(exc, StoreUnusable):
        return "down"  # tables the store cannot write (a degraded start): kept until an operator mends them
    code = _sqlstate(exc)
    if code is not None:
        # Asking would not tell: a database that refuses every INSERT still answers SELECT 1, and
        # its records were then dropped one by one as if each were at fault.
        return "record" if code[:2] in _DATA_SQLSTATES else "down"
    if isinstance(exc, (sa_exc.IntegrityError, sa_exc.DataError, TypeError, ValueError, ArithmeticError)):
        return "record"
    if isinstance(exc, sa_exc.StatementError) and not isinstance(exc, sa_exc.DBAPIError):
        return "record"  # a value the driver could not bind
    if isinstance(exc, (OSError, TimeoutError, sa_exc.OperationalError, sa_exc.InterfaceError,
                        sa_exc.ProgrammingError, sa_exc.DisconnectionError, sa_exc.TimeoutError)):
        return "down"  # ProgrammingError: the tables are gone, so the schema is re-checked
    if isinstance(exc, sa_exc.DBAPIError) and exc.connection_invalidated:
        return "down"
    return "unknown"


# Seconds close() gives a SQLite checkpoint or a slice being inserted from a thread to end.
DIRECT_CLOSE_WAIT = 5.0

# Bytes of bodies above which a record's rows are prepared in a thread (when bodies are stored).
_BODIES_IN_A_THREAD = 64 * 1024
# Records prepared (scrubbed, made rows) between the loop's turns: ~0.1 ms of its time, as long as
# a slice of SQLite inserts (server/store/sqlite_direct.py), so a request waits on one at most;
# more once records queue up (`_pace`), or the writer could not keep up.
_PREPARE_SLICE = 16
_BEHIND_STEP = 4
_PACE_MOST = 512


def _body_size(rec: RequestRecord) -> int:
    return len(rec.request_body or "") + len(rec.response_body or "")


async def _wait(event: asyncio.Event, timeout: float) -> bool:
    try:
        await asyncio.wait_for(event.wait(), timeout)
        return True
    except TimeoutError:
        return False


async def _sqlite_write(aconn: Any, statements: list[tuple[str, Any]]) -> None:
    """Run `statements` and commit in one call to aiosqlite's worker thread (an in-memory database,
    which only the engine's connection can see). Through SQLAlchemy's
    adapter each statement costs three round trips to that thread (cursor, execute, close), plus
    the commit; each round trip wakes the event loop and passes the GIL between the two threads,
    which under load cost more CPU than the inserts. Driver errors are wrapped as SQLAlchemy wraps
    them, so the writer tells a bad record from a database that is down just as before."""
    try:
        await aconn._execute(insert, aconn._conn, statements)
    except sqlite3.Error as exc:
        raise sa_exc.DBAPIError.instance(statements[0][0][:200], None, exc, sqlite3.Error) from exc


class Store:
    """Usage-log and trace store. Use from one event loop: `await start()`, `submit()` per request,
    `await close()` on shutdown (or `async with Store(...)`). `engine` serves server.store.queries."""

    def __init__(
        self,
        settings: StoreSettings | None = None,
        *,
        config_path: str | Path | None = None,
        secrets: Iterable[str] = (),
        schema: str | None = None,
        connect_timeout: float = 5.0,
        write_timeout: float = 30.0,
        retry_base: float = 0.1,
        retry_cap: float = 5.0,
        idle_check: float = 5.0,
    ) -> None:
        s = settings if settings is not None else StoreSettings()
        self.settings = s
        self.url = resolve_url(s.url, config_path)
        self.safe_url = safe_url(self.url)
        self._schema = schema
        self._connect_timeout = connect_timeout
        self._write_timeout = write_timeout
        self._retry_base = retry_base
        self._retry_cap = retry_cap
        # Seconds without records after which the writer asks the database whether it still answers:
        # db_up (metrics, /admin/store) must not say "up" through an outage just because it is quiet.
        self._idle_check = idle_check
        self._bound = s.queue_size
        self._batch = min(s.batch_size, s.queue_size)
        self._interval = s.flush_interval
        self._secrets = list(secrets)
        self._scrub = self._make_scrubber(self._secrets)
        self._rows = RowBuilder(self._scrub, s.store_bodies)
        self._sql: InsertSQL | None = None
        self._direct: DirectSQLite | None = None  # a SQLite file's writes (server/store/sqlite_direct.py)

        self._buf: deque[RequestRecord] = deque()
        self._inflight: list[Prepared] = []
        self._engine: AsyncEngine | None = None
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()  # the buffer went from empty to non-empty
        self._full = asyncio.Event()  # a full batch is waiting, or someone wants it written now
        self._kick = asyncio.Event()  # cut a retry backoff short (on close)
        self._progress = asyncio.Event()  # some records were settled (written or dropped)
        self._ready = False  # schema known to be at head on this engine
        self._closing = False
        self._closed = False
        self._flushers = 0
        self._overflowing = False
        self._dropped_in_episode = 0
        self._failures = 0
        self._accepted = 0  # records taken into the buffer
        self._settled = 0  # of those, records written or dropped since (what flush() waits on)

        self._db_up = False
        self.submitted = 0  # records offered to submit()
        self.written = 0  # records committed to the database
        self.dropped = 0  # records lost: buffer full, rejected by the database, or unwritten at close
        self.last_error: str | None = None

    @classmethod
    def from_config(cls, config: Config, config_path: str | Path | None = None, **kw: Any) -> Store:
        """The store a proxy with `config` needs: its settings, and every key in it as a secret."""
        return cls(config.store, config_path=config_path, secrets=secrets_from_config(config), **kw)

    # ---------------------------------------------------------------------------------------------
    # What the proxy and metrics read

    @property
    def engine(self) -> AsyncEngine:
        if self._engine is None:
            raise RuntimeError("the store is not started")
        return self._engine

    @property
    def store_bodies(self) -> bool:
        return self.settings.store_bodies

    @property
    def queued(self) -> int:
        """Records in memory, not yet committed (the queue-depth gauge)."""
        return len(self._buf) + len(self._inflight)

    @property
    def db_up(self) -> bool:
        return self._db_up

    def stats(self) -> dict[str, Any]:
        return {"submitted": self.submitted, "queued": self.queued, "written": self.written,
                "dropped": self.dropped, "db_up": self._db_up, "last_error": self.last_error}

    def set_secrets(self, secrets: Iterable[str]) -> None:
        """Replace the secrets to scrub (on config reload); applies to records not yet prepared."""
        self._secrets = list(secrets)
        self._scrub = self._make_scrubber(self._secrets)
        self._rows = RowBuilder(self._scrub, self.settings.store_bodies)

    def _make_scrubber(self, secrets: list[str]) -> Scrubber:
        pw = url_password(self.url)
        return Scrubber([*secrets, pw] if pw else secrets)

    # ---------------------------------------------------------------------------------------------
    # Lifecycle

    async def start(self) -> None:
        """Open the database and migrate it to head; start the writer. Raises StoreUnavailable when
        the database cannot be reached, unless on_unreachable is "degraded"."""
        if self._task is not None:
            return
        self._engine = make_engine(self.url, connect_timeout=self._connect_timeout, schema=self._schema)
        self._sql = InsertSQL(self._engine.dialect)
        u = self._engine.url
        if u.get_backend_name() == "sqlite" and u.database and not is_memory_sqlite(self.url):
            self._direct = DirectSQLite(u.database, self._sql, self._connect_timeout)
            self._direct.pace = self._pace
        try:
            await self._migrate()
            self._ready = True
            self._db_up = True
        except Exception as exc:
            reason = self._describe(exc)
            self.last_error = reason
            if self.settings.on_unreachable != "degraded":
                await self._engine.dispose()
                self._engine = None
                if isinstance(exc, StoreUnusable):
                    raise StoreUnavailable(f"the store database {self.safe_url} cannot be used: {reason}",
                                           unusable=True) from exc
                raise StoreUnavailable(f"the store database {self.safe_url} is unavailable: {reason}") from exc
            log.warning("store degraded: the database %s is unavailable (%s); serving on, keeping up to %d "
                        "records in memory and retrying", self.safe_url, reason, self._bound)
        self._task = asyncio.create_task(self._run(), name="axonsim-store-writer")

    async def close(self, timeout: float | None = 30.0) -> None:
        """Write everything submitted so far, then stop. If the database is still unavailable after
        `timeout` seconds, whatever is left is counted as dropped and logged."""
        if self._closed:
            return
        self._closing = True
        for ev in (self._wake, self._full, self._kick):
            ev.set()
        task = self._task
        if task is not None:
            done, _ = await asyncio.wait({task}, timeout=timeout)
            if not done:
                task.cancel()
                await asyncio.wait({task}, timeout=5.0)
            elif not task.cancelled() and task.exception() is not None:
                log.error("store writer failed", exc_info=task.exception())
        direct = self._direct
        if direct is not None:
            # One bounded wait for a checkpoint or a slice going in from a thread; what is in by then
            # counts as written, and the connection closes (after a thread still running, if any).
            await direct.aclose(DIRECT_CLOSE_WAIT)
            self._settle_committed()  # stopped part way through a batch: its first slices are in
        lost = self.queued
        if lost:
            self._buf.clear()
            self._inflight = []
            self._drop_accepted(lost)
            log.error("store closed with the database unavailable: %d records were not written", lost)
        self._closed = True
        if self._engine is not None:
            await self._engine.dispose()

    async def __aenter__(self) -> Store:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ---------------------------------------------------------------------------------------------
    # The hot path

    def submit(self, record: RequestRecord) -> bool:
        """Hand over one request's record. Never blocks, never awaits; False when it was dropped
        (buffer full or store closed). The store owns the record from here on."""
        self.submitted += 1
        if self._closing:
            self.dropped += 1
            return False
        if len(self._buf) + len(self._inflight) >= self._bound:
            self.dropped += 1
            self._dropped_in_episode += 1
            if not self._overflowing:
                self._overflowing = True
                log.error("store buffer full (%d records, database %s): dropping new records until it drains",
                          self._bound, "down" if not self._db_up else "slow")
            return False
        self._buf.append(record)
        self._accepted += 1
        self._wake.set()
        if len(self._buf) >= self._batch:
            self._full.set()
        return True

    async def flush(self, timeout: float | None = None) -> bool:
        """Wait until every record submitted before this call is written (or dropped), without
        waiting for flush_interval. False if `timeout` passed first (e.g. the database is down)."""
        target = self._accepted
        self._flushers += 1
        self._full.set()
        try:
            async with asyncio.timeout(timeout):
                while self._settled < target:
                    self._progress.clear()
                    await self._progress.wait()
            return True
        except TimeoutError:
            return False
        finally:
            self._flushers -= 1

    # ---------------------------------------------------------------------------------------------
    # The writer task

    async def _run(self) -> None:
        # A bug in the loop must not silently stop all writing for the life of the process.
        while True:
            try:
                await self._loop()
                return
            except Exception:
                log.exception("store writer failed; restarting it")
                await asyncio.sleep(self._retry_cap)

    async def _loop(self) -> None:
        while True:
            if not self._inflight:
                if not self._buf:
                    if self._closing:
                        return
                    self._wake.clear()
                    if self._db_up:
                        if not await _wait(self._wake, self._idle_check):
                            await self._still_up()
                    elif not await _wait(self._wake, self._backoff()):
                        await self._probe()  # idle while down: find out when it is back, for metrics
                    continue
                self._full.clear()
                if len(self._buf) < self._batch and not self._closing and not self._flushers:
                    await _wait(self._full, self._interval)
                await self._take_batch()
                if not self._inflight:
                    continue
            if await self._write_inflight():
                self._failures = 0
                self._mark_up()
            else:
                self._failures += 1
                self._kick.clear()
                if not self._closing:
                    await _wait(self._kick, self._backoff())
                elif self._failures > 1:
                    # Closing with the database down: keep retrying until close() gives up on us.
                    await asyncio.sleep(min(self._backoff(), 1.0))

    def _backoff(self) -> float:
        return min(self._retry_cap, self._retry_base * 2 ** max(self._failures - 1, 0))

    async def _take_batch(self) -> None:
        # Records move to _inflight one by one so the bound in submit() holds while we yield.
        self._inflight = []
        buf = self._buf
        bodies = self._rows.store_bodies
        since_yield = 0
        step = self._pace()  # records prepared between the loop's turns (looked up once a turn)
        # Behind, a batch takes up to four times batch_size: each batch costs a few turns of the
        # loop whatever its size (PostgreSQL: its round trips), and at 64 connections each turn
        # brings many records, so batches of batch_size alone fell behind and the queue overflowed.
        # (At most half the queue: records keep coming while a batch is written, and take the rest.)
        most = max(self._batch, min(self._batch * _BEHIND_STEP, self._bound // 2)) if self._behind() else self._batch
        while buf and len(self._inflight) < most:
            # Taken from the buffer only once prepared: while a thread prepares it, it is still
            # counted (queued, the bound) and, if close() gives up meanwhile, counted as dropped.
            rec = buf[0]
            try:
                rows = self._rows  # looked up per record: set_secrets may replace it
                if bodies and _body_size(rec) > _BODIES_IN_A_THREAD:
                    # Scrubbing a large body reads every string of it (tens of ms a MiB): in a thread,
                    # whose GIL slices leave the event loop its turn, not as one block of the loop.
                    prepared = await asyncio.to_thread(rows.prepare, rec)
                else:
                    prepared = rows.prepare(rec)
            except Exception:
                buf.popleft()
                log.exception("store: record %s cannot be stored; dropped", getattr(rec, "id", "?"))
                self._drop_accepted(1)
                continue
            buf.popleft()
            self._inflight.append(prepared)
            # Scrubbing runs on the proxy's event loop: hand it back now and then (large bodies
            # especially), so preparing a batch never holds up requests in flight.
            since_yield += 1
            if bodies:
                row = prepared[0]
                since_yield += (len(row[REQUEST_BODY] or "") + len(row[RESPONSE_BODY] or "")) // 4096
            if since_yield >= step:
                since_yield = 0
                await asyncio.sleep(0)
                step = self._pace()

    def _behind(self) -> bool:
        """Records queue up faster than small steps take them: a whole batch or more is waiting
        beyond the one being written (under concurrent traffic every turn of the loop brings many),
        or the queue is half full (a queue_size of two batches or less would fill first)."""
        return len(self._buf) + len(self._inflight) >= min(2 * self._batch, self._bound // 2)

    def _pace(self) -> int:
        """Records the writer takes per turn of the loop (prepared, or inserted into SQLite): 16 while
        it keeps up; behind, more the longer the queue, as each turn then brings more records the
        more requests are in flight (at 128 connections 64 a turn fell behind too)."""
        if not self._behind():
            return _PREPARE_SLICE
        return min(_PACE_MOST, max(_PREPARE_SLICE * _BEHIND_STEP, self.queued // 16))

    def _settle_committed(self) -> None:
        """The records of the in-flight batch that a stopped or failed write got in: settled now,
        so that a retry, or the one-by-one writes after a rejected record, start after them."""
        direct = self._direct
        if direct is not None and self._inflight:
            n = min(direct.take_committed(self._inflight), len(self._inflight))
            if n:
                del self._inflight[:n]
                self._settle(n)

    async def _write_inflight(self) -> bool:
        """Write the in-flight batch; True when nothing of it is left in memory."""
        batch = self._inflight
        try:
            await self._write(batch)
        except Exception as exc:
            self._settle_committed()
            if not await self._record_at_fault(exc):
                await self._went_down(exc)
                return False
            return await self._write_one_by_one()
        self._inflight = []
        self._settle(len(batch))
        return True

    async def _write_one_by_one(self) -> bool:
        while self._inflight:
            item = self._inflight[0]
            try:
                await self._write([item])
            except Exception as exc:
                if not await self._record_at_fault(exc):
                    await self._went_down(exc)
                    return False
                log.error("store: the database rejected record %s (%s); dropped", item[0][ID], self._describe(exc))
                self._inflight.pop(0)
                self._drop_accepted(1)
                continue
            self._inflight.pop(0)
            self._settle(1)
        return True

    async def _write(self, batch: list[Prepared]) -> None:
        engine = self.engine
        sql = self._sql
        assert sql is not None
        direct = self._direct
        async with asyncio.timeout(self._write_timeout):
            if not self._ready:
                await self._migrate()
                self._ready = True
            if direct is not None:
                if direct.moved():
                    # The file was deleted or replaced under us: writing on would fill a file nobody
                    # reads. The path gets the schema (a new file), then the connection is reopened.
                    await self._migrate()
                await direct.write(batch)
                return
            statements = sql.requests.statements([b[0] for b in batch])
            attempts = [a for b in batch for a in b[1]]
            if attempts:
                statements += sql.attempts.statements(attempts)
            if sql.sqlite:  # an in-memory database (a file's rows go through self._direct)
                async with engine.connect() as conn:
                    raw = await conn.get_raw_connection()
                    await _sqlite_write(raw.driver_connection, statements)
                return
            async with engine.begin() as conn:
                for stmt, params in statements:
                    await conn.exec_driver_sql(stmt, params)

    async def _migrate(self) -> None:
        u = self.engine.url
        if u.get_backend_name() == "sqlite" and u.database and not is_memory_sqlite(self.url):
            folder = Path(u.database).parent
            if not folder.is_dir():
                # Checked here rather than left to the driver: a failed aiosqlite connect leaves its
                # worker thread reporting to the event loop, which at start-up is about to close.
                raise FileNotFoundError(f"the folder {folder} of the SQLite database does not exist")
        direct = self._direct
        if direct is not None:
            # Asked before the pooled connections close: while they hold the old file open, a new one
            # at the path cannot reuse its inode, so a replaced file is told apart.
            if direct.moved():
                log.warning("store: the SQLite file %s was deleted or replaced while open; writing to the "
                            "file now at that path", direct.path)
            # Fresh connections, so the schema is checked in the file now at the path (pooled ones
            # may have a deleted or replaced file open), which the writer's connection then expects.
            await self.engine.dispose()
            await upgrade(self.engine)
            direct.expect(sqlite_file_id(direct.path))
            return
        await upgrade(self.engine)

    async def _record_at_fault(self, exc: BaseException) -> bool:
        kind = _classify(exc)
        if kind != "unknown":
            return kind == "record"
        try:
            async with asyncio.timeout(self._connect_timeout + 1.0), self.engine.connect() as conn:
                await conn.execute(sa.text("SELECT 1"))
        except Exception:
            return False
        return True  # the database answers, so it is this data it will not take

    async def _still_up(self) -> None:
        """Idle and believed up: one cheap query to find out (an outage is then logged and counted)."""
        try:
            async with asyncio.timeout(self._connect_timeout + 1.0), self.engine.connect() as conn:
                await conn.execute(sa.text("SELECT 1"))
        except Exception as exc:
            await self._went_down(exc)

    async def _probe(self) -> None:
        try:
            async with asyncio.timeout(self._write_timeout):
                await self._migrate()
            self._ready = True
        except Exception as exc:
            self._failures += 1
            await self._went_down(exc)
            return
        self._failures = 0
        self._mark_up()

    # ---------------------------------------------------------------------------------------------
    # Bookkeeping

    def _settle(self, n: int) -> None:
        self.written += n
        self._settled += n
        self._progress.set()
        self._maybe_room()

    def _drop_accepted(self, n: int) -> None:
        self.dropped += n
        self._settled += n
        self._progress.set()
        self._maybe_room()

    def _maybe_room(self) -> None:
        if self._overflowing and self.queued < self._bound:
            self._overflowing = False
            log.warning("store buffer has room again; %d records were dropped while it was full",
                        self._dropped_in_episode)
            self._dropped_in_episode = 0

    async def _went_down(self, exc: BaseException) -> None:
        """`exc` says the database is unavailable. One that did not answer in time (a write, a check)
        most likely met a pooled connection the network lost without a word (a NAT or firewall that
        forgot it, a failover that moved the address): the pool's ping on checkout has no deadline
        of its own, so each such connection cost a whole timeout in turn (five in the pool: minutes
        without a write while the database took new connections). The pool is replaced, so the
        next try opens a fresh connection; the old one's connections are let go without the
        goodbye a close would wait on for ever (asyncpg terminates them when they are collected).
        SQLite's connections are files, never lost that way."""
        if isinstance(exc, TimeoutError) and self.engine.url.get_backend_name() != "sqlite":
            await self.engine.dispose(close=False)
        self._mark_down(exc)

    def _mark_down(self, exc: BaseException) -> None:
        self._ready = False  # re-check the schema on reconnection (it may be a new, empty database)
        self.last_error = self._describe(exc)
        if self._db_up:
            self._db_up = False
            log.warning("store: database %s unavailable (%s); keeping up to %d records in memory and retrying",
                        self.safe_url, self.last_error, self._bound)

    def _mark_up(self) -> None:
        if not self._db_up:
            self._db_up = True
            self.last_error = None
            log.warning("store: database %s is back; %d records waiting to be written", self.safe_url, self.queued)

    def _describe(self, exc: BaseException) -> str:
        orig = getattr(exc, "orig", None) or exc
        text = f"{type(orig).__name__}: {orig}".splitlines()[0][:300]
        return self._scrub.text(text) or ""
