"""The admin API over a real SQLite store: auth, filters, usage, channel switches that routing obeys, reload, no secrets."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from axonsim.config import Config, ConfigError, parse_config
from axonsim.config import Store as StoreSettings
from axonsim.execution import Outcome, Router
from axonsim.unified import ErrorKind
from server.admin import AdminContext, admin_router, config_changes
from server.store import AttemptRow, RequestRecord, Store, secrets_from_config
from server.store.queries import Filter, attempt_usage

pytestmark = pytest.mark.timeout(60)

# Recognisable secrets: any of them in any admin answer is a leak.
UP = {"alpha": "upstream-secret-alpha-91c2e7", "beta": "upstream-secret-beta-4b8d10",
      "g1": "upstream-secret-gamma1-77aa01", "g2": "upstream-secret-gamma2-e5f3c9"}
GW_KEY = "gw-client-secret-5d1f0b"
ADMIN_KEY = "admin-secret-c0ffee42"
NEW_ADMIN_KEY = "admin-secret-rotated-1a2b3c"
DB_PASSWORD = "db-password-9e8d7c"
SECRETS = [*UP.values(), GW_KEY, ADMIN_KEY, NEW_ADMIN_KEY]

ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
CLIENT = {"Authorization": f"Bearer {GW_KEY}"}

T0 = 1_700_000_000.0  # 2023-11-14T22:13:20Z


def config_dict(**over: Any) -> dict[str, Any]:
    d: dict[str, Any] = {
        "gateway": {"api_keys": [{"key": GW_KEY, "project": "acme", "name": "acme-app"}], "admin_keys": [ADMIN_KEY]},
        "channels": [
            {"name": "alpha", "api_keys": [UP["alpha"]], "models": ["m1"], "base_url": "http://127.0.0.1:9/v1"},
            {"name": "beta", "api_keys": [UP["beta"]], "models": ["m1", "m2"], "base_url": "http://127.0.0.1:9/v1"},
            {"name": "gamma", "api_keys": [{"key": UP["g1"], "name": "g-one"}, {"key": UP["g2"], "name": "g-two"}],
             "models": ["m2"], "key_strategy": "round_robin", "base_url": "http://127.0.0.1:9/v1"},
        ],
        "routing": {"strategy": "round_robin", "retry": {"backoff": {"base": 0.001, "cap": 0.001, "jitter": 0}}},
        "prices": {"m1": {"input": 1.0, "output": 2.0}},
    }
    d.update(over)
    return d


def records() -> list[RequestRecord]:
    return [
        RequestRecord(id="r1", created_at=T0, project="acme", key_name="acme-app", model="m1",
                      client_format="openai_chat", status=200, outcome="completed", latency=0.5, ttft=0.1,
                      prompt_tokens=100, completion_tokens=50, cost=0.0002, channel="alpha",
                      attempts=[AttemptRow(1, "alpha", "m1", 200, key_name="alpha#0", latency=0.5, ttft=0.1,
                                           cost=0.0002, decision={"next": "done"})]),
        RequestRecord(id="r2", created_at=T0 + 100, project="acme", key_name="acme-app", model="m1",
                      client_format="anthropic", status=200, outcome="completed", prompt_tokens=10,
                      completion_tokens=5, cost=0.00002, channel="beta",
                      attempts=[AttemptRow(1, "alpha", "m1", 500, key_name="alpha#0", error="server_error",
                                           error_kind="server_error", decision={"next": "failover", "decision": 0}),
                                AttemptRow(2, "beta", "m1", 200, key_name="beta#0", cost=0.00002,
                                           decision={"next": "done", "decision": 1})]),
        RequestRecord(id="r3", created_at=T0 + 200, project="other", model="m2", client_format="openai_chat",
                      status=502, outcome="failed", error="upstream failed",
                      attempts=[AttemptRow(1, "gamma", "m2", 500, key_name="g-one", error="server_error",
                                           error_kind="server_error")]),
        RequestRecord(id="r4", created_at=T0 + 300, project="other", model="m2", client_format="gemini", stream=True,
                      status=499, outcome="cancelled",
                      attempts=[AttemptRow(1, "gamma", "m2", 499, key_name="g-two", decision={"next": "cancelled"})]),
        # An upstream that quotes the key back: the store scrubs it, and so does the admin API.
        RequestRecord(id="r5", created_at=T0 + 400, project="leaky", model="m1", client_format="openai_chat",
                      status=502, outcome="failed", error=f"upstream said: invalid key {UP['alpha']}",
                      attempts=[AttemptRow(1, "alpha", "m1", 401, key_name="alpha#0",
                                           error=f"bad key {UP['alpha']}", error_kind="authentication")]),
    ]


class Gateway:
    """What the proxy would provide: a swappable Router, the store, reload, a clock, the recent log."""

    def __init__(self, config: Config, store: Store | None) -> None:
        self.router = Router(config)
        self.store = store
        self.clock = T0 + 1000
        self.next_config: dict[str, Any] | None = None
        self.reload_error: Exception | None = None
        self.recent: dict[str, dict[str, Any]] = {}
        self.ctx = AdminContext(lambda: self.router, lambda: self.store, self.reload, lambda: self.clock,
                                self.recent.get)
        app = FastAPI()
        app.include_router(admin_router(self.ctx))
        self.app = app
        self.seen: list[str] = []  # every response body, for the secrets check

    async def reload(self) -> None:
        if self.reload_error is not None:
            raise self.reload_error
        assert self.next_config is not None
        self.router = Router(parse_config(self.next_config))

    def client(self) -> httpx.AsyncClient:
        async def keep(response: httpx.Response) -> None:
            await response.aread()
            self.seen.append(response.text)
            self.seen.append(str(response.headers))

        return httpx.AsyncClient(transport=httpx.ASGITransport(app=self.app), base_url="http://gw",
                                 event_hooks={"response": [keep]})


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    s = Store(StoreSettings(url=f"sqlite+aiosqlite:///{tmp_path / 'admin.db'}", flush_interval=0.01),
              secrets=secrets_from_config(parse_config(config_dict())))
    await s.start()
    for r in records():
        assert s.submit(r)
    assert await s.flush(30)
    assert s.written == 5
    yield s
    await s.close()


@pytest.fixture
async def gw(store: Store) -> Gateway:
    return Gateway(parse_config(config_dict()), store)


@pytest.fixture
async def client(gw: Gateway) -> AsyncIterator[httpx.AsyncClient]:
    async with gw.client() as c:
        yield c


def ids(r: httpx.Response) -> list[str]:
    assert r.status_code == 200, r.text
    return [row["id"] for row in r.json()["data"]]


# --------------------------------------------------------------------------------------------------
# Auth


ENDPOINTS = [("GET", "/admin/requests"), ("GET", "/admin/requests/r1"), ("GET", "/admin/attempts"),
             ("GET", "/admin/usage"), ("GET", "/admin/usage/attempts"), ("GET", "/admin/channels"),
             ("GET", "/admin/channels/alpha"), ("GET", "/admin/store"), ("POST", "/admin/channels/alpha/disable"),
             ("POST", "/admin/channels/alpha/enable"), ("POST", "/admin/channels/gamma/keys/g-one/disable"),
             ("POST", "/admin/channels/gamma/keys/g-one/enable"), ("POST", "/admin/reload")]


@pytest.mark.parametrize(("method", "path"), ENDPOINTS)
async def test_auth_is_required_everywhere(client: httpx.AsyncClient, gw: Gateway, method: str, path: str) -> None:
    r = await client.request(method, path)
    assert r.status_code == 401
    assert r.headers["www-authenticate"].startswith("Bearer")
    assert r.json()["error"]["type"] == "authentication_error"
    r = await client.request(method, path, headers={"Authorization": "Bearer not-a-key"})
    assert r.status_code == 401
    assert r.json()["error"]["message"] == "invalid admin key"
    r = await client.request(method, path, headers={"Authorization": f"Basic {ADMIN_KEY}"})
    assert r.status_code == 401  # the admin key, but not as a bearer token
    r = await client.request(method, path, headers=CLIENT)
    assert r.status_code == 403
    assert r.json()["error"]["type"] == "permission_error"
    assert "admin key" in r.json()["error"]["message"]
    r = await client.request(method, path, headers={"x-api-key": ADMIN_KEY})
    assert r.status_code == 401  # only Authorization: Bearer opens the admin API
    gw.next_config = config_dict()
    r = await client.request(method, path, headers=ADMIN)
    assert r.status_code == 200, r.text


async def test_no_admin_keys_means_closed(store: Store) -> None:
    cfg = config_dict()
    cfg["gateway"] = {"api_keys": [{"key": GW_KEY}]}
    g = Gateway(parse_config(cfg), store)
    async with g.client() as c:
        r = await c.get("/admin/channels", headers=ADMIN)
        assert r.status_code == 401
        assert "no gateway.admin_keys" in r.json()["error"]["message"]
        assert (await c.get("/admin/channels", headers=CLIENT)).status_code == 403


# --------------------------------------------------------------------------------------------------
# Requests, attempts, usage


async def test_request_filters(client: httpx.AsyncClient) -> None:
    async def q(params: str) -> list[str]:
        return ids(await client.get(f"/admin/requests?{params}", headers=ADMIN))

    assert await q("") == ["r5", "r4", "r3", "r2", "r1"]  # newest first
    assert await q("project=acme") == ["r2", "r1"]
    assert await q("model=m2") == ["r4", "r3"]
    assert await q("channel=alpha") == ["r5", "r2", "r1"]  # any attempt on it, failovers included
    assert await q("channel=beta") == ["r2"]
    assert await q("status=502") == ["r5", "r3"]
    assert await q("outcome=cancelled") == ["r4"]
    assert await q("key_name=acme-app") == ["r2", "r1"]
    assert await q(f"since={T0 + 100}&until={T0 + 300}") == ["r3", "r2"]  # since inclusive, until exclusive
    assert await q("since=2023-11-14T22:15:00Z") == ["r5", "r4", "r3", "r2"]  # ISO 8601
    assert await q("until=2023-11-14T23:13:20%2B01:00") == []  # an offset is honoured: that is T0
    assert await q("project=acme&model=m1&outcome=completed&channel=beta") == ["r2"]
    assert await q("project=nobody") == []

    r = await client.get("/admin/requests?limit=2", headers=ADMIN)
    assert ids(r) == ["r5", "r4"]
    assert r.json()["total"] == 5 and r.json()["limit"] == 2
    assert await q("limit=2&offset=2") == ["r3", "r2"]
    assert await q("limit=1000") == ["r5", "r4", "r3", "r2", "r1"]


async def test_pages_follow_next_cursor(client: httpx.AsyncClient) -> None:
    for path, key, everything in (
        ("/admin/requests", "id", ["r5", "r4", "r3", "r2", "r1"]),
        ("/admin/attempts", "request_id", ["r5", "r4", "r3", "r2", "r2", "r1"]),
    ):
        seen: list[str] = []
        r = await client.get(f"{path}?limit=2", headers=ADMIN)
        while True:
            assert r.status_code == 200, r.text
            body = r.json()
            seen += [row[key] for row in body["data"]]
            if body["next_cursor"] is None:
                break
            assert len(body["data"]) == 2
            r = await client.get(path, params={"limit": "2", "cursor": body["next_cursor"]}, headers=ADMIN)
        assert seen == everything
    r = await client.get("/admin/requests?limit=1000", headers=ADMIN)
    assert r.json()["next_cursor"] is None  # a short page is the last
    for query, says in (("cursor=abc", "is not a next_cursor"), ("cursor=WzEsIngiXQ&offset=2", "not both")):
        r = await client.get(f"/admin/attempts?{query}", headers=ADMIN)
        assert r.status_code == 400 and r.json()["error"]["param"] == "cursor" and says in r.json()["error"]["message"]
    first = (await client.get("/admin/requests?limit=1", headers=ADMIN)).json()["next_cursor"]
    r = await client.get("/admin/attempts", params={"cursor": first}, headers=ADMIN)
    assert r.status_code == 400 and r.json()["error"]["param"] == "cursor"  # a requests cursor for attempts


async def test_request_rows_carry_the_record(client: httpx.AsyncClient) -> None:
    row = (await client.get("/admin/requests?project=acme&limit=1", headers=ADMIN)).json()["data"][0]
    assert row["id"] == "r2"
    assert row["client_format"] == "anthropic" and row["channel"] == "beta" and row["status"] == 200
    assert row["prompt_tokens"] == 10 and row["cost"] == pytest.approx(0.00002)
    assert "attempts" not in row and "request_body" not in row


@pytest.mark.parametrize(("path", "param"), [
    ("/admin/requests?since=yesterday", "since"),
    ("/admin/requests?until=2023-13-45", "until"),
    ("/admin/requests?since=", "since"),
    ("/admin/requests?since=nan", "since"),
    ("/admin/requests?limit=5000", "limit"),
    ("/admin/requests?limit=0", "limit"),
    ("/admin/requests?limit=ten", "limit"),
    ("/admin/requests?offset=-1", "offset"),
    ("/admin/requests?status=ok", "status"),
    ("/admin/requests?outcome=great", "outcome"),
    ("/admin/requests?colour=red", "colour"),
    ("/admin/requests?since=200&until=100", "until"),
    ("/admin/requests?project=a&project=b", "project"),
    ("/admin/requests?group_by=project", "group_by"),
    ("/admin/attempts?limit=1001", "limit"),
    ("/admin/attempts?since=soon", "since"),
    ("/admin/usage?group_by=planet", "group_by"),
    ("/admin/usage?group_by=project,planet", "group_by"),
    ("/admin/usage?limit=5", "limit"),
    ("/admin/usage?until=later", "until"),
    ("/admin/usage/attempts?group_by=colour", "group_by"),
    # Beyond the databases' 64-bit integers (they used to reach the driver and come back as a 500).
    ("/admin/requests?offset=9223372036854775808", "offset"),
    ("/admin/requests?status=99999999999999999999", "status"),
    ("/admin/requests?status=-1", "status"),
    ("/admin/attempts?offset=9223372036854775808", "offset"),
    ("/admin/attempts?status=1000", "status"),
    ("/admin/usage?status=99999999999999999999", "status"),
    ("/admin/usage/attempts?status=99999999999999999999", "status"),
    # A NUL: PostgreSQL refuses the query (it used to come back as 503 "database unavailable")
    ("/admin/requests?project=%00", "project"),
    ("/admin/attempts?channel=a%00", "channel"),
    ("/admin/usage?project=%00", "project"),
    ("/admin/usage/attempts?key_name=%00", "key_name"),
    # Percent-encoded bytes that are not UTF-8: they used to become U+FFFD, a filter matching nothing.
    ("/admin/requests?project=%FF", "project"),
    ("/admin/attempts?channel=%FF%FE", "channel"),
    ("/admin/usage?model=%C3%28", "model"),
    ("/admin/usage/attempts?trace_id=%ED%A0%80", "trace_id"),
])
async def test_bad_filters_are_400_naming_the_parameter(client: httpx.AsyncClient, path: str, param: str) -> None:
    r = await client.get(path, headers=ADMIN)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == param
    assert param in err["message"]
    assert err["type"] == "invalid_request_error"


async def test_one_request_with_attempts_and_decisions(client: httpx.AsyncClient, gw: Gateway) -> None:
    trace = [{"tier": 0, "candidates": [{"channel": "alpha"}], "chosen": "alpha", "by": "strategy"},
             {"tier": 0, "candidates": [{"channel": "beta"}], "chosen": "beta", "by": "strategy"}]
    gw.recent["r2"] = {"id": "r2", "decisions": trace}
    d = (await client.get("/admin/requests/r2", headers=ADMIN)).json()
    assert d["id"] == "r2" and d["source"] == "store" and d["channel"] == "beta"
    assert [(a["n"], a["channel"], a["status"], a["error_kind"]) for a in d["attempts"]] == [
        (1, "alpha", 500, "server_error"), (2, "beta", 200, None)]
    assert d["attempts"][0]["decision"] == {"next": "failover", "decision": 0}
    assert d["attempts"][0]["key_name"] == "alpha#0"
    assert d["decisions"] == trace

    r = await client.get("/admin/requests/nope", headers=ADMIN)
    assert r.status_code == 404 and r.json()["error"]["param"] == "request_id"


async def test_a_stored_decision_trace_outlives_the_process(client: httpx.AsyncClient, gw: Gateway) -> None:
    # After a restart, or from another worker, nothing is in memory: the trace comes from the choices
    # kept with the attempts (server.proxy.store_record), one entry per pick (review: it was null).
    pick_a = {"tier": 0, "candidates": [{"channel": "alpha"}, {"channel": "beta"}], "chosen": "alpha"}
    pick_b = {"tier": 0, "candidates": [{"channel": "beta"}], "chosen": "beta"}
    assert gw.store is not None and gw.store.submit(RequestRecord(
        id="r-explained", created_at=T0 + 500, project="acme", model="m1", client_format="openai_chat", status=200,
        outcome="completed", channel="beta", attempts=[
            AttemptRow(1, "alpha", "m1", 500, error_kind="server_error", decision={"next": "retry", "choice": pick_a}),
            AttemptRow(2, "alpha", "m1", 500, error_kind="server_error", decision={"next": "failover",
                                                                                   "choice": pick_a}),
            AttemptRow(3, "beta", "m1", 200, decision={"next": "done", "choice": pick_b})]))
    assert await gw.store.flush(30)
    d = (await client.get("/admin/requests/r-explained", headers=ADMIN)).json()
    assert d["source"] == "store" and d["decisions"] == [pick_a, pick_b]
    # a request that was not explained has none
    assert (await client.get("/admin/requests/r1", headers=ADMIN)).json()["decisions"] is None


async def test_a_request_not_yet_in_the_store_comes_from_the_recent_log(client: httpx.AsyncClient,
                                                                         gw: Gateway) -> None:
    gw.recent["req_new"] = {
        "id": "req_new", "created_at": T0 + 999, "client_format": "openai_chat", "model": "m1", "stream": False,
        "project": "acme", "key_name": "acme-app", "status": 200, "outcome": "completed", "error": None,
        "latency": 0.2, "ttft": 0.1, "usage": {"prompt_tokens": 3, "completion_tokens": 4}, "channel": "beta",
        "trace_id": "t1", "thread_id": None, "decisions": [{"chosen": "beta"}],
        "attempts": [{"attempt": 1, "channel": "beta", "key": "beta#0", "upstream_model": "m1", "start": T0 + 999,
                      "end": T0 + 999.2, "status": 200, "error": None, "next": "done", "decision": 0}]}
    d = (await client.get("/admin/requests/req_new", headers=ADMIN)).json()
    assert d["source"] == "recent" and d["prompt_tokens"] == 3 and d["decisions"] == [{"chosen": "beta"}]
    assert d["attempts"][0]["latency"] == pytest.approx(0.2)


async def test_a_request_in_memory_is_answered_while_the_database_is_away(client: httpx.AsyncClient, gw: Gateway,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    import server.admin

    async def down(engine: Any, request_id: str) -> Any:
        raise OSError("connection refused")

    monkeypatch.setattr(server.admin.Q, "get_request", down)
    gw.recent["req_mem"] = {"id": "req_mem", "created_at": T0, "client_format": "openai_chat", "model": "m1",
                            "stream": False, "project": "acme", "status": 200, "outcome": "completed",
                            "attempts": []}
    r = await client.get("/admin/requests/req_mem", headers=ADMIN)
    assert r.status_code == 200 and r.json()["source"] == "recent"
    r = await client.get("/admin/requests/req_gone", headers=ADMIN)
    assert r.status_code == 503  # not in memory: the database's absence is the answer
    r = await client.get("/admin/requests/req_%00", headers=ADMIN)
    assert r.status_code == 404


async def test_attempt_filters(client: httpx.AsyncClient) -> None:
    async def q(params: str) -> list[tuple[str, int]]:
        r = await client.get(f"/admin/attempts?{params}", headers=ADMIN)
        assert r.status_code == 200, r.text
        return [(a["request_id"], a["n"]) for a in r.json()["data"]]

    assert await q("") == [("r5", 1), ("r4", 1), ("r3", 1), ("r2", 2), ("r2", 1), ("r1", 1)]
    assert await q("channel=alpha") == [("r5", 1), ("r2", 1), ("r1", 1)]
    assert await q("channel=alpha&status=500") == [("r2", 1)]  # the attempt's own status
    assert await q("key_name=g-two") == [("r4", 1)]  # the upstream key's name
    assert await q("project=other") == [("r4", 1), ("r3", 1)]
    assert await q(f"since={T0 + 100}&until={T0 + 101}") == [("r2", 2), ("r2", 1)]
    assert await q("limit=2&offset=1") == [("r4", 1), ("r3", 1)]
    a = (await client.get("/admin/attempts?channel=beta", headers=ADMIN)).json()["data"][0]
    assert a["project"] == "acme" and a["model"] == "m1" and a["upstream_model"] == "m1"


async def test_query_parameters_are_read_as_utf8_text(client: httpx.AsyncClient) -> None:
    r = await client.get("/admin/requests?%FF=1", headers=ADMIN)
    assert r.status_code == 400 and "not UTF-8" in r.json()["error"]["message"]
    r = await client.get("/admin/requests", params={"project": "été", "limit": "5"}, headers=ADMIN)
    assert r.status_code == 200 and r.json()["data"] == [], r.text
    r = await client.get("/admin/requests?project=acme&limit=1&offset=1", headers=ADMIN)
    assert r.status_code == 200 and r.json()["limit"] == 1 and r.json()["offset"] == 1 and len(r.json()["data"]) == 1
    r = await client.get("/admin/requests?project=ac%6De&limit=", headers=ADMIN)  # an empty limit is no number
    assert r.status_code == 400 and r.json()["error"]["param"] == "limit"


async def test_usage_by_project_model_channel(client: httpx.AsyncClient) -> None:
    r = await client.get("/admin/usage?group_by=project", headers=ADMIN)
    assert r.status_code == 200, r.text
    body = r.json()
    by = {row["group"]["project"]: row for row in body["data"]}
    assert set(by) == {"acme", "other", "leaky"}
    assert by["acme"]["requests"] == 2 and by["acme"]["completed"] == 2
    assert by["acme"]["prompt_tokens"] == 110 and by["acme"]["completion_tokens"] == 55
    assert by["acme"]["cost"] == pytest.approx(0.00022)
    assert by["other"]["failed"] == 1 and by["other"]["cancelled"] == 1 and by["other"]["unpriced"] == 2
    assert body["total"]["requests"] == 5 and body["total"]["cost"] == pytest.approx(0.00022)
    assert body["data"][0]["group"]["project"] == "acme"  # highest cost first

    by_model = {row["group"]["model"]: row["requests"]
                for row in (await client.get("/admin/usage?group_by=model", headers=ADMIN)).json()["data"]}
    assert by_model == {"m1": 3, "m2": 2}
    by_channel = {row["group"]["channel"]: row["requests"]
                  for row in (await client.get("/admin/usage?group_by=channel", headers=ADMIN)).json()["data"]}
    assert by_channel == {"alpha": 1, "beta": 1, None: 3}  # the channel that answered; failures have none
    both = (await client.get("/admin/usage?group_by=project,model&project=acme", headers=ADMIN)).json()
    assert both["group_by"] == ["project", "model"]
    assert [row["group"] for row in both["data"]] == [{"project": "acme", "model": "m1"}]

    ranged = (await client.get(f"/admin/usage?since={T0 + 50}&until={T0 + 250}", headers=ADMIN)).json()
    assert {row["group"]["project"]: row["requests"] for row in ranged["data"]} == {"acme": 1, "other": 1}
    assert ranged["since"] == T0 + 50 and ranged["until"] == T0 + 250
    assert (await client.get("/admin/usage", headers=ADMIN)).json()["group_by"] == ["project"]


async def test_attempt_usage_by_channel(client: httpx.AsyncClient) -> None:
    r = await client.get("/admin/usage/attempts", headers=ADMIN)
    assert r.status_code == 200, r.text
    by = {row["group"]["channel"]: row for row in r.json()["data"]}
    # gamma's second attempt (r4) was abandoned by its client: called off, not the channel's failure.
    assert {c: (row["attempts"], row["failures"]) for c, row in by.items()} == {
        "alpha": (3, 2), "beta": (1, 0), "gamma": (2, 1)}
    assert by["alpha"]["cost"] == pytest.approx(0.0002)


async def test_attempts_our_side_called_off_are_not_failures(tmp_path: Path) -> None:
    """A lost hedge (status 0) and an attempt abandoned for a client that left (499) count as
    attempts, not failures, as the metrics' attempt outcome and the channel's own state have them;
    a status-0 attempt that was the channel's failure still counts."""
    s = Store(StoreSettings(url=f"sqlite+aiosqlite:///{tmp_path / 'off.db'}", flush_interval=0.01))
    await s.start()
    try:
        def rec(rid: str, *atts: AttemptRow) -> RequestRecord:
            return RequestRecord(id=rid, created_at=T0, project="p", model="m1", client_format="openai_chat",
                                 status=200, outcome="completed", attempts=list(atts))
        assert s.submit(rec("h1", AttemptRow(1, "fast", "m1", 200, decision={"next": "done"}),
                            AttemptRow(2, "slow", "m1", 0, decision={"next": "hedge_lost"})))
        assert s.submit(rec("c1", AttemptRow(1, "slow", "m1", 499, decision={"next": "cancelled"})))
        assert s.submit(rec("t1", AttemptRow(1, "slow", "m1", 0, error="timed out", error_kind="timeout",
                                             decision={"next": "failover"}),
                            AttemptRow(2, "fast", "m1", 200, decision={"next": "done"})))
        assert s.submit(rec("n1", AttemptRow(1, "slow", "m1", 0)))  # no decision kept: no answer, a failure
        assert await s.flush(30)
        rows = await attempt_usage(s.engine, Filter())
        assert {r.group["channel"]: (r.attempts, r.failures) for r in rows} == {"fast": (2, 0), "slow": (4, 2)}
    finally:
        await s.close()


# --------------------------------------------------------------------------------------------------
# Channels and keys


async def test_channel_state(client: httpx.AsyncClient, gw: Gateway) -> None:
    alpha = gw.router.by_name["alpha"]
    alpha.started(gw.clock - 1, 0, "m1")
    alpha.succeeded(gw.clock, 1.0, 0, "m1", ttft=0.25)
    alpha.first_token(gw.clock, 0.25)
    gamma = gw.router.by_name["gamma"]
    gamma.started(gw.clock, 1, "m2")
    gamma.failed(gw.clock, Outcome(False, gw.clock, 429, ErrorKind.RATE_LIMITED, retry_after=20, key=1), "m2")
    gamma.started(gw.clock, 0, "m2")
    gamma.failed(gw.clock, Outcome(False, gw.clock, 500, ErrorKind.SERVER_ERROR, key=0), "m2")
    gamma.started(gw.clock, 0, "m2")  # one attempt still in flight

    body = (await client.get("/admin/channels", headers=ADMIN)).json()
    assert body["now"] == gw.clock
    chans = {c["name"]: c for c in body["channels"]}
    assert list(chans) == ["alpha", "beta", "gamma"]
    a = chans["alpha"]
    assert a["enabled"] and a["available"] and a["unavailable_reason"] is None
    assert a["ewma_latency"] == pytest.approx(1.0) and a["ewma_ttft"] == pytest.approx(0.25)
    # a breaker that has seen no failure is not materialised: closed by default
    assert a["breakers"].get("m1", {"state": "closed"})["state"] == "closed"
    # a lone key has no breaker of its own (the channel's per-model breakers judge it); a pool's keys do
    assert a["keys"] == [{"name": "alpha#0", "disabled": False, "held": False, "disabled_remaining": 0.0, "available": True,
                          "uses": 1, "breakers": {}}]
    assert a["auto_disabled_remaining"] == 0.0
    g = chans["gamma"]
    assert g["inflight"] == 1 and g["failures"] == 2
    assert [(k["name"], k["available"]) for k in g["keys"]] == [("g-one", True), ("g-two", False)]
    assert g["keys"][1]["disabled_remaining"] == pytest.approx(20.0)  # a key pool: the key cools down
    # a pool's keys have breakers of their own, per upstream model, shown once a failure made one
    assert g["keys"][0]["breakers"] == {"m2": {"state": "closed", "consecutive_failures": 1, "trips": 0,
                                               "open_remaining": 0.0}}
    assert g["keys"][1]["breakers"] == {}  # a 429 says nothing of health
    assert chans["beta"]["ewma_latency"] is None and chans["beta"]["models"] == ["m1", "m2"]

    one = (await client.get("/admin/channels/gamma", headers=ADMIN)).json()
    assert one["name"] == "gamma" and one["inflight"] == 1
    r = await client.get("/admin/channels/nope", headers=ADMIN)
    assert r.status_code == 404 and r.json()["error"]["param"] == "name"
    # a GET of a POST-only action is the wrong method (405), not a channel "gamma/disable" missing (404)
    for path in ("gamma/disable", "gamma/enable", "gamma/test", "gamma/keys/g-one/enable", "gamma/keys/g-one/disable"):
        r = await client.get(f"/admin/channels/{path}", headers=ADMIN)
        assert r.status_code == 405 and r.json()["error"]["code"] == "method_not_allowed", (path, r.text)
        assert r.headers["allow"] == "POST"
    assert (await client.get("/admin/channels/nope/disable", headers=ADMIN)).status_code == 404  # no such channel


async def test_a_disabled_channel_gets_no_traffic(client: httpx.AsyncClient, gw: Gateway, driver: Any) -> None:
    router = gw.router
    served: list[str] = []

    def answer(call: Any, now: float) -> Outcome:
        served.append(call.state.name)
        return Outcome(True, now + 0.01)

    def traffic(n: int, model: str = "m1") -> list[str]:
        served.clear()
        for i in range(n):
            assert driver(router, model, answer, now=gw.clock + i).ok
        return list(served)

    assert set(traffic(10)) == {"alpha", "beta"}  # round robin over both

    r = await client.post("/admin/channels/alpha/disable", headers=ADMIN)
    assert r.status_code == 200, r.text
    assert r.json()["enabled"] is False and r.json()["available"] is False
    assert r.json()["unavailable_reason"] == "disabled"
    assert traffic(20) == ["beta"] * 20

    # Both channels of m1 off: the client hears "no channel", and no upstream is called.
    assert (await client.post("/admin/channels/beta/disable", headers=ADMIN)).status_code == 200
    served.clear()
    res = driver(router, "m1", answer, now=gw.clock)
    assert not res.ok and res.error.status == 503 and served == []

    assert (await client.post("/admin/channels/alpha/enable", headers=ADMIN)).json()["enabled"] is True
    assert (await client.post("/admin/channels/beta/enable", headers=ADMIN)).status_code == 200
    assert set(traffic(10)) == {"alpha", "beta"}

    r = await client.post("/admin/channels/nope/disable", headers=ADMIN)
    assert r.status_code == 404 and r.json()["error"]["param"] == "name"


async def test_switches_mark_an_operators_doing_and_a_config_disable_is_the_configs(
        client: httpx.AsyncClient, gw: Gateway) -> None:
    alpha = gw.router.by_name["alpha"]
    assert (await client.post("/admin/channels/alpha/disable", headers=ADMIN)).status_code == 200
    assert alpha.switched_off and not alpha.channel.enabled  # what shared state shares
    assert (await client.post("/admin/channels/alpha/enable", headers=ADMIN)).status_code == 200
    assert not alpha.switched_off and alpha.channel.enabled
    # Disabled by the config: with shared state, enabling it here would reach this process only.
    alpha.channel.enabled = alpha.config_enabled = False
    told: list[tuple[str, list[str]]] = []

    class Fleet:  # what the admin API tells a SharedState of each switch
        def operator_enable(self, st: Any, fields: list[str]) -> None:
            told.append(("enable", fields))

        def operator_disable(self, st: Any, fields: list[str]) -> None:
            told.append(("disable", fields))

    gw.ctx._shared_state = lambda: Fleet()
    r = await client.post("/admin/channels/alpha/enable", headers=ADMIN)
    assert r.status_code == 409 and "configuration" in r.json()["error"]["message"], r.text
    assert not alpha.channel.enabled
    # ... nor by switching it off first and then on (the config's word is what an enable restores).
    assert (await client.post("/admin/channels/alpha/disable", headers=ADMIN)).status_code == 200
    assert (await client.post("/admin/channels/alpha/enable", headers=ADMIN)).status_code == 409
    assert told == [("disable", ["off"])]  # the refused enables told nothing
    gw.ctx._shared_state = lambda: None  # one process: the switch is all there is
    assert (await client.post("/admin/channels/alpha/enable", headers=ADMIN)).json()["enabled"] is True


async def test_enable_lifts_an_automatic_disable(client: httpx.AsyncClient, gw: Gateway) -> None:
    beta = gw.router.by_name["beta"]
    beta.disabled_until = float("inf")  # what a permanent auto-disable rule leaves behind
    r = (await client.get("/admin/channels/beta", headers=ADMIN)).json()
    assert r["available"] is False and r["auto_disabled_remaining"] is None
    r = (await client.post("/admin/channels/beta/enable", headers=ADMIN)).json()
    assert r["available"] is True and r["auto_disabled_remaining"] == 0.0


async def test_a_disabled_key_gets_no_traffic(client: httpx.AsyncClient, gw: Gateway, driver: Any) -> None:
    router = gw.router
    keys: list[str] = []

    def answer(call: Any, now: float) -> Outcome:
        keys.append(call.state.key_name(call.key))
        return Outcome(True, now + 0.01)

    # Only gamma and beta serve m2; take beta out so that every call lands on gamma's keys.
    await client.post("/admin/channels/beta/disable", headers=ADMIN)
    for i in range(6):
        driver(router, "m2", answer, now=gw.clock + i)
    assert set(keys) == {"g-one", "g-two"}

    r = await client.post("/admin/channels/gamma/keys/g-one/disable", headers=ADMIN)
    assert r.status_code == 200, r.text
    assert [(k["name"], k["disabled"]) for k in r.json()["keys"]] == [("g-one", True), ("g-two", False)]
    keys.clear()
    for i in range(6):
        assert driver(router, "m2", answer, now=gw.clock + i).ok
    assert keys == ["g-two"] * 6

    r = await client.post("/admin/channels/gamma/keys/g-one/enable", headers=ADMIN)
    assert r.json()["keys"][0]["disabled"] is False
    keys.clear()
    for i in range(6):
        driver(router, "m2", answer, now=gw.clock + i)
    assert set(keys) == {"g-one", "g-two"}

    r = await client.post("/admin/channels/gamma/keys/g-three/disable", headers=ADMIN)
    assert r.status_code == 404 and r.json()["error"]["param"] == "key_name"
    # Default key names hold '#': URL-encoded, they work.
    r = await client.post("/admin/channels/alpha/keys/alpha%230/disable", headers=ADMIN)
    assert r.status_code == 200 and r.json()["keys"][0]["disabled"] is True


async def test_a_channel_with_every_key_disabled_is_skipped_before_the_pick(client: httpx.AsyncClient, gw: Gateway,
                                                                           driver: Any) -> None:
    # Not picked and then found keyless: the strategy's choice is a channel that can serve, and
    # the trace and /admin/channels say "disabled" alike.
    for k in ("g-one", "g-two"):
        assert (await client.post(f"/admin/channels/gamma/keys/{k}/disable", headers=ADMIN)).status_code == 200
    assert (await client.get("/admin/channels/gamma", headers=ADMIN)).json()["unavailable_reason"] == "disabled"
    router = gw.router
    for i in range(4):
        res = driver(router, "m2", lambda call, now: Outcome(True, now + 0.01), now=gw.clock + i, explain=True)
        assert res.ok and [d["chosen"] for d in res.decisions] == ["beta"]
    assert (await client.post("/admin/channels/gamma/keys/g-two/enable", headers=ADMIN)).status_code == 200
    chosen = {driver(router, "m2", lambda call, now: Outcome(True, now + 0.01), now=gw.clock + 10 + i).attempts[0].channel
              for i in range(4)}
    assert chosen == {"beta", "gamma"}


async def test_names_with_a_slash_can_be_managed(store: Store) -> None:
    """A channel or key whose name holds "/" (azure/east): reachable as written or percent-encoded
    (a client's %2F arrives decoded), and the key routes are not read as a channel named
    "C/keys/K"."""
    d = config_dict()
    d["channels"].append({"name": "azure/east", "api_keys": [{"key": "sk-azure-east-upstream-0001", "name": "team/one"},
                                                              {"key": "sk-azure-east-upstream-0002", "name": "t2"}],
                          "models": ["m1"], "base_url": "http://127.0.0.1:9/v1"})
    gw = Gateway(parse_config(d), store)
    async with gw.client() as c:
        for path in ("/admin/channels/azure%2Feast", "/admin/channels/azure/east"):
            r = await c.get(path, headers=ADMIN)
            assert r.status_code == 200 and r.json()["name"] == "azure/east", r.text
        r = await c.post("/admin/channels/azure%2Feast/keys/team%2Fone/disable", headers=ADMIN)
        assert r.status_code == 200, r.text
        assert [(k["name"], k["disabled"]) for k in r.json()["keys"]] == [("team/one", True), ("t2", False)]
        r = await c.post("/admin/channels/azure/east/keys/team/one/enable", headers=ADMIN)
        assert r.status_code == 200 and r.json()["keys"][0]["disabled"] is False, r.text
        r = await c.post("/admin/channels/azure/east/disable", headers=ADMIN)
        assert r.status_code == 200 and r.json()["enabled"] is False, r.text
        assert not gw.router.by_name["azure/east"].channel.enabled and gw.router.by_name["alpha"].channel.enabled
        r = await c.post("/admin/channels/azure/east/keys/nope/disable", headers=ADMIN)
        assert r.status_code == 404 and r.json()["error"]["param"] == "key_name"
        r = await c.post("/admin/channels/gamma/keys/g-one/disable", headers=ADMIN)  # plain names as before
        assert r.status_code == 200 and r.json()["keys"][0]["disabled"] is True


# --------------------------------------------------------------------------------------------------
# Reload


@pytest.mark.parametrize("method, path", [
    ("POST", "/admin/reload?dry_run=1"), ("POST", "/admin/channels/alpha/disable?for=60"),
    ("POST", "/admin/channels/alpha/enable?x=1"), ("POST", "/admin/channels/alpha/keys/alpha%230/disable?x=1"),
    ("POST", "/admin/channels/alpha/keys/alpha%230/enable?x=1"), ("GET", "/admin/channels?name=alpha"),
    ("GET", "/admin/channels/alpha?verbose=1"), ("GET", "/admin/store?x=1"), ("GET", "/admin/requests/r1?full=1"),
])
async def test_endpoints_without_parameters_refuse_any(client: httpx.AsyncClient, gw: Gateway, method: str,
                                                      path: str) -> None:
    # Ignored, `?dry_run=1` made a real reload. Refused, the call does nothing.
    router = gw.router
    r = await client.request(method, path, headers=ADMIN)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == path.rsplit("?", 1)[1].split("=")[0] and "takes none" in err["message"]
    assert gw.router is router and all(st.channel.enabled for st in gw.router.states if st.name == "alpha")


async def test_reload_swaps_the_router_and_says_what_changed(client: httpx.AsyncClient, gw: Gateway) -> None:
    await client.post("/admin/channels/alpha/disable", headers=ADMIN)
    new = config_dict()
    new["channels"][1]["weight"] = 50
    new["channels"].append({"name": "delta", "api_keys": ["upstream-secret-delta-000"], "models": ["m3"]})
    new["channels"] = [c for c in new["channels"] if c["name"] != "gamma"]
    new["prices"] = {"m1": {"input": 1.5, "output": 2.0}, "m3": {"input": 1.0}}
    new["routing"]["strategy"] = "weighted"
    new["gateway"]["admin_keys"] = [ADMIN_KEY, NEW_ADMIN_KEY]
    gw.next_config = new
    old_router = gw.router

    r = await client.post("/admin/reload", headers=ADMIN)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["reloaded"] is True and body["changed"] is True
    ch = body["changes"]
    assert ch["channels_added"] == ["delta"]
    assert ch["channels_removed"] == ["gamma"]
    # alpha differs from the file only by the admin switch, which a reload resets.
    assert ch["channels_changed"] == {"alpha": ["enabled"], "beta": ["weight"]}
    assert ch["routing"] == ["strategy"]
    assert ch["gateway"] == ["admin_keys"]
    assert ch["prices"] == ["m1", "m3"]
    assert gw.router is not old_router
    assert "upstream-secret-delta-000" not in r.text

    names = [c["name"] for c in (await client.get("/admin/channels", headers=ADMIN)).json()["channels"]]
    assert names == ["alpha", "beta", "delta"]
    assert (await client.get("/admin/channels/alpha", headers=ADMIN)).json()["enabled"] is True
    # The rotated-in admin key works at once.
    assert (await client.get("/admin/channels", headers={"Authorization": f"Bearer {NEW_ADMIN_KEY}"})).status_code == 200

    again = (await client.post("/admin/reload", headers=ADMIN)).json()
    assert again["changed"] is False
    # Shared-state settings apply at the next restart, and a reload says they changed.
    gw.next_config = {**new, "state": {"url": "redis://127.0.0.1:6379/9"}}
    third = (await client.post("/admin/reload", headers=ADMIN)).json()
    assert third["changed"] is True and third["changes"]["state"] == ["url"]
    assert third["changes"]["restart_needed"] == ["state.url"]
    assert ch["restart_needed"] == [] and again["changes"]["restart_needed"] == []
    gw.next_config = {**new, "gateway": {**new["gateway"], "shutdown_timeout": 12},
                      "store": {"store_bodies": True}}
    fourth = (await client.post("/admin/reload", headers=ADMIN)).json()
    assert fourth["changes"]["restart_needed"] == ["store.store_bodies", "state.url", "gateway.shutdown_timeout"]


async def test_reload_rotates_admin_keys_out(client: httpx.AsyncClient, gw: Gateway) -> None:
    new = config_dict()
    new["gateway"]["admin_keys"] = [NEW_ADMIN_KEY]
    gw.next_config = new
    assert (await client.post("/admin/reload", headers=ADMIN)).status_code == 200
    assert (await client.get("/admin/channels", headers=ADMIN)).status_code == 401
    assert (await client.get("/admin/channels", headers={"Authorization": f"Bearer {NEW_ADMIN_KEY}"})).status_code == 200


async def test_a_bad_reload_changes_nothing(client: httpx.AsyncClient, gw: Gateway) -> None:
    before = gw.router
    gw.reload_error = ConfigError(f"axonsim.yaml: channels[0].weight: must be >= 0 (key {UP['alpha']})")
    r = await client.post("/admin/reload", headers=ADMIN)
    assert r.status_code == 400
    err = r.json()["error"]
    assert "channels[0].weight" in err["message"] and err["param"] == "config"
    assert UP["alpha"] not in r.text and "[REDACTED]" in r.text
    assert gw.router is before

    gw.reload_error = RuntimeError(f"boom with {GW_KEY}")
    r = await client.post("/admin/reload", headers=ADMIN)
    assert r.status_code == 500 and "RuntimeError" in r.json()["error"]["message"]
    assert GW_KEY not in r.text


async def test_reload_unsupported_is_501(store: Store) -> None:
    cfg = parse_config(config_dict())
    router = Router(cfg)
    app = FastAPI()
    app.include_router(admin_router(AdminContext(lambda: router, lambda: store)))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as c:
        r = await c.post("/admin/reload", headers=ADMIN)
        assert r.status_code == 501


def test_config_changes_names_fields_not_values() -> None:
    old = parse_config(config_dict())
    new_d = config_dict()
    new_d["channels"][0]["api_keys"] = ["upstream-secret-alpha-rotated"]
    new_d["gateway"]["api_keys"][0]["key"] = "gw-client-secret-rotated"
    ch = config_changes(old, parse_config(new_d))
    assert ch.channels_changed == {"alpha": ["api_keys"]}
    assert ch.gateway == ["api_keys"]
    assert "rotated" not in ch.model_dump_json()


# --------------------------------------------------------------------------------------------------
# No store, the store endpoint, OpenAPI


async def test_without_a_store(tmp_path: Path) -> None:
    g = Gateway(parse_config(config_dict()), None)
    async with g.client() as c:
        for path in ("/admin/requests", "/admin/attempts", "/admin/usage", "/admin/usage/attempts",
                     "/admin/requests/r1"):
            r = await c.get(path, headers=ADMIN)
            assert r.status_code == 404 if path.endswith("r1") else r.status_code == 503, (path, r.text)
        assert (await c.get("/admin/channels", headers=ADMIN)).status_code == 200
        assert (await c.get("/admin/store", headers=ADMIN)).json() == {
            "configured": False, "submitted": None, "queued": None, "written": None, "dropped": None, "db_up": None,
            "last_error": None}
        # A store that is configured but not started (or failed to start) is a 503 too.
        g.store = Store(StoreSettings(url=f"sqlite+aiosqlite:///{tmp_path / 'never.db'}"))
        r = await c.get("/admin/requests", headers=ADMIN)
        assert r.status_code == 503 and "not started" in r.json()["error"]["message"]


async def test_store_status(client: httpx.AsyncClient) -> None:
    body = (await client.get("/admin/store", headers=ADMIN)).json()
    assert body["configured"] is True and body["written"] == 5 and body["queued"] == 0 and body["db_up"] is True


async def test_openapi_documents_the_admin_api(client: httpx.AsyncClient) -> None:
    doc = (await client.get("/openapi.json")).json()
    paths = doc["paths"]
    for method, path in [("get", "/admin/requests"), ("get", "/admin/requests/{request_id}"),
                         ("get", "/admin/attempts"), ("get", "/admin/usage"), ("get", "/admin/channels"),
                         ("post", "/admin/channels/{name}/enable"), ("post", "/admin/channels/{name}/disable"),
                         ("post", "/admin/channels/{name}/keys/{key_name}/enable"),
                         ("post", "/admin/channels/{name}/keys/{key_name}/disable"), ("post", "/admin/reload")]:
        op = paths[path][method]
        assert op["summary"], path
        assert "$ref" in op["responses"]["200"]["content"]["application/json"]["schema"], path
        assert {"401", "403"} <= set(op["responses"]), path
        assert op["security"] == [{"HTTPBearer": []}], path
    params = {p["name"] for p in paths["/admin/requests"]["get"]["parameters"]}
    assert {"since", "until", "project", "model", "channel", "status", "outcome", "limit", "offset"} <= params
    assert "group_by" in {p["name"] for p in paths["/admin/usage"]["get"]["parameters"]}
    assert "400" in paths["/admin/requests"]["get"]["responses"]
    # Every admin operation refuses an unknown parameter with a 400 in ErrorBody's shape, and none
    # sends FastAPI's 422 (AdminRoute answers FastAPI's refusals 400 too): documented so.
    for path, ops in paths.items():
        for method, op in ops.items():
            assert "400" in op["responses"] and "422" not in op["responses"], (method, path)
    assert "HTTPValidationError" not in doc["components"]["schemas"]
    assert doc["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"


# --------------------------------------------------------------------------------------------------
# Secrets


async def test_secrets_never_appear_in_any_answer(client: httpx.AsyncClient, gw: Gateway, driver: Any) -> None:
    # Make the channels' state interesting first: failures, a 401 naming the key, cooldowns.
    def answer(call: Any, now: float) -> Outcome:
        if call.state.name == "alpha":
            return Outcome(False, now + 0.01, 401, ErrorKind.AUTHENTICATION)
        return Outcome(True, now + 0.01)

    for i in range(4):
        driver(gw.router, "m1", answer, now=gw.clock + i)
    gw.recent["r5"] = {"id": "r5", "decisions": [{"note": f"the key was {UP['alpha']}"}]}
    gw.next_config = config_dict()
    calls = [("GET", p) for p in (
        "/admin/requests", "/admin/requests?limit=1000", "/admin/requests/r1", "/admin/requests/r2",
        "/admin/requests/r5", "/admin/requests/missing", "/admin/attempts", "/admin/attempts?channel=alpha",
        "/admin/usage", "/admin/usage?group_by=project,model,channel,key_name,client_format,day",
        "/admin/usage/attempts?group_by=channel,key_name,upstream_model,error_kind", "/admin/channels",
        "/admin/channels/alpha", "/admin/channels/gamma", "/admin/store", "/admin/requests?since=bad",
        "/openapi.json", "/docs")]
    calls += [("POST", p) for p in (
        "/admin/channels/gamma/keys/g-one/disable", "/admin/channels/gamma/keys/g-one/enable",
        "/admin/channels/alpha/disable", "/admin/channels/alpha/enable", "/admin/reload")]
    for headers in (ADMIN, CLIENT, {}, {"Authorization": "Bearer wrong"}):
        for method, path in calls:
            await client.request(method, path, headers=headers)
    assert len(gw.seen) >= 2 * len(calls) * 4
    seen = "\n".join(gw.seen)
    for s in SECRETS:
        assert s not in seen, f"secret {s[:12]}… leaked"
    assert "alpha#0" in seen and "g-one" in seen  # keys are there, by name
    assert "[REDACTED]" in seen  # the quoted key in r5 was caught


async def test_database_password_is_scrubbed(store: Store) -> None:
    cfg = config_dict()
    cfg["store"] = {"url": f"postgresql+asyncpg://axonsim:{DB_PASSWORD}@127.0.0.1:1/db"}

    class Leaky:
        submitted = queued = written = dropped = 0
        db_up = False
        last_error = f"could not connect with password {DB_PASSWORD}"

    g = Gateway(parse_config(cfg), None)
    g.store = Leaky()  # type: ignore[assignment]
    async with g.client() as c:
        r = await c.get("/admin/store", headers=ADMIN)
    assert r.status_code == 200 and DB_PASSWORD not in r.text and "[REDACTED]" in r.text


async def test_a_channel_without_a_url_cannot_be_switched_on(store: Store) -> None:
    # Disabled in the config, so the config could leave out its base_url: an enable would send
    # traffic nowhere (every request a connection error).
    cfg = config_dict()
    cfg["channels"].append({"name": "nowhere", "models": ["m1"], "enabled": False})
    g = Gateway(parse_config(cfg), store)
    async with g.client() as c:
        r = await c.post("/admin/channels/nowhere/enable", headers=ADMIN)
    assert r.status_code == 409 and "base_url" in r.json()["error"]["message"]
    assert not g.router.by_name["nowhere"].channel.enabled
