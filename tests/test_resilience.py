"""Health and resilience in the core: breakers, ejection, cooldowns, auto-disable, quotas, local
limits, the retry budget and deadline, hedging, standby tiers, stickiness and the decision trace.
Everything runs on the tests' virtual-clock driver (tests/conftest.py), seeded."""

from __future__ import annotations

from collections import Counter

import pytest

from axonsim.config import ConfigError, parse_config
from axonsim.execution import Outcome, Router
from axonsim.unified import Error, ErrorKind, error_kind_for_status


def make(channels, **routing):
    return Router(parse_config({"channels": channels, "routing": routing}))


def chans(n, **per):
    return [{"name": f"c{i}", "models": ["m"], **per.get(f"c{i}", {})} for i in range(n)]


def fail(status, retry_after=None, after=1.0, message=None):
    def answer(call, now):
        err = Error(kind=error_kind_for_status(status), status=status, message=message or f"upstream {status}",
                    retry_after=retry_after)
        return Outcome.failure(now + after, err)
    return answer


def ok(after=1.0):
    return lambda call, now: Outcome(True, now + after)


def by_channel(table):
    return lambda call, now: table[call.state.name](call, now)


NO_RETRY = {"max_attempts": 1}


def test_429_with_retry_after_5_moves_traffic_away_for_5s_then_back(driver):
    r = make(chans(2), strategy="round_robin", retry={"max_same_channel": 0})
    answers = {"c0": fail(429, retry_after=5.0, after=0.0), "c1": ok(0.0)}
    res = driver(r, "m", by_channel(answers), now=100.0)
    assert [a.channel for a in res.attempts] == ["c0", "c1"]
    answers["c0"] = ok(0.0)
    during = Counter(driver(r, "m", by_channel(answers), now=100.0 + t).attempts[0].channel for t in (0.5, 2, 4, 4.9))
    after = Counter(driver(r, "m", by_channel(answers), now=105.1 + t).attempts[0].channel for t in range(4))
    assert during == {"c1": 4}
    assert after == {"c0": 2, "c1": 2}


def test_breaker_opens_then_half_open_admits_the_configured_probes(driver):
    r = make(chans(2), strategy="round_robin", retry=NO_RETRY,
             health={"breaker": {"failure_threshold": 3, "open_time": 10, "half_open_probes": 2},
                     "auto_disable": []})
    c0 = r.by_name["c0"]
    for t in range(3):
        c0.last_pick = -10  # make round robin offer c0 first each time
        driver(r, "m", by_channel({"c0": fail(500, after=0.0), "c1": ok(0.0)}), now=float(t))
    assert c0.breaker("m").state == "open"
    # open: no traffic to c0
    assert {driver(r, "m", by_channel({"c1": ok(0.0)}), now=5.0).attempts[0].channel for _ in range(4)} == {"c1"}
    # after open_time: half-open admits exactly 2 probes at once
    b = c0.breaker("m")
    assert b.allows(13.0) and b.state == "half_open"
    b.on_start(13.0)
    b.on_start(13.0)
    assert not b.allows(13.0)
    b.on_success(14.0)
    assert b.state == "half_open"  # one success of two probes
    b.on_success(14.0)
    assert b.state == "closed"


def test_breaker_reopens_on_probe_failure_with_exponential_backoff():
    from axonsim.config import BreakerConfig
    from axonsim.health import Breaker
    b = Breaker(BreakerConfig(failure_threshold=1, open_time=10, max_open_time=35))
    b.on_failure(0.0)
    assert b.open_until == 10.0
    assert b.allows(10.0)
    b.on_start(10.0)
    b.on_failure(10.5)
    assert b.state == "open" and b.open_until == pytest.approx(30.5)  # 20 s: doubled
    b.allows(31.0)
    b.on_start(31.0)
    b.on_failure(31.0)
    assert b.open_until == pytest.approx(31.0 + 35.0)  # capped


def test_outlier_ejection_cap_holds(driver):
    # 10 channels, max 20 %: a broad incident ejects at most 2 of them.
    r = make(chans(10), strategy="round_robin", retry=NO_RETRY,
             health={"breaker": {"enabled": False}, "auto_disable": [],
                     "outlier": {"enabled": True, "consecutive_failures": 2, "max_ejection_percent": 20}})
    for i in range(60):
        driver(r, "m", fail(503, after=0.0), now=float(i) * 0.01)
    ejected = [s.name for s in r.states if s.ejection.until > 0.6]
    assert len(ejected) == 2
    assert r.outlier.max_ejected() == 2
    # at least one channel is always left, even at 100 %
    r1 = make(chans(1), retry=NO_RETRY, health={"outlier": {"enabled": True, "consecutive_failures": 1,
                                                             "max_ejection_percent": 100}})
    for i in range(5):
        driver(r1, "m", fail(500, after=0.0), now=float(i))
    assert r1.states[0].ejection.until < 0


def test_ejection_time_grows_with_each_ejection(driver):
    r = make(chans(3), strategy="round_robin", retry=NO_RETRY,
             health={"breaker": {"enabled": False}, "auto_disable": [],
                     "outlier": {"enabled": True, "consecutive_failures": 1, "base_ejection_time": 30,
                                 "max_ejection_percent": 50}})
    c0 = r.by_name["c0"]
    c0.last_pick = -5
    driver(r, "m", by_channel({"c0": fail(500, after=0.0)}), now=0.0)
    assert c0.ejection.until == 30.0
    c0.last_pick = -5
    driver(r, "m", by_channel({"c0": fail(500, after=0.0)}), now=31.0)
    assert c0.ejection.until == 31.0 + 60.0


def test_auto_disable_temporary_then_automatic_reenable(driver):
    r = make(chans(2, c0={"api_keys": ["k"]}), strategy="round_robin", retry={"max_same_channel": 0},
             health={"breaker": {"enabled": False}})
    c0 = r.by_name["c0"]
    for t in range(3):  # 503 ×3 → temporary, 300 s
        c0.last_pick = -10
        driver(r, "m", by_channel({"c0": fail(503, after=0.0), "c1": ok(0.0)}), now=float(t))
    assert c0.unavailable_reason(10.0) == "auto_disabled"
    assert c0.unavailable_reason(2.0 + 300.1) is None


def test_bad_key_is_disabled_alone_in_a_key_pool(driver):
    r = make([{"name": "c0", "models": ["m"], "api_keys": ["good", "bad"]}])
    answers = {"c0#0": ok(), "c0#1": fail(401)}
    seen = []
    for i in range(6):
        res = driver(r, "m", lambda call, now: (seen.append(call.state.key_name(call.key)) or
                                                answers[call.state.key_name(call.key)](call, now)), now=float(i))
        assert res.ok
    st = r.by_name["c0"]
    assert st.keys[1].disabled and not st.keys[0].disabled and st.usable()
    assert seen.count("c0#1") == 1  # tried once, never again


def test_local_rpm_limit_skips_the_channel_before_a_call_is_wasted(driver):
    r = make(chans(2, c0={"limits": {"rpm": 3}}), strategy="round_robin")
    counts = Counter(driver(r, "m", ok(0.0), now=0.1 * i).attempts[0].channel for i in range(10))
    assert counts["c0"] == 3 and counts["c1"] == 7
    # a minute later c0 has room again
    assert "c0" in {driver(r, "m", ok(0.0), now=130.0 + i).attempts[0].channel for i in range(2)}


def test_tpm_limit_uses_the_estimated_tokens(driver):
    r = make(chans(1, c0={"limits": {"tpm": 1000}}))
    assert driver(r, "m", ok(0.0), tokens=600).ok
    res = driver(r, "m", ok(0.0), tokens=600, now=1.0)
    assert not res.ok and res.error.status == 429 and res.error.retry_after is not None
    assert res.attempts == []  # no call was wasted


def test_quota_window_resets_on_schedule(driver):
    r = make(chans(1, c0={"quota": {"requests": 2, "period": 86400}}))
    assert driver(r, "m", ok(0.0), now=10.0).ok
    assert driver(r, "m", ok(0.0), now=20.0).ok
    res = driver(r, "m", ok(0.0), now=30.0)
    assert res.error.status == 429 and res.error.retry_after == pytest.approx(86400 - 30.0)
    assert driver(r, "m", ok(0.0), now=86400.0 + 1).ok


def test_retry_budget_bounds_amplification_under_a_failing_channel(driver):
    retry = {"max_attempts": 5, "max_same_channel": 4,
             "budget": {"enabled": True, "ratio": 0.2, "min_retries": 0, "window": 1000}}
    r = make(chans(1), retry=retry, health={"breaker": {"enabled": False}, "auto_disable": []})
    attempts = sum(len(driver(r, "m", fail(500, after=0.01), now=float(i)).attempts) for i in range(500))
    assert attempts / 500 <= 1.2 + 0.01
    unbudgeted = make(chans(1), retry={**retry, "budget": {"enabled": False}},
                      health={"breaker": {"enabled": False}, "auto_disable": []})
    assert sum(len(driver(unbudgeted, "m", fail(500, after=0.01), now=float(i)).attempts) for i in range(50)) == 250


def test_total_deadline_stops_retrying(driver):
    r = make(chans(1), retry={"max_attempts": 10, "max_same_channel": 10, "deadline": 5.0,
                              "backoff": {"base": 1.0, "cap": 1.0, "jitter": 0.0}},
             health={"breaker": {"enabled": False}, "auto_disable": []})
    res = driver(r, "m", fail(500, after=1.0))
    assert res.error.status == 504 and res.attempts[-1].next == "deadline"
    assert res.end <= 5.0


def test_per_channel_retry_override_and_error_patterns(driver):
    r = make(chans(2, c0={"retry": {"statuses": {400: "failover"}}}), strategy="round_robin",
             retry={"patterns": [{"pattern": "context length", "action": "failover"}]})
    res = driver(r, "m", by_channel({"c0": fail(400), "c1": ok()}))
    assert [a.next for a in res.attempts] == ["failover", "done"]  # c0's layer makes its 400 fail over
    r.by_name["c1"].last_pick = -5  # c1 first
    res = driver(r, "m", by_channel({"c1": fail(400, message="maximum context length exceeded"), "c0": ok()}))
    assert [(a.channel, a.next) for a in res.attempts] == [("c1", "failover"), ("c0", "done")]  # global pattern
    r.by_name["c1"].last_pick = -5
    res = driver(r, "m", by_channel({"c0": fail(400, message="bad"), "c1": fail(400, message="bad")}))
    assert [(a.channel, a.next) for a in res.attempts] == [("c1", "give_up")]  # no layer: a client error
    assert res.error.status == 400


def test_weight_zero_is_strict_standby(driver):
    r = make(chans(3, c0={"weight": 0}), strategy="random", retry={"max_attempts": 10})
    assert Counter(driver(r, "m", ok(0.0), seed=i).attempts[0].channel for i in range(300))["c0"] == 0
    # it serves only when nothing else can
    res = driver(r, "m", by_channel({"c1": fail(500), "c2": fail(500), "c0": ok()}),
                 seed=1)
    assert res.ok and res.attempts[-1].channel == "c0"


def test_priority_tiers_before_standby_across_groups(driver):
    r = make(chans(3, c0={"priority": 0, "weight": 0}, c1={"priority": 1}, c2={"priority": 2}),
             retry={"max_attempts": 10})
    res = driver(r, "m", by_channel({"c1": fail(500), "c2": fail(500), "c0": ok()}))
    assert [a.channel for a in res.attempts] == ["c1", "c1", "c2", "c2", "c0"]


def test_hedging_starts_exactly_one_extra_attempt_after_the_delay_and_cancels_the_loser(driver):
    r = make(chans(2), strategy="round_robin", hedge={"enabled": True, "delay": 2.0})
    log = []
    res = driver(r, "m", by_channel({"c0": ok(10.0), "c1": ok(1.0)}), log=log)
    assert res.ok
    assert [e[:2] for e in log if e[0] in ("launch", "cancel")] == [("launch", "c0"), ("launch", "c1"),
                                                                     ("cancel", "c0")]
    launches = [e for e in log if e[0] == "launch"]
    assert launches[1][2] - launches[0][2] == pytest.approx(2.0)
    assert {(a.channel, a.next) for a in res.attempts} == {("c1", "done"), ("c0", "hedge_lost")}
    assert res.call.state.name == "c1"
    assert r.by_name["c0"].inflight == 0 and r.by_name["c0"].failures == 0  # cancelled, not failed
    # a fast first attempt needs no hedge
    log = []
    driver(r, "m", by_channel({"c0": ok(1.0), "c1": ok(1.0)}), log=log)
    assert sum(1 for e in log if e[0] == "launch") == 1


def test_a_hedge_keeps_each_attempt_under_its_own_number(driver):
    # The first attempt answers after the hedge started (hedge at 2 s, answer at 3 s): the winner is
    # attempt 1, the cancelled hedge attempt 2. One number each: the store keys attempts by
    # (request, number), so a shared number lost a row.
    r = make(chans(2), strategy="round_robin", hedge={"enabled": True, "delay": 2.0})
    res = driver(r, "m", by_channel({"c0": ok(3.0), "c1": ok(10.0)}))
    assert res.ok and res.call.state.name == "c0"
    # one number each, and the answering attempt recorded last (what the records' readers take as the answer)
    assert [(a.n, a.channel, a.next) for a in res.attempts] == [(2, "c1", "hedge_lost"), (1, "c0", "done")]
    # both fail, the hedge first: attempt 2 failed inside the hedge, attempt 1 after it
    r = make(chans(2), strategy="round_robin", hedge={"enabled": True, "delay": 2.0}, retry={"max_same_channel": 0})
    res = driver(r, "m", by_channel({"c0": fail(500, after=3.0), "c1": fail(500, after=0.5)}))
    assert not res.ok
    assert [(a.n, a.channel, a.next) for a in res.attempts] == [(2, "c1", "hedge_failed"), (1, "c0", "exhausted")]


@pytest.mark.parametrize("strategy", ["round_robin", "round-robin"])  # ours, and AxonHub's (selection counts)
@pytest.mark.parametrize("n", [2, 3, 4])
def test_round_robin_rotates_first_attempts_over_every_channel_when_hedges_fire(driver, n, strategy):
    # Every request hedged (the first answers after the hedge delay): a hedge's pick must not move
    # the rotation, or with an even number of channels the first attempts all went to half of them.
    r = make(chans(n), strategy=strategy, hedge={"enabled": True, "delay": 0.5})
    answers = by_channel({f"c{i}": ok(1.0) for i in range(n)})
    firsts, hedges = Counter(), Counter()
    for t in range(4 * n):
        res = driver(r, "m", answers, now=10.0 * t)
        by_n = {a.n: a.channel for a in res.attempts}
        assert set(by_n) == {1, 2}  # the hedge did fire
        firsts[by_n[1]] += 1
        hedges[by_n[2]] += 1
    assert firsts == {f"c{i}": 4 for i in range(n)}
    assert sum(hedges.values()) == 4 * n and all(hedges[f"c{i}"] for i in range(n))


def test_hedge_by_percentile_waits_for_samples(driver):
    r = make(chans(2), strategy="round_robin", hedge={"enabled": True, "percentile": 95, "min_samples": 5})
    assert r._hedge_delay() is None
    for i in range(20):
        r.stats.add(1.0 + i / 10)
    assert r._hedge_delay() == pytest.approx(2.8)  # nearest rank: the 19th of 20


def test_attempts_feed_the_ttft_samples_that_time_percentile_hedges(driver):
    r = make(chans(2), strategy="round_robin", hedge={"enabled": True, "percentile": 95, "min_samples": 50})
    for i in range(3):
        driver(r, "m", ok(1.0), now=float(i))
    assert len(r.stats.samples) == 3  # one first token per request, through the Call


def test_a_hedged_attempt_cancelled_before_its_first_token_still_counts_as_slow(driver):
    # The percentile must see the slow first attempts that a hedge cut short, as "at least this slow":
    # otherwise the sample loses its tail, the percentile drifts low and hedges fire ever earlier.
    r = make(chans(2), strategy="round_robin", hedge={"enabled": True, "percentile": 50, "min_samples": 2})
    for i in range(2):
        driver(r, "m", ok(1.0), now=float(i))
    assert r._hedge_delay() == pytest.approx(1.0)
    res = driver(r, "m", by_channel({"c0": ok(10.0), "c1": ok(0.5)}), now=10.0)
    assert {(a.channel, a.next) for a in res.attempts} == {("c0", "hedge_lost"), ("c1", "done")}
    assert sorted(r.stats.samples) == [0.5, 1.0, 1.0, pytest.approx(1.5)]  # c0: cancelled at 1.5 s, no token


def test_hedge_config_needs_exactly_one_trigger():
    with pytest.raises(ConfigError, match="routing.hedge"):
        make(chans(1), hedge={"enabled": True})


def test_sticky_trace_prefers_the_previous_channel_once(driver):
    r = make(chans(3), strategy="round_robin", sticky="trace")
    first = driver(r, "m", ok(), sticky_key="t1").attempts[0].channel
    assert all(driver(r, "m", ok(), sticky_key="t1", now=float(i)).attempts[0].channel == first for i in range(5))
    # a failing sticky channel is tried once, then the others (no same-channel retry)
    res = driver(r, "m", lambda call, now: fail(500)(call, now) if call.state.name == first else ok()(call, now),
                 sticky_key="t1", now=10.0)
    assert res.ok and res.attempts[0].channel == first and res.attempts[0].next == "failover"


def test_decision_trace_names_candidates_scores_and_reasons(driver):
    r = make(chans(3, c2={"enabled": True}), strategy="composite")
    r.by_name["c1"].cooldown_until = 100.0
    res = driver(r, "m", by_channel({"c0": fail(500), "c2": ok(), "c1": ok()}), explain=True,
                 now=1.0)
    trace = res.explain()
    first = trace["decisions"][0]
    assert {row["channel"] for row in first["candidates"]} == {"c0", "c1", "c2"}
    assert next(row for row in first["candidates"] if row["channel"] == "c1")["unavailable"] == "cooling_down"
    assert all("score" in row for row in first["candidates"] if row["channel"] != "c1")
    assert trace["attempts"][-1]["next"] == "done"
    assert all(a["key"] is None or "secret" not in a["key"] for a in trace["attempts"])


def test_the_trace_says_why_a_tier_served_nothing(driver):
    # The primary cools down after a 429: the backup tier serves, and the trace shows why.
    r = make(chans(2, c1={"priority": 1}), strategy="weighted", retry={"max_same_channel": 0})
    driver(r, "m", by_channel({"c0": fail(429, retry_after=30.0, after=0.0), "c1": ok(0.0)}))
    trace = driver(r, "m", by_channel({"c1": ok(0.0)}), explain=True, now=5.0).explain()
    assert [(d["tier"], d["chosen"]) for d in trace["decisions"]] == [(0, None), (1, "c1")]
    assert trace["decisions"][0]["candidates"][0] == {"channel": "c0", "upstream_model": "m",
                                                      "unavailable": "cooling_down"}
    assert trace["attempts"][0]["decision"] == 1
    # nothing anywhere: the client's 429 comes with the trace of why
    alone = make(chans(1), retry=NO_RETRY)
    driver(alone, "m", fail(429, retry_after=30.0, after=0.0))
    res = driver(alone, "m", ok(0.0), explain=True, now=5.0)
    assert res.error.status == 429 and res.attempts == []
    assert [c["unavailable"] for c in res.explain()["decisions"][0]["candidates"]] == ["cooling_down"]


def test_a_hedge_pick_is_a_decision_of_its_own(driver):
    r = make(chans(3, c0={"weight": 100}, c1={"weight": 50}, c2={"weight": 10}), strategy="failover",
             hedge={"enabled": True, "delay": 0.3})
    res = driver(r, "m", by_channel({"c0": ok(1.0), "c1": ok(0.2), "c2": ok(0.2)}), explain=True)
    trace = res.explain()
    assert [(d["chosen"], d.get("by")) for d in trace["decisions"]] == [("c0", "strategy"), ("c1", "hedge")]
    assert {c["channel"] for c in trace["decisions"][1]["candidates"]} == {"c1", "c2"}
    assert [(a["channel"], a["next"], a["decision"]) for a in trace["attempts"]] == [
        ("c0", "hedge_lost", 0), ("c1", "done", 1)]


@pytest.mark.parametrize("routing, field", [
    ({"strategy": "fastest-ever"}, "routing.strategy"),
    ({"composite": {"vibes": 1}}, "routing.composite"),
    ({"retry": {"patterns": [{"pattern": "(", "action": "retry"}]}}, "routing.retry.patterns[0].pattern"),
    ({"health": {"outlier": {"max_ejection_percent": 150}}}, "routing.health.outlier.max_ejection_percent"),
    ({"retry": {"on": {"server_error": "explode"}}}, "routing.retry.on.server_error"),
    ({"retry": {"statuses": {99: "retry"}}}, "routing.retry.statuses[99]"),
    ({"retry": {"deadline": float("inf")}}, "routing.retry.deadline"),
    ({"retry": {"backoff": {"cap": float("inf")}}}, "routing.retry.backoff.cap"),
    ({"hedge": {"enabled": True, "delay": float("inf")}}, "routing.hedge.delay"),
    ({"cooldown": {"default": float("inf")}}, "routing.cooldown.default"),
])
def test_bad_routing_config_is_rejected_at_startup_naming_the_field(routing, field):
    with pytest.raises(ConfigError) as e:
        make(chans(1), **routing)
    assert field in str(e.value)


def test_an_infinite_weight_is_rejected_naming_the_field():
    # inf/inf made composite scores NaN and sent every request to the *other* channel.
    with pytest.raises(ConfigError) as e:
        make([{"name": "c0", "models": ["m"], "weight": float("inf")}])
    assert "channels[0].weight" in str(e.value)


def test_panic_mode_tries_health_excluded_channels_rather_than_fail_without_an_attempt(driver):
    # Envoy's panic threshold: when breakers/ejection/auto-disable have taken every candidate out,
    # requests still get an attempt instead of a 503 with none.
    r = make(chans(2), strategy="round_robin", retry=NO_RETRY,
             health={"breaker": {"failure_threshold": 1, "open_time": 100}, "auto_disable": []})
    for i in range(2):
        driver(r, "m", fail(500, after=0.0), now=float(i))
    assert all(s.breaker("m").state == "open" for s in r.states)
    res = driver(r, "m", ok(0.0), now=5.0, explain=True)
    assert res.ok and len(res.attempts) == 1
    assert res.decisions[-1]["by"] == "panic"
    strict = make(chans(2), strategy="round_robin", retry=NO_RETRY,
                  health={"breaker": {"failure_threshold": 1, "open_time": 100}, "auto_disable": [], "panic": False})
    for i in range(2):
        driver(strict, "m", fail(500, after=0.0), now=float(i))
    res = driver(strict, "m", ok(0.0), now=5.0)
    assert not res.ok and res.attempts == [] and res.error.status == 503


def test_panic_mode_also_tries_keys_whose_breakers_tripped_with_their_channels(driver):
    # Key breakers open together with the channel's; panic must not then find "no key available".
    keyed = chans(2, c0={"api_keys": ["k0", "k0b"]}, c1={"api_keys": ["k1", "k1b"]})
    trip = {"failure_threshold": 1, "open_time": 100}
    r = make(keyed, strategy="round_robin", retry=NO_RETRY,
             health={"breaker": trip, "key_breaker": trip, "auto_disable": []})
    for i in range(2):
        driver(r, "m", fail(500, after=0.0), now=float(i))
    for s in r.states:  # the pools' other keys failed too, elsewhere
        s.keys[1].breaker("m").on_failure(2.0)
        s.refresh(2.0)
    assert all(not k.available(5.0, 0, "m") for s in r.states for k in s.keys)  # every key breaker is open
    res = driver(r, "m", ok(0.0), now=5.0, explain=True)
    assert res.ok and len(res.attempts) == 1 and res.decisions[-1]["by"] == "panic"
    # a key switched off for its credentials stays off, panic or not
    for s in r.states:
        for k in s.keys:
            k.disabled = True
    res = driver(r, "m", ok(0.0), now=6.0)
    assert not res.ok and res.attempts == []


def test_a_key_held_back_by_its_breaker_is_health_not_a_wait(driver):
    # A key pool whose key breakers for m opened while the channel's breaker for m stayed closed
    # (a higher threshold): its keys are out for m. That is health (503, panic may try a key), not a
    # wait the client could be told of (it was a 429 with Retry-After: 1, for as long as the breakers).
    def pool(keys=("k0", "k1"), **health):
        return make([{"name": "c0", "models": ["m", "n"], "api_keys": list(keys)}], retry=NO_RETRY,
                    health={"breaker": {"failure_threshold": 100}, "auto_disable": [],
                            "key_breaker": {"failure_threshold": 2, "open_time": 30}, **health})

    strict = pool(panic=False)
    for i in range(4):  # two failures on each key
        driver(strict, "m", fail(500, after=0.0), now=float(i))
    c0 = strict.states[0]
    assert c0.breaker("m").state == "closed" and not any(k.available(5.0, 0, "m") for k in c0.keys)
    assert c0.unavailable_reason(5.0, "m") == "key_breaker_open"
    res = driver(strict, "m", ok(0.0), now=5.0)
    assert not res.ok and res.attempts == [] and res.error.status == 503 and res.error.retry_after is None
    # with panic mode (the default), a key gets its attempt
    r = pool()
    for i in range(4):
        driver(r, "m", fail(500, after=0.0), now=float(i))
    res = driver(r, "m", ok(0.0), now=5.0, explain=True)
    assert res.ok and len(res.attempts) == 1 and res.decisions[-1]["by"] == "panic"
    # a lone key's 429 cools the channel down: a wait, 429 with the time it comes back
    cool = pool(keys=("k0",), panic=False)
    driver(cool, "m", fail(429, retry_after=20.0, after=0.0), now=0.0)
    assert cool.states[0].unavailable_reason(5.0, "n") == "cooling_down"
    res = driver(cool, "n", ok(0.0), now=5.0)
    assert res.error.status == 429 and res.error.retry_after == pytest.approx(15.0)


def test_one_models_outage_does_not_hold_a_key_pool_back_for_the_others(driver):
    # Key breakers are per model, as the channel's are: m failing on every key of the pool (its
    # outage at the provider) opens the keys' breakers for m alone. They had counted every model
    # together, and took the pool out for n too (a 503 here, with panic off).
    r = make([{"name": "c0", "models": ["m", "n"], "api_keys": ["k0", "k1"]}], retry=NO_RETRY,
             health={"breaker": {"failure_threshold": 100}, "auto_disable": [], "panic": False,
                     "key_breaker": {"failure_threshold": 2, "open_time": 30}})
    for i in range(4):
        driver(r, "m", fail(500, after=0.0), now=float(i))
    c0 = r.states[0]
    assert all(k.breaker("m").state == "open" for k in c0.keys)
    assert c0.unavailable_reason(5.0, "m") == "key_breaker_open" and c0.unavailable_reason(5.0, "n") is None
    assert not driver(r, "m", ok(0.0), now=5.0).ok
    served = [driver(r, "n", ok(0.0), now=5.0 + i) for i in range(2)]
    assert all(res.ok for res in served) and {res.attempts[0].key for res in served} == {"c0#0", "c0#1"}
    # the admin view and the metrics: a key is available while some model it serves may use it
    assert c0.key_available(0, 8.0) and c0.snapshot(8.0)["available"]
    # one key failing on n alone is skipped for n; the other key serves it
    for i in range(4):
        driver(r, "n", lambda call, now: (fail(500, after=0.0) if call.key == 0 else ok(0.0))(call, now), now=10.0 + i)
    assert c0.keys[0].breaker("n").state == "open" and "n" not in c0.keys[1].breakers
    assert [c0.next_key(14.0, None, 0, "n") for _ in range(3)] == [1, 1, 1]
    assert c0.next_key(14.0, None, 0, "m") is None  # m's key breakers: open until 33 s
    assert c0.next_key(40.0, None, 0, "m") is not None


def test_a_pool_whose_key_breakers_hold_every_model_is_shown_unavailable_and_probed_as_such(driver):
    # Key breakers are per model; the channel as a whole (the admin API, the metrics, whether a probe
    # must leave room for clients) is out when they hold back every model it serves.
    def pool(models):
        return make([{"name": "c0", "models": models, "probe": {"interval": 10},
                      "api_keys": [{"key": "k0", "limits": {"rpm": 4}}, {"key": "k1", "limits": {"rpm": 4}}]}],
                    retry=NO_RETRY, health={"breaker": {"failure_threshold": 100}, "auto_disable": [], "panic": False,
                                            "key_breaker": {"failure_threshold": 2, "open_time": 30}})

    r = pool(["m"])
    for i in range(4):  # each key: two failures on m, 2 of its 4 requests a minute
        driver(r, "m", fail(500, after=0.0), now=float(i))
    c0 = r.states[0]
    snap = c0.snapshot(5.0)
    assert not snap["available"] and snap["unavailable_reason"] == "key_breaker_open"
    assert not any(c0.key_available(i, 5.0) for i in range(2))
    # serving no one, one request's room is enough for the probe that brings it back
    assert c0.probe_due(5.0)[0]
    # a second model the keys still serve: available, and the probe leaves clients their room
    r = pool(["m", "n"])
    for i in range(4):
        driver(r, "m", fail(500, after=0.0), now=float(i))
    c0 = r.states[0]
    assert c0.snapshot(5.0)["available"] and c0.key_available(0, 5.0)
    assert not c0.probe_due(5.0)[0]
    # the channel's own breaker open for n, the keys' for m: nothing left
    for _ in range(100):
        c0.breaker("n").on_failure(4.0)
    assert c0.snapshot(5.0)["unavailable_reason"] == "key_breaker_open"


def test_one_models_outage_does_not_take_a_one_key_channel_out_for_the_others(driver):
    # The channel's breakers are per model; a lone key has no breaker of its own, which, counting
    # across models, would hold the channel back for every model when one fails.
    r = make([{"name": "x", "models": ["m1", "m2"], "api_keys": ["kx"]},
              {"name": "y", "models": ["m1", "m2"], "api_keys": ["ky"], "priority": 1}],
             retry=NO_RETRY, health={"auto_disable": [], "panic": False})
    for i in range(6):
        driver(r, "m1", by_channel({"x": fail(500, after=0.0), "y": ok(0.0)}), now=float(i))
    x = r.by_name["x"]
    assert x.breaker("m1").state == "open" and x.keys[0].breaker("m1") is None
    res = driver(r, "m2", ok(0.0), now=10.0)
    assert res.ok and res.attempts[0].channel == "x"


def test_panic_mode_keeps_its_same_channel_retries(driver):
    # In panic the channel is out on health grounds by definition: a retry there must not turn into
    # a failover to nothing because of the breaker that panic overrides.
    r = make(chans(1), retry={"max_same_channel": 2, "backoff": {"base": 0.1, "cap": 0.1, "jitter": 0.0}},
             health={"breaker": {"failure_threshold": 1, "open_time": 100}, "auto_disable": []})
    driver(r, "m", fail(500, after=0.0), now=0.0)
    answers = iter([fail(500, after=0.0), ok(0.0)])
    res = driver(r, "m", lambda call, now: next(answers)(call, now), now=5.0)
    assert res.ok and [(a.channel, a.next) for a in res.attempts] == [("c0", "retry"), ("c0", "done")]


def test_a_retry_after_beyond_the_backoff_cap_fails_over_instead_of_waiting(driver):
    r = make(chans(2), strategy="round_robin", retry={"backoff": {"base": 0.1, "cap": 5.0, "jitter": 0.0}})
    log = []
    res = driver(r, "m", by_channel({"c0": fail(503, retry_after=20.0, after=0.0), "c1": ok(0.0)}), log=log)
    assert [(a.channel, a.next) for a in res.attempts] == [("c0", "failover"), ("c1", "done")]
    assert [e[1] for e in log if e[0] == "wait"] == [pytest.approx(0.1)]
    # within the cap it is still honoured on the same channel
    res = driver(r, "m", by_channel({"c0": fail(503, retry_after=3.0, after=0.0), "c1": ok(0.0)}), now=50.0,
                 log=(log := []))
    assert res.attempts[0].next == "retry" and [e[1] for e in log if e[0] == "wait"][0] == pytest.approx(3.0)


def test_a_deadline_too_close_for_this_channels_wait_fails_over_rather_than_give_up(driver):
    r = make(chans(2), strategy="round_robin",
             retry={"deadline": 10.0, "backoff": {"base": 0.1, "cap": 30.0, "jitter": 0.0}})
    res = driver(r, "m", by_channel({"c0": fail(503, retry_after=20.0, after=0.0), "c1": ok(0.0)}))
    assert res.ok and [(a.channel, a.next) for a in res.attempts] == [("c0", "failover"), ("c1", "done")]


def test_a_hedge_is_an_attempt_max_attempts_and_the_budget_count(driver):
    slow_first = by_channel({"c0": ok(10.0), "c1": ok(1.0)})
    capped = make(chans(2), strategy="round_robin", hedge={"enabled": True, "delay": 2.0},
                  retry={"max_attempts": 1})
    log = []
    res = driver(capped, "m", slow_first, log=log)
    assert res.ok and [e[1] for e in log if e[0] in ("call", "launch")] == ["c0"] and len(res.attempts) == 1
    broke = make(chans(2), strategy="round_robin", hedge={"enabled": True, "delay": 2.0},
                 retry={"budget": {"enabled": True, "ratio": 0.0, "min_retries": 0}})
    log = []
    res = driver(broke, "m", slow_first, log=log)
    assert res.ok and [e[1] for e in log if e[0] in ("call", "launch")] == ["c0"]


def test_a_pool_of_rate_limited_keys_tells_the_client_when_the_first_comes_back(driver):
    r = make(chans(1, c0={"api_keys": ["k0", "k1"]}), retry={"max_same_channel": 0})
    res = driver(r, "m", fail(429, retry_after=30.0, after=0.0), now=100.0)
    assert res.error.status == 429 and [a.next for a in res.attempts] == ["next_key", "exhausted"]
    res = driver(r, "m", ok(0.0), now=104.0)
    assert not res.ok and res.attempts == [] and res.error.status == 429
    assert res.error.retry_after == pytest.approx(26.0)  # the keys' cooldown, not a generic second


def test_the_soonest_retry_after_of_several_channels_is_the_clients(driver):
    r = make(chans(2), strategy="round_robin", retry={"max_same_channel": 0})
    res = driver(r, "m", by_channel({"c0": fail(429, retry_after=2.0, after=0.0),
                                     "c1": fail(429, retry_after=60.0, after=0.0)}))
    assert res.error.status == 429 and res.error.retry_after == pytest.approx(2.0, abs=0.2)


def test_bad_credentials_under_another_status_disable_the_key_as_a_401_does(driver):
    # Gemini answers an invalid key with 400 INVALID_ARGUMENT (reason API_KEY_INVALID): kind authentication.
    r = make(chans(1, c0={"api_keys": ["k0", "k1"]}))

    def answer(call, now):
        if call.key == 0:
            return Outcome.failure(now, Error(kind=ErrorKind.AUTHENTICATION, status=400, message="API key not valid"))
        return Outcome(True, now)
    res = driver(r, "m", answer)
    assert res.ok and [a.next for a in res.attempts][-1] == "done"
    assert r.by_name["c0"].keys[0].disabled  # permanently, as the default 401 rule says


def test_a_retry_after_already_waited_out_is_not_the_clients(driver):
    # 503 (Retry-After 1, honoured by a same-channel retry), then 429 (Retry-After 30): the client
    # hears 30, not a time that has passed (0).
    r = make(chans(1), retry={"max_attempts": 4, "max_same_channel": 1})
    answers = [fail(503, retry_after=1.0, after=0.0), fail(429, retry_after=30.0, after=0.0)]
    res = driver(r, "m", lambda call, now: answers.pop(0)(call, now))
    assert res.error.status == 429 and res.error.retry_after == pytest.approx(30.0)


def test_a_key_out_for_its_own_limits_makes_the_pool_wait_short(driver):
    # k0 cools down for 300 s after a 429; k1 is only at its rpm limit, which frees sooner: when its
    # sliding window (estimated from two fixed minutes: the call at 100 s weighs until 180 s) admits one.
    r = make(chans(1, c0={"api_keys": ["k0", {"key": "k1", "limits": {"rpm": 1}}]}), retry={"max_same_channel": 0})
    res = driver(r, "m", lambda call, now: (fail(429, retry_after=300.0, after=0.0) if call.key == 0 else ok(0.0))(
        call, now), now=100.0)
    assert res.ok and [a.next for a in res.attempts] == ["next_key", "done"]
    res = driver(r, "m", ok(0.0), now=101.0)
    assert not res.ok and res.error.status == 429 and res.error.retry_after == pytest.approx(79.0)
    # Told the truth: just before then it is still refused, and then it is served.
    assert not driver(r, "m", ok(0.0), now=101.0 + 78.0).ok
    assert driver(r, "m", ok(0.0), now=101.0 + 79.0).ok


def test_an_exhausted_balance_does_not_switch_a_key_off_for_good(driver):
    # Anthropic's "credit balance is too low" is a 400 of kind permission: the key comes back after a
    # top-up, so it is not disabled like a rejected credential.
    r = make(chans(1, c0={"api_keys": ["k0", "k1"]}))

    def answer(call, now):
        if call.key == 0:
            return Outcome.failure(now, Error(kind=ErrorKind.PERMISSION, status=400,
                                              message="Your credit balance is too low"))
        return Outcome(True, now)
    assert driver(r, "m", answer).ok
    assert not r.by_name["c0"].keys[0].disabled


def test_a_keys_sooner_retry_after_is_kept_when_the_pools_next_key_refuses_longer(driver):
    r = make(chans(1, c0={"api_keys": ["k0", "k1"]}), retry={"max_same_channel": 0})
    res = driver(r, "m", lambda call, now: fail(429, retry_after=5.0 if call.key == 0 else 30.0, after=0.0)(call, now),
                 now=100.0)
    assert [a.next for a in res.attempts] == ["next_key", "exhausted"]
    assert res.error.status == 429 and res.error.retry_after == pytest.approx(5.0, abs=0.5)


@pytest.mark.parametrize("max_attempts", [2, 3])
def test_the_soonest_retry_after_also_when_the_attempt_cap_ends_the_request(driver, max_attempts):
    r = make(chans(2), strategy="round_robin", retry={"max_same_channel": 0, "max_attempts": max_attempts})
    res = driver(r, "m", by_channel({"c0": fail(429, retry_after=5.0, after=0.0),
                                     "c1": fail(429, retry_after=60.0, after=0.0)}))
    assert res.error.status == 429 and res.error.retry_after == pytest.approx(5.0, abs=0.5)


def test_a_hedges_retry_after_counts_and_a_retry_after_the_hedge_keeps_its_channels_model(driver):
    # c0 answers late (429, 30 s); the hedge on c1 fails first (429, 5 s): the client hears ~5 s.
    r = make(chans(2), strategy="round_robin", hedge={"enabled": True, "delay": 2.0}, retry={"max_same_channel": 0})
    res = driver(r, "m", by_channel({"c0": fail(429, retry_after=30.0, after=5.0),
                                     "c1": fail(429, retry_after=5.0, after=0.5)}))
    assert res.error.status == 429 and res.error.retry_after == pytest.approx(2.5, abs=0.6)
    # the hedge's channel fails last and is retried: with its own upstream model, not the first's
    mapped = make(chans(2, c0={"models": ["up-a"], "model_mapping": {"m": "up-a"}},
                        c1={"models": ["up-b"], "model_mapping": {"m": "up-b"}}),
                  strategy="round_robin", hedge={"enabled": True, "delay": 1.0}, retry={"max_same_channel": 1})
    seen = []
    answers = {"c0": fail(500, after=1.5), "c1": fail(500, after=2.0)}

    def answer(call, now):
        seen.append((call.state.name, call.upstream_model))
        return answers[call.state.name](call, now)
    driver(mapped, "m", answer)
    assert len(seen) >= 3 and seen[2][0] == "c1"  # c0, the hedge on c1, then c1 retried
    assert all(m == {"c0": "up-a", "c1": "up-b"}[ch] for ch, m in seen)


def test_panic_never_overrides_a_providers_retry_after(driver):
    # The default rule 429×3 auto-disables for the Retry-After: the channel is then both cooling
    # down and auto-disabled. The wait the provider asked for is what the client hears; panic mode
    # (which overrides health) must not send the request to it inside its Retry-After.
    r = make(chans(1), retry=NO_RETRY)
    calls = []

    def limited(call, now):
        calls.append(now)
        return fail(429, retry_after=2.0, after=0.0)(call, now)

    for t in (0.0, 2.1, 4.2):  # three 429s in a row, each after the last cooldown
        driver(r, "m", limited, now=t)
    assert r.by_name["c0"].unavailable_reason(4.5, "m") == "cooling_down"
    res = driver(r, "m", limited, now=4.5, explain=True)
    assert not res.ok and res.attempts == [] and len(calls) == 3
    assert res.error.status == 429 and res.error.retry_after == pytest.approx(1.7)


def test_panic_waits_for_a_candidate_that_frees_before_the_failing_ones_are_due_back(driver):
    # One channel's breaker is open for 300 s, the other is at its rpm limit: it frees sooner, so
    # the client hears 429 with when it does, not the failing channel's 500.
    r = make(chans(2, c0={"limits": {"rpm": 1}}), strategy="round_robin", retry={"max_same_channel": 0},
             health={"breaker": {"failure_threshold": 1, "open_time": 300}, "auto_disable": []})
    driver(r, "m", by_channel({"c0": ok(0.0), "c1": fail(500, after=0.0)}), now=10.0)
    driver(r, "m", by_channel({"c0": ok(0.0), "c1": fail(500, after=0.0)}), now=10.5)
    assert r.by_name["c1"].breaker("m").state == "open"
    res = driver(r, "m", by_channel({"c0": ok(0.0), "c1": fail(500, after=0.0)}), now=11.0)
    assert not res.ok and res.attempts == [] and res.error.status == 429
    # the call at 10 s weighs in the sliding minute until 120 s (two fixed windows, see limits.py)
    assert res.error.retry_after == pytest.approx(109.0)
    # with the limited channel switched off, only health stands in the way: panic tries the other
    r.by_name["c0"].channel.enabled = False
    res = driver(r, "m", ok(0.0), now=12.0, explain=True)
    assert res.ok and res.decisions[-1]["by"] == "panic"


def test_a_long_wait_elsewhere_does_not_keep_panic_off(driver):
    # A quota spent until tomorrow next to a channel whose breaker half-opens in 30 s: panic tries
    # the failing channel rather than telling the client to come back tomorrow.
    r = make(chans(2, c0={"quota": {"requests": 1, "period": 86400}}), strategy="failover", retry=NO_RETRY,
             health={"breaker": {"failure_threshold": 1, "open_time": 30}, "auto_disable": []})
    assert driver(r, "m", by_channel({"c0": ok(0.0), "c1": ok(0.0)}), now=100.0).attempts[0].channel == "c0"
    driver(r, "m", by_channel({"c1": fail(500, after=0.0)}), now=101.0)
    assert r.by_name["c1"].breaker("m").state == "open"
    res = driver(r, "m", ok(0.0), now=102.0, explain=True)
    assert res.ok and res.attempts[0].channel == "c1" and res.decisions[-1]["by"] == "panic"


def test_panic_overrides_health_but_not_a_quota_or_limit_it_also_meets(driver):
    # Out for its breaker and over its quota: panic must not try it (the quota would be passed).
    r = make([{"name": "c0", "models": ["m"], "quota": {"requests": 2, "period": 86400}}], retry=NO_RETRY,
             health={"breaker": {"failure_threshold": 1, "open_time": 30}, "auto_disable": []})
    driver(r, "m", ok(0.0), now=0.0)
    driver(r, "m", fail(500, after=0.0), now=1.0)
    res = driver(r, "m", ok(0.0), now=2.0, explain=True)
    assert not res.ok and res.attempts == [] and res.error.status == 429
    assert r.by_name["c0"].quota.requests == 2


def test_a_switched_off_channel_does_not_turn_a_wait_into_a_503(driver):
    r = make(chans(2, c1={"enabled": False}), retry=NO_RETRY)
    driver(r, "m", fail(429, retry_after=20.0, after=0.0), now=0.0)
    res = driver(r, "m", ok(0.0), now=1.0)
    assert res.error.status == 429 and res.error.retry_after == pytest.approx(19.0)
    assert "c1: disabled" in res.error.message  # still named


def test_local_limits_say_when_they_free_and_a_request_over_them_is_told_so(driver):
    r = make(chans(1, c0={"limits": {"rpm": 2, "tpm": 500}}), retry=NO_RETRY)
    for t in (0.0, 1.0):
        assert driver(r, "m", ok(0.0), now=t, tokens=10).ok
    res = driver(r, "m", ok(0.0), now=2.0, tokens=10)
    # The sliding minute (two fixed windows, see limits.py) admits one more once the first minute's
    # two calls weigh at most one: half way through the next minute.
    assert res.error.status == 429 and res.error.retry_after == pytest.approx(88.0)
    assert not driver(r, "m", ok(0.0), now=89.9, tokens=10).ok
    assert driver(r, "m", ok(0.0), now=90.0, tokens=10).ok
    # A request larger than the TPM limit: no Retry-After would ever admit it.
    res = driver(r, "m", ok(0.0), now=200.0, tokens=1000)
    assert res.error.status == 429 and res.error.retry_after is None and res.error.code == "request_too_large"
    assert "c0" in res.error.message and "fewer tokens" in res.error.message


def test_a_channel_whose_every_model_breaker_is_open_is_shown_unavailable(driver):
    r = make([{"name": "c0", "models": ["m", "n"]}, {"name": "c1", "models": ["m", "n"]}], strategy="round_robin",
             retry={"max_same_channel": 0}, health={"breaker": {"failure_threshold": 1, "open_time": 60},
                                                    "auto_disable": []})
    c0 = r.by_name["c0"]
    c0.last_pick = -10
    driver(r, "m", by_channel({"c0": fail(500, after=0.0), "c1": ok(0.0)}), now=1.0)
    assert c0.breaker("m").state == "open"
    assert c0.snapshot(2.0)["available"] is True  # it still serves n
    c0.last_pick = -10
    driver(r, "n", by_channel({"c0": fail(500, after=0.0), "c1": ok(0.0)}), now=2.0)
    snap = c0.snapshot(3.0)
    assert snap["available"] is False and snap["unavailable_reason"] == "breaker_open"


def test_a_half_open_probe_answered_429_frees_its_slot(driver):
    # A 429 says nothing about health: the probe's slot is freed (it was held for ever, and the
    # channel never came back).
    r = make(chans(2), strategy="round_robin", retry=NO_RETRY,
             health={"breaker": {"failure_threshold": 1, "open_time": 10}, "auto_disable": []})
    c0 = r.by_name["c0"]
    c0.last_pick = -10
    driver(r, "m", by_channel({"c0": fail(500, after=0.0), "c1": ok(0.0)}), now=0.0)
    assert c0.breaker("m").state == "open"
    c0.last_pick = -10
    res = driver(r, "m", by_channel({"c0": fail(429, retry_after=1.0, after=0.0), "c1": ok(0.0)}), now=11.0)
    assert res.attempts[0].channel == "c0"  # the half-open probe
    assert c0.breaker("m").allows(13.0)  # cooled down, and the breaker takes a probe again
    served = {driver(r, "m", ok(0.0), now=13.0 + i).attempts[0].channel for i in range(4)}
    assert "c0" in served


def test_a_key_pool_waits_for_its_cooling_key_rather_than_panic_to_a_broken_one(driver):
    # k0's breaker is open for 300 s, k1 cools down for 2 s: the client hears 429 with 2 s (with
    # panic on or off), not panic onto k0 nor a 503.
    for panic in (True, False):
        r = make([{"name": "c1", "models": ["m"], "api_keys": ["k0", "k1"]}], retry=NO_RETRY,
                 health={"auto_disable": [], "panic": panic,
                         "key_breaker": {"failure_threshold": 1, "open_time": 300}})
        c1 = r.by_name["c1"]
        c1.keys[0].breaker("m").on_failure(0.0)
        c1.keys[1].disabled_until = 2.0
        c1.refresh(0.0)
        res = driver(r, "m", ok(0.0), now=0.1)
        assert not res.ok and res.attempts == [] and res.error.status == 429
        assert res.error.retry_after == pytest.approx(1.9)
        assert driver(r, "m", ok(0.0), now=2.0).attempts[0].key == "c1#1"


def test_a_health_held_channel_is_due_back_for_panic_when_its_own_wait_ends(driver):
    # At its rpm limit and with its breaker open for 300 s: with panic on, the client may come back
    # when the rpm frees (panic then tries it), not when the breaker half-opens.
    r = make(chans(1, c0={"limits": {"rpm": 1}}), retry=NO_RETRY,
             health={"breaker": {"failure_threshold": 1, "open_time": 300}, "auto_disable": []})
    driver(r, "m", fail(500, after=0.0), now=0.0)
    res = driver(r, "m", ok(0.0), now=1.0)
    assert res.error.status == 429 and res.error.retry_after == pytest.approx(119.0)
    res = driver(r, "m", ok(0.0), now=120.0, explain=True)
    assert res.ok and res.decisions[-1]["by"] == "panic"


def test_panic_keeps_priorities_and_standbys(driver):
    # Every breaker open: panic tries the primary tier first, then the backup, the standby last.
    r = make([{"name": "p", "models": ["m"]}, {"name": "b", "models": ["m"], "priority": 1},
              {"name": "s", "models": ["m"], "weight": 0}], strategy="round_robin", retry=NO_RETRY,
             health={"breaker": {"failure_threshold": 1, "open_time": 100}, "auto_disable": []})
    for name in ("p", "b", "s"):
        st = r.by_name[name]
        st.breaker("m").on_failure(0.0)
        st.refresh(0.0)
    served = [driver(r, "m", ok(0.0), now=1.0 + i).attempts[0].channel for i in range(9)]
    assert set(served) == {"p"}


def test_a_request_over_the_tpm_limit_of_a_failing_channel_is_still_too_large(driver):
    r = make(chans(1, c0={"limits": {"tpm": 500}}), retry=NO_RETRY,
             health={"breaker": {"failure_threshold": 1, "open_time": 60}, "auto_disable": []})
    driver(r, "m", fail(500, after=0.0), now=0.0, tokens=10)
    res = driver(r, "m", ok(0.0), now=1.0, tokens=1000)
    assert res.error.status == 429 and res.error.code == "request_too_large" and res.error.retry_after is None


def test_without_panic_a_failing_channel_due_back_first_is_a_503(driver):
    # Panic off: a quota spent until tomorrow and a breaker that half-opens in 30 s. The first back
    # is a failing channel's probe: 503, not a Retry-After of many hours.
    r = make(chans(2, c0={"quota": {"requests": 1, "period": 86400}}), strategy="failover", retry=NO_RETRY,
             health={"breaker": {"failure_threshold": 1, "open_time": 30}, "auto_disable": [], "panic": False})
    driver(r, "m", ok(0.0), now=100.0)
    driver(r, "m", by_channel({"c1": fail(500, after=0.0)}), now=101.0)
    res = driver(r, "m", ok(0.0), now=102.0)
    assert res.error.status == 503 and res.error.retry_after is None


def test_a_cooldown_that_ends_under_an_open_breaker_does_not_delay_panic(driver):
    # c0 cools down for 5 s but its breaker stays open for 300 s; c1's breaker is open for 100 s.
    # Nothing is back before a health exclusion lifts: panic now (on c1), not a 429 for 5 s.
    r = make(chans(2), strategy="round_robin", retry=NO_RETRY,
             health={"breaker": {"failure_threshold": 1, "open_time": 300}, "auto_disable": []})
    c0, c1 = r.by_name["c0"], r.by_name["c1"]
    c0.breaker("m").on_failure(0.0)
    c0.cooldown_until = 5.0
    c1.breaker("m").on_failure(0.0)
    c1.breaker("m").open_until = 100.0
    for st in (c0, c1):
        st.refresh(0.0)
    res = driver(r, "m", ok(0.0), now=1.0, explain=True)
    assert res.ok and res.attempts[0].channel == "c1" and res.decisions[-1]["by"] == "panic"


def test_each_key_of_a_pool_is_a_path_of_its_own(driver):
    # The channel's breaker lifts at 2 s; k0's breaker holds it to 100 s; k1 only cools down until
    # 20 s: the request is first served at 20 s, by waiting. A client told 5 s got a second 429.
    r = make([{"name": "c", "models": ["m"], "api_keys": ["k0", "k1"]}], retry=NO_RETRY,
             health={"auto_disable": [], "breaker": {"failure_threshold": 1, "open_time": 2},
                     "key_breaker": {"failure_threshold": 1, "open_time": 100}})
    c = r.by_name["c"]
    c.breaker("m").on_failure(0.0)
    c.keys[0].breaker("m").on_failure(0.0)
    c.keys[0].disabled_until = 5.0
    c.keys[1].disabled_until = 20.0
    c.refresh(0.0)
    res = driver(r, "m", ok(0.0), now=0.0)
    assert res.error.status == 429 and res.error.retry_after == pytest.approx(20.0)
    assert driver(r, "m", ok(0.0), now=20.0).ok
    # k0 cools until 36 under a breaker that lifts at 30; k1's breaker holds to 40: back at 36 by
    # waiting, panic on or off (not panic onto k1, not a 503).
    for panic in (True, False):
        r = make([{"name": "c", "models": ["m"], "api_keys": ["k0", "k1"]}], retry=NO_RETRY,
                 health={"auto_disable": [], "panic": panic, "key_breaker": {"failure_threshold": 1, "open_time": 30}})
        c = r.by_name["c"]
        c.keys[0].breaker("m").on_failure(0.0)
        c.keys[0].disabled_until = 36.0
        c.keys[1].breaker("m").on_failure(10.0)
        c.refresh(10.0)
        res = driver(r, "m", ok(0.0), now=12.0)
        assert res.attempts == [] and res.error.status == 429 and res.error.retry_after == pytest.approx(24.0)


def test_only_a_probe_frees_a_probes_slot():
    # Attempts that started before the breaker opened and end while a real probe is in flight
    # neither free the probe's slot (a 429) nor close the breaker (a success).
    from axonsim.execution import Call

    r = make(chans(2), strategy="failover", retry=NO_RETRY,
             health={"breaker": {"failure_threshold": 1, "open_time": 10, "half_open_probes": 1},
                     "auto_disable": []})
    c0 = r.by_name["c0"]
    early = [Call(c0, "m", None, 1, None) for _ in range(2)]
    for call in early:
        call.started(0.0)  # long: still running when the breaker half-opens
    failing = Call(c0, "m", None, 1, None)
    failing.started(1.0)
    failing.failed(1.0, Outcome.failure(1.0, Error(kind=ErrorKind.SERVER_ERROR, status=500, message="x")))
    assert c0.breaker("m").state == "open"
    probe = Call(c0, "m", None, 1, None)
    probe.started(11.5)
    assert probe.probes and not early[0].probes and not c0.breaker("m").allows(12.0)
    early[0].failed(15.0, Outcome.failure(15.0, Error(kind=ErrorKind.RATE_LIMITED, status=429, message="x")))
    assert not c0.breaker("m").allows(16.0)  # the probe still holds the one slot
    early[1].succeeded(16.0)
    assert c0.breaker("m").state == "half_open"  # only the probe's success closes it
    probe.succeeded(17.0)
    assert c0.breaker("m").state == "closed"
