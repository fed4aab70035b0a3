"""Wire formats: each API family's JSON/SSE ⇄ the unified model, in both roles.

Every format module (openai_chat, openai_responses, anthropic, gemini) provides the same names,
so the drivers and the mock provider treat them alike:

Inbound role (we are the server; a client speaks this format to us):
    parse_request(body: bytes, model: str | None = None, stream: bool | None = None) -> Request
        Raises FormatError (status 400, naming the field) on anything malformed. `model`/`stream`
        come from the URL where the family puts them there (Gemini).
    check_request(body, model=None, stream=None) -> Parsed   the same checks and errors; the Request is
                                                             built when Parsed.request() is first called
                                                             (formats/parsed.py: the gateway's handler)
    render_response(resp: Response) -> bytes                 the non-stream JSON body
    StreamRenderer(req: Request | Parsed)                    one per client stream:
        .render(ev: StreamEvent) -> bytes                    the SSE bytes for one event (may be b"")
        .finish() -> bytes                                   the closing bytes (`data: [DONE]`, ...)
        .error(err: Error) -> bytes                          an in-stream error event, then the end
    error_status(err: Error) -> int                          the family's status for an error
    render_error(err: Error) -> bytes                        the family's error body
    error_headers(err: Error) -> dict[str, str]              e.g. retry-after

Outbound role (we are the client of a provider speaking this format):
    request_path(upstream_model: str, stream: bool) -> str   appended to the channel's base_url
    auth_headers(key: str) -> dict[str, str]                 the family's auth convention
    build_request(req: Request, upstream_model: str) -> bytes
    stream_passthrough(body: bytes, parsed: Parsed | None = None) -> bytes
                                                             a client's own stream request in this
                                                             format, as sent to a channel of this
                                                             format (asking for usage where the
                                                             family's streams omit it by default);
                                                             `parsed`, check_request's, spares a decode
    parse_response(body: bytes) -> Response                  raises FormatError if malformed
    response_usage(body: bytes) -> Usage | None              parse_response(body).usage, reading only
                                                             the usage (for a body forwarded verbatim);
                                                             the same FormatError for a body not of
                                                             the response's top-level shape
    StreamParser()                                           one per upstream stream:
        .feed(data: bytes) -> list[StreamEvent]              any chunking of the bytes
        .close() -> list[StreamEvent]                        at EOF; raises FormatError if the
                                                             stream ended without its terminal event
        .ended -> bool                                       the terminal event was read: the stream
                                                             is over, whether or not the connection is
      where the family needs them (read with a default):
        .complete -> bool                                    the answer is whole without a terminal
                                                             event (Gemini's finishReason): a stall
                                                             after it is the end, not a failure
        .usage_seen -> Usage | None                          usage reported but not yet emitted (for a
                                                             stream cut before its end)
    parse_error(status: int, headers: Mapping[str, str], body: bytes) -> Error

All functions are pure: no I/O, no clock (ids and `created` come from the unified objects).
"""

from __future__ import annotations

import importlib
import math
import re
from collections.abc import Mapping
from email.utils import parsedate_to_datetime
from http import HTTPStatus
from types import ModuleType
from typing import Any


class FormatError(ValueError):
    """Malformed or unsupported input; `param` names the offending field."""

    def __init__(self, message: str, param: str | None = None, status: int = 400,
                 details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.status = status
        self.details = details  # the client family's machine-readable details (Error.details)


class UpstreamErrorBody(FormatError):
    """An answer with a success status whose body is the provider's error object (some providers
    answer 200 so); `message` is that error's message, sanitized as any upstream error's."""


def check_range(value: float | None, param: str, low: float | None, high: float | None = None) -> None:
    """A 400 naming `param` when a number lies outside what the client's own API accepts
    (temperature above 2 for OpenAI, say). Forwarded, the provider would refuse it after a round
    trip; sent to another family's channel, it would be clamped and answered as if asked for."""
    if value is None or ((low is None or value >= low) and (high is None or value <= high)):
        return
    if high is None:
        span = f"at least {low:g}"
    elif low is None:
        span = f"at most {high:g}"
    else:
        span = f"between {low:g} and {high:g}"
    raise FormatError(f"'{param}' must be {span}; got {value:g}.", param)


# Request fields that only their own family's channels act on, kept in extra_body. A channel of
# another family would drop them and answer another question than the one asked: a 400 naming the
# field instead (in a pool of several channel types, the right type serves it: server/driver.py
# LiveDriver.fit).
_OWN_FAMILY_ONLY: dict[str, tuple[tuple[str, ...], str]] = {
    # OpenAI Chat's legacy function calling
    "openai_chat": (("functions", "function_call"),
                    "OpenAI's legacy function calling reaches only OpenAI Chat channels; declare 'tools' "
                    "(and 'tool_choice') for {channel}"),
    # The rest of an answer Gemini cut short (finishReason CONTINUATION): only Gemini holds the answer
    # the token names; another family would start a new one.
    "gemini": (("continuationToken",),
               "a Gemini continuation resumes only on a Gemini channel; {channel} cannot continue it"),
}


def refuse_foreign_fields(req: Any, family: str, channel: str) -> None:
    """A 400 when `req` (from another family than the channel's `family`) holds a field only its own
    family's channels can act on; `channel` names the channel type in the message."""
    if req.source == family:
        return
    spec = _OWN_FAMILY_ONLY.get(req.source)
    if spec is None:
        return
    names, why = spec
    for name in names:
        if req.extra_body.get(name) not in (None, ""):  # null (or empty) is the field unset
            raise FormatError(f"{name}: " + why.format(channel=channel), name)


FORMAT_MODULES = {
    "openai": "axonsim.formats.openai_chat",
    "openai_chat": "axonsim.formats.openai_chat",
    "openai_responses": "axonsim.formats.openai_responses",
    "anthropic": "axonsim.formats.anthropic",
    "gemini": "axonsim.formats.gemini",
}


def get_format(name: str) -> ModuleType:
    """The format module for a channel type or client format name."""
    try:
        return importlib.import_module(FORMAT_MODULES[name])
    except KeyError:
        raise ValueError(f"unknown format {name!r}") from None


# Characters of an upstream error message kept: it reaches clients, logs, the store and the
# proxy's memory of recent requests (once per attempt), and a proxy's error page can be megabytes.
# Clipped by the gateway after every configured key was masked (server.driver): a key cut at the
# clip would no longer be found, and its first part would get through.
MAX_ERROR_MESSAGE = 2000


def clip_message(message: str) -> str:
    return message if len(message) <= MAX_ERROR_MESSAGE else message[:MAX_ERROR_MESSAGE] + "…"


# Text shaped like a provider key (OpenAI's and Anthropic's sk-…, Google's AIza…, a bearer token):
# masked in every text of an upstream error a client gets back, beyond the configured keys, which
# the gateway masks exactly: an upstream may quote a key that is not configured, or part of one.
_KEY_SHAPED = re.compile(r"\b(?:sk-[A-Za-z0-9_*\-]{6,}|AIza[0-9A-Za-z_\-]{20,})|Bearer\s+\S+")


def mask_key_shaped(text: str) -> str:
    return _KEY_SHAPED.sub("[redacted]", text)


def status_message(status: int) -> str:
    """What a client is told of an upstream error whose body is not the provider's JSON error (an
    HTML page from a proxy in front of it, say): its status only, as the body may name internal
    hosts and addresses."""
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "Overloaded" if status == 529 else "error"  # 529: Anthropic's own
    return f"Upstream error: HTTP {status} {phrase}."


def header(headers: Mapping[str, str], name: str) -> str | None:
    """A header by its lower-case name, from a mapping that may not be case-insensitive."""
    v = headers.get(name)
    if v is None:
        for k, val in headers.items():
            if k.lower() == name:
                return val
    return v


def retry_after(headers: Mapping[str, str]) -> float | None:
    """An upstream error's Retry-After (or retry-after-ms) in seconds: a number, or an HTTP date
    measured against the response's own Date header (formats never read a clock)."""
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        v = header(headers, name)
        if v is None:
            continue
        try:
            d = float(v) * scale
        except ValueError:
            if name == "retry-after-ms":
                continue
            # An HTTP date: measured against the response's own Date header, since this module
            # never reads a clock.
            date = header(headers, "date")
            if date is None:
                return None
            try:
                d = (parsedate_to_datetime(v) - parsedate_to_datetime(date)).total_seconds()
            except (TypeError, ValueError):
                return None
        if math.isfinite(d):
            return max(0.0, d)
    return None
