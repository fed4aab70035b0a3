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

Embeddings (OpenAI `.../embeddings`, Gemini `...:embedContent` / `:batchEmbedContents`) are served
with the same behaviour model (latency, faults); the vectors are deterministic — a hash of the model
and the text, unit length, `embedding_dim` values unless the request asks for a dimension — so a
test can compute the expected vector (`embedding_vector`).

Scripted mode (opt-in, for tests: `script=`): a function of the parsed request that returns the
unified Response to answer with (text, reasoning with its signature, tool calls, finish reason,
usage), or None for the ordinary filler answer. The Response is rendered by the channel family's
own inbound renderer, non-stream or as a stream of small deltas, so a client sees exactly what a
provider of that family would send. Faults and time to first token still apply. In scripted mode the
provider also keeps the last requests it received (`received`), so a test can check what the
gateway sent upstream.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import logging
import math
import random
import re
import signal
import socket
import struct
import sys
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable
from types import ModuleType
from typing import Any, NamedTuple

from aiohttp import web

from axonsim.behavior import FULL_STATUS, RESET, STREAM_CUT, TIMEOUT, AttemptPlan, BehaviorModel
from axonsim.config import Channel, ConfigError, load_config
from axonsim.formats import FormatError
from axonsim.unified import (
    Error,
    ErrorKind,
    FinishEvent,
    Message,
    ReasoningDelta,
    ReasoningPart,
    Request,
    Response,
    StreamEvent,
    StreamStart,
    TextDelta,
    TextPart,
    ToolCallDelta,
    Usage,
    UsageEvent,
    error_kind_for_status,
)
from server import embeddings as emb
from server.auth import extract_key
from server.routes import load_formats

log = logging.getLogger("axonsim.mock")

# What the mock "generates": readable filler, one word per token.
WORDS = ("The", "quick", "brown", "fox", "jumps", "over", "the", "lazy", "dog", "while", "a", "mock", "provider",
         "streams", "tokens", "at", "its", "configured", "pace", "and", "the", "gateway", "relays", "them.")

HANG_SECONDS = 3600.0
MAX_DIMENSIONS = 8192  # the largest embedding the mock makes (real providers stop at 3,072)
_MESSAGES = {
    "error": "the mock provider failed (injected error)",
    "rate_limited": "rate limit reached (injected)",
    "overloaded": "the mock provider is overloaded (injected)",
    "bad_gateway": "bad gateway (injected)",
    "outage": "the mock provider is down (injected outage)",
}  # a `timeout` fault: long enough for any client deadline, finite for hygiene

# (a model name may hold colons, and slashes: the method is what follows the last colon)
_GEMINI = re.compile(r"/models/(.+):(generateContent|streamGenerateContent)$", re.DOTALL)
_GEMINI_EMBED = re.compile(r"/models/(.+):(embedContent|batchEmbedContents)$", re.DOTALL)

# Scripted mode: the parsed request -> the answer to give (None: the ordinary filler answer).
Script = Callable[[Request], "Response | None"]


class Received(NamedTuple):
    """A request as a scripted provider received it: the raw body and its parse by the channel's format."""

    path: str
    body: bytes
    request: Request


def embedding_vector(model: str, text: str, dim: int) -> list[float]:
    """The mock's embedding of `text`: deterministic, unit length, from SHA-256 of model and text."""
    vals: list[float] = []
    counter = 0
    seed = f"{model}\x00{text}".encode()
    while len(vals) < dim:
        block = hashlib.sha256(seed + counter.to_bytes(4, "little")).digest()
        counter += 1
        for i in range(0, 32, 4):
            vals.append(int.from_bytes(block[i:i + 4], "little") / 2**31 - 1.0)
    vals = vals[:dim]
    norm = math.sqrt(sum(v * v for v in vals)) or 1.0
    return [v / norm for v in vals]


def script_events(resp: Response, chunk: int = 7) -> list[StreamEvent]:
    """A scripted Response as the stream events a provider would send: reasoning, then text, then a
    refusal, then tool calls, in deltas of `chunk` characters (so clients must reassemble), then
    finish and usage."""
    def pieces(s: str) -> list[str]:
        return [s[i:i + chunk] for i in range(0, len(s), chunk)] or [""]

    u = resp.usage
    evs: list[StreamEvent] = [StreamStart(id=resp.id, model=resp.model, created=resp.created,
                                          usage=Usage(prompt_tokens=u.prompt_tokens, cached_tokens=u.cached_tokens)
                                          if u is not None else None)]
    for p in resp.message.content:
        if isinstance(p, ReasoningPart):
            if p.redacted:
                evs.append(ReasoningDelta(redacted_data=p.data))
                continue
            evs.extend(ReasoningDelta(text=t) for t in pieces(p.text))
            if p.signature:
                evs.append(ReasoningDelta(signature=p.signature, signature_provider=p.signature_provider))
        elif isinstance(p, TextPart):
            evs.extend(TextDelta(text=t) for t in pieces(p.text))
    if resp.message.refusal:
        evs.extend(TextDelta(text=t, refusal=True) for t in pieces(resp.message.refusal))
    for i, c in enumerate(resp.message.tool_calls):
        args = pieces(c.arguments)
        evs.append(ToolCallDelta(index=i, id=c.id, name=c.name, arguments=args[0]))
        evs.extend(ToolCallDelta(index=i, arguments=a) for a in args[1:])
    if resp.finish_reason is not None:
        evs.append(FinishEvent(reason=resp.finish_reason, finish_native=resp.finish_native,
                               stop_sequence=resp.stop_sequence, continuation=resp.continuation))
    if u is not None:
        evs.append(UsageEvent(usage=u))
    return evs


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
                 event_interval: float = 0.02, max_events: int = 200, embedding_dim: int = 16,
                 script: Script | None = None, script_chunk: int = 7, keep_received: int = 256) -> None:
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
        self.embedding_dim = embedding_dim
        self.script = script
        self.script_chunk = script_chunk
        # Only scripted providers keep what they received: tests read it; a load test must not grow.
        self.received: deque[Received] = deque(maxlen=keep_received if script is not None else 0)

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
        embed = self.embed_route(request.path)
        if embed is not None:
            return await self._handle_embeddings(request, *embed)
        route = self.route(request.path)
        if route is None:
            return web.json_response({"error": {"message": f"no such route: {request.path}", "type": "not_found"}},
                                     status=404)
        fmt, url_model, url_stream = route
        self.stats["requests"] += 1
        body = await request.read()
        denied = self._check_key(request, fmt)
        if denied is not None:
            return denied
        try:
            req = fmt.parse_request(body, url_model, url_stream)
        except FormatError as exc:
            self.stats["bad_request"] += 1
            return self._error(fmt, Error(kind=ErrorKind.INVALID_REQUEST, status=exc.status, message=exc.message,
                                          param=exc.param))
        if self.models is not None and req.model not in self.models:
            return self._unknown_model(fmt, req.model)
        scripted = None
        if self.script is not None:
            self.received.append(Received(request.path, body, req))
            scripted = self.script(req)
        return await self._admit(request, fmt, prompt_tokens(req),
                                 lambda plan: self._act(request, fmt, req, plan, scripted))

    def _check_key(self, request: web.Request, fmt: ModuleType) -> web.Response | None:
        if not self.keys:
            return None
        key = extract_key(((k.lower().encode("latin-1"), v.encode("latin-1"))
                           for k, v in request.headers.items()), request.query_string.encode("latin-1"))
        if key in self.keys:
            return None
        self.stats["unauthorized"] += 1
        msg = "invalid API key" + (f": {key}" if self.leak_keys and key else "")
        return self._error(fmt, Error(kind=ErrorKind.AUTHENTICATION, status=401, message=msg, code="invalid_api_key"))

    def _unknown_model(self, fmt: ModuleType, model: str) -> web.Response:
        self.stats["unknown_model"] += 1
        return self._error(fmt, Error(kind=ErrorKind.NOT_FOUND, status=404, param="model", code="model_not_found",
                                      message=f"the model {model!r} does not exist"))

    async def _admit(self, request: web.Request, fmt: ModuleType, tokens_in: int,
                     act: Callable[[AttemptPlan], Any]) -> web.StreamResponse:
        """Draw the plan and run `act(plan)` inside the concurrency limit."""
        # Drawn on arrival, whatever happens next, with the utilisation of that moment: as the
        # simulator's channel does, so the same seed gives the same plans in both worlds.
        busy = self.inflight
        plan = self.model.sample(self.rng, time.monotonic() - self.origin, busy / self.cap if self.cap else 0.0,
                                 tokens_in)
        sem = self._sem
        if sem is not None:
            if sem.locked() and not self.queue:
                self.stats["full"] += 1
                return self._error(fmt, Error(kind=error_kind_for_status(FULL_STATUS), status=FULL_STATUS,
                                              message="the mock provider is at its maximum concurrency"))
            await sem.acquire()
        self.inflight += 1
        try:
            out: web.StreamResponse = await act(plan)
            return out
        except asyncio.CancelledError:
            self.stats["cancelled"] += 1  # the client went away (aiohttp cancels the handler)
            raise
        finally:
            self.inflight -= 1
            if sem is not None:
                sem.release()

    async def _fault(self, request: web.Request, fmt: ModuleType, plan: AttemptPlan) -> web.StreamResponse | None:
        """Wait the time to first token, then act out the plan's fault; None if there is none to answer."""
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
        return None

    async def _act(self, request: web.Request, fmt: ModuleType, req: Request, plan: AttemptPlan,
                   scripted: Response | None = None) -> web.StreamResponse:
        failed = await self._fault(request, fmt, plan)
        if failed is not None:
            return failed
        if scripted is not None:
            return await self._scripted(request, fmt, req, scripted)
        fault = plan.fault

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

    async def _scripted(self, request: web.Request, fmt: ModuleType, req: Request,
                        resp: Response) -> web.StreamResponse:
        """Answer with a scripted Response (scripted mode), rendered by the family's inbound renderer.
        The answer names the requested model, as a provider does."""
        self._n += 1
        resp = resp.model_copy(update={"model": req.model, "id": resp.id or f"mock-{self.channel.name}-{self._n}",
                                       "created": resp.created or int(time.time())})
        self.stats["ok"] += 1
        if not req.stream:
            return web.Response(body=fmt.render_response(resp), status=200, content_type="application/json")
        renderer = fmt.StreamRenderer(req)
        sr = web.StreamResponse(status=200, headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await sr.prepare(request)
        for ev in script_events(resp, self.script_chunk):
            data = renderer.render(ev)
            if data:
                await sr.write(data)  # event by event: the gateway's parser sees realistic chunking
        await sr.write(renderer.finish())
        await sr.write_eof()
        return sr

    def embed_route(self, path: str) -> tuple[emb.Family, str | None, str | None] | None:
        if path.endswith("/embeddings") and "openai_chat" in self.formats:
            return "openai", None, None
        if "gemini" in self.formats:
            m = _GEMINI_EMBED.search(path)
            if m is not None:
                return "gemini", m.group(1), m.group(2)
        return None

    async def _handle_embeddings(self, request: web.Request, family: emb.Family, url_model: str | None,
                                 action: str | None) -> web.StreamResponse:
        fmt = self.formats["gemini" if family == "gemini" else "openai_chat"]  # renders the family's errors
        self.stats["requests"] += 1
        self.stats["embeddings"] += 1
        body = await request.read()
        denied = self._check_key(request, fmt)
        if denied is not None:
            return denied
        try:
            req = emb.parse_request(family, body, url_model, action)
        except FormatError as exc:
            self.stats["bad_request"] += 1
            return self._error(fmt, Error(kind=ErrorKind.INVALID_REQUEST, status=exc.status, message=exc.message,
                                          param=exc.param))
        if self.models is not None and req.model not in self.models:
            return self._unknown_model(fmt, req.model)
        if family == "gemini" and len(req.inputs) > emb.GEMINI_BATCH:
            self.stats["bad_request"] += 1  # Gemini's own limit, in its words
            return self._error(fmt, Error(kind=ErrorKind.INVALID_REQUEST, status=400, param="requests",
                                          message="* BatchEmbedContentsRequest.requests: at most 100 requests can be "
                                                  "in one batch"))
        dims = [o[0] for o in req.per_item] if req.per_item else [req.dimensions] * len(req.inputs)
        if any(d is not None and d > MAX_DIMENSIONS for d in dims):
            # As a real provider refuses it (3,072 at most for OpenAI's and Google's largest): an
            # unbounded size would have the mock build answers of any size.
            self.stats["bad_request"] += 1
            param = "outputDimensionality" if family == "gemini" else "dimensions"
            return self._error(fmt, Error(kind=ErrorKind.INVALID_REQUEST, status=400, param=param,
                                          message=f"{param} must be at most {MAX_DIMENSIONS}"))
        if any(not isinstance(x, str) for x in req.inputs):
            # The mock has no tokenizer: a token-id input is embedded as its decimal spelling.
            req.inputs = [x if isinstance(x, str) else " ".join(map(str, x)) for x in req.inputs]
        tokens = req.estimated_tokens()

        async def act(plan: AttemptPlan) -> web.StreamResponse:
            failed = await self._fault(request, fmt, plan)
            if failed is not None:
                return failed
            res = emb.EmbedResult([embedding_vector(req.model, str(t), d or self.embedding_dim)
                                   for t, d in zip(req.inputs, dims, strict=True)], tokens, tokens)
            self.stats["ok"] += 1
            return web.Response(body=emb.render_response(res, req), status=200, content_type="application/json")

        return await self._admit(request, fmt, tokens, act)

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


if __name__ == "__main__":  # `python -m server.mock_provider ...`: the same as `axonsim mock-provider ...`
    import sys

    from axonsim.cli import main

    sys.exit(main(["mock-provider", *sys.argv[1:]]))
