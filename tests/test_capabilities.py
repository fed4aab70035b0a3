"""Capability-aware candidates: a request goes only where it can be carried, or gets a clear 400."""

from __future__ import annotations

from axonsim.capabilities import Needs, needs_of
from axonsim.config import parse_config
from axonsim.execution import Outcome, Router
from axonsim.unified import ImagePart, Message, Request, TextPart, Tool


def router():
    return Router(parse_config({"channels": [
        {"name": "text-only", "type": "openai", "models": ["m"], "capabilities": {"images": False}},
        {"name": "claude", "type": "anthropic", "models": ["m"], "capabilities": {"context_window": 1000}},
        {"name": "gem", "type": "gemini", "models": ["m"]},
    ]}))


def ok(call, now):
    return Outcome(True, now + 1)


def test_needs_are_read_from_the_request():
    req = Request(model="m", messages=[Message(role="user", content=[TextPart(text="x" * 400),
                                                                     ImagePart(url="https://a/b.png")])],
                  tools=[Tool(type="native", name="web_search", provider="anthropic", native={"type": "x"})])
    n = needs_of(req)
    assert n.images and n.native_tools == {"anthropic"} and n.context_tokens >= 100


def test_images_go_only_to_channels_that_take_them(driver):
    r = router()
    seen = {driver(r, "m", ok, needs=Needs(images=True), now=float(i)).attempts[0].channel for i in range(6)}
    assert seen == {"claude", "gem"}


def test_native_tools_go_to_their_provider_only(driver):
    r = router()
    res = driver(r, "m", ok, needs=Needs(native_tools=frozenset({"gemini"})))
    assert [a.channel for a in res.attempts] == ["gem"]


def test_context_window_is_respected(driver):
    r = router()
    seen = {driver(r, "m", ok, needs=Needs(context_tokens=5000), now=float(i)).attempts[0].channel for i in range(6)}
    assert "claude" not in seen


def test_when_no_channel_can_carry_it_a_clear_400_says_why(driver):
    r = router()
    res = driver(r, "m", ok, needs=Needs(images=True, native_tools=frozenset({"openai"})))
    assert not res.ok and res.error.status == 400 and res.attempts == []
    assert "text-only lacks images" in res.error.message
    assert "claude lacks openai native tools" in res.error.message
