"""The simulator reproduces queueing closed forms (../shared/reference/simulation-anchors.md §1).

One channel, no retries, no health machinery that could react to the channel's own 503s, timeouts
far away: what is measured is the driver's channel model alone. Sample sizes and tolerances follow
§1.5: ρ = 0.8, N = 200k, fixed seeds, tolerances of about 3–4 standard deviations of the estimator
(measured over 12 seeds at N = 200k, relative sd: P(wait) 1.3 %, Wq 4.8 %, blocking 2.4–2.7 %).
"""

from __future__ import annotations

import math

import pytest

from axonsim.config import parse_config
from axonsim.sim import simulate

N = 200_000

# Breakers and auto-disable would take a channel that answers 503 out of rotation: not what a
# queueing model has. The 429 cooldown cannot trigger (there are no 429s).
NO_HEALTH = {"breaker": {"enabled": False}, "key_breaker": {"enabled": False}, "auto_disable": []}


def one_channel(ttft: dict, max_concurrency: int, when_full: str, rate: float, requests: int = N):
    return parse_config({
        "gateway": {"timeouts": {"first_token": 1e6, "total": 1e6}},
        "channels": [{"name": "c", "models": ["m"], "behavior": {
            "ttft": ttft, "output_tokens": 0, "max_concurrency": max_concurrency, "when_full": when_full}}],
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


def test_reference_values():
    assert erlang_c(10, 8.0) == pytest.approx(0.4092, abs=5e-5)
    assert erlang_c(10, 8.0) / (10 - 8.0) == pytest.approx(0.2046, abs=5e-5)
    assert erlang_b(15, 10.0) == pytest.approx(0.0365, abs=5e-5)


def test_erlang_c_queueing_channel():
    """M/M/10 with a FIFO queue: λ=8, μ=1 → P(wait) = 0.4092, Wq = 0.2046."""
    res = simulate(one_channel({"dist": "exponential", "mean": 1.0}, 10, "queue", 8.0), seed=11)
    att = res.attempts
    assert len(att) == N and att.status.eq(200).all()
    p_wait = float((att.queue_wait > 0).mean())
    wq = float(att.queue_wait.mean())
    assert p_wait == pytest.approx(0.4092, rel=0.05)
    assert wq == pytest.approx(0.2046, rel=0.18)
    # Service starts at the slot grant: time in system = wait + exponential(1) service.
    assert float((att.end - att.start).mean()) == pytest.approx(1.2046, rel=0.04)


@pytest.mark.parametrize("ttft", [
    {"dist": "exponential", "mean": 1.0},
    # lognormal with mean 1: median e^{-σ²/2}
    {"dist": "lognormal", "median": math.exp(-0.5), "sigma": 1.0},
], ids=["exponential", "lognormal"])
def test_erlang_b_rejecting_channel_is_insensitive(ttft):
    """M/G/15/15, a = 10 Erlangs: blocking 0.0365 whatever the holding-time distribution."""
    res = simulate(one_channel(ttft, 15, "reject", 10.0), seed=7)
    att = res.attempts
    blocked = att.fault.eq("full")
    assert float(blocked.mean()) == pytest.approx(0.0365, rel=0.10)
    # A rejection is an immediate 503: no wait, no time spent.
    rej = att[blocked]
    assert rej.status.eq(503).all() and rej.error.eq("overloaded").all()
    assert (rej.end == rej.start).all() and (rej.queue_wait == 0).all()
    req = res.requests
    assert float((~req.ok).mean()) == pytest.approx(float(blocked.mean()))
