"""A second driver of the same core — a plain heapq event loop, no SimPy — to prove the simulator runs what any driver runs.

The SimPy driver (axonsim.sim.driver + channel) and this one are written separately; they share
only what a driver is handed: the core (Router, its execution generator and the Call reporting
API), the channel behaviour model (axonsim.behavior, which the mock provider uses too), the
workload (Arrivals) and the per-purpose random streams (axonsim.sim.streams). If both give the same
per-request results bit for bit, the numbers come from the core and the behaviour model, not from
an accident of one event engine.

The channel timeline is the one documented in axonsim.sim.channel: draws when the Call is made,
a slot or a FIFO queue place or an immediate 503, TTFT counted from the slot grant, the gateway's
first-token and total timeouts counted from the Call, a stream committed at its first token and
finished afterwards. Clock arithmetic follows the same expressions (an event `d` seconds after
`now` is at `now + d`), and same-instant events run in scheduling order, as in SimPy.

Hedging (Launch / Race / Cancel), the request deadline's cut of running and queued attempts, and
channel probes are not performed here: `run_heapq` refuses a config that has any of them.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Generator
from heapq import heappop, heappush
from itertools import count
from typing import Any

import numpy as np

from axonsim.behavior import FULL_STATUS, RESET, STREAM_CUT, TIMEOUT, AttemptPlan, BehaviorModel
from axonsim.config import Config
from axonsim.execution import Call, Effect, Outcome, Result, Router, Wait
from axonsim.sim.streams import CHANNEL_STATE_BASE, CORE, channel_stream, derive, py_stream
from axonsim.sim.workload import Arrivals
from axonsim.unified import Error, ErrorKind, error_kind_for_status

_NAN = math.nan


class _Req:
    __slots__ = ("id", "arrival", "stream", "inp", "out", "gen", "result", "win")

    def __init__(self, id: int, arrival: float, stream: bool, inp: int, out: int) -> None:
        self.id = id
        self.arrival = arrival
        self.stream = stream
        self.inp = inp
        self.out = out
        self.gen: Generator[Effect, Any, Result] | None = None
        self.result: Result | None = None
        self.win: _Att | None = None  # the committed stream's attempt


class _Att:
    __slots__ = ("req", "ch", "call", "plan", "t_call", "t_first", "phase", "error", "tokens")

    def __init__(self, req: _Req, ch: _Chan, call: Call, plan: AttemptPlan, now: float) -> None:
        self.req = req
        self.ch = ch
        self.call = call
        self.plan = plan
        self.t_call = now
        self.t_first = _NAN
        self.phase = "running"
        self.error: str | None = None
        self.tokens = 0


class _Chan:
    """A channel: behaviour model, slots and queue, the gateway's timeouts for it."""

    def __init__(self, loop: HeapLoop, index: int, config: Config, seed: int) -> None:
        ch = config.channels[index]
        b = ch.behavior
        self.loop = loop
        self.index = index
        self.model = BehaviorModel(b, derive(seed, CHANNEL_STATE_BASE + index))
        self.rng = channel_stream(seed, index)
        self.cap = b.max_concurrency if b.max_concurrency is not None else math.inf
        self.queue = b.when_full == "queue"
        self.waiting: deque[_Att] = deque()
        self.busy = 0
        self.guard = False
        to = ch.timeouts or config.gateway.timeouts
        self.t_first = to.first_token
        self.t_total = to.total

    def error(self, status: int, retry_after: float | None) -> Error:
        return Error(kind=error_kind_for_status(status), status=status, retry_after=retry_after,
                     message=f"the upstream answered HTTP {status}")


class HeapLoop:
    """The event loop and the effect performer. `run()` returns per-request columns."""

    def __init__(self, config: Config, seed: int, arrivals: Arrivals) -> None:
        if config.routing.hedge.enabled:
            raise ValueError("the heapq driver does not perform hedging (Launch/Race/Cancel)")
        if config.routing.retry.deadline is not None:
            raise ValueError("the heapq driver does not cut attempts at routing.retry.deadline")
        if any(ch.probe is not None for ch in config.channels):
            raise ValueError("the heapq driver does not run channel probes")
        self.router = Router(config)
        self.rng = py_stream(seed, CORE)
        self.arr = arrivals
        self.now = 0.0
        self.heap: list[tuple[float, int, Callable[[Any], None], Any]] = []
        self.seq = count()
        self.chans = [_Chan(self, i, config, seed) for i in range(len(config.channels))]
        n = len(arrivals)
        self.out: dict[str, np.ndarray] = {
            "ok": np.zeros(n, dtype=bool), "status": np.zeros(n, dtype=np.int64),
            "attempts": np.zeros(n, dtype=np.int64), "channel": np.full(n, -1, dtype=np.int64),
            "ttft": np.full(n, _NAN), "end": np.full(n, _NAN), "arrival": np.asarray(arrivals.times, dtype=np.float64),
        }
        self.e_full = Error(kind=error_kind_for_status(FULL_STATUS), status=FULL_STATUS,
                            message="the channel is at its maximum concurrency")
        self.e_reset = Error(kind=ErrorKind.CONNECTION, status=0, message="the connection to the upstream failed")
        self.e_timeout = Error(kind=ErrorKind.TIMEOUT, status=0, message="the upstream did not answer in time")
        self.e_cut = Error(kind=ErrorKind.CONNECTION, status=0, message="the upstream stream was interrupted")

    # -- the loop ---------------------------------------------------------------------------------

    def after(self, delay: float, fn: Callable[[Any], None], arg: Any) -> None:
        heappush(self.heap, (self.now + delay, next(self.seq), fn, arg))

    def run(self) -> dict[str, np.ndarray]:
        if len(self.arr):
            heappush(self.heap, (self.arr.times[0], next(self.seq), self.arrive, 0))
        heap = self.heap
        while heap:
            t, _, fn, arg = heappop(heap)
            self.now = t
            fn(arg)
        return self.out

    # -- requests ---------------------------------------------------------------------------------

    def arrive(self, i: int) -> None:
        arr = self.arr
        req = _Req(i, self.now, arr.stream[i], arr.input_tokens[i], arr.output_tokens[i])
        req.gen = self.router.execute(arr.models[arr.model[i]], self.now, self.rng, req, tokens=arr.tokens[i],
                                      stream=req.stream)
        self.send(req, None)
        if i + 1 < len(arr):
            heappush(self.heap, (arr.times[i + 1], next(self.seq), self.arrive, i + 1))

    def send(self, req: _Req, value: Any) -> None:
        assert req.gen is not None
        try:
            eff = req.gen.send(value)
        except StopIteration as stop:
            self.done(req, stop.value)
            return
        if isinstance(eff, Call):
            self.submit(self.chans[eff.state.index], req, eff)
        elif isinstance(eff, Wait):
            self.after(eff.seconds, self.resume, req)
        else:
            raise TypeError(f"the heapq driver cannot perform {eff!r}")

    def resume(self, req: _Req) -> None:
        self.send(req, self.now)

    def done(self, req: _Req, result: Result) -> None:
        if result.ok and req.stream and req.win is not None and req.win.phase == "streaming":
            req.result = result  # the stream plays out; stream_done records it
            return
        self.record(req, result)

    def record(self, req: _Req, result: Result) -> None:
        o = self.out
        i = req.id
        o["attempts"][i] = len(result.attempts)
        o["end"][i] = self.now
        if result.ok:
            w = req.win
            assert w is not None
            o["channel"][i] = w.ch.index
            o["status"][i] = 200
            o["ok"][i] = w.error is None
            o["ttft"][i] = w.t_first - req.arrival
        else:
            assert result.error is not None
            o["status"][i] = result.error.status
            last = result.attempts[-1].channel if result.attempts else None
            o["channel"][i] = self.router.by_name[last].index if last is not None else -1
        req.gen = None

    # -- channels ---------------------------------------------------------------------------------

    def submit(self, ch: _Chan, req: _Req, call: Call) -> None:
        now = self.now
        plan = ch.model.sample(ch.rng, now, ch.busy / ch.cap if ch.busy else 0.0, req.inp,
                               req.out if req.out >= 0 else None)
        a = _Att(req, ch, call, plan, now)
        call.started(now)
        if ch.busy < ch.cap:
            ch.busy += 1
            self.begin(a)
        elif ch.queue:
            a.phase = "queued"
            ch.waiting.append(a)
            if not ch.guard:
                ch.guard = True
                self.after(ch.t_first, self.expire, ch)
        else:
            self.fail(a, self.e_full)

    def begin(self, a: _Att) -> None:
        now = self.now
        ch = a.ch
        plan = a.plan
        a.phase = "running"
        deadline = a.t_call + ch.t_first
        if plan.fault == TIMEOUT or now + plan.ttft > deadline:
            self.after(deadline - now, self.timed_out, a)
        elif plan.fault is None or plan.fault == STREAM_CUT:
            if a.req.stream:
                self.after(plan.ttft, self.first_token, a)
            else:
                end = now + plan.ttft + plan.generation
                total = a.t_call + ch.t_total
                if end > total:
                    self.after(total - now, self.timed_out, a)
                else:
                    self.after(end - now, self.answered, a)
        else:
            self.after(plan.ttft, self.errored, a)

    def release(self, ch: _Chan) -> None:
        if ch.waiting:
            self.begin(ch.waiting.popleft())
        else:
            ch.busy -= 1

    def fail(self, a: _Att, err: Error) -> None:
        out = Outcome.failure(self.now, err, a.call.key)
        a.phase = "done"
        a.call.failed(self.now, out)
        self.send(a.req, out)

    def errored(self, a: _Att) -> None:
        self.release(a.ch)
        plan = a.plan
        self.fail(a, self.e_reset if plan.fault == RESET else a.ch.error(plan.status, plan.retry_after))

    def timed_out(self, a: _Att) -> None:
        self.release(a.ch)
        self.fail(a, self.e_timeout)

    def answered(self, a: _Att) -> None:
        now = self.now
        self.release(a.ch)
        if a.plan.fault == STREAM_CUT:
            self.fail(a, self.e_cut)
            return
        call = a.call
        call.first_token(now)
        call.succeeded(now, a.plan.output_tokens)
        a.phase = "done"
        a.t_first = now
        a.req.win = a
        self.send(a.req, Outcome(True, now, 200, None, None, call.ttft, call.key))

    def first_token(self, a: _Att) -> None:
        now = self.now
        call = a.call
        call.first_token(now)
        a.phase = "streaming"
        a.t_first = now
        a.req.win = a
        gen = a.plan.generation
        total = a.t_call + a.ch.t_total
        if now + gen > total:
            self.after(total - now, self.stream_timed_out, a)
        else:
            self.after(gen, self.stream_ended, a)
        self.send(a.req, Outcome(True, now, 200, None, None, call.ttft, call.key))

    def stream_ended(self, a: _Att) -> None:
        now = self.now
        self.release(a.ch)
        a.phase = "done"
        if a.plan.fault == STREAM_CUT:
            a.error = STREAM_CUT
            a.call.failed(now, Outcome.failure(now, self.e_cut, a.call.key))
        else:
            a.call.succeeded(now, a.plan.output_tokens)
        self.stream_done(a)

    def stream_timed_out(self, a: _Att) -> None:
        now = self.now
        self.release(a.ch)
        a.phase = "done"
        a.error = ErrorKind.TIMEOUT.value
        a.call.failed(now, Outcome.failure(now, self.e_timeout, a.call.key))
        self.stream_done(a)

    def stream_done(self, a: _Att) -> None:
        req = a.req
        if req.result is not None and req.win is a:
            self.record(req, req.result)

    def expire(self, ch: _Chan) -> None:
        now = self.now
        while ch.waiting and ch.waiting[0].t_call + ch.t_first <= now:
            self.fail(ch.waiting.popleft(), self.e_timeout)
        if ch.waiting:
            self.after(ch.waiting[0].t_call + ch.t_first - now, self.expire, ch)
        else:
            ch.guard = False


def run_heapq(config: Config, seed: int, arrivals: Arrivals) -> dict[str, np.ndarray]:
    """Per-request columns (arrival, ok, status, attempts, channel index, ttft, end) from the heapq driver."""
    return HeapLoop(config, seed, arrivals).run()
