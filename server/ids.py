"""Ids the gateway makes up (request ids, and trace/thread ids for requests that bring none), and how it keeps a client's own.

Request ids are a per-process random prefix and a counter: unique across workers and restarts
without a syscall per request. A forked child draws a new prefix (os.register_at_fork), so workers
forked from one parent never repeat each other's ids.

Request ids are also time-ordered: "req_", 12 hex digits of Unix milliseconds, 6 of the prefix, 6
of the counter. Random ids land all over the store's primary-key B-tree, which made each insert
cost several times more as the table grew (measured on SQLite: ~30 µs against ~5 µs per request at
75k rows); ordered ids append.

A trace or thread id the gateway has to make up is derived from the request's id: its 24 hex
digits and 8 saying which of the two it is. That is 32 hex digits, like a W3C trace id, unique as
request ids are, and it names the request that began the trace; deriving it is two byte
operations where drawing a fresh id cost each request ~4k instructions.

A client's own trace or thread id is kept as it came (cut to MAX_CLIENT_ID bytes, on a character
boundary) and stored as UTF-8 text, which is how clients send ids that are not ASCII and how the
admin API's filters read them back.
"""

from __future__ import annotations

import itertools
import os
import time

_prefix24 = 0  # 24 random bits per process
_counter = itertools.count()

# One hex() of an int laid out as the id's digits, under a leading 1 bit that keeps the leading
# zeros (sliced off with "0x1"): a third of the instructions of formatting each field with a width
# (`f"{ms:012x}"` goes through format() once per field).
_REQUEST_MARK = 1 << 96  # 12 hex digits of milliseconds, 6 of the prefix, 6 of the counter

TRACE = b"00000001"  # the last 8 digits of a derived trace id
THREAD = b"00000002"  # ... of a derived thread id
MAX_CLIENT_ID = 200  # bytes of a client's trace/thread id kept (and echoed)


def _reseed() -> None:
    global _prefix24, _counter
    _prefix24 = int.from_bytes(os.urandom(3), "big")
    _counter = itertools.count(int.from_bytes(os.urandom(3), "big"))


_reseed()
os.register_at_fork(after_in_child=_reseed)


def new_request_id() -> str:
    ms = time.time_ns() // 1_000_000
    return "req_" + hex(_REQUEST_MARK | ms << 48 | _prefix24 << 24 | (next(_counter) & 0xFFFFFF))[3:]


def derived_id(request_id: bytes, kind: bytes) -> bytes:
    """The trace (kind TRACE) or thread (THREAD) id of a request that brought none, from its request id."""
    return request_id[4:] + kind


def client_id(value: bytes) -> bytes:
    """A client's trace or thread id as kept and echoed: at most MAX_CLIENT_ID bytes, never ending in
    part of a UTF-8 character (a cut one made the echoed header and the stored id invalid text)."""
    if len(value) <= MAX_CLIENT_ID:
        return value
    end = MAX_CLIENT_ID
    # Back over at most three continuation bytes (10xxxxxx) to the start of the character cut.
    while end > MAX_CLIENT_ID - 3 and value[end] & 0xC0 == 0x80:
        end -= 1
    return value[:end]


def id_text(value: bytes) -> str:
    """An id header's bytes as stored: UTF-8, as clients send ids that are not ASCII and as the admin
    API's filters read them; bytes that are not UTF-8 one character each (latin-1), as HTTP reads them."""
    try:
        return value.decode()
    except UnicodeDecodeError:
        return value.decode("latin-1")
