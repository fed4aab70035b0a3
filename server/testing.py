"""In-process servers for tests and benchmarks: a background event-loop thread running the gateway (uvicorn) and mock providers.

Real HTTP on loopback, so the official SDKs (which cannot be intercepted at the transport) talk
to the gateway exactly as they would in production.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Coroutine
from typing import Any, TypeVar

import uvicorn

from axonsim.config import Channel, Config, parse_config
from server.app import GatewayApp
from server.http_protocol import CoalescingHttpToolsProtocol
from server.mock_provider import MockProvider, MockServer, start_mock
from server.proxy import Proxy, store_secrets

T = TypeVar("T")


def _new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


class LoopThread:
    """An event loop running forever in a daemon thread; `call` runs a coroutine on it and waits."""

    def __init__(self) -> None:
        self.loop = _new_loop()
        self.thread = threading.Thread(target=self._run, name="axonsim-test-loop", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        if self.loop.is_running():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
        self.loop.close()


class GatewayServer:
    """The gateway app served by uvicorn on a free loopback port."""

    def __init__(self, proxy: Proxy, server: uvicorn.Server, task: asyncio.Task[Any], port: int) -> None:
        self.proxy = proxy
        self.server = server
        self.task = task
        self.port = port
        self.url = f"http://127.0.0.1:{port}"

    async def stop(self) -> None:
        self.server.should_exit = True
        await asyncio.wait_for(self.task, 10)


async def start_gateway(proxy: Proxy) -> GatewayServer:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    # log_config=None: leave logging alone, so pytest's caplog sees the gateway's log lines. The
    # shutdown deadline is the config's, capped so a test's teardown never waits long.
    config = uvicorn.Config(GatewayApp(proxy), lifespan="on", log_config=None, access_log=False,
                            http=CoalescingHttpToolsProtocol, interface="asgi3", server_header=False,
                            # as `axonsim serve`: the protocol finds the app's read/send timeouts on it
                            # (uvicorn's X-Forwarded-* middleware, wrapped around it, hid them)
                            proxy_headers=False,
                            # uvicorn annotates int but passes it to asyncio.wait_for: seconds as a float work
                            timeout_graceful_shutdown=min(proxy.config.gateway.shutdown_timeout, 5.0))  # type: ignore[arg-type]
    server = uvicorn.Server(config)
    task = asyncio.get_running_loop().create_task(server.serve(sockets=[sock]))
    deadline = time.monotonic() + 10
    while not server.started:
        if task.done():
            task.result()
            raise RuntimeError("the gateway did not start")
        if time.monotonic() > deadline:
            raise RuntimeError("the gateway did not start within 10 s")
        await asyncio.sleep(0.01)
    return GatewayServer(proxy, server, task, port)


class Stack:
    """Mock providers and a gateway on one background loop; close() stops everything.

        with Stack() as st:
            fast = st.mock(channel)                      # a MockServer; fast.base_url
            gw = st.gateway(config)                      # a GatewayServer; gw.url, gw.proxy
    """

    def __init__(self) -> None:
        self.lt = LoopThread()
        self.mocks: list[MockServer] = []
        self.gateways: list[GatewayServer] = []
        self.by_name: dict[str, MockServer] = {}  # mocks started by serve(), by channel name
        self.config_dict: dict[str, Any] = {}  # the last config serve() built, as a dict (base URLs filled in)

    def mock(self, channel: Channel | MockProvider, **kw: Any) -> MockServer:
        provider = channel if isinstance(channel, MockProvider) else MockProvider(channel, **kw)
        m = self.lt.call(start_mock(provider))
        self.mocks.append(m)
        return m

    def gateway(self, config: Config | Proxy, **kw: Any) -> GatewayServer:
        async def go() -> GatewayServer:
            # built on the loop thread: anything loop-bound inside the proxy binds to this loop
            proxy = config if isinstance(config, Proxy) else Proxy(config, **kw)
            return await start_gateway(proxy)

        g = self.lt.call(go())
        self.gateways.append(g)
        return g

    def serve(self, channels: list[dict[str, Any]], gateway: dict[str, Any] | None = None,
              routing: dict[str, Any] | None = None, mock_kw: dict[str, dict[str, Any]] | None = None,
              seed: int = 1, extra: dict[str, Any] | None = None, **proxy_kw: Any) -> GatewayServer:
        """Start one mock provider per channel spec (a config dict without base_url), then a gateway
        whose config points each channel at its mock. `mock_kw[name]` goes to that MockProvider;
        `extra` holds more top-level config sections (prices, store, state); `proxy_kw` goes to
        Proxy, except `store=True`, which means a Store for the config (keyword arguments in `store_kw`)."""
        specs = []
        for i, spec in enumerate(channels):
            spec = dict(spec)
            ch = Channel.model_validate({**spec, "base_url": ""})
            m = self.mock(MockProvider(ch, seed=seed + i, **(mock_kw or {}).get(ch.name, {})))
            self.by_name[ch.name] = m
            spec["base_url"] = m.base_url
            specs.append(spec)
        data = {"gateway": gateway or {"api_keys": [{"key": "sk-gw-test", "project": "test"}]},
                "channels": specs, "routing": routing or {}, **(extra or {})}
        config = parse_config(data, "<test>")
        self.config_dict = data
        if proxy_kw.get("store") is True:
            from server.store import Store

            proxy_kw["store"] = Store(config.store, secrets=store_secrets(config), **proxy_kw.pop("store_kw", {}))
        return self.gateway(config, seed=seed, **proxy_kw)

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        return self.lt.call(coro, timeout)

    def close(self) -> None:
        for g in self.gateways:
            try:
                self.lt.call(g.stop(), 15)
            except Exception:
                pass
        for m in self.mocks:
            try:
                self.lt.call(m.stop(), 15)
            except Exception:
                pass
        self.lt.close()

    def __enter__(self) -> Stack:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
