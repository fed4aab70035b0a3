"""The request aiohttp's connection pool is asked for connections by, its pool key computed once.

A module of its own because it is not compiled (axonsim/native.py). pip's isolated build environment
holds only the build requirements, so mypyc does not see aiohttp there: it takes the base for `Any`
and lays the class out as if it had no Python base. Compiled inside server/upstream.py, that class
crashed the interpreter at its instances' first attribute store (a SystemError, then a segfault) on
a fresh `pip install`.
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
