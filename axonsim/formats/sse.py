"""Server-sent events: an incremental decoder for any chunking of the bytes, and the encoder.

The decoder follows the WHATWG rules that matter for LLM APIs: lines end in LF, CRLF or CR;
`event:` and `data:` fields (one optional space after the colon); several data lines join with
LF; a blank line dispatches; comment lines (starting with ':') are ignored.
"""

from __future__ import annotations

from typing import NamedTuple


class SSEEvent(NamedTuple):
    event: str  # "" when the stream sent no event: line
    data: str


class SSEDecoder:
    __slots__ = ("_buf", "_event", "_data", "_pending_cr")

    def __init__(self) -> None:
        self._buf = b""
        self._event = ""
        self._data: list[str] = []
        self._pending_cr = False

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        if self._pending_cr and chunk.startswith(b"\n"):
            chunk = chunk[1:]  # the LF of a CRLF split across chunks
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


def encode(data: bytes | str, event: str | None = None) -> bytes:
    if isinstance(data, str):
        data = data.encode()
    if event:
        return b"event: " + event.encode() + b"\ndata: " + data + b"\n\n"
    return b"data: " + data + b"\n\n"
