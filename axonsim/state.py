"""Channel state: the live signals strategies read, updated by both drivers through one small API.

The API is four calls, made by whichever driver performs an attempt (usually through the Call
object, which knows its key, model and start time — see axonsim.execution.Call):

    state.started(now, key, model, tokens)         an attempt was sent
    state.first_token(now, ttft)                   its first event arrived (or its whole answer)
    state.succeeded(now, latency, key, model, ...) it finished well
    state.failed(now, outcome, model)              it failed (before or after the first token)

plus `state.answered(now, latency, ...)`: first_token and succeeded at once, for an answer whose
first event is its end (a non-stream attempt).

Health (breakers, ejection, auto-disable, quota) and local limits are kept here too, so that both
worlds skip exactly the same channels. Nothing here reads a clock: `now` is whatever the driver's
clock says (Unix time live, `env.now` in the simulator).
"""

from __future__ import annotations

import math
import random
from typing import TYPE_CHECKING, Any

from axonsim.config import BreakerConfig, Channel, Routing
from axonsim.health import CLOSED, OPEN, AutoDisable, Breaker, Ejection, OutlierDetector, Quota
from axonsim.limits import Limiter
from axonsim.unified import ErrorKind

if TYPE_CHECKING:
    from axonsim.execution import Outcome

NEVER = float("-inf")

# Failures that say something about the upstream's health (outlier ejection counts these).
GATEWAY_FAILURES = frozenset({ErrorKind.SERVER_ERROR, ErrorKind.OVERLOADED, ErrorKind.TIMEOUT, ErrorKind.CONNECTION})
# Failures that are the client's, not the channel's.
CLIENT_FAULTS = frozenset({ErrorKind.INVALID_REQUEST, ErrorKind.NOT_FOUND})


class KeyState:
    __slots__ = ("name", "secret", "disabled", "held", "disabled_until", "failures", "uses", "limiter",
                 "breaker_cfg", "breakers", "auto", "has_limits")

    def __init__(self, name: str, secret: str, limiter: Limiter, breaker_cfg: BreakerConfig | None,
                 auto: AutoDisable) -> None:
        self.name = name
        self.secret = secret
        self.disabled = False  # permanently (401/403): until the configuration changes
        # `disabled` by an operator (admin API): only an operator's enable or a reload ends it; a
        # successful probe, which lifts an automatic disable, leaves it alone and does not use the key.
        self.held = False
        self.disabled_until = NEVER  # temporarily
        self.failures = 0
        self.uses = 0
        self.limiter = limiter
        # The key's own breakers, one per upstream model as the channel's are: a model failing on
        # every key (its outage at the provider) must not hold the pool's keys back for the others.
        # None: the key has none (key breakers off, or the channel's only key).
        self.breaker_cfg = breaker_cfg
        self.breakers: dict[str, Breaker] = {}
        self.auto = auto
        self.has_limits = limiter.active

    def breaker(self, model: str) -> Breaker | None:
        """The key's breaker for `model`, made on first use; None if the key has no breakers."""
        cfg = self.breaker_cfg
        if cfg is None:
            return None
        b = self.breakers.get(model)
        if b is None:
            b = self.breakers[model] = Breaker(cfg)
        return b

    def breaker_allows(self, now: float, model: str | None) -> bool:
        """Whether the key's breaker for `model` lets an attempt through (model None: no breaker asked)."""
        if model is None or not self.breakers:
            return True
        b = self.breakers.get(model)
        return b is None or b.allows(now)

    def quiet(self, now: float) -> bool:
        """Nothing about this key needs checking beyond `disabled` (the fast path)."""
        return (not self.has_limits and self.disabled_until <= now and not self.auto.counts
                and all(b.state == CLOSED and b.failures == 0 for b in self.breakers.values()))

    def available(self, now: float, tokens: int = 0, model: str | None = None) -> bool:
        if self.disabled or self.disabled_until > now:
            return False
        if not self.breaker_allows(now, model):
            return False
        return self.limiter.allows(now, tokens)

    def healthless(self, now: float, tokens: int = 0) -> bool:
        """Available but for its breakers: not switched off, rejected for its credentials, cooling
        down after a 429 or over its limits (what panic mode may use, and health, not a wait)."""
        return not self.disabled and self.disabled_until <= now and self.limiter.allows(now, tokens)


# Which breakers counted an attempt as a half-open probe (ChannelState.started); PROBE_ANY, for a
# caller that does not track it, treats its end as a probe's (as before probes were tracked).
PROBE_CHANNEL = 1
PROBE_KEY = 2
PROBE_ANY = PROBE_CHANNEL | PROBE_KEY


def _key_waits(k: KeyState, now: float, tokens: int) -> float:
    """When a key's own waits pass (a 429's cooldown, its limits), health aside; math.inf if it is
    switched off or the request is over its TPM limit."""
    if k.disabled:
        return math.inf
    t = max(now, k.disabled_until)
    return max(t, k.limiter.frees_at(now, tokens)) if k.has_limits else t


def _breaker_lifts(b: Breaker | None, now: float) -> float:
    """When a breaker lets an attempt through: now if it does, its half-opening if open; a second
    from now if half-open with its probes in flight (when one ends, which nothing here knows)."""
    if b is None or b.allows(now):
        return now
    return b.open_until if b.state == OPEN else now + 1.0


class ChannelState:
    __slots__ = (
        "channel", "name", "weight", "priority", "index", "keys", "_key_rr", "key_strategy", "rr_keys",
        "inflight", "requests", "failures", "consecutive_failures", "last_failure", "last_success",
        "_cooldown_until", "ewma_latency", "ewma_ttft", "ewma_tps", "last_pick", "alpha",
        "cooldown_default", "cooldown_max", "breakers", "breaker_cfg", "_ejection", "outlier",
        "_disabled_until", "auto", "limiter", "quota", "selections", "selections_at",
        "peak_ewma", "peak_at", "price", "slow", "gate", "has_limits", "track", "outlier_on", "switched_off",
        "config_enabled", "successor", "_probe_rr",
    )

    def __init__(self, channel: Channel, index: int, routing: Routing,
                 outlier: OutlierDetector | None = None, price: Any = None) -> None:
        self.channel = channel
        # Switched off by an operator (admin API), as opposed to `enabled: false` in the config: the
        # switch is what processes share (server.shared_state) and what an operator's enable ends.
        self.switched_off = False
        self.config_enabled = channel.enabled  # what the config says, which an operator's enable restores
        # The state that took this one's place in a reload (server/proxy.py carry_over). Attempts
        # still running on the old Router report here, and this state goes on steering that
        # Router's retries; they count in flight on the successor too (what the new Router
        # balances by, what /admin/channels shows), and their verdicts hold there (failed).
        self.successor: ChannelState | None = None
        self.name = channel.name
        self.weight = float(channel.weight)
        self.priority = channel.priority
        self.index = index  # position in the config: the stable tie-breaker
        health = routing.health
        # Key breakers tell a failing key of a pool from its siblings. A channel's only key has none:
        # its failures are the channel's, which the per-model breakers judge model by model, while a
        # key breaker, counting across models, would take the channel out for every model when one fails.
        kb = health.key_breaker if health.key_breaker.enabled and len(channel.api_keys) > 1 else None
        self.keys = [KeyState(k.name or f"{channel.name}#{i}", k.key, Limiter(k.limits), kb,
                              AutoDisable(health.auto_disable))
                     for i, k in enumerate(channel.api_keys)]
        self._key_rr = 0
        self._probe_rr = 0  # the key periodic probes take next (probe_due)
        self.key_strategy = channel.key_strategy
        self.rr_keys = bool(self.keys) and self.key_strategy == "round_robin"  # next_key's fast path applies
        self.inflight = 0
        self.requests = 0
        self.failures = 0
        self.consecutive_failures = 0
        self.last_failure = NEVER
        self.last_success = NEVER
        self._cooldown_until = NEVER
        self.ewma_latency: float | None = None
        self.ewma_ttft: float | None = None
        self.ewma_tps: float | None = None
        self.last_pick = -1  # selection sequence number, for round robin
        self.alpha = routing.ewma_alpha
        self.cooldown_default = routing.cooldown.default
        self.cooldown_max = routing.cooldown.max
        self.breaker_cfg = health.breaker if health.breaker.enabled else None
        self.breakers: dict[str, Breaker] = {}  # per upstream model
        self._ejection = Ejection()
        self._ejection.owner = self
        self.outlier = outlier
        self._disabled_until = NEVER
        self.auto = AutoDisable(health.auto_disable)
        self.limiter = Limiter(channel.limits)
        self.quota = Quota(channel.quota) if channel.quota else None
        self.selections = 0.0  # selections, decayed over a 600 s horizon (AxonHub's request count)
        self.selections_at = 0.0
        self.peak_ewma: float | None = None  # Finagle peak-EWMA of latency (TTFT for streams)
        self.peak_at = 0.0
        self.price = price  # Price or None: what cost-based routing reads
        # The fast path. Most attempts meet a channel with nothing configured beyond the basics and
        # nothing going on: `slow` says whether anything beyond the timed exclusions (limits, quota,
        # a breaker or key that is not quiet) must be looked at. The driver API keeps it current;
        # whoever changes health from outside (shared state, admin) calls refresh().
        # `gate` folds the timed exclusions and `slow` into one number: the latest of cooldown,
        # auto-disable and ejection, +inf while the slow path applies. Once it has passed, an
        # enabled channel may take an attempt (see `eligible`). Refresh and the setters of the
        # timed exclusions keep it current.
        self.has_limits = self.limiter.active
        # usage-based routing reads the rate windows even where no limit is set
        self.track = self.has_limits or routing.strategy == "usage-based"
        self.outlier_on = outlier is not None and outlier.cfg.enabled
        self.slow = False
        self.gate = NEVER
        self.refresh(0.0)

    # -- the timed exclusions --------------------------------------------------------------------
    # Written from outside the driver API too (shared state, admin, a reload's carry-over), so each
    # write goes through a setter that keeps `gate` current (Ejection.until tells its owner).

    @property
    def cooldown_until(self) -> float:
        """Until when a 429 keeps this channel out (NEVER: not cooling down)."""
        return self._cooldown_until

    @cooldown_until.setter
    def cooldown_until(self, until: float) -> None:
        self._cooldown_until = until
        self.regate()

    @property
    def disabled_until(self) -> float:
        """Until when an auto-disable rule keeps this channel out (inf: for good)."""
        return self._disabled_until

    @disabled_until.setter
    def disabled_until(self, until: float) -> None:
        self._disabled_until = until
        self.regate()

    @property
    def ejection(self) -> Ejection:
        """Outlier-ejection bookkeeping (a reload may hand over the previous state's)."""
        return self._ejection

    @ejection.setter
    def ejection(self, ejection: Ejection) -> None:
        self._ejection = ejection
        ejection.owner = self
        self.regate()

    def regate(self) -> None:
        """Recompute `gate` (see __init__) from the timed exclusions and the slow-path flag."""
        self.gate = math.inf if self.slow else max(self._cooldown_until, self._disabled_until, self._ejection.until)

    # -- the driver API --------------------------------------------------------------------------

    def started(self, now: float, key: int | None = None, model: str | None = None, tokens: int = 0) -> int:
        """Returns which breakers counted the attempt as a half-open probe (PROBE_CHANNEL,
        PROBE_KEY): its end is reported with them (`probes`)."""
        probes = 0
        self.inflight += 1
        self.requests += 1
        if self.track:
            self.limiter.on_start(now, tokens)
        if key is not None:
            self.keys[key].uses += 1
        if self.slow:  # (a key with limits or a breaker not closed makes the state slow)
            if self.quota is not None:
                self.quota.on_start(now)
                if tokens:
                    self.quota.on_tokens(now, tokens)
            if model is not None and self.breaker_cfg is not None and self.breaker(model).on_start(now):
                probes |= PROBE_CHANNEL
            if key is not None:
                k = self.keys[key]
                if k.has_limits:
                    k.limiter.on_start(now, tokens)
                kb = k.breakers.get(model) if model is not None else None
                if kb is not None and kb.state != CLOSED and kb.on_start(now):
                    probes |= PROBE_KEY
        if self.successor is not None:
            self._successors(now, 1)
        return probes

    def charge(self, now: float, key: int | None, tokens: int) -> None:
        """`tokens` an attempt used beyond what was counted at its start (its usage, once known, over
        the estimate): local TPM limits and quotas count what was used, not only what was guessed."""
        if tokens <= 0:
            return
        if self.track:
            self.limiter.window.add(now, 0, tokens)
        if self.slow:
            if self.quota is not None:
                self.quota.on_tokens(now, tokens)
            if key is not None and 0 <= key < len(self.keys):
                k = self.keys[key]
                if k.has_limits:
                    k.limiter.window.add(now, 0, tokens)

    def first_token(self, now: float, ttft: float) -> None:
        e = self.ewma_ttft
        self.ewma_ttft = ttft if e is None else e + self.alpha * (ttft - e)

    def succeeded(self, now: float, latency: float, key: int | None = None, model: str | None = None,
                  output_tokens: int = 0, ttft: float | None = None, probes: int = PROBE_ANY) -> None:
        self.inflight -= 1
        self.consecutive_failures = 0
        self.last_success = now
        if self.track:
            self.limiter.on_end()
        e = self.ewma_latency
        self.ewma_latency = latency if e is None else e + self.alpha * (latency - e)
        gen = latency - (ttft or 0.0)
        if output_tokens > 0 and gen > 0.01:
            tps = output_tokens / gen
            t = self.ewma_tps
            self.ewma_tps = tps if t is None else t + self.alpha * (tps - t)
        self._peak(now, ttft if ttft is not None else latency)
        if not self.slow:  # nothing else to tell (a key with limits makes the state slow)
            if self.successor is not None:
                self._successors(now, -1)
            return
        self.auto.on_success()
        if self.outlier_on:
            self.outlier.on_result(self.name, self._ejection, now, False)  # type: ignore[union-attr]
        if model is not None and self.breaker_cfg is not None:
            self.breaker(model).on_success(now, bool(probes & PROBE_CHANNEL))
        if key is not None:
            k = self.keys[key]
            if k.has_limits:
                k.limiter.on_end()
            k.auto.on_success()
            kb = k.breakers.get(model) if model is not None else None
            if kb is not None:  # (none yet: closed with no failures, nothing to record)
                kb.on_success(now, bool(probes & PROBE_KEY))
        self.refresh(now)
        if self.successor is not None:
            self._successors(now, -1)

    def answered(self, now: float, latency: float, key: int | None = None, model: str | None = None,
                 output_tokens: int = 0, probes: int = PROBE_ANY) -> None:
        """first_token then succeeded, for an answer whose first event is its end (TTFT = latency)."""
        e = self.ewma_ttft
        self.ewma_ttft = latency if e is None else e + self.alpha * (latency - e)
        self.succeeded(now, latency, key, model, output_tokens, latency, probes)

    def failed(self, now: float, outcome: Outcome, model: str | None = None, elapsed: float | None = None,
               probes: int = PROBE_ANY) -> None:
        if self.successor is None:
            self._failed(now, outcome, model, elapsed, probes)
            self.refresh(now)
            return
        # A reloaded state: what the attempt finds out (a cooldown, a disabled key or channel, an
        # ejection) holds for the channel, so for the states that took this one's place too.
        before = (self._cooldown_until, self._disabled_until, self._ejection.until,
                  [(k.disabled, k.disabled_until) for k in self.keys])
        self._failed(now, outcome, model, elapsed, probes)
        self.refresh(now)
        self._successors(now, -1, before)

    def _failed(self, now: float, outcome: Outcome, model: str | None, elapsed: float | None, probes: int) -> None:
        ch_probe = bool(probes & PROBE_CHANNEL)
        key_probe = bool(probes & PROBE_KEY)
        self.inflight -= 1
        if elapsed is not None and outcome.kind is not None and outcome.kind not in CLIENT_FAULTS:
            self._peak(now, elapsed)  # a failure costs the caller its time too: a hanging channel must look slow
        if self.track:
            self.limiter.on_end()
        key = outcome.key
        k = self.keys[key] if key is not None and 0 <= key < len(self.keys) else None
        if k is not None and k.has_limits:
            k.limiter.on_end()
        kind = outcome.kind
        if kind is None or kind in CLIENT_FAULTS or (
                k is not None and k.disabled and (kind is ErrorKind.AUTHENTICATION or kind is ErrorKind.PERMISSION)):
            # The client's fault, or an abandoned attempt: says nothing about the channel's health.
            # Nor does a key already rejected for its credentials rejected again (a probe testing it:
            # traffic never uses it); counted, probes of a pool's rejected keys opened the breaker
            # of a channel that served well on its other keys.
            if model is not None and self.breaker_cfg is not None:
                self.breaker(model).on_abandon(ch_probe)
            kb = k.breakers.get(model) if k is not None and model is not None else None
            if kb is not None:
                kb.on_abandon(key_probe)
            return
        self.failures += 1
        self.consecutive_failures += 1
        self.last_failure = now
        if kind is ErrorKind.RATE_LIMITED:
            wait = outcome.retry_after if outcome.retry_after is not None else self.cooldown_default
            until = now + min(max(wait, 0.0), self.cooldown_max)
            if k is not None and len(self.keys) > 1:
                k.disabled_until = max(k.disabled_until, until)  # a key pool: the limit is the key's
            else:
                self.cooldown_until = max(self.cooldown_until, until)
        if self.outlier_on:
            self.outlier.on_result(self.name, self._ejection, now, kind in GATEWAY_FAILURES)  # type: ignore[union-attr]
        if model is not None and self.breaker_cfg is not None:
            if kind is ErrorKind.RATE_LIMITED:
                # A 429 proves nothing about health; a half-open probe that got one frees its slot
                # (else the breaker would wait for that probe for ever).
                self.breaker(model).on_abandon(ch_probe)
            else:
                self.breaker(model).on_failure(now, ch_probe)
        status = outcome.status
        bad_key = kind is ErrorKind.AUTHENTICATION or kind is ErrorKind.PERMISSION
        if kind is ErrorKind.AUTHENTICATION and status != 401 and status != 403:
            # Bad credentials under another status (Gemini: 400 API_KEY_INVALID) meet the rules for a
            # 401. (Not every PERMISSION error: an exhausted balance is one, and it comes back.)
            status = 401
        if k is not None:
            k.failures += 1
            if model is not None:
                if kind is ErrorKind.RATE_LIMITED:
                    kb = k.breakers.get(model)
                    if kb is not None:
                        kb.on_abandon(key_probe)
                else:
                    kb = k.breaker(model)
                    if kb is not None:
                        kb.on_failure(now, key_probe)
            fired = k.auto.on_status(status, outcome.retry_after)
            if fired is not None and (bad_key or len(self.keys) > 1):
                # With several keys the key is at fault; a lone key's overload is the channel's.
                self._disable(k, fired, now)
                return
        fired = self.auto.on_status(status, outcome.retry_after)
        if fired is not None:
            if bad_key and k is not None:
                self._disable(k, fired, now)
            else:
                action, seconds = fired
                self.disabled_until = math.inf if action == "permanent" else max(self.disabled_until, now + seconds)

    @staticmethod
    def _disable(k: KeyState, fired: tuple[str, float], now: float) -> None:
        action, seconds = fired
        if action == "permanent":
            k.disabled = True
        else:
            k.disabled_until = max(k.disabled_until, now + seconds)

    def _peak(self, now: float, sample: float) -> None:
        # Finagle's peak-EWMA: jump to a worse sample at once, decay towards better ones over time.
        p = self.peak_ewma
        if p is None or sample > p:
            self.peak_ewma = sample
        else:
            at = self.peak_at
            w = math.exp((at - now) / 10.0) if now > at else 1.0  # exactly exp(−(now − at)/10), as in select
            self.peak_ewma = p * w + sample * (1.0 - w)
        self.peak_at = now

    def _successors(self, now: float, inflight: int,
                    before: tuple[float, float, float, list[tuple[bool, float]]] | None = None) -> None:
        """An attempt of this (reloaded) state begins or ends: its successors count it in flight.
        Breakers, auto-disable and ejection may be shared with them (an unchanged health config):
        they look again at what this attempt may have changed there. With `before` (see failed),
        they also take the verdicts reached since; the operator's word (held keys, switches) is not
        among them: it is made on the state in force."""
        s = self.successor
        while s is not None:
            s.inflight += inflight
            if before is not None:
                self._pass_on(s, before)
            s.refresh(now)
            s = s.successor

    def _pass_on(self, s: ChannelState, before: tuple[float, float, float, list[tuple[bool, float]]]) -> None:
        """Give successor `s` the verdicts this state reached since `before`."""
        cool, off_until, ejected_until, keys = before
        ej = self._ejection
        if self._cooldown_until > cool:
            s.cooldown_until = max(s._cooldown_until, self._cooldown_until)
        if self._disabled_until > off_until:
            s.disabled_until = max(s._disabled_until, self._disabled_until)
        for (was_off, was_until), k, kn in zip(keys, self.keys, s.keys, strict=True):
            if k.disabled and not was_off:
                kn.disabled = True
            if k.disabled_until > was_until:
                kn.disabled_until = max(kn.disabled_until, k.disabled_until)
        if ej.until > ejected_until and s._ejection is ej and s.outlier is not None:
            # Shared (an unchanged health config): the successor's detector counts it against
            # its cap, or it would eject past max_ejection_percent.
            s.outlier.ejected[s.name] = ej.until

    def refresh(self, now: float) -> None:
        """Recompute the fast-path flag (and `gate`) after health changed outside the driver API."""
        self.slow = (self.has_limits or self.quota is not None or bool(self.auto.counts)
                     or any(b.state != CLOSED or b.failures for b in self.breakers.values())
                     or any(not k.quiet(now) for k in self.keys)
                     or not self.usable())  # every key switched off or rejected: skipped, not picked
        self.regate()

    def eligible(self, now: float, model: str | None = None, tokens: int = 0) -> bool:
        """May this channel take an attempt now? (unavailable_reason(...) is None, cheaply)"""
        if self.gate > now:  # a timed exclusion holds, or the slow path applies
            if self._cooldown_until > now or self._disabled_until > now or self._ejection.until > now:
                return False
            if self.slow and self.unavailable_reason(now, model, tokens) is not None:
                return False
        return self.channel.enabled

    def breaker(self, model: str) -> Breaker:
        b = self.breakers.get(model)
        if b is None:
            assert self.breaker_cfg is not None
            b = self.breakers[model] = Breaker(self.breaker_cfg)
        return b

    # -- what execution asks ---------------------------------------------------------------------

    def usable(self) -> bool:
        """Enabled, and with a key that has not been rejected for good (keyless channels exist)."""
        if not self.channel.enabled or self._disabled_until == math.inf:
            return False
        return not self.keys or any(not k.disabled for k in self.keys)

    def unavailable_reason(self, now: float, model: str | None = None, tokens: int = 0) -> str | None:
        """None if this channel may take an attempt now, else why not (for the decision trace)."""
        if not self.usable():
            return "disabled"
        # Before the health reasons: a provider's own "come back later" (a 429's Retry-After) is a
        # wait the client is told of, which panic mode never overrides, whatever else holds it.
        if self._cooldown_until > now:
            return "cooling_down"
        if self._disabled_until > now:
            return "auto_disabled"
        if self._ejection.until > now:
            return "ejected"
        if model is not None and self.breaker_cfg is not None and not self.breaker(model).allows(now):
            return "breaker_open"
        if not self.limiter.allows(now, tokens):
            return "rate_limited_locally"
        if self.quota is not None and not self.quota.allows(now, tokens):
            return "quota_exhausted"
        if self.keys and not any(k.available(now, tokens, model) for k in self.keys):
            return self.keys_reason(now, tokens)
        return None

    def overall_reason(self, now: float) -> str | None:
        """unavailable_reason for the channel as a whole, whatever the model: also not None when its
        breakers hold back every model it serves — the channel's own (per model), or for the models
        whose own breaker lets attempts through, the breakers of every key (per key × model)."""
        reason = self.unavailable_reason(now)
        if reason is not None or not (self.breakers or any(k.breakers for k in self.keys)):
            return reason
        served = self.served_models()
        if not served:
            return None
        through = [m for m in served if m not in self.breakers or self.breakers[m].allows(now)]
        if not through:
            return "breaker_open"
        if self.keys and not any(k.available(now, 0, m) for m in through for k in self.keys):
            return "key_breaker_open"
        return None

    def held_by_health_alone(self, now: float, model: str | None, tokens: int = 0) -> bool:
        """Whether only health (breakers, ejection, a temporary auto-disable, key breakers) keeps this
        channel from an attempt: what panic mode may override. Not when it is also switched off,
        cooling down after a 429, at a local limit or quota, or without a key panic may use."""
        return self.free_times(now, model, tokens)[0] <= now

    def free_times(self, now: float, model: str | None, tokens: int = 0) -> tuple[float, float, float]:
        """When this channel could take the request (an unavailable one, if no other traffic came),
        as (for panic mode: its cooldown, local limits, quota and a key's own waits passed, health
        overridden; by waiting: on a path (a key) whose health exclusions lift no later than its
        waits end; by any path, health lifting included). math.inf: never that way (math.inf
        first: never at all, the request being over a TPM limit). Times are at least `now`."""
        if not self.usable():
            return math.inf, math.inf, math.inf
        t = max(now, self._cooldown_until)
        if self.has_limits:
            t = max(t, self.limiter.frees_at(now, tokens))
        if self.quota is not None and not self.quota.allows(now, tokens):
            t = max(t, self.quota.resets_at(now))
        # Each key is a path, with its own waits and breaker besides the channel's (a keyless
        # channel is one path); health lifting no later than a path's waits end holds nothing.
        health = max(now, self._disabled_until, self._ejection.until,
                     _breaker_lifts(self.breakers.get(model) if model is not None else None, now))
        if self.keys:
            paths = [(max(t, _key_waits(k, now, tokens)),
                      max(health, _breaker_lifts(k.breakers.get(model) if model is not None else None, now)))
                     for k in self.keys]
        else:
            paths = [(t, health)]
        panic = min(w for w, _ in paths)
        healthy = min((w for w, h in paths if h <= w), default=math.inf)
        natural = min(max(w, h) for w, h in paths)
        return panic, healthy, natural

    def keys_reason(self, now: float, tokens: int = 0) -> str:
        """Why none of the keys may take an attempt: "key_breaker_open" when one is held back by its
        breaker alone (health, which panic mode may override, and no wait the client could be told
        of), else "no_key_available" (cooling down after a 429, over its limits: lifts by itself)."""
        return "key_breaker_open" if any(k.healthless(now, tokens) for k in self.keys) else "no_key_available"

    def next_key(self, now: float = 0.0, rng: random.Random | None = None, tokens: int = 0,
                 model: str | None = None) -> int | None:
        """A key not disabled, within its limits and (for `model`, the upstream model) not held back by
        its breaker, by the channel's key strategy; None if keyless (or none is available)."""
        keys = self.keys
        if self.rr_keys and not self.slow:  # the fast path: round robin over keys with nothing to check
            i = self._key_rr % len(keys)
            if not keys[i].disabled:
                self._key_rr += 1
                return i
        n = len(keys)
        if n == 0:
            return None
        ok = [i for i in range(n) if keys[i].available(now, tokens, model)]
        if not ok:
            return None
        if self.key_strategy == "random" and rng is not None:
            return ok[int(rng.random() * len(ok))]
        if self.key_strategy == "least_used":
            return min(ok, key=lambda i: (keys[i].limiter.window.usage(now)[0], i))
        for _ in range(n):
            i = self._key_rr % n
            self._key_rr += 1
            if i in ok:
                return i
        return ok[0]

    def all_keys_held(self) -> bool:
        """Every key of the channel was switched off by an operator: nothing may be sent with them."""
        return bool(self.keys) and all(k.held for k in self.keys)

    def probe_due(self, now: float) -> tuple[bool, int | None]:
        """Whether a periodic probe may go to this channel now, and the key it uses (chosen here once:
        each key in turn, and the prober sends on the one checked). Due: not switched off (by the config or an
        operator), not cooling down after a 429 (a probe would only spend the provider's rate limit),
        with a key it may use (_probe_may_use), and with room at its local limits and quota, where a probe
        counts as real traffic does. While the channel serves clients, a probe may not take what they
        need (a free slot, half of each rate limit and of the quota); while it serves none (an
        automatic disable, a disabled key, breakers open for every model it serves), one request's
        room is enough: the probe is what brings it back. The live prober and the simulator's ask
        the same."""
        if not (self.channel.enabled and self.cooldown_until <= now and not self.all_keys_held()):
            return False, None
        serving = self.overall_reason(now) is None
        if self.has_limits and not (self.limiter.spare(now) if serving else self.limiter.allows(now, 0)):
            return False, None
        if self.quota is not None and not (self.quota.spare(now) if serving else self.quota.allows(now, 0)):
            return False, None
        if not self.keys:
            return True, None
        model = self.probe_model()
        keys = self.keys
        n = len(keys)
        # Each key in turn: one the channel could send on, or one rejected for its credentials (a
        # probe is how it is found to work again: taking only a key the channel would use, probes
        # never tried the others once one worked).
        for j in range(n):
            i = (self._probe_rr + j) % n
            k = keys[i]
            if not k.held and (k.disabled or k.available(now, 0, model)) and self._probe_may_use(k, now, serving):
                self._probe_rr = i + 1
                return True, i
        key = self.probe_key(now, model)  # none: the first an operator has not switched off (held back by health)
        return key is not None and self._probe_may_use(self.keys[key], now, serving), key

    def probe_model(self) -> str | None:
        """The upstream model periodic probes ask for: the channel's first."""
        models = self.channel.models
        return models[0] if models else None

    def _probe_may_use(self, k: KeyState, now: float, serving: bool) -> bool:
        """Whether a probe may use key `k` now: not cooling down (a 429, a temporary disable: it
        comes back by itself), and within its own limits as the channel's are reckoned (room to
        spare while the channel serves clients). A key disabled for its credentials is one a probe
        tests: that is how it is found to work again."""
        if k.held or k.disabled_until > now:
            return False
        if k.disabled or not k.has_limits:
            return True
        return k.limiter.spare(now) if serving else k.limiter.allows(now, 0)

    def probe_key(self, now: float, model: str | None = None) -> int | None:
        """The key a probe (or an admin test) of `model` uses: the one the channel would use now; if
        none is available, the first an operator has not switched off (a probe is how a disabled key
        is found to work again); None for a keyless channel, or when an operator switched off every key."""
        key = self.next_key(now, None, 0, model)
        if key is None:
            return next((i for i, k in enumerate(self.keys) if not k.held), None)
        return key

    def lift_automatic(self, now: float, key: int | None) -> list[str]:
        """After a successful probe: end the channel's automatic disable and the probed key's (not an
        operator's). Returns what was lifted, for the log."""
        what = []
        if self.disabled_until > now:
            self.disabled_until = NEVER
            what.append("its automatic disable")
        if key is not None:
            k = self.keys[key]
            if not k.held and (k.disabled or k.disabled_until > now):
                k.disabled = False
                k.disabled_until = NEVER
                what.append(f"the disable of key {k.name}")
        return what

    def panic_key(self, now: float, tokens: int = 0) -> int | None:
        """For panic mode: a key only health (its breaker) holds back — not one switched off, rejected
        for its credentials, cooling down after a 429, or over its limits. None if there is none."""
        keys = self.keys
        n = len(keys)
        for j in range(n):
            i = (self._key_rr + j) % n
            if keys[i].healthless(now, tokens):
                self._key_rr = i + 1
                return i
        return None

    def other_key_available(self, now: float, key: int | None, tokens: int = 0, model: str | None = None) -> bool:
        return any(i != key and k.available(now, tokens, model) for i, k in enumerate(self.keys))

    def key_available(self, index: int, now: float) -> bool:
        """Whether key `index` may take an attempt now for some model this channel serves (what the
        admin API and the metrics show: its breakers are per model)."""
        k = self.keys[index]
        if not k.available(now):
            return False
        if not k.breakers:
            return True
        return any(k.breaker_allows(now, m) for m in self.served_models())

    def served_models(self) -> set[str]:
        """The upstream models this channel serves (what its breakers are kept by)."""
        ch = self.channel
        return {u for m in [*ch.models, *ch.model_mapping] if (u := ch.serves(m)) is not None}

    def key_name(self, index: int | None) -> str | None:
        return None if index is None else self.keys[index].name

    def select(self, now: float, seq: int) -> None:
        """Bookkeeping when the balancer chooses this channel (AxonHub counts at selection time)."""
        self.last_pick = seq
        n = self.selections
        at = self.selections_at
        if n and now > at:
            # at − now is exactly −(now − at) in floating point: exp(−(now − at)/600), bit for bit
            n *= math.exp((at - now) / 600.0)
        self.selections = n + 1.0
        self.selections_at = now

    def snapshot(self, now: float) -> dict[str, object]:
        reason = self.overall_reason(now)
        return {
            "name": self.name,
            "enabled": self.channel.enabled,
            "available": reason is None,
            "unavailable_reason": reason,
            "inflight": self.inflight,
            "requests": self.requests,
            "failures": self.failures,
            "consecutive_failures": self.consecutive_failures,
            "seconds_since_failure": None if self.last_failure == NEVER else now - self.last_failure,
            "cooldown_remaining": max(0.0, self._cooldown_until - now),
            "ejected_remaining": max(0.0, self._ejection.until - now),
            "ewma_latency": self.ewma_latency,
            "ewma_ttft": self.ewma_ttft,
            "ewma_tps": self.ewma_tps,
            "breakers": {m: b.snapshot(now) for m, b in self.breakers.items()},
            "keys": [{"name": k.name, "disabled": k.disabled, "held": k.held,
                      "disabled_remaining": max(0.0, k.disabled_until - now), "uses": k.uses} for k in self.keys],
        }
