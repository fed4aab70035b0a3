"""Sweeps (determinism across runs and worker counts, confidence intervals, files) and reports (files, embedded plots, `axonsim report`)."""

from __future__ import annotations

import base64
import json
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from axonsim.cli import main
from axonsim.config import Config, parse_config
from axonsim.report import ReportError, load_results, render_report
from axonsim.sim import SweepResult, simulate, sweep
from axonsim.sim.sweep import t_interval, with_strategy

ROOT = Path(__file__).resolve().parent.parent
PNG = b"\x89PNG\r\n\x1a\n"


def _scenario(incident: dict | None = None, requests: int = 250) -> dict:
    """The standard steady scenario, shrunk: 20 req/s so that a few hundred requests span ~15 s."""
    data = yaml.safe_load((ROOT / "examples" / "scenarios" / "steady.yaml").read_text())
    data["workload"].update({"arrival": {"process": "poisson", "rate": 20}, "requests": requests})
    if incident:
        data["channels"][1]["behavior"]["incidents"] = [incident]
    return data


@pytest.fixture(scope="module")
def scenarios() -> dict[str, Config]:
    return {"steady": parse_config(_scenario(), "steady"),
            "outage": parse_config(_scenario({"start": 3, "end": 8, "status": 503}), "outage")}


@pytest.fixture(scope="module")
def small_sweep(scenarios) -> SweepResult:
    return sweep(scenarios, ["round_robin", "error_aware"], [1, 2, 3], workers=1, progress=False)


# --------------------------------------------------------------------------------------------------
# Sweeps


def test_sweep_rows_are_the_grid_in_order(small_sweep):
    s = small_sweep.summary
    assert list(s.columns[:3]) == ["scenario", "strategy", "seed"]
    assert len(s) == 2 * 2 * 3
    assert list(s[["scenario", "strategy", "seed"]].itertuples(index=False, name=None))[:4] == [
        ("steady", "round_robin", 1), ("steady", "round_robin", 2), ("steady", "round_robin", 3),
        ("steady", "error_aware", 1)]
    for col in ("success_rate", "latency_p50", "latency_p95", "latency_p99", "ttft_p50", "ttft_p99",
                "attempts_per_request", "error_rate", "upstream_429_rate", "share_A", "share_B", "share_C"):
        assert col in s.columns, col
    assert (s["requests"] == 250).all()
    shares = s[["share_A", "share_B", "share_C"]].sum(axis=1)
    assert np.allclose(shares, 1.0)
    assert len(small_sweep.requests) == 12


def test_a_cell_is_exactly_its_single_simulation(small_sweep, scenarios):
    result = simulate(with_strategy(scenarios["outage"], "error_aware"), seed=2)
    row = small_sweep.summary.query("scenario == 'outage' and strategy == 'error_aware' and seed == 2").iloc[0]
    assert row["success_rate"] == result.summary()["success_rate"]
    assert row["latency_p99"] == result.summary()["latency_p99"]
    pd.testing.assert_frame_equal(small_sweep.cell("outage", "error_aware", 2), result.requests)
    assert scenarios["outage"].routing.strategy == "composite"  # the scenario itself is not changed


def test_same_grid_twice_and_with_two_workers_gives_identical_results(scenarios, small_sweep):
    again = sweep(scenarios, ["round_robin", "error_aware"], [1, 2, 3], workers=1, progress=False)
    pd.testing.assert_frame_equal(small_sweep.summary, again.summary, check_exact=True)
    parallel = sweep(scenarios, ["round_robin", "error_aware"], [1, 2, 3], workers=2, progress=False)
    assert parallel.meta["workers"] == 2
    pd.testing.assert_frame_equal(small_sweep.summary, parallel.summary, check_exact=True)
    assert list(parallel.requests) == list(small_sweep.requests)
    for cell, df in small_sweep.requests.items():
        pd.testing.assert_frame_equal(df, parallel.requests[cell], check_exact=True)
    pd.testing.assert_frame_equal(small_sweep.aggregate(), parallel.aggregate(), check_exact=True)


def test_aggregate_means_and_student_t_intervals(small_sweep):
    agg = small_sweep.aggregate()
    assert len(agg) == 4 and (agg["n_seeds"] == 3).all()
    cell = small_sweep.summary.query("scenario == 'outage' and strategy == 'round_robin'")["latency_p99"]
    row = agg.query("scenario == 'outage' and strategy == 'round_robin'").iloc[0]
    assert row["latency_p99_mean"] == pytest.approx(cell.mean())
    assert row["latency_p99_ci"] == pytest.approx(4.302652729749752 * cell.std(ddof=1) / math.sqrt(3))
    assert (agg.filter(like="_ci").fillna(0) >= 0).all().all()


def test_one_seed_has_no_interval_nan_not_zero(scenarios, capsys):
    one = sweep({"steady": scenarios["steady"]}, ["round_robin"], [7], requests=60, workers=1, progress=True)
    assert capsys.readouterr().err == ""  # the progress bar stays off when stderr is not a terminal
    agg = one.aggregate()
    assert agg["n_seeds"].tolist() == [1]
    assert math.isnan(agg["success_rate_ci"].iloc[0]) and not math.isnan(agg["success_rate_mean"].iloc[0])
    assert one.summary["requests"].tolist() == [60]


def test_student_t_quantiles():
    assert t_interval(0.95, 1) == pytest.approx(12.706204736, rel=1e-9)
    assert t_interval(0.95, 2) == pytest.approx(4.302652730, rel=1e-9)
    assert t_interval(0.95, 10) == pytest.approx(2.228138852, rel=1e-9)
    assert t_interval(0.99, 5) == pytest.approx(4.032142984, rel=1e-9)
    assert t_interval(0.95, 100000) == pytest.approx(1.959963985, rel=1e-4)
    assert math.isnan(t_interval(0.95, 0))


def test_bad_grids_are_refused(scenarios):
    with pytest.raises(ValueError, match="unknown strategy 'fastest'"):
        sweep(scenarios, ["fastest"], [1], progress=False)
    with pytest.raises(ValueError, match="seeds must not repeat"):
        sweep(scenarios, ["round_robin"], [1, 1], progress=False)
    with pytest.raises(ValueError, match="at least one"):
        sweep(scenarios, [], [1], progress=False)


def test_to_files_and_back(small_sweep, tmp_path):
    paths = small_sweep.to_files(tmp_path / "sw", requests=True)
    names = {p.relative_to(tmp_path / "sw").as_posix() for p in paths}
    assert {"summary.csv", "aggregate.csv", "sweep.json"} <= names
    assert "requests/outage/error_aware/seed2.parquet" in names
    manifest = (tmp_path / "sw" / "sweep.json").read_text()
    assert "sk-sim" not in manifest  # scenario descriptions are an allowlist: no API keys
    back = SweepResult.from_files(tmp_path / "sw")
    pd.testing.assert_frame_equal(back.summary, small_sweep.summary, check_exact=False, rtol=1e-12)
    assert back.scenarios["outage"]["incidents"][0]["channel"] == "B"
    _same_values(back.cell("outage", "error_aware", 2), small_sweep.cell("outage", "error_aware", 2))
    small_sweep.to_files(tmp_path / "pq", format="parquet")
    assert (tmp_path / "pq" / "summary.parquet").exists() and not (tmp_path / "pq" / "requests").exists()


def _same_values(a: pd.DataFrame, b: pd.DataFrame) -> None:
    """Equal tables up to how missing strings are spelled: Parquet brings an object column of
    str/None back as pandas strings with NaN."""
    assert list(a.columns) == list(b.columns)
    for c in a.columns:
        left, right = a[c].astype(object), b[c].astype(object)
        assert left.where(left.notna(), None).tolist() == right.where(right.notna(), None).tolist(), c


# --------------------------------------------------------------------------------------------------
# Reports


def _embedded_pngs(page: str) -> list[bytes]:
    return [base64.b64decode(m) for m in re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)]


def test_report_from_a_sweep_embeds_its_plots(small_sweep, tmp_path):
    page = render_report(small_sweep, tmp_path / "rep")
    assert page == tmp_path / "rep" / "report.html"
    html_text = page.read_text()
    pngs = _embedded_pngs(html_text)
    # success rate, p99, retry amplification, latency CDF, channel share per scenario
    assert len(pngs) == 6 and all(p.startswith(PNG) for p in pngs)
    md = (tmp_path / "rep" / "report.md").read_text()
    figures = re.findall(r"\]\((figures/[^)]+\.png)\)", md)
    assert len(figures) == 6
    for f in figures:
        assert (tmp_path / "rep" / f).read_bytes().startswith(PNG)
    for text in (md, html_text):
        assert "B: 503, t=3–8 s" in text  # the scheduled incident, from the scenario
        assert "round_robin" in text and "error_aware" in text and "95% Student t" in text
    assert (tmp_path / "rep" / "summary.csv").exists() and (tmp_path / "rep" / "aggregate.csv").exists()


def test_report_from_a_sim_result(scenarios, tmp_path):
    result = simulate(scenarios["outage"], seed=1, requests=200)  # ~10 s: covers the incident at 3–8 s
    page = render_report(result, tmp_path / "one")
    md = (tmp_path / "one" / "report.md").read_text()
    assert "no confidence interval" in md and "composite" in md
    assert len(_embedded_pngs(page.read_text())) == 5  # one scenario: one channel-share figure


@pytest.fixture
def simulate_dir(tmp_path) -> tuple[Path, Path]:
    scenario = tmp_path / "outage.yaml"
    scenario.write_text(yaml.safe_dump(_scenario({"start": 3, "end": 8, "status": 503}, requests=200)))
    out = tmp_path / "sim"
    assert main(["simulate", str(scenario), "--seed", "4", "--out", str(out), "--format", "parquet"]) == 0
    return scenario, out


def test_report_cli_on_a_simulate_directory(simulate_dir, tmp_path, capsys):
    scenario, out = simulate_dir
    capsys.readouterr()
    assert main(["report", str(out), "--out", str(tmp_path / "r1")]) == 0
    assert "report.html" in capsys.readouterr().out
    assert len(_embedded_pngs((tmp_path / "r1" / "report.html").read_text())) == 5
    # The directory records what was simulated: the report of it alone knows the strategy and
    # the incident window (it said "?" and "—")
    md = (tmp_path / "r1" / "report.md").read_text()
    assert "B: 503, t=3–8 s" in md and "| composite |" in md and "| ? |" not in md
    summary = json.loads((out / "summary.json").read_text())
    assert "api_keys" not in json.dumps(summary) and "sk-" not in json.dumps(summary)
    # With the scenario, the report knows the strategy and the incident window.
    assert main(["report", str(out), "--out", str(tmp_path / "r2"), "--scenario", str(scenario)]) == 0
    md = (tmp_path / "r2" / "report.md").read_text()
    assert "B: 503, t=3–8 s" in md and "| composite |" in md
    # Default --out: RESULTS/report.
    assert main(["report", str(out)]) == 0
    assert (out / "report" / "report.md").exists()


def test_report_cli_on_a_sweep_directory(small_sweep, tmp_path):
    small_sweep.to_files(tmp_path / "sw", format="parquet", requests=True)
    assert main(["report", str(tmp_path / "sw"), "--out", str(tmp_path / "rep")]) == 0
    assert len(_embedded_pngs((tmp_path / "rep" / "report.html").read_text())) == 6


@pytest.mark.parametrize("case, message", [
    ("missing", "no such results directory"),
    ("file", "not a directory"),
    ("empty", "not a results directory"),
    ("bad_json", "summary.json: not valid JSON"),
    ("no_requests", "no requests.parquet or requests.csv"),
    ("bad_manifest", "not a sweep manifest"),
])
def test_report_cli_exits_2_on_bad_results(tmp_path, capsys, case, message):
    d = tmp_path / "results"
    if case == "file":
        d.write_text("x")
    elif case != "missing":
        d.mkdir()
    if case == "bad_json":
        (d / "summary.json").write_text("{not json")
    elif case == "no_requests":
        (d / "summary.json").write_text(json.dumps({"seed": 1, "success_rate": 1.0}))
    elif case == "bad_manifest":
        (d / "sweep.json").write_text(json.dumps({"kind": "something else"}))
    assert main(["report", str(d), "--out", str(tmp_path / "rep")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("axonsim report: ") and message in err and "Traceback" not in err
    assert not (tmp_path / "rep" / "report.html").exists()
    with pytest.raises(ReportError):
        load_results(d)


def test_report_cli_bad_scenario_exits_2(simulate_dir, tmp_path, capsys):
    _, out = simulate_dir
    assert main(["report", str(out), "--scenario", str(tmp_path / "nope.yaml")]) == 2
    assert "configuration error" in capsys.readouterr().err


def test_report_cli_refuses_a_scenario_other_than_the_one_simulated(simulate_dir, tmp_path, capsys):
    # The results record their scenario: one that describes another strategy or other channels would
    # relabel them without a word.
    scenario, out = simulate_dir
    other = _scenario({"start": 3, "end": 8, "status": 503}, requests=200)
    other["routing"]["strategy"] = "round_robin"
    (tmp_path / "other.yaml").write_text(yaml.safe_dump(other))
    renamed = _scenario({"start": 3, "end": 8, "status": 503}, requests=200)
    renamed["channels"][0]["name"] = "elsewhere"
    (tmp_path / "renamed.yaml").write_text(yaml.safe_dump(renamed))
    capsys.readouterr()
    for path, what in ((tmp_path / "other.yaml", "strategy"), (tmp_path / "renamed.yaml", "channels")):
        assert main(["report", str(out), "--out", str(tmp_path / "r"), "--scenario", str(path)]) == 2
        err = capsys.readouterr().err
        assert f"--scenario: its {what}" in err and "Traceback" not in err
    assert not (tmp_path / "r" / "report.html").exists()
    assert main(["report", str(out), "--out", str(tmp_path / "r"), "--scenario", str(scenario)]) == 0  # the same one


def test_report_cli_on_results_without_requests(simulate_dir, tmp_path):
    _, out = simulate_dir
    df = pd.read_parquet(out / "requests.parquet")
    df.iloc[:0].to_parquet(out / "requests.parquet", index=False)
    assert main(["report", str(out), "--out", str(tmp_path / "r")]) == 0
    assert (tmp_path / "r" / "report.html").exists()


def test_costs_in_a_report_keep_their_significant_digits() -> None:
    # A request costs ~1e-4: three decimals wrote every cost as 0.000 ± 0.000.
    from axonsim.report.render import _pm

    assert _pm(1.05e-4, 2.1e-6, "cost") == "0.000105 ± 2.1e-06"
    assert _pm(12.5, None, "cost") == "12.5"
