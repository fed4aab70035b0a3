"""Takes a channel's own keys out of what it answers, before anything reads it (an upstream that echoes them).

A model never sees the key it is called with, but a misbehaving upstream (a proxy in front of a
provider, a debug endpoint) can quote the request's headers in a successful answer, and the gateway
forwards same-format answers as they came. So each answer is searched for the key its request was
sent with: one `bytes` search per form of that key, at C speed, whatever the channel's pool size.
A key shorter than MIN_ECHOED is not searched for: local servers take any key ("ollama", "none",
"0"), and masking such a word would corrupt answers (and their JSON) rather than keep a secret.

JSON may spell any character of a string as `\\uXXXX` (Go's encoder does so for `<>&`, others for
more), and a key inside a JSON string inside JSON (a tool call's arguments) is escaped twice. Where
an answer holds such an escape, a pattern that lets each character of the key take any of those
spellings is searched too: the gateway decodes what it converts, so a spelling missed here would
reach the client plain.

In a stream a key can be split over two reads. A read whose end could begin a key keeps that end back
until the next read shows whether it does; SSE reads end in a line break, which no key contains, so
in practice nothing is held.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable

from server.store.scrub import MIN_SECRET

REDACTED = b"[redacted]"
MIN_ECHOED = MIN_SECRET  # the floor every secret search keeps


# JSON's own escapes of the characters that have one (besides \\uXXXX, which every character has).
_SHORT_ESCAPES = {'"': '"', "\\": "\\", "/": "/", "\b": "b", "\f": "f", "\n": "n", "\r": "r", "\t": "t"}


def _char_pattern(c: str) -> bytes:
    """Every spelling of `c` inside a JSON string, escaped once or twice: itself, \\uXXXX (hex in
    either case; before a second escaping, the backslash doubled), and its short escape if it has one."""
    code = "".join(f"[{h}{h.upper()}]" if h.isalpha() else h for h in f"{ord(c):04x}")
    alts = [re.escape(c), r"\\{1,2}u" + code]  # \uXXXX once escaped, \\uXXXX twice
    short = _SHORT_ESCAPES.get(c)
    if short is not None:
        alts.append(r"\\{1,3}" + re.escape(short))  # \" once, \\\" twice (\\\\ for a backslash: within 1-3)
    return ("(?:" + "|".join(alts) + ")").encode()


def _escaped_pattern(secret: str) -> re.Pattern[bytes]:
    # A spelling begins after an even run of backslashes (escaped backslashes, kept: group 1), never
    # inside one, so that masking it leaves valid JSON (an escaped backslash before the key stays).
    return re.compile(rb"(?<!\\)((?:\\\\)*)" + b"".join(_char_pattern(c) for c in secret))


_MASKED = rb"\g<1>" + REDACTED
# The longest spelling of one character (\\uXXXX: two backslashes, u, four digits).
_LONGEST_CHAR = 7


class Echoes:
    """Keys as the bytes an answer would carry them in (plain, and JSON-escaped where that differs),
    longest first so a key that contains another is replaced whole; and, for an answer with escapes
    in it, a pattern per key for its other spellings."""

    __slots__ = ("forms", "_tails", "_patterns", "_any_escape", "_spelled", "_longest")

    def __init__(self, secrets: Iterable[str]) -> None:
        forms: set[bytes] = set()
        patterns = []
        any_escape = False
        spelled: set[int] = set()
        longest = 0
        for s in secrets:
            if len(s) >= MIN_ECHOED:
                escaped = json.dumps(s)[1:-1]
                forms.update((s.encode(), escaped.encode(), escaped.replace("/", "\\/").encode()))
                patterns.append(_escaped_pattern(s))
                any_escape = any_escape or any(c in _SHORT_ESCAPES for c in s)
                spelled.update(s.encode())
                longest = max(longest, _LONGEST_CHAR * len(s))
        if patterns:  # the bytes an escaped spelling is made of: the keys', backslashes, u and hex, short escapes
            spelled.update(b"\\u0123456789abcdefABCDEF")
            spelled.update(v.encode()[0] for v in _SHORT_ESCAPES.values())
        self._spelled = frozenset(spelled)
        self._longest = longest
        self.forms = tuple(sorted(forms, key=len, reverse=True))
        # The last byte of a read that could be the start of a key split over two reads.
        self._tails: frozenset[int] = frozenset(b for f in self.forms for b in f[:-1])
        self._patterns = tuple(patterns)
        # Whether some key has a character with a short escape: then any backslash may begin one of
        # its spellings; otherwise only a \u escape can (the common case: answers are full of \n and \").
        self._any_escape = any_escape

    def clean(self, data: bytes) -> bytes:
        for f in self.forms:
            if f in data:
                data = data.replace(f, REDACTED)
        if self._patterns and (b"\\u" in data or (self._any_escape and b"\\" in data)):
            for p in self._patterns:
                data = p.sub(_MASKED, data)
        return data

    def held(self, data: bytes) -> int:
        """How many bytes at the end of `data` could begin a key (0 almost always)."""
        if not data:
            return 0
        escaped = self._escaped_tail(data)
        if data[-1] not in self._tails:
            return escaped
        size = len(data)
        longest = 0
        for f in self.forms:
            # Where the key's first byte occurs in the last len(f) - 1 bytes: the earliest such
            # place from which the rest of the read begins the key gives the longest suffix.
            first = f[:1]
            i = data.find(first, max(0, size - len(f) + 1))
            while i != -1 and size - i > longest:
                if f.startswith(data[i:]):
                    longest = size - i
                    break
                i = data.find(first, i + 1)
        return max(longest, escaped)

    def _escaped_tail(self, data: bytes) -> int:
        """The bytes at the end of `data` that could begin an escaped spelling of a key: the run of
        bytes such a spelling is made of, when it holds a backslash (without one, a spelling's start
        is a start of the plain key, which `held` looks for), at most the longest spelling."""
        spelled = self._spelled
        if not self._patterns or data[-1] not in spelled:
            return 0
        size = len(data)
        stop = max(0, size - self._longest)
        i = size
        while i > stop and data[i - 1] in spelled:
            i -= 1
        return size - i if data.find(b"\\", i) != -1 else 0

    def settle(self, data: bytes, cut: int) -> int:
        """`cut`, moved past any key that begins before it and ends after it (a key whose end is
        also the start of a key, as in "sk-…s", ends a read with a possible start), in any spelling."""
        moved = True
        while moved:
            moved = False
            for f in self.forms:
                p = data.find(f, max(0, cut - len(f) + 1))
                if p != -1 and p < cut:
                    cut = p + len(f)
                    moved = True
            for pat in self._patterns:
                for m in pat.finditer(data, max(0, cut - self._longest)):
                    if m.start() < cut < m.end():
                        cut = m.end()
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
