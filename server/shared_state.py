"""Channel state shared by several proxy processes through Redis, synchronised off the hot path.

Rules:
1. Requests never touch Redis. A background task synchronises every `state.sync_interval` seconds;
   between syncs each process routes on its local state exactly as a single worker would. The
   price of that is a propagation delay of about one or two intervals.
2. "Most severe wins". A cooldown, an auto-disable, an outlier ejection, an open breaker (channel ×
   model, and key × model) or a disabled key seen by one process is applied by every process, so they
   all skip the same channels. Values are absolute Unix times (the proxy's clock is Unix-aligned),
   merged with max() by a Lua script, so pushes commute and nobody needs a lock.
3. Lifts travel too, as markers: a breaker that closed after its probes, or an operator's enable
   (admin API) that ends a channel's auto-disable or a key's disable. A lift names the incident it
   ends (its exact `until`), so it ends that incident everywhere but never a newer one, however
   short: a value pushed over a lift marker that is not the lifted one replaces it.
4. Nothing stale outlives its meaning. One Redis hash per channel holds its fields; its TTL is the
   longest remaining duration among them, and expired fields are dropped whenever it is written.
   Permanent states (rejected credentials) live `PERMANENT_TTL` and are refreshed by every process
   that still holds them, so they last as long as some process does, as in one process.
5. Rate-limit counters (RPM/TPM per channel and key, and quotas) are shared as per-window counts:
   each process writes its own count (what it admitted itself) under a field of its own in the
   window's hash, and adopts the sum of all of them, so a limit holds across processes (it can
   overshoot by what the fleet admits within one interval). Writing a count, not adding an
   increment, makes a push idempotent: one whose reply was lost (a slow Redis, a reload while it
   was under way) is sent again without being counted twice. A total never falls within its
   window: one that does (Redis lost its data) is not adopted, and the processes' next pushes fill
   it again.
6. Round robin (best effort): the selection counter and each channel's last pick live in Redis,
   so a process does not restart the rotation from the first channel; between syncs each process
   rotates on its own, so two processes may pick the same channel within one interval.
7. Redis down: keep serving on local state, log once per change (down / back up), count errors,
   retry with exponential backoff. Local changes made meanwhile are pushed when Redis returns, and a
   Redis that lost its data is refilled from the processes' local state.
8. The Router is read through a getter on every sync: a config reload's new Router adopts the
   fleet's state at the next sync.

An operator's channel switch (the admin API's; not the config's `enabled`, which every process reads
alike) is shared like a disabled key: off is a permanent state, an enable lifts it (back to what the
config says), so one admin call reaches every process (and, as it lives in Redis, outlasts a reload
until it is switched back).

State that stays local: in-flight counts, EWMAs, error counts, auto-disable streaks, sticky routing.

Redis keys (prefix `state.key_prefix`; `<ch>` is the channel's name plus a fingerprint of its type,
base URL and keys, so a channel whose endpoint or credentials change in the config starts clean):
    <prefix>:ch:<ch>         hash: field -> "a:<until>[:<extra>]" (active) | "l:<until>:<lifted at>"
    <prefix>:ver             counter bumped by every change to a channel hash (cheap change detection)
    <prefix>:rl:<minute>     hash: "<ch>|c|r|<proc>" / "<ch>|k<i>|t|<proc>" -> a process's requests / tokens
                             in that minute (<proc>: a random id per process)
    <prefix>:q:<ch>:<window> hash: "r|<proc>", "t|<proc>" -> a process's requests / tokens in a quota window
    <prefix>:rr:seq, <prefix>:rr:last   the shared selection counter and each channel's last pick
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ResponseError

from axonsim.config import SharedStateConfig
from axonsim.execution import Router
from axonsim.health import CLOSED, OPEN, Breaker
from axonsim.limits import WINDOW, Limiter, RateWindow
from axonsim.state import NEVER, ChannelState, KeyState
from server.store.engine import safe_url

log = logging.getLogger("axonsim.server.shared_state")

# A permanent state is sent as PERMANENT + the time it was first seen, so that a new incident after
# a lift is told apart from the old one (all permanent values sort after every temporary one).
PERMANENT = 1e12
PERMANENT_TTL = 3600.0  # seconds a permanent state lives in Redis without a process refreshing it
LIFT_KEEP = 60.0  # seconds a lift marker stays visible, for processes that sync late
RATE_TTL = 120  # a minute window is read until the end of the next minute
RR_TTL = 86400  # round-robin position: forgotten after a day without traffic
FULL_PULL_EVERY = 5.0  # seconds: re-read every channel hash even if the version counter says nothing changed

# Merge pushed values into one channel hash; drop expired fields; set the TTL; return the hash.
# ARGV: now, lift keep, permanent ttl, then (op, field, value) triples; op 'max' pushes an active
# value "until[:extra]", op 'lift' ends the incident whose until is `value`; op 'olift' (an
# operator's enable) ends a permanent state set before `value` (its stamp is the time it was set):
# its marker names that state, so every process holding it lifts it, or, with nothing there, lifts
# every permanent state stamped before `value`. Temporary incidents it leaves alone.
_MERGE = """
local h, now, keep, perm_ttl = KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local changed = false
local function parse(v)
  local s, u, x = string.match(v, '^(%a):([^:]+):?(.*)$')
  return s, tonumber(u), x
end
for i = 4, #ARGV, 3 do
  local op, f, arg = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local ustr = string.match(arg, '^([^:]+)')
  local u = tonumber(ustr)
  local cur = redis.call('HGET', h, f)
  local s, cu = nil, nil
  if cur then s, cu = parse(cur) end
  if not cu then cur = nil end  -- a value that does not parse (garbage) counts as absent
  if op == 'max' then
    -- Over a lift, any other value is a newer incident (even a shorter one); the same is a late echo,
    -- and so is a permanent state stamped before a permanent lift (an operator's enable came after it).
    local older = s == 'l' and u >= 1e12 and cu >= 1e12 and u < cu
    if not cur or (s == 'a' and u > cu) or (s == 'l' and u ~= cu and not older) then
      redis.call('HSET', h, f, 'a:' .. arg)
      changed = true
    end
  elseif op == 'olift' then
    -- Permanent states only: a temporary incident (a cooldown, an auto-disable) has no stamp of when
    -- it began, so one that began after the enable could not be told from one before it.
    if cur and s == 'a' and cu >= 1e12 and cu <= u then
      redis.call('HSET', h, f, 'l:' .. string.match(cur, '^%a:([^:]+)') .. ':' .. ARGV[1])
      changed = true
    elseif not cur or (s == 'l' and cu >= 1e12 and cu < u) then
      -- Nothing to name (yet): a permanent lift up to `value`, which a process that shares its
      -- older permanent state later finds already lifted.
      redis.call('HSET', h, f, 'l:' .. ustr .. ':' .. ARGV[1])
      changed = true
    end
  elseif not cur or (s == 'a' and cu <= u) or (s == 'l' and cu < u) then
    redis.call('HSET', h, f, 'l:' .. ustr .. ':' .. ARGV[1])
    changed = true
  end
end
local all = redis.call('HGETALL', h)
local maxexp = nil
for i = 1, #all, 2 do
  local s, u, x = parse(all[i + 1])
  local exp
  if not u then
    exp = now  -- unreadable: dropped below
  elseif s == 'a' then
    if u >= 1e12 then exp = now + perm_ttl else exp = u end
  else
    exp = (tonumber(x) or 0) + keep
  end
  if exp <= now then
    redis.call('HDEL', h, all[i])
  elseif not maxexp or exp > maxexp then
    maxexp = exp
  end
end
if maxexp then redis.call('PEXPIRE', h, math.ceil((maxexp - now) * 1000)) end
if changed then
  redis.call('INCR', KEYS[2])
  redis.call('EXPIRE', KEYS[2], 86400)
end
return redis.call('HGETALL', h)
"""

# Add this process's selections to the shared counter; map its picks (offsets 1..d into its
# share of the counter) onto shared sequence numbers, keeping the latest per channel.
_ROUND_ROBIN = """
local d = tonumber(ARGV[1])
local t = redis.call('INCRBY', KEYS[1], d)
local base = t - d
for i = 3, #ARGV, 2 do
  local v = base + tonumber(ARGV[i + 1])
  local cur = tonumber(redis.call('HGET', KEYS[2], ARGV[i]) or '-1') or -1  -- garbage: as if absent
  if v > cur then redis.call('HSET', KEYS[2], ARGV[i], v) end
end
redis.call('EXPIRE', KEYS[1], ARGV[2])
redis.call('EXPIRE', KEYS[2], ARGV[2])
return {t, redis.call('HGETALL', KEYS[2])}
"""


def _keys_of(args: tuple[Any, ...]) -> list[str]:
    """The keys a pipelined command names: EVALSHA/EVAL's KEYS, or a plain command's first argument."""
    if str(args[0]).upper() in ("EVALSHA", "EVAL"):
        n = int(args[2])
        return [str(k) for k in args[3:3 + n]]
    return [str(args[1])] if len(args) > 1 else []


def channel_id(st: ChannelState) -> str:
    """The channel's name plus a fingerprint of what makes it the same upstream (never a secret)."""
    ch = st.channel
    h = hashlib.sha256(f"{ch.type}\n{ch.base_url}".encode())
    for k in st.keys:
        h.update(f"\n{k.name}\t{k.secret}".encode())
    return f"{st.name}:{h.hexdigest()[:10]}"


# --------------------------------------------------------------------------------------------------
# Channel fields: how each piece of severity state reads and applies


def _enc(raw: float, held: float, now: float) -> float:
    """A local time as sent: a permanent state keeps the stamp it was first shared with."""
    if raw == math.inf:
        return held if held >= PERMANENT else PERMANENT + now
    return raw


def _dec(v: float) -> float:
    return math.inf if v >= PERMANENT else v


def _breaker_value(b: Breaker | None) -> float:
    # Open or half-open (not yet recovered) counts as its last open_until; closed as nothing.
    if b is None or b.state == CLOSED:
        return NEVER
    return b.open_until


def _open_breaker(b: Breaker, until: float, trips: int) -> None:
    if until > b.open_until or b.state == CLOSED:
        b.state = OPEN
        b.open_until = max(b.open_until, until)
        b.trips = max(b.trips, trips)
        b.probes = 0
        b.probe_successes = 0


def _close_breaker(b: Breaker, until: float) -> None:
    # Only the incident that was lifted: a breaker re-opened later keeps its own verdict.
    if b.state != CLOSED and b.open_until <= until:
        b.state = CLOSED
        b.failures = 0
        b.trips = 0
        b.probes = 0
        b.probe_successes = 0


def _switch_value(st: ChannelState) -> float:
    # An operator's channel switch (admin API; not the config's `enabled`, which every process reads
    # alike): off is a permanent state until an operator's enable lifts it.
    return math.inf if st.switched_off else NEVER


def _raw_fields(st: ChannelState) -> Iterator[tuple[str, float, str]]:
    """(field, local value, extra) for every piece of this channel's shared state."""
    yield "cd", st.cooldown_until, ""
    yield "dis", st.disabled_until, ""
    yield "off", _switch_value(st), ""
    yield "ej", st.ejection.until, ""
    for model, b in st.breakers.items():
        yield f"b:{model}", _breaker_value(b), str(b.trips)
    for i, k in enumerate(st.keys):
        yield f"k:{i}", math.inf if k.disabled else k.disabled_until, ""
        # An operator's hold on the key, apart from its disable (which rejected credentials set
        # too): probes neither use nor lift a held key in any process.
        yield f"kh:{i}", math.inf if k.held else NEVER, ""
        for model, b in k.breakers.items():
            yield f"kb:{i}:{model}", _breaker_value(b), str(b.trips)


def _local_value(st: ChannelState, name: str) -> float:
    kind, _, arg = name.partition(":")
    if kind == "cd":
        return st.cooldown_until
    if kind == "dis":
        return st.disabled_until
    if kind == "off":
        return _switch_value(st)
    if kind == "ej":
        return st.ejection.until
    if kind == "b":
        return _breaker_value(st.breakers.get(arg))
    if kind == "kb":
        k, model = _key_model(st, arg)
        return _breaker_value(k.breakers.get(model)) if k is not None else NEVER
    if kind in ("k", "kh") and arg.isdigit() and int(arg) < len(st.keys):
        k = st.keys[int(arg)]
        if kind == "k":
            return math.inf if k.disabled else k.disabled_until
        return math.inf if k.held else NEVER
    return NEVER


def _key_model(st: ChannelState, arg: str) -> tuple[KeyState | None, str]:
    """A key breaker's field argument, "{key index}:{upstream model}", as the key and the model
    (None: no such key here; a field without a model, from a version whose key breakers counted
    every model together, is not applied: per model, it would hold back models it says nothing of)."""
    index, sep, model = arg.partition(":")
    if not sep or not index.isdigit() or int(index) >= len(st.keys):
        return None, ""
    return st.keys[int(index)], model


def _apply(st: ChannelState, name: str, until: float, extra: str, lifted: bool, now: float) -> None:
    """Make the local state at least as severe as `until` (or end the incident `until`, if lifted)."""
    _apply_one(st, name, until, extra, lifted, now)
    st.refresh(now)  # the core's fast path must see breakers and keys changed from outside


def _apply_one(st: ChannelState, name: str, until: float, extra: str, lifted: bool, now: float) -> None:
    kind, _, arg = name.partition(":")
    u = _dec(until)
    if kind == "cd":
        if lifted:
            if st.cooldown_until <= u:
                st.cooldown_until = NEVER
        else:
            st.cooldown_until = max(st.cooldown_until, u)
    elif kind == "dis":
        if lifted:
            if st.disabled_until <= u:
                st.disabled_until = NEVER
        else:
            st.disabled_until = max(st.disabled_until, u)
    elif kind == "off":
        if lifted:
            if st.switched_off:
                st.switched_off = False
                st.channel.enabled = st.config_enabled  # back to the config's word, not past it
        elif u == math.inf:
            st.switched_off = True
            st.channel.enabled = False
    elif kind == "ej":
        det = st.outlier
        if lifted:
            if st.ejection.until <= u:
                st.ejection.until = NEVER
                if det is not None:
                    det.ejected.pop(st.name, None)
        elif u > st.ejection.until:
            # The pool-wide cap holds fleet-wide too: never eject past it, whoever ejected first.
            if det is not None and st.name not in det.ejected and det.currently_ejected(now) >= det.max_ejected():
                return
            st.ejection.until = u
            if det is not None:
                det.ejected[st.name] = u
    elif kind == "b":
        if st.breaker_cfg is None:
            return
        b = st.breakers.get(arg)
        if lifted:
            if b is not None:
                _close_breaker(b, u)
        else:
            _open_breaker(st.breaker(arg), u, int(extra) if extra.isdigit() else 0)
    elif kind == "kb":
        kk, model = _key_model(st, arg)
        if kk is None or kk.breaker_cfg is None:
            return
        if lifted:
            kb = kk.breakers.get(model)
            if kb is not None:
                _close_breaker(kb, u)
        else:
            kb = kk.breaker(model)
            if kb is not None:
                _open_breaker(kb, u, int(extra) if extra.isdigit() else 0)
    elif kind in ("k", "kh") and arg.isdigit() and int(arg) < len(st.keys):
        k = st.keys[int(arg)]
        if kind == "kh":
            if lifted:
                k.held = False  # the operator's enable: its lift of the key's disable travels as well
            elif u == math.inf:
                k.held = k.disabled = True
        elif lifted:
            if (math.inf if k.disabled else k.disabled_until) <= u and not k.held:
                k.disabled = False
                k.disabled_until = NEVER
        elif u == math.inf:
            k.disabled = True
        else:
            k.disabled_until = max(k.disabled_until, u)


def _parse(raw: str) -> tuple[bool, float, str] | None:
    """(lifted, until, extra or lifted-at) from a hash value; None if unreadable."""
    state, _, rest = raw.partition(":")
    u, _, extra = rest.partition(":")
    try:
        return state == "l", float(u), extra
    except ValueError:
        return None


def _num(v: float) -> str:
    return repr(float(v))


# --------------------------------------------------------------------------------------------------
# Counters: a RateWindow holds its counts in four slots; these read and set one minute's pair.


def _window_counts(rw: RateWindow, w: int) -> tuple[int, int] | None:
    # RateWindow offers no setter: its whole state is these slots (current and previous minute).
    if rw._win == w:
        return rw._cur_req, rw._cur_tok
    if rw._win == w + 1:
        return rw._prev_req, rw._prev_tok
    return None


def _window_set(rw: RateWindow, w: int, req: int, tok: int) -> None:
    if rw._win == w:
        rw._cur_req, rw._cur_tok = req, tok
    elif rw._win == w + 1:
        rw._prev_req, rw._prev_tok = req, tok


def _limited(lim: Limiter) -> bool:
    return lim.cfg.rpm is not None or lim.cfg.tpm is not None


def _int(v: Any) -> int:
    try:
        return int(v)
    except (TypeError, ValueError):
        return 0


def _pairs(v: Any) -> dict[str, str]:
    """A Lua-returned HGETALL (a flat list) as a dict."""
    if isinstance(v, dict):
        return v
    it = iter(v or [])
    return dict(zip(it, it, strict=False))


@dataclass(eq=False)  # identity: `c in pushed` must not compare whole dicts
class _Chan:
    st: ChannelState
    cid: str  # channel id: name + fingerprint
    hkey: str  # its Redis hash
    seen: dict[str, float] = field(default_factory=dict)  # field -> the remote value last seen
    held: dict[str, float] = field(default_factory=dict)  # field -> the local value after the last sync
    refreshed: dict[str, float] = field(default_factory=dict)  # field -> when a permanent value was last sent
    lifting: dict[str, float] = field(default_factory=dict)  # operator lifts in the push under way


# (limiter id, limiter, minute, its counts for that minute and the one before, at the snapshot)
_RateSnap = tuple[str, Limiter, int, tuple[int, int], tuple[int, int]]


@dataclass
class _Count:
    """One shared window's counts as this process keeps them (a limiter's minute, or a quota window)."""

    own: list[int] = field(default_factory=lambda: [0, 0])  # requests, tokens this process admitted itself
    mark: tuple[int, int] = (0, 0)  # the local count all of whose increments are in `own`
    total: tuple[int, int] = (0, 0)  # the largest shared total seen (it never falls within a window)

    def take(self, local: tuple[int, int]) -> None:
        """Add what the local count gained since the mark to this process's own count."""
        self.own[0] += max(0, local[0] - self.mark[0])
        self.own[1] += max(0, local[1] - self.mark[1])
        self.mark = local

    def anew(self) -> _Count:
        """The counts for a new local counter (from 0) of the same shared window."""
        return _Count(own=list(self.own), mark=(0, 0), total=self.total)

    def adopt(self, summed: tuple[int, int]) -> tuple[int, int]:
        """The shared total to adopt: `summed` (every process's own counts), unless it fell."""
        self.total = (max(summed[0], self.total[0]), max(summed[1], self.total[1]))
        self.mark = self.total
        return self.total


# (channel, its quota window's counts, the window, requests, tokens at the snapshot, its reply's place
# in the quota slice)
_QuotaSnap = tuple[_Chan, _Count, int, int, int, int]


def _summed(fields: dict[str, str], req: str, tok: str) -> tuple[int, int]:
    """Every process's counts under the field prefixes `req` and `tok`, added up."""
    r = t = 0
    for k, v in fields.items():
        if k.startswith(req):
            r += max(0, _int(v))
        elif k.startswith(tok):
            t += max(0, _int(v))
    return r, t


class _RouterSync:
    """What the synchronisation of one Router remembers; a new Router (a config reload) starts afresh."""

    def __init__(self, router: Router, prefix: str) -> None:
        self.router = router
        self.chans = [_Chan(st, cid, f"{prefix}:ch:{cid}") for st in router.states for cid in [channel_id(st)]]
        self.limiters: list[tuple[str, Limiter]] = []
        for c in self.chans:
            if _limited(c.st.limiter):
                self.limiters.append((f"{c.cid}|c", c.st.limiter))
            for i, k in enumerate(c.st.keys):
                if _limited(k.limiter):
                    self.limiters.append((f"{c.cid}|k{i}", k.limiter))
        self.quotas = [c for c in self.chans if c.st.quota is not None]
        self.rates: dict[str, dict[int, _Count]] = {}  # limiter id -> minute -> its counts
        # channel id -> ((quota period, window), its counts)
        self.quota_counts: dict[str, tuple[tuple[float, int], _Count]] = {}
        self.rr_base = router.balancer.seq  # local selections up to here are in the shared counter already
        self.rr_total = -1  # the shared counter last seen; a drop means Redis lost it
        self.version: str | None = None
        self.last_full = -math.inf

    def inherit(self, old: _RouterSync) -> None:
        """After a reload: a counter the new Router took over from the old one (server.proxy.carry_over
        hands unchanged channels' limiters and quotas to it) keeps its counts whole, or the next push
        would count its whole local count, others' adopted counts included, as this process's own.
        A changed channel of the same upstream (same fields in Redis: a new limit, say) gets a new
        counter, counting from 0 here: it keeps what this process admitted in the window (pushed or
        not yet), which its next push would otherwise overwrite with what it admits from now on."""
        old_limiters = dict(old.limiters)
        for lid, lim in self.limiters:
            counts = old.rates.get(lid)
            if counts is None:
                continue
            was = old_limiters.get(lid)
            if was is lim:
                self.rates[lid] = counts
                continue
            for w, n in counts.items():
                if was is not None and (held := _window_counts(was.window, w)) is not None:
                    n.take(held)  # admitted since the last push
            self.rates[lid] = {w: n.anew() for w, n in counts.items()}
        old_quotas = {c.cid: c.st.quota for c in old.quotas}
        for c in self.quotas:
            kept = old.quota_counts.get(c.cid)
            if kept is None:
                continue
            q = old_quotas.get(c.cid)
            if q is c.st.quota:
                self.quota_counts[c.cid] = kept
                continue
            if q is not None and kept[0] == (q.cfg.period, q.window):
                kept[1].take((q.requests, q.tokens))  # admitted since the last push
            self.quota_counts[c.cid] = (kept[0], kept[1].anew())
        # A permanent state still held keeps the stamp it was shared with: re-stamped, it would pass
        # for a new incident, newer than an operator's enable made since.
        old_chans = {c.cid: c for c in old.chans}
        for c in self.chans:
            prev = old_chans.get(c.cid)
            if prev is None:
                continue
            for name, stamp in prev.held.items():
                if stamp >= PERMANENT and _local_value(c.st, name) == math.inf:
                    c.held[name] = stamp


class SharedState:
    """Synchronise the current Router's channel state with Redis every `cfg.sync_interval` seconds.

    `router_getter` returns the Router in use (called on every sync, so a reload is followed);
    `clock` is the proxy's Unix-aligned clock. `up`, `errors` and `last_error` are for metrics."""

    def __init__(self, router_getter: Callable[[], Router], cfg: SharedStateConfig, *,
                 clock: Callable[[], float] = time.time, timeout: float = 1.0, max_backoff: float = 5.0) -> None:
        if not cfg.url:
            raise ValueError("SharedState needs state.url (redis://...)")
        self.cfg = cfg
        self.url = safe_url(cfg.url)
        self._get_router = router_getter
        self._clock = clock
        self._timeout = timeout  # per Redis call: a hung Redis must not stall the sync loop for long
        self._max_backoff = max_backoff
        p = self._prefix = cfg.key_prefix
        self._ver_key = f"{p}:ver"
        self._rr_keys = [f"{p}:rr:seq", f"{p}:rr:last"]
        self._redis: Redis | None = None
        self._merge: Any = None
        self._rr: Any = None
        self._task: asyncio.Task[None] | None = None
        self._sync: _RouterSync | None = None
        self._lifts: dict[str, dict[str, float]] = {}  # channel id -> field -> an operator lift's stamp
        self._stamps: dict[str, dict[str, float]] = {}  # channel id -> field -> an operator disable's stamp
        self._me = os.urandom(4).hex()  # this process's fields in the shared counts
        self._lock = asyncio.Lock()  # close() may sync while the loop's last sync is still running
        self._was_up: bool | None = None  # None before the first attempt, whose outcome is logged either way
        self._force_full = True
        self._closing = False
        self.up = False
        self.errors = 0  # failed synchronisations since start
        self.last_error: str | None = None
        self.syncs = 0  # successful synchronisations
        self.last_sync: float | None = None  # clock time of the last successful one

    # -- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        """Connect and synchronise once (so a new process starts with the fleet's state), then
        keep synchronising in the background. An unreachable Redis is logged, never raised."""
        if self._task is not None:
            return
        assert self.cfg.url is not None
        self._closing = False
        # No retries inside redis-py: a failed sync is simply tried again by the loop, with backoff.
        self._redis = Redis.from_url(self.cfg.url, decode_responses=True, socket_timeout=self._timeout,
                                     socket_connect_timeout=self._timeout, retry=Retry(NoBackoff(), 0))
        self._merge = self._redis.register_script(_MERGE)
        self._rr = self._redis.register_script(_ROUND_ROBIN)
        await self.sync_once()
        self._task = asyncio.create_task(self._run(), name="axonsim-shared-state")

    async def close(self) -> None:
        """Stop the background task, push what changed since the last sync, disconnect."""
        task, self._task = self._task, None
        self._closing = True
        if task is not None:
            # The flag as well as the cancel: a cancel that lands in a Redis call as its socket times
            # out can come back as a TimeoutError (asyncio.timeout), which the loop would survive.
            task.cancel()
            await asyncio.wait({task}, timeout=self._timeout + 1.0)
        if self._redis is not None:
            if self.up:
                await self.sync_once()
            try:
                await self._redis.aclose()
            except Exception:  # closing a broken connection must not fail a shutdown
                pass
            self._redis = None

    def status(self) -> dict[str, Any]:
        """For the admin API and metrics."""
        return {"url": self.url, "up": self.up, "errors": self.errors, "last_error": self.last_error,
                "syncs": self.syncs, "last_sync": self.last_sync, "sync_interval": self.cfg.sync_interval}

    async def _run(self) -> None:
        failures = 0
        while not self._closing:
            delay = self.cfg.sync_interval
            if failures:
                delay = min(self._max_backoff, max(delay, delay * 2.0 ** failures))
            await asyncio.sleep(delay)
            if self._closing:
                break
            ok = await self.sync_once()
            failures = 0 if ok else failures + 1

    # -- one synchronisation ---------------------------------------------------------------------

    async def sync_once(self) -> bool:
        """Push local changes and pull the others'; False (local state untouched) if Redis failed."""
        if self._redis is None:
            return False
        async with self._lock:
            try:
                await self._sync_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # whatever Redis or the network did, this process keeps serving
                self._failed(exc)
                return False
            self._succeeded()
            return True

    async def _execute(self, pipe: Any) -> list[Any]:
        """Run a pipeline. A key under our prefix that holds something else (another type, a count
        that is not a number: left by hand or by another program) would fail every sync from then on:
        it is deleted, as a Redis that lost its data is refilled, and its commands' replies come back
        as None. The other commands have run, so their replies are used as usual (raising instead
        would have them pushed again next time, counted twice)."""
        stack = [args for args, _ in pipe.command_stack]
        res = list(await pipe.execute(raise_on_error=False))
        bad: set[str] = set()
        first: Exception | None = None
        for j, (args, r) in enumerate(zip(stack, res, strict=True)):
            if isinstance(r, Exception):
                text = str(r)
                if not isinstance(r, ResponseError) or not ("WRONGTYPE" in text or "not an integer" in text):
                    raise r
                bad.update(_keys_of(args))
                first = first or r
                res[j] = None
        if bad:
            assert self._redis is not None
            await self._redis.delete(*sorted(bad))
            self.errors += 1
            self.last_error = f"{type(first).__name__}: {first}"
            keys = sorted(bad)
            log.warning("shared state: deleted %d Redis key(s) holding data of another kind (%s%s: %s); the "
                        "processes refill them from their local state", len(keys), ", ".join(keys[:4]),
                        ", ..." if len(keys) > 4 else "", first)
        return res

    def _failed(self, exc: BaseException) -> None:
        self.errors += 1
        self.last_error = f"{type(exc).__name__}: {exc}"
        self.up = False
        if self._was_up is not False:
            log.warning("shared state: Redis at %s is unreachable (%s); serving on this process's local channel "
                        "state until it returns", self.url, self.last_error)
        self._was_up = False

    def _succeeded(self) -> None:
        self.up = True
        self.syncs += 1
        self.last_sync = self._clock()
        if self._was_up is False:
            log.warning("shared state: Redis at %s is reachable again; channel state is shared again "
                        "(%d failed syncs so far)", self.url, self.errors)
        elif self._was_up is None:
            log.info("shared state: channel state shared through Redis at %s every %.3g s", self.url,
                     self.cfg.sync_interval)
        if self._was_up is not True:
            self._force_full = True  # Redis may have lost its data, or others changed much meanwhile
        self._was_up = True

    def _current(self) -> _RouterSync:
        router = self._get_router()
        s = self._sync
        if s is None or s.router is not router:
            new = _RouterSync(router, self._prefix)
            if s is not None:
                new.inherit(s)
            s = self._sync = new
            self._force_full = True
        return s

    async def _sync_once(self) -> None:
        assert self._redis is not None
        s = self._current()
        now = self._clock()
        # A pipeline holds a pooled connection from its first command sent at once (the script check
        # before the batch) until reset: one that failed there (Redis gone) kept it, and said so later
        # in an "Unclosed Pipeline client" warning. `async with` resets it however it ends.
        async with self._redis.pipeline(transaction=False) as pipe:
            pushed: list[_Chan] = []
            for c in s.chans:
                ops = self._ops(c, now)
                if ops:
                    await self._merge(keys=[c.hkey, self._ver_key],
                                      args=[_num(now), _num(LIFT_KEEP), _num(PERMANENT_TTL), *ops], client=pipe)
                    pushed.append(c)
            pipe.get(self._ver_key)
            n0 = len(pipe)
            rate = await self._rate_push(s, pipe, now)
            n1 = len(pipe)
            quota = await self._quota_push(s, pipe, now)
            n2 = len(pipe)
            s0 = s.router.balancer.seq
            await self._rr_push(s, pipe, s0)
            res = await self._execute(pipe)
        if self._get_router() is not s.router:
            return  # swapped while we waited: the new Router adopts the shared state next time
        now = self._clock()
        for c, h in zip(pushed, res, strict=False):
            self._pulled(c, _pairs(h), now)
            if c.lifting and h is not None:
                pending = self._lifts.get(c.cid, {})
                for name, stamp in c.lifting.items():  # done, unless the operator enabled again meanwhile
                    if pending.get(name) == stamp:
                        del pending[name]
                if not pending:
                    self._lifts.pop(c.cid, None)
        version = res[n0 - 1]
        self._rate_pull(s, rate, res[n0:n1], now)
        self._quota_pull(s, quota, res[n1:n2], now)
        if res[n2] is not None:  # None: its keys held garbage and are gone; the next push starts anew
            self._rr_pull(s, s0, res[n2])

        if self._force_full or version != s.version or now - s.last_full >= FULL_PULL_EVERY:
            rest = [c for c in s.chans if c not in pushed]
            if rest:
                async with self._redis.pipeline(transaction=False) as pipe:
                    for c in rest:
                        pipe.hgetall(c.hkey)
                    got = await self._execute(pipe)
                if self._get_router() is not s.router:
                    return
                now = self._clock()
                for c, h in zip(rest, got, strict=True):
                    self._pulled(c, h or {}, now)
            s.version = version
            s.last_full = now
            self._force_full = False

    # -- channel fields --------------------------------------------------------------------------

    def carry_switches(self, old: Router, new: Router) -> None:
        """On a reload: an operator's channel switch and key holds stay with a channel whose Redis hash
        is the same (its type, URL and keys unchanged), where the fleet keeps them anyway. Rebuilt from
        the file, the channel took traffic again until the next sync put the switch back."""
        for st in new.states:
            prev = old.by_name.get(st.name)
            if prev is None or channel_id(prev) != channel_id(st):
                continue
            if prev.switched_off and st.config_enabled:
                st.switched_off = True
                st.channel.enabled = False
            for kp, kn in zip(prev.keys, st.keys, strict=True):
                if kp.held:
                    kn.held = kn.disabled = True
            st.refresh(self._clock())

    def operator_disable(self, st: ChannelState, fields: list[str]) -> None:
        """An operator switched something off here: its permanent state is stamped with this moment,
        not the next sync's, so an enable made after it anywhere in the fleet is known to be later.
        Kept by channel id, so a reload between the switch and the sync does not lose it."""
        pending = self._stamps.setdefault(channel_id(st), {})
        stamp = PERMANENT + self._clock()
        for name in fields:
            pending[name] = stamp

    def operator_enable(self, st: ChannelState, fields: list[str]) -> None:
        """An operator enabled (a channel, a key) here: lift `fields` fleet-wide at the next sync, every
        permanent state set before now (a switch, a hold, a key's disable), whether or not this
        process has seen it yet (an enable right after a disable answered by another worker was lost:
        nothing changed here to push). A temporary incident (an auto-disable) another process has
        not shared yet is not lifted: it carries no stamp of when it began."""
        pending = self._lifts.setdefault(channel_id(st), {})
        stamp = PERMANENT + self._clock()
        for name in fields:
            pending[name] = stamp

    def _ops(self, c: _Chan, now: float) -> list[str]:
        """(op, field, value) triples for the merge script: what changed here since the last sync."""
        ops: list[str] = []
        stamps = self._stamps.pop(c.cid, None)
        if stamps:  # an operator's disables since the last sync: shared with the moment they were made
            for name, stamp in stamps.items():
                if _local_value(c.st, name) == math.inf and c.held.get(name, NEVER) < PERMANENT:
                    c.held[name] = stamp
        # An operator's lifts first: a plain lift of the same field after them changes nothing.
        c.lifting = dict(self._lifts.get(c.cid) or {})
        for name, stamp in c.lifting.items():
            ops += ["olift", name, _num(stamp)]
        for name, raw, extra in _raw_fields(c.st):
            held = c.held.get(name, NEVER)
            local = _enc(raw, held, now)
            if local > c.seen.get(name, NEVER) and local > now:
                ops += ["max", name, _num(local) + (f":{extra}" if extra else "")]
                if local >= PERMANENT:
                    c.refreshed[name] = now
            elif local >= PERMANENT and now - c.refreshed.get(name, -math.inf) >= PERMANENT_TTL / 4:
                # Still held here: re-sent so that its TTL is renewed (the merge is a no-op otherwise).
                ops += ["max", name, _num(local)]
                c.refreshed[name] = now
            elif local < held and (held > now or (local == NEVER and name.startswith(("b:", "kb:")))):
                # Ended before its time (an operator's enable), or a breaker that recovered.
                ops += ["lift", name, _num(held)]
        return ops

    def _pulled(self, c: _Chan, remote: dict[str, str], now: float) -> None:
        """Apply a channel's hash as read from Redis: escalations and lifts, then remember both sides."""
        st = c.st
        c.seen = {}  # a field absent from Redis expired, or was lost (then it is pushed again from here)
        # An operator's hold on a key first: a lift of the key's disable must see whether it still holds.
        for name, raw in sorted(remote.items(), key=lambda item: not item[0].startswith("kh:")):
            parsed = _parse(raw)
            if parsed is None:
                continue
            lifted, until, extra = parsed
            # A lift is no value to compare with: whatever this process holds now that is not the
            # lifted incident is a newer one, to be pushed.
            c.seen[name] = NEVER if lifted else until
            local = _enc(_local_value(st, name), c.held.get(name, NEVER), now)
            if lifted:
                # The lifted incident only, named by its exact `until` (processes adopt the shared
                # value, so all hold the same): a newer incident survives it, even a shorter one. A
                # permanent state is stamped with the time it was set: a permanent lift also ends
                # every one set before it (an operator's enable of what this process had not shared).
                if local != NEVER and (local == until or PERMANENT <= local <= until):
                    _apply(st, name, until, extra, True, now)
            elif until > local:
                _apply(st, name, until, extra, False, now)
            if not lifted and until >= PERMANENT and _local_value(st, name) == math.inf:
                # Adopt the shared stamp of a permanent state, so it is not sent back as a new one.
                c.held[name] = max(until, c.held.get(name, NEVER))
        for name, value, _ in _raw_fields(st):
            c.held[name] = _enc(value, c.held.get(name, NEVER), now)

    # -- rate-limit counters ---------------------------------------------------------------------

    async def _rate_push(self, s: _RouterSync, pipe: Any, now: float) -> list[_RateSnap]:
        if not s.limiters:
            return []
        w = int(now // WINDOW)
        snaps: list[_RateSnap] = []
        wrote: set[int] = set()
        me = self._me
        for lid, lim in s.limiters:
            rw = lim.window
            rw.usage(now)  # rolls the window to `now`
            cur = _window_counts(rw, w) or (0, 0)
            prev = _window_counts(rw, w - 1) or (0, 0)
            counts = s.rates.setdefault(lid, {})
            for win in list(counts):
                if win < w - 1:
                    del counts[win]  # a minute no longer read
            for win, local in ((w, cur), (w - 1, prev)):
                n = counts.get(win)
                if n is None:
                    n = counts[win] = _Count()
                n.take(local)
                if n.own[0] or n.own[1]:
                    # Every time, changed or not: a Redis that lost its data is filled again.
                    pipe.hset(f"{self._prefix}:rl:{win}", mapping={f"{lid}|r|{me}": n.own[0], f"{lid}|t|{me}": n.own[1]})
                    wrote.add(win)
            snaps.append((lid, lim, w, cur, prev))
        for win in sorted(wrote):
            pipe.expire(f"{self._prefix}:rl:{win}", RATE_TTL)
        pipe.hgetall(f"{self._prefix}:rl:{w}")
        pipe.hgetall(f"{self._prefix}:rl:{w - 1}")
        return snaps

    def _rate_pull(self, s: _RouterSync, snaps: list[_RateSnap], res: list[Any], now: float) -> None:
        if not snaps:
            return
        fields = {snaps[0][2]: _pairs(res[-2]), snaps[0][2] - 1: _pairs(res[-1])}
        for lid, lim, w, cur, prev in snaps:
            rw = lim.window
            rw.usage(now)
            counts = s.rates.get(lid, {})
            for win, snap in ((w, cur), (w - 1, prev)):
                n = counts.get(win)
                if n is None:
                    continue
                total = n.adopt(_summed(fields[win], f"{lid}|r|", f"{lid}|t|"))
                held = _window_counts(rw, win)
                if held is not None:
                    # Shared totals (which include what was pushed) plus what arrived here meanwhile,
                    # which the next push takes into this process's own count.
                    _window_set(rw, win, total[0] + max(0, held[0] - snap[0]), total[1] + max(0, held[1] - snap[1]))

    # -- quotas ----------------------------------------------------------------------------------

    async def _quota_push(self, s: _RouterSync, pipe: Any, now: float) -> list[_QuotaSnap]:
        snaps: list[_QuotaSnap] = []
        start = len(pipe)
        me = self._me
        for c in s.quotas:
            q = c.st.quota
            assert q is not None
            q.allows(now, 0)  # rolls the window to `now`
            win, req, tok = q.window, q.requests, q.tokens
            key = f"{self._prefix}:q:{c.cid}:{q.cfg.period:g}:{win}"
            kept = s.quota_counts.get(c.cid)
            window = (q.cfg.period, win)
            n = kept[1] if kept is not None and kept[0] == window else _Count()
            s.quota_counts[c.cid] = (window, n)
            n.take((req, tok))
            if n.own[0] or n.own[1]:
                pipe.hset(key, mapping={f"r|{me}": n.own[0], f"t|{me}": n.own[1]})
                pipe.expire(key, int(q.cfg.period) + RATE_TTL)
            snaps.append((c, n, win, req, tok, len(pipe) - start))
            pipe.hgetall(key)
        return snaps

    def _quota_pull(self, s: _RouterSync, snaps: list[_QuotaSnap], res: list[Any], now: float) -> None:
        for c, n, win, req, tok, pos in snaps:
            total_r, total_t = n.adopt(_summed(_pairs(res[pos]), "r|", "t|"))
            q = c.st.quota
            assert q is not None
            q.allows(now, 0)
            if q.window == win:
                q.requests = total_r + max(0, q.requests - req)
                q.tokens = total_t + max(0, q.tokens - tok)

    # -- round robin -----------------------------------------------------------------------------

    async def _rr_push(self, s: _RouterSync, pipe: Any, s0: int) -> None:
        base = s.rr_base
        args: list[Any] = [max(0, s0 - base), RR_TTL]
        for c in s.chans:
            lp = c.st.last_pick
            if lp > base:
                args += [c.cid, lp - base]
        await self._rr(keys=self._rr_keys, args=args, client=pipe)

    def _rr_pull(self, s: _RouterSync, s0: int, res: Any) -> None:
        total = _int(res[0])
        last = _pairs(res[1])
        bal = s.router.balancer
        if total < s.rr_total:
            # Redis lost the counter: send the whole local count next time, so that the shared
            # numbers start above every number this process has handed out.
            s.rr_base = 0
            s.rr_total = -1
            return
        shift = total - s0  # local selection x in (rr_base, seq] is shared number x + shift
        for c in s.chans:
            st = c.st
            lp = st.last_pick + shift if st.last_pick > s.rr_base else st.last_pick
            st.last_pick = max(lp, _int(last.get(c.cid, -1)))
        bal.seq += shift
        s.rr_base = total
        s.rr_total = total
