"""The gateway's own work per request, in process, without sockets: which layer costs how many µs.

The end-to-end benchmark (proxy_overhead.py) says how much CPU a request costs the proxy process;
this one splits the part that is AxonSim's (everything but uvicorn's HTTP server and aiohttp's
HTTP client) into its layers, each timed in a tight loop (best of 5 rounds, µs per call):

    parse / render     the client format's parse_request, parse_response, response_usage,
                       StreamParser.feed over a 22-frame stream, StreamRenderer.render over its events
    core               Router.execute for one successful attempt, Call reporting included
    driver             LiveDriver.execute with an in-memory upstream (non-stream, stream)
    handler            GatewayApp (the raw-ASGI handler) end to end with an in-memory upstream and
                       fake receive/send: auth, parse, execute, respond, record; and a stream's
                       time to its first body bytes, back to back and after 5 ms of idle loop (medians)
    asyncio pieces     asyncio.timeout_at, a disconnect-watcher task, loop.call_at

    python -m benchmarks.hot_path_micro [--n 20000] [--json out.json]

Figures only, printed and optionally written as JSON; nothing asserts a time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import time
from collections.abc import Callable, Mapping
from typing import Any

import orjson

from axonsim.config import parse_config
from axonsim.formats import get_format
from benchmarks.fast_mock import _RESPONSE, STREAM_FRAMES
from server.upstream import UpstreamResponse

oc = get_format("openai_chat")

BODY = orjson.dumps({"model": "gpt-bench", "messages": [{"role": "user", "content": "Say hello in five words."}],
                     "max_tokens": 32})
STREAM_BODY = orjson.dumps({**orjson.loads(BODY), "stream": True})
CLIENT_KEY = "sk-bench-client"


def config() -> Any:
    return parse_config({
        "gateway": {"api_keys": [{"key": CLIENT_KEY, "project": "bench", "name": "bench-client"}]},
        "channels": [
            {"name": "mock-a", "type": "openai", "base_url": "http://127.0.0.1:1/v1",
             "api_keys": ["sk-up-a1", "sk-up-a2"], "models": ["gpt-bench"]},
            {"name": "mock-b", "type": "openai", "base_url": "http://127.0.0.1:1/v1",
             "api_keys": ["sk-up-b1", "sk-up-b2"], "models": ["gpt-bench"]},
        ],
        "routing": {"strategy": "composite"},
    })


IDLE = 0.005  # seconds of idle event loop before each request of the after-idle figure


def timeit(fn: Callable[[], Any], n: int, rounds: int = 5) -> float:
    """µs per call, best round."""
    best = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter_ns()
        for _ in range(n):
            fn()
        best = min(best, (time.perf_counter_ns() - t0) / n / 1000.0)
    return best


async def atimeit(fn: Callable[[], Any], n: int, rounds: int = 5) -> float:
    best = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter_ns()
        for _ in range(n):
            await fn()
        best = min(best, (time.perf_counter_ns() - t0) / n / 1000.0)
    return best


class _Resp:
    """An upstream answer already in memory (the shape server.upstream hands the driver)."""

    __slots__ = ("status", "headers", "_chunks")

    def __init__(self, chunks: list[bytes]) -> None:
        self.status = 200
        self.headers: Mapping[str, str] = {}
        self._chunks = chunks

    async def read(self) -> bytes:
        return b"".join(self._chunks)

    async def next_chunk(self) -> bytes:
        if self._chunks:
            return self._chunks.pop(0)
        return b""

    def began(self) -> None:
        pass

    def finish(self) -> None:
        pass

    def close(self) -> None:
        pass


class MemoryUpstream:
    async def start(self) -> None:
        pass

    async def aclose(self) -> None:
        pass

    async def send(self, req: Any) -> UpstreamResponse:  # typed: mypy holds _Resp to the protocol
        return _Resp(list(STREAM_FRAMES) if req.stream else [_RESPONSE])


def sync_parts(n: int) -> dict[str, float]:
    out: dict[str, float] = {}
    out["orjson.loads(request body)"] = timeit(lambda: orjson.loads(BODY), n)
    out["openai_chat.parse_request"] = timeit(lambda: oc.parse_request(BODY), n)
    out["openai_chat.parse_response"] = timeit(lambda: oc.parse_response(_RESPONSE), n)
    out["openai_chat.response_usage (a body forwarded verbatim)"] = timeit(lambda: oc.response_usage(_RESPONSE), n)
    req = oc.parse_request(STREAM_BODY)
    out["openai_chat.build_request (stream)"] = timeit(lambda: oc.build_request(req, "gpt-bench"), n)

    def feed() -> list[Any]:
        p = oc.StreamParser()
        evs = []
        for f in STREAM_FRAMES:
            evs.extend(p.feed(f))
        evs.extend(p.close())
        return evs

    evs = feed()
    out[f"StreamParser: 22 frames → {len(evs)} events (per stream)"] = timeit(feed, n // 10)

    def render() -> bytes:
        r = oc.StreamRenderer(req)
        b = b"".join([r.render(e) for e in evs])
        return b + r.finish()

    out["StreamRenderer: those events + finish (per stream)"] = timeit(render, n // 10)

    from server.auth import GatewayAuth

    cfg = config()
    auth = GatewayAuth(cfg.gateway.api_keys)
    headers = [(b"host", b"127.0.0.1"), (b"content-type", b"application/json"),
               (b"authorization", f"Bearer {CLIENT_KEY}".encode()), (b"content-length", b"100")]
    out["GatewayAuth.authenticate"] = timeit(lambda: auth.authenticate(headers, b""), n)
    out["request id (os.urandom(12).hex())"] = timeit(lambda: "req_" + os.urandom(12).hex(), n)
    resp = oc.parse_response(_RESPONSE)
    out["Usage.model_dump"] = timeit(lambda: resp.usage.model_dump(), n)  # type: ignore[union-attr]

    from axonsim.execution import Call, Outcome, Router

    router = Router(cfg)
    rng = random.Random(1)
    clock = [1.7e9]

    def execute() -> Any:
        clock[0] += 0.001
        t = clock[0]
        gen = router.execute("gpt-bench", t, rng, req, tokens=20)
        call = next(gen)
        assert isinstance(call, Call)
        call.started(t)
        call.first_token(t + 0.0005)
        call.succeeded(t + 0.0005, 8)
        try:
            gen.send(Outcome(True, t + 0.0005, 200, ttft=0.0005, key=call.key))
        except StopIteration as stop:
            return stop.value
        raise AssertionError("execute did not finish")

    out["Router.execute, one good attempt, Call reporting included"] = timeit(execute, n)
    res = execute()
    out["AttemptRecord.as_dict"] = timeit(lambda: [a.as_dict() for a in res.attempts], n)
    return out


async def async_parts(n: int) -> dict[str, float]:
    out: dict[str, float] = {}
    loop = asyncio.get_running_loop()

    async def timeout_block() -> None:
        async with asyncio.timeout_at(loop.time() + 600):
            pass

    out["asyncio.timeout_at enter+exit"] = await atimeit(timeout_block, n)

    def call_at() -> None:
        loop.call_at(loop.time() + 600, _noop).cancel()

    out["loop.call_at + cancel (a watchdog timer)"] = timeit(call_at, n)

    never = asyncio.Event()

    async def watcher() -> None:
        await never.wait()

    async def watch_task() -> None:
        t = loop.create_task(watcher())
        await asyncio.sleep(0)  # it starts (as the real watcher does, waiting on receive())
        t.cancel()

    out["disconnect watcher: create_task + start + cancel"] = await atimeit(watch_task, n // 2)

    from server.driver import Exchange
    from server.proxy import Proxy

    cfg = config()
    proxy = Proxy(cfg, upstream=MemoryUpstream(), seed=1)
    await proxy.startup()
    req = oc.parse_request(BODY)
    sreq = oc.parse_request(STREAM_BODY)

    async def drive() -> None:
        await proxy.driver.execute(Exchange(req, BODY, oc), 20)

    out["LiveDriver.execute non-stream (memory upstream; parse_response included)"] = await atimeit(drive, n)

    async def drive_stream() -> None:
        res = await proxy.driver.execute(Exchange(sreq, STREAM_BODY, oc), 20)
        s = res.outcome.payload  # type: ignore[union-attr]
        while await s.next_events() is not None:
            pass

    out["LiveDriver.execute stream + drain (memory upstream, 22 frames)"] = await atimeit(drive_stream, n // 10)

    from server.app import GatewayApp

    async def fallback(scope: Any, receive: Any, send: Any) -> None:
        raise AssertionError("not reached")

    app = GatewayApp(proxy, fallback)
    headers = [(b"host", b"127.0.0.1"), (b"content-type", b"application/json"),
               (b"authorization", f"Bearer {CLIENT_KEY}".encode())]

    def scope() -> dict[str, Any]:
        return {"type": "http", "method": "POST", "path": "/v1/chat/completions", "headers": headers,
                "query_string": b"", "http_version": "1.1", "scheme": "http"}

    statuses: set[int] = set()

    async def send(msg: Any) -> None:
        if msg["type"] == "http.response.start":
            statuses.add(msg["status"])

    def receiver(body: bytes) -> Callable[[], Any]:
        first = [True]

        async def receive() -> dict[str, Any]:
            if first[0]:
                first[0] = False
                return {"type": "http.request", "body": body, "more_body": False}
            await never.wait()
            return {"type": "http.disconnect"}

        return receive

    async def handle() -> None:
        await app(scope(), receiver(BODY), send)

    async def handle_stream() -> None:
        await app(scope(), receiver(STREAM_BODY), send)

    out["GatewayApp handler, non-stream (all of AxonSim's work but HTTP)"] = await atimeit(handle, n)
    out["GatewayApp handler, stream (22 frames)"] = await atimeit(handle_stream, n // 10)
    first = [0]

    async def first_send(msg: Any) -> None:
        if msg["type"] == "http.response.body" and not first[0]:
            first[0] = time.perf_counter_ns()

    async def to_first_byte(idle: float, count: int) -> float:
        """Median µs from the handler's call to its first body bytes (a stream's first events),
        each request after `idle` seconds of the event loop waiting on nothing."""
        spans = []
        for _ in range(count):
            if idle:
                await asyncio.sleep(idle)
            first[0] = 0
            t0 = time.perf_counter_ns()
            await app(scope(), receiver(STREAM_BODY), first_send)
            spans.append((first[0] - t0) / 1000.0)
        return statistics.median(spans)

    # The paced stream probe of proxy_overhead.py meets the gateway after a pause (its mock waits
    # 5 ms before its second frame): on a shared VM, code run after the CPU sat idle ran several
    # times slower than the same code run back to back (a tight loop only ~20 % slower: most likely
    # caches refilled from memory), so the more code a request runs before its first byte, the more
    # that costs. Both figures, side by side.
    out["GatewayApp stream, to the first byte, back to back"] = await to_first_byte(0.0, max(50, n // 20))
    out["GatewayApp stream, to the first byte, after 5 ms idle"] = await to_first_byte(IDLE, max(50, n // 100))
    if statuses != {200}:  # a handler failing fast would time its error path
        raise RuntimeError(f"the handler answered {sorted(statuses)}, not only 200")
    await proxy.shutdown()
    return out


def _noop() -> None:
    pass


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=20000)
    p.add_argument("--json", default=None)
    a = p.parse_args()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    import logging

    logging.getLogger("axonsim").setLevel(logging.WARNING)
    res = sync_parts(a.n)
    res.update(asyncio.run(async_parts(a.n)))
    width = max(map(len, res))
    for k, v in res.items():
        print(f"{k:<{width}}  {v:8.2f} µs")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"n": a.n, "us_per_call": res, "loadavg": os.getloadavg()}, f, indent=1)


if __name__ == "__main__":
    main()
