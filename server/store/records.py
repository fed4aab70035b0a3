"""Plain records the proxy hands to the store: one RequestRecord per client request, one AttemptRow per upstream call.

Building one on the hot path costs a few attribute stores, with no validation and no database type
in sight. They are written out rather than dataclasses: this module is compiled (axonsim/native.py),
and a compiled class's own __init__ takes its arguments in C, where a dataclass's generated
__init__ runs interpreted — the two records of every request cost ~22k instructions that way,
about 3k this way, and the store's writer reads their fields directly. What a dataclass would have
given them, they have: keyword or positional construction in field order (__slots__), defaults,
equality by value, repr and as_dict. The store owns a record once it is submitted; the caller must
not change it afterwards.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Literal

from server.ids import new_request_id

if TYPE_CHECKING:
    from axonsim.execution import AttemptRecord

RequestOutcome = Literal["completed", "failed", "cancelled"]
OUTCOMES: tuple[str, ...] = ("completed", "failed", "cancelled")

# The status recorded for a request whose client went away: nginx's "client closed request".
STATUS_CLIENT_CLOSED = 499
# What execution did next after an attempt our side called off (a lost hedge, a client that left, a
# shutdown): not the channel's failure, in the metrics and the admin API's figures alike.
CALLED_OFF: tuple[str, ...] = ("cancelled", "hedge_lost")

MAX_STORED_BODY = 1 << 20  # bytes of a request/response body kept when store.store_bodies is on
# A body is handed to the store this much longer than it is kept, and cut to MAX_STORED_BODY only
# once scrubbed: a secret that straddles the cut (escaped, or spread over a stream's events) is
# still whole when the scrubber reads it, so no part of it survives the cut.
BODY_SCRUB_MARGIN = 1 << 16


class AttemptRow:
    """One upstream call. `decision` is the core's view of it (AttemptRecord.as_dict(), plus whatever
    the strategy reports), kept as JSON so the admin API can show why the request went where it went."""

    __slots__ = ("n", "channel", "upstream_model", "status", "key_name", "error", "error_kind", "latency", "ttft",
                 "cost", "decision")

    def __init__(self, n: int, channel: str, upstream_model: str, status: int, key_name: str | None = None,
                 error: str | None = None, error_kind: str | None = None, latency: float | None = None,
                 ttft: float | None = None, cost: float | None = None, decision: dict[str, Any] | None = None) -> None:
        self.n = n
        self.channel = channel
        self.upstream_model = upstream_model
        self.status = status
        self.key_name = key_name
        self.error = error
        self.error_kind = error_kind
        self.latency = latency  # seconds, from send to the end of the answer (or the failure)
        self.ttft = ttft  # seconds to the first byte/event
        self.cost = cost
        self.decision = decision

    @classmethod
    def from_core(cls, rec: AttemptRecord, *, latency: float | None = None, ttft: float | None = None,
                  error: str | None = None, cost: float | None = None,
                  decision: dict[str, Any] | None = None) -> AttemptRow:
        """Build from the execution core's AttemptRecord. For a stream the core's `end` is the first
        event (its commit point), so the driver should pass the real `latency` when it knows it."""
        d = rec.as_dict()
        if decision:
            d.update(decision)
        return cls(
            n=rec.n, channel=rec.channel, upstream_model=rec.upstream_model, status=rec.status,
            key_name=rec.key, error=error if error is not None else (rec.kind.value if rec.kind else None),
            error_kind=rec.kind.value if rec.kind else None,
            latency=latency if latency is not None else rec.end - rec.start, ttft=ttft, cost=cost, decision=d,
        )

    def as_dict(self) -> dict[str, Any]:
        return {"n": self.n, "channel": self.channel, "upstream_model": self.upstream_model, "status": self.status,
                "key_name": self.key_name, "error": self.error, "error_kind": self.error_kind,
                "latency": self.latency, "ttft": self.ttft, "cost": self.cost, "decision": self.decision}

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, AttemptRow):
            return NotImplemented
        return self.as_dict() == other.as_dict()

    def __repr__(self) -> str:
        return _repr(self, self.as_dict())


class RequestRecord:
    """One client request, whatever became of it: exactly one is stored per client request."""

    # In field order: the order of positional arguments, as a dataclass's would be.
    __slots__ = ("project", "model", "client_format", "status", "outcome", "id", "created_at", "key_name", "stream",
                 "error", "latency", "ttft", "overhead", "prompt_tokens", "completion_tokens", "cached_tokens",
                 "reasoning_tokens", "cost", "trace_id", "thread_id", "channel", "request_body", "response_body",
                 "attempts")

    def __init__(self, project: str, model: str, client_format: str, status: int, outcome: RequestOutcome,
                 id: str | None = None, created_at: float | None = None, key_name: str | None = None,  # noqa: A002
                 stream: bool = False, error: str | None = None, latency: float | None = None,
                 ttft: float | None = None, overhead: float | None = None, prompt_tokens: int = 0,
                 completion_tokens: int = 0, cached_tokens: int = 0, reasoning_tokens: int = 0,
                 cost: float | None = None, trace_id: str | None = None, thread_id: str | None = None,
                 channel: str | None = None, request_body: str | bytes | None = None,
                 response_body: str | bytes | None = None, attempts: list[AttemptRow] | None = None) -> None:
        self.project = project
        self.model = model  # what the client asked for
        self.client_format = client_format  # inbound API family: openai_chat, openai_responses, anthropic, gemini
        self.status = status  # the HTTP status the client got (STATUS_CLIENT_CLOSED when it went away)
        self.outcome = outcome
        self.id: str = id if id is not None else new_request_id()
        self.created_at: float = created_at if created_at is not None else time.time()  # unix s of the arrival
        self.key_name = key_name  # the gateway key's name, never the key
        self.stream = stream
        self.error = error
        self.latency = latency  # seconds, arrival to last byte
        self.ttft = ttft  # seconds, arrival to first byte sent to the client
        self.overhead = overhead  # seconds the gateway itself spent (latency minus upstream wait)
        self.prompt_tokens = prompt_tokens
        self.completion_tokens = completion_tokens
        self.cached_tokens = cached_tokens
        self.reasoning_tokens = reasoning_tokens
        self.cost = cost  # None: unpriced model; summed over attempts by the proxy
        self.trace_id = trace_id
        self.thread_id = thread_id
        self.channel = channel  # the channel that gave the final answer
        self.request_body = request_body  # only kept when store.store_bodies is on
        self.response_body = response_body
        self.attempts: list[AttemptRow] = attempts if attempts is not None else []

    def fields(self) -> dict[str, Any]:
        """Every field, attempts as AttemptRows."""
        return {"project": self.project, "model": self.model, "client_format": self.client_format,
                "status": self.status, "outcome": self.outcome, "id": self.id, "created_at": self.created_at,
                "key_name": self.key_name, "stream": self.stream, "error": self.error, "latency": self.latency,
                "ttft": self.ttft, "overhead": self.overhead, "prompt_tokens": self.prompt_tokens,
                "completion_tokens": self.completion_tokens, "cached_tokens": self.cached_tokens,
                "reasoning_tokens": self.reasoning_tokens, "cost": self.cost, "trace_id": self.trace_id,
                "thread_id": self.thread_id, "channel": self.channel, "request_body": self.request_body,
                "response_body": self.response_body, "attempts": self.attempts}

    def as_dict(self) -> dict[str, Any]:
        """Plain data: attempts as dicts, bodies as text."""
        d = self.fields()
        d["attempts"] = [a.as_dict() for a in self.attempts]
        for k in ("request_body", "response_body"):
            v = d[k]
            if isinstance(v, bytes):
                d[k] = v.decode("utf-8", "replace")
        return d

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, RequestRecord):
            return NotImplemented
        return self.fields() == other.fields()

    def __repr__(self) -> str:
        return _repr(self, self.fields())


def _repr(obj: object, fields: dict[str, Any]) -> str:
    return f"{type(obj).__name__}({', '.join(f'{k}={v!r}' for k, v in fields.items())})"
