"""How `axonsim serve` writes its log lines: each formatted cheaply, access lines written in batches.

The access log (one INFO line per request, on by default) cost ~15 % of a proxied request's
instructions at 16 connections (callgrind: 661k against 573k with it off), and more in time: a
LogRecord that looked up its caller's frame, thread and process, a strftime per line, then a write
and a flush, a system call, per line. Here (631k instructions; at 64 connections 8.8k requests a
second where line-by-line writes served 7.7k, paired runs):
- the record skips what the line never shows (`quiet_records`: the logging HOWTO's own
  "Optimization" switches);
- the time is formatted once per second (`LineFormatter`);
- access lines wait in memory and leave together (`BatchingStreamHandler`), as nginx's
  `access_log ... buffer= flush=` does: when FLUSH_EVERY has passed (ENV_FLUSH sets it; 0 writes
  each line at once), when BATCH_BYTES are waiting, and before any other log line: every other
  line, uvicorn's and logging's last resort's included (`flush_first`), is written at once, after
  the access lines before it, so the lines keep the order of their events. (Text written to stderr
  outside logging, such as a `warnings` message, is not held back for.)

A line's time is the time of its event, whenever it is written. What waits at the process's exit is
written by logging.shutdown(); only a process killed (SIGKILL) loses it: up to FLUSH_EVERY of lines.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from collections.abc import Mapping
from typing import TextIO

ACCESS_LOGGER = "axonsim.server.access"
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
FLUSH_EVERY = 0.1  # seconds an access line may wait (by default)
ENV_FLUSH = "AXONSIM_ACCESS_LOG_FLUSH"  # seconds, 0 to 60; 0 writes each access line at once
BATCH_BYTES = 64 * 1024  # characters of waiting access lines that are written at once


def quiet_records() -> None:
    """Records stop computing the caller's file and line, the thread and the process: FORMAT shows
    none of them, and finding the caller walks the stack on every call (a third of a record's cost).
    For the whole process: %(lineno)s, %(funcName)s, %(threadName)s and %(process)d show placeholders
    in any format, and stack_info=True adds no stack (nothing of the gateway's uses them)."""
    logging._srcfile = None  # type: ignore[attr-defined]
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False


class LineFormatter(logging.Formatter):
    """FORMAT, with the date and time part of asctime formatted once per second rather than per line
    (the same text: only the milliseconds change within a second)."""

    def __init__(self) -> None:
        super().__init__(FORMAT)
        self._second = -1
        self._text = ""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802 (logging's name)
        second = int(record.created)
        if second != self._second:
            self._text = time.strftime("%Y-%m-%d %H:%M:%S", self.converter(second))
            self._second = second
        return f"{self._text},{int(record.msecs):03d}"  # logging's default_time_format and default_msec_format


class BatchingStreamHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A StreamHandler that holds access lines (logger ACCESS_LOGGER, INFO and below) for up to
    FLUSH_EVERY and writes them in one call; any other line is written at once, after them."""

    def __init__(self, stream: TextIO, flush_every: float = FLUSH_EVERY, batch_bytes: int = BATCH_BYTES) -> None:
        super().__init__(stream)
        self._flush_every = flush_every
        self._batch_bytes = batch_bytes
        self._lines: list[str] = []
        self._size = 0
        self._wake = threading.Event()  # set while lines wait
        self._stop = threading.Event()
        self._stopped = False
        self._writing = False
        self._flusher: threading.Thread | None = None
        _HANDLERS.add(self)

    def _after_fork(self) -> None:
        # A forked child has no flusher thread (threads do not survive a fork), and its events may
        # hold a lock the parent's thread had: new ones, and a flusher started by its first line.
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._flusher = None
        self._writing = False
        # The lines waiting at the fork are the parent's: it writes them.
        self._lines = []
        self._size = 0

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record) + self.terminator
            # Handler.handle holds the handler's lock around emit: the lines keep their order.
            if (record.name == ACCESS_LOGGER and record.levelno <= logging.INFO and self._flush_every > 0
                    and not self._stopped):
                if not self._lines:
                    if self._flusher is None:
                        self._start_flusher()
                    self._wake.set()  # the first line waiting: the flusher's clock starts
                self._lines.append(line)
                self._size += len(line)
                if self._size < self._batch_bytes:
                    return
                line = ""
            self._write(line)
        except RecursionError:  # as StreamHandler.emit
            raise
        except Exception:
            self.handleError(record)

    def flush(self) -> None:
        with self.lock:  # type: ignore[union-attr]
            self._write("")

    def close(self) -> None:
        with self.lock:  # type: ignore[union-attr]
            self._stopped = True
            self._stop.set()
            self._wake.set()
            self._write_waiting()
        super().close()

    def _write(self, line: str) -> None:
        """Write the waiting lines and then `line`, and flush (under the lock). A line logged by a
        signal handler while this runs (same thread: the RLock lets it in) joins the waiting ones."""
        if line:
            self._lines.append(line)
        if self._writing:
            return  # the outer call writes it
        self._writing = True
        try:
            stream = self.stream
            while self._lines:
                lines, self._lines, self._size = self._lines, [], 0
                stream.write("".join(lines))
            if stream and hasattr(stream, "flush"):
                stream.flush()
        finally:
            self._writing = False

    def _write_waiting(self) -> None:
        """The waiting lines written where no caller can hear of a failure (closing, the flusher):
        a stream that fails (a closed stderr) leaves them nowhere to go."""
        try:
            self._write("")
        except Exception:
            pass

    def _start_flusher(self) -> None:
        # A thread rather than a timer on the event loop: lines come from any thread, and the loop
        # may not be running yet (start-up) or any more (shutdown). It sleeps while no line waits.
        self._flusher = threading.Thread(target=self._flush_loop, name="axonsim-log-flusher", daemon=True)
        self._flusher.start()

    def _flush_loop(self) -> None:
        while True:
            self._wake.wait()
            if self._stopped:
                return
            self._stop.wait(self._flush_every)  # (close() ends the wait, and writes the lines itself)
            with self.lock:  # type: ignore[union-attr]
                if self._stopped:
                    return
                self._wake.clear()
                self._write_waiting()


class FlushFirst(logging.Filter):
    """On another handler writing to the same stream: `handler`'s waiting lines are written before
    that handler's line. (Handler.handle runs its filters before it takes its own lock.)"""

    def __init__(self, handler: logging.Handler) -> None:
        super().__init__()
        self.handler = handler

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            self.handler.flush()
        except Exception:  # a failing stream: the other handler's own write reports it (a filter's error
            pass  # would come out of the logging call itself: uvicorn's "Shutting down" ended its shutdown)
        return True


def flush_first(logger: logging.Logger, handler: logging.Handler) -> None:
    """Every handler of `logger`, and logging's last resort (a record no handler takes: asyncio's
    "Task exception was never retrieved", say), writes `handler`'s waiting lines before its own (a
    FlushFirst on each, in place of one an earlier call put there)."""
    last = [logging.lastResort] if logging.lastResort is not None else []
    for h in [*logger.handlers, *last]:
        h.filters[:] = [f for f in h.filters if not isinstance(f, FlushFirst)]
        h.addFilter(FlushFirst(handler))


_HANDLERS: weakref.WeakSet[BatchingStreamHandler] = weakref.WeakSet()


def _reinit_after_fork() -> None:
    for handler in list(_HANDLERS):
        handler._after_fork()


os.register_at_fork(after_in_child=_reinit_after_fork)


def flush_every_from(environ: Mapping[str, str]) -> tuple[float, str | None]:
    """Seconds access lines may wait, from ENV_FLUSH (0: each is written at once), and what is wrong
    with the value given, if anything (the default is used then)."""
    raw = environ.get(ENV_FLUSH)
    if raw is None or not raw.strip():
        return FLUSH_EVERY, None
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0.0 <= value <= 60.0:  # (nan fails both)
        return FLUSH_EVERY, f"{ENV_FLUSH}={raw!r} is not a number of seconds from 0 to 60; using {FLUSH_EVERY:g}"
    return value, None


def install(logger: logging.Logger, level: str, stream: TextIO, flush_every: float = FLUSH_EVERY) -> BatchingStreamHandler:
    """`logger` (the gateway's root logger, "axonsim") writes to `stream` at `level` and above,
    through one BatchingStreamHandler, and no longer propagates."""
    handler = BatchingStreamHandler(stream, flush_every)
    handler.setFormatter(LineFormatter())
    for old in logger.handlers:
        old.close()  # (a BatchingStreamHandler writes what waits, and its flusher ends)
    logger.handlers[:] = [handler]
    logger.setLevel(level.upper())
    logger.propagate = False
    return handler


__all__ = ["ACCESS_LOGGER", "BATCH_BYTES", "ENV_FLUSH", "FLUSH_EVERY", "BatchingStreamHandler", "FlushFirst",
           "LineFormatter", "flush_every_from", "flush_first", "install", "quiet_records"]
