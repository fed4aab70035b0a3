"""Driver equivalence: the SimPy driver and a plain heapq driver of the same core give identical per-request results.

The two drivers are written separately (axonsim.sim.driver/channel and axonsim.sim.equivalence);
they share the core, the behaviour model, the workload and the per-purpose random streams. The
scenario has every path that could make them drift: retries on the same channel, failover,
backoff waits, a channel that rejects at its concurrency limit, two that queue (with queue
timeouts), 429s with Retry-After and a provider TPM bucket, timeouts, resets, cut streams, the
composite strategy reading in-flight counts and error scores, half the requests streamed.
"""

from __future__ import annotations

import numpy as np
import pytest

from axonsim.config import parse_config
from axonsim.sim.driver import Simulation
from axonsim.sim.equivalence import run_heapq
from axonsim.sim.workload import build_arrivals

N = 50_000
SEED = 5


def chan(name: str, ttft: float, cap: int, when_full: str, **behavior) -> dict:
    return {"name": name, "models": ["m"], "api_keys": [f"sk-{name}"], "behavior": {
        "ttft": {"dist": "lognormal", "median": ttft, "sigma": 0.6}, "tokens_per_second": 100,
        "output_tokens": {"dist": "lognormal", "median": 120, "sigma": 0.7},
        "max_concurrency": cap, "when_full": when_full, **behavior}}


def scenario(requests: int = N):
    return parse_config({
        "gateway": {"timeouts": {"first_token": 3.5, "total": 60}},
        "channels": [chan("a", 0.4, 8, "queue", error_rate=0.03, faults={"timeout": 0.01, "stream_cut": 0.01}),
                     chan("b", 0.5, 8, "queue", faults={"rate_limited": 0.02, "retry_after": 0.5},
                          rate_limits={"tpm": 600_000}),
                     chan("c", 0.3, 4, "reject", error_rate=0.02, faults={"reset": 0.02})],
        "routing": {"strategy": "composite", "retry": {"max_attempts": 3, "max_same_channel": 1}},
        "workload": {"arrival": {"process": "poisson", "rate": 6}, "requests": requests, "stream": 0.5,
                     "input_tokens": {"dist": "lognormal", "median": 800, "sigma": 0.7}},
    })


@pytest.fixture(scope="module")
def both():
    cfg = scenario()
    simpy_res = Simulation(cfg, SEED, build_arrivals(cfg, SEED)).run()
    heap = run_heapq(cfg, SEED, build_arrivals(cfg, SEED))
    return simpy_res, heap


def test_the_scenario_exercises_every_path(both):
    res, _ = both
    att = res.attempts
    faults = set(att.fault.dropna())
    assert {"full", "timeout", "reset", "stream_cut", "error", "rate_limited"} <= faults
    assert {"retry", "failover", "done"} <= set(att.next)
    assert att.status.eq(429).sum() > 100 and att.fault.eq("full").sum() > 50
    assert (att.queue_wait > 0).sum() > 1000
    s = res.summary()
    assert 1.01 < s["attempts_per_request"] < 1.3 and s["success_rate"] > 0.95


@pytest.mark.parametrize("column", ["arrival", "status", "attempts", "ok", "ttft", "end"])
def test_identical_per_request_columns(both, column):
    res, heap = both
    ours = res.requests[column].to_numpy()
    theirs = heap[column]
    assert ours.shape == theirs.shape == (N,)
    if ours.dtype.kind == "f":
        assert np.array_equal(ours, theirs, equal_nan=True)  # bit for bit, not approximately
    else:
        assert np.array_equal(ours, theirs)


def test_identical_channels_and_latency(both):
    res, heap = both
    req = res.requests
    assert np.array_equal(req.channel.cat.codes.to_numpy(), heap["channel"])
    assert np.array_equal(req.latency.to_numpy(), heap["end"] - heap["arrival"], equal_nan=True)


def test_the_heapq_driver_refuses_what_it_does_not_perform():
    cfg = scenario(10)
    hedged = cfg.model_copy(update={"routing": cfg.routing.model_copy(update={
        "hedge": cfg.routing.hedge.model_copy(update={"enabled": True, "delay": 1.0})})})
    with pytest.raises(ValueError, match="hedging"):
        run_heapq(hedged, 1, build_arrivals(hedged, 1))
    bounded = cfg.model_copy(update={"routing": cfg.routing.model_copy(update={
        "retry": cfg.routing.retry.model_copy(update={"deadline": 2.0})})})
    with pytest.raises(ValueError, match="deadline"):  # not silently different
        run_heapq(bounded, 1, build_arrivals(bounded, 1))
