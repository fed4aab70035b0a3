"""End to end: embeddings routed like chat, and the model lists of both families, through the running gateway
with the official SDKs (openai `embeddings.create` / `models`, google-genai `models.embed_content` / `models.list`).

Channels (each its own mock provider; the breaker is off so every request meets the failing channels):
    emb-o  OpenAI channels: o-broken (priority 0, always 500) then o-good
    emb-g  Gemini channels: g-broken (priority 0, always 502) then g-good
    emb-x  an Anthropic and a Responses channel (no embeddings API: never tried) and g-good
    emb-none  only Anthropic / Responses channels: a clear 400
A second gateway (`mix`) has an OpenAI and a Gemini channel side by side for emb-mix (o-mix, g-mix),
and emb-gonly on g-mix alone.
The mock's vectors are a hash of (upstream model, text), so the expected vector is computed here.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from google import genai
from google.genai import errors as genai_errors
from google.genai import types as gt

from server.mock_provider import embedding_vector
from server.testing import GatewayServer, Stack

pytestmark = pytest.mark.timeout(60)

GW_KEY = "sk-gw-emb"
FAST = {"ttft": 0.001, "tokens_per_second": 100000, "output_tokens": 5}
DIM = 16  # the mock's default dimension


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    with Stack() as st:
        st.serve(
            [
                {"name": "o-broken", "type": "openai", "api_keys": ["sk-o1"], "models": ["emb-o"], "priority": 0,
                 "behavior": {**FAST, "error_rate": 1.0}},
                {"name": "o-good", "type": "openai", "api_keys": ["sk-o2"], "models": ["emb-o"], "priority": 1,
                 "behavior": FAST},
                {"name": "g-broken", "type": "gemini", "api_keys": ["sk-g1"], "models": ["emb-g"], "priority": 0,
                 "behavior": {**FAST, "error_rate": 1.0, "error_status": 502}},
                {"name": "g-good", "type": "gemini", "api_keys": ["sk-g2"], "models": ["emb-g", "emb-x"],
                 "priority": 1, "behavior": FAST},
                {"name": "a-chat", "type": "anthropic", "api_keys": ["sk-a"], "models": ["emb-x", "emb-none"],
                 "priority": 0, "behavior": FAST},
                {"name": "r-chat", "type": "openai_responses", "api_keys": ["sk-r"], "models": ["emb-x", "emb-none"],
                 "priority": 0, "behavior": FAST},
            ],
            gateway={"api_keys": [{"key": GW_KEY, "project": "emb"}]},
            routing={"retry": {"backoff": {"base": 0.001, "cap": 0.01}}, "health": {"breaker": {"enabled": False}}},
        )
        yield st


@pytest.fixture(scope="module")
def gw(stack: Stack) -> GatewayServer:
    return stack.gateways[0]


@pytest.fixture(scope="module")
def oai(gw: GatewayServer) -> Iterator[openai.OpenAI]:
    c = openai.OpenAI(base_url=f"{gw.url}/v1", api_key=GW_KEY, max_retries=0, timeout=20)
    yield c
    c.close()


def _genai(gw: GatewayServer, api_version: str | None) -> genai.Client:
    return genai.Client(api_key=GW_KEY, http_options=gt.HttpOptions(
        base_url=gw.url, api_version=api_version, retry_options=gt.HttpRetryOptions(attempts=1)))


@pytest.fixture(scope="module", params=["v1beta", None], ids=["v1beta", "v1-default"])
def gem(request: pytest.FixtureRequest, gw: GatewayServer) -> Iterator[genai.Client]:
    c = _genai(gw, request.param)
    yield c
    c.close()


def close(a: list[float], b: list[float], tol: float = 1e-6) -> bool:
    return len(a) == len(b) and all(math.isclose(x, y, abs_tol=tol) for x, y in zip(a, b, strict=True))


def tokens(*texts: str) -> int:
    return sum(math.ceil(len(t) / 4) for t in texts)


def record(gw: GatewayServer, rid: str) -> dict[str, Any]:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:  # written just after the last byte is sent
        rec = gw.proxy.find(rid)
        if rec is not None:
            return rec
        time.sleep(0.01)
    raise AssertionError(f"no record for {rid}")


# --------------------------------------------------------------------------------------------------
# OpenAI SDK


def test_openai_sdk_fails_over_between_openai_channels(oai: openai.OpenAI, gw: GatewayServer, stack: Stack) -> None:
    before = stack.by_name["o-broken"].provider.stats["error"]
    texts = ["The quick brown fox", "jumps over the lazy dog"]
    raw = oai.embeddings.with_raw_response.create(model="emb-o", input=texts)  # the SDK asks base64 by default
    res = raw.parse()
    assert [d.index for d in res.data] == [0, 1]
    for d, t in zip(res.data, texts, strict=True):
        assert close(d.embedding, embedding_vector("emb-o", t, DIM))
    assert res.model == "emb-o"
    assert res.usage.prompt_tokens == res.usage.total_tokens == tokens(*texts)
    assert raw.headers["x-axonsim-attempts"] == "3"  # broken twice (one retry), then the good one
    rec = record(gw, raw.headers["x-request-id"])
    assert rec["channels"] == ["o-broken", "o-good"] and rec["status"] == 200
    assert rec["client_format"] == "openai_embeddings"
    assert rec["usage"]["prompt_tokens"] == tokens(*texts)
    assert stack.by_name["o-broken"].provider.stats["error"] == before + 2


def test_embeddings_answer_and_record_like_chat(oai: openai.OpenAI, gw: GatewayServer,
                                               caplog: pytest.LogCaptureFixture) -> None:
    """The chat handler's conventions: ids echoed, overhead and attempts headers, explain on request,
    one complete record (metrics and store read every field)."""
    raw = oai.embeddings.with_raw_response.create(
        model="emb-o", input="x", extra_headers={"x-axonsim-trace-id": "trace-emb-1", "x-axonsim-explain": "1"})
    h = raw.headers
    assert h["x-axonsim-trace-id"] == "trace-emb-1" and h["x-axonsim-thread-id"]
    assert float(h["x-axonsim-overhead-ms"]) >= 0.0
    assert "decisions" in h["x-axonsim-explain"]
    rec = record(gw, h["x-request-id"])
    assert rec["trace_id"] == "trace-emb-1" and rec["outcome"] == "completed" and rec["stream"] is False
    assert rec["overhead"] >= 0.0 and rec["ttft"] is not None and "cost" in rec and rec["decisions"]
    assert not [r for r in caplog.records if "failed" in r.getMessage()]


def test_openai_sdk_floats_and_dimensions(oai: openai.OpenAI) -> None:
    res = oai.embeddings.create(model="emb-o", input="hello", encoding_format="float", dimensions=8)
    assert len(res.data) == 1
    assert close(res.data[0].embedding, embedding_vector("emb-o", "hello", 8), 1e-12)  # floats: exact


def test_openai_sdk_token_ids_reach_an_openai_channel(oai: openai.OpenAI) -> None:
    res = oai.embeddings.create(model="emb-o", input=[[101, 2023, 102]], encoding_format="float")
    assert close(res.data[0].embedding, embedding_vector("emb-o", "101 2023 102", DIM), 1e-12)


def test_openai_sdk_to_gemini_channels(oai: openai.OpenAI, gw: GatewayServer) -> None:
    texts = ["alpha", "beta", "gamma"]
    raw = oai.embeddings.with_raw_response.create(model="emb-g", input=texts, dimensions=12)
    res = raw.parse()
    for d, t in zip(res.data, texts, strict=True):
        assert close(d.embedding, embedding_vector("emb-g", t, 12))
    assert res.usage.prompt_tokens == tokens(*texts)
    rec = record(gw, raw.headers["x-request-id"])
    assert rec["channels"] == ["g-broken", "g-good"]


@pytest.fixture(scope="module")
def mix() -> Iterator[Stack]:
    with Stack() as st:
        st.serve([{"name": "o-mix", "type": "openai", "api_keys": ["sk-om"], "models": ["emb-mix"], "behavior": FAST},
                  {"name": "g-mix", "type": "gemini", "api_keys": ["sk-gm"], "models": ["emb-mix", "emb-gonly"],
                   "behavior": FAST}],
                 gateway={"api_keys": [{"key": GW_KEY, "project": "emb"}]}, routing={"strategy": "round_robin"})
        yield st


@pytest.fixture(scope="module")
def mix_oai(mix: Stack) -> Iterator[openai.OpenAI]:
    c = openai.OpenAI(base_url=f"{mix.gateways[0].url}/v1", api_key=GW_KEY, max_retries=0, timeout=20)
    yield c
    c.close()


def test_token_ids_are_routed_to_openai_channels_only(mix_oai: openai.OpenAI, mix: Stack) -> None:
    """A Gemini channel embeds text: token ids go where they can be served, whichever channel the
    balancer would have picked (half of them were a 400 from the Gemini channel)."""
    gw = mix.gateways[0]
    before = mix.by_name["g-mix"].provider.stats["embeddings"]
    for _ in range(6):
        raw = mix_oai.embeddings.with_raw_response.create(model="emb-mix", input=[[101, 2023, 102]],
                                                          encoding_format="float")
        assert close(raw.parse().data[0].embedding, embedding_vector("emb-mix", "101 2023 102", DIM), 1e-12)
        assert record(gw, raw.headers["x-request-id"])["channels"] == ["o-mix"]
    assert mix.by_name["g-mix"].provider.stats["embeddings"] == before
    texts = [f"text {i}" for i in range(4)]  # text goes to either
    seen = {record(gw, mix_oai.embeddings.with_raw_response.create(model="emb-mix", input=texts)
                   .headers["x-request-id"])["channel"] for _ in range(6)}
    assert seen == {"o-mix", "g-mix"}


def test_more_inputs_than_a_gemini_batch_takes_are_split(mix_oai: openai.OpenAI, mix: Stack) -> None:
    """Gemini takes at most 100 requests per batch (the mock refuses more, as Gemini does): 250 inputs
    from an OpenAI client are three calls of one attempt, their embeddings joined in order."""
    texts = [f"passage number {i}" for i in range(250)]
    calls = mix.by_name["g-mix"].provider.stats["embeddings"]
    raw = mix_oai.embeddings.with_raw_response.create(model="emb-gonly", input=texts, encoding_format="float")
    res = raw.parse()
    assert [d.index for d in res.data] == list(range(250))
    assert all(close(d.embedding, embedding_vector("emb-gonly", t, DIM)) for d, t in zip(res.data, texts, strict=True))
    assert mix.by_name["g-mix"].provider.stats["embeddings"] == calls + 3
    rec = record(mix.gateways[0], raw.headers["x-request-id"])
    assert rec["channels"] == ["g-mix"] and rec["usage"]["prompt_tokens"] == tokens(*texts)


def test_a_gemini_batch_keeps_each_requests_own_options(mix: Stack) -> None:
    """Each request of a :batchEmbedContents is a whole EmbedContentRequest: different task types,
    titles and dimensions in one batch are served; different dimensions only by a Gemini channel."""
    body = {"requests": [
        {"content": {"parts": [{"text": "query"}]}, "taskType": "RETRIEVAL_QUERY", "outputDimensionality": 4},
        {"content": {"parts": [{"text": "doc"}]}, "taskType": "RETRIEVAL_DOCUMENT", "title": "Doc", "outputDimensionality": 8},
    ]}
    gw = mix.gateways[0]
    for _ in range(4):
        r = httpx.post(f"{gw.url}/v1beta/models/emb-mix:batchEmbedContents?key={GW_KEY}", json=body, timeout=10)
        assert r.status_code == 200, r.text
        got = [e["values"] for e in r.json()["embeddings"]]
        assert close(got[0], embedding_vector("emb-mix", "query", 4)) and close(got[1], embedding_vector("emb-mix", "doc", 8))
        assert record(gw, r.headers["x-request-id"])["channels"] == ["g-mix"]


def test_channels_without_an_embeddings_api_are_not_candidates(oai: openai.OpenAI, gw: GatewayServer,
                                                               stack: Stack) -> None:
    before = {n: stack.by_name[n].provider.stats["requests"] for n in ("a-chat", "r-chat")}
    raw = oai.embeddings.with_raw_response.create(model="emb-x", input="x")
    assert close(raw.parse().data[0].embedding, embedding_vector("emb-x", "x", DIM))
    assert record(gw, raw.headers["x-request-id"])["channels"] == ["g-good"]
    assert {n: stack.by_name[n].provider.stats["requests"] for n in ("a-chat", "r-chat")} == before


def test_no_embedding_channel_is_a_clear_400(oai: openai.OpenAI, gw: GatewayServer) -> None:
    with pytest.raises(openai.BadRequestError) as bad:
        oai.embeddings.create(model="emb-none", input="x")
    msg = str(bad.value)
    assert "embeddings" in msg and "a-chat" in msg and "r-chat" in msg
    client = _genai(gw, "v1beta")
    with pytest.raises(genai_errors.ClientError) as gbad:
        client.models.embed_content(model="emb-none", contents="x")
    assert gbad.value.code == 400 and "embeddings" in (gbad.value.message or "")
    client.close()


def test_openai_bad_requests_name_the_field(oai: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as bad:
        oai.embeddings.create(model="emb-o", input=[])
    assert bad.value.body["param"] == "input"  # type: ignore[index]
    with pytest.raises(openai.NotFoundError):
        oai.embeddings.create(model="no-such-model", input="x")
    # Token ids have no text for a Gemini channel: the client hears why, not a silent drop.
    with pytest.raises(openai.BadRequestError) as bad:
        oai.embeddings.create(model="emb-g", input=[[1, 2, 3]])
    assert "Gemini" in str(bad.value)


def test_auth_errors_in_each_family_shape(gw: GatewayServer) -> None:
    r = httpx.post(f"{gw.url}/v1/embeddings", json={"model": "emb-o", "input": "x"}, timeout=10)
    assert r.status_code == 401 and "error" in r.json() and "message" in r.json()["error"]
    r = httpx.post(f"{gw.url}/v1beta/models/emb-g:embedContent", json={"content": {"parts": [{"text": "x"}]}},
                   headers={"x-goog-api-key": "wrong"}, timeout=10)
    assert r.status_code == 401 and r.json()["error"]["status"] == "UNAUTHENTICATED"


# --------------------------------------------------------------------------------------------------
# google-genai SDK


def test_genai_sdk_fails_over_between_gemini_channels(gem: genai.Client, stack: Stack, gw: GatewayServer) -> None:
    before = stack.by_name["g-broken"].provider.stats["error"]
    texts: list[Any] = ["What is your name?", "What is your favourite colour?"]  # (the SDK's union is invariant)
    res = gem.models.embed_content(model="emb-g", contents=texts, config={"output_dimensionality": 8})
    assert res.embeddings is not None and len(res.embeddings) == 2
    for e, t in zip(res.embeddings, texts, strict=True):
        assert e.values is not None and close(e.values, embedding_vector("emb-g", t, 8), 1e-12)
    assert res.usage_metadata is not None and res.usage_metadata.prompt_token_count == tokens(*texts)
    assert res.sdk_http_response is not None and res.sdk_http_response.headers is not None
    rec = record(gw, res.sdk_http_response.headers["x-request-id"])
    assert rec["channels"] == ["g-broken", "g-good"] and rec["client_format"] == "gemini_embeddings"
    # How often the broken channel is retried before failing over depends on its failure history
    # (consecutive failures cool it down); every attempt the record shows, it really received.
    failed = [a for a in rec["attempts"] if a["channel"] == "g-broken"]
    assert failed and all(a["status"] >= 500 for a in failed)
    assert stack.by_name["g-broken"].provider.stats["error"] == before + len(failed)


def test_genai_sdk_to_openai_channels(gem: genai.Client) -> None:
    texts: list[Any] = ["one", "two"]
    res = gem.models.embed_content(model="emb-o", contents=texts)
    assert res.embeddings is not None
    assert [len(e.values or []) for e in res.embeddings] == [DIM, DIM]
    assert close(res.embeddings[1].values or [], embedding_vector("emb-o", "two", DIM), 1e-12)


@pytest.mark.parametrize("prefix", ["/v1beta", "/v1", "/gemini/v1beta"])
def test_embed_content_single_shape(gw: GatewayServer, prefix: str) -> None:
    """:embedContent answers `embedding` (one), :batchEmbedContents `embeddings`; task type and title
    are a Gemini client's own options, kept for Gemini channels."""
    r = httpx.post(f"{gw.url}{prefix}/models/emb-g:embedContent?key={GW_KEY}",
                   json={"content": {"parts": [{"text": "one "}, {"text": "two"}]}, "taskType": "RETRIEVAL_QUERY",
                         "output_dimensionality": 4}, timeout=10)
    assert r.status_code == 200, r.text
    body = r.json()
    assert close(body["embedding"]["values"], embedding_vector("emb-g", "one  two", 4), 1e-12)
    assert body["usageMetadata"]["promptTokenCount"] == tokens("one  two")


def test_gemini_bad_requests_name_the_field(gw: GatewayServer) -> None:
    h = {"x-goog-api-key": GW_KEY}
    r = httpx.post(f"{gw.url}/v1beta/models/emb-g:batchEmbedContents", json={"requests": []}, headers=h, timeout=10)
    assert r.status_code == 400 and r.json()["error"]["status"] == "INVALID_ARGUMENT"
    assert "requests" in r.json()["error"]["message"]
    r = httpx.post(f"{gw.url}/v1beta/models/emb-g:embedContent",
                   json={"content": {"parts": [{"inlineData": {"mimeType": "image/png", "data": "AA=="}}]}},
                   headers=h, timeout=10)
    assert r.status_code == 400 and "content.parts[0]" in r.json()["error"]["message"]


# --------------------------------------------------------------------------------------------------
# Model lists


def test_openai_model_list_stays_openai_shaped(oai: openai.OpenAI) -> None:
    assert [m.id for m in oai.models.list().data] == ["emb-o", "emb-g", "emb-x", "emb-none"]
    assert oai.models.retrieve("emb-g").id == "emb-g"
    with pytest.raises(openai.NotFoundError):
        oai.models.retrieve("nope")


def test_genai_model_list_and_get(gem: genai.Client) -> None:
    models = list(gem.models.list())
    assert [m.name for m in models] == ["models/emb-o", "models/emb-g", "models/emb-x", "models/emb-none"]
    by = {m.name: m for m in models}
    assert "embedContent" in (by["models/emb-g"].supported_actions or [])
    assert "embedContent" not in (by["models/emb-none"].supported_actions or [])
    assert "generateContent" in (by["models/emb-none"].supported_actions or [])
    m = gem.models.get(model="emb-x")
    assert m.name == "models/emb-x" and m.display_name == "emb-x"
    with pytest.raises(genai_errors.ClientError) as nf:
        gem.models.get(model="nope")
    assert nf.value.code == 404


def test_gemini_model_list_pages(gw: GatewayServer) -> None:
    h = {"x-goog-api-key": GW_KEY}
    first = httpx.get(f"{gw.url}/gemini/v1beta/models", params={"pageSize": 3}, headers=h, timeout=10).json()
    assert len(first["models"]) == 3 and first["nextPageToken"]
    rest = httpx.get(f"{gw.url}/v1beta/models", params={"pageSize": 3, "pageToken": first["nextPageToken"]},
                     headers=h, timeout=10).json()
    assert [m["name"] for m in rest["models"]] == ["models/emb-none"] and "nextPageToken" not in rest
    r = httpx.get(f"{gw.url}/v1beta/models", timeout=10)
    assert r.status_code == 401 and r.json()["error"]["status"] == "UNAUTHENTICATED"


def test_an_embedding_cut_by_the_shutdown_deadline_gets_a_503_and_keeps_its_attempt() -> None:
    import threading

    with Stack() as st:
        gw = st.serve([{"name": "slow", "type": "openai", "api_keys": ["sk-s"], "models": ["emb-slow"],
                        "behavior": {**FAST, "ttft": 20.0}}],
                      gateway={"api_keys": [{"key": GW_KEY, "project": "emb"}], "shutdown_timeout": 0.5})
        slow = st.by_name["slow"].provider
        got: list[httpx.Response] = []
        t = threading.Thread(target=lambda: got.append(httpx.post(
            gw.url + "/v1/embeddings", json={"model": "emb-slow", "input": "hi"},
            headers={"Authorization": f"Bearer {GW_KEY}"}, timeout=30)))
        t.start()
        deadline = time.monotonic() + 10
        while slow.inflight < 1:
            assert time.monotonic() < deadline, "the request never reached the slow channel"
            time.sleep(0.01)
        st.call(gw.stop(), 30)
        t.join(10)
        [r] = got
        assert r.status_code == 503 and "shut down" in r.json()["error"]["message"], r.text  # not uvicorn's 500
        [rec] = [x for x in gw.proxy.recent if x["path"] == "/v1/embeddings"]
        assert rec["status"] == 503 and [a["channel"] for a in rec["attempts"]] == ["slow"]
