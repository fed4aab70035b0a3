"""Ids the gateway makes up: request ids, and trace/thread ids for requests that bring none.

Both are a per-process random prefix and a counter: unique across workers and restarts without a
syscall per request. A forked child draws a new prefix (os.register_at_fork), so workers forked
from one parent never repeat each other's ids.

Request ids are also time-ordered: "req_", 12 hex digits of Unix milliseconds, 6 of the prefix, 6
of the counter. Random ids land all over the store's primary-key B-tree, which made each insert
cost several times more as the table grew (measured on SQLite: ~30 µs against ~5 µs per request at
75k rows); ordered ids append. Trace ids are 32 hex digits, like a W3C trace id.
"""

from __future__ import annotations

import itertools
import os
import time

_prefix = ""  # 16 hex digits; request ids use the first 6
_prefix_b = b""
_counter = itertools.count()


def _reseed() -> None:
    global _prefix, _prefix_b, _counter
    _prefix = os.urandom(8).hex()
    _prefix_b = _prefix.encode()
    _counter = itertools.count(int.from_bytes(os.urandom(4), "big"))


_reseed()
os.register_at_fork(after_in_child=_reseed)


def new_request_id() -> str:
    return f"req_{time.time_ns() // 1_000_000:012x}{_prefix[:6]}{next(_counter) & 0xFFFFFF:06x}"


def new_trace_id() -> bytes:
    return _prefix_b + b"%016x" % (next(_counter) & 0xFFFFFFFFFFFFFFFF)
