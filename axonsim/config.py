"""The configuration shared by the proxy and the simulator: YAML → validated pydantic models.

Every mistake is reported at load time as a ConfigError naming the file and the field path
(`channels[1].weight`), never at request time.
"""

from __future__ import annotations

import math
import re
import unicodedata
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import parse_qsl, urlsplit

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    PrivateAttr,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)

from axonsim.unified import ErrorKind


class ConfigError(ValueError):
    """A configuration problem, with the field it concerns in the message."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# --------------------------------------------------------------------------------------------------
# Distributions (used by channel behaviour and workloads)


class Constant(_Strict):
    dist: Literal["constant", "deterministic"] = "constant"
    value: float = Field(ge=0)

    @property
    def mean(self) -> float:
        return self.value


class Exponential(_Strict):
    dist: Literal["exponential"]
    mean: float = Field(gt=0)


class LogNormal(_Strict):
    """Lognormal by its median and shape σ: p99/p50 = e^{2.326σ}; mean = median·e^{σ²/2}."""

    dist: Literal["lognormal"]
    median: float = Field(gt=0)
    sigma: float = Field(ge=0)

    @property
    def mean(self) -> float:
        return self.median * math.exp(self.sigma**2 / 2)


class Empirical(_Strict):
    """Draw uniformly from observed values (e.g. TTFTs measured on a real provider)."""

    dist: Literal["empirical"]
    values: list[float] = Field(min_length=1)

    @field_validator("values")
    @classmethod
    def _non_negative(cls, v: list[float]) -> list[float]:
        if any(x < 0 for x in v):
            raise ValueError("values must be >= 0")
        return v

    @property
    def mean(self) -> float:
        return sum(self.values) / len(self.values)


class Gamma(_Strict):
    """Gamma by its mean and coefficient of variation (cv = 1 is exponential; > 1 is bursty)."""

    dist: Literal["gamma"]
    mean: float = Field(gt=0)
    cv: float = Field(gt=0)


DIST_TAGS = ("constant", "exponential", "lognormal", "empirical", "gamma")


def _dist_tag(v: Any) -> str | None:
    # Tagged by `dist` (a mapping without one is a constant), so a mistake is reported against the
    # distribution the user meant (`ttft.sigma: >= 0`), not against every member of the union.
    d = v.get("dist", "constant") if isinstance(v, dict) else getattr(v, "dist", None)
    return "constant" if d == "deterministic" else d


Distribution = Annotated[
    Annotated[Constant, Tag("constant")] | Annotated[Exponential, Tag("exponential")]
    | Annotated[LogNormal, Tag("lognormal")] | Annotated[Empirical, Tag("empirical")]
    | Annotated[Gamma, Tag("gamma")],
    Discriminator(_dist_tag, custom_error_type="distribution",
                  custom_error_message="dist must be one of " + ", ".join(DIST_TAGS)),
]


def _coerce_dist(v: Any) -> Any:
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return {"dist": "constant", "value": v}
    return v


# --------------------------------------------------------------------------------------------------
# Channel behaviour model: shared by the simulator and the mock provider


class Faults(_Strict):
    """Probabilities of each failure kind per attempt (on top of `error_rate`, which gives 500s)."""

    rate_limited: float = Field(0.0, ge=0, le=1)  # 429 with Retry-After
    retry_after: float = Field(1.0, ge=0)  # seconds announced with a 429
    overloaded: float = Field(0.0, ge=0, le=1)  # 503/529
    overload_slope: float = Field(0.0, ge=0, le=1, description="extra overload probability × utilisation")
    overload_status: int = Field(503, ge=500, le=599)
    bad_gateway: float = Field(0.0, ge=0, le=1)  # 502
    reset: float = Field(0.0, ge=0, le=1)  # connection reset before any byte
    stream_cut: float = Field(0.0, ge=0, le=1)  # stream ends mid-way, no terminal event
    cut_after: float = Field(0.5, gt=0, lt=1, description="share of the output sent before a stream cut")
    timeout: float = Field(0.0, ge=0, le=1)  # never answers (hangs until the client gives up)


class RateLimits(_Strict):
    """The provider's own token buckets: capacity = the per-minute limit, refilled continuously at
    limit/60 per second; a request that does not fit gets 429 with the exact Retry-After."""

    rpm: float | None = Field(None, gt=0)
    tpm: float | None = Field(None, gt=0)


class Outages(_Strict):
    """An alternating up/down renewal process: up periods ~ Exponential(mtbf), down periods ~ mttr."""

    mtbf: float = Field(gt=0, description="mean time between failures, seconds")
    mttr: Distribution = Field(description="repair time distribution, seconds")
    status: int = Field(503, ge=500, le=599)

    _coerce = field_validator("mttr", mode="before")(_coerce_dist)


class Incident(_Strict):
    """A scheduled incident: from `start` to `end` seconds after the run starts (the simulation's
    t=0, or the mock provider's start) the channel answers `status` (an outage) or is a brownout
    (`ttft_factor`, extra `error_rate`)."""

    start: float = Field(ge=0)
    end: float
    status: int | None = Field(None, ge=400, le=599)
    ttft_factor: float = Field(1.0, gt=0)
    error_rate: float = Field(0.0, ge=0, le=1)

    @model_validator(mode="after")
    def _ordered(self) -> Incident:
        if self.end <= self.start:
            raise ValueError("end must be after start")
        return self


class ProviderQuota(_Strict):
    """A provider-side allowance that resets every `period` seconds (daily by default): 429 once used."""

    requests: int | None = Field(None, ge=0)
    tokens: int | None = Field(None, ge=0)
    period: float = Field(86400.0, gt=0)


class Behavior(_Strict):
    ttft: Distribution = Field(default_factory=lambda: LogNormal(dist="lognormal", median=0.4, sigma=0.5))
    tokens_per_second: float | Distribution = 100.0
    output_tokens: Distribution = Field(default_factory=lambda: LogNormal(dist="lognormal", median=150, sigma=0.6))
    prefill_per_token: float = Field(0.0, ge=0, description="seconds of extra TTFT per input token")
    load_factor: float = Field(0.0, ge=0, description="TTFT × (1 + load_factor × utilisation)")
    max_concurrency: int | None = Field(None, ge=1)
    when_full: Literal["reject", "queue"] = "reject"
    error_rate: float = Field(0.0, ge=0, le=1)
    error_status: int = Field(500, ge=400, le=599)
    faults: Faults = Field(default_factory=Faults)
    rate_limits: RateLimits = Field(default_factory=RateLimits)
    outages: Outages | None = None
    incidents: list[Incident] = Field(default_factory=list)
    quota: ProviderQuota | None = None

    _coerce = field_validator("ttft", "output_tokens", mode="before")(_coerce_dist)

    @field_validator("tokens_per_second", mode="before")
    @classmethod
    def _tps(cls, v: Any) -> Any:
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            if v <= 0:
                raise ValueError("must be > 0")
            return float(v)
        return v

    @field_validator("tokens_per_second")
    @classmethod
    def _tps_positive(cls, v: float | Distribution) -> float | Distribution:
        # A speed drawn as 0 would never finish its answer (the simulator divided by it).
        if isinstance(v, Constant) and v.value <= 0:
            raise ValueError("a constant speed must be > 0")
        if isinstance(v, Empirical) and any(x <= 0 for x in v.values):
            raise ValueError("every observed speed must be > 0")
        return v

    @model_validator(mode="after")
    def _one_outcome_per_attempt(self) -> Behavior:
        # One draw decides each attempt's fault: the probabilities share one unit.
        f = self.faults
        total = self.error_rate + f.rate_limited + f.overloaded + f.bad_gateway + f.reset + f.timeout + f.stream_cut
        if total > 1.0 + 1e-9:
            raise ValueError(f"error_rate and the faults' probabilities add up to {total:g}; at most 1")
        return self


# --------------------------------------------------------------------------------------------------
# Gateway, channels


# RFC 9110 field names (tokens), and what an upstream key may contain to travel in a header.
_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_KEY_TEXT = re.compile(r"[\x21-\x7e]+")
# Response headers the gateway writes itself, and HTTP's own: not for trace or thread ids.
_RESERVED_HEADERS = frozenset({
    "content-length", "content-type", "transfer-encoding", "connection", "keep-alive", "upgrade", "te", "trailer",
    "host", "date", "server", "cache-control", "retry-after", "retry-after-ms", "x-request-id", "x-accel-buffering",
    "content-encoding", "vary", "set-cookie", "location", "www-authenticate",
    "x-axonsim-attempts", "x-axonsim-overhead-ms", "x-axonsim-explain", "authorization", "x-api-key",
    "x-goog-api-key", "accept-encoding",
    "request-id"})  # Anthropic's name for the request id, on every /v1/messages answer
# ... and every header under this prefix: CORS answers' (gateway.cors).
_RESERVED_PREFIX = "access-control-"


class GatewayKey(_Strict):
    key: str = Field(min_length=1)
    project: str = "default"
    name: str | None = None

    @field_validator("key")
    @classmethod
    def _sendable(cls, v: str) -> str:
        return _header_safe(v, "a client key")


def _header_safe(v: str, what: str) -> str:
    # A key is sent in a request header: one no header can carry (non-ASCII, a space, a line break)
    # was accepted and then could never authenticate. The message never quotes it: it is a secret.
    if not _KEY_TEXT.fullmatch(v):
        raise ValueError(f"{what} must be printable ASCII without spaces or line breaks")
    return v


class Timeouts(_Strict):
    connect: float = Field(5.0, gt=0)
    first_token: float = Field(30.0, gt=0)
    idle: float = Field(60.0, gt=0)
    total: float = Field(600.0, gt=0)


class Cors(_Strict):
    """Browsers calling the gateway from pages of other origins (CORS). Off unless configured; the
    proxy answers preflights and marks answers as Starlette's CORSMiddleware does. Credentials
    (cookies) are never allowed: a client sends its key in a header, which the preflight admits."""

    allow_origins: list[str] = Field(default_factory=list, description='"https://app.example.com"; "*" for any')
    allow_origin_regex: str | None = Field(None, description="origins matching this regex (whole) are allowed too")
    allow_headers: list[str] = Field(default_factory=lambda: ["*"],
                                     description="request headers a page may send; * for whatever it asks")
    max_age: int = Field(600, ge=0, description="seconds a browser may keep a preflight's answer")

    @field_validator("allow_origins")
    @classmethod
    def _origins(cls, v: list[str]) -> list[str]:
        out = []
        for o in v:
            # An origin is scheme://host[:port], as browsers send it: a path or a trailing slash never matches.
            if o != "*" and not re.fullmatch(r"[a-zA-Z][a-zA-Z0-9+.-]*://[^/\s]+", o):
                raise ValueError(f"{o[:100]!r} is not an origin (scheme://host[:port], no path) nor *")
            # Compared as strings with what a browser sends: scheme and host in lower case, and no
            # port where it is the scheme's default.
            o = o.lower()
            if o.startswith("https://") and o.endswith(":443"):
                o = o[:-4]
            elif o.startswith("http://") and o.endswith(":80"):
                o = o[:-3]
            out.append(o)
        return out

    @field_validator("allow_origin_regex")
    @classmethod
    def _regex(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                re.compile(v)
            except re.error as exc:
                raise ValueError(f"not a regular expression: {exc}") from None
        return v

    @field_validator("allow_headers")
    @classmethod
    def _headers(cls, v: list[str]) -> list[str]:
        for h in v:
            if h != "*" and not _HEADER_NAME.fullmatch(h):
                raise ValueError(f"{h[:100]!r} is not an HTTP header name")
        return v

    @model_validator(mode="after")
    def _some_origin(self) -> Cors:
        if not self.allow_origins and self.allow_origin_regex is None:
            raise ValueError("name the allowed origins (allow_origins, or allow_origin_regex)")
        return self


class Gateway(_Strict):
    api_keys: list[GatewayKey] = Field(default_factory=list)
    timeouts: Timeouts = Field(default_factory=Timeouts)
    # Bearer keys for /admin/... only; a client key never opens the admin API (none: admin API closed).
    admin_keys: list[str] = Field(default_factory=list)
    # Request headers naming a trace / a conversation thread (AxonHub's AH-Trace-Id / AH-Thread-Id are
    # accepted too); echoed in the response, never forwarded upstream. Proxy only.
    trace_header: str = Field("x-axonsim-trace-id", min_length=1)
    thread_header: str = Field("x-axonsim-thread-id", min_length=1)
    # Seconds a graceful shutdown lets in-flight requests and streams run before they are cancelled.
    shutdown_timeout: float = Field(30.0, ge=0)
    # Seconds the gateway waits for a client that has stopped reading its answer (the socket's buffers
    # full) before it closes the connection, as nginx's send_timeout: the request is then the client's
    # cancel (499), and its upstream call is abandoned without counting against the channel.
    send_timeout: float = Field(60.0, gt=0)
    # Seconds the gateway waits for more of a request whose head or body stopped arriving before it
    # answers 408 and closes the connection, as nginx's client_header_timeout/client_body_timeout.
    read_timeout: float = Field(60.0, gt=0)
    # Web pages of other origins calling the gateway from a browser; None: no CORS headers at all.
    cors: Cors | None = None

    @field_validator("admin_keys")
    @classmethod
    def _admin_sendable(cls, v: list[str]) -> list[str]:
        for k in v:
            _header_safe(k, "an admin key")
        return v

    @field_validator("trace_header", "thread_header")
    @classmethod
    def _header_name(cls, v: str) -> str:
        # Echoed as a response header: a name HTTP does not allow made every answer fail to send, and
        # one the gateway sends itself (content-length, say) made answers contradict themselves.
        if not _HEADER_NAME.fullmatch(v):
            raise ValueError("not an HTTP header name (letters, digits and !#$%&'*+-.^_`|~ only)")
        if v.lower() in _RESERVED_HEADERS or v.lower().startswith(_RESERVED_PREFIX):
            raise ValueError(f"{v!r} is a header the gateway or HTTP itself uses; choose another name")
        return v

    @model_validator(mode="after")
    def _two_headers(self) -> Gateway:
        if self.trace_header.lower() == self.thread_header.lower():
            raise ValueError("trace_header and thread_header must be different headers")
        return self

    @model_validator(mode="after")
    def _one_use_per_key(self) -> Gateway:
        # A client key also listed as an admin key opened the admin API to that client, and a client
        # key listed twice was booked to whichever project came last. (The key is never quoted.)
        seen: dict[str, int] = {}
        admin = set(self.admin_keys)
        for i, k in enumerate(self.api_keys):
            j = seen.setdefault(k.key, i)
            if j != i:
                raise ValueError(f"api_keys[{i}] has the key of api_keys[{j}]: a client key belongs to one "
                                 "project and name")
            if k.key in admin:
                raise ValueError(f"api_keys[{i}] is also one of admin_keys: a client key must never open the "
                                 "admin API")
        return self


class LimitsConfig(_Strict):
    """Local limits, enforced before a call is made (a channel or key at its limit is skipped)."""

    rpm: float | None = Field(None, gt=0)
    tpm: float | None = Field(None, gt=0)
    max_concurrency: int | None = Field(None, ge=1)


class QuotaConfig(_Strict):
    """A usage allowance per window of `period` seconds starting at `offset` (daily at 00:00 UTC by
    default when time is Unix time); exhausted → the channel is skipped until the window rolls."""

    requests: int | None = Field(None, ge=0)
    tokens: int | None = Field(None, ge=0)
    period: float = Field(86400.0, gt=0)
    offset: float = 0.0


class UpstreamKey(_Strict):
    key: str = Field(min_length=1)
    name: str | None = None
    limits: LimitsConfig = Field(default_factory=LimitsConfig)

    @field_validator("key")
    @classmethod
    def _sendable(cls, v: str) -> str:
        # A key with a line break or a space (a paste gone wrong) failed every call on the channel.
        return _header_safe(v, "an upstream key")


ChannelType = Literal["openai", "openai_responses", "anthropic", "gemini"]


class Capabilities(_Strict):
    """What a channel can carry; requests that need more are routed elsewhere (or get a 400)."""

    images: bool = True
    context_window: int | None = Field(None, ge=1, description="tokens (input + output) the model accepts")


class Probe(_Strict):
    """A periodic test request to the channel (proxy only); its result feeds channel state like real traffic."""

    interval: float = Field(gt=0, description="seconds between two probes")


def base_url_problem(url: str) -> str | None:
    """What is wrong with a channel's base_url for the proxy (None: nothing): an http(s) URL with a
    host, to which the provider's paths are appended, and no credentials (the channel's api_keys
    are sent in the provider's own header; a URL's user:password would go out as an Authorization
    header of its own, which OpenAI's key uses)."""
    if any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in url):
        return "contains a space or a control character"
    if "\\" in url:
        return "contains a backslash"
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return "is not a URL the proxy can read (a bracketed address not closed, a port that is not a number 0-65535?)"
    if parts.scheme.lower() not in ("http", "https"):
        return "must begin with http:// or https://"
    if parts.username is not None or parts.password is not None:
        return "must not hold credentials (user:password@): the channel's api_keys are what the proxy sends"
    host = parts.hostname
    if not host:
        return "has no host"
    if port == 0:
        return "has port 0"
    if parts.query or parts.fragment or url.endswith(("?", "#")):
        return "must not have a query string or a fragment: the provider's paths are appended to it"
    if ":" not in host:  # not an IPv6 address: each label of a name 1-63 characters, as DNS allows
        # Invisible characters (a zero-width space pasted in) and "xn--" labels that are not punycode
        # name no host either.
        try:
            if any(unicodedata.category(c)[0] in "CZ" for c in host):
                raise UnicodeError
            for label in host.encode("idna").split(b"."):
                if label.startswith(b"xn--"):
                    label.decode("idna")
        except UnicodeError:
            return "has a host name that is not valid (an empty label, as in a..b, one over 63 characters, " \
                   "an invisible character, punycode that does not decode?)"
    return None


class Channel(_Strict):
    name: str = Field(min_length=1)
    type: ChannelType = "openai"
    base_url: str = ""
    api_keys: list[UpstreamKey] = Field(default_factory=list)
    models: list[str] = Field(min_length=1)
    model_mapping: dict[str, str] = Field(default_factory=dict)
    weight: float = Field(100, ge=0, allow_inf_nan=False)
    priority: int = 0
    enabled: bool = True
    behavior: Behavior = Field(default_factory=Behavior)
    timeouts: Timeouts | None = None
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    quota: QuotaConfig | None = None
    retry: RetryOverride | None = None
    key_strategy: Literal["round_robin", "random", "least_used"] = "round_robin"
    capabilities: Capabilities = Field(default_factory=Capabilities)
    price: Price | None = None  # per million tokens; falls back to the top-level price table
    probe: Probe | None = None  # periodic probes; None: only real traffic (and admin tests) reach the channel

    @field_validator("api_keys", mode="before")
    @classmethod
    def _keys(cls, v: Any) -> Any:
        if isinstance(v, list):
            return [{"key": k} if isinstance(k, str) else k for k in v]
        return v

    @field_validator("base_url")
    @classmethod
    def _sendable(cls, v: str) -> str:
        # Said at load (and at a reload, which keeps the old config): a URL the proxy cannot send to
        # failed every request of the channel instead, some with an error no client could act on.
        problem = base_url_problem(v) if v else None
        if problem is not None:
            raise ValueError(problem)
        return v

    @model_validator(mode="after")
    def _mapping_targets_known(self) -> Channel:
        for src, dst in self.model_mapping.items():
            if dst not in self.models:
                raise ValueError(f"model_mapping[{src!r}] -> {dst!r} is not one of this channel's models")
        names: set[str] = set()
        for i, k in enumerate(self.api_keys):
            if k.name is None:
                k.name = f"{self.name}#{i}"
            if k.name in names:
                # The admin API and the records name a key by its name: a second one of the same
                # name could be neither told apart nor switched off.
                raise ValueError(f"api_keys[{i}].name: {k.name!r} names another key of this channel too")
            names.add(k.name)
        return self

    def serves(self, model: str) -> str | None:
        """The upstream model name for a requested model, or None if this channel can't serve it."""
        if model in self.model_mapping:
            return self.model_mapping[model]
        return model if model in self.models else None


# --------------------------------------------------------------------------------------------------
# Routing: strategy and retry policy


# Every strategy name the YAML accepts (axonsim.strategies builds them): ours, AxonHub's named
# mixes, LiteLLM's router strategies, Envoy's and Finagle's balancers.
STRATEGIES = (
    "round_robin", "weighted", "random", "least_inflight", "error_aware", "latency_aware", "composite",
    "adaptive", "failover", "circuit-breaker", "round-robin",
    "simple-shuffle", "least-busy", "usage-based", "latency-based", "cost-based",
    "least_request", "peak_ewma",
)
COMPOSITE_TERMS = ("round_robin", "weighted", "random", "least_inflight", "error_aware", "latency_aware",
                   "rate_limit_aware", "cost")

ACTIONS = ("retry", "failover", "give_up")


class Backoff(_Strict):
    """delay(n) = min(cap, base·2^(n-1)), of which a `jitter` fraction is drawn uniformly."""

    base: float = Field(0.1, ge=0, allow_inf_nan=False)
    cap: float = Field(5.0, ge=0, allow_inf_nan=False)
    jitter: float = Field(0.5, ge=0, le=1)


Action = Literal["retry", "failover", "give_up"]


class ErrorPattern(_Strict):
    """An error whose message contains `pattern` (a regular expression) gets `action`."""

    pattern: str = Field(min_length=1)
    action: Action

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, v: str) -> str:
        import re

        try:
            re.compile(v)
        except re.error as exc:
            raise ValueError(f"not a valid regular expression: {exc}") from None
        return v


class RetryBudget(_Strict):
    enabled: bool = False
    ratio: float = Field(0.2, ge=0, description="extra attempts allowed per client request in the window")
    min_retries: int = Field(10, ge=0, description="extra attempts always allowed in the window")
    window: float = Field(10.0, gt=0)


class Retry(_Strict):
    max_attempts: int = Field(4, ge=1, description="cap on upstream attempts per client request")
    max_same_channel: int = Field(1, ge=0, description="retries on one channel before failing over")
    backoff: Backoff = Field(default_factory=Backoff)
    # Lookup order: error patterns, then status, then kind; merged over axonsim.policy's default table.
    on: dict[ErrorKind, Action] = Field(default_factory=dict)
    statuses: dict[Annotated[int, Field(ge=100, le=599)], Action] = Field(default_factory=dict)
    patterns: list[ErrorPattern] = Field(default_factory=list)
    deadline: float | None = Field(None, gt=0, allow_inf_nan=False,
                                   description="total seconds per client request across attempts")
    budget: RetryBudget = Field(default_factory=RetryBudget)


class RetryOverride(_Strict):
    """Per-channel retry policy, layered over routing.retry."""

    max_same_channel: int | None = Field(None, ge=0)
    on: dict[ErrorKind, Action] = Field(default_factory=dict)
    statuses: dict[Annotated[int, Field(ge=100, le=599)], Action] = Field(default_factory=dict)
    patterns: list[ErrorPattern] = Field(default_factory=list)


class BreakerConfig(_Strict):
    enabled: bool = True
    failure_threshold: int = Field(5, ge=1)
    open_time: float = Field(30.0, gt=0, description="first open period; doubles per trip")
    max_open_time: float = Field(300.0, gt=0)
    half_open_probes: int = Field(1, ge=1)


class OutlierConfig(_Strict):
    enabled: bool = False
    consecutive_failures: int = Field(5, ge=1)
    base_ejection_time: float = Field(30.0, gt=0)
    max_ejection_time: float = Field(300.0, gt=0)
    max_ejection_percent: float = Field(10.0, ge=0, le=100)


class AutoDisableRule(_Strict):
    status: int = Field(ge=400, le=599)
    times: int = Field(1, ge=1)
    action: Literal["permanent", "temporary"] = "temporary"
    duration: float = Field(300.0, gt=0)
    use_retry_after: bool = False


def _default_auto_disable() -> list[AutoDisableRule]:
    # AxonHub's defaults: bad credentials are permanent (until the config changes); overload is not.
    return [AutoDisableRule(status=401, times=1, action="permanent"),
            AutoDisableRule(status=403, times=1, action="permanent"),
            AutoDisableRule(status=429, times=3, action="temporary", duration=300, use_retry_after=True),
            AutoDisableRule(status=503, times=3, action="temporary", duration=300),
            AutoDisableRule(status=529, times=3, action="temporary", duration=300)]


class Health(_Strict):
    breaker: BreakerConfig = Field(default_factory=BreakerConfig)
    key_breaker: BreakerConfig = Field(default_factory=BreakerConfig)
    outlier: OutlierConfig = Field(default_factory=OutlierConfig)
    auto_disable: list[AutoDisableRule] = Field(default_factory=_default_auto_disable)
    # Envoy's panic mode: when health checks (breakers, ejection, temporary auto-disable) have taken
    # every candidate out, try them anyway rather than fail every request without an attempt.
    panic: bool = True


class Hedge(_Strict):
    """Start a second attempt on another channel if the first has not produced a first event after
    `delay` seconds, or after the given percentile of recently observed TTFT ("p95")."""

    enabled: bool = False
    delay: float | None = Field(None, gt=0, allow_inf_nan=False)
    percentile: float | None = Field(None, gt=0, lt=100)
    min_samples: int = Field(20, ge=1)

    @model_validator(mode="after")
    def _one_trigger(self) -> Hedge:
        if self.enabled and (self.delay is None) == (self.percentile is None):
            raise ValueError("hedge needs exactly one of delay or percentile")
        return self


class StrategyOptions(_Strict):
    latency_buffer: float = Field(0.0, ge=0, description="LiteLLM lowest_latency_buffer")
    choice_count: int = Field(2, ge=1, description="Envoy least_request choices")
    active_request_bias: float = Field(1.0, ge=0, description="Envoy least_request bias")
    ewma_decay: float = Field(10.0, gt=0, description="peak-EWMA decay time constant, seconds")
    default_latency: float = Field(0.5, gt=0, description="peak-EWMA prior before any sample, seconds")


class Cooldown(_Strict):
    default: float = Field(60.0, ge=0, allow_inf_nan=False, description="429 cooldown when the upstream gave no Retry-After")
    # Caps every cooldown, the default's included: `max: 0` turns 429 cooldowns off.
    max: float = Field(300.0, ge=0, allow_inf_nan=False)


class Routing(_Strict):
    strategy: str = "composite"
    composite: dict[str, float] = Field(
        default_factory=lambda: {"error_aware": 0.4, "least_inflight": 0.4, "weighted": 0.2}
    )
    options: StrategyOptions = Field(default_factory=StrategyOptions)
    error_window: float = Field(300.0, gt=0, description="seconds over which a failure penalty decays to 0")
    retry: Retry = Field(default_factory=Retry)
    cooldown: Cooldown = Field(default_factory=Cooldown)
    health: Health = Field(default_factory=Health)
    hedge: Hedge = Field(default_factory=Hedge)
    sticky: Literal["none", "trace", "thread"] = "none"
    ewma_alpha: float = Field(0.3, gt=0, le=1)

    @field_validator("strategy")
    @classmethod
    def _known(cls, v: str) -> str:
        if v not in STRATEGIES:
            raise ValueError(f"unknown strategy {v!r}; choose one of: {', '.join(STRATEGIES)}")
        return v

    @field_validator("composite")
    @classmethod
    def _weights(cls, v: dict[str, float]) -> dict[str, float]:
        for k in v:
            if k not in COMPOSITE_TERMS:
                raise ValueError(f"unknown composite term {k!r}; choose from: {', '.join(COMPOSITE_TERMS)}")
        if any(w < 0 for w in v.values()):
            raise ValueError("composite weights must be >= 0")
        if not any(w > 0 for w in v.values()):
            raise ValueError("composite needs at least one positive weight")
        return v


# --------------------------------------------------------------------------------------------------
# Workload (simulator only)


def _check_shares(v: dict[str, float] | None) -> dict[str, float] | None:
    if v is not None:
        for m, share in v.items():
            if not share >= 0:
                raise ValueError(f"{m}: a share must be >= 0, got {share}")
        if not any(share > 0 for share in v.values()):
            raise ValueError("at least one share must be positive")
    return v


# The most requests one simulation runs: what the memory of one machine holds (100k requests take
# ~230 MB of results).
MAX_REQUESTS = 10_000_000


class RateRamp(_Strict):
    """The arrival rate moves linearly from `arrival.rate` at t=`start` to `to` at t=`start + over`,
    and stays there (a ramp down to 0 ends the arrivals, however many were asked for)."""

    to: float = Field(ge=0, allow_inf_nan=False, description="requests per second at the end of the ramp")
    over: float = Field(gt=0, description="seconds the ramp takes")
    start: float = Field(0.0, ge=0)


class Diurnal(_Strict):
    """rate(t) = rate × (1 + amplitude·sin(2π(t − phase)/period)): a daily (or any period) swing."""

    amplitude: float = Field(ge=0, le=1)
    period: float = Field(86400.0, gt=0)
    phase: float = 0.0


class Arrival(_Strict):
    """Inter-arrival process. poisson: exponential gaps (with `ramp` / `diurnal`: non-homogeneous,
    drawn by thinning); gamma: Gamma gaps with coefficient of variation `cv` (> 1 is bursty)."""

    process: Literal["poisson", "gamma"] = "poisson"
    rate: float = Field(gt=0, allow_inf_nan=False, description="requests per second (the base rate of a ramp or curve)")
    cv: float | None = Field(None, gt=0, description="gamma: coefficient of variation of the gaps")
    ramp: RateRamp | None = None
    diurnal: Diurnal | None = None

    @model_validator(mode="after")
    def _consistent(self) -> Arrival:
        if self.process == "gamma" and self.cv is None:
            raise ValueError("cv: a gamma process needs its coefficient of variation")
        if self.process != "gamma" and self.cv is not None:
            raise ValueError("cv: only a gamma process has one (process: gamma)")
        if self.process == "gamma" and (self.ramp is not None or self.diurnal is not None):
            raise ValueError("ramp/diurnal: a time-varying rate needs process: poisson")
        return self


class TraceSource(_Strict):
    """Replay of recorded arrivals. `azure`: TIMESTAMP,ContextTokens,GeneratedTokens (the Azure LLM
    inference traces); `usage_log`: an export (CSV or Parquet) of the proxy's requests table —
    created_at, model, stream, prompt_tokens, completion_tokens (project optional). Arrival = seconds
    since the first row × `time_scale`. A relative `path` is read from the scenario file's folder."""

    path: str = Field(min_length=1)
    format: Literal["azure", "usage_log"] = "azure"
    time_scale: float = Field(1.0, gt=0, description="multiplies the trace's times (0.5 = twice as fast)")


class Tenant(_Strict):
    """One project's traffic: its own arrival process and mix; unset fields take the workload's."""

    project: str = Field(min_length=1)
    arrival: Arrival
    models: dict[str, float] | None = None
    stream: float | None = Field(None, ge=0, le=1)
    input_tokens: Distribution | None = None
    output_tokens: Distribution | None = None
    max_tokens: int | None = Field(None, ge=0)

    _coerce = field_validator("input_tokens", "output_tokens", mode="before")(_coerce_dist)
    _shares = field_validator("models")(_check_shares)


class Workload(_Strict):
    """The client side of a simulation: one arrival process, or several tenants, or a trace.

    `requests` and/or `duration` bound a synthetic workload (whichever ends first); for a trace
    they cut it short. `output_tokens` unset: each attempt's channel behaviour draws the output.
    The token estimate that local TPM limits and quotas count is input + `max_tokens`, or input +
    the request's drawn output when no max_tokens is set. The live proxy counts its estimate
    (request bytes / 4 + max_tokens) at the start and the usage beyond it once the answer reports
    it, so both end up counting what was used."""

    arrival: Arrival | None = None
    requests: int | None = Field(None, gt=0, le=MAX_REQUESTS)
    duration: float | None = Field(None, gt=0, description="seconds of arrivals")
    models: dict[str, float] | None = None  # model -> share; default: the first channel's first model
    stream: float = Field(0.0, ge=0, le=1, description="share of streaming requests")
    project: str = Field("default", min_length=1)
    input_tokens: Distribution | None = None
    output_tokens: Distribution | None = None
    max_tokens: int | None = Field(None, ge=0, description="the clients' max_tokens")
    tenants: list[Tenant] = Field(default_factory=list)
    trace: TraceSource | None = None

    _coerce = field_validator("input_tokens", "output_tokens", mode="before")(_coerce_dist)

    _shares = field_validator("models")(_check_shares)

    @model_validator(mode="after")
    def _one_source(self) -> Workload:
        given = [name for name, v in (("arrival", self.arrival), ("tenants", self.tenants), ("trace", self.trace))
                 if v]
        if len(given) != 1:
            raise ValueError("give exactly one of arrival, tenants or trace"
                             + (f" (found {', '.join(given)})" if given else ""))
        if self.trace is None and self.requests is None and self.duration is None:
            raise ValueError("requests or duration: a synthetic workload needs one to end")
        if len({t.project for t in self.tenants}) != len(self.tenants):
            raise ValueError("tenants: project names must be unique")
        return self


# --------------------------------------------------------------------------------------------------


# Prices and the usage-log store (proxy only; see axonsim.pricing and server.store)


class Price(_Strict):
    """Currency units per million tokens; cached input and cache writes default to input, reasoning
    to output."""

    input: float = Field(0.0, ge=0)
    cached_input: float | None = Field(None, ge=0)
    # Prompt tokens written to the provider's cache (Anthropic's cache_creation_input_tokens, billed
    # at 1.25× input for its 5-minute cache): LiteLLM's cache_creation_input_token_cost.
    cache_write: float | None = Field(None, ge=0)
    output: float = Field(0.0, ge=0)
    reasoning: float | None = Field(None, ge=0)

    @model_validator(mode="after")
    def _defaults(self) -> Price:
        if self.cached_input is None:
            self.cached_input = self.input
        if self.cache_write is None:
            self.cache_write = self.input
        if self.reasoning is None:
            self.reasoning = self.output
        return self


_STORE_SCHEMES = {"sqlite": "sqlite+aiosqlite", "sqlite+aiosqlite": "sqlite+aiosqlite",
                  "postgresql": "postgresql+asyncpg", "postgres": "postgresql+asyncpg",
                  "postgresql+asyncpg": "postgresql+asyncpg"}


class Store(_Strict):
    """Where request/attempt records go. url None = SQLite file `axonsim.db` next to the config."""

    url: str | None = None
    store_bodies: bool = False
    queue_size: int = Field(10000, ge=1, description="records held in memory (queue + unwritten) at most")
    batch_size: int = Field(200, ge=1)
    flush_interval: float = Field(0.5, gt=0, description="seconds a partial batch waits before it is written")
    on_unreachable: Literal["fail", "degraded"] = "fail"

    @field_validator("url")
    @classmethod
    def _async_driver(cls, v: str | None) -> str | None:
        # Plain scheme names are accepted and pinned to the async drivers the store runs on.
        if v is None:
            return v
        scheme, sep, rest = v.partition("://")
        if not sep or scheme not in _STORE_SCHEMES:
            raise ValueError("must be sqlite+aiosqlite:///path or postgresql+asyncpg://user@host/db")
        url = f"{_STORE_SCHEMES[scheme]}://{rest}"
        try:  # what the store will parse at start: a port that is not a number, say
            from sqlalchemy.engine import make_url

            make_url(url)
        except Exception:
            # the value itself is not quoted back: it may hold the database password
            raise ValueError("is not a URL the store can read (a port that is not a number?)") from None
        return url

    @model_validator(mode="after")
    def _batch_fits(self) -> Store:
        self.batch_size = min(self.batch_size, self.queue_size)
        return self


# The numeric options a Redis URL's query string may set (as redis-py reads them).
_REDIS_URL_NUMBERS: dict[str, type] = {
    "db": int, "socket_timeout": float, "socket_connect_timeout": float, "socket_read_size": int,
    "max_connections": int, "health_check_interval": int, "ssl_min_version": int, "timeout": float, "protocol": int}


class SharedStateConfig(_Strict):
    """Channel state shared by several proxy processes through Redis (server.shared_state).

    url None: state stays in the process (one worker). Cooldowns, breakers, disables, rate-limit
    counters and the round-robin position are synchronised every `sync_interval` seconds."""

    url: str | None = Field(None, description="redis://[:password@]host:port/db (rediss:// for TLS)")
    sync_interval: float = Field(0.1, gt=0, le=60, description="seconds between synchronisations")
    key_prefix: str = Field("axonsim", min_length=1, description="namespace of every Redis key written")

    @field_validator("url")
    @classmethod
    def _redis_url(cls, v: str | None) -> str | None:
        if v is None:
            return v
        if not v.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must be redis://host:port/db, rediss://... or unix:///path")
        # Checked here, so a bad URL is a config error (exit 2) rather than a crash at start-up. The
        # messages never quote the URL: it may hold a password.
        try:
            parts = urlsplit(v)
            parts.port  # noqa: B018 - raises ValueError for a port that is not a number
        except ValueError:
            raise ValueError("is not a valid URL (host, or a port that is not a number)") from None
        if parts.scheme != "unix":
            db = parts.path.strip("/")
            if db and not db.isdigit():
                raise ValueError("has a database that is not a number (redis://host:port/0)")
        elif not parts.path:
            raise ValueError("names no socket path: unix:///path/to/redis.sock")
        for name, value in parse_qsl(parts.query, keep_blank_values=True):
            kind = _REDIS_URL_NUMBERS.get(name)
            try:
                ok = kind is None or (kind(value) >= 0 and math.isfinite(kind(value)))
            except ValueError:
                ok = False
            if not ok:
                raise ValueError(f"has a query parameter {name} that is not a number >= 0")
        return v


class Config(_Strict):
    gateway: Gateway = Field(default_factory=Gateway)
    channels: list[Channel] = Field(min_length=1)
    routing: Routing = Field(default_factory=Routing)
    workload: Workload | None = None
    seed: int | None = None
    prices: dict[str, Price] = Field(default_factory=dict, description="model name -> price")
    store: Store = Field(default_factory=Store)
    state: SharedStateConfig = Field(default_factory=SharedStateConfig)
    # Where this config was read from, for messages about it found after loading (the simulator's
    # checks against the run's horizon, trace files named relative to the scenario).
    _source: str | None = PrivateAttr(default=None)
    _lines: dict[str, int] = PrivateAttr(default_factory=dict)

    @model_validator(mode="after")
    def _unique_names(self) -> Config:
        seen: set[str] = set()
        for ch in self.channels:
            if ch.name in seen:
                raise ValueError(f"duplicate channel name {ch.name!r}")
            seen.add(ch.name)
        if self.workload:
            served = {m for ch in self.channels for m in [*ch.models, *ch.model_mapping]}
            mixes = [("workload.models", self.workload.models)]
            mixes += [(f"workload.tenants[{i}].models", t.models) for i, t in enumerate(self.workload.tenants)]
            for where, mix in mixes:
                for m in mix or ():
                    if m not in served:
                        raise ValueError(f"{where}: no channel serves {m!r}")
        return self

    def where(self, path: str) -> str:
        """`file: line N: path` for a message about the field at `path`, as far as it is known."""
        line = line_of(self._lines, path)
        src = self._source
        if src is None:
            return path
        return f"{src}: line {line}: {path}" if line else f"{src}: {path}"

    @property
    def source(self) -> str | None:
        """The file this config was loaded from (None when built in code)."""
        return self._source

    def model_names(self) -> list[str]:
        """Every name a client may ask for, in config order."""
        out: dict[str, None] = {}
        for ch in self.channels:
            if ch.enabled:
                for m in [*ch.models, *ch.model_mapping]:
                    out[m] = None
        return list(out)


_BRANCHES = frozenset({*DIST_TAGS, "Constant", "Exponential", "LogNormal", "Empirical", "Gamma", "float", "int"})


# What a config field name can look like (lower-case words and underscores, maybe a trailing digit):
# an unknown key of another shape is not quoted back in errors, as it may be a key (Azure's 32 hex
# digits, AWS's AKIA...), pasted where a mapping was expected.
_NAME = re.compile(r"[a-z][a-z_]{0,30}[a-z0-9]?")


def _loc(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            if str(part) in _BRANCHES or str(part).startswith("tagged-union["):
                continue  # union branch names: noise for the reader
            out += ("." if out else "") + str(part)
    return out


def yaml_lines(text: str) -> dict[str, int]:
    """Field path (as error messages spell it: `channels[1].behavior.ttft`) -> 1-based line of the
    YAML text where it is written. Empty if the text does not compose."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return {}
    out: dict[str, int] = {}

    def walk(node: yaml.Node, path: str, depth: int) -> None:
        if depth > 64:  # anchors can nest deeply; a line map is only a convenience
            return
        out.setdefault(path, node.start_mark.line + 1)
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                if isinstance(k, yaml.ScalarNode):
                    sub = f"{path}.{k.value}" if path else str(k.value)
                    out.setdefault(sub, k.start_mark.line + 1)  # the key's line, where a reader looks
                    walk(v, sub, depth + 1)
        elif isinstance(node, yaml.SequenceNode):
            for i, v in enumerate(node.value):
                walk(v, f"{path}[{i}]", depth + 1)

    if root is not None:
        walk(root, "", 0)
    return out


def line_of(lines: dict[str, int], path: str) -> int | None:
    """The line of `path`, or of its nearest written ancestor (a missing field is reported where its
    parent is)."""
    while path:
        if path in lines:
            return lines[path]
        cut = max(path.rfind("."), path.rfind("["))
        path = path[:cut] if cut > 0 else ""
    return None


def parse_config(data: Any, source: str = "<config>", lines: dict[str, int] | None = None) -> Config:
    """Validate `data`; `lines` (from yaml_lines) puts the line number into every error message."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a mapping")
    try:
        cfg = Config.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors()
        # `float | Distribution` fields fail on both branches; the number branch says nothing useful
        # when the value is a mapping, so it is dropped when another error remains.
        kept = [e for e in errors if not (e["loc"] and e["loc"][-1] in ("float", "int"))]
        out = []
        for err in (kept or errors)[:8]:
            loc = err["loc"]
            if err["type"] == "extra_forbidden" and loc and not _NAME.fullmatch(str(loc[-1])):
                # An unknown key is the user's text, and a key pasted where a mapping was expected
                # (`api_keys: [{sk-...: x}]`) is a secret: only a name-like key is quoted back.
                loc = (*loc[:-1], f"<an unknown key of {len(str(loc[-1]))} characters>")
            where = _loc(loc) or "(top level)"
            msg = err["msg"].removeprefix("Value error, ")
            line = line_of(lines, where) if lines else None
            out.append(f"{source}: line {line}: {where}: {msg}" if line else f"{source}: {where}: {msg}")
        raise ConfigError("\n".join(out)) from None
    cfg._source = source
    cfg._lines = lines or {}
    return cfg


def load_config(path: str | Path) -> Config:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{p}: not UTF-8 text (byte {exc.start} cannot be read)") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{p}:{where}: not valid YAML: {_unquoted(str(getattr(exc, 'problem', exc)))}") from None
    return parse_config(data, str(p), yaml_lines(text))


# YAML's messages quote what they stumbled on: an unquoted key beginning with `*` or `!` is read as
# an alias or a tag and quoted whole ("found undefined alias 'Xk9-live-…'"; in double quotes when it
# holds a single quote). A file that does not parse has no keys to mask by, so a quoted token as
# long as a secret can be (8 characters, the floor every secret search keeps, and no space: not the
# text between two quoted tokens) is left out; the line and column say where it is.
_LONG_QUOTED = re.compile(r"'[^'\s]{8,}'" + r'|"[^"\s]{8,}"')


def _unquoted(problem: str) -> str:
    return _LONG_QUOTED.sub("(a value not shown: it may be a secret)", problem)
