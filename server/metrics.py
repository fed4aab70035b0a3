"""Prometheus metrics for the gateway: per-request counters and histograms, channel and store state read at scrape time.

Two kinds of metric live here:

- **Observed** (counters, histograms): the proxy reports each finished client request once, with
  `Metrics.observe_request(...)` and its usage with `observe_usage(...)`, and brackets it with
  `inflight_inc()` / `inflight_dec()`.
- **Read at scrape time** (gauges): channel state (in-flight, available, open breakers, cooldown,
  EWMAs) comes from whatever Router is current when Prometheus scrapes — a config reload swaps the
  Router and nothing has to be re-registered — and the store's queue depth / written / dropped /
  database-up come from the store object's own counters. Nothing is pushed on the hot path for them.

Why observed figures are plain Python numbers, turned into Prometheus families only at scrape time:
prometheus-client's Counter/Histogram take a lock per update (measured here: ~2 µs per counter
increment, ~5 µs per histogram observation, ~25 µs for one request's worth), while a cached list
cell and a bisect cost well under 1 µs each, and the proxy updates them from one event-loop thread
anyway. So: call the per-request methods and `render` from the event-loop thread.

Every Metrics has its own CollectorRegistry: several apps in one process (tests, benchmarks) never
see each other's numbers, and the global default registry is left alone.

Label cardinality is bounded on purpose: a model label is a model the current config serves (any
other name a client sends becomes "other", so a flood of made-up names cannot grow the series
count), channel and project labels come from the config (a project is a gateway key's), and
attempt outcomes are the core's error kinds.

Tokens and cost (`observe_usage`) are the figures teams chart and alert on per project and model
(what LiteLLM's token and spend metrics are to its users): the usage the upstream reported for each
client request, and its cost from the configured prices. The admin API answers the same questions
over any time range from the store; these are the running totals a dashboard rates.
"""

from __future__ import annotations

import logging
import math
import time
from bisect import bisect_left
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, cast

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, choose_encoder, generate_latest
from prometheus_client.process_collector import ProcessCollector

from server.store.records import CALLED_OFF

if TYPE_CHECKING:
    from axonsim.execution import Router

log = logging.getLogger("axonsim.server.metrics")

# The bounds are typed as tuples of any length on purpose: compiled, a tuple of a fixed length is
# kept unboxed, and every bisect call boxed its floats again (44 float objects per request).
# Whole LLM calls: a cached short answer takes a few ms, a long reasoning stream minutes.
LATENCY_BUCKETS: tuple[float, ...] = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0,
                                      120.0)
# The gateway's own share: tens of µs when all is well, so the resolution is at the low end.
OVERHEAD_BUCKETS: tuple[float, ...] = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                                       0.25, 0.5, 1.0)

OTHER_MODEL = "other"  # label for model names the config does not serve
NO_MODEL = "none"  # label when the request ended before a model was known (auth failure, bad body)
NO_PROJECT = "none"  # project label of a request no gateway key was found for
# Tokens one request may add of each type at most. An upstream's usage is its own say: a bogus count
# (negative, 1e20) is clamped rather than let a counter go down, or grow past what a float or a
# worker's figures file (64-bit integers) holds, which took every request series off the scrape.
MAX_TOKENS = 10**9
# Token counts of an answer's usage (axonsim.unified.Usage), in OpenAI's convention: cached and
# cache_write are part of prompt, reasoning is part of completion. (field, `type` label)
TOKEN_TYPES: tuple[tuple[str, str], ...] = (("prompt_tokens", "prompt"), ("completion_tokens", "completion"),
                                            ("cached_tokens", "cached"), ("cache_write_tokens", "cache_write"),
                                            ("reasoning_tokens", "reasoning"))
MAX_MODELS = 500  # distinct model labels at most, even if a config serves more

# Attempt outcomes: "success", "cancelled" (hedge lost, client gone), or an ErrorKind value.
SUCCESS = "success"
CANCELLED = "cancelled"
_CANCELLED_NEXT = frozenset(CALLED_OFF)

RouterSource = Any  # a Router, a zero-argument callable returning the current one (or None), or None
StoreSource = Any  # a store object, a zero-argument callable returning it (or None), or None


def _getter(source: Any) -> Callable[[], Any]:
    if source is None:
        return lambda: None
    if callable(source):
        return source  # type: ignore[no-any-return]
    return lambda: source


def attempt_outcome(a: Mapping[str, Any]) -> str:
    """The outcome label of one attempt in AttemptRecord.as_dict() form (the proxy's record)."""
    err = a.get("error")
    if err:  # its own failure, even if the client left during the backoff after it (next: cancelled)
        return str(err)
    if a.get("next") in _CANCELLED_NEXT:
        return CANCELLED
    broke = a.get("stream_error")  # a stream that failed after its commit point
    if broke:
        return str(broke)
    status = a.get("status") or 0
    return SUCCESS if 0 < status < 400 else "error"


class _Hist:
    """One histogram series: per-bucket (not cumulative) counts, the last one +Inf, and the sum."""

    __slots__ = ("counts", "total")

    def __init__(self, n: int) -> None:
        self.counts = [0] * (n + 1)
        self.total = 0.0

    def observe(self, bounds: Sequence[float], v: float) -> None:
        # Prometheus buckets are "less than or equal": the first bound >= v.
        self.counts[bisect_left(bounds, v)] += 1
        self.total += v


_Children = tuple[list[int], _Hist, _Hist]


class Metrics:
    """The gateway's metrics on a registry of its own.

    `router` and `store` may be the objects themselves or zero-argument callables returning the
    current ones (pass `lambda: proxy.router` so a reload's new Router is what the next scrape reads).
    `now` is the clock channel state is read with (the proxy's clock; Unix seconds).
    """

    def __init__(self, router: RouterSource = None, store: StoreSource = None,
                 now: Callable[[], float] = time.time, *, process: bool = True, namespace: str = "axonsim",
                 shared: StoreSource = None) -> None:
        self.registry = CollectorRegistry()
        self.namespace = namespace
        self._router: Callable[[], Router | None] = _getter(router)
        self._store: Callable[[], Any] = _getter(store)
        self._shared: Callable[[], Any] = _getter(shared)  # server.shared_state.SharedState, when state.url is set
        self._now = now
        self.inflight = 0
        # (format, model label, status) -> [count]; (format, model label) -> latency / TTFT histogram
        self._requests: dict[tuple[str, str, str], list[int]] = {}
        self._latency: dict[tuple[str, str], _Hist] = {}
        self._ttft: dict[tuple[str, str], _Hist] = {}
        self._overhead = _Hist(len(OVERHEAD_BUCKETS))
        self._attempts: dict[tuple[str, str], list[int]] = {}
        # (project, model label) -> tokens per TOKEN_TYPES; (project, model label) -> [USD]
        self._tokens: dict[tuple[str, str], list[int]] = {}
        self._cost: dict[tuple[str, str], list[float]] = {}
        # The fast path: the cells one raw (format, model, status) touches, found with one lookup.
        self._fast: dict[tuple[str, str | None, int], _Children] = {}
        self._models: set[str] = set()
        # Other worker processes' figures (server.worker_metrics), added to this process's own at
        # scrape time; None in a single process.
        self.peers: Callable[[], list[dict[str, Any]]] | None = None
        # CPU seconds and RSS: what the overhead benchmark and a memory alert read. Not registered on
        # its own: with several workers _Collector adds the other workers' figures to this one's.
        self._process: ProcessCollector | None = ProcessCollector(registry=None) if process else None
        self.registry.register(_Collector(self))

    # -- the per-request API -----------------------------------------------------------------------

    def inflight_inc(self) -> None:
        self.inflight += 1

    def inflight_dec(self) -> None:
        self.inflight -= 1

    def observe_request(self, client_format: str, model: str | None, status: int, latency: float | None,
                        ttft: float | None, overhead: float | None, attempts: Sequence[Mapping[str, Any]] = ()) -> None:
        """Count one finished client request. Times in seconds; None for a time not known (no first
        byte sent, say). `attempts` are AttemptRecord.as_dict()-shaped dicts (the proxy's record)."""
        children = self._fast.get((client_format, model, status))
        if children is None:
            children = self._children(client_format, model, status)
        cell, lat, first = children
        cell[0] += 1
        if latency is not None:
            lat.counts[bisect_left(LATENCY_BUCKETS, latency)] += 1
            lat.total += latency
        if ttft is not None:
            first.counts[bisect_left(LATENCY_BUCKETS, ttft)] += 1
            first.total += ttft
        if overhead is not None:
            self._overhead.observe(OVERHEAD_BUCKETS, overhead)
        if attempts:
            cells = self._attempts
            for a in attempts:
                akey = (a["channel"], attempt_outcome(a))
                c = cells.get(akey)
                if c is None:
                    c = cells[akey] = [0]
                c[0] += 1

    def observe_usage(self, project: str | None, model: str | None, usage: Mapping[str, int] | None,
                      cost: float | None) -> None:
        """Add one finished client request's tokens (a Usage.as_dict(); None: none reported) and its
        cost in USD (None: unpriced, which adds nothing) to its project's and model's totals."""
        if usage is None and not cost:  # (a refused request, priced at 0: no series of its own)
            return
        key = (project if project is not None else NO_PROJECT, self._model_label(model))
        if usage is not None:
            cell = self._tokens.get(key)
            if cell is None:
                cell = self._tokens[key] = [0] * len(TOKEN_TYPES)
            for i, (field, _) in enumerate(TOKEN_TYPES):
                n = usage.get(field, 0)
                if n > 0:
                    cell[i] += n if n < MAX_TOKENS else MAX_TOKENS
        if cost is not None and 0.0 <= cost < math.inf:  # (the same bogus usage priced: not a figure to add)
            spent = self._cost.get(key)
            if spent is None:
                spent = self._cost[key] = [0.0]
            spent[0] += cost

    def _children(self, client_format: str, model: str | None, status: int) -> _Children:
        label = self._model_label(model)
        rkey = (client_format, label, str(status))
        cell = self._requests.get(rkey)
        if cell is None:
            cell = self._requests[rkey] = [0]
        hkey = (client_format, label)
        lat = self._latency.get(hkey)
        if lat is None:
            lat = self._latency[hkey] = _Hist(len(LATENCY_BUCKETS))
            self._ttft[hkey] = _Hist(len(LATENCY_BUCKETS))
        children = (cell, lat, self._ttft[hkey])
        if label == model or model is None:
            # Only served models get a fast-path entry under their own name: a stream of made-up
            # names must not grow this dict either.
            self._fast[(client_format, model, status)] = children
        return children

    def _model_label(self, model: str | None) -> str:
        if model is None:
            return NO_MODEL
        if model in self._models:
            return model
        router = self._router()
        known = router is None or router.candidates.known(model)
        if known and len(self._models) < MAX_MODELS:
            self._models.add(model)
            return model
        return OTHER_MODEL

    # -- this process's figures, for other workers' scrapes ----------------------------------------

    def figures(self, final: bool = False) -> dict[str, Any]:
        """The observed counters and histograms, the in-flight count and the store's counters, as
        plain JSON-able data (what `peers` hands back). `final`: the process is stopping, so its
        gauges (in flight, store queue) are reported as 0 and only its counters live on."""
        store = self._store()
        shared = self._shared()
        return {
            "requests": [[*k, c[0]] for k, c in list(self._requests.items())],
            "latency": [[*k, h.counts, h.total] for k, h in list(self._latency.items())],
            "ttft": [[*k, h.counts, h.total] for k, h in list(self._ttft.items())],
            "overhead": [self._overhead.counts, self._overhead.total],
            "attempts": [[*k, c[0]] for k, c in list(self._attempts.items())],
            "tokens": [[*k, label, c[i]] for k, c in list(self._tokens.items())
                       for i, (_, label) in enumerate(TOKEN_TYPES)],
            "cost": [[*k, c[0]] for k, c in list(self._cost.items())],
            "inflight": 0 if final else self.inflight,
            "store": None if store is None else {
                "written": int(getattr(store, "written", 0)), "dropped": int(getattr(store, "dropped", 0)),
                "queued": 0 if final else int(getattr(store, "queued", 0)),
                "db_up": None if final else getattr(store, "db_up", None)},
            "shared": None if shared is None else {"syncs": int(shared.syncs), "errors": int(shared.errors)},
            "process": self._process_figures(final),
        }

    def _process_figures(self, final: bool) -> dict[str, dict[str, float]] | None:
        """This process's CPU (counters) and memory and descriptors (gauges: none once it stops)."""
        if self._process is None:
            return None
        counters: dict[str, float] = {}
        gauges: dict[str, float] = {}
        for fam in self._process.collect():
            if fam.samples:
                (counters if fam.type == "counter" else gauges)[fam.name] = float(fam.samples[0].value)
        return {"counters": counters, "gauges": {} if final else gauges}

    # -- exposition --------------------------------------------------------------------------------

    def render(self, accept: str | None = None) -> tuple[bytes, str]:
        """The exposition body and its content type for GET /metrics (OpenMetrics if `accept` asks)."""
        if accept:
            try:
                encoder, content_type = choose_encoder(accept)
            except (TypeError, ValueError):
                # An OpenMetrics version it cannot read ("version=abc") raised from prometheus-client:
                # a 500 and a traceback for any caller. The text format, as for no preference.
                pass
            else:
                return encoder(self.registry), content_type
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class _Collector:
    """Turns the accumulated numbers, every channel's state and the store's counters into families."""

    def __init__(self, metrics: Metrics) -> None:
        self.m = metrics
        self.ns = metrics.namespace
        self._peer_figures: list[dict[str, Any]] = []  # the other workers' figures, for the scrape under way

    def describe(self) -> Iterable[Metric]:
        return ()  # the families depend on the config at scrape time; nothing to check at registration

    def collect(self) -> Iterable[Metric]:
        self._peer_figures = self._peers()  # read once per scrape: _observed, _usage and _store add them
        for part in (self._observed, self._usage, self._channels, self._store, self._shared, self._processes):
            try:
                families = part()
            except Exception:
                # A broken reading must cost its own families, not the whole scrape.
                log.exception("metrics: collecting %s failed", part.__name__)
                continue
            yield from families

    def _peers(self) -> list[dict[str, Any]]:
        source = self.m.peers
        if source is None:
            return []
        try:
            return source()
        except Exception:
            # Other workers' figures missing must not cost this worker's own.
            log.exception("metrics: reading the other workers' figures failed")
            return []

    def _observed(self) -> list[Metric]:
        m = self.m
        ns = self.ns
        # This process's figures, plus every other worker's when there are several.
        reqs: dict[tuple[str, ...], float] = {k: float(c[0]) for k, c in list(m._requests.items())}
        hists: list[dict[tuple[str, ...], tuple[list[int], float]]] = [
            {k: (list(h.counts), h.total) for k, h in list(series.items())} for series in (m._latency, m._ttft)]
        over = (list(m._overhead.counts), m._overhead.total)
        atts: dict[tuple[str, ...], float] = {k: float(c[0]) for k, c in list(m._attempts.items())}
        n_inflight = float(m.inflight)
        for peer in self._peer_figures:
            _add_counts(reqs, peer["requests"])
            for merged, rows in zip(hists, (peer["latency"], peer["ttft"]), strict=True):
                _add_hists(merged, rows, len(LATENCY_BUCKETS) + 1)
            over = _add_hist(over, peer["overhead"], len(OVERHEAD_BUCKETS) + 1)
            _add_counts(atts, peer["attempts"])
            n_inflight += peer["inflight"]
        requests = CounterMetricFamily(f"{ns}_requests", "Client requests by client API format, model and HTTP status",
                                       labels=["client_format", "model", "status"])
        for rkey, n in reqs.items():
            requests.add_metric(list(rkey), n)
        latency = HistogramMetricFamily(f"{ns}_request_duration_seconds",
                                        "Client request latency, arrival to last byte",
                                        labels=["client_format", "model"])
        ttft = HistogramMetricFamily(f"{ns}_request_ttft_seconds",
                                     "Time from a request's arrival to the first byte sent back",
                                     labels=["client_format", "model"])
        for fam, merged in zip((latency, ttft), hists, strict=True):
            for hkey, (counts, total) in merged.items():
                fam.add_metric(list(hkey), _cumulative(LATENCY_BUCKETS, counts), total)
        overhead = HistogramMetricFamily(f"{ns}_gateway_overhead_seconds",
                                         "Time the gateway itself spent on a request: total minus upstream and upload waits",
                                         labels=[])
        overhead.add_metric([], _cumulative(OVERHEAD_BUCKETS, over[0]), over[1])
        attempts = CounterMetricFamily(f"{ns}_upstream_attempts", "Upstream attempts by channel and outcome "
                                       "(success, cancelled, or the error kind)", labels=["channel", "outcome"])
        for akey, n in atts.items():
            attempts.add_metric(list(akey), n)
        inflight = GaugeMetricFamily(f"{ns}_requests_inflight", "Client requests being served now", value=n_inflight)
        return [requests, latency, ttft, overhead, attempts, inflight]

    def _usage(self) -> list[Metric]:
        m = self.m
        ns = self.ns
        tokens: dict[tuple[str, ...], float] = {(*k, label): float(c[i]) for k, c in list(m._tokens.items())
                                                for i, (_, label) in enumerate(TOKEN_TYPES)}
        cost: dict[tuple[str, ...], float] = {k: c[0] for k, c in list(m._cost.items())}
        for peer in self._peer_figures:
            _add_counts(tokens, peer.get("tokens", ()))  # (absent from an earlier version's last file)
            _add_counts(cost, peer.get("cost", ()))
        used = CounterMetricFamily(f"{ns}_tokens", "Tokens of client requests by project, model and type, as the "
                                   "upstreams reported them (cached and cache_write are part of prompt, reasoning "
                                   "of completion)", labels=["project", "model", "type"])
        for tkey, n in tokens.items():
            used.add_metric(list(tkey), n)
        spent = CounterMetricFamily(f"{ns}_cost_usd", "Cost of client requests in USD by project and model, from "
                                    "the configured prices (a request of an unpriced model adds nothing)",
                                    labels=["project", "model"])
        for ckey, usd in cost.items():
            spent.add_metric(list(ckey), usd)
        return [used, spent]

    def _channels(self) -> list[Metric]:
        router = self.m._router()
        if router is None:
            return []
        now = self.m._now()
        ns = self.ns
        lab = ["channel"]
        enabled = GaugeMetricFamily(f"{ns}_channel_enabled", "1 if the channel is enabled (config or admin API)",
                                    labels=lab)
        available = GaugeMetricFamily(f"{ns}_channel_available", "1 if the channel may take an attempt now",
                                      labels=lab)
        inflight = GaugeMetricFamily(f"{ns}_channel_inflight", "Upstream attempts in flight on the channel",
                                     labels=lab)
        breakers = GaugeMetricFamily(f"{ns}_channel_breakers_open", "Open circuit breakers on the channel "
                                     "(one breaker per upstream model)", labels=lab)
        cooldown = GaugeMetricFamily(f"{ns}_channel_cooldown_remaining_seconds",
                                     "Seconds until the channel's rate-limit cooldown ends (0: none)", labels=lab)
        ewma_lat = GaugeMetricFamily(f"{ns}_channel_ewma_latency_seconds", "EWMA of the channel's attempt latency "
                                     "(absent before its first success)", labels=lab)
        ewma_ttft = GaugeMetricFamily(f"{ns}_channel_ewma_ttft_seconds", "EWMA of the channel's time to first "
                                      "token (absent before its first answer)", labels=lab)
        keys = GaugeMetricFamily(f"{ns}_channel_key_available", "1 if the upstream key may take an attempt now "
                                 "(keys by name, never the key)", labels=["channel", "key"])
        for st in router.states:
            snap = st.snapshot(now)
            name = st.name
            enabled.add_metric([name], 1.0 if snap["enabled"] else 0.0)
            available.add_metric([name], 1.0 if snap["available"] else 0.0)
            inflight.add_metric([name], float(st.inflight))
            per_model = cast(Mapping[str, Mapping[str, Any]], snap["breakers"])
            breakers.add_metric([name], float(sum(1 for b in per_model.values() if b["state"] == "open")))
            cooldown.add_metric([name], cast(float, snap["cooldown_remaining"]))
            if st.ewma_latency is not None:
                ewma_lat.add_metric([name], float(st.ewma_latency))
            if st.ewma_ttft is not None:
                ewma_ttft.add_metric([name], float(st.ewma_ttft))
            for i, k in enumerate(st.keys):
                keys.add_metric([name, k.name], 1.0 if st.key_available(i, now) else 0.0)
        return [enabled, available, inflight, breakers, cooldown, ewma_lat, ewma_ttft, keys]

    def _store(self) -> list[Metric]:
        store = self.m._store()
        if store is None:
            return []
        ns = self.ns
        queued = float(getattr(store, "queued", 0))
        written = float(getattr(store, "written", 0))
        dropped = float(getattr(store, "dropped", 0))
        for peer in self._peer_figures:  # each worker has its own writer on the same database
            ps = peer.get("store")
            if ps:
                queued += ps["queued"]
                written += ps["written"]
                dropped += ps["dropped"]
        out: list[Metric] = [
            GaugeMetricFamily(f"{ns}_store_queue_depth", "Usage records in memory, not yet committed",
                              value=queued),
            CounterMetricFamily(f"{ns}_store_written", "Usage records committed to the database", value=written),
            CounterMetricFamily(f"{ns}_store_dropped", "Usage records lost (buffer full, rejected, unwritten at "
                                "close)", value=dropped),
        ]
        up = getattr(store, "db_up", None)
        for peer in self._peer_figures:  # down if any worker finds it down (they share one database)
            peer_up = (peer.get("store") or {}).get("db_up")
            if peer_up is not None:
                up = bool(peer_up) if up is None else up and bool(peer_up)
        if up is not None:
            out.append(GaugeMetricFamily(f"{ns}_store_db_up", "1 if the store's database is reachable",
                                         value=1.0 if up else 0.0))
        return out


    def _shared(self) -> list[Metric]:
        """Channel state shared through Redis: whether this worker reaches it, and its syncs."""
        shared = self.m._shared()
        if shared is None:
            return []
        ns = self.ns
        syncs, errors = float(shared.syncs), float(shared.errors)
        for peer in self._peer_figures:  # counters: every worker's, as for the store's
            ps = peer.get("shared")
            if ps:
                syncs += ps["syncs"]
                errors += ps["errors"]
        return [
            GaugeMetricFamily(f"{ns}_shared_state_up", "1 if Redis (state.url) answered this worker's last "
                              "synchronisation; 0: it routes on its local channel state", value=1.0 if shared.up else 0.0),
            CounterMetricFamily(f"{ns}_shared_state_syncs", "Successful synchronisations with Redis (every worker)",
                                value=syncs),
            CounterMetricFamily(f"{ns}_shared_state_errors", "Failed synchronisations with Redis (every worker)",
                                value=errors),
        ]

    def _processes(self) -> list[Metric]:
        """prometheus-client's process families: this process's, or with several workers (whose
        answers to scrapes alternate) the gateway's: CPU seconds summed over every worker, ended ones
        included, so the counter never goes back; memory and descriptors summed over the running
        ones; the earliest start time among them; the descriptor limit this worker's."""
        collector = self.m._process
        if collector is None:
            return []
        families = list(collector.collect())
        if self.m.peers is None:
            return families
        figures = [p.get("process") or {} for p in self._peer_figures]
        out: list[Metric] = []
        for fam in families:
            if not fam.samples:
                out.append(fam)
                continue
            name, value = fam.name, float(fam.samples[0].value)
            if fam.type == "counter":
                value += sum(float(f.get("counters", {}).get(name, 0.0)) for f in figures)
                out.append(CounterMetricFamily(name, f"{fam.documentation} (every worker)", value=value))
                continue
            others = [float(f["gauges"][name]) for f in figures if name in f.get("gauges", {})]
            if name.endswith("_start_time_seconds"):
                value = min([value, *others])
            elif not name.endswith("_max_fds"):
                value += sum(others)
            out.append(GaugeMetricFamily(name, f"{fam.documentation} (running workers)", value=value))
        return out


def _cumulative(bounds: Sequence[float], counts: Sequence[int | float]) -> list[tuple[str, float]]:
    """Per-bucket counts (the last one +Inf) as Prometheus's cumulative (le, count) pairs."""
    out = []
    acc = 0.0
    for le, c in zip([*(repr(float(b)) for b in bounds), "+Inf"], counts, strict=True):
        acc += c
        out.append((le, acc))
    return out


def _add_counts(into: dict[tuple[str, ...], float], rows: Iterable[Sequence[Any]]) -> None:
    """Add a peer's [label..., count] rows into `into`, keyed by the labels."""
    for row in rows:
        key = tuple(str(x) for x in row[:-1])
        into[key] = into.get(key, 0.0) + float(row[-1])


def _add_hist(h: tuple[list[int], float], row: Sequence[Any], size: int) -> tuple[list[int], float]:
    counts, total = row
    if len(counts) != size:  # another version's buckets: not comparable, left out
        return h
    return [a + b for a, b in zip(h[0], counts, strict=True)], h[1] + float(total)


def _add_hists(into: dict[tuple[str, ...], tuple[list[int], float]], rows: Iterable[Sequence[Any]],
               size: int) -> None:
    """Add a peer's [label..., counts, total] histogram rows into `into`."""
    for row in rows:
        key = tuple(str(x) for x in row[:-2])
        into[key] = _add_hist(into.get(key, ([0] * size, 0.0)), row[-2:], size)
