"""Matplotlib figures of simulation results: latency CDFs, metric bars with confidence intervals, channel share over time.

Figures are built with the object API (matplotlib.figure.Figure on an Agg canvas), never pyplot:
pyplot's global figure registry would keep every report figure alive, and forcing a backend would
break a notebook's inline display. Each function returns its Figure; pass `ax` to draw into axes of
your own instead.
"""

from __future__ import annotations

import io
import math
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from axonsim.report.load import Results, load_results
from axonsim.sim.sweep import SweepResult

FAILED = "failed"
_PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
            "#bcbd22", "#17becf"]
_FAILED_COLOR = "#c7c7c7"

# What a metric is called on an axis, and the factor from its unit in the summary.
LABELS: dict[str, tuple[str, float]] = {
    "success_rate": ("success rate (%)", 100.0),
    "error_rate": ("error rate (%)", 100.0),
    "client_429_rate": ("client 429 rate (%)", 100.0),
    "upstream_error_rate": ("upstream error rate (%)", 100.0),
    "upstream_429_rate": ("upstream 429 rate (%)", 100.0),
    "attempts_per_request": ("upstream attempts per request", 1.0),
    "latency_p50": ("p50 latency (s)", 1.0),
    "latency_p95": ("p95 latency (s)", 1.0),
    "latency_p99": ("p99 latency (s)", 1.0),
    "ttft_p50": ("p50 TTFT (s)", 1.0),
    "ttft_p95": ("p95 TTFT (s)", 1.0),
    "ttft_p99": ("p99 TTFT (s)", 1.0),
}


def new_figure(width: float, height: float) -> Figure:
    """A Figure on an Agg canvas, independent of pyplot and of the session's backend."""
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def to_png(fig: Figure, dpi: int = 100) -> bytes:
    """The figure as PNG bytes."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def strategy_colors(strategies: list[str]) -> dict[str, str]:
    """One colour per strategy, stable across every figure of a report."""
    return {s: _PALETTE[i % len(_PALETTE)] for i, s in enumerate(strategies)}


def _sweep(results: Results) -> SweepResult:
    return load_results(results)


def _one_scenario(sw: SweepResult, scenario: str | None) -> str:
    names = list(sw.scenarios)
    if scenario is None:
        if len(names) != 1:
            raise ValueError(f"several scenarios ({', '.join(names)}): pass scenario=")
        return names[0]
    if scenario not in sw.scenarios:
        raise ValueError(f"no scenario {scenario!r}; the results have: {', '.join(names)}")
    return scenario


def _grid(n: int, ncols: int, w: float, h: float) -> tuple[Figure, list[Axes]]:
    ncols = max(1, min(ncols, n))
    nrows = math.ceil(n / ncols)
    fig = new_figure(w * ncols, h * nrows)
    axes = list(fig.subplots(nrows, ncols, squeeze=False).ravel())
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, axes[:n]


# --------------------------------------------------------------------------------------------------
# Latency CDFs


def plot_latency_cdf(results: Results, scenario: str | None = None, *, metric: str = "latency",
                     ax: Axes | None = None) -> Figure:
    """Empirical CDF of `metric` ("latency" or "ttft") of successful requests, one line per strategy
    (seeds pooled), one panel per scenario (or only `scenario`). Log time axis: tails matter."""
    sw = _sweep(results)
    scenarios = [_one_scenario(sw, scenario)] if scenario is not None or ax is not None else list(sw.scenarios)
    if ax is None:
        fig, axes = _grid(len(scenarios), 2, 6.0, 3.8)
    else:
        fig, axes = ax.get_figure(), [ax]  # type: ignore[assignment]
    colors = strategy_colors(sw.strategies)
    for sc, a in zip(scenarios, axes, strict=True):
        drawn = False
        for st in sw.strategies:
            values = _pooled(sw, sc, st, metric)
            if values.size == 0:
                continue
            x, y = _ecdf(values)
            a.plot(x, y, color=colors[st], label=st, lw=1.4)
            drawn = True
        if not drawn:
            a.text(0.5, 0.5, "no request tables kept", ha="center", va="center", transform=a.transAxes)
        else:
            a.set_xscale("log")
            a.legend(fontsize=8, loc="lower right")
        for q in (0.5, 0.99):
            a.axhline(q, color="#999999", lw=0.6, ls=":")
        a.set_ylim(0, 1.005)
        a.set_xlabel(f"{'time to first token' if metric == 'ttft' else 'latency'} (s, log scale)")
        a.set_ylabel("share of successful requests")
        a.set_title(f"{sc}: {metric} CDF")
        a.grid(True, which="both", alpha=0.25)
    return fig  # type: ignore[return-value]


def _pooled(sw: SweepResult, scenario: str, strategy: str, metric: str) -> np.ndarray:
    parts = []
    for seed in sw.seeds:
        df = sw.requests.get((scenario, strategy, seed))
        if df is None or metric not in df.columns:
            continue
        ok = df["ok"].to_numpy(dtype=bool)
        parts.append(df[metric].to_numpy(dtype=np.float64)[ok])
    if not parts:
        return np.empty(0)
    v = np.concatenate(parts)
    return v[np.isfinite(v) & (v > 0)]  # log axis: a zero would vanish anyway


def _ecdf(values: np.ndarray, points: int = 2000) -> tuple[np.ndarray, np.ndarray]:
    """The ECDF, thinned to `points` quantiles: a million-point line adds file size, not detail."""
    x = np.sort(values)
    y = np.arange(1, x.size + 1) / x.size
    if x.size > points:
        idx = np.unique(np.concatenate([np.linspace(0, x.size - 1, points).astype(np.int64),
                                        np.arange(max(0, x.size - points // 10), x.size)]))  # keep the tail dense
        x, y = x[idx], y[idx]
    return x, y


# --------------------------------------------------------------------------------------------------
# Bars with confidence intervals


def plot_metric(results: Results, metric: str, *, ax: Axes | None = None, confidence: float = 0.95,
                zoom: bool | None = None) -> Figure:
    """Bars of `metric`'s mean across seeds, grouped by scenario, one bar per strategy, with
    Student-t error bars at `confidence` (none with a single seed). `zoom` starts the axis near the
    data instead of at 0 (default: for success_rate, whose differences live in the last percent)."""
    sw = _sweep(results)
    if metric not in sw.summary.columns:
        raise ValueError(f"no metric {metric!r} in the summary; choose from: {', '.join(sw.metrics)}")
    agg = sw.aggregate(confidence)
    label, scale = LABELS.get(metric, (metric, 1.0))
    zoom = metric == "success_rate" if zoom is None else zoom
    scenarios, strategies = list(sw.scenarios), sw.strategies
    own = ax is None
    if ax is None:
        fig = new_figure(max(6.0, 1.0 + 0.35 * len(scenarios) * len(strategies)), 4.0)
        ax = fig.subplots()
    else:
        fig = ax.get_figure()  # type: ignore[assignment]
    colors = strategy_colors(strategies)
    width = 0.8 / len(strategies)
    lows, highs = [], []
    any_ci = False
    for j, st in enumerate(strategies):
        rows = agg[agg["strategy"] == st].set_index("scenario").reindex(scenarios)
        mean = rows[f"{metric}_mean"].to_numpy(dtype=np.float64) * scale
        ci = rows[f"{metric}_ci"].to_numpy(dtype=np.float64) * scale
        any_ci = any_ci or bool(np.isfinite(ci).any())
        err = np.where(np.isfinite(ci), ci, 0.0)  # matplotlib draws NaN error bars as nothing, noisily
        x = np.arange(len(scenarios)) + (j - (len(strategies) - 1) / 2) * width
        ax.bar(x, mean, width, yerr=err, color=colors[st], label=st, capsize=2, error_kw={"lw": 0.8})
        lows.extend((mean - err)[np.isfinite(mean)])
        highs.extend((mean + err)[np.isfinite(mean)])
    ax.set_xticks(np.arange(len(scenarios)), scenarios)
    ax.set_ylabel(label)
    n = len(sw.seeds)
    ax.set_title(f"{label}: mean of {n} seed{'s' if n != 1 else ''}"
                 + (f", {confidence:.0%} CI" if any_ci else " (no CI: one seed)")
                 + (" — axis does not start at 0" if zoom else ""))
    if zoom and lows:
        lo, hi = min(lows), max(highs)
        pad = 0.15 * (hi - lo) or 0.05 * abs(hi) or 0.1
        top = hi + pad
        if metric.endswith("_rate") and scale == 100.0:
            top = min(top, 100.0 + pad / 3)
        ax.set_ylim(lo - pad, top)
    if own:  # below the axes: inside, it would hide the bars it names
        fig.legend(loc="outside lower center", ncols=min(8, len(strategies)), fontsize=8)
    else:
        ax.legend(fontsize=8, ncols=min(4, len(strategies)), loc="best")
    ax.grid(True, axis="y", alpha=0.25)
    return fig


def plot_retry_amplification(results: Results, *, ax: Axes | None = None) -> Figure:
    """Upstream attempts per client request (1.0 = no retries), per strategy and scenario, with CIs."""
    return plot_metric(results, "attempts_per_request", ax=ax, zoom=True)


# --------------------------------------------------------------------------------------------------
# Channel share over time


def plot_channel_share(results: Results, scenario: str | None = None, *, seed: int | None = None,
                       strategies: list[str] | None = None, bin_seconds: float | None = None,
                       ax: Axes | None = None) -> Figure:
    """Which channel served the requests arriving in each time bin (stacked shares; failed requests
    in grey), one panel per strategy, for one seed (default: the first). Scheduled incidents of the
    scenario are shaded in the colour of their channel."""
    sw = _sweep(results)
    sc = _one_scenario(sw, scenario)
    seed = sw.seeds[0] if seed is None else seed
    strategies = list(sw.strategies if strategies is None else strategies)
    if ax is not None and len(strategies) != 1:
        raise ValueError("with ax=, pass exactly one strategy in strategies=")
    info = sw.scenarios.get(sc) or {}
    channels = [str(c) for c in info.get("channels") or []]
    if ax is None:
        one = len(strategies) == 1  # a lone panel gets the width of two: time needs room
        fig, axes = _grid(len(strategies), 4 if len(strategies) > 4 else 2, 9.0 if one else 4.6, 3.2 if one else 2.8)
    else:
        fig, axes = ax.get_figure(), [ax]  # type: ignore[assignment]
    for st, a in zip(strategies, axes, strict=True):
        df = sw.requests.get((sc, st, seed))
        if df is None or len(df) == 0:
            a.text(0.5, 0.5, "no request table kept" if df is None else "no requests", ha="center", va="center",
                   transform=a.transAxes)
            a.set_title(f"{st} (seed {seed})", fontsize=9)
            continue
        table, width = share_over_time(df, bin_seconds)
        for c in table.columns:
            if c != FAILED and c not in channels:
                channels.append(str(c))  # a channel the scenario description did not list
        colors = {c: _PALETTE[i % len(_PALETTE)] for i, c in enumerate(channels)}
        cols = [c for c in channels if c in table.columns] + ([FAILED] if FAILED in table.columns else [])
        t = table.index.to_numpy(dtype=np.float64) * width + width / 2
        a.stackplot(t, [table[c].to_numpy() for c in cols], labels=cols,
                    colors=[colors.get(c, _FAILED_COLOR) if c != FAILED else _FAILED_COLOR for c in cols],
                    alpha=0.9, lw=0)
        _shade_incidents(a, info.get("incidents") or [])
        a.set_xlim(0, t[-1] + width / 2 if t.size else 1)
        a.set_ylim(0, 1)
        a.set_title(f"{st} (seed {seed})", fontsize=9)
        a.set_xlabel(f"arrival time (s), {width:g}-s bins", fontsize=8)
        a.set_ylabel("share of requests", fontsize=8)
        a.tick_params(labelsize=7)
    if ax is None:
        handles, labels = axes[0].get_legend_handles_labels()
        if handles:
            fig.legend(handles, labels, loc="outside lower center", ncols=min(8, len(labels)), fontsize=8)
        fig.suptitle(f"{sc}: channel share over time", fontsize=10)
    return fig  # type: ignore[return-value]


def share_over_time(requests: pd.DataFrame, bin_seconds: float | None = None) -> tuple[pd.DataFrame, float]:
    """Shares per arrival-time bin of each serving channel and of failed requests (rows sum to 1),
    indexed by bin number, and the bin width in seconds (default: about 60 bins, rounded)."""
    arrival = requests["arrival"].to_numpy(dtype=np.float64)
    span = float(np.nanmax(arrival)) if arrival.size else 1.0
    width = bin_seconds if bin_seconds is not None else _nice_width(span / 60)
    if not width > 0:
        raise ValueError(f"bin_seconds must be > 0, got {bin_seconds}")
    ok = requests["ok"].to_numpy(dtype=bool)
    served = requests["channel"].astype(object).to_numpy()
    label = np.where(ok, served, FAILED).astype(str)
    b = np.floor(arrival / width).astype(np.int64)
    table = pd.crosstab(b, label, normalize="index")
    full = np.arange(int(b.max()) + 1 if b.size else 1)
    return table.reindex(full).ffill().fillna(0.0), width


def _nice_width(raw: float) -> float:
    for w in (1, 2, 5, 10, 15, 20, 30, 60, 120, 300, 600, 900, 1800, 3600):
        if raw <= w:
            return float(w)
    return float(math.ceil(raw / 3600) * 3600)


def _shade_incidents(ax: Axes, incidents: list[dict[str, Any]]) -> None:
    for inc in incidents:
        try:
            start = float(inc["start"])
            # No end (summary.json writes an endless incident's `inf` as null): to the plot's edge
            end = float(inc["end"]) if inc.get("end") is not None else max(ax.get_xlim()[1], start)
        except (KeyError, TypeError, ValueError):
            continue
        ch = str(inc.get("channel", ""))
        # A neutral hatch: a tinted one would read as the channel's own share area.
        ax.axvspan(start, end, facecolor="none", edgecolor="black", hatch="//", lw=0.0, alpha=0.3)
        ax.axvline(start, color="black", lw=0.8, ls="--")
        ax.axvline(end, color="black", lw=0.8, ls="--")
        ax.text((start + end) / 2, 0.97, f"{ch}: {incident_label(inc)}", ha="center", va="top", fontsize=7,
                bbox={"facecolor": "white", "alpha": 0.8, "lw": 0, "pad": 1})


def incident_label(inc: dict[str, Any]) -> str:
    """A scheduled incident in a few words: "503", "TTFT ×5", "+10 % errors"."""
    parts = []
    if inc.get("status") is not None:
        parts.append(str(inc["status"]))
    factor = inc.get("ttft_factor")
    if factor is not None and factor != 1:
        parts.append(f"TTFT ×{factor:g}")
    rate = inc.get("error_rate")
    if rate:
        parts.append(f"+{100 * rate:g} % errors")
    return ", ".join(parts) or "incident"
