"""Turn what a report is asked to render (a results directory, a SweepResult or a SimResult) into one SweepResult."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from axonsim.config import Config
from axonsim.sim.results import SimResult
from axonsim.sim.sweep import MANIFEST, SweepResult, scenario_info

Results = str | Path | SweepResult | SimResult


class ReportError(ValueError):
    """Results that cannot be reported on (missing, unreadable, not written by axonsim), with the path."""


def load_results(results: Results, scenario: Config | None = None, name: str | None = None) -> SweepResult:
    """`results` as a SweepResult. A single simulation (a SimResult or an `axonsim simulate --out`
    directory) becomes a one-cell sweep named `name` (default: the directory's name, or "run");
    `scenario`, when given, supplies its incident windows and strategy name, which a simulate
    directory does not record."""
    if isinstance(results, SweepResult):
        return results
    if isinstance(results, SimResult):
        return SweepResult.from_sim(results, name or "run")
    d = Path(results)
    if not d.exists():
        raise ReportError(f"{d}: no such results directory")
    if not d.is_dir():
        raise ReportError(f"{d}: not a directory (expected the output of `axonsim simulate --out` or a sweep's to_files)")
    if (d / MANIFEST).exists():
        try:
            return SweepResult.from_files(d)
        except (OSError, ValueError, ImportError) as exc:  # ImportError: Parquet without pyarrow
            raise ReportError(str(exc)) from None
    if (d / "summary.json").exists():
        return _load_simulation(d, scenario, name)
    raise ReportError(f"{d}: not a results directory: it has neither {MANIFEST} (a sweep) nor summary.json "
                      "(axonsim simulate --out)")


def _load_simulation(d: Path, scenario: Config | None, name: str | None) -> SweepResult:
    spath = d / "summary.json"
    try:
        summary: Any = json.loads(spath.read_text())
    except OSError as exc:
        raise ReportError(f"{spath}: cannot read: {exc.strerror}") from None
    except json.JSONDecodeError as exc:
        raise ReportError(f"{spath}: not valid JSON: {exc}") from None
    if not isinstance(summary, dict) or "success_rate" not in summary or "seed" not in summary:
        raise ReportError(f"{spath}: not a simulation summary (no success_rate or seed)")
    requests = _read_requests(d)
    label = name or d.resolve().name or "run"
    recorded = summary.get("scenario")
    if scenario is not None:
        info = scenario_info(scenario)
        if isinstance(recorded, dict):
            # The results say what was simulated: a scenario that describes something else would
            # relabel them (another strategy, other channels) without a word.
            for what in ("strategy", "channels"):
                if recorded.get(what) is not None and info.get(what) != recorded.get(what):
                    raise ReportError(f"--scenario: its {what} ({_listed(info.get(what))}) is not the one these "
                                      f"results were simulated with ({_listed(recorded.get(what))}); leave "
                                      "--scenario out: the results record their scenario")
    elif isinstance(recorded, dict):
        info = recorded  # what `simulate --out` writes beside its summary
    else:
        share = summary.get("share")
        info = {"channels": list(share) if isinstance(share, dict) else [], "incidents": [], "outages": {},
                "strategy": summary.get("strategy"), "workload": None}
    # An older simulate directory does not record its strategy; "?" says so rather than guessing.
    strategy = str(info.get("strategy") or "?")
    try:
        seed = int(summary["seed"])
    except (TypeError, ValueError):
        raise ReportError(f"{spath}: seed is not an integer: {summary['seed']!r}") from None
    return SweepResult._from_cells({(label, strategy, seed): (summary, requests)}, {label: info},
                                   [strategy], [seed], {"source": str(d)})


def _listed(v: Any) -> str:
    return ", ".join(map(str, v)) if isinstance(v, list) else str(v)


def _read_requests(d: Path) -> pd.DataFrame:
    for fmt in ("parquet", "csv"):
        p = d / f"requests.{fmt}"
        if not p.exists():
            continue
        try:
            df = pd.read_parquet(p) if fmt == "parquet" else pd.read_csv(p, dtype={"channel": str, "error": str})
        except (OSError, ValueError, ImportError) as exc:
            raise ReportError(f"{p}: cannot read the request table: {exc}") from None
        missing = {"arrival", "ok", "latency", "channel"} - set(df.columns)
        if missing:
            raise ReportError(f"{p}: not a request table: missing column(s) {', '.join(sorted(missing))}")
        return df
    raise ReportError(f"{d}: summary.json but no requests.parquet or requests.csv beside it")
