"""Peers' strategies as their users know them: LiteLLM's router strategies, Envoy's least_request,
and Finagle/Linkerd's power of two choices on peak-EWMA.

Scores (higher is better; `pick` is what routes, `scores` is what the decision trace shows):

    simple-shuffle   LiteLLM's default: P(c) = w(c)/Σw, uniform when every weight is 0 (the same
                     draw as `random`). LiteLLM falls back from `weight` to `rpm` to `tpm`; a weight
                     is always set here (default 100), so only the weight is read.
    least-busy       LiteLLM: fewest in-flight requests. score = −inflight; ties uniformly at random.
    usage-based      LiteLLM usage-based-routing(-v2): among channels whose limits admit this request
                     (requests + 1 ≤ rpm and tokens + request tokens ≤ tpm over the last 60 s), the one
                     with the fewest tokens in the last 60 s; ties uniformly at random.
                     score = −tokens in the last 60 s. Channels at a limit are already filtered out
                     by the balancer, so the admission test only matters when used on its own.
                     (LiteLLM counts a fixed clock minute of actual usage; ours is the limiter's
                     sliding 60-s window of estimated tokens, counted when an attempt starts.)
    latency-based    LiteLLM latency-based-routing: L(c) = ewma_ttft for streams (ewma_latency when no
                     TTFT sample), ewma_latency otherwise; a channel without samples has L = 0, so it
                     is explored first. With b = options.latency_buffer (LiteLLM's
                     lowest_latency_buffer), pick uniformly among channels with L ≤ (1 + b)·min L.
                     score = −L. (LiteLLM averages its last 10 samples per output token; ours is the
                     channel's EWMA in seconds.)
    cost-based       LiteLLM cost-based-routing: the cheapest by p = input + output price per million
                     tokens; unpriced channels last; ties by least-busy, then uniformly at random.
                     score = 1/(1 + p), 0 when unpriced.
    least_request    Envoy LEAST_REQUEST. All weights equal: sample k = options.choice_count candidates
                     uniformly without replacement (Envoy draws with replacement; distinct draws never
                     waste a choice) and take the fewest active requests, ties to the first drawn;
                     score = −inflight. Unequal weights: Envoy's earliest-deadline-first schedule on
                     the dynamic weight w' = weight/(inflight + 1)^options.active_request_bias,
                     computed for a channel when it is (re)inserted, i.e. when it was just picked
                     (bias 0 = plain weighted round robin); score = w'.
    peak_ewma        Finagle/Linkerd P2C + peak-EWMA: draw two distinct candidates uniformly, keep the
                     lower cost = e·(inflight + 1), ties to the first drawn; score = −cost.
                     e = peak_ewma·exp(−(now − peak_at)/τ), τ = options.ewma_decay: like Finagle's and
                     Tower's estimators, the estimate decays towards 0 while no sample arrives, so a
                     channel that was slow is tried again. A channel without samples uses the prior
                     options.default_latency (Linkerd: EWMA_DEFAULT_RTT). ChannelState updates the
                     peak with a fixed 10-s horizon; only this read-time decay honours ewma_decay.

Weight 0 is a cold standby (see axonsim.strategies_axonhub): `pick` never chooses a weight-0
candidate while a positive-weight one is offered. Except where noted, peers' strategies otherwise
ignore weights, as the originals do.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

from axonsim.state import ChannelState
from axonsim.strategies import NO_CONTEXT, PickContext, Random, Strategy
from axonsim.strategies_axonhub import standby_pool


def _uniform_among(rng: random.Random, idx: list[int]) -> int:
    return idx[0] if len(idx) == 1 else idx[int(rng.random() * len(idx))]


def _two_distinct(pool: Sequence[int], rng: random.Random) -> tuple[int, int]:
    n = len(pool)
    i = int(rng.random() * n)
    j = int(rng.random() * (n - 1))
    if j >= i:
        j += 1
    return pool[i], pool[j]


class SimpleShuffle(Random):
    name = "simple-shuffle"


class LeastBusy(Strategy):
    name = "least-busy"

    def scores(self, cands: Sequence[ChannelState], now: float, ctx: PickContext = NO_CONTEXT) -> list[float]:
        return [-float(c.inflight) for c in cands]

    def pick(self, cands: Sequence[ChannelState], now: float, rng: random.Random,
             ctx: PickContext = NO_CONTEXT) -> int:
        best: list[int] = []
        low = 0
        for i in standby_pool(cands):
            f = cands[i].inflight
            if not best or f < low:
                best, low = [i], f
            elif f == low:
                best.append(i)
        return _uniform_among(rng, best)


def tokens_last_minute(c: ChannelState, now: float) -> float:
    return c.limiter.window.usage(now)[1]


def admits(c: ChannelState, now: float, tokens: int) -> bool:
    """LiteLLM's usage check: one more request and this request's tokens fit in rpm and tpm."""
    cfg = c.limiter.cfg
    if cfg.rpm is None and cfg.tpm is None:
        return True
    req, tok = c.limiter.window.usage(now)
    if cfg.rpm is not None and req + 1 > cfg.rpm:
        return False
    return cfg.tpm is None or tok + tokens <= cfg.tpm


class UsageBased(Strategy):
    name = "usage-based"

    def scores(self, cands: Sequence[ChannelState], now: float, ctx: PickContext = NO_CONTEXT) -> list[float]:
        return [-tokens_last_minute(c, now) for c in cands]

    def terms(self, cands: Sequence[ChannelState], now: float, rng: random.Random | None,
              ctx: PickContext = NO_CONTEXT) -> list[dict[str, float]]:
        out = []
        for c in cands:
            req, tok = c.limiter.window.usage(now)
            out.append({"requests_last_minute": req, "tokens_last_minute": tok,
                        "admits": 1.0 if admits(c, now, ctx.tokens) else 0.0})
        return out

    def pick(self, cands: Sequence[ChannelState], now: float, rng: random.Random,
             ctx: PickContext = NO_CONTEXT) -> int:
        pool = standby_pool(cands)
        ok = [i for i in pool if admits(cands[i], now, ctx.tokens)] or list(pool)
        best: list[int] = []
        low = 0.0
        for i in ok:
            t = tokens_last_minute(cands[i], now)
            if not best or t < low:
                best, low = [i], t
            elif t == low:
                best.append(i)
        return _uniform_among(rng, best)


def observed_latency(c: ChannelState, stream: bool) -> float:
    """LiteLLM's latency signal: TTFT for streams (when known), else latency; 0 before any sample."""
    if stream and c.ewma_ttft is not None:
        return c.ewma_ttft
    return c.ewma_latency if c.ewma_latency is not None else 0.0


class LatencyBased(Strategy):
    name = "latency-based"

    def __init__(self, buffer: float = 0.0) -> None:
        self.buffer = buffer

    def scores(self, cands: Sequence[ChannelState], now: float, ctx: PickContext = NO_CONTEXT) -> list[float]:
        return [-observed_latency(c, ctx.stream) for c in cands]

    def pick(self, cands: Sequence[ChannelState], now: float, rng: random.Random,
             ctx: PickContext = NO_CONTEXT) -> int:
        pool = standby_pool(cands)
        lat = {i: observed_latency(cands[i], ctx.stream) for i in pool}
        edge = min(lat.values()) * (1.0 + self.buffer)
        return _uniform_among(rng, [i for i in pool if lat[i] <= edge])


def price_per_million(c: ChannelState) -> float | None:
    p = c.price
    if p is None:
        return None
    return float(p.input) + float(p.output)


class CostBased(Strategy):
    name = "cost-based"

    def scores(self, cands: Sequence[ChannelState], now: float, ctx: PickContext = NO_CONTEXT) -> list[float]:
        out = []
        for c in cands:
            p = price_per_million(c)
            out.append(0.0 if p is None else 1.0 / (1.0 + p))
        return out

    def terms(self, cands: Sequence[ChannelState], now: float, rng: random.Random | None,
              ctx: PickContext = NO_CONTEXT) -> list[dict[str, float]]:
        out = []
        for c in cands:
            p = price_per_million(c)
            t = {"inflight": float(c.inflight)}
            if p is not None:
                t["price_per_million"] = p
            out.append(t)
        return out

    def pick(self, cands: Sequence[ChannelState], now: float, rng: random.Random,
             ctx: PickContext = NO_CONTEXT) -> int:
        best: list[int] = []
        bkey: tuple[float, int] = (0.0, 0)
        for i in standby_pool(cands):
            c = cands[i]
            p = price_per_million(c)
            key = (math.inf if p is None else p, c.inflight)
            if not best or key < bkey:
                best, bkey = [i], key
            elif key == bkey:
                best.append(i)
        return _uniform_among(rng, best)


class LeastRequest(Strategy):
    """Envoy least_request; state: the EDF schedule (a deadline per channel name) for unequal weights."""

    name = "least_request"

    def __init__(self, choice_count: int = 2, active_request_bias: float = 1.0) -> None:
        self.choice_count = choice_count
        self.bias = active_request_bias
        self.deadline: dict[str, float] = {}
        self.clock = 0.0

    def dynamic_weight(self, c: ChannelState) -> float:
        if self.bias == 0.0:
            return c.weight
        if self.bias == 1.0:
            return c.weight / (c.inflight + 1)
        return c.weight / (c.inflight + 1) ** self.bias

    @staticmethod
    def _equal(cands: Sequence[ChannelState], pool: Sequence[int]) -> bool:
        w = cands[pool[0]].weight
        return all(cands[i].weight == w for i in pool)

    def scores(self, cands: Sequence[ChannelState], now: float, ctx: PickContext = NO_CONTEXT) -> list[float]:
        if self._equal(cands, range(len(cands))):
            return [-float(c.inflight) for c in cands]
        return [self.dynamic_weight(c) for c in cands]

    def pick(self, cands: Sequence[ChannelState], now: float, rng: random.Random,
             ctx: PickContext = NO_CONTEXT) -> int:
        if len(cands) == 1:
            return 0
        pool = standby_pool(cands)
        if len(pool) == 1:
            return pool[0]
        if self._equal(cands, pool):
            return self._n_choices(cands, pool, rng)
        return self._edf(cands, pool)

    def _n_choices(self, cands: Sequence[ChannelState], pool: Sequence[int], rng: random.Random) -> int:
        idx = list(pool)
        n = len(idx)
        k = min(self.choice_count, n)
        best = -1
        low = 0
        for j in range(k):  # a partial Fisher-Yates shuffle: k distinct draws
            r = j + int(rng.random() * (n - j))
            idx[j], idx[r] = idx[r], idx[j]
            i = idx[j]
            f = cands[i].inflight
            if best < 0 or f < low:
                best, low = i, f
        return best

    def _edf(self, cands: Sequence[ChannelState], pool: Sequence[int]) -> int:
        dl = self.deadline
        clock = self.clock
        best = -1
        bd = 0.0
        for i in pool:
            c = cands[i]
            d = dl.get(c.name)
            if d is None or d < clock:
                # new to the schedule, or back after being left out: inserted now, as Envoy does
                # when it rebuilds its scheduler (no catch-up burst for the time it was away)
                w = self.dynamic_weight(c)
                d = clock + (1.0 / w if w > 0.0 else math.inf)
                dl[c.name] = d
            if best < 0 or d < bd:
                best, bd = i, d
        c = cands[best]
        w = self.dynamic_weight(c)
        if math.isinf(bd):  # every offered weight is 0 after scaling: take the first, keep the clock
            return best
        self.clock = bd
        dl[c.name] = bd + (1.0 / w if w > 0.0 else math.inf)
        return best


def peak_cost(c: ChannelState, now: float, decay: float, prior: float) -> float:
    p = c.peak_ewma
    if p is None:
        e = prior
    else:
        dt = now - c.peak_at
        e = p * math.exp(-dt / decay) if dt > 0.0 else p
    return e * (c.inflight + 1)


class PeakEwma(Strategy):
    name = "peak_ewma"

    def __init__(self, decay: float = 10.0, default_latency: float = 0.5) -> None:
        self.decay = decay
        self.prior = default_latency

    def scores(self, cands: Sequence[ChannelState], now: float, ctx: PickContext = NO_CONTEXT) -> list[float]:
        return [-peak_cost(c, now, self.decay, self.prior) for c in cands]

    def terms(self, cands: Sequence[ChannelState], now: float, rng: random.Random | None,
              ctx: PickContext = NO_CONTEXT) -> list[dict[str, float]]:
        return [{"latency_estimate": peak_cost(c, now, self.decay, self.prior) / (c.inflight + 1),
                 "inflight": float(c.inflight)} for c in cands]

    def pick(self, cands: Sequence[ChannelState], now: float, rng: random.Random,
             ctx: PickContext = NO_CONTEXT) -> int:
        if len(cands) == 1:
            return 0
        pool = standby_pool(cands)
        if len(pool) == 1:
            return pool[0]
        a, b = _two_distinct(pool, rng)
        ca = peak_cost(cands[a], now, self.decay, self.prior)
        cb = peak_cost(cands[b], now, self.decay, self.prior)
        return b if cb < ca else a
