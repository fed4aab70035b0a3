"""The compiled core (axonsim/native.py): CI runs the compiled build, it gives the sources' results bit for bit, and a stale build falls back to the sources."""

from __future__ import annotations

import importlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import axonsim
from axonsim import native

ROOT = Path(__file__).resolve().parent.parent

compiled_only = pytest.mark.skipif(axonsim.BUILD != "compiled",
                                   reason=f"this install runs the sources (axonsim.BUILD == {axonsim.BUILD!r}); "
                                          f"`pip install -e .` without {native.PURE_ENV} compiles them")

# A simulation's every table and summary, hashed: what must not change between builds.
FINGERPRINT = textwrap.dedent("""
    import hashlib, json, sys
    import pandas as pd
    import axonsim
    from axonsim.sim import simulate
    from benchmarks.sim_throughput import scenario
    res = simulate(scenario(int(sys.argv[1])), seed=7)
    h = hashlib.sha256()
    for df in (res.requests, res.attempts, res.timeseries):
        h.update(repr(list(df.columns)).encode())
        h.update(pd.util.hash_pandas_object(df, index=True).values.tobytes())
    h.update(json.dumps(res.summary(), sort_keys=True, default=str).encode())
    print(json.dumps({"build": axonsim.BUILD, "hash": h.hexdigest(), "n": len(res.requests)}))
""")


def _run(code: str, *args: str, cwd: Path = ROOT, pure: bool = False) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != native.PURE_ENV}
    if pure:
        env[native.PURE_ENV] = "1"
    env["PYTHONPATH"] = str(cwd)
    return subprocess.run([sys.executable, "-c", code, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=240)


def test_ci_runs_the_compiled_core():
    """CI installs the package as the README says; the benchmarks there must measure the compiled build."""
    if os.environ.get("CI", "").lower() not in ("1", "true", "yes"):
        pytest.skip("outside CI the build may be pure on purpose")
    assert axonsim.BUILD == "compiled"  # (each module: test_every_listed_module_is_the_compiled_one)


@compiled_only
def test_every_listed_module_is_the_compiled_one():
    for name in native.COMPILED:
        mod = importlib.import_module(name)
        assert native.is_extension(mod), mod.__file__


@compiled_only
def test_compiled_and_source_simulations_are_identical():
    """The same scenario and seed, run by the compiled core and by its sources, in two processes."""
    runs = [_run(FINGERPRINT, "20000", pure=pure) for pure in (False, True)]
    for r in runs:
        assert r.returncode == 0, r.stderr
    compiled, pure = (json.loads(r.stdout.strip().splitlines()[-1]) for r in runs)
    assert (compiled["build"], pure["build"]) == ("compiled", "pure")
    assert compiled["n"] == pure["n"] == 20000
    assert compiled["hash"] == pure["hash"]


@compiled_only
def test_a_source_changed_since_the_build_runs_every_module_from_source(tmp_path):
    """An edited checkout must not run the old compiled code: all the compiled modules come from
    their sources (never a mix), with a warning naming what changed."""
    for package in ("axonsim", "server"):  # both hold compiled modules
        shutil.copytree(ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__"))
    for lib in ROOT.glob("*__mypyc*"):  # the compiled modules' shared libraries (the core's, the proxy's)
        shutil.copy2(lib, tmp_path / lib.name)
    probe = ("import warnings; warnings.simplefilter('always'); import axonsim, importlib; "
             "from axonsim import native; "
             "print(axonsim.BUILD, sorted({native.is_extension(importlib.import_module(m)) for m in native.COMPILED}))")

    fresh = _run(probe, cwd=tmp_path)
    assert fresh.returncode == 0, fresh.stderr
    assert fresh.stdout.split() == ["compiled", "[True]"]

    limits = tmp_path / "axonsim" / "limits.py"
    limits.write_text(limits.read_text() + "\n# edited after the build\n")
    stale = _run(probe, cwd=tmp_path)
    assert stale.returncode == 0, stale.stderr
    assert stale.stdout.split() == ["stale", "[False]"]
    assert "axonsim.limits changed since the compiled build" in stale.stderr
    assert "pip install -e ." in stale.stderr

    asked = _run(probe, cwd=tmp_path, pure=True)
    assert asked.stdout.split() == ["pure", "[False]"]


def test_pure_python_runs_when_asked():
    r = _run("import axonsim, sys; from axonsim import native; import axonsim.execution as e; "
             "print(axonsim.BUILD, native.is_extension(e))", pure=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["pure", "False"]


def test_fields_lists_a_core_class_fields_in_either_build():
    from axonsim.execution import AttemptRecord, Outcome

    assert sorted(native.fields(Outcome)) == sorted(["ok", "end", "status", "kind", "retry_after", "ttft", "key",
                                                     "error", "payload"])
    rec = AttemptRecord(1, "a", None, "m", 0.0, 1.0, 200, None, "done")
    assert {f: getattr(rec, f) for f in native.fields(AttemptRecord)}["next"] == "done"


def test_no_compiled_class_is_built_on_a_third_party_class():
    """pip's isolated build environment holds only the build requirements: there mypyc cannot see a
    third-party package, takes a base class from one for `Any`, and lays the class out as if it had
    no Python base. Such a class (server/upstream.py's template request over aiohttp's ClientRequest)
    crashed the interpreter at its instances' first attribute store (a SystemError, then a segfault).
    A compiled class may build on the standard library's classes (typeshed describes them) and on
    the compiled modules' own; anything else lives in a module that is not compiled
    (server/pool_request.py)."""
    allowed = set(native.COMPILED)
    offenders = []
    for name in native.COMPILED:
        module = importlib.import_module(name)
        for cls in vars(module).values():
            if not isinstance(cls, type) or cls.__module__ != name:
                continue
            for base in cls.__mro__[1:]:
                home = base.__module__
                if home not in allowed and home.split(".")[0] not in sys.stdlib_module_names:
                    offenders.append(f"{name}.{cls.__name__} on {home}.{base.__qualname__}")
    assert offenders == []
