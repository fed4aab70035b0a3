"""The balancer: among one tier of candidates, which one to try next.

Eligibility comes before scoring. A candidate that may not take an attempt now — disabled,
auto-disabled, ejected, cooling down after a 429, its breaker open, at a local rate limit or quota,
no key left — is never offered to the strategy (a call that would be wasted is not made); the
decision trace says why. Tiers (priority groups, then weight-0 standbys) are execution's business.
"""

from __future__ import annotations

import random
from typing import Any

from axonsim.candidates import Candidate
from axonsim.strategies import NO_CONTEXT, PickContext, Strategy


class Balancer:
    __slots__ = ("strategy", "seq", "_fused")

    def __init__(self, strategy: Strategy) -> None:
        self.strategy = strategy
        self.seq = 0  # selection counter: round robin and tie-breaks read `last_pick`
        # the strategy's eligibility-and-pick in one pass, bound once (None: `pick` over the eligible)
        self._fused = strategy.choose if strategy.fused else None  # type: ignore[attr-defined]

    def eligible(self, cands: list[Candidate], now: float, tokens: int = 0) -> list[Candidate]:
        """The candidates that may take an attempt now."""
        return [c for c in cands if c.state.eligible(now, c.upstream_model, tokens)]

    def pick(self, cands: list[Candidate], now: float, rng: random.Random, tokens: int = 0,
             eligible: list[Candidate] | None = None, ctx: PickContext = NO_CONTEXT,
             rotate: bool = True) -> Candidate | None:
        """The next candidate to try, or None when none may take an attempt now. `rotate` False:
        a pick beside the request's own (a hedge) is not counted as a selection, neither in the
        rotation (`last_pick`) nor in the selection count AxonHub's round robin reads (it counts
        only each decision's top pick); else, with two channels, every first attempt went to the
        one and every hedge to the other."""
        if eligible is None:
            eligible = self.eligible(cands, now, tokens)
        if not eligible:
            return None
        chosen = eligible[0] if len(eligible) == 1 else eligible[self.strategy.pick([c.state for c in eligible], now, rng, ctx)]
        if rotate:
            self.mark(chosen, now)
        return chosen

    def choose(self, cands: list[Candidate], now: float, rng: random.Random, tokens: int = 0,
               ctx: PickContext = NO_CONTEXT) -> Candidate | None:
        """`pick` without a precomputed eligible list: what execution calls for nearly every
        attempt, so eligibility, the strategy's pick and the bookkeeping run in one frame."""
        fused = self._fused
        if fused is not None:
            chosen = fused(cands, now, tokens)
            if chosen is None:
                return None
        else:
            strategy = self.strategy
            eligible = []
            states = []
            for c in cands:
                st = c.state
                if st.eligible(now, c.upstream_model, tokens):
                    eligible.append(c)
                    states.append(st)
            n = len(states)
            if n == 0:
                return None
            chosen = eligible[0] if n == 1 else eligible[strategy.pick(states, now, rng, ctx)]
        seq = self.seq = self.seq + 1
        chosen.state.select(now, seq)
        return chosen

    def mark(self, chosen: Candidate, now: float) -> None:
        self.seq += 1
        chosen.state.select(now, self.seq)

    def explain(self, cands: list[Candidate], now: float, tokens: int = 0,
                ctx: PickContext = NO_CONTEXT) -> list[dict[str, Any]]:
        """Per candidate: why it is unavailable, or the strategy's score (and its terms, if any)."""
        ok = [c for c in cands if c.state.unavailable_reason(now, c.upstream_model, tokens) is None]
        states = [c.state for c in ok]
        scores = self.strategy.scores(states, now, ctx) if states else []
        terms = self.strategy.terms(states, now, None, ctx) if states else []
        by_name = {c.state.name: i for i, c in enumerate(ok)}
        out = []
        for c in cands:
            row: dict[str, Any] = {"channel": c.state.name, "upstream_model": c.upstream_model}
            i = by_name.get(c.state.name)
            if i is None:
                row["unavailable"] = c.state.unavailable_reason(now, c.upstream_model, tokens)
            else:
                row["score"] = round(scores[i], 6)
                if terms and terms[i]:
                    row["terms"] = {k: round(v, 6) for k, v in terms[i].items()}
            out.append(row)
        return out
