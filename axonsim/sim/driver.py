"""The SimPy driver: replays a workload through the core's execution generator, one callback per phase, no Process per request.

For every arrival the driver creates `router.execute(model, now, core_rng, request, tokens=...,
stream=..., explain=...)` — the token estimate is the one the live proxy passes (prompt plus the
client's max_tokens or expected output), so local TPM limits and quotas act alike in both worlds —
and steps it. Effects:

    Call     the channel model (axonsim.sim.channel) performs the attempt and later sends its
             Outcome back through `deliver`
    Wait     an event whose callback sends the clock back
    Launch   (hedging) the attempt starts as for a Call; its handle is sent back at once and its
             Outcome is kept until a Race asks for it
    Race     the first kept or arriving Outcome among the handles, or None when the timeout passes
    Cancel   the attempt is abandoned (slot freed, Call.cancelled); the clock is sent back

The request (or attempt) is itself the event SimPy runs (axonsim.sim.channel.at), so a request
costs about three events (arrival, first token or answer, stream end) plus one per retry wait;
effects that need no time are answered synchronously in `step`'s loop.

Determinism: every random draw comes from a stream kept for one purpose (axonsim.sim.streams) and
is taken when a request arrives or a Call is made, never when a slot is granted; events at the
same instant run in the order they were scheduled. Same seed → the same tables, bit for bit.

Time series: a sampler event on a fixed grid reads each channel's routing state (read-only: it
must not tick a breaker that the traffic itself would tick later); in-flight, queue and 429
counts are computed afterwards from the attempt columns, which costs nothing per event.
"""

from __future__ import annotations

import gc
import math
import warnings
from collections.abc import Generator
from heapq import heappop, heappush
from itertools import chain, count, islice, repeat
from typing import Any

import simpy
from mypy_extensions import mypyc_attr
from simpy.events import NORMAL

from axonsim.behavior import OUTAGE, RESET, STREAM_CUT, TIMEOUT, BehaviorModel
from axonsim.capabilities import Needs
from axonsim.config import Config
from axonsim.execution import Call, Cancel, Effect, Launch, Outcome, Race, Result, Router, Wait
from axonsim.health import OPEN
from axonsim.sim.channel import DONE, Attempt, SimChannel, at
from axonsim.sim.results import STATES, Recorder, SimResult
from axonsim.sim.streams import CHANNEL_STATE_BASE, CORE, PROBE_BASE, ChannelRandom, channel_stream, derive, py_stream
from axonsim.sim.workload import Arrivals, build_arrivals, check_scenario, horizon, require_workload

_PENDING = object()  # an effect that must wait for an event
_END = (math.inf, math.inf, math.inf)  # the next arrival's key once there is none: above any event's key


class SimRequest:
    """One client request in flight: its execution generator and its attempts so far. `out` is
    the output length the workload fixed (-1: the channel's behaviour decides)."""

    __slots__ = ("id", "arrival", "stream", "inp", "out", "gen", "atts", "result", "race", "ready", "callbacks")
    _ok = True  # the request is the event of its retry waits
    callbacks: tuple[Any, ...] | None  # set when the request is scheduled as the event of a retry wait (channel.at)

    def __init__(self, id: int, arrival: float, stream: bool, inp: int, out: int) -> None:
        self.id = id
        self.arrival = arrival
        self.stream = stream
        self.inp = inp
        self.out = out
        self.gen: Generator[Effect, Any, Result] | None = None
        self.atts: tuple[Attempt, ...] = ()  # a tuple: most requests have one attempt, and (a,) costs less than a list
        self.result: Result | None = None  # a committed stream's Result, while the stream plays out
        self.race: Race | None = None  # the Race execution is waiting on (hedging)
        self.ready: list[tuple[int, Outcome]] | None = None  # launched attempts' Outcomes not yet raced


class _Probe:
    """One channel's periodic probe (`channels[].probe`), as server/probes.py runs it live: every
    `interval` seconds ±10 %, a small request whose result is reported like real traffic, and whose
    success lifts the channel's automatic disable. The event of its next tick and, while one is out,
    of its answer; so at most one of the two is pending at a time."""

    __slots__ = ("sim", "ch", "interval", "rng", "model", "call", "plan", "callbacks")
    _ok = True

    def __init__(self, sim: Simulation, ch: SimChannel, interval: float, seed: int) -> None:
        self.sim = sim
        self.ch = ch
        self.interval = interval
        # Its own draws, and its own copy of the channel's model (the same outage process, from the
        # same seed): the channel's stream of attempts draws exactly as without probes. The quota
        # and rate limits are the provider's, one for all: the probe meets the channel model's.
        self.rng = ChannelRandom(derive(seed, PROBE_BASE + ch.index))
        self.model = BehaviorModel(ch.state.channel.behavior,
                                   derive(seed, CHANNEL_STATE_BASE + ch.index)).without_limits()
        self.call: Call | None = None
        self.plan: Any = None
        self.callbacks: tuple[Any, ...] | None = None

    def schedule(self, delay: float) -> None:
        env = self.sim.env
        queue: list[Any] = env._queue
        heappush(queue, (env._now + delay, NORMAL, next(env._eid), self))

    def tick(self, _: Any) -> None:
        sim = self.sim
        now = sim.env._now
        if sim.recorder.recorded() >= len(sim.arrivals):
            return  # the run is over: probes stop with it (as the time series does)
        st = self.ch.state
        due, key = st.probe_due(now)
        if due:
            # The test request: AxonHub's prompt (~20 tokens) and a 64-token cap; no slot is held.
            plan = self.model.sample(self.rng, now, 0.0, 20, 64)
            if plan.fault != OUTAGE:
                limited = self.ch.model.admit(now, 20 + plan.output_tokens, min(plan.ttft, 0.05))
                if limited is not None:
                    plan = limited
            model = st.channel.models[0]
            call = Call(st, model, key, 0, None)
            call.started(now)
            self.call, self.plan = call, plan
            if plan.fault == TIMEOUT or plan.ttft > self.ch.t_first:
                at_ = self.ch.t_first
            elif plan.fault == STREAM_CUT:
                at_ = plan.ttft + plan.generation  # the test streams: it ends at the cut
            else:
                at_ = plan.ttft
            self.callbacks = (self.answer,)
            self.schedule(at_)
            return
        self.callbacks = (self.tick,)
        self.schedule(self.interval * (0.9 + 0.2 * self.rng.random()))

    def answer(self, _: Any) -> None:
        now = self.sim.env._now
        call, plan, ch = self.call, self.plan, self.ch
        assert call is not None
        self.call = self.plan = None
        if plan.fault is None and plan.ttft <= ch.t_first:
            call.answered(now)
            call.state.lift_automatic(now, call.key)
        elif plan.fault == TIMEOUT or plan.ttft > ch.t_first:
            call.failed(now, Outcome.failure(now, ch.e_timeout, call.key))
        elif plan.fault == STREAM_CUT:
            call.failed(now, Outcome.failure(now, ch.e_cut, call.key))
        else:
            err = ch.e_reset if plan.fault == RESET else ch.error(plan.status, plan.retry_after)
            call.failed(now, Outcome.failure(now, err, call.key))
        self.callbacks = (self.tick,)
        self.schedule(self.interval * (0.9 + 0.2 * self.rng.random()))


class _Tick:
    """An event that is not a request or an attempt: the next arrival, a grid sample, a race timeout."""

    __slots__ = ("callbacks", "value")
    _ok = True

    def __init__(self, value: Any = None) -> None:
        self.callbacks: tuple[Any, ...] | None = None
        self.value = value


# Grid points a time series may have: a step far below the arrivals' span made a run sample without
# end, its memory growing, rather than finish.
MAX_SAMPLES = 1_000_000


class StepTooFine(ValueError):
    """The time-series step would sample the run more than MAX_SAMPLES times."""


def nice_step(span: float, points: int = 1000) -> float:
    """A round grid step (1, 2 or 5 × 10^k seconds) giving at most about `points` samples over `span`."""
    raw = max(span, 1e-9) / points
    k = math.floor(math.log10(raw))
    for m in (1.0, 2.0, 5.0, 10.0):
        if m * 10**k >= raw:
            return m * 10**k
    return 10.0 ** (k + 1)  # pragma: no cover


# Subclassable from Python code when compiled (tests watch its grid samples through a subclass).
@mypyc_attr(allow_interpreted_subclasses=True)
class Simulation:
    """One run: a SimPy environment, the core's Router, one SimChannel per configured channel.

    `explain`: execute with the decision trace, attached to the attempt rows. `step`: seconds
    between time-series samples (None or 0: no time series)."""

    def __init__(self, config: Config, seed: int, arrivals: Arrivals, explain: bool = False,
                 step: float | None = None) -> None:
        if step is not None and not (step >= 0 and math.isfinite(step)):
            raise ValueError(f"step must be a finite number of seconds >= 0, got {step}")
        self.config = config
        self.seed = seed
        self.arrivals = arrivals
        self.explain = explain
        self.step_size = step or None
        self.env = simpy.Environment()
        self._heap: list[Any] = self.env._queue  # what is pushed is a request or a tick (channel.at)
        self.router = Router(config, call=Attempt)  # execution's Calls are the simulator's attempts
        self.core_rng = py_stream(seed, CORE)
        timeouts = config.gateway.timeouts
        self.channels = [SimChannel(self, st, channel_stream(seed, st.index),
                                    derive(seed, CHANNEL_STATE_BASE + st.index), timeouts)
                         for st in self.router.states]
        self.recorder = Recorder(len(arrivals), [st.name for st in self.router.states], explain)
        self._arrival: tuple[float, float, float] = _END  # the first arrival's event key (see _loop)
        self._sampler = _Tick()
        self._probes = [_Probe(self, ch, ch.state.channel.probe.interval, seed)
                        for ch in self.channels if ch.state.channel.probe is not None]
        self.samples: list[list[int]] = []  # per grid point: each channel's routing state code
        # Bound once: a bound method (or callbacks tuple) per event would be allocated anew each time.
        self._execute = self.router.execute
        # A channel with a context window keeps requests too large for it away, as in the proxy: then
        # each request says how much context it needs (its prompt plus its max_tokens, if it has one).
        self._windows = any(st.channel.capabilities.context_window is not None for st in self.router.states)
        self._context = arrivals.context_tokens
        self._finish = self.recorder.finish
        self._resume = (self._on_wait,)
        names = arrivals.models
        # One C-level next() per arrival hands out its request (made from its id, time, stream and
        # tokens in and out), model name and admission estimate, and the next arrival's time (None
        # after the last).
        model = repeat(names[0], len(arrivals)) if len(names) == 1 else [names[m] for m in arrivals.model]
        requests = map(SimRequest, count(), arrivals.times, arrivals.stream, arrivals.input_tokens,
                       arrivals.output_tokens)
        self._feed = zip(requests, model, arrivals.tokens, chain(islice(arrivals.times, 1, None), (None,)),
                         strict=True)

    def run(self) -> SimResult:
        arr = self.arrivals
        env = self.env
        if self.step_size is not None and len(arr) and arr.times[-1] / self.step_size > MAX_SAMPLES:
            raise StepTooFine(f"a step of {self.step_size:g} s samples the {arr.times[-1]:g} s of arrivals "
                              f"{arr.times[-1] / self.step_size:.3g} times; at most {MAX_SAMPLES:,} (use a larger step)")
        if len(arr):
            self._arrival = (arr.times[0], NORMAL, next(env._eid))
        for p in self._probes:
            p.callbacks = (p.tick,)
            p.schedule(p.interval * (0.9 + 0.2 * p.rng.random()))
        if self.step_size is not None:
            self._sampler.value = 0
            self._sampler.callbacks = (self._on_sample,)
            heappush(self._heap, (0.0, NORMAL, next(env._eid), self._sampler))
        # The per-request objects form no reference cycles (Recorder.finish cuts the request's links), so the
        # cyclic collector has nothing to find here; left on, it would walk the growing result rows
        # every few hundred requests (about 4 % of a run). The young generations are collected
        # first, so that the recorder's buffers (still empty) start in the oldest: the first
        # collection after the run then does not walk the millions of values they hold by then.
        gc_was_on = gc.isenabled()
        if gc_was_on:
            gc.collect(1)
        gc.disable()
        try:
            self._loop()
        finally:
            if gc_was_on:
                gc.enable()
        done = self.recorder.recorded()
        if done != len(arr):  # pragma: no cover - a driver bug, not a user error
            raise RuntimeError(f"simulation stopped with {done} of {len(arr)} requests recorded")
        return SimResult(self.recorder, arr, self.seed, self.config, self.step_size, self.samples)

    def _loop(self) -> None:
        """`env.run()` with SimPy's `Environment.step` written out in the loop: the same queue, the
        same (time, priority, id) order, the same clock, the same handling of a failed event — a
        SimPy Process or Timeout added to `env` runs exactly as under env.run(). Calling step()
        per event is about a tenth of a run's time; the loop is SimPy's own, minus that call.

        The next arrival waits beside the queue rather than in it: its key is the (time, priority,
        id) SimPy would have pushed, with the id drawn at the same moment, and it runs when the
        queue's head is not below that key — the order a push and a pop would give, without them.
        After the last arrival the key is _END, above every event's."""
        env = self.env
        queue = self._heap
        pop = heappop
        arrive = self._on_arrival
        nxt = self._arrival
        while True:
            while queue and queue[0] < nxt:  # the events due before the next arrival
                env._now, _, _, event = pop(queue)
                callbacks, event.callbacks = event.callbacks, None
                for callback in callbacks:
                    callback(event)
                if not event._ok and not hasattr(event, "_defused"):
                    exc = type(event._value)(*event._value.args)
                    exc.__cause__ = event._value
                    raise exc
            if nxt[0] == math.inf:  # _END (compiled, the key is a value: `is` would not see it)
                break
            env._now = nxt[0]
            nxt = arrive()

    # -- the effect loop --------------------------------------------------------------------------

    def step(self, req: SimRequest, value: Any) -> None:
        """Send `value` into the request's generator and perform the effects it yields until one
        needs simulated time."""
        gen: Generator[Effect, Any, Result] = req.gen  # type: ignore[assignment]  # set at arrival, cleared only at close
        while True:
            try:
                eff = gen.send(value)
            except StopIteration as stop:
                result: Result = stop.value
                if result.ok and req.stream:
                    winner = req.atts[-1]  # the last attempt, unless a hedge was won by the earlier one
                    if winner is not result.call:
                        winner = self._winner(req, result)
                    if winner.phase != DONE:
                        req.result = result  # committed: the stream plays out, stream_done records it
                        return
                self._finish(req, result, self.env._now)
                return
            cls = type(eff)
            if cls is Attempt:  # a Call: the Router makes them as Attempts
                self.channels[eff.state.index].submit(req, eff, self.env._now, -1)  # type: ignore[union-attr,arg-type]
                return
            if cls is Wait:
                at(self.env, eff.seconds, req, self._resume)  # type: ignore[union-attr]
                return
            value = self._hedging(req, eff)
            if value is _PENDING:
                return

    def _hedging(self, req: SimRequest, eff: Effect) -> Any:
        """Launch / Race / Cancel: the answer now, or _PENDING when it must wait for an event."""
        now = self.env._now
        if isinstance(eff, Launch):
            if req.ready is None:
                req.ready = []
            handle = len(req.atts)
            self.channels[eff.call.state.index].submit(req, eff.call, now, handle)  # type: ignore[arg-type]
            return handle
        if isinstance(eff, Race):
            ready = req.ready or []
            for i, (h, out) in enumerate(ready):
                if h in eff.handles:
                    del ready[i]
                    return (h, out)
            req.race = eff
            if eff.timeout is not None:
                at(self.env, eff.timeout, _Tick((req, eff)), (self._race_timeout,))
            return _PENDING
        if isinstance(eff, Cancel):
            a = req.atts[eff.handle]
            if req.ready:
                req.ready = [(h, o) for h, o in req.ready if h != eff.handle]
            a.ch.cancel(a, now)
            return now
        raise TypeError(f"the simulator cannot perform the effect {eff!r}")

    def deliver(self, a: Attempt, out: Outcome) -> None:
        """An attempt's Outcome is decided (for a stream: its first token)."""
        req = a.request
        if a.handle < 0:
            self.step(req, out)
            return
        race = req.race
        if race is not None and a.handle in race.handles:
            req.race = None  # its timeout, if any, now finds nothing to do
            self.step(req, (a.handle, out))
        else:
            assert req.ready is not None
            req.ready.append((a.handle, out))

    def _race_timeout(self, tick: _Tick) -> None:
        req, race = tick.value
        if req.race is race:
            req.race = None
            self.step(req, None)

    def _on_wait(self, req: SimRequest) -> None:
        self.step(req, self.env._now)

    def _on_arrival(self) -> tuple[float, float, float]:
        """The next request arrives now; returns the next arrival's key (see `_loop`), _END after the last."""
        env = self.env
        now = env._now  # (the request's arrival)
        req, model, tokens, t = next(self._feed)
        # positional: (model, now, rng, request, tokens, sticky_key, explain, stream), cheaper than keywords
        if self._windows:
            req.gen = self._execute(model, now, self.core_rng, req, tokens, None, self.explain, req.stream,
                                    Needs(context_tokens=self._context[req.id]))
        else:
            req.gen = self._execute(model, now, self.core_rng, req, tokens, None, self.explain, req.stream)
        self.step(req, None)
        # Absolute times: a trace's arrivals land exactly where the trace puts them.
        return _END if t is None else (t, NORMAL, next(env._eid))

    def _on_sample(self, tick: _Tick) -> None:
        now = self.env._now
        self.samples.append([route_state(st, now) for st in self.router.states])
        if self.recorder.recorded() < len(self.arrivals):  # requests still to come or open
            if len(self.samples) >= MAX_SAMPLES:
                # Requests running long after the last arrival (the span the step was checked against):
                # the series ends here, and says so.
                warnings.warn(f"the time series ends at {now:g} s, its {MAX_SAMPLES:,} samples at a step of "
                              f"{self.step_size:g} s; requests ran on after it (use a larger step)", stacklevel=1)
                return
            k = tick.value + 1
            tick.value = k
            tick.callbacks = (self._on_sample,)
            # k·step, not a running sum: the grid does not drift
            step = self.step_size
            assert step is not None
            heappush(self._heap, (k * step, NORMAL, next(self.env._eid), tick))

    def stream_done(self, a: Attempt) -> None:
        """A committed stream ended (well, cut, or timed out)."""
        req = a.request
        result = req.result
        if result is not None and (a is result.call or a is self._winner(req, result)):
            self._finish(req, result, self.env._now)

    @staticmethod
    def _winner(req: SimRequest, result: Result) -> Attempt:
        call = result.call
        for a in reversed(req.atts):
            if a is call:
                return a
        raise RuntimeError("the winning Call is not among the request's attempts")  # pragma: no cover


def route_state(st: Any, now: float) -> int:
    """The channel's routing state as a code into results.STATES, read without side effects:
    `unavailable_reason` would tick breakers from OPEN to HALF_OPEN, which changes how a late
    failure is counted, so a sample would change the run it observes."""
    if not st.usable():
        return 1
    if st.disabled_until > now:
        return 2
    if st.ejection.until > now:
        return 3
    if st.cooldown_until > now:
        return 4
    for b in st.breakers.values():
        if b.state == OPEN and now < b.open_until:
            return 5
    keys = st.keys
    if keys and all(k.disabled or k.disabled_until > now for k in keys):
        return 6
    return 0


assert STATES[0] == "available" and len(STATES) == 7


def simulate(config: Config, seed: int | None = None, requests: int | None = None, *, explain: bool = False,
             step: float | str | None = "auto") -> SimResult:
    """Run `config`'s workload (its first `requests` requests if given) in the simulator.

    `seed` defaults to the config's `seed`, then 0: a run is always reproducible. `explain`
    attaches the core's decision trace to the attempt rows. `step` is the time-series grid in
    seconds ("auto": about 1000 samples over the run; None or 0: none).
    """
    require_workload(config)
    check_scenario(config)  # the scenario as written: its own horizon, whatever `requests` cuts off
    if seed is None:
        seed = config.seed if config.seed is not None else 0
    arrivals = build_arrivals(config, seed, requests)
    if step == "auto":
        span = arrivals.times[-1] if len(arrivals) else horizon(config)[0]
        step = nice_step(span) if span > 0 else None
    elif isinstance(step, str):
        raise ValueError(f"step must be a number of seconds, None or 'auto', not {step!r}")
    return Simulation(config, seed, arrivals, explain=explain, step=step).run()
