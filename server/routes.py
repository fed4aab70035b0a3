"""The client-API route table: which URL paths speak which wire format (and, for Gemini, the model and stream flag).

One table for every API family; a family is served as soon as its format module imports, so the
handler never changes when a format is added. Fixed paths are a dict lookup (matches are prebuilt:
no allocation per request); only Gemini, whose model and action live in the path, needs a regex.
"""

from __future__ import annotations

import logging
import re
from types import ModuleType

from axonsim.formats import get_format

log = logging.getLogger("axonsim.server.routes")


class Route:
    """A matched client-API path: the client's format module, plus what the URL itself says."""

    __slots__ = ("name", "fmt", "model", "stream")

    def __init__(self, name: str, fmt: ModuleType, model: str | None = None, stream: bool | None = None) -> None:
        self.name = name  # client format name, as in axonsim.formats.FORMAT_MODULES
        self.fmt = fmt
        self.model = model
        self.stream = stream


# path -> client format
FIXED_PATHS: dict[str, str] = {
    "/v1/chat/completions": "openai_chat",
    "/chat/completions": "openai_chat",  # clients configured with a base URL without /v1
    "/v1/responses": "openai_responses",
    "/v1/messages": "anthropic",
    "/anthropic/v1/messages": "anthropic",
}

# /v1beta/models/M:generateContent, /v1/..., /gemini/v1beta/..., /gemini/models/...
GEMINI_PATH = re.compile(r"^/(?:gemini/)?(?:(?:v1beta|v1)/)?models/([^/:]+):(generateContent|streamGenerateContent)$")


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


class RouteTable:
    def __init__(self, formats: dict[str, ModuleType]) -> None:
        self.formats = formats
        self._fixed = {path: Route(name, formats[name]) for path, name in FIXED_PATHS.items() if name in formats}
        self._gemini = formats.get("gemini")

    def match(self, path: str) -> Route | None:
        r = self._fixed.get(path)
        if r is not None:
            return r
        if self._gemini is not None and ":" in path:
            m = GEMINI_PATH.match(path)
            if m is not None:
                return Route("gemini", self._gemini, m.group(1), m.group(2) == "streamGenerateContent")
        return None

    def paths(self) -> list[str]:
        """The served client-API paths, for docs and logs."""
        out = list(self._fixed)
        if self._gemini is not None:
            out.append("/{v1beta|v1|gemini/...}/models/{model}:generateContent|:streamGenerateContent")
        return out
