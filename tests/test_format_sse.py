"""The SSE decoder: its byte-level fast path and its line-by-line path give the events of the
WHATWG rules (the plain line-by-line decoder below is the oracle) for any input and any chunking,
in both the str and the raw (bytes) mode."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from axonsim.formats.sse import SSEDecoder, SSEEvent


class OracleDecoder:
    """Line by line, nothing else: the decoder as it was before the fast path."""

    def __init__(self) -> None:
        self._buf = b""
        self._event = ""
        self._data: list[str] = []
        self._pending_cr = False

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        if self._pending_cr and chunk.startswith(b"\n"):
            chunk = chunk[1:]
        self._pending_cr = False
        buf = self._buf + chunk
        out: list[SSEEvent] = []
        start = 0
        n = len(buf)
        while True:
            i = buf.find(b"\n", start)
            j = buf.find(b"\r", start)
            if i < 0 and j < 0:
                break
            if j < 0 or (0 <= i < j):
                end, nxt = i, i + 1
            else:
                end = j
                if j + 1 < n:
                    nxt = j + 2 if buf[j + 1 : j + 2] == b"\n" else j + 1
                else:
                    nxt = j + 1
                    self._pending_cr = True
            self._line(buf[start:end].decode("utf-8", "replace"), out)
            start = nxt
        self._buf = buf[start:]
        return out

    def close(self) -> list[SSEEvent]:
        out: list[SSEEvent] = []
        if self._buf:
            self._line(self._buf.decode("utf-8", "replace"), out)
            self._buf = b""
        self._line("", out)
        return out

    def _line(self, line: str, out: list[SSEEvent]) -> None:
        if not line:
            if self._data:
                out.append(SSEEvent(self._event, "\n".join(self._data)))
            self._event = ""
            self._data = []
            return
        if line[0] == ":":
            return
        field, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        if field == "data":
            self._data.append(value)
        elif field == "event":
            self._event = value


def run(dec: SSEDecoder | OracleDecoder, chunks: list[bytes]) -> list[SSEEvent]:
    out: list[SSEEvent] = []
    for c in chunks:
        out.extend(dec.feed(c))
    out.extend(dec.close())
    return out


def run_data_first(dec: SSEDecoder, chunks: list[bytes]) -> list[SSEEvent]:
    """As StreamParser.feed uses the decoder: data_only() first, feed() when it declines."""
    out: list[SSEEvent] = []
    for c in chunks:
        datas = dec.data_only(c)
        if datas is None:
            out.extend(dec.feed(c))
        else:
            out.extend(SSEEvent("", d) for d in datas)
    out.extend(dec.close())
    return out


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({min(c, len(data)) for c in cuts})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]


# Pieces that provoke every branch: whole fast-path events (with and without an event line),
# several data lines, comments, fields without the space, CR and CRLF line ends, runs of blank
# lines, invalid UTF-8, and text that looks like a field but is not.
PIECES = [
    b"data: {\"a\":1}\n\n", b"event: message_start\ndata: {\"x\":2}\n\n", b"data: [DONE]\n\n",
    b"data: x", b"data:y", b"data: ", b"event: e", b"event:e", b"event: ", b": comment", b"id: 7",
    b"\n", b"\n\n", b"\r", b"\r\n", b"\r\n\r\n", b"\xff\xfe", b"caf\xc3\xa9", b"\xc3", b"data: \xe2\x82",
    b"event: a:b", b"data: a\ndata: b\n\n", b"datum: z\n", b"data", b"event",
    b"event: m\ndata: 1\ndata: 2\n\n", b"event: m\ndata: 1\n: c\n\n", b"event: m\nid: 1\n\n",
    b'data: {"g":1}\r\n\r\n', b"event: c\r\ndata: 2\r\n\r\n",
]


@settings(max_examples=400, deadline=None)
@given(st.lists(st.sampled_from(PIECES), max_size=14), st.lists(st.integers(0, 400), max_size=8),
       st.booleans())
def test_any_input_any_chunking_matches_the_line_by_line_rules(pieces: list[bytes], cuts: list[int],
                                                               raw: bool) -> None:
    data = b"".join(pieces)
    chunks = split(data, cuts)
    expected = run(OracleDecoder(), [data])
    assert run(OracleDecoder(), chunks) == expected
    for got in (run(SSEDecoder(raw=raw), chunks), run_data_first(SSEDecoder(raw=raw), chunks)):
        if raw:
            assert all(isinstance(e.data, bytes) for e in got)
            got = [SSEEvent(e.event, e.data.decode("utf-8", "replace")) for e in got]  # type: ignore[union-attr, attr-defined]
        assert got == expected


def test_the_fast_path_shapes() -> None:
    frames = (b'data: {"a":1}\n\nevent: ping\ndata: {}\n\ndata: [DONE]\n\n')
    expected = [SSEEvent("", '{"a":1}'), SSEEvent("ping", "{}"), SSEEvent("", "[DONE]")]
    assert run(SSEDecoder(), [frames]) == expected
    assert run(SSEDecoder(raw=True), [frames]) == [SSEEvent(e.event, e.data.encode()) for e in expected]  # type: ignore[arg-type]
    # CRLF events (Gemini's) go the general way, to the same events
    assert run(SSEDecoder(), [b"data: 1\r\n\r\ndata: 2\r\n\r\n"]) == [SSEEvent("", "1"), SSEEvent("", "2")]
    # data_only() takes whole single-line events and declines anything else, consuming nothing
    dec = SSEDecoder(raw=True)
    assert dec.data_only(b"data: {}\n\n") == [b"{}"]
    assert dec.data_only(b"data: 1\n\ndata: 2\n\n") == [b"1", b"2"]
    assert SSEDecoder().data_only(b"data: \xc3\xa9\n\n") == ["\xe9"]
    for other in (b"event: e\ndata: 1\n\n", b"data: 1\n\nevent: e\ndata: 2\n\n", b"data: 1\r\n\r\n",
                  b"data: 1\n", b"data: 1\n\ndata: 2", b"data:1\n\n", b"data: 1\ndata: 2\n\n",
                  b"data: 1\n\n\n\n", b": c\n\n"):
        assert dec.data_only(other) is None
    assert dec.feed(b"data: 1") == [] and dec.data_only(b"data: 2\n\n") is None  # an event is pending
    # a partial event after the last blank line waits for the next chunk
    dec = SSEDecoder()
    assert dec.feed(b'data: 1\n\ndata: 2') == [SSEEvent("", "1")]
    assert dec.feed(b'3\n\n') == [SSEEvent("", "23")]
    # invalid UTF-8 is replaced in str mode and kept as received in raw mode
    assert run(SSEDecoder(), [b"data: \xff\n\n"]) == [SSEEvent("", "\ufffd")]
    assert run(SSEDecoder(raw=True), [b"data: \xff\n\n"]) == [SSEEvent("", b"\xff")]  # type: ignore[arg-type]
