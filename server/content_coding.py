"""Request bodies a client compressed (Content-Encoding): gzip and deflate decoded within the body limit, other codings refused 415.

The gateway reads a request's JSON and forwards it, as parsed or as the client's bytes: a body it
cannot decode must not be read as JSON (a gzip body was answered "not UTF-8") nor forwarded without
the header that said how it was encoded. Envoy's decompressor filter decodes such bodies; so does
this. The limit on a body (server.app.MAX_BODY) holds for what decoding gives too: a few KiB of
gzip may inflate to gigabytes, and the output is bounded while it is made, not measured afterwards.

An unsupported coding is a 415 with `Accept-Encoding` naming the codings that are accepted
(RFC 9110 §15.5.16); a body that is not what its header says is a 400.
"""

from __future__ import annotations

import asyncio
import zlib

# What a 415 offers, as its Accept-Encoding header.
ACCEPTED = b"gzip, deflate"
_GZIP = 16 + zlib.MAX_WBITS  # a gzip member: header, deflate data, CRC and length
_ZLIB = zlib.MAX_WBITS  # HTTP's "deflate": deflate data in a zlib wrapper (RFC 9110 §8.4.1.2)
_RAW = -zlib.MAX_WBITS  # bare deflate data, which some clients send as "deflate" all the same
_QUOTED = 40  # characters of an unknown coding quoted back in the error
# Output decoded on the event loop (a millisecond or two); a body that inflates past it is decoded
# again, whole, in a thread. What decides is the output: 219 bytes of gzip inside gzip inflate to
# 32 MiB, ~150 ms of the loop's time per request when they were decoded on it.
ON_THE_LOOP = 1 << 20
# Codings stacked in one header, and gzip members in one body: each costs a pass over the data (a
# body of many empty members took time quadratic in its size), and clients send one or two.
MAX_CODINGS = 4
MAX_MEMBERS = 16


class CodingError(Exception):
    """A body that cannot be decoded: `status` is 415 (coding not supported), 413 (too large once
    decoded) or 400 (not what its header says)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


async def decode_body(body: bytes, header: bytes, limit: int) -> bytes:
    """`decode`, on the event loop while what it gives stays under ON_THE_LOOP bytes, else in a thread
    (zlib lets go of the GIL: the loop serves other requests meanwhile)."""
    if limit <= ON_THE_LOOP:
        return decode(body, header, limit)
    try:
        return decode(body, header, ON_THE_LOOP)
    except CodingError as exc:
        if exc.status != 413:
            raise
    return await asyncio.to_thread(decode, body, header, limit)


def decode(body: bytes, header: bytes, limit: int) -> bytes:
    """`body` with the codings `header` lists undone, last applied first (RFC 9110 §8.4); at most
    `limit` bytes at each step. `identity` and empty entries are no coding."""
    codings = [c for c in (c.strip().lower() for c in header.decode("latin-1").split(",")) if c and c != "identity"]
    if len(codings) > MAX_CODINGS:
        raise CodingError(400, f"the request body has {len(codings)} content codings; at most {MAX_CODINGS} are read")
    for coding in reversed(codings):
        if coding in ("gzip", "x-gzip"):
            body = _gunzip(body, limit)
        elif coding == "deflate":
            body = _inflate(body, limit)
        else:
            shown = coding if len(coding) <= _QUOTED else coding[:_QUOTED] + "…"
            raise CodingError(415, f"Content-Encoding {shown!r} is not supported: send the body as it is, "
                                   f"or gzip or deflate it")
    return body


def _gunzip(body: bytes, limit: int) -> bytes:
    # A gzip body may be several members one after the other (RFC 1952 §2.2), which gunzip reads
    # as one; each is decoded in turn.
    out: list[bytes] = []
    size = 0
    rest = body
    while True:
        if len(out) == MAX_MEMBERS:
            raise CodingError(400, f"the request body has more than {MAX_MEMBERS} gzip members")
        d = zlib.decompressobj(_GZIP)
        part = _run(d, rest, limit - size, "gzip")
        out.append(part)
        size += len(part)
        rest = d.unused_data
        if not rest:
            return b"".join(out)


def _inflate(body: bytes, limit: int) -> bytes:
    d = zlib.decompressobj(_ZLIB)
    try:
        part = _run(d, body, limit, "deflate")
    except CodingError as exc:
        if exc.status != 400:
            raise
        d = zlib.decompressobj(_RAW)  # no zlib wrapper: bare deflate data, as browsers accept too
        part = _run(d, body, limit, "deflate")
    if d.unused_data:
        raise CodingError(400, "the request body has data after the end of its deflate stream")
    return part


def _run(d: zlib._Decompress, data: bytes, room: int, name: str) -> bytes:
    """One stream decoded, whole and within `room` bytes."""
    try:
        part = d.decompress(data, room + 1)  # one byte more than room: over it means too large
    except zlib.error:
        raise CodingError(400, f"the request body is not valid {name} data (Content-Encoding: {name})") from None
    if len(part) > room:  # (zlib keeps input back, unconsumed_tail, only when it stopped at room + 1)
        raise CodingError(413, "the request body exceeds the gateway's limit once decoded")
    if not d.eof:
        raise CodingError(400, f"the request body ends before its {name} data does (Content-Encoding: {name})")
    return part
