"""The gateway's log lines (server.log_output): the same text as logging's own, access lines written in batches, in order."""

from __future__ import annotations

import logging
import os
import re
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from processes import free_port, start, wait_healthy

from server import log_output
from server.log_output import ACCESS_LOGGER, FORMAT, BatchingStreamHandler, LineFormatter


class Writes:
    """A stream that keeps each write() call apart (a batch is one call)."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.lock = threading.Lock()

    def write(self, s: str) -> int:
        with self.lock:
            self.calls.append(s)
        return len(s)

    def flush(self) -> None:
        pass

    @property
    def text(self) -> str:
        with self.lock:
            return "".join(self.calls)


def _record(name: str, level: int, msg: str, created: float | None = None) -> logging.LogRecord:
    rec = logging.LogRecord(name, level, "(unknown file)", 0, msg, None, None)
    if created is not None:
        rec.created = created
        rec.msecs = (created - int(created)) * 1000
    return rec


@pytest.fixture
def handler() -> Iterator[tuple[BatchingStreamHandler, Writes]]:
    out = Writes()
    h = BatchingStreamHandler(out, flush_every=0.05, batch_bytes=1000)  # type: ignore[arg-type]
    h.setFormatter(logging.Formatter("%(name)s %(message)s"))
    yield h, out
    h.close()


def _wait_for(cond: Callable[[], object], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "not written in time"
        time.sleep(0.01)


# --------------------------------------------------------------------------------------------------
# the formatter


@settings(max_examples=300, deadline=None)
@given(st.lists(st.floats(min_value=0, max_value=4_102_444_800, allow_nan=False), min_size=1, max_size=6))
def test_line_formatter_writes_what_logging_s_formatter_writes(times: list[float]) -> None:
    # Several records in a row: the cached second must never leak into a record of another second.
    ours, theirs = LineFormatter(), logging.Formatter(FORMAT)
    for t in [*times, *times[::-1]]:
        rec = _record("axonsim.server.access", logging.INFO, "POST '/v1/chat/completions' status=200", t)
        assert ours.format(rec) == theirs.format(rec)


def test_line_formatter_across_a_second_boundary_and_back() -> None:
    ours, theirs = LineFormatter(), logging.Formatter(FORMAT)
    for t in (1_700_000_000.999, 1_700_000_001.0, 1_700_000_001.5, 1_700_000_000.2, 1_700_000_000.2):
        rec = _record("axonsim", logging.WARNING, "x", t)
        assert ours.format(rec) == theirs.format(rec)


# --------------------------------------------------------------------------------------------------
# the handler


def test_access_lines_wait_then_leave_together(handler: tuple[BatchingStreamHandler, Writes]) -> None:
    h, out = handler
    for i in range(3):
        h.handle(_record(ACCESS_LOGGER, logging.INFO, f"req {i}"))
    assert out.calls == []  # held, not written one by one
    _wait_for(lambda: out.calls)
    assert out.calls == [f"{ACCESS_LOGGER} req 0\n{ACCESS_LOGGER} req 1\n{ACCESS_LOGGER} req 2\n"]
    # The flusher sleeps once nothing waits, and starts its clock again for the next line.
    assert not h._wake.is_set()
    h.handle(_record(ACCESS_LOGGER, logging.INFO, "req 3"))
    _wait_for(lambda: len(out.calls) == 2)
    assert out.calls[1] == f"{ACCESS_LOGGER} req 3\n"


def test_any_other_line_is_written_at_once_after_the_access_lines_before_it(
        handler: tuple[BatchingStreamHandler, Writes]) -> None:
    h, out = handler
    h._flush_every = 60.0  # only the other lines can write them here
    h.handle(_record(ACCESS_LOGGER, logging.INFO, "req 1"))
    h.handle(_record("axonsim.server", logging.WARNING, "channel a failed"))
    assert out.calls == [f"{ACCESS_LOGGER} req 1\naxonsim.server channel a failed\n"]
    h.handle(_record("axonsim.store", logging.INFO, "store: database back"))  # INFO, but not an access line
    assert out.calls[-1] == "axonsim.store store: database back\n"
    h.handle(_record(ACCESS_LOGGER, logging.WARNING, "an access-logger warning"))  # above INFO: at once
    assert out.calls[-1] == f"{ACCESS_LOGGER} an access-logger warning\n"
    assert len(out.calls) == 3


def test_a_full_batch_is_written_at_once(handler: tuple[BatchingStreamHandler, Writes]) -> None:
    h, out = handler
    h._flush_every = 60.0
    line = "x" * 90  # 1000 characters hold ten lines of ~120
    n = 0
    while not out.calls:
        h.handle(_record(ACCESS_LOGGER, logging.INFO, f"{n:03d} {line}"))
        n += 1
        assert n < 20
    assert out.calls[0].count("\n") == n and 1000 <= len(out.calls[0]) < 1000 + 130


def test_flush_and_close_write_what_waits_and_later_lines_go_straight_out(
        handler: tuple[BatchingStreamHandler, Writes]) -> None:
    h, out = handler
    h._flush_every = 60.0
    h.handle(_record(ACCESS_LOGGER, logging.INFO, "req 1"))
    h.flush()  # what logging.shutdown() calls first, at the process's exit
    assert out.calls == [f"{ACCESS_LOGGER} req 1\n"]
    h.handle(_record(ACCESS_LOGGER, logging.INFO, "req 2"))
    flusher = h._flusher
    time.sleep(0.2)  # the flusher in its wait for the deadline, which close() must end
    h.close()
    assert out.calls[-1] == f"{ACCESS_LOGGER} req 2\n"
    assert flusher is not None
    flusher.join(2)
    assert not flusher.is_alive()  # close() ends the flusher thread
    h.handle(_record(ACCESS_LOGGER, logging.INFO, "req 3"))  # (a line after close: written, not held)
    assert out.calls[-1] == f"{ACCESS_LOGGER} req 3\n"


def test_lines_from_several_threads_are_all_written_once_each(handler: tuple[BatchingStreamHandler, Writes]) -> None:
    h, out = handler

    def log_some(t: int) -> None:
        for i in range(200):
            h.handle(_record(ACCESS_LOGGER if i % 50 else "axonsim.server", logging.INFO, f"t{t} n{i}"))

    threads = [threading.Thread(target=log_some, args=(t,)) for t in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    _wait_for(lambda: out.text.count("\n") == 800)
    lines = out.text.splitlines()
    for t in range(4):
        mine = [int(ln.rsplit(" n", 1)[1]) for ln in lines if f" t{t} " in ln]
        assert mine == list(range(200))  # each thread's lines in its order, none lost or doubled


def test_a_stream_that_fails_loses_its_lines_and_nothing_else() -> None:
    class Broken(Writes):
        def write(self, s: str) -> int:
            raise OSError("stderr is gone")

    out = Broken()
    h = BatchingStreamHandler(out, flush_every=0.01)  # type: ignore[arg-type]
    try:
        h.handle(_record(ACCESS_LOGGER, logging.INFO, "req 1"))
        _wait_for(lambda: not h._lines)  # the flusher dropped them and lives on
        assert h._flusher is not None and h._flusher.is_alive()
    finally:
        h.close()


def test_a_line_logged_while_a_batch_is_written_comes_after_it_once(
        handler: tuple[BatchingStreamHandler, Writes]) -> None:
    # As a signal handler that logs does (uvicorn's run in the main thread, between two bytecodes of
    # whatever runs there; the handler's lock is reentrant): here, inside the stream's write.
    h, out = handler
    h._flush_every = 60.0
    inner = [_record("axonsim.server", logging.WARNING, "second Ctrl-C"),
             _record(ACCESS_LOGGER, logging.INFO, "req 3")]

    class Reentrant(Writes):
        def write(self, s: str) -> int:
            if inner:
                h.handle(inner.pop(0))
            return super().write(s)

    h.stream = Reentrant()
    h.handle(_record(ACCESS_LOGGER, logging.INFO, "req 1"))
    h.handle(_record(ACCESS_LOGGER, logging.INFO, "req 2"))
    h.handle(_record("axonsim.server", logging.WARNING, "first Ctrl-C"))
    h.flush()
    assert h.stream.text.splitlines() == [  # type: ignore[attr-defined]
        f"{ACCESS_LOGGER} req 1", f"{ACCESS_LOGGER} req 2", "axonsim.server first Ctrl-C",
        "axonsim.server second Ctrl-C", f"{ACCESS_LOGGER} req 3"]


@pytest.fixture
def last_resort() -> Iterator[logging.Handler]:
    """logging's last resort, its filters restored after the test (flush_first puts one there)."""
    last = logging.lastResort
    assert last is not None
    kept = last.filters[:]
    yield last
    last.filters[:] = kept


def test_a_handler_elsewhere_writes_the_waiting_lines_before_its_own(last_resort: logging.Handler) -> None:
    stream = Writes()
    ours = BatchingStreamHandler(stream, flush_every=60.0)  # type: ignore[arg-type]
    ours.setFormatter(logging.Formatter("%(message)s"))
    theirs = logging.StreamHandler(stream)  # type: ignore[arg-type]
    theirs.setFormatter(logging.Formatter("uvicorn: %(message)s"))
    other = logging.getLogger("axonsim-test-flush-first")
    other.handlers[:] = [theirs]
    other.propagate = False
    try:
        log_output.flush_first(other, ours)
        log_output.flush_first(other, ours)  # again (after uvicorn's dictConfig): one filter, not two
        assert len(theirs.filters) == 1
        ours.handle(_record(ACCESS_LOGGER, logging.INFO, "req 1"))
        other.warning("Shutting down")
        assert stream.text == "req 1\nuvicorn: Shutting down\n"
        # A record no handler takes ("Task exception was never retrieved"): the last resort's line.
        ours.handle(_record(ACCESS_LOGGER, logging.INFO, "req 2"))
        last_resort.handle(_record("asyncio", logging.ERROR, "Task exception was never retrieved"))
        assert stream.text.endswith("uvicorn: Shutting down\nreq 2\n")
    finally:
        other.handlers[:] = []
        ours.close()


def test_a_failing_stream_does_not_break_another_handler_s_logging_call(last_resort: logging.Handler) -> None:
    # uvicorn's logger.info("Shutting down") raising ended its shutdown: the store was not drained.
    class Broken(Writes):
        def write(self, s: str) -> int:
            raise BrokenPipeError(32, "Broken pipe")

    ours = BatchingStreamHandler(Broken(), flush_every=60.0)  # type: ignore[arg-type]
    theirs = logging.StreamHandler(Writes())  # type: ignore[arg-type]
    other = logging.getLogger("axonsim-test-flush-first-broken")
    other.handlers[:] = [theirs]
    other.propagate = False
    try:
        log_output.flush_first(other, ours)
        ours.handle(_record(ACCESS_LOGGER, logging.INFO, "req 1"))
        other.info("Shutting down")  # must not raise
        ours.handle(_record(ACCESS_LOGGER, logging.INFO, "req 2"))
    finally:
        other.handlers[:] = []
        ours.close()  # must not raise either, with a line waiting


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
@pytest.mark.parametrize("waiting", [False, True], ids=["written-before-the-fork", "waiting-at-the-fork"])
def test_a_forked_child_writes_its_own_lines_and_only_those(tmp_path: Path, waiting: bool) -> None:
    path = tmp_path / "log.txt"
    with open(path, "w") as f:
        h = BatchingStreamHandler(f, flush_every=0.2)
        h.setFormatter(logging.Formatter("%(message)s"))
        h.handle(_record(ACCESS_LOGGER, logging.INFO, "parent"))  # the parent's flusher runs
        if not waiting:
            _wait_for(lambda: path.read_text() == "parent\n")
        pid = os.fork()
        if pid == 0:
            # The child: a line waiting at the fork is the parent's to write; its own is written by
            # a flusher of its own (no flush here, and an exit that skips logging.shutdown()).
            try:
                h.handle(_record(ACCESS_LOGGER, logging.INFO, "child"))
                deadline = time.monotonic() + 5
                while "child" not in path.read_text() and time.monotonic() < deadline:
                    time.sleep(0.01)
                time.sleep(0.1)
            finally:
                os._exit(0)
        _, status = os.waitpid(pid, 0)
        assert status == 0
        h.close()
    assert sorted(path.read_text().splitlines()) == ["child", "parent"]


def test_installing_again_writes_what_the_replaced_handler_held() -> None:
    out = Writes()
    logger = logging.getLogger("axonsim-test-install")
    try:
        first = log_output.install(logger, "info", out, flush_every=60.0)  # type: ignore[arg-type]
        first.handle(_record(ACCESS_LOGGER, logging.INFO, "held"))
        flusher = first._flusher
        second = log_output.install(logger, "info", out, flush_every=60.0)  # type: ignore[arg-type]
        assert logger.handlers == [second] and "held" in out.text
        assert flusher is not None
        flusher.join(2)
        assert not flusher.is_alive()
    finally:
        for h in logger.handlers:
            h.close()
        logger.handlers[:] = []


def test_a_flush_interval_of_zero_writes_each_access_line_at_once() -> None:
    out = Writes()
    h = BatchingStreamHandler(out, flush_every=0.0)  # type: ignore[arg-type]
    h.setFormatter(logging.Formatter("%(message)s"))
    try:
        h.handle(_record(ACCESS_LOGGER, logging.INFO, "req 1"))
        h.handle(_record(ACCESS_LOGGER, logging.INFO, "req 2"))
        assert out.calls == ["req 1\n", "req 2\n"] and h._flusher is None
    finally:
        h.close()


@pytest.mark.parametrize(("raw", "seconds", "ok"), [
    (None, log_output.FLUSH_EVERY, True), ("", log_output.FLUSH_EVERY, True), ("0", 0.0, True), ("0.5", 0.5, True),
    (" 2 ", 2.0, True), ("60", 60.0, True),
    ("61", log_output.FLUSH_EVERY, False), ("-1", log_output.FLUSH_EVERY, False),
    ("nan", log_output.FLUSH_EVERY, False), ("inf", log_output.FLUSH_EVERY, False),
    ("soon", log_output.FLUSH_EVERY, False),
])
def test_the_flush_interval_from_the_environment(raw: str | None, seconds: float, ok: bool) -> None:
    env = {} if raw is None else {log_output.ENV_FLUSH: raw}
    value, problem = log_output.flush_every_from(env)
    assert value == seconds
    assert (problem is None) == ok
    if not ok:
        assert log_output.ENV_FLUSH in problem and repr(raw) in problem  # type: ignore[operator]


def test_quiet_records_skip_the_caller_thread_and_process(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("_srcfile", "logThreads", "logProcesses", "logMultiprocessing"):
        monkeypatch.setattr(logging, name, getattr(logging, name))  # restored after the test
    log_output.quiet_records()
    rec = logging.getLogger("axonsim.test").makeRecord("axonsim.test", logging.INFO, "(unknown file)", 0, "m", (), None)
    assert rec.thread is None and rec.process is None and rec.processName is None
    assert logging._srcfile is None  # type: ignore[attr-defined]


# --------------------------------------------------------------------------------------------------
# a real gateway


def _serve_and_log(monkeypatch: pytest.MonkeyPatch, flush: str | None,
                   between: Callable[[list[str], list[str]], None] | None = None) -> tuple[list[str], list[str]]:
    """The demo at --log-level info, six requests, then SIGTERM: its stderr lines and the request ids.
    `between(seen, ids)` runs after the requests, while the gateway still serves."""
    if flush is not None:
        monkeypatch.setenv(log_output.ENV_FLUSH, flush)
    port = free_port()
    proc = start("serve", "--port", str(port), "--log-level", "info")
    url = f"http://127.0.0.1:{port}"
    seen: list[str] = []
    reader = threading.Thread(target=lambda: seen.extend(iter(proc.stderr.readline, "")), daemon=True)  # type: ignore[union-attr]
    try:
        wait_healthy(url, proc)
        reader.start()
        auth = {"Authorization": "Bearer sk-axon-demo"}
        body = {"model": "demo-model", "messages": [{"role": "user", "content": "Hello!"}]}
        with httpx.Client(base_url=url, headers=auth, timeout=30) as c:
            ids = [c.post("/v1/chat/completions", json=body).headers["x-request-id"] for _ in range(6)]
        if between is not None:
            between(seen, ids)
        proc.send_signal(signal.SIGTERM)  # (stop() would read stderr too: the reader thread has it)
        proc.wait(40)
    finally:
        if proc.poll() is None:
            proc.kill()
    reader.join(10)
    assert proc.returncode == 0
    return list(seen), ids


def _each_once_before_the_end(lines: list[str], ids: list[str]) -> None:
    # (uvicorn's own line, through its own handler: the waiting lines go out before it.)
    finished = next(i for i, ln in enumerate(lines) if "Shutting down" in ln)
    for rid in ids:
        at = [i for i, ln in enumerate(lines) if rid in ln and "axonsim.server.access" in ln]
        assert len(at) == 1 and at[0] < finished, (rid, lines)
    access = [ln for ln in lines if "axonsim.server.access" in ln]
    assert all(re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO axonsim\.server\.access: POST ", ln)
               for ln in access)


@pytest.mark.timeout(90)
def test_the_gateway_writes_each_access_line_soon(monkeypatch: pytest.MonkeyPatch) -> None:
    def written_while_serving(seen: list[str], ids: list[str]) -> None:
        # No other line comes after them to push them out: the flusher writes them.
        _wait_for(lambda: all(any(rid in ln for ln in list(seen)) for rid in ids), timeout=10)

    lines, ids = _serve_and_log(monkeypatch, None, written_while_serving)
    _each_once_before_the_end(lines, ids)


@pytest.mark.timeout(90)
def test_the_gateway_holds_access_lines_and_writes_them_at_its_shutdown(monkeypatch: pytest.MonkeyPatch) -> None:
    def held(seen: list[str], ids: list[str]) -> None:
        time.sleep(0.5)
        assert not any(rid in ln for ln in list(seen) for rid in ids), seen  # waiting (60 s), not written each

    # Lines that would wait 60 s: written when the shutdown begins, before uvicorn says so.
    lines, ids = _serve_and_log(monkeypatch, "60", held)
    _each_once_before_the_end(lines, ids)
