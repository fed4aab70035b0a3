"""Takes a channel's own keys out of what it answers, before anything reads it (an upstream that echoes them).

A model never sees the key it is called with, but a misbehaving upstream (a proxy in front of a
provider, a debug endpoint) can quote the request's headers in a successful answer, and the gateway
forwards same-format answers as they came. The keys a channel was ever sent are the only ones its
answers can hold, so each answer is searched for those alone: one `bytes` search per key, at C speed.

In a stream a key can be split over two reads. A read whose end could begin a key keeps that end back
until the next read shows whether it does; SSE reads end in a line break, which no key contains, so
in practice nothing is held.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

REDACTED = b"[redacted]"


class Echoes:
    """The keys of one channel as the bytes an answer would carry them in (plain, and JSON-escaped
    where that differs), longest first so a key that contains another is replaced whole."""

    __slots__ = ("forms", "_tails")

    def __init__(self, secrets: Iterable[str]) -> None:
        forms: set[bytes] = set()
        for s in secrets:
            if s:
                escaped = json.dumps(s)[1:-1]
                forms.update((s.encode(), escaped.encode(), escaped.replace("/", "\\/").encode()))
        self.forms = tuple(sorted(forms, key=len, reverse=True))
        # The last byte of a read that could be the start of a key split over two reads.
        self._tails: frozenset[int] = frozenset(b for f in self.forms for b in f[:-1])

    def clean(self, data: bytes) -> bytes:
        for f in self.forms:
            if f in data:
                data = data.replace(f, REDACTED)
        return data

    def held(self, data: bytes) -> int:
        """How many bytes at the end of `data` could begin a key (0 almost always)."""
        if not data or data[-1] not in self._tails:
            return 0
        longest = 0
        for f in self.forms:
            for n in range(min(len(f) - 1, len(data)), longest, -1):
                if data.endswith(f[:n]):
                    longest = n
                    break
        return longest

    def settle(self, data: bytes, cut: int) -> int:
        """`cut`, moved past any key that begins before it and ends after it (a key whose end is
        also the start of a key, as in "sk-…s", ends a read with a possible start)."""
        moved = True
        while moved:
            moved = False
            for f in self.forms:
                p = data.find(f, max(0, cut - len(f) + 1))
                if p != -1 and p < cut:
                    cut = p + len(f)
                    moved = True
        return cut


class StreamEchoes:
    """One stream's reads, cleaned: `feed` each read, then `close` for what was kept back."""

    __slots__ = ("echoes", "_kept")

    def __init__(self, echoes: Echoes) -> None:
        self.echoes = echoes
        self._kept = b""

    def feed(self, chunk: bytes) -> bytes:
        if self._kept:
            chunk = self._kept + chunk
            self._kept = b""
        e = self.echoes
        n = e.held(chunk)
        if n:
            # The end is kept back raw, and cleaned with the next read; the cut must not split a
            # key that lies whole before it.
            cut = e.settle(chunk, len(chunk) - n)
            self._kept = chunk[cut:]
            chunk = chunk[:cut]
        return e.clean(chunk)

    def close(self) -> bytes:
        kept, self._kept = self._kept, b""
        return self.echoes.clean(kept)
