"""Simulated channel: the behaviour model, concurrency slots (a counter and a FIFO deque) and each attempt's timeline.

Timeline of one attempt (t0 = when execution yields the Call, or Launches it):

    t0       the attempt's draws are taken (fault, TTFT, output length) from this channel's own stream;
             Call.started; a slot is taken, or the attempt queues (when_full: queue) or is answered
             503 at once (when_full: reject)
    tg       slot granted (tg = t0 unless it queued); TTFT and generation time count from here
    tg+ttft  first token: a stream's Outcome is sent to execution here (the commit point); an
             error status (500, 502, 429 with its Retry-After, 503, an outage's status) or a reset
             is answered here
    end      tg + ttft + generation: a non-stream answer's Outcome is sent here; a stream finishes;
             a cut stream fails at the cut (after its commit), a cut non-stream body likewise

The gateway's timeouts count from t0, queueing included (as the live upstream client counts them):
no first token by t0 + first_token (or a `timeout` fault) → TIMEOUT at that instant, slot released;
a queued attempt whose deadline passes leaves the queue; an attempt still running at t0 + total is
cut there. A request's `routing.retry.deadline` bounds its attempts the same way, when it is sooner.

The channel reports only what a live driver can observe (server/driver.py does the same): a
non-stream attempt's first event is its whole answer, so Call.first_token is reported there.

Scheduling. An attempt (or the channel, for its queue deadline) is its own SimPy event: SimPy's
`Environment.step` needs only `callbacks` and `_ok` of what it pops, so `at()` pushes the object
with a constant one-callback tuple straight onto the environment's queue, with SimPy's own
(time, priority, id) key. This skips a Timeout object and its constructor per event (about a
third of SimPy's cost here) and keeps SimPy's ordering: same-instant events run in the order they
were scheduled. An attempt has at most one pending event at a time, which is what makes this safe.
"""

from __future__ import annotations

import math
from collections import deque
from heapq import heappush
from typing import TYPE_CHECKING, Any

from simpy.events import NORMAL

from axonsim.behavior import FULL_STATUS, RESET, STREAM_CUT, TIMEOUT, AttemptPlan, BehaviorModel
from axonsim.config import Timeouts
from axonsim.execution import Call, Outcome
from axonsim.state import ChannelState
from axonsim.unified import Error, ErrorKind, error_kind_for_status

if TYPE_CHECKING:
    from axonsim.sim.driver import SimRequest, Simulation
    from axonsim.sim.streams import ChannelRandom

# Fault labels the driver adds to the behaviour model's (attempts table, `fault` column).
FULL = "full"  # rejected: every slot taken and when_full: reject
QUEUE_TIMEOUT = "queue_timeout"  # timed out waiting for a slot
CANCELLED = "cancelled"  # abandoned by execution (a hedge that lost)

# Attempt phases.
QUEUED, RUNNING, STREAMING, DONE, ABANDONED = range(5)


NAN = math.nan


def at(env: Any, delay: float, obj: Any, callbacks: tuple[Any, ...]) -> None:
    """Schedule `obj` as an event `delay` seconds from now (see the module docstring). The hot
    paths below inline these two lines."""
    obj.callbacks = callbacks
    queue: list[Any] = env._queue
    heappush(queue, (env._now + delay, NORMAL, next(env._eid), obj))


class Attempt(Call):
    """One upstream attempt: the core's Call (execution makes it through Router(call=Attempt)),
    plus what was drawn for it and what became of it — one object per attempt, not two. Its Call
    fields say which channel, key and attempt number; `request` is the SimRequest and `start`
    (set by Call.started when it is submitted) the time execution made the Call. `handle` is its
    index in the request's attempts (what a Launch answers), -1 for a plain Call. `t_grant` is NaN
    until it holds a slot (a rejected or queue-expired attempt never does). The fields below are
    set when the attempt is submitted (SimChannel.submit), before anything reads them."""

    __slots__ = ("ch", "plan", "handle", "phase", "t_grant", "t_first", "t_end", "status", "error", "fault",
                 "out_tokens", "callbacks")
    _ok = True  # what SimPy's step() checks of an event it has run
    ch: SimChannel
    plan: AttemptPlan
    handle: int
    phase: int
    t_grant: float
    t_first: float
    t_end: float
    status: int
    error: str | None
    fault: str | None
    out_tokens: int
    callbacks: tuple[Any, ...] | None  # set whenever the attempt is scheduled (it is the event itself)


class SimChannel:
    """One channel's model in the simulator. `busy` counts held slots (what the provider limits);
    ChannelState.inflight, which strategies read, also counts queued attempts (what the gateway sees)."""

    __slots__ = ("sim", "env", "heap", "eid", "state", "index", "name", "model", "rng", "cap", "load", "queue", "waiting",
                 "busy", "t_first", "t_total", "guard", "errors", "e_full", "e_reset", "e_timeout", "e_cut",
                 "callbacks", "deadlined")
    _ok = True  # the channel is the event of its queue-deadline check

    def __init__(self, sim: Simulation, state: ChannelState, rng: ChannelRandom, model_seed: int,
                 gateway_timeouts: Timeouts) -> None:
        ch = state.channel
        b = ch.behavior
        self.sim = sim
        self.env = sim.env
        # SimPy's event queue and id counter, bound once (see `at`); typed loosely because what is
        # pushed is an attempt, not a simpy Event.
        self.heap: list[Any] = sim.env._queue
        self.eid = sim.env._eid
        self.state = state
        self.index = state.index
        self.name = ch.name
        self.model = BehaviorModel(b, model_seed)  # the seed drives its outage process
        self.rng = rng
        self.cap: float = b.max_concurrency if b.max_concurrency is not None else math.inf
        self.load = self.model.load_aware  # the model reads the utilisation: compute it per attempt
        self.queue = self.model.queue
        self.waiting: deque[Attempt] = deque()
        self.busy = 0
        to = ch.timeouts or gateway_timeouts
        self.t_first = to.first_token
        self.t_total = to.total
        self.guard = False  # a queue-deadline check is scheduled
        self.callbacks: tuple[Any, ...] | None = None
        # Queued attempts whose request deadline (routing.retry.deadline) comes before their
        # first-token deadline: FIFO order does not put those at the head, so each gets a check of
        # its own, an event object of its own (an object holds one pending callbacks tuple).
        self.deadlined: list[Attempt] = []
        # Errors are immutable values: built once per channel and status, shared by the failed attempts.
        self.errors: dict[int, Error] = {}
        self.e_full = Error(kind=error_kind_for_status(FULL_STATUS), status=FULL_STATUS,
                            message="the channel is at its maximum concurrency")
        self.e_reset = Error(kind=ErrorKind.CONNECTION, status=0, message="the connection to the upstream failed")
        self.e_timeout = Error(kind=ErrorKind.TIMEOUT, status=0, message="the upstream did not answer in time")
        self.e_cut = Error(kind=ErrorKind.CONNECTION, status=0, message="the upstream stream was interrupted")

    # -- admission ------------------------------------------------------------------------------

    def submit(self, req: SimRequest, a: Attempt, now: float, handle: int) -> None:
        """Execution asked for attempt `a` (of `req`) on this channel at `now`."""
        # Drawn now, whatever happens next: the stream's position depends only on the number of calls.
        busy = self.busy
        cap = self.cap
        out = req.out
        a.plan = plan = self.model.sample(self.rng, now, busy / cap if busy and self.load else 0.0,
                                          req.inp, out if out >= 0 else None)  # type: ignore[arg-type]
        a.ch = self
        a.handle = handle
        a.t_grant = a.t_first = NAN
        a.t_end = now
        a.status = 0
        a.error = None
        a.fault = plan.fault
        a.out_tokens = 0
        req.atts += (a,)
        a.started(now)
        if busy < cap:  # (phase: _begin sets RUNNING, the branches below QUEUED or DONE)
            self.busy = busy + 1
            self._begin(a, now)
        elif self.queue:
            a.phase = QUEUED
            self.waiting.append(a)
            if not self.guard:
                self.guard = True
                at(self.env, self.t_first, self, _GUARD)
            d = a.deadline
            if d is not None and d < a.start + self.t_first:
                self.deadlined.append(a)
                # At `d` itself: now + (d - now) can round to just below d, and the check would find
                # the attempt not yet due and never look again.
                g = _DeadlineGuard(self)
                g.callbacks = _DEADLINE
                heappush(self.heap, (d if d > now else now, NORMAL, next(self.eid), g))
        else:
            a.fault = FULL
            self.fail(a, now, self.e_full)

    def _begin(self, a: Attempt, now: float) -> None:
        """A slot was granted to `a` at `now`: schedule what it comes to."""
        a.t_grant = now
        a.phase = RUNNING
        plan = a.plan
        fault = plan.fault
        first = now + plan.ttft
        total = _total(a, self.t_total)
        deadline = a.start + self.t_first
        if deadline > total:
            deadline = total
        if first > deadline or (fault is not None and fault == TIMEOUT):  # `is not None`: most attempts have no fault
            at(self.env, deadline - now if deadline > now else 0.0, a, _TIMEOUT)
        elif fault is None or fault == STREAM_CUT:
            if a.request.stream:
                a.callbacks = _FIRST
                heappush(self.heap, (first, NORMAL, next(self.eid), a))
            else:
                end = first + plan.generation
                if end > total:
                    at(self.env, total - now, a, _TIMEOUT)
                else:
                    a.callbacks = _ANSWER
                    heappush(self.heap, (now + (end - now), NORMAL, next(self.eid), a))
        else:
            at(self.env, plan.ttft, a, _ERROR)

    def release(self, now: float) -> None:
        """Free one slot; the head of the queue, if any, takes it at once."""
        if self.waiting:
            self._begin(self.waiting.popleft(), now)
        else:
            self.busy -= 1

    # -- endings --------------------------------------------------------------------------------

    def error(self, status: int, retry_after: float | None) -> Error:
        """The Error an upstream answer with `status` is classified as (429s carry their Retry-After)."""
        if retry_after is not None:
            return Error(kind=error_kind_for_status(status), status=status, retry_after=retry_after,
                         message=f"the upstream answered HTTP {status}")
        err = self.errors.get(status)
        if err is None:
            err = self.errors[status] = Error(kind=error_kind_for_status(status), status=status,
                                              message=f"the upstream answered HTTP {status}")
        return err

    def fail(self, a: Attempt, now: float, err: Error) -> None:
        """The attempt failed before its commit: report, then tell execution."""
        out = Outcome.failure(now, err, a.key)
        a.phase = DONE
        a.t_end = now
        a.status = err.status
        a.error = err.kind.value
        a.failed(now, out)
        self.sim.deliver(a, out)

    def cancel(self, a: Attempt, now: float) -> None:
        """Execution abandoned `a` (a hedge that lost): free what it holds, account it as cancelled."""
        phase = a.phase
        if phase == DONE or phase == ABANDONED:
            return
        if phase == QUEUED:
            self.waiting.remove(a)
        else:
            self.release(now)
        a.phase = ABANDONED
        a.t_end = now
        a.fault = CANCELLED
        a.cancelled(now)

    def expire_queue(self, now: float) -> None:
        """Time out the queued attempts whose first-token deadline has passed. One timeout per
        channel and FIFO order put the earliest deadlines at the head, so one check per channel
        suffices, rescheduled for the new head's deadline."""
        waiting = self.waiting
        t_first = self.t_first
        while waiting and waiting[0].start + t_first <= now:
            a = waiting.popleft()
            a.fault = QUEUE_TIMEOUT
            self.fail(a, now, self.e_timeout)
        if waiting:
            at(self.env, waiting[0].start + t_first - now, self, _GUARD)
        else:
            self.guard = False

    def expire_deadlined(self, now: float) -> None:
        """Time out the queued attempts whose request deadline has passed (see `deadlined`)."""
        keep: list[Attempt] = []
        for a in self.deadlined:
            if a.phase != QUEUED:
                continue  # granted a slot, or gone, since
            d = a.deadline
            if d is not None and d <= now:
                self.waiting.remove(a)
                a.fault = QUEUE_TIMEOUT
                self.fail(a, now, self.e_timeout)
            else:
                keep.append(a)
        self.deadlined = keep


class _DeadlineGuard:
    """The event of one request-deadline check of a channel's queue (the channel is the event of
    its first-token one)."""

    __slots__ = ("ch", "callbacks")
    _ok = True

    def __init__(self, ch: SimChannel) -> None:
        self.ch = ch
        self.callbacks: tuple[Any, ...] | None = None


# Event callbacks: one per phase, at module level; the event is the Attempt (or the channel).
# An attempt abandoned meanwhile (phase ABANDONED) ignores its events.


def _on_error(a: Attempt) -> None:
    if a.phase != RUNNING:
        return
    ch = a.ch
    now = ch.env._now
    ch.release(now)
    plan = a.plan
    ch.fail(a, now, ch.e_reset if plan.fault == RESET else ch.error(plan.status, plan.retry_after))


def _on_timeout(a: Attempt) -> None:
    if a.phase != RUNNING:
        return
    ch = a.ch
    now = ch.env._now
    ch.release(now)
    if a.fault is None:
        a.fault = TIMEOUT
    ch.fail(a, now, ch.e_timeout)


def _on_answer(a: Attempt) -> None:
    """A non-stream attempt's whole answer (or its truncated body) arrived."""
    if a.phase != RUNNING:
        return
    ch = a.ch
    now = ch.env._now
    if ch.waiting:  # SimChannel.release written out: the once-per-request callbacks
        ch._begin(ch.waiting.popleft(), now)
    else:
        ch.busy -= 1
    fault = a.plan.fault
    if fault is not None and fault == STREAM_CUT:  # most attempts have no fault: `is` first
        ch.fail(a, now, ch.e_cut)
        return
    tokens = a.plan.output_tokens
    out = a.answered(now, tokens)
    a.phase = DONE
    a.t_first = a.t_end = now
    a.status = 200
    a.out_tokens = tokens
    if a.handle < 0:  # a plain Call (what Simulation.deliver would do first)
        ch.sim.step(a.request, out)
    else:
        ch.sim.deliver(a, out)


def _total(a: Attempt, t_total: float) -> float:
    """When the gateway gives up on attempt `a`: its total timeout, or the request's deadline if sooner
    (the live upstream bounds an attempt the same way)."""
    total = a.start + t_total
    d = a.deadline
    if d is not None and d < total:
        return d
    return total


def _on_first(a: Attempt) -> None:
    """A stream's first token: the commit point. The rest of the stream plays out here, unseen by execution."""
    if a.phase != RUNNING:
        return
    ch = a.ch
    now = ch.env._now
    out = a.committed(now)
    a.phase = STREAMING
    a.t_first = now
    a.status = 200
    gen = a.plan.generation  # to the cut, for a cut stream
    total = _total(a, ch.t_total)
    if now + gen > total:
        at(ch.env, total - now, a, _STREAM_TIMEOUT)
    else:
        a.callbacks = _STREAM_END
        heappush(ch.heap, (now + gen, NORMAL, next(ch.eid), a))
    if a.handle < 0:
        ch.sim.step(a.request, out)
    else:
        ch.sim.deliver(a, out)


def _on_stream_end(a: Attempt) -> None:
    if a.phase != STREAMING:
        return
    ch = a.ch
    now = ch.env._now
    if ch.waiting:  # SimChannel.release written out: the once-per-request callbacks
        ch._begin(ch.waiting.popleft(), now)
    else:
        ch.busy -= 1
    a.phase = DONE
    a.t_end = now
    plan = a.plan
    fault = plan.fault
    if fault is not None and fault == STREAM_CUT:
        a.out_tokens = plan.cut_tokens
        a.error = STREAM_CUT
        a.failed(now, Outcome.failure(now, ch.e_cut, a.key))
    else:
        a.out_tokens = plan.output_tokens
        a.succeeded(now, a.out_tokens)
    ch.sim.stream_done(a)


def _on_stream_timeout(a: Attempt) -> None:
    """A committed stream still running at the total timeout: the gateway cuts it."""
    if a.phase != STREAMING:
        return
    ch = a.ch
    now = ch.env._now
    ch.release(now)
    a.phase = DONE
    a.t_end = now
    a.error = ErrorKind.TIMEOUT.value
    a.fault = TIMEOUT
    plan = a.plan
    planned = plan.cut_tokens if plan.fault == STREAM_CUT else plan.output_tokens
    gen = plan.generation
    a.out_tokens = min(planned, int(planned * (now - a.t_first) / gen)) if gen > 0 else 0
    a.failed(now, Outcome.failure(now, ch.e_timeout, a.key))
    ch.sim.stream_done(a)


def _on_guard(ch: SimChannel) -> None:
    ch.expire_queue(ch.env._now)


def _on_deadline(g: _DeadlineGuard) -> None:
    g.ch.expire_deadlined(g.ch.env._now)


# One constant callbacks tuple per phase: scheduling allocates no list.
_ERROR = (_on_error,)
_TIMEOUT = (_on_timeout,)
_ANSWER = (_on_answer,)
_FIRST = (_on_first,)
_STREAM_END = (_on_stream_end,)
_STREAM_TIMEOUT = (_on_stream_timeout,)
_GUARD = (_on_guard,)
_DEADLINE = (_on_deadline,)
