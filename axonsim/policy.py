"""The error policy: what execution does after a failed attempt, as a table that can be printed,
configured (`routing.retry.on`) and tested, plus the backoff formula.

    kind             action     why
    invalid_request  give_up    the client's request is wrong; another channel would say the same
    not_found        give_up    the model/route does not exist upstream: a client error
    authentication   failover   this channel's key is bad: never retry it, try another channel
    permission       failover   same
    rate_limited     failover   the channel is cooling down (Retry-After); another may have capacity
    overloaded       retry      transient: retry here (after backoff), then fail over
    server_error     retry      same
    timeout          retry      same
    connection       retry      same
"""

from __future__ import annotations

import random
from enum import Enum

from axonsim.config import Retry
from axonsim.unified import ErrorKind


class Action(str, Enum):
    RETRY = "retry"  # same channel (while max_same_channel allows), then fail over
    FAILOVER = "failover"  # next candidate
    GIVE_UP = "give_up"  # return this error to the client


DEFAULT_TABLE: dict[ErrorKind, Action] = {
    ErrorKind.INVALID_REQUEST: Action.GIVE_UP,
    ErrorKind.NOT_FOUND: Action.GIVE_UP,
    ErrorKind.AUTHENTICATION: Action.FAILOVER,
    ErrorKind.PERMISSION: Action.FAILOVER,
    ErrorKind.RATE_LIMITED: Action.FAILOVER,
    ErrorKind.OVERLOADED: Action.RETRY,
    ErrorKind.SERVER_ERROR: Action.RETRY,
    ErrorKind.TIMEOUT: Action.RETRY,
    ErrorKind.CONNECTION: Action.RETRY,
    ErrorKind.UNAVAILABLE: Action.FAILOVER,
}


class Policy:
    __slots__ = ("table", "max_attempts", "max_same", "base", "cap", "jitter")

    def __init__(self, retry: Retry) -> None:
        self.table = dict(DEFAULT_TABLE)
        for kind, action in retry.on.items():
            self.table[ErrorKind(kind)] = Action(action)
        self.max_attempts = retry.max_attempts
        self.max_same = retry.max_same_channel
        self.base = retry.backoff.base
        self.cap = retry.backoff.cap
        self.jitter = retry.backoff.jitter

    def action(self, kind: ErrorKind) -> Action:
        return self.table[kind]

    def backoff(self, n: int, rng: random.Random, retry_after: float | None = None) -> float:
        """Delay before the n-th retry (n ≥ 1): min(cap, base·2^(n-1)) with its `jitter` share drawn
        uniformly; never shorter than an upstream's Retry-After."""
        d = self.base * (1 << (n - 1)) if n < 63 else self.cap
        if d > self.cap:
            d = self.cap
        d = d * (1.0 - self.jitter) + d * self.jitter * rng.random()
        if retry_after is not None and retry_after > d:
            d = retry_after
        return d

    def describe(self) -> str:
        return "\n".join(f"{k.value:16} {v.value}" for k, v in self.table.items())
