"""response_usage(body): the usage of a non-stream answer, read without parsing the rest, for a body
the gateway forwards verbatim to a client of the same family. It must equal parse_response(body).usage
for every recorded answer, every rendered answer, and every odd usage field, and refuse a body of the
wrong top-level shape with parse_response's own FormatError."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from axonsim.formats import FormatError, get_format
from axonsim.unified import Message, ReasoningPart, Response, TextPart, ToolCall, Usage

FAMILIES = ["openai_chat", "openai_responses", "anthropic", "gemini"]
FMT = {f: get_format(f) for f in FAMILIES}
ROOT = Path(__file__).parent / "fixtures" / "providers"
DIRS = {"openai_chat": "openai", "openai_responses": "openai_responses", "anthropic": "anthropic", "gemini": "gemini"}
RECORDED = [(f, p.name) for f in FAMILIES for p in sorted((ROOT / DIRS[f]).glob("*.response.json"))] + [
    ("openai_chat", "openai-stop.aggregator.json")]


def outcome(fn: Any, body: bytes) -> Any:
    """The usage, or the FormatError's (message, param, status)."""
    try:
        r = fn(body)
    except FormatError as e:
        return ("error", e.message, e.param, e.status)
    return r.usage if isinstance(r, Response) else r


def test_every_module_has_it() -> None:
    for f in FAMILIES:
        assert callable(FMT[f].response_usage)


@pytest.mark.parametrize(("family", "name"), RECORDED)
def test_every_recorded_answer(family: str, name: str) -> None:
    body = (ROOT / DIRS[family] / name).read_bytes()
    expected = FMT[family].parse_response(body).usage
    got = FMT[family].response_usage(body)
    assert got == expected
    assert type(got) is type(expected)


@pytest.mark.parametrize("client", FAMILIES)
@pytest.mark.parametrize(("family", "name"), RECORDED)
def test_every_recorded_answer_rendered_for_every_client(family: str, name: str, client: str) -> None:
    resp = FMT[family].parse_response((ROOT / DIRS[family] / name).read_bytes())
    body = FMT[client].render_response(resp)
    assert FMT[client].response_usage(body) == FMT[client].parse_response(body).usage


counts = st.integers(0, 10 ** 7)


@st.composite
def responses(draw: st.DrawFn) -> Response:
    usage = None if draw(st.integers(0, 5)) == 0 else Usage(
        prompt_tokens=draw(counts), completion_tokens=draw(counts), total_tokens=draw(counts),
        cached_tokens=draw(counts), cache_write_tokens=draw(counts), reasoning_tokens=draw(counts))
    content: list[Any] = []
    if draw(st.booleans()):
        content.append(ReasoningPart(text=draw(st.text(min_size=1, max_size=8))))
    if draw(st.booleans()):
        content.append(TextPart(text=draw(st.text(min_size=1, max_size=8))))
    calls = [ToolCall(id=f"call_{i}", name="f", arguments="{}") for i in range(draw(st.integers(0, 2)))]
    return Response(id="r1", model="m", message=Message(role="assistant", content=content, tool_calls=calls),
                    finish_reason=draw(st.sampled_from(["stop", "length", "tool_calls", "content_filter", None])),
                    usage=usage)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(responses(), st.sampled_from(FAMILIES))
def test_any_rendered_answer(resp: Response, family: str) -> None:
    body = FMT[family].render_response(resp)
    assert FMT[family].response_usage(body) == FMT[family].parse_response(body).usage


# Bodies at the edges of each family's shape: odd usage fields (parse_response reads them leniently)
# and top-level shapes it refuses. response_usage must agree on each, error message included.
ODD_USAGE: list[Any] = [None, [], "12", {}, {"prompt_tokens": True}, {"input_tokens": 1.5, "output_tokens": "2"},
                        {"promptTokenCount": 3.7, "candidatesTokenCount": None, "totalTokenCount": 0,
                         "thoughtsTokenCount": 2, "cachedContentTokenCount": 1, "toolUsePromptTokenCount": 4},
                        {"prompt_tokens": 5, "completion_tokens": 6, "total_tokens": 0,
                         "prompt_tokens_details": {"cached_tokens": 2, "cache_write_tokens": 1},
                         "completion_tokens_details": {"reasoning_tokens": 3}, "prompt_cache_hit_tokens": 9,
                         "input_tokens": 7, "output_tokens": 8, "cache_read_input_tokens": 1,
                         "cache_creation_input_tokens": 2, "input_tokens_details": {"cached_tokens": 1},
                         "output_tokens_details": {"reasoning_tokens": 2}},
                        {"prompt_tokens_details": [], "completion_tokens_details": None, "input_tokens_details": 3,
                         "output_tokens_details": "x", "prompt_tokens": 2 ** 40}]


def chat(usage: Any) -> dict[str, Any]:
    return {"id": "c", "choices": [{"index": 0, "message": {"content": "hi"}, "finish_reason": "stop"}],
            "usage": usage}


def responses_api(usage: Any) -> dict[str, Any]:
    return {"id": "r", "status": "completed", "output": [], "usage": usage}


def anthropic(usage: Any) -> dict[str, Any]:
    return {"id": "m", "type": "message", "content": [{"type": "text", "text": "hi"}], "stop_reason": "end_turn",
            "usage": usage}


def gemini(usage: Any) -> dict[str, Any]:
    return {"candidates": [{"content": {"parts": [{"text": "hi"}]}, "finishReason": "STOP"}], "usageMetadata": usage}


SHAPES = {"openai_chat": chat, "openai_responses": responses_api, "anthropic": anthropic, "gemini": gemini}

TOP_LEVEL: dict[str, list[Any]] = {
    "openai_chat": [b"not json", [], "s", {}, {"choices": {}}, {"error": {"message": "no sk-abcdefghijk"}},
                    {"choices": None, "error": "boom"}, {"choices": [], "usage": {"prompt_tokens": 1}}],
    "openai_responses": [b"{", [1], {}, {"id": ""}, {"id": "r"}, {"id": "r", "output": {}},
                         {"id": "r", "output": [], "usage": {"input_tokens": 1, "total_tokens": 0}}],
    "anthropic": [b"", 3, {"type": "error", "error": {"message": "overloaded"}}, {"type": "error"}, {},
                  {"content": "x"}, {"content": [], "usage": {"output_tokens": 1}}],
    "gemini": [b"nan!", [{}, {}], [], {"error": {"code": 429, "message": "quota"}}, {}, {"candidates": []},
               {"candidates": {"a": 1}, "usageMetadata": {"promptTokenCount": 1}},
               {"candidates": {}, "promptFeedback": {"blockReason": "SAFETY"}, "usageMetadata": {"promptTokenCount": 2}},
               {"candidates": [], "promptFeedback": {"blockReason": "SAFETY"}, "usageMetadata": {"promptTokenCount": 2}},
               {"candidates": [], "promptFeedback": {"blockReason": ""}, "usageMetadata": {"promptTokenCount": 2}},
               {"candidates": [{"content": {"parts": [{"text": "x"}]}}], "usageMetadata": {"promptTokenCount": 1}},
               {"candidates": [{"index": 1, "finishReason": "STOP"}], "usageMetadata": {"promptTokenCount": 1}},
               {"candidates": [{"finishReason": 7}], "usageMetadata": {"promptTokenCount": 1}},
               [{"candidates": [{"finishReason": "MAX_TOKENS"}], "usage_metadata": {"prompt_token_count": 1}}],
               {"candidates": [{"finishReason": "STOP"}], "usageMetadata": {"promptTokenCount": 2 ** 70}},
               {"candidates": [{"finishReason": "STOP"}], "usageMetadata": []}],
}


def bodies(family: str) -> list[bytes]:
    out = [orjson.dumps(SHAPES[family](u)) for u in ODD_USAGE]
    for b in TOP_LEVEL[family]:
        if isinstance(b, bytes):
            out.append(b)
        else:
            try:
                out.append(orjson.dumps(b))
            except TypeError:  # integers beyond 64 bits, which orjson cannot write (Gemini reads them)
                import json

                out.append(json.dumps(b).encode())
    return out


@pytest.mark.parametrize("family", FAMILIES)
def test_odd_usage_and_top_level_shapes_agree_with_parse_response(family: str) -> None:
    for body in bodies(family):
        assert outcome(FMT[family].response_usage, body) == outcome(FMT[family].parse_response, body), body


def test_what_lies_below_the_top_level_is_not_read() -> None:
    # The cheap reading's documented limit: parse_response refuses a malformed part deep inside; the
    # usage of a body forwarded verbatim is still read (the client gets the provider's body as it is).
    bad = {
        "openai_chat": {"choices": [{"message": {"tool_calls": [3]}}], "usage": {"prompt_tokens": 1}},
        "openai_responses": {"id": "r", "output": [3], "usage": {"input_tokens": 1}},
        "anthropic": {"content": [3], "usage": {"input_tokens": 1}},
        "gemini": {"candidates": [{"content": {"parts": [3]}, "finishReason": "STOP"}],
                   "usageMetadata": {"promptTokenCount": 1}},
    }
    for family, obj in bad.items():
        body = orjson.dumps(obj)
        with pytest.raises(FormatError):
            FMT[family].parse_response(body)
        usage = FMT[family].response_usage(body)
        assert usage is not None and usage.prompt_tokens == 1


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=2**40), min_size=len(Usage.model_fields),
                max_size=len(Usage.model_fields)), st.booleans())
def test_usage_as_dict_is_its_model_dump(counts: list[int], finalise: bool) -> None:
    """The proxy records usage with as_dict(): it must be model_dump(), key for key and in order,
    also after finalised() set the total."""
    names = list(Usage.model_fields)
    u = Usage(**dict(zip(names, counts, strict=True)))
    if finalise:
        u.total_tokens = 0
        u = u.finalised()
    assert list(u.as_dict().items()) == list(u.model_dump().items())


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=-(2**70), max_value=2**70), min_size=len(Usage.model_fields),
                max_size=len(Usage.model_fields)), st.integers(0, 2**31))
def test_usage_built_without_validation_is_the_validated_usage(counts: list[int], later: int) -> None:
    """openai_chat.usage_of builds the Usage of every forwarded answer without validating it again:
    it must be the model pydantic makes, in every way the gateway and its clients can observe."""
    from axonsim.formats.openai_chat import usage_of

    fields = dict(zip(Usage.model_fields, counts, strict=True))
    fast, checked = usage_of(dict(fields)), Usage.model_validate(fields)
    assert type(fast) is Usage and fast == checked
    assert fast.model_fields_set == checked.model_fields_set
    assert fast.model_dump() == checked.model_dump() == fast.as_dict()
    assert fast.model_dump_json() == checked.model_dump_json() and repr(fast) == repr(checked)
    assert fast.model_copy(update={"prompt_tokens": later}) == checked.model_copy(update={"prompt_tokens": later})
    for u in (fast, checked):
        u.total_tokens = 0
        u.completion_tokens = later
    assert fast.finalised() == checked.finalised() and fast.total_tokens == fast.prompt_tokens + later
    with pytest.raises(ValueError):
        fast.bogus = 1  # type: ignore[attr-defined]  # extras forbidden, as on a validated one
