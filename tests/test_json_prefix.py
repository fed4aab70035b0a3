"""ObjectPrefix: streamed tool arguments kept the start of one valid JSON object, checked against the
parser the Anthropic SDK runs on every input_json_delta (jiter, partial mode) and against orjson."""

from __future__ import annotations

import jiter
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from axonsim.formats.json_prefix import MAX_DEPTH, ObjectPrefix

plain_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=6)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-10**18, 10**18) | st.floats(allow_nan=False, allow_infinity=False)
    | plain_text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(plain_text, inner, max_size=3), max_leaves=10)
json_objects = st.dictionaries(plain_text, json_values, max_size=4)


def feed_all(pieces: list[str]) -> tuple[list[str], ObjectPrefix]:
    p = ObjectPrefix()
    return [p.feed(x) for x in pieces], p


def pieces_of(text: str, cuts: list[int]) -> list[str]:
    cuts = sorted({c for c in cuts if 0 < c < len(text)})
    return [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]


def assert_sdk_reads_every_step(kept: list[str]) -> None:
    """What the SDK does with each delta: append it and parse the whole so far (partial mode)."""
    buf = b""
    for piece in kept:
        buf += piece.encode()
        if buf:
            jiter.from_json(buf, partial_mode=True)  # raises where the SDK would


@pytest.mark.parametrize("pieces, kept, done", [
    (['{"a": 1}'], ['{"a": 1}'], True),
    (["  \n{", '"a"', ": ", "[tru", "e, nul", "l, -0.5e+3, 12, {}]", "}  ", "junk"],
     ["{", '"a"', ": ", "[tru", "e, nul", "l, -0.5e+3, 12, {}]", "}", ""], True),
    (['{"s": "\\ud83d', '\\ude00 \\n \\" \\u00e9 é"}'], ['{"s": "\\ud83d', '\\ude00 \\n \\" \\u00e9 é"}'], True),
    ([" ", "", "{}"], ["", "", "{}"], True),
])
def test_valid_arguments_pass_whole_without_leading_space(pieces: list[str], kept: list[str], done: bool) -> None:
    out, p = feed_all(pieces)
    assert out == kept and p.done is done and not p.broken
    assert_sdk_reads_every_step(out)


@pytest.mark.parametrize("pieces, kept", [
    (["{'city': 'Paris'}"], ["{"]),  # single quotes: the SDK's "key must be a string"
    (["[1, 2]"], [""]),  # not an object: nothing, so the block's input stays {}
    (['"just text"'], [""]),
    (["Paris"], [""]),
    (['{"a": 1, ', "'b': 2}"], ['{"a": 1, ', ""]),
    (['{"a": 01}'], ['{"a": ']),  # a number is passed on once it has ended, whole
    (['{"a": 1.}'], ['{"a": ']),
    (['{"a": .5}'], ['{"a": ']),
    (['{"a": +1}'], ['{"a": ']),
    (['{"a": 1e+}'], ['{"a": ']),
    (['{"a": 1e400}'], ['{"a": ']),  # not a finite double: orjson refuses it, jiter makes it inf
    (['{"a": -' + "9" * 309 + "}"], ['{"a": ']),
    (['{"a": 1', "e4", "00}"], ['{"a": ', "", ""]),
    (['{"a": ' + "[" * 199 + "[]" + "]" * 199 + "}"], ['{"a": ' + "[" * 199]),  # deeper than jiter goes
    (['{"a": NaN}'], ['{"a": ']),  # jiter would take it, orjson (the non-stream side) not
    (['{"a": tru}'], ['{"a": tru']),
    (['{"a": truex}'], ['{"a": true']),
    (['{"a": 1 2}'], ['{"a": 1 ']),
    (['{"a" 1}'], ['{"a" ']),
    (['{,}'], ["{"]),
    (['{"a":1,}'], ['{"a":1,']),
    (['{"a":[1,]}'], ['{"a":[1,']),
    (['{"a": [1}'], ['{"a": [1']),
    (['{"a": "x\x01y"}'], ['{"a": "x']),  # a raw control character in a string
    (['{"a": "\\x"}'], ['{"a": "\\']),
    (['{"a": "\\u12G4"}'], ['{"a": "\\u12']),
    (['{"a": "\\ude00"}'], ['{"a": "\\ude0']),  # a lone low surrogate
    (['{"a": "\\ud83dx"}'], ['{"a": "\\ud83d']),  # a high one with no low one
    (['{"a": "\\ud83d\\n"}'], ['{"a": "\\ud83d\\']),
    (['{"a": "\\ud83d\\u0041"}'], ['{"a": "\\ud83d\\u004']),
    (['{"a": "\\ud83d"}'], ['{"a": "\\ud83d']),
])
def test_broken_arguments_stop_at_the_first_bad_character(pieces: list[str], kept: list[str]) -> None:
    out, p = feed_all(pieces)
    assert out == kept
    assert p.broken and not p.done
    assert p.feed('"more"}') == ""  # nothing after the break
    assert_sdk_reads_every_step(out)


def test_a_number_is_held_until_it_ends_then_passed_on_whole() -> None:
    out, p = feed_all(['{"a": 12', "34", ".5e", "-3, ", '"b": ' + "1" * 300, "0.5}"])
    assert out == ['{"a": ', "", "", "1234.5e-3, ", '"b": ', "1" * 300 + "0.5}"] and p.done
    digits = ["7" * 100] * 44  # a model repeating digits to its token limit: jiter raised past 4,300
    out, p = feed_all(['{"n": ', *digits, "}"])
    assert out == ['{"n": '] + [""] * 45 and p.broken
    assert_sdk_reads_every_step(out)


def test_nesting_deeper_than_the_sdks_parser_goes_ends_the_arguments() -> None:
    deep = '{"a": ' + "[" * (MAX_DEPTH - 1)
    out, p = feed_all([deep, "[", "]" * MAX_DEPTH + "}"])
    assert out == [deep, "", ""] and p.broken
    assert_sdk_reads_every_step(out)
    ok = '{"a": ' + "[" * (MAX_DEPTH - 1) + "]" * (MAX_DEPTH - 1) + "}"
    assert feed_all([ok])[0] == [ok]
    jiter.from_json(ok.encode())


def test_a_break_in_a_later_piece_keeps_the_earlier_ones() -> None:
    out, p = feed_all(['{"path": "/tmp/', 'x", "mode": ', "'w'}", '"}'])
    assert out == ['{"path": "/tmp/', 'x", "mode": ', "", ""] and p.broken
    assert jiter.from_json("".join(out).encode(), partial_mode=True) == {"path": "/tmp/x"}


@settings(max_examples=300, deadline=None)
@given(json_objects, st.lists(st.integers(0, 400), max_size=12), st.sampled_from(["", " ", "\n  "]),
       st.booleans())
def test_property_any_object_any_cut_passes_whole(obj: dict[str, object], cuts: list[int], lead: str,
                                                  pretty: bool) -> None:
    text = orjson.dumps(obj, option=orjson.OPT_INDENT_2 if pretty else 0).decode()
    out, p = feed_all(pieces_of(lead + text, cuts))
    assert "".join(out) == text and p.done and not p.broken
    assert_sdk_reads_every_step(out)


@settings(max_examples=500, deadline=None)
@given(json_objects, st.data())
def test_property_damaged_arguments_never_break_the_sdk(obj: dict[str, object], data: st.DataObject) -> None:
    text = orjson.dumps(obj).decode()
    at = data.draw(st.integers(0, len(text)))
    junk = data.draw(st.sampled_from(["'", '"', ",", "}", "]", "{", "[", ":", "\\", "x", "1", "-", ".", "e", " ",
                                      "\x00", "\\u", "\\ud800", "tru", "NaN", "1e400", "-2E+308", "9" * 320,
                                      "0." + "3" * 400, "[" * 205]))
    damaged = text[:at] + junk + text[at + data.draw(st.integers(0, 2)):]
    cuts = data.draw(st.lists(st.integers(0, len(damaged)), max_size=10))
    out, p = feed_all(pieces_of(damaged, cuts))
    kept = "".join(out)
    assert damaged.lstrip(" ").startswith(kept)  # only ever a prefix, never altered
    assert_sdk_reads_every_step(out)
    try:
        whole = orjson.loads(damaged)
    except orjson.JSONDecodeError:
        whole = None
    if isinstance(whole, dict):  # still one valid object: passed on whole
        assert kept == damaged.strip() and p.done
    elif not p.broken:
        # Not broken, yet not a valid object: it is unfinished, or complete with something after it.
        assert not p.done or orjson.loads(kept) is not None
    if p.done:
        assert isinstance(orjson.loads(kept), dict)
