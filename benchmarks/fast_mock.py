"""A minimal, fast OpenAI-compatible mock provider for throughput benchmarks (raw ASGI on uvicorn).

Not the behaviour-model mock (server.mock_provider): this one does as little as possible per
request so that it is not the bottleneck of a "direct" cell. Every POST whose path ends in
`/chat/completions` gets a fixed small chat.completion JSON, or, when the body asks for
`"stream": true`, a fixed SSE stream of 22 frames (role, 18 content deltas, finish, usage, [DONE]),
each frame its own ASGI body message (so it leaves as its own HTTP chunk, like a real provider's).
Any other request: GET → 200 `ok` (health), else 404.

`--first-gap-ms G` paces a stream like a provider that has just started generating: the role frame
and the first content frame at once, then a pause of G ms, then the rest. The benchmark's TTFB probe
uses such a mock so that it times the path to the first content event, not the parsing of a whole
stream that arrived in one read.

    python -m benchmarks.fast_mock --port 9001 [--first-gap-ms 5]
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

import orjson

MODEL = "gpt-bench"
CONTENT_TOKENS = 18

_RESPONSE = orjson.dumps({
    "id": "chatcmpl-bench", "object": "chat.completion", "created": 1700000000, "model": MODEL,
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello there, this is a benchmark."},
                 "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 12, "completion_tokens": 8, "total_tokens": 20},
})


def _frame(obj: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


def _chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 1700000000, "model": MODEL,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}


STREAM_FRAMES: list[bytes] = [
    _frame(_chunk({"role": "assistant", "content": ""})),
    *[_frame(_chunk({"content": f"tok{i} "})) for i in range(CONTENT_TOKENS)],
    _frame(_chunk({}, "stop")),
    _frame({"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 1700000000, "model": MODEL,
            "choices": [], "usage": {"prompt_tokens": 12, "completion_tokens": CONTENT_TOKENS,
                                     "total_tokens": 12 + CONTENT_TOKENS}}),
    b"data: [DONE]\n\n",
]

_JSON_HEADERS = [(b"content-type", b"application/json"), (b"content-length", str(len(_RESPONSE)).encode())]
_SSE_HEADERS = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]
_TEXT_HEADERS = [(b"content-type", b"text/plain"), (b"content-length", b"2")]


FIRST_GAP = 0.0  # seconds; set by --first-gap-ms


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            msg = await receive()
            if msg["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif msg["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    if scope["method"] != "POST":
        await send({"type": "http.response.start", "status": 200, "headers": _TEXT_HEADERS})
        await send({"type": "http.response.body", "body": b"ok"})
        return
    msg = await receive()
    body = msg.get("body", b"")
    while msg.get("more_body"):
        msg = await receive()
        body += msg.get("body", b"")
    if not scope["path"].endswith("/chat/completions"):
        await send({"type": "http.response.start", "status": 404, "headers": _TEXT_HEADERS})
        await send({"type": "http.response.body", "body": b"no"})
        return
    try:
        stream = orjson.loads(body).get("stream") is True
    except (orjson.JSONDecodeError, AttributeError):
        await send({"type": "http.response.start", "status": 400, "headers": _TEXT_HEADERS})
        await send({"type": "http.response.body", "body": b"no"})
        return
    if not stream:
        await send({"type": "http.response.start", "status": 200, "headers": _JSON_HEADERS})
        await send({"type": "http.response.body", "body": _RESPONSE})
        return
    await send({"type": "http.response.start", "status": 200, "headers": _SSE_HEADERS})
    for i, frame in enumerate(STREAM_FRAMES):
        if i == 2 and FIRST_GAP:
            await asyncio.sleep(FIRST_GAP)
        await send({"type": "http.response.body", "body": frame, "more_body": True})
    await send({"type": "http.response.body", "body": b"", "more_body": False})


def main() -> None:
    import uvicorn

    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--first-gap-ms", type=float, default=0.0)
    a = p.parse_args()
    global FIRST_GAP
    FIRST_GAP = a.first_gap_ms / 1000.0
    uvicorn.run(app, host=a.host, port=a.port, loop="uvloop", http="httptools", lifespan="on", access_log=False,
                log_level="warning", server_header=False, date_header=False)


if __name__ == "__main__":
    main()
