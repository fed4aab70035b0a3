"""The live driver with a scripted upstream (MockUpstream): retries, failover, key rejection, streams, cancellation."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest

from axonsim.config import parse_config
from axonsim.formats import get_format
from axonsim.unified import ErrorKind, Message, Request, TextPart
from server.driver import Exchange, LiveStream
from server.proxy import Proxy
from server.upstream import (
    HANG,
    MockReply,
    MockUpstream,
    UpstreamConnectionError,
    UpstreamRequest,
    UpstreamTimeout,
)

pytestmark = pytest.mark.timeout(30)

oc = get_format("openai_chat")

SECRET_A = "upstream-secret-AAAA-0001"
SECRET_B = "upstream-secret-BBBB-0002"


def make_config(**routing: Any) -> Any:
    return parse_config({
        "gateway": {"api_keys": [{"key": "gw-key"}]},
        "channels": [
            {"name": "a", "type": "openai", "base_url": "http://a.test/v1", "api_keys": [SECRET_A], "models": ["m"],
             "priority": 0},
            {"name": "b", "type": "openai", "base_url": "http://b.test/v1", "api_keys": [SECRET_B], "models": ["m"],
             "model_mapping": {"alias": "m"}, "priority": 1},
        ],
        # tiny backoff: the tests wait for real
        "routing": {"retry": {"backoff": {"base": 0.001, "cap": 0.01}}, **routing},
    })


def chat_body(text: str = "hello", model: str = "m") -> bytes:
    return orjson.dumps({
        "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
    })


def sse(obj: Any) -> bytes:
    return b"data: " + (obj if isinstance(obj, bytes) else orjson.dumps(obj)) + b"\n\n"


def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
    return sse({"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "m",
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})


ROLE = chunk({"role": "assistant", "content": ""})
DONE = b"data: [DONE]\n\n"
USAGE = sse({"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "m", "choices": [],
             "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}})


def good_stream(*texts: str) -> list[Any]:
    return [ROLE, *[chunk({"content": t}) for t in texts], chunk({}, "stop"), USAGE, DONE]


def error_body(status: int, message: str) -> bytes:
    return orjson.dumps({"error": {"message": message, "type": "server_error" if status >= 500 else
                                   "invalid_request_error", "param": None, "code": None}})


def request(stream: bool = False, model: str = "m") -> Request:
    return Request(model=model, messages=[Message(role="user", content=[TextPart(text="hi")])], stream=stream)


def host(r: UpstreamRequest) -> str:
    return r.url.split("/")[2]


async def run(proxy: Proxy, req: Request, raw: bytes | None = None) -> tuple[Any, Exchange]:
    ex = Exchange(req, raw, oc)
    result = await proxy.driver.execute(ex)
    return result, ex


async def drain(stream: LiveStream) -> list[Any]:
    out = list(stream.pending)
    while True:
        evs = await stream.next_events()
        if evs is None:
            return out
        out.extend(evs)


async def cancel_drain(stream: LiveStream, after: float) -> None:
    """A client that reads `stream` and leaves `after` seconds in."""
    task = asyncio.create_task(drain(stream))
    await asyncio.sleep(after)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


def states(proxy: Proxy) -> dict[str, Any]:
    return {s.name: s for s in proxy.router.states}


async def test_retry_then_failover() -> None:
    def handler(r: UpstreamRequest) -> MockReply:
        if host(r) == "a.test":
            return MockReply(500, error_body(500, "boom"))
        return MockReply(200, chat_body("from b"))

    up = MockUpstream(handler)
    proxy = Proxy(make_config(), up, seed=1)
    result, _ = await run(proxy, request())
    assert result.ok
    assert [(a.channel, a.status, a.next) for a in result.attempts] == [
        ("a", 500, "retry"), ("a", 500, "failover"), ("b", 200, "done")]
    assert result.outcome.payload.response.message.text() == "from b"
    st = states(proxy)
    assert st["a"].failures == 2 and st["a"].inflight == 0
    assert st["b"].failures == 0 and st["b"].inflight == 0 and st["b"].ewma_latency is not None
    # the channel's own key, in the channel's auth convention
    assert up.requests[0].headers["Authorization"] == f"Bearer {SECRET_A}"
    assert up.requests[2].headers["Authorization"] == f"Bearer {SECRET_B}"


async def test_an_error_body_with_status_200_keeps_the_providers_message() -> None:
    said = "This model's maximum context length is 8192 tokens"
    up = MockUpstream(lambda r: MockReply(200, orjson.dumps({"error": {"message": said,
                                                                       "type": "invalid_request_error"}})))
    proxy = Proxy(make_config(), up, seed=1)
    result, ex = await run(proxy, request())
    assert not result.ok and result.error.status == 502
    assert said in result.error.message  # it used to be "the upstream sent a malformed response"
    assert all(out.error is not None and said in out.error.message for _, out in ex.trace if out is not None)


async def test_401_disables_the_key_and_fails_over() -> None:
    def handler(r: UpstreamRequest) -> MockReply:
        if host(r) == "a.test":
            return MockReply(401, error_body(401, "bad key"))
        return MockReply(200, chat_body())

    up = MockUpstream(handler)
    proxy = Proxy(make_config(), up, seed=1)
    result, _ = await run(proxy, request())
    assert result.ok
    assert [(a.channel, a.status, a.next) for a in result.attempts] == [("a", 401, "failover"), ("b", 200, "done")]
    a = states(proxy)["a"]
    assert a.keys[0].disabled and not a.usable()
    # the next request does not even try channel a
    result, _ = await run(proxy, request())
    assert [a.channel for a in result.attempts] == ["b"]
    assert len(up.requests) == 3


async def test_upstream_400_goes_back_to_the_client_without_retry() -> None:
    up = MockUpstream(lambda r: MockReply(400, orjson.dumps({"error": {
        "message": f"bad temperature (key {SECRET_A})", "type": "invalid_request_error", "param": "temperature",
        "code": None}})))
    proxy = Proxy(make_config(), up, seed=1)
    result, _ = await run(proxy, request())
    assert not result.ok
    assert len(up.requests) == 1
    assert [(a.channel, a.next) for a in result.attempts] == [("a", "give_up")]
    assert result.error.status == 400 and result.error.param == "temperature"
    assert SECRET_A not in result.error.message and "[redacted]" in result.error.message
    assert states(proxy)["a"].failures == 0  # the client's fault says nothing about the channel


async def test_transport_failures_are_classified() -> None:
    seen: list[str] = []

    def handler(r: UpstreamRequest) -> MockReply:
        seen.append(host(r))
        if host(r) == "a.test":
            return MockReply(exc=UpstreamTimeout("t") if len(seen) == 1 else UpstreamConnectionError("c"))
        return MockReply(200, chat_body())

    proxy = Proxy(make_config(), MockUpstream(handler), seed=1)
    result, _ = await run(proxy, request())
    assert result.ok
    assert [(a.status, a.as_dict()["error"], a.next) for a in result.attempts] == [
        (0, "timeout", "retry"), (0, "connection", "failover"), (200, None, "done")]


async def test_all_channels_fail_maps_to_gateway_status() -> None:
    up = MockUpstream(lambda r: MockReply(429, error_body(429, "slow down"), headers={"retry-after": "7"}))
    proxy = Proxy(make_config(), up, seed=1)
    result, _ = await run(proxy, request())
    assert not result.ok
    assert result.error.kind is ErrorKind.RATE_LIMITED and result.error.status == 429
    assert result.error.retry_after == 7
    assert [a.channel for a in result.attempts] == ["a", "b"]


async def test_unknown_model_is_404_without_attempts() -> None:
    up = MockUpstream(lambda r: MockReply(200, chat_body()))
    proxy = Proxy(make_config(), up, seed=1)
    result, _ = await run(proxy, request(model="nope"))
    assert not result.ok and result.error.status == 404 and result.error.kind is ErrorKind.NOT_FOUND
    assert result.attempts == [] and up.requests == []


async def test_malformed_upstream_answer_is_a_channel_failure() -> None:
    def handler(r: UpstreamRequest) -> MockReply:
        return MockReply(200, b"<html>oops</html>" if host(r) == "a.test" else chat_body())

    proxy = Proxy(make_config(), MockUpstream(handler), seed=1)
    result, _ = await run(proxy, request())
    assert result.ok
    assert [(a.channel, a.as_dict()["error"]) for a in result.attempts] == [("a", "server_error"), ("a", "server_error"),
                                                               ("b", None)]


async def test_same_format_forwards_the_original_bytes() -> None:
    up = MockUpstream(lambda r: MockReply(200, chat_body("x")))
    proxy = Proxy(make_config(), up, seed=1)
    raw = b'{"model": "m", "messages": [{"role": "user", "content": "hi"}], "x_custom": 1}'
    req = oc.parse_request(raw)
    result, _ = await run(proxy, req, raw)
    assert up.requests[0].body is raw
    assert result.outcome.payload.raw == chat_body("x")  # and the answer comes back as it was
    # a mapped alias needs the upstream name in the body: rebuilt from the unified request
    raw2 = b'{"model": "alias", "messages": [{"role": "user", "content": "hi"}]}'
    await run(proxy, oc.parse_request(raw2), raw2)
    assert orjson.loads(up.requests[1].body)["model"] == "m"
    assert host(up.requests[1]) == "b.test"


async def test_same_format_stream_forwards_the_client_bytes_asking_for_usage() -> None:
    up = MockUpstream(lambda r: MockReply(200, chunks=good_stream("Hi")))
    proxy = Proxy(make_config(), up, seed=1)
    raw = (b'{"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": true, "max_tokens": 9,'
           b' "x_custom": [1], "stream_options": {"x_opt": 2}}')
    result, _ = await run(proxy, oc.parse_request(raw), raw)
    assert result.ok and [e.type for e in await drain(result.outcome.payload)][-2:] == ["finish", "usage"]
    sent = orjson.loads(up.requests[0].body)
    # the client's request as it came (its field names, its extra fields), and usage asked for
    assert sent == {**orjson.loads(raw), "stream_options": {"x_opt": 2, "include_usage": True}}
    # a client that asked for usage itself: its very bytes
    raw2 = b'{"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": true, ' \
           b'"stream_options": {"include_usage": true}}'
    await run(proxy, oc.parse_request(raw2), raw2)
    assert up.requests[1].body is raw2
    # a mapped alias is rebuilt from the unified request, as before
    raw3 = b'{"model": "alias", "messages": [{"role": "user", "content": "hi"}], "stream": true, "max_tokens": 9}'
    await run(proxy, oc.parse_request(raw3), raw3)
    rebuilt = orjson.loads(up.requests[2].body)
    assert rebuilt["model"] == "m" and rebuilt["max_completion_tokens"] == 9
    assert rebuilt["stream_options"] == {"include_usage": True}


async def test_a_channel_that_echoes_its_key_does_not_pass_it_on() -> None:
    # A misbehaving upstream quotes the Authorization header it got, in a successful answer.
    def echo(r: UpstreamRequest) -> MockReply:
        said = f"you sent {r.headers['Authorization']}"
        if r.stream:
            text = chunk({"content": said})
            cut = text.index(SECRET_A[:10].encode()) + 6  # the key split over two reads
            return MockReply(200, chunks=[ROLE, text[:cut], text[cut:], chunk({}, "stop"), USAGE, DONE])
        return MockReply(200, chat_body(said))

    proxy = Proxy(make_config(), MockUpstream(echo), seed=1)
    raw = b'{"model": "m", "messages": [{"role": "user", "content": "hi"}]}'
    result, _ = await run(proxy, oc.parse_request(raw), raw)  # forwarded as it came: the bytes are cleaned
    assert SECRET_A.encode() not in result.outcome.payload.raw
    assert orjson.loads(result.outcome.payload.raw)["choices"][0]["message"]["content"] == "you sent Bearer [redacted]"
    result, _ = await run(proxy, request())
    assert result.outcome.payload.response.message.text() == "you sent Bearer [redacted]"
    result, _ = await run(proxy, request(stream=True))
    text = "".join(e.text for e in await drain(result.outcome.payload) if e.type == "text")
    assert text == "you sent Bearer [redacted]"


async def test_no_secret_reaches_the_client_through_an_upstream_error() -> None:
    # Any text of the error a provider sends can quote a key: the message, the param and the code;
    # in the forms a key takes in a URL or a JSON string too, and the client's and admin's keys.
    key = "up/OA+key=1111aaaa"
    config = parse_config({
        "gateway": {"api_keys": [{"key": "gw-client-key-01"}], "admin_keys": ["adm-admin-key-01"]},
        "channels": [{"name": "a", "type": "openai", "base_url": "http://a.test/v1", "api_keys": [key],
                      "models": ["m"]}],
        "routing": {"retry": {"max_attempts": 1}},
    })
    message = "bad request to https://x.test/v1?key=up%2FOA%2Bkey%3D1111aaaa from gw-client-key-01 adm-admin-key-01"
    up = MockUpstream(lambda r: MockReply(400, orjson.dumps({"error": {
        "message": message, "type": "invalid_request_error", "param": key, "code": f"{key}!"}})))
    proxy = Proxy(config, up, seed=1)
    result, _ = await run(proxy, request())
    err = result.error
    assert err.message == "bad request to https://x.test/v1?key=[redacted] from [redacted] [redacted]"
    assert (err.param, err.code) == ("[redacted]", "[redacted]!")


@pytest.mark.parametrize("kind, wrap", [
    ("openai", lambda m: {"error": {"message": m, "type": "invalid_request_error"}}),
    ("openai_responses", lambda m: {"error": {"message": m, "type": "invalid_request_error"}}),
    ("anthropic", lambda m: {"type": "error", "error": {"type": "invalid_request_error", "message": m}}),
    ("gemini", lambda m: {"error": {"code": 400, "message": m, "status": "INVALID_ARGUMENT"}}),
])
async def test_a_long_upstream_error_is_clipped_after_its_keys_are_masked(kind: str, wrap: Any) -> None:
    # A long message is clipped (a proxy's error page can be megabytes, kept once per attempt), but
    # only after every configured key is masked: a key cut at the clip would have been found by
    # neither half, and its first part reached the client and the store. Streamed or not, and with
    # a key the formats' own patterns do not know.
    key = "proj_Zq8Lr3Vw9Xn2Bt7Ym4KpQ"
    config = parse_config({"channels": [{"name": "a", "type": kind, "base_url": "http://a.test/v1", "api_keys": [key],
                                         "models": ["m"]}], "routing": {"retry": {"max_attempts": 1}}})
    message = "x" * 1975 + f" key={key} " + "y" * 5000  # the key straddles the 2,000th character
    for escaped in (False, True):  # JSON may spell a character of the key as \uXXXX
        body = orjson.dumps(wrap(message))
        if escaped:
            body = body.replace(b"Zq8L", b"\\u005Aq8L")
        up = MockUpstream(lambda r, body=body: MockReply(400, body))
        proxy = Proxy(config, up, seed=1)
        for stream in (False, True):
            result, _ = await run(proxy, request(stream=stream))
            err = result.error
            assert key[:6] not in err.message and "[redacted]" in err.message
            assert len(err.message) <= 2001 and err.message.startswith("x" * 1975)


def test_every_format_forwards_a_stream_request() -> None:
    # Anthropic, Gemini and Responses streams report usage unasked: their clients' bytes go as they came.
    for name in ("anthropic", "gemini", "openai_responses"):
        body = b'{"any": "thing"}'
        assert get_format(name).stream_passthrough(body) is body, name
    assert orjson.loads(oc.stream_passthrough(b'{"stream": true}')) == {"stream": True,
                                                                        "stream_options": {"include_usage": True}}


async def test_stream_fails_over_before_the_first_content_event() -> None:
    def handler(r: UpstreamRequest) -> MockReply:
        if host(r) == "a.test":
            # the role event arrives, then the connection drops: nothing was committed
            return MockReply(200, chunks=[ROLE, UpstreamConnectionError("reset")])
        return MockReply(200, chunks=good_stream("Hel", "lo"))

    up = MockUpstream(handler)
    proxy = Proxy(make_config(), up, seed=1)
    result, _ = await run(proxy, request(stream=True))
    assert result.ok
    assert [(a.channel, a.next) for a in result.attempts] == [("a", "retry"), ("a", "failover"), ("b", "done")]
    stream = result.outcome.payload
    assert isinstance(stream, LiveStream)
    assert [e.type for e in stream.pending] == ["start", "text"]  # buffered role + the committing event
    b = states(proxy)["b"]
    assert b.inflight == 1  # committed, not finished: the stream still runs
    events = await drain(stream)
    assert "".join(e.text for e in events if e.type == "text") == "Hello"
    assert [e.type for e in events][-2:] == ["finish", "usage"]
    assert b.inflight == 0 and b.failures == 0 and b.ewma_latency is not None
    assert stream.usage is not None and stream.usage.total_tokens == 5
    assert all(r.closed for r in up.responses)


async def test_error_after_commit_becomes_an_in_stream_error() -> None:
    up = MockUpstream(lambda r: MockReply(200, chunks=[ROLE, chunk({"content": "partial"}), 0.01,
                                                       UpstreamConnectionError("cut")]))
    proxy = Proxy(make_config(), up, seed=1)
    result, _ = await run(proxy, request(stream=True))
    assert result.ok and len(result.attempts) == 1
    events = await drain(result.outcome.payload)
    assert events[-1].type == "error"
    assert events[-1].error.kind is ErrorKind.CONNECTION
    a = states(proxy)["a"]
    assert a.inflight == 0 and a.failures == 1
    # the client format renders it as OpenAI's in-stream error object, without [DONE]
    renderer = oc.StreamRenderer(request(stream=True))
    out = b"".join(renderer.render(e) for e in events[:-1]) + renderer.error(events[-1].error)
    assert b'"error"' in out and b"[DONE]" not in out


async def test_upstream_error_event_before_commit_fails_over() -> None:
    def handler(r: UpstreamRequest) -> MockReply:
        if host(r) == "a.test":
            return MockReply(200, chunks=[ROLE, sse({"error": {"message": "overloaded", "type": "server_error"}})])
        return MockReply(200, chunks=good_stream("ok"))

    proxy = Proxy(make_config(), MockUpstream(handler), seed=1)
    result, _ = await run(proxy, request(stream=True))
    assert result.ok and result.attempts[-1].channel == "b"
    assert result.attempts[0].as_dict()["error"] == "server_error"


async def test_stream_http_error_fails_over() -> None:
    def handler(r: UpstreamRequest) -> MockReply:
        if host(r) == "a.test":
            return MockReply(503, error_body(503, "busy"))
        return MockReply(200, chunks=good_stream("ok"))

    proxy = Proxy(make_config(), MockUpstream(handler), seed=1)
    result, _ = await run(proxy, request(stream=True))
    assert result.ok
    assert [(a.channel, a.as_dict()["error"]) for a in result.attempts] == [("a", "overloaded"), ("a", "overloaded"), ("b", None)]


async def test_cancel_during_an_attempt_is_accounted() -> None:
    up = MockUpstream(lambda r: MockReply(200, chunks=[HANG]))
    proxy = Proxy(make_config(), up, seed=1)
    ex = Exchange(request(stream=True), None, oc)
    task = asyncio.create_task(proxy.driver.execute(ex))
    while not up.responses:
        await asyncio.sleep(0.001)
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    a = states(proxy)["a"]
    assert a.inflight == 0 and a.failures == 0  # cancelled by the client: not the channel's fault
    assert up.responses[0].cancelled and up.responses[0].closed
    recs = ex.attempt_records()
    assert [(r["channel"], r["status"], r["next"]) for r in recs] == [("a", 499, "cancelled")]


async def test_cancel_after_commit_is_accounted() -> None:
    up = MockUpstream(lambda r: MockReply(200, chunks=[ROLE, chunk({"content": "x"}), HANG]))
    proxy = Proxy(make_config(), up, seed=1)
    result, _ = await run(proxy, request(stream=True))
    stream = result.outcome.payload
    await cancel_drain(stream, after=0.02)
    a = states(proxy)["a"]
    assert a.inflight == 0 and a.failures == 0
    assert stream.done and up.responses[0].closed


def hedge_config() -> Any:
    cfg = make_config(hedge={"enabled": True, "delay": 0.05})
    # one priority group, so the hedge has another candidate to start
    for ch in cfg.channels:
        ch.priority = 0
    return parse_config(cfg.model_dump(mode="json"))


async def test_hedge_starts_a_second_attempt_and_cancels_the_loser() -> None:
    slow_first: list[str] = []

    async def handler(r: UpstreamRequest) -> MockReply:
        slow_first.append(host(r))
        if len(slow_first) == 1:
            await asyncio.sleep(5)  # the first pick hangs before any answer
        return MockReply(200, chat_body(f"from {host(r)}"))

    up = MockUpstream(handler)
    proxy = Proxy(hedge_config(), up, seed=3)
    result, ex = await run(proxy, request())
    assert result.ok
    winner, loser = slow_first[1], slow_first[0]
    assert result.outcome.payload.response.message.text() == f"from {winner}"
    nexts = sorted(a.next for a in result.attempts)
    assert nexts == ["done", "hedge_lost"]
    st = states(proxy)
    assert all(s.inflight == 0 for s in st.values())
    assert all(s.failures == 0 for s in st.values())  # losing a hedge says nothing about health
    assert all(t.done() for t in ex.launched)
    assert loser != winner


async def test_a_hedge_the_first_attempt_wins_is_recorded_as_its_answer() -> None:
    """The first attempt answers after the hedge started: it is the answer, recorded last (what the
    request's channel, cost and the store read), under its own number 1; the hedge is attempt 2."""
    seen: list[str] = []

    async def handler(r: UpstreamRequest) -> MockReply:
        seen.append(host(r))
        await asyncio.sleep(0.15 if len(seen) == 1 else 5)  # the first answers after the hedge began
        return MockReply(200, chat_body(f"from {host(r)}"))

    proxy = Proxy(hedge_config(), MockUpstream(handler), seed=3)
    result, _ = await run(proxy, request())
    assert result.ok and result.outcome.payload.response.message.text() == f"from {seen[0]}"
    last = result.attempts[-1]
    first = seen[0].split(".")[0]  # the channel of host a.test is a
    assert (last.n, last.channel, last.next) == (1, first, "done") and result.call.state.name == first
    assert [(a.n, a.next) for a in result.attempts[:-1]] == [(2, "hedge_lost")]


async def test_hedge_loser_that_committed_a_stream_is_closed() -> None:
    calls: list[str] = []

    async def handler(r: UpstreamRequest) -> MockReply:
        calls.append(host(r))
        if len(calls) == 1:
            # commits late, after the hedge started, and then would stream forever
            return MockReply(200, chunks=[0.2, ROLE, chunk({"content": "late"}), HANG])
        return MockReply(200, chunks=[ROLE, chunk({"content": "fast"}), *good_stream("!")[1:]])

    up = MockUpstream(handler)
    proxy = Proxy(hedge_config(), up, seed=3)
    result, ex = await run(proxy, request(stream=True))
    assert result.ok
    events = await drain(result.outcome.payload)
    assert "".join(e.text for e in events if e.type == "text").startswith("fast")
    await asyncio.sleep(0.3)  # past the loser's late commit
    st = states(proxy)
    assert all(s.inflight == 0 for s in st.values())
    assert all(r.closed for r in up.responses)


@pytest.mark.parametrize("family, body", [
    ("openai_chat", {"error": {"message": "the upstream said no", "type": "invalid_request_error"}}),
    ("anthropic", {"type": "error", "error": {"type": "invalid_request_error", "message": "the upstream said no"}}),
    ("gemini", {"error": {"code": 400, "message": "the upstream said no", "status": "INVALID_ARGUMENT"}}),
    ("openai_responses", {"error": {"message": "the upstream said no", "type": "invalid_request_error"}}),
])
def test_every_family_reads_a_200_error_body_as_the_providers_words(family: str, body: dict[str, Any]) -> None:
    from axonsim.formats import UpstreamErrorBody, get_format

    fmt = get_format(family)
    for read in (fmt.parse_response, fmt.response_usage):
        with pytest.raises(UpstreamErrorBody) as e:
            read(orjson.dumps(body))
        assert "the upstream said no" in e.value.message and e.value.status == 502


async def test_the_requests_deadline_is_handed_to_each_attempt() -> None:
    # routing.retry.deadline bounds a running attempt too (the upstream gets the time left as `within`).
    up = MockUpstream(lambda r: MockReply(200, chat_body()))
    result, _ = await run(Proxy(make_config(retry={"deadline": 5.0}), up, seed=1), request())
    assert result.ok and up.requests[0].within is not None and 4.0 < up.requests[0].within <= 5.0
    up = MockUpstream(lambda r: MockReply(200, chat_body()))
    result, _ = await run(Proxy(make_config(), up, seed=1), request())
    assert result.ok and up.requests[0].within is None


@pytest.mark.parametrize("script", [
    [ROLE, chunk({"content": "Hi"}), chunk({}, "stop"), USAGE, DONE, HANG],  # committed, then [DONE]
    [ROLE, chunk({}, "stop"), USAGE, DONE, HANG],  # an empty answer: [DONE] before any content
])
async def test_a_stream_ends_at_its_terminal_event_though_the_connection_stays_open(script: list[Any]) -> None:
    up = MockUpstream(lambda r: MockReply(200, chunks=script))
    proxy = Proxy(make_config(), up, seed=1)
    result, _ = await run(proxy, request(stream=True))
    stream = result.outcome.payload
    events = await asyncio.wait_for(drain(stream), 2)  # not left waiting for a close that never comes
    assert events[-1].type == "usage" and stream.error is None and stream.usage.completion_tokens == 2
    a = states(proxy)["a"]
    assert a.failures == 0 and a.inflight == 0 and up.responses[0].closed
    # a body that does end after the terminal event is read to its end (its connection is pooled)
    up = MockUpstream(lambda r: MockReply(200, chunks=[c for c in script if c is not HANG]))
    result, _ = await run(Proxy(make_config(), up, seed=1), request(stream=True))
    await drain(result.outcome.payload)
    await up.responses[0].finishing
    assert up.responses[0].finished
    # the client's end does not wait for an upstream that holds its body open after the terminal event
    up = MockUpstream(lambda r: MockReply(200, chunks=[c for c in script if c is not HANG] + [0.9]))
    result, _ = await run(Proxy(make_config(), up, seed=1), request(stream=True))
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    await drain(result.outcome.payload)
    assert loop.time() - t0 < 0.5


async def test_a_gemini_stream_that_finished_and_then_stalls_is_complete() -> None:
    # Gemini has no terminal event: after a finishReason the stream is whole, and a deadline passing
    # while the upstream keeps the connection open is its end, not a failure of the channel; so is a
    # connection the upstream breaks then (review: it was a failed answer and a failure charged).
    config = parse_config({"channels": [{"name": "g", "type": "gemini", "base_url": "http://g.test/v1beta",
                                         "api_keys": ["gem-key-0001"], "models": ["m"]}]})
    done = sse({"candidates": [{"content": {"parts": [{"text": "Hi"}], "role": "model"}, "finishReason": "STOP",
                                "index": 0}],
                "usageMetadata": {"promptTokenCount": 3, "candidatesTokenCount": 1, "totalTokenCount": 4}})
    for script in ([done, UpstreamTimeout("idle")], [sse({"candidates": [{"content": {"parts": [{"text": "H"}]}}]}),
                                                      done.replace(b'"Hi"', b'"i"'), UpstreamTimeout("idle")],
                   [done, UpstreamConnectionError("reset")],
                   [done, b'data: {"candidates":[{"content":{"parts":[{"te', UpstreamConnectionError("reset")]):
        up = MockUpstream(lambda r, script=script: MockReply(200, chunks=script))
        proxy = Proxy(config, up, seed=1)
        result, _ = await run(proxy, request(stream=True))
        stream = result.outcome.payload
        events = await drain(stream)
        assert "".join(e.text for e in events if e.type == "text") == "Hi"
        assert stream.error is None and stream.usage.completion_tokens == 1
        assert states(proxy)["g"].failures == 0
    # Before the finish, the same deadline is the channel's failure, as before.
    up = MockUpstream(lambda r: MockReply(200, chunks=[sse({"candidates": [{"content": {"parts": [{"text": "Hi"}]},
                                                                             "index": 0}]}), UpstreamTimeout("idle")]))
    proxy = Proxy(config, up, seed=1)
    result, _ = await run(proxy, request(stream=True))
    await drain(result.outcome.payload)
    assert result.outcome.payload.error.kind == ErrorKind.TIMEOUT and states(proxy)["g"].failures == 1


async def test_the_first_token_deadline_lasts_until_content_comes() -> None:
    # Role-only chunks and keep-alive comments are not the first token: the driver tells the
    # response when content began (its commit), and only then does `idle` take over.
    script = [ROLE, b": ping\n\n", b": ping\n\n", chunk({"content": "Hi"}), chunk({}, "stop"), USAGE, DONE]
    up = MockUpstream(lambda r: MockReply(200, chunks=script))
    result, _ = await run(Proxy(make_config(), up, seed=1), request(stream=True))
    assert result.ok and up.responses[0].began_at == 3  # the content chunk read, three still to come
    await drain(result.outcome.payload)


async def test_a_stream_cut_after_its_usage_came_keeps_that_usage() -> None:
    # OpenAI sends usage in its last chunk and the parser emits it at [DONE]; Gemini's is cumulative
    # on every chunk. A stream cut before its end still cost what the upstream had reported.
    cut = UpstreamConnectionError("reset")
    up = MockUpstream(lambda r: MockReply(200, chunks=[ROLE, chunk({"content": "Hi"}), chunk({}, "stop"), USAGE, cut]))
    result, _ = await run(Proxy(make_config(), up, seed=1), request(stream=True))
    stream = result.outcome.payload
    await drain(stream)
    assert stream.error is not None and stream.usage is not None and stream.usage.completion_tokens == 2
    config = parse_config({"channels": [{"name": "g", "type": "gemini", "base_url": "http://g.test/v1beta",
                                         "api_keys": ["gem-key-0001"], "models": ["m"]}]})
    part = sse({"candidates": [{"content": {"parts": [{"text": "Hi"}]}, "index": 0}],
                "usageMetadata": {"promptTokenCount": 9, "candidatesTokenCount": 3, "totalTokenCount": 12}})
    up = MockUpstream(lambda r: MockReply(200, chunks=[part, cut]))
    result, _ = await run(Proxy(config, up, seed=1), request(stream=True))
    stream = result.outcome.payload
    await drain(stream)
    assert stream.error is not None and (stream.usage.prompt_tokens, stream.usage.completion_tokens) == (9, 3)


async def test_a_json_error_body_where_a_stream_was_asked_for_keeps_the_providers_words() -> None:
    said = error_body(400, "the upstream said no")
    up = MockUpstream(lambda r: MockReply(200, said, headers={"Content-Type": "application/json"}))
    result, _ = await run(Proxy(make_config(), up, seed=1), request(stream=True))
    assert not result.ok and all(a.status == 502 for a in result.attempts)
    assert "the upstream said no" in result.error.message
    # a body labelled JSON that is no error is read as the stream all the same
    config = parse_config({"channels": [{"name": "g", "type": "gemini", "base_url": "http://g.test/v1beta",
                                         "api_keys": ["gem-key-0001"], "models": ["m"]}]})
    array = orjson.dumps([{"candidates": [{"content": {"parts": [{"text": "Hi"}], "role": "model"},
                                           "finishReason": "STOP", "index": 0}]}])
    up = MockUpstream(lambda r: MockReply(200, b"data: " + array + b"\n\n", headers={"content-type": "application/json"}))
    result, _ = await run(Proxy(config, up, seed=1), request(stream=True))
    assert result.ok and "".join(e.text for e in await drain(result.outcome.payload) if e.type == "text") == "Hi"


def _limited_config(**routing: Any) -> Any:
    return parse_config({
        "channels": [{"name": n, "type": "openai", "base_url": f"http://{n}.test/v1", "api_keys": [f"key-{n}-000001"],
                      "models": ["m"], "limits": {"max_concurrency": 1}} for n in ("a", "b")],
        "routing": {"strategy": "round_robin", **routing},
    })


class _Counting:
    """A MockUpstream handler that measures how many calls each host has at once."""

    def __init__(self, fail: str = "") -> None:
        self.now: dict[str, int] = {}
        self.peak: dict[str, int] = {}
        self.fail = fail  # a marker in a request's body that makes host a answer 500

    async def __call__(self, r: UpstreamRequest) -> MockReply:
        h = host(r)
        self.now[h] = self.now.get(h, 0) + 1
        self.peak[h] = max(self.peak.get(h, 0), self.now[h])
        try:
            if self.fail and self.fail.encode() in r.body and h == "a.test":
                return MockReply(500, error_body(500, "boom"))
            await asyncio.sleep(0.3)
            return MockReply(200, chat_body())
        finally:
            self.now[h] -= 1


async def test_hedged_attempts_count_against_limits_from_their_launch() -> None:
    # With hedging on, the first attempt is launched as a task; it must hold its channel's slot from
    # the pick, not from when the task first runs (concurrent picks saw the channel free: 10 calls
    # at once on a channel limited to 3).
    counting = _Counting()
    proxy = Proxy(_limited_config(hedge={"enabled": True, "delay": 5.0}), MockUpstream(counting), seed=1)
    results = await asyncio.gather(*(run(proxy, request()) for _ in range(6)))
    assert max(counting.peak.values()) == 1
    assert sum(r.ok for r, _ in results) == 2 and all(r.error.status == 429 for r, _ in results if not r.ok)
    assert all(s.inflight == 0 for s in proxy.router.states)


async def test_a_retry_on_the_same_channel_waits_its_turn_at_the_limits() -> None:
    # X fails on a and would retry there after its backoff; meanwhile Y took a's only slot: X's
    # retry must go elsewhere, not make a second call on a.
    counting = _Counting(fail="request-x")
    proxy = Proxy(_limited_config(retry={"max_same_channel": 3, "backoff": {"base": 0.1, "cap": 0.1, "jitter": 0}}),
                  MockUpstream(counting), seed=1)
    x = Request(model="m", messages=[Message(role="user", content=[TextPart(text="request-x")])])

    async def later() -> Any:
        await asyncio.sleep(0.05)
        proxy.router.by_name["b"].last_pick = 10**12  # round robin: Y goes to a
        return await run(proxy, request())

    (rx, _), (ry, _) = await asyncio.gather(run(proxy, x), later())
    assert counting.peak["a.test"] == 1
    assert [(a.channel, a.next) for a in rx.attempts] == [("a", "failover"), ("b", "done")]
    assert ry.ok and [a.channel for a in ry.attempts] == ["a"]


async def test_an_attempt_launched_and_cancelled_before_it_ran_leaves_no_slot_taken() -> None:
    proxy = Proxy(_limited_config(), MockUpstream(lambda r: MockReply(200, chat_body())), seed=1)
    st = proxy.router.by_name["a"]
    call = proxy.router._call(st, "m", 0, 1, None, 0, None, None)
    ex = Exchange(request(), None, oc)
    handle = proxy.driver._launch(call, ex)
    assert st.inflight == 1  # started at the launch
    ex.launched[handle].cancel()  # before the task ever ran (the client left at once)
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert ex.launched[handle].cancelled() and st.inflight == 0


async def test_a_hedged_embeddings_attempt_starts_its_call_once() -> None:
    # The embeddings driver's attempt is its own: launched for a hedge, it must not start its call a
    # second time (the channel's in-flight count would never come back to 0).
    from server.embeddings import EmbeddingsDriver, EmbedExchange, parse_openai_request

    answer = orjson.dumps({"object": "list", "model": "m", "data": [{"object": "embedding", "index": 0,
                                                                    "embedding": [0.5, 0.5]}],
                           "usage": {"prompt_tokens": 2, "total_tokens": 2}})
    config = _limited_config(hedge={"enabled": True, "delay": 5.0})
    proxy = Proxy(config, MockUpstream(lambda r: MockReply(200, answer)), seed=1)
    body = b'{"model": "m", "input": "hello"}'
    req = parse_openai_request(body)
    result = await EmbeddingsDriver.of(proxy.driver).execute(EmbedExchange(req, body), req.estimated_tokens())
    assert result.ok and all(s.inflight == 0 for s in proxy.router.states)
    assert sum(s.requests for s in proxy.router.states) == 1  # one call started, once


async def test_time_waiting_on_the_upstream_is_waited_also_when_the_wait_fails_or_is_cancelled() -> None:
    """The gateway overhead is the total minus the time waiting on upstreams: a read that ends in the
    upstream cutting the stream, or in the client leaving, was waiting all the same."""
    up = MockUpstream(lambda r: MockReply(200, chunks=[ROLE, chunk({"content": "x"}), 0.2,
                                                       UpstreamConnectionError("cut")]))
    result, _ = await run(Proxy(make_config(), up, seed=1), request(stream=True))
    stream = result.outcome.payload
    events = await drain(stream)
    assert events[-1].type == "error" and stream.waited >= 0.2

    up = MockUpstream(lambda r: MockReply(200, chunks=[ROLE, chunk({"content": "x"}), HANG]))
    result, _ = await run(Proxy(make_config(), up, seed=1), request(stream=True))
    stream = result.outcome.payload
    await cancel_drain(stream, after=0.2)
    assert stream.waited >= 0.2


def _usage_body(completion: int) -> bytes:
    body = orjson.loads(chat_body())
    body["usage"] = {"prompt_tokens": 10, "completion_tokens": completion, "total_tokens": 10 + completion}
    return orjson.dumps(body)


@pytest.mark.parametrize("limit", [{"limits": {"tpm": 1000}}, {"api_keys": [{"key": "key-a-000001",
                                                                             "limits": {"tpm": 1000}}]},
                                   {"quota": {"tokens": 1000, "period": 3600}}])
async def test_tpm_limits_and_quotas_count_the_tokens_an_answer_used(limit: dict[str, Any]) -> None:
    """A client that sets no max_tokens is estimated at its prompt alone; what the answer used, its
    usage says, and a local TPM limit (channel or key) or a token quota counts that: a channel that
    has served 1,200 tokens against a limit of 1,000 takes no more until its window moves on."""
    cfg = parse_config({
        "channels": [{"name": "a", "type": "openai", "base_url": "http://a.test/v1", "api_keys": ["key-a-000001"],
                      "models": ["m"], **limit},
                     {"name": "b", "type": "openai", "base_url": "http://b.test/v1", "api_keys": ["key-b-000001"],
                      "models": ["m"], "priority": 1}],
        "routing": {"strategy": "round_robin"},
    })
    up = MockUpstream(lambda r: MockReply(200, _usage_body(600)))
    proxy = Proxy(cfg, up, seed=1)
    for _ in range(2):
        result, _ = await run(proxy, request())
        assert result.ok and result.attempts[-1].channel == "a"
    result, _ = await run(proxy, request())
    assert result.ok and [a.channel for a in result.attempts] == ["b"]  # a is at its limit: its backup serves
    # a streamed answer reports its usage at its end: counted then
    big = sse({"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "m", "choices": [],
               "usage": {"prompt_tokens": 10, "completion_tokens": 600, "total_tokens": 610}})
    up.handler = lambda r: MockReply(200, chunks=[ROLE, chunk({"content": "hi"}), chunk({}, "stop"), big, DONE])
    proxy = Proxy(cfg, up, seed=1)
    served = []
    for _ in range(3):
        result, _ = await run(proxy, request(stream=True))
        await drain(result.outcome.payload)
        served.append(result.attempts[-1].channel)
    assert served == ["a", "a", "b"]
