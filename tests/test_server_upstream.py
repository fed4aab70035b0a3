"""The aiohttp upstream: deadlines (connect, first token, idle, total), transport errors, connection reuse."""

from __future__ import annotations

import asyncio
import re
import socket
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from aiohttp import web

from axonsim.config import Timeouts
from server.upstream import (
    AiohttpUpstream,
    Deadlines,
    Limits,
    UpstreamConnectionError,
    UpstreamRequest,
    UpstreamTimeout,
    _Watch,
)

pytestmark = pytest.mark.timeout(30)


async def _stream(request: web.Request) -> web.StreamResponse:
    """?head=S (delay before the headers), ?first=S (then before the first chunk), ?gap=S (between chunks), ?n=N chunks."""
    await asyncio.sleep(float(request.query.get("head", "0")))
    first = float(request.query.get("first", "0"))
    gap = float(request.query.get("gap", "0"))
    n = int(request.query.get("n", "3"))
    r = web.StreamResponse(headers={"content-type": "text/event-stream"})
    await r.prepare(request)
    await asyncio.sleep(first)
    for i in range(n):
        if i:
            await asyncio.sleep(gap)
        await r.write(f"data: {i}\n\n".encode())
    await r.write_eof()
    return r


async def _plain(request: web.Request) -> web.Response:
    await asyncio.sleep(float(request.query.get("delay", "0")))
    return web.json_response({"ok": True}, status=int(request.query.get("status", "200")))


async def _site(path: str, handler: Any) -> tuple[web.AppRunner, str]:
    """A loopback aiohttp server answering POST `path` with `handler`: its runner and base URL."""
    app = web.Application()
    app.router.add_post(path, handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    return runner, f"http://{host}:{port}"


@pytest.fixture
async def server() -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_post("/stream", _stream)
    app.router.add_post("/plain", _plain)
    runner = web.AppRunner(app, handler_cancellation=True)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    yield f"http://{host}:{port}"
    await runner.cleanup()


@pytest.fixture(params=["raw", "direct", "session"])
async def upstream(request: pytest.FixtureRequest) -> AsyncIterator[AiohttpUpstream]:
    """Every way a request leaves: AiohttpUpstream._send_raw (the usual one), _post (a request whose
    headers _send_raw leaves to aiohttp) and session.post (the fallback: an aiohttp whose internals
    differ, a URL with credentials)."""
    up = AiohttpUpstream()
    await up.start()
    assert up._params is not None  # the installed aiohttp is the one _post was written against
    if request.param == "direct":
        up._raw = False
    elif request.param == "session":
        up._params = None
    yield up
    await up.aclose()


def req(url: str, stream: bool, **t: float) -> UpstreamRequest:
    limits = Limits(Timeouts(**{"connect": 1, "first_token": 5, "idle": 5, "total": 10, **t}))
    return UpstreamRequest(url, {"content-type": "application/json"}, b"{}", stream, limits)


async def drain(resp: object) -> list[bytes]:
    out = []
    while True:
        c = await resp.next_chunk()  # type: ignore[attr-defined]
        if not c:
            return out
        out.append(c)


async def test_stream_relays_chunks(server: str, upstream: AiohttpUpstream) -> None:
    resp = await upstream.send(req(server + "/stream?n=3&gap=0.01", True))
    assert resp.status == 200 and resp.headers["content-type"] == "text/event-stream"
    assert b"".join(await drain(resp)) == b"data: 0\n\ndata: 1\n\ndata: 2\n\n"


async def test_first_token_deadline(server: str, upstream: AiohttpUpstream) -> None:
    resp = await upstream.send(req(server + "/stream?first=2", True, first_token=0.2))
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    with pytest.raises(UpstreamTimeout):
        await resp.next_chunk()
    assert loop.time() - t0 < 1.5


async def test_idle_deadline(server: str, upstream: AiohttpUpstream) -> None:
    resp = await upstream.send(req(server + "/stream?n=3&gap=1", True, idle=0.2))
    assert await resp.next_chunk() == b"data: 0\n\n"
    resp.began()  # the driver's commit: content came
    with pytest.raises(UpstreamTimeout):
        await resp.next_chunk()


async def test_chunks_before_the_content_do_not_meet_the_first_token_deadline(server: str,
                                                                             upstream: AiohttpUpstream) -> None:
    # Keep-alive pings (or role-only chunks) every 0.1 s, never content: the first-token deadline
    # still passes; idle alone would never fire.
    resp = await upstream.send(req(server + "/stream?n=100&gap=0.1", True, first_token=0.5, idle=0.3))
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    with pytest.raises(UpstreamTimeout):
        await drain(resp)
    assert loop.time() - t0 < 2.0


async def test_a_slow_consumer_is_not_an_idle_upstream(server: str, upstream: AiohttpUpstream) -> None:
    resp = await upstream.send(req(server + "/stream?n=3&gap=0.01", True, idle=0.2))
    chunks = []
    while True:
        c = await resp.next_chunk()
        if not c:
            break
        chunks.append(c)
        resp.began()
        await asyncio.sleep(0.35)  # relaying to a slow client for longer than `idle`
    assert b"".join(chunks).count(b"data:") == 3


async def _big(request: web.Request) -> web.StreamResponse:
    """8 MB as fast as the reader takes it: more than the socket buffers hold, so a reader that
    stalls holds the upstream back too."""
    r = web.StreamResponse(headers={"content-type": "text/event-stream"})
    await r.prepare(request)
    line = b"data: " + b"x" * 65_530 + b"\n\n"
    for _ in range(128):
        await r.write(line)
    await r.write_eof()
    return r


async def test_a_stalled_consumer_does_not_use_up_the_upstreams_total(upstream: AiohttpUpstream) -> None:
    # The client stops reading for longer than `total`; the upstream, blocked by the full buffers,
    # then sends the rest at once. That time was the client's: the stream completes, no timeout.
    runner, base = await _site("/big", _big)
    try:
        resp = await upstream.send(req(f"{base}/big", True, idle=5, total=0.5))
        got = len(await resp.next_chunk())
        resp.began()
        await asyncio.sleep(0.8)  # relaying to a client that stopped reading, past `total`
        got += sum(len(c) for c in await drain(resp))
        assert got == 128 * 65_538
    finally:
        await runner.cleanup()


async def test_total_deadline(server: str, upstream: AiohttpUpstream) -> None:
    resp = await upstream.send(req(server + "/stream?n=50&gap=0.05", True, idle=1, total=0.4))
    with pytest.raises(UpstreamTimeout):
        await drain(resp)


async def test_non_stream_total_deadline(server: str, upstream: AiohttpUpstream) -> None:
    with pytest.raises(UpstreamTimeout):
        await upstream.send(req(server + "/plain?delay=2", False, total=0.2))
    resp = await upstream.send(req(server + "/plain?status=503", False))
    assert resp.status == 503 and await resp.read() == b'{"ok": true}'


async def test_the_requests_deadline_bounds_an_attempt_sooner_than_its_total(server: str,
                                                                              upstream: AiohttpUpstream) -> None:
    # routing.retry.deadline: the driver hands the time left as `within`; total (10 s) is not waited.
    plain = req(server + "/plain?delay=5", False)
    plain.within = 0.2
    with pytest.raises(UpstreamTimeout):
        await asyncio.wait_for(upstream.send(plain), 3)
    stream = req(server + "/stream?n=50&gap=0.05", True, idle=1)
    stream.within = 0.4
    resp = await upstream.send(stream)
    with pytest.raises(UpstreamTimeout):
        await asyncio.wait_for(drain(resp), 3)
    # Unlike the channel's total, the request's deadline is not pushed back by time spent relaying,
    # also when it is later than the channel's total (0.45 here).
    stream = req(server + "/stream?n=50&gap=0.05", True, idle=1, total=0.45)
    stream.within = 0.6
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    resp = await upstream.send(stream)
    await resp.next_chunk()
    resp.began()
    await asyncio.sleep(0.5)  # pushes the channel's total to ~0.95 s; the deadline stays at 0.6 s
    with pytest.raises(UpstreamTimeout):
        await asyncio.wait_for(drain(resp), 3)
    assert loop.time() - t0 < 0.85


async def test_connection_refused(upstream: AiohttpUpstream) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound but not listening: connections are refused
        with pytest.raises(UpstreamConnectionError):
            await upstream.send(req(f"http://127.0.0.1:{port}/plain", False))


async def test_connections_are_reused(server: str, upstream: AiohttpUpstream) -> None:
    for _ in range(3):
        resp = await upstream.send(req(server + "/stream?n=2", True))
        await drain(resp)
        resp = await upstream.send(req(server + "/plain", False))
        await resp.read()
    connector = upstream._session.connector  # type: ignore[union-attr]
    assert connector is not None
    assert sum(len(v) for v in connector._conns.values()) == 1  # one pooled keep-alive connection


async def test_finish_after_the_terminal_event_pools_the_connection(server: str, upstream: AiohttpUpstream) -> None:
    # The driver stops reading at the stream's terminal event; `finish` takes the body's end (which
    # follows at once, or in the background a moment later), so the connection is pooled, not aborted.
    for _ in range(3):
        resp = await upstream.send(req(server + "/stream?n=1", True))
        assert await resp.next_chunk() == b"data: 0\n\n"
        resp.finish()
        await asyncio.gather(*list(upstream.drains))
    connector = upstream._session.connector  # type: ignore[union-attr]
    assert sum(len(v) for v in connector._conns.values()) == 1  # type: ignore[union-attr]
    # a body left open: finish returns at once, and the connection is closed after the grace
    resp = await upstream.send(req(server + "/stream?n=2&gap=5", True, idle=0.2))
    await resp.next_chunk()
    resp.finish()
    assert len(upstream.drains) == 1
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    await asyncio.gather(*list(upstream.drains))
    assert loop.time() - t0 < 1.0 and resp._resp.closed  # type: ignore[attr-defined]


async def test_stream_headers_are_bounded_by_the_first_token_deadline(server: str, upstream: AiohttpUpstream) -> None:
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    with pytest.raises(UpstreamTimeout):
        await upstream.send(req(server + "/stream?head=2", True, first_token=0.2))
    assert loop.time() - t0 < 1.5


async def test_a_timeout_leaves_the_task_uncancelled(server: str, upstream: AiohttpUpstream) -> None:
    with pytest.raises(UpstreamTimeout):
        await upstream.send(req(server + "/plain?delay=2", False, total=0.2))
    task = asyncio.current_task()
    assert task is not None and task.cancelling() == 0
    await asyncio.sleep(0.01)  # no cancel request left pending on the task
    resp = await upstream.send(req(server + "/plain", False))
    assert resp.status == 200
    assert len(upstream._deadlines) == 0  # type: ignore[arg-type]


async def test_an_outside_cancel_is_not_a_timeout(server: str, upstream: AiohttpUpstream) -> None:
    task = asyncio.ensure_future(upstream.send(req(server + "/plain?delay=2", False, total=5)))
    await asyncio.sleep(0.1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert len(upstream._deadlines) == 0  # type: ignore[arg-type]


async def test_a_shorter_deadline_after_a_longer_one_still_fires_on_time(server: str,
                                                                         upstream: AiohttpUpstream) -> None:
    loop = asyncio.get_running_loop()
    slow_ok = asyncio.ensure_future(upstream.send(req(server + "/plain?delay=0.8", False, total=10)))
    await asyncio.sleep(0.05)  # the shared timer is armed at the long deadline first
    t0 = loop.time()
    with pytest.raises(UpstreamTimeout):
        await upstream.send(req(server + "/plain?delay=3", False, total=0.2))
    assert loop.time() - t0 < 0.7
    resp = await slow_ok  # the other request is untouched
    assert resp.status == 200 and await resp.read() == b'{"ok": true}'


async def test_deadlines_fire_in_order_and_rearm() -> None:
    loop = asyncio.get_running_loop()
    fired: list[str] = []

    class W(_Watch):
        __slots__ = ("name",)

        def __init__(self, at: float, name: str) -> None:
            super().__init__(at)
            self.name = name

        def fire(self) -> None:
            fired.append(self.name)

    d = Deadlines(loop)
    now = loop.time()
    late, early, gone = W(now + 0.15, "late"), W(now + 0.05, "early"), W(now + 0.02, "gone")
    d.add(late)
    d.add(early)  # earlier than the armed timer: re-armed
    d.add(gone)
    d.discard(gone)  # finished in time: never fires
    await asyncio.sleep(0.1)
    assert fired == ["early"] and early.expired and not late.expired
    await asyncio.sleep(0.1)
    assert fired == ["early", "late"] and len(d) == 0
    d.close()


async def test_a_channels_headers_reach_the_upstream_as_set_once_each() -> None:
    """What a provider receives: the channel's content type, its key in the format's header, and the
    gateway's own User-Agent, each once; not aiohttp's User-Agent, nor anything set per request."""
    from axonsim import __version__
    from axonsim.config import parse_config
    from axonsim.formats import get_format
    from axonsim.state import ChannelState
    from server.driver import ChannelRuntime

    seen: list[list[tuple[str, str]]] = []

    async def capture(request: web.Request) -> web.Response:
        seen.append([(k.lower(), v) for k, v in request.headers.items()])
        return web.json_response({"ok": True})

    runner, base = await _site("/v1/messages", capture)
    cfg = parse_config({"channels": [{"name": "a", "type": "anthropic", "base_url": base,
                                      "api_keys": ["sk-ant-key-one", "sk-ant-key-two"], "models": ["m"]}]})
    ch = ChannelRuntime(ChannelState(cfg.channels[0], 0, cfg.routing), get_format("anthropic"), cfg.gateway.timeouts)
    up = AiohttpUpstream()
    await up.start()
    try:
        for key in (1, 0, 1):
            r = await up.send(UpstreamRequest(ch.url("m", False), ch.headers(key), b"{}", False,
                                              Limits(Timeouts(total=5))))
            assert r.status == 200
    finally:
        await up.aclose()
        await runner.cleanup()
    assert len(seen) == 3
    for got, key in zip(seen, ("sk-ant-key-two", "sk-ant-key-one", "sk-ant-key-two"), strict=True):
        names = [k for k, _ in got]
        assert len(names) == len(set(names)), got  # nothing twice
        h = dict(got)
        assert h["user-agent"] == f"axonsim/{__version__}"
        assert h["x-api-key"] == key and "authorization" not in h
        assert h["content-type"] == "application/json" and h["anthropic-version"]


async def test_requests_take_the_direct_way_and_urls_are_parsed_once(server: str, upstream: AiohttpUpstream) -> None:
    direct = upstream._params is not None
    for _ in range(2):
        r = await upstream.send(req(server + "/plain", False))
        assert r.status == 200 and await r.read() == b'{"ok": true}'
    assert list(upstream._urls) == ([server + "/plain"] if direct else [])


async def test_a_url_with_credentials_takes_session_posts_way(upstream: AiohttpUpstream) -> None:
    """The config refuses credentials in a base_url; a URL that has them all the same is left to
    session.post, which never lets them replace an Authorization header the request sets (a channel's
    OpenAI key; _post's ClientRequest would have)."""
    seen: list[str | None] = []

    async def capture(request: web.Request) -> web.Response:
        seen.append(request.headers.get("authorization"))
        return web.json_response({"ok": True})

    runner, base = await _site("/v1/chat", capture)
    try:
        url = base.replace("http://", "http://user:secret@") + "/v1/chat"
        r = await upstream.send(req(url, False))
        assert r.status == 200
    finally:
        await runner.cleanup()
    assert seen == ["Basic dXNlcjpzZWNyZXQ="]
    assert upstream._url(url) is None


@pytest.mark.parametrize("url", ["http:///v1/chat", "ftp://127.0.0.1:1/v1/chat", "http://[::1/x", "not a url"])
async def test_a_url_that_cannot_be_sent_to_is_a_connection_error(upstream: AiohttpUpstream, url: str) -> None:
    with pytest.raises(UpstreamConnectionError):
        await upstream.send(req(url, False))


async def test_the_parsed_urls_kept_are_bounded(upstream: AiohttpUpstream) -> None:
    from server.upstream import _URLS_KEPT

    for i in range(_URLS_KEPT + 10):
        assert upstream._url(f"http://127.0.0.1:1/v1/models/m{i}:generateContent") is not None
    assert 0 < len(upstream._urls) <= _URLS_KEPT


async def test_no_connection_is_left_acquired_by_failures_and_cancels(upstream: AiohttpUpstream) -> None:
    """Whatever ends an attempt (a deadline, an outside cancel at any point, a reset, an answer that
    is not HTTP), its connection goes back to the pool or is closed: the connector's limit is never
    eaten up by attempts that are over."""
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await reader.readuntil(b"\r\n\r\n")
            mode = line.split(b" ", 2)[1]
            await reader.readexactly(2)  # the body, b"{}"
            if mode == b"/reset":
                writer.transport.abort()
                return
            if mode == b"/garbage":
                writer.write(b"NOT HTTP AT ALL\r\n\r\n")
            elif mode == b"/ok":
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
            await writer.drain()
            await asyncio.sleep(3)  # /hang: never answers
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    srv = await asyncio.start_server(handle, "127.0.0.1", 0)
    base = f"http://127.0.0.1:{srv.sockets[0].getsockname()[1]}"
    try:
        with pytest.raises(UpstreamTimeout):
            await upstream.send(req(base + "/hang", False, total=0.1))
        for path in ("/reset", "/garbage"):
            with pytest.raises(UpstreamConnectionError):
                await upstream.send(req(base + path, False))
        for delay in (0, 0.0005, 0.002, 0.01, 0.05):  # an outside cancel while connecting, sending, waiting
            task = asyncio.ensure_future(upstream.send(req(base + "/hang", False)))
            await asyncio.sleep(delay)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        resp = await upstream.send(req(base + "/ok", False))
        assert resp.status == 200 and await resp.read() == b"ok"
        connector = upstream._session.connector  # type: ignore[union-attr]
        assert connector is not None
        assert len(connector._acquired) == 0
    finally:
        srv.close()


async def _raw_server(answer: Callable[[bytes], bytes]) -> tuple[asyncio.Server, str, list[bytes]]:
    """A loopback server that answers each request (head and body read whole) with answer(head)'s
    bytes; the heads it got, in order."""
    heads: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(writer.get_extra_info("peername"))
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(re.search(rb"(?i)\r\ncontent-length: *(\d+)", head).group(1))  # type: ignore[union-attr]
                await reader.readexactly(length)
                heads.append(head)
                writer.write(answer(head))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    connections: list[Any] = []
    srv = await asyncio.start_server(handle, "127.0.0.1", 0)
    srv.connections = connections  # type: ignore[attr-defined]
    return srv, f"http://127.0.0.1:{srv.sockets[0].getsockname()[1]}", heads


def _header_set(head: bytes) -> list[tuple[str, str]]:
    lines = head.decode().split("\r\n")[1:-2]
    return sorted((k.lower(), v) for k, v in (line.split(": ", 1) for line in lines))


async def test_the_raw_way_sends_the_head_aiohttp_would_and_reads_what_it_reads() -> None:
    """_send_raw writes the request itself: the same request line and headers as aiohttp's
    ClientRequest (its own Host, Accept, Accept-Encoding; the request's Content-Type and User-Agent
    kept; Content-Length), and reads a chunked, gzip-encoded answer after a 100 Continue as
    ClientResponse does."""
    import gzip

    body = gzip.compress(b'{"ok": true}')
    chunked = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
    srv, base, heads = await _raw_server(lambda head: b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\n"
                                         b"content-encoding: gzip\r\ntransfer-encoding: chunked\r\n\r\n" + chunked)
    raw, direct = AiohttpUpstream(), AiohttpUpstream()
    await raw.start()
    await direct.start()
    direct._raw = False
    try:
        headers = {"content-type": "application/json", "user-agent": "axonsim/test", "x-api-key": "k-1",
                   "anthropic-version": "2023-06-01"}
        url = base + "/v1/messages?beta=true&q=a%20b"
        for up in (raw, direct, raw):
            r = await up.send(UpstreamRequest(url, headers, b'{"x": 1}', False, req(url, False).limits))
            assert r.status == 201 and await r.read() == b'{"ok": true}'
    finally:
        await raw.aclose()
        await direct.aclose()
        srv.close()
    assert heads[0].split(b"\r\n", 1)[0] == heads[1].split(b"\r\n", 1)[0] == b"POST /v1/messages?beta=true&q=a%20b HTTP/1.1"
    assert _header_set(heads[0]) == _header_set(heads[1]) == _header_set(heads[2])
    assert ("content-length", "8") in _header_set(heads[0]) and ("x-api-key", "k-1") in _header_set(heads[0])


async def test_the_raw_way_pools_a_connection_only_when_http_lets_it() -> None:
    """An answer with `Connection: close` is not reused; a keep-alive one read to its end is."""
    closing = [True]

    def answer(head: bytes) -> bytes:
        extra = b"connection: close\r\n" if closing[0] else b""
        return b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n" + extra + b"\r\nok"

    srv, base, heads = await _raw_server(answer)
    up = AiohttpUpstream()
    await up.start()
    try:
        connector = up._session.connector  # type: ignore[union-attr]
        assert connector is not None
        r = await up.send(req(base + "/plain", False))
        assert await r.read() == b"ok" and sum(len(v) for v in connector._conns.values()) == 0
        closing[0] = False
        for _ in range(3):
            r = await up.send(req(base + "/plain", False))
            assert await r.read() == b"ok"
        assert sum(len(v) for v in connector._conns.values()) == 1 and len(connector._acquired) == 0
    finally:
        await up.aclose()
        srv.close()
    assert len(heads) == 4


async def test_an_answer_whose_body_has_arrived_gives_its_connection_back() -> None:
    """As ClientResponse does, at the body's end: a stream's error answer read whole and closed kept
    no connection alive (each one cost a new connection, a TLS handshake for a real provider), and a
    stream whose body had arrived held its pool slot until the client had been sent all of it."""
    srv, base, _ = await _raw_server(lambda head: b"HTTP/1.1 429 Too Many Requests\r\ncontent-type: application/json"
                                     b"\r\ncontent-length: 11\r\n\r\n{\"e\": \"rl\"}")
    up = AiohttpUpstream(limit=1)
    await up.start()
    try:
        for _ in range(5):
            r = await up.send(req(base + "/v1", True))
            assert r.status == 429 and await r.read() == b'{"e": "rl"}'
        assert len(srv.connections) == 1  # type: ignore[attr-defined]
        held = await up.send(req(base + "/v1", True))  # its body has arrived; not read yet
        await asyncio.sleep(0.05)
        r = await up.send(req(base + "/v1", False, total=1))  # the pool's one slot is free
        assert await r.read() == b'{"e": "rl"}' and await held.next_chunk() == b'{"e": "rl"}'
        assert len(srv.connections) == 1  # type: ignore[attr-defined]
    finally:
        await up.aclose()
        srv.close()


async def test_a_header_set_changed_after_use_is_written_as_it_now_is() -> None:
    up = AiohttpUpstream()
    await up.start()
    try:
        target = up._url("http://127.0.0.1:1/v1/chat")
        assert target is not None
        headers = {"authorization": "Bearer key-a"}
        assert b"Bearer key-a" in (target.head(headers, 2) or b"")
        headers["authorization"] = "Bearer key-b"
        assert b"Bearer key-b" in (target.head(headers, 2) or b"")
    finally:
        await up.aclose()


@pytest.mark.parametrize("headers", [{"x-bad": "a\r\nx-injected: 1"}, {"x-bad\n": "a"}, {"Host": "elsewhere"},
                                     {"content-length": "5"}, {"transfer-encoding": "chunked"},
                                     {"x-bad": "a\x0bb"}, {"x-bad": "a\x7f"}])
async def test_headers_the_raw_way_does_not_write_are_left_to_aiohttp(headers: dict[str, str]) -> None:
    """A line break in a header (an injection), or a header that frames or routes the request, is
    not written by _send_raw: the request goes through ClientRequest, which refuses or handles it."""
    up = AiohttpUpstream()
    await up.start()
    try:
        target = up._url("http://127.0.0.1:1/v1/chat")
        assert target is not None
        assert target.head({"content-type": "application/json", **headers}, 2) is None
        assert target.head({"content-type": "application/json"}, 2) is not None
    finally:
        await up.aclose()
