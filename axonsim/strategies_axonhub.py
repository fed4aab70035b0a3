"""AxonHub's load-balancing scorers and named mixes, with AxonHub's own magnitudes and defaults.

Source: looplj/axonhub `internal/server/orchestrator/lb_strategy_*.go` and `load_balancer.go`
(see ../shared/reference/axonhub-orchestrator.md §2). Each scorer is a small object with one
documented score; a mix sums its scorers (AxonHub: "all strategies carry equal weight") and picks
the highest total. Ties go to the higher weight, then to the earlier candidate; `round-robin` keeps
input order only (AxonHub builds it `WithoutWeightTieBreaker`).

Scorers (c = candidate, `now` in seconds, `ctx` the PickContext; the numbers are AxonHub's):

    error_aware          d = max(0, 1 − (now − last_failure)/window), window = routing.error_window
                         (AxonHub: 5 min); score = max(0, 200 − 30·consecutive_failures·d − 40·d).
                         The decayed form of PR #647: the penalty is gone one window after the last
                         failure even if the channel was never tried again, so nothing deadlocks.
    weight               score = max(weight, 0)/100 · 100           (0..100 for AxonHub's 0..100 weights)
    round_robin          n = ChannelState.selections (AxonHub's RequestCount: counted at selection
                         time, decayed over 600 s — decayed here up to `now` too), capped at 1000;
                         x = n · exp(−inactivity/300), inactivity = now − max(last_success, last_failure)
                         (no inactivity decay before the channel has finished any attempt);
                         score = max(10, 150·exp(−x/150))            (150 for an unused channel)
    weight_round_robin   the same with x' = x / max(weight/100, 0.01); traffic ends up roughly
                         proportional to weight (80/50/20/10 → ≈ 50/31/12.5/6.25 %)
    latency_aware        stream:     80·(0.7·clamp(1 − ewma_ttft/3 s) + 0.3·tp),
                                     tp = clamp((ewma_tps − 5)/95), 0.5 while tokens/s is unknown
                         non-stream: 80·clamp(1 − ewma_latency/3 s)
                         no sample for the request's kind → 40 (neutral)
    rate_limit_aware     u = max(requests in the last 60 s / rpm, tokens in the last 60 s / tpm,
                         in-flight / max_concurrency) over the channel's configured limits;
                         score = 100·(1 − u); no limit configured → 100.
                         AxonHub's hard-exhaustion score (−10000 when u ≥ 1 or the channel is in its
                         429 cooldown) is kept for direct use, but through the balancer it cannot
                         occur: cooling-down and at-limit channels are filtered out before any
                         strategy scores them (axonsim.balancer), which is the better design AxonHub's
                         −10000 approximates.
    random               U[0, 0.5), drawn per candidate at pick time (a tie-break only)
    circuit_breaker      e = AxonHub's effective weight of (channel, requested model):
                           1     closed
                           0.3   AxonHub's half_open: ≥ 3 consecutive failures of that model (within
                                 its 30-min failure TTL) while our breaker is still closed
                           0.01  AxonHub's "open, probe due" = our breaker half-open (probing)
                           0     open (never reaches a strategy: open breakers are filtered)
                         score = 200·e + (weight/100 + U[0,1) if e > 0)   (the U term only at pick time);
                         100 (neutral) when the request names no model
    round_robin_health   −10000 if consecutive_failures ≥ 3 and the last failure is within the
                         window (or has no time), else 0: moves failing channels behind healthy ones

Mixes (strategy names in the YAML):

    adaptive          error_aware + weight_round_robin + latency_aware + rate_limit_aware   (AxonHub's default)
    failover          weight + random + rate_limit_aware        (a strict weight order; random breaks ties)
    circuit-breaker   weight + circuit_breaker + rate_limit_aware
    round-robin       round_robin + rate_limit_aware + round_robin_health; ties keep input order
    latency_aware     ours: latency_aware / 80 on its own, in [0, 1]; ties to the least recently picked

AxonHub also adds QuotaAware to every mix; here an exhausted quota is an eligibility filter
(axonsim.health.Quota), so it is left out. Weight 0 is a cold standby here: when a candidate with a
positive weight is offered alongside weight-0 ones, the weight-0 ones are never picked (execution
already tiers them; `pick` keeps the rule when a strategy is used on its own). AxonHub's adaptive
mode does send weight-0 channels some traffic (its issue #348); ours deliberately does not.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

from axonsim.health import CLOSED, HALF_OPEN, OPEN
from axonsim.state import NEVER, ChannelState
from axonsim.strategies import NO_CONTEXT, PickContext, Strategy, _argmax_lru

EXHAUSTED = -10000.0  # AxonHub's rateLimitExhaustedScore: more negative than all positive scores together

# AxonHub's constants (orchestrator/lb_strategy_*.go, biz/model_circuit_breaker.go)
RR_MAX, RR_MIN, RR_SCALE, RR_CAP, RR_INACTIVITY = 150.0, 10.0, 150.0, 1000.0, 300.0
SELECTION_WINDOW = 600.0  # AxonHub's metrics window; ChannelState.selections decays with this horizon
LATENCY_MAX, TTFT_MAX, LATENCY_NONSTREAM_MAX = 80.0, 3.0, 3.0
TPS_MIN, TPS_MAX, TTFT_SHARE, TPS_SHARE = 5.0, 100.0, 0.7, 0.3
RANDOM_MAX = 0.5
BREAKER_MAX, BREAKER_HALF_OPEN, BREAKER_PROBE = 200.0, 0.3, 0.01
BREAKER_HALF_OPEN_FAILURES, BREAKER_FAILURE_TTL = 3, 1800.0
RR_HEALTH_FAILURES = 3


def standby_pool(cands: Sequence[ChannelState]) -> Sequence[int]:
    """Indices a strategy may pick: the positive-weight candidates when there are both positive and
    weight-0 ones (weight 0 = only when nothing else is offered), else all of them."""
    pos = zero = False
    for c in cands:
        if c.weight > 0:
            pos = True
        else:
            zero = True
    if pos and zero:
        return [i for i, c in enumerate(cands) if c.weight > 0]
    return range(len(cands))


def _clamp01(x: float) -> float:
    return 0.0 if x < 0.0 else 1.0 if x > 1.0 else x


# -- the scores, as plain functions (the Composite strategy reuses latency_aware_score) ------------


def error_aware_score(c: ChannelState, now: float, window: float = 300.0) -> float:
    lf = c.last_failure
    if lf == NEVER:
        return 200.0
    d = 1.0 - (now - lf) / window
    if d <= 0.0:
        return 200.0
    if d > 1.0:  # a failure stamped after `now` (clock skew between drivers): full penalty, no more
        d = 1.0
    s = 200.0 - 30.0 * c.consecutive_failures * d - 40.0 * d
    return s if s > 0.0 else 0.0


def weight_score(c: ChannelState) -> float:
    return max(c.weight, 0.0) / 100.0 * 100.0


def request_load(c: ChannelState, now: float) -> float:
    """AxonHub's effective request count: capped, then decayed by inactivity."""
    n = c.selections
    if n <= 0.0:
        return 0.0
    if now > c.selections_at:
        n *= math.exp(-(now - c.selections_at) / SELECTION_WINDOW)
    if n > RR_CAP:
        n = RR_CAP
    last = c.last_success if c.last_success > c.last_failure else c.last_failure
    if last != NEVER and now > last:
        n *= math.exp(-(now - last) / RR_INACTIVITY)
    return n


def round_robin_score(c: ChannelState, now: float) -> float:
    x = request_load(c, now)
    return max(RR_MIN, RR_MAX * math.exp(-x / RR_SCALE)) if x > 0.0 else RR_MAX


def weight_round_robin_score(c: ChannelState, now: float) -> float:
    x = request_load(c, now)
    if x <= 0.0:
        return RR_MAX
    x /= max(c.weight / 100.0, 0.01)
    return max(RR_MIN, RR_MAX * math.exp(-x / RR_SCALE))


def latency_aware_score(c: ChannelState, stream: bool) -> float:
    if stream:
        ttft = c.ewma_ttft
        if ttft is None:
            return LATENCY_MAX / 2.0
        ft = _clamp01(1.0 - ttft / TTFT_MAX)
        tps = c.ewma_tps
        tp = _clamp01((tps - TPS_MIN) / (TPS_MAX - TPS_MIN)) if tps is not None and tps > 0.0 else 0.5
        return LATENCY_MAX * (TTFT_SHARE * ft + TPS_SHARE * tp)
    lat = c.ewma_latency
    if lat is None:
        return LATENCY_MAX / 2.0
    return LATENCY_MAX * _clamp01(1.0 - lat / LATENCY_NONSTREAM_MAX)


def rate_limit_aware_score(c: ChannelState, now: float) -> float:
    if c.cooldown_until > now:
        return EXHAUSTED
    lim = c.limiter
    cfg = lim.cfg
    if cfg.rpm is None and cfg.tpm is None and cfg.max_concurrency is None:
        return 100.0
    u = 0.0
    if cfg.rpm is not None or cfg.tpm is not None:
        req, tok = lim.window.usage(now)
        if cfg.rpm is not None:
            u = max(u, req / cfg.rpm)
        if cfg.tpm is not None:
            u = max(u, tok / cfg.tpm)
    if cfg.max_concurrency is not None:
        u = max(u, lim.inflight / cfg.max_concurrency)
    return EXHAUSTED if u >= 1.0 else 100.0 * (1.0 - u)


def breaker_weight(c: ChannelState, model: str, now: float) -> float:
    """AxonHub's effective weight of (channel, model) from our breaker (see the module docstring)."""
    b = c.breakers.get(model)
    if b is None and model:
        upstream = c.channel.serves(model)  # breakers are keyed by the upstream model name
        if upstream is not None:
            b = c.breakers.get(upstream)
    if b is None:
        # no breaker for this model: it never failed here, or breakers are off (then the channel's count)
        failures = c.consecutive_failures if c.breaker_cfg is None else 0
        state = CLOSED
    else:
        failures = b.failures
        state = b.state
        if state == OPEN and now >= b.open_until:
            state = HALF_OPEN
    if state == OPEN:
        return 0.0
    if state == HALF_OPEN:
        return BREAKER_PROBE
    if failures >= BREAKER_HALF_OPEN_FAILURES and (c.last_failure == NEVER or now - c.last_failure < BREAKER_FAILURE_TTL):
        return BREAKER_HALF_OPEN
    return 1.0


# -- scorers: one object per AxonHub strategy -------------------------------------------------------


class Scorer:
    """One AxonHub strategy's score. `rng=None` asks for the deterministic part only (the trace)."""

    name = "scorer"
    jitter_only = False  # nothing but a random draw: left out of the trace when there is no rng

    def score(self, c: ChannelState, now: float, ctx: PickContext, rng: random.Random | None = None) -> float:
        raise NotImplementedError


class ErrorAwareScore(Scorer):
    name = "error_aware"

    def __init__(self, window: float = 300.0) -> None:
        self.window = window

    def score(self, c: ChannelState, now: float, ctx: PickContext, rng: random.Random | None = None) -> float:
        return error_aware_score(c, now, self.window)


class WeightScore(Scorer):
    name = "weight"

    def score(self, c: ChannelState, now: float, ctx: PickContext, rng: random.Random | None = None) -> float:
        return weight_score(c)


class RoundRobinScore(Scorer):
    name = "round_robin"

    def score(self, c: ChannelState, now: float, ctx: PickContext, rng: random.Random | None = None) -> float:
        return round_robin_score(c, now)


class WeightRoundRobinScore(Scorer):
    name = "weight_round_robin"

    def score(self, c: ChannelState, now: float, ctx: PickContext, rng: random.Random | None = None) -> float:
        return weight_round_robin_score(c, now)


class LatencyAwareScore(Scorer):
    name = "latency_aware"

    def score(self, c: ChannelState, now: float, ctx: PickContext, rng: random.Random | None = None) -> float:
        return latency_aware_score(c, ctx.stream)


class RateLimitAwareScore(Scorer):
    name = "rate_limit_aware"

    def score(self, c: ChannelState, now: float, ctx: PickContext, rng: random.Random | None = None) -> float:
        return rate_limit_aware_score(c, now)


class RandomScore(Scorer):
    name = "random"
    jitter_only = True

    def score(self, c: ChannelState, now: float, ctx: PickContext, rng: random.Random | None = None) -> float:
        return rng.random() * RANDOM_MAX if rng is not None else 0.0


class CircuitBreakerScore(Scorer):
    name = "circuit_breaker"

    def score(self, c: ChannelState, now: float, ctx: PickContext, rng: random.Random | None = None) -> float:
        if not ctx.model:
            return BREAKER_MAX / 2.0  # AxonHub: no requested model → neutral
        e = breaker_weight(c, ctx.model, now)
        if e <= 0.0:
            return 0.0
        s = BREAKER_MAX * e + max(c.weight, 0.0) / 100.0
        return s + rng.random() if rng is not None else s


class RoundRobinHealthScore(Scorer):
    name = "round_robin_health"

    def __init__(self, window: float = 300.0) -> None:
        self.window = window

    def score(self, c: ChannelState, now: float, ctx: PickContext, rng: random.Random | None = None) -> float:
        if c.consecutive_failures < RR_HEALTH_FAILURES:
            return 0.0
        if c.last_failure == NEVER or now - c.last_failure < self.window:
            return EXHAUSTED
        return 0.0


# -- mixes ------------------------------------------------------------------------------------------


class AxonHubMix(Strategy):
    """The sum of a few scorers; the highest total wins (ties: weight descending unless
    `weight_ties` is off, then the earlier candidate)."""

    name = "axonhub-mix"
    weight_ties = True

    def __init__(self, scorers: Sequence[Scorer]) -> None:
        self.scorers = tuple(scorers)

    def scores(self, cands: Sequence[ChannelState], now: float, ctx: PickContext = NO_CONTEXT) -> list[float]:
        scorers = self.scorers
        return [sum(s.score(c, now, ctx) for s in scorers) for c in cands]

    def terms(self, cands: Sequence[ChannelState], now: float, rng: random.Random | None,
              ctx: PickContext = NO_CONTEXT) -> list[dict[str, float]]:
        scorers = [s for s in self.scorers if rng is not None or not s.jitter_only]
        return [{s.name: s.score(c, now, ctx, rng) for s in scorers} for c in cands]

    def pick(self, cands: Sequence[ChannelState], now: float, rng: random.Random,
             ctx: PickContext = NO_CONTEXT) -> int:
        if len(cands) == 1:
            return 0
        scorers = self.scorers
        ties = self.weight_ties
        best = -1
        bs = 0.0
        bw = 0.0
        for i in standby_pool(cands):
            c = cands[i]
            s = 0.0
            for sc in scorers:
                s += sc.score(c, now, ctx, rng)
            if best < 0 or s > bs or (ties and s == bs and c.weight > bw):
                best, bs, bw = i, s, c.weight
        return best


class Adaptive(AxonHubMix):
    name = "adaptive"

    def __init__(self, window: float = 300.0) -> None:
        super().__init__((ErrorAwareScore(window), WeightRoundRobinScore(), LatencyAwareScore(),
                          RateLimitAwareScore()))


class Failover(AxonHubMix):
    name = "failover"

    def __init__(self) -> None:
        super().__init__((WeightScore(), RandomScore(), RateLimitAwareScore()))


class CircuitBreaker(AxonHubMix):
    name = "circuit-breaker"

    def __init__(self) -> None:
        super().__init__((WeightScore(), CircuitBreakerScore(), RateLimitAwareScore()))


class RoundRobinMix(AxonHubMix):
    name = "round-robin"
    weight_ties = False

    def __init__(self, window: float = 300.0) -> None:
        super().__init__((RoundRobinScore(), RateLimitAwareScore(), RoundRobinHealthScore(window)))


class LatencyAware(Strategy):
    """Ours: AxonHub's LatencyAware score divided by 80, in [0, 1]."""

    name = "latency_aware"

    def scores(self, cands: Sequence[ChannelState], now: float, ctx: PickContext = NO_CONTEXT) -> list[float]:
        stream = ctx.stream
        return [latency_aware_score(c, stream) / LATENCY_MAX for c in cands]

    def pick(self, cands: Sequence[ChannelState], now: float, rng: random.Random,
             ctx: PickContext = NO_CONTEXT) -> int:
        pool = standby_pool(cands)
        if len(pool) == len(cands):
            return _argmax_lru(self.scores(cands, now, ctx), cands)
        sub = [cands[i] for i in pool]
        return pool[_argmax_lru(self.scores(sub, now, ctx), sub)]
