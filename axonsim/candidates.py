"""Candidates: which channels may serve a requested model, grouped by priority (lower first).

Resolution is precomputed once per configuration (model name → groups); whether a channel may
take an attempt right now (enabled, healthy, within its limits, a key left) is asked per attempt,
because admin calls, failures and time change it while the gateway runs.
"""

from __future__ import annotations

from axonsim.state import ChannelState


class Candidate:
    __slots__ = ("state", "upstream_model")

    def __init__(self, state: ChannelState, upstream_model: str) -> None:
        self.state = state
        self.upstream_model = upstream_model

    def __repr__(self) -> str:
        return f"Candidate({self.state.name!r}, {self.upstream_model!r})"


class Candidates:
    def __init__(self, states: list[ChannelState]) -> None:
        by_model: dict[str, dict[int, list[Candidate]]] = {}
        for st in states:
            ch = st.channel
            for name in [*ch.models, *ch.model_mapping]:
                upstream = ch.serves(name)
                assert upstream is not None
                by_model.setdefault(name, {}).setdefault(st.priority, []).append(Candidate(st, upstream))
        self._groups: dict[str, list[list[Candidate]]] = {
            m: [groups[p] for p in sorted(groups)] for m, groups in by_model.items()
        }

    def all_groups(self, model: str) -> list[list[Candidate]]:
        """Priority groups for `model`, usable or not (callers check availability per attempt)."""
        return self._groups.get(model, [])

    def known(self, model: str) -> bool:
        return model in self._groups

    def models(self) -> list[str]:
        return list(self._groups)
