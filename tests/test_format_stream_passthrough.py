"""OpenAI Chat's stream_passthrough: the client's own stream request as sent to an OpenAI channel, asking for usage.

With check_request's Parsed, the body is not decoded again, and a body without stream_options gets
the member written in front of its first one. Whatever the path, the upstream must receive the
client's request with `stream_options.include_usage` true and nothing else changed — no second
`stream_options` member, however the client spelled its keys — as the decode-and-encode path
always sent.
"""

from __future__ import annotations

import json
from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from axonsim.formats import openai_chat as oc

_OPTIONS = st.sampled_from(["absent", "absent", "absent", "null", "empty", "false", "true", "other", "escaped"])
_TEXT = st.one_of(st.text(max_size=20), st.sampled_from(['"stream_options": 1', "stream_options", "{", "\\u005f"]))


def _expected(obj: dict[str, Any]) -> dict[str, Any]:
    """What the upstream must receive: the old decode-and-encode semantics, independently written."""
    opts = obj.get("stream_options")
    if isinstance(opts, dict):
        return obj if opts.get("include_usage") is True else {**obj, "stream_options": {**opts, "include_usage": True}}
    return {**obj, "stream_options": {"include_usage": True}}


def _top_keys(body: bytes) -> list[str]:
    keys: list[str] = []

    def hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        keys[:] = [k for k, _ in pairs]  # the outermost object is closed last
        return dict(pairs)

    json.loads(body, object_pairs_hook=hook)
    return keys


@st.composite
def bodies(draw: st.DrawFn) -> bytes:
    obj: dict[str, Any] = {"model": "gpt-4o", "messages": [{"role": "user", "content": draw(_TEXT)}], "stream": True}
    options = draw(_OPTIONS)
    value = {"null": None, "empty": {}, "false": {"include_usage": False}, "true": {"include_usage": True},
             "other": {"include_obfuscation": False}, "escaped": {"include_usage": False}}.get(options)
    items = list(obj.items())
    if options != "absent":
        items.insert(draw(st.integers(0, len(items))), ("stream_options", value))
    items = draw(st.permutations(items))
    style = draw(st.integers(0, 2))
    if style == 0:
        text = orjson.dumps(dict(items)).decode()
    else:
        text = json.dumps(dict(items), ensure_ascii=style == 1, indent=draw(st.sampled_from([None, 2])))
    if options == "escaped":  # the same key, spelled with an escape: only a decoder sees it is stream_options
        text = text.replace('"stream_options"', '"stream\\u005foptions"')
    return (draw(st.sampled_from(["", " ", "\n\t "])) + text + draw(st.sampled_from(["", "\n"]))).encode()


@settings(max_examples=300, deadline=None)
@given(bodies())
def test_the_upstream_gets_the_clients_request_asking_for_usage(body: bytes) -> None:
    parsed = oc.check_request(body)
    wire_before = json.dumps(parsed.wire)
    out = oc.stream_passthrough(body, parsed)
    assert orjson.loads(out) == _expected(orjson.loads(body)) == orjson.loads(oc.stream_passthrough(body))
    assert _top_keys(out).count("stream_options") == 1  # never a second member for the upstream to pick
    assert json.dumps(parsed.wire) == wire_before  # the decoded request is not changed
    if parsed.include_usage:
        assert out is body  # asked already: the client's bytes as they came
    elif "stream_options" not in orjson.loads(body):
        assert out.replace(b'"stream_options":{"include_usage":true},', b"", 1) == body  # only the member added


def test_without_parsed_or_with_another_formats_parsed_the_body_is_decoded() -> None:
    body = b'{"model":"m","messages":[{"role":"user","content":"hi"}],"stream_options":null}'
    expected = {"model": "m", "messages": [{"role": "user", "content": "hi"}],
                "stream_options": {"include_usage": True}}
    assert orjson.loads(oc.stream_passthrough(body)) == expected
    other = oc.check_request(body)
    other.wire = None  # as a Parsed of a format that keeps no decoded object
    assert orjson.loads(oc.stream_passthrough(body, other)) == expected
    assert _top_keys(oc.stream_passthrough(body, oc.check_request(body))) == ["model", "messages", "stream_options"]
