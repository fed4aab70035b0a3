"""Capability-aware routing in the running gateway: what a request needs picks its channels."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from server.testing import GatewayServer, Stack

pytestmark = pytest.mark.timeout(60)

AUTH = {"Authorization": "Bearer sk-gw-test"}
FAST = {"ttft": 0.01, "tokens_per_second": 2000, "output_tokens": 5}
IMAGE = {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}


def ch(name: str, **kw: Any) -> dict[str, Any]:
    return {"name": name, "type": "openai", "api_keys": [f"secret-{name}"], "models": ["m"], "behavior": FAST, **kw}


@pytest.fixture(scope="module")
def gw() -> Iterator[GatewayServer]:
    with Stack() as st:
        yield st.serve([ch("text-only", capabilities={"images": False}), ch("vision")],
                       routing={"strategy": "round_robin"})


def ask(gw: GatewayServer, content: Any) -> httpx.Response:
    body = {"model": "m", "messages": [{"role": "user", "content": content}]}
    return httpx.post(f"{gw.url}/v1/chat/completions", json=body, headers=AUTH, timeout=20)


def channels_of(gw: GatewayServer, n: int) -> list[str]:
    return [r["attempts"][-1]["channel"] for r in list(gw.proxy.recent)[-n:]]


def test_images_reach_only_channels_that_take_them(gw: GatewayServer) -> None:
    for _ in range(4):
        assert ask(gw, [{"type": "text", "text": "what is this?"}, IMAGE]).status_code == 200
    assert set(channels_of(gw, 4)) == {"vision"}
    for _ in range(4):
        assert ask(gw, "plain text").status_code == 200
    assert set(channels_of(gw, 4)) == {"text-only", "vision"}


def test_a_need_no_channel_can_meet_is_a_clear_400(gw: GatewayServer) -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "search"}],
            "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]}
    assert httpx.post(f"{gw.url}/v1/chat/completions", json=body, headers=AUTH, timeout=20).status_code == 200
    r = httpx.post(f"{gw.url}/v1/responses", headers=AUTH, timeout=20,
                   json={"model": "m", "input": "search the web", "tools": [{"type": "web_search"}]})
    assert r.status_code == 400
    err = r.json()["error"]
    assert "lacks" in err["message"] and "native tools" in err["message"]


def test_native_tools_are_checked_even_when_no_channel_restricts_content() -> None:
    # No channel limits images or context, so plain requests skip the capability scan; a
    # provider's native tool must still keep the request away from channels that cannot run it.
    with Stack() as st:
        plain = st.serve([ch("a"), ch("b")])
        r = httpx.post(f"{plain.url}/v1/responses", headers=AUTH, timeout=20,
                       json={"model": "m", "input": "search the web", "tools": [{"type": "web_search"}]})
        assert r.status_code == 400 and "native tools" in r.json()["error"]["message"]
        assert ask(plain, [{"type": "text", "text": "what is this?"}, IMAGE]).status_code == 200


def mixed_pool(st: Stack) -> GatewayServer:
    return st.serve([ch("oai"), ch("anth", type="anthropic"), ch("resp", type="openai_responses"),
                     ch("gem", type="gemini")], routing={"strategy": "round_robin"})


def test_a_request_one_type_cannot_express_goes_to_a_type_that_can() -> None:
    # `n: 2` is one answer per request for Anthropic and Responses channels, and Anthropic and Gemini
    # need a user or assistant message: such requests go to the types that can carry them, each on
    # its first attempt, instead of getting a 400 whenever the rotation lands on the others.
    with Stack() as st:
        gw = mixed_pool(st)
        for body, served_by in (({"n": 2, "messages": [{"role": "user", "content": "two takes"}]}, {"oai", "gem"}),
                                ({"messages": [{"role": "system", "content": "say hi"}], "stream": True},
                                 {"oai", "resp"})):
            for _ in range(9):
                r = httpx.post(f"{gw.url}/v1/chat/completions", headers=AUTH, timeout=20, json={"model": "m", **body})
                assert r.status_code == 200, r.text
            recent = list(gw.proxy.recent)[-9:]
            assert [len(rec["attempts"]) for rec in recent] == [1] * 9
            assert {rec["attempts"][0]["channel"] for rec in recent} == served_by
        # The decision trace says which channels were left out, and why.
        r = httpx.post(f"{gw.url}/v1/chat/completions", timeout=20, headers={**AUTH, "x-axonsim-explain": "1"},
                       json={"model": "m", "n": 2, "messages": [{"role": "user", "content": "two takes"}]})
        [decision] = json.loads(r.headers["x-axonsim-explain"])["decisions"]
        assert set(decision["left_out"]) == {"anth", "resp"} and "n > 1" in decision["left_out"]["anth"]
        assert decision["chosen"] in {"oai", "gem"}
        # Requests every type can carry still rotate over the whole pool, and leave nothing out.
        for _ in range(8):
            assert ask(gw, "one take").status_code == 200
        assert set(channels_of(gw, 8)) == {"oai", "anth", "resp", "gem"}
        r = httpx.post(f"{gw.url}/v1/chat/completions", timeout=20, headers={**AUTH, "x-axonsim-explain": "1"},
                       json={"model": "m", "messages": [{"role": "user", "content": "one take"}]})
        assert "left_out" not in json.loads(r.headers["x-axonsim-explain"])["decisions"][0]


def test_when_no_type_can_express_it_the_format_says_why() -> None:
    with Stack() as st:
        gw = st.serve([ch("anth", type="anthropic"), ch("resp", type="openai_responses")])
        r = httpx.post(f"{gw.url}/v1/chat/completions", headers=AUTH, timeout=20,
                       json={"model": "m", "n": 2, "messages": [{"role": "user", "content": "two takes"}]})
        assert r.status_code == 400
        err = r.json()["error"]
        assert err["param"] == "n" and "one" in err["message"]


def test_when_the_types_that_could_carry_it_are_switched_off_the_format_says_why() -> None:
    # Not a 503 naming the switched-off channel: the request could never be served as it is.
    with Stack() as st:
        gw = st.serve([ch("anth", type="anthropic"), ch("oai", enabled=False)])
        r = httpx.post(f"{gw.url}/v1/chat/completions", headers=AUTH, timeout=20,
                       json={"model": "m", "n": 2, "messages": [{"role": "user", "content": "two takes"}]})
        assert r.status_code == 400 and r.json()["error"]["param"] == "n"
        assert ask(gw, "one take").status_code == 200


def test_embeddings_share_the_chat_drivers_pools() -> None:
    # Built once per configuration: the embeddings driver made per request must not scan again.
    from server.embeddings import EmbeddingsDriver

    with Stack() as st:
        gw = mixed_pool(st)
        d = gw.proxy.rt.driver
        assert "m" in d.mixed and EmbeddingsDriver.of(d).mixed is d.mixed


def test_an_unfit_type_and_a_missing_capability_are_both_named() -> None:
    with Stack() as st:
        gw = st.serve([ch("oai", capabilities={"images": False}), ch("anth", type="anthropic"),
                       ch("resp", type="openai_responses")])
        r = httpx.post(f"{gw.url}/v1/chat/completions", headers=AUTH, timeout=20,
                       json={"model": "m", "n": 2, "messages": [{"role": "user", "content": [
                           {"type": "text", "text": "what is this?"}, IMAGE]}]})
        assert r.status_code == 400
        msg = r.json()["error"]["message"]
        assert "oai lacks images" in msg and "anth lacks a format for this request (n:" in msg
        assert "resp lacks a format for this request" in msg


def test_legacy_functions_reach_only_openai_chat_channels() -> None:
    # Another family would drop them silently (the model answering without the declared functions).
    body = {"model": "m", "messages": [{"role": "user", "content": "call f"}],
            "functions": [{"name": "f", "parameters": {"type": "object", "properties": {}}}], "function_call": "auto"}
    with Stack() as st:
        gw = mixed_pool(st)
        for _ in range(6):
            r = httpx.post(f"{gw.url}/v1/chat/completions", headers=AUTH, timeout=20, json=body)
            assert r.status_code == 200, r.text
        assert set(channels_of(gw, 6)) == {"oai"}
        anth = st.serve([ch("anth", type="anthropic")])
        r = httpx.post(f"{anth.url}/v1/chat/completions", headers=AUTH, timeout=20, json=body)
        assert r.status_code == 400 and r.json()["error"]["param"] in ("functions", "function_call")
        assert "tools" in r.json()["error"]["message"]
