"""Strategies and the balancer: formulas, proportions, decay, and never a channel outside the candidates."""

from __future__ import annotations

import random
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from axonsim.balancer import Balancer
from axonsim.candidates import Candidate
from axonsim.config import Routing, parse_config
from axonsim.execution import Router
from axonsim.state import NEVER, ChannelState
from axonsim.strategies import (
    STRATEGY_NAMES,
    Composite,
    ErrorAware,
    LeastInflight,
    Random,
    RoundRobin,
    Weighted,
    error_score,
    make_strategy,
)


def states(weights, routing=None):
    cfg = parse_config({"channels": [{"name": f"c{i}", "models": ["m"], "weight": w} for i, w in enumerate(weights)]})
    return Router(cfg if routing is None else cfg.model_copy(update={"routing": routing})).states


def pick_many(strategy, sts, n, seed=0, now=0.0):
    bal = strategy if isinstance(strategy, Balancer) else Balancer(strategy)
    cands = [Candidate(s, "m") for s in sts]
    rng = random.Random(seed)
    return [bal.pick(cands, now, rng).state.name for _ in range(n)]


def test_smooth_weighted_5_1_1_exact_in_every_window_of_7():
    picks = pick_many(Weighted(), states([5, 1, 1]), 700)
    for i in range(0, 700, 7):
        assert Counter(picks[i:i + 7]) == {"c0": 5, "c1": 1, "c2": 1}
    # and smooth: the heavy channel is never picked 5 times in a row (nginx interleaves)
    assert "c0,c0,c0,c0,c0" not in ",".join(picks)


@given(st.lists(st.integers(min_value=0, max_value=20), min_size=1, max_size=6).filter(lambda w: sum(w) > 0))
@settings(max_examples=60, deadline=None)
def test_weighted_proportions_hold_exactly(weights):
    total = sum(weights)
    picks = Counter(pick_many(Weighted(), states(weights), total * 3))
    for i, w in enumerate(weights):
        assert picks.get(f"c{i}", 0) == 3 * w


def test_weight_zero_gets_nothing_while_a_positive_weight_exists():
    for strat in (Weighted(), Random()):
        picks = Counter(pick_many(strat, states([0, 10, 5]), 3000, seed=3))
        assert picks["c0"] == 0


def test_all_zero_weights_still_pick_someone():
    assert set(pick_many(Weighted(), states([0, 0]), 4)) == {"c0", "c1"}


def test_random_is_weighted_and_seeded():
    a = pick_many(Random(), states([3, 1]), 20000, seed=7)
    b = pick_many(Random(), states([3, 1]), 20000, seed=7)
    assert a == b
    share = Counter(a)["c0"] / len(a)
    assert abs(share - 0.75) < 0.015  # sd ≈ 0.003


def test_round_robin_cycles_in_order():
    assert pick_many(RoundRobin(), states([1, 1, 1]), 6) == ["c0", "c1", "c2", "c0", "c1", "c2"]


def test_least_inflight_is_power_of_two_choices():
    sts = states([1, 1, 1, 1])
    for i, s in enumerate(sts):
        s.inflight = [9, 0, 5, 7][i]
    picks = Counter(pick_many(LeastInflight(), sts, 6000, seed=1))
    # c0 (the busiest) can only win when it is drawn twice — impossible with two distinct draws.
    assert picks["c0"] == 0
    # c1 wins every pair it is in: 3 of the 6 pairs.
    assert abs(picks["c1"] / 6000 - 0.5) < 0.03


def test_error_penalty_is_the_documented_formula():
    s = states([1])[0]
    s.last_failure = 100.0
    s.consecutive_failures = 2
    # d = 1 - 60/300 = 0.8; score = 1 - (60 + 40) * 0.8 / 200 = 0.6
    assert error_score(s, 160.0, 300.0) == pytest.approx(0.6)


@given(cf=st.integers(0, 10_000), since=st.floats(0, 1e6), window=st.floats(1, 1e4))
def test_a_failed_channels_penalty_decays_to_zero(cf, since, window):
    s = states([1])[0]
    s.last_failure = 0.0
    s.consecutive_failures = cf
    score = error_score(s, since, window)
    assert 0.0 <= score <= 1.0
    if since >= window:
        assert score == 1.0
    # monotone recovery: later is never worse
    assert error_score(s, since + 1.0, window) >= score


def test_error_aware_moves_traffic_then_recovers():
    sts = states([1, 1])
    sts[0].last_failure, sts[0].consecutive_failures = 0.0, 3
    bal = Balancer(ErrorAware(300.0))
    early = Counter(pick_many(bal, sts, 10, now=10.0))
    assert early == {"c1": 10}
    late = Counter(pick_many(bal, sts, 10, now=301.0))
    assert late == {"c0": 5, "c1": 5}  # healthy again: ties rotate


def test_composite_prefers_healthy_and_less_loaded_and_spreads_ties():
    sts = states([100, 100, 100])
    comp = Composite({"error_aware": 0.4, "least_inflight": 0.4, "weighted": 0.2}, 300.0)
    assert Counter(pick_many(comp, sts, 30)) == {"c0": 10, "c1": 10, "c2": 10}
    sts[0].inflight = 10
    sts[1].last_failure, sts[1].consecutive_failures = 0.0, 1
    assert set(pick_many(comp, sts, 5, now=1.0)) == {"c2"}


def test_composite_fast_path_equals_its_documented_scores():
    rng = random.Random(5)
    comp = Composite({"error_aware": 0.4, "least_inflight": 0.4, "weighted": 0.2}, 300.0)
    for _ in range(500):
        sts = states([rng.choice([0, 10, 50, 100]) for _ in range(rng.randint(2, 5))])
        for s in sts:
            s.inflight = rng.randint(0, 20)
            s.last_pick = rng.randint(-1, 50)
            if rng.random() < 0.5:
                s.last_failure, s.consecutive_failures = rng.uniform(0, 100), rng.randint(1, 5)
        scores = comp.scores(sts, 120.0)
        i = comp.pick(sts, 120.0, rng)
        assert scores[i] == pytest.approx(max(scores), abs=1e-9)


def test_composite_fused_choose_makes_the_same_choice_as_eligibility_then_pick():
    """The fused fast path (Composite.choose, what Balancer.choose runs) against the two steps
    it fuses: the eligible candidates, then `pick` over their states — the same Candidate, or
    None, every time, ties and cooling channels included."""
    rng = random.Random(11)
    comp = Composite({"error_aware": 0.4, "least_inflight": 0.4, "weighted": 0.2}, 300.0)
    assert comp.fused
    for _ in range(2000):
        sts = states([rng.choice([0, 10, 50, 100]) for _ in range(rng.randint(1, 5))])
        for s in sts:
            s.inflight = rng.choice([0, 0, 1, 3, 20])
            s.last_pick = rng.randint(-1, 5)
            if rng.random() < 0.5:
                s.last_failure, s.consecutive_failures = rng.choice([100.0, rng.uniform(-300, 120)]), rng.randint(1, 5)
            if rng.random() < 0.2:
                s.cooldown_until = 200.0
        cands = [Candidate(s, "m") for s in sts]
        eligible = [c for c in cands if c.state.eligible(120.0, "m", 0)]
        expected = None if not eligible else eligible[comp.pick([c.state for c in eligible], 120.0, rng)]
        assert comp.choose(cands, 120.0, 0) is expected
    assert not Composite({"error_aware": 0.5, "random": 0.5}, 300.0).fused  # general terms: no fused path


def test_eligibility_follows_every_write_of_a_timed_exclusion():
    """ChannelState.gate (the quick test of `eligible` and of the fused choose) follows the timed
    exclusions however they are written — the driver API, a direct write (shared state, admin,
    tests), an ejection handed over by a reload and then written by the old state — and
    `eligible` always agrees with `unavailable_reason`."""
    comp = Composite({"error_aware": 0.4, "least_inflight": 0.4, "weighted": 0.2}, 300.0)
    old, a, b = states([100, 50, 10])
    cands = [Candidate(a, "m"), Candidate(b, "m")]

    def check(now, expect_a):
        for s in (a, b):
            assert s.eligible(now, "m") == (s.unavailable_reason(now, "m") is None)
        assert a.eligible(now, "m") is expect_a
        assert (comp.choose(cands, now) is cands[0]) is expect_a  # a outweighs b whenever it may be chosen

    check(1.0, True)
    a.cooldown_until = 5.0
    check(1.0, False)
    check(5.0, True)
    a.disabled_until = 20.0
    check(10.0, False)
    a.disabled_until = NEVER
    check(10.0, True)
    a.ejection.until = 30.0
    check(10.0, False)
    a.ejection.until = NEVER
    a.ejection = old.ejection  # a reload hands the previous state's ejection over ...
    old.ejection.until = 40.0  # ... which that state may still write (attempts that were running)
    check(10.0, False)
    old.ejection.until = NEVER
    check(10.0, True)
    a.channel.enabled = False  # admin: no refresh, no setter
    check(10.0, False)
    a.channel.enabled = True
    check(10.0, True)


@given(
    name=st.sampled_from(STRATEGY_NAMES),
    weights=st.lists(st.integers(0, 100), min_size=1, max_size=6),
    inflight=st.lists(st.integers(0, 50), min_size=6, max_size=6),
    failures=st.lists(st.tuples(st.floats(-1000, 1000), st.integers(0, 9)), min_size=6, max_size=6),
    cooling=st.lists(st.booleans(), min_size=6, max_size=6),
    subset=st.lists(st.integers(0, 5), min_size=1, max_size=6, unique=True),
    seed=st.integers(0, 2**32),
)
@settings(max_examples=200, deadline=None)
def test_no_strategy_ever_picks_outside_the_candidates(name, weights, inflight, failures, cooling, subset, seed):
    routing = Routing(strategy=name)
    sts = states(weights, routing)
    for i, s in enumerate(sts):
        s.inflight = inflight[i]
        s.last_failure, s.consecutive_failures = failures[i]
        if cooling[i]:
            s.cooldown_until = 50.0
    cands = [Candidate(sts[i], "m") for i in subset if i < len(sts)] or [Candidate(sts[0], "m")]
    bal = Balancer(make_strategy(routing))
    rng = random.Random(seed)
    names = {c.state.name for c in cands}
    free = {c.state.name for c in cands if c.state.cooldown_until <= 10.0}
    for _ in range(20):
        chosen = bal.pick(cands, 10.0, rng)
        if chosen is None:
            assert not free  # nothing may take an attempt now: nothing is picked
        else:
            assert chosen.state.name in names and chosen.state.name in free


def test_cooling_channels_are_skipped_while_another_is_free():
    sts = states([1, 1])
    sts[0].cooldown_until = 5.0
    assert set(pick_many(RoundRobin(), sts, 4, now=1.0)) == {"c1"}
    sts[1].cooldown_until = 3.0  # all cooling: no call is wasted, execution answers 429 + Retry-After
    assert Balancer(RoundRobin()).pick([Candidate(s, "m") for s in sts], 1.0, random.Random(0)) is None


def test_every_configured_strategy_name_builds():
    for name in STRATEGY_NAMES:
        assert make_strategy(Routing(strategy=name)).name == name


def test_explain_lists_scores_and_terms():
    sts = states([100, 50])
    bal = Balancer(Composite({"error_aware": 0.5, "weighted": 0.5}, 300.0))
    sts[0].cooldown_until = 10.0
    rows = bal.explain([Candidate(s, "m") for s in sts], 0.0)
    assert rows[0] == {"channel": "c0", "upstream_model": "m", "unavailable": "cooling_down"}
    assert rows[1]["terms"] == {"error_aware": 1.0, "weighted": 1.0}
    assert rows[1]["score"] == pytest.approx(1.0)
    assert ChannelState  # the state type is what strategies score
