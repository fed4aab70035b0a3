"""CI report: the standard scenario set (examples/scenarios/) × eight strategies × 3 seeds, rendered to benchmarks/out/sim_report/.

    python benchmarks/sim_report.py [--seeds 1 2 3] [--requests N] [--workers N] [--out DIR]

Sized to finish in a minute or two on two cores: each run is its scenario's own workload (about
1200 s of simulated traffic, long enough to cover the scheduled incidents at t=300–900 s). The sweep's tables
(summary, aggregate, per-run request tables) are written beside the report, so `axonsim report
benchmarks/out/sim_report` can render it again.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # runnable from a checkout without installing the package
    sys.path.insert(0, str(ROOT))

from axonsim.config import ConfigError, load_config  # noqa: E402
from axonsim.report import render_report  # noqa: E402
from axonsim.sim import sweep  # noqa: E402

STRATEGIES = ["round_robin", "weighted", "least_inflight", "error_aware", "composite", "adaptive",
              "least_request", "peak_ewma"]
SCENARIOS = ["steady", "outage", "brownout", "flapping", "burst"]  # report order: calm first, then each kind of trouble


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument("--requests", type=int, default=None, help="requests per run (default: each scenario's own)")
    p.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "sim_report")
    args = p.parse_args(argv)
    if len(set(args.seeds)) != len(args.seeds) or min(args.seeds) < 0:
        p.error("--seeds: distinct whole numbers >= 0")
    if args.requests is not None and args.requests < 1:
        p.error("--requests: at least 1")
    if args.workers is not None and args.workers < 1:
        p.error("--workers: at least 1")
    if args.out.exists() and not args.out.is_dir():
        p.error(f"--out: {args.out} is not a directory")

    scenarios = {name: load_config(ROOT / "examples" / "scenarios" / f"{name}.yaml") for name in SCENARIOS}
    t0 = time.perf_counter()
    try:
        result = sweep(scenarios, STRATEGIES, args.seeds, requests=args.requests, workers=args.workers)
    except ConfigError as exc:
        print(f"sim_report: {exc}", file=sys.stderr)
        return 2
    t_sweep = time.perf_counter() - t0
    # Only now, with a new report to write, does the previous one go: what it wrote, not the directory
    # (which may hold the user's own files), so that no stale run tables linger.
    if (args.out / "sweep.json").exists():  # a previous report's
        for stale in ("requests", "figures"):
            if (args.out / stale).is_dir():
                shutil.rmtree(args.out / stale)
    result.to_files(args.out, format="parquet", requests=True)
    result.meta["source"] = str(args.out)  # the report names where its tables are
    t1 = time.perf_counter()
    page = render_report(result, args.out, title="AxonSim standard scenarios: strategy report")
    t_report = time.perf_counter() - t1

    runs = len(result.summary)
    simulated = int(result.summary["requests"].sum())
    print(f"{runs} runs ({len(SCENARIOS)} scenarios × {len(STRATEGIES)} strategies × {len(args.seeds)} seeds), "
          f"{simulated:,} simulated requests on {result.meta['workers']} worker(s)")
    print(f"sweep   {t_sweep:6.1f} s")
    print(f"report  {t_report:6.1f} s")
    print(f"report written to {page.parent.resolve()}/ (report.md, report.html, figures/, sweep tables)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
