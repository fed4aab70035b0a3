"""Channel tests and periodic probes: one small real request to a channel, reported like real traffic.

A test is one attempt outside Router.execute: the live driver performs it (same URL, headers,
timeouts, format and error classification as client traffic) and reports it through the Call API,
so its result feeds the channel's state — EWMAs, breakers, failures — exactly as a client request's
would. The request is AxonHub's default channel test (system "You are a helpful assistant.", user
"Hello world, I'm AxonHub.\\nPlease tell me who you are?"), streamed so the time to first token is
the provider's own.

Probes (`channels[].probe: {interval: s}`) run that test every `interval` seconds (±10 %, so that
several workers do not probe in step) on each enabled channel that has one. A successful probe
also lifts the channel's automatic disable, and the probed key's, so a channel that was switched
off by the auto-disable rules comes back on its own once its provider answers again. Probes skip
channels an operator disabled (config or admin API) and channels cooling down after a 429 (a
probe would only spend the provider's rate limit); a key an operator disabled is neither used nor
lifted by a probe or a test. Each worker process probes on its own.
"""

from __future__ import annotations

import asyncio
import logging
import random
from typing import TYPE_CHECKING, Any

from axonsim.execution import Call, Outcome
from axonsim.state import ChannelState
from axonsim.unified import Message, Request, Sampling, TextPart
from server.driver import Exchange, LiveStream

if TYPE_CHECKING:
    from server.proxy import Proxy, Runtime

log = logging.getLogger("axonsim.server.probes")

TEST_SYSTEM = "You are a helpful assistant."
TEST_PROMPT = "Hello world, I'm AxonHub.\nPlease tell me who you are?"
TEST_MAX_TOKENS = 64  # enough for a greeting; a test must stay cheap on a real provider
REPLY_PREVIEW = 200  # characters of the answer shown in a test result


def _test_request(model: str, stream: bool) -> Request:
    return Request(model=model, stream=stream, sampling=Sampling(max_tokens=TEST_MAX_TOKENS), messages=[
        Message(role="system", content=[TextPart(text=TEST_SYSTEM)]),
        Message(role="user", content=[TextPart(text=TEST_PROMPT)]),
    ])


# run_test's `key` when the test chooses its own (an admin test), rather than a probe's (probe_due's)
CHOOSE_KEY = -1


async def run_test(rt: Runtime, st: ChannelState, *, stream: bool = True, timeout: float = 30.0,
                   model: str | None = None, key: int | None = CHOOSE_KEY) -> dict[str, Any]:
    """Send the test request to `st`'s channel through `rt`'s driver; the result by names only."""
    driver = rt.driver
    now = driver.clock.now
    upstream_model = model or st.channel.models[0]
    if key == CHOOSE_KEY:
        key = st.probe_key(now(), upstream_model)
    result: dict[str, Any] = {"channel": st.name, "model": upstream_model, "key": st.key_name(key), "stream": stream,
                              "ok": False, "status": None, "latency": None, "ttft": None, "error": None,
                              "error_kind": None, "reply": None}
    if not st.channel.base_url:  # only a channel `enabled: false` in the config may lack one (check_servable)
        result.update(error="this channel has no base_url (it is disabled in the config): nothing to send a test to",
                      error_kind="disabled")
        return result
    if st.all_keys_held():
        result.update(error="every key of this channel is disabled by an operator; enable one to test it",
                      error_kind="disabled")
        return result
    req = _test_request(upstream_model, stream)
    call = Call(st, upstream_model, key, 0, req)
    ex = Exchange(req, None, None)
    text: list[str] = []
    out: Outcome | None = None
    try:
        async with asyncio.timeout(timeout):
            out = await driver.attempt(call, ex)
            if out.ok and isinstance(out.payload, LiveStream):
                s = out.payload
                _collect(s.pending, text)
                while (evs := await s.next_events()) is not None:
                    _collect(evs, text)
                if s.error is not None:
                    result.update(error=s.error.message, error_kind=s.error.kind.value)
            elif out.ok:
                text.append(out.payload.response.message.text())
    except TimeoutError:
        result.update(error=f"no complete answer within {timeout:g} s", error_kind="timeout",
                      latency=now() - call.start)
        if out is not None:  # a stream that began and did not end in time: its status and TTFT stand
            result.update(status=out.status, ttft=out.ttft, reply="".join(text)[:REPLY_PREVIEW])
        return result
    end = now()
    result["status"] = out.status
    result["latency"] = end - call.start
    if out.ok:
        result["ttft"] = out.ttft
        result["ok"] = result["error"] is None
        result["reply"] = "".join(text)[:REPLY_PREVIEW]
    else:
        err = out.error
        result.update(error=err.message if err is not None else f"HTTP {out.status}",
                      error_kind=out.kind.value if out.kind is not None else None)
    return result


def _collect(evs: list[Any], text: list[str]) -> None:
    for ev in evs:
        if ev.type == "text" and ev.text:
            text.append(ev.text)


class Probes:
    """The periodic probe tasks of one proxy, brought in line with the config on every reload."""

    def __init__(self, proxy: Proxy) -> None:
        self.proxy = proxy
        self._tasks: dict[str, tuple[float, asyncio.Task[None]]] = {}  # channel -> (interval, its task)
        self._rng = random.Random()  # jitter only: the proxy's seeded generator stays for routing
        self._running = False
        self.last: dict[str, dict[str, Any]] = {}  # channel -> its last probe result

    def start(self) -> None:
        self._running = True
        self.restart()

    def restart(self) -> None:
        """One probe task per channel of the current config that asks for it. A channel whose probe
        interval is unchanged keeps its task and its place in the interval: restarted, a probe
        every N seconds never ran while an operator's tool reloaded more often than that (each probe
        reads the current runtime anyway)."""
        if not self._running:
            return
        wanted = {ch.name: ch.probe.interval for ch in self.proxy.rt.config.channels if ch.probe is not None}
        for name, (interval, task) in list(self._tasks.items()):
            if wanted.get(name) != interval or task.done():
                task.cancel()
                del self._tasks[name]
        loop = asyncio.get_running_loop()
        for name, interval in wanted.items():
            if name not in self._tasks:
                task = loop.create_task(self._loop(name, interval), name=f"axonsim-probe-{name}")
                self._tasks[name] = (interval, task)

    async def stop(self) -> None:
        self._running = False
        tasks = [task for _, task in self._tasks.values()]
        self._tasks = {}
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=5)

    async def _loop(self, name: str, interval: float) -> None:
        while True:
            await asyncio.sleep(interval * (0.9 + 0.2 * self._rng.random()))
            try:
                await self.probe(name)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("probe of channel %s failed inside the gateway", name)

    async def probe(self, name: str) -> dict[str, Any] | None:
        """One probe of channel `name` on the current runtime (None if it is skipped now)."""
        rt = self.proxy.rt
        st = rt.router.by_name.get(name)
        if st is None:
            return None
        due, key = st.probe_due(self.proxy.clock.now())
        if not due:
            return None
        limits = rt.channels[st.index].limits
        res = await run_test(rt, st, timeout=limits.total, model=st.probe_model(), key=key)
        if res["error"]:
            res["error"] = rt.scrub(res["error"])
        prev = self.last.get(name)
        self.last[name] = res
        if res["ok"]:
            key = next((i for i, k in enumerate(st.keys) if k.name == res["key"]), None)
            lifted = " and ".join(st.lift_automatic(self.proxy.clock.now(), key))
            if lifted:
                log.warning("channel %s: probe succeeded (%.0f ms); %s lifted", name, res["latency"] * 1000, lifted)
            elif prev is not None and not prev["ok"]:
                log.info("channel %s: probe succeeded again", name)
        elif prev is None or prev["ok"]:
            log.warning("channel %s: probe failed (%s: %s)", name, res["error_kind"], res["error"])
        return res


