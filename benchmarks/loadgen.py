"""Fallback load generator (when `wrk` is not installed): closed-loop HTTP POSTs from c concurrent
connections for a fixed time, in its own process, on aiohttp + uvloop. Prints one JSON line with
the same fields as the benchmark's wrk script (latencies in µs).

It is itself a Python client, so it saturates earlier than wrk: its absolute req/s are lower, and
ratios measured with it understate what the servers can do. The benchmark says which generator ran.

    python -m benchmarks.loadgen --url http://127.0.0.1:9001/v1/chat/completions --body-file b.json \
        --header 'authorization: Bearer k' -c 16 -d 3
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

import aiohttp


def _pct(sorted_us: list[float], p: float) -> float:
    if not sorted_us:
        return 0.0
    return sorted_us[min(len(sorted_us) - 1, int(p / 100.0 * len(sorted_us)))]


async def run(url: str, body: bytes, headers: dict[str, str], conns: int, seconds: float,
              max_requests: int) -> dict[str, float]:
    lat: list[float] = []
    errors = {"connect": 0, "read": 0, "status": 0, "timeout": 0}
    deadline = time.perf_counter() + seconds
    timeout = aiohttp.ClientTimeout(total=10)
    connector = aiohttp.TCPConnector(limit=conns, limit_per_host=0)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout,
                                     skip_auto_headers=("User-Agent",)) as s:
        async def worker() -> None:
            while time.perf_counter() < deadline and len(lat) < max_requests:
                t0 = time.perf_counter()
                try:
                    async with s.post(url, data=body, headers=headers) as r:
                        await r.read()
                        if r.status >= 400:
                            errors["status"] += 1
                except TimeoutError:
                    errors["timeout"] += 1
                    continue
                except aiohttp.ClientConnectionError:
                    errors["read"] += 1
                    continue
                lat.append((time.perf_counter() - t0) * 1e6)

        t_start = time.perf_counter()
        await asyncio.gather(*[worker() for _ in range(conns)])
        elapsed = time.perf_counter() - t_start
    lat.sort()
    return {"requests": len(lat), "duration_us": elapsed * 1e6, "errors_connect": errors["connect"],
            "errors_read": errors["read"], "errors_write": 0, "errors_status": errors["status"],
            "errors_timeout": errors["timeout"], "p50": _pct(lat, 50), "p90": _pct(lat, 90),
            "p99": _pct(lat, 99), "mean": sum(lat) / len(lat) if lat else 0.0, "max": lat[-1] if lat else 0.0}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--url", required=True)
    p.add_argument("--body-file", required=True)
    p.add_argument("--header", action="append", default=[])
    p.add_argument("-c", type=int, default=1)
    p.add_argument("-d", type=float, default=3.0)
    p.add_argument("--max-requests", type=int, default=2_000_000)
    a = p.parse_args()
    headers = {}
    for h in a.header:
        k, _, v = h.partition(":")
        headers[k.strip()] = v.strip()
    with open(a.body_file, "rb") as f:
        body = f.read()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    out = asyncio.run(run(a.url, body, headers, a.c, a.d, a.max_requests))
    print("WRKJSON " + json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
