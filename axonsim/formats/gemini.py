"""The Gemini generateContent wire format (JSON and `?alt=sse` streams) ⇄ the unified model, both roles.

Theory of operation, in the few places where Gemini differs from the other families:

- Keys: proto3 JSON is lowerCamelCase, but the server accepts snake_case and google-genai sends
  snake_case inside function declarations, inline data and thinking config. Every key lookup goes
  through `_get`, which tries both spellings; keys *inside user data* (function args, JSON schemas,
  function responses) are never rewritten.
- Tool call ids: Gemini's `functionCall.id` is optional and usually absent. We synthesise stable ids:
  `call_{turn}_{n}` in a request's history (turn = index in `contents`), `call_{responseId}_{n}` in a
  response. A `functionResponse` without an id takes the id of the first unanswered call with the same
  name in the previous model turn.
- Tool calls end with finishReason STOP; `tool_calls` is derived from the presence of functionCall parts.
- Thought signatures (`thoughtSignature`, opaque base64) can sit on any part. Unified carries them in
  `ReasoningPart.signature` with `signature_provider="gemini"`, so that no one replays them to another
  provider and we never send another provider's to Gemini (axonsim.formats.signatures). Reading: a
  signature on a thought part stays with that reasoning; one on a text/functionCall part is given to
  the unsigned reasoning just before it, or becomes a signature-only `ReasoningPart(text="")` at that
  position. Responses and streams fold into the StreamAggregator's shape (one reasoning part, last
  signature wins). Writing (`_model_parts`): a signature-only part goes onto the text part after it,
  else the first functionCall, else an empty text part; because Gemini 3 answers 400 when a replayed
  turn's first functionCall has no signature, the turn's last Gemini signature moves onto that call,
  or (outbound) Google's documented placeholder is used.
- Streams: every event is `data: {GenerateContentResponse}` + CRLF CRLF; no event names, no [DONE],
  no terminal marker, so a stream is complete when a finishReason was seen.
"""

from __future__ import annotations

import base64
import json
import math
import re
from collections.abc import Mapping
from functools import lru_cache
from typing import Any, cast

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
from axonsim.formats.signatures import export_signature, import_signature
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
    error_kind_for_status,
)
from axonsim.unified import Response as UnifiedResponse

__all__ = [
    "parse_request", "check_request", "render_response", "StreamRenderer", "error_status", "render_error",
    "error_headers",
    "request_path", "auth_headers", "build_request", "parse_response", "StreamParser", "parse_error",
    "response_usage",
]

# Google's documented placeholder for replayed function calls whose signature was never issued by
# Gemini (history from another provider). The API takes bytes, so it travels base64-encoded.
SKIP_VALIDATOR_SIGNATURE = base64.b64encode(b"skip_thought_signature_validator").decode()

# This family's name: `Request.source` of what parse_request reads, `signature_provider` of Gemini's
# thought signatures and `Tool.provider` of its native tools. A provider rejects another's signatures
# (Gemini 3 validates the first functionCall's), so only signatures whose provider is "gemini" are
# sent to Gemini; another provider's, shown to a Gemini client, is wrapped in a base64 envelope (the
# SDK decodes thoughtSignature as bytes) that names its provider, and unwrapped on replay.
FAMILY = "gemini"
MAX_CANDIDATES = 8  # candidateCount: the most the Gemini API generates for one request

# Malformed upstream output is the provider's fault, not the client's: a bad gateway.
_UPSTREAM = 502

# --------------------------------------------------------------------------------------------------
# Tables

_FINISH_FROM_GEMINI: dict[str, FinishReason] = {
    "STOP": "stop",
    "MAX_TOKENS": "length",
    # The per-request output limit reached with the answer unfinished: cut short, as a length stop
    # is (a Gemini client gets CONTINUATION back, with the token that resumes it).
    "CONTINUATION": "length",
    **{r: "content_filter" for r in (
        "SAFETY", "RECITATION", "LANGUAGE", "BLOCKLIST", "PROHIBITED_CONTENT", "SPII", "IMAGE_SAFETY",
        "IMAGE_PROHIBITED_CONTENT", "IMAGE_RECITATION", "IMAGE_OTHER", "MODEL_ARMOR")},
}  # anything else (OTHER, MALFORMED_FUNCTION_CALL, UNEXPECTED_TOOL_CALL, ...) → "stop", lossy

_FINISH_TO_GEMINI: dict[str, str] = {
    "stop": "STOP", "tool_calls": "STOP", "length": "MAX_TOKENS", "content_filter": "SAFETY", "error": "OTHER",
}

_ERROR_FOR_KIND: dict[ErrorKind, tuple[int, str]] = {
    ErrorKind.INVALID_REQUEST: (400, "INVALID_ARGUMENT"),
    ErrorKind.AUTHENTICATION: (401, "UNAUTHENTICATED"),
    ErrorKind.PERMISSION: (403, "PERMISSION_DENIED"),
    ErrorKind.NOT_FOUND: (404, "NOT_FOUND"),
    ErrorKind.RATE_LIMITED: (429, "RESOURCE_EXHAUSTED"),
    ErrorKind.OVERLOADED: (503, "UNAVAILABLE"),
    ErrorKind.SERVER_ERROR: (500, "INTERNAL"),
    ErrorKind.TIMEOUT: (504, "DEADLINE_EXCEEDED"),
    ErrorKind.CONNECTION: (502, "UNAVAILABLE"),
    ErrorKind.UNAVAILABLE: (503, "UNAVAILABLE"),
}

# google.rpc.Code names and their canonical HTTP status: an upstream's own status name is kept when
# it agrees with the status we answer with (e.g. FAILED_PRECONDITION on a 400).
_GOOGLE_HTTP: dict[str, int] = {
    "INVALID_ARGUMENT": 400, "FAILED_PRECONDITION": 400, "OUT_OF_RANGE": 400, "UNAUTHENTICATED": 401,
    "PERMISSION_DENIED": 403, "NOT_FOUND": 404, "ALREADY_EXISTS": 409, "ABORTED": 409,
    "RESOURCE_EXHAUSTED": 429, "CANCELLED": 499, "UNKNOWN": 500, "INTERNAL": 500, "DATA_LOSS": 500,
    "UNIMPLEMENTED": 501, "UNAVAILABLE": 503, "DEADLINE_EXCEEDED": 504,
}

_RETRY_INFO = "type.googleapis.com/google.rpc.RetryInfo"
_BAD_REQUEST = "type.googleapis.com/google.rpc.BadRequest"
_ERROR_INFO = "type.googleapis.com/google.rpc.ErrorInfo"

# Part fields that carry data (exactly one per part); the rest (thought, thoughtSignature,
# videoMetadata, partMetadata, mediaResolution) only qualify it.
_DATA_KEYS = ("text", "inlineData", "fileData", "functionCall", "functionResponse", "executableCode",
              "codeExecutionResult", "toolCall", "toolResponse")

_REQUEST_KEYS = {"contents", "systemInstruction", "tools", "toolConfig", "generationConfig", "model"}
# Gemini request fields with no unified counterpart, kept in extra_body for a Gemini channel.
_PASSTHROUGH = ("safetySettings", "cachedContent", "labels", "serviceTier", "generationConfig", "toolConfig",
                "continuationToken")

_GEN_MAPPED = {"temperature", "topP", "topK", "candidateCount", "maxOutputTokens", "stopSequences", "seed",
               "presencePenalty", "frequencyPenalty", "responseMimeType", "responseJsonSchema", "responseSchema",
               "thinkingConfig"}

# Reasoning effort → thinking budget for Gemini 1.x/2.x models, which have no thinkingLevel.
_EFFORT_BUDGET = {"none": 0, "minimal": 512, "low": 1024, "medium": 8192, "high": 24576, "xhigh": 32768,
                  "max": 32768}
# Reasoning effort → thinkingLevel for later models, where the two vocabularies differ (Gemini has
# no "none" and no "max"); other words go as they are, upper-cased.
_EFFORT_LEVEL = {"none": "MINIMAL", "max": "XHIGH"}
_BUDGET_MODELS = re.compile(r"gemini-[12](?:\.|-|$)")

# --------------------------------------------------------------------------------------------------
# Small helpers


@lru_cache(maxsize=512)
def _snake(name: str) -> str:
    return re.sub(r"(?<!^)([A-Z])", r"_\1", name).lower()


@lru_cache(maxsize=512)
def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(w[:1].upper() + w[1:] for w in rest)


def _get(d: Mapping[str, Any], key: str) -> Any:
    """A field in either spelling (lowerCamelCase canonical, snake_case as the SDK sends)."""
    v = d.get(key)
    if v is None and key != (s := _snake(key)):
        v = d.get(s)
    return v


def _load(data: bytes | str, what: str, status: int) -> Any:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        try:  # orjson refuses what the stdlib accepts (integers beyond 64 bits, NaN)
            value = json.loads(data)
        except (ValueError, TypeError, RecursionError):  # RecursionError: nested deeper than it reads
            raise FormatError(f"{what} is not valid JSON", None, status) from None
        if _has_lone_surrogate(value):  # a \ud800 escape: no text any format can carry on
            raise FormatError(f"{what} is not valid JSON: it holds a lone surrogate (\\ud800-\\udfff)", None,
                              status) from None
        return value


def _has_lone_surrogate(value: Any) -> bool:
    # Iterative: the value may be nested as deeply as the parser reads, deeper than a recursion may go.
    todo = [value]
    while todo:
        v = todo.pop()
        if isinstance(v, str):
            try:
                v.encode("utf-8")
            except UnicodeEncodeError:
                return True
        elif isinstance(v, dict):
            todo.extend(v.keys())
            todo.extend(v.values())
        elif isinstance(v, list):
            todo.extend(v)
    return False


def _dumps(obj: Any) -> str:
    try:
        return orjson.dumps(obj).decode()
    except TypeError:  # integers beyond 64 bits
        return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


def _obj(v: Any, path: str) -> dict[str, Any]:
    if not isinstance(v, dict):
        raise FormatError(f"{path} must be an object", path)
    return v


def _list(v: Any, path: str) -> list[Any]:
    if not isinstance(v, list):
        raise FormatError(f"{path} must be an array", path)
    return v


def _str(v: Any, path: str) -> str:
    if not isinstance(v, str):
        raise FormatError(f"{path} must be a string", path)
    return v


_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


def _num(v: Any, path: str) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise FormatError(f"{path} must be a number", path)
    if isinstance(v, float) and not math.isfinite(v):  # NaN/Infinity: accepted by the stdlib's parser only
        raise FormatError(f"{path} must be a finite number", path)
    return v


def _int(v: Any, path: str) -> int:
    # proto3 JSON may spell an int32 as 40.0 (google-genai sends topK that way) or as a string.
    if isinstance(v, str):
        try:
            v = float(v)
        except ValueError:
            raise FormatError(f"{path} must be an integer", path) from None
    n = _num(v, path)
    if n != int(n):
        raise FormatError(f"{path} must be an integer", path)
    if not _INT64_MIN <= n <= _INT64_MAX:  # what any format's field (and orjson) carries
        raise FormatError(f"{path} is out of range (a 64-bit integer)", path)
    return int(n)


def _json_object(text: str) -> dict[str, Any] | None:
    """`text` as a JSON object, or None: tool results that are JSON objects travel as objects."""
    if not text.lstrip().startswith("{"):
        return None
    try:
        v = orjson.loads(text)
    except orjson.JSONDecodeError:
        return None
    return v if isinstance(v, dict) else None


def _args_object(arguments: str) -> dict[str, Any]:
    """Unified arguments are a JSON string; Gemini needs an object. Anything else is kept, wrapped,
    rather than dropped (lossy: the model sees the raw text under `_raw_arguments`)."""
    if not arguments.strip():
        return {}
    obj = _json_object(arguments)
    return obj if obj is not None else {"_raw_arguments": arguments}


def _std_b64(data: str) -> str:
    # google-genai sends URL-safe base64; the other families (Anthropic) accept only the standard alphabet.
    return data.replace("-", "+").replace("_", "/")


def _sig_in(raw: str) -> tuple[str, str]:
    """A thoughtSignature from the wire → (signature, provider): an enveloped foreign one unwrapped,
    anything else Gemini's own."""
    return import_signature(raw, FAMILY)


def _sig_out(sig: str, provider: str | None) -> tuple[str, bool]:
    """A unified signature → (thoughtSignature value, issued by Gemini)."""
    return export_signature(sig, provider, FAMILY), provider == FAMILY


def _sniff_image(data: str) -> str:
    for prefix, mime in (("iVBOR", "image/png"), ("/9j/", "image/jpeg"), ("R0lGOD", "image/gif"),
                         ("UklGR", "image/webp")):
        if data.startswith(prefix):
            return mime
    return "image/jpeg"


def _mime_from_url(url: str) -> str:
    ext = url.split("?", 1)[0].rsplit(".", 1)[-1].lower()
    return {"png": "image/png", "jpg": "image/jpeg", "jpeg": "image/jpeg", "gif": "image/gif",
            "webp": "image/webp", "heic": "image/heic", "heif": "image/heif"}.get(ext, "image/jpeg")


def _fenced(kind: str, v: Any) -> str:
    """Code-execution parts have no unified counterpart; they reach other clients as markdown (lossy)."""
    if not isinstance(v, dict):
        return ""
    if kind == "executableCode":
        lang = str(_get(v, "language") or "python").lower()
        return f"\n```{'python' if lang == 'language_unspecified' else lang}\n{_get(v, 'code') or ''}\n```\n"
    return f"\n```\n{_get(v, 'output') or ''}\n```\n"


def _deep_merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    for k, v in extra.items():
        if isinstance(v, Mapping) and isinstance(base.get(k), dict):
            _deep_merge(base[k], v)
        else:
            base[k] = v
    return base


def _duration(seconds: float) -> str:
    """google.protobuf.Duration in JSON: "27s", "1.5s"."""
    if seconds == int(seconds):
        return f"{int(seconds)}s"
    return f"{seconds:.9f}".rstrip("0") + "s"


def _parse_duration(v: Any) -> float | None:
    if isinstance(v, str) and v.endswith("s"):
        try:
            return float(v[:-1])
        except ValueError:
            return None
    if isinstance(v, dict):  # {"seconds": 27, "nanos": 0}, as some clients serialise it
        try:
            return float(v.get("seconds", 0)) + float(v.get("nanos", 0)) / 1e9
        except (TypeError, ValueError):
            return None
    return None


# --------------------------------------------------------------------------------------------------
# Schemas: Gemini's OpenAPI-subset `Schema` → JSON Schema

_SCHEMA_DROP = {"propertyOrdering"}  # Gemini-only ordering hint; strict JSON-schema consumers reject it


def _schema_to_json(s: Any) -> Any:
    """Gemini `Schema` ("OBJECT", nullable, snake_case keywords) → JSON Schema. Property names are data
    and are never rewritten."""
    if not isinstance(s, dict):
        return s
    out: dict[str, Any] = {}
    nullable = False
    for raw_key, v in s.items():
        key = _camel(raw_key)
        if key == "type":
            if isinstance(v, str):
                if v.upper() not in ("TYPE_UNSPECIFIED", ""):
                    out["type"] = v.lower()
            elif isinstance(v, list):
                out["type"] = [t.lower() if isinstance(t, str) else t for t in v]
        elif key == "properties" and isinstance(v, dict):
            out["properties"] = {name: _schema_to_json(sub) for name, sub in v.items()}
        elif key in ("defs", "$defs") and isinstance(v, dict):
            out["$defs"] = {name: _schema_to_json(sub) for name, sub in v.items()}
        elif key in ("items", "additionalProperties", "not"):
            out[key] = _schema_to_json(v)
        elif key in ("anyOf", "oneOf", "allOf", "prefixItems") and isinstance(v, list):
            out[key] = [_schema_to_json(x) for x in v]
        elif key == "ref":
            out["$ref"] = v
        elif key == "nullable":
            nullable = bool(v)
        elif key == "example":
            out["examples"] = [v]
        elif key not in _SCHEMA_DROP:
            out[key] = v
    if nullable:
        t = out.get("type")
        if isinstance(t, str):
            out["type"] = [t, "null"]
        elif isinstance(t, list) and "null" not in t:
            out["type"] = [*t, "null"]
        elif "anyOf" in out:
            out["anyOf"] = [*out["anyOf"], {"type": "null"}]
        enum = out.get("enum")
        if isinstance(enum, list) and None not in enum:
            out["enum"] = [*enum, None]  # else the enum alone refuses the null that `nullable` allows
    return out


# --------------------------------------------------------------------------------------------------
# Usage


def _usage_from_gemini(d: Any) -> Usage:
    if not isinstance(d, dict):
        return Usage()

    def n(key: str) -> int:
        v = _get(d, key)
        return int(v) if isinstance(v, int | float) and not isinstance(v, bool) else 0

    prompt, cand, thoughts = n("promptTokenCount"), n("candidatesTokenCount"), n("thoughtsTokenCount")
    # The results of Gemini's own tools (Google Search, URL context, code execution) that it read
    # are input too, billed as such, but counted apart from promptTokenCount: part of prompt_tokens.
    tool = n("toolUsePromptTokenCount")
    total = n("totalTokenCount") or prompt + tool + cand + thoughts
    return Usage(prompt_tokens=prompt + tool, completion_tokens=cand + thoughts, total_tokens=total,
                 cached_tokens=n("cachedContentTokenCount"), reasoning_tokens=thoughts, tool_prompt_tokens=tool)


def _usage_to_gemini(u: Usage) -> dict[str, int]:
    thoughts = u.reasoning_tokens
    tool = min(u.tool_prompt_tokens, u.prompt_tokens)
    out = {
        "promptTokenCount": u.prompt_tokens - tool,
        "candidatesTokenCount": max(u.completion_tokens - thoughts, 0),  # Gemini counts thoughts apart
        "totalTokenCount": u.total_tokens or u.prompt_tokens + u.completion_tokens,
    }
    if thoughts:
        out["thoughtsTokenCount"] = thoughts
    if u.cached_tokens:
        out["cachedContentTokenCount"] = u.cached_tokens
    if tool:
        out["toolUsePromptTokenCount"] = tool
    return out


# --------------------------------------------------------------------------------------------------
# Unified message → Gemini parts (shared by build_request and the renderers)


def _image_to_gemini(p: ImagePart) -> dict[str, Any]:
    if p.data:
        return {"inlineData": {"mimeType": p.media_type or _sniff_image(p.data), "data": p.data}}
    url = p.url or ""
    if url.startswith("data:"):
        head, _, data = url.partition(",")
        mime = head[5:].split(";", 1)[0] or _sniff_image(data)
        return {"inlineData": {"mimeType": mime, "data": data}}
    return {"fileData": {"mimeType": p.media_type or _mime_from_url(url), "fileUri": url}}


def _model_parts(m: Message, *, outbound: bool) -> list[dict[str, Any]]:
    """An assistant message as Gemini model parts, thought signatures placed as the module docstring
    says. Outbound (to Gemini itself), another provider's signatures are dropped and a missing
    first-call signature gets Google's placeholder."""
    parts: list[dict[str, Any]] = []
    call_sig: str | None = None
    next_text_sig: str | None = None
    movable: list[dict[str, Any]] = []  # parts holding a Gemini signature, which may move to the first call
    content = m.content
    for i, p in enumerate(content):
        if isinstance(p, ReasoningPart):
            if p.redacted:
                continue  # Anthropic's encrypted thinking: nothing Gemini can read (lossy)
            wire, ours = _sig_out(p.signature, p.signature_provider) if p.signature else (None, False)
            if wire is not None and not ours and outbound:
                wire = None  # it would fail Gemini's signature check
            if p.text:
                part: dict[str, Any] = {"text": p.text, "thought": True}
                if wire:
                    part["thoughtSignature"] = wire
                    if ours:
                        movable.append(part)
                parts.append(part)
            elif wire and not ours:
                # another provider's signature signs the thinking before it: it stays beside it
                parts.append({"text": "", "thought": True, "thoughtSignature": wire})
            elif wire:
                if i + 1 < len(content) and isinstance(content[i + 1], TextPart):
                    next_text_sig = wire
                elif m.tool_calls and call_sig is None:
                    call_sig = wire
                else:
                    part = {"text": "", "thoughtSignature": wire}
                    movable.append(part)
                    parts.append(part)
        elif isinstance(p, TextPart):
            if p.text or next_text_sig:
                part = {"text": p.text}
                if next_text_sig:
                    part["thoughtSignature"] = next_text_sig
                    movable.append(part)
                    next_text_sig = None
                parts.append(part)
        elif isinstance(p, ImagePart):
            parts.append(_image_to_gemini(p))
        # ToolResultPart in an assistant message means nothing to Gemini.
    if m.refusal and not m.tool_calls and not any(not x.get("thought") and (x.get("text") or "inlineData" in x
                                                                         or "fileData" in x) for x in parts):
        parts.append({"text": m.refusal})  # Gemini has no refusal field: its words answer (lossy)
    if m.tool_calls and call_sig is None:
        if movable:  # Gemini 3 validates the first call's signature, not the others
            last = movable[-1]
            call_sig = last.pop("thoughtSignature")
            if not last.get("text") and not last.get("thought"):
                parts = [x for x in parts if x is not last]
        elif outbound:
            call_sig = SKIP_VALIDATOR_SIGNATURE
    for k, c in enumerate(m.tool_calls):
        fc: dict[str, Any] = {"id": c.id, "name": c.name, "args": _args_object(c.arguments)}
        part = {"functionCall": fc}
        if k == 0 and call_sig:
            part["thoughtSignature"] = call_sig
        parts.append(part)
    return parts


# --------------------------------------------------------------------------------------------------
# Inbound: parse_request


def check_request(body: bytes, model: str | None = None, stream: bool | None = None) -> Parsed:
    """parse_request's result as the gateway's handler takes it (this parser builds the Request as it goes)."""
    return Parsed.of(parse_request(body, model, stream))


def parse_request(body: bytes, model: str | None = None, stream: bool | None = None) -> Request:
    """A client's generateContent body. `model` and `stream` come from the URL path
    (`models/{model}:generateContent` / `:streamGenerateContent`)."""
    data = _load(body, "request body", 400)
    if not isinstance(data, dict):
        raise FormatError("request body must be a JSON object", "body")
    if model is None:
        model = data.get("model")  # not a Gemini body field; tolerated for callers without the URL
    if not isinstance(model, str) or not model:
        raise FormatError("model is required (models/{model}:generateContent)", "model")
    model = model.removeprefix("models/")

    contents = _get(data, "contents")
    if contents is None:
        raise FormatError("contents is required", "contents")
    if not isinstance(contents, list) or not contents:
        raise FormatError("contents must be a non-empty array of Content", "contents")

    messages: list[Message] = []
    system = _get(data, "systemInstruction")
    if system is not None:
        messages.append(_system_message(system))
    messages.extend(_contents_to_messages(contents))

    extra: dict[str, Any] = {}
    tools = _parse_tools(_get(data, "tools"))
    tool_choice, tc_extra = _parse_tool_config(_get(data, "toolConfig"))
    if tc_extra:
        extra["toolConfig"] = tc_extra
    sampling, response_format, effort, budget, gen_extra = _parse_generation_config(_get(data, "generationConfig"))
    if stream and sampling.n is not None and sampling.n > 1:
        # The gateway's streams carry one candidate (its unified events have no candidate index):
        # refused rather than billed for candidates the client would never see.
        raise FormatError("generationConfig.candidateCount above 1 is not supported on a stream by this gateway; "
                          "ask without streaming for several candidates", "generationConfig.candidateCount")
    if gen_extra:
        extra["generationConfig"] = gen_extra
    for k, v in data.items():
        ck = _camel(k)
        if ck not in _REQUEST_KEYS:
            extra[ck] = v

    return Request(model=model, messages=messages, tools=tools, tool_choice=tool_choice,
                   response_format=response_format, sampling=sampling, stream=bool(stream),
                   reasoning_effort=effort, reasoning_budget=budget, extra_body=extra, source=FAMILY)


def _part_kind(p: Any, path: str) -> tuple[str, Any]:
    if not isinstance(p, dict):
        raise FormatError(f"{path} must be an object", path)
    for key in _DATA_KEYS:
        v = _get(p, key)
        if v is not None:
            return key, v
    raise FormatError(f"{path} has no data field (text, inlineData, fileData, functionCall, functionResponse)", path)


def _media_part(kind: str, v: Any, path: str) -> ImagePart:
    path = f"{path}.{kind}"
    v = _obj(v, path)
    mime = _get(v, "mimeType")
    if mime is not None and not (isinstance(mime, str) and mime.startswith("image/")):
        # The unified model carries images only; failing loudly beats dropping a document or a video.
        raise FormatError(f"{path}.mimeType {mime!r} is not supported: only images can be converted", f"{path}.mimeType")
    if kind == "inlineData":
        return ImagePart(media_type=mime, data=_std_b64(_str(_get(v, "data"), f"{path}.data")))
    return ImagePart(media_type=mime, url=_str(_get(v, "fileUri"), f"{path}.fileUri"))


def _system_message(system: Any) -> Message:
    if isinstance(system, str):
        return Message(role="system", content=[TextPart(text=system)])
    parts = _list(_get(_obj(system, "systemInstruction"), "parts"), "systemInstruction.parts")
    texts: list[Any] = []
    for j, p in enumerate(parts):
        path = f"systemInstruction.parts[{j}]"
        kind, v = _part_kind(p, path)
        if kind != "text":
            raise FormatError(f"{path}: systemInstruction takes text parts only", path)
        texts.append(TextPart(text=_str(v, f"{path}.text")))
    return Message(role="system", content=texts)


def _attach_signature(content: list[Any], sig: tuple[str, str]) -> None:
    """A signature on a non-thought part belongs to the reasoning just before it, if unsigned;
    otherwise it is kept in place as a signature-only reasoning part."""
    last = content[-1] if content else None
    if isinstance(last, ReasoningPart) and last.signature is None and not last.redacted:
        last.signature, last.signature_provider = sig
    else:
        content.append(ReasoningPart(text="", signature=sig[0], signature_provider=sig[1]))


def _contents_to_messages(contents: list[Any]) -> list[Message]:
    messages: list[Message] = []
    prev_calls: list[ToolCall] = []  # the latest model turn's calls, which function responses answer
    answered: set[str] = set()
    # Consecutive model turns are one answer: google-genai's automatic function calling replays a
    # streamed answer chunk by chunk, the last one's empty text part as a turn of its own. Read
    # apart, that turn ended the calls before it, and their id-less responses answered nothing.
    in_model_run = False
    turn: Message | None = None  # the assistant message of the current run of model turns, once it has something
    for i, c in enumerate(contents):
        path = f"contents[{i}]"
        c = _obj(c, path)
        role = _get(c, "role") or "user"
        if role not in ("user", "model", "function"):  # "function" is the v1beta-era role of responses
            raise FormatError(f"{path}.role must be 'user' or 'model', not {role!r}", f"{path}.role")
        parts = _list(_get(c, "parts"), f"{path}.parts")
        if not parts:
            raise FormatError(f"{path}.parts must not be empty", f"{path}.parts")
        if role == "model":
            msg = _model_turn(parts, i, path)
            if not in_model_run:
                in_model_run, turn, answered = True, None, set()
            if turn is not None:
                _continue_turn(turn.content, msg.content)
                turn.tool_calls.extend(msg.tool_calls)
            elif msg.content or msg.tool_calls:
                turn = msg
                messages.append(msg)
            prev_calls = turn.tool_calls if turn is not None else []
            continue
        in_model_run = False
        results: list[Message] = []
        user: list[Any] = []
        for j, p in enumerate(parts):
            ppath = f"{path}.parts[{j}]"
            kind, v = _part_kind(p, ppath)
            if kind == "functionResponse":
                results.append(_tool_result(v, ppath, i, j, prev_calls, answered))
            elif kind == "functionCall":
                raise FormatError(f"{ppath}: functionCall belongs in a 'model' turn", ppath)
            elif kind == "text":
                text = _str(v, f"{ppath}.text")
                if text:
                    user.append(TextPart(text=text))
            elif kind in ("inlineData", "fileData"):
                user.append(_media_part(kind, v, ppath))
            elif kind in ("executableCode", "codeExecutionResult"):
                user.append(TextPart(text=_fenced(kind, v)))
            # toolCall/toolResponse (server-side tool traces) have no unified form: dropped (lossy)
        # Tool results first: OpenAI needs them right after the assistant message that called.
        messages.extend(results)
        if user:
            messages.append(Message(role="user", content=user))
    return messages


def _continue_turn(content: list[Any], more: list[Any]) -> None:
    """A model content's parts after the turn's so far, as if the two were one content (see
    _model_turn): thought text continues the unsigned reasoning before it and a signature closes
    it — Anthropic checks a thinking block's signature against its whole text — and text continues
    text."""
    for p in more:
        last = content[-1] if content else None
        if (isinstance(p, ReasoningPart) and not p.redacted and isinstance(last, ReasoningPart)
                and last.signature is None and not last.redacted):
            last.text += p.text
            last.signature, last.signature_provider = p.signature, p.signature_provider
        elif (isinstance(p, TextPart) and isinstance(last, TextPart) and p.cache_control is None
              and last.cache_control is None):
            last.text += p.text
        else:
            content.append(p)


def _model_turn(parts: list[Any], turn: int, path: str) -> Message:
    content: list[Any] = []
    calls: list[ToolCall] = []
    for j, p in enumerate(parts):
        ppath = f"{path}.parts[{j}]"
        kind, v = _part_kind(p, ppath)
        raw_sig = _get(p, "thoughtSignature")
        raw_sig = _str(raw_sig, f"{ppath}.thoughtSignature") if raw_sig is not None else None
        # Google's placeholder (which build_request itself puts on calls of another provider's
        # history) is not a signature: unified carries none, and build_request puts it back.
        placeholder = raw_sig is not None and raw_sig.rstrip("=") == SKIP_VALIDATOR_SIGNATURE.rstrip("=")
        sig = _sig_in(raw_sig) if raw_sig and not placeholder else None
        if kind == "text":
            text = _str(v, f"{ppath}.text")
            if _get(p, "thought") is True:
                if not text and not sig:
                    continue
                signature, provider = sig if sig else (None, None)
                last = content[-1] if content else None
                if isinstance(last, ReasoningPart) and last.signature is None and not last.redacted:
                    last.text += text  # consecutive thought parts are one reasoning block
                    last.signature, last.signature_provider = signature, provider
                else:
                    content.append(ReasoningPart(text=text, signature=signature, signature_provider=provider))
                continue
            if sig:
                _attach_signature(content, sig)
            if text:
                content.append(TextPart(text=text))
        elif kind == "functionCall":
            fpath = f"{ppath}.functionCall"
            fc = _obj(v, fpath)
            name = _str(_get(fc, "name"), f"{fpath}.name")
            args = _get(fc, "args")
            args = {} if args is None else _obj(args, f"{fpath}.args")
            cid = _get(fc, "id")
            cid = _str(cid, f"{fpath}.id") if cid else f"call_{turn}_{len(calls)}"
            if sig:
                _attach_signature(content, sig)
            calls.append(ToolCall(id=cid, name=name, arguments=_dumps(args)))
        elif kind in ("inlineData", "fileData"):
            if sig:
                _attach_signature(content, sig)
            content.append(_media_part(kind, v, ppath))
        elif kind in ("executableCode", "codeExecutionResult"):
            content.append(TextPart(text=_fenced(kind, v)))
        elif kind == "functionResponse":
            raise FormatError(f"{ppath}: functionResponse belongs in a 'user' turn", ppath)
    return Message(role="assistant", content=content, tool_calls=calls)


def _tool_result(v: Any, path: str, turn: int, j: int, prev_calls: list[ToolCall], answered: set[str]) -> Message:
    path = f"{path}.functionResponse"
    fr = _obj(v, path)
    name = _str(_get(fr, "name"), f"{path}.name")
    response = _get(fr, "response")
    response = {} if response is None else _obj(response, f"{path}.response")
    rid = _get(fr, "id")
    if rid:
        rid = _str(rid, f"{path}.id")
    else:
        rid = next((c.id for c in prev_calls if c.name == name and c.id not in answered), f"call_{turn}_{j}")
    answered.add(rid)

    # {"result": "text"} / {"error": "text"} unwrap to text; any other object travels as JSON text,
    # so that build_request gives Gemini back exactly the object it was sent.
    only = next(iter(response)) if len(response) == 1 else None
    val = response[only] if only is not None else None
    is_error = only == "error"
    if only in ("result", "error") and isinstance(val, str) and _json_object(val) is None:
        text = val
    elif only == "error" and isinstance(val, dict):
        text = _dumps(val)
    else:
        text, is_error = _dumps(response), False
    content: list[Any] = [TextPart(text=text)]
    parts = _get(fr, "parts")
    for k, p in enumerate(_list(parts, f"{path}.parts") if parts is not None else []):  # multimodal (Gemini 3)
        kind, pv = _part_kind(p, f"{path}.parts[{k}]")
        if kind in ("inlineData", "fileData"):
            content.append(_media_part(kind, pv, f"{path}.parts[{k}]"))
    return Message(role="tool", content=[ToolResultPart(tool_call_id=rid, name=name, content=content,
                                                        is_error=is_error)])


def _parse_tools(tools: Any) -> list[Tool]:
    if tools is None:
        return []
    out: list[Tool] = []
    for i, t in enumerate(_list(tools, "tools")):
        t = _obj(t, f"tools[{i}]")
        for key, val in t.items():
            ck = _camel(key)
            if ck != "functionDeclarations":
                # googleSearch, codeExecution, urlContext...: only a Gemini channel can run them.
                out.append(Tool(type="native", name=ck, provider="gemini", native={ck: val}))
                continue
            for j, d in enumerate(_list(val, f"tools[{i}].functionDeclarations")):
                path = f"tools[{i}].functionDeclarations[{j}]"
                d = _obj(d, path)
                name = _str(_get(d, "name"), f"{path}.name")
                desc = _get(d, "description")
                params = _get(d, "parametersJsonSchema")
                if params is not None:
                    params = _obj(params, f"{path}.parametersJsonSchema")
                elif (schema := _get(d, "parameters")) is not None:
                    params = _schema_to_json(_obj(schema, f"{path}.parameters"))
                out.append(Tool(name=name, description=desc if isinstance(desc, str) and desc else None,
                                parameters=params))
    return out


def _parse_tool_config(tc: Any) -> tuple[ToolChoice | None, dict[str, Any]]:
    """The tool choice, plus what unified cannot say (VALIDATED, several allowed names) for a Gemini channel."""
    if tc is None:
        return None, {}
    tc = _obj(tc, "toolConfig")
    extra: dict[str, Any] = {_camel(k): v for k, v in tc.items() if _camel(k) != "functionCallingConfig"}
    fcc = _get(tc, "functionCallingConfig")
    if fcc is None:
        return None, extra
    fcc = _obj(fcc, "toolConfig.functionCallingConfig")
    mode = _get(fcc, "mode")
    mode = "AUTO" if mode is None else _str(mode, "toolConfig.functionCallingConfig.mode").upper()
    names = _get(fcc, "allowedFunctionNames") or []
    names = [_str(n, "toolConfig.functionCallingConfig.allowedFunctionNames") for n in
             _list(names, "toolConfig.functionCallingConfig.allowedFunctionNames")]
    keep: dict[str, Any] = {_camel(k): v for k, v in fcc.items() if _camel(k) not in ("mode", "allowedFunctionNames")}
    if mode in ("AUTO", "MODE_UNSPECIFIED"):
        choice = ToolChoice(mode="auto")
    elif mode == "NONE":
        choice = ToolChoice(mode="none")
    elif mode == "ANY":
        choice = ToolChoice(mode="function", name=names[0]) if len(names) == 1 else ToolChoice(mode="required")
    elif mode == "VALIDATED":
        choice = ToolChoice(mode="auto")
        keep["mode"] = "VALIDATED"
    else:
        raise FormatError(f"toolConfig.functionCallingConfig.mode {mode!r} is not one of AUTO, ANY, NONE, VALIDATED",
                          "toolConfig.functionCallingConfig.mode")
    if len(names) > 1 or (names and mode != "ANY"):
        keep["allowedFunctionNames"] = names
    if keep:
        extra["functionCallingConfig"] = keep
    return choice, extra


def _parse_generation_config(
    gc: Any,
) -> tuple[Sampling, ResponseFormat | None, str | None, int | None, dict[str, Any]]:
    if gc is None:
        return Sampling(), None, None, None, {}
    gc = _obj(gc, "generationConfig")
    g: dict[str, Any] = {_camel(k): v for k, v in gc.items()}
    extra = {k: v for k, v in g.items() if k not in _GEN_MAPPED}

    def opt(key: str, conv: Any) -> Any:
        v = g.get(key)
        return None if v is None else conv(v, f"generationConfig.{key}")

    stop = opt("stopSequences", _list)
    sampling = Sampling(
        temperature=opt("temperature", _num), top_p=opt("topP", _num), top_k=opt("topK", _int),
        max_tokens=opt("maxOutputTokens", _int), n=opt("candidateCount", _int), seed=opt("seed", _int),
        presence_penalty=opt("presencePenalty", _num), frequency_penalty=opt("frequencyPenalty", _num),
        stop=None if stop is None else [_str(s, "generationConfig.stopSequences") for s in stop],
    )
    # The ranges the Gemini API accepts.
    check_range(sampling.temperature, "generationConfig.temperature", 0.0, 2.0)
    check_range(sampling.top_p, "generationConfig.topP", 0.0, 1.0)
    check_range(sampling.top_k, "generationConfig.topK", 0.0)
    check_range(sampling.max_tokens, "generationConfig.maxOutputTokens", 1.0)
    check_range(sampling.n, "generationConfig.candidateCount", 1.0, MAX_CANDIDATES)
    check_range(sampling.presence_penalty, "generationConfig.presencePenalty", -2.0, 2.0)
    check_range(sampling.frequency_penalty, "generationConfig.frequencyPenalty", -2.0, 2.0)

    mime, jschema, oschema = g.get("responseMimeType"), g.get("responseJsonSchema"), g.get("responseSchema")
    if jschema is not None:
        _obj(jschema, "generationConfig.responseJsonSchema")
    if oschema is not None:
        _obj(oschema, "generationConfig.responseSchema")
    rf: ResponseFormat | None = None
    if mime == "application/json":
        schema = jschema if jschema is not None else (_schema_to_json(oschema) if oschema is not None else None)
        rf = ResponseFormat(type="json_schema", json_schema=schema) if schema is not None else \
            ResponseFormat(type="json_object")
    elif (mime is not None and mime != "text/plain") or jschema is not None or oschema is not None:
        # text/x.enum and friends: Gemini-only, kept verbatim for a Gemini channel.
        extra.update({k: g[k] for k in ("responseMimeType", "responseJsonSchema", "responseSchema") if k in g})

    effort: str | None = None
    budget: int | None = None
    if (tc := g.get("thinkingConfig")) is not None:
        t = {_camel(k): v for k, v in _obj(tc, "generationConfig.thinkingConfig").items()}
        t_extra = {k: v for k, v in t.items() if k not in ("thinkingBudget", "thinkingLevel", "includeThoughts")}
        if (b := t.get("thinkingBudget")) is not None:
            budget = _int(b, "generationConfig.thinkingConfig.thinkingBudget")
            if budget < 0:  # -1 = dynamic: the unified "model decides" (Anthropic's adaptive thinking)
                budget = -1
        if (lv := t.get("thinkingLevel")) is not None:
            effort = _str(lv, "generationConfig.thinkingConfig.thinkingLevel").lower()
        # build_request shows thoughts whenever thinking is asked for; a Gemini client that chose
        # otherwise keeps its choice for a Gemini channel.
        shown_by_default = (budget is not None and budget != 0) or (budget is None and effort is not None)
        if bool(t.get("includeThoughts", False)) != shown_by_default:
            t_extra["includeThoughts"] = bool(t.get("includeThoughts", False))
        if t_extra:
            extra["thinkingConfig"] = t_extra
    return sampling, rf, effort, budget, extra


# --------------------------------------------------------------------------------------------------
# Inbound: render_response, StreamRenderer, errors


def _chunk_body(parts: list[dict[str, Any]], model: str, rid: str, finish: str | None = None,
                usage: Usage | None = None, continuation: str | None = None) -> dict[str, Any]:
    cand: dict[str, Any] = {"content": {"role": "model", "parts": parts}, "index": 0}
    if finish:
        cand["finishReason"] = finish
    if continuation:
        cand["continuationToken"] = continuation
    return _answer({"candidates": [cand]}, model, rid, usage)


def _answer(out: dict[str, Any], model: str, rid: str, usage: Usage | None) -> dict[str, Any]:
    """An answer's (or chunk's) usage, model version and response id, after what it holds."""
    if usage is not None:
        out["usageMetadata"] = _usage_to_gemini(usage)
    if model:
        out["modelVersion"] = model
    if rid:
        out["responseId"] = rid
    return out


def render_response(resp: UnifiedResponse) -> bytes:
    blocked = _blocked(resp.finish_native)
    if blocked is not None:
        return orjson.dumps(_blocked_body(blocked, resp.model, resp.id, resp.usage))
    parts = _model_parts(resp.message, outbound=False)
    # A whole answer has a finishReason, even when the upstream named none (as a stream's end does).
    finish = _finish_out(resp.finish_reason or "stop", resp.finish_native)
    return orjson.dumps(_chunk_body(parts, resp.model, resp.id, finish, resp.usage, resp.continuation))


# A prompt Gemini blocked has no candidate, only promptFeedback.blockReason: the unified answer is a
# content_filter finish whose finish_native carries the reason, so a Gemini client gets it back.
BLOCKED = "gemini-block:"


def _blocked(native: str | None) -> str | None:
    return native.removeprefix(BLOCKED) if native is not None and native.startswith(BLOCKED) else None


def _blocked_body(reason: str, model: str, rid: str, usage: Usage | None) -> dict[str, Any]:
    return _answer({"promptFeedback": {"blockReason": reason}}, model, rid, usage)


def _finish_out(finish: FinishReason | None, native: str | None) -> str | None:
    if native is not None and native.startswith("gemini:"):
        return native.removeprefix("gemini:")
    return _FINISH_TO_GEMINI[finish] if finish else None


def _sse(obj: Any) -> bytes:
    # "data: " with the space (google-genai requires it) and CRLF CRLF like the real API.
    return b"data: " + _one_line(orjson.dumps(obj)) + b"\r\n\r\n"


def _one_line(data: bytes) -> bytes:
    """JSON text with U+2028, U+2029 and U+0085 escaped. JSON lets them stand raw in a string, but
    google-genai reads streams with httpx's iter_lines, which splits lines where str.splitlines does:
    at these too, so an event holding one arrived in two halves and the SDK failed. They can only
    occur inside strings, so the escape is the same JSON."""
    if b"\xe2\x80\xa8" in data or b"\xe2\x80\xa9" in data or b"\xc2\x85" in data:
        data = data.replace(b"\xe2\x80\xa8", b"\\u2028").replace(b"\xe2\x80\xa9", b"\\u2029")
        data = data.replace(b"\xc2\x85", b"\\u0085")
    return data


class StreamRenderer:
    """Unified stream events → Gemini stream chunks (SSE, or a JSON array), one chunk per event as it arrives. Only a tool call's
    argument fragments are held back (Gemini sends a functionCall whole), until a non-call event or
    the finish (parallel calls go out together); finishReason and usage go on the last chunk, written by finish()."""

    def __init__(self, req: Request | Parsed, array: bool = False) -> None:
        # `array`: the client asked for the REST default (no `alt`, or `alt=json`): the chunks go out
        # as one JSON array written piece by piece (`[{…}`, `,\r\n{…}`, …, `]`), not as SSE.
        self._array = array
        self._opened = False  # array mode: the `[` has been written
        self._model = req.model
        self._id = ""
        self._calls: dict[int, list[Any]] = {}  # index → [id, name, [fragments], signature]
        self._pending_sig: str | None = None  # a Gemini signature on its own: wire value for the next part
        self._finish: FinishReason | None = None
        self._native: str | None = None  # the FinishEvent's finish_native
        self._continuation: str | None = None  # the FinishEvent's continuation token
        self._usage: Usage | None = None
        self._closed = False

    def render(self, ev: StreamEvent) -> bytes:
        if self._closed:
            return b""
        if isinstance(ev, TextDelta):
            if not ev.text:
                return b""
            return self._flush_calls() + self._emit({"text": ev.text})
        if isinstance(ev, ReasoningDelta):
            if ev.text:
                part: dict[str, Any] = {"text": ev.text, "thought": True}
                if ev.signature:
                    part["thoughtSignature"] = _sig_out(ev.signature, ev.signature_provider)[0]
                return self._flush_calls() + self._emit(part)
            if ev.signature:
                wire, ours = _sig_out(ev.signature, ev.signature_provider)
                if not ours:  # another provider's: it signs the thinking just sent, so it goes out beside it
                    return self._flush_calls() + self._emit({"text": "", "thought": True, "thoughtSignature": wire})
                # Gemini's own (our parser emits it just before its part): it rides the next part
                out = self._flush_calls() + self._emit_pending()
                self._pending_sig = wire
                return out
            return b""  # redacted thinking: nothing Gemini can show
        if isinstance(ev, ToolCallDelta):
            # A new call does not end the ones held: OpenAI-shaped streams announce parallel calls
            # first and interleave their argument fragments after.
            call = self._calls.get(ev.index)
            if call is None:
                call = self._calls[ev.index] = [ev.id or "", ev.name or "", [], self._pending_sig]
                self._pending_sig = None
            if ev.id and not call[0]:
                call[0] = ev.id
            if ev.name and not call[1]:
                call[1] = ev.name
            call[2].append(ev.arguments)
            return b""
        if isinstance(ev, StreamStart):
            self._id = ev.id
            self._model = ev.model or self._model
            if ev.usage is not None:
                self._usage = ev.usage
            return b""
        if isinstance(ev, FinishEvent):
            self._finish = ev.reason
            self._native = ev.finish_native
            self._continuation = ev.continuation
            return self._flush_calls()
        if isinstance(ev, UsageEvent):
            self._usage = ev.usage
            return b""
        if isinstance(ev, ErrorEvent):
            return self.error(ev.error)
        return b""

    def finish(self) -> bytes:
        if self._closed:
            return b""
        self._closed = True
        out = self._flush_calls()
        if self._finish is None and self._usage is None and not self._pending_sig:
            return out + self._close_array()
        blocked = _blocked(self._native)
        if blocked is not None:
            return out + self._frame(_blocked_body(blocked, self._model, self._id, self._usage)) + self._close_array()
        part: dict[str, Any] = {"text": ""}  # as the real API: the last chunk has an empty text part
        if self._pending_sig:
            part["thoughtSignature"] = self._pending_sig
        finish = _finish_out(self._finish, self._native)
        return out + self._frame(_chunk_body([part], self._model, self._id, finish, self._usage,
                                             self._continuation)) + self._close_array()

    def error(self, err: Error) -> bytes:
        if self._closed:
            return b""
        self._closed = True
        # A partly streamed call is incomplete: it is not sent. In an array, the error is its last element.
        return self._frame(_error_body(err)) + self._close_array()

    def _frame(self, obj: Any) -> bytes:
        if not self._array:
            return _sse(obj)
        head = b",\r\n" if self._opened else b"["
        self._opened = True
        return head + orjson.dumps(obj)

    def _close_array(self) -> bytes:
        if not self._array:
            return b""
        return b"]" if self._opened else b"[]"

    def _emit(self, part: dict[str, Any]) -> bytes:
        parts = [part]
        if self._pending_sig:
            if part.get("thought"):
                # A pending signature signs the reasoning *before* it (Anthropic sends it after its
                # thinking), so it must not ride a new thought: it goes out on its own thought part.
                parts.insert(0, {"text": "", "thought": True, "thoughtSignature": self._pending_sig})
            else:
                part["thoughtSignature"] = self._pending_sig
            self._pending_sig = None
        return self._frame(_chunk_body(parts, self._model, self._id))

    def _emit_pending(self) -> bytes:
        if not self._pending_sig:
            return b""
        sig, self._pending_sig = self._pending_sig, None
        return self._frame(_chunk_body([{"text": "", "thought": True, "thoughtSignature": sig}], self._model, self._id))

    def _flush_calls(self) -> bytes:
        if not self._calls:
            return b""
        parts = []
        for index in sorted(self._calls):
            cid, name, frags, sig = self._calls[index]
            part: dict[str, Any] = {"functionCall": {"id": cid, "name": name, "args": _args_object("".join(frags))}}
            if sig:
                part["thoughtSignature"] = sig
            parts.append(part)
        self._calls.clear()
        return self._frame(_chunk_body(parts, self._model, self._id))


def _status_pair(err: Error) -> tuple[int, str]:
    status, name = _ERROR_FOR_KIND.get(err.kind, (500, "INTERNAL"))
    if err.kind is ErrorKind.SERVER_ERROR and err.status in (501, 502):
        # Execution's verdict on an upstream failure (502: its answer was unusable, or it refused our
        # credentials): not this gateway's own fault, which is what a 500 would tell the client.
        status, name = err.status, ("UNIMPLEMENTED" if err.status == 501 else "UNAVAILABLE")
    elif err.kind is ErrorKind.INVALID_REQUEST and err.status in (408, 413, 415):
        # a body that stopped arriving, over the gateway's limit, or in a coding it cannot read, as the
        # other formats answer it
        status = err.status
    if err.code in _GOOGLE_HTTP and _GOOGLE_HTTP[err.code] == status:
        name = err.code
    return status, name


def error_status(err: Error) -> int:
    return _status_pair(err)[0]


def _error_body(err: Error) -> dict[str, Any]:
    status, name = _status_pair(err)
    e: dict[str, Any] = {"code": status, "message": err.message, "status": name}
    details: list[dict[str, Any]] = []
    if err.retry_after is not None:
        details.append({"@type": _RETRY_INFO, "retryDelay": _duration(err.retry_after)})
    if err.param:
        details.append({"@type": _BAD_REQUEST,
                        "fieldViolations": [{"field": err.param, "description": err.message}]})
    if details:
        e["details"] = details
    return {"error": e}


def render_error(err: Error) -> bytes:
    return orjson.dumps(_error_body(err))


def error_headers(err: Error) -> dict[str, str]:
    # Gemini itself only says retryDelay in the body; the header helps generic HTTP clients.
    if err.retry_after is None:
        return {}
    return {"retry-after": str(max(0, math.ceil(err.retry_after)))}


# --------------------------------------------------------------------------------------------------
# Outbound: request_path, auth_headers, build_request


def request_path(upstream_model: str, stream: bool) -> str:
    model = upstream_model.removeprefix("models/")
    return f"/models/{model}:streamGenerateContent?alt=sse" if stream else f"/models/{model}:generateContent"


def auth_headers(key: str) -> dict[str, str]:
    return {"x-goog-api-key": key}


def stream_passthrough(body: bytes, parsed: Parsed | None = None) -> bytes:
    """A client's stream request, validated by parse_request, forwarded to a channel of this format:
    as it came (Gemini streams always report usageMetadata)."""
    return body


def build_request(req: Request, upstream_model: str) -> bytes:
    refuse_foreign_fields(req, FAMILY, "a Gemini channel")
    contents: list[dict[str, Any]] = []
    system: list[dict[str, Any]] = []
    names: dict[str, str] = {}  # tool call id → function name: Gemini's functionResponse needs the name
    results_open = False  # the last content holds function responses: consecutive results join it
    for i, m in enumerate(req.messages):
        if m.role in ("system", "developer"):
            for p in m.content:
                if not isinstance(p, TextPart):
                    raise FormatError("a Gemini systemInstruction takes text only", f"messages[{i}].content")
                system.append({"text": p.text})
            continue
        if m.role == "assistant":
            for c in m.tool_calls:
                names[c.id] = c.name
            parts = _model_parts(m, outbound=True)
            if parts:
                contents.append({"role": "model", "parts": parts})
            results_open = False
            continue
        responses: list[dict[str, Any]] = []
        parts = []
        for p in m.content:
            if isinstance(p, ToolResultPart):
                responses.append(_function_response(p, names, i))
            elif isinstance(p, TextPart):
                if p.text:
                    parts.append({"text": p.text})
            elif isinstance(p, ImagePart):
                parts.append(_image_to_gemini(p))
            # reasoning in a user/tool message has no Gemini form
        if m.role == "tool" and not responses:
            raise FormatError("a tool message needs a tool result", f"messages[{i}].content")
        if responses and results_open:
            contents[-1]["parts"].extend(responses)
        elif responses:
            contents.append({"role": "user", "parts": responses})
        if parts:
            if responses:
                contents[-1]["parts"].extend(parts)
            else:
                contents.append({"role": "user", "parts": parts})
        results_open = bool(responses) and not parts
    if not contents:
        raise FormatError("Gemini needs at least one user or assistant message", "messages")

    body: dict[str, Any] = {"contents": contents}
    if system:
        body["systemInstruction"] = {"parts": system}
    tools = _tools_to_gemini(req.tools)
    if tools:
        body["tools"] = tools
    if req.tool_choice is not None:
        body["toolConfig"] = {"functionCallingConfig": _tool_choice_to_gemini(req.tool_choice)}
    gen = _generation_config(req, upstream_model)
    if gen:
        body["generationConfig"] = gen
    # Only a Gemini client's extras, and only the fields Gemini knows, are passed through.
    for key, val in (req.extra_body.items() if req.source == FAMILY else ()):
        ck = _camel(key)
        if ck not in _PASSTHROUGH:
            continue  # anything else would only earn a 400 from Gemini
        if isinstance(val, dict) and isinstance(body.get(ck), dict):
            _deep_merge(body[ck], val)
        else:
            body[ck] = val
    return orjson.dumps(body)


def _function_response(p: ToolResultPart, names: Mapping[str, str], i: int) -> dict[str, Any]:
    name = p.name or names.get(p.tool_call_id)
    if not name:
        raise FormatError(f"tool result {p.tool_call_id!r} answers no earlier tool call; Gemini needs its function name",
                          f"messages[{i}].tool_call_id")
    text = "".join(x.text for x in p.content if isinstance(x, TextPart))
    obj = _json_object(text)
    if p.is_error:
        response: dict[str, Any] = {"error": obj if obj is not None else text}
    else:
        response = obj if obj is not None else {"result": text}
    fr: dict[str, Any] = {"id": p.tool_call_id, "name": name, "response": response}
    images = [_image_to_gemini(x) for x in p.content if isinstance(x, ImagePart)]
    if images:
        fr["parts"] = images
    return {"functionResponse": fr}


def _tools_to_gemini(tools: list[Tool]) -> list[dict[str, Any]]:
    decls: list[dict[str, Any]] = []
    native: list[dict[str, Any]] = []
    for t in tools:
        if t.type == "native":
            if t.provider != "gemini" or not t.native:
                raise FormatError(f"tool {t.name!r} is a {t.provider or 'foreign'} native tool that a Gemini channel "
                                  "cannot run", "tools")
            native.append(dict(t.native))
            continue
        d: dict[str, Any] = {"name": t.name}
        if t.description:
            d["description"] = t.description
        if t.parameters is not None:
            d["parametersJsonSchema"] = t.parameters  # full JSON Schema: no OpenAPI-subset conversion needed
        decls.append(d)
    return ([{"functionDeclarations": decls}] if decls else []) + native


def _tool_choice_to_gemini(tc: ToolChoice) -> dict[str, Any]:
    if tc.mode == "none":
        return {"mode": "NONE"}
    if tc.mode == "required":
        return {"mode": "ANY"}
    if tc.mode == "function" and tc.name:
        return {"mode": "ANY", "allowedFunctionNames": [tc.name]}
    return {"mode": "AUTO"}  # disable_parallel has no Gemini equivalent (lossy)


def _generation_config(req: Request, model: str) -> dict[str, Any]:
    s = req.sampling
    g: dict[str, Any] = {}
    # Gemini takes at most 8 candidates (OpenAI 128); only the first is read back in any case.
    n = None if s.n is None else min(s.n, MAX_CANDIDATES)
    for key, val in (("temperature", s.temperature), ("topP", s.top_p), ("topK", s.top_k),
                     ("candidateCount", n), ("maxOutputTokens", s.max_tokens), ("stopSequences", s.stop),
                     ("seed", s.seed), ("presencePenalty", s.presence_penalty),
                     ("frequencyPenalty", s.frequency_penalty)):
        if val is not None:
            g[key] = val
    rf = req.response_format
    if rf is not None and rf.type != "text":
        g["responseMimeType"] = "application/json"
        if rf.type == "json_schema" and rf.json_schema is not None:
            g["responseJsonSchema"] = rf.json_schema
    thinking: dict[str, Any] = {}
    if req.reasoning_budget is not None:
        thinking["thinkingBudget"] = max(req.reasoning_budget, -1)  # any negative: dynamic (-1)
    elif req.reasoning_effort:
        effort = req.reasoning_effort.lower()
        if _BUDGET_MODELS.search(model):  # 1.x/2.x models know budgets only
            thinking["thinkingBudget"] = _EFFORT_BUDGET.get(effort, 8192)
        else:
            thinking["thinkingLevel"] = _EFFORT_LEVEL.get(effort) or effort.upper()
    if thinking and thinking.get("thinkingBudget") != 0:
        # A client of another family that asks for reasoning expects to see it; a Gemini client's own
        # includeThoughts arrives through extra_body and wins.
        thinking["includeThoughts"] = True
    if thinking:
        g["thinkingConfig"] = thinking
    return g


# --------------------------------------------------------------------------------------------------
# Outbound: parse_response, StreamParser, parse_error


class _Reader:
    """GenerateContentResponse objects → unified stream events. The non-stream response is read as a
    one-chunk stream and folded by StreamAggregator, so both paths give the same Response."""

    def __init__(self, start_usage: bool = True) -> None:
        self.start_usage = start_usage  # a stream's prompt size up front (a whole answer counts only finished)
        self.started = False
        self.rid = ""
        self.calls = 0
        self.finished = False
        self.errored = False
        self.usage: Usage | None = None

    def chunk(self, obj: Any, out: list[StreamEvent]) -> None:
        if not isinstance(obj, dict):
            raise FormatError("a Gemini response chunk must be a JSON object", None, _UPSTREAM)
        if obj.get("error") is not None:
            out.append(ErrorEvent(error=_error_from_obj(obj, None)))
            self.errored = True
            return
        if not self.started:
            self.started = True
            rid, mv = _get(obj, "responseId"), _get(obj, "modelVersion")
            self.rid = rid if isinstance(rid, str) else ""
            # The prompt's size, known from the first chunk on (as Anthropic's message_start says it):
            # a stream cut before its finish still accounts for the input it was billed.
            um0 = _get(obj, "usageMetadata") if self.start_usage else None
            start = _usage_from_gemini(um0) if isinstance(um0, dict) else None
            out.append(StreamStart(id=self.rid, model=mv if isinstance(mv, str) else "",
                                   usage=Usage(prompt_tokens=start.prompt_tokens, cached_tokens=start.cached_tokens)
                                   if start is not None and start.prompt_tokens else None))
        cands = _get(obj, "candidates") or []
        if not isinstance(cands, list):
            raise FormatError("candidates must be an array", "candidates", _UPSTREAM)
        # Only candidate 0 is followed: unified responses have one choice (candidateCount > 1 is lossy).
        cand = next((c for c in cands if isinstance(c, dict) and (_get(c, "index") or 0) == 0), None)
        if cand is not None:
            content = _get(cand, "content")
            parts = _get(content, "parts") if isinstance(content, dict) else None
            for p in parts or []:
                self._part(p, out)
        if (um := _get(obj, "usageMetadata")) is not None:
            self.usage = _usage_from_gemini(um)
        reason: FinishReason | None = None
        native: str | None = None
        token: str | None = None
        if cand is not None and isinstance(fr := _get(cand, "finishReason"), str):
            reason = _FINISH_FROM_GEMINI.get(fr, "stop")
            native = "gemini:" + fr  # RECITATION, say, written back as it came to a Gemini client
            if isinstance(ct := _get(cand, "continuationToken"), str) and ct:
                token = ct
            if reason == "stop" and self.calls:
                reason = "tool_calls"  # Gemini says STOP when it calls a function
        elif not cands and isinstance(pf := _get(obj, "promptFeedback"), dict) and _get(pf, "blockReason"):
            reason = "content_filter"
            native = BLOCKED + str(_get(pf, "blockReason"))  # a Gemini client gets its promptFeedback back
        if reason is not None and not self.finished:
            self.finished = True
            out.append(FinishEvent(reason=reason, finish_native=native, continuation=token))
            if self.usage is not None:
                out.append(UsageEvent(usage=self.usage))
        elif self.finished and um is not None and self.usage is not None:
            out.append(UsageEvent(usage=self.usage))  # usage that follows the finish (cumulative)

    def _part(self, p: Any, out: list[StreamEvent]) -> None:
        if not isinstance(p, dict):
            raise FormatError("a Gemini part must be an object", None, _UPSTREAM)
        raw_sig = _get(p, "thoughtSignature")
        sig, provider = _sig_in(raw_sig) if isinstance(raw_sig, str) and raw_sig else (None, None)
        text = _get(p, "text")
        if isinstance(text, str) and _get(p, "thought") is True:
            if text or sig:
                out.append(ReasoningDelta(text=text, signature=sig, signature_provider=provider))
            return
        if sig:  # emitted just before its part, so the renderer puts it back on the same part
            out.append(ReasoningDelta(text="", signature=sig, signature_provider=provider))
        if isinstance(text, str):
            if text:
                out.append(TextDelta(text=text))
        elif isinstance(fc := _get(p, "functionCall"), dict):
            name, args, cid = _get(fc, "name"), _get(fc, "args"), _get(fc, "id")
            if not isinstance(name, str):
                raise FormatError("functionCall.name must be a string", None, _UPSTREAM)
            if not isinstance(cid, str) or not cid:
                cid = f"call_{self.rid}_{self.calls}" if self.rid else f"call_{self.calls}"
            out.append(ToolCallDelta(index=self.calls, id=cid, name=name,
                                     arguments=_dumps(args if isinstance(args, dict) else {})))
            self.calls += 1
        else:
            for kind in ("executableCode", "codeExecutionResult"):
                if (v := _get(p, kind)) is not None:
                    out.append(TextDelta(text=_fenced(kind, v)))
            # inlineData (generated images) has no stream event; parse_response keeps it


def _response_object(body: bytes) -> dict[str, Any]:
    """The GenerateContentResponse object, or the FormatError for a body of another shape."""
    obj = _load(body, "Gemini response", _UPSTREAM)
    if isinstance(obj, list) and len(obj) == 1:
        obj = obj[0]
    if not isinstance(obj, dict):
        raise FormatError("a Gemini response must be a JSON object", None, _UPSTREAM)
    if obj.get("error") is not None:
        raise UpstreamErrorBody(f"Gemini answered an error: {_error_from_obj(obj, None).message}", None, _UPSTREAM)
    cands = _get(obj, "candidates")
    pf = _get(obj, "promptFeedback")
    if not cands and not (isinstance(pf, dict) and _get(pf, "blockReason")):
        raise FormatError("Gemini response has no candidates", "candidates", _UPSTREAM)
    return obj


def response_usage(body: bytes) -> Usage | None:
    """`parse_response(body).usage`, for a driver that forwards the body verbatim to a client of this
    same format and needs only the usage: the same top-level checks (the same FormatError for a body
    that is not a GenerateContentResponse), but the parts are not read.

    As in parse_response (which reads the body as a one-chunk stream), the usage counts only in a
    finished answer: candidate 0 with a finishReason, or a blocked prompt (see _Reader.chunk)."""
    obj = _response_object(body)
    cands = _get(obj, "candidates") or []
    if not isinstance(cands, list):
        raise FormatError("candidates must be an array", "candidates", _UPSTREAM)
    um = _get(obj, "usageMetadata")
    if um is None:
        return None
    cand = next((c for c in cands if isinstance(c, dict) and (_get(c, "index") or 0) == 0), None)
    if cand is not None and isinstance(_get(cand, "finishReason"), str):
        return _usage_from_gemini(um).finalised()
    if not cands and isinstance(pf := _get(obj, "promptFeedback"), dict) and _get(pf, "blockReason"):
        return _usage_from_gemini(um).finalised()
    return None


def parse_response(body: bytes) -> UnifiedResponse:
    obj = _response_object(body)
    cands = _get(obj, "candidates")
    events: list[StreamEvent] = []
    _Reader(start_usage=False).chunk(obj, events)
    agg = StreamAggregator()
    for ev in events:
        agg.add(ev)
    resp = agg.response()
    cand = next((c for c in cands or [] if isinstance(c, dict) and (_get(c, "index") or 0) == 0), None)
    content = _get(cand, "content") if cand else None
    for p in (_get(content, "parts") if isinstance(content, dict) else None) or []:
        for kind in ("inlineData", "fileData"):
            if isinstance(v := _get(p, kind), dict):
                mime = _get(v, "mimeType")
                if kind == "inlineData" and isinstance(_get(v, "data"), str):
                    resp.message.content.append(ImagePart(media_type=mime, data=_std_b64(_get(v, "data"))))
                elif kind == "fileData" and isinstance(_get(v, "fileUri"), str):
                    resp.message.content.append(ImagePart(media_type=mime, url=_get(v, "fileUri")))
    return resp


class StreamParser:
    """An upstream `?alt=sse` stream → unified events, for any chunking of the bytes."""

    def __init__(self) -> None:
        self._sse = SSEDecoder()
        self._reader = _Reader()

    def feed(self, data: bytes) -> list[StreamEvent]:
        out: list[StreamEvent] = []
        for ev in self._sse.feed(data):
            self._event(cast(str, ev.data), out)  # a decoder without raw=True gives str
        return out

    @property
    def usage_seen(self) -> Usage | None:
        """The usage (cumulative) the upstream has reported so far: what a stream cut before its end cost."""
        return self._reader.usage

    @property
    def ended(self) -> bool:
        """Never before the connection closes: Gemini has no terminal event, and usage may follow the finish."""
        return False

    @property
    def complete(self) -> bool:
        """The answer is whole: a finishReason was read (only usage may follow)."""
        return self._reader.finished and not self._reader.errored

    def close(self) -> list[StreamEvent]:
        out: list[StreamEvent] = []
        for ev in self._sse.close():
            try:
                self._event(cast(str, ev.data), out)  # a decoder without raw=True gives str
            except FormatError:
                if not self.complete:
                    raise
                # The answer was whole when the connection broke part way through a later event (its
                # usage, say): the torn event is dropped, as SSE drops an event the stream's end cut.
        if not (self._reader.finished or self._reader.errored):
            # Gemini has no terminal marker: a stream without a finishReason was cut short.
            raise FormatError("Gemini stream ended without a finishReason", None, _UPSTREAM)
        return out

    def _event(self, data: str, out: list[StreamEvent]) -> None:
        data = data.strip()
        if not data or data == "[DONE]":  # [DONE] is not Gemini's, but some compatible servers send it
            return
        obj = _load(data, "Gemini stream chunk", _UPSTREAM)
        if isinstance(obj, list):  # the JSON-array stream of non-SSE streamGenerateContent
            for o in obj:
                self._reader.chunk(o, out)
        else:
            self._reader.chunk(obj, out)


def _error_from_obj(obj: Any, http: int | None) -> Error:
    e = obj.get("error") if isinstance(obj, dict) else None
    code: Any = None
    message = ""
    gstatus: str | None = None
    details: list[Any] = []
    if isinstance(e, dict):
        code, gstatus = e.get("code"), e.get("status")
        m, d = e.get("message"), e.get("details")
        message = m if isinstance(m, str) else ""
        details = d if isinstance(d, list) else []
    elif isinstance(e, str):
        message = e
    if not isinstance(gstatus, str):
        gstatus = None
    status = http if http is not None and http >= 400 else (
        code if isinstance(code, int) and code >= 400 else _GOOGLE_HTTP.get(gstatus or "", 500))
    kind = error_kind_for_status(status)
    retry_after: float | None = None
    param: str | None = None
    for d in details:
        if not isinstance(d, dict):
            continue
        t = d.get("@type")
        if t == _RETRY_INFO:
            retry_after = _parse_duration(d.get("retryDelay"))
        elif t == _BAD_REQUEST and param is None:
            fv = d.get("fieldViolations")
            if isinstance(fv, list) and fv and isinstance(fv[0], dict) and isinstance(fv[0].get("field"), str):
                param = fv[0]["field"]
        elif t == _ERROR_INFO and d.get("reason") in ("API_KEY_INVALID", "API_KEY_EXPIRED"):
            kind = ErrorKind.AUTHENTICATION  # Gemini answers a bad key with 400 INVALID_ARGUMENT
    if not message:
        message = status_message(status)  # not the body: a proxy's page may name internal hosts
    return Error(kind=kind, status=status, message=message, retry_after=retry_after, param=param, code=gstatus,
                 code_family=FAMILY)


def parse_error(status: int, headers: Mapping[str, str], body: bytes) -> Error:
    try:
        obj: Any = orjson.loads(body) if body else None
    except orjson.JSONDecodeError:
        obj = None
    if isinstance(obj, list) and len(obj) == 1:
        obj = obj[0]
    err = _error_from_obj(obj, status)
    if err.retry_after is None:
        err.retry_after = retry_after(headers)
    return err
