"""Per-purpose random streams, all derived from one seed without hashing (same seed, same numbers, any process)."""

from __future__ import annotations

import random

import numpy as np

# One stream per purpose, so that a draw for one purpose never shifts another's numbers.
ARRIVALS = 0  # inter-arrival gaps
CHOICE = 1  # model and stream choice per request
CORE = 2  # the core's rng: backoff jitter, random strategy terms
CHANNEL_BASE = 16  # + channel index: that channel's behaviour draws
CHANNEL_STATE_BASE = 1 << 20  # + channel index: the seed of that channel's outage process

_MASK = (1 << 64) - 1


def derive(seed: int, purpose: int) -> int:
    """A stream's own seed: an affine map of the run's seed, reduced to 64 bits (Python's hash() is
    salted per process, so it is never used)."""
    return (seed * 1_000_003 + purpose) & _MASK


def py_stream(seed: int, purpose: int) -> random.Random:
    return random.Random(derive(seed, purpose))


def np_stream(seed: int, purpose: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(derive(seed, purpose)))
