"""Cross-format guarantees: any provider family's answer reaches a client of any family, and any client
family's request reaches a channel of any family, keeping its meaning.

What each test asserts is what docs/mapping.md promises to survive; what it deliberately does not
assert is the documented lossy list there. In short:

- Responses and streams (recorded provider traffic, parsed by its family's outbound side, rendered by
  every family's inbound side, parsed back by that family's outbound parser — a rendered client
  stream is exactly what that family's provider would send): text, tool calls (ids, names, arguments
  as parsed JSON), reasoning text, signatures with their provider where the client family carries
  them (not OpenAI Chat; Gemini keeps one per answer), finish reason, usage (prompt, completion,
  cached; reasoning tokens except through Anthropic, cache writes except through Gemini). Stream →
  aggregate equals the non-stream answer for every provider × client pair.
- Requests (every recorded client request, parsed by its family, built for every other family, parsed
  back by that family's inbound side): system prompt, roles, text, images, tool definitions, tool calls
  and their results paired by id and name, tool choice and the sampling fields the target carries.
- Property tests: on what all four families can carry, unified → A → unified → B → unified is the
  identity for requests, responses and streams (any byte chunking).
"""

from __future__ import annotations

import base64
import itertools
import json
import math
import random
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from native_finish import without_native

from axonsim.capabilities import NATIVE_TOOL_CHANNEL, needs_of
from axonsim.formats import FormatError, get_format
from axonsim.formats import anthropic as A
from axonsim.formats.signatures import WRAP_PREFIX, export_signature, import_signature, replayable
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

FAMILIES = ["openai_chat", "openai_responses", "anthropic", "gemini"]
FMT = {f: get_format(f) for f in FAMILIES}
# Families whose wire format carries reasoning signatures (Chat carries reasoning text only).
SIGNING = {"openai_responses", "anthropic", "gemini"}
ROOT = Path(__file__).parent / "fixtures" / "providers"
DIRS = {"openai_chat": "openai", "openai_responses": "openai_responses", "anthropic": "anthropic", "gemini": "gemini"}
PAIRS = [(f, p.name.removesuffix(".response.json")) for f in FAMILIES
         for p in sorted((ROOT / DIRS[f]).glob("*.response.json"))]
STREAMS = [(f, p.name) for f in FAMILIES for p in sorted((ROOT / DIRS[f]).glob("*.stream.*"))]
REQUESTS = [(f, p.name) for f in FAMILIES for p in sorted((ROOT / DIRS[f]).glob("*.request.json"))]
PROPS = settings(max_examples=60, deadline=None, derandomize=True,
                 suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


# --------------------------------------------------------------------------------------------------
# Helpers: fixtures, streams, views


def fixture(family: str, name: str) -> bytes:
    return (ROOT / DIRS[family] / name).read_bytes()


def stream_bytes(family: str, name: str) -> bytes:
    """A recorded stream as the provider sent it (*.jsonl records are replayed as SSE, see README)."""
    raw = fixture(family, name)
    if name.endswith(".sse"):
        return raw
    out = bytearray()
    for line in raw.decode().splitlines():
        if not line.strip():
            continue
        rec = json.loads(line)
        if rec["Type"]:
            out += f"event: {rec['Type']}\n".encode()
        out += b"data: " + rec["Data"].encode() + b"\n\n"
    if family == "openai_chat":
        out += b"data: [DONE]\n\n"  # the recordings leave it out
    return bytes(out)


def chunks(data: bytes, rng: random.Random, n: int = 8) -> list[bytes]:
    cuts = sorted({0, len(data), *(rng.randrange(len(data) + 1) for _ in range(n))})
    return [data[a:b] for a, b in itertools.pairwise(cuts)]


def parse_stream(family: str, data: bytes, rng: random.Random | None = None) -> list[StreamEvent]:
    parser = FMT[family].StreamParser()
    events: list[StreamEvent] = []
    for piece in chunks(data, rng) if rng is not None else [data]:
        events += parser.feed(piece)
    return events + parser.close()


def client_request(family: str, **kw: Any) -> Request:
    return Request(model="client-model", messages=[], stream=True, include_usage=True, source=family, **kw)


def render_stream(family: str, events: list[StreamEvent], req: Request | None = None) -> bytes:
    r = FMT[family].StreamRenderer(req or client_request(family))
    return b"".join(r.render(ev) for ev in events) + r.finish()


def aggregate(events: list[StreamEvent]) -> Response:
    agg = StreamAggregator()
    for ev in events:
        agg.add(ev)
    return agg.response()


def through(family: str, resp: Response) -> Response:
    """A unified response rendered for a `family` client, read back as that family's provider answer."""
    return FMT[family].parse_response(FMT[family].render_response(resp))


def stream_through(family: str, events: list[StreamEvent], rng: random.Random | None = None) -> list[StreamEvent]:
    return parse_stream(family, render_stream(family, events), rng)


def tool_id(target: str, cid: str) -> str:
    """Tool-call ids survive as they are, except that Anthropic's must match ^[a-zA-Z0-9_-]+$: foreign
    ids are rewritten deterministically (the call and its result still agree)."""
    return A._tool_id(cid) if target == "anthropic" else cid


def args_of(arguments: str) -> Any:
    return json.loads(arguments) if arguments.strip() else {}


def response_view(resp: Response, target: str, last_signature_only: bool = False) -> dict[str, Any]:
    """What of a response must survive a trip through a `target` client, per docs/mapping.md."""
    parts = resp.message.content
    reasoning = [p for p in parts if isinstance(p, ReasoningPart) and not p.redacted]
    sigs = [(p.signature, p.signature_provider) for p in reasoning if p.signature]
    if target not in SIGNING:
        sigs = []  # OpenAI Chat carries reasoning text only
    elif target == "gemini" or last_signature_only:
        sigs = sigs[-1:]  # one signature per Gemini answer (StreamAggregator's shape: the last one wins)
    u = resp.usage or Usage()
    return {
        "text": "".join(p.text for p in parts if isinstance(p, TextPart)),
        "reasoning": "".join(p.text for p in reasoning),
        "signatures": sigs,
        "calls": [(tool_id(target, c.id), c.name, args_of(c.arguments)) for c in resp.message.tool_calls],
        "finish": resp.finish_reason,
        "usage": (u.prompt_tokens, u.completion_tokens, u.cached_tokens,
                  0 if target == "anthropic" else u.reasoning_tokens,  # Anthropic reports no thinking tokens
                  0 if target == "gemini" else u.cache_write_tokens),  # Gemini reports no cache writes
    }


# --------------------------------------------------------------------------------------------------
# Golden: every recorded provider response, rendered into every client format and read back


@pytest.mark.parametrize("client", FAMILIES)
@pytest.mark.parametrize(("provider", "name"), PAIRS)
def test_every_response_reaches_every_client(provider: str, name: str, client: str) -> None:
    original = FMT[provider].parse_response(fixture(provider, f"{name}.response.json"))
    back = through(client, original)
    assert response_view(back, client) == response_view(original, client)
    assert (back.id, back.model) == (original.id, original.model)
    # tool-call arguments survive as JSON, and every call keeps a usable id
    assert all(c.id and json.loads(c.arguments or "{}") is not None for c in back.message.tool_calls)


@pytest.mark.parametrize("client", FAMILIES)
@pytest.mark.parametrize(("provider", "name"), STREAMS)
def test_every_stream_reaches_every_client(provider: str, name: str, client: str) -> None:
    rng = random.Random(f"{provider}/{name}/{client}")
    events = parse_stream(provider, stream_bytes(provider, name), rng)
    back = stream_through(client, events, rng)
    errors = [e for e in back if isinstance(e, ErrorEvent)]
    original_errors = [e for e in events if isinstance(e, ErrorEvent)]
    assert [e.error.kind for e in errors] == [e.error.kind for e in original_errors]
    assert [e.error.message for e in errors] == [e.error.message for e in original_errors]
    assert response_view(aggregate(back), client, last_signature_only=True) == \
        response_view(aggregate(events), client, last_signature_only=True)


@pytest.mark.parametrize("family", FAMILIES)
def test_a_parser_knows_when_its_stream_is_over(family: str) -> None:
    # `ended`: the terminal event was read (the driver then stops, even if the connection stays
    # open); `complete`: the answer is whole. Gemini has no terminal event: complete at its finish.
    events = parse_stream("openai_chat", stream_bytes("openai_chat", "openai-stop.stream.jsonl"))
    data = render_stream(family, events)
    parser = FMT[family].StreamParser()
    seen = []
    for line in data.splitlines(keepends=True):
        parser.feed(line)
        seen.append((parser.ended, parser.ended or getattr(parser, "complete", False)))
    assert not any(ended or complete for ended, complete in seen[:len(seen) // 2])
    if family == "gemini":
        assert not any(ended for ended, _ in seen) and seen[-1] == (False, True)
    else:
        assert seen[-1] == (True, True)
        last_data = max(i for i, line in enumerate(data.splitlines(keepends=True)) if line.startswith(b"data:"))
        assert not any(ended for ended, _ in seen[:last_data])  # not before the terminal event


@pytest.mark.parametrize("client", FAMILIES)
@pytest.mark.parametrize(("provider", "name"), [(f, n) for f, n in PAIRS
                                                if (ROOT / DIRS[f] / f"{n}.stream.jsonl").exists()
                                                or (ROOT / DIRS[f] / f"{n}.stream.sse").exists()])
def test_stream_aggregate_equals_the_non_stream_answer_for_every_pair(provider: str, name: str, client: str) -> None:
    stream_name = next(p.name for p in (ROOT / DIRS[provider]).glob(f"{name}.stream.*"))
    rng = random.Random(f"{provider}/{name}/{client}")
    streamed = aggregate(stream_through(client, parse_stream(provider, stream_bytes(provider, stream_name)), rng))
    whole = through(client, FMT[provider].parse_response(fixture(provider, f"{name}.response.json")))
    assert response_view(streamed, client, last_signature_only=True) == \
        response_view(whole, client, last_signature_only=True)
    assert (streamed.id, streamed.model) == (whole.id, whole.model)


# --------------------------------------------------------------------------------------------------
# Golden: every recorded client request, built for every other family and read back


def parse_client(family: str, body: bytes, req: Request | None = None) -> Request:
    """A family's inbound parse; Gemini takes model and stream from the URL, as the server passes them."""
    if family == "gemini":
        return FMT[family].parse_request(body, "gemini-2.5-flash" if req is None else "m",
                                         False if req is None else req.stream)
    return FMT[family].parse_request(body)


def recorded_request(family: str, name: str) -> Request:
    return parse_client(family, fixture(family, name))


def without_native_tools(req: Request) -> Request:
    tools = [t for t in req.tools if t.type != "native"]
    return req.model_copy(update={"tools": tools, "tool_choice": req.tool_choice if tools else None})


def _kept_reasoning(p: ReasoningPart, target: str) -> bool:
    """Reasoning replayed to a `target` channel: signed by that family (redacted thinking: Anthropic's);
    unsigned reasoning only to OpenAI Chat (`reasoning_content`). Everything else is dropped."""
    if p.signature == FMT["gemini"].SKIP_VALIDATOR_SIGNATURE and not p.text:
        return False  # Google's placeholder, which build_request puts on calls from another provider's history
    if p.redacted:
        return target == "anthropic"
    if p.signature:
        return p.signature_provider == target
    return target == "openai_chat" and bool(p.text)


def _schema(p: dict[str, Any] | None) -> dict[str, Any]:
    p = p or {"type": "object", "properties": {}}
    return p if "type" in p else {"type": "object", **p}


def _result_text(text: str) -> Any:
    try:  # Gemini carries a JSON-object result as an object: equal as JSON, not as text
        v = json.loads(text)
    except ValueError:
        return text
    return v if isinstance(v, dict) else text


def _part_view(p: Any) -> Any:
    if isinstance(p, TextPart):
        return ("text", p.text) if p.text else None
    if isinstance(p, ImagePart):
        # detail is dropped by Anthropic and Gemini; Gemini sends a URL with a guessed media type
        return ("image", p.media_type, p.data) if p.data else ("url", p.url)
    return None


def request_view(req: Request, target: str) -> dict[str, Any]:
    """What of a request must survive being built for a `target` channel, per docs/mapping.md."""
    system: list[tuple[str, str]] = []
    conversation: list[Any] = []
    for i, m in enumerate(req.messages):
        if m.role in ("system", "developer"):
            blocks = [p.text for p in m.content if isinstance(p, TextPart) and p.text]
            if target == "openai_responses" and i == 0 and m.role == "system":
                blocks = ["\n\n".join(blocks)]  # `instructions` is one string
            # Anthropic and Gemini have one system prompt: developer messages join it as system text
            role = m.role if target in ("openai_chat", "openai_responses") else "system"
            system += [(role, b) for b in blocks]
        elif m.role == "assistant":
            reasoning = [(p.text, p.signature if p.signature_provider == target else None, p.data)
                         for p in m.content if isinstance(p, ReasoningPart) and _kept_reasoning(p, target)]
            text = "".join(p.text for p in m.content if isinstance(p, TextPart))
            calls = [(tool_id(target, c.id), c.name, args_of(c.arguments)) for c in m.tool_calls]
            if reasoning or text or calls:
                conversation.append(("assistant", reasoning, text, calls))
        else:
            for p in m.content:
                if isinstance(p, ToolResultPart):
                    text = "".join(x.text for x in p.content if isinstance(x, TextPart))
                    conversation.append(("tool", tool_id(target, p.tool_call_id), p.name, _result_text(text),
                                         p.is_error and target in ("anthropic", "gemini"),  # no is_error in OpenAI
                                         [_part_view(x) for x in p.content if isinstance(x, ImagePart)]))
            parts = [v for v in map(_part_view, [p for p in m.content if not isinstance(p, ToolResultPart)]) if v]
            if parts:
                conversation.append(("user", parts))
    functions = [t for t in req.tools if t.type == "function"]
    tools = [(t.name, t.description or None, _schema(t.parameters),
              {"openai_chat": t.strict, "openai_responses": bool(t.strict), "anthropic": t.strict or None}.get(target))
             for t in functions]
    tc = req.tool_choice
    choice = None
    if tc is not None and functions:
        parallel = None if target == "gemini" or (target == "anthropic" and tc.mode == "none") else tc.disable_parallel
        choice = (tc.mode, tc.name, parallel)
    s = req.sampling
    carries = {  # the sampling fields each family has a place for
        "openai_chat": {"temperature", "top_p", "max_tokens", "stop", "seed", "n", "presence_penalty",
                        "frequency_penalty"},
        "openai_responses": {"temperature", "top_p", "max_tokens"},
        "anthropic": {"temperature", "top_p", "top_k", "max_tokens", "stop"},
        "gemini": {"temperature", "top_p", "top_k", "max_tokens", "stop", "seed", "n", "presence_penalty",
                   "frequency_penalty"},
    }[target]
    sampling = {k: v for k, v in s.model_dump().items() if k in carries and v is not None}
    if target == "anthropic":
        sampling.setdefault("max_tokens", A.DEFAULT_MAX_TOKENS)  # Anthropic requires it
        if "temperature" in sampling:
            sampling["temperature"] = min(1.0, sampling["temperature"])
        budget = req.reasoning_budget
        if budget and budget > 0 and req.source != "anthropic" and _tool_turn_without_anthropic_thinking(req):
            budget = None  # Anthropic refuses thinking after such a turn: the request goes without it
        if budget:  # thinking on: Anthropic rejects these sampling knobs, and wants max_tokens above the budget
            if sampling.get("temperature", 1.0) != 1.0:
                del sampling["temperature"]
            if sampling.get("top_p", 1.0) < 0.95:
                del sampling["top_p"]
            sampling.pop("top_k", None)
            if budget > 0 and max(budget, A.MIN_THINKING_BUDGET) >= sampling["max_tokens"]:
                sampling["max_tokens"] += max(budget, A.MIN_THINKING_BUDGET)
    rf = req.response_format
    fmt = None if rf is None else (rf.type, rf.json_schema)
    if (target == "anthropic" and rf is not None and rf.type != "json_schema") or \
            (target == "gemini" and rf is not None and rf.type == "text"):
        fmt = None  # no Anthropic JSON-object mode; "text" is Gemini's default
    # Reasoning settings: efforts survive to the OpenAI families (Responses maps a budget to an effort),
    # budgets to the budget families (Anthropic raises them to its minimum of 1024).
    if target in ("openai_chat", "openai_responses"):
        effort = req.reasoning_effort
        if effort is None and req.reasoning_budget is not None and target == "openai_responses":
            effort = FMT[target]._effort_for_budget(req.reasoning_budget)
        reasoning: Any = effort
    else:
        b = req.reasoning_budget
        if target == "anthropic" and b and b > 0 and req.source != "anthropic" and \
                _tool_turn_without_anthropic_thinking(req):
            b = None
        reasoning = max(b, A.MIN_THINKING_BUDGET) if b and b > 0 and target == "anthropic" else b
    return {"system": system, "conversation": conversation, "tools": tools, "tool_choice": choice,
            "sampling": sampling, "response_format": fmt, "stream": req.stream, "reasoning": reasoning,
            "user": None if target == "gemini" else req.user}


def _tool_turn_without_anthropic_thinking(req: Request) -> bool:
    """Whether the conversation ends in a tool loop (the assistant messages since the last user
    message that is more than tool results) whose first message an Anthropic channel is sent does
    not start with thinking Anthropic can replay (then it gets no thinking: docs/mapping.md §4)."""
    turn: list[Any] = []
    for m in reversed(req.messages):
        if m.role == "assistant":
            turn.insert(0, m)
        elif m.role == "tool" or all(isinstance(p, ToolResultPart) for p in m.content):
            continue
        else:
            break
    sent = []
    for m in turn:
        kept = [p for p in m.content
                if (isinstance(p, ReasoningPart) and (p.data if p.redacted else
                                                      replayable(p.signature, p.signature_provider, "anthropic")))
                or (isinstance(p, TextPart) and p.text)]
        if kept or m.tool_calls:  # an empty message is not sent
            sent.append((kept, m.tool_calls))
    if not any(calls for _, calls in sent):
        return False
    kept = sent[0][0]
    return not (kept and isinstance(kept[0], ReasoningPart))


@pytest.mark.parametrize("target", FAMILIES)
@pytest.mark.parametrize(("client", "name"), REQUESTS)
def test_every_request_reaches_every_channel(client: str, name: str, target: str) -> None:
    original = recorded_request(client, name)
    assert original.source == client
    foreign_native = [t for t in original.tools if t.type == "native" and NATIVE_TOOL_CHANNEL.get(t.provider or "")
                      != ("openai" if target == "openai_chat" else target)]
    if foreign_native:
        # a native tool the target cannot run is a clear 400 naming the tool, never a silent drop
        with pytest.raises(FormatError) as exc:
            FMT[target].build_request(original, "m")
        assert exc.value.status == 400 and "tools" in (exc.value.param or "")
        original = without_native_tools(original)
    body = FMT[target].build_request(original, "m")
    back = parse_client(target, body, original)
    assert back.source == target
    assert request_view(back, target) == request_view(original, target)


# An unknown field each family passes through to its own channels (Gemini passes only fields it knows).
EXTRA = {"openai_chat": ("logit_bias", {"50256": -100}), "openai_responses": ("prompt_cache_key", "k1"),
         "anthropic": ("service_tier", "auto"), "gemini": ("cachedContent", "cachedContents/abc")}


@pytest.mark.parametrize("target", FAMILIES)
@pytest.mark.parametrize(("client", "name"), REQUESTS)
def test_extra_fields_reach_only_their_own_family(client: str, name: str, target: str) -> None:
    key, value = EXTRA[client]
    body = orjson.loads(fixture(client, name))
    body[key] = value
    req = without_native_tools(parse_client(client, orjson.dumps(body)))
    assert req.extra_body[key] == value
    built = FMT[target].build_request(req, "m")
    plain = FMT[target].build_request(req.model_copy(update={"extra_body": {}}), "m")
    if target != client:
        assert built == plain  # another family's extra fields never reach this channel
    else:
        assert orjson.loads(built)[key] == value  # its own family's channel gets them untouched


# --------------------------------------------------------------------------------------------------
# Errors: status, kind and retry-after across families (529 ↔ 503 ↔ UNAVAILABLE)

# What a client of any family can tell apart: the kind it reads back from the status and body we send.
# CONNECTION is a 502 and UNAVAILABLE a 503 to every client (lossy: they read as server error / overloaded).
KIND_BACK = {k: k for k in ErrorKind} | {ErrorKind.CONNECTION: ErrorKind.SERVER_ERROR,
                                         ErrorKind.UNAVAILABLE: ErrorKind.OVERLOADED}
OVERLOAD_STATUS = {"openai_chat": 503, "openai_responses": 503, "anthropic": 529, "gemini": 503}


@pytest.mark.parametrize("client", FAMILIES)
@pytest.mark.parametrize("kind", list(ErrorKind))
def test_error_kind_and_retry_after_survive_every_client_format(kind: ErrorKind, client: str) -> None:
    m = FMT[client]
    err = Error(kind=kind, status=0, message="upstream said no", retry_after=1.5)
    status, headers, body = m.error_status(err), m.error_headers(err), m.render_error(err)
    back = m.parse_error(status, headers, body)
    assert back.kind is KIND_BACK[kind]
    assert back.message == "upstream said no"
    # OpenAI's retry-after is whole seconds (rounded up); Anthropic adds retry-after-ms, Gemini RetryInfo
    assert back.retry_after == (2.0 if client.startswith("openai") else 1.5)
    assert headers["retry-after"] == "2"
    if kind is ErrorKind.OVERLOADED:
        assert status == OVERLOAD_STATUS[client]
        if client == "anthropic":
            assert orjson.loads(body)["error"]["type"] == "overloaded_error"
        if client == "gemini":
            assert orjson.loads(body)["error"]["status"] == "UNAVAILABLE"


ANTHROPIC_529 = (529, {"retry-after": "7"},
                 b'{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}')


@pytest.mark.parametrize("client", FAMILIES)
@pytest.mark.parametrize(("provider", "answer"), [
    ("anthropic", ANTHROPIC_529),
    ("gemini", (429, {}, fixture("gemini", "gemini-error-429.json"))),
    ("gemini", (503, {}, fixture("gemini", "gemini-error-503.json"))),
    ("openai_chat", (429, {"retry-after": "20"}, b'{"error":{"message":"Rate limit reached","type":"requests",'
                                                 b'"param":null,"code":"rate_limit_exceeded"}}')),
    ("openai_responses", (503, {}, b'{"error":{"message":"overloaded","type":"server_error"}}')),
])
def test_provider_errors_are_translated_for_every_client(provider: str, answer: tuple[int, dict[str, str], bytes],
                                                         client: str) -> None:
    err = FMT[provider].parse_error(*answer)
    m = FMT[client]
    status, headers = m.error_status(err), m.error_headers(err)
    back = m.parse_error(status, headers, m.render_error(err))
    assert back.kind is err.kind
    if err.kind is ErrorKind.OVERLOADED:
        assert status == OVERLOAD_STATUS[client]  # Anthropic 529 ↔ OpenAI 503 ↔ Gemini 503 UNAVAILABLE
    if err.retry_after is not None:
        assert headers["retry-after"] == str(math.ceil(err.retry_after))
        assert back.retry_after is not None and back.retry_after >= err.retry_after
    else:
        assert "retry-after" not in headers


# In-stream errors carry no HTTP status. Anthropic and Gemini name every kind; the OpenAI families only
# tell invalid requests and rate limits apart (Chat also authentication and permission).
def stream_kind_back(kind: ErrorKind, client: str) -> ErrorKind:
    kind = KIND_BACK[kind]
    if client in ("anthropic", "gemini") or kind in (ErrorKind.INVALID_REQUEST, ErrorKind.RATE_LIMITED):
        return kind
    if client == "openai_chat" and kind in (ErrorKind.AUTHENTICATION, ErrorKind.PERMISSION):
        return kind
    if client == "openai_chat" and kind is ErrorKind.NOT_FOUND:
        return ErrorKind.INVALID_REQUEST
    return ErrorKind.SERVER_ERROR


@pytest.mark.parametrize("client", FAMILIES)
@pytest.mark.parametrize("kind", list(ErrorKind))
def test_an_error_half_way_ends_every_client_stream_well_formed(kind: ErrorKind, client: str) -> None:
    events: list[StreamEvent] = [StreamStart(id="resp_e", model="m"), TextDelta(text="partial "),
                                 ErrorEvent(error=Error(kind=kind, status=0, message="cut"))]
    r = FMT[client].StreamRenderer(client_request(client))
    data = b"".join(r.render(ev) for ev in events)
    assert r.finish() == b""  # the error was the end of the stream
    back = parse_stream(client, data)  # a well-formed stream: its parser accepts it whole
    errors = [e for e in back if isinstance(e, ErrorEvent)]
    assert len(errors) == 1 and errors[0].error.kind is stream_kind_back(kind, client)
    assert errors[0].error.message == "cut"
    assert "".join(e.text for e in back if isinstance(e, TextDelta)) == "partial "


# --------------------------------------------------------------------------------------------------
# Reasoning signatures: shown to any client, replayed only to the family that issued them

SIGNATURES = {"anthropic": "RXFRQkNrWUlCaGdDS2tB", "gemini": "Q2lJQmNzamFmQUN5NjVW",
              "openai_responses": "gAAAAABqaR3-Zx6TUny-PRNqH0Pc_FVByEQ"}


def replay_history(client: str, rendered: bytes, call_id: str) -> bytes:
    """What a `client` of that family sends on its next turn: the question, our answer as it received
    it (signatures included, unchanged), and the tool result."""
    answer = orjson.loads(rendered)
    question, result = "weather in Paris?", "18C"
    if client == "openai_chat":
        msg = answer["choices"][0]["message"]
        return orjson.dumps({"model": "m", "messages": [
            {"role": "user", "content": question}, msg, {"role": "tool", "tool_call_id": call_id, "content": result}]})
    if client == "openai_responses":
        return orjson.dumps({"model": "m", "input": [
            {"role": "user", "content": question}, *answer["output"],
            {"type": "function_call_output", "call_id": call_id, "output": result}]})
    if client == "anthropic":
        return orjson.dumps({"model": "m", "max_tokens": 100, "messages": [
            {"role": "user", "content": question}, {"role": "assistant", "content": answer["content"]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call_id, "content": result}]}]})
    return orjson.dumps({"contents": [
        {"role": "user", "parts": [{"text": question}]}, answer["candidates"][0]["content"],
        {"role": "user", "parts": [{"functionResponse": {"id": call_id, "name": "get_weather",
                                                         "response": {"result": result}}}]}]})


def rendered_call_id(client: str, rendered: bytes) -> str:
    a = orjson.loads(rendered)
    if client == "openai_chat":
        return str(a["choices"][0]["message"]["tool_calls"][0]["id"])
    if client == "openai_responses":
        return str(next(i["call_id"] for i in a["output"] if i["type"] == "function_call"))
    if client == "anthropic":
        return str(next(b["id"] for b in a["content"] if b["type"] == "tool_use"))
    return str(next(p["functionCall"]["id"] for p in a["candidates"][0]["content"]["parts"] if "functionCall" in p))


def signatures_of(req: Request) -> list[tuple[str, str | None]]:
    skip = FMT["gemini"].SKIP_VALIDATOR_SIGNATURE
    return [(p.signature, p.signature_provider) for m in req.messages if m.role == "assistant"
            for p in m.content if isinstance(p, ReasoningPart) and p.signature and p.signature != skip]


def reasoning_text_of(req: Request) -> str:
    return "".join(p.text for m in req.messages if m.role == "assistant" for p in m.content
                   if isinstance(p, ReasoningPart))


@pytest.mark.parametrize("channel", FAMILIES)
@pytest.mark.parametrize("client", FAMILIES)
@pytest.mark.parametrize("issuer", [*sorted(SIGNATURES), None])
def test_a_signature_travels_through_any_client_and_is_replayed_only_to_its_issuer(
        issuer: str | None, client: str, channel: str) -> None:
    sig = SIGNATURES.get(issuer or "", "b3BhcXVl")
    answer = Response(id="resp_s", model="m", finish_reason="tool_calls", message=Message(
        role="assistant", content=[ReasoningPart(text="Need the weather.", signature=sig, signature_provider=issuer),
                                   TextPart(text="Checking.")],
        tool_calls=[ToolCall(id="toolu_01", name="get_weather", arguments='{"city":"Paris"}')]))
    rendered = FMT[client].render_response(answer)
    if issuer != client and client in SIGNING:
        assert sig not in rendered.decode()  # another family's signature is shown wrapped, opaque
    turn = parse_client(client, replay_history(client, rendered, rendered_call_id(client, rendered)),
                        Request(model="m", messages=[]))
    # the gateway still knows whose signature the client sent back (Chat carries reasoning text only)
    carried = client in SIGNING
    assert signatures_of(turn) == ([(sig, issuer or "unknown")] if carried else [])
    assert reasoning_text_of(turn) == "Need the weather."
    if channel == "anthropic" and client != "anthropic":
        # Anthropic takes thinking back in the final turn only with thinking on (docs/mapping.md §4):
        # without it, none goes; with it, what it signed is replayed.
        off = parse_client(channel, FMT[channel].build_request(turn, "m"), turn)
        assert signatures_of(off) == [] and reasoning_text_of(off) == ""
        turn = turn.model_copy(update={"reasoning_budget": 2048})
    upstream = parse_client(channel, FMT[channel].build_request(turn, "m"), turn)
    replayed = carried and issuer == channel
    assert signatures_of(upstream) == ([(sig, channel)] if replayed else [])
    # without its signature, the thought travels as text only where the family takes that: as a Gemini
    # thought part, or as OpenAI Chat reasoning_content when it is unsigned (Chat clients send no
    # signatures; a Gemini client's thought is unsigned when its signature sits on the call)
    unsigned = "".join(p.text for m in turn.messages for p in m.content
                       if isinstance(p, ReasoningPart) and not p.signature)
    expected = {"gemini": "Need the weather.", "openai_chat": unsigned}.get(channel, "")
    assert reasoning_text_of(upstream) == ("Need the weather." if replayed else expected)
    assert [c.name for m in upstream.messages for c in m.tool_calls] == ["get_weather"]


def test_wrapped_signatures_are_base64_and_name_their_issuer() -> None:
    wrapped = export_signature("sig/+=", "anthropic", "gemini")
    assert wrapped.startswith(WRAP_PREFIX) and wrapped != "sig/+="
    assert import_signature(wrapped, "gemini") == ("sig/+=", "anthropic")
    urlsafe = wrapped.replace("+", "-").replace("/", "_").rstrip("=")  # as google-genai may send bytes back
    assert import_signature(urlsafe, "gemini") == ("sig/+=", "anthropic")
    assert export_signature("own", "gemini", "gemini") == "own"
    assert import_signature(export_signature("x", None, "gemini"), "gemini") == ("x", "unknown")  # never replayed
    assert import_signature("plain", "anthropic") == ("plain", "anthropic")
    assert import_signature(WRAP_PREFIX + "!!", "anthropic") == (WRAP_PREFIX + "!!", "anthropic")


# --------------------------------------------------------------------------------------------------
# Known problems, fixed: each pinned by a test


def test_responses_budget_zero_is_none_and_negative_lets_the_model_decide() -> None:
    R = FMT["openai_responses"]
    hi = [Message(role="user", content=[TextPart(text="hi")])]

    def sent(budget: int) -> dict[str, Any]:
        return orjson.loads(R.build_request(Request(model="m", messages=hi, reasoning_budget=budget), "m"))

    assert sent(0)["reasoning"] == {"effort": "none"} and "include" not in sent(0)
    adaptive = sent(-1)  # Anthropic `adaptive`, Gemini `-1`: reasoning on, at OpenAI's default effort
    assert adaptive["reasoning"] == {"summary": "auto"} and adaptive["include"] == ["reasoning.encrypted_content"]
    assert sent(-7)["reasoning"] == {"summary": "auto"}
    assert [sent(b)["reasoning"]["effort"] for b in (1, 4095, 4096, 16383, 16384)] == \
        ["low", "low", "medium", "medium", "high"]
    # and the same request from an Anthropic client asking for adaptive thinking
    claude = parse_client("anthropic", orjson.dumps({"model": "c", "max_tokens": 10, "thinking": {"type": "adaptive"},
                                                     "messages": [{"role": "user", "content": "hi"}]}))
    assert orjson.loads(R.build_request(claude, "m"))["reasoning"] == {"summary": "auto"}
    gem = parse_client("gemini", orjson.dumps({"contents": [{"parts": [{"text": "hi"}]}], "generationConfig": {
        "thinkingConfig": {"thinkingBudget": -1}}}))
    assert orjson.loads(A.build_request(gem, "m"))["thinking"] == {"type": "adaptive"}


HOSTED = {"type": "web_search", "search_context_size": "low"}
CUSTOM = {"type": "custom", "custom": {"name": "grammar"}}


def test_native_tools_are_labelled_with_their_family_and_route_only_there() -> None:
    responses = parse_client("openai_responses", orjson.dumps({"model": "m", "input": "hi", "tools": [HOSTED]}))
    chat = parse_client("openai_chat", orjson.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}],
                                                     "tools": [CUSTOM]}))
    assert responses.tools[0].provider == "openai_responses" and chat.tools[0].provider == "openai"
    assert needs_of(responses).native_tools == {"openai_responses"} and needs_of(chat).native_tools == {"openai"}
    assert NATIVE_TOOL_CHANNEL["openai_responses"] == "openai_responses" and NATIVE_TOOL_CHANNEL["openai"] == "openai"
    for req, runs_on in ((responses, "openai_responses"), (chat, "openai_chat")):
        for family in FAMILIES:
            if family == runs_on:
                assert orjson.loads(FMT[family].build_request(req, "m"))["tools"] == [req.tools[0].native]
            else:
                with pytest.raises(FormatError):
                    FMT[family].build_request(req, "m")


def test_chat_tool_results_carry_the_name_gemini_needs() -> None:
    req = recorded_request("anthropic", "anthropic-claude-code.request.json")
    chat = parse_client("openai_chat", FMT["openai_chat"].build_request(req, "m"))
    results = [p for m in chat.messages for p in m.content if isinstance(p, ToolResultPart)]
    assert results and all(p.name for p in results)
    contents = orjson.loads(FMT["gemini"].build_request(chat, "m"))["contents"]
    names = [p["functionResponse"]["name"] for c in contents for p in c["parts"] if "functionResponse" in p]
    assert names == [p.name for p in results]


def test_several_system_blocks_stay_apart_in_responses_instructions() -> None:
    req = recorded_request("anthropic", "anthropic-claude-code.request.json")
    blocks = [p.text for p in req.messages[0].content if isinstance(p, TextPart)]
    assert len(blocks) > 1
    assert orjson.loads(FMT["openai_responses"].build_request(req, "m"))["instructions"] == "\n\n".join(blocks)


# --------------------------------------------------------------------------------------------------
# Properties: on what all four families carry, unified → A → unified → B → unified is the identity

PAIR = st.sampled_from(list(itertools.product(FAMILIES, FAMILIES)))
ids = st.from_regex(r"call_[A-Za-z0-9]{1,12}", fullmatch=True)
fnames = st.from_regex(r"[a-z][a-z0-9_]{0,10}", fullmatch=True)
texts = st.text(st.characters(codec="utf-8", exclude_categories=["Cs", "Cc"]), min_size=1, max_size=24).filter(
    lambda t: t.strip() == t and bool(t) and not t.startswith("{"))  # a "{…}" result is JSON to Gemini
scalars = st.none() | st.booleans() | st.integers(-(2 ** 53), 2 ** 53) | st.text(max_size=8)
json_objects = st.dictionaries(fnames, st.recursive(scalars, lambda inner: st.lists(inner, max_size=3)
                                                    | st.dictionaries(fnames, inner, max_size=2), max_leaves=6),
                               max_size=3)
arguments = json_objects.map(lambda d: orjson.dumps(d).decode())  # compact: how every family re-serialises
images = st.builds(ImagePart, media_type=st.sampled_from(["image/png", "image/jpeg", "image/gif", "image/webp"]),
                   data=st.binary(min_size=1, max_size=16).map(lambda b: base64.b64encode(b).decode()))
efforts = st.none() | st.sampled_from(["low", "medium", "high"])


@st.composite
def portable_requests(draw: st.DrawFn) -> Request:
    """Requests with only what every family carries both ways (docs/mapping.md, "portable subset"):
    one leading system text, user text and base64 images, assistant text and tool calls answered in
    order by text results, function tools with object schemas, tool choice, max_tokens, temperature
    and top_p in [0, 1], JSON-schema output, a reasoning effort, stream."""
    messages: list[Message] = []
    if draw(st.booleans()):
        messages.append(Message(role="system", content=[TextPart(text=draw(texts))]))
    used: set[str] = set()
    for _ in range(draw(st.integers(1, 3))):
        messages.append(Message(role="user", content=draw(st.lists(st.builds(TextPart, text=texts) | images,
                                                                   min_size=1, max_size=3))))
        calls = [ToolCall(id=cid, name=draw(fnames), arguments=draw(arguments))
                 for cid in draw(st.lists(ids.filter(lambda i: i not in used), max_size=3, unique=True))]
        used.update(c.id for c in calls)
        text = draw(st.none() | texts)
        if not calls and text is None:
            text = "ok"
        messages.append(Message(role="assistant", content=[TextPart(text=text)] if text else [], tool_calls=calls))
        for c in calls:
            result = draw(texts | json_objects.filter(bool).map(lambda d: orjson.dumps(d).decode()))
            messages.append(Message(role="tool", content=[ToolResultPart(tool_call_id=c.id, name=c.name,
                                                                         content=[TextPart(text=result)])]))
    tools = [Tool(name=n, description=draw(st.none() | texts),
                  parameters={"type": "object", "properties": {k: {"type": "string"} for k in draw(
                      st.lists(fnames, max_size=2, unique=True))}})
             for n in draw(st.lists(fnames, max_size=3, unique=True))]
    choice = None
    if tools:
        choice = draw(st.none() | st.sampled_from([ToolChoice(mode="auto"), ToolChoice(mode="none"),
                                                   ToolChoice(mode="required"),
                                                   ToolChoice(mode="function", name=tools[0].name)]))
    schema = {"type": "object", "properties": {"answer": {"type": "string"}}}
    return Request(
        model="m", messages=messages, tools=tools, tool_choice=choice,
        response_format=draw(st.sampled_from([None, ResponseFormat(type="json_schema", schema=schema)])),
        # (from 16: the fewest output tokens a Responses request may ask for; fewer become 16 there)
        sampling=Sampling(max_tokens=draw(st.integers(16, 100_000)), temperature=draw(st.none() | st.floats(0, 1)),
                          top_p=draw(st.none() | st.floats(0, 1))),
        stream=draw(st.booleans()), reasoning_effort=draw(efforts))


def portable(req: Request) -> Request:
    """The fields outside the portable subset that a trip legitimately sets: who sent it, the family's
    own extras (Responses' store/include/summary), the default JSON-schema name, `strict` unset vs false."""
    out = req.model_copy(deep=True, update={"source": None, "extra_body": {}, "model": "m"})
    if out.response_format is not None:
        out.response_format.name = None
    for t in out.tools:
        t.strict = bool(t.strict) or None
    return out


def via(family: str, req: Request) -> Request:
    return parse_client(family, FMT[family].build_request(req, "m"), req)


@PROPS
@given(portable_requests(), PAIR)
def test_property_request_identity_through_any_two_families(req: Request, pair: tuple[str, str]) -> None:
    a, b = pair
    once = via(a, req)
    assert once.source == a
    assert portable(via(b, once)) == portable(req)


@st.composite
def portable_responses(draw: st.DrawFn, signed: bool = False) -> Response:
    """Answers in the StreamAggregator's shape (one reasoning part, then one text part) with what every
    family carries: reasoning text (with a signature and its issuer when `signed`), text, tool calls,
    finish reason, usage without reasoning tokens (Anthropic has none) or cache writes (Gemini has none)."""
    content: list[Any] = []
    if draw(st.booleans()) or signed:
        sig, issuer = (draw(st.from_regex(r"[A-Za-z0-9+/]{4,40}", fullmatch=True)),
                       draw(st.sampled_from([*sorted(SIGNING), None]))) if signed else (None, None)
        content.append(ReasoningPart(text=draw(texts), signature=sig,
                                     signature_provider=issuer or ("unknown" if sig else None)))
    if draw(st.booleans()):
        content.append(TextPart(text=draw(texts)))
    calls = [ToolCall(id=cid, name=draw(fnames), arguments=draw(arguments))
             for cid in draw(st.lists(ids, max_size=3, unique=True))]
    finish = draw(st.sampled_from(["tool_calls", "length", "content_filter"] if calls
                                  else ["stop", "length", "content_filter"]))
    prompt = draw(st.integers(0, 10 ** 6))
    usage = Usage(prompt_tokens=prompt, completion_tokens=draw(st.integers(0, 10 ** 6)),
                  cached_tokens=draw(st.integers(0, prompt))).finalised()
    return Response(id=draw(st.from_regex(r"[A-Za-z0-9_]{1,16}", fullmatch=True)), model=draw(fnames),
                    message=Message(role="assistant", content=content, tool_calls=calls), finish_reason=finish,
                    usage=usage)


@PROPS
@given(portable_responses(), PAIR)
def test_property_response_identity_through_any_two_families(resp: Response, pair: tuple[str, str]) -> None:
    a, b = pair
    assert without_native(through(b, through(a, resp))) == resp


SIGNING_PAIR = st.sampled_from(list(itertools.product(sorted(SIGNING), sorted(SIGNING))))


@PROPS
@given(portable_responses(signed=True), SIGNING_PAIR)
def test_property_signatures_and_their_issuer_survive_any_two_signing_families(
        resp: Response, pair: tuple[str, str]) -> None:
    a, b = pair
    assert without_native(through(b, through(a, resp))) == resp


def events_of(resp: Response, rng: random.Random) -> list[StreamEvent]:
    """A plausible provider stream for `resp`: texts and arguments cut into random deltas, the
    signature after its thinking (Anthropic's order), finish then usage."""

    def cuts(s: str) -> list[str]:
        points = sorted(rng.sample(range(1, len(s)), min(len(s) - 1, rng.randint(0, 4)))) if len(s) > 1 else []
        return [s[i:j] for i, j in itertools.pairwise([0, *points, len(s)])]

    events: list[StreamEvent] = [StreamStart(id=resp.id, model=resp.model)]
    for p in resp.message.content:
        if isinstance(p, ReasoningPart):
            events += [ReasoningDelta(text=c) for c in cuts(p.text)]
            if p.signature:
                events.append(ReasoningDelta(signature=p.signature, signature_provider=p.signature_provider))
        elif isinstance(p, TextPart):
            events += [TextDelta(text=c) for c in cuts(p.text)]
    for i, c in enumerate(resp.message.tool_calls):
        first, *rest = cuts(c.arguments)
        events.append(ToolCallDelta(index=i, id=c.id, name=c.name, arguments=first))
        events += [ToolCallDelta(index=i, arguments=f) for f in rest]
    assert resp.finish_reason is not None and resp.usage is not None
    return [*events, FinishEvent(reason=resp.finish_reason), UsageEvent(usage=resp.usage)]


@PROPS
@given(portable_responses(), PAIR, st.randoms(use_true_random=False))
def test_property_stream_identity_through_any_two_families_any_chunking(
        resp: Response, pair: tuple[str, str], rng: random.Random) -> None:
    a, b = pair
    events = events_of(resp, rng)
    assert without_native(aggregate(stream_through(b, stream_through(a, events, rng), rng))) == aggregate(events) == resp


@PROPS
@given(portable_responses(signed=True), SIGNING_PAIR, st.randoms(use_true_random=False))
def test_property_signed_stream_identity_through_any_two_signing_families(
        resp: Response, pair: tuple[str, str], rng: random.Random) -> None:
    a, b = pair
    events = events_of(resp, rng)
    assert without_native(aggregate(stream_through(b, stream_through(a, events, rng), rng))) == resp


def test_what_a_channel_cannot_carry_is_a_clear_400_not_a_drop() -> None:
    # an Anthropic client's tool result with a screenshot: OpenAI Chat tool messages take text only
    shot = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}}
    claude = parse_client("anthropic", orjson.dumps({"model": "c", "max_tokens": 10, "messages": [
        {"role": "user", "content": "look"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "screen", "input": {}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": [shot]}]}]}))
    with pytest.raises(FormatError) as exc:
        FMT["openai_chat"].build_request(claude, "m")
    assert exc.value.status == 400 and exc.value.param == "messages[2].content[0].content"
    for family in ("openai_responses", "anthropic", "gemini"):  # they carry images in tool results
        result = via(family, claude).messages[2].content[0]
        assert isinstance(result, ToolResultPart)
        assert [x.data for x in result.content if isinstance(x, ImagePart)] == ["iVBORw0KGgo="]
    # a Gemini client's HEIC photo: Anthropic takes jpeg, png, gif and webp only
    gem = parse_client("gemini", orjson.dumps({"contents": [{"parts": [
        {"text": "what is this?"}, {"inlineData": {"mimeType": "image/heic", "data": "AAAA"}}]}]}))
    with pytest.raises(FormatError) as exc:
        A.build_request(gem, "m")
    assert exc.value.status == 400 and "image/heic" in exc.value.message
