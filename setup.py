"""Build: compiles the core modules listed in axonsim/native.py with mypyc (AXONSIM_PURE_PYTHON=1: a pure-Python build).

Everything else about the package is in pyproject.toml. The compiled modules shadow their sources
only while the sources match the hashes recorded here (axonsim/native.py checks at import).
"""

import json
import os
import runpy
import shutil
from pathlib import Path

from setuptools import setup

ROOT = Path(__file__).resolve().parent
native = runpy.run_path(str(ROOT / "axonsim" / "native.py"), run_name="axonsim_native_build")
recorded = ROOT / "axonsim" / native["SOURCES_FILE"]

ext_modules = []
if os.environ.get(native["PURE_ENV"], "") in ("", "0"):
    from mypyc.build import mypycify

    def path(module: str) -> str:
        return str(native["source_path"](module).relative_to(ROOT))

    # Two C libraries, compiled side by side (build_ext's `parallel` below): the core (router,
    # state, strategies, the simulator's loop: they call each other on every simulated request)
    # and the proxy's modules. One library for everything is one C file on one core: 7 minutes to
    # build against 2.6 here. The split costs the proxy ~0.5 % more instructions per request
    # (its calls into the core cross libraries; callgrind).
    proxy = [m for m in native["COMPILED"] if m.startswith(("server.", "axonsim.formats."))]
    core = [m for m in native["COMPILED"] if m not in proxy]
    # A config of its own: the project's [tool.mypy] checks other files and loads plugins that
    # the isolated build environment does not have.
    # And a type cache of its own, emptied first: reading an earlier build's cache after a compiled
    # class changed crashed mypyc's code generator ("ValueError: value is not in list" in
    # emit_undefined_attr_check), so every build starts cold; the C compile is most of the time.
    cache = ROOT / "build" / "mypyc-cache"
    shutil.rmtree(cache, ignore_errors=True)
    ext_modules = mypycify(["--config-file", str(ROOT / "mypyc.ini"), "--cache-dir", str(cache),
                            *map(path, native["COMPILED"])],
                           opt_level="3",
                           separate=[([path(m) for m in core], "axonsim_core"), ([path(m) for m in proxy], "axonsim_proxy")])
    recorded.write_text(json.dumps(native["source_hashes"](), indent=1, sort_keys=True) + "\n")
elif recorded.exists():
    recorded.unlink()  # a pure build: compiled modules left from an earlier build must not be used

setup(ext_modules=ext_modules, options={"build_ext": {"parallel": os.cpu_count() or 1}})
