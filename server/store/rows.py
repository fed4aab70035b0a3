"""Records as table rows: tuples in the tables' column order, scrubbed, and the INSERT each dialect runs them with.

The writer inserts rows with one statement per table compiled once per engine and executed through
`exec_driver_sql` with a list of tuples, so SQLAlchemy neither compiles nor processes anything per
row. That skips its type processing, so the values here are what its types would have bound: the
JSON column gets `json.dumps` text (None as "null", as SQLAlchemy's JSON type writes it), booleans
stay bool, and the rest are plain str/int/float/None. A test checks the rows against SQLAlchemy's
typed insert of the same values.

Scrubbing has a fast path: the record's short texts (and its decision JSON) are joined and checked
once for any secret; only a record where that finds something (or a NUL) goes field by field
through the Scrubber, which is the rule itself: either way no secret reaches a row.
"""

from __future__ import annotations

import json
import math
import time
from itertools import chain
from typing import Any

from sqlalchemy.engine import Dialect

from server.store.models import attempts_table, requests_table
from server.store.records import BODY_SCRUB_MARGIN, MAX_STORED_BODY, RequestRecord
from server.store.scrub import WITHHELD, Scrubber

Row = tuple[Any, ...]
Prepared = tuple[Row, list[Row]]

# The order the tuples below are built in; checked against the tables at import, so a column added
# to models.py without being added here fails loudly instead of shifting values into wrong columns.
REQUEST_COLUMNS = (
    "id", "created_at", "day", "project", "key_name", "client_format", "model", "stream", "status", "outcome",
    "error", "latency", "ttft", "overhead", "prompt_tokens", "completion_tokens", "cached_tokens",
    "reasoning_tokens", "cost", "trace_id", "thread_id", "channel", "request_body", "response_body",
)
ATTEMPT_COLUMNS = (
    "request_id", "n", "created_at", "channel", "key_name", "upstream_model", "status", "error", "error_kind",
    "latency", "ttft", "cost", "decision",
)
if tuple(c.name for c in requests_table.c) != REQUEST_COLUMNS or \
        tuple(c.name for c in attempts_table.c) != ATTEMPT_COLUMNS:
    raise RuntimeError("server.store.rows: the column lists no longer match server.store.models")

ID = REQUEST_COLUMNS.index("id")
REQUEST_BODY = REQUEST_COLUMNS.index("request_body")
RESPONSE_BODY = REQUEST_COLUMNS.index("response_body")


def _sqlite_variable_limit() -> int:
    """How many parameters one SQLite statement may bind (999 before SQLite 3.32, often far more)."""
    import sqlite3

    conn = sqlite3.connect(":memory:")
    try:
        return int(conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER))
    finally:
        conn.close()


def _aiosqlite_runs_functions() -> bool:
    try:
        import aiosqlite
    except ImportError:
        return False
    conn = aiosqlite.Connection
    return callable(getattr(conn, "_execute", None)) and isinstance(getattr(conn, "_conn", None), property)


# Most rows one multi-row INSERT carries: a batch of 200 then takes 3 statements (128 + 64 + 8).
MAX_ROWS_PER_STATEMENT = 512


class _Insert:
    """One table's INSERT … ON CONFLICT DO NOTHING, compiled once, and how a list of rows is sent."""

    def __init__(self, stmt: Any, columns: tuple[str, ...], dialect: Dialect) -> None:
        compiled = stmt.compile(dialect=dialect, column_keys=list(columns))
        self.sql: str = compiled.string
        self._keys: tuple[str, ...] | None = None
        if not dialect.positional:
            self._keys = columns  # named parameters: rows go as dicts
        elif tuple(compiled.positiontup or ()) != columns:
            raise RuntimeError(f"unexpected parameter order in {self.sql!r}")
        # SQLite: many rows per statement. The sqlite3 module releases the GIL around every row it
        # steps, so executemany hands the GIL back and forth with the event loop once per row; under
        # load each handoff costs both threads a context switch, more than the insert itself. One
        # multi-row INSERT steps once. Sizes are powers of two, so the driver's statement cache holds
        # a handful of texts, not one per batch size.
        self._multi: dict[int, str] = {}
        self._max_rows = 1
        head, sep, rest = self.sql.partition(" VALUES ")
        group = "(" + ", ".join("?" * len(columns)) + ")"
        if dialect.name == "sqlite" and dialect.paramstyle == "qmark" and rest.startswith(group):
            tail = rest[len(group):]
            limit = min(MAX_ROWS_PER_STATEMENT, _sqlite_variable_limit() // len(columns))
            size = 1
            while size * 2 <= limit:
                size *= 2
            self._max_rows = size
            while size > 1:
                self._multi[size] = head + sep + ", ".join([group] * size) + tail
                size //= 2

    def statements(self, rows: list[Row]) -> list[tuple[str, Any]]:
        """(sql, parameters) pairs for exec_driver_sql that insert `rows`, in order."""
        if self._keys is not None:
            return [(self.sql, [dict(zip(self._keys, r, strict=True)) for r in rows])]
        if self._max_rows == 1 or len(rows) == 1:
            return [(self.sql, rows)]
        out: list[tuple[str, Any]] = []
        i, n = 0, len(rows)
        size = self._max_rows
        while i < n:
            while size > n - i:
                size //= 2
            if size == 1:
                out.append((self.sql, rows[i:]))  # fewer than two left
                break
            out.append((self._multi[size], tuple(chain.from_iterable(rows[i:i + size]))))
            i += size
        return out


class InsertSQL:
    """The two INSERT … ON CONFLICT DO NOTHING statements as the engine's dialect spells them
    (qmark for SQLite, $n with casts for asyncpg), compiled once from the tables' definitions."""

    def __init__(self, dialect: Dialect) -> None:
        if dialect.name == "postgresql":
            from sqlalchemy.dialects.postgresql import insert
        else:
            from sqlalchemy.dialects.sqlite import insert  # type: ignore[assignment]
        self.requests = _Insert(insert(requests_table).on_conflict_do_nothing(index_elements=["id"]),
                                REQUEST_COLUMNS, dialect)
        self.attempts = _Insert(insert(attempts_table).on_conflict_do_nothing(index_elements=["request_id", "n"]),
                                ATTEMPT_COLUMNS, dialect)
        # SQLite through aiosqlite: the writer runs a batch's statements in one call to its thread
        # (Connection._execute, as SQLAlchemy's adapter reaches into aiosqlite too); without it, the
        # statements go through SQLAlchemy one by one.
        self.sqlite = dialect.name == "sqlite" and dialect.driver == "aiosqlite" and _aiosqlite_runs_functions()


_esc = json.encoder.encode_basestring_ascii  # what json.dumps (ensure_ascii) puts between the quotes
_float_repr = float.__repr__
_int_repr = int.__repr__


def plain_json(v: Any) -> str | None:
    """json.dumps(v), for values made of exactly dict (str keys), list, tuple, str, int, bool, None and
    finite float; None for anything else (the caller then takes the general path). Faster than
    json.dumps for the small dicts attempts carry, and byte for byte the same."""
    t = type(v)
    if t is str:
        return _esc(v)  # type: ignore[no-any-return]
    if t is dict:
        items = []
        for k, x in v.items():
            if type(k) is not str:
                return None  # json.dumps and str() spell True/None keys differently: general path
            s = plain_json(x)
            if s is None:
                return None
            items.append(f"{_esc(k)}: {s}")
        return "{" + ", ".join(items) + "}"
    if v is None:
        return "null"
    if t is int:
        return _int_repr(v)
    if t is bool:
        return "true" if v else "false"
    if t is float:
        return _float_repr(v) if math.isfinite(v) else None
    if t is list or t is tuple:
        parts = []
        for x in v:
            s = plain_json(x)
            if s is None:
                return None
            parts.append(s)
        return "[" + ", ".join(parts) + "]"
    return None


# Bounds of what the tables take. A text that an index covers must fit PostgreSQL's B-tree row
# (2704 bytes): 512 characters are at most 2048 bytes of UTF-8. Token counts are INTEGER columns.
MAX_KEY_TEXT = 512
MAX_INT = 2**31 - 1


def key_text(v: str | None) -> str | None:
    """An indexed text, cut to what an index row holds."""
    if v is None or len(v) <= MAX_KEY_TEXT:
        return v
    return v[:MAX_KEY_TEXT - 1] + "…"


def _int(v: int) -> int:
    """A count for an INTEGER column: a provider's absurd figure is clamped, not a refused record."""
    n = int(v)
    return n if -MAX_INT <= n <= MAX_INT else (MAX_INT if n > 0 else -MAX_INT)


def _num(v: float | None) -> float | None:
    return v if v is None or math.isfinite(v) else None


class RowBuilder:
    """Turns RequestRecords into rows for one scrubber and one store_bodies setting."""

    def __init__(self, scrubber: Scrubber, store_bodies: bool) -> None:
        self.scrub = scrubber
        self.store_bodies = store_bodies
        self._day_lo = 0
        self._day_hi = 0
        self._day = ""

    def day(self, created: float) -> str:
        """The UTC date of `created`, YYYY-MM-DD; strftime runs once per day, not per record."""
        if self._day_lo <= created < self._day_hi:
            return self._day
        text = time.strftime("%Y-%m-%d", time.gmtime(created))
        secs = math.floor(created)  # gmtime floors too; integer bounds compare exactly with the float
        self._day_lo = secs - secs % 86400
        self._day_hi = self._day_lo + 86400
        self._day = text
        return text

    def body(self, value: str | bytes | None) -> str | None:
        """A body as stored: scrubbed whole (escaped and stream-split secrets too), then cut to
        MAX_STORED_BODY bytes, so that no piece of a secret straddling the cut is kept.

        A body the proxy cut at MAX_STORED_BODY + BODY_SCRUB_MARGIN may end in part of a secret,
        which no scrubbing can recognise. Masks shorten the text, so that part could move back into
        what is kept: the scrubbed text's last half-margin (which covers at least as much of the
        original's end) is dropped first."""
        text = self.scrub.body(value)
        if text is not None and text != WITHHELD and value is not None and \
                len(value) >= MAX_STORED_BODY + BODY_SCRUB_MARGIN:
            text = text[:max(0, len(text) - BODY_SCRUB_MARGIN // 2)]
        if text is not None and len(text) > MAX_STORED_BODY // 4:
            raw = text.encode("utf-8", "surrogatepass")
            if len(raw) > MAX_STORED_BODY:
                text = raw[:MAX_STORED_BODY].decode("utf-8", "ignore")
        return text

    def prepare(self, r: RequestRecord) -> Prepared:
        """A record as table rows: every text scrubbed, bodies only when configured."""
        parts = [r.project, r.key_name, r.client_format, r.model, r.error, r.trace_id, r.thread_id, r.channel]
        decisions = []
        for a in r.attempts:
            parts += (a.channel, a.key_name, a.upstream_model, a.error, a.error_kind)
            d = a.decision
            s = "null" if d is None else plain_json(d)
            if s is None:
                return self.prepare_general(r)
            parts.append(s)
            decisions.append(s)
        try:
            # One search over all the short texts instead of one per field. A non-str value makes
            # join raise: the general path then converts bytes, or refuses the record as before.
            # (That is the pure build. Compiled, this module reads each field as annotated, so a
            # value of another type raises TypeError here and the writer drops the record with an
            # error in the log; nothing in the gateway builds such a record.)
            joined = "\n".join([p for p in parts if p is not None])
        except TypeError:
            return self.prepare_general(r)
        # Short texts that together run past MAX_KEY_TEXT go the general way, which cuts each one
        # that long: then a value is cut, or not, by its own length only, whatever came with it.
        if len(joined) > MAX_KEY_TEXT or not self.scrub.clean(joined):
            return self.prepare_general(r)
        if max(r.prompt_tokens, r.completion_tokens, r.cached_tokens, r.reasoning_tokens) > MAX_INT:
            return self.prepare_general(r)
        # Nothing to mask: the values go in as they are.
        created = float(r.created_at) if r.created_at and math.isfinite(r.created_at) else time.time()
        rid = str(r.id)
        if self.store_bodies:
            request_body, response_body = self.body(r.request_body), self.body(r.response_body)
        else:
            request_body = response_body = None
        req = (
            rid, created, self.day(created), r.project or "", r.key_name, r.client_format or "", r.model or "",
            bool(r.stream), int(r.status), str(r.outcome), r.error, _num(r.latency), _num(r.ttft),
            _num(r.overhead), int(r.prompt_tokens), int(r.completion_tokens), int(r.cached_tokens),
            int(r.reasoning_tokens), _num(r.cost), r.trace_id, r.thread_id, r.channel, request_body, response_body,
        )
        attempts = [(
            rid, int(a.n), created, a.channel or "", a.key_name, a.upstream_model or "", int(a.status), a.error,
            a.error_kind, _num(a.latency), _num(a.ttft), _num(a.cost), dec,
        ) for a, dec in zip(r.attempts, decisions, strict=True)]
        return req, attempts

    def prepare_general(self, r: RequestRecord) -> Prepared:
        """The same rows with every field through the Scrubber: for records that hold a secret, a
        NUL, bytes, or JSON that plain_json does not take."""
        t = self.scrub.text
        created = float(r.created_at) if r.created_at and math.isfinite(r.created_at) else time.time()
        rid = str(r.id)
        bodies = self.store_bodies
        req = (
            rid, created, self.day(created), key_text(t(r.project)) or "", key_text(t(r.key_name)),
            key_text(t(r.client_format)) or "", key_text(t(r.model)) or "", bool(r.stream), _int(r.status), str(r.outcome),
            t(r.error), _num(r.latency), _num(r.ttft), _num(r.overhead), _int(r.prompt_tokens),
            _int(r.completion_tokens), _int(r.cached_tokens), _int(r.reasoning_tokens), _num(r.cost),
            key_text(t(r.trace_id)), key_text(t(r.thread_id)), key_text(t(r.channel)),
            self.body(r.request_body) if bodies else None, self.body(r.response_body) if bodies else None,
        )
        attempts = [(
            rid, _int(a.n), created, key_text(t(a.channel)) or "", key_text(t(a.key_name)), key_text(t(a.upstream_model)) or "",
            _int(a.status),
            t(a.error), t(a.error_kind), _num(a.latency), _num(a.ttft), _num(a.cost),
            # As SQLAlchemy's JSON type would have written it (None as JSON null).
            json.dumps(self.scrub.json(a.decision) if a.decision is not None else None),
        ) for a in r.attempts]
        return req, attempts


__all__ = ["ATTEMPT_COLUMNS", "REQUEST_COLUMNS", "InsertSQL", "Prepared", "RowBuilder", "plain_json"]
