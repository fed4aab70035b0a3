"""Reasoning signatures across families: whose signature it is, and how a client carries it back.

A reasoning signature (Anthropic `thinking.signature`, Gemini `thoughtSignature`, OpenAI Responses
`encrypted_content`) can be verified only by the family that issued it; `ReasoningPart.signature_provider`
and `ReasoningDelta.signature_provider` name that family. Rules every format follows:

- Outbound (`build_request`): a signature is replayed only to its own family (`replayable`); other
  families' signatures, and signatures of unknown provenance, are never sent upstream.
- Inbound rendering (`render_response`, `StreamRenderer`): a client of family C that receives a
  signature issued by family P ≠ C gets it *wrapped* (`export_signature`): standard base64 of
  `axonsim.sig:<P>:<signature>`. It is opaque to the client (and valid base64, which google-genai
  requires of `thoughtSignature`), and when the client replays its history, `import_signature`
  unwraps it, so the gateway still knows it is P's: replayed to a P channel, dropped elsewhere.
- Parsing (`parse_request`, and also `parse_response` / `StreamParser`, so that a gateway chained
  behind another AxonSim keeps provenance): `import_signature(token, family)` → (signature, provider);
  a token that is not wrapped is the parsing family's own.
- A signature whose provider is not known (`signature_provider=None`: only hand-built unified objects
  have one, every parser sets it) is wrapped as provider "unknown": shown to clients, never replayed.
"""

from __future__ import annotations

import base64
import binascii

__all__ = ["FAMILIES", "UNKNOWN", "WRAP_PREFIX", "export_signature", "import_signature", "replayable"]

# The four client/channel families, as `Request.source` and `signature_provider` spell them.
FAMILIES = frozenset({"openai_chat", "openai_responses", "anthropic", "gemini"})
UNKNOWN = "unknown"  # the provider of a signature whose issuer the gateway does not know

_MAGIC = b"axonsim.sig:"  # 12 bytes, so every wrapped token starts with the same 16 base64 characters
WRAP_PREFIX = base64.b64encode(_MAGIC).decode()  # "YXhvbnNpbS5zaWc6"


def export_signature(signature: str, provider: str | None, family: str) -> str:
    """`signature` as a client of `family` is shown it: verbatim when it is the family's own, else
    wrapped with its provider ("unknown" when it has none), so that a replay is never taken for the
    client family's own."""
    if provider == family:
        return signature
    return base64.b64encode(_MAGIC + (provider or UNKNOWN).encode() + b":" + signature.encode()).decode()


def import_signature(token: str, family: str) -> tuple[str, str]:
    """(signature, provider) of a signature token read from `family`'s wire format."""
    if token.startswith(WRAP_PREFIX):
        # google-genai may send bytes back URL-safe; the prefix itself has no '+' or '/'.
        std = token.replace("-", "+").replace("_", "/")
        try:
            raw = base64.b64decode(std + "=" * (-len(std) % 4), validate=True)
        except (binascii.Error, ValueError):
            return token, family
        provider, sep, sig = raw[len(_MAGIC):].partition(b":")
        if sep and raw.startswith(_MAGIC):
            try:
                p, s = provider.decode(), sig.decode()
            except UnicodeDecodeError:
                return token, family
            if (p in FAMILIES or p == UNKNOWN) and s:
                return s, p
    return token, family


def replayable(signature: str | None, provider: str | None, family: str) -> bool:
    """Whether a signature may be sent to a `family` channel: only that family can verify it."""
    return bool(signature) and provider == family
