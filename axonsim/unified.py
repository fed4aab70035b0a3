"""The unified model: one request/response/stream-event/usage/error vocabulary every wire format maps onto.

Rules of this module:
- It is a superset of what the four API families can say, not a copy of any one of them. A format
  that cannot carry a field drops it and says so in docs/mapping.md ("lossy").
- Provider-specific data that must survive a same-family round trip (signatures, cache_control,
  unknown body fields) travels in explicit fields (`signature`, `cache_control`, `extra_body`),
  never in hidden globals.
- Stream events are small and flat: a format renders each one as it arrives (never buffered whole).
"""

from __future__ import annotations

from enum import Enum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


# --------------------------------------------------------------------------------------------------
# Content parts


class TextPart(_Model):
    type: Literal["text"] = "text"
    text: str
    cache_control: dict[str, Any] | None = None


class ImagePart(_Model):
    """An image either by URL (https) or inline (base64 `data` + `media_type`)."""

    type: Literal["image"] = "image"
    url: str | None = None
    media_type: str | None = None
    data: str | None = None  # base64, without the data: prefix
    detail: str | None = None
    cache_control: dict[str, Any] | None = None


class ReasoningPart(_Model):
    """Model reasoning ("thinking"). `signature` lets Anthropic/Gemini verify replayed thoughts;
    `redacted` carries Anthropic's opaque redacted_thinking data in `data`."""

    type: Literal["reasoning"] = "reasoning"
    text: str = ""
    signature: str | None = None
    # Which family issued `signature` (anthropic / gemini / openai_responses): a signature is only
    # replayed to the family that can verify it; elsewhere the reasoning travels as plain text.
    signature_provider: str | None = None
    redacted: bool = False
    data: str | None = None


class ToolCall(_Model):
    id: str
    name: str
    arguments: str = ""  # a JSON string, as OpenAI carries it; formats parse it when they need an object
    cache_control: dict[str, Any] | None = None  # Anthropic cache breakpoint on a replayed tool_use block


class ToolResultPart(_Model):
    type: Literal["tool_result"] = "tool_result"
    tool_call_id: str
    name: str | None = None  # OpenAI/Anthropic omit it; Gemini needs it (looked up from the call)
    content: list[TextPart | ImagePart] = Field(default_factory=list)
    is_error: bool = False
    cache_control: dict[str, Any] | None = None


Part = Annotated[TextPart | ImagePart | ReasoningPart | ToolResultPart, Field(discriminator="type")]


Role = Literal["system", "developer", "user", "assistant", "tool"]


class Message(_Model):
    role: Role
    content: list[Part] = Field(default_factory=list)
    tool_calls: list[ToolCall] = Field(default_factory=list)
    name: str | None = None
    refusal: str | None = None

    def text(self) -> str:
        return "".join(p.text for p in self.content if isinstance(p, TextPart))


# --------------------------------------------------------------------------------------------------
# Request


class Tool(_Model):
    """A function tool. Provider-native tools (Anthropic server tools, Gemini search) are kept
    verbatim in `native` with `provider` naming the only family that can run them."""

    type: Literal["function", "native"] = "function"
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None
    cache_control: dict[str, Any] | None = None
    provider: str | None = None
    native: dict[str, Any] | None = None


class ToolChoice(_Model):
    mode: Literal["auto", "none", "required", "function"] = "auto"
    name: str | None = None  # when mode == "function"
    disable_parallel: bool | None = None


class ResponseFormat(_Model):
    type: Literal["text", "json_object", "json_schema"] = "text"
    name: str | None = None
    json_schema: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None
    description: str | None = None


class Sampling(_Model):
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    max_tokens: int | None = None
    stop: list[str] | None = None
    seed: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    n: int | None = None


class Request(_Model):
    model: str
    messages: list[Message]
    tools: list[Tool] = Field(default_factory=list)
    tool_choice: ToolChoice | None = None
    response_format: ResponseFormat | None = None
    sampling: Sampling = Field(default_factory=Sampling)
    stream: bool = False
    include_usage: bool = True  # what the *client* asked for in its stream; upstream always asks
    reasoning_effort: str | None = None
    reasoning_budget: int | None = None
    metadata: dict[str, Any] | None = None
    user: str | None = None
    extra_body: dict[str, Any] = Field(default_factory=dict)  # unknown client fields, passed through
    # The client family that produced the request ("openai_chat" | "openai_responses" | "anthropic" |
    # "gemini"), set by every parse_request: `extra_body` speaks that family's dialect, so a
    # build_request passes it through only when `source` is its own family.
    source: str | None = None


# --------------------------------------------------------------------------------------------------
# Usage, response


class Usage(_Model):
    """Token counts in OpenAI's convention: prompt includes cached, completion includes reasoning."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    cached_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0
    # Of prompt_tokens, those a provider's own tools fed the model (Gemini's toolUsePromptTokenCount):
    # kept apart only so that a Gemini client is told them as Gemini counts them.
    tool_prompt_tokens: int = 0

    def finalised(self) -> Usage:
        if not self.total_tokens:
            self.total_tokens = self.prompt_tokens + self.completion_tokens
        return self

    def as_dict(self) -> dict[str, int]:
        """model_dump(), for the record every request leaves: the fields are plain ints and extras
        are forbidden, so the instance dict is the dump, copied without a run of the serializer."""
        return dict(self.__dict__)


FinishReason = Literal["stop", "length", "tool_calls", "content_filter", "error"]


class Response(_Model):
    id: str
    model: str
    created: int = 0
    message: Message
    finish_reason: FinishReason | None = "stop"
    usage: Usage | None = None
    # The upstream family's own finish value, "family:value" (e.g. "anthropic:pause_turn"): a renderer
    # of that family writes it back rather than mapping finish_reason, which cannot say everything.
    finish_native: str | None = None
    stop_sequence: str | None = None  # Anthropic: the stop sequence that ended the answer
    # Gemini's continuationToken of an answer cut short (finishReason CONTINUATION): a Gemini client
    # resumes the answer with it (its SDK does so by itself), which only a Gemini channel can serve.
    continuation: str | None = None


# --------------------------------------------------------------------------------------------------
# Stream events


class StreamStart(_Model):
    type: Literal["start"] = "start"
    id: str
    model: str
    created: int = 0
    usage: Usage | None = None  # Anthropic announces input tokens up front


# `item_id` on the deltas below: the upstream's own id of the output item the delta belongs to,
# where its family names items (OpenAI Responses: msg_…, rs_…, fc_…). A client of that family may
# send the items back by id, so its renderer writes these instead of ids of its own.


class TextDelta(_Model):
    """Answer text. `refusal`: the model's refusal, in its own words (Message.refusal): OpenAI's two
    APIs stream it apart from the text (`delta.refusal`, `response.refusal.delta`), and their SDKs'
    structured-output helpers report it instead of parsing it; other families show it as text."""

    type: Literal["text"] = "text"
    text: str
    item_id: str | None = None
    refusal: bool = False


class ReasoningDelta(_Model):
    type: Literal["reasoning"] = "reasoning"
    text: str = ""
    signature: str | None = None
    signature_provider: str | None = None
    redacted_data: str | None = None
    item_id: str | None = None


class ToolCallDelta(_Model):
    """`index` numbers tool calls in order of appearance; `id`/`name` come with the first fragment."""

    type: Literal["tool_call"] = "tool_call"
    index: int
    id: str | None = None
    name: str | None = None
    arguments: str = ""
    item_id: str | None = None


class FinishEvent(_Model):
    type: Literal["finish"] = "finish"
    reason: FinishReason
    finish_native: str | None = None  # as Response.finish_native
    stop_sequence: str | None = None
    continuation: str | None = None  # as Response.continuation


class UsageEvent(_Model):
    type: Literal["usage"] = "usage"
    usage: Usage


class ErrorEvent(_Model):
    """An upstream failure after the stream began: rendered as the client format's error event."""

    type: Literal["error"] = "error"
    error: Error


class NativeBlock(_Model):
    """A whole output block that only its family can say: a provider-run tool's call and result
    (Anthropic server_tool_use / web_search_tool_result, OpenAI Responses web_search_call, ...).
    `block` is the provider's JSON, complete; that family's renderer writes it back as it came, and
    other families drop it (lossy, docs/mapping.md) — they could not run the tool either."""

    type: Literal["native"] = "native"
    provider: str
    block: dict[str, Any]


StreamEvent = (StreamStart | TextDelta | ReasoningDelta | ToolCallDelta | FinishEvent | UsageEvent | ErrorEvent
               | NativeBlock)


# --------------------------------------------------------------------------------------------------
# Errors


class ErrorKind(str, Enum):  # noqa: UP042 (StrEnum would change str(kind) for every caller)
    """What went wrong, independent of wire format. The execution policy table is keyed on this."""

    INVALID_REQUEST = "invalid_request"  # 400/413/422: the client's fault, never retried
    AUTHENTICATION = "authentication"  # 401 (gateway key) or upstream key rejected
    PERMISSION = "permission"  # 403
    NOT_FOUND = "not_found"  # 404
    RATE_LIMITED = "rate_limited"  # 429
    OVERLOADED = "overloaded"  # 503 / 529
    SERVER_ERROR = "server_error"  # other 5xx
    TIMEOUT = "timeout"  # no (first) answer in time
    CONNECTION = "connection"  # refused, reset, cut mid-way
    UNAVAILABLE = "unavailable"  # the gateway has no channel able to serve


class Error(_Model):
    kind: ErrorKind
    status: int
    message: str
    retry_after: float | None = None
    param: str | None = None
    code: str | None = None
    # The family whose error vocabulary `code` is in, where it is not OpenAI's (None: OpenAI's, or
    # the gateway's own): a renderer passes on only a code its clients know.
    code_family: str | None = None
    # Anthropic's `error.details` of a refusal its SDK acts on (error_code "thread_unsupported_request":
    # send the whole conversation instead); only the Anthropic renderer writes it.
    details: dict[str, Any] | None = None


ErrorEvent.model_rebuild()


def error_kind_for_status(status: int) -> ErrorKind:
    """Classify an HTTP status from an upstream. 0 means no HTTP answer at all (connection failure)."""
    if status == 0:
        return ErrorKind.CONNECTION
    if status == 401:
        return ErrorKind.AUTHENTICATION
    if status == 403:
        return ErrorKind.PERMISSION
    if status == 404:
        return ErrorKind.NOT_FOUND
    if status == 408 or status == 504:
        return ErrorKind.TIMEOUT
    if status == 429:
        return ErrorKind.RATE_LIMITED
    if status in (503, 529):
        return ErrorKind.OVERLOADED
    if status >= 500:
        return ErrorKind.SERVER_ERROR
    return ErrorKind.INVALID_REQUEST


class StreamAggregator:
    """Folds stream events into a Response: the stream → aggregate equivalence used by tests and by
    drivers that need the final usage and text of a relayed stream."""

    def __init__(self) -> None:
        self.id = ""
        self.model = ""
        self.created = 0
        self.text: list[str] = []
        self.refusal: list[str] = []
        self.reasoning: list[str] = []
        self.signature: str | None = None
        self.signature_provider: str | None = None
        self.redacted: list[str] = []
        self.calls: dict[int, ToolCall] = {}
        self.finish: FinishReason | None = None
        self.finish_native: str | None = None
        self.stop_sequence: str | None = None
        self.continuation: str | None = None
        self.usage: Usage | None = None
        self.error: Error | None = None

    def add(self, ev: StreamEvent) -> None:
        if isinstance(ev, TextDelta):
            (self.refusal if ev.refusal else self.text).append(ev.text)
        elif isinstance(ev, ToolCallDelta):
            call = self.calls.get(ev.index)
            if call is None:
                call = self.calls[ev.index] = ToolCall(id=ev.id or "", name=ev.name or "", arguments="")
            else:
                if ev.id and not call.id:
                    call.id = ev.id
                if ev.name and not call.name:
                    call.name = ev.name
            call.arguments += ev.arguments
        elif isinstance(ev, ReasoningDelta):
            self.reasoning.append(ev.text)
            if ev.signature:
                self.signature = ev.signature
                self.signature_provider = ev.signature_provider
            if ev.redacted_data:
                self.redacted.append(ev.redacted_data)
        elif isinstance(ev, FinishEvent):
            self.finish = ev.reason
            self.finish_native, self.stop_sequence = ev.finish_native, ev.stop_sequence
            self.continuation = ev.continuation
        elif isinstance(ev, UsageEvent):
            self.usage = ev.usage
        elif isinstance(ev, StreamStart):
            self.id, self.model, self.created = ev.id, ev.model, ev.created
            if ev.usage is not None and self.usage is None:
                self.usage = ev.usage
        elif isinstance(ev, ErrorEvent):
            self.error = ev.error

    def response(self) -> Response:
        parts: list[Any] = []
        text = "".join(self.reasoning)
        if text or self.signature:
            parts.append(ReasoningPart(text=text, signature=self.signature,
                                       signature_provider=self.signature_provider))
        for data in self.redacted:
            parts.append(ReasoningPart(redacted=True, data=data))
        if self.text:
            parts.append(TextPart(text="".join(self.text)))
        msg = Message(role="assistant", content=parts, tool_calls=[self.calls[i] for i in sorted(self.calls)],
                      refusal="".join(self.refusal) or None)
        usage = self.usage.finalised() if self.usage else None
        return Response(id=self.id, model=self.model, created=self.created, message=msg,
                        finish_reason=self.finish, usage=usage, finish_native=self.finish_native,
                        stop_sequence=self.stop_sequence, continuation=self.continuation)
