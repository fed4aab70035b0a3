"""The OpenAI Chat stream parser's text-chunk template gives exactly the events of a full parse.

The parser learns, from a stream's second plain text chunk, the bytes around its content string
and then reads later chunks that match by those bytes alone (StreamParser._learn). These tests
generate streams of mixed chunks in many envelopes (key orders, spacing, escaping, extra and
duplicate fields) and hold the parser to a twin that never learns a template.

The parser also builds its events without validating them again (openai_chat.trusted): every event
of those streams, and of the recorded ones, must be the model that validation makes.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from axonsim.formats import FormatError
from axonsim.formats import openai_chat as oc
from axonsim.unified import FinishEvent, StreamEvent, StreamStart, TextDelta, UsageEvent


def _enc(obj: object, style: int) -> bytes:
    if style == 0:
        return orjson.dumps(obj)
    if style == 1:
        return json.dumps(obj, ensure_ascii=True).encode()  # ", " and ": " separators, \\u escapes
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()


# "\x01" is the template check's sentinel: a text equal to it must not fool the check.
_TEXT = st.one_of(st.sampled_from(["\x01", "\x02", "same"]), st.text(st.characters(codec="utf-8"), max_size=12))

_KINDS = ("text", "text", "text", "text", "role_text", "empty", "finish", "usage", "tool", "reasoning", "refusal",
          "other_choice", "number", "two_strings", "dup_key", "bad_utf8", "logprobs", "error", "two_choices",
          "meta", "meta", "pad_number", "pad_two", "pad_dup", "pad_bad", "index_bool", "after_pad")

# OpenAI's per-chunk padding: random text, and values that look like the template's own bytes.
_PAD = st.one_of(_TEXT, st.sampled_from(['},"logprobs":null,"finish_reason":null}],"obfuscation":', "\x03", "\x04",
                                         '"obfuscation":"x"', "", "\\"])).filter(lambda t: t != "\x1c\x1b")
_RAW_PAD = "\x1c\x1b"  # the padding of a chunk whose bytes are edited after encoding


@st.composite
def streams(draw: st.DrawFn) -> bytes:
    style = draw(st.integers(0, 2))
    extra = draw(st.dictionaries(st.sampled_from(["system_fingerprint", "service_tier", "provider", "x"]),
                                 st.one_of(st.none(), _TEXT, st.integers(-5, 5)), max_size=3))
    keys = draw(st.permutations(["id", "object", "created", "model", "choices", "usage"]))
    # What providers put in the envelope's fields, and what they should not (the parser coerces).
    ident = draw(st.one_of(st.just("chatcmpl-1"), _TEXT, st.integers(-3, 3), st.none(), st.booleans(),
                           st.lists(st.integers(0, 2), max_size=2)).filter(lambda v: v != "\x1f\x1e\x1d"))
    created = draw(st.one_of(st.just(7), st.integers(-(2**40), 2**40), st.floats(-1e12, 1e12), st.booleans(),
                             st.none(), _TEXT).filter(lambda v: v != "\x1f\x1e\x1d"))
    count = st.one_of(st.integers(0, 10**6), st.floats(0, 1e6), st.none(), st.booleans(), _TEXT)
    role_every_chunk = draw(st.booleans())  # OpenRouter repeats the role in every delta
    padding = draw(st.sampled_from([None, "last", "last", "first"]))  # where each chunk's obfuscation goes
    kinds = draw(st.lists(st.sampled_from(_KINDS), max_size=14))

    def envelope(choices: list[object], usage: object = None, head_extra: dict[str, object] | None = None,
                 pad: str | None = None) -> bytes:
        base = {"id": ident, "object": "chat.completion.chunk", "created": created, "model": ident,
                "choices": choices, "usage": usage}
        obj = {k: base[k] for k in keys}
        obj.update(extra)
        obj.update(head_extra or {})
        if padding is not None:
            value = draw(_PAD) if pad is None else pad
            obj = {"obfuscation": value, **obj} if padding == "first" else {**obj, "obfuscation": value}
        return _enc(obj, style)

    def choice(delta: dict[str, object], index: int = 0, finish: str | None = None) -> dict[str, object]:
        if role_every_chunk:
            delta = {"role": "assistant", **delta}
        return {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}

    out = [envelope([choice({"role": "assistant", "content": ""})])]
    for kind in kinds:
        text = draw(_TEXT)
        if kind == "text":
            out.append(envelope([choice({"content": text})]))
        elif kind == "role_text":
            out.append(envelope([{"index": 0, "delta": {"role": "assistant", "content": text}, "finish_reason": None}]))
        elif kind == "empty":
            out.append(envelope([choice({})]))
        elif kind == "finish":
            out.append(envelope([choice({}, finish=draw(st.sampled_from(["stop", "length", "tool_calls"])))]))
        elif kind == "usage":
            out.append(envelope([], {"prompt_tokens": draw(count), "completion_tokens": draw(count),
                                     "total_tokens": draw(count),
                                     "prompt_tokens_details": {"cached_tokens": draw(count)},
                                     "completion_tokens_details": {"reasoning_tokens": draw(count)}}))
        elif kind == "tool":
            out.append(envelope([choice({"tool_calls": [{"index": 0, "id": "c1", "type": "function",
                                                        "function": {"name": "f", "arguments": text}}]})]))
        elif kind == "reasoning":
            out.append(envelope([choice({"content": text, "reasoning_content": text or "r"})]))
        elif kind == "refusal":
            out.append(envelope([choice({"content": text, "refusal": "no"})]))
        elif kind == "other_choice":
            out.append(envelope([choice({"content": text}, index=1)]))
        elif kind == "two_choices":
            out.append(envelope([choice({"content": text}), choice({"content": text}, index=1)]))
        elif kind == "logprobs":
            c = choice({"content": text})
            c["logprobs"] = {"content": [{"token": text, "logprob": -0.5}]}
            out.append(envelope([c]))
        elif kind == "index_bool":  # JSON true where the index goes: index 0 to the parse, not 1
            out.append(envelope([{"index": True, "delta": {"content": text}, "finish_reason": None}]))
        elif kind == "after_pad":  # the bytes after a padding changed: no longer the template's end
            raw = envelope([choice({"content": text})], pad=_RAW_PAD)
            out.append(raw[:-1] + b',"usage":null}' if draw(st.booleans()) else raw[:-1] + b"]")
        elif kind == "meta":
            # A "content" key after the delta's: the last one in the bytes is not the text.
            out.append(envelope([choice({"content": draw(st.sampled_from(["same", "\x01"]))})],
                                head_extra={"meta": {"content": text}}))
        elif kind == "error":
            out.append(envelope([choice({"content": text})], head_extra={"error": {"message": "boom"}}))
        elif kind.startswith("pad_"):
            # Raw edits of a padded text chunk: its padding is a number, or another key follows it, or
            # a second padding key (the parse keeps the last), or it is no JSON at all.
            raw = envelope([choice({"content": text})], pad=_RAW_PAD)
            pad_token = _enc(_RAW_PAD, style)
            if padding is None or raw.count(pad_token) != 1:
                out.append(raw)
            elif kind == "pad_number":
                out.append(raw.replace(pad_token, b"5"))
            elif kind == "pad_two":  # another key after the padding: still one object, not one string
                out.append(raw.replace(pad_token, pad_token + b', "x": ' + _enc(text, style)))
            elif kind == "pad_dup":
                out.append(raw.replace(pad_token, pad_token + b', "obfuscation": ' + _enc(text, style)))
            else:  # pad_bad: a malformed chunk, which the full parse refuses
                out.append(raw.replace(pad_token, pad_token[:-1] + b"\\x" + pad_token[-1:]))
        else:
            # Raw edits of a text chunk in the very envelope of the template: the head and tail
            # match, what lies between is not one well-formed string.
            raw = envelope([choice({"content": "\x1f\x1e\x1d"})], pad=_RAW_PAD)
            token = _enc("\x1f\x1e\x1d", style)
            assert raw.count(token) == 1
            if kind == "number":
                raw = raw.replace(token, b"5")
            elif kind == "two_strings":
                raw = raw.replace(token, token + b', "content": ' + _enc(text, style))
            elif kind == "dup_key":
                raw = raw.replace(b'"content"', b'"content": "dup", "content"')
            else:  # bad_utf8
                raw = raw.replace(token, b'"ok\xff"')
            out.append(raw)
    body = b"".join(b"data: " + c + b"\n\n" for c in out)
    if draw(st.booleans()):
        body += b"data: [DONE]\n\n"
    return body


def _run(data: bytes, learn: bool, seed: int | None = None) -> tuple[list[object], str | None]:
    p = oc.StreamParser()
    if not learn:
        p._plain_texts = 2  # the twin: never learns a template, every chunk takes the full parse
    events: list[object] = []
    pieces = [data]
    if seed is not None:
        rng = random.Random(seed)
        cuts = sorted(rng.sample(range(1, len(data)), k=min(len(data) - 1, rng.randint(0, 40))))
        pieces = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]
    try:
        for piece in pieces:
            events += p.feed(piece)
        events += p.close()
    except FormatError as e:
        return events, str(e)
    return events, None


@settings(max_examples=400, deadline=None)
@given(streams(), st.integers(0, 2**32))
def test_template_gives_the_events_of_a_full_parse(data: bytes, seed: int) -> None:
    expected = _run(data, learn=False)
    assert _run(data, learn=True) == expected
    split = _run(data, learn=True, seed=seed)
    assert split == _run(data, learn=False, seed=seed)
    if expected[1] is None:
        assert split == expected  # however the bytes are cut (an error drops the events of its own read)


def _chunk(delta: dict[str, object], **top: object) -> bytes:
    obj = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m",
           "choices": [{"index": 0, "delta": delta, "finish_reason": None}], **top}
    return b"data: " + orjson.dumps(obj) + b"\n\n"


def test_a_plain_stream_is_read_by_its_template() -> None:
    p = oc.StreamParser()
    evs = p.feed(_chunk({"role": "assistant", "content": ""}) + _chunk({"content": "He"}))
    assert p._head == b""  # not from the first text chunk (the one the client waits for)
    evs += p.feed(_chunk({"content": "l"}))
    assert p._head.endswith(b'"delta":{"content":') and p._tail == b'},"finish_reason":null}]}'
    evs += p.feed(_chunk({"content": 'lo "x"\\ é\n'}) + b"data: [DONE]\n\n")
    assert [(e.type, getattr(e, "text", None)) for e in evs] == [
        ("start", None), ("text", "He"), ("text", "l"), ("text", 'lo "x"\\ é\n')]


@pytest.mark.parametrize("top", [{"usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}},
                                 {"obfuscation": "a"}])
def test_no_template_from_a_chunk_that_says_more_than_text(top: dict[str, object]) -> None:
    p = oc.StreamParser()
    p.feed(_chunk({"content": "a"}, **top) + _chunk({"content": "b"}, **top))
    if "usage" in top:
        assert p._head == b""  # the chunk carried usage: not a template
    else:
        assert p._head.endswith(b'"delta":{"content":')
    evs = p.feed(_chunk({"content": "c"}, obfuscation="bb"))  # a padding of its own: read either way
    assert [e.text for e in evs] == ["c"]  # type: ignore[union-attr]


def _openai_chunk(delta: dict[str, object], pad: str | None, first: bool = False) -> bytes:
    # The shape of OpenAI's own chunks: service_tier, system_fingerprint, logprobs, and a random
    # "obfuscation" padding string after the choices.
    obj: dict[str, object] = {"id": "chatcmpl-D0q8", "object": "chat.completion.chunk", "created": 1769092764,
                              "model": "gpt-4o-mini-2024-07-18", "service_tier": "default",
                              "system_fingerprint": "fp_2933",
                              "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": None}]}
    if pad is not None:
        obj = {"obfuscation": pad, **obj} if first else {**obj, "obfuscation": pad}
    return b"data: " + orjson.dumps(obj) + b"\n\n"


def test_openai_padded_chunks_are_read_by_a_padded_template() -> None:
    p = oc.StreamParser()
    p.feed(_openai_chunk({"role": "assistant", "content": "", "refusal": None}, "x") +
           _openai_chunk({"content": "Hello"}, "ZGF") + _openai_chunk({"content": ","}, "lRK2aBv"))
    assert p._padded and p._tail.endswith(b'"obfuscation":') and p._end == b"}"
    for text, pad in ((" World", "kJ"), ("!", ""), ('"q" \\ é', '"obfuscation":"x"'), ("\x03", "\x03")):
        chunk = _openai_chunk({"content": text}, pad)[6:-2]
        assert p._template_text(chunk, len(p._head)) == text  # the template reads it, whatever the padding
    assert p._template_text(_openai_chunk({"content": "a"}, None)[6:-2], len(p._head)) is None  # no padding
    evs = p.feed(_openai_chunk({"content": " World"}, "kJ") + b"data: [DONE]\n\n")
    assert [(e.type, getattr(e, "text", None)) for e in evs] == [("text", " World")]


@pytest.mark.parametrize("pad", [b"5", b'"kJ", "x": 1', b'"kJ\\x"', b'"kJ'],
                         ids=["number", "more", "bad_escape", "open"])
def test_a_padding_that_is_not_one_string_takes_the_full_parse(pad: bytes) -> None:
    learn = _openai_chunk({"content": "Hello"}, "ZGF") + _openai_chunk({"content": ","}, "lRK2aBv")
    chunk = _openai_chunk({"content": "!"}, "\x1c").replace(b'"\\u001c"', pad)
    assert chunk.count(pad) == 1
    p, twin = oc.StreamParser(), oc.StreamParser()
    twin._plain_texts = 2  # never learns
    p.feed(learn)
    twin.feed(learn)
    assert p._padded and p._template_text(chunk[6:-2], len(p._head)) is None  # left to the full parse
    outcome = []
    for parser in (p, twin):
        try:
            outcome.append([(e.type, getattr(e, "text", None)) for e in parser.feed(chunk)])
        except FormatError as e:
            outcome.append(str(e))
    assert outcome[0] == outcome[1]
    read = pad[:1] == b"5" or pad.endswith(b"1")  # valid JSON, the padding ignored
    assert outcome[0] == ([("text", "!")] if read else "Upstream stream sent a malformed chunk.")


@pytest.mark.parametrize("end", [b',"usage":null}', b"]", b"} ", b"}}"])
def test_a_chunk_whose_bytes_after_the_padding_differ_takes_the_full_parse(end: bytes) -> None:
    learn = _openai_chunk({"content": "Hello"}, "ZGF") + _openai_chunk({"content": ","}, "lRK2aBv")
    chunk = _openai_chunk({"content": "c"}, "q")
    assert chunk.endswith(b"}\n\n")
    chunk = chunk[:-3] + end + b"\n\n"
    p = oc.StreamParser()
    data = learn + chunk + b"data: [DONE]\n\n"
    assert _run(data, learn=True) == _run(data, learn=False)
    p.feed(learn)
    assert p._padded and p._template_text(chunk[6:-2], len(p._head)) is None


def test_a_padded_template_is_learnt_from_spaced_json_too() -> None:
    def spaced(text: str, pad: str) -> bytes:
        obj = {"id": "c", "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}],
               "obfuscation": pad}
        return b"data: " + json.dumps(obj).encode() + b"\n\n"

    p = oc.StreamParser()
    p.feed(spaced("a", "1") + spaced("b", "22"))
    assert p._padded and p._tail.endswith(b'"obfuscation": ') and p._end == b"}"
    assert p._template_text(spaced("c", "333")[6:-2], len(p._head)) == "c"


def test_a_boolean_index_is_not_read_as_the_primary_choice() -> None:
    # JSON true compares equal to 1 in Python, but the parse reads it as index 0 (a review's case).
    c = [b'{"choices":[{"index":1,"delta":{"content":"a"}}]}', b'{"choices":[{"index":true,"delta":{"content":"b"}}]}',
         b'{"choices":[{"index":true,"delta":{"content":"c"}}]}']
    data = b"".join(b"data: " + x + b"\n\n" for x in c) + b"data: [DONE]\n\n"
    assert _run(data, learn=True) == _run(data, learn=False)
    assert [getattr(e, "text", None) for e in _run(data, learn=True)[0]] == [None, "a"]


def test_no_template_when_the_padding_comes_before_the_text() -> None:
    p = oc.StreamParser()
    p.feed(b"".join(_openai_chunk({"content": t}, pad, first=True) for t, pad in (("a", "1"), ("b", "22"), ("c", "3"))))
    assert p._head == b""  # the head would hold the padding, which changes with every chunk


def test_a_text_equal_to_the_sentinel_does_not_fool_the_check() -> None:
    # The learning chunk's text is the sentinel itself, and a later duplicate key overrides the
    # "content" the byte search finds: no template may come of it (a review's counterexample).
    chunks = [b'{"choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}',
              b'{"choices":[{"index":0,"delta":{"content":"a"}}]}',
              b'{"choices":[{"index":0,"delta":{"content":"\\u0001"}}],"z":{"content":"q"},"z":0}',
              b'{"choices":[{"index":0,"delta":{"content":"\\u0001"}}],"z":{"content":"EVIL"},"z":0}']
    data = b"".join(b"data: " + c + b"\n\n" for c in chunks) + b"data: [DONE]\n\n"
    p = oc.StreamParser()
    texts = [e.text for e in p.feed(data) if e.type == "text"]  # type: ignore[union-attr]
    assert texts == ["a", "\x01", "\x01"] and p._head == b""


# The fields the parser gives each event it builds without validation (the rest keep their defaults),
# as the constructor calls it replaced did.
_GIVEN = {StreamStart: ("id", "model", "created"), TextDelta: ("text",), FinishEvent: ("reason",),
          UsageEvent: ("usage",)}


def assert_validated(ev: BaseModel) -> None:
    """`ev` is, in every way a caller can observe, the model its constructor makes of the fields the
    parser gives it (model_fields_set, and so exclude_unset dumps, included)."""
    cls = type(ev)
    assert cls in StreamEvent.__args__ and ev.type == cls.model_fields["type"].default  # type: ignore[attr-defined]
    given = _GIVEN.get(cls, tuple(ev.model_fields_set))  # other events are validated: their own set is right
    if isinstance(ev, TextDelta) and ev.refusal:
        given = ("text", "refusal")  # a refusal's delta is validated too
    checked = cls(**{k: getattr(ev, k) for k in given})
    assert ev == checked and ev.model_fields_set == checked.model_fields_set == set(given)
    assert ev.model_dump() == checked.model_dump() and ev.model_dump_json() == checked.model_dump_json()
    assert ev.model_dump(exclude_unset=True) == checked.model_dump(exclude_unset=True)
    assert repr(ev) == repr(checked) and list(ev.__dict__) == list(checked.__dict__)
    assert [type(v) for v in ev.__dict__.values()] == [type(v) for v in checked.__dict__.values()]


@settings(max_examples=200, deadline=None)
@given(streams())
def test_events_built_without_validation_are_the_validated_ones(data: bytes) -> None:
    for ev in _run(data, learn=True)[0]:
        assert_validated(ev)  # type: ignore[arg-type]


@pytest.mark.parametrize("path", sorted((Path(__file__).parent / "fixtures" / "providers" / "openai").glob(
    "*.stream.jsonl")), ids=lambda p: p.name)
def test_recorded_stream_events_are_the_validated_ones(path: Path) -> None:
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    data = b"".join(b"data: " + ln["Data"].encode() + b"\n\n" for ln in lines)
    events, err = _run(data, learn=True)
    assert err is None and len(events) > 3
    for ev in events:
        assert_validated(ev)  # type: ignore[arg-type]


@settings(max_examples=200, deadline=None)
@given(st.text(st.characters(codec="utf-8")), st.text())
def test_text_delta_of_is_text_delta(text: str, later: str) -> None:
    fast, checked = oc.text_delta_of(text), TextDelta(text=text)
    assert_validated(fast)
    assert fast == checked and fast.model_fields_set == checked.model_fields_set == {"text"}
    fast.text = checked.text = later  # each its own instance: no state shared between events
    assert fast == checked and oc.text_delta_of(text).text == text
    assert oc.text_delta_of(text).model_fields_set is not fast.model_fields_set
