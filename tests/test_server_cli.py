"""`axonsim serve` and `axonsim mock-provider` as commands: bad configs exit 2 naming the field; the demo works."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import orjson
import pytest
from processes import free_port, start, stop, wait_healthy

pytestmark = pytest.mark.timeout(90)

ROOT = Path(__file__).resolve().parent.parent


def axonsim(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "axonsim", *args], capture_output=True, text=True, timeout=timeout,
                          cwd=ROOT)


def test_bad_config_exits_2_naming_the_field(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("channels:\n  - name: a\n    models: [m]\n    weight: -3\n")
    r = axonsim("serve", "--config", str(bad))
    assert r.returncode == 2
    assert "channels[0].weight" in r.stderr and "Traceback" not in r.stderr


def test_unreadable_and_invalid_yaml_exit_2(tmp_path: Path) -> None:
    r = axonsim("serve", "--config", str(tmp_path / "missing.yaml"))
    assert r.returncode == 2 and "missing.yaml" in r.stderr
    broken = tmp_path / "broken.yaml"
    broken.write_text("channels: [\n")
    r = axonsim("serve", "--config", str(broken))
    assert r.returncode == 2 and "YAML" in r.stderr


def test_the_demo_runs_in_one_process() -> None:
    r = axonsim("serve", "--workers", "2")
    assert r.returncode == 2 and "--workers needs --config" in r.stderr
    r = axonsim("serve", "--workers", "0")
    assert r.returncode == 2 and "--workers" in r.stderr


def test_demo_serves_stream_and_non_stream() -> None:
    port = free_port()
    proc = start("serve", "--port", str(port), "--log-level", "warning")
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, proc)
        # A reload's signal, which the demo (no config file) has nothing to do with: logged, and the
        # demo serves on. SIGHUP's default ended it, streams in flight included.
        proc.send_signal(signal.SIGHUP)
        time.sleep(0.3)
        assert proc.poll() is None, "SIGHUP ended the demo"
        auth = {"Authorization": "Bearer sk-axon-demo"}
        msg = [{"role": "user", "content": "Hello!"}]
        ok = 0
        for _ in range(3):  # one demo channel fails on purpose; failover must hide it
            r = httpx.post(url + "/v1/chat/completions", json={"model": "demo-model", "messages": msg}, headers=auth,
                           timeout=30)
            assert r.status_code == 200, r.text
            ok += bool(r.json()["choices"][0]["message"]["content"])
        assert ok == 3
        r = httpx.post(url + "/v1/chat/completions", json={"model": "demo-model", "stream": True, "messages": msg},
                       headers=auth, timeout=30)
        assert r.status_code == 200
        lines = [ln[6:] for ln in r.text.split("\n") if ln.startswith("data: ")]
        assert lines[-1] == "[DONE]" and "content" in orjson.loads(lines[1])["choices"][0]["delta"]
        models = httpx.get(url + "/v1/models", headers=auth, timeout=5).json()
        assert {"demo-model", "gpt-4o-mini"} <= {m["id"] for m in models["data"]}
        # Usage records: the demo's SQLite store, read through its admin API.
        admin = {"Authorization": "Bearer sk-axon-demo-admin"}
        deadline = time.monotonic() + 10
        while httpx.get(url + "/admin/requests", headers=admin, timeout=5).json()["total"] < 4:
            assert time.monotonic() < deadline, "the demo's records never reached its store"
            time.sleep(0.05)
        assert "axonsim_requests_total" in httpx.get(url + "/metrics", timeout=5).text
    finally:
        out, err = stop(proc)
    assert proc.returncode == 0, err  # a clean shutdown on Ctrl-C (uvicorn re-raises the signal at its end)
    assert "nothing was reloaded" in out + err
    assert "sk-axon-demo" in out and "curl" in out
    assert "sk-demo-upstream" not in out + err  # upstream keys are never printed
    # The usage log lived in a temporary directory, named in the banner and gone after the demo.
    db = re.search(r"usage log: SQLite at (\S+)", out)
    assert db is not None and "temporary" in out
    assert not Path(db.group(1)).parent.exists()


def test_mock_provider_command(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("channels:\n"
                   "  - {name: one, models: [m], behavior: {ttft: 0.01, output_tokens: 3}}\n"
                   "  - {name: two, models: [x], api_keys: [k2], behavior: {ttft: 0.01, output_tokens: 4}}\n")
    port = free_port()
    proc = start("mock-provider", "--port", str(port), "--config", str(cfg), "--channel", "two", "--seed", "1")
    try:
        wait_healthy(f"http://127.0.0.1:{port}", proc)
        r = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", headers={"Authorization": "Bearer k2"},
                       json={"model": "x", "messages": [{"role": "user", "content": "hi"}]}, timeout=10)
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 4
    finally:
        out, _ = stop(proc)
    assert "two" in out and f"http://127.0.0.1:{port}/v1" in out
    r = axonsim("mock-provider", "--port", "1", "--config", str(cfg), "--channel", "three")
    assert r.returncode == 2 and "three" in r.stderr


def test_serve_refuses_a_config_written_for_the_simulator_alone(tmp_path: Path) -> None:
    # examples/basic.yaml: channels with behaviours and no base_url. It used to start, then fail
    # every request as a connection error.
    r = subprocess.run([sys.executable, "-m", "axonsim", "serve", "--config", str(ROOT / "examples" / "basic.yaml"),
                        "--port", "1"], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert r.returncode == 2 and "no base_url" in r.stderr and "channels[0] (fast)" in r.stderr
    assert "Traceback" not in r.stderr and "AxonSim gateway on" not in r.stdout


async def test_a_reload_refuses_a_config_written_for_the_simulator_alone() -> None:
    from axonsim.config import ConfigError, parse_config
    from server.proxy import Proxy

    live = {"channels": [{"name": "a", "models": ["m"], "base_url": "http://127.0.0.1:1/v1"}]}
    proxy = Proxy(parse_config(live), seed=1)
    with pytest.raises(ConfigError, match="no base_url"):
        await proxy.reload(parse_config({"channels": [{"name": "a", "models": ["m"]}]}))
    assert proxy.rt.config.channels[0].base_url == "http://127.0.0.1:1/v1"  # left as it was


def test_a_worker_still_starting_is_not_killed_for_missing_a_ping() -> None:
    """The `--workers` parent pings each worker; one still spawning and importing (a loaded host)
    cannot answer yet, and uvicorn killed it after 5 s, again and again. A young worker is alive as
    long as its process runs; after that, the pings decide."""
    from server.main import REPLACEMENT_READY, GatewayProcess

    class Proc:
        running = True

        def is_alive(self) -> bool:
            return self.running

    pings: list[float] = []
    w = object.__new__(GatewayProcess)
    w.process = Proc()
    w.ping = lambda timeout=5: pings.append(timeout) or False  # a worker that does not answer (yet)
    w._started_at = time.monotonic()
    assert w.is_alive(timeout=5) and pings == []
    w.process.running = False
    assert not w.is_alive(timeout=5)  # a young worker that died is dead
    w.process.running = True
    w._started_at = time.monotonic() - REPLACEMENT_READY - 1
    assert not w.is_alive(timeout=5) and pings == [5]  # grown up: an unanswered ping means hung


@pytest.mark.parametrize("workers", ["1", "2"])
def test_an_address_in_use_exits_1(tmp_path: Path, workers: str) -> None:
    # uvicorn's own start-up failure (its exit 3) is what our exit codes call a failure to start: 1
    import socket

    cfg = tmp_path / "gw.yaml"
    cfg.write_text("channels:\n  - {name: a, type: openai, base_url: 'http://127.0.0.1:9/v1', api_keys: [k],"
                   " models: [m]}\nstore: {url: 'sqlite+aiosqlite:///" + str(tmp_path / "s.db") + "'}\n")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        r = axonsim("serve", "--config", str(cfg), "--port", str(port), "--workers", workers, "--log-level", "warning",
                    timeout=60)
    assert r.returncode == 1, (r.returncode, r.stderr[-500:])
    assert f"127.0.0.1:{port}" in r.stderr and "Traceback" not in r.stderr


def test_the_mock_provider_module_runs_as_the_mock_provider_command() -> None:
    r = subprocess.run([sys.executable, "-m", "server.mock_provider", "--help"], capture_output=True, text=True,
                       timeout=30, cwd=ROOT)
    assert r.returncode == 0 and "--port" in r.stdout and "--channel" in r.stdout, r.stderr
    r = subprocess.run([sys.executable, "-m", "server.mock_provider"], capture_output=True, text=True, timeout=30,
                       cwd=ROOT)
    assert r.returncode == 2 and "--port" in r.stderr  # not a silent exit 0 any more
