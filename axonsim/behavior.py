"""Channel behaviour model: what one attempt on a channel will do, drawn from its configured
distributions. The simulator's channels and the mock provider both use it, so a simulated channel
can be stood up for real with the same numbers.

`sample(rng)` always takes the same three draws in the same order (fault uniform, time to first
token, output length), whatever the outcome, so results do not depend on which branch ran.
"""

from __future__ import annotations

import math
import random

from axonsim.config import Behavior, Constant, Distribution, Exponential, LogNormal

# Fault kinds an attempt can come to (None: it succeeds).
ERROR = "error"  # HTTP error_status (500 by default)
RATE_LIMITED = "rate_limited"  # 429 + Retry-After
OVERLOADED = "overloaded"  # 503
RESET = "reset"  # connection reset before any byte
TIMEOUT = "timeout"  # never answers
STREAM_CUT = "stream_cut"  # starts fine, stops half-way without a terminal event

FULL_STATUS = 503  # what a channel at max_concurrency with when_full=reject answers


class AttemptPlan:
    __slots__ = ("fault", "status", "ttft", "output_tokens", "generation", "retry_after")

    def __init__(self, fault: str | None, status: int, ttft: float, output_tokens: int, generation: float,
                 retry_after: float | None) -> None:
        self.fault = fault
        self.status = status
        self.ttft = ttft  # seconds until the first token (or until the error is answered)
        self.output_tokens = output_tokens
        self.generation = generation  # seconds from the first token to the last
        self.retry_after = retry_after

    @property
    def duration(self) -> float:
        return self.ttft + self.generation


def sampler(d: Distribution):  # type: ignore[no-untyped-def]
    """A function rng -> float for a distribution, bound once (no per-draw dispatch)."""
    if isinstance(d, Constant):
        v = d.value
        return lambda rng: v
    if isinstance(d, Exponential):
        rate = 1.0 / d.mean
        return lambda rng: rng.expovariate(rate)
    if isinstance(d, LogNormal):
        mu, sigma = math.log(d.median), d.sigma
        return lambda rng: rng.lognormvariate(mu, sigma)
    raise TypeError(f"unknown distribution {d!r}")


class BehaviorModel:
    __slots__ = ("behavior", "_ttft", "_tokens", "_tps", "_cuts", "max_concurrency", "queue")

    def __init__(self, behavior: Behavior) -> None:
        self.behavior = behavior
        self._ttft = sampler(behavior.ttft)
        self._tokens = sampler(behavior.output_tokens)
        self._tps = behavior.tokens_per_second
        f = behavior.faults
        # Cumulative thresholds on one uniform draw: the first band that contains it wins.
        bands = [(behavior.error_rate, ERROR), (f.rate_limited, RATE_LIMITED), (f.overloaded, OVERLOADED),
                 (f.reset, RESET), (f.timeout, TIMEOUT), (f.stream_cut, STREAM_CUT)]
        acc = 0.0
        cuts = []
        for p, kind in bands:
            if p > 0:
                acc += p
                cuts.append((acc, kind))
        if acc > 1.0 + 1e-9:
            raise ValueError("behavior: error_rate + fault probabilities exceed 1")
        self._cuts = tuple(cuts)
        self.max_concurrency = behavior.max_concurrency
        self.queue = behavior.when_full == "queue"

    def sample(self, rng: random.Random) -> AttemptPlan:
        u = rng.random()
        ttft = self._ttft(rng)
        tokens = int(round(self._tokens(rng)))
        fault = None
        for cut, kind in self._cuts:
            if u < cut:
                fault = kind
                break
        if fault is None or fault == STREAM_CUT:
            gen = tokens / self._tps
            return AttemptPlan(fault, 200, ttft, tokens, gen, None)
        b = self.behavior
        if fault == ERROR:
            return AttemptPlan(fault, b.error_status, ttft, 0, 0.0, None)
        if fault == RATE_LIMITED:
            return AttemptPlan(fault, 429, ttft, 0, 0.0, b.faults.retry_after)
        if fault == OVERLOADED:
            return AttemptPlan(fault, 503, ttft, 0, 0.0, None)
        return AttemptPlan(fault, 0, ttft, 0, 0.0, None)  # RESET / TIMEOUT: no HTTP answer
