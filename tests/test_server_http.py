"""The running gateway over real HTTP on loopback, against mock providers: bad input, failures, streams, disconnects, secrets."""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import httpx
import orjson
import pytest

from server.proxy import Proxy
from server.testing import GatewayServer, Stack
from server.upstream import MockReply, MockUpstream

pytestmark = pytest.mark.timeout(60)

GW_KEY = "sk-gw-test"
AUTH = {"Authorization": f"Bearer {GW_KEY}"}
FAST = {"ttft": 0.01, "tokens_per_second": 2000, "output_tokens": 20}
SHORT = {"connect": 1, "first_token": 0.3, "idle": 0.3, "total": 0.3}


def secret(name: str) -> str:
    return f"upstream-secret-{name}-7f3a9c"  # no "sk-" prefix: only the gateway's own scrubber can catch it


def ch(name: str, model: str, behavior: dict[str, Any] | None = None, **kw: Any) -> dict[str, Any]:
    return {"name": name, "type": "openai", "api_keys": [secret(name)], "models": [model],
            "behavior": {**FAST, **(behavior or {})}, **kw}


CHANNELS = [
    ch("good", "ok-model", model_mapping={"alias": "ok-model"}),
    ch("colon", "llama3:8b"),  # Ollama-style: a colon in the model name
    ch("slash", "vendor/model-x"),  # a slash in the model name, as routing names often have
    ch("slash-gemini", "vendor/gem-x", type="gemini"),  # ... and on a Gemini channel's own paths
    ch("err500", "m500", {"error_rate": 1.0}),
    ch("err429", "m429", {"faults": {"rate_limited": 1.0, "retry_after": 3}}),
    ch("err503", "m503", {"faults": {"overloaded": 1.0}}),
    ch("reset", "mreset", {"faults": {"reset": 1.0}}),
    ch("hang", "mhang", {"faults": {"timeout": 1.0}}, timeouts=SHORT),
    ch("cut", "mcut", {"faults": {"stream_cut": 1.0}, "output_tokens": 40, "tokens_per_second": 400}),
    ch("slow", "slow", {"ttft": 0.02, "tokens_per_second": 20, "output_tokens": 400}),
    ch("flaky", "fo", {"error_rate": 1.0}, priority=0),
    ch("steady", "fo", priority=1),
    ch("leaky", "mleak"),
    # one token every 0.5 s against an idle timeout of 0.2 s: the stream stalls after its commit
    ch("stall", "mstall", {"tokens_per_second": 2, "output_tokens": 10},
       timeouts={"connect": 1, "first_token": 2, "idle": 0.2, "total": 10}),
]


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    with Stack() as st:
        # Breakers and auto-disable off: these channels fail on purpose, and every test wants to
        # see the attempt reach its upstream (their own behaviour is the core's tests' business).
        st.serve(CHANNELS, routing={"retry": {"backoff": {"base": 0.001, "cap": 0.01}},
                                    "health": {"breaker": {"enabled": False}, "key_breaker": {"enabled": False},
                                               "auto_disable": []}},
                 # the leaky channel's provider rejects the gateway's key and quotes it back
                 mock_kw={"leaky": {"accept_keys": ["something-else"], "leak_keys": True}})
        yield st


@pytest.fixture(scope="module")
def gw(stack: Stack) -> GatewayServer:
    return stack.gateways[0]


@pytest.fixture(scope="module")
def client(gw: GatewayServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gw.url, timeout=20) as c:
        yield c


def chat(client: httpx.Client, model: str = "ok-model", stream: bool = False, headers: dict[str, str] | None = None,
         **extra: Any) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": "Hello there"}], "stream": stream, **extra}
    return client.post("/v1/chat/completions", json=body, headers=AUTH if headers is None else headers)


def record(gw: GatewayServer, resp: httpx.Response) -> dict[str, Any]:
    rid = resp.headers["x-request-id"]
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        rec = gw.proxy.find(rid)
        if rec is not None:
            return rec
        time.sleep(0.01)
    raise AssertionError(f"no record for {rid}")


def openai_error(resp: httpx.Response) -> dict[str, Any]:
    body = resp.json()
    assert set(body) == {"error"}, body
    assert {"message", "type", "param", "code"} <= set(body["error"])
    return body["error"]


def sse_events(text: str) -> list[str]:
    return [line[6:] for line in text.split("\n") if line.startswith("data: ")]


# -- health, models, routing ------------------------------------------------------------------------


def test_health(client: httpx.Client) -> None:
    r = client.get("/health")
    assert r.status_code == 200 and r.json() == {"status": "ok"}


def test_openapi_lists_the_client_api(client: httpx.Client) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    assert "stream" in paths["/v1/chat/completions"]["post"]["summary"]
    assert "stream" not in paths["/v1/embeddings"]["post"]["summary"]  # embeddings do not stream
    for method in ("generateContent", "streamGenerateContent", "embedContent", "batchEmbedContents"):
        assert paths[f"/v1beta/models/{{model}}:{method}"]["post"]["summary"].startswith("Client API, Gemini")
    # FastAPI's 422 is never sent: no operation documents it (the admin API's are checked in test_admin)
    assert [(p, m) for p, ops in paths.items() for m, op in ops.items() if "422" in op.get("responses", {})] == []


def test_models_list_needs_the_key(client: httpx.Client) -> None:
    assert client.get("/v1/models").status_code == 401
    r = client.get("/v1/models", headers=AUTH)
    assert r.status_code == 200
    body = r.json()
    assert body["object"] == "list"
    ids = [m["id"] for m in body["data"]]
    assert "ok-model" in ids and "alias" in ids and all(m["object"] == "model" for m in body["data"])


def test_unknown_path_is_an_openai_shaped_404(client: httpx.Client) -> None:
    r = client.post("/v1/nothing-here", json={}, headers=AUTH)
    assert r.status_code == 404
    openai_error(r)


def test_a_trailing_slash_is_served_as_without_it(client: httpx.Client) -> None:
    r = client.post("/v1/chat/completions/", json={"model": "ok-model", "messages": [{"role": "user", "content": "hi"}]},
                    headers=AUTH)
    assert r.status_code == 200 and r.json()["object"] == "chat.completion", r.text


@pytest.mark.parametrize(("method", "path", "status", "family"), [
    ("GET", "/v1/messages", 405, "anthropic"),
    ("POST", "/v1/messages/count_tokens", 404, "anthropic"),
    ("DELETE", "/anthropic/v1/messages", 405, "anthropic"),
    ("POST", "/v1beta/models/ok-model:countTokens", 404, "gemini"),  # an unknown method, not a 405
    ("PUT", "/v1beta/models/ok-model:generateContent", 405, "gemini"),
    ("GET", "/v1/chat/completions", 405, "openai"),
    ("POST", "/v1/models/gemini-x:countTokens", 404, "gemini"),
    ("DELETE", "/v1/models/ft:gpt-4o-mini:acme::abc", 405, "openai"),  # an OpenAI fine-tuned model id
    ("POST", "/v1/models/ft:gpt-4o-mini:acme::abc", 405, "openai"),
    # anything under Gemini's own prefixes is Gemini's, served or not
    ("GET", "/v1beta/cachedContents", 404, "gemini"),
    ("POST", "/v1beta/files", 404, "gemini"),
    ("GET", "/gemini/v1beta/files", 404, "gemini"),
    ("POST", "/v1beta/tunedModels/x:generateContent", 404, "gemini"),
    ("POST", "/v1beta/models/ok-model:generateContent/", 404, "gemini"),
])
def test_unserved_routes_answer_in_their_familys_shape(client: httpx.Client, method: str, path: str, status: int,
                                                       family: str) -> None:
    r = client.request(method, path, json={}, headers=AUTH)
    assert r.status_code == status, r.text
    if status == 405:  # HTTP requires a 405 to name the methods the path does serve
        allowed = {m.strip() for m in r.headers.get("allow", "").split(",") if m.strip()}
        assert allowed and method not in allowed, r.headers
        if family == "gemini":  # a model method: POST is what it serves, not the model-info GET
            assert allowed == {"POST"}, r.headers
    body = r.json()
    if family == "anthropic":
        assert body["type"] == "error" and body["error"]["message"] and body["error"]["type"]
    elif family == "gemini":
        assert body["error"]["code"] == status and body["error"]["status"] and body["error"]["message"]
    else:
        openai_error(r)


@pytest.mark.parametrize("prefix", ["/v1beta", "/v1", "/gemini/v1beta"])
def test_a_model_whose_name_holds_a_colon_is_served_on_gemini_paths(client: httpx.Client, gw: GatewayServer,
                                                                    prefix: str) -> None:
    body = {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}
    r = client.post(f"{prefix}/models/llama3:8b:generateContent", json=body, headers=AUTH)
    assert r.status_code == 200 and r.json()["candidates"][0]["content"]["parts"], r.text
    assert record(gw, r)["model"] == "llama3:8b"
    r = client.post(f"{prefix}/models/nope:x:generateContent", json=body, headers=AUTH)  # not served: Gemini's 404
    assert r.status_code == 404 and r.json()["error"]["status"] == "NOT_FOUND" and record(gw, r)["status"] == 404


@pytest.mark.parametrize("prefix", ["/v1beta", "/v1", "/gemini/v1beta"])
@pytest.mark.parametrize("method", ["generateContent", "streamGenerateContent?alt=sse"])
def test_a_model_whose_name_holds_a_slash_is_served_on_gemini_paths(client: httpx.Client, gw: GatewayServer,
                                                                    prefix: str, method: str) -> None:
    # GET .../models/vendor/model-x finds it (models_api), so calling it must work too
    assert client.get(f"{prefix}/models/vendor/model-x", headers=AUTH).status_code == 200
    body = {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}
    r = client.post(f"{prefix}/models/vendor/model-x:{method}", json=body, headers=AUTH)
    assert r.status_code == 200 and "candidates" in r.text, r.text
    assert record(gw, r)["model"] == "vendor/model-x"
    r = client.post(f"{prefix}/models/vendor/gem-x:{method}", json=body, headers=AUTH)  # a Gemini channel
    assert r.status_code == 200 and "candidates" in r.text, r.text
    assert record(gw, r)["channels"] == ["slash-gemini"]


# -- success -----------------------------------------------------------------------------------------


def test_non_stream_answer_and_headers(client: httpx.Client, gw: GatewayServer) -> None:
    r = chat(client)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "chat.completion"
    assert body["choices"][0]["message"]["content"].startswith("The quick brown fox")
    assert body["usage"]["completion_tokens"] == 20
    assert r.headers["x-axonsim-attempts"] == "1"
    assert r.headers["x-request-id"].startswith("req_")
    rec = record(gw, r)
    assert rec["status"] == 200 and rec["channels"] == ["good"] and rec["model"] == "ok-model"
    assert rec["attempts"][0]["key"] == "good#0"  # the key's name, never its value
    assert rec["usage"]["completion_tokens"] == 20 and rec["project"] == "test"


def test_mapped_alias(client: httpx.Client) -> None:
    r = chat(client, model="alias")
    assert r.status_code == 200 and r.json()["model"] == "ok-model"


def test_stream_answer(client: httpx.Client, gw: GatewayServer) -> None:
    r = chat(client, stream=True, stream_options={"include_usage": True})
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/event-stream")
    events = sse_events(r.text)
    assert events[-1] == "[DONE]"
    chunks = [orjson.loads(e) for e in events[:-1]]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text.startswith("The quick brown fox")
    assert chunks[-1]["usage"]["completion_tokens"] == 20
    rec = record(gw, r)
    assert rec["stream"] and rec["status"] == 200 and rec["usage"]["completion_tokens"] == 20
    assert rec["ttft"] is not None and rec["ttft"] <= rec["latency"]
    assert rec["outcome"] == "completed" and rec["channel"] == "good"
    assert rec["attempts"][-1]["stream_end"] >= rec["attempts"][-1]["end"]


GEMINI_BODY = {"contents": [{"role": "user", "parts": [{"text": "Hello there"}]}]}


def gemini_stream(client: httpx.Client, model: str, query: str = "") -> httpx.Response:
    return client.post(f"/v1beta/models/{model}:streamGenerateContent{query}", json=GEMINI_BODY,
                       headers={"x-goog-api-key": GW_KEY})


@pytest.mark.parametrize("query", ["", "?alt=json", "?alt=sse&alt=json"])
def test_gemini_stream_without_alt_sse_is_one_json_array(client: httpx.Client, query: str) -> None:
    # The REST API's default representation: the chunks as one JSON array, written as it grows.
    r = gemini_stream(client, "ok-model", query)
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/json")
    chunks = orjson.loads(r.content)
    assert isinstance(chunks, list) and len(chunks) > 1
    text = "".join(p.get("text", "") for c in chunks for p in c["candidates"][0]["content"]["parts"])
    assert text.startswith("The quick brown fox")
    assert chunks[-1]["candidates"][0]["finishReason"] == "STOP"
    assert chunks[-1]["usageMetadata"]["candidatesTokenCount"] == 20


@pytest.mark.parametrize("query", ["?alt=sse", "?%61lt=sse", "?key=x&alt=sse"])
def test_gemini_stream_with_alt_sse_is_sse(client: httpx.Client, query: str) -> None:
    r = gemini_stream(client, "ok-model", query)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    chunks = [orjson.loads(e) for e in sse_events(r.text)]
    assert chunks[-1]["candidates"][0]["finishReason"] == "STOP"


def test_gemini_array_stream_cut_ends_with_an_error_element(client: httpx.Client) -> None:
    r = gemini_stream(client, "mcut")
    assert r.status_code == 200
    chunks = orjson.loads(r.content)  # still one well-formed array
    assert chunks[0]["candidates"][0]["content"]["parts"][0]["text"]
    assert set(chunks[-1]) == {"error"} and chunks[-1]["error"]["message"]


def test_gemini_stream_alt_it_cannot_write_is_400_naming_alt(client: httpx.Client, stack: Stack) -> None:
    before = stack.by_name["good"].provider.stats["requests"]
    r = gemini_stream(client, "ok-model", "?alt=proto")
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["status"] == "INVALID_ARGUMENT" and "alt" in err["message"]
    assert err["details"][0]["fieldViolations"][0]["field"] == "alt"
    assert stack.by_name["good"].provider.stats["requests"] == before  # refused before any upstream call


def test_failover_is_visible_in_headers_and_record(client: httpx.Client, gw: GatewayServer, stack: Stack) -> None:
    before = stack.by_name["flaky"].provider.stats["requests"]
    r = chat(client, model="fo")
    assert r.status_code == 200
    assert r.headers["x-axonsim-attempts"] == "3"
    rec = record(gw, r)
    assert rec["channels"] == ["flaky", "steady"]
    assert [a["next"] for a in rec["attempts"]] == ["retry", "failover", "done"]
    assert stack.by_name["flaky"].provider.stats["requests"] == before + 2


# -- bad input --------------------------------------------------------------------------------------


def test_malformed_json_is_400(client: httpx.Client) -> None:
    r = client.post("/v1/chat/completions", content=b'{"model": "ok-model", "messages": [', headers=AUTH)
    assert r.status_code == 400
    assert openai_error(r)["type"] == "invalid_request_error"
    assert r.headers["x-axonsim-attempts"] == "0"


def test_missing_messages_is_400_naming_it(client: httpx.Client) -> None:
    r = client.post("/v1/chat/completions", json={"model": "ok-model"}, headers=AUTH)
    assert r.status_code == 400
    assert openai_error(r)["param"] == "messages"


@pytest.mark.parametrize(("path", "body", "param"), [
    ("/v1/chat/completions", {"model": "ok-model", "messages": [{"role": "user", "content": "hi"}],
                              "temperature": 99}, "temperature"),
    ("/v1/responses", {"model": "ok-model", "input": "hi", "max_output_tokens": 8}, "max_output_tokens"),
    ("/v1/messages", {"model": "ok-model", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}],
                      "temperature": 1.5}, "temperature"),  # Anthropic's range is 0–1 (OpenAI's 0–2)
    ("/v1beta/models/ok-model:generateContent", {"contents": [{"role": "user", "parts": [{"text": "hi"}]}],
                                                 "generationConfig": {"topP": 2}}, "generationConfig.topP"),
])
def test_a_value_outside_the_clients_api_range_is_its_400_before_any_upstream_call(
        client: httpx.Client, path: str, body: dict[str, Any], param: str) -> None:
    r = client.post(path, json=body, headers=AUTH)
    assert r.status_code == 400 and r.headers["x-axonsim-attempts"] == "0"
    err = r.json()["error"]
    if path == "/v1/messages":
        assert r.json()["type"] == "error" and err["type"] == "invalid_request_error"
    elif "generateContent" in path:
        assert err["status"] == "INVALID_ARGUMENT" and err["code"] == 400
    else:
        assert err["type"] == "invalid_request_error" and err["param"] == param
    assert param in err["message"]


def test_missing_or_unknown_key_is_401(client: httpx.Client) -> None:
    r = chat(client, headers={})
    assert r.status_code == 401
    assert openai_error(r)["type"] == "authentication_error"
    r = chat(client, headers={"Authorization": "Bearer sk-wrong"})
    assert r.status_code == 401
    assert "sk-wrong" not in r.text
    openai_error(r)


def test_auth_comes_before_parsing(client: httpx.Client) -> None:
    r = client.post("/v1/chat/completions", content=b"not json")
    assert r.status_code == 401


def test_unknown_model_is_404(client: httpx.Client) -> None:
    r = chat(client, model="no-such-model")
    assert r.status_code == 404
    err = openai_error(r)
    assert err["param"] == "model" and err["code"] == "model_not_found"


# -- every channel failing -------------------------------------------------------------------------


@pytest.mark.parametrize(("model", "status", "kind"), [
    ("m500", 502, "server_error"),
    ("m503", 503, "overloaded"),
    ("mreset", 502, "connection"),
    ("mhang", 504, "timeout"),
])
@pytest.mark.parametrize("stream", [False, True])
def test_all_channels_failing(client: httpx.Client, gw: GatewayServer, model: str, status: int, kind: str,
                              stream: bool) -> None:
    r = chat(client, model=model, stream=stream)
    assert r.status_code == status, r.text
    openai_error(r)  # JSON, even for a stream request: nothing had been committed
    rec = record(gw, r)
    assert rec["status"] == status and rec["error_kind"] == kind and rec["outcome"] == "failed"
    assert int(r.headers["x-axonsim-attempts"]) == len(rec["attempts"]) >= 1


def test_upstream_429_then_cooldown(client: httpx.Client, gw: GatewayServer) -> None:
    r = chat(client, model="m429")
    assert r.status_code == 429
    assert r.headers["retry-after"] == "3"  # the upstream's Retry-After, passed on
    assert r.headers["x-axonsim-attempts"] == "1"
    assert openai_error(r)["type"] == "rate_limit_exceeded"
    # the channel now cools down: the gateway answers 429 itself, without an upstream attempt
    r = chat(client, model="m429", stream=True)
    assert r.status_code == 429 and r.headers["x-axonsim-attempts"] == "0"
    assert 1 <= int(r.headers["retry-after"]) <= 3
    openai_error(r)


def test_stream_cut_after_commit_ends_with_an_in_stream_error(client: httpx.Client, gw: GatewayServer) -> None:
    r = chat(client, model="mcut", stream=True)
    assert r.status_code == 200
    events = sse_events(r.text)
    assert "[DONE]" not in events
    last = orjson.loads(events[-1])
    assert "error" in last and last["error"]["message"]
    content = [orjson.loads(e) for e in events[:-1]]
    assert any(c["choices"] and c["choices"][0]["delta"].get("content") for c in content)
    rec = record(gw, r)
    assert rec["status"] == 200 and rec["error_kind"] == "connection" and rec["outcome"] == "failed"
    assert rec["attempts"][-1]["stream_error"] == "connection"
    cut = next(s for s in gw.proxy.router.states if s.name == "cut")
    assert cut.inflight == 0 and cut.failures >= 1


def test_idle_timeout_after_commit_ends_with_an_in_stream_error(client: httpx.Client, gw: GatewayServer) -> None:
    r = chat(client, model="mstall", stream=True)
    assert r.status_code == 200
    events = sse_events(r.text)
    assert "[DONE]" not in events and "error" in orjson.loads(events[-1])
    rec = record(gw, r)
    assert rec["error_kind"] == "timeout" and rec["attempts"][-1]["stream_error"] == "timeout"


# -- client disconnects -----------------------------------------------------------------------------


def _wait(cond: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.01)


def test_client_disconnect_mid_stream_cancels_the_upstream(gw: GatewayServer, stack: Stack) -> None:
    slow = stack.by_name["slow"].provider
    cancelled_before = slow.stats["cancelled"]
    n_before = len(gw.proxy.recent)
    body = {"model": "slow", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    with httpx.Client(base_url=gw.url, timeout=10) as c:
        with c.stream("POST", "/v1/chat/completions", json=body, headers=AUTH) as r:
            assert r.status_code == 200
            got = b""
            for piece in r.iter_raw():
                got += piece
                if b'"content":"The' in got:
                    break
            rid = r.headers["x-request-id"]
    # the upstream stream (20 s long) was cancelled, and the request was accounted
    _wait(lambda: slow.stats["cancelled"] > cancelled_before)
    _wait(lambda: gw.proxy.find(rid) is not None)
    rec = gw.proxy.find(rid)
    assert rec["outcome"] == "cancelled" and rec["status"] == 499 and rec["channels"] == ["slow"]
    assert len(gw.proxy.recent) > n_before
    st = next(s for s in gw.proxy.router.states if s.name == "slow")
    _wait(lambda: slow.inflight == 0)
    assert st.inflight == 0 and st.failures == 0


def test_client_disconnect_while_waiting_cancels_the_upstream(gw: GatewayServer, stack: Stack) -> None:
    slow = stack.by_name["slow"].provider
    cancelled_before = slow.stats["cancelled"]
    body = {"model": "slow", "messages": [{"role": "user", "content": "hi"}]}
    with httpx.Client(base_url=gw.url, timeout=0.3) as c, pytest.raises(httpx.ReadTimeout):
        c.post("/v1/chat/completions", json=body, headers=AUTH)
    _wait(lambda: slow.stats["cancelled"] > cancelled_before)
    _wait(lambda: any(r["model"] == "slow" and not r["stream"] and r["outcome"] == "cancelled" for r in gw.proxy.recent))
    st = next(s for s in gw.proxy.router.states if s.name == "slow")
    _wait(lambda: st.inflight == 0)


# -- secrets ----------------------------------------------------------------------------------------


def test_no_upstream_secret_in_responses_or_logs(gw: GatewayServer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    seen: list[str] = []
    with httpx.Client(base_url=gw.url, timeout=10) as c:
        for model in ("mleak", "m500", "mreset", "ok-model"):
            for stream in (False, True):
                r = chat(c, model=model, stream=stream)
                seen.append(r.text + str(r.headers))
        r = chat(c, model="mcut", stream=True)
        seen.append(r.text + str(r.headers))
    leak = chat(httpx.Client(base_url=gw.url, timeout=10), model="mleak")
    assert leak.status_code == 502  # the upstream's 401 is the gateway's problem, not the client's
    everything = "\n".join(seen) + "\n" + caplog.text + "\n" + repr(list(gw.proxy.recent))
    assert "axonsim.server.access" in caplog.text  # the access lines were captured
    for c in CHANNELS:
        assert secret(c["name"]) not in everything


def test_upstream_error_messages_are_scrubbed() -> None:
    """An upstream 400 passes through to the client (no retry), minus any configured secret."""
    key = "opaque-upstream-credential-123"

    def handler(req: Any) -> MockReply:
        return MockReply(400, orjson.dumps({"error": {"message": f"bad 'temperature' (your key {key})",
                                                      "type": "invalid_request_error", "param": "temperature"}}))

    from axonsim.config import parse_config

    cfg = parse_config({"gateway": {"api_keys": [{"key": GW_KEY}]},
                        "channels": [{"name": "x", "base_url": "http://x.test/v1", "api_keys": [key], "models": ["m"]}]})
    up = MockUpstream(handler)
    with Stack() as st:
        g = st.gateway(Proxy(cfg, up, seed=1))
        with httpx.Client(base_url=g.url, timeout=10) as c:
            r = chat(c, model="m", temperature=1.5)
    assert r.status_code == 400
    err = openai_error(r)
    assert err["param"] == "temperature" and key not in r.text and "[redacted]" in err["message"]
    assert len(up.requests) == 1


@pytest.mark.parametrize("fmt", ["openai", "anthropic", "gemini"])
def test_key_shaped_text_in_any_field_of_an_upstream_error_is_masked(fmt: str) -> None:
    """Part of a key (not the configured one whole, which is masked exactly) quoted by an upstream
    was masked in the message only; `param` and `code` brought it to the client."""
    partial = "sk-echo-ZZZZZZZZ"
    body = {"openai": {"error": {"message": f"bad key {partial}", "param": partial, "code": f"k {partial}",
                                 "type": "invalid_request_error"}},
            "anthropic": {"type": "error", "error": {"type": f"e {partial}", "message": f"bad key {partial}"}},
            "gemini": {"error": {"code": 400, "message": f"bad key {partial}", "status": f"S {partial}"}}}[fmt]

    def handler(req: Any) -> MockReply:
        return MockReply(400, orjson.dumps(body))

    from axonsim.config import parse_config

    cfg = parse_config({"gateway": {"api_keys": [{"key": GW_KEY}]},
                        "channels": [{"name": "x", "type": fmt, "base_url": "http://x.test/v1",
                                      "api_keys": ["sk-echo-ZZZZZZZZZ"], "models": ["m"]}]})
    with Stack() as st:
        g = st.gateway(Proxy(cfg, MockUpstream(handler), seed=1))
        with httpx.Client(base_url=g.url, timeout=10) as c:
            r = chat(c, model="m")
    assert r.status_code == 400 and "ZZZZ" not in r.text and "[redacted]" in r.text, r.text


def test_internal_errors_are_500_without_a_trace(caplog: pytest.LogCaptureFixture) -> None:
    from axonsim.config import parse_config

    key = "opaque-upstream-credential-456"
    cfg = parse_config({"gateway": {"api_keys": [{"key": GW_KEY}]},
                        "channels": [{"name": "x", "base_url": "http://x.test/v1", "api_keys": [key], "models": ["m"]}]})

    def broken(req: Any) -> MockReply:  # not a transport error: a bug somewhere below the handler
        raise RuntimeError(f"kaboom with {key}")

    proxy = Proxy(cfg, MockUpstream(broken), seed=1)
    caplog.set_level(logging.INFO)
    with Stack() as st:
        g = st.gateway(proxy)
        with httpx.Client(base_url=g.url, timeout=10) as c:
            r = chat(c, model="m")
    assert r.status_code == 500
    err = openai_error(r)
    assert "Traceback" not in r.text and "kaboom" not in r.text
    assert err["type"] == "server_error"
    assert "kaboom with [redacted]" in caplog.text and key not in caplog.text
    assert proxy.recent[-1]["status"] == 500


def test_a_gateway_error_inside_an_attempt_frees_the_channel_slot() -> None:
    """An attempt that dies of an error of ours (not the channel's) is abandoned: the channel's
    in-flight count comes back down, or a concurrency limit would lock the channel out for good."""
    from axonsim.config import parse_config

    cfg = parse_config({"gateway": {"api_keys": [{"key": GW_KEY}]},
                        "channels": [{"name": "x", "base_url": "http://x.test/v1", "models": ["m"]}]})

    def broken(req: Any) -> MockReply:
        raise RuntimeError("kaboom")

    proxy = Proxy(cfg, MockUpstream(broken), seed=1)
    with Stack() as st:
        g = st.gateway(proxy)
        with httpx.Client(base_url=g.url, timeout=10) as c:
            assert [chat(c, model="m").status_code for _ in range(3)] == [500, 500, 500]
    state = proxy.router.states[0]
    assert state.inflight == 0 and state.failures == 0


def test_on_request_done_hook_and_ring_bound() -> None:
    from axonsim.config import parse_config

    cfg = parse_config({"gateway": {"api_keys": [{"key": GW_KEY}]},
                        "channels": [{"name": "x", "base_url": "http://x.test/v1", "models": ["m"]}]})
    body = orjson.dumps({"id": "c", "object": "chat.completion", "created": 1, "model": "m",
                         "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"},
                                      "finish_reason": "stop"}]})
    proxy = Proxy(cfg, MockUpstream(lambda r: MockReply(200, body)), seed=1, recent=3)
    got: list[dict[str, Any]] = []
    proxy.on_request_done = got.append
    with Stack() as st:
        g = st.gateway(proxy)
        with httpx.Client(base_url=g.url, timeout=10) as c:
            for _ in range(5):
                assert chat(c, model="m").status_code == 200
            assert chat(c, model="m", headers={}).status_code == 401
    assert len(got) == 6 and len(proxy.recent) == 3
    assert got[-1]["status"] == 401 and got[-1]["attempts"] == []
    assert all(r["attempts"][0]["channel"] == "x" for r in got[:5])


def test_a_stream_the_client_leaves_keeps_the_usage_already_reported() -> None:
    # Gemini reports usage on every chunk: a generation the client stops after 300 tokens was
    # generated and billed up to there. Its record, cost and the channel's token quota count them,
    # as they do when the upstream cuts the stream at the same point.
    from axonsim.config import parse_config
    from server.upstream import HANG

    cfg = parse_config({"gateway": {"api_keys": [{"key": GW_KEY}]}, "prices": {"g": {"input": 1.0, "output": 10.0}},
                        "channels": [{"name": "gem", "type": "gemini", "base_url": "http://gem.test", "models": ["g"],
                                      "quota": {"tokens": 500, "period": 3600}}]})

    def chunk(i: int) -> bytes:
        return b"data: " + orjson.dumps({
            "candidates": [{"content": {"role": "model", "parts": [{"text": f"part {i} "}]}, "index": 0}],
            "usageMetadata": {"promptTokenCount": 40, "candidatesTokenCount": 100 * i, "totalTokenCount": 40 + 100 * i},
            "modelVersion": "g"}) + b"\r\n\r\n"

    proxy = Proxy(cfg, MockUpstream(lambda r: MockReply(200, chunks=[chunk(1), chunk(2), chunk(3), HANG],
                                                        headers={"content-type": "text/event-stream"})), seed=1)
    with Stack() as st:
        g = st.gateway(proxy)
        with httpx.Client(base_url=g.url, timeout=10) as c:
            with c.stream("POST", "/v1beta/models/g:streamGenerateContent?alt=sse", headers={"x-goog-api-key": GW_KEY},
                          json={"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}) as r:
                assert r.status_code == 200
                got = b""
                for piece in r.iter_raw():
                    got += piece
                    if got.count(b"data:") >= 3:
                        break
                rid = r.headers["x-request-id"]
        _wait(lambda: proxy.find(rid) is not None)
        rec = proxy.find(rid)
        assert rec["outcome"] == "cancelled" and rec["status"] == 499
        assert (rec["usage"]["prompt_tokens"], rec["usage"]["completion_tokens"]) == (40, 300)
        assert rec["cost"] == pytest.approx((40 * 1.0 + 300 * 10.0) / 1e6)
        # the quota counted what was generated: another such request would pass it
        st_gem = proxy.router.states[0]
        assert st_gem.quota is not None and st_gem.quota.tokens >= 340


def test_a_long_stream_keeps_only_what_the_store_stores_of_its_body() -> None:
    # With store_bodies on, a stream's bytes are kept for its record: only as many as the store is
    # handed (the front of the answer), however long the answer runs.
    from server.app import KeptBytes
    from server.proxy import BODY_HANDED

    kept = KeptBytes()
    piece = b"x" * 4096
    for _ in range(3 * BODY_HANDED // len(piece)):
        kept.add(piece)
    assert BODY_HANDED <= kept.size < BODY_HANDED + len(piece)
    assert b"".join(kept.parts) == piece * len(kept.parts)


def test_a_request_without_a_valid_key_is_refused_before_its_body_is_read(gw: GatewayServer) -> None:
    # The head announces 10 MB that never come: the 401 must not wait for them (a client without a
    # key neither sends nor has the gateway hold a body of up to 32 MiB).
    u = urlsplit(gw.url)
    with socket.create_connection((u.hostname, u.port)) as s:
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\nauthorization: Bearer wrong-key-123\r\n"
                  b"content-type: application/json\r\ncontent-length: 10000000\r\n\r\n{\"model\"")
        s.settimeout(5)
        answer = s.recv(65536)
    assert answer.startswith(b"HTTP/1.1 401 "), answer[:200]
    assert b"invalid_api_key" in answer or b"authentication" in answer, answer


@pytest.mark.parametrize(("path", "model", "depth"), [
    ("/v1/chat/completions", "vendor/gem-x", 300),  # converted for a Gemini channel: orjson writes 255 levels
    # forwarded as it came, but still read whole: Python's repr stops near 1000 levels with the pure
    # build's frames on the stack (a 400); the compiled build has room and serves it
    ("/v1/chat/completions", "ok-model", 1000),
])
def test_json_nested_deeper_than_the_gateway_can_convert_is_a_400(client: httpx.Client, gw: GatewayServer,
                                                                  path: str, model: str, depth: int) -> None:
    nested = "[" * depth + "]" * depth
    body = (b'{"model": "' + model.encode() + b'", "messages": [{"role": "user", "content": "hi"}], "tools": [{"type": '
            b'"function", "function": {"name": "f", "parameters": {"type": "object", "x": ' + nested.encode() + b'}}}]}')
    r = client.post(path, content=body, headers={**AUTH, "content-type": "application/json"})
    if depth == 1000 and r.status_code == 200:
        return  # served: never a 500
    assert r.status_code == 400, r.text
    assert "nested too deeply" in openai_error(r)["message"]
    assert record(gw, r)["status"] == 400


def test_a_very_long_model_name_is_quoted_short(client: httpx.Client, gw: GatewayServer) -> None:
    # a client may name any model: 10 MB of one was echoed in the 404 and stored whole with the record
    r = client.post("/v1/chat/completions", json={"model": "m" * 100_000, "messages": [{"role": "user", "content": "hi"}]},
                    headers=AUTH)
    assert r.status_code == 404 and len(r.content) < 1000, len(r.content)
    assert "100000 characters" in openai_error(r)["message"]
    assert len(record(gw, r)["error"]) < 1000


# -- compressed request bodies (Content-Encoding) ---------------------------------------------------

FAMILY_CALLS = {  # path, body: one small request of each client family, for the ok-model channel
    "openai": ("/v1/chat/completions", {"model": "ok-model", "messages": [{"role": "user", "content": "hi"}]}),
    "responses": ("/v1/responses", {"model": "ok-model", "input": "hi"}),
    "anthropic": ("/v1/messages", {"model": "ok-model", "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]}),
    "gemini": ("/v1beta/models/ok-model:generateContent", GEMINI_BODY),
}


def family_error(family: str, r: httpx.Response) -> str:
    body = r.json()
    if family == "anthropic":
        assert body["type"] == "error" and body["error"]["type"], body
        return str(body["error"]["message"])
    if family == "gemini":
        assert body["error"]["code"] == r.status_code and body["error"]["status"], body
        return str(body["error"]["message"])
    return str(openai_error(r)["message"])


@pytest.mark.parametrize("family", sorted(FAMILY_CALLS))
@pytest.mark.parametrize("coding", ["gzip", "deflate", "gzip, identity"])
def test_a_compressed_body_is_decoded_and_served(client: httpx.Client, gw: GatewayServer, family: str,
                                                 coding: str) -> None:
    # Each upstream gets JSON it can read: the gateway converts the request or forwards its bytes
    # (ok-model is an OpenAI channel: an OpenAI Chat client's body goes as it came, decoded).
    import gzip
    import zlib

    path, body = FAMILY_CALLS[family]
    raw = orjson.dumps(body)
    packed = gzip.compress(raw) if coding.startswith("gzip") else zlib.compress(raw)
    r = client.post(path, content=packed, headers={**AUTH, "content-type": "application/json",
                                                   "content-encoding": coding})
    assert r.status_code == 200, r.text
    rec = record(gw, r)
    assert rec["status"] == 200 and rec["model"] == "ok-model"


@pytest.mark.parametrize("family", sorted(FAMILY_CALLS))
def test_a_coding_the_gateway_cannot_read_is_a_415_in_the_clients_shape(client: httpx.Client, gw: GatewayServer,
                                                                       family: str) -> None:
    path, body = FAMILY_CALLS[family]
    r = client.post(path, content=orjson.dumps(body), headers={**AUTH, "content-type": "application/json",
                                                                "content-encoding": "br"})
    assert r.status_code == 415, r.text
    assert r.headers["accept-encoding"] == "gzip, deflate"  # what would have been accepted (RFC 9110 §15.5.16)
    assert "'br' is not supported" in family_error(family, r)
    assert record(gw, r)["status"] == 415


@pytest.mark.parametrize(("packed", "status", "words"), [
    (orjson.dumps(FAMILY_CALLS["openai"][1]), 400, "not valid gzip"),  # says gzip, is plain JSON (it used to be served)
    (b"\x1f\x8b\x08\x00" + b"\x00" * 6 + b"\xff" * 20, 400, "not valid gzip"),  # a gzip header, then no deflate data
    (None, 413, "exceeds"),  # a bomb: a few KiB that inflate past the body limit
])
def test_a_compressed_body_that_cannot_be_decoded_is_refused(client: httpx.Client, gw: GatewayServer,
                                                             packed: bytes | None, status: int, words: str) -> None:
    import gzip

    from server.app import MAX_BODY

    if packed is None:
        packed = gzip.compress(b" " * (MAX_BODY + 1), compresslevel=1)
        assert len(packed) < MAX_BODY // 100
    r = client.post("/v1/chat/completions", content=packed, headers={**AUTH, "content-type": "application/json",
                                                                     "content-encoding": "gzip"})
    assert r.status_code == status, r.text
    assert words in openai_error(r)["message"]
    assert record(gw, r)["status"] == status
