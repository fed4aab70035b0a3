"""Proxy overhead: what AxonSim adds to each request, measured against the mock directly and against
a bare pass-through proxy on the same stack, in the same run.

    python -m benchmarks.proxy_overhead            # full run (~6 min): 2 repeats, 4 s cells, 100k + 50k soak
    python -m benchmarks.proxy_overhead --quick    # ~1 min: 1 repeat, 2 s cells, no soak

Processes (each its own, one uvicorn worker, uvloop + httptools, all on loopback):
    mock      benchmarks.fast_mock: fixed small JSON answer, fixed 22-frame SSE stream
    axonsim   `python -m axonsim serve --config <generated>`: two channels on the mock (two keys
              each, composite strategy), a gateway key (auth on), the store on a temp SQLite file
    bare      benchmarks.bare_proxy: raw ASGI + one aiohttp session + orjson, no gateway work (the same
              HTTP protocol as AxonSim's server; the reference prototype's was uvicorn's own)
    litellm   only when `litellm` is importable (an optional extra; never installed by this script)

Method (docs: shared/reference/proxy-hot-path.md): cells of `wrk -t1 -c{1,16,64} -d{s}` (or the
Python fallback generator) posting a small chat request, non-stream and stream; alternating
direct, proxy, direct, proxy... so each proxy cell is paired with the direct cell just before it;
the second repeat runs the proxies in reverse order.
    added p50/p99       proxy cell − paired direct cell
    ratio               proxy req/s ÷ paired direct req/s
    CPU µs/request      Δ(utime+stime) of the proxy's process tree over the cell ÷ requests
    TTFB added          a sequential probe (raw socket, keep-alive): time to the first `data:` byte
                        of a stream through the proxy − direct, p50 over N requests; on a paced
                        stream (a second mock: role and first content frame, then 5 ms, then the
                        rest; model `gpt-bench-paced`), which times the path to the first content
                        event (the target), and on the burst stream (all 22 frames at once, which
                        usually arrive in one read and are all parsed before the first byte leaves)
    RSS                 VmRSS idle (before any request), after each cell, and after ≥100k requests
                        (full run: soak cells top the proxy up to 100k if the cells have not,
                        then serve at least 50k more: the RSS growth from the first measurement at
                        or past 100k to the end is the "flat after 100k requests" figure)

Verdicts: each target as the issue states it, and each target scaled to this host: the issue
gives its bare prototype's figures on the reference machine, so a target is also a multiple of a
bare proxy (175 µs ÷ 143 µs = 1.22× its CPU, say), which AxonSim is held to against the bare proxy
of the same run (REFERENCE_BARE, `scaled`). The bare proxy here writes through AxonSim's HTTP
protocol (one write per response), which the reference prototype did not: if anything it is faster
than the prototype's design, so the multiples are not looser than the absolute targets.

Writes benchmarks/out/proxy_overhead.json and .md. Figures only: nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import shutil
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
OUT = Path(__file__).resolve().parent / "out"
CLIENT_KEY = "sk-bench-client"
UPSTREAM_KEYS = ["sk-bench-up-a1", "sk-bench-up-a2", "sk-bench-up-b1", "sk-bench-up-b2"]
MODEL = "gpt-bench"
PACED_MODEL = "gpt-bench-paced"  # served by the paced mock (a pause after the first content frame)
PACED_GAP_MS = 5.0
CHAT_PATH = "/v1/chat/completions"
BODY = {"model": MODEL, "messages": [{"role": "user", "content": "Say hello in five words."}], "max_tokens": 32}
CLK_TCK = os.sysconf("SC_CLK_TCK")

# The targets (2-core machine, one worker). `None` bound: reported, not targeted.
TARGETS = {
    "added_p50_c1_ms": 0.35,
    "ratio_c64": 0.20,
    "cpu_us_c64": 175.0,
    "ttfb_added_ms": 0.5,
    "rss_idle_mb": 100.0,
}

# The bare pass-through prototype on the reference machine (its stated ranges). A target
# divided by the prototype's midpoint is the target as a multiple of a bare proxy: that multiple is
# what a run on another host can be held to, against the bare proxy it measures itself (this
# machine is shared, and slower or faster than the reference).
REFERENCE_BARE = {
    "added_p50_c1_ms": (0.26, 0.32),
    "ratio_c64": (0.20, 0.24),
    "cpu_us_c64": (132.0, 154.0),
}


def _mid(r: tuple[float, float]) -> float:
    return (r[0] + r[1]) / 2


# metric → (what it is, the AxonSim/bare bound, higher is better)
SCALED_TARGETS: dict[str, tuple[str, float, bool]] = {
    "added_p50_c1_ms": ("added p50, c=1, non-stream", TARGETS["added_p50_c1_ms"] / _mid(REFERENCE_BARE["added_p50_c1_ms"]),
                        False),
    "ratio_c64": ("throughput ratio c=64, non-stream", TARGETS["ratio_c64"] / _mid(REFERENCE_BARE["ratio_c64"]), True),
    "cpu_us_c64": ("proxy CPU µs/req, c=64, non-stream", TARGETS["cpu_us_c64"] / _mid(REFERENCE_BARE["cpu_us_c64"]),
                   False),
    # The reference gives no bare figure for a stream's first byte: its target is scaled by the
    # bare proxy's added latency at c=1, the nearest measure of the same path (request in, first
    # upstream bytes out), though taken by another instrument (wrk's cell, not the probe).
    "ttfb_added_ms": ("stream TTFB added, paced (÷ bare's added p50 at c=1)",
                      TARGETS["ttfb_added_ms"] / _mid(REFERENCE_BARE["added_p50_c1_ms"]), False),
}


def scaled(summary: dict[str, Any], proxy: str, bare: str = "bare") -> dict[str, dict[str, Any]]:
    """For each SCALED_TARGETS metric: AxonSim's figure ÷ the bare proxy's, repeat by repeat (the
    cells of one repeat run close together), the bound it is held to, and whether the median meets
    it (None: no figures). A pair with a figure ≤ 0 (an added latency that noise made negative) has
    no meaningful ratio: it is left out and counted in `left_out`."""
    a, b = summary.get(proxy, {}), summary.get(bare, {})

    def figures(s: dict[str, Any], metric: str, denominator: bool = False) -> list[float]:
        try:
            if metric == "ttfb_added_ms":
                return list(s["plain_c1"]["added_p50_ms"] if denominator else s["ttfb_added_ms"])
            key, field = {"added_p50_c1_ms": ("plain_c1", "added_p50_ms"), "ratio_c64": ("plain_c64", "ratio"),
                          "cpu_us_c64": ("plain_c64", "cpu_us")}[metric]
            return list(s[key][field])
        except (KeyError, TypeError):
            return []

    out: dict[str, dict[str, Any]] = {}
    for metric, (label, bound, higher) in SCALED_TARGETS.items():
        xs, ys = figures(a, metric), figures(b, metric, denominator=True)
        pairs = list(zip(xs, ys, strict=False))
        ratios = [x / y for x, y in pairs if x > 0 and y > 0]
        med = _median(ratios)
        out[metric] = {"label": label, "ratios": ratios, "bound": bound, "higher_is_better": higher,
                       "left_out": len(pairs) - len(ratios),
                       "met": (med >= bound if higher else med <= bound) if ratios else None}
    return out


# --------------------------------------------------------------------------------------------------
# processes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _stat(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            raw = f.read()
    except OSError:
        return None
    return raw[raw.rindex(")") + 2:].split()  # fields from 3 (state) on


def _tree(pid: int) -> list[int]:
    """pid and its descendants."""
    children: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            st = _stat(int(d))
            if st is not None:
                children.setdefault(int(st[1]), []).append(int(d))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def cpu_seconds(pid: int) -> float:
    """utime + stime of the process tree, seconds."""
    total = 0
    for p in _tree(pid):
        st = _stat(p)
        if st is not None:
            total += int(st[11]) + int(st[12])  # utime, stime (fields 14, 15)
    return total / CLK_TCK


def rss_mb(pid: int) -> float:
    kb = 0
    for p in _tree(pid):
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        kb += int(line.split()[1])
        except OSError:
            pass
    return kb / 1024.0


class Server:
    def __init__(self, name: str, argv: list[str], port: int, health: str, log: Path,
                 env: dict[str, str] | None = None, cwd: Path = ROOT) -> None:
        self.name = name
        self.port = port
        self.health = health
        self.log = log
        self._logf = open(log, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(argv, cwd=cwd, stdout=self._logf, stderr=subprocess.STDOUT,
                                     env={**os.environ, **(env or {})})
        self.pid = self.proc.pid
        self.served = 0  # requests this server answered in measured cells (for the RSS-vs-load view)

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}; see {self.log}")
            try:
                status, _ = http_request(self.port, "GET", self.health, b"", {}, timeout=1.0)
                if status < 500:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"{self.name} did not become ready in {timeout:.0f} s; see {self.log}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._logf.close()


# --------------------------------------------------------------------------------------------------
# a tiny blocking HTTP/1.1 client (sanity checks and the sequential TTFB probe)


class Conn:
    """One keep-alive connection. `post_stream` times the first `data:` byte and the end."""

    def __init__(self, port: int, timeout: float = 10.0) -> None:
        self.port = port
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def close(self) -> None:
        self.sock.close()

    def request(self, method: str, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes, float, float]:
        """(status, body, seconds to the first body byte carrying data, seconds to the end)."""
        lines = [f"{method} {path} HTTP/1.1", f"Host: 127.0.0.1:{self.port}", f"Content-Length: {len(body)}"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        raw = ("\r\n".join(lines) + "\r\n\r\n").encode() + body
        t0 = time.perf_counter()
        self.sock.sendall(raw)
        buf = b""
        first = None
        head_end = -1
        status = 0
        length = None
        chunked = False
        while True:
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("the server closed the connection")
            buf += data
            if head_end < 0:
                head_end = buf.find(b"\r\n\r\n")
                if head_end < 0:
                    continue
                head = buf[:head_end].decode("latin-1").split("\r\n")
                status = int(head[0].split()[1])
                for h in head[1:]:
                    k, _, v = h.partition(":")
                    k = k.strip().lower()
                    if k == "content-length":
                        length = int(v)
                    elif k == "transfer-encoding" and "chunked" in v.lower():
                        chunked = True
            payload = buf[head_end + 4:]
            if first is None and (b"data:" in payload or (not chunked and payload)):
                first = time.perf_counter() - t0
            if length is not None and len(payload) >= length:
                end = time.perf_counter() - t0
                return status, payload[:length], first if first is not None else end, end
            if chunked and payload.endswith(b"0\r\n\r\n") and _chunked_complete(payload):
                end = time.perf_counter() - t0
                return status, _dechunk(payload), first if first is not None else end, end
            if length is None and not chunked and status in (204, 304):
                end = time.perf_counter() - t0
                return status, b"", end, end


def _chunked_complete(payload: bytes) -> bool:
    i = 0
    while True:
        j = payload.find(b"\r\n", i)
        if j < 0:
            return False
        size = int(payload[i:j].split(b";")[0], 16)
        if size == 0:
            return payload.endswith(b"\r\n\r\n")
        i = j + 2 + size + 2
        if i > len(payload):
            return False


def _dechunk(payload: bytes) -> bytes:
    out: list[bytes] = []
    i = 0
    while True:
        j = payload.find(b"\r\n", i)
        size = int(payload[i:j].split(b";")[0], 16)
        if size == 0:
            return b"".join(out)
        out.append(payload[j + 2:j + 2 + size])
        i = j + 2 + size + 2


def http_request(port: int, method: str, path: str, body: bytes, headers: dict[str, str],
                 timeout: float = 10.0) -> tuple[int, bytes]:
    c = Conn(port, timeout)
    try:
        status, data, _, _ = c.request(method, path, body, headers)
        return status, data
    finally:
        c.close()


# --------------------------------------------------------------------------------------------------
# load generation


WRK_LUA = """
local f = io.open("{body}", "rb")
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer {key}"
done = function(summary, latency, requests)
  io.write(string.format('WRKJSON {{"requests":%d,"duration_us":%d,"errors_connect":%d,"errors_read":%d,' ..
    '"errors_write":%d,"errors_status":%d,"errors_timeout":%d,"p50":%d,"p90":%d,"p99":%d,"mean":%f,"max":%d}}\\n',
    summary.requests, summary.duration, summary.errors.connect, summary.errors.read, summary.errors.write,
    summary.errors.status, summary.errors.timeout, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.mean, latency.max))
end
"""


class LoadGen:
    def __init__(self, tmp: Path, force_python: bool = False) -> None:
        self.wrk = None if force_python else shutil.which("wrk")
        self.kind = "wrk" if self.wrk else "python-aiohttp (benchmarks/loadgen.py)"
        self.bodies: dict[bool, Path] = {}
        self.scripts: dict[bool, Path] = {}
        for stream in (False, True):
            b = tmp / f"body_{'stream' if stream else 'plain'}.json"
            b.write_bytes(json.dumps({**BODY, "stream": True} if stream else BODY).encode())
            self.bodies[stream] = b
            s = tmp / f"post_{'stream' if stream else 'plain'}.lua"
            s.write_text(WRK_LUA.format(body=b, key=CLIENT_KEY))
            self.scripts[stream] = s

    def run(self, port: int, stream: bool, conns: int, seconds: float) -> dict[str, Any]:
        url = f"http://127.0.0.1:{port}{CHAT_PATH}"
        if self.wrk:
            argv = [self.wrk, "-t1", f"-c{conns}", f"-d{max(1, round(seconds))}s", "--timeout", "5s",
                    "-s", str(self.scripts[stream]), url]
        else:
            argv = [sys.executable, "-m", "benchmarks.loadgen", "--url", url, "--body-file", str(self.bodies[stream]),
                    "--header", "content-type: application/json", "--header", f"authorization: Bearer {CLIENT_KEY}",
                    "-c", str(conns), "-d", str(seconds)]
        p = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=seconds + 60)
        for line in p.stdout.splitlines():
            if line.startswith("WRKJSON "):
                r: dict[str, Any] = json.loads(line[8:])
                r["rps"] = r["requests"] / (r["duration_us"] / 1e6) if r["duration_us"] else 0.0
                r["errors"] = sum(r[k] for k in ("errors_connect", "errors_read", "errors_write", "errors_status",
                                                 "errors_timeout"))
                return r
        raise RuntimeError(f"load generator failed ({p.returncode}): {p.stdout[-500:]} {p.stderr[-500:]}")


# --------------------------------------------------------------------------------------------------
# the benchmark


def _config_yaml(mock_port: int, paced_port: int, db: Path) -> str:
    base = f"http://127.0.0.1:{mock_port}/v1"
    return f"""# generated by benchmarks/proxy_overhead.py
gateway:
  api_keys:
    - {{key: {CLIENT_KEY}, project: bench, name: bench-client}}
channels:
  - name: mock-a
    type: openai
    base_url: {base}
    api_keys: [{UPSTREAM_KEYS[0]}, {UPSTREAM_KEYS[1]}]
    models: [{MODEL}]
  - name: mock-b
    type: openai
    base_url: {base}
    api_keys: [{UPSTREAM_KEYS[2]}, {UPSTREAM_KEYS[3]}]
    models: [{MODEL}]
  - name: paced
    type: openai
    base_url: http://127.0.0.1:{paced_port}/v1
    api_keys: [{UPSTREAM_KEYS[0]}]
    models: [{PACED_MODEL}]
routing:
  strategy: composite
store:
  url: sqlite+aiosqlite:///{db}
"""


def _litellm_yaml(mock_port: int, paced_port: int) -> str:
    return f"""model_list:
  - model_name: {MODEL}
    litellm_params:
      model: openai/{MODEL}
      api_base: http://127.0.0.1:{mock_port}/v1
      api_key: {UPSTREAM_KEYS[0]}
  - model_name: {PACED_MODEL}
    litellm_params:
      model: openai/{PACED_MODEL}
      api_base: http://127.0.0.1:{paced_port}/v1
      api_key: {UPSTREAM_KEYS[0]}
"""


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.tmp = Path(tempfile.mkdtemp(prefix="axonsim-bench-"))
        self.load = LoadGen(self.tmp, args.python_loadgen)
        self.servers: dict[str, Server] = {}
        self.paced: Server | None = None
        self.cells: list[dict[str, Any]] = []
        self.probes: list[dict[str, Any]] = []
        self.rss: dict[str, list[dict[str, float]]] = {}
        self.rss_idle: dict[str, float] = {}
        self.dbs: dict[str, Path] = {}

    # -- setup -------------------------------------------------------------------------------------

    def start(self) -> None:
        py = sys.executable
        mock_port = free_port()
        self.servers["direct"] = Server("mock", [py, "-m", "benchmarks.fast_mock", "--port", str(mock_port)],
                                        mock_port, "/health", self.tmp / "mock.log")
        self.servers["direct"].wait_ready()
        paced_port = free_port()
        self.paced = Server("paced-mock", [py, "-m", "benchmarks.fast_mock", "--port", str(paced_port),
                                           "--first-gap-ms", str(PACED_GAP_MS)],
                            paced_port, "/health", self.tmp / "paced.log")
        self.paced.wait_ready()
        for label, src in self.args.axonsim:
            name = "axonsim" if label == "axonsim" else f"axonsim-{label}"
            db = self.tmp / f"{name}.db"
            self.dbs[name] = db
            cfg = self.tmp / f"{name}.yaml"
            cfg.write_text(_config_yaml(mock_port, paced_port, db))
            ax_port = free_port()
            # Run from `src` (a source tree: the work tree, or e.g. `git archive` of a commit), which
            # then comes first on sys.path.
            self.servers[name] = Server(name, [py, "-m", "axonsim", "serve", "--config", str(cfg), "--port",
                                               str(ax_port), "--log-level", "warning"],
                                        ax_port, "/health", self.tmp / f"{name}.log",
                                        env={"PYTHONPATH": str(src)}, cwd=src)
        bare_port = free_port()
        self.servers["bare"] = Server("bare", [py, "-m", "benchmarks.bare_proxy", "--port", str(bare_port),
                                               "--upstream", f"http://127.0.0.1:{mock_port}/v1",
                                               "--route", f"{PACED_MODEL}=http://127.0.0.1:{paced_port}/v1"],
                                      bare_port, "/health", self.tmp / "bare.log")
        if importlib.util.find_spec("litellm") is not None and not self.args.no_litellm:
            lcfg = self.tmp / "litellm.yaml"
            lcfg.write_text(_litellm_yaml(mock_port, paced_port))
            lport = free_port()
            self.servers["litellm"] = Server(
                "litellm", [py, "-c", "from litellm.proxy.proxy_cli import run_server; run_server()", "--config",
                            str(lcfg), "--port", str(lport), "--num_workers", "1"],
                lport, "/health/liveliness", self.tmp / "litellm.log")
        for name, s in self.servers.items():
            if name != "direct":
                s.wait_ready(180 if name == "litellm" else 60)
        time.sleep(1.0)  # let start-up work (imports, store migration) settle before the idle RSS
        for name, s in self.servers.items():
            self.rss_idle[name] = rss_mb(s.pid)
            self.rss[name] = []
        self.sanity()

    def proxies(self) -> list[str]:
        return [n for n in self.servers if n != "direct"]

    def axonsims(self) -> list[str]:
        return [n for n in self.servers if n.startswith("axonsim")]

    def sanity(self) -> None:
        headers = {"Content-Type": "application/json", "Authorization": f"Bearer {CLIENT_KEY}"}
        for name, s in self.servers.items():
            c = Conn(s.port)
            try:
                st, body, _, _ = c.request("POST", CHAT_PATH, json.dumps(BODY).encode(), headers)
                if st != 200 or b"Hello there" not in body:
                    raise RuntimeError(f"{name}: non-stream sanity check failed: {st} {body[:300]!r}")
                st, body, _, _ = c.request("POST", CHAT_PATH, json.dumps({**BODY, "stream": True}).encode(), headers)
                if st != 200 or b"[DONE]" not in body or b"tok17" not in body:
                    raise RuntimeError(f"{name}: stream sanity check failed: {st} {body[:300]!r}")
                if name != "direct":
                    st, body, _, _ = c.request("POST", CHAT_PATH,
                                               json.dumps({**BODY, "model": PACED_MODEL, "stream": True}).encode(),
                                               headers)
                    if st != 200 or b"[DONE]" not in body:
                        raise RuntimeError(f"{name}: paced stream sanity check failed: {st} {body[:300]!r}")
                st, body, _, _ = c.request("POST", CHAT_PATH, json.dumps(BODY).encode(),
                                           {"Content-Type": "application/json"})
                if name.startswith("axonsim") and st != 401:
                    raise RuntimeError(f"{name}: a request without a key got {st}, not 401 (auth must be on)")
            finally:
                c.close()

    def stop(self) -> None:
        for s in reversed(list(self.servers.values())):
            s.stop()
        if self.paced is not None:
            self.paced.stop()

    # -- cells -------------------------------------------------------------------------------------

    def cell(self, target: str, stream: bool, conns: int, seconds: float, kind: str = "cell") -> dict[str, Any]:
        s = self.servers[target]
        mock = self.servers["direct"]
        c0, m0 = cpu_seconds(s.pid), cpu_seconds(mock.pid)
        r = self.load.run(s.port, stream, conns, seconds)
        c1, m1 = cpu_seconds(s.pid), cpu_seconds(mock.pid)
        n = max(1, r["requests"])
        s.served += r["requests"]
        rss = rss_mb(s.pid)
        self.rss[target].append({"after_requests": s.served, "rss_mb": rss})
        out = {"kind": kind, "target": target, "stream": stream, "c": conns, "seconds": seconds,
               "requests": r["requests"], "rps": r["rps"], "p50_ms": r["p50"] / 1000.0, "p90_ms": r["p90"] / 1000.0,
               "p99_ms": r["p99"] / 1000.0, "mean_ms": r["mean"] / 1000.0, "errors": r["errors"],
               "errors_status": r["errors_status"], "cpu_us_per_req": (c1 - c0) * 1e6 / n,
               "mock_cpu_us_per_req": (m1 - m0) * 1e6 / n, "rss_mb": rss, "loadavg1": os.getloadavg()[0]}
        self.cells.append(out)
        tag = "stream" if stream else "plain"
        print(f"  {kind:5s} {tag:6s} c={conns:<3d} {target:8s} {r['rps']:9.0f} req/s  p50 {out['p50_ms']:7.3f} ms  "
              f"p99 {out['p99_ms']:7.3f} ms  cpu {out['cpu_us_per_req']:7.1f} µs/req  err {r['errors']}", flush=True)
        return out

    def probe(self, target: str, n: int, paced: bool, warmup: int = 20) -> dict[str, Any]:
        """Sequential streams on one keep-alive connection: time to first data byte and to the end."""
        s = self.servers[target]
        port = self.paced.port if paced and target == "direct" and self.paced is not None else s.port
        headers = {"Content-Type": "application/json", "Authorization": f"Bearer {CLIENT_KEY}"}
        body = json.dumps({**BODY, "model": PACED_MODEL if paced else MODEL, "stream": True}).encode()
        c = Conn(port)
        ttfb, total = [], []
        try:
            for i in range(n + warmup):
                st, _, first, end = c.request("POST", CHAT_PATH, body, headers)
                if st != 200:
                    raise RuntimeError(f"{target}: stream probe got {st}")
                if i >= warmup:
                    ttfb.append(first * 1000.0)
                    total.append(end * 1000.0)
        finally:
            c.close()
        s.served += n + warmup
        ttfb.sort()
        total.sort()
        out = {"target": target, "paced": paced, "n": n, "ttfb_p50_ms": _pct(ttfb, 50), "ttfb_p99_ms": _pct(ttfb, 99),
               "total_p50_ms": _pct(total, 50), "total_p99_ms": _pct(total, 99)}
        self.probes.append(out)
        print(f"  probe  {'paced' if paced else 'burst'} seq  {target:8s} ttfb p50 {out['ttfb_p50_ms']:.3f} ms  total p50 "
              f"{out['total_p50_ms']:.3f} ms  p99 {out['total_p99_ms']:.3f} ms", flush=True)
        return out

    def run(self) -> dict[str, Any]:
        a = self.args
        t_start = time.monotonic()
        self.loadavg_start = os.getloadavg()
        print(f"load generator: {self.load.kind}; targets: {', '.join(self.servers)}", flush=True)
        print("warm-up", flush=True)
        for name in self.servers:
            for stream in (False, True):
                self.cell(name, stream, 16, 1.0, kind="warm")
        pairs: list[dict[str, Any]] = []
        probe_pairs: list[dict[str, Any]] = []
        for rep in range(a.repeats):
            order = self.proxies() if rep % 2 == 0 else list(reversed(self.proxies()))
            print(f"repeat {rep + 1}/{a.repeats} (proxy order: {', '.join(order)})", flush=True)
            for stream in (False, True):
                for conns in a.conns:
                    for p in order:
                        d = self.cell("direct", stream, conns, a.seconds)
                        x = self.cell(p, stream, conns, a.seconds)
                        pairs.append({"repeat": rep, "target": p, "stream": stream, "c": conns,
                                      "direct": d, "proxy": x, **_pair(d, x)})
            for p, paced in [(p, paced) for paced in (True, False) for p in order]:
                d = self.probe("direct", a.probe_n, paced)
                x = self.probe(p, a.probe_n, paced)
                probe_pairs.append({"repeat": rep, "target": p, "paced": paced,
                                    "ttfb_added_ms": x["ttfb_p50_ms"] - d["ttfb_p50_ms"],
                                    "total_added_ms": x["total_p50_ms"] - d["total_p50_ms"],
                                    "ttfb_p99_added_ms": x["ttfb_p99_ms"] - d["ttfb_p99_ms"],
                                    "direct": d, "proxy": x})
        soak: dict[str, Any] = {}
        for name in (self.axonsims() if a.soak else []):
            s = self.servers[name]
            need = a.soak - s.served
            print(f"soak: {name} has served {s.served}; topping up to {a.soak}", flush=True)
            rss_before = rss_mb(s.pid)
            served_before = s.served
            self._top_up(name, a.soak)
            # "Flat after 100k requests": the RSS measured when the soak target was first reached
            # (the cells may have passed it already), against the RSS after at least half as many again.
            rss_at_soak, served_at_soak = next(((t["rss_mb"], t["after_requests"]) for t in self.rss[name]
                                                if t["after_requests"] >= a.soak), (rss_mb(s.pid), s.served))
            self._top_up(name, served_at_soak + a.soak // 2)
            soak[name] = {"requested": a.soak, "needed": max(0, need), "served_total": s.served,
                          "rss_before_mb": rss_before, "served_before": served_before,
                          "rss_at_soak_mb": rss_at_soak, "served_at_soak": served_at_soak,
                          "rss_after_mb": rss_mb(s.pid),
                          "rss_growth_after_soak_mb": rss_mb(s.pid) - rss_at_soak}
        if a.profile:
            self.profile(a.profile, self.axonsims()[-1])
        store = self.store_rows()
        return {
            "meta": self.meta(time.monotonic() - t_start),
            "targets": TARGETS,
            "rss_idle_mb": self.rss_idle,
            "rss_trail": self.rss,
            "store": store,
            "cells": self.cells,
            "pairs": [{k: v for k, v in p.items() if k not in ("direct", "proxy")} |
                      {"direct_rps": p["direct"]["rps"], "proxy_rps": p["proxy"]["rps"],
                       "direct_p50_ms": p["direct"]["p50_ms"], "proxy_p50_ms": p["proxy"]["p50_ms"],
                       "direct_p99_ms": p["direct"]["p99_ms"], "proxy_p99_ms": p["proxy"]["p99_ms"],
                       "cpu_us_per_req": p["proxy"]["cpu_us_per_req"],
                       "mock_cpu_us_per_req": p["direct"]["mock_cpu_us_per_req"],
                       "errors": p["proxy"]["errors"] + p["direct"]["errors"]} for p in pairs],
            "probes": [{k: v for k, v in p.items() if k not in ("direct", "proxy")} |
                       {"direct_ttfb_p50_ms": p["direct"]["ttfb_p50_ms"], "proxy_ttfb_p50_ms": p["proxy"]["ttfb_p50_ms"],
                        "direct_total_p50_ms": p["direct"]["total_p50_ms"],
                        "proxy_total_p50_ms": p["proxy"]["total_p50_ms"]} for p in probe_pairs],
            "soak": soak,
            "summary": (summary := summarize(pairs, probe_pairs, self.rss_idle, self.rss, soak, self.proxies())),
            "scaled": {p: scaled(summary, p) for p in self.axonsims()} if "bare" in self.servers else {},
        }

    def _top_up(self, name: str, total: int) -> None:
        """c=64 non-stream cells until `name` has served `total` requests."""
        s = self.servers[name]
        rounds = 0
        while s.served < total and rounds < 20:
            last = [c for c in self.cells if c["target"] == name and c["c"] == 64 and not c["stream"]]
            rps = max(500.0, last[-1]["rps"] if last else 2000.0)
            secs = min(30.0, max(2.0, (total - s.served) / rps * 1.1))
            self.cell(name, False, 64, secs, kind="soak")
            rounds += 1

    def profile(self, seconds: float, name: str) -> None:
        """py-spy (if installed) on the AxonSim process during an extra c=64 non-stream cell; the
        cell's figures are not used (the sampler costs the proxy CPU)."""
        spy = shutil.which("py-spy")
        if not spy:
            print("profile: py-spy is not installed (pip install py-spy); skipped", flush=True)
            return
        s = self.servers[name]
        for stream in (False, True):
            out = self.args.out / f"profile_{name}_{'stream' if stream else 'plain'}_c64.txt"
            p = subprocess.Popen([spy, "record", "-p", str(s.pid), "-d", str(int(seconds)), "-r", "250", "-f", "raw",
                                  "-o", str(out), "--nonblocking"], stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL)
            time.sleep(0.5)
            self.cell(name, stream, 64, seconds, kind="prof")
            p.wait(seconds + 30)
            print(f"profile: {out}", flush=True)

    def store_rows(self) -> dict[str, Any]:
        time.sleep(1.0)  # the writer flushes every 0.5 s by default
        out = {name: self._store_rows(db) for name, db in self.dbs.items()}
        for name, st in out.items():
            st.update(self._store_counts(self.servers[name].port))
        return out

    def _store_counts(self, port: int) -> dict[str, Any]:
        """The store's own counts from /metrics: records dropped (queue full, database down) must be 0."""
        try:
            status, data = http_request(port, "GET", "/metrics", b"", {})
        except OSError as exc:
            return {"metrics_note": f"/metrics unreachable: {exc}"}
        counts: dict[str, Any] = {}
        for line in data.decode("utf-8", "replace").splitlines():
            for key in ("written", "dropped"):
                if line.startswith(f"axonsim_store_{key}_total "):
                    counts[key] = int(float(line.split()[1]))
        return counts if status == 200 else {"metrics_note": f"/metrics answered {status}"}

    def _store_rows(self, db: Path) -> dict[str, Any]:
        if not db.exists():
            return {"wired": False, "note": "no SQLite file was created: `axonsim serve` did not start the store"}
        try:
            con = sqlite3.connect(db)
            try:
                tables = [r[0] for r in con.execute("select name from sqlite_master where type='table'")]
                counts = {t: con.execute(f'select count(*) from "{t}"').fetchone()[0] for t in tables}
            finally:
                con.close()
        except sqlite3.Error as exc:
            return {"wired": False, "note": f"could not read the store: {exc}"}
        return {"wired": counts.get("requests", 0) > 0, "rows": counts}

    def meta(self, elapsed: float) -> dict[str, Any]:
        def ver(mod: str) -> str | None:
            try:
                from importlib.metadata import version

                return version(mod)
            except Exception:
                return None

        wrk_version = None
        if self.load.wrk:
            p = subprocess.run([self.load.wrk, "-v"], capture_output=True, text=True)
            wrk_version = (p.stdout or p.stderr).splitlines()[0] if (p.stdout or p.stderr) else None
        try:
            commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                    text=True).stdout.strip()
        except OSError:
            commit = None
        return {"label": self.args.label, "loadavg_end": os.getloadavg(), "loadavg_start": self.loadavg_start,
                "axonsim_sources": {("axonsim" if lb == "axonsim" else f"axonsim-{lb}"): str(src)
                                    for lb, src in self.args.axonsim}, "when": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "elapsed_s": round(elapsed, 1),
                "quick": self.args.quick, "repeats": self.args.repeats, "cell_seconds": self.args.seconds,
                "conns": self.args.conns, "probe_n": self.args.probe_n, "load_generator": self.load.kind,
                "wrk": wrk_version, "cpus": os.cpu_count(), "python": platform.python_version(),
                "kernel": platform.release(), "commit": commit,
                "versions": {m: ver(m) for m in ("uvicorn", "uvloop", "httptools", "aiohttp", "orjson", "litellm")}}


def _pct(xs: list[float], p: float) -> float:
    if not xs:
        return float("nan")
    return xs[min(len(xs) - 1, int(p / 100.0 * len(xs)))]


def _pair(d: dict[str, Any], x: dict[str, Any]) -> dict[str, Any]:
    return {"added_p50_ms": x["p50_ms"] - d["p50_ms"], "added_p99_ms": x["p99_ms"] - d["p99_ms"],
            "ratio": x["rps"] / d["rps"] if d["rps"] else float("nan")}


def summarize(pairs: list[dict[str, Any]], probes: list[dict[str, Any]], rss_idle: dict[str, float],
              rss: dict[str, list[dict[str, float]]], soak: dict[str, Any],
              proxies: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for p in proxies:
        s: dict[str, Any] = {}
        for stream in (False, True):
            for conns in sorted({q["c"] for q in pairs}):
                sel = [q for q in pairs if q["target"] == p and q["stream"] == stream and q["c"] == conns]
                if not sel:
                    continue
                key = f"{'stream' if stream else 'plain'}_c{conns}"
                s[key] = {
                    "added_p50_ms": [q["added_p50_ms"] for q in sel],
                    "added_p99_ms": [q["added_p99_ms"] for q in sel],
                    "ratio": [q["ratio"] for q in sel],
                    "rps": [q["proxy"]["rps"] for q in sel],
                    "direct_rps": [q["direct"]["rps"] for q in sel],
                    "p50_ms": [q["proxy"]["p50_ms"] for q in sel],
                    "p99_ms": [q["proxy"]["p99_ms"] for q in sel],
                    "cpu_us": [q["proxy"]["cpu_us_per_req"] for q in sel],
                    "errors": sum(q["proxy"]["errors"] + q["direct"]["errors"] for q in sel),
                }
        pr = [q for q in probes if q["target"] == p and q["paced"]]
        s["ttfb_added_ms"] = [q["ttfb_added_ms"] for q in pr]
        s["stream_total_added_ms"] = [q["total_added_ms"] for q in pr]
        pr = [q for q in probes if q["target"] == p and not q["paced"]]
        s["ttfb_burst_added_ms"] = [q["ttfb_added_ms"] for q in pr]
        s["stream_burst_total_added_ms"] = [q["total_added_ms"] for q in pr]
        trail = rss.get(p, [])
        s["rss_idle_mb"] = rss_idle.get(p)
        s["rss_after_mb"] = trail[-1]["rss_mb"] if trail else None
        s["served"] = trail[-1]["after_requests"] if trail else 0
        # "flat": RSS after the last cell vs after the first measured cell (past warm-up)
        if len(trail) > 3:
            s["rss_growth_mb"] = trail[-1]["rss_mb"] - trail[2]["rss_mb"]
            s["rss_growth_from_requests"] = trail[2]["after_requests"]
        out[p] = s
    direct = [q["direct"] for q in pairs]
    out["direct"] = {}
    for stream in (False, True):
        for conns in sorted({q["c"] for q in pairs}):
            sel = [d for d in direct if d["stream"] == stream and d["c"] == conns]
            if sel:
                out["direct"][f"{'stream' if stream else 'plain'}_c{conns}"] = {
                    "rps": [d["rps"] for d in sel], "p50_ms": [d["p50_ms"] for d in sel],
                    "p99_ms": [d["p99_ms"] for d in sel], "mock_cpu_us": [d["mock_cpu_us_per_req"] for d in sel]}
    out["direct"]["rss_idle_mb"] = rss_idle.get("direct")
    for name, sk in soak.items():
        out[name]["soak"] = sk
    return out


# --------------------------------------------------------------------------------------------------
# Markdown


def _median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def _fmt(xs: list[float], f: str = "{:.2f}") -> str:
    """Two values or fewer as `a / b`; more as `median (min–max)`."""
    if not xs:
        return "–"
    if len(xs) <= 2:
        return " / ".join(f.format(x) for x in xs)
    return f"{f.format(_median(xs))} ({f.format(min(xs))}–{f.format(max(xs))})"


def _ok(value: float, bound: float, higher_is_better: bool = False) -> str:
    if value != value:  # nan
        return "–"
    return "✅" if (value >= bound if higher_is_better else value <= bound) else "❌"


def markdown(res: dict[str, Any], before: dict[str, Any] | None = None) -> str:
    m = res["meta"]
    S = res["summary"]
    proxies = [p for p in S if p != "direct"]
    axs = [p for p in proxies if p.startswith("axonsim")]
    L: list[str] = []
    L.append("# Proxy overhead: AxonSim vs direct-to-mock vs a bare pass-through proxy")
    L.append("")
    la0, la1 = m.get("loadavg_start"), m.get("loadavg_end")
    L.append(f"Run `{m['label']}` at {m['when']} (commit {m['commit']}), {m['cpus']} CPUs, Python {m['python']}, "
             f"kernel {m['kernel']}; load generator {m['load_generator']}"
             + (f" ({m['wrk']})" if m.get("wrk") else "") + f"; {m['repeats']} repeat(s) of {m['cell_seconds']:g} s "
             f"cells at c = {', '.join(map(str, m['conns']))}; stream probe {m['probe_n']} sequential requests; "
             f"run took {m['elapsed_s']:.0f} s"
             + (f"; 1-min load average {la0[0]:.2f} before, {la1[0]:.2f} after" if la0 and la1 else "")
             + ". Versions: " + ", ".join(f"{k} {v}" for k, v in m["versions"].items() if v) + ".")
    L.append("")
    srcs = m.get("axonsim_sources", {})
    L.append("Mock: benchmarks/fast_mock.py (raw ASGI, fixed JSON answer / 22-frame SSE stream). AxonSim: "
             "`axonsim serve`, one worker, two channels × two keys on the mock, composite routing, a gateway key "
             "(auth on), store URL on a temp SQLite file"
             + (" (source trees: " + ", ".join(f"{k} = `{v}`" for k, v in srcs.items()) + ")" if srcs else "")
             + ". Bare: benchmarks/bare_proxy.py (same stack, no gateway work). Each proxy cell is paired with the "
             "direct cell just before it; `a / b` are the repeats (with more than two: median (min–max)); a ✅/❌ "
             "verdict compares the median with the target.")
    L.append("")
    for name, st in res["store"].items():
        if st.get("wired"):
            dropped = st.get("dropped")
            L.append(f"Usage recording ({name}): on (rows written: {st['rows']}; records dropped: "
                     f"{'unknown' if dropped is None else dropped}{' ❌' if dropped else ''}).")
        else:
            L.append(f"Usage recording ({name}): **not active** — {st.get('note', 'no request rows were written')} "
                     f"(rows: {st.get('rows', {})}); these figures exclude the store's cost.")
    L.append("")
    L.append("## Against the targets (issue 6, item 8)")
    L.append("")
    cols = ["metric", "target"]
    B = before["summary"] if before is not None else None
    if B is not None:
        cols.append("AxonSim (--compare run)")
    cols += proxies
    L.append("| " + " | ".join(cols) + " |")
    L.append("|" + "---|" * len(cols))

    def row(name: str, target: str, getter: Any, bound: float | None, higher: bool = False,
            f: str = "{:.2f}") -> None:
        cells = [name, target]

        def val(summary: dict[str, Any], p: str) -> list[float]:
            try:
                v = getter(summary[p])
            except (KeyError, TypeError, IndexError):
                return []
            return [x for x in v if x is not None]

        if B is not None:
            bp = next((p for p in B if p.startswith("axonsim")), "axonsim")
            cells.append(_fmt(val(B, bp), f))
        for p in proxies:
            v = val(S, p)
            mark = f" {_ok(_median(v), bound, higher)}" if bound is not None and p in axs and v else ""
            cells.append(_fmt(v, f) + mark)
        L.append("| " + " | ".join(cells) + " |")

    row("added p50, c=1, non-stream (ms)", "≤ 0.35", lambda s: s["plain_c1"]["added_p50_ms"],
        TARGETS["added_p50_c1_ms"], f="{:.3f}")
    row("added p99, c=1, non-stream (ms)", "–", lambda s: s["plain_c1"]["added_p99_ms"], None, f="{:.3f}")
    row("throughput ratio c=64, non-stream", "≥ 0.20", lambda s: s["plain_c64"]["ratio"], TARGETS["ratio_c64"],
        True, f="{:.3f}")
    row("req/s c=64, non-stream", "–", lambda s: s["plain_c64"]["rps"], None, f="{:.0f}")
    row("proxy CPU µs/req, c=64, non-stream", "≤ 175", lambda s: s["plain_c64"]["cpu_us"],
        TARGETS["cpu_us_c64"], f="{:.0f}")
    row("proxy CPU µs/req, c=1, non-stream", "(≤ 350 suggested)", lambda s: s["plain_c1"]["cpu_us"], 350.0,
        f="{:.0f}")
    row("stream TTFB added, p50 (ms), paced stream", "≤ 0.5", lambda s: s["ttfb_added_ms"],
        TARGETS["ttfb_added_ms"], f="{:.3f}")
    row("stream TTFB added, p50 (ms), burst stream", "–", lambda s: s["ttfb_burst_added_ms"], None, f="{:.3f}")
    row("stream total added, p50 (ms), burst stream", "–", lambda s: s["stream_burst_total_added_ms"], None,
        f="{:.3f}")
    row("throughput ratio c=64, stream", "–", lambda s: s["stream_c64"]["ratio"], None, f="{:.3f}")
    row("proxy CPU µs/req, c=64, stream", "–", lambda s: s["stream_c64"]["cpu_us"], None, f="{:.0f}")
    row("RSS idle (MB)", "≤ 100", lambda s: [s["rss_idle_mb"]], TARGETS["rss_idle_mb"], f="{:.1f}")
    row("RSS after the run (MB)", "flat", lambda s: [s["rss_after_mb"]], None, f="{:.1f}")
    row("requests served", "≥ 150k (full run)", lambda s: [s["served"]], None, f="{:.0f}")
    row("RSS growth after the soak target (full run: from 100k requests on, MB)", "flat", lambda s: [s["soak"]["rss_growth_after_soak_mb"]]
        if s.get("soak") else [], None, f="{:+.1f}")
    L.append("")
    if "bare" in S:
        L.append("## Against the targets, scaled to this host (÷ the bare proxy of the same run)")
        L.append("")
        L.append("The issue's bare prototype measured " + ", ".join(
            f"{k} {lo:g}–{hi:g}" for k, (lo, hi) in REFERENCE_BARE.items()) + " on the reference machine. Each "
            "target divided by the midpoint of that range is the multiple of a bare proxy the target allows; "
            "here AxonSim's figure is divided by this run's bare proxy, repeat by repeat (`a / b`).")
        L.append("")
        L.append("| metric | bound (AxonSim ÷ bare) | " + " | ".join(axs) + " |")
        L.append("|---|---|" + "---|" * len(axs))
        views = {p: scaled(S, p) for p in axs}
        for metric, (label, bound, higher) in SCALED_TARGETS.items():
            cells = [label, f"{'≥' if higher else '≤'} {bound:.2f}"]
            for p in axs:
                v = views[p][metric]
                cells.append(_fmt(v["ratios"]) + (f" {_ok(_median(v['ratios']), bound, higher)}" if v["ratios"] else "")
                             + (f" ({v['left_out']} repeat(s) left out: a figure ≤ 0)" if v["left_out"] else ""))
            L.append("| " + " | ".join(cells) + " |")
        L.append("")
    for p in proxies:
        sp = S[p]
        sk = sp.get("soak")
        if sk:
            L.append(f"RSS of {p}: idle {sp.get('rss_idle_mb', 0):.1f} MB; {sk['rss_before_mb']:.1f} MB after "
                     f"{sk['served_before']} requests; {sk['rss_at_soak_mb']:.1f} MB after {sk['served_at_soak']} "
                     f"requests; **{sk['rss_after_mb']:.1f} MB after {sk['served_total']} requests "
                     f"({sk['rss_growth_after_soak_mb']:+.1f} MB after {sk['requested']})** "
                     f"(soak: c=64 non-stream).")
        if "rss_growth_mb" in sp:
            L.append(f"{p}: RSS growth from the first measured cell ({sp['rss_growth_from_requests']} requests) to "
                     f"the end ({sp['served']} requests): {sp['rss_growth_mb']:+.1f} MB.")
    L.append("")
    L.append("## Every cell (`a / b` = repeats)")
    L.append("")
    L.append("| mode | c | target | req/s | ratio to direct | p50 ms | p99 ms | added p50 ms | added p99 ms "
             "| proxy CPU µs/req | errors |")
    L.append("|---|---|---|---|---|---|---|---|---|---|---|")
    for stream in (False, True):
        mode = "stream" if stream else "non-stream"
        for c in m["conns"]:
            key = f"{'stream' if stream else 'plain'}_c{c}"
            d = S["direct"].get(key)
            if d:
                L.append(f"| {mode} | {c} | direct (mock; every paired cell) | {_fmt(d['rps'], '{:.0f}')} | 1 | "
                         f"{_fmt(d['p50_ms'], '{:.3f}')} | {_fmt(d['p99_ms'], '{:.3f}')} | – | – | "
                         f"(mock {_fmt(d['mock_cpu_us'], '{:.0f}')}) | |")
            for p in proxies:
                x = S[p].get(key)
                if not x:
                    continue
                L.append(f"| {mode} | {c} | {p} | {_fmt(x['rps'], '{:.0f}')} | {_fmt(x['ratio'], '{:.3f}')} | "
                         f"{_fmt(x['p50_ms'], '{:.3f}')} | {_fmt(x['p99_ms'], '{:.3f}')} | "
                         f"{_fmt(x['added_p50_ms'], '{:.3f}')} | {_fmt(x['added_p99_ms'], '{:.3f}')} | "
                         f"{_fmt(x['cpu_us'], '{:.0f}')} | {x['errors']} |")
    L.append("")
    L.append("## Stream probe (sequential, keep-alive; p50 of time to the first `data:` byte and to the end)")
    L.append("")
    L.append(f"Paced: role and first content frame, then {PACED_GAP_MS:g} ms, then the rest (times the path to the "
             "first content event). Burst: all 22 frames at once (they usually arrive in one read, and a proxy "
             "that parses what it read before sending shows it in its TTFB).")
    L.append("")
    L.append("| repeat | stream | target | direct TTFB ms | proxy TTFB ms | TTFB added ms | direct total ms "
             "| proxy total ms | total added ms |")
    L.append("|---|---|---|---|---|---|---|---|---|")
    for q in res["probes"]:
        L.append(f"| {q['repeat'] + 1} | {'paced' if q['paced'] else 'burst'} | {q['target']} | "
                 f"{q['direct_ttfb_p50_ms']:.3f} | {q['proxy_ttfb_p50_ms']:.3f} | "
                 f"{q['ttfb_added_ms']:.3f} | {q['direct_total_p50_ms']:.3f} | {q['proxy_total_p50_ms']:.3f} | "
                 f"{q['total_added_ms']:.3f} |")
    L.append("")
    L.append("Noise: the direct baseline itself moves by ±10–15 % between cells (scheduler placement of the load "
             "generator and the mock on 2 cores), more when other work shares the machine (see the load average "
             "above), so ratios carry that; CPU µs/request is the steadier figure. With one worker the proxy's "
             "ceiling is ≈ 10⁶ / (CPU µs per request) req/s.")
    L.append("")
    return "\n".join(L)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="~1 minute: 1 repeat, 2 s cells, short probe, no soak")
    p.add_argument("--repeats", type=int, default=None)
    p.add_argument("--seconds", type=float, default=None, help="per cell")
    p.add_argument("--conns", type=int, nargs="+", default=[1, 16, 64])
    p.add_argument("--probe-n", type=int, default=None, help="sequential stream requests per probe")
    p.add_argument("--soak", type=int, default=None, help="serve at least this many requests through AxonSim "
                   "before the final RSS (full run: 100000; 0 = off)")
    p.add_argument("--profile", type=float, default=0.0, help="seconds of py-spy sampling of AxonSim at c=64, "
                   "after the measurements (writes out/profile_*.txt; py-spy must be installed)")
    p.add_argument("--python-loadgen", action="store_true", help="use benchmarks/loadgen.py even if wrk exists")
    p.add_argument("--no-litellm", action="store_true", help="skip LiteLLM even if it is importable")
    p.add_argument("--label", default="run")
    p.add_argument("--axonsim", action="append", default=None, metavar="LABEL=DIR",
                   help="run AxonSim from this source tree (repeatable: several trees are measured side by side, "
                        "alternating, e.g. before=/tmp/head after=.); default: the work tree")
    p.add_argument("--compare", type=Path, help="an earlier proxy_overhead.json: its AxonSim figures go beside "
                   "this run's in the targets table")
    p.add_argument("--out", type=Path, default=OUT)
    a = p.parse_args(argv)
    a.axonsim = [(lb, Path(d).resolve()) for lb, _, d in (x.partition("=") for x in a.axonsim)] if a.axonsim \
        else [("axonsim", ROOT)]
    a.repeats = a.repeats or (1 if a.quick else 2)
    a.seconds = a.seconds or (2.0 if a.quick else 4.0)
    a.probe_n = a.probe_n or (100 if a.quick else 300)
    if a.soak is None:
        a.soak = 0 if a.quick else 100_000
    a.out.mkdir(parents=True, exist_ok=True)
    before = json.loads(a.compare.read_text()) if a.compare else None
    bench = Bench(a)
    try:
        bench.start()
        res = bench.run()
    finally:
        bench.stop()
    (a.out / "proxy_overhead.json").write_text(json.dumps(res, indent=1))
    (a.out / "proxy_overhead.md").write_text(markdown(res, before))
    print(f"wrote {a.out / 'proxy_overhead.json'} and {a.out / 'proxy_overhead.md'}")
    shutil.rmtree(bench.tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
