"""End to end: the official `openai` SDK through the running gateway to two mock providers, one failing with 500s."""

from __future__ import annotations

from collections.abc import Iterator

import openai
import pytest

from server.testing import GatewayServer, Stack

pytestmark = pytest.mark.timeout(60)

GW_KEY = "sk-gw-e2e"
FAST = {"ttft": 0.01, "tokens_per_second": 1000, "output_tokens": 30}


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    with Stack() as st:
        st.serve(
            [
                # tried first (priority 0) and always failing: every request must fail over
                {"name": "broken", "type": "openai", "api_keys": ["sk-up-broken"], "models": ["gpt-4o-mini"],
                 "priority": 0, "behavior": {**FAST, "error_rate": 1.0}},
                {"name": "healthy", "type": "openai", "api_keys": ["sk-up-healthy"], "models": ["gpt-4o-mini"],
                 "priority": 1, "behavior": FAST},
            ],
            gateway={"api_keys": [{"key": GW_KEY, "project": "e2e"}]},
            # the breaker would stop sending to `broken` after a few failures; this test wants
            # to see every request try it first
            routing={"retry": {"backoff": {"base": 0.001, "cap": 0.01}},
                     "health": {"breaker": {"enabled": False}}},
        )
        yield st


@pytest.fixture(scope="module")
def gw(stack: Stack) -> GatewayServer:
    return stack.gateways[0]


@pytest.fixture(scope="module")
def client(gw: GatewayServer) -> Iterator[openai.OpenAI]:
    c = openai.OpenAI(base_url=f"{gw.url}/v1", api_key=GW_KEY, max_retries=0, timeout=20)
    yield c
    c.close()


def test_non_stream_fails_over_to_the_healthy_channel(client: openai.OpenAI, gw: GatewayServer,
                                                      stack: Stack) -> None:
    broken_before = stack.by_name["broken"].provider.stats["error"]
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "Say hello"}])
    completion = raw.parse()
    assert completion.choices[0].message.content.startswith("The quick brown fox")
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None and completion.usage.completion_tokens == 30
    # the failing channel was tried (twice: one retry), then the healthy one answered
    assert raw.headers["x-axonsim-attempts"] == "3"
    rec = gw.proxy.find(raw.headers["x-request-id"])
    assert rec is not None and rec["channels"] == ["broken", "healthy"] and rec["status"] == 200
    assert [(a["channel"], a["status"]) for a in rec["attempts"]] == [
        ("broken", 500), ("broken", 500), ("healthy", 200)]
    assert stack.by_name["broken"].provider.stats["error"] == broken_before + 2


def test_stream_fails_over_to_the_healthy_channel(client: openai.OpenAI, gw: GatewayServer, stack: Stack) -> None:
    broken_before = stack.by_name["broken"].provider.stats["error"]
    with client.chat.completions.with_streaming_response.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "Say hello"}], stream=True,
            stream_options={"include_usage": True}) as resp:
        rid = resp.headers["x-request-id"]
        assert resp.headers["x-axonsim-attempts"] == "3"
        chunks = list(resp.parse())
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.startswith("The quick brown fox")
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 30
    rec = gw.proxy.find(rid)
    assert rec is not None and rec["channels"] == ["broken", "healthy"] and rec["outcome"] == "completed"
    assert stack.by_name["broken"].provider.stats["error"] == broken_before + 2


def test_sdk_stream_helper_accumulates(client: openai.OpenAI) -> None:
    with client.chat.completions.stream(model="gpt-4o-mini",
                                        messages=[{"role": "user", "content": "Say hello"}]) as s:
        final = s.get_final_completion()
    assert final.choices[0].message.content.startswith("The quick brown fox")
    assert final.choices[0].message.role == "assistant"


def test_sdk_sees_gateway_errors_as_typed_exceptions(client: openai.OpenAI, gw: GatewayServer) -> None:
    with pytest.raises(openai.NotFoundError) as nf:
        client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "hi"}])
    assert nf.value.status_code == 404
    bad = openai.OpenAI(base_url=f"{gw.url}/v1", api_key="sk-not-a-gateway-key", max_retries=0, timeout=10)
    with pytest.raises(openai.AuthenticationError):
        bad.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    bad.close()
    models = client.models.list()
    assert [m.id for m in models.data] == ["gpt-4o-mini"]
