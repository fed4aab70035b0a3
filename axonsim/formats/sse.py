"""Server-sent events: an incremental decoder for any chunking of the bytes, and the encoder.

The decoder follows the WHATWG rules that matter for LLM APIs: lines end in LF, CRLF or CR;
`event:` and `data:` fields (one optional space after the colon); several data lines join with
LF; a blank line dispatches; comment lines (starting with ':') are ignored.

Two paths give the same events. The fast path takes the usual provider chunk — whole events, LF
line ends, one `data: ` line each, optionally after one `event: ` line — apart at the byte level,
with no per-line decoding. Anything else (CR, a partial event pending, several data lines,
comments, fields without the space) goes line by line through the general path.
"""

from __future__ import annotations

from typing import NamedTuple


class SSEEvent(NamedTuple):
    event: str  # "" when the stream sent no event: line
    data: str | bytes  # str; bytes (UTF-8, as received) from a decoder made with raw=True


# _new_event(SSEEvent, (event, data)) is SSEEvent(event, data) without the Python-level __new__ a
# NamedTuple adds: on the fast path that frame is a large share of the cost of an event.
_new_event = tuple.__new__


class SSEDecoder:
    """`raw=True` hands each event's data over as the bytes received instead of a decoded str:
    orjson parses bytes directly, so the caller skips a decode per event. Such bytes may hold
    invalid UTF-8 (the str form would hold U+FFFD instead), which the caller must allow for."""

    __slots__ = ("_buf", "_event", "_data", "_pending_cr", "_raw")

    def __init__(self, raw: bool = False) -> None:
        self._buf = b""
        self._event = ""
        self._data: list[str] = []
        self._pending_cr = False
        self._raw = raw

    def data_only(self, chunk: bytes) -> list[bytes | str] | None:
        """The data of each event in `chunk` when it is whole events of one `data: ` line each (no
        event: lines, LF line ends) arriving between events: the usual read of an OpenAI Chat
        stream, taken with no SSEEvent built. None, with nothing consumed, for any other chunk:
        feed it."""
        if (self._buf or self._data or self._event or self._pending_cr or not chunk.endswith(b"\n\n")
                or chunk.find(b"\r") >= 0):  # find, not `in`: the same scan at a third of the cost
            return None
        blocks = chunk.split(b"\n\n")
        blocks.pop()  # the b"" after the last blank line
        out: list[bytes | str] = []
        raw = self._raw
        for block in blocks:
            if not block.startswith(b"data: ") or block.find(b"\n") >= 0:
                return None
            out.append(block[6:] if raw else block[6:].decode("utf-8", "replace"))
        return out

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        if self._pending_cr:
            if chunk.startswith(b"\n"):
                chunk = chunk[1:]  # the LF of a CRLF split across chunks
            self._pending_cr = False
        buf = self._buf + chunk if self._buf else chunk
        out: list[SSEEvent] = []
        # The fast path needs the decoder between events (nothing of a pending event held) and
        # LF line ends; it then takes everything up to the last blank line in the buffer.
        # (Gemini's CRLF events are left to the general path too: they come few and large, and its
        # per-line cost is then below that of normalising the line ends first.)
        if not self._data and not self._event and buf.find(b"\r") < 0:
            blocks = buf.split(b"\n\n")
            # The last piece follows the last blank line: b"" for the usual chunk of whole
            # events, else the start of the next event, left to the general path.
            buf = blocks.pop()
            self._blocks(blocks, out)
        if buf:
            self._lines(buf, out)
        else:
            self._buf = b""
        return out

    def _blocks(self, blocks: list[bytes], out: list[SSEEvent]) -> None:
        """Complete events, each followed by a blank line, with LF line ends only (a block may hold
        blank lines of its own when the stream sent more than one in a row)."""
        raw = self._raw
        for block in blocks:
            if block.startswith(b"data: ") and block.find(b"\n") < 0:
                data = block[6:]
                out.append(_new_event(SSEEvent, ("", data if raw else data.decode("utf-8", "replace"))))
                continue
            if block.startswith(b"event: "):
                nl = block.find(b"\n")
                if nl > 0 and block.startswith(b"data: ", nl + 1) and block.find(b"\n", nl + 1) < 0:
                    data = block[nl + 7:]
                    out.append(_new_event(SSEEvent, (block[7:nl].decode("utf-8", "replace"),
                                                     data if raw else data.decode("utf-8", "replace"))))
                    continue
            for line in block.split(b"\n"):
                self._line(line.decode("utf-8", "replace"), out)
            self._line("", out)

    def _lines(self, buf: bytes, out: list[SSEEvent]) -> None:
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

    def close(self) -> list[SSEEvent]:
        """At EOF: a final event without its blank line is still dispatched."""
        out: list[SSEEvent] = []
        if self._buf:
            self._line(self._buf.decode("utf-8", "replace"), out)
            self._buf = b""
        self._line("", out)
        return out

    def _line(self, line: str, out: list[SSEEvent]) -> None:
        if not line:
            if self._data:
                data = "\n".join(self._data)
                out.append(SSEEvent(self._event, data.encode() if self._raw else data))  # type: ignore[arg-type]
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


def encode(data: bytes | str, event: str | None = None) -> bytes:
    if isinstance(data, str):
        data = data.encode()
    if event:
        return b"event: " + event.encode() + b"\ndata: " + data + b"\n\n"
    return b"data: " + data + b"\n\n"
