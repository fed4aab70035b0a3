"""The configuration shared by the proxy and the simulator: YAML → validated pydantic models.

Every mistake is reported at load time as a ConfigError naming the file and the field path
(`channels[1].weight`), never at request time.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

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


Distribution = Union[Constant, Exponential, LogNormal]


def _coerce_dist(v: Any) -> Any:
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return {"dist": "constant", "value": v}
    return v


def dist_mean(d: Distribution) -> float:
    return d.mean if not isinstance(d, Exponential) else d.mean


# --------------------------------------------------------------------------------------------------
# Channel behaviour model: shared by the simulator and the mock provider


class Faults(_Strict):
    """Probabilities of each failure kind per attempt (on top of `error_rate`, which gives 500s)."""

    rate_limited: float = Field(0.0, ge=0, le=1)  # 429 with Retry-After
    retry_after: float = Field(1.0, ge=0)  # seconds announced with a 429
    overloaded: float = Field(0.0, ge=0, le=1)  # 503/529
    reset: float = Field(0.0, ge=0, le=1)  # connection reset before any byte
    stream_cut: float = Field(0.0, ge=0, le=1)  # stream ends mid-way, no terminal event
    timeout: float = Field(0.0, ge=0, le=1)  # never answers (hangs until the client gives up)


class Behavior(_Strict):
    ttft: Distribution = Field(default_factory=lambda: LogNormal(dist="lognormal", median=0.4, sigma=0.5))
    tokens_per_second: float = Field(100.0, gt=0)
    output_tokens: Distribution = Field(default_factory=lambda: LogNormal(dist="lognormal", median=150, sigma=0.6))
    max_concurrency: int | None = Field(None, ge=1)
    when_full: Literal["reject", "queue"] = "reject"
    error_rate: float = Field(0.0, ge=0, le=1)
    error_status: int = Field(500, ge=400, le=599)
    faults: Faults = Field(default_factory=Faults)

    _coerce = field_validator("ttft", "output_tokens", mode="before")(_coerce_dist)


# --------------------------------------------------------------------------------------------------
# Gateway, channels


class GatewayKey(_Strict):
    key: str = Field(min_length=1)
    project: str = "default"
    name: str | None = None


class Timeouts(_Strict):
    connect: float = Field(5.0, gt=0)
    first_token: float = Field(30.0, gt=0)
    idle: float = Field(60.0, gt=0)
    total: float = Field(600.0, gt=0)


class Gateway(_Strict):
    api_keys: list[GatewayKey] = Field(default_factory=list)
    timeouts: Timeouts = Field(default_factory=Timeouts)


class UpstreamKey(_Strict):
    key: str = Field(min_length=1)
    name: str | None = None


ChannelType = Literal["openai", "openai_responses", "anthropic", "gemini"]


class Channel(_Strict):
    name: str = Field(min_length=1)
    type: ChannelType = "openai"
    base_url: str = ""
    api_keys: list[UpstreamKey] = Field(default_factory=list)
    models: list[str] = Field(min_length=1)
    model_mapping: dict[str, str] = Field(default_factory=dict)
    weight: float = Field(100, ge=0)
    priority: int = 0
    enabled: bool = True
    behavior: Behavior = Field(default_factory=Behavior)
    timeouts: Timeouts | None = None

    @field_validator("api_keys", mode="before")
    @classmethod
    def _keys(cls, v: Any) -> Any:
        if isinstance(v, list):
            return [{"key": k} if isinstance(k, str) else k for k in v]
        return v

    @model_validator(mode="after")
    def _mapping_targets_known(self) -> Channel:
        for src, dst in self.model_mapping.items():
            if dst not in self.models:
                raise ValueError(f"model_mapping[{src!r}] -> {dst!r} is not one of this channel's models")
        for i, k in enumerate(self.api_keys):
            if k.name is None:
                k.name = f"{self.name}#{i}"
        return self

    def serves(self, model: str) -> str | None:
        """The upstream model name for a requested model, or None if this channel can't serve it."""
        if model in self.model_mapping:
            return self.model_mapping[model]
        return model if model in self.models else None


# --------------------------------------------------------------------------------------------------
# Routing: strategy and retry policy


STRATEGIES = ("round_robin", "weighted", "random", "least_inflight", "error_aware", "composite")

ACTIONS = ("retry", "failover", "give_up")


class Backoff(_Strict):
    """delay(n) = min(cap, base·2^(n-1)), of which a `jitter` fraction is drawn uniformly."""

    base: float = Field(0.1, ge=0)
    cap: float = Field(5.0, ge=0)
    jitter: float = Field(0.5, ge=0, le=1)


class Retry(_Strict):
    max_attempts: int = Field(4, ge=1, description="cap on upstream attempts per client request")
    max_same_channel: int = Field(1, ge=0, description="retries on one channel before failing over")
    backoff: Backoff = Field(default_factory=Backoff)
    # kind -> action; merged over the default table in axonsim.policy
    on: dict[ErrorKind, Literal["retry", "failover", "give_up"]] = Field(default_factory=dict)


class Cooldown(_Strict):
    default: float = Field(60.0, ge=0, description="429 cooldown when the upstream gave no Retry-After")
    max: float = Field(300.0, ge=0)


class Routing(_Strict):
    strategy: Literal["round_robin", "weighted", "random", "least_inflight", "error_aware", "composite"] = "composite"
    composite: dict[Literal["round_robin", "weighted", "random", "least_inflight", "error_aware"], float] = Field(
        default_factory=lambda: {"error_aware": 0.4, "least_inflight": 0.4, "weighted": 0.2}
    )
    error_window: float = Field(300.0, gt=0, description="seconds over which a failure penalty decays to 0")
    retry: Retry = Field(default_factory=Retry)
    cooldown: Cooldown = Field(default_factory=Cooldown)
    ewma_alpha: float = Field(0.3, gt=0, le=1)

    @field_validator("composite")
    @classmethod
    def _weights(cls, v: dict[str, float]) -> dict[str, float]:
        if any(w < 0 for w in v.values()):
            raise ValueError("composite weights must be >= 0")
        if not any(w > 0 for w in v.values()):
            raise ValueError("composite needs at least one positive weight")
        return v


# --------------------------------------------------------------------------------------------------
# Workload (simulator only)


class Arrival(_Strict):
    process: Literal["poisson"] = "poisson"
    rate: float = Field(gt=0, description="requests per second")


class Workload(_Strict):
    arrival: Arrival
    requests: int = Field(gt=0)
    models: dict[str, float] | None = None  # model -> share; default: the first channel's first model
    stream: float = Field(0.0, ge=0, le=1, description="share of streaming requests")


# --------------------------------------------------------------------------------------------------


class Config(_Strict):
    gateway: Gateway = Field(default_factory=Gateway)
    channels: list[Channel] = Field(min_length=1)
    routing: Routing = Field(default_factory=Routing)
    workload: Workload | None = None
    seed: int | None = None

    @model_validator(mode="after")
    def _unique_names(self) -> Config:
        seen: set[str] = set()
        for ch in self.channels:
            if ch.name in seen:
                raise ValueError(f"duplicate channel name {ch.name!r}")
            seen.add(ch.name)
        if self.workload and self.workload.models:
            served = {m for ch in self.channels for m in [*ch.models, *ch.model_mapping]}
            for m in self.workload.models:
                if m not in served:
                    raise ValueError(f"workload.models: no channel serves {m!r}")
        return self

    def model_names(self) -> list[str]:
        """Every name a client may ask for, in config order."""
        out: dict[str, None] = {}
        for ch in self.channels:
            if ch.enabled:
                for m in [*ch.models, *ch.model_mapping]:
                    out[m] = None
        return list(out)


def _loc(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            if str(part) in ("constant", "exponential", "lognormal", "Constant", "Exponential", "LogNormal"):
                continue  # union branch names: noise for the reader
            out += ("." if out else "") + str(part)
    return out


def parse_config(data: Any, source: str = "<config>") -> Config:
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a mapping")
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        lines = []
        for err in exc.errors()[:8]:
            where = _loc(err["loc"]) or "(top level)"
            msg = err["msg"].removeprefix("Value error, ")
            lines.append(f"{source}: {where}: {msg}")
        raise ConfigError("\n".join(lines)) from None


def load_config(path: str | Path) -> Config:
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{p}:{where}: not valid YAML: {getattr(exc, 'problem', exc)}") from None
    return parse_config(data, str(p))
