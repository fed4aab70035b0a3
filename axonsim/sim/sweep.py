"""Sweeps: run a grid of scenarios × strategies × seeds in parallel processes and summarise it with confidence intervals.

    result = sweep({"steady": load_config("steady.yaml")}, ["round_robin", "composite"], [1, 2, 3])
    result.summary        # one row per cell: (scenario, strategy, seed) and its SimResult.summary()
    result.aggregate()    # one row per (scenario, strategy): mean and 95 % CI half-width across seeds
    result.to_files("out/sweep", requests=True)

Determinism: a cell is `simulate(scenario with routing.strategy = strategy, seed=seed)`, so its
numbers depend only on (scenario, strategy, seed) — not on the worker that ran it, the number of
workers or the completion order; rows are put back in grid order. Cells that share a seed share
their arrivals (common random numbers), which makes differences between strategies sharper.

Worker processes are started with "spawn", not fork: forking a process that already runs threads
(a Jupyter kernel, tqdm's monitor) can deadlock the child; spawn costs each worker one import of
axonsim (about a second), which a sweep worth parallelising amortises.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import re
import time
from collections.abc import Iterable, Mapping
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm import tqdm  # not tqdm.auto: in a notebook it warns without ipywidgets, and the bar is off there anyway

from axonsim.config import STRATEGIES, Config
from axonsim.sim.driver import simulate
from axonsim.sim.results import SimResult
from axonsim.sim.workload import require_workload

Cell = tuple[str, str, int]  # (scenario, strategy, seed)
KEYS = ["scenario", "strategy", "seed"]
MANIFEST = "sweep.json"
MANIFEST_KIND = "axonsim.sweep"

# Metrics that lead the summary in this order; any other numeric summary field follows (so fields
# the simulator adds later, such as cost, flow through without a change here).
LEADING = ["requests", "duration", "success_rate", "error_rate", "client_429_rate",
           "latency_p50", "latency_p95", "latency_p99", "ttft_p50", "ttft_p95", "ttft_p99",
           "attempts_per_request", "upstream_attempts", "upstream_error_rate", "upstream_429_rate"]


# --------------------------------------------------------------------------------------------------
# Student t


def t_interval(confidence: float, df: int) -> float:
    """The two-sided Student t quantile: P(|T_df| <= t) = confidence (t ≈ 4.303 for 95 %, df = 2).

    Exact for integer df through Abramowitz & Stegun 26.7.3/26.7.4, inverted by bisection, so scipy
    is not a dependency."""
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if df < 1:
        return math.nan
    lo, hi = 0.0, 1.0
    while _t_central(hi, df) < confidence:
        hi *= 2
    for _ in range(200):
        mid = (lo + hi) / 2
        if _t_central(mid, df) < confidence:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-12 * hi:
            break
    return (lo + hi) / 2


def _t_central(t: float, df: int) -> float:
    """P(|T| <= t) for Student t with integer df (A&S 26.7.3 odd df, 26.7.4 even df)."""
    theta = math.atan(t / math.sqrt(df))
    s, c = math.sin(theta), math.cos(theta)
    c2 = c * c
    if df % 2 == 1:
        term, acc = c, 0.0
        if df > 1:
            acc = c
            for k in range(3, df - 1, 2):  # coefficients 2/3, 2·4/(3·5), ...
                term *= c2 * (k - 1) / k
                acc += term
        return (2 / math.pi) * (theta + s * acc)
    term, acc = 1.0, 1.0
    for k in range(2, df - 1, 2):  # coefficients 1/2, 1·3/(2·4), ...
        term *= c2 * (k - 1) / k
        acc += term
    return s * acc


# --------------------------------------------------------------------------------------------------
# Cells


def flatten_summary(summary: Mapping[str, Any]) -> dict[str, float]:
    """A SimResult.summary() as flat numeric columns: dicts become `<name>_<key>` (share_fast),
    None becomes NaN, non-numeric fields are left out."""
    row: dict[str, float] = {}
    for k, v in summary.items():
        if k == "seed":
            continue
        if isinstance(v, Mapping):
            for sub, x in v.items():
                if _numeric(x):
                    row[f"{k}_{sub}"] = math.nan if x is None else float(x)
        elif _numeric(v):
            row[k] = math.nan if v is None else float(v)
    return row


def _numeric(v: Any) -> bool:
    return v is None or (isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool))


def with_strategy(config: Config, strategy: str) -> Config:
    """A copy of `config` routed by `strategy` (the scenario object itself is never changed)."""
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; choose from: {', '.join(STRATEGIES)}")
    cfg = config.model_copy(deep=True)
    cfg.routing.strategy = strategy
    return cfg


def _run_cell(config: Config, seed: int, requests: int | None, keep: bool) -> tuple[dict[str, Any], pd.DataFrame | None]:
    """One cell, in a worker: the summary and (if kept) the request table travel back, not the
    SimResult, whose column recorder is several times larger."""
    result = simulate(config, seed=seed, requests=requests)
    return result.summary(), (result.requests if keep else None)


def scenario_info(config: Config) -> dict[str, Any]:
    """What a report needs to know about a scenario: channel names, scheduled incidents, outage
    processes, the workload. Built from an allowlist of fields so that no API key, admin key or
    store URL of the scenario ever reaches a results directory."""
    incidents = []
    outages = {}
    for ch in config.channels:
        for inc in ch.behavior.incidents:
            incidents.append({"channel": ch.name, **inc.model_dump(mode="json")})
        if ch.behavior.outages is not None:
            outages[ch.name] = ch.behavior.outages.model_dump(mode="json")
    return {
        "channels": [ch.name for ch in config.channels],
        "strategy": config.routing.strategy,
        "incidents": incidents,
        "outages": outages,
        "workload": config.workload.model_dump(mode="json") if config.workload is not None else None,
    }


# --------------------------------------------------------------------------------------------------
# The result


@dataclass
class SweepResult:
    """A finished sweep: `summary` has one row per cell in grid order (scenario, strategy, seed,
    then SimResult.summary() flattened: share_<channel>, attempt_share_<channel>); `requests` holds
    each cell's SimResult.requests when kept; `scenarios` describes each scenario (scenario_info)."""

    summary: pd.DataFrame
    scenarios: dict[str, dict[str, Any]]
    strategies: list[str]
    seeds: list[int]
    requests: dict[Cell, pd.DataFrame] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)  # wall time, workers: not part of the numbers

    @property
    def metrics(self) -> list[str]:
        """The numeric columns that aggregate() summarises."""
        return [c for c in self.summary.columns if c not in KEYS]

    def aggregate(self, confidence: float = 0.95) -> pd.DataFrame:
        """One row per (scenario, strategy): `n_seeds`, then for each metric `<m>_mean` and `<m>_ci`
        (half-width of the Student t interval at `confidence` across seeds: mean ± ci).

        With a single seed (or a single non-NaN value) the half-width is NaN, not 0: one seed says
        nothing about the spread across seeds, and a zero would claim certainty. It is 0 only when
        several seeds agree exactly."""
        rows = []
        metrics = self.metrics
        for (scenario, strategy), g in self.summary.groupby(["scenario", "strategy"], sort=False):
            row: dict[str, Any] = {"scenario": scenario, "strategy": strategy, "n_seeds": len(g)}
            for m in metrics:
                x = g[m].to_numpy(dtype=np.float64)
                x = x[~np.isnan(x)]
                n = x.size
                row[f"{m}_mean"] = float(x.mean()) if n else math.nan
                row[f"{m}_ci"] = (t_interval(confidence, n - 1) * float(x.std(ddof=1)) / math.sqrt(n)
                                  if n >= 2 else math.nan)
            rows.append(row)
        return pd.DataFrame(rows)

    def cell(self, scenario: str, strategy: str, seed: int) -> pd.DataFrame:
        """One cell's request table (kept by sweep(keep_requests=True), the default)."""
        try:
            return self.requests[(scenario, strategy, seed)]
        except KeyError:
            raise KeyError(f"no request table for cell {scenario}/{strategy}/seed {seed}") from None

    def to_files(self, directory: str | Path, format: str = "csv", requests: bool = False) -> list[Path]:
        """Write summary.<fmt> (per cell), aggregate.<fmt> (mean and 95 % CI), sweep.json (the grid
        and scenario descriptions) and, if `requests`, one Parquet request table per cell under
        requests/. Returns the paths written."""
        if format not in ("csv", "parquet"):
            raise ValueError(f"format must be 'csv' or 'parquet', not {format!r}")
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        paths = []
        for name, df in (("summary", self.summary), ("aggregate", self.aggregate())):
            p = out / f"{name}.{format}"
            if format == "csv":
                df.to_csv(p, index=False)
            else:
                df.to_parquet(p, index=False)
            paths.append(p)
        cells = []
        if requests:
            for (scenario, strategy, seed), df in self.requests.items():
                rel = Path("requests") / _safe(scenario) / _safe(strategy) / f"seed{seed}.parquet"
                (out / rel).parent.mkdir(parents=True, exist_ok=True)
                df.to_parquet(out / rel, index=False)
                paths.append(out / rel)
                # The manifest maps cells to files, so odd scenario names need no reversible escaping.
                cells.append({"scenario": scenario, "strategy": strategy, "seed": seed, "requests": rel.as_posix()})
        manifest = {
            "kind": MANIFEST_KIND,
            "version": 1,
            "summary": f"summary.{format}",
            "aggregate": f"aggregate.{format}",
            "scenarios": self.scenarios,
            "strategies": self.strategies,
            "seeds": self.seeds,
            "requests_per_cell": self.meta.get("requests"),
            "cells": cells,
        }
        p = out / MANIFEST
        p.write_text(json.dumps(manifest, indent=2) + "\n")
        paths.append(p)
        return paths

    @classmethod
    def from_files(cls, directory: str | Path) -> SweepResult:
        """Read a directory written by to_files. Raises ValueError naming the file on a bad one."""
        d = Path(directory)
        mpath = d / MANIFEST
        try:
            manifest = json.loads(mpath.read_text())
        except OSError as exc:
            raise ValueError(f"{mpath}: cannot read: {exc.strerror}") from None
        except json.JSONDecodeError as exc:
            raise ValueError(f"{mpath}: not valid JSON: {exc}") from None
        if not isinstance(manifest, dict) or manifest.get("kind") != MANIFEST_KIND:
            raise ValueError(f"{mpath}: not a sweep manifest (kind {MANIFEST_KIND!r} expected)")
        try:
            summary = _read_table(d / manifest["summary"], {"scenario": str, "strategy": str})
            requests = {(c["scenario"], c["strategy"], int(c["seed"])): _read_table(d / c["requests"])
                        for c in manifest.get("cells", [])}
            return cls(summary=summary, scenarios=dict(manifest["scenarios"]),
                       strategies=list(manifest["strategies"]), seeds=[int(s) for s in manifest["seeds"]],
                       requests=requests, meta={"requests": manifest.get("requests_per_cell"), "source": str(d)})
        except (KeyError, TypeError) as exc:
            raise ValueError(f"{mpath}: missing or malformed field {exc}") from None

    @classmethod
    def from_sim(cls, result: SimResult, scenario: str = "run") -> SweepResult:
        """A single simulation as a one-cell sweep (what the report renders)."""
        strategy = result.config.routing.strategy
        return cls._from_cells(
            {(scenario, strategy, result.seed): (result.summary(), result.requests)},
            {scenario: scenario_info(result.config)}, [strategy], [result.seed], {})

    @classmethod
    def _from_cells(cls, cells: Mapping[Cell, tuple[Mapping[str, Any], pd.DataFrame | None]],
                    scenarios: dict[str, dict[str, Any]], strategies: list[str], seeds: list[int],
                    meta: dict[str, Any]) -> SweepResult:
        rows = [{"scenario": sc, "strategy": st, "seed": seed, **flatten_summary(s)}
                for (sc, st, seed), (s, _) in cells.items()]
        summary = pd.DataFrame(rows)
        # Known metrics first, then whatever else the simulator reports (cost, shares) in its order.
        rest = [c for c in summary.columns if c not in KEYS and c not in LEADING]
        summary = summary[KEYS + [c for c in LEADING if c in summary.columns] + rest]
        summary["seed"] = summary["seed"].astype(np.int64)
        requests = {cell: df for cell, (_, df) in cells.items() if df is not None}
        return cls(summary=summary, scenarios=scenarios, strategies=strategies, seeds=seeds,
                   requests=requests, meta=meta)


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name) or "_"


def _read_table(path: Path, dtype: dict[str, Any] | None = None) -> pd.DataFrame:
    if path.suffix == ".parquet":
        return pd.read_parquet(path)
    return pd.read_csv(path, dtype=dtype)


# --------------------------------------------------------------------------------------------------
# The sweep


def sweep(scenarios: Mapping[str, Config], strategies: Iterable[str], seeds: Iterable[int],
          requests: int | None = None, workers: int | None = None, progress: bool = True,
          *, keep_requests: bool = True) -> SweepResult:
    """Simulate every (scenario, strategy, seed) of the grid and collect the results.

    `requests` caps each cell's workload (default: each scenario's own `workload.requests`);
    `workers` processes run the cells (default os.cpu_count(); 1 runs them in this process);
    `progress` shows a tqdm bar when stderr is a terminal; `keep_requests` keeps each cell's request
    table (the report's latency CDFs and channel share over time need it).
    """
    strategies = list(strategies)
    seeds = [int(s) for s in seeds]
    if not scenarios or not strategies or not seeds:
        raise ValueError("sweep needs at least one scenario, one strategy and one seed")
    for what, items in (("strategies", strategies), ("seeds", seeds), ("scenarios", list(scenarios))):
        if len(set(items)) != len(items):
            raise ValueError(f"sweep: {what} must not repeat: {items}")
    grid: dict[Cell, Config] = {}
    for sc, config in scenarios.items():
        require_workload(config)  # fail here, naming the problem, rather than in every worker
        for st in strategies:
            cfg = with_strategy(config, st)
            for seed in seeds:
                grid[(sc, st, seed)] = cfg
    n_workers = min(len(grid), workers if workers is not None else (os.cpu_count() or 1))
    if n_workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")

    t0 = time.perf_counter()
    done: dict[Cell, tuple[dict[str, Any], pd.DataFrame | None]] = {}
    # disable=None is tqdm's own "off unless stderr is a terminal".
    with tqdm(total=len(grid), desc="sweep", unit="run", disable=None if progress else True) as bar:
        if n_workers == 1:
            for cell, cfg in grid.items():
                done[cell] = _run_cell(cfg, cell[2], requests, keep_requests)
                bar.update()
        else:
            ctx = multiprocessing.get_context("spawn")
            pool = ProcessPoolExecutor(max_workers=n_workers, mp_context=ctx)
            try:
                futures: dict[Future[Any], Cell] = {
                    pool.submit(_run_cell, cfg, cell[2], requests, keep_requests): cell for cell, cfg in grid.items()}
                for fut in as_completed(futures):
                    cell = futures[fut]
                    try:
                        done[cell] = fut.result()
                    except Exception as exc:
                        exc.add_note(f"in sweep cell scenario={cell[0]!r} strategy={cell[1]!r} seed={cell[2]}")
                        raise
                    bar.set_postfix_str("/".join(map(str, cell)), refresh=False)
                    bar.update()
            finally:
                # On an error or Ctrl-C, drop the cells not started rather than finishing the grid.
                pool.shutdown(wait=True, cancel_futures=True)
    meta = {"requests": requests, "workers": n_workers, "wall_time": time.perf_counter() - t0}
    ordered = {cell: done[cell] for cell in grid}  # grid order, whatever the completion order
    return SweepResult._from_cells(ordered, {sc: scenario_info(cfg) for sc, cfg in scenarios.items()},
                                   strategies, seeds, meta)
