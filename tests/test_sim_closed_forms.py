"""The simulator reproduces queueing closed forms (../shared/reference/simulation-anchors.md §1, §2.1, §4.3, §4.4).

Everything runs through `simulate` — the core's Router, the driver, the channel model — with the
health machinery that would react to a channel's own 503s turned off, timeouts far away, one
attempt per request: what is measured is the channel model and the routing alone.

Sizes and tolerances (§1.5; spreads measured with an exact NumPy Lindley recursion over 40–60
seeds at the same N, relative sd of the estimator in brackets). Every run has a fixed seed, so a
test never flakes; each tolerance is about 3–4 of those standard deviations, so a seed is not
cherry-picked either:

    M/M/1 ρ=0.5, N=100k          W = 2.0 ± 3 % (0.9 %);  P(wait) = 0.5 ± 0.01 (0.0025)
    M/M/10 λ=8 (Erlang C), 150k   P(wait) = 0.4092 ± 5 % (1.5 %);  Wq = 0.2046 ± 18 % (5.5 %)
    M/G/15/15 a=10 (Erlang B)     blocking 0.0365 ± 12 % (3.6 % at 100k), for exponential,
                                  deterministic and lognormal holding times (insensitivity)
    M/D/1 λ=0.5, N=100k           Wq = 0.5 ± 5 % (1.4 %);  W = 1.5 ± 2 % (0.5 %)
    M/LogN/1 λ=0.7 σ=1, N=100k    W = 4.171 ± 9 % (2.7 %, heavy tail)
    P2C vs random, 100 channels, λ=0.9, 60k each, first 30 % of the time discarded:
                                  P2C W = 2.61 ± 5 %;  random W = 10 ± 20 % (6 %);  ratio 0.2–0.33
    token bucket 60 RPM, 120 RPM Poisson, 20k   rejected 0.50 ± 0.02 (0.004)
    up/down renewal MTBF 7.2 s, MTTR 0.1 s (lognormal), 2000 cycles   availability 0.9863 ± 0.003
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from axonsim.config import parse_config
from axonsim.sim import simulate

# Breakers and auto-disable would take a channel that answers 503 out of rotation: not what a
# queueing model has. The 429 cooldown cannot trigger (there are no 429s) unless a test wants it.
NO_HEALTH = {"breaker": {"enabled": False}, "key_breaker": {"enabled": False}, "auto_disable": []}
FAR = {"first_token": 1e7, "total": 1e7}


def one_channel(ttft: dict, max_concurrency: int | None, when_full: str, rate: float, requests: int,
                **behavior):
    return parse_config({
        "gateway": {"timeouts": FAR},
        "channels": [{"name": "c", "models": ["m"], "behavior": {
            "ttft": ttft, "output_tokens": 0, "max_concurrency": max_concurrency, "when_full": when_full,
            **behavior}}],
        "routing": {"strategy": "round_robin", "retry": {"max_attempts": 1}, "health": NO_HEALTH},
        "workload": {"arrival": {"process": "poisson", "rate": rate}, "requests": requests},
    })


def erlang_b(c: int, a: float) -> float:
    b = 1.0
    for k in range(1, c + 1):
        b = a * b / (k + a * b)
    return b


def erlang_c(c: int, a: float) -> float:
    b = erlang_b(c, a)
    rho = a / c
    return b / (1 - rho * (1 - b))


def supermarket(lam: float, d: int) -> float:
    """Mitzenmacher's limit: expected time in system with d choices (d=1: 1/(1-λ))."""
    if d == 1:
        return 1.0 / (1.0 - lam)
    return sum(lam ** ((d**i - d) / (d - 1)) for i in range(1, 60))


EXP = {"dist": "exponential", "mean": 1.0}
LOGN_MEAN_1 = {"dist": "lognormal", "median": math.exp(-0.5), "sigma": 1.0}  # mean = median·e^{σ²/2} = 1


def test_reference_values():
    assert erlang_c(10, 8.0) == pytest.approx(0.4092, abs=5e-5)
    assert erlang_c(10, 8.0) / (10 - 8.0) == pytest.approx(0.2046, abs=5e-5)
    assert erlang_b(15, 10.0) == pytest.approx(0.0365, abs=5e-5)
    assert supermarket(0.9, 2) == pytest.approx(2.6141, abs=1e-4)
    assert supermarket(0.9, 1) == pytest.approx(10.0)


def test_mm1():
    """M/M/1, λ=0.5, μ=1: W = 1/(μ-λ) = 2, P(wait) = ρ = 0.5, Wq = 1."""
    res = simulate(one_channel(EXP, 1, "queue", 0.5, 100_000), seed=3, step=None)
    req, att = res.requests, res.attempts
    assert req.ok.all()
    assert float(req.latency.mean()) == pytest.approx(2.0, rel=0.03)
    assert float((att.queue_wait > 0).mean()) == pytest.approx(0.5, abs=0.01)
    assert float(att.queue_wait.mean()) == pytest.approx(1.0, rel=0.06)
    # W ~ Exponential(μ-λ): its median is ln 2/(μ-λ)
    assert float(req.latency.median()) == pytest.approx(2 * math.log(2), rel=0.04)


def test_erlang_c_queueing_channel():
    """M/M/10 with a FIFO queue: λ=8, μ=1 → P(wait) = 0.4092, Wq = 0.2046."""
    n = 150_000
    res = simulate(one_channel(EXP, 10, "queue", 8.0, n), seed=11, step=None)
    att = res.attempts
    assert len(att) == n and att.status.eq(200).all()
    assert float((att.queue_wait > 0).mean()) == pytest.approx(0.4092, rel=0.05)
    assert float(att.queue_wait.mean()) == pytest.approx(0.2046, rel=0.18)
    # Service starts at the slot grant: time in system = wait + exponential(1) service.
    assert float((att.end - att.start).mean()) == pytest.approx(1.2046, rel=0.04)


@pytest.mark.parametrize("holding", [EXP, {"dist": "constant", "value": 1.0}, LOGN_MEAN_1],
                         ids=["exponential", "deterministic", "lognormal"])
def test_erlang_b_rejecting_channel_is_insensitive(holding):
    """M/G/15/15, a = 10 Erlangs: blocking B(15, 10) = 0.0365 whatever the holding-time distribution."""
    res = simulate(one_channel(holding, 15, "reject", 10.0, 100_000), seed=7, step=None)
    att = res.attempts
    blocked = att.fault.eq("full")
    assert float(blocked.mean()) == pytest.approx(erlang_b(15, 10.0), rel=0.12)
    # A rejection is an immediate 503: no wait, no time spent.
    rej = att[blocked]
    assert rej.status.eq(503).all() and rej.error.eq("overloaded").all()
    assert (rej.end == rej.start).all() and (rej.queue_wait == 0).all()
    assert float((~res.requests.ok).mean()) == pytest.approx(float(blocked.mean()))


def test_md1_pollaczek_khinchine():
    """M/D/1, λ=0.5, S=1: Wq = λE[S²]/(2(1-ρ)) = 0.5, W = 1.5 (half the M/M/1 wait)."""
    res = simulate(one_channel({"dist": "constant", "value": 1.0}, 1, "queue", 0.5, 100_000), seed=5, step=None)
    att = res.attempts
    assert float(att.queue_wait.mean()) == pytest.approx(0.5, rel=0.05)
    assert float(res.requests.latency.mean()) == pytest.approx(1.5, rel=0.02)
    assert np.allclose(att.end - att.start - att.queue_wait, 1.0)  # service is exactly S


def test_mlogn1_pollaczek_khinchine():
    """M/LogN/1, λ=0.7, E[S]=1, σ=1: Wq = λ·E[S]²e^{σ²}/(2(1-ρ)) = 3.1713, W = 4.1713."""
    lam, sigma = 0.7, 1.0
    wq = lam * math.exp(sigma**2) / (2 * (1 - lam))
    assert wq + 1 == pytest.approx(4.1713, abs=1e-4)
    res = simulate(one_channel(LOGN_MEAN_1, 1, "queue", lam, 100_000), seed=2, step=None)
    assert float(res.requests.latency.mean()) == pytest.approx(wq + 1, rel=0.09)


def farm(strategy: str, requests: int, servers: int = 100, lam: float = 0.9):
    """`servers` exponential(1) FIFO servers (channels of concurrency 1 that queue), Poisson λ·servers."""
    return parse_config({
        "gateway": {"timeouts": FAR},
        "channels": [{"name": f"s{i}", "models": ["m"], "behavior": {
            "ttft": EXP, "output_tokens": 0, "max_concurrency": 1, "when_full": "queue"}} for i in range(servers)],
        "routing": {"strategy": strategy, "retry": {"max_attempts": 1}, "health": NO_HEALTH},
        "workload": {"arrival": {"process": "poisson", "rate": lam * servers}, "requests": requests},
    })


def steady_mean_latency(res, warmup: float = 0.3) -> float:
    """Mean time in system of requests arriving after the first `warmup` share of the run: the
    servers start empty, and at λ=0.9 an M/M/1 queue takes hundreds of service times to fill."""
    req = res.requests
    late = req.arrival > warmup * float(req.arrival.iloc[-1])
    return float(req.latency[late].mean())


def test_power_of_two_choices_beats_random_as_the_supermarket_model_says():
    """100 channels, λ=0.9: the core's least_inflight strategy (P2C on in-flight counts) gives
    T_2(0.9) = 2.61, random routing T_1 = 10 (Mitzenmacher 2001)."""
    p2c = steady_mean_latency(simulate(farm("least_inflight", 60_000), seed=1, step=None))
    rnd = steady_mean_latency(simulate(farm("random", 60_000), seed=1, step=None))
    assert p2c == pytest.approx(supermarket(0.9, 2), rel=0.05)
    assert rnd == pytest.approx(supermarket(0.9, 1), rel=0.20)
    assert 0.20 < p2c / rnd < 0.33


def test_token_bucket_rejects_the_excess_with_the_exact_retry_after():
    """A 60 RPM bucket under 120 RPM Poisson load: about half is answered 429 (§4.3), and each 429's
    Retry-After is exact: the next request before it is refused, the first one after it served."""
    cfg = one_channel({"dist": "constant", "value": 0.01}, None, "reject", 2.0, 20_000, rate_limits={"rpm": 60})
    # No gateway cooldown: every request reaches the provider's bucket.
    cfg = cfg.model_copy(update={"routing": cfg.routing.model_copy(update={
        "cooldown": cfg.routing.cooldown.model_copy(update={"max": 0.0})})})
    res = simulate(cfg, seed=4, step=None)
    att = res.attempts
    limited = att.status.eq(429).to_numpy()
    assert float(limited.mean()) == pytest.approx(0.5, abs=0.02)
    start = att.start.to_numpy()
    ra = att.retry_after.to_numpy()
    assert np.isnan(ra[~limited]).all() and (ra[limited] > 0).all() and (ra[limited] <= 1.0 + 1e-9).all()
    i = np.flatnonzero(limited[:-1])
    frees = start[i] + ra[i]
    nxt = start[i + 1]
    early, late = nxt < frees - 1e-9, nxt > frees + 1e-9
    assert limited[i + 1][early].all()  # the bucket is still empty
    assert (~limited[i + 1][late]).all()  # a token is there: served
    assert early.sum() > 1000 and late.sum() > 1000


def test_token_bucket_behind_the_gateways_cooldown_still_passes_half():
    """With the default 429 cooldown the gateway stops calling until Retry-After, answering the
    client 429 itself: clients still see about half refused, and the calls made during the
    cooldown are saved (about one request in four here never reaches the provider)."""
    cfg = one_channel({"dist": "constant", "value": 0.01}, None, "reject", 2.0, 20_000, rate_limits={"rpm": 60})
    res = simulate(cfg, seed=4, step=None)
    s = res.summary()
    assert s["client_429_rate"] == pytest.approx(0.5, abs=0.02)
    assert s["upstream_attempts"] < 0.85 * s["requests"]
    local = res.requests.attempts.eq(0)
    assert float(local.mean()) > 0.15 and res.requests.status[local].eq(429).all()


def test_availability_of_an_up_down_renewal_channel():
    """Alternating renewal: up ~ Exponential(MTBF), down ~ lognormal with mean MTTR → the share of
    time up is MTBF/(MTBF+MTTR) whatever the repair distribution (§4.4). Poisson probes see time
    averages (PASTA): the share of probes answered by the outage is the unavailability."""
    mtbf, mttr = 7.2, 0.1
    sigma = 0.8
    outages = {"mtbf": mtbf, "mttr": {"dist": "lognormal", "median": mttr * math.exp(-sigma**2 / 2), "sigma": sigma}}
    cycles = 2000
    rate = 5.0
    n = int(cycles * (mtbf + mttr) * rate)
    res = simulate(one_channel({"dist": "constant", "value": 0.001}, None, "reject", rate, n, outages=outages),
                   seed=9, step=1.0)
    expected = mtbf / (mtbf + mttr)
    assert expected == pytest.approx(0.9863, abs=1e-4)
    att = res.attempts
    assert float(att.status.ne(503).mean()) == pytest.approx(expected, abs=0.003)
    ts = res.timeseries
    assert float(ts.up.mean()) == pytest.approx(expected, abs=0.003)
