"""The admin API (`/admin/...`): request and attempt logs, usage and cost, channel and key state and switches, config reload.

Mounted by the proxy's FastAPI app with `app.include_router(admin_router(ctx))`. Everything here is
off the hot path; what matters is that it is safe and says clearly what is wrong.

Rules:
1. Auth is its own: `Authorization: Bearer <one of gateway.admin_keys>`. No key or an unknown one
   → 401; a valid *client* key (gateway.api_keys) → 403, so a client learns its key works but is not
   an admin key. Keys are compared by SHA-256 digest, as server.auth does for client keys. The keys
   are read from the current config on every call, so a reload can rotate them.
2. No secret leaves: every answer is serialised, then passed through the store's Scrubber holding
   every upstream key, client key and admin key of the current config (and the database password),
   whatever field it might hide in. Keys are shown by name only.
3. A bad filter is a 400 naming the parameter: `{"error": {"message", "param", "type"}}`. Unknown
   query parameters are refused too, because a misspelt filter silently ignored returns wrong data.
4. The Router is read through the context on every call, never kept: a reload swaps it.
5. Channel and key switches change the live Router's state (the channel's `enabled`, the key's
   `disabled`), exactly what the core's candidate selection reads at request time. A channel switch
   lasts until the next reload, which rebuilds state from the config file (the reload answer lists
   such channels under `channels_changed: {name: ["enabled"]}`); a key's disable is part of its
   channel's state, kept by a reload that leaves the channel unchanged. With state.url both are
   shared by every process and outlast reloads until switched back; the last switch wins.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from typing import Any, Protocol
from urllib.parse import unquote_to_bytes

import sqlalchemy.exc as sa_exc
from fastapi import APIRouter, Depends, Query, Request, Response, Security
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from fastapi.security import HTTPBearer
from pydantic import BaseModel, Field

from axonsim.config import Config, ConfigError
from axonsim.execution import Router
from axonsim.state import NEVER, ChannelState
from server.proxy import restart_only
from server.store import queries as Q
from server.store.engine import url_password
from server.store.scrub import Scrubber, secrets_from_config

# --------------------------------------------------------------------------------------------------
# The context the proxy provides


class AdminContextLike(Protocol):
    """What admin_router needs; AdminContext below is a ready-made one."""

    @property
    def router(self) -> Router: ...

    @property
    def store(self) -> Any: ...

    async def reload(self) -> Any: ...

    def now(self) -> float: ...


class AdminContext:
    """Getters rather than objects, so a reload's new Router (or store) is what the next call sees.

    router: returns the current Router.     store: returns the usage-log store, or None.
    reload: a coroutine function that re-reads the config and swaps the Router; None if unsupported.
    now:    the proxy's clock (Unix seconds).
    find:   optional; the proxy's in-memory record of a recent request by id (server.proxy.Proxy.find),
            used for requests the store has not written yet and for the decision trace it holds.
    switches_local: optional; why a channel or key switch would reach only this process (several
            workers without shared state), or None when it reaches every one that routes.
    shared_state: optional; returns the process's server.shared_state.SharedState, or None (no
            state.url): told of each operator switch, so the last one wins in every process.
    started_config: optional; returns the config the process started with (what a reload's
            restart_needed is measured against; without it, the config before the reload).
    """

    def __init__(self, router: Callable[[], Router], store: Callable[[], Any] | None = None,
                 reload: Callable[[], Awaitable[Any]] | None = None, now: Callable[[], float] = time.time,
                 find: Callable[[str], Mapping[str, Any] | None] | None = None,
                 switches_local: Callable[[], str | None] | None = None,
                 shared_state: Callable[[], Any] | None = None,
                 started_config: Callable[[], Config] | None = None) -> None:
        self._router = router
        self.started_config = started_config
        self._shared_state = shared_state
        self._store = store
        self._reload = reload
        self._now = now
        self.find = find
        self._switches_local = switches_local

    def shared(self) -> bool:
        """Channel state is shared with other processes (state.url)."""
        return self.shared_state is not None

    @property
    def shared_state(self) -> Any:
        return self._shared_state() if self._shared_state is not None else None

    def switches_local(self) -> str | None:
        return self._switches_local() if self._switches_local is not None else None

    @property
    def router(self) -> Router:
        return self._router()

    @property
    def store(self) -> Any:
        return self._store() if self._store is not None else None

    @property
    def can_reload(self) -> bool:
        return self._reload is not None

    async def reload(self) -> Any:
        if self._reload is None:
            raise NotImplementedError("this gateway cannot reload its configuration")
        return await self._reload()

    def now(self) -> float:
        return self._now()


# --------------------------------------------------------------------------------------------------
# Response models (what /docs shows)


class ErrorDetail(BaseModel):
    message: str
    param: str | None = Field(None, description="the query parameter or path segment at fault, if one is")
    type: str


class ErrorBody(BaseModel):
    error: ErrorDetail


class AttemptOut(BaseModel):
    n: int = Field(description="attempt number within its request, from 1")
    channel: str
    key_name: str | None = Field(None, description="the upstream key's name (never the key)")
    upstream_model: str
    status: int = Field(description="the upstream's HTTP status (0: no answer; 499: abandoned)")
    error: str | None = None
    error_kind: str | None = None
    latency: float | None = Field(None, description="seconds")
    ttft: float | None = Field(None, description="seconds")
    cost: float | None = None
    decision: dict[str, Any] | None = Field(None, description="the core's record of this attempt: what it did next, "
                                            "and the decision that chose the channel")


class AttemptItem(AttemptOut):
    request_id: str
    created_at: float = Field(description="the request's arrival, unix seconds")
    project: str
    model: str


class RequestOut(BaseModel):
    id: str
    created_at: float = Field(description="arrival, unix seconds")
    project: str | None
    key_name: str | None = Field(None, description="the gateway key's name (never the key)")
    client_format: str
    model: str | None
    stream: bool
    status: int = Field(description="the HTTP status the client got (499: the client went away)")
    outcome: str = Field(description="completed | failed | cancelled")
    error: str | None = None
    latency: float | None = None
    ttft: float | None = None
    overhead: float | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    reasoning_tokens: int = 0
    cost: float | None = None
    trace_id: str | None = None
    thread_id: str | None = None
    channel: str | None = Field(None, description="the channel that gave the final answer")


class RequestDetail(RequestOut):
    request_body: str | None = None
    response_body: str | None = None
    attempts: list[AttemptOut]
    decisions: list[dict[str, Any]] | None = Field(
        None, description="the routing decision trace (candidates, scores, the choice), when the gateway kept it")
    source: str = Field(description="store | recent (the proxy's in-memory log, not yet in the store)")


_NEXT_DOC = ("give it as `cursor` for the rows after this page's last one, however many were written since "
             "(null: this page is the last)")


class RequestPage(BaseModel):
    data: list[RequestOut]
    total: int = Field(description="requests matching the filters, ignoring limit/offset/cursor")
    limit: int
    offset: int
    next_cursor: str | None = Field(None, description=_NEXT_DOC)


class AttemptPage(BaseModel):
    data: list[AttemptItem]
    limit: int
    offset: int
    next_cursor: str | None = Field(None, description=_NEXT_DOC)


class UsageGroup(BaseModel):
    group: dict[str, Any]
    requests: int
    completed: int
    failed: int
    cancelled: int
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    reasoning_tokens: int
    cost: float
    unpriced: int = Field(description="requests without a price (their cost is not in `cost`)")


class UsageOut(BaseModel):
    group_by: list[str]
    since: float | None
    until: float | None
    data: list[UsageGroup]
    total: UsageGroup


class AttemptUsageGroup(BaseModel):
    group: dict[str, Any]
    attempts: int
    failures: int
    cost: float
    mean_latency: float | None
    mean_ttft: float | None


class AttemptUsageOut(BaseModel):
    group_by: list[str]
    since: float | None
    until: float | None
    data: list[AttemptUsageGroup]


class BreakerOut(BaseModel):
    state: str = Field(description="closed | open | half_open")
    consecutive_failures: int
    trips: int
    open_remaining: float


class KeyOut(BaseModel):
    name: str
    disabled: bool = Field(description="switched off (admin API, or rejected credentials) until enabled or reloaded")
    held: bool = Field(False, description="switched off by an operator (admin API): probes neither use nor lift it")
    disabled_remaining: float = Field(description="seconds of a temporary disable left (rate limit, overload)")
    available: bool = Field(description="may take an attempt now for some model the channel serves (limits and key breakers included)")
    uses: int
    breakers: dict[str, BreakerOut] = Field(default_factory=dict, description="the key's own breakers (health.key_breaker) in a key pool, by upstream model, as the channel's; a model appears once the key has an attempt's failure on it. Empty when key breakers are off or the channel has one key (the channel's per-model breakers judge it)")


class ChannelOut(BaseModel):
    name: str
    type: str
    models: list[str]
    weight: float
    priority: int
    enabled: bool
    available: bool = Field(description="may take an attempt now")
    unavailable_reason: str | None
    inflight: int
    requests: int
    failures: int
    consecutive_failures: int
    seconds_since_failure: float | None
    cooldown_remaining: float
    ejected_remaining: float
    auto_disabled_remaining: float | None = Field(
        description="seconds of an automatic disable left; null while disabled until the config changes")
    ewma_latency: float | None
    ewma_ttft: float | None
    ewma_tps: float | None
    breakers: dict[str, BreakerOut] = Field(description="per upstream model")
    keys: list[KeyOut]


class ChannelsOut(BaseModel):
    now: float
    channels: list[ChannelOut]


class ConfigChanges(BaseModel):
    channels_added: list[str]
    channels_removed: list[str]
    channels_changed: dict[str, list[str]] = Field(description="channel -> the fields that differ (names only)")
    routing: list[str] = Field(description="routing fields that differ")
    gateway: list[str] = Field(description="gateway fields that differ (api_keys, admin_keys, timeouts)")
    prices: list[str] = Field(description="models whose price was added, removed or changed")
    store: list[str] = Field(description="store fields that differ (most need a restart to apply)")
    state: list[str] = Field(default_factory=list,
                             description="shared-state (Redis) fields that differ (they need a restart to apply)")
    other: list[str]
    restart_needed: list[str] = Field(default_factory=list,
                                      description="fields that differ but apply only once the gateway restarts "
                                      "(store.*, state.*, gateway.shutdown_timeout)")


class ReloadOut(BaseModel):
    reloaded: bool
    changed: bool
    changes: ConfigChanges


class StoreOut(BaseModel):
    configured: bool
    submitted: int | None = None
    queued: int | None = None
    written: int | None = None
    dropped: int | None = None
    db_up: bool | None = None
    last_error: str | None = None


# --------------------------------------------------------------------------------------------------
# Errors and helpers


class AdminError(Exception):
    """Answered as `{"error": {...}}` with `status` by the admin routes' handler."""

    def __init__(self, status: int, message: str, param: str | None = None, type_: str | None = None,
                 code: str | None = None, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.type = type_ or _ERROR_TYPES.get(status, "error")
        self.code = code  # as the gateway's other errors say it (server.api: "method_not_allowed")
        self.headers = headers


def query_params(request: Request, allowed: Sequence[str]) -> dict[str, str]:
    """The request's query parameters; AdminError 400 for one the endpoint does not take, one given
    twice, or one whose percent-encoded bytes are not UTF-8. Every admin endpoint refuses those alike.

    Read from the raw query string: Starlette's parameters turn bytes that are not UTF-8 into U+FFFD,
    so `project=%FF` was a filter that quietly matched nothing."""
    given: dict[str, list[bytes]] = {}
    for part in request.scope.get("query_string", b"").split(b"&"):
        if not part:
            continue
        raw_name, _, raw_value = part.partition(b"=")
        try:
            k = _query_text(raw_name).decode()
        except UnicodeDecodeError:
            raise AdminError(400, "a query parameter's name is not UTF-8 text") from None
        if k not in allowed:
            takes = f"this endpoint takes: {', '.join(allowed)}" if allowed else "this endpoint takes none"
            raise AdminError(400, f"unknown parameter {k!r}; {takes}", k)
        given.setdefault(k, []).append(raw_value)
    values: dict[str, str] = {}
    for k, got in given.items():
        if len(got) > 1:
            raise AdminError(400, f"{k} is given {len(got)} times; give it once", k)
        try:
            values[k] = _query_text(got[0]).decode()
        except UnicodeDecodeError:
            raise AdminError(400, f"{k} is not UTF-8 text (its percent-encoded bytes)", k) from None
    return values


def _query_text(raw: bytes) -> bytes:
    """A query string's name or value as bytes: `+` is a space, %XX a byte (urllib's parse_qsl
    decodes to text first, so it cannot tell bytes that are not UTF-8)."""
    return unquote_to_bytes(raw.replace(b"+", b" "))


def _no_params(request: Request) -> None:
    """A dependency of the endpoints that take no query parameters: one given is refused, never
    ignored (`POST /admin/reload?dry_run=1` must not reload)."""
    query_params(request, ())


NO_PARAMS = [Depends(_no_params)]  # the `dependencies` of every endpoint without query parameters


def _validation_error(exc: RequestValidationError) -> AdminError:
    """The first of FastAPI's validation errors as our 400, naming the parameter (or body field)."""
    errors = exc.errors()
    first: Mapping[str, Any] = errors[0] if errors else {}
    loc = [str(x) for x in first.get("loc", ()) if x not in ("query", "path", "body", "header")]
    param = ".".join(loc) or None
    msg = str(first.get("msg", "invalid value"))
    return AdminError(400, f"{param}: {msg}" if param else msg, param)


_ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                404: "not_found_error", 409: "conflict", 500: "server_error", 501: "not_supported", 503: "unavailable"}

_ERRORS: dict[int | str, dict[str, Any]] = {  # every admin endpoint's
    400: {"model": ErrorBody, "description": "A query parameter the endpoint does not take, or one given twice; "
                                             "`error.param` names it"},
    401: {"model": ErrorBody, "description": "No admin key, or an unknown one"},
    403: {"model": ErrorBody, "description": "A gateway client key, which is not an admin key"},
    # Also what keeps FastAPI from documenting its 422, which the admin API never sends (AdminRoute
    # answers a parameter FastAPI refuses with a 400 naming it).
    "4XX": {"model": ErrorBody, "description": "Any client error, in this shape"},
}
BAD_PARAM: dict[int | str, dict[str, Any]] = {400: {"model": ErrorBody, "description": "A bad parameter; `error.param` names it"}}
_STORE_DOWN: dict[int | str, dict[str, Any]] = {503: {"model": ErrorBody, "description": "No store is configured, or its database is unavailable"}}
NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"model": ErrorBody, "description": "No such request, channel or key"}}
_SWITCH: dict[int | str, dict[str, Any]] = {
    **NOT_FOUND, 409: {"model": ErrorBody, "description": "Several workers without shared state (state.url): the "
                       "switch would reach only the worker that answered, so none is made"}}

# Query parameters each listing accepts (anything else is refused, naming it).
LIST_PARAMS = ("since", "until", "project", "model", "channel", "status", "outcome", "key_name", "trace_id",
               "thread_id", "limit", "offset", "cursor")
USAGE_PARAMS = ("since", "until", "project", "model", "channel", "status", "outcome", "key_name", "group_by")

_TIME_DOC = "unix seconds or ISO 8601 (UTC unless it says otherwise)"


def _list_params(
    since: str | None = Query(None, description=f"from this time, inclusive: {_TIME_DOC}"),
    until: str | None = Query(None, description=f"to this time, exclusive: {_TIME_DOC}"),
    project: str | None = Query(None, description="the gateway key's project"),
    model: str | None = Query(None, description="the model the client asked for"),
    channel: str | None = Query(None, description="requests: any attempt on this channel; attempts: this channel"),
    status: str | None = Query(None, description="requests: the client's HTTP status; attempts: the upstream's"),
    outcome: str | None = Query(None, description="completed | failed | cancelled"),
    key_name: str | None = Query(None, description="requests: the gateway key's name; attempts: the upstream key's"),
    trace_id: str | None = Query(None),
    thread_id: str | None = Query(None),
    limit: str | None = Query(None, description=f"at most {Q.MAX_LIMIT}; default 100"),
    offset: str | None = Query(None, description="rows to skip, newest first (rows written meanwhile shift them: "
                               "page with cursor instead)"),
    cursor: str | None = Query(None, description="a page's next_cursor: the rows after that page's last one. A "
                               "request is listed once it has ended, at the time it arrived: one that ends while you "
                               "page may land among rows already read (bound `until` to before it began)"),
) -> None:
    """Declares the listing filters for the OpenAPI document; values are parsed by the handler so a
    bad one becomes our 400 naming it, not FastAPI's 422."""


def _usage_params(
    since: str | None = Query(None, description=f"from this time, inclusive: {_TIME_DOC}"),
    until: str | None = Query(None, description=f"to this time, exclusive: {_TIME_DOC}"),
    project: str | None = Query(None),
    model: str | None = Query(None, description="the model the client asked for"),
    channel: str | None = Query(None, description="the channel that answered (attempt usage: the attempt's)"),
    status: str | None = Query(None),
    outcome: str | None = Query(None, description="completed | failed | cancelled"),
    key_name: str | None = Query(None),
    group_by: str | None = Query(None, description="comma-separated; /usage: project, model, channel, day, key_name, "
                                 "client_format (default project); /usage/attempts: channel, key_name, "
                                 "upstream_model, error_kind, project, model, day (default channel)"),
) -> None:
    """Declares the usage filters for the OpenAPI document (parsed by the handler, as above)."""


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def _bearer(request: Request) -> str | None:
    value = request.headers.get("authorization")
    if not value:
        return None
    scheme, _, token = value.partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


def _remaining(until: float, now: float) -> float:
    return max(0.0, until - now)


def channel_view(st: ChannelState, now: float) -> ChannelOut:
    """One channel's live state for the admin API: key names only, never a key."""
    snap = st.snapshot(now)
    ch = st.channel
    auto = None if st.disabled_until == float("inf") else _remaining(st.disabled_until, now)
    keys = [KeyOut(name=k.name, disabled=k.disabled, held=k.held, disabled_remaining=_remaining(k.disabled_until, now),
                   available=st.key_available(i, now), uses=k.uses,
                   breakers={m: BreakerOut(**b.snapshot(now)) for m, b in k.breakers.items()})
            for i, k in enumerate(st.keys)]
    breakers: Mapping[str, Mapping[str, Any]] = snap["breakers"]  # type: ignore[assignment]
    return ChannelOut(
        name=st.name, type=ch.type, models=[*ch.models, *ch.model_mapping], weight=st.weight, priority=st.priority,
        enabled=ch.enabled, available=bool(snap["available"]), unavailable_reason=snap["unavailable_reason"],  # type: ignore[arg-type]
        inflight=st.inflight, requests=st.requests, failures=st.failures,
        consecutive_failures=st.consecutive_failures, seconds_since_failure=snap["seconds_since_failure"],  # type: ignore[arg-type]
        cooldown_remaining=_remaining(st.cooldown_until, now), ejected_remaining=_remaining(st.ejection.until, now),
        auto_disabled_remaining=auto, ewma_latency=st.ewma_latency, ewma_ttft=st.ewma_ttft, ewma_tps=st.ewma_tps,
        breakers={m: BreakerOut(**b) for m, b in breakers.items()}, keys=keys,
    )


def _fields_differ(a: BaseModel | None, b: BaseModel | None) -> list[str]:
    if a is None or b is None:
        return [] if a is b else ["(all)"]
    da, db = a.model_dump(), b.model_dump()
    return [k for k in db if da.get(k) != db.get(k)]


def config_changes(old: Config, new: Config, started: Config | None = None) -> ConfigChanges:
    """What differs between two configs, by name only (never a value: values may be secrets).
    `started`: the config the process started with, which restart_needed is measured against."""
    oc = {c.name: c for c in old.channels}
    nc = {c.name: c for c in new.channels}
    changed = {}
    for name, ch in nc.items():
        if name in oc:
            fields = _fields_differ(oc[name], ch)
            if fields:
                changed[name] = fields
    prices = sorted(m for m in {*old.prices, *new.prices} if old.prices.get(m) != new.prices.get(m))
    other = [k for k in ("workload", "seed") if getattr(old, k) != getattr(new, k)]
    return ConfigChanges(
        channels_added=[n for n in nc if n not in oc], channels_removed=[n for n in oc if n not in nc],
        channels_changed=changed, routing=_fields_differ(old.routing, new.routing),
        gateway=_fields_differ(old.gateway, new.gateway), prices=prices, store=_fields_differ(old.store, new.store),
        state=_fields_differ(old.state, new.state), other=other, restart_needed=restart_only(started if started is not None else old, new),
    )


def _request_out(r: Q.RequestRecord) -> dict[str, Any]:
    d = r.as_dict()
    for k in ("attempts", "request_body", "response_body"):
        d.pop(k, None)
    return d


def _attempt_out(a: Q.AttemptRow) -> AttemptOut:
    return AttemptOut(n=a.n, channel=a.channel, key_name=a.key_name, upstream_model=a.upstream_model, status=a.status,
                      error=a.error, error_kind=a.error_kind, latency=a.latency, ttft=a.ttft, cost=a.cost,
                      decision=a.decision)


def _core_attempt_out(a: Mapping[str, Any]) -> AttemptOut:
    """An attempt as the core recorded it (AttemptRecord.as_dict()), for a proxy without a store."""
    start, end = a.get("start"), a.get("stream_end") or a.get("end")
    return AttemptOut(
        n=a.get("attempt", 0), channel=a.get("channel", ""), key_name=a.get("key"),
        upstream_model=a.get("upstream_model", ""), status=a.get("status", 0), error=a.get("error"),
        error_kind=a.get("error"), latency=(end - start) if start is not None and end is not None else None,
        decision=dict(a))


def _from_recent(rec: Mapping[str, Any]) -> RequestDetail:
    """The proxy's in-memory record (server.proxy docstring) in the admin API's shape."""
    usage = rec.get("usage") or {}
    rows = rec.get("attempt_rows")
    # As the store will have them (error messages, costs, TTFTs, the decision kept); a proxy without
    # a store has only the core's view of each attempt.
    if rows is not None:
        attempts = [_attempt_out(a) for a in rows]
    else:
        attempts = [_core_attempt_out(a) for a in rec.get("attempts") or ()]
    return RequestDetail(
        id=rec["id"], created_at=rec.get("created_at", 0.0), project=rec.get("project"), key_name=rec.get("key_name"),
        client_format=rec.get("client_format", ""), model=rec.get("model"), stream=bool(rec.get("stream")),
        status=rec.get("status", 0), outcome=rec.get("outcome", ""), error=rec.get("error"),
        latency=rec.get("latency"), ttft=rec.get("ttft"), overhead=rec.get("overhead"),
        prompt_tokens=usage.get("prompt_tokens", 0), completion_tokens=usage.get("completion_tokens", 0),
        cached_tokens=usage.get("cached_tokens", 0), reasoning_tokens=usage.get("reasoning_tokens", 0),
        cost=rec.get("cost"), trace_id=rec.get("trace_id"), thread_id=rec.get("thread_id"), channel=rec.get("channel"),
        attempts=attempts, decisions=rec.get("decisions"), source="recent")


# --------------------------------------------------------------------------------------------------
# The admin state shared by the routes


class _Admin:
    def __init__(self, ctx: AdminContextLike) -> None:
        self.ctx = ctx
        self._for: Config | None = None  # the config the cached digests and scrubber were built from
        self._admin: frozenset[bytes] = frozenset()
        self._clients: frozenset[bytes] = frozenset()
        self._scrubber = Scrubber()
        self._reload_lock = asyncio.Lock()

    def _refresh(self) -> None:
        config = self.ctx.router.config
        if config is self._for:
            return
        self._admin = frozenset(_digest(k) for k in config.gateway.admin_keys)
        self._clients = frozenset(_digest(k.key) for k in config.gateway.api_keys)
        self._scrubber = Scrubber(self._secrets(config))
        self._for = config

    @staticmethod
    def _secrets(config: Config) -> list[str]:
        out = [*secrets_from_config(config), *config.gateway.admin_keys]
        pw = url_password(config.store.url) if config.store.url else None
        return [*out, pw] if pw else out

    # -- answers -----------------------------------------------------------------------------------

    def reply(self, body: BaseModel | Mapping[str, Any], status: int = 200,
              headers: Mapping[str, str] | None = None, extra_secrets: Sequence[str] = ()) -> JSONResponse:
        self._refresh()  # the config may have changed since the call was authorised (reload)
        data = body.model_dump(mode="json") if isinstance(body, BaseModel) else dict(body)
        scrub = Scrubber([*self._secrets_now(), *extra_secrets]) if extra_secrets else self._scrubber
        # Scrubber.json also turns inf/NaN into null: JSON has neither.
        return JSONResponse(scrub.json(data), status_code=status, headers=dict(headers) if headers else None)

    def _secrets_now(self) -> list[str]:
        return self._secrets(self._for) if self._for is not None else []

    def error(self, exc: AdminError) -> JSONResponse:
        headers = {"WWW-Authenticate": 'Bearer realm="axonsim-admin"'} if exc.status == 401 else exc.headers
        err: dict[str, Any] = {"message": exc.message, "param": exc.param, "type": exc.type}
        if exc.code is not None:
            err["code"] = exc.code
        return self.reply({"error": err}, exc.status, headers)

    # -- auth --------------------------------------------------------------------------------------

    def authorize(self, request: Request) -> AdminError | None:
        self._refresh()
        token = _bearer(request)
        if token is None:
            return AdminError(401, "missing admin key: send it as 'Authorization: Bearer KEY'")
        d = _digest(token)
        if d in self._admin:
            return None
        if d in self._clients:
            return AdminError(403, "this is a gateway client key; the admin API needs an admin key "
                              "(gateway.admin_keys)")
        if not self._admin:
            return AdminError(401, "the admin API is closed: no gateway.admin_keys are configured")
        return AdminError(401, "invalid admin key")

    # -- the store ---------------------------------------------------------------------------------

    def engine(self) -> Any:
        store = self.ctx.store
        if store is None:
            raise AdminError(503, "no usage-log store is configured")
        try:
            return store.engine
        except RuntimeError:
            raise AdminError(503, "the usage-log store is not started") from None

    @staticmethod
    def filter(request: Request, allowed: Sequence[str], extra: Sequence[str] = ()) -> Q.Filter:
        values = {k: v for k, v in query_params(request, allowed).items() if k not in extra}
        try:
            return Q.Filter.from_params(values)
        except Q.QueryError as exc:
            raise AdminError(400, str(exc), exc.param) from None


# Seconds an admin read may take. A database that holds a pooled connection open and answers
# nothing (stalled, or a network path that drops packets) would otherwise keep the call waiting
# for as long as TCP keeps the connection: a review saw one wait past five minutes. Wide enough for
# a usage report over a large table; the store's writer bounds its own work the same way.
QUERY_TIMEOUT = 30.0


def _action_path(path: str, channels: Mapping[str, Any]) -> bool:
    """Whether `path` (what follows /admin/channels/) is a POST-only action of a channel that exists:
    C/enable, C/disable, C/test, C/keys/K/enable, C/keys/K/disable."""
    for action in ("/enable", "/disable", "/test"):
        if path.endswith(action):
            head = path[:-len(action)]
            if head in channels:
                return True
            if action != "/test":
                i = head.find("/keys/")
                while i != -1:  # a channel's name may hold "/keys/" itself: every split is tried
                    if head[:i] in channels:
                        return True
                    i = head.find("/keys/", i + 1)
    return False


def _stored_decisions(attempts: Sequence[Any]) -> list[dict[str, Any]] | None:
    """The decision trace as the database keeps it: each attempt's `decision.choice` (the pick that
    sent it), in order, one entry per pick (attempts of one pick, a retry on the same channel, share
    it). None when the request was not explained. (The caller prefers the trace this process may
    still hold in memory, which also has the picks that sent no attempt.)"""
    out: list[dict[str, Any]] = []
    for a in attempts:
        choice = a.decision.get("choice") if isinstance(a.decision, dict) else None
        if isinstance(choice, dict) and (not out or out[-1] != choice):
            out.append(choice)
    return out or None


async def _query(coro: Awaitable[Any]) -> Any:
    try:
        async with asyncio.timeout(QUERY_TIMEOUT):
            return await coro
    except Q.QueryError as exc:
        raise AdminError(400, str(exc), exc.param) from None
    except (sa_exc.SQLAlchemyError, OSError, TimeoutError) as exc:
        raise AdminError(503, f"the store database is unavailable ({type(exc).__name__})") from None


def _group_by(request: Request, default: str, table: Mapping[str, Any]) -> list[str]:
    raw = request.query_params.get("group_by") or default
    by = [b.strip() for b in raw.split(",") if b.strip()]
    bad = [b for b in by if b not in table]
    if not by or bad:
        what = repr(bad[0]) if bad else "nothing"
        raise AdminError(400, f"group_by: unknown {what}; choose from {', '.join(table)}", "group_by")
    return list(dict.fromkeys(by))


# --------------------------------------------------------------------------------------------------
# The router


def admin_router(ctx: AdminContextLike) -> APIRouter:
    """The `/admin` routes, for the proxy's FastAPI app: `app.include_router(admin_router(ctx))`."""
    admin = _Admin(ctx)

    class AdminRoute(APIRoute):
        """Checks the admin key before anything else runs, and answers AdminError in our shape
        whatever exception handlers the hosting app has."""

        def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
            handler = super().get_route_handler()

            async def guarded(request: Request) -> Response:
                denied = admin.authorize(request)
                if denied is not None:
                    return admin.error(denied)
                try:
                    return await handler(request)
                except AdminError as exc:
                    return admin.error(exc)
                except RequestValidationError as exc:
                    # A parameter FastAPI validates (e.g. a channel test's timeout): our 400 naming
                    # it, like every other bad admin parameter, not FastAPI's 422 in its own shape.
                    return admin.error(_validation_error(exc))

            return guarded

    router = APIRouter(
        prefix="/admin", tags=["admin"], route_class=AdminRoute, responses=_ERRORS,
        # Declares bearer auth in the OpenAPI document; AdminRoute does the checking.
        dependencies=[Security(HTTPBearer(auto_error=False, description="an admin key (gateway.admin_keys)"))],
    )

    def state(name: str) -> ChannelState:
        st = ctx.router.by_name.get(name)
        if st is None:
            raise AdminError(404, f"no channel named {name!r}", "name")
        return st

    def fleet_switch(st: ChannelState, fields: list[str], on: bool) -> None:
        """With state.url: tell the sync when the operator switched, so the last switch wins in every
        process (an enable also lifts the switches and holds others have, seen here yet or not)."""
        shared = getattr(ctx, "shared_state", None)
        if shared is not None:
            (shared.operator_enable if on else shared.operator_disable)(st, fields)

    def switchable(name: str) -> ChannelState:
        """The channel to switch; 409 if the switch would reach only the worker that answers."""
        st = state(name)
        why = getattr(ctx, "switches_local", lambda: None)()
        if why:
            raise AdminError(409, why)
        return st

    # -- logs --------------------------------------------------------------------------------------

    @router.get("/requests", response_model=RequestPage, responses={**BAD_PARAM, **_STORE_DOWN},
                dependencies=[Depends(_list_params)], summary="List client requests, newest first, with filters")
    async def list_requests(request: Request) -> Response:
        f = admin.filter(request, LIST_PARAMS)
        engine = admin.engine()
        rows = await _query(Q.list_requests(engine, f))
        total = await _query(Q.count_requests(engine, f))
        last = rows[-1] if len(rows) == f.limit else None
        return admin.reply({"data": [_request_out(r) for r in rows], "total": total, "limit": f.limit,
                            "offset": f.offset,
                            "next_cursor": Q.cursor_of(last.created_at, last.id) if last is not None else None})

    @router.get("/requests/{request_id}", response_model=RequestDetail, responses={**NOT_FOUND, **_STORE_DOWN}, dependencies=NO_PARAMS,
                summary="One request with its attempts and, when kept, its routing decision trace")
    async def get_request(request_id: str) -> Response:
        find = getattr(ctx, "find", None)
        recent = find(request_id) if find is not None else None
        store = ctx.store
        rec = None
        if store is not None:
            try:
                engine = store.engine
            except RuntimeError:
                engine = None
            if "\x00" in request_id:
                raise AdminError(404, "no request with that id (it holds a NUL character)", "request_id")
            if engine is not None:
                try:
                    rec = await _query(Q.get_request(engine, request_id))
                except AdminError:
                    if recent is None:
                        raise
                    # the database is away, but the request is still in memory: answer from there
        if rec is not None:
            detail = RequestDetail(**_request_out(rec), request_body=_text(rec.request_body),
                                   response_body=_text(rec.response_body),
                                   attempts=[_attempt_out(a) for a in rec.attempts],
                                   decisions=recent.get("decisions") if recent is not None
                                   else _stored_decisions(rec.attempts), source="store")
            return admin.reply(detail)
        if recent is not None:
            return admin.reply(_from_recent(recent))
        if store is None and find is None:
            raise AdminError(503, "no usage-log store is configured")
        raise AdminError(404, f"no request with id {request_id!r}", "request_id")

    @router.get("/attempts", response_model=AttemptPage, responses={**BAD_PARAM, **_STORE_DOWN},
                dependencies=[Depends(_list_params)],
                summary="List upstream attempts, newest first (channel, key_name and status apply to the attempt)")
    async def list_attempts(request: Request) -> Response:
        f = admin.filter(request, LIST_PARAMS)
        rows = await _query(Q.list_attempts(admin.engine(), f))
        last = rows[-1] if len(rows) == f.limit else None
        return admin.reply({"data": [v.as_dict() for v in rows], "limit": f.limit, "offset": f.offset,
                            "next_cursor": Q.cursor_of(last.created_at, last.request_id, last.attempt.n)
                            if last is not None else None})

    # -- usage -------------------------------------------------------------------------------------

    @router.get("/usage", response_model=UsageOut, responses={**BAD_PARAM, **_STORE_DOWN},
                dependencies=[Depends(_usage_params)],
                summary="Requests, tokens and cost per project / model / channel over a time range")
    async def usage(request: Request) -> Response:
        f = admin.filter(request, USAGE_PARAMS, extra=("group_by",))
        by = _group_by(request, "project", Q.USAGE_GROUPS)
        rows = await _query(Q.usage(admin.engine(), f, by))
        total = UsageGroup(group={}, requests=0, completed=0, failed=0, cancelled=0, prompt_tokens=0,
                           completion_tokens=0, cached_tokens=0, reasoning_tokens=0, cost=0.0, unpriced=0)
        for r in rows:
            for k in ("requests", "completed", "failed", "cancelled", "prompt_tokens", "completion_tokens",
                      "cached_tokens", "reasoning_tokens", "cost", "unpriced"):
                setattr(total, k, getattr(total, k) + getattr(r, k))
        return admin.reply({"group_by": by, "since": f.since, "until": f.until,
                            "data": [r.as_dict() for r in rows], "total": total.model_dump()})

    @router.get("/usage/attempts", response_model=AttemptUsageOut, responses={**BAD_PARAM, **_STORE_DOWN},
                dependencies=[Depends(_usage_params)],
                summary="Upstream attempts, failures, cost and mean latency per channel (or key, upstream model...)")
    async def attempt_usage(request: Request) -> Response:
        f = admin.filter(request, USAGE_PARAMS, extra=("group_by",))
        by = _group_by(request, "channel", Q.ATTEMPT_GROUPS)
        rows = await _query(Q.attempt_usage(admin.engine(), f, by))
        return admin.reply({"group_by": by, "since": f.since, "until": f.until, "data": [r.as_dict() for r in rows]})

    @router.get("/store", response_model=StoreOut, dependencies=NO_PARAMS, summary="The usage-log store: queue depth, written, dropped, "
                "database reachable")
    async def store_status() -> Response:
        store = ctx.store
        if store is None:
            return admin.reply(StoreOut(configured=False))
        return admin.reply(StoreOut(
            configured=True, submitted=getattr(store, "submitted", None), queued=getattr(store, "queued", None),
            written=getattr(store, "written", None), dropped=getattr(store, "dropped", None),
            db_up=getattr(store, "db_up", None), last_error=getattr(store, "last_error", None)))

    # -- channels and keys -------------------------------------------------------------------------

    @router.get("/channels", response_model=ChannelsOut, dependencies=NO_PARAMS,
                summary="Every channel's and key's live state: breakers, cooldown, in-flight, EWMAs (key names only)")
    async def channels() -> Response:
        now = ctx.now()
        return admin.reply(ChannelsOut(now=now, channels=[channel_view(st, now) for st in ctx.router.states]))

    @router.get("/channels/{name:path}", response_model=ChannelOut, responses=NOT_FOUND, dependencies=NO_PARAMS, summary="One channel's state")
    async def channel(name: str) -> Response:
        if name not in ctx.router.by_name and _action_path(name, ctx.router.by_name):
            # This route takes every path under /channels/ (names may hold "/"), the POST-only
            # actions' too: a GET of one is the wrong method, not a channel that does not exist.
            raise AdminError(405, f"method GET is not allowed on /admin/channels/{name}; POST it",
                             type_="invalid_request_error", code="method_not_allowed", headers={"Allow": "POST"})
        return admin.reply(channel_view(state(name), ctx.now()))

    # Names may hold "/" (a client's percent-encoded %2F arrives decoded): the path parameters take
    # it, and the key routes come first, so that ".../keys/K/disable" is not read as a channel named
    # "C/keys/K".
    def key_of(st: ChannelState, key_name: str) -> Any:
        for k in st.keys:
            if k.name == key_name:
                return k
        raise AdminError(404, f"channel {st.name!r} has no key named {key_name!r}", "key_name")

    @router.post("/channels/{name:path}/keys/{key_name:path}/enable", response_model=ChannelOut, responses=_SWITCH, dependencies=NO_PARAMS,
                 summary="Enable an upstream key by name (URL-encode '#': channel#0 → channel%230)")
    async def enable_key(name: str, key_name: str) -> Response:
        st = switchable(name)
        k = key_of(st, key_name)
        k.disabled = False
        k.held = False
        k.disabled_until = NEVER
        st.refresh(ctx.now())  # the core's fast path must see keys changed from outside
        i = st.keys.index(k)
        fleet_switch(st, [f"kh:{i}", f"k:{i}"], on=True)
        return admin.reply(channel_view(st, ctx.now()))

    @router.post("/channels/{name:path}/keys/{key_name:path}/disable", response_model=ChannelOut, responses=_SWITCH, dependencies=NO_PARAMS,
                 summary="Disable an upstream key by name: the channel uses its other keys; probes neither use nor "
                 "lift it; until enabled, or a reload that changes the channel (with state.url: every process, until "
                 "enabled)")
    async def disable_key(name: str, key_name: str) -> Response:
        st = switchable(name)
        k = key_of(st, key_name)
        k.disabled = True
        k.held = True
        st.refresh(ctx.now())
        i = st.keys.index(k)
        fleet_switch(st, [f"kh:{i}", f"k:{i}"], on=False)
        return admin.reply(channel_view(st, ctx.now()))

    @router.post("/channels/{name:path}/enable", response_model=ChannelOut, responses=_SWITCH, dependencies=NO_PARAMS,
                 summary="Enable a channel (also lifts an automatic disable); lasts until the next reload, or with "
                 "state.url until switched again (every process follows)")
    async def enable_channel(name: str) -> Response:
        st = switchable(name)
        if not st.config_enabled and not st.channel.base_url:
            # The config could leave it without a URL only because it was disabled there.
            raise AdminError(409, f"channel {name!r} has no base_url, so it has nowhere to send requests; give it "
                             "one in the configuration, set enabled: true there and reload")
        if not st.config_enabled and getattr(ctx, "shared", lambda: False)():
            # Disabled by the config, which every process reads alike: enabled there, it is enabled
            # everywhere; a switch here would reach this process only (and be undone by the others).
            raise AdminError(409, f"channel {name!r} is disabled in the configuration; set enabled: true there and "
                             "reload (POST /admin/reload reaches every process)")
        st.channel.enabled = True
        st.switched_off = False
        st.disabled_until = NEVER  # an operator's "enable" overrides the auto-disable rules' verdict
        fleet_switch(st, ["off", "dis"], on=True)
        return admin.reply(channel_view(st, ctx.now()))

    @router.post("/channels/{name:path}/disable", response_model=ChannelOut, responses=_SWITCH, dependencies=NO_PARAMS,
                 summary="Disable a channel: it gets no new traffic (in-flight attempts finish); until enabled "
                 "or reloaded (with state.url: every process, until enabled)")
    async def disable_channel(name: str) -> Response:
        st = switchable(name)
        st.channel.enabled = False
        st.switched_off = True
        fleet_switch(st, ["off"], on=False)
        return admin.reply(channel_view(st, ctx.now()))

    # -- reload ------------------------------------------------------------------------------------

    @router.post("/reload", response_model=ReloadOut, dependencies=NO_PARAMS,
                 responses={400: {"model": ErrorBody, "description": "The new config is invalid; nothing changed"},
                            501: {"model": ErrorBody, "description": "This gateway cannot reload"}},
                 summary="Re-read the config and swap it in without dropping requests; says what changed")
    async def reload() -> Response:
        if getattr(ctx, "can_reload", True) is False:
            raise AdminError(501, "this gateway cannot reload its configuration")
        async with admin._reload_lock:  # two reloads at once would diff against each other's result
            old = ctx.router.config
            try:
                await ctx.reload()
            except ConfigError as exc:
                # The message names the file and field; secrets of the old config are scrubbed by reply.
                raise AdminError(400, f"the new configuration is invalid; nothing changed: {exc}", "config") from None
            except NotImplementedError as exc:
                raise AdminError(501, str(exc) or "this gateway cannot reload its configuration") from None
            except Exception as exc:
                # Whatever the proxy's reload raised, the operator gets its gist (scrubbed), not a bare 500.
                raise AdminError(500, f"the reload failed: {type(exc).__name__}: {exc}", "config") from None
            new = ctx.router.config
        started = getattr(ctx, "started_config", None)
        changes = config_changes(old, new, started() if started is not None else None)
        changed = any(bool(v) for v in changes.model_dump().values())
        # Scrub with the old config's secrets too: a rotated-out key must not appear either.
        return admin.reply(ReloadOut(reloaded=True, changed=changed, changes=changes),
                           extra_secrets=admin._secrets(old))

    return router


def _text(v: str | bytes | None) -> str | None:
    return v.decode("utf-8", "replace") if isinstance(v, bytes) else v
