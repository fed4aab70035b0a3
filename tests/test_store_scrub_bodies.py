"""Stored bodies keep no secret in any form: JSON-escaped, spread over a stream's events, or cut at the size limit."""

from __future__ import annotations

import importlib
import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from server.store import RequestRecord
from server.store.records import BODY_SCRUB_MARGIN, MAX_STORED_BODY
from server.store.rows import RowBuilder

S = importlib.import_module("server.store.scrub")  # the package's `scrub` name is the one-off function

KEY = "sk-upstream-SECRET-0123456789"
OTHER = "gw-client-key-ABCDEFGH"
SECRETS = [KEY, OTHER]
FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _escape_some(secret: str, which: list[bool]) -> str:
    """The secret as it reads inside a JSON string with the chosen characters \\u-escaped."""
    return "".join(f"\\u{ord(c):04x}" if esc else json.dumps(c)[1:-1] for c, esc in zip(secret, which, strict=False))


def _decoded_strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in [k, *_decoded_strings(v)]]
    if isinstance(value, list):
        return [s for v in value for s in _decoded_strings(v)]
    return []


text_around = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=30)


@FAST
@given(secret=st.sampled_from(SECRETS), data=st.data(), before=text_around, after=text_around)
def test_a_secret_escaped_any_way_inside_json_is_masked(secret: str, data: st.DataObject, before: str,
                                                        after: str) -> None:
    which = data.draw(st.lists(st.booleans(), min_size=len(secret), max_size=len(secret)))
    body = '{"messages":[{"role":"user","content":' + json.dumps(before)[:-1] + _escape_some(secret, which) + \
        json.dumps(after)[1:] + '}],"model":"m"}'
    assert secret in "".join(_decoded_strings(json.loads(body)))  # the test's own premise
    out = S.Scrubber(SECRETS).body(body.encode())
    assert out is not None
    decoded = json.loads(out)  # still JSON
    for s in _decoded_strings(decoded):
        assert KEY not in s and OTHER not in s
    content = decoded["messages"][0]["content"]
    assert S.MASK in content and content.startswith(before) and content.endswith(after)  # the rest kept


def test_an_escaped_backslash_is_not_an_escape() -> None:
    body = '{"c":"\\\\u0073k-upstream-SECRET-0123456789"}'  # a backslash, then the text u0073k-...
    assert S.Scrubber(SECRETS).body(body) == body


def _stream(pieces: list[str], shape: str) -> str:
    events = []
    for i, p in enumerate(pieces):
        if shape == "openai":
            ev = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "model": "m",
                  "choices": [{"index": 0, "delta": {"content": p}, "finish_reason": None}]}
            events.append(f"data: {json.dumps(ev)}\n\n")
        elif shape == "anthropic":
            ev = {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": p}}
            events.append(f"event: content_block_delta\ndata: {json.dumps(ev)}\n\n")
        else:  # Responses
            ev = {"type": "response.output_text.delta", "sequence_number": i, "item_id": "msg_1", "delta": p}
            events.append(f"event: response.output_text.delta\ndata: {json.dumps(ev)}\n\n")
    return "".join(events) + ("data: [DONE]\n\n" if shape == "openai" else "")


def _texts(body: str, shape: str) -> str:
    out = []
    for line in body.split("\n"):
        if line.startswith("data: {"):
            ev = json.loads(line[6:])
            out.append(ev["choices"][0]["delta"]["content"] if shape == "openai"
                       else ev["delta"]["text"] if shape == "anthropic" else ev["delta"])
    return "".join(out)


@FAST
@given(secret=st.sampled_from(SECRETS), shape=st.sampled_from(["openai", "anthropic", "responses"]),
       before=text_around, after=text_around, data=st.data())
def test_a_secret_spread_over_stream_events_is_masked(secret: str, shape: str, before: str, after: str,
                                                      data: st.DataObject) -> None:
    text = before + secret + after
    cuts = sorted(data.draw(st.sets(st.integers(1, len(text) - 1), max_size=12)))
    pieces = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]
    body = _stream(pieces, shape)
    out = S.Scrubber(SECRETS).body(body)
    assert out is not None
    joined = _texts(out, shape)  # every event still parses, in its place
    assert KEY not in joined and OTHER not in joined and KEY not in out and OTHER not in out
    assert joined.startswith(before[: max(0, len(before) - len(secret))])
    assert S.MASK in joined
    assert out.count("\n\n") == body.count("\n\n")  # no event lost or added


def test_a_stream_without_secrets_is_left_byte_for_byte() -> None:
    body = _stream(["Hello", " there", ", sk-upstream", " is not a key"], "openai")
    assert S.Scrubber(SECRETS).body(body) == body


def _builder() -> RowBuilder:
    return RowBuilder(S.Scrubber(SECRETS), store_bodies=True)


def test_a_secret_straddling_the_size_limit_leaves_no_piece() -> None:
    for offset in range(-len(KEY) - 2, 3):
        pad = MAX_STORED_BODY + offset
        raw = ('{"c":"' + "x" * (pad - 6) + KEY + "y" * 100 + '"}').encode()
        handed = raw[:MAX_STORED_BODY + BODY_SCRUB_MARGIN]  # what the proxy hands over (server/proxy.py)
        stored = _builder().body(handed)
        assert stored is not None and len(stored.encode()) <= MAX_STORED_BODY
        # No prefix of the key (beyond a few characters any text may hold) survives at the cut.
        tail = stored[-len(KEY):]
        for n in range(6, len(KEY) + 1):
            assert not tail.endswith(KEY[:n]), (offset, tail)


def test_a_long_body_is_cut_to_the_limit_on_a_character_boundary() -> None:
    body = ("é" * MAX_STORED_BODY).encode()
    stored = _builder().body(body)
    assert stored is not None and stored == "é" * (MAX_STORED_BODY // 2)


def test_bodies_in_rows_go_through_the_body_scrubber() -> None:
    escaped = _escape_some(KEY, [True] * len(KEY))
    r = RequestRecord("p", "m", "openai_chat", 200, "completed", stream=True,
                      request_body=('{"content":"' + escaped + '"}').encode(),
                      response_body=_stream(["a " + KEY[:5], KEY[5:] + " b"], "openai").encode())
    req, _ = _builder().prepare(r)
    text = json.dumps(req)
    assert KEY not in text and escaped not in text and "SECRET" not in text


def test_masks_that_shorten_a_cut_body_do_not_bring_its_cut_secret_back() -> None:
    """Many masked copies shorten the text by more than the margin: the part of a key the proxy's
    cut left at the end must not move into what is kept."""
    long_key = "sk-live-0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUV"
    builder = RowBuilder(S.Scrubber([long_key]), store_bodies=True)
    handed_size = MAX_STORED_BODY + BODY_SCRUB_MARGIN
    head = '{"messages":[{"role":"user","content":"' + (long_key + " ") * 1300
    for at in (40, 33, 20, 7):  # how much of the key lies before the cut
        body = (head + "x" * (handed_size - len(head) - at) + long_key + ' tail"}]}').encode()
        stored = builder.body(body[:handed_size])
        assert stored is not None and len(stored.encode()) <= MAX_STORED_BODY
        assert long_key[:6] not in stored.replace(S.MASK, "")


def test_a_stream_too_deep_to_read_is_withheld_and_its_record_kept() -> None:
    deep = "data: " + "[" * 100_000 + "]" * 100_000 + "\n"
    req, _ = _builder().prepare(RequestRecord("p", "m", "openai_chat", 400, "failed", request_body=deep.encode()))
    assert req[-2] == S.WITHHELD  # not stored unchecked, and the record is kept
    # Cut at the hand-off: the marker is stored whole, not trimmed away with the cut's tail.
    cut = ("data: " + "[" * (MAX_STORED_BODY + BODY_SCRUB_MARGIN)).encode()[:MAX_STORED_BODY + BODY_SCRUB_MARGIN]
    assert _builder().body(cut) in (S.WITHHELD, cut.decode()[:MAX_STORED_BODY - BODY_SCRUB_MARGIN // 2])


def test_an_escaped_key_is_masked_without_reading_the_json() -> None:
    """A body nested too deeply to decode still has its escaped keys masked: they are found in a view
    of the text with its escapes decoded, not in the parsed JSON."""
    escaped = _escape_some(KEY, [True] * len(KEY))
    deep = '{"c":"' + escaped + '", "n":' + "[" * 100_000 + "]" * 100_000 + "}"
    out = S.Scrubber(SECRETS).body(deep)
    assert out is not None and escaped not in out and out.startswith('{"c":"' + S.MASK + '"')


@pytest.mark.parametrize("body", [
    'data: {"x":1}\n\ndata: {"ESC": 1}\n\n',  # an object key
    'data: {"x":1}\n\ndata: "ESC"\n\n',  # a JSON-string event
    'event: error\n: ESC\ndata: {"a":1}\n\n',  # a comment line
    'event: ESC\ndata: {"a":1}\n\n',  # an event line
    'upstream said:\ndata: none\n{"k": "ESC"}',  # not a stream at all
    'data: {"x":1}\n\ndata: oops ESC\n\n',  # a data line that is not JSON
    'data: {"x":1}\n\ndata: {"k": "ESC',  # the last event cut short
    'x \\x41 \\u00 C:\\q ESC end\\',  # escapes Python's codec would refuse, and a final backslash
])
def test_an_escaped_key_is_masked_wherever_it_stands(body: str) -> None:
    escaped = _escape_some(KEY, [i % 2 == 0 for i in range(len(KEY))])
    out = S.Scrubber(SECRETS).body(body.replace("ESC", escaped))
    assert out is not None and escaped not in out and S.MASK in out
