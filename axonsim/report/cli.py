"""`axonsim report RESULTS [--out DIR] [--scenario YAML]`: render a results directory as Markdown and HTML."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from axonsim.config import load_config
from axonsim.report.load import ReportError
from axonsim.report.render import render_report


def report_command(args: argparse.Namespace) -> int:
    # A bad --scenario raises ConfigError, which axonsim.cli turns into a message and exit 2.
    scenario = load_config(args.scenario) if args.scenario else None
    out = Path(args.out) if args.out else Path(args.results) / "report"
    if args.out:
        from axonsim.cli import writable_dir

        writable_dir(args.out, "--out")
    elif out.exists() and not out.is_dir():  # checked, not made: a failed run leaves RESULTS as it was
        print(f"axonsim report: {out} is a file, not a directory (give --out)", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    try:
        page = render_report(args.results, out, scenario=scenario)
    except ReportError as exc:
        print(f"axonsim report: {exc}", file=sys.stderr)
        return 2
    print(f"wrote           {page.parent / 'report.md'}")
    print(f"wrote           {page}")
    print(f"({time.perf_counter() - t0:.1f} s)")
    return 0
