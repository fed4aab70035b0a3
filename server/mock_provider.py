"""The mock provider: a channel's API served for real, with the latency and faults of its behaviour model.

It draws one AttemptPlan per request from axonsim.behavior.BehaviorModel (the class the simulator
uses, drawn the way the simulator's channel draws it: on arrival, with the current utilisation),
then acts it out: waits the time to first token, then answers the fault — an HTTP error in the
channel family's error shape (error_status, 429 with Retry-After, 502, 503/529, outages, quotas,
rate limits), a real TCP reset with no HTTP answer at all, or a hang — or the content: a JSON body
after ttft + generation, or an SSE stream of `output_tokens` tokens paced over the generation time,
several tokens per event so long answers stay cheap; `stream_cut` stops after `cut_tokens` without
the terminal event.

Time for the behaviour model (outages, incidents, quota windows) is seconds since the provider
started, as in a simulation run, so a scenario's schedule replays from the moment the mock starts
(and the outage process, generated from t=0, does not have to be wound through decades of Unix time).

Why aiohttp.web and not raw ASGI on uvicorn: a reset needs the socket (SO_LINGER 0, then abort),
which aiohttp exposes as `request.transport` and ASGI does not.

It is generic over the API family: it speaks through the format modules' inbound role
(parse_request, render_response, StreamRenderer, render_error), and serves every family whose
module is present, by path suffix, so any base URL prefix works:
    .../chat/completions  .../responses  .../messages  .../models/{model}:generateContent|:streamGenerateContent
A channel's `base_url` is what that provider's SDK takes (`base_url_for`).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
import random
import re
import signal
import socket
import struct
import sys
import time
from collections import Counter
from collections.abc import Iterable
from types import ModuleType
from typing import Any

from aiohttp import web

from axonsim.behavior import FULL_STATUS, RESET, STREAM_CUT, TIMEOUT, AttemptPlan, BehaviorModel
from axonsim.config import Channel, ConfigError, load_config
from axonsim.formats import FormatError
from axonsim.unified import (
    Error,
    ErrorKind,
    FinishEvent,
    Message,
    Request,
    Response,
    StreamStart,
    TextDelta,
    TextPart,
    Usage,
    UsageEvent,
    error_kind_for_status,
)
from server.auth import extract_key
from server.routes import load_formats

log = logging.getLogger("axonsim.mock")

# What the mock "generates": readable filler, one word per token.
WORDS = ("The", "quick", "brown", "fox", "jumps", "over", "the", "lazy", "dog", "while", "a", "mock", "provider",
         "streams", "tokens", "at", "its", "configured", "pace", "and", "the", "gateway", "relays", "them.")

HANG_SECONDS = 3600.0
_MESSAGES = {
    "error": "the mock provider failed (injected error)",
    "rate_limited": "rate limit reached (injected)",
    "overloaded": "the mock provider is overloaded (injected)",
    "bad_gateway": "bad gateway (injected)",
    "outage": "the mock provider is down (injected outage)",
}  # a `timeout` fault: long enough for any client deadline, finite for hygiene

_GEMINI = re.compile(r"/models/([^/:]+):(generateContent|streamGenerateContent)$")


def base_url_for(channel_type: str, host: str, port: int) -> str:
    """The base URL the provider's official SDK takes (and a channel's `base_url`)."""
    if channel_type in ("openai", "openai_responses"):
        return f"http://{host}:{port}/v1"
    return f"http://{host}:{port}"


def default_channel() -> Channel:
    return Channel(name="mock", type="openai", models=["*"])


def token_text(i: int) -> str:
    w = WORDS[i % len(WORDS)]
    return w if i == 0 else " " + w


def prompt_tokens(req: Request) -> int:
    """A deterministic stand-in for a tokenizer: about four characters per token."""
    chars = 0
    for m in req.messages:
        for p in m.content:
            if isinstance(p, TextPart):
                chars += len(p.text)
    return max(1, math.ceil(chars / 4))


def _reset(request: web.Request) -> None:
    """Close the connection with a TCP RST: the client gets no HTTP answer at all."""
    tr = request.transport
    if tr is None:
        return
    sock = tr.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
    tr.abort()


class MockProvider:
    """One channel's API. `accept_keys`: the upstream keys it accepts (default: the channel's own;
    empty: any). `leak_keys`: echo a rejected key in the error message, as a careless provider
    would (tests use it to prove the gateway scrubs secrets)."""

    def __init__(self, channel: Channel | None = None, *, seed: int | None = None,
                 accept_keys: Iterable[str] | None = None, leak_keys: bool = False,
                 event_interval: float = 0.02, max_events: int = 200) -> None:
        self.channel = channel or default_channel()
        try:
            self.model = BehaviorModel(self.channel.behavior, seed or 0)
        except ValueError as exc:
            raise ConfigError(f"channels[{self.channel.name}].behavior: {exc}") from None
        self.rng = random.Random(seed)
        self.origin = time.monotonic()  # the behaviour model's t=0
        self.formats = load_formats()
        self.keys = frozenset(accept_keys if accept_keys is not None else (k.key for k in self.channel.api_keys))
        self.leak_keys = leak_keys
        self.models = None if "*" in self.channel.models else frozenset(self.channel.models)
        self.event_interval = event_interval
        self.max_events = max_events
        mc = self.channel.behavior.max_concurrency
        self.cap = mc
        self._sem = asyncio.Semaphore(mc) if mc else None
        self.queue = self.model.queue
        self.inflight = 0
        self.stats: Counter[str] = Counter()  # requests, ok, faults by kind, full, cancelled, unauthorized ...
        self._n = 0

    # -- routing ---------------------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_get("/health", self._health)
        app.router.add_get("/v1/models", self._models)
        app.router.add_post("/{tail:.*}", self.handle)
        return app

    def route(self, path: str) -> tuple[ModuleType, str | None, bool | None] | None:
        f = self.formats
        if path.endswith("/chat/completions") and "openai_chat" in f:
            return f["openai_chat"], None, None
        if path.endswith("/responses") and "openai_responses" in f:
            return f["openai_responses"], None, None
        if path.endswith("/messages") and "anthropic" in f:
            return f["anthropic"], None, None
        if "gemini" in f:
            m = _GEMINI.search(path)
            if m is not None:
                return f["gemini"], m.group(1), m.group(2) == "streamGenerateContent"
        return None

    async def _health(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def _models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [
            {"id": m, "object": "model", "created": 0, "owned_by": self.channel.name} for m in self.channel.models]})

    # -- one request -----------------------------------------------------------------------------

    async def handle(self, request: web.Request) -> web.StreamResponse:
        route = self.route(request.path)
        if route is None:
            return web.json_response({"error": {"message": f"no such route: {request.path}", "type": "not_found"}},
                                     status=404)
        fmt, url_model, url_stream = route
        self.stats["requests"] += 1
        body = await request.read()
        if self.keys:
            key = extract_key(((k.lower().encode("latin-1"), v.encode("latin-1"))
                               for k, v in request.headers.items()), request.query_string.encode("latin-1"))
            if key not in self.keys:
                self.stats["unauthorized"] += 1
                msg = "invalid API key" + (f": {key}" if self.leak_keys and key else "")
                return self._error(fmt, Error(kind=ErrorKind.AUTHENTICATION, status=401, message=msg,
                                              code="invalid_api_key"))
        try:
            req = fmt.parse_request(body, url_model, url_stream)
        except FormatError as exc:
            self.stats["bad_request"] += 1
            return self._error(fmt, Error(kind=ErrorKind.INVALID_REQUEST, status=exc.status, message=exc.message,
                                          param=exc.param))
        if self.models is not None and req.model not in self.models:
            self.stats["unknown_model"] += 1
            return self._error(fmt, Error(kind=ErrorKind.NOT_FOUND, status=404, param="model", code="model_not_found",
                                          message=f"the model {req.model!r} does not exist"))
        # Drawn on arrival, whatever happens next, with the utilisation of that moment: as the
        # simulator's channel does, so the same seed gives the same plans in both worlds.
        busy = self.inflight
        plan = self.model.sample(self.rng, time.monotonic() - self.origin, busy / self.cap if self.cap else 0.0,
                                 prompt_tokens(req))
        sem = self._sem
        if sem is not None:
            if sem.locked() and not self.queue:
                self.stats["full"] += 1
                return self._error(fmt, Error(kind=error_kind_for_status(FULL_STATUS), status=FULL_STATUS,
                                              message="the mock provider is at its maximum concurrency"))
            await sem.acquire()
        self.inflight += 1
        try:
            return await self._act(request, fmt, req, plan)
        except asyncio.CancelledError:
            self.stats["cancelled"] += 1  # the client went away (aiohttp cancels the handler)
            raise
        finally:
            self.inflight -= 1
            if sem is not None:
                sem.release()

    async def _act(self, request: web.Request, fmt: ModuleType, req: Request, plan: AttemptPlan) -> web.StreamResponse:
        await asyncio.sleep(plan.ttft)
        fault = plan.fault
        if fault is not None:
            self.stats[fault] += 1
        if plan.status >= 400:  # every HTTP fault: 5xx, 429 (quota, rate limit), outages
            msg = _MESSAGES.get(fault or "", "the mock provider failed (injected fault)")
            return self._error(fmt, Error(kind=error_kind_for_status(plan.status), status=plan.status, message=msg,
                                          retry_after=plan.retry_after))
        if fault == RESET:
            _reset(request)
            return web.Response()  # never written: the transport is gone
        if fault == TIMEOUT:
            await asyncio.sleep(HANG_SECONDS)
            return self._error(fmt, Error(kind=ErrorKind.TIMEOUT, status=504, message="the mock provider hung"))

        tokens = max(1, plan.output_tokens)
        generation = plan.generation
        finish = "stop"
        cut = fault == STREAM_CUT
        send_n = plan.cut_tokens if cut else tokens
        cap = req.sampling.max_tokens
        if cap is not None and 0 < cap < tokens:
            if not cut:
                generation = generation * cap / tokens
            tokens, finish = cap, "length"
            send_n = min(send_n, cap)
        per_token = generation / send_n if send_n else 0.0
        self._n += 1
        rid = f"mock-{self.channel.name}-{self._n}"
        pt = prompt_tokens(req)
        if req.stream:
            return await self._stream(request, fmt, req, rid, pt, tokens, send_n, per_token, finish, cut)

        await asyncio.sleep(generation)
        text = "".join(token_text(i) for i in range(tokens))
        resp = Response(id=rid, model=req.model, created=int(time.time()),
                        message=Message(role="assistant", content=[TextPart(text=text)]), finish_reason=finish,  # type: ignore[arg-type]
                        usage=Usage(prompt_tokens=pt, completion_tokens=tokens, total_tokens=pt + tokens))
        out = fmt.render_response(resp)
        if cut:
            # Part of the body under a full Content-Length, then the connection drops.
            sr = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
            sr.content_length = len(out)
            await sr.prepare(request)
            await sr.write(out[: len(out) // 2])
            if request.transport is not None:
                request.transport.abort()
            return sr
        self.stats["ok"] += 1
        return web.Response(body=out, status=200, content_type="application/json")

    async def _stream(self, request: web.Request, fmt: ModuleType, req: Request, rid: str, pt: int, tokens: int,
                      send_n: int, per_token: float, finish: str, cut: bool) -> web.StreamResponse:
        loop = asyncio.get_running_loop()
        renderer = fmt.StreamRenderer(req)
        sr = web.StreamResponse(status=200, headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await sr.prepare(request)
        t_first = loop.time()
        buf = renderer.render(StreamStart(id=rid, model=req.model, created=int(time.time()),
                                          usage=Usage(prompt_tokens=pt)))
        # Tokens per event: enough that events come no faster than event_interval, and no more
        # than max_events of them, however long the answer.
        rate = 1.0 / per_token if per_token > 0 else math.inf
        batch = max(1, math.ceil(tokens / self.max_events),
                    math.ceil(rate * self.event_interval) if rate != math.inf else tokens)
        sent = 0
        while sent < send_n:
            k = min(batch, send_n - sent)
            buf += renderer.render(TextDelta(text="".join(token_text(i) for i in range(sent, sent + k))))
            await sr.write(buf)
            buf = b""
            sent += k
            delay = t_first + sent * per_token - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
        if cut:
            if request.transport is not None:
                request.transport.abort()  # no terminal event, no chunked-encoding end
            return sr
        buf += renderer.render(FinishEvent(reason=finish))  # type: ignore[arg-type]
        buf += renderer.render(UsageEvent(usage=Usage(prompt_tokens=pt, completion_tokens=tokens,
                                                      total_tokens=pt + tokens)))
        buf += renderer.finish()
        await sr.write(buf)
        await sr.write_eof()
        self.stats["ok"] += 1
        return sr

    def _error(self, fmt: ModuleType, err: Error) -> web.Response:
        headers = {k: str(v) for k, v in fmt.error_headers(err).items()}
        return web.Response(body=fmt.render_error(err), status=fmt.error_status(err), headers=headers,
                            content_type="application/json")


# --------------------------------------------------------------------------------------------------
# Running it


class MockServer:
    """A started mock provider (aiohttp runner on the current loop)."""

    def __init__(self, provider: MockProvider, runner: web.AppRunner, host: str, port: int) -> None:
        self.provider = provider
        self.runner = runner
        self.host = host
        self.port = port

    @property
    def base_url(self) -> str:
        return base_url_for(self.provider.channel.type, self.host, self.port)

    async def stop(self) -> None:
        await self.runner.cleanup()


async def start_mock(provider: MockProvider, host: str = "127.0.0.1", port: int = 0,
                     sock: socket.socket | None = None) -> MockServer:
    """Serve `provider` on the running loop: on `sock` if given (already bound), else host:port (0: any free)."""
    # handler_cancellation: a client that gives up must end the handler (hangs, slow streams).
    runner = web.AppRunner(provider.app(), handler_cancellation=True, access_log=None)
    await runner.setup()
    site: web.BaseSite = web.SockSite(runner, sock) if sock is not None else web.TCPSite(runner, host, port)
    await site.start()
    addr = runner.addresses[0]
    return MockServer(provider, runner, addr[0], addr[1])


def _channel_from_args(args: argparse.Namespace) -> Channel:
    if not args.config:
        if args.channel:
            raise ConfigError("--channel needs --config")
        return default_channel()
    config = load_config(args.config)
    if not args.channel:
        return config.channels[0]
    for ch in config.channels:
        if ch.name == args.channel:
            return ch
    raise ConfigError(f"{args.config}: --channel {args.channel!r}: no channel of that name "
                      f"(channels: {', '.join(c.name for c in config.channels)})")


def run(args: argparse.Namespace) -> int:
    """`axonsim mock-provider`: serve one channel until interrupted."""
    channel = _channel_from_args(args)
    provider = MockProvider(channel, seed=args.seed)
    logging.basicConfig(level=str(args.log_level).upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    async def main() -> None:
        server = await start_mock(provider, args.host, args.port)
        print(f"axonsim mock-provider: channel {channel.name!r} (type {channel.type}) listening on "
              f"http://{server.host}:{server.port}; base_url for clients: {server.base_url}", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(sig, stop.set)
            except (NotImplementedError, RuntimeError):
                pass
        await stop.wait()
        await server.stop()

    try:
        _run_loop(main())
    except OSError as exc:
        print(f"axonsim mock-provider: cannot listen on {args.host}:{args.port}: {exc.strerror}", file=sys.stderr)
        return 1
    return 0


def _run_loop(coro: Any) -> None:
    try:
        import uvloop
    except ImportError:
        asyncio.run(coro)
    else:
        uvloop.run(coro)
