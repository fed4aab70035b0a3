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
import re
from enum import StrEnum

from axonsim.config import Retry, RetryOverride
from axonsim.unified import ErrorKind


class Action(StrEnum):
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


class Rules:
    """One layer of the lookup: error-message patterns, then statuses, then kinds."""

    __slots__ = ("kinds", "statuses", "patterns")

    def __init__(self, spec: Retry | RetryOverride) -> None:
        self.kinds = {ErrorKind(k): Action(a) for k, a in spec.on.items()}
        self.statuses = {int(s): Action(a) for s, a in spec.statuses.items()}
        self.patterns = [(re.compile(p.pattern), Action(p.action)) for p in spec.patterns]

    def lookup(self, kind: ErrorKind, status: int, message: str | None) -> Action | None:
        if message and self.patterns:
            for rx, action in self.patterns:
                if rx.search(message):
                    return action
        a = self.statuses.get(status)
        if a is not None:
            return a
        return self.kinds.get(kind)


class Policy:
    """The global table with its configured changes, plus per-channel layers on top."""

    __slots__ = ("table", "rules", "channels", "max_attempts", "max_same", "max_same_by_channel", "base", "cap",
                 "jitter", "deadline")

    def __init__(self, retry: Retry, overrides: dict[str, RetryOverride] | None = None) -> None:
        self.table = dict(DEFAULT_TABLE)
        for kind, action in retry.on.items():
            self.table[ErrorKind(kind)] = Action(action)
        self.rules = Rules(retry) if (retry.statuses or retry.patterns) else None
        self.channels = {name: Rules(o) for name, o in (overrides or {}).items()}
        self.max_same_by_channel = {name: o.max_same_channel for name, o in (overrides or {}).items()
                                    if o.max_same_channel is not None}
        self.max_attempts = retry.max_attempts
        self.max_same = retry.max_same_channel
        self.base = retry.backoff.base
        self.cap = retry.backoff.cap
        self.jitter = retry.backoff.jitter
        self.deadline = retry.deadline

    def action(self, kind: ErrorKind, status: int = 0, message: str | None = None,
               channel: str | None = None) -> Action:
        """Channel layer first, then the global patterns/statuses, then the kind table."""
        if channel is not None and self.channels:
            layer = self.channels.get(channel)
            if layer is not None:
                a = layer.lookup(kind, status, message)
                if a is not None:
                    return a
        if self.rules is not None:
            a = self.rules.lookup(kind, status, None if not message else message)
            if a is not None:
                return a
        return self.table[kind]

    def same_channel_limit(self, channel: str) -> int:
        return self.max_same_by_channel.get(channel, self.max_same)

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
