"""Shared test helpers: a scripted synchronous driver for the execution generator."""

from __future__ import annotations

import random
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from axonsim.execution import Call, Cancel, Launch, Outcome, Race, Result, Router, Wait  # noqa: E402


def _report(call: Call, out: Outcome) -> None:
    if out.ok:
        call.first_token(out.end)
        call.succeeded(out.end)
    else:
        call.failed(out.end, out)


def drive(router: Router, model: str, answer: Callable[[Call, float], Outcome], now: float = 0.0,
          seed: int = 0, log: list | None = None, **kw) -> Result:
    """Run one request through `router` on a virtual clock: each attempt is answered by
    `answer(call, now)` (an Outcome whose `end` says when it completes) and reported through the
    Call's driver API; Wait advances the clock; Launch/Race/Cancel run attempts side by side."""
    rng = random.Random(seed)
    gen = router.execute(model, now, rng, **kw)
    running: dict[int, tuple[Call, Outcome]] = {}
    try:
        eff = next(gen)
        while True:
            if isinstance(eff, Call):
                eff.started(now)
                out = answer(eff, now)
                if log is not None:
                    log.append(("call", eff.state.name, eff.key, now))
                _report(eff, out)
                now = out.end
                eff = gen.send(out)
            elif isinstance(eff, Wait):
                if log is not None:
                    log.append(("wait", eff.seconds, now))
                now += eff.seconds
                eff = gen.send(now)
            elif isinstance(eff, Launch):
                eff.call.started(now)
                h = len(running) + 1
                running[h] = (eff.call, answer(eff.call, now))
                if log is not None:
                    log.append(("launch", eff.call.state.name, now))
                eff = gen.send(h)
            elif isinstance(eff, Race):
                h = min(eff.handles, key=lambda x: running[x][1].end)
                call, out = running[h]
                if eff.timeout is not None and now + eff.timeout < out.end:
                    now += eff.timeout
                    eff = gen.send(None)
                    continue
                del running[h]
                now = out.end
                _report(call, out)
                eff = gen.send((h, out))
            else:
                assert isinstance(eff, Cancel)
                call, _ = running.pop(eff.handle)
                call.cancelled(now)
                if log is not None:
                    log.append(("cancel", call.state.name, now))
                eff = gen.send(now)
    except StopIteration as stop:
        return stop.value


@pytest.fixture
def driver():
    return drive
