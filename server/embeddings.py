"""Embeddings routed like chat: OpenAI `/v1/embeddings` and Gemini `:embedContent` / `:batchEmbedContents` in, any embedding-capable channel out.

Theory of operation:
- Wire formats (pure functions, both roles, both families): the client's body is parsed into an
  EmbedRequest; a channel's answer is parsed into an EmbedResult; each is rendered in the other
  family when client and channel differ. The mock provider serves embeddings with the same functions
  (inbound role), so what it answers is exactly what a provider of that family sends.
- Routing: the request goes through the chat Router — same candidates, balancer, retries, failover,
  channel state — with `Needs(embeddings=True)`, so only channel types with an embeddings API
  (axonsim.capabilities.EMBEDDING_CHANNELS: openai, gemini) are candidates, and a model that only
  Anthropic / Responses channels serve gets a 400 naming why.
- Execution: EmbeddingsDriver is the LiveDriver with one different attempt (an embeddings call
  instead of a chat call); the effects loop, hedging and accounting are the chat driver's own.
- What does not cross families: Gemini `taskType`/`title` reach only Gemini channels; OpenAI `user`
  and unknown fields reach only OpenAI channels; token-id inputs go only to OpenAI channels, and a
  Gemini batch whose requests ask different `outputDimensionality` only to Gemini channels (routing
  leaves the others out; a 400 when none is left); only text parts of a Gemini content are embedded
  (else 400). A Gemini channel takes at most GEMINI_BATCH requests per call: more are split into
  several calls of one attempt, their embeddings joined in order.
  When a channel reports no usage (Gemini's embed API often does not), usage is the gateway's
  estimate of ≈ 4 characters per token.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import math
import struct
import traceback
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import orjson

from axonsim.capabilities import Needs
from axonsim.execution import Call, Outcome, Result
from axonsim.formats import FormatError
from axonsim.unified import Error, ErrorKind, Usage
from server.driver import CLIENT_CLOSED, MALFORMED_RESPONSE, ChannelRuntime, Exchange, LiveDriver, transport_error
from server.ids import id_text
from server.upstream import UpstreamError, UpstreamRequest

if TYPE_CHECKING:
    from server.proxy import Proxy, Runtime
    from server.routes import Route

log = logging.getLogger("axonsim.server.embeddings")

Family = Literal["openai", "gemini"]
Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

EMBEDDINGS = Needs(embeddings=True)

# Which embeddings dialect a channel type speaks (the keys are axonsim.capabilities.EMBEDDING_CHANNELS).
CHANNEL_FAMILY: dict[str, Family] = {"openai": "openai", "gemini": "gemini"}

_UPSTREAM = 502  # FormatError status when the provider, not the client, spoke badly
GEMINI_BATCH = 100  # requests per :batchEmbedContents call that Gemini accepts
_OPENAI_FIELDS = frozenset({"model", "input", "dimensions", "encoding_format", "user"})


@dataclass(slots=True)
class EmbedRequest:
    """One embeddings request, whichever family sent it. `model` and `stream` are what the chat
    driver's effects loop reads (an embeddings request never streams)."""

    model: str
    inputs: list[str | list[int]]
    source: Family
    dimensions: int | None = None
    encoding_format: Literal["float", "base64"] = "float"  # what an OpenAI client wants back
    user: str | None = None
    task_type: str | None = None  # Gemini only
    title: str | None = None  # Gemini only
    batch: bool = True  # a Gemini client's :batchEmbedContents (answer `embeddings`) vs :embedContent (`embedding`)
    # A Gemini batch whose requests differ in (outputDimensionality, taskType, title): each one's own.
    per_item: list[tuple[int | None, str | None, str | None]] | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # unknown OpenAI fields, for OpenAI channels only
    stream: bool = False

    def estimated_tokens(self) -> int:
        """≈ 4 characters per token (a token-id input counts its ids): for local TPM limits, and the
        usage reported when a channel reports none."""
        n = 0
        for x in self.inputs:
            n += len(x) if isinstance(x, list) else math.ceil(len(x) / 4)
        return max(1, n)


@dataclass(slots=True)
class EmbedResult:
    vectors: list[list[float]]
    prompt_tokens: int = 0
    total_tokens: int = 0


def _bad(message: str, param: str | None, status: int = 400) -> FormatError:
    return FormatError(message, param, status)


def _load_object(body: bytes, what: str, status: int = 400) -> dict[str, Any]:
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise _bad(f"{what} is not valid JSON", None, status) from None
    if not isinstance(obj, dict):
        raise _bad(f"{what} must be a JSON object", None, status)
    return obj


def _get(d: dict[str, Any], key: str) -> Any:
    """A Gemini field in either spelling: lowerCamelCase is canonical, the server also accepts snake_case."""
    v = d.get(key)
    if v is None:
        snake = "".join("_" + c.lower() if c.isupper() else c for c in key)
        if snake != key:
            v = d.get(snake)
    return v


def _positive_int(v: Any, param: str) -> int | None:
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
        raise _bad(f"{param} must be a positive integer", param)
    return v


def _opt_str(v: Any, param: str) -> str | None:
    if v is not None and not isinstance(v, str):
        raise _bad(f"{param} must be a string", param)
    return v


# --------------------------------------------------------------------------------------------------
# OpenAI family


def parse_openai_request(body: bytes) -> EmbedRequest:
    """Inbound: an OpenAI `/embeddings` body. FormatError (400, naming the field) if malformed."""
    d = _load_object(body, "the request body")
    model = d.get("model")
    if not isinstance(model, str) or not model:
        raise _bad("model is required (a string)", "model")
    raw = d.get("input")
    if raw is None:
        raise _bad("input is required: a string, an array of strings, or token arrays", "input")
    inputs: list[str | list[int]]
    if isinstance(raw, str):
        inputs = [raw]
    elif isinstance(raw, list) and raw and all(isinstance(x, int) and not isinstance(x, bool) for x in raw):
        inputs = [list(raw)]  # one input given as token ids
    elif isinstance(raw, list) and raw:
        inputs = []
        for i, x in enumerate(raw):
            if isinstance(x, str):
                inputs.append(x)
            elif isinstance(x, list) and x and all(isinstance(t, int) and not isinstance(t, bool) for t in x):
                inputs.append(list(x))
            else:
                raise _bad(f"input[{i}] must be a non-empty string or an array of token ids", f"input[{i}]")
    else:
        raise _bad("input must be a non-empty string or array", "input")
    for i, x in enumerate(inputs):
        if x == "":
            raise _bad(f"input[{i}] must not be empty", f"input[{i}]")
    enc = d.get("encoding_format", "float")
    if enc is None:
        enc = "float"
    if enc not in ("float", "base64"):
        raise _bad("encoding_format must be 'float' or 'base64'", "encoding_format")
    return EmbedRequest(model=model, inputs=inputs, source="openai",
                        dimensions=_positive_int(d.get("dimensions"), "dimensions"),
                        encoding_format=enc, user=_opt_str(d.get("user"), "user"),
                        extra={k: v for k, v in d.items() if k not in _OPENAI_FIELDS})


def _b64_floats(vec: list[float]) -> str:
    # The OpenAI wire's base64 is little-endian float32, which the SDKs decode with numpy or array.
    return base64.b64encode(struct.pack(f"<{len(vec)}f", *vec)).decode()


def _floats_b64(s: str, where: str) -> list[float]:
    try:
        raw = base64.b64decode(s, validate=True)
    except (binascii.Error, ValueError):
        raise _bad(f"{where} is not valid base64", None, _UPSTREAM) from None
    if len(raw) % 4:
        raise _bad(f"{where} is not a whole number of float32 values", None, _UPSTREAM)
    return list(struct.unpack(f"<{len(raw) // 4}f", raw))


def render_openai_response(res: EmbedResult, req: EmbedRequest) -> bytes:
    """Inbound: the answer an OpenAI client expects, in the encoding it asked for."""
    b64 = req.encoding_format == "base64"
    data = [{"object": "embedding", "index": i, "embedding": _b64_floats(v) if b64 else v}
            for i, v in enumerate(res.vectors)]
    return orjson.dumps({"object": "list", "data": data, "model": req.model,
                         "usage": {"prompt_tokens": res.prompt_tokens, "total_tokens": res.total_tokens}})


def build_openai_request(req: EmbedRequest, upstream_model: str) -> tuple[str, bytes]:
    """Outbound: (path under the channel's base_url, body) for an OpenAI channel."""
    body: dict[str, Any] = {}
    if req.source == "openai":
        body.update(req.extra)  # the client's own dialect: passed through untouched
    body["model"] = upstream_model
    body["input"] = req.inputs
    # An OpenAI client's choice is kept (the SDK asks base64: 4x smaller); a Gemini client's request
    # asks floats, which every OpenAI-compatible server supports.
    body["encoding_format"] = req.encoding_format if req.source == "openai" else "float"
    if req.dimensions is not None:
        body["dimensions"] = req.dimensions
    if req.user is not None:
        body["user"] = req.user
    return "/embeddings", orjson.dumps(body)


def _usage_ints(u: Any, prompt_key: str, total_key: str) -> tuple[int, int]:
    if not isinstance(u, dict):
        return 0, 0
    p, t = u.get(prompt_key), u.get(total_key)
    p = p if isinstance(p, int) and not isinstance(p, bool) and p >= 0 else 0
    t = t if isinstance(t, int) and not isinstance(t, bool) and t >= 0 else 0
    return p, t


def _vector(v: Any, where: str) -> list[float]:
    if isinstance(v, str):
        return _floats_b64(v, where)
    if isinstance(v, list) and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v):
        return [float(x) for x in v]
    raise _bad(f"{where} is not an embedding vector", None, _UPSTREAM)


def parse_openai_response(body: bytes, n: int) -> EmbedResult:
    """Outbound: an OpenAI channel's answer for `n` inputs. FormatError (502) if malformed."""
    d = _load_object(body, "the upstream response", _UPSTREAM)
    data = d.get("data")
    if not isinstance(data, list) or len(data) != n:
        raise _bad(f"the upstream response has no data list of {n} embeddings", None, _UPSTREAM)
    vectors: list[list[float] | None] = [None] * n
    for i, item in enumerate(data):
        if not isinstance(item, dict):
            raise _bad(f"data[{i}] is not an object", None, _UPSTREAM)
        idx = item.get("index", i)
        if not isinstance(idx, int) or not 0 <= idx < n or vectors[idx] is not None:
            raise _bad(f"data[{i}].index is missing or repeated", None, _UPSTREAM)
        vectors[idx] = _vector(item.get("embedding"), f"data[{i}].embedding")
    p, t = _usage_ints(d.get("usage"), "prompt_tokens", "total_tokens")
    return EmbedResult([v for v in vectors if v is not None], p, t or p)


# --------------------------------------------------------------------------------------------------
# Gemini family


def _content_text(c: Any, path: str) -> str:
    if not isinstance(c, dict):
        raise _bad(f"{path} must be a Content object with parts", path)
    parts = c.get("parts")
    if not isinstance(parts, list) or not parts:
        raise _bad(f"{path}.parts must be a non-empty array", f"{path}.parts")
    texts = []
    for j, p in enumerate(parts):
        t = p.get("text") if isinstance(p, dict) else None
        if not isinstance(t, str):
            raise _bad(f"{path}.parts[{j}]: only text parts can be embedded through this gateway",
                       f"{path}.parts[{j}]")
        texts.append(t)
    # Several text parts of one content are one input (the API embeds a content, not a part).
    return " ".join(texts)


def parse_gemini_request(body: bytes, model: str | None, action: str) -> EmbedRequest:
    """Inbound: a Gemini `:embedContent` (one content) or `:batchEmbedContents` (`requests[]`) body;
    `model` comes from the URL."""
    d = _load_object(body, "the request body")
    if not model:
        raise _bad("the model is required in the URL (models/{model}:embedContent)", "model")
    model = model.removeprefix("models/")
    if action == "embedContent":
        items = [(d, "")]
    else:
        reqs = d.get("requests")
        if not isinstance(reqs, list) or not reqs:
            raise _bad("requests is required: a non-empty array of EmbedContentRequest", "requests")
        items = [(r, f"requests[{i}].") for i, r in enumerate(reqs)]
    inputs: list[str | list[int]] = []
    every: list[tuple[Any, Any, Any]] = []
    for r, where in items:
        if not isinstance(r, dict):
            raise _bad(f"{where.rstrip('.')} must be an object", where.rstrip(".") or None)
        c = r.get("content")
        if c is None:
            raise _bad(f"{where}content is required", f"{where}content")
        inputs.append(_content_text(c, f"{where}content"))
        every.append((_positive_int(_get(r, "outputDimensionality"), f"{where}outputDimensionality"),
                      _opt_str(_get(r, "taskType"), f"{where}taskType"), _opt_str(r.get("title"), f"{where}title")))
    opts = every[0]
    # Each request of a Gemini batch is a whole EmbedContentRequest, its options its own.
    per_item = every if any(o != opts for o in every) else None
    return EmbedRequest(model=model, inputs=inputs, source="gemini", dimensions=opts[0], task_type=opts[1],
                        title=opts[2], batch=action != "embedContent", per_item=per_item)


def needs_of(req: EmbedRequest) -> Needs:
    """Which channels may serve `req`: any with an embeddings API, unless its inputs or options
    are of a kind only one family carries."""
    if any(not isinstance(x, str) for x in req.inputs):
        return Needs(embeddings=True, embed_types=frozenset({"openai"}), embed_why="token-id input (Gemini embeds text)")
    if req.per_item is not None and len({o[0] for o in req.per_item}) > 1:
        return Needs(embeddings=True, embed_types=frozenset({"gemini"}),
                     embed_why="a different outputDimensionality per request (OpenAI takes one `dimensions`)")
    return EMBEDDINGS


def render_gemini_response(res: EmbedResult, req: EmbedRequest) -> bytes:
    usage = {"promptTokenCount": res.prompt_tokens, "totalTokenCount": res.total_tokens}
    if not req.batch:
        return orjson.dumps({"embedding": {"values": res.vectors[0]}, "usageMetadata": usage})
    return orjson.dumps({"embeddings": [{"values": v} for v in res.vectors], "usageMetadata": usage})


def build_gemini_request(req: EmbedRequest, upstream_model: str) -> list[tuple[str, bytes, int]]:
    """Outbound: the calls for a Gemini channel, each (path under the channel's base_url, body, how
    many inputs it embeds): one, or one per GEMINI_BATCH inputs, in order."""
    model = upstream_model.removeprefix("models/")
    texts = []
    for i, x in enumerate(req.inputs):
        if not isinstance(x, str):  # routing keeps these away (needs_of); defensive only
            raise _bad(f"input[{i}]: token-id input cannot be sent to a Gemini channel (it embeds text)",
                       f"input[{i}]")
        texts.append(x)
    own = req.per_item or [(req.dimensions, req.task_type, req.title)] * len(texts)

    def one(text: str, opts: tuple[int | None, str | None, str | None]) -> dict[str, Any]:
        dimensions, task_type, title = opts
        r: dict[str, Any] = {"model": f"models/{model}", "content": {"parts": [{"text": text}]}}
        if req.source == "gemini":  # no OpenAI equivalent: only a Gemini client's own options
            if task_type is not None:
                r["taskType"] = task_type
            if title is not None:
                r["title"] = title
        if dimensions is not None:
            r["outputDimensionality"] = dimensions
        return r

    if len(texts) == 1 and not req.batch:
        return [(f"/models/{model}:embedContent", orjson.dumps(one(texts[0], own[0])), 1)]
    path = f"/models/{model}:batchEmbedContents"
    return [(path, orjson.dumps({"requests": [one(t, o) for t, o in zip(texts[i:i + GEMINI_BATCH],
                                                                         own[i:i + GEMINI_BATCH], strict=True)]}),
             min(GEMINI_BATCH, len(texts) - i))
            for i in range(0, len(texts), GEMINI_BATCH)]


def parse_gemini_response(body: bytes, n: int) -> EmbedResult:
    d = _load_object(body, "the upstream response", _UPSTREAM)
    items: Any = [d["embedding"]] if "embedding" in d else d.get("embeddings")
    if not isinstance(items, list):
        raise _bad("the upstream response has neither embedding nor embeddings", None, _UPSTREAM)
    if len(items) != n:
        raise _bad(f"the upstream answered {len(items)} embeddings for {n} inputs", None, _UPSTREAM)
    vectors = []
    for i, e in enumerate(items):
        if not isinstance(e, dict):
            raise _bad(f"embeddings[{i}] is not an object", None, _UPSTREAM)
        vectors.append(_vector(e.get("values"), f"embeddings[{i}].values"))
    p, t = _usage_ints(_get(d, "usageMetadata"), "promptTokenCount", "totalTokenCount")
    return EmbedResult(vectors, p, t or p)


def parse_request(family: Family, body: bytes, model: str | None, action: str | None) -> EmbedRequest:
    if family == "gemini":
        return parse_gemini_request(body, model, action or "embedContent")
    return parse_openai_request(body)


def render_response(res: EmbedResult, req: EmbedRequest) -> bytes:
    if req.source == "gemini":
        return render_gemini_response(res, req)
    return render_openai_response(res, req)


def build_request(family: Family, req: EmbedRequest, upstream_model: str) -> list[tuple[str, bytes, int]]:
    """The upstream calls of one attempt: (path, body, inputs it embeds) each."""
    if family == "gemini":
        return build_gemini_request(req, upstream_model)
    path, body = build_openai_request(req, upstream_model)
    return [(path, body, len(req.inputs))]


def parse_response(family: Family, body: bytes, n: int) -> EmbedResult:
    if family == "gemini":
        return parse_gemini_response(body, n)
    return parse_openai_response(body, n)


# --------------------------------------------------------------------------------------------------
# Execution: the chat driver with an embeddings attempt


class EmbedExchange(Exchange):
    __slots__ = ("embed",)

    def __init__(self, req: EmbedRequest, raw: bytes | None) -> None:
        # Exchange and LiveDriver.execute read only `model` and `stream` of the request.
        super().__init__(req, raw, None)
        self.embed = req


class EmbeddingsDriver(LiveDriver):
    """LiveDriver whose attempt is an embeddings call: retries, failover, hedging and the reports to
    channel state are the chat driver's, line for line."""

    @classmethod
    def of(cls, d: LiveDriver) -> EmbeddingsDriver:
        return cls(d.router, d.channels, d.upstream, d.rng, d.scrub, d.clock, d.passthrough, d.explain, d.mixed)

    async def _attempt(self, call: Call, ex: Exchange, launched: list[bool] | None = None) -> Outcome:
        assert isinstance(ex, EmbedExchange)
        ch = self.channels[call.state.index]
        now = self.clock.now
        entry: list[Any] = [call, None]
        ex.trace.append(entry)
        self._begin(call, launched)
        try:
            out = await self._embed(call, ch, ex)
        except asyncio.CancelledError:
            t = now()
            entry[1] = Outcome(False, t, CLIENT_CLOSED, None, key=call.key)
            call.cancelled(t)
            raise
        entry[1] = out
        if out.ok:
            call.first_token(out.end)
            if isinstance(out.payload, EmbedResult):
                call.used(out.end, out.payload.prompt_tokens)
            call.succeeded(out.end, 0)  # no output tokens: embeddings only read
        else:
            call.failed(out.end, out)
        return out

    async def _embed(self, call: Call, ch: ChannelRuntime, ex: EmbedExchange) -> Outcome:
        now = self.clock.now
        req = ex.embed
        family = CHANNEL_FAMILY.get(ch.state.channel.type)
        if family is None:  # execution filters these out (Needs.embeddings); defensive only
            return Outcome.failure(now(), Error(kind=ErrorKind.INVALID_REQUEST, status=400,
                                                message=f"channel {ch.name} has no embeddings API"), key=call.key)
        try:
            calls = build_request(family, req, call.upstream_model)
        except FormatError as exc:
            # The channel's family cannot carry this request: the client's problem, not the channel's.
            return Outcome.failure(now(), Error(kind=ErrorKind.INVALID_REQUEST, status=exc.status,
                                                message=exc.message, param=exc.param), key=call.key)

        async def send(path: str, body: bytes) -> tuple[int, Any, bytes]:
            resp = await self.upstream.send(UpstreamRequest(ch.base_url + path, ch.headers(call.key), body, False,
                                                            ch.limits))
            return resp.status, resp.headers, ch.echoes(call.key).clean(await resp.read())

        ex.wait_begin()  # upstream time: not the gateway's own overhead
        try:
            if len(calls) == 1:
                answers = [await send(calls[0][0], calls[0][1])]
            else:  # a batch over Gemini's limit: its parts at once, joined in order
                # Every part runs to its end (each response read, its connection back in the pool),
                # even when one fails: the attempt then fails with the first failure.
                got = await asyncio.gather(*(send(path, body) for path, body, _ in calls), return_exceptions=True)
                for g in got:
                    if isinstance(g, BaseException):
                        raise g
                answers = got  # type: ignore[assignment]
        except UpstreamError as exc:
            return Outcome.failure(now(), transport_error(exc), key=call.key)
        finally:
            ex.wait_end()
        t = now()
        status = 200
        res = EmbedResult([])
        for (status, headers, data), (_, _, n) in zip(answers, calls, strict=True):
            if not 200 <= status < 300:
                return Outcome.failure(t, self.upstream_error(ch, status, headers, data), key=call.key)
            try:
                part = parse_response(family, data, n)
            except Exception as exc:  # a malformed answer is the channel's failure, whatever the parser raised
                log.warning("channel %s: malformed embeddings response (%s)", ch.name, self.scrub(str(exc))[:200])
                return Outcome.failure(t, MALFORMED_RESPONSE, key=call.key)
            res.vectors += part.vectors
            res.prompt_tokens += part.prompt_tokens
            res.total_tokens += part.total_tokens
        if not res.prompt_tokens:
            res.prompt_tokens = req.estimated_tokens()
            res.total_tokens = max(res.total_tokens, res.prompt_tokens)
        return Outcome(True, t, status, ttft=t - call.start, key=call.key, payload=res)


# --------------------------------------------------------------------------------------------------
# The ASGI handler (a Route's `handler`; server.app hands it the request)


async def serve(proxy: Proxy, scope: Scope, receive: Receive, send: Send, route: Route) -> None:
    """One embeddings request, with the chat handler's conventions: the same auth, body limit, error
    shapes, response headers (request/trace/thread ids, attempts, overhead, explain), disconnect
    handling and request record."""
    # The chat handler's own helpers, so both APIs behave alike (imported here: server.app imports
    # this module's importer).
    from server.app import (
        _attempts_value,
        _client_facing,
        _explain_value,
        _send_error,
        _tail,
        _Watch,
        admit,
        request_ids,
    )
    from server.ids import new_request_id
    from server.proxy import LAST_WORDS

    rt = proxy.rt  # the Runtime the route was matched on (nothing awaited since): kept to the end
    clock = proxy.clock.now
    t0 = clock()
    metrics = proxy.metrics
    metrics.inflight_inc()
    proxy.active += 1
    fmt = route.fmt  # the family's chat format module: it renders this family's errors
    family: Family = "gemini" if route.name == "gemini_embeddings" else "openai"
    rid = new_request_id()
    rid_b = rid.encode()
    w = _Watch()
    loop = asyncio.get_running_loop()  # once (see server/app.py)
    task = asyncio.current_task(loop)
    ex: EmbedExchange | None = None
    result: Result | None = None
    key = None
    model = route.model
    status = 500
    error: Error | None = None
    usage: Usage | None = None
    body: bytes | None = None
    out: bytes | None = None
    ttfb: float | None = None
    ids, sticky_b, explain = request_ids(scope, rt, rid_b)
    trace_b, thread_b = ids[1][1], ids[2][1]
    try:
        body, key, error, status = await admit(receive, send, scope, rt, fmt, rid_b, ids, clock() - t0, w)
        if body is None or key is None:
            return
        try:
            req = parse_request(family, body, route.model, route.action)
        except FormatError as exc:
            error = Error(kind=ErrorKind.INVALID_REQUEST, status=exc.status, message=exc.message, param=exc.param)
            status = await _send_error(send, fmt, error, rid_b, 0, _tail(ids, clock() - t0 - w.waited, None))
            return
        model = req.model
        w.start(loop, receive, task)
        ex = EmbedExchange(req, body)
        ex.waited = w.waited  # the client's upload: not the gateway's time either
        sticky = sticky_b.decode("latin-1") if sticky_b is not None else None
        driver = EmbeddingsDriver.of(rt.driver)
        result = await driver.execute(ex, req.estimated_tokens(), sticky, needs_of(req),
                                      explain=True if explain else None)
        n = len(result.attempts)
        w.done = True
        xv = _explain_value(result, rid) if explain else None
        if not result.ok or result.outcome is None:
            error = _client_facing(result.error)
            status = await _send_error(send, fmt, error, rid_b, n, _tail(ids, clock() - t0 - ex.waited, xv))
            return
        res: EmbedResult = result.outcome.payload
        usage = Usage(prompt_tokens=res.prompt_tokens, total_tokens=res.total_tokens)
        out = render_response(res, req)
        status = 200
        ttfb = clock() - t0
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(out)).encode()),
                   (b"x-axonsim-attempts", _attempts_value(n)), *_tail(ids, ttfb - ex.waited, xv)]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": out, "more_body": False})
    except asyncio.CancelledError:
        if task is not None:
            task.uncancel()
        if w.gone:
            status = CLIENT_CLOSED
        else:
            # Not the client's doing: the server's shutdown deadline passed. As for chat requests
            # (server/app.py), the client gets a 503 in its format and the cancel stops here.
            error = Error(kind=ErrorKind.UNAVAILABLE, status=503, message="the gateway shut down before the "
                          "request finished")
            w.done = True
            if status != 200:  # nothing sent yet
                status = 503
                try:
                    async with asyncio.timeout(LAST_WORDS):
                        status = await _send_error(send, fmt, error, rid_b, len(result.attempts) if result else 0,
                                                   _tail(ids, clock() - t0 - (ex.waited if ex else w.waited), None))
                except Exception:
                    pass
    except Exception as exc:
        text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        log.error("request %s failed inside the gateway:\n%s", rid, rt.scrub(text))
        error = Error(kind=ErrorKind.SERVER_ERROR, status=500, message=f"internal gateway error (request {rid})")
        if status != 200:  # nothing sent yet
            try:
                status = await _send_error(send, fmt, error, rid_b, len(result.attempts) if result else 0,
                                           _tail(ids, clock() - t0 - (ex.waited if ex else w.waited), None))
            except Exception:
                pass
    finally:
        w.done = True
        metrics.inflight_dec()
        w.stop()
        latency = clock() - t0
        keep = proxy.store is not None and proxy.store.store_bodies
        try:
            _record(proxy, rt, scope, route, rid, t0, latency, latency - (ex.waited if ex else w.waited), ttfb, key,
                    model, status, error, usage, result, ex, w.gone, trace_b, thread_b, body if keep else None,
                    out if keep else None)
        finally:
            proxy.request_ended()


def _record(proxy: Proxy, rt: Runtime, scope: Scope, route: Route, rid: str, t0: float, latency: float,
            overhead: float, ttfb: float | None, key: Any, model: str | None, status: int, error: Error | None, usage: Usage | None,
            result: Result | None, ex: EmbedExchange | None, gone: bool, trace_b: bytes, thread_b: bytes,
            request_body: bytes | None, response_body: bytes | None) -> None:
    """The request record, field for field the chat handler's (server.proxy lists the fields)."""
    from server.proxy import request_cost

    if result is not None:
        attempts = [a.as_dict() for a in result.attempts]
    elif ex is not None:  # cut short before a Result (client gone, shutdown deadline, gateway error)
        attempts = ex.attempt_records()
    else:
        attempts = []
    channels: list[str] = []
    for a in attempts:
        if a["channel"] not in channels:
            channels.append(a["channel"])
    outcome = "cancelled" if gone else "failed" if status >= 400 or error is not None else "completed"
    answered = result is not None and result.ok and bool(result.attempts)
    proxy.request_done({
        "id": rid, "created_at": t0, "method": "POST", "path": scope["path"], "client_format": route.name,
        "model": model, "stream": False,
        "project": key.project if key is not None else None,
        "key_name": (key.name or key.project) if key is not None else None,
        "status": status, "outcome": outcome,
        "error": error.message if error is not None else None,
        "error_kind": error.kind.value if error is not None else None,
        "latency": latency, "ttft": ttfb,  # the first byte went out, whatever came after it
        "overhead": overhead if overhead > 0.0 else 0.0,
        "usage": usage.as_dict() if usage is not None else None,
        "cost": request_cost(rt, usage, attempts, model, answered),
        "channel": result.attempts[-1].channel if answered else None,  # type: ignore[union-attr]
        "channels": channels, "attempts": attempts,
        "trace_id": id_text(trace_b), "thread_id": id_text(thread_b),
        "decisions": result.decisions if result is not None else None,
    }, rt, ex, request_body, response_body)
