"""Removes secrets (upstream and gateway keys, the database password) from anything about to be stored.

The store runs every text field of a record through a Scrubber in the writer task, so a key that an
upstream echoes in an error, or that a client pastes into a prompt, never reaches a row.
"""

from __future__ import annotations

import bisect
import json
import math
import re
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

if TYPE_CHECKING:
    from axonsim.config import Config

MASK = "[REDACTED]"

# A JSON escape: \uXXXX, or a backslash and one other character (\\ first, so "\\\\u0073" is a
# backslash and "u0073", not an escape).
_ESCAPE = re.compile(r"\\(?:u[0-9a-fA-F]{4}|[^u])")
_SIMPLE = {"b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}


def secrets_from_config(config: Config) -> list[str]:
    """Every credential the config holds: upstream channel keys and the gateway's own client keys."""
    out = [k.key for ch in config.channels for k in ch.api_keys]
    out += [k.key for k in config.gateway.api_keys]
    return out


class Scrubber:
    """Replaces each given secret, and the forms it takes inside JSON strings and URLs, with MASK."""

    def __init__(self, secrets: Iterable[str] = (), mask: str = MASK) -> None:
        forms: set[str] = set()
        for s in secrets:
            if not s:
                continue
            forms.add(s)
            forms.add(json.dumps(s)[1:-1])  # how it reads inside a JSON string (escaped quotes etc.)
            forms.add(quote(s, safe=""))  # how it reads in a query string
        self.mask = mask
        # Longest first, so a secret that contains another is masked whole.
        ordered = sorted(forms, key=len, reverse=True)
        self._re = re.compile("|".join(re.escape(f) for f in ordered)) if ordered else None
        self._forms = forms
        self._probe: re.Pattern[str] | None = None  # built by the first `clean`: only the store needs it
        # The secrets as they read once decoded: for bodies, searched in their JSON strings decoded
        # (however they are escaped) and in the text a stream spreads over its events.
        plain = sorted({s for s in secrets if s}, key=len, reverse=True)
        self._plain = re.compile("|".join(re.escape(p) for p in plain)) if plain else None

    def __bool__(self) -> bool:
        return self._re is not None

    def text(self, value: str | bytes | None) -> str | None:
        if value is None:
            return None
        if isinstance(value, bytes):
            value = value.decode("utf-8", "replace")
        # PostgreSQL text cannot hold NUL; a body with one would otherwise be rejected forever.
        if "\x00" in value:
            value = value.replace("\x00", "\ufffd")
        return self._re.sub(self.mask, value) if self._re is not None else value

    def body(self, value: str | bytes | None) -> str | None:
        """A request or response body as text with every secret masked: as `text` does, and also a
        secret written with JSON escapes (``\\u0073k-...``), and one that a stream splits across its
        events (a model that echoes a key token by token): the strings at one place in the events'
        JSON (``choices[0].delta.content``, ``delta.text``, ...) are read joined, and each piece of
        a secret found there is masked in its own event."""
        out = self.text(value)
        if out is None or self._plain is None:
            return out
        if "\\" in out:
            out = self._unescaped(out)
        if "data:" in out:
            out = self._stream(out)
        return out

    def _unescaped(self, text: str) -> str:
        """Mask the secrets that appear once JSON escapes are decoded, in the raw text's own spans."""
        assert self._plain is not None
        norm: list[str] = []
        seg_norm: list[int] = []  # where each piece starts in the decoded text ...
        seg_raw: list[int] = []  # ... and in the raw one
        seg_esc: list[bool] = []  # whether the piece is one escape (one decoded character)
        n = pos = 0
        for m in _ESCAPE.finditer(text):
            a, b = m.span()
            if a > pos:
                seg_norm.append(n)
                seg_raw.append(pos)
                seg_esc.append(False)
                norm.append(text[pos:a])
                n += a - pos
            e = m.group()
            c = chr(int(e[2:], 16)) if e[1] == "u" else _SIMPLE.get(e[1], e[1])
            seg_norm.append(n)
            seg_raw.append(a)
            seg_esc.append(True)
            norm.append(c)
            n += 1
            pos = b
        if pos < len(text):
            seg_norm.append(n)
            seg_raw.append(pos)
            seg_esc.append(False)
            norm.append(text[pos:])
            n += len(text) - pos
        decoded = "".join(norm)
        spans: list[tuple[int, int]] = []
        for m in self._plain.finditer(decoded):
            spans.append((_raw_at(m.start(), seg_norm, seg_raw, seg_esc, len(text)),
                          _raw_at(m.end(), seg_norm, seg_raw, seg_esc, len(text))))
        return _masked(text, spans, self.mask) if spans else text

    def _stream(self, text: str) -> str:
        """Mask secrets spread over the events of an SSE stream (see `body`)."""
        assert self._plain is not None
        lines = text.split("\n")
        events: dict[int, Any] = {}  # line number -> its decoded data
        places: dict[tuple[Any, ...], list[tuple[int, tuple[Any, ...], str]]] = {}
        for i, line in enumerate(lines):
            if not line.startswith("data:"):
                continue
            payload = line[5:].strip()
            if not payload.startswith(("{", "[")):
                continue
            try:
                data = json.loads(payload)
            except ValueError:
                continue
            events[i] = data
            for path, leaf in _leaves(data, ()):
                places.setdefault(path, []).append((i, path, leaf))
        changed: set[int] = set()
        for pieces in places.values():
            if len(pieces) < 2:
                continue  # one string: `_unescaped` and `text` have seen it whole
            joined = "".join(p[2] for p in pieces)
            found = [m.span() for m in self._plain.finditer(joined)]
            if not found:
                continue
            starts = []
            at = 0
            for p in pieces:
                starts.append(at)
                at += len(p[2])
            for k, (i, path, leaf) in enumerate(pieces):
                lo, hi = starts[k], starts[k] + len(leaf)
                cut = [(max(a, lo) - lo, min(b, hi) - lo) for a, b in found if a < hi and b > lo]
                if cut:
                    events[i] = _replace(events[i], path, _masked(leaf, cut, self.mask))
                    changed.add(i)
        if not changed:
            return text
        for i in changed:
            # ASCII-escaped: a lone surrogate a provider escaped must not become one in the text.
            lines[i] = "data: " + json.dumps(events[i], separators=(",", ":"))
        return "\n".join(lines)

    def clean(self, text: str) -> bool:
        """True when `text` holds no secret in any form and no NUL (raw or as JSON's \\u0000). Then
        `text()` changes no substring of it, and `json()` changes nothing in a value that json.dumps
        rendered into it: a cheap test that lets the store skip scrubbing field by field."""
        if "\x00" in text or "\\u0000" in text:
            return False
        if not self._forms:
            return True
        probe = self._probe
        if probe is None:
            # Every form, and every form as json.dumps renders it inside a string (the same text for
            # ordinary keys), so a text checked after json.dumps hides none.
            forms = self._forms | {json.dumps(f)[1:-1] for f in self._forms}
            probe = self._probe = re.compile("|".join(re.escape(f) for f in sorted(forms)))
        return probe.search(text) is None

    def json(self, value: Any) -> Any:
        """The same, through a JSON-able value (dict keys included)."""
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, dict):
            return {self.text(str(k)): self.json(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [self.json(v) for v in value]
        if isinstance(value, float) and not math.isfinite(value):
            return None  # JSON (and PostgreSQL's json type) has no NaN/Infinity
        return value


def _masked(text: str, spans: list[tuple[int, int]], mask: str) -> str:
    """`text` with each of the ordered, disjoint `spans` replaced by `mask`."""
    pieces = []
    pos = 0
    for a, b in spans:
        pieces.append(text[pos:a])
        pieces.append(mask)
        pos = b
    pieces.append(text[pos:])
    return "".join(pieces)


def _raw_at(i: int, seg_norm: list[int], seg_raw: list[int], seg_esc: list[bool], raw_len: int) -> int:
    """The raw position of decoded position `i` (an escape is one decoded character: a position
    in it is its backslash's)."""
    k = bisect.bisect_right(seg_norm, i) - 1
    if seg_esc[k]:
        return seg_raw[k] if i == seg_norm[k] else (seg_raw[k + 1] if k + 1 < len(seg_raw) else raw_len)
    return min(seg_raw[k] + (i - seg_norm[k]), raw_len)


def _leaves(value: Any, path: tuple[Any, ...]) -> Iterable[tuple[tuple[Any, ...], str]]:
    """(path, string) for every string in a decoded JSON value, in document order."""
    if isinstance(value, str):
        yield path, value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _leaves(v, (*path, k))
    elif isinstance(value, list):
        for j, v in enumerate(value):
            yield from _leaves(v, (*path, j))


def _replace(value: Any, path: tuple[Any, ...], new: str) -> Any:
    if not path:
        return new
    value[path[0]] = _replace(value[path[0]], path[1:], new)
    return value


def scrub(text: str | bytes | None, secrets: Iterable[str]) -> str | None:
    """One-off form of Scrubber(secrets).text(text)."""
    return Scrubber(secrets).text(text)
