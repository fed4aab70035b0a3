"""Anthropic Messages (`POST /v1/messages`) ⇄ the unified model, in both roles, streams included."""

from __future__ import annotations

import math
import re
import zlib
from collections.abc import Mapping
from typing import Any

import orjson

from axonsim.formats import (
    FormatError,
    UpstreamErrorBody,
    check_range,
    refuse_foreign_fields,
    retry_after,
    status_message,
)
from axonsim.formats.json_prefix import ObjectPrefix
from axonsim.formats.parsed import Parsed
from axonsim.formats.signatures import export_signature, import_signature, replayable
from axonsim.formats.sse import SSEDecoder, SSEEvent, encode
from axonsim.unified import (
    Error,
    ErrorEvent,
    ErrorKind,
    FinishEvent,
    FinishReason,
    ImagePart,
    Message,
    NativeBlock,
    Part,
    ReasoningDelta,
    ReasoningPart,
    Request,
    Response,
    ResponseFormat,
    Sampling,
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
    error_kind_for_status,
)

__all__ = [
    "API_VERSION",
    "DEFAULT_MAX_TOKENS",
    "StreamParser",
    "StreamRenderer",
    "auth_headers",
    "build_request",
    "check_request",
    "error_headers",
    "error_status",
    "parse_error",
    "parse_request",
    "parse_response",
    "render_error",
    "render_response",
    "request_path",
    "response_usage",
]

FAMILY = "anthropic"  # Request.source and signature_provider of what this module parses

# The version we speak upstream. Clients may send newer ones (SDK 2.x sends 2026-10-21); we never
# reject those inbound, but upstream we send the one whose wire shape this module implements.
API_VERSION = "2023-06-01"
# Anthropic requires max_tokens, the other families do not: a request from them needs one.
DEFAULT_MAX_TOKENS = 4096
# Anthropic rejects extended-thinking budgets below this.
MIN_THINKING_BUDGET = 1024

_KNOWN_FIELDS = frozenset({
    "model", "messages", "max_tokens", "system", "temperature", "top_p", "top_k", "stop_sequences",
    "stream", "metadata", "tools", "tool_choice", "thinking", "output_config",
})

_FINISH_FROM_STOP: dict[str, FinishReason] = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",  # "continue the turn": no unified equivalent (lossy)
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}
_STOP_FROM_FINISH: dict[str, str] = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "content_filter": "refusal",
    "error": "end_turn",  # Anthropic has no error stop reason; the error itself travels separately
}

_TYPE_STATUS: dict[str, int] = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "billing_error": 402,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "timeout_error": 504,
    "overloaded_error": 529,
}
_STATUS_TYPE: dict[int, str] = {s: t for t, s in _TYPE_STATUS.items()} | {408: "timeout_error"}
_TYPE_KIND: dict[str, ErrorKind] = {
    "invalid_request_error": ErrorKind.INVALID_REQUEST,
    "authentication_error": ErrorKind.AUTHENTICATION,
    # A billing problem belongs to the channel's key, not to the client's request: fail over.
    "billing_error": ErrorKind.PERMISSION,
    "permission_error": ErrorKind.PERMISSION,
    "not_found_error": ErrorKind.NOT_FOUND,
    "request_too_large": ErrorKind.INVALID_REQUEST,
    "rate_limit_error": ErrorKind.RATE_LIMITED,
    "api_error": ErrorKind.SERVER_ERROR,
    "timeout_error": ErrorKind.TIMEOUT,
    "overloaded_error": ErrorKind.OVERLOADED,
}
_KIND_STATUS: dict[ErrorKind, int] = {
    ErrorKind.INVALID_REQUEST: 400,
    ErrorKind.AUTHENTICATION: 401,
    ErrorKind.PERMISSION: 403,
    ErrorKind.NOT_FOUND: 404,
    ErrorKind.RATE_LIMITED: 429,
    ErrorKind.OVERLOADED: 529,
    ErrorKind.SERVER_ERROR: 500,
    ErrorKind.TIMEOUT: 504,
    ErrorKind.CONNECTION: 502,
    ErrorKind.UNAVAILABLE: 503,
}

_IMAGE_TYPES = ("image/jpeg", "image/png", "image/gif", "image/webp")
# Base64 prefixes of each accepted image type's magic bytes, for images that arrive without a type.
_IMAGE_MAGIC = (("/9j/", "image/jpeg"), ("iVBORw0KGgo", "image/png"), ("R0lGOD", "image/gif"), ("UklGR", "image/webp"))

# Key-shaped substrings (sk-ant-…, sk-…, Google AIza…, bearer tokens) in upstream messages, which
# clients get to read: an Anthropic-compatible upstream may echo the key it was sent.
_SECRET = re.compile(r"\b(?:sk-[A-Za-z0-9_*\-]{6,}|AIza[0-9A-Za-z_\-]{20,})|Bearer\s+\S+")

_ID_OK = re.compile(r"[a-zA-Z0-9_-]+")
_ID_BAD = re.compile(r"[^a-zA-Z0-9_-]")


# --------------------------------------------------------------------------------------------------
# Small validators: every failure names the field in Anthropic's own dotted-path style.


def _loads(body: bytes | str, what: str) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as e:
        raise FormatError(f"{what} is not valid JSON: {e}") from None


def _obj(v: Any, path: str) -> dict[str, Any]:
    if not isinstance(v, dict):
        raise FormatError(f"{path}: expected an object", path)
    return v


def _list(v: Any, path: str) -> list[Any]:
    if not isinstance(v, list):
        raise FormatError(f"{path}: expected an array", path)
    return v


def _str(v: Any, path: str) -> str:
    if not isinstance(v, str):
        raise FormatError(f"{path}: expected a string", path)
    return v


def _int(v: Any, path: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise FormatError(f"{path}: expected an integer", path)
    return v


def _num(v: Any, path: str) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise FormatError(f"{path}: expected a number", path)
    return float(v)


def _bool(v: Any, path: str) -> bool:
    if not isinstance(v, bool):
        raise FormatError(f"{path}: expected a boolean", path)
    return v


def _cache(b: dict[str, Any], path: str) -> dict[str, Any] | None:
    cc = b.get("cache_control")
    return None if cc is None else _obj(cc, f"{path}.cache_control")


def _tool_id(raw: str) -> str:
    """Anthropic ids must match ^[a-zA-Z0-9_-]+$. A foreign id is cleaned and suffixed with a hash of
    the original, so the tool_use and its tool_result still agree and distinct ids stay distinct."""
    if _ID_OK.fullmatch(raw):
        return raw
    clean = _ID_BAD.sub("_", raw) or "toolu"
    return f"{clean}_{zlib.crc32(raw.encode()):08x}"


def _tokens(u: Mapping[str, Any], key: str) -> int:
    v = u.get(key)
    return v if isinstance(v, int) and not isinstance(v, bool) else 0


def _usage(u: Mapping[str, Any]) -> Usage:
    # Anthropic's input_tokens excludes cache reads and writes; the unified prompt includes them.
    inp, out = _tokens(u, "input_tokens"), _tokens(u, "output_tokens")
    read, write = _tokens(u, "cache_read_input_tokens"), _tokens(u, "cache_creation_input_tokens")
    return Usage(prompt_tokens=inp + read + write, completion_tokens=out, cached_tokens=read,
                 cache_write_tokens=write).finalised()


def _wire_usage(u: Usage) -> dict[str, int]:
    read, write = u.cached_tokens, u.cache_write_tokens
    return {"input_tokens": max(0, u.prompt_tokens - read - write), "output_tokens": u.completion_tokens,
            "cache_creation_input_tokens": write, "cache_read_input_tokens": read}


def _finish(stop_reason: Any) -> FinishReason | None:
    if stop_reason is None:
        return None
    return _FINISH_FROM_STOP.get(str(stop_reason), "stop")


def _native(stop_reason: Any, stop_sequence: Any) -> tuple[str | None, str | None]:
    """(finish_native, stop_sequence) of an Anthropic answer: written back as they came to an
    Anthropic client (pause_turn, say, which the unified finish reason cannot say)."""
    if not isinstance(stop_reason, str):
        return None, None
    return "anthropic:" + stop_reason, stop_sequence if isinstance(stop_sequence, str) else None


def _stop_out(finish: FinishReason | None, native: str | None, has_calls: bool) -> str | None:
    if native is not None and native.startswith("anthropic:"):
        return native.removeprefix("anthropic:")
    return _stop_reason(finish, has_calls)


def _input_object(arguments: str) -> dict[str, Any]:
    """A unified arguments string as Anthropic's `input` object. Anything that is not a JSON object
    (empty, malformed, a bare value) becomes {}: Anthropic cannot carry it (lossy, documented)."""
    if not arguments:
        return {}
    try:
        v = orjson.loads(arguments)
    except orjson.JSONDecodeError:
        return {}
    return v if isinstance(v, dict) else {}


def _dumps_input(v: Any) -> str:
    return orjson.dumps(v).decode()


def _thinking_part(text: str, token: str) -> ReasoningPart:
    """A thinking block as unified reasoning: its signature is Anthropic's unless the gateway wrapped
    another family's (see axonsim.formats.signatures)."""
    if not token:
        return ReasoningPart(text=text)
    sig, provider = import_signature(token, FAMILY)
    return ReasoningPart(text=text, signature=sig, signature_provider=provider)


def _signature_delta(token: str) -> ReasoningDelta:
    sig, provider = import_signature(token, FAMILY)
    return ReasoningDelta(signature=sig, signature_provider=provider)


# --------------------------------------------------------------------------------------------------
# Inbound: a client's Messages request → unified Request


def check_request(body: bytes, model: str | None = None, stream: bool | None = None) -> Parsed:
    """parse_request's result as the gateway's handler takes it (this parser builds the Request as it goes)."""
    return Parsed.of(parse_request(body, model, stream))


def parse_request(body: bytes, model: str | None = None, stream: bool | None = None) -> Request:
    d = _loads(body, "request body")
    if not isinstance(d, dict):
        raise FormatError("request body must be a JSON object")

    if model is None:
        if "model" not in d:
            raise FormatError("model: field required", "model")
        model = _str(d["model"], "model")
    if d.get("thread") is not None:
        # Message Threads (beta) keep the conversation on Anthropic's side, and a `continue` sends
        # only the new turns: no other channel, nor another Anthropic key or organisation, holds
        # the rest. Anthropic's own refusal of a threaded request makes the SDK send the whole
        # conversation without `thread` (its error_code says so), which every channel can serve.
        raise FormatError("'thread' is not supported: this gateway keeps no server-side conversation state; "
                          "send the whole conversation without 'thread'", "thread",
                          details={"error_code": "thread_unsupported_request"})
    if "max_tokens" not in d:
        raise FormatError("max_tokens: field required", "max_tokens")
    max_tokens = _int(d["max_tokens"], "max_tokens")
    check_range(max_tokens, "max_tokens", 1)
    if "messages" not in d:
        raise FormatError("messages: field required", "messages")
    raw_messages = _list(d["messages"], "messages")
    if not raw_messages:
        raise FormatError("messages: at least one message is required", "messages")

    messages: list[Message] = []
    system = d.get("system")
    if system is not None:
        parts = _system_parts(system, "system")
        if parts:
            messages.append(Message(role="system", content=parts))
    names: dict[str, str] = {}  # tool_use id → name, so tool results can carry the name Gemini needs
    for i, m in enumerate(raw_messages):
        _parse_message(m, f"messages.{i}", messages, names)

    sampling = Sampling(max_tokens=max_tokens)
    # The ranges Anthropic's API accepts.
    if d.get("temperature") is not None:
        sampling.temperature = _num(d["temperature"], "temperature")
        check_range(sampling.temperature, "temperature", 0.0, 1.0)
    if d.get("top_p") is not None:
        sampling.top_p = _num(d["top_p"], "top_p")
        check_range(sampling.top_p, "top_p", 0.0, 1.0)
    if d.get("top_k") is not None:
        sampling.top_k = _int(d["top_k"], "top_k")
        check_range(sampling.top_k, "top_k", 0.0)
    if d.get("stop_sequences") is not None:
        stops = _list(d["stop_sequences"], "stop_sequences")
        sampling.stop = [_str(s, f"stop_sequences.{k}") for k, s in enumerate(stops)] or None

    req = Request(model=model, messages=messages, sampling=sampling, source=FAMILY)
    if stream is not None:
        req.stream = stream
    elif d.get("stream") is not None:
        req.stream = _bool(d["stream"], "stream")

    if d.get("tools") is not None:
        req.tools = [_parse_tool(t, f"tools.{k}") for k, t in enumerate(_list(d["tools"], "tools"))]
    if d.get("tool_choice") is not None:
        req.tool_choice = _parse_tool_choice(_obj(d["tool_choice"], "tool_choice"))
    if d.get("metadata") is not None:
        meta = dict(_obj(d["metadata"], "metadata"))
        user = meta.pop("user_id", None)
        if user is not None:
            req.user = _str(user, "metadata.user_id")
        if meta:
            req.metadata = meta  # kept for the record; Anthropic accepts only user_id upstream
    if d.get("thinking") is not None:
        _parse_thinking(_obj(d["thinking"], "thinking"), req)
    if d.get("output_config") is not None:
        _parse_output_config(_obj(d["output_config"], "output_config"), req)
    req.extra_body = {k: v for k, v in d.items() if k not in _KNOWN_FIELDS}
    return req


def _system_parts(system: Any, path: str) -> list[Part]:
    if isinstance(system, str):
        return [TextPart(text=system)] if system else []
    parts: list[Part] = []
    for k, b in enumerate(_list(system, path)):
        p = f"{path}.{k}"
        b = _obj(b, p)
        if b.get("type") != "text":
            raise FormatError(f"{p}.type: the system prompt takes only text blocks", f"{p}.type")
        parts.append(TextPart(text=_str(b.get("text"), f"{p}.text"), cache_control=_cache(b, p)))
    return parts


def _parse_message(m: Any, path: str, out: list[Message], names: dict[str, str]) -> None:
    m = _obj(m, path)
    role = m.get("role")
    if role not in ("user", "assistant", "system"):
        raise FormatError(f"{path}.role: must be 'user' or 'assistant', got {role!r}", f"{path}.role")
    if "content" not in m:
        raise FormatError(f"{path}.content: field required", f"{path}.content")
    content = m["content"]
    if isinstance(content, str):
        out.append(Message(role=role, content=[TextPart(text=content)]))
        return
    blocks = _list(content, f"{path}.content")
    if role == "system":
        out.append(Message(role="system", content=_system_parts(blocks, f"{path}.content")))
    elif role == "assistant":
        out.append(_parse_assistant(blocks, f"{path}.content", names))
    else:
        _parse_user(blocks, f"{path}.content", out, names)


def _parse_assistant(blocks: list[Any], path: str, names: dict[str, str]) -> Message:
    parts: list[Part] = []
    calls: list[ToolCall] = []
    for k, b in enumerate(blocks):
        p = f"{path}.{k}"
        b = _obj(b, p)
        t = b.get("type")
        if t == "text":
            parts.append(TextPart(text=_str(b.get("text"), f"{p}.text"), cache_control=_cache(b, p)))
        elif t == "thinking":
            sig = b.get("signature")
            # "" is what we render for unsigned reasoning: it means "no signature", never a real one.
            token = _str(sig, f"{p}.signature") if sig is not None else ""
            parts.append(_thinking_part(_str(b.get("thinking", ""), f"{p}.thinking"), token))
        elif t == "redacted_thinking":
            parts.append(ReasoningPart(redacted=True, data=_str(b.get("data"), f"{p}.data")))
        elif t == "tool_use":
            cid = _str(b.get("id"), f"{p}.id")
            name = _str(b.get("name"), f"{p}.name")
            args = _obj(b.get("input", {}), f"{p}.input")
            names[cid] = name
            calls.append(ToolCall(id=cid, name=name, arguments=_dumps_input(args), cache_control=_cache(b, p)))
        else:
            raise FormatError(f"{p}.type: unsupported block type {t!r} in an assistant message", f"{p}.type")
    return Message(role="assistant", content=parts, tool_calls=calls)


def _parse_user(blocks: list[Any], path: str, out: list[Message], names: dict[str, str]) -> None:
    # Unified tool results are OpenAI-style `tool` messages; the rest of the turn stays a user message.
    pending: list[Part] = []
    emitted = False
    for k, b in enumerate(blocks):
        p = f"{path}.{k}"
        b = _obj(b, p)
        t = b.get("type")
        if t == "text":
            pending.append(TextPart(text=_str(b.get("text"), f"{p}.text"), cache_control=_cache(b, p)))
        elif t == "image":
            pending.append(_parse_image(b, p))
        elif t == "tool_result":
            if pending:
                out.append(Message(role="user", content=pending))
                pending = []
            out.append(Message(role="tool", content=[_parse_tool_result(b, p, names)]))
            emitted = True
        else:
            raise FormatError(f"{p}.type: unsupported block type {t!r} in a user message", f"{p}.type")
    if pending or not emitted:
        out.append(Message(role="user", content=pending))


def _parse_image(b: dict[str, Any], path: str) -> ImagePart:
    src = _obj(b.get("source"), f"{path}.source")
    st = src.get("type")
    cc = _cache(b, path)
    if st == "base64":
        return ImagePart(media_type=_str(src.get("media_type"), f"{path}.source.media_type"),
                         data=_str(src.get("data"), f"{path}.source.data"), cache_control=cc)
    if st == "url":
        return ImagePart(url=_str(src.get("url"), f"{path}.source.url"), cache_control=cc)
    raise FormatError(f"{path}.source.type: unsupported image source {st!r} (base64 and url are supported)",
                      f"{path}.source.type")


def _parse_tool_result(b: dict[str, Any], path: str, names: dict[str, str]) -> ToolResultPart:
    cid = _str(b.get("tool_use_id"), f"{path}.tool_use_id")
    content = b.get("content")
    parts: list[TextPart | ImagePart] = []
    if isinstance(content, str):
        parts.append(TextPart(text=content))
    elif content is not None:
        for k, c in enumerate(_list(content, f"{path}.content")):
            p = f"{path}.content.{k}"
            c = _obj(c, p)
            t = c.get("type")
            if t == "text":
                parts.append(TextPart(text=_str(c.get("text"), f"{p}.text"), cache_control=_cache(c, p)))
            elif t == "image":
                parts.append(_parse_image(c, p))
            else:
                raise FormatError(f"{p}.type: unsupported block type {t!r} in a tool result", f"{p}.type")
    is_error = _bool(b["is_error"], f"{path}.is_error") if b.get("is_error") is not None else False
    return ToolResultPart(tool_call_id=cid, name=names.get(cid), content=parts, is_error=is_error,
                          cache_control=_cache(b, path))


def _parse_tool(t: Any, path: str) -> Tool:
    t = _obj(t, path)
    typ = t.get("type")
    if typ is not None and typ != "custom":
        # A server tool (web_search_20250305, code_execution, ...) or an Anthropic-defined client tool
        # (bash, text_editor, computer): only an Anthropic channel can run it, so keep it verbatim.
        name = t.get("name")
        return Tool(type="native", name=name if isinstance(name, str) else str(typ), provider="anthropic",
                    native=t)
    name = _str(t.get("name"), f"{path}.name")
    if "input_schema" not in t:
        raise FormatError(f"{path}.input_schema: field required", f"{path}.input_schema")
    tool = Tool(name=name, parameters=_obj(t["input_schema"], f"{path}.input_schema"), cache_control=_cache(t, path))
    if t.get("description") is not None:
        tool.description = _str(t["description"], f"{path}.description")
    if t.get("strict") is not None:
        tool.strict = _bool(t["strict"], f"{path}.strict")
    return tool


def _parse_tool_choice(tc: dict[str, Any]) -> ToolChoice:
    t = tc.get("type")
    modes = {"auto": "auto", "any": "required", "none": "none", "tool": "function"}
    if not isinstance(t, str) or t not in modes:
        raise FormatError(f"tool_choice.type: must be one of auto, any, none, tool; got {t!r}", "tool_choice.type")
    choice = ToolChoice(mode=modes[t])  # type: ignore[arg-type]
    if t == "tool":
        choice.name = _str(tc.get("name"), "tool_choice.name")
    if tc.get("disable_parallel_tool_use") is not None:
        choice.disable_parallel = _bool(tc["disable_parallel_tool_use"], "tool_choice.disable_parallel_tool_use")
    return choice


def _parse_thinking(th: dict[str, Any], req: Request) -> None:
    t = th.get("type")
    if t == "enabled":
        if "budget_tokens" not in th:
            raise FormatError("thinking.budget_tokens: field required", "thinking.budget_tokens")
        req.reasoning_budget = _int(th["budget_tokens"], "thinking.budget_tokens")
    elif t == "disabled":
        req.reasoning_effort = "none"  # OpenAI's word for "no reasoning"
    elif t == "adaptive":
        req.reasoning_budget = -1  # Gemini's convention for "the model decides"
    else:
        raise FormatError(f"thinking.type: must be enabled, disabled or adaptive; got {t!r}", "thinking.type")


def _parse_output_config(oc: dict[str, Any], req: Request) -> None:
    if oc.get("effort") is not None:
        effort = _str(oc["effort"], "output_config.effort")
        # `thinking: disabled` already said "none"; an explicit effort alongside it is the finer word.
        req.reasoning_effort = effort
    if oc.get("format") is not None:
        fmt = _obj(oc["format"], "output_config.format")
        if fmt.get("type") != "json_schema":
            raise FormatError("output_config.format.type: must be json_schema", "output_config.format.type")
        req.response_format = ResponseFormat(type="json_schema",
                                             json_schema=_obj(fmt.get("schema"), "output_config.format.schema"))


# --------------------------------------------------------------------------------------------------
# Inbound: unified Response / stream events / errors → what an Anthropic client expects


def render_response(resp: Response) -> bytes:
    msg = resp.message
    content = _output_blocks(msg, resp.id)
    # An answer that names no finish (an Azure prompt-filter shape, `finish_reason: null`) ended all
    # the same: stop_reason is null only in message_start, as the stream's end says too.
    stop = _stop_out(resp.finish_reason or "stop", resp.finish_native, bool(msg.tool_calls))
    usage = _wire_usage(resp.usage) if resp.usage is not None else _wire_usage(Usage())
    seq = resp.stop_sequence if stop == "stop_sequence" else None
    return orjson.dumps({"id": resp.id, "type": "message", "role": "assistant", "model": resp.model,
                         "content": content, "stop_reason": stop, "stop_sequence": seq, "usage": usage})


def _stop_reason(finish: FinishReason | None, has_calls: bool) -> str | None:
    if finish is None:
        return None
    # Some OpenAI-compatible upstreams say "stop" while calling tools; Anthropic clients decide
    # whether to run tools from stop_reason, so the calls win.
    if finish == "stop" and has_calls:
        return "tool_use"
    return _STOP_FROM_FINISH[finish]


def _fallback_id(msg_id: str, index: int) -> str:
    return _tool_id(f"toolu_{msg_id}_{index}")


def _output_blocks(msg: Message, msg_id: str) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = []
    for p in msg.content:
        if isinstance(p, ReasoningPart):
            if p.redacted:
                blocks.append({"type": "redacted_thinking", "data": p.data or ""})
            elif p.text or p.signature:
                # Unsigned reasoning is shown as thinking with "" (it cannot be replayed); another
                # family's signature is wrapped so that a replay still knows whose it is.
                sig = export_signature(p.signature, p.signature_provider, FAMILY) if p.signature else ""
                blocks.append({"type": "thinking", "thinking": p.text, "signature": sig})
        elif isinstance(p, TextPart):
            if p.text:
                blocks.append({"type": "text", "text": p.text})
        # Images and tool results have no place in an Anthropic assistant response (lossy).
    if msg.refusal and not msg.tool_calls and not any(b["type"] == "text" for b in blocks):
        blocks.append({"type": "text", "text": msg.refusal})  # no refusal field: its words as the text (lossy)
    for k, c in enumerate(msg.tool_calls):
        blocks.append({"type": "tool_use", "id": _tool_id(c.id) if c.id else _fallback_id(msg_id, k),
                       "name": c.name, "input": _input_object(c.arguments)})
    return blocks


def _event(name: str, payload: dict[str, Any]) -> bytes:
    return encode(orjson.dumps(payload), name)


class StreamRenderer:
    """Unified stream events → Anthropic SSE, one event in, its bytes out.

    Anthropic needs a content block opened before its deltas and closed before the next one, with
    indices 0..n-1 in start order; the renderer opens a block when a new kind of content starts and
    closes the open one then. message_delta needs the stop reason *and* the final usage, which the
    other families send as separate events (finish first, usage last), so it is written by finish(),
    right before message_stop — exactly where Anthropic itself puts it."""

    def __init__(self, req: Request | Parsed) -> None:
        self._model = req.model
        self._id = "msg_unknown"
        self._started = False
        self._done = False
        self._next = 0  # next block index
        self._open: str | None = None  # kind of the open block: text | thinking | tool_use
        self._open_index = -1
        # While a text block is open, a text delta is this head, the text as JSON and b"}}\n\n": the
        # bytes _delta would make, without building and serialising the dicts (the bulk of a stream).
        self._text_head = b""
        self._signed = False  # the open thinking block already got its signature
        self._tool_blocks: dict[int, int] = {}  # unified tool-call index → block index
        # Calls that began while another tool block was open with its arguments unfinished (parallel
        # calls whose fragments the upstream interleaves): index → [id, name, argument fragments],
        # written once the open call's arguments are whole JSON (or other content comes), since
        # Anthropic's blocks follow one another and cannot interleave.
        self._held: dict[int, list[Any]] = {}
        # Each tool block's arguments as passed on so far, checked to stay the start of one JSON
        # object: the SDKs parse every input_json_delta as it comes and raise on one that cannot be.
        self._args: dict[int, ObjectPrefix] = {}
        self._start_usage: Usage | None = None
        self._usage: Usage | None = None
        self._finish: FinishReason | None = None
        self._native: str | None = None  # the FinishEvent's finish_native and stop_sequence
        self._stop_sequence: str | None = None

    def render(self, ev: StreamEvent) -> bytes:
        if self._done:
            return b""
        if self._open == "text" and isinstance(ev, TextDelta):  # so the message has started too
            return self._text_head + orjson.dumps(ev.text) + b"}}\n\n" if ev.text else b""
        if isinstance(ev, ErrorEvent):
            return self.error(ev.error)
        out: list[bytes] = []
        if self._held and not isinstance(ev, ToolCallDelta):
            self._release_held(out)
        if isinstance(ev, StreamStart):
            if not self._started:
                self._id, self._model = ev.id or self._id, ev.model or self._model
                self._start_usage = ev.usage
        if not self._started:
            self._message_start(out)
        if isinstance(ev, TextDelta):
            if ev.text:
                if self._open != "text":
                    self._open_block("text", {"type": "text", "text": ""}, out)
                out.append(self._delta({"type": "text_delta", "text": ev.text}))
        elif isinstance(ev, ToolCallDelta):
            self._tool(ev, out)
        elif isinstance(ev, ReasoningDelta):
            self._reasoning(ev, out)
        elif isinstance(ev, FinishEvent):
            self._close(out)
            self._finish = ev.reason
            self._native, self._stop_sequence = ev.finish_native, ev.stop_sequence
        elif isinstance(ev, UsageEvent):
            self._usage = ev.usage
        elif isinstance(ev, NativeBlock) and ev.provider == FAMILY:
            self._native_block(ev.block, out)
        return b"".join(out)

    def finish(self) -> bytes:
        if self._done:
            return b""
        out: list[bytes] = []
        if not self._started:
            self._message_start(out)
        if self._held:
            self._release_held(out)
        self._close(out)
        finish = self._finish if self._finish is not None else "stop"
        usage = self._usage or self._start_usage
        wire = _wire_usage(usage) if usage is not None else {"output_tokens": 0}
        stop = _stop_out(finish, self._native, bool(self._tool_blocks))
        out.append(_event("message_delta", {
            "type": "message_delta",
            "delta": {"stop_reason": stop, "stop_sequence": self._stop_sequence if stop == "stop_sequence" else None},
            "usage": wire,
        }))
        out.append(_event("message_stop", {"type": "message_stop"}))
        self._done = True
        return b"".join(out)

    def error(self, err: Error) -> bytes:
        if self._done:
            return b""
        self._done = True
        return _event("error", {"type": "error", "error": {"type": _error_type(err), "message": err.message}})

    # -- internals

    def _message_start(self, out: list[bytes]) -> None:
        self._started = True
        u = self._start_usage
        usage = _wire_usage(u) if u is not None else {"input_tokens": 0, "output_tokens": 0}
        out.append(_event("message_start", {"type": "message_start", "message": {
            "id": self._id, "type": "message", "role": "assistant", "model": self._model, "content": [],
            "stop_reason": None, "stop_sequence": None, "usage": usage}}))

    def _open_block(self, kind: str, block: dict[str, Any], out: list[bytes]) -> int:
        self._close(out)
        idx = self._next
        self._next += 1
        out.append(_event("content_block_start", {"type": "content_block_start", "index": idx, "content_block": block}))
        self._open, self._open_index, self._signed = kind, idx, False
        if kind == "text":
            self._text_head = (b'event: content_block_delta\ndata: {"type":"content_block_delta","index":'
                               + str(idx).encode() + b',"delta":{"type":"text_delta","text":')
        return idx

    def _close(self, out: list[bytes]) -> None:
        if self._open is not None:
            out.append(_event("content_block_stop", {"type": "content_block_stop", "index": self._open_index}))
            self._open = None

    def _delta(self, delta: dict[str, Any], index: int | None = None) -> bytes:
        idx = self._open_index if index is None else index
        return _event("content_block_delta", {"type": "content_block_delta", "index": idx, "delta": delta})

    def _tool(self, ev: ToolCallDelta, out: list[bytes]) -> None:
        blk = self._tool_blocks.get(ev.index)
        held = self._held.get(ev.index)
        if held is not None:
            held[0] = held[0] or ev.id  # an id or name that comes after the call's first fragment
            held[1] = held[1] or ev.name
            if ev.arguments:
                held[2].append(ev.arguments)
            return
        if blk is None and self._open == "tool_use" and not self._open_settled():
            # Another call's block is open and its arguments are not finished: this one waits.
            self._held[ev.index] = [ev.id, ev.name, [ev.arguments] if ev.arguments else []]
            return
        if blk is None:
            blk = self._open_tool(ev.index, ev.id, ev.name, [], out)
        if ev.arguments:
            # A fragment for a call whose block was closed by other content (text between a call's
            # fragments: no provider does this) still goes to that call's index, which the SDK
            # accumulates by; a call that waits behind an open block is held instead (above).
            self._pass_args(blk, ev.arguments, out)
            if self._held and blk == self._open_index and self._open_settled():
                self._next_held(out)

    def _pass_args(self, blk: int, text: str, out: list[bytes]) -> None:
        """What of an argument fragment keeps the block's input valid; after the object is
        closed, or from a character that cannot belong to it, nothing (lossy, documented)."""
        keep = self._args[blk].feed(text)
        if keep:
            out.append(self._delta({"type": "input_json_delta", "partial_json": keep}, blk))

    def _open_settled(self) -> bool:
        """The open tool block's arguments are finished: whole, or broken off."""
        check = self._args.get(self._open_index)
        return check is not None and (check.done or check.broken)

    def _next_held(self, out: list[bytes]) -> None:
        """The open call's arguments are finished: the calls held behind it go live in turn (each
        writes what it has so far; the next waits until that one's arguments are finished too)."""
        while self._held and self._open_settled():
            index = next(iter(self._held))
            cid, name, parts = self._held.pop(index)
            self._open_tool(index, cid, name, parts, out)

    def _release_held(self, out: list[bytes]) -> None:
        """The held calls, each a whole block after the open one (which this closes)."""
        held, self._held = self._held, {}
        for index, (cid, name, parts) in held.items():
            self._open_tool(index, cid, name, parts, out)
        self._close(out)

    def _open_tool(self, index: int, cid: str | None, name: str | None, parts: list[str], out: list[bytes]) -> int:
        """A tool call's block, opened with the argument fragments it already has (as one delta)."""
        block = {"type": "tool_use", "id": _tool_id(cid) if cid else _fallback_id(self._id, index),
                 "name": name or "", "input": {}}
        blk = self._tool_blocks[index] = self._open_block("tool_use", block, out)
        self._args[blk] = ObjectPrefix()
        if parts:
            self._pass_args(blk, "".join(parts), out)
        return blk

    def _native_block(self, block: dict[str, Any], out: list[bytes]) -> None:
        """A server tool's block, written as Anthropic streams one: an input, if any, as one delta."""
        if "input" in block:
            idx = self._open_block("native", {**block, "input": {}}, out)
            if block["input"]:
                out.append(self._delta({"type": "input_json_delta", "partial_json": _dumps_input(block["input"])}, idx))
        else:
            self._open_block("native", block, out)
        self._close(out)

    def _reasoning(self, ev: ReasoningDelta, out: list[bytes]) -> None:
        if ev.text:
            if self._open != "thinking" or self._signed:
                self._open_block("thinking", {"type": "thinking", "thinking": "", "signature": ""}, out)
            out.append(self._delta({"type": "thinking_delta", "thinking": ev.text}))
        if ev.signature:
            if self._open != "thinking" or self._signed:
                self._open_block("thinking", {"type": "thinking", "thinking": "", "signature": ""}, out)
            sig = export_signature(ev.signature, ev.signature_provider, FAMILY)
            out.append(self._delta({"type": "signature_delta", "signature": sig}))
            self._signed = True
        if ev.redacted_data:
            self._open_block("redacted_thinking", {"type": "redacted_thinking", "data": ev.redacted_data}, out)
            self._close(out)


def _error_type(err: Error) -> str:
    status = error_status(err)
    if err.code in _TYPE_STATUS and _TYPE_STATUS[err.code] == status:
        return err.code
    if status in _STATUS_TYPE:
        return _STATUS_TYPE[status]
    if status < 500:
        return "invalid_request_error"
    if err.kind in (ErrorKind.OVERLOADED, ErrorKind.UNAVAILABLE):
        return "overloaded_error"
    return "api_error"


def error_status(err: Error) -> int:
    if err.kind is ErrorKind.OVERLOADED:
        return 529  # Anthropic's own overload status; the SDK raises OverloadedError for it
    if 400 <= err.status <= 599:
        return err.status  # execution already chose a client-facing status (e.g. 502 for upstream auth)
    return _KIND_STATUS[err.kind]


def render_error(err: Error) -> bytes:
    e: dict[str, Any] = {"type": _error_type(err), "message": err.message}
    if err.details:
        e["details"] = err.details
    return orjson.dumps({"type": "error", "error": e})


def error_headers(err: Error) -> dict[str, str]:
    if err.retry_after is None or err.retry_after < 0:
        return {}
    # Both SDKs read retry-after-ms first (sub-second precision); plain clients read retry-after.
    return {"retry-after": str(math.ceil(err.retry_after)), "retry-after-ms": str(round(err.retry_after * 1000))}


# --------------------------------------------------------------------------------------------------
# Outbound: unified Request → an Anthropic provider; its answers → unified


def request_path(upstream_model: str, stream: bool) -> str:
    return "/v1/messages"


def auth_headers(key: str) -> dict[str, str]:
    return {"x-api-key": key, "anthropic-version": API_VERSION}


def stream_passthrough(body: bytes, parsed: Parsed | None = None) -> bytes:
    """A client's stream request, validated by parse_request, forwarded to a channel of this format:
    as it came (Anthropic streams always report usage (message_start, message_delta))."""
    return body


def build_request(req: Request, upstream_model: str) -> bytes:
    refuse_foreign_fields(req, FAMILY, "an Anthropic channel")
    system, messages = _render_messages(req.messages)
    if not messages:  # the API answers a system prompt alone with a 400, as Gemini does
        raise FormatError("Anthropic needs at least one user or assistant message", "messages")
    s = req.sampling
    if s.n is not None and s.n > 1:
        raise FormatError("n: Anthropic returns one message per request; n > 1 is not supported", "n")
    max_tokens = s.max_tokens or DEFAULT_MAX_TOKENS
    body: dict[str, Any] = {"model": upstream_model, "max_tokens": max_tokens}
    if system:
        body["system"] = system
    body["messages"] = messages

    thinking = _render_thinking(req)
    if (thinking is not None and thinking["type"] != "disabled" and req.source != FAMILY and req.tools
            and req.tool_choice is not None and req.tool_choice.mode in ("required", "function")):
        # Anthropic refuses thinking with a forced tool choice ("Thinking may not be enabled when
        # tool_choice forces tool use"); other families allow both. The forced call is the part a
        # client's code depends on, so the thinking goes. (An Anthropic client's own request is
        # left as it asked: the provider's answer tells it.)
        thinking = None
    # The final assistant turn: every assistant message since the last user message that is more than
    # tool results (a tool loop is one turn). Anthropic holds it to the request's thinking setting.
    # (An Anthropic client's own request is left as it asked, as its bytes are when passed through.)
    turn = _final_turn(messages) if req.source != FAMILY else []
    if thinking is not None and thinking["type"] == "enabled" and _loop_opens_without_thinking(turn):
        # With thinking enabled, a tool loop must open with a thinking block ("a final assistant
        # message must start with a thinking block"). For a client of another family the loop began
        # on its own family's channel, or its reasoning has no Anthropic signature to replay: the
        # request goes without thinking, as the API's own advice says. Adaptive thinking may begin a
        # turn with a tool call, so it stays.
        thinking = None
    if thinking is not None:
        body["thinking"] = thinking
        if thinking["type"] == "enabled" and thinking["budget_tokens"] >= max_tokens:
            # budget_tokens must be below max_tokens; keep the asked-for answer room on top of it.
            body["max_tokens"] = thinking["budget_tokens"] + max_tokens
    thinking_on = thinking is not None and thinking["type"] != "disabled"
    if not thinking_on:
        # With thinking off (not asked for, dropped above, or for a forced tool choice), the final
        # turn may hold no thinking block ("when thinking is disabled, an assistant message in the
        # final position cannot contain thinking").
        for m in turn:
            m["content"] = [b for b in m["content"] if b.get("type") not in _THINKING_BLOCKS]
        if any(not m["content"] for m in turn):  # a message that held only thinking: Anthropic refuses it empty
            messages[:] = [m for m in messages if m["content"]]

    if s.temperature is not None:
        t = min(1.0, max(0.0, s.temperature))  # OpenAI/Gemini allow up to 2, Anthropic 1
        # Extended thinking rejects any temperature but 1 (and top_k, and top_p below 0.95).
        if not thinking_on or t == 1.0:
            body["temperature"] = t
    if s.top_p is not None and (not thinking_on or s.top_p >= 0.95):
        body["top_p"] = s.top_p
    if s.top_k is not None and not thinking_on:
        body["top_k"] = s.top_k
    if s.stop:
        body["stop_sequences"] = list(s.stop)
    if req.stream:
        body["stream"] = True
    if req.user is not None:
        body["metadata"] = {"user_id": req.user}

    if req.tools:
        body["tools"] = [_render_tool(t, k) for k, t in enumerate(req.tools)]
        if req.tool_choice is not None:
            body["tool_choice"] = _render_tool_choice(req.tool_choice)

    output_config: dict[str, Any] = {}
    effort = req.reasoning_effort
    if effort is not None and effort != "none":
        output_config["effort"] = "low" if effort == "minimal" else effort
    rf = req.response_format
    if rf is not None and rf.type == "json_schema" and rf.json_schema is not None:
        output_config["format"] = {"type": "json_schema", "schema": rf.json_schema}
    if output_config:
        body["output_config"] = output_config

    if req.source == FAMILY:  # another family's extra fields would only earn a 400 here
        for k, v in req.extra_body.items():
            body.setdefault(k, v)
    return orjson.dumps(body)


def _render_thinking(req: Request) -> dict[str, Any] | None:
    b = req.reasoning_budget
    if b is not None:
        if b < 0:
            return {"type": "adaptive"}
        if b == 0:
            return {"type": "disabled"}
        return {"type": "enabled", "budget_tokens": max(b, MIN_THINKING_BUDGET)}
    if req.reasoning_effort == "none":
        return {"type": "disabled"}
    return None


def _render_messages(msgs: list[Message]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    system: list[dict[str, Any]] = []
    turns: list[dict[str, Any]] = []
    tool_turn = False  # the last turn is a user turn that tool results opened: more results may join it
    for i, m in enumerate(msgs):
        path = f"messages.{i}"
        if m.role in ("system", "developer"):
            for p in m.content:
                if isinstance(p, TextPart):
                    if p.text:
                        system.append(_text_block(p))
                elif not isinstance(p, ReasoningPart):
                    raise FormatError(f"{path}.content: Anthropic's system prompt carries only text", f"{path}.content")
            continue
        if m.role == "assistant":
            blocks = _assistant_blocks(m, path)
            if blocks:
                turns.append({"role": "assistant", "content": blocks})
                tool_turn = False
            continue
        results: list[dict[str, Any]] = []
        rest: list[dict[str, Any]] = []
        for p in m.content:
            if isinstance(p, ToolResultPart):
                results.append(_tool_result_block(p, path))
            elif isinstance(p, TextPart):
                if p.text:
                    rest.append(_text_block(p))
            elif isinstance(p, ImagePart):
                rest.append(_image_block(p, path))
            # reasoning in a user/tool turn has no Anthropic form; it is dropped
        if not results and not rest:
            continue
        # Anthropic wants every tool_result of a turn in the one user message that follows it, before
        # any text: consecutive tool messages, and the user message right after them, become one turn.
        if tool_turn:
            turns[-1]["content"].extend(results + rest)
        else:
            turns.append({"role": "user", "content": results + rest})
        # Once text joins the turn, a later tool result would land after it: start a new turn then.
        tool_turn = (tool_turn or bool(results)) and not rest
    return system, turns


def _text_block(p: TextPart) -> dict[str, Any]:
    b: dict[str, Any] = {"type": "text", "text": p.text}
    if p.cache_control is not None:
        b["cache_control"] = p.cache_control
    return b


def _image_block(p: ImagePart, path: str) -> dict[str, Any]:
    media, data = p.media_type, p.data
    if data is None and p.url is not None and p.url.startswith("data:"):
        head, _, data = p.url.partition(",")
        media = head[5:].split(";")[0] or None
    if data is not None:
        if media is not None:  # MIME types are case-insensitive; image/jpg is common, if unregistered
            media = media.strip().lower()
            media = "image/jpeg" if media == "image/jpg" else media
        if media is None:
            media = next((t for prefix, t in _IMAGE_MAGIC if data.startswith(prefix)), None)
        if media not in _IMAGE_TYPES:
            raise FormatError(f"{path}.content: Anthropic accepts only JPEG, PNG, GIF and WebP images, not {media!r}",
                              f"{path}.content")
        src: dict[str, Any] = {"type": "base64", "media_type": media, "data": data}
    elif p.url is not None:
        src = {"type": "url", "url": p.url}
    else:
        raise FormatError(f"{path}.content: an image has neither data nor url", f"{path}.content")
    b: dict[str, Any] = {"type": "image", "source": src}
    if p.cache_control is not None:
        b["cache_control"] = p.cache_control
    return b


def _tool_result_block(p: ToolResultPart, path: str) -> dict[str, Any]:
    b: dict[str, Any] = {"type": "tool_result", "tool_use_id": _tool_id(p.tool_call_id)}
    c = p.content
    if len(c) == 1 and isinstance(c[0], TextPart) and c[0].cache_control is None:
        b["content"] = c[0].text
    elif c:
        blocks = [_text_block(x) if isinstance(x, TextPart) else _image_block(x, path)
                  for x in c if not isinstance(x, TextPart) or x.text]
        if blocks:
            b["content"] = blocks
    if p.is_error:
        b["is_error"] = True
    if p.cache_control is not None:
        b["cache_control"] = p.cache_control
    return b


_THINKING_BLOCKS = ("thinking", "redacted_thinking")


def _final_turn(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The assistant messages since the last user message that is more than tool results."""
    start = len(messages)
    while start > 0 and (messages[start - 1]["role"] == "assistant" or all(
            b.get("type") == "tool_result" for b in messages[start - 1]["content"])):
        start -= 1
    return [m for m in messages[start:] if m["role"] == "assistant"]


def _loop_opens_without_thinking(turn: list[dict[str, Any]]) -> bool:
    """Whether `turn` calls tools and its first message does not start with a thinking block."""
    if not turn or not any(b.get("type") == "tool_use" for m in turn for b in m["content"]):
        return False
    first = turn[0]["content"]
    return not first or first[0].get("type") not in _THINKING_BLOCKS


def _assistant_blocks(m: Message, path: str) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = []
    for p in m.content:
        if isinstance(p, ReasoningPart):
            if p.redacted:
                if p.data:
                    blocks.append({"type": "redacted_thinking", "data": p.data})
            elif replayable(p.signature, p.signature_provider, FAMILY):
                blocks.append({"type": "thinking", "thinking": p.text, "signature": p.signature})
            # Unsigned reasoning (another provider's, or a stream that lost it) and reasoning signed by
            # another family would be rejected by Anthropic's signature check: dropped (lossy, documented).
        elif isinstance(p, TextPart):
            if p.text:  # Anthropic rejects empty text blocks; OpenAI often sends "" beside tool calls
                blocks.append(_text_block(p))
        else:
            # Anthropic takes neither images nor tool results in an assistant turn: say so, don't drop.
            raise FormatError(f"{path}.content: an Anthropic assistant message cannot carry a {p.type} part",
                              f"{path}.content")
    for c in m.tool_calls:
        b: dict[str, Any] = {"type": "tool_use", "id": _tool_id(c.id), "name": c.name,
                             "input": _input_object(c.arguments)}
        if c.cache_control is not None:
            b["cache_control"] = c.cache_control
        blocks.append(b)
    return blocks


def _render_tool(t: Tool, k: int) -> dict[str, Any]:
    if t.type == "native":
        if t.provider != "anthropic" or not t.native:
            raise FormatError(f"tools.{k}: {t.name!r} is a {t.provider or 'provider'}-native tool that an Anthropic "
                              f"channel cannot run", f"tools.{k}")
        return dict(t.native)
    schema = t.parameters if t.parameters else {"type": "object", "properties": {}}
    if "type" not in schema:
        schema = {"type": "object", **schema}
    b: dict[str, Any] = {"name": t.name}
    if t.description is not None:
        b["description"] = t.description
    b["input_schema"] = schema
    if t.strict:  # only true is worth sending: some Anthropic-compatible upstreams reject the key
        b["strict"] = True
    if t.cache_control is not None:
        b["cache_control"] = t.cache_control
    return b


def _render_tool_choice(tc: ToolChoice) -> dict[str, Any]:
    typ = {"auto": "auto", "none": "none", "required": "any", "function": "tool"}[tc.mode]
    b: dict[str, Any] = {"type": typ}
    if typ == "tool":
        if not tc.name:
            raise FormatError("tool_choice: a forced function needs its name", "tool_choice")
        b["name"] = tc.name
    if tc.disable_parallel is not None and typ != "none":
        b["disable_parallel_tool_use"] = tc.disable_parallel
    return b


def _response_object(body: bytes) -> tuple[dict[str, Any], list[Any]]:
    """The message object and its content, or the FormatError for a body of another shape."""
    d = _loads(body, "Anthropic response")
    if not isinstance(d, dict):
        raise FormatError("Anthropic response must be a JSON object")
    if d.get("type") == "error":
        e = d.get("error")
        msg = e.get("message") if isinstance(e, dict) else None
        raise UpstreamErrorBody(f"Anthropic answered with an error: {_clean(msg) if isinstance(msg, str) else 'unknown'}",
                                None, 502)
    return d, _list(d.get("content"), "content")


def response_usage(body: bytes) -> Usage | None:
    """`parse_response(body).usage`, for a driver that forwards the body verbatim to a client of this
    same format and needs only the usage: the same top-level checks (the same FormatError for a body
    that is not a message object), but the content blocks are not read."""
    usage = _response_object(body)[0].get("usage")
    return _usage(usage) if isinstance(usage, dict) else None


def parse_response(body: bytes) -> Response:
    d, content = _response_object(body)
    parts: list[Part] = []
    calls: list[ToolCall] = []
    for k, b in enumerate(content):
        p = f"content.{k}"
        b = _obj(b, p)
        t = b.get("type")
        if t == "text":
            parts.append(TextPart(text=_str(b.get("text"), f"{p}.text")))
        elif t == "thinking":
            sig = b.get("signature")
            parts.append(_thinking_part(_str(b.get("thinking", ""), f"{p}.thinking"),
                                        sig if isinstance(sig, str) else ""))
        elif t == "redacted_thinking":
            parts.append(ReasoningPart(redacted=True, data=_str(b.get("data"), f"{p}.data")))
        elif t == "tool_use":
            calls.append(ToolCall(id=_str(b.get("id"), f"{p}.id"), name=_str(b.get("name"), f"{p}.name"),
                                  arguments=_dumps_input(b.get("input") or {})))
        # Server-tool blocks (server_tool_use, web_search_tool_result, ...) have no unified form.
    usage = d.get("usage")
    native, seq = _native(d.get("stop_reason"), d.get("stop_sequence"))
    return Response(
        id=str(d.get("id") or ""),
        model=str(d.get("model") or ""),
        message=Message(role="assistant", content=parts, tool_calls=calls),
        finish_reason=_finish(d.get("stop_reason")),
        usage=_usage(usage) if isinstance(usage, dict) else None,
        finish_native=native, stop_sequence=seq,
    )


class StreamParser:
    """Anthropic SSE → unified events, for any chunking of the bytes.

    message_stop is the terminal event: anything after it is ignored, and a stream that ends without
    it (or an error event) is truncated, which close() reports. Tool-call indices count tool_use
    blocks only, since the unified model numbers calls, not content blocks."""

    def __init__(self) -> None:
        self._sse = SSEDecoder(raw=True)  # each event's data as bytes, which orjson reads directly
        self._done = False
        self._kinds: dict[int, str] = {}  # block index → block type
        self._tool_of: dict[int, int] = {}  # block index → tool-call index
        self._has_args: set[int] = set()  # tool blocks that received a non-empty fragment
        self._tools = 0
        self._input: dict[str, int] = {}  # message_start's usage, the base that message_delta updates
        # Blocks with no unified form (server tools' calls and results): block index → [the block
        # as started, its input's JSON fragments]; each leaves whole at its stop as a NativeBlock.
        self._native: dict[int, list[Any]] = {}

    def feed(self, data: bytes) -> list[StreamEvent]:
        out: list[StreamEvent] = []
        if self._done:  # nothing after the terminal event counts, so nothing needs decoding
            return out
        for ev in self._sse.feed(data):
            self._handle(ev, out)
        return out

    @property
    def ended(self) -> bool:
        """The terminal event was read: nothing after it counts, so the stream is over."""
        return self._done

    def close(self) -> list[StreamEvent]:
        out: list[StreamEvent] = []
        if self._done:
            return out
        for ev in self._sse.close():
            self._handle(ev, out)
        if not self._done:
            raise FormatError("the Anthropic stream ended before message_stop", status=502)
        return out

    def _handle(self, sse: SSEEvent, out: list[StreamEvent]) -> None:
        data: bytes = sse.data  # type: ignore[assignment]  # a raw decoder's
        if self._done or data == b"[DONE]":
            return
        try:
            d = orjson.loads(data)
        except orjson.JSONDecodeError:
            try:  # orjson refuses invalid UTF-8 in bytes; as text (U+FFFD) it may still be JSON
                d = orjson.loads(data.decode("utf-8", "replace"))
            except orjson.JSONDecodeError:
                raise FormatError(f"malformed JSON in Anthropic stream event {sse.event!r}", status=502) from None
        if not isinstance(d, dict):
            raise FormatError("an Anthropic stream event is not a JSON object", status=502)
        t = d.get("type") or sse.event
        try:
            self._dispatch(t, d, out)
        except (KeyError, TypeError, ValueError) as e:
            if isinstance(e, FormatError):
                raise
            raise FormatError(f"malformed Anthropic {t} event: {e!r}", status=502) from None

    def _dispatch(self, t: Any, d: dict[str, Any], out: list[StreamEvent]) -> None:
        if t == "content_block_delta":
            idx = d["index"]
            delta = d["delta"]
            dt = delta["type"]
            kind = self._kinds.get(idx)
            if kind is None:
                raise FormatError(f"content_block_delta for block {idx} that was never started", status=502)
            if dt == "text_delta":
                if delta["text"] and kind == "text":
                    out.append(TextDelta(text=delta["text"]))
            elif dt == "input_json_delta":
                if kind == "tool_use" and delta["partial_json"]:
                    self._has_args.add(idx)
                    out.append(ToolCallDelta(index=self._tool_of[idx], arguments=delta["partial_json"]))
            elif dt == "thinking_delta":
                if delta["thinking"] and kind == "thinking":
                    out.append(ReasoningDelta(text=delta["thinking"]))
            elif dt == "signature_delta":
                if delta["signature"] and kind == "thinking":
                    out.append(_signature_delta(delta["signature"]))
            if idx in self._native and dt == "input_json_delta" and delta.get("partial_json"):
                self._native[idx][1].append(delta["partial_json"])
            # citations_delta has no unified form (lossy: docs/mapping.md)
        elif t == "content_block_start":
            idx = d["index"]
            cb = d["content_block"]
            kind = cb["type"]
            self._kinds[idx] = kind
            if kind == "text":
                if cb.get("text"):
                    out.append(TextDelta(text=cb["text"]))
            elif kind == "thinking":
                if cb.get("thinking"):
                    out.append(ReasoningDelta(text=cb["thinking"]))
                if cb.get("signature"):
                    out.append(_signature_delta(cb["signature"]))
            elif kind == "redacted_thinking":
                out.append(ReasoningDelta(redacted_data=cb["data"]))
            elif kind == "tool_use":
                n = self._tool_of[idx] = self._tools
                self._tools += 1
                args = ""
                if cb.get("input"):
                    args = _dumps_input(cb["input"])
                    self._has_args.add(idx)
                out.append(ToolCallDelta(index=n, id=cb["id"], name=cb["name"], arguments=args))
            elif isinstance(cb, dict):
                self._native[idx] = [cb, []]
        elif t == "content_block_stop":
            idx = d["index"]
            held = self._native.pop(idx, None)
            if held is not None:
                out.append(NativeBlock(provider=FAMILY, block=_whole_block(*held)))
            if self._kinds.get(idx) == "tool_use" and idx not in self._has_args:
                # A call without arguments: "{}" keeps the aggregate equal to the non-stream `input: {}`.
                out.append(ToolCallDelta(index=self._tool_of[idx], arguments="{}"))
                self._has_args.add(idx)
        elif t == "message_start":
            m = d["message"]
            u = m.get("usage") or {}
            self._input = {k: _tokens(u, k) for k in
                           ("input_tokens", "cache_read_input_tokens", "cache_creation_input_tokens", "output_tokens")}
            out.append(StreamStart(id=str(m.get("id") or ""), model=str(m.get("model") or ""),
                                   usage=_usage(self._input)))
        elif t == "message_delta":
            delta = d.get("delta") or {}
            if delta.get("stop_reason") is not None:
                native, seq = _native(delta["stop_reason"], delta.get("stop_sequence"))
                out.append(FinishEvent(reason=_finish(delta["stop_reason"]) or "stop", finish_native=native,
                                       stop_sequence=seq))
            u = d.get("usage")
            if isinstance(u, dict):
                # Cumulative: fields message_delta omits keep their message_start values.
                merged = dict(self._input)
                merged.update({k: v for k, v in u.items() if isinstance(v, int) and not isinstance(v, bool)})
                out.append(UsageEvent(usage=_usage(merged)))
        elif t == "message_stop":
            self._done = True
        elif t == "error":
            e = d.get("error") or {}
            raw_type = e.get("type")
            etype: str = raw_type if isinstance(raw_type, str) else "api_error"
            kind = _TYPE_KIND.get(etype, ErrorKind.SERVER_ERROR)
            out.append(ErrorEvent(error=Error(kind=kind, status=_TYPE_STATUS.get(etype, 500),
                                              message=_clean(str(e.get("message") or etype)), code=etype,
                                              code_family=FAMILY)))
            self._done = True
        # ping and event types newer than this module are ignored


def _whole_block(started: dict[str, Any], fragments: list[str]) -> dict[str, Any]:
    """A block with no unified form as Anthropic's non-stream answer has it: its streamed input joined."""
    block = dict(started)
    if fragments:
        try:
            block["input"] = orjson.loads("".join(fragments))
        except orjson.JSONDecodeError:
            pass  # kept as it started: a broken input is not invented
    return block


def parse_error(status: int, headers: Mapping[str, str], body: bytes) -> Error:
    h = {k.lower(): v for k, v in headers.items()}
    etype: str | None = None
    message: str | None = None
    try:
        d = orjson.loads(body)
    except orjson.JSONDecodeError:
        d = None
    if isinstance(d, dict):
        e = d.get("error")
        if isinstance(e, dict):
            etype = e.get("type") if isinstance(e.get("type"), str) else None
            message = e.get("message") if isinstance(e.get("message"), str) else None
        elif isinstance(e, str):
            message = e
    if message is None:
        message = status_message(status)
    if etype in _TYPE_KIND:
        kind = _TYPE_KIND[etype]
        # Anthropic reports an exhausted prepaid balance as a 400: it is the key's fault, not the request's.
        if kind is ErrorKind.INVALID_REQUEST and "credit balance" in message.lower():
            kind = ErrorKind.PERMISSION
    else:
        kind = error_kind_for_status(status)
    return Error(kind=kind, status=status, message=_clean(message), retry_after=retry_after(h), code=etype,
                 code_family=FAMILY)


def _clean(message: str) -> str:
    return _SECRET.sub("[redacted]", message)


