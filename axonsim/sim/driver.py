"""The SimPy driver: replays a workload through the core's execution generator, one callback per phase, no Process per request.

For every arrival the driver creates `router.execute(model, now, core_rng, request, stream=...)`
and steps it. Effects:

    Call     the channel model (axonsim.sim.channel) performs the attempt and later sends its
             Outcome back through `deliver`
    Wait     a SimPy Timeout whose callback sends the clock back
    Launch   (hedging) the attempt starts as for a Call; its handle is sent back at once and its
             Outcome is kept until a Race asks for it
    Race     the first kept or arriving Outcome among the handles, or None when the timeout passes
    Cancel   the attempt is abandoned (slot freed, Call.cancelled); the clock is sent back

The request context travels as the events' value, so a request costs about three events (arrival,
first token or answer, stream end) plus one per retry wait; effects that need no time are answered
synchronously in `step`'s loop.

Determinism: every random draw comes from a stream kept for one purpose (axonsim.sim.streams) and
is taken when a request arrives or a Call is made, never when a slot is granted; events at the
same instant run in the order they were scheduled. Same seed → the same tables, bit for bit.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

import simpy
from simpy.events import Event, Timeout

from axonsim.config import Config
from axonsim.execution import Call, Cancel, Effect, Launch, Outcome, Race, Result, Router, Wait
from axonsim.sim.channel import DONE, Attempt, SimChannel
from axonsim.sim.results import Recorder, SimResult
from axonsim.sim.streams import CHANNEL_BASE, CHANNEL_STATE_BASE, CORE, derive, py_stream
from axonsim.sim.workload import Arrivals, poisson, require_workload

_PENDING = object()  # an effect that must wait for an event


class SimRequest:
    """One client request in flight: its execution generator and its attempts so far."""

    __slots__ = ("id", "arrival", "stream", "gen", "atts", "result", "race", "ready")

    def __init__(self, id: int, arrival: float, stream: bool) -> None:
        self.id = id
        self.arrival = arrival
        self.stream = stream
        self.gen: Generator[Effect, Any, Result] | None = None
        self.atts: list[Attempt] = []
        self.result: Result | None = None  # a committed stream's Result, while the stream plays out
        self.race: Race | None = None  # the Race execution is waiting on (hedging)
        self.ready: list[tuple[int, Outcome]] | None = None  # launched attempts' Outcomes not yet raced


class Simulation:
    """One run: a SimPy environment, the core's Router, one SimChannel per configured channel."""

    def __init__(self, config: Config, seed: int, arrivals: Arrivals) -> None:
        self.config = config
        self.seed = seed
        self.arrivals = arrivals
        self.env = simpy.Environment()
        self.router = Router(config)
        self.core_rng = py_stream(seed, CORE)
        timeouts = config.gateway.timeouts
        self.channels = [SimChannel(self, st, py_stream(seed, CHANNEL_BASE + st.index),
                                    derive(seed, CHANNEL_STATE_BASE + st.index), timeouts)
                         for st in self.router.states]
        self.recorder = Recorder(len(arrivals), [st.name for st in self.router.states])
        self._next = 0
        # Bound once: a bound method per event would be allocated anew each time.
        self._arrive = self._on_arrival
        self._resume = self._on_wait
        self._finish = self.recorder.finish

    def run(self) -> SimResult:
        arr = self.arrivals
        Timeout(self.env, arr.gaps[0], None).callbacks.append(self._arrive)
        self.env.run()
        if self._next != len(arr):  # pragma: no cover - a driver bug, not a user error
            raise RuntimeError(f"simulation stopped after {self._next} of {len(arr)} arrivals")
        return SimResult(self.recorder, arr, self.seed, self.config)

    # -- the effect loop --------------------------------------------------------------------------

    def step(self, req: SimRequest, value: Any) -> None:
        """Send `value` into the request's generator and perform the effects it yields until one
        needs simulated time."""
        gen = req.gen
        assert gen is not None
        while True:
            try:
                eff = gen.send(value)
            except StopIteration as stop:
                self._done(req, stop.value)
                return
            cls = eff.__class__
            if cls is Call:
                self.channels[eff.state.index].submit(req, eff, self.env._now, -1)  # type: ignore[union-attr,arg-type]
                return
            if cls is Wait:
                Timeout(self.env, eff.seconds, req).callbacks.append(self._resume)  # type: ignore[union-attr]
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
            self.channels[eff.call.state.index].submit(req, eff.call, now, handle)
            return handle
        if isinstance(eff, Race):
            ready = req.ready or []
            for i, (h, out) in enumerate(ready):
                if h in eff.handles:
                    del ready[i]
                    return (h, out)
            req.race = eff
            if eff.timeout is not None:
                Timeout(self.env, eff.timeout, (req, eff)).callbacks.append(self._race_timeout)
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
        req = a.req
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

    def _race_timeout(self, ev: Event) -> None:
        req, race = ev._value
        if req.race is race:
            req.race = None
            self.step(req, None)

    def _on_wait(self, ev: Event) -> None:
        self.step(ev._value, self.env._now)

    def _on_arrival(self, ev: Event) -> None:
        i = self._next
        self._next = i + 1
        now = self.env._now
        arr = self.arrivals
        stream = arr.stream[i]
        req = SimRequest(i, now, stream)
        self.recorder.arrival[i] = now
        req.gen = self.router.execute(arr.models[arr.model[i]], now, self.core_rng, req, stream=stream)
        self.step(req, None)
        if i + 1 < len(arr.gaps):
            Timeout(self.env, arr.gaps[i + 1], None).callbacks.append(self._arrive)

    def _done(self, req: SimRequest, result: Result) -> None:
        if result.ok and req.stream:
            winner = self._winner(req, result)
            if winner.phase != DONE:
                req.result = result  # committed: the stream plays out, stream_done records it
                return
        self._close(req, result)

    def stream_done(self, a: Attempt) -> None:
        """A committed stream ended (well, cut, or timed out)."""
        req = a.req
        result = req.result
        if result is not None and a is self._winner(req, result):
            self._close(req, result)

    def _close(self, req: SimRequest, result: Result) -> None:
        self._finish(req, result, self.env._now)
        # The request's objects point at each other (attempts and calls at the request, the
        # request at its generator and result): cut the links so refcounting frees them, not the GC.
        req.atts = []
        req.result = None
        req.gen = None

    @staticmethod
    def _winner(req: SimRequest, result: Result) -> Attempt:
        call = result.call
        for a in reversed(req.atts):
            if a.call is call:
                return a
        raise RuntimeError("the winning Call is not among the request's attempts")  # pragma: no cover


def simulate(config: Config, seed: int | None = None, requests: int | None = None) -> SimResult:
    """Run `config`'s workload (its first `requests` requests if given) in the simulator.

    `seed` defaults to the config's `seed`, then 0: a run is always reproducible.
    """
    require_workload(config)
    if seed is None:
        seed = config.seed if config.seed is not None else 0
    return Simulation(config, seed, poisson(config, seed, requests)).run()
