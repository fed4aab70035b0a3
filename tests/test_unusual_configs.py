"""Configs written for local servers and the simulator. A local server's one-word key ("none", "EMPTY",
"x") is not masked: the gateway says so at start, by the key's place in the config, and its answers
stay whole (a one-letter key had masked every "k" of an admin answer, its JSON field names included).
A channel kept for the simulator alone has no URL, and testing it says so."""

from __future__ import annotations

import logging

import httpx
import pytest

from axonsim.config import Channel, parse_config
from server.testing import Stack

pytestmark = pytest.mark.timeout(60)

ADMIN_KEY = "admin-key-for-short-keys"
GW_KEY = "sk-gw-short-keys"


def test_a_one_letter_upstream_key_leaves_answers_whole_and_is_named_at_start(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="axonsim.server")
    with Stack() as st:
        mock = st.mock(Channel(name="local", type="openai", models=["m"], api_keys=["k"]))
        cfg = parse_config({
            "gateway": {"api_keys": [{"key": GW_KEY, "project": "p"}], "admin_keys": [ADMIN_KEY]},
            "channels": [{"name": "local", "type": "openai", "base_url": mock.base_url, "models": ["m"],
                          "api_keys": ["k"]}]})
        gw = st.gateway(cfg)
        warned = [r.getMessage() for r in caplog.records if "shorter than" in r.getMessage()]
        assert warned == ["channels[0] (local) api_keys[0] is shorter than 8 characters: it is not masked in logs, "
                          "error messages, admin answers or stored records (fine for a local server that takes any "
                          "key)"]
        with httpx.Client(base_url=gw.url, timeout=30) as c:
            res = c.post("/admin/channels/local/test", headers={"Authorization": f"Bearer {ADMIN_KEY}"}).json()
            assert res["ok"] is True and res["key"] == "local#0" and "quick" in res["reply"]
            r = c.post("/v1/chat/completions", headers={"Authorization": f"Bearer {GW_KEY}"},
                       json={"model": "m", "messages": [{"role": "user", "content": "hi"}]})
            assert r.status_code == 200 and "quick" in r.json()["choices"][0]["message"]["content"]


def test_testing_a_channel_the_config_left_without_a_url_says_so() -> None:
    """A channel `enabled: false` for the simulator alone has no base_url: its test had reported a
    failed connection, as if the provider were down."""
    with Stack() as st:
        mock = st.mock(Channel(name="on", type="openai", models=["m"], api_keys=["sk-up-on-123"]))
        cfg = parse_config({
            "gateway": {"api_keys": [{"key": GW_KEY, "project": "p"}], "admin_keys": [ADMIN_KEY]},
            "channels": [{"name": "on", "type": "openai", "base_url": mock.base_url, "models": ["m"],
                          "api_keys": ["sk-up-on-123"]},
                         {"name": "sim-only", "type": "openai", "models": ["m"], "api_keys": ["sk-up-off-123"],
                          "enabled": False}]})
        gw = st.gateway(cfg)
        with httpx.Client(base_url=gw.url, timeout=30, headers={"Authorization": f"Bearer {ADMIN_KEY}"}) as c:
            res = c.post("/admin/channels/sim-only/test").json()
            assert res["ok"] is False and res["error_kind"] == "disabled" and "no base_url" in res["error"]
            every = {r["channel"]: (r["ok"], r["error_kind"]) for r in c.post("/admin/test").json()["results"]}
            assert every == {"on": (True, None), "sim-only": (False, "disabled")}
