"""The store's SQLite writes on the event loop (server/store/sqlite_direct.py): slices with the loop's
turn between them, another connection's write lock waited out without stopping the loop,
checkpoints in a thread, a replaced file noticed after an error, two processes sharing one file, an
in-memory database; and a writer that keeps up with a busy loop (SQLite and PostgreSQL)."""

from __future__ import annotations

import asyncio
import os
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from test_store import SECRETS, WAIT, SqliteDB, pg, rec, until  # noqa: F401 (pg: the fixture)

from axonsim.config import Store as StoreSettings
from server.store import Store, sqlite_direct, writer


def _store(path: Path, busy_limit: float = 0.2, **settings: Any) -> Store:
    return Store(StoreSettings(url=f"sqlite+aiosqlite:///{path}", **settings), secrets=SECRETS,
                 connect_timeout=busy_limit, write_timeout=10.0, retry_base=0.02, retry_cap=0.2)


Hook = Callable[[int, list[tuple[str, Any]], bool], Awaitable[None]]


class SliceHook:
    """Wraps a store's DirectSQLite._run (one call a slice): counts the calls and awaits `before`
    and `after` around each, given the call's number (from 1), its statements and whether it commits."""

    def __init__(self, store: Store, monkeypatch: pytest.MonkeyPatch, before: Hook | None = None,
                 after: Hook | None = None) -> None:
        direct = store._direct
        assert direct is not None
        self.calls = 0
        real = direct._run

        async def run(statements: list[tuple[str, Any]], large: bool, commit: bool = True,
                      fresh: bool = True) -> None:
            self.calls += 1
            n = self.calls
            if before is not None:
                await before(n, statements, commit)
            await real(statements, large, commit, fresh)
            if after is not None:
                await after(n, statements, commit)

        monkeypatch.setattr(direct, "_run", run)


class Ticker:
    """Counts turns of the event loop: a loop stopped by a blocking call stops counting."""

    def __init__(self, every: float = 0.001) -> None:
        self.ticks = 0
        self._every = every  # 0: every turn of the loop
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while True:
            self.ticks += 1
            await asyncio.sleep(self._every)

    def __enter__(self) -> Ticker:
        self._task = asyncio.ensure_future(self._run())
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()


async def test_the_writers_connection_waits_for_no_lock_and_checkpoints_only_when_told(tmp_path: Path) -> None:
    store = _store(tmp_path / "x.db")
    await store.start()
    try:
        store.submit(rec(0))
        assert await store.flush(WAIT)
        db = store._direct._db  # type: ignore[union-attr]
        assert db is not None
        got = [db.execute(f"PRAGMA {p}").fetchone()[0] for p in
               ("journal_mode", "synchronous", "temp_store", "foreign_keys", "wal_autocheckpoint", "busy_timeout")]
        assert got == ["wal", 1, 2, 1, 0, 0]
    finally:
        await store.close()


async def test_a_batch_is_written_a_slice_at_a_time_with_the_loop_free_between_slices(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "x.db"
    store = _store(path, batch_size=200, flush_interval=0.01)
    await store.start()
    seen: list[tuple[int, int, int]] = []  # (loop turns so far, rows in the slice's INSERT, rows in the file before it)
    ticker = Ticker(every=0)

    async def before(n: int, statements: list[tuple[str, Any]], commit: bool) -> None:
        with sqlite3.connect(path) as conn:  # what is committed, read from another connection
            in_file = conn.execute("SELECT count(*) FROM requests").fetchone()[0]
        seen.append((ticker.ticks, len(statements[0][1]) // 24, in_file))  # 24 columns a request row

    SliceHook(store, monkeypatch, before)
    try:
        with ticker:
            await asyncio.sleep(0.01)
            for i in range(200):
                store.submit(rec(i))
            assert await store.flush(WAIT)
        assert [n for _, n, _ in seen] == [sqlite_direct.SLICE] * 12 + [8]
        # a transaction every GROUP records (4 slices), and one for the rest
        assert [c for _, _, c in seen] == [0] * 4 + [64] * 4 + [128] * 4 + [192]
        turns = [t for t, _, _ in seen]
        assert all(b > a for a, b in zip(turns, turns[1:], strict=False)), turns  # the loop ran between slices
        with sqlite3.connect(path) as conn:
            assert conn.execute("SELECT count(*) FROM requests").fetchone()[0] == 200
            assert conn.execute("SELECT count(*) FROM attempts").fetchone()[0] == 200
    finally:
        await store.close()


async def test_larger_slices_make_larger_transactions(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Behind (records queued up), a turn of the loop takes more records, and a transaction still
    holds SLICES_PER_GROUP slices: GROUP alone committed every other slice of 32 there."""
    path = tmp_path / "x.db"
    store = _store(path, batch_size=200, flush_interval=0.01)
    await store.start()
    assert store._direct is not None
    store._direct.pace = lambda: 32
    seen: list[tuple[int, int]] = []  # (rows in the slice's INSERT, rows in the file before it)

    async def before(n: int, statements: list[tuple[str, Any]], commit: bool) -> None:
        with sqlite3.connect(path) as conn:
            seen.append((len(statements[0][1]) // 24, conn.execute("SELECT count(*) FROM requests").fetchone()[0]))

    SliceHook(store, monkeypatch, before)
    try:
        for i in range(200):
            store.submit(rec(i))
        assert await store.flush(WAIT)
        assert seen == [(32, 0)] * 4 + [(32, 128)] * 2 + [(8, 128)]
    finally:
        await store.close()


async def busy_loop(store: Store, seconds: float = 3.0, connections: int = 64) -> int:
    """`connections` requests in flight for `seconds`, each five steps of ~60 µs of CPU with the
    loop's turn between them, then a record; the most records queued at once."""
    stop = time.monotonic() + seconds
    peak = 0

    async def client(k: int) -> None:
        nonlocal peak
        n = 0
        while time.monotonic() < stop:
            for _ in range(5):
                until_ = time.perf_counter() + 60e-6
                while time.perf_counter() < until_:
                    pass
                await asyncio.sleep(0)
            store.submit(rec(n, id=f"r{k}-{n}"))
            n += 1
            peak = max(peak, store.queued)

    await asyncio.gather(*(client(k) for k in range(connections)))
    return peak


async def keeps_up(store: Store) -> None:
    """Under busy_loop, every record is written: none dropped for a full queue."""
    await store.start()
    try:
        peak = await busy_loop(store)
        assert await store.flush(WAIT)
        assert store.dropped == 0, f"peak queue {peak}"
        assert store.written == store.submitted > 2000
    finally:
        await store.close()


@pytest.mark.parametrize("queue_size", [3000, 400])  # 400: full before two batches (200 each) are queued
async def test_a_busy_loop_does_not_make_the_writer_fall_behind(tmp_path: Path, queue_size: int) -> None:
    """Every turn of a busy loop brings more records than small steps (16 a turn) take, so the
    writer must take larger ones once records queue up. With 16 a turn, a real proxy at 64
    connections dropped half its records."""
    await keeps_up(_store(tmp_path / "x.db", queue_size=queue_size, flush_interval=0.05))


async def test_a_busy_loop_does_not_make_the_postgresql_writer_fall_behind(pg: Any) -> None:  # noqa: F811
    """PostgreSQL: each batch costs a few round trips, each waiting for a turn of the busy loop;
    batches of batch_size alone fell behind (a real proxy at 64 connections dropped 10k of 80k
    records), so the writer takes larger batches once records queue up."""
    await keeps_up(Store(StoreSettings(url=pg.url, queue_size=3000, flush_interval=0.05), secrets=SECRETS))


async def test_a_write_lock_held_elsewhere_is_waited_out_without_stopping_the_loop(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Another worker writing the same file holds its lock: the batch waits in short sleeps. A busy
    wait inside SQLite would stop the event loop (and every request) for as long."""
    path = tmp_path / "x.db"
    store = _store(path, busy_limit=5.0, flush_interval=0.01)
    await store.start()
    other = SqliteDB(path)
    try:
        store.submit(rec(0, id="first"))
        assert await store.flush(WAIT)
        await other.down()  # BEGIN EXCLUSIVE on another connection
        with Ticker() as ticker:
            store.submit(rec(1, id="second"))
            await asyncio.sleep(0.05)  # the writer's first try meets the lock
            before = ticker.ticks
            await asyncio.sleep(0.4)
            assert ticker.ticks - before >= 40, "the event loop stood still while the writer waited for the lock"
            assert store.written == 1 and store.db_up
            await other.up()
            assert await store.flush(WAIT)
        assert store.written == 2 and store.dropped == 0 and store.db_up
        assert "unavailable" not in caplog.text
        with sqlite3.connect(path) as conn:
            assert sorted(r[0] for r in conn.execute("SELECT id FROM requests")) == ["first", "second"]
    finally:
        await other.up()
        await store.close()


async def test_checkpoints_run_in_a_thread_and_bring_the_file_up_to_date(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "x.db"
    monkeypatch.setattr(sqlite_direct, "CHECKPOINT_EVERY", 50)
    threads: list[int] = []
    real = sqlite_direct._checkpoint

    def checkpoint(p: str) -> None:
        threads.append(threading.get_ident())
        real(p)

    monkeypatch.setattr(sqlite_direct, "_checkpoint", checkpoint)
    store = _store(path, batch_size=60, flush_interval=0.01)
    await store.start()
    try:
        for i in range(60):
            store.submit(rec(i))
        assert await store.flush(WAIT)
        await until(lambda: bool(threads) and store._direct._checkpoint is None,  # type: ignore[union-attr]
                    "the checkpoint, which runs beside the writer")
        assert threading.get_ident() not in threads
        # The database file alone (without its write-ahead log) holds the checkpointed rows.
        alone = tmp_path / "alone.db"
        shutil.copyfile(path, alone)
        with sqlite3.connect(alone) as conn:
            assert conn.execute("SELECT count(*) FROM requests").fetchone()[0] == 60
    finally:
        await store.close()


async def test_a_file_replaced_while_the_writer_was_failing_is_noticed_when_it_reconnects(tmp_path: Path) -> None:
    """A failed write closes the writer's connection; the file may be replaced before the next one.
    Reopening the path without the check wrote to a file without tables, while the engine's pooled
    connections still saw the old file's schema: a failure for ever."""
    path = tmp_path / "x.db"
    store = _store(path, busy_limit=0.05, flush_interval=0.01)
    await store.start()
    other = SqliteDB(path)
    try:
        store.submit(rec(0, id="before"))
        assert await store.flush(WAIT)
        await other.down()
        store.submit(rec(1, id="after"))
        await until(lambda: not store.db_up, "the write failing on the lock")
        await other.up()
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
        assert await store.flush(WAIT)
        assert store.db_up and store.dropped == 0
        with sqlite3.connect(path) as conn:
            assert [r[0] for r in conn.execute("SELECT id FROM requests")] == ["after"]
    finally:
        await other.up()
        await store.close()


async def test_an_in_memory_database_is_written_through_the_engines_connection() -> None:
    store = Store(StoreSettings(url="sqlite+aiosqlite:///:memory:", flush_interval=0.01), secrets=SECRETS)
    await store.start()
    try:
        assert store._direct is None  # only the engine's one connection sees the database
        for i in range(3):
            store.submit(rec(i))
        assert await store.flush(WAIT)
        async with store.engine.connect() as conn:
            assert (await conn.execute(sa.text("SELECT count(*) FROM requests"))).scalar() == 3
    finally:
        await store.close()


_WRITER = """
import asyncio, sys
from axonsim.config import Store as StoreSettings
from server.store import Store
from server.store.records import AttemptRow, RequestRecord

async def main(path: str, tag: str, n: int) -> None:
    store = Store(StoreSettings(url=f"sqlite+aiosqlite:///{path}", batch_size=50, flush_interval=0.002))
    await store.start()
    for i in range(n):
        store.submit(RequestRecord("p", "m", "openai_chat", 200, "completed", id=f"{tag}-{i}",
                                   attempts=[AttemptRow(n=1, channel="c", upstream_model="m", status=200)]))
        if i % 25 == 0:
            await asyncio.sleep(0.001)  # a stream of requests, not one burst
    ok = await store.flush(60)
    await store.close()
    print(ok, store.written, store.dropped, store.db_up)

asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
"""


def test_two_processes_writing_one_file_both_get_every_record_in(tmp_path: Path) -> None:
    """`serve --workers 2` on one SQLite file: each worker's writer meets the other's write lock and
    waits its turn; nothing is dropped and neither calls the database unavailable."""
    path = tmp_path / "shared.db"
    n = 3000
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": f"{root}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    procs = [subprocess.Popen([sys.executable, "-c", _WRITER, str(path), tag, str(n)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env, cwd=root) for tag in ("a", "b")]
    outs = [p.communicate(timeout=120) for p in procs]
    for p, (out, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err
        assert out.split() == ["True", str(n), "0", "True"], (out, err)
        assert "unavailable" not in err, err
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT count(*) FROM requests").fetchone()[0] == 2 * n
        assert conn.execute("SELECT count(*) FROM attempts").fetchone()[0] == 2 * n


@pytest.mark.parametrize("how", ["deleted", "replaced"])
async def test_a_file_deleted_or_replaced_before_the_first_write_is_the_one_written_and_read(
        tmp_path: Path, how: str) -> None:
    """The writer's connection opens on its first write. It had taken whatever file was at the path as
    its own (creating an empty one if none), while the engine's pooled connections, which the admin API
    reads through, kept the old file: writes failed for ever ("no such table"), or went where the admin
    API did not look."""
    path = tmp_path / "x.db"
    store = _store(path, flush_interval=0.01)
    await store.start()
    try:
        if how == "replaced":
            with sqlite3.connect(path) as src, sqlite3.connect(tmp_path / "backup.db") as dst:
                src.execute("INSERT INTO requests (id, created_at, day, project, client_format, model, stream, "
                            "status, outcome, prompt_tokens, completion_tokens, cached_tokens, reasoning_tokens) "
                            "VALUES ('restored', 1.0, '1970-01-01', 'p', 'openai_chat', 'm', 0, 200, 'completed', "
                            "0, 0, 0, 0)")
                src.commit()
                src.backup(dst)
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
        if how == "replaced":
            (tmp_path / "backup.db").rename(path)
        store.submit(rec(0, id="after"))
        assert await store.flush(5.0)
        assert store.written == 1 and store.db_up
        want = ["after", "restored"] if how == "replaced" else ["after"]
        with sqlite3.connect(path) as conn:
            assert sorted(r[0] for r in conn.execute("SELECT id FROM requests")) == want
        async with store.engine.connect() as conn:  # what the admin API reads
            assert sorted(r[0] for r in await conn.execute(sa.text("SELECT id FROM requests"))) == want
    finally:
        await store.close()


async def test_a_close_that_stops_a_batch_part_way_counts_its_committed_slices_as_written(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "x.db"
    store = _store(path, busy_limit=5.0, batch_size=200, flush_interval=0.01)
    await store.start()
    other = SqliteDB(path)
    first_of_second = sqlite_direct.GROUP // sqlite_direct.SLICE + 1

    async def before(n: int, statements: list[tuple[str, Any]], commit: bool) -> None:
        if n == first_of_second:
            await other.down()  # another worker takes the lock between the first and second transactions

    hook = SliceHook(store, monkeypatch, before)
    try:
        for i in range(200):
            store.submit(rec(i))
        await until(lambda: hook.calls >= first_of_second, "the second transaction")
    finally:
        await store.close(timeout=0.3)
        await other.up()
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT count(*) FROM requests").fetchone()[0] == 64
    assert (store.written, store.dropped, store.queued) == (64, 136, 0)


async def test_a_close_between_the_slices_of_a_transaction_commits_them_and_counts_them_written(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "x.db"
    store = _store(path, batch_size=200, flush_interval=0.01)
    await store.start()
    gate = asyncio.Event()  # never set: the writer stops after its second slice, transaction open

    async def after(n: int, statements: list[tuple[str, Any]], commit: bool) -> None:
        if n == 2:
            assert not commit
            await gate.wait()

    hook = SliceHook(store, monkeypatch, after=after)
    try:
        for i in range(200):
            store.submit(rec(i))
        await until(lambda: hook.calls >= 2, "the second slice")
        with sqlite3.connect(path) as conn:
            assert conn.execute("SELECT count(*) FROM requests").fetchone()[0] == 0  # not committed yet
    finally:
        await store.close(timeout=0.3)
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT count(*) FROM requests").fetchone()[0] == 2 * sqlite_direct.SLICE
    assert (store.written, store.dropped, store.queued) == (32, 168, 0)


async def test_what_a_timed_out_try_got_in_still_counts_when_close_stops_its_retry(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The first try commits one transaction, then the write timeout fires; the retry of the same
    # batch is held up (another worker's lock, say) when close() gives up: the first transaction's
    # records are in the file and must count as written, not dropped.
    path = tmp_path / "x.db"
    store = Store(StoreSettings(url=f"sqlite+aiosqlite:///{path}", batch_size=200, flush_interval=0.01),
                  secrets=SECRETS, connect_timeout=5.0, write_timeout=0.3, retry_base=0.01, retry_cap=0.05)
    await store.start()
    per_group = sqlite_direct.GROUP // sqlite_direct.SLICE

    async def before(n: int, statements: list[tuple[str, Any]], commit: bool) -> None:
        if n in (per_group + 1, per_group + 2):  # the first try's second transaction; the retry's first slice
            await asyncio.sleep(10)

    hook = SliceHook(store, monkeypatch, before)
    for i in range(200):
        store.submit(rec(i))
    await until(lambda: hook.calls >= per_group + 2, "the retry")
    await store.close(timeout=0.05)
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT count(*) FROM requests").fetchone()[0] == sqlite_direct.GROUP
    assert (store.written, store.dropped) == (sqlite_direct.GROUP, 200 - sqlite_direct.GROUP)


async def test_a_rejected_record_settles_the_transactions_before_it_as_written(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Record 80 is one the database refuses: the batch's first transaction (64) is in, then the
    # writer goes record by record. Another connection holds the write lock from the first of those
    # writes on, and close() gives up: the 64 are in the file, and must be counted written.
    path = tmp_path / "x.db"
    store = _store(path, batch_size=100, flush_interval=0.01)
    await store.start()
    locker: sqlite3.Connection | None = None

    async def before(n: int, statements: list[tuple[str, Any]], commit: bool) -> None:
        nonlocal locker
        if n == 7 and locker is None:  # 5 slices (the 5th with record 80), then the first record alone
            locker = sqlite3.connect(path, isolation_level=None)
            locker.execute("BEGIN IMMEDIATE")

    hook = SliceHook(store, monkeypatch, before)
    try:
        for i in range(100):
            store.submit(rec(i, status=2**63) if i == 80 else rec(i))
        await until(lambda: locker is not None and not store.db_up, "the lock to stop the writer")
        assert hook.calls == 7 and store.written == 64  # settled as soon as the batch failed
    finally:
        await store.close(timeout=0.3)
        if locker is not None:
            locker.rollback()
            locker.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT count(*) FROM requests").fetchone()[0] == 64
    assert (store.written, store.dropped) == (64, 36)


async def test_a_failure_part_way_through_a_transaction_rolls_it_back_and_the_batch_is_retried_whole(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "x.db"
    store = _store(path, batch_size=100, flush_interval=0.01)
    await store.start()
    real = sqlite_direct.insert
    calls = 0
    in_file: list[int] = []  # rows another connection sees right after the failure

    def insert(db: sqlite3.Connection, statements: list[tuple[str, Any]], commit: bool = True) -> None:
        nonlocal calls
        calls += 1
        if calls == 3:  # the third slice of the first transaction fails part way (SQLite's own error)
            statements = [*statements[:1], ("INSERT INTO no_such_table VALUES (1)", ())]
        try:
            real(db, statements, commit)
        finally:
            if calls == 3:
                with sqlite3.connect(path) as conn:
                    in_file.append(conn.execute("SELECT count(*) FROM requests").fetchone()[0])

    monkeypatch.setattr(sqlite_direct, "insert", insert)
    try:
        for i in range(100):
            store.submit(rec(i))
        assert await store.flush(WAIT)
        assert in_file == [0]  # the first two slices went back with the third
        assert (store.written, store.dropped) == (100, 0)
        with sqlite3.connect(path) as conn:
            assert conn.execute("SELECT count(*) FROM requests").fetchone()[0] == 100
            assert conn.execute("SELECT count(*) FROM attempts").fetchone()[0] == 100
    finally:
        await store.close()


async def test_a_slow_checkpoint_does_not_make_a_written_batch_look_failed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(sqlite_direct, "CHECKPOINT_EVERY", 10)
    done = threading.Event()

    def slow(p: str) -> None:  # a slow disk: longer than the write timeout
        time.sleep(1.5)
        done.set()

    monkeypatch.setattr(sqlite_direct, "_checkpoint", slow)
    store = Store(StoreSettings(url=f"sqlite+aiosqlite:///{tmp_path / 'x.db'}", flush_interval=0.01),
                  secrets=SECRETS, write_timeout=1.0, retry_base=0.02, retry_cap=0.2)
    await store.start()
    try:
        for i in range(20):
            store.submit(rec(i))
        assert await store.flush(WAIT)
        await asyncio.sleep(1.7)
        assert done.is_set() and store.db_up and (store.written, store.dropped) == (20, 0)
        assert "unavailable" not in caplog.text
    finally:
        await store.close()


async def test_large_bodies_end_a_slice_and_are_inserted_off_the_loop(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """One slice of 64 records with ~60 KiB of bodies each kept the loop for ~20 ms; a 1 MiB body ~300."""
    store = _store(tmp_path / "x.db", store_bodies=True, batch_size=20, flush_interval=0.01)
    await store.start()
    threads: list[tuple[int, int]] = []  # (thread, rows) of each insert
    real = sqlite_direct.insert

    def insert(db: sqlite3.Connection, statements: list[tuple[str, Any]], commit: bool = True) -> None:
        rows = sum(len(p) // 24 if type(p) is tuple else len(p) for q, p in statements if "INTO requests" in q)
        threads.append((threading.get_ident(), rows))
        real(db, statements, commit)

    monkeypatch.setattr(sqlite_direct, "insert", insert)
    body = "x" * (60 * 1024)
    try:
        for i in range(10):
            store.submit(rec(i, request_body=body, response_body=body))
        assert await store.flush(WAIT)
        assert store.written == 10
        main = threading.get_ident()
        assert [n for _, n in threads] == [3, 3, 3, 1]  # 3 × 120 KiB passes 256 KiB
        assert all(t != main for t, n in threads[:3]) and threads[3][0] == main  # the last slice is small
    finally:
        await store.close()


class _HeldInsert:
    """`insert` that, in a thread, waits to be let go: a slow large-body slice, held while the test
    cancels its await."""

    def __init__(self) -> None:
        self.started = threading.Event()
        self.release = threading.Event()
        self.real = sqlite_direct.insert

    def __call__(self, db: sqlite3.Connection, statements: list[tuple[str, Any]], commit: bool = True) -> None:
        if threading.current_thread() is not threading.main_thread() and not self.started.is_set():
            self.started.set()
            self.release.wait(5)
        self.real(db, statements, commit)


async def _started(held: _HeldInsert) -> None:
    await until(held.started.is_set, "the large slice's thread")


BIG = "y" * (300 * 1024)  # one record's two bodies pass SLICE_BYTES: a slice each, from a thread


async def test_a_close_during_a_threads_insert_waits_for_it_and_counts_what_went_in(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Closing the connection under the thread crashed the process (a segmentation fault in sqlite3)."""
    path = tmp_path / "x.db"
    held = _HeldInsert()
    monkeypatch.setattr(sqlite_direct, "insert", held)
    store = _store(path, store_bodies=True, batch_size=8, flush_interval=0.01)
    await store.start()
    for i in range(8):
        store.submit(rec(i, request_body=BIG, response_body=BIG))
    await _started(held)
    asyncio.get_running_loop().call_later(0.2, held.release.set)
    await store.close(timeout=0)  # cancels the writer while its first slice is in the thread
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT count(*) FROM requests").fetchone()[0] == 1
    assert (store.written, store.dropped, store.queued) == (1, 7, 0)


async def test_a_write_after_a_cancelled_threads_insert_waits_for_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The write timeout cancels a write whose slice is in a thread; the retry must not share the
    connection with it (each side's COMMIT ended the other's transaction)."""
    path = tmp_path / "x.db"
    held = _HeldInsert()
    monkeypatch.setattr(sqlite_direct, "insert", held)
    store = _store(path, store_bodies=True, flush_interval=60)
    await store.start()
    direct = store._direct
    assert direct is not None
    try:
        big = [store._rows.prepare(rec(i, request_body=BIG, response_body=BIG)) for i in range(3)]
        small = [store._rows.prepare(rec(100 + i)) for i in range(10)]
        task = asyncio.ensure_future(direct.write(big))
        await _started(held)
        task.cancel()
        asyncio.get_running_loop().call_later(0.2, held.release.set)
        await direct.write(small)  # waits for the thread's slice, then writes on the connection
        with pytest.raises(asyncio.CancelledError):
            await task
        with sqlite3.connect(path) as conn:
            ids = {r[0] for r in conn.execute("SELECT id FROM requests")}
        assert {r[0][0] for r in small} <= ids and big[0][0][0] in ids
    finally:
        await store.close()


async def test_a_close_waits_once_for_a_threads_insert_and_counts_what_is_in_when_it_returns(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A thread slower than the close's bound: its records are counted as not written, and the close
    does not wait for it a second time (it had, and the records it then let in stayed counted lost)."""
    path = tmp_path / "x.db"
    held = _HeldInsert()
    monkeypatch.setattr(sqlite_direct, "insert", held)
    monkeypatch.setattr(writer, "DIRECT_CLOSE_WAIT", 0.2)
    waits: list[float | None] = []
    real_wait = asyncio.wait

    async def wait(fs: Any, timeout: float | None = None, **kw: Any) -> Any:
        if any(isinstance(f, asyncio.Future) and not isinstance(f, asyncio.Task) for f in fs):
            waits.append(timeout)  # a wait on the thread's future
        return await real_wait(fs, timeout=timeout, **kw)

    store = _store(path, store_bodies=True, batch_size=8, flush_interval=0.01)
    await store.start()
    for i in range(8):
        store.submit(rec(i, request_body=BIG, response_body=BIG))
    await _started(held)
    monkeypatch.setattr(sqlite_direct.asyncio, "wait", wait)
    try:
        await store.close(timeout=0)
        with sqlite3.connect(path) as conn:
            in_db = conn.execute("SELECT count(*) FROM requests").fetchone()[0]
        assert waits == [0.2] and in_db == 0 and (store.written, store.dropped, store.queued) == (0, 8, 0)
    finally:
        held.release.set()
