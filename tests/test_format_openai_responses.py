"""OpenAI Responses format: fixtures, the official SDK as an offline client, round trips, bad input."""

from __future__ import annotations

import json
import random
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import httpx2
import openai
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from openai.types.responses import Response as SDKResponse
from openai.types.responses import ResponseStreamEvent
from pydantic import TypeAdapter

from axonsim.formats import FormatError, get_format
from axonsim.formats import openai_responses as fmt
from axonsim.formats.signatures import export_signature
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

FIXTURES = Path(__file__).parent / "fixtures" / "providers" / "openai_responses"
STREAM_EVENT = TypeAdapter(ResponseStreamEvent)
PAIRS = ["text", "tool", "reasoning", "incomplete"]  # names with both a .stream.jsonl and a .response.json
SETTINGS = settings(max_examples=60, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow])


# --------------------------------------------------------------------------------------------------
# helpers


def fixture_bytes(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def fixture_stream(name: str) -> bytes:
    """A .stream.jsonl replayed as the SSE bytes OpenAI sends."""
    out = b""
    for line in (FIXTURES / name).read_text().splitlines():
        ev = json.loads(line)
        out += f"event: {ev['Type']}\ndata: {ev['Data']}\n\n".encode()
    return out


def parse_stream(data: bytes, chunks: Iterable[bytes] | None = None) -> list[StreamEvent]:
    parser = fmt.StreamParser()
    events: list[StreamEvent] = []
    for chunk in chunks if chunks is not None else [data]:
        events.extend(parser.feed(chunk))
    events.extend(parser.close())
    return events


def aggregate(events: Iterable[StreamEvent]) -> Response:
    agg = StreamAggregator()
    for ev in events:
        agg.add(ev)
    return agg.response()


def render_stream(req: Request, events: Iterable[StreamEvent]) -> bytes:
    r = fmt.StreamRenderer(req)
    return b"".join(r.render(ev) for ev in events) + r.finish()


def sse_events(data: bytes) -> list[tuple[str, dict[str, Any]]]:
    dec = SSEDecoder()
    raw = dec.feed(data) + dec.close()
    return [(e.event, json.loads(e.data)) for e in raw]


def random_splits(data: bytes, rng: random.Random, n: int) -> list[bytes]:
    cuts = sorted(rng.sample(range(1, len(data)), min(n, len(data) - 1)))
    return [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]


def sdk_client(body: bytes, status: int = 200, content_type: str = "application/json",
               headers: dict[str, str] | None = None, seen: list[httpx2.Request] | None = None) -> openai.OpenAI:
    """The official SDK, retries off, talking to a transport that answers with `body`: the SDK's
    own parsing and stream accumulation run exactly as against a server."""

    def handler(request: httpx2.Request) -> httpx2.Response:
        if seen is not None:
            seen.append(request)
        return httpx2.Response(status, headers={"content-type": content_type, **(headers or {})}, content=body)

    return openai.OpenAI(api_key="k", base_url="http://gateway.test/v1", max_retries=0,
                         http_client=httpx2.Client(transport=httpx2.MockTransport(handler)))


def req_of(**kw: Any) -> Request:
    base: dict[str, Any] = {"model": "gpt-5.5", "messages": [Message(role="user", content=[TextPart(text="hi")])]}
    base.update(kw)
    return Request(**base)


def check_lifecycle(data: bytes) -> list[tuple[str, dict[str, Any]]]:
    """The invariants of protocols.md §2 that the SDK's responses.stream() helper enforces, plus
    the wire rules (event: line = data.type, sequence numbers from 0, no [DONE])."""
    assert b"[DONE]" not in data
    events = sse_events(data)
    assert events, "empty stream"
    ids = set()
    added: dict[int, dict[str, Any]] = {}
    parts: set[tuple[int, int]] = set()
    done: dict[int, dict[str, Any]] = {}
    for seq, (name, obj) in enumerate(events):
        assert name == obj["type"], "the event: line must repeat the data type"
        assert obj["sequence_number"] == seq
        STREAM_EVENT.validate_python(obj)  # the SDK's own model of every event
        etype = obj["type"]
        if "response" in obj:
            ids.add(obj["response"]["id"])
        if etype == "response.output_item.added":
            assert obj["output_index"] not in added
            added[obj["output_index"]] = obj["item"]
        elif etype == "response.output_item.done":
            assert obj["output_index"] in added
            assert obj["item"]["id"] == added[obj["output_index"]]["id"]
            done[obj["output_index"]] = obj["item"]
        elif etype == "response.content_part.added":
            assert obj["output_index"] in added
            parts.add((obj["output_index"], obj["content_index"]))
        elif etype in ("response.output_text.delta", "response.output_text.done", "response.content_part.done"):
            assert (obj["output_index"], obj["content_index"]) in parts
        elif "output_index" in obj:
            assert obj["output_index"] in added, f"{etype} before its output_item.added"
            assert obj["output_index"] not in done, f"{etype} after its output_item.done"
    assert events[0][0] == "response.created"
    assert events[1][0] == "response.in_progress"
    assert len(ids) == 1, "one response id in every lifecycle event"
    last_type, last = events[-1]
    assert last_type in ("response.completed", "response.incomplete", "response.failed")
    assert all(name not in ("response.completed", "response.incomplete", "response.failed")
               for name, _ in events[:-1])
    if last_type != "response.failed":
        assert set(done) == set(added), "every added item is closed"
        final_ids = [item["id"] for item in last["response"]["output"]]
        assert final_ids == [done[i]["id"] for i in sorted(done)]
        SDKResponse.model_validate(last["response"])
    return events


# --------------------------------------------------------------------------------------------------
# the contract


def test_module_provides_the_format_contract() -> None:
    mod = get_format("openai_responses")
    assert mod is fmt
    for name in ("parse_request", "render_response", "StreamRenderer", "error_status", "render_error",
                 "error_headers", "request_path", "auth_headers", "build_request", "stream_passthrough", "parse_response",
                 "StreamParser", "parse_error"):
        assert callable(getattr(mod, name)), name
    assert fmt.request_path("gpt-5.5", True) == fmt.request_path("gpt-5.5", False) == "/responses"
    assert fmt.auth_headers("sk-x") == {"Authorization": "Bearer sk-x"}


# --------------------------------------------------------------------------------------------------
# inbound: parse_request


def test_parse_text_request() -> None:
    req = fmt.parse_request(fixture_bytes("responses-text.request.json"))
    assert req.model == "gpt-5.5"
    assert [m.role for m in req.messages] == ["system", "user"]
    assert req.messages[0].text() == "You are a concise assistant. Answer in one line."
    assert req.messages[1].text() == "Count from 1 to 10, separated by commas."
    assert req.sampling == Sampling(temperature=0.2, top_p=0.9, max_tokens=256)
    assert req.response_format == ResponseFormat(type="text")
    assert req.metadata == {"session": "s-42"} and req.user == "user-7"
    assert req.stream is False and req.include_usage is True
    # fields with no unified meaning are carried for a same-family upstream
    assert req.extra_body == {"store": False, "truncation": "auto", "text": {"verbosity": "low"}}


def test_parse_history_request_with_reasoning_tool_call_and_hosted_tool() -> None:
    req = fmt.parse_request(fixture_bytes("responses-tool.request.json"))
    system, user, assistant, tool = req.messages
    assert system.role == "system" and user.text() == "What is the capital of PotatoLand?"
    # reasoning + commentary + function_call are one assistant turn
    assert assistant.role == "assistant"
    reasoning, text = assistant.content
    assert isinstance(reasoning, ReasoningPart) and reasoning.signature and reasoning.signature.startswith("gAAAAA")
    assert isinstance(text, TextPart) and "PotatoLand" in text.text
    assert assistant.tool_calls == [ToolCall(id="call_LabG58Uhrq9kZvR52BYKjToD", name="get_capital",
                                             arguments='{"country":"PotatoLand"}')]
    assert tool.role == "tool"
    (result,) = tool.content
    assert isinstance(result, ToolResultPart)
    assert result.tool_call_id == "call_LabG58Uhrq9kZvR52BYKjToD"
    assert result.name == "get_capital"  # looked up from the call, for Gemini
    assert result.content == [TextPart(text="Potato City")]
    function, hosted = req.tools
    assert function.type == "function" and function.strict is True and function.parameters
    assert hosted == Tool(type="native", name="web_search", provider="openai_responses",
                          native={"type": "web_search", "search_context_size": "low"})
    assert req.tool_choice == ToolChoice(mode="auto", disable_parallel=True)
    assert req.reasoning_effort == "medium" and req.stream is True
    assert req.extra_body == {"include": ["reasoning.encrypted_content"], "store": False,
                              "reasoning": {"summary": "auto"}}


def test_parse_multimodal_structured_request() -> None:
    req = fmt.parse_request(fixture_bytes("responses-multimodal.request.json"))
    dev, user = req.messages
    assert dev.role == "developer" and dev.text() == "Reply with JSON that matches the schema."
    text, url_image, data_image = user.content
    assert isinstance(text, TextPart)
    assert url_image == ImagePart(url="https://upload.wikimedia.org/wikipedia/commons/3/3f/Fronalpstock_big.jpg",
                                  detail="high")
    assert isinstance(data_image, ImagePart) and data_image.media_type == "image/png"
    assert data_image.data and data_image.data.startswith("iVBORw0KGgo") and data_image.url is None
    assert req.response_format is not None and req.response_format.type == "json_schema"
    assert req.response_format.name == "image_description" and req.response_format.strict is True
    assert req.response_format.json_schema and req.response_format.json_schema["required"] == ["items"]
    assert req.tool_choice == ToolChoice(mode="none")
    assert req.extra_body == {"service_tier": "flex", "prompt_cache_key": "img-desc-v1"}


def test_parse_input_shapes() -> None:
    body = {
        "model": "m",
        "input": [
            {"role": "user", "content": [{"type": "input_text", "text": "go"}]},
            {"type": "function_call", "call_id": "c1", "name": "a", "arguments": "{}"},
            {"type": "function_call", "call_id": "c2", "name": "b", "arguments": {"x": 1}},
            {"type": "function_call_output", "call_id": "c1", "output": "one"},
            {"type": "function_call_output", "call_id": "c2", "output": [
                {"type": "input_text", "text": "two"},
                {"type": "input_image", "image_url": "https://example.com/x.png"}]},
            {"role": "assistant", "content": [{"type": "refusal", "refusal": "I can't help with that."}]},
            {"type": "reasoning", "id": "rs_1", "summary": []},  # nothing replayable: dropped
        ],
    }
    req = fmt.parse_request(orjson.dumps(body))
    user, calls, out1, out2, refusal = req.messages
    assert [c.id for c in calls.tool_calls] == ["c1", "c2"]  # consecutive calls → one assistant message
    assert calls.tool_calls[1].arguments == '{"x":1}'
    assert isinstance(out1.content[0], ToolResultPart) and out1.content[0].name == "a"
    assert isinstance(out2.content[0], ToolResultPart)
    assert out2.content[0].content == [TextPart(text="two"), ImagePart(url="https://example.com/x.png")]
    assert refusal.refusal == "I can't help with that." and refusal.content == []


def test_parse_request_url_model_and_stream_override() -> None:
    req = fmt.parse_request(b'{"input":"hi","stream":false}', model="from-url", stream=True)
    assert req.model == "from-url" and req.stream is True


@pytest.mark.parametrize(("body", "param"), [
    ({"input": "hi"}, "model"),
    ({"model": "", "input": "hi"}, "model"),
    ({"model": "m"}, "input"),
    ({"model": "m", "input": 5}, "input"),
    ({"model": "m", "input": "hi", "previous_response_id": "resp_1"}, "previous_response_id"),
    ({"model": "m", "input": "hi", "conversation": "conv_1"}, "conversation"),
    ({"model": "m", "input": "hi", "background": True}, "background"),
    ({"model": "m", "input": [{"type": "item_reference", "id": "msg_1"}]}, "input[0]"),
    ({"model": "m", "input": [{"type": "function_call", "name": "f"}]}, "input[0].call_id"),
    ({"model": "m", "input": [{"type": "function_call", "call_id": "c", "name": "f", "arguments": 3}]},
     "input[0].arguments"),
    ({"model": "m", "input": [{"type": "function_call_output", "call_id": "c"}]}, "input[0].output"),
    ({"model": "m", "input": [{"role": "tool", "content": "x"}]}, "input[0].role"),
    ({"model": "m", "input": [{"role": "user"}]}, "input[0].content"),
    ({"model": "m", "input": ["hi"]}, "input[0]"),
    ({"model": "m", "input": [{"role": "user", "content": [{"type": "input_image", "file_id": "file_1"}]}]},
     "input[0].content[0].file_id"),
    ({"model": "m", "input": [{"role": "user", "content": [{"type": "input_image", "image_url": "ftp://x/y.png"}]}]},
     "input[0].content[0].image_url"),
    ({"model": "m", "input": [{"role": "user", "content": [
        {"type": "input_image", "image_url": "data:image/png,notbase64"}]}]}, "input[0].content[0].image_url"),
    ({"model": "m", "input": [{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}]},
     "input[0].content[0].type"),
    ({"model": "m", "input": [{"type": "computer_call_output", "call_id": "c"}]}, "input[0].type"),
    ({"model": "m", "input": "hi", "tools": [{"type": "function"}]}, "tools[0].name"),
    ({"model": "m", "input": "hi", "tools": [{"type": "function", "function": {"name": "chat_style"}}]},
     "tools[0].name"),
    ({"model": "m", "input": "hi", "tools": {"type": "function"}}, "tools"),
    ({"model": "m", "input": "hi", "tool_choice": "any"}, "tool_choice"),
    ({"model": "m", "input": "hi", "tool_choice": {"type": "function"}}, "tool_choice.name"),
    ({"model": "m", "input": "hi", "temperature": "hot"}, "temperature"),
    ({"model": "m", "input": "hi", "temperature": True}, "temperature"),
    ({"model": "m", "input": "hi", "max_output_tokens": 1.5}, "max_output_tokens"),
    ({"model": "m", "input": "hi", "max_output_tokens": 15}, "max_output_tokens"),  # the API's floor is 16
    ({"model": "m", "input": "hi", "temperature": 2.01}, "temperature"),
    ({"model": "m", "input": "hi", "top_p": -1}, "top_p"),
    ({"model": "m", "input": "hi", "text": {"format": {"type": "xml"}}}, "text.format.type"),
    ({"model": "m", "input": "hi", "instructions": ["a"]}, "instructions"),
    ({"model": "m", "input": "hi", "reasoning": {"effort": 3}}, "reasoning.effort"),
    ({"model": "m", "input": "hi", "parallel_tool_calls": "no"}, "parallel_tool_calls"),
])
def test_bad_requests_name_the_field(body: dict[str, Any], param: str) -> None:
    with pytest.raises(FormatError) as exc:
        fmt.parse_request(orjson.dumps(body))
    assert exc.value.param == param
    assert exc.value.status == 400
    assert param.split(".")[-1].split("[")[0] in exc.value.message


@pytest.mark.parametrize("body", [b"not json", b"[1, 2]", b"", b"null"])
def test_unparseable_bodies(body: bytes) -> None:
    with pytest.raises(FormatError) as exc:
        fmt.parse_request(body)
    assert exc.value.status == 400


def test_unsupported_state_is_explained() -> None:
    with pytest.raises(FormatError) as exc:
        fmt.parse_request(b'{"model":"m","input":[{"type":"item_reference","id":"msg_1"}]}')
    assert "server-side state" in exc.value.message
    with pytest.raises(FormatError) as exc:
        fmt.parse_request(b'{"model":"m","input":"hi","previous_response_id":"resp_9"}')
    assert "server-side" in exc.value.message and "input" in exc.value.message


# --------------------------------------------------------------------------------------------------
# outbound: parse_response and the stream parser on provider-shaped fixtures


@pytest.mark.parametrize("name", PAIRS)
def test_stream_aggregate_equals_non_stream_parse(name: str) -> None:
    events = parse_stream(fixture_stream(f"responses-{name}.stream.jsonl"))
    assert isinstance(events[0], StreamStart)
    assert aggregate(events) == fmt.parse_response(fixture_bytes(f"responses-{name}.response.json"))


def test_parse_tool_response() -> None:
    resp = fmt.parse_response(fixture_bytes("responses-tool.response.json"))
    assert resp.id == "resp_0fabc13af1ee0049006a691dfdab8881a1a75f2db7ff78cb83"
    assert resp.model == "gpt-5.5-2026-04-23" and resp.created == 1785273853
    assert resp.finish_reason == "tool_calls"
    reasoning, text = resp.message.content
    assert isinstance(reasoning, ReasoningPart) and reasoning.text == ""
    assert reasoning.signature and reasoning.signature.startswith("gAAAAAB")
    assert isinstance(text, TextPart) and text.text == "I’ll check the capital lookup tool for “PotatoLand.”"
    assert resp.message.tool_calls == [ToolCall(id="call_LabG58Uhrq9kZvR52BYKjToD", name="get_capital",
                                                arguments='{"country":"PotatoLand"}')]
    assert resp.usage == Usage(prompt_tokens=63, completion_tokens=69, total_tokens=132, reasoning_tokens=26)


def test_parse_reasoning_response_usage_and_summaries() -> None:
    resp = fmt.parse_response(fixture_bytes("responses-reasoning.response.json"))
    reasoning = resp.message.content[0]
    assert isinstance(reasoning, ReasoningPart)
    assert reasoning.text.startswith("**Checking divisibility**") and "\n\n**Trying small primes**" in reasoning.text
    assert resp.message.text() == "No. 221 = 13 × 17, so it is not prime."
    assert resp.usage == Usage(prompt_tokens=1342, completion_tokens=236, total_tokens=1578, cached_tokens=1152,
                               reasoning_tokens=192)
    assert resp.finish_reason == "stop"


def test_parse_incomplete_response_is_length() -> None:
    resp = fmt.parse_response(fixture_bytes("responses-incomplete.response.json"))
    assert resp.finish_reason == "length"
    assert resp.message.text().startswith("Once upon a time")


def test_stream_tool_events_in_detail() -> None:
    events = parse_stream(fixture_stream("responses-tool.stream.jsonl"))
    calls = [e for e in events if isinstance(e, ToolCallDelta)]
    fc_id = next(i["id"] for i in json.loads(fixture_bytes("responses-tool.response.json"))["output"]
                 if i["type"] == "function_call")
    assert calls[0] == ToolCallDelta(index=0, id="call_LabG58Uhrq9kZvR52BYKjToD", name="get_capital", arguments="",
                                     item_id=fc_id)
    assert all(c.index == 0 and c.id is None for c in calls[1:])
    # the signature is the encrypted_content of output_item.done, not the (incomplete) one of .added
    sigs = [e.signature for e in events if isinstance(e, ReasoningDelta) and e.signature]
    done = json.loads(fixture_bytes("responses-tool.response.json"))["output"][0]["encrypted_content"]
    assert sigs == [done]
    assert [e for e in events if isinstance(e, FinishEvent)] == [FinishEvent(reason="tool_calls")]
    assert isinstance(events[-1], UsageEvent) and events[-1].usage.reasoning_tokens == 26


@pytest.mark.parametrize("name", PAIRS)
def test_stream_rerendered_for_a_responses_client_keeps_the_upstream_item_ids(name: str) -> None:
    # A client replays output items by id (store: true looks them up), so a Responses stream
    # rendered again from unified events must carry the provider's ids, as a passed-through answer does.
    events = parse_stream(fixture_stream(f"responses-{name}.stream.jsonl"))
    r = fmt.StreamRenderer(Request(model="m", messages=[], stream=True))
    out = b"".join(r.render(e) for e in events) + r.finish()
    done = [json.loads(line[6:]) for line in out.split(b"\n") if line.startswith(b"data: ")][-1]
    recorded = json.loads(fixture_bytes(f"responses-{name}.response.json"))
    assert [i["id"] for i in done["response"]["output"]] == [i["id"] for i in recorded["output"]]


def test_failed_stream_ends_in_error_event() -> None:
    events = parse_stream(fixture_stream("responses-failed.stream.jsonl"))
    assert isinstance(events[0], StreamStart)
    assert [e.text for e in events if isinstance(e, TextDelta)] == ["Sure, here"]
    last = events[-1]
    assert isinstance(last, ErrorEvent)
    assert last.error.kind is ErrorKind.SERVER_ERROR and last.error.code == "server_error"
    assert "server had an error" in last.error.message


@pytest.mark.parametrize("name", [*PAIRS, "failed"])
def test_stream_parser_any_chunking(name: str) -> None:
    data = fixture_stream(f"responses-{name}.stream.jsonl")
    whole = parse_stream(data)
    rng = random.Random(name)
    for n in (1, 7, 50, 400):
        assert parse_stream(data, random_splits(data, rng, n)) == whole
    assert parse_stream(data, [data[i:i + 1] for i in range(len(data))]) == whole
    crlf = data.replace(b"\n", b"\r\n")
    assert parse_stream(crlf, random_splits(crlf, rng, 300)) == whole


def test_stream_parser_error_event_and_trailing_events() -> None:
    data = (b'event: response.created\ndata: {"type":"response.created","response":{"id":"resp_1","model":"m",'
            b'"created_at":5},"sequence_number":0}\n\n'
            b'event: error\ndata: {"type":"error","code":"rate_limit_exceeded","message":"Slow down",'
            b'"param":null,"sequence_number":1}\n\n'
            b'event: response.output_text.delta\ndata: {"type":"response.output_text.delta","delta":"late",'
            b'"output_index":0,"content_index":0,"sequence_number":2}\n\n')
    events = parse_stream(data)
    assert events[0] == StreamStart(id="resp_1", model="m", created=5)
    assert isinstance(events[1], ErrorEvent) and events[1].error.kind is ErrorKind.RATE_LIMITED
    assert events[1].error.status == 429 and len(events) == 2


def test_stream_parser_done_events_without_deltas() -> None:
    """Some Responses-compatible servers send only the *.done events; nothing may be lost."""
    data = b"".join(f"data: {json.dumps(e)}\n\n".encode() for e in [
        {"type": "response.created", "response": {"id": "r", "model": "m", "created_at": 1}},
        {"type": "response.output_item.added", "output_index": 0,
         "item": {"type": "reasoning", "id": "rs", "summary": []}},
        {"type": "response.output_item.done", "output_index": 0,
         "item": {"type": "reasoning", "id": "rs", "summary": [{"type": "summary_text", "text": "think"}],
                  "encrypted_content": "gAAAAAsig"}},
        {"type": "response.output_item.added", "output_index": 1,
         "item": {"type": "message", "id": "m1", "role": "assistant", "content": []}},
        {"type": "response.output_text.done", "output_index": 1, "content_index": 0, "text": "Hello"},
        {"type": "response.output_item.done", "output_index": 1,
         "item": {"type": "message", "id": "m1", "role": "assistant",
                  "content": [{"type": "output_text", "text": "Hello"}]}},
        {"type": "response.output_item.done", "output_index": 2,
         "item": {"type": "function_call", "id": "fc", "call_id": "c", "name": "f", "arguments": "{}"}},
        {"type": "response.completed", "response": {"id": "r", "status": "completed", "usage": None}},
    ])
    resp = aggregate(parse_stream(data))
    assert resp.message.content == [ReasoningPart(text="think", signature="gAAAAAsig", signature_provider=fmt.FAMILY),
                                     TextPart(text="Hello")]
    assert resp.message.tool_calls == [ToolCall(id="c", name="f", arguments="{}")]
    assert resp.finish_reason == "tool_calls"


def test_stream_parser_reasoning_text_and_refusal() -> None:
    data = b"".join(f"data: {json.dumps(e)}\n\n".encode() for e in [
        {"type": "response.created", "response": {"id": "r", "model": "m", "created_at": 1}},
        {"type": "response.reasoning_text.delta", "output_index": 0, "content_index": 0, "delta": "raw "},
        {"type": "response.reasoning_text.delta", "output_index": 0, "content_index": 0, "delta": "thought"},
        {"type": "response.refusal.delta", "output_index": 1, "content_index": 0, "delta": "No."},
        {"type": "response.incomplete", "response": {"id": "r", "status": "incomplete",
                                                     "incomplete_details": {"reason": "content_filter"}}},
    ])
    resp = aggregate(parse_stream(data))
    assert resp.message.content[0] == ReasoningPart(text="raw thought")
    assert resp.message.refusal == "No." and resp.message.text() == ""
    assert resp.finish_reason == "content_filter"


def test_stream_parser_requires_a_terminal_event() -> None:
    data = fixture_stream("responses-text.stream.jsonl")
    cut = data[: data.rindex(b"event: response.completed")]
    parser = fmt.StreamParser()
    parser.feed(cut)
    with pytest.raises(FormatError, match="terminal event"):
        parser.close()


def test_stream_parser_malformed_json_mid_stream() -> None:
    parser = fmt.StreamParser()
    parser.feed(fixture_stream("responses-text.stream.jsonl")[:300])
    with pytest.raises(FormatError, match="malformed JSON"):
        parser.feed(b'\n\nevent: response.output_text.delta\ndata: {"type": "response.output_te\n\n')


@pytest.mark.parametrize("body", [b"{}", b'{"id":"r"}', b'{"id":"r","output":{}}', b"nope",
                                  b'{"id":"r","output":[{"type":"function_call","name":"f"}]}'])
def test_parse_response_rejects_malformed(body: bytes) -> None:
    with pytest.raises(FormatError):
        fmt.parse_response(body)


# --------------------------------------------------------------------------------------------------
# inbound: render_response, checked by the SDK


@pytest.mark.parametrize("name", PAIRS)
def test_render_response_round_trip_and_sdk(name: str) -> None:
    resp = fmt.parse_response(fixture_bytes(f"responses-{name}.response.json"))
    body = fmt.render_response(resp)
    obj = json.loads(body)
    for key in ("id", "object", "created_at", "model", "output", "parallel_tool_calls", "tool_choice", "tools"):
        assert key in obj, key
    SDKResponse.model_validate(obj)
    assert fmt.parse_response(body) == resp

    sdk = sdk_client(body).responses.create(model="gpt-5.5", input="hi")
    assert sdk.id == resp.id and sdk.output_text == resp.message.text()
    calls = [o for o in sdk.output if o.type == "function_call"]
    assert [(c.call_id, c.name, c.arguments) for c in calls] == [
        (c.id, c.name, c.arguments) for c in resp.message.tool_calls]
    assert resp.usage is not None and sdk.usage is not None
    assert (sdk.usage.input_tokens, sdk.usage.output_tokens, sdk.usage.total_tokens) == (
        resp.usage.prompt_tokens, resp.usage.completion_tokens, resp.usage.total_tokens)
    assert sdk.usage.input_tokens_details.cached_tokens == resp.usage.cached_tokens
    assert sdk.usage.output_tokens_details.reasoning_tokens == resp.usage.reasoning_tokens
    assert sdk.status == ("incomplete" if name == "incomplete" else "completed")


@pytest.mark.parametrize(("finish", "status", "reason"), [
    ("stop", "completed", None), ("tool_calls", "completed", None),
    ("length", "incomplete", "max_output_tokens"), ("content_filter", "incomplete", "content_filter")])
def test_render_response_status(finish: Any, status: str, reason: str | None) -> None:
    resp = Response(id="resp_x", model="m", message=Message(role="assistant", content=[TextPart(text="t")]),
                    finish_reason=finish)
    obj = json.loads(fmt.render_response(resp))
    assert obj["status"] == status
    assert obj["incomplete_details"] == ({"reason": reason} if reason else None)


def test_render_response_output_items() -> None:
    msg = Message(role="assistant", content=[ReasoningPart(text="plan", signature="gAAAAAsig",
                                                           signature_provider=fmt.FAMILY),
                                             ReasoningPart(redacted=True, data="opaque"), TextPart(text="Hi")],
                  tool_calls=[ToolCall(id="call_1", name="f", arguments='{"a":1}')])
    obj = json.loads(fmt.render_response(Response(id="resp_9", model="m", created=7, message=msg,
                                                  finish_reason="tool_calls",
                                                  usage=Usage(prompt_tokens=3, completion_tokens=4))))
    r1, r2, m, fc = obj["output"]
    assert r1 == {"id": "rs_9_0", "type": "reasoning", "summary": [{"type": "summary_text", "text": "plan"}],
                  "encrypted_content": "gAAAAAsig"}
    assert r2["encrypted_content"] == fmt.REDACTED_PREFIX + "opaque" and r2["summary"] == []
    assert m["type"] == "message" and m["role"] == "assistant" and m["status"] == "completed"
    assert m["content"] == [{"type": "output_text", "text": "Hi", "annotations": [], "logprobs": []}]
    assert fc == {"id": "fc_9_3", "type": "function_call", "status": "completed", "call_id": "call_1", "name": "f",
                  "arguments": '{"a":1}'}
    assert obj["usage"] == {"input_tokens": 3, "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
                            "output_tokens": 4, "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 7}
    # the redacted block survives a client round trip (a Responses client replays it as input)
    replay = fmt.parse_request(orjson.dumps({"model": "m", "input": obj["output"]}))
    assert replay.messages[0].content[:2] == msg.content[:2]


# --------------------------------------------------------------------------------------------------
# inbound: StreamRenderer, checked against the lifecycle rules and the SDK's own accumulator


TOOLS_PARAM = [{"type": "function", "name": "get_capital", "description": "Look up the capital of a country.",
                "parameters": {"type": "object", "properties": {"country": {"type": "string"}},
                               "required": ["country"], "additionalProperties": False}, "strict": True}]


@pytest.mark.parametrize("name", PAIRS)
def test_rendered_streams_satisfy_the_sdk(name: str) -> None:
    events = parse_stream(fixture_stream(f"responses-{name}.stream.jsonl"))
    expected = aggregate(events)
    req = fmt.parse_request(fixture_bytes("responses-tool.request.json")) if name == "tool" else req_of()
    data = render_stream(req, events)
    check_lifecycle(data)

    client = sdk_client(data, content_type="text/event-stream")
    with client.responses.stream(model="gpt-5.5", input="hi", tools=TOOLS_PARAM) as stream:
        seen = [ev.type for ev in stream]
        if name == "incomplete":
            assert seen[-1] == "response.incomplete"
            with pytest.raises(RuntimeError, match="response.completed"):
                stream.get_final_response()  # the SDK's rule for an incomplete response
            return
        final = stream.get_final_response()
    assert final.id == expected.id and final.status == "completed"
    assert final.output_text == expected.message.text()
    calls = [o for o in final.output if o.type == "function_call"]
    assert [(c.call_id, c.name, c.arguments) for c in calls] == [
        (c.id, c.name, c.arguments) for c in expected.message.tool_calls]
    if calls:
        assert calls[0].parsed_arguments == {"country": "PotatoLand"}  # strict tool: the SDK parsed it
    reasoning = [o for o in final.output if o.type == "reasoning"]
    exp_reasoning = [p for p in expected.message.content if isinstance(p, ReasoningPart)]
    assert "\n\n".join(s.text for r in reasoning for s in r.summary) == "".join(p.text for p in exp_reasoning)
    assert [r.encrypted_content for r in reasoning] == [p.signature for p in exp_reasoning]
    assert final.usage is not None and expected.usage is not None
    assert final.usage.total_tokens == expected.usage.total_tokens
    # and a gateway → gateway round trip of the rendered stream gives the same answer
    assert aggregate(parse_stream(data)) == expected


def test_stream_renderer_is_incremental() -> None:
    r = fmt.StreamRenderer(req_of())
    first = sse_events(r.render(StreamStart(id="resp_a", model="m", created=3)))
    assert [n for n, _ in first] == ["response.created", "response.in_progress"]
    assert first[0][1]["response"]["status"] == "in_progress" and first[0][1]["response"]["output"] == []
    chunk = sse_events(r.render(TextDelta(text="Hel")))
    assert [n for n, _ in chunk] == ["response.output_item.added", "response.content_part.added",
                                     "response.output_text.delta"]
    assert chunk[-1][1]["delta"] == "Hel"
    assert [n for n, _ in sse_events(r.render(TextDelta(text="lo")))] == ["response.output_text.delta"]
    assert r.render(TextDelta(text="")) == b""
    assert r.render(FinishEvent(reason="stop")) == b""
    assert r.render(UsageEvent(usage=Usage(prompt_tokens=1, completion_tokens=2))) == b""
    tail = sse_events(r.finish())
    assert [n for n, _ in tail] == ["response.output_text.done", "response.content_part.done",
                                    "response.output_item.done", "response.completed"]
    assert tail[-1][1]["response"]["usage"]["total_tokens"] == 3
    assert tail[-1][1]["sequence_number"] == 9  # 2 lifecycle + 3 open + 2 deltas + 3 close, from 0
    assert r.finish() == b"" and r.render(TextDelta(text="x")) == b""


@settings(max_examples=150, deadline=None)
@given(st.text(max_size=12), st.booleans())
def test_stream_renderer_text_template_is_the_generic_event(text: str, after_reasoning: bool) -> None:
    # More text for the open message comes from a byte template; it must be exactly the event the
    # generic path serialises, sequence number and output index included.
    def primed() -> Any:
        r = fmt.StreamRenderer(req_of())
        r.render(StreamStart(id="resp_a", model="m", created=3))
        if after_reasoning:
            r.render(ReasoningDelta(text="hm"))
        r.render(TextDelta(text="first"))
        return r

    r, ref = primed(), primed()
    got = r.render(TextDelta(text=text))
    item = ref._content
    if text:
        item.chunks.append(text)  # as _text keeps the message's text for its done events
    expected = ref._emit("response.output_text.delta", item_id=item.id, output_index=item.index,
                         content_index=0, delta=text, logprobs=[]) if text else b""
    assert got == expected
    assert r.render(TextDelta(text="next")) + r.finish() == ref.render(TextDelta(text="next")) + ref.finish()


def test_stream_renderer_first_event_without_stream_start() -> None:
    r = fmt.StreamRenderer(req_of(model="client-model"))
    data = r.render(TextDelta(text="hi")) + r.finish()
    events = check_lifecycle(data)
    assert events[0][1]["response"]["model"] == "client-model"


def test_stream_renderer_reasoning_signature_and_redacted() -> None:
    events: list[StreamEvent] = [
        StreamStart(id="resp_t", model="claude", created=1),
        ReasoningDelta(text="Let me "), ReasoningDelta(text="think."),
        ReasoningDelta(signature="sigA", signature_provider="anthropic"),
        ReasoningDelta(redacted_data="REDACTED"),
        ReasoningDelta(text="More."), ReasoningDelta(signature="sigB", signature_provider="anthropic"),
        TextDelta(text="Answer."),
        ToolCallDelta(index=0, id="toolu_1", name="f", arguments='{"q":'), ToolCallDelta(index=0, arguments='"x"}'),
        FinishEvent(reason="tool_calls"), UsageEvent(usage=Usage(prompt_tokens=5, completion_tokens=6)),
    ]
    data = render_stream(req_of(), events)
    lifecycle = check_lifecycle(data)
    items = lifecycle[-1][1]["response"]["output"]
    assert [i["type"] for i in items] == ["reasoning", "reasoning", "reasoning", "message", "function_call"]
    # Anthropic's signatures reach the Responses client wrapped with their provider (axonsim.formats.signatures)
    assert items[0]["summary"][0]["text"] == "Let me think."
    assert items[0]["encrypted_content"] == export_signature("sigA", "anthropic", fmt.FAMILY)
    assert items[1]["encrypted_content"] == fmt.REDACTED_PREFIX + "REDACTED"
    assert items[2]["encrypted_content"] == export_signature("sigB", "anthropic", fmt.FAMILY)
    parsed = parse_stream(data)
    assert aggregate(parsed) == aggregate(events)
    assert any(isinstance(e, ReasoningDelta) and e.redacted_data == "REDACTED" for e in parsed)


def test_stream_renderer_interleaved_tool_calls() -> None:
    events: list[StreamEvent] = [
        StreamStart(id="resp_p", model="m"),
        TextDelta(text="Calling two tools."),
        ToolCallDelta(index=0, id="call_a", name="get_capital", arguments='{"coun'),
        ToolCallDelta(index=1, id="call_b", name="get_capital", arguments='{"country":'),
        ToolCallDelta(index=0, arguments='try":"X"}'),
        ToolCallDelta(index=1, arguments='"Y"}'),
        FinishEvent(reason="tool_calls"),
    ]
    data = render_stream(req_of(), events)
    check_lifecycle(data)
    with sdk_client(data, content_type="text/event-stream").responses.stream(
            model="m", input="hi", tools=TOOLS_PARAM) as stream:
        final = stream.get_final_response()
    calls = [o for o in final.output if o.type == "function_call"]
    assert [(c.call_id, c.parsed_arguments) for c in calls] == [("call_a", {"country": "X"}),
                                                                 ("call_b", {"country": "Y"})]
    assert aggregate(parse_stream(data)) == aggregate(events)


def test_stream_renderer_late_fragment_still_reaches_the_final_response() -> None:
    events: list[StreamEvent] = [
        StreamStart(id="resp_l", model="m"), ToolCallDelta(index=0, id="c0", name="f", arguments="{"),
        TextDelta(text="interleaved text"), ToolCallDelta(index=0, arguments="}"), FinishEvent(reason="tool_calls"),
    ]
    data = render_stream(req_of(), events)
    check_lifecycle(data)
    final = sse_events(data)[-1][1]["response"]
    assert [o["arguments"] for o in final["output"] if o["type"] == "function_call"] == ["{}"]


@pytest.mark.parametrize("before_start", [False, True])
def test_stream_renderer_error_ends_with_response_failed(before_start: bool) -> None:
    r = fmt.StreamRenderer(req_of())
    data = b""
    if not before_start:
        data += r.render(StreamStart(id="resp_e", model="m")) + r.render(TextDelta(text="partial"))
    err = Error(kind=ErrorKind.RATE_LIMITED, status=429, message="upstream rate limited", retry_after=3)
    data += r.error(err)
    assert r.finish() == b"" and r.error(err) == b""
    events = check_lifecycle(data)
    failed = events[-1][1]["response"]
    assert failed["status"] == "failed"
    assert failed["error"] == {"code": "rate_limit_exceeded", "message": "upstream rate limited"}
    if not before_start:
        assert failed["output"][0]["status"] == "incomplete"
        assert failed["output"][0]["content"][0]["text"] == "partial"
    with sdk_client(data, content_type="text/event-stream").responses.stream(model="m", input="hi") as stream:
        assert [ev.type for ev in stream][-1] == "response.failed"
        with pytest.raises(RuntimeError):
            stream.get_final_response()
    parsed = parse_stream(data)
    assert isinstance(parsed[-1], ErrorEvent) and parsed[-1].error.kind is ErrorKind.RATE_LIMITED


def test_stream_renderer_error_event_from_upstream() -> None:
    r = fmt.StreamRenderer(req_of())
    err = Error(kind=ErrorKind.SERVER_ERROR, status=502, message="upstream stream broke")
    data = r.render(StreamStart(id="resp_u", model="m")) + r.render(ErrorEvent(error=err))
    assert sse_events(data)[-1][0] == "response.failed" and r.finish() == b""


def test_stream_renderer_echoes_the_request() -> None:
    req = fmt.parse_request(fixture_bytes("responses-tool.request.json"))
    created = sse_events(fmt.StreamRenderer(req).render(StreamStart(id="resp_q", model="m")))[0][1]["response"]
    assert created["instructions"] == req.messages[0].text()
    assert [t["type"] for t in created["tools"]] == ["function", "web_search"]
    assert created["parallel_tool_calls"] is False and created["tool_choice"] == "auto"
    assert created["reasoning"] == {"effort": "medium", "summary": "auto"}
    SDKResponse.model_validate(created)


# --------------------------------------------------------------------------------------------------
# outbound: build_request


def test_build_request_from_parsed_history() -> None:
    req = fmt.parse_request(fixture_bytes("responses-tool.request.json"))
    body = json.loads(fmt.build_request(req, "gpt-5.5-2026-04-23"))
    original = json.loads(fixture_bytes("responses-tool.request.json"))
    assert body["model"] == "gpt-5.5-2026-04-23" and body["instructions"] == original["instructions"]
    assert body["store"] is False and body["stream"] is True
    assert body["include"] == ["reasoning.encrypted_content"]
    assert body["reasoning"] == {"effort": "medium", "summary": "auto"}
    assert body["parallel_tool_calls"] is False and body["tool_choice"] == "auto"
    assert body["tools"][1] == {"type": "web_search", "search_context_size": "low"}
    kinds = [i.get("type") for i in body["input"]]
    assert kinds == ["message", "reasoning", "message", "function_call", "function_call_output"]
    # store=false: no item ids (OpenAI would look them up), reasoning rides on encrypted_content
    assert all("id" not in i for i in body["input"])
    assert body["input"][1]["encrypted_content"] == original["input"][1]["encrypted_content"]
    assert body["input"][3] == {"type": "function_call", "call_id": "call_LabG58Uhrq9kZvR52BYKjToD",
                                "name": "get_capital", "arguments": '{"country":"PotatoLand"}'}
    assert body["input"][4] == {"type": "function_call_output", "call_id": "call_LabG58Uhrq9kZvR52BYKjToD",
                                "output": "Potato City"}


def test_build_request_from_other_families() -> None:
    """What Chat, Anthropic or Gemini clients produce: system mid-conversation, Anthropic tool results
    inside a user turn, foreign signatures, thinking budgets, images, no strictness."""
    req = Request(
        model="claude-sonnet-4",
        messages=[
            Message(role="system", content=[TextPart(text="Be brief.")]),
            Message(role="user", content=[TextPart(text="Look"), ImagePart(media_type="image/jpeg", data="AAAA")]),
            Message(role="assistant", content=[ReasoningPart(text="hmm", signature="EqQBCkYIBhgCKkB..."),
                                               ReasoningPart(redacted=True, data="xyz"),
                                               ReasoningPart(text="no signature"), TextPart(text="Calling.")],
                    tool_calls=[ToolCall(id="toolu_01", name="f", arguments='{"a":1}')]),
            Message(role="user", content=[ToolResultPart(tool_call_id="toolu_01", content=[TextPart(text="42")]),
                                          TextPart(text="and now?")]),
            Message(role="system", content=[TextPart(text="Late instruction.")]),
        ],
        tools=[Tool(name="f", parameters={"type": "object"})],
        tool_choice=ToolChoice(mode="function", name="f", disable_parallel=True),
        sampling=Sampling(temperature=0.5, max_tokens=1000, stop=["END"], top_k=5),
        reasoning_budget=8000,
        stream=True,
        extra_body={"store": True, "include": ["message.output_text.logprobs"]},
        source=fmt.FAMILY,  # extra_body is passed through only from a Responses client
    )
    body = json.loads(fmt.build_request(req, "gpt-5.5"))
    assert body["instructions"] == "Be brief."
    assert body["input"] == [
        {"type": "message", "role": "user", "content": [
            {"type": "input_text", "text": "Look"},
            {"type": "input_image", "image_url": "data:image/jpeg;base64,AAAA"}]},
        # reasoning is dropped: an Anthropic signature, redacted data, and unsigned text cannot be replayed
        {"type": "message", "role": "assistant",
         "content": [{"type": "output_text", "text": "Calling.", "annotations": []}]},
        {"type": "function_call", "call_id": "toolu_01", "name": "f", "arguments": '{"a":1}'},
        {"type": "function_call_output", "call_id": "toolu_01", "output": "42"},
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "and now?"}]},
        {"type": "message", "role": "system", "content": [{"type": "input_text", "text": "Late instruction."}]},
    ]
    assert body["tools"] == [{"type": "function", "name": "f", "description": None,
                              "parameters": {"type": "object"}, "strict": False}]
    assert body["tool_choice"] == {"type": "function", "name": "f"} and body["parallel_tool_calls"] is False
    assert body["reasoning"] == {"effort": "medium", "summary": "auto"}
    assert body["include"] == ["message.output_text.logprobs", "reasoning.encrypted_content"]
    assert body["store"] is False and body["max_output_tokens"] == 1000
    assert "stop" not in body and "top_k" not in body


@pytest.mark.parametrize(("req", "param"), [
    (req_of(sampling=Sampling(n=2)), "n"),
    (req_of(tools=[Tool(type="native", name="web_search", provider="anthropic",
                        native={"type": "web_search_20250305"})]), "tools[0]"),
    (req_of(messages=[Message(role="tool", content=[TextPart(text="orphan")])]), "messages[0]"),
    (req_of(messages=[Message(role="assistant", content=[ImagePart(url="https://x/y.png")])]), "messages[0]"),
])
def test_build_request_refuses_what_it_cannot_carry(req: Request, param: str) -> None:
    with pytest.raises(FormatError) as exc:
        fmt.build_request(req, "gpt-5.5")
    assert exc.value.param == param


def test_build_request_no_reasoning_no_include() -> None:
    body = json.loads(fmt.build_request(req_of(reasoning_effort="none"), "gpt-5.5"))
    assert body["reasoning"] == {"effort": "none"} and "include" not in body
    body = json.loads(fmt.build_request(req_of(), "gpt-5.5"))
    assert "reasoning" not in body and "include" not in body and "stream" not in body


# --------------------------------------------------------------------------------------------------
# errors, both roles


@pytest.mark.parametrize(("kind", "status", "sdk_exc"), [
    (ErrorKind.INVALID_REQUEST, 400, openai.BadRequestError),
    (ErrorKind.AUTHENTICATION, 401, openai.AuthenticationError),
    (ErrorKind.PERMISSION, 403, openai.PermissionDeniedError),
    (ErrorKind.NOT_FOUND, 404, openai.NotFoundError),
    (ErrorKind.RATE_LIMITED, 429, openai.RateLimitError),
    (ErrorKind.OVERLOADED, 503, openai.InternalServerError),
    (ErrorKind.SERVER_ERROR, 500, openai.InternalServerError),
    (ErrorKind.TIMEOUT, 504, openai.InternalServerError),
    (ErrorKind.CONNECTION, 502, openai.InternalServerError),
    (ErrorKind.UNAVAILABLE, 503, openai.InternalServerError),
])
def test_errors_reach_the_sdk_as_the_right_exception(kind: ErrorKind, status: int, sdk_exc: type) -> None:
    err = Error(kind=kind, status=529 if kind is ErrorKind.OVERLOADED else status, message="boom", param="input",
                retry_after=2.5 if kind is ErrorKind.RATE_LIMITED else None)
    assert fmt.error_status(err) == status
    body = json.loads(fmt.render_error(err))
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["message"] == "boom" and body["error"]["param"] == "input"
    headers = fmt.error_headers(err)
    client = sdk_client(fmt.render_error(err), status=fmt.error_status(err), headers=headers)
    with pytest.raises(sdk_exc) as exc:
        client.responses.create(model="m", input="hi")
    assert exc.value.status_code == status
    assert exc.value.body == body["error"]
    if kind is ErrorKind.RATE_LIMITED:
        assert headers == {"retry-after": "3"}
        assert body["error"]["code"] == "rate_limit_exceeded"
    else:
        assert headers == {}


def test_error_status_keeps_precise_codes() -> None:
    assert fmt.error_status(Error(kind=ErrorKind.INVALID_REQUEST, status=422, message="x")) == 422
    assert fmt.error_status(Error(kind=ErrorKind.INVALID_REQUEST, status=413, message="x")) == 413
    assert fmt.error_status(Error(kind=ErrorKind.INVALID_REQUEST, status=418, message="x")) == 400
    assert fmt.error_status(Error(kind=ErrorKind.SERVER_ERROR, status=501, message="x")) == 501
    assert fmt.error_status(Error(kind=ErrorKind.SERVER_ERROR, status=200, message="x")) == 500
    assert fmt.error_status(Error(kind=ErrorKind.OVERLOADED, status=529, message="x")) == 503


def test_errors_are_the_same_as_openai_chat() -> None:
    """Both OpenAI APIs are one family: a client must see the same error from either."""
    chat = pytest.importorskip("axonsim.formats.openai_chat")
    for kind in ErrorKind:
        for status in (0, 400, 413, 422, 429, 500, 501, 503, 529):
            for code in (None, "insufficient_quota", "custom"):
                err = Error(kind=kind, status=status, message="m", param="p", code=code, retry_after=1.2)
                assert fmt.error_status(err) == chat.error_status(err)
                assert fmt.render_error(err) == chat.render_error(err)
                assert fmt.error_headers(err) == chat.error_headers(err)


def test_parse_error_openai_bodies_and_headers() -> None:
    body = b'{"error":{"message":"Rate limit reached for requests","type":"requests","param":null,' \
           b'"code":"rate_limit_exceeded"}}'
    err = fmt.parse_error(429, {"Retry-After": "20"}, body)
    assert (err.kind, err.status, err.retry_after, err.code) == (ErrorKind.RATE_LIMITED, 429, 20.0,
                                                                 "rate_limit_exceeded")
    assert err.message == "Rate limit reached for requests"
    assert fmt.parse_error(429, {"retry-after-ms": "1500", "retry-after": "9"}, body).retry_after == 1.5
    # only x-ratelimit headers: the exhausted limit's reset, as a Go duration
    err = fmt.parse_error(429, {"x-ratelimit-remaining-requests": "5", "x-ratelimit-reset-requests": "1s",
                                "x-ratelimit-remaining-tokens": "0", "x-ratelimit-reset-tokens": "6m0s"}, body)
    assert err.retry_after == 360.0
    assert fmt.parse_error(500, {"x-ratelimit-reset-requests": "1s"}, b"{}").retry_after is None

    err = fmt.parse_error(401, {}, b'{"error":{"message":"Incorrect API key provided: sk-proj-abc1***********wxyz.",'
                                   b'"type":"invalid_request_error","param":null,"code":"invalid_api_key"}}')
    assert err.kind is ErrorKind.AUTHENTICATION and "abc1" not in err.message and "sk-***" in err.message
    assert fmt.parse_error(503, {}, b"<html>Service Unavailable</html>").kind is ErrorKind.OVERLOADED
    assert "Service Unavailable" in fmt.parse_error(503, {}, b"<html>Service Unavailable</html>").message
    err = fmt.parse_error(400, {}, b'{"error":{"message":"bad","param":"input[3].call_id","code":"invalid_value"}}')
    assert (err.kind, err.param, err.code) == (ErrorKind.INVALID_REQUEST, "input[3].call_id", "invalid_value")
    assert fmt.parse_error(502, {}, b"").message == "Upstream error: HTTP 502 Bad Gateway."


# --------------------------------------------------------------------------------------------------
# property tests: unified → wire → unified is the identity on what the format carries

_text = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), min_size=1, max_size=12)
_ident = st.text("abcdefghijklmnopqrstuvwxyz0123456789_", min_size=1, max_size=8)
_sig = _ident.map(lambda s: "gAAAAAB" + s)
_args = st.dictionaries(_ident, st.integers() | _text, max_size=3).map(lambda d: json.dumps(d))


@st.composite
def _responses(draw: st.DrawFn) -> Response:
    content: list[Any] = draw(st.lists(st.builds(ReasoningPart, text=_text) | st.builds(
        ReasoningPart, text=_text, signature=_sig, signature_provider=st.just(fmt.FAMILY)), max_size=2))
    if draw(st.booleans()):
        content.append(TextPart(text=draw(_text)))
    calls = [ToolCall(id=f"call_{i}_{draw(_ident)}", name=draw(_ident), arguments=draw(_args))
             for i in range(draw(st.integers(0, 3)))]
    finish = draw(st.sampled_from(["stop", "length", "content_filter"]))
    if calls and finish == "stop":
        finish = "tool_calls"
    usage = draw(st.none() | st.builds(Usage, prompt_tokens=st.integers(0, 10**6),
                                       completion_tokens=st.integers(0, 10**6), cached_tokens=st.integers(0, 999),
                                       cache_write_tokens=st.integers(0, 99), reasoning_tokens=st.integers(0, 999)))
    return Response(id=f"resp_{draw(_ident)}", model=draw(_ident), created=draw(st.integers(0, 2**31)),
                    message=Message(role="assistant", content=content, tool_calls=calls,
                                    refusal=draw(st.none() | _text)),
                    finish_reason=finish, usage=usage.finalised() if usage else None)


@SETTINGS
@given(_responses())
def test_property_response_identity(resp: Response) -> None:
    assert fmt.parse_response(fmt.render_response(resp)) == resp


def _events_for(resp: Response, rng: random.Random) -> list[StreamEvent]:
    """A plausible upstream event sequence for `resp`: every text cut into random deltas."""

    def cuts(s: str) -> list[str]:
        points = sorted(rng.sample(range(1, len(s)), rng.randint(0, len(s) - 1))) if len(s) > 1 else []
        return [s[a:b] for a, b in zip([0, *points], [*points, len(s)], strict=True)]

    events: list[StreamEvent] = [StreamStart(id=resp.id, model=resp.model, created=resp.created)]
    for part in resp.message.content:
        if isinstance(part, ReasoningPart):
            events += [ReasoningDelta(text=c) for c in cuts(part.text)]
            if part.signature:
                events.append(ReasoningDelta(signature=part.signature, signature_provider=part.signature_provider))
        elif isinstance(part, TextPart):
            events += [TextDelta(text=c) for c in cuts(part.text)]
    for i, call in enumerate(resp.message.tool_calls):
        pieces = cuts(call.arguments) or [""]
        events.append(ToolCallDelta(index=i, id=call.id, name=call.name, arguments=pieces[0]))
        events += [ToolCallDelta(index=i, arguments=p) for p in pieces[1:]]
    assert resp.finish_reason is not None
    events.append(FinishEvent(reason=resp.finish_reason))
    if resp.usage:
        events.append(UsageEvent(usage=resp.usage))
    return events


@SETTINGS
@given(_responses(), st.randoms(use_true_random=False))
def test_property_stream_round_trip_at_random_split_points(resp: Response, rng: random.Random) -> None:
    resp.message.refusal = None  # a refusal has no unified stream event
    events = _events_for(resp, rng)
    data = render_stream(req_of(), events)
    check_lifecycle(data)
    parsed = parse_stream(data, random_splits(data, rng, rng.randint(1, 60)))
    assert aggregate(parsed) == aggregate(events)


_image = st.one_of(
    st.builds(ImagePart, url=_ident.map(lambda s: f"https://img.example/{s}.png"),
              detail=st.none() | st.sampled_from(["low", "high", "auto"])),
    st.builds(ImagePart, media_type=st.sampled_from(["image/png", "image/jpeg"]),
              data=_ident.map(lambda s: s + "=="), detail=st.none() | st.just("auto")),
)


@st.composite
def _requests(draw: st.DrawFn) -> Request:
    messages: list[Message] = []
    if draw(st.booleans()):
        messages.append(Message(role="system", content=[TextPart(text=draw(_text))]))
    for turn in range(draw(st.integers(1, 3))):
        role = draw(st.sampled_from(["user", "user", "developer", "system"]))
        parts = draw(st.lists(st.builds(TextPart, text=_text) | _image, min_size=1, max_size=3)) \
            if role == "user" else [TextPart(text=draw(_text))]
        messages.append(Message(role=role, content=parts))
        content: list[Any] = draw(st.lists(st.builds(ReasoningPart, text=st.just("") | _text, signature=_sig,
                                                     signature_provider=st.just(fmt.FAMILY)), max_size=2))
        content += draw(st.lists(st.builds(TextPart, text=_text), max_size=2))
        calls = [ToolCall(id=f"call_{turn}_{i}", name=draw(_ident), arguments=draw(_args))
                 for i in range(draw(st.integers(0, 2)))]
        refusal = draw(st.none() | _text)
        if content or calls or refusal:
            messages.append(Message(role="assistant", content=content, tool_calls=calls, refusal=refusal))
        for call in calls:
            result = draw(st.lists(st.builds(TextPart, text=_text) | _image, max_size=2))
            messages.append(Message(role="tool", content=[
                ToolResultPart(tool_call_id=call.id, name=call.name, content=result)]))
    tools = [Tool(name=draw(_ident), description=draw(st.none() | _text),
                  parameters=draw(st.none() | st.just({"type": "object", "properties": {}})),
                  strict=draw(st.booleans())) for _ in range(draw(st.integers(0, 2)))]
    if draw(st.booleans()):
        tools.append(Tool(type="native", name="web_search", provider=fmt.FAMILY, native={"type": "web_search"}))
    choice = draw(st.none() | st.builds(ToolChoice, mode=st.sampled_from(["auto", "none", "required"]),
                                        disable_parallel=st.none() | st.booleans())
                  | st.builds(ToolChoice, mode=st.just("function"), name=_ident))
    rf = draw(st.none() | st.builds(ResponseFormat, type=st.sampled_from(["text", "json_object"]))
              | st.builds(ResponseFormat, type=st.just("json_schema"), name=_ident,
                          json_schema=st.just({"type": "object"}), strict=st.none() | st.booleans(),
                          description=st.none() | _text))
    return Request(
        model="client-model", messages=messages, tools=tools, tool_choice=choice, response_format=rf,
        sampling=Sampling(temperature=draw(st.none() | st.floats(0, 2)), top_p=draw(st.none() | st.floats(0, 1)),
                          max_tokens=draw(st.none() | st.integers(fmt.MIN_OUTPUT_TOKENS, 10**5))),  # the API's floor
        stream=draw(st.booleans()), reasoning_effort=draw(st.none() | st.sampled_from(["low", "medium", "high"])),
        metadata=draw(st.none() | st.dictionaries(_ident, _ident, max_size=2)), user=draw(st.none() | _ident),
        extra_body=draw(st.sampled_from([{}, {"truncation": "auto"}, {"service_tier": "flex"}])),
        source=fmt.FAMILY,
    )


@SETTINGS
@given(_requests())
def test_property_request_identity(req: Request) -> None:
    """Outbound build → inbound parse: a Responses client sending what we send gets our request back."""
    back = fmt.parse_request(fmt.build_request(req, "upstream-model"))
    # what the outbound side adds on purpose: store=false, encrypted reasoning, summaries
    assert back.extra_body.pop("store") is False
    if req.reasoning_effort:
        assert back.extra_body.pop("include") == ["reasoning.encrypted_content"]
        assert back.extra_body.pop("reasoning") == {"summary": "auto"}
    assert back == req.model_copy(update={"model": "upstream-model"})


def test_built_in_tool_items_reach_a_same_family_stream_client_whole() -> None:
    # web_search runs at OpenAI (so such requests go to Responses channels only); its item has no
    # unified form, but a Responses client streaming the answer must still get it, with its id.
    call = {"id": "ws_1", "type": "web_search_call", "status": "completed",
            "action": {"type": "search", "query": "paris weather"}}
    msg = {"id": "msg_1", "type": "message", "status": "completed", "role": "assistant",
           "content": [{"type": "output_text", "text": "Sunny.", "annotations": []}]}
    resp = {"id": "resp_1", "object": "response", "created_at": 1, "status": "in_progress", "model": "gpt-x",
            "output": []}

    def ev(t: str, **f: Any) -> bytes:
        return f"event: {t}\ndata: {json.dumps({'type': t, **f})}\n\n".encode()

    data = (ev("response.created", response=resp)
            + ev("response.output_item.added", output_index=0, item={**call, "status": "in_progress"})
            + ev("response.web_search_call.completed", output_index=0, item_id="ws_1")
            + ev("response.output_item.done", output_index=0, item=call)
            + ev("response.output_item.added", output_index=1, item={**msg, "content": [], "status": "in_progress"})
            + ev("response.output_text.delta", output_index=1, content_index=0, item_id="msg_1", delta="Sunny.")
            + ev("response.output_item.done", output_index=1, item=msg)
            + ev("response.completed", response={**resp, "status": "completed", "output": [call, msg]}))
    events = parse_stream(data)
    assert [e.block for e in events if isinstance(e, NativeBlock)] == [call]
    r = fmt.StreamRenderer(Request(model="m", messages=[], stream=True))
    out = b"".join(r.render(e) for e in events) + r.finish()
    payloads = [json.loads(line[6:]) for line in out.split(b"\n") if line.startswith(b"data: ")]
    for p in payloads:
        STREAM_EVENT.validate_python(p)  # each event as the SDK reads it
    final = payloads[-1]["response"]["output"]
    assert [(i["type"], i["id"]) for i in final] == [("web_search_call", "ws_1"), ("message", "msg_1")]


def test_an_upstream_item_id_given_twice_keeps_one_item_per_upstream_item() -> None:
    # An upstream that reuses an id (or omits output_index, so text inherits the reasoning item's):
    # the second item gets an id of ours, and its deltas stay in it, not one item each.
    r = fmt.StreamRenderer(Request(model="m", messages=[], stream=True))
    evs = [StreamStart(id="resp_1", model="m"), ReasoningDelta(text="think", item_id="item_1"),
           *[TextDelta(text=t, item_id="item_1") for t in ("Hel", "lo ", "wor", "ld")]]
    out = b"".join(r.render(e) for e in evs) + r.finish()
    final = [json.loads(line[6:]) for line in out.split(b"\n") if line.startswith(b"data: ")][-1]["response"]
    items = final["output"]
    assert [i["type"] for i in items] == ["reasoning", "message"]
    assert items[0]["id"] == "item_1" and items[1]["id"] != "item_1"
    assert items[1]["content"][0]["text"] == "Hello world"



@pytest.mark.parametrize(("asked", "sent"), [(1, 16), (15, 16), (16, 16), (1000, 1000)])
def test_another_familys_small_output_budget_is_raised_to_the_responses_floor(asked: int, sent: int) -> None:
    # Claude clients probe a model with max_tokens 1; the Responses API refuses fewer than 16.
    claude = get_format("anthropic").parse_request(orjson.dumps(
        {"model": "m", "max_tokens": asked, "messages": [{"role": "user", "content": "hi"}]}))
    assert orjson.loads(fmt.build_request(claude, "gpt"))["max_output_tokens"] == sent
