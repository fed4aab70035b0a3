"""A channel's keys taken out of its answers: whole answers, streams split anywhere, JSON-escaped forms."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from server.echoes import MIN_ECHOED, REDACTED, Echoes, StreamEchoes

KEY = "sk-live-KEY/0123456789abcdef"
OTHER = "sk-live-KEY"  # a key that is the start of another: the longer one is replaced whole
BORDER = "kk-ABC-kk"  # a key that ends with its own start


def test_clean_replaces_every_form_of_every_key() -> None:
    e = Echoes([KEY, OTHER])
    escaped = KEY.replace("/", "\\/")  # how a JSON encoder that escapes "/" writes it
    text = f'{{"a": "{KEY}", "b": "{escaped}", "c": "{OTHER}!"}}'.encode()
    assert e.clean(text) == b'{"a": "[redacted]", "b": "[redacted]", "c": "[redacted]!"}'
    assert e.clean(b"nothing here") == b"nothing here"
    assert Echoes([]).clean(text) == text


def test_held_keeps_back_only_a_possible_start_of_a_key() -> None:
    e = Echoes([KEY])
    assert e.held(b"data: {}\n\n") == 0
    assert e.held(b'data: {"x": "sk-li') == 5
    assert e.held(b"sk-live-KEY/0123") == 16
    assert e.held(b"") == 0


def test_a_key_split_over_reads_is_caught() -> None:
    s = StreamEchoes(Echoes([KEY]))
    text = f"data: {{\"t\": \"{KEY}\"}}\n\n".encode()
    cut = text.index(b"KEY/01")
    first = s.feed(text[:cut])
    assert not first.endswith(b"sk-live-")  # the possible start of the key is kept back
    out = first + s.feed(text[cut:]) + s.close()
    assert out == text.replace(KEY.encode(), REDACTED)


@settings(max_examples=300, deadline=None)
@given(parts=st.lists(st.sampled_from([KEY, OTHER, BORDER, "sk-", "sk-live-K", "kk-", "kk", "k", "x", "\n\n", "data: ",
                                       "/", "\\/"]), max_size=12),
       cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=8))
def test_any_split_gives_what_cleaning_the_whole_gives(parts: list[str], cuts: list[int]) -> None:
    text = "".join(parts).encode()
    whole = Echoes([KEY, OTHER, BORDER]).clean(text)
    s = StreamEchoes(Echoes([KEY, OTHER, BORDER]))
    bounds = sorted({0, len(text), *(c for c in cuts if c < len(text))})
    out = b"".join(s.feed(text[a:b]) for a, b in zip(bounds, bounds[1:], strict=False)) + s.close()
    assert out == whole
    assert OTHER.encode() not in out and BORDER.encode() not in out  # (OTHER is in KEY)


def test_a_key_that_ends_with_its_own_start_is_caught_at_the_end_of_a_read() -> None:
    s = StreamEchoes(Echoes([BORDER]))
    out = s.feed(b"data: kk-ABC-kk") + s.feed(b"\n\n") + s.close()
    assert out == b"data: [redacted]\n\n"


def test_a_short_key_is_not_searched_for() -> None:
    # Local servers take any key ("ollama", "0"): masking such a word would corrupt answers and
    # their JSON ('"index":0'), not keep a secret.
    e = Echoes(["ollama", "0", "sk-real-key-000"])
    text = b'{"index":0,"text":"run `ollama pull` with sk-real-key-000"}'
    assert e.clean(text) == b'{"index":0,"text":"run `ollama pull` with [redacted]"}'
    assert len(MIN_ECHOED_KEY) == MIN_ECHOED  # the shortest key searched for
    assert Echoes([MIN_ECHOED_KEY]).clean(MIN_ECHOED_KEY.encode()) == REDACTED


MIN_ECHOED_KEY = "k" * MIN_ECHOED


@settings(max_examples=200, deadline=None)
@given(st.lists(st.booleans(), min_size=len(KEY), max_size=len(KEY)), st.booleans(), st.booleans())
def test_a_key_spelled_with_json_escapes_is_caught_once_or_twice_escaped(escape: list[bool], upper: bool,
                                                                        twice: bool) -> None:
    """Any character of a JSON string may be written \\uXXXX (either case of hex), and the gateway
    decodes what it converts: a key spelled so must not pass because its bytes differ."""
    spelled = "".join((f"\\u{ord(c):04X}" if upper else f"\\u{ord(c):04x}") if e else c for c, e in zip(KEY, escape, strict=True))
    answer = '{"choices": [{"message": {"content": "key: ' + spelled + ' ok"}}]}'
    if twice:  # inside a JSON string inside JSON (a tool call's arguments): escaped again
        answer = json.dumps({"arguments": answer})
    cleaned = Echoes([KEY]).clean(answer.encode())
    decoded = json.loads(cleaned)
    text = json.loads(decoded["arguments"]) if twice else decoded
    assert text["choices"][0]["message"]["content"] == "key: [redacted] ok"


def test_a_key_with_quotes_and_backslashes_is_caught_escaped_twice() -> None:
    key = 'sk-we"ird<&>\\key/+=SECRET5'
    nested = json.dumps({"name": "f", "arguments": json.dumps({"k": key})}).encode()
    cleaned = Echoes([key]).clean(nested)
    assert json.loads(json.loads(cleaned)["arguments"]) == {"k": "[redacted]"}
    # an answer without escapes of the key is left alone, escapes of other text included
    plain = b'{"content": "line\\none \\"quoted\\" \\u00e9"}'
    assert Echoes([KEY]).clean(plain) == plain and Echoes([key]).clean(plain) == plain


@settings(max_examples=300, deadline=None)
@given(st.lists(st.booleans(), min_size=len(KEY), max_size=len(KEY)), st.integers(0, 10_000))
def test_an_escaped_key_split_over_two_reads_is_caught(escape: list[bool], where: int) -> None:
    """The network decides where a read ends, inside an escaped spelling too: the stream must give
    what cleaning the whole answer gives."""
    spelled = "".join(f"\\u{ord(c):04x}" if e else c for c, e in zip(KEY, escape, strict=True))
    event = ('data: {"choices": [{"delta": {"content": "Your key: ' + spelled + ' ok"}}]}\n\n').encode()
    cut = where % (len(event) + 1)
    s = StreamEchoes(Echoes([KEY]))
    out = s.feed(event[:cut]) + s.feed(event[cut:]) + s.close()
    assert out == Echoes([KEY]).clean(event)
    assert json.loads(out[6:])["choices"][0]["delta"]["content"] == "Your key: [redacted] ok"


def test_masking_an_escaped_key_after_an_escaped_backslash_leaves_valid_json() -> None:
    spelled = "".join(f"\\u{ord(c):04x}" for c in KEY)
    for prefix in ("C:\\\\", "C:\\\\\\\\", "C:"):  # one escaped backslash, two, none
        answer = ('{"content": "dir ' + prefix + spelled + '"}').encode()
        assert json.loads(Echoes([KEY]).clean(answer))["content"] == "dir " + json.loads(f'"{prefix}"') + "[redacted]"
