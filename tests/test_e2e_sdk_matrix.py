"""End to end, every client API × every channel type: the official SDKs (openai on Chat and on Responses,
anthropic, google-genai on v1beta and on its default v1) through the running gateway to scripted mock
providers of the four channel types, non-stream and stream.

For each pair the mock channel answers with a script (text; two parallel tool calls and, after the
client returns the results, a final answer; reasoning with the channel family's signature), rendered
by the channel family's own renderer, and the test asserts that what the SDK reconstructs equals
what the channel sent: text, tool calls (name and parsed arguments), finish reason, usage (every field
both families carry), reasoning in the client family's form, the signature as the client's family
must show it. The tool round trip also checks what the channel received on the second turn: the
history's calls and the results, paired by id and name, in the channel's own format.

One gateway and four mocks serve the whole module (tests/sdk_matrix.py has the clients and scripts).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import orjson
import pytest
from sdk_matrix import (
    CALL_IDS,
    CHANNEL_FAMILY,
    CLIENT_FAMILY,
    SIGNATURES,
    TOOL_RESULTS,
    Client,
    ScriptBook,
    after_tools_answer,
    case_of,
    expected_signature,
    expected_usage,
    make_client,
    reasoning_answer,
    reasoning_tool_answer,
    seen_usage,
    text_answer,
    tool_call_answer,
    truncated_answer,
)

from axonsim.unified import ReasoningPart, Request, ToolResultPart
from server.mock_provider import Received
from server.testing import GatewayServer, Stack

pytestmark = pytest.mark.timeout(120)

GW_KEY = "sk-gw-matrix"
CHANNELS = ("openai", "openai_responses", "anthropic", "gemini")
CLIENTS = ("chat", "responses", "anthropic", "genai-v1beta", "genai-v1")
MODEL = {ch: f"m-{ch.replace('_', '-')}" for ch in CHANNELS}
FAST = {"ttft": 0.001, "tokens_per_second": 100000, "output_tokens": 5}


@pytest.fixture(scope="module")
def book() -> ScriptBook:
    return ScriptBook()


@pytest.fixture(scope="module")
def stack(book: ScriptBook) -> Iterator[Stack]:
    with Stack() as st:
        st.serve([{"name": f"ch-{ch}", "type": ch, "api_keys": [f"sk-up-{ch}"], "models": [MODEL[ch]],
                   "behavior": FAST} for ch in CHANNELS],
                 gateway={"api_keys": [{"key": GW_KEY, "project": "matrix"}]},
                 mock_kw={f"ch-{ch}": {"script": book} for ch in CHANNELS})
        yield st


@pytest.fixture(scope="module")
def gw(stack: Stack) -> GatewayServer:
    return stack.gateways[0]


@pytest.fixture(scope="module")
def clients(gw: GatewayServer) -> Iterator[dict[str, Client]]:
    made = {name: make_client(name, gw.url, GW_KEY) for name in CLIENTS}
    yield made
    for c in made.values():
        c.close()


def received(stack: Stack, channel: str, cid: str) -> list[Received]:
    return [r for r in stack.by_name[f"ch-{channel}"].provider.received if case_of(r.request) == cid]


pairs = pytest.mark.parametrize("client", CLIENTS)
channels = pytest.mark.parametrize("channel", CHANNELS)
streams = pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])


@streams
@channels
@pairs
def test_text(client: str, channel: str, stream: bool, clients: dict[str, Client], book: ScriptBook) -> None:
    script = text_answer()
    cid = book.add(script)
    seen = clients[client].ask(MODEL[channel], cid, "text", stream)
    assert seen.text == script.message.text()
    assert seen.calls == []
    assert seen.finish == "stop"
    assert seen_usage(seen) == expected_usage(script, client, channel)


@streams
@channels
@pairs
def test_tool_round_trip(client: str, channel: str, stream: bool, clients: dict[str, Client], book: ScriptBook,
                         stack: Stack) -> None:
    first, final = tool_call_answer(channel), after_tools_answer()
    cid = book.add(first, final)
    c = clients[client]
    seen = c.ask(MODEL[channel], cid, "tools", stream)
    # The calls as the channel made them: names, parsed arguments, in order.
    assert [(name, args) for name, args, _ in seen.calls] == [
        (tc.name, json.loads(tc.arguments)) for tc in first.message.tool_calls]
    assert seen.text == "Let me check both."
    assert seen.finish == "tool_calls"
    assert seen_usage(seen) == expected_usage(first, client, channel)
    ids = [i for _, _, i in seen.calls]
    assert all(ids) and len(set(ids)) == 2, ids  # every family shows the client usable, distinct ids

    # The tools were declared to the channel in its own format.
    got = received(stack, channel, cid)
    assert [t.name for t in got[0].request.tools] == ["get_weather", "get_time"]
    assert got[0].request.tools[0].parameters is not None
    assert got[0].request.tools[0].parameters["properties"]["city"] == {"type": "string"}

    second = c.follow_up(MODEL[channel], seen, stream)
    assert second.text == final.message.text()
    assert second.finish == "stop"
    assert second.calls == []
    assert seen_usage(second) == expected_usage(final, client, channel)

    # What the channel received on the second turn, parsed by its own format: the assistant turn
    # with both calls, then both results, each paired with its call by id and name.
    got = received(stack, channel, cid)
    assert len(got) == 2
    req: Request = got[1].request
    assistant = [m for m in req.messages if m.role == "assistant"]
    assert len(assistant) == 1
    calls = assistant[0].tool_calls
    assert [(tc.name, json.loads(tc.arguments)) for tc in calls] == [
        (tc.name, json.loads(tc.arguments)) for tc in first.message.tool_calls]
    if channel != "gemini":  # Gemini's wire has no call ids: the channel's format synthesises them
        assert [tc.id for tc in calls] == [tc.id for tc in first.message.tool_calls]
    results = [p for m in req.messages for p in m.content if isinstance(p, ToolResultPart)]
    by_id = {tc.id: tc.name for tc in calls}
    assert [by_id.get(r.tool_call_id) for r in results] == ["get_weather", "get_time"]
    for r in results:
        assert r.name in (None, by_id[r.tool_call_id])
        payload = "".join(getattr(p, "text", "") for p in r.content)
        assert json.loads(payload) == TOOL_RESULTS[by_id[r.tool_call_id]]


@streams
@channels
@pairs
def test_reasoning(client: str, channel: str, stream: bool, clients: dict[str, Client], book: ScriptBook) -> None:
    script = reasoning_answer(channel)
    cid = book.add(script)
    seen = clients[client].ask(MODEL[channel], cid, "reasoning", stream)
    assert seen.text == "The answer is 42."
    # Every client family has a form for reasoning: Chat's reasoning_content, Responses' reasoning
    # item, Anthropic's thinking block, Gemini's thought part.
    assert seen.reasoning == script.message.content[0].text  # type: ignore[union-attr]
    assert seen.signature == expected_signature(script, client)
    assert seen.finish == "stop"
    assert seen_usage(seen) == expected_usage(script, client, channel)


@streams
@channels
@pairs
def test_truncated(client: str, channel: str, stream: bool, clients: dict[str, Client], book: ScriptBook) -> None:
    """A channel that ran out of output tokens: every client hears its family's 'length'."""
    script = truncated_answer()
    cid = book.add(script)
    seen = clients[client].ask(MODEL[channel], cid, "text", stream)
    assert seen.text == script.message.text()
    assert seen.finish == "length"
    assert seen_usage(seen) == expected_usage(script, client, channel)


@streams
@channels
@pairs
def test_reasoning_tool_round_trip(client: str, channel: str, stream: bool, clients: dict[str, Client],
                                   book: ScriptBook, stack: Stack) -> None:
    """Thinking, then a tool call, then the client's history back: the channel's signature returns
    to the channel that issued it (with the thinking it signed), and no other family's ever does."""
    first = reasoning_tool_answer(channel)
    cid = book.add(first, after_tools_answer())
    c = clients[client]
    seen = c.ask(MODEL[channel], cid, "reasoning_tools", stream)
    thought = first.message.content[0]
    assert isinstance(thought, ReasoningPart)
    assert seen.reasoning == thought.text
    assert seen.signature == expected_signature(first, client)
    assert [(n, a) for n, a, _ in seen.calls] == [("get_weather", {"city": "Paris"})]
    assert seen.finish == "tool_calls"
    second = c.follow_up(MODEL[channel], seen, stream, "reasoning_tools")
    assert second.text == "Sunny, 21 °C; it is 14:05 in Paris."

    req = received(stack, channel, cid)[1].request
    family = CHANNEL_FAMILY[channel]
    signed = [p for m in req.messages if m.role == "assistant" for p in m.content
              if isinstance(p, ReasoningPart) and p.signature]
    assert all(p.signature_provider == family for p in signed), signed
    issued = SIGNATURES[channel]
    # A Responses client's reasoning reaches Anthropic as an effort, not as thinking: with thinking off
    # Anthropic refuses thinking in the final turn, so none is sent back (docs/mapping.md §4).
    thinking_off = channel == "anthropic" and CLIENT_FAMILY[client] == "openai_responses"
    if thinking_off:
        assert "thinking" not in orjson.loads(received(stack, channel, cid)[1].body) and not signed
    elif issued is not None and CLIENT_FAMILY[client] != "openai_chat":  # Chat has no field to carry it back
        mine = [p for p in signed if p.signature == issued[0]]
        assert mine, signed
        if channel == "anthropic":  # Anthropic verifies the signature over the thinking text
            assert mine[0].text == thought.text


def test_genai_default_api_version_reaches_v1_paths(clients: dict[str, Client], book: ScriptBook,
                                                    gw: GatewayServer) -> None:
    """google-genai 3.x calls /v1/ unless told otherwise; the gateway serves it like /v1beta/."""
    cid = book.add(text_answer())
    clients["genai-v1"].ask(MODEL["gemini"], cid, "text", False)
    cid2 = book.add(text_answer())
    clients["genai-v1beta"].ask(MODEL["gemini"], cid2, "text", True)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:  # the record is written just after the last byte is sent
        paths = [r["path"] for r in list(gw.proxy.recent)[-2:]]
        if len(paths) == 2 and paths[1].startswith("/v1beta/"):
            break
        time.sleep(0.01)
    assert paths == [f"/v1/models/{MODEL['gemini']}:generateContent",
                     f"/v1beta/models/{MODEL['gemini']}:streamGenerateContent"]


def test_case_ids_are_issued_by_the_channel(clients: dict[str, Client], book: ScriptBook) -> None:
    """Same family both sides: the ids the channel issued reach the client unchanged."""
    first = tool_call_answer("anthropic")
    cid = book.add(first)
    seen = clients["anthropic"].ask(MODEL["anthropic"], cid, "tools", False)
    assert [i for _, _, i in seen.calls] == list(CALL_IDS["anthropic"])


@pytest.mark.parametrize("channel", ["anthropic", "gemini"])
def test_answers_from_families_without_a_creation_time_carry_one(gw: GatewayServer, book: ScriptBook,
                                                                 channel: str) -> None:
    """Anthropic and Gemini answers have no creation time; OpenAI's `created` / `created_at` is one
    (a Unix time, not 0), so the gateway stamps the time it received the answer."""
    import httpx

    cid = book.add(text_answer())
    chat = {"model": MODEL[channel], "messages": [{"role": "user", "content": f"hi [case:{cid}]"}]}
    now = time.time()
    with httpx.Client(base_url=gw.url, headers={"authorization": f"Bearer {GW_KEY}"}, timeout=30) as c:
        assert abs(c.post("/v1/chat/completions", json=chat).json()["created"] - now) < 60
        text = c.post("/v1/chat/completions", json={**chat, "stream": True}).text
        chunks = [json.loads(line[6:]) for line in text.split("\n") if line.startswith("data: {")]
        assert chunks and all(abs(ch["created"] - now) < 60 for ch in chunks)
        r = c.post("/v1/responses", json={"model": MODEL[channel], "input": f"hi [case:{cid}]"})
        assert abs(r.json()["created_at"] - now) < 60
        text = c.post("/v1/responses", json={"model": MODEL[channel], "input": f"hi [case:{cid}]",
                                             "stream": True}).text
        created = [json.loads(line[6:]) for line in text.split("\n") if line.startswith("data: {")][0]
        assert abs(created["response"]["created_at"] - now) < 60


@pytest.mark.parametrize("channel", ["openai", "anthropic"])
@streams
def test_genai_automatic_function_calling_pairs_results_with_calls(channel: str, stream: bool, gw: GatewayServer,
                                                                   book: ScriptBook, stack: Stack) -> None:
    # google-genai runs the tools itself and sends their results back without ids; streamed, it
    # replays the answer as one model content per chunk (the last an empty text). The channel must
    # still get each result paired with the call it answers, by that call's own id.
    from google import genai
    from google.genai import types as gt
    from sdk_matrix import prompt

    def get_weather(city: str, unit: str = "celsius") -> dict[str, object]:
        """The weather in a city."""
        return TOOL_RESULTS["get_weather"]

    def get_time(tz: str) -> dict[str, object]:
        """The time in a time zone."""
        return TOOL_RESULTS["get_time"]

    first, final = tool_call_answer(channel), after_tools_answer()
    cid = book.add(first, final)
    sdk = genai.Client(api_key=GW_KEY, http_options=gt.HttpOptions(
        base_url=gw.url, api_version="v1beta", timeout=20_000, retry_options=gt.HttpRetryOptions(attempts=1)))
    try:
        chat = sdk.chats.create(model=MODEL[channel], config=gt.GenerateContentConfig(tools=[get_weather, get_time]))
        if stream:
            text = "".join(chunk.text or "" for chunk in chat.send_message_stream(prompt(cid)))
        else:
            text = chat.send_message(prompt(cid)).text or ""
    finally:
        sdk.close()
    assert final.message.text() in text
    got = received(stack, channel, cid)
    assert len(got) == 2
    req: Request = got[1].request
    [assistant] = [m for m in req.messages if m.role == "assistant"]
    assert [tc.id for tc in assistant.tool_calls] == [tc.id for tc in first.message.tool_calls]
    results = [p for m in req.messages for p in m.content if isinstance(p, ToolResultPart)]
    assert [r.tool_call_id for r in results] == [tc.id for tc in first.message.tool_calls]


@pytest.mark.parametrize("channel", ["openai", "gemini", "anthropic"])
def test_anthropic_tool_runner_with_threads_sends_the_whole_conversation(channel: str, gw: GatewayServer,
                                                                         book: ScriptBook, stack: Stack) -> None:
    # The SDK's tool runner opens a Message Thread (beta), whose later turns would carry only the new
    # messages. The gateway refuses `thread` as Anthropic refuses what threads cannot carry; the SDK
    # then sends the whole conversation, and the loop completes on any channel type.
    import anthropic
    from anthropic import beta_tool
    from sdk_matrix import prompt

    @beta_tool
    def get_weather(city: str, unit: str = "celsius") -> str:
        """The weather in a city."""
        return json.dumps(TOOL_RESULTS["get_weather"])

    @beta_tool
    def get_time(tz: str) -> str:
        """The time in a time zone."""
        return json.dumps(TOOL_RESULTS["get_time"])

    first, final = tool_call_answer(channel), after_tools_answer()
    cid = book.add(first, final)
    sdk = anthropic.Anthropic(base_url=gw.url, api_key=GW_KEY, max_retries=0, timeout=20)
    try:
        runner = sdk.beta.messages.tool_runner(model=MODEL[channel], max_tokens=512, tools=[get_weather, get_time],
                                               messages=[{"role": "user", "content": prompt(cid)}], max_iterations=4)
        last = runner.until_done()
        # and Anthropic's own name for the request id, which the SDK reads
        raw = sdk.messages.with_raw_response.create(model=MODEL[channel], max_tokens=16,
                                                    messages=[{"role": "user", "content": "hi"}])
        assert raw.headers["request-id"] == raw.headers["x-request-id"] and raw.parse()._request_id
    finally:
        sdk.close()
    assert "".join(b.text for b in last.content if b.type == "text") == final.message.text()
    got = received(stack, channel, cid)
    assert len(got) == 2  # each turn reached the channel once, whole
    req: Request = got[1].request
    assert [m.role for m in req.messages if m.role != "system"][:2] == ["user", "assistant"]
    [assistant] = [m for m in req.messages if m.role == "assistant"]
    assert [tc.name for tc in assistant.tool_calls] == ["get_weather", "get_time"]
    assert [t.name for t in req.tools] == ["get_weather", "get_time"]
    results = [p for m in req.messages for p in m.content if isinstance(p, ToolResultPart)]
    assert len(results) == 2


@streams
def test_genai_resumes_an_answer_gemini_cut_short(stream: bool, gw: GatewayServer, book: ScriptBook,
                                                  stack: Stack) -> None:
    # finishReason CONTINUATION with a continuationToken: google-genai sends the request again with the
    # token until the answer is whole. Streamed answers are re-rendered by the gateway: the token must
    # survive that, or the SDK stops at the first part.
    from google import genai
    from google.genai import types as gt
    from sdk_matrix import prompt

    from axonsim.unified import Message, Response, TextPart, Usage

    part1 = Response(id="", model="", message=Message(role="assistant", content=[TextPart(text="Part one. ")]),
                     finish_reason="length", finish_native="gemini:CONTINUATION", continuation="Q09OVElOVUUtMQ==",
                     usage=Usage(prompt_tokens=5, completion_tokens=3, total_tokens=8))
    part2 = Response(id="", model="", message=Message(role="assistant", content=[TextPart(text="Part two.")]),
                     finish_reason="stop", usage=Usage(prompt_tokens=5, completion_tokens=2, total_tokens=7))
    cid = book.add(part1, part2)
    sdk = genai.Client(api_key=GW_KEY, http_options=gt.HttpOptions(
        base_url=gw.url, api_version="v1beta", timeout=20_000, retry_options=gt.HttpRetryOptions(attempts=1)))
    try:
        if stream:
            chunks = list(sdk.models.generate_content_stream(model=MODEL["gemini"], contents=prompt(cid)))
            text = "".join(c.text or "" for c in chunks)
            finish = [c.candidates[0].finish_reason for c in chunks if c.candidates and c.candidates[0].finish_reason]
        else:
            r = sdk.models.generate_content(model=MODEL["gemini"], contents=prompt(cid))
            text, finish = r.text or "", [r.candidates[0].finish_reason]
    finally:
        sdk.close()
    assert text == "Part one. Part two."
    assert finish[-1] == gt.FinishReason.STOP
    got = received(stack, "gemini", cid)
    assert len(got) == 2 and got[1].request.extra_body.get("continuationToken") == "Q09OVElOVUUtMQ=="
