"""The proxy's runtime, built once from a Config: router, channel runtimes, auth, upstream, driver, request log.

Everything that can be computed before the first request is computed here (format modules,
per-channel URLs/headers/timeouts, the auth table, the secret scrubber), so a request only does
request work. The ASGI app (server.app) and the FastAPI side (server.api) both read this object.

Request records: every client request ends in exactly one record, a dict kept in a bounded
in-memory ring (`recent`) and handed to the `on_request_done` hook, where the persistent store
plugs in. A hook must be quick and must not raise; if it does, the error is logged and the
request is unaffected. Field names follow server.store.RequestRecord where they overlap:

    id, created_at (unix s), method, path, client_format, model, stream, project, key_name (never the
    key), status (499: the client went away), outcome (completed | failed | cancelled), error,
    error_kind, latency (s, arrival to last byte), ttft (s, arrival to first byte sent), usage (dict or
    None), channel (the one that answered), channels (all tried, in order), trace_id, thread_id,
    attempts: AttemptRecord.as_dict() each (times on the proxy clock: unix seconds), the answering
    stream's also with `stream_end` and, if it broke after the commit, `stream_error`;
    decisions: the core's decision trace (only when the proxy is built with explain=True).
"""

from __future__ import annotations

import logging
import random
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

from axonsim.config import Config, ConfigError
from axonsim.execution import Router
from axonsim.formats import get_format
from server.auth import GatewayAuth
from server.driver import ChannelRuntime, Clock, LiveDriver, Scrubber
from server.routes import RouteTable, load_formats
from server.upstream import AiohttpUpstream, Upstream

log = logging.getLogger("axonsim.server")
access_log = logging.getLogger("axonsim.server.access")

RequestHook = Callable[[dict[str, Any]], None]


class Proxy:
    # Request headers naming a trace / a conversation thread: kept in the record and used as the
    # sticky-routing key (routing.sticky); never forwarded upstream (no client header is).
    trace_header = b"x-trace-id"
    thread_header = b"x-thread-id"

    def __init__(self, config: Config, upstream: Upstream | None = None, *, seed: int | None = None,
                 recent: int = 1000, passthrough: bool = True, explain: bool = False) -> None:
        self.config = config
        self.router = Router(config)
        self.auth = GatewayAuth(config.gateway.api_keys)
        channels = []
        for st in self.router.states:
            try:
                fmt = get_format(st.channel.type)
            except ImportError as exc:
                raise ConfigError(f"channels[{st.index}].type: the {st.channel.type!r} format is not available "
                                  f"in this build ({exc.name})") from None
            channels.append(ChannelRuntime(st, fmt, config.gateway.timeouts))
        self.channels = channels
        self.scrub = Scrubber(k.secret for st in self.router.states for k in st.keys)
        self.upstream: Upstream = upstream if upstream is not None else AiohttpUpstream()
        # One seeded generator for jitter and strategy draws; the OS seeds it when the config has no seed.
        self.rng = random.Random(seed if seed is not None else config.seed)
        self.clock = Clock()
        self.driver = LiveDriver(self.router, channels, self.upstream, self.rng, self.scrub, self.clock, passthrough,
                                 explain)
        self.sticky = config.routing.sticky
        self.routes = RouteTable(load_formats())
        self.recent: deque[dict[str, Any]] = deque(maxlen=recent)
        self.on_request_done: RequestHook | None = None
        self.ready = False
        self.startup_hooks: list[Callable[[], Awaitable[None]]] = []
        self.shutdown_hooks: list[Callable[[], Awaitable[None]]] = []

    async def startup(self) -> None:
        for hook in self.startup_hooks:
            await hook()
        await self.upstream.start()
        self.ready = True

    async def shutdown(self) -> None:
        self.ready = False
        await self.upstream.aclose()
        for hook in reversed(self.shutdown_hooks):
            try:
                await hook()
            except Exception:
                log.exception("shutdown hook failed")

    def request_done(self, record: dict[str, Any]) -> None:
        self.recent.append(record)
        hook = self.on_request_done
        if hook is not None:
            try:
                hook(record)
            except Exception:
                log.exception("on_request_done hook failed")
        if access_log.isEnabledFor(logging.INFO):
            access_log.info(
                "%s %s model=%s status=%d attempts=%d channels=%s latency_ms=%.1f stream=%s id=%s",
                record["method"], record["path"], _safe(record["model"]), record["status"], len(record["attempts"]),
                ",".join(record["channels"]) or "-", record["latency"] * 1000.0, int(bool(record["stream"])),
                record["id"],
            )

    def find(self, request_id: str) -> dict[str, Any] | None:
        for rec in reversed(self.recent):
            if rec["id"] == request_id:
                return rec
        return None

    def channel_states(self) -> list[dict[str, object]]:
        now = self.clock.now()
        return [st.snapshot(now) for st in self.router.states]


def _safe(s: str | None) -> str:
    """A client-supplied string fit for one log line (no line breaks, bounded)."""
    if s is None:
        return "-"
    return repr(s[:100])
