"""Results: cost per request from the price table, per-channel time series on a fixed grid, decision traces, and that observing a run does not change it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from pandas.testing import assert_frame_equal

from axonsim.config import load_config, parse_config
from axonsim.pricing import cost_for
from axonsim.sim import simulate
from axonsim.sim.driver import Simulation, nice_step, route_state
from axonsim.sim.results import STATES
from axonsim.sim.workload import build_arrivals
from axonsim.unified import Usage

ROOT = Path(__file__).resolve().parent.parent
BASIC = ROOT / "examples" / "basic.yaml"
INCIDENT = ROOT / "examples" / "incident.yaml"


def priced():
    return parse_config({
        "prices": {"small": {"input": 0.15, "output": 0.60}, "big": {"input": 2.5, "output": 10.0}},
        "channels": [
            {"name": "a", "models": ["small", "big"], "behavior": {"ttft": 0.1, "error_rate": 0.2}},
            {"name": "b", "models": ["small", "big"], "price": {"input": 1.0, "output": 2.0},
             "behavior": {"ttft": 0.1}},
            {"name": "c", "models": ["other"], "model_mapping": {"small": "other"}, "behavior": {"ttft": 0.1}},
        ],
        "routing": {"strategy": "round_robin"},
        "workload": {"arrival": {"rate": 5}, "requests": 3000, "models": {"small": 3, "big": 1},
                     "input_tokens": {"dist": "lognormal", "median": 500, "sigma": 0.5}},
    })


def test_cost_is_the_served_tokens_at_the_channels_price():
    cfg = priced()
    res = simulate(cfg, seed=1)
    req = res.requests
    for _, r in req.sample(200, random_state=1).iterrows():
        if r.status != 200:
            assert r.cost == 0.0  # no answer, nothing billed
            continue
        ch = cfg.channels[["a", "b", "c"].index(r.channel)]
        usage = Usage(prompt_tokens=int(r.input_tokens), completion_tokens=int(r.output_tokens))
        if ch.price is not None:  # a channel's own price wins over the table
            want = cost_for(usage, {"p": ch.price}, "p")
        else:  # the table, by the upstream model first (c maps small -> other, which has no price)
            want = cost_for(usage, cfg.prices, ch.serves(str(r.model)), str(r.model))
        assert r.cost == pytest.approx(want, rel=1e-12)
    # c serves `small` as `other`, which has no price: billed at the requested model's (price_for's fallback)
    mapped = req[req.channel.eq("c") & req.status.eq(200)]
    assert len(mapped) > 100 and (mapped.cost > 0).all()
    s = res.summary()
    assert s["cost"] == pytest.approx(float(req.cost.sum(skipna=True)))
    assert s["cost_per_request"] == pytest.approx(s["cost"] / len(req))


def test_unpriced_models_have_an_unknown_cost_not_a_free_one():
    res = simulate(load_config(BASIC), seed=1, requests=200)
    assert res.requests.cost[res.requests.status.eq(200)].isna().all()
    assert res.summary()["cost"] is None


def test_an_unpriced_run_costs_unknown_whether_or_not_some_request_failed():
    # 0.0 would read as "free"; a run where one request failed used to say so.
    cfg = parse_config({"channels": [{"name": "a", "models": ["m"], "behavior": {
        "ttft": 0.1, "output_tokens": 5, "error_rate": 0.3}}], "routing": {"retry": {"max_attempts": 1}},
        "workload": {"arrival": {"process": "poisson", "rate": 10}, "requests": 200}})
    res = simulate(cfg, seed=1)
    assert (res.requests.status != 200).any() and res.requests.ok.any()
    assert res.summary()["cost"] is None


def test_summary_retry_amplification_and_rates():
    res = simulate(load_config(BASIC), seed=2, requests=4000)
    s = res.summary()
    assert s["retry_amplification"] == s["attempts_per_request"] == pytest.approx(len(res.attempts) / 4000)
    assert s["upstream_429_rate"] == pytest.approx(float(res.attempts.status.eq(429).mean()))
    assert s["success_rate"] + s["error_rate"] == pytest.approx(1.0)


# -- time series ------------------------------------------------------------------------------------


class Watching(Simulation):
    """Records, at every grid instant, what the channel objects themselves hold."""

    def __init__(self, *a, **k) -> None:
        super().__init__(*a, **k)
        self.seen: list[list[tuple[int, int, int, int]]] = []

    def _on_sample(self, tick) -> None:
        now = self.env._now
        self.seen.append([(st.inflight, ch.busy, len(ch.waiting), route_state(st, now))
                          for st, ch in zip(self.router.states, self.channels, strict=True)])
        super()._on_sample(tick)


def test_time_series_match_the_live_counters_at_every_grid_instant():
    cfg = load_config(INCIDENT)
    arr = build_arrivals(cfg, 3, 9000)
    sim = Watching(cfg, 3, arr, step=2.0)
    res = sim.run()
    ts = res.timeseries
    k = len(res.channels)
    assert len(ts) == len(sim.seen) * k
    assert list(ts.columns) == ["time", "channel", "inflight", "busy", "queue", "attempts", "rate_limited",
                                "errors", "state", "available", "up", "incident"]
    seen = np.asarray(sim.seen)  # (grid, channel, 4)
    for c, name in enumerate(res.channels):
        mine = ts[ts.channel == name]
        assert np.array_equal(mine.time.to_numpy(), np.arange(len(sim.seen)) * 2.0)
        assert np.array_equal(mine.inflight.to_numpy(), seen[:, c, 0]), name
        assert np.array_equal(mine.busy.to_numpy(), seen[:, c, 1]), name
        assert np.array_equal(mine.queue.to_numpy(), seen[:, c, 2]), name
        assert mine.state.astype(str).tolist() == [STATES[x] for x in seen[:, c, 3]]
    # counts per step add up to the attempts table
    att = res.attempts
    assert ts.attempts.sum() == len(att)
    assert ts.rate_limited.sum() == att.status.eq(429).sum()
    assert ts.errors.sum() == att.error.notna().sum()


def test_time_series_show_the_incident_and_the_gateways_reaction():
    res = simulate(load_config(INCIDENT), seed=2, requests=12000, step=5.0)
    ts = res.timeseries
    fast = ts[ts.channel == "fast"].set_index("time")
    assert not fast.up.loc[300:595].any() and fast.up.loc[:295].all() and fast.up.loc[600:].all()
    assert fast.incident.loc[700:795].sum() == 0
    std = ts[ts.channel == "standard"].set_index("time")
    assert std.incident.loc[700:795].all() and std.up.all()  # a brownout: up, but slow
    # the gateway takes `fast` out of rotation during its outage and back afterwards
    assert (~fast.available.loc[310:590]).mean() > 0.9
    assert fast.available.loc[700:].mean() > 0.95
    assert set(fast.state.loc[310:590].astype(str)) <= set(STATES) - {"available"} | {"available"}


def test_observing_a_run_does_not_change_it():
    """The sampler reads channel state without ticking breakers; the decision trace is only
    recorded: the tables are the same with and without them."""
    cfg = load_config(INCIDENT)
    plain = simulate(cfg, seed=7, requests=6000, step=None)
    watched = simulate(cfg, seed=7, requests=6000, step=0.5, explain=True)
    assert_frame_equal(plain.requests, watched.requests)
    assert_frame_equal(plain.attempts, watched.attempts.drop(columns=["decision"]))
    assert plain.timeseries.empty and not watched.timeseries.empty


def test_auto_step_gives_about_a_thousand_samples():
    assert nice_step(1000.0) == 1.0 and nice_step(1500.0) == 2.0 and nice_step(3.0) == 0.005
    res = simulate(load_config(BASIC), seed=1, requests=2000)
    n = res.timeseries.time.nunique()
    # about 1000 over the arrivals, plus the tail while the last requests finish
    assert 200 <= n <= 1200 and res.step in (0.1, 0.2, 0.5)


# -- decision traces --------------------------------------------------------------------------------


def test_explain_attaches_the_decision_to_each_attempt(tmp_path):
    res = simulate(load_config(BASIC), seed=3, requests=500, explain=True)
    att = res.attempts
    assert "decision" in att.columns
    for _, row in att.iterrows():
        d = row.decision
        assert d["chosen"] == row.channel
        names = [c["channel"] for c in d["candidates"]]
        assert row.channel in names and d["by"] in ("strategy", "sticky")
    paths = res.to_files(tmp_path, "csv")
    back = pd.read_csv(paths[1])
    assert json.loads(back.decision.iloc[0])["chosen"] == att.channel.iloc[0]
    assert "decision" not in simulate(load_config(BASIC), seed=3, requests=50).attempts.columns
