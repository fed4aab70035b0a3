"""Simulation results: one tuple per request and per attempt during the run; pandas tables, time series and a summary built only when asked."""

from __future__ import annotations

import json
import math
from itertools import repeat
from operator import is_not
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from axonsim.behavior import BehaviorModel
from axonsim.pricing import cost_for
from axonsim.sim.streams import CHANNEL_STATE_BASE, derive
from axonsim.unified import Usage

if TYPE_CHECKING:
    from axonsim.config import Config
    from axonsim.execution import AttemptRecord, Result
    from axonsim.sim.channel import Attempt
    from axonsim.sim.driver import SimRequest
    from axonsim.sim.workload import Arrivals

NAN = math.nan

# Routing states the time series reports (codes written by driver.route_state).
STATES = ["available", "disabled", "auto_disabled", "ejected", "cooling_down", "breaker_open", "no_key_available"]

# Request fields, in recorded order.
_R = ("id", "ok", "status", "error", "attempts", "channel", "ttft", "end", "tokens")
_R_TYPES = {"id": np.int64, "ok": bool, "status": np.int64, "error": object, "attempts": np.int64,
            "channel": np.int64, "ttft": np.float64, "end": np.float64, "tokens": np.int64}
# Attempt fields, in recorded order (then the decision, when explained).
_A = ("request", "attempt", "channel", "key", "start", "grant", "end", "status", "error", "fault", "next",
      "retry_after")
_A_TYPES = {"request": np.int64, "attempt": np.int64, "channel": np.int64, "key": object, "start": np.float64,
            "grant": np.float64, "end": np.float64, "status": np.int64, "error": object, "fault": object,
            "next": object, "retry_after": object, "decision": object}


# A request answered well by its only attempt (no hedge, not explained, no failure after a stream's
# commit) — most of them — is one record holding both rows: its request row and its attempt row are
# read out of it after the run. What such a request's rows always hold is not recorded: its attempt
# is number 1, answered 200, with no error, fault or Retry-After (only failed attempts have them),
# "done" next and the request's end as its own; the request is ok, status 200, with 1 attempt.
_ONE = ("id", "channel", "key", "start", "grant", "ttft", "end", "tokens")
_ONE_ATT = {"request": "id", "channel": "channel", "key": "key", "start": "start", "grant": "grant", "end": "end"}
_ONE_TYPES = {"id": np.int64, "channel": np.int64, "key": object, "start": np.float64, "grant": np.float64,
              "ttft": np.float64, "end": np.float64, "tokens": np.int64}
_ONE_CONST = {("request", "ok"): True, ("request", "status"): 200, ("request", "error"): None,
              ("request", "attempts"): 1, ("attempt", "attempt"): 1, ("attempt", "status"): 200,
              ("attempt", "error"): None, ("attempt", "fault"): None, ("attempt", "next"): "done",
              ("attempt", "retry_after"): None}


class Recorder:
    """Each finished request's fields, and each attempt's, appended to one flat list per kind, one
    record after another: one `extend` per record, and nothing the cyclic collector tracks (ints,
    floats, strings and None are not; a tuple per record left it two objects per request to walk,
    about 0.4 µs a request). A request answered by its only attempt is one record in a list of its
    own (`_ONE`). Columns are sliced out once, after the run."""

    __slots__ = ("channels", "n", "explain", "req_buf", "att_buf", "one_buf", "att_width", "_put_req", "_put_att",
                 "_put_one", "_one_cols")

    def __init__(self, n: int, channels: list[str], explain: bool = False) -> None:
        self.channels = channels
        self.n = n
        self.explain = explain
        self.req_buf: list[Any] = []
        self.att_buf: list[Any] = []
        self.one_buf: list[Any] = []
        self.att_width = len(_A) + (1 if explain else 0)
        self._put_req = self.req_buf.extend  # bound once: finish runs per request
        self._put_att = self.att_buf.extend
        self._put_one = self.one_buf.extend
        self._one_cols: dict[str, np.ndarray] = {}  # one-attempt record fields, converted once (rows share them)

    def finish(self, req: SimRequest, result: Result, now: float) -> None:
        """Record a finished request and its attempts (a stream finishes after its commit), and cut
        the request's links: its attempts (Calls) and its Result point back at it, and refcounting,
        not the GC, should free them (its generator has returned: its frame holds nothing)."""
        i = req.id
        atts = req.atts
        req.atts = ()
        req.result = None
        recs = result.attempts
        if len(recs) == 1 and result.ok and req.ready is None and not self.explain:  # the common case
            a = atts[0]  # the winner: the only attempt
            if a.error is None:  # (a committed stream can still fail: cut or timed out)
                self._put_one((i, a.ch.index, recs[0].key, a.start, a.t_grant, a.t_first - req.arrival, now,
                               a.out_tokens))
                return
        put = self._put_att
        if self.explain:
            decisions = result.decisions or []
            pairs = zip(recs, atts, strict=True) if req.ready is None else _pair_hedged(recs, atts)
            for rec, a in pairs:
                put((i, a.attempt, a.ch.index, rec.key, a.start, a.t_grant, a.t_end, a.status, a.error,
                     a.fault, rec.next, a.plan.retry_after,
                     decisions[rec.decision] if rec.decision is not None else None))
        else:
            pairs = zip(recs, atts, strict=True) if req.ready is None else _pair_hedged(recs, atts)
            for rec, a in pairs:
                put((i, a.attempt, a.ch.index, rec.key, a.start, a.t_grant, a.t_end, a.status, a.error,
                     a.fault, rec.next, a.plan.retry_after))
        if result.ok:
            call = result.call
            win = atts[-1]
            if win is not call:
                win = next(a for a in atts if a is call)
            err = win.error  # a committed stream can still fail: cut or timed out
            self._put_req((i, err is None, 200, err, len(recs), win.ch.index, win.t_first - req.arrival, now,
                           win.out_tokens))
        else:
            e = result.error
            assert e is not None
            self._put_req((i, False, e.status, e.kind.value, len(recs), atts[-1].ch.index if atts else -1,
                           NAN, now, 0))

    def recorded(self) -> int:
        """How many requests are recorded so far."""
        return len(self.req_buf) // len(_R) + len(self.one_buf) // len(_ONE)

    def column(self, kind: str, name: str) -> np.ndarray:
        """One recorded column: the rows of the general records in completion order, then those of
        the one-attempt records in completion order (`kind`: "request" or "attempt"). Every column
        of a kind lists its rows in the same order."""
        general, one = self.parts(kind, name)
        return general if one is None else np.concatenate((general, one))

    def general(self, kind: str, name: str) -> np.ndarray:
        """The general records' rows of a column (see `parts`)."""
        if kind == "request":
            buf, width, j, dtype = self.req_buf, len(_R), _R.index(name), _R_TYPES[name]
        else:
            j = len(_A) if name == "decision" else _A.index(name)
            buf, width, dtype = self.att_buf, self.att_width, _A_TYPES[name]
        return _array(buf[j::width], dtype)

    def parts(self, kind: str, name: str) -> tuple[np.ndarray, np.ndarray | None]:
        """`column` in its two parts: the general records' rows, the one-attempt records' rows (None
        when there are none)."""
        general = self.general(kind, name)
        dtype = _R_TYPES[name] if kind == "request" else _A_TYPES[name]
        one = self.one_buf
        if not one:
            return general, None
        const = _ONE_CONST.get((kind, name), _NO_CONSTANT)
        if const is not _NO_CONSTANT:
            return general, np.full(len(one) // len(_ONE), const, dtype=dtype)
        # a decision is recorded only when explained, and explained runs have no one-attempt records
        # a request column not constant here has the same name in the record; attempt columns are mapped
        return general, self._one(name if kind == "request" else _ONE_ATT[name])

    def _one(self, field: str) -> np.ndarray:
        """A field of the one-attempt records, converted on first use."""
        col = self._one_cols.get(field)
        if col is None:
            j = _ONE.index(field)
            col = self._one_cols[field] = _array(self.one_buf[j::len(_ONE)], _ONE_TYPES[field])
        return col


_NO_CONSTANT = object()  # no constant for this column


def _pair_hedged(recs: list[AttemptRecord], atts: tuple[Attempt, ...]) -> list[tuple[AttemptRecord, Attempt]]:
    """Records and attempts of a hedged request, paired by (channel, start): execution writes a
    hedge's records in completion order, not launch order."""
    by = {(r.channel, r.start): r for r in recs}
    if len(by) != len(recs) or len(recs) != len(atts):  # pragma: no cover - a core/driver mismatch
        raise RuntimeError("cannot pair the attempt records of a hedged request with its attempts")
    return [(by[(a.ch.name, a.start)], a) for a in atts]


def _categorical(codes: np.ndarray | list[int], names: list[str]) -> pd.Categorical:
    return pd.Categorical.from_codes(np.asarray(codes, dtype=np.int64), categories=names)


def _pcts(x: np.ndarray, qs: tuple[float, ...]) -> list[float | None]:
    """Several percentiles of one array in one call (one partition, not one per percentile)."""
    if not x.size:
        return [None] * len(qs)
    return [float(v) for v in np.percentile(x, qs)]


def _array(values: Any, dtype: Any) -> np.ndarray:
    """A list of Python numbers (or objects) as an array (np.fromiter converts numbers about twice as
    fast as np.asarray)."""
    if isinstance(values, np.ndarray):
        return values.astype(dtype, copy=False)
    if dtype is object:
        out = np.empty(len(values), dtype=object)
        out[:] = values
        return out
    return np.fromiter(values, dtype=dtype, count=len(values))


def _finite(v: Any) -> Any:
    """`v` with every infinite or NaN float as None: JSON has no Infinity (an incident without an
    end, `end: .inf`, made summary.json unreadable to strict parsers)."""
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, dict):
        return {k: _finite(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_finite(x) for x in v]
    return v


class SimResult:
    """What a simulation produced.

    `requests`: one row per client request — `project` and `model` it came with; `ok` is False for
    a stream that failed after its commit (error `stream_cut` or `timeout`, status 200: the client
    already had its headers); `ttft` is what the client saw: the first token of a stream, the whole
    answer of a non-stream request; `latency` = `end` − `arrival`; `channel` is the final attempt's;
    `cost` = the served tokens (input + output) at the channel's price for the model
    (axonsim.pricing.cost_for; NaN when that model has no price, 0 when no channel answered).
    `attempts`: one row per upstream attempt — `start` when execution made the Call, `queue_wait`
    until a slot was granted, `end` when it finished (a stream's end, not its commit), `status` 0
    when there was no HTTP answer, `fault` what the behaviour model drew (`full`: rejected at
    max_concurrency; `queue_timeout`: timed out waiting for a slot), `next` what execution did next,
    `retry_after` what a 429 announced; `decision` (simulate(explain=True) only) the core's
    decision trace for the pick that chose this attempt's channel.
    `timeseries`: per channel, on a fixed grid (see `step`), in-flight attempts (what the gateway
    counts), busy slots and queue length at each instant; attempts, 429s and errors that ended in
    the step up to it; the gateway's routing `state` (available, cooling_down, breaker_open, ...)
    and whether the provider was `up` (no outage, no scheduled status incident).
    """

    def __init__(self, recorder: Recorder, arrivals: Arrivals, seed: int, config: Config,
                 step: float | None = None, samples: list[list[int]] | None = None) -> None:
        self.seed = seed
        self.config = config
        self.channels = recorder.channels
        self.step = step
        self._rec = recorder
        self._arrivals = arrivals
        self._samples = samples or []
        self._req: dict[str, np.ndarray] = {}
        self._att: dict[str, np.ndarray] = {}
        self._att_raw: dict[str, np.ndarray] = {}
        self._ids: tuple[np.ndarray, np.ndarray | None] | None = None  # request ids of Recorder.parts
        self._order: np.ndarray | None = None
        self._price_rates: tuple[np.ndarray, np.ndarray] | None = None
        self._rates_known = False
        self._requests: pd.DataFrame | None = None
        self._attempts: pd.DataFrame | None = None
        self._timeseries: pd.DataFrame | None = None

    def __len__(self) -> int:
        return self._rec.n

    # -- columns ----------------------------------------------------------------------------------

    def _rcol(self, name: str) -> np.ndarray:
        """One request column in id order (rows were recorded in completion order), built on first use."""
        col = self._req.get(name)
        if col is None:
            rec = self._rec
            if name == "arrival":
                col = _array(self._arrivals.times, np.float64)
            elif name == "input_tokens":
                col = _array(self._arrivals.input_tokens, np.int64)
            elif name == "cost":
                col = self._cost()
            else:
                if self._ids is None:
                    self._ids = rec.parts("request", "id")
                col = np.empty(rec.n, dtype=_R_TYPES[name])
                # each part put in place by its own ids (no concatenated copy in between)
                for ids, values in zip(self._ids, rec.parts("request", name), strict=True):
                    if ids is not None:
                        col[ids] = values
            self._req[name] = col
        return col

    def _acol(self, name: str) -> np.ndarray:
        """One attempt column ordered by request, then attempt, built on first use."""
        col = self._att.get(name)
        if col is None:
            if self._order is None:
                self._order = np.argsort(self._araw("request"), kind="stable")
            col = self._araw(name)[self._order]
            self._att[name] = col
        return col

    def _araw(self, name: str) -> np.ndarray:
        """One attempt column in recorded order, built on first use (what counts and sums need)."""
        col = self._att_raw.get(name)
        if col is None:
            rec = self._rec
            if name == "retry_after":  # None unless a 429 announced one (never in a one-attempt record)
                ra, one = rec.parts("attempt", name)
                col = np.fromiter((NAN if x is None else x for x in ra), dtype=np.float64, count=len(ra))
                if one is not None:
                    col = np.concatenate((col, np.full(len(one), NAN)))
            elif name == "failed":
                err, one = rec.parts("attempt", "error")
                col = np.fromiter(map(is_not, err, repeat(None)), dtype=bool, count=len(err))
                if one is not None:  # a one-attempt record's attempt did not fail
                    col = np.concatenate((col, np.zeros(len(one), dtype=bool)))
            else:
                col = rec.column("attempt", name)
            self._att_raw[name] = col
        return col

    def _rates(self) -> tuple[np.ndarray, np.ndarray] | None:
        """Per (channel, model), the price of a million input and of a million output tokens
        (through axonsim.pricing: the formula is linear in tokens, so a rate per million tokens is
        the cost of a million of them; NaN: no price; row k: no channel answered, nothing billed).
        None when nothing at all is priced. Computed once."""
        if not self._rates_known:
            self._rates_known = True
            arr = self._arrivals
            k = len(self.channels)
            m = len(arr.models)
            rate_in = np.full((k + 1, m), 0.0)
            rate_out = np.full((k + 1, m), 0.0)
            config = self.config
            for c, ch in enumerate(config.channels):
                for j, name in enumerate(arr.models):
                    upstream = ch.serves(name)
                    prices = dict(config.prices)
                    names: tuple[str | None, ...] = (upstream, name)
                    if ch.price is not None:  # the channel's own price wins over the table
                        prices = {"__channel__": ch.price}
                        names = ("__channel__",)
                    one_in = cost_for(Usage(prompt_tokens=1_000_000), prices, *names)
                    one_out = cost_for(Usage(completion_tokens=1_000_000), prices, *names)
                    rate_in[c, j] = NAN if one_in is None else one_in
                    rate_out[c, j] = NAN if one_out is None else one_out
            unpriced = np.isnan(rate_in[:k]).all() and np.isnan(rate_out[:k]).all()
            self._price_rates = None if unpriced else (rate_in, rate_out)
        return self._price_rates

    def _cost(self) -> np.ndarray:
        """Served tokens at the price of (channel, model) (see _rates)."""
        arr = self._arrivals
        k = len(self.channels)
        served = self._rcol("status") == 200  # a cut stream was still generated, and billed, up to the cut
        rates = self._rates()
        if rates is None:
            return np.where(served, NAN, 0.0)  # no price at all: what the formula below gives, without the tokens
        rate_in, rate_out = rates
        model = _array(arr.model, np.int64)
        channel = self._rcol("channel")
        ch_idx = np.where(channel >= 0, channel, k)
        inp = _array(arr.input_tokens, np.float64)
        out = self._rcol("tokens").astype(np.float64)
        cost = (inp * rate_in[ch_idx, model] + out * rate_out[ch_idx, model]) / 1e6
        return np.where(served, cost, 0.0)

    # -- tables -----------------------------------------------------------------------------------

    @property
    def requests(self) -> pd.DataFrame:
        if self._requests is None:
            r = self._rcol
            arr = self._arrivals
            arrival = r("arrival")
            end = r("end")
            self._requests = pd.DataFrame({
                "id": np.arange(len(arrival), dtype=np.int64),
                "arrival": arrival,
                "project": _categorical(arr.project, arr.projects),
                "model": _categorical(arr.model, arr.models),
                "stream": np.asarray(arr.stream, dtype=bool),
                "ok": r("ok"),
                "status": r("status"),
                "error": pd.Series(r("error"), dtype=object),
                "attempts": r("attempts"),
                "channel": _categorical(r("channel"), self.channels),
                "ttft": r("ttft"),
                "latency": end - arrival,
                "end": end,
                "input_tokens": r("input_tokens"),
                "output_tokens": r("tokens"),
                "cost": r("cost"),
            })
        return self._requests

    @property
    def attempts(self) -> pd.DataFrame:
        if self._attempts is None:
            a = self._acol
            grant = a("grant")
            end = a("end")
            start = a("start")
            waited_until = np.where(np.isnan(grant), end, grant)
            df = pd.DataFrame({
                "request": a("request"),
                "attempt": a("attempt"),
                "channel": _categorical(a("channel"), self.channels),
                "key": pd.Series(a("key"), dtype=object),
                "start": start,
                "end": end,
                "queue_wait": waited_until - start,
                "status": a("status"),
                "error": pd.Series(a("error"), dtype=object),
                "fault": pd.Series(a("fault"), dtype=object),
                "next": pd.Series(a("next"), dtype=object),
                "retry_after": a("retry_after"),
            })
            if self._rec.explain:
                df["decision"] = pd.Series(a("decision"), dtype=object)
            self._attempts = df
        return self._attempts

    @property
    def timeseries(self) -> pd.DataFrame:
        """Per channel and grid instant (long format): time, channel, inflight, busy, queue,
        attempts, rate_limited, errors, state, available, up, incident. Empty without a step."""
        if self._timeseries is None:
            self._timeseries = self._build_timeseries()
        return self._timeseries

    def _build_timeseries(self) -> pd.DataFrame:
        cols = ["time", "channel", "inflight", "busy", "queue", "attempts", "rate_limited", "errors", "state",
                "available", "up", "incident"]
        if self.step is None or not self._samples:
            return pd.DataFrame({c: [] for c in cols})
        a = self._araw  # sorted or counted per channel below: the recorded order will do
        grid = np.arange(len(self._samples), dtype=np.float64) * self.step
        states = np.asarray(self._samples, dtype=np.int64)  # (grid, channel)
        frames = []
        for c, name in enumerate(self.channels):
            mine = a("channel") == c
            start = np.sort(a("start")[mine])
            end_all = a("end")[mine]
            end = np.sort(end_all)
            grant_all = a("grant")[mine]
            held = ~np.isnan(grant_all)
            grant = np.sort(grant_all[held])
            end_held = np.sort(end_all[held])
            # The state after every event at a grid instant: counts of starts/ends at or before it.
            inflight = np.searchsorted(start, grid, "right") - np.searchsorted(end, grid, "right")
            busy = np.searchsorted(grant, grid, "right") - np.searchsorted(end_held, grid, "right")
            # Attempts that ended in (t - step, t] are counted at t.
            nbin = len(grid)
            b = np.minimum(np.searchsorted(grid, end_all, "left"), nbin - 1)
            status = a("status")[mine]
            failed = a("failed")[mine]
            up, incident = self._provider(c, grid)
            frames.append(pd.DataFrame({
                "time": grid,
                "channel": name,
                "inflight": inflight,
                "busy": busy,
                "queue": inflight - busy,
                "attempts": np.bincount(b, minlength=nbin),
                "rate_limited": np.bincount(b[status == 429], minlength=nbin),
                "errors": np.bincount(b[failed], minlength=nbin),
                "state": _categorical(states[:, c], STATES),
                "available": states[:, c] == 0,
                "up": up,
                "incident": incident,
            }))
        df = pd.concat(frames, ignore_index=True)
        df["channel"] = pd.Categorical(df["channel"], categories=self.channels)
        return df[cols]

    def _provider(self, c: int, grid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Whether the provider itself was up at each grid instant (no renewal outage, no scheduled
        incident with a status) and whether any scheduled incident was on. The outage process is
        drawn from its own seed: a fresh copy replays the run's periods exactly."""
        b = self.config.channels[c].behavior
        up = np.ones(len(grid), dtype=bool)
        incident = np.zeros(len(grid), dtype=bool)
        for inc in b.incidents:
            on = (grid >= inc.start) & (grid < inc.end)
            incident |= on
            if inc.status is not None:
                up &= ~on
        if b.outages is not None:
            process = BehaviorModel(b, derive(self.seed, CHANNEL_STATE_BASE + c)).outages
            assert process is not None
            up &= np.fromiter((not process.down(float(t)) for t in grid), dtype=bool, count=len(grid))
        return up, incident

    # -- summary ----------------------------------------------------------------------------------

    def summary(self) -> dict[str, Any]:
        """Success and error rates, p50/p95/p99 latency and TTFT (of successful requests), retry
        amplification (upstream attempts per client request), 429 rates, cost, per channel the
        share of successful requests it served and of upstream attempts it received, per project
        the success rate and cost."""
        # Everything here but the costs is a count, an extreme or a percentile, which the order of
        # the rows does not change: the columns are read as recorded, in their two parts (general
        # records, one-attempt records), without putting them in id order. A one-attempt record's
        # request is ok with status 200, its attempt did not fail, was not a 429 and started when
        # the request arrived (its latency is end - start).
        rec = self._rec
        n = rec.n
        k = len(self.channels)
        general = rec.general
        ok_g = general("request", "ok")
        ids_g = general("request", "id")
        end_g, end_o = rec.parts("request", "end")
        ttft_g, ttft_o = rec.parts("request", "ttft")
        ch_g, ch_o = rec.parts("request", "channel")
        status_g = general("request", "status")
        a_ch_g = general("attempt", "channel")
        a_status_g = general("attempt", "status")
        a_err_g = general("attempt", "error")
        times = self._arrivals.times
        arrival_g = np.fromiter(map(times.__getitem__, ids_g.tolist()), dtype=np.float64, count=len(ids_g))
        latency = (end_g - arrival_g)[ok_g]
        ttft = ttft_g[ok_g]
        served_counts = np.bincount(ch_g[ok_g], minlength=k)
        att_counts = np.bincount(a_ch_g, minlength=k)
        n_ok = int(ok_g.sum())
        n_att = len(a_ch_g)
        ends = [end_g]
        if end_o is not None:
            assert ttft_o is not None and ch_o is not None
            n_one = len(end_o)
            latency = np.concatenate((latency, end_o - rec.parts("attempt", "start")[1]))  # type: ignore[operator]
            ttft = np.concatenate((ttft, ttft_o))
            served_counts += np.bincount(ch_o, minlength=k)
            att_counts += np.bincount(ch_o, minlength=k)
            n_ok += n_one
            n_att += n_one
            ends.append(end_o)
        duration = max(float(np.nanmax(e)) for e in ends if e.size) if n else 0.0
        n_failed = sum(x is not None for x in a_err_g)
        # Costs are sums, whose rounding depends on the order: summed in id order, as the requests
        # table lists them. Without any price, a request's cost is NaN when served and 0 when not:
        # the total is then known (0) only when nothing was served; else it is unknown (None), not
        # "free", whether or not some request failed.
        none_served = n > 0 and n_ok == 0
        priced = self._rates() is not None
        cost = self._rcol("cost") if priced else None
        if cost is not None:
            has_cost = ~np.isnan(cost)
            total_cost = float(cost[has_cost].sum()) if has_cost.any() else None
        else:
            total_cost = 0.0 if none_served else None
        arr = self._arrivals
        amplification = n_att / n if n else 0.0
        lat_p = _pcts(latency, (50, 95, 99))
        ttft_p = _pcts(ttft, (50, 95, 99))
        out: dict[str, Any] = {
            "seed": self.seed,
            "requests": n,
            "duration": duration,
            "success_rate": n_ok / n if n else 0.0,
            "error_rate": 1.0 - n_ok / n if n else 0.0,
            "client_429_rate": float(np.count_nonzero(status_g == 429)) / n if n else 0.0,
            "latency_p50": lat_p[0],
            "latency_p95": lat_p[1],
            "latency_p99": lat_p[2],
            "ttft_p50": ttft_p[0],
            "ttft_p95": ttft_p[1],
            "ttft_p99": ttft_p[2],
            "attempts_per_request": amplification,
            "retry_amplification": amplification,
            "upstream_attempts": n_att,
            "upstream_error_rate": float(n_failed) / n_att if n_att else 0.0,
            "upstream_429_rate": float(np.count_nonzero(a_status_g == 429)) / n_att if n_att else 0.0,
            "cost": total_cost,
            "cost_per_request": total_cost / n if total_cost is not None and n else None,
            "share": {c: float(served_counts[j]) / n_ok if n_ok else 0.0 for j, c in enumerate(self.channels)},
            "attempt_share": {c: float(att_counts[j]) / n_att if n_att else 0.0 for j, c in enumerate(self.channels)},
        }
        if len(arr.projects) > 1:
            ok = self._rcol("ok")
            proj = _array(arr.project, np.int64)
            out["project_success_rate"] = {p: float(ok[proj == j].mean()) if (proj == j).any() else 0.0
                                           for j, p in enumerate(arr.projects)}
            if cost is not None:
                out["project_cost"] = {p: float(cost[(proj == j) & has_cost].sum()) if has_cost.any() else None
                                       for j, p in enumerate(arr.projects)}
            else:
                out["project_cost"] = {p: 0.0 if none_served else None for p in arr.projects}
        return out

    def to_files(self, directory: str | Path, format: str = "csv") -> list[Path]:
        """Write requests.<fmt>, attempts.<fmt>, timeseries.<fmt> (when sampled) and summary.json
        into `directory`; return the paths. Decision traces are written as JSON text."""
        if format not in ("csv", "parquet"):
            raise ValueError(f"format must be 'csv' or 'parquet', not {format!r}")
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        paths = []
        tables = [("requests", self.requests), ("attempts", self.attempts)]
        if self.step is not None:
            tables.append(("timeseries", self.timeseries))
        for name, df in tables:
            if "decision" in df.columns:
                df = df.assign(decision=[None if d is None else json.dumps(d) for d in df["decision"]])
            p = out / f"{name}.{format}"
            if format == "csv":
                df.to_csv(p, index=False)
            else:
                df.to_parquet(p, index=False)
            paths.append(p)
        from axonsim.sim.sweep import scenario_info  # (sweep imports this module)

        # With what was simulated (strategy, workload, incidents; no key or URL), so that a report
        # of this directory alone can say it.
        info = scenario_info(self.config)
        if isinstance(info.get("workload"), dict):
            info["workload"] = {**info["workload"], "requests": len(self._arrivals)}  # as run (--requests)
        p = out / "summary.json"
        p.write_text(json.dumps({**self.summary(), "scenario": _finite(info)}, indent=2) + "\n")
        paths.append(p)
        return paths
