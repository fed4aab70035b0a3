"""Render results as report.md (figures as PNG files beside it) and a self-contained report.html (figures embedded)."""

from __future__ import annotations

import base64
import html
import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from axonsim.config import Config
from axonsim.report import plots
from axonsim.report.load import Results, load_results
from axonsim.sim.sweep import SweepResult

CONFIDENCE = 0.95

# The columns of the per-scenario tables: (metric, header, kind). kind: "pct" rates, "s" seconds,
# "x" plain numbers. Best values are marked for the metrics in _BETTER.
_COLUMNS = [
    ("success_rate", "success", "pct"),
    ("latency_p50", "p50 latency", "s"),
    ("latency_p99", "p99 latency", "s"),
    ("ttft_p99", "p99 TTFT", "s"),
    ("attempts_per_request", "attempts/req", "x"),
    ("upstream_error_rate", "upstream errors", "pct"),
    ("upstream_429_rate", "upstream 429", "pct"),
    ("client_429_rate", "client 429", "pct"),
]
# Not attempts/req: below 1 it means requests that failed without any attempt (no channel could
# take one), which is no achievement.
_BETTER = {"success_rate": max, "latency_p99": min}


# --------------------------------------------------------------------------------------------------
# A report is a list of blocks, rendered twice: to Markdown and to HTML.


@dataclass
class _Heading:
    level: int
    text: str


@dataclass
class _Para:
    text: str  # may hold **bold** and `code`


@dataclass
class _Table:
    header: list[str]
    rows: list[list[str]]
    collapsed: str | None = None  # a summary line: render folded (<details>)


@dataclass
class _Figure:
    name: str
    caption: str
    png: bytes


Block = _Heading | _Para | _Table | _Figure


def render_report(results: Results, out_dir: str | Path, *, scenario: Config | None = None,
                  title: str = "AxonSim simulation report") -> Path:
    """Write report.md, figures/*.png, report.html (self-contained), summary.csv and aggregate.csv
    into `out_dir`; return the path of report.html.

    `results`: a SweepResult, a SimResult, or a directory written by `axonsim simulate --out` or by
    SweepResult.to_files. `scenario` supplies a simulate directory's incident windows and strategy.
    Raises ReportError on results that cannot be read."""
    sw = load_results(results, scenario)
    out = Path(out_dir)
    (out / "figures").mkdir(parents=True, exist_ok=True)
    blocks = _blocks(sw, title, results)
    for b in blocks:
        if isinstance(b, _Figure):
            (out / "figures" / f"{b.name}.png").write_bytes(b.png)
    (out / "report.md").write_text(_markdown(blocks))
    page = out / "report.html"
    page.write_text(_html(blocks, title))
    sw.summary.to_csv(out / "summary.csv", index=False)
    sw.aggregate(CONFIDENCE).to_csv(out / "aggregate.csv", index=False)
    return page


def _blocks(sw: SweepResult, title: str, source: Results) -> list[Block]:
    agg = sw.aggregate(CONFIDENCE)
    n_sc, n_st, n_seed = len(sw.scenarios), len(sw.strategies), len(sw.seeds)
    src = sw.meta.get("source") or (str(source) if isinstance(source, (str, Path)) else "in-memory results")
    blocks: list[Block] = [
        _Heading(1, title),
        _Para(f"Source: `{src}`. Generated {datetime.now(UTC):%Y-%m-%d %H:%M} UTC by `axonsim report`."),
        _Para(f"Grid: {n_sc} scenario{_s(n_sc)} × {n_st} strateg{'ies' if n_st != 1 else 'y'} × {n_seed} "
              f"seed{_s(n_seed)} ({', '.join(map(str, sw.seeds))}) = {len(sw.summary)} run{_s(len(sw.summary))}. "
              + _ci_note(n_seed)),
        _Heading(2, "Scenarios"),
        _scenario_table(sw),
        _Heading(2, "Results by scenario"),
        _Para("Mean across seeds ± half-width of the confidence interval. Latencies are of successful "
              "requests, in seconds; attempts/req is retry amplification (upstream attempts per client "
              "request; below 1 when requests failed without any attempt). **Bold**: the best success rate and p99 "
              "latency of the scenario."),
    ]
    for sc in sw.scenarios:
        blocks.append(_Heading(3, sc))
        blocks.append(_scenario_results(sw, agg, sc))
    blocks.append(_Heading(2, "Success rate and p99 latency"))
    blocks.append(_fig("success_rate", plots.plot_metric(sw, "success_rate", confidence=CONFIDENCE),
                       "Success rate per strategy and scenario (error bars: confidence interval across seeds)."))
    blocks.append(_fig("latency_p99", plots.plot_metric(sw, "latency_p99", confidence=CONFIDENCE),
                       "p99 latency of successful requests."))
    blocks.append(_Heading(2, "Retry amplification"))
    blocks.append(_fig("retry_amplification", plots.plot_retry_amplification(sw),
                       "Upstream attempts per client request: what the providers see of each client request."))
    if sw.requests:
        blocks.append(_Heading(2, "Latency distributions"))
        blocks.append(_fig("latency_cdf", plots.plot_latency_cdf(sw),
                           "Empirical CDF of the latency of successful requests, seeds pooled (dotted: 50 % and 99 %)."))
        blocks.append(_Heading(2, "Channel share over time"))
        for i, sc in enumerate(sw.scenarios):
            info = sw.scenarios[sc] or {}
            notes = ["Share of requests by the channel that served them, per arrival-time bin; failed requests in grey."]
            if info.get("incidents"):
                notes.append("Hatched between dashed lines: scheduled incidents.")
            if info.get("outages"):
                notes.append(f"Random outages ({', '.join(info['outages'])}) are not shaded: their times are drawn "
                             "during the run.")
            blocks.append(_Heading(3, sc))
            blocks.append(_fig(f"channel_share_{i}", plots.plot_channel_share(sw, sc), " ".join(notes)))
    else:
        blocks.append(_Para("No request tables were kept, so there are no latency CDFs or channel-share plots "
                            "(sweep(keep_requests=True), to_files(requests=True))."))
    blocks.append(_Heading(2, "Every run"))
    blocks.append(_runs_table(sw))
    return blocks


def _s(n: int) -> str:
    return "s" if n != 1 else ""


def _ci_note(n_seeds: int) -> str:
    if n_seeds < 2:
        return "With one seed there is no confidence interval (shown as n/a)."
    return (f"Confidence intervals: {CONFIDENCE:.0%} Student t across the {n_seeds} seeds "
            f"(mean ± t·s/√{n_seeds}); cells with the same seed share their arrivals.")


def _fig(name: str, fig: Figure, caption: str) -> _Figure:
    return _Figure(name, caption, plots.to_png(fig))


def _scenario_table(sw: SweepResult) -> _Table:
    rows = []
    for sc, info in sw.scenarios.items():
        info = info or {}
        incidents = "; ".join(f"{i.get('channel')}: {plots.incident_label(i)}, t={_num(i.get('start'))}–"
                              f"{_num(i['end']) if i.get('end') is not None else '∞'} s"
                              for i in info.get("incidents") or []) or "—"
        outages = "; ".join(f"{ch}: MTBF {_num(o.get('mtbf'))} s" for ch, o in (info.get("outages") or {}).items()) or "—"
        rows.append([sc, ", ".join(map(str, info.get("channels") or [])) or "?", incidents, outages,
                     _workload(info.get("workload"))])
    return _Table(["scenario", "channels", "scheduled incidents", "random outages", "workload"], rows)


def _workload(wl: Any) -> str:
    if not isinstance(wl, dict):
        return "—"
    # Read defensively: the workload schema grows (bursty, ramps, traces); unknown shapes just say less.
    raw = wl.get("arrival")
    arrival: dict[str, Any] = raw if isinstance(raw, dict) else {}
    parts = []
    if arrival.get("rate") is not None:
        parts.append(f"{arrival.get('process', '')} {_num(arrival['rate'])} req/s".strip())
    if wl.get("requests") is not None:
        parts.append(f"{wl['requests']} requests")
    if wl.get("stream"):
        parts.append(f"{100 * wl['stream']:g} % streamed")
    return ", ".join(parts) or "—"


def _num(v: Any) -> str:
    return f"{v:g}" if isinstance(v, (int, float)) else str(v)


def _scenario_results(sw: SweepResult, agg: pd.DataFrame, scenario: str) -> _Table:
    rows = agg[agg["scenario"] == scenario]
    cols = [c for c in _COLUMNS if f"{c[0]}_mean" in rows.columns]
    # when the simulator reports cost: in significant digits (a request costs ~1e-4, 3 decimals said 0)
    cols += [(m, m.replace("_", " "), "cost") for m in sw.metrics if m.startswith("cost")]
    shares = [m for m in sw.metrics if m.startswith("share_") and rows[f"{m}_mean"].notna().any()]
    best = {}
    if len(rows) > 1:
        for m, pick in _BETTER.items():
            if f"{m}_mean" in rows.columns and rows[f"{m}_mean"].notna().any():
                best[m] = pick(rows[f"{m}_mean"].dropna())
    out = []
    for _, r in rows.iterrows():
        line = [str(r["strategy"])]
        for m, _, kind in cols:
            text = _pm(r[f"{m}_mean"], r[f"{m}_ci"], kind)
            line.append(f"**{text}**" if m in best and r[f"{m}_mean"] == best[m] else text)
        line += [_pm(r[f"{m}_mean"], math.nan, "pct") for m in shares]
        out.append(line)
    header = ["strategy"] + [h for _, h, _ in cols] + [f"served by {m.removeprefix('share_')}" for m in shares]
    return _Table(header, out)


def _pm(mean: Any, ci: Any, kind: str) -> str:
    """`mean ± ci` in the column's unit; the ± part is left out when there is no interval."""
    if mean is None or not np.isfinite(mean):
        return "n/a"
    scale, fmt, unit = {"pct": (100.0, "{:.2f}", " %"), "s": (1.0, "{:.3f}", " s"), "x": (1.0, "{:.3f}", ""),
                        "cost": (1.0, "{:.3g}", "")}[kind]
    text = fmt.format(mean * scale)
    if ci is not None and np.isfinite(ci):
        text += " ± " + fmt.format(ci * scale)
    return text + unit


def _runs_table(sw: SweepResult) -> _Table:
    cols = [c for c in _COLUMNS if c[0] in sw.summary.columns]
    rows = []
    for _, r in sw.summary.iterrows():
        rows.append([str(r["scenario"]), str(r["strategy"]), str(r["seed"]), str(int(r.get("requests", 0)))]
                    + [_pm(r[m], math.nan, kind) for m, _, kind in cols])
    return _Table(["scenario", "strategy", "seed", "requests"] + [h for _, h, _ in cols], rows,
                  collapsed=f"{len(rows)} runs (also in summary.csv)")


# --------------------------------------------------------------------------------------------------
# Markdown


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _markdown(blocks: list[Block]) -> str:
    out: list[str] = []
    for b in blocks:
        if isinstance(b, _Heading):
            out.append("#" * b.level + " " + b.text)
        elif isinstance(b, _Para):
            out.append(b.text)
        elif isinstance(b, _Figure):
            out.append(f"![{b.caption}](figures/{b.name}.png)\n\n*{b.caption}*")
        else:
            lines = ["| " + " | ".join(_md_cell(h) for h in b.header) + " |",
                     "|" + "|".join("---" for _ in b.header) + "|"]
            lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in b.rows]
            table = "\n".join(lines)
            # GitHub renders Markdown inside <details> when blank lines surround it.
            out.append(f"<details><summary>{html.escape(b.collapsed)}</summary>\n\n{table}\n\n</details>"
                       if b.collapsed else table)
        out.append("")
    return "\n".join(out)


# --------------------------------------------------------------------------------------------------
# HTML


_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; max-width: 1200px; margin: 2em auto;
       padding: 0 1em; color: #222; line-height: 1.45; }
table { border-collapse: collapse; margin: 0.6em 0 1.2em; font-size: 0.88em; }
th, td { border: 1px solid #ddd; padding: 0.25em 0.6em; text-align: right; }
th { background: #f4f4f4; } td:first-child, th:first-child { text-align: left; }
figure { margin: 1em 0 2em; } figure img { max-width: 100%; } figcaption { color: #555; font-size: 0.9em; }
code { background: #f4f4f4; padding: 0 0.2em; }
"""


def _inline(text: str) -> str:
    """Escape, then render the two Markdown marks the blocks use: **bold** and `code`."""
    t = html.escape(text)
    t = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", t)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", t)


def _html(blocks: list[Block], title: str) -> str:
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
           f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>"]
    for b in blocks:
        if isinstance(b, _Heading):
            out.append(f"<h{b.level}>{_inline(b.text)}</h{b.level}>")
        elif isinstance(b, _Para):
            out.append(f"<p>{_inline(b.text)}</p>")
        elif isinstance(b, _Figure):
            data = base64.b64encode(b.png).decode("ascii")
            out.append(f'<figure><img alt="{html.escape(b.caption)}" src="data:image/png;base64,{data}">'
                       f"<figcaption>{_inline(b.caption)}</figcaption></figure>")
        else:
            rows = ["<tr>" + "".join(f"<th>{_inline(h)}</th>" for h in b.header) + "</tr>"]
            rows += ["<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in row) + "</tr>" for row in b.rows]
            table = "<table>" + "\n".join(rows) + "</table>"
            out.append(f"<details><summary>{html.escape(b.collapsed)}</summary>{table}</details>"
                       if b.collapsed else table)
    out.append("</body></html>")
    return "\n".join(out) + "\n"
