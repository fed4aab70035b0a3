"""Relaying a same-format stream: an OpenAI Chat client's stream from an OpenAI Chat channel goes out as
the upstream's own chunks (StreamParser(relay=True) → RelayChunk → RelayRenderer), while the gateway
still reads the commit point, finish reasons, usage and errors from every chunk."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from test_format_openai_chat import split_feed

from axonsim.config import parse_config
from axonsim.formats import openai_chat as oc
from axonsim.unified import FinishEvent, RelayChunk, StreamAggregator, StreamEvent, UsageEvent
from server.proxy import Proxy
from server.testing import Stack
from server.upstream import MockReply, MockUpstream

FIXTURES = Path(__file__).parent / "fixtures" / "providers" / "openai"
STREAMS = sorted(FIXTURES.glob("*.stream.jsonl"))
GW_KEY = "sk-gw-relay"
UP_KEY = "opaque-upstream-credential-789"


def frames(path: Path) -> list[bytes]:
    """A recorded stream's events as the provider framed them, `data: [DONE]` last."""
    out = [b"data: " + json.loads(line)["Data"].encode() + b"\n\n"
           for line in path.read_text().splitlines() if line.strip()]
    return out if out[-1] == b"data: [DONE]\n\n" else [*out, b"data: [DONE]\n\n"]


def feed(parser: oc.StreamParser, data: bytes, rng: random.Random) -> list[StreamEvent]:
    return split_feed(data, rng, parser)  # any chunking of the bytes


def has_choices(frame: bytes) -> bool:
    return frame != b"data: [DONE]\n\n" and bool(orjson.loads(frame[6:])["choices"])


def has_content(frame: bytes) -> bool:
    chunk = orjson.loads(frame[6:])
    return any(c.get("finish_reason") or any(c["delta"].get(k) for k in
                                             ("content", "reasoning_content", "reasoning", "refusal", "tool_calls"))
               for c in chunk["choices"])


@pytest.mark.parametrize("path", STREAMS, ids=[p.name for p in STREAMS])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_relay_parser_hands_over_the_chunks_as_they_came(path: Path, seed: int) -> None:
    recorded = frames(path)
    data = b"".join(recorded)
    relayed = feed(oc.StreamParser(relay=True), data, random.Random(seed))
    plain = feed(oc.StreamParser(), data, random.Random(seed))
    chunks = [ev for ev in relayed if isinstance(ev, RelayChunk)]
    # Every chunk with choices, byte for byte and in order; the usage-only chunk and [DONE] are not relayed.
    assert [c.data for c in chunks] == [f for f in recorded if has_choices(f)]
    assert [c.commits for c in chunks] == [has_content(c.data) for c in chunks]
    # What the gateway reads of the stream is what the full parser reads.
    def tail(evs: list[StreamEvent]) -> list[Any]:
        return [ev for ev in evs if isinstance(ev, FinishEvent | UsageEvent)]

    assert tail(relayed) == tail(plain) and tail(plain)
    assert relayed[0] == plain[0]  # the StreamStart


@pytest.mark.parametrize("path", STREAMS, ids=[p.name for p in STREAMS])
@pytest.mark.parametrize("include_usage", [True, False])
def test_a_relayed_stream_reads_like_the_rendered_one(path: Path, include_usage: bool) -> None:
    data = b"".join(frames(path))
    req = oc.check_request(orjson.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}],
                                         "stream": True, "stream_options": {"include_usage": include_usage}}))
    relay = oc.RelayRenderer(req)
    out = b"".join(relay.render(ev) for ev in feed(oc.StreamParser(relay=True), data, random.Random(7)))
    out += relay.finish()
    rendered = oc.StreamRenderer(req)
    ref = b"".join(rendered.render(ev) for ev in feed(oc.StreamParser(), data, random.Random(7))) + rendered.finish()

    def read(raw: bytes) -> Any:
        agg = StreamAggregator()
        for ev in feed(oc.StreamParser(), raw, random.Random(3)):
            agg.add(ev)
        return agg.response()

    mine, theirs = read(out), read(ref)
    assert mine.message == theirs.message and mine.finish_reason == theirs.finish_reason
    assert out.endswith(b"data: [DONE]\n\n") and out.count(b"[DONE]") == 1
    last = orjson.loads(out.split(b"\n\n")[-3][6:])  # the chunk before [DONE]
    if include_usage:
        assert last["choices"] == [] and last["usage"] == orjson.loads(ref.split(b"\n\n")[-3][6:])["usage"]
    else:  # no usage-only chunk (a provider that puts usage in a chunk with choices is relayed as it is)
        assert all(orjson.loads(e)["choices"] for e in sse(out)[:-1])


def sse(raw: bytes) -> list[bytes]:
    return [line[6:] for line in raw.split(b"\n") if line.startswith(b"data: ")]


# -- through the gateway -----------------------------------------------------------------------------


def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> bytes:
    obj = {"id": "chatcmpl-relay", "object": "chat.completion.chunk", "created": 1700000000, "model": "m",
           "system_fingerprint": "fp_relayed_as_is", "usage": None,
           "choices": [{"index": 0, "delta": delta, "finish_reason": finish}], **extra}
    return b"data: " + orjson.dumps(obj) + b"\n\n"


USAGE = (b'data: {"id":"chatcmpl-relay","object":"chat.completion.chunk","created":1700000000,"model":"m",'
         b'"choices":[],"usage":{"prompt_tokens":7,"completion_tokens":3,"total_tokens":10}}\n\n')
GOOD = [chunk({"role": "assistant", "content": ""}), chunk({"content": "Hel"}), chunk({"content": "lo"}),
        chunk({}, "stop"), USAGE, b"data: [DONE]\n\n"]


def gateway_stream(chunks: list[Any], body: dict[str, Any], mapping: bool = False) -> tuple[httpx.Response, Proxy,
                                                                                            MockUpstream]:
    channel: dict[str, Any] = {"name": "x", "base_url": "http://x.test/v1", "api_keys": [UP_KEY], "models": ["m"]}
    if mapping:
        channel["model_mapping"] = {"alias": "m"}
    cfg = parse_config({"gateway": {"api_keys": [{"key": GW_KEY}]}, "channels": [channel]})
    up = MockUpstream(lambda req: MockReply(200, headers={"content-type": "text/event-stream"}, chunks=chunks))
    proxy = Proxy(cfg, up, seed=1)
    with Stack() as st:
        g = st.gateway(proxy)
        with httpx.Client(base_url=g.url, timeout=10) as c:
            r = c.post("/v1/chat/completions", headers={"Authorization": f"Bearer {GW_KEY}"},
                       json={"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True, **body})
    return r, proxy, up


@pytest.mark.parametrize("include_usage", [True, False])
def test_the_gateway_relays_a_same_format_stream(include_usage: bool) -> None:
    r, proxy, up = gateway_stream(GOOD, {"stream_options": {"include_usage": include_usage}})
    assert r.status_code == 200
    events = sse(r.content)
    assert events[-1] == b"[DONE]"
    # The upstream's own chunks (a field the renderer never writes proves it), the role chunk first.
    assert [e for e in events[:4]] == [c[6:-2] for c in GOOD[:4]]
    if include_usage:
        assert orjson.loads(events[4])["usage"]["completion_tokens"] == 3 and len(events) == 6
    else:
        assert len(events) == 5  # the usage chunk the gateway asked for is not passed on
    assert orjson.loads(up.requests[0].body)["stream_options"]["include_usage"] is True
    rec = proxy.recent[-1]
    assert rec["usage"]["completion_tokens"] == 3 and rec["outcome"] == "completed" and rec["status"] == 200


def test_an_in_stream_error_is_scrubbed_not_relayed() -> None:
    err = b'data: {"error": {"message": "quota gone for key ' + UP_KEY.encode() + b'", "type": "server_error"}}\n\n'
    r, proxy, _ = gateway_stream([*GOOD[:2], err], {})
    assert r.status_code == 200
    assert UP_KEY.encode() not in r.content and b"[redacted]" in r.content
    events = sse(r.content)
    assert events[:2] == [c[6:-2] for c in GOOD[:2]]
    assert orjson.loads(events[-1])["error"]["message"].startswith("quota gone")
    assert proxy.recent[-1]["outcome"] == "failed"


def test_a_mapped_model_is_rendered_not_relayed() -> None:
    """The channel's model is not the client's name for it: the client gets chunks in its own name."""
    r, _, _ = gateway_stream(GOOD, {"model": "alias"}, mapping=True)
    assert r.status_code == 200
    assert b"fp_relayed_as_is" not in r.content
    chunks = [orjson.loads(e) for e in sse(r.content)[:-1]]
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"]) == "Hello"
