"""Execution: attempts, same-channel retries, failover, backoff and hedging, as a generator of effects.

Theory of operation. `Router.execute(...)` returns a generator. It yields effects and is sent back
what happened:

    outcome = yield Call(...)          perform one upstream attempt; send back its Outcome
    now     = yield Wait(s)            let s seconds pass; send back the clock after it
    handle  = yield Launch(call)       start an attempt without waiting for it (hedging only)
    got     = yield Race(handles, t)   the first (handle, Outcome) among running attempts, or
                                       None if `t` seconds pass first (t=None: no limit)
    now     = yield Cancel(handle)     abandon a running attempt (the driver accounts it)

It returns a Result: the winning Outcome (or the last failure), one record per attempt, and — when
asked — the decision trace.

Rules of this module:
1. It does not know whether it runs live or simulated. It never reads a clock (time comes in with
   each Outcome's `end` and each Wait's answer), never sleeps, never draws from a global random
   generator (the driver hands it a seeded `random.Random`).
2. What to do after a failure is looked up in the policy (axonsim.policy: a table, per-channel
   layers on top), never decided ad hoc here. Execution only counts: attempts against
   `max_attempts`, retries on one channel against `max_same_channel`, the deadline, the budget.
3. Channel state is not touched here: drivers report attempts through the Call's four calls
   (started / first_token / succeeded / failed), so a live and a simulated attempt feed the
   strategies the same signals.
4. Every retry and failover goes through a Wait (jittered backoff), so no two decisions of one
   request fall on the same instant; this keeps drivers comparable bit for bit.
5. For a stream, an attempt's Outcome arrives with its first event: the commit point. Before it,
   failover is free; after it, the bytes belong to the client.
6. Candidates are tried in tiers: each priority group's channels with a positive weight, in
   priority order; then the weight-0 standbys ("only when nothing else is healthy").
"""

from __future__ import annotations

import math
import random
from collections import OrderedDict
from collections.abc import Generator
from typing import Any

from axonsim.balancer import Balancer
from axonsim.candidates import Candidate, Candidates
from axonsim.capabilities import NO_NEEDS, Needs, missing
from axonsim.config import Config
from axonsim.health import OutlierDetector
from axonsim.limits import Budget
from axonsim.policy import Action, Policy
from axonsim.state import ChannelState
from axonsim.strategies import NO_CONTEXT, PickContext, make_strategy
from axonsim.unified import Error, ErrorKind


class TtftStats:
    """Recent times to first token across channels, for percentile-triggered hedging."""

    __slots__ = ("samples", "i", "cap", "_sorted", "_dirty")

    def __init__(self, cap: int = 512) -> None:
        self.samples: list[float] = []
        self.i = 0
        self.cap = cap
        self._sorted: list[float] = []
        self._dirty = 0

    def add(self, v: float) -> None:
        if len(self.samples) < self.cap:
            self.samples.append(v)
        else:
            self.samples[self.i] = v
            self.i = (self.i + 1) % self.cap
        self._dirty += 1

    def percentile(self, p: float) -> float | None:
        if not self.samples:
            return None
        if self._dirty >= 32 or not self._sorted:  # re-sort now and then, not per request
            self._sorted = sorted(self.samples)
            self._dirty = 0
        s = self._sorted
        return s[min(len(s) - 1, max(0, math.ceil(p / 100.0 * len(s)) - 1))]


class Call:
    """One attempt on `state`'s channel with key `key` (index into its keys; None if keyless).

    Drivers report the attempt through its four methods, which feed the channel state (`answered`
    is first_token and succeeded at once)."""

    __slots__ = ("state", "upstream_model", "key", "attempt", "request", "tokens", "deadline", "start", "ttft",
                 "stats", "probes")

    def __init__(self, state: ChannelState, upstream_model: str, key: int | None, attempt: int, request: Any,
                 tokens: int = 0, deadline: float | None = None, stats: TtftStats | None = None) -> None:
        self.state = state
        self.upstream_model = upstream_model
        self.key = key
        self.attempt = attempt
        self.request = request
        self.tokens = tokens  # estimated tokens, for TPM limits and quotas
        self.deadline = deadline  # absolute time by which the whole request must be done, or None
        self.start = 0.0
        self.ttft: float | None = None
        self.stats = stats
        self.probes = 0  # the breakers that counted this attempt as a half-open probe (ChannelState.started)

    def started(self, now: float) -> None:
        self.start = now
        self.probes = self.state.started(now, self.key, self.upstream_model, self.tokens)

    def first_token(self, now: float) -> None:
        ttft = self.ttft = now - self.start
        self.state.first_token(now, ttft)
        if self.stats is not None:
            self.stats.add(ttft)

    def succeeded(self, now: float, output_tokens: int = 0) -> None:
        self.state.succeeded(now, now - self.start, self.key, self.upstream_model, output_tokens, self.ttft,
                             self.probes)

    def used(self, now: float, tokens: int) -> None:
        """The attempt's usage came to `tokens` (input and output): what it used beyond the estimate
        counted at its start goes to the channel's TPM limits and quota too. (A driver whose estimate
        is exact, as the simulator's, has nothing to add.)"""
        if tokens > self.tokens:
            self.state.charge(now, self.key, tokens - self.tokens)

    def answered(self, now: float, output_tokens: int = 0) -> Outcome:
        """A whole answer arrived at `now` (a non-stream attempt, whose first event is its end):
        first_token and succeeded in one call. Returns the Outcome to send to execution."""
        ttft = self.ttft = now - self.start
        self.state.answered(now, ttft, self.key, self.upstream_model, output_tokens, self.probes)
        if self.stats is not None:
            self.stats.add(ttft)
        return Outcome(True, now, 200, None, None, ttft, self.key)

    def committed(self, now: float) -> Outcome:
        """A stream's first event arrived at `now` (its commit): first_token, and the Outcome to
        send to execution. The stream's end is reported later (succeeded / failed)."""
        self.first_token(now)
        return Outcome(True, now, 200, None, None, self.ttft, self.key)

    def failed(self, now: float, outcome: Outcome) -> None:
        if outcome.key is None:
            outcome.key = self.key
        self.state.failed(now, outcome, self.upstream_model, now - self.start, self.probes)

    def cancelled(self, now: float) -> None:
        """Abandoned (hedge lost, client gone): frees its slots, says nothing about health."""
        self.state.failed(now, Outcome(False, now, 0, None, key=self.key), self.upstream_model, None, self.probes)


class Wait:
    __slots__ = ("seconds",)

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds


class Launch:
    __slots__ = ("call",)

    def __init__(self, call: Call) -> None:
        self.call = call


class Race:
    __slots__ = ("handles", "timeout")

    def __init__(self, handles: tuple[int, ...], timeout: float | None) -> None:
        self.handles = handles
        self.timeout = timeout


class Cancel:
    __slots__ = ("handle",)

    def __init__(self, handle: int) -> None:
        self.handle = handle


Effect = Call | Wait | Launch | Race | Cancel


class Outcome:
    """What one attempt came to. `end` is the driver's clock when it was decided (the first event
    for streams); `payload` is the driver's own (a live response, nothing in the simulator)."""

    __slots__ = ("ok", "status", "kind", "retry_after", "end", "ttft", "key", "error", "payload")

    def __init__(self, ok: bool, end: float, status: int = 200, kind: ErrorKind | None = None,
                 retry_after: float | None = None, ttft: float | None = None, key: int | None = None,
                 error: Error | None = None, payload: Any = None) -> None:
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
    __slots__ = ("n", "channel", "key", "upstream_model", "start", "end", "status", "kind", "next", "decision")

    def __init__(self, n: int, channel: str, key: str | None, upstream_model: str, start: float, end: float,
                 status: int, kind: ErrorKind | None, next: str, decision: int | None = None) -> None:
        self.n = n
        self.channel = channel
        self.key = key
        self.upstream_model = upstream_model
        self.start = start
        self.end = end
        self.status = status
        self.kind = kind
        # What execution did next: done / retry / next_key / failover / give_up / cap / budget /
        # deadline / exhausted / hedge_lost / hedge_failed
        self.next = next
        self.decision = decision  # index into Result.decisions (when explained)

    def as_dict(self) -> dict[str, Any]:
        return {"attempt": self.n, "channel": self.channel, "key": self.key, "upstream_model": self.upstream_model,
                "start": self.start, "end": self.end, "status": self.status,
                "error": self.kind.value if self.kind else None, "next": self.next, "decision": self.decision}


class Result:
    __slots__ = ("ok", "outcome", "attempts", "error", "end", "decisions", "call")

    def __init__(self, ok: bool, outcome: Outcome | None, attempts: list[AttemptRecord], error: Error | None,
                 end: float, decisions: list[dict[str, Any]] | None = None, call: Call | None = None) -> None:
        self.ok = ok
        self.outcome = outcome  # the winning attempt, or the last failed one
        self.attempts = attempts
        self.error = error  # set when not ok: what the client is told
        self.end = end
        self.decisions = decisions  # the decision trace, when asked for
        self.call = call  # the winning attempt's Call: a committed stream reports its end through it

    def explain(self) -> dict[str, Any]:
        return {"decisions": self.decisions or [], "attempts": [a.as_dict() for a in self.attempts]}


# Characters of a model name an error message quotes: a client may send any name (10 MB of one was
# echoed whole, and stored with the record even without stored bodies).
QUOTED_MODEL = 200


def _quoted(model: str) -> str:
    return repr(model) if len(model) <= QUOTED_MODEL else repr(model[:QUOTED_MODEL]) + f"… ({len(model)} characters)"


def no_channel(model: str, reasons: dict[str, str] | None = None, retry_after: float | None = None) -> Error:
    why = ", ".join(f"{k}: {v}" for k, v in (reasons or {}).items())
    msg = f"no channel is available for model {_quoted(model)}" + (f" ({why})" if why else "")
    if retry_after is not None:
        return Error(kind=ErrorKind.RATE_LIMITED, status=429, message=msg, retry_after=retry_after,
                     code="rate_limited")
    return Error(kind=ErrorKind.UNAVAILABLE, status=503, message=msg, code="no_channel_available")


def unknown_model(model: str) -> Error:
    return Error(kind=ErrorKind.NOT_FOUND, status=404, message=f"the model {_quoted(model)} does not exist",
                 param="model", code="model_not_found")


# Exclusions by health checks, which panic mode may override.
_HEALTH = frozenset({"auto_disabled", "ejected", "breaker_open", "key_breaker_open"})

_KEY_FAULTS = frozenset({ErrorKind.AUTHENTICATION, ErrorKind.PERMISSION, ErrorKind.RATE_LIMITED})

# A request no wait will admit: larger than a channel's (or every key's) TPM limit.
TOO_LARGE = "request_over_tpm_limit"


class Router:
    """Everything execution needs, built once from a Config: channel states, candidates, balancer,
    policy, budget. Both drivers hold one Router and drive `execute` for every request."""

    def __init__(self, config: Config, call: type[Call] | None = None) -> None:
        """`call`: the class execution makes its Calls with — Call, or a driver's subclass that
        carries the driver's own per-attempt fields (the simulator's Attempt), so that an attempt
        is one object rather than two."""
        self.config = config
        self._call = Call if call is None else call
        routing = config.routing
        self.outlier = OutlierDetector(routing.health.outlier, len(config.channels))
        self.states = [ChannelState(ch, i, routing, self.outlier, ch.price or _price(config, ch))
                       for i, ch in enumerate(config.channels)]
        self.by_name = {s.name: s for s in self.states}
        self.candidates = Candidates(self.states)
        self.balancer = Balancer(make_strategy(routing, self.states))
        self.policy = Policy(routing.retry, {ch.name: ch.retry for ch in config.channels if ch.retry})
        self.budget = Budget(routing.retry.budget)
        self.hedge = routing.hedge if routing.hedge.enabled else None
        self.stats = TtftStats()
        # Recent TTFTs are read only to time percentile hedges (a reload carries them over only to a
        # Router with the same routing): without such hedging, calls do not feed them.
        self._feed_ttft = self.hedge is not None and self.hedge.delay is None
        self.sticky_mode = routing.sticky
        self.sticky: OrderedDict[str, str] = OrderedDict()  # trace/thread id -> last good channel
        self._tier_cache: dict[str, list[list[Candidate]]] = {}
        self.panic_mode = routing.health.panic
        # Read per request: fixed by the configuration, so computed once.
        self._plain = self.policy.deadline is None and self.hedge is None
        self._uses_context = self.balancer.strategy.uses_context

    # ---------------------------------------------------------------------------------------------

    @staticmethod
    def _split(groups: list[list[Candidate]]) -> list[list[Candidate]]:
        """Each priority group's positive-weight channels, then every group's standbys; whether a
        channel may take an attempt right now is asked per pick."""
        tiers = [[c for c in g if c.state.weight > 0] for g in groups]
        standby = [[c for c in g if c.state.weight <= 0] for g in groups]
        return [t for t in tiers + standby if t]

    def _tiers(self, model: str, needs: Needs = NO_NEEDS,
               lacking: dict[str, str] | None = None) -> list[list[Candidate]]:
        if not needs:
            tiers = self._tier_cache.get(model)
            if tiers is None:
                tiers = self._tier_cache[model] = self._split(self.candidates.all_groups(model))
            return tiers
        kept = []
        for g in self.candidates.all_groups(model):
            ok = []
            for c in g:
                why = missing(c.state.channel, needs)
                if why is None:
                    ok.append(c)
                elif lacking is not None:
                    lacking[c.state.name] = why
            kept.append(ok)
        return self._split(kept)

    def _hedge_delay(self) -> float | None:
        h = self.hedge
        if h is None:
            return None
        if h.delay is not None:
            return h.delay
        if len(self.stats.samples) < h.min_samples:
            return None
        assert h.percentile is not None
        return self.stats.percentile(h.percentile)

    def remember(self, sticky_key: str | None, channel: str) -> None:
        if sticky_key is None or self.sticky_mode == "none":
            return
        self.sticky[sticky_key] = channel
        self.sticky.move_to_end(sticky_key)
        if len(self.sticky) > 100_000:
            self.sticky.popitem(last=False)

    def execute(self, model: str, now: float, rng: random.Random, request: Any = None, tokens: int = 0,
                sticky_key: str | None = None, explain: bool = False, stream: bool = False,
                needs: Needs = NO_NEEDS) -> Generator[Effect, Any, Result]:
        attempts: list[AttemptRecord] = []
        decisions: list[dict[str, Any]] | None = [] if explain else None
        # The common request needs nothing special: its tiers come from the cache, which holds
        # known models only (an unknown model never gets past the check below).
        tiers = self._tier_cache.get(model) if needs is NO_NEEDS or not needs else None
        if tiers is None and not self.candidates.known(model):
            return Result(False, None, attempts, unknown_model(model), now, decisions)
        policy = self.policy
        balancer = self.balancer
        budget = self.budget
        budget_on = budget.enabled  # read here: a reload may hand this Router the previous one's budget
        if budget_on:
            budget.on_request(now)
        if self._plain and sticky_key is None:  # no deadline, sticky key or hedging: nothing to set up
            deadline = sticky = hedge_delay = None
        else:
            deadline = now + policy.deadline if policy.deadline is not None else None
            sticky = self.sticky.get(sticky_key) if sticky_key is not None and self.sticky_mode != "none" else None
            hedge_delay = self._hedge_delay() if self.hedge is not None else None
        # Strategies that never read the context are handed the shared empty one (one object less per request).
        ctx = PickContext(model, stream, tokens) if self._uses_context or explain else NO_CONTEXT
        n = 0
        last: Outcome | None = None
        # Per channel and key, when its last refusal said to come back (Retry-After): the soonest is
        # when the client may (see _client_error_at).
        retry_at: dict[tuple[str, int | None], float] | None = None
        # why candidates were skipped, and the panic candidates: made only when there is one
        unavailable: dict[str, str] | None = None
        held: _Held | None = None  # when the candidates nothing could be tried on could be, and panic's
        decision: int | None = None  # the pick's index into decisions (explained picks only)
        left_out: dict[str, str] | None = None  # channels that cannot carry this request, and why (explained)
        if tiers is None:
            if needs:
                lacking: dict[str, str] = {}
                tiers = self._tiers(model, needs, lacking)
                if not tiers and lacking:
                    return Result(False, None, attempts, _cannot_carry(model, lacking), now, decisions)
                if lacking and decisions is not None:
                    left_out = lacking
            else:
                tiers = self._tiers(model)
        n_tiers = len(tiers)
        tier_no = 0
        while tier_no < len(tiers):
            tier = tiers[tier_no]
            in_panic = tier_no >= n_tiers
            tier_no += 1
            # Read only: a tried candidate is left out of a new list when the rest is needed again (a
            # hedge, a failover), so the common request — answered by its first pick — copies nothing.
            remaining = tier
            while remaining:
                if sticky is None and decisions is None and not in_panic:
                    # the common case: eligibility, the strategy's pick and its bookkeeping in one call
                    cand = balancer.choose(remaining, now, rng, tokens, ctx)
                    chosen_by = "strategy"
                else:  # sticky, explained or panic
                    cand = None
                    eligible = ([c for c in remaining if _panic_may(c, now, tokens)] if in_panic
                                else [c for c in remaining if c.state.eligible(now, c.upstream_model, tokens)])
                    if eligible:
                        chosen_by = "panic" if in_panic else "strategy"
                        if sticky is not None:
                            cand = next((c for c in eligible if c.state.name == sticky), None)
                            if cand is not None:
                                balancer.mark(cand, now)
                                chosen_by = "sticky"
                            sticky = None  # one-shot
                        if decisions is not None:
                            decision = len(decisions)
                            decisions.append({"tier": "panic" if in_panic else tier_no - 1, "time": now,
                                              "candidates": balancer.explain(remaining, now, tokens, ctx)})
                            if left_out:
                                decisions[-1]["left_out"] = left_out
                        if cand is None:
                            cand = balancer.pick(remaining, now, rng, tokens, eligible, ctx)
                            assert cand is not None
                        if decisions is not None:
                            decisions[-1].update(chosen=cand.state.name, by=chosen_by)
                if cand is None:  # nothing may take an attempt now
                    if decisions is not None:  # the trace says why this tier served nothing
                        decisions.append({"tier": "panic" if in_panic else tier_no - 1, "time": now,
                                          "candidates": balancer.explain(remaining, now, tokens, ctx), "chosen": None})
                        if left_out:
                            decisions[-1]["left_out"] = left_out
                    if unavailable is None:
                        unavailable = {}
                    if held is None:
                        held = _Held()
                    for c in remaining:
                        why = c.state.unavailable_reason(now, c.upstream_model, tokens) or "unavailable"
                        unavailable[c.state.name] = why
                        if why != "disabled" and not held.note(c, tier_no - 1, now, tokens, not in_panic):
                            unavailable[c.state.name] = TOO_LARGE  # no wait will do: over a TPM limit
                    break
                st = cand.state
                same = 0  # retries on this candidate (its limit is looked up at the first failure)
                rest: list[Candidate] | None = None  # remaining without cand, once made
                while True:
                    key = st.next_key(now, rng, tokens, cand.upstream_model)
                    if key is None and st.keys and in_panic:
                        # Key breakers trip with the channel's: panic tries a key they hold back too.
                        key = st.panic_key(now, tokens)
                    if key is None and st.keys:
                        if unavailable is None:
                            unavailable = {}
                        unavailable[st.name] = st.keys_reason(now, tokens)
                        if held is None:
                            held = _Held()
                        if not held.note(cand, tier_no - 1, now, tokens, not in_panic):
                            unavailable[st.name] = TOO_LARGE
                        break
                    n += 1
                    start = now
                    call = self._call(st, cand.upstream_model, key, n, request, tokens, deadline,
                                      self.stats if self._feed_ttft else None)
                    if hedge_delay is not None and n == 1 and len(remaining) > 1 and policy.max_attempts > 1:
                        rest = [c for c in remaining if c is not cand]
                        if retry_at is None:
                            retry_at = {}
                        out, call, extra, cand, decision = yield from self._hedged(
                            call, cand, hedge_delay, rest, rng, tokens, deadline, request, attempts, decision,
                            decisions, ctx, retry_at)
                        n += extra
                        st = call.state
                        key = call.key
                        start = call.start
                    else:
                        out = yield call
                    now = out.end
                    # Numbered by the call it belongs to: after a hedge the outcome may be the first
                    # attempt's, and the other attempt is already recorded under its own number. Recorded
                    # last all the same: the last record is the one that answered (or failed last).
                    if out.ok:
                        attempts.append(AttemptRecord(call.attempt, st.name,
                                                      None if key is None else st.keys[key].name,
                                                      call.upstream_model, start, now, out.status, None, "done",
                                                      decision))
                        if sticky_key is not None:
                            self.remember(sticky_key, st.name)
                        return Result(True, out, attempts, None, now, decisions, call)
                    last = out
                    if out.retry_after is not None:
                        if retry_at is None:
                            retry_at = {}
                        retry_at[(st.name, key)] = now + out.retry_after
                    elif retry_at is not None:
                        retry_at.pop((st.name, key), None)  # its latest answer named no time
                    kind = out.kind if out.kind is not None else ErrorKind.SERVER_ERROR
                    message = out.error.message if out.error is not None else None
                    action = policy.action(kind, out.status, message, st.name)
                    rec = AttemptRecord(call.attempt, st.name, st.key_name(key), call.upstream_model, start, now,
                                        out.status, kind, "", decision)
                    attempts.append(rec)
                    if action is Action.GIVE_UP or n >= policy.max_attempts:
                        rec.next = "give_up" if action is Action.GIVE_UP else "cap"
                        return Result(False, out, attempts, _client_error_at(out, retry_at, now), now, decisions)
                    # A key pool: a key's own trouble (bad credentials, its rate limit) moves to another
                    # key of the same channel rather than to another channel.
                    key_swap = (kind in _KEY_FAULTS and action is Action.FAILOVER and key is not None
                                and st.other_key_available(now, key, tokens, cand.upstream_model))
                    retry_here = key_swap or (action is Action.RETRY and same < (
                        0 if chosen_by == "sticky" else policy.same_channel_limit(cand.state.name)
                        if policy.max_same_by_channel else policy.max_same))
                    ra = out.retry_after if retry_here and not key_swap else None
                    if ra is not None and ra > policy.cap:
                        # A Retry-After beyond the backoff cap is not waited out on this channel:
                        # another may answer now (the client hears it if none does).
                        retry_here = False
                        ra = None
                    wait = policy.backoff(same + 1 if retry_here else 1, rng, ra)
                    if deadline is not None and now + wait >= deadline and retry_here and not key_swap:
                        retry_here = False  # this channel's wait is too long; another may still make it
                        wait = policy.backoff(1, rng, None)
                    if deadline is not None and now + wait >= deadline:
                        rec.next = "deadline"
                        return Result(False, out, attempts, _deadline_error(), now, decisions)
                    if budget_on and not budget.try_retry(now):
                        rec.next = "budget"
                        return Result(False, out, attempts, _client_error_at(out, retry_at, now), now, decisions)
                    if retry_here:
                        if key_swap:
                            rec.next = "next_key"
                        else:
                            same += 1
                            rec.next = "retry"
                        now = yield Wait(wait)
                        held_by = st.unavailable_reason(now, cand.upstream_model, tokens)
                        if held_by is None or (in_panic and held_by in _HEALTH  # (panic overrides health alone)
                                               and st.held_by_health_alone(now, cand.upstream_model, tokens)):
                            continue
                        # The wait over, this channel may not take the attempt (its concurrency or
                        # rate limit, taken by other requests meanwhile; its breaker): the next one.
                        rec.next = "failover"
                        break
                    rec.next = "failover"
                    now = yield Wait(wait)
                    break
                remaining = rest if rest is not None else [c for c in remaining if c is not cand]
            if tier_no == n_tiers and n == 0 and held is not None and self.panic_mode and held.panics():
                # Nothing was tried, some candidates are held by health alone, and the first of
                # them all to come back would need a health exclusion to lift (a candidate that is
                # only waiting frees later, or never): panic mode tries them now, priority by
                # priority, rather than fail without an attempt. Had a healthy path freed first
                # (a limit, a cooldown), the client would be told to come back then instead.
                panic_tiers = [held.panic[t] for t in sorted(held.panic)]
                tiers = [*tiers, *panic_tiers]
                if decisions is not None:
                    decisions.append({"tier": "panic", "time": now,
                                      "candidates": [c.state.name for t in panic_tiers for c in t]})
        if attempts and attempts[-1].next in ("failover", "retry"):
            attempts[-1].next = "exhausted"
        if last is None:
            # 429 with the time the client may come back when that is a wait (a limit, a cooldown, a
            # quota: see _Held.comes_back); else 503.
            back = held.comes_back(self.panic_mode) if held is not None else math.inf
            retry_after = None if back == math.inf else max(0.0, back - now)
            standing = [v for v in unavailable.values() if v != "disabled"] if unavailable else []
            if standing and all(v == TOO_LARGE for v in standing):
                return Result(False, None, attempts, _too_large(model, unavailable), now, decisions)  # type: ignore[arg-type]
            return Result(False, None, attempts, no_channel(model, unavailable, retry_after), now, decisions)
        return Result(False, last, attempts, _client_error_at(last, retry_at, now), now, decisions)

    def _hedged(self, first: Call, first_cand: Candidate, delay: float, remaining: list[Candidate],
                rng: random.Random, tokens: int, deadline: float | None, request: Any, attempts: list[AttemptRecord],
                decision: int | None, decisions: list[dict[str, Any]] | None, ctx: PickContext,
                retry_at: dict[tuple[str, int | None], float],
                ) -> Generator[Effect, Any, tuple[Outcome, Call, int, Candidate, int | None]]:
        """Run `first`; if it has no first event after `delay`, start one more attempt on the best
        other candidate. The first success wins and the loser is cancelled and recorded; if both
        fail, the later failure is returned. Returns (outcome, the Call it belongs to, extra attempts,
        that Call's candidate: a retry after it goes to that channel with its upstream model, and the
        decision that chose it: the hedge's pick is a decision of its own, `by: hedge`)."""
        h1 = yield Launch(first)
        got = yield Race((h1,), delay)
        if got is not None:
            return got[1], first, 0, first_cand, decision
        now = first.start + delay
        second = self.balancer.pick(remaining, now, rng, tokens, None, ctx, rotate=False)
        if second is not None and self.budget.enabled and not self.budget.try_retry(now):
            second = None  # a hedge is an extra attempt: the retry budget counts it (as Envoy does)
        if second is None:
            got = yield Race((h1,), None)
            return got[1], first, 0, first_cand, decision
        decision2 = decision
        if decisions is not None:
            decision2 = len(decisions)
            decisions.append({"tier": decisions[decision]["tier"] if decision is not None else None, "time": now,
                              "candidates": self.balancer.explain(remaining, now, tokens, ctx),
                              "chosen": second.state.name, "by": "hedge"})
        remaining.remove(second)
        key = second.state.next_key(now, rng, tokens, second.upstream_model)
        call2 = self._call(second.state, second.upstream_model, key, first.attempt + 1, request, tokens, deadline,
                           self.stats if self._feed_ttft else None)
        h2 = yield Launch(call2)
        calls = {h1: first, h2: call2}
        running = [h1, h2]
        while True:
            h, o = yield Race(tuple(running), None)
            running.remove(h)
            c = calls[h]
            if o.ok or not running:
                for other in running:
                    t = yield Cancel(other)
                    lost = calls[other]
                    if lost is first and lost.stats is not None and lost.ttft is None:
                        # Its first token would have come later than this: a slow sample the stats
                        # must keep (without it, cancelled slow attempts leave the sample, the
                        # percentile drifts low and hedges fire ever more often).
                        lost.stats.add(t - lost.start)
                    attempts.append(AttemptRecord(lost.attempt, lost.state.name, lost.state.key_name(lost.key),
                                                  lost.upstream_model, lost.start, t, 0, None, "hedge_lost",
                                                  decision if lost is first else decision2))
                # the caller records `c`'s outcome, under c.attempt, after these
                return o, c, 1, (first_cand if c is first else second), (decision if c is first else decision2)
            attempts.append(AttemptRecord(c.attempt, c.state.name, c.state.key_name(c.key), c.upstream_model,
                                          c.start, o.end, o.status, o.kind, "hedge_failed",
                                          decision if c is first else decision2))
            if o.retry_after is not None:
                retry_at[(c.state.name, c.key)] = o.end + o.retry_after


class _Held:
    """The candidates nothing could be tried on: when each could take the request, from
    ChannelState.free_times, and those panic mode may try now, by tier."""

    __slots__ = ("healthy", "natural", "later_panic", "panic")

    def __init__(self) -> None:
        self.healthy = math.inf  # the first to free by a path no health exclusion holds (a wait)
        self.natural = math.inf  # the first to free by any path (health lifting included)
        self.later_panic = math.inf  # the first health-held one whose waits pass later: panic's then
        self.panic: dict[int, list[Candidate]] = {}  # tier -> candidates held by health alone now

    def note(self, c: Candidate, tier: int, now: float, tokens: int, may_panic: bool) -> bool:
        """Take one in; False if no wait would ever admit the request (over a TPM limit)."""
        panic_at, healthy, natural = c.state.free_times(now, c.upstream_model, tokens)
        if panic_at == math.inf:
            return False
        self.healthy = min(self.healthy, healthy)
        self.natural = min(self.natural, natural)
        if panic_at < natural:  # health holds it beyond its waits
            if panic_at <= now:
                if may_panic:
                    self.panic.setdefault(tier, []).append(c)
            else:
                self.later_panic = min(self.later_panic, panic_at)
        return True

    def panics(self) -> bool:
        """Whether panic mode applies: some candidate is held by health alone, and no path without
        health to lift frees as soon as the first health exclusion lifts."""
        return bool(self.panic) and not self.healthy <= self.natural

    def comes_back(self, panic_mode: bool) -> float:
        """When the client may come back (math.inf: no time to tell, 503): when a path without
        health to lift frees, if that comes first; with panic mode, else when a health-held
        channel's own waits pass (panic's to try then)."""
        if self.healthy <= self.natural:
            return self.healthy
        return min(self.healthy, self.later_panic) if panic_mode else math.inf


def _panic_may(c: Candidate, now: float, tokens: int) -> bool:
    """Panic mode overrides health (breakers, ejection, temporary auto-disables), nothing else."""
    return c.state.held_by_health_alone(now, c.upstream_model, tokens)


def _too_large(model: str, reasons: dict[str, str]) -> Error:
    names = ", ".join(k for k, v in reasons.items() if v == TOO_LARGE)
    return Error(kind=ErrorKind.RATE_LIMITED, status=429, code="request_too_large",
                 message=f"the request needs more tokens than the TPM limit of every channel serving {model!r} "
                         f"allows in a minute ({names}); it cannot be served as it is: ask for fewer tokens")


def _price(config: Config, ch: Any) -> Any:
    for m in ch.models:
        if m in config.prices:
            return config.prices[m]
    return None


def _cannot_carry(model: str, lacking: dict[str, str]) -> Error:
    why = "; ".join(f"{name} lacks {what}" for name, what in lacking.items())
    return Error(kind=ErrorKind.INVALID_REQUEST, status=400, code="unsupported_by_channels",
                 message=f"no channel serving {model!r} can carry this request: {why}")


def _deadline_error() -> Error:
    return Error(kind=ErrorKind.TIMEOUT, status=504, message="the request's deadline passed before an answer",
                 code="deadline_exceeded")


# What the client is told when the upstream answer is final: its own request errors pass through;
# the gateway's upstream troubles become gateway statuses (an upstream 401 is not the client's 401).
_CLIENT_STATUS = {
    # kind becomes SERVER_ERROR below: formats derive the status from the kind, and the client's own
    # credentials were fine
    ErrorKind.AUTHENTICATION: (502, "the upstream rejected this gateway's credentials"),
    ErrorKind.PERMISSION: (502, "the upstream refused this gateway's credentials"),
    ErrorKind.RATE_LIMITED: (429, None),
    ErrorKind.OVERLOADED: (503, None),
    ErrorKind.SERVER_ERROR: (502, None),
    ErrorKind.TIMEOUT: (504, "the upstream did not answer in time"),
    ErrorKind.CONNECTION: (502, "the connection to the upstream failed"),
    ErrorKind.UNAVAILABLE: (503, None),
}


def _client_error_at(out: Outcome, retry_at: dict[tuple[str, int | None], float] | None, now: float) -> Error:
    """The client's error for a request that ends on `out`, at `now`. A 429's Retry-After is the
    last answer's, or the sooner time another channel or key's last refusal named (by more than the
    header's one-second resolution): the client may come back then. (A time already past: now.)"""
    err = _client_error(out)
    if err.retry_after is not None and retry_at:
        soonest_at = min(retry_at.values())
        if soonest_at < out.end + err.retry_after - 1.0:
            err = err.model_copy(update={"retry_after": max(0.0, soonest_at - now)})  # errors may be shared
    return err


def _client_error(out: Outcome) -> Error:
    kind = out.kind or ErrorKind.SERVER_ERROR
    err = out.error
    message = err.message if err is not None else f"upstream failed: {kind.value}"
    if kind not in _CLIENT_STATUS:
        if err is not None:
            return err
        return Error(kind=kind, status=out.status or 400, message=message)
    status, fixed = _CLIENT_STATUS[kind]
    if kind is ErrorKind.AUTHENTICATION or kind is ErrorKind.PERMISSION:
        kind = ErrorKind.SERVER_ERROR
    code, family = (err.code, err.code_family) if err is not None and fixed is None else (None, None)
    return Error(kind=kind, status=status, message=fixed or message, retry_after=out.retry_after,
                 code=code, code_family=family)
