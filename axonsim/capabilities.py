"""Capability-aware candidates: what a request needs (images, a provider's native tools, a context
size) and whether a channel can carry it, so a request is routed only where it can be served — and
gets a clear 400 when no channel can, rather than a silent drop."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from axonsim.config import Channel
from axonsim.unified import ImagePart, Request, ToolResultPart

# Which channel type runs which family's native tools, keyed by `Tool.provider`: Anthropic server
# tools, Gemini grounding/code execution, OpenAI Responses hosted tools (web_search, mcp, ...) and
# OpenAI Chat's own custom tools (provider "openai") each reach only their own family's channels.
NATIVE_TOOL_CHANNEL = {"anthropic": "anthropic", "gemini": "gemini", "openai": "openai",
                       "openai_responses": "openai_responses"}

# Channel types whose API has an embeddings endpoint the gateway speaks: OpenAI's /embeddings and
# Gemini's :embedContent. Anthropic has none; a Responses channel is configured for the Responses API
# only, and its base URL is not promised to serve anything else.
EMBEDDING_CHANNELS = frozenset({"openai", "gemini"})


@dataclass(frozen=True, slots=True)
class Needs:
    images: bool = False
    native_tools: frozenset[str] = frozenset()  # providers whose native tools the request uses
    context_tokens: int = 0  # estimated input + requested output
    embeddings: bool = False  # an embeddings request: only EMBEDDING_CHANNELS can serve it
    # An embeddings request only some of those can carry (token ids: not Gemini), and why.
    embed_types: frozenset[str] | None = None
    embed_why: str = ""
    # Channel types whose format cannot express this request (say `n: 2` for Anthropic), each with
    # the format's reason: in a pool of several types, the others serve it.
    unfit_types: Mapping[str, str] | None = None

    def __bool__(self) -> bool:
        return (self.images or bool(self.native_tools) or self.context_tokens > 0 or self.embeddings
                or self.embed_types is not None or bool(self.unfit_types))


NO_NEEDS = Needs()


def estimate_tokens(req: Request) -> int:
    """A cheap input-size estimate (≈ 4 characters per token, as providers' rules of thumb say)."""
    chars = 0
    for m in req.messages:
        for p in m.content:
            text = getattr(p, "text", None)
            if text:
                chars += len(text)
            elif isinstance(p, ToolResultPart):
                chars += sum(len(getattr(c, "text", "") or "") for c in p.content)
        for c in m.tool_calls:
            chars += len(c.arguments) + len(c.name)
    for t in req.tools:
        chars += len(t.name) + len(t.description or "") + len(str(t.parameters or ""))
    return chars // 4 + 4 * len(req.messages)


def needs_of(req: Request) -> Needs:
    images = any(isinstance(p, ImagePart) or (isinstance(p, ToolResultPart) and any(isinstance(c, ImagePart)
                                                                                      for c in p.content))
                 for m in req.messages for p in m.content)
    native = frozenset(t.provider or "unknown" for t in req.tools if t.type == "native")
    ctx = estimate_tokens(req) + (req.sampling.max_tokens or 0)
    return Needs(images, native, ctx)


def missing(channel: Channel, needs: Needs) -> str | None:
    """None if `channel` can carry the request, else what it lacks."""
    caps = channel.capabilities
    if needs.embeddings and channel.type not in EMBEDDING_CHANNELS:
        return "an embeddings API"
    if needs.embed_types is not None and channel.type not in needs.embed_types:
        return needs.embed_why
    if needs.unfit_types is not None and channel.type in needs.unfit_types:
        return needs.unfit_types[channel.type]
    if needs.images and not caps.images:
        return "images"
    for provider in needs.native_tools:
        if NATIVE_TOOL_CHANNEL.get(provider) != channel.type:
            return f"{provider} native tools"
    if caps.context_window is not None and needs.context_tokens > caps.context_window:
        return f"a context of {needs.context_tokens} tokens (window {caps.context_window})"
    return None
