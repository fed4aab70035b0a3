"""The proxy wired for production, over real HTTP on loopback: usage records in SQLite and PostgreSQL, metrics, admin API, traces, reload, probes, `axonsim serve`.

PostgreSQL: AXONSIM_TEST_PG (default postgresql://postgres@127.0.0.1:5432/test), one schema per test,
dropped afterwards; skipped with the reason when unreachable, a failure when AXONSIM_REQUIRE_POSTGRES=1.
Two processes sharing a cooldown through Redis is tests/test_shared_state.py's end-to-end test
(two `axonsim serve` processes); here `--workers 2` is shown to serve and record.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import random
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import orjson
import pytest
from processes import free_port
from processes import start as _start
from processes import stop as _stop
from processes import wait_healthy as _wait_healthy
from prometheus_client.parser import text_string_to_metric_families

from axonsim.behavior import BehaviorModel
from axonsim.config import Behavior, Channel, load_config, parse_config
from axonsim.execution import Outcome, Router, Wait
from axonsim.unified import ErrorKind
from server.mock_provider import MockProvider
from server.proxy import Proxy, carry_over
from server.store import Store
from server.testing import GatewayServer, Stack
from server.upstream import MockReply, MockUpstream, UpstreamRequest

pytestmark = pytest.mark.timeout(120)

ROOT = Path(__file__).resolve().parent.parent
PG_DSN = os.environ.get("AXONSIM_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
REQUIRE_PG = os.environ.get("AXONSIM_REQUIRE_POSTGRES") == "1"

# Recognisable secrets, none with an "sk-" prefix: only the gateway's own scrubbing can catch them.
GW_KEY = "gw-client-secret-3e9d1a77"
ADMIN_KEY = "admin-secret-77c1f0b2"
AUTH = {"Authorization": f"Bearer {GW_KEY}"}
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
FAST = {"ttft": 0.01, "tokens_per_second": 2000, "output_tokens": 20}


def secret(name: str) -> str:
    return f"upstream-secret-{name}-5b2e8c"


def ch(name: str, model: str, behavior: dict[str, Any] | None = None, **kw: Any) -> dict[str, Any]:
    return {"name": name, "type": "openai", "api_keys": [secret(name)], "models": [model],
            "behavior": {**FAST, **(behavior or {})}, **kw}


CHANNELS = [
    ch("good", "ok"),
    ch("flaky", "fo", {"error_rate": 1.0}, priority=0),
    ch("steady", "fo", priority=1),
    ch("bad", "fail", {"error_rate": 1.0}),
    ch("slow", "slow", {"ttft": 0.02, "tokens_per_second": 20, "output_tokens": 400}),
    ch("medium", "medium", {"ttft": 0.02, "tokens_per_second": 60, "output_tokens": 40}),
    ch("leaky", "leak"),
]
SECRETS = [*(secret(c["name"]) for c in CHANNELS), GW_KEY, ADMIN_KEY]
GATEWAY = {"api_keys": [{"key": GW_KEY, "project": "acme", "name": "acme-app"}], "admin_keys": [ADMIN_KEY]}
# Breakers and auto-disable off: these channels fail on purpose and every request should reach them.
ROUTING = {"retry": {"max_same_channel": 0, "backoff": {"base": 0.001, "cap": 0.01}},
           "health": {"breaker": {"enabled": False}, "key_breaker": {"enabled": False}, "auto_disable": [],
                      "outlier": {"enabled": False}}}
PRICES = {"ok": {"input": 1.0, "output": 2.0}}
MOCK_KW = {"leaky": {"accept_keys": ["something-else"], "leak_keys": True}}  # rejects our key, quotes it back


def chat(c: httpx.Client, model: str = "ok", stream: bool = False, headers: dict[str, str] | None = None,
         content: str = "Hello there", **extra: Any) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": content}], "stream": stream, **extra}
    return c.post("/v1/chat/completions", json=body, headers=AUTH if headers is None else headers)


def until(cond: Callable[[], Any], what: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for: {what}")
        time.sleep(0.01)


def cancel_mid_stream(gw: GatewayServer, model: str = "slow") -> str:
    """A client that reads the first content of a stream, then hangs up; the request's id."""
    body = {"model": model, "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    with httpx.Client(base_url=gw.url, timeout=10) as c, c.stream("POST", "/v1/chat/completions", json=body,
                                                                  headers=AUTH) as r:
        assert r.status_code == 200
        got = b""
        for piece in r.iter_raw():
            got += piece
            if b'"content":"The' in got:
                break
        return r.headers["x-request-id"]


# --------------------------------------------------------------------------------------------------
# Databases


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


class DB:
    """A store database the test can read behind the gateway's back."""

    def __init__(self, kind: str, tmp_path: Path) -> None:
        self.kind = kind
        if kind == "sqlite":
            self.path = tmp_path / "gateway.db"
            self.url = f"sqlite+aiosqlite:///{self.path}"
            self.store_kw: dict[str, Any] = {}
        else:
            self.schema = "prod_" + uuid.uuid4().hex[:12]
            self.url = PG_DSN
            self.store_kw = {"schema": self.schema}
            self._pg(f'CREATE SCHEMA "{self.schema}"')

    def _pg(self, sql: str, fetch: bool = False) -> list[dict[str, Any]]:
        async def go() -> list[dict[str, Any]]:
            conn = await asyncpg.connect(PG_DSN, timeout=5)
            try:
                if not fetch:
                    await conn.execute(sql)
                    return []
                await conn.execute(f'SET search_path TO "{self.schema}"')
                return [dict(r) for r in await conn.fetch(sql)]
            finally:
                await conn.close()

        return asyncio.run(go())

    def rows(self, sql: str) -> list[dict[str, Any]]:
        if self.kind == "postgresql":
            return self._pg(sql, fetch=True)
        conn = sqlite3.connect(self.path, timeout=5)
        conn.row_factory = sqlite3.Row
        try:
            return [dict(r) for r in conn.execute(sql).fetchall()]
        finally:
            conn.close()

    def raw_text(self) -> str:
        if self.kind == "postgresql":
            return "\n".join(str(r) for r in self.rows("SELECT * FROM requests") + self.rows("SELECT * FROM attempts"))
        out = b""
        for suffix in ("", "-wal", "-journal"):
            p = Path(str(self.path) + suffix)
            if p.exists():
                out += p.read_bytes()
        return out.decode("latin-1")

    def drop(self) -> None:
        if self.kind == "postgresql":
            self._pg(f'DROP SCHEMA IF EXISTS "{self.schema}" CASCADE')


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[DB]:
    if request.param == "postgresql" and PG_UNAVAILABLE:
        if REQUIRE_PG:
            pytest.fail(PG_UNAVAILABLE + " and AXONSIM_REQUIRE_POSTGRES=1")
        pytest.skip(PG_UNAVAILABLE)
    d = DB(request.param, tmp_path)
    try:
        yield d
    finally:
        d.drop()


def serve(st: Stack, db: DB, *, store: dict[str, Any] | None = None, **kw: Any) -> GatewayServer:
    kw.setdefault("routing", ROUTING)
    return st.serve(CHANNELS, gateway=GATEWAY, mock_kw=MOCK_KW, store=True, store_kw=db.store_kw,
                    extra={"prices": PRICES, "store": {"url": db.url, "flush_interval": 0.02, **(store or {})}}, **kw)


# --------------------------------------------------------------------------------------------------
# Usage records


def test_one_record_per_request_for_every_outcome(db: DB) -> None:
    with Stack() as st:
        gw = serve(st, db)
        with httpx.Client(base_url=gw.url, timeout=20) as c:
            ok = chat(c, "ok", headers={**AUTH, "X-AxonSim-Trace-Id": "trace-1", "X-AxonSim-Thread-Id": "thread-1"})
            fo = chat(c, "fo")
            bad = chat(c, "fail")
            nokey = chat(c, "ok", headers={})
            streamed = chat(c, "ok", stream=True, stream_options={"include_usage": True})
        cancelled = cancel_mid_stream(gw)
        until(lambda: gw.proxy.find(cancelled) is not None, "the cancelled request's record")
        assert st.call(gw.proxy.store.flush(20))
        for r, status in ((ok, 200), (fo, 200), (bad, 502), (nokey, 401), (streamed, 200)):
            assert r.status_code == status, r.text

        rows = {r["id"]: r for r in db.rows("SELECT * FROM requests")}
        ids = {name: r.headers["x-request-id"] for name, r in
               (("ok", ok), ("fo", fo), ("bad", bad), ("nokey", nokey), ("streamed", streamed))}
        ids["cancelled"] = cancelled
        assert set(rows) == set(ids.values())  # exactly one row per client request, nothing else
        attempts: dict[str, list[dict[str, Any]]] = {}
        for a in db.rows("SELECT * FROM attempts ORDER BY request_id, n"):
            attempts.setdefault(a["request_id"], []).append(a)

        r = rows[ids["ok"]]
        assert (r["status"], r["outcome"], r["channel"], r["project"], r["key_name"]) == (200, "completed", "good",
                                                                                         "acme", "acme-app")
        assert (r["trace_id"], r["thread_id"]) == ("trace-1", "thread-1")
        assert r["completion_tokens"] == 20 and r["prompt_tokens"] > 0
        assert r["cost"] == pytest.approx((r["prompt_tokens"] * 1.0 + 20 * 2.0) / 1e6)
        assert 0 <= r["overhead"] <= r["latency"] and r["ttft"] <= r["latency"]
        [a] = attempts[ids["ok"]]
        assert (a["channel"], a["status"], a["key_name"], a["cost"]) == ("good", 200, "good#0", r["cost"])
        assert a["latency"] > 0 and a["ttft"] is not None

        r = rows[ids["fo"]]
        assert (r["status"], r["outcome"], r["channel"], r["cost"]) == (200, "completed", "steady", None)
        assert [(a["channel"], a["status"], a["error_kind"]) for a in attempts[ids["fo"]]] == [
            ("flaky", 500, "server_error"), ("steady", 200, None)]

        r = rows[ids["bad"]]
        assert (r["status"], r["outcome"], r["channel"]) == (502, "failed", None) and r["error"]
        assert [(a["channel"], a["error_kind"]) for a in attempts[ids["bad"]]] == [("bad", "server_error")]

        r = rows[ids["nokey"]]
        assert (r["status"], r["outcome"], r["project"]) == (401, "failed", "") and ids["nokey"] not in attempts
        assert r["cost"] == 0.0  # refused before its model was read: nothing billed, not "unpriced"

        r = rows[ids["streamed"]]
        assert (r["status"], r["stream"], r["completion_tokens"]) == (200, True, 20) and r["cost"] > 0

        r = rows[ids["cancelled"]]
        assert (r["status"], r["outcome"], r["model"], r["stream"]) == (499, "cancelled", "slow", True)
        assert r["ttft"] is not None and r["ttft"] <= r["latency"]  # its first bytes went out before it left
        # The upstream answered (200, a first token), then the gateway cut its stream for the client
        # that left: the attempt was abandoned, not answered in full, in the record and in the metrics.
        [a] = attempts[ids["cancelled"]]
        assert (a["channel"], a["status"], a["error_kind"]) == ("slow", 200, None)
        decision = a["decision"] if isinstance(a["decision"], dict) else json.loads(a["decision"])
        assert decision["next"] == "cancelled"
        assert a["ttft"] is not None and a["latency"] >= a["ttft"]
        with httpx.Client(base_url=gw.url, timeout=20) as c:
            text = c.get("/metrics").text
        outcomes = {s.labels["outcome"]: s.value for fam in text_string_to_metric_families(text)
                    if fam.name == "axonsim_upstream_attempts" for s in fam.samples
                    if s.name.endswith("_total") and s.labels.get("channel") == "slow"}
        assert outcomes == {"cancelled": 1.0}


def test_the_writer_drains_on_shutdown_and_streams_finish(db: DB) -> None:
    """A long flush interval keeps everything in memory until the gateway stops: the graceful
    shutdown lets the in-flight stream finish, then the store writes every record."""
    with Stack() as st:
        gw = serve(st, db, store={"flush_interval": 60, "batch_size": 1000})
        with httpx.Client(base_url=gw.url, timeout=20) as c:
            ids = [chat(c, "ok").headers["x-request-id"] for _ in range(15)]
        got: dict[str, Any] = {}
        started = threading.Event()

        def stream() -> None:
            body = {"model": "medium", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
            with httpx.Client(base_url=gw.url, timeout=20) as c, c.stream("POST", "/v1/chat/completions",
                                                                          json=body, headers=AUTH) as r:
                started.set()
                got["id"] = r.headers["x-request-id"]
                got["text"] = r.read().decode()

        t = threading.Thread(target=stream)
        t.start()
        assert started.wait(10)
        assert db.rows("SELECT count(*) AS n FROM requests")[0]["n"] == 0  # nothing written yet
        st.call(gw.stop(), 30)
        t.join(10)
        assert got["text"].rstrip().endswith("data: [DONE]")  # the stream ran to its end
        store = gw.proxy.store
        assert (store.written, store.dropped, store.queued) == (16, 0, 0)
    rows = db.rows("SELECT id, outcome FROM requests")
    assert sorted(r["id"] for r in rows) == sorted([*ids, got["id"]])
    assert all(r["outcome"] == "completed" for r in rows)


# --------------------------------------------------------------------------------------------------
# Metrics


def scrape(url: str) -> dict[str, Any]:
    r = httpx.get(url + "/metrics", timeout=10)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    return {f.name: f for f in text_string_to_metric_families(r.text)}


def sample(fams: dict[str, Any], name: str, **labels: str) -> float:
    family = re.sub(r"_(total|count|sum|bucket)$", "", name)
    for s in fams[family].samples:
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
            return float(s.value)
    raise AssertionError(f"no sample {name}{labels}")


def test_metrics_count_the_traffic_sent(tmp_path: Path) -> None:
    d = DB("sqlite", tmp_path)
    with Stack() as st:
        gw = serve(st, d)
        with httpx.Client(base_url=gw.url, timeout=20) as c:
            for _ in range(3):
                assert chat(c, "ok").status_code == 200
            assert chat(c, "ok", stream=True).status_code == 200
            for _ in range(2):
                assert chat(c, "fail").status_code == 502
            assert chat(c, "fo").status_code == 200
            assert chat(c, "ok", headers={}).status_code == 401
            assert c.post("/v1/messages", json={"model": "ok", "max_tokens": 5,
                                                "messages": [{"role": "user", "content": "hi"}]},
                          headers=AUTH).status_code == 200
        until(lambda: len(gw.proxy.recent) == 9, "nine records")
        fams = scrape(gw.url)
    total = "axonsim_requests_total"
    assert sample(fams, total, client_format="openai_chat", model="ok", status="200") == 4
    assert sample(fams, total, client_format="openai_chat", model="fail", status="502") == 2
    assert sample(fams, total, client_format="openai_chat", model="fo", status="200") == 1
    assert sample(fams, total, client_format="openai_chat", model="none", status="401") == 1  # before parsing
    assert sample(fams, total, client_format="anthropic", model="ok", status="200") == 1
    assert sum(s.value for s in fams["axonsim_requests"].samples if s.name == total) == 9
    att = "axonsim_upstream_attempts_total"
    assert sample(fams, att, channel="good", outcome="success") == 5
    assert sample(fams, att, channel="bad", outcome="server_error") == 2
    assert sample(fams, att, channel="flaky", outcome="server_error") == 1
    assert sample(fams, att, channel="steady", outcome="success") == 1
    assert sample(fams, "axonsim_gateway_overhead_seconds_count") == 9
    assert sample(fams, "axonsim_request_duration_seconds_count", client_format="openai_chat", model="ok") == 4
    assert sample(fams, "axonsim_request_ttft_seconds_count", client_format="openai_chat", model="ok") == 4
    assert sample(fams, "axonsim_requests_inflight") == 0
    assert sample(fams, "axonsim_channel_enabled", channel="good") == 1
    assert "axonsim_store_queue_depth" in fams
    # Tokens and cost by project and model: what the store's records add up to (drained at the stop)
    rows = d.rows("SELECT project, model, sum(prompt_tokens) AS prompt, sum(completion_tokens) AS completion, "
                  "sum(cached_tokens) AS cached, sum(reasoning_tokens) AS reasoning, sum(cost) AS cost "
                  "FROM requests WHERE status = 200 GROUP BY project, model")
    assert {(r["project"], r["model"]) for r in rows} == {("acme", "ok"), ("acme", "fo")}
    for r in rows:
        labels = {"project": r["project"], "model": r["model"]}
        for kind in ("prompt", "completion", "cached", "reasoning"):
            assert sample(fams, "axonsim_tokens_total", **labels, type=kind) == r[kind], (labels, kind)
        if r["cost"] is None:  # "fo" has no price: its requests add to no cost series
            assert not [s for s in fams["axonsim_cost_usd"].samples if s.labels["model"] == r["model"]]
        else:
            assert sample(fams, "axonsim_cost_usd_total", **labels) == pytest.approx(r["cost"], rel=1e-9)
    assert all(r["prompt"] > 0 and r["completion"] > 0 for r in rows)
    assert sample(fams, "axonsim_cost_usd_total", project="acme", model="ok") > 0
    # failed requests reported no usage: no series of their own
    assert not [s for s in fams["axonsim_tokens"].samples if s.labels["model"] in ("fail", "none")]


# --------------------------------------------------------------------------------------------------
# Admin API


@pytest.fixture(scope="module")
def admin_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, GatewayServer]]:
    d = DB("sqlite", tmp_path_factory.mktemp("admin"))
    with Stack() as st:
        yield st, serve(st, d)


def test_admin_needs_its_own_key(admin_stack: tuple[Stack, GatewayServer]) -> None:
    _, gw = admin_stack
    with httpx.Client(base_url=gw.url, timeout=20) as c:
        for method, path in (("GET", "/admin/requests"), ("GET", "/admin/channels"),
                             ("POST", "/admin/channels/good/disable"), ("POST", "/admin/channels/good/test"),
                             ("POST", "/admin/test"), ("POST", "/admin/reload")):
            assert c.request(method, path).status_code == 401
            assert c.request(method, path, headers={"Authorization": "Bearer nope"}).status_code == 401
            r = c.request(method, path, headers=AUTH)
            assert r.status_code == 403 and r.json()["error"]["type"] == "permission_error"
        assert c.get("/admin/channels/good", headers=ADMIN).json()["enabled"] is True


def test_admin_filters_and_request_detail(admin_stack: tuple[Stack, GatewayServer]) -> None:
    st, gw = admin_stack
    with httpx.Client(base_url=gw.url, timeout=20) as c:
        fo = chat(c, "fo", headers={**AUTH, "X-AxonSim-Explain": "1", "X-AxonSim-Trace-Id": "tr-admin"})
        bad = chat(c, "fail")
        assert st.call(gw.proxy.store.flush(20))
        r = c.get("/admin/requests", params={"model": "fo", "trace_id": "tr-admin"}, headers=ADMIN)
        assert r.status_code == 200 and [x["id"] for x in r.json()["data"]] == [fo.headers["x-request-id"]]
        failed = c.get("/admin/requests", params={"outcome": "failed", "model": "fail"}, headers=ADMIN).json()
        assert bad.headers["x-request-id"] in [x["id"] for x in failed["data"]]
        assert all(x["outcome"] == "failed" for x in failed["data"])
        atts = c.get("/admin/attempts", params={"channel": "flaky"}, headers=ADMIN).json()["data"]
        assert fo.headers["x-request-id"] in [a["request_id"] for a in atts]
        for params, param in (({"status": "abc"}, "status"), ({"sorcery": "1"}, "sorcery"),
                              ({"since": "yesterday-ish"}, "since")):
            r = c.get("/admin/requests", params=params, headers=ADMIN)
            assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text
        detail = c.get(f"/admin/requests/{fo.headers['x-request-id']}", headers=ADMIN).json()
        assert [a["channel"] for a in detail["attempts"]] == ["flaky", "steady"]
        # The decision trace of an explained request is kept with its attempts.
        assert detail["attempts"][0]["decision"]["choice"]["chosen"] == "flaky"
        usage = c.get("/admin/usage", params={"group_by": "model"}, headers=ADMIN).json()
        assert {g["group"]["model"] for g in usage["data"]} >= {"fo", "fail"}
        # From memory (before the writer's turn, or while the database is away), a request reads as
        # it will from the store: error messages, costs, TTFTs and the decision kept, attempt by attempt.
        from server.admin import _from_recent

        priced = chat(c, "ok")
        assert st.call(gw.proxy.store.flush(20))
        for r in (fo, bad, priced):
            rid = r.headers["x-request-id"]
            stored = c.get(f"/admin/requests/{rid}", headers=ADMIN).json()
            recent = _from_recent(gw.proxy.find(rid)).model_dump(mode="json")
            assert stored["source"] == "store" and recent["source"] == "recent"
            assert recent["attempts"] == stored["attempts"]
            assert recent["cost"] == stored["cost"] and recent["ttft"] == stored["ttft"]
        assert detail["attempts"][0]["error"] and detail["attempts"][0]["error"] != detail["attempts"][0]["error_kind"]
        assert detail["attempts"][1]["ttft"] is not None
        assert _from_recent(gw.proxy.find(priced.headers["x-request-id"])).attempts[0].cost > 0


def test_a_channel_disabled_through_the_admin_api_gets_no_traffic(admin_stack: tuple[Stack, GatewayServer]) -> None:
    st, gw = admin_stack
    flaky = st.by_name["flaky"].provider
    with httpx.Client(base_url=gw.url, timeout=20) as c:
        r = c.post("/admin/channels/flaky/disable", headers=ADMIN)
        assert r.status_code == 200 and r.json()["enabled"] is False
        before = flaky.stats["requests"]
        for _ in range(4):
            r = chat(c, "fo")
            assert r.status_code == 200 and r.headers["x-axonsim-attempts"] == "1"
        assert flaky.stats["requests"] == before
        assert c.post("/admin/channels/flaky/enable", headers=ADMIN).json()["enabled"] is True
        assert chat(c, "fo").headers["x-axonsim-attempts"] == "2"
        assert flaky.stats["requests"] == before + 1


def test_channel_tests_report_status_latency_and_ttft(admin_stack: tuple[Stack, GatewayServer]) -> None:
    st, gw = admin_stack
    good = st.by_name["good"].provider
    with httpx.Client(base_url=gw.url, timeout=30) as c:
        before = good.stats["requests"]
        r = c.post("/admin/channels/good/test", headers=ADMIN)
        assert r.status_code == 200, r.text
        res = r.json()
        assert res["ok"] and res["status"] == 200 and res["key"] == "good#0" and res["stream"]
        assert 0 < res["ttft"] <= res["latency"] and res["reply"].startswith("The quick")
        assert good.stats["requests"] == before + 1  # a real request reached the provider
        res = c.post("/admin/channels/bad/test", params={"stream": "false"}, headers=ADMIN).json()
        assert not res["ok"] and res["status"] == 500 and res["error_kind"] == "server_error"
        # answering, too slowly to finish in time: a timeout, with the status and TTFT it did measure
        res = c.post("/admin/channels/slow/test", params={"timeout": "0.5"}, headers=ADMIN).json()
        assert not res["ok"] and res["error_kind"] == "timeout" and res["status"] == 200, res
        # (the timeout counts from the loop's cached time, a little before the attempt's start)
        assert 0 < res["ttft"] < 0.45 < res["latency"] and res["reply"], res
        assert c.post("/admin/channels/nope/test", headers=ADMIN).status_code == 404
        everything = c.post("/admin/test", headers=ADMIN).json()["results"]
        assert {x["channel"]: x["ok"] for x in everything if x["channel"] != "slow"} == {
            "good": True, "flaky": False, "steady": True, "bad": False, "medium": True, "leaky": False}


@pytest.mark.parametrize(("path", "params", "param"), [
    ("/admin/channels/good/test", {"timeout": "abc"}, "timeout"),
    ("/admin/channels/good/test", {"timeout": "-1"}, "timeout"),
    ("/admin/channels/good/test", {"timeout": "601"}, "timeout"),
    ("/admin/channels/good/test", {"stream": "maybe"}, "stream"),
    ("/admin/channels/good/test", {"bogus": "1"}, "bogus"),
    ("/admin/channels/good/test", [("timeout", "1"), ("timeout", "2")], "timeout"),
    ("/admin/channels/good/test", {"model": "not-one-of-its-models"}, "model"),
    ("/admin/test", {"timeout": "0"}, "timeout"),
    ("/admin/test", {"model": "x"}, "model"),
])
def test_channel_test_bad_parameters_are_400_naming_them(admin_stack: tuple[Stack, GatewayServer], path: str,
                                                         params: Any, param: str) -> None:
    st, gw = admin_stack
    good = st.by_name["good"].provider
    with httpx.Client(base_url=gw.url, timeout=30) as c:
        before = good.stats["requests"]
        r = c.post(path, params=params, headers=ADMIN)
        assert r.status_code == 400, r.text
        err = r.json()["error"]
        assert err["param"] == param and param in err["message"] and err["type"] == "invalid_request_error"
        assert good.stats["requests"] == before  # refused before any test request was sent


# --------------------------------------------------------------------------------------------------
# Secrets


def test_keys_never_reach_records_logs_or_admin_answers(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    d = DB("sqlite", tmp_path)
    seen: list[str] = []
    with Stack() as st:
        gw = serve(st, d, store={"store_bodies": True})
        with httpx.Client(base_url=gw.url, timeout=20) as c:
            # A client pastes keys into its prompt; the leaky provider quotes our upstream key back.
            pasted = f"my keys: {GW_KEY} {ADMIN_KEY} {secret('good')}"
            for model in ("ok", "leak", "fail", "fo"):
                for stream in (False, True):
                    r = chat(c, model, stream=stream, content=pasted, headers={**AUTH, "X-AxonSim-Explain": "1"})
                    seen.append(r.text + str(r.headers))
            ids = [x["id"] for x in gw.proxy.recent]
            assert st.call(gw.proxy.store.flush(20))
            for path in ("/admin/requests", "/admin/attempts", "/admin/channels", "/admin/usage", "/admin/store",
                         *(f"/admin/requests/{i}" for i in ids)):
                r = c.get(path, headers=ADMIN)
                assert r.status_code == 200, (path, r.text)
                seen.append(r.text)
            seen.append(c.post("/admin/test", headers=ADMIN).text)
        stored = d.rows("SELECT request_body FROM requests WHERE request_body IS NOT NULL")
        assert stored and all("[REDACTED]" in r["request_body"] for r in stored)  # bodies kept, keys masked
    everything = "\n".join(seen) + caplog.text + d.raw_text() + repr(list(gw.proxy.recent))
    assert "axonsim.server.access" in caplog.text
    for s in SECRETS:
        assert s not in everything, s


# --------------------------------------------------------------------------------------------------
# Traces, threads, explain, overhead (a scripted upstream that keeps what it was sent)


def answer(req: UpstreamRequest) -> MockReply:
    return MockReply(200, orjson.dumps({
        "id": "c", "object": "chat.completion", "created": 1, "model": "m",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}}))


def scripted(routing: dict[str, Any] | None = None, gateway: dict[str, Any] | None = None) -> tuple[Proxy, MockUpstream]:
    cfg = parse_config({"gateway": {**GATEWAY, **(gateway or {})},
                        "channels": [{"name": n, "base_url": f"http://{n}.test/v1", "api_keys": [secret(n)],
                                      "models": ["m"]} for n in ("a", "b")],
                        "routing": {"strategy": "round_robin", **(routing or {})}})
    up = MockUpstream(answer)
    return Proxy(cfg, up, seed=1), up


def test_trace_and_thread_ids_are_echoed_recorded_and_never_forwarded() -> None:
    proxy, up = scripted()
    with Stack() as st:
        gw = st.gateway(proxy)
        with httpx.Client(base_url=gw.url, timeout=10) as c:
            r = chat(c, "m", headers={**AUTH, "X-AxonSim-Trace-Id": "trace-42", "X-AxonSim-Thread-Id": "thread-7"})
            assert (r.headers["x-axonsim-trace-id"], r.headers["x-axonsim-thread-id"]) == ("trace-42", "thread-7")
            rec = proxy.find(r.headers["x-request-id"])
            assert rec is not None and (rec["trace_id"], rec["thread_id"]) == ("trace-42", "thread-7")
            # AxonHub's header names are accepted and echoed under ours.
            r = chat(c, "m", headers={**AUTH, "AH-Trace-Id": "ah-trace", "AH-Thread-Id": "ah-thread"})
            assert (r.headers["x-axonsim-trace-id"], r.headers["x-axonsim-thread-id"]) == ("ah-trace", "ah-thread")
            # Absent: generated, 32 hex digits, different per request.
            got = [chat(c, "m").headers for _ in range(2)]
            for h in got:
                assert re.fullmatch(r"[0-9a-f]{32}", h["x-axonsim-trace-id"])
                assert re.fullmatch(r"[0-9a-f]{32}", h["x-axonsim-thread-id"])
            assert got[0]["x-axonsim-trace-id"] != got[1]["x-axonsim-trace-id"]
    assert len(up.requests) == 4
    for req in up.requests:
        names = {k.lower() for k in req.headers}
        assert names == {"content-type", "authorization", "user-agent"}, names  # nothing of the client's is forwarded
        assert req.headers["user-agent"].startswith("axonsim/")
        assert GW_KEY not in str(req.headers) and b"trace" not in req.body


def test_ids_that_are_not_ascii_are_kept_as_the_client_wrote_them() -> None:
    """UTF-8 ids were stored as latin-1 text (an admin filter with the id sent found nothing), and a
    long one was cut inside a character: the echo and the record ended in half of one."""
    proxy, _ = scripted()
    long = "a" * 199 + "é"  # the 200-byte cut falls inside é
    with Stack() as st:
        gw = st.gateway(proxy)
        with httpx.Client(base_url=gw.url, timeout=10) as c:
            r = chat(c, "m", headers={**AUTH, "X-AxonSim-Trace-Id": "trace-é-日本".encode(),
                                      "X-AxonSim-Thread-Id": long.encode()})
            echoed = {k.decode(): v for k, v in r.headers.raw}
            assert echoed["x-axonsim-trace-id"].decode() == "trace-é-日本"
            assert echoed["x-axonsim-thread-id"].decode() == "a" * 199  # whole characters only
            rec = proxy.find(r.headers["x-request-id"])
            assert rec is not None and (rec["trace_id"], rec["thread_id"]) == ("trace-é-日本", "a" * 199)
            # bytes that are not UTF-8 are kept one character each, as HTTP reads them
            r = chat(c, "m", headers={**AUTH, "X-AxonSim-Trace-Id": b"caf\xe9"})
            assert {k.decode(): v for k, v in r.headers.raw}["x-axonsim-trace-id"] == b"caf\xe9"
            assert proxy.find(r.headers["x-request-id"])["trace_id"] == "café"  # type: ignore[index]


def test_configured_header_names_and_sticky_traces() -> None:
    proxy, up = scripted(routing={"sticky": "trace"}, gateway={"trace_header": "X-Request-Trace",
                                                               "thread_header": "X-Conversation"})
    with Stack() as st:
        gw = st.gateway(proxy)
        with httpx.Client(base_url=gw.url, timeout=10) as c:
            r = chat(c, "m", headers={**AUTH, "X-Request-Trace": "t1", "X-Conversation": "c1"})
            assert (r.headers["x-request-trace"], r.headers["x-conversation"]) == ("t1", "c1")
            first = proxy.find(r.headers["x-request-id"])["channel"]  # type: ignore[index]
            sticky = [proxy.find(chat(c, "m", headers={**AUTH, "X-Request-Trace": "t1"}).headers["x-request-id"])
                      for _ in range(4)]
            assert {x["channel"] for x in sticky if x} == {first}  # the trace stays on its channel
            free = [proxy.find(chat(c, "m").headers["x-request-id"]) for _ in range(4)]
            assert {x["channel"] for x in free if x} == {"a", "b"}  # round robin without a trace
            # An empty id is none: one is made up, and it pins nothing.
            got = [chat(c, "m", headers={**AUTH, "X-Request-Trace": "", "X-Conversation": ""}) for _ in range(4)]
            assert all(re.fullmatch(r"[0-9a-f]{32}", h.headers["x-request-trace"]) for h in got)
            assert all(re.fullmatch(r"[0-9a-f]{32}", h.headers["x-conversation"]) for h in got)
            recs = [proxy.find(h.headers["x-request-id"]) for h in got]
            assert {x["channel"] for x in recs if x} == {"a", "b"}
            # A blank id of ours leaves AxonHub's to count.
            r = chat(c, "m", headers={**AUTH, "X-Request-Trace": "", "AH-Trace-Id": "ah-1"})
            assert r.headers["x-request-trace"] == "ah-1"
    assert len(proxy.router.sticky) == 2  # generated ids are not remembered (t1, ah-1)


def _headers(answer: bytes) -> dict[bytes, bytes]:
    return dict(line.split(b": ", 1) for line in answer.partition(b"\r\n\r\n")[0].split(b"\r\n")[1:])


@pytest.mark.parametrize("how", ["in parts", "after its head"])
def test_the_wait_for_a_clients_body_is_its_time_not_the_gateways_overhead(how: str) -> None:
    """Overhead is the gateway's own time: the wait for a slow upload counted as its own (seconds in
    the header, the record and the histogram), as did a client leaving mid-upload and the 503 of a
    shutdown that came meanwhile."""
    proxy, _ = scripted(gateway={"shutdown_timeout": 0.5})
    data = orjson.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]})
    head = (f"POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\nauthorization: Bearer {GW_KEY}\r\n"
            f"content-type: application/json\r\ncontent-length: {len(data)}\r\n\r\n").encode()
    first = data[:10] if how == "in parts" else b""
    with Stack() as st:
        gw = st.gateway(proxy)
        port = int(gw.url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(head + first)
            time.sleep(0.6)
            s.sendall(data[len(first):])
            answer = s.recv(65536)
        h = _headers(answer)
        assert answer.startswith(b"HTTP/1.1 200 ") and float(h[b"x-axonsim-overhead-ms"]) < 250, answer[:400]
        rec = proxy.find(h[b"x-request-id"].decode())
        assert rec is not None and rec["latency"] > 0.5 and rec["overhead"] < 0.25
        for path in (b"/v1/chat/completions", b"/v1/embeddings"):  # gone mid-upload
            n = len(proxy.recent)
            with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
                s.sendall(head.replace(b"/v1/chat/completions", path) + first)
                time.sleep(0.6)
            deadline = time.monotonic() + 10
            while len(proxy.recent) == n and time.monotonic() < deadline:
                time.sleep(0.02)
            rec = proxy.recent[-1]
            assert rec["path"] == path.decode()
            assert rec["status"] == 499 and rec["latency"] > 0.5 and rec["overhead"] < 0.25, rec
        # a shutdown while the body is awaited: the 503 at its deadline (0.5 s)
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(head + first)
            time.sleep(0.2)
            st.call(gw.stop())
            answer = s.recv(65536)
        h = _headers(answer)
        assert answer.startswith(b"HTTP/1.1 503 ") and float(h[b"x-axonsim-overhead-ms"]) < 250, answer[:400]


def test_explain_header_and_overhead_header() -> None:
    proxy, _ = scripted()
    with Stack() as st:
        gw = st.gateway(proxy)
        with httpx.Client(base_url=gw.url, timeout=10) as c:
            r = chat(c, "m", headers={**AUTH, "X-AxonSim-Explain": "1"})
            trace = json.loads(r.headers["x-axonsim-explain"])
            [decision] = trace["decisions"]
            assert {x["channel"] for x in decision["candidates"]} == {"a", "b"}
            assert decision["chosen"] in ("a", "b") and trace["attempts"][0]["key"] == f"{decision['chosen']}#0"
            assert secret("a") not in r.headers["x-axonsim-explain"]
            plain = chat(c, "m")
            assert "x-axonsim-explain" not in plain.headers
            for resp in (r, plain, chat(c, "nope"), chat(c, "m", headers={})):
                assert float(resp.headers["x-axonsim-overhead-ms"]) >= 0.0
            rec = proxy.find(plain.headers["x-request-id"])
            assert rec is not None and 0.0 <= rec["overhead"] <= rec["latency"] and rec["decisions"] is None


def test_the_access_log_masks_keys_in_the_path_and_model_and_keeps_each_to_one_line(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="axonsim.server.access")
    proxy, _ = scripted()
    with Stack() as st:
        gw = st.gateway(proxy)
        with httpx.Client(base_url=gw.url, timeout=10) as c:
            chat(c, GW_KEY)  # a client pastes its key as the model name
            c.post(f"/v1beta/models/{secret('a')}%0A2026-01-01 CRITICAL forged:generateContent",
                   headers={"x-goog-api-key": GW_KEY}, json={"contents": [{"parts": [{"text": "hi"}]}]})
    lines = [r.getMessage() for r in caplog.records if r.name == "axonsim.server.access"]
    assert len(lines) == 2 and all("\n" not in ln for ln in lines), lines
    assert GW_KEY not in caplog.text and secret("a") not in caplog.text and "[redacted]" in caplog.text


# --------------------------------------------------------------------------------------------------
# Reload


def test_reload_keeps_in_flight_requests_and_swaps_the_config(tmp_path: Path) -> None:
    cfg_path = tmp_path / "gateway.yaml"
    with Stack() as st:
        chans = [Channel.model_validate({**ch("long", "m", {"ttft": 0.05, "tokens_per_second": 40,
                                                              "output_tokens": 120}), "base_url": ""}),
                 Channel.model_validate({**ch("fresh", "new-model"), "base_url": ""})]
        mocks = {c.name: st.mock(MockProvider(c, seed=1)) for c in chans}
        data: dict[str, Any] = {"gateway": GATEWAY, "routing": ROUTING, "channels": [
            {**ch("long", "m", {"ttft": 0.05, "tokens_per_second": 40, "output_tokens": 120}),
             "base_url": mocks["long"].base_url}]}
        cfg_path.write_text(json.dumps(data))  # JSON is YAML
        proxy = st.call(_make_proxy(cfg_path))
        gw = st.gateway(proxy)
        old_router = proxy.router
        results: list[tuple[int, str]] = []
        lock = threading.Lock()
        headers_in = threading.Semaphore(0)

        def client(stream: bool) -> None:
            body = {"model": "m", "stream": stream, "messages": [{"role": "user", "content": "hi"}]}
            with httpx.Client(base_url=gw.url, timeout=30) as c:
                if stream:
                    with c.stream("POST", "/v1/chat/completions", json=body, headers=AUTH) as r:
                        headers_in.release()
                        text = r.read().decode()
                else:
                    headers_in.release()  # sent (the answer takes ~3 s)
                    r = c.post("/v1/chat/completions", json=body, headers=AUTH)
                    text = r.text
            with lock:
                results.append((r.status_code, text))

        threads = [threading.Thread(target=client, args=(i % 2 == 0,)) for i in range(10)]
        for t in threads:
            t.start()
        for _ in threads:
            assert headers_in.acquire(timeout=10)
        time.sleep(0.2)
        until(lambda: old_router.by_name["long"].inflight == 10, "ten attempts in flight")
        data["channels"].append({**ch("fresh", "new-model"), "base_url": mocks["fresh"].base_url})
        cfg_path.write_text(json.dumps(data))
        with httpx.Client(base_url=gw.url, timeout=10) as c:
            r = c.post("/admin/reload", headers=ADMIN)
            assert r.status_code == 200, r.text
            # Reloaded while the old requests still run (3 s each): the unchanged channel's new
            # state counts them in flight (least-busy routing and /admin/channels see them).
            assert proxy.router.by_name["long"].inflight == 10
            listed = {x["name"]: x for x in c.get("/admin/channels", headers=ADMIN).json()["channels"]}
            assert listed["long"]["inflight"] == 10 and listed["fresh"]["inflight"] == 0
            assert r.json()["changes"]["channels_added"] == ["fresh"]
            assert proxy.router is not old_router
            assert chat(c, "new-model").status_code == 200  # the new config serves at once
            for t in threads:
                t.join(30)
            assert len(results) == 10
            for status, text in results:
                assert status == 200
                assert text.rstrip().endswith("data: [DONE]") or json.loads(text)["usage"]["completion_tokens"] == 120
            assert proxy.router.by_name["long"].inflight == 0  # their ends were counted where they were seen
            # The unchanged channel kept its figures; the new one starts fresh.
            assert proxy.router.by_name["long"].requests == 10 and proxy.router.by_name["long"].ewma_ttft is not None
            assert proxy.router.by_name["fresh"].requests == 1
            # A broken config changes nothing.
            cfg_path.write_text("channels: [")
            r = c.post("/admin/reload", headers=ADMIN)
            assert r.status_code == 400 and r.json()["error"]["param"] == "config"
            assert chat(c, "new-model").status_code == 200


def test_restart_needed_is_measured_against_the_config_the_gateway_started_with(tmp_path: Path) -> None:
    """A restart-only change stays listed at every reload until the file is back to what runs; a
    file put back to it lists nothing. (Measured against the file before each reload, it read the
    other way round: empty at the second reload, and listed once the file matched again.)"""
    cfg_path = tmp_path / "gateway.yaml"
    data: dict[str, Any] = {"gateway": {**GATEWAY, "shutdown_timeout": 30}, "routing": ROUTING,
                            "channels": [{**ch("c", "m"), "base_url": "http://127.0.0.1:9/v1"}]}
    cfg_path.write_text(json.dumps(data))
    with Stack() as st:
        gw = st.gateway(st.call(_make_proxy(cfg_path)))
        with httpx.Client(base_url=gw.url, timeout=10) as c:
            def reload(shutdown_timeout: float) -> list[str]:
                cfg_path.write_text(json.dumps({**data, "gateway": {**GATEWAY, "shutdown_timeout": shutdown_timeout}}))
                r = c.post("/admin/reload", headers=ADMIN)
                assert r.status_code == 200, r.text
                return list(r.json()["changes"]["restart_needed"])

            assert reload(5) == ["gateway.shutdown_timeout"]
            assert reload(5) == ["gateway.shutdown_timeout"]  # still not in force
            assert reload(30) == []  # the file says what runs again


async def test_the_store_drains_for_the_shutdown_timeout_serving_started_with(tmp_path: Path) -> None:
    """A reloaded shutdown_timeout waits for a restart, uvicorn's deadline as the store's drain: the
    drain took the reloaded one (1 s where serving started with 30), and lost records a database slow
    to come back could still have taken."""
    class Timed(Store):
        drained_for: float | None = None

        async def close(self, timeout: float | None = 30.0) -> None:
            self.drained_for = timeout
            await super().close(timeout)

    cfg_path = tmp_path / "gateway.yaml"
    data: dict[str, Any] = {"gateway": {**GATEWAY, "shutdown_timeout": 30}, "routing": ROUTING,
                            "channels": [{**ch("c", "m"), "base_url": "http://127.0.0.1:9/v1"}],
                            "store": {"url": f"sqlite:///{tmp_path / 'log.db'}"}}
    cfg_path.write_text(json.dumps(data))
    config = load_config(cfg_path)
    store = Timed(config.store)
    proxy = Proxy(config, config_path=cfg_path, seed=1, store=store)
    await proxy.startup()
    cfg_path.write_text(json.dumps({**data, "gateway": {**GATEWAY, "shutdown_timeout": 1}}))
    await proxy.reload()
    assert proxy.config.gateway.shutdown_timeout == 1
    await proxy.shutdown()
    assert store.drained_for == 30


async def _make_proxy(path: Path) -> Proxy:
    return Proxy(load_config(path), config_path=path, seed=1)


def test_carry_over_keeps_the_state_of_unchanged_channels_only() -> None:
    base = {"channels": [{"name": "a", "api_keys": ["ka"], "models": ["m"]},
                         {"name": "b", "api_keys": ["kb"], "models": ["m"]}]}
    old = Router(parse_config(base))
    a, b = old.by_name["a"], old.by_name["b"]
    a.cooldown_until = b.cooldown_until = 1000.0
    a.ewma_latency = 0.5
    a.keys[0].disabled = True
    a.started(0.0, 0, "m")  # one attempt in flight on the old Router
    changed = {"channels": [base["channels"][0], {**base["channels"][1], "weight": 5}]}
    new = Router(parse_config(changed))
    assert carry_over(old, new, 10.0) == ["a"]
    na, nb = new.by_name["a"], new.by_name["b"]
    assert (na.cooldown_until, na.ewma_latency, na.keys[0].disabled, na.inflight) == (1000.0, 0.5, True, 1)
    assert na.limiter is a.limiter  # shared: the old attempt's end is counted where the new one looks
    assert nb.cooldown_until != 1000.0 and nb.inflight == 0
    # The old attempt's end, and a retry it starts on the old Router, are counted on the new state
    # too; their figures stay with the old one, which steers the old Router's retries.
    a.failed(1.0, Outcome(False, 1.0, 0, ErrorKind.CONNECTION, key=0), "m")
    assert (a.inflight, na.inflight, a.consecutive_failures, na.consecutive_failures) == (0, 0, 1, 0)
    a.started(2.0, 0, "m")
    assert (a.inflight, na.inflight) == (1, 1)
    a.succeeded(3.0, 0.25, 0, "m")
    assert (a.inflight, na.inflight, na.ewma_latency) == (0, 0, 0.5)
    # Through several reloads, whatever changed meanwhile (the health config, rate tracking): the
    # count is all the limiter and the states see, each attempt's start and end on the same state.
    a.started(4.0, 0, "m")
    sick = Router(parse_config({**changed, "routing": {"strategy": "usage-based",
                                                      "health": {"breaker": {"failure_threshold": 1}}}}))
    assert carry_over(new, sick, 5.0) == ["a", "b"]
    sa = sick.by_name["a"]
    assert (a.inflight, na.inflight, sa.inflight) == (1, 1, 1)
    a.succeeded(6.0, 0.1, 0, "m")
    assert (a.inflight, na.inflight, sa.inflight, sa.limiter.inflight) == (0, 0, 0, 0)
    # An operator's switch is not a change of the channel: its state stays, the switch ends.
    na.channel.enabled, na.switched_off = False, True  # the admin API's disable
    na.ewma_latency = 0.7
    again = Router(parse_config(changed))
    assert carry_over(new, again, 20.0) == ["a", "b"]
    assert again.by_name["a"].ewma_latency == 0.7 and again.by_name["a"].channel.enabled
    assert not again.by_name["a"].switched_off


def _next_effect(gen: Any, outcome: Outcome, now: float) -> Any:
    """Send a Router.execute generator its attempt's outcome; its next Call, or its Result."""
    try:
        eff = gen.send(outcome)
        while isinstance(eff, Wait):
            eff = gen.send(now)
        return eff
    except StopIteration as stop:
        return stop.value


def test_after_a_reload_the_old_router_still_steers_its_retries_by_what_its_attempts_met() -> None:
    # A request begun before a reload fails after it: its key switch and its failover are the old
    # Router's, which must still see that a key was just rate-limited and a channel asked to wait.
    pool = {"channels": [{"name": "a", "api_keys": ["k0", "k1"], "key_strategy": "least_used", "models": ["m"]}]}
    old = Router(parse_config(pool))
    gen = old.execute("m", 0.0, random.Random(0))
    call = next(gen)
    call.started(0.0)
    carry_over(old, Router(parse_config(pool)), 0.5)
    limited = Outcome(False, 1.0, 429, ErrorKind.RATE_LIMITED, retry_after=30.0, key=call.key)
    call.failed(1.0, limited)
    again = _next_effect(gen, limited, 1.2)
    assert again.state.name == "a" and again.key != call.key
    two = {"channels": [{"name": "a", "models": ["m"]}, {"name": "b", "models": ["m"]}],
           "routing": {"strategy": "round_robin", "retry": {"max_same_channel": 0}}}
    old = Router(parse_config(two))
    rng = random.Random(0)
    gen_a, gen_b = old.execute("m", 0.0, rng), old.execute("m", 0.0, rng)
    on_a, on_b = next(gen_a), next(gen_b)
    assert (on_a.state.name, on_b.state.name) == ("a", "b")
    on_a.started(0.0)
    on_b.started(0.0)
    carry_over(old, Router(parse_config(two)), 0.5)
    on_a.failed(1.0, Outcome(False, 1.0, 429, ErrorKind.RATE_LIMITED, retry_after=60.0))
    broken = Outcome(False, 2.0, 500, ErrorKind.SERVER_ERROR)
    on_b.failed(2.0, broken)
    assert getattr(getattr(_next_effect(gen_b, broken, 2.1), "state", None), "name", None) != "a"


def _first_pick(router: Router, now: float) -> str:
    gen = router.execute("m", now, random.Random(0))
    name: str = next(gen).state.name
    gen.close()
    return name


def _reloaded_with_one_attempt_on_a(cfg: dict[str, Any]) -> tuple[Any, Router]:
    """A Router with an attempt on channel `a` in flight, and the Router a reload then put in its place."""
    old = Router(parse_config(cfg))
    call = next(old.execute("m", 0.0, random.Random(0)))
    assert call.state.name == "a"
    call.started(0.0)
    new = Router(parse_config(cfg))
    carry_over(old, new, 0.5)
    return call, new


def test_a_breaker_an_old_attempt_opens_after_a_reload_keeps_the_new_router_away() -> None:
    # The breakers are shared when the health config is unchanged; the new state's fast path must
    # hear at once that one of them opened, or the new Router sends traffic through it.
    cfg = {"channels": [{"name": "a", "models": ["m"]}, {"name": "b", "models": ["m"]}],
           "routing": {"strategy": "round_robin", "health": {"breaker": {"failure_threshold": 1, "open_time": 100}}}}
    call, new = _reloaded_with_one_attempt_on_a(cfg)
    assert new.by_name["a"].inflight == 1
    call.failed(1.0, Outcome(False, 1.0, 500, ErrorKind.SERVER_ERROR))
    assert new.by_name["a"].inflight == 0
    picked = set()
    for i in range(6):
        gen = new.execute("m", 2.0 + i, random.Random(i))
        picked.add(next(gen).state.name)
        gen.close()
    assert picked == {"b"}


def test_what_an_attempt_begun_before_a_reload_finds_out_holds_for_the_new_router() -> None:
    pair = {"channels": [{"name": "a", "models": ["m"], "priority": 0}, {"name": "b", "models": ["m"], "priority": 1}]}
    # A 401 (the default rules: the channel's key is bad for good).
    call, new = _reloaded_with_one_attempt_on_a(pair)
    call.failed(1.0, Outcome(False, 1.0, 401, ErrorKind.AUTHENTICATION))
    assert new.by_name["a"].disabled_until == math.inf and _first_pick(new, 2.0) == "b"
    # The third 503 in a row, two of them the new Router's: the streak is shared, and so is the verdict.
    call, new = _reloaded_with_one_attempt_on_a(pair)
    na = new.by_name["a"]
    for t in (1.0, 1.1):
        na.started(t)
        na.failed(t, Outcome(False, t, 503, ErrorKind.SERVER_ERROR))
    assert _first_pick(new, 1.5) == "a"
    call.failed(2.0, Outcome(False, 2.0, 503, ErrorKind.SERVER_ERROR))
    assert na.disabled_until > 3.0 and _first_pick(new, 3.0) == "b"
    # A 429 with Retry-After: the channel cools down for both Routers.
    call, new = _reloaded_with_one_attempt_on_a(pair)
    call.failed(1.0, Outcome(False, 1.0, 429, ErrorKind.RATE_LIMITED, retry_after=60.0))
    assert new.by_name["a"].cooldown_until == 61.0 and _first_pick(new, 2.0) == "b"
    # A key of a pool rejected: that key, not the channel, is out for the new Router.
    pool = {"channels": [{"name": "a", "api_keys": ["k0", "k1"], "key_strategy": "least_used", "models": ["m"]}]}
    call, new = _reloaded_with_one_attempt_on_a(pool)
    call.failed(1.0, Outcome(False, 1.0, 401, ErrorKind.AUTHENTICATION, key=call.key))
    na = new.by_name["a"]
    assert na.keys[call.key].disabled and not na.keys[1 - call.key].disabled
    assert na.next_key(2.0, random.Random(0), 0, "m") == 1 - call.key
    call, new = _reloaded_with_one_attempt_on_a(pool)  # a key's rate limit: that key waits
    call.failed(1.0, Outcome(False, 1.0, 429, ErrorKind.RATE_LIMITED, retry_after=60.0, key=call.key))
    assert new.by_name["a"].keys[call.key].disabled_until == 61.0
    assert new.by_name["a"].next_key(2.0, random.Random(0), 0, "m") == 1 - call.key
    # An ejection the old Router's detector made counts against the new one's cap (50 % of two: one).
    ejecting = {**pair, "routing": {"health": {"outlier": {"enabled": True, "consecutive_failures": 1,
                                                           "max_ejection_percent": 50},
                                               "breaker": {"enabled": False}}}}
    call, new = _reloaded_with_one_attempt_on_a(ejecting)
    call.failed(1.0, Outcome(False, 1.0, 500, ErrorKind.SERVER_ERROR))
    nb = new.by_name["b"]
    nb.started(1.5)
    nb.failed(1.5, Outcome(False, 1.5, 500, ErrorKind.SERVER_ERROR))
    assert new.by_name["a"].ejection.until > 2.0 and nb.ejection.until < 2.0


def test_health_carried_over_by_a_reload_is_seen_by_the_next_pick() -> None:
    # An open breaker and a channel whose every key an operator disabled: after a reload neither is
    # picked (the new states' fast path had not been told, and both got traffic again).
    cfg = parse_config({"channels": [{"name": "a", "api_keys": ["ka1", "ka2"], "models": ["m"]},
                                     {"name": "b", "models": ["m"]}, {"name": "c", "models": ["m"]}],
                        "routing": {"strategy": "round_robin",
                                    "health": {"breaker": {"failure_threshold": 1, "open_time": 100}}}})
    old = Router(cfg)
    for k in old.by_name["a"].keys:
        k.disabled = k.held = True
    old.by_name["a"].refresh(0.0)
    b = old.by_name["b"]
    b.started(0.0, None, "m")
    b.failed(1.0, Outcome(False, 1.0, 500, ErrorKind.SERVER_ERROR), "m")
    assert b.breaker("m").state == "open"
    new = Router(cfg)
    assert carry_over(old, new, 2.0) == ["a", "b", "c"]
    picked = set()
    for i in range(6):
        gen = new.execute("m", 3.0 + i, random.Random(i))
        call = next(gen)
        picked.add(call.state.name)
        gen.close()
    assert picked == {"c"}


# --------------------------------------------------------------------------------------------------
# Probes


def test_probes_bring_an_auto_disabled_channel_back() -> None:
    sick = {"faults": {"overloaded": 1.0}}  # 503: three in a row auto-disable the channel (default rules)
    routing = {"retry": {"max_same_channel": 0, "backoff": {"base": 0.001, "cap": 0.01}},
               "health": {"breaker": {"enabled": False}, "key_breaker": {"enabled": False},
                          "outlier": {"enabled": False}}}
    with Stack() as st:
        gw = st.serve([ch("phoenix", "m", sick, priority=0, probe={"interval": 0.3}), ch("backup", "m", priority=1)],
                      gateway=GATEWAY, routing=routing)
        phoenix = gw.proxy.router.by_name["phoenix"]
        with httpx.Client(base_url=gw.url, timeout=10) as c:
            for _ in range(3):
                assert chat(c, "m").status_code == 200  # the backup serves
            until(lambda: phoenix.disabled_until > time.time(), "the auto-disable")
            assert chat(c, "m").headers["x-axonsim-attempts"] == "1"  # phoenix is skipped
            provider = st.by_name["phoenix"].provider
            provider.model = BehaviorModel(Behavior.model_validate(FAST), 1)  # the provider recovers
            until(lambda: phoenix.disabled_until < time.time(), "a probe to lift the auto-disable", 10)
            r = chat(c, "m")
            assert r.status_code == 200 and gw.proxy.find(r.headers["x-request-id"])["channel"] == "phoenix"  # type: ignore[index]
        assert gw.proxy.probes.last["phoenix"]["ok"]


def test_reloads_more_often_than_the_probe_interval_do_not_stop_probes() -> None:
    with Stack() as st:
        gw = st.serve([ch("watched", "m", probe={"interval": 0.4})], gateway=GATEWAY)
        provider = st.by_name["watched"].provider
        config = gw.proxy.rt.config
        seen = provider.stats["requests"]
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:  # an operator's tool reloading the same config every 0.1 s
            st.call(gw.proxy.reload(config))
            time.sleep(0.1)
        assert provider.stats["requests"] >= seen + 3  # ~5 probes in 2 s; restarted each time, none ran
        # a new interval is a new schedule: the old task gives way to one at the new pace
        task = gw.proxy.probes._tasks["watched"][1]
        faster = config.model_copy(deep=True)
        faster.channels[0].probe.interval = 0.1  # type: ignore[union-attr]
        st.call(gw.proxy.reload(faster))
        assert gw.proxy.probes._tasks["watched"][1] is not task and gw.proxy.probes._tasks["watched"][0] == 0.1


@pytest.mark.parametrize("n", [2, 4])
def test_probes_take_every_key_of_a_pool_in_turn(n: int) -> None:
    # A probe checks one key's room and must go out on that key: choosing it twice moved the key
    # rotation two steps a probe, so with an even pool keys #0, #2, ... were never probed.
    keys = [{"key": secret("pool") + f"-{i}", "name": f"pool#{i}"} for i in range(n)]
    with Stack() as st:
        gw = st.serve([ch("pool", "m", probe={"interval": 0.05}, api_keys=keys)], gateway=GATEWAY)
        pool = gw.proxy.router.by_name["pool"]
        provider = st.by_name["pool"].provider
        seen = provider.stats["requests"]
        until(lambda: provider.stats["requests"] >= seen + 2 * n, f"{2 * n} probes", 10)
        assert all(k.uses > 0 for k in pool.keys), [k.uses for k in pool.keys]


def test_probes_bring_back_every_key_of_a_pool_its_provider_rejected() -> None:
    """Probes took the key the channel would send on: once one rejected key was found working, the
    others were never tried again, and the pool ran on that key alone until a reload."""
    keys = [{"key": secret("rej") + f"-{i}", "name": f"rej#{i}"} for i in range(3)]
    with Stack() as st:
        gw = st.serve([ch("rej", "m", probe={"interval": 0.05}, api_keys=keys)], gateway=GATEWAY)
        rej = gw.proxy.router.by_name["rej"]
        provider = st.by_name["rej"].provider
        accepted = provider.keys
        provider.keys = frozenset({"none-of-them"})  # the provider rejects every key (401)
        until(lambda: all(k.disabled for k in rej.keys), "probes find every key rejected", 10)
        provider.keys = accepted
        until(lambda: not any(k.disabled for k in rej.keys), "probes find every key working again", 10)


def test_probes_of_rejected_keys_leave_the_channels_health_alone() -> None:
    """Probes try each rejected key of a pool again; its 401s counted against the channel (with five
    rejected keys in a row its breaker opened, and reopened, its open time doubling, while its one
    good key served well). A key rejected again says nothing new about the channel."""
    keys = [{"key": secret("mix") + f"-{i}", "name": f"mix#{i}"} for i in range(3)]
    with Stack() as st:
        gw = st.serve([ch("mix", "m", probe={"interval": 0.02}, api_keys=keys), ch("backup", "m", priority=1)],
                      gateway=GATEWAY)
        mix = gw.proxy.router.by_name["mix"]
        provider = st.by_name["mix"].provider
        provider.keys = frozenset({keys[0]["key"]})  # one key of three works
        until(lambda: sum(k.disabled for k in mix.keys) == 2, "probes find two keys rejected", 10)
        failures, seen = mix.failures, provider.stats["unauthorized"]
        until(lambda: provider.stats["unauthorized"] >= seen + 10, "probes try them again, and again", 10)
        assert mix.failures == failures and all(b.trips == 0 for b in mix.breakers.values())
        with httpx.Client(base_url=gw.url, timeout=10) as c:
            for _ in range(3):
                r = chat(c, "m")
                assert gw.proxy.find(r.headers["x-request-id"])["channel"] == "mix"  # type: ignore[index]


def test_probes_and_tests_neither_use_nor_lift_a_key_an_operator_disabled() -> None:
    keys = [{"key": secret("pair"), "name": "pair#0"}, {"key": secret("pair") + "-2", "name": "pair#1"}]
    with Stack() as st:
        gw = st.serve([ch("pair", "m", probe={"interval": 0.1}, api_keys=keys)], gateway=GATEWAY)
        pair = gw.proxy.router.by_name["pair"]
        provider = st.by_name["pair"].provider
        k0, k1 = pair.keys
        with httpx.Client(base_url=gw.url, timeout=10) as c:
            assert c.post("/admin/channels/pair/keys/pair%230/disable", headers=ADMIN).status_code == 200
            used, seen = k0.uses, provider.stats["requests"]
            until(lambda: provider.stats["requests"] >= seen + 4, "four probes", 10)
            assert (k0.disabled, k0.held, k0.uses) == (True, True, used)  # not lifted, not used
            assert k1.uses > 0 and gw.proxy.probes.last["pair"]["key"] == "pair#1"

            # Every key held: probes stop, and a test refuses to send rather than use one.
            assert c.post("/admin/channels/pair/keys/pair%231/disable", headers=ADMIN).status_code == 200
            time.sleep(0.15)  # a probe already under way finishes
            seen = provider.stats["requests"]
            res = c.post("/admin/channels/pair/test", headers=ADMIN).json()
            assert not res["ok"] and res["error_kind"] == "disabled" and "operator" in res["error"]
            time.sleep(0.5)
            assert provider.stats["requests"] == seen and k0.disabled and k1.disabled
            view = c.get("/admin/channels/pair", headers=ADMIN).json()
            assert [(k["disabled"], k["held"]) for k in view["keys"]] == [(True, True), (True, True)]

            # The operator's enable: probes use the key again.
            assert c.post("/admin/channels/pair/keys/pair%230/enable", headers=ADMIN).status_code == 200
            until(lambda: k0.uses > used, "a probe with the re-enabled key", 10)
            assert not k0.held and k1.held


# --------------------------------------------------------------------------------------------------
# `axonsim serve`


@pytest.mark.parametrize("workers", ["1", "2"])
def test_serve_with_an_unreachable_database_exits_2(tmp_path: Path, workers: str) -> None:
    cfg = tmp_path / "gw.yaml"
    cfg.write_text(f"""
channels: [{{name: one, base_url: "http://127.0.0.1:9/v1", models: [m]}}]
store: {{url: "postgresql://axon:db-pass-81f3@127.0.0.1:{free_port()}/nowhere"}}
""")
    r = subprocess.run([sys.executable, "-m", "axonsim", "serve", "--config", str(cfg), "--port", str(free_port()),
                        "--workers", workers], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert r.returncode == 2, r.stderr
    assert "cannot start" in r.stderr and "is unavailable" in r.stderr and "on_unreachable" in r.stderr
    assert "db-pass-81f3" not in r.stdout + r.stderr and "Traceback" not in r.stderr


def test_serve_degraded_starts_says_so_and_reloads_on_sighup(tmp_path: Path) -> None:
    cfg = tmp_path / "gw.yaml"
    port = free_port()
    text = f"""
gateway: {{api_keys: [{{key: {GW_KEY}}}], shutdown_timeout: 1}}
channels: [{{name: one, base_url: "http://127.0.0.1:9/v1", models: [m]}}]
store: {{url: "postgresql://axon:db-pass-81f3@127.0.0.1:{free_port()}/nowhere", on_unreachable: degraded}}
"""
    cfg.write_text(text)
    proc = _start("serve", "--config", str(cfg), "--port", str(port))
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(url, proc)
        r = httpx.post(url + "/v1/chat/completions", headers=AUTH, timeout=10,
                       json={"model": "m", "messages": [{"role": "user", "content": "hi"}]})
        assert r.status_code == 502  # served (the channel is down), not refused
        cfg.write_text(text.replace("models: [m]", "models: [m, m2]"))
        proc.send_signal(signal.SIGHUP)
        until(lambda: "m2" in httpx.get(url + "/v1/models", headers=AUTH, timeout=5).text, "the SIGHUP reload")
    finally:
        out, err = _stop(proc, sig=signal.SIGTERM)
    assert proc.returncode == 0, err  # a clean shutdown on SIGTERM exits 0, as with --workers
    assert "(on_unreachable: degraded)" in out and "store degraded" in err
    assert "1 records were not written" in err  # the database never came back: the loss is said, not hidden
    assert "configuration reloaded" in err
    assert "db-pass-81f3" not in out + err and "Traceback" not in err


def test_a_reload_while_the_gateway_starts_is_acted_on_once_it_can(tmp_path: Path) -> None:
    """A SIGHUP that comes after the config was read and before the reload handler is in (the
    banner is printed in between) neither ends the gateway nor is lost: it reloads once started."""
    port = free_port()
    cfg = tmp_path / "gw.yaml"
    text = f"""
gateway: {{api_keys: [{{key: {GW_KEY}}}]}}
channels: [{{name: one, base_url: "http://127.0.0.1:9/v1", models: [m]}}]
store: {{url: "sqlite+aiosqlite:///{tmp_path}/gw.db"}}
"""
    cfg.write_text(text)
    proc = _start("serve", "--config", str(cfg), "--port", str(port))
    url = f"http://127.0.0.1:{port}"
    try:
        assert proc.stdout is not None
        while "POST /admin/reload or SIGHUP" not in proc.stdout.readline():  # the banner: config read
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        cfg.write_text(text.replace("models: [m]", "models: [m, m2]"))
        proc.send_signal(signal.SIGHUP)
        _wait_healthy(url, proc)
        until(lambda: "m2" in httpx.get(url + "/v1/models", headers=AUTH, timeout=5).text, "the remembered reload")
    finally:
        out, err = _stop(proc, sig=signal.SIGTERM)
    assert proc.returncode == 0, err
    assert "configuration reloaded" in err and "Traceback" not in err


def test_a_reload_while_the_server_modules_load_is_not_lost(tmp_path: Path) -> None:
    """Earlier still: a SIGHUP while `serve` imports the server (about half a second of imports)."""
    port = free_port()
    cfg = tmp_path / "gw.yaml"
    cfg.write_text(f"""
gateway: {{api_keys: [{{key: {GW_KEY}}}]}}
channels: [{{name: one, base_url: "http://127.0.0.1:9/v1", models: [m]}}]
store: {{url: "sqlite+aiosqlite:///{tmp_path}/gw.db"}}
""")
    # The signal is sent from inside the process, as `server.main` begins to load: no timing guesses.
    code = """if True:
        import builtins, os, signal, sys
        real = builtins.__import__
        def hooked(name, *args, **kw):
            if name == "server.main" and "sent" not in os.environ:
                os.environ["sent"] = "1"
                os.kill(os.getpid(), signal.SIGHUP)
            return real(name, *args, **kw)
        builtins.__import__ = hooked
        from axonsim.cli import main
        sys.exit(main(sys.argv[1:]))
    """
    proc = subprocess.Popen([sys.executable, "-c", code, "serve", "--config", str(cfg), "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    seen = []
    try:
        assert proc.stderr is not None
        for line in proc.stderr:  # the log, until the remembered reload (the test's timeout bounds it)
            seen.append(line)
            if "configuration reloaded" in line:
                break
        assert httpx.get(f"http://127.0.0.1:{port}/v1/models", headers=AUTH, timeout=5).status_code == 200
    finally:
        out, err = _stop(proc, sig=signal.SIGTERM)
    assert proc.returncode == 0, "".join(seen) + err
    assert "configuration reloaded" in "".join(seen) and "Traceback" not in "".join(seen) + err


def test_a_reload_while_workers_start_does_not_end_them(tmp_path: Path) -> None:
    """The parent passes SIGHUP on to every worker; one that has not yet installed its reload handler
    ignores it (SIGHUP's default would end it, and the parent would start it again)."""
    port = free_port()
    cfg = tmp_path / "gw.yaml"
    cfg.write_text(f"""
gateway: {{api_keys: [{{key: {GW_KEY}}}]}}
channels:
  - {{name: one, base_url: "http://127.0.0.1:9/v1", models: [m]}}
""")
    proc = _start("serve", "--config", str(cfg), "--port", str(port), "--workers", "2")
    try:
        # From when the parent has its workers (it handles its own signals by then) while they import.
        until(lambda: len(Path(f"/proc/{proc.pid}/task").exists() and subprocess.run(
            ["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()) >= 2, "the workers", 60)
        deadline = time.monotonic() + 4.0
        while time.monotonic() < deadline and proc.poll() is None:
            proc.send_signal(signal.SIGHUP)
            time.sleep(0.2)
        _wait_healthy(f"http://127.0.0.1:{port}", proc)
    finally:
        out, err = _stop(proc)
    assert "died" not in err and err.count("Started server process") == 2, err


def test_two_workers_refuse_new_connections_once_told_to_stop(tmp_path: Path) -> None:
    """While the workers drain, a new connection is refused at once (the client may go elsewhere),
    not accepted into the parent's backlog and reset when it exits, its request lost."""
    mport, port = free_port(), free_port()
    cfg = tmp_path / "gw.yaml"
    cfg.write_text(f"""
gateway: {{api_keys: [{{key: {GW_KEY}}}], shutdown_timeout: 5}}
channels:
  - {{name: one, base_url: "http://127.0.0.1:{mport}/v1", models: [m],
      behavior: {{ttft: 0.05, output_tokens: 200, tokens_per_second: 100}}}}
""")
    procs = [_start("mock-provider", "--config", str(cfg), "--port", str(mport))]
    body = {"model": "m", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    url = f"http://127.0.0.1:{port}"
    done: list[int] = []
    try:
        _wait_healthy(f"http://127.0.0.1:{mport}", procs[0])
        procs.append(_start("serve", "--config", str(cfg), "--port", str(port), "--workers", "2"))
        _wait_healthy(url, procs[1])
        # Two-second streams keep the workers draining for a while after the signal.
        threads = [threading.Thread(target=lambda: done.append(
            httpx.post(url + "/v1/chat/completions", json=body, headers=AUTH, timeout=30).status_code))
            for _ in range(2)]
        for t in threads:
            t.start()
        time.sleep(0.5)
        procs[1].send_signal(signal.SIGTERM)
        began = time.monotonic()
        seen = []
        for at in (0.1, 0.4, 0.8, 1.2, 1.6):  # the parent looks at its signals every half second
            time.sleep(max(0.0, began + at - time.monotonic()))
            try:
                r = httpx.post(url + "/v1/chat/completions", json={**body, "stream": False}, headers=AUTH, timeout=10)
                seen.append(r.status_code)  # still being served: fine
            except httpx.ConnectError:
                seen.append("refused")
            # Anything else (a read error: accepted, then reset) fails the test here.
        assert seen[-2:] == ["refused", "refused"], seen
        for t in threads:
            t.join(30)
        assert done == [200, 200]  # the streams in flight finished
        assert procs[1].wait(30) == 0
    finally:
        for p in reversed(procs):
            _stop(p)


def test_serve_with_two_workers(tmp_path: Path) -> None:
    mport, lport, port = free_port(), free_port(), free_port()
    cfg = tmp_path / "gw.yaml"
    cfg.write_text(f"""
gateway:
  api_keys: [{{key: {GW_KEY}, project: acme}}]
  admin_keys: [{ADMIN_KEY}]
  shutdown_timeout: 0.5
channels:
  - {{name: one, base_url: "http://127.0.0.1:{mport}/v1", api_keys: [{secret('one')}], models: [m],
      behavior: {{ttft: 0.01, output_tokens: 3}}}}
  - {{name: long, base_url: "http://127.0.0.1:{lport}/v1", api_keys: [{secret('long')}], models: [long],
      behavior: {{ttft: 0.01, output_tokens: 80, tokens_per_second: 8}}}}
store: {{flush_interval: 0.05}}
""")
    procs = [_start("mock-provider", "--config", str(cfg), "--port", str(mport)),
             _start("mock-provider", "--config", str(cfg), "--port", str(lport), "--channel", "long")]
    try:
        _wait_healthy(f"http://127.0.0.1:{mport}", procs[0])
        _wait_healthy(f"http://127.0.0.1:{lport}", procs[1])
        procs.append(_start("serve", "--config", str(cfg), "--port", str(port), "--workers", "2"))
        url = f"http://127.0.0.1:{port}"
        _wait_healthy(url, procs[2])
        ids = set()
        for _ in range(12):
            with httpx.Client(base_url=url, timeout=20) as c:  # a connection each: both workers get some
                r = chat(c, "m")
            assert r.status_code == 200, r.text
            ids.add(r.headers["x-request-id"])
        with httpx.Client(base_url=url, timeout=20) as c:
            def stored() -> int:
                r = c.get("/admin/requests", headers=ADMIN)
                return int(r.json()["total"]) if r.status_code == 200 else -1

            until(lambda: stored() == 12, "twelve records in the shared SQLite file", 20)
            # Without shared state a switch would reach one worker of the two: refused, saying what works.
            for path in ("/admin/channels/one/disable", "/admin/channels/one/keys/one%230/disable"):
                r = c.post(path, headers=ADMIN)
                assert r.status_code == 409 and "state.url" in r.json()["error"]["message"], r.text
            assert all(c.get("/admin/channels/one", headers=ADMIN).json()["enabled"] for _ in range(6))

        def counted() -> tuple[float, float, float]:
            # Whichever worker answers, /metrics adds up both (each publishes its figures every second).
            with httpx.Client(base_url=url, timeout=20) as c:
                fams = {f.name: f for f in text_string_to_metric_families(c.get("/metrics").text)}
            def total(fam: str, sample: str) -> float:
                return sum(x.value for x in fams[fam].samples if x.name == sample)
            return (total("axonsim_requests", "axonsim_requests_total"),
                    total("axonsim_upstream_attempts", "axonsim_upstream_attempts_total"),
                    total("axonsim_store_written", "axonsim_store_written_total"))

        # Each scrape goes to either worker; another worker's figures are up to a second old.
        until(lambda: all(counted() == (12, 12, 12) for _ in range(6)), "/metrics counting both workers' requests",
              20)

        # An admin reload answered by one worker reaches both (the parent passes SIGHUP on): each
        # reloads in its own process, and a stream running meanwhile (10 s, on either worker) is not
        # cut by it, whatever the shutdown deadline (the workers used to be replaced, and cut at it).
        streamed: list[bytes] = []
        began = threading.Event()

        def stream() -> None:
            body = {"model": "long", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
            with httpx.Client(base_url=url, timeout=30) as c, c.stream("POST", "/v1/chat/completions", json=body,
                                                                       headers=AUTH) as r:
                ids.add(r.headers["x-request-id"])
                for piece in r.iter_raw():
                    streamed.append(piece)
                    began.set()

        reader = threading.Thread(target=stream)
        reader.start()
        assert began.wait(20)
        cfg.write_text(cfg.read_text().replace("models: [m]", "models: [m, m2]"))
        with httpx.Client(base_url=url, timeout=20) as c:
            r = c.post("/admin/reload", headers=ADMIN)
        assert r.status_code == 200 and r.json()["changed"], r.text
        reader.join(30)
        whole = b"".join(streamed)
        assert whole.endswith(b"data: [DONE]\n\n") and b'"error"' not in whole, whole[-300:]

        def models() -> str:
            try:
                with httpx.Client(base_url=url, timeout=20) as c:
                    return c.get("/v1/models", headers=AUTH).text
            except httpx.TransportError:
                # A connection the old worker accepted as it was being retired (uvicorn closes the
                # connections it has not read a request from yet); the next one reaches a live worker.
                return ""

        until(lambda: all("m2" in models() for _ in range(8)), "both workers serving the reloaded config", 60)
    finally:
        outs = [_stop(p) for p in reversed(procs)]
    out, err = outs[0]
    assert procs[2].returncode == 0, err
    assert "2 workers" in out and "per process" in out and str(tmp_path / "axonsim.db") in out
    assert err.count("Started server process") == 2 and "Traceback" not in err  # reloads replace no worker
    rows = sqlite3.connect(tmp_path / "axonsim.db").execute("SELECT id FROM requests").fetchall()
    assert {r[0] for r in rows} == ids


def test_requests_past_the_shutdown_deadline_are_cancelled_and_recorded(tmp_path: Path,
                                                                        caplog: pytest.LogCaptureFixture) -> None:
    """Past the shutdown deadline a request is cut: the client is told in its own format (a 503
    before the answer began, the in-stream error mid-stream), and the record keeps its attempts."""
    d = DB("sqlite", tmp_path)
    with Stack() as st:
        gw = st.serve(CHANNELS, gateway={**GATEWAY, "shutdown_timeout": 0.5}, routing=ROUTING, mock_kw=MOCK_KW,
                      store=True, extra={"store": {"url": d.url, "flush_interval": 60}})
        slow = st.by_name["slow"].provider
        got: dict[str, Any] = {}

        def plain() -> None:
            with httpx.Client(base_url=gw.url, timeout=30) as c:
                got["plain"] = chat(c, "slow")  # a 20 s answer

        def streamed() -> None:
            body = {"model": "slow", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
            with httpx.Client(base_url=gw.url, timeout=30) as c, c.stream("POST", "/v1/chat/completions", json=body,
                                                                          headers=AUTH) as r:
                got["stream_status"] = r.status_code
                got["stream"] = b"".join(r.iter_raw()).decode()

        threads = [threading.Thread(target=plain), threading.Thread(target=streamed)]
        for t in threads:
            t.start()
        until(lambda: slow.inflight == 2 and "stream_status" in got, "both requests upstream, the stream begun")
        began = time.monotonic()
        st.call(gw.stop(), 30)
        assert time.monotonic() - began < 10  # the deadline, not the 20 s answer
        for t in threads:
            t.join(10)
        until(lambda: slow.inflight == 0, "the upstream calls cancelled")
    r = got["plain"]
    assert r.status_code == 503 and "shut down" in r.json()["error"]["message"], r.text  # not uvicorn's plain 500
    assert r.headers["x-axonsim-attempts"] == "1"  # the call cut short was made, and is recorded
    events = [json.loads(ln[6:]) for ln in got["stream"].split("\n") if ln.startswith("data: {")]
    assert got["stream_status"] == 200 and "shut down" in events[-1]["error"]["message"]
    rows = {r["stream"]: r for r in d.rows("SELECT id, stream, status, outcome, error FROM requests")}
    assert rows[0]["outcome"] == "failed" and rows[0]["status"] == 503 and "shut down" in rows[0]["error"]
    assert rows[1]["outcome"] == "failed" and rows[1]["status"] == 200 and "shut down" in rows[1]["error"]
    attempts = {a["request_id"]: a for a in d.rows("SELECT request_id, channel, status, decision FROM attempts")}
    for row in rows.values():  # each upstream call has its row, abandoned
        a = attempts[row["id"]]
        assert a["channel"] == "slow" and json.loads(a["decision"])["next"] == "cancelled"
    assert attempts[rows[0]["id"]]["status"] == 499 and attempts[rows[1]["id"]]["status"] == 200
    assert "Exception in ASGI application" not in caplog.text  # no traceback per request cut
    assert gw.proxy.router.by_name["slow"].inflight == 0


def test_a_ctrl_c_while_the_workers_start_ends_them_without_a_traceback(tmp_path: Path) -> None:
    """The terminal's Ctrl-C reaches every process of the group; a worker still importing was
    interrupted there (KeyboardInterrupt, a traceback per worker), as CI once caught when the
    workers took long to start."""
    cfg = tmp_path / "gw.yaml"
    cfg.write_text('channels:\n  - {name: c, base_url: "http://127.0.0.1:9/v1", models: [m]}\n'
                   f'store: {{url: "sqlite+aiosqlite:///{tmp_path / "gw.db"}"}}\n')
    proc = subprocess.Popen([sys.executable, "-m", "axonsim", "serve", "--config", str(cfg), "--port",
                             str(free_port()), "--workers", "2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=ROOT, start_new_session=True)
    try:
        assert proc.stderr is not None
        seen = ""
        while "Started parent process" not in seen:
            line = proc.stderr.readline()
            assert line, seen
            seen += line
        time.sleep(0.2)  # the workers are being spawned: importing
        os.killpg(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        _stop(proc)
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    assert proc.returncode == 0, err


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_second_ctrl_c_cuts_the_requests_still_running_and_records_them(tmp_path: Path, workers: str) -> None:
    """The first Ctrl-C waits for requests (up to shutdown_timeout); a second cuts them at once: each
    is answered in its client's format and recorded, the store flushed, no traceback, exit 0.
    uvicorn's own forced exit skipped the app's shutdown (rows lost, tracebacks). Ctrl-C in a
    terminal reaches the whole process group: with --workers, every worker too."""
    m, port = free_port(), free_port()
    db = tmp_path / "gw.db"
    cfg = tmp_path / "gw.yaml"
    cfg.write_text(f"""
gateway: {{api_keys: [{{key: {GW_KEY}}}], shutdown_timeout: 60}}
channels:
  - {{name: slow, base_url: "http://127.0.0.1:{m}/v1", api_keys: [sk-up-slow], models: [m],
     behavior: {{ttft: 0.01, tokens_per_second: 5, output_tokens: 200}}}}
store: {{url: "sqlite+aiosqlite:///{db}", flush_interval: 60}}
""")
    procs = [_start("mock-provider", "--config", str(cfg), "--port", str(m))]
    got: dict[str, Any] = {}
    try:
        _wait_healthy(f"http://127.0.0.1:{m}", procs[0])
        procs.append(subprocess.Popen([sys.executable, "-m", "axonsim", "serve", "--config", str(cfg), "--port",
                                       str(port), "--workers", workers], stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True, cwd=ROOT, start_new_session=True,
                                      env={**os.environ, "PYTHONUNBUFFERED": "1"}))
        _wait_healthy(f"http://127.0.0.1:{port}", procs[1])

        def streamed() -> None:
            body = {"model": "m", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
            with httpx.Client(timeout=60) as c, c.stream("POST", f"http://127.0.0.1:{port}/v1/chat/completions",
                                                         json=body, headers=AUTH) as r:
                got["status"] = r.status_code
                got["body"] = b"".join(r.iter_raw()).decode()

        t = threading.Thread(target=streamed)
        t.start()
        until(lambda: "status" in got, "the stream begun")
        began = time.monotonic()
        os.killpg(procs[1].pid, signal.SIGINT)  # as a terminal's Ctrl-C
        time.sleep(1.0)
        assert procs[1].poll() is None  # the first Ctrl-C waits for the stream (40 s of tokens)
        os.killpg(procs[1].pid, signal.SIGINT)
        out, err = procs[1].communicate(timeout=30)
        assert time.monotonic() - began < 20
        t.join(10)
    finally:
        for p in procs:
            _stop(p)
    assert procs[1].returncode == 0, err
    assert "Traceback" not in err and "cutting the 1 request(s) still running" in err
    events = [json.loads(ln[6:]) for ln in got["body"].split("\n") if ln.startswith("data: {")]
    assert got["status"] == 200 and "shut down" in events[-1]["error"]["message"]
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT status, outcome, error FROM requests").fetchall()
    assert len(rows) == 1 and rows[0][0] == 200 and rows[0][1] == "failed" and "shut down" in rows[0][2]


def _raw_post(port: int, body: dict[str, Any], trace: str) -> bytes:
    b = orjson.dumps(body)
    return (f"POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\nauthorization: Bearer {GW_KEY}\r\n"
            f"content-type: application/json\r\nx-axonsim-trace-id: {trace}\r\ncontent-length: {len(b)}\r\n\r\n"
            ).encode() + b


def _reader_that_stalls(port: int, trace: str) -> socket.socket:
    """A client that asks for a stream and reads none of it (a small window: the answer fills it)."""
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect(("127.0.0.1", port))
    s.sendall(_raw_post(port, {"model": "m", "stream": True, "messages": [{"role": "user", "content": "hi"}]}, trace))
    return s


def _outcomes(db: Path, trace: str) -> list[tuple[int, str]]:
    """(status, outcome) of the stored requests with this trace id."""
    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT status, outcome FROM requests WHERE trace_id = ?", (trace,)).fetchall()


def _gateway(tmp_path: Path, channel: str, workers: int = 1,
             **gateway: Any) -> tuple[Path, Path, list[subprocess.Popen[str]], int]:
    """A mock provider and a gateway on `channel` (one model `m`), each its own process (the gateway
    in a process group of its own, for a terminal's Ctrl-C)."""
    m, port = free_port(), free_port()
    db, cfg = tmp_path / "gw.db", tmp_path / "gw.yaml"
    gw = {"api_keys": [{"key": GW_KEY}], **gateway}
    cfg.write_text(f"""
gateway: {json.dumps(gw)}
channels:
  - {{name: c, base_url: "http://127.0.0.1:{m}/v1", api_keys: [sk-up-c], models: [m], behavior: {channel}}}
store: {{url: "sqlite+aiosqlite:///{db}", flush_interval: 60}}
""")
    procs = [_start("mock-provider", "--config", str(cfg), "--port", str(m))]
    _wait_healthy(f"http://127.0.0.1:{m}", procs[0])
    procs.append(_start("serve", "--config", str(cfg), "--port", str(port), "--workers", str(workers), group=True))
    _wait_healthy(f"http://127.0.0.1:{port}", procs[1])
    return db, cfg, procs, port


def test_a_stream_whose_client_stopped_reading_is_recorded_at_the_shutdown_deadline(tmp_path: Path) -> None:
    """The answer is larger than the socket buffers and the client reads nothing: at the shutdown
    deadline the stream's last words block on flow control. The store must still be open when they
    end (uvicorn runs the app's shutdown without waiting for the cancelled requests)."""
    db, _, procs, port = _gateway(tmp_path, "{ttft: 0.01, tokens_per_second: 400000, output_tokens: 1500000}",
                                  shutdown_timeout=0.5)
    try:
        s = _reader_that_stalls(port, "stalled-client-0001")
        time.sleep(2.0)  # the gateway's writes are now held back by the client's full window
        out, err = _stop(procs[1], sig=signal.SIGTERM)
        s.close()
        assert procs[1].returncode == 0, err
        assert "Exception in ASGI application" not in err and "Traceback" not in err, err
        assert _outcomes(db, "stalled-client-0001") == [(200, "failed")]  # begun, then cut by the shutdown
    finally:
        for p in procs:
            _stop(p)


def _ctrl_c_three_times(proc: subprocess.Popen[str]) -> str:
    """A terminal's Ctrl-C (SIGINT to the process group) pressed three times, 0.3 s apart; the stderr."""
    for _ in range(3):
        os.killpg(proc.pid, signal.SIGINT)
        time.sleep(0.3)
    return proc.communicate(timeout=60)[1]


def test_a_third_ctrl_c_quits_and_says_what_it_lost(tmp_path: Path) -> None:
    """A third Ctrl-C before the shutdown has begun quits at once, without it: the records the store
    had not written are lost. That is said in the log, and the exit code is not a clean one's. (The
    stream's client reads nothing: cut by the second Ctrl-C, its last words wait on flow control for
    up to a second, and the shutdown waits for them.)"""
    db, _, procs, port = _gateway(tmp_path, "{ttft: 0.01, tokens_per_second: 400000, output_tokens: 1500000}",
                                  shutdown_timeout=60)
    try:
        r = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", headers=AUTH, timeout=30, json={
            "model": "m", "max_tokens": 1, "messages": [{"role": "user", "content": "hi"}]})
        assert r.status_code == 200  # its record waits for the store's flush (flush_interval: 60)
        s = _reader_that_stalls(port, "stalled-client-0003")
        time.sleep(2.0)  # the gateway's writes are now held back by the client's full window
        err = _ctrl_c_three_times(procs[1])
        s.close()
    finally:
        for p in procs:
            _stop(p)
    # The answered request's record (the stream's is made once its last words end: not yet).
    assert ("third Ctrl-C: quitting without the shutdown; 1 request record(s) not yet written are lost, and those "
            "of the 1 request(s) still running") in err, err
    assert procs[1].returncode == 130, err
    assert "Exception in 'lifespan' protocol" not in err, err
    assert not db.exists() or _outcomes(db, "stalled-client-0003") == []


def test_a_third_ctrl_c_to_several_workers_exits_as_one_workers_does(tmp_path: Path) -> None:
    """A terminal's Ctrl-C pressed three times reaches every worker: one whose shutdown it cut short
    lost records, and `axonsim serve` exits 130 as with one worker (it exited 0)."""
    _, _, procs, port = _gateway(tmp_path, "{ttft: 0.01, tokens_per_second: 400000, output_tokens: 1500000}",
                                 workers=2, shutdown_timeout=60)
    try:
        s = _reader_that_stalls(port, "stalled-client-0004")
        time.sleep(2.0)
        err = _ctrl_c_three_times(procs[1])
        s.close()
    finally:
        for p in procs:
            _stop(p)
    assert "third Ctrl-C: quitting without the shutdown" in err, err
    assert procs[1].returncode == 130, err


def test_a_client_that_stops_reading_is_cut_off_after_send_timeout(tmp_path: Path) -> None:
    """The answer is larger than the socket buffers and the client stops reading: after
    gateway.send_timeout the connection is closed, the request is the client's cancel (499), and
    its channel is not charged (nginx's send_timeout). It used to wait for ever."""
    db, _, procs, port = _gateway(tmp_path, "{ttft: 0.01, tokens_per_second: 400000, output_tokens: 1500000}",
                                  send_timeout=0.5, admin_keys=["adm-send-timeout-1"])
    try:
        s = _reader_that_stalls(port, "stalled-client-0002")
        time.sleep(0.5)  # the stream is under way, held back by the client's full window
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            chans = httpx.get(f"http://127.0.0.1:{port}/admin/channels",
                              headers={"authorization": "Bearer adm-send-timeout-1"}).json()["channels"]
            if chans[0]["inflight"] == 0:
                break
            time.sleep(0.3)
        assert chans[0]["inflight"] == 0 and chans[0]["failures"] == 0  # ended, not charged to the channel
        s.close()
        out, err = _stop(procs[1], sig=signal.SIGTERM)
        assert "gateway.send_timeout" in err and "Traceback" not in err, err
        assert _outcomes(db, "stalled-client-0002") == [(499, "cancelled")]
    finally:
        for p in procs:
            _stop(p)


def test_a_client_reading_slowly_but_steadily_is_not_cut_off(tmp_path: Path) -> None:
    """A large answer on a slow link keeps the writes paused for longer than send_timeout, but the
    client reads all the while: it gets the whole answer (nginx's send_timeout is between reads)."""
    db, _, procs, port = _gateway(tmp_path, "{ttft: 0.01, tokens_per_second: 100000000, output_tokens: 1500000}",
                                  send_timeout=0.3)
    try:
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        s.connect(("127.0.0.1", port))
        s.sendall(_raw_post(port, {"model": "m", "messages": [{"role": "user", "content": "hi"}]}, "slow-client-0001"))
        data = b""
        started = time.monotonic()
        while b"\r\n\r\n" not in data or len(data) - data.index(b"\r\n\r\n") - 4 < _length(data):
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
            time.sleep(0.02)  # at most ~3 MB/s: megabytes wait beyond the socket buffers for over a second
        s.close()
        assert data.startswith(b"HTTP/1.1 200") and time.monotonic() - started > 1.0
        assert len(data) - data.index(b"\r\n\r\n") - 4 == _length(data)
        out, err = _stop(procs[1], sig=signal.SIGTERM)
        assert "gateway.send_timeout" not in err, err
    finally:
        for p in procs:
            _stop(p)


def _length(head: bytes) -> int:
    m = re.search(rb"content-length: (\d+)", head, re.IGNORECASE)
    return int(m.group(1)) if m else 1 << 62


def test_a_client_that_leaves_while_sending_its_body_is_recorded_under_its_key(tmp_path: Path) -> None:
    db, _, procs, port = _gateway(tmp_path, "{ttft: 0.01}", api_keys=[{"key": GW_KEY, "project": "p1", "name": "app1"}])
    try:
        s = socket.socket()
        s.connect(("127.0.0.1", port))
        s.sendall(_raw_post(port, {"model": "m", "messages": [{"role": "user", "content": "hi"}]}, "upload-0001")[:-10])
        time.sleep(0.3)
        s.close()
        time.sleep(0.3)
        _stop(procs[1], sig=signal.SIGTERM)
        rows = sqlite3.connect(db).execute("SELECT status, project, key_name FROM requests WHERE trace_id = ?",
                                           ("upload-0001",)).fetchall()
        assert rows == [(499, "p1", "app1")]  # counted in its project's usage, not under ""
    finally:
        for p in procs:
            _stop(p)


def test_an_invalid_chunked_body_is_recorded_as_the_400_it_was_answered(tmp_path: Path) -> None:
    db, _, procs, port = _gateway(tmp_path, "{ttft: 0.01}")
    try:
        s = socket.socket()
        s.connect(("127.0.0.1", port))
        s.sendall((f"POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\nauthorization: Bearer {GW_KEY}\r\n"
                   "content-type: application/json\r\nx-axonsim-trace-id: bad-chunk-0001\r\n"
                   "transfer-encoding: chunked\r\n\r\n5\r\n{\"mod\r\nzz-not-a-size\r\n").encode())
        answer = s.recv(4096)
        s.close()
        assert answer.startswith(b"HTTP/1.1 400")
        time.sleep(0.3)
        _stop(procs[1], sig=signal.SIGTERM)
        assert _outcomes(db, "bad-chunk-0001") == [(400, "failed")]  # it was recorded as a client that left (499)
    finally:
        for p in procs:
            _stop(p)


def test_a_pipelined_request_whose_client_left_is_cancelled_and_recorded_as_such(tmp_path: Path) -> None:
    """Two requests pipelined on one connection, then the client goes: uvicorn told only the queued
    one. The running one must be cancelled (its upstream call too) and recorded as 499, not run to
    its end and fail writing into a closed connection ("failed inside the gateway")."""
    db, _, procs, port = _gateway(tmp_path, "{ttft: 0.01, tokens_per_second: 5, output_tokens: 100}")
    try:
        s = socket.socket()
        s.connect(("127.0.0.1", port))
        body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
        s.sendall(_raw_post(port, body, "pipelined-0001") + _raw_post(port, body, "pipelined-0002"))
        time.sleep(0.3)
        s.close()
        deadline = time.monotonic() + 10  # the upstream answer would take 20 s
        with httpx.Client(timeout=5) as c:
            while time.monotonic() < deadline:
                text = c.get(f"http://127.0.0.1:{port}/metrics").text
                if "axonsim_requests_inflight 0.0" in text:
                    break
                time.sleep(0.1)
            else:
                raise AssertionError("the pipelined request was not cancelled")
        out, err = _stop(procs[1], sig=signal.SIGTERM)
        assert "failed inside the gateway" not in err and "Traceback" not in err, err
        assert _outcomes(db, "pipelined-0001") == [(499, "cancelled")]
    finally:
        for p in procs:
            _stop(p)


def test_a_channel_test_cut_by_the_shutdown_deadline_answers_in_the_admin_shape(tmp_path: Path) -> None:
    _, _, procs, port = _gateway(tmp_path, "{ttft: 0.01, tokens_per_second: 5, output_tokens: 100}",
                                 shutdown_timeout=0.5, admin_keys=["adm-key-7f3e"])
    got: dict[str, Any] = {}

    def test_call() -> None:
        got["r"] = httpx.post(f"http://127.0.0.1:{port}/admin/channels/c/test",
                              headers={"Authorization": "Bearer adm-key-7f3e"}, timeout=30)

    t = threading.Thread(target=test_call)
    try:
        t.start()
        time.sleep(1.0)  # the test's stream is under way (it takes 20 s)
        out, err = _stop(procs[1], sig=signal.SIGTERM)
        t.join(10)
        r = got["r"]
        assert r.status_code == 503 and "shut down" in r.json()["error"]["message"], r.text
        assert "Exception in ASGI application" not in err and "Traceback" not in err, err
    finally:
        for p in procs:
            _stop(p)


def _answer(s: socket.socket, wait: float = 10.0) -> bytes:
    """Everything the gateway sends on `s` until it closes the connection (or `wait` passes)."""
    s.settimeout(wait)
    data = b""
    try:
        while chunk := s.recv(65536):
            data += chunk
    except (TimeoutError, ConnectionResetError):
        pass
    return data


def test_a_head_too_large_is_431_and_stalled_heads_and_bodies_are_408(tmp_path: Path) -> None:
    """nginx's large_client_header_buffers, client_header_timeout and client_body_timeout: a head
    without bound held the event loop for seconds (httptools appends each read to a header value),
    and a request that stopped arriving held its connection, its slot and its body for ever."""
    db, _, procs, port = _gateway(tmp_path, "{ttft: 0.01, output_tokens: 3}", read_timeout=0.5)
    try:
        # a header line that never ends, sent in many reads: refused once past the bound
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\nx-long: ")
        try:
            for _ in range(400):
                s.sendall(b"a" * 4096)
        except (BrokenPipeError, ConnectionResetError):
            pass  # closed on us
        answer = _answer(s)
        assert answer.startswith(b"HTTP/1.1 431 "), answer[:200]
        assert orjson.loads(answer.split(b"\r\n\r\n", 1)[1])["error"]["code"] == "request_header_fields_too_large"
        s.close()
        # past the bound by a little, in one write (one read on loopback, or two), a header or the
        # request line: the bytes of the read the head began in count too
        for head in (b"POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\nx-long: " + b"a" * 70_000 + b"\r\n\r\n",
                     b"GET /admin/requests/" + b"r" * 66_000 + b" HTTP/1.1\r\nhost: gw\r\n\r\n"):
            s = socket.create_connection(("127.0.0.1", port))
            try:
                s.sendall(head)
            except (BrokenPipeError, ConnectionResetError):
                pass
            answer = _answer(s)
            assert answer.startswith(b"HTTP/1.1 431 "), answer[:200]
            s.close()
        # pipelined: a request with a large body and the start of the next one's head in one write;
        # the rest of that head later. The first request's bytes are not the second head's.
        big = _raw_post(port, {"model": "m", "messages": [{"role": "user", "content": "x" * 100_000}]}, "big-0001")
        last = _raw_post(port, {"model": "m", "messages": [{"role": "user", "content": "hi"}]}, "next-0001")
        last = last.replace(b"content-type: application/json", b"connection: close\r\ncontent-type: application/json")
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(big + last[:20])
        time.sleep(0.3)
        s.sendall(last[20:])
        answer = _answer(s)
        assert answer.count(b"HTTP/1.1 200 ") == 2 and b" 431 " not in answer, answer[:300]
        s.close()
        # a head that stops arriving
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\n")
        started = time.monotonic()
        answer = _answer(s)
        assert answer.startswith(b"HTTP/1.1 408 ") and time.monotonic() - started < 5, answer[:200]
        s.close()
        # a body that stops arriving: 408, and recorded as such
        body = orjson.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]})
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(_raw_post(port, {"model": "m", "messages": [{"role": "user", "content": "hi"}]}, "stalled-body-0001")
                  [:-len(body) + 5])
        answer = _answer(s)
        assert answer.startswith(b"HTTP/1.1 408 ") and b"gateway.read_timeout" in answer, answer[:300]
        s.close()
        # a keyless client is answered 401 at once; a body it then stops sending does not hold the connection
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\nauthorization: Bearer nope-nope-nope\r\n"
                  b"content-length: 100000\r\n\r\n" + b"x" * 100)
        started = time.monotonic()
        answer = _answer(s)
        assert answer.startswith(b"HTTP/1.1 401 ") and b"HTTP/1.1 408" not in answer, answer[:300]
        assert time.monotonic() - started < 5  # closed, not held
        s.close()
        # a body that comes slowly but steadily (each gap shorter than read_timeout) is served
        s = socket.create_connection(("127.0.0.1", port))
        raw = _raw_post(port, {"model": "m", "messages": [{"role": "user", "content": "hi"}]}, "slow-body-0001")
        head_end = raw.index(b"\r\n\r\n") + 4
        s.sendall(raw[:head_end])
        for i in range(head_end, len(raw), 10):
            time.sleep(0.1)
            s.sendall(raw[i:i + 10])
        s.settimeout(10)
        assert s.recv(65536).startswith(b"HTTP/1.1 200 ")
        s.close()
        # and the gateway is as it was
        r = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", headers={"authorization": f"Bearer {GW_KEY}"},
                       json={"model": "m", "messages": [{"role": "user", "content": "hi"}]}, timeout=10)
        assert r.status_code == 200
        out, err = _stop(procs[1], sig=signal.SIGTERM)
        assert "Traceback" not in err, err
        assert _outcomes(db, "stalled-body-0001") == [(408, "failed")]
        assert _outcomes(db, "slow-body-0001") == [(200, "completed")]
    finally:
        for p in procs:
            _stop(p)
