"""Removes secrets (upstream and gateway keys, the database password) from anything about to be stored.

The store runs every text field of a record through a Scrubber in the writer task, so a key that an
upstream echoes in an error, or that a client pastes into a prompt, never reaches a row.
"""

from __future__ import annotations

import functools
import json
import math
import re
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

if TYPE_CHECKING:
    from axonsim.config import Config

MASK = "[REDACTED]"
# Secrets shorter than this are not searched for. Local servers take any word as a key ("ollama",
# "none", "EMPTY", "x"); masking every occurrence of such a word corrupted answers, admin replies and
# their JSON (a one-letter key masked every "k" of `"key":`) rather than keeping a secret.
# server/echoes.py applies the same floor. The gateway warns at start about keys below it.
MIN_SECRET = 8

# What a stored body becomes when it cannot be checked for secrets (a stream nested too deeply to read).
WITHHELD = "[body not stored: it could not be checked for secrets]"
# Characters JSON may write with a short escape besides \uXXXX.
_SHORT_ESCAPES = {'"': '\\"', "\\": "\\\\", "/": "\\/", "\b": "\\b", "\f": "\\f", "\n": "\\n",
                  "\r": "\\r", "\t": "\\t"}


def secrets_from_config(config: Config) -> list[str]:
    """Every credential the config holds: upstream channel keys and the gateway's own client keys."""
    out = [k.key for ch in config.channels for k in ch.api_keys]
    out += [k.key for k in config.gateway.api_keys]
    return out


class Scrubber:
    """Replaces each given secret, and the forms it takes inside JSON strings and URLs, with MASK."""

    def __init__(self, secrets: Iterable[str] = (), mask: str = MASK) -> None:
        secrets = [s for s in secrets if len(s) >= MIN_SECRET]
        forms: set[str] = set()
        for s in secrets:
            forms.add(s)
            forms.add(json.dumps(s)[1:-1])  # how it reads inside a JSON string (escaped quotes etc.)
            forms.add(quote(s, safe=""))  # how it reads in a query string
        self.mask = mask
        # Longest first, so a secret that contains another is masked whole.
        ordered = sorted(forms, key=len, reverse=True)
        self._re = re.compile("|".join(re.escape(f) for f in ordered)) if ordered else None
        self._forms = forms
        self._probe: re.Pattern[str] | None = None  # built by the first `clean`: only the store needs it
        # The secrets as they read once decoded: for bodies, searched in a view of the text with its
        # escapes decoded, and in the text a stream spreads over its events.
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
        if self._re is None:
            return value
        out = self._re.sub(self.mask, value)
        if "\\" in out:
            # A secret inside a JSON string that an upstream's error quotes may be spelt with any of
            # JSON's escapes (`\/` by PHP, `\u003c` by Go), not only the ones json.dumps writes.
            hidden = self._escaped_secrets(out)
            if hidden:
                out = _spellings(hidden).sub(self.mask, out)
        return out

    def body(self, value: str | bytes | None) -> str | None:
        """A request or response body as text with every secret masked: as `text` does (a secret
        written with JSON escapes, ``\\u0073k-...``, included), and also one that a stream
        splits across its events (a model that echoes a key token by token): the strings at one
        place in the events' JSON (``choices[0].delta.content``, ``delta.text``, ...) are read
        joined, and each piece of a secret found there is masked in its own event. A stream too
        deeply nested to read is WITHHELD rather than stored unchecked."""
        out = self.text(value)
        if out is None or self._plain is None:
            return out
        if "data:" in out and _is_stream(out):
            try:
                return self._stream(out)
            except RecursionError:
                return WITHHELD
        return out

    def _escaped_secrets(self, text: str) -> list[str]:
        """The secrets that `text` spells with escapes: found in a view of it with every escape
        decoded, which Python's codec makes at C speed. The view decodes more than JSON would (\\x41,
        octal): that can only find a secret the exact search below then does not mask."""
        assert self._plain is not None
        view = text.replace("\\/", "/")
        try:
            view = view.encode("latin-1", "backslashreplace").decode("unicode_escape")
        except UnicodeDecodeError:
            # A backslash the codec cannot decode (an escape cut at the size limit, a stray \\x): keep
            # only JSON's escapes, which it always decodes (one callback per backslash: rare and slower).
            view = _JSON_ESCAPE.sub(lambda m: m.group() if m.group(1) else "", view)
            view = view.encode("latin-1", "backslashreplace").decode("unicode_escape")
        return sorted({m.group() for m in self._plain.finditer(view)})

    def _stream(self, text: str) -> str:
        """Mask the secrets a stream spreads over its events (see `body`)."""
        lines = text.split("\n")
        events, places = _events_of(lines)
        return self._stream_joined(lines, events, places)

    def _stream_joined(self, lines: list[str], events: dict[int, Any], places: _Places) -> str:
        assert self._plain is not None
        changed: set[int] = set()
        for pieces in places.values():
            if len(pieces) < 2:
                continue  # one string: `text` and the escaped search have seen it whole
            joined = "".join(p[2] for p in pieces)
            found = [m.span() for m in self._plain.finditer(joined)]
            if not found:
                continue
            at = 0
            for i, path, leaf in pieces:
                lo, hi = at, at + len(leaf)
                at = hi
                cut = [(max(a, lo) - lo, min(b, hi) - lo) for a, b in found if a < hi and b > lo]
                if cut:
                    events[i] = _replace(events[i], path, _masked(leaf, cut, self.mask))
                    changed.add(i)
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
        if "\\" in text and self._escaped_secrets(text):
            return False
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


# A JSON escape (group 1), or a lone backslash that starts none.
_JSON_ESCAPE = re.compile(r'\\(u[0-9a-fA-F]{4}|["\\/bfnrt])|\\')


def _is_stream(text: str) -> bool:
    return text.startswith(("data:", "event:", ":")) or "\ndata:" in text


@functools.lru_cache(maxsize=64)
def _spellings_of(secrets: tuple[str, ...]) -> re.Pattern[str]:
    return re.compile("|".join("".join(_char_forms(c) for c in p) for p in sorted(secrets, key=len, reverse=True)))


def _spellings(secrets: list[str]) -> re.Pattern[str]:
    """A regex for every way JSON may spell these secrets (any character escaped): slow, as every
    position may start one, so it is built for the few secrets a body was seen to hide."""
    return _spellings_of(tuple(secrets))


def _char_forms(c: str) -> str:
    """A regex for `c` as JSON may write it inside a string: itself, \\uXXXX in either case, or its
    short escape."""
    forms = [re.escape(c)]
    if ord(c) < 0x10000:
        forms.append("\\\\u" + "".join(f"[{d}{d.upper()}]" if d.isalpha() else d for d in f"{ord(c):04x}"))
    short = _SHORT_ESCAPES.get(c)
    if short is not None:
        forms.append(re.escape(short))
    return "(?:" + "|".join(forms) + ")"


# A stream's strings grouped by where they sit in their events: path -> (line, path, string), in order.
_Places = dict[tuple[Any, ...], list[tuple[int, tuple[Any, ...], str]]]


def _events_of(lines: list[str]) -> tuple[dict[int, Any], _Places]:
    """The decoded data of each SSE `data:` line and its strings grouped by place."""
    events: dict[int, Any] = {}
    places: _Places = {}
    for i, line in enumerate(lines):
        payload = line[5:].strip() if line.startswith("data:") else ""
        if not payload.startswith(("{", "[")):
            continue
        try:
            events[i] = json.loads(payload)
        except ValueError:
            continue
        for path, leaf in _leaves(events[i], ()):
            places.setdefault(path, []).append((i, path, leaf))
    return events, places


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
