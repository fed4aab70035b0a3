"""The bare pass-through baseline: the gateway's stack (raw ASGI on uvicorn with uvloop + httptools,
the same HTTP protocol as `axonsim serve` (server/http_protocol.py: a response head leaves with its
first body bytes), one shared aiohttp.ClientSession, orjson) with none of the gateway's work — no auth, routing,
retries, records. It shows, in the same run, what this machine allows for a Python proxy.

Per request: read the body, parse JSON, read `model` and `stream`, pick the upstream from a
`model → base URL` dict (`--route`, else `--upstream`), forward the original bytes with its key, relay status, content type and body; a stream is relayed chunk by
chunk as it arrives (`iter_any`). Invalid JSON → 400.

    python -m benchmarks.bare_proxy --port 9002 --upstream http://127.0.0.1:9001/v1 [--route MODEL=URL ...] [--raw]

`--raw` sends through the gateway's upstream seam (server.upstream.AiohttpUpstream: the request
written on aiohttp's pooled connection, no ClientRequest/ClientResponse) instead of session.post:
what that way alone saves. The benchmark's baseline is the default (the issue's prototype).
"""

from __future__ import annotations

import argparse
from typing import Any

import aiohttp
import orjson

from axonsim.config import Timeouts
from server.http_protocol import CoalescingHttpToolsProtocol
from server.upstream import AiohttpUpstream, Limits, UpstreamRequest

_SSE = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]
_BAD = b'{"error":{"message":"invalid JSON body","type":"invalid_request_error"}}'


class BareProxy:
    def __init__(self, upstream: str, key: str, routes: dict[str, str] | None = None, raw: bool = False) -> None:
        self.url = upstream.rstrip("/") + "/chat/completions"
        self.urls = {m: u.rstrip("/") + "/chat/completions" for m, u in (routes or {}).items()}
        self.headers = {"content-type": "application/json", "authorization": f"Bearer {key}"}
        self.session: aiohttp.ClientSession | None = None
        self.raw = AiohttpUpstream() if raw else None
        self.limits = Limits(Timeouts())

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        t = scope["type"]
        if t == "lifespan":
            while True:
                msg = await receive()
                if msg["type"] == "lifespan.startup":
                    self.session = aiohttp.ClientSession(
                        connector=aiohttp.TCPConnector(limit=512, limit_per_host=0),
                        cookie_jar=aiohttp.DummyCookieJar(), skip_auto_headers=("User-Agent",))
                    if self.raw is not None:
                        await self.raw.start()
                    await send({"type": "lifespan.startup.complete"})
                elif msg["type"] == "lifespan.shutdown":
                    if self.session is not None:
                        await self.session.close()
                    if self.raw is not None:
                        await self.raw.aclose()
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if t != "http":
            return
        if scope["method"] != "POST":
            await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
            await send({"type": "http.response.body", "body": b"ok"})
            return
        msg = await receive()
        body = msg.get("body", b"")
        while msg.get("more_body"):
            msg = await receive()
            body += msg.get("body", b"")
        try:
            d = orjson.loads(body)
            model = d["model"]
            stream = d.get("stream") is True
        except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
            await send({"type": "http.response.start", "status": 400,
                        "headers": [(b"content-type", b"application/json"),
                                    (b"content-length", str(len(_BAD)).encode())]})
            await send({"type": "http.response.body", "body": _BAD})
            return
        assert self.session is not None
        url = self.urls.get(model, self.url)
        if self.raw is not None and not stream:
            r = await self.raw.send(UpstreamRequest(url, self.headers, body, False, self.limits))
            data = await r.read()
            ct = r.headers.get("content-type", "application/json").encode("latin-1")
            await send({"type": "http.response.start", "status": r.status,
                        "headers": [(b"content-type", ct), (b"content-length", str(len(data)).encode())]})
            await send({"type": "http.response.body", "body": data})
            return
        async with self.session.post(url, data=body, headers=self.headers) as resp:
            ct = resp.headers.get("content-type", "application/json").encode("latin-1")
            if not stream:
                data = await resp.read()
                await send({"type": "http.response.start", "status": resp.status,
                            "headers": [(b"content-type", ct), (b"content-length", str(len(data)).encode())]})
                await send({"type": "http.response.body", "body": data})
                return
            await send({"type": "http.response.start", "status": resp.status, "headers": _SSE})
            async for chunk in resp.content.iter_any():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})


def main() -> None:
    import uvicorn

    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--upstream", required=True, help="the mock's base URL, e.g. http://127.0.0.1:9001/v1")
    p.add_argument("--key", default="sk-bench-upstream")
    p.add_argument("--route", action="append", default=[], metavar="MODEL=URL")
    p.add_argument("--raw", action="store_true", help="non-stream requests through server.upstream.AiohttpUpstream")
    a = p.parse_args()
    routes = dict(r.split("=", 1) for r in a.route)
    uvicorn.run(BareProxy(a.upstream, a.key, routes, raw=a.raw), host=a.host, port=a.port, loop="uvloop",
                http=CoalescingHttpToolsProtocol, lifespan="on", access_log=False, log_level="warning",
                server_header=False)


if __name__ == "__main__":
    main()
