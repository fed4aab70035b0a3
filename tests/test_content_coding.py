"""Compressed request bodies (server/content_coding.py): decoded whole, within the limit, or refused with the right status."""

from __future__ import annotations

import gzip
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from server.content_coding import MAX_CODINGS, MAX_MEMBERS, ON_THE_LOOP, CodingError, decode


def raw_deflate(data: bytes) -> bytes:
    c = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    return c.compress(data) + c.flush()


ENCODE = {"gzip": gzip.compress, "x-gzip": gzip.compress, "deflate": zlib.compress, "identity": lambda b: b}


@settings(max_examples=60, deadline=None)
@given(data=st.binary(max_size=5000), codings=st.lists(st.sampled_from(sorted(ENCODE)), min_size=1, max_size=3))
def test_decoding_undoes_every_coding_listed_last_first(data: bytes, codings: list[str]) -> None:
    body = data
    stages = [len(data)]
    for c in codings:  # applied in the order listed, as RFC 9110 §8.4 says
        body = ENCODE[c](body)
        stages.append(len(body))
    header = ", ".join(c.upper() if i % 2 else c for i, c in enumerate(codings)).encode()  # case does not matter
    # the limit holds for what each decoding gives (an inner stage may be the largest)
    assert decode(body, header, max(stages[:-1])) == data


def test_bare_deflate_data_is_read_as_deflate_too() -> None:
    assert decode(raw_deflate(b'{"a": 1}'), b"deflate", 100) == b'{"a": 1}'


def test_gzip_members_one_after_another_are_one_body() -> None:
    assert decode(gzip.compress(b'{"a": ') + gzip.compress(b"1}"), b"gzip", 100) == b'{"a": 1}'


@pytest.mark.parametrize("header", [b"identity", b"", b" , identity"])
def test_no_coding_leaves_the_body_alone(header: bytes) -> None:
    assert decode(b"not compressed", header, 100) == b"not compressed"


def test_the_limit_holds_for_what_decoding_gives() -> None:
    data = b"x" * 10_000
    assert decode(gzip.compress(data), b"gzip", 10_000) == data  # exactly the limit: fine
    for header, body in ((b"gzip", gzip.compress(data)), (b"deflate", zlib.compress(data)),
                         (b"deflate", raw_deflate(data)), (b"gzip", gzip.compress(data[:6000]) + gzip.compress(data[6000:]))):
        with pytest.raises(CodingError) as e:
            decode(body, header, 9_999)
        assert e.value.status == 413, header


def test_a_bomb_is_stopped_at_the_limit_not_decoded_whole() -> None:
    bomb = gzip.compress(b"\0" * (64 << 20))  # 64 MiB of zeros in ~64 KiB
    with pytest.raises(CodingError) as e:
        decode(bomb, b"gzip", 1 << 20)
    assert e.value.status == 413


@pytest.mark.parametrize(("body", "header", "words"), [
    (b'{"model": "m"}', b"gzip", "not valid gzip"),  # says gzip, is not
    (gzip.compress(b'{"model": "m"}')[:-6], b"gzip", "ends before"),  # cut short
    (b"", b"gzip", "ends before"),
    (gzip.compress(b"{}") + b"trailing", b"gzip", "not valid gzip"),
    (b'{"model": "m"}', b"deflate", "not valid deflate"),
    (zlib.compress(b"{}") + b"more", b"deflate", "after the end"),
])
def test_a_body_that_is_not_what_its_header_says_is_a_400(body: bytes, header: bytes, words: str) -> None:
    with pytest.raises(CodingError) as e:
        decode(body, header, 1000)
    assert e.value.status == 400 and words in e.value.message


@pytest.mark.parametrize("header", [b"br", b"zstd", b"gzip, br", b"compress", b"x" * 500])
def test_a_coding_the_gateway_cannot_read_is_a_415(header: bytes) -> None:
    with pytest.raises(CodingError) as e:
        decode(gzip.compress(b"{}"), header, 1000)
    assert e.value.status == 415 and "not supported" in e.value.message
    assert len(e.value.message) < 200  # a long header is not quoted whole


def test_many_members_or_codings_are_refused_not_read_one_by_one() -> None:
    # a body of 300k empty gzip members took time quadratic in its size (each member copied the rest)
    assert decode(gzip.compress(b"") * MAX_MEMBERS, b"gzip", 100) == b""
    with pytest.raises(CodingError) as e:
        decode(gzip.compress(b"") * 300_000, b"gzip", 100)
    assert e.value.status == 400 and "gzip members" in e.value.message
    body = b"{}"
    for _ in range(MAX_CODINGS):
        body = gzip.compress(body)
    assert decode(body, b", ".join([b"gzip"] * MAX_CODINGS), 1000) == b"{}"
    with pytest.raises(CodingError) as e:
        decode(gzip.compress(body), b", ".join([b"gzip"] * (MAX_CODINGS + 1)), 1000)
    assert e.value.status == 400 and "content codings" in e.value.message


@pytest.mark.parametrize(("size", "threads"), [(1000, 0), (ON_THE_LOOP + 1, 1), (8 * ON_THE_LOOP, 1)])
def test_a_body_that_inflates_large_is_decoded_in_a_thread(monkeypatch: pytest.MonkeyPatch, size: int,
                                                           threads: int) -> None:
    # What decides is the output, not the size sent: gzip inside gzip puts 8 MiB in a few hundred bytes.
    import asyncio
    import threading

    from server import content_coding

    calls: list[tuple[int, bool]] = []
    real = content_coding.decode

    def watched(body: bytes, header: bytes, limit: int) -> bytes:
        calls.append((limit, threading.current_thread() is threading.main_thread()))
        return real(body, header, limit)

    monkeypatch.setattr(content_coding, "decode", watched)
    packed = gzip.compress(gzip.compress(b" " * size))
    assert len(packed) < 20_000
    out = asyncio.run(content_coding.decode_body(packed, b"gzip, gzip", 32 << 20))
    assert out == b" " * size
    on_loop = [c for c in calls if c[1]]
    assert on_loop == [(ON_THE_LOOP, True)]  # the loop decodes at most ON_THE_LOOP bytes a stage
    assert [c for c in calls if not c[1]] == [(32 << 20, False)] * threads
