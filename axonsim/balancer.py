"""The balancer: within one priority group, which candidate to try next.

Eligibility comes before scoring: a channel cooling down after a 429 is not offered to the
strategy while any other candidate is free; if all are cooling, the one whose cooldown ends first
is tried (a 429 answer is better than no attempt at all).
"""

from __future__ import annotations

import random
from typing import Any

from axonsim.candidates import Candidate
from axonsim.strategies import Composite, Strategy


class Balancer:
    __slots__ = ("strategy", "seq")

    def __init__(self, strategy: Strategy) -> None:
        self.strategy = strategy
        self.seq = 0  # selection counter: round robin and tie-breaks read `last_pick`

    def pick(self, cands: list[Candidate], now: float, rng: random.Random) -> Candidate:
        eligible = [c for c in cands if c.state.cooldown_until <= now]
        if not eligible:
            chosen = min(cands, key=lambda c: c.state.cooldown_until)
        elif len(eligible) == 1:
            chosen = eligible[0]
        else:
            chosen = eligible[self.strategy.pick([c.state for c in eligible], now, rng)]
        self.seq += 1
        chosen.state.last_pick = self.seq
        return chosen

    def explain(self, cands: list[Candidate], now: float) -> list[dict[str, Any]]:
        """Per candidate: eligibility and the strategy's score (and its terms, for composite)."""
        states = [c.state for c in cands]
        scores = self.strategy.scores(states, now)
        terms = self.strategy.terms(states, now, None) if isinstance(self.strategy, Composite) else None
        out = []
        for i, c in enumerate(cands):
            row: dict[str, Any] = {
                "channel": c.state.name,
                "upstream_model": c.upstream_model,
                "cooling_down": c.state.cooldown_until > now,
                "score": round(scores[i], 6),
            }
            if terms is not None:
                row["terms"] = {k: round(v, 6) for k, v in terms[i].items()}
            out.append(row)
        return out
