"""An incremental check that streamed tool arguments are still the beginning of one JSON object.

Anthropic's SDKs parse a tool block's `input_json_delta` fragments as they come (partial JSON, with
jiter in the Python SDK) and raise at the first fragment that cannot begin a JSON object: the whole
stream is lost to the client. Arguments from other families are strings that only the model
vouches for — single quotes, a bare array, a stray character after a value, a leading space —
so a gateway that relays them must keep only what is valid.

`ObjectPrefix.feed` takes the arguments a piece at a time and returns the part of each piece that
keeps what was passed on so far a prefix of one valid JSON object (RFC 8259, plus paired surrogate
escapes, as orjson and jiter insist). Whitespace before the object is dropped (a parser given only
whitespace raises); from the first character that cannot belong, or once the object is closed,
nothing more is passed on. Two limits of the parsers also end it: containers nested deeper than
MAX_DEPTH (jiter's recursion limit is 201), and a number that is not a finite double (`1e400`, an
integer of 310 digits: orjson refuses them, and jiter raises on one of over 4,300 digits even
unfinished) — so a number is held back until it ends, and passed on whole. Each character is looked at once, so a long argument costs linear time;
runs of plain string text are skipped with a regular expression.
"""

from __future__ import annotations

import math
import re

_WS = " \t\n\r"
_STRING_RUN = re.compile(r'[^"\\\x00-\x1f]+')
_HEX = frozenset("0123456789abcdefABCDEF")
_SIMPLE_ESCAPES = frozenset('"\\/bfnrt')
_LITERALS = {"t": "rue", "f": "alse", "n": "ull"}
MAX_DEPTH = 200  # containers, the object included

# Where the scanner is. Between tokens:
_START = 0  # before the object's "{"
_KEY_OR_END = 1  # after "{": a key or "}"
_KEY = 2  # after "," in an object: a key
_COLON = 3  # after a key
_VALUE = 4  # after ":" or "," in an array: a value
_VALUE_OR_END = 5  # after "[": a value or "]"
_AFTER = 6  # after a value: ",", or the open container's closer
# Inside a token:
_STRING = 7
_NUMBER = 8
_LITERAL = 9
_DONE = 10  # the object is closed
_BROKEN = 11

# A number's parts, as JSON's grammar has them: -? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?
_N_MINUS, _N_ZERO, _N_INT, _N_DOT, _N_FRAC, _N_E, _N_ESIGN, _N_EXP = range(8)
_N_CAN_END = (False, True, True, False, True, False, False, True)


class ObjectPrefix:
    """Feed one JSON object's text in pieces; each call returns what of the piece may be passed on."""

    __slots__ = ("_state", "_stack", "_key", "_num", "_held", "_lit", "_esc", "_hex", "_high")

    def __init__(self) -> None:
        self._state = _START
        self._stack: list[str] = []  # the open containers: "{" or "["
        self._key = False  # the string being read is a key
        self._num = _N_MINUS
        self._held = ""  # a number's text from earlier pieces, passed on once it ends
        self._lit = ""  # the rest of the literal being read
        self._esc = 0  # in a string: 0 plain, 1 after "\", 2-5 reading \u's hex digits
        self._hex = ""
        self._high = False  # a high surrogate escape was read: a low one must follow at once

    @property
    def done(self) -> bool:
        """The object is complete: anything after it is dropped."""
        return self._state == _DONE

    @property
    def broken(self) -> bool:
        """A character that cannot continue the object came: nothing after it is passed on."""
        return self._state == _BROKEN

    def feed(self, text: str) -> str:
        state = self._state
        if state >= _DONE:
            return ""
        begin = 0  # where what is passed on of this piece begins (after whitespace before the object)
        lead = ""  # a held number's text, passed on before this piece's
        num_at = 0  # where the number being read began in this piece (0: in an earlier one)
        cut = -1  # where what is passed on of this piece ends, if not where reading stopped
        i = 0
        n = len(text)
        while i < n:
            c = text[i]
            if state == _STRING:
                if self._esc:
                    if not self._escape(c):
                        state = _BROKEN
                        break
                    i += 1
                    continue
                if self._high and c != "\\":
                    state = _BROKEN  # a high surrogate with no low one after it
                    break
                if c == '"':
                    state = _COLON if self._key else _AFTER
                elif c == "\\":
                    self._esc = 1
                else:
                    m = _STRING_RUN.match(text, i)
                    if m is None:
                        state = _BROKEN  # a raw control character
                        break
                    i = m.end()
                    continue
                i += 1
                continue
            if state == _NUMBER:
                nxt = self._number(c)
                if nxt == 0:
                    i += 1
                    continue
                held, self._held = self._held, ""
                if nxt < 0 or not math.isfinite(float(held + text[num_at:i])):
                    state = _BROKEN
                    cut = num_at  # none of the number
                    break
                lead += held  # (only the piece's first number can have begun in an earlier one)
                state = _AFTER  # the number ended before c, which is read again as what follows it
            if state == _LITERAL:
                if c != self._lit[0]:
                    state = _BROKEN
                    break
                self._lit = self._lit[1:]
                if not self._lit:
                    state = _AFTER
                i += 1
                continue
            if c in _WS:
                if state == _START:
                    begin = i + 1  # whitespace before the object is not passed on
                i += 1
                continue
            if state == _START:
                if c != "{":
                    state = _BROKEN
                    break
                self._stack.append("{")
                state = _KEY_OR_END
            elif state == _KEY_OR_END or state == _KEY:
                if c == '"':
                    self._key = True
                    state = _STRING
                elif c == "}" and state == _KEY_OR_END:
                    state = self._close()
                else:
                    state = _BROKEN
                    break
            elif state == _COLON:
                if c != ":":
                    state = _BROKEN
                    break
                state = _VALUE
            elif state == _VALUE or state == _VALUE_OR_END:
                if c == "]" and state == _VALUE_OR_END:
                    state = self._close()
                else:
                    state = self._value(c)
                    if state == _BROKEN:
                        break
                    num_at = i
            elif state == _AFTER:
                top = self._stack[-1]
                if c == ",":
                    state = _KEY if top == "{" else _VALUE
                elif (c == "}" and top == "{") or (c == "]" and top == "["):
                    state = self._close()
                else:
                    state = _BROKEN
                    break
            i += 1
            if state == _DONE:
                break
        self._state = state
        if state == _NUMBER:  # the piece ended inside a number: held until it ends
            self._held += text[num_at:]
            cut = num_at
        return lead + text[begin:i if cut < 0 else cut]

    def _close(self) -> int:
        self._stack.pop()
        return _AFTER if self._stack else _DONE

    def _value(self, c: str) -> int:
        if c == '"':
            self._key = False
            return _STRING
        if c == "{" or c == "[":
            if len(self._stack) >= MAX_DEPTH:
                return _BROKEN
            self._stack.append(c)
            return _KEY_OR_END if c == "{" else _VALUE_OR_END
        if c == "-":
            self._num = _N_MINUS
            return _NUMBER
        if "0" <= c <= "9":
            self._num = _N_ZERO if c == "0" else _N_INT
            return _NUMBER
        rest = _LITERALS.get(c)
        if rest is None:
            return _BROKEN
        self._lit = rest
        return _LITERAL

    def _number(self, c: str) -> int:
        """0 when c is part of the number, 1 when the number ended before c, -1 when c breaks it."""
        s = self._num
        digit = "0" <= c <= "9"
        if s == _N_MINUS:
            if not digit:
                return -1
            self._num = _N_ZERO if c == "0" else _N_INT
        elif s == _N_ZERO or s == _N_INT:
            if digit:
                if s == _N_ZERO:
                    return -1  # a leading zero
            elif c == ".":
                self._num = _N_DOT
            elif c in "eE":
                self._num = _N_E
            else:
                return 1
        elif s == _N_DOT:
            if not digit:
                return -1
            self._num = _N_FRAC
        elif s == _N_FRAC:
            if c in "eE":
                self._num = _N_E
            elif not digit:
                return 1
        elif s == _N_E:
            if c in "+-":
                self._num = _N_ESIGN
            elif digit:
                self._num = _N_EXP
            else:
                return -1
        elif s == _N_ESIGN:
            if not digit:
                return -1
            self._num = _N_EXP
        elif not digit:  # _N_EXP
            return 1
        return 0

    def _escape(self, c: str) -> bool:
        """c follows a backslash, or is one of \\u's hex digits. False when it breaks the string."""
        if self._esc == 1:
            if c == "u":
                self._esc = 2
                self._hex = ""
                return True
            if self._high or c not in _SIMPLE_ESCAPES:
                return False
            self._esc = 0
            return True
        if c not in _HEX:
            return False
        self._hex += c
        if len(self._hex) < 4:
            return True
        self._esc = 0
        code = int(self._hex, 16)
        if self._high:
            self._high = False
            return 0xDC00 <= code <= 0xDFFF
        if 0xD800 <= code <= 0xDBFF:
            self._high = True
            return True
        return not 0xDC00 <= code <= 0xDFFF
