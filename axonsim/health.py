"""Health: circuit breakers, outlier ejection, auto-disable rules and quota windows.

Each mechanism is a small state machine told the time by its caller. Together they answer one
question for the balancer — may this channel (or key) take an attempt now? — and each can say why
not, for the decision trace.

Circuit breaker (per channel × model, and per upstream key):
    closed     --failure_threshold consecutive failures-->  open (for open_time)
    open       --open_time elapsed-->                       half_open
    half_open  admits at most `half_open_probes` attempts at once;
               `half_open_probes` successes --> closed; any failure --> open again, with the
               open time doubled each trip (capped at max_open_time): exponential probe backoff.

Outlier ejection (Envoy): `consecutive_failures` consecutive 5xx/connection failures eject a
channel for base_ejection_time × times_ejected (≤ max_ejection_time); at most
max_ejection_percent of the pool (at least one, never the whole pool) is ejected at once.

Auto-disable: per status, N consecutive occurrences disable the key (401/403 when the channel has
keys) or the channel, permanently (until the configuration changes) or for a while
(Retry-After when asked and known); a temporary disable lifts itself.

Quota: a window of `period` seconds (anchored at `offset`, e.g. a daily quota resetting at 00:00)
allowing `requests` and/or `tokens`; exhausted → unavailable until the window rolls over.
"""

from __future__ import annotations

import math
from typing import Any

from axonsim.config import AutoDisableRule, BreakerConfig, OutlierConfig, QuotaConfig

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"


class Breaker:
    __slots__ = ("cfg", "state", "failures", "open_until", "trips", "probes", "probe_successes")

    def __init__(self, cfg: BreakerConfig) -> None:
        self.cfg = cfg
        self.state = CLOSED
        self.failures = 0  # consecutive
        self.open_until = 0.0
        self.trips = 0  # consecutive openings without a full recovery
        self.probes = 0  # half-open attempts in flight
        self.probe_successes = 0

    def _tick(self, now: float) -> None:
        if self.state == OPEN and now >= self.open_until:
            self.state = HALF_OPEN
            self.probes = 0
            self.probe_successes = 0

    def allows(self, now: float) -> bool:
        self._tick(now)
        if self.state == CLOSED:
            return True
        if self.state == HALF_OPEN:
            return self.probes < self.cfg.half_open_probes
        return False

    def on_start(self, now: float) -> bool:
        """An attempt starts; True if it is a half-open probe (its end must say so: `probe`)."""
        self._tick(now)
        if self.state == HALF_OPEN:
            self.probes += 1
            return True
        return False

    # `probe`: whether the attempt ending was counted as a probe at its start. One that started
    # before the breaker half-opened neither frees a probe's slot nor closes the breaker.

    def on_success(self, now: float, probe: bool = True) -> None:
        self.failures = 0
        if self.state == HALF_OPEN and probe:
            self.probes = max(0, self.probes - 1)
            self.probe_successes += 1
            if self.probe_successes >= self.cfg.half_open_probes:
                self.state = CLOSED
                self.trips = 0

    def on_failure(self, now: float, probe: bool = True) -> None:
        self.failures += 1
        if self.state == HALF_OPEN:
            if probe:
                self.probes = max(0, self.probes - 1)
            self._open(now)
        elif self.state == CLOSED and self.failures >= self.cfg.failure_threshold:
            self._open(now)

    def on_abandon(self, probe: bool = True) -> None:
        """An attempt that proved nothing (cancelled, a 429): a probe's slot is freed."""
        if self.state == HALF_OPEN and probe:
            self.probes = max(0, self.probes - 1)

    def _open(self, now: float) -> None:
        t = min(self.cfg.open_time * (2 ** min(self.trips, 30)), self.cfg.max_open_time)
        self.trips += 1
        self.state = OPEN
        self.open_until = now + t

    def snapshot(self, now: float) -> dict[str, object]:
        self._tick(now)
        return {"state": self.state, "consecutive_failures": self.failures, "trips": self.trips,
                "open_remaining": max(0.0, self.open_until - now) if self.state == OPEN else 0.0}


class Ejection:
    """Per-channel outlier-ejection bookkeeping; the pool-wide cap lives in OutlierDetector.

    `owner` is the channel state that reads it (after a reload, the new one: the old state may
    still write it for attempts that were running): told whenever `until` moves, so that its
    routing fast path (ChannelState.gate) follows."""

    __slots__ = ("consecutive", "times", "_until", "owner")

    def __init__(self) -> None:
        self.consecutive = 0
        self.times = 0
        self._until = float("-inf")
        self.owner: Any = None

    @property
    def until(self) -> float:
        return self._until

    @until.setter
    def until(self, until: float) -> None:
        self._until = until
        if self.owner is not None:
            self.owner.regate()


class OutlierDetector:
    def __init__(self, cfg: OutlierConfig, pool_size: int) -> None:
        self.cfg = cfg
        self.pool_size = pool_size
        self.ejected: dict[str, float] = {}  # channel name -> ejected until

    def max_ejected(self) -> int:
        if self.pool_size <= 1:
            return 0
        allowed = max(1, math.floor(self.cfg.max_ejection_percent / 100.0 * self.pool_size))
        return min(allowed, self.pool_size - 1)

    def currently_ejected(self, now: float) -> int:
        for name in [n for n, until in self.ejected.items() if until <= now]:
            del self.ejected[name]
        return len(self.ejected)

    def on_result(self, name: str, ej: Ejection, now: float, gateway_failure: bool) -> bool:
        """Feed one attempt's result; True if this channel was ejected now."""
        if not self.cfg.enabled:
            return False
        if not gateway_failure:
            ej.consecutive = 0
            return False
        ej.consecutive += 1
        if ej.consecutive < self.cfg.consecutive_failures or ej.until > now:
            return False
        if self.currently_ejected(now) >= self.max_ejected():
            return False  # the cap: a broad incident must not empty the pool
        ej.times += 1
        ej.consecutive = 0
        ej.until = now + min(self.cfg.base_ejection_time * ej.times, self.cfg.max_ejection_time)
        self.ejected[name] = ej.until
        return True


class AutoDisable:
    """Counts consecutive occurrences of each configured status for one channel or key."""

    __slots__ = ("rules", "counts")

    def __init__(self, rules: list[AutoDisableRule]) -> None:
        self.rules = {r.status: r for r in rules}
        self.counts: dict[int, int] = {}

    def on_status(self, status: int, retry_after: float | None) -> tuple[str, float] | None:
        """None, or (action, seconds) when a rule fires: ("permanent", inf) / ("temporary", d)."""
        rule = self.rules.get(status)
        if rule is None:
            self.counts.clear()
            return None
        n = self.counts.get(status, 0) + 1
        self.counts = {status: n}  # consecutive occurrences of this status only
        if n < rule.times:
            return None
        self.counts = {}
        if rule.action == "permanent":
            return ("permanent", math.inf)
        d = rule.duration
        if rule.use_retry_after and retry_after is not None:
            d = retry_after
        return ("temporary", d)

    def on_success(self) -> None:
        if self.counts:
            self.counts = {}


class Quota:
    __slots__ = ("cfg", "window", "requests", "tokens")

    def __init__(self, cfg: QuotaConfig) -> None:
        self.cfg = cfg
        self.window = -1
        self.requests = 0
        self.tokens = 0

    def _roll(self, now: float) -> None:
        w = math.floor((now - self.cfg.offset) / self.cfg.period)
        if w != self.window:
            self.window = w
            self.requests = 0
            self.tokens = 0

    def allows(self, now: float, tokens: int) -> bool:
        self._roll(now)
        c = self.cfg
        if c.requests is not None and self.requests >= c.requests:
            return False
        return not (c.tokens is not None and self.tokens >= c.tokens)

    def spare(self, now: float) -> bool:
        """Room for a background request (a probe) that leaves the clients at least half of the
        window's allowance."""
        self._roll(now)
        c = self.cfg
        if c.requests is not None and self.requests + 1 > c.requests / 2:
            return False
        return not (c.tokens is not None and self.tokens > c.tokens / 2)

    def on_start(self, now: float) -> None:
        self._roll(now)
        self.requests += 1

    def on_tokens(self, now: float, tokens: int) -> None:
        self._roll(now)
        self.tokens += tokens

    def resets_at(self, now: float) -> float:
        return self.cfg.offset + (math.floor((now - self.cfg.offset) / self.cfg.period) + 1) * self.cfg.period
