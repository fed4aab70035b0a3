"""Channel state: the live signals strategies read, updated by both drivers through one small API.

The API is four calls, made by whichever driver performs an attempt:

    state.started(now)                   an attempt was sent
    state.first_token(now, ttft)         its first event arrived (streams) or its answer (non-stream)
    state.succeeded(now, latency)        it finished well
    state.failed(now, outcome)           it failed (before or after the first token)

Nothing here reads a clock: `now` is whatever the driver's clock says (the event loop's monotonic
time live, `env.now` in the simulator).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from axonsim.config import Channel, Routing
from axonsim.unified import ErrorKind

if TYPE_CHECKING:
    from axonsim.execution import Outcome

NEVER = float("-inf")


class KeyState:
    __slots__ = ("name", "secret", "disabled", "failures")

    def __init__(self, name: str, secret: str) -> None:
        self.name = name
        self.secret = secret
        self.disabled = False  # 401/403: stays disabled until the config changes
        self.failures = 0


class ChannelState:
    __slots__ = (
        "channel", "name", "weight", "priority", "index", "keys", "_key_rr",
        "inflight", "requests", "failures", "consecutive_failures", "last_failure", "cooldown_until",
        "ewma_latency", "ewma_ttft", "last_pick", "alpha", "cooldown_default", "cooldown_max",
    )

    def __init__(self, channel: Channel, index: int, routing: Routing) -> None:
        self.channel = channel
        self.name = channel.name
        self.weight = float(channel.weight)
        self.priority = channel.priority
        self.index = index  # position in the config: the stable tie-breaker
        self.keys = [KeyState(k.name or f"{channel.name}#{i}", k.key) for i, k in enumerate(channel.api_keys)]
        self._key_rr = 0
        self.inflight = 0
        self.requests = 0
        self.failures = 0
        self.consecutive_failures = 0
        self.last_failure = NEVER
        self.cooldown_until = NEVER
        self.ewma_latency: float | None = None
        self.ewma_ttft: float | None = None
        self.last_pick = -1  # selection sequence number, for round robin
        self.alpha = routing.ewma_alpha
        self.cooldown_default = routing.cooldown.default
        self.cooldown_max = routing.cooldown.max

    # -- the driver API --------------------------------------------------------------------------

    def started(self, now: float) -> None:
        self.inflight += 1
        self.requests += 1

    def first_token(self, now: float, ttft: float) -> None:
        e = self.ewma_ttft
        self.ewma_ttft = ttft if e is None else e + self.alpha * (ttft - e)

    def succeeded(self, now: float, latency: float) -> None:
        self.inflight -= 1
        self.consecutive_failures = 0
        e = self.ewma_latency
        self.ewma_latency = latency if e is None else e + self.alpha * (latency - e)

    def failed(self, now: float, outcome: Outcome) -> None:
        self.inflight -= 1
        kind = outcome.kind
        if kind is ErrorKind.INVALID_REQUEST or kind is ErrorKind.NOT_FOUND:
            return  # the client's fault: says nothing about the channel's health
        self.failures += 1
        self.consecutive_failures += 1
        self.last_failure = now
        if kind is ErrorKind.RATE_LIMITED:
            wait = outcome.retry_after if outcome.retry_after is not None else self.cooldown_default
            self.cooldown_until = max(self.cooldown_until, now + min(max(wait, 0.0), self.cooldown_max))
        elif kind is ErrorKind.AUTHENTICATION or kind is ErrorKind.PERMISSION:
            key = outcome.key
            if key is not None and 0 <= key < len(self.keys):
                self.keys[key].disabled = True

    # -- what execution asks ---------------------------------------------------------------------

    def usable(self) -> bool:
        """Enabled, and with a key that has not been rejected (a channel without keys is keyless)."""
        if not self.channel.enabled:
            return False
        return not self.keys or any(not k.disabled for k in self.keys)

    def next_key(self) -> int | None:
        """Round robin over the keys not disabled; None for a keyless channel."""
        n = len(self.keys)
        if n == 0:
            return None
        for _ in range(n):
            i = self._key_rr % n
            self._key_rr += 1
            if not self.keys[i].disabled:
                return i
        return None

    def key_name(self, index: int | None) -> str | None:
        return None if index is None else self.keys[index].name

    def snapshot(self, now: float) -> dict[str, object]:
        return {
            "name": self.name,
            "inflight": self.inflight,
            "requests": self.requests,
            "failures": self.failures,
            "consecutive_failures": self.consecutive_failures,
            "seconds_since_failure": None if self.last_failure == NEVER else now - self.last_failure,
            "cooldown_remaining": max(0.0, self.cooldown_until - now),
            "ewma_latency": self.ewma_latency,
            "ewma_ttft": self.ewma_ttft,
            "keys": [{"name": k.name, "disabled": k.disabled} for k in self.keys],
        }
