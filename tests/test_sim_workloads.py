"""Workloads: arrival processes, tenants, token counts reaching the core and the channels, trace replay, and bad input named by file, line and field."""

from __future__ import annotations

import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from axonsim.cli import main
from axonsim.config import ConfigError, load_config, parse_config
from axonsim.sim import simulate
from axonsim.sim.workload import build_arrivals, horizon, read_azure_trace, read_usage_log

ROOT = Path(__file__).resolve().parent.parent
TRACES = ROOT / "examples" / "traces"
CONV = TRACES / "azure_llm_2023_conv.csv"
CODE = TRACES / "azure_llm_2023_code.csv"
NO_HEALTH = {"breaker": {"enabled": False}, "key_breaker": {"enabled": False}, "auto_disable": []}


def cfg(workload: dict, channels: list[dict] | None = None, routing: dict | None = None, **top):
    channels = channels or [{"name": "a", "models": ["x", "y"]}]
    return parse_config({"channels": channels, "workload": workload, **({"routing": routing} if routing else {}),
                         **top})


def reliable(name: str = "a", models: tuple[str, ...] = ("x", "y"), **behavior) -> dict:
    b = {"ttft": 0.05, "tokens_per_second": 1000, **behavior}
    return {"name": name, "models": list(models), "behavior": b}


# -- arrival processes ------------------------------------------------------------------------------


def test_poisson_rate_and_gaps():
    a = build_arrivals(cfg({"arrival": {"rate": 20}, "requests": 40_000}), 1)
    g = np.diff(np.asarray(a.times), prepend=0.0)
    assert g.mean() == pytest.approx(0.05, rel=0.02)
    assert g.std() / g.mean() == pytest.approx(1.0, abs=0.02)
    assert np.all(g >= 0)


def test_gamma_arrivals_have_the_requested_coefficient_of_variation():
    a = build_arrivals(cfg({"arrival": {"process": "gamma", "rate": 4, "cv": 3}, "requests": 50_000}), 1)
    g = np.diff(np.asarray(a.times), prepend=0.0)
    assert g.mean() == pytest.approx(0.25, rel=0.05)
    assert g.std() / g.mean() == pytest.approx(3.0, rel=0.06)
    # bursty: the per-second counts are over-dispersed (index of dispersion well above Poisson's 1)
    counts = np.bincount(np.asarray(a.times).astype(int))
    assert counts.var() / counts.mean() > 4


def test_a_rate_ramp_by_thinning():
    """λ(t) from 1/s to 10/s over 1000 s, then flat: Λ(1000) = 5500, Λ(2000) - Λ(1000) = 10000."""
    a = build_arrivals(cfg({"arrival": {"rate": 1, "ramp": {"to": 10, "over": 1000}}, "duration": 2000}), 1)
    t = np.asarray(a.times)
    assert t.max() < 2000 and np.all(np.diff(t) >= 0)
    assert (t < 1000).sum() == pytest.approx(5500, abs=4 * math.sqrt(5500))
    assert (t >= 1000).sum() == pytest.approx(10000, abs=4 * math.sqrt(10000))
    assert (t < 100).sum() == pytest.approx(145, abs=4 * math.sqrt(145))  # ∫₀¹⁰⁰ 1 + 9t/1000 dt


def test_a_ramp_down_to_zero_ends_the_arrivals():
    """10/s falling to 0 over 100 s: about Λ = 500 arrivals, then none, however many were asked for."""
    c = cfg({"arrival": {"rate": 10, "ramp": {"to": 0, "over": 100}}, "requests": 100_000})
    t = np.asarray(build_arrivals(c, 1).times)
    assert len(t) == pytest.approx(500, abs=4 * math.sqrt(500)) and t.max() < 100
    assert horizon(c)[0] == 100.0


def test_a_diurnal_curve_by_thinning():
    """rate 10·(1 + 0.5 sin(2πt/1000)): each rising quarter holds 2500 + 5000/2π·... arrivals."""
    a = build_arrivals(cfg({"arrival": {"rate": 10, "diurnal": {"amplitude": 0.5, "period": 1000}},
                            "duration": 4000}), 1)
    t = np.asarray(a.times)
    quarter = np.bincount(((t % 1000) // 250).astype(int), minlength=4)
    swing = 10 * 0.5 * 1000 / (2 * math.pi)  # ∫ of the sine part over a quarter
    high, low = 4 * (2500 + swing), 4 * (2500 - swing)
    for got, want in zip(quarter, [high, high, low, low], strict=True):
        assert got == pytest.approx(want, abs=4 * math.sqrt(want))


def test_requests_and_duration_whichever_ends_first():
    a = build_arrivals(cfg({"arrival": {"rate": 10}, "requests": 100, "duration": 1000}), 2)
    assert len(a) == 100
    b = build_arrivals(cfg({"arrival": {"rate": 10}, "requests": 100_000, "duration": 50}), 2)
    assert 400 < len(b) < 600 and max(b.times) < 50
    assert a.times == b.times[:100]  # the same stream, cut differently


def test_draws_are_prefix_stable_for_every_process():
    for wl in ({"arrival": {"process": "gamma", "rate": 3, "cv": 2}},
               {"arrival": {"rate": 3, "diurnal": {"amplitude": 0.9, "period": 60}}},
               {"tenants": [{"project": "p", "arrival": {"rate": 1}}, {"project": "q", "arrival": {"rate": 2}}]}):
        short = build_arrivals(cfg({**wl, "requests": 300}), 8)
        long = build_arrivals(cfg({**wl, "requests": 100_000}), 8)
        assert short.times == long.times[:300]
        assert short.project == long.project[:300] and short.model == long.model[:300]


# -- tenants ----------------------------------------------------------------------------------------


TENANTS = {
    "tenants": [
        {"project": "chat", "arrival": {"rate": 6}, "models": {"x": 1}, "stream": 1.0,
         "input_tokens": {"dist": "lognormal", "median": 1000, "sigma": 0.5}},
        {"project": "batch", "arrival": {"process": "gamma", "rate": 2, "cv": 2}, "models": {"y": 1},
         "input_tokens": 3000, "output_tokens": 200, "max_tokens": 1024},
    ],
    "duration": 2000,
}


def test_tenants_keep_their_own_mix_rate_and_tokens():
    a = build_arrivals(cfg(TENANTS), 3)
    assert a.projects == ["chat", "batch"] and a.models == ["x", "y"]
    t = np.asarray(a.times)
    assert np.all(np.diff(t) >= 0)
    proj = np.asarray(a.project)
    chat, batch = proj == 0, proj == 1
    assert chat.sum() == pytest.approx(12_000, rel=0.05) and batch.sum() == pytest.approx(4_000, rel=0.15)
    model = np.asarray(a.model)
    assert (model[chat] == 0).all() and (model[batch] == 1).all()
    stream = np.asarray(a.stream)
    assert stream[chat].all() and not stream[batch].any()
    inp = np.asarray(a.input_tokens)
    assert np.median(inp[chat]) == pytest.approx(1000, rel=0.05) and (inp[batch] == 3000).all()
    out = np.asarray(a.output_tokens)
    assert (out[chat] == -1).all() and (out[batch] == 200).all()  # -1: the channel decides
    tok = np.asarray(a.tokens)
    assert (tok[batch] == 3000 + 1024).all() and (tok[chat] == inp[chat]).all()


def test_adding_a_tenant_leaves_the_others_requests_alone():
    one = build_arrivals(cfg({**TENANTS, "tenants": TENANTS["tenants"][:1]}), 3)
    two = build_arrivals(cfg(TENANTS), 3)
    chat = np.asarray(two.project) == 0
    assert np.asarray(two.times)[chat].tolist() == one.times
    assert np.asarray(two.input_tokens)[chat].tolist() == one.input_tokens


def test_projects_reach_the_results():
    res = simulate(cfg(TENANTS, [reliable(max_concurrency=400, when_full="queue")]), seed=1, requests=3000)
    req = res.requests
    assert set(req.project.astype(str)) == {"chat", "batch"}
    s = res.summary()
    assert set(s["project_success_rate"]) == {"chat", "batch"}


# -- tokens reach the core and the channel model ---------------------------------------------------


def test_output_tokens_from_the_workload_replace_the_channels_draw():
    c = cfg({"arrival": {"rate": 5}, "requests": 500, "output_tokens": {"dist": "lognormal", "median": 50,
                                                                          "sigma": 1.0}},
            [reliable(output_tokens=10_000)])
    res = simulate(c, seed=2)
    arr = build_arrivals(c, 2)
    assert res.requests.ok.all()
    assert res.requests.output_tokens.tolist() == arr.output_tokens


def test_prefill_grows_the_time_to_first_token_with_the_input():
    c = cfg({"arrival": {"rate": 1}, "requests": 200, "input_tokens": 2000, "stream": 1.0},
            [reliable(ttft=0.1, prefill_per_token=0.0005)])
    ttft = simulate(c, seed=1).requests.ttft
    assert np.allclose(ttft, 0.1 + 2000 * 0.0005)


def test_the_token_estimate_reaches_local_tpm_limits_like_the_live_proxy():
    """The gateway's own TPM limit counts prompt + max_tokens at admission (what server/app.py
    passes to execute): 30 requests a minute of 1000 + 1000 tokens against 10k TPM admits at most
    1 in 6; without max_tokens, at most 1 in 3 — twice as many (the limiter's sliding-window
    estimate is conservative, so a little under those bounds)."""
    def run(max_tokens: int | None) -> float:
        wl = {"arrival": {"rate": 0.5}, "requests": 3000, "input_tokens": 1000}
        if max_tokens is not None:
            wl["max_tokens"] = max_tokens
        ch = {**reliable(), "limits": {"tpm": 10_000}}
        res = simulate(cfg(wl, [ch], {"health": NO_HEALTH}), seed=1)
        req = res.requests
        refused = req.attempts.eq(0)
        assert req.status[refused].eq(429).all()  # refused locally, no upstream call made
        return float((~refused).mean())

    with_max, without = run(1000), run(None)
    assert 0.12 < with_max <= 1 / 6 + 0.005
    assert 0.25 < without <= 1 / 3 + 0.005
    assert without / with_max == pytest.approx(2.0, rel=0.2)


def test_the_providers_tpm_bucket_counts_input_and_output():
    """60k TPM at the provider, 2 requests/s of 900 + 100 tokens = 120k TPM: half are answered 429."""
    ch = reliable(rate_limits={"tpm": 60_000})
    c = cfg({"arrival": {"rate": 2}, "requests": 12_000, "input_tokens": 900, "output_tokens": 100}, [ch],
            {"health": NO_HEALTH, "retry": {"max_attempts": 1}, "cooldown": {"max": 0}})
    att = simulate(c, seed=3).attempts
    assert float(att.status.eq(429).mean()) == pytest.approx(0.5, abs=0.02)


# -- trace replay -----------------------------------------------------------------------------------


def trace_cfg(path: Path, tmp: Path | None = None, **trace) -> object:
    data = {"channels": [reliable(models=("gpt-4o-mini",), max_concurrency=5000, when_full="queue")],
            "routing": {"health": NO_HEALTH},
            "workload": {"trace": {"path": str(path), **trace}}}
    if tmp is None:
        return parse_config(data)
    p = tmp / "replay.yaml"
    p.write_text(yaml.safe_dump(data))
    return load_config(p)


def test_azure_trace_replay_reproduces_the_arrivals_and_token_totals_exactly():
    raw = pd.read_csv(CONV)
    stamps = pd.to_datetime(raw.TIMESTAMP, format="ISO8601")
    expected = ((stamps - stamps.iloc[0]).dt.total_seconds()).to_numpy()
    res = simulate(trace_cfg(CONV), seed=1)
    req = res.requests
    assert len(req) == len(raw) == 19_366
    assert np.allclose(req.arrival.to_numpy(), expected, rtol=0, atol=1e-6)
    assert req.ok.all()
    assert int(req.input_tokens.sum()) == int(raw.ContextTokens.sum()) == 22_361_870
    assert int(req.output_tokens.sum()) == int(raw.GeneratedTokens.sum()) == 4_088_665
    assert (req.output_tokens.to_numpy() == raw.GeneratedTokens.to_numpy()).all()


def test_trace_time_scale_and_cuts():
    full = read_azure_trace(CODE)
    fast = simulate(trace_cfg(CODE, time_scale=0.5, format="azure"), seed=1, step=None).requests
    assert len(fast) == len(full) == 8_819
    assert fast.arrival.iloc[-1] == pytest.approx(0.5 * full.times[-1])
    c = trace_cfg(CODE)
    assert len(simulate(c, requests=1000, step=None).requests) == 1000


def test_a_relative_trace_path_is_read_from_the_scenario_folder(tmp_path):
    shutil.copy(CODE, tmp_path / "t.csv")
    c = trace_cfg(Path("t.csv"), tmp_path)
    assert len(simulate(c, requests=50, step=None).requests) == 50
    # the scenario as written replays the whole trace: its horizon is the last row
    assert horizon(c)[0] == pytest.approx(read_azure_trace(CODE).times[-1])


def usage_log(tmp: Path) -> pd.DataFrame:
    """A few rows shaped like an export of the proxy's requests table, deliberately out of order."""
    return pd.DataFrame({
        "id": ["r3", "r1", "r2", "r4"],
        "created_at": [1_700_000_010.5, 1_700_000_000.0, 1_700_000_002.25, 1_700_000_030.0],
        "project": ["b", "a", "a", "b"],
        "model": ["gpt-4o-mini", "gpt-4o-mini", "gpt-4o", "gpt-4o"],
        "stream": ["t", "f", "true", "0"],
        "prompt_tokens": [100, 200, 300, 400],
        "completion_tokens": [10, 20, 30, 40],
        "status": [200, 200, 500, 200],
    })


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_usage_log_replay(tmp_path, fmt):
    df = usage_log(tmp_path)
    p = tmp_path / f"requests.{fmt}"
    if fmt == "csv":
        df.to_csv(p, index=False)
    else:
        df = df.assign(stream=[True, False, True, False])
        df.to_parquet(p, index=False)
    data = {"channels": [reliable(models=("gpt-4o-mini", "gpt-4o"))],
            "workload": {"trace": {"path": p.name, "format": "usage_log"}}}
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(data))
    res = simulate(load_config(tmp_path / "s.yaml"), seed=1)
    req = res.requests
    assert req.arrival.tolist() == [0.0, 2.25, 10.5, 30.0]
    assert req.model.astype(str).tolist() == ["gpt-4o-mini", "gpt-4o", "gpt-4o-mini", "gpt-4o"]
    assert req.project.astype(str).tolist() == ["a", "a", "b", "b"]
    assert req.stream.tolist() == [False, True, True, False]
    assert req.input_tokens.tolist() == [200, 300, 100, 400] and req.output_tokens.tolist() == [20, 30, 10, 40]


def test_usage_log_rows_refused_before_routing_are_left_out(tmp_path):
    """A real log holds requests the proxy refused before reading a model (a bad key, a body that
    was not JSON): stored with an empty model, they never reached a channel, and are not replayed.
    Errors in the rows kept still name their line in the file."""
    df = usage_log(tmp_path)
    refused = pd.DataFrame({"id": ["x1", "x2"], "created_at": [1_700_000_001.0, 1_700_000_003.0], "project": ["", ""],
                            "model": ["", "  "], "stream": ["f", "f"], "prompt_tokens": [0, 0],
                            "completion_tokens": [0, 0], "status": [401, 400]})
    mixed = pd.concat([refused.iloc[:1], df.iloc[:2], refused.iloc[1:], df.iloc[2:]], ignore_index=True)
    mixed.to_csv(tmp_path / "log.csv", index=False)
    tr = read_usage_log(tmp_path / "log.csv")
    assert tr.model == ["gpt-4o-mini", "gpt-4o", "gpt-4o-mini", "gpt-4o"] and tr.times.tolist() == [0.0, 2.25, 10.5, 30.0]
    mixed.assign(prompt_tokens=[0, 1, 2, 0, "many", 4]).to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(ConfigError, match=r"bad.csv: line 6: prompt_tokens"):
        read_usage_log(tmp_path / "bad.csv")
    refused.to_csv(tmp_path / "none.csv", index=False)
    with pytest.raises(ConfigError, match="no row of the usage log names a model"):
        read_usage_log(tmp_path / "none.csv")


# -- bad input: file, line, field -------------------------------------------------------------------


def write(tmp: Path, name: str, text: str) -> Path:
    p = tmp / name
    p.write_text(text)
    return p


SCENARIO = """\
channels:
  - name: a
    models: [m]
    behavior:
      ttft: {dist: lognormal, median: 0.5, sigma: 0.5}
      incidents:
        - {start: 100, end: 200, status: 503}
workload:
  arrival: {process: poisson, rate: 10}
  requests: 5000
"""


@pytest.mark.parametrize("old, new, line, field", [
    ("requests: 5000", "requests: 5000\n  colour: red", 11, "workload.colour"),
    ("rate: 10}", "rate: -10}", 9, "workload.arrival.rate"),
    ("sigma: 0.5}", "sigma: -0.5}", 5, "channels[0].behavior.ttft.sigma"),
    ("name: a", "name: a\n    colour: blue", 3, "channels[0].colour"),
    ("process: poisson, rate: 10", "process: gamma, rate: 10", 9, "workload.arrival"),
], ids=["unknown-field", "negative-rate", "negative-sigma", "unknown-channel-field", "gamma-without-cv"])
def test_scenario_mistakes_name_file_line_and_field(tmp_path, old, new, line, field):
    p = write(tmp_path, "s.yaml", SCENARIO.replace(old, new))
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert f"{p}: line {line}: {field}" in str(e.value)


def test_an_incident_after_the_run_is_refused_with_its_line(tmp_path, capsys):
    # 5000 requests at 10/s end near t=500 s: an incident at t=900 s can never be seen.
    p = write(tmp_path, "s.yaml", SCENARIO.replace("{start: 100, end: 200", "{start: 900, end: 1000"))
    with pytest.raises(ConfigError) as e:
        simulate(load_config(p))
    msg = str(e.value)
    assert f"{p}: line 7: channels[0].behavior.incidents[0].start" in msg and "500 s" in msg
    assert main(["simulate", str(p)]) == 2
    err = capsys.readouterr().err
    assert "line 7" in err and "Traceback" not in err
    # A shorter replay of a valid scenario is still allowed: the check is against the scenario as written.
    ok = write(tmp_path, "ok.yaml", SCENARIO)
    assert len(simulate(load_config(ok), requests=100, step=None).requests) == 100


@pytest.mark.parametrize("row, line, field", [
    ("2023-11-16 18:17:05.0,12x,4", 3, "ContextTokens"),
    ("2023-11-16 18:17:05.0,12,-4", 3, "GeneratedTokens"),
    ("yesterday,12,4", 3, "TIMESTAMP"),
    ("2023-11-16 18:17:05.0,12", 3, "row"),
], ids=["not-a-number", "negative", "bad-timestamp", "missing-field"])
def test_a_malformed_trace_row_names_its_line_and_column(tmp_path, row, line, field):
    p = write(tmp_path, "t.csv", f"TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:17:04.0,10,3\n{row}\n"
                                 "2023-11-16 18:17:06.0,11,5\n")
    with pytest.raises(ConfigError) as e:
        read_azure_trace(p)
    assert f"{p}: line {line}: {field}" in str(e.value)


def test_trace_errors_reach_the_cli(tmp_path, capsys):
    write(tmp_path, "t.csv", "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:17:04.0,10,3\n"
                             "2023-11-16 18:17:05.0,10,oops\n")
    s = write(tmp_path, "s.yaml", "channels: [{name: a, models: [m]}]\nworkload:\n  trace: {path: t.csv}\n")
    assert main(["simulate", str(s)]) == 2
    err = capsys.readouterr().err
    assert "t.csv: line 3: GeneratedTokens" in err and "Traceback" not in err
    s.write_text("channels: [{name: a, models: [m]}]\nworkload:\n  trace: {path: nope.csv}\n")
    assert main(["simulate", str(s)]) == 2
    assert "nope.csv" in capsys.readouterr().err


def test_bad_header_and_usage_log_mistakes(tmp_path):
    with pytest.raises(ConfigError, match=r"line 1: header"):
        read_azure_trace(write(tmp_path, "h.csv", "time,in,out\n1,2,3\n"))
    df = usage_log(tmp_path)
    df.drop(columns=["stream"]).to_csv(tmp_path / "u1.csv", index=False)
    with pytest.raises(ConfigError, match=r"u1.csv: line 1: header: missing column\(s\) stream"):
        read_usage_log(tmp_path / "u1.csv")
    df.assign(prompt_tokens=[1, 2, "many", 4]).to_csv(tmp_path / "u2.csv", index=False)
    with pytest.raises(ConfigError, match=r"u2.csv: line 4: prompt_tokens"):
        read_usage_log(tmp_path / "u2.csv")
    df.assign(stream=["t", "f", "maybe", "t"]).to_csv(tmp_path / "u3.csv", index=False)
    with pytest.raises(ConfigError, match=r"u3.csv: line 4: stream"):
        read_usage_log(tmp_path / "u3.csv")
    df.to_csv(tmp_path / "u4.csv", index=False)
    c = parse_config({"channels": [reliable(models=("gpt-4o-mini",))],
                      "workload": {"trace": {"path": str(tmp_path / "u4.csv"), "format": "usage_log"}}})
    with pytest.raises(ConfigError, match=r"u4.csv: line 4: model: no channel of the scenario serves 'gpt-4o'"):
        simulate(c)


def test_workload_shape_mistakes():
    with pytest.raises(ConfigError, match="exactly one of arrival, tenants or trace"):
        cfg({"arrival": {"rate": 1}, "trace": {"path": "x.csv"}, "requests": 3})
    with pytest.raises(ConfigError, match="requests or duration"):
        cfg({"arrival": {"rate": 1}})
    with pytest.raises(ConfigError, match=r"tenants\[0\].models: no channel serves 'z'"):
        cfg({"tenants": [{"project": "p", "arrival": {"rate": 1}, "models": {"z": 1}}], "requests": 3})
    with pytest.raises(ConfigError, match="ramp/diurnal"):
        cfg({"arrival": {"process": "gamma", "rate": 1, "cv": 2, "ramp": {"to": 3, "over": 10}}, "requests": 3})


DIGEST = """
import hashlib, sys
from axonsim.config import load_config
from axonsim.sim import simulate
res = simulate(load_config(sys.argv[1]), seed=23, requests=1500)
h = hashlib.sha256()
for df in (res.requests, res.attempts, res.timeseries):
    h.update(df.to_csv(index=False, float_format="%.17g").encode())
print(h.hexdigest())
"""


@pytest.mark.parametrize("name", ["tenants", "replay"])
def test_new_workloads_are_bit_identical_across_processes(name):
    """Tenants (gamma and diurnal arrivals, token draws) and a trace replay, in two interpreters
    with different string-hash salts: the same tables, time series included."""
    path = str(ROOT / "examples" / f"{name}.yaml")
    runs = [subprocess.run([sys.executable, "-c", DIGEST, path], capture_output=True, text=True, check=True,
                           env={"PYTHONHASHSEED": salt, "PATH": ""}, cwd=ROOT).stdout.strip()
            for salt in ("1", "98765")]
    assert runs[0] == runs[1] and len(runs[0]) == 64
