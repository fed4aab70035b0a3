"""The built-in demo: three mock channels on loopback and a config for them, so `axonsim serve` works with no setup.

The mock providers run in the gateway's own process and event loop (started by the proxy's
startup hook) on sockets bound before the config is built, so their ports are known up front and
cannot be taken by anyone else in between. No network is needed.

The demo has no config file to put its usage log next to, so its SQLite database lives in a fresh
temporary directory (named in the banner) that is deleted when the demo stops: running the demo
leaves nothing behind in the working directory.
"""

from __future__ import annotations

import shutil
import socket
import tempfile
from pathlib import Path
from typing import Any

from axonsim.config import Config, parse_config
from server.mock_provider import MockProvider, MockServer, base_url_for, start_mock

DEMO_KEY = "sk-axon-demo"
DEMO_ADMIN_KEY = "sk-axon-demo-admin"
DEMO_MODEL = "demo-model"


def _channels(host: str, ports: list[int]) -> list[dict[str, Any]]:
    fast, slow, flaky = ports
    return [
        {
            "name": "demo-fast", "type": "openai", "base_url": base_url_for("openai", host, fast),
            "api_keys": ["sk-demo-upstream-fast"], "models": [DEMO_MODEL],
            # alias names a client may use; `demo-fast` pins the fast channel
            "model_mapping": {"gpt-4o-mini": DEMO_MODEL, "demo-fast": DEMO_MODEL},
            "weight": 100,
            "behavior": {"ttft": {"dist": "lognormal", "median": 0.2, "sigma": 0.4}, "tokens_per_second": 150,
                         "output_tokens": {"dist": "lognormal", "median": 40, "sigma": 0.5}, "max_concurrency": 64},
        },
        {
            "name": "demo-slow", "type": "openai", "base_url": base_url_for("openai", host, slow),
            "api_keys": ["sk-demo-upstream-slow"], "models": [DEMO_MODEL],
            "model_mapping": {"gpt-4o-mini": DEMO_MODEL},
            "weight": 50,
            "behavior": {"ttft": {"dist": "lognormal", "median": 0.7, "sigma": 0.4}, "tokens_per_second": 40,
                         "output_tokens": {"dist": "lognormal", "median": 40, "sigma": 0.5}, "max_concurrency": 16,
                         "when_full": "queue"},
        },
        {
            "name": "demo-flaky", "type": "openai", "base_url": base_url_for("openai", host, flaky),
            "api_keys": ["sk-demo-upstream-flaky"], "models": [DEMO_MODEL],
            "model_mapping": {"gpt-4o-mini": DEMO_MODEL},
            "weight": 100,
            # fails before its first byte only (5xx, 429, resets), so failover always hides it
            "behavior": {"ttft": {"dist": "lognormal", "median": 0.15, "sigma": 0.3}, "tokens_per_second": 120,
                         "output_tokens": {"dist": "lognormal", "median": 40, "sigma": 0.5},
                         "error_rate": 0.25, "faults": {"rate_limited": 0.05, "retry_after": 2, "reset": 0.05}},
        },
    ]


class Demo:
    """The demo's config and its mock providers (started/stopped with the gateway)."""

    def __init__(self, host: str = "127.0.0.1", seed: int | None = None) -> None:
        self.host = host
        self.sockets = []
        for _ in range(3):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((host, 0))
            self.sockets.append(s)
        ports = [s.getsockname()[1] for s in self.sockets]
        self.dir = Path(tempfile.mkdtemp(prefix="axonsim-demo-"))
        self.db = self.dir / "axonsim.db"
        self.config: Config = parse_config({
            "gateway": {"api_keys": [{"key": DEMO_KEY, "project": "demo", "name": "demo"}],
                        "admin_keys": [DEMO_ADMIN_KEY]},
            "channels": _channels(host, ports),
            "routing": {"strategy": "composite"},
            "store": {"url": f"sqlite+aiosqlite:///{self.db}"},
            # Priced, so the usage log and /admin/usage show costs (per million tokens, made up).
            "prices": {DEMO_MODEL: {"input": 0.15, "output": 0.6}},
        }, "<demo>")
        self.providers = [MockProvider(ch, seed=None if seed is None else seed + i)
                          for i, ch in enumerate(self.config.channels)]
        self.servers: list[MockServer] = []

    async def start(self) -> None:
        for provider, sock in zip(self.providers, self.sockets, strict=True):
            self.servers.append(await start_mock(provider, sock=sock))

    async def stop(self) -> None:
        """Stop the mock providers and delete the usage log (the proxy runs this hook after its
        store has closed; a process stopped by SIGTERM runs nothing after the server returns)."""
        for s in self.servers:
            await s.stop()
        self.servers = []
        self.cleanup()

    def cleanup(self) -> None:
        """Delete the temporary usage-log directory."""
        shutil.rmtree(self.dir, ignore_errors=True)

    def banner(self, host: str, port: int) -> str:
        url = f"http://{host}:{port}"
        body = '{"model": "demo-model", "messages": [{"role": "user", "content": "Hello!"}]}'
        sbody = '{"model": "demo-model", "stream": true, "messages": [{"role": "user", "content": "Hello!"}]}'
        chans = ", ".join(f"{c.name} ({s.getsockname()[1]})" for c, s in zip(self.config.channels, self.sockets,
                                                                                strict=True))
        return (
            f"AxonSim demo gateway on {url}\n"
            f"  gateway API key: {DEMO_KEY}\n"
            f"  models: {', '.join(self.config.model_names())}\n"
            f"  mock channels on loopback: {chans}\n"
            f"  usage log: SQLite at {self.db} (a temporary directory, deleted when the demo stops)\n"
            f"  admin API: {url}/admin with 'Authorization: Bearer {DEMO_ADMIN_KEY}'   metrics: {url}/metrics\n"
            f"Try:\n"
            f"  curl {url}/v1/chat/completions -H 'Authorization: Bearer {DEMO_KEY}' \\\n"
            f"       -H 'Content-Type: application/json' -d '{body}'\n"
            f"  curl -N {url}/v1/chat/completions -H 'Authorization: Bearer {DEMO_KEY}' \\\n"
            f"       -H 'Content-Type: application/json' -d '{sbody}'\n"
            f"  curl {url}/admin/requests -H 'Authorization: Bearer {DEMO_ADMIN_KEY}'\n"
            f"  OpenAI SDK: OpenAI(base_url=\"{url}/v1\", api_key=\"{DEMO_KEY}\")"
        )
