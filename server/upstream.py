"""The upstream seam: one small interface for sending one request to a provider (aiohttp live, scripted in tests).

Shaped like httpx's transport: the driver hands `send` an UpstreamRequest and gets back a response
whose headers have arrived; it then either `read()`s the whole body or pulls `next_chunk()` until
b"". Transport trouble surfaces as exactly two exception types, so the driver classifies failures
without knowing the client library:

    UpstreamTimeout          a deadline passed (connect, first token, idle gap, total)
    UpstreamConnectionError  refused, reset, cut mid-body: no usable HTTP answer

Timeouts are per channel (Channel.timeouts, else gateway.timeouts) and resolved once into Limits:
    connect      TCP connect
    first_token  streams: from send until the first content (headers included; keep-alive pings and
                 role-only chunks before it do not count: the driver says when content began)
    idle         streams: longest gap between two chunks after the first
    total        the whole attempt, body included (non-stream requests wait up to this for headers,
                 since providers only answer once the whole completion is generated); a stream's is
                 pushed back by the time the gateway spends relaying between reads (the client's)

Deadlines are kept on one shared loop timer (Deadlines), not a timer per request: `asyncio.timeout`
per attempt costs a Timeout object, a timer armed and cancelled and the task's cancel bookkeeping,
several µs per request; here a wait costs a set insert and removal, and the timer is re-armed only
when a deadline earlier than the armed one arrives (rare: most requests share their timeouts).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import math
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Protocol

import aiohttp
from aiohttp.http_exceptions import HttpProcessingError
from mypy_extensions import mypyc_attr
from yarl import URL

from axonsim.config import Timeouts
from server.pool_request import PoolRequest

log = logging.getLogger("axonsim.server.upstream")


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
    """`within`: seconds the attempt may take at most, when the request's deadline is sooner than the
    channel's total timeout (routing.retry.deadline); None otherwise."""

    __slots__ = ("url", "headers", "body", "stream", "limits", "within")

    def __init__(self, url: str, headers: Mapping[str, str], body: bytes, stream: bool, limits: Limits,
                 within: float | None = None) -> None:
        self.url = url
        self.headers = headers
        self.body = body
        self.stream = stream
        self.limits = limits
        self.within = within


class UpstreamResponse(Protocol):
    status: int
    headers: Mapping[str, str]

    async def read(self) -> bytes:
        """The whole body (then the connection is released)."""
        ...

    async def next_chunk(self) -> bytes:
        """The next piece of the body as it arrives, b"" at the end."""
        ...

    def finish(self) -> None:
        """After a stream's terminal event: the body's end is awaited briefly in the background (the
        client's end of stream does not wait for it), so that the connection goes back to the pool;
        then the response is closed (aborted, if the end did not come). Never raises."""
        ...

    def began(self) -> None:
        """The answer's content has begun (a stream's commit): reads are bounded by `idle` from here,
        not by the first-token deadline, which keep-alive pings and role-only chunks do not meet."""
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
# After a stream's terminal event, how long the body's end is waited for (at most `idle`): it lets
# the connection be pooled; an upstream that keeps the body open longer has its connection closed.
END_GRACE = 1.0
MOCK_END_GRACE = 0.05
_TIMED_OUT = "the upstream did not answer in time"


@mypyc_attr(allow_interpreted_subclasses=True)  # a base for deadline callbacks (tests add their own)
class _Watch:
    """One pending wait on the shared timer: `fire` is called once `at` has passed."""

    __slots__ = ("at", "expired")

    def __init__(self, at: float) -> None:
        self.at = at
        self.expired = False

    def fire(self) -> None:
        raise NotImplementedError


class _CancelTask(_Watch):
    """Cancels the task waiting (on headers or a whole body): delivered at its await, inside `send`."""

    __slots__ = ("task", "cancelling")

    def __init__(self, at: float, task: asyncio.Task[Any]) -> None:
        super().__init__(at)
        self.task = task
        self.cancelling = task.cancelling()  # cancel requests that were not ours, to tell them apart

    def fire(self) -> None:
        self.task.cancel()

    def settle(self) -> bool:
        """After the wait, if it expired: withdraw our cancel request; True if no other one is pending."""
        return self.task.uncancel() <= self.cancelling


class HTTPResponse(Protocol):
    """What the upstream seam uses of an answer: aiohttp's ClientResponse, or a RawResponse."""

    status: int

    @property
    def headers(self) -> Mapping[str, str]: ...

    @property
    def content(self) -> aiohttp.StreamReader: ...

    @property
    def closed(self) -> bool: ...

    async def read(self) -> bytes: ...

    def release(self) -> Any: ...

    def close(self) -> None: ...


class _CloseResponse(_Watch):
    """Closes a stream's connection, which wakes its pending read with an error."""

    __slots__ = ("resp",)

    def __init__(self, at: float, resp: HTTPResponse) -> None:
        super().__init__(at)
        self.resp = resp

    def fire(self) -> None:
        self.resp.close()


class Deadlines:
    """The deadlines of every pending upstream wait, on one loop timer.

    `add` a watch before awaiting and `discard` it after. The timer stays armed at the earliest
    deadline it knows of; a later deadline (the usual case: the same timeouts for every request)
    does not touch it. When it fires it expires every watch that is due (a millisecond of slack:
    timers may run a hair early), then re-arms at the earliest deadline left, if any."""

    __slots__ = ("_loop", "_watches", "_timer", "_armed")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._watches: set[_Watch] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._armed = math.inf

    def __len__(self) -> int:
        return len(self._watches)

    def add(self, w: _Watch) -> None:
        self._watches.add(w)
        if w.at < self._armed:
            self._arm(w.at)

    def discard(self, w: _Watch) -> None:
        self._watches.discard(w)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._armed = math.inf

    def _arm(self, at: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._armed = at
        self._timer = self._loop.call_at(at, self._fire)

    def _fire(self) -> None:
        self._timer = None
        self._armed = math.inf
        due = self._loop.time() + 0.001
        expired = [w for w in self._watches if w.at <= due]
        for w in expired:
            self._watches.discard(w)
            w.expired = True
            try:
                w.fire()
            except Exception:  # a failing callback must not stop the other deadlines
                log.exception("an upstream deadline callback failed")
        if self._watches:
            self._arm(min(w.at for w in self._watches))


class AiohttpUpstream:
    """One shared ClientSession for the whole process: pooled keep-alive connections, parsing in C.
    A request leaves the cheapest way that can carry it: _send_raw (its head written on a pooled
    connection), else _post (ClientRequest on a pooled connection), else session.post."""

    def __init__(self, limit: int = 512, keepalive_timeout: float = 30.0) -> None:
        self._limit = limit
        self._keepalive = keepalive_timeout
        self._session: aiohttp.ClientSession | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._deadlines: Deadlines | None = None
        self.drains: set[asyncio.Task[None]] = set()  # streams' waits for their body's end (finish)
        self._params: dict[str, Any] | None = None  # _post's response parameters; None: session.post only
        self._raw = True  # _send_raw for what it can send (tests turn it off to exercise _post)
        self._urls: dict[str, _Target | None] = {}

    async def start(self) -> None:
        if self._session is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._deadlines = Deadlines(self._loop)
        connector = aiohttp.TCPConnector(limit=self._limit, limit_per_host=0, keepalive_timeout=self._keepalive,
                                         ttl_dns_cache=300)
        # No cookie jar: a gateway must not carry one provider answer's cookies into another request.
        # The User-Agent is the gateway's own, set with each request's headers (server/driver.py).
        self._session = aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.DummyCookieJar(),
                                              auto_decompress=True)
        self._params = _response_params(self._session)

    async def aclose(self) -> None:
        drains = list(self.drains)
        for t in drains:
            t.cancel()
        if drains:
            await asyncio.gather(*drains, return_exceptions=True)
        if self._deadlines is not None:
            self._deadlines.close()
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def send(self, req: UpstreamRequest) -> UpstreamResponse:
        session = self._session
        loop = self._loop
        deadlines = self._deadlines
        if session is None or loop is None or deadlines is None:
            raise RuntimeError("AiohttpUpstream.start() was not awaited")
        task = asyncio.current_task(loop)  # with the loop given: no getpid system call (see server/app.py)
        if task is None:
            raise RuntimeError("AiohttpUpstream.send must run in a task")
        lim = req.limits
        start = loop.time()
        total = start + lim.total
        hard = math.inf
        within = req.within
        if within is not None:  # the request's deadline: a bound that time spent relaying does not move
            hard = start + within
            if within < lim.total:
                total = hard
        # Non-stream: headers and body under the total deadline. Stream: the headers under the
        # first-token deadline; the body's deadlines are the _StreamResponse's.
        w = _CancelTask(total if not req.stream else min(start + lim.first_token, total), task)
        deadlines.add(w)
        try:
            target = self._url(req.url) if self._params is not None else None
            resp: HTTPResponse
            if target is not None:
                head = target.head(req.headers, len(req.body)) if self._raw else None
                if head is not None:
                    resp = await self._send_raw(session, target, head, req)
                else:
                    resp = await self._post(session, target.url, req)
            else:
                resp = await session.post(req.url, data=req.body, headers=req.headers, timeout=lim.client_timeout,
                                          allow_redirects=False)
            if req.stream:
                deadlines.discard(w)  # before the response exists as ours: nothing may cancel after this
                if w.expired and w.settle():  # pragma: no cover - cancel requests are delivered at an await
                    resp.close()
                    raise UpstreamTimeout(_TIMED_OUT)
                return _StreamResponse(resp, loop, deadlines, w.at, total, lim.idle, hard, self.drains)
            try:
                body = await resp.read()
            finally:
                resp.release()
        except asyncio.CancelledError:
            if w.expired and w.settle():
                raise UpstreamTimeout(_TIMED_OUT) from None
            raise  # not ours (client gone, shutdown), or ours and another one too
        except _TRANSPORT_ERRORS as exc:
            if w.expired and w.settle():
                raise UpstreamTimeout(_TIMED_OUT) from None
            raise _classify(exc) from None
        finally:
            deadlines.discard(w)
        if w.expired:  # pragma: no cover - only if a library swallowed our cancel; keep the count right
            w.settle()
        return ReadResponse(resp.status, resp.headers, body)


    def _url(self, s: str) -> _Target | None:
        """The target _post and _send_raw can send to (channels' URLs repeat: prepared once); None for a
        URL left to session.post: one it refuses (InvalidUrlClientError, NonHttpUrlClientError), or with
        credentials."""
        target = self._urls.get(s, _UNSEEN)
        if target is not _UNSEEN:
            return target  # type: ignore[return-value]
        parsed: _Target | None = None
        try:
            u = URL(s)
        except ValueError:
            pass  # session.post raises InvalidUrlClientError for it
        else:
            # Credentials (which the config refuses in a base_url): session.post's way, which turns
            # them into an Authorization header only where no other is set, is kept for them.
            if u.scheme in ("http", "https") and u.raw_host and u.raw_user is None and u.raw_password is None:
                assert self._session is not None and self._loop is not None
                parsed = _Target(u, self._session, self._loop)
        if len(self._urls) >= _URLS_KEPT:  # a bound: Gemini's URLs name the model, any number of them
            self._urls.clear()
        self._urls[s] = parsed
        return parsed

    async def _send_raw(self, session: aiohttp.ClientSession, target: _Target, head: bytes,
                        req: UpstreamRequest) -> RawResponse:
        """The request written as bytes on a pooled connection of aiohttp's, its answer read by that
        connection's own parser (aiohttp's, in C): aiohttp without its ClientRequest and ClientResponse.

        Those two objects cost more than half of a proxied request's CPU in this process: at 64
        concurrent requests the benchmark's bare pass-through proxy took 117 µs a request through
        session.post and 63 µs through this seam (benchmarks/bare_proxy.py --raw). What they do per request
        that a gateway needs is done here, or once per URL (_Target): the head (request line, Host,
        the headers aiohttp adds of its own, the request's, Content-Length); what it does not need
        (cookies, redirects, auth from the URL, proxies, traces, a task to write the body) is left out.
        The connection comes from aiohttp's pool and goes back to it by aiohttp's own rules."""
        conn = await session.connector.connect(target.template, [], req.limits.client_timeout)  # type: ignore[union-attr]
        try:
            protocol = conn.protocol
            transport = conn.transport
            if protocol is None or transport is None or transport.is_closing():
                raise aiohttp.ClientConnectionError("the connection closed before the request was sent")
            protocol.set_response_params(**self._params)  # type: ignore[arg-type]
            transport.writelines((head, req.body))  # one system call, the body not copied
            while True:
                message, payload = await protocol.read()
                code = message.code
                if code < 100 or code > 199 or code == 101:
                    break  # (1xx interim answers are skipped, as ClientResponse.start does)
        except HttpProcessingError as exc:  # no HTTP answer (ClientResponse.start raises a ClientError)
            conn.close()
            raise aiohttp.ClientConnectionError("the upstream's answer is not HTTP") from exc
        except BaseException:
            conn.close()
            raise
        resp = RawResponse(conn, code, message.headers, payload)
        # The body arrived whole: the connection goes back to the pool then, as ClientResponse gives
        # it back, not when the answer is released or closed, which may be much later (a stream
        # relayed to a slow client) or a close (a stream's error answer, read whole).
        payload.on_eof(resp.release)
        return resp

    async def _post(self, session: aiohttp.ClientSession, url: URL, req: UpstreamRequest) -> aiohttp.ClientResponse:
        """session.post's own steps for a POST of bytes, without the ones a gateway never uses.

        ClientSession._request spends ~20 µs a request (a third of the client's cost, measured against
        the benchmark's mock) on what this gateway turns off or does itself: merging default headers,
        a total-timeout timer per request (our deadlines are Deadlines'), the cookie jar (a dummy),
        auth and proxies from the URL or environment, redirects, traces, a retry that is only for
        idempotent methods. What is left is that method's core, in its order: build the request, take
        a pooled connection, set the response parser's parameters, send, read the head."""
        creq = aiohttp.ClientRequest("POST", url, headers=req.headers, data=req.body, loop=self._loop,
                                     response_class=aiohttp.ClientResponse, session=session, traces=[])
        connector = session.connector
        assert connector is not None and self._params is not None
        conn = await connector.connect(creq, [], req.limits.client_timeout)
        protocol = conn.protocol
        assert protocol is not None
        protocol.set_response_params(**self._params)
        try:
            resp = await creq.send(conn)
            try:
                await resp.start(conn)
            except BaseException:
                resp.close()
                raise
        except BaseException:
            conn.close()
            raise
        return resp


# Headers that change how the request is framed or routed: a request that sets one is left to _post,
# whose ClientRequest knows what each means; a name or value with a control character aiohttp forbids
# (a line break: header injection) too, which it refuses with its own error.
_FORBIDDEN = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_FRAMING = frozenset({"host", "content-length", "transfer-encoding", "connection", "expect", "upgrade"})
_HEADS_KEPT = 64


class _Target:
    """A URL requests are posted to, prepared once: the template request aiohttp's pool finds and
    opens connections by (its host, port, TLS), the request line with Host, the headers aiohttp adds
    to a request that lacks them (Accept, Accept-Encoding, User-Agent, Content-Type), and, per set of
    headers (a channel's per key, built once: server/driver.py), its serialized head."""

    __slots__ = ("url", "template", "_line", "_auto", "_heads")

    def __init__(self, url: URL, session: aiohttp.ClientSession, loop: asyncio.AbstractEventLoop) -> None:
        self.url = url
        self.template = PoolRequest("POST", url, headers={}, data=b"", loop=loop,
                                    response_class=aiohttp.ClientResponse, session=session, traces=[])
        auto = self.template.headers
        self._line = f"POST {url.raw_path_qs} HTTP/1.1\r\nHost: {auto['Host']}\r\n"
        self._auto = [(name.lower(), f"{name}: {value}\r\n") for name, value in auto.items()
                      if name.lower() not in _FRAMING]
        self._heads: dict[tuple[tuple[str, str], ...], bytes | None] = {}

    def head(self, headers: Mapping[str, str], length: int) -> bytes | None:
        """The request's head, or None if _send_raw must leave it to _post. Kept per set of headers
        (by their items: a mapping changed after use gets its own)."""
        items = tuple(headers.items())
        block = self._heads.get(items, _UNSEEN)
        if block is _UNSEEN:
            block = self._serialize(items)
            if len(self._heads) >= _HEADS_KEPT:
                self._heads.clear()
            self._heads[items] = block
        return None if block is None else block + b"Content-Length: %d\r\n\r\n" % length  # type: ignore[operator]

    def _serialize(self, headers: tuple[tuple[str, str], ...]) -> bytes | None:
        parts = [self._line]
        names = set()
        for name, value in headers:
            low = name.lower()
            if low in _FRAMING or _FORBIDDEN.search(name) or _FORBIDDEN.search(value):
                return None
            names.add(low)
            parts.append(f"{name}: {value}\r\n")
        parts.extend(line for low, line in self._auto if low not in names)
        return "".join(parts).encode("utf-8")  # as aiohttp encodes a head


class RawResponse:
    """An answer read from a connection by _send_raw: what the seam uses of a ClientResponse. The
    connection goes back to aiohttp's pool on `release` (called too when the body has arrived whole),
    where its protocol decides whether it can be reused (not with part of the body unread or
    `Connection: close`); `close` closes it."""

    __slots__ = ("status", "headers", "content", "_conn")

    def __init__(self, conn: Any, status: int, headers: Mapping[str, str], content: aiohttp.StreamReader) -> None:
        self.status = status
        self.headers = headers
        self.content = content
        self._conn = conn

    @property
    def closed(self) -> bool:
        return self._conn is None

    async def read(self) -> bytes:
        try:
            return await self.content.read()
        except BaseException:
            self.close()
            raise

    def release(self) -> None:
        self._let_go(reuse=True)

    def close(self) -> None:
        self._let_go(reuse=False)

    def _let_go(self, reuse: bool) -> None:
        conn = self._conn
        if conn is None:
            return
        self._conn = None
        # A read still waiting (a deadline closes the response under it) ends with an error now, as
        # ClientResponse ends it: the connection's own close would not reach this reader. (At the
        # body's end none can be waiting.) A new exception each time: one raised again and again
        # grows its traceback each time.
        content = self.content
        if not content.is_eof() and content.exception() is None:
            content.set_exception(aiohttp.ClientConnectionError("Connection closed"))
        if reuse:
            conn.release()
        else:
            conn.close()


def _response_params(session: aiohttp.ClientSession) -> dict[str, Any] | None:
    """The response parser's parameters session.post would set, for _post; None when this aiohttp's
    internals are not the ones _post was written against (then every request takes session.post)."""
    try:
        from aiohttp.client_proto import ResponseHandler
        from aiohttp.helpers import TimerNoop

        names = set(inspect.signature(ResponseHandler.set_response_params).parameters)
        connector = session.connector
        params: dict[str, Any] = {
            "timer": TimerNoop(), "skip_payload": False, "read_until_eof": True, "auto_decompress": session.auto_decompress,
            "read_timeout": None, "read_bufsize": session._read_bufsize,  # noqa: SLF001
            "timeout_ceil_threshold": connector._timeout_ceil_threshold,  # type: ignore[union-attr]  # noqa: SLF001
            "max_line_size": session._max_line_size, "max_field_size": session._max_field_size,  # noqa: SLF001
            "max_headers": session._max_headers,  # noqa: SLF001
        }
        request = set(inspect.signature(aiohttp.ClientRequest).parameters)
    except (ImportError, AttributeError, TypeError, ValueError):
        return None
    if names != {"self", *params} or not {"traces", "session", "timer", "loop", "response_class"} <= request:
        return None
    # What _send_raw uses besides: the protocol's queue of parsed answers, a connection's transport.
    if not (inspect.iscoroutinefunction(getattr(ResponseHandler, "read", None))
            and isinstance(getattr(aiohttp.connector.Connection, "transport", None), property)):
        return None
    return params


_UNSEEN: Any = object()
_URLS_KEPT = 1024


class ReadResponse:
    """An answer already read whole (a non-stream one; or a JSON body where a stream was asked for,
    which the driver hands its stream parser as one chunk)."""

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

    def began(self) -> None:
        pass

    def finish(self) -> None:
        pass

    def close(self) -> None:
        pass


class _StreamResponse:
    """A streamed answer. Its deadlines are watches on the shared timer (Deadlines), registered only
    while a read is pending: the first chunk by the first-token deadline, each later one by `idle`
    from when its read began, everything by the total deadline. A deadline that passes closes the
    connection, which wakes the read with an error that is reported as UpstreamTimeout. The first
    chunk means the first content (`began`, the driver's commit): pings before it do not count.

    Time spent between reads, relaying to the client, is not the upstream's: it neither counts as the
    upstream being idle nor uses up the channel's `total`, which is pushed back by it (a client that
    reads a long answer slowly must not make a healthy channel time out). `hard` is a bound that
    does not move: the request's own deadline (routing.retry.deadline), when it has one."""

    __slots__ = ("_resp", "_loop", "_deadlines", "_watch", "_first", "_total", "_hard", "_idle", "_got_first",
                 "_eof", "_read_end", "_drain", "_drains", "status", "headers")

    def __init__(self, resp: HTTPResponse, loop: asyncio.AbstractEventLoop, deadlines: Deadlines,
                 first: float, total: float, idle: float, hard: float = math.inf,
                 drains: set[asyncio.Task[None]] | None = None) -> None:
        self._resp = resp
        self._loop = loop
        self._deadlines = deadlines
        self._watch = _CloseResponse(first, resp)
        self._first = first  # absolute deadline for the first chunk
        self._total = total  # absolute deadline for everything, pushed back by the time spent relaying
        self._hard = hard
        self._idle = idle
        self._got_first = False
        self._eof = False
        self._read_end = 0.0  # when the last read returned (0: no read yet)
        self._drain: asyncio.Task[None] | None = None  # finish's wait for the body's end
        self._drains = drains if drains is not None else set()  # its upstream's (a task needs a reference)
        self.status = resp.status
        self.headers: Mapping[str, str] = resp.headers

    def _expect(self, whole: bool = False) -> _Watch:
        """Register the pending read's deadline."""
        w = self._watch
        now = self._loop.time()
        if self._read_end:
            self._total += now - self._read_end  # the time since the last read was the client's
        total = self._total if self._total < self._hard else self._hard
        if whole:
            w.at = total  # a whole-body read is bounded by the total deadline only
        elif not self._got_first:
            w.at = self._first
        else:
            d = now + self._idle
            w.at = d if d < total else total
        self._deadlines.add(w)
        return w

    async def read(self) -> bytes:
        self._got_first = True
        w = self._expect(whole=True)
        try:
            data = await self._resp.read()
        except _TRANSPORT_ERRORS as exc:
            self.close()
            raise (UpstreamTimeout(_TIMED_OUT) if w.expired else _classify(exc)) from None
        finally:
            self._deadlines.discard(w)
        self.close()
        if w.expired:
            raise UpstreamTimeout(_TIMED_OUT)
        return data

    async def next_chunk(self) -> bytes:
        if self._eof:
            return b""
        w = self._expect()
        try:
            data = await self._resp.content.readany()
        except _TRANSPORT_ERRORS as exc:
            self.close()
            raise (UpstreamTimeout(_TIMED_OUT) if w.expired else _classify(exc)) from None
        finally:
            self._deadlines.discard(w)
            self._read_end = self._loop.time()
        if w.expired:
            self.close()
            raise UpstreamTimeout(_TIMED_OUT)
        if not data:
            self._eof = True
            self._resp.release()  # read to the end: the connection goes back to the pool
        return data

    def began(self) -> None:
        self._got_first = True

    def finish(self) -> None:
        if self._eof or self._drain is not None:
            return
        if self._resp.content.at_eof():  # the usual case: the end came with the terminal event
            self._eof = True
            self._resp.release()
            return
        self._drain = task = self._loop.create_task(self._drain_end())
        self._drains.add(task)
        task.add_done_callback(self._drains.discard)

    async def _drain_end(self) -> None:
        w = self._watch
        w.at = self._loop.time() + min(self._idle, END_GRACE)
        self._deadlines.add(w)
        try:
            while await self._resp.content.readany():  # nothing after the terminal event counts
                pass
            if not w.expired:
                self._eof = True
                self._resp.release()  # the body's end: the connection goes back to the pool
        except (asyncio.CancelledError, *_TRANSPORT_ERRORS):  # cancelled: the gateway is closing
            pass
        finally:
            self._deadlines.discard(w)
            self._drain = None
            self.close()

    def close(self) -> None:
        if self._drain is not None:
            return  # finish's wait closes it when it ends
        self._deadlines.discard(self._watch)
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
        self.began_at: int | None = None
        self.finishing: asyncio.Task[None] | None = None  # finish's read of the rest

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

    def began(self) -> None:
        self.began_at = len(self._chunks)  # chunks still to come when the driver committed

    def finish(self) -> None:
        self.finishing = asyncio.get_running_loop().create_task(self._rest())

    async def _rest(self) -> None:
        try:
            await asyncio.wait_for(self.read(), MOCK_END_GRACE)  # the rest, up to its end
        except (TimeoutError, UpstreamError, OSError):
            pass
        self.close()

    def close(self) -> None:
        self.closed = True
