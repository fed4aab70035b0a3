"""Load-balancing strategies: each a small object with one documented score.

A strategy sees only the candidates it is handed (already filtered for eligibility by the balancer)
and answers two questions:

    scores(cands, now)      -> one number per candidate, higher is better (for the decision trace)
    pick(cands, now, rng)   -> the index of the candidate to try next

`pick` may keep state (smooth weighted round robin does) and may draw from the injected rng;
nothing here reads a clock or the global random generator.

Formulas (c = candidate, `now` in seconds):

    round_robin     score = -last_pick(c)                       the least recently picked wins
    weighted        nginx smooth weighted round robin:          cur(c) += w(c); pick argmax cur; cur(pick) -= Σw
                    weights 5/1/1 give exactly 5/1/1 in every 7 picks; weight 0 is never picked
                    while a positive weight exists
    random          P(c) = w(c) / Σw (uniform when every weight is 0)
    least_inflight  power of two choices: draw two distinct candidates uniformly, keep the one with
                    fewer in-flight requests (ties: higher weight, then the first drawn)
    error_aware     d = max(0, 1 - (now - last_failure)/window)
                    score = max(0, 1 - (30·consecutive_failures + 40)·d / 200)
                    (AxonHub's decayed form, scaled to [0,1]); d reaches 0 one window after the
                    last failure, so every channel recovers. Ties: least recently picked.
    composite       score = Σ_s weight_s · norm_s(c) over the configured terms, where
                    norm_error_aware is the score above, norm_least_inflight = 1 - inflight/max(1, max inflight),
                    norm_weighted = w / max w, norm_round_robin = 1 - recency rank/(n-1),
                    norm_random = u ~ U[0,1),
                    norm_latency_aware = AxonHub's LatencyAware score / 80 (axonsim.strategies_axonhub),
                    norm_rate_limit_aware = clamp(limiter headroom after admitting the request, 0, 1)
                    (1 with no limit configured),
                    norm_cost = 1 - (p - min p)/max p with p = input + output price per million tokens
                    (the cheapest gets 1; unpriced channels 0; all free → 1);
                    argmax, ties to the least recently picked. The fused fast path covers the first
                    three terms; any other term configured takes the general path.

The other names in config.STRATEGIES are built from axonsim.strategies_axonhub (AxonHub's scorers
and its named mixes `adaptive`, `failover`, `circuit-breaker`, `round-robin`, and our
`latency_aware`) and axonsim.strategies_peers (LiteLLM's `simple-shuffle`, `least-busy`,
`usage-based`, `latency-based`, `cost-based`; Envoy's `least_request`; Finagle's `peak_ewma`);
their formulas are documented there and in docs/strategies.md.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from axonsim.candidates import Candidate
from axonsim.config import STRATEGIES, Routing
from axonsim.state import NEVER, ChannelState


class PickContext:
    """What a strategy may know about the request: the model the client asked for (a candidate's
    upstream name comes from `ChannelState.channel.serves(model)`), whether it streams, and its
    estimated tokens."""

    __slots__ = ("model", "stream", "tokens")

    def __init__(self, model: str = "", stream: bool = False, tokens: int = 0) -> None:
        self.model = model
        self.stream = stream
        self.tokens = tokens


NO_CONTEXT = PickContext()


class Strategy:
    name = "strategy"
    # Whether `pick` reads its PickContext: execution builds one per request only for those that do.
    uses_context = True
    # Whether `choose(cands, now, tokens)` exists: eligibility and `pick` fused over Candidates.
    fused = False

    def scores(self, cands: Sequence[ChannelState], now: float, ctx: PickContext = NO_CONTEXT) -> list[float]:
        raise NotImplementedError

    def pick(self, cands: Sequence[ChannelState], now: float, rng: random.Random,
             ctx: PickContext = NO_CONTEXT) -> int:
        """Default: the best score, ties broken by the least recently picked candidate."""
        return _argmax_lru(self.scores(cands, now, ctx), cands)

    def terms(self, cands: Sequence[ChannelState], now: float, rng: random.Random | None,
              ctx: PickContext = NO_CONTEXT) -> list[dict[str, float]]:
        """The named parts of each candidate's score, for the decision trace (none by default)."""
        return [{} for _ in cands]


def _argmax_lru(scores: list[float], cands: Sequence[ChannelState]) -> int:
    best = 0
    bs = scores[0]
    bl = cands[0].last_pick
    for i in range(1, len(scores)):
        s = scores[i]
        if s > bs or (s == bs and cands[i].last_pick < bl):
            best, bs, bl = i, s, cands[i].last_pick
    return best


class RoundRobin(Strategy):
    name = "round_robin"
    uses_context = False

    def scores(self, cands: Sequence[ChannelState], now: float, ctx: PickContext = NO_CONTEXT) -> list[float]:
        return [-float(c.last_pick) for c in cands]


class Weighted(Strategy):
    """Smooth weighted round robin (nginx). State: one running weight per channel name."""

    name = "weighted"
    uses_context = False

    def __init__(self) -> None:
        self.current: dict[str, float] = {}

    def scores(self, cands: Sequence[ChannelState], now: float, ctx: PickContext = NO_CONTEXT) -> list[float]:
        cur = self.current
        return [cur.get(c.name, 0.0) + c.weight for c in cands]

    def pick(self, cands: Sequence[ChannelState], now: float, rng: random.Random,
             ctx: PickContext = NO_CONTEXT) -> int:
        cur = self.current
        total = 0.0
        best = -1
        best_v = 0.0
        for i, c in enumerate(cands):
            w = c.weight
            if w <= 0:
                continue
            v = cur.get(c.name, 0.0) + w
            cur[c.name] = v
            total += w
            if best < 0 or v > best_v:
                best, best_v = i, v
        if best < 0:  # every weight is 0: cold standby only, take them in round robin
            return _argmax_lru([0.0] * len(cands), cands)
        cur[cands[best].name] = best_v - total
        return best


class Random(Strategy):
    name = "random"
    uses_context = False

    def scores(self, cands: Sequence[ChannelState], now: float, ctx: PickContext = NO_CONTEXT) -> list[float]:
        total = sum(c.weight for c in cands)
        if total <= 0:
            return [1.0 / len(cands)] * len(cands)
        return [c.weight / total for c in cands]

    def pick(self, cands: Sequence[ChannelState], now: float, rng: random.Random,
             ctx: PickContext = NO_CONTEXT) -> int:
        total = 0.0
        for c in cands:
            total += c.weight
        if total <= 0:
            return int(rng.random() * len(cands))
        u = rng.random() * total
        acc = 0.0
        for i, c in enumerate(cands):
            acc += c.weight
            if u < acc and c.weight > 0:
                return i
        return max(i for i, c in enumerate(cands) if c.weight > 0)


class LeastInflight(Strategy):
    name = "least_inflight"
    uses_context = False

    def scores(self, cands: Sequence[ChannelState], now: float, ctx: PickContext = NO_CONTEXT) -> list[float]:
        return [-float(c.inflight) for c in cands]

    def pick(self, cands: Sequence[ChannelState], now: float, rng: random.Random,
             ctx: PickContext = NO_CONTEXT) -> int:
        n = len(cands)
        if n == 1:
            return 0
        i = int(rng.random() * n)
        j = int(rng.random() * (n - 1))
        if j >= i:
            j += 1
        a, b = cands[i], cands[j]
        if b.inflight < a.inflight or (b.inflight == a.inflight and b.weight > a.weight):
            return j
        return i


def error_score(c: ChannelState, now: float, window: float) -> float:
    if c.last_failure == NEVER:
        return 1.0
    d = 1.0 - (now - c.last_failure) / window
    if d <= 0.0:
        return 1.0
    s = 1.0 - (30.0 * c.consecutive_failures + 40.0) * d / 200.0
    return s if s > 0.0 else 0.0


class ErrorAware(Strategy):
    name = "error_aware"
    uses_context = False

    def __init__(self, window: float) -> None:
        self.window = window

    def scores(self, cands: Sequence[ChannelState], now: float, ctx: PickContext = NO_CONTEXT) -> list[float]:
        w = self.window
        return [error_score(c, now, w) for c in cands]


class Composite(Strategy):
    """Weighted sum of normalised terms, fused into one pass over the candidates."""

    name = "composite"

    def __init__(self, weights: dict[str, float], window: float, rng_terms: bool = True) -> None:
        self.w_err = weights.get("error_aware", 0.0)
        self.w_inf = weights.get("least_inflight", 0.0)
        self.w_wgt = weights.get("weighted", 0.0)
        self.w_rr = weights.get("round_robin", 0.0)
        self.w_rnd = weights.get("random", 0.0)
        self.w_lat = weights.get("latency_aware", 0.0)
        self.w_rl = weights.get("rate_limit_aware", 0.0)
        self.w_cost = weights.get("cost", 0.0)
        self.window = window
        self.ws = {"error_aware": self.w_err, "least_inflight": self.w_inf, "weighted": self.w_wgt,
                   "round_robin": self.w_rr, "random": self.w_rnd, "latency_aware": self.w_lat,
                   "rate_limit_aware": self.w_rl, "cost": self.w_cost}
        # Terms the fused fast path does not compute (random and round_robin need the rng / a sort).
        self.general = bool(self.w_rr or self.w_rnd or self.w_lat or self.w_rl or self.w_cost)
        self.uses_context = self.general  # the fused path reads none of it
        self.fused = not self.general
        if self.w_lat:
            from axonsim.strategies_axonhub import latency_aware_score  # that module builds on this one

            self._latency = latency_aware_score

    def terms(self, cands: Sequence[ChannelState], now: float, rng: random.Random | None,
              ctx: PickContext = NO_CONTEXT) -> list[dict[str, float]]:
        """Each term per candidate, for the decision trace (`rng=None` leaves the random term out)."""
        max_inf = max(1, max(c.inflight for c in cands))
        max_w = max(c.weight for c in cands) or 1.0
        order = sorted(range(len(cands)), key=lambda i: cands[i].last_pick)
        n = len(cands)
        rank = {i: r for r, i in enumerate(order)}
        if self.w_cost:
            prices = [None if c.price is None else float(c.price.input) + float(c.price.output) for c in cands]
            known = [p for p in prices if p is not None]
            p_min = min(known) if known else 0.0
            p_max = max(known) if known else 0.0
        out = []
        for i, c in enumerate(cands):
            t = {}
            if self.w_err:
                t["error_aware"] = error_score(c, now, self.window)
            if self.w_inf:
                t["least_inflight"] = 1.0 - c.inflight / max_inf
            if self.w_wgt:
                t["weighted"] = c.weight / max_w
            if self.w_rr:
                t["round_robin"] = 1.0 - rank[i] / (n - 1) if n > 1 else 1.0
            if self.w_rnd and rng is not None:
                t["random"] = rng.random()
            if self.w_lat:
                t["latency_aware"] = self._latency(c, ctx.stream) / 80.0
            if self.w_rl:
                h = c.limiter.headroom(now, ctx.tokens)
                t["rate_limit_aware"] = 0.0 if h < 0.0 else 1.0 if h > 1.0 else h
            if self.w_cost:
                p = prices[i]
                t["cost"] = 0.0 if p is None else 1.0 if p_max <= 0.0 else 1.0 - (p - p_min) / p_max
            out.append(t)
        return out

    def scores(self, cands: Sequence[ChannelState], now: float, ctx: PickContext = NO_CONTEXT) -> list[float]:
        ws = self.ws
        return [sum(ws[k] * v for k, v in t.items()) for t in self.terms(cands, now, None, ctx)]

    def pick(self, cands: Sequence[ChannelState], now: float, rng: random.Random,
             ctx: PickContext = NO_CONTEXT) -> int:
        n = len(cands)
        if n == 1:
            return 0
        if self.general:
            ws = self.ws
            sc = [sum(ws[k] * v for k, v in t.items()) for t in self.terms(cands, now, rng, ctx)]
            return _argmax_lru(sc, cands)
        # Fast path (the simulator runs this once per attempt): no allocations.
        max_inf = 1
        max_w = 0.0
        for c in cands:
            if c.inflight > max_inf:
                max_inf = c.inflight
            if c.weight > max_w:
                max_w = c.weight
        if max_w <= 0.0:
            max_w = 1.0
        w_err, w_inf, w_wgt, window = self.w_err, self.w_inf / max_inf, self.w_wgt / max_w, self.window
        best = i = 0
        bs = -1.0
        bl = 0
        for c in cands:
            s = w_inf * (max_inf - c.inflight) + w_wgt * c.weight
            if w_err:
                lf = c.last_failure
                if lf == NEVER:
                    s += w_err
                else:
                    d = 1.0 - (now - lf) / window
                    if d <= 0.0:
                        s += w_err
                    else:
                        e = 1.0 - (30.0 * c.consecutive_failures + 40.0) * d / 200.0
                        if e > 0.0:
                            s += w_err * e
            if s > bs or (s == bs and c.last_pick < bl):
                best, bs, bl = i, s, c.last_pick
            i += 1
        return best


    def choose(self, cands: Sequence[Candidate], now: float, tokens: int = 0) -> Candidate | None:
        """The fast path of `pick` fused with the balancer's eligibility test (only when `fused`):
        one pass keeps the eligible candidates and their maxima, one scores them. The same
        choice, by the same arithmetic, as `pick` over the eligible candidates' states; None when
        none is eligible. What the simulator runs for nearly every attempt."""
        eligible: Sequence[Candidate] = cands  # copied only when a candidate is left out
        max_inf = 1
        max_w = 0.0
        for c in cands:
            st = c.state
            # ChannelState.eligible written out (one call less per candidate): past its gate, an
            # enabled channel may take an attempt; short of it, one off the slow path is held by a
            # timed exclusion; the method itself decides the rest
            if ((st.gate > now or not st.channel.enabled)
                    and (not st.slow or not st.eligible(now, c.upstream_model, tokens))):
                kept = list(eligible)
                kept.remove(c)
                eligible = kept
                continue
            if st.inflight > max_inf:
                max_inf = st.inflight
            if st.weight > max_w:
                max_w = st.weight
        if len(eligible) < 2:
            return eligible[0] if eligible else None
        if max_w <= 0.0:
            max_w = 1.0
        w_err = self.w_err
        w_inf = self.w_inf / max_inf
        w_wgt = self.w_wgt / max_w
        window = self.window
        best = eligible[0]
        bs = -1.0
        bl = 0
        for c in eligible:
            st = c.state
            s = w_inf * (max_inf - st.inflight) + w_wgt * st.weight
            if w_err:
                # `pick`'s error term; a channel that never failed (last_failure −∞) has d = −∞ and
                # takes the d <= 0 branch, as `pick` sends it
                d = 1.0 - (now - st.last_failure) / window
                if d <= 0.0:
                    s += w_err
                else:
                    e = 1.0 - (30.0 * st.consecutive_failures + 40.0) * d / 200.0
                    if e > 0.0:
                        s += w_err * e
            if s > bs or (s == bs and st.last_pick < bl):
                best, bs, bl = c, s, st.last_pick
        return best


STRATEGY_NAMES = STRATEGIES  # every name the YAML accepts builds


def make_strategy(routing: Routing, states: Sequence[ChannelState] = ()) -> Strategy:
    name = routing.strategy
    opts = routing.options
    if name == "round_robin":
        return RoundRobin()
    if name == "weighted":
        return Weighted()
    if name == "random":
        return Random()
    if name == "least_inflight":
        return LeastInflight()
    if name == "error_aware":
        return ErrorAware(routing.error_window)
    if name == "composite":
        return Composite(routing.composite, routing.error_window)
    # These modules build on the classes above, so they are imported here, not at the top.
    from axonsim import strategies_axonhub as ax
    from axonsim import strategies_peers as peers

    if name == "adaptive":
        return ax.Adaptive(routing.error_window)
    if name == "failover":
        return ax.Failover()
    if name == "circuit-breaker":
        return ax.CircuitBreaker()
    if name == "round-robin":
        return ax.RoundRobinMix(routing.error_window)
    if name == "latency_aware":
        return ax.LatencyAware()
    if name == "simple-shuffle":
        return peers.SimpleShuffle()
    if name == "least-busy":
        return peers.LeastBusy()
    if name == "usage-based":
        return peers.UsageBased()
    if name == "latency-based":
        return peers.LatencyBased(opts.latency_buffer)
    if name == "cost-based":
        return peers.CostBased()
    if name == "least_request":
        return peers.LeastRequest(opts.choice_count, opts.active_request_bias)
    if name == "peak_ewma":
        return peers.PeakEwma(opts.ewma_decay, opts.default_latency)
    raise ValueError(f"routing.strategy: unknown strategy {name!r}")
