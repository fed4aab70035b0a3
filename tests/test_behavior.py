"""The channel behaviour model shared by the simulator and the mock provider: distributions, faults,
token buckets, outages, incidents and quotas, against closed forms where they exist."""

from __future__ import annotations

import math
import random
import statistics

import pytest

from axonsim.behavior import OUTAGE, RATE_LIMITED, STREAM_CUT, AttemptPlan, BehaviorModel, sampler
from axonsim.config import Behavior, ConfigError, parse_config
from axonsim.native import fields


def model(seed=0, **kw):
    return BehaviorModel(Behavior.model_validate(kw), seed)


def test_draw_discipline_is_fixed_whatever_the_outcome():
    a = model(error_rate=0.5)
    b = model()
    ra, rb = random.Random(3), random.Random(3)
    for _ in range(200):
        a.sample(ra)
        b.sample(rb)
    assert ra.random() == rb.random()  # both consumed exactly the same draws


def test_lognormal_ttft_has_the_configured_median():
    m = model(ttft={"dist": "lognormal", "median": 0.4, "sigma": 0.5}, output_tokens=10)
    rng = random.Random(1)
    ttfts = [m.sample(rng).ttft for _ in range(20000)]
    assert statistics.median(ttfts) == pytest.approx(0.4, rel=0.03)


def test_generation_time_is_tokens_over_speed():
    m = model(output_tokens=120, tokens_per_second=60)
    p = m.sample(random.Random(0))
    assert p.output_tokens == 120 and p.generation == pytest.approx(2.0)


def test_fault_shares_follow_their_probabilities():
    m = model(error_rate=0.1, faults={"rate_limited": 0.05, "stream_cut": 0.1, "retry_after": 3})
    rng = random.Random(2)
    plans = [m.sample(rng) for _ in range(40000)]
    share = lambda kind: sum(p.fault == kind for p in plans) / len(plans)  # noqa: E731
    assert share("error") == pytest.approx(0.1, abs=0.006)
    assert share(RATE_LIMITED) == pytest.approx(0.05, abs=0.005)
    cut = [p for p in plans if p.fault == STREAM_CUT]
    assert len(cut) / len(plans) == pytest.approx(0.1, abs=0.006)
    assert all(p.cut_tokens < p.output_tokens for p in cut if p.output_tokens > 1)
    assert all(p.retry_after == 3 for p in plans if p.fault == RATE_LIMITED)


def test_overload_rises_with_utilisation():
    m = model(faults={"overload_slope": 0.5, "overload_status": 529})
    rng = random.Random(4)
    idle = sum(m.sample(rng, utilisation=0.0).fault is not None for _ in range(5000))
    busy = [m.sample(rng, utilisation=1.0) for _ in range(5000)]
    assert idle == 0
    assert sum(p.status == 529 for p in busy) / 5000 == pytest.approx(0.5, abs=0.03)


def test_a_60_rpm_token_bucket_under_120_rpm_poisson_rejects_half():
    m = model(rate_limits={"rpm": 60}, output_tokens=0)
    rng, arrivals = random.Random(5), random.Random(6)
    t, rejected, n = 0.0, 0, 60000
    for _ in range(n):
        t += arrivals.expovariate(2.0)  # 120 per minute
        if m.sample(rng, now=t).fault == RATE_LIMITED:
            rejected += 1
    assert rejected / n == pytest.approx(0.5, abs=0.02)


def test_a_429_says_exactly_when_capacity_returns():
    m = model(rate_limits={"rpm": 60}, output_tokens=0)
    rng = random.Random(0)
    for _ in range(60):
        assert m.sample(rng, now=0.0).fault is None  # the bucket starts full
    p = m.sample(rng, now=0.0)
    assert p.fault == RATE_LIMITED and p.retry_after == pytest.approx(1.0)
    assert m.sample(rng, now=0.5).retry_after == pytest.approx(0.5)
    assert m.sample(rng, now=1.0).fault is None


def test_renewal_outages_give_availability_mtbf_over_mtbf_plus_mttr():
    # MTBF 72 h, MTTR 1 h → A = 0.9863 (simulation-anchors.md §4.4), over ≥ 1000 cycles.
    m = model(outages={"mtbf": 72 * 3600, "mttr": {"dist": "exponential", "mean": 3600}})
    horizon = 1200 * 73 * 3600
    step = 600.0
    up = sum(not m.outages.down(i * step) for i in range(int(horizon / step)))
    assert up / (horizon / step) == pytest.approx(72 / 73, abs=0.003)


def test_outage_answers_quickly_with_its_status():
    m = model(outages={"mtbf": 10, "mttr": 10, "status": 503})
    rng = random.Random(0)
    plans = [m.sample(rng, now=t * 0.5) for t in range(400)]
    down = [p for p in plans if p.fault == OUTAGE]
    assert down and all(p.status == 503 and p.ttft <= 0.05 for p in down)
    assert 0.3 < len(down) / len(plans) < 0.7


def test_scheduled_incident_and_brownout():
    m = model(ttft=1.0, incidents=[{"start": 300, "end": 900, "status": 503},
                                   {"start": 1000, "end": 1100, "ttft_factor": 5}])
    rng = random.Random(0)
    assert m.sample(rng, now=299).fault is None
    assert m.sample(rng, now=300).status == 503
    assert m.sample(rng, now=899.9).status == 503
    assert m.sample(rng, now=900).fault is None
    assert m.sample(rng, now=1050).ttft == pytest.approx(5.0)


def test_daily_quota_resets():
    m = model(quota={"requests": 2, "period": 86400}, output_tokens=0)
    rng = random.Random(0)
    assert [m.sample(rng, now=t).fault for t in (1, 2)] == [None, None]
    p = m.sample(rng, now=3)
    assert p.status == 429 and p.retry_after == pytest.approx(86400 - 3)
    assert m.sample(rng, now=86401).fault is None


def test_prefill_and_load_grow_ttft():
    m = model(ttft=0.5, prefill_per_token=0.001, load_factor=1.0)
    assert m.sample(random.Random(0), input_tokens=1000, utilisation=0.5).ttft == pytest.approx((0.5 + 1.0) * 1.5)


def test_gamma_and_empirical_samplers():
    g = sampler(Behavior.model_validate({"ttft": {"dist": "gamma", "mean": 2.0, "cv": 3.0}}).ttft)
    rng = random.Random(9)
    xs = [g(rng) for _ in range(100000)]
    mean = statistics.fmean(xs)
    assert mean == pytest.approx(2.0, rel=0.05)
    assert statistics.pstdev(xs) / mean == pytest.approx(3.0, rel=0.08)
    e = sampler(Behavior.model_validate({"ttft": {"dist": "empirical", "values": [1, 2, 3]}}).ttft)
    assert {e(rng) for _ in range(100)} == {1, 2, 3}
    assert math.isfinite(mean)


@pytest.mark.parametrize("behavior, field", [
    ({"incidents": [{"start": 10, "end": 5, "status": 503}]}, "incidents[0]"),
    ({"ttft": {"dist": "lognormal", "median": 1, "sigma": -0.1}}, "ttft.sigma"),
    ({"tokens_per_second": -4}, "tokens_per_second"),
    ({"rate_limits": {"rpm": 0}}, "rate_limits.rpm"),
])
def test_impossible_behaviour_is_rejected_naming_the_field(behavior, field):
    with pytest.raises(ConfigError) as e:
        parse_config({"channels": [{"name": "a", "models": ["m"], "behavior": behavior}]})
    assert field in str(e.value)


@pytest.mark.parametrize("faults", [{}, {"error_rate": 0.1},
                                    {"error_rate": 0.05, "faults": {"rate_limited": 0.05, "reset": 0.05,
                                                                    "timeout": 0.05, "stream_cut": 0.1,
                                                                    "overloaded": 0.02, "bad_gateway": 0.02}}])
def test_lean_path_draws_and_plans_as_the_general_path(faults):
    """sample's lean path (lognormal TTFT and output, constant speed, a bulk normal source) takes
    the same draws and makes the same plans, bit for bit, as the general path it shortcuts."""
    from axonsim.sim.streams import ChannelRandom

    kw = {"ttft": {"dist": "lognormal", "median": 0.5, "sigma": 0.7}, "tokens_per_second": 90,
          "output_tokens": {"dist": "lognormal", "median": 120, "sigma": 0.8}, **faults}
    lean, general = model(**kw), model(**kw)
    general._lean = None  # the general path only
    ra, rb = ChannelRandom(11), ChannelRandom(11)
    for i in range(3000):
        out = None if i % 3 else 40 + i % 7
        a, b = lean.sample(ra, output_tokens=out), general.sample(rb, output_tokens=out)
        assert [getattr(a, f) for f in fields(AttemptPlan)] == [getattr(b, f) for f in fields(AttemptPlan)]
    assert lean._fast is not None and general._fast is None
    assert ra.random() == rb.random()  # (the lean path takes its normals a chunk at a time)


def test_lognormal_pairs_are_two_lognormal_draws_bit_for_bit():
    """ChannelRandom.lognormal_pairs (the lean path's source) hands out what lognormvariate(mu,
    sigma) and round(lognormvariate(mu2, sigma2)) give from the same seed, across chunk ends."""
    from axonsim.sim.streams import CHUNK, ChannelRandom

    ra, rb = ChannelRandom(5), ChannelRandom(5)
    pair = ra.lognormal_pairs(-0.9, 0.5, 5.0, 0.6)
    for _ in range(CHUNK + 100):
        assert pair() == (rb.lognormvariate(-0.9, 0.5), round(rb.lognormvariate(5.0, 0.6)))
