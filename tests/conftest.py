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

from axonsim.execution import Call, Outcome, Result, Router, Wait  # noqa: E402


def drive(router: Router, model: str, answer: Callable[[Call, float], Outcome], now: float = 0.0,
          seed: int = 0, log: list | None = None) -> Result:
    """Run one request through `router`: each Call is answered by `answer(call, now)`, reported to
    the channel state the way the drivers do; each Wait advances the clock."""
    rng = random.Random(seed)
    gen = router.execute(model, now, rng)
    try:
        eff = next(gen)
        while True:
            if isinstance(eff, Call):
                eff.state.started(now)
                out = answer(eff, now)
                out.key = eff.key if out.key is None else out.key
                if log is not None:
                    log.append(("call", eff.state.name, eff.key, now))
                if out.ok:
                    eff.state.first_token(out.end, out.end - now)
                    eff.state.succeeded(out.end, out.end - now)
                else:
                    eff.state.failed(out.end, out)
                now = out.end
                eff = gen.send(out)
            else:
                assert isinstance(eff, Wait)
                if log is not None:
                    log.append(("wait", eff.seconds, now))
                now += eff.seconds
                eff = gen.send(now)
    except StopIteration as stop:
        return stop.value


@pytest.fixture
def driver():
    return drive
