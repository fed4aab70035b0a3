"""The design's one rule: the core does no I/O, reads no clock, draws from no global RNG."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent / "axonsim"
# Drivers and tools that may do I/O: the simulator, reports, the command line.
OUTSIDE_CORE = ("sim/", "report/", "cli.py", "__main__.py")

FORBIDDEN_MODULES = {"asyncio", "aiohttp", "httpx", "fastapi", "starlette", "uvicorn", "simpy", "server",
                     "time", "socket", "threading", "subprocess", "requests", "urllib.request"}
CLOCK_CALLS = {("datetime", "now"), ("datetime", "utcnow"), ("datetime", "today"), ("date", "today"),
               ("time", "time"), ("time", "monotonic"), ("time", "perf_counter")}
GLOBAL_RANDOM = {"random", "randint", "choice", "choices", "shuffle", "uniform", "sample", "gauss",
                 "expovariate", "lognormvariate", "seed", "getrandbits", "randrange"}


def core_files() -> list[Path]:
    files = []
    for p in sorted(ROOT.rglob("*.py")):
        rel = p.relative_to(ROOT).as_posix()
        if not rel.startswith(OUTSIDE_CORE):
            files.append(p)
    return files


def test_there_is_a_core_to_check():
    names = {p.name for p in core_files()}
    assert {"execution.py", "strategies.py", "state.py", "unified.py"} <= names


def test_core_imports_no_io_or_driver_module():
    bad = []
    for p in core_files():
        for node in ast.walk(ast.parse(p.read_text(), str(p))):
            mods = []
            if isinstance(node, ast.Import):
                mods = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                mods = [node.module]
            for m in mods:
                root = m.split(".")[0]
                if root in FORBIDDEN_MODULES or m in FORBIDDEN_MODULES:
                    bad.append(f"{p.relative_to(ROOT)}:{node.lineno} imports {m}")
    assert not bad, "\n".join(bad)


def test_core_reads_no_clock_and_no_global_random():
    bad = []
    for p in core_files():
        for node in ast.walk(ast.parse(p.read_text(), str(p))):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                base = node.func.value
                name = base.id if isinstance(base, ast.Name) else base.attr if isinstance(base, ast.Attribute) else None
                if (name, node.func.attr) in CLOCK_CALLS:
                    bad.append(f"{p.relative_to(ROOT)}:{node.lineno} reads the clock ({name}.{node.func.attr})")
                if name == "random" and node.func.attr in GLOBAL_RANDOM:
                    bad.append(f"{p.relative_to(ROOT)}:{node.lineno} uses the global RNG (random.{node.func.attr})")
            if isinstance(node, ast.ImportFrom) and node.module == "random":
                for a in node.names:
                    if a.name in GLOBAL_RANDOM:
                        bad.append(f"{p.relative_to(ROOT)}:{node.lineno} imports random.{a.name}")
    assert not bad, "\n".join(bad)


def test_the_checker_catches_a_violation(tmp_path):
    # Guard against a checker that can never fail: run its logic on a known-bad snippet.
    src = "import asyncio\nimport random\nx = random.random()\nfrom time import monotonic\n"
    tree = ast.parse(src)
    imports = [n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))]
    roots = {(a.name if isinstance(n, ast.Import) else n.module).split(".")[0] for n in imports for a in n.names}
    assert roots & FORBIDDEN_MODULES == {"asyncio", "time"}
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)]
    assert any(c.func.value.id == "random" and c.func.attr in GLOBAL_RANDOM for c in calls)
