"""Test helpers for `axonsim` commands run as real processes: start, wait until healthy, stop."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start(*args: str, cwd: Path = ROOT, group: bool = False) -> subprocess.Popen[str]:
    """`python -m axonsim ARGS` with its output captured (unbuffered, so logs arrive as written);
    `group`: in a process group of its own, which os.killpg signals as a terminal's Ctrl-C does."""
    return subprocess.Popen([sys.executable, "-m", "axonsim", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=cwd, env={**os.environ, "PYTHONUNBUFFERED": "1"}, start_new_session=group)


def wait_healthy(url: str, proc: subprocess.Popen[str], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"exited early ({proc.returncode}): {proc.stderr.read() if proc.stderr else ''}")
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise AssertionError(f"{url} not healthy in time")


def stop(proc: subprocess.Popen[str], timeout: float = 40, sig: int = signal.SIGINT) -> tuple[str, str]:
    """Ctrl-C (or `sig`: a graceful shutdown), then its output; killed if it does not end in time."""
    if proc.poll() is None:
        proc.send_signal(sig)
    try:
        return proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.communicate()
