"""Browsers calling the gateway from other origins (gateway.cors), over real HTTP: preflights, marked answers (streams and errors included), reload, config errors."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from axonsim.config import ConfigError, parse_config
from server.testing import GatewayServer, Stack

pytestmark = pytest.mark.timeout(60)

GW_KEY = "sk-gw-cors-test"
AUTH = {"Authorization": f"Bearer {GW_KEY}"}
APP = "https://app.example.com"
CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
CHANNEL = {"name": "c", "type": "openai", "api_keys": ["upstream-secret-cors-1"], "models": ["m"],
           "behavior": {"ttft": 0.01, "tokens_per_second": 2000, "output_tokens": 10}}


def gateway_section(cors: dict[str, Any] | None) -> dict[str, Any]:
    g: dict[str, Any] = {"api_keys": [{"key": GW_KEY, "project": "p"}], "trace_header": "x-my-trace"}
    if cors is not None:
        g["cors"] = cors
    return g


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    with Stack() as st:
        st.serve([CHANNEL], gateway=gateway_section({"allow_origins": [APP], "allow_origin_regex": r"https://.*\.corp\.test",
                                                     "max_age": 300}))
        yield st


@pytest.fixture(scope="module")
def gw(stack: Stack) -> GatewayServer:
    return stack.gateways[0]


@pytest.fixture(scope="module")
def client(gw: GatewayServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gw.url, timeout=20) as c:
        yield c


def preflight(client: httpx.Client, path: str, origin: str, headers: str = "authorization, content-type") -> httpx.Response:
    return client.options(path, headers={"Origin": origin, "Access-Control-Request-Method": "POST",
                                         "Access-Control-Request-Headers": headers})


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/messages", "/v1beta/models/m:streamGenerateContent",
                                  "/v1/models"])
def test_a_preflight_from_an_allowed_origin_is_answered(client: httpx.Client, path: str) -> None:
    # The SDKs send headers of their own (x-stainless-*, anthropic-version...): all are admitted.
    r = preflight(client, path, APP, "authorization, content-type, x-stainless-os, anthropic-version")
    assert r.status_code == 200, r.text
    assert r.headers["access-control-allow-origin"] == APP
    assert {m.strip() for m in r.headers["access-control-allow-methods"].split(",")} == {"GET", "POST"}
    assert "x-stainless-os" in r.headers["access-control-allow-headers"].lower()
    assert r.headers["access-control-max-age"] == "300"
    assert "access-control-allow-credentials" not in r.headers  # a key travels in a header, never a cookie


def test_a_preflight_from_another_origin_is_refused(client: httpx.Client) -> None:
    r = preflight(client, "/v1/chat/completions", "https://evil.example")
    assert r.status_code == 400
    assert "access-control-allow-origin" not in r.headers


def test_an_origin_matching_the_regex_is_allowed(client: httpx.Client) -> None:
    r = preflight(client, "/v1/chat/completions", "https://tools.corp.test")
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "https://tools.corp.test"
    assert preflight(client, "/v1/chat/completions", "https://tools.corp.test.evil.example").status_code == 400


def test_an_answer_to_an_allowed_origin_is_readable_by_its_page(client: httpx.Client) -> None:
    r = client.post("/v1/chat/completions", json=CHAT, headers={**AUTH, "Origin": APP})
    assert r.status_code == 200, r.text
    assert r.headers["access-control-allow-origin"] == APP
    assert "origin" in r.headers["vary"].lower()
    exposed = {h.strip() for h in r.headers["access-control-expose-headers"].lower().split(",")}
    assert {"x-request-id", "x-my-trace", "x-axonsim-overhead-ms", "retry-after"} <= exposed
    assert r.headers["x-request-id"] and r.headers["x-my-trace"]  # the gateway's own headers are all still there


def test_a_stream_and_an_error_are_marked_too(client: httpx.Client) -> None:
    with client.stream("POST", "/v1/chat/completions", json={**CHAT, "stream": True},
                       headers={**AUTH, "Origin": APP}) as r:
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == APP
        text = r.read().decode()
    assert text.rstrip().endswith("data: [DONE]")
    # a page must be able to read why it was refused
    for headers, status in (({"Origin": APP}, 401), ({**AUTH, "Origin": APP}, 404)):
        body = CHAT if status == 401 else {**CHAT, "model": "nope"}
        r = client.post("/v1/chat/completions", json=body, headers=headers)
        assert r.status_code == status and r.headers["access-control-allow-origin"] == APP
        assert r.json()["error"]["message"]


def test_a_refused_body_is_marked_too(gw: GatewayServer) -> None:
    """A body HTTP cannot read (a broken chunk) is answered by the request's handler: through the CORS
    layer, so a page can read the answer and the request id it carries."""
    port = int(gw.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(f"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\norigin: {APP}\r\nauthorization: Bearer {GW_KEY}"
                  "\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n"
                  "5\r\n{\"mod\r\nzz-not-a-size\r\n".encode())
        s.settimeout(10)
        answer = b""
        while chunk := s.recv(65536):
            answer += chunk
    head = answer.partition(b"\r\n\r\n")[0].lower()
    assert head.startswith(b"http/1.1 400 "), answer[:300]
    assert f"access-control-allow-origin: {APP}".encode() in head and b"x-request-id: req_" in head
    assert b"x-request-id" in head.split(b"access-control-expose-headers: ", 1)[1].split(b"\r\n")[0]


def test_answers_to_other_origins_and_to_non_browser_clients_carry_no_grant(client: httpx.Client) -> None:
    r = client.post("/v1/chat/completions", json=CHAT, headers={**AUTH, "Origin": "https://evil.example"})
    assert r.status_code == 200  # served (CORS is the browser's rule), but its page may not read it
    assert "access-control-allow-origin" not in r.headers
    r = client.post("/v1/chat/completions", json=CHAT, headers=AUTH)
    assert r.status_code == 200 and "access-control-allow-origin" not in r.headers


def test_without_cors_nothing_changes_and_a_reload_turns_it_on_and_off() -> None:
    with Stack() as st:
        g = st.serve([CHANNEL], gateway=gateway_section(None))
        with httpx.Client(base_url=g.url, timeout=20) as c:
            assert preflight(c, "/v1/chat/completions", APP).status_code == 405
            r = c.post("/v1/chat/completions", json=CHAT, headers={**AUTH, "Origin": APP})
            assert r.status_code == 200 and "access-control-allow-origin" not in r.headers

            data = {**st.config_dict, "gateway": gateway_section({"allow_origins": ["*"]})}
            st.call(g.proxy.reload(parse_config(data, "<test>")))
            r = preflight(c, "/v1/chat/completions", "https://anywhere.example")
            assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "*"
            r = c.post("/v1/chat/completions", json=CHAT, headers={**AUTH, "Origin": "https://anywhere.example"})
            assert r.headers["access-control-allow-origin"] == "*"

            data = {**st.config_dict, "gateway": gateway_section({"allow_origins": [APP]})}
            st.call(g.proxy.reload(parse_config(data, "<test>")))  # another CORS section: the new one holds
            assert preflight(c, "/v1/chat/completions", "https://anywhere.example").status_code == 400
            assert preflight(c, "/v1/chat/completions", APP).headers["access-control-allow-origin"] == APP

            st.call(g.proxy.reload(parse_config({**st.config_dict, "gateway": gateway_section(None)}, "<test>")))
            assert preflight(c, "/v1/chat/completions", APP).status_code == 405


def test_origins_are_compared_as_browsers_send_them() -> None:
    # Browsers send scheme and host in lower case and leave a default port out; Starlette compares strings.
    data = {"gateway": gateway_section({"allow_origins": ["HTTPS://App.Example.com:443", "http://LOCALHOST:80",
                                                         "http://localhost:8080"]}),
            "channels": [{**CHANNEL, "base_url": "http://x"}]}
    cors = parse_config(data, "<test>").gateway.cors
    assert cors is not None
    assert cors.allow_origins == ["https://app.example.com", "http://localhost", "http://localhost:8080"]


@pytest.mark.parametrize(("cors", "words"), [
    ({}, "name the allowed origins"),
    ({"allow_origins": ["https://app.example.com/"]}, "is not an origin"),
    ({"allow_origins": ["app.example.com"]}, "is not an origin"),
    ({"allow_origin_regex": "https://(unclosed"}, "not a regular expression"),
    ({"allow_origins": ["*"], "allow_headers": ["bad header"]}, "not an HTTP header name"),
    ({"allow_origins": ["*"], "allow_credentials": True}, "allow_credentials"),
])
def test_a_bad_cors_section_is_a_config_error(cors: dict[str, Any], words: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse_config({"gateway": gateway_section(cors), "channels": [{**CHANNEL, "base_url": "http://x"}]}, "<test>")
    assert words in str(e.value)
