"""The request aiohttp's connection pool is asked for connections by, its pool key computed once.

A module of its own because it is not compiled (axonsim/native.py): mypyc cannot build a class on a
Python library's class. Built by mypyc inside server/upstream.py, it crashed the interpreter at its
instances' first attribute store when pip's isolated build compiled it.
"""

from __future__ import annotations

from typing import Any

import aiohttp


class PoolRequest(aiohttp.ClientRequest):
    """A ClientRequest whose `connection_key` is computed at construction, not at every connect (the
    property builds the key anew each time it is read)."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self._key = super().connection_key

    @property
    def connection_key(self) -> Any:
        return self._key
