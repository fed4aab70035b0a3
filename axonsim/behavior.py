"""Channel behaviour model: what one attempt on a channel will do, drawn from its configured
distributions and its state (token buckets, outages, incidents, quota). The simulator's channels
and the mock provider both use it, so a simulated channel can be stood up for real with the same
numbers.

Draw discipline: `sample(rng, ...)` always takes the same four draws from `rng` in the same order
(fault uniform, time to first token, output length, tokens per second), whatever the outcome, so
results do not depend on which branch ran. The outage process draws from its own stream, seeded
when the model is built, so it is the same whoever asks and whenever.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable

from axonsim.config import Behavior, Constant, Distribution, Empirical, Exponential, Gamma, LogNormal

# Fault kinds an attempt can come to (None: it succeeds).
ERROR = "error"  # HTTP error_status (500 by default)
RATE_LIMITED = "rate_limited"  # 429 + Retry-After
OVERLOADED = "overloaded"  # 503 (or 529)
BAD_GATEWAY = "bad_gateway"  # 502
RESET = "reset"  # connection reset before any byte
TIMEOUT = "timeout"  # never answers
STREAM_CUT = "stream_cut"  # starts fine, stops part-way without a terminal event
OUTAGE = "outage"  # the channel is down (renewal process or a scheduled incident)

FULL_STATUS = 503  # what a channel at max_concurrency with when_full=reject answers


class AttemptPlan:
    __slots__ = ("fault", "status", "ttft", "output_tokens", "generation", "retry_after", "cut_tokens")

    def __init__(self, fault: str | None, status: int, ttft: float, output_tokens: int, generation: float,
                 retry_after: float | None, cut_tokens: int = 0) -> None:
        self.fault = fault
        self.status = status
        self.ttft = ttft  # seconds until the first token (or until the error is answered)
        self.output_tokens = output_tokens
        self.generation = generation  # seconds from the first token to the last (to the cut, if cut)
        self.retry_after = retry_after
        self.cut_tokens = cut_tokens  # tokens sent before a stream cut

    @property
    def duration(self) -> float:
        return self.ttft + self.generation


def sampler(d: Distribution | float) -> Callable[[random.Random], float]:
    """A function rng -> float for a distribution, bound once (no per-draw dispatch). Every sampler
    takes exactly one uniform-based draw sequence from the rng it is given."""
    if isinstance(d, (int, float)):
        v0 = float(d)
        return lambda rng: v0
    if isinstance(d, Constant):
        v = d.value
        return lambda rng: v
    if isinstance(d, Exponential):
        rate = 1.0 / d.mean
        return lambda rng: rng.expovariate(rate)
    if isinstance(d, LogNormal):
        mu, sigma = math.log(d.median), d.sigma
        return lambda rng: rng.lognormvariate(mu, sigma)
    if isinstance(d, Empirical):
        vals = list(d.values)
        n = len(vals)
        return lambda rng: vals[min(n - 1, int(rng.random() * n))]
    if isinstance(d, Gamma):
        shape = 1.0 / (d.cv * d.cv)
        scale = d.mean / shape
        return lambda rng: rng.gammavariate(shape, scale)
    raise TypeError(f"unknown distribution {d!r}")


class TokenBucket:
    """Capacity `limit`, refilled at limit/60 per second, starting full."""

    __slots__ = ("limit", "rate", "level", "at")

    def __init__(self, per_minute: float) -> None:
        self.limit = per_minute
        self.rate = per_minute / 60.0
        self.level = per_minute
        self.at = 0.0

    def _refill(self, now: float) -> None:
        if now > self.at:
            self.level = min(self.limit, self.level + (now - self.at) * self.rate)
            self.at = now

    def wait_for(self, now: float, amount: float) -> float:
        """0 if `amount` fits now, else the exact seconds until it will."""
        self._refill(now)
        if amount <= self.level:
            return 0.0
        return (min(amount, self.limit) - self.level) / self.rate

    def take(self, amount: float) -> None:
        self.level -= amount


class OutageProcess:
    """Alternating up/down periods, generated lazily from a private stream as time moves on."""

    __slots__ = ("mtbf", "mttr", "rng", "down_start", "down_end")

    def __init__(self, mtbf: float, mttr: Callable[[random.Random], float], seed: int) -> None:
        self.mtbf = mtbf
        self.mttr = mttr
        self.rng = random.Random(seed)
        self.down_start = self.rng.expovariate(1.0 / mtbf)
        self.down_end = self.down_start + mttr(self.rng)

    def down(self, now: float) -> bool:
        while now >= self.down_end:
            self.down_start = self.down_end + self.rng.expovariate(1.0 / self.mtbf)
            self.down_end = self.down_start + self.mttr(self.rng)
        return now >= self.down_start


def _lognormal(d: Distribution | float) -> tuple[float, float] | None:
    """(mu, sigma) of a lognormal distribution, else None: `sample` draws these without the sampler's extra call."""
    return (math.log(d.median), d.sigma) if isinstance(d, LogNormal) else None


def _constant(d: Distribution | float) -> float | None:
    if isinstance(d, (int, float)):
        return float(d)
    return d.value if isinstance(d, Constant) else None


class BehaviorModel:
    __slots__ = ("behavior", "_ttft", "_tokens", "_tps", "_cuts", "max_concurrency", "queue", "_prefill",
                 "_load", "_rpm", "_tpm", "outages", "incidents", "_quota", "_quota_win", "_quota_req",
                 "_quota_tok", "_slope", "_has_state", "_ttft_ln", "_tokens_ln", "_tps_const", "_rng", "_z",
                 "_lean", "_fast", "load_aware")

    def __init__(self, behavior: Behavior, seed: int = 0) -> None:
        self.behavior = behavior
        self._ttft = sampler(behavior.ttft)
        self._tokens = sampler(behavior.output_tokens)
        self._tps = sampler(behavior.tokens_per_second)
        # The common distributions, drawn inline by `sample` (the same draws the samplers take).
        self._ttft_ln = _lognormal(behavior.ttft)
        self._tokens_ln = _lognormal(behavior.output_tokens)
        self._tps_const = _constant(behavior.tokens_per_second)
        self._rng: random.Random | None = None  # the rng `_z` belongs to
        self._z: Callable[[], float] | None = None
        f = behavior.faults
        # Cumulative thresholds on one uniform draw: the first band that contains it wins.
        bands = [(behavior.error_rate, ERROR), (f.rate_limited, RATE_LIMITED), (f.overloaded, OVERLOADED),
                 (f.bad_gateway, BAD_GATEWAY), (f.reset, RESET), (f.timeout, TIMEOUT), (f.stream_cut, STREAM_CUT)]
        acc = 0.0
        cuts = []
        for p, kind in bands:
            if p > 0:
                acc += p
                cuts.append((acc, kind))
        if acc > 1.0 + 1e-9:
            raise ValueError("behavior: error_rate + fault probabilities exceed 1")
        self._cuts = tuple(cuts)
        self._slope = f.overload_slope
        self.max_concurrency = behavior.max_concurrency
        self.queue = behavior.when_full == "queue"
        self._prefill = behavior.prefill_per_token
        self._load = behavior.load_factor
        rl = behavior.rate_limits
        self._rpm = TokenBucket(rl.rpm) if rl.rpm else None
        self._tpm = TokenBucket(rl.tpm) if rl.tpm else None
        o = behavior.outages
        self.outages = OutageProcess(o.mtbf, sampler(o.mttr), seed * 7919 + 17) if o else None
        self.incidents = sorted(behavior.incidents, key=lambda i: i.start)
        self._quota = behavior.quota
        self._quota_win = -1
        self._quota_req = 0
        self._quota_tok = 0
        self._has_state = bool(self._rpm or self._tpm or self.outages or self.incidents or self._quota
                               or self._prefill or self._load or self._slope)
        self.load_aware = bool(self._load or self._slope)  # whether `sample` reads its utilisation
        # The lean path of `sample`: lognormal TTFT and output length at a constant speed, nothing
        # that depends on time, load or the request. (mu, sigma) of both, the speed, and the sum of
        # the fault probabilities (a uniform at or above it is no fault). Used with an rng that
        # hands out lognormal pairs in bulk (the simulator's ChannelRandom).
        ttft_ln, tokens_ln, tps = self._ttft_ln, self._tokens_ln, self._tps_const
        self._lean = ((*ttft_ln, *tokens_ln, tps, cuts[-1][0] if cuts else 0.0)
                      if ttft_ln is not None and tokens_ln is not None and tps is not None and not self._has_state
                      else None)
        # once an rng with lognormal pairs is bound: (its pair source for _lean, the speed, the no-fault bound)
        self._fast: tuple[Callable[[], tuple[float, int]], float, float] | None = None

    def sample(self, rng: random.Random, now: float = 0.0, utilisation: float = 0.0,
               input_tokens: int = 0, output_tokens: int | None = None) -> AttemptPlan:
        """`output_tokens`: the request's own output length (a workload or trace that knows it);
        the model's draw is still taken, so the stream's position does not depend on it."""
        if rng is not self._rng:
            # An rng with a bulk standard-normal source (the simulator's ChannelRandom): its
            # lognormvariate(mu, sigma) is exp(mu + sigma·z), computed here without the call.
            self._rng = rng
            self._z = getattr(rng, "standard_normal", None)
            pairs = getattr(rng, "lognormal_pairs", None)
            lean = self._lean
            self._fast = (pairs(*lean[:4]), *lean[4:]) if lean is not None and pairs is not None else None
        fast = self._fast
        if fast is not None:
            # The lean model (see __init__): the same draws and arithmetic as below, fewer steps.
            # tests/test_behavior.py holds the two paths equal.
            pair, speed, clean = fast
            u = rng.random()
            ttft, tokens = pair()  # exp(mu + sigma·z), round(exp(mu_out + sigma_out·z'))
            if output_tokens is not None:
                tokens = output_tokens
            if u >= clean:
                return AttemptPlan(None, 200, ttft, tokens, tokens / speed, None)
            return self._plan(self._band(u), ttft, tokens, speed)
        z = self._z
        u = rng.random()
        ln = self._ttft_ln
        if ln is None:
            ttft = self._ttft(rng)
        else:
            ttft = math.exp(ln[0] + ln[1] * z()) if z is not None else rng.lognormvariate(ln[0], ln[1])
        ln = self._tokens_ln
        if ln is None:
            tokens = int(round(self._tokens(rng)))
        else:
            tokens = round(math.exp(ln[0] + ln[1] * z()) if z is not None else rng.lognormvariate(ln[0], ln[1]))
        if output_tokens is not None:
            tokens = output_tokens
        tps = self._tps_const
        if tps is None:
            tps = self._tps(rng)
        if self._has_state:
            plan = self._stateful(u, ttft, tokens, tps, now, utilisation, input_tokens)
            if plan is not None:
                return plan
            if self._prefill:
                ttft += self._prefill * input_tokens
            if self._load:
                ttft *= 1.0 + self._load * utilisation
            for inc in self.incidents:
                if inc.start <= now < inc.end:
                    ttft *= inc.ttft_factor
        fault = None
        slope = self._slope
        if slope and utilisation:
            extra = slope * utilisation
            if u < extra:
                fault = OVERLOADED
            else:
                u -= extra
        if fault is None:
            fault = self._band(u)
        return self._plan(fault, ttft, tokens, tps)

    def without_limits(self) -> BehaviorModel:
        """This model with no quota or rate limit of its own (a probe's copy: it meets the
        channel's through the channel's model, `admit`). Returns self."""
        self._rpm = self._tpm = None
        self._quota = None
        return self

    def _band(self, u: float) -> str | None:
        """The fault whose band contains the uniform `u`, or None."""
        for cut, kind in self._cuts:
            if u < cut:
                return kind
        return None

    def _plan(self, fault: str | None, ttft: float, tokens: int, tps: float) -> AttemptPlan:
        if fault is None:
            return AttemptPlan(None, 200, ttft, tokens, tokens / tps, None)
        if fault == STREAM_CUT:
            sent = max(1, int(tokens * self.behavior.faults.cut_after)) if tokens > 1 else 0
            return AttemptPlan(fault, 200, ttft, tokens, sent / tps, None, sent)
        b = self.behavior
        if fault == ERROR:
            return AttemptPlan(fault, b.error_status, ttft, 0, 0.0, None)
        if fault == RATE_LIMITED:
            return AttemptPlan(fault, 429, ttft, 0, 0.0, b.faults.retry_after)
        if fault == OVERLOADED:
            return AttemptPlan(fault, b.faults.overload_status, ttft, 0, 0.0, None)
        if fault == BAD_GATEWAY:
            return AttemptPlan(fault, 502, ttft, 0, 0.0, None)
        return AttemptPlan(fault, 0, ttft, 0, 0.0, None)  # RESET / TIMEOUT: no HTTP answer

    def _stateful(self, u: float, ttft: float, tokens: int, tps: float, now: float, utilisation: float,
                  input_tokens: int) -> AttemptPlan | None:
        """Outages, incidents, quota and rate limits: answered quickly (a fraction of the TTFT),
        as real providers reject before generating."""
        fast = min(ttft, 0.05)
        if self.outages is not None and self.outages.down(now):
            return AttemptPlan(OUTAGE, self.behavior.outages.status, fast, 0, 0.0, None)  # type: ignore[union-attr]
        for inc in self.incidents:
            if inc.start <= now < inc.end:
                if inc.status is not None:
                    return AttemptPlan(OUTAGE, inc.status, fast, 0, 0.0, None)
                if inc.error_rate and u < inc.error_rate:
                    return AttemptPlan(ERROR, self.behavior.error_status, ttft, 0, 0.0, None)
        return self.admit(now, input_tokens + tokens, fast)

    def admit(self, now: float, cost: int, fast: float) -> AttemptPlan | None:
        """The provider's quota and rate limits for one request of `cost` tokens at `now`: a 429 plan
        if they refuse it (answered after `fast` seconds), else None, the request counted against them.
        (Also what the simulator's probes meet: they share the channel's limits.)"""
        q = self._quota
        if q is not None:
            w = math.floor(now / q.period)
            if w != self._quota_win:
                self._quota_win, self._quota_req, self._quota_tok = w, 0, 0
            if (q.requests is not None and self._quota_req >= q.requests) or (
                    q.tokens is not None and self._quota_tok >= q.tokens):
                return AttemptPlan(RATE_LIMITED, 429, fast, 0, 0.0, (w + 1) * q.period - now)
        if self._rpm is not None or self._tpm is not None:
            wait = 0.0
            if self._rpm is not None:
                wait = max(wait, self._rpm.wait_for(now, 1.0))
            if self._tpm is not None:
                wait = max(wait, self._tpm.wait_for(now, float(cost)))
            if wait > 0.0:
                return AttemptPlan(RATE_LIMITED, 429, fast, 0, 0.0, wait)
            if self._rpm is not None:
                self._rpm.take(1.0)
            if self._tpm is not None:
                self._tpm.take(float(cost))
        if q is not None:
            self._quota_req += 1
            self._quota_tok += cost
        return None
