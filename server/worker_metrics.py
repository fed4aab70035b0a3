"""Metrics across `--workers N`: each worker publishes its figures to a shared directory, and a scrape adds up every worker's.

With several worker processes behind one listening socket, Prometheus cannot choose which worker
answers a scrape. Each one's own counters would come back in turn, and the series would jump
between them and look like counter resets. So every worker writes its observed figures
(Metrics.figures: request, latency, TTFT, overhead, attempt, token and cost counts, in-flight
requests, the store's counters) to `<dir>/<pid>.json` once per `interval` and when it stops, and
the worker that answers a scrape publishes its own figures, then adds the other workers' latest
files to them.
Other workers' figures are thus at most `interval` old, and yet counters never go back between two
scrapes answered by different workers; nothing is added to the request path.

A worker that stops (a crash, a scaled-down pool) leaves its last file behind:
its counters stay in the sums, so they never go backwards. Its gauges do not: a graceful stop
writes them as 0, and a process that no longer exists has its gauges ignored.

prometheus-client's process families are the gateway's, not the answering worker's: CPU seconds
summed over every worker (ended ones included, as for any counter), memory and descriptors over the
running ones. Channel-state gauges stay the answering worker's own (channel state is shared between
workers only through Redis: `state.url`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from pathlib import Path
from typing import Any

import orjson

from server.metrics import Metrics

log = logging.getLogger("axonsim.server.worker_metrics")

# How the `axonsim serve --workers N` parent tells its workers where to publish.
ENV_DIR = "AXONSIM_METRICS_DIR"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


class WorkerFigures:
    """Publishes `metrics`' figures for the other workers and reads theirs (set as `metrics.peers`)."""

    def __init__(self, directory: str | Path, metrics: Metrics, interval: float = 1.0, pid: int | None = None) -> None:
        self.dir = Path(directory)
        self.metrics = metrics
        self.interval = interval
        self.pid = os.getpid() if pid is None else pid
        self._task: asyncio.Task[None] | None = None
        metrics.peers = self.peers

    @property
    def path(self) -> Path:
        return self.dir / f"{self.pid}.json"

    def publish(self, final: bool = False) -> None:
        """Write this worker's figures; readers see the old file or the new one, never half of one."""
        data = orjson.dumps({"pid": self.pid, **self.metrics.figures(final=final)})
        tmp = self.dir / f".{self.pid}.tmp"
        tmp.write_bytes(data)
        os.replace(tmp, self.path)

    def peers(self) -> list[dict[str, Any]]:
        """Every other worker's last published figures (gauges zeroed for processes that are gone),
        for a scrape this worker answers; its own are published first. Then the next scrape, whichever
        worker answers it, counts at least what this one counted, and counters never go back: the
        other workers' files were at most `interval` old, and a later scrape by one of them read this
        worker's file as of now."""
        try:
            self.publish()
        except OSError as exc:
            log.warning("metrics: could not publish this worker's figures: %s", exc)
        out = []
        for f in self.dir.glob("*.json"):
            if f.stem == str(self.pid):
                continue
            try:
                fig = orjson.loads(f.read_bytes())
            except (OSError, orjson.JSONDecodeError):
                continue  # vanished, or not ours: skipped, the rest still count
            if not isinstance(fig, dict) or not isinstance(fig.get("pid"), int):
                continue
            if not _alive(fig["pid"]):
                fig["inflight"] = 0
                if fig.get("store"):
                    fig["store"]["queued"] = 0
                    fig["store"]["db_up"] = None  # a gauge of a process that is gone: no say any more
                if fig.get("process"):
                    fig["process"]["gauges"] = {}  # its memory is freed; its CPU seconds stay counted
            out.append(fig)
        return out

    async def start(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.publish()
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        """The last figures, with nothing in flight: called after the requests and the store are done."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        try:
            self.publish(final=True)
        except OSError as exc:
            log.warning("metrics: could not publish this worker's final figures: %s", exc)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                self.publish()
            except Exception:
                log.exception("metrics: publishing this worker's figures failed")
