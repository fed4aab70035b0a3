"""The simulator's speed benchmark runs end to end at a small size and writes its figures (in a subprocess: it pins itself to one core)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import axonsim

ROOT = Path(__file__).resolve().parent.parent


def test_sim_throughput_writes_its_figures_and_verdicts(tmp_path):
    r = subprocess.run([sys.executable, "benchmarks/sim_throughput.py", "--requests", "4000", "--out", str(tmp_path)],
                       cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stderr
    report = json.loads((tmp_path / "sim_throughput.json").read_text())
    sim, base = report["simulator"], report["baseline_bare_simpy_mm1"]
    assert sim["requests"] == base["jobs"] == 4000
    assert 0.9 < sim["success_rate"] <= 1.0
    assert report["build"] == axonsim.BUILD
    scaled = report["target_seconds_per_million"] * base["seconds_per_million"] / 10.0
    assert abs(report["scaled_target_seconds_per_million"] - scaled) < 1e-9
    assert report["meets_scaled_target"] == (sim["seconds_per_million"] <= scaled)
    md = (tmp_path / "sim_throughput.md").read_text()
    assert "Scaled to this machine" in md and f"Build: `{axonsim.BUILD}`" in md
