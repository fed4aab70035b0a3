"""Per-purpose random streams, all derived from one seed without hashing (same seed, same numbers, any process)."""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterator
from itertools import chain, repeat

import numpy as np

# One stream per purpose, so that a draw for one purpose never shifts another's numbers.
ARRIVALS = 0  # inter-arrival gaps (or rate-curve candidates)
CHOICE = 1  # model and stream choice per request
CORE = 2  # the core's rng: backoff jitter, random strategy terms
INPUT_TOKENS = 3  # workload input lengths
OUTPUT_TOKENS = 4  # workload output lengths
THINNING = 5  # acceptance uniforms of a time-varying rate
CHANNEL_BASE = 16  # + channel index: that channel's behaviour draws
TENANT_BASE = 1 << 12  # + 8·tenant + one of the purposes above: tenant k ≥ 1's own streams
CHANNEL_STATE_BASE = 1 << 20  # + channel index: the seed of that channel's outage process
PROBE_BASE = 1 << 21  # + channel index: that channel's probes (their timing jitter and behaviour draws)

_MASK = (1 << 64) - 1
CHUNK = 4096  # variates per NumPy call: amortises the call, small enough to stay in cache
assert CHUNK % 2 == 0  # ChannelRandom.lognormal_pairs takes its normals two by two within a chunk


def derive(seed: int, purpose: int) -> int:
    """A stream's own seed: an affine map of the run's seed, reduced to 64 bits (Python's hash() is
    salted per process, so it is never used)."""
    return (seed * 1_000_003 + purpose) & _MASK


def tenant_purpose(tenant: int, purpose: int) -> int:
    """Tenant 0 (or a workload without tenants) uses the plain purposes, so adding tenants to a
    scenario does not change the first one's numbers."""
    return purpose if tenant == 0 else TENANT_BASE + 8 * tenant + purpose


def py_stream(seed: int, purpose: int) -> random.Random:
    return random.Random(derive(seed, purpose))


def np_stream(seed: int, purpose: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(derive(seed, purpose)))


def _chunked(draw: Callable[[int], np.ndarray]) -> Callable[[], float]:
    """A zero-argument function handing out `draw`'s variates one by one, refilled CHUNK at a time.
    The __next__ of itertools.chain over the chunks runs in C: no Python frame per variate (a
    generator's __next__ resumes one), and `draw` is called once per chunk, when the last runs out."""
    return chain.from_iterable(map(np.ndarray.tolist, map(draw, repeat(CHUNK)))).__next__


class ChannelRandom(random.Random):
    """The random.Random a channel's behaviour model draws from, with the costly variates from NumPy.

    `random()` stays the Mersenne Twister's C method (already fast); normal, lognormal, exponential
    and gamma variates — pure Python loops in `random`, about 1 µs each — come from NumPy in chunks,
    each kind from its own PCG64 stream derived from the seed, so one kind's refill never shifts
    another's numbers. The behaviour model takes the same draws per attempt whatever happens, so a
    stream's position depends only on the number of attempts: drivers stay comparable bit for bit.
    """

    def __init__(self, seed: int) -> None:
        super().__init__(seed)
        self._seed = seed
        # the standard normals, CHUNK at a time: handed out one by one (_z) or two by two (lognormal_pairs)
        self._normals = map(self._np(1).standard_normal, repeat(CHUNK))
        self._z = chain.from_iterable(map(np.ndarray.tolist, self._normals)).__next__
        # What BehaviorModel.sample calls for its lognormal draws (exp(mu + sigma·z), as lognormvariate
        # below computes them), saving a method call per draw.
        self.standard_normal = self._z
        self._e = _chunked(self._np(2).standard_exponential)
        self._gamma: dict[float, Callable[[], float]] = {}

    def _np(self, kind: int) -> np.random.Generator:
        return np.random.Generator(np.random.PCG64(np.random.SeedSequence(self._seed & _MASK, spawn_key=(kind,))))

    def normalvariate(self, mu: float = 0.0, sigma: float = 1.0) -> float:
        return mu + sigma * self._z()

    gauss = normalvariate

    def lognormvariate(self, mu: float, sigma: float) -> float:
        return math.exp(mu + sigma * self._z())

    def lognormal_pairs(self, mu: float, sigma: float, mu2: float, sigma2: float) -> Callable[[], tuple[float, int]]:
        """A function handing out (lognormvariate(mu, sigma), round(lognormvariate(mu2, sigma2))) —
        the same numbers, bit for bit, from the same normals in the same order — with the affine
        step done by NumPy a chunk at a time and the rest in C (no Python frame per pair). It takes
        the normal stream a chunk at a time: a caller uses it or the single draws, not both."""
        exp = math.exp

        def pairs(z: np.ndarray) -> Iterator[tuple[float, int]]:
            # NumPy's float64 multiply and add are Python's, element by element (no fused multiply-add)
            first = map(exp, (mu + sigma * z[0::2]).tolist())
            second = map(round, map(exp, (mu2 + sigma2 * z[1::2]).tolist()))
            return zip(first, second, strict=True)

        return chain.from_iterable(map(pairs, self._normals)).__next__

    def expovariate(self, lambd: float = 1.0) -> float:
        return self._e() / lambd

    def gammavariate(self, alpha: float, beta: float) -> float:
        draw = self._gamma.get(alpha)
        if draw is None:
            # one stream per shape, keyed by the shape's bits: reproducible in any process
            key = int.from_bytes(np.float64(alpha).tobytes(), "little")
            gen = np.random.Generator(np.random.PCG64(np.random.SeedSequence(self._seed & _MASK,
                                                                             spawn_key=(3, key))))
            draw = self._gamma[alpha] = _chunked(lambda n: gen.standard_gamma(alpha, n))
        return draw() * beta


def channel_stream(seed: int, channel: int) -> ChannelRandom:
    return ChannelRandom(derive(seed, CHANNEL_BASE + channel))
