"""The strategy catalog: AxonHub's scorers and mixes, LiteLLM's, Envoy's and Finagle's strategies —
each formula against hand-computed values, proportions, recovery after an outage, weight-0 standby,
and never a pick outside the candidates, for every name the YAML accepts."""

from __future__ import annotations

import math
import random
from collections import Counter

import pytest

from axonsim.balancer import Balancer
from axonsim.candidates import Candidate
from axonsim.config import STRATEGIES, Routing, parse_config
from axonsim.execution import Outcome, Router
from axonsim.strategies import STRATEGY_NAMES, Composite, PickContext, make_strategy
from axonsim.strategies_axonhub import (
    EXHAUSTED,
    Adaptive,
    CircuitBreaker,
    Failover,
    LatencyAware,
    RoundRobinMix,
    breaker_weight,
    error_aware_score,
    latency_aware_score,
    rate_limit_aware_score,
    round_robin_score,
    weight_round_robin_score,
    weight_score,
)
from axonsim.strategies_peers import (
    CostBased,
    LatencyBased,
    LeastBusy,
    LeastRequest,
    PeakEwma,
    SimpleShuffle,
    UsageBased,
    peak_cost,
)
from axonsim.unified import Error, ErrorKind

STREAM = PickContext("m", stream=True)
PLAIN = PickContext("m", stream=False)


def config(weights, strategy="adaptive", channel=None, routing=None):
    chans = []
    for i, w in enumerate(weights):
        ch = {"name": f"c{i}", "models": ["m"], "weight": w}
        ch.update((channel or {}).get(i, {}))
        chans.append(ch)
    return parse_config({"channels": chans, "routing": {"strategy": strategy, **(routing or {})}})


def states(weights, strategy="adaptive", channel=None, routing=None):
    return Router(config(weights, strategy, channel, routing)).states


def cands_of(sts):
    return [Candidate(s, "m") for s in sts]


def fail(now, status=500, kind=ErrorKind.SERVER_ERROR):
    return Outcome(False, now, status, kind)


# -- AxonHub's scorers: hand-computed values ---------------------------------------------------------


def test_error_aware_is_the_time_decayed_form():
    s = states([100])[0]
    assert error_aware_score(s, 50.0) == 200.0  # never failed
    s.last_failure, s.consecutive_failures = 100.0, 2
    # d = 1 - 60/300 = 0.8; 200 - 30·2·0.8 - 40·0.8 = 200 - 48 - 32
    assert error_aware_score(s, 160.0) == pytest.approx(120.0)
    assert error_aware_score(s, 400.0) == 200.0  # one window later: fully recovered, never tried again
    s.consecutive_failures = 10
    assert error_aware_score(s, 100.0) == 0.0  # 200 - 300 - 40 clamps at 0
    assert error_aware_score(s, 100.0 + 150.0, window=300.0) == pytest.approx(200 - 150 - 20)


def test_weight_score_is_weight_over_100_times_100():
    sts = states([80, 0, 150])
    assert [weight_score(s) for s in sts] == [80.0, 0.0, 150.0]  # AxonHub does not cap at 100 either


def test_round_robin_decays_counts_by_inactivity_and_caps_them():
    s = states([100])[0]
    assert round_robin_score(s, 0.0) == 150.0  # never selected
    s.selections, s.selections_at = 150.0, 1000.0
    s.last_success = 700.0  # 300 s inactive: x = 150·e^-1 = 55.18
    assert round_robin_score(s, 1000.0) == pytest.approx(150 * math.exp(-150 * math.exp(-1) / 150))
    assert round_robin_score(s, 1000.0) == pytest.approx(103.84, abs=0.01)
    # no finished attempt yet: no inactivity decay (AxonHub: lastActivity nil → multiplier 1)
    s.last_success = float("-inf")
    assert round_robin_score(s, 1000.0) == pytest.approx(150 * math.exp(-1.0))
    # the selection count itself fades over AxonHub's 600-s window: 150·e^-1 after 600 s
    assert round_robin_score(s, 1600.0) == pytest.approx(150 * math.exp(-math.exp(-1.0)))
    s.selections = 5000.0  # capped at 1000: 150·e^(-1000/150) = 0.19 → floor 10
    assert round_robin_score(s, 1000.0) == 10.0


def test_weight_round_robin_normalises_the_count_by_weight():
    a, b, z = states([20, 80, 0])
    for s in (a, b, z):
        s.selections_at = s.last_success = 0.0
    a.selections, b.selections = 30.0, 120.0  # both at their share: x' = 30/0.2 = 120/0.8 = 150
    assert weight_round_robin_score(a, 0.0) == pytest.approx(150 * math.exp(-1.0))
    assert weight_round_robin_score(b, 0.0) == pytest.approx(weight_round_robin_score(a, 0.0))
    z.selections = 2.0  # weight 0 counts as 0.01: 2 selections already weigh 200
    assert weight_round_robin_score(z, 0.0) == pytest.approx(150 * math.exp(-200 / 150))


def test_latency_aware_streams_use_ttft_and_throughput_others_latency():
    s = states([100])[0]
    assert latency_aware_score(s, True) == 40.0 and latency_aware_score(s, False) == 40.0  # no samples
    s.ewma_ttft = 0.6  # ft = 1 - 0.6/3 = 0.8; tokens/s unknown: tp = 0.5
    assert latency_aware_score(s, True) == pytest.approx(80 * (0.7 * 0.8 + 0.3 * 0.5))
    s.ewma_tps = 52.5  # tp = (52.5 - 5)/95 = 0.5
    assert latency_aware_score(s, True) == pytest.approx(56.8)
    s.ewma_tps = 500.0  # tp clamps at 1
    assert latency_aware_score(s, True) == pytest.approx(68.8)
    assert latency_aware_score(s, False) == 40.0  # non-stream: no latency sample yet
    s.ewma_latency = 1.5
    assert latency_aware_score(s, False) == pytest.approx(40.0)
    s.ewma_latency = 4.0
    assert latency_aware_score(s, False) == 0.0
    assert LatencyAware().scores([s], 0.0, STREAM) == [pytest.approx(68.8 / 80)]


def test_rate_limit_aware_is_100_times_one_minus_max_utilisation():
    free, lim = states([100, 100], channel={1: {"limits": {"rpm": 10, "tpm": 1000, "max_concurrency": 8}}})
    assert rate_limit_aware_score(free, 0.0) == 100.0
    for _ in range(4):
        lim.started(1.0, tokens=100)
    # rpm 4/10, tpm 400/1000, concurrency 4/8 → u = 0.5
    assert rate_limit_aware_score(lim, 1.0) == pytest.approx(50.0)
    lim.succeeded(2.0, 1.0)
    lim.succeeded(2.0, 1.0)
    assert rate_limit_aware_score(lim, 2.0) == pytest.approx(60.0)  # concurrency 2/8; rpm/tpm 0.4
    # AxonHub's hard exhaustion is kept for direct use; through the balancer a cooling channel is
    # never scored (it is not eligible).
    free.cooldown_until = 10.0
    assert rate_limit_aware_score(free, 5.0) == EXHAUSTED
    assert Balancer(Adaptive()).explain(cands_of([free, lim]), 5.0)[0]["unavailable"] == "cooling_down"


def test_circuit_breaker_effective_weight_follows_the_model_breaker():
    sts = states([100, 100], channel={1: {"models": ["m"], "model_mapping": {"alias": "m"}}})
    s = sts[0]
    assert breaker_weight(s, "m", 0.0) == 1.0
    assert CircuitBreaker().scores([s], 0.0, PLAIN) == [100 + 200 + 1 + 100]
    assert CircuitBreaker().scores([s], 0.0) == [100 + 100 + 100]  # no model named: neutral 100
    for t in range(3):
        s.started(float(t), model="m")
        s.failed(float(t), fail(float(t)), model="m")
    assert breaker_weight(s, "m", 3.0) == 0.3  # AxonHub's half_open at 3 consecutive failures
    for t in range(3, 5):
        s.started(float(t), model="m")
        s.failed(float(t), fail(float(t)), model="m")
    assert breaker_weight(s, "m", 5.0) == 0.0  # open (30 s by default)
    assert breaker_weight(s, "m", 4.0 + 30.0) == 0.01  # probing: AxonHub's "open, probe due"
    assert breaker_weight(s, "other", 5.0) == 1.0  # per model
    # a requested alias finds the breaker of the upstream model it maps to
    alias = sts[1]
    for t in range(3):
        alias.started(float(t), model="m")
        alias.failed(float(t), fail(float(t)), model="m")
    assert breaker_weight(alias, "alias", 3.0) == 0.3


def test_round_robin_health_moves_three_consecutive_failures_behind():
    sts = states([100, 100, 100], strategy="round-robin")
    rr = RoundRobinMix()
    sts[0].last_failure, sts[0].consecutive_failures = 0.0, 3
    rows = rr.terms(sts, 10.0, None, PLAIN)
    assert rows[0]["round_robin_health"] == EXHAUSTED and rows[1]["round_robin_health"] == 0.0
    assert rr.terms(sts, 301.0, None, PLAIN)[0]["round_robin_health"] == 0.0  # 5 minutes later


def test_mix_scores_are_the_sum_of_their_terms_and_explain_shows_them():
    sts = states([80, 20])
    sts[1].last_failure, sts[1].consecutive_failures = 0.0, 1
    sts[1].ewma_latency = 1.5
    mix = Adaptive()
    rows = Balancer(mix).explain(cands_of(sts), 60.0, ctx=PLAIN)
    t = rows[1]["terms"]
    assert set(t) == {"error_aware", "weight_round_robin", "latency_aware", "rate_limit_aware"}
    # d = 0.8: 200 - 30·0.8 - 40·0.8 = 144
    assert t == {"error_aware": pytest.approx(144.0), "weight_round_robin": 150.0, "latency_aware": 40.0,
                 "rate_limit_aware": 100.0}
    assert rows[1]["score"] == pytest.approx(sum(t.values()))
    assert rows[0]["score"] == pytest.approx(200 + 150 + 40 + 100)
    # failover's random term is drawn only when picking: the trace leaves it out
    assert set(Failover().terms(sts, 0.0, None)[0]) == {"weight", "rate_limit_aware"}
    assert set(Failover().terms(sts, 0.0, random.Random(1))[0]) == {"weight", "random", "rate_limit_aware"}


# -- AxonHub's mixes: picks ---------------------------------------------------------------------------


def feed_success(state, now, latency=0.5):
    state.started(now)
    state.succeeded(now, latency)


def run_picks(strategy, sts, n, dt, seed=0, warmup=0, on_pick=feed_success, ctx=PLAIN):
    bal = Balancer(strategy)
    cands = cands_of(sts)
    rng = random.Random(seed)
    counts: Counter[str] = Counter()
    now = 0.0
    for k in range(warmup + n):
        c = bal.pick(cands, now, rng, ctx=ctx)
        on_pick(c.state, now)
        if k >= warmup:
            counts[c.state.name] += 1
        now += dt
    return counts


def test_adaptive_shares_are_roughly_proportional_to_weight():
    # AxonHub documents 80/50/20/10 → ≈ 50/31/12.5/6.25 %. Equal health and latency, one pick every
    # 2 s (300 selections in the 600-s window), 10k picks after a warm-up. Measured deviations are
    # ≤ 0.6 points (the lightest channel gets a little more: its count decays between its picks).
    counts = run_picks(Adaptive(), states([80, 50, 20, 10]), 10_000, dt=2.0, warmup=1000)
    share = {k: v / 10_000 for k, v in counts.items()}
    for name, want in zip(("c0", "c1", "c2", "c3"), (0.5, 0.3125, 0.125, 0.0625), strict=True):
        assert share[name] == pytest.approx(want, abs=0.015)


def test_adaptive_weight_round_robin_floor_flattens_shares_at_high_rates():
    # A property of AxonHub's capped, floored formula, kept faithfully: once every channel's weighted
    # count passes 150·ln 15 ≈ 406 all scores sit on the floor of 10, ties go to the heaviest weight,
    # and the shares collapse. At 10 picks/s (6000 in the window) the weight-80 channel takes ≥ 90 %.
    # (AxonHub's newest code replaced the formula with 150/(1 + x/150) for this reason.)
    counts = run_picks(Adaptive(), states([80, 50, 20, 10]), 5000, dt=0.1, warmup=1000)
    assert counts["c0"] / 5000 > 0.9


def test_failover_is_a_strict_weight_order_with_random_ties():
    counts = run_picks(Failover(), states([50, 100, 80]), 300, dt=1.0)
    assert counts == {"c1": 300}
    counts = run_picks(Failover(), states([100, 100, 10]), 2000, dt=1.0)
    assert counts["c2"] == 0 and abs(counts["c0"] / 2000 - 0.5) < 0.05


def test_circuit_breaker_mix_puts_a_degraded_model_behind_a_healthy_lighter_channel():
    heavy, light = states([100, 50])
    for t in range(3):
        heavy.started(float(t), model="m")
        heavy.failed(float(t), fail(float(t)), model="m")
    # heavy: 100 + (0.3·200 + 1 + U) + 100 ≤ 262; light: 50 + (200 + 0.5 + U) + 100 ≥ 350.5
    counts = run_picks(CircuitBreaker(), [heavy, light], 100, dt=0.0,
                       on_pick=lambda s, now: None)
    assert counts == {"c1": 100}
    # healthy again (one success closes it): weight order comes back
    heavy.started(5.0, model="m")
    heavy.succeeded(5.0, 0.5, model="m")
    counts = run_picks(CircuitBreaker(), [heavy, light], 100, dt=0.0, on_pick=lambda s, now: None)
    assert counts == {"c0": 100}


def test_round_robin_mix_rotates_in_input_order_and_skips_failing_channels():
    sts = states([10, 100, 50], strategy="round-robin")
    bal = Balancer(RoundRobinMix())
    rng = random.Random(0)
    cands = cands_of(sts)
    picks = []
    for k in range(6):
        c = bal.pick(cands, float(k), rng)
        feed_success(c.state, float(k))
        picks.append(c.state.name)
    assert picks[:3] == ["c0", "c1", "c2"]  # ties keep input order, whatever the weights
    assert Counter(picks) == {"c0": 2, "c1": 2, "c2": 2}
    sts[1].last_failure, sts[1].consecutive_failures = 10.0, 3
    later = [bal.pick(cands, 11.0, rng).state.name for _ in range(10)]
    assert "c1" not in later


def _outage(state, now, end):
    if state.name == "c0" and now < end:
        state.started(now)
        state.failed(now, fail(now))
        return False
    feed_success(state, now)
    return True


def test_adaptive_recovers_every_share_after_an_outage_strategy_level():
    # c0 fails every attempt until t=600 (a failed pick fails over to another channel, as execution
    # does), then works again. Picks every 2 s; shares counted over successes in 150-s windows.
    end, dt, horizon = 600.0, 2.0, 2400.0
    sts = states([100, 100, 100])
    bal = Balancer(Adaptive())
    cands = cands_of(sts)
    rng = random.Random(0)
    wins: Counter[tuple[int, str]] = Counter()
    failures = 0
    now = 0.0
    while now < horizon:
        c = bal.pick(cands, now, rng)
        if not _outage(c.state, now, end):
            failures += 1
            c = bal.pick([x for x in cands if x is not c], now, rng)
            feed_success(c.state, now)
        wins[int(now // 150), c.state.name] += 1
        now += dt
    assert failures < 40  # the failing channel is only probed now and then (300 requests in the outage)
    _assert_recovered(wins, end, horizon, bound=2 * 300.0)


def _assert_recovered(wins, end, horizon, bound, width=150.0):
    """Every 150-s window that starts `bound` seconds after the outage or later gives each channel
    1/3 ± 0.06 of the successes; and c0 serves again within one error window."""
    first = int((end + bound) // width)
    for w in range(first, int(horizon // width)):
        total = sum(wins[w, n] for n in ("c0", "c1", "c2"))
        for n in ("c0", "c1", "c2"):
            assert wins[w, n] / total == pytest.approx(1 / 3, abs=0.06), (w * width, n)
    assert sum(wins[w, "c0"] for w in range(int(end // width), int((end + 300) // width))) > 0


def test_adaptive_recovers_every_share_after_an_outage_through_the_router(driver):
    # The same outage through execution: retries, failover, the per-model breaker (opens after 5
    # failures, probes with doubling open times) and the strategy together, on the virtual clock.
    end, dt, horizon = 600.0, 2.0, 2400.0
    router = Router(config([100, 100, 100]))
    wins: Counter[tuple[int, str]] = Counter()
    c0_attempts = 0

    def answer(call, now):
        nonlocal c0_attempts
        if call.state.name == "c0" and now < end:
            c0_attempts += 1
            return Outcome.failure(now + 0.2, Error(kind=ErrorKind.SERVER_ERROR, status=500, message="down"))
        return Outcome(True, now + 0.5)

    now = 0.0
    while now < horizon:
        r = driver(router, "m", answer, now=now, seed=int(now))
        assert r.ok
        wins[int(now // 150), r.attempts[-1].channel] += 1
        now += dt
    assert c0_attempts < 40
    # AxonHub's catch-up: the recovered channel first takes most traffic until its 600-s count
    # matches the others' (~95 % for a few minutes here), then the shares settle.
    _assert_recovered(wins, end, horizon, bound=2 * 300.0)


# -- weight 0: a cold standby for every strategy --------------------------------------------------------

# The four original strategies score every candidate they are handed; they rely on execution's tiers
# (weight-0 standbys form their own, last tier) and are checked only through the Router below.
RELY_ON_TIERS = {"round_robin", "least_inflight", "error_aware", "composite"}


def _tempting_standby(name):
    """c0 has weight 0 and is the most attractive by every other signal."""
    sts = states([0, 10, 50], strategy=name,
                 channel={0: {"price": {"input": 0.1, "output": 0.1}},
                          1: {"price": {"input": 5, "output": 15}},
                          2: {"price": {"input": 3, "output": 15}}})
    for s in sts[1:]:
        s.inflight = 3
        s.ewma_latency = s.ewma_ttft = 2.0
        s.peak_ewma, s.peak_at = 2.0, 0.0
        s.selections, s.selections_at = 50.0, 0.0
        s.last_failure, s.consecutive_failures = 0.0, 2
    sts[0].ewma_latency = sts[0].ewma_ttft = 0.1
    sts[0].peak_ewma = 0.1
    return sts


@pytest.mark.parametrize("name", [n for n in STRATEGIES if n not in RELY_ON_TIERS])
def test_weight_zero_gets_nothing_while_others_are_offered_strategy_level(name):
    sts = _tempting_standby(name)
    routing = Routing(strategy=name)
    bal = Balancer(make_strategy(routing))
    rng = random.Random(4)
    cands = cands_of(sts)
    for k in range(300):
        ctx = STREAM if k % 2 else PLAIN
        assert bal.pick(cands, 10.0 + k, rng, ctx=ctx).state.name != "c0"
    # alone (or with other standbys only), a weight-0 channel is picked
    assert bal.pick(cands[:1], 400.0, rng).state.name == "c0"


@pytest.mark.parametrize("name", STRATEGIES)
def test_weight_zero_gets_nothing_while_others_are_healthy_through_the_router(name, driver):
    router = Router(config([0, 10, 50], strategy=name,
                           channel={0: {"price": {"input": 0.1, "output": 0.1}}}))
    called: Counter[str] = Counter()

    def answer(call, now):
        called[call.state.name] += 1
        return Outcome(True, now + 0.3)

    for k in range(200):
        assert driver(router, "m", answer, now=float(k), seed=k, stream=bool(k % 2)).ok
    assert called["c0"] == 0 and called["c1"] + called["c2"] == 200
    # when nothing else may take an attempt, the standby serves
    for s in router.states[1:]:
        s.cooldown_until = 1000.0
    assert driver(router, "m", answer, now=300.0).attempts[-1].channel == "c0"


# -- LiteLLM ----------------------------------------------------------------------------------------------


def test_simple_shuffle_is_weighted_random_and_uniform_when_all_zero():
    counts = run_picks(SimpleShuffle(), states([80, 50, 20, 10]), 10_000, dt=1.0, seed=3)
    for name, want in zip(("c0", "c1", "c2", "c3"), (0.5, 0.3125, 0.125, 0.0625), strict=True):
        assert counts[name] / 10_000 == pytest.approx(want, abs=0.02)  # sd ≤ 0.005
    counts = run_picks(SimpleShuffle(), states([0, 0, 0]), 3000, dt=1.0, seed=3)
    assert all(abs(v / 3000 - 1 / 3) < 0.04 for v in counts.values()) and len(counts) == 3


def test_least_busy_takes_the_fewest_in_flight_with_random_ties():
    sts = states([100] * 4)
    for s, f in zip(sts, (3, 1, 1, 2), strict=True):
        s.inflight = f
    counts = run_picks(LeastBusy(), sts, 2000, dt=0.0, on_pick=lambda s, now: None)
    assert set(counts) == {"c1", "c2"} and abs(counts["c1"] / 2000 - 0.5) < 0.05


def test_usage_based_takes_the_least_used_channel_that_admits_the_request():
    sts = states([100] * 4, strategy="usage-based", channel={0: {"limits": {"rpm": 2}}})
    for s, toks in zip(sts, (10, 500, 200, 200), strict=True):
        s.started(1.0, tokens=toks)
        s.succeeded(1.0, 0.5)
    sts[0].started(1.0, tokens=0)  # c0: 2 requests in the minute, rpm 2 → the next one does not fit
    sts[0].succeeded(1.0, 0.5)
    strat = UsageBased()
    assert strat.scores(sts, 2.0) == [-10.0, -500.0, -200.0, -200.0]
    rng = random.Random(0)
    counts = Counter(sts[strat.pick(sts, 2.0, rng, PickContext("m", tokens=50))].name for _ in range(1000))
    assert set(counts) == {"c2", "c3"} and abs(counts["c2"] / 1000 - 0.5) < 0.06
    # a request too big for c2's and c3's remaining tpm leaves c1
    tight = states([100, 100], channel={0: {"limits": {"tpm": 300}}, 1: {"limits": {"tpm": 1000}}})
    tight[0].started(1.0, tokens=200)
    tight[1].started(1.0, tokens=400)
    assert tight[strat.pick(tight, 2.0, rng, PickContext("m", tokens=150))].name == "c1"


def test_latency_based_buffer_spreads_over_the_near_fastest():
    sts = states([100] * 3)
    for s, lat in zip(sts, (1.0, 1.4, 2.0), strict=True):
        s.ewma_latency = lat
    assert run_picks(LatencyBased(0.0), sts, 200, dt=0.0, on_pick=lambda s, now: None) == {"c0": 200}
    counts = run_picks(LatencyBased(0.5), sts, 4000, dt=0.0, on_pick=lambda s, now: None)
    assert counts["c2"] == 0 and abs(counts["c0"] / 4000 - 0.5) < 0.04  # 1.4 ≤ 1.5·1.0 < 2.0
    # streams read TTFT; a channel without samples counts as the fastest, so it is explored
    sts[2].ewma_ttft = 0.2
    sts[0].ewma_ttft = sts[1].ewma_ttft = 0.9
    assert LatencyBased(0.0).pick(sts, 0.0, random.Random(0), STREAM) == 2
    fresh = states([100])[0]
    assert LatencyBased(0.0).pick([*sts, fresh], 0.0, random.Random(0), PLAIN) == 3


def test_cost_based_orders_cheapest_first_unpriced_last_ties_by_least_busy():
    sts = states([100] * 4, channel={0: {"price": {"input": 3, "output": 15}},
                                    1: {"price": {"input": 0.5, "output": 1.5}},
                                    3: {"price": {"input": 1.0, "output": 1.0}}})
    sts[1].inflight, sts[3].inflight = 3, 0
    strat = CostBased()
    assert strat.scores(sts, 0.0) == [pytest.approx(1 / 19), pytest.approx(1 / 3), 0.0, pytest.approx(1 / 3)]
    rng = random.Random(0)
    remaining = list(sts)
    order = []
    while remaining:  # what execution does on failover: pick, remove, pick again
        c = remaining.pop(strat.pick(remaining, 0.0, rng))
        order.append(c.name)
    assert order == ["c3", "c1", "c0", "c2"]


def test_cost_based_reads_the_top_level_price_table_through_the_router(driver):
    cfg = parse_config({"channels": [{"name": "dear", "models": ["m"]}, {"name": "cheap", "models": ["m2"],
                                                                          "model_mapping": {"m": "m2"}}],
                        "prices": {"m": {"input": 3, "output": 15}, "m2": {"input": 0.2, "output": 0.6}},
                        "routing": {"strategy": "cost-based"}})
    router = Router(cfg)
    seen = [driver(router, "m", lambda call, now: Outcome(True, now + 0.1), now=float(k)).attempts[0].channel
            for k in range(5)]
    assert seen == ["cheap"] * 5


# -- Envoy least_request and Finagle peak-EWMA -------------------------------------------------------------


def test_least_request_equal_weights_is_power_of_choices_on_active_requests():
    sts = states([100] * 4)
    for s, f in zip(sts, (9, 0, 5, 7), strict=True):
        s.inflight = f
    counts = run_picks(LeastRequest(2, 1.0), sts, 6000, dt=0.0, seed=1, on_pick=lambda s, now: None)
    assert counts["c0"] == 0  # the busiest only wins against itself, and draws are distinct
    assert abs(counts["c1"] / 6000 - 0.5) < 0.03  # c1 wins the 3 of 6 pairs it is in
    # choice_count ≥ n is a full scan
    assert run_picks(LeastRequest(4, 1.0), sts, 100, dt=0.0, on_pick=lambda s, now: None) == {"c1": 100}


@pytest.mark.parametrize(("bias", "want_c0"), [(0.0, 2 / 3), (1.0, 1 / 3), (2.0, 1 / 9)])
def test_least_request_unequal_weights_schedule_by_weight_over_active_to_the_bias(bias, want_c0):
    # weights 2:1 with 3 vs 0 active requests: w' = 2/4^bias vs 1 → shares 2:1 (bias 0), 1:2, 1:8
    sts = states([2, 1])
    sts[0].inflight = 3
    strat = LeastRequest(2, bias)
    assert strat.scores(sts, 0.0) == [pytest.approx(2 / 4**bias), 1.0]
    counts = run_picks(strat, sts, 900, dt=0.0, on_pick=lambda s, now: None)
    assert counts["c0"] == pytest.approx(900 * want_c0, abs=2)  # EDF is deterministic


def test_least_request_edf_tracks_load_that_changes():
    # weights 3:1, every pick starts a request that ends 10 picks later: the dynamic weights
    # keep the heavier channel's share at or below its 75 % static share, and both serve.
    sts = states([3, 1])
    strat = LeastRequest(2, 1.0)
    rng = random.Random(0)
    running: list[tuple[int, object]] = []
    counts: Counter[str] = Counter()
    for k in range(4000):
        i = strat.pick(sts, float(k), rng)
        sts[i].started(float(k))
        running.append((k + 10, sts[i]))
        counts[sts[i].name] += 1
        while running and running[0][0] <= k:
            _, s = running.pop(0)
            s.succeeded(float(k), 10.0)
    assert 0.55 < counts["c0"] / 4000 <= 0.76


def test_peak_ewma_cost_is_the_decayed_peak_times_inflight_plus_one():
    s = states([100])[0]
    assert peak_cost(s, 0.0, 10.0, 0.5) == 0.5  # the prior
    s.inflight = 2
    s.peak_ewma, s.peak_at = 3.0, 100.0
    assert peak_cost(s, 100.0, 10.0, 0.5) == pytest.approx(9.0)
    assert peak_cost(s, 110.0, 10.0, 0.5) == pytest.approx(9.0 * math.exp(-1))
    assert PeakEwma(10.0, 0.5).scores([s], 110.0) == [pytest.approx(-9.0 * math.exp(-1))]


def _slowdown(drive, strategy_routing, slow_from=50.0, horizon=400.0):
    router = Router(config([100, 100], strategy="peak_ewma", routing=strategy_routing))
    served: Counter[tuple[bool, str]] = Counter()

    def answer(call, now):
        slow = call.state.name == "c1" and now >= slow_from
        return Outcome(True, now + (3.0 if slow else 0.2))

    now = 0.0
    while now < horizon:
        r = drive(router, "m", answer, now=now, seed=int(now))
        served[now >= slow_from + 10, r.attempts[-1].channel] += 1
        now = max(r.end, now + 1.0)
    return served


def test_peak_ewma_moves_off_a_slow_channel_and_reprobes_it(driver):
    served = _slowdown(driver, {})
    before = served[False, "c0"] + served[False, "c1"]
    assert served[False, "c1"] / before > 0.2  # both served while equal
    after = served[True, "c0"] + served[True, "c1"]
    # the 3-s peak decays with τ = 10 s below c0's 0.2 s after ≈ 27 s: about one probe per 30 s
    assert 0 < served[True, "c1"] / after < 0.1


def test_peak_ewma_honours_ewma_decay(driver):
    served = _slowdown(driver, {"options": {"ewma_decay": 1000.0}})
    assert served[True, "c1"] == 0  # 3·e^(-340/1000) never falls below 0.2: no re-probe


# -- our latency_aware and the composite's new terms --------------------------------------------------------


def test_composite_new_terms_are_normalised_and_documented():
    sts = states([100] * 3, channel={0: {"price": {"input": 1, "output": 3}, "limits": {"rpm": 10}},
                                    1: {"price": {"input": 4, "output": 4}}})
    sts[0].ewma_latency = 1.5
    sts[0].started(0.0)  # rpm 1/10 used: headroom after this request = 1 - 2/10
    comp = Composite({"latency_aware": 1.0, "rate_limit_aware": 1.0, "cost": 1.0}, 300.0)
    rows = comp.terms(sts, 1.0, None, PLAIN)
    assert rows[0] == {"latency_aware": 0.5, "rate_limit_aware": pytest.approx(0.8), "cost": 1.0}
    # cost: 1 - (8 - 4)/8 = 0.5; unpriced channels 0; no limits → headroom 1; no latency sample → 0.5
    assert rows[1] == {"latency_aware": 0.5, "rate_limit_aware": 1.0, "cost": 0.5}
    assert rows[2] == {"latency_aware": 0.5, "rate_limit_aware": 1.0, "cost": 0.0}
    assert comp.scores(sts, 1.0, PLAIN) == [pytest.approx(2.3), pytest.approx(2.0), pytest.approx(1.5)]
    assert comp.pick(sts, 1.0, random.Random(0), PLAIN) == 0
    assert comp.general and not Composite({"error_aware": 1.0, "weighted": 1.0}, 300.0).general


def test_composite_general_path_picks_its_best_score():
    rng = random.Random(9)
    comp = Composite({"error_aware": 0.3, "least_inflight": 0.3, "latency_aware": 0.2, "cost": 0.2}, 300.0)
    for _ in range(300):
        sts = states([100] * rng.randint(2, 5))
        for s in sts:
            s.inflight = rng.randint(0, 9)
            s.ewma_latency = rng.choice([None, rng.uniform(0.1, 4.0)])
            s.price = rng.choice([None, parse_config({"channels": [{"name": "x", "models": ["m"], "price": {
                "input": rng.uniform(0, 5), "output": rng.uniform(0, 20)}}]}).channels[0].price])
        scores = comp.scores(sts, 10.0, PLAIN)
        assert scores[comp.pick(sts, 10.0, rng, PLAIN)] == pytest.approx(max(scores))


def test_latency_aware_strategy_prefers_the_faster_channel():
    sts = states([100, 100])
    sts[0].ewma_latency, sts[1].ewma_latency = 2.0, 0.5
    assert run_picks(LatencyAware(), sts, 20, dt=0.0, on_pick=lambda s, now: None) == {"c1": 20}


# -- the whole catalog ----------------------------------------------------------------------------------------


def test_every_yaml_strategy_name_builds_with_its_own_name():
    assert set(STRATEGY_NAMES) == set(STRATEGIES)
    for name in STRATEGIES:
        strat = make_strategy(Routing(strategy=name))
        assert strat.name == name


@pytest.mark.parametrize("name", STRATEGIES)
def test_never_picks_outside_the_candidates_with_every_signal_set(name):
    # A seeded sweep that sets what the new strategies read (latencies, peaks, prices, limits,
    # selections, breakers), on top of the hypothesis property in test_strategies.py.
    rng = random.Random(STRATEGIES.index(name))
    routing = Routing(strategy=name, options={"latency_buffer": 0.3, "choice_count": 3})
    for _ in range(60):
        n = rng.randint(1, 6)
        sts = states([rng.choice([0, 1, 10, 100]) for _ in range(n)], strategy=name,
                     channel={i: {"limits": {"rpm": 5}} for i in range(n) if rng.random() < 0.3})
        for s in sts:
            s.inflight = rng.randint(0, 5)
            s.ewma_latency = rng.choice([None, rng.uniform(0.05, 5)])
            s.ewma_ttft = rng.choice([None, rng.uniform(0.05, 5)])
            s.ewma_tps = rng.choice([None, rng.uniform(0, 200)])
            s.peak_ewma, s.peak_at = rng.choice([None, rng.uniform(0.05, 5)]), rng.uniform(0, 20)
            s.selections, s.selections_at = rng.uniform(0, 2000), rng.uniform(0, 20)
            s.last_failure, s.consecutive_failures = rng.choice([(float("-inf"), 0), (rng.uniform(0, 20), 4)])
            s.last_success = rng.choice([float("-inf"), rng.uniform(0, 20)])
            for _ in range(rng.randint(0, 6)):
                s.limiter.on_start(rng.uniform(0, 20), 10)
        subset = rng.sample(range(n), rng.randint(1, n))
        cands = [Candidate(sts[i], "m") for i in subset]
        names = {c.state.name for c in cands}
        bal = Balancer(make_strategy(routing))
        for k in range(10):
            now = 20.0 + k
            ctx = PickContext("m", stream=bool(k % 2), tokens=rng.randint(0, 50))
            chosen = bal.pick(cands, now, rng, ctx=ctx)
            eligible = {c.state.name for c in bal.eligible(cands, now, ctx.tokens)}
            if chosen is None:
                assert not eligible
            else:
                assert chosen.state.name in names and chosen.state.name in eligible
            rows = bal.explain(cands, now, ctx=ctx)
            assert all("score" in r or "unavailable" in r for r in rows)


def test_the_strategy_docs_cover_every_name_and_their_yaml_loads():
    from pathlib import Path

    import yaml

    from server.proxy import check_servable

    text = (Path(__file__).resolve().parent.parent / "docs" / "strategies.md").read_text()
    for name in STRATEGIES:
        assert f"`{name}`" in text, name
    blocks = text.split("```yaml\n")[1:]
    assert blocks
    for block in blocks:
        cfg = parse_config(yaml.safe_load(block.split("```")[0]))
        assert make_strategy(cfg.routing).name == cfg.routing.strategy
        # As written, it is a config both commands take: the proxy's (every channel has somewhere
        # to send) and the simulator's (a workload).
        check_servable(cfg)
        assert cfg.workload is not None
