"""Plain records the proxy hands to the store: one RequestRecord per client request, one AttemptRow per upstream call.

They are dataclasses on purpose: building one on the hot path costs a few attribute stores, with no
validation and no database type in sight. The store owns a record once it is submitted; the caller
must not change it afterwards.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from server.ids import new_request_id

if TYPE_CHECKING:
    from axonsim.execution import AttemptRecord

RequestOutcome = Literal["completed", "failed", "cancelled"]
OUTCOMES: tuple[str, ...] = ("completed", "failed", "cancelled")

# The status recorded for a request whose client went away: nginx's "client closed request".
STATUS_CLIENT_CLOSED = 499


@dataclass(slots=True)
class AttemptRow:
    """One upstream call. `decision` is the core's view of it (AttemptRecord.as_dict(), plus whatever
    the strategy reports), kept as JSON so the admin API can show why the request went where it went."""

    n: int
    channel: str
    upstream_model: str
    status: int
    key_name: str | None = None
    error: str | None = None
    error_kind: str | None = None
    latency: float | None = None  # seconds, from send to the end of the answer (or the failure)
    ttft: float | None = None  # seconds to the first byte/event
    cost: float | None = None
    decision: dict[str, Any] | None = None

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


@dataclass(slots=True)
class RequestRecord:
    """One client request, whatever became of it: exactly one is stored per client request."""

    project: str
    model: str  # what the client asked for
    client_format: str  # inbound API family: openai_chat, openai_responses, anthropic, gemini
    status: int  # the HTTP status the client got (STATUS_CLIENT_CLOSED when it went away)
    outcome: RequestOutcome
    id: str = field(default_factory=new_request_id)
    created_at: float = field(default_factory=time.time)  # unix seconds when the request arrived
    key_name: str | None = None  # the gateway key's name, never the key
    stream: bool = False
    error: str | None = None
    latency: float | None = None  # seconds, arrival to last byte
    ttft: float | None = None  # seconds, arrival to first byte sent to the client
    overhead: float | None = None  # seconds the gateway itself spent (latency minus upstream wait)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    reasoning_tokens: int = 0
    cost: float | None = None  # None: unpriced model; summed over attempts by the proxy
    trace_id: str | None = None
    thread_id: str | None = None
    channel: str | None = None  # the channel that gave the final answer
    request_body: str | bytes | None = None  # only kept when store.store_bodies is on
    response_body: str | bytes | None = None
    attempts: list[AttemptRow] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for k in ("request_body", "response_body"):
            if isinstance(d[k], bytes):
                d[k] = d[k].decode("utf-8", "replace")
        return d
