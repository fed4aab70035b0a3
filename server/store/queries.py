"""Reads over the store for the admin API: filtered request and attempt lists, usage and cost totals.

Every function takes the store's AsyncEngine (`store.engine`) and a Filter. `Filter.from_params`
parses query-string parameters and raises QueryError naming the bad parameter, which the admin API
turns into a 400. Time ranges are unix seconds, `since` inclusive and `until` exclusive.
"""

from __future__ import annotations

import base64
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from server.store.models import attempts_table as A
from server.store.models import requests_table as R
from server.store.records import CALLED_OFF, OUTCOMES, AttemptRow, RequestRecord
from server.store.rows import key_text

MAX_LIMIT = 1000
MAX_OFFSET = 2**63 - 1

# What usage() and attempt_usage() may group by, each mapped to its column.
USAGE_GROUPS: dict[str, sa.ColumnElement[Any]] = {
    "project": R.c.project, "model": R.c.model, "channel": R.c.channel, "day": R.c.day,
    "key_name": R.c.key_name, "client_format": R.c.client_format,
}
ATTEMPT_GROUPS: dict[str, sa.ColumnElement[Any]] = {
    "channel": A.c.channel, "key_name": A.c.key_name, "upstream_model": A.c.upstream_model,
    "error_kind": A.c.error_kind, "project": R.c.project, "model": R.c.model, "day": R.c.day,
}


class QueryError(ValueError):
    """A bad filter; `param` names the offending parameter."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(f"{param}: {message}")
        self.param = param


def _time(param: str, v: str) -> float:
    if not v.isascii():  # float() also reads other scripts' digits ("１７"): no time is written so
        raise QueryError(param, "expected unix seconds or an ISO 8601 time")
    try:
        t = float(v)
    except ValueError:
        try:
            dt = datetime.fromisoformat(v.replace("Z", "+00:00"))
        except ValueError:
            raise QueryError(param, "expected unix seconds or an ISO 8601 time") from None
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=UTC)
        t = dt.timestamp()
    if not math.isfinite(t):
        raise QueryError(param, "must be finite")
    return t


def _int(param: str, v: str) -> int:
    # ASCII digits only: int() also takes "５", "٤٠٠", "1_000" and spaces around.
    if not _INTEGER.fullmatch(v):
        raise QueryError(param, "expected an integer")
    return int(v)


_INTEGER = re.compile(r"-?[0-9]+")
_KEYED = ("project", "model", "channel", "key_name", "trace_id", "thread_id")  # columns stored as key_text


@dataclass(slots=True)
class Filter:
    since: float | None = None
    until: float | None = None
    project: str | None = None
    model: str | None = None  # the model the client asked for
    channel: str | None = None  # requests: any attempt on it; usage: the channel that answered
    status: int | None = None  # requests: the client's status; attempts: the upstream's
    outcome: str | None = None  # completed | failed | cancelled
    key_name: str | None = None
    trace_id: str | None = None
    thread_id: str | None = None
    limit: int = 100
    offset: int = 0
    cursor: str | None = None  # a page's `next_cursor`: the rows after its last one (keyset paging)

    def check(self) -> Filter:
        if self.limit < 1 or self.limit > MAX_LIMIT:
            raise QueryError("limit", f"must be between 1 and {MAX_LIMIT}")
        if self.offset < 0:
            raise QueryError("offset", "must be >= 0")
        if self.offset > MAX_OFFSET:  # the databases' integers are 64-bit: a larger one is an error there
            raise QueryError("offset", f"must be at most {MAX_OFFSET}")
        if self.status is not None and not 0 <= self.status <= 999:
            raise QueryError("status", "must be an HTTP status (0 to 999; 0: no answer)")
        if self.outcome is not None and self.outcome not in OUTCOMES:
            raise QueryError("outcome", f"must be one of {', '.join(OUTCOMES)}")
        if self.since is not None and self.until is not None and self.until < self.since:
            raise QueryError("until", "is before since")
        if self.cursor is not None:
            if self.offset:
                raise QueryError("cursor", "give either cursor or offset, not both")
            _position(self.cursor)  # a cursor that is not one of ours: refused before any query
        # A name longer than an index row holds is stored cut (server/store/rows.py): cut the same way,
        # the name it came from finds it.
        for name in _KEYED:
            v = getattr(self, name)
            if v is not None:
                setattr(self, name, key_text(v))
        return self

    @classmethod
    def from_params(cls, params: Mapping[str, str], allowed: Sequence[str] | None = None) -> Filter:
        """Parse query parameters; unknown names and bad values raise QueryError naming them."""
        names = {f.name for f in fields(cls)}
        kw: dict[str, Any] = {}
        for k, v in params.items():
            if k not in names or (allowed is not None and k not in allowed):
                raise QueryError(k, "unknown parameter")
            if k in ("since", "until"):
                kw[k] = _time(k, v)
            elif k in ("status", "limit", "offset"):
                kw[k] = _int(k, v)
            elif "\x00" in v:  # no stored text has one, and PostgreSQL refuses the query
                raise QueryError(k, "must not contain a NUL character")
            else:
                kw[k] = v
        return cls(**kw).check()


# Keyset paging. An offset counts rows from the newest, so rows written while a client pages (new
# requests, on top) shifted every later page: rows came twice. A cursor names the last row read,
# (created_at, id) for requests, (created_at, request_id, n) for attempts, and the next page starts
# after it whatever was written since. Opaque to clients: base64url of the row's position as JSON.


def cursor_of(*position: float | str | int) -> str:
    return base64.urlsafe_b64encode(json.dumps(list(position)).encode()).decode().rstrip("=")


def _position(cursor: str) -> list[Any]:
    try:
        pos = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        # A request id the databases can take: UTF-8 (no lone surrogate), no NUL; a time as a float.
        if (isinstance(pos, list) and len(pos) in (2, 3) and type(pos[0]) in (int, float) and math.isfinite(pos[0])
                and isinstance(pos[1], str) and "\x00" not in pos[1] and pos[1].encode()
                and (len(pos) == 2 or (type(pos[2]) is int and 0 <= pos[2] <= MAX_OFFSET))):
            return pos
    # binascii.Error, JSONDecodeError and UnicodeEncodeError are ValueErrors; a huge integer is an
    # OverflowError as a float
    except (ValueError, TypeError, OverflowError):
        pass
    raise QueryError("cursor", "is not a next_cursor this API gave")


def _after(cursor: str, created: Any, ident: Any, n: Any = None) -> sa.ColumnElement[bool]:
    """Rows after the cursor's in newest-first order."""
    pos = _position(cursor)
    if (len(pos) == 3) != (n is not None):
        raise QueryError("cursor", "is a cursor of the other list (requests / attempts)")
    t, i = float(pos[0]), pos[1]
    later_key = ident < i if n is None else sa.or_(ident < i, sa.and_(ident == i, n < pos[2]))
    return sa.or_(created < t, sa.and_(created == t, later_key))


def _request_where(f: Filter, *, channel_any: bool) -> list[sa.ColumnElement[bool]]:
    w: list[sa.ColumnElement[bool]] = []
    if f.since is not None:
        w.append(R.c.created_at >= f.since)
    if f.until is not None:
        w.append(R.c.created_at < f.until)
    for name in ("project", "model", "outcome", "key_name", "trace_id", "thread_id"):
        v = getattr(f, name)
        if v is not None:
            w.append(R.c[name] == v)
    if f.channel is not None:
        if channel_any:
            w.append(sa.exists().where(A.c.request_id == R.c.id, A.c.channel == f.channel))
        else:
            w.append(R.c.channel == f.channel)
    return w


_REQ_COLS = [c for c in R.c if c.name != "day"]


def _record(row: sa.RowMapping) -> RequestRecord:
    d = {c.name: row[c.name] for c in _REQ_COLS}
    return RequestRecord(**d)


def _attempt(row: sa.RowMapping) -> AttemptRow:
    return AttemptRow(**{k: row[k] for k in (
        "n", "channel", "upstream_model", "status", "key_name", "error", "error_kind", "latency", "ttft",
        "cost", "decision")})


async def list_requests(engine: AsyncEngine, f: Filter, *, with_attempts: bool = False) -> list[RequestRecord]:
    """Newest first. `channel` matches requests with any attempt on that channel (failovers too)."""
    f.check()
    w = _request_where(f, channel_any=True)
    if f.status is not None:
        w.append(R.c.status == f.status)
    if f.cursor is not None:
        w.append(_after(f.cursor, R.c.created_at, R.c.id))
    q = (sa.select(*_REQ_COLS).where(*w).order_by(R.c.created_at.desc(), R.c.id.desc())
         .limit(f.limit).offset(f.offset))
    async with engine.connect() as conn:
        rows = (await conn.execute(q)).mappings().all()
        out = [_record(r) for r in rows]
        if with_attempts and out:
            await _load_attempts(conn, out)
    return out


async def count_requests(engine: AsyncEngine, f: Filter) -> int:
    """How many requests match `f`, ignoring limit/offset and cursor (for pagination)."""
    f.check()
    w = _request_where(f, channel_any=True)
    if f.status is not None:
        w.append(R.c.status == f.status)
    async with engine.connect() as conn:
        return int((await conn.execute(sa.select(sa.func.count()).select_from(R).where(*w))).scalar_one())


async def _load_attempts(conn: Any, records: list[RequestRecord]) -> None:
    by_id = {r.id: r for r in records}
    q = sa.select(A).where(A.c.request_id.in_(list(by_id))).order_by(A.c.request_id, A.c.n)
    for row in (await conn.execute(q)).mappings():
        by_id[row["request_id"]].attempts.append(_attempt(row))


async def get_request(engine: AsyncEngine, request_id: str) -> RequestRecord | None:
    """One request with its attempts in order: the decision trace the admin API shows."""
    async with engine.connect() as conn:
        row = (await conn.execute(sa.select(*_REQ_COLS).where(R.c.id == request_id))).mappings().first()
        if row is None:
            return None
        rec = _record(row)
        await _load_attempts(conn, [rec])
    return rec


@dataclass(slots=True)
class AttemptView:
    """An attempt with the request it belongs to."""

    request_id: str
    created_at: float
    project: str
    model: str
    attempt: AttemptRow

    def as_dict(self) -> dict[str, Any]:
        d = {"request_id": self.request_id, "created_at": self.created_at, "project": self.project,
             "model": self.model}
        d.update(self.attempt.as_dict())
        return d


async def list_attempts(engine: AsyncEngine, f: Filter) -> list[AttemptView]:
    """Newest first. `channel` and `status` apply to the attempt itself; the rest to its request."""
    f.check()
    w = _request_where(Filter(since=f.since, until=f.until, project=f.project, model=f.model, outcome=f.outcome,
                              key_name=None, trace_id=f.trace_id, thread_id=f.thread_id), channel_any=False)
    if f.since is not None:
        w.append(A.c.created_at >= f.since)  # lets the (channel, created_at) index do the work
    if f.until is not None:
        w.append(A.c.created_at < f.until)
    if f.channel is not None:
        w.append(A.c.channel == f.channel)
    if f.key_name is not None:
        w.append(A.c.key_name == f.key_name)  # attempts carry the upstream key's name
    if f.status is not None:
        w.append(A.c.status == f.status)
    if f.cursor is not None:
        w.append(_after(f.cursor, A.c.created_at, A.c.request_id, A.c.n))
    q = (sa.select(A, R.c.project, R.c.model).join(R, R.c.id == A.c.request_id).where(*w)
         .order_by(A.c.created_at.desc(), A.c.request_id.desc(), A.c.n.desc()).limit(f.limit).offset(f.offset))
    async with engine.connect() as conn:
        rows = (await conn.execute(q)).mappings().all()
    return [AttemptView(r["request_id"], r["created_at"], r["project"], r["model"], _attempt(r)) for r in rows]


@dataclass(slots=True)
class UsageRow:
    """Totals for one group. `cost` sums the priced requests; `unpriced` counts the others, so a
    total that is missing some models says so rather than reading as cheap."""

    group: dict[str, Any] = field(default_factory=dict)
    requests: int = 0
    completed: int = 0
    failed: int = 0
    cancelled: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    reasoning_tokens: int = 0
    cost: float = 0.0
    unpriced: int = 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _groups(by: Sequence[str], table: Mapping[str, sa.ColumnElement[Any]]) -> list[sa.ColumnElement[Any]]:
    if isinstance(by, str):
        by = [b for b in by.split(",") if b]
    bad = [b for b in by if b not in table]
    if bad:
        raise QueryError("group_by", f"unknown {bad[0]!r}; choose from {', '.join(table)}")
    return [table[b].label(b) for b in dict.fromkeys(by)]


async def usage(engine: AsyncEngine, f: Filter, by: Sequence[str] = ("project", "model")) -> list[UsageRow]:
    """Requests, tokens and cost per group over `f` (limit/offset ignored); `channel` in `by` or in
    the filter is the channel that gave the final answer. Ordered by cost, highest first."""
    f.check()
    cols = _groups(by, USAGE_GROUPS)
    w = _request_where(f, channel_any=False)
    if f.status is not None:
        w.append(R.c.status == f.status)

    def n(outcome: str) -> sa.ColumnElement[Any]:
        return sa.func.coalesce(sa.func.sum(sa.case((R.c.outcome == outcome, 1), else_=0)), 0)

    total_cost = sa.func.coalesce(sa.func.sum(R.c.cost), 0.0)
    q = (sa.select(
        *cols, sa.func.count().label("requests"),
        n("completed").label("completed"), n("failed").label("failed"), n("cancelled").label("cancelled"),
        sa.func.coalesce(sa.func.sum(R.c.prompt_tokens), 0).label("prompt_tokens"),
        sa.func.coalesce(sa.func.sum(R.c.completion_tokens), 0).label("completion_tokens"),
        sa.func.coalesce(sa.func.sum(R.c.cached_tokens), 0).label("cached_tokens"),
        sa.func.coalesce(sa.func.sum(R.c.reasoning_tokens), 0).label("reasoning_tokens"),
        total_cost.label("cost"),
        sa.func.coalesce(sa.func.sum(sa.case((R.c.cost.is_(None), 1), else_=0)), 0).label("unpriced"),
    ).where(*w).group_by(*cols))
    async with engine.connect() as conn:
        rows = (await conn.execute(q)).mappings().all()
    names = [c.name for c in cols]
    out = [UsageRow(group={k: r[k] for k in names}, requests=int(r["requests"]), completed=int(r["completed"]),
                    failed=int(r["failed"]), cancelled=int(r["cancelled"]), prompt_tokens=int(r["prompt_tokens"]),
                    completion_tokens=int(r["completion_tokens"]), cached_tokens=int(r["cached_tokens"]),
                    reasoning_tokens=int(r["reasoning_tokens"]), cost=usd(r["cost"]), unpriced=int(r["unpriced"]))
           for r in rows]
    out.sort(key=lambda u: (-u.cost, _group_order(u.group, names)))
    return out


# Sums of costs are rounded to this many decimals (a ten-billionth of a dollar): each database adds
# the same floats in its own order, and the last digits differed (0.0036344999999999776 on SQLite,
# 0.0036345000000000014 on PostgreSQL, for the same rows), which also swapped groups of equal cost.
COST_DIGITS = 10


def usd(total: Any) -> float:
    return round(float(total), COST_DIGITS)


def _group_order(group: dict[str, Any], names: Sequence[str]) -> tuple[Any, ...]:
    """Groups in ascending order of their values, column by column, code point by code point (SQLite's
    order; PostgreSQL sorts text by its database's collation, `alpha` before `Team-A` under en-US),
    a group without a value (NULL) after the rest: the same order on every database."""
    return tuple((group[k] is None, group[k] if group[k] is not None else 0) for k in names)


@dataclass(slots=True)
class AttemptUsageRow:
    """Upstream attempts per group: how many, how many failed, what they cost, how fast they were."""

    group: dict[str, Any] = field(default_factory=dict)
    attempts: int = 0
    failures: int = 0
    cost: float = 0.0
    mean_latency: float | None = None
    mean_ttft: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


async def attempt_usage(engine: AsyncEngine, f: Filter, by: Sequence[str] = ("channel",)) -> list[AttemptUsageRow]:
    """Per-channel (or key, upstream model, error kind) figures from the attempts themselves, so a
    channel that only ever failed over still shows up. Filters as in list_attempts."""
    f.check()
    cols = _groups(by, ATTEMPT_GROUPS)
    w = _request_where(Filter(since=f.since, until=f.until, project=f.project, model=f.model, outcome=f.outcome,
                              trace_id=f.trace_id, thread_id=f.thread_id), channel_any=False)
    if f.channel is not None:
        w.append(A.c.channel == f.channel)
    if f.key_name is not None:
        w.append(A.c.key_name == f.key_name)
    if f.status is not None:
        w.append(A.c.status == f.status)
    # A failure is what the core classified as one, or any status that is not a success (0: no answer),
    # except an attempt our side called off (a lost hedge, a client that left): as the metrics'
    # attempt outcome (server/metrics.py) and the channel's own state count them, not failures.
    called_off = sa.func.coalesce(A.c.decision["next"].as_string(), "").in_(CALLED_OFF)
    failed = sa.or_(A.c.error_kind.is_not(None),
                    sa.and_(sa.or_(A.c.status >= 400, A.c.status < 100), sa.not_(called_off)))
    failures = sa.func.coalesce(sa.func.sum(sa.case((failed, 1), else_=0)), 0)
    q = (sa.select(*cols, sa.func.count().label("attempts"), failures.label("failures"),
                   sa.func.coalesce(sa.func.sum(A.c.cost), 0.0).label("cost"),
                   sa.func.avg(A.c.latency).label("mean_latency"), sa.func.avg(A.c.ttft).label("mean_ttft"))
         .select_from(A.join(R, R.c.id == A.c.request_id)).where(*w).group_by(*cols))
    async with engine.connect() as conn:
        rows = (await conn.execute(q)).mappings().all()
    names = [c.name for c in cols]
    out = [AttemptUsageRow(group={k: r[k] for k in names}, attempts=int(r["attempts"]), failures=int(r["failures"]),
                           cost=usd(r["cost"]),
                           mean_latency=None if r["mean_latency"] is None else float(r["mean_latency"]),
                           mean_ttft=None if r["mean_ttft"] is None else float(r["mean_ttft"]))
           for r in rows]
    out.sort(key=lambda u: _group_order(u.group, names))
    return out
