"""CPU the usage-log store costs per request: records built as the proxy builds them, written by a real Store.

Each record is what GatewayApp._record hands to Proxy.request_done for a successful non-stream
request (one attempt), turned into the store's RequestRecord by server.proxy.store_record and
submitted to a started Store; the writer task batches and writes it, as in the proxy. Measured:

    total      process CPU (time.process_time: every thread, so the aiosqlite worker too) from the
               first record built to the last one committed, per record
    main       the event-loop thread's share (time.thread_time in that thread)
    driver     the rest: aiosqlite's worker thread (asyncpg has none; its share is the server's)
    build      store_record alone, per record (part of `main`)

against a temporary SQLite file, and against PostgreSQL when it answers at 127.0.0.1:5432
(database `test`, trust auth, user root or postgres; a schema of its own, dropped afterwards).
RSS is sampled after the first 10% of the records and at the end: it must stay flat.

With the event loop idle between records the store's threads hardly meet; in the proxy the loop
is busy, and every time aiosqlite's thread needs the GIL or wakes the loop, both threads pay for a
context switch. `busy` measures that case: records are fed while the loop does --busy-us µs of
stand-in work per record (a Python loop with socket I/O between its parts, as a request has), and
the store's cost is the process CPU with the store minus the CPU of the same feed without it
(`busy_us`, plus voluntary context switches per record, `csw`). It is noisier than the idle figure.

    python -m benchmarks.store_write [--n 50000] [--repeat 3] [--label after]

To compare with another checkout, run this file with that checkout first on PYTHONPATH:

    cd /tmp/base && PYTHONPATH=/tmp/base python /work/main/benchmarks/store_write.py --label before

Figures are printed and merged, under their label, into benchmarks/out/store_write.json (the best
of --repeat runs, plus every run). Nothing asserts a time.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import resource
import socket
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from axonsim.config import Store as StoreSettings
from axonsim.config import parse_config
from server.proxy import Proxy, store_record
from server.store import Store, new_request_id

OUT = Path(__file__).resolve().parent / "out" / "store_write.json"
MODEL = "gpt-bench"
UPSTREAM_KEYS = [f"sk-bench-upstream-{i}-0123456789abcdef" for i in range(4)]
CLIENT_KEY = "sk-axonsim-bench-client-0123456789"


def _config() -> Any:
    base = "http://127.0.0.1:9/v1"
    return parse_config({
        "gateway": {"api_keys": [{"key": CLIENT_KEY, "project": "bench", "name": "bench-client"}]},
        "channels": [
            {"name": "mock-a", "type": "openai", "base_url": base, "api_keys": UPSTREAM_KEYS[:2], "models": [MODEL]},
            {"name": "mock-b", "type": "openai", "base_url": base, "api_keys": UPSTREAM_KEYS[2:], "models": [MODEL]},
        ],
        "routing": {"strategy": "composite"},
    })


def proxy_record(i: int) -> dict[str, Any]:
    """What GatewayApp._record builds for a successful non-stream chat completion."""
    t0 = time.time()
    ch = "mock-a" if i & 1 else "mock-b"
    return {
        "id": new_request_id(), "created_at": t0, "method": "POST", "path": "/v1/chat/completions",
        "client_format": "openai_chat", "model": MODEL, "stream": False, "project": "bench", "key_name": "bench-client",
        "status": 200, "outcome": "completed", "error": None, "error_kind": None,
        "latency": 0.0021, "ttft": 0.0020, "overhead": 0.00031,
        "usage": {"prompt_tokens": 14, "completion_tokens": 9, "total_tokens": 23, "cached_tokens": 0,
                  "cache_write_tokens": 0, "reasoning_tokens": 0},
        "cost": None, "channel": ch, "channels": [ch],
        "attempts": [{"attempt": 1, "channel": ch, "key": f"{ch}#{i & 1}", "upstream_model": MODEL,
                      "start": t0 + 0.0002, "end": t0 + 0.0019, "status": 200, "error": None, "next": "done",
                      "decision": None}],
        "trace_id": "", "thread_id": "", "decisions": None,
    }


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


async def run_once(url: str, n: int, schema: str | None, secrets: list[str]) -> dict[str, Any]:
    proxy = Proxy(_config())
    rt = proxy.rt
    store = Store(StoreSettings(url=url), schema=schema, secrets=secrets)
    thresholds = gc.get_threshold()
    await store.start()
    try:
        # Warm up (first batch, statement caches) outside the measurement.
        for i in range(400):
            store.submit(store_record(proxy_record(i), rt, None, None, None))
        await store.flush()
        written0 = store.written
        # As the server does once started (server.app._tune_gc): the long-lived heap frozen out of
        # the cyclic GC, and its young generation collected after 50k allocations, not 700.
        gc.collect()
        gc.freeze()
        gc.set_threshold(50_000, *thresholds[1:])

        # The records themselves are built outside the measured loop where possible: they are the
        # app's cost, not the store's. store_record runs inside (it is the store's part of request_done).
        chunk = 200
        rss_early = 0.0
        p0, t0 = time.process_time(), time.thread_time()
        built = 0.0
        for start in range(0, n, chunk):
            recs = [proxy_record(i) for i in range(start, min(start + chunk, n))]
            b0 = time.thread_time()
            rows = [store_record(r, rt, None, None, None) for r in recs]
            built += time.thread_time() - b0
            for r in rows:
                store.submit(r)
            del recs, rows
            # Hand the loop to the writer now and then, as requests in flight would.
            await asyncio.sleep(0)
            if store.queued > 4000:
                await store.flush()
            if not rss_early and start >= n // 10:
                rss_early = rss_mb()
        await store.flush()
        p1, t1 = time.process_time(), time.thread_time()
        # The record-building cost measured alone (proxy_record included in the loop above is
        # subtracted below by timing it on its own).
        g0 = time.thread_time()
        for i in range(n):
            proxy_record(i)
        gen = time.thread_time() - g0
        assert store.written - written0 == n and store.dropped == 0, store.stats()
        async with store.engine.connect() as conn:
            rows_in = (await conn.execute(sa.text("SELECT count(*) FROM requests"))).scalar_one()
        assert rows_in == n + 400, rows_in
    finally:
        await store.close()
        gc.unfreeze()
        gc.set_threshold(*thresholds)
        gc.collect()
    total = (p1 - p0 - gen) / n * 1e6
    main = (t1 - t0 - gen) / n * 1e6
    return {"total_us": round(total, 2), "main_us": round(main, 2), "driver_us": round(total - main, 2),
            "build_us": round(built / n * 1e6, 2), "rss_mb_early": round(rss_early, 1), "rss_mb_end": round(rss_mb(), 1)}


def _spin(k: int, pair: tuple[socket.socket, socket.socket]) -> int:
    x = 0
    for _ in range(4):
        for i in range(k):
            x += i
        pair[0].send(b"x")  # the GIL is released around socket I/O, as in a request's life
        pair[1].recv(16)
    return x


def _calibrate(us: float, pair: tuple[socket.socket, socket.socket]) -> int:
    k = 1000
    t = time.process_time()
    for _ in range(50):
        _spin(k, pair)
    per = (time.process_time() - t) / 50 * 1e6
    return max(1, int(k * us / per))


async def busy_once(url: str, n: int, schema: str | None, secrets: list[str], us: float) -> dict[str, Any]:
    """The store's extra CPU per record while the event loop is busy (see the module docstring)."""
    rt = Proxy(_config()).rt
    pair = socket.socketpair()
    k = _calibrate(us, pair)

    async def feed(store: Store | None, count: int) -> None:
        for i in range(count):
            rec = proxy_record(i)
            _spin(k, pair)
            if store is not None:
                store.submit(store_record(rec, rt, None, None, None))
            if i & 1:
                await asyncio.sleep(0)  # requests in flight interleave on the loop
        if store is not None:
            await store.flush()

    out: dict[str, list[tuple[float, float]]] = {"store": [], "none": []}
    dropped = 0
    thresholds = gc.get_threshold()
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, *thresholds[1:])
    try:
        for mode in ("none", "store", "none", "store"):
            store = None
            if mode == "store":
                store = Store(StoreSettings(url=url), schema=schema, secrets=secrets)
                await store.start()
                await feed(store, 400)
            r0, p0 = resource.getrusage(resource.RUSAGE_SELF), time.process_time()
            await feed(store, n)
            p1, r1 = time.process_time(), resource.getrusage(resource.RUSAGE_SELF)
            if store is not None:
                dropped += store.dropped  # the writer fell behind: fewer rows written than fed
                await store.close()
            out[mode].append(((p1 - p0) / n * 1e6, (r1.ru_nvcsw - r0.ru_nvcsw) / n))
    finally:
        gc.unfreeze()
        gc.set_threshold(*thresholds)
        pair[0].close()
        pair[1].close()
    base = min(c for c, _ in out["none"])
    with_store = min(c for c, _ in out["store"])
    return {"busy_us": round(with_store - base, 1), "loop_us": round(base, 1),
            "csw": round(min(w for _, w in out["store"]), 2), "dropped": dropped}


async def pg_url() -> str | None:
    import asyncpg

    for user in ("root", "postgres"):
        try:
            conn = await asyncpg.connect(f"postgresql://{user}@127.0.0.1:5432/test", timeout=3)
        except Exception:
            continue
        await conn.close()
        return f"postgresql+asyncpg://{user}@127.0.0.1:5432/test"
    return None


async def pg_schema(url: str, create: bool, schema: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(url.replace("+asyncpg", ""))
    try:
        await conn.execute(f'CREATE SCHEMA "{schema}"' if create else f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=50_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--label", default="current")
    ap.add_argument("--no-pg", action="store_true")
    ap.add_argument("--busy-us", type=float, default=250.0, help="stand-in proxy work per record (0: skip)")
    ap.add_argument("--busy-n", type=int, default=20_000)
    ap.add_argument("--out", type=Path, default=OUT)
    a = ap.parse_args()
    secrets = [*UPSTREAM_KEYS, CLIENT_KEY]
    import server.store

    print(f"[{a.label}] server.store from {Path(server.store.__file__).parent}", file=sys.stderr)
    results: dict[str, Any] = {}
    runs: dict[str, list[dict[str, Any]]] = {"sqlite": []}
    for _ in range(a.repeat):
        with tempfile.TemporaryDirectory() as tmp:
            runs["sqlite"].append(await run_once(f"sqlite+aiosqlite:///{tmp}/store.db", a.n, None, secrets))
        print(f"[{a.label}] sqlite     {runs['sqlite'][-1]}", file=sys.stderr)
    if a.busy_us > 0:
        runs["sqlite_busy"] = []
        for _ in range(a.repeat):
            with tempfile.TemporaryDirectory() as tmp:
                runs["sqlite_busy"].append(await busy_once(f"sqlite+aiosqlite:///{tmp}/store.db", a.busy_n, None,
                                                           secrets, a.busy_us))
            print(f"[{a.label}] sqlite busy {runs['sqlite_busy'][-1]}", file=sys.stderr)
    url = None if a.no_pg else await pg_url()
    if url is not None:
        runs["postgresql"] = []
        for _ in range(a.repeat):
            schema = f"bench_{uuid.uuid4().hex[:10]}"
            await pg_schema(url, True, schema)
            try:
                runs["postgresql"].append(await run_once(url, a.n, schema, secrets))
            finally:
                await pg_schema(url, False, schema)
            print(f"[{a.label}] postgresql {runs['postgresql'][-1]}", file=sys.stderr)
    for db, rs in runs.items():
        best = min(rs, key=lambda r: float(r["total_us"] if "total_us" in r else r["busy_us"]))
        results[db] = {"best": best, "runs": rs}
    doc: dict[str, Any] = {}
    if a.out.exists():
        try:
            doc = json.loads(a.out.read_text())
        except ValueError:
            doc = {}
    doc[a.label] = {"n": a.n, "repeat": a.repeat, "python": sys.version.split()[0], **results}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(doc, indent=2) + "\n")
    for db, r in results.items():
        b = r["best"]
        if "busy_us" in b:
            print(f"{a.label:>10} {db:<10} store {b['busy_us']:7.1f} µs/record on a loop busy with "
                  f"{b['loop_us']:.0f} µs/record; {b['csw']} voluntary context switches/record, "
                  f"{b['dropped']} records dropped")
            continue
        print(f"{a.label:>10} {db:<10} total {b['total_us']:7.1f} µs/record  (main {b['main_us']:.1f}, "
              f"driver thread {b['driver_us']:.1f}, store_record {b['build_us']:.1f}); "
              f"RSS {b['rss_mb_early']} → {b['rss_mb_end']} MB")


if __name__ == "__main__":
    asyncio.run(main())
