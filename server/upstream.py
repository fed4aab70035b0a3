"""The upstream seam: one small interface for sending one request to a provider (aiohttp live, scripted in tests).

Shaped like httpx's transport: the driver hands `send` an UpstreamRequest and gets back a response
whose headers have arrived; it then either `read()`s the whole body or pulls `next_chunk()` until
b"". Transport trouble surfaces as exactly two exception types, so the driver classifies failures
without knowing the client library:

    UpstreamTimeout          a deadline passed (connect, first token, idle gap, total)
    UpstreamConnectionError  refused, reset, cut mid-body: no usable HTTP answer

Timeouts are per channel (Channel.timeouts, else gateway.timeouts) and resolved once into Limits:
    connect      TCP connect
    first_token  streams: from send until the first body chunk (headers included)
    idle         streams: longest gap between two chunks after the first
    total        the whole attempt, body included (non-stream requests wait up to this for headers,
                 since providers only answer once the whole completion is generated)
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Protocol

import aiohttp

from axonsim.config import Timeouts


class UpstreamError(Exception):
    """A transport failure; the message is generic on purpose (it may reach logs)."""


class UpstreamTimeout(UpstreamError):
    pass


class UpstreamConnectionError(UpstreamError):
    pass


class Limits:
    """One channel's timeouts, resolved once (the aiohttp timeout object is built here, not per request)."""

    __slots__ = ("connect", "first_token", "idle", "total", "client_timeout")

    def __init__(self, t: Timeouts) -> None:
        self.connect = t.connect
        self.first_token = t.first_token
        self.idle = t.idle
        self.total = t.total
        # Only the connect phase is left to aiohttp; read deadlines are ours (first token vs idle
        # differ, and aiohttp's sock_read would apply the idle bound to the wait for headers too).
        self.client_timeout = aiohttp.ClientTimeout(total=None, connect=None, sock_connect=t.connect, sock_read=None)


class UpstreamRequest:
    __slots__ = ("url", "headers", "body", "stream", "limits")

    def __init__(self, url: str, headers: Mapping[str, str], body: bytes, stream: bool, limits: Limits) -> None:
        self.url = url
        self.headers = headers
        self.body = body
        self.stream = stream
        self.limits = limits


class UpstreamResponse(Protocol):
    status: int
    headers: Mapping[str, str]

    async def read(self) -> bytes:
        """The whole body (then the connection is released)."""
        ...

    async def next_chunk(self) -> bytes:
        """The next piece of the body as it arrives, b"" at the end."""
        ...

    def close(self) -> None:
        """Give the connection up (aborted if the body was not read to the end). Idempotent."""
        ...


class Upstream(Protocol):
    async def start(self) -> None: ...

    async def send(self, req: UpstreamRequest) -> UpstreamResponse: ...

    async def aclose(self) -> None: ...


# --------------------------------------------------------------------------------------------------
# aiohttp: the live implementation


def _classify(exc: BaseException) -> UpstreamError:
    # Timeouts first: aiohttp's ServerTimeoutError is both a ClientError and a TimeoutError.
    if isinstance(exc, TimeoutError):
        return UpstreamTimeout("the upstream did not answer in time")
    return UpstreamConnectionError("the connection to the upstream failed")


_TRANSPORT_ERRORS = (aiohttp.ClientError, OSError, TimeoutError)


class AiohttpUpstream:
    """One shared ClientSession for the whole process: pooled keep-alive connections, parsing in C."""

    def __init__(self, limit: int = 512, keepalive_timeout: float = 30.0) -> None:
        self._limit = limit
        self._keepalive = keepalive_timeout
        self._session: aiohttp.ClientSession | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def start(self) -> None:
        if self._session is not None:
            return
        self._loop = asyncio.get_running_loop()
        connector = aiohttp.TCPConnector(limit=self._limit, limit_per_host=0, keepalive_timeout=self._keepalive,
                                         ttl_dns_cache=300)
        # No cookie jar: a gateway must not carry one provider answer's cookies into another request.
        self._session = aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.DummyCookieJar(),
                                              skip_auto_headers=("User-Agent",), auto_decompress=True)

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def send(self, req: UpstreamRequest) -> UpstreamResponse:
        session = self._session
        loop = self._loop
        if session is None or loop is None:
            raise RuntimeError("AiohttpUpstream.start() was not awaited")
        lim = req.limits
        start = loop.time()
        total = start + lim.total
        if not req.stream:
            # Headers and body under one deadline: one timeout per request, not two.
            try:
                async with asyncio.timeout_at(total):
                    resp = await session.post(req.url, data=req.body, headers=req.headers,
                                              timeout=lim.client_timeout, allow_redirects=False)
                    try:
                        body = await resp.read()
                    finally:
                        resp.release()
            except _TRANSPORT_ERRORS as exc:
                raise _classify(exc) from None
            return _ReadResponse(resp.status, resp.headers, body)
        first = min(start + lim.first_token, total)
        try:
            async with asyncio.timeout_at(first):
                resp = await session.post(req.url, data=req.body, headers=req.headers, timeout=lim.client_timeout,
                                          allow_redirects=False)
        except _TRANSPORT_ERRORS as exc:
            raise _classify(exc) from None
        return _StreamResponse(resp, loop, first, total, lim.idle)


class _ReadResponse:
    """A non-stream answer, already read whole."""

    __slots__ = ("status", "headers", "_body")

    def __init__(self, status: int, headers: Mapping[str, str], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self._body = body

    async def read(self) -> bytes:
        return self._body

    async def next_chunk(self) -> bytes:
        body, self._body = self._body, b""
        return body

    def close(self) -> None:
        pass


class _StreamResponse:
    """A streamed answer. Deadlines are kept by one watchdog timer per stream rather than a timeout
    object per chunk (which costs more than the rest of relaying a chunk): a read notes when it
    began, and the watchdog, when it fires during a read that has waited too long, closes the
    connection, which wakes the read with an error that is reported as UpstreamTimeout. Time spent
    relaying to a slow client is not counted as the upstream being idle."""

    __slots__ = ("_resp", "_loop", "_first", "_total", "_idle", "_got_first", "_eof", "_reading", "_since",
                 "_timer", "_expired", "status", "headers")

    def __init__(self, resp: aiohttp.ClientResponse, loop: asyncio.AbstractEventLoop, first: float, total: float,
                 idle: float) -> None:
        self._resp = resp
        self._loop = loop
        self._first = first  # absolute deadline for the first chunk
        self._total = total  # absolute deadline for everything
        self._idle = idle
        self._got_first = False
        self._eof = False
        self._reading = False
        self._since = 0.0  # when the pending read began
        self._timer: asyncio.TimerHandle | None = None
        self._expired = False
        self.status = resp.status
        self.headers: Mapping[str, str] = resp.headers

    def _deadline(self) -> float:
        if not self._got_first:
            return self._first
        d = self._since + self._idle
        return d if d < self._total else self._total

    async def read(self) -> bytes:
        self._since = self._loop.time()
        self._reading = True
        self._got_first = True
        self._idle = self._total  # a whole-body read is bounded by the total deadline only
        if self._timer is None:
            self._timer = self._loop.call_at(self._deadline(), self._fire)
        try:
            data = await self._resp.read()
        except _TRANSPORT_ERRORS as exc:
            self.close()
            raise (UpstreamTimeout("the upstream did not answer in time") if self._expired else _classify(exc)) from None
        finally:
            self._reading = False
        self.close()
        return data

    async def next_chunk(self) -> bytes:
        if self._eof:
            return b""
        self._since = self._loop.time()
        self._reading = True
        if self._timer is None:
            self._timer = self._loop.call_at(self._deadline(), self._fire)
        try:
            data = await self._resp.content.readany()
        except _TRANSPORT_ERRORS as exc:
            self.close()
            raise (UpstreamTimeout("the upstream did not answer in time") if self._expired else _classify(exc)) from None
        finally:
            self._reading = False
        if self._expired:
            self.close()
            raise UpstreamTimeout("the upstream did not answer in time")
        if not data:
            self._eof = True
            self._disarm()
            self._resp.release()  # read to the end: the connection goes back to the pool
        elif not self._got_first:
            self._got_first = True
            self._disarm()  # armed for the first-token deadline, which may lie beyond the idle one
        return data

    def _fire(self) -> None:
        self._timer = None
        if self._eof or not self._reading:
            return  # relaying meanwhile: the next read arms the timer again
        deadline = self._deadline()
        # A timer may run a hair early (clock resolution); a millisecond of slack avoids re-arming for nothing.
        if self._loop.time() + 0.001 >= deadline:
            self._expired = True
            self._resp.close()  # wakes the pending read
        else:
            self._timer = self._loop.call_at(deadline, self._fire)  # the read began after the timer was set

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def close(self) -> None:
        self._disarm()
        if not self._eof:
            self._eof = True
            self._resp.close()  # unread body: the connection cannot be reused


# --------------------------------------------------------------------------------------------------
# MockUpstream: scripted answers for tests (the httpx.MockTransport of this seam)


HANG = object()
"""In MockReply.chunks: wait forever (until cancelled)."""


class MockReply:
    """A scripted answer. `chunks` (streams) may mix bytes, float delays (seconds), an exception to
    raise at that point, and HANG; `delay` passes before the headers; `exc` is raised by send."""

    def __init__(self, status: int = 200, body: bytes = b"", headers: Mapping[str, str] | None = None,
                 chunks: Sequence[Any] | None = None, delay: float = 0.0, exc: BaseException | None = None) -> None:
        self.status = status
        self.body = body
        self.headers = dict(headers or {})
        self.chunks = list(chunks) if chunks is not None else None
        self.delay = delay
        self.exc = exc


MockHandler = Callable[[UpstreamRequest], "MockReply | Awaitable[MockReply]"]


class MockUpstream:
    """Answers every request with `handler(request)`; keeps what was sent and what became of it."""

    def __init__(self, handler: MockHandler) -> None:
        self.handler = handler
        self.requests: list[UpstreamRequest] = []
        self.responses: list[MockResponse] = []

    async def start(self) -> None:
        pass

    async def aclose(self) -> None:
        pass

    async def send(self, req: UpstreamRequest) -> UpstreamResponse:
        self.requests.append(req)
        reply = self.handler(req)
        if not isinstance(reply, MockReply):
            reply = await reply
        if reply.delay:
            await asyncio.sleep(reply.delay)
        if reply.exc is not None:
            raise reply.exc
        resp = MockResponse(reply)
        self.responses.append(resp)
        return resp


class MockResponse:
    def __init__(self, reply: MockReply) -> None:
        self.status = reply.status
        self.headers: Mapping[str, str] = {k.lower(): v for k, v in reply.headers.items()}
        if reply.chunks is None:
            self._chunks: list[Any] = [reply.body] if reply.body else []
        else:
            self._chunks = list(reply.chunks)
        self.closed = False
        self.cancelled = False  # the driver was cancelled while waiting on this response
        self.finished = False  # read to the end

    async def read(self) -> bytes:
        out: list[bytes] = []
        while True:
            c = await self.next_chunk()
            if not c:
                return b"".join(out)
            out.append(c)

    async def next_chunk(self) -> bytes:
        try:
            while self._chunks:
                c = self._chunks.pop(0)
                if isinstance(c, (int, float)):
                    await asyncio.sleep(c)
                elif c is HANG:
                    await asyncio.Event().wait()
                elif isinstance(c, BaseException):
                    raise c
                elif c:
                    return bytes(c)
        except asyncio.CancelledError:
            self.cancelled = True
            raise
        self.finished = True
        return b""

    def close(self) -> None:
        self.closed = True
