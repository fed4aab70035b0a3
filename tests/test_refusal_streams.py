"""Refusals in streams: OpenAI Chat's `delta.refusal` and Responses' refusal parts stay refusals from
channel to client (TextDelta.refusal), so the official SDKs' structured-output stream helpers report
the refusal instead of failing to parse it as the answer; other families show it as text."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import openai
import pytest
from pydantic import BaseModel
from sdk_matrix import ScriptBook

from axonsim.formats import anthropic, gemini, openai_chat, openai_responses
from axonsim.unified import (
    FinishEvent,
    Message,
    ReasoningPart,
    Request,
    Response,
    StreamAggregator,
    StreamStart,
    TextDelta,
    TextPart,
    Usage,
)
from server.mock_provider import script_events
from server.testing import Stack

pytestmark = pytest.mark.timeout(120)

REFUSAL = "I'm sorry, I can't help with that — «no»."
GW_KEY = "sk-gw-refusal"
CHANNELS = ("openai", "openai_responses")
MODEL = {ch: f"m-{ch.replace('_', '-')}" for ch in CHANNELS}


def refusal_answer() -> Response:
    return Response(id="", model="", message=Message(role="assistant", content=[], refusal=REFUSAL),
                    finish_reason="stop", usage=Usage(prompt_tokens=12, completion_tokens=9, total_tokens=21))


def _events() -> list[Any]:
    return script_events(Response(id="r1", model="m", message=Message(role="assistant", content=[], refusal=REFUSAL),
                                  finish_reason="stop", usage=Usage(prompt_tokens=1, completion_tokens=2)), chunk=5)


def _fold(events: list[Any]) -> Response:
    agg = StreamAggregator()
    for ev in events:
        agg.add(ev)
    return agg.response()


def _chunks(data: bytes) -> list[dict[str, Any]]:
    return [json.loads(line[6:]) for line in data.decode().split("\n")
            if line.startswith("data: {")]


# --------------------------------------------------------------------------------------------------
# Formats


def test_openai_chat_streams_a_refusal_as_delta_refusal_and_reads_it_back() -> None:
    req = Request(model="m", stream=True, messages=[])
    r = openai_chat.StreamRenderer(req)
    data = b"".join(r.render(ev) for ev in _events()) + r.finish()
    deltas = [c["choices"][0]["delta"] for c in _chunks(data) if c["choices"]]
    assert "".join(d.get("refusal", "") for d in deltas) == REFUSAL
    assert all("refusal" not in d or "content" not in d for d in deltas)  # never also as content
    back = _fold(openai_chat.StreamParser().feed(data))
    assert back.message.refusal == REFUSAL and back.message.text() == ""


def test_openai_responses_streams_a_refusal_part_and_reads_it_back() -> None:
    req = Request(model="m", stream=True, messages=[])
    r = openai_responses.StreamRenderer(req)
    data = b"".join(r.render(ev) for ev in _events()) + r.finish()
    events = [json.loads(line[6:]) for line in data.decode().split("\n") if line.startswith("data: ")]
    types = [e["type"] for e in events]
    assert types[:3] == ["response.created", "response.in_progress", "response.output_item.added"]
    added = next(e for e in events if e["type"] == "response.content_part.added")
    assert added["part"] == {"type": "refusal", "refusal": ""}
    assert "".join(e["delta"] for e in events if e["type"] == "response.refusal.delta") == REFUSAL
    assert next(e for e in events if e["type"] == "response.refusal.done")["refusal"] == REFUSAL
    assert "response.output_text.delta" not in types
    done = next(e for e in events if e["type"] == "response.output_item.done")
    assert done["item"]["content"] == [{"type": "refusal", "refusal": REFUSAL}]
    final = events[-1]
    assert final["type"] == "response.completed"
    assert final["response"]["output"][0]["content"] == [{"type": "refusal", "refusal": REFUSAL}]
    back = _fold(openai_responses.StreamParser().feed(data))
    assert back.message.refusal == REFUSAL and back.message.text() == ""


def test_a_responses_refusal_sent_only_whole_is_read_too() -> None:
    """A provider may skip the deltas: the refusal arrives in refusal.done, or only in the item."""
    def sse(*evs: dict[str, Any]) -> bytes:
        return b"".join(f"event: {e['type']}\ndata: {json.dumps(e)}\n\n".encode() for e in evs)

    created = {"type": "response.created", "response": {"id": "r", "model": "m", "created_at": 1}}
    item = {"id": "msg_1", "type": "message", "role": "assistant", "status": "completed",
            "content": [{"type": "refusal", "refusal": REFUSAL}]}
    end = {"type": "response.completed", "response": {"id": "r", "status": "completed"}}
    only_done = sse(created, {"type": "response.output_item.added", "output_index": 0, "item": {**item, "content": []}},
                    {"type": "response.refusal.done", "output_index": 0, "content_index": 0, "refusal": REFUSAL},
                    {"type": "response.output_item.done", "output_index": 0, "item": item}, end)
    only_item = sse(created, {"type": "response.output_item.done", "output_index": 0, "item": item}, end)
    for data in (only_done, only_item):
        back = _fold(openai_responses.StreamParser().feed(data))
        assert back.message.refusal == REFUSAL and back.message.text() == ""


@pytest.mark.parametrize("fmt", [anthropic, gemini], ids=["anthropic", "gemini"])
def test_families_without_a_refusal_field_show_it_as_text(fmt: Any) -> None:
    req = Request(model="m", stream=True, messages=[])
    r = fmt.StreamRenderer(req)
    data = b"".join(r.render(ev) for ev in _events()) + r.finish()
    back = _fold(fmt.StreamParser().feed(data))
    assert back.message.text() == REFUSAL


@pytest.mark.parametrize("fmt", [anthropic, gemini], ids=["anthropic", "gemini"])
def test_families_without_a_refusal_field_show_a_whole_answers_refusal_as_text(fmt: Any) -> None:
    resp = refusal_answer()
    resp.id, resp.model = "r1", "m"
    assert fmt.parse_response(fmt.render_response(resp)).message.text() == REFUSAL
    # After reasoning, the refusal is still the answer.
    resp.message.content = [ReasoningPart(text="thinking")]
    back = fmt.parse_response(fmt.render_response(resp)).message
    assert back.text() == REFUSAL and back.content[0] == ReasoningPart(text="thinking")
    # Beside text of its own, the answer's text is what the client gets (as the non-stream API would).
    resp.message.content = [TextPart(text="Here is what I can say.")]
    assert fmt.parse_response(fmt.render_response(resp)).message.text() == "Here is what I can say."


def test_the_aggregate_keeps_text_and_refusal_apart() -> None:
    resp = _fold([StreamStart(id="x", model="m"), TextDelta(text="Partly: "), TextDelta(text="no.", refusal=True),
                  FinishEvent(reason="stop")])
    assert resp.message.text() == "Partly: " and resp.message.refusal == "no."


# --------------------------------------------------------------------------------------------------
# End to end: the official SDK's structured-output stream helpers through the gateway


class Answer(BaseModel):
    city: str


@pytest.fixture(scope="module")
def book() -> ScriptBook:
    return ScriptBook()


@pytest.fixture(scope="module")
def sdk(book: ScriptBook) -> Iterator[openai.OpenAI]:
    fast = {"ttft": 0.001, "tokens_per_second": 100000, "output_tokens": 5}
    with Stack() as st:
        st.serve([{"name": f"ch-{ch}", "type": ch, "api_keys": [f"sk-up-{ch}"], "models": [MODEL[ch]],
                   "behavior": fast} for ch in CHANNELS],
                 gateway={"api_keys": [{"key": GW_KEY, "project": "refusal"}]},
                 mock_kw={f"ch-{ch}": {"script": book} for ch in CHANNELS})
        client = openai.OpenAI(base_url=f"{st.gateways[0].url}/v1", api_key=GW_KEY, max_retries=0, timeout=20)
        yield client
        client.close()


@pytest.mark.parametrize("channel", CHANNELS)
def test_chat_stream_helper_reports_the_channels_refusal(channel: str, sdk: openai.OpenAI, book: ScriptBook) -> None:
    cid = book.add(refusal_answer())
    with sdk.chat.completions.stream(model=MODEL[channel], response_format=Answer,
                                     messages=[{"role": "user", "content": f"[case:{cid}] Where?"}]) as s:
        deltas = [ev.delta for ev in s if ev.type == "refusal.delta"]
        final = s.get_final_completion()
    msg = final.choices[0].message
    assert "".join(deltas) == REFUSAL
    assert msg.refusal == REFUSAL and not msg.content and msg.parsed is None


@pytest.mark.parametrize("channel", CHANNELS)
def test_responses_stream_helper_reports_the_channels_refusal(channel: str, sdk: openai.OpenAI,
                                                              book: ScriptBook) -> None:
    cid = book.add(refusal_answer())
    with sdk.responses.stream(model=MODEL[channel], text_format=Answer, input=f"[case:{cid}] Where?") as s:
        deltas = [ev.delta for ev in s if ev.type == "response.refusal.delta"]
        final = s.get_final_response()
    assert "".join(deltas) == REFUSAL
    parts = [c for item in final.output if item.type == "message" for c in item.content]
    assert [(p.type, getattr(p, "refusal", None)) for p in parts] == [("refusal", REFUSAL)]
    assert final.output_parsed is None
