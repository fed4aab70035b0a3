"""Execution: attempts, same-channel retries, failover and backoff, as a generator of effects.

Theory of operation. `Router.execute(...)` returns a generator. It yields one of two effects and
is sent back what happened:

    outcome = yield Call(...)   # perform one upstream attempt; send back an Outcome
    now     = yield Wait(s)     # let s seconds pass; send back the clock after it

It returns a Result: the winning Outcome (or the last failure) and one record per attempt.

Rules of this module:
1. It does not know whether it runs live or simulated. It never reads a clock (time comes in with
   each Outcome's `end` and each Wait's answer), never sleeps, never draws from a global random
   generator (the driver hands it a seeded `random.Random`).
2. What to do after a failure is looked up in the policy table (axonsim.policy), never decided
   by ad-hoc code here. Execution only counts: attempts against `max_attempts`, retries on one
   channel against `max_same_channel`.
3. Channel state is not touched here: drivers report attempts through ChannelState's four calls,
   so a live and a simulated attempt feed the strategies the same signals.
4. Every retry and every failover goes through a Wait (jittered backoff), so no two decisions of
   one request fall on the same instant; this keeps drivers comparable bit for bit.
5. For a stream, an attempt's Outcome arrives with its first event: that is the commit point.
   Before it, failover is free; after it, the bytes belong to the client.
"""

from __future__ import annotations

import random
from collections.abc import Generator
from typing import Any, Union

from axonsim.balancer import Balancer
from axonsim.candidates import Candidates
from axonsim.config import Config
from axonsim.policy import Action, Policy
from axonsim.state import ChannelState
from axonsim.strategies import make_strategy
from axonsim.unified import Error, ErrorKind


class Call:
    """Perform one attempt on `state`'s channel with key `key` (index into its keys, None if keyless)."""

    __slots__ = ("state", "upstream_model", "key", "attempt", "request")

    def __init__(self, state: ChannelState, upstream_model: str, key: int | None, attempt: int, request: Any) -> None:
        self.state = state
        self.upstream_model = upstream_model
        self.key = key
        self.attempt = attempt
        self.request = request


class Wait:
    __slots__ = ("seconds",)

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds


Effect = Union[Call, Wait]


class Outcome:
    """What one attempt came to. `end` is the driver's clock when it was decided (the first event
    for streams); `payload` is the driver's own (a live response, nothing in the simulator)."""

    __slots__ = ("ok", "status", "kind", "retry_after", "end", "ttft", "key", "error", "payload")

    def __init__(
        self,
        ok: bool,
        end: float,
        status: int = 200,
        kind: ErrorKind | None = None,
        retry_after: float | None = None,
        ttft: float | None = None,
        key: int | None = None,
        error: Error | None = None,
        payload: Any = None,
    ) -> None:
        self.ok = ok
        self.end = end
        self.status = status
        self.kind = kind
        self.retry_after = retry_after
        self.ttft = ttft
        self.key = key
        self.error = error
        self.payload = payload

    @classmethod
    def failure(cls, end: float, error: Error, key: int | None = None, payload: Any = None) -> Outcome:
        return cls(False, end, error.status, error.kind, error.retry_after, None, key, error, payload)


class AttemptRecord:
    __slots__ = ("n", "channel", "key", "upstream_model", "start", "end", "status", "kind", "next")

    def __init__(self, n: int, channel: str, key: str | None, upstream_model: str, start: float, end: float,
                 status: int, kind: ErrorKind | None, next: str) -> None:
        self.n = n
        self.channel = channel
        self.key = key
        self.upstream_model = upstream_model
        self.start = start
        self.end = end
        self.status = status
        self.kind = kind
        self.next = next  # what execution did next: done / retry / failover / give_up / cap / exhausted

    def as_dict(self) -> dict[str, Any]:
        return {
            "attempt": self.n, "channel": self.channel, "key": self.key, "upstream_model": self.upstream_model,
            "start": self.start, "end": self.end, "status": self.status,
            "error": self.kind.value if self.kind else None, "next": self.next,
        }


class Result:
    __slots__ = ("ok", "outcome", "attempts", "error", "end")

    def __init__(self, ok: bool, outcome: Outcome | None, attempts: list[AttemptRecord], error: Error | None,
                 end: float) -> None:
        self.ok = ok
        self.outcome = outcome  # the winning attempt, or the last failed one
        self.attempts = attempts
        self.error = error  # set when not ok: what the client is told
        self.end = end


def no_channel(model: str) -> Error:
    return Error(kind=ErrorKind.UNAVAILABLE, status=503,
                 message=f"no channel is available for model {model!r}", code="no_channel_available")


def unknown_model(model: str) -> Error:
    return Error(kind=ErrorKind.NOT_FOUND, status=404, message=f"the model {model!r} does not exist",
                 param="model", code="model_not_found")


class Router:
    """Everything execution needs, built once from a Config: channel states, candidates, balancer
    and policy. Both drivers hold one Router and drive `execute` for every request."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.states = [ChannelState(ch, i, config.routing) for i, ch in enumerate(config.channels)]
        self.by_name = {s.name: s for s in self.states}
        self.candidates = Candidates(self.states)
        self.balancer = Balancer(make_strategy(config.routing))
        self.policy = Policy(config.routing.retry)

    def execute(self, model: str, now: float, rng: random.Random,
                request: Any = None) -> Generator[Effect, Any, Result]:
        attempts: list[AttemptRecord] = []
        if not self.candidates.known(model):
            return Result(False, None, attempts, unknown_model(model), now)
        policy = self.policy
        pick = self.balancer.pick
        n = 0
        last: Outcome | None = None
        for group in self.candidates.groups(model):
            remaining = list(group)
            while remaining:
                cand = pick(remaining, now, rng)
                remaining.remove(cand)
                st = cand.state
                same = 0
                while True:
                    key = st.next_key()
                    if key is None and st.keys:
                        break  # its last key was rejected meanwhile
                    n += 1
                    start = now
                    out: Outcome = yield Call(st, cand.upstream_model, key, n, request)
                    now = out.end
                    if out.ok:
                        attempts.append(AttemptRecord(n, st.name, st.key_name(key), cand.upstream_model,
                                                      start, now, out.status, None, "done"))
                        return Result(True, out, attempts, None, now)
                    last = out
                    kind = out.kind if out.kind is not None else ErrorKind.SERVER_ERROR
                    action = policy.action(kind)
                    if action is Action.GIVE_UP or n >= policy.max_attempts:
                        nxt = "give_up" if action is Action.GIVE_UP else "cap"
                        attempts.append(AttemptRecord(n, st.name, st.key_name(key), cand.upstream_model,
                                                      start, now, out.status, kind, nxt))
                        return Result(False, out, attempts, _client_error(out), now)
                    if action is Action.RETRY and same < policy.max_same:
                        same += 1
                        attempts.append(AttemptRecord(n, st.name, st.key_name(key), cand.upstream_model,
                                                      start, now, out.status, kind, "retry"))
                        now = yield Wait(policy.backoff(same, rng, out.retry_after))
                        continue
                    attempts.append(AttemptRecord(n, st.name, st.key_name(key), cand.upstream_model,
                                                  start, now, out.status, kind, "failover"))
                    now = yield Wait(policy.backoff(1, rng))
                    break
        if attempts:
            attempts[-1].next = "exhausted"
        if last is None:
            return Result(False, None, attempts, no_channel(model), now)
        return Result(False, last, attempts, _client_error(last), now)


# What the client is told when the upstream answer is final: its own request errors pass through;
# the gateway's upstream troubles become gateway statuses (an upstream 401 is not the client's 401).
_CLIENT_STATUS = {
    ErrorKind.AUTHENTICATION: (502, "the upstream rejected this gateway's credentials"),
    ErrorKind.PERMISSION: (502, "the upstream refused this gateway's credentials"),
    ErrorKind.RATE_LIMITED: (429, None),
    ErrorKind.OVERLOADED: (503, None),
    ErrorKind.SERVER_ERROR: (502, None),
    ErrorKind.TIMEOUT: (504, "the upstream did not answer in time"),
    ErrorKind.CONNECTION: (502, "the connection to the upstream failed"),
    ErrorKind.UNAVAILABLE: (503, None),
}


def _client_error(out: Outcome) -> Error:
    kind = out.kind or ErrorKind.SERVER_ERROR
    err = out.error
    message = err.message if err is not None else f"upstream failed: {kind.value}"
    if kind not in _CLIENT_STATUS:
        if err is not None:
            return err
        return Error(kind=kind, status=out.status or 400, message=message)
    status, fixed = _CLIENT_STATUS[kind]
    return Error(kind=kind, status=status, message=fixed or message, retry_after=out.retry_after,
                 code=err.code if err is not None and fixed is None else None)
