"""Removes secrets (upstream and gateway keys, the database password) from anything about to be stored.

The store runs every text field of a record through a Scrubber in the writer task, so a key that an
upstream echoes in an error, or that a client pastes into a prompt, never reaches a row.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

if TYPE_CHECKING:
    from axonsim.config import Config

MASK = "[REDACTED]"


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


def scrub(text: str | bytes | None, secrets: Iterable[str]) -> str | None:
    """One-off form of Scrubber(secrets).text(text)."""
    return Scrubber(secrets).text(text)
