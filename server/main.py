"""`axonsim serve`: load the config (or build the demo), then run the gateway on uvicorn (uvloop + httptools)."""

from __future__ import annotations

import argparse
import logging
import sys

from axonsim.config import load_config
from server.app import GatewayApp
from server.proxy import Proxy


def _setup_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("axonsim")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False


def _loop_name() -> str:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return "asyncio"
    return "uvloop"


def serve(args: argparse.Namespace) -> int:
    """Run until interrupted; ConfigError propagates to the CLI (message naming the field, exit 2)."""
    import uvicorn

    workers = getattr(args, "workers", 1) or 1
    if workers != 1:
        print("axonsim serve: --workers N is not supported yet; run one worker (the default)", file=sys.stderr)
        return 2
    log_level = str(getattr(args, "log_level", "info")).lower()
    _setup_logging(log_level)

    demo = None
    if args.config:
        config = load_config(args.config)
    else:
        from server.demo import Demo

        demo = Demo(host="127.0.0.1")
        config = demo.config
    proxy = Proxy(config)
    if demo is not None:
        proxy.startup_hooks.append(demo.start)
        proxy.shutdown_hooks.append(demo.stop)
    app = GatewayApp(proxy)
    if config.state.url:
        # Several processes agree on cooldowns, breakers, limits and round robin through Redis; the
        # getter follows a config reload's new Router. Redis down: serve on local state (logged).
        from server.shared_state import SharedState

        shared = SharedState(lambda: app.proxy.router, config.state, clock=proxy.clock.now)
        proxy.startup_hooks.append(shared.start)
        proxy.shutdown_hooks.append(shared.close)

    if demo is not None:
        print(demo.banner(args.host, args.port), flush=True)
    uv = uvicorn.Config(app, host=args.host, port=args.port, loop=_loop_name(), http="httptools", lifespan="on",
                        access_log=False, log_level=log_level, server_header=False,
                        proxy_headers=False)  # no X-Forwarded-* rewriting: the gateway does not use the peer address
    server = uvicorn.Server(uv)
    server.run()
    if not server.started:
        return 1
    return 0
