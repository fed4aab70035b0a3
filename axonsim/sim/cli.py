"""`axonsim simulate SCENARIO.yaml [--seed N] [--requests N] [--step S] [--explain] [--out DIR] [--format csv|parquet]`: run a scenario and print its summary."""

from __future__ import annotations

import argparse
import time
from typing import Any

from axonsim.config import ConfigError, load_config
from axonsim.sim.driver import StepTooFine, simulate
from axonsim.sim.workload import require_workload


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v * 1000:9.1f} ms"


def format_summary(s: dict[str, Any]) -> str:
    """The summary as a small fixed-width table."""
    pct = "{:6.2f} %".format
    lines = [
        f"requests        {s['requests']}   ({s['duration']:.1f} s simulated, seed {s['seed']})",
        f"success         {pct(100 * s['success_rate'])}    errors {pct(100 * s['error_rate'])}"
        f"    client 429 {pct(100 * s['client_429_rate'])}",
        "                      p50          p95          p99",
        f"latency       {_ms(s['latency_p50'])}  {_ms(s['latency_p95'])}  {_ms(s['latency_p99'])}",
        f"ttft          {_ms(s['ttft_p50'])}  {_ms(s['ttft_p95'])}  {_ms(s['ttft_p99'])}",
        f"attempts/req    {s['attempts_per_request']:.3f}   upstream errors {pct(100 * s['upstream_error_rate'])}"
        f"    upstream 429 {pct(100 * s['upstream_429_rate'])}",
    ]
    if s.get("cost") is not None:
        lines.append(f"cost            {s['cost']:.4f}   ({s['cost_per_request'] * 1000:.4f} per 1000 requests)")
    lines.append("")
    width = max(7, *(len(c) for c in s["share"]))
    lines.append(f"{'channel':{width}}  served   attempts")
    for c, share in s["share"].items():
        lines.append(f"{c:{width}}  {pct(100 * share)}  {pct(100 * s['attempt_share'][c])}")
    projects = s.get("project_success_rate")
    if projects:
        width = max(7, *(len(p) for p in projects))
        lines += ["", f"{'project':{width}}  success   cost"]
        for p, rate in projects.items():
            cost = s.get("project_cost", {}).get(p)
            lines.append(f"{p:{width}}  {pct(100 * rate)}  {'-' if cost is None else f'{cost:.4f}'}")
    return "\n".join(lines)


def _step(value: str | None) -> float | str | None:
    if value is None or value == "auto":
        return "auto"
    try:
        step = float(value)
    except ValueError:
        raise ConfigError(f"--step: {value!r} is not a number of seconds (or 'auto')") from None
    if not step >= 0 or step == float("inf"):
        raise ConfigError(f"--step: must be a finite number of seconds >= 0, got {value}")
    return step or None


def simulate_command(args: argparse.Namespace) -> int:
    config = load_config(args.scenario)  # ConfigError → message and exit 2 (axonsim.cli)
    require_workload(config)
    requests = getattr(args, "requests", None)
    if requests is not None and requests < 1:
        raise ConfigError(f"--requests: must be at least 1, got {requests}")
    if args.out:
        from axonsim.cli import writable_dir

        writable_dir(args.out, "--out")  # before the run, not after it
    t0 = time.perf_counter()
    try:
        result = simulate(config, seed=args.seed, requests=requests, step=_step(getattr(args, "step", "auto")),
                          explain=bool(getattr(args, "explain", False)))
    except StepTooFine as exc:
        raise ConfigError(f"--step: {exc}") from None
    wall = time.perf_counter() - t0
    summary = result.summary()
    print(f"scenario        {args.scenario}")
    print(format_summary(summary))
    print(f"\nwall time       {wall:.2f} s ({summary['requests'] / wall:,.0f} requests/s)")
    if args.out:
        for p in result.to_files(args.out, args.format):
            print(f"wrote           {p}")
    return 0
