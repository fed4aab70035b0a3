"""Workloads: the sequence of client requests (arrival gaps, model, stream flag) a simulation replays."""

from __future__ import annotations

import numpy as np

from axonsim.config import Config, ConfigError, Workload
from axonsim.sim.streams import ARRIVALS, CHOICE, np_stream


class Arrivals:
    """Column form of a workload: request i arrives `gaps[i]` seconds after request i-1 (the first
    after t=0), asks for `models[model[i]]` and streams if `stream[i]`. Any driver can replay it."""

    __slots__ = ("gaps", "model", "stream", "models")

    def __init__(self, gaps: list[float], model: list[int], stream: list[bool], models: list[str]) -> None:
        self.gaps = gaps
        self.model = model
        self.stream = stream
        self.models = models

    def __len__(self) -> int:
        return len(self.gaps)


def require_workload(config: Config) -> Workload:
    if config.workload is None:
        raise ConfigError("workload: this scenario has no workload section; a simulation needs one, e.g.\n"
                          "workload:\n  arrival: {process: poisson, rate: 20}\n  requests: 10000")
    return config.workload


def model_shares(config: Config) -> tuple[list[str], list[float]]:
    """Requested models and their normalised shares (default: the first channel's first model)."""
    wl = require_workload(config)
    if not wl.models:
        return [config.channels[0].models[0]], [1.0]
    names = list(wl.models)
    shares = [float(wl.models[m]) for m in names]
    for m, s in zip(names, shares, strict=True):
        if not s >= 0:
            raise ConfigError(f"workload.models[{m!r}]: a share must be >= 0, got {s}")
    total = sum(shares)
    if total <= 0:
        raise ConfigError("workload.models: at least one share must be positive")
    return names, [s / total for s in shares]


def poisson(config: Config, seed: int, requests: int | None = None) -> Arrivals:
    """Poisson arrivals at `workload.arrival.rate`; model by share, stream by `workload.stream`.
    Draws are prefix-stable: the first k requests are the same whatever the total."""
    wl = require_workload(config)
    n = wl.requests if requests is None else requests
    if n < 1:
        raise ConfigError(f"requests: must be at least 1, got {n}")
    if wl.arrival.process != "poisson":
        raise ConfigError(f"workload.arrival.process: {wl.arrival.process!r} is not supported")
    names, shares = model_shares(config)
    gaps = np_stream(seed, ARRIVALS).exponential(1.0 / wl.arrival.rate, n)
    u = np_stream(seed, CHOICE).random((n, 2))  # row i: (model uniform, stream uniform) of request i
    if len(names) == 1:
        model = np.zeros(n, dtype=np.int64)
    else:
        cuts = np.cumsum(shares)
        model = np.minimum(np.searchsorted(cuts, u[:, 0], side="right"), len(names) - 1)
    stream = u[:, 1] < wl.stream
    return Arrivals(gaps.tolist(), model.tolist(), stream.tolist(), names)
