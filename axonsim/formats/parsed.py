"""A client request that passed its format's checks: what the gateway reads before routing, and the unified Request built on first use.

Why not the Request at once: building it (pydantic-core making a model per message, part and
sampling block) is most of what parsing a small chat request costs — about 7 µs of the 11 µs, and
an eighth of what AxonSim added to each proxied request (callgrind: 51k of 381k instructions). A
request whose channel speaks the client's format and takes the client's model name is forwarded as
the client's own bytes (server/driver.py), and a non-stream answer comes back verbatim; a stream's
renderer reads only what Parsed holds. Nothing reads the Request then.
So a format whose parser maps the body into a plain dict tree first (OpenAI Chat) hands back that
tree here, with the few facts routing and a stream's renderer need, and the Request is validated
from it when something asks — a channel of another format or model, a capability check.

That is safe because the format's own checks are the validation: every field is checked while the
tree is built, so the client learns which field is wrong. Building the Request from a checked tree
is expected never to fail (tests/test_parsed.py holds that against generated bodies); if it ever
does, `request()` raises the same FormatError (400, naming the field) as an eager parse would.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from axonsim.formats import FormatError
from axonsim.unified import Request


class Parsed:
    """`model`, `stream`, `include_usage`, `max_tokens` (None: the client set none) and `tools`
    (whether it declared any) as the client's request says — what routing reads, and what a
    stream's renderer reads in every format but OpenAI Responses; `request()` is the unified Request."""

    __slots__ = ("model", "stream", "include_usage", "max_tokens", "tools", "wire", "_fields", "_req")

    def __init__(self, model: str, stream: bool, include_usage: bool, max_tokens: int | None, tools: bool,
                 fields: dict[str, Any] | None = None, req: Request | None = None,
                 wire: dict[str, Any] | None = None) -> None:
        self.model = model
        self.stream = stream
        self.include_usage = include_usage
        self.max_tokens = max_tokens
        self.tools = tools
        # The request object as decoded from the client's bytes, for a format that forwards those
        # bytes with something added (OpenAI Chat streams: stream_options), so that it need not
        # decode them again. None for the others.
        self.wire = wire
        self._fields = fields  # the checked dict tree shaped like Request, until it is validated
        self._req = req

    @staticmethod
    def of(req: Request) -> Parsed:
        """A Request already built (formats whose parser builds the unified objects as it goes)."""
        return Parsed(req.model, req.stream, req.include_usage, req.sampling.max_tokens, bool(req.tools), None, req)

    def request(self) -> Request:
        req = self._req
        if req is None:
            fields = self._fields
            assert fields is not None
            try:
                # The model's validator itself: Request.model_validate adds only a Python frame around it.
                req = Request.__pydantic_validator__.validate_python(fields)
            except ValidationError as e:  # a safety net: the format's checks should have caught it first
                raise _invalid(e) from None
            self._req = req
            self._fields = None
        return req


def _invalid(e: ValidationError) -> FormatError:
    errors = e.errors()
    if not errors:
        return FormatError("Invalid request: invalid value.", None)
    loc = errors[0]["loc"]
    param = "".join(f"[{x}]" if isinstance(x, int) else f".{x}" for x in loc).lstrip(".") or None
    return FormatError(f"Invalid request: {errors[0]['msg']}.", param)
