"""Workloads: the client requests a simulation replays (arrival time, project, model, stream, token counts), drawn or read from a trace.

Sources, one per scenario (`workload:` in the config):

    arrival   one process: Poisson; Gamma gaps with a coefficient of variation (bursty); Poisson
              with a rate ramp and/or a diurnal curve (non-homogeneous, drawn by thinning)
    tenants   several projects, each with its own process, model mix, streaming share and token
              distributions; their arrivals are merged in time order
    trace     a recorded trace: the Azure LLM inference traces (TIMESTAMP, ContextTokens,
              GeneratedTokens) or an export of the proxy's own requests table (CSV or Parquet)

Every draw comes from a stream kept for its purpose (axonsim.sim.streams) and indexed by the
request's position within its own source, so a workload is prefix-stable: the first k requests
are the same whatever the total, and adding a tenant leaves the others' requests alone.

The run's horizon (when the scenario's arrivals are expected to end) is computed here too: a
scheduled incident that starts after it can never be seen, and is refused as a mistake.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from axonsim.config import (
    MAX_REQUESTS,
    Arrival,
    Config,
    ConfigError,
    Constant,
    Distribution,
    Empirical,
    Exponential,
    Gamma,
    LogNormal,
    TraceSource,
    Workload,
)
from axonsim.sim.streams import (
    ARRIVALS,
    CHOICE,
    INPUT_TOKENS,
    OUTPUT_TOKENS,
    THINNING,
    np_stream,
    tenant_purpose,
)

CHUNK = 65536  # arrivals drawn per NumPy call; fixed, so that the draws never depend on the total
NO_OUTPUT = -1  # output_tokens value: the channel's behaviour model decides the length


class Arrivals:
    """Column form of a workload: request i arrives at `times[i]` (seconds, non-decreasing), from
    `projects[project[i]]`, asks for `models[model[i]]`, streams if `stream[i]`, sends
    `input_tokens[i]` tokens and wants `output_tokens[i]` (NO_OUTPUT: the channel decides);
    `tokens[i]` is the estimate local TPM limits and quotas count. Any driver can replay it."""

    __slots__ = ("times", "model", "stream", "models", "project", "projects", "input_tokens", "output_tokens",
                 "tokens", "context_tokens")

    def __init__(self, times: list[float], model: list[int], stream: list[bool], models: list[str],
                 project: list[int] | None = None, projects: list[str] | None = None,
                 input_tokens: list[int] | None = None, output_tokens: list[int] | None = None,
                 tokens: list[int] | None = None, context_tokens: list[int] | None = None) -> None:
        n = len(times)
        self.times = times
        self.model = model
        self.stream = stream
        self.models = models
        self.project = project if project is not None else [0] * n
        self.projects = projects if projects is not None else ["default"]
        self.input_tokens = input_tokens if input_tokens is not None else [0] * n
        self.output_tokens = output_tokens if output_tokens is not None else [NO_OUTPUT] * n
        if tokens is None:
            tokens = [i + max(o, 0) for i, o in zip(self.input_tokens, self.output_tokens, strict=True)]
        self.tokens = tokens
        # The context a request needs, as the proxy reckons it (capabilities.needs_of): its prompt
        # plus its max_tokens, if the client set one (not the output it will get).
        self.context_tokens = context_tokens if context_tokens is not None else self.input_tokens
        for name, col in (("model", model), ("stream", stream), ("project", self.project),
                          ("input_tokens", self.input_tokens), ("output_tokens", self.output_tokens),
                          ("tokens", tokens), ("context_tokens", self.context_tokens)):
            if len(col) != n:
                raise ValueError(f"Arrivals: {name} has {len(col)} values for {n} arrival times")

    @classmethod
    def from_gaps(cls, gaps: Sequence[float], model: list[int], stream: list[bool], models: list[str],
                  **columns: Any) -> Arrivals:
        """Arrivals given as gaps (request i arrives gaps[i] after request i-1, the first after t=0)."""
        return cls(np.cumsum(np.asarray(gaps, dtype=np.float64)).tolist(), model, stream, models, **columns)

    @property
    def gaps(self) -> list[float]:
        t = np.asarray(self.times, dtype=np.float64)
        return np.diff(t, prepend=0.0).tolist()

    def __len__(self) -> int:
        return len(self.times)


def require_workload(config: Config) -> Workload:
    if config.workload is None:
        raise ConfigError("workload: this scenario has no workload section; a simulation needs one, e.g.\n"
                          "workload:\n  arrival: {process: poisson, rate: 20}\n  requests: 10000")
    return config.workload


def default_model(config: Config) -> str:
    return config.channels[0].models[0]


def model_shares(config: Config, mix: dict[str, float] | None = None) -> tuple[list[str], list[float]]:
    """Requested models and their normalised shares (default: the first channel's first model)."""
    if mix is None:
        mix = require_workload(config).models
    if not mix:
        return [default_model(config)], [1.0]
    names = list(mix)
    shares = [float(mix[m]) for m in names]
    total = sum(shares)
    return names, [s / total for s in shares]


# --------------------------------------------------------------------------------------------------
# Rate curves


def rate_at(arr: Arrival, t: np.ndarray) -> np.ndarray:
    """λ(t) of a (possibly time-varying) process: base rate, ramp, then the diurnal factor."""
    lam = np.full(t.shape, arr.rate, dtype=np.float64)
    if arr.ramp is not None:
        r = arr.ramp
        frac = np.clip((t - r.start) / r.over, 0.0, 1.0)
        lam = arr.rate + (r.to - arr.rate) * frac
    if arr.diurnal is not None:
        d = arr.diurnal
        lam = lam * (1.0 + d.amplitude * np.sin(2.0 * math.pi * (t - d.phase) / d.period))
    return lam


def max_rate(arr: Arrival) -> float:
    peak = arr.rate if arr.ramp is None else max(arr.rate, arr.ramp.to)
    return peak * (1.0 + (arr.diurnal.amplitude if arr.diurnal is not None else 0.0))


def _varying(arr: Arrival) -> bool:
    return arr.ramp is not None or arr.diurnal is not None


def expected_count(arr: Arrival, t: float) -> float:
    """Λ(t): the expected number of arrivals in [0, t]."""
    if not _varying(arr):
        return arr.rate * t
    grid = np.linspace(0.0, t, 4097)
    lam = rate_at(arr, grid)
    return float(np.sum((lam[1:] + lam[:-1]) * 0.5) * (t / 4096))


# --------------------------------------------------------------------------------------------------
# Drawing


def _arrival_chunks(arr: Arrival, seed: int, tenant: int) -> Iterator[tuple[np.ndarray, float]]:
    """Arrival times in chunks, each with the time up to which the process is known (for thinning,
    the last candidate: a chunk can accept nothing and still move time on)."""
    gaps_rng = np_stream(seed, tenant_purpose(tenant, ARRIVALS))
    thin_rng = np_stream(seed, tenant_purpose(tenant, THINNING)) if _varying(arr) else None
    if arr.process == "gamma":
        assert arr.cv is not None
        shape = 1.0 / (arr.cv * arr.cv)
        scale = (1.0 / arr.rate) / shape
    lam_max = max_rate(arr)
    # A ramp down to 0 ends the process: past its end nothing more can arrive.
    ends = arr.ramp.start + arr.ramp.over if arr.ramp is not None and arr.ramp.to == 0 else math.inf
    last = 0.0
    while True:
        if last >= ends:
            yield np.zeros(0), math.inf
            continue
        if arr.process == "gamma":
            gaps = gaps_rng.gamma(shape, scale, CHUNK)
        else:
            gaps = gaps_rng.exponential(1.0 / lam_max, CHUNK)
        # Accumulated left to right from the previous chunk's end: the same floats one long
        # cumulative sum (or SimPy's clock adding gap after gap) would give.
        t = np.cumsum(np.concatenate(([last], gaps)))[1:]
        last = float(t[-1])
        if thin_rng is not None:
            u = thin_rng.random(CHUNK)
            t = t[u * lam_max < rate_at(arr, t)]
        yield t, last


def _collect(sources: list[Iterator[tuple[np.ndarray, float]]], n: int | None,
             duration: float | None) -> list[np.ndarray]:
    """Each source's arrival times, drawn far enough that the merged first `n` (or all before
    `duration`) are known exactly, then cut there."""
    k = len(sources)
    bufs: list[list[np.ndarray]] = [[] for _ in range(k)]
    known = [0.0] * k
    counts = [0] * k

    def pull(i: int) -> None:
        t, upto = next(sources[i])
        bufs[i].append(t)
        counts[i] += len(t)
        known[i] = upto

    # Arrivals at or before the horizon, counted without concatenating the buffers at every pull
    # (which made drawing a million arrivals quadratic): a source's chunks are in time order and the
    # horizon never moves back, so a chunk whose last time is within it stays counted.
    settled = [0] * k  # arrivals in the source's chunks counted whole
    first_open = [0] * k  # index of the source's first chunk not counted whole
    for i in range(k):
        pull(i)
    while True:
        horizon = min(known)  # every arrival up to here is drawn, in every source
        if horizon == math.inf:  # every source has ended (ramps down to 0)
            break
        if duration is not None and horizon >= duration:
            break
        if n is not None:
            within = 0
            for i, b in enumerate(bufs):
                j = first_open[i]
                while j < len(b) and (len(b[j]) == 0 or b[j][-1] <= horizon):
                    settled[i] += len(b[j])
                    j += 1
                first_open[i] = j
                within += settled[i] + sum(int(np.searchsorted(c, horizon, side="right")) for c in b[j:])
            if within >= n:
                break
        pull(known.index(horizon))
    times = [np.concatenate(b) for b in bufs]
    if duration is not None:
        times = [t[t < duration] for t in times]
    if n is not None and sum(len(t) for t in times) > n:
        merged = np.sort(np.concatenate(times), kind="stable")
        cut = merged[n - 1]
        # keep the first n in merged order: everything before the n-th time, then ties in source order
        out = []
        left = n - sum(int(np.searchsorted(t, cut, side="left")) for t in times)
        for t in times:
            below = int(np.searchsorted(t, cut, side="left"))
            ties = int(np.searchsorted(t, cut, side="right")) - below
            take = min(ties, left)
            left -= take
            out.append(t[:below + take])
        times = out
    return times


def draw_tokens(d: Distribution | None, rng: np.random.Generator, n: int) -> np.ndarray | None:
    """n whole token counts (>= 0) from a distribution, or None when none is given."""
    if d is None:
        return None
    if isinstance(d, Constant):
        x = np.full(n, d.value, dtype=np.float64)
    elif isinstance(d, Exponential):
        x = rng.exponential(d.mean, n)
    elif isinstance(d, LogNormal):
        x = rng.lognormal(math.log(d.median), d.sigma, n)
    elif isinstance(d, Gamma):
        shape = 1.0 / (d.cv * d.cv)
        x = rng.gamma(shape, d.mean / shape, n)
    elif isinstance(d, Empirical):
        x = np.asarray(d.values, dtype=np.float64)[rng.integers(0, len(d.values), n)]
    else:  # pragma: no cover - config.Distribution is closed
        raise TypeError(f"unknown distribution {d!r}")
    return np.maximum(np.rint(x), 0).astype(np.int64)


class _Part:
    """One source's requests before merging: times and per-request columns, local names."""

    __slots__ = ("times", "model", "models", "stream", "project", "input", "output", "max_tokens")

    def __init__(self, times: np.ndarray, model: np.ndarray, models: list[str], stream: np.ndarray,
                 project: list[str] | str, inp: np.ndarray, out: np.ndarray, max_tokens: int | None) -> None:
        self.times = times
        self.model = model
        self.models = models
        self.stream = stream
        self.project = project  # one name for the whole part, or one per request
        self.input = inp
        self.output = out
        self.max_tokens = max_tokens


def _choices(config: Config, seed: int, tenant: int, n: int, mix: dict[str, float] | None,
             stream_share: float) -> tuple[np.ndarray, list[str], np.ndarray]:
    names, shares = model_shares(config, mix)
    u = np_stream(seed, tenant_purpose(tenant, CHOICE)).random((n, 2))  # row i: (model u, stream u)
    if len(names) == 1:
        model = np.zeros(n, dtype=np.int64)
    else:
        cuts = np.cumsum(shares)
        model = np.minimum(np.searchsorted(cuts, u[:, 0], side="right"), len(names) - 1)
    return model, names, u[:, 1] < stream_share


def _synthetic_part(config: Config, seed: int, tenant: int, times: np.ndarray, project: str,
                    mix: dict[str, float] | None, stream_share: float, inp: Distribution | None,
                    out: Distribution | None, max_tokens: int | None) -> _Part:
    n = len(times)
    model, names, stream = _choices(config, seed, tenant, n, mix, stream_share)
    i_tok = draw_tokens(inp, np_stream(seed, tenant_purpose(tenant, INPUT_TOKENS)), n)
    o_tok = draw_tokens(out, np_stream(seed, tenant_purpose(tenant, OUTPUT_TOKENS)), n)
    return _Part(times, model, names, stream, project,
                 i_tok if i_tok is not None else np.zeros(n, dtype=np.int64),
                 o_tok if o_tok is not None else np.full(n, NO_OUTPUT, dtype=np.int64), max_tokens)


def build_arrivals(config: Config, seed: int, requests: int | None = None) -> Arrivals:
    """The scenario's workload as Arrivals (its first `requests` requests, if given)."""
    wl = require_workload(config)
    n = wl.requests if requests is None else requests
    if n is not None and n < 1:
        raise ConfigError(f"requests: must be at least 1, got {n}")
    if requests is not None and wl.requests is not None:
        n = min(requests, wl.requests)  # its first N: never more than the workload has
    if n is not None and n > MAX_REQUESTS:
        raise ConfigError(f"requests: at most {MAX_REQUESTS:,} in one simulation, got {n:,}")
    # A workload bounded by its duration alone is drawn up to one more than the bound, to know.
    bound = n if n is not None else MAX_REQUESTS + 1
    if wl.trace is not None:
        parts = [_trace_part(config, wl, seed, n)]
    elif wl.tenants:
        srcs = [_arrival_chunks(t.arrival, seed, k) for k, t in enumerate(wl.tenants)]
        times = _collect(srcs, bound, wl.duration)
        parts = [_synthetic_part(config, seed, k, times[k], t.project,
                                 t.models if t.models is not None else wl.models,
                                 t.stream if t.stream is not None else wl.stream,
                                 t.input_tokens if t.input_tokens is not None else wl.input_tokens,
                                 t.output_tokens if t.output_tokens is not None else wl.output_tokens,
                                 t.max_tokens if t.max_tokens is not None else wl.max_tokens)
                 for k, t in enumerate(wl.tenants)]
    else:
        assert wl.arrival is not None
        times = _collect([_arrival_chunks(wl.arrival, seed, 0)], bound, wl.duration)
        parts = [_synthetic_part(config, seed, 0, times[0], wl.project, wl.models, wl.stream,
                                 wl.input_tokens, wl.output_tokens, wl.max_tokens)]
    arrivals = _merge(parts)
    if len(arrivals) > MAX_REQUESTS:
        raise ConfigError(f"workload: its duration at its rate makes more than {MAX_REQUESTS:,} requests, the most "
                          "one simulation runs (a shorter duration, or `requests`)")
    if not len(arrivals):
        raise ConfigError("workload: it produces no requests (a duration shorter than the first arrival, or a "
                          "rate that is 0 from the start?)")
    return arrivals


def poisson(config: Config, seed: int, requests: int | None = None) -> Arrivals:
    """Kept for callers of the first simulator: the scenario's workload, whatever its process."""
    return build_arrivals(config, seed, requests)


def _merge(parts: list[_Part]) -> Arrivals:
    models: dict[str, int] = {}
    projects: dict[str, int] = {}
    cols: dict[str, list[np.ndarray]] = {k: [] for k in ("t", "model", "stream", "project", "in", "out", "tok",
                                                          "ctx")}
    for p in parts:
        m = len(p.times)
        remap = np.asarray([models.setdefault(name, len(models)) for name in p.models], dtype=np.int64)
        cols["t"].append(np.asarray(p.times, dtype=np.float64))
        cols["model"].append(remap[p.model] if m else np.zeros(0, dtype=np.int64))
        cols["stream"].append(np.asarray(p.stream, dtype=bool))
        if isinstance(p.project, str):
            cols["project"].append(np.full(m, projects.setdefault(p.project, len(projects)), dtype=np.int64))
        else:
            cols["project"].append(np.asarray([projects.setdefault(x, len(projects)) for x in p.project],
                                              dtype=np.int64))
        cols["in"].append(p.input)
        cols["out"].append(p.output)
        # What the live proxy counts at admission: the prompt plus max_tokens (here: the expected
        # output when the client sets no max_tokens but the workload knows the length).
        extra = np.full(m, p.max_tokens, dtype=np.int64) if p.max_tokens is not None else np.maximum(p.output, 0)
        cols["tok"].append(p.input + extra)
        cols["ctx"].append(p.input + p.max_tokens if p.max_tokens is not None else p.input)
    if len(parts) == 1:  # one source is already in order: its columns as they are (no copies)
        joined = {k: v[0] for k, v in cols.items()}
    else:
        order = np.argsort(np.concatenate(cols["t"]), kind="stable")  # ties keep source order: tenant 0 first
        joined = {k: np.concatenate(v)[order] for k, v in cols.items()}
    return Arrivals(joined["t"].tolist(), joined["model"].tolist(),
                    joined["stream"].tolist(), list(models), joined["project"].tolist(),
                    list(projects) or ["default"], joined["in"].tolist(), joined["out"].tolist(),
                    joined["tok"].tolist(), joined["ctx"].tolist())


# --------------------------------------------------------------------------------------------------
# Traces


class Trace:
    """A trace file's columns, in time order: arrival seconds since its first row (time_scale
    applied), input and output tokens, and — for a usage log — model, stream and project."""

    __slots__ = ("path", "times", "input", "output", "model", "stream", "project", "line")

    def __init__(self, path: Path, times: np.ndarray, inp: np.ndarray, out: np.ndarray,
                 model: list[str] | None = None, stream: np.ndarray | None = None,
                 project: list[str] | None = None, line: np.ndarray | None = None) -> None:
        self.path = path
        self.times = times
        self.input = inp
        self.output = out
        self.model = model
        self.stream = stream
        self.project = project
        self.line = line  # the source line (CSV) or row (Parquet) of each entry, for messages

    def __len__(self) -> int:
        return len(self.times)


AZURE_COLUMNS = ("TIMESTAMP", "ContextTokens", "GeneratedTokens")
# The proxy's requests table (server/store/models.py, RequestRow): the columns a replay needs.
USAGE_COLUMNS = ("created_at", "model", "stream", "prompt_tokens", "completion_tokens")


def trace_path(config: Config, src: TraceSource) -> Path:
    p = Path(src.path)
    if not p.is_absolute() and config.source is not None:
        p = Path(config.source).parent / p
    return p


def _bad(path: Path, where: str, field: str, msg: str) -> ConfigError:
    return ConfigError(f"{path}: {where}: {field}: {msg}")


def _count(value: str, path: Path, line: int, field: str) -> int:
    try:
        v = int(value)
    except ValueError:
        try:
            f = float(value)
        except ValueError:
            raise _bad(path, f"line {line}", field, f"{value!r} is not a whole number") from None
        if not f.is_integer():
            raise _bad(path, f"line {line}", field, f"{value!r} is not a whole number") from None
        v = int(f)
    if v < 0:
        raise _bad(path, f"line {line}", field, f"{v} is negative")
    return v


def read_azure_trace(path: str | Path, time_scale: float = 1.0) -> Trace:
    """TIMESTAMP,ContextTokens,GeneratedTokens (the Azure LLM inference traces). Every row is
    checked; the first bad one is reported with its line number and column."""
    path = Path(path)
    try:
        fh = path.open(newline="")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    with fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if header is None or [h.strip() for h in header][:3] != list(AZURE_COLUMNS):
            raise _bad(path, "line 1", "header", f"expected {','.join(AZURE_COLUMNS)}, got {','.join(header or [])!r}")
        stamps: list[str] = []
        inp: list[int] = []
        out: list[int] = []
        lines: list[int] = []
        for row in reader:
            line = reader.line_num
            if not row or (len(row) == 1 and not row[0].strip()):
                continue  # a blank line (the files end with one)
            if len(row) != len(header):
                raise _bad(path, f"line {line}", "row", f"expected {len(header)} fields, got {len(row)}")
            stamps.append(row[0].strip())
            inp.append(_count(row[1].strip(), path, line, "ContextTokens"))
            out.append(_count(row[2].strip(), path, line, "GeneratedTokens"))
            lines.append(line)
    if not stamps:
        raise ConfigError(f"{path}: the trace has no rows")
    ts = pd.to_datetime(pd.Series(stamps), format="ISO8601", errors="coerce")
    bad = np.flatnonzero(ts.isna().to_numpy())
    if bad.size:
        i = int(bad[0])
        raise _bad(path, f"line {lines[i]}", "TIMESTAMP", f"{stamps[i]!r} is not a timestamp")
    ns = ts.to_numpy().astype("datetime64[ns]").astype(np.int64)
    return _ordered(path, ns, time_scale, np.asarray(inp, dtype=np.int64), np.asarray(out, dtype=np.int64),
                    line=np.asarray(lines, dtype=np.int64))


_TRUE = {"true", "t", "1", "yes", "y"}
_FALSE = {"false", "f", "0", "no", "n", ""}


def read_usage_log(path: str | Path, time_scale: float = 1.0) -> Trace:
    """An export of the proxy's requests table (CSV, or Parquet by its extension): created_at (Unix
    seconds or an ISO timestamp), model, stream, prompt_tokens, completion_tokens; project if present.
    Rows without a model (requests refused before routing) are left out."""
    path = Path(path)
    parquet = path.suffix.lower() in (".parquet", ".pq")
    try:
        df = pd.read_parquet(path) if parquet else pd.read_csv(path, dtype=str, keep_default_na=False)
    except FileNotFoundError:
        raise ConfigError(f"{path}: cannot read: no such file") from None
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise ConfigError(f"{path}: cannot read as {'Parquet' if parquet else 'CSV'}: {exc}") from None
    missing = [c for c in USAGE_COLUMNS if c not in df.columns]
    if missing:
        raise _bad(path, "row 1" if parquet else "line 1", "header",
                   f"missing column(s) {', '.join(missing)} (a usage log needs {', '.join(USAGE_COLUMNS)})")
    if len(df) == 0:
        raise ConfigError(f"{path}: the usage log has no rows")
    # A request refused before its model was read (a bad key, a body that was not JSON) never reached
    # routing: there is nothing of it to replay.
    named = (df["model"].astype(str).str.strip() != "").to_numpy()
    kept = np.flatnonzero(named)
    if kept.size == 0:
        raise ConfigError(f"{path}: no row of the usage log names a model")
    if kept.size < len(df):
        df = df.iloc[kept].reset_index(drop=True)

    def where(i: int) -> str:
        j = int(kept[i])  # the row in the file
        return f"row {j + 1}" if parquet else f"line {j + 2}"  # CSV: line 1 is the header

    created = df["created_at"]
    secs = pd.to_numeric(created, errors="coerce").to_numpy(dtype=np.float64)
    if np.isnan(secs).any():
        stamps = pd.to_datetime(created.astype(str), format="ISO8601", errors="coerce", utc=True)
        nat = stamps.isna().to_numpy()
        bad = np.flatnonzero(np.isnan(secs) & nat)
        if bad.size:
            i = int(bad[0])
            raise _bad(path, where(i), "created_at", f"{created.iloc[i]!r} is neither Unix seconds nor a timestamp")
        secs = np.where(np.isnan(secs), stamps.to_numpy().astype("datetime64[ns]").astype(np.int64) / 1e9, secs)
    if not np.isfinite(secs).all():
        i = int(np.flatnonzero(~np.isfinite(secs))[0])
        raise _bad(path, where(i), "created_at", f"{created.iloc[i]!r} is not a finite time")

    def counts(col: str) -> np.ndarray:
        raw = df[col]
        x = pd.to_numeric(raw, errors="coerce").to_numpy(dtype=np.float64)
        bad = np.flatnonzero(np.isnan(x) | (x < 0) | (x != np.floor(x)))
        if bad.size:
            i = int(bad[0])
            raise _bad(path, where(i), col, f"{raw.iloc[i]!r} is not a whole number >= 0")
        return x.astype(np.int64)

    def flags(col: str) -> np.ndarray:
        raw = df[col]
        if raw.dtype == bool:
            return raw.to_numpy()
        out = np.zeros(len(raw), dtype=bool)
        for i, v in enumerate(raw.astype(str).str.strip().str.lower()):
            if v in _TRUE:
                out[i] = True
            elif v not in _FALSE:
                raise _bad(path, where(i), col, f"{raw.iloc[i]!r} is not true or false")
        return out

    models = df["model"].astype(str).str.strip()
    project = df["project"].astype(str).tolist() if "project" in df.columns else None
    rows = kept.astype(np.int64) + (1 if parquet else 2)
    return _ordered(path, secs, time_scale, counts("prompt_tokens"), counts("completion_tokens"),
                    models.tolist(), flags("stream"), project, rows)


def _ordered(path: Path, stamps: np.ndarray, scale: float, inp: np.ndarray, out: np.ndarray,
             model: list[str] | None = None, stream: np.ndarray | None = None, project: list[str] | None = None,
             line: np.ndarray | None = None) -> Trace:
    """Rows in time order (a stable sort: an export in id order need not be in time order), arrival
    = (t - first) × scale. `stamps` are integer nanoseconds (exact to subtract) or float seconds
    (Unix seconds differ exactly when both are representable; converting them to nanoseconds
    first would round at 1e18)."""
    order = np.argsort(stamps, kind="stable")
    stamps = stamps[order]
    if stamps.dtype.kind == "i":
        times = (stamps - stamps[0]).astype(np.float64) * 1e-9
    else:
        times = stamps - stamps[0]
    if scale != 1.0:
        times = times * scale
    pick = order.tolist()
    return Trace(path, times, inp[order], out[order],
                 [model[i] for i in pick] if model is not None else None,
                 stream[order] if stream is not None else None,
                 [project[i] for i in pick] if project is not None else None,
                 line[order] if line is not None else None)


_TRACES: dict[tuple[str, str, float, float], Trace] = {}


def read_trace(config: Config, src: TraceSource) -> Trace:
    """The trace a scenario names, read once per process (sweeps replay it many times)."""
    path = trace_path(config, src)
    try:
        mtime = path.stat().st_mtime
    except OSError:
        mtime = -1.0
    key = (str(path.resolve()) if mtime >= 0 else str(path), src.format, src.time_scale, mtime)
    tr = _TRACES.get(key)
    if tr is None:
        reader = read_azure_trace if src.format == "azure" else read_usage_log
        tr = reader(path, src.time_scale)
        if len(_TRACES) > 16:
            _TRACES.clear()
        _TRACES[key] = tr
    return tr


def _trace_part(config: Config, wl: Workload, seed: int, n: int | None) -> _Part:
    assert wl.trace is not None
    tr = read_trace(config, wl.trace)
    m = len(tr)
    if wl.duration is not None:
        m = int(np.searchsorted(tr.times, wl.duration, side="left"))
    if n is not None:
        m = min(m, n)
    if m < 1:
        raise ConfigError(f"{config.where('workload.duration')}: no trace row arrives within it")
    times = tr.times[:m]
    # A usage log knows its models and streams; workload.models / a stream share override them.
    if tr.model is not None and wl.models is None:
        served = {x for ch in config.channels for x in [*ch.models, *ch.model_mapping]}
        names: dict[str, int] = {}
        model = np.empty(m, dtype=np.int64)
        for i, name in enumerate(tr.model[:m]):
            if name not in served:
                line = int(tr.line[i]) if tr.line is not None else i + 2
                kind = "row" if tr.path.suffix.lower() in (".parquet", ".pq") else "line"
                raise _bad(tr.path, f"{kind} {line}", "model",
                           f"no channel of the scenario serves {name!r} (set workload.models to replay it "
                           "with a model mix instead)")
            model[i] = names.setdefault(name, len(names))
        model_names = list(names)
        stream = tr.stream[:m] if tr.stream is not None else np.zeros(m, dtype=bool)
        if "stream" in wl.model_fields_set:
            stream = _choices(config, seed, 0, m, None, wl.stream)[2]
    else:
        model, model_names, stream = _choices(config, seed, 0, m, wl.models, wl.stream)
    project: list[str] | str = tr.project[:m] if tr.project is not None else wl.project
    out = tr.output[:m] if wl.output_tokens is None else draw_tokens(
        wl.output_tokens, np_stream(seed, OUTPUT_TOKENS), m)
    inp = tr.input[:m] if wl.input_tokens is None else draw_tokens(wl.input_tokens, np_stream(seed, INPUT_TOKENS), m)
    assert out is not None and inp is not None
    return _Part(times, model, model_names, stream, project, inp, out, wl.max_tokens)


# --------------------------------------------------------------------------------------------------
# The run's horizon and the checks against it


def horizon(config: Config) -> tuple[float, str]:
    """When the scenario's own arrivals are expected to end (seconds), and how that was worked out.
    Expected, not drawn: a check against it must not depend on the seed."""
    wl = require_workload(config)
    if wl.trace is not None:
        tr = read_trace(config, wl.trace)
        m = len(tr) if wl.requests is None else min(len(tr), wl.requests)
        end = float(tr.times[m - 1])
        if wl.duration is not None:
            end = min(end, wl.duration)
        return end, f"{m} trace rows"
    procs = [t.arrival for t in wl.tenants] if wl.tenants else [wl.arrival]
    total_rate = sum(p.rate for p in procs if p is not None)
    if wl.requests is None:
        assert wl.duration is not None
        return wl.duration, f"duration {wl.duration:g} s"
    n = wl.requests

    def count(t: float) -> float:
        return sum(expected_count(p, t) for p in procs if p is not None)

    hi = n / total_rate
    while count(hi) < n and hi < 1e9:  # a ramp down to 0 may never reach n: its end is the horizon then
        hi *= 2
    lo = 0.0
    for _ in range(100):
        mid = (lo + hi) / 2
        if count(mid) < n:
            lo = mid
        else:
            hi = mid
    # Processes that ramp down to 0 stop at the ramp's end, whatever n asks for.
    last = max(p.ramp.start + p.ramp.over if p is not None and p.ramp is not None and p.ramp.to == 0 else math.inf
               for p in procs)
    end = min(hi, last) if wl.duration is None else min(hi, last, wl.duration)
    varying = any(p is not None and _varying(p) for p in procs)
    how = (f"{n} requests at {total_rate:g}/s" if not varying else f"{n} requests along the rate curve")
    return end, how


def check_scenario(config: Config) -> float | None:
    """Refuse what the workload makes impossible: a scheduled incident that starts after the run's
    arrivals end can never be seen. Returns the horizon (None when there is nothing to check)."""
    if not any(ch.behavior.incidents for ch in config.channels):
        return None
    end, how = horizon(config)
    for i, ch in enumerate(config.channels):
        for j, inc in enumerate(ch.behavior.incidents):
            if inc.start >= end:
                where = config.where(f"channels[{i}].behavior.incidents[{j}].start")
                raise ConfigError(f"{where}: the incident starts at {inc.start:g} s, after the run's arrivals "
                                  f"end (about {end:.0f} s: {how}); move it or lengthen the workload")
    return end
