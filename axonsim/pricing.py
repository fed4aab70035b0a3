"""What a request cost: token usage times the per-model price table from the config (pure, no I/O).

The formula. Usage follows OpenAI's convention (axonsim.unified.Usage): prompt tokens include the
cached ones and completion tokens include the reasoning ones. With prices in currency units per
million tokens:

    cached    = min(cached_tokens, prompt_tokens)
    written   = min(cache_write_tokens, prompt_tokens - cached)
    reasoning = min(reasoning_tokens, completion_tokens)
    cost = ( (prompt_tokens - cached - written) * input
           +  cached                            * cached_input
           +  written                           * cache_write
           + (completion_tokens - reasoning)    * output
           +  reasoning                         * reasoning ) / 1_000_000

The clamps keep an upstream that reports more cached or written than prompt tokens from producing a
negative term. Cache writes (Anthropic's cache_creation_input_tokens) are part of prompt tokens; their
price defaults to the input rate. Anthropic's 1-hour cache writes, which it bills at 2× input rather
than the 5-minute cache's 1.25×, are not told apart: set cache_write for the cache a model's clients
use. A model without a price has an unknown cost (None), which is not the same as free (0.0).
"""

from __future__ import annotations

from collections.abc import Mapping

from axonsim.config import Price
from axonsim.unified import Usage

PER = 1_000_000


def cost(usage: Usage, price: Price) -> float:
    """The cost of `usage` at `price` (see the module docstring for the formula)."""
    prompt = max(usage.prompt_tokens, 0)
    completion = max(usage.completion_tokens, 0)
    cached = min(max(usage.cached_tokens, 0), prompt)
    written = min(max(usage.cache_write_tokens, 0), prompt - cached)
    reasoning = min(max(usage.reasoning_tokens, 0), completion)
    cached_rate = price.input if price.cached_input is None else price.cached_input
    write_rate = price.input if price.cache_write is None else price.cache_write
    reasoning_rate = price.output if price.reasoning is None else price.reasoning
    total = ((prompt - cached - written) * price.input + cached * cached_rate + written * write_rate
             + (completion - reasoning) * price.output + reasoning * reasoning_rate)
    return total / PER


def price_for(prices: Mapping[str, Price], *models: str | None) -> Price | None:
    """The first of `models` that has a price. Pass the upstream model first, then the client's
    requested name, so a mapped model is billed at what the channel actually ran."""
    for m in models:
        if m is not None and m in prices:
            return prices[m]
    return None


def cost_for(usage: Usage | None, prices: Mapping[str, Price], *models: str | None) -> float | None:
    """Cost of `usage` for the first priced model in `models`; None when unpriced or no usage."""
    if usage is None:
        return None
    price = price_for(prices, *models)
    return None if price is None else cost(usage, price)
