"""`axonsim simulate`: runs a scenario, writes its tables, prints the summary; exit 2 on a bad scenario."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml

from axonsim.cli import main

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def scenario(tmp_path: Path) -> Path:
    data = yaml.safe_load((ROOT / "examples" / "basic.yaml").read_text())
    data["workload"]["requests"] = 400
    p = tmp_path / "scenario.yaml"
    p.write_text(yaml.safe_dump(data))
    return p


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_simulate_writes_tables_and_prints_the_summary(scenario, tmp_path, capsys, fmt):
    out = tmp_path / "out"
    assert main(["simulate", str(scenario), "--seed", "3", "--out", str(out), "--format", fmt]) == 0
    printed = capsys.readouterr().out
    for word in ("success", "latency", "p99", "attempts/req", "fast", "standard", "flaky"):
        assert word in printed
    req = pd.read_csv(out / "requests.csv") if fmt == "csv" else pd.read_parquet(out / "requests.parquet")
    att = pd.read_csv(out / "attempts.csv") if fmt == "csv" else pd.read_parquet(out / "attempts.parquet")
    assert len(req) == 400 and len(att) >= 400
    summary = json.loads((out / "summary.json").read_text())
    assert summary["requests"] == 400 and summary["seed"] == 3


def test_simulate_without_out_writes_nothing(scenario, tmp_path, capsys):
    assert main(["simulate", str(scenario)]) == 0
    assert "success" in capsys.readouterr().out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scenario.yaml"]


def test_malformed_scenario_exits_2_naming_the_field(scenario, capsys):
    data = yaml.safe_load(scenario.read_text())
    data["channels"][1]["behavior"]["max_concurrency"] = -3
    scenario.write_text(yaml.safe_dump(data))
    assert main(["simulate", str(scenario)]) == 2
    err = capsys.readouterr().err
    assert "channels[1].behavior.max_concurrency" in err and "Traceback" not in err


def test_invalid_yaml_and_missing_file_exit_2(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("channels: [\n")
    assert main(["simulate", str(bad)]) == 2
    assert main(["simulate", str(tmp_path / "nope.yaml")]) == 2
    assert "configuration error" in capsys.readouterr().err


def test_scenario_without_workload_exits_2(tmp_path, capsys):
    p = tmp_path / "noworkload.yaml"
    p.write_text(yaml.safe_dump({"channels": [{"name": "a", "models": ["m"]}]}))
    assert main(["simulate", str(p)]) == 2
    assert "workload" in capsys.readouterr().err


def test_simulate_flags_requests_step_explain(scenario, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["simulate", str(scenario), "--requests", "150", "--step", "1", "--explain", "--out", str(out)]) == 0
    capsys.readouterr()
    assert len(pd.read_csv(out / "requests.csv")) == 150
    att = pd.read_csv(out / "attempts.csv")
    assert json.loads(att.decision.iloc[0])["chosen"] == att.channel.iloc[0]
    ts = pd.read_csv(out / "timeseries.csv")
    assert set(ts.channel) == {"fast", "standard", "flaky"}
    assert ts[ts.channel == "fast"].time.diff().dropna().eq(1.0).all()
    assert main(["simulate", str(scenario), "--step", "0", "--out", str(tmp_path / "none")]) == 0
    assert not (tmp_path / "none" / "timeseries.csv").exists()


@pytest.mark.parametrize("flags", [["--step", "soon"], ["--step", "-1"], ["--requests", "0"]])
def test_bad_simulate_flags_exit_2(scenario, capsys, flags):
    assert main(["simulate", str(scenario), *flags]) == 2
    err = capsys.readouterr().err
    assert flags[0] in err and "Traceback" not in err


def test_the_example_scenarios_run(capsys):
    for name in ("basic", "incident", "replay", "tenants"):
        assert main(["simulate", str(ROOT / "examples" / f"{name}.yaml"), "--requests", "300", "--step", "0"]) == 0
    printed = capsys.readouterr().out
    assert "cost" in printed and "project" in printed


def test_a_step_too_fine_is_refused_before_the_run(scenario, capsys):
    # It used to sample without end, memory growing, rather than finish.
    assert main(["simulate", str(scenario), "--requests", "50", "--step", "1e-9"]) == 2
    assert "--step" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["simulate", "report"])
def test_an_out_that_cannot_be_a_directory_is_refused_first(scenario, tmp_path, capsys, command):
    afile = tmp_path / "afile"
    afile.write_text("x")
    target = [str(scenario), "--requests", "20"] if command == "simulate" else [str(tmp_path)]
    assert main([command, *target, "--out", str(afile)]) == 2
    err = capsys.readouterr().err
    assert "--out" in err and "not a directory" in err and "Traceback" not in err
    assert main([command, *target, "--out", str(afile / "below")]) == 2
    assert "cannot create" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["serve", "--port", "99999"], ["serve", "--port", "0"], ["serve", "--log-level", "bogus"],
                                  ["mock-provider", "--port", "70000"], ["mock-provider", "--port", "1", "--log-level", "x"]])
def test_server_flags_out_of_range_are_usage_errors(argv, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2 and f"argument {argv[-2]}" in capsys.readouterr().err


def test_a_series_that_would_run_past_its_bound_ends_with_a_warning(scenario, capsys, monkeypatch):
    # The step is checked against the arrivals' span; requests that run on after the last arrival
    # end the series at the bound, said rather than silently cut.
    import axonsim.sim.driver as drv

    monkeypatch.setattr(drv, "MAX_SAMPLES", 50)
    with pytest.warns(UserWarning, match="time series ends"):
        assert main(["simulate", str(scenario), "--requests", "1", "--step", "0.001"]) == 0


def test_report_checks_its_default_directory_too(tmp_path, capsys):
    (tmp_path / "report").write_text("a file where the report directory goes")
    assert main(["report", str(tmp_path)]) == 2
    assert "not a directory" in capsys.readouterr().err


def test_report_makes_nothing_in_a_directory_that_is_not_results(tmp_path, capsys):
    (tmp_path / "readme.txt").write_text("hi")
    assert main(["report", str(tmp_path)]) == 2
    assert not (tmp_path / "report").exists()


def test_requests_flag_replays_at_most_the_workloads_requests(scenario, tmp_path, capsys):
    # "replay only the workload's first N requests": 1000 of a 400-request workload is 400
    out = tmp_path / "out"
    assert main(["simulate", str(scenario), "--requests", "1000", "--out", str(out)]) == 0
    capsys.readouterr()
    assert len(pd.read_csv(out / "requests.csv")) == 400


@pytest.mark.parametrize(("change", "what"), [
    ({"duration": 0.000001}, "produces no requests"),  # a report of nothing used to crash
    ({"arrival": {"process": "poisson", "rate": float("inf")}}, "rate"),
    ({"requests": 1_000_000_000}, "requests"),  # more than a machine's memory holds
    ({"arrival": {"process": "poisson", "rate": 1, "ramp": {"to": float("inf"), "over": 10}}}, "ramp.to"),  # hung
    ({"requests": None, "arrival": {"process": "poisson", "rate": 1e4}, "duration": 1200}, "10,000,000"),
])
def test_a_workload_that_cannot_run_is_a_clear_error(scenario, tmp_path, capsys, change, what):
    data = yaml.safe_load(scenario.read_text())
    data["workload"].update(change)
    data["workload"] = {k: v for k, v in data["workload"].items() if v is not None}
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(data))
    assert main(["simulate", str(bad), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert what in err and "Traceback" not in err


def test_the_summary_records_the_scenario_as_run_in_valid_json(scenario, tmp_path, capsys):
    data = yaml.safe_load(scenario.read_text())
    data["channels"][0]["behavior"]["incidents"] = [{"start": 5, "end": float("inf"), "status": 503}]
    endless = tmp_path / "endless.yaml"
    endless.write_text(yaml.safe_dump(data))
    out = tmp_path / "out"
    assert main(["simulate", str(endless), "--requests", "150", "--out", str(out)]) == 0
    capsys.readouterr()

    def strict(c: str) -> None:
        raise ValueError(c)

    summary = json.loads((out / "summary.json").read_text(), parse_constant=strict)  # no Infinity
    assert summary["scenario"]["workload"]["requests"] == 150  # as run, not the config's 400
    assert summary["scenario"]["incidents"][0]["end"] is None
    assert main(["report", str(out), "--out", str(tmp_path / "r")]) == 0
    assert "t=5–∞ s" in (tmp_path / "r" / "report.md").read_text()
