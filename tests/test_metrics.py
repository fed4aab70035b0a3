"""Prometheus metrics: the exposition parses, counts match what was observed, channel and store gauges follow live state."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import prometheus_client
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.process_collector import ProcessCollector

from axonsim.config import Store as StoreSettings
from axonsim.config import parse_config
from axonsim.execution import Outcome, Router
from axonsim.unified import ErrorKind
from server.api import metrics_router
from server.metrics import LATENCY_BUCKETS, OVERHEAD_BUCKETS, Metrics, attempt_outcome
from server.store import AttemptRow, RequestRecord, Store

pytestmark = pytest.mark.timeout(60)


def config(**routing: Any) -> Any:
    return parse_config({
        "channels": [
            {"name": "alpha", "api_keys": ["upstream-secret-alpha-1"], "models": ["m1"], "priority": 0},
            {"name": "beta", "api_keys": ["upstream-secret-beta-1"], "models": ["m1", "m2"], "priority": 1},
            {"name": "gamma", "api_keys": [{"key": "upstream-secret-g1", "name": "g-one"},
                                           {"key": "upstream-secret-g2", "name": "g-two"}], "models": ["m2"]},
        ],
        "routing": {"strategy": "round_robin", "retry": {"backoff": {"base": 0.001, "cap": 0.001, "jitter": 0}},
                    **routing},
    })


def scrape(m: Metrics) -> dict[str, Any]:
    body, content_type = m.render()
    assert content_type.startswith("text/plain")
    return {f.name: f for f in text_string_to_metric_families(body.decode())}


def samples(fams: dict[str, Any], family: str, name: str | None = None) -> dict[tuple[tuple[str, str], ...], float]:
    """{sorted label items: value} for the samples called `name` (default: the family's own name)."""
    want = name or family
    return {tuple(sorted(s.labels.items())): s.value for s in fams[family].samples if s.name == want}


def value(fams: dict[str, Any], family: str, name: str | None = None, **labels: str) -> float:
    key = tuple(sorted(labels.items()))
    got = samples(fams, family, name)
    assert key in got, f"{family} has no sample {labels}: {sorted(got)}"
    return got[key]


OK = {"attempt": 1, "channel": "alpha", "key": "alpha#0", "upstream_model": "m1", "status": 200, "error": None,
      "next": "done"}


def test_counts_match_observations() -> None:
    m = Metrics(process=False)
    m.observe_request("openai_chat", "m1", 200, 0.3, 0.05, 0.0002, [OK])
    m.observe_request("openai_chat", "m1", 200, 3.0, 0.7, 0.0004, [OK])
    m.observe_request("openai_chat", "m1", 502, 0.02, None, 0.003, [
        {**OK, "status": 500, "error": "server_error", "next": "failover"},
        {**OK, "channel": "beta", "status": 429, "error": "rate_limited", "next": "exhausted"}])
    m.observe_request("anthropic", "m2", 200, 150.0, 0.001, 0.00001, [{**OK, "channel": "beta"}])
    m.observe_request("gemini", None, 401, 0.0001, None, None, [])
    fams = scrape(m)

    assert samples(fams, "axonsim_requests", "axonsim_requests_total") == {
        (("client_format", "openai_chat"), ("model", "m1"), ("status", "200")): 2.0,
        (("client_format", "openai_chat"), ("model", "m1"), ("status", "502")): 1.0,
        (("client_format", "anthropic"), ("model", "m2"), ("status", "200")): 1.0,
        (("client_format", "gemini"), ("model", "none"), ("status", "401")): 1.0,
    }
    lat = "axonsim_request_duration_seconds"
    assert value(fams, lat, lat + "_count", client_format="openai_chat", model="m1") == 3
    assert value(fams, lat, lat + "_sum", client_format="openai_chat", model="m1") == pytest.approx(3.32)
    # Cumulative buckets: 0.02 ≤ 0.025, 0.3 ≤ 0.5, 3.0 ≤ 5.0; 150 s is beyond the last bound.
    assert value(fams, lat, lat + "_bucket", client_format="openai_chat", model="m1", le="0.025") == 1
    assert value(fams, lat, lat + "_bucket", client_format="openai_chat", model="m1", le="0.5") == 2
    assert value(fams, lat, lat + "_bucket", client_format="openai_chat", model="m1", le="2.5") == 2
    assert value(fams, lat, lat + "_bucket", client_format="openai_chat", model="m1", le="5.0") == 3
    assert value(fams, lat, lat + "_bucket", client_format="anthropic", model="m2", le="120.0") == 0
    assert value(fams, lat, lat + "_bucket", client_format="anthropic", model="m2", le="+Inf") == 1
    buckets = [s for s in fams[lat].samples if s.name == lat + "_bucket" and s.labels["model"] == "m1"]
    assert [s.labels["le"] for s in buckets] == [*(repr(float(b)) for b in LATENCY_BUCKETS), "+Inf"]

    ttft = "axonsim_request_ttft_seconds"
    assert value(fams, ttft, ttft + "_count", client_format="openai_chat", model="m1") == 2  # None: not observed
    assert value(fams, ttft, ttft + "_bucket", client_format="openai_chat", model="m1", le="0.05") == 1
    assert value(fams, ttft, ttft + "_bucket", client_format="anthropic", model="m2", le="0.005") == 1

    ov = "axonsim_gateway_overhead_seconds"
    assert value(fams, ov, ov + "_count") == 4
    assert value(fams, ov, ov + "_sum") == pytest.approx(0.00361)
    assert value(fams, ov, ov + "_bucket", le="5e-05") == 1
    assert value(fams, ov, ov + "_bucket", le="0.00025") == 2
    assert value(fams, ov, ov + "_bucket", le="0.0005") == 3
    assert value(fams, ov, ov + "_bucket", le="1.0") == 4
    assert len(samples(fams, ov, ov + "_bucket")) == len(OVERHEAD_BUCKETS) + 1

    assert samples(fams, "axonsim_upstream_attempts", "axonsim_upstream_attempts_total") == {
        (("channel", "alpha"), ("outcome", "success")): 2.0,
        (("channel", "alpha"), ("outcome", "server_error")): 1.0,
        (("channel", "beta"), ("outcome", "rate_limited")): 1.0,
        (("channel", "beta"), ("outcome", "success")): 1.0,
    }


# The same traffic observed by one process, or split across worker processes that publish their
# figures (server.worker_metrics): every worker's scrape must read exactly what the one process would.
TRAFFIC = [
    ("openai_chat", "m1", 200, 0.3, 0.05, 0.0002, [OK]),
    ("openai_chat", "m1", 200, 3.0, 0.7, 0.0004, [OK]),
    ("openai_chat", "m1", 502, 0.02, None, 0.003, [
        {**OK, "status": 500, "error": "server_error", "next": "failover"},
        {**OK, "channel": "beta", "status": 429, "error": "rate_limited", "next": "exhausted"}]),
    ("anthropic", "m2", 200, 150.0, 0.001, 0.00001, [{**OK, "channel": "beta"}]),
    ("gemini", None, 401, 0.0001, None, None, []),
    ("openai_chat", "m1", 200, 0.011, 0.004, 0.00007, [OK]),
    ("anthropic", "m2", 429, 0.2, None, 0.0001, [{**OK, "channel": "beta", "status": 429, "error": "rate_limited",
                                                 "next": "give_up"}]),
]


def _all_samples(m: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for fam in scrape(m).values():
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


class CountingStore:
    def __init__(self, written: int, dropped: int, queued: int) -> None:
        self.written, self.dropped, self.queued, self.db_up = written, dropped, queued, True


async def test_workers_figures_add_up_to_one_process(tmp_path: Path) -> None:
    from server.worker_metrics import WorkerFigures

    one = Metrics(store=CountingStore(9, 1, 3), process=False)
    for t in TRAFFIC:
        one.observe_request(*t)
    one.inflight_inc()
    one.inflight_inc()

    # Three live processes' worth of workers (this one, its parent, init), the traffic dealt round.
    pids = [os.getpid(), os.getppid(), 1]
    stores = [CountingStore(4, 0, 1), CountingStore(5, 1, 2), CountingStore(0, 0, 0)]
    workers = [Metrics(store=st, process=False) for st in stores]
    figures = [WorkerFigures(tmp_path, m, pid=pid) for m, pid in zip(workers, pids, strict=True)]
    for i, t in enumerate(TRAFFIC):
        workers[i % 3].observe_request(*t)
    workers[0].inflight_inc()
    workers[2].inflight_inc()
    for f in figures:
        f.publish()
    (tmp_path / "999999999.json").write_text("{not json")  # a torn or foreign file is skipped
    want = _all_samples(one)
    for m in workers:  # whichever worker answers the scrape (sums of seconds: added in another order)
        assert _all_samples(m) == pytest.approx(want, rel=1e-12)

    # A worker that stops gracefully: its counters stay in the sums, its gauges go to 0.
    await figures[2].stop()
    workers[2].inflight_dec()
    got = _all_samples(workers[0])
    assert got[("axonsim_requests_inflight", ())] == 1
    assert got[("axonsim_requests_total", (("client_format", "anthropic"), ("model", "m2"), ("status", "200")))] == 1
    # A worker whose process is gone without a last word: its gauges are ignored, its counters kept.
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    dead = Metrics(store=CountingStore(100, 0, 50), process=False)
    dead.observe_request("openai_chat", "m1", 200, 0.3, 0.05, 0.0002, [OK])
    dead.inflight_inc()
    WorkerFigures(tmp_path, dead, pid=gone.pid).publish()
    got = _all_samples(workers[1])
    assert got[("axonsim_requests_inflight", ())] == 1
    assert got[("axonsim_store_queue_depth", ())] == 3  # the dead worker's 50 queued records are not counted
    assert got[("axonsim_store_written_total", ())] == 109
    assert got[("axonsim_requests_total", (("client_format", "openai_chat"), ("model", "m1"),
                                           ("status", "200")))] == want[
        ("axonsim_requests_total", (("client_format", "openai_chat"), ("model", "m1"), ("status", "200")))] + 1


def test_counters_never_go_back_whichever_worker_answers_the_next_scrape(tmp_path: Path) -> None:
    # Worker A counts requests after its last periodic publish, then answers a scrape (its own live
    # figures); the next scrape goes to B, which reads A's file: it must hold what A's scrape counted.
    from server.worker_metrics import WorkerFigures

    a, b = Metrics(process=False), Metrics(process=False)
    fa, fb = WorkerFigures(tmp_path, a, pid=os.getpid()), WorkerFigures(tmp_path, b, pid=os.getppid())
    fa.publish()
    fb.publish()
    for t in TRAFFIC:
        a.observe_request(*t)
    key = ("axonsim_requests_total", (("client_format", "openai_chat"), ("model", "m1"), ("status", "200")))
    first = _all_samples(a)[key]
    assert first > 0
    second = _all_samples(b)
    assert second[key] == first and all(v >= _all_samples(a).get(k, 0) for k, v in second.items()
                                        if k[0].endswith(("_total", "_count", "_sum", "_bucket")))


def test_the_store_is_down_on_every_workers_scrape_when_one_worker_finds_it_down(tmp_path: Path) -> None:
    from server.worker_metrics import WorkerFigures

    stores = [CountingStore(1, 0, 0), CountingStore(1, 0, 1)]
    stores[1].db_up = False
    workers = [Metrics(store=st, process=False) for st in stores]
    for m, pid in zip(workers, (os.getpid(), os.getppid()), strict=True):
        WorkerFigures(tmp_path, m, pid=pid).publish()
    for m in workers:  # one database behind them all: a scrape must not say "up" by where it lands
        assert _all_samples(m)[("axonsim_store_db_up", ())] == 0.0
    stores[1].db_up = True
    WorkerFigures(tmp_path, workers[1], pid=os.getppid()).publish()
    assert _all_samples(workers[0])[("axonsim_store_db_up", ())] == 1.0


def test_shared_state_counters_add_up_over_workers(tmp_path: Path) -> None:
    """Counters must not jump between workers' own values as scrapes land on one or another."""
    from types import SimpleNamespace

    from server.worker_metrics import WorkerFigures

    states = [SimpleNamespace(up=True, syncs=10, errors=1), SimpleNamespace(up=False, syncs=7, errors=4)]
    workers = [Metrics(shared=st, process=False) for st in states]
    for m, pid in zip(workers, (os.getpid(), os.getppid()), strict=True):
        WorkerFigures(tmp_path, m, pid=pid).publish()
    for m, up in zip(workers, (1.0, 0.0), strict=True):
        got = _all_samples(m)
        assert got[("axonsim_shared_state_syncs_total", ())] == 17
        assert got[("axonsim_shared_state_errors_total", ())] == 5
        assert got[("axonsim_shared_state_up", ())] == up  # a gauge: the answering worker's own


class FixedProcess(ProcessCollector):
    """prometheus-client's process families with figures of a test's choosing (one process's)."""

    def __init__(self, cpu: float, rss: float, start: float) -> None:
        super().__init__(registry=None)
        self.cpu, self.rss, self.start = cpu, rss, start

    def collect(self) -> list[Metric]:
        return [CounterMetricFamily("process_cpu_seconds", "Total user and system CPU time spent in seconds.",
                                    value=self.cpu),
                GaugeMetricFamily("process_resident_memory_bytes", "Resident memory size in bytes.", value=self.rss),
                GaugeMetricFamily("process_start_time_seconds", "Start time of the process.", value=self.start),
                GaugeMetricFamily("process_max_fds", "Maximum number of open file descriptors.", value=1024)]


async def test_process_figures_are_the_gateways_whichever_worker_answers(tmp_path: Path) -> None:
    """Scrapes land on one worker or another: each reported its own CPU seconds, a counter that then
    went back at every other scrape. CPU seconds are summed over every worker (ended ones included),
    memory over the running ones; the start time is the earliest running worker's."""
    from server.worker_metrics import WorkerFigures

    workers = [Metrics(process=True), Metrics(process=True)]
    workers[0]._process = FixedProcess(2.0, 100e6, 1000.0)
    workers[1]._process = FixedProcess(3.0, 80e6, 1010.0)
    figures = [WorkerFigures(tmp_path, m, pid=pid) for m, pid in zip(workers, (os.getpid(), os.getppid()), strict=True)]
    for f in figures:
        f.publish()

    def process(m: Metrics) -> tuple[float, float, float, float]:
        got = _all_samples(m)
        return (got[("process_cpu_seconds_total", ())], got[("process_resident_memory_bytes", ())],
                got[("process_start_time_seconds", ())], got[("process_max_fds", ())])

    for m in workers:
        assert process(m) == (5.0, 180e6, 1000.0, 1024)
    gone = subprocess.Popen([sys.executable, "-c", "pass"])  # a worker whose process ended without a word
    gone.wait()
    dead = Metrics(process=True)
    dead._process = FixedProcess(7.0, 50e6, 900.0)
    WorkerFigures(tmp_path, dead, pid=gone.pid).publish()
    assert process(workers[0]) == (12.0, 180e6, 1000.0, 1024)
    workers[0]._process.cpu = 4.0  # type: ignore[union-attr]
    await figures[0].stop()  # a worker that stops: its last CPU seconds stay, its memory goes
    assert process(workers[1]) == (14.0, 80e6, 1010.0, 1024)
    alone = Metrics(process=True)  # one process: prometheus-client's own figures, untouched
    alone._process = FixedProcess(1.5, 10e6, 5.0)
    assert process(alone) == (1.5, 10e6, 5.0, 1024)


def test_a_worker_without_peers_scrapes_as_before(tmp_path: Path) -> None:
    from server.worker_metrics import WorkerFigures

    alone, plain = Metrics(process=False), Metrics(process=False)
    WorkerFigures(tmp_path, alone)
    for t in TRAFFIC:
        alone.observe_request(*t)
        plain.observe_request(*t)
    assert _all_samples(alone) == _all_samples(plain)


def test_inflight_gauge() -> None:
    m = Metrics(process=False)
    m.inflight_inc()
    m.inflight_inc()
    m.inflight_inc()
    m.inflight_dec()
    assert value(scrape(m), "axonsim_requests_inflight") == 2


def test_attempt_outcomes() -> None:
    assert attempt_outcome(OK) == "success"
    assert attempt_outcome({**OK, "status": 500, "error": "server_error", "next": "retry"}) == "server_error"
    assert attempt_outcome({**OK, "status": 0, "next": "hedge_lost"}) == "cancelled"
    assert attempt_outcome({**OK, "status": 499, "next": "cancelled"}) == "cancelled"
    # a 503, then the client left during the backoff: the attempt's own outcome, as the store has it
    assert attempt_outcome({**OK, "status": 503, "error": "overloaded", "next": "cancelled"}) == "overloaded"
    assert attempt_outcome({**OK, "stream_error": "connection"}) == "connection"  # broke after the commit
    assert attempt_outcome({**OK, "status": 404}) == "error"


def test_traffic_through_the_router_is_counted(driver: Any) -> None:
    """Drive real requests through Router.execute (scripted upstreams) and report them the way the
    proxy does: the attempt counts are the attempts execution made."""
    router = Router(config())
    m = Metrics(router, process=False)
    sent = {"alpha": 0, "beta": 0}

    def answer(call: Any, now: float) -> Outcome:
        sent[call.state.name] += 1
        if call.state.name == "alpha":  # alpha always fails with a 500: every request fails over to beta
            return Outcome(False, now + 0.01, 500, ErrorKind.SERVER_ERROR)
        return Outcome(True, now + 0.2)

    for i in range(5):
        res = driver(router, "m1", answer, now=float(i))
        assert res.ok
        m.observe_request("openai_chat", "m1", 200, 0.25, 0.2, 0.0001, [a.as_dict() for a in res.attempts])
    fams = scrape(m)
    attempts = samples(fams, "axonsim_upstream_attempts", "axonsim_upstream_attempts_total")
    assert attempts == {(("channel", "alpha"), ("outcome", "server_error")): float(sent["alpha"]),
                        (("channel", "beta"), ("outcome", "success")): float(sent["beta"])}
    assert sent["beta"] == 5 and sent["alpha"] >= 1
    assert value(fams, "axonsim_requests", "axonsim_requests_total", client_format="openai_chat", model="m1",
                 status="200") == 5


def test_unknown_models_share_one_label() -> None:
    router = Router(config())
    m = Metrics(router, process=False)
    for i in range(300):
        m.observe_request("openai_chat", f"made-up-{i}", 404, 0.001, None, 0.0001, [])
    m.observe_request("openai_chat", "m2", 200, 0.1, 0.05, 0.0001, [])
    got = samples(scrape(m), "axonsim_requests", "axonsim_requests_total")
    assert got == {(("client_format", "openai_chat"), ("model", "other"), ("status", "404")): 300.0,
                   (("client_format", "openai_chat"), ("model", "m2"), ("status", "200")): 1.0}
    assert len(m._fast) == 1  # made-up names leave nothing behind on the fast path


def test_channel_gauges_follow_router_state() -> None:
    cfg = config(health={"breaker": {"failure_threshold": 1, "open_time": 30}, "key_breaker": {"enabled": False},
                         "auto_disable": []})
    router = Router(cfg)
    clock = [1000.0]
    m = Metrics(lambda: router, now=lambda: clock[0], process=False)
    fams = scrape(m)
    for ch in ("alpha", "beta", "gamma"):
        assert value(fams, "axonsim_channel_available", channel=ch) == 1
        assert value(fams, "axonsim_channel_enabled", channel=ch) == 1
        assert value(fams, "axonsim_channel_inflight", channel=ch) == 0
        assert value(fams, "axonsim_channel_breakers_open", channel=ch) == 0
        assert value(fams, "axonsim_channel_cooldown_remaining_seconds", channel=ch) == 0
    assert samples(fams, "axonsim_channel_ewma_latency_seconds") == {}  # no sample before a success
    assert value(fams, "axonsim_channel_key_available", channel="gamma", key="g-two") == 1

    alpha, beta, gamma = router.states
    alpha.started(1000.0, 0, "m1")
    alpha.started(1000.0, 0, "m1")
    alpha.succeeded(1000.5, 0.5, 0, "m1", ttft=0.2)
    alpha.first_token(1000.5, 0.2)
    beta.started(1000.0, 0, "m1")
    beta.failed(1000.1, Outcome(False, 1000.1, 500, ErrorKind.SERVER_ERROR, key=0), "m1")  # opens m1's breaker
    gamma.started(1000.0, 1, "m2")
    gamma.failed(1000.1, Outcome(False, 1000.1, 429, ErrorKind.RATE_LIMITED, retry_after=20, key=1), "m2")
    gamma.keys[0].disabled = True
    clock[0] = 1001.0
    fams = scrape(m)
    assert value(fams, "axonsim_channel_inflight", channel="alpha") == 1
    assert value(fams, "axonsim_channel_ewma_latency_seconds", channel="alpha") == pytest.approx(0.5)
    assert value(fams, "axonsim_channel_ewma_ttft_seconds", channel="alpha") == pytest.approx(0.2)
    assert value(fams, "axonsim_channel_breakers_open", channel="beta") == 1
    assert value(fams, "axonsim_channel_key_available", channel="gamma", key="g-one") == 0  # switched off
    assert value(fams, "axonsim_channel_key_available", channel="gamma", key="g-two") == 0  # its 429
    assert value(fams, "axonsim_channel_available", channel="gamma") == 0

    beta.channel.enabled = False
    fams = scrape(m)
    assert value(fams, "axonsim_channel_enabled", channel="beta") == 0
    assert value(fams, "axonsim_channel_available", channel="beta") == 0


def test_single_key_429_is_a_channel_cooldown() -> None:
    router = Router(config())
    m = Metrics(lambda: router, now=lambda: 105.0, process=False)
    alpha = router.states[0]
    alpha.started(100.0, 0, "m1")
    alpha.failed(100.0, Outcome(False, 100.0, 429, ErrorKind.RATE_LIMITED, retry_after=30, key=0), "m1")
    fams = scrape(m)
    assert value(fams, "axonsim_channel_cooldown_remaining_seconds", channel="alpha") == pytest.approx(25.0)
    assert value(fams, "axonsim_channel_available", channel="alpha") == 0


def test_a_reload_is_seen_at_the_next_scrape() -> None:
    current = [Router(config())]
    m = Metrics(lambda: current[0], process=False)
    assert set(samples(scrape(m), "axonsim_channel_available")) == {
        (("channel", "alpha"),), (("channel", "beta"),), (("channel", "gamma"),)}
    current[0] = Router(parse_config({"channels": [{"name": "delta", "models": ["m9"]}]}))
    assert set(samples(scrape(m), "axonsim_channel_available")) == {(("channel", "delta"),)}


class FakeStore:
    queued = 7
    written = 1234
    dropped = 5
    db_up = False


def test_store_gauges_read_the_store_counters() -> None:
    m = Metrics(store=FakeStore(), process=False)
    fams = scrape(m)
    assert value(fams, "axonsim_store_queue_depth") == 7
    assert value(fams, "axonsim_store_written", "axonsim_store_written_total") == 1234
    assert value(fams, "axonsim_store_dropped", "axonsim_store_dropped_total") == 5
    assert value(fams, "axonsim_store_db_up") == 0

    bare = Metrics(store=object(), process=False)  # a store without the counters: zeros, no db_up
    fams = scrape(bare)
    assert value(fams, "axonsim_store_queue_depth") == 0
    assert "axonsim_store_db_up" not in fams

    assert not any(n.startswith("axonsim_store") for n in scrape(Metrics(process=False)))


async def test_store_gauges_with_a_real_store(tmp_path: Path) -> None:
    store = Store(StoreSettings(url=f"sqlite+aiosqlite:///{tmp_path / 'm.db'}", flush_interval=0.01))
    m = Metrics(store=lambda: store, process=False)
    await store.start()
    try:
        for _ in range(3):
            assert store.submit(RequestRecord(project="p", model="m1", client_format="openai_chat", status=200,
                                              outcome="completed", attempts=[AttemptRow(1, "alpha", "m1", 200)]))
        assert await store.flush(30)
        fams = scrape(m)
        assert value(fams, "axonsim_store_written", "axonsim_store_written_total") == 3
        assert value(fams, "axonsim_store_queue_depth") == 0
        assert value(fams, "axonsim_store_dropped", "axonsim_store_dropped_total") == 0
        assert value(fams, "axonsim_store_db_up") == 1
    finally:
        await store.close()


def test_registries_are_separate() -> None:
    a = Metrics(process=False)
    b = Metrics(process=False)
    a.observe_request("openai_chat", "m1", 200, 0.1, 0.1, 0.001, [OK])
    assert samples(scrape(a), "axonsim_requests", "axonsim_requests_total")
    assert samples(scrape(b), "axonsim_requests", "axonsim_requests_total") == {}
    global_names = {f.name for f in prometheus_client.REGISTRY.collect()}
    assert not any(n.startswith("axonsim") for n in global_names)


def test_a_failing_reading_costs_only_its_own_families(caplog: pytest.LogCaptureFixture) -> None:
    def broken() -> Router:
        raise RuntimeError("no router")

    m = Metrics(broken, process=False)
    m.observe_request("openai_chat", None, 401, 0.001, None, 0.0001, [])
    fams = scrape(m)
    assert value(fams, "axonsim_requests", "axonsim_requests_total", client_format="openai_chat", model="none",
                 status="401") == 1
    assert "axonsim_channel_available" not in fams
    assert "collecting _channels failed" in caplog.text


def test_process_metrics_are_there_by_default() -> None:
    fams = scrape(Metrics())
    assert value(fams, "process_resident_memory_bytes") > 0


def test_metrics_route_serves_both_formats() -> None:
    router = Router(config())
    m = Metrics(router, process=False)
    m.observe_request("openai_chat", "m1", 200, 0.1, 0.05, 0.0002, [OK])
    app = FastAPI()
    app.include_router(metrics_router(m))
    with TestClient(app) as client:
        r = client.get("/metrics")
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
        fams = {f.name: f for f in text_string_to_metric_families(r.text)}
        assert value(fams, "axonsim_requests", "axonsim_requests_total", client_format="openai_chat", model="m1",
                     status="200") == 1
        om = client.get("/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"})
        assert om.headers["content-type"].startswith("application/openmetrics-text")
        assert om.text.rstrip().endswith("# EOF")
        assert "/metrics" in client.get("/openapi.json").json()["paths"]
        # an OpenMetrics version prometheus-client cannot read: the text format, not a 500
        for accept in ("application/openmetrics-text; version=abc", "application/openmetrics-text; version=1.x"):
            bad = client.get("/metrics", headers={"Accept": accept})
            assert bad.status_code == 200 and bad.headers["content-type"].startswith("text/plain;")
            assert value({f.name: f for f in text_string_to_metric_families(bad.text)}, "axonsim_requests",
                         "axonsim_requests_total", client_format="openai_chat", model="m1", status="200") == 1


def test_no_secret_in_the_exposition() -> None:
    router = Router(config())
    m = Metrics(router)
    m.observe_request("openai_chat", "m2", 200, 0.1, 0.05, 0.0002, [{**OK, "channel": "gamma", "key": "g-one"}])
    text = m.render()[0].decode()
    assert "upstream-secret" not in text
    assert 'key="g-one"' in text  # keys by name


def test_histogram_sums_stay_finite() -> None:
    m = Metrics(process=False)
    m.observe_request("openai_chat", "m1", 200, 0.0, 0.0, 0.0, [])
    fams = scrape(m)
    assert math.isfinite(value(fams, "axonsim_gateway_overhead_seconds", "axonsim_gateway_overhead_seconds_sum"))
    assert value(fams, "axonsim_gateway_overhead_seconds", "axonsim_gateway_overhead_seconds_bucket", le="5e-05") == 1


# Usage as the proxy reports it (project, model, Usage.as_dict() or None, cost or None).
USAGE = [
    ("acme", "m1", {"prompt_tokens": 120, "completion_tokens": 30, "total_tokens": 150, "cached_tokens": 100,
                    "cache_write_tokens": 0, "reasoning_tokens": 10, "tool_prompt_tokens": 0}, 0.0021),
    ("acme", "m1", {"prompt_tokens": 7, "completion_tokens": 5, "total_tokens": 12, "cached_tokens": 0,
                    "cache_write_tokens": 4, "reasoning_tokens": 0, "tool_prompt_tokens": 0}, None),  # unpriced
    ("beta-team", "m2", {"prompt_tokens": 1, "completion_tokens": 2}, 0.5),
    ("acme", None, None, None),  # a failed request: nothing to add
    (None, None, None, 0.0),  # a request refused before it was priced: nothing either
    (None, "made-up", {"prompt_tokens": 3, "completion_tokens": 0}, 0.25),
]


def test_tokens_and_cost_by_project_model_and_type() -> None:
    m = Metrics(Router(config()), process=False)
    for u in USAGE:
        m.observe_usage(*u)
    fams = scrape(m)
    tokens = samples(fams, "axonsim_tokens", "axonsim_tokens_total")
    want = {("acme", "m1"): (127, 35, 100, 4, 10), ("beta-team", "m2"): (1, 2, 0, 0, 0),
            ("none", "other"): (3, 0, 0, 0, 0)}  # no key found: project "none"; an unserved model: "other"
    assert tokens == {(("model", model), ("project", project), ("type", kind)): float(n)
                      for (project, model), counts in want.items()
                      for kind, n in zip(("prompt", "completion", "cached", "cache_write", "reasoning"), counts,
                                         strict=True)}
    assert samples(fams, "axonsim_cost_usd", "axonsim_cost_usd_total") == pytest.approx({
        (("model", "m1"), ("project", "acme")): 0.0021, (("model", "m2"), ("project", "beta-team")): 0.5,
        (("model", "other"), ("project", "none")): 0.25})


async def test_tokens_and_cost_of_several_workers_add_up(tmp_path: Path) -> None:
    from server.worker_metrics import WorkerFigures

    one = Metrics(process=False)
    for u in USAGE:
        one.observe_usage(*u)
    workers = [Metrics(process=False) for _ in range(2)]
    figures = [WorkerFigures(tmp_path, m, pid=pid) for m, pid in zip(workers, [os.getpid(), os.getppid()],
                                                                        strict=True)]
    for i, u in enumerate(USAGE):
        workers[i % 2].observe_usage(*u)
    for f in figures:
        f.publish()
    # the last file of a worker from before these counters existed: read without them
    (tmp_path / "1.json").write_text('{"requests": [], "latency": [], "ttft": [], "overhead": [[], 0.0], '
                                     '"attempts": [], "inflight": 0, "store": null, "shared": null}')
    want = {k: v for k, v in _all_samples(one).items() if k[0] in ("axonsim_tokens_total", "axonsim_cost_usd_total")}
    assert len(want) == 3 * 5 + 3
    for m in workers:
        got = {k: v for k, v in _all_samples(m).items() if k[0] in ("axonsim_tokens_total", "axonsim_cost_usd_total")}
        assert got == pytest.approx(want, rel=1e-12)


async def test_bogus_usage_from_an_upstream_keeps_the_counters_sane(tmp_path: Path,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    """An upstream's usage is its own say: a negative count made the counter go down (a reset, to
    Prometheus), and one of 1e20 took every request series off the scrape (a float overflow) and
    stopped the worker's figures file (orjson writes 64-bit integers at most)."""
    from server.metrics import MAX_TOKENS
    from server.worker_metrics import WorkerFigures

    m = Metrics(process=False)
    m.observe_request("openai_chat", "m1", 200, 0.3, 0.05, 0.0002, [OK])
    m.observe_usage("acme", "m1", {"prompt_tokens": 100, "completion_tokens": 5}, 0.001)
    m.observe_usage("acme", "m1", {"prompt_tokens": -90, "completion_tokens": 10**400}, -1.0)
    m.observe_usage("acme", "m1", {"prompt_tokens": 1}, math.inf)
    m.observe_usage("acme", "m1", {"prompt_tokens": 1}, math.nan)
    fams = scrape(m)
    assert value(fams, "axonsim_tokens", "axonsim_tokens_total", project="acme", model="m1", type="prompt") == 102
    assert value(fams, "axonsim_tokens", "axonsim_tokens_total", project="acme", model="m1",
                 type="completion") == 5 + MAX_TOKENS
    assert value(fams, "axonsim_cost_usd", "axonsim_cost_usd_total", project="acme", model="m1") == 0.001
    assert value(fams, "axonsim_requests", "axonsim_requests_total", client_format="openai_chat", model="m1",
                 status="200") == 1
    WorkerFigures(tmp_path, m, pid=os.getpid()).publish()  # writes, as with any other figures
    assert orjson.loads((tmp_path / f"{os.getpid()}.json").read_bytes())["tokens"]

    # and should the usage figures ever fail to read, they cost only their own families
    m._tokens[("acme", "m2")] = [object()] * 5  # type: ignore[list-item]
    with caplog.at_level("ERROR", logger="axonsim.server.metrics"):
        fams = scrape(m)
    assert "axonsim_tokens" not in fams and "axonsim_requests" in fams and "axonsim_request_duration_seconds" in fams
