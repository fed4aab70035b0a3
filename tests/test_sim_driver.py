"""The SimPy driver: effects, channel timelines, failover, streams, hedging, determinism, results."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from pandas.testing import assert_frame_equal

from axonsim.config import ConfigError, load_config, parse_config
from axonsim.sim import Arrivals, SimResult, Simulation, simulate
from axonsim.sim.workload import poisson

ROOT = Path(__file__).resolve().parent.parent
BASIC = ROOT / "examples" / "basic.yaml"

NO_HEALTH = {"breaker": {"enabled": False}, "key_breaker": {"enabled": False}, "auto_disable": []}


def config(channels: list[dict], routing: dict | None = None, workload: dict | None = None, **top):
    routing = {"strategy": "round_robin", **(routing or {})}
    workload = workload or {"arrival": {"process": "poisson", "rate": 10}, "requests": 200}
    return parse_config({"channels": channels, "routing": routing, "workload": workload, **top})


def chan(name: str, **behavior) -> dict:
    return {"name": name, "models": ["m"], "api_keys": [f"sk-{name}"], "behavior": behavior}


def run_at(cfg, times: list[float], stream: bool | list[bool] = False, seed: int = 0) -> tuple[SimResult, Simulation]:
    """Requests arriving at the given instants (a hand-made workload, replayed by the same driver)."""
    flags = stream if isinstance(stream, list) else [stream] * len(times)
    sim = Simulation(cfg, seed, Arrivals(list(times), [0] * len(times), flags, ["m"]))
    return sim.run(), sim


def assert_all_released(sim: Simulation) -> None:
    for ch in sim.channels:
        assert ch.busy == 0 and not ch.waiting, ch.name
    for st in sim.router.states:
        assert st.inflight == 0, st.name


# -- channel timelines ------------------------------------------------------------------------------


def test_queue_waits_fifo_and_service_starts_at_the_slot_grant():
    cfg = config([chan("a", ttft=1.0, output_tokens=0, max_concurrency=1, when_full="queue")])
    res, sim = run_at(cfg, [0.0, 0.1, 0.2])
    att = res.attempts
    assert list(att.queue_wait.round(9)) == [0.0, 0.9, 1.8]
    assert list(att.end.round(9)) == [1.0, 2.0, 3.0]
    req = res.requests
    assert req.ok.all() and list(req.latency.round(9)) == [1.0, 1.9, 2.8]
    assert_all_released(sim)


def test_full_rejecting_channel_answers_503_at_once():
    cfg = config([chan("a", ttft=1.0, output_tokens=0, max_concurrency=1, when_full="reject")],
                 {"retry": {"max_attempts": 1}, "health": NO_HEALTH})
    res, sim = run_at(cfg, [0.0, 0.1])
    att = res.attempts.set_index("request")
    assert att.loc[1, "status"] == 503 and att.loc[1, "fault"] == "full" and att.loc[1, "error"] == "overloaded"
    assert att.loc[1, "end"] == att.loc[1, "start"] == pytest.approx(0.1)
    req = res.requests.set_index("id")
    assert req.loc[0, "ok"] and not req.loc[1, "ok"] and req.loc[1, "status"] == 503
    assert_all_released(sim)


def test_first_token_timeout_counts_from_the_call_and_frees_the_slot():
    cfg = config([chan("a", ttft=5.0, output_tokens=0, max_concurrency=1, when_full="queue")],
                 {"retry": {"max_attempts": 1}}, gateway={"timeouts": {"first_token": 2.0}})
    res, sim = run_at(cfg, [0.0])
    att = res.attempts.iloc[0]
    assert att.end == pytest.approx(2.0) and att.status == 0 and att.error == "timeout" and att.fault == "timeout"
    req = res.requests.iloc[0]
    assert not req.ok and req.status == 504 and req.error == "timeout"
    assert_all_released(sim)


def test_a_queued_attempt_leaves_the_queue_at_its_deadline():
    # The first request holds the only slot for 10.9 s; the second waits, then times out at 0.1 + 1.
    b = {"ttft": 0.9, "output_tokens": 1000, "tokens_per_second": 100, "max_concurrency": 1, "when_full": "queue"}
    cfg = config([chan("a", **b)], {"retry": {"max_attempts": 1}}, gateway={"timeouts": {"first_token": 1.0}})
    res, sim = run_at(cfg, [0.0, 0.1])
    att = res.attempts.set_index("request")
    assert att.loc[0, "status"] == 200 and att.loc[0, "end"] == pytest.approx(10.9)
    assert att.loc[1, "fault"] == "queue_timeout" and att.loc[1, "error"] == "timeout"
    assert att.loc[1, "end"] == pytest.approx(1.1) and att.loc[1, "queue_wait"] == pytest.approx(1.0)
    assert_all_released(sim)


def test_timeout_fault_hangs_until_the_gateway_gives_up():
    cfg = config([chan("a", ttft=0.1, output_tokens=0, faults={"timeout": 1.0})],
                 {"retry": {"max_attempts": 1}}, gateway={"timeouts": {"first_token": 3.0}})
    res, _ = run_at(cfg, [1.0])
    att = res.attempts.iloc[0]
    assert att.end == pytest.approx(4.0) and att.error == "timeout"


@pytest.mark.parametrize("stream", [False, True])
def test_the_requests_deadline_cuts_a_running_attempt_as_the_proxy_does(stream):
    # A 60 s answer, gateway timeouts far away, routing.retry.deadline 3 s: the attempt ends at 3 s.
    b = {"ttft": 1.0 if stream else 30.0, "output_tokens": 3000, "tokens_per_second": 100}
    cfg = config([chan("a", **b)], {"retry": {"max_attempts": 5, "deadline": 3.0}, "health": NO_HEALTH},
                 gateway={"timeouts": {"first_token": 50.0, "total": 100.0}})
    res, sim = run_at(cfg, [0.0], stream=stream)
    att = res.attempts.iloc[0]
    assert att.end == pytest.approx(3.0) and att.error == "timeout"
    req = res.requests.iloc[0]
    assert not req.ok and req.end == pytest.approx(3.0)
    assert_all_released(sim)


def test_a_queued_attempt_leaves_the_queue_at_the_requests_deadline():
    # Retries queue behind attempts of later requests, so a queued attempt's request deadline can
    # pass before a slot frees: it must leave the queue then, not run from a grant after its
    # deadline (which scheduled its timeout in the past: the clock ran backwards).
    cfg = config([{**chan("only", ttft=0.3, tokens_per_second=50, output_tokens=200, max_concurrency=2,
                          when_full="queue", error_rate=0.4)}],
                 {"retry": {"max_attempts": 3, "max_same_channel": 2, "deadline": 2.0}, "health": NO_HEALTH},
                 workload={"arrival": {"process": "poisson", "rate": 3}, "requests": 300, "stream": 0.5},
                 gateway={"timeouts": {"first_token": 30, "total": 120}})
    from axonsim.sim.driver import build_arrivals

    sim = Simulation(cfg, 1, build_arrivals(cfg, 1, None))
    res = sim.run()
    att, req = res.attempts, res.requests.set_index("id")
    waited = att.queue_wait.fillna(0.0)
    assert (att.start + waited <= att.end + 1e-9).all()
    assert (att.end.to_numpy() <= req.loc[att.request, "arrival"].to_numpy() + 2.0 + 1e-9).all()
    assert (att.fault == "queue_timeout").any()  # the case happens in this run
    assert_all_released(sim)


def test_a_queued_attempt_leaves_at_its_deadline_exactly():
    # The arrivals where now + (deadline − now) rounds below the deadline: the check must not
    # find the attempt "not yet due" and leave it queued until another request's check.
    cfg = config([{"name": "bad", "models": ["m"], "priority": 0, "api_keys": ["sk-b"],
                   "behavior": {"ttft": 0.1, "output_tokens": 0, "error_rate": 1.0}},
                  {"name": "slow", "models": ["m"], "priority": 1, "api_keys": ["sk-s"],
                   "behavior": {"ttft": 10.0, "output_tokens": 0, "max_concurrency": 1, "when_full": "queue"}}],
                 {"retry": {"max_attempts": 2, "max_same_channel": 0, "deadline": 3.0}, "health": NO_HEALTH},
                 gateway={"timeouts": {"first_token": 30, "total": 120}})
    res, sim = run_at(cfg, [0.83, 0.945, 0.953])
    req = res.requests
    assert (req.end <= req.arrival + 3.0 + 1e-9).all(), req[["arrival", "end"]]
    assert_all_released(sim)


def probed_pair(probe: dict | None, requests: int, keys: list[str], **behavior: Any) -> Any:
    """Channel A (with `probe`, its behaviour plus `behavior`) and a healthy B, round robin, 2 req/s."""
    fast = {"ttft": 0.05, "output_tokens": 5, "tokens_per_second": 1000}
    a: dict[str, Any] = {"name": "A", "models": ["m"], "api_keys": keys, "behavior": {**fast, **behavior}}
    if probe is not None:
        a["probe"] = probe
    b = {"name": "B", "models": ["m"], "api_keys": ["sk-b"], "behavior": fast}
    return parse_config({"channels": [a, b], "routing": {"strategy": "round_robin"},
                         "workload": {"arrival": {"process": "gamma", "rate": 2, "cv": 0.01}, "requests": requests}})


def test_probes_bring_an_auto_disabled_channel_back_as_they_do_live():
    # A's incident (20–40 s of 503s) auto-disables it (503×3, 300 s); its probe every 5 s lifts
    # that once A answers again, as server/probes.py does live. Without probes it stays out.
    def cfg(probe: dict | None) -> Any:
        return probed_pair(probe, 180, ["sk-a"], incidents=[{"start": 20, "end": 40, "status": 503}])

    def served_by_a_after(res: SimResult, t: float) -> int:
        att = res.attempts
        return int(((att.channel == "A") & (att.start > t) & (att.status == 200)).sum())

    probed = simulate(cfg({"interval": 5}), seed=1)
    assert served_by_a_after(probed, 50.0) > 10
    assert served_by_a_after(simulate(cfg(None), seed=1), 50.0) == 0
    # determinism: the same seed, the same run
    assert_frame_equal(probed.attempts, simulate(cfg({"interval": 5}), seed=1).attempts)


def test_a_probe_meets_the_providers_quota_like_traffic_and_a_cut_stream_is_a_failure():
    # The quota is the provider's: a probe must not find a fresh one and lift the 429's disable,
    # so probes change nothing for a channel whose quota is spent.
    def cfg(probe: dict | None, **behavior: Any) -> Any:
        return probed_pair(probe, 800, ["k1", "k2"], **behavior)

    def limited(res: SimResult) -> int:
        return int(((res.attempts.channel == "A") & (res.attempts.status == 429)).sum())

    quota = {"quota": {"requests": 40, "period": 3600}}
    assert limited(simulate(cfg({"interval": 10}, **quota), seed=1)) <= limited(simulate(cfg(None, **quota), seed=1)) + 2
    # a probe whose stream is cut fails as the channel's failure (it counted as the client's fault)
    from axonsim.sim.driver import build_arrivals

    standby = cfg({"interval": 5}, faults={"stream_cut": 1.0})
    standby.channels[0].weight = 0  # no traffic: only its probes reach A
    sim = Simulation(standby, 1, build_arrivals(standby, 1))
    res = sim.run()
    assert (res.attempts.channel != "A").all() and sim.router.by_name["A"].failures > 0


def test_the_heapq_driver_refuses_probes():
    from axonsim.sim.driver import build_arrivals
    from axonsim.sim.equivalence import run_heapq

    cfg = parse_config({"channels": [{"name": "a", "models": ["m"], "probe": {"interval": 5}}],
                        "workload": {"arrival": {"process": "poisson", "rate": 1}, "requests": 10}})
    with pytest.raises(ValueError, match="probes"):
        run_heapq(cfg, 1, build_arrivals(cfg, 1))


def test_upstream_errors_come_at_the_first_token_time():
    cfg = config([chan("a", ttft=0.5, output_tokens=10, faults={"rate_limited": 1.0, "retry_after": 7.0})],
                 {"retry": {"max_attempts": 1}})
    res, _ = run_at(cfg, [0.0])
    att = res.attempts.iloc[0]
    assert att.status == 429 and att.error == "rate_limited" and att.end == pytest.approx(0.5)
    assert res.requests.iloc[0].status == 429
    # the channel cools down for Retry-After: reported through the state API
    # (ChannelState.failed) exactly as the live driver reports it


# -- streams ----------------------------------------------------------------------------------------


def test_stream_commits_at_the_first_token_and_finishes_in_the_driver():
    cfg = config([chan("a", ttft=0.5, output_tokens=100, tokens_per_second=50)])
    res, sim = run_at(cfg, [0.0, 0.0], stream=[True, False])
    req = res.requests
    s, ns = req.iloc[0], req.iloc[1]
    assert s.ok and s.ttft == pytest.approx(0.5) and s.latency == pytest.approx(2.5) and s.output_tokens == 100
    # a non-stream client sees its first byte with the whole answer
    assert ns.ok and ns.ttft == pytest.approx(2.5) and ns.latency == pytest.approx(2.5)
    st = sim.router.states[0]
    assert st.ewma_ttft is not None and st.ewma_latency is not None
    assert_all_released(sim)


def test_a_cut_stream_fails_after_its_commit_without_failover():
    cfg = config([chan("a", ttft=0.5, output_tokens=100, tokens_per_second=50, faults={"stream_cut": 1.0}),
                  chan("b", ttft=0.5, output_tokens=100, tokens_per_second=50)])
    res, sim = run_at(cfg, [0.0, 5.0], stream=True)
    req = res.requests.set_index("id")
    att = res.attempts.set_index("request")
    # round robin: request 0 goes to the cutting channel; its bytes belonged to the client already
    assert not req.loc[0, "ok"] and req.loc[0, "error"] == "stream_cut" and req.loc[0, "status"] == 200
    assert req.loc[0, "attempts"] == 1 and req.loc[0, "channel"] == "a"
    assert req.loc[0, "output_tokens"] == 50 and req.loc[0, "end"] == pytest.approx(1.5)
    assert att.loc[0, "next"] == "done" and att.loc[0, "error"] == "stream_cut"
    assert req.loc[1, "ok"] and req.loc[1, "channel"] == "b"
    assert sim.router.states[0].failures == 1
    assert_all_released(sim)


def test_a_cut_non_stream_body_is_a_connection_failure_that_fails_over():
    cfg = config([chan("a", ttft=0.5, output_tokens=100, tokens_per_second=50, faults={"stream_cut": 1.0}),
                  chan("b", ttft=0.5, output_tokens=100, tokens_per_second=50)],
                 {"retry": {"max_same_channel": 0}})
    res, _ = run_at(cfg, [0.0])
    att = res.attempts
    assert list(att.channel) == ["a", "b"]
    # the body breaks off where the plan cuts it: half the output (cut_after 0.5) after the first token
    assert att.iloc[0].error == "connection" and att.iloc[0].end == pytest.approx(1.5)
    assert res.requests.iloc[0].ok


# -- routing through the core -----------------------------------------------------------------------


def test_a_failing_channels_requests_fail_over_and_succeed_elsewhere():
    cfg = config([chan("bad", ttft=0.2, output_tokens=20, error_rate=1.0),
                  chan("good", ttft=0.2, output_tokens=20)],
                 workload={"arrival": {"process": "poisson", "rate": 5}, "requests": 500, "stream": 0.5})
    res = simulate(cfg, seed=3)
    req, att = res.requests, res.attempts
    assert req.ok.all()
    assert (req.channel == "good").all()
    bad = att[att.channel == "bad"]
    assert len(bad) > 0 and bad.status.eq(500).all() and bad.error.eq("server_error").all()
    assert set(bad.next) <= {"retry", "failover"}
    # every request that tried the bad channel ended on the good one after it
    assert (att.groupby("request").channel.last() == "good").all()
    s = res.summary()
    assert s["success_rate"] == 1.0 and s["share"] == {"bad": 0.0, "good": 1.0}
    assert s["attempts_per_request"] > 1.0 and s["upstream_error_rate"] > 0


def test_every_attempt_is_paired_with_the_cores_record():
    res = simulate(load_config(BASIC), seed=5, requests=3000)
    req, att = res.requests, res.attempts
    assert att.groupby("request").size().reindex(req.id, fill_value=0).tolist() == req.attempts.tolist()
    assert (att.groupby("request").attempt.apply(lambda s: list(s) == list(range(1, len(s) + 1)))).all()
    last = att.groupby("request").last()
    assert (last.channel.astype(str) == req.set_index("id").channel.astype(str).loc[last.index]).all()
    assert (att.end >= att.start).all() and (att.queue_wait >= 0).all()


def test_hedging_launches_a_second_attempt_and_cancels_the_loser():
    cfg = config([{**chan("slow", ttft=2.0, output_tokens=0), "weight": 100},
                  {**chan("fast", ttft=0.1, output_tokens=0), "weight": 1}],
                 {"strategy": "weighted", "hedge": {"enabled": True, "delay": 0.5}})
    res, sim = run_at(cfg, [0.0])
    req = res.requests.iloc[0]
    assert req.ok and req.channel == "fast" and req.latency == pytest.approx(0.6)
    att = res.attempts
    assert list(att.channel) == ["slow", "fast"]
    assert list(att.next) == ["hedge_lost", "done"]
    assert att.iloc[0].fault == "cancelled" and att.iloc[0].end == pytest.approx(0.6)
    assert_all_released(sim)


def test_hedged_streams_race_to_their_first_token():
    cfg = config([{**chan("slow", ttft=2.0, output_tokens=10, tokens_per_second=10), "weight": 100},
                  {**chan("fast", ttft=0.1, output_tokens=10, tokens_per_second=10), "weight": 1}],
                 {"strategy": "weighted", "hedge": {"enabled": True, "delay": 0.5}})
    res, sim = run_at(cfg, [0.0, 10.0], stream=True)
    req = res.requests
    assert req.ok.all() and list(req.channel) == ["fast", "fast"]
    assert req.iloc[0].ttft == pytest.approx(0.6) and req.iloc[0].latency == pytest.approx(1.6)
    assert_all_released(sim)


# -- determinism ------------------------------------------------------------------------------------


def test_same_seed_gives_identical_tables_and_different_seeds_differ():
    cfg = load_config(BASIC)
    a = simulate(cfg, seed=42, requests=3000)
    b = simulate(cfg, seed=42, requests=3000)
    assert_frame_equal(a.requests, b.requests)
    assert_frame_equal(a.attempts, b.attempts)
    assert a.summary() == b.summary()
    c = simulate(cfg, seed=43, requests=3000)
    assert not a.requests.arrival.equals(c.requests.arrival)
    assert not a.requests.latency.equals(c.requests.latency)


def test_the_seed_defaults_to_the_configs_then_zero():
    cfg = load_config(BASIC)
    assert_frame_equal(simulate(cfg, requests=500).requests, simulate(cfg, seed=0, requests=500).requests)
    seeded = cfg.model_copy(update={"seed": 9})
    assert_frame_equal(simulate(seeded, requests=500).requests, simulate(cfg, seed=9, requests=500).requests)


def _digest(res: SimResult) -> str:
    h = hashlib.sha256()
    for df in (res.requests, res.attempts):
        h.update(df.to_csv(index=False, float_format="%.17g").encode())
    return h.hexdigest()


DIGEST_SCRIPT = """
import hashlib, sys
from axonsim.config import load_config
from axonsim.sim import simulate
res = simulate(load_config(sys.argv[1]), seed=17, requests=2000)
h = hashlib.sha256()
for df in (res.requests, res.attempts):
    h.update(df.to_csv(index=False, float_format="%.17g").encode())
print(h.hexdigest())
"""


def test_same_seed_is_bit_identical_across_processes():
    here = _digest(simulate(load_config(BASIC), seed=17, requests=2000))
    # another interpreter, with another string-hash salt than this one's
    out = subprocess.run([sys.executable, "-c", DIGEST_SCRIPT, str(BASIC)], capture_output=True, text=True,
                         check=True, env={"PYTHONHASHSEED": "12345", "PATH": ""}, cwd=ROOT)
    assert out.stdout.strip() == here


def test_prefixes_agree_whatever_the_run_length():
    cfg = load_config(BASIC)
    short, long = poisson(cfg, 4, 100), poisson(cfg, 4, 1000)
    assert short.times == long.times[:100] and short.model == long.model[:100] and short.stream == long.stream[:100]


# -- workload and results ---------------------------------------------------------------------------


def test_workload_model_and_stream_shares():
    cfg = parse_config({
        "channels": [{"name": "a", "models": ["x", "y"]}],
        "workload": {"arrival": {"process": "poisson", "rate": 100}, "requests": 20000,
                     "models": {"x": 3, "y": 1}, "stream": 0.25},
    })
    arr = poisson(cfg, 1)
    assert arr.models == ["x", "y"]
    assert sum(1 for m in arr.model if m == 0) / len(arr) == pytest.approx(0.75, abs=0.015)
    assert sum(arr.stream) / len(arr) == pytest.approx(0.25, abs=0.015)
    assert arr.times[-1] / len(arr) == pytest.approx(0.01, rel=0.03)


def test_default_model_is_the_first_channels_first_model():
    cfg = config([{"name": "a", "models": ["first", "second"]}])
    assert simulate(cfg, requests=10).requests.model.astype(str).eq("first").all()


def test_a_config_without_workload_is_refused_clearly():
    cfg = parse_config({"channels": [{"name": "a", "models": ["m"]}]})
    with pytest.raises(ConfigError, match="workload"):
        simulate(cfg)


def test_negative_model_shares_are_refused():
    with pytest.raises(ConfigError, match=r"workload\.models"):
        config([chan("a")], workload={"arrival": {"process": "poisson", "rate": 1}, "requests": 5,
                                      "models": {"m": -1}})


def test_tables_and_summary_have_the_documented_shape(tmp_path):
    res = simulate(load_config(BASIC), seed=1, requests=2000)
    req, att = res.requests, res.attempts
    assert list(req.columns) == ["id", "arrival", "project", "model", "stream", "ok", "status", "error", "attempts",
                                 "channel", "ttft", "latency", "end", "input_tokens", "output_tokens", "cost"]
    assert list(att.columns) == ["request", "attempt", "channel", "key", "start", "end", "queue_wait", "status",
                                 "error", "fault", "next", "retry_after"]
    assert len(req) == 2000 and req.id.tolist() == list(range(2000))
    assert req.arrival.is_monotonic_increasing
    assert (req.latency == req.end - req.arrival).all()
    assert att.request.is_monotonic_increasing
    assert set(att.key) == {"fast#0", "fast#1", "standard#0", "flaky#0"}  # key names, never the secrets
    s = res.summary()
    for k in ("requests", "success_rate", "error_rate", "latency_p50", "latency_p95", "latency_p99", "ttft_p50",
              "ttft_p95", "ttft_p99", "attempts_per_request", "share", "upstream_error_rate", "upstream_429_rate",
              "client_429_rate"):
        assert k in s
    assert s["requests"] == 2000 and 0.95 < s["success_rate"] <= 1.0
    assert s["latency_p50"] <= s["latency_p95"] <= s["latency_p99"]
    assert sum(s["share"].values()) == pytest.approx(1.0) and all(v > 0 for v in s["share"].values())
    assert s["attempts_per_request"] == pytest.approx(len(att) / len(req))
    for fmt in ("csv", "parquet"):
        paths = res.to_files(tmp_path / fmt, format=fmt)
        assert [p.name for p in paths] == [f"requests.{fmt}", f"attempts.{fmt}", f"timeseries.{fmt}", "summary.json"]
        back = pd.read_csv(paths[0]) if fmt == "csv" else pd.read_parquet(paths[0])
        assert len(back) == 2000
    with pytest.raises(ValueError):
        res.to_files(tmp_path, format="xlsx")


def test_a_scheduled_incident_moves_traffic_away_and_back():
    res = simulate(load_config(ROOT / "examples" / "incident.yaml"), seed=2, requests=12000)
    att = res.attempts
    fast = att[att.channel == "fast"]
    during = fast[(fast.start >= 300) & (fast.start < 600)]
    assert (during.status == 503).all()  # the incident's answer, every time it is tried
    assert len(during) < 20  # and it is soon taken out of rotation
    after = fast[fast.start >= 650]
    assert len(after) > 100 and (after.status == 200).mean() > 0.99  # back after the incident
    assert res.summary()["success_rate"] > 0.99


def test_a_channels_context_window_keeps_requests_too_large_away_as_in_the_proxy():
    # The proxy checks what a request needs against each channel's capabilities before routing; a
    # simulated request needs its admission estimate (input + output) of context.
    # The proxy reckons a request's context as its prompt plus its max_tokens (if it sets one): not
    # the output it will get.
    small = {**chan("small"), "capabilities": {"context_window": 500}}
    big = {**chan("big"), "priority": 1}
    wl = {"arrival": {"process": "poisson", "rate": 10}, "requests": 60,
          "input_tokens": {"dist": "constant", "value": 400}, "output_tokens": {"dist": "constant", "value": 200},
          "max_tokens": 200}
    res = simulate(config([small, big], workload=wl), seed=3)
    assert res.requests.ok.all() and set(res.requests.channel) == {"big"}
    fits = {**wl, "max_tokens": 100}  # 400 + 100 fits in 500
    res = simulate(config([small, big], workload=fits), seed=3)
    assert set(res.requests.channel) == {"small"}
    no_max = {k: v for k, v in wl.items() if k != "max_tokens"}  # 400 of prompt, and no max_tokens: fits
    res = simulate(config([small, big], workload=no_max), seed=3)
    assert set(res.requests.channel) == {"small"}
    wl = {**wl, "input_tokens": {"dist": "constant", "value": 600}}
    # only the big one fits, and it is down: no channel can carry the request, as the proxy answers
    down = {**big, "behavior": {"error_rate": 1.0}}
    res = simulate(config([small, down], routing={"health": NO_HEALTH}, workload=wl), seed=3)
    assert not res.requests.ok.any() and (res.attempts.channel == "big").all()


def test_a_due_probe_names_its_key_and_successive_probes_take_each_key_in_turn():
    # probe_due chooses the key it checks, once: the prober (live and simulated) sends on it rather
    # than choosing again, which moved the rotation two steps a probe and skipped every other key.
    from axonsim.execution import Router

    cfg = parse_config({"channels": [{"name": "a", "models": ["m"], "api_keys": ["k0", "k1", "k2", "k3"]}]})
    st = Router(cfg).by_name["a"]
    keys = [st.probe_due(float(t))[1] for t in range(8)]
    assert sorted(keys) == [0, 0, 1, 1, 2, 2, 3, 3]
    keyless = Router(parse_config({"channels": [{"name": "a", "models": ["m"]}]})).by_name["a"]
    assert keyless.probe_due(0.0) == (True, None)


def test_probes_leave_a_channels_limits_and_quota_to_its_clients():
    """A probe counts at the channel's local limits and quota as real traffic does; it goes only with
    room to spare (a free slot, half of each rate limit and of the quota), so probes neither exceed
    a concurrency limit nor use up what clients are allowed."""
    from axonsim.execution import Router

    def state(**ch: Any) -> Any:
        cfg = parse_config({"channels": [{"name": "a", "models": ["m"], "api_keys": ["sk-a"], **ch}]})
        return Router(cfg).by_name["a"]

    st = state()
    assert st.probe_due(0.0)[0]
    assert not state(limits={"max_concurrency": 1}).probe_due(0.0)[0]  # its one slot is the clients'
    st = state(limits={"max_concurrency": 2})
    assert st.probe_due(0.0)[0]
    st.started(0.0, 0, "m")
    assert not st.probe_due(0.1)[0]  # the probe would take the clients' last slot
    st.succeeded(0.2, 0.2, 0, "m")
    assert st.probe_due(0.3)[0]
    st = state(limits={"rpm": 4})
    st.started(0.0, 0, "m")
    assert st.probe_due(0.1)[0]  # 1 + the probe: half of 4
    st.started(0.1, 0, "m")
    assert not st.probe_due(0.2)[0]
    assert st.probe_due(125.0)[0]  # the window moved on
    st = state(quota={"requests": 6, "period": 3600})
    for t in (0.0, 1.0):
        st.started(t, 0, "m")
    assert st.probe_due(2.0)[0]
    st.started(2.0, 0, "m")
    assert not st.probe_due(3.0)[0]
    assert st.probe_due(3601.0)[0]  # a new quota window
    # A channel that serves no client (automatically disabled) needs only one request's room: the
    # probe is what brings it back, even with a limit of 1 a minute or a quota half used.
    st = state(limits={"rpm": 1})
    assert not st.probe_due(0.0)[0]  # serving: its one request a minute is the clients'
    st.disabled_until = 10_000.0
    assert st.probe_due(0.0)[0]
    st.started(0.0, 0, "m")
    assert not st.probe_due(1.0)[0]  # no room at all
    st = state(quota={"requests": 10, "period": 3600})
    for t in range(6):
        st.started(float(t), 0, "m")
    st.disabled_until = 10_000.0
    assert st.probe_due(7.0)[0]

    # A key's own limits count as the channel's do, and a key cooling down after a 429 is not probed
    # (it comes back by itself); a key disabled for its credentials is, which is how it comes back.
    st = state(api_keys=[{"key": "sk-a", "limits": {"rpm": 2}}])
    assert st.probe_due(0.0)[0]
    st.started(0.0, 0, "m")
    assert not st.probe_due(0.1)[0]
    st = state(api_keys=["sk-a", "sk-b"])
    for k in st.keys:
        k.disabled_until = 30.0
    assert not st.probe_due(1.0)[0] and st.probe_due(31.0)[0]
    st.keys[0].disabled = True
    assert st.probe_due(31.0)[0]
    st.keys[1].disabled = True
    assert st.probe_due(31.0)[0]  # every key rejected: a probe tests one

    # In a run: channel A limited to 4 requests a minute and probed every second takes its share of
    # the traffic, not the probes (they would have filled its limit by themselves).
    cfg = probed_pair({"interval": 1}, 240, ["sk-a"])
    cfg.channels[0].limits.rpm = 4
    res = simulate(cfg, seed=2)
    served = int(((res.attempts.channel == "A") & (res.attempts.status == 200)).sum())
    assert served >= 2 * 2 and res.requests.ok.all()  # ~2 minutes of traffic: at least half its limit a minute
