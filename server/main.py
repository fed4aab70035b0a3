"""`axonsim serve`: load the config (or build the demo), check the store, then run the gateway on uvicorn (uvloop + httptools).

One worker: the app is built here and served in this process. `--workers N`: uvicorn's own
multi-process mode — a parent that holds the listening socket and supervises N worker processes,
each of which builds its own gateway from the config file through `worker_app` (an app factory).
Without `state.url`, every worker keeps its own channel state (cooldowns, breakers, round robin);
with it, they share it through Redis (server.shared_state). /metrics adds up every worker's figures
(server.worker_metrics).

Exit codes: 0 after a clean shutdown; 2 for a bad config, an unreachable store database (unless
`store.on_unreachable: degraded`) or bad arguments; 1 if the server could not start otherwise.

Graceful shutdown (SIGINT/SIGTERM; a second SIGINT cuts what still runs, a third forces it): stop accepting, let in-flight
requests and streams finish for up to `gateway.shutdown_timeout` seconds (then cancel them), stop
the probes, close the upstream session, drain the store, stop the shared-state sync.
SIGHUP: a worker re-reads its config file (Proxy.reload); the multi-worker parent passes it on to
every worker, each of which reloads in its own process.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import uvicorn
from uvicorn.supervisors.multiprocess import Multiprocess, Process

from axonsim import cli
from axonsim.config import Config, load_config
from server import log_output
from server.app import GatewayApp
from server.http_protocol import CoalescingHttpToolsProtocol
from server.proxy import Proxy, check_servable, store_secrets
from server.store import StoreUnavailable

log = logging.getLogger("axonsim.server")

# How the parent tells its worker processes what to serve (spawned workers inherit the environment).
ENV_CONFIG = "AXONSIM_SERVE_CONFIG"
ENV_LOG_LEVEL = "AXONSIM_SERVE_LOG_LEVEL"

_STORE_HINT = ("  (fix store.url, or set store.on_unreachable: degraded to serve without it and buffer records "
               "until it comes back)")
_UNUSABLE_HINT = ("  (the database answers but its tables cannot take AxonSim's records: point store.url at a "
                  "database only AxonSim's migrations change, or give its role the right to write there)")


def _setup_logging(level: str, again: bool = False) -> None:
    # This process is the gateway's own: its records may skip what the lines never show, and the
    # access lines are written in batches (server.log_output says what that saves).
    log_output.quiet_records()
    flush_every, problem = log_output.flush_every_from(os.environ)
    handler = log_output.install(logging.getLogger("axonsim"), level, sys.stderr, flush_every)
    # uvicorn's own lines ("Shutting down", its tracebacks) go through its handlers, and a record
    # no handler takes through logging's last resort: the access lines before them go out first.
    log_output.flush_first(logging.getLogger("uvicorn"), handler)
    if problem is not None and not again:  # (said when first set up, not again after uvicorn's)
        log.warning("%s", problem)


def _loop_name() -> str:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return "asyncio"
    return "uvloop"


def build_proxy(config: Config, config_path: str | Path | None, demo: Any = None) -> Proxy:
    """The production gateway: store (SQLite next to the config by default), metrics, shared state
    when state.url is set, a SIGHUP reload, the demo's mock providers when it is the demo."""
    from server.store import Store

    global _SERVING
    store = Store(config.store, config_path=config_path, secrets=store_secrets(config))
    proxy = Proxy(config, store=store, config_path=config_path)
    _SERVING = proxy
    if demo is not None:
        proxy.startup_hooks.append(demo.start)
        proxy.shutdown_hooks.append(demo.stop)
    if config.state.url:
        # Several processes agree on cooldowns, breakers, limits and round robin through Redis; the
        # getter follows a config reload's new Router. Redis down: serve on local state (logged).
        from server.shared_state import SharedState

        shared = SharedState(lambda: proxy.router, config.state, clock=proxy.clock.now)
        proxy.shared_state = shared
        proxy.startup_hooks.append(shared.start)
        proxy.shutdown_hooks.append(shared.close)
    async def sighup() -> None:
        # With no config file (the built-in demo) there is nothing to re-read: a SIGHUP is logged
        # rather than left to its default, which ended the process, streams in flight included.
        handler = (lambda: _reload_soon(proxy)) if config_path is not None else _nothing_to_reload
        try:
            asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, handler)
        except (NotImplementedError, RuntimeError, ValueError):  # not the main thread, or no SIGHUP here
            return
        if _HUP_PENDING and config_path is not None:  # asked for while this process was starting (serve)
            _reload_soon(proxy)

    proxy.startup_hooks.append(sighup)
    return proxy


def _nothing_to_reload() -> None:
    log.warning("SIGHUP: this gateway runs the built-in demo, which has no config file to re-read; nothing "
                "was reloaded (start it with --config FILE to reload on SIGHUP)")


def _reload_soon(proxy: Proxy) -> None:
    async def go() -> None:
        try:
            await proxy.reload()
        except Exception as exc:
            log.error("reload on SIGHUP failed; the previous configuration stays: %s", exc)

    asyncio.get_running_loop().create_task(go())


def worker_app() -> GatewayApp:
    """The app factory each worker process calls (uvicorn `factory=True`)."""
    from server.worker_metrics import ENV_DIR, WorkerFigures

    path = os.environ[ENV_CONFIG]
    _setup_logging(os.environ.get(ENV_LOG_LEVEL, "info"), again=True)  # (the parent said what was wrong)
    proxy = build_proxy(load_config(path), path)
    if os.environ.get(ENV_DIR):  # set by `axonsim serve --workers N`, whose process is our parent
        # /metrics answers for all the workers (server.worker_metrics). The final figures are
        # published after the store has drained: shutdown hooks run last.
        figures = WorkerFigures(os.environ[ENV_DIR], proxy.metrics)
        proxy.startup_hooks.append(figures.start)
        proxy.shutdown_hooks.insert(0, figures.stop)
        # An admin reload reaches the worker that answered; the parent passes SIGHUP on to every
        # worker (Supervisor.handle_hup), and each reloads in its own process.
        proxy.reload_workers = lambda: os.kill(os.getppid(), signal.SIGHUP)
        if proxy.config.state.url is None:
            # Each worker keeps its own channel state: a switch made through one would leave the
            # others routing to the channel, so the admin API refuses it and says what works.
            proxy.switches_local = (
                "this gateway runs several worker processes without shared channel state, so a switch would "
                "reach only the worker that answered; set state.url (Redis) to share switches, or change "
                "the channel in the config and reload (POST /admin/reload reaches every worker)")
    return GatewayApp(proxy, tune_gc=True)


def check_store(config: Config, config_path: str | Path | None) -> StoreUnavailable | None:
    """Open the store's database once and migrate it, before any worker starts: None if it is
    usable, else why not. (Each worker then finds the schema at head.)"""
    from server.store import Store

    async def go() -> None:
        store = Store.from_config(config, config_path)
        await store.start()
        await store.close()

    try:
        asyncio.run(go())
    except StoreUnavailable as exc:
        return exc
    return None


def _banner(config: Config, config_path: Path, host: str, port: int, workers: int) -> str:
    from server.store import resolve_url
    from server.store.engine import safe_url

    url = f"http://{host}:{port}"
    store = config.store
    state = config.state
    if state.url:
        shared = f"in Redis at {safe_url(state.url)}, synchronised every {state.sync_interval:g} s"
    elif workers > 1:
        shared = f"per process: each of the {workers} workers keeps its own (set state.url to share it through Redis)"
    else:
        shared = "in this process (set state.url to share it through Redis with other processes)"
    admin = (f"{url}/admin ({len(config.gateway.admin_keys)} admin key(s))" if config.gateway.admin_keys
             else "closed (no gateway.admin_keys)")
    return (
        f"AxonSim gateway on {url} ({workers} worker{'s' if workers != 1 else ''})\n"
        f"  config: {config_path} (POST /admin/reload or SIGHUP re-reads it)\n"
        f"  usage log: {safe_url(resolve_url(store.url, config_path))}"
        f"{' (on_unreachable: degraded)' if store.on_unreachable == 'degraded' else ''}\n"
        f"  channel state: {shared}\n"
        f"  metrics: {url}/metrics   admin API: {admin}   docs: {url}/docs\n"
        f"  shutdown: in-flight requests get up to {config.gateway.shutdown_timeout:g} s"
    )


REPLACEMENT_READY = 60  # seconds a starting worker has before it must answer the parent's pings (GatewayProcess)
FORCED_EXIT = 130  # a third Ctrl-C quit without the shutdown (what a shell reports for an interrupted command)


def _stop_cleanly(signum: int, frame: Any) -> None:
    raise SystemExit(0)


class GatewayServer(uvicorn.Server):  # type: ignore[misc]
    """uvicorn's Server with a second Ctrl-C that cuts the requests still running rather than the
    shutdown itself. uvicorn's forced exit skipped the app's shutdown: the store was not flushed, the
    cut requests were lost and the lifespan task died with tracebacks. Here they are cancelled at
    once, answered as the shutdown deadline answers them (a 503, or the in-stream error) and
    recorded, and the shutdown goes on to its end. A third Ctrl-C forces uvicorn's way."""

    _loop: asyncio.AbstractEventLoop | None = None
    _cutting = False
    forced = False  # a third Ctrl-C: uvicorn's forced exit, which skips the app's shutdown

    async def serve(self, sockets: Any = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

    def handle_exit(self, sig: int, frame: Any) -> None:
        if self.should_exit and sig == signal.SIGINT and not self._cutting and self._loop is not None:
            self._cutting = True
            log.warning("second Ctrl-C: cutting the %d request(s) still running; Ctrl-C again to force quit",
                        len(self.server_state.tasks))
            self._loop.call_soon_threadsafe(self._cut)
            return
        if self._cutting and sig == signal.SIGINT and not self.forced and _SERVING is not None and _SERVING.ready:
            # Before the app's shutdown: uvicorn quits without it, so the store is not flushed. What
            # it holds is lost, which is said, and the exit code says it was no clean shutdown.
            # (Once the app's shutdown has begun, uvicorn lets it finish: it is bounded.)
            self.forced = True
            store = _SERVING.store
            queued = getattr(store, "queued", 0) if store is not None else 0
            log.warning("third Ctrl-C: quitting without the shutdown; %d request record(s) not yet written are lost, "
                        "and those of the %d request(s) still running", queued, len(self.server_state.tasks))
        super().handle_exit(sig, frame)

    def _cut(self) -> None:
        for task in list(self.server_state.tasks):
            task.cancel()


# The Proxy this process serves (build_proxy), for what the server's signal handling reports.
_SERVING: Proxy | None = None

# Set in a gateway process (one worker, or each of several) when a SIGHUP came after it began to
# start and before its app installed the reload handler: it may have read the file before the
# change, so it reloads once the handler is in.
_HUP_PENDING = False


def _hup_while_starting(signum: int, frame: Any) -> None:
    global _HUP_PENDING
    _HUP_PENDING = True


class GatewayProcess(Process):  # type: ignore[misc]
    """A `--workers` worker that serves with GatewayServer (a terminal's Ctrl-C reaches every worker
    of the process group, the second one too). Module-level: workers are spawned, and unpickle it."""

    _started_at = 0.0

    @property
    def server(self) -> uvicorn.Server:
        if self._server is None:
            self._server = GatewayServer(config=self.config)
        return self._server

    def start(self) -> None:
        self._started_at = time.monotonic()
        # A reload's SIGHUP (the parent passes it on to every worker) that came before the worker's
        # app had installed its handler (a start-up hook) ended the worker: SIGHUP's default. The
        # worker is spawned with SIGHUP ignored (an ignored signal stays ignored across exec) until
        # `target` remembers it instead; it has not read the file yet before then.
        # A terminal's Ctrl-C (every process of the group) that came while a worker was still
        # importing interrupted it there, with a traceback: the worker is spawned with SIGINT ignored
        # too, until its server installs its own handlers; the parent ends it meanwhile (SIGTERM).
        previous = signal.signal(signal.SIGHUP, signal.SIG_IGN)
        previous_int = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            super().start()
        finally:
            signal.signal(signal.SIGHUP, previous)
            signal.signal(signal.SIGINT, previous_int)

    def target(self, sockets: Any = None) -> None:  # pragma: no cover - runs in the worker process
        # From here on (before the app reads its config) a SIGHUP is remembered, not lost: the
        # worker reloads once its handler is in (build_proxy).
        signal.signal(signal.SIGHUP, _hup_while_starting)
        # The parent's SIGTERM, which uvicorn re-raises once its server has stopped, ends the worker
        # with 0 (as `serve` does with one worker) rather than killing it, so that a worker quit by a
        # third Ctrl-C gets to say so in its exit code, which `serve` passes on.
        signal.signal(signal.SIGTERM, _stop_cleanly)
        try:
            super().target(sockets)
        except SystemExit as exc:
            if exc.code != 0:
                raise
        if self.server.forced:  # type: ignore[attr-defined]
            sys.exit(FORCED_EXIT)

    def is_alive(self, timeout: float = 5) -> bool:
        # A worker answers the parent's pings from a thread it starts once its interpreter is up; on a
        # loaded host (several workers spawning and importing on two cores) that took longer than
        # uvicorn's 5 s, and the parent killed workers that were only starting, again and again.
        # While it is young, a worker is alive as long as its process runs.
        if time.monotonic() - self._started_at < REPLACEMENT_READY:
            return bool(self.process.is_alive())
        return bool(super().is_alive(timeout))


class Supervisor(Multiprocess):  # type: ignore[misc]
    """uvicorn's multi-process parent, with GatewayProcess workers, and which closes its copy of the
    listening socket when it stops. Otherwise, while the workers drain (they stop accepting at once),
    the kernel keeps accepting connections into the backlog of the socket the parent still holds,
    and resets them when it exits: a client sent its request and lost it. Closed, they are refused
    at once."""

    def run(self) -> None:
        # uvicorn's parent makes each worker as `Process(...)`, from its module's own name for it.
        supervisors = sys.modules["uvicorn.supervisors.multiprocess"]
        supervisors.Process = GatewayProcess  # type: ignore[attr-defined]
        try:
            super().run()
        finally:
            supervisors.Process = Process  # type: ignore[attr-defined]

    def terminate_all(self) -> None:
        for sock in self.sockets:
            sock.close()
        super().terminate_all()

    def keep_subprocess_alive(self) -> None:
        # A terminal's Ctrl-C reaches the workers and the parent at once. A worker with nothing to do
        # ends at once, and the parent, not having read its own signal yet, started a replacement,
        # which the second Ctrl-C then interrupted mid-import (a traceback). Signals first.
        if self.signal_queue:
            return
        super().keep_subprocess_alive()

    def handle_hup(self) -> None:
        # A reload (SIGHUP, or the admin API's through the worker that answered it): every worker
        # re-reads the file in its own process, as a single worker does (Proxy.reload): requests in
        # flight finish on the old config and unchanged channels keep their state. uvicorn replaced
        # the workers instead, whose shutdown deadline then cut requests still running (long streams).
        log.info("SIGHUP: every worker reloads the configuration")
        for process in self.processes:
            pid = process.pid
            if pid is not None and process.exitcode is None:
                try:
                    os.kill(pid, signal.SIGHUP)
                except ProcessLookupError:  # it ended meanwhile; keep_subprocess_alive replaces it
                    pass


def serve(args: argparse.Namespace) -> int:
    """Run until interrupted; ConfigError propagates to the CLI (message naming the field, exit 2)."""
    workers = getattr(args, "workers", None)
    workers = 1 if workers is None else workers
    if workers < 1:
        print("axonsim serve: --workers must be at least 1", file=sys.stderr)
        return 2
    log_level = str(getattr(args, "log_level", "info")).lower()
    _setup_logging(log_level)

    demo = None
    config_path: Path | None = None
    if args.config:
        # A reload's SIGHUP that comes while the gateway starts would end it (SIGHUP's default) until
        # its handler is in: remembered instead, and acted on then (build_proxy). Several workers
        # read the file only once they start, after the parent's own handler is in.
        signal.signal(signal.SIGHUP, _hup_while_starting)
        if cli.HUP_SEEN:  # one came while this module loaded (axonsim.cli)
            _hup_while_starting(signal.SIGHUP, None)
        config_path = Path(args.config).resolve()
        config = load_config(config_path)
        check_servable(config)  # before the banner and the store: nothing is started for it
    else:
        if workers != 1:
            print("axonsim serve: the built-in demo runs in one process (its mock providers live in it); "
                  "--workers needs --config", file=sys.stderr)
            return 2
        from server.demo import Demo

        demo = Demo(host="127.0.0.1")
        config = demo.config
    # Several workers: the parent checks (and migrates) the database before it starts them, since a
    # worker's start-up failure cannot become this process's exit code. One worker: its own start-up
    # does that (below), without a second engine in this process's memory.
    if workers > 1 and config.store.on_unreachable != "degraded":
        problem = check_store(config, config_path)
        if problem is not None:
            hint = _UNUSABLE_HINT if problem.unusable else _STORE_HINT
            print(f"axonsim serve: cannot start: {problem}\n{hint}", file=sys.stderr)
            if demo is not None:
                demo.cleanup()
            return 2

    common: dict[str, Any] = dict(
        host=args.host, port=args.port, loop=_loop_name(), interface="asgi3", lifespan="on",
        http=CoalescingHttpToolsProtocol,  # httptools, each response head written with its first body bytes
        access_log=False, log_level=log_level, server_header=False,
        proxy_headers=False,  # no X-Forwarded-* rewriting: the gateway does not use the peer address
        timeout_graceful_shutdown=config.gateway.shutdown_timeout,
    )
    if demo is not None:
        print(demo.banner(args.host, args.port), flush=True)
    else:
        assert config_path is not None
        print(_banner(config, config_path, args.host, args.port, workers), flush=True)

    if workers > 1:
        from uvicorn.config import STARTUP_FAILURE

        from server.worker_metrics import ENV_DIR

        assert config_path is not None
        os.environ[ENV_CONFIG] = str(config_path)
        os.environ[ENV_LOG_LEVEL] = log_level
        figures_dir = tempfile.mkdtemp(prefix="axonsim-metrics-")  # where workers publish their figures
        os.environ[ENV_DIR] = figures_dir
        uv = uvicorn.Config("server.main:worker_app", factory=True, workers=workers, **common)
        _setup_logging(log_level, again=True)  # after uvicorn's dictConfig, as for one process (below)
        try:
            sock = uv.bind_socket()
        except SystemExit:  # uvicorn's 3: the address in use, say (its log says why)
            shutil.rmtree(figures_dir, ignore_errors=True)
            print(f"axonsim serve: cannot listen on {args.host}:{args.port}", file=sys.stderr)
            return 1
        supervisor = Supervisor(uv, sockets=[sock])
        try:
            supervisor.run()
        finally:
            shutil.rmtree(figures_dir, ignore_errors=True)
        if any(p.exitcode == STARTUP_FAILURE for p in supervisor.processes):
            print("axonsim serve: a worker failed to start (its log says why); stopped", file=sys.stderr)
            return 1
        # A worker quit by a third Ctrl-C without its shutdown (its log says what it lost).
        return FORCED_EXIT if any(p.exitcode == FORCED_EXIT for p in supervisor.processes) else 0

    proxy = build_proxy(config, config_path, demo)
    server = GatewayServer(uvicorn.Config(GatewayApp(proxy, tune_gc=True), **common))
    # uvicorn's Config set up its own loggers with logging.config.dictConfig, which closes every
    # handler there was, ours too (a closed one writes each line at once): ours again, after it.
    _setup_logging(log_level, again=True)
    # uvicorn re-raises the signal that stopped it once it has shut down, with the handlers it found
    # when it started: by default that kills the process (-15, or 130 for Ctrl-C) after a clean
    # shutdown. With these, that last signal ends the process with 0, as `--workers` does.
    before = {sig: signal.signal(sig, _stop_cleanly) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        server.run()
    except SystemExit as exc:
        if exc.code == 0:
            return FORCED_EXIT if server.forced else 0
        if proxy.startup_error is None:
            # uvicorn could not start on its own side (its 3: the address in use, say; its log says
            # why): what our exit codes call any other failure to start.
            print(f"axonsim serve: cannot start on {args.host}:{args.port}", file=sys.stderr)
            return 1
        # uvicorn exits when the app's start-up fails; the reason decides our exit code.
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)
        if demo is not None:
            demo.cleanup()  # if start-up failed; after a shutdown its hook has done it already
    if proxy.startup_error is not None:
        if isinstance(proxy.startup_error, StoreUnavailable):
            hint = _UNUSABLE_HINT if proxy.startup_error.unusable else _STORE_HINT
            print(f"axonsim serve: cannot start: {proxy.startup_error}\n{hint}", file=sys.stderr)
            return 2
        return 1
    if not server.started:
        return 1
    return FORCED_EXIT if server.forced else 0
