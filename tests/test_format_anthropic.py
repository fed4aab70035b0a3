"""Tests of the Anthropic Messages format: recorded traffic, streams, round trips, errors, bad input."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import orjson
import pytest
from anthropic.lib.streaming._messages import accumulate_event
from anthropic.types import Message as SDKMessage
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from native_finish import without_native

from axonsim.formats import FormatError, get_format
from axonsim.formats import anthropic as A
from axonsim.formats import openai_chat as oc
from axonsim.formats.sse import SSEDecoder
from axonsim.unified import (
    Error,
    ErrorEvent,
    ErrorKind,
    FinishEvent,
    ImagePart,
    Message,
    NativeBlock,
    ReasoningDelta,
    ReasoningPart,
    Request,
    Response,
    ResponseFormat,
    Sampling,
    StreamAggregator,
    StreamEvent,
    StreamStart,
    TextDelta,
    TextPart,
    Tool,
    ToolCall,
    ToolCallDelta,
    ToolChoice,
    ToolResultPart,
    Usage,
    UsageEvent,
)

FIXTURES = Path(__file__).parent / "fixtures" / "providers" / "anthropic"
REQUESTS = sorted(p.name for p in FIXTURES.glob("*.request.json"))
PAIRS = ["stop", "think", "tool"]  # anthropic-<name>.stream.jsonl ↔ anthropic-<name>.response.json
FAST = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
# \Z, not $: `$` also matches before a final newline, and an id ending in one is not valid
ID_RE = re.compile(r"^[a-zA-Z0-9_-]+\Z")


def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def stream_bytes(name: str) -> bytes:
    """A recorded *.stream.jsonl replayed as the SSE bytes the provider sent."""
    out = bytearray()
    for line in (FIXTURES / name).read_text().splitlines():
        if not line.strip():
            continue
        rec = json.loads(line)
        if rec["Type"]:
            out += f"event: {rec['Type']}\n".encode()
        out += b"data: " + rec["Data"].encode() + b"\n\n"
    return bytes(out)


def parse_all(data: bytes, splits: list[int] | None = None) -> list[StreamEvent]:
    parser = A.StreamParser()
    events: list[StreamEvent] = []
    cuts = sorted({0, len(data), *(splits or [])})
    for a, b in zip(cuts, cuts[1:], strict=False):
        events += parser.feed(data[a:b])
    return events + parser.close()


def aggregate(events: list[StreamEvent]) -> Response:
    agg = StreamAggregator()
    for ev in events:
        agg.add(ev)
    return agg.response()


def render_stream(events: list[StreamEvent], model: str = "claude-test") -> bytes:
    r = A.StreamRenderer(Request(model=model, messages=[]))
    return b"".join(r.render(ev) for ev in events) + r.finish()


def sse_events(data: bytes) -> list[tuple[str, dict[str, Any]]]:
    dec = SSEDecoder()
    return [(ev.event, json.loads(ev.data)) for ev in dec.feed(data) + dec.close()]


def sdk_accumulate(data: bytes) -> Any:
    """What the official SDK's MessageStream rebuilds from our SSE bytes."""
    snap = None
    bufs: dict[int, bytes] = {}
    for name, payload in sse_events(data):
        assert name == payload["type"], "the SDK skips events whose event: line is missing or differs"
        if name in ("ping", "error"):
            continue
        snap = accumulate_event(event=payload, current_snapshot=snap, json_bufs=bufs)
    return snap


def calls_of(resp: Response) -> list[tuple[str, str, Any]]:
    # Streams carry the provider's own argument text, non-stream bodies our re-serialised JSON.
    return [(c.id, c.name, json.loads(c.arguments)) for c in resp.message.tool_calls]


def reasoning_of(resp: Response) -> tuple[str, str | None]:
    parts = [p for p in resp.message.content if isinstance(p, ReasoningPart) and not p.redacted]
    return "".join(p.text for p in parts), next((p.signature for p in reversed(parts) if p.signature), None)


# --------------------------------------------------------------------------------------------------
# Recorded traffic


def test_format_is_registered() -> None:
    assert get_format("anthropic") is A


@pytest.mark.parametrize("name", REQUESTS)
def test_every_recorded_request_parses(name: str) -> None:
    raw = json.loads(fixture(name))
    req = A.parse_request(fixture(name))
    assert req.model == raw["model"]
    assert req.sampling.max_tokens == raw["max_tokens"]
    assert len(req.tools) == len(raw.get("tools", []))
    assert req.extra_body == {}


def test_claude_code_request_keeps_cache_control_ids_and_user() -> None:
    raw = json.loads(fixture("anthropic-claude-code2.request.json"))
    req = A.parse_request(fixture("anthropic-claude-code2.request.json"))
    system = req.messages[0]
    assert system.role == "system"
    assert [p.text for p in system.content] == [b["text"] for b in raw["system"]]
    assert system.content[0].cache_control == {"type": "ephemeral"}
    assert req.user == raw["metadata"]["user_id"]
    assert req.sampling.temperature == 1.0
    tool_msgs = [m for m in req.messages if m.role == "tool"]
    results = [p for m in tool_msgs for p in m.content]
    assert all(isinstance(p, ToolResultPart) for p in results)
    calls = {c.id: c for m in req.messages for c in m.tool_calls}
    # every result answers a call and learned its name from it (Gemini needs the name)
    assert all(p.tool_call_id in calls and p.name == calls[p.tool_call_id].name for p in results)
    assert any(c.cache_control == {"type": "ephemeral"} for c in calls.values())
    assert results[-1].cache_control == {"type": "ephemeral"}
    grep = next(c for c in calls.values() if c.name == "Grep")
    assert json.loads(grep.arguments)["pattern"] == "stream|Stream|SSE|sse"


def _wire_normal(d: dict[str, Any]) -> dict[str, Any]:
    """Spellings Anthropic treats as equal: string content ≡ one text block, is_error false ≡ absent."""
    d = json.loads(json.dumps(d))
    if isinstance(d.get("system"), str):
        d["system"] = [{"type": "text", "text": d["system"]}]
    for m in d["messages"]:
        if isinstance(m["content"], str):
            m["content"] = [{"type": "text", "text": m["content"]}]
        for b in m["content"]:
            if b.get("type") == "tool_result":
                if b.get("is_error") is False:
                    del b["is_error"]
                c = b.get("content")
                if isinstance(c, list) and len(c) == 1 and c[0]["type"] == "text" and "cache_control" not in c[0]:
                    b["content"] = c[0]["text"]
    return d


@pytest.mark.parametrize("name", REQUESTS)
def test_recorded_request_passes_through_unchanged(name: str) -> None:
    # Claude Code → gateway → Anthropic: the upstream body is the client's body, cache breakpoints included.
    raw = json.loads(fixture(name))
    out = json.loads(A.build_request(A.parse_request(fixture(name)), raw["model"]))
    assert _wire_normal(out) == _wire_normal(raw)


def test_multimodal_request_image() -> None:
    req = A.parse_request(fixture("anthropic-multimodal-inbound.request.json"))
    assert req.messages[0].role == "system"
    assert req.messages[0].text() == "You are a helpful assistant that can analyze images."
    img = req.messages[1].content[1]
    assert isinstance(img, ImagePart)
    assert img.media_type == "image/jpeg" and img.data and img.data.startswith("/9j/") and img.url is None


def test_simple_request_sampling() -> None:
    req = A.parse_request(fixture("anthropic-simple-inbound.request.json"))
    assert req.sampling.temperature == 0.7
    assert req.sampling.stop == ["Human:", "Assistant:"]
    assert req.stream is False


@pytest.mark.parametrize("name", PAIRS)
def test_recorded_response_parses_and_validates_in_sdk(name: str) -> None:
    raw = json.loads(fixture(f"anthropic-{name}.response.json"))
    resp = A.parse_response(fixture(f"anthropic-{name}.response.json"))
    assert resp.id == raw["id"] and resp.model == raw["model"]
    assert resp.usage is not None
    assert resp.usage.prompt_tokens == raw["usage"]["input_tokens"]
    assert resp.usage.completion_tokens == raw["usage"]["output_tokens"]
    assert resp.usage.total_tokens == resp.usage.prompt_tokens + resp.usage.completion_tokens
    assert resp.finish_reason == {"end_turn": "stop", "tool_use": "tool_calls"}[raw["stop_reason"]]
    uses = [b for b in raw["content"] if b["type"] == "tool_use"]
    assert calls_of(resp) == [(b["id"], b["name"], b["input"]) for b in uses]
    # and back out to an Anthropic client, as the SDK reads it
    again = SDKMessage.model_validate(json.loads(A.render_response(resp)))
    assert [b.type for b in again.content] == [b["type"] for b in raw["content"]]
    assert again.usage.input_tokens == raw["usage"]["input_tokens"]
    assert again.stop_reason == raw["stop_reason"]


@pytest.mark.parametrize("name", PAIRS)
def test_recorded_stream_aggregates_to_the_response(name: str) -> None:
    streamed = aggregate(parse_all(stream_bytes(f"anthropic-{name}.stream.jsonl")))
    whole = A.parse_response(fixture(f"anthropic-{name}.response.json"))
    assert (streamed.id, streamed.model) == (whole.id, whole.model)
    assert streamed.message.text() == whole.message.text()
    assert reasoning_of(streamed) == reasoning_of(whole)
    assert calls_of(streamed) == calls_of(whole)
    assert streamed.finish_reason == whole.finish_reason
    assert streamed.usage == whole.usage


@pytest.mark.parametrize("name", PAIRS)
@FAST
@given(data=st.data())
def test_recorded_stream_any_chunking(name: str, data: st.DataObject) -> None:
    raw = stream_bytes(f"anthropic-{name}.stream.jsonl")
    splits = data.draw(st.lists(st.integers(0, len(raw)), max_size=40))
    assert parse_all(raw, splits) == parse_all(raw)


@pytest.mark.parametrize("name", PAIRS)
def test_recorded_stream_rerendered_for_the_sdk(name: str) -> None:
    events = parse_all(stream_bytes(f"anthropic-{name}.stream.jsonl"))
    out = render_stream(events)
    snap = sdk_accumulate(out)
    raw = json.loads(fixture(f"anthropic-{name}.response.json"))
    assert snap.id == raw["id"] and snap.model == raw["model"]
    assert [b.type for b in snap.content] == [b["type"] for b in raw["content"]]
    for mine, theirs in zip(snap.content, raw["content"], strict=True):
        if theirs["type"] == "text":
            assert mine.text == theirs["text"]
        elif theirs["type"] == "thinking":
            assert mine.thinking == theirs["thinking"]
        else:
            assert (mine.id, mine.name, mine.input) == (theirs["id"], theirs["name"], theirs["input"])
    assert snap.stop_reason == raw["stop_reason"]
    assert snap.usage.input_tokens == raw["usage"]["input_tokens"]
    assert snap.usage.output_tokens == raw["usage"]["output_tokens"]
    # and our own parser reads our rendering back to the same aggregate
    assert aggregate(parse_all(out)) == aggregate(events)


# --------------------------------------------------------------------------------------------------
# The stream renderer


def _shape(data: bytes) -> None:
    """Anthropic's stream grammar, as the SDK's MessageStream needs it."""
    evs = sse_events(data)
    names = [n for n, _ in evs]
    assert names[0] == "message_start" and names[-1] == "message_stop"
    assert names.count("message_delta") == 1 and names[-2] == "message_delta"
    assert "usage" in evs[-2][1] and "output_tokens" in evs[-2][1]["usage"]
    started: list[int] = []
    open_: int | None = None
    for name, p in evs:
        assert name == p["type"]
        if name == "content_block_start":
            assert open_ is None, "a block opened before the previous one closed"
            assert p["index"] == len(started), "indices must run 0..n-1 in start order"
            started.append(p["index"])
            open_ = p["index"]
        elif name == "content_block_stop":
            assert p["index"] == open_
            open_ = None
        elif name == "content_block_delta":
            assert p["index"] == open_, "a delta to a block that is not the open one"
    assert open_ is None


def test_interleaved_parallel_calls_become_whole_blocks_one_after_another() -> None:
    # OpenAI-shaped upstreams announce every call, then interleave their fragments (and may repeat a
    # call's start). Anthropic's blocks cannot interleave: the first call streams live, the others
    # wait and follow it whole.
    events: list[StreamEvent] = [
        StreamStart(id="msg_1", model="m"),
        ToolCallDelta(index=0, id="call_b", name="g"),
        ToolCallDelta(index=1, id="call_a"),
        ToolCallDelta(index=0, arguments='{"x":'),
        ToolCallDelta(index=1, name="f", arguments='{"y"'),
        ToolCallDelta(index=0, arguments="1}"),
        ToolCallDelta(index=1, id="call_a", name="f"),
        ToolCallDelta(index=1, arguments=":2}"),
        ToolCallDelta(index=2, id="call_c", name="h", arguments="{}"),
        FinishEvent(reason="tool_calls"),
        UsageEvent(usage=Usage(prompt_tokens=3, completion_tokens=9)),
    ]
    out = render_stream(events)
    _shape(out)
    snap = sdk_accumulate(out)
    assert [(b.id, b.name, b.input) for b in snap.content] == [
        ("call_b", "g", {"x": 1}), ("call_a", "f", {"y": 2}), ("call_c", "h", {})]
    assert snap.stop_reason == "tool_use"
    # a call held behind the open one is released, whole, by the next other content too
    r = A.StreamRenderer(Request(model="m", messages=[]))
    data = b"".join(r.render(ev) for ev in [ToolCallDelta(index=0, id="c0", name="a", arguments="{}"),
                                            ToolCallDelta(index=1, id="c1", name="b", arguments="{}"),
                                            TextDelta(text="done")]) + r.finish()
    _shape(data)
    assert [b.type for b in sdk_accumulate(data).content] == ["tool_use", "tool_use", "text"]


def test_parallel_calls_one_after_another_stream_as_they_come() -> None:
    # The usual order (a call's fragments, then the next call's): nothing is held back; a call
    # starts its block once the open one's arguments are whole JSON.
    r = A.StreamRenderer(Request(model="m", messages=[]))
    events = [ToolCallDelta(index=0, id="c0", name="a"), ToolCallDelta(index=0, arguments='{"x":'),
              ToolCallDelta(index=0, arguments="1}"), ToolCallDelta(index=1, id="c1", name="b"),
              ToolCallDelta(index=1, arguments='{"y":2}'), FinishEvent(reason="tool_calls")]
    written = [r.render(ev) for ev in events]
    assert all(written[:5]) and b'"index":1' in written[3] and b'"partial_json":"{\\"y\\":2}"' in written[4]
    data = b"".join(written) + r.finish()
    _shape(data)
    assert [(b.id, b.input) for b in sdk_accumulate(data).content] == [("c0", {"x": 1}), ("c1", {"y": 2})]


@pytest.mark.parametrize("fragments, expected", [
    (["{'city': ", "'Paris'}"], {}),  # single quotes: the SDK raised "key must be a string"
    (['{"city": "Paris", ', "'units': 'c'}"], {"city": "Paris"}),  # the part before the fault
    (["[1, 2]"], {}),  # not an object
    ([" ", '{"a": 1}'], {"a": 1}),  # a leading space alone: the SDK raised on it
    (['{"a": 1}', ' trailing'], {"a": 1}),
    (['{"a": NaN}'], {}),
])
def test_malformed_tool_arguments_never_break_the_sdks_stream(fragments: list[str], expected: dict[str, Any]) -> None:
    # Anthropic's SDK parses every input_json_delta as it comes and raises at one that cannot
    # begin a JSON object. Other families' arguments are the model's text: only the valid start of
    # them is passed on.
    events: list[StreamEvent] = [StreamStart(id="msg_1", model="m"), ToolCallDelta(index=0, id="c0", name="f")]
    events += [ToolCallDelta(index=0, arguments=f) for f in fragments]
    events += [FinishEvent(reason="tool_calls"), UsageEvent(usage=Usage(prompt_tokens=1, completion_tokens=2))]
    out = render_stream(events)
    _shape(out)
    snap = sdk_accumulate(out)
    assert [(b.id, b.name, b.input) for b in snap.content] == [("c0", "f", expected)]


def test_a_held_call_goes_live_once_the_open_calls_arguments_break() -> None:
    # Interleaved parallel calls wait behind the open one until its arguments are finished; broken
    # arguments are finished too (nothing more of them is passed on), so the next call need not
    # wait for the end of the answer.
    r = A.StreamRenderer(Request(model="m", messages=[]))
    events = [ToolCallDelta(index=0, id="c0", name="a", arguments='{"x": '),
              ToolCallDelta(index=1, id="c1", name="b", arguments='{"y": 2}'),
              ToolCallDelta(index=0, arguments="'one'}"), ToolCallDelta(index=0, arguments='"1"}')]
    written = [r.render(ev) for ev in events]
    assert b'"id":"c1"' not in written[1]  # held behind c0
    assert b'"id":"c1"' in written[2] and written[3] == b""
    data = b"".join(written) + r.finish()
    _shape(data)
    assert [(b.id, b.input) for b in sdk_accumulate(data).content] == [("c0", {}), ("c1", {"y": 2})]


def test_whitespace_after_a_whole_call_does_not_reopen_it() -> None:
    # A's arguments are whole, so B goes live; A's trailing "\n" then must not be a delta to A's
    # closed block (orjson takes trailing whitespace as part of a whole value).
    events: list[StreamEvent] = [
        ToolCallDelta(index=0, id="a", name="f", arguments='{"a":1}'), ToolCallDelta(index=1, id="b", name="g"),
        ToolCallDelta(index=1, arguments='{"b":'), ToolCallDelta(index=0, arguments="\n"),
        ToolCallDelta(index=1, arguments="2}"), FinishEvent(reason="tool_calls")]
    out = render_stream(events)
    _shape(out)
    assert [(b.id, b.input) for b in sdk_accumulate(out).content] == [("a", {"a": 1}), ("b", {"b": 2})]


def test_whitespace_inside_an_unfinished_call_closed_by_text_is_kept() -> None:
    events: list[StreamEvent] = [ToolCallDelta(index=0, id="a", name="f", arguments='{"q":"a'), TextDelta(text="x"),
                                 ToolCallDelta(index=0, arguments=" "), ToolCallDelta(index=0, arguments='b"}'),
                                 FinishEvent(reason="tool_calls")]
    assert sdk_accumulate(render_stream(events)).content[0].input == {"q": "a b"}


def test_renderer_emits_each_event_immediately() -> None:
    r = A.StreamRenderer(Request(model="m", messages=[]))
    first = r.render(TextDelta(text="He"))  # no StreamStart: message_start comes with the first event
    assert first.startswith(b"event: message_start\n")
    assert b'"text_delta"' in first and b'"He"' in first
    assert r.render(TextDelta(text="llo")).startswith(b"event: content_block_delta\n")
    assert r.render(UsageEvent(usage=Usage(prompt_tokens=3, completion_tokens=2))) == b""
    tail = r.finish()
    _shape(first + tail)
    assert r.finish() == b"" and r.render(TextDelta(text="late")) == b""


@settings(max_examples=150, deadline=None)
@given(st.text(max_size=12), st.booleans())
def test_renderer_text_template_is_the_generic_delta(text: str, after_reasoning: bool) -> None:
    # A text delta into the open text block comes from a byte template; it must be exactly the event
    # the generic path serialises (block index after a reasoning block included).
    r = A.StreamRenderer(Request(model="m", messages=[]))
    r.render(StreamStart(id="msg_1", model="m"))
    if after_reasoning:
        r.render(ReasoningDelta(text="hm"))
    r.render(TextDelta(text="first"))
    got = r.render(TextDelta(text=text))
    assert got == (r._delta({"type": "text_delta", "text": text}) if text else b"")


def test_renderer_switches_blocks_and_replays_signatures() -> None:
    events: list[StreamEvent] = [
        StreamStart(id="msg_1", model="claude-x", usage=Usage(prompt_tokens=50, cached_tokens=30, cache_write_tokens=5)),
        ReasoningDelta(text="let me "),
        ReasoningDelta(text="think"),
        ReasoningDelta(signature="sig-1", signature_provider="anthropic"),
        ReasoningDelta(text="again"),  # after a signature: a new thinking block
        ReasoningDelta(signature="sig-2", signature_provider="anthropic"),
        ReasoningDelta(redacted_data="opaque"),
        TextDelta(text="Calling."),
        ToolCallDelta(index=0, id="call.1:x", name="f", arguments='{"a"'),
        ToolCallDelta(index=0, arguments=": 1}"),
        ToolCallDelta(index=1, id="call_2", name="g", arguments=""),
        ToolCallDelta(index=1, arguments="{}"),
        FinishEvent(reason="tool_calls"),
        UsageEvent(usage=Usage(prompt_tokens=50, completion_tokens=9, cached_tokens=30, cache_write_tokens=5)),
    ]
    out = render_stream(events)
    _shape(out)
    snap = sdk_accumulate(out)
    assert [b.type for b in snap.content] == ["thinking", "thinking", "redacted_thinking", "text", "tool_use", "tool_use"]
    assert (snap.content[0].thinking, snap.content[0].signature) == ("let me think", "sig-1")
    assert (snap.content[1].thinking, snap.content[1].signature) == ("again", "sig-2")
    assert snap.content[2].data == "opaque"
    assert ID_RE.match(snap.content[4].id) and snap.content[4].input == {"a": 1}
    assert snap.content[5].id == "call_2" and snap.content[5].input == {}
    assert snap.stop_reason == "tool_use"
    u = snap.usage
    assert (u.input_tokens, u.cache_read_input_tokens, u.cache_creation_input_tokens, u.output_tokens) == (15, 30, 5, 9)


def test_renderer_stop_with_tool_calls_says_tool_use() -> None:
    out = render_stream([ToolCallDelta(index=0, id="c", name="f", arguments="{}"), FinishEvent(reason="stop")])
    assert sdk_accumulate(out).stop_reason == "tool_use"


def test_renderer_stream_without_content_is_well_formed() -> None:
    out = render_stream([])
    _shape(out)
    assert sdk_accumulate(out).stop_reason == "end_turn"


def test_renderer_error_event_then_nothing() -> None:
    r = A.StreamRenderer(Request(model="m", messages=[]))
    head = r.render(TextDelta(text="partial"))
    err = r.render(ErrorEvent(error=Error(kind=ErrorKind.OVERLOADED, status=503, message="Overloaded")))
    assert err == b'event: error\ndata: {"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}\n\n'
    assert r.finish() == b"" and r.error(Error(kind=ErrorKind.TIMEOUT, status=504, message="x")) == b""
    # our parser reads it back as an error, not as a truncated stream
    events = parse_all(head + err)
    assert isinstance(events[-1], ErrorEvent) and events[-1].error.kind is ErrorKind.OVERLOADED


# --------------------------------------------------------------------------------------------------
# The stream parser


def _sse(*events: tuple[str, dict[str, Any]]) -> bytes:
    return b"".join(f"event: {n}\ndata: {json.dumps(p)}\n\n".encode() for n, p in events)


START = ("message_start", {"type": "message_start", "message": {
    "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-x", "content": [],
    "stop_reason": None, "stop_sequence": None,
    "usage": {"input_tokens": 10, "cache_read_input_tokens": 100, "cache_creation_input_tokens": 20, "output_tokens": 1}}})
STOP = ("message_stop", {"type": "message_stop"})


def test_parser_usage_cache_and_cumulative_output() -> None:
    data = _sse(START, ("ping", {"type": "ping"}),
                ("message_delta", {"type": "message_delta", "delta": {"stop_reason": "max_tokens", "stop_sequence": None},
                                   "usage": {"output_tokens": 7}}), STOP)
    events = parse_all(data)
    start, finish, usage = events
    assert isinstance(start, StreamStart) and start.usage is not None
    assert (start.usage.prompt_tokens, start.usage.cached_tokens, start.usage.cache_write_tokens) == (130, 100, 20)
    assert finish == FinishEvent(reason="length", finish_native="anthropic:max_tokens")
    assert isinstance(usage, UsageEvent)
    assert usage.usage == Usage(prompt_tokens=130, completion_tokens=7, total_tokens=137, cached_tokens=100,
                                cache_write_tokens=20)


def test_parser_tool_indices_count_tool_blocks_and_empty_input() -> None:
    data = _sse(START,
                ("content_block_start", {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
                ("content_block_stop", {"type": "content_block_stop", "index": 0}),
                ("content_block_start", {"type": "content_block_start", "index": 1,
                                         "content_block": {"type": "tool_use", "id": "toolu_a", "name": "now", "input": {}}}),
                ("content_block_delta", {"type": "content_block_delta", "index": 1,
                                         "delta": {"type": "input_json_delta", "partial_json": ""}}),
                ("content_block_stop", {"type": "content_block_stop", "index": 1}),
                ("content_block_start", {"type": "content_block_start", "index": 2,
                                         "content_block": {"type": "redacted_thinking", "data": "xyz"}}),
                ("content_block_stop", {"type": "content_block_stop", "index": 2}),
                ("message_delta", {"type": "message_delta", "delta": {"stop_reason": "tool_use"}, "usage": {"output_tokens": 3}}),
                STOP)
    events = parse_all(data)
    tools = [e for e in events if isinstance(e, ToolCallDelta)]
    assert tools == [ToolCallDelta(index=0, id="toolu_a", name="now"), ToolCallDelta(index=0, arguments="{}")]
    assert ReasoningDelta(redacted_data="xyz") in events
    resp = aggregate(events)
    assert resp.message.tool_calls == [ToolCall(id="toolu_a", name="now", arguments="{}")]
    assert resp.finish_reason == "tool_calls"


def test_parser_terminal_event_and_truncation() -> None:
    body = _sse(START, ("content_block_start", {"type": "content_block_start", "index": 0,
                                                "content_block": {"type": "text", "text": ""}}))
    parser = A.StreamParser()
    parser.feed(body)
    with pytest.raises(FormatError):
        parser.close()
    # after message_stop, stray bytes are ignored
    events = parse_all(_sse(START, STOP, ("content_block_delta", {"type": "content_block_delta", "index": 0,
                                                                  "delta": {"type": "text_delta", "text": "x"}})))
    assert [type(e) for e in events] == [StreamStart]


def test_parser_error_event() -> None:
    data = _sse(START, ("error", {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}))
    ev = parse_all(data)[-1]
    assert isinstance(ev, ErrorEvent)
    assert (ev.error.kind, ev.error.status, ev.error.message, ev.error.code) == (
        ErrorKind.OVERLOADED, 529, "Overloaded", "overloaded_error")


@pytest.mark.parametrize("bad", [
    b"event: message_start\ndata: {not json\n\n",
    b"event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":5,"
    b"\"delta\":{\"type\":\"text_delta\",\"text\":\"x\"}}\n\n",
    b"event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0}\n\n",
])
def test_parser_malformed_stream_raises_format_error(bad: bytes) -> None:
    with pytest.raises(FormatError):
        A.StreamParser().feed(bad)


def test_parser_reads_invalid_utf8_as_replacement_characters() -> None:
    # The parser hands orjson raw bytes, which it refuses when they are not UTF-8; read as text with
    # U+FFFD (as when every line was decoded first), the event is still valid JSON.
    p = A.StreamParser()
    p.feed(_sse(START))
    p.feed(b'event: content_block_start\ndata: {"type":"content_block_start","index":0,'
           b'"content_block":{"type":"text","text":""}}\n\n')
    evs = p.feed(b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,'
                 b'"delta":{"type":"text_delta","text":"caf\xc3 \xff"}}\n\n')
    assert evs == [TextDelta(text="caf\ufffd \ufffd")]
    with pytest.raises(FormatError) as e:
        A.StreamParser().feed(b'event: message_start\ndata: {"\xff\n\n')
    assert e.value.message == "malformed JSON in Anthropic stream event 'message_start'" and e.value.status == 502


# --------------------------------------------------------------------------------------------------
# Responses and usage


def test_usage_mapping_both_ways() -> None:
    body = orjson.dumps({"id": "msg_1", "type": "message", "role": "assistant", "model": "m", "content": [],
                         "stop_reason": "end_turn", "stop_sequence": None,
                         "usage": {"input_tokens": 10, "output_tokens": 5, "cache_creation_input_tokens": 20,
                                   "cache_read_input_tokens": 100}})
    resp = A.parse_response(body)
    assert resp.usage == Usage(prompt_tokens=130, completion_tokens=5, total_tokens=135, cached_tokens=100,
                               cache_write_tokens=20)
    assert json.loads(A.render_response(resp))["usage"] == {
        "input_tokens": 10, "output_tokens": 5, "cache_creation_input_tokens": 20, "cache_read_input_tokens": 100}


@pytest.mark.parametrize(("stop", "finish"), [
    ("end_turn", "stop"), ("stop_sequence", "stop"), ("pause_turn", "stop"), ("max_tokens", "length"),
    ("model_context_window_exceeded", "length"), ("tool_use", "tool_calls"), ("refusal", "content_filter"),
])
def test_stop_reasons(stop: str, finish: str) -> None:
    body = orjson.dumps({"id": "m", "model": "m", "content": [], "stop_reason": stop, "usage": {}})
    assert A.parse_response(body).finish_reason == finish


def test_render_response_blocks() -> None:
    resp = Response(id="msg_9", model="claude-x", message=Message(role="assistant", content=[
        ReasoningPart(text="hmm", signature="sig", signature_provider="anthropic"),
        ReasoningPart(redacted=True, data="opaque"),
        ReasoningPart(text="foreign thought"), TextPart(text=""), TextPart(text="Hi")],
        tool_calls=[ToolCall(id="call:1", name="f", arguments='{"x": [1]}'), ToolCall(id="", name="g", arguments="oops")]),
        finish_reason="stop", usage=Usage(prompt_tokens=4, completion_tokens=2))
    out = json.loads(A.render_response(resp))
    SDKMessage.model_validate(out)
    assert out["stop_reason"] == "tool_use" and out["stop_sequence"] is None
    assert out["content"][:4] == [{"type": "thinking", "thinking": "hmm", "signature": "sig"},
                                  {"type": "redacted_thinking", "data": "opaque"},
                                  {"type": "thinking", "thinking": "foreign thought", "signature": ""},
                                  {"type": "text", "text": "Hi"}]
    use1, use2 = out["content"][4:]
    assert ID_RE.match(use1["id"]) and use1["input"] == {"x": [1]}
    assert ID_RE.match(use2["id"]) and use2["input"] == {}  # malformed arguments: lossy, documented
    # a replayed foreign thinking block (signature "") comes back unsigned, so it is never sent upstream
    back = A.parse_response(A.render_response(resp))
    assert back.message.content[2] == ReasoningPart(text="foreign thought")


def test_parse_response_rejects_garbage() -> None:
    with pytest.raises(FormatError):
        A.parse_response(b"<html>")
    with pytest.raises(FormatError):
        A.parse_response(b'{"type":"error","error":{"type":"api_error","message":"boom"}}')
    with pytest.raises(FormatError):
        A.parse_response(b'{"id":"x","content":"nope"}')


# --------------------------------------------------------------------------------------------------
# Errors


@pytest.mark.parametrize(("kind", "status", "wire_status", "wire_type"), [
    (ErrorKind.INVALID_REQUEST, 400, 400, "invalid_request_error"),
    (ErrorKind.INVALID_REQUEST, 413, 413, "request_too_large"),
    (ErrorKind.INVALID_REQUEST, 422, 422, "invalid_request_error"),
    (ErrorKind.AUTHENTICATION, 401, 401, "authentication_error"),
    (ErrorKind.AUTHENTICATION, 502, 502, "api_error"),  # execution's "upstream rejected our key"
    (ErrorKind.PERMISSION, 403, 403, "permission_error"),
    (ErrorKind.NOT_FOUND, 404, 404, "not_found_error"),
    (ErrorKind.RATE_LIMITED, 429, 429, "rate_limit_error"),
    (ErrorKind.OVERLOADED, 503, 529, "overloaded_error"),
    (ErrorKind.SERVER_ERROR, 500, 500, "api_error"),
    (ErrorKind.TIMEOUT, 504, 504, "timeout_error"),
    (ErrorKind.CONNECTION, 0, 502, "api_error"),
    (ErrorKind.UNAVAILABLE, 503, 503, "overloaded_error"),
])
def test_error_status_and_body(kind: ErrorKind, status: int, wire_status: int, wire_type: str) -> None:
    err = Error(kind=kind, status=status, message="why")
    assert A.error_status(err) == wire_status
    assert json.loads(A.render_error(err)) == {"type": "error", "error": {"type": wire_type, "message": "why"}}


def test_error_code_kept_when_it_fits_the_status() -> None:
    err = Error(kind=ErrorKind.PERMISSION, status=402, message="pay", code="billing_error")
    assert json.loads(A.render_error(err))["error"]["type"] == "billing_error"
    foreign = Error(kind=ErrorKind.RATE_LIMITED, status=429, message="slow", code="rate_limit_exceeded")
    assert json.loads(A.render_error(foreign))["error"]["type"] == "rate_limit_error"


def test_error_headers() -> None:
    assert A.error_headers(Error(kind=ErrorKind.RATE_LIMITED, status=429, message="x", retry_after=1.2)) == {
        "retry-after": "2", "retry-after-ms": "1200"}
    assert A.error_headers(Error(kind=ErrorKind.SERVER_ERROR, status=500, message="x")) == {}


@pytest.mark.parametrize(("status", "etype", "kind"), [
    (400, "invalid_request_error", ErrorKind.INVALID_REQUEST),
    (401, "authentication_error", ErrorKind.AUTHENTICATION),
    (402, "billing_error", ErrorKind.PERMISSION),
    (403, "permission_error", ErrorKind.PERMISSION),
    (404, "not_found_error", ErrorKind.NOT_FOUND),
    (413, "request_too_large", ErrorKind.INVALID_REQUEST),
    (429, "rate_limit_error", ErrorKind.RATE_LIMITED),
    (500, "api_error", ErrorKind.SERVER_ERROR),
    (504, "timeout_error", ErrorKind.TIMEOUT),
    (529, "overloaded_error", ErrorKind.OVERLOADED),
])
def test_parse_error_bodies(status: int, etype: str, kind: ErrorKind) -> None:
    body = orjson.dumps({"type": "error", "error": {"type": etype, "message": "msg"}, "request_id": "req_1"})
    err = A.parse_error(status, {"Retry-After": "7"}, body)
    assert (err.kind, err.status, err.message, err.code, err.retry_after) == (kind, status, "msg", etype, 7.0)
    # and our own rendering of it says the same thing to an Anthropic client
    if kind is not ErrorKind.OVERLOADED:
        assert A.error_status(err) == status
    assert json.loads(A.render_error(err))["error"]["type"] == etype


def test_parse_error_odd_bodies_and_headers() -> None:
    # a page from a proxy in front of the provider may name internal hosts: only its status is told
    err = A.parse_error(529, {}, b"<html>busy at http://10.1.2.3:8000 (llm-a.internal.corp)</html>")
    assert err.kind is ErrorKind.OVERLOADED and err.message == "Upstream error: HTTP 529 Overloaded."
    assert err.retry_after is None
    err = A.parse_error(502, {"retry-after-ms": "1500", "retry-after": "9"}, b"")
    assert err.kind is ErrorKind.SERVER_ERROR and err.retry_after == 1.5 and err.message
    # an HTTP date counts against the answer's own Date header (formats read no clock)
    err = A.parse_error(429, {"retry-after": "Wed, 21 Oct 2015 07:28:04 GMT",
                              "date": "Wed, 21 Oct 2015 07:28:00 GMT"}, b"{}")
    assert err.kind is ErrorKind.RATE_LIMITED and err.retry_after == 4.0
    err = A.parse_error(429, {"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}, b"{}")
    assert err.retry_after is None  # no Date to measure it against
    credit = orjson.dumps({"type": "error", "error": {"type": "invalid_request_error",
                                                      "message": "Your credit balance is too low to access the API."}})
    assert A.parse_error(400, {}, credit).kind is ErrorKind.PERMISSION


def test_upstream_keys_never_reach_the_client() -> None:
    body = orjson.dumps({"type": "error", "error": {"type": "authentication_error",
                                                    "message": "invalid x-api-key sk-ant-api03-AbCdEf123456"}})
    err = A.parse_error(401, {}, body)
    assert "sk-ant" not in err.message and "[redacted]" in err.message
    stream = _sse(START, ("error", {"type": "error", "error": {"type": "api_error", "message": "Bearer abc.def"}}))
    ev = parse_all(stream)[-1]
    assert isinstance(ev, ErrorEvent) and "abc.def" not in ev.error.message
    assert len(A.parse_error(500, {}, b"x" * 10_000).message) < 2100


# --------------------------------------------------------------------------------------------------
# Bad input


def _body(**over: Any) -> bytes:
    d: dict[str, Any] = {"model": "claude-x", "max_tokens": 100, "messages": [{"role": "user", "content": "hi"}]}
    d.update(over)
    return orjson.dumps({k: v for k, v in d.items() if v is not ...})


@pytest.mark.parametrize(("body", "param"), [
    (b"not json", None),
    (b"[1, 2]", None),
    (_body(max_tokens=...), "max_tokens"),
    (_body(max_tokens="100"), "max_tokens"),
    (_body(max_tokens=0), "max_tokens"),
    (_body(messages=...), "messages"),
    (_body(model=...), "model"),
    (_body(messages={"role": "user"}), "messages"),
    (_body(messages=[{"role": "robot", "content": "hi"}]), "messages.0.role"),
    (_body(messages=[{"role": "user"}]), "messages.0.content"),
    (_body(messages=[{"role": "user", "content": [{"type": "video", "url": "x"}]}]), "messages.0.content.0.type"),
    (_body(messages=[{"role": "user", "content": [{"type": "document", "source": {}}]}]), "messages.0.content.0.type"),
    (_body(messages=[{"role": "assistant", "content": [{"type": "tool_result", "tool_use_id": "t"}]}]),
     "messages.0.content.0.type"),
    (_body(messages=[{"role": "user", "content": [{"type": "text"}]}]), "messages.0.content.0.text"),
    (_body(messages=[{"role": "user", "content": [{"type": "image", "source": {"type": "file", "file_id": "f"}}]}]),
     "messages.0.content.0.source.type"),
    (_body(messages=[{"role": "assistant", "content": [{"type": "tool_use", "id": "t", "name": "f", "input": "x"}]}]),
     "messages.0.content.0.input"),
    (_body(system=[{"type": "image"}]), "system.0.type"),
    (_body(tools=[{"name": "f"}]), "tools.0.input_schema"),
    (_body(tool_choice={"type": "sometimes"}), "tool_choice.type"),
    (_body(tool_choice={"type": ["auto"]}), "tool_choice.type"),  # not a string: a 400, not a crash
    (_body(tool_choice={"type": {"auto": 1}}), "tool_choice.type"),
    (_body(tool_choice={}), "tool_choice.type"),
    (_body(messages=[]), "messages"),  # as the API: at least one message
    (_body(tool_choice={"type": "tool"}), "tool_choice.name"),
    (_body(thinking={"type": "enabled"}), "thinking.budget_tokens"),
    (_body(thinking={"type": "maybe"}), "thinking.type"),
    (_body(temperature="hot"), "temperature"),
    (_body(temperature=1.5), "temperature"),  # Anthropic's range is 0–1
    (_body(top_p=-0.5), "top_p"),
    (_body(top_k=-1), "top_k"),
    (_body(stop_sequences="END"), "stop_sequences"),
    (_body(stream="yes"), "stream"),
])
def test_bad_requests_name_the_field(body: bytes, param: str | None) -> None:
    with pytest.raises(FormatError) as exc:
        A.parse_request(body)
    assert exc.value.param == param
    assert exc.value.status == 400
    if param is not None:
        assert param in exc.value.message


# --------------------------------------------------------------------------------------------------
# Inbound details


def test_parse_request_details() -> None:
    body = orjson.dumps({
        "model": "claude-x", "max_tokens": 2048, "stream": True, "top_k": 5, "top_p": 0.9,
        "system": "Be brief.",
        "metadata": {"user_id": "u1"},
        "thinking": {"type": "enabled", "budget_tokens": 1024},
        "output_config": {"effort": "high", "format": {"type": "json_schema", "schema": {"type": "object"}}},
        "tools": [{"name": "f", "input_schema": {"type": "object"}, "cache_control": {"type": "ephemeral"}, "strict": True},
                  {"type": "web_search_20250305", "name": "web_search", "max_uses": 3}],
        "tool_choice": {"type": "any", "disable_parallel_tool_use": True},
        "service_tier": "auto", "context_management": {"edits": []},
        "messages": [
            {"role": "user", "content": [{"type": "image", "source": {"type": "url", "url": "https://x/y.png"}},
                                         {"type": "text", "text": "look"}]},
            {"role": "assistant", "content": [{"type": "thinking", "thinking": "t", "signature": "s"},
                                              {"type": "redacted_thinking", "data": "r"},
                                              {"type": "tool_use", "id": "toolu_1", "name": "f", "input": {"q": "é"}}]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "is_error": True,
                 "content": [{"type": "text", "text": "bad"}, {"type": "image", "source": {
                     "type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo"}}]},
                {"type": "text", "text": "and now?"}]},
            {"role": "system", "content": "late system"},
        ]})
    req = A.parse_request(body)
    assert req.stream is True and req.user == "u1" and req.metadata is None
    assert req.sampling == Sampling(max_tokens=2048, top_k=5, top_p=0.9)
    assert (req.reasoning_budget, req.reasoning_effort) == (1024, "high")
    assert req.response_format == ResponseFormat(type="json_schema", schema={"type": "object"})
    assert req.tools[0] == Tool(name="f", parameters={"type": "object"}, cache_control={"type": "ephemeral"}, strict=True)
    assert req.tools[1].type == "native" and req.tools[1].provider == "anthropic" and req.tools[1].name == "web_search"
    assert req.tools[1].native == {"type": "web_search_20250305", "name": "web_search", "max_uses": 3}
    assert req.tool_choice == ToolChoice(mode="required", disable_parallel=True)
    assert req.extra_body == {"service_tier": "auto", "context_management": {"edits": []}}
    roles = [m.role for m in req.messages]
    assert roles == ["system", "user", "assistant", "tool", "user", "system"]
    assert req.messages[1].content[0] == ImagePart(url="https://x/y.png")
    asst = req.messages[2]
    assert asst.content == [ReasoningPart(text="t", signature="s", signature_provider="anthropic"),
                            ReasoningPart(redacted=True, data="r")]
    assert asst.tool_calls == [ToolCall(id="toolu_1", name="f", arguments='{"q":"é"}')]
    result = req.messages[3].content[0]
    assert isinstance(result, ToolResultPart) and result.is_error and result.name == "f"
    assert result.content == [TextPart(text="bad"), ImagePart(media_type="image/png", data="iVBORw0KGgo")]
    assert req.messages[4].text() == "and now?"
    # model and stream from the caller win over the body (the contract's URL-carried values)
    assert A.parse_request(body, model="other", stream=False).model == "other"
    assert A.parse_request(body, stream=False).stream is False


@pytest.mark.parametrize(("thinking", "budget", "effort"), [
    ({"type": "enabled", "budget_tokens": 2000}, 2000, None),
    ({"type": "disabled"}, None, "none"),
    ({"type": "adaptive"}, -1, None),
])
def test_thinking_modes(thinking: dict[str, Any], budget: int | None, effort: str | None) -> None:
    req = A.parse_request(_body(thinking=thinking, max_tokens=4000))
    assert (req.reasoning_budget, req.reasoning_effort) == (budget, effort)
    assert json.loads(A.build_request(req, "m"))["thinking"] == thinking


@pytest.mark.parametrize(("source", "mode", "kept"), [
    ("gemini", "required", False), ("openai_chat", "function", False), ("gemini", "auto", True),
    ("anthropic", "required", True),  # an Anthropic client's own request goes as it asked
])
def test_thinking_with_a_forced_tool_choice(source: str, mode: str, kept: bool) -> None:
    # Anthropic refuses thinking with tool_choice any/tool; the forced call wins for other families.
    req = Request(model="m", source=source, reasoning_budget=2048, sampling=Sampling(temperature=0.3),
                  messages=[Message(role="user", content=[TextPart(text="weather?")])],
                  tools=[Tool(name="get_weather", parameters={"type": "object"})],
                  tool_choice=ToolChoice(mode=mode, name="get_weather" if mode == "function" else None))
    out = _build(req)
    assert ("thinking" in out) is kept
    assert out["tool_choice"]["type"] == {"required": "any", "function": "tool", "auto": "auto"}[mode]
    assert ("temperature" in out) is not kept  # thinking off: the asked temperature is sent


# --------------------------------------------------------------------------------------------------
# Outbound details


def test_path_and_auth() -> None:
    assert A.request_path("claude-x", True) == "/v1/messages"
    assert A.auth_headers("sk-1") == {"x-api-key": "sk-1", "anthropic-version": "2023-06-01"}


def _build(req: Request) -> dict[str, Any]:
    return json.loads(A.build_request(req, "claude-up"))


def test_build_request_from_openai_style_history() -> None:
    req = Request(model="gpt-ish", stream=True, messages=[
        Message(role="system", content=[TextPart(text="sys")]),
        Message(role="user", content=[TextPart(text="q"), ImagePart(url="data:image/png;base64,iVBORw0KGgoAAA")]),
        Message(role="developer", content=[TextPart(text="dev")]),
        Message(role="assistant", content=[ReasoningPart(text="unsigned"), TextPart(text="")],
                tool_calls=[ToolCall(id="call_1", name="a", arguments='{"x":1}'),
                            ToolCall(id="fc.2/3", name="b", arguments="")]),
        Message(role="tool", content=[ToolResultPart(tool_call_id="call_1", content=[TextPart(text="r1")])]),
        Message(role="tool", content=[ToolResultPart(tool_call_id="fc.2/3", content=[])]),
        Message(role="user", content=[TextPart(text="next")]),
    ], sampling=Sampling(temperature=1.7, stop=["END"]))
    out = _build(req)
    assert out["model"] == "claude-up" and out["max_tokens"] == A.DEFAULT_MAX_TOKENS and out["stream"] is True
    assert out["temperature"] == 1.0 and out["stop_sequences"] == ["END"]
    assert out["system"] == [{"type": "text", "text": "sys"}, {"type": "text", "text": "dev"}]
    user, asst, results = out["messages"]
    assert user["content"][1] == {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                                              "data": "iVBORw0KGgoAAA"}}
    # unsigned reasoning and the empty text are dropped; tool calls become tool_use with object input
    assert [b["type"] for b in asst["content"]] == ["tool_use", "tool_use"]
    ids = [b["id"] for b in asst["content"]]
    assert ids[0] == "call_1" and ID_RE.match(ids[1]) and asst["content"][1]["input"] == {}
    # both tool messages and the user text after them form one user turn, results first
    assert results["role"] == "user"
    assert results["content"] == [{"type": "tool_result", "tool_use_id": "call_1", "content": "r1"},
                                  {"type": "tool_result", "tool_use_id": ids[1]},
                                  {"type": "text", "text": "next"}]


def test_build_request_tools_choice_and_reasoning() -> None:
    req = Request(model="m", messages=[Message(role="user", content=[TextPart(text="hi")])],
                  tools=[Tool(name="f", parameters={"properties": {}}), Tool(name="g")],
                  tool_choice=ToolChoice(mode="function", name="f", disable_parallel=True),
                  reasoning_effort="minimal", response_format=ResponseFormat(type="json_object"),
                  sampling=Sampling(max_tokens=500, temperature=0.2, top_k=3, n=1), user="u", metadata={"k": "v"},
                  extra_body={"service_tier": "auto", "model": "ignored"}, source="anthropic")
    out = _build(req)
    assert out["tools"] == [{"name": "f", "input_schema": {"type": "object", "properties": {}}},
                            {"name": "g", "input_schema": {"type": "object", "properties": {}}}]
    assert out["tool_choice"] == {"type": "tool", "name": "f", "disable_parallel_tool_use": True}
    assert out["output_config"] == {"effort": "low"}  # json_object has no Anthropic form (lossy)
    assert out["metadata"] == {"user_id": "u"}
    assert out["service_tier"] == "auto" and out["model"] == "claude-up"
    assert (out["temperature"], out["top_k"]) == (0.2, 3)
    # thinking on: budget raised to Anthropic's minimum, max_tokens kept above it, sampling knobs it rejects dropped
    req.reasoning_budget, req.reasoning_effort = 600, None
    out = _build(req)
    assert out["thinking"] == {"type": "enabled", "budget_tokens": 1024} and out["max_tokens"] == 1524
    assert "temperature" not in out and "top_k" not in out
    # tool_choice without tools is not sent (Anthropic rejects it)
    req.tools = []
    assert "tool_choice" not in _build(req) and "tools" not in _build(req)


HI = [Message(role="user", content=[TextPart(text="hi")])]


@pytest.mark.parametrize(("req", "param"), [
    (Request(model="m", messages=HI, sampling=Sampling(n=2)), "n"),
    (Request(model="m", messages=HI, tools=[Tool(type="native", name="google_search", provider="gemini",
                                                 native={"googleSearch": {}})]), "tools.0"),
    # a system prompt alone: the API wants a user or assistant message
    (Request(model="m", messages=[Message(role="system", content=[TextPart(text="say hi")])]), "messages"),
    (Request(model="m", messages=[Message(role="user", content=[ImagePart(media_type="image/heic", data="AAAA")])]),
     "messages.0.content"),
    (Request(model="m", messages=[Message(role="user", content=[ImagePart(data="AAAA")])]), "messages.0.content"),
    (Request(model="m", messages=[Message(role="assistant", content=[ImagePart(url="https://x/y.png")])]),
     "messages.0.content"),
    (Request(model="m", messages=[Message(role="system", content=[ImagePart(url="https://x/y.png")])]),
     "messages.0.content"),
])
def test_build_request_refuses_what_anthropic_cannot_carry(req: Request, param: str) -> None:
    with pytest.raises(FormatError) as exc:
        A.build_request(req, "m")
    assert exc.value.param == param


def test_build_request_sniffs_untyped_images() -> None:
    req = Request(model="m", messages=[Message(role="user", content=[ImagePart(data="/9j/4AAQ")])])
    assert _build(req)["messages"][0]["content"][0]["source"]["media_type"] == "image/jpeg"


@pytest.mark.parametrize(("url", "media"), [("data:image/PNG;base64,iVBORw0KGgo", "image/png"),
                                            ("data:Image/Jpeg;base64,/9j/4AAQ", "image/jpeg"),
                                            ("data:image/jpg;base64,/9j/4AAQ", "image/jpeg")])
def test_build_request_reads_media_types_as_mime_does(url: str, media: str) -> None:
    # MIME types are case-insensitive; image/jpg, common in client code, is JPEG
    req = Request(model="m", messages=[Message(role="user", content=[ImagePart(url=url)])])
    assert _build(req)["messages"][0]["content"][0]["source"]["media_type"] == media


def test_an_answer_that_names_no_finish_still_ends_with_a_stop_reason() -> None:
    # stop_reason is null only in message_start; an upstream that named no finish (Azure's filtered
    # prompt, `finish_reason: null`) ended its answer all the same, as the stream's end says too.
    resp = Response(id="msg_1", model="m", message=Message(role="assistant", content=[TextPart(text="hi")]))
    out = json.loads(A.render_response(resp))
    SDKMessage.model_validate(out)
    assert out["stop_reason"] == "end_turn"


@FAST
@given(st.lists(st.text(max_size=12), min_size=2, max_size=6, unique=True))
def test_tool_ids_are_valid_stable_and_distinct(ids: list[str]) -> None:
    out = [A._tool_id(i) for i in ids]
    assert all(ID_RE.match(o) for o in out)
    assert out == [A._tool_id(i) for i in ids]
    assert len(set(out)) == len(out)
    assert all(o == i for i, o in zip(ids, out, strict=True) if ID_RE.match(i))


# --------------------------------------------------------------------------------------------------
# Property tests: unified → Anthropic → unified is the identity on what the format can carry


ALNUM = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-"
ids = st.text(ALNUM, min_size=1, max_size=12)
texts = st.text(min_size=1, max_size=20)
cache = st.none() | st.just({"type": "ephemeral"})
json_obj = st.dictionaries(st.text(ALNUM, min_size=1, max_size=5),
                           st.none() | st.booleans() | st.integers(-5, 5) | st.text(max_size=5), max_size=3)
images = st.builds(ImagePart, media_type=st.sampled_from(["image/jpeg", "image/png", "image/gif", "image/webp"]),
                   data=st.text(ALNUM, min_size=1, max_size=12), cache_control=cache) | st.builds(
    ImagePart, url=st.text(ALNUM, min_size=1, max_size=8).map(lambda s: f"https://img.test/{s}.png"), cache_control=cache)
text_parts = st.builds(TextPart, text=texts, cache_control=cache)
reasoning_parts = st.builds(ReasoningPart, text=st.text(max_size=10), signature=texts,
                            signature_provider=st.just("anthropic")) | st.builds(
    ReasoningPart, redacted=st.just(True), data=texts)
usages = st.builds(lambda inp, read, write, out: Usage(prompt_tokens=inp + read + write, completion_tokens=out,
                                                       cached_tokens=read, cache_write_tokens=write).finalised(),
                   st.integers(0, 10_000), st.integers(0, 10_000), st.integers(0, 10_000), st.integers(0, 10_000))


@st.composite
def tool_calls(draw: st.DrawFn) -> list[ToolCall]:
    return draw(st.lists(st.builds(ToolCall, id=ids, name=ids, cache_control=cache,
                                   arguments=json_obj.map(lambda d: orjson.dumps(d).decode())), max_size=3))


@st.composite
def conversations(draw: st.DrawFn) -> list[Message]:
    msgs: list[Message] = []
    if draw(st.booleans()):
        msgs.append(Message(role="system", content=draw(st.lists(text_parts, min_size=1, max_size=2))))
    names: dict[str, str] = {}
    for _ in range(draw(st.integers(1, 6))):
        kind = draw(st.sampled_from(["user", "assistant", "tool"]))
        if kind == "user":
            msgs.append(Message(role="user", content=draw(st.lists(text_parts | images, min_size=1, max_size=3))))
        elif kind == "assistant":
            content = draw(st.lists(reasoning_parts | text_parts, max_size=3))
            calls = draw(tool_calls())
            if not content and not calls:
                content = [TextPart(text="ok")]
            names.update({c.id: c.name for c in calls})
            msgs.append(Message(role="assistant", content=content, tool_calls=calls))
        else:
            cid = draw(st.sampled_from(sorted(names)) if names else ids)
            body = draw(st.just([]) | st.builds(lambda t: [TextPart(text=t)], st.text(max_size=10))
                        | st.lists(text_parts | images, min_size=2, max_size=3))
            msgs.append(Message(role="tool", content=[ToolResultPart(
                tool_call_id=cid, name=names.get(cid), content=body, is_error=draw(st.booleans()),
                cache_control=draw(cache))]))
    return msgs


@st.composite
def requests(draw: st.DrawFn) -> Request:
    req = Request(model=draw(ids), messages=draw(conversations()), stream=draw(st.booleans()),
                  user=draw(st.none() | ids), source="anthropic")
    req.tools = draw(st.lists(
        st.builds(Tool, name=ids, description=st.none() | texts, cache_control=cache, strict=st.none() | st.just(True),
                  parameters=json_obj.map(lambda d: {"type": "object", "properties": d}))
        | st.builds(lambda n, k: Tool(type="native", name=n, provider="anthropic",
                                      native={"type": "web_search_20250305", "name": n, "max_uses": k}),
                    ids, st.integers(1, 5)), max_size=3))
    if req.tools:
        mode = draw(st.sampled_from(["auto", "none", "required", "function"]))
        req.tool_choice = ToolChoice(mode=mode, name=draw(ids) if mode == "function" else None,
                                     disable_parallel=None if mode == "none" else draw(st.none() | st.booleans()))
    max_tokens = draw(st.integers(1, 64_000))
    thinking = draw(st.sampled_from(["off", "budget", "adaptive", "disabled"]))
    if thinking == "budget" and max_tokens > A.MIN_THINKING_BUDGET:
        req.reasoning_budget = draw(st.integers(A.MIN_THINKING_BUDGET, max_tokens - 1))
    elif thinking == "adaptive":
        req.reasoning_budget = -1
    if thinking == "disabled":
        req.reasoning_effort = "none"
    else:
        req.reasoning_effort = draw(st.none() | st.sampled_from(["low", "medium", "high", "xhigh", "max"]))
    on = req.reasoning_budget is not None
    req.sampling = Sampling(
        max_tokens=max_tokens,
        temperature=draw(st.none() | (st.just(1.0) if on else st.floats(0, 1))),
        top_p=draw(st.none() | st.floats(0.95 if on else 0, 1)),
        top_k=None if on else draw(st.none() | st.integers(1, 500)),
        stop=draw(st.none() | st.lists(texts, min_size=1, max_size=4)))
    if draw(st.booleans()):
        req.response_format = ResponseFormat(type="json_schema", schema=draw(json_obj))
    req.extra_body = draw(st.dictionaries(st.sampled_from(["service_tier", "container", "x_custom"]), json_obj, max_size=2))
    return req


@FAST
@given(requests())
def test_property_request_round_trip(req: Request) -> None:
    back = A.parse_request(A.build_request(req, req.model))
    assert back == req


@st.composite
def responses(draw: st.DrawFn) -> Response:
    content = draw(st.lists(reasoning_parts | st.builds(ReasoningPart, text=texts) | st.builds(TextPart, text=texts),
                            max_size=4))
    calls = [c.model_copy(update={"cache_control": None}) for c in draw(tool_calls())]
    finish = draw(st.sampled_from(["tool_calls", "length", "content_filter", None] if calls
                                  else ["stop", "length", "tool_calls", "content_filter", None]))
    return Response(id=draw(ids), model=draw(ids), message=Message(role="assistant", content=content, tool_calls=calls),
                    finish_reason=finish, usage=draw(usages))


@FAST
@given(responses())
def test_property_response_round_trip(resp: Response) -> None:
    # An answer that named no finish goes out as a finished one (stop_reason is never null there).
    ended = resp.finish_reason or ("tool_calls" if resp.message.tool_calls else "stop")
    assert without_native(A.parse_response(A.render_response(resp))) == resp.model_copy(update={"finish_reason": ended})


plain_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=6)  # (no lone surrogates)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-10**18, 10**18) | st.floats(allow_nan=False, allow_infinity=False)
    | plain_text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(plain_text, inner, max_size=3), max_leaves=8)
json_objects = st.dictionaries(plain_text, json_values, max_size=4)


@st.composite
def split_text(draw: st.DrawFn, text: str, most: int) -> list[str]:
    """`text` in 1 to `most` non-empty pieces, cut anywhere."""
    cuts = sorted(set(draw(st.lists(st.integers(1, max(len(text) - 1, 1)), max_size=most - 1))))
    cuts = [c for c in cuts if 0 < c < len(text)]
    return [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]


@st.composite
def event_streams(draw: st.DrawFn) -> list[StreamEvent]:
    start_usage = draw(usages).model_copy(update={"completion_tokens": 1})
    events: list[StreamEvent] = [StreamStart(id=draw(ids), model=draw(ids), usage=start_usage.finalised())]
    n_tools = 0
    for _ in range(draw(st.integers(0, 6))):
        kind = draw(st.sampled_from(["text", "thinking", "redacted", "tool"]))
        if kind == "text":
            events += [TextDelta(text=t) for t in draw(st.lists(texts, min_size=1, max_size=3))]
        elif kind == "thinking":
            events += [ReasoningDelta(text=t) for t in draw(st.lists(texts, min_size=1, max_size=3))]
            events.append(ReasoningDelta(signature=draw(texts), signature_provider="anthropic"))
        elif kind == "redacted":
            events.append(ReasoningDelta(redacted_data=draw(texts)))
        else:
            fragments = draw(split_text(orjson.dumps(draw(json_objects)).decode(), 3))
            events.append(ToolCallDelta(index=n_tools, id=draw(ids), name=draw(ids), arguments=fragments[0]))
            events += [ToolCallDelta(index=n_tools, arguments=f) for f in fragments[1:]]
            n_tools += 1
    finish = draw(st.sampled_from(["tool_calls", "length"] if n_tools else ["stop", "length", "content_filter"]))
    final = start_usage.model_copy(update={"completion_tokens": draw(st.integers(0, 5000)), "total_tokens": 0})
    events += [FinishEvent(reason=finish), UsageEvent(usage=final.finalised())]
    return events


@FAST
@given(event_streams(), st.data())
def test_property_stream_round_trip_any_chunking(events: list[StreamEvent], data: st.DataObject) -> None:
    out = render_stream(events)
    _shape(out)
    splits = data.draw(st.lists(st.integers(0, len(out)), max_size=30))
    assert without_native(aggregate(parse_all(out, splits))) == aggregate(events)


jsonish = st.text(alphabet='{}[]":,\' 01-.eE+truefalsnNx\\u', min_size=1, max_size=12)  # near-JSON text


@FAST
@given(st.lists(st.lists(texts | jsonish, min_size=1, max_size=4), min_size=1, max_size=3))
def test_property_any_tool_argument_text_streams_to_the_sdk(calls: list[list[str]]) -> None:
    events: list[StreamEvent] = [StreamStart(id="msg_1", model="m")]
    for i, fragments in enumerate(calls):
        events.append(ToolCallDelta(index=i, id=f"c{i}", name="f", arguments=fragments[0]))
        events += [ToolCallDelta(index=i, arguments=f) for f in fragments[1:]]
    events.append(FinishEvent(reason="tool_calls"))
    out = render_stream(events)
    _shape(out)
    blocks = sdk_accumulate(out).content  # never raises
    assert [b.id for b in blocks] == [f"c{i}" for i in range(len(calls))]
    for b, fragments in zip(blocks, calls, strict=True):
        try:
            whole = orjson.loads("".join(fragments))
        except orjson.JSONDecodeError:
            whole = None
        assert isinstance(b.input, dict)
        if isinstance(whole, dict):
            assert b.input == whole


# --------------------------------------------------------------------------------------------------
# The official SDK as the client of our inbound side (in-process: httpx2's MockTransport)


def sdk_client(answer: Any, seen: list[Request]) -> Any:
    """An Anthropic SDK client whose HTTP calls reach `answer(unified_request) -> httpx2.Response`."""
    import anthropic
    import httpx2

    def handler(request: httpx2.Request) -> httpx2.Response:
        assert request.url.path == "/v1/messages"
        req = A.parse_request(request.content)
        seen.append(req)
        return answer(req)

    return anthropic.Anthropic(api_key="k", base_url="http://gateway.test", max_retries=0,
                               http_client=httpx2.Client(transport=httpx2.MockTransport(handler)))


@pytest.mark.parametrize("name", PAIRS)
def test_sdk_reads_our_responses_and_streams(name: str) -> None:
    import httpx2

    whole = A.parse_response(fixture(f"anthropic-{name}.response.json"))
    events = parse_all(stream_bytes(f"anthropic-{name}.stream.jsonl"))
    raw = json.loads(fixture(f"anthropic-{name}.response.json"))

    def answer(req: Request) -> httpx2.Response:
        if not req.stream:
            return httpx2.Response(200, content=A.render_response(whole), headers={"content-type": "application/json"})
        r = A.StreamRenderer(req)
        chunks = [r.render(ev) for ev in events] + [r.finish()]
        return httpx2.Response(200, content=b"".join(chunks), headers={"content-type": "text/event-stream"})

    seen: list[Request] = []
    client = sdk_client(answer, seen)
    tools = [{"name": "get_coordinates", "input_schema": {"type": "object"}}]
    kwargs: dict[str, Any] = {"model": "claude-test", "max_tokens": 1024, "tools": tools,
                              "messages": [{"role": "user", "content": "weather?"}]}
    msg = client.messages.create(**kwargs)
    with client.messages.stream(**kwargs) as s:
        streamed = s.get_final_message()
    assert seen[0].stream is False and seen[1].stream is True and seen[0].tools[0].name == "get_coordinates"
    for m in (msg, streamed):
        assert [b.type for b in m.content] == [b["type"] for b in raw["content"]]
        assert [getattr(b, "text", None) for b in m.content] == [b.get("text") for b in raw["content"]]
        assert [getattr(b, "input", None) for b in m.content] == [b.get("input") for b in raw["content"]]
        assert (m.stop_reason, m.usage.input_tokens, m.usage.output_tokens) == (
            raw["stop_reason"], raw["usage"]["input_tokens"], raw["usage"]["output_tokens"])


def test_sdk_raises_our_errors() -> None:
    import anthropic
    import httpx2

    def fail(err: Error) -> Any:
        return lambda req: httpx2.Response(A.error_status(err), content=A.render_error(err),
                                           headers={"content-type": "application/json", **A.error_headers(err)})

    overloaded = Error(kind=ErrorKind.OVERLOADED, status=503, message="busy")
    with pytest.raises(anthropic.OverloadedError) as exc:
        sdk_client(fail(overloaded), []).messages.create(model="m", max_tokens=5, messages=[{"role": "user", "content": "x"}])
    assert exc.value.status_code == 529 and exc.value.body["error"]["type"] == "overloaded_error"
    limited = Error(kind=ErrorKind.RATE_LIMITED, status=429, message="slow down", retry_after=3)
    with pytest.raises(anthropic.RateLimitError) as exc2:
        sdk_client(fail(limited), []).messages.create(model="m", max_tokens=5, messages=[{"role": "user", "content": "x"}])
    assert exc2.value.response.headers["retry-after"] == "3"

    def broken_stream(req: Request) -> httpx2.Response:
        r = A.StreamRenderer(req)
        body = r.render(TextDelta(text="par")) + r.error(Error(kind=ErrorKind.SERVER_ERROR, status=502, message="cut"))
        return httpx2.Response(200, content=body, headers={"content-type": "text/event-stream"})

    with pytest.raises(anthropic.APIStatusError) as exc3:
        with sdk_client(broken_stream, []).messages.stream(model="m", max_tokens=5,
                                                            messages=[{"role": "user", "content": "x"}]) as s:
            s.get_final_message()
    assert "cut" in str(exc3.value)


@pytest.mark.parametrize("reason, seq", [("pause_turn", None), ("stop_sequence", "END"),
                                         ("model_context_window_exceeded", None), ("refusal", None)])
def test_an_anthropic_stop_reason_reaches_an_anthropic_client_as_it_came(reason: str, seq: str | None) -> None:
    # The unified finish reason cannot say pause_turn ("continue the turn"), which an agent loop
    # must see: within the family the upstream's own value and stop sequence are written back.
    data = _sse(START, ("message_delta", {"type": "message_delta", "delta": {"stop_reason": reason, "stop_sequence": seq},
                                          "usage": {"output_tokens": 7}}), STOP)
    r = A.StreamRenderer(Request(model="m", messages=[]))
    out = b"".join(r.render(ev) for ev in parse_all(data)) + r.finish()
    delta = next(d for t, d in sse_events(out) if t == "message_delta")["delta"]
    assert (delta["stop_reason"], delta["stop_sequence"]) == (reason, seq)
    body = orjson.dumps({"id": "msg_1", "type": "message", "role": "assistant", "model": "m", "content": [],
                         "stop_reason": reason, "stop_sequence": seq, "usage": {"input_tokens": 1, "output_tokens": 1}})
    again = orjson.loads(A.render_response(A.parse_response(body)))
    assert (again["stop_reason"], again["stop_sequence"]) == (reason, seq)
    # another family gets the unified mapping
    assert orjson.loads(oc.render_response(A.parse_response(body)))["choices"][0]["finish_reason"] in (
        "stop", "length", "content_filter")


def _server_tool_stream() -> bytes:
    msg = {"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-x", "content": [],
           "stop_reason": None, "stop_sequence": None, "usage": {"input_tokens": 10, "output_tokens": 1}}
    result = {"type": "web_search_tool_result", "tool_use_id": "srvtoolu_1",
              "content": [{"type": "web_search_result", "title": "Weather", "url": "https://w.example/paris",
                           "encrypted_content": "EqXYZ", "page_age": None}]}
    return _sse(
        ("message_start", {"type": "message_start", "message": msg}),
        ("content_block_start", {"type": "content_block_start", "index": 0, "content_block": {
            "type": "server_tool_use", "id": "srvtoolu_1", "name": "web_search", "input": {}}}),
        ("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": {
            "type": "input_json_delta", "partial_json": '{"query":'}}),
        ("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": {
            "type": "input_json_delta", "partial_json": '"paris weather"}'}}),
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        ("content_block_start", {"type": "content_block_start", "index": 1, "content_block": result}),
        ("content_block_stop", {"type": "content_block_stop", "index": 1}),
        ("content_block_start", {"type": "content_block_start", "index": 2, "content_block": {"type": "text", "text": ""}}),
        ("content_block_delta", {"type": "content_block_delta", "index": 2, "delta": {
            "type": "text_delta", "text": "It is sunny."}}),
        ("content_block_stop", {"type": "content_block_stop", "index": 2}),
        ("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                           "usage": {"output_tokens": 20}}),
        ("message_stop", {"type": "message_stop"}),
    )


def test_server_tool_blocks_reach_a_same_family_stream_client_whole() -> None:
    # web_search is Anthropic's to run (so routed to Anthropic channels only); its call and result
    # have no unified form, but an Anthropic client streaming the answer must still get them.
    events = parse_all(_server_tool_stream())
    native = [e for e in events if isinstance(e, NativeBlock)]
    assert [e.block["type"] for e in native] == ["server_tool_use", "web_search_tool_result"]
    assert native[0].block["input"] == {"query": "paris weather"}
    snap = sdk_accumulate(render_stream(events))
    assert [b.type for b in snap.content] == ["server_tool_use", "web_search_tool_result", "text"]
    assert snap.content[0].input == {"query": "paris weather"} and snap.content[0].id == "srvtoolu_1"
    assert snap.content[1].content[0].url == "https://w.example/paris"
    # other families drop them (their clients could not have run the tool either)
    for family in ("openai_chat", "gemini", "openai_responses"):
        r = get_format(family).StreamRenderer(Request(model="m", messages=[], stream=True))
        out = b"".join(r.render(e) for e in events) + r.finish()
        assert b"srvtoolu_1" not in out and b"It is sunny." in out


def _tool_loop(first_block: dict[str, Any] | None) -> list[dict[str, Any]]:
    call = {"type": "tool_use", "id": "toolu_1", "name": "f", "input": {}}
    return [{"role": "user", "content": "weather?"},
            {"role": "assistant", "content": [first_block, call] if first_block else [call]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "sunny"}]}]


TOOLS = [{"name": "f", "input_schema": {"type": "object"}}]


@pytest.mark.parametrize(("first", "kept"), [
    (None, False),  # its thinking was another family's (a failover), or never signed: Anthropic would refuse
    ({"type": "thinking", "thinking": "hm", "signature": "sig-from-anthropic"}, True),
    ({"type": "redacted_thinking", "data": "opaque"}, True),
    ({"type": "text", "text": "let me look"}, False),
])
def test_thinking_goes_when_the_last_tool_turn_does_not_start_with_thinking(
        first: dict[str, Any] | None, kept: bool) -> None:
    req = A.parse_request(_body(max_tokens=4096, thinking={"type": "enabled", "budget_tokens": 2048},
                                tools=TOOLS, messages=_tool_loop(first)))
    req.source = "gemini"  # as if another family's client
    body = orjson.loads(A.build_request(req, "claude-x"))
    assert ("thinking" in body) is kept
    assert body["messages"][1]["content"][-1]["type"] == "tool_use"
    req.source = "anthropic"  # an Anthropic client's own request: as it asked, as when passed through
    assert "thinking" in orjson.loads(A.build_request(req, "claude-x"))


def test_thinking_stays_when_the_last_assistant_turn_calls_no_tool() -> None:
    msgs = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
            {"role": "user", "content": "more"}]
    req = A.parse_request(_body(max_tokens=4096, thinking={"type": "enabled", "budget_tokens": 2048}, messages=msgs))
    req.source = "openai_chat"
    assert orjson.loads(A.build_request(req, "claude-x"))["thinking"]["type"] == "enabled"


SIGNED = {"type": "thinking", "thinking": "hm", "signature": "sig-from-anthropic"}


def _call(n: int) -> dict[str, Any]:
    return {"type": "tool_use", "id": f"toolu_{n}", "name": "f", "input": {}}


def _result(n: int) -> dict[str, Any]:
    return {"role": "user", "content": [{"type": "tool_result", "tool_use_id": f"toolu_{n}", "content": "ok"}]}


def _built(messages: list[dict[str, Any]], thinking: dict[str, Any]) -> dict[str, Any]:
    req = A.parse_request(_body(max_tokens=4096, thinking=thinking, tools=TOOLS, messages=messages))
    req.source = "gemini"
    return orjson.loads(A.build_request(req, "claude-x"))


ENABLED = {"type": "enabled", "budget_tokens": 2048}


def test_a_tool_loop_is_one_turn_whose_first_message_decides_the_thinking() -> None:
    # Claude without interleaved thinking thinks once, at the start of the turn: later steps of the
    # loop carry no thinking block, and Anthropic takes them back as they are.
    loop = [{"role": "user", "content": "go"}, {"role": "assistant", "content": [SIGNED, _call(1)]}, _result(1),
            {"role": "assistant", "content": [_call(2)]}, _result(2)]
    body = _built(loop, ENABLED)
    assert body["thinking"] == {"type": "enabled", "budget_tokens": 2048}
    assert [b["type"] for b in body["messages"][1]["content"]] == ["thinking", "tool_use"]
    # The loop began without thinking (another family's step): no thinking, and none of the loop's
    # thinking blocks, which Anthropic refuses in the final turn with thinking disabled.
    loop = [{"role": "user", "content": "go"}, {"role": "assistant", "content": [_call(1)]}, _result(1),
            {"role": "assistant", "content": [SIGNED, _call(2)]}, _result(2)]
    body = _built(loop, ENABLED)
    assert "thinking" not in body
    assert [[b["type"] for b in m["content"]] for m in body["messages"] if m["role"] == "assistant"] == [
        ["tool_use"], ["tool_use"]]


def test_thinking_stays_for_a_closed_loop_and_for_adaptive_thinking() -> None:
    closed = [{"role": "user", "content": "go"}, {"role": "assistant", "content": [_call(1)]}, _result(1),
              {"role": "assistant", "content": "done"}, {"role": "user", "content": "and now?"}]
    assert _built(closed, ENABLED)["thinking"]["type"] == "enabled"
    # Adaptive thinking may begin a turn with a tool call.
    assert _built(_tool_loop(None), {"type": "adaptive"})["thinking"] == {"type": "adaptive"}


@pytest.mark.parametrize(("config", "tool_config", "sent"), [
    ({"thinkingConfig": {"thinkingBudget": 2048}}, {"functionCallingConfig": {"mode": "ANY"}}, None),  # forced call
    ({"thinkingConfig": {"thinkingBudget": 0}}, None, {"type": "disabled"}),
    ({}, None, None),
])
def test_with_thinking_off_the_final_turn_carries_no_thinking_block(
        config: dict[str, Any], tool_config: dict[str, Any] | None, sent: dict[str, Any] | None) -> None:
    # A Gemini client whose earlier step ran on an Anthropic channel with thinking: the loop's thought
    # carries Anthropic's signature. Anthropic refuses it in the final turn once thinking is off.
    from axonsim.formats import gemini
    from axonsim.formats.signatures import export_signature

    thought = {"text": "hm", "thought": True, "thoughtSignature": export_signature("sig", "anthropic", "gemini")}
    contents = [{"role": "user", "parts": [{"text": "before"}]},
                {"role": "model", "parts": [{**thought}, {"text": "earlier answer"}]},
                {"role": "user", "parts": [{"text": "go"}]},
                {"role": "model", "parts": [thought, {"functionCall": {"name": "f", "args": {}}}]},
                {"role": "user", "parts": [{"functionResponse": {"name": "f", "response": {"result": "ok"}}}]}]
    body: dict[str, Any] = {"contents": contents, "tools": [{"functionDeclarations": [{"name": "f"}]}],
                            "generationConfig": config}
    if tool_config:
        body["toolConfig"] = tool_config
    built = orjson.loads(A.build_request(gemini.parse_request(orjson.dumps(body), "m"), "claude-x"))
    assert built.get("thinking") == sent
    kinds = [[b["type"] for b in m["content"]] for m in built["messages"] if m["role"] == "assistant"]
    assert kinds == [["thinking", "text"], ["tool_use"]]  # an earlier turn's thinking may stay


def test_a_message_that_held_only_thinking_is_left_out_with_thinking_off() -> None:
    # A Responses client may order a reasoning item after a call: alone, it is a message of its own.
    from axonsim.formats import openai_responses
    from axonsim.formats.signatures import export_signature

    def reasoning(n: int) -> dict[str, Any]:
        return {"type": "reasoning", "id": f"rs_{n}", "summary": [{"type": "summary_text", "text": "t"}],
                "encrypted_content": export_signature(f"S{n}", "anthropic", "openai_responses")}

    items = [{"role": "user", "content": "q"}, reasoning(1), {"type": "function_call", "call_id": "c1", "name": "f",
                                                              "arguments": "{}"},
             reasoning(2), {"type": "function_call_output", "call_id": "c1", "output": "ok"}]
    req = openai_responses.parse_request(orjson.dumps(
        {"model": "m", "input": items, "tools": [{"type": "function", "name": "f", "parameters": {"type": "object"}}]}))
    built = orjson.loads(A.build_request(req, "claude-x"))
    assert [(m["role"], [b["type"] for b in m["content"]]) for m in built["messages"]] == [
        ("user", ["text"]), ("assistant", ["tool_use"]), ("user", ["tool_result"])]


def test_a_threaded_request_is_refused_as_anthropic_refuses_what_threads_cannot_carry() -> None:
    """Message Threads keep the conversation on Anthropic's side and a `continue` sends only the new
    turns, which no other channel (nor another Anthropic key) could answer. The refusal carries the
    error_code on which the SDK sends the whole conversation without `thread` instead."""
    with pytest.raises(FormatError) as exc:
        A.parse_request(_body(thread={"type": "create"}))
    assert exc.value.param == "thread" and exc.value.status == 400
    assert exc.value.details == {"error_code": "thread_unsupported_request"}
    out = orjson.loads(A.render_error(Error(kind=ErrorKind.INVALID_REQUEST, status=400, message=exc.value.message,
                                            details=exc.value.details)))
    assert out["error"]["type"] == "invalid_request_error"
    assert out["error"]["details"] == {"error_code": "thread_unsupported_request"}
    # errors without details keep Anthropic's plain shape
    plain = orjson.loads(A.render_error(Error(kind=ErrorKind.INVALID_REQUEST, status=400, message="m")))
    assert set(plain["error"]) == {"type", "message"}
    A.parse_request(_body(thread=None))  # null is no thread
