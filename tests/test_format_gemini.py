"""Gemini format: fixtures, both roles, streams at any byte split, bad input, round-trip properties,
and google-genai itself reading what we render."""

from __future__ import annotations

import base64
import json
import string
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from native_finish import without_native

from axonsim.formats import FormatError, get_format
from axonsim.formats import gemini as g
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

FIX = Path(__file__).parent / "fixtures" / "providers" / "gemini"
PAIRS = ["stop", "think", "tool", "cached"]


def fixture(name: str) -> bytes:
    return (FIX / name).read_bytes()


def body(obj: Any) -> bytes:
    return json.dumps(obj).encode()


def feed_all(data: bytes, cuts: list[int] | None = None) -> list[StreamEvent]:
    """Parse a stream delivered in pieces cut at `cuts` (byte offsets)."""
    parser = g.StreamParser()
    events: list[StreamEvent] = []
    prev = 0
    for cut in sorted(set(cuts or [])) + [len(data)]:
        events += parser.feed(data[prev:cut])
        prev = cut
    return events + parser.close()


def aggregate(events: list[StreamEvent]) -> Response:
    agg = StreamAggregator()
    for ev in events:
        agg.add(ev)
    return agg.response()


def sse_payloads(data: bytes) -> list[dict[str, Any]]:
    assert data.endswith(b"\r\n\r\n")
    out = []
    for block in data.split(b"\r\n\r\n")[:-1]:
        assert block.startswith(b"data: "), block
        assert b"\n" not in block and b"event:" not in block
        out.append(orjson.loads(block[len(b"data: "):]))
    return out


def test_the_registry_finds_the_module() -> None:
    assert get_format("gemini") is g
    for name in g.__all__:
        assert callable(getattr(g, name))


# ==================================================================================================
# Inbound: parse_request


def test_sdk_snake_case_and_camel_case_requests_parse_the_same() -> None:
    snake = g.parse_request(fixture("gemini-sdk-tools.request.json"), "gemini-2.5-flash", False)
    camel = g.parse_request(fixture("gemini-camel-tools.request.json"), "gemini-2.5-flash", False)
    assert snake == camel


def test_sdk_request_maps_every_field() -> None:
    req = g.parse_request(fixture("gemini-sdk-tools.request.json"), "gemini-2.5-flash", True)
    assert req.model == "gemini-2.5-flash" and req.stream is True
    system, user, assistant, weather, clock = req.messages
    assert system == Message(role="system", content=[TextPart(text="You are a concise travel assistant.")])

    assert user.role == "user"
    text, inline, remote = user.content
    assert isinstance(text, TextPart) and text.text.startswith("What's the weather")
    # google-genai sends URL-safe base64; unified carries the standard alphabet (Anthropic needs it)
    assert inline == ImagePart(media_type="image/png", data="+vv8/f7/iVBORw==")
    assert base64.b64decode(inline.data or "") == bytes(range(250, 256)) + b"\x89PNG"
    assert remote == ImagePart(media_type="image/jpeg", url="https://example.com/street.jpg")

    # the unsigned thought and the signature of the call that follows it are one reasoning block
    assert assistant.content == [ReasoningPart(text="**Planning**\n\nI need both tools.",
                                               signature="EjRnZW1pbmktc2lnbmF0dXJl_v8=", signature_provider="gemini")]
    assert assistant.tool_calls == [
        ToolCall(id="call_1_0", name="get_weather", arguments='{"city":"Paris","unit":"celsius"}'),
        ToolCall(id="call_1_1", name="get_time", arguments='{"time_zone":"Europe/Paris"}'),
    ]
    assert weather == Message(role="tool", content=[ToolResultPart(
        tool_call_id="call_1_0", name="get_weather", content=[TextPart(text="18°C, light rain")])])
    assert clock == Message(role="tool", content=[ToolResultPart(
        tool_call_id="call_1_1", name="get_time", content=[TextPart(text='{"time":"14:05","dst":true}')])])

    search, weather_tool, time_tool = req.tools
    assert search == Tool(type="native", name="googleSearch", provider="gemini", native={"googleSearch": {}})
    assert weather_tool.parameters == {
        "type": "object", "properties": {"city": {"type": "string"},
                                         "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
        "required": ["city"], "additionalProperties": False}
    # the OpenAPI-subset Schema becomes JSON Schema; property names (snake_case data) are untouched
    assert time_tool.parameters == {
        "properties": {"time_zone": {"description": "IANA name", "type": "string"},
                       "with_seconds": {"type": ["boolean", "null"]}},
        "required": ["time_zone"], "type": "object"}
    assert time_tool.description == "Local time in a timezone"

    assert req.tool_choice == ToolChoice(mode="auto")
    assert req.sampling == Sampling(temperature=0.7, top_p=0.95, top_k=40, max_tokens=1024, stop=["END"])
    assert isinstance(req.sampling.top_k, int)  # the SDK sends 40.0
    assert req.reasoning_budget == 2048
    assert req.extra_body == {
        "safetySettings": [{"category": "HARM_CATEGORY_HARASSMENT", "threshold": "BLOCK_NONE"}],
    }


def test_model_and_stream_come_from_the_path() -> None:
    raw = body({"contents": [{"role": "user", "parts": [{"text": "hi"}]}]})
    assert g.parse_request(raw, "models/gemini-2.5-pro", None).model == "gemini-2.5-pro"
    assert g.parse_request(raw, "gemini-2.5-pro", None).stream is False
    assert g.parse_request(raw, "gemini-2.5-pro", True).stream is True
    # role defaults to user, as the API does for single-turn requests
    assert g.parse_request(body({"contents": [{"parts": [{"text": "hi"}]}]}), "m").messages[0].role == "user"


def _history(*turns: dict[str, Any]) -> bytes:
    return body({"contents": list(turns)})


USER = {"role": "user", "parts": [{"text": "weather in Paris and Rome, and the time?"}]}
CALLS = {"role": "model", "parts": [
    {"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}},
    {"functionCall": {"name": "get_weather", "args": {"city": "Rome"}}},
    {"functionCall": {"name": "get_time", "args": {}}},
]}
RESULTS = {"role": "user", "parts": [  # deliberately out of order
    {"functionResponse": {"name": "get_time", "response": {"result": "12:00"}}},
    {"functionResponse": {"name": "get_weather", "response": {"result": "sunny"}}},
    {"functionResponse": {"name": "get_weather", "response": {"result": "rain"}}},
]}


def test_generated_ids_are_stable_and_match_the_results() -> None:
    req = g.parse_request(_history(USER, CALLS, RESULTS), "m")
    ids = [c.id for c in req.messages[1].tool_calls]
    assert ids == ["call_1_0", "call_1_1", "call_1_2"]
    results = [(m.content[0].tool_call_id, m.content[0].name, m.content[0].content[0].text)  # type: ignore[union-attr]
               for m in req.messages[2:]]
    # same-name calls are answered in order; each result answers the call of its name
    assert results == [("call_1_2", "get_time", "12:00"), ("call_1_0", "get_weather", "sunny"),
                       ("call_1_1", "get_weather", "rain")]

    # the same history, resent with one more turn, keeps its ids (turn = index in contents)
    longer = g.parse_request(_history(USER, CALLS, RESULTS, {"role": "model", "parts": [{"text": "done"}]},
                                      {"role": "user", "parts": [{"text": "and Oslo?"}]}), "m")
    assert longer.messages[:5] == req.messages
    assert g.parse_request(_history(USER, CALLS, RESULTS), "m") == req


def test_explicit_ids_are_kept_and_matched() -> None:
    calls = {"role": "model", "parts": [{"functionCall": {"id": "c1", "name": "f", "args": {}}},
                                         {"functionCall": {"name": "f", "args": {"x": 1}}}]}
    results = {"role": "user", "parts": [{"functionResponse": {"id": "c1", "name": "f", "response": {"result": "a"}}},
                                         {"functionResponse": {"name": "f", "response": {"result": "b"}}}]}
    req = g.parse_request(_history(USER, calls, results), "m")
    assert [c.id for c in req.messages[1].tool_calls] == ["c1", "call_1_1"]
    assert [m.content[0].tool_call_id for m in req.messages[2:]] == ["c1", "call_1_1"]  # type: ignore[union-attr]


def test_a_streamed_answer_replayed_chunk_by_chunk_is_one_turn() -> None:
    # google-genai's automatic function calling replays a streamed answer as one model turn per
    # chunk, the last one's empty text part included: the id-less responses still answer the calls
    # before it, and the channel sees one assistant message.
    chunks = [{"role": "model", "parts": [{"text": "Let me look."}]},
              {"role": "model", "parts": [{"functionCall": {"name": "f", "args": {"x": 1}}}]},
              {"role": "model", "parts": [{"functionCall": {"name": "g", "args": {}}}]},
              {"role": "model", "parts": [{"text": ""}]}]
    results = {"role": "user", "parts": [{"functionResponse": {"name": "g", "response": {"result": "b"}}},
                                         {"functionResponse": {"name": "f", "response": {"result": "a"}}}]}
    req = g.parse_request(_history(USER, *chunks, results), "m")
    assert [m.role for m in req.messages] == ["user", "assistant", "tool", "tool"]
    turn = req.messages[1]
    assert turn.content == [TextPart(text="Let me look.")] and [c.name for c in turn.tool_calls] == ["f", "g"]
    ids = {c.name: c.id for c in turn.tool_calls}
    assert [m.content[0].tool_call_id for m in req.messages[2:]] == [ids["g"], ids["f"]]  # type: ignore[union-attr]
    # a user turn in between still ends the run: the next model turn is an answer of its own
    answer_f = {"role": "user", "parts": [results["parts"][1]]}
    later = g.parse_request(_history(USER, chunks[1], answer_f, USER, chunks[2]), "m")
    assert [m.role for m in later.messages] == ["user", "assistant", "tool", "user", "assistant"]


def test_a_replayed_streamed_thought_is_one_reasoning_block_with_its_signature() -> None:
    # The thought streamed in pieces, then its signature on an empty thought part, each replayed as
    # a model content: one reasoning block, whole, signed (Anthropic checks the signature against
    # the whole text), before the call.
    chunks = [{"role": "model", "parts": [{"text": "The user wants ", "thought": True}]},
              {"role": "model", "parts": [{"text": "the weather.", "thought": True}]},
              {"role": "model", "parts": [{"text": "", "thought": True, "thoughtSignature": "U0lHMQ=="}]},
              {"role": "model", "parts": [{"functionCall": {"name": "f", "args": {}}}]},
              {"role": "model", "parts": [{"text": ""}]}]
    answer = {"role": "user", "parts": [{"functionResponse": {"name": "f", "response": {"result": "sunny"}}}]}
    req = g.parse_request(_history(USER, *chunks, answer), "m")
    turn = req.messages[1]
    [thought] = turn.content
    assert isinstance(thought, ReasoningPart) and thought.text == "The user wants the weather." and thought.signature
    one = g.parse_request(_history(USER, {"role": "model", "parts": [p for c in chunks for p in c["parts"]]}, answer), "m")
    # as if the pieces had come as one content (but for the ids made up from the contents' positions)
    assert one.messages[1].content == turn.content and [c.name for c in one.messages[1].tool_calls] == ["f"]
    assert req.messages[2].content[0].tool_call_id == turn.tool_calls[0].id  # type: ignore[union-attr]
    # text streamed in pieces is one text
    text = g.parse_request(_history(USER, {"role": "model", "parts": [{"text": "Hel"}]},
                                    {"role": "model", "parts": [{"text": "lo"}]}), "m")
    assert text.messages[1].content == [TextPart(text="Hello")]


def test_an_error_says_its_code_is_googles() -> None:
    # An OpenAI client is not given a Google status as its error code (openai_chat._error_obj).
    err = g.parse_error(500, {}, orjson.dumps({"error": {"code": 500, "message": "broke", "status": "INTERNAL"}}))
    assert err.code == "INTERNAL" and err.code_family == "gemini"


@pytest.mark.parametrize(("response", "text", "is_error"), [
    ({"result": "sunny"}, "sunny", False),
    ({"temp": 20, "sky": "clear"}, '{"temp":20,"sky":"clear"}', False),
    ({"result": {"temp": 20}}, '{"result":{"temp":20}}', False),
    ({"result": '{"a":1}'}, '{"result":"{\\"a\\":1}"}', False),  # a JSON-looking string is not unwrapped
    ({"error": "city not found"}, "city not found", True),
    ({"error": {"code": 404}}, '{"code":404}', True),
    ({}, "{}", False),
])
def test_function_response_objects(response: dict[str, Any], text: str, is_error: bool) -> None:
    calls = {"role": "model", "parts": [{"functionCall": {"name": "f", "args": {}}}]}
    results = {"role": "user", "parts": [{"functionResponse": {"name": "f", "response": response}}]}
    req = g.parse_request(_history(USER, calls, results), "m")
    part = req.messages[2].content[0]
    assert isinstance(part, ToolResultPart)
    assert (part.content, part.is_error) == ([TextPart(text=text)], is_error)
    # and build_request gives Gemini back exactly the object the client sent
    sent = orjson.loads(g.build_request(req, "m"))
    assert sent["contents"][2]["parts"][0]["functionResponse"]["response"] == response


def test_text_after_function_responses_follows_the_tool_messages() -> None:
    calls = {"role": "model", "parts": [{"functionCall": {"name": "f", "args": {}}}]}
    mixed = {"role": "user", "parts": [{"text": "also, hurry"},
                                       {"functionResponse": {"name": "f", "response": {"result": "ok"}}}]}
    req = g.parse_request(_history(USER, calls, mixed), "m")
    assert [m.role for m in req.messages] == ["user", "assistant", "tool", "user"]


def test_thought_signatures_stay_with_their_parts() -> None:
    model_turn = {"role": "model", "parts": [
        {"text": "think", "thought": True, "thoughtSignature": "U0lHMQ=="},
        {"text": "answer", "thoughtSignature": "U0lHMg=="},
        {"functionCall": {"name": "f", "args": {"a": 1}}, "thoughtSignature": "U0lHMw=="},
    ]}
    req = g.parse_request(_history(USER, model_turn), "m")
    assert req.messages[1].content == [ReasoningPart(text="think", signature="U0lHMQ==", signature_provider="gemini"),
                                       ReasoningPart(text="", signature="U0lHMg==", signature_provider="gemini"), TextPart(text="answer"),
                                       ReasoningPart(text="", signature="U0lHMw==", signature_provider="gemini")]
    sent = orjson.loads(g.build_request(req, "gemini-3-pro-preview"))
    parts = sent["contents"][1]["parts"]
    assert parts == [{"text": "think", "thought": True, "thoughtSignature": "U0lHMQ=="},
                     {"text": "answer", "thoughtSignature": "U0lHMg=="},
                     {"functionCall": {"id": "call_1_0", "name": "f", "args": {"a": 1}}, "thoughtSignature": "U0lHMw=="}]


def test_gemini3_text_signature_on_an_empty_last_part_survives() -> None:
    model_turn = {"role": "model", "parts": [{"text": "Mexico City."}, {"text": "", "thoughtSignature": "U0lH"}]}
    req = g.parse_request(_history(USER, model_turn, {"role": "user", "parts": [{"text": "thanks"}]}), "m")
    assert req.messages[1].content == [TextPart(text="Mexico City."), ReasoningPart(signature="U0lH", signature_provider="gemini")]
    sent = orjson.loads(g.build_request(req, "m"))
    assert sent["contents"][1]["parts"] == model_turn["parts"]


@pytest.mark.parametrize(("config", "choice", "extra"), [
    ({"mode": "AUTO"}, ToolChoice(mode="auto"), None),
    ({"mode": "NONE"}, ToolChoice(mode="none"), None),
    ({"mode": "ANY"}, ToolChoice(mode="required"), None),
    ({"mode": "ANY", "allowedFunctionNames": ["f"]}, ToolChoice(mode="function", name="f"), None),
    ({"mode": "ANY", "allowed_function_names": ["f", "h"]}, ToolChoice(mode="required"),
     {"functionCallingConfig": {"allowedFunctionNames": ["f", "h"]}}),
    ({"mode": "VALIDATED"}, ToolChoice(mode="auto"), {"functionCallingConfig": {"mode": "VALIDATED"}}),
])
def test_function_calling_modes(config: dict[str, Any], choice: ToolChoice, extra: dict[str, Any] | None) -> None:
    raw = {"contents": [USER], "toolConfig": {"function_calling_config": config}}
    req = g.parse_request(body(raw), "m")
    assert req.tool_choice == choice
    assert req.extra_body.get("toolConfig") == extra
    # a Gemini channel gets the client's own config back
    sent = orjson.loads(g.build_request(req, "m"))["toolConfig"]["functionCallingConfig"]
    assert {"mode": sent["mode"], **({"allowedFunctionNames": sent["allowedFunctionNames"]}
                                     if "allowedFunctionNames" in sent else {})} == \
        {_k: v for _k, v in {"mode": config["mode"], "allowedFunctionNames":
                              config.get("allowedFunctionNames") or config.get("allowed_function_names")}.items() if v}


def test_generation_config_mapping() -> None:
    raw = {"contents": [USER], "generationConfig": {
        "candidateCount": 2, "seed": 7, "presencePenalty": 0.5, "frequency_penalty": -0.5,
        "responseMimeType": "application/json",
        "responseSchema": {"type": "OBJECT", "properties": {"n": {"type": "INTEGER"}}, "propertyOrdering": ["n"]},
        "thinkingConfig": {"thinkingLevel": "HIGH"}, "responseModalities": ["TEXT"]}}
    req = g.parse_request(body(raw), "gemini-3-pro-preview")
    assert req.sampling.n == 2 and req.sampling.seed == 7
    assert req.sampling.presence_penalty == 0.5 and req.sampling.frequency_penalty == -0.5
    assert req.response_format == ResponseFormat(type="json_schema",
                                                 schema={"type": "object", "properties": {"n": {"type": "integer"}}})
    assert req.reasoning_effort == "high" and req.reasoning_budget is None
    assert req.extra_body["generationConfig"] == {"responseModalities": ["TEXT"],
                                                  "thinkingConfig": {"includeThoughts": False}}

    json_only = g.parse_request(body({"contents": [USER], "generationConfig": {"responseMimeType": "application/json"}}), "m")
    assert json_only.response_format == ResponseFormat(type="json_object")

    # dynamic thinking (-1) is the unified "model decides" (Anthropic's adaptive thinking); the
    # thoughts stay hidden from a Gemini client that did not ask for them
    dyn = g.parse_request(body({"contents": [USER], "generationConfig": {"thinkingConfig": {"thinkingBudget": -1}}}), "m")
    assert dyn.reasoning_budget == -1
    sent = orjson.loads(g.build_request(dyn, "gemini-2.5-flash"))
    assert sent["generationConfig"]["thinkingConfig"] == {"thinkingBudget": -1, "includeThoughts": False}
    # a client that asks for a budget but not for the thoughts does not get them from a Gemini channel
    quiet = g.parse_request(body({"contents": [USER], "generationConfig": {"thinkingConfig": {"thinkingBudget": 512}}}), "m")
    assert orjson.loads(g.build_request(quiet, "gemini-2.5-flash"))["generationConfig"]["thinkingConfig"] == \
        {"thinkingBudget": 512, "includeThoughts": False}


BAD_REQUESTS: list[tuple[Any, str | None]] = [
    ({}, "contents"),
    ({"contents": []}, "contents"),
    ({"contents": {"role": "user", "parts": [{"text": "x"}]}}, "contents"),
    ({"contents": ["hi"]}, "contents[0]"),
    ({"contents": [{"role": "assistant", "parts": [{"text": "x"}]}]}, "contents[0].role"),
    ({"contents": [{"role": "system", "parts": [{"text": "x"}]}]}, "contents[0].role"),
    ({"contents": [{"role": "user"}]}, "contents[0].parts"),
    ({"contents": [{"role": "user", "parts": []}]}, "contents[0].parts"),
    ({"contents": [{"role": "user", "parts": [{"foo": 1}]}]}, "contents[0].parts[0]"),
    ({"contents": [{"role": "user", "parts": ["hi"]}]}, "contents[0].parts[0]"),
    ({"contents": [{"role": "user", "parts": [{"text": 5}]}]}, "contents[0].parts[0].text"),
    ({"contents": [USER, {"role": "user", "parts": [{"functionCall": {"name": "f"}}]}]}, "contents[1].parts[0]"),
    ({"contents": [USER, {"role": "model", "parts": [{"functionCall": {"args": {}}}]}]},
     "contents[1].parts[0].functionCall.name"),
    ({"contents": [USER, {"role": "model", "parts": [{"functionCall": {"name": "f", "args": [1]}}]}]},
     "contents[1].parts[0].functionCall.args"),
    ({"contents": [USER, {"role": "user", "parts": [{"functionResponse": {"response": {}}}]}]},
     "contents[1].parts[0].functionResponse.name"),
    # parts that are not an array (it became a 500 inside the gateway)
    ({"contents": [USER, {"role": "model", "parts": [{"functionCall": {"name": "f", "args": {}}}]},
                   {"role": "user", "parts": [{"functionResponse": {"name": "f", "response": {}, "parts": 5}}]}]},
     "contents[2].parts[0].functionResponse.parts"),
    ({"contents": [{"role": "user", "parts": [{"inlineData": {"mimeType": "application/pdf", "data": "JVBE"}}]}]},
     "contents[0].parts[0].inlineData.mimeType"),
    ({"contents": [{"role": "user", "parts": [{"inlineData": {"mimeType": "image/png"}}]}]},
     "contents[0].parts[0].inlineData.data"),
    ({"contents": [USER], "generationConfig": {"temperature": "hot"}}, "generationConfig.temperature"),
    ({"contents": [USER], "generationConfig": {"topK": 2.5}}, "generationConfig.topK"),
    # a schema that is not an object (it became a 500 inside the gateway)
    ({"contents": [USER], "generationConfig": {"responseMimeType": "application/json", "responseJsonSchema": "x"}},
     "generationConfig.responseJsonSchema"),
    ({"contents": [USER], "generationConfig": {"responseMimeType": "application/json", "responseSchema": [1]}},
     "generationConfig.responseSchema"),
    ({"contents": [USER], "generationConfig": {"responseJsonSchema": 3}}, "generationConfig.responseJsonSchema"),
    ({"contents": [USER], "toolConfig": {"functionCallingConfig": {"mode": "SOMETIMES"}}},
     "toolConfig.functionCallingConfig.mode"),
    ({"contents": [USER], "tools": {"functionDeclarations": []}}, "tools"),
    ({"contents": [USER], "tools": [{"functionDeclarations": [{"description": "no name"}]}]},
     "tools[0].functionDeclarations[0].name"),
    ({"contents": [USER], "systemInstruction": {"parts": [{"inlineData": {"mimeType": "image/png", "data": "x"}}]}},
     "systemInstruction.parts[0]"),
    ([1, 2], "body"),
    ({"contents": [USER], "generationConfig": {"temperature": 2.5}}, "generationConfig.temperature"),
    ({"contents": [USER], "generationConfig": {"topP": 1.1}}, "generationConfig.topP"),
    ({"contents": [USER], "generationConfig": {"maxOutputTokens": 0}}, "generationConfig.maxOutputTokens"),
    ({"contents": [USER], "generation_config": {"candidate_count": 0}}, "generationConfig.candidateCount"),
    ({"contents": [USER], "generationConfig": {"candidateCount": 200}}, "generationConfig.candidateCount"),
    ({"contents": [USER], "generationConfig": {"topK": -1}}, "generationConfig.topK"),
    ({"contents": [USER], "generationConfig": {"presencePenalty": 3}}, "generationConfig.presencePenalty"),
    ({"contents": [USER], "generationConfig": {"frequencyPenalty": -2.5}}, "generationConfig.frequencyPenalty"),
]


@pytest.mark.parametrize(("raw", "param"), BAD_REQUESTS)
def test_bad_requests_name_the_field(raw: Any, param: str | None) -> None:
    with pytest.raises(FormatError) as exc:
        g.parse_request(body(raw), "gemini-2.5-flash")
    assert exc.value.param == param
    assert exc.value.status == 400
    assert exc.value.message


@pytest.mark.parametrize("raw", [b"", b"{", b"not json", b"\xff\xfe"])
def test_a_body_that_is_not_json_is_rejected(raw: bytes) -> None:
    with pytest.raises(FormatError, match="not valid JSON") as exc:
        g.parse_request(raw, "m")
    assert exc.value.status == 400


def test_a_missing_model_is_rejected() -> None:
    with pytest.raises(FormatError) as exc:
        g.parse_request(body({"contents": [USER]}))
    assert exc.value.param == "model"


# ==================================================================================================
# Inbound: render_response, StreamRenderer


TOOL_RESPONSE = Response(
    id="resp_1", model="claude-sonnet-4-5",
    message=Message(role="assistant", content=[ReasoningPart(text="Need the weather.", signature="c2lnbmF0dXJl", signature_provider="gemini"),
                                               TextPart(text="Checking.")],
                    tool_calls=[ToolCall(id="toolu_01", name="get_weather", arguments='{"city": "Paris"}'),
                                ToolCall(id="toolu_02", name="get_time", arguments="")]),
    finish_reason="tool_calls",
    usage=Usage(prompt_tokens=100, completion_tokens=50, total_tokens=150, cached_tokens=40, reasoning_tokens=20),
)


def test_render_response_tool_calls_and_thinking() -> None:
    out = orjson.loads(g.render_response(TOOL_RESPONSE))
    cand = out["candidates"][0]
    assert cand["finishReason"] == "STOP"  # Gemini says STOP for tool calls
    assert cand["content"]["role"] == "model"
    assert cand["content"]["parts"] == [
        {"text": "Need the weather.", "thought": True},
        {"text": "Checking."},
        # the signature moves to the first call: Gemini 3 validates it there
        {"functionCall": {"id": "toolu_01", "name": "get_weather", "args": {"city": "Paris"}},
         "thoughtSignature": "c2lnbmF0dXJl"},
        {"functionCall": {"id": "toolu_02", "name": "get_time", "args": {}}},
    ]
    assert out["usageMetadata"] == {"promptTokenCount": 100, "candidatesTokenCount": 30, "thoughtsTokenCount": 20,
                                    "cachedContentTokenCount": 40, "totalTokenCount": 150}
    assert out["modelVersion"] == "claude-sonnet-4-5" and out["responseId"] == "resp_1"


@pytest.mark.parametrize(("reason", "gemini"), [("stop", "STOP"), ("length", "MAX_TOKENS"),
                                                ("content_filter", "SAFETY"), ("tool_calls", "STOP"),
                                                (None, "STOP")])  # named none upstream: a whole answer still ends
def test_render_response_finish_reasons(reason: str, gemini: str) -> None:
    resp = Response(id="r", model="m", message=Message(role="assistant", content=[TextPart(text="x")]),
                    finish_reason=reason)  # type: ignore[arg-type]
    assert orjson.loads(g.render_response(resp))["candidates"][0]["finishReason"] == gemini


def test_render_response_keeps_a_thought_signature_on_the_thought() -> None:
    resp = Response(id="r", model="m", message=Message(role="assistant", content=[
        ReasoningPart(text="hmm", signature="U0lH", signature_provider="gemini"), TextPart(text="42")]))
    parts = orjson.loads(g.render_response(resp))["candidates"][0]["content"]["parts"]
    assert parts == [{"text": "hmm", "thought": True, "thoughtSignature": "U0lH"}, {"text": "42"}]


ANTHROPIC_TURN = Message(role="assistant", content=[ReasoningPart(text="Need the weather.", signature="EqQBCkgIAR==",
                                                                  signature_provider="anthropic"),
                                                    TextPart(text="Checking.")],
                         tool_calls=[ToolCall(id="toolu_01", name="get_weather", arguments='{"city":"Paris"}')])


def test_another_providers_signature_round_trips_through_a_gemini_client() -> None:
    """Anthropic's signature, shown to a Gemini client, comes back to the same thinking, unchanged."""
    resp = Response(id="r", model="claude", message=ANTHROPIC_TURN, finish_reason="tool_calls")
    parts = orjson.loads(g.render_response(resp))["candidates"][0]["content"]["parts"]
    wrapped = parts[0]["thoughtSignature"]
    assert parts[0]["text"] == "Need the weather." and "thoughtSignature" not in parts[2]  # not moved to the call
    assert base64.b64decode(wrapped).endswith(b"EqQBCkgIAR==")  # valid base64: the SDK decodes it as bytes
    urlsafe = base64.urlsafe_b64encode(base64.b64decode(wrapped)).decode()  # as google-genai sends it back
    parts[0]["thoughtSignature"] = urlsafe
    replay = g.parse_request(_history(USER, {"role": "model", "parts": parts}), "m")
    assert replay.messages[1] == ANTHROPIC_TURN


def test_another_providers_signature_is_never_sent_to_gemini() -> None:
    req = Request(model="x", messages=[Message(role="user", content=[TextPart(text="weather?")]), ANTHROPIC_TURN])
    parts = orjson.loads(g.build_request(req, "gemini-3-pro-preview"))["contents"][1]["parts"]
    assert parts == [{"text": "Need the weather.", "thought": True}, {"text": "Checking."},
                     {"functionCall": {"id": "toolu_01", "name": "get_weather", "args": {"city": "Paris"}},
                      "thoughtSignature": g.SKIP_VALIDATOR_SIGNATURE}]


def test_malformed_arguments_are_wrapped_not_dropped() -> None:
    resp = TOOL_RESPONSE.model_copy(deep=True)
    resp.message.tool_calls[0].arguments = '{"city": "Par'
    fc = orjson.loads(g.render_response(resp))["candidates"][0]["content"]["parts"][2]["functionCall"]
    assert fc["args"] == {"_raw_arguments": '{"city": "Par'}


def stream_of(resp: Response, pieces: int = 3) -> list[StreamEvent]:
    """A Response as the events another family's parser would produce: text in pieces, the signature
    after the thinking (Anthropic's order), argument fragments."""
    def split(s: str) -> list[str]:
        n = max(1, len(s) // pieces)
        return [s[i:i + n] for i in range(0, len(s), n)] or [""]

    evs: list[StreamEvent] = [StreamStart(id=resp.id, model=resp.model)]
    for p in resp.message.content:
        if isinstance(p, ReasoningPart):
            evs += [ReasoningDelta(text=t) for t in split(p.text) if t]
            if p.signature:
                evs.append(ReasoningDelta(signature=p.signature, signature_provider=p.signature_provider))
        elif isinstance(p, TextPart):
            evs += [TextDelta(text=t) for t in split(p.text)]
    for i, c in enumerate(resp.message.tool_calls):
        frags = split(c.arguments)
        evs.append(ToolCallDelta(index=i, id=c.id, name=c.name, arguments=frags[0]))
        evs += [ToolCallDelta(index=i, arguments=f) for f in frags[1:]]
    if resp.finish_reason:
        evs.append(FinishEvent(reason=resp.finish_reason))
    if resp.usage:
        evs.append(UsageEvent(usage=resp.usage))
    return evs


def render_stream(events: list[StreamEvent], req: Request | None = None) -> list[bytes]:
    r = g.StreamRenderer(req or Request(model="client-model", messages=[]))
    return [r.render(ev) for ev in events] + [r.finish()]


def test_stream_renderer_parallel_calls_with_interleaved_fragments() -> None:
    # OpenAI-shaped streams announce every parallel call, then interleave their arguments.
    events: list[StreamEvent] = [
        StreamStart(id="x", model="m"),
        ToolCallDelta(index=0, id="call_a", name="get_weather", arguments=""),
        ToolCallDelta(index=1, id="call_b", name="get_time", arguments=""),
        ToolCallDelta(index=0, arguments='{"ci'), ToolCallDelta(index=1, arguments='{"tz":'),
        ToolCallDelta(index=0, arguments='ty":"Paris"}'), ToolCallDelta(index=1, arguments='"UTC"}'),
        FinishEvent(reason="tool_calls"),
    ]
    chunks = sse_payloads(b"".join(render_stream(events)))
    calls = [p["functionCall"] for c in chunks for p in c["candidates"][0]["content"]["parts"] if "functionCall" in p]
    assert calls == [{"id": "call_a", "name": "get_weather", "args": {"city": "Paris"}},
                     {"id": "call_b", "name": "get_time", "args": {"tz": "UTC"}}]


def test_stream_renderer_framing_and_whole_function_calls() -> None:
    events = stream_of(TOOL_RESPONSE)
    outs = render_stream(events)
    data = b"".join(outs)
    assert b"[DONE]" not in data and b"event:" not in data
    chunks = sse_payloads(data)

    # text and thinking go out as they arrive; a call's fragments are held until the call is whole
    for ev, out in zip(events, outs, strict=False):
        if isinstance(ev, TextDelta | ReasoningDelta) and ev.text:
            assert out
        if isinstance(ev, ToolCallDelta) and ev.index == 0:
            assert out == b""
    calls = [p["functionCall"] for c in chunks for p in c["candidates"][0]["content"]["parts"] if "functionCall" in p]
    assert calls == [
        {"id": "toolu_01", "name": "get_weather", "args": {"city": "Paris"}},
        {"id": "toolu_02", "name": "get_time", "args": {}},
    ]
    # usage and the finish reason only on the last chunk
    assert all("usageMetadata" not in c and "finishReason" not in c["candidates"][0] for c in chunks[:-1])
    last = chunks[-1]
    assert last["candidates"][0]["finishReason"] == "STOP"
    assert last["usageMetadata"]["candidatesTokenCount"] == 30
    assert all(c["responseId"] == "resp_1" and c["modelVersion"] == "claude-sonnet-4-5" for c in chunks)


def test_stream_renderer_puts_gemini_signatures_back_on_their_part() -> None:
    """Our parser emits a Gemini signature just before the part that carried it; the renderer puts
    it on that part again."""
    raw = fixture("gemini-think.stream.sse")
    parts = [p for c in sse_payloads(b"".join(render_stream(feed_all(raw)))) for p in c["candidates"][0]["content"]["parts"]]
    original = [p for c in sse_payloads(raw) for p in c["candidates"][0]["content"]["parts"]]
    assert parts == original


def test_stream_renderer_keeps_other_signatures_beside_their_thinking() -> None:
    evs: list[StreamEvent] = [StreamStart(id="r", model="m"), ReasoningDelta(text="a"),
                              ReasoningDelta(signature="S1", signature_provider="anthropic"),
                              ReasoningDelta(text="b"), ReasoningDelta(signature="S2", signature_provider="anthropic"),
                              TextDelta(text="x"),
                              FinishEvent(reason="stop")]
    parts = [p for c in sse_payloads(b"".join(render_stream(evs))) for p in c["candidates"][0]["content"]["parts"]]
    assert [(p["text"], p.get("thought"), "thoughtSignature" in p) for p in parts] == [
        ("a", True, False), ("", True, True), ("b", True, False), ("", True, True), ("x", None, False), ("", None, False)]
    # and a Gemini client replaying those parts gives each signature to its own thinking
    replay = g.parse_request(_history(USER, {"role": "model", "parts": parts[:-1]}), "m")
    assert replay.messages[1].content == [ReasoningPart(text="a", signature="S1", signature_provider="anthropic"),
                                          ReasoningPart(text="b", signature="S2", signature_provider="anthropic"),
                                          TextPart(text="x")]


def test_stream_renderer_error_ends_the_stream() -> None:
    r = g.StreamRenderer(Request(model="m", messages=[]))
    assert r.render(StreamStart(id="r", model="m")) == b""
    first = r.render(TextDelta(text="par"))
    assert r.render(ToolCallDelta(index=0, id="c", name="f", arguments='{"a"')) == b""
    err = Error(kind=ErrorKind.OVERLOADED, status=529, message="Overloaded")
    out = r.error(err)
    assert sse_payloads(first)[0]["candidates"][0]["content"]["parts"] == [{"text": "par"}]
    assert sse_payloads(out) == [{"error": {"code": 503, "message": "Overloaded", "status": "UNAVAILABLE"}}]
    assert out.startswith(b'data: {"error":')  # google-genai only recognises an error chunk by this prefix
    assert r.render(TextDelta(text="more")) == b"" and r.finish() == b""
    # an ErrorEvent from upstream does the same
    r2 = g.StreamRenderer(Request(model="m", messages=[]))
    assert sse_payloads(r2.render(ErrorEvent(error=err)))[0]["error"]["status"] == "UNAVAILABLE"


# ==================================================================================================
# Outbound: parse_response, StreamParser


@pytest.mark.parametrize("name", PAIRS)
def test_stream_aggregates_to_the_non_stream_response(name: str) -> None:
    whole = g.parse_response(fixture(f"gemini-{name}.response.json"))
    events = feed_all(fixture(f"gemini-{name}.stream.sse"))
    assert aggregate(events) == whole
    assert isinstance(events[0], StreamStart)
    kinds = [type(e) for e in events]
    assert kinds.count(FinishEvent) == 1 and kinds[-2:] == [FinishEvent, UsageEvent]


@pytest.mark.parametrize("name", PAIRS)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_byte_split_gives_the_same_events(name: str, data: st.DataObject) -> None:
    raw = fixture(f"gemini-{name}.stream.sse")
    cuts = data.draw(st.lists(st.integers(0, len(raw)), max_size=12))
    assert feed_all(raw, cuts) == feed_all(raw)


def test_parse_response_fixture_values() -> None:
    think = g.parse_response(fixture("gemini-think.response.json"))
    assert think.id == "2zR8aYTnEvahz7IPmq6EoQ0" and think.model == "gemini-2.5-pro"
    reasoning, answer = think.message.content
    assert isinstance(reasoning, ReasoningPart) and reasoning.text.startswith("**Defining the Goal**")
    assert reasoning.signature and reasoning.signature.startswith("CiIBcsjaf")
    assert reasoning.signature_provider == "gemini"
    assert isinstance(answer, TextPart) and answer.text.endswith("Cross when clear.")
    assert think.finish_reason == "stop"
    # completion includes the thoughts; Gemini's candidatesTokenCount does not
    assert think.usage == Usage(prompt_tokens=34, completion_tokens=790, total_tokens=824, reasoning_tokens=759)

    tool = g.parse_response(fixture("gemini-tool.response.json"))
    assert tool.finish_reason == "tool_calls"  # Gemini said STOP
    assert tool.message.tool_calls == [
        ToolCall(id="call_SVV8aY6uBqe6qtsPmJbEuAM_0", name="get_weather", arguments='{"city":"Paris","unit":"celsius"}'),
        ToolCall(id="call_SVV8aY6uBqe6qtsPmJbEuAM_1", name="get_time", arguments='{"timezone":"Europe/Paris"}'),
    ]
    assert tool.message.content == [ReasoningPart(signature_provider="gemini", signature=orjson.loads(fixture("gemini-tool.response.json"))
                                                  ["candidates"][0]["content"]["parts"][0]["thoughtSignature"])]

    cached = g.parse_response(fixture("gemini-cached.response.json"))
    assert cached.usage is not None and cached.usage.cached_tokens == 2048
    assert cached.message.content[1] == TextPart(text="The capital of Mexico is Mexico City.")

    blocked = g.parse_response(fixture("gemini-blocked.response.json"))
    assert blocked.finish_reason == "content_filter" and blocked.message.content == []
    assert blocked.usage == Usage(prompt_tokens=12, total_tokens=12)


def test_a_blocked_prompt_reaches_a_gemini_client_as_blocked_streamed_or_not() -> None:
    """A prompt Gemini blocks has no candidate, only promptFeedback.blockReason: other families see a
    content_filter finish; a Gemini client gets the promptFeedback back, not an invented candidate,
    whether the answer is rendered whole or streamed (the SDK reads prompt_feedback.block_reason)."""
    raw = fixture("gemini-blocked.response.json")
    blocked = g.parse_response(raw)
    assert blocked.finish_reason == "content_filter"
    for out in (orjson.loads(g.render_response(blocked)),
                *(json.loads(frame.removeprefix(b"data: ")) for frame in b"".join(
                    render_stream(feed_all(b"data: " + raw.replace(b"\n", b"") + b"\r\n\r\n"))).split(b"\r\n\r\n")
                  if frame)):
        assert "candidates" not in out and out["promptFeedback"] == {"blockReason": "SAFETY"}, out
        assert out["usageMetadata"]["promptTokenCount"] == 12
    # another family's content filter is still a candidate that ends with SAFETY
    other = blocked.model_copy(update={"finish_native": None})
    assert orjson.loads(g.render_response(other))["candidates"][0]["finishReason"] == "SAFETY"


def test_a_tool_response_replays_to_gemini_with_its_signature() -> None:
    """A Gemini 3 tool turn → an OpenAI-style client → back to Gemini: the first call keeps its signature."""
    tool = g.parse_response(fixture("gemini-tool.response.json"))
    sig = orjson.loads(fixture("gemini-tool.response.json"))["candidates"][0]["content"]["parts"][0]["thoughtSignature"]
    req = Request(model="x", messages=[
        Message(role="user", content=[TextPart(text="weather and time in Paris")]),
        tool.message,
        Message(role="tool", content=[ToolResultPart(tool_call_id=tool.message.tool_calls[0].id,
                                                     content=[TextPart(text="18C")])]),
        Message(role="tool", content=[ToolResultPart(tool_call_id=tool.message.tool_calls[1].id,
                                                     content=[TextPart(text='{"time": "14:05"}')])]),
    ])
    sent = orjson.loads(g.build_request(req, "gemini-3-pro-preview"))
    model, results = sent["contents"][1], sent["contents"][2]
    assert model["parts"][0]["thoughtSignature"] == sig and "thoughtSignature" not in model["parts"][1]
    assert results == {"role": "user", "parts": [  # consecutive tool messages: one user content
        {"functionResponse": {"id": "call_SVV8aY6uBqe6qtsPmJbEuAM_0", "name": "get_weather", "response": {"result": "18C"}}},
        {"functionResponse": {"id": "call_SVV8aY6uBqe6qtsPmJbEuAM_1", "name": "get_time", "response": {"time": "14:05"}}},
    ]}


def test_stream_and_non_stream_generate_the_same_ids() -> None:
    events = feed_all(fixture("gemini-tool.stream.sse"))
    ids = [e.id for e in events if isinstance(e, ToolCallDelta)]
    assert ids == [c.id for c in g.parse_response(fixture("gemini-tool.response.json")).message.tool_calls]
    assert all(isinstance(e, ToolCallDelta) is False or e.arguments.startswith("{") for e in events)


def test_a_stream_without_finish_reason_is_incomplete() -> None:
    raw = fixture("gemini-stop.stream.sse")
    cut = raw.rindex(b"data: ")
    parser = g.StreamParser()
    events = parser.feed(raw[:cut])
    assert any(isinstance(e, TextDelta) for e in events)
    with pytest.raises(FormatError, match="finishReason") as exc:
        parser.close()
    assert exc.value.status == 502


def test_the_last_chunk_without_its_blank_line_still_counts() -> None:
    raw = fixture("gemini-stop.stream.sse").rstrip(b"\r\n")
    assert aggregate(feed_all(raw)) == g.parse_response(fixture("gemini-stop.response.json"))


def test_an_error_chunk_becomes_an_error_event() -> None:
    raw = fixture("gemini-stop.stream.sse").split(b"\r\n\r\n")[0] + b"\r\n\r\n"
    raw += b"data: " + orjson.dumps(orjson.loads(fixture("gemini-error-429.json"))) + b"\r\n\r\n"
    events = feed_all(raw)  # close() accepts a stream that ended with an error
    err = events[-1]
    assert isinstance(err, ErrorEvent)
    assert (err.error.kind, err.error.status, err.error.retry_after, err.error.code) == \
        (ErrorKind.RATE_LIMITED, 429, 27.0, "RESOURCE_EXHAUSTED")


def test_a_stream_that_turns_malformed_raises() -> None:
    raw = fixture("gemini-stop.stream.sse").split(b"\r\n\r\n")[0] + b"\r\n\r\ndata: {\"candidates\": [\r\n\r\n"
    parser = g.StreamParser()
    with pytest.raises(FormatError) as exc:
        parser.feed(raw)
    assert exc.value.status == 502


@pytest.mark.parametrize("raw", [b"<html>502</html>", b"[]", b'{"error": {"code": 500, "message": "boom"}}',
                                 b'{"modelVersion": "m"}', b'{"candidates": [{"content": {"parts": [5]}}]}'])
def test_parse_response_rejects_malformed_bodies(raw: bytes) -> None:
    with pytest.raises(FormatError) as exc:
        g.parse_response(raw)
    assert exc.value.status == 502


def test_code_execution_parts_reach_other_clients_as_text() -> None:
    raw = body({"candidates": [{"content": {"role": "model", "parts": [
        {"executableCode": {"language": "PYTHON", "code": "print(2+2)"}},
        {"codeExecutionResult": {"outcome": "OUTCOME_OK", "output": "4\n"}}, {"text": "It is 4."}]},
        "finishReason": "STOP"}], "responseId": "r"})
    text = g.parse_response(raw).message.text()
    assert "print(2+2)" in text and "4\n" in text and text.endswith("It is 4.")


# ==================================================================================================
# Outbound: build_request, request_path, auth_headers


def test_request_path_and_auth() -> None:
    assert g.request_path("gemini-2.5-flash", False) == "/models/gemini-2.5-flash:generateContent"
    assert g.request_path("models/gemini-2.5-flash", True) == "/models/gemini-2.5-flash:streamGenerateContent?alt=sse"
    assert g.auth_headers("k") == {"x-goog-api-key": "k"}


def openai_style_request() -> Request:
    return Request(
        model="gpt-4o", stream=True,
        messages=[
            Message(role="system", content=[TextPart(text="Be brief.")]),
            Message(role="user", content=[
                TextPart(text="What is in these?"),
                ImagePart(url="data:image/png;base64,iVBORw0KGgo="),
                ImagePart(url="https://example.com/cat.webp", detail="high"),
                ImagePart(data="/9j/4AAQ"),
            ]),
            Message(role="developer", content=[TextPart(text="Use tools.")]),
            Message(role="assistant", content=[ReasoningPart(text="plan")],
                    tool_calls=[ToolCall(id="call_a", name="lookup", arguments='{"q":"cat"}'),
                                ToolCall(id="call_b", name="lookup", arguments='{"q":"dog"}')]),
            Message(role="tool", content=[ToolResultPart(tool_call_id="call_a", content=[TextPart(text="a cat")])]),
            Message(role="tool", content=[ToolResultPart(tool_call_id="call_b", is_error=True,
                                                         content=[TextPart(text="no dog")])]),
            Message(role="user", content=[TextPart(text="thanks")]),
        ],
        tools=[Tool(name="lookup", description="Look up", parameters={"type": "object", "properties": {"q": {"type": "string"}}},
                    strict=True)],
        tool_choice=ToolChoice(mode="required"),
        response_format=ResponseFormat(type="json_schema", name="out", schema={"type": "object"}),
        sampling=Sampling(temperature=0.2, top_p=0.9, max_tokens=300, stop=["\n\n"], seed=1, n=1),
        reasoning_effort="low",
        extra_body={"logprobs": True, "safety_settings": [{"category": "HARM_CATEGORY_HATE_SPEECH", "threshold": "OFF"}]},
    )


def test_build_request_maps_an_openai_conversation() -> None:
    sent = orjson.loads(g.build_request(openai_style_request(), "gemini-2.5-flash"))
    # every system/developer message joins the one systemInstruction (interleaving is lossy)
    assert sent["systemInstruction"] == {"parts": [{"text": "Be brief."}, {"text": "Use tools."}]}
    user, model, results, thanks = sent["contents"]
    assert user == {"role": "user", "parts": [
        {"text": "What is in these?"},
        {"inlineData": {"mimeType": "image/png", "data": "iVBORw0KGgo="}},
        {"fileData": {"mimeType": "image/webp", "fileUri": "https://example.com/cat.webp"}},
        {"inlineData": {"mimeType": "image/jpeg", "data": "/9j/4AAQ"}},
    ]}
    assert model == {"role": "model", "parts": [
        {"text": "plan", "thought": True},
        # history from another provider: Google's documented placeholder keeps Gemini 3 from a 400
        {"functionCall": {"id": "call_a", "name": "lookup", "args": {"q": "cat"}},
         "thoughtSignature": g.SKIP_VALIDATOR_SIGNATURE},
        {"functionCall": {"id": "call_b", "name": "lookup", "args": {"q": "dog"}}},
    ]}
    assert base64.b64decode(g.SKIP_VALIDATOR_SIGNATURE) == b"skip_thought_signature_validator"
    assert results == {"role": "user", "parts": [
        {"functionResponse": {"id": "call_a", "name": "lookup", "response": {"result": "a cat"}}},
        {"functionResponse": {"id": "call_b", "name": "lookup", "response": {"error": "no dog"}}},
    ]}
    assert thanks == {"role": "user", "parts": [{"text": "thanks"}]}
    assert sent["tools"] == [{"functionDeclarations": [
        {"name": "lookup", "description": "Look up",
         "parametersJsonSchema": {"type": "object", "properties": {"q": {"type": "string"}}}}]}]
    assert sent["toolConfig"] == {"functionCallingConfig": {"mode": "ANY"}}
    assert sent["generationConfig"] == {
        "temperature": 0.2, "topP": 0.9, "candidateCount": 1, "maxOutputTokens": 300, "stopSequences": ["\n\n"],
        "seed": 1, "responseMimeType": "application/json", "responseJsonSchema": {"type": "object"},
        "thinkingConfig": {"thinkingBudget": 1024, "includeThoughts": True},  # 2.5 models take budgets
    }
    # extra_body passes only from a Gemini client (another family's would only earn a 400), and then
    # only the fields Gemini knows
    assert "safetySettings" not in sent and "logprobs" not in sent
    own = orjson.loads(g.build_request(openai_style_request().model_copy(update={"source": "gemini"}),
                                       "gemini-2.5-flash"))
    assert own["safetySettings"] == [{"category": "HARM_CATEGORY_HATE_SPEECH", "threshold": "OFF"}]
    assert "logprobs" not in own


@pytest.mark.parametrize(("model", "effort", "thinking"), [
    ("gemini-3-pro-preview", "high", {"thinkingLevel": "HIGH", "includeThoughts": True}),
    ("gemini-3-flash", "none", {"thinkingLevel": "MINIMAL", "includeThoughts": True}),
    ("gemini-2.5-pro", "high", {"thinkingBudget": 24576, "includeThoughts": True}),
    ("gemini-2.0-flash-thinking", "none", {"thinkingBudget": 0}),
    # "max" (Anthropic's and OpenAI's top word) is no Gemini level: the top one is XHIGH
    ("gemini-3-pro-preview", "max", {"thinkingLevel": "XHIGH", "includeThoughts": True}),
    ("gemini-3-pro-preview", "xhigh", {"thinkingLevel": "XHIGH", "includeThoughts": True}),
    ("gemini-2.5-pro", "max", {"thinkingBudget": 32768, "includeThoughts": True}),
])
def test_reasoning_effort_by_model_generation(model: str, effort: str, thinking: dict[str, Any]) -> None:
    req = Request(model="x", messages=[Message(role="user", content=[TextPart(text="hi")])], reasoning_effort=effort)
    assert orjson.loads(g.build_request(req, model))["generationConfig"]["thinkingConfig"] == thinking


@pytest.mark.parametrize(("choice", "config"), [
    (ToolChoice(mode="auto"), {"mode": "AUTO"}), (ToolChoice(mode="none"), {"mode": "NONE"}),
    (ToolChoice(mode="required"), {"mode": "ANY"}),
    (ToolChoice(mode="function", name="f"), {"mode": "ANY", "allowedFunctionNames": ["f"]}),
])
def test_build_tool_choice(choice: ToolChoice, config: dict[str, Any]) -> None:
    req = Request(model="x", messages=[Message(role="user", content=[TextPart(text="hi")])], tool_choice=choice)
    assert orjson.loads(g.build_request(req, "m"))["toolConfig"] == {"functionCallingConfig": config}


def test_build_request_refuses_what_gemini_cannot_carry() -> None:
    hi = Message(role="user", content=[TextPart(text="hi")])
    orphan = Request(model="x", messages=[hi, Message(role="tool", content=[
        ToolResultPart(tool_call_id="nope", content=[TextPart(text="?")])])])
    with pytest.raises(FormatError) as exc:
        g.build_request(orphan, "m")
    assert exc.value.param == "messages[1].tool_call_id"

    foreign = Request(model="x", messages=[hi], tools=[
        Tool(type="native", name="web_search", provider="anthropic", native={"type": "web_search_20250305"})])
    with pytest.raises(FormatError, match="anthropic native tool"):
        g.build_request(foreign, "m")

    native = Request(model="x", messages=[hi], tools=[
        Tool(type="native", name="googleSearch", provider="gemini", native={"googleSearch": {}})])
    assert orjson.loads(g.build_request(native, "m"))["tools"] == [{"googleSearch": {}}]

    with pytest.raises(FormatError, match="at least one"):
        g.build_request(Request(model="x", messages=[Message(role="system", content=[TextPart(text="s")])]), "m")


def test_a_tool_result_that_is_a_json_object_travels_as_an_object() -> None:
    req = Request(model="x", messages=[
        Message(role="user", content=[TextPart(text="hi")]),
        Message(role="assistant", tool_calls=[ToolCall(id="c", name="f", arguments="{}")]),
        Message(role="user", content=[ToolResultPart(tool_call_id="c", content=[
            TextPart(text='{"temp": 20}'), ImagePart(media_type="image/png", data="iVBORw0KGgo=")]),
            TextPart(text="and now?")]),  # Anthropic puts results and text in one user message
    ])
    sent = orjson.loads(g.build_request(req, "m"))
    assert sent["contents"][2] == {"role": "user", "parts": [
        {"functionResponse": {"id": "c", "name": "f", "response": {"temp": 20},
                              "parts": [{"inlineData": {"mimeType": "image/png", "data": "iVBORw0KGgo="}}]}},
        {"text": "and now?"}]}


# ==================================================================================================
# Errors


@pytest.mark.parametrize(("kind", "status", "name"), [
    (ErrorKind.INVALID_REQUEST, 400, "INVALID_ARGUMENT"), (ErrorKind.AUTHENTICATION, 401, "UNAUTHENTICATED"),
    (ErrorKind.PERMISSION, 403, "PERMISSION_DENIED"), (ErrorKind.NOT_FOUND, 404, "NOT_FOUND"),
    (ErrorKind.RATE_LIMITED, 429, "RESOURCE_EXHAUSTED"), (ErrorKind.OVERLOADED, 503, "UNAVAILABLE"),
    (ErrorKind.SERVER_ERROR, 500, "INTERNAL"), (ErrorKind.TIMEOUT, 504, "DEADLINE_EXCEEDED"),
    (ErrorKind.CONNECTION, 502, "UNAVAILABLE"), (ErrorKind.UNAVAILABLE, 503, "UNAVAILABLE"),
])
def test_error_shape_per_kind(kind: ErrorKind, status: int, name: str) -> None:
    err = Error(kind=kind, status=599, message="msg")
    assert g.error_status(err) == status
    assert orjson.loads(g.render_error(err)) == {"error": {"code": status, "message": "msg", "status": name}}
    assert g.error_headers(err) == {}


def test_rate_limit_error_carries_retry_info() -> None:
    err = Error(kind=ErrorKind.RATE_LIMITED, status=429, message="slow down", retry_after=27)
    assert orjson.loads(g.render_error(err))["error"]["details"] == [
        {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "27s"}]
    assert g.error_headers(err) == {"retry-after": "27"}
    assert orjson.loads(g.render_error(err.model_copy(update={"retry_after": 1.5})))["error"]["details"][0][
        "retryDelay"] == "1.5s"
    assert g.error_headers(err.model_copy(update={"retry_after": 1.5})) == {"retry-after": "2"}


def test_overloaded_anthropic_529_becomes_503_unavailable() -> None:
    err = Error(kind=ErrorKind.OVERLOADED, status=529, message="Overloaded", code="overloaded_error")
    assert g.error_status(err) == 503
    assert orjson.loads(g.render_error(err))["error"]["status"] == "UNAVAILABLE"


def test_a_google_status_name_from_upstream_is_kept() -> None:
    err = g.parse_error(400, {}, body({"error": {"code": 400, "message": "m", "status": "FAILED_PRECONDITION"}}))
    assert orjson.loads(g.render_error(err))["error"]["status"] == "FAILED_PRECONDITION"


def test_parse_error_fixtures() -> None:
    rate = g.parse_error(429, {}, fixture("gemini-error-429.json"))
    assert (rate.kind, rate.status, rate.retry_after, rate.code) == (ErrorKind.RATE_LIMITED, 429, 27.0, "RESOURCE_EXHAUSTED")
    assert rate.message.startswith("You exceeded your current quota")

    key = g.parse_error(400, {}, fixture("gemini-error-400-key.json"))
    assert key.kind == ErrorKind.AUTHENTICATION  # Gemini answers a bad key with 400 INVALID_ARGUMENT

    busy = g.parse_error(503, {}, fixture("gemini-error-503.json"))
    assert (busy.kind, busy.code) == (ErrorKind.OVERLOADED, "UNAVAILABLE")


def test_parse_error_without_a_google_body() -> None:
    html = g.parse_error(502, {"Retry-After": "3"}, b"<html>Bad Gateway</html>")
    assert (html.kind, html.status, html.message, html.retry_after) == \
        (ErrorKind.SERVER_ERROR, 502, "Upstream error: HTTP 502 Bad Gateway.", 3.0)
    empty = g.parse_error(504, {}, b"")
    assert (empty.kind, empty.message) == (ErrorKind.TIMEOUT, "Upstream error: HTTP 504 Gateway Timeout.")
    listed = g.parse_error(429, {}, b"[" + fixture("gemini-error-429.json") + b"]")
    assert listed.retry_after == 27.0


# ==================================================================================================
# Properties: unified → Gemini → unified is the identity on what Gemini can carry

ident = st.text(alphabet=string.ascii_letters + string.digits + "_-", min_size=1, max_size=12)
fname = st.from_regex(r"[a-z][a-z0-9_]{0,10}", fullmatch=True)
text = st.text(min_size=1, max_size=40)
b64 = st.binary(min_size=1, max_size=24).map(lambda b: base64.b64encode(b).decode())
gemini_sig = b64.map(lambda s: (s, "gemini"))
# Gemini's own, and other providers' (opaque strings): (signature, signature_provider)
sig = gemini_sig | (b64 | text).flatmap(lambda s: st.sampled_from([(s, "anthropic"), (s, "openai_responses")]))
json_value = st.recursive(
    st.none() | st.booleans() | st.integers(-(2 ** 53), 2 ** 53) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8)
arguments = st.dictionaries(st.text(max_size=8), json_value, max_size=4).map(lambda d: orjson.dumps(d).decode())
tool_calls = st.lists(st.builds(ToolCall, id=ident.map("call_".__add__), name=fname, arguments=arguments),
                      max_size=3, unique_by=lambda c: c.id)
counts = st.integers(0, 100_000)


@st.composite
def usages(draw: st.DrawFn) -> Usage | None:
    if draw(st.booleans()):
        return None
    prompt, reasoning, answer = draw(counts), draw(counts), draw(counts)
    return Usage(prompt_tokens=prompt, completion_tokens=reasoning + answer, reasoning_tokens=reasoning,
                 cached_tokens=draw(st.integers(0, prompt))).finalised()


@st.composite
def responses(draw: st.DrawFn) -> Response:
    """Responses in the StreamAggregator's shape: one reasoning part first, then one text part."""
    calls = draw(tool_calls)
    content: list[Any] = []
    thought, signature = draw(st.none() | text), draw(st.none() | sig)
    if thought or signature:
        s, provider = signature or (None, None)
        content.append(ReasoningPart(text=thought or "", signature=s, signature_provider=provider))
    if (answer := draw(st.none() | text)) is not None:
        content.append(TextPart(text=answer))
    finishes = ["tool_calls", "length", "content_filter"] if calls else ["stop", "length", "content_filter"]
    return Response(id=draw(ident), model=draw(ident), message=Message(role="assistant", content=content, tool_calls=calls),
                    finish_reason=draw(st.sampled_from(finishes)), usage=draw(usages()))


@settings(max_examples=200, deadline=None)
@given(resp=responses())
def test_property_render_then_parse_response_is_identity(resp: Response) -> None:
    assert without_native(g.parse_response(g.render_response(resp))) == resp


@settings(max_examples=150, deadline=None)
@given(resp=responses(), pieces=st.integers(1, 5), data=st.data())
def test_property_stream_render_then_parse_aggregates_to_the_response(resp: Response, pieces: int,
                                                                      data: st.DataObject) -> None:
    raw = b"".join(render_stream(stream_of(resp, pieces)))
    cuts = data.draw(st.lists(st.integers(0, len(raw)), max_size=10))
    assert without_native(aggregate(feed_all(raw, cuts))) == resp


images = st.one_of(
    st.binary(min_size=1, max_size=12).map(lambda b: ImagePart(media_type="image/png", data=base64.b64encode(b).decode())),
    ident.map(lambda s: ImagePart(media_type="image/jpeg", url=f"https://example.com/{s}.jpg")),
)
results_text = text.filter(lambda t: not t.lstrip().startswith("{")) | st.just("")


@st.composite
def assistant_turn(draw: st.DrawFn, turn: int, exact: bool) -> list[Message]:
    calls = [c.model_copy(update={"id": f"t{turn}_{c.id}"}) for c in draw(tool_calls)]
    thought, answer = draw(st.none() | text), draw(st.none() | text)
    # exact: only Gemini's own signatures travel to Gemini; and a tool turn has one and no text besides
    # the calls (other shapes are normalised, which the fixed-point property covers)
    signature = draw(st.none() | (gemini_sig if exact else sig))
    if exact and calls:
        signature, answer = signature or ("U0lH", "gemini"), None
    content: list[Any] = []
    if thought or signature:
        s, provider = signature or (None, None)
        content.append(ReasoningPart(text=thought or "", signature=s, signature_provider=provider))
    if answer:
        content.append(TextPart(text=answer))
    if not content and not calls:
        content.append(TextPart(text="ok"))
    out = [Message(role="assistant", content=content, tool_calls=calls)]
    for c in calls:
        out.append(Message(role="tool", content=[ToolResultPart(
            tool_call_id=c.id, name=c.name, is_error=draw(st.booleans()), content=[TextPart(text=draw(results_text))])]))
    return out


@st.composite
def requests(draw: st.DrawFn, exact: bool = True) -> Request:
    model = draw(st.sampled_from(["gemini-3-pro-preview", "gemini-2.5-flash"]))
    messages: list[Message] = []
    if draw(st.booleans()):
        messages.append(Message(role="system", content=[TextPart(text=t) for t in draw(st.lists(text, min_size=1, max_size=2))]))
    for turn in range(draw(st.integers(1, 3))):
        if not exact and draw(st.booleans()):
            messages.append(Message(role=draw(st.sampled_from(["system", "developer"])), content=[TextPart(text=draw(text))]))
        messages.append(Message(role="user", content=draw(st.lists(text.map(lambda t: TextPart(text=t)) | images,
                                                                   min_size=1, max_size=3))))
        messages += draw(assistant_turn(turn, exact))
    tools = [Tool(name=n, description=draw(st.none() | text),
                  parameters=draw(st.none() | st.just({"type": "object", "properties": {"q": {"type": "string"}}})))
             for n in draw(st.lists(fname, max_size=3, unique=True))]
    if draw(st.booleans()):
        tools.append(Tool(type="native", name="googleSearch", provider="gemini", native={"googleSearch": {}}))
    choices = [None, ToolChoice(mode="auto"), ToolChoice(mode="none"), ToolChoice(mode="required")]
    choices += [ToolChoice(mode="function", name=t.name) for t in tools if t.type == "function"]
    budget = draw(st.none() | st.just(-1) | st.integers(0, 32768))  # -1: the model decides
    effort = draw(st.none() | st.sampled_from(["minimal", "low", "medium", "high"])) \
        if budget is None and model.startswith("gemini-3") else None
    stream = draw(st.booleans())
    return Request(
        model=model, messages=messages, tools=tools, tool_choice=draw(st.sampled_from(choices)),
        response_format=draw(st.sampled_from([None, ResponseFormat(type="json_object"),
                                              ResponseFormat(type="json_schema", schema={"type": "object"})])),
        sampling=Sampling(
            temperature=draw(st.none() | st.floats(0, 2)), top_p=draw(st.none() | st.floats(0, 1)),
            top_k=draw(st.none() | st.integers(1, 100)), max_tokens=draw(st.none() | st.integers(1, 65536)),
            stop=draw(st.none() | st.lists(text, min_size=1, max_size=3)), seed=draw(st.none() | st.integers(0, 2 ** 31)),
            presence_penalty=draw(st.none() | st.floats(-2, 2)), frequency_penalty=draw(st.none() | st.floats(-2, 2)),
            n=draw(st.none() | st.integers(1, 1 if stream else 4))),  # several candidates: not on a stream
        stream=stream, reasoning_budget=budget, reasoning_effort=effort, source="gemini",
    )


@settings(max_examples=80, deadline=None)
@given(req=requests())
def test_property_build_then_parse_request_is_identity(req: Request) -> None:
    parsed = g.parse_request(g.build_request(req, req.model), req.model, req.stream)
    # extra_body carries Gemini-only settings (includeThoughts) back to a Gemini channel
    assert parsed.model_copy(update={"extra_body": {}}) == req


@settings(max_examples=80, deadline=None)
@given(req=requests(exact=False))
def test_property_build_parse_build_is_a_fixed_point(req: Request) -> None:
    first = g.build_request(req, req.model)
    again = g.build_request(g.parse_request(first, req.model, req.stream), req.model)
    assert orjson.loads(again) == orjson.loads(first)


@settings(max_examples=100, deadline=None)
@given(kind=st.sampled_from([k for k in ErrorKind if k not in (ErrorKind.CONNECTION, ErrorKind.UNAVAILABLE)]),
       message=text, retry_after=st.none() | st.integers(0, 3600).map(lambda n: n / 2), param=st.none() | ident)
def test_property_render_then_parse_error(kind: ErrorKind, message: str, retry_after: float | None,
                                          param: str | None) -> None:
    err = Error(kind=kind, status=0, message=message, retry_after=retry_after, param=param)
    back = g.parse_error(g.error_status(err), g.error_headers(err), g.render_error(err))
    assert (back.kind, back.status, back.message, back.retry_after, back.param) == \
        (kind, g.error_status(err), message, retry_after, param)


# ==================================================================================================
# google-genai itself reads what we render


class _Canned(BaseHTTPRequestHandler):
    def do_POST(self) -> None:  # noqa: N802 - the http.server API
        self.rfile.read(int(self.headers.get("content-length") or 0))
        self.server.requests.append(self.path)  # type: ignore[attr-defined]
        status, ctype, payload = self.server.reply  # type: ignore[attr-defined]
        self.send_response(status)
        self.send_header("content-type", ctype)
        self.send_header("content-length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def canned() -> Iterator[HTTPServer]:
    server = HTTPServer(("127.0.0.1", 0), _Canned)
    server.requests = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def sdk(server: HTTPServer) -> Any:
    from google import genai
    from google.genai import types
    return genai.Client(api_key="k", http_options=types.HttpOptions(
        base_url=f"http://127.0.0.1:{server.server_port}", api_version="v1beta", timeout=10_000))


def test_sdk_reads_a_rendered_response(canned: HTTPServer) -> None:
    canned.reply = (200, "application/json", g.render_response(TOOL_RESPONSE))  # type: ignore[attr-defined]
    client = sdk(canned)  # kept: a collected Client closes its transport
    resp = client.models.generate_content(model="gemini-2.5-flash", contents="weather?")
    assert resp.text == "Checking."
    assert [(c.id, c.name, c.args) for c in resp.function_calls] == [
        ("toolu_01", "get_weather", {"city": "Paris"}), ("toolu_02", "get_time", {})]
    parts = resp.candidates[0].content.parts
    assert parts[0].thought is True and parts[0].text == "Need the weather."
    assert parts[2].thought_signature == base64.b64decode("c2lnbmF0dXJl")
    assert resp.candidates[0].finish_reason == "STOP"
    u = resp.usage_metadata
    assert (u.prompt_token_count, u.candidates_token_count, u.thoughts_token_count, u.cached_content_token_count,
            u.total_token_count) == (100, 30, 20, 40, 150)
    assert resp.response_id == "resp_1" and resp.model_version == "claude-sonnet-4-5"


def test_sdk_reads_a_rendered_stream(canned: HTTPServer) -> None:
    raw = b"".join(render_stream(stream_of(TOOL_RESPONSE)))
    canned.reply = (200, "text/event-stream", raw)  # type: ignore[attr-defined]
    client = sdk(canned)
    chunks = list(client.models.generate_content_stream(model="gemini-2.5-flash", contents="weather?"))
    assert canned.requests[-1].endswith(":streamGenerateContent?alt=sse")  # type: ignore[attr-defined]
    assert "".join(c.text or "" for c in chunks) == "Checking."
    calls = [fc for c in chunks for fc in (c.function_calls or [])]
    assert [(fc.id, fc.args) for fc in calls] == [("toolu_01", {"city": "Paris"}), ("toolu_02", {})]
    assert chunks[-1].candidates[0].finish_reason == "STOP"
    assert chunks[-1].usage_metadata.total_token_count == 150


def test_sdk_raises_on_rendered_errors(canned: HTTPServer) -> None:
    from google.genai import errors

    err = Error(kind=ErrorKind.RATE_LIMITED, status=429, message="slow down", retry_after=27)
    canned.reply = (429, "application/json", g.render_error(err))  # type: ignore[attr-defined]
    client = sdk(canned)
    with pytest.raises(errors.ClientError) as exc:
        client.models.generate_content(model="gemini-2.5-flash", contents="hi")
    assert (exc.value.code, exc.value.status, exc.value.message) == (429, "RESOURCE_EXHAUSTED", "slow down")

    r = g.StreamRenderer(Request(model="m", messages=[]))
    raw = r.render(StreamStart(id="r", model="m")) + r.render(TextDelta(text="partial"))
    raw += r.error(Error(kind=ErrorKind.OVERLOADED, status=529, message="Overloaded"))
    canned.reply = (200, "text/event-stream", raw)  # type: ignore[attr-defined]
    seen = []
    with pytest.raises(errors.ServerError) as exc2:
        for chunk in client.models.generate_content_stream(model="gemini-2.5-flash", contents="hi"):
            seen.append(chunk.text)
    assert seen == ["partial"] and exc2.value.code == 503


@pytest.mark.parametrize(("body", "param"), [
    (b'{"contents":[{"parts":[{"text":"hi"}]}],"generationConfig":{"maxOutputTokens":1180591620717411303424}}',
     "generationConfig.maxOutputTokens"),
    (b'{"contents":[{"parts":[{"text":"hi"}]}],"generationConfig":{"candidateCount":1e308}}',
     "generationConfig.candidateCount"),
    (b'{"contents":[{"parts":[{"text":"hi"}]}],"generationConfig":{"maxOutputTokens":"inf"}}',
     "generationConfig.maxOutputTokens"),
    (b'{"contents":[{"parts":[{"text":"hi"}]}],"generationConfig":{"topK":"nan"}}', "generationConfig.topK"),
    (b'{"contents":[{"parts":[{"text":"hi"}]}],"generationConfig":{"temperature":NaN}}',
     "generationConfig.temperature"),
    (b'{"contents":[{"parts":[{"text":"\\ud800"}]}]}', None),  # a lone surrogate
    (b"[" * 5000 + b"]" * 5000, None),  # deeper than the stdlib parser reads
])
def test_requests_beyond_what_any_format_carries_are_400s(body: bytes, param: str | None) -> None:
    """The stdlib fallback reads what orjson refuses: each such value is a 400 naming its field, not
    a crash when the request is rendered for another provider."""
    with pytest.raises(FormatError) as err:
        g.parse_request(body, "m", False)
    assert err.value.status == 400 and err.value.param == param


def test_upstream_failures_and_oversized_bodies_keep_their_status() -> None:
    assert g.error_status(Error(kind=ErrorKind.SERVER_ERROR, status=502, message="bad upstream")) == 502
    body = json.loads(g.render_error(Error(kind=ErrorKind.SERVER_ERROR, status=502, message="x")))
    assert body["error"]["code"] == 502 and body["error"]["status"] == "UNAVAILABLE"
    assert g.error_status(Error(kind=ErrorKind.INVALID_REQUEST, status=413, message="too large")) == 413
    assert g.error_status(Error(kind=ErrorKind.SERVER_ERROR, status=500, message="ours")) == 500


@pytest.mark.parametrize("reason", ["RECITATION", "LANGUAGE", "MALFORMED_FUNCTION_CALL", "OTHER"])
def test_a_gemini_finish_reason_reaches_a_gemini_client_as_it_came(reason: str) -> None:
    # Unified, RECITATION is content_filter (and written back as SAFETY) and OTHER is stop: within
    # the family the upstream's own value is written back, streamed as answered whole.
    chunk = {"candidates": [{"content": {"role": "model", "parts": [{"text": "Hi"}]}, "finishReason": reason,
                             "index": 0}], "usageMetadata": {"promptTokenCount": 3, "candidatesTokenCount": 1}}
    r = g.StreamRenderer(Request(model="m", messages=[]))
    out = b"".join(r.render(ev) for ev in feed_all(b"data: " + orjson.dumps(chunk) + b"\r\n\r\n")) + r.finish()
    assert sse_payloads(out)[-1]["candidates"][0]["finishReason"] == reason
    assert orjson.loads(g.render_response(g.parse_response(orjson.dumps(chunk))))["candidates"][0]["finishReason"] == reason


def test_several_candidates_are_refused_on_a_stream_only() -> None:
    raw = body({"contents": [USER], "generationConfig": {"candidateCount": 2}})
    assert g.parse_request(raw, "m", False).sampling.n == 2
    with pytest.raises(FormatError) as exc:
        g.parse_request(raw, "m", True)  # streams carry one candidate
    assert exc.value.param == "generationConfig.candidateCount" and exc.value.status == 400
    assert g.parse_request(body({"contents": [USER], "generationConfig": {"candidateCount": 1}}), "m", True)


def test_a_stream_says_its_prompt_size_from_the_first_chunk() -> None:
    """As Anthropic's message_start does: a stream cut before its finish (the client left) is
    recorded with the input it was billed, not with 0 tokens. A whole answer still counts only finished."""
    first = {"candidates": [{"content": {"role": "model", "parts": [{"text": "Hel"}]}, "index": 0}],
             "usageMetadata": {"promptTokenCount": 1000, "cachedContentTokenCount": 400, "totalTokenCount": 1000}}
    events = g.StreamParser().feed(b"data: " + orjson.dumps(first) + b"\r\n\r\n")  # then the client leaves
    start = events[0]
    assert isinstance(start, StreamStart) and start.usage == Usage(prompt_tokens=1000, cached_tokens=400)
    assert not any(isinstance(e, UsageEvent) for e in events)  # the full usage comes with the finish, as before
    assert g.parse_response(orjson.dumps(first)).usage is None and g.response_usage(orjson.dumps(first)) is None


def test_an_openai_clients_n_beyond_geminis_candidates_is_sent_as_the_most_it_takes() -> None:
    chat = get_format("openai_chat").parse_request(orjson.dumps(
        {"model": "m", "n": 50, "messages": [{"role": "user", "content": "hi"}]}))
    assert orjson.loads(g.build_request(chat, "gemini-2.5-flash"))["generationConfig"]["candidateCount"] == 8


def test_a_nullable_gemini_schema_takes_null_in_every_family_it_is_translated_to() -> None:
    import jsonschema

    prop = {"type": "OBJECT", "properties": {
        "unit": {"type": "STRING", "nullable": True, "enum": ["c", "f"]},
        "days": {"type": "INTEGER", "nullable": True},
        "either": {"anyOf": [{"type": "STRING"}, {"type": "INTEGER"}], "nullable": True}}}
    req = g.parse_request(body({"contents": [USER], "tools": [{"functionDeclarations": [
        {"name": "f", "parameters": prop}]}]}), "gemini-2.5-flash")
    schema = orjson.loads(get_format("openai_chat").build_request(req, "gpt"))["tools"][0]["function"]["parameters"]
    for ok in ({"unit": None, "days": None, "either": None}, {"unit": "c", "days": 3, "either": 4}):
        jsonschema.validate(ok, schema)
    for bad in ({"unit": "k"}, {"days": "3"}, {"either": 1.5}):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, schema)


# -- an answer cut short with finishReason CONTINUATION ------------------------------------------------

_CONT_CHUNKS = [
    {"candidates": [{"content": {"role": "model", "parts": [{"text": "Part one. "}]}, "index": 0}],
     "responseId": "r1", "modelVersion": "gemini-x"},
    {"candidates": [{"content": {"role": "model", "parts": [{"text": ""}]}, "index": 0,
                     "finishReason": "CONTINUATION", "continuationToken": "Q09OVElOVUUtMQ=="}],
     "usageMetadata": {"promptTokenCount": 5, "candidatesTokenCount": 3, "totalTokenCount": 8}},
]


def test_a_continuation_is_a_length_stop_that_keeps_its_token() -> None:
    """CONTINUATION: the output limit of one request was reached with the answer unfinished. Other
    families hear a length stop (never a complete one); a Gemini client gets the reason and the
    token back, stream or not, so its SDK can resume the answer."""
    data = b"".join(b"data: " + orjson.dumps(c) + b"\r\n\r\n" for c in _CONT_CHUNKS)
    events = feed_all(data)
    [fin] = [e for e in events if isinstance(e, FinishEvent)]
    assert fin.reason == "length" and fin.continuation == "Q09OVElOVUUtMQ==" and fin.finish_native == "gemini:CONTINUATION"
    whole = aggregate(events)
    assert whole.finish_reason == "length" and whole.continuation == "Q09OVElOVUUtMQ=="

    r = g.StreamRenderer(Request(model="gemini-x", messages=[Message(role="user", content=[TextPart(text="q")])]))
    out = b"".join(r.render(e) for e in events) + r.finish()
    last = sse_payloads(out)[-1]["candidates"][0]
    assert last["finishReason"] == "CONTINUATION" and last["continuationToken"] == "Q09OVElOVUUtMQ=="
    cand = orjson.loads(g.render_response(whole))["candidates"][0]
    assert cand["finishReason"] == "CONTINUATION" and cand["continuationToken"] == "Q09OVElOVUUtMQ=="

    # non-stream, parsed from the provider's whole answer
    resp = g.parse_response(orjson.dumps({**_CONT_CHUNKS[1], "candidates": [
        {**_CONT_CHUNKS[1]["candidates"][0], "content": {"role": "model", "parts": [{"text": "Part one. "}]}}]}))
    assert resp.finish_reason == "length" and resp.continuation == "Q09OVElOVUUtMQ=="
    # the other families' clients: a length stop
    from axonsim.formats import anthropic, openai_chat, openai_responses
    assert orjson.loads(openai_chat.render_response(resp))["choices"][0]["finish_reason"] == "length"
    assert orjson.loads(anthropic.render_response(resp))["stop_reason"] == "max_tokens"
    assert orjson.loads(openai_responses.render_response(resp))["status"] == "incomplete"


def test_a_continuation_request_goes_to_gemini_channels_only() -> None:
    """The token names an answer only Gemini holds: a Gemini channel is sent it, another family's
    build refuses it (LiveDriver.fit then keeps such a request on the Gemini channels of a pool)."""
    from axonsim.formats import anthropic, openai_chat, openai_responses
    req = g.parse_request(orjson.dumps({"contents": [{"role": "user", "parts": [{"text": "q"}]}],
                                        "continuationToken": "Q09OVElOVUUtMQ=="}), "m")
    assert orjson.loads(g.build_request(req, "gemini-x"))["continuationToken"] == "Q09OVElOVUUtMQ=="
    for fmt in (openai_chat, anthropic, openai_responses):
        with pytest.raises(FormatError) as exc:
            fmt.build_request(req, "x")
        assert exc.value.param == "continuationToken" and "Gemini channel" in exc.value.message
    # a null (or empty) token is none: any channel serves the request
    for unset in (None, ""):
        plain = g.parse_request(orjson.dumps({"contents": [{"role": "user", "parts": [{"text": "q"}]}],
                                              "continuationToken": unset}), "m")
        for fmt in (openai_chat, anthropic, openai_responses):
            fmt.build_request(plain, "x")


def test_tool_use_prompt_tokens_are_input_counted_and_given_back_as_gemini_counts_them() -> None:
    """toolUsePromptTokenCount (what Google Search, URL context or code execution fed the model) is
    input Gemini bills, counted apart from promptTokenCount: other families see it in their prompt
    count, so that prompt + completion is the total and the cost is not short of it; a Gemini client
    gets Gemini's own split back, whole or streamed."""
    meta = {"promptTokenCount": 1000, "toolUsePromptTokenCount": 200, "candidatesTokenCount": 400,
            "thoughtsTokenCount": 100, "cachedContentTokenCount": 300, "totalTokenCount": 1700}
    answer = {"candidates": [{"content": {"role": "model", "parts": [{"text": "Found it."}]}, "finishReason": "STOP",
                              "index": 0}], "usageMetadata": meta, "modelVersion": "gemini-x"}
    resp = g.parse_response(body(answer))
    assert resp.usage == Usage(prompt_tokens=1200, completion_tokens=500, total_tokens=1700, cached_tokens=300,
                               reasoning_tokens=100, tool_prompt_tokens=200)
    assert orjson.loads(g.render_response(resp))["usageMetadata"] == meta
    chat = orjson.loads(get_format("openai_chat").render_response(resp))["usage"]
    assert chat["prompt_tokens"] + chat["completion_tokens"] == chat["total_tokens"] == 1700
    # streamed: the usage on the last chunk carries the same split
    events = feed_all(b"data: " + orjson.dumps(answer) + b"\r\n\r\n")
    assert [e.usage for e in events if isinstance(e, UsageEvent)][-1] == resp.usage
    frames = [json.loads(f.removeprefix(b"data: ")) for f in b"".join(render_stream(events)).split(b"\r\n\r\n") if f]
    assert [f["usageMetadata"] for f in frames if "usageMetadata" in f][-1] == meta
    # no tool use: no field invented
    plain = {**meta, "toolUsePromptTokenCount": 0, "totalTokenCount": 1500}
    assert "toolUsePromptTokenCount" not in orjson.loads(g.render_response(
        g.parse_response(body({**answer, "usageMetadata": plain}))))["usageMetadata"]
