"""The client-API route table: which URL paths speak which wire format (and, for Gemini, the model and stream flag).

One table for every API family; a family is served as soon as its format module imports, so the
handler never changes when a format is added. Fixed paths are a dict lookup (matches are prebuilt:
no allocation per request); only Gemini, whose model and action live in the path, needs a regex.

Chat-style routes are served by server.app's handler. A route that is not chat (embeddings) brings
its own `handler`, which server.app calls instead.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable
from types import ModuleType
from typing import Any
from urllib.parse import parse_qsl

from axonsim.formats import FormatError, get_format

log = logging.getLogger("axonsim.server.routes")


# (proxy, scope, receive, send, route) -> None: an ASGI handler for one non-chat client API
Handler = Callable[[Any, Any, Any, Any, "Route"], Awaitable[None]]


class Route:
    """A matched client-API path: the client's format module, plus what the URL itself says."""

    __slots__ = ("name", "fmt", "model", "stream", "handler", "action")

    def __init__(self, name: str, fmt: ModuleType, model: str | None = None, stream: bool | None = None,
                 handler: Handler | None = None, action: str | None = None) -> None:
        self.name = name  # client format name, as in axonsim.formats.FORMAT_MODULES (or "*_embeddings")
        self.fmt = fmt  # for a non-chat route: the family's chat module, which renders its errors
        self.model = model
        self.stream = stream
        self.handler = handler  # None: server.app's chat handler serves it
        self.action = action  # Gemini's method from the URL, for non-chat routes (embedContent, ...)


# path -> client format
FIXED_PATHS: dict[str, str] = {
    "/v1/chat/completions": "openai_chat",
    "/chat/completions": "openai_chat",  # clients configured with a base URL without /v1
    "/v1/responses": "openai_responses",
    "/v1/messages": "anthropic",
    "/anthropic/v1/messages": "anthropic",
}

# path -> client family, for OpenAI embeddings (served by server.embeddings)
EMBEDDING_PATHS: dict[str, str] = {
    "/v1/embeddings": "openai_chat",
    "/embeddings": "openai_chat",  # clients configured with a base URL without /v1
}

# /v1beta/models/M:generateContent, /v1/..., /gemini/v1beta/..., /gemini/models/...; and the
# embeddings methods on the same paths
# A model name may hold colons itself (Ollama's llama3:8b, OpenAI's ft:...): the method is what
# follows the last one. It may hold slashes too (`vendor/model-x`, as model_mapping names often
# do): GET .../models/{model} lists and finds such models, so they must be callable as well. Any
# character, a newline too (DOTALL), as before: such a name is then answered (a 404 naming it,
# masked in the access log), not left to the catch-all.
GEMINI_PATH = re.compile(r"^/(?:gemini/)?(?:(?:v1beta|v1)/)?models/(.+)"
                         r":(generateContent|streamGenerateContent|embedContent|batchEmbedContents)$", re.DOTALL)


def gemini_array_stream(scope: Any) -> bool:
    """Whether a Gemini `:streamGenerateContent` call wants its chunks as one JSON array (no `alt`, or
    `alt=json`: the REST API's default) rather than as SSE (`alt=sse`, what the SDKs ask for).
    Raises FormatError naming `alt` for a representation the gateway does not write (`alt=proto`)."""
    qs: bytes = scope.get("query_string") or b""
    if b"alt" not in qs and b"%" not in qs:  # (a percent-escape may spell it)
        return True
    alt = None
    for k, v in parse_qsl(qs.decode("latin-1"), keep_blank_values=True):
        if k == "alt":
            alt = v  # the last one counts, as for any repeated query parameter here
    if alt == "sse":
        return False
    if alt is None or alt == "json":
        return True
    raise FormatError(f"alt={alt[:40]!r} is not supported: use alt=sse or alt=json", param="alt")


def load_formats(names: tuple[str, ...] = ("openai_chat", "openai_responses", "anthropic", "gemini")) -> dict[str, ModuleType]:
    """The client formats whose modules import now; a missing one just leaves its routes off."""
    out: dict[str, ModuleType] = {}
    for name in names:
        try:
            out[name] = get_format(name)
        except ImportError:
            log.debug("format %s is not available: its routes are off", name)
        except Exception:  # a module half-written by its author must not take the gateway down
            log.warning("format %s failed to import: its routes are off", name, exc_info=True)
    return out


def load_embeddings() -> Handler | None:
    """The embeddings handler, imported late (it imports the proxy's driver, which imports this
    module's users); if it fails to import, the embeddings routes are off and chat still serves."""
    try:
        from server.embeddings import serve
    except Exception:
        log.warning("embeddings failed to import: their routes are off", exc_info=True)
        return None
    return serve


class RouteTable:
    def __init__(self, formats: dict[str, ModuleType], embeddings: bool = True) -> None:
        self.formats = formats
        self._fixed = {path: Route(name, formats[name]) for path, name in FIXED_PATHS.items() if name in formats}
        self._gemini = formats.get("gemini")
        self._embed = load_embeddings() if embeddings else None
        if self._embed is not None:
            for path, name in EMBEDDING_PATHS.items():
                if name in formats:
                    self._fixed[path] = Route("openai_embeddings", formats[name], handler=self._embed)

    def match(self, path: str) -> Route | None:
        r = self._fixed.get(path)
        if r is not None:
            return r
        if len(path) > 1 and path[-1] == "/":
            # `/v1/chat/completions/`: served as without the slash (FastAPI's fallback would answer
            # a bare 307 redirect, which most clients do not follow for a POST).
            r = self._fixed.get(path[:-1])
            if r is not None:
                return r
        if self._gemini is not None and ":" in path:
            m = GEMINI_PATH.match(path)
            if m is not None:
                action = m.group(2)
                if action == "generateContent" or action == "streamGenerateContent":
                    return Route("gemini", self._gemini, m.group(1), action == "streamGenerateContent")
                if self._embed is not None:
                    return Route("gemini_embeddings", self._gemini, m.group(1), handler=self._embed, action=action)
        return None

    def paths(self) -> list[str]:
        """The served client-API paths, for docs and logs."""
        out = list(self._fixed)
        if self._gemini is not None:
            out.append("/{v1beta|v1|gemini/...}/models/{model}:generateContent|:streamGenerateContent")
            if self._embed is not None:
                out.append("/{v1beta|v1|gemini/...}/models/{model}:embedContent|:batchEmbedContents")
        return out
