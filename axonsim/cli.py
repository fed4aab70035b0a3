"""The `axonsim` command line: serve (the proxy), mock-provider, simulate, report.

The commands that start servers import `server` inside their own functions: the library never
imports the proxy otherwise.
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

from axonsim.config import ConfigError

LOG_LEVELS = ("critical", "error", "warning", "info", "debug")


def port(text: str) -> int:
    """A TCP port number, 1-65535 (a larger one was taken modulo 65536 by the socket layer)."""
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 1 <= n <= 65535:
        raise argparse.ArgumentTypeError(f"{n} is not a port number (1-65535)")
    return n


def writable_dir(path: str, option: str) -> Path:
    """`path` as a directory that exists or can be made, checked before any work is done; ConfigError
    (a message, exit 2) otherwise."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise ConfigError(f"{option}: {path} is a file, not a directory")
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"{option}: cannot create the directory {path}: {exc.strerror}") from None
    return p


# A reload's SIGHUP that reaches `serve --config` while the server's modules load: remembered here
# (server.main.serve takes it over), since SIGHUP's default would end the process.
HUP_SEEN: list[int] = []


def _serve(args: argparse.Namespace) -> int:
    if args.config:
        signal.signal(signal.SIGHUP, lambda signum, frame: HUP_SEEN.append(signum))
    else:  # the demo: no file to re-read, so nothing to remember either (the server logs a later one)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
    from server.main import serve  # the one place the library reaches into the proxy

    return serve(args)


def _mock_provider(args: argparse.Namespace) -> int:
    from server.mock_provider import run  # a server too: it stands a channel's model up for real

    return run(args)


def _simulate(args: argparse.Namespace) -> int:
    from axonsim.sim.cli import simulate_command

    return simulate_command(args)


def _report(args: argparse.Namespace) -> int:
    from axonsim.report.cli import report_command  # matplotlib loads only for this command

    return report_command(args)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="axonsim", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("serve", help="run the gateway (the built-in demo when no --config is given)")
    s.add_argument("--config", help="config YAML; without it, a demo with mock channels on loopback")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=port, default=8080)
    s.add_argument("--workers", type=int, default=1)
    s.add_argument("--log-level", default="info", type=str.lower, choices=LOG_LEVELS)
    s.set_defaults(func=_serve)

    m = sub.add_parser("mock-provider", help="serve a provider API with a channel's behaviour model")
    m.add_argument("--port", type=port, required=True)
    m.add_argument("--host", default="127.0.0.1")
    m.add_argument("--config", help="config YAML holding the channel")
    m.add_argument("--channel", help="channel name in --config (default: the first)")
    m.add_argument("--seed", type=int, default=None)
    m.add_argument("--log-level", default="warning", type=str.lower, choices=LOG_LEVELS)
    m.set_defaults(func=_mock_provider)

    r = sub.add_parser("simulate", help="run a scenario in the discrete-event simulator")
    r.add_argument("scenario", help="scenario YAML (the shared config with a workload section)")
    r.add_argument("--seed", type=int, default=None)
    r.add_argument("--out", help="directory for requests/attempts tables and the summary")
    r.add_argument("--format", choices=["csv", "parquet"], default="csv")
    r.add_argument("--requests", type=int, default=None, help="replay only the workload's first N requests")
    r.add_argument("--step", default="auto",
                   help="time-series grid in seconds ('auto': about 1000 samples; 0: no time series)")
    r.add_argument("--explain", action="store_true", help="attach the decision trace to each attempt row")
    r.set_defaults(func=_simulate)

    rp = sub.add_parser("report", help="render simulation or sweep results as Markdown + HTML with plots")
    rp.add_argument("results", help="a directory written by `axonsim simulate --out` or by a sweep's to_files")
    rp.add_argument("--out", help="directory for report.md, report.html and figures/ (default: RESULTS/report)")
    rp.add_argument("--scenario", help="scenario YAML of a simulate directory (its incident windows and strategy)")
    rp.set_defaults(func=_report)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ConfigError as exc:
        print(f"axonsim: configuration error:\n{exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
