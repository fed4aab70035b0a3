"""The server's HTTP protocol: a response head leaves in the same write as its first body bytes, and nothing else changes."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from server.http_protocol import HeadHoldingTransport
from server.testing import GatewayServer, Stack

pytestmark = pytest.mark.timeout(60)

GW_KEY = "sk-gw-proto"
AUTH = {"Authorization": f"Bearer {GW_KEY}"}
HEAD = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n"


class Recorder:
    """A transport that records what is written to it, write by write."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False
        self.extra = {"peername": ("127.0.0.1", 1)}

    def write(self, data: bytes) -> None:
        self.writes.append(bytes(data))

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.extra.get(name, default)


async def test_a_head_is_written_with_the_body_that_follows_it() -> None:
    rec = Recorder()
    t = HeadHoldingTransport(rec, asyncio.get_running_loop())  # type: ignore[arg-type]
    t.write(HEAD)
    assert rec.writes == []
    t.write(b"ok")
    assert rec.writes == [HEAD + b"ok"]
    t.write(b"more")  # not a head: straight through
    assert rec.writes == [HEAD + b"ok", b"more"]
    await asyncio.sleep(0)  # the end-of-turn flush finds nothing left to write
    assert rec.writes == [HEAD + b"ok", b"more"]


async def test_a_head_without_a_body_goes_out_at_the_end_of_the_loop_turn() -> None:
    rec = Recorder()
    t = HeadHoldingTransport(rec, asyncio.get_running_loop())  # type: ignore[arg-type]
    t.write(memoryview(b"HTTP/1.1 204 No Content\r\n\r\n"))
    assert rec.writes == []
    await asyncio.sleep(0)
    assert rec.writes == [b"HTTP/1.1 204 No Content\r\n\r\n"]
    # the next response's head is held again, and kept in order ahead of what follows
    t.write(b"HTTP/1.1 200 OK\r\n\r\n")
    t.writelines([b"a", b"b"])
    assert rec.writes[-1] == b"HTTP/1.1 200 OK\r\n\r\nab"


async def test_close_writes_a_held_head_first_and_other_calls_reach_the_transport() -> None:
    rec = Recorder()
    t = HeadHoldingTransport(rec, asyncio.get_running_loop())  # type: ignore[arg-type]
    t.write(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n")
    t.close()
    assert rec.writes == [b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n"] and rec.closed
    assert t.get_extra_info("peername") == ("127.0.0.1", 1)  # delegated
    t.write(b"HTTP/1.1 200 OK\r\n\r\n")
    await asyncio.sleep(0)
    assert len(rec.writes) == 1  # a head held past the connection's end is dropped, not written to it


# -- the response head, checked once -------------------------------------------------------------


def _cycle(cls: type, method: str = "POST", keep_alive: bool = True) -> tuple[Any, Recorder]:
    from uvicorn.protocols.http.flow_control import FlowControl

    rec = Recorder()
    cycle = cls(scope={"type": "http", "method": method}, transport=rec, flow=FlowControl(rec),
                logger=None, access_logger=None, access_log=False, default_headers=[(b"date", b"today")],
                message_event=asyncio.Event(), expect_100_continue=False, keep_alive=keep_alive,
                on_response=lambda: None)
    return cycle, rec


async def _start(cls: type, message: dict[str, Any], method: str = "POST", keep_alive: bool = True) -> tuple[Any, ...]:
    """What sending `message` as a response's start does: the writes, the error, the cycle's state."""
    cycle, rec = _cycle(cls, method, keep_alive)
    try:
        await cycle.send(message)
        error = None
    except Exception as exc:
        error = f"{type(exc).__name__}: {exc}"
    return (rec.writes, error, cycle.response_started, cycle.keep_alive, cycle.chunked_encoding,
            cycle.expected_content_length)


HEADS = {
    "length": ({"status": 200, "headers": [(b"Content-Type", b"application/json"), (b"content-length", b"12")]}, "POST", True),
    "chunked": ({"status": 200, "headers": [(b"transfer-encoding", b"Chunked")]}, "POST", True),
    "neither": ({"status": 201, "headers": [(b"x-a", b"1")]}, "POST", True),
    "head": ({"status": 200, "headers": []}, "HEAD", True),
    "no content": ({"status": 204}, "POST", True),
    "close asked": ({"status": 200, "headers": [(b"Connection", b"keep-alive, Close"), (b"content-length", b"0")]}, "POST", True),
    "not kept alive": ({"status": 200, "headers": [(b"content-length", b"0")]}, "POST", False),
    "two lengths": ({"status": 200, "headers": [(b"content-length", b"1"), (b"content-length", b"2")]}, "POST", True),
    "bad name": ({"status": 200, "headers": [(b"x-ok", b"1"), (b"bad name", b"1")]}, "POST", True),
    "bad value": ({"status": 200, "headers": [(b"x-ok", b"1"), (b"x-bad", b"a\r\nb")]}, "POST", True),
    "bad value, headers an iterator": ({"status": 200, "headers": iter([(b"content-length", b"2"), (b"x-bad", b"a\nb")])},
                                       "POST", True),
    "bad, headers None": ({"status": 200, "headers": None}, "POST", True),
    "bad, a value a str": ({"status": 200, "headers": [(b"x-a", "1")]}, "POST", True),
    "bad, a header of three": ({"status": 200, "headers": [(b"x-a", b"1", b"2")]}, "POST", True),
    "bytearray and memoryview values": ({"status": 200, "headers": [(b"x-a", bytearray(b"1")), (b"content-length", b"0")]},
                                        "POST", True),
}


@pytest.mark.parametrize("case", list(HEADS))
async def test_a_head_checked_once_is_what_uvicorn_writes_or_refuses(case: str) -> None:
    from uvicorn.protocols.http.httptools_impl import RequestResponseCycle

    from server.http_protocol import OneCheckCycle

    message, method, keep_alive = HEADS[case]
    headers = message.get("headers")
    if isinstance(headers, type(iter([]))):  # one iterator for each cycle
        items = list(headers)
        messages = [{"type": "http.response.start", **message, "headers": iter(items)} for _ in range(2)]
    else:
        messages = [{"type": "http.response.start", **message}] * 2
    ours = await _start(OneCheckCycle, messages[0], method, keep_alive)
    assert ours == await _start(RequestResponseCycle, messages[1], method, keep_alive)
    assert (ours[1] is None) == (not case.startswith("bad"))


async def test_a_head_sent_from_a_task_of_its_own_is_written_as_uvicorn_writes_it() -> None:
    """`send` returns a coroutine for a head too, as uvicorn's does: a task can be made of it (anyio's
    start_soon and asyncio.create_task both require one), and nothing is written before it runs."""
    from uvicorn.protocols.http.httptools_impl import RequestResponseCycle

    from server.http_protocol import OneCheckCycle

    message = {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]}
    out = []
    for cls in (OneCheckCycle, RequestResponseCycle):
        cycle, rec = _cycle(cls)
        pending = cycle.send(message)
        assert asyncio.iscoroutine(pending) and rec.writes == []
        await asyncio.create_task(pending)
        out.append(rec.writes)
    assert out[0] == out[1] and out[0][0].startswith(b"HTTP/1.1 200 OK\r\n")


@given(st.lists(st.tuples(st.binary(min_size=1, max_size=6), st.binary(max_size=6)), max_size=4))
@settings(max_examples=300, deadline=None)
def test_any_header_bytes_are_written_or_refused_as_uvicorn_does(headers: list[tuple[bytes, bytes]]) -> None:
    from uvicorn.protocols.http.httptools_impl import RequestResponseCycle

    from server.http_protocol import OneCheckCycle

    message = {"type": "http.response.start", "status": 200,
               "headers": [(n, v) for n, v in headers if n.lower() not in (b"content-length", b"transfer-encoding")]}

    async def both() -> None:
        assert await _start(OneCheckCycle, message) == await _start(RequestResponseCycle, message)

    asyncio.run(both())


async def test_the_server_writes_its_heads_itself_and_leaves_bodies_to_uvicorn(gw: GatewayServer) -> None:
    from uvicorn.protocols.http.httptools_impl import RequestResponseCycle

    from server.http_protocol import OneCheckCycle

    ours: list[str] = []
    uvicorns: list[str] = []
    send, base = OneCheckCycle.send, RequestResponseCycle.send

    async def spy(self: Any, message: Any) -> None:
        ours.append(message["type"])
        await send(self, message)

    async def base_spy(self: Any, message: Any) -> None:
        uvicorns.append(message["type"])
        await base(self, message)

    OneCheckCycle.send = spy  # type: ignore[method-assign]
    RequestResponseCycle.send = base_spy  # type: ignore[method-assign]
    try:
        async with httpx.AsyncClient(base_url=gw.url, timeout=10) as c:
            r = await c.post("/v1/chat/completions", json={"model": "pm", "messages": [{"role": "user", "content": "x"}]},
                             headers=AUTH)
    finally:
        OneCheckCycle.send = send  # type: ignore[method-assign]
        RequestResponseCycle.send = base  # type: ignore[method-assign]
    assert r.status_code == 200 and r.headers["x-request-id"] and r.json()["object"] == "chat.completion"
    assert ours == ["http.response.start", "http.response.body"]
    assert uvicorns == ["http.response.body"]  # the head never went through uvicorn's send


# -- the real server ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gw() -> Iterator[GatewayServer]:
    with Stack() as st:
        yield st.serve([{"name": "m", "type": "openai", "api_keys": ["upstream-secret-proto"], "models": ["pm"],
                         "behavior": {"ttft": 0.005, "tokens_per_second": 5000, "output_tokens": 12}}],
                       gateway={"api_keys": [{"key": GW_KEY, "project": "p"}]})


@pytest.fixture()
def writes(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """Every write the server's connections make to their sockets from now on."""
    seen: list[bytes] = []
    init = HeadHoldingTransport.__init__

    class Tap:
        def __init__(self, transport: Any) -> None:
            self._t = transport

        def write(self, data: bytes) -> None:
            seen.append(bytes(data))
            self._t.write(data)

        def __getattr__(self, name: str) -> Any:
            return getattr(self._t, name)

    def tapped(self: HeadHoldingTransport, transport: Any, loop: Any) -> None:
        init(self, Tap(transport), loop)

    monkeypatch.setattr(HeadHoldingTransport, "__init__", tapped)
    return seen


def _until_closed(s: socket.socket) -> bytes:
    s.settimeout(10)
    out = b""
    try:
        while chunk := s.recv(65536):
            out += chunk
    except ConnectionResetError:
        pass
    return out


def _post(port: int, body: dict[str, Any], headers: dict[str, str] = AUTH) -> bytes:
    data = orjson.dumps(body)
    head = "".join(f"{k}: {v}\r\n" for k, v in {**headers, "content-type": "application/json",
                                                "content-length": str(len(data)), "connection": "close"}.items())
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(f"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n{head}\r\n".encode() + data)
        return _until_closed(s)


def test_a_chat_answer_leaves_in_one_write(gw: GatewayServer, writes: list[bytes]) -> None:
    port = int(gw.url.rsplit(":", 1)[1])
    raw = _post(port, {"model": "pm", "messages": [{"role": "user", "content": "hi"}]})
    assert raw.startswith(b"HTTP/1.1 200 OK\r\n")
    answer = [w for w in writes if w.startswith(b"HTTP/1.1 200")]
    assert len(answer) == 1 and answer[0] == raw  # head and body: one write, and all the client got
    assert orjson.loads(raw.split(b"\r\n\r\n", 1)[1])["choices"][0]["message"]["content"]


def test_an_error_answer_and_a_stream_are_whole_and_start_with_their_first_bytes(gw: GatewayServer,
                                                                                  writes: list[bytes]) -> None:
    port = int(gw.url.rsplit(":", 1)[1])
    raw = _post(port, {"model": "pm", "messages": [{"role": "user", "content": "hi"}]}, headers={})
    assert raw.startswith(b"HTTP/1.1 401 ") and writes[-1] == raw
    assert orjson.loads(raw.split(b"\r\n\r\n", 1)[1])["error"]

    writes.clear()
    raw = _post(port, {"model": "pm", "messages": [{"role": "user", "content": "hi"}], "stream": True})
    assert raw.startswith(b"HTTP/1.1 200 OK\r\n") and b"transfer-encoding: chunked" in raw
    assert raw.rstrip().endswith(b"0")  # the chunked body's end
    assert b"data: [DONE]" in raw
    # the head went out with the stream's first events, not on its own
    assert writes[0].startswith(b"HTTP/1.1 200 OK\r\n") and b"data: " in writes[0]


def test_health_head_and_keep_alive_work_as_before(gw: GatewayServer) -> None:
    with httpx.Client(base_url=gw.url, timeout=10) as c:
        for _ in range(3):  # one keep-alive connection, several responses in turn
            assert c.get("/health").status_code == 200
        assert c.head("/health").status_code in (200, 405)
        r = c.post("/v1/chat/completions", json={"model": "pm", "messages": [{"role": "user", "content": "x"}]},
                   headers=AUTH)
        assert r.status_code == 200 and r.json()["object"] == "chat.completion"


def _read_response(s: socket.socket) -> bytes:
    out = b""
    while b"\r\n\r\n" not in out:
        chunk = s.recv(65536)
        if not chunk:
            return out
        out += chunk
    head, _, body = out.partition(b"\r\n\r\n")
    length = int(next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")))
    while len(body) < length:
        body += s.recv(65536)
    return out


async def _plain_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Answers "ok", after the seconds a `?sleep=` query asks for."""
    if scope["type"] != "http":
        return
    query = scope["query_string"].decode()
    if query.startswith("sleep="):
        await asyncio.sleep(float(query[6:]))
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"ok"})


@contextlib.contextmanager
def _plain_server(**config: Any) -> Iterator[tuple[Any, int]]:
    """uvicorn serving _plain_app through the gateway's protocol, in a thread: (server, port)."""
    import threading

    import uvicorn

    from server.http_protocol import CoalescingHttpToolsProtocol

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(_plain_app, host="127.0.0.1", port=port, http=CoalescingHttpToolsProtocol,
                                           lifespan="off", log_level="warning", **config))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not server.started:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        yield server, port
    finally:
        server.should_exit = True
        thread.join(10)


def _get(s: socket.socket, query: str = "") -> bytes:
    s.sendall(f"GET /{query} HTTP/1.1\r\nhost: x\r\n\r\n".encode())
    return _read_response(s)


def test_an_idle_keep_alive_connection_is_drained_at_shutdown_not_cut() -> None:
    """A worker shutting down (SIGTERM, a reload replacing it) closed idle keep-alive connections at
    once: a request its client was sending then met a reset and was lost. Drained, the request is
    served with `Connection: close`, and the connection ends after it."""
    from server.http_protocol import DRAIN_GRACE

    with _plain_server() as (server, port), socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        first = _get(s)
        assert first.startswith(b"HTTP/1.1 200") and b"connection: close" not in first.lower()
        began = time.monotonic()
        server.should_exit = True
        time.sleep(0.3)  # shutdown has begun; the connection is idle
        second = _get(s)
        assert second.startswith(b"HTTP/1.1 200") and b"connection: close" in second.lower()
        assert s.recv(10) == b""  # then the server closes it
    assert time.monotonic() - began < DRAIN_GRACE + 5


KEEP_ALIVE = 0.6  # uvicorn's timeout_keep_alive for these tests


def test_a_keep_alive_connection_idle_for_the_timeout_is_closed() -> None:
    with _plain_server(timeout_keep_alive=KEEP_ALIVE) as (_, port), \
            socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        assert _get(s).startswith(b"HTTP/1.1 200")
        idle = time.monotonic()
        assert s.recv(10) == b""  # closed by the server, unasked
        assert time.monotonic() - idle >= KEEP_ALIVE * 0.8


def test_the_keep_alive_timeout_counts_from_the_last_answer_and_never_during_a_request() -> None:
    """The timeout runs from the connection's last answer (requests closer together than it keep
    the connection however long it lives) and never cuts a request under way."""
    with _plain_server(timeout_keep_alive=KEEP_ALIVE) as (_, port), \
            socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        assert _get(s).startswith(b"HTTP/1.1 200")
        for _ in range(3):  # a request every 2/3 of the timeout: the connection outlives the timeout
            time.sleep(KEEP_ALIVE * 2 / 3)
            assert _get(s).startswith(b"HTTP/1.1 200")
        # a request that takes longer than the timeout
        assert _get(s, f"?sleep={KEEP_ALIVE * 1.5}").startswith(b"HTTP/1.1 200")
        assert _get(s).startswith(b"HTTP/1.1 200")
        idle = time.monotonic()
        assert s.recv(10) == b""  # and idle again, closed after the timeout
        assert time.monotonic() - idle >= KEEP_ALIVE * 0.8


def test_the_protocol_loads_where_there_is_no_fcntl_or_termios() -> None:
    # Windows has neither; send_timeout then measures the transport's buffer alone.
    import subprocess
    import sys

    code = ("import sys; sys.modules['fcntl'] = None; sys.modules['termios'] = None\n"
            "import server.http_protocol as h; assert h._OUTQ is None; import server.main")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


# -- what HTTP cannot parse ---------------------------------------------------------------------


BROKEN = {
    "request line": b"NOT-HTTP AT ALL\r\n\r\n",
    "header": b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nno colon in this header\r\n\r\n",
    "chunked body": (b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer " + GW_KEY.encode()
                     + b"\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n"
                     b"5\r\n{\"mod\r\nzz-not-a-size\r\n"),
}


@pytest.mark.parametrize("part", list(BROKEN))
def test_what_http_cannot_parse_is_answered_400_in_json_and_the_connection_closed(gw: GatewayServer, part: str) -> None:
    """uvicorn answered these in plain text ("Invalid HTTP request received."); a client's SDK reads
    a gateway's errors as JSON, as for the 431 and 408 the protocol sends."""
    port = int(gw.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(BROKEN[part])
        answer = _until_closed(s)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 Bad Request\r\n"), answer[:300]
    assert b"content-type: application/json" in head and b"connection: close" in head
    err = orjson.loads(body)["error"]
    assert err["code"] == "invalid_http" and err["type"] == "invalid_request_error" and "HTTP/1.1" in err["message"]
    with httpx.Client(base_url=gw.url, timeout=10) as c:  # and the gateway is as it was
        assert c.post("/v1/chat/completions", json={"model": "pm", "messages": [{"role": "user", "content": "x"}]},
                      headers=AUTH).status_code == 200


@pytest.fixture(scope="module")
def slow_gw() -> Iterator[GatewayServer]:
    with Stack() as st:
        yield st.serve([{"name": "m", "type": "openai", "api_keys": ["upstream-secret-proto"], "models": ["slow"],
                         "behavior": {"ttft": 0.6, "tokens_per_second": 5000, "output_tokens": 3}}],
                       gateway={"api_keys": [{"key": GW_KEY, "project": "p"}], "read_timeout": 0.2})


def _pipelined(slow_gw: GatewayServer, after: bytes) -> bytes:
    """A whole request the upstream takes 0.6 s to answer, then `after` on the same connection."""
    port = int(slow_gw.url.rsplit(":", 1)[1])
    data = orjson.dumps({"model": "slow", "messages": [{"role": "user", "content": "hi"}]})
    first = (f"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {GW_KEY}\r\n"
             f"content-type: application/json\r\ncontent-length: {len(data)}\r\n\r\n").encode() + data
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(first + after)
        return _until_closed(s)


def test_a_refusal_never_breaks_into_the_answer_of_a_request_pipelined_ahead(slow_gw: GatewayServer) -> None:
    """uvicorn wrote its 400 at once, which the client took for the first request's answer. A 400
    for a broken head that follows, or a 408 for one that stops arriving (gateway.read_timeout 0.2 s,
    while the first answer takes 0.6 s), comes after the first answer, whole, as nginx answers; the
    first request is served (it was cut off, recorded as its client's cancel). A pipelined body that
    stops arriving (its request's app not started yet) closes the connection, no answer misread."""
    for after, refusal in ((b"NOT-HTTP AT ALL\r\n\r\n", b"400"), (b"POST /v1/chat/completions HTTP/1.1\r\nhost", b"408")):
        n = len(slow_gw.proxy.recent)
        got = _pipelined(slow_gw, after)
        assert got.startswith(b"HTTP/1.1 200 "), got[:300]
        first, _, second = got.partition(b"\r\n\r\n")
        length = int(dict(h.split(b": ", 1) for h in first.split(b"\r\n")[1:])[b"content-length"])
        orjson.loads(second[:length])  # the first answer whole ...
        assert second[length:].startswith(b"HTTP/1.1 " + refusal + b" ")  # ... then the refusal
        assert [r["status"] for r in list(slow_gw.proxy.recent)[n:]] == [200]
    stalled = (f"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {GW_KEY}\r\n"
               "content-type: application/json\r\ncontent-length: 100\r\n\r\n{\"model\"").encode()
    assert _pipelined(slow_gw, stalled) == b""
    # without a request ahead, the same are answered
    port = int(slow_gw.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(stalled)
        assert _until_closed(s).startswith(b"HTTP/1.1 408 ")


@pytest.mark.parametrize("together", [False, True])
def test_after_an_answer_given_before_its_body_came_a_broken_head_is_still_answered_400(gw: GatewayServer,
                                                                                        together: bool) -> None:
    """A keyless request is answered 401 before its body has come, and the connection stays open.
    Its body then ends; the next request's broken head is refused with a 400, not taken for more
    of that body (uvicorn left it marked as under way: the connection closed unanswered)."""
    port = int(gw.url.rsplit(":", 1)[1])
    body = orjson.dumps({"model": "pm", "messages": [{"role": "user", "content": "x"}]})
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                  b"content-length: %d\r\n\r\n" % len(body))
        first = s.recv(65536)
        assert first.startswith(b"HTTP/1.1 401 ") and b"connection: close" not in first.lower(), first
        if together:
            s.sendall(body + BROKEN["request line"])
        else:
            s.sendall(body)
            time.sleep(0.2)
            s.sendall(BROKEN["request line"])
        answer = _until_closed(s)
    assert answer.startswith(b"HTTP/1.1 400 Bad Request\r\n"), answer[:300]
    assert orjson.loads(answer.partition(b"\r\n\r\n")[2])["error"]["code"] == "invalid_http"


# -- a refused body is answered by the request's own handler ---------------------------------------

FAMILIES = {  # path, and how each family's error names the fault
    "openai": ("/v1/chat/completions", lambda e: e["error"]["code"]),
    "responses": ("/v1/responses", lambda e: e["error"]["code"]),
    "anthropic": ("/v1/messages", lambda e: e["error"]["type"]),
    "gemini": ("/v1beta/models/slow:generateContent", lambda e: e["error"]["code"]),
}
FAULTS = {  # what follows the head, and what each family then says (openai, anthropic, gemini)
    "broken chunk": (b"transfer-encoding: chunked\r\n\r\n5\r\n{\"mod\r\nzz-not-a-size\r\n",
                     400, ("invalid_http", "invalid_request_error", 400)),
    "stalled body": (b"content-length: 100\r\n\r\n{\"model\"", 408, ("request_timeout", "timeout_error", 408)),
}


@pytest.mark.parametrize("fault", list(FAULTS))
@pytest.mark.parametrize("family", list(FAMILIES))
def test_a_refused_body_is_answered_in_the_clients_format_with_the_requests_ids(slow_gw: GatewayServer, family: str,
                                                                                fault: str) -> None:
    """The protocol answered these itself, in OpenAI's shape and without the request's ids, so a
    client could not find the record the gateway keeps of its request."""
    path, says = FAMILIES[family]
    tail, status, said = FAULTS[fault]
    port = int(slow_gw.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(f"POST {path} HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {GW_KEY}\r\n"
                  f"content-type: application/json\r\nx-axonsim-trace-id: tr-{family}-{status}\r\n".encode() + tail)
        answer = _until_closed(s)
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[0].startswith(b"HTTP/1.1 %d " % status), answer[:300]
    headers = dict(line.split(b": ", 1) for line in lines[1:])
    assert headers[b"connection"] == b"close" and headers[b"content-type"] == b"application/json"
    assert int(headers[b"content-length"]) == len(body)
    assert headers[b"x-axonsim-trace-id"] == f"tr-{family}-{status}".encode()
    expected = said[{"openai": 0, "responses": 0, "anthropic": 1, "gemini": 2}[family]]
    assert says(orjson.loads(body)) == expected, body
    if family == "anthropic":
        assert headers[b"request-id"] == headers[b"x-request-id"]
    rec = slow_gw.proxy.find(headers[b"x-request-id"].decode())
    assert rec is not None and rec["status"] == status and rec["trace_id"] == f"tr-{family}-{status}"


def test_a_keyless_request_with_a_refused_body_is_answered_401_as_it_is_recorded(slow_gw: GatewayServer) -> None:
    """The broken chunk came in the head's read: the body was refused before the handler ran, whose
    401 was then dropped; the client got the protocol's 400 while the record said 401."""
    port = int(slow_gw.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer wrong-key-123\r\n"
                  b"content-type: application/json\r\n" + FAULTS["broken chunk"][0])
        answer = _until_closed(s)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 401 ") and b"connection: close" in head, answer[:300]
    assert orjson.loads(body)["error"]["code"] == "invalid_api_key"
    rid = dict(line.split(b": ", 1) for line in head.split(b"\r\n")[1:])[b"x-request-id"].decode()
    rec = slow_gw.proxy.find(rid)
    assert rec is not None and rec["status"] == 401


def test_a_refused_body_of_a_request_no_handler_answers_gets_the_protocols_own_answer(gw: GatewayServer) -> None:
    """The admin API and health checks answer without reading a body: a broken one that came with
    the head leaves them nothing to answer (their answer is dropped), and the protocol answers."""
    port = int(gw.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"POST /admin/reload HTTP/1.1\r\nhost: x\r\n" + FAULTS["broken chunk"][0])
        answer = _until_closed(s)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 Bad Request\r\n"), answer[:300]
    assert orjson.loads(body)["error"]["code"] == "invalid_http"  # one answer: nothing after it
