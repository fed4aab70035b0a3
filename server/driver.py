"""The live driver: performs Router.execute's effects with asyncio (Call → an upstream attempt, Wait → sleep).

Theory of operation. The core decides; this module only does what it is told and reports back:

    Call    render the channel's format, send it through the Upstream seam, classify what came back
            into an Outcome, report it through the Call's methods (started / first_token /
            succeeded / failed / cancelled, which feed ChannelState), send the Outcome in.
    Wait    asyncio.sleep, then send in the clock.
    Launch  (hedging) the same attempt as a task; its handle goes back at once.
    Race    the first finished of the given launched attempts (in completion order), or None when
            the timeout passes first.
    Cancel  cancel a launched attempt; it is accounted as abandoned (Call.cancelled).

The clock (`Clock.now`) is Unix time that never jumps: the monotonic clock plus the offset to
wall time taken once, because the core's quotas roll over on Unix-time windows (QuotaConfig) while
durations must not go backwards when NTP steps the wall clock.

Streams commit on the upstream's first content-bearing event (rule 5 of axonsim.execution): until
then the start/role events are buffered and any failure is an ordinary failed attempt (failover
is free); from then on the attempt's Outcome is ok and its payload is a LiveStream that the
handler drains event by event. The stream's end is reported through the winning Call
(succeeded / failed) by the LiveStream, when the stream really ends.

Cancellation (the client went away) is accounted, not lost: the attempt in flight is reported
through Call.cancelled (abandoned: frees its slot, says nothing about the channel's health), its
upstream response is closed, and the attempts so far can be rebuilt from the Exchange's trace.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
import time
from collections.abc import Iterable
from types import ModuleType
from typing import Any, Protocol

import orjson
from multidict import CIMultiDict
from mypy_extensions import mypyc_attr

from axonsim import __version__
from axonsim.capabilities import NO_NEEDS, Needs
from axonsim.config import Timeouts
from axonsim.execution import AttemptRecord, Call, Cancel, Launch, Outcome, Race, Result, Router, Wait
from axonsim.formats import FormatError, UpstreamErrorBody, clip_message, mask_key_shaped
from axonsim.formats.parsed import Parsed
from axonsim.state import ChannelState
from axonsim.unified import Error, ErrorEvent, ErrorKind, Request, Response, StreamEvent, Usage, error_kind_for_status
from server.echoes import Echoes, StreamEchoes
from server.store.scrub import Scrubber as SecretScrubber
from server.upstream import (
    Limits,
    ReadResponse,
    Upstream,
    UpstreamError,
    UpstreamRequest,
    UpstreamResponse,
    UpstreamTimeout,
)

log = logging.getLogger("axonsim.server.driver")

# Event types that commit a stream: the start (and an empty role/content delta) do not.
_COMMIT_TYPES = frozenset({"reasoning", "tool_call", "finish", "usage"})

CLIENT_CLOSED = 499  # nginx's "client closed request": the status of attempts abandoned for the client


def _commits(ev: StreamEvent) -> bool:
    t = ev.type
    if t == "text":
        return bool(ev.text)  # type: ignore[union-attr]
    return t in _COMMIT_TYPES


class Clock:
    """Unix time that never jumps: monotonic time plus the wall-clock offset taken once."""

    __slots__ = ("offset",)

    def __init__(self) -> None:
        self.offset = time.time() - time.monotonic()

    def now(self) -> float:
        return time.monotonic() + self.offset


class Scrubber:
    """Removes every configured secret (upstream, client and admin keys) from a text bound for a
    client or a log: an upstream's error, a log line. The forms a key takes inside JSON strings and
    URLs are found too (the store's Scrubber, with this module's mask)."""

    __slots__ = ("_s",)

    def __init__(self, secrets: Iterable[str]) -> None:
        self._s = SecretScrubber(secrets, mask="[redacted]")

    def __call__(self, text: str) -> str:
        return self._s.text(text) or ""


NO_ECHOES = Echoes(())
USER_AGENT = f"axonsim/{__version__}"  # how the gateway names itself to providers


def _charge(call: Call, now: float, usage: Usage | None) -> None:
    """The tokens an answer's usage reports, for the channel's TPM limits and quota (Call.used)."""
    if usage is not None:
        call.used(now, usage.prompt_tokens + usage.completion_tokens)


class ChannelRuntime:
    """What the driver needs per channel, computed once: its format module, URLs, auth headers, timeouts."""

    __slots__ = ("state", "name", "fmt", "base_url", "limits", "_echoes", "_key_headers", "_keyless", "_urls")

    def __init__(self, state: ChannelState, fmt: ModuleType, default_timeouts: Timeouts) -> None:
        ch = state.channel
        self.state = state
        self.name = state.name
        self.fmt = fmt
        self.base_url = ch.base_url.rstrip("/")
        self.limits = Limits(ch.timeouts or default_timeouts)
        # Built once as aiohttp's own header type with its User-Agent named: aiohttp then neither
        # converts them nor builds the skip list that leaving its own User-Agent out takes, on every
        # request (~10k instructions of ~330k per upstream call, callgrind).
        base = {"content-type": "application/json", "user-agent": USER_AGENT}
        self._keyless: CIMultiDict[str] = CIMultiDict(base)
        self._key_headers = [CIMultiDict({**base, **fmt.auth_headers(k.secret)}) for k in state.keys]
        self._echoes = [Echoes([k.secret]) for k in state.keys]
        self._urls: dict[tuple[str, bool], str] = {}

    def url(self, upstream_model: str, stream: bool) -> str:
        k = (upstream_model, stream)
        u = self._urls.get(k)
        if u is None:
            u = self._urls[k] = self.base_url + self.fmt.request_path(upstream_model, stream)
        return u

    def headers(self, key: int | None) -> CIMultiDict[str]:
        return self._keyless if key is None else self._key_headers[key]

    def echoes(self, key: int | None) -> Echoes:
        """The key an attempt was sent with, to take out of its answer (server/echoes.py)."""
        return NO_ECHOES if key is None else self._echoes[key]


class Answer:
    """A non-stream attempt's payload: its usage, and either the upstream bytes (when the client speaks
    the channel's format they are forwarded as they came, and only the usage was read from them) or
    the parsed response. `response` parses forwarded bytes on first use (probes read the text)."""

    __slots__ = ("raw", "usage", "_response", "_fmt")

    def __init__(self, response: Response | None, raw: bytes | None, usage: Usage | None = None,
                 fmt: ModuleType | None = None) -> None:
        self._response = response
        self.raw = raw
        self.usage = response.usage if response is not None else usage
        self._fmt = fmt  # the channel's format, to parse `raw` if the response is asked for

    @property
    def response(self) -> Response:
        if self._response is None:
            assert self._fmt is not None and self.raw is not None
            self._response = self._fmt.parse_response(self.raw)
        return self._response


class Routed(Protocol):
    """What the effects loop reads of any request it routes: a chat request as its format checked
    it (Parsed) or built (Request), or another API's own request (server/embeddings.py's
    EmbedRequest) whose driver makes its own attempts."""

    model: str
    stream: bool


@mypyc_attr(allow_interpreted_subclasses=True)  # embeddings.EmbedExchange extends it
class Exchange:
    """One client request on its way through the driver.

    `waited` adds up the time spent waiting on upstreams (sending and reading up to the stream's
    commit, and the backoff waits execution asks for): the handler's gateway overhead is the rest.
    Overlapping waits (hedged attempts) count once."""

    __slots__ = ("req", "raw", "client_fmt", "stream", "trace", "launched", "finished", "_built", "waited",
                 "_nwait", "_wait_t0")

    def __init__(self, req: Parsed | Request | Routed, raw: bytes | None, client_fmt: ModuleType | None) -> None:
        self.req = req
        self.raw = raw  # the client's body, forwarded as is when the channel speaks its format
        self.client_fmt = client_fmt
        self.stream = req.stream
        self.trace: list[list[Any]] = []  # [Call, Outcome | None] per attempt, in start order
        self.launched: list[asyncio.Task[Outcome]] = []  # hedged attempts, by handle
        self.finished: list[int] = []  # launched handles in the order they finished, not yet raced
        self._built: dict[tuple[int, str], bytes] = {}
        self.waited = 0.0
        self._nwait = 0
        self._wait_t0 = 0.0

    def request(self) -> Request:
        """The unified Request of a chat exchange, built now if it was left to first use (Parsed):
        only an attempt that cannot forward the client's bytes reads it (and an error rendered
        mid-stream after a gateway failure). Raises FormatError if it cannot be built."""
        req = self.req
        if isinstance(req, Parsed):
            return req.request()
        assert isinstance(req, Request)
        return req

    def wait_begin(self) -> None:
        if not self._nwait:
            self._wait_t0 = time.monotonic()
        self._nwait += 1

    def wait_end(self) -> None:
        self._nwait -= 1
        if not self._nwait:
            self.waited += time.monotonic() - self._wait_t0

    def attempt_records(self) -> list[dict[str, Any]]:
        """The attempts so far in AttemptRecord form, for a request that did not reach a Result
        (cancelled): `next` is inferred the way execution decides it (same channel → retry)."""
        out = []
        n = len(self.trace)
        for i, (call, outc) in enumerate(self.trace):
            if outc is None or (outc.status == CLIENT_CLOSED and outc.kind is None):
                nxt, status, kind, end = "cancelled", CLIENT_CLOSED, None, outc.end if outc is not None else call.start
            else:
                if i == n - 1:
                    nxt = "cancelled"
                else:
                    nxt = "retry" if self.trace[i + 1][0].state is call.state else "failover"
                status, kind, end = outc.status, outc.kind, outc.end
            st = call.state
            out.append(AttemptRecord(call.attempt, st.name, st.key_name(call.key), call.upstream_model, call.start,
                                     end, status, kind, nxt).as_dict())
        return out


class Pool:
    """A model's channels of one type: the first, whose request body tells whether the type can
    carry a request, and all of them, to tell whether any is in service."""

    __slots__ = ("type", "first", "upstream_model", "states")

    def __init__(self, type: str, first: ChannelRuntime, upstream_model: str) -> None:
        self.type = type
        self.first = first
        self.upstream_model = upstream_model
        self.states: list[ChannelState] = [first.state]


def mixed_pools(router: Router, channels: list[ChannelRuntime]) -> dict[str, list[Pool]]:
    """Per model served by channels of more than one type: its channels by type."""
    out: dict[str, list[Pool]] = {}
    for model in router.candidates.models():
        by_type: dict[str, Pool] = {}
        for group in router.candidates.all_groups(model):
            for c in group:
                t = c.state.channel.type
                pool = by_type.get(t)
                if pool is None:
                    by_type[t] = Pool(t, channels[c.state.index], c.upstream_model)
                else:
                    pool.states.append(c.state)
        if len(by_type) > 1:
            out[model] = list(by_type.values())
    return out


@mypyc_attr(allow_interpreted_subclasses=True)  # embeddings.EmbeddingsDriver makes its own attempts
class LiveDriver:
    """Drives Router.execute for live requests. One per proxy; holds no per-request state."""

    def __init__(self, router: Router, channels: list[ChannelRuntime], upstream: Upstream, rng: random.Random,
                 scrub: Scrubber, clock: Clock | None = None, passthrough: bool = True, explain: bool = False,
                 mixed: dict[str, list[Pool]] | None = None) -> None:
        self.router = router
        self.channels = channels
        self.upstream = upstream
        self.rng = rng
        self.scrub = scrub
        self.clock = clock or Clock()
        self.passthrough = passthrough
        self.explain = explain
        # Per model served by channels of several types, its channels by type (see fit); a model
        # whose channels share one type has no entry. `mixed`: another driver's, for the same router.
        self.mixed: dict[str, list[Pool]] = mixed_pools(router, channels) if mixed is None else mixed

    def fit(self, ex: Exchange, pools: list[Pool], needs: Needs) -> Needs:
        """`needs` plus the channel types of a mixed model whose format cannot express this request
        (`n: 2` for Anthropic, say), so the pick goes to a type that can instead of ending in a 400.

        Decided before the pick, as capabilities are: a type found unfit by its attempt would have
        used up attempts, backoff and its limits on a request never sent. Each type's body is built
        once here, for its first channel, and kept for the attempt (Exchange._built). When no type
        that can carry it has a channel in service (enabled, with a key), nothing is filtered: the
        attempt then answers with the format's own 400, not a 503 for channels switched off."""
        unfit: dict[str, str] = {}
        served = False
        for pool in pools:
            try:
                self._body(ex, pool.first, pool.upstream_model)
            except FormatError as exc:
                unfit[pool.type] = f"a format for this request ({exc.message})"
            else:
                served = served or any(st.usable() for st in pool.states)
        if not unfit or not served:
            return needs
        return dataclasses.replace(needs, unfit_types=unfit)

    async def execute(self, ex: Exchange, tokens: int = 0, sticky_key: str | None = None,
                      needs: Needs = NO_NEEDS, explain: bool | None = None) -> Result:
        """`explain` asks for the decision trace of this request (None: the driver's default)."""
        clock = self.clock
        req = ex.req
        gen = self.router.execute(req.model, clock.now(), self.rng, req, tokens=tokens, sticky_key=sticky_key,
                                  explain=self.explain if explain is None else explain, stream=ex.stream,
                                  needs=needs)
        try:
            eff = next(gen)
            while True:
                cls = type(eff)
                if cls is Call:
                    eff = gen.send(await self._attempt(eff, ex))  # type: ignore[arg-type]
                elif cls is Wait:
                    ex.wait_begin()  # a backoff the upstream's failure asked for: not the gateway's own time
                    try:
                        await asyncio.sleep(eff.seconds)  # type: ignore[union-attr]
                    finally:
                        ex.wait_end()
                    eff = gen.send(clock.now())
                elif cls is Launch:
                    eff = gen.send(self._launch(eff.call, ex))  # type: ignore[union-attr]
                elif cls is Race:
                    eff = gen.send(await self._race(eff, ex))  # type: ignore[arg-type]
                elif cls is Cancel:
                    await self._cancel(eff.handle, ex)  # type: ignore[union-attr]
                    eff = gen.send(clock.now())
                else:
                    raise TypeError(f"the live driver cannot perform the effect {eff!r}")
        except StopIteration as stop:
            result: Result = stop.value
            if ex.launched:
                await self._settle_launched(ex, result)
            return result
        except BaseException:
            gen.close()
            if ex.launched:
                await self._settle_launched(ex, None)
            raise

    async def attempt(self, call: Call, ex: Exchange) -> Outcome:
        """One attempt outside Router.execute (channel tests, probes), performed and reported
        through the Call exactly like an attempt of client traffic."""
        return await self._attempt(call, ex)

    # -- hedging ---------------------------------------------------------------------------------

    def _launch(self, call: Call, ex: Exchange) -> int:
        handle = len(ex.launched)
        # Started now, as execution picked it, not when the task first runs: until then another
        # request's pick would not see it (in-flight, rate and quota windows) and pass the limits.
        call.started(self.clock.now())
        ran = [False]
        task = asyncio.get_running_loop().create_task(self._attempt(call, ex, ran))
        finished = ex.finished

        def done(t: asyncio.Task[Outcome]) -> None:
            finished.append(handle)  # completion order is what Race answers by
            if not ran[0]:  # cancelled before it ran: its own cleanup never did, so report it here
                call.cancelled(self.clock.now())

        task.add_done_callback(done)
        ex.launched.append(task)
        return handle

    async def _race(self, race: Race, ex: Exchange) -> tuple[int, Outcome] | None:
        handles = race.handles
        for h in ex.finished:
            if h in handles:
                ex.finished.remove(h)
                return h, ex.launched[h].result()
        tasks = [ex.launched[h] for h in handles]
        await asyncio.wait(tasks, timeout=race.timeout, return_when=asyncio.FIRST_COMPLETED)
        for h in ex.finished:
            if h in handles:
                ex.finished.remove(h)
                return h, ex.launched[h].result()
        return None

    async def _cancel(self, handle: int, ex: Exchange) -> None:
        task = ex.launched[handle]
        if handle in ex.finished:
            ex.finished.remove(handle)
        if not task.done():
            task.cancel()  # _attempt reports Call.cancelled
            try:
                await task
            except asyncio.CancelledError:
                pass
            return
        _abandon(task.result(), self.clock.now())

    async def _settle_launched(self, ex: Exchange, result: Result | None) -> None:
        """At the end of a hedged request: nothing launched may keep running or holding a stream."""
        winner = result.outcome if result is not None and result.ok else None
        for task in ex.launched:
            if not task.done():
                task.cancel()
                try:
                    await task
                except asyncio.CancelledError:
                    pass
            elif not task.cancelled() and task.exception() is None and task.result() is not winner:
                _abandon(task.result(), self.clock.now())

    # -- one attempt -----------------------------------------------------------------------------

    def _begin(self, call: Call, launched: list[bool] | None) -> None:
        """An attempt's task begins: it starts its call, unless _launch did (then it says it ran)."""
        if launched is None:
            call.started(self.clock.now())
        else:
            launched[0] = True

    async def _attempt(self, call: Call, ex: Exchange, launched: list[bool] | None = None) -> Outcome:
        """`launched`: a Launch's flag, set as this starts running (_launch started the call)."""
        ch = self.channels[call.state.index]
        clock = self.clock
        entry: list[Any] = [call, None]
        ex.trace.append(entry)
        self._begin(call, launched)
        try:
            try:
                body = self._body(ex, ch, call.upstream_model)
            except FormatError as exc:
                # The channel's format cannot carry this request: the client's problem, not the channel's.
                out = Outcome.failure(clock.now(), Error(kind=ErrorKind.INVALID_REQUEST, status=exc.status,
                                                   message=exc.message, param=exc.param), key=call.key)
            else:
                deadline = call.deadline  # the request's (routing.retry.deadline): it bounds this attempt too
                upreq = UpstreamRequest(ch.url(call.upstream_model, ex.stream), ch.headers(call.key), body, ex.stream,
                                        ch.limits, None if deadline is None else max(0.0, deadline - clock.now()))
                if ex.stream:
                    out = await self._stream(ch, call, ex, upreq)
                else:
                    out = await self._plain(ch, call, ex, upreq)
        except BaseException:
            # Cancelled (the client left, a hedge lost), or a bug of ours below this point: either
            # way the attempt is abandoned, which frees its slot and says nothing about the channel.
            t = clock.now()
            entry[1] = Outcome(False, t, CLIENT_CLOSED, None, key=call.key)
            call.cancelled(t)
            raise
        entry[1] = out
        if out.ok:
            call.first_token(out.end)
            if not ex.stream:
                usage = out.payload.usage
                _charge(call, out.end, usage)
                call.succeeded(out.end, usage.completion_tokens if usage is not None else 0)
        else:
            call.failed(out.end, out)
        return out

    def _body(self, ex: Exchange, ch: ChannelRuntime, upstream_model: str) -> bytes:
        fmt = ch.fmt
        # Same format, same model: the client's own bytes are the upstream request (a stream's
        # asks for usage where the family's streams omit it: the gateway always logs it).
        same = self.passthrough and ex.raw is not None and fmt is ex.client_fmt and upstream_model == ex.req.model
        if same and not ex.stream:
            return ex.raw  # type: ignore[return-value]
        k = (id(fmt), upstream_model)
        b = ex._built.get(k)
        if b is None:
            if same:
                req = ex.req
                b = fmt.stream_passthrough(ex.raw, req if isinstance(req, Parsed) else None)
            else:
                b = fmt.build_request(ex.request(), upstream_model)
            ex._built[k] = b
        return b

    async def _plain(self, ch: ChannelRuntime, call: Call, ex: Exchange, upreq: UpstreamRequest) -> Outcome:
        clock = self.clock
        ex.wait_begin()
        try:
            resp = await self.upstream.send(upreq)
            data = ch.echoes(call.key).clean(await resp.read())
        except UpstreamError as exc:
            return Outcome.failure(clock.now(), transport_error(exc), key=call.key)
        finally:
            ex.wait_end()
        t = clock.now()
        status = resp.status
        if not 200 <= status < 300:
            return Outcome.failure(t, self.upstream_error(ch, status, resp.headers, data), key=call.key)
        fmt = ch.fmt
        try:
            if fmt is ex.client_fmt and self.passthrough:
                # Forwarded as is: the client reads the answer itself; the gateway needs only the
                # usage (and the format's top-level checks), not a parse of every choice.
                answer = Answer(None, data, fmt.response_usage(data), fmt)
            else:
                parsed = fmt.parse_response(data)
                if not parsed.created:
                    # The family has no creation time (Anthropic, Gemini): the client's may require
                    # one, and formats never read a clock.
                    parsed.created = int(time.time())
                answer = Answer(parsed, None)
        except UpstreamErrorBody as said:  # a 200 whose body is an error: the provider's words are the message
            log.warning("channel %s: error body with status %d (%s)", ch.name, status, self.scrub(said.message)[:200])
            return Outcome.failure(t, Error(kind=ErrorKind.SERVER_ERROR, status=502,
                                            message=clip_message(self.scrub(said.message))), key=call.key)
        except Exception as bad:  # a malformed answer is the channel's failure, whatever the parser raised
            log.warning("channel %s: malformed response (%s)", ch.name, self.scrub(str(bad))[:200])
            return Outcome.failure(t, MALFORMED_RESPONSE, key=call.key)
        return Outcome(True, t, status, ttft=t - call.start, key=call.key, payload=answer)

    async def _stream(self, ch: ChannelRuntime, call: Call, ex: Exchange, upreq: UpstreamRequest) -> Outcome:
        clock = self.clock
        ex.wait_begin()
        try:
            resp = await self.upstream.send(upreq)
        except UpstreamError as exc:
            return Outcome.failure(clock.now(), transport_error(exc), key=call.key)
        finally:
            ex.wait_end()
        status = resp.status
        if not 200 <= status < 300:
            ex.wait_begin()
            try:
                data = await resp.read()
            except UpstreamError:
                data = b""
            finally:
                ex.wait_end()
            return Outcome.failure(clock.now(), self.upstream_error(ch, status, resp.headers, data), key=call.key)
        ctype = resp.headers.get("content-type") or ""
        if ctype.startswith("application/json"):
            # A success status with a JSON body where a stream was asked for: the provider's error
            # (some answer 200 so), or else a body mislabelled, read as the stream all the same.
            ex.wait_begin()
            try:
                data = ch.echoes(call.key).clean(await resp.read())
            except UpstreamError as exc:
                return Outcome.failure(clock.now(), transport_error(exc), key=call.key)
            finally:
                ex.wait_end()
            if _error_in(data) is not None:
                err = self.upstream_error(ch, 502, resp.headers, data)
                log.warning("channel %s: error body with status %d (%s)", ch.name, status, err.message[:200])
                return Outcome.failure(clock.now(), Error(kind=ErrorKind.SERVER_ERROR, status=502, message=err.message),
                                       key=call.key)
            resp = ReadResponse(status, resp.headers, data)
        parser = ch.fmt.StreamParser()
        echoes = StreamEchoes(ch.echoes(call.key))
        pending: list[StreamEvent] = []
        eof = ending = False
        try:
            committed = False
            while not committed:
                ex.wait_begin()
                try:
                    chunk = await _next_chunk(resp, parser)
                finally:
                    ex.wait_end()
                if chunk:
                    evs = parser.feed(echoes.feed(chunk))
                    ending = parser.ended  # the terminal event: over, whether or not the body's end follows
                else:
                    eof = True
                    evs = _last_events(parser, echoes)  # raises if the stream ended without its terminal event
                for ev in evs:
                    if ev.type == "error":
                        resp.close()
                        err = self._scrubbed(ev.error)  # type: ignore[union-attr]
                        return Outcome.failure(clock.now(), err, key=call.key)
                    if ev.type == "start" and not ev.created:  # as for a plain answer (see _plain)
                        ev.created = int(time.time())  # type: ignore[union-attr]
                    pending.append(ev)
                    if not committed and _commits(ev):
                        committed = True
                if eof or ending:
                    break  # a complete stream without content: an (empty) answer all the same
        except UpstreamError as exc:
            resp.close()
            return Outcome.failure(clock.now(), transport_error(exc), key=call.key)
        except asyncio.CancelledError:
            resp.close()
            raise
        except Exception as bad:
            resp.close()
            log.warning("channel %s: malformed stream (%s)", ch.name, self.scrub(str(bad))[:200])
            return Outcome.failure(clock.now(), MALFORMED_STREAM, key=call.key)
        resp.began()  # content came: from here the idle deadline, not the first-token one
        t = clock.now()
        stream = LiveStream(self, call, resp, parser, echoes, pending, eof, ending)
        return Outcome(True, t, status, ttft=t - call.start, key=call.key, payload=stream)

    # -- error classification --------------------------------------------------------------------

    def upstream_error(self, ch: ChannelRuntime, status: int, headers: Any, body: bytes) -> Error:
        try:
            err: Error = ch.fmt.parse_error(status, headers, body)
        except Exception:
            err = Error(kind=error_kind_for_status(status), status=status, message=f"the upstream answered HTTP {status}")
        return self._scrubbed(err)

    def _scrubbed(self, err: Error) -> Error:
        """The upstream's error with no secret in any text a client gets back: the message, and the
        `param` and `code` a provider's error names (an upstream can put anything in them). The
        message is clipped then, not before: a key cut in two would be found by neither half."""
        scrub = self.scrub
        changed: dict[str, Any] = {}
        for name, value in (("message", err.message), ("param", err.param), ("code", err.code)):
            if value:
                clean = mask_key_shaped(scrub(value))
                if name == "message":
                    clean = clip_message(clean)
                if clean != value:
                    changed[name] = clean
        return err.model_copy(update=changed) if changed else err


MALFORMED_RESPONSE = Error(kind=ErrorKind.SERVER_ERROR, status=502, message="the upstream sent a malformed response")
MALFORMED_STREAM = Error(kind=ErrorKind.SERVER_ERROR, status=502, message="the upstream sent a malformed or truncated stream")


def transport_error(exc: UpstreamError) -> Error:
    """No usable HTTP answer: status 0, kind TIMEOUT or CONNECTION."""
    if isinstance(exc, UpstreamTimeout):
        return Error(kind=ErrorKind.TIMEOUT, status=0, message="the upstream did not answer in time")
    return Error(kind=ErrorKind.CONNECTION, status=0, message="the connection to the upstream failed")


def _mid_stream_error(exc: UpstreamError) -> Error:
    if isinstance(exc, UpstreamTimeout):
        return Error(kind=ErrorKind.TIMEOUT, status=504, message="the upstream stream timed out (it stalled, or ran past its time limit)")
    return Error(kind=ErrorKind.CONNECTION, status=502, message="the upstream stream was interrupted")


def _error_in(data: bytes) -> object | None:
    """The `error` of a JSON object body, if it has a non-empty one."""
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    return (obj.get("error") or None) if isinstance(obj, dict) else None


async def _next_chunk(resp: UpstreamResponse, parser: Any) -> bytes:
    """The next piece of an upstream stream; b"" at its end, which is also when the answer was whole
    (Gemini has no terminal event) and the upstream then left the connection open past a deadline,
    or broke it: what came is the whole answer either way, as the provider's own SDK would have it."""
    try:
        return await resp.next_chunk()
    except UpstreamError:
        if getattr(parser, "complete", False):
            resp.close()
            return b""
        raise


def _last_events(parser: Any, echoes: StreamEchoes) -> list[StreamEvent]:
    """At the end of a stream: the events of what the echo filter kept back, then the parser's last."""
    kept = echoes.close()
    return [*parser.feed(kept), *parser.close()] if kept else parser.close()


def _abandon(out: Outcome, now: float) -> None:
    """A finished attempt that execution no longer wants (a hedge that lost after committing)."""
    if out.ok and isinstance(out.payload, LiveStream):
        out.payload.abort(now)


class LiveStream:
    """A committed upstream stream: hands out unified events as they arrive and reports the
    attempt's end through its Call (succeeded / failed / cancelled) exactly once."""

    __slots__ = ("driver", "call", "resp", "parser", "echoes", "pending", "eof", "ending", "done", "error", "usage",
                 "finish", "end", "waited", "abandoned")

    def __init__(self, driver: LiveDriver, call: Call, resp: UpstreamResponse, parser: Any, echoes: StreamEchoes,
                 pending: list[StreamEvent], eof: bool, ending: bool = False) -> None:
        self.driver = driver
        self.call = call
        self.resp = resp
        self.parser = parser
        self.echoes = echoes
        self.pending = pending  # buffered until the commit: the handler sends these first
        self.eof = eof
        self.ending = ending  # the terminal event was read; the body's end may not have come yet
        self.done = False
        self.error: Error | None = None  # a failure after the commit
        self.usage: Usage | None = None
        self.finish: str | None = None
        self.end: float | None = None  # clock when the stream ended, however it ended
        self.waited = 0.0  # seconds spent waiting for upstream chunks after the commit (for the overhead)
        self.abandoned = False  # our side ended it first (abort): the attempt counts as cancelled
        self._note(pending)

    async def next_events(self) -> list[StreamEvent] | None:
        """The next batch of events ([] when a chunk held none); None once the stream is over.
        A failure comes as a final ErrorEvent."""
        if self.done:
            return None
        if self.eof:
            self._succeed()
            return None
        if self.ending:
            # The answer is whole: the client hears its end now. The body's end is awaited in the
            # background (to pool the connection); an upstream that leaves it open is closed.
            self.resp.finish()
            self._succeed()
            return None
        asked = time.monotonic()
        try:
            try:
                chunk = await _next_chunk(self.resp, self.parser)
            finally:
                # Waiting on the upstream, also when the wait ends in its failure or the client
                # leaving: none of it is the gateway's overhead.
                self.waited += time.monotonic() - asked
            if chunk:
                evs = self.parser.feed(self.echoes.feed(chunk))
                self.ending = self.parser.ended
            else:
                self.eof = True
                evs = _last_events(self.parser, self.echoes)
        except UpstreamError as exc:
            return [self._fail(_mid_stream_error(exc))]
        except asyncio.CancelledError:
            self.abort(self.driver.clock.now())
            raise
        except Exception:
            return [self._fail(MALFORMED_STREAM)]
        for i, ev in enumerate(evs):
            t = ev.type
            if t == "error":
                err = self.driver._scrubbed(ev.error)  # type: ignore[union-attr]
                return [*evs[:i], self._fail(err)]
            if t == "usage":
                self.usage = ev.usage  # type: ignore[union-attr]
            elif t == "finish":
                self.finish = ev.reason  # type: ignore[union-attr]
        if self.eof:
            self._succeed()
        return evs

    def abort(self, now: float) -> None:
        """Our side ended first (client disconnect, a lost hedge, a gateway error): the attempt is
        abandoned, which says nothing about the channel's health."""
        if not self.done:
            self.done = True
            self.abandoned = True
            self.end = now
            self.resp.close()
            # What the upstream reported before we left (Gemini's usage on every chunk, say) was
            # generated and is billed: the record's cost, the channel's TPM limits and quota count it.
            seen = getattr(self.parser, "usage_seen", None)
            if seen is not None:
                self.usage = seen
            _charge(self.call, now, self.usage)
            self.call.cancelled(now)

    def _note(self, evs: list[StreamEvent]) -> None:
        for ev in evs:
            t = ev.type
            if t == "usage":
                self.usage = ev.usage  # type: ignore[union-attr]
            elif t == "start" and ev.usage is not None and self.usage is None:  # type: ignore[union-attr]
                self.usage = ev.usage  # type: ignore[union-attr]
            elif t == "finish":
                self.finish = ev.reason  # type: ignore[union-attr]

    def _succeed(self) -> None:
        if self.done:
            return
        self.done = True
        self.end = now = self.driver.clock.now()
        self.resp.close()
        usage = self.usage
        _charge(self.call, now, usage)
        self.call.succeeded(now, usage.completion_tokens if usage is not None else 0)

    def _fail(self, err: Error) -> ErrorEvent:
        if not self.done:
            self.done = True
            self.error = err
            seen = getattr(self.parser, "usage_seen", None)  # reported before the cut: still its cost
            if seen is not None:
                self.usage = seen
            self.end = now = self.driver.clock.now()
            self.resp.close()
            _charge(self.call, now, self.usage)
            self.call.failed(now, Outcome.failure(now, err, key=self.call.key))
        return ErrorEvent(error=err)
