"""uvicorn's httptools protocol, with each response head sent in the same write as the first body bytes, keep-alive connections drained at shutdown, and clients that stop reading cut off.

An ASGI app answers with two messages, http.response.start and http.response.body, and uvicorn
writes each to the socket as it comes: two system calls per response, and on loopback two wake-ups
of the client, the first of which finds a head and no body. Measured on the proxy benchmark (2
vCPU, everything on one core): one write instead of two takes ~4 % off the proxy's CPU per request
at 64 concurrent requests and ~20 µs off the median latency at one.

So the transport the protocol writes to holds a response head back until the next write, which
then carries both. A head that no body follows in the same turn of the event loop (HEAD, 204, an
app still computing its body) is written at the end of that turn, so nothing waits longer than the
code already running. Everything else about the transport is the real one's.

A client that stops reading a long answer fills the socket's buffers; the transport then pauses the
protocol's writes, and uvicorn's `send` waits for ever: the request, its upstream connection and its
slot stay taken. As nginx's `send_timeout`, a connection whose paused writes make no progress for
the app's `send_timeout` seconds (gateway.send_timeout: the bytes still to send, in the transport's
buffer and the socket's queue, did not shrink at all) is closed, which the app hears as the client
leaving. A client that
reads slowly but steadily (a large answer on a slow link) is not cut off.

Reads have their limits too, as nginx's `large_client_header_buffers`, `client_header_timeout` and
`client_body_timeout`. httptools sets no bound on a request's head, and builds a long header value
by appending each read to it: one 150 MB header line took the event loop for seconds at a time and
every other request with it. A head that goes on past MAX_HEAD bytes is answered 431 and its
connection closed. What httptools cannot parse (a request line, a header, a chunked body) is
answered 400 in the same JSON shape. (uvicorn wrote plain text, even into the answer of another
request under way on a pipelined connection.) A refused head that follows whole requests on a
pipelined connection is answered after their answers, as nginx does; nothing more is read meanwhile.
A head or a body that stops arriving for the app's `read_timeout` seconds (gateway.read_timeout)
is answered 408 and closed: such connections, a slowloris's, were held for ever, with their slot,
their file descriptor and whatever body had come. The common request, whose head and body come in
one read, arms no timer. A body refused while the app waits on it (400, 408) is answered by the app,
in its client's API format and with the request's ids (ANSWER); the protocol answers the rest itself.

A response head's headers are checked in one pass over all names and one over all values
(OneCheckCycle), where uvicorn searches each with a regular expression: cheaper, and what is
written or refused is uvicorn's.
"""

from __future__ import annotations

import asyncio
import logging
import struct
from collections.abc import Coroutine
from typing import Any

import orjson

try:  # POSIX: a socket's send queue, for send_timeout's progress (elsewhere the transport's buffer alone)
    import fcntl
    import termios
except ImportError:  # pragma: no cover - Windows
    fcntl = termios = None  # type: ignore[assignment]

from uvicorn.protocols.http.httptools_impl import (
    HEADER_RE,
    HEADER_VALUE_RE,
    STATUS_LINE,
    HttpToolsProtocol,
    RequestResponseCycle,
)

log = logging.getLogger("axonsim.server.http")

_HEAD = b"HTTP/"  # how every status line uvicorn writes begins (responses, 100 Continue, its own errors)


class HeadHoldingTransport:
    """Wraps an asyncio transport: a write that starts a response is held until the next write or
    the end of the current event-loop turn, whichever comes first."""

    __slots__ = ("_transport", "_loop", "_held")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._held: bytes | None = None

    def write(self, data: bytes | bytearray | memoryview) -> None:
        held = self._held
        if held is not None:
            self._held = None
            self._transport.write(held + data)
        elif data[:5] == _HEAD:
            self._held = bytes(data)
            self._loop.call_soon(self.flush)
        else:
            self._transport.write(data)

    def writelines(self, lines: Any) -> None:
        self.write(b"".join(lines))

    def flush(self) -> None:
        """Write a held head now (it is also called at the end of the turn it was held in)."""
        held = self._held
        if held is not None:
            self._held = None
            if not self._transport.is_closing():
                self._transport.write(held)

    def close(self) -> None:
        self.flush()  # a head, say of an error response, goes out before the connection closes
        self._transport.close()

    def is_closing(self) -> bool:
        # Asked a few times a request (uvicorn's response end, the read limits): a method of its
        # own, since a lookup that falls through to __getattr__ costs ~5 times a direct call.
        return self._transport.is_closing()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


# The bytes uvicorn's expressions refuse in a header name and in a value (each matches one character),
# for bytes.translate, which drops them at C speed: ~2 instructions a byte, where the expressions'
# character classes took ~50.
_BAD_NAME_BYTES = bytes(b for b in range(256) if HEADER_RE.match(bytes((b,))))
_BAD_VALUE_BYTES = bytes(b for b in range(256) if HEADER_VALUE_RE.match(bytes((b,))))


class OneCheckCycle(RequestResponseCycle):
    """uvicorn's request-response cycle, whose response head is checked in two passes: one over all
    its header names joined, one over all its values. uvicorn searches each name and each value with
    a regular expression, two calls a header; with the gateway's eight headers this cuts the proxy's
    instructions a request from 584–585k to 568–579k (callgrind, paired runs). uvicorn's expressions
    each match one character, so the bytes they refuse are a set, and a pass over the joined names
    (or values) finds what a search of each would. A head that fails, an access log to write, a paused or closed connection,
    and every other message are left to uvicorn's own `send`, which writes or refuses them as it
    always has. `send` returns a coroutine for every message, as uvicorn's does (a task may be made
    of it), but is not itself a coroutine function."""

    def send(self, message: Any) -> Coroutine[Any, Any, None]:  # type: ignore[override]
        # A coroutine either way, made as uvicorn's would be, one per message (an `async def` here
        # wrapping uvicorn's made two for every body: ~10k instructions a request, callgrind).
        if (message["type"] != "http.response.start" or self.response_started or self.disconnected
                or self.flow.write_paused or self.access_log):
            return RequestResponseCycle.send(self, message)
        return self._start(message)

    async def _start(self, message: Any) -> None:
        if self.response_started or self.disconnected or self.flow.write_paused:  # since send() was called
            return await RequestResponseCycle.send(self, message)
        try:
            given = list(message.get("headers", []))
        except TypeError:  # uvicorn's own error, raised where it raises it
            return await RequestResponseCycle.send(self, message)
        headers = self.default_headers + given
        try:
            names = b"".join([name for name, _ in headers])
            values = b"".join([value for _, value in headers])
            bad = (len(names.translate(None, _BAD_NAME_BYTES)) != len(names)
                   or len(values.translate(None, _BAD_VALUE_BYTES)) != len(values))
        except (TypeError, ValueError):  # not pairs of bytes
            bad = True
        if bad:
            # uvicorn refuses it, saying why; given the headers as read here (an iterator is read once).
            return await RequestResponseCycle.send(self, {**message, "headers": given})  # type: ignore[arg-type]
        # From here, uvicorn's own steps.
        self.response_started = True
        self.waiting_for_100_continue = False
        status = message["status"]
        content = [STATUS_LINE[status]]
        closes = False
        for name, value in headers:
            name = name.lower()
            if name == b"content-length" and self.chunked_encoding is None:
                self.expected_content_length = int(value.decode())
                self.chunked_encoding = False
            elif name == b"transfer-encoding" and value.lower() == b"chunked":
                self.expected_content_length = 0
                self.chunked_encoding = True
            elif name == b"connection":
                if b"close" in [token.lower().strip() for token in value.split(b",")]:
                    self.keep_alive = False
                    closes = True
            content.extend((name, b": ", value, b"\r\n"))
        if not self.keep_alive and not closes:
            content.append(b"connection: close\r\n")
        if self.chunked_encoding is None and self.scope["method"] != "HEAD" and status not in (204, 304):
            self.chunked_encoding = True
            content.append(b"transfer-encoding: chunked\r\n")
        content.append(b"\r\n")
        self.transport.write(b"".join(content))


# Seconds an idle keep-alive connection stays open once shutdown begins. uvicorn closed it at once:
# a request its client was sending on it at that moment (a worker replaced by a reload, say) met a
# connection reset and was lost, as clients do not resend a POST. Meanwhile a request that arrives is
# served and answered with `Connection: close`; after it, the client opens a new connection.
DRAIN_GRACE = 1.0
# gateway.send_timeout's default, for an app that does not say (uvicorn may wrap the app).
SEND_TIMEOUT = 60.0
_OUTQ: int | None = getattr(termios, "TIOCOUTQ", None) if termios is not None else None  # unsent bytes (Linux)
BAD_FRAMING = "axonsim.bad_framing"  # a scope key: this request's body broke HTTP's framing (answered 400)
READ_TIMED_OUT = "axonsim.read_timed_out"  # a scope key: this request's body stopped arriving (answered 408)
# A scope key set with either of those two: a callable that lets the app's send() write its answer
# (True; the connection then closes), for an app that answers such a request itself.
ANSWER = "axonsim.answer"
# Bytes of a request's head (request line and headers), counted from the read it began in: nginx's
# default large_client_header_buffers hold 4 × 8 KiB. (A head that begins and ends in one read is not
# measured: a read holds what the socket had, 64 KiB on loopback.)
MAX_HEAD = 64 * 1024
# gateway.read_timeout's default, for an app that does not say.
READ_TIMEOUT = 60.0


def _error_response(status: bytes, message: str, code: str) -> bytes:
    """A whole response, closing its connection, in the OpenAI error shape (the request's path, and so
    its API family, is not known yet when its head is at fault)."""
    body = orjson.dumps({"error": {"message": message, "type": "invalid_request_error", "param": None,
                                   "code": code}})
    return (b"HTTP/1.1 " + status + b"\r\ncontent-type: application/json\r\ncontent-length: "
            + str(len(body)).encode() + b"\r\nconnection: close\r\n\r\n" + body)


class CoalescingHttpToolsProtocol(HttpToolsProtocol):
    """What `axonsim serve` runs: uvicorn's httptools protocol writing through a HeadHoldingTransport,
    draining idle keep-alive connections at shutdown (DRAIN_GRACE) rather than cutting them."""

    _draining = False
    _refused = False  # a request (its head or body) was refused: nothing more is read or parsed on this connection
    _deferred: tuple[bytes, str, str] | None = None  # a head's refusal, due once the answers ahead are complete

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        # The cycles of this connection that pipelining left behind `self.cycle`: uvicorn points it
        # at the newest request, so at a lost connection it told only a queued request, and the one
        # running went on (its upstream call included) for a client long gone.
        self._open: list[Any] = []
        self._stall: asyncio.TimerHandle | None = None  # armed while the writes are paused
        self._unsent = 0  # the bytes still to send (_pending) when the timer was armed
        self._heads_ended = 0  # heads that ended in the read under way
        self._head_seen = -1  # bytes of a head under way since the read it began in; -1: none is
        self._reading: asyncio.TimerHandle | None = None  # armed while a head or a body is under way
        super().connection_made(HeadHoldingTransport(transport, asyncio.get_running_loop()))  # type: ignore[arg-type]

    def pause_writing(self) -> None:
        super().pause_writing()
        if self._stall is None:
            self._arm(getattr(self.app, "send_timeout", SEND_TIMEOUT))

    def _arm(self, timeout: float) -> None:
        self._unsent = self._pending()
        self._stall = self.loop.call_later(timeout, self._stalled, timeout)

    def _pending(self) -> int:
        """Bytes the client has yet to take: the transport's buffer and the socket's send queue
        (the kernel's, TIOCOUTQ where there is one). The transport refills the kernel's queue only
        when a third of it is free, so its own buffer alone may stand still for many seconds while a
        slow client reads; the kernel's queue shrinks with every byte the client acknowledges."""
        n: int = self.transport.get_write_buffer_size()
        sock = self.transport.get_extra_info("socket")
        if _OUTQ is not None and sock is not None:
            try:
                n += struct.unpack("i", fcntl.ioctl(sock.fileno(), _OUTQ, b"\0\0\0\0"))[0]  # type: ignore[union-attr]
            except (OSError, ValueError):
                pass
        return n

    def resume_writing(self) -> None:
        super().resume_writing()
        if self._stall is not None:
            self._stall.cancel()
            self._stall = None

    def _stalled(self, timeout: float) -> None:
        self._stall = None
        if self.transport.is_closing():
            return
        if self._pending() < self._unsent:
            self._arm(timeout)  # the client read some: slow, not stalled
        else:
            log.info("a client read nothing of its answer for %g s (gateway.send_timeout): connection closed", timeout)
            self.transport.abort()  # connection_lost follows: the request hears its client left

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        seen = self._head_seen
        if seen >= 0:  # a head that did not end in the read it began in
            seen += len(data)
            if seen > MAX_HEAD:
                self._head_too_large()
                return
            self._head_seen = seen
        cycle = self.cycle
        # Whether this read begins with a head (no body under way): then, until a head ends in it, all
        # of its bytes are that head's.
        head_first = seen < 0 and (cycle is None or not cycle.more_body)
        if head_first and len(data) > MAX_HEAD and data.find(b"\r\n\r\n", 0, MAX_HEAD + 4) < 0:
            self._head_too_large()  # refused before httptools builds it (it would take it whole)
            return
        self._heads_ended = 0
        super().data_received(data)
        if self.transport.is_closing() or self._refused:
            return
        scope = getattr(self, "scope", None)
        if scope is not None and "method" not in scope:  # a head under way (on_headers_complete sets it)
            if self._head_seen < 0:
                # Counted from the read it began in when that read is all its own (a head of 65 KB came
                # in two reads on loopback, and only the second was counted); after another request's
                # bytes, from the next read on.
                self._head_seen = len(data) if head_first and not self._heads_ended else 0
            self._await_more()
            return
        self._head_seen = -1
        cycle = self.cycle
        if cycle is not None and cycle.more_body:
            self._await_more()  # a body under way (or one still coming after its early answer, dropped)
        elif self._reading is not None:
            self._reading.cancel()
            self._reading = None

    def _head_too_large(self) -> None:
        self._refuse_head(b"431 Request Header Fields Too Large",
                          f"the request's head (request line and headers) exceeds {MAX_HEAD // 1024} KiB",
                          "request_header_fields_too_large")

    def _await_more(self) -> None:
        """(Re)arm the read timer: the rest of a head or a body must come within read_timeout."""
        if self._reading is not None:
            self._reading.cancel()
        timeout = getattr(self.app, "read_timeout", READ_TIMEOUT)
        self._reading = self.loop.call_later(timeout, self._read_timed_out, timeout)

    def _read_timed_out(self, timeout: float) -> None:
        self._reading = None
        if self.transport.is_closing() or self._refused:
            return
        message = f"the request did not arrive within {timeout:g} s of its last bytes (gateway.read_timeout)"
        log.info("a client sent nothing more of its request for %g s (gateway.read_timeout): 408, closed", timeout)
        cycle = self.cycle
        if self._head_seen >= 0:
            self._refuse_head(b"408 Request Timeout", message, "request_timeout")
            return
        else:  # a body: answered unless the app has begun (or given) its answer already
            answer = cycle is not None and not cycle.response_started and not self._earlier_open(cycle)
            if cycle is not None and not cycle.response_complete:
                # The app waits on this body: it hears a disconnect, and this says what it was.
                cycle.scope[READ_TIMED_OUT] = True  # type: ignore[literal-required]
                if answer:
                    self._app_answers(cycle, b"408 Request Timeout", message, "request_timeout")
                    return
        self._refuse(b"408 Request Timeout", message, "request_timeout", answer)

    def _answer_free(self) -> bool:
        """Whether a new request's head may be answered: no earlier answer is under way on this
        connection (pipelining)."""
        cycle = self.cycle
        return cycle is None or cycle.response_complete

    def _earlier_open(self, cycle: Any) -> bool:
        """Whether a request pipelined ahead of `cycle` is still unanswered (its answer comes first)."""
        return any(c is not cycle and not c.response_complete for c in self._open)

    def _refuse_head(self, status: bytes, message: str, code: str) -> None:
        """Refuse a request's head: at once, or, while the answers of whole requests pipelined ahead of
        it are under way, once they are complete (as nginx does). Nothing more is read meanwhile. It
        was closed at once, unanswered: the requests ahead were cut off as if their client had left."""
        if self._answer_free():
            self._refuse(status, message, code, True)
            return
        self._head_seen = -1
        self._refused = True
        self.transport.pause_reading()
        self._deferred = (status, message, code)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        deferred = self._deferred
        if deferred is not None and self._answer_free() and not self.transport.is_closing():
            self._deferred = None
            self._refuse(*deferred, True)

    def _refuse(self, status: bytes, message: str, code: str, answer: bool) -> None:
        """Close the connection, after answering `status` if `answer` (else an answer is under way
        on it that this one would break into)."""
        self._head_seen = -1
        if answer:
            self.transport.write(_error_response(status, message, code))
        self.transport.close()

    def send_400_response(self, msg: str) -> None:
        # httptools could not parse what came (the request line, a header, a chunked body). uvicorn
        # answers in plain text, at once, whatever it is writing meanwhile; this answers as the other
        # refusals do (JSON, the connection closed), and never into an answer under way.
        message = "the request is not valid HTTP/1.1 (its request line, a header or its chunked body could not be parsed)"
        cycle = self.cycle
        if cycle is not None and cycle.more_body:  # the body of the request under way
            answer = not cycle.response_started and not self._earlier_open(cycle)
            if not cycle.response_complete:
                # The app, waiting on that body, hears a disconnect; this tells it what it was.
                cycle.scope[BAD_FRAMING] = True  # type: ignore[literal-required]
                if answer:
                    self._app_answers(cycle, b"400 Bad Request", message, "invalid_http")
                    return
        else:  # a head: after whole requests, whose answers it must not break into
            self._refuse_head(b"400 Bad Request", message, "invalid_http")
            return
        self._refuse(b"400 Bad Request", message, "invalid_http", answer)

    def _app_answers(self, cycle: Any, status: bytes, message: str, code: str) -> None:
        """Refuse the body of `cycle`, whose app has not answered yet, letting the app answer: it knows
        the request's API family and ids, which its client needs to find the request's record (the
        gateway's client-API handler: `admit` in server/app.py). The app hears a disconnect, as from
        a client that left, and finds in the scope (ANSWER) the call that lets its `send` write again
        (True), for an answer after which the connection closes. An app that makes no such call in
        the same turn of the event loop (the admin API, say) gets the protocol's own answer, written
        just after."""
        self._head_seen = -1
        self._refused = True
        self.transport.pause_reading()
        if self._reading is not None:
            self._reading.cancel()
            self._reading = None
        answered = False

        def answer() -> bool:
            nonlocal answered
            if answered or self.transport.is_closing():
                return False
            answered = True
            cycle.disconnected = False  # its send() writes again ...
            cycle.keep_alive = False  # ... one answer, then uvicorn closes the connection
            return True

        def otherwise() -> None:
            nonlocal answered
            if not answered and not self.transport.is_closing():
                answered = True
                self._refuse(status, message, code, True)

        cycle.scope[ANSWER] = answer
        cycle.disconnected = True  # what the app's receive() reads, and its send() then drops
        cycle.message_event.set()
        # After the app's turn: setting the event scheduled its task's wake-up (or the task has yet to
        # take its first step), and this comes later in the same queue.
        self.loop.call_soon(otherwise)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._stall is not None:
            self._stall.cancel()
            self._stall = None
        if self._reading is not None:
            self._reading.cancel()
            self._reading = None
        for cycle in self._open:
            if not cycle.response_complete:
                cycle.disconnected = True
                cycle.message_event.set()
        self._open = []
        super().connection_lost(exc)

    def shutdown(self) -> None:
        if self._draining:
            return
        self._draining = True
        if self.cycle is None or self.cycle.response_complete:
            self.loop.call_later(DRAIN_GRACE, self._end_drain)
        else:
            self.cycle.keep_alive = False  # the answer under way is the last: it closes the connection

    def _end_drain(self) -> None:
        if self.transport.is_closing():
            return
        if self.cycle is None or self.cycle.response_complete:
            self.transport.close()
        else:
            self.cycle.keep_alive = False

    def on_message_complete(self) -> None:
        super().on_message_complete()
        cycle = self.cycle
        if cycle is not None and cycle.response_complete:
            # uvicorn skips a request answered before its body ended (a 401 sent at once): its body
            # would stay "under way" for good, and what comes next on the connection, taken for it.
            cycle.more_body = False

    def on_headers_complete(self) -> None:
        self._heads_ended += 1
        before = self.cycle
        super().on_headers_complete()
        cycle = self.cycle
        if cycle is not before and type(cycle) is RequestResponseCycle:
            # uvicorn builds its own class by name; this one differs in `send` only, and its task has
            # yet to take `send` (run_asgi reads it at the task's first step; with an eager task
            # factory the first request would keep uvicorn's, which is as good).
            cycle.__class__ = OneCheckCycle
        if before is not None and before is not self.cycle and not before.response_complete:
            # Pipelined: uvicorn's pointer moves on to the new request while `before` is still
            # running or queued (only then: the common request pays two checks, no list work).
            self._open = [c for c in self._open if not c.response_complete]
            self._open.append(before)
        if self._draining and self.cycle is not None:
            self.cycle.keep_alive = False  # a request that came during the drain: served, then closed
