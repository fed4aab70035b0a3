"""The mock provider: a channel's behaviour model acted out over real HTTP (content, pacing, faults, limits)."""

from __future__ import annotations

import concurrent.futures
import importlib.util
import socket
import time
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest

from axonsim.config import Channel
from server.mock_provider import MockProvider, MockServer
from server.testing import Stack

pytestmark = pytest.mark.timeout(60)

KEY = "sk-mock-upstream"
AUTH = {"Authorization": f"Bearer {KEY}"}


def channel(behavior: dict[str, Any] | None = None, **kw: Any) -> Channel:
    b = {"ttft": 0.01, "tokens_per_second": 5000, "output_tokens": 25, **(behavior or {})}
    return Channel.model_validate({"name": "mock", "type": "openai", "api_keys": [KEY], "models": ["m"],
                                   "behavior": b, **kw})


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    with Stack() as st:
        yield st


def post(m: MockServer, body: dict[str, Any] | None = None, timeout: float = 10, headers: dict[str, str] | None = None,
         **extra: Any) -> httpx.Response:
    payload = body or {"model": "m", "messages": [{"role": "user", "content": "Hello, how are you today?"}], **extra}
    return httpx.post(m.base_url + "/chat/completions", json=payload, headers=AUTH if headers is None else headers,
                      timeout=timeout)


def data_lines(text: str) -> list[str]:
    return [line[6:] for line in text.split("\n") if line.startswith("data: ")]


def test_non_stream_answer_with_consistent_usage(stack: Stack) -> None:
    m = stack.mock(channel())
    r = post(m)
    assert r.status_code == 200
    body = r.json()
    text = body["choices"][0]["message"]["content"]
    assert len(text.split()) == 25 == body["usage"]["completion_tokens"]
    assert body["usage"]["prompt_tokens"] == 7  # 25 characters, about 4 per token
    assert body["usage"]["total_tokens"] == 32 and body["model"] == "m"
    assert m.provider.stats["ok"] == 1


def test_stream_batches_tokens_and_counts_them(stack: Stack) -> None:
    m = stack.mock(channel({"output_tokens": 5000, "tokens_per_second": 1_000_000}))
    r = post(m, stream=True, stream_options={"include_usage": True})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = data_lines(r.text)
    assert events[-1] == "[DONE]"
    chunks = [orjson.loads(e) for e in events[:-1]]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert len(text.split()) == 5000 == chunks[-1]["usage"]["completion_tokens"]
    # several tokens per event: at most max_events content events, however long the answer
    assert len(chunks) <= m.provider.max_events + 3


def test_stream_is_paced(stack: Stack) -> None:
    m = stack.mock(channel({"ttft": 0.15, "output_tokens": 20, "tokens_per_second": 100}))
    t0 = time.monotonic()
    first = None
    with httpx.stream("POST", m.base_url + "/chat/completions", headers=AUTH, timeout=10,
                      json={"model": "m", "stream": True, "messages": [{"role": "user", "content": "hi"}]}) as r:
        for _ in r.iter_raw():
            if first is None:
                first = time.monotonic() - t0
    total = time.monotonic() - t0
    assert first is not None and first >= 0.15  # time to first token
    assert total >= 0.15 + 20 / 100 - 0.02  # plus the generation time at tokens_per_second


def test_max_tokens_truncates_with_length(stack: Stack) -> None:
    m = stack.mock(channel())
    body = post(m, max_tokens=5).json()
    assert body["choices"][0]["finish_reason"] == "length" and body["usage"]["completion_tokens"] == 5


@pytest.mark.parametrize(("behavior", "status", "etype"), [
    ({"error_rate": 1.0}, 500, "server_error"),
    ({"error_rate": 1.0, "error_status": 502}, 502, "server_error"),
    ({"faults": {"overloaded": 1.0}}, 503, "server_error"),
])
def test_http_faults_in_the_family_error_shape(stack: Stack, behavior: dict[str, Any], status: int,
                                               etype: str) -> None:
    m = stack.mock(channel(behavior))
    r = post(m)
    assert r.status_code == status
    assert r.json()["error"]["type"] == etype


def test_rate_limited_with_retry_after(stack: Stack) -> None:
    m = stack.mock(channel({"faults": {"rate_limited": 1.0, "retry_after": 4}}))
    r = post(m)
    assert r.status_code == 429 and r.headers["retry-after"] == "4"
    assert r.json()["error"]["type"] == "rate_limit_exceeded"


def test_reset_is_a_real_tcp_reset(stack: Stack) -> None:
    m = stack.mock(channel({"faults": {"reset": 1.0}}))
    body = b'{"model":"m","messages":[{"role":"user","content":"hi"}]}'
    req = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
           b"Authorization: Bearer " + KEY.encode() + b"\r\nContent-Length: " + str(len(body)).encode()
           + b"\r\n\r\n" + body)
    with socket.create_connection((m.host, m.port), timeout=5) as s:
        s.sendall(req)
        with pytest.raises(ConnectionResetError):
            data = s.recv(65536)
            assert data == b"", "an HTTP answer came back"  # a FIN instead of a RST also fails
            raise AssertionError("closed without a reset")
    assert m.provider.stats["reset"] == 1


def test_stream_cut_stops_half_way_without_the_terminal_event(stack: Stack) -> None:
    m = stack.mock(channel({"faults": {"stream_cut": 1.0}, "output_tokens": 40, "tokens_per_second": 4000}))
    got = b""
    with pytest.raises(httpx.HTTPError):
        with httpx.stream("POST", m.base_url + "/chat/completions", headers=AUTH, timeout=10,
                          json={"model": "m", "stream": True, "messages": [{"role": "user", "content": "hi"}]}) as r:
            for piece in r.iter_raw():
                got += piece
    text = got.decode()
    assert "[DONE]" not in text and '"finish_reason":"stop"' not in text
    words = "".join(orjson.loads(d)["choices"][0]["delta"].get("content") or "" for d in data_lines(text))
    assert len(words.split()) == 20


def test_timeout_fault_hangs_until_the_client_gives_up(stack: Stack) -> None:
    m = stack.mock(channel({"faults": {"timeout": 1.0}}))
    with pytest.raises(httpx.ReadTimeout):
        post(m, timeout=0.3)
    deadline = time.monotonic() + 5
    while m.provider.stats["cancelled"] < 1:  # the handler was cancelled when the client left
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert m.provider.inflight == 0


def test_max_concurrency_reject(stack: Stack) -> None:
    m = stack.mock(channel({"ttft": 0.4, "max_concurrency": 1, "when_full": "reject"}))
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        first = pool.submit(post, m)
        time.sleep(0.1)
        second = pool.submit(post, m)
        statuses = sorted([first.result().status_code, second.result().status_code])
    assert statuses == [200, 503]
    assert m.provider.stats["full"] == 1


def test_max_concurrency_queue(stack: Stack) -> None:
    m = stack.mock(channel({"ttft": 0.3, "max_concurrency": 1, "when_full": "queue"}))
    t0 = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        futs = [pool.submit(post, m) for _ in range(2)]
        assert [f.result().status_code for f in futs] == [200, 200]
    assert time.monotonic() - t0 >= 0.6  # served one after the other


def test_auth_and_model_checks(stack: Stack) -> None:
    m = stack.mock(channel())
    assert post(m, headers={}).status_code == 401
    r = post(m, headers={"Authorization": "Bearer nope"})
    assert r.status_code == 401 and "nope" not in r.text  # a provider that does not echo keys
    r = post(m, {"model": "other", "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 404 and r.json()["error"]["param"] == "model"
    r = httpx.post(m.base_url + "/chat/completions", content=b"{", headers=AUTH)
    assert r.status_code == 400


def test_same_seed_same_plans(stack: Stack) -> None:
    def statuses(seed: int) -> list[int]:
        m = stack.mock(MockProvider(channel({"error_rate": 0.5}), seed=seed))
        return [post(m).status_code for _ in range(12)]

    a, b = statuses(7), statuses(7)
    assert a == b and 500 in a and 200 in a


@pytest.mark.skipif(importlib.util.find_spec("axonsim.formats.anthropic") is None, reason="no anthropic format yet")
def test_serves_other_families_by_path(stack: Stack) -> None:
    m = stack.mock(channel())
    r = httpx.post(f"http://{m.host}:{m.port}/v1/messages", headers={"x-api-key": KEY, "anthropic-version": "2023-06-01"},
                   json={"model": "m", "max_tokens": 100, "messages": [{"role": "user", "content": "hi"}]}, timeout=10)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["type"] == "message" and body["usage"]["output_tokens"] == 25


def test_an_embedding_larger_than_any_provider_makes_is_refused(stack: Stack) -> None:
    """As a real provider refuses it, in its family's shape: an unbounded size had the mock (inside the
    demo gateway's own process) build answers of any size."""
    m = stack.mock(channel())
    base = f"http://{m.host}:{m.port}"
    r = httpx.post(base + "/v1/embeddings", headers=AUTH, json={"model": "m", "input": "x", "dimensions": 3_000_000},
                   timeout=10)
    assert r.status_code == 400 and r.json()["error"]["param"] == "dimensions", r.text
    r = httpx.post(base + "/v1beta/models/m:embedContent", headers={"x-goog-api-key": KEY},
                   json={"content": {"parts": [{"text": "x"}]}, "outputDimensionality": 10**12}, timeout=10)
    assert r.status_code == 400 and r.json()["error"]["status"] == "INVALID_ARGUMENT", r.text
    r = httpx.post(base + "/v1/embeddings", headers=AUTH, json={"model": "m", "input": "x", "dimensions": 256},
                   timeout=10)
    assert r.status_code == 200 and len(r.json()["data"][0]["embedding"]) == 256
