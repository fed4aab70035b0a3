"""The usage-log store against real SQLite and real PostgreSQL: records, draining, outages, bounds, queries, secrets.

PostgreSQL: AXONSIM_TEST_PG (default postgresql://postgres@127.0.0.1:5432/test); each test gets its
own schema, dropped afterwards. Outages are real: PostgreSQL is reached through a TCP forwarder on a
loopback port that the test stops (dropping every connection) and restarts; SQLite is locked by
another connection holding an exclusive transaction. Tests skip PostgreSQL when it is unreachable,
unless AXONSIM_REQUIRE_POSTGRES=1 (CI), where they fail instead.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import sqlite3
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import sqlalchemy as sa

from axonsim.config import ConfigError, Price, parse_config
from axonsim.config import Store as StoreSettings
from axonsim.execution import Outcome, Router
from axonsim.pricing import cost, cost_for, price_for
from axonsim.unified import Error, Usage, error_kind_for_status
from server.store import (
    STATUS_CLIENT_CLOSED,
    AttemptRow,
    RequestRecord,
    Scrubber,
    Store,
    StoreUnavailable,
    resolve_url,
    secrets_from_config,
)
from server.store import queries as Q
from server.store.engine import make_engine
from server.store.migrations import current
from server.store.scrub import MIN_SECRET

pytestmark = pytest.mark.timeout(90)

PG_DSN = os.environ.get("AXONSIM_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
REQUIRE_PG = os.environ.get("AXONSIM_REQUIRE_POSTGRES") == "1"
WAIT = 30.0  # upper bound on any single wait in these tests; they finish far sooner


def _pg_reason() -> str | None:
    async def probe() -> None:
        conn = await asyncpg.connect(PG_DSN, timeout=3)
        await conn.close()

    try:
        asyncio.run(probe())
    except Exception as exc:
        return f"PostgreSQL at {PG_DSN} is unreachable ({type(exc).__name__}: {exc})"
    return None


PG_UNAVAILABLE = _pg_reason()


# --------------------------------------------------------------------------------------------------
# Databases that can be taken away and given back


class SqliteDB:
    """A SQLite file; `down()` takes an exclusive lock from another connection, as a second
    process would, so every write fails with "database is locked" until `up()`."""

    kind = "sqlite"
    schema = None

    def __init__(self, path: Path) -> None:
        self.path = path
        self.url = f"sqlite+aiosqlite:///{path}"
        self._lock: sqlite3.Connection | None = None

    async def down(self) -> None:
        conn = sqlite3.connect(self.path, timeout=0, isolation_level=None)
        # Non-blocking attempts: a blocking wait here would stall the loop the writer needs.
        async with asyncio.timeout(WAIT):
            while True:
                try:
                    conn.execute("BEGIN EXCLUSIVE")
                    break
                except sqlite3.OperationalError:
                    await asyncio.sleep(0.01)
        self._lock = conn

    async def up(self) -> None:
        if self._lock is not None:
            self._lock.execute("COMMIT")
            self._lock.close()
            self._lock = None

    async def fetch(self, sql: str) -> list[tuple[Any, ...]]:
        conn = sqlite3.connect(self.path, timeout=5)
        try:
            return conn.execute(sql).fetchall()
        finally:
            conn.close()

    async def raw_text(self) -> str:
        """Everything on disk, byte for byte (database file and WAL), as text."""
        out = b""
        for suffix in ("", "-wal", "-journal"):
            p = Path(str(self.path) + suffix)
            if p.exists():
                out += p.read_bytes()
        return out.decode("latin-1")

    async def drop(self) -> None:
        await self.up()


class Forwarder:
    """A TCP forwarder on a loopback port. `stop()` closes the listener and cuts every open
    connection; `start()` listens on the same port again."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = 0
        self.server: asyncio.Server | None = None
        self.writers: set[asyncio.StreamWriter] = set()
        self.flowing = asyncio.Event()  # cleared by stall(): connections stay open, nothing goes through
        self.flowing.set()
        self.open: list[asyncio.Event] = []  # each open connection's own flow

    def stall(self) -> None:
        self.flowing.clear()

    def lose_open(self) -> None:
        """The connections open now carry nothing more, for good (a NAT that forgot them); new
        ones flow."""
        for ev in self.open:
            ev.clear()

    def resume(self) -> None:
        self.flowing.set()

    async def start(self) -> None:
        if self.server is not None:
            return
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", self.port, reuse_address=True)
        self.port = self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            self.server = None
        for w in list(self.writers):
            w.transport.abort()
        self.writers.clear()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            ur, uw = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self.writers |= {writer, uw}
        own = asyncio.Event()
        own.set()
        self.open.append(own)

        async def pipe(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            try:
                while data := await r.read(65536):
                    await self.flowing.wait()
                    await own.wait()
                    w.write(data)
                    await w.drain()
            except (OSError, asyncio.IncompleteReadError):
                pass
            finally:
                w.transport.abort()

        await asyncio.gather(pipe(reader, uw), pipe(ur, writer))
        self.writers -= {writer, uw}


class PostgresDB:
    """A fresh schema in the test database, reached through a Forwarder that `down()` stops."""

    kind = "postgresql"

    def __init__(self) -> None:
        self.schema = f"axonsim_test_{uuid.uuid4().hex[:12]}"
        dsn = sa.engine.make_url(PG_DSN)
        self.fwd = Forwarder((dsn.host or "127.0.0.1", dsn.port or 5432))
        self._dsn = dsn

    @property
    def url(self) -> str:
        u = self._dsn.set(drivername="postgresql+asyncpg", host="127.0.0.1", port=self.fwd.port)
        return u.render_as_string(hide_password=False)

    async def create(self) -> None:
        conn = await asyncpg.connect(PG_DSN)
        try:
            await conn.execute(f'CREATE SCHEMA "{self.schema}"')
        finally:
            await conn.close()
        await self.fwd.start()

    async def down(self) -> None:
        await self.fwd.stop()

    async def up(self) -> None:
        await self.fwd.start()

    async def fetch(self, sql: str) -> list[tuple[Any, ...]]:
        conn = await asyncpg.connect(PG_DSN, server_settings={"search_path": self.schema})
        try:
            return [tuple(r) for r in await conn.fetch(sql)]
        finally:
            await conn.close()

    async def raw_text(self) -> str:
        rows = await self.fetch("SELECT row_to_json(r)::text FROM requests r UNION ALL "
                                "SELECT row_to_json(a)::text FROM attempts a")
        return "\n".join(r[0] for r in rows)

    async def drop(self) -> None:
        await self.fwd.stop()
        conn = await asyncpg.connect(PG_DSN)
        try:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{self.schema}" CASCADE')
        finally:
            await conn.close()


@asynccontextmanager
async def _postgres() -> AsyncIterator[PostgresDB]:
    if PG_UNAVAILABLE:
        if REQUIRE_PG:
            pytest.fail(PG_UNAVAILABLE + " and AXONSIM_REQUIRE_POSTGRES=1")
        pytest.skip(PG_UNAVAILABLE)
    d = PostgresDB()
    await d.create()
    try:
        yield d
    finally:
        await d.drop()


@pytest.fixture(params=["sqlite", "postgresql"])
async def db(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Any]:
    if request.param == "postgresql":
        async with _postgres() as d:
            yield d
        return
    lite = SqliteDB(tmp_path / "store.db")
    try:
        yield lite
    finally:
        await lite.drop()


@pytest.fixture
async def pg() -> AsyncIterator[Any]:
    """PostgreSQL alone, for what only it can show (a database that goes away while idle, roles)."""
    async with _postgres() as d:
        yield d


SECRETS = ["sk-upstream-SECRET-0001", "gw-client-SECRET-0002"]


def make_store(db: Any, **settings: Any) -> Store:
    s = StoreSettings(url=db.url, **settings)
    # Short timeouts and backoff keep outage tests quick; none of them is asserted on.
    # SQLite's connect timeout is its busy wait, which every write makes while the test holds the lock.
    timeout = 0.2 if db.kind == "sqlite" else 1.0
    return Store(s, schema=db.schema, secrets=SECRETS, connect_timeout=timeout, write_timeout=10.0,
                 retry_base=0.02, retry_cap=0.2)


@asynccontextmanager
async def written(db: Any, records: list[RequestRecord]) -> AsyncIterator[Store]:
    """A started store on `db` with `records` written; closed afterwards."""
    store = make_store(db)
    await store.start()
    try:
        for r in records:
            store.submit(r)
        assert await store.flush(WAIT)
        yield store
    finally:
        await store.close()


async def until(cond: Callable[[], bool], what: str) -> None:
    try:
        async with asyncio.timeout(WAIT):
            while not cond():
                await asyncio.sleep(0.01)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for: {what}") from None


def rec(i: int = 0, **kw: Any) -> RequestRecord:
    base: dict[str, Any] = dict(project="p", model="m", client_format="openai_chat", status=200,
                                outcome="completed", created_at=1_700_000_000.0 + i, channel="c0",
                                attempts=[AttemptRow(n=1, channel="c0", upstream_model="m", status=200)])
    base.update(kw)
    return RequestRecord(**base)


async def ids_in(db: Any) -> list[str]:
    return sorted(r[0] for r in await db.fetch("SELECT id FROM requests"))


# --------------------------------------------------------------------------------------------------
# Pricing and configuration (pure)


def test_cost_formula() -> None:
    price = Price(input=2.0, cached_input=0.5, output=10.0, reasoning=20.0)
    u = Usage(prompt_tokens=1_000, cached_tokens=400, completion_tokens=300, reasoning_tokens=100)
    expected = (600 * 2.0 + 400 * 0.5 + 200 * 10.0 + 100 * 20.0) / 1_000_000
    assert cost(u, price) == pytest.approx(expected)
    # cached defaults to input and reasoning to output: then only prompt/completion totals matter
    plain = Price(input=2.0, output=10.0)
    assert (plain.cached_input, plain.reasoning) == (2.0, 10.0)
    assert cost(u, plain) == pytest.approx((1_000 * 2.0 + 300 * 10.0) / 1_000_000)
    # inconsistent upstream counts never make a term negative
    odd = Usage(prompt_tokens=10, cached_tokens=50, completion_tokens=5, reasoning_tokens=9)
    assert cost(odd, price) == pytest.approx((10 * 0.5 + 5 * 20.0) / 1_000_000)
    assert cost(Usage(), price) == 0.0


def test_cache_writes_are_billed_at_their_own_rate_defaulting_to_input() -> None:
    # Anthropic bills a 5-minute cache write at 1.25x input; its usage counts writes apart from
    # reads and from uncached input, all three of them part of prompt_tokens here
    u = Usage(prompt_tokens=1_000, cached_tokens=400, cache_write_tokens=300, completion_tokens=100)
    price = Price(input=3.0, cached_input=0.3, cache_write=3.75, output=15.0)
    assert cost(u, price) == pytest.approx((300 * 3.0 + 400 * 0.3 + 300 * 3.75 + 100 * 15.0) / 1_000_000)
    unset = Price(input=3.0, cached_input=0.3, output=15.0)
    assert unset.cache_write == 3.0
    assert cost(u, unset) == pytest.approx((600 * 3.0 + 400 * 0.3 + 100 * 15.0) / 1_000_000)
    # more writes than the prompt leaves after the reads: never a negative input term
    odd = Usage(prompt_tokens=500, cached_tokens=400, cache_write_tokens=300)
    assert cost(odd, price) == pytest.approx((400 * 0.3 + 100 * 3.75) / 1_000_000)
    with pytest.raises(ValueError):
        Price(input=1.0, cache_write=-1.0)


def test_price_lookup_prefers_the_upstream_model_and_unpriced_is_none() -> None:
    prices = {"gpt-x": Price(input=1, output=1), "alias": Price(input=100, output=100)}
    assert price_for(prices, "gpt-x", "alias") is prices["gpt-x"]
    assert price_for(prices, "unknown", "alias") is prices["alias"]
    assert cost_for(Usage(prompt_tokens=1_000_000), prices, "nope") is None
    assert cost_for(None, prices, "gpt-x") is None
    assert cost_for(Usage(prompt_tokens=1_000_000), prices, "gpt-x") == pytest.approx(1.0)


def test_request_cost_is_zero_where_nothing_was_billed_and_none_only_without_a_price() -> None:
    from server.proxy import Proxy, request_cost

    cfg = parse_config({"channels": [{"name": "a", "models": ["m", "free", "gpt-x"], "model_mapping": {"alias": "gpt-x"}},
                                     {"name": "own", "models": ["m-chan"], "price": {"input": 1, "output": 1}}],
                        "prices": {"m": {"input": 1_000_000, "output": 2_000_000}, "gpt-x": {"input": 1}}})
    rt = Proxy(cfg, seed=1).rt
    tried = [{"channel": "a", "upstream_model": "m"}]
    used = Usage(prompt_tokens=3, completion_tokens=4)
    assert request_cost(rt, used, tried, "m", True) == pytest.approx(11.0)
    # failed, or answered without usage (a stream cut before it came): billed nothing, and priced
    assert request_cost(rt, None, tried, "m", False) == 0.0
    assert request_cost(rt, None, tried, "m", True) == 0.0
    assert request_cost(rt, None, [], "m", False) == 0.0  # refused before any attempt
    assert request_cost(rt, None, [], "m-chan", False) == 0.0  # priced by its channel
    assert request_cost(rt, None, [], "alias", False) == 0.0  # priced under the upstream name it maps to
    assert request_cost(rt, None, [], "ghost", False) is None
    rt.prices = {**rt.prices, "ghost": rt.prices["m"]}  # in the table, though no channel serves it
    assert request_cost(rt, None, [], "ghost", False) == 0.0
    # only a model without a price is unpriced (the admin API's `unpriced`)
    assert request_cost(rt, used, [{"channel": "a", "upstream_model": "free"}], "free", True) is None
    assert request_cost(rt, None, [], "free", False) is None
    # refused before its model was read (a bad key, a body that is not JSON): nothing was billed
    assert request_cost(rt, None, [], None, False) == 0.0


def test_config_prices_and_store_section() -> None:
    cfg = parse_config({"channels": [{"name": "a", "models": ["m"]}],
                        "prices": {"m": {"input": 3, "output": 15, "cached_input": 0.3}}})
    assert cfg.prices["m"].reasoning == 15 and cfg.prices["m"].cached_input == 0.3
    s = cfg.store
    assert (s.url, s.store_bodies, s.queue_size, s.batch_size, s.flush_interval, s.on_unreachable) == (
        None, False, 10000, 200, 0.5, "fail")
    cfg = parse_config({"channels": [{"name": "a", "models": ["m"]}],
                        "store": {"url": "postgresql://u:pw@db/x", "on_unreachable": "degraded"}})
    assert cfg.store.url == "postgresql+asyncpg://u:pw@db/x"
    with pytest.raises(ConfigError, match=r"store\.url"):
        parse_config({"channels": [{"name": "a", "models": ["m"]}], "store": {"url": "mysql://x/y"}})
    with pytest.raises(ConfigError, match=r"prices\.m\.input"):
        parse_config({"channels": [{"name": "a", "models": ["m"]}], "prices": {"m": {"input": -1}}})


def test_default_database_is_a_file_next_to_the_config(tmp_path: Path) -> None:
    cfg = tmp_path / "conf" / "axonsim.yaml"
    assert resolve_url(None, cfg) == f"sqlite+aiosqlite:///{tmp_path / 'conf' / 'axonsim.db'}"
    assert resolve_url("sqlite+aiosqlite:///data/x.db", cfg) == f"sqlite+aiosqlite:///{tmp_path / 'conf/data/x.db'}"
    assert resolve_url("sqlite+aiosqlite:////abs/x.db", cfg) == "sqlite+aiosqlite:////abs/x.db"
    pg = "postgresql+asyncpg://u@h/db"
    assert resolve_url(pg, cfg) == pg


async def test_sqlite_connections_keep_wal_and_statement_journals_in_memory(tmp_path: Path) -> None:
    # The writer's multi-row INSERTs need statement journals: in memory, not temp files per batch.
    engine = make_engine(f"sqlite+aiosqlite:///{tmp_path / 'x.db'}")
    try:
        async with engine.connect() as conn:
            got = [(await conn.exec_driver_sql(f"PRAGMA {p}")).scalar() for p in
                   ("journal_mode", "synchronous", "temp_store", "foreign_keys")]
    finally:
        await engine.dispose()
    assert got == ["wal", 1, 2, 1]  # synchronous NORMAL, temp_store MEMORY


async def test_a_connection_opens_while_another_one_holds_the_new_file(tmp_path: Path) -> None:
    # Switching to WAL needs the file to itself. Workers starting together on a new file used to
    # fail with "database is locked" here (seen in CI); now a connection that cannot switch goes
    # on, and the next one alone switches the file.
    path = tmp_path / "x.db"
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("CREATE TABLE t (x)")
    other.execute("BEGIN")
    other.execute("SELECT * FROM t").fetchall()  # a read transaction: its lock stays until ROLLBACK
    url = f"sqlite+aiosqlite:///{path}"
    engine = make_engine(url, connect_timeout=0.1)
    try:
        async with engine.connect() as conn:
            assert (await conn.exec_driver_sql("PRAGMA journal_mode")).scalar() == "delete"
            assert (await conn.exec_driver_sql("SELECT count(*) FROM t")).scalar() == 0
    finally:
        await engine.dispose()
        other.execute("ROLLBACK")
        other.close()
    engine = make_engine(url, connect_timeout=0.1)
    try:
        async with engine.connect() as conn:
            assert (await conn.exec_driver_sql("PRAGMA journal_mode")).scalar() == "wal"
    finally:
        await engine.dispose()


def test_scrubber_masks_every_form_of_a_secret() -> None:
    s = Scrubber(['k"ey/1xyz', "sk-abc-123"])
    assert s.text('{"auth": "Bearer sk-abc-123"}') == '{"auth": "Bearer [REDACTED]"}'
    assert s.text('{"k": "k\\"ey/1xyz"}') == '{"k": "[REDACTED]"}'  # as it reads inside JSON
    assert s.text("?key=k%22ey%2F1xyz") == "?key=[REDACTED]"  # as it reads in a URL
    assert s.text(b"raw sk-abc-123\x00") == "raw [REDACTED]\ufffd"
    # Every spelling JSON allows inside a string (PHP escapes '/', Go escapes '<'), as an upstream's
    # error may quote a body: also in short texts such as errors, not only in stored bodies.
    odd = Scrubber(["sk-A/B+C=D<x>"])
    quoted = 'bad {"k": "sk-A\\/B+C=D<x>"} | "sk-A/B+C=D\\u003cx\\u003E"'
    assert odd.text(quoted) == 'bad {"k": "[REDACTED]"} | "[REDACTED]"'
    assert not odd.clean(quoted) and odd.clean('no key, just a \\n and a \\u003c')
    assert s.json({"sk-abc-123": ["x sk-abc-123", 1, float("nan")]}) == {"[REDACTED]": ["x [REDACTED]", 1, None]}
    cfg = parse_config({"gateway": {"api_keys": [{"key": "gw"}]},
                        "channels": [{"name": "a", "models": ["m"], "api_keys": ["up1", "up2"]}]})
    assert sorted(secrets_from_config(cfg)) == ["gw", "up1", "up2"]


def test_keys_too_short_to_tell_from_text_are_not_searched_for() -> None:
    """A local server's key ("none", "EMPTY", "x") is a word, not a secret: masking it mangled every
    text and JSON key that holds it (a one-letter key masked each "k" of an admin answer's `"key"`)."""
    short = "k" * (MIN_SECRET - 1)
    s = Scrubber(["x", "none", short, "sk-long-enough"])
    text = '{"key": "none of x", "note": "' + short + '", "auth": "sk-long-enough"}'
    assert s.text(text) == '{"key": "none of x", "note": "' + short + '", "auth": "[REDACTED]"}'
    assert s.clean('{"key": "none"}') and not s.clean("sk-long-enough")
    assert not Scrubber(["x", "none"])  # nothing to search for
    assert Scrubber(["k" * MIN_SECRET]).text("k" * MIN_SECRET) == "[REDACTED]"


# --------------------------------------------------------------------------------------------------
# Records: what the proxy writes for each way a request can end


def _router() -> Router:
    return Router(parse_config({
        "channels": [{"name": f"c{i}", "models": ["m"], "api_keys": [{"key": SECRETS[0], "name": f"c{i}-key"}]}
                     for i in range(2)],
        "routing": {"strategy": "round_robin"},
        "prices": {"m": {"input": 1.0, "output": 2.0}},
    }))


def _fail(status: int) -> Callable[[Any, float], Outcome]:
    def answer(call: Any, now: float) -> Outcome:
        return Outcome.failure(now + 0.5, Error(kind=error_kind_for_status(status), status=status,
                                                message=f"upstream {status} for key {SECRETS[0]}"))
    return answer


def _ok(call: Any, now: float) -> Outcome:
    return Outcome(True, now + 1.0)


def _record_from(result: Any, router: Router, usage: Usage | None, **kw: Any) -> RequestRecord:
    """What the proxy does with the core's Result: an AttemptRow per attempt, cost on the winner."""
    prices = router.config.prices
    rows = []
    for a in result.attempts:
        c = cost_for(usage, prices, a.upstream_model) if a.next == "done" else None
        err = None if a.kind is None else f"{a.kind.value}: status {a.status} key {SECRETS[0]}"
        rows.append(AttemptRow.from_core(a, cost=c, error=err, ttft=0.25 if a.next == "done" else None))
    u = usage or Usage()
    return RequestRecord(
        project="proj", model="m", client_format="openai_chat", key_name="team-a",
        status=200 if result.ok else result.error.status,
        outcome="completed" if result.ok else "failed",
        error=None if result.ok else result.error.message,
        channel=result.attempts[-1].channel if result.ok else None,
        prompt_tokens=u.prompt_tokens, completion_tokens=u.completion_tokens,
        cost=cost_for(usage, prices, "m"), attempts=rows, trace_id="tr-1", thread_id="th-1", **kw)


async def test_records_for_success_failure_failover_and_cancel(db: Any, driver: Any) -> None:
    router = _router()
    usage = Usage(prompt_tokens=1_000, completion_tokens=500)
    scripts = {"c0": [_fail(500), _fail(502)], "c1": [_ok]}
    success = _record_from(driver(router, "m", _ok), router, usage)
    failover = _record_from(driver(_router(), "m", lambda c, n: scripts[c.state.name].pop(0)(c, n)), router, usage)
    failure = _record_from(driver(_router(), "m", _fail(503)), router, None)
    cancel = RequestRecord(project="proj", model="m", client_format="anthropic", stream=True,
                           status=STATUS_CLIENT_CLOSED, outcome="cancelled", error="client disconnected",
                           attempts=[AttemptRow(n=1, channel="c0", upstream_model="m", status=200, ttft=0.3,
                                                latency=1.2, key_name="c0-key")], channel="c0")
    store = make_store(db)
    await store.start()
    for r in (success, failover, failure, cancel):
        assert store.submit(r)
    await store.close()
    assert (store.written, store.dropped) == (4, 0)

    reader = make_store(db)
    await reader.start()
    try:
        got = {r.id: r for r in await Q.list_requests(reader.engine, Q.Filter(), with_attempts=True)}
        assert set(got) == {success.id, failover.id, failure.id, cancel.id}

        s = got[success.id]
        assert (s.outcome, s.status, s.channel, s.prompt_tokens, s.trace_id, s.thread_id) == (
            "completed", 200, success.channel, 1_000, "tr-1", "th-1")
        assert s.cost == pytest.approx((1_000 * 1.0 + 500 * 2.0) / 1e6)
        assert [(a.n, a.status, a.decision["next"]) for a in s.attempts] == [(1, 200, "done")]

        f = got[failover.id]
        assert [(a.channel, a.status, a.decision["next"]) for a in f.attempts] == [
            ("c0", 500, "retry"), ("c0", 502, "failover"), ("c1", 200, "done")]
        assert [a.key_name for a in f.attempts] == ["c0-key", "c0-key", "c1-key"]
        assert f.attempts[0].error_kind == "server_error" and f.attempts[2].cost == pytest.approx(s.cost)
        assert f.attempts[0].latency == pytest.approx(0.5) and f.attempts[2].ttft == 0.25

        x = got[failure.id]
        assert (x.outcome, x.status, x.cost) == ("failed", 503, None)
        assert len(x.attempts) == 4 and x.attempts[-1].decision["next"] == "cap"

        c = got[cancel.id]
        assert (c.outcome, c.status, c.stream, c.client_format) == ("cancelled", 499, True, "anthropic")
        assert c.attempts[0].latency == 1.2

        one = await Q.get_request(reader.engine, failover.id)
        assert one is not None and [a.n for a in one.attempts] == [1, 2, 3]
        assert await Q.get_request(reader.engine, "missing") is None
    finally:
        await reader.close()


async def test_workers_starting_together_migrate_once(db: Any) -> None:
    stores = [make_store(db) for _ in range(4)]
    await asyncio.gather(*(s.start() for s in stores))
    try:
        assert {await current(s.engine) for s in stores} == {"0001"}
        for i, s in enumerate(stores):
            s.submit(rec(i))
    finally:
        for s in stores:
            await s.close()
    assert len(await ids_in(db)) == 4


# --------------------------------------------------------------------------------------------------
# The writer: off the hot path, drains, survives outages, bounded, idempotent


async def test_writer_drains_on_close_without_waiting_for_the_interval(db: Any) -> None:
    store = make_store(db, flush_interval=3600, batch_size=1000)
    await store.start()
    records = [rec(i) for i in range(120)]
    for r in records:
        store.submit(r)
    assert store.queued == 120  # submit only buffers
    await store.close()
    assert (store.written, store.dropped, store.queued) == (120, 0, 0)
    assert await ids_in(db) == sorted(r.id for r in records)
    assert len(await db.fetch("SELECT request_id FROM attempts")) == 120


async def test_batches_are_written_while_running(db: Any) -> None:
    store = make_store(db, batch_size=10, flush_interval=0.05)
    await store.start()
    try:
        for i in range(25):
            store.submit(rec(i))
        await until(lambda: store.written == 25, "25 records written by the running writer")
        assert await store.flush(WAIT)
        assert len(await ids_in(db)) == 25
    finally:
        await store.close()


@pytest.mark.parametrize("how", ["deleted", "replaced"])
async def test_an_sqlite_file_deleted_or_replaced_while_open_gets_the_records_that_follow(
        tmp_path: Path, how: str, caplog: pytest.LogCaptureFixture) -> None:
    """The pooled connection keeps the old file open: without a check, every later record went to
    a file nobody reads (deleted, or replaced by a restored backup), with no word in logs or metrics."""
    path = tmp_path / "usage.db"
    store = Store(StoreSettings(url=f"sqlite+aiosqlite:///{path}", flush_interval=0.02), secrets=SECRETS)
    await store.start()
    try:
        store.submit(rec(0, id="before"))
        assert await store.flush(WAIT)
        backup = tmp_path / "backup.db"
        with sqlite3.connect(path) as src, sqlite3.connect(backup) as dst:
            src.backup(dst)
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
        if how == "replaced":
            backup.rename(path)  # the restored backup, holding "before"
        store.submit(rec(1, id="after"))
        assert await store.flush(WAIT)
        with sqlite3.connect(path) as conn:
            ids = sorted(r[0] for r in conn.execute("SELECT id FROM requests"))
        assert ids == (["after", "before"] if how == "replaced" else ["after"])
        assert "deleted or replaced" in caplog.text
        store.submit(rec(2, id="later"))  # and on from there, without another warning
        assert await store.flush(WAIT)
        with sqlite3.connect(path) as conn:
            assert "later" in {r[0] for r in conn.execute("SELECT id FROM requests")}
        assert caplog.text.count("deleted or replaced") == 1
    finally:
        await store.close()


async def test_database_outage_loses_nothing_within_the_bound(db: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="axonsim.store")
    store = make_store(db, queue_size=100, batch_size=7, flush_interval=0.01)
    await store.start()
    try:
        before = [rec(i) for i in range(10)]
        for r in before:
            store.submit(r)
        assert await store.flush(WAIT)

        await db.down()
        during = [rec(100 + i) for i in range(60)]
        for r in during[:20]:
            assert store.submit(r)
        await until(lambda: not store.db_up, "the store noticing the outage")
        for r in during[20:]:
            assert store.submit(r)
        # the writer keeps retrying while down: give it several failed rounds
        failures_seen = store._failures
        await until(lambda: store._failures >= failures_seen + 3, "several failed retries")
        assert store.written == 10 and store.queued == 60 and store.dropped == 0

        await db.up()
        assert await store.flush(WAIT)
        assert store.db_up
        assert (store.written, store.dropped, store.queued) == (70, 0, 0)
        assert await ids_in(db) == sorted(r.id for r in before + during)
        # logged once per change of state, not once per retry
        downs = [m for m in caplog.messages if "unavailable" in m]
        ups = [m for m in caplog.messages if "is back" in m]
        assert len(downs) == 1 and len(ups) == 1
        assert all("SECRET" not in m for m in caplog.messages)
    finally:
        await db.up()
        await store.close()


async def test_past_the_bound_records_are_dropped_and_counted(db: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="axonsim.store")
    store = make_store(db, queue_size=20, batch_size=5, flush_interval=0.01)
    await store.start()
    try:
        await db.down()
        records = [rec(i) for i in range(30)]
        accepted = [store.submit(r) for r in records]
        assert accepted == [True] * 20 + [False] * 10
        assert (store.queued, store.dropped, store.submitted) == (20, 10, 30)
        assert sum("buffer full" in m for m in caplog.messages) == 1

        await db.up()
        assert await store.flush(WAIT)
        assert (store.written, store.dropped) == (20, 10)
        assert await ids_in(db) == sorted(r.id for r in records[:20])
        assert sum("has room again" in m for m in caplog.messages) == 1
    finally:
        await db.up()
        await store.close()


async def test_close_gives_up_after_its_timeout_and_counts_what_is_lost(db: Any) -> None:
    store = make_store(db, flush_interval=0.01)
    await store.start()
    await db.down()
    for i in range(5):
        store.submit(rec(i))
    await store.close(timeout=0.5)
    assert (store.written, store.dropped, store.queued) == (0, 5, 0)
    assert store.submit(rec(9)) is False and store.dropped == 6


async def test_a_retried_batch_does_not_duplicate(db: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    store = make_store(db, batch_size=50, flush_interval=0.01)
    await store.start()
    real_write = store._write
    lost_acks = 0

    async def commit_then_lose_the_ack(batch: list[Any]) -> None:
        # The commit reaches the database, but the writer sees a dropped connection: it must retry.
        nonlocal lost_acks
        await real_write(batch)
        if lost_acks < 2:
            lost_acks += 1
            raise ConnectionResetError("connection lost before the commit was acknowledged")

    monkeypatch.setattr(store, "_write", commit_then_lose_the_ack)
    try:
        records = [rec(i, attempts=[AttemptRow(n=k, channel=f"c{k}", upstream_model="m", status=500 if k < 2 else 200)
                                    for k in (1, 2)]) for i in range(30)]
        for r in records:
            store.submit(r)
        store.submit(records[0])  # the same request submitted twice still makes one row
        assert await store.flush(WAIT)
        assert lost_acks == 2
        assert await ids_in(db) == sorted(r.id for r in records)
        assert len(await db.fetch("SELECT request_id, n FROM attempts")) == 60
        assert store.dropped == 0
    finally:
        await store.close()


async def test_unreachable_database_at_start(db: Any, tmp_path: Path) -> None:
    if db.kind == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path / 'no' / 'such' / 'dir' / 'x.db'}"
    else:
        await db.down()  # nothing listens on the forwarder's port now
        url = db.url.replace("postgresql+asyncpg://postgres@", "postgresql+asyncpg://postgres:hunter2@")
    store = Store(StoreSettings(url=url), schema=db.schema, connect_timeout=1.0)
    with pytest.raises(StoreUnavailable) as err:
        await store.start()
    assert "unavailable" in str(err.value) and "hunter2" not in str(err.value)


async def test_degraded_start_buffers_until_the_database_appears(db: Any, tmp_path: Path,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="axonsim.store")
    if db.kind == "sqlite":
        where = tmp_path / "later"
        url = f"sqlite+aiosqlite:///{where / 'x.db'}"

        async def appear() -> None:
            where.mkdir()
    else:
        await db.down()
        url = db.url

        async def appear() -> None:
            await db.up()
    store = Store(StoreSettings(url=url, on_unreachable="degraded", flush_interval=0.01), schema=db.schema,
                  connect_timeout=1.0, retry_base=0.02, retry_cap=0.2)
    await store.start()
    try:
        assert not store.db_up
        assert any("degraded" in m for m in caplog.messages)
        records = [rec(i) for i in range(15)]
        for r in records:
            assert store.submit(r)
        await appear()
        assert await store.flush(WAIT)
        assert store.db_up and store.written == 15
        async with store.engine.connect() as conn:
            n = (await conn.execute(sa.text("SELECT count(*) FROM requests"))).scalar_one()
        assert n == 15
    finally:
        await store.close()


# --------------------------------------------------------------------------------------------------
# Secrets and bodies


async def test_secrets_are_never_stored(db: Any) -> None:
    up, gw = SECRETS
    store = make_store(db, store_bodies=True)
    await store.start()
    r = RequestRecord(
        project="p", model="m", client_format="openai_chat", status=502, outcome="failed",
        key_name=gw,  # a proxy that fell back to the key as its name must not leak it
        error=f"upstream said: invalid api key {up}",
        request_body=f'{{"messages": [{{"role": "user", "content": "my key is {up}"}}]}}'.encode(),
        response_body=f'{{"error": {{"message": "Incorrect API key provided: {up}"}}}}',
        trace_id=gw,
        attempts=[AttemptRow(n=1, channel="c0", upstream_model="m", status=401, key_name="c0#0",
                             error=f"401 Bearer {up}", decision={"headers": {"authorization": f"Bearer {up}"},
                                                                  up: [gw]})])
    store.submit(r)
    await store.close()
    text = await db.raw_text()
    assert r.id in text  # the record is really there...
    assert "[REDACTED]" in text and "my key is" in text  # ...with its body, masked
    assert up not in text and gw not in text


async def test_bodies_are_kept_only_when_configured(db: Any) -> None:
    store = make_store(db)  # store_bodies defaults to False
    await store.start()
    try:
        store.submit(rec(1, request_body=b'{"x": 1}', response_body='{"y": 2}'))
        assert await store.flush(WAIT)
        assert await db.fetch("SELECT request_body, response_body FROM requests") == [(None, None)]
    finally:
        await store.close()


async def test_a_record_prepared_in_a_thread_stays_counted(db: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """While a thread scrubs its bodies the record is still queued (the gauge, the bound); if close()
    gives up meanwhile, it is counted as dropped, not lost without a word."""
    import server.store.writer as writer

    started, never = asyncio.Event(), asyncio.Event()

    async def stuck(fn: Any, rec: Any) -> Any:
        started.set()
        await never.wait()  # a scrub that outlasts close()'s deadline

    monkeypatch.setattr(writer.asyncio, "to_thread", stuck)
    store = make_store(db, store_bodies=True)
    await store.start()
    store.submit(rec(1, request_body=b"x" * 100_000))
    await asyncio.wait_for(started.wait(), WAIT)
    assert store.queued == 1
    await store.close(timeout=0.2)
    assert (store.submitted, store.written, store.dropped) == (1, 0, 1)


async def test_large_bodies_are_scrubbed_and_stored_whole(db: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Bodies over _BODIES_IN_A_THREAD are prepared off the event loop; small ones on it."""
    import server.store.writer as writer

    threaded: list[str] = []
    to_thread = asyncio.to_thread

    async def counting(fn: Any, rec: Any) -> Any:
        threaded.append(rec.id)
        return await to_thread(fn, rec)

    monkeypatch.setattr(writer.asyncio, "to_thread", counting)
    store = make_store(db, store_bodies=True)
    await store.start()
    try:
        # A JSON escape hides the first key.
        big = ('{"content":"' + "é" * 100_000 + " \\u0073k-upstream-SECRET-0001 " + SECRETS[1] + '"}').encode()
        store.submit(rec(1, id="big", request_body=big, response_body="ok"))
        store.submit(rec(2, id="small", request_body=b'{"x": "' + SECRETS[0].encode() + b'"}', response_body="ok"))
        assert await store.flush(WAIT)
        rows = dict(await db.fetch("SELECT id, request_body FROM requests"))
        assert rows["small"] == '{"x": "[REDACTED]"}'
        assert rows["big"].startswith('{"content":"' + "é" * 100_000) and rows["big"].count("[REDACTED]") == 2
        assert "SECRET" not in rows["big"] and "u0073" not in rows["big"]
        assert threaded == ["big"]
    finally:
        await store.close()


# --------------------------------------------------------------------------------------------------
# Queries for the admin API


async def test_queries_filter_and_group(db: Any) -> None:
    t0 = 1_700_000_000.0  # 2023-11-14 22:13:20 UTC
    day = 86_400.0

    def att(ch: str, status: int, n: int = 1, cost: float | None = None, lost: bool = False) -> AttemptRow:
        kind = None if status < 400 or lost else error_kind_for_status(status).value
        return AttemptRow(n=n, channel=ch, upstream_model="up-" + ch, status=status, error_kind=kind, cost=cost,
                          latency=1.0, key_name=f"{ch}-k", decision={"next": "hedge_lost"} if lost else None)

    records = [
        rec(0, project="a", model="m1", created_at=t0, channel="c0", cost=1.0, prompt_tokens=10,
            attempts=[att("c0", 200, cost=1.0)]),
        rec(0, project="a", model="m2", created_at=t0 + 10, channel="c1", cost=2.0, prompt_tokens=20,
            attempts=[att("c0", 500), att("c1", 200, 2, 2.0)]),
        rec(0, project="b", model="m1", created_at=t0 + 20, channel=None, status=503, outcome="failed", cost=None,
            attempts=[att("c0", 503), att("c1", 503, 2)]),
        rec(0, project="b", model="m1", created_at=t0 + day, channel="c1", cost=4.0, prompt_tokens=40,
            attempts=[att("c1", 200, cost=4.0), att("c1", 0, 2, lost=True)], trace_id="T"),  # a lost hedge: no failure
        rec(0, project="a", model="m1", created_at=t0 + day + 5, channel="c0", status=499, outcome="cancelled",
            cost=None, attempts=[att("c0", 200)]),
    ]
    async with written(db, records) as store:
        e = store.engine

        async def ids(**kw: Any) -> list[str]:
            return [r.id for r in await Q.list_requests(e, Q.Filter(**kw))]

        newest_first = [r.id for r in reversed(records)]
        assert await ids() == newest_first
        assert await ids(project="a") == [records[4].id, records[1].id, records[0].id]
        assert await ids(model="m2") == [records[1].id]
        assert await ids(status=503) == [records[2].id]
        assert await ids(outcome="cancelled") == [records[4].id]
        assert await ids(trace_id="T") == [records[3].id]
        # a channel matches every request that touched it, failovers included
        assert await ids(channel="c1") == [records[3].id, records[2].id, records[1].id]
        assert await ids(since=t0 + 10, until=t0 + day) == [records[2].id, records[1].id]
        assert await ids(limit=2, offset=1) == newest_first[1:3]
        assert await Q.count_requests(e, Q.Filter(project="a")) == 3

        atts = await Q.list_attempts(e, Q.Filter(channel="c0"))
        assert [(a.request_id, a.attempt.n) for a in atts] == [
            (records[4].id, 1), (records[2].id, 1), (records[1].id, 1), (records[0].id, 1)]
        assert [a.attempt.status for a in await Q.list_attempts(e, Q.Filter(status=503))] == [503, 503]
        assert {a.project for a in await Q.list_attempts(e, Q.Filter(project="b"))} == {"b"}

        by_pm = {(u.group["project"], u.group["model"]): u for u in await Q.usage(e, Q.Filter())}
        a_m1 = by_pm[("a", "m1")]
        assert (a_m1.requests, a_m1.completed, a_m1.cancelled, a_m1.cost, a_m1.unpriced, a_m1.prompt_tokens) == (
            2, 1, 1, 1.0, 1, 10)
        b_m1 = by_pm[("b", "m1")]
        assert (b_m1.requests, b_m1.failed, b_m1.cost) == (2, 1, 4.0)

        first_day = await Q.usage(e, Q.Filter(since=t0, until=t0 + day), by=["day", "channel"])
        assert {(u.group["day"], u.group["channel"], u.requests, u.cost) for u in first_day} == {
            ("2023-11-14", "c0", 1, 1.0), ("2023-11-14", "c1", 1, 2.0), ("2023-11-14", None, 1, 0.0)}

        # Groups come in the same order on both databases; a group without a value comes last.
        assert [(u.group["channel"], u.cost) for u in await Q.usage(e, Q.Filter(), by=["channel"])] == [
            ("c1", 6.0), ("c0", 1.0), (None, 0.0)]
        assert [u.group["channel"] for u in await Q.usage(e, Q.Filter(outcome="failed"), by=["channel"])] == [None]
        assert [u.group["error_kind"] for u in await Q.attempt_usage(e, Q.Filter(), by=["error_kind"])] == [
            "overloaded", "server_error", None]
        assert [(u.group["project"], u.group["channel"]) for u in
                await Q.usage(e, Q.Filter(since=t0, until=t0 + day), by=["project", "channel"])] == [
            ("a", "c1"), ("a", "c0"), ("b", None)]

        per_channel = {u.group["channel"]: u for u in await Q.attempt_usage(e, Q.Filter())}
        assert (per_channel["c0"].attempts, per_channel["c0"].failures, per_channel["c0"].cost) == (4, 2, 1.0)
        assert (per_channel["c1"].attempts, per_channel["c1"].failures, per_channel["c1"].cost) == (4, 1, 6.0)
        assert per_channel["c1"].mean_latency == pytest.approx(1.0)


async def test_a_cursor_pages_without_repeats_while_rows_are_written(db: Any) -> None:
    """Paging newest first with next_cursor: each row once, ties in created_at included, however
    many newer rows are written between pages (with offsets, each of them made a row come twice)."""
    t0 = 1_700_000_000.0
    old = [rec(0, created_at=t0 + i // 3, attempts=[AttemptRow(n=n, channel="c0", upstream_model="m", status=200)
                                                     for n in (1, 2)]) for i in range(14)]  # 3 rows a second
    async with written(db, old) as store:
        e = store.engine
        for kind, lister, key in (
            ("requests", Q.list_requests, lambda r: r.id),
            ("attempts", Q.list_attempts, lambda v: (v.request_id, v.attempt.n)),
        ):
            seen: list[Any] = []
            cursor = None
            for page in range(40):
                rows = await lister(e, Q.Filter(limit=4, cursor=cursor, until=t0 + 100))
                seen += [key(r) for r in rows]
                store.submit(rec(0, created_at=t0 + 50 + len(seen) + page / 100))  # newer than all the old rows
                assert await store.flush(WAIT)
                if len(rows) < 4:
                    break
                last = rows[-1]
                cursor = (Q.cursor_of(last.created_at, last.id) if kind == "requests"
                          else Q.cursor_of(last.created_at, last.request_id, last.attempt.n))
            assert len(seen) == len(set(seen)), kind
            olds = [key(r) for r in await lister(e, Q.Filter(limit=1000, until=t0 + 50))]
            assert [k for k in seen if k in set(olds)] == olds, kind  # the old rows, each once, newest first

        with pytest.raises(Q.QueryError) as err:
            await Q.list_attempts(e, Q.Filter(cursor=Q.cursor_of(t0, old[0].id)))  # a requests cursor
        assert err.value.param == "cursor"


def _cursor(position_json: str) -> str:
    return base64.urlsafe_b64encode(position_json.encode()).decode().rstrip("=")


@pytest.mark.parametrize("cursor", ["", "nope", "bnVsbA", "WzEsMl0", "WyJ4IiwieSJd", "WzFlOTk5LCJ4Il0",
                                    "WzEsIngiLC0xXQ",
                                    # an id no database takes (a lone surrogate: a 500 on SQLite, a 503 on
                                    # PostgreSQL) and a time too large for a float (a 500)
                                    _cursor('[1.0, "\\ud800"]'), _cursor("[1" + "0" * 400 + ', "x"]')])
def test_a_cursor_the_api_did_not_give_is_refused(cursor: str) -> None:
    with pytest.raises(Q.QueryError) as err:
        Q.Filter.from_params({"cursor": cursor})
    assert err.value.param == "cursor"
    with pytest.raises(Q.QueryError) as err:
        Q.Filter.from_params({"cursor": Q.cursor_of(1.5, "req_1"), "offset": "3"})
    assert err.value.param == "cursor"


async def test_usage_groups_and_costs_read_the_same_on_every_database(db: Any) -> None:
    """Groups of equal cost in code point order (as SQLite sorts text) however the database collates
    (PostgreSQL under en-US puts `alpha` before `Team-A`); cost sums rounded, since each database adds
    the same floats in an order of its own and their last digits differed."""
    t0 = 1_700_000_000.0
    costs = [0.1, 0.2, 0.3]  # 0.1 + 0.2 + 0.3 == 0.6000000000000001: what a database's sum returns
    records = [rec(0, project=p, model="m", created_at=t0 + i, cost=c, channel=p,
                   attempts=[AttemptRow(n=1, channel=p, upstream_model="m", status=200, latency=1.0, cost=c)])
               for i, (p, c) in enumerate([("alpha", 0.5), ("Team-A", 0.5), ("team-b", 0.5)])]
    records += [rec(0, project="sums", model="m", created_at=t0 + 10 + i, cost=c, attempts=[])
                for i, c in enumerate(costs * 3)]
    async with written(db, records) as store:
        if db.kind == "postgresql":  # collated as en-US from here on: the rows are sorted again
            await db.fetch('ALTER TABLE requests ALTER COLUMN project TYPE varchar COLLATE "en-US-x-icu"')
            await db.fetch('ALTER TABLE attempts ALTER COLUMN channel TYPE varchar COLLATE "en-US-x-icu"')
        rows = await Q.usage(store.engine, Q.Filter(), by=["project"])
        assert [(u.group["project"], u.cost) for u in rows] == [
            ("sums", 1.8), ("Team-A", 0.5), ("alpha", 0.5), ("team-b", 0.5)]
        assert [u.group["channel"] for u in await Q.attempt_usage(store.engine, Q.Filter(), by=["channel"])] == [
            "Team-A", "alpha", "team-b"]


async def test_a_name_longer_than_an_index_row_is_found_by_its_whole_self(db: Any) -> None:
    """Names past MAX_KEY_TEXT characters are stored cut; a filter with the whole name found nothing."""
    from server.store.rows import MAX_KEY_TEXT

    long_project, long_model, long_channel = "p" * (MAX_KEY_TEXT + 88), "m" * (MAX_KEY_TEXT + 1), "c" * 600
    records = [rec(0, project=long_project, model=long_model, channel=long_channel,
                   attempts=[AttemptRow(n=1, channel=long_channel, upstream_model="m", status=200)]),
               rec(1, project="q" + long_project[1:], model="m", channel="c0")]  # (one cut alike would match too)
    async with written(db, records) as store:
        e = store.engine
        for kw in ({"project": long_project}, {"model": long_model}, {"channel": long_channel}):
            assert [r.id for r in await Q.list_requests(e, Q.Filter(**kw))] == [records[0].id], kw
        assert [a.request_id for a in await Q.list_attempts(e, Q.Filter(channel=long_channel))] == [records[0].id]
        [usage] = await Q.usage(e, Q.Filter(project=long_project), by=["project"])
        assert usage.requests == 1


@pytest.mark.parametrize(("params", "bad"), [
    ({"limit": "many"}, "limit"), ({"limit": "0"}, "limit"), ({"since": "yesterday"}, "since"),
    ({"outcome": "exploded"}, "outcome"), ({"colour": "red"}, "colour"), ({"offset": "-1"}, "offset"),
    ({"since": "200", "until": "100"}, "until"),
    # int() and float() read other scripts' digits, and int() underscores and spaces too
    ({"limit": "\uff15"}, "limit"), ({"status": "\u0664\u0660\u0660"}, "status"), ({"offset": "1_0"}, "offset"),
    ({"limit": " 5"}, "limit"), ({"since": "\uff11\uff17"}, "since"),
])
def test_bad_filters_name_the_parameter(params: dict[str, str], bad: str) -> None:
    with pytest.raises(Q.QueryError) as err:
        Q.Filter.from_params(params)
    assert err.value.param == bad


def test_filters_parse_times_and_group_names_are_checked() -> None:
    f = Q.Filter.from_params({"since": "2023-11-14T22:13:20Z", "until": "1700000100", "status": "429"})
    assert (f.since, f.until, f.status) == (1_700_000_000.0, 1_700_000_100.0, 429)
    with pytest.raises(Q.QueryError) as err:
        Q._groups(["project", "colour"], Q.USAGE_GROUPS)
    assert err.value.param == "group_by"


async def test_a_record_the_database_rejects_is_dropped_alone(db: Any) -> None:
    store = make_store(db, batch_size=10, flush_interval=0.01)
    await store.start()
    try:
        good = [rec(i) for i in range(5)]
        # A status no column holds (token counts are clamped; a status never comes this large but
        # through a bug): SQLite's driver and PostgreSQL's each refuse it.
        bad = rec(99, status=2**63)
        for r in good[:2] + [bad] + good[2:]:
            store.submit(r)
        assert await store.flush(WAIT)
        assert await ids_in(db) == sorted(r.id for r in good)
        assert (store.written, store.dropped) == (5, 1)
    finally:
        await store.close()


# --------------------------------------------------------------------------------------------------
# Rows: the writer's tuples and precompiled INSERTs store what SQLAlchemy's typed insert would


def _reference_rows(r: RequestRecord, scrub: Scrubber, bodies: bool) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The record → row mapping, field by field through the Scrubber, as dicts for a typed insert."""
    import math
    import time

    def num(v: float | None) -> float | None:
        return v if v is None or math.isfinite(v) else None

    t = scrub.text
    created = float(r.created_at) if r.created_at and math.isfinite(r.created_at) else time.time()
    req = {
        "id": str(r.id), "created_at": created, "day": time.strftime("%Y-%m-%d", time.gmtime(created)),
        "project": t(r.project) or "", "key_name": t(r.key_name), "client_format": t(r.client_format) or "",
        "model": t(r.model) or "", "stream": bool(r.stream), "status": int(r.status), "outcome": str(r.outcome),
        "error": t(r.error), "latency": num(r.latency), "ttft": num(r.ttft), "overhead": num(r.overhead),
        "prompt_tokens": int(r.prompt_tokens), "completion_tokens": int(r.completion_tokens),
        "cached_tokens": int(r.cached_tokens), "reasoning_tokens": int(r.reasoning_tokens), "cost": num(r.cost),
        "trace_id": t(r.trace_id), "thread_id": t(r.thread_id), "channel": t(r.channel),
        "request_body": t(r.request_body) if bodies else None, "response_body": t(r.response_body) if bodies else None,
    }
    atts = [{
        "request_id": req["id"], "n": int(a.n), "created_at": created, "channel": t(a.channel) or "",
        "key_name": t(a.key_name), "upstream_model": t(a.upstream_model) or "", "status": int(a.status),
        "error": t(a.error), "error_kind": t(a.error_kind), "latency": num(a.latency), "ttft": num(a.ttft),
        "cost": num(a.cost), "decision": scrub.json(a.decision) if a.decision is not None else None,
    } for a in r.attempts]
    return req, atts


def _varied_records() -> list[RequestRecord]:
    up, gw = SECRETS
    midnight = 1_700_006_400.0  # 2023-11-15 00:00:00 UTC
    att = AttemptRow
    return [
        rec(0),  # plain: the fast path
        rec(1, created_at=midnight - 0.5, attempts=[att(n=1, channel="c0", upstream_model="m", status=200,
                                                        decision={"next": "done", "choice": {"w": [0.5, 1, None]}})]),
        rec(2, created_at=midnight),  # the next day, then back to the day before: the day cache follows
        rec(3, created_at=midnight - 86_400.0, stream=True, latency=float("nan"), cost=float("inf"),
            trace_id="", thread_id=None),
        rec(4, error=f"bad key {up}", key_name=gw),  # secrets: scrubbed field by field
        rec(5, model="nul\x00model", request_body=b"body \x00 with a NUL", response_body="r\u00e9ponse"),
        rec(6, attempts=[att(n=1, channel="c0", upstream_model="m", status=401, key_name="c0#0",
                             error="x\x00y", decision={"auth": f"Bearer {up}", up: [gw, ("t", 1.5)]})]),
        rec(7, attempts=[att(n=1, channel="c0", upstream_model="m", status=200,
                             decision={True: 1, None: float("nan"), "caf\u00e9": "\u2603 \"q\""})]),  # general path
        rec(8, created_at=0.0, attempts=[]),  # no arrival time: now; no attempts
        rec(9, attempts=[att(n=k, channel=f"c{k}", upstream_model="m", status=500 + k, error_kind="server_error",
                             latency=0.1 * k, ttft=None, cost=0.0, decision={"next": "retry", "k": k})
                         for k in (1, 2, 3)]),
    ]


@pytest.mark.parametrize("bodies", [False, True])
async def test_rows_match_sqlalchemys_typed_insert(db: Any, tmp_path: Path, bodies: bool) -> None:
    from server.store.engine import make_engine
    from server.store.migrations import upgrade
    from server.store.models import attempts_table, requests_table

    records = _varied_records()
    store = make_store(db, store_bodies=bodies)
    await store.start()
    try:
        for r in records:
            assert store.submit(r)
        assert await store.flush(WAIT)
        assert (store.written, store.dropped) == (len(records), 0)
    finally:
        await store.close()

    ref = SqliteDB(tmp_path / "ref.db") if db.kind == "sqlite" else PostgresDB()
    if db.kind == "postgresql":
        await ref.create()
    try:
        eng = make_engine(ref.url, schema=ref.schema)
        try:
            await upgrade(eng)
            scrub = Scrubber(SECRETS)
            rows = [_reference_rows(r, scrub, bodies) for r in records]
            async with eng.begin() as conn:
                await conn.execute(sa.insert(requests_table), [q for q, _ in rows])
                await conn.execute(sa.insert(attempts_table), [a for _, atts in rows for a in atts])
        finally:
            await eng.dispose()
        order = {"requests": "id", "attempts": "request_id, n"}
        for table, by in order.items():
            # The stored text of every column (the JSON as written, not as parsed), and its type.
            cols = [c.name for c in (requests_table if table == "requests" else attempts_table).c]
            if db.kind == "sqlite":
                sel = ", ".join(f"quote({c}), typeof({c})" for c in cols)
            else:
                sel = ", ".join(f"{c}::text, pg_typeof({c})::text" for c in cols)
            sql = f"SELECT {sel} FROM {table} ORDER BY {by}"
            got, want = await db.fetch(sql), await ref.fetch(sql)
            assert len(got) == (len(records) if table == "requests" else sum(len(r.attempts) for r in records))
            if table == "requests":
                # Record 8 had no arrival time: each side stamped its own "now"; compare the rest.
                got = [r[:2] + r[4:] if records[8].id in r[0] else r for r in got]
                want = [r[:2] + r[4:] if records[8].id in r[0] else r for r in want]
            assert got == want, table
        text = await db.raw_text()
        assert SECRETS[0] not in text and SECRETS[1] not in text
    finally:
        await ref.drop()


def test_plain_json_is_json_dumps_or_declines() -> None:
    import json

    from server.store.rows import plain_json

    same = [None, True, False, 0, -7, 2**70, 1.5, -0.0, 1e300, "", "x", "caf\u00e9 \u2603 \U0001f600", 'q"\\/\n\t\x00',
            [], {}, (1, "a"), {"a": [1, {"b": None}], "c": 2.25}, {"next": "done"}, [[[]]]]
    for v in same:
        assert plain_json(v) == json.dumps(v), v
    for v in [{True: 1}, {None: 1}, {1: "a"}, float("nan"), [float("inf")], {"a": {1, 2}}, b"x", object()]:
        assert plain_json(v) is None, v


def test_scrubber_clean_finds_every_form_raw_or_json_escaped() -> None:
    import json

    secret = 'k"ey/\u00e9-1'
    s = Scrubber([secret, "sk-abc-12"])
    assert s.clean("nothing here\nat all") and Scrubber().clean("no secrets configured")
    forms = [secret, json.dumps(secret)[1:-1], "k%22ey%2F%C3%A9-1", "sk-abc-12"]
    for f in forms:
        assert not s.clean(f"a {f} b")
        # Inside a value that was serialised: every form, including a form already escaped once.
        assert not s.clean(json.dumps({"x": f"a {f} b"}))
        assert not s.clean(json.dumps({f"a {f}": 1}))
    assert not s.clean("a\x00b") and not s.clean(json.dumps("a\x00b")) and not Scrubber().clean("\x00")
    # Whenever the serialised value is clean, scrubbing it field by field changes nothing.
    for v in [{"a": "sk-abc-1", "b": ["k\"ey", 1.0]}, {"x": "sk-abc-123"}, {"k%22ey": secret[:-1]}]:
        assert s.clean(json.dumps(v)) == (s.json(v) == v)


def test_sqlite_batches_go_as_a_few_multi_row_statements() -> None:
    from sqlalchemy.dialects.sqlite import aiosqlite

    from server.store.rows import MAX_ROWS_PER_STATEMENT, REQUEST_COLUMNS, InsertSQL

    ins = InsertSQL(aiosqlite.dialect()).requests
    width = len(REQUEST_COLUMNS)
    for n in [1, 2, 3, 7, 8, 200, 511, 512, 513, 1500]:
        rows = [tuple(f"r{i}c{c}" for c in range(width)) for i in range(n)]
        stmts = ins.statements(rows)
        sent: list[tuple[Any, ...]] = []
        for sql, params in stmts:
            if isinstance(params, list):  # executemany with the one-row statement
                assert sql.count("?") == width
                sent += params
            else:  # one multi-row statement, as many placeholders as values
                assert sql.count("?") == len(params) and len(params) % width == 0
                k = len(params) // width
                assert k & (k - 1) == 0 and k <= MAX_ROWS_PER_STATEMENT  # a power of two: few distinct texts
                sent += [tuple(params[i:i + width]) for i in range(0, len(params), width)]
        assert sent == rows  # every row once, in order
        assert len(stmts) <= bin(n).count("1") + n // MAX_ROWS_PER_STATEMENT


def test_null_and_bool_adapters_bind_what_sqlite3_would_bind_anyway() -> None:
    """The store registers sqlite3 adapters for None and bool (server/store/engine.py: they spare
    the module's adapter search). What gets stored must not change: NULL, and the bool as 0/1."""
    from server.store.engine import bind_null_and_bool_directly

    bind_null_and_bool_directly()
    assert (type(None), sqlite3.PrepareProtocol) in sqlite3.adapters
    assert (bool, sqlite3.PrepareProtocol) in sqlite3.adapters
    conn = sqlite3.connect(":memory:")
    try:
        conn.execute("CREATE TABLE t (a, b, c)")
        conn.execute("INSERT INTO t VALUES (?, ?, ?)", (None, True, False))
        conn.executemany("INSERT INTO t VALUES (?, ?, ?)", [(None, None, True)])
        assert conn.execute("SELECT a, b, c, typeof(a), typeof(b) FROM t").fetchall() == [
            (None, 1, 0, "null", "integer"), (None, None, 1, "null", "null")]
    finally:
        conn.close()


async def test_a_large_batch_with_many_attempts_is_written_whole(db: Any) -> None:
    store = make_store(db, batch_size=1500, flush_interval=5.0)
    await store.start()
    try:
        records = [rec(i, attempts=[AttemptRow(n=k, channel=f"c{k}", upstream_model="m", status=200,
                                               decision={"next": "done" if k == i % 4 else "retry"})
                                    for k in range(1, i % 4 + 1)]) for i in range(1500)]
        for r in records:
            store.submit(r)
        assert await store.flush(WAIT)
        assert await ids_in(db) == sorted(r.id for r in records)
        n_attempts = sum(len(r.attempts) for r in records)
        assert (await db.fetch("SELECT count(*) FROM attempts"))[0][0] == n_attempts
        for r in records[:3]:  # the same batch again (a lost acknowledgement): nothing changes
            store.submit(r)
        assert await store.flush(WAIT)
        assert (await db.fetch("SELECT count(*) FROM attempts"))[0][0] == n_attempts
        assert (store.written, store.dropped) == (1503, 0)
    finally:
        await store.close()


async def test_sqlite_statements_also_work_through_sqlalchemy(db: Any) -> None:
    # Without aiosqlite's function call (another driver version), the same statements go through
    # exec_driver_sql one by one: multi-row tuples and executemany lists alike.
    store = make_store(db, batch_size=300, flush_interval=5.0)
    await store.start()
    try:
        assert store._sql is not None
        store._sql.sqlite = False
        records = [rec(i) for i in range(259)]  # 256 + 2 + 1 rows: every kind of statement
        for r in records:
            store.submit(r)
        assert await store.flush(WAIT)
        assert await ids_in(db) == sorted(r.id for r in records)
        assert (await db.fetch("SELECT count(*) FROM attempts"))[0][0] == 259
    finally:
        await store.close()


async def test_values_beyond_what_the_tables_take_are_cut_not_the_record_dropped(db: Any) -> None:
    # A client can name a model (or send a trace id) longer than an index row holds; a provider can
    # report a token count beyond INTEGER. The record is still written, once.
    store = make_store(db)
    await store.start()
    try:
        long_model = "m" * 10_000
        r = rec(0, model=long_model, trace_id="t" * 5000, prompt_tokens=3_000_000_000)
        r.attempts[0].upstream_model = long_model
        assert store.submit(r) and await store.flush(30)
        # 700 characters of 4 bytes each: 2,800 bytes, over PostgreSQL's index row, under 2,048 characters
        assert store.submit(rec(1, model="\U00020000" * 700)) and await store.flush(30)
        assert store.written == 2 and store.dropped == 0
        (first, second) = await db.fetch("SELECT model, trace_id, prompt_tokens FROM requests ORDER BY created_at")
        model, trace, prompt = first
        assert len(model) == 512 and model.startswith("mmm") and model.endswith("…") and len(trace) == 512
        assert prompt == 2**31 - 1
        assert len(second[0]) == 512 and second[0].startswith("\U00020000")
        assert await db.fetch("SELECT length(upstream_model) FROM attempts ORDER BY created_at") == [(512,), (1,)]
        # a value is cut by its own length, not by what else the record holds
        assert store.submit(rec(2, model="x" * 600)) and await store.flush(30)
        assert await db.fetch("SELECT length(model) FROM requests WHERE model LIKE 'xx%'") == [(512,)]
    finally:
        await store.close()


async def test_an_idle_store_finds_out_that_its_database_went_away(pg: Any) -> None:
    # No records to write: db_up (metrics, /admin/store) must still turn 0 during an outage.
    # (PostgreSQL: it can be taken away; a locked SQLite file still answers a query.)
    db = pg
    s = StoreSettings(url=db.url)
    store = Store(s, schema=db.schema, secrets=SECRETS, connect_timeout=1.0, retry_base=0.02, retry_cap=0.2,
                  idle_check=0.05)
    await store.start()
    try:
        assert store.db_up
        await db.down()
        await until(lambda: not store.db_up, "an idle store noticing the outage")
        await db.up()
        await until(lambda: store.db_up, "and noticing it is back")
    finally:
        await store.close()


@pytest.mark.parametrize("sqlstate, fault", [
    ("25006", "down"),  # read-only: a hot standby, or a primary that failed over
    ("55P03", "down"),  # a lock timeout (VACUUM FULL, ALTER TABLE holding the table)
    ("53100", "down"),  # disk full
    ("23514", "record"),  # a check constraint: this record's data
])
async def test_what_a_postgresql_error_blames_is_told_by_its_sqlstate(pg: Any, sqlstate: str, fault: str) -> None:
    """SQLAlchemy's asyncpg adapter names most PostgreSQL errors plain "Error"; the writer then asked
    `SELECT 1`, which a read-only database answers, and dropped every record as if each were at
    fault, with db_up saying 1 throughout."""
    db = pg
    store = make_store(db, queue_size=100, batch_size=5, flush_interval=0.01)
    await store.start()
    conn = await asyncpg.connect(PG_DSN, server_settings={"search_path": db.schema})
    try:
        await conn.execute(f"""
            CREATE FUNCTION refuse() RETURNS trigger AS $$
            BEGIN RAISE EXCEPTION 'refused for the test' USING ERRCODE = '{sqlstate}'; END $$ LANGUAGE plpgsql;
            CREATE TRIGGER refuse BEFORE INSERT ON requests FOR EACH ROW EXECUTE FUNCTION refuse();""")
        records = [rec(i) for i in range(12)]
        for r in records:
            assert store.submit(r)
        if fault == "down":
            await until(lambda: not store.db_up, "the store seeing the database refuse writes")
            failures = store._failures
            await until(lambda: store._failures >= failures + 2, "a few retries")
            assert (store.written, store.dropped, store.queued) == (0, 0, 12)
            await conn.execute("DROP TRIGGER refuse ON requests")
            assert await store.flush(WAIT)
            assert store.db_up and (store.written, store.dropped) == (12, 0)
            assert await ids_in(db) == sorted(r.id for r in records)
        else:
            assert await store.flush(WAIT)
            assert store.db_up and (store.written, store.dropped) == (0, 12)  # each dropped alone
    finally:
        await conn.close()
        await store.close(timeout=5)


async def test_a_degraded_start_on_tables_the_store_cannot_use_keeps_the_records(pg: Any,
                                                                                 caplog: pytest.LogCaptureFixture) -> None:
    """AxonSim's tables without a migration version: StoreUnusable at every try. The records were
    dropped one by one as rejected ("... is back", db_up 1); they wait, within the bound, until an
    operator mends the database."""
    caplog.set_level(logging.INFO, logger="axonsim.store")
    db = pg
    conn = await asyncpg.connect(PG_DSN, server_settings={"search_path": db.schema})
    store = Store(StoreSettings(url=db.url, on_unreachable="degraded", flush_interval=0.01), schema=db.schema,
                  connect_timeout=1.0, retry_base=0.02, retry_cap=0.2)
    try:
        await conn.execute("CREATE TABLE requests (id text PRIMARY KEY)")
        await store.start()
        assert not store.db_up and "alembic_version" in (store.last_error or "")
        records = [rec(i) for i in range(10)]
        for r in records:
            assert store.submit(r)
        failures = store._failures
        await until(lambda: store._failures >= failures + 3, "several retries")
        assert (store.written, store.dropped, store.queued, store.db_up) == (0, 0, 10, False)
        assert not any("is back" in m for m in caplog.messages)
        await conn.execute("DROP TABLE requests")  # the operator's mend
        assert await store.flush(WAIT)
        assert store.db_up and (store.written, store.dropped) == (10, 0)
        assert await ids_in(db) == sorted(r.id for r in records)
    finally:
        await conn.close()
        await store.close(timeout=5)


async def test_pooled_connections_the_network_lost_cost_one_timeout_not_one_each(pg: Any) -> None:
    """Connections a NAT or firewall forgot answer nothing, while new ones reach the database. The
    pool pings each on checkout without a deadline, so every stale connection cost a whole write
    timeout in turn (reviewed: ~150 s with a full pool). After the first timeout the pool is
    replaced and the next try writes."""
    db = pg
    store = Store(StoreSettings(url=db.url, flush_interval=0.01), schema=db.schema, secrets=SECRETS,
                  connect_timeout=1.0, write_timeout=1.0, retry_base=0.02, retry_cap=0.05)
    await store.start()
    timeouts = 0
    write = store._write

    async def counted(batch: Any) -> None:
        nonlocal timeouts
        try:
            await write(batch)
        except TimeoutError:
            timeouts += 1
            raise

    store._write = counted  # type: ignore[method-assign]
    try:
        async def hold() -> None:
            async with store.engine.connect() as conn:
                await conn.execute(sa.text("SELECT pg_sleep(0.2)"))
        await asyncio.gather(*(hold() for _ in range(5)))  # five connections in the pool
        db.fwd.lose_open()
        store.submit(rec(0))
        assert await store.flush(WAIT)
        assert store.written == 1 and timeouts == 1
    finally:
        await store.close(timeout=5)


async def test_an_admin_read_of_a_database_that_stopped_answering_is_a_prompt_503(
        pg: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    # A pooled connection to a database that keeps it open and answers nothing (stalled, or packets
    # dropped on the way): the read ends at the admin API's query timeout, as the documented 503,
    # rather than waiting as long as TCP keeps the connection (review: over five minutes).
    import server.admin as admin

    db = pg
    store = Store(StoreSettings(url=db.url), schema=db.schema, secrets=SECRETS, connect_timeout=1.0)
    await store.start()
    try:
        store.submit(rec(0))
        assert await store.flush(WAIT)
        assert len(await admin._query(Q.list_requests(store.engine, Q.Filter()))) == 1  # a pooled connection
        monkeypatch.setattr(admin, "QUERY_TIMEOUT", 0.5)
        db.fwd.stall()
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        with pytest.raises(admin.AdminError) as exc:
            await asyncio.wait_for(admin._query(Q.list_requests(store.engine, Q.Filter())), WAIT)
        assert exc.value.status == 503 and loop.time() - t0 < WAIT / 2
        db.fwd.resume()
        # the database answering again: reads work again
        assert len(await admin._query(Q.list_requests(store.engine, Q.Filter()))) == 1
    finally:
        db.fwd.resume()
        await store.close(timeout=5)
