"""OpenAI Chat Completions format: recorded traffic, round trips, bad input, errors, and the official SDK."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import httpx2
import openai
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from openai.lib.streaming.chat import ChatCompletionStreamState
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from axonsim.formats import FormatError, get_format
from axonsim.formats import openai_chat as oc
from axonsim.unified import (
    Error,
    ErrorEvent,
    ErrorKind,
    FinishEvent,
    ImagePart,
    Message,
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

# Deterministic and quick: a fixed derivation of examples, no example database on disk.
PROPS = settings(max_examples=120, deadline=None, derandomize=True, database=None,
                 suppress_health_check=[HealthCheck.too_slow])

FIXTURES = Path(__file__).parent / "fixtures" / "providers" / "openai"
STREAMS = sorted(FIXTURES.glob("*.stream.jsonl"))
RESPONSES = sorted(FIXTURES.glob("*.response.json")) + [FIXTURES / "openai-stop.aggregator.json"]
REQUESTS = sorted(FIXTURES.glob("*.request.json"))


def replay(path: Path) -> bytes:
    """A recorded stream as the provider sent it (the recordings leave out `data: [DONE]`)."""
    out = bytearray()
    saw_done = False
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        rec = json.loads(line)
        if rec["Type"]:
            out += f"event: {rec['Type']}\n".encode()
        out += b"data: " + rec["Data"].encode() + b"\n\n"
        saw_done |= rec["Data"] == "[DONE]"
    if not saw_done:
        out += b"data: [DONE]\n\n"
    return bytes(out)


def split_feed(data: bytes, rng: random.Random, parser: oc.StreamParser | None = None) -> list[StreamEvent]:
    parser = parser or oc.StreamParser()
    cuts = sorted(rng.sample(range(1, len(data)), k=min(len(data) - 1, rng.randint(0, 40))))
    events: list[StreamEvent] = []
    prev = 0
    for c in [*cuts, len(data)]:
        events += parser.feed(data[prev:c])
        prev = c
    return events + parser.close()


def parse_stream(data: bytes) -> list[StreamEvent]:
    p = oc.StreamParser()
    return p.feed(data) + p.close()


def aggregate(events: list[StreamEvent]) -> Response:
    agg = StreamAggregator()
    for ev in events:
        agg.add(ev)
    return agg.response()


def render_stream(req: Request, events: list[StreamEvent]) -> bytes:
    r = oc.StreamRenderer(req)
    return b"".join(r.render(ev) for ev in events) + r.finish()


def sse_data(stream: bytes) -> list[str]:
    assert b"event:" not in stream
    blocks = stream.split(b"\n\n")
    assert blocks[-1] == b""
    out = []
    for b in blocks[:-1]:
        assert b.startswith(b"data: ") and b"\n" not in b
        out.append(b[6:].decode())
    return out


def chunks_of(stream: bytes) -> list[dict[str, Any]]:
    return [json.loads(d) for d in sse_data(stream) if d != "[DONE]"]


def req_of(**kw: Any) -> Request:
    return Request(model=kw.pop("model", "m"), messages=kw.pop("messages", [Message(role="user", content=[TextPart(text="hi")])]), **kw)


def body(**kw: Any) -> bytes:
    base: dict[str, Any] = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}
    base.update(kw)
    return orjson.dumps(base)


# --------------------------------------------------------------------------------------------------
# Contract


def test_module_provides_the_format_contract() -> None:
    mod = get_format("openai")
    assert mod is oc and get_format("openai_chat") is oc
    for name in ("parse_request", "render_response", "StreamRenderer", "error_status", "render_error",
                 "error_headers", "request_path", "auth_headers", "build_request", "stream_passthrough", "parse_response",
                 "StreamParser", "parse_error"):
        assert callable(getattr(mod, name)), name
    assert oc.request_path("gpt-4o", True) == oc.request_path("gpt-4o", False) == "/chat/completions"
    assert oc.auth_headers("sk-1") == {"Authorization": "Bearer sk-1"}


# --------------------------------------------------------------------------------------------------
# Recorded traffic


@pytest.mark.parametrize("path", RESPONSES, ids=lambda p: p.name)
def test_every_recorded_response_parses(path: Path) -> None:
    raw = json.loads(path.read_text())
    resp = oc.parse_response(path.read_bytes())
    assert resp.id == raw["id"] and resp.model == raw["model"] and resp.created == raw["created"]
    assert resp.usage is not None
    assert resp.usage.prompt_tokens == raw["usage"]["prompt_tokens"]
    assert resp.usage.completion_tokens == raw["usage"]["completion_tokens"]
    assert resp.usage.total_tokens == raw["usage"]["total_tokens"]
    wire_calls = [tc for ch in raw["choices"] for tc in ch["message"].get("tool_calls") or []]
    assert [(c.id, c.name, c.arguments) for c in resp.message.tool_calls] == [
        (tc["id"], tc["function"]["name"], tc["function"]["arguments"]) for tc in wire_calls]
    assert resp.finish_reason == ("tool_calls" if wire_calls else "stop")
    text = raw["choices"][0]["message"]["content"]
    assert resp.message.text() == (text or "")
    assert resp.message.refusal is None  # the aggregator's `"refusal": ""` means none


@pytest.mark.parametrize("path", STREAMS, ids=lambda p: p.name)
def test_every_recorded_stream_parses_in_any_chunking(path: Path) -> None:
    data = replay(path)
    whole = parse_stream(data)
    assert isinstance(whole[0], StreamStart)
    assert isinstance(whole[-2], FinishEvent) and isinstance(whole[-1], UsageEvent)
    assert sum(isinstance(e, FinishEvent) for e in whole) == 1
    rng = random.Random(path.name)
    for _ in range(20):
        assert split_feed(data, rng) == whole
    byte_parser = oc.StreamParser()
    bytewise = [e for i in range(len(data)) for e in byte_parser.feed(data[i:i + 1])] + byte_parser.close()
    assert bytewise == whole


PAIRS = [
    ("openai-stop.stream.jsonl", "openai-stop.aggregator.json"),
    ("openai-stop.stream.jsonl", "openai-stop.response.json"),
    ("openai-tool.stream.jsonl", "openai-tool.response.json"),
    ("openai-tool_2.stream.jsonl", "openai-tool_2.response.json"),
    ("openai-multiple_choice_tool.stream.jsonl", "openai-multiple_choice_tool.response.json"),
    ("openai-multiple_choice_tool_2.stream.jsonl", "openai-multiple_choice_tool_2.response.json"),
]


@pytest.mark.parametrize(("stream", "response"), PAIRS)
def test_stream_aggregates_to_the_non_stream_response(stream: str, response: str) -> None:
    aggregated = aggregate(parse_stream(replay(FIXTURES / stream)))
    expected = oc.parse_response((FIXTURES / response).read_bytes())
    assert aggregated == expected


def test_tool_calls_split_across_choices_are_merged_in_order() -> None:
    for name in ("openai-multiple_choice_tool", "openai-multiple_choice_tool_2"):
        resp = aggregate(parse_stream(replay(FIXTURES / f"{name}.stream.jsonl")))
        assert [(c.name, c.arguments) for c in resp.message.tool_calls] == [
            ("get_user_city", '{"user_id": "123"}'), ("get_user_language", '{"user_id": "123"}')]
        assert resp.finish_reason == "tool_calls"


def test_recorded_stop_stream_text_and_usage() -> None:
    resp = aggregate(parse_stream(replay(FIXTURES / "openai-stop.stream.jsonl")))
    assert resp.message.text().startswith("Sure! Here’s the output")
    assert resp.usage == Usage(prompt_tokens=19, completion_tokens=65, total_tokens=84)


@pytest.mark.parametrize("path", STREAMS, ids=lambda p: p.name)
@pytest.mark.parametrize("include_usage", [True, False])
def test_recorded_stream_survives_render_then_parse(path: Path, include_usage: bool) -> None:
    """Provider stream → unified → our client stream → parsed again (as if we were our own upstream)."""
    events = parse_stream(replay(path))
    client_stream = render_stream(req_of(stream=True, include_usage=include_usage), events)
    again = split_feed(client_stream, random.Random(path.name))
    original = aggregate(events)
    result = aggregate(again)
    if not include_usage:
        assert result.usage is None
        result.usage = original.usage
    assert result == original


@pytest.mark.parametrize("path", REQUESTS, ids=lambda p: p.name)
def test_recorded_requests_round_trip(path: Path) -> None:
    raw = json.loads(path.read_text())
    req = oc.parse_request(path.read_bytes())
    assert [t.name for t in req.tools] == [t["function"]["name"] for t in raw["tools"]]
    assert req.sampling.seed == 0
    upstream = json.loads(oc.build_request(req, "gpt-4o-2024-11-20"))
    assert upstream["model"] == "gpt-4o-2024-11-20"
    assert upstream["tools"] == raw["tools"]
    assert upstream["messages"] == raw["messages"]
    if raw.get("parallel_tool_calls") is not None:
        assert upstream["parallel_tool_calls"] is raw["parallel_tool_calls"]
    if raw.get("stream"):
        assert upstream["stream_options"] == {"include_usage": True}
        assert req.include_usage is False  # the client did not ask
    again = oc.parse_request(oc.build_request(req, req.model))
    assert again.model_dump(exclude={"include_usage"}) == req.model_dump(exclude={"include_usage"})


# --------------------------------------------------------------------------------------------------
# Inbound: parse_request


def test_parse_request_full_mapping() -> None:
    req = oc.parse_request(orjson.dumps({
        "model": "gpt-4o",
        "messages": [
            {"role": "developer", "content": "be brief"},
            {"role": "system", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
            {"role": "user", "name": "ann", "content": [
                {"type": "text", "text": "look", "cache_control": {"type": "ephemeral"}},
                {"type": "image_url", "image_url": {"url": "https://x.test/a.png", "detail": "low"}},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
            ]},
            {"role": "assistant", "content": None, "reasoning_content": "think",
             "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{\"x\":1}"}},
                            {"id": "call_2", "type": "function", "function": {"name": "g", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "one"},
            {"role": "tool", "tool_call_id": "call_2", "content": [{"type": "text", "text": "two"}]},
            {"role": "assistant", "content": [{"type": "text", "text": "ok"}, {"type": "refusal", "refusal": "no"}],
             "reasoning": "openrouter style"},
        ],
        "tools": [{"type": "function", "function": {"name": "f", "description": "d", "parameters": {"type": "object"},
                                                    "strict": True}},
                  {"type": "function", "function": {"name": "g"}}],
        "tool_choice": {"type": "function", "function": {"name": "f"}},
        "parallel_tool_calls": False,
        "response_format": {"type": "json_schema", "json_schema": {"name": "out", "schema": {"type": "object"},
                                                                    "strict": True, "description": "dd"}},
        "temperature": 0.5, "top_p": 1, "max_completion_tokens": 100, "max_tokens": 5, "stop": "END",
        "seed": 7, "presence_penalty": 0.1, "frequency_penalty": -0.2, "n": 1,
        "stream": True, "stream_options": {"include_usage": True},
        "reasoning_effort": "low", "metadata": {"k": "v"}, "user": "u1",
        "logprobs": True, "top_k": 40, "provider": {"order": ["a"]},
    }))
    assert req.model == "gpt-4o" and req.stream and req.include_usage
    m = req.messages
    assert [x.role for x in m] == ["developer", "system", "user", "assistant", "tool", "tool", "assistant"]
    assert m[0].content == [TextPart(text="be brief")]
    assert m[1].content == [TextPart(text="a"), TextPart(text="b")]
    assert m[2].name == "ann"
    assert m[2].content == [
        TextPart(text="look", cache_control={"type": "ephemeral"}),
        ImagePart(url="https://x.test/a.png", detail="low"),
        ImagePart(media_type="image/png", data="iVBORw0KGgo="),
    ]
    assert m[3].content == [ReasoningPart(text="think")]
    assert m[3].tool_calls == [ToolCall(id="call_1", name="f", arguments='{"x":1}'),
                               ToolCall(id="call_2", name="g", arguments="{}")]
    # the function name of a result is looked up from the call it answers (Gemini needs it)
    assert m[4].content == [ToolResultPart(tool_call_id="call_1", name="f", content=[TextPart(text="one")])]
    assert m[5].content == [ToolResultPart(tool_call_id="call_2", name="g", content=[TextPart(text="two")])]
    assert m[6].content == [ReasoningPart(text="openrouter style"), TextPart(text="ok")] and m[6].refusal == "no"
    assert req.tools == [Tool(name="f", description="d", parameters={"type": "object"}, strict=True), Tool(name="g")]
    assert req.tool_choice == ToolChoice(mode="function", name="f", disable_parallel=True)
    assert req.response_format == ResponseFormat(type="json_schema", name="out", json_schema={"type": "object"},
                                                 strict=True, description="dd")
    assert req.sampling == Sampling(temperature=0.5, top_p=1.0, max_tokens=100, stop=["END"], seed=7,
                                    presence_penalty=0.1, frequency_penalty=-0.2, n=1)
    assert (req.reasoning_effort, req.metadata, req.user) == ("low", {"k": "v"}, "u1")
    assert req.extra_body == {"logprobs": True, "top_k": 40, "provider": {"order": ["a"]}}


@pytest.mark.parametrize(("fields", "stream", "include_usage"), [
    ({}, False, True),
    ({"stream": True}, True, False),
    ({"stream": True, "stream_options": {"include_usage": True}}, True, True),
    ({"stream": True, "stream_options": {"include_usage": False}}, True, False),
    ({"stream": True, "stream_options": None}, True, False),
    ({"stream": None}, False, True),
])
def test_include_usage_defaults(fields: dict[str, Any], stream: bool, include_usage: bool) -> None:
    req = oc.parse_request(body(**fields))
    assert (req.stream, req.include_usage) == (stream, include_usage)


def test_nulls_mean_absent_and_url_arguments_win() -> None:
    req = oc.parse_request(body(temperature=None, tools=None, tool_choice=None, stop=None, user=None,
                                response_format=None, max_tokens=None))
    assert req.sampling == Sampling() and req.tools == [] and req.extra_body == {}
    req = oc.parse_request(body(max_tokens=9, stop=["a", "b"]), model="other", stream=True)
    assert (req.model, req.stream, req.sampling.max_tokens, req.sampling.stop) == ("other", True, 9, ["a", "b"])


def test_parallel_tool_calls_alone_sets_disable_parallel() -> None:
    tools = [{"type": "function", "function": {"name": "f"}}]
    assert oc.parse_request(body(tools=tools, parallel_tool_calls=True)).tool_choice == ToolChoice(disable_parallel=False)
    assert oc.parse_request(body(tools=tools, tool_choice="required", parallel_tool_calls=False)).tool_choice == \
        ToolChoice(mode="required", disable_parallel=True)
    for mode in ("none", "auto", "required"):
        assert oc.parse_request(body(tools=tools, tool_choice=mode)).tool_choice == ToolChoice(mode=mode)


def test_custom_tools_travel_verbatim_as_native() -> None:
    custom = {"type": "custom", "custom": {"name": "grammar", "format": {"type": "text"}}}
    req = oc.parse_request(body(tools=[custom]))
    assert req.tools == [Tool(type="native", name="grammar", provider="openai", native=custom)]
    assert json.loads(oc.build_request(req, "x"))["tools"] == [custom]
    foreign = req_of(tools=[Tool(type="native", name="web_search", provider="anthropic", native={"type": "web_search"})])
    with pytest.raises(FormatError) as e:
        oc.build_request(foreign, "x")
    assert e.value.param == "tools[0]"


BAD = [
    (b"{not json", None),
    (b"", None),
    (b"[1, 2]", None),
    (b'"text"', None),
    (orjson.dumps({"messages": [{"role": "user", "content": "x"}]}), "model"),
    (body(model=3), "model"),
    (body(model=""), "model"),
    (orjson.dumps({"model": "m"}), "messages"),
    (body(messages={"role": "user"}), "messages"),
    (body(messages=[]), "messages"),
    (body(messages=["hi"]), "messages[0]"),
    (body(messages=[{"content": "x"}]), "messages[0].role"),
    (body(messages=[{"role": "robot", "content": "x"}]), "messages[0].role"),
    (body(messages=[{"role": "function", "name": "f", "content": "x"}]), "messages[0].role"),
    (body(messages=[{"role": "user"}]), "messages[0].content"),
    (body(messages=[{"role": "system", "content": None}]), "messages[0].content"),
    (body(messages=[{"role": "user", "content": 5}]), "messages[0].content"),
    (body(messages=[{"role": "user", "content": ["x"]}]), "messages[0].content[0]"),
    (body(messages=[{"role": "user", "content": [{"text": "x"}]}]), "messages[0].content[0].type"),
    (body(messages=[{"role": "user", "content": [{"type": "text", "text": 1}]}]), "messages[0].content[0].text"),
    (body(messages=[{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}]),
     "messages[0].content[0].type"),
    (body(messages=[{"role": "user", "content": [{"type": "file", "file": {"file_id": "f"}}]}]),
     "messages[0].content[0].type"),
    (body(messages=[{"role": "system", "content": [{"type": "image_url", "image_url": {"url": "https://a"}}]}]),
     "messages[0].content[0].type"),
    (body(messages=[{"role": "user", "content": [{"type": "image_url"}]}]), "messages[0].content[0].image_url"),
    (body(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": ""}}]}]),
     "messages[0].content[0].image_url.url"),
    (body(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "file:///etc/passwd"}}]}]),
     "messages[0].content[0].image_url.url"),
    (body(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png,abc"}}]}]),
     "messages[0].content[0].image_url.url"),
    (body(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:;base64,abc"}}]}]),
     "messages[0].content[0].image_url.url"),
    (body(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://a", "detail": 1}}]}]),
     "messages[0].content[0].image_url.detail"),
    (body(messages=[{"role": "user", "name": 3, "content": "x"}]), "messages[0].name"),
    (body(messages=[{"role": "assistant", "tool_calls": {}}]), "messages[0].tool_calls"),
    (body(messages=[{"role": "assistant", "tool_calls": [{"type": "function", "function": {"name": "f"}}]}]),
     "messages[0].tool_calls[0].id"),
    (body(messages=[{"role": "assistant", "tool_calls": [{"id": "c", "type": "function"}]}]),
     "messages[0].tool_calls[0].function"),
    (body(messages=[{"role": "assistant", "tool_calls": [{"id": "c", "function": {"arguments": "{}"}}]}]),
     "messages[0].tool_calls[0].function.name"),
    (body(messages=[{"role": "assistant", "tool_calls": [{"id": "c", "function": {"name": "f", "arguments": 1}}]}]),
     "messages[0].tool_calls[0].function.arguments"),
    (body(messages=[{"role": "assistant", "tool_calls": [{"id": "c", "type": "custom", "custom": {}}]}]),
     "messages[0].tool_calls[0].type"),
    (body(messages=[{"role": "assistant", "content": "x", "reasoning_content": 5}]), "messages[0].reasoning_content"),
    (body(messages=[{"role": "assistant", "content": [{"type": "refusal"}]}]), "messages[0].content[0].refusal"),
    (body(messages=[{"role": "user", "content": [{"type": "refusal", "refusal": "x"}]}]), "messages[0].content[0].type"),
    (body(messages=[{"role": "tool", "content": "x"}]), "messages[0].tool_call_id"),
    (body(messages=[{"role": "tool", "tool_call_id": "c"}]), "messages[0].content"),
    (body(messages=[{"role": "tool", "tool_call_id": "c", "content": [{"type": "image_url", "image_url": "https://a"}]}]),
     "messages[0].content[0].type"),
    (body(messages=[{"role": "user", "content": "x"}, {"role": "user", "content": None}]), "messages[1].content"),
    (body(tools={}), "tools"),
    (body(tools=[1]), "tools[0]"),
    (body(tools=[{"type": "function"}]), "tools[0].function"),
    (body(tools=[{"type": "function", "function": {}}]), "tools[0].function.name"),
    (body(tools=[{"type": "function", "function": {"name": "f", "parameters": []}}]), "tools[0].function.parameters"),
    (body(tools=[{"type": "function", "function": {"name": "f", "strict": "yes"}}]), "tools[0].function.strict"),
    (body(tools=[{"type": 5}]), "tools[0].type"),
    (body(tool_choice="any"), "tool_choice"),
    (body(tool_choice={"type": "function", "function": {}}), "tool_choice.function.name"),
    (body(tool_choice={"type": "allowed_tools", "allowed_tools": {}}), "tool_choice"),
    (body(parallel_tool_calls="no"), "parallel_tool_calls"),
    (body(response_format="json"), "response_format"),
    (body(response_format={"type": "xml"}), "response_format.type"),
    (body(response_format={"type": "json_schema"}), "response_format.json_schema"),
    (body(response_format={"type": "json_schema", "json_schema": {"name": 1}}), "response_format.json_schema.name"),
    (body(temperature="hot"), "temperature"),
    (body(temperature=True), "temperature"),
    (body(top_p=[1]), "top_p"),
    (body(max_tokens=1.5), "max_tokens"),
    (body(max_completion_tokens="9"), "max_completion_tokens"),
    (body(stop=3), "stop"),
    (body(stop=["a", 3]), "stop"),
    (body(seed="s"), "seed"),
    (body(presence_penalty={}), "presence_penalty"),
    (body(frequency_penalty="x"), "frequency_penalty"),
    (body(n=True), "n"),
    (body(stream="yes"), "stream"),
    (body(stream=True, stream_options=[]), "stream_options"),
    (body(stream=True, stream_options={"include_usage": "y"}), "stream_options.include_usage"),
    (body(reasoning_effort=3), "reasoning_effort"),
    (body(metadata=[]), "metadata"),
    (body(user=1), "user"),
    (body(stream=True, n=2), "n"),  # streams carry one choice: refused, not silently dropped or merged
    # outside the ranges OpenAI accepts: refused here, not forwarded (or clamped for another family)
    (body(temperature=99), "temperature"),
    (body(temperature=-0.1), "temperature"),
    (body(top_p=1.5), "top_p"),
    (body(presence_penalty=2.5), "presence_penalty"),
    (body(frequency_penalty=-3), "frequency_penalty"),
    (body(n=0), "n"),
    (body(max_tokens=0), "max_tokens"),
    (body(max_completion_tokens=-5), "max_completion_tokens"),
    (body(max_completion_tokens=5, max_tokens=-7), "max_tokens"),  # forwarded as is, it would reach upstream
    (body(max_completion_tokens=5, max_tokens="x"), "max_tokens"),
]


@pytest.mark.parametrize(("raw", "param"), BAD, ids=[f"{i}-{p}" for i, (_, p) in enumerate(BAD)])
def test_bad_input_names_the_field(raw: bytes, param: str | None) -> None:
    with pytest.raises(FormatError) as e:
        oc.parse_request(raw)
    assert e.value.param == param
    assert e.value.status == 400
    assert e.value.message
    # ... and the client gets it in OpenAI's shape
    err = Error(kind=ErrorKind.INVALID_REQUEST, status=e.value.status, message=e.value.message, param=e.value.param)
    assert json.loads(oc.render_error(err)) == {"error": {"message": e.value.message, "type": "invalid_request_error",
                                                          "param": param, "code": None}}


@given(st.binary(max_size=200))
@PROPS
def test_parse_request_never_raises_anything_but_format_error(raw: bytes) -> None:
    try:
        oc.parse_request(raw)
    except FormatError:
        pass


JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 5) | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
        st.sampled_from(["role", "content", "type", "text", "name", "tool_calls", "function", "id", "image_url",
                         "url", "tool_call_id", "arguments", "x"]), inner, max_size=4),
    max_leaves=12,
)


@given(st.dictionaries(st.sampled_from(["model", "messages", "tools", "tool_choice", "stop", "stream",
                                        "stream_options", "response_format", "temperature", "n"]),
                       JSONISH, max_size=6))
@PROPS
def test_fuzzed_structures_give_format_error_or_a_request(obj: dict[str, Any]) -> None:
    obj.setdefault("model", "m")
    try:
        req = oc.parse_request(orjson.dumps(obj))
    except FormatError as e:
        assert e.status == 400
        return
    oc.build_request(req, "up")


# --------------------------------------------------------------------------------------------------
# Inbound: responses, streams and errors as the official SDK sees them


def _resp(**kw: Any) -> Response:
    msg = kw.pop("message", Message(role="assistant", content=[TextPart(text="hello")]))
    return Response(id=kw.pop("id", "chatcmpl-1"), model=kw.pop("model", "gpt-4o"), created=kw.pop("created", 17),
                    message=msg, **kw)


def test_render_response_has_the_required_keys() -> None:
    resp = _resp(
        message=Message(role="assistant", content=[ReasoningPart(text="hmm", signature="sig"), TextPart(text="hi")],
                        tool_calls=[ToolCall(id="call_1", name="f", arguments='{"a":1}')]),
        finish_reason="tool_calls",
        usage=Usage(prompt_tokens=10, completion_tokens=5, cached_tokens=3, reasoning_tokens=2, cache_write_tokens=1),
    )
    out = json.loads(oc.render_response(resp))
    assert out["object"] == "chat.completion"
    assert (out["id"], out["created"], out["model"]) == ("chatcmpl-1", 17, "gpt-4o")
    choice = out["choices"][0]
    assert choice["index"] == 0 and choice["finish_reason"] == "tool_calls"
    assert choice["message"] == {"role": "assistant", "content": "hi", "refusal": None, "reasoning_content": "hmm",
                                 "tool_calls": [{"id": "call_1", "type": "function",
                                                 "function": {"name": "f", "arguments": '{"a":1}'}}]}
    assert out["usage"] == {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15,
                            "prompt_tokens_details": {"cached_tokens": 3, "cache_write_tokens": 1},
                            "completion_tokens_details": {"reasoning_tokens": 2}}
    ChatCompletion.model_validate(out)


def test_render_response_defaults() -> None:
    only_call = _resp(message=Message(role="assistant", tool_calls=[ToolCall(id="c", name="f")]), finish_reason=None)
    out = json.loads(oc.render_response(only_call))
    assert out["choices"][0]["message"]["content"] is None
    assert out["choices"][0]["finish_reason"] == "tool_calls"
    assert out["usage"]["prompt_tokens_details"] == {"cached_tokens": 0}  # always present, zeros if unknown
    empty = json.loads(oc.render_response(_resp(message=Message(role="assistant"), finish_reason="error")))
    assert empty["choices"][0]["message"]["content"] == ""
    assert empty["choices"][0]["finish_reason"] == "stop"  # OpenAI has no "error" finish reason


def _tool_events() -> list[StreamEvent]:
    return [
        StreamStart(id="chatcmpl-9", model="gpt-4o", created=5),
        ReasoningDelta(text="let me "), ReasoningDelta(text="think", signature="ignored"),
        ReasoningDelta(text="", signature="only-a-signature"),
        TextDelta(text="Sure"), TextDelta(text=""), TextDelta(text=", calling."),
        ToolCallDelta(index=3, id="call_a", name="get_weather", arguments=""),
        ToolCallDelta(index=3, arguments='{"loc'),
        ToolCallDelta(index=7, id="call_b", name="get_time", arguments='{"tz":'),
        ToolCallDelta(index=3, id="call_a", name="get_weather", arguments='ation":"Paris"}'),
        ToolCallDelta(index=7, arguments='"CET"}'),
        ToolCallDelta(index=7, arguments=""),
        FinishEvent(reason="tool_calls"),
        UsageEvent(usage=Usage(prompt_tokens=1, completion_tokens=2)),
        UsageEvent(usage=Usage(prompt_tokens=11, completion_tokens=22, cached_tokens=4, reasoning_tokens=6)),
    ]


def test_stream_renderer_wire_shape() -> None:
    r = oc.StreamRenderer(req_of(stream=True, include_usage=True))
    pieces = [r.render(ev) for ev in _tool_events()]
    # Never buffered: each event that carries something for the client comes out at once, as one
    # SSE event; only the usage waits for finish(), where OpenAI puts it.
    carries = [bool(getattr(ev, "text", None) or getattr(ev, "arguments", None) or getattr(ev, "id", None))
               or isinstance(ev, (StreamStart, FinishEvent)) for ev in _tool_events()]
    assert [p.count(b"\n\n") for p in pieces] == [1 if c else 0 for c in carries]
    stream = b"".join(pieces) + r.finish()
    assert r.finish() == b"" and r.render(TextDelta(text="late")) == b""
    data = sse_data(stream)
    assert data[-1] == "[DONE]"
    chunks = [json.loads(d) for d in data[:-1]]
    for c in chunks:
        ChatCompletionChunk.model_validate(c)
        assert (c["id"], c["object"], c["created"], c["model"]) == ("chatcmpl-9", "chat.completion.chunk", 5, "gpt-4o")
        assert "usage" in c
    deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
    assert deltas[0] == {"role": "assistant", "content": ""}
    assert sum("role" in d for d in deltas) == 1
    assert "".join(d.get("reasoning_content", "") for d in deltas) == "let me think"
    calls = [tc for d in deltas for tc in d.get("tool_calls", [])]
    assert [tc["index"] for tc in calls] == [0, 0, 1, 0, 1]
    assert [tc.get("id") for tc in calls] == ["call_a", None, "call_b", None, None]
    assert [tc["function"].get("name") for tc in calls] == ["get_weather", None, "get_time", None, None]
    finish = [c for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
    assert len(finish) == 1 and finish[0]["choices"][0]["finish_reason"] == "tool_calls"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["prompt_tokens"] == 11
    assert chunks[-1]["usage"]["prompt_tokens_details"]["cached_tokens"] == 4
    assert all(c["usage"] is None for c in chunks[:-1])


def test_stream_renderer_sends_no_usage_unless_asked() -> None:
    stream = render_stream(req_of(stream=True, include_usage=False), _tool_events())
    chunks = chunks_of(stream)
    assert all("usage" not in c and c["choices"] for c in chunks)
    assert stream.endswith(b"data: [DONE]\n\n")


def test_stream_renderer_role_comes_with_the_first_chunk_even_without_start() -> None:
    r = oc.StreamRenderer(req_of(model="mm", stream=True, include_usage=False))
    first = json.loads(r.render(TextDelta(text="a"))[6:])
    assert first["choices"][0]["delta"] == {"role": "assistant", "content": "a"} and first["model"] == "mm"
    assert json.loads(r.render(TextDelta(text="b"))[6:])["choices"][0]["delta"] == {"content": "b"}


@settings(max_examples=150, deadline=None)
@given(st.text(max_size=12), st.booleans(), st.text(max_size=6))
def test_stream_renderer_text_template_is_the_generic_chunk(text: str, include_usage: bool, rid: str) -> None:
    # A content delta after the first chunk comes from a byte template; it must be exactly the chunk
    # the generic path serialises (escaping of quotes, control characters and non-ASCII included).
    r = oc.StreamRenderer(req_of(stream=True, include_usage=include_usage))
    r.render(StreamStart(id=rid, model="m\"1", created=3))
    got = r.render(TextDelta(text=text))
    expected = r._chunk({"content": text}) if text else b""
    assert got == expected
    if text:
        assert json.loads(got[6:])["choices"] == [{"index": 0, "delta": {"content": text}, "finish_reason": None}]


def test_sdk_accumulates_the_rendered_stream() -> None:
    state: ChatCompletionStreamState[Any] = ChatCompletionStreamState()
    for c in chunks_of(render_stream(req_of(stream=True, include_usage=True), _tool_events())):
        state.handle_chunk(ChatCompletionChunk.model_validate(c))
    final = state.get_final_completion()
    msg = final.choices[0].message
    assert msg.content == "Sure, calling." and msg.role == "assistant"
    assert [(t.id, t.function.name, t.function.arguments) for t in msg.tool_calls or []] == [
        ("call_a", "get_weather", '{"location":"Paris"}'), ("call_b", "get_time", '{"tz":"CET"}')]
    assert final.choices[0].finish_reason == "tool_calls"
    assert final.usage is not None and final.usage.total_tokens == 33


def _sdk(handler: Any) -> openai.OpenAI:
    return openai.OpenAI(api_key="sk-test", base_url="http://gateway.test/v1", max_retries=0,
                         http_client=httpx2.Client(transport=httpx2.MockTransport(handler)))


def test_official_sdk_end_to_end_non_stream_and_stream() -> None:
    """The SDK's own request parses; our response and stream are what it reconstructs."""
    seen: list[Request] = []
    resp = _resp(message=Message(role="assistant", content=[ReasoningPart(text="r"), TextPart(text="hi there")]),
                 usage=Usage(prompt_tokens=3, completion_tokens=4))

    def handler(request: httpx2.Request) -> httpx2.Response:
        assert request.url.path == "/v1/chat/completions"
        assert request.headers["authorization"] == "Bearer sk-test"
        req = oc.parse_request(request.content)
        seen.append(req)
        if not req.stream:
            return httpx2.Response(200, content=oc.render_response(resp), headers={"content-type": "application/json"})
        events = [StreamStart(id="s1", model="gpt-4o", created=1), TextDelta(text="hi "), TextDelta(text="there"),
                  FinishEvent(reason="stop"), UsageEvent(usage=Usage(prompt_tokens=3, completion_tokens=4))]
        return httpx2.Response(200, content=render_stream(req, events), headers={"content-type": "text/event-stream"})

    client = _sdk(handler)
    messages: Any = [{"role": "user", "content": [{"type": "text", "text": "hello"},
                                                  {"type": "image_url", "image_url": {"url": "https://x.test/i.png"}}]}]
    out = client.chat.completions.create(model="gpt-4o", messages=messages, temperature=0.2)
    assert out.choices[0].message.content == "hi there"
    assert out.usage is not None and out.usage.total_tokens == 7
    assert seen[-1].messages[0].content[1] == ImagePart(url="https://x.test/i.png")
    assert seen[-1].sampling.temperature == 0.2

    chunks = list(client.chat.completions.create(model="gpt-4o", messages=messages, stream=True,
                                                 stream_options={"include_usage": True}))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "hi there"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 4
    assert seen[-1].include_usage

    with client.chat.completions.stream(model="gpt-4o", messages=messages) as s:
        final = s.get_final_completion()
    assert final.choices[0].message.content == "hi there" and final.choices[0].message.role == "assistant"
    assert not seen[-1].include_usage  # the helper did not ask, so no usage chunk was sent


def test_official_sdk_raises_the_in_stream_error() -> None:
    err = Error(kind=ErrorKind.SERVER_ERROR, status=500, message="upstream cut the stream")

    def handler(request: httpx2.Request) -> httpx2.Response:
        r = oc.StreamRenderer(oc.parse_request(request.content))
        content = r.render(StreamStart(id="s", model="m")) + r.render(TextDelta(text="par")) + r.error(err) + r.finish()
        return httpx2.Response(200, content=content, headers={"content-type": "text/event-stream"})

    got: list[str] = []
    with pytest.raises(openai.APIError) as e:
        for c in _sdk(handler).chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}],
                                                       stream=True):
            got.append(c.choices[0].delta.content or "")
    assert "".join(got) == "par"
    assert e.value.message == "upstream cut the stream"
    assert e.value.body == {"message": "upstream cut the stream", "type": "server_error", "param": None, "code": None}


@pytest.mark.parametrize(("kind", "status", "sdk_error", "wire_status", "wire_type"), [
    (ErrorKind.INVALID_REQUEST, 400, openai.BadRequestError, 400, "invalid_request_error"),
    (ErrorKind.INVALID_REQUEST, 413, openai.APIStatusError, 413, "invalid_request_error"),
    (ErrorKind.INVALID_REQUEST, 422, openai.UnprocessableEntityError, 422, "invalid_request_error"),
    (ErrorKind.INVALID_REQUEST, 418, openai.BadRequestError, 400, "invalid_request_error"),
    (ErrorKind.AUTHENTICATION, 401, openai.AuthenticationError, 401, "authentication_error"),
    (ErrorKind.PERMISSION, 403, openai.PermissionDeniedError, 403, "permission_error"),
    (ErrorKind.NOT_FOUND, 404, openai.NotFoundError, 404, "invalid_request_error"),
    (ErrorKind.RATE_LIMITED, 429, openai.RateLimitError, 429, "rate_limit_exceeded"),
    (ErrorKind.OVERLOADED, 529, openai.InternalServerError, 503, "server_error"),
    (ErrorKind.SERVER_ERROR, 500, openai.InternalServerError, 500, "server_error"),
    (ErrorKind.SERVER_ERROR, 502, openai.InternalServerError, 502, "server_error"),
    (ErrorKind.TIMEOUT, 408, openai.InternalServerError, 504, "server_error"),
    (ErrorKind.CONNECTION, 0, openai.InternalServerError, 502, "server_error"),
    (ErrorKind.UNAVAILABLE, 503, openai.InternalServerError, 503, "server_error"),
])
def test_errors_in_openai_shape(kind: ErrorKind, status: int, sdk_error: type[Exception], wire_status: int,
                                wire_type: str) -> None:
    err = Error(kind=kind, status=status, message="nope", param="messages", retry_after=1.2)
    assert oc.error_status(err) == wire_status
    body_obj = json.loads(oc.render_error(err))
    assert set(body_obj) == {"error"} and set(body_obj["error"]) == {"message", "type", "param", "code"}
    assert body_obj["error"]["type"] == wire_type and body_obj["error"]["message"] == "nope"
    assert oc.error_headers(err) == {"retry-after": "2"}

    def handler(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(oc.error_status(err), content=oc.render_error(err), headers=oc.error_headers(err))

    with pytest.raises(sdk_error) as e:
        _sdk(handler).chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}])
    assert getattr(e.value, "status_code", None) == wire_status
    assert getattr(e.value, "body", None) == body_obj["error"]


def test_error_codes_and_headers() -> None:
    rl = json.loads(oc.render_error(Error(kind=ErrorKind.RATE_LIMITED, status=429, message="slow")))["error"]
    assert rl["code"] == "rate_limit_exceeded"
    quota = Error(kind=ErrorKind.RATE_LIMITED, status=429, message="pay", code="insufficient_quota")
    assert json.loads(oc.render_error(quota))["error"]["type"] == "insufficient_quota"
    auth = json.loads(oc.render_error(Error(kind=ErrorKind.AUTHENTICATION, status=401, message="k")))["error"]
    assert auth["code"] == "invalid_api_key"
    # another family's code (Anthropic's error type, Google's status) is not an OpenAI code: the status's own goes out
    for foreign, family in (("rate_limit_error", "anthropic"), ("RESOURCE_EXHAUSTED", "gemini")):
        err = Error(kind=ErrorKind.RATE_LIMITED, status=429, message="slow", code=foreign, code_family=family)
        assert json.loads(oc.render_error(err))["error"]["code"] == "rate_limit_exceeded"
    # an OpenAI-compatible upstream's own code passes, whatever it looks like (DeepSeek's context error)
    for own in ("context_length_exceeded", "invalid_request_error", "E1001"):
        err = Error(kind=ErrorKind.INVALID_REQUEST, status=400, message="long", code=own)
        assert json.loads(oc.render_error(err))["error"]["code"] == own
    assert oc.error_headers(Error(kind=ErrorKind.RATE_LIMITED, status=429, message="x")) == {}
    assert oc.error_headers(Error(kind=ErrorKind.RATE_LIMITED, status=429, message="x", retry_after=3)) == \
        {"retry-after": "3"}
    assert oc.error_headers(Error(kind=ErrorKind.RATE_LIMITED, status=429, message="x", retry_after=0.001)) == \
        {"retry-after": "1"}


# --------------------------------------------------------------------------------------------------
# Outbound: build_request


def test_build_request_carries_everything() -> None:
    req = Request(
        model="fast",
        messages=[
            Message(role="system", content=[TextPart(text="sys")]),
            Message(role="user", content=[TextPart(text="see"), ImagePart(media_type="image/jpeg", data="AAAA", detail="high"),
                                          ImagePart(url="https://x.test/p.png")]),
            Message(role="assistant", content=[ReasoningPart(text="plain"), ReasoningPart(text="signed", signature="s"),
                                               TextPart(text="calling")],
                    tool_calls=[ToolCall(id="call_1", name="f", arguments='{"a":1}'),
                                ToolCall(id="call_2", name="f", arguments='{"a":2}')]),
            # Anthropic-style: tool results inside the user turn, with more text after them
            Message(role="user", content=[ToolResultPart(tool_call_id="call_1", content=[TextPart(text="r1")]),
                                          ToolResultPart(tool_call_id="call_2", content=[]),
                                          TextPart(text="and now?")]),
        ],
        tools=[Tool(name="f", parameters={"type": "object"}, cache_control={"type": "ephemeral"})],
        tool_choice=ToolChoice(mode="function", name="f", disable_parallel=False),
        response_format=ResponseFormat(type="json_schema", json_schema={"type": "object"}),
        sampling=Sampling(temperature=0.0, top_k=5, max_tokens=64, stop=["x"], seed=1, n=2),
        stream=True, include_usage=False, reasoning_effort="high", reasoning_budget=1024,
        metadata={"a": "b"}, user="u", extra_body={"logprobs": True, "model": "ignored", "provider": {"sort": "price"}},
        source="openai_chat",
    )
    out = json.loads(oc.build_request(req, "gpt-4o-mini"))
    assert out == {
        "model": "gpt-4o-mini",
        "messages": [
            {"role": "system", "content": "sys"},
            {"role": "user", "content": [
                {"type": "text", "text": "see"},
                {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,AAAA", "detail": "high"}},
                {"type": "image_url", "image_url": {"url": "https://x.test/p.png"}}]},
            {"role": "assistant", "content": "calling", "reasoning_content": "plain", "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": '{"a":1}'}},
                {"id": "call_2", "type": "function", "function": {"name": "f", "arguments": '{"a":2}'}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "r1"},
            {"role": "tool", "tool_call_id": "call_2", "content": ""},
            {"role": "user", "content": "and now?"},
        ],
        "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
        "tool_choice": {"type": "function", "function": {"name": "f"}},
        "parallel_tool_calls": True,
        "response_format": {"type": "json_schema", "json_schema": {"name": "response", "schema": {"type": "object"}}},
        "temperature": 0.0, "max_completion_tokens": 64, "stop": ["x"], "seed": 1, "n": 2,
        "stream": True, "stream_options": {"include_usage": True},
        "reasoning_effort": "high", "metadata": {"a": "b"}, "user": "u",
        "logprobs": True, "provider": {"sort": "price"},
    }


def test_build_request_omits_tool_choice_without_tools_and_stream_fields_when_not_streaming() -> None:
    out = json.loads(oc.build_request(req_of(tool_choice=ToolChoice(mode="none", disable_parallel=True)), "m"))
    assert "tool_choice" not in out and "parallel_tool_calls" not in out and "stream" not in out
    assert "stream_options" not in out


@pytest.mark.parametrize(("msg", "param"), [
    (Message(role="system", content=[ImagePart(url="https://a")]), "messages[0].content[0]"),
    (Message(role="assistant", content=[ImagePart(url="https://a")]), "messages[0].content[0]"),
    (Message(role="user", content=[ToolResultPart(tool_call_id="c", content=[ImagePart(url="https://a")])]),
     "messages[0].content[0].content"),
    (Message(role="user", content=[ImagePart()]), "messages[0].content[0]"),
])
def test_build_request_refuses_what_openai_cannot_carry(msg: Message, param: str) -> None:
    with pytest.raises(FormatError) as e:
        oc.build_request(req_of(messages=[msg]), "m")
    assert e.value.param == param and e.value.status == 400


def test_client_request_round_trips_to_upstream_body() -> None:
    client_body = {
        "model": "fast",
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "what is this?"},
                                         {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBO", "detail": "low"}}]},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "lookup", "arguments": "{\"q\":\"png\"}"}},
                {"id": "call_2", "type": "function", "function": {"name": "lookup", "arguments": "{\"q\":\"img\"}"}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "a format"},
            {"role": "tool", "tool_call_id": "call_2", "content": "a picture"},
        ],
        "tools": [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}],
        "tool_choice": "auto",
        "parallel_tool_calls": True,
        "stream": True,
        "chat_template_kwargs": {"enable_thinking": False},
        "logit_bias": {"50256": -100},
    }
    upstream = json.loads(oc.build_request(oc.parse_request(orjson.dumps(client_body)), "qwen3"))
    expected = dict(client_body, model="qwen3", stream_options={"include_usage": True})
    assert upstream == expected


# --------------------------------------------------------------------------------------------------
# Outbound: parse_response, StreamParser, parse_error


def test_parse_response_variants() -> None:
    resp = oc.parse_response(orjson.dumps({
        "id": "r", "model": "deepseek-reasoner", "created": 3,
        "choices": [{"index": 0, "finish_reason": "stop", "message": {
            "role": "assistant", "content": "42", "reasoning_content": "because",
            "tool_calls": [{"type": "function", "function": {"name": "f", "arguments": {"x": 1}}}]}}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 20, "prompt_cache_hit_tokens": 6,
                  "completion_tokens_details": {"reasoning_tokens": 8}},
    }))
    assert resp.message.content == [ReasoningPart(text="because"), TextPart(text="42")]
    assert resp.message.tool_calls == [ToolCall(id="call_0", name="f", arguments='{"x":1}')]
    assert resp.finish_reason == "tool_calls"  # "stop" with tool calls would lose them in other formats
    assert resp.usage == Usage(prompt_tokens=10, completion_tokens=20, total_tokens=30, cached_tokens=6,
                               reasoning_tokens=8)
    odd = oc.parse_response(b'{"choices":[{"message":{"content":null,"reasoning":"or"},"finish_reason":"eos"}]}')
    assert odd.message.content == [ReasoningPart(text="or")] and odd.finish_reason == "stop" and odd.usage is None


def test_usage_details_map_both_ways() -> None:
    wire = {"prompt_tokens": 100, "completion_tokens": 50, "total_tokens": 150,
            "prompt_tokens_details": {"cached_tokens": 40, "cache_write_tokens": 7},
            "completion_tokens_details": {"reasoning_tokens": 30}}
    unified = Usage(prompt_tokens=100, completion_tokens=50, total_tokens=150, cached_tokens=40,
                    cache_write_tokens=7, reasoning_tokens=30)
    assert oc.parse_response(orjson.dumps({"choices": [], "usage": wire})).usage == unified
    streamed = parse_stream(_sse({"id": "a", "choices": [], "usage": wire}, b"[DONE]"))
    assert streamed[-1] == UsageEvent(usage=unified)
    assert json.loads(oc.render_response(_resp(usage=unified)))["usage"] == wire


@pytest.mark.parametrize("raw", [b"nope", b"[]", b'{"id":"x"}', b'{"choices":{}}'])
def test_parse_response_malformed(raw: bytes) -> None:
    with pytest.raises(FormatError) as e:
        oc.parse_response(raw)
    assert e.value.status == 502


def _sse(*objs: Any) -> bytes:
    return b"".join(b"data: " + (o if isinstance(o, bytes) else orjson.dumps(o)) + b"\n\n" for o in objs)


def test_stream_parser_reasoning_variants_and_terminal_events() -> None:
    data = _sse(
        {"id": "a", "model": "m", "created": 2, "choices": [{"index": 0, "delta": {"role": "assistant", "reasoning_content": "r1"}}]},
        {"id": "a", "choices": [{"index": 0, "delta": {"reasoning": "r2"}}]},
        {"id": "a", "choices": [{"index": 0, "delta": {"reasoning_content": "r3", "reasoning": "r3"}}]},
        {"id": "a", "choices": [{"index": 0, "delta": {"content": "t"}, "finish_reason": "length"}]},
        {"id": "a", "choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}},
        b"[DONE]",
        {"ignored": "after done"},
    )
    assert parse_stream(data) == [
        StreamStart(id="a", model="m", created=2), ReasoningDelta(text="r1"), ReasoningDelta(text="r2"),
        ReasoningDelta(text="r3"), TextDelta(text="t"), FinishEvent(reason="length"),
        UsageEvent(usage=Usage(prompt_tokens=1, completion_tokens=2, total_tokens=3)),
    ]


def test_stream_parser_tool_calls_without_index_and_whole() -> None:
    data = _sse(
        {"id": "a", "choices": [{"index": 0, "delta": {"tool_calls": [
            {"id": "c1", "function": {"name": "f", "arguments": "{}"}},
            {"id": "c2", "function": {"name": "g", "arguments": "{\"a\":1}"}}]}}]},
        {"id": "a", "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
        b"[DONE]",
    )
    resp = aggregate(parse_stream(data))
    assert resp.message.tool_calls == [ToolCall(id="c1", name="f", arguments="{}"),
                                       ToolCall(id="c2", name="g", arguments='{"a":1}')]
    assert resp.finish_reason == "tool_calls"


def test_stream_parser_end_conditions() -> None:
    p = oc.StreamParser()
    p.feed(_sse({"id": "a", "choices": [{"index": 0, "delta": {"content": "x"}}]}))
    with pytest.raises(FormatError) as e:
        p.close()
    assert e.value.status == 502
    # [DONE] without its blank line is still the end
    p = oc.StreamParser()
    evs = p.feed(b'data: {"id":"a","choices":[]}\n\ndata: [DONE]')
    assert evs == [StreamStart(id="a", model="")] and p.close() == []
    with pytest.raises(FormatError):
        oc.StreamParser().feed(b"data: {broken\n\n")
    with pytest.raises(FormatError):
        oc.StreamParser().feed(b"data: [1]\n\n")
    # ill-typed fields are skipped, not a crash
    odd = oc.StreamParser().feed(_sse({"id": 1, "choices": True, "usage": []}, {"choices": [{"delta": []}]}, b"[DONE]"))
    assert odd == [StreamStart(id="1", model="")]


def test_stream_parser_reads_invalid_utf8_as_replacement_characters() -> None:
    # The decoder hands raw bytes to orjson, which refuses invalid UTF-8; the chunk is then read as
    # text with U+FFFD, as it was when every line was decoded first. Both the one-event-per-read
    # path and the general path (two events in one read, CRLF) must agree.
    chunk = b'{"id":"a","choices":[{"index":0,"delta":{"content":"caf\xc3 \xff"}}]}'
    expected = [StreamStart(id="a", model=""), TextDelta(text="caf\ufffd \ufffd")]
    p = oc.StreamParser()
    assert p.feed(b"data: " + chunk + b"\n\n") == expected
    assert oc.StreamParser().feed(b"data: " + chunk + b"\r\n\r\ndata: " + chunk + b"\n\n") == [
        *expected, expected[1]]
    with pytest.raises(FormatError) as e:
        oc.StreamParser().feed(b'data: {"id":"\xff\n\n')
    assert e.value.message == "Upstream stream sent a malformed chunk." and e.value.status == 502


def test_stream_parser_in_stream_error_is_an_error_event() -> None:
    p = oc.StreamParser()
    evs = p.feed(_sse({"id": "a", "choices": [{"index": 0, "delta": {"content": "x"}}]},
                      {"error": {"message": "Rate limit hit", "type": "requests", "code": "rate_limit_exceeded"}}))
    assert p.close() == []  # the error was the terminal event
    assert isinstance(evs[-1], ErrorEvent)
    assert evs[-1].error.kind is ErrorKind.RATE_LIMITED and evs[-1].error.status == 429
    assert evs[-1].error.code == "rate_limit_exceeded"
    openrouter = oc.StreamParser().feed(_sse({"error": {"code": 502, "message": "Provider returned error"}}))
    assert isinstance(openrouter[0], ErrorEvent)
    assert openrouter[0].error.status == 502 and openrouter[0].error.code is None
    # rendered for the client, an upstream ErrorEvent ends the client stream
    r = oc.StreamRenderer(req_of(stream=True))
    out = r.render(evs[-1]) + r.finish()
    assert out == b"data: " + oc.render_error(evs[-1].error) + b"\n\n"


@pytest.mark.parametrize(("status", "headers", "raw", "kind", "message", "retry", "code"), [
    (400, {}, b'{"error":{"message":"bad thing","type":"invalid_request_error","param":"messages","code":"invalid_value"}}',
     ErrorKind.INVALID_REQUEST, "bad thing", None, "invalid_value"),
    (429, {"retry-after-ms": "1500", "retry-after": "9"}, b'{"error":{"message":"slow down","type":"requests"}}',
     ErrorKind.RATE_LIMITED, "slow down", 1.5, None),
    (429, {"Retry-After": "7"}, b'{"error":{"message":"slow down"}}', ErrorKind.RATE_LIMITED, "slow down", 7.0, None),
    (503, {"retry-after": "Wed, 21 Oct 2015 07:28:30 GMT", "date": "Wed, 21 Oct 2015 07:28:00 GMT"}, b"",
     ErrorKind.OVERLOADED, "Upstream error: HTTP 503 Service Unavailable.", 30.0, None),
    (503, {"retry-after": "Wed, 21 Oct 2015 07:28:30 GMT"}, b"", ErrorKind.OVERLOADED,
     "Upstream error: HTTP 503 Service Unavailable.", None, None),
    (429, {}, b'{"error":{"message":"Rate limit reached. Please try again in 250ms.","code":"rate_limit_exceeded"}}',
     ErrorKind.RATE_LIMITED, "Rate limit reached. Please try again in 250ms.", 0.25, "rate_limit_exceeded"),
    (502, {}, b"<html>" + b"x" * 100_000 + b"</html>", ErrorKind.SERVER_ERROR, "Upstream error: HTTP 502 Bad Gateway.",
     None, None),
    (500, {}, b'{"error":"plain string"}', ErrorKind.SERVER_ERROR, "plain string", None, None),
    (400, {}, b'{"object":"error","message":"vllm says no","code":400}', ErrorKind.INVALID_REQUEST, "vllm says no",
     None, None),
    (422, {}, b'{"detail":"fastapi says no"}', ErrorKind.INVALID_REQUEST, "fastapi says no", None, None),
    (401, {}, b'{"error":{"message":"Incorrect API key provided: sk-proj-abcdefghijklmnop1234.","code":"invalid_api_key"}}',
     ErrorKind.AUTHENTICATION, "Incorrect API key provided: [redacted].", None, "invalid_api_key"),
    (404, {"retry-after": "soon"}, b"{}", ErrorKind.NOT_FOUND, "Upstream error: HTTP 404 Not Found.", None, None),
])
def test_parse_error(status: int, headers: dict[str, str], raw: bytes, kind: ErrorKind, message: str,
                     retry: float | None, code: str | None) -> None:
    err = oc.parse_error(status, headers, raw)
    assert (err.kind, err.status, err.message, err.retry_after, err.code) == (kind, status, message, retry, code)


def test_parse_error_round_trips_our_own_errors() -> None:
    for kind, status in [(ErrorKind.RATE_LIMITED, 429), (ErrorKind.INVALID_REQUEST, 400), (ErrorKind.OVERLOADED, 503)]:
        err = Error(kind=kind, status=status, message="m", param="p", code="c", retry_after=4)
        back = oc.parse_error(oc.error_status(err), oc.error_headers(err), oc.render_error(err))
        assert back == err


CHUNKISH = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 3) | st.text(max_size=4) | st.just("tool_calls"),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
        st.sampled_from(["id", "model", "created", "choices", "index", "delta", "message", "content", "role",
                         "tool_calls", "function", "name", "arguments", "finish_reason", "usage", "prompt_tokens",
                         "prompt_tokens_details", "cached_tokens", "reasoning_content", "refusal", "error"]),
        inner, max_size=5),
    max_leaves=15,
)


@given(st.lists(CHUNKISH, max_size=5))
@PROPS
def test_fuzzed_upstream_bodies_and_streams_give_format_error_or_values(objs: list[Any]) -> None:
    for o in objs:
        try:
            oc.parse_response(orjson.dumps(o))
        except FormatError as e:
            assert e.status == 502
    p = oc.StreamParser()
    try:
        p.feed(_sse(*objs, b"[DONE]"))
        p.close()
    except FormatError as e:
        assert e.status == 502


def test_parse_response_error_body_with_200() -> None:
    with pytest.raises(FormatError) as e:
        oc.parse_response(b'{"error":{"message":"model overloaded","code":503}}')
    assert "model overloaded" in e.value.message and e.value.status == 502


# --------------------------------------------------------------------------------------------------
# Property tests: unified → OpenAI wire → unified is the identity on what the format can carry

names = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), min_size=1, max_size=12)
texts = st.text(min_size=1, max_size=30)
ids = st.from_regex(r"call_[A-Za-z0-9]{1,10}", fullmatch=True)
result_ids = st.from_regex(r"res_[A-Za-z0-9]{1,10}", fullmatch=True)
floats = st.floats(allow_nan=False, allow_infinity=False, width=64)
small_ints = st.integers(-(2**53), 2**53)
json_values = st.recursive(st.none() | st.booleans() | small_ints | texts,
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(names, inner, max_size=3),
                           max_leaves=8)
cache = st.none() | st.just({"type": "ephemeral"})
text_parts = st.builds(TextPart, text=texts, cache_control=cache)
images = st.one_of(
    st.builds(ImagePart, url=st.from_regex(r"https://[a-z]{1,8}\.test/[a-z0-9]{0,8}\.png", fullmatch=True),
              detail=st.none() | st.sampled_from(["auto", "low", "high"])),
    st.builds(ImagePart, media_type=st.sampled_from(["image/png", "image/jpeg", "image/webp"]),
              data=st.from_regex(r"[A-Za-z0-9+/]{4,40}={0,2}", fullmatch=True),
              detail=st.none() | st.sampled_from(["auto", "low", "high"])),
)
tool_calls = st.builds(ToolCall, id=ids, name=names, arguments=st.text(max_size=30))


@st.composite
def messages(draw: st.DrawFn) -> Message:
    role = draw(st.sampled_from(["system", "developer", "user", "assistant", "tool"]))
    name = draw(st.none() | names)
    if role in ("system", "developer"):
        return Message(role=role, content=draw(st.lists(text_parts, min_size=1, max_size=3)), name=name)
    if role == "user":
        return Message(role=role, content=draw(st.lists(text_parts | images, max_size=4)), name=name)
    if role == "assistant":
        content: list[Any] = []
        if draw(st.booleans()):
            content.append(ReasoningPart(text=draw(texts)))
        content += draw(st.lists(text_parts, max_size=2))
        return Message(role=role, content=content, tool_calls=draw(st.lists(tool_calls, max_size=3)),
                       refusal=draw(st.none() | texts), name=name)
    # ids no assistant call uses: a result answering a call would get that call's name (tested elsewhere)
    result = ToolResultPart(tool_call_id=draw(result_ids), content=draw(st.lists(text_parts, max_size=2)))
    return Message(role="tool", content=[result])


function_tools = st.builds(Tool, name=names, description=st.none() | texts,
                           parameters=st.none() | st.dictionaries(names, json_values, max_size=3),
                           strict=st.none() | st.booleans())
native_tools = names.map(lambda n: Tool(type="native", name=n, provider="openai",
                                        native={"type": "custom", "custom": {"name": n}}))


@st.composite
def requests(draw: st.DrawFn) -> Request:
    tools = draw(st.lists(function_tools | native_tools, max_size=3))
    tool_choice = None
    if tools and draw(st.booleans()):
        mode = draw(st.sampled_from(["auto", "none", "required", "function"]))
        tool_choice = ToolChoice(mode=mode, name=draw(names) if mode == "function" else None,
                                 disable_parallel=draw(st.none() | st.booleans()))
    rf = draw(st.none() | st.builds(ResponseFormat, type=st.sampled_from(["text", "json_object"])) | st.builds(
        ResponseFormat, type=st.just("json_schema"), name=names,
        json_schema=st.none() | st.dictionaries(names, json_values, max_size=3),
        strict=st.none() | st.booleans(), description=st.none() | texts))
    sampling = Sampling(
        # (within the ranges OpenAI accepts, which the parser holds a request to)
        temperature=draw(st.none() | st.floats(0, 2)), top_p=draw(st.none() | st.floats(0, 1)),
        max_tokens=draw(st.none() | st.integers(1, 2**31)), stop=draw(st.none() | st.lists(texts, min_size=1, max_size=4)),
        seed=draw(st.none() | small_ints), presence_penalty=draw(st.none() | st.floats(-2, 2)),
        frequency_penalty=draw(st.none() | st.floats(-2, 2)), n=draw(st.none() | st.integers(1, 8)),
    )
    stream = draw(st.booleans())
    if stream and sampling.n is not None and sampling.n > 1:
        sampling.n = 1  # several choices are refused on a stream
    known = set(oc._KNOWN_FIELDS)
    extra = draw(st.dictionaries(names.filter(lambda k: k not in known), json_values, max_size=3))
    return Request(
        model=draw(names), messages=draw(st.lists(messages(), min_size=1, max_size=5)), tools=tools,
        tool_choice=tool_choice, response_format=rf, sampling=sampling, stream=stream,
        include_usage=True, reasoning_effort=draw(st.none() | st.sampled_from(["low", "medium", "high"])),
        metadata=draw(st.none() | st.dictionaries(names, texts, max_size=3)), user=draw(st.none() | names),
        extra_body=extra, source="openai_chat",
    )


@given(requests())
@PROPS
def test_property_request_identity(req: Request) -> None:
    assert oc.parse_request(oc.build_request(req, req.model)) == req


@st.composite
def responses(draw: st.DrawFn) -> Response:
    content: list[Any] = []
    if draw(st.booleans()):
        content.append(ReasoningPart(text=draw(texts)))
    if draw(st.booleans()):
        content.append(TextPart(text=draw(texts)))
    calls = draw(st.lists(tool_calls, max_size=3))
    finish = draw(st.sampled_from(["tool_calls", "length", "content_filter"] if calls else
                                  ["stop", "length", "content_filter"]))
    p, c = draw(st.integers(0, 10**6)), draw(st.integers(0, 10**6))
    usage = Usage(prompt_tokens=p, completion_tokens=c, total_tokens=p + c, cached_tokens=draw(st.integers(0, p)),
                  cache_write_tokens=draw(st.integers(0, 100)), reasoning_tokens=draw(st.integers(0, c)))
    return Response(id=draw(names), model=draw(names), created=draw(st.integers(0, 2**40)),
                    message=Message(role="assistant", content=content, tool_calls=calls, refusal=draw(st.none() | texts)),
                    finish_reason=finish, usage=usage)


@given(responses())
@PROPS
def test_property_response_identity(resp: Response) -> None:
    assert oc.parse_response(oc.render_response(resp)) == resp


@st.composite
def event_streams(draw: st.DrawFn) -> list[StreamEvent]:
    events: list[StreamEvent] = [StreamStart(id=draw(names), model=draw(names), created=draw(st.integers(0, 2**40)))]
    n_tools = 0
    for _ in range(draw(st.integers(0, 25))):
        kind = draw(st.sampled_from(["text", "reasoning", "tool"]))
        if kind == "text":
            events.append(TextDelta(text=draw(texts)))
        elif kind == "reasoning":
            events.append(ReasoningDelta(text=draw(texts)))
        else:
            k = draw(st.integers(0, n_tools))
            if k == n_tools:
                n_tools += 1
                events.append(ToolCallDelta(index=k, id=draw(ids), name=draw(names), arguments=draw(st.text(max_size=8))))
            else:
                events.append(ToolCallDelta(index=k, arguments=draw(st.text(min_size=1, max_size=8))))
    events.append(FinishEvent(reason=draw(st.sampled_from(["tool_calls", "length"] if n_tools else
                                                          ["stop", "length", "content_filter"]))))
    p, c = draw(st.integers(0, 10**6)), draw(st.integers(0, 10**6))
    events.append(UsageEvent(usage=Usage(prompt_tokens=p, completion_tokens=c, total_tokens=p + c,
                                         cached_tokens=draw(st.integers(0, p)), reasoning_tokens=draw(st.integers(0, c)))))
    return events


@given(event_streams(), st.randoms(use_true_random=False), st.booleans())
@PROPS
def test_property_stream_identity(events: list[StreamEvent], rng: random.Random, include_usage: bool) -> None:
    """Rendered for a client, then parsed back at random split points: the same events."""
    stream = render_stream(req_of(stream=True, include_usage=include_usage), events)
    parsed = split_feed(stream, rng)
    expected = events if include_usage else events[:-1]
    assert parsed == expected
    assert aggregate(parsed).message == aggregate(events).message


@pytest.mark.parametrize("field", ["max_tokens", "max_completion_tokens", "seed", "n"])
@pytest.mark.parametrize("value", ["1e308", "-1e300", "9.3e18"])
def test_whole_floats_beyond_64_bits_are_400s_naming_the_field(field: str, value: str) -> None:
    """orjson reads no integer beyond 64 bits, but 1e308 is a whole float: it used to become an
    integer no format can carry, and a 500 when rendered for another provider."""
    body = f'{{"model":"m","messages":[{{"role":"user","content":"hi"}}],"{field}":{value}}}'.encode()
    with pytest.raises(FormatError) as err:
        oc.check_request(body).request()
    assert err.value.status == 400 and err.value.param == field


def test_several_choices_are_fine_without_streaming_and_one_with() -> None:
    assert oc.parse_request(body(n=2)).sampling.n == 2
    assert oc.parse_request(body(n=1, stream=True)).sampling.n == 1
