"""Parsed: a checked client request whose unified Request is built on first use (axonsim/formats/parsed.py).

The handler forwards a same-format request without ever building its Request, so the format's own
checks must be the whole validation: whatever check_request accepts must build. These tests hold
that against generated bodies, and check the facts routing reads before the Request exists."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from axonsim.formats import FormatError, anthropic, gemini, openai_chat, openai_responses
from axonsim.formats.parsed import Parsed
from axonsim.unified import Message, Request, TextPart

PROPS = settings(max_examples=300, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])

INNER = ["role", "content", "type", "text", "name", "tool_calls", "function", "id", "image_url", "url",
         "tool_call_id", "arguments", "refusal", "reasoning_content", "parameters", "description", "strict",
         "json_schema", "schema", "include_usage", "cache_control", "detail", "x"]

SCALARS = (st.none() | st.booleans() | st.integers(-3, 70000) | st.floats(allow_nan=False, allow_infinity=False)
           | st.sampled_from(["", "user", "assistant", "system", "tool", "developer", "text", "image_url", "function",
                              "auto", "none", "required", "json_object", "json_schema", "https://x/y.png",
                              "data:image/png;base64,AA==", "call_1", "{}"]))
JSONISH = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=3)
                       | st.dictionaries(st.sampled_from(INNER), inner, max_size=5), max_leaves=16)


TEXTS = st.text(max_size=5)
PARTS = st.lists(st.fixed_dictionaries({"type": st.just("text"), "text": TEXTS},
                                       optional={"cache_control": st.just({"type": "ephemeral"})}), max_size=2)
CALLS = st.lists(st.fixed_dictionaries({"id": st.just("call_1"), "type": st.just("function"),
                                        "function": st.fixed_dictionaries({"name": st.just("f")},
                                                                          optional={"arguments": TEXTS})}),
                 max_size=2)
MESSAGE = st.one_of(
    st.fixed_dictionaries({"role": st.sampled_from(["user", "system", "developer"]), "content": TEXTS | PARTS},
                          optional={"name": TEXTS}),
    st.fixed_dictionaries({"role": st.just("assistant")},
                          optional={"content": st.none() | TEXTS | PARTS, "refusal": TEXTS,
                                    "reasoning_content": TEXTS, "tool_calls": CALLS}),
    st.fixed_dictionaries({"role": st.just("tool"), "tool_call_id": st.just("call_1"), "content": TEXTS | PARTS}),
)
FLOAT = st.floats(-3, 3, allow_nan=False)
FIELDS: dict[str, Any] = {
    "tools": st.lists(st.fixed_dictionaries(
        {"type": st.just("function"), "function": st.fixed_dictionaries(
            {"name": st.sampled_from(["f", "get_weather"])},
            optional={"parameters": st.just({"type": "object"}), "description": TEXTS, "strict": st.booleans()})}),
        max_size=2),
    "tool_choice": st.sampled_from(["auto", "none", "required", {"type": "function", "function": {"name": "f"}}]),
    "parallel_tool_calls": st.booleans(),
    "response_format": st.sampled_from([{"type": "text"}, {"type": "json_object"},
                                        {"type": "json_schema", "json_schema": {"name": "x", "schema": {}}},
                                        {"type": "json_schema", "json_schema": {"name": "x", "strict": True}}]),
    "temperature": FLOAT, "top_p": FLOAT, "presence_penalty": FLOAT, "frequency_penalty": FLOAT,
    "max_tokens": st.integers(0, 9999), "max_completion_tokens": st.integers(0, 9999),
    "seed": st.integers(-(2**63), 2**63 - 1),
    "n": st.integers(1, 3), "stop": st.text(max_size=3) | st.lists(st.text(max_size=3), max_size=3),
    "stream": st.booleans(), "stream_options": st.fixed_dictionaries({}, optional={"include_usage": st.booleans()}),
    "reasoning_effort": st.sampled_from(["low", "high"]),
    "metadata": st.dictionaries(st.text(max_size=3), st.text(max_size=3), max_size=2), "user": st.text(max_size=4),
    "logprobs": JSONISH, "x": JSONISH,
}
WELL_FORMED = st.fixed_dictionaries({"model": st.just("m"), "messages": st.lists(MESSAGE, min_size=1, max_size=3)},
                                    optional=FIELDS)


@st.composite
def bodies(draw: Any) -> dict[str, Any]:
    """A well-formed body, or one with a single field (top-level or in a message) replaced by anything:
    one bad field at a time reaches every check, where bodies of random parts fail at the first."""
    obj: dict[str, Any] = draw(WELL_FORMED)
    where = draw(st.sampled_from([None, "a message", "a message field", "model", "messages", *FIELDS]))
    if where == "a message":
        obj["messages"][draw(st.integers(0, len(obj["messages"]) - 1))] = draw(JSONISH)
    elif where == "a message field":
        msg = obj["messages"][draw(st.integers(0, len(obj["messages"]) - 1))]
        msg[draw(st.sampled_from(INNER))] = draw(JSONISH)
    elif where is not None:
        obj[where] = draw(JSONISH)
    return obj


@given(bodies())
@PROPS
def test_whatever_the_checks_accept_builds_a_request(obj: dict[str, Any]) -> None:
    body = orjson.dumps(obj)
    try:
        p = openai_chat.check_request(body)
    except FormatError as e:
        assert e.status == 400
        with pytest.raises(FormatError) as eager:
            openai_chat.parse_request(body)
        assert (eager.value.message, eager.value.param) == (e.message, e.param)
        return
    req = p.request()  # the safety net in Parsed.request must never be what catches a bad body
    assert (p.model, p.stream, p.include_usage, p.max_tokens, p.tools) == (
        req.model, req.stream, req.include_usage, req.sampling.max_tokens, bool(req.tools))
    assert req == openai_chat.parse_request(body)


def test_the_facts_routing_reads_come_from_the_checked_body() -> None:
    body = orjson.dumps({"model": "gpt-x", "messages": [{"role": "user", "content": "hi"}], "stream": True,
                         "max_completion_tokens": 77, "tools": [{"type": "function", "function": {"name": "f"}}]})
    p = openai_chat.check_request(body)
    assert (p.model, p.stream, p.include_usage, p.max_tokens, p.tools) == ("gpt-x", True, False, 77, True)
    p = openai_chat.check_request(orjson.dumps({"model": "gpt-x", "messages": [{"role": "user", "content": "hi"}],
                                                "tools": []}), model="from-url", stream=False)
    assert (p.model, p.stream, p.include_usage, p.max_tokens, p.tools) == ("from-url", False, True, None, False)


def test_the_request_is_built_once() -> None:
    p = openai_chat.check_request(b'{"model":"m","messages":[{"role":"user","content":"hi"}]}')
    first = p.request()
    assert p.request() is first
    assert first.messages == [Message(role="user", content=[TextPart(text="hi")])]
    assert first.source == "openai_chat"


def test_a_tree_the_model_refuses_is_a_400_naming_the_field() -> None:
    # Only reachable if a format's checks missed something: the safety net still answers like a parse.
    p = Parsed("m", False, True, None, False, {"model": "m", "messages": [{"role": "robot", "content": []}]})
    with pytest.raises(FormatError) as e:
        p.request()
    assert e.value.status == 400 and e.value.param == "messages[0].role"


@pytest.mark.parametrize("fmt, body, model", [
    (anthropic, {"model": "claude", "max_tokens": 20, "messages": [{"role": "user", "content": "hi"}]}, None),
    (openai_responses, {"model": "gpt", "input": "hi", "max_output_tokens": 20}, None),
    (gemini, {"contents": [{"role": "user", "parts": [{"text": "hi"}]}],
              "generationConfig": {"maxOutputTokens": 20}}, "gem"),
])
def test_formats_that_build_as_they_parse_hand_over_their_request(fmt: Any, body: dict[str, Any],
                                                                  model: str | None) -> None:
    raw = orjson.dumps(body)
    p = fmt.check_request(raw, model, False)
    req = p.request()
    assert isinstance(req, Request) and req == fmt.parse_request(raw, model, False)
    assert (p.model, p.stream, p.include_usage, p.max_tokens, p.tools) == (req.model, False, True, 20, False)
    with pytest.raises(FormatError):
        fmt.check_request(b"[]", model, False)


_CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True}


@pytest.mark.parametrize("fmt, body, model, include_usage", [
    # Only OpenAI Chat's renderer reads include_usage: the other formats are rendered once.
    (openai_chat, {**_CHAT, "stream_options": {"include_usage": True}}, None, True),
    (openai_chat, {**_CHAT, "stream_options": {"include_usage": False}}, None, False),
    (anthropic, {"model": "m", "max_tokens": 9, "stream": True, "messages": [{"role": "user", "content": "hi"}]},
     None, None),
    (openai_responses, {"model": "m", "input": "hi", "stream": True}, None, None),
    (gemini, {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}, "m", None),
])
def test_a_stream_renders_the_same_from_the_checked_request(fmt: Any, body: dict[str, Any], model: str | None,
                                                            include_usage: bool | None) -> None:
    """The handler hands a stream's renderer the Parsed request (OpenAI Chat then never builds the
    Request for a same-format stream): every format must render exactly as from the Request."""
    from axonsim.unified import FinishEvent, StreamStart, TextDelta, Usage, UsageEvent

    raw = orjson.dumps(body)
    events = [StreamStart(id="s1", model="m", created=5), TextDelta(text="hel"), TextDelta(text="lo"),
              FinishEvent(reason="stop"), UsageEvent(usage=Usage(prompt_tokens=3, completion_tokens=2))]

    def render(req: Any) -> bytes:
        r = fmt.StreamRenderer(req)
        return b"".join([r.render(ev) for ev in events]) + r.finish()

    from_parsed = render(fmt.check_request(raw, model, True))
    assert from_parsed == render(fmt.parse_request(raw, model, True))
    if include_usage is not None:
        assert (b'"usage":{' in from_parsed) == include_usage
