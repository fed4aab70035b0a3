"""Local rate limits (RPM, TPM, max concurrency) per channel and key, and the retry budget.

RPM/TPM use a sliding window estimated from two fixed one-minute windows (the current count plus
the previous minute's count weighted by how much of it still overlaps the last 60 s) — O(1) per
call, the same arithmetic Cloudflare and Envoy's local rate limiters use. It assumes the previous
minute's calls were spread evenly: for steady traffic it is within a few percent of an exact log,
but calls bunched at the end of a minute are under-counted just after it, so a burst across the
boundary can pass the limit by up to about a quarter within one sliding minute. A channel at its limit is skipped before a call is wasted.
"""

from __future__ import annotations

import math
from collections import deque

from axonsim.config import LimitsConfig, RetryBudget

WINDOW = 60.0


class RateWindow:
    __slots__ = ("_win", "_cur_req", "_cur_tok", "_prev_req", "_prev_tok")

    def __init__(self) -> None:
        self._win = -1
        self._cur_req = 0
        self._cur_tok = 0
        self._prev_req = 0
        self._prev_tok = 0

    def _roll(self, now: float) -> float:
        w = int(now // WINDOW)
        if w != self._win:
            if w == self._win + 1:
                self._prev_req, self._prev_tok = self._cur_req, self._cur_tok
            else:
                self._prev_req = self._prev_tok = 0
            self._cur_req = self._cur_tok = 0
            self._win = w
        return 1.0 - (now - w * WINDOW) / WINDOW  # share of the previous window still inside the last 60 s

    def usage(self, now: float) -> tuple[float, float]:
        """(requests, tokens) over the last 60 s."""
        f = self._roll(now)
        return self._cur_req + f * self._prev_req, self._cur_tok + f * self._prev_tok

    def drains_to(self, now: float, room: float, tokens: bool) -> float:
        """When the requests (or the tokens) over the last 60 s first fall to `room` if no traffic
        came: now if they are there already, math.inf if never (room < 0)."""
        f = self._roll(now)
        cur, prev = (self._cur_tok, self._prev_tok) if tokens else (self._cur_req, self._prev_req)
        if cur + f * prev <= room:
            return now
        if room < 0:
            return math.inf
        start = self._win * WINDOW
        if cur <= room:  # in this window, as the previous one's weight fades (prev > 0 here)
            return start + WINDOW * (1.0 - (room - cur) / prev)
        # in the next one, where this window's count weighs as the previous (cur > room ≥ 0)
        return start + WINDOW * (2.0 - room / cur)

    def add(self, now: float, requests: int, tokens: int) -> None:
        self._roll(now)
        self._cur_req += requests
        self._cur_tok += tokens


class Limiter:
    """RPM / TPM / concurrency limits of one channel or key."""

    __slots__ = ("cfg", "window", "inflight", "active")

    def __init__(self, cfg: LimitsConfig) -> None:
        self.cfg = cfg
        self.window = RateWindow()
        self.inflight = 0
        # nothing configured: callers skip the bookkeeping entirely
        self.active = cfg.rpm is not None or cfg.tpm is not None or cfg.max_concurrency is not None

    def headroom(self, now: float, tokens: int) -> float:
        """1 − the highest utilisation ratio after admitting this request; ≤ 0 means at the limit."""
        c = self.cfg
        worst = 0.0
        if c.rpm is not None or c.tpm is not None:
            req, tok = self.window.usage(now)
            if c.rpm is not None:
                worst = max(worst, (req + 1) / c.rpm)
            if c.tpm is not None:
                worst = max(worst, (tok + tokens) / c.tpm)
        if c.max_concurrency is not None:
            worst = max(worst, (self.inflight + 1) / c.max_concurrency)
        return 1.0 - worst

    def allows(self, now: float, tokens: int) -> bool:
        return self.headroom(now, tokens) >= 0.0

    def spare(self, now: float) -> bool:
        """Room for a background request (a probe) that leaves the clients a free slot and at least
        half of each rate limit."""
        c = self.cfg
        if c.max_concurrency is not None and self.inflight + 1 >= c.max_concurrency:
            return False  # the probe's slot, and one left for a client
        if c.rpm is not None or c.tpm is not None:
            req, tok = self.window.usage(now)
            if c.rpm is not None and req + 1 > c.rpm / 2:
                return False
            if c.tpm is not None and tok > c.tpm / 2:
                return False
        return True

    def frees_at(self, now: float, tokens: int) -> float:
        """When this limiter would next admit a request of `tokens`, if no other traffic came:
        exact for the rate windows, a second from now for a full concurrency limit (a slot frees
        when a call ends, which nothing here knows), math.inf for a request over the TPM limit."""
        c = self.cfg
        t = now
        if c.rpm is not None:
            t = max(t, self.window.drains_to(now, c.rpm - 1, False))
        if c.tpm is not None:
            t = max(t, self.window.drains_to(now, c.tpm - tokens, True))
        if c.max_concurrency is not None and self.inflight >= c.max_concurrency:
            t = max(t, now + 1.0)
        return t

    def on_start(self, now: float, tokens: int) -> None:
        self.window.add(now, 1, tokens)
        self.inflight += 1

    def on_end(self) -> None:
        if self.inflight > 0:
            self.inflight -= 1


class Budget:
    """Retry budget (Envoy/gRPC style): extra attempts (retries and failovers) over the last
    `window` seconds may not exceed ratio × client requests in that window + min_retries. An
    outage therefore multiplies upstream load by at most (1 + ratio), not by max_attempts."""

    __slots__ = ("cfg", "enabled", "_requests", "_retries")

    def __init__(self, cfg: RetryBudget) -> None:
        self.cfg = cfg
        self.enabled = cfg.enabled  # read per request: a plain field, not the config model's
        self._requests: deque[float] = deque()
        self._retries: deque[float] = deque()

    def _trim(self, now: float) -> None:
        edge = now - self.cfg.window
        for q in (self._requests, self._retries):
            while q and q[0] <= edge:
                q.popleft()

    def on_request(self, now: float) -> None:
        if self.enabled:
            self._requests.append(now)

    def try_retry(self, now: float) -> bool:
        if not self.enabled:
            return True
        self._trim(now)
        if len(self._retries) + 1 > self.cfg.ratio * len(self._requests) + self.cfg.min_retries:
            return False
        self._retries.append(now)
        return True
