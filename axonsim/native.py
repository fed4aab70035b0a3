"""The core modules compiled to C with mypyc: which they are, whether the compiled build is the one running, and the pure-Python fallback.

The router, the channel state, the strategies, the behaviour model and the simulator's event
loop run once or more per request, in the proxy and in the simulator alike; compiled, a simulation
takes a little over half the time it takes interpreted (benchmarks/sim_throughput.py). The proxy's
own per-request modules are compiled too: about a tenth fewer instructions per proxied request
(callgrind). The build (setup.py) compiles them unless AXONSIM_PURE_PYTHON=1, and records a hash
of each one's source beside them.

Compiled code checks annotations at run time: a value that contradicts its annotation raises
TypeError there, where the sources would carry on. So annotations in these modules must be true,
not only accepted by mypy (the build refuses what mypy rejects, but not a wrong `Any` or a cast).

The same sources run either way. When AXONSIM_PURE_PYTHON=1 is set at run time, or when a source
no longer matches the build (an editable checkout edited or updated since it was installed), the
package imports the sources instead of the compiled modules — all of them, never a mix, since a
compiled module expects the others' classes compiled too — and says so in a warning when the
build is stale.
"""

from __future__ import annotations

import hashlib
import importlib.abc
import importlib.machinery
import importlib.util
import json
import os
import sys
import warnings
from pathlib import Path
from types import ModuleType
from typing import Any

# Dependencies first; every one of these is imported by the per-request path.
COMPILED = (
    "axonsim.candidates",
    "axonsim.limits",
    "axonsim.health",
    "axonsim.policy",
    "axonsim.behavior",
    "axonsim.balancer",
    "axonsim.state",
    "axonsim.strategies",
    "axonsim.strategies_peers",
    "axonsim.strategies_axonhub",
    "axonsim.execution",
    "axonsim.sim.channel",
    "axonsim.sim.results",
    "axonsim.sim.driver",
    # The proxy's per-request path: the OpenAI Chat format (parsing every request in that format,
    # reading every answer's usage), the handler, the live driver, the upstream seam and what they
    # call per request. Named here, not imported: the core does not depend on server/, whose
    # package imports axonsim first so that this list is settled before any of them loads.
    "axonsim.formats.parsed",
    "axonsim.formats.sse",
    "axonsim.formats.openai_chat",
    "server.ids",
    "server.auth",
    "server.routes",
    "server.store.records",
    "server.store.scrub",
    "server.store.rows",
    "server.metrics",
    "server.echoes",
    "server.upstream",
    "server.driver",
    "server.proxy",
    "server.app",
)
PURE_ENV = "AXONSIM_PURE_PYTHON"
SOURCES_FILE = "_compiled_sources.json"  # {module: sha256 of the source it was compiled from}

PACKAGE = Path(__file__).resolve().parent


def source_path(module: str) -> Path:
    return PACKAGE.parent.joinpath(*module.split(".")).with_suffix(".py")


def source_hashes() -> dict[str, str]:
    return {m: hashlib.sha256(source_path(m).read_bytes()).hexdigest() for m in COMPILED}


def _has_extension(module: str) -> bool:
    base = source_path(module).with_suffix("")
    return any(base.with_name(base.name + suffix).exists() for suffix in importlib.machinery.EXTENSION_SUFFIXES)


class _SourceFinder(importlib.abc.MetaPathFinder):
    """Finds the compiled modules' sources ahead of the path finder, which prefers extensions."""

    def find_spec(self, name: str, path: Any = None, target: ModuleType | None = None) -> Any:
        if name in COMPILED:
            return importlib.util.spec_from_file_location(name, source_path(name))
        return None


def choose() -> str:
    """Decide, before any compiled module is imported, which build runs: 'compiled', 'pure'
    (asked for, or no compiled build installed) or 'stale' (sources changed since the build:
    the sources run). Called once, by axonsim/__init__."""
    if any(m in sys.modules for m in COMPILED):  # already decided (a reload of the package)
        return mode()
    built = PACKAGE / SOURCES_FILE
    present = [m for m in COMPILED if _has_extension(m)]
    if os.environ.get(PURE_ENV, "") not in ("", "0"):
        verdict = "pure"
    elif not present:
        return "pure"
    elif not built.exists():  # a pure build (setup.py removes the record) over an earlier compiled one
        verdict = "pure"
    else:
        try:
            recorded = json.loads(built.read_text())
        except (OSError, ValueError):
            recorded = {}
        changed = [m for m, h in source_hashes().items() if recorded.get(m) != h or m not in present]
        if not changed:
            return "compiled"
        verdict = "stale"
        warnings.warn(
            f"axonsim: {', '.join(changed)} changed since the compiled build was made; running all of "
            f"{len(COMPILED)} compiled modules from their sources (slower). Rebuild with "
            f"`pip install -e .` (or set {PURE_ENV}=1 to silence this).", RuntimeWarning, stacklevel=3)
    sys.meta_path.insert(0, _SourceFinder())
    return verdict


def mode() -> str:
    """'compiled' when the compiled modules are the ones imported, else 'pure'."""
    import axonsim.execution

    return "compiled" if is_extension(axonsim.execution) else "pure"


def is_extension(module: ModuleType) -> bool:
    return str(getattr(module, "__file__", "")).endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES))


def fields(cls: type) -> tuple[str, ...]:
    """The instance fields of a core class, compiled (mypyc lists them) or not (its slots)."""
    attrs = getattr(cls, "__mypyc_attrs__", None)
    if attrs is not None:
        return tuple(a for a in attrs if a != "__dict__")
    out: list[str] = []
    for klass in reversed(cls.__mro__):
        slots = klass.__dict__.get("__slots__", ())
        out.extend((slots,) if isinstance(slots, str) else slots)
    return tuple(out)
