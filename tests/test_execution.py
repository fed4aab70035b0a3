"""Execution: retries, failover, the policy table, backoff, cooldowns, priority groups, the attempt cap."""

from __future__ import annotations

import random

import pytest

from axonsim.config import Retry, parse_config
from axonsim.execution import Outcome, Router
from axonsim.native import fields
from axonsim.policy import DEFAULT_TABLE, Action, Policy
from axonsim.unified import Error, ErrorKind, error_kind_for_status


def router(n=2, strategy="round_robin", retry=None, **extra):
    chans = [{"name": f"c{i}", "models": ["m"], "api_keys": [f"secret-{i}"], **extra.get(f"c{i}", {})}
             for i in range(n)]
    routing = {"strategy": strategy}
    if retry:
        routing["retry"] = retry
    return Router(parse_config({"channels": chans, "routing": routing}))


def fail(status, retry_after=None):
    def answer(call, now):
        err = Error(kind=error_kind_for_status(status), status=status, message=f"upstream {status}",
                    retry_after=retry_after)
        return Outcome.failure(now + 1.0, err)
    return answer


def ok(call, now):
    return Outcome(True, now + 1.0)


def script(by_channel):
    """Answer per channel name with a list of answers consumed in order."""
    def answer(call, now):
        return by_channel[call.state.name].pop(0)(call, now)
    return answer


def test_success_first_try(driver):
    res = driver(router(), "m", ok)
    assert res.ok and len(res.attempts) == 1 and res.attempts[0].next == "done"


def test_5xx_retries_same_channel_then_fails_over(driver):
    r = router()
    log = []
    res = driver(r, "m", script({"c0": [fail(500), fail(502)], "c1": [ok]}), log=log)
    assert res.ok
    assert [(a.channel, a.status, a.next) for a in res.attempts] == [
        ("c0", 500, "retry"), ("c0", 502, "failover"), ("c1", 200, "done")]
    waits = [e for e in log if e[0] == "wait"]
    assert len(waits) == 2  # every retry and failover goes through a Wait


@pytest.mark.parametrize("status", [400, 404, 413, 422])
def test_client_errors_go_straight_back_without_retry(driver, status):
    res = driver(router(), "m", fail(status))
    assert not res.ok and len(res.attempts) == 1
    assert res.error.status == status
    assert res.attempts[0].next == "give_up"


@pytest.mark.parametrize("status", [401, 403])
def test_bad_key_fails_over_without_retry_and_disables_the_key(driver, status):
    r = router()
    res = driver(r, "m", script({"c0": [fail(status)], "c1": [ok]}))
    assert res.ok
    assert [(a.channel, a.next) for a in res.attempts] == [("c0", "failover"), ("c1", "done")]
    assert r.by_name["c0"].keys[0].disabled
    assert not r.by_name["c0"].usable()
    # the disabled channel is no longer a candidate
    res2 = driver(r, "m", ok)
    assert [a.channel for a in res2.attempts] == ["c1"]


def test_upstream_auth_failure_is_not_the_clients_401(driver):
    res = driver(router(1), "m", fail(401))
    assert not res.ok and res.error.status == 502
    assert "secret" not in res.error.message


def test_429_cools_the_channel_down_for_retry_after_and_fails_over(driver):
    r = router()
    res = driver(r, "m", script({"c0": [fail(429, retry_after=5.0)], "c1": [ok]}))
    assert res.ok and [a.channel for a in res.attempts] == ["c0", "c1"]
    c0 = r.by_name["c0"]
    assert c0.cooldown_until == pytest.approx(1.0 + 5.0)  # failed at t=1
    # during the cooldown traffic goes elsewhere...
    for t in (2.0, 4.0):
        assert driver(r, "m", ok, now=t).attempts[0].channel == "c1"
    # ...and comes back after it
    seen = {driver(r, "m", ok, now=6.5 + i).attempts[0].channel for i in range(2)}
    assert seen == {"c0", "c1"}


def test_429_without_retry_after_uses_the_default_cooldown_and_a_longer_retry_after_is_capped(driver):
    r = Router(parse_config({"channels": [{"name": "a", "models": ["m"]}],
                             "routing": {"cooldown": {"default": 5, "max": 10}}}))
    driver(r, "m", fail(429))
    assert r.by_name["a"].cooldown_until == pytest.approx(1.0 + 5.0)
    driver(r, "m", fail(429, retry_after=30), now=100.0)
    assert r.by_name["a"].cooldown_until == pytest.approx(101.0 + 10.0)
    # the cap applies to the default too (`max: 0` turns cooldowns off)
    r = Router(parse_config({"channels": [{"name": "a", "models": ["m"]}],
                             "routing": {"cooldown": {"default": 30, "max": 10}}}))
    driver(r, "m", fail(429))
    assert r.by_name["a"].cooldown_until == pytest.approx(1.0 + 10.0)


def test_every_channel_failing_returns_the_last_error_mapped(driver):
    res = driver(router(2, retry={"max_attempts": 10}), "m", fail(503))
    assert not res.ok
    assert len(res.attempts) == 4  # 2 channels × (1 try + 1 retry)
    assert res.attempts[-1].next == "exhausted"
    assert res.error.status == 503
    res = driver(router(1), "m", fail(429, retry_after=7))
    assert res.error.status == 429 and res.error.retry_after == 7


def test_attempt_cap(driver):
    res = driver(router(3, retry={"max_attempts": 2, "max_same_channel": 5}), "m", fail(500))
    assert len(res.attempts) == 2 and res.attempts[-1].next == "cap"


def test_retry_after_is_honoured_on_same_channel_retry(driver):
    r = router(1, retry={"on": {"rate_limited": "retry"}})
    log = []
    driver(r, "m", script({"c0": [fail(429, retry_after=3.0), ok]}), log=log)
    waits = [e[1] for e in log if e[0] == "wait"]
    assert waits and waits[0] >= 3.0


def test_priority_groups_lower_first_then_next_group(driver):
    r = router(3, c0={"priority": 1}, c1={"priority": 0}, c2={"priority": 1})
    res = driver(r, "m", script({"c1": [fail(500), fail(500)], "c0": [ok], "c2": [ok]}))
    assert [a.channel for a in res.attempts][:2] == ["c1", "c1"]
    assert res.attempts[2].channel in ("c0", "c2")


def test_unknown_model_is_not_found(driver):
    res = driver(router(), "nope", ok)
    assert not res.ok and res.error.status == 404 and res.error.kind is ErrorKind.NOT_FOUND
    assert res.attempts == []


def test_model_mapping_sends_the_upstream_name(driver):
    r = Router(parse_config({"channels": [{"name": "a", "models": ["gpt-4o-mini"],
                                           "model_mapping": {"fast": "gpt-4o-mini"}}]}))
    seen = []
    driver(r, "fast", lambda call, now: seen.append(call.upstream_model) or Outcome(True, now + 1))
    assert seen == ["gpt-4o-mini"]


def test_disabled_channel_is_no_candidate(driver):
    r = router(2, c0={"enabled": False})
    assert {driver(r, "m", ok).attempts[0].channel for _ in range(4)} == {"c1"}
    r = router(1, c0={"enabled": False})
    res = driver(r, "m", ok)
    assert res.error.status == 503 and res.error.code == "no_channel_available"


def test_backoff_is_exponential_capped_jittered_from_the_injected_rng():
    p = Policy(Retry(backoff={"base": 1.0, "cap": 4.0, "jitter": 0.5}))
    rng = random.Random(1)
    delays = [p.backoff(n, rng) for n in (1, 2, 3, 4, 5)]
    for n, d in zip((1, 2, 3, 4, 5), delays, strict=True):
        full = min(4.0, 2 ** (n - 1))
        assert full * 0.5 <= d <= full
    assert delays == [Policy(Retry(backoff={"base": 1.0, "cap": 4.0, "jitter": 0.5})).backoff(n, r)
                      for r in [random.Random(1)] for n in (1, 2, 3, 4, 5)]
    assert p.backoff(1, rng, retry_after=9.0) == 9.0


def test_policy_table_is_data_printable_and_configurable():
    p = Policy(Retry(on={"timeout": "failover", "invalid_request": "give_up"}))
    assert p.action(ErrorKind.TIMEOUT) is Action.FAILOVER
    assert DEFAULT_TABLE[ErrorKind.TIMEOUT] is Action.RETRY
    text = p.describe()
    assert "timeout          failover" in text and len(text.splitlines()) == len(DEFAULT_TABLE)


def test_same_seed_same_decisions(driver):
    def run(seed):
        r = router(3, strategy="random")
        return [driver(r, "m", ok, seed=seed + i).attempts[0].channel for i in range(50)]
    assert run(1) == run(1)
    assert run(1) != run(2)


def test_keys_rotate_and_names_hide_the_secret(driver):
    r = Router(parse_config({"channels": [{"name": "a", "models": ["m"],
                                           "api_keys": ["sk-1", {"key": "sk-2", "name": "backup"}]}]}))
    keys = [driver(r, "m", ok).attempts[0].key for _ in range(3)]
    assert keys == ["a#0", "backup", "a#0"]


def _state_values(st):
    out = {}
    for name in fields(type(st)):
        v = getattr(st, name)
        if name == "keys":
            v = [(k.uses, k.failures, k.disabled_until, k.limiter.window.usage(50.0), k.auto.counts) for k in v]
        elif name == "limiter":
            v = v.window.usage(50.0)
        elif name == "breakers":
            v = {m: (b.state, b.failures, b.probes) for m, b in v.items()}
        elif name == "auto":
            v = v.counts
        elif name in ("channel", "_ejection", "outlier", "quota", "price", "breaker_cfg"):
            continue
        out[name] = v
    return out


@pytest.mark.parametrize("limited", [False, True])
@pytest.mark.parametrize("fail_first", [False, True])
def test_answered_is_first_token_then_succeeded(limited, fail_first):
    """Call.answered (what a driver reports for a non-stream answer) leaves the channel state, the
    recent-TTFT samples and the Outcome exactly as first_token followed by succeeded."""
    keys = [{"key": "a", "limits": {"tpm": 10**6}}, {"key": "b"}] if limited else ["a", "b"]
    extra = {"c0": {"limits": {"rpm": 1000} if limited else {}, "api_keys": keys}}
    routers = [router(1, **extra) for _ in range(2)]
    outs = []
    for i, r in enumerate(routers):
        st = r.states[0]
        if fail_first:  # a failure first: the state's slow path (breaker and key streaks) runs too
            c = r._call(st, "m", 0, 1, None, 30, None, r.stats)
            c.started(1.0)
            c.failed(1.5, Outcome.failure(1.5, Error(kind=ErrorKind.SERVER_ERROR, status=500, message="x")))
        assert st.slow == (limited or fail_first)
        c = r._call(st, "m", 0, 1, None, 30, None, r.stats)
        c.started(2.0)
        if i == 0:
            c.first_token(3.25)
            c.succeeded(3.25, 40)
            out = Outcome(True, 3.25, 200, None, None, c.ttft, c.key)
        else:
            out = c.answered(3.25, 40)
        outs.append(out)
    a, b = (r.states[0] for r in routers)
    assert _state_values(a) == _state_values(b)
    assert routers[0].stats.samples == routers[1].stats.samples == [1.25]
    assert [getattr(outs[0], f) for f in fields(Outcome)] == [getattr(outs[1], f) for f in fields(Outcome)]


def test_committed_is_first_token_and_a_success_outcome():
    """Call.committed (a stream's first event) reports first_token and makes the Outcome a driver
    would build for it; the state then waits for the stream's end."""
    a, b = router(1), router(1)
    ca, cb = (r._call(r.states[0], "m", 0, 1, None, 30, None, r.stats) for r in (a, b))
    ca.started(2.0)
    cb.started(2.0)
    ca.first_token(2.5)
    expected = Outcome(True, 2.5, 200, ttft=ca.ttft, key=ca.key)
    out = cb.committed(2.5)
    assert _state_values(a.states[0]) == _state_values(b.states[0])
    assert [getattr(out, f) for f in fields(Outcome)] == [getattr(expected, f) for f in fields(Outcome)]
    assert b.states[0].inflight == 1
