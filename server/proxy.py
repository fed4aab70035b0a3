"""The proxy's runtime: what is built once from a Config (swapped whole on reload) and what lives for the process.

Two layers, so that a config reload never drops a request:

- `Runtime`: everything derived from one Config — Router (channel state), channel runtimes (URLs,
  auth headers, timeouts), the gateway-key table, the secret scrubber, the driver, the client-API
  route table, the trace/thread header table, the price lookups. Everything that can be computed
  before the first request is computed here, so a request only does request work.
- `Proxy`: the process-wide parts — upstream session, seeded RNG, clock, usage-log store, metrics,
  the recent-requests ring, probes, start-up/shutdown. `proxy.rt` is the current Runtime. A request
  reads it once when it arrives and keeps it to the end; `reload()` builds a new Runtime and swaps
  it in with one assignment, so in-flight requests finish on the old one and new ones use the new.

Request records: every client request ends in exactly one record, a dict kept in a bounded
in-memory ring (`recent`) and passed to `request_done`, which counts it in the metrics, submits it to
the store as a RequestRecord (the store writes it from its own task, in batches; `submit` never
waits) and hands it to the optional `on_request_done` hook. A hook must be quick and must not
raise; if it does, the error is logged and the request is unaffected. Field names follow
server.store.RequestRecord where they overlap:

    id, created_at (unix s), method, path, client_format, model, stream, project, key_name (never the
    key), status (499: the client went away), outcome (completed | failed | cancelled), error,
    error_kind, latency (s, arrival to last byte), ttft (s, arrival to first byte of a successful
    answer), overhead (s: latency minus the time spent waiting on upstreams, backoffs included),
    usage (dict or None), cost (None: unpriced), channel (the one that answered), channels (all tried,
    in order), trace_id, thread_id, attempts: AttemptRecord.as_dict() each (times on the proxy clock:
    unix seconds), the answering stream's also with `stream_end` and, if it broke after the commit,
    `stream_error`; decisions: the core's decision trace (when explained: X-AxonSim-Explain, or a
    proxy built with explain=True); attempt_rows: the attempts as handed to the store (None without
    one), so that the admin API answers from memory as it will from the database (the bodies the
    store may also be handed are not kept: a thousand of them could hold gigabytes).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from axonsim.config import Config, ConfigError, Price, load_config
from axonsim.execution import Router
from axonsim.formats import get_format
from axonsim.pricing import cost as price_cost
from axonsim.state import ChannelState
from axonsim.unified import Usage
from server.auth import GatewayAuth
from server.driver import ChannelRuntime, Clock, Exchange, LiveDriver, Scrubber
from server.metrics import Metrics
from server.routes import RouteTable, load_formats
from server.store.records import BODY_SCRUB_MARGIN, MAX_STORED_BODY, AttemptRow, RequestRecord
from server.store.scrub import MIN_SECRET
from server.upstream import AiohttpUpstream, Upstream

if TYPE_CHECKING:
    from server.probes import Probes
    from server.store import Store

log = logging.getLogger("axonsim.server")

# Seconds a request cancelled by the shutdown deadline may still spend telling its client so.
LAST_WORDS = 1.0
access_log = logging.getLogger("axonsim.server.access")

RequestHook = Callable[[dict[str, Any]], None]

# What a request header carries (Runtime.header_kinds maps raw lower-case names to these).
H_TRACE, H_THREAD, H_AH_TRACE, H_AH_THREAD, H_EXPLAIN = 1, 2, 3, 4, 5
AH_TRACE = b"ah-trace-id"  # AxonHub's names, accepted so its clients keep their traces
AH_THREAD = b"ah-thread-id"
EXPLAIN_HEADER = b"x-axonsim-explain"
# Bytes of a body handed to the store: what it keeps, and the margin it scrubs before cutting.
BODY_HANDED = MAX_STORED_BODY + BODY_SCRUB_MARGIN  # what store_record keeps of a body


def _lower(name: str) -> bytes:
    return name.strip().lower().encode("latin-1")


def check_servable(config: Config) -> None:
    """ConfigError unless every enabled channel has a URL to send requests to: a config written for
    the simulator alone would otherwise start, and fail every request as a connection error."""
    nowhere = [f"channels[{i}] ({ch.name})" for i, ch in enumerate(config.channels) if ch.enabled and not ch.base_url]
    if nowhere:
        raise ConfigError(f"{', '.join(nowhere)}: no base_url, so the proxy has nowhere to send their requests "
                          "(a config for the simulator only? give each channel its provider's URL, or "
                          "`enabled: false`)")


class Runtime:
    """Everything built from one Config; replaced whole by Proxy.reload (never mutated in place
    except for channel state, which is the Router's job)."""

    def __init__(self, config: Config, upstream: Upstream, rng: random.Random, clock: Clock, passthrough: bool,
                 explain: bool) -> None:
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
        # Every key the config holds: a client may paste its own or an admin key into a prompt that
        # an upstream's error then quotes.
        self.scrub = Scrubber(store_secrets(config))
        for where in short_secrets(config):
            log.warning("%s is shorter than %d characters: it is not masked in logs, error messages, admin "
                        "answers or stored records (fine for a local server that takes any key)", where, MIN_SECRET)
        self.driver = LiveDriver(self.router, channels, upstream, rng, self.scrub, clock, passthrough, explain)
        self.sticky = config.routing.sticky
        self.routes = RouteTable(load_formats())
        g = config.gateway
        self.trace_name = _lower(g.trace_header)
        self.thread_name = _lower(g.thread_header)
        self.cors = g.cors  # None: no CORS (server/app.py builds its layer from this)
        # AxonHub's names first, so configured names that happen to be the same win.
        self.header_kinds: dict[bytes, int] = {AH_TRACE: H_AH_TRACE, AH_THREAD: H_AH_THREAD, EXPLAIN_HEADER: H_EXPLAIN,
                                               self.trace_name: H_TRACE, self.thread_name: H_THREAD}
        self.prices: Mapping[str, Price] = config.prices
        self.channel_prices: dict[str, Price] = {ch.name: ch.price for ch in config.channels if ch.price is not None}
        self.priced = bool(self.prices or self.channel_prices)
        # Images and context size can only steer routing when some channel restricts them; a
        # provider's native tools always can. Decided once, so plain requests skip the scan.
        self.capability_checks = any(not ch.capabilities.images or ch.capabilities.context_window is not None
                                     for ch in config.channels)

    def price(self, channel: str, upstream_model: str | None, model: str | None) -> Price | None:
        """The channel's own price, else the table's for the upstream model, else for the requested name."""
        p = self.channel_prices.get(channel)
        if p is not None:
            return p
        prices = self.prices
        if upstream_model is not None and upstream_model in prices:
            return prices[upstream_model]
        if model is not None and model in prices:
            return prices[model]
        return None


def restart_only(started: Config, new: Config) -> list[str]:
    """The fields of `new` that differ from the config the process started with and that a reload
    does not apply (the store and the shared state are opened once; the shutdown deadline is set
    when serving starts): they wait for a restart. The reload's log line and the admin API's answer
    say so."""
    out = [f"{part}.{name}" for part in ("store", "state")
           for name in type(getattr(new, part)).model_fields
           if getattr(getattr(started, part), name) != getattr(getattr(new, part), name)]
    if started.gateway.shutdown_timeout != new.gateway.shutdown_timeout:
        out.append("gateway.shutdown_timeout")
    return out


# Records kept in memory (`recent`): for the admin API's look-up of a request the store has not
# written yet (or cannot reach), and the decision trace of an explained one. A ring of 1,000 kept
# megabytes of dicts cycling through the caches: 100 took ~13 µs (6 %) off the proxy's CPU per
# request at 64 concurrent requests (paired runs; 0 saved no more). At a few requests a second it
# still covers minutes; at thousands a second, the store's flush interval was never covered anyway.
RECENT = 100


class Proxy:
    """The gateway's process-wide state; `rt` is the current Runtime (see the module docstring)."""

    def __init__(self, config: Config, upstream: Upstream | None = None, *, seed: int | None = None,
                 recent: int = RECENT, passthrough: bool = True, explain: bool = False, store: Store | None = None,
                 config_path: str | Path | None = None, metrics: Metrics | None = None) -> None:
        self.upstream: Upstream = upstream if upstream is not None else AiohttpUpstream()
        # One seeded generator for jitter and strategy draws; the OS seeds it when the config has no seed.
        self.rng = random.Random(seed if seed is not None else config.seed)
        self.clock = Clock()
        self.passthrough = passthrough
        self.explain = explain
        self.rt = Runtime(config, self.upstream, self.rng, self.clock, passthrough, explain)
        self.config_path = Path(config_path) if config_path is not None else None
        # What the store, the shared state and the shutdown deadline were started with: a reload does
        # not change them (restart_only), so later reloads are measured against this, not the last file.
        self.started_config = config
        self.store = store
        self.metrics = metrics if metrics is not None else Metrics(router=lambda: self.rt.router,
                                                                   store=lambda: self.store, now=self.clock.now,
                                                                   shared=lambda: self.shared_state)
        self.recent: deque[dict[str, Any]] = deque(maxlen=recent)
        self.on_request_done: RequestHook | None = None
        self.ready = False
        self.startup_error: BaseException | None = None  # why start-up failed (serve maps it to an exit code)
        self.shared_state: Any = None  # server.shared_state.SharedState when state.url is set
        # Why an admin switch would reach only this process (set for `--workers N` without state.url).
        self.switches_local: str | None = None
        self.startup_hooks: list[Callable[[], Awaitable[None]]] = []
        self.shutdown_hooks: list[Callable[[], Awaitable[None]]] = []
        self._reload_lock = asyncio.Lock()
        # Client-API requests whose handler has not ended (recorded included), and the event the
        # shutdown waits on for the last of them (see shutdown).
        self.active = 0
        self._idle: asyncio.Event | None = None
        # With several worker processes: asks the supervisor to replace every worker (server.main).
        self.reload_workers: Callable[[], None] | None = None
        from server.probes import Probes  # here: probes import this module

        self.probes: Probes = Probes(self)

    # -- the current runtime, by its old names -------------------------------------------------------

    @property
    def config(self) -> Config:
        return self.rt.config

    @property
    def router(self) -> Router:
        return self.rt.router

    @property
    def auth(self) -> GatewayAuth:
        return self.rt.auth

    @property
    def channels(self) -> list[ChannelRuntime]:
        return self.rt.channels

    @property
    def scrub(self) -> Scrubber:
        return self.rt.scrub

    @property
    def driver(self) -> LiveDriver:
        return self.rt.driver

    @property
    def routes(self) -> RouteTable:
        return self.rt.routes

    @property
    def sticky(self) -> str:
        return self.rt.sticky

    @property
    def trace_header(self) -> bytes:
        """The configured trace-id request header, lower-case bytes as ASGI spells header names."""
        return self.rt.trace_name

    @property
    def thread_header(self) -> bytes:
        return self.rt.thread_name

    # -- lifecycle -----------------------------------------------------------------------------------

    async def startup(self) -> None:
        """Store first (StoreUnavailable if its database is down and not allowed to be), then the
        hooks (demo mocks, shared state), the upstream session, the probes."""
        try:
            if self.store is not None:
                await self.store.start()
            for hook in self.startup_hooks:
                await hook()
            await self.upstream.start()
        except BaseException as exc:
            self.startup_error = exc
            raise
        self.probes.start()
        self.ready = True

    def request_ended(self) -> None:
        """A client-API handler has ended (recorded): the count the shutdown waits on."""
        self.active -= 1
        if self.active == 0 and self._idle is not None:
            self._idle.set()

    async def shutdown(self) -> None:
        """Called once the server has stopped accepting and in-flight requests have finished (or
        the shutdown deadline passed): probes, upstream session, then the store drains."""
        self.ready = False
        if self.active:
            # uvicorn starts this as soon as its deadline has cancelled the requests still running,
            # without waiting for them; each still says its last words (up to LAST_WORDS, longer
            # if its client does not read) and is then recorded. The store must still be open then.
            self._idle = asyncio.Event()
            try:
                async with asyncio.timeout(LAST_WORDS + 1.0):
                    await self._idle.wait()
            except TimeoutError:
                log.warning("%d requests were still ending at shutdown; their records may be missing", self.active)
        await self.probes.stop()
        try:
            await self.upstream.aclose()
        except Exception:
            log.exception("closing the upstream session failed")
        if self.store is not None:
            try:
                # The deadline serving started with (a reload's new shutdown_timeout waits for a
                # restart, as uvicorn's does): a shorter one from a reload lost records it could write.
                await self.store.close(timeout=max(self.started_config.gateway.shutdown_timeout, 1.0))
            except Exception:
                log.exception("closing the store failed")
        for hook in reversed(self.shutdown_hooks):
            try:
                await hook()
            except Exception:
                log.exception("shutdown hook failed")

    # -- reload --------------------------------------------------------------------------------------

    async def reload(self, config: Config | None = None) -> None:
        """Re-read the config file (or take `config`), build a new Runtime and swap it in.

        ConfigError leaves everything as it was. Channel state carries over for channels whose
        config did not change (see carry_over); requests in flight finish on the old Runtime."""
        async with self._reload_lock:
            if config is None:
                if self.config_path is None:
                    raise NotImplementedError("this gateway was started without a config file (the demo): "
                                              "there is nothing to re-read")
                config = load_config(self.config_path)
            check_servable(config)
            old = self.rt
            new = Runtime(config, self.upstream, self.rng, self.clock, self.passthrough, self.explain)
            kept = carry_over(old.router, new.router, self.clock.now())
            if self.shared_state is not None:
                self.shared_state.carry_switches(old.router, new.router)
            self.rt = new
            if self.store is not None:
                # The old keys too: a record of a request that ran on the old config may still quote one.
                self.store.set_secrets([*store_secrets(config), *store_secrets(old.config)])
            self.probes.restart()
            later = restart_only(self.started_config, config)
            log.info("configuration reloaded: %d channels (state kept for %d unchanged)", len(new.router.states),
                     len(kept))
            if later:
                log.warning("configuration reloaded, but %s changes apply only after a restart", ", ".join(later))

    async def reload_all(self) -> None:
        """The admin API's reload: this process (so a bad file is refused before anything changes),
        then, with several workers, every other one: they cannot be reached from here, so the parent
        is asked to pass SIGHUP on to each (what SIGHUP to `axonsim serve` does), and each reloads
        in its own process, its requests in flight finishing on the old config."""
        await self.reload()
        if self.reload_workers is not None:
            log.info("configuration reloaded here; every worker is being told to reload too")
            self.reload_workers()

    # -- records -------------------------------------------------------------------------------------

    def request_done(self, record: dict[str, Any], rt: Runtime | None = None, ex: Exchange | None = None,
                     request_body: bytes | None = None, response_body: bytes | None = None) -> None:
        """One finished client request: ring, metrics, store, hook, access log. Never raises."""
        rows = None
        store = self.store
        if store is not None:
            try:
                stored = store_record(record, rt or self.rt, ex, request_body, response_body)
                rows = stored.attempts
                store.submit(stored)
            except Exception:
                log.exception("store: building the record of request %s failed", record["id"])
        record["attempt_rows"] = rows
        self.recent.append(record)
        try:
            metrics = self.metrics
            metrics.observe_request(record["client_format"], record["model"], record["status"],
                                    record["latency"], record["ttft"], record.get("overhead"), record["attempts"])
            metrics.observe_usage(record["project"], record["model"], record["usage"], record["cost"])
        except Exception:
            log.exception("metrics: observing a request failed")
        hook = self.on_request_done
        if hook is not None:
            try:
                hook(record)
            except Exception:
                log.exception("on_request_done hook failed")
        if access_log.isEnabledFor(logging.INFO):
            # The path and the model are the client's: one line each, and any configured key in them
            # masked (a client may paste one as its model name).
            scrub = (rt or self.rt).scrub
            model = record["model"]
            access_log.info(
                "%s %s model=%s status=%d attempts=%d channels=%s latency_ms=%.1f stream=%s id=%s",
                record["method"], _safe(scrub(record["path"])), _safe(scrub(model) if model is not None else None),
                record["status"], len(record["attempts"]),
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


def store_secrets(config: Config) -> list[str]:
    """What the store masks in everything it writes: every key of the config — upstream, client
    and admin (a client may paste any of them into a prompt)."""
    from server.store import secrets_from_config

    return [*secrets_from_config(config), *config.gateway.admin_keys]


def short_secrets(config: Config) -> list[str]:
    """Where the config holds a key too short to be searched for (server/store/scrub.py MIN_SECRET),
    by place, never by value."""
    out = [f"channels[{i}] ({ch.name}) api_keys[{j}]" for i, ch in enumerate(config.channels)
           for j, k in enumerate(ch.api_keys) if len(k.key) < MIN_SECRET]
    out += [f"gateway.api_keys[{j}]" for j, k in enumerate(config.gateway.api_keys) if len(k.key) < MIN_SECRET]
    out += [f"gateway.admin_keys[{j}]" for j, k in enumerate(config.gateway.admin_keys) if len(k) < MIN_SECRET]
    return out


def request_cost(rt: Runtime, usage: Usage | None, attempts: Sequence[Mapping[str, Any]],
                 model: str | None, answered: bool) -> float | None:
    """What the request cost: the answering attempt's usage at its price. 0.0 where nothing was
    billed on a priced model (no attempt answered; a stream cut before its usage came; no attempt
    made for a model the table prices; a request refused before its model was known), as its
    attempts' rows say. None only where there is no price, which the admin API counts as `unpriced`."""
    if not rt.priced:
        return None
    if not attempts:  # refused before any call: priced if the table or a channel serving the model prices it
        if model is None:
            return 0.0  # refused before its model was read (a bad key, a body that is not JSON): nothing to bill
        if model in rt.prices:
            return 0.0
        for st in rt.router.states:
            upstream = st.channel.serves(model)
            if upstream is not None and rt.price(st.name, upstream, model) is not None:
                return 0.0
        return None
    last = attempts[-1]
    p = rt.price(last["channel"], last["upstream_model"], model)
    if p is None:
        return None
    return price_cost(usage, p) if answered and usage is not None else 0.0


def store_record(rec: Mapping[str, Any], rt: Runtime, ex: Exchange | None, request_body: bytes | None,
                 response_body: bytes | None) -> RequestRecord:
    """The proxy's record dict as the store's RequestRecord with its AttemptRows (built in the
    request's task after the last byte was sent; the store writes it later from its own task).

    An attempt's `decision` JSON keeps only what its columns do not: what execution did next, how
    a committed stream broke, and — for an explained request — the routing decision that chose
    its channel. (The store scrubs every JSON value it writes, so a fuller copy would double the
    writer's cost per record for information the columns already hold.)"""
    usage = rec["usage"]
    model = rec["model"]
    rows = []
    atts = rec["attempts"]
    if atts:
        decisions = rec.get("decisions")
        cost = rec.get("cost")  # records from other handlers (embeddings) may not carry one
        failures: dict[int, str] = {}
        last = len(atts) - 1
        for i, a in enumerate(atts):
            if a["error"] is not None and ex is not None and not failures:
                # The driver's scrubbed error messages live in the exchange's trace, by attempt number.
                for call, out in ex.trace:
                    if out is not None and out.error is not None:
                        failures[call.attempt] = out.error.message
            start, end = a["start"], a["end"]
            kind = a["error"]
            broke = a.get("stream_error")
            decision: dict[str, Any] = {"next": a["next"]}
            if broke is not None:
                decision["stream_error"] = broke
            d = a["decision"]
            if decisions and d is not None and 0 <= d < len(decisions):
                decision["choice"] = decisions[d]
            stream_end = a.get("stream_end")
            # An answer came: in full, or a stream the client abandoned (its first token did arrive).
            answered = kind is None and (a["next"] == "done" or stream_end is not None)
            if i == last and answered:
                a_cost = cost
            elif rt.priced and rt.price(a["channel"], a["upstream_model"], model) is not None:
                a_cost = 0.0  # a failed attempt is not billed
            else:
                a_cost = None
            rows.append(AttemptRow(
                n=a["attempt"], channel=a["channel"], upstream_model=a["upstream_model"], status=a["status"],
                key_name=a["key"],
                error=failures.get(a["attempt"], kind) if kind is not None else (rec["error"] if broke else None),
                error_kind=kind or broke,
                latency=(stream_end if stream_end is not None else end) - start,
                ttft=(end - start) if answered else None, cost=a_cost, decision=decision,
            ))
    return RequestRecord(
        id=rec["id"], created_at=rec["created_at"], project=rec["project"] or "", key_name=rec["key_name"],
        model=model or "", client_format=rec["client_format"], stream=bool(rec["stream"]), status=rec["status"],
        outcome=rec["outcome"], error=rec["error"], latency=rec["latency"], ttft=rec["ttft"],
        overhead=rec.get("overhead"), cost=rec.get("cost"), trace_id=rec["trace_id"], thread_id=rec["thread_id"],
        channel=rec["channel"],
        prompt_tokens=usage["prompt_tokens"] if usage else 0,
        completion_tokens=usage["completion_tokens"] if usage else 0,
        cached_tokens=usage.get("cached_tokens", 0) if usage else 0,
        reasoning_tokens=usage.get("reasoning_tokens", 0) if usage else 0,
        request_body=request_body[:BODY_HANDED] if request_body is not None else None,
        response_body=response_body[:BODY_HANDED] if response_body is not None else None,
        attempts=rows,
    )


# -- carrying channel state over a reload -----------------------------------------------------------

# Plain values copied from an unchanged channel's old state to its new one.
_VALUES = ("requests", "failures", "consecutive_failures", "last_failure", "last_success", "cooldown_until",
           "ewma_latency", "ewma_ttft", "ewma_tps", "last_pick", "disabled_until", "selections", "selections_at",
           "peak_ewma", "peak_at", "_key_rr")
_KEY_VALUES = ("disabled", "held", "disabled_until", "failures", "uses")


def carry_over(old: Router, new: Router, now: float) -> list[str]:
    """Give the new Router's channels the live state of the old one's, for every channel whose
    config is unchanged (compared field by field, as the file says it: an admin-API switch made
    since the last load is not a change of the channel, though the switch itself ends with the
    reload). Returns the channels carried over.

    What moves: health and performance figures (cooldown, auto-disable, EWMAs, counters, the
    round-robin position), per-key disables, and — shared by reference, so attempts still running
    on the old Router keep them right — the limiters and quota counters; breakers, outlier
    ejection and auto-disable streaks too when the health config is unchanged. The attempts in
    flight are counted on the new state too, as long as they run (ChannelState.successor): least-
    busy routing and /admin/channels see them. Attempts still running on the old Router report to
    the old state, which goes on steering that Router's retries and failovers; their figures (EWMAs,
    counters) stay there, while what they find out about the channel (a cooldown, a disabled key or
    channel, an ejection, a breaker they open) holds for the new state at once. Nothing of a changed
    or new channel moves."""
    kept: list[str] = []
    same_health = old.config.routing.health == new.config.routing.health
    for st in new.states:
        prev = old.by_name.get(st.name)
        if prev is None:
            continue
        was = prev.channel
        if was.enabled != prev.config_enabled:  # an operator's switch: the file's word is what compares
            was = was.model_copy(update={"enabled": prev.config_enabled})
        if was != st.channel:
            continue
        _carry_channel(prev, st, same_health, new, now)
        kept.append(st.name)
    if old.config.routing == new.config.routing:
        new.balancer.seq = old.balancer.seq
        new.stats = old.stats
        new.budget = old.budget
    if kept and new.sticky_mode != "none":
        names = set(kept)
        for k, v in old.sticky.items():
            if v in names:
                new.sticky[k] = v
    return kept


def _carry_channel(prev: ChannelState, st: ChannelState, same_health: bool, new: Router, now: float) -> None:
    for name in _VALUES:
        setattr(st, name, getattr(prev, name))
    st.limiter = prev.limiter
    st.quota = prev.quota
    for kp, kn in zip(prev.keys, st.keys, strict=True):
        for name in _KEY_VALUES:
            setattr(kn, name, getattr(kp, name))
        kn.limiter = kp.limiter
        if same_health:
            kn.breakers = kp.breakers
            kn.auto = kp.auto
    if same_health:
        st.breakers = prev.breakers
        st.auto = prev.auto
        st.ejection = prev.ejection
        if prev.ejection.until > now:
            new.outlier.ejected[st.name] = prev.ejection.until
    st.inflight = prev.inflight
    prev.successor = st
    st.refresh(now)  # the core's fast path must see the health carried over (open breakers, disabled keys)


def _safe(s: str | None) -> str:
    """A client-supplied string fit for one log line (no line breaks, bounded)."""
    if s is None:
        return "-"
    return repr(s[:100])
