"""OpenAI Responses API (`POST /v1/responses`) ⇄ the unified model, both roles, streams included.

Theory of operation:
- Inbound (we are the server): `parse_request` maps the client's `input` items onto unified
  messages. Consecutive reasoning / assistant-message / function_call items are one assistant turn
  (that is how Chat, Anthropic and Gemini say it). `StreamRenderer` turns unified stream events
  into the Responses event lifecycle, one event at a time, holding only the small per-item state
  that the closing events (`*.done`, `response.completed`) must repeat.
- Outbound (we are the client): `build_request` always sends `store: false` and the whole
  history, because the gateway keeps no server-side state; reasoning therefore travels as
  `encrypted_content` (`ReasoningPart.signature`). `StreamParser` is the mirror of the renderer.
- What cannot be carried is listed in docs/formats/openai_responses.md ("lossy").
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
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
from axonsim.formats.openai_chat import error_headers, error_status, render_error  # noqa: F401
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

JSON = dict[str, Any]

# This family's name: `Request.source` of what parse_request reads, `signature_provider` of OpenAI's
# encrypted reasoning, and `Tool.provider` of hosted tools (web_search, file_search, mcp, ...), which
# only an OpenAI Responses channel can run (Chat's own custom tools are provider "openai").
FAMILY = "openai_responses"
MIN_OUTPUT_TOKENS = 16  # the fewest output tokens the Responses API lets a request ask for

# Anthropic's redacted_thinking has no Responses equivalent, but a Responses client must hand it
# back verbatim for the next turn to be valid upstream; we carry it as an opaque reasoning item.
REDACTED_PREFIX = "axonsim.redacted_thinking:"

# Fields of a Responses request that map onto the unified model; everything else is passed through.
_KNOWN_REQUEST_KEYS = frozenset({
    "model", "input", "instructions", "tools", "tool_choice", "max_output_tokens", "temperature",
    "top_p", "parallel_tool_calls", "stream", "reasoning", "text", "metadata", "user",
    "previous_response_id", "conversation", "background",
})


# --------------------------------------------------------------------------------------------------
# Small JSON helpers (every failure names the field, so a client can fix its request)


def _load_object(body: bytes, what: str) -> JSON:
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise FormatError(f"{what} is not valid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise FormatError(f"{what} must be a JSON object")
    return obj


def _opt(obj: JSON, key: str, types: type | tuple[type, ...], where: str, what: str) -> Any:
    value = obj.get(key)
    if value is None:
        return None
    # bool is an int in Python; a JSON true is never a valid number here
    if not isinstance(value, types) or (isinstance(value, bool) and bool not in _as_tuple(types)):
        raise FormatError(f"'{where}' must be {what}", where)
    return value


def _as_tuple(types: type | tuple[type, ...]) -> tuple[type, ...]:
    return types if isinstance(types, tuple) else (types,)


def _req_str(obj: JSON, key: str, where: str) -> str:
    value = obj.get(key)
    if value is None:
        raise FormatError(f"missing required field '{where}.{key}'", f"{where}.{key}")
    if not isinstance(value, str):
        raise FormatError(f"'{where}.{key}' must be a string", f"{where}.{key}")
    return value


def _dumps(obj: Any) -> bytes:
    return orjson.dumps(obj)


# --------------------------------------------------------------------------------------------------
# Inbound: request


def check_request(body: bytes, model: str | None = None, stream: bool | None = None) -> Parsed:
    """parse_request's result as the gateway's handler takes it (this parser builds the Request as it goes)."""
    return Parsed.of(parse_request(body, model, stream))


def parse_request(body: bytes, model: str | None = None, stream: bool | None = None) -> Request:
    obj = _load_object(body, "request body")
    # These three need state kept between requests; silently dropping them would answer a
    # different question than the client asked, so they are refused with the reason.
    if obj.get("previous_response_id") is not None:
        raise FormatError(
            "'previous_response_id' is not supported: this gateway keeps no server-side response state; "
            "send the whole conversation in 'input' (reasoning items with their encrypted_content)",
            "previous_response_id",
        )
    if obj.get("conversation") is not None:
        raise FormatError(
            "'conversation' is not supported: this gateway keeps no server-side conversation state; "
            "send the whole conversation in 'input'",
            "conversation",
        )
    if obj.get("background"):
        raise FormatError("'background' responses are not supported: this gateway stores no responses to poll",
                          "background")

    model_name = model or obj.get("model")
    if model_name is None:
        raise FormatError("missing required field 'model'", "model")
    if not isinstance(model_name, str) or not model_name:
        raise FormatError("'model' must be a non-empty string", "model")
    if obj.get("input") is None:
        raise FormatError("missing required field 'input'", "input")

    messages: list[Message] = []
    instructions = _opt(obj, "instructions", str, "instructions", "a string")
    if instructions:
        messages.append(Message(role="system", content=[TextPart(text=instructions)]))
    messages.extend(_parse_input(obj["input"]))

    extra: JSON = {k: v for k, v in obj.items() if k not in _KNOWN_REQUEST_KEYS}

    parallel = _opt(obj, "parallel_tool_calls", bool, "parallel_tool_calls", "a boolean")
    sampling = Sampling(
        temperature=_opt(obj, "temperature", (int, float), "temperature", "a number"),
        top_p=_opt(obj, "top_p", (int, float), "top_p", "a number"),
        max_tokens=_opt(obj, "max_output_tokens", int, "max_output_tokens", "an integer"),
    )
    # The ranges OpenAI's Responses API accepts (it refuses fewer than 16 output tokens).
    check_range(sampling.temperature, "temperature", 0.0, 2.0)
    check_range(sampling.top_p, "top_p", 0.0, 1.0)
    check_range(sampling.max_tokens, "max_output_tokens", MIN_OUTPUT_TOKENS)

    effort: str | None = None
    reasoning = _opt(obj, "reasoning", dict, "reasoning", "an object")
    if reasoning:
        effort = _opt(reasoning, "effort", str, "reasoning.effort", "a string")
        rest = {k: v for k, v in reasoning.items() if k != "effort" and v is not None}
        if rest:  # summary mode etc.: no unified field; kept for a same-family upstream
            extra["reasoning"] = rest

    response_format: ResponseFormat | None = None
    text = _opt(obj, "text", dict, "text", "an object")
    if text:
        fmt = _opt(text, "format", dict, "text.format", "an object")
        if fmt:
            response_format = _parse_text_format(fmt)
        rest = {k: v for k, v in text.items() if k != "format" and v is not None}
        if rest:  # verbosity: no unified field
            extra["text"] = rest

    stream_flag = stream if stream is not None else _opt(obj, "stream", bool, "stream", "a boolean")
    return Request(
        model=model_name,
        messages=messages,
        tools=_parse_tools(obj.get("tools")),
        tool_choice=_parse_tool_choice(obj.get("tool_choice"), parallel),
        response_format=response_format,
        sampling=sampling,
        stream=bool(stream_flag),
        include_usage=True,  # a Responses stream always ends with the usage
        reasoning_effort=effort,
        metadata=_opt(obj, "metadata", dict, "metadata", "an object"),
        user=_opt(obj, "user", str, "user", "a string"),
        extra_body=extra,
        source=FAMILY,
    )


def _parse_input(value: Any) -> list[Message]:
    if isinstance(value, str):
        return [Message(role="user", content=[TextPart(text=value)])]
    if not isinstance(value, list):
        raise FormatError("'input' must be a string or a list of items", "input")
    out: list[Message] = []
    turn: Message | None = None  # the assistant turn being assembled from consecutive items
    names: dict[str, str] = {}  # call_id → function name; tool results carry no name, Gemini needs it

    def assistant_turn(for_content: bool) -> Message:
        nonlocal turn
        # Text or reasoning after tool calls (or text after text) is a new turn, so that each
        # unified message reads reasoning → text → tool calls like every other family.
        if turn is None or (for_content and (turn.tool_calls or any(isinstance(p, TextPart) for p in turn.content))):
            turn = Message(role="assistant")
            out.append(turn)
        return turn

    for i, item in enumerate(value):
        where = f"input[{i}]"
        if not isinstance(item, dict):
            raise FormatError(f"'{where}' must be an object", where)
        kind = item.get("type") or "message"
        if kind == "message":
            role = item.get("role")
            if role not in ("user", "assistant", "system", "developer"):
                raise FormatError(f"'{where}.role' must be one of user, assistant, system, developer", f"{where}.role")
            if item.get("content") is None:
                raise FormatError(f"missing required field '{where}.content'", f"{where}.content")
            parts, refusal = _parse_content(item["content"], f"{where}.content")
            if role == "assistant":
                msg = assistant_turn(for_content=True)
                msg.content.extend(parts)
                if refusal:
                    msg.refusal = (msg.refusal or "") + refusal
            else:
                turn = None
                out.append(Message(role=role, content=parts))
        elif kind == "function_call":
            call_id = _req_str(item, "call_id", where)
            name = _req_str(item, "name", where)
            args = item.get("arguments", "")
            if isinstance(args, dict):  # lenient: some clients send the object itself
                args = _dumps(args).decode()
            if not isinstance(args, str):
                raise FormatError(f"'{where}.arguments' must be a JSON string", f"{where}.arguments")
            assistant_turn(for_content=False).tool_calls.append(ToolCall(id=call_id, name=name, arguments=args))
            names[call_id] = name
        elif kind == "function_call_output":
            call_id = _req_str(item, "call_id", where)
            if "output" not in item or item["output"] is None:
                raise FormatError(f"missing required field '{where}.output'", f"{where}.output")
            content = _parse_tool_output(item["output"], f"{where}.output")
            turn = None
            out.append(Message(role="tool", content=[
                ToolResultPart(tool_call_id=call_id, name=names.get(call_id), content=content)]))
        elif kind == "reasoning":
            part = _parse_reasoning_item(item, where)
            if part is not None:
                assistant_turn(for_content=True).content.append(part)
        elif kind == "item_reference":
            raise FormatError(
                f"'{where}' is an item_reference, which points at an item stored by an earlier response; "
                "this gateway keeps no server-side state, so send the full item instead", where)
        else:
            raise FormatError(
                f"input item type {kind!r} at '{where}' is not supported by this gateway "
                "(supported: message, function_call, function_call_output, reasoning)", f"{where}.type")
    return out


def _parse_content(content: Any, where: str) -> tuple[list[Any], str | None]:
    if isinstance(content, str):
        return [TextPart(text=content)], None
    if not isinstance(content, list):
        raise FormatError(f"'{where}' must be a string or a list of content parts", where)
    parts: list[Any] = []
    refusal: str | None = None
    for j, part in enumerate(content):
        pw = f"{where}[{j}]"
        if not isinstance(part, dict):
            raise FormatError(f"'{pw}' must be an object", pw)
        ptype = part.get("type")
        if ptype in ("input_text", "output_text", "text"):
            parts.append(TextPart(text=_req_str(part, "text", pw)))
        elif ptype == "input_image":
            parts.append(_parse_image(part, pw))
        elif ptype == "refusal":
            refusal = (refusal or "") + _req_str(part, "refusal", pw)
        else:
            raise FormatError(f"content part type {ptype!r} at '{pw}' is not supported by this gateway "
                              "(supported: input_text, input_image, output_text, refusal)", f"{pw}.type")
    return parts, refusal


def _parse_image(part: JSON, where: str) -> ImagePart:
    if part.get("image_url") is None:
        if part.get("file_id") is not None:
            raise FormatError(f"'{where}.file_id' refers to an OpenAI-stored file, which cannot be sent to other "
                              "channels; send 'image_url' (https or data: URL) instead", f"{where}.file_id")
        raise FormatError(f"missing required field '{where}.image_url'", f"{where}.image_url")
    url = _req_str(part, "image_url", where)
    detail = _opt(part, "detail", str, f"{where}.detail", "a string")
    return _image_from_url(url, f"{where}.image_url", detail)


def _image_from_url(url: str, where: str, detail: str | None) -> ImagePart:
    if url.startswith("data:"):
        header, sep, data = url[5:].partition(",")
        if not sep or not header.endswith(";base64"):
            raise FormatError(f"'{where}' must be a base64 data: URL (data:<media type>;base64,...)", where)
        return ImagePart(media_type=header[: -len(";base64")] or None, data=data, detail=detail)
    if url.startswith(("https://", "http://")):
        return ImagePart(url=url, detail=detail)
    raise FormatError(f"'{where}' must be an https:// or data: URL", where)


def _parse_tool_output(output: Any, where: str) -> list[Any]:
    if isinstance(output, str):
        return [TextPart(text=output)] if output else []
    if not isinstance(output, list):
        raise FormatError(f"'{where}' must be a string or a list of content parts", where)
    parts, _ = _parse_content(output, where)
    return parts


def _parse_reasoning_item(item: JSON, where: str) -> ReasoningPart | None:
    enc = _opt(item, "encrypted_content", str, f"{where}.encrypted_content", "a string")
    if enc is not None and enc.startswith(REDACTED_PREFIX):
        return ReasoningPart(redacted=True, data=enc[len(REDACTED_PREFIX):])
    text = _reasoning_text(item, where)
    if not text and enc is None:
        return None  # nothing a provider could use: without encrypted_content the id needs stored state
    if enc is None:
        return ReasoningPart(text=text)
    sig, provider = import_signature(enc, FAMILY)
    return ReasoningPart(text=text, signature=sig, signature_provider=provider)


def _reasoning_text(item: JSON, where: str) -> str:
    """The summary parts joined (as the stream parser joins summary parts); raw reasoning_text
    content only when there is no summary, since the summary is what OpenAI returns by default."""
    for key in ("summary", "content"):
        parts = item.get(key)
        if parts is None:
            continue
        if not isinstance(parts, list):
            raise FormatError(f"'{where}.{key}' must be a list", f"{where}.{key}")
        texts: list[str] = []
        for p in parts:
            if not isinstance(p, dict) or not isinstance(p.get("text"), str):
                raise FormatError(f"'{where}.{key}' parts must be objects with a 'text' string", f"{where}.{key}")
            texts.append(p["text"])
        if texts:
            return "\n\n".join(texts)
    return ""


def _parse_tools(value: Any) -> list[Tool]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise FormatError("'tools' must be a list", "tools")
    tools: list[Tool] = []
    for i, t in enumerate(value):
        where = f"tools[{i}]"
        if not isinstance(t, dict):
            raise FormatError(f"'{where}' must be an object", where)
        ttype = t.get("type")
        if ttype == "function":
            tools.append(Tool(
                name=_req_str(t, "name", where),
                description=_opt(t, "description", str, f"{where}.description", "a string"),
                parameters=_opt(t, "parameters", dict, f"{where}.parameters", "a JSON schema object"),
                strict=_opt(t, "strict", bool, f"{where}.strict", "a boolean"),
            ))
        elif isinstance(ttype, str) and ttype:
            # Hosted tools (web_search, file_search, mcp, ...) run inside OpenAI: kept verbatim so
            # that candidate selection can route them only to OpenAI Responses channels.
            name = t.get("name") if isinstance(t.get("name"), str) else ttype
            tools.append(Tool(type="native", name=name, provider=FAMILY, native=dict(t)))
        else:
            raise FormatError(f"missing required field '{where}.type'", f"{where}.type")
    return tools


def _parse_tool_choice(value: Any, parallel: bool | None) -> ToolChoice | None:
    disable = None if parallel is None else not parallel
    if value is None:
        return ToolChoice(disable_parallel=disable) if disable is not None else None
    if value in ("none", "auto", "required"):
        return ToolChoice(mode=value, disable_parallel=disable)
    if isinstance(value, dict):
        ctype = value.get("type")
        if ctype == "function":
            return ToolChoice(mode="function", name=_req_str(value, "name", "tool_choice"), disable_parallel=disable)
        if ctype == "allowed_tools":
            # The subset restriction has no unified field; its mode survives (lossy, documented).
            mode = value.get("mode", "auto")
            if mode not in ("auto", "required"):
                raise FormatError("'tool_choice.mode' must be auto or required", "tool_choice.mode")
            return ToolChoice(mode=mode, disable_parallel=disable)
        if isinstance(ctype, str) and ctype:
            # Forcing a hosted tool: the closest unified statement is "call a tool" (lossy).
            return ToolChoice(mode="required", disable_parallel=disable)
    raise FormatError("'tool_choice' must be none, auto, required or an object with a 'type'", "tool_choice")


def _parse_text_format(fmt: JSON) -> ResponseFormat:
    ftype = fmt.get("type")
    if ftype in ("text", "json_object"):
        return ResponseFormat(type=ftype)
    if ftype == "json_schema":
        return ResponseFormat(
            type="json_schema",
            name=_opt(fmt, "name", str, "text.format.name", "a string"),
            json_schema=_opt(fmt, "schema", dict, "text.format.schema", "a JSON schema object"),
            strict=_opt(fmt, "strict", bool, "text.format.strict", "a boolean"),
            description=_opt(fmt, "description", str, "text.format.description", "a string"),
        )
    raise FormatError("'text.format.type' must be text, json_object or json_schema", "text.format.type")


# --------------------------------------------------------------------------------------------------
# Rendering shared by the non-stream body and the stream's lifecycle events


def _id_base(resp_id: str) -> str:
    return resp_id[5:] if resp_id.startswith("resp_") else resp_id


def _usage_obj(u: Usage | None) -> JSON | None:
    if u is None:
        return None
    return {
        "input_tokens": u.prompt_tokens,
        "input_tokens_details": {"cached_tokens": u.cached_tokens, "cache_write_tokens": u.cache_write_tokens},
        "output_tokens": u.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": u.reasoning_tokens},
        "total_tokens": u.total_tokens or u.prompt_tokens + u.completion_tokens,
    }


def _reasoning_item(item_id: str, part: ReasoningPart, status: str | None = None) -> JSON:
    if part.redacted:
        item: JSON = {"id": item_id, "type": "reasoning", "summary": [],
                      "encrypted_content": REDACTED_PREFIX + (part.data or "")}
    else:
        item = {"id": item_id, "type": "reasoning",
                "summary": [{"type": "summary_text", "text": part.text}] if part.text else []}
        if part.signature is not None:
            # Another family's signature is wrapped, so that a replay still knows whose it is.
            item["encrypted_content"] = export_signature(part.signature, part.signature_provider, FAMILY)
    if status:
        item["status"] = status
    return item


def _text_part(text: str) -> JSON:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def _refusal_part(text: str) -> JSON:
    return {"type": "refusal", "refusal": text}


def _message_item(item_id: str, content: list[JSON], status: str) -> JSON:
    return {"id": item_id, "type": "message", "status": status, "role": "assistant", "content": content}


def _call_item(item_id: str, call_id: str, name: str, arguments: str, status: str) -> JSON:
    return {"id": item_id, "type": "function_call", "status": status, "call_id": call_id, "name": name,
            "arguments": arguments}


def _output_items(msg: Message, base: str, status: str) -> list[JSON]:
    items: list[JSON] = []
    texts: list[JSON] = []  # output_text parts of the message item being assembled

    def flush() -> None:
        if texts:
            items.append(_message_item(f"msg_{base}_{len(items)}", list(texts), status))
            texts.clear()

    for part in msg.content:
        if isinstance(part, ReasoningPart):
            flush()
            items.append(_reasoning_item(f"rs_{base}_{len(items)}", part))
        elif isinstance(part, TextPart):
            texts.append(_text_part(part.text))
    if msg.refusal:
        texts.append(_refusal_part(msg.refusal))
    flush()
    for call in msg.tool_calls:
        items.append(_call_item(f"fc_{base}_{len(items)}", call.id, call.name, call.arguments, "completed"))
    return items


def _status_fields(finish: FinishReason | None) -> tuple[str, JSON | None, JSON | None]:
    """(status, incomplete_details, error) of a finished response."""
    if finish == "length":
        return "incomplete", {"reason": "max_output_tokens"}, None
    if finish == "content_filter":
        return "incomplete", {"reason": "content_filter"}, None
    if finish == "error":
        return "failed", None, {"code": "server_error", "message": "the model stopped with an error"}
    return "completed", None, None


def _tool_obj(t: Tool) -> JSON | None:
    if t.type == "native":
        return dict(t.native) if t.provider == FAMILY and t.native else None
    return {"type": "function", "name": t.name, "description": t.description, "parameters": t.parameters,
            "strict": t.strict}


def _tool_choice_obj(tc: ToolChoice | None) -> Any:
    if tc is None or tc.mode == "auto":
        return "auto"
    if tc.mode == "function":
        return {"type": "function", "name": tc.name or ""}
    return tc.mode


def _format_obj(rf: ResponseFormat | None) -> JSON:
    if rf is None or rf.type == "text":
        return {"type": "text"}
    if rf.type == "json_object":
        return {"type": "json_object"}
    fmt: JSON = {"type": "json_schema", "name": rf.name or "response", "schema": rf.json_schema or {}}
    if rf.strict is not None:
        fmt["strict"] = rf.strict
    if rf.description is not None:
        fmt["description"] = rf.description
    return fmt


def _envelope(resp_id: str, model: str, created: int, status: str, output: list[JSON], usage: Usage | None,
              req: Request | None = None, incomplete: JSON | None = None, error: JSON | None = None) -> JSON:
    """A full Response object. Request echo fields come from `req` when we have it (streams);
    the non-stream contract has only the unified Response, so they get the API defaults."""
    tools: list[JSON] = []
    instructions: str | None = None
    sampling = Sampling()
    if req is not None:
        tools = [o for o in (_tool_obj(t) for t in req.tools) if o is not None]
        if req.messages and req.messages[0].role == "system":
            instructions = _instructions(req.messages[0])
        sampling = req.sampling
    return {
        "id": resp_id,
        "object": "response",
        "created_at": created,
        "status": status,
        "error": error,
        "incomplete_details": incomplete,
        "instructions": instructions,
        "max_output_tokens": sampling.max_tokens,
        "model": model,
        "output": output,
        "parallel_tool_calls": not (req and req.tool_choice and req.tool_choice.disable_parallel),
        "previous_response_id": None,
        "reasoning": {"effort": req.reasoning_effort if req else None,
                      "summary": _dict_or_empty(req.extra_body.get("reasoning")).get("summary") if req else None},
        "store": False,
        "temperature": sampling.temperature,
        "text": {"format": _format_obj(req.response_format if req else None)},
        "tool_choice": _tool_choice_obj(req.tool_choice if req else None),
        "tools": tools,
        "top_p": sampling.top_p,
        "truncation": "disabled",
        "usage": _usage_obj(usage),
        "user": req.user if req else None,
        "metadata": (req.metadata if req else None) or {},
    }


def render_response(resp: Response) -> bytes:
    status, incomplete, error = _status_fields(resp.finish_reason)
    item_status = "incomplete" if status == "incomplete" else "completed"
    output = _output_items(resp.message, _id_base(resp.id), item_status)
    return _dumps(_envelope(resp.id, resp.model, resp.created, status, output, resp.usage,
                            incomplete=incomplete, error=error))


# --------------------------------------------------------------------------------------------------
# Inbound: stream rendering


@dataclass
class _Item:
    """An output item that has been announced (output_item.added) but not yet closed."""

    kind: str  # "message" | "refusal" (a message item whose part is a refusal) | "reasoning" | "function_call"
    index: int  # output_index
    id: str
    chunks: list[str] = field(default_factory=list)  # text, reasoning summary or arguments so far
    call_id: str = ""
    name: str = ""
    signature: str | None = None
    signature_provider: str | None = None
    summary_open: bool = False
    upstream_id: str | None = None  # the upstream's id of the item these deltas belong to, if it said


class StreamRenderer:
    """Unified stream events → the Responses SSE lifecycle.

    Invariants the SDK's `responses.stream()` helper checks (protocols.md §2), kept here by
    construction: `response.created` is the first event; one response id throughout; every
    content event follows its `output_item.added` (and `content_part.added` for text); every added
    item is closed with `output_item.done` before `response.completed`, whose `output` repeats all
    items with the same ids. At most one message/reasoning item is open at a time; function calls
    of one run of tool-call deltas stay open together, because upstreams may interleave them.
    """

    def __init__(self, req: Request | Parsed) -> None:
        req = req.request() if isinstance(req, Parsed) else req  # the response object echoes its parameters
        self._req = req
        self._seq = 0
        self._started = False
        self._done = False
        self._id = "resp_0"
        self._model = req.model
        self._created = 0
        self._usage: Usage | None = None
        self._finish: FinishReason | None = None
        self._output: list[JSON | None] = []  # by output_index; None while the item is open
        self._content: _Item | None = None  # the open message or reasoning item
        self._calls: dict[int, _Item] = {}  # unified tool-call index → its function_call item
        self._open_calls: list[_Item] = []
        self._upstream_ids: set[str] = set()  # upstream item ids already given to an item

    # -- public -----------------------------------------------------------------------------------

    def render(self, ev: StreamEvent) -> bytes:
        if self._done:
            return b""
        if isinstance(ev, StreamStart):
            if ev.usage is not None and self._usage is None:
                self._usage = ev.usage
            if self._started:
                return b""
            self._id = ev.id or self._id
            self._model = ev.model or self._model
            self._created = ev.created
            return self._start()
        out = self._start() if not self._started else b""
        if isinstance(ev, TextDelta):
            return out + (self._refusal(ev.text, ev.item_id) if ev.refusal else self._text(ev.text, ev.item_id))
        if isinstance(ev, ReasoningDelta):
            return out + self._reasoning(ev)
        if isinstance(ev, ToolCallDelta):
            return out + self._tool_call(ev)
        if isinstance(ev, FinishEvent):
            self._finish = ev.reason
            return out
        if isinstance(ev, UsageEvent):
            self._usage = ev.usage
            return out
        if isinstance(ev, ErrorEvent):
            return out + self.error(ev.error)
        if isinstance(ev, NativeBlock) and ev.provider == FAMILY:
            return out + self._native_item(ev.block)
        return out

    def finish(self) -> bytes:
        if self._done:
            return b""
        out = self._start() if not self._started else b""
        status, incomplete, error = _status_fields(self._finish)
        item_status = "incomplete" if status == "incomplete" else "completed"
        out += self._close_all(item_status)
        etype = {"completed": "response.completed", "incomplete": "response.incomplete",
                 "failed": "response.failed"}[status]
        out += self._emit(etype, response=self._env(status, incomplete=incomplete, error=error))
        self._done = True
        return out

    def error(self, err: Error) -> bytes:
        if self._done:
            return b""
        out = self._start() if not self._started else b""
        # Open items are not closed with output_item.done (they did not complete); the failed
        # response lists them as incomplete so a client keeps what had arrived.
        body = {"code": _failed_code(err), "message": err.message}
        out += self._emit("response.failed", response=self._env("failed", error=body, partial=True))
        self._done = True
        return out

    # -- lifecycle --------------------------------------------------------------------------------

    def _emit(self, etype: str, **fields: Any) -> bytes:
        payload = {"type": etype, **fields, "sequence_number": self._seq}
        self._seq += 1
        return encode(_dumps(payload), event=etype)

    def _env(self, status: str, incomplete: JSON | None = None, error: JSON | None = None,
             partial: bool = False) -> JSON:
        output: list[JSON] = []
        for i, item in enumerate(self._output):
            if item is not None:
                output.append(item)
            elif partial:
                open_item = self._content if self._content and self._content.index == i else None
                open_item = open_item or next((c for c in self._open_calls if c.index == i), None)
                if open_item is not None:
                    output.append(self._final(open_item, "incomplete"))
        usage = self._usage if status != "in_progress" else None
        return _envelope(self._id, self._model, self._created, status, output, usage, self._req,
                         incomplete=incomplete, error=error)

    def _start(self) -> bytes:
        self._started = True
        env = self._env("in_progress")
        return self._emit("response.created", response=env) + self._emit("response.in_progress", response=env)

    def _new_item(self, kind: str, prefix: str, upstream_id: str | None = None, **kw: Any) -> _Item:
        """An item with the upstream's id for it (a client may send it back by that id), else one of ours."""
        index = len(self._output)
        self._output.append(None)
        if upstream_id is not None and upstream_id not in self._upstream_ids:
            self._upstream_ids.add(upstream_id)
            return _Item(kind=kind, index=index, id=upstream_id, upstream_id=upstream_id, **kw)
        # Ours when it said none, or repeated one (item ids are unique in a response)
        return _Item(kind=kind, index=index, id=f"{prefix}_{_id_base(self._id)}_{index}", upstream_id=upstream_id, **kw)

    def _final(self, item: _Item, status: str) -> JSON:
        text = "".join(item.chunks)
        if item.kind == "message":
            return _message_item(item.id, [_text_part(text)], status)
        if item.kind == "refusal":
            return _message_item(item.id, [_refusal_part(text)], status)
        if item.kind == "function_call":
            return _call_item(item.id, item.call_id, item.name, text, status)
        return _reasoning_item(item.id, ReasoningPart(text=text, signature=item.signature,
                                                      signature_provider=item.signature_provider), status)

    def _close_content(self, status: str = "completed") -> bytes:
        item = self._content
        if item is None:
            return b""
        self._content = None
        text = "".join(item.chunks)
        out = b""
        if item.kind == "message":
            common = {"item_id": item.id, "output_index": item.index, "content_index": 0}
            out += self._emit("response.output_text.done", **common, text=text, logprobs=[])
            out += self._emit("response.content_part.done", **common, part=_text_part(text))
        elif item.kind == "refusal":
            common = {"item_id": item.id, "output_index": item.index, "content_index": 0}
            out += self._emit("response.refusal.done", **common, refusal=text)
            out += self._emit("response.content_part.done", **common, part=_refusal_part(text))
        elif item.summary_open:
            common = {"item_id": item.id, "output_index": item.index, "summary_index": 0}
            out += self._emit("response.reasoning_summary_text.done", **common, text=text)
            out += self._emit("response.reasoning_summary_part.done", **common,
                              part={"type": "summary_text", "text": text})
        final = self._final(item, status)
        self._output[item.index] = final
        return out + self._emit("response.output_item.done", output_index=item.index, item=final)

    def _close_calls(self, status: str = "completed") -> bytes:
        out = b""
        for item in self._open_calls:
            args = "".join(item.chunks)
            out += self._emit("response.function_call_arguments.done", item_id=item.id, output_index=item.index,
                              arguments=args)
            final = self._final(item, status)
            self._output[item.index] = final
            out += self._emit("response.output_item.done", output_index=item.index, item=final)
        self._open_calls = []
        return out

    def _close_all(self, status: str) -> bytes:
        return self._close_content(status) + self._close_calls(status)

    # -- content ----------------------------------------------------------------------------------

    def _open_message(self, kind: str, item_id: str | None, part: JSON) -> tuple[bytes, _Item]:
        """Close what is open and announce a message item (`kind` message or refusal) and its one part."""
        out = self._close_all("completed")
        item = self._content = self._new_item(kind, "msg", item_id)
        out += self._emit("response.output_item.added", output_index=item.index,
                          item=_message_item(item.id, [], "in_progress"))
        out += self._emit("response.content_part.added", item_id=item.id, output_index=item.index, content_index=0,
                          part=part)
        return out, item

    def _text(self, text: str, item_id: str | None = None) -> bytes:
        if not text:
            return b""  # an empty delta must not open an (empty) message item
        item = self._content
        if item is None or item.kind != "message" or (item_id is not None and item_id != item.upstream_id):
            out, item = self._open_message("message", item_id, _text_part(""))
            item.chunks.append(text)
            return out + self._emit("response.output_text.delta", item_id=item.id, output_index=item.index,
                                    content_index=0, delta=text, logprobs=[])
        # More text for the open message, the bulk of a stream: the bytes _emit would make of the same
        # fields, from a template instead of a dict serialised whole.
        item.chunks.append(text)
        seq = self._seq
        self._seq = seq + 1
        return (b'event: response.output_text.delta\ndata: {"type":"response.output_text.delta","item_id":'
                + _dumps(item.id) + b',"output_index":' + str(item.index).encode()
                + b',"content_index":0,"delta":' + _dumps(text) + b',"logprobs":[],"sequence_number":'
                + str(seq).encode() + b"}\n\n")

    def _refusal(self, text: str, item_id: str | None = None) -> bytes:
        """A refusal: a message item of its own whose one part is a refusal, as OpenAI sends it."""
        if not text:
            return b""
        out = b""
        item = self._content
        if item is None or item.kind != "refusal" or (item_id is not None and item_id != item.upstream_id):
            out, item = self._open_message("refusal", item_id, _refusal_part(""))
        item.chunks.append(text)
        return out + self._emit("response.refusal.delta", item_id=item.id, output_index=item.index, content_index=0,
                                delta=text)

    def _open_reasoning(self, item_id: str | None) -> bytes:
        out = self._close_all("completed")
        item = self._content = self._new_item("reasoning", "rs", item_id)
        return out + self._emit("response.output_item.added", output_index=item.index,
                                item={"id": item.id, "type": "reasoning", "summary": []})

    def _reasoning(self, ev: ReasoningDelta) -> bytes:
        out = b""
        if ev.text:
            item = self._content
            # A signature closes a thinking block (Anthropic); more thinking is a new item.
            if (item is None or item.kind != "reasoning" or item.signature is not None
                    or (ev.item_id is not None and ev.item_id != item.upstream_id)):
                out += self._open_reasoning(ev.item_id)
                item = self._content
                assert item is not None
            common = {"item_id": item.id, "output_index": item.index, "summary_index": 0}
            if not item.summary_open:
                item.summary_open = True
                out += self._emit("response.reasoning_summary_part.added", **common,
                                  part={"type": "summary_text", "text": ""})
            item.chunks.append(ev.text)
            out += self._emit("response.reasoning_summary_text.delta", **common, delta=ev.text)
        if ev.signature:
            item = self._content
            if (item is None or item.kind != "reasoning" or item.signature is not None
                    or (ev.item_id is not None and ev.item_id != item.upstream_id)):
                out += self._open_reasoning(ev.item_id)
                item = self._content
                assert item is not None
            item.signature = ev.signature
            item.signature_provider = ev.signature_provider
        if ev.redacted_data:
            out += self._close_all("completed")
            item = self._new_item("reasoning", "rs", ev.item_id)
            final = _reasoning_item(item.id, ReasoningPart(redacted=True, data=ev.redacted_data))
            out += self._emit("response.output_item.added", output_index=item.index, item=final)
            self._output[item.index] = final
            out += self._emit("response.output_item.done", output_index=item.index, item=final)
        return out

    def _native_item(self, item: JSON) -> bytes:
        """A built-in tool's item, added and done at once (its progress events are not replayed)."""
        out = self._close_all("completed")
        index = len(self._output)
        iid = item.get("id")
        if isinstance(iid, str):
            self._upstream_ids.add(iid)
        self._output.append(item)
        out += self._emit("response.output_item.added", output_index=index, item=item)
        return out + self._emit("response.output_item.done", output_index=index, item=item)

    def _tool_call(self, ev: ToolCallDelta) -> bytes:
        out = b""
        item = self._calls.get(ev.index)
        if item is None:
            out += self._close_content("completed")
            item = self._new_item("function_call", "fc", ev.item_id,
                                  call_id=ev.id or f"call_{_id_base(self._id)}_{ev.index}",
                                  name=ev.name or "")
            self._calls[ev.index] = item
            self._open_calls.append(item)
            out += self._emit("response.output_item.added", output_index=item.index,
                              item=_call_item(item.id, item.call_id, item.name, "", "in_progress"))
        if not ev.arguments:
            return out
        item.chunks.append(ev.arguments)
        closed = self._output[item.index]
        if closed is not None:
            # A late fragment of a call that was already closed cannot be streamed any more;
            # the final response still carries the whole arguments.
            closed["arguments"] = "".join(item.chunks)
            return out
        return out + self._emit("response.function_call_arguments.delta", item_id=item.id,
                                output_index=item.index, delta=ev.arguments)


# ResponseError.code values the SDK knows; anything else is reported as server_error.
_FAILED_CODES = frozenset({
    "server_error", "rate_limit_exceeded", "invalid_prompt", "vector_store_timeout", "invalid_image",
    "invalid_image_format", "invalid_base64_image", "invalid_image_url", "image_too_large", "image_too_small",
    "image_parse_error", "image_content_policy_violation", "invalid_image_mode", "image_file_too_large",
    "unsupported_image_media_type", "empty_image_file", "failed_to_download_image", "image_file_not_found",
})


def _failed_code(err: Error) -> str:
    if err.code is not None and err.code in _FAILED_CODES:
        return err.code
    if err.kind is ErrorKind.RATE_LIMITED:
        return "rate_limit_exceeded"
    if err.kind is ErrorKind.INVALID_REQUEST:
        return "invalid_prompt"
    return "server_error"


# --------------------------------------------------------------------------------------------------
# Errors: the OpenAI family shape {"error": {"message", "type", "param", "code"}} with the same
# statuses as Chat, so a client of either OpenAI API sees one gateway: Chat's implementation serves
# both (error_status, render_error and error_headers are re-exported from openai_chat above).


# --------------------------------------------------------------------------------------------------
# Outbound: request


def request_path(upstream_model: str, stream: bool) -> str:
    return "/responses"


def auth_headers(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _effort_for_budget(budget: int) -> str | None:
    """Anthropic/Gemini speak in token budgets, OpenAI in effort levels; thresholds are a policy.
    0 means no reasoning; a negative budget (Anthropic `adaptive`, Gemini `-1`) means the model
    decides: None, i.e. reasoning on at OpenAI's default effort."""
    if budget == 0:
        return "none"
    if budget < 0:
        return None
    if budget < 4096:
        return "low"
    if budget < 16384:
        return "medium"
    return "high"


def _instructions(m: Message) -> str:
    """A leading system message as `instructions`, which is one string: several text blocks (Anthropic's
    system list, Gemini's systemInstruction parts) are joined by a blank line, so they stay apart."""
    return "\n\n".join(p.text for p in m.content if isinstance(p, TextPart))


def _dict_or_empty(value: Any) -> JSON:
    # extra_body may have been filled by another family's client, in another shape
    return dict(value) if isinstance(value, dict) else {}


def stream_passthrough(body: bytes, parsed: Parsed | None = None) -> bytes:
    """A client's stream request, validated by parse_request, forwarded to a channel of this format:
    as it came (Responses streams always report usage (response.completed))."""
    return body


def build_request(req: Request, upstream_model: str) -> bytes:
    refuse_foreign_fields(req, FAMILY, "an OpenAI Responses channel")
    if req.sampling.n is not None and req.sampling.n > 1:
        raise FormatError("OpenAI Responses returns one answer per request; 'n' > 1 cannot be served", "n")
    body: JSON = {"model": upstream_model}
    messages = req.messages
    if messages and messages[0].role == "system" and all(isinstance(p, TextPart) for p in messages[0].content):
        # `instructions` is text only: a system message with an image stays an input item
        body["instructions"] = _instructions(messages[0])
        messages = messages[1:]
    body["input"] = _build_input(messages, 1 if len(messages) < len(req.messages) else 0)

    if req.tools:
        tools = []
        for i, t in enumerate(req.tools):
            if t.type == "native":
                if t.provider != FAMILY or not t.native:
                    raise FormatError(f"tool {t.name!r} is a native tool of {t.provider or 'another provider'} "
                                      "and cannot be sent to an OpenAI Responses channel", f"tools[{i}]")
                tools.append(dict(t.native))
            else:
                # Responses makes functions strict by default; unified "unspecified" means the
                # non-strict default of every other family, so it is said explicitly.
                tools.append({"type": "function", "name": t.name, "description": t.description,
                              "parameters": t.parameters, "strict": bool(t.strict)})
        body["tools"] = tools
    tc = req.tool_choice
    if tc is not None:
        body["tool_choice"] = _tool_choice_obj(tc)
        if tc.disable_parallel is not None:
            body["parallel_tool_calls"] = not tc.disable_parallel

    s = req.sampling
    if s.temperature is not None:
        body["temperature"] = s.temperature
    if s.top_p is not None:
        body["top_p"] = s.top_p
    if s.max_tokens is not None:
        # Another family's client may ask for fewer (Claude clients probe a model with max_tokens 1),
        # which the Responses API refuses: it gets the floor instead (16 tokens for its 1).
        body["max_output_tokens"] = max(s.max_tokens, MIN_OUTPUT_TOKENS)

    # Another family's extra fields (and its `reasoning`/`text`/`include` shapes) are not ours.
    extra = dict(req.extra_body) if req.source == FAMILY else {}
    effort = req.reasoning_effort
    if effort is None and req.reasoning_budget is not None:
        effort = _effort_for_budget(req.reasoning_budget)
    thinking = effort not in (None, "none") or (effort is None and (req.reasoning_budget or 0) < 0)
    reasoning = _dict_or_empty(extra.pop("reasoning", None))
    if effort is not None:
        reasoning["effort"] = effort
    if thinking:
        reasoning.setdefault("summary", "auto")  # without it OpenAI returns no reasoning text
    if reasoning:
        body["reasoning"] = reasoning
    raw_include = extra.pop("include", None)
    include = [x for x in raw_include if isinstance(x, str)] if isinstance(raw_include, list) else []
    if thinking and "reasoning.encrypted_content" not in include:
        # store=false: the encrypted reasoning is the only way to replay it on the next turn
        include.append("reasoning.encrypted_content")
    if include:
        body["include"] = include

    text = _dict_or_empty(extra.pop("text", None))
    if req.response_format is not None:
        text["format"] = _format_obj(req.response_format)
    if text:
        body["text"] = text
    if req.metadata is not None:
        body["metadata"] = req.metadata
    if req.user is not None:
        body["user"] = req.user
    if req.stream:
        body["stream"] = True
    for key, value in extra.items():
        body.setdefault(key, value)  # unknown client fields pass through; ours win
    body["store"] = False  # the gateway never relies on (or leaves) provider-side state
    return _dumps(body)


def _input_text_parts(msg: Message, where: str) -> list[JSON]:
    parts: list[JSON] = []
    for j, p in enumerate(msg.content):
        if isinstance(p, TextPart):
            parts.append({"type": "input_text", "text": p.text})
        elif isinstance(p, ImagePart):
            parts.append(_input_image(p, f"{where}.content[{j}]"))
    return parts


def _input_image(p: ImagePart, where: str) -> JSON:
    if p.url:
        url = p.url
    elif p.data is not None:
        url = f"data:{p.media_type or 'image/png'};base64,{p.data}"
    else:
        raise FormatError(f"image at '{where}' has neither a URL nor data", where)
    part: JSON = {"type": "input_image", "image_url": url}
    if p.detail is not None:
        part["detail"] = p.detail
    return part


def _call_output(p: ToolResultPart, where: str) -> JSON:
    output: Any
    if not p.content:
        output = ""
    elif len(p.content) == 1 and isinstance(p.content[0], TextPart):
        output = p.content[0].text
    else:
        output = [{"type": "input_text", "text": c.text} if isinstance(c, TextPart) else _input_image(c, where)
                  for c in p.content]
    return {"type": "function_call_output", "call_id": p.tool_call_id, "output": output}


def _build_input(messages: list[Message], offset: int) -> list[JSON]:
    items: list[JSON] = []
    for i, m in enumerate(messages):
        where = f"messages[{i + offset}]"
        if m.role in ("system", "developer", "user"):
            results = [p for p in m.content if isinstance(p, ToolResultPart)]
            for r in results:  # Anthropic-style tool results inside a user turn
                items.append(_call_output(r, where))
            parts = _input_text_parts(m, where)
            if parts or not results:
                items.append({"type": "message", "role": m.role, "content": parts})
        elif m.role == "tool":
            results = [p for p in m.content if isinstance(p, ToolResultPart)]
            if not results:
                raise FormatError(f"tool message at '{where}' has no tool_call_id", where)
            items.extend(_call_output(r, where) for r in results)
        else:
            _assistant_items(m, where, items)
    return items


def _assistant_items(m: Message, where: str, items: list[JSON]) -> None:
    texts: list[JSON] = []

    def flush() -> None:
        if texts:
            items.append({"type": "message", "role": "assistant", "content": list(texts)})
            texts.clear()

    for p in m.content:
        if isinstance(p, ReasoningPart):
            # Only OpenAI's own encrypted reasoning can be replayed (store=false): plain text
            # reasoning, redacted thinking and other families' signatures are dropped (lossy).
            if p.redacted or not replayable(p.signature, p.signature_provider, FAMILY):
                continue
            flush()
            # No item id: with store=false OpenAI would look the id up and fail.
            items.append({"type": "reasoning", "encrypted_content": p.signature,
                          "summary": [{"type": "summary_text", "text": p.text}] if p.text else []})
        elif isinstance(p, TextPart):
            texts.append({"type": "output_text", "text": p.text, "annotations": []})
        elif isinstance(p, ImagePart):
            raise FormatError(f"an assistant message at '{where}' carries an image, which OpenAI "
                              "Responses cannot take as assistant input", where)
    if m.refusal:
        texts.append({"type": "refusal", "refusal": m.refusal})
    flush()
    for call in m.tool_calls:
        items.append({"type": "function_call", "call_id": call.id, "name": call.name,
                      "arguments": call.arguments})


# --------------------------------------------------------------------------------------------------
# Outbound: response


def _finish_for(status: Any, incomplete: Any, had_calls: bool) -> FinishReason:
    if status == "incomplete":
        reason = incomplete.get("reason") if isinstance(incomplete, dict) else None
        return "content_filter" if reason == "content_filter" else "length"
    if status in ("failed", "cancelled"):
        return "error"
    return "tool_calls" if had_calls else "stop"


def _parse_usage(u: Any) -> Usage | None:
    if not isinstance(u, dict):
        return None
    inp = u.get("input_tokens_details") or {}
    outp = u.get("output_tokens_details") or {}

    def num(d: Any, key: str) -> int:
        v = d.get(key) if isinstance(d, dict) else None
        return int(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else 0

    usage = Usage(
        prompt_tokens=num(u, "input_tokens"),
        completion_tokens=num(u, "output_tokens"),
        total_tokens=num(u, "total_tokens"),
        cached_tokens=num(inp, "cached_tokens"),
        cache_write_tokens=num(inp, "cache_write_tokens"),
        reasoning_tokens=num(outp, "reasoning_tokens"),
    )
    return usage.finalised()


def _response_object(body: bytes) -> tuple[JSON, str, list[Any]]:
    """The response object, its id and its output, or the FormatError for a body of another shape."""
    obj = _load_object(body, "OpenAI Responses body")
    rid = obj.get("id")
    if not isinstance(rid, str) or not rid:
        err = obj.get("error")
        if isinstance(err, dict) and err:  # a 200 whose body is an error: the provider's words
            message = err.get("message")
            raise UpstreamErrorBody(f"Upstream returned an error: {message if isinstance(message, str) else 'unknown'}",
                                    None, 502)
        raise FormatError("OpenAI Responses body has no 'id'", "id")
    output = obj.get("output")
    if not isinstance(output, list):
        raise FormatError("OpenAI Responses body has no 'output' list", "output")
    return obj, rid, output


def response_usage(body: bytes) -> Usage | None:
    """`parse_response(body).usage`, for a driver that forwards the body verbatim to a client of this
    same format and needs only the usage: the same top-level checks (the same FormatError for a body
    that is not a response object), but the output items are not read."""
    return _parse_usage(_response_object(body)[0].get("usage"))


def parse_response(body: bytes) -> Response:
    obj, rid, output = _response_object(body)
    parts: list[Any] = []
    texts: list[str] = []
    refusals: list[str] = []
    calls: list[ToolCall] = []
    for i, item in enumerate(output):
        where = f"output[{i}]"
        if not isinstance(item, dict):
            raise FormatError(f"'{where}' must be an object", where)
        kind = item.get("type")
        if kind == "reasoning":
            part = _parse_reasoning_item(item, where)
            if part is not None:
                parts.append(part)
        elif kind == "message":
            for j, c in enumerate(item.get("content") or []):
                if isinstance(c, dict) and c.get("type") == "output_text":
                    texts.append(_req_str(c, "text", f"{where}.content[{j}]"))
                elif isinstance(c, dict) and c.get("type") == "refusal":
                    refusals.append(_req_str(c, "refusal", f"{where}.content[{j}]"))
        elif kind == "function_call":
            args = item.get("arguments", "")
            calls.append(ToolCall(id=_req_str(item, "call_id", where), name=_req_str(item, "name", where),
                                  arguments=args if isinstance(args, str) else _dumps(args).decode()))
        # Hosted-tool items (web_search_call, ...) have no unified form: dropped (lossy).
    # One response is one assistant turn: its text is joined, as a stream aggregates it.
    if texts and "".join(texts):
        parts.append(TextPart(text="".join(texts)))
    msg = Message(role="assistant", content=parts, tool_calls=calls, refusal="".join(refusals) or None)
    created = obj.get("created_at")
    return Response(
        id=rid,
        model=str(obj.get("model") or ""),
        created=int(created) if isinstance(created, (int, float)) else 0,
        message=msg,
        finish_reason=_finish_for(obj.get("status"), obj.get("incomplete_details"), bool(calls)),
        usage=_parse_usage(obj.get("usage")),
    )


# --------------------------------------------------------------------------------------------------
# Outbound: stream parsing


def _rest(full: str, seen: str) -> str:
    """What a `*.done` event adds to the deltas already seen (providers that send no deltas)."""
    return full[len(seen):] if full.startswith(seen) else ""


# Output item types with a unified form; the others (built-in tools' calls) travel as NativeBlock.
_UNIFIED_ITEMS = frozenset({"message", "reasoning", "function_call"})


class StreamParser:
    """The Responses SSE lifecycle → unified stream events. Dispatch is a table of event type →
    handler; events with no unified meaning (in_progress, content_part.*, ...) are skipped."""

    def __init__(self) -> None:
        self._sse = SSEDecoder()
        self._done = False
        self._call_index: dict[int, int] = {}  # output_index → unified tool-call index
        self._args: dict[int, str] = {}  # output_index → arguments streamed so far
        self._text: dict[int, str] = {}  # output_index → message text streamed so far
        self._part_text: dict[tuple[int, int], str] = {}  # (output_index, content_index) → text
        self._refusal: dict[int, str] = {}  # output_index → refusal streamed so far
        self._reasoning: dict[int, str] = {}  # output_index → reasoning text streamed (with separators)
        self._summary_parts: dict[int, int] = {}  # output_index → summary parts seen
        self._summary_text: dict[tuple[int, int], str] = {}
        self._item_ids: dict[int, str] = {}  # output_index → the upstream's item id (see unified.TextDelta)
        self._handlers: dict[str, Callable[[JSON, list[StreamEvent]], None]] = {
            "response.created": self._on_created,
            "response.output_item.added": self._on_item_added,
            "response.output_item.done": self._on_item_done,
            "response.output_text.delta": self._on_text_delta,
            "response.output_text.done": self._on_text_done,
            "response.refusal.delta": self._on_refusal_delta,
            "response.refusal.done": self._on_refusal_done,
            "response.function_call_arguments.delta": self._on_args_delta,
            "response.function_call_arguments.done": self._on_args_done,
            "response.reasoning_summary_part.added": self._on_summary_part,
            "response.reasoning_summary_text.delta": self._on_summary_delta,
            "response.reasoning_summary_text.done": self._on_summary_done,
            "response.reasoning_text.delta": self._on_reasoning_text_delta,
            "response.completed": self._on_end,
            "response.incomplete": self._on_end,
            "response.failed": self._on_failed,
            "error": self._on_error,
        }

    def feed(self, data: bytes) -> list[StreamEvent]:
        out: list[StreamEvent] = []
        for sse in self._sse.feed(data):
            self._event(sse, out)
        return out

    @property
    def ended(self) -> bool:
        """The terminal event was read: nothing after it counts, so the stream is over."""
        return self._done

    def close(self) -> list[StreamEvent]:
        out: list[StreamEvent] = []
        for sse in self._sse.close():
            self._event(sse, out)
        if not self._done:
            raise FormatError("the OpenAI Responses stream ended without a terminal event "
                              "(response.completed, response.incomplete or response.failed)")
        return out

    def _event(self, sse: SSEEvent, out: list[StreamEvent]) -> None:
        if self._done:
            return
        data = sse.data.strip()
        if not data or data == "[DONE]":
            return
        try:
            obj = orjson.loads(data)
        except orjson.JSONDecodeError:
            raise FormatError(f"malformed JSON in an OpenAI Responses stream event: {data[:200]!r}") from None
        if not isinstance(obj, dict):
            raise FormatError("an OpenAI Responses stream event must be a JSON object")
        etype = obj.get("type") or sse.event
        if not etype and isinstance(obj.get("error"), dict):
            etype = "error"
            obj = {**obj["error"], "type": "error"}
        handler = self._handlers.get(etype)
        if handler is not None:
            handler(obj, out)

    @staticmethod
    def _response(obj: JSON) -> JSON:
        resp = obj.get("response")
        if not isinstance(resp, dict):
            raise FormatError(f"{obj.get('type')} event has no 'response' object", "response")
        return resp

    def _on_created(self, obj: JSON, out: list[StreamEvent]) -> None:
        resp = self._response(obj)
        created = resp.get("created_at")
        out.append(StreamStart(id=str(resp.get("id") or ""), model=str(resp.get("model") or ""),
                               created=int(created) if isinstance(created, (int, float)) else 0))

    def _register_call(self, oi: int, item: JSON, out: list[StreamEvent]) -> None:
        idx = self._call_index[oi] = len(self._call_index)
        raw = item.get("arguments")
        args = raw if isinstance(raw, str) else ""
        self._args[oi] = args
        out.append(ToolCallDelta(index=idx, id=item.get("call_id"), name=item.get("name"), arguments=args,
                                 item_id=self._item_ids.get(oi)))

    def _keep_id(self, oi: int, item: JSON) -> None:
        iid = item.get("id")
        if isinstance(iid, str) and iid and oi not in self._item_ids:
            self._item_ids[oi] = iid

    def _on_item_added(self, obj: JSON, out: list[StreamEvent]) -> None:
        item = obj.get("item")
        oi = obj.get("output_index")
        if isinstance(item, dict) and isinstance(oi, int):
            self._keep_id(oi, item)
            if item.get("type") == "function_call":
                self._register_call(oi, item, out)

    def _on_item_done(self, obj: JSON, out: list[StreamEvent]) -> None:
        item = obj.get("item")
        oi = obj.get("output_index")
        if not isinstance(item, dict) or not isinstance(oi, int):
            return
        self._keep_id(oi, item)
        kind = item.get("type")
        if kind not in _UNIFIED_ITEMS:
            # A provider-run tool's item (web_search_call, file_search_call, ...): whole, as it ended.
            out.append(NativeBlock(provider=FAMILY, block=item))
            return
        if kind == "function_call":
            if oi not in self._call_index:
                self._register_call(oi, item, out)
            else:
                self._more_args(oi, item.get("arguments"), out)
        elif kind == "message":
            full = "".join(c.get("text", "") for c in item.get("content") or []
                           if isinstance(c, dict) and c.get("type") == "output_text")
            rest = _rest(full, self._text.get(oi, ""))
            if rest:
                self._text[oi] = full
                out.append(TextDelta(text=rest, item_id=self._item_ids.get(oi)))
            refusals = [c.get("refusal") for c in item.get("content") or []
                        if isinstance(c, dict) and c.get("type") == "refusal"]
            if refusals:
                self._more_refusal(oi, "".join(r for r in refusals if isinstance(r, str)), out)
        elif kind == "reasoning":
            enc = item.get("encrypted_content")
            if isinstance(enc, str) and enc.startswith(REDACTED_PREFIX):
                out.append(ReasoningDelta(redacted_data=enc[len(REDACTED_PREFIX):], item_id=self._item_ids.get(oi)))
                return
            try:
                full = _reasoning_text(item, "item")
            except FormatError:
                full = ""
            rest = _rest(full, self._reasoning.get(oi, ""))
            sig, provider = import_signature(enc, FAMILY) if isinstance(enc, str) and enc else (None, None)
            if rest or sig:
                self._reasoning[oi] = self._reasoning.get(oi, "") + rest
                out.append(ReasoningDelta(text=rest, signature=sig, signature_provider=provider,
                                          item_id=self._item_ids.get(oi)))

    def _on_text_delta(self, obj: JSON, out: list[StreamEvent]) -> None:
        delta = obj.get("delta")
        oi, ci = obj.get("output_index", 0), obj.get("content_index", 0)
        if isinstance(delta, str) and delta:
            self._text[oi] = self._text.get(oi, "") + delta
            self._part_text[(oi, ci)] = self._part_text.get((oi, ci), "") + delta
            out.append(TextDelta(text=delta, item_id=self._item_ids.get(oi)))

    def _on_refusal_delta(self, obj: JSON, out: list[StreamEvent]) -> None:
        delta = obj.get("delta")
        oi = obj.get("output_index", 0)
        if isinstance(delta, str) and delta:
            self._refusal[oi] = self._refusal.get(oi, "") + delta
            out.append(TextDelta(text=delta, item_id=self._item_ids.get(oi), refusal=True))

    def _on_refusal_done(self, obj: JSON, out: list[StreamEvent]) -> None:
        self._more_refusal(obj.get("output_index", 0), obj.get("refusal"), out)

    def _more_refusal(self, oi: int, full: Any, out: list[StreamEvent]) -> None:
        if isinstance(full, str):
            rest = _rest(full, self._refusal.get(oi, ""))
            if rest:
                self._refusal[oi] = full
                out.append(TextDelta(text=rest, item_id=self._item_ids.get(oi), refusal=True))

    def _on_text_done(self, obj: JSON, out: list[StreamEvent]) -> None:
        full = obj.get("text")
        oi, ci = obj.get("output_index", 0), obj.get("content_index", 0)
        if isinstance(full, str):
            rest = _rest(full, self._part_text.get((oi, ci), ""))
            if rest:
                self._part_text[(oi, ci)] = full
                self._text[oi] = self._text.get(oi, "") + rest
                out.append(TextDelta(text=rest, item_id=self._item_ids.get(oi)))

    def _more_args(self, oi: int, full: Any, out: list[StreamEvent]) -> None:
        if isinstance(full, str):
            rest = _rest(full, self._args.get(oi, ""))
            if rest:
                self._args[oi] = full
                out.append(ToolCallDelta(index=self._call_index[oi], arguments=rest))

    def _on_args_delta(self, obj: JSON, out: list[StreamEvent]) -> None:
        oi = obj.get("output_index", 0)
        delta = obj.get("delta")
        if oi not in self._call_index:  # no output_item.added: still one call per output index
            self._register_call(oi, {}, out)
        if isinstance(delta, str) and delta:
            self._args[oi] = self._args.get(oi, "") + delta
            out.append(ToolCallDelta(index=self._call_index[oi], arguments=delta))

    def _on_args_done(self, obj: JSON, out: list[StreamEvent]) -> None:
        oi = obj.get("output_index", 0)
        if oi not in self._call_index:
            self._register_call(oi, {}, out)
        self._more_args(oi, obj.get("arguments"), out)

    def _reasoning_out(self, oi: int, text: str, out: list[StreamEvent]) -> None:
        if text:
            self._reasoning[oi] = self._reasoning.get(oi, "") + text
            out.append(ReasoningDelta(text=text, item_id=self._item_ids.get(oi)))

    def _on_summary_part(self, obj: JSON, out: list[StreamEvent]) -> None:
        oi = obj.get("output_index", 0)
        n = self._summary_parts.get(oi, 0)
        self._summary_parts[oi] = n + 1
        if n:  # summary parts are joined with a blank line, as parse_response joins them
            self._reasoning_out(oi, "\n\n", out)

    def _on_summary_delta(self, obj: JSON, out: list[StreamEvent]) -> None:
        oi, si = obj.get("output_index", 0), obj.get("summary_index", 0)
        delta = obj.get("delta")
        if isinstance(delta, str):
            self._summary_text[(oi, si)] = self._summary_text.get((oi, si), "") + delta
            self._reasoning_out(oi, delta, out)

    def _on_summary_done(self, obj: JSON, out: list[StreamEvent]) -> None:
        oi, si = obj.get("output_index", 0), obj.get("summary_index", 0)
        full = obj.get("text")
        if isinstance(full, str):
            rest = _rest(full, self._summary_text.get((oi, si), ""))
            self._summary_text[(oi, si)] = full
            self._reasoning_out(oi, rest, out)

    def _on_reasoning_text_delta(self, obj: JSON, out: list[StreamEvent]) -> None:
        oi = obj.get("output_index", 0)
        delta = obj.get("delta")
        # Raw reasoning text counts only when the item has no summary (parse_response's rule).
        if isinstance(delta, str) and not self._summary_parts.get(oi):
            self._reasoning_out(oi, delta, out)

    def _on_end(self, obj: JSON, out: list[StreamEvent]) -> None:
        resp = self._response(obj)
        status = resp.get("status") or ("incomplete" if obj.get("type") == "response.incomplete" else "completed")
        out.append(FinishEvent(reason=_finish_for(status, resp.get("incomplete_details"), bool(self._call_index))))
        usage = _parse_usage(resp.get("usage"))
        if usage is not None:
            out.append(UsageEvent(usage=usage))
        self._done = True

    def _on_failed(self, obj: JSON, out: list[StreamEvent]) -> None:
        resp = self._response(obj)
        raw = resp.get("error")
        err: JSON = raw if isinstance(raw, dict) else {}
        out.append(ErrorEvent(error=_stream_error(err.get("code"), err.get("message"), err.get("param"))))
        self._done = True

    def _on_error(self, obj: JSON, out: list[StreamEvent]) -> None:
        out.append(ErrorEvent(error=_stream_error(obj.get("code"), obj.get("message"), obj.get("param"))))
        self._done = True


# In-stream error codes → the kind (and HTTP-equivalent status) the execution policy keys on.
_STREAM_ERROR_KINDS: dict[str, tuple[ErrorKind, int]] = {
    "rate_limit_exceeded": (ErrorKind.RATE_LIMITED, 429),
    "insufficient_quota": (ErrorKind.RATE_LIMITED, 429),
    "server_error": (ErrorKind.SERVER_ERROR, 500),
    "overloaded": (ErrorKind.OVERLOADED, 503),
    "service_unavailable": (ErrorKind.OVERLOADED, 503),
    "vector_store_timeout": (ErrorKind.TIMEOUT, 504),
}


def _stream_error(code: Any, message: Any, param: Any) -> Error:
    code_s = str(code) if code is not None else None
    if code_s in _STREAM_ERROR_KINDS:
        kind, status = _STREAM_ERROR_KINDS[code_s]
    elif code_s and (code_s.startswith(("invalid_", "image_", "unsupported_", "empty_", "failed_to_download"))
                     or code_s.endswith("_policy_violation") or code_s == "bio_policy"):
        kind, status = ErrorKind.INVALID_REQUEST, 400
    else:
        kind, status = ErrorKind.SERVER_ERROR, 500
    return Error(kind=kind, status=status, message=_scrub(str(message or "the upstream response failed")),
                 param=param if isinstance(param, str) else None, code=code_s)


# --------------------------------------------------------------------------------------------------
# Outbound: errors

# OpenAI echoes a masked key in 401 messages ("Incorrect API key provided: sk-abc***xyz"); the
# client must never see any part of a channel's key.
_KEY_PATTERN = re.compile(r"\b(sk|sess|rk)-[A-Za-z0-9_*\-]{4,}")
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def _scrub(message: str) -> str:
    return _KEY_PATTERN.sub(r"\1-***", message)


def _go_duration(value: str) -> float | None:
    """OpenAI's x-ratelimit-reset-* values are Go durations ("1s", "6m0s", "20ms")."""
    parts = _DURATION.findall(value.strip())
    if not parts or "".join(n + u for n, u in parts) != value.strip():
        return None
    return sum(float(n) * _DURATION_UNITS[u] for n, u in parts)


def _retry_after(headers: Mapping[str, str], rate_limited: bool) -> float | None:
    seconds = retry_after(headers)
    if seconds is not None:
        return seconds
    h = {k.lower(): v for k, v in headers.items()}
    if not rate_limited:
        return None  # OpenAI sends x-ratelimit-* on every answer; they only explain a 429
    resets = []
    for kind in ("requests", "tokens"):
        reset = h.get(f"x-ratelimit-reset-{kind}")
        seconds = _go_duration(reset) if reset else None
        if seconds is not None:
            resets.append((h.get(f"x-ratelimit-remaining-{kind}") == "0", seconds))
    exhausted = [s for hit, s in resets if hit]
    if exhausted or resets:
        return max(exhausted or [s for _, s in resets])
    return None


def parse_error(status: int, headers: Mapping[str, str], body: bytes) -> Error:
    message = status_message(status)
    param: str | None = None
    code: str | None = None
    try:
        obj = orjson.loads(body) if body else None
    except orjson.JSONDecodeError:
        obj = None
    if isinstance(obj, dict):
        inner = obj.get("error")
        err: JSON = inner if isinstance(inner, dict) else obj
        if isinstance(err.get("message"), str) and err["message"]:
            message = err["message"]
        if isinstance(err.get("param"), str):
            param = err["param"]
        if err.get("code") is not None:
            code = str(err["code"])
    kind = error_kind_for_status(status)
    retry = _retry_after(headers, kind is ErrorKind.RATE_LIMITED)
    return Error(kind=kind, status=status, message=_scrub(message), retry_after=retry, param=param, code=code)
