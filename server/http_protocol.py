"""uvicorn's httptools protocol, with each response head sent in the same write as the first body bytes
and its header checks remembered.

An ASGI app answers with two messages, http.response.start and http.response.body, and uvicorn
writes each to the socket as it comes: two system calls per response, and on loopback two wake-ups
of the client, the first of which finds a head and no body. Measured on the proxy benchmark (2
vCPU, everything on one core): one write instead of two takes ~4 % off the proxy's CPU per request
at 64 concurrent requests and ~20 µs off the median latency at one.

So the transport the protocol writes to holds a response head back until the next write, which
then carries both. A head that no body follows in the same turn of the event loop (HEAD, 204, an
app still computing its body) is written at the end of that turn, so nothing waits longer than the
code already running. Everything else about the transport is the real one's.

uvicorn also checks every response header's name and value with a regular expression, two searches
of ~1.2k instructions each per header, eighteen per proxied answer; the names and most values are
the same on every response. `remember_header_checks` wraps both expressions in a set of the
strings that passed (bounded), so a string seen before costs a set lookup; one never seen is
searched as before, and a bad one is refused as before.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

from uvicorn.protocols.http import httptools_impl
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

_HEAD = b"HTTP/"  # how every status line uvicorn writes begins (responses, 100 Continue, its own errors)


class HeadHoldingTransport:
    """Wraps an asyncio transport: a write that starts a response is held until the next write or
    the end of the current event-loop turn, whichever comes first."""

    __slots__ = ("_transport", "_loop", "_held")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._held: bytes | None = None

    def write(self, data: bytes | bytearray | memoryview) -> None:
        held = self._held
        if held is not None:
            self._held = None
            self._transport.write(held + data)
        elif data[:5] == _HEAD:
            self._held = bytes(data)
            self._loop.call_soon(self.flush)
        else:
            self._transport.write(data)

    def writelines(self, lines: Any) -> None:
        self.write(b"".join(lines))

    def flush(self) -> None:
        """Write a held head now (it is also called at the end of the turn it was held in)."""
        held = self._held
        if held is not None:
            self._held = None
            if not self._transport.is_closing():
                self._transport.write(held)

    def close(self) -> None:
        self.flush()  # a head, say of an error response, goes out before the connection closes
        self._transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class CoalescingHttpToolsProtocol(HttpToolsProtocol):
    """What `axonsim serve` runs: uvicorn's httptools protocol writing through a HeadHoldingTransport."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(HeadHoldingTransport(transport, asyncio.get_running_loop()))  # type: ignore[arg-type]


class PassedChecks:
    """A stand-in for a compiled header check: `search` as the pattern's, remembering (up to
    `limit` strings of at most `longest` bytes) the bytes it found nothing in. Strings that vary
    per response (request ids, timings) take the slots they find until the set is full; the
    constant ones are among the first. Anything else (a bytearray, a str) goes to the pattern."""

    __slots__ = ("pattern", "_passed", "_limit", "_longest")

    def __init__(self, pattern: re.Pattern[bytes], limit: int = 1024, longest: int = 256) -> None:
        self.pattern = pattern
        self._passed: set[bytes] = set()
        self._limit = limit
        self._longest = longest

    def search(self, s: Any) -> re.Match[bytes] | None:
        if type(s) is not bytes:
            return self.pattern.search(s)
        if s in self._passed:
            return None
        m = self.pattern.search(s)
        if m is None and len(self._passed) < self._limit and len(s) <= self._longest:
            self._passed.add(s)
        return m


def remember_header_checks() -> None:
    """Wraps uvicorn's two header checks (idempotent; a uvicorn without them is left alone)."""
    for name in ("HEADER_RE", "HEADER_VALUE_RE"):
        check = getattr(httptools_impl, name, None)
        if isinstance(check, re.Pattern):
            setattr(httptools_impl, name, PassedChecks(check))


# Applied on import: every process that serves with CoalescingHttpToolsProtocol (a worker process
# included) imports this module first.
remember_header_checks()
