"""Build: compiles the core modules listed in axonsim/native.py with mypyc (AXONSIM_PURE_PYTHON=1: a pure-Python build).

Everything else about the package is in pyproject.toml. The compiled modules shadow their sources
only while the sources match the hashes recorded here (axonsim/native.py checks at import).
"""

import json
import os
import runpy
from pathlib import Path

from setuptools import setup

ROOT = Path(__file__).resolve().parent
native = runpy.run_path(str(ROOT / "axonsim" / "native.py"), run_name="axonsim_native_build")
recorded = ROOT / "axonsim" / native["SOURCES_FILE"]

ext_modules = []
if os.environ.get(native["PURE_ENV"], "") in ("", "0"):
    from mypyc.build import mypycify

    # A config of its own: the project's [tool.mypy] checks other files and loads plugins that
    # the isolated build environment does not have.
    ext_modules = mypycify(["--config-file", str(ROOT / "mypyc.ini"),
                            *(str(native["source_path"](m).relative_to(ROOT)) for m in native["COMPILED"])],
                           opt_level="3")
    recorded.write_text(json.dumps(native["source_hashes"](), indent=1, sort_keys=True) + "\n")
elif recorded.exists():
    recorded.unlink()  # a pure build: compiled modules left from an earlier build must not be used

setup(ext_modules=ext_modules)
