"""Channel state shared through Redis (server.shared_state): two Routers stand for two proxy processes.

Against a real Redis at 127.0.0.1:6379 (database 15, a fresh key prefix per test): skipped with the
reason when it is unreachable, a failure when AXONSIM_REQUIRE_REDIS=1. The outage tests run their
own `redis-server` on a free port; the end-to-end test runs two real `axonsim serve` processes.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import math
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from conftest import drive
from processes import free_port
from processes import start as _start
from processes import stop as _stop
from processes import wait_healthy as _wait_healthy
from prometheus_client.parser import text_string_to_metric_families

from axonsim.config import Config, parse_config
from axonsim.execution import Call, Outcome, Router
from axonsim.health import CLOSED, OPEN
from axonsim.state import NEVER
from axonsim.unified import ErrorKind
from server.metrics import Metrics
from server.proxy import carry_over
from server.shared_state import PERMANENT, PERMANENT_TTL, SharedState, channel_id
from server.store.engine import safe_url

pytestmark = pytest.mark.timeout(120)

ROOT = Path(__file__).resolve().parent.parent
REDIS_URL = os.environ.get("AXONSIM_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
REQUIRED = os.environ.get("AXONSIM_REQUIRE_REDIS") == "1"
INTERVAL = 0.05


def _unavailable(reason: str) -> None:
    if REQUIRED:
        pytest.fail(f"{reason} (AXONSIM_REQUIRE_REDIS=1)")
    pytest.skip(reason)


def _ping(url: str) -> str | None:
    try:
        client = redis.Redis.from_url(url, socket_timeout=1, socket_connect_timeout=1)
        try:
            client.ping()
        finally:
            client.close()
    except (redis.RedisError, OSError) as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


@pytest.fixture
def redis_url() -> str:
    err = _ping(REDIS_URL)
    if err is not None:
        _unavailable(f"Redis is not reachable at {REDIS_URL}: {err}")
    return REDIS_URL


@pytest.fixture
def prefix(redis_url: str) -> Iterator[str]:
    p = f"axonsim-test-{uuid.uuid4().hex[:10]}"
    yield p
    client = redis.Redis.from_url(redis_url)
    try:
        keys = list(client.scan_iter(match=f"{p}:*"))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


@pytest.fixture
def rdb(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    yield client
    client.close()


@pytest.fixture
def clock() -> Callable[[], float]:
    """Unix time shifted so that each test starts 20 s into a minute: per-minute rate windows then
    never roll over mid-test. Both "processes" of a test read the same clock, as live ones do."""
    t = time.time()
    offset = (math.floor(t / 60) + 1) * 60 + 20 - t
    return lambda: time.time() + offset


def make_config(url: str, prefix: str, channels: list[dict[str, Any]] | None = None,
                routing: dict[str, Any] | None = None) -> Config:
    return parse_config({
        "channels": channels or [{"name": "a", "models": ["m"], "priority": 0},
                                 {"name": "b", "models": ["m"], "priority": 1}],
        "routing": {"strategy": "round_robin", **(routing or {})},
        "state": {"url": url, "sync_interval": INTERVAL, "key_prefix": prefix},
    }, "<test>")


@asynccontextmanager
async def pair(cfg: Config, clock: Callable[[], float], url: str | None = None,
               **kw: Any) -> AsyncIterator[tuple[Router, Router, SharedState, SharedState]]:
    """Two Routers from one config (two processes), each synchronised by its own SharedState."""
    state = cfg.state if url is None else cfg.state.model_copy(update={"url": url})
    # Deep copies: two processes share no object (an admin switch changes the config's Channel).
    ra, rb = Router(cfg.model_copy(deep=True)), Router(cfg.model_copy(deep=True))
    sa = SharedState(lambda: ra, state, clock=clock, **kw)
    sb = SharedState(lambda: rb, state, clock=clock, **kw)
    await sa.start()
    await sb.start()
    try:
        yield ra, rb, sa, sb
    finally:
        await sa.close()
        await sb.close()


async def eventually(cond: Callable[[], bool], what: str, timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        await asyncio.sleep(0.01)


def answers(spec: dict[str, Any]) -> Callable[[Call, float], Outcome]:
    """Each channel (or (channel, key index)) answers with ok / a status; default ok."""

    def answer(call: Call, now: float) -> Outcome:
        what = spec.get((call.state.name, call.key), spec.get(call.state.name, "ok"))
        end = now + 0.01
        if what == "ok":
            return Outcome(True, end)
        if what == 429:
            return Outcome(False, end, 429, ErrorKind.RATE_LIMITED, retry_after=spec.get("retry_after", 30.0))
        if what == 401:
            return Outcome(False, end, 401, ErrorKind.AUTHENTICATION)
        assert what == 500
        return Outcome(False, end, 500, ErrorKind.SERVER_ERROR)

    return answer


def calls(router: Router, clock: Callable[[], float], spec: dict[str, Any] | None = None,
          **kw: Any) -> list[tuple[str, int | None]]:
    """One request through `router` now; the (channel, key) of each attempt."""
    log: list[Any] = []
    drive(router, "m", answers(spec or {}), now=clock(), log=log, **kw)
    return [(e[1], e[2]) for e in log if e[0] == "call"]


def channel_hash(rdb: redis.Redis, prefix: str, name: str) -> tuple[str | None, dict[str, str]]:
    keys = list(rdb.scan_iter(match=f"{prefix}:ch:{name}:*"))
    if not keys:
        return None, {}
    return keys[0], rdb.hgetall(keys[0])


# --------------------------------------------------------------------------------------------------


async def test_a_429_cooldown_on_one_process_is_honoured_by_the_other(redis_url: str, prefix: str,
                                                                       clock: Callable[[], float]) -> None:
    cfg = make_config(redis_url, prefix)
    async with pair(cfg, clock) as (ra, rb, sa, sb):
        assert sa.up and sb.up
        assert calls(rb, clock)[0][0] == "a"  # control: B tries the first-priority channel first
        assert calls(ra, clock, {"a": 429})[:2] == [("a", None), ("b", None)]
        until = ra.by_name["a"].cooldown_until
        assert until > clock() + 25
        await eventually(lambda: rb.by_name["a"].cooldown_until == until, "B adopts A's cooldown",
                         timeout=10 * INTERVAL)
        assert rb.by_name["a"].unavailable_reason(clock()) == "cooling_down"
        for _ in range(3):
            assert calls(rb, clock) == [("b", None)]


async def test_an_open_breaker_is_open_everywhere_and_its_recovery_closes_it_everywhere(
        redis_url: str, prefix: str, clock: Callable[[], float]) -> None:
    cfg = make_config(redis_url, prefix, routing={
        "retry": {"max_same_channel": 0},
        "health": {"breaker": {"failure_threshold": 2, "open_time": 2.0}}})
    async with pair(cfg, clock) as (ra, rb, _, _):
        for _ in range(2):
            calls(ra, clock, {"a": 500})
        ba = ra.by_name["a"].breakers["m"]
        assert ba.state == OPEN and ba.trips == 1
        await eventually(lambda: "m" in rb.by_name["a"].breakers and rb.by_name["a"].breakers["m"].state == OPEN,
                         "B's breaker opens")
        bb = rb.by_name["a"].breakers["m"]
        assert bb.open_until == ba.open_until and bb.trips == 1
        assert rb.by_name["a"].unavailable_reason(clock(), "m") == "breaker_open"
        assert calls(rb, clock) == [("b", None)]
        # After the open time, A's probe succeeds: B's breaker closes without a probe of its own.
        while clock() < ba.open_until:
            await asyncio.sleep(0.02)
        assert calls(ra, clock) == [("a", None)]
        assert ba.state == CLOSED
        await eventually(lambda: bb.state == CLOSED, "B's breaker closes")
        assert bb.trips == 0 and bb.probes == 0
        assert calls(rb, clock) == [("a", None)]


async def test_a_keys_open_breaker_is_shared_for_its_model_alone(
        redis_url: str, prefix: str, clock: Callable[[], float], rdb: redis.Redis) -> None:
    # Key breakers are per upstream model: one opened in A holds that key back in B for that model,
    # and for no other.
    cfg = make_config(redis_url, prefix, channels=[
        {"name": "a", "models": ["m", "n"], "api_keys": [{"key": "sk-up-0", "name": "k0"}, {"key": "sk-up-1", "name": "k1"}]}],
        routing={"retry": {"max_attempts": 1},
                 "health": {"breaker": {"enabled": False}, "auto_disable": [], "panic": False,
                            "key_breaker": {"failure_threshold": 1, "open_time": 30.0}}})
    async with pair(cfg, clock) as (ra, rb, _, _):
        drive(ra, "m", answers({("a", 0): 500}), now=clock())  # round robin: k0 first
        ka = ra.by_name["a"].keys[0].breakers["m"]
        assert ka.state == OPEN
        kb0 = rb.by_name["a"].keys[0]
        await eventually(lambda: "m" in kb0.breakers and kb0.breakers["m"].state == OPEN, "B opens k0's breaker for m")
        assert kb0.breakers["m"].open_until == ka.open_until and "n" not in kb0.breakers
        _, fields = channel_hash(rdb, prefix, "a")
        assert "kb:0:m" in fields and not any(f.startswith("kb:1") or f.endswith(":n") for f in fields)
        b = rb.by_name["a"]
        now = clock()
        assert [b.next_key(now, None, 0, "m") for _ in range(3)] == [1, 1, 1]
        assert sorted(b.next_key(now, None, 0, "n") for _ in range(2)) == [0, 1]


async def test_a_rejected_key_is_skipped_everywhere_and_an_enable_lifts_it_everywhere(
        redis_url: str, prefix: str, clock: Callable[[], float], rdb: redis.Redis) -> None:
    cfg = make_config(redis_url, prefix, channels=[
        {"name": "a", "models": ["m"], "api_keys": [{"key": "sk-up-0", "name": "k0"}, {"key": "sk-up-1", "name": "k1"}]}])
    async with pair(cfg, clock) as (ra, rb, _, _):
        assert ("a", 0) in calls(ra, clock, {("a", 0): 401})
        assert ra.by_name["a"].keys[0].disabled
        k0 = rb.by_name["a"].keys[0]
        await eventually(lambda: k0.disabled, "B disables the key")
        assert not rb.by_name["a"].keys[1].disabled
        for _ in range(4):
            assert calls(rb, clock) == [("a", 1)]
        # Converged: nothing is sent back and forth any more.
        version = rdb.get(f"{prefix}:ver")
        await asyncio.sleep(10 * INTERVAL)
        assert rdb.get(f"{prefix}:ver") == version
        key, fields = channel_hash(rdb, prefix, "a")
        assert float(fields["k:0"].split(":")[1]) >= PERMANENT
        assert key is not None and 0 < rdb.pttl(key) <= PERMANENT_TTL * 1000  # refreshed while held, not forever
        assert "sk-up" not in repr(fields) and not any("sk-up" in k for k in rdb.scan_iter(match=f"{prefix}:*"))

        # An operator enables the key on A (what the admin API does): B follows.
        ka = ra.by_name["a"].keys[0]
        ka.disabled, ka.disabled_until = False, NEVER
        await eventually(lambda: not k0.disabled, "B re-enables the key")
        assert not ka.disabled
        # A fresh rejection after the enable is a new incident: the lift does not swallow it.
        assert ("a", 0) in calls(rb, clock, {("a", 0): 401})
        assert k0.disabled
        await eventually(lambda: ka.disabled, "A disables the key again")
        assert not k0.held and not ka.held  # rejected credentials: a probe may lift that

        # An operator's disable (the admin API's) travels as one: B holds the key too, so B's
        # probes neither use nor lift it; the operator's enable lifts both.
        kb1, ka1 = rb.by_name["a"].keys[1], ra.by_name["a"].keys[1]
        ka1.disabled = ka1.held = True
        await eventually(lambda: kb1.disabled and kb1.held, "B holds the key the operator disabled on A")
        ka1.disabled = ka1.held = False
        await eventually(lambda: not kb1.disabled and not kb1.held, "B follows the operator's enable")


async def test_an_operators_channel_switch_reaches_every_process(redis_url: str, prefix: str,
                                                                 clock: Callable[[], float]) -> None:
    """What the admin API's disable and enable do (one process's `channel.enabled`) reaches the
    others, and a process that reloads adopts it, until it is switched back."""
    cfg = make_config(redis_url, prefix)
    async with pair(cfg, clock) as (ra, rb, _, sb):
        sa_a = ra.by_name["a"]
        sa_a.channel.enabled, sa_a.switched_off = False, True  # what the admin API's disable does, on A
        await eventually(lambda: not rb.by_name["a"].channel.enabled, "B switches `a` off")
        assert calls(rb, clock) == [("b", None)]
        fresh = Router(cfg.model_copy(deep=True))  # B reloads: a new Router, `enabled: true` as configured
        assert fresh.by_name["a"].channel.enabled
        sb._get_router = lambda: fresh
        await eventually(lambda: not fresh.by_name["a"].channel.enabled, "B's new Router adopts the switch")
        sa_a.channel.enabled, sa_a.switched_off = True, False  # the admin API's enable, on A
        await eventually(lambda: fresh.by_name["a"].channel.enabled, "B switches `a` back on")
        assert calls(fresh, clock) == [("a", None)]
        await asyncio.sleep(10 * INTERVAL)
        assert ra.by_name["a"].channel.enabled and fresh.by_name["a"].channel.enabled  # settled, both on


@pytest.mark.parametrize("first", ["disabler", "enabler"])
async def test_an_enable_right_after_a_disable_elsewhere_wins_everywhere(redis_url: str, prefix: str,
                                                                         clock: Callable[[], float], first: str) -> None:
    """The admin API on worker A disables, then on worker B (which has not synced that yet) enables:
    the enable is the last word, whichever of the two syncs first. B had nothing of its own to push,
    so the disable used to come back from Redis and stay, channel and key alike."""
    cfg = make_config(redis_url, prefix, channels=[{"name": "a", "models": ["m"], "api_keys": ["k-a0", "k-a1"]},
                                                   {"name": "b", "models": ["m"]}])
    async with pair(cfg, clock) as (ra, rb, sa, sb):
        await sa.sync_once()
        await sb.sync_once()
        a_on_a, a_on_b = ra.by_name["a"], rb.by_name["a"]
        # A: the admin API's channel disable and key disable
        a_on_a.channel.enabled, a_on_a.switched_off = False, True
        a_on_a.keys[1].disabled = a_on_a.keys[1].held = True
        sa.operator_disable(a_on_a, ["off"])
        sa.operator_disable(a_on_a, ["kh:1", "k:1"])
        # B, a moment later: the enables (B's state already says enabled)
        await asyncio.sleep(0.01)
        sb.operator_enable(a_on_b, ["off", "dis"])
        sb.operator_enable(a_on_b, ["kh:1", "k:1"])
        for s in ((sa, sb) if first == "disabler" else (sb, sa)):
            await s.sync_once()
        await asyncio.sleep(10 * INTERVAL)
        for st in (a_on_a, a_on_b):
            assert st.channel.enabled and not st.switched_off
            assert not st.keys[1].disabled and not st.keys[1].held
        # and a disable after that enable wins in turn
        a_on_b.channel.enabled, a_on_b.switched_off = False, True
        sb.operator_disable(a_on_b, ["off"])
        await eventually(lambda: not a_on_a.channel.enabled, "A follows the later disable")
        await asyncio.sleep(10 * INTERVAL)
        assert not a_on_a.channel.enabled and not a_on_b.channel.enabled


async def test_an_operators_enable_lifts_no_temporary_incident_that_began_after_it(redis_url: str, prefix: str,
                                                                                  clock: Callable[[], float]) -> None:
    """B's enable is pending (not synced yet) when A's channel is auto-disabled: that auto-disable
    began after the enable and must survive it. (A temporary incident has no start stamp, so an
    operator's fleet-wide lift ends permanent states only.)"""
    cfg = make_config(redis_url, prefix)
    async with pair(cfg, clock) as (ra, rb, sa, sb):
        await sa.sync_once()
        await sb.sync_once()
        sb.operator_enable(rb.by_name["a"], ["off", "dis"])
        until = clock() + 300
        ra.by_name["a"].disabled_until = until  # the auto-disable rules, on A, after B's enable
        await sa.sync_once()
        await sb.sync_once()
        await asyncio.sleep(10 * INTERVAL)
        assert ra.by_name["a"].disabled_until == until and rb.by_name["a"].disabled_until == until


async def test_a_disable_made_right_after_a_reload_keeps_its_moment(redis_url: str, prefix: str,
                                                                     clock: Callable[[], float]) -> None:
    """A reloads (a new Router, not yet synced), an operator disables on A, then enables on B: the
    enable is later and wins. The disable's stamp used to be dropped for a Router not yet synced."""
    cfg = make_config(redis_url, prefix)
    async with pair(cfg, clock) as (ra, rb, sa, sb):
        await sa.sync_once()
        await sb.sync_once()
        fresh = Router(cfg.model_copy(deep=True))  # A's reload
        sa._get_router = lambda: fresh
        x = fresh.by_name["a"]
        x.channel.enabled, x.switched_off = False, True
        sa.operator_disable(x, ["off"])
        await asyncio.sleep(0.02)
        sb.operator_enable(rb.by_name["a"], ["off", "dis"])
        await sb.sync_once()
        await sa.sync_once()
        await asyncio.sleep(10 * INTERVAL)
        assert x.channel.enabled and rb.by_name["a"].channel.enabled


async def test_a_lift_ends_its_incident_only_not_a_newer_shorter_one(redis_url: str, prefix: str,
                                                                      clock: Callable[[], float]) -> None:
    """An operator ends a long auto-disable; then the channel fails again and the rules disable it
    for a shorter time. The new disable must reach the other process and survive the old lift."""
    cfg = make_config(redis_url, prefix)
    async with pair(cfg, clock) as (ra, rb, sa, _):
        a, b = ra.by_name["a"], rb.by_name["a"]
        a.disabled_until = clock() + 300  # the long incident
        await eventually(lambda: b.disabled_until == a.disabled_until, "B adopts the 300 s disable")
        a.disabled_until = NEVER  # the operator's enable on A
        await eventually(lambda: b.disabled_until == NEVER, "B follows the enable")
        a.disabled_until = clock() + 30  # a new, shorter incident on A
        await eventually(lambda: b.disabled_until == a.disabled_until, "B adopts the new 30 s disable")
        sa._force_full = True  # a full pull re-reads every hash: the old lift must not end the new one
        await asyncio.sleep(10 * INTERVAL)
        assert a.disabled_until > clock() + 25 and b.disabled_until == a.disabled_until
        assert calls(rb, clock) == [("b", None)] and calls(ra, clock) == [("b", None)]


async def test_a_channel_disabled_in_the_config_is_not_an_operators_switch(redis_url: str, prefix: str,
                                                                           rdb: redis.Redis,
                                                                           clock: Callable[[], float]) -> None:
    """`enabled: false` in the config is what every process reads alike: it is not pushed to Redis,
    so setting it back to true (a reload, or a new process) enables the channel everywhere."""
    off = make_config(redis_url, prefix, channels=[{"name": "a", "models": ["m"], "enabled": False},
                                                   {"name": "b", "models": ["m"], "priority": 1}])
    async with pair(off, clock) as (ra, rb, sa, sb):
        await asyncio.sleep(10 * INTERVAL)
        _, fields = channel_hash(rdb, prefix, "a")
        assert "off" not in fields
        # An operator's disable then enable on A (a process without the 409: a library user) lifts
        # only the switch: B keeps the config's `enabled: false`.
        a = ra.by_name["a"]
        a.switched_off = True
        await eventually(lambda: rb.by_name["a"].switched_off, "B takes the switch")
        a.switched_off = False
        await eventually(lambda: not rb.by_name["a"].switched_off, "B follows the enable")
        assert not rb.by_name["a"].channel.enabled and calls(rb, clock) == [("b", None)]
        on = Router(make_config(redis_url, prefix))  # the config says enabled again; B reloads it
        sb._get_router = lambda: on
        await asyncio.sleep(10 * INTERVAL)
        assert on.by_name["a"].channel.enabled and calls(on, clock) == [("a", None)]


async def test_an_operators_hold_travels_even_on_a_key_already_disabled(redis_url: str, prefix: str,
                                                                       clock: Callable[[], float]) -> None:
    cfg = make_config(redis_url, prefix, channels=[
        {"name": "a", "models": ["m"], "api_keys": [{"key": "sk-up-0", "name": "k0"}, {"key": "sk-up-1", "name": "k1"}]}])
    async with pair(cfg, clock) as (ra, rb, _, _):
        assert ("a", 0) in calls(ra, clock, {("a", 0): 401})  # rejected credentials: disabled everywhere
        ka, kb = ra.by_name["a"].keys[0], rb.by_name["a"].keys[0]
        await eventually(lambda: kb.disabled, "B disables the key")
        ka.held = True  # then an operator disables it on A (the admin API): already disabled, now held
        await eventually(lambda: kb.held, "B holds it too")
        ka.held = ka.disabled = False  # the operator's enable
        await eventually(lambda: not kb.held and not kb.disabled, "B follows the enable")


async def test_auto_disable_and_key_cooldowns_are_shared(redis_url: str, prefix: str,
                                                         clock: Callable[[], float]) -> None:
    cfg = make_config(redis_url, prefix, channels=[
        {"name": "a", "models": ["m"], "api_keys": ["sk-0", "sk-1"]},
        {"name": "b", "models": ["m"], "priority": 1}])
    async with pair(cfg, clock) as (ra, rb, _, _):
        # A 429 on one key of a pool cools that key down, not the channel.
        calls(ra, clock, {("a", 0): 429})
        until = ra.by_name["a"].keys[0].disabled_until
        assert until > clock()
        await eventually(lambda: rb.by_name["a"].keys[0].disabled_until == until, "B cools the key down")
        # The auto-disable rule (503 three times) disables the channel for a while.
        st = ra.by_name["a"]
        for _ in range(3):
            call = Call(st, "m", None, 1, None)
            call.started(clock())
            call.failed(clock(), Outcome(False, clock(), 503, ErrorKind.OVERLOADED))
        assert st.disabled_until > clock() + 200
        await eventually(lambda: rb.by_name["a"].disabled_until == st.disabled_until, "B auto-disables the channel")
        assert calls(rb, clock) == [("b", None)]


async def test_rate_limit_counters_add_up_across_processes(redis_url: str, prefix: str,
                                                           clock: Callable[[], float]) -> None:
    cfg = make_config(redis_url, prefix, channels=[
        {"name": "a", "models": ["m"], "limits": {"rpm": 4, "tpm": 10000},
         "api_keys": [{"key": "sk-a", "limits": {"rpm": 100}}]},
        {"name": "b", "models": ["m"], "priority": 1}])
    async with pair(cfg, clock) as (ra, rb, _, _):
        for r in (ra, ra, rb, rb):
            assert calls(r, clock, tokens=100) == [("a", 0)]
        for r in (ra, rb):
            st = r.by_name["a"]
            await eventually(lambda st=st: st.limiter.window.usage(clock()) == (4.0, 400.0), "the totals add up")
            assert st.keys[0].limiter.window.usage(clock())[0] == 4.0
            assert st.unavailable_reason(clock()) == "rate_limited_locally"
        # Each process admitted two: alone, either would still send to `a`.
        assert calls(ra, clock) == [("b", None)] and calls(rb, clock) == [("b", None)]


async def test_a_reload_keeps_the_shared_counters_it_carries_over(redis_url: str, prefix: str, rdb: redis.Redis,
                                                                   clock: Callable[[], float]) -> None:
    """A reload hands unchanged channels' limiters and quotas to the new Router (carry_over): their
    counts, which hold the others' too, must not be pushed again as new increments."""
    cfg = make_config(redis_url, prefix, channels=[
        {"name": "a", "models": ["m"], "limits": {"rpm": 10}, "quota": {"requests": 10, "period": 3600}},
        {"name": "b", "models": ["m"], "priority": 1}])
    async with pair(cfg, clock) as (ra, rb, _, sb):
        for r in (ra, ra, ra, rb, rb, rb):
            assert calls(r, clock) == [("a", None)]

        def counted(r: Router) -> tuple[float, int]:
            st = r.by_name["a"]
            assert st.quota is not None
            return st.limiter.window.usage(clock())[0], st.quota.requests

        await eventually(lambda: counted(ra) == (6.0, 6) and counted(rb) == (6.0, 6), "both count six")
        new = Router(cfg.model_copy(deep=True))
        assert carry_over(rb, new, clock()) == ["a", "b"]
        sb._get_router = lambda: new  # B reloads an unchanged config
        await asyncio.sleep(10 * INTERVAL)
        assert counted(new) == (6.0, 6) and counted(ra) == (6.0, 6)
        shared = [sum(int(v) for f, v in rdb.hgetall(k).items() if f.startswith("r|"))
                  for k in rdb.scan_iter(match=f"{prefix}:q:*")]
        assert shared == [6]  # three from each process
        for _ in range(4):
            assert calls(new, clock) == [("a", None)]  # the four left of ten
        await eventually(lambda: counted(ra) == (10.0, 10), "A counts B's four")
        assert calls(ra, clock) == [("b", None)]


def _limited_channel(kind: str) -> dict[str, Any]:
    limit = {"limits": {"rpm": 10}} if kind == "rpm" else {"quota": {"requests": 10, "period": 3600}}
    return {"name": "a", "models": ["m"], **limit}


def _counted(r: Router, clock: Callable[[], float], kind: str) -> float:
    st = r.by_name["a"]
    return st.limiter.window.usage(clock())[0] if kind == "rpm" else st.quota.requests  # type: ignore[union-attr]


@pytest.mark.parametrize("kind", ["rpm", "quota"])
async def test_a_push_whose_reply_was_lost_is_not_counted_twice(redis_url: str, prefix: str,
                                                                clock: Callable[[], float], kind: str) -> None:
    """A slow Redis runs a sync's commands but its reply comes too late: the sync fails and is sent
    again. Increments sent again were counted again (reviewed: 16-18 for 3 requests, the channel
    locked out for the minute, or a quota spent by three requests)."""
    cfg = make_config(redis_url, prefix, channels=[_limited_channel(kind), {"name": "b", "models": ["m"], "priority": 1}])
    async with pair(cfg, clock, max_backoff=0.1) as (ra, rb, sa, _):
        run = sa._execute
        lost = 0

        async def slow(pipe: Any) -> list[Any]:
            nonlocal lost
            res = await run(pipe)
            if lost < 5:
                lost += 1
                raise TimeoutError("Timeout reading from socket")  # the commands ran; the reply is lost
            return res

        sa._execute = slow  # type: ignore[method-assign]
        for _ in range(3):
            assert calls(ra, clock) == [("a", None)]
        await eventually(lambda: lost == 5 and sa.up, "five lost replies, then a sync that works")
        await eventually(lambda: _counted(rb, clock, kind) == 3, "B counts A's three")
        await asyncio.sleep(10 * INTERVAL)
        assert _counted(ra, clock, kind) == 3 and _counted(rb, clock, kind) == 3
        for _ in range(7):
            assert calls(rb, clock) == [("a", None)]  # the seven left of ten
        await eventually(lambda: _counted(ra, clock, kind) == 10, "A counts B's seven")
        assert calls(ra, clock) == [("b", None)]


@pytest.mark.parametrize("kind", ["rpm", "quota"])
async def test_a_reload_while_a_sync_is_under_way_counts_nothing_twice(redis_url: str, prefix: str,
                                                                       clock: Callable[[], float], kind: str) -> None:
    """The sync's replies are not read when the Router was swapped meanwhile, and the new Router
    took over the counts as they were before the push: its next push counted them again (reviewed:
    23 for 12 requests with four reloads)."""
    cfg = make_config(redis_url, prefix, channels=[_limited_channel(kind), {"name": "b", "models": ["m"], "priority": 1}])
    async with pair(cfg, clock) as (ra, rb, sa, _):
        current = [ra]
        sa._get_router = lambda: current[0]
        run = sa._execute
        reloads = 0

        async def reloading(pipe: Any) -> list[Any]:
            nonlocal reloads
            res = await run(pipe)
            if reloads < 3 and _counted(current[0], clock, kind) > 3 * reloads:
                new = Router(cfg.model_copy(deep=True))
                assert carry_over(current[0], new, clock()) == ["a", "b"]
                current[0] = new  # a reload lands while this sync waits on Redis
                reloads += 1
            return res

        sa._execute = reloading  # type: ignore[method-assign]
        for _ in range(3):
            for _ in range(3):
                assert calls(current[0], clock) == [("a", None)]
            n = reloads
            await eventually(lambda n=n: reloads == n + 1, "a reload during a sync")
        await asyncio.sleep(10 * INTERVAL)
        assert _counted(current[0], clock, kind) == 9
        await eventually(lambda: _counted(rb, clock, kind) == 9, "B counts A's nine")
        await asyncio.sleep(10 * INTERVAL)
        assert _counted(rb, clock, kind) == 9 and _counted(current[0], clock, kind) == 9


@pytest.mark.parametrize("kind", ["rpm", "quota"])
async def test_a_reload_that_changes_a_limit_keeps_what_this_process_admitted(redis_url: str, prefix: str,
                                                                              clock: Callable[[], float],
                                                                              kind: str) -> None:
    """A changed channel gets a new counter, from 0; its next push wrote this process's count for the
    window as the admissions since the reload, losing the ones before (reviewed: 11 admitted
    against a limit raised from 5 to 6)."""
    cfg = make_config(redis_url, prefix, channels=[_limited_channel(kind), {"name": "b", "models": ["m"], "priority": 1}])
    async with pair(cfg, clock) as (ra, rb, sa, _):
        current = [ra]
        sa._get_router = lambda: current[0]
        for _ in range(3):
            assert calls(ra, clock) == [("a", None)]
        await eventually(lambda: _counted(rb, clock, kind) == 3, "B counts A's three")
        sync_a = sa.sync_once

        async def paused() -> bool:
            return True

        sa.sync_once = paused  # type: ignore[method-assign]
        await asyncio.sleep(3 * INTERVAL)  # A's sync under way, if any, is done
        for _ in range(2):  # admitted after A's last push, before the reload
            assert calls(ra, clock) == [("a", None)]
        raised = cfg.model_copy(deep=True)
        if kind == "rpm":
            raised.channels[0].limits.rpm = 12
        else:
            raised.channels[0].quota.requests = 12  # type: ignore[union-attr]
        new = Router(raised)
        assert carry_over(ra, new, clock()) == ["b"]  # `a` changed: a new counter
        current[0] = new
        sa.sync_once = sync_a  # type: ignore[method-assign]
        await eventually(lambda: _counted(new, clock, kind) == 5, "the new counter adopts the fleet's five")
        await eventually(lambda: _counted(rb, clock, kind) == 5, "B counts A's five")
        for _ in range(7):
            assert calls(new, clock) == [("a", None)]  # the seven left of twelve
        await asyncio.sleep(10 * INTERVAL)
        assert _counted(new, clock, kind) == 12 and _counted(rb, clock, kind) == 12
        assert calls(new, clock) == [("b", None)]


@pytest.mark.parametrize("kind", ["rpm", "quota"])
async def test_a_shared_count_that_fell_is_not_adopted_before_the_others_fill_it_again(
        redis_url: str, prefix: str, rdb: redis.Redis, clock: Callable[[], float], kind: str) -> None:
    """Redis lost the counts (flushed, failed over to an empty replica): the first process to sync
    finds only its own. Adopting that would let the fleet overrun the limit until every process has
    synced; a count never falls within its window, so the larger one is kept."""
    cfg = make_config(redis_url, prefix, channels=[_limited_channel(kind), {"name": "b", "models": ["m"], "priority": 1}])
    async with pair(cfg, clock) as (ra, rb, sa, sb):
        for r in (ra, ra, ra, ra, rb, rb, rb, rb):
            assert calls(r, clock) == [("a", None)]
        await eventually(lambda: _counted(ra, clock, kind) == 8 and _counted(rb, clock, kind) == 8, "both count eight")
        sync_b = sb.sync_once

        async def paused() -> bool:
            return True

        sb.sync_once = paused  # type: ignore[method-assign]
        await asyncio.sleep(3 * INTERVAL)  # B's sync under way, if any, is done
        rdb.delete(*rdb.scan_iter(match=f"{prefix}:*"))
        syncs = sa.syncs
        await eventually(lambda: sa.syncs >= syncs + 5, "A syncs alone with what Redis has left")
        assert _counted(ra, clock, kind) == 8  # not A's own four
        sb.sync_once = sync_b  # type: ignore[method-assign]
        await asyncio.sleep(10 * INTERVAL)
        assert _counted(ra, clock, kind) == 8 and _counted(rb, clock, kind) == 8


@pytest.mark.parametrize("garbage", ["field", "hash-is-a-string", "ver-is-a-hash", "rr-seq", "rr-last", "rate"])
async def test_garbage_under_the_prefix_does_not_stop_the_sharing(redis_url: str, prefix: str, rdb: redis.Redis,
                                                                  clock: Callable[[], float], garbage: str,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    """Keys under the prefix written by hand or by another program, of the wrong type or with values
    that are not numbers: sharing goes on (the bad keys are dropped and refilled), and the logs say
    so without calling Redis unreachable."""
    caplog.set_level(logging.INFO, "axonsim.server.shared_state")
    cfg = make_config(redis_url, prefix, channels=[
        {"name": "a", "models": ["m"], "priority": 0, "limits": {"rpm": 100}},
        {"name": "b", "models": ["m"], "priority": 1}])
    hkey = f"{prefix}:ch:{channel_id(Router(cfg).by_name['a'])}"
    if garbage == "field":
        rdb.hset(hkey, mapping={"cd": "a:zzz", "dis": "nonsense", "k:0": "a:1e400:x"})
    elif garbage == "hash-is-a-string":
        rdb.set(hkey, "not a hash")
    elif garbage == "ver-is-a-hash":
        rdb.hset(f"{prefix}:ver", "x", "1")
    elif garbage == "rr-seq":
        rdb.set(f"{prefix}:rr:seq", "many")
    elif garbage == "rr-last":
        rdb.hset(f"{prefix}:rr:last", mapping={"x": "soon", channel_id(Router(cfg).by_name["a"]): "later"})
    else:
        for minute in range(int(clock() // 60) - 1, int(clock() // 60) + 2):
            rdb.hset(f"{prefix}:rl:{minute}", f"{channel_id(Router(cfg).by_name['a'])}|c|r", "lots")
    async with pair(cfg, clock) as (ra, rb, sa, sb):
        assert calls(ra, clock, {"a": 429}) == [("a", None), ("b", None)]
        await eventually(lambda: rb.by_name["a"].cooldown_until > clock(), "B learns A's cooldown")
        assert calls(rb, clock) == [("b", None)]
        await eventually(lambda: sa.up and sb.up and sa.syncs > 3 and sb.syncs > 3, "both keep syncing")
    assert "unreachable" not in caplog.text


async def test_quotas_add_up_across_processes(redis_url: str, prefix: str, clock: Callable[[], float]) -> None:
    cfg = make_config(redis_url, prefix, channels=[
        {"name": "a", "models": ["m"], "quota": {"requests": 3}},
        {"name": "b", "models": ["m"], "priority": 1}])
    async with pair(cfg, clock) as (ra, rb, _, _):
        for r in (ra, ra, rb):
            assert calls(r, clock) == [("a", None)]
        for r in (ra, rb):
            q = r.by_name["a"].quota
            assert q is not None
            await eventually(lambda q=q: q.requests == 3, "the quota counts add up")
            assert r.by_name["a"].unavailable_reason(clock()) == "quota_exhausted"


async def test_round_robin_continues_across_processes(redis_url: str, prefix: str,
                                                      clock: Callable[[], float]) -> None:
    cfg = make_config(redis_url, prefix, channels=[{"name": n, "models": ["m"]} for n in "abc"])
    async with pair(cfg, clock) as (ra, rb, _, _):
        assert calls(ra, clock) == [("a", None)]
        await eventually(lambda: rb.by_name["a"].last_pick > max(rb.by_name[n].last_pick for n in "bc"),
                         "B learns A's pick")
        assert calls(rb, clock) == [("b", None)]  # not "a" again: the rotation goes on
        await eventually(lambda: ra.by_name["b"].last_pick > ra.by_name["a"].last_pick, "A learns B's pick")
        assert calls(ra, clock) == [("c", None)]
        await eventually(lambda: rb.by_name["c"].last_pick > rb.by_name["b"].last_pick, "B learns A's second pick")
        assert calls(rb, clock) == [("a", None)]


async def test_the_outlier_ejection_cap_holds_across_processes(redis_url: str, prefix: str,
                                                               clock: Callable[[], float]) -> None:
    cfg = make_config(redis_url, prefix, channels=[{"name": n, "models": ["m"]} for n in "ab"], routing={
        "health": {"outlier": {"enabled": True, "consecutive_failures": 1, "max_ejection_percent": 50}}})
    async with pair(cfg, clock) as (ra, rb, _, _):
        # Each process ejects a different channel before either syncs (no await in between).
        for r, name in ((ra, "a"), (rb, "b")):
            call = Call(r.by_name[name], "m", None, 1, None)
            call.started(clock())
            call.failed(clock(), Outcome(False, clock(), 500, ErrorKind.SERVER_ERROR))
            assert r.by_name[name].ejection.until > clock()
        await asyncio.sleep(10 * INTERVAL)
        # Adopting the other's ejection would empty the pool: the cap (one of two) refuses it.
        assert ra.by_name["b"].ejection.until < clock() and rb.by_name["a"].ejection.until < clock()
        assert calls(ra, clock) == [("b", None)] and calls(rb, clock) == [("a", None)]


async def test_state_lives_in_redis_exactly_as_long_as_it_means_something(
        redis_url: str, prefix: str, clock: Callable[[], float], rdb: redis.Redis) -> None:
    cfg = make_config(redis_url, prefix)
    async with pair(cfg, clock) as (ra, rb, _, _):
        calls(ra, clock, {"a": 429, "retry_after": 1.5})
        remaining = ra.by_name["a"].cooldown_until - clock()
        await eventually(lambda: channel_hash(rdb, prefix, "a")[0] is not None, "A pushes the cooldown")
        key, fields = channel_hash(rdb, prefix, "a")
        assert key is not None and set(fields) == {"cd"}
        ttl = rdb.pttl(key) / 1000.0
        assert remaining - 0.5 < ttl <= remaining + 0.01
        await eventually(lambda: rb.by_name["a"].unavailable_reason(clock()) == "cooling_down", "B cools down")
        await eventually(lambda: not rdb.exists(key), "the hash expires with the cooldown", timeout=remaining + 1.0)
        assert rb.by_name["a"].unavailable_reason(clock()) is None
        assert calls(rb, clock) == [("a", None)]
        limits = [k for k in rdb.scan_iter(match=f"{prefix}:*") if rdb.ttl(k) == -1]
        assert limits == [], "every key written has a TTL"


async def test_a_reloaded_router_adopts_the_shared_state(redis_url: str, prefix: str,
                                                         clock: Callable[[], float]) -> None:
    cfg = make_config(redis_url, prefix)
    current = [Router(cfg)]
    ra = Router(cfg)
    sa = SharedState(lambda: ra, cfg.state, clock=clock)
    sb = SharedState(lambda: current[0], cfg.state, clock=clock)
    await sa.start()
    await sb.start()
    try:
        calls(ra, clock, {"a": 429})
        await eventually(lambda: current[0].by_name["a"].cooldown_until > clock(), "B cools down")
        current[0] = Router(cfg)  # a config reload builds a new Router
        assert current[0].by_name["a"].cooldown_until == NEVER
        await eventually(lambda: current[0].by_name["a"].cooldown_until == ra.by_name["a"].cooldown_until,
                         "the new Router adopts the cooldown")
    finally:
        await sa.close()
        await sb.close()


# -- Redis down --------------------------------------------------------------------------------------


def _warnings(caplog: pytest.LogCaptureFixture, text: str) -> int:
    return sum(1 for r in caplog.records if r.name == "axonsim.server.shared_state" and r.levelno == logging.WARNING
               and text in r.getMessage())


@pytest.mark.parametrize("form", ["redis://:hunter2@127.0.0.1:{port}/0", "redis://127.0.0.1:{port}/0?password=hunter2",
                                  "redis://:hunter2@hunter2b@127.0.0.1:{port}/0"])  # (redis-py: "hunter2@hunter2b")
async def test_unreachable_redis_keeps_serving_on_local_state_and_says_so(
        redis_url: str, prefix: str, clock: Callable[[], float], caplog: pytest.LogCaptureFixture, form: str) -> None:
    caplog.set_level(logging.INFO, "axonsim.server.shared_state")
    cfg = make_config(redis_url, prefix)
    url = form.format(port=free_port())
    async with pair(cfg, clock, url=url, max_backoff=0.2) as (ra, _, sa, _):
        assert not sa.up and sa.errors >= 1 and sa.last_error
        assert calls(ra, clock, {"a": 429}) == [("a", None), ("b", None)]
        assert calls(ra, clock) == [("b", None)]  # the local cooldown holds
        await asyncio.sleep(0.6)
        assert not sa.up and sa.errors >= 2
        assert sa.status()["up"] is False
        figures = _shared_metrics(sa)  # ... and /metrics says so
        assert figures["axonsim_shared_state_up"] == 0 and figures["axonsim_shared_state_errors_total"] >= 2
    assert _warnings(caplog, "unreachable") == 2  # once per instance, not once per failed sync
    assert "hunter2" not in caplog.text and safe_url(url) in caplog.text


def _shared_metrics(shared: SharedState) -> dict[str, float]:
    """The shared-state samples of a Metrics that reads `shared`, parsed as Prometheus would."""
    text, _ = Metrics(shared=shared, process=False).render()
    return {s.name: s.value for fam in text_string_to_metric_families(text.decode())
            for s in fam.samples if s.name.startswith("axonsim_shared_state")}


@pytest.fixture
def redis_server() -> Iterator[Callable[[], subprocess.Popen[bytes]]]:
    """Start (again) a throwaway redis-server on one free port; stop it at the end."""
    exe = shutil.which("redis-server")
    if exe is None:
        _unavailable("redis-server is not installed (needed to take a Redis down and up again)")
    port = free_port()
    procs: list[subprocess.Popen[bytes]] = []

    def start() -> subprocess.Popen[bytes]:
        proc = subprocess.Popen([exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                                 "--daemonize", "no"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(proc)
        deadline = time.monotonic() + 10
        while _ping(f"redis://127.0.0.1:{port}/0") is not None:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError("the test's redis-server did not start")
            time.sleep(0.02)
        return proc

    start.port = port  # type: ignore[attr-defined]
    yield start
    for p in procs:
        if p.poll() is None:
            p.terminate()
            p.wait(10)


async def test_redis_going_away_and_coming_back(redis_url: str, prefix: str, clock: Callable[[], float],
                                               redis_server: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "axonsim.server.shared_state")
    proc = redis_server()
    url = f"redis://127.0.0.1:{redis_server.port}/0"
    cfg = make_config(redis_url, prefix, channels=[{"name": n, "models": ["m"], "priority": i}
                                                   for i, n in enumerate("abc")])
    async with pair(cfg, clock, url=url, max_backoff=0.2) as (ra, rb, sa, sb):
        calls(ra, clock, {"a": 429})
        await eventually(lambda: rb.by_name["a"].cooldown_until > clock(), "B cools `a` down")

        proc.terminate()
        proc.wait(10)
        await eventually(lambda: not sa.up and not sb.up, "both notice Redis is gone")
        assert sa.errors >= 1 and sa.last_error
        # A sync that failed part way gave its pooled connection back (it was kept, and reported
        # later as an "Unclosed Pipeline client" by asyncio's exception handler).
        gc.collect()
        assert "Unclosed" not in caplog.text
        # Both keep routing on what they know; A learns of a 429 on `b` on its own.
        assert calls(ra, clock, {"b": 429}) == [("b", None), ("c", None)]
        assert calls(rb, clock) == [("b", None)]  # B still knows `a` cools down; `b` it cannot know
        assert calls(ra, clock) == [("c", None)]

        assert _shared_metrics(sa)["axonsim_shared_state_up"] == 0
        redis_server()  # back, and empty (no persistence)
        await eventually(lambda: sa.up and sb.up, "both reconnect", timeout=5)
        figures = _shared_metrics(sa)
        assert figures["axonsim_shared_state_up"] == 1 and figures["axonsim_shared_state_syncs_total"] >= 1
        await eventually(lambda: rb.by_name["b"].cooldown_until == ra.by_name["b"].cooldown_until,
                         "what A learnt meanwhile reaches B")
        assert calls(rb, clock) == [("c", None)]
        # The new Redis lost everything: the processes refill it from their local state.
        check = redis.Redis.from_url(url, decode_responses=True)
        try:
            await eventually(lambda: any(check.hexists(k, "cd") for k in check.scan_iter(match=f"{prefix}:ch:a:*")),
                             "`a`'s cooldown is back in Redis")
        finally:
            check.close()
    assert _warnings(caplog, "unreachable") == 2
    assert _warnings(caplog, "reachable again") == 2


@pytest.mark.parametrize("kind", ["rpm", "quota"])
async def test_counts_a_restarted_redis_lost_are_refilled_not_adopted(redis_url: str, prefix: str,
                                                                      clock: Callable[[], float], redis_server: Any,
                                                                      kind: str) -> None:
    """Redis restarts empty: the processes' counts fill it again (rule 7), as cooldowns do; they do
    not adopt the few requests counted since, which would let the limit be overrun."""
    proc = redis_server()
    url = f"redis://127.0.0.1:{redis_server.port}/0"
    limit = {"limits": {"rpm": 10}} if kind == "rpm" else {"quota": {"requests": 10, "period": 3600}}
    cfg = make_config(redis_url, prefix, channels=[{"name": "a", "models": ["m"], **limit},
                                                   {"name": "b", "models": ["m"], "priority": 1}])

    def counted(r: Router) -> float:
        st = r.by_name["a"]
        return st.limiter.window.usage(clock())[0] if kind == "rpm" else st.quota.requests  # type: ignore[union-attr]

    async with pair(cfg, clock, url=url, max_backoff=0.2) as (ra, rb, sa, sb):
        for r in (ra, ra, ra, ra, rb, rb, rb, rb):
            assert calls(r, clock) == [("a", None)]
        await eventually(lambda: counted(ra) == 8 and counted(rb) == 8, "both count eight")
        proc.terminate()
        proc.wait(10)
        await eventually(lambda: not sa.up and not sb.up, "both notice Redis is gone")
        assert calls(ra, clock) == [("a", None)]  # nine, as far as A knows
        redis_server()  # back, and empty
        await eventually(lambda: sa.up and sb.up and sa.syncs > 2 and sb.syncs > 2, "both sync again", timeout=5)
        await asyncio.sleep(10 * INTERVAL)
        assert counted(ra) >= 9 and counted(rb) >= 8  # neither adopted the loss
        await eventually(lambda: counted(rb) >= 9, "B learns A's ninth")
        assert calls(rb, clock) == [("a", None)]  # the tenth
        await eventually(lambda: counted(ra) >= 10, "A learns B's tenth")
        assert calls(ra, clock) == [("b", None)] and calls(rb, clock) == [("b", None)]


# -- end to end: two proxy processes ------------------------------------------------------------------


def test_two_proxy_processes_share_a_cooldown(redis_url: str, prefix: str, rdb: redis.Redis, tmp_path: Path) -> None:
    m1, m2, p1, p2 = (free_port() for _ in range(4))
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(f"""
gateway:
  api_keys: [{{key: sk-gw-test, project: test}}]
channels:
  - name: limited
    base_url: http://127.0.0.1:{m1}/v1
    api_keys: [sk-upstream-limited]
    models: [m]
    priority: 0
    behavior: {{ttft: 0.01, output_tokens: 3, faults: {{rate_limited: 1.0, retry_after: 4}}}}
  - name: spare
    base_url: http://127.0.0.1:{m2}/v1
    api_keys: [sk-upstream-spare]
    models: [m]
    priority: 1
    behavior: {{ttft: 0.01, output_tokens: 3}}
routing:
  retry: {{max_same_channel: 0}}
state: {{url: "{redis_url}", sync_interval: {INTERVAL}, key_prefix: {prefix}}}
""")
    procs = [_start("mock-provider", "--config", str(cfg), "--channel", "limited", "--port", str(m1)),
             _start("mock-provider", "--config", str(cfg), "--channel", "spare", "--port", str(m2))]
    try:
        for port, proc in zip((m1, m2), procs, strict=True):
            _wait_healthy(f"http://127.0.0.1:{port}", proc)
        for port in (p1, p2):
            procs.append(_start("serve", "--config", str(cfg), "--port", str(port), "--log-level", "info"))
            _wait_healthy(f"http://127.0.0.1:{port}", procs[-1])
        body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
        auth = {"Authorization": "Bearer sk-gw-test"}

        def ask(port: int) -> httpx.Response:
            r = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", json=body, headers=auth, timeout=30)
            assert r.status_code == 200, r.text
            return r

        # Proxy 1: `limited` answers 429 + Retry-After, then `spare` serves.
        assert ask(p1).headers["x-axonsim-attempts"] == "2"
        deadline = time.monotonic() + 5
        while not channel_hash(rdb, prefix, "limited")[1].get("cd"):
            assert time.monotonic() < deadline, "proxy 1 never shared its cooldown (is SharedState started?)"
            time.sleep(0.02)
        until = float(channel_hash(rdb, prefix, "limited")[1]["cd"].split(":")[1])
        time.sleep(10 * INTERVAL)  # proxy 2 pulls within a few intervals
        # Proxy 2 has never called `limited`: one attempt means it skipped it, knowing the cooldown.
        assert time.time() < until - 1
        assert ask(p2).headers["x-axonsim-attempts"] == "1"
        assert ask(p2).headers["x-axonsim-attempts"] == "1"
        # Once the cooldown is over, proxy 2 tries `limited` again (which still answers 429).
        time.sleep(max(0.0, until - time.time()) + 0.3)
        assert ask(p2).headers["x-axonsim-attempts"] == "2"
        # Each proxy's /metrics says it reaches Redis.
        for port in (p1, p2):
            text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
            up = [s.value for fam in text_string_to_metric_families(text) for s in fam.samples
                  if s.name == "axonsim_shared_state_up"]
            assert up == [1.0], text
    finally:
        outs = [_stop(p) for p in reversed(procs)]
    logs = "".join(o + e for o, e in outs)
    assert "Traceback" not in logs
    assert logs.count("channel state shared through Redis") == 2  # each proxy says it shares its state
    assert "sk-upstream" not in logs


def test_admin_switches_with_redis_the_last_word_wins_and_a_reload_keeps_it(redis_url: str, prefix: str,
                                                                            tmp_path: Path) -> None:
    """Two proxy processes sharing state: a disable on one then at once an enable on the other ends
    enabled on both (the enable was lost); and a process that reloads keeps the operator's switch from
    the first moment, rather than sending traffic to the channel until its next sync."""
    m1, p1, p2 = (free_port() for _ in range(3))
    interval = 1.0  # long enough that a request right after a reload comes before the next sync
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(f"""
gateway:
  api_keys: [{{key: sk-gw-test, project: test}}]
  admin_keys: [sk-admin-test]
channels:
  - name: a
    base_url: http://127.0.0.1:{m1}/v1
    api_keys: [sk-upstream-a]
    models: [m]
    behavior: {{ttft: 0.01, output_tokens: 3}}
state: {{url: "{redis_url}", sync_interval: {interval}, key_prefix: {prefix}}}
""")
    procs = [_start("mock-provider", "--config", str(cfg), "--channel", "a", "--port", str(m1))]
    admin = {"Authorization": "Bearer sk-admin-test"}
    try:
        _wait_healthy(f"http://127.0.0.1:{m1}", procs[0])
        for port in (p1, p2):
            procs.append(_start("serve", "--config", str(cfg), "--port", str(port)))
            _wait_healthy(f"http://127.0.0.1:{port}", procs[-1])

        def switch(port: int, what: str) -> None:
            r = httpx.post(f"http://127.0.0.1:{port}/admin/channels/a/{what}", headers=admin, timeout=10)
            assert r.status_code == 200, r.text

        def enabled(port: int) -> bool:
            r = httpx.get(f"http://127.0.0.1:{port}/admin/channels/a", headers=admin, timeout=10)
            return bool(r.json()["enabled"])

        time.sleep(2.5 * interval)  # both have synced once
        switch(p1, "disable")
        switch(p2, "enable")  # p2 has not seen the disable yet
        time.sleep(3.5 * interval)
        assert enabled(p1) and enabled(p2)

        switch(p1, "disable")
        time.sleep(3.5 * interval)
        assert not enabled(p2)
        r = httpx.post(f"http://127.0.0.1:{p2}/admin/reload", headers=admin, timeout=30)
        assert r.status_code == 200, r.text
        assert not enabled(p2)  # at once, not at the next sync
        chat = httpx.post(f"http://127.0.0.1:{p2}/v1/chat/completions", timeout=10,
                          json={"model": "m", "messages": [{"role": "user", "content": "hi"}]},
                          headers={"Authorization": "Bearer sk-gw-test"})
        assert chat.status_code == 503, chat.text  # its one channel is switched off
    finally:
        for p in reversed(procs):
            _stop(p)
