"""The gateway's ASGI app: a raw-ASGI handler for the client-API POST routes, FastAPI for everything else.

Why raw ASGI: measured on this stack, routing the chat path through FastAPI costs ~130 µs of CPU
per request at 64 concurrent requests, about as much as the rest of the proxy together
(docs: shared/reference/proxy-hot-path.md). So the dispatcher looks at (method, path) itself and
only hands the remaining traffic (/health, GET /v1/models, docs) to the FastAPI app.

One handler serves every client format: the route says which format module speaks to the client;
the handler only calls the module's inbound functions (check_request, render_response,
StreamRenderer, render_error, error_status, error_headers).

Request life:
    read body → auth (401) → check (400 naming the field) → LiveDriver.execute (routing, retries,
    failover) → response: JSON, or SSE relayed event by event after the stream's commit point.
A task watches for `http.disconnect` meanwhile (from WATCH_AFTER on) and cancels the request, which
cancels the upstream call; the cancellation is accounted (channel state, record). Every failure is
answered in the client's own error shape; an unexpected exception is logged (secrets scrubbed) and
becomes a 500.

Each request reads the proxy's current Runtime once (`proxy.rt`) and keeps it to the end, so a
config reload swaps the next request's routing without touching this one's.

Response headers on every client-API answer: x-request-id; the trace and thread ids (taken from
the request — gateway.trace_header / thread_header, or AxonHub's AH-Trace-Id / AH-Thread-Id — or
derived from the request id, server/ids.py — and echoed under the configured names);
x-axonsim-attempts; x-axonsim-overhead-ms (the gateway's own time so far: elapsed minus upstream
waits and the client's upload; for a stream, up to its first byte); and,
when the request carried `X-AxonSim-Explain: 1`, x-axonsim-explain: the decision trace as compact
JSON (channels and keys by name only).

After the last byte, the request's one record goes to Proxy.request_done (metrics, the store's
queue, the recent ring): nothing there waits on I/O.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
import traceback
from collections.abc import Awaitable, Callable, MutableMapping
from types import ModuleType
from typing import Any

import orjson

from axonsim.capabilities import NO_NEEDS, needs_of
from axonsim.execution import Result
from axonsim.formats import FormatError
from axonsim.formats.parsed import Parsed
from axonsim.unified import Error, ErrorKind, Request, Usage
from server import content_coding
from server.driver import CLIENT_CLOSED, Exchange, LiveStream
from server.http_protocol import ANSWER, BAD_FRAMING, READ_TIMED_OUT
from server.ids import THREAD, TRACE, client_id, derived_id, id_text, new_request_id
from server.proxy import (
    BODY_HANDED,
    H_AH_THREAD,
    H_AH_TRACE,
    H_EXPLAIN,
    H_THREAD,
    H_TRACE,
    LAST_WORDS,
    Proxy,
    Runtime,
    request_cost,
)
from server.routes import Route, gemini_array_stream
from server.store import StoreUnavailable

log = logging.getLogger("axonsim.server")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

MAX_BODY = 32 * 1024 * 1024  # beyond this a request is refused with 413 before it is parsed
MAX_EXPLAIN = 8000  # bytes of the x-axonsim-explain header; a longer trace is left to /admin/requests/{id}

_JSON = (b"content-type", b"application/json")
_SSE_HEADERS = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache"),
                (b"x-accel-buffering", b"no")]
# A Gemini stream without `alt=sse` is one JSON array (the REST default), written as it grows.
_ARRAY_STREAM_HEADERS = [_JSON, (b"cache-control", b"no-cache"), (b"x-accel-buffering", b"no")]
_ATTEMPTS = [str(i).encode() for i in range(33)]


def _attempts_value(n: int) -> bytes:
    return _ATTEMPTS[n] if n < len(_ATTEMPTS) else str(n).encode()


def _ms(seconds: float) -> bytes:
    return b"%.3f" % (seconds * 1000.0 if seconds > 0.0 else 0.0)


def _explain_value(result: Result | None, rid: str) -> bytes:
    if result is None:
        return b'{"decisions":[],"attempts":[]}'
    v = orjson.dumps(result.explain())
    if len(v) > MAX_EXPLAIN:
        return orjson.dumps({"truncated": True, "see": f"/admin/requests/{rid}"})
    return v


class KeptBytes:
    """A stream's bytes as sent, for its stored body: no more than the store is handed (the front of
    a long answer), so a long stream's memory does not grow with its length."""

    __slots__ = ("parts", "size")

    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.size = 0

    def add(self, data: bytes) -> None:
        if self.size < BODY_HANDED:
            self.parts.append(data)
            self.size += len(data)


# The disconnect watcher starts this long after the request was admitted. Most answers are done
# sooner, and a watcher task costs each request a task creation, a start and a cancel (measured
# ~3.5 µs in isolation, more under load); a timer handle costs a quarter of that. A client that
# leaves is noticed at most this much later, which for LLM calls (seconds) changes nothing.
WATCH_AFTER = 0.05


class _Watch:
    """Shared between a request, its body's reader and its disconnect watcher (started lazily, see
    WATCH_AFTER)."""

    __slots__ = ("done", "gone", "waited", "_handle", "_task")

    def __init__(self) -> None:
        self.done = False  # the response is complete (or about to be): a disconnect now means nothing
        self.gone = False  # the client disconnected first and the request was cancelled
        # Seconds spent waiting for the request's body (sent after its head, or in parts): the
        # client's time, not the gateway's, so not overhead (a slow upload counted as the gateway's).
        self.waited = 0.0
        self._handle: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[Any] | None = None

    def start(self, loop: asyncio.AbstractEventLoop, receive: Receive, task: asyncio.Task[Any] | None) -> None:
        """Watch for the client going away (from WATCH_AFTER on) and cancel `task` when it does."""
        if task is not None:
            self._handle = loop.call_later(WATCH_AFTER, self._spawn, loop, receive, task)

    def _spawn(self, loop: asyncio.AbstractEventLoop, receive: Receive, task: asyncio.Task[Any]) -> None:
        self._handle = None
        if not self.done:
            self._task = loop.create_task(_watch_disconnect(receive, task, self))

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        if self._task is not None:
            self._task.cancel()
            self._task = None


async def _watch_disconnect(receive: Receive, task: asyncio.Task[Any], w: _Watch) -> None:
    while True:
        msg = await receive()
        if msg["type"] == "http.disconnect":
            if not w.done:
                w.gone = True
                task.cancel()
            return


async def _read_body(receive: Receive, w: _Watch) -> bytes | None:
    """The whole request body; None if the client went away; raises FormatError(413) past MAX_BODY.
    The time until it has come is the client's (`w.waited`): mostly the head's read brought it, but
    a client may send it later, or in parts."""
    t = time.monotonic()  # (the Exchange's clock for its waits)
    try:
        msg = await receive()
        if msg["type"] != "http.request":
            return None
        body: bytes = msg.get("body", b"")
        if not msg.get("more_body", False):
            return body
        parts = [body]
        size = len(body)
        while True:
            msg = await receive()
            if msg["type"] != "http.request":
                return None
            chunk = msg.get("body", b"")
            size += len(chunk)
            if size > MAX_BODY:
                raise FormatError(f"the request body exceeds {MAX_BODY} bytes", status=413)
            parts.append(chunk)
            if not msg.get("more_body", False):
                return b"".join(parts)
    finally:
        w.waited = time.monotonic() - t


class GatewayApp:
    """The ASGI entry point. `fallback` gets every request that is not a client-API POST."""

    def __init__(self, proxy: Proxy, fallback: ASGIApp | None = None, tune_gc: bool = False) -> None:
        # The Proxy lives as long as the app; a config reload swaps its Runtime (proxy.rt), which
        # each request reads once and keeps.
        self.proxy = proxy
        if fallback is None:
            from server.api import build_api  # FastAPI is imported only if this app serves it

            fallback = build_api(lambda: self.proxy)
        self.fallback = fallback
        self.tune_gc = tune_gc  # the server process's own app (axonsim serve): see _tune_gc
        self._cors: tuple[Runtime, ASGIApp] | None = None  # the CORS layer of the config in force, once built

    @property
    def send_timeout(self) -> float:
        """gateway.send_timeout of the config in force, for the HTTP protocol (server/http_protocol.py)."""
        return self.proxy.config.gateway.send_timeout

    @property
    def read_timeout(self) -> float:
        """gateway.read_timeout of the config in force, for the HTTP protocol."""
        return self.proxy.config.gateway.read_timeout

    def __call__(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        # A plain function handing back the handler's coroutine, rather than a coroutine awaiting it:
        # one frame fewer for every resumption of every request. Servers must be told it is ASGI 3
        # (uvicorn's interface="asgi3"), since they guess the version from `async def __call__`.
        t = scope["type"]
        if t == "http":
            rt = self.proxy.rt
            if rt.cors is not None:
                return self._cors_app(rt)(scope, receive, send)
            return self._http(scope, receive, send)
        if t == "lifespan":
            return self._lifespan(receive, send)
        return self.fallback(scope, receive, send)

    def _http(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        """An HTTP request, past CORS (`__call__` without it)."""
        proxy = self.proxy
        if scope["method"] == "POST":
            rt = proxy.rt
            route = rt.routes.match(scope["path"])
            if route is not None:
                if route.handler is not None:  # a non-chat API (embeddings) brings its own handler
                    return route.handler(proxy, scope, receive, send, route)
                return self._api(proxy, rt, scope, receive, send, route)
        return self.fallback(scope, receive, send)

    def _cors_app(self, rt: Runtime) -> ASGIApp:
        """Starlette's CORSMiddleware in front of `_http`, for the config in force (built once per
        config: a reload brings a new one)."""
        made = self._cors
        if made is not None and made[0] is rt:
            return made[1]
        from starlette.middleware.cors import CORSMiddleware

        c = rt.cors
        assert c is not None
        # What a page's script may read of an answer besides the basic headers: ids, the gateway's
        # figures, and when to retry.
        exposed = ["x-request-id", "request-id", rt.trace_name.decode("latin-1"), rt.thread_name.decode("latin-1"),
                   "x-axonsim-overhead-ms", "x-axonsim-attempts", "x-axonsim-explain", "retry-after"]
        app = CORSMiddleware(self._http, allow_origins=c.allow_origins, allow_origin_regex=c.allow_origin_regex,
                             allow_methods=["GET", "POST"], allow_headers=c.allow_headers, allow_credentials=False,
                             expose_headers=exposed, max_age=c.max_age)
        self._cors = (rt, app)
        return app

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            try:
                msg = await receive()
            except asyncio.CancelledError:
                # A forced quit (a third Ctrl-C) ends the loop with this task still waiting for the
                # shutdown message: nothing is left to do, and uvicorn would log it as a traceback.
                return
            if msg["type"] == "lifespan.startup":
                try:
                    await self.proxy.startup()
                except Exception as exc:
                    # A store that cannot start says all there is to say in its message (which uvicorn
                    # logs, and `axonsim serve` repeats with a hint); anything else gets its traceback.
                    if not isinstance(exc, StoreUnavailable):
                        log.exception("startup failed")
                    scrub = self.proxy.scrub  # (a property holding a callable: compiled, it must be read first)
                    await send({"type": "lifespan.startup.failed", "message": scrub(str(exc))})
                    return
                if self.tune_gc:
                    _tune_gc()
                await send({"type": "lifespan.startup.complete"})
            elif msg["type"] == "lifespan.shutdown":
                try:
                    await self.proxy.shutdown()
                finally:
                    await send({"type": "lifespan.shutdown.complete"})
                return

    # -- the client-API handler ------------------------------------------------------------------

    async def _api(self, proxy: Proxy, rt: Runtime, scope: Scope, receive: Receive, send: Send,
                   route: Route) -> None:
        clock = proxy.clock  # its now() called natively: a bound method kept in a local is a generic call
        t0 = clock.now()
        metrics = proxy.metrics
        metrics.inflight_inc()
        proxy.active += 1
        fmt = route.fmt
        rid = new_request_id()
        rid_b = rid.encode()
        w = _Watch()
        # The loop is looked up once: each get_running_loop() (current_task() without a loop calls
        # it too) checks the process id, a getpid system call on every call.
        loop = asyncio.get_running_loop()
        task = asyncio.current_task(loop)
        ex: Exchange | None = None
        result: Result | None = None
        stream: LiveStream | None = None
        key = None
        model: str | None = route.model
        is_stream = bool(route.stream)
        status = 500
        started = False  # response headers sent
        usage: Usage | None = None
        error: Error | None = None
        ttfb: float | None = None
        body: bytes | None = None
        out: bytes | None = None
        store = proxy.store
        sent: KeptBytes | None = KeptBytes() if store is not None and store.store_bodies else None  # stream bytes
        renderer: Any = None  # a stream's renderer, once its answer begins
        array = False  # a Gemini stream asked for as a JSON array (no `alt=sse`)
        ids, sticky_b, explain = request_ids(scope, rt, rid_b)
        trace_b, thread_b = ids[1][1], ids[2][1]
        if route.name == "anthropic":
            # Anthropic's own name for it, which its SDK reads (`_request_id`, and in its errors)
            ids.append((b"request-id", rid_b))
        try:
            body, key, error, status = await admit(receive, send, scope, rt, fmt, rid_b, ids, clock.now() - t0, w)
            if body is None or key is None:
                return
            try:
                parsed: Parsed = fmt.check_request(body, route.model, route.stream)
                model = parsed.model
                is_stream = parsed.stream
                # What the request needs (images, a provider's native tools, a context size) keeps it
                # away from channels that cannot carry it; a clear 400 when none can.
                checked = rt.capability_checks or parsed.tools
                # The unified Request is built here only for the capability check; a request
                # forwarded as the client's bytes never builds it (axonsim/formats/parsed.py).
                req: Request | None = parsed.request() if checked else None
                if is_stream and route.name == "gemini":
                    array = gemini_array_stream(scope)
            except FormatError as bad:
                error = Error(kind=ErrorKind.INVALID_REQUEST, status=bad.status, message=bad.message, param=bad.param,
                              details=bad.details)
                status = await _send_error(send, fmt, error, rid_b, 0, _tail(ids, clock.now() - t0 - w.waited, None))
                return
            needs = needs_of(req) if req is not None else NO_NEEDS  # req is built exactly when checked
            w.start(loop, receive, task)
            ex = Exchange(parsed, body, fmt)
            ex.waited = w.waited  # the client's upload: not the gateway's time either
            # A model served by channels of several types: one type's format may be unable to
            # express what another's can, or forward as the client's bytes (LiveDriver.fit).
            mixed = rt.driver.mixed.get(model) if rt.driver.mixed else None
            if mixed is not None:
                needs = rt.driver.fit(ex, mixed, needs)
            sticky = sticky_b.decode("latin-1") if sticky_b is not None else None
            # A rough token estimate for local TPM limits and quotas: ~4 bytes of request per token.
            tokens = len(body) // 4 + (parsed.max_tokens or 0)
            if explain:
                result = await rt.driver.execute(ex, tokens, sticky, needs=needs, explain=True)
            else:
                result = await rt.driver.execute(ex, tokens, sticky, needs=needs)
            n = len(result.attempts)
            if not result.ok or result.outcome is None:
                error = _client_facing(result.error)
                w.done = True
                status = await _send_error(send, fmt, error, rid_b, n,
                                           _tail(ids, clock.now() - t0 - ex.waited,
                                                 _explain_value(result, rid) if explain else None))
                return
            payload = result.outcome.payload
            if not is_stream:
                out = payload.raw if payload.raw is not None else fmt.render_response(payload.response)
                usage = payload.usage
                status = 200
                w.done = True
                ttfb = clock.now() - t0
                headers = [_JSON, (b"content-length", str(len(out)).encode()), (b"x-axonsim-attempts", _attempts_value(n)),
                           *_tail(ids, ttfb - ex.waited, _explain_value(result, rid) if explain else None)]
                await send({"type": "http.response.start", "status": 200, "headers": headers})
                started = True
                await send({"type": "http.response.body", "body": out, "more_body": False})
                return
            # A committed stream: its buffered events are the first bytes the client sees.
            stream = payload
            assert isinstance(stream, LiveStream)
            renderer = fmt.StreamRenderer(parsed, True) if array else fmt.StreamRenderer(parsed)
            first = b"".join([renderer.render(ev) for ev in stream.pending])
            status = 200
            headers = [*(_ARRAY_STREAM_HEADERS if array else _SSE_HEADERS), (b"x-axonsim-attempts", _attempts_value(n)),
                       *_tail(ids, clock.now() - t0 - ex.waited, _explain_value(result, rid) if explain else None)]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            started = True
            if first:
                await send({"type": "http.response.body", "body": first, "more_body": True})
                if sent is not None:
                    sent.add(first)
            ttfb = clock.now() - t0
            tail = b""
            while True:
                evs = await stream.next_events()
                if evs is None:
                    tail = renderer.finish()
                    break
                if not evs:
                    continue
                if evs[-1].type == "error":
                    parts = [renderer.render(ev) for ev in evs[:-1]]
                    parts.append(renderer.error(evs[-1].error))  # type: ignore[union-attr]
                    tail = b"".join(parts)
                    break
                data = b"".join([renderer.render(ev) for ev in evs])
                if data:
                    await send({"type": "http.response.body", "body": data, "more_body": True})
                    if sent is not None:
                        sent.add(data)
            w.done = True
            await send({"type": "http.response.body", "body": tail, "more_body": False})
            if sent is not None:
                sent.add(tail)
        except asyncio.CancelledError:
            if task is not None:
                task.uncancel()
            if w.gone:
                status = CLIENT_CLOSED
            else:
                # Not the client's doing: the server's shutdown deadline passed. The client gets a 503
                # in its format (mid-stream: the in-stream error and the end), and the request is
                # recorded. The cancel stops here: propagated, it made uvicorn answer its own plain
                # 500 and log a traceback per request.
                error = Error(kind=ErrorKind.UNAVAILABLE, status=503, message="the gateway shut down before the "
                              "request finished")
                if stream is not None:
                    stream.abort(clock.now())  # not the channel's failure either
                w.done = True
                try:
                    async with asyncio.timeout(LAST_WORDS):  # the server is going away: not a moment longer
                        sent_status = await _send_failure(send, fmt, error, rid_b, started, result, ex, renderer, ids,
                                                          clock.now() - t0 - (ex.waited if ex else w.waited))
                except TimeoutError:
                    sent_status = None
                status = sent_status if sent_status is not None else status if started else 503
        except Exception as exc:
            if not started and too_deep(exc):
                error = _TOO_DEEP_ERROR  # the client's JSON, not the gateway's fault: no traceback
            else:
                self._log_exception(rt, rid, exc)
                error = Error(kind=ErrorKind.SERVER_ERROR, status=500, message=f"internal gateway error (request {rid})")
            if stream is not None:
                stream.abort(clock.now())  # the gateway's own failure: not held against the channel
            w.done = True
            sent_status = await _send_failure(send, fmt, error, rid_b, started, result, ex, renderer, ids,
                                              clock.now() - t0 - (ex.waited if ex else w.waited))
            if sent_status is not None:
                status = sent_status
        finally:
            w.done = True
            metrics.inflight_dec()
            w.stop()
            if stream is not None and w.gone:
                stream.abort(clock.now())
            latency = clock.now() - t0
            waited = w.waited
            if ex is not None:  # (its waits include w's)
                waited = ex.waited + (stream.waited if stream is not None else 0.0)
            resp_body = None
            if sent is not None:
                resp_body = out if out is not None else b"".join(sent.parts) if sent.parts else None
            try:
                self._record(proxy, rt, scope, route, rid, t0, latency, latency - waited, ttfb, key, model, is_stream,
                             status, error, usage, result, ex, stream, w.gone, trace_b, thread_b,
                             body if sent is not None else None, resp_body)
            finally:
                proxy.request_ended()

    def _record(self, proxy: Proxy, rt: Runtime, scope: Scope, route: Route, rid: str, t0: float, latency: float,
                overhead: float, ttfb: float | None, key: Any, model: str | None, is_stream: bool, status: int,
                error: Error | None, usage: Usage | None, result: Result | None, ex: Exchange | None,
                stream: LiveStream | None, gone: bool, trace_b: bytes, thread_b: bytes, request_body: bytes | None,
                response_body: bytes | None) -> None:
        if result is not None:
            attempts = [a.as_dict() for a in result.attempts]
        elif ex is not None:
            # Cut short before execution came to a Result (the client left, the shutdown deadline
            # passed, a gateway error): the attempts made so far, the unfinished one abandoned.
            attempts = ex.attempt_records()
        else:
            attempts = []
        if stream is not None:
            usage = stream.usage
            last = attempts[-1] if attempts else None
            if last is not None:
                last["stream_end"] = stream.end
            if stream.error is not None:
                if error is None:
                    error = stream.error
                if last is not None:
                    last["stream_error"] = stream.error.kind.value
            elif stream.abandoned and last is not None:
                # Our side cut the upstream stream (the client left; a gateway error): the attempt
                # was abandoned, as the channel's state counted it, not answered in full.
                last["next"] = "cancelled"
        channels: list[str] = []
        for a in attempts:
            if a["channel"] not in channels:
                channels.append(a["channel"])
        if gone:
            outcome = "cancelled"
        elif status >= 400 or error is not None:
            outcome = "failed"
        else:
            outcome = "completed"
        answered = result is not None and result.ok and bool(result.attempts)
        proxy.request_done({
            "id": rid, "created_at": t0, "method": "POST", "path": scope["path"], "client_format": route.name,
            "model": model, "stream": is_stream,
            "project": key.project if key is not None else None,
            "key_name": (key.name or key.project) if key is not None else None,
            "status": status, "outcome": outcome,
            "error": error.message if error is not None else None,
            "error_kind": error.kind.value if error is not None else None,
            "latency": latency, "ttft": ttfb,  # the first byte went out, whatever came after it
            "overhead": overhead if overhead > 0.0 else 0.0,
            "usage": usage.as_dict() if usage is not None else None,
            "cost": request_cost(rt, usage, attempts, model, answered),
            "channel": result.attempts[-1].channel if answered else None,  # type: ignore[union-attr]
            "channels": channels, "attempts": attempts,
            "trace_id": id_text(trace_b), "thread_id": id_text(thread_b),
            "decisions": result.decisions if result is not None else None,
        }, rt, ex, request_body, response_body)

    def _log_exception(self, rt: Runtime, rid: str, exc: BaseException) -> None:
        # Formatted here so the scrubber sees the text: an exception message may quote a header value.
        text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        log.error("request %s failed inside the gateway:\n%s", rid, rt.scrub(text))


# The cyclic GC's first generation is collected after this many net allocations of container
# objects (CPython's default is 700). Under concurrent traffic the default ran a collection every
# few requests and cost ~45 µs of CPU per request at 64 concurrent requests (benchmarks/
# proxy_overhead.py, 259 → 213 µs); reference counting frees almost everything a request allocates,
# so collecting less often costs little memory (the 100k-request soak's RSS shows it).
GC_GEN0_THRESHOLD = 50_000


def _tune_gc() -> None:
    """Once the server has started: everything built so far (imports, config, the runtime) lives as
    long as the process, so it is frozen out of the GC's scans; then the young generation is
    collected less often."""
    gc.collect()
    gc.freeze()
    _, g1, g2 = gc.get_threshold()
    gc.set_threshold(GC_GEN0_THRESHOLD, g1, g2)


_UPSTREAM_CREDENTIALS = (ErrorKind.AUTHENTICATION, ErrorKind.PERMISSION)


def _client_facing(err: Error | None) -> Error:
    """Execution's verdict, as the client should read it. An upstream 401/403 comes back from the
    core as kind AUTHENTICATION/PERMISSION with status 502; format modules derive the status from
    the kind, which would tell the client its own key is wrong. It is a gateway-side failure."""
    if err is None:
        return Error(kind=ErrorKind.SERVER_ERROR, status=502, message="the request failed")
    if err.kind in _UPSTREAM_CREDENTIALS and err.status >= 500:
        return err.model_copy(update={"kind": ErrorKind.SERVER_ERROR, "code": "upstream_credentials_rejected"})
    return err


def _auth_error(scope: Scope) -> Error:
    for name, _ in scope["headers"]:
        if name in (b"authorization", b"x-api-key", b"x-goog-api-key"):
            return Error(kind=ErrorKind.AUTHENTICATION, status=401, message="invalid gateway API key",
                         code="invalid_api_key")
    if b"key=" in scope["query_string"]:
        return Error(kind=ErrorKind.AUTHENTICATION, status=401, message="invalid gateway API key",
                     code="invalid_api_key")
    return Error(kind=ErrorKind.AUTHENTICATION, status=401,
                 message="missing gateway API key: send it as 'Authorization: Bearer KEY' (or x-api-key, "
                         "x-goog-api-key)", code="missing_api_key")


async def _send_plain_500(send: Send, rid_b: bytes) -> None:
    """The last resort when even the client format's error renderer failed."""
    body = b'{"error":{"message":"internal gateway error","type":"server_error","param":null,"code":null}}'
    await send({"type": "http.response.start", "status": 500,
                "headers": [_JSON, (b"content-length", str(len(body)).encode()), (b"x-request-id", rid_b)]})
    await send({"type": "http.response.body", "body": body, "more_body": False})


# What a request's body the HTTP protocol (server/http_protocol.py) refused is answered: its framing
# broke (an invalid chunk), or it stopped arriving.
_BAD_FRAMING_ERROR = Error(kind=ErrorKind.INVALID_REQUEST, status=400, code="invalid_http",
                           message="the request body is not valid HTTP/1.1 (its chunked framing is broken)")
# orjson reads 1024 levels of nesting but writes 255, and Python's repr stops near 1000: a request
# nested deeper than the gateway can write again (a tool schema, converted for another channel type)
# failed inside it, a 500 with a traceback. It is the client's input: a 400.
_TOO_DEEP_ERROR = Error(kind=ErrorKind.INVALID_REQUEST, status=400,
                        message="the request's JSON is nested too deeply for the gateway to convert "
                                "(at most 255 levels)")


def too_deep(exc: BaseException) -> bool:
    """Whether `exc` is a request's JSON too deep to write again (orjson's or Python's limit)."""
    return isinstance(exc, RecursionError) or (isinstance(exc, TypeError) and str(exc) == "Recursion limit reached")


_READ_TIMEOUT_ERROR = Error(kind=ErrorKind.INVALID_REQUEST, status=408, code="request_timeout",
                            message="the request body stopped arriving (gateway.read_timeout)")


async def admit(receive: Receive, send: Send, scope: Scope, rt: Runtime, fmt: ModuleType, rid_b: bytes,
                ids: list[tuple[bytes, bytes]], elapsed: float,
                w: _Watch) -> tuple[bytes | None, Any, Error | None, int]:
    """Check the client's key, then read the body (decoded, if the client compressed it:
    server/content_coding.py): (body, key, None, 500) to go on; otherwise the
    answer has been sent (or the client left) and (None, key/None, error, status) say what happened.
    The key comes first: a client without one is not let send, nor have the gateway hold, a body of
    up to MAX_BODY bytes (the server reads what it sent and drops it). Shared by every client-API
    handler."""
    key = rt.auth.authenticate(scope["headers"], scope["query_string"])
    if key is None:
        error = _auth_error(scope)
        answer = scope.get(ANSWER)
        if answer is not None:  # its body, come in the same read as its head, was refused already
            answer()  # this answer, the first fault, is then the connection's last
        return None, None, error, await _send_error(send, fmt, error, rid_b, 0, _tail(ids, elapsed, None))
    try:
        body = await _read_body(receive, w)
    except FormatError as exc:  # too large
        error = Error(kind=ErrorKind.INVALID_REQUEST, status=exc.status, message=exc.message)
        return None, key, error, await _send_error(send, fmt, error, rid_b, 0, _tail(ids, elapsed, None))
    if body is None:  # the client left while sending it: its cancel is its key's (usage by project)
        # Not a client that left: a body HTTP could not read, or one that stopped arriving.
        if scope.get(BAD_FRAMING):
            return None, key, _BAD_FRAMING_ERROR, await _answer_refused_body(
                scope, send, fmt, _BAD_FRAMING_ERROR, rid_b, _tail(ids, elapsed, None))
        if scope.get(READ_TIMED_OUT):
            return None, key, _READ_TIMEOUT_ERROR, await _answer_refused_body(
                scope, send, fmt, _READ_TIMEOUT_ERROR, rid_b, _tail(ids, elapsed, None))
        w.gone = True
        return None, key, None, CLIENT_CLOSED
    coding: bytes | None = None
    for name, value in scope["headers"]:
        if name == b"content-encoding":
            coding = value if coding is None else coding + b"," + value
    if coding is not None:
        try:
            body = await content_coding.decode_body(body, coding, MAX_BODY)
        except content_coding.CodingError as exc:
            error = Error(kind=ErrorKind.INVALID_REQUEST, status=exc.status, message=exc.message)
            tail = _tail(ids, elapsed, None)
            if exc.status == 415:
                tail.append((b"accept-encoding", content_coding.ACCEPTED))
            return None, key, error, await _send_error(send, fmt, error, rid_b, 0, tail)
    return body, key, None, 500


def request_ids(scope: Scope, rt: Runtime, rid_b: bytes) -> tuple[list[tuple[bytes, bytes]], bytes | None, bool]:
    """From the request headers: the id headers to echo (request, trace, thread — generated when the
    client sent none; the configured names first, AxonHub's AH-* as a fallback), the sticky key and
    whether the decision trace was asked for. Shared by every client-API handler."""
    trace_b: bytes | None = None
    thread_b: bytes | None = None
    explain = False
    kinds = rt.header_kinds
    for name, value in scope["headers"]:
        k = kinds.get(name)
        if k is None:
            continue
        if k == H_TRACE or k == H_AH_TRACE or k == H_THREAD or k == H_AH_THREAD:
            value = value.strip()
            if not value:  # an empty id is none: one is made up, and it is no sticky key
                continue
            if k == H_TRACE or (k == H_AH_TRACE and trace_b is None):
                trace_b = client_id(value)
            elif k == H_THREAD or (k == H_AH_THREAD and thread_b is None):
                thread_b = client_id(value)
        elif k == H_EXPLAIN:
            explain = value.strip().lower() in (b"1", b"true", b"yes")
    # Only a client's own id is a sticky key: a generated one is never seen again, and
    # remembering it would only fill the Router's sticky table.
    sticky_b = trace_b if rt.sticky == "trace" else thread_b if rt.sticky == "thread" else None
    if trace_b is None:
        trace_b = derived_id(rid_b, TRACE)
    if thread_b is None:
        thread_b = derived_id(rid_b, THREAD)
    return [(b"x-request-id", rid_b), (rt.trace_name, trace_b), (rt.thread_name, thread_b)], sticky_b, explain


def _tail(ids: list[tuple[bytes, bytes]], overhead: float, explain: bytes | None) -> list[tuple[bytes, bytes]]:
    """The headers every client-API answer ends with: ids, the overhead so far, the explained trace."""
    out = [*ids, (b"x-axonsim-overhead-ms", _ms(overhead))]
    if explain is not None:
        out.append((b"x-axonsim-explain", explain))
    return out


async def _send_failure(send: Send, fmt: ModuleType, error: Error, rid_b: bytes, started: bool,
                        result: Result | None, ex: Exchange | None, renderer: Any, ids: list[tuple[bytes, bytes]],
                        overhead: float) -> int | None:
    """Tell the client a request failed on the gateway's side, however far its answer got: before the
    response began, the error in its format (the status sent is returned); mid-stream, the in-stream
    error event of its format and the end of the stream (None: the status stays)."""
    try:
        if not started:
            # Cut before execution came to a Result (the shutdown deadline): the attempts made so far.
            n = len(result.attempts) if result is not None else len(ex.trace) if ex is not None else 0
            return await _send_error(send, fmt, error, rid_b, n, _tail(ids, overhead, None))
        tail = b""
        if renderer is not None:  # the stream's own: it knows what it has written (a Gemini array's `[`)
            try:
                tail = renderer.error(error)
            except Exception:
                tail = b""
        await send({"type": "http.response.body", "body": tail, "more_body": False})
    except Exception:
        if not started:
            await _send_plain_500(send, rid_b)
            return 500
    return None


async def _send_error(send: Send, fmt: ModuleType, err: Error, rid_b: bytes, attempts: int,
                      extra: list[tuple[bytes, bytes]] | None = None) -> int:
    """The error in the client's format. `extra`: headers that replace the bare x-request-id (see _tail)."""
    status: int = fmt.error_status(err)
    body: bytes = fmt.render_error(err)
    headers = [_JSON, (b"content-length", str(len(body)).encode()), (b"x-axonsim-attempts", _attempts_value(attempts))]
    if extra is None:
        headers.append((b"x-request-id", rid_b))
    else:
        headers.extend(extra)
    for k, v in fmt.error_headers(err).items():
        headers.append((k.lower().encode("latin-1"), str(v).encode("latin-1")))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})
    return status


async def _answer_refused_body(scope: Scope, send: Send, fmt: ModuleType, err: Error, rid_b: bytes,
                               extra: list[tuple[bytes, bytes]]) -> int:
    """Answer a body the HTTP protocol refused (err: broken framing, or one that stopped arriving) in
    the client's format, with the request's ids (and CORS headers: it goes through `send`), as the
    last answer on its connection: the protocol's ANSWER call (server/http_protocol.py) lets `send`
    write again. Without that call in the scope (another server), the protocol answered on its own."""
    answer = scope.get(ANSWER)
    if answer is None or not answer():
        return int(fmt.error_status(err))
    return await _send_error(send, fmt, err, rid_b, 0, extra)
