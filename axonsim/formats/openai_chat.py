"""OpenAI Chat Completions (`/v1/chat/completions`) wire format ⇄ the unified model, in both roles.

Policies this module commits to (docs/formats/openai_chat.md has the full field mapping):

- Inbound parsing is strict about what it maps and liberal about what it does not know: a mapped
  field of the wrong type is a 400 naming the field; an unknown top-level field is kept verbatim in
  `Request.extra_body` and re-emitted by `build_request` (passthrough to OpenAI-compatible channels).
- The unified model carries one choice. Some OpenAI-compatible providers split parallel tool calls
  across choices, so tool calls of every choice are merged into the one message (numbered in order
  of first appearance); text and reasoning come from the first choice that carries any.
- A stream's finish reason and usage are emitted when `data: [DONE]` arrives, because with several
  choices (or a provider repeating usage on every chunk) only then are they final. Content deltas
  are never held back.
- An in-stream error is rendered as `data: {"error": {...}}` and *not* followed by `data: [DONE]`:
  the SDK raises on the error object, and a client that ignores it then sees a stream cut short
  instead of one that looks complete.
- Upstream-side failures (malformed upstream body or stream) raise FormatError with status 502.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
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
from axonsim.formats.parsed import Parsed
from axonsim.formats.sse import SSEDecoder
from axonsim.unified import (
    Error,
    ErrorEvent,
    ErrorKind,
    FinishEvent,
    FinishReason,
    ImagePart,
    Message,
    ReasoningDelta,
    ReasoningPart,
    Request,
    Response,
    ResponseFormat,
    StreamEvent,
    StreamStart,
    TextDelta,
    TextPart,
    Tool,
    ToolCall,
    ToolCallDelta,
    ToolResultPart,
    Usage,
    UsageEvent,
    error_kind_for_status,
)

__all__ = [
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

PROVIDER = "openai"  # the `Tool.provider` of OpenAI Chat-only tools kept verbatim
FAMILY = "openai_chat"  # the `Request.source` of what parse_request reads

_UPSTREAM = 502  # FormatError status when it is the provider, not the client, that spoke badly

# Top-level request fields mapped onto the unified model; everything else is passed through.
_KNOWN_FIELDS = frozenset((
    "model", "messages", "tools", "tool_choice", "parallel_tool_calls", "response_format",
    "temperature", "top_p", "max_tokens", "max_completion_tokens", "stop", "seed",
    "presence_penalty", "frequency_penalty", "n", "stream", "stream_options", "reasoning_effort",
    "metadata", "user",
))

_FINISH_IN: dict[str, FinishReason] = {
    "stop": "stop",
    "length": "length",
    "tool_calls": "tool_calls",
    "function_call": "tool_calls",  # legacy functions API
    "content_filter": "content_filter",
}
# OpenAI has no "error" finish reason; the SDK types only know these four (plus function_call).
_FINISH_OUT: dict[str, str] = {"stop": "stop", "length": "length", "tool_calls": "tool_calls",
                               "content_filter": "content_filter", "error": "stop"}


# --------------------------------------------------------------------------------------------------
# Inbound: parse a client request
#
# The request is mapped by hand into a plain dict tree shaped like the unified model and validated
# with one Request.model_validate call: one trip into pydantic-core instead of one per object is
# about twice as fast. Every field is checked here first, so the client learns which one is wrong;
# check_request stops before that call (the gateway builds the Request only if it reads it).

Obj = dict[str, Any]


def _bad(message: str, param: str | None) -> FormatError:
    return FormatError(message, param)


def _opt_str(v: Any, param: str) -> str | None:
    if v is None or isinstance(v, str):
        return v
    raise _bad(f"'{param}' must be a string.", param)


def _opt_bool(v: Any, param: str) -> bool | None:
    if v is None or isinstance(v, bool):
        return v
    raise _bad(f"'{param}' must be a boolean.", param)


def _opt_dict(v: Any, param: str) -> Obj | None:
    if v is None or isinstance(v, dict):
        return v
    raise _bad(f"'{param}' must be an object.", param)


def _opt_float(v: Any, param: str) -> float | None:
    if v is None:
        return None
    if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
        return float(v)
    raise _bad(f"'{param}' must be a number.", param)


def _opt_int(v: Any, param: str) -> int | None:
    if v is None:
        return None
    if isinstance(v, int) and not isinstance(v, bool):
        return v  # orjson reads no integer beyond 64 bits
    if isinstance(v, float) and v.is_integer():
        if not -(2.0**63) <= v < 2.0**63:  # 1e308 is whole too: no field of any format carries it
            raise _bad(f"'{param}' is out of range (a 64-bit integer).", param)
        return int(v)
    raise _bad(f"'{param}' must be an integer.", param)


def _put(d: Obj, key: str, value: Any) -> None:
    if value is not None:
        d[key] = value


def _parse_image(part: Obj, path: str) -> Obj:
    iu = part.get("image_url")
    detail: str | None = None
    if isinstance(iu, str):  # some clients send the URL bare
        url: Any = iu
    elif isinstance(iu, dict):
        url = iu.get("url")
        detail = _opt_str(iu.get("detail"), path + ".image_url.detail")
    else:
        raise _bad("'image_url' must be an object with a 'url'.", path + ".image_url")
    upath = path + ".image_url.url"
    if not isinstance(url, str) or not url:
        raise _bad("'image_url.url' must be a non-empty string.", upath)
    img: Obj = {"type": "image"}
    if url.startswith("data:"):
        header, sep, data = url[5:].partition(",")
        media_type = header.split(";", 1)[0]
        if not sep or not header.endswith(";base64") or not media_type or not data:
            raise _bad("A data: image URL must look like data:<media type>;base64,<data>.", upath)
        img["media_type"] = media_type
        img["data"] = data
    elif url.startswith(("https://", "http://")):
        img["url"] = url
    else:
        # Other schemes (file:, gs:, ...) would make the provider fetch something the client chose.
        raise _bad("Image URLs must be https:// or data: URLs.", upath)
    _put(img, "detail", detail)
    return img


def _parse_parts(content: Any, path: str, role: str) -> tuple[list[Obj], str | None]:
    """Content of a message → (unified parts, refusal)."""
    if isinstance(content, str):
        return ([{"type": "text", "text": content}] if content else []), None
    if not isinstance(content, list):
        raise _bad("'content' must be a string or an array of content parts.", path)
    parts: list[Obj] = []
    refusal: str | None = None
    for j, part in enumerate(content):
        ppath = f"{path}[{j}]"
        if not isinstance(part, dict):
            raise _bad("A content part must be an object.", ppath)
        typ = part.get("type")
        if typ == "text":
            text = part.get("text")
            if not isinstance(text, str):
                raise _bad("A text part needs a string 'text'.", ppath + ".text")
            tp: Obj = {"type": "text", "text": text}
            _put(tp, "cache_control", _opt_dict(part.get("cache_control"), ppath + ".cache_control"))
            parts.append(tp)
        elif typ == "image_url" and role == "user":
            parts.append(_parse_image(part, ppath))
        elif typ == "refusal" and role == "assistant":
            r = part.get("refusal")
            if not isinstance(r, str):
                raise _bad("A refusal part needs a string 'refusal'.", ppath + ".refusal")
            refusal = r if refusal is None else refusal + r
        elif not isinstance(typ, str):
            raise _bad("A content part needs a string 'type'.", ppath + ".type")
        else:
            raise _bad(f"Content part type {typ!r} is not supported in a {role} message.", ppath + ".type")
    return parts, refusal


def _parse_tool_calls(v: Any, path: str) -> list[Obj]:
    if not isinstance(v, list):
        raise _bad("'tool_calls' must be an array.", path)
    calls: list[Obj] = []
    for k, tc in enumerate(v):
        tpath = f"{path}[{k}]"
        if not isinstance(tc, dict):
            raise _bad("A tool call must be an object.", tpath)
        typ = tc.get("type", "function")
        if typ != "function":
            raise _bad(f"Tool call type {typ!r} is not supported.", tpath + ".type")
        cid = tc.get("id")
        if not isinstance(cid, str) or not cid:
            raise _bad("A tool call needs a string 'id'.", tpath + ".id")
        fn = tc.get("function")
        if not isinstance(fn, dict):
            raise _bad("A tool call needs a 'function' object.", tpath + ".function")
        name = fn.get("name")
        if not isinstance(name, str) or not name:
            raise _bad("A tool call needs a string 'function.name'.", tpath + ".function.name")
        args = fn.get("arguments", "")
        if args is None:
            args = ""
        elif isinstance(args, dict):  # some clients send an object; OpenAI carries a JSON string
            args = orjson.dumps(args).decode()
        elif not isinstance(args, str):
            raise _bad("'function.arguments' must be a JSON string.", tpath + ".function.arguments")
        calls.append({"id": cid, "name": name, "arguments": args})
    return calls


def _parse_message(m: Any, i: int) -> Obj:
    path = f"messages[{i}]"
    if not isinstance(m, dict):
        raise _bad("A message must be an object.", path)
    role = m.get("role")
    content = m.get("content")
    cpath = path + ".content"
    name = m.get("name")
    if name is not None and not isinstance(name, str):
        raise _bad("'name' must be a string.", path + ".name")
    if role == "user" or role == "system" or role == "developer":
        if content is None:
            raise _bad(f"A {role} message needs 'content'.", cpath)
        msg: Obj = {"role": role, "content": _parse_parts(content, cpath, role)[0]}
        _put(msg, "name", name)
        return msg
    if role == "assistant":
        parts, refusal = ([], None) if content is None else _parse_parts(content, cpath, role)
        # DeepSeek/vLLM replay reasoning as `reasoning_content`, OpenRouter as `reasoning`.
        reasoning = m.get("reasoning_content")
        rkey = "reasoning_content"
        if not reasoning:
            reasoning, rkey = m.get("reasoning"), "reasoning"
        if reasoning:
            if not isinstance(reasoning, str):
                raise _bad(f"'{rkey}' must be a string.", f"{path}.{rkey}")
            parts.insert(0, {"type": "reasoning", "text": reasoning})
        msg = {"role": "assistant", "content": parts}
        r = _opt_str(m.get("refusal"), path + ".refusal")
        _put(msg, "refusal", r or refusal)
        tcs = m.get("tool_calls")
        if tcs is not None:
            msg["tool_calls"] = _parse_tool_calls(tcs, path + ".tool_calls")
        _put(msg, "name", name)
        return msg
    if role == "tool":
        tcid = m.get("tool_call_id")
        if not isinstance(tcid, str) or not tcid:
            raise _bad("A tool message needs a string 'tool_call_id'.", path + ".tool_call_id")
        if content is None:
            raise _bad("A tool message needs 'content'.", cpath)
        result: Obj = {"type": "tool_result", "tool_call_id": tcid,
                       "content": _parse_parts(content, cpath, "tool")[0]}
        _put(result, "name", name)
        return {"role": "tool", "content": [result]}
    if role == "function":
        raise _bad("The legacy 'function' role is not supported; use 'tool' messages.", path + ".role")
    raise _bad(f"Invalid role {role!r}: expected system, developer, user, assistant or tool.", path + ".role")


def _name_tool_results(messages: list[Obj]) -> list[Obj]:
    """OpenAI tool messages carry no function name; Gemini needs it. Like the other families' parsers,
    take it from the earlier assistant tool call with the same id (a `name` the client sent wins)."""
    names: dict[str, str] = {}
    for m in messages:
        for c in m.get("tool_calls", ()):
            names[c["id"]] = c["name"]
        if m["role"] == "tool":
            result = m["content"][0]
            if "name" not in result and result["tool_call_id"] in names:
                result["name"] = names[result["tool_call_id"]]
    return messages


def _parse_tools(v: Any) -> list[Obj]:
    if not isinstance(v, list):
        raise _bad("'tools' must be an array.", "tools")
    tools: list[Obj] = []
    for j, t in enumerate(v):
        path = f"tools[{j}]"
        if not isinstance(t, dict):
            raise _bad("A tool must be an object.", path)
        typ = t.get("type", "function")
        if typ == "function":
            fn = t.get("function")
            if not isinstance(fn, dict):
                raise _bad("A function tool needs a 'function' object.", path + ".function")
            name = fn.get("name")
            if not isinstance(name, str) or not name:
                raise _bad("A function tool needs a string 'name'.", path + ".function.name")
            tool: Obj = {"name": name}
            p = path + ".function."
            _put(tool, "description", _opt_str(fn.get("description"), p + "description"))
            _put(tool, "parameters", _opt_dict(fn.get("parameters"), p + "parameters"))
            _put(tool, "strict", _opt_bool(fn.get("strict"), p + "strict"))
            tools.append(tool)
        elif isinstance(typ, str) and typ:
            # Custom/hosted tools: only an OpenAI channel can run them, so they travel verbatim.
            spec = t.get(typ)
            tname = spec.get("name") if isinstance(spec, dict) else None
            tools.append({"type": "native", "name": tname if isinstance(tname, str) and tname else typ,
                          "provider": PROVIDER, "native": t})
        else:
            raise _bad("A tool needs a string 'type'.", path + ".type")
    return tools


def _parse_tool_choice(v: Any) -> Obj | None:
    if v is None:
        return None
    if v == "none" or v == "auto" or v == "required":
        return {"mode": v}
    if isinstance(v, dict) and v.get("type") == "function":
        fn = v.get("function")
        name = fn.get("name") if isinstance(fn, dict) else None
        if not isinstance(name, str) or not name:
            raise _bad("'tool_choice.function.name' must be a string.", "tool_choice.function.name")
        return {"mode": "function", "name": name}
    raise _bad("'tool_choice' must be 'none', 'auto', 'required' or {\"type\": \"function\", ...}.",
               "tool_choice")


def _parse_response_format(v: Any) -> Obj | None:
    if v is None:
        return None
    if not isinstance(v, dict):
        raise _bad("'response_format' must be an object.", "response_format")
    typ = v.get("type")
    if typ == "text" or typ == "json_object":
        return {"type": typ}
    if typ == "json_schema":
        js = v.get("json_schema")
        if not isinstance(js, dict):
            raise _bad("'response_format.json_schema' must be an object.", "response_format.json_schema")
        p = "response_format.json_schema."
        rf: Obj = {"type": "json_schema"}
        _put(rf, "name", _opt_str(js.get("name"), p + "name"))
        _put(rf, "schema", _opt_dict(js.get("schema"), p + "schema"))
        _put(rf, "strict", _opt_bool(js.get("strict"), p + "strict"))
        _put(rf, "description", _opt_str(js.get("description"), p + "description"))
        return rf
    raise _bad("'response_format.type' must be text, json_object or json_schema.", "response_format.type")


def _parse_stop(v: Any) -> list[str] | None:
    if v is None:
        return None
    if isinstance(v, str):
        return [v]
    if isinstance(v, list) and all(isinstance(s, str) for s in v):
        return v or None
    raise _bad("'stop' must be a string or an array of strings.", "stop")


# Sampling fields that map one to one: (wire name, checker, the range OpenAI accepts).
# Of any length, so the compiled build keeps it one tuple object (a fixed-length tuple type is
# unboxed, and boxed again, seven tuples, at every loop over it).
_SAMPLING: tuple[tuple[str, Callable[[Any, str], Any], float | None, float | None], ...] = (
    ("temperature", _opt_float, 0.0, 2.0), ("top_p", _opt_float, 0.0, 1.0), ("seed", _opt_int, None, None),
    ("presence_penalty", _opt_float, -2.0, 2.0), ("frequency_penalty", _opt_float, -2.0, 2.0),
    ("n", _opt_int, 1.0, 128.0))


def parse_request(body: bytes, model: str | None = None, stream: bool | None = None) -> Request:
    return check_request(body, model, stream).request()


def check_request(body: bytes, model: str | None = None, stream: bool | None = None) -> Parsed:
    """The checks of parse_request, the Request left to be built on first use (see parsed.py)."""
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise _bad("We could not parse the JSON body of your request.", None) from None
    if not isinstance(obj, dict):
        raise _bad("The request body must be a JSON object.", None)
    # Typed, so the compiled build reads it with direct dict calls (a bound `obj.get` called as a
    # function is a generic call, about twice as dear, and a request is read ~20 times).
    o: Obj = obj

    mdl = model if model is not None else o.get("model")
    if not isinstance(mdl, str) or not mdl:
        raise _bad("You must provide a model parameter.", "model")
    msgs = o.get("messages")
    if not isinstance(msgs, list):
        raise _bad("'messages' must be an array of messages.", "messages")
    if not msgs:
        raise _bad("'messages' must contain at least one message.", "messages")
    out: Obj = {"model": mdl, "messages": _name_tool_results([_parse_message(m, i) for i, m in enumerate(msgs)]),
                "source": FAMILY}

    extra: Obj = {}
    sampling: Obj = {}
    if len(o) > 2:  # beyond model and messages; most requests carry a few
        for k, v in o.items():
            if k not in _KNOWN_FIELDS:
                extra[k] = v
        # Every checker maps None (absent or null) to None, so an absent field skips its call; the
        # order of the checks is kept, since with two bad fields it says which one is reported.
        if (v := o.get("tools")) is not None:
            out["tools"] = _parse_tools(v)
        tool_choice = _parse_tool_choice(v) if (v := o.get("tool_choice")) is not None else None
        if (v := o.get("parallel_tool_calls")) is not None:
            parallel = _opt_bool(v, "parallel_tool_calls")
            tool_choice = tool_choice or {}
            tool_choice["disable_parallel"] = not parallel
        if tool_choice is not None:
            out["tool_choice"] = tool_choice
        if (v := o.get("response_format")) is not None:
            _put(out, "response_format", _parse_response_format(v))
        for key, check, low, high in _SAMPLING:
            if (v := o.get(key)) is not None:
                sampling[key] = x = check(v, key)
                if low is not None:
                    check_range(x, key, low, high)
        max_tokens = None
        if (v := o.get("max_completion_tokens")) is not None:
            max_tokens = _opt_int(v, "max_completion_tokens")
            check_range(max_tokens, "max_completion_tokens", 1.0)
        if (v := o.get("max_tokens")) is not None:
            # Checked even beside max_completion_tokens, which wins: the client's bytes may be
            # forwarded as they came, this field included.
            legacy = _opt_int(v, "max_tokens")
            check_range(legacy, "max_tokens", 1.0)
            if max_tokens is None:
                max_tokens = legacy
        _put(sampling, "max_tokens", max_tokens)
        if (v := o.get("stop")) is not None:
            _put(sampling, "stop", _parse_stop(v))
        if (v := o.get("reasoning_effort")) is not None:
            out["reasoning_effort"] = _opt_str(v, "reasoning_effort")
        if (v := o.get("metadata")) is not None:
            out["metadata"] = _opt_dict(v, "metadata")
        if (v := o.get("user")) is not None:
            out["user"] = _opt_str(v, "user")

    v = o.get("stream")
    is_stream = stream if stream is not None else (v is not None and bool(_opt_bool(v, "stream")))
    opts = _opt_dict(v, "stream_options") if (v := o.get("stream_options")) is not None else None
    asked = _opt_bool(opts.get("include_usage"), "stream_options.include_usage") if opts else None
    n = sampling.get("n")
    if is_stream and n is not None and n > 1:
        # The gateway's streams carry one choice (its unified events have no choice index): refused
        # rather than billed for choices the client would never see, or whose tool calls would merge.
        raise _bad("'n' above 1 is not supported with 'stream': true by this gateway; ask without streaming for "
                   "several choices.", "n")
    out["stream"] = is_stream
    # A non-stream response always carries usage; a stream only when the client asked for it.
    out["include_usage"] = asked if asked is not None else not is_stream
    out["sampling"] = sampling
    out["extra_body"] = extra
    return Parsed(mdl, is_stream, out["include_usage"], sampling.get("max_tokens"),
                  "tools" in out and bool(out["tools"]), out, None, o)


# --------------------------------------------------------------------------------------------------
# Usage and finish reasons, shared by both roles


def _usage_obj(u: Usage | None) -> dict[str, Any]:
    if u is None:
        # OpenAI always sends usage and clients read `usage.prompt_tokens` unguarded.
        u = Usage()
    ptd: dict[str, int] = {"cached_tokens": u.cached_tokens}
    if u.cache_write_tokens:
        ptd["cache_write_tokens"] = u.cache_write_tokens
    return {
        "prompt_tokens": u.prompt_tokens,
        "completion_tokens": u.completion_tokens,
        "total_tokens": u.total_tokens or u.prompt_tokens + u.completion_tokens,
        "prompt_tokens_details": ptd,
        "completion_tokens_details": {"reasoning_tokens": u.reasoning_tokens},
    }


def _int(v: Any) -> int:
    if type(v) is int:  # what orjson gives for a JSON integer: the common case, first
        return v
    if isinstance(v, int) and not isinstance(v, bool):
        return v
    if isinstance(v, float) and math.isfinite(v):
        return int(v)
    return 0


_EMPTY: dict[str, Any] = {}


def _parse_usage(u: dict[str, Any]) -> Usage:
    ptd = u.get("prompt_tokens_details")
    ctd = u.get("completion_tokens_details")
    ptd = ptd if isinstance(ptd, dict) else _EMPTY
    ctd = ctd if isinstance(ctd, dict) else _EMPTY
    prompt = _int(u.get("prompt_tokens"))
    completion = _int(u.get("completion_tokens"))
    return usage_of({
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": _int(u.get("total_tokens")) or prompt + completion,
        # DeepSeek reports cache hits beside the OpenAI field rather than inside it.
        "cached_tokens": _int(ptd.get("cached_tokens")) or _int(u.get("prompt_cache_hit_tokens")),
        "cache_write_tokens": _int(ptd.get("cache_write_tokens")),
        "reasoning_tokens": _int(ctd.get("reasoning_tokens")),
        "tool_prompt_tokens": 0,
    })


_new = object.__new__
_setattr = object.__setattr__
_USAGE_FIELDS = frozenset(Usage.model_fields)


def trusted(cls: type[Any], values: dict[str, Any], fields_set: set[str]) -> Any:
    """The instance of `cls` that validating the fields in `fields_set` makes, built directly (as
    model_construct does) from `values`: every field, in declaration order, each of its field's
    type already (this module has converted them itself); no extras, no private state. Validating
    again costs a few thousand instructions per object: on every answer's Usage, and on every chunk
    the stream parser reads by its template. Tests hold each use equal to the validated model."""
    m = _new(cls)
    _setattr(m, "__dict__", values)
    _setattr(m, "__pydantic_fields_set__", fields_set)
    _setattr(m, "__pydantic_extra__", None)
    _setattr(m, "__pydantic_private__", None)
    return m


def usage_of(fields: dict[str, int]) -> Usage:
    """Usage(**fields) for a dict of exactly Usage's fields, in order, each an int already checked."""
    return trusted(Usage, fields, set(_USAGE_FIELDS))  # type: ignore[no-any-return]


def _merged_finish(reasons: dict[Any, FinishReason], primary: Any, has_tools: bool) -> FinishReason | None:
    """One finish reason for choices merged into one message (see the module docstring)."""
    if not reasons:
        return None
    r = reasons.get(primary) or next(iter(reasons.values()))
    # Providers that call tools but say "stop" would make other formats drop the calls.
    if has_tools and (r == "stop" or "tool_calls" in reasons.values()):
        return "tool_calls"
    return r


# --------------------------------------------------------------------------------------------------
# Inbound: render a response and a stream


def _text_of(parts: list[Any]) -> str | None:
    texts = [p.text for p in parts if isinstance(p, TextPart)]
    return "".join(texts) if texts else None


def _reasoning_of(parts: list[Any], replayable_only: bool = False) -> str | None:
    texts = [p.text for p in parts if isinstance(p, ReasoningPart) and not p.redacted and p.text
             and not (replayable_only and p.signature)]
    return "".join(texts) if texts else None


def _wire_tool_calls(calls: list[ToolCall]) -> list[dict[str, Any]]:
    return [{"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
            for c in calls]


def render_response(resp: Response) -> bytes:
    msg = resp.message
    text = _text_of(msg.content)
    message: dict[str, Any] = {
        "role": "assistant",
        "content": text if text is not None else (None if msg.tool_calls else ""),
        "refusal": msg.refusal,
    }
    reasoning = _reasoning_of(msg.content)
    if reasoning is not None:
        message["reasoning_content"] = reasoning
    if msg.tool_calls:
        message["tool_calls"] = _wire_tool_calls(msg.tool_calls)
    finish = resp.finish_reason or ("tool_calls" if msg.tool_calls else "stop")
    return orjson.dumps({
        "id": resp.id,
        "object": "chat.completion",
        "created": resp.created,
        "model": resp.model,
        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": _FINISH_OUT[finish]}],
        "usage": _usage_obj(resp.usage),
    })


class StreamRenderer:
    """chat.completion.chunk SSE for one client stream. Each call returns its bytes at once; only
    the usage is held, because it is final only at the end (OpenAI sends it just before [DONE])."""

    __slots__ = ("_model", "_include_usage", "_head", "_tail", "_text_head", "_text_tail", "_role_sent",
                 "_tools", "_ids_sent", "_names_sent", "_finished", "_start_usage", "_usage", "_closed")

    def __init__(self, req: Request | Parsed) -> None:
        self._model = req.model
        self._include_usage = req.include_usage
        self._head = b""
        self._tail = b'],"usage":null}\n\n' if req.include_usage else b"]}\n\n"
        # A content delta after the first chunk, the bulk of a stream, is the head, the text as JSON
        # and this tail: the bytes orjson would make of {"index": 0, "delta": {"content": text},
        # "finish_reason": None}, without building and serialising the dicts.
        self._text_head = b""  # set with _head
        self._text_tail = b'},"finish_reason":null}' + self._tail
        self._role_sent = False
        self._tools: dict[int, int] = {}  # unified index → wire index, contiguous from 0 as the SDK needs
        self._ids_sent: set[int] = set()
        self._names_sent: set[int] = set()
        self._finished = False
        self._start_usage: Usage | None = None
        self._usage: Usage | None = None
        self._closed = False

    def _set_head(self, id_: str, model: str, created: int) -> None:
        self._head = (b'data: {"id":' + orjson.dumps(id_) + b',"object":"chat.completion.chunk","created":'
                      + str(int(created)).encode() + b',"model":' + orjson.dumps(model) + b',"choices":[')
        self._text_head = self._head + b'{"index":0,"delta":{"content":'

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> bytes:
        if not self._head:
            self._set_head("", self._model, 0)
        if not self._role_sent:
            delta = {"role": "assistant", **delta}
            self._role_sent = True
        return self._head + orjson.dumps({"index": 0, "delta": delta, "finish_reason": finish}) + self._tail

    def render(self, ev: StreamEvent) -> bytes:
        if self._closed:
            return b""
        if isinstance(ev, TextDelta):
            if not ev.text:
                return b""
            if ev.refusal:
                return self._chunk({"refusal": ev.text})
            if self._role_sent:  # so the head is set too
                return self._text_head + orjson.dumps(ev.text) + self._text_tail
            return self._chunk({"content": ev.text})
        if isinstance(ev, ToolCallDelta):
            return self._tool_call(ev)
        if isinstance(ev, ReasoningDelta):
            # Signatures and redacted thinking have no place in OpenAI Chat (lossy).
            return self._chunk({"reasoning_content": ev.text}) if ev.text else b""
        if isinstance(ev, StreamStart):
            self._start_usage = ev.usage
            if self._head:
                return b""
            self._set_head(ev.id, ev.model or self._model, ev.created)
            return self._chunk({"content": ""})
        if isinstance(ev, FinishEvent):
            if self._finished:
                return b""
            self._finished = True
            return self._chunk({}, _FINISH_OUT[ev.reason])
        if isinstance(ev, UsageEvent):
            self._usage = ev.usage
            return b""
        if isinstance(ev, ErrorEvent):
            return self.error(ev.error)
        return b""

    def _tool_call(self, ev: ToolCallDelta) -> bytes:
        wire = self._tools.get(ev.index)
        new = wire is None
        if wire is None:
            wire = self._tools[ev.index] = len(self._tools)
        entry: dict[str, Any] = {"index": wire}
        # The SDK concatenates every string it sees twice, so id and name go out exactly once.
        if ev.id and wire not in self._ids_sent:
            entry["id"] = ev.id
            self._ids_sent.add(wire)
        if new:
            entry["type"] = "function"
        fn: dict[str, str] = {}
        if ev.name and wire not in self._names_sent:
            fn["name"] = ev.name
            self._names_sent.add(wire)
        if not new and not ev.arguments and not fn and "id" not in entry:
            return b""
        fn["arguments"] = ev.arguments
        entry["function"] = fn
        return self._chunk({"tool_calls": [entry]})

    def finish(self) -> bytes:
        if self._closed:
            return b""
        self._closed = True
        if not self._include_usage:
            return b"data: [DONE]\n\n"
        if not self._head:
            self._set_head("", self._model, 0)
        usage = self._usage or self._start_usage
        return self._head + b'],"usage":' + orjson.dumps(_usage_obj(usage)) + b"}\n\ndata: [DONE]\n\n"

    def error(self, err: Error) -> bytes:
        if self._closed:
            return b""
        self._closed = True
        return b"data: " + render_error(err) + b"\n\n"


# --------------------------------------------------------------------------------------------------
# Inbound: errors

# Statuses an INVALID_REQUEST keeps as they are; any other becomes 400.
_CLIENT_STATUSES = frozenset((400, 404, 405, 408, 409, 413, 415, 422))  # 408: a body that stopped arriving

_KIND_STATUS: dict[ErrorKind, int] = {
    ErrorKind.AUTHENTICATION: 401,
    ErrorKind.PERMISSION: 403,
    ErrorKind.NOT_FOUND: 404,
    ErrorKind.RATE_LIMITED: 429,
    ErrorKind.OVERLOADED: 503,  # Anthropic's 529 has no OpenAI equivalent; the SDKs retry 503 alike
    ErrorKind.TIMEOUT: 504,
    ErrorKind.CONNECTION: 502,
    ErrorKind.UNAVAILABLE: 503,
}

# status → (type, default code), as OpenAI sends them. OpenAI's own 429s use type "requests" or
# "tokens" (which limit was hit); the unified Error does not say, so the code's name is used.
_STATUS_TYPE: dict[int, tuple[str, str | None]] = {
    401: ("authentication_error", "invalid_api_key"),
    403: ("permission_error", None),
    429: ("rate_limit_exceeded", "rate_limit_exceeded"),
}


def error_status(err: Error) -> int:
    fixed = _KIND_STATUS.get(err.kind)
    if fixed is not None:
        return fixed
    if err.kind is ErrorKind.SERVER_ERROR:
        return err.status if 500 <= err.status < 600 and err.status not in (503, 504) else 500
    return err.status if err.status in _CLIENT_STATUSES else 400


def _error_obj(err: Error) -> dict[str, Any]:
    status = error_status(err)
    default = ("server_error", None) if status >= 500 else ("invalid_request_error", None)
    typ, code = _STATUS_TYPE.get(status, default)
    if err.code == "insufficient_quota":
        typ = "insufficient_quota"
    # A code another family's parser read (Anthropic's error type, Google's status) means nothing to
    # an OpenAI client, which gets the status's own instead; an OpenAI-compatible upstream's passes.
    own = err.code if err.code_family is None else None
    return {"message": err.message, "type": typ, "param": err.param, "code": own or code}


def render_error(err: Error) -> bytes:
    return orjson.dumps({"error": _error_obj(err)})


def error_headers(err: Error) -> dict[str, str]:
    if err.retry_after is None or not math.isfinite(err.retry_after):
        return {}
    return {"retry-after": str(max(0, math.ceil(err.retry_after)))}


# --------------------------------------------------------------------------------------------------
# Outbound: build the upstream request


def request_path(upstream_model: str, stream: bool) -> str:
    return "/chat/completions"


def auth_headers(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _wire_image(p: ImagePart, path: str) -> dict[str, Any]:
    if p.url:
        url = p.url
    elif p.data and p.media_type:
        url = f"data:{p.media_type};base64,{p.data}"
    else:
        raise _bad("An image needs a URL or base64 data with a media type.", path)
    iu: dict[str, Any] = {"url": url}
    if p.detail:
        iu["detail"] = p.detail
    return {"type": "image_url", "image_url": iu}


def _wire_text(p: TextPart) -> dict[str, Any]:
    d: dict[str, Any] = {"type": "text", "text": p.text}
    if p.cache_control is not None:  # OpenRouter and others honour it for Anthropic models
        d["cache_control"] = p.cache_control
    return d


def _wire_content(parts: list[Any], path: str, images: bool) -> str | list[dict[str, Any]]:
    """Text-only content goes out as a plain string where nothing would be lost: every
    OpenAI-compatible server accepts that, not all accept part arrays."""
    if len(parts) == 1 and isinstance(parts[0], TextPart) and parts[0].cache_control is None:
        return parts[0].text
    out: list[dict[str, Any]] = []
    for j, p in enumerate(parts):
        if isinstance(p, TextPart):
            out.append(_wire_text(p))
        elif isinstance(p, ImagePart):
            if not images:
                raise _bad("OpenAI Chat carries images only in user messages.", f"{path}[{j}]")
            out.append(_wire_image(p, f"{path}[{j}]"))
        # Reasoning outside assistant messages has no OpenAI Chat form (lossy).
    return out if out else ""


def _wire_assistant(m: Message, path: str) -> dict[str, Any]:
    d: dict[str, Any] = {"role": "assistant"}
    texts: list[Any] = []
    for j, p in enumerate(m.content):
        if isinstance(p, TextPart):
            texts.append(p)
        elif not isinstance(p, ReasoningPart):
            raise _bad("OpenAI Chat assistant messages carry only text, reasoning and tool calls.",
                       f"{path}.content[{j}]")
    content = _wire_content(texts, path + ".content", False) if texts else None
    d["content"] = content if content is not None or m.tool_calls else ""
    # Only reasoning that came from an OpenAI-compatible provider (it has no signature) is replayed;
    # Anthropic/Gemini thoughts would be rejected by strict OpenAI-compatible servers.
    reasoning = _reasoning_of(m.content, replayable_only=True)
    if reasoning is not None:
        d["reasoning_content"] = reasoning
    if m.refusal:
        d["refusal"] = m.refusal
    if m.name:
        d["name"] = m.name
    if m.tool_calls:
        d["tool_calls"] = _wire_tool_calls(m.tool_calls)
    return d


def _wire_messages(messages: list[Message]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for i, m in enumerate(messages):
        path = f"messages[{i}]"
        if m.role == "assistant":
            out.append(_wire_assistant(m, path))
            continue
        rest: list[Any] = []
        has_results = False
        for j, p in enumerate(m.content):
            if not isinstance(p, ToolResultPart):
                rest.append(p)
                continue
            # Tool results become tool messages, placed first: OpenAI wants them right after the
            # assistant turn that made the calls (Anthropic carries them inside the user turn).
            has_results = True
            rpath = f"{path}.content[{j}].content"
            if any(isinstance(c, ImagePart) for c in p.content):
                raise _bad("OpenAI Chat tool messages cannot carry images.", rpath)
            out.append({"role": "tool", "tool_call_id": p.tool_call_id,
                        "content": _wire_content(p.content, rpath, False)})
        if has_results and not rest:
            continue
        role = "user" if m.role == "tool" else m.role  # stray non-result content of a tool turn
        d: dict[str, Any] = {"role": role, "content": _wire_content(rest, path + ".content", role == "user")}
        if m.name and m.role != "tool":
            d["name"] = m.name
        out.append(d)
    return out


def _wire_tools(tools: list[Tool]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for j, t in enumerate(tools):
        if t.type == "native":
            if t.provider != PROVIDER or t.native is None:
                raise _bad(f"Tool {t.name!r} runs only on {t.provider} channels.", f"tools[{j}]")
            out.append(t.native)
            continue
        fn: dict[str, Any] = {"name": t.name}
        if t.description is not None:
            fn["description"] = t.description
        if t.parameters is not None:
            fn["parameters"] = t.parameters
        if t.strict is not None:
            fn["strict"] = t.strict
        out.append({"type": "function", "function": fn})
    return out


def _wire_response_format(rf: ResponseFormat) -> dict[str, Any]:
    if rf.type != "json_schema":
        return {"type": rf.type}
    js: dict[str, Any] = {"name": rf.name or "response"}  # OpenAI requires a name
    if rf.description is not None:
        js["description"] = rf.description
    if rf.json_schema is not None:
        js["schema"] = rf.json_schema
    if rf.strict is not None:
        js["strict"] = rf.strict
    return {"type": "json_schema", "json_schema": js}


def build_request(req: Request, upstream_model: str) -> bytes:
    refuse_foreign_fields(req, FAMILY, "an OpenAI Chat channel")
    body: dict[str, Any] = {"model": upstream_model, "messages": _wire_messages(req.messages)}
    if req.tools:
        body["tools"] = _wire_tools(req.tools)
        # OpenAI rejects tool_choice and parallel_tool_calls when no tools are given.
        tc = req.tool_choice
        if tc is not None:
            if tc.mode == "function":
                body["tool_choice"] = {"type": "function", "function": {"name": tc.name}}
            else:
                body["tool_choice"] = tc.mode
            if tc.disable_parallel is not None:
                body["parallel_tool_calls"] = not tc.disable_parallel
    if req.response_format is not None:
        body["response_format"] = _wire_response_format(req.response_format)
    s = req.sampling
    if s.temperature is not None:
        body["temperature"] = s.temperature
    if s.top_p is not None:
        body["top_p"] = s.top_p
    if s.max_tokens is not None:
        # The current field; reasoning models reject the deprecated max_tokens.
        body["max_completion_tokens"] = s.max_tokens
    if s.stop:
        body["stop"] = s.stop
    if s.seed is not None:
        body["seed"] = s.seed
    if s.presence_penalty is not None:
        body["presence_penalty"] = s.presence_penalty
    if s.frequency_penalty is not None:
        body["frequency_penalty"] = s.frequency_penalty
    if s.n is not None:
        body["n"] = s.n
    if req.stream:
        body["stream"] = True
        # Always: the gateway needs usage for its logs even when the client did not ask.
        body["stream_options"] = {"include_usage": True}
    if req.reasoning_effort is not None:
        body["reasoning_effort"] = req.reasoning_effort
    if req.metadata is not None:
        body["metadata"] = req.metadata
    if req.user is not None:
        body["user"] = req.user
    if req.source == FAMILY:  # another family's extra fields mean nothing (or a 400) to OpenAI
        for k, v in req.extra_body.items():
            body.setdefault(k, v)
    return orjson.dumps(body)


_ASK_USAGE = b'"stream_options":{"include_usage":true},'


def stream_passthrough(body: bytes, parsed: Parsed | None = None) -> bytes:
    """A client's stream request, validated by parse_request, forwarded to an OpenAI channel: as
    it came, plus `stream_options.include_usage` (the gateway logs usage even when the client did
    not ask for it; the StreamRenderer then leaves it out of what the client gets).

    With the Parsed of check_request, the body is not decoded again, and when it has no
    stream_options at all (the usual stream request) the member is written in front of its first
    one: the client's bytes otherwise as they came, at the cost of a copy. Decoding and encoding a
    58 kB conversation again took ~54 µs (timed, compiled); the copy, ~2.6."""
    wire = parsed.wire if parsed is not None else None
    obj: dict[str, Any] = wire if wire is not None else orjson.loads(body)
    opts = obj.get("stream_options")
    if isinstance(opts, dict):
        if opts.get("include_usage") is True:
            return body
        new = {**opts, "include_usage": True}
    else:
        if "stream_options" not in obj:
            # The decoded object has no such key, however the bytes spell their keys: no duplicate.
            start = len(body) - len(body.lstrip(b" \t\r\n"))
            if body.startswith(b"{", start) and obj:
                return body[:start + 1] + _ASK_USAGE + body[start + 1:]
        new = {"include_usage": True}
    return orjson.dumps({**obj, "stream_options": new})


# --------------------------------------------------------------------------------------------------
# Outbound: parse the upstream response, stream and errors


def _upstream_bad(message: str, param: str | None = None) -> FormatError:
    return FormatError(message, param, _UPSTREAM)


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # a few compatible servers answer with text parts
        return "".join(p.get("text") or "" for p in content if isinstance(p, dict) and p.get("type") == "text")
    return ""


def _reasoning_field(d: dict[str, Any]) -> str:
    r = d.get("reasoning_content") or d.get("reasoning")
    return r if isinstance(r, str) else ""


def _call_from_wire(tc: Any, n: int) -> dict[str, str]:
    """A ToolCall's fields (parse_response validates the whole answer at once)."""
    if not isinstance(tc, dict):
        raise _upstream_bad("Upstream tool call is not an object.", "tool_calls")
    fn = tc.get("function")
    fn = fn if isinstance(fn, dict) else {}
    args = fn.get("arguments")
    if isinstance(args, (dict, list)):
        args = orjson.dumps(args).decode()
    cid, name = tc.get("id"), fn.get("name")
    # Some compatible servers omit ids; a stable synthetic one keeps tool results matchable.
    return {"id": cid if isinstance(cid, str) and cid else f"call_{n}",
            "name": name if isinstance(name, str) else "", "arguments": args if isinstance(args, str) else ""}


def _response_object(body: bytes) -> tuple[dict[str, Any], list[Any]]:
    """The response object and its choices, or the FormatError for a body of another shape."""
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise _upstream_bad("Upstream response is not valid JSON.") from None
    if not isinstance(obj, dict):
        raise _upstream_bad("Upstream response is not a JSON object.")
    choices = obj.get("choices")
    if not isinstance(choices, list):
        if obj.get("error"):  # some providers answer 200 with an error body
            raise UpstreamErrorBody(f"Upstream returned an error: {_error_from_body(obj['error'], 0).message}", None,
                                    _UPSTREAM)
        raise _upstream_bad("Upstream response has no 'choices' array.", "choices")
    return obj, choices


def response_usage(body: bytes) -> Usage | None:
    """`parse_response(body).usage`, for a driver that forwards the body verbatim to a client of this
    same format and needs only the usage: the same top-level checks (the same FormatError for a body
    that is not a chat.completion object), but the choices are not read."""
    u = _response_object(body)[0].get("usage")
    return _parse_usage(u) if isinstance(u, dict) else None


def parse_response(body: bytes) -> Response:
    obj, choices = _response_object(body)
    if len(choices) == 1 and isinstance(choices[0], dict):  # the usual answer: nothing to order
        ordered = choices
    else:
        ordered = sorted((c for c in choices if isinstance(c, dict)), key=lambda c: _int(c.get("index")))
    primary: Any = None
    text = reasoning = ""
    refusal: str | None = None
    calls: list[dict[str, str]] = []
    reasons: dict[Any, FinishReason] = {}
    for ch in ordered:
        idx = _int(ch.get("index"))
        msg = ch.get("message")
        if isinstance(msg, dict):
            c_text, c_reason, c_refusal = _content_text(msg.get("content")), _reasoning_field(msg), msg.get("refusal")
            if primary is None and (c_text or c_reason or c_refusal):
                primary, text, reasoning = idx, c_text, c_reason
                refusal = c_refusal if isinstance(c_refusal, str) and c_refusal else None
            tcs = msg.get("tool_calls")
            if isinstance(tcs, list):
                calls.extend(_call_from_wire(tc, len(calls)) for tc in tcs)
        fr = ch.get("finish_reason")
        if isinstance(fr, str) and fr:
            reasons[idx] = _FINISH_IN.get(fr, "stop")
    parts: list[dict[str, str]] = []
    if reasoning:
        parts.append({"type": "reasoning", "text": reasoning})
    if text:
        parts.append({"type": "text", "text": text})
    u = obj.get("usage")
    # Every value is of its field's type already; one validation of the whole tree is about half the
    # cost of building the parts, the message and the response one by one.
    return Response.__pydantic_validator__.validate_python({  # type: ignore[no-any-return]
        "id": str(obj.get("id") or ""),
        "model": str(obj.get("model") or ""),
        "created": _int(obj.get("created")),
        "message": {"role": "assistant", "content": parts, "tool_calls": calls, "refusal": refusal},
        "finish_reason": _merged_finish(reasons, primary, bool(calls)),
        "usage": _parse_usage(u) if isinstance(u, dict) else None,
    })


def text_delta_of(text: str) -> TextDelta:
    """TextDelta(text=text), for the content chunks of a stream: ~0.53 µs against validation's ~0.69
    (timed, compiled), a seventh off parsing a 22-chunk stream."""
    values = {"type": "text", "text": text, "item_id": None, "refusal": False}
    return trusted(TextDelta, values, {"text"})  # type: ignore[no-any-return]


def _loads_replacing(data: bytes) -> Any:
    """orjson refuses invalid UTF-8 in bytes; the chunk as text (U+FFFD for each bad byte) may
    still be valid JSON, which is how the stream was read when the decoder produced str."""
    try:
        return orjson.loads(data.decode("utf-8", "replace"))
    except orjson.JSONDecodeError:
        raise _upstream_bad("Upstream stream sent a malformed chunk.") from None


class StreamParser:
    """Upstream chat.completion.chunk SSE → unified events, for any chunking of the bytes."""

    __slots__ = ("_sse", "_started", "_done", "_primary", "_tools", "_reasons", "_usage", "_head", "_tail",
                 "_end", "_padded", "_plain_texts")

    def __init__(self) -> None:
        self._sse = SSEDecoder(raw=True)
        self._started = False
        self._done = False
        self._primary: int | None = None
        self._tools: dict[tuple[int, Any], int] = {}  # (choice, wire index or id) → unified index
        self._reasons: dict[Any, FinishReason] = {}
        self._usage: Usage | None = None
        # The text-chunk template (see _learn): a chunk that is these bytes around one JSON string is
        # a text delta of the primary choice and nothing else. b"" until learnt. A padded template
        # (OpenAI's "obfuscation", a random string in every chunk) has a second string between
        # _tail and _end, whose value does not matter.
        self._head = b""
        self._tail = b""
        self._end = b""
        self._padded = False
        # Plain text chunks read in full: the template is learnt from the second, once. (The first is
        # on the path to the client's first byte; a stream whose chunks differ stays on the full parse.)
        self._plain_texts = 0

    def feed(self, data: bytes) -> list[StreamEvent]:
        out: list[StreamEvent] = []
        if self._done:  # nothing after [DONE] or an error counts, so nothing needs decoding
            return out
        datas = self._sse.data_only(data)
        if datas is not None:  # the usual read: whole single-line events
            for d in datas:
                if self._done:
                    break
                self._event(d, out)  # type: ignore[arg-type]
            return out
        for ev in self._sse.feed(data):
            if not self._done:
                self._event(ev.data, out)  # type: ignore[arg-type]
        return out

    @property
    def usage_seen(self) -> Usage | None:
        """The usage the upstream has reported so far, though not yet emitted (it goes out after
        the finish, at [DONE]): what a stream cut before its end still cost."""
        return self._usage

    @property
    def ended(self) -> bool:
        """The terminal event was read: nothing after it counts, so the stream is over."""
        return self._done

    def close(self) -> list[StreamEvent]:
        out: list[StreamEvent] = []
        if self._done:
            return out
        for ev in self._sse.close():
            if not self._done:
                self._event(ev.data, out)  # type: ignore[arg-type]
        if not self._done:
            raise _upstream_bad("Upstream stream ended before data: [DONE].")
        return out

    def _event(self, data: bytes, out: list[StreamEvent]) -> None:
        head = self._head
        if head and data.startswith(head):
            text = self._template_text(data, len(head))
            if text is not None:
                if text:
                    out.append(text_delta_of(text))
                return
        if data.startswith(b"[DONE]"):
            self._done = True
            reason = _merged_finish(self._reasons, self._primary, bool(self._tools))
            if reason is not None:
                finish = {"type": "finish", "reason": reason, "finish_native": None, "stop_sequence": None,
                          "continuation": None}
                out.append(trusted(FinishEvent, finish, {"reason"}))
            if self._usage is not None:
                out.append(trusted(UsageEvent, {"type": "usage", "usage": self._usage}, {"usage"}))
            return
        try:
            obj = orjson.loads(data)
        except orjson.JSONDecodeError:
            obj = _loads_replacing(data)
        if type(obj) is not dict:
            raise _upstream_bad("Upstream stream sent a chunk that is not an object.")
        o: dict[str, Any] = obj  # typed: compiled, its reads are direct dict calls (see check_request)
        err = o.get("error")
        if err:
            self._done = True
            out.append(ErrorEvent(error=_error_from_body(err, 0)))
            return
        if not self._started:
            self._started = True
            start = {"type": "start", "id": str(o.get("id") or ""), "model": str(o.get("model") or ""),
                     "created": _int(o.get("created")), "usage": None}
            out.append(trusted(StreamStart, start, {"id", "model", "created"}))
        choices = o.get("choices")
        before = len(out)
        if type(choices) is list:
            for ch in choices:
                if type(ch) is dict:
                    self._choice(ch, out)
        u = o.get("usage")
        if type(u) is dict:
            self._usage = _parse_usage(u)
        elif (self._plain_texts < 2 and type(choices) is list and len(choices) == 1
              and len(out) == before + 1 and out[before].type == "text"):  # this chunk gave one text event
            self._learn(data, o, choices[0])

    def _template_text(self, data: bytes, start: int) -> str | None:
        """The text of a chunk (that begins with the head) which fits the template, else None: the
        general path then decides, whatever the chunk is."""
        tail = self._tail
        if not self._padded:
            return _one_string(data[start:len(data) - len(tail)]) if data.endswith(tail) else None
        end = self._end
        if not data.endswith(end):
            return None
        stop = len(data) - len(end)
        cut = data.rfind(tail, start, stop)
        # Whichever occurrence of the tail this is, the chunk fits when both pieces are one string.
        if cut < 0 or _one_string(data[cut + len(tail):stop]) is None:
            return None
        return _one_string(data[start:cut])

    def _learn(self, data: bytes, o: dict[str, Any], ch: Any) -> None:
        """Learns the stream's text-chunk template from the second chunk that is only a text delta
        of the primary choice: its bytes before and after the content string. A provider sends
        every such chunk alike (id, model, created and the other fields repeat unchanged), so the
        rest of the stream's text chunks are recognised by two byte comparisons and one string
        parse, not a parse of the whole chunk.

        JSON is context-free: any string token in place of this one parses to the same tree with
        only that leaf changed, provided the leaf is the one the parse keeps. That the token found is
        the primary choice's delta.content (and not, say, a duplicate key that the parse overrode,
        or another "content" further on) is checked by parsing the template with a sentinel in its
        place and comparing the tree.

        OpenAI pads every chunk with a random `obfuscation` string (against reading token lengths
        off encrypted traffic), after the choices. That leaf takes a second slot in the template,
        checked the same way; its value is not read (the full parse ignores it too)."""
        # The index as _choice reads it (a JSON true is not index 1 there).
        if type(ch) is not dict or _int(ch.get("index")) != self._primary or ch.get("finish_reason"):
            return
        delta = ch.get("delta")
        if type(delta) is not dict:
            return
        d: dict[str, Any] = delta
        text = d.get("content")
        if (type(text) is not str or not text or d.get("tool_calls") or d.get("refusal")
                or d.get("reasoning_content") or d.get("reasoning")):
            return
        self._plain_texts += 1
        if self._plain_texts != 2:
            return
        start, end = _last_member_string(data, b'"content":')
        if end < 0:
            return
        head, tail = data[:start], data[end:]
        # A sentinel must differ from the value it stands in for: were they equal, a token the parse
        # overrode (or another string equal to the value) would pass the comparison below.
        sentinel, token = ("\x01", b'"\\u0001"') if text != "\x01" else ("\x02", b'"\\u0002"')
        pad = o.get("obfuscation")
        end_ = b""
        pad_token = b""
        if type(pad) is str:
            p_start, p_end = _last_member_string(tail, b'"obfuscation":')
            if p_end < 0:
                return
            tail, end_ = tail[:p_start], tail[p_end:]
            pad_sentinel, pad_token = ("\x03", b'"\\u0003"') if pad != "\x03" else ("\x04", b'"\\u0004"')
            o["obfuscation"] = pad_sentinel
        try:
            probe = orjson.loads(head + token + tail + pad_token + end_)
        except orjson.JSONDecodeError:
            probe = None
        d["content"] = sentinel
        same = probe == o
        d["content"] = text
        if pad_token:
            o["obfuscation"] = pad
        if same:
            self._head, self._tail, self._end, self._padded = head, tail, end_, bool(pad_token)

    def _choice(self, ch: dict[str, Any], out: list[StreamEvent]) -> None:
        idx = ch.get("index")
        if type(idx) is not int:
            idx = _int(idx)
        delta = ch.get("delta")
        text = delta.get("content") if type(delta) is dict and len(delta) == 1 and idx == self._primary else None
        if type(text) is str:
            # The bulk of a stream: one more piece of text for the choice already followed. What the
            # general branch below does with such a delta, without its other lookups.
            if text:
                out.append(text_delta_of(text))
        elif type(delta) is dict:
            dd: dict[str, Any] = delta
            reasoning = dd.get("reasoning_content") or dd.get("reasoning")
            if reasoning and type(reasoning) is not str:
                reasoning = ""  # as _reasoning_field reads it
            content = dd.get("content")
            refusal = dd.get("refusal")
            if reasoning or content or refusal:
                if self._primary is None:
                    self._primary = idx
                if idx == self._primary:
                    if reasoning:
                        out.append(ReasoningDelta(text=reasoning))
                    if content and type(content) is str:
                        out.append(text_delta_of(content))
                    if refusal and type(refusal) is str:
                        out.append(TextDelta(text=refusal, refusal=True))
            tcs = dd.get("tool_calls")
            if type(tcs) is list:
                for pos, tc in enumerate(tcs):
                    if type(tc) is dict:
                        self._tool_call(idx, pos, tc, out)
        fr = ch.get("finish_reason")
        if fr and type(fr) is str:
            self._reasons[idx] = _FINISH_IN.get(fr, "stop")

    def _tool_call(self, choice: int, pos: int, tc: dict[str, Any], out: list[StreamEvent]) -> None:
        wire = tc.get("index")
        cid = tc.get("id")
        cid = cid if isinstance(cid, str) and cid else None
        if not isinstance(wire, int):
            wire = cid or pos  # servers that omit the index send each call whole, with its id
        key = (choice, wire)
        index = self._tools.get(key)
        if index is None:
            index = self._tools[key] = len(self._tools)
        fn = tc.get("function")
        fn = fn if isinstance(fn, dict) else {}
        name = fn.get("name")
        args = fn.get("arguments")
        if isinstance(args, (dict, list)):
            args = orjson.dumps(args).decode()
        args = args if isinstance(args, str) else ""
        name = name if isinstance(name, str) and name else None
        if args or cid or name:
            out.append(ToolCallDelta(index=index, id=cid, name=name, arguments=args))


def _one_string(token: bytes) -> str | None:
    """The str of a token that is one JSON string and nothing else (whitespace after it aside)."""
    if not token.startswith(b'"'):
        return None
    try:
        v = orjson.loads(token)
    except orjson.JSONDecodeError:  # not one string, or not UTF-8
        return None
    return v if type(v) is str else None


def _last_member_string(data: bytes, key: bytes) -> tuple[int, int]:
    """Where the string token after the last `key` (a quoted name and its colon) starts and ends,
    JSON whitespace between them skipped; (-1, -1) when no string follows it there."""
    at = data.rfind(key)
    if at < 0:
        return -1, -1
    start = at + len(key)
    while start < len(data) and data[start] in (32, 9, 10, 13):
        start += 1
    end = _string_end(data, start)
    return (start, end) if end >= 0 else (-1, -1)


def _string_end(data: bytes, start: int) -> int:
    """The index just past the JSON string token that begins at `start`, or -1 if none does."""
    if not data.startswith(b'"', start):
        return -1
    i = start + 1
    while True:
        q = data.find(b'"', i)
        if q < 0:
            return -1
        b = q - 1
        while data[b] == 92:  # backslashes before the quote: an odd number escapes it
            b -= 1
        if (q - 1 - b) % 2 == 0:
            return q + 1
        i = q + 1


# In-stream error objects carry no HTTP status; their type says what kind of failure it was.
_TYPE_STATUS = {
    "invalid_request_error": 400, "authentication_error": 401, "permission_error": 403,
    "not_found_error": 404, "rate_limit_exceeded": 429, "rate_limit_error": 429, "requests": 429,
    "tokens": 429, "insufficient_quota": 429, "overloaded_error": 503, "server_error": 500,
}

_SECRET = re.compile(r"\b(?:sk-[A-Za-z0-9_*\-]{6,}|AIza[0-9A-Za-z_\-]{20,})|Bearer\s+\S+")
_TRY_AGAIN = re.compile(r"try again in (\d+(?:\.\d+)?)\s*(ms|s)\b", re.IGNORECASE)


def _clean(message: str) -> str:
    """Upstream messages are shown to clients: never let an upstream key through. (The gateway
    masks the configured keys too, then clips the message: server.driver.)"""
    return _SECRET.sub("[redacted]", message)


def _error_from_body(e: Any, status: int) -> Error:
    message = param = code = None
    if isinstance(e, dict):
        m, p, c = e.get("message"), e.get("param"), e.get("code")
        message = m if isinstance(m, str) and m else None
        param = p if isinstance(p, str) else None
        if not status:
            if isinstance(c, int) and 400 <= c < 600:  # OpenRouter puts the HTTP status in code
                status = c
            else:
                status = _TYPE_STATUS.get(str(e.get("type")), 0) or _TYPE_STATUS.get(str(c), 500)
        if c is not None and not isinstance(c, bool) and not (isinstance(c, int) and c == status):
            code = str(c)
    elif isinstance(e, str) and e:
        message = e
    if not status:
        status = 500
    if message is None:
        message = status_message(status)
    return Error(kind=error_kind_for_status(status), status=status, message=_clean(message), param=param, code=code)


def parse_error(status: int, headers: Mapping[str, str], body: bytes) -> Error:
    try:
        obj = orjson.loads(body) if body else None
    except orjson.JSONDecodeError:
        obj = None
    payload: Any = None
    if isinstance(obj, dict):
        payload = obj.get("error")
        if not payload:
            # vLLM/FastAPI-style servers: {"message": ...} or {"detail": ...} at the top level
            m = obj.get("message") or obj.get("detail")
            payload = {"message": m} if isinstance(m, str) else None
    err = _error_from_body(payload, status)
    retry = retry_after(headers)
    if retry is None and status == 429:
        # OpenAI says "Please try again in 2.962s" even when it sends no retry-after header.
        found = _TRY_AGAIN.search(err.message)
        if found:
            retry = float(found.group(1)) / (1000.0 if found.group(2).lower() == "ms" else 1.0)
    err.retry_after = retry
    return err
