"""Gateway API-key auth: find the client's key wherever its API family puts it, and check it.

Accepted, in this order: `Authorization: Bearer KEY` (OpenAI; Anthropic SDK ≥ 2 too),
`x-api-key` (Anthropic), `x-goog-api-key` (Gemini), `?key=` (Gemini REST). Accepting every
convention on every route costs nothing and spares clients that mix them (the Anthropic SDK sends
either header depending on its version).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from urllib.parse import parse_qsl

from axonsim.config import GatewayKey

_HEADER_KEYS = (b"x-api-key", b"x-goog-api-key")


def extract_key(headers: Iterable[tuple[bytes, bytes]], query_string: bytes = b"") -> str | None:
    """The client's key from raw ASGI headers (lower-case names) or the query string, or None."""
    other: str | None = None
    for name, value in headers:
        if name == b"authorization":
            scheme, _, token = value.partition(b" ")
            if scheme.lower() == b"bearer" and token.strip():
                return token.strip().decode("latin-1")
        elif name in _HEADER_KEYS and other is None and value.strip():
            other = value.strip().decode("latin-1")
    if other is not None:
        return other
    if query_string and b"key=" in query_string:
        for k, v in parse_qsl(query_string.decode("latin-1")):
            if k == "key" and v:
                return v
    return None


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


class GatewayAuth:
    """Keys are looked up by their SHA-256, so the lookup time says nothing about a key's prefix
    and the table holds no key in clear."""

    __slots__ = ("_by_digest",)

    def __init__(self, keys: Iterable[GatewayKey]) -> None:
        self._by_digest = {_digest(k.key): k for k in keys}

    def check(self, key: str | None) -> GatewayKey | None:
        if not key:
            return None
        return self._by_digest.get(_digest(key))

    def authenticate(self, headers: Iterable[tuple[bytes, bytes]], query_string: bytes = b"") -> GatewayKey | None:
        return self.check(extract_key(headers, query_string))
