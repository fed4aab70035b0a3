"""The store's SQLite writes on the event loop (server/store/sqlite_direct.py): slices with the loop's
turn between them, another connection's write lock waited out without stopping the loop,
checkpoints in a thread, a replaced file noticed after an error, two processes sharing one file, and
an in-memory database."""

from __future__ import annotations

import asyncio
import os
import shutil
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from test_store import SECRETS, WAIT, SqliteDB, rec, until

from axonsim.config import Store as StoreSettings
from server.store import Store, sqlite_direct


def _store(path: Path, busy_limit: float = 0.2, **settings: Any) -> Store:
    return Store(StoreSettings(url=f"sqlite+aiosqlite:///{path}", **settings), secrets=SECRETS,
                 connect_timeout=busy_limit, write_timeout=10.0, retry_base=0.02, retry_cap=0.2)


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
    direct = store._direct
    assert direct is not None
    seen: list[tuple[int, int]] = []  # (loop turns so far, rows in the slice's INSERT)
    real_run = direct._run
    ticker = Ticker(every=0)

    async def run(statements: list[tuple[str, Any]]) -> None:
        seen.append((ticker.ticks, len(statements[0][1]) // 24))  # 24 columns a request row
        await real_run(statements)

    monkeypatch.setattr(direct, "_run", run)
    try:
        with ticker:
            await asyncio.sleep(0.01)
            for i in range(200):
                store.submit(rec(i))
            assert await store.flush(WAIT)
        assert [n for _, n in seen] == [64, 64, 64, 8]
        turns = [t for t, _ in seen]
        assert all(b > a for a, b in zip(turns, turns[1:], strict=False)), turns  # the loop ran between slices
        with sqlite3.connect(path) as conn:
            assert conn.execute("SELECT count(*) FROM requests").fetchone()[0] == 200
            assert conn.execute("SELECT count(*) FROM attempts").fetchone()[0] == 200
    finally:
        await store.close()


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
        assert threads and threading.get_ident() not in threads
        # The database file alone (without its write-ahead log) holds the checkpointed rows.
        alone = tmp_path / "alone.db"
        shutil.copyfile(path, alone)
        with sqlite3.connect(alone) as conn:
            assert conn.execute("SELECT count(*) FROM requests").fetchone()[0] == 60
    finally:
        await store.close()


async def test_a_file_replaced_while_the_writer_was_failing_is_noticed_when_it_reconnects(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
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
        assert "deleted or replaced" in caplog.text
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
