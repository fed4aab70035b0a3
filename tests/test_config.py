"""Configuration: the contract's YAML loads; every mistake names its field at load time."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from typing import Any

import pytest

from axonsim.config import ConfigError, load_config, parse_config

CONTRACT = textwrap.dedent("""
    gateway:
      api_keys:
        - {key: "sk-axon-demo", project: "demo"}
    channels:
      - name: openai-a
        type: openai
        base_url: http://127.0.0.1:9101/v1
        api_keys: ["sk-upstream-1"]
        models: ["gpt-4o-mini"]
        model_mapping: {"fast": "gpt-4o-mini"}
        weight: 100
        priority: 0
        behavior:
          ttft: {dist: lognormal, median: 0.4, sigma: 0.5}
          tokens_per_second: 120
          max_concurrency: 64
          when_full: reject
          error_rate: 0.01
    routing:
      strategy: composite
    workload:
      arrival: {process: poisson, rate: 20}
      requests: 10000
""")


def test_the_contract_example_loads(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text(CONTRACT)
    cfg = load_config(p)
    ch = cfg.channels[0]
    assert ch.serves("fast") == "gpt-4o-mini" and ch.serves("other") is None
    assert ch.api_keys[0].name == "openai-a#0"
    assert cfg.model_names() == ["gpt-4o-mini", "fast"]
    assert cfg.workload.requests == 10000


@pytest.mark.parametrize("patch, field", [
    ({"channels": [{"name": "a", "models": ["m"], "weight": -1}]}, "channels[0].weight"),
    ({"channels": [{"name": "a", "models": ["m"]}], "routing": {"strategy": "fastest"}}, "routing.strategy"),
    ({"channels": [{"name": "a", "models": ["m"], "colour": "red"}]}, "channels[0].colour"),
    ({"channels": [{"name": "a", "models": ["m"], "model_mapping": {"x": "y"}}]}, "channels[0]"),
    ({"channels": [{"name": "a", "models": ["m"], "behavior": {"ttft": {"dist": "lognormal", "median": 1,
                                                                        "sigma": -1}}}]},
     "channels[0].behavior.ttft.sigma"),
    ({"channels": []}, "channels"),
    ({"channels": [{"name": "a", "models": ["m"]}, {"name": "a", "models": ["m"]}]}, "duplicate channel"),
    ({"channels": [{"name": "a", "models": ["m"]}], "routing": {"composite": {"weighted": -1}}},
     "routing.composite"),
    ({"channels": [{"name": "a", "models": ["m"]}], "workload": {"arrival": {"rate": -3}, "requests": 5}},
     "workload.arrival.rate"),
    # one draw decides an attempt's fault: the probabilities share one unit (the simulator raised late)
    ({"channels": [{"name": "a", "models": ["m"], "behavior": {"error_rate": 0.6, "faults": {"rate_limited": 0.6}}}]},
     "channels[0].behavior: error_rate and the faults' probabilities add up to 1.2"),
    # a speed drawn as 0 never finishes an answer (the simulator divided by it, the mock answered 500)
    ({"channels": [{"name": "a", "models": ["m"], "behavior": {"tokens_per_second": {"dist": "constant", "value": 0}}}]},
     "channels[0].behavior.tokens_per_second"),
    ({"channels": [{"name": "a", "models": ["m"], "behavior": {"tokens_per_second": {"dist": "empirical",
                                                                                      "values": [40, 0]}}}]},
     "channels[0].behavior.tokens_per_second"),
])
def test_mistakes_name_the_field(patch, field):
    with pytest.raises(ConfigError) as e:
        parse_config(patch, "x.yaml")
    assert field in str(e.value) and "x.yaml" in str(e.value)


def test_bad_yaml_names_the_line(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("channels:\n  - name: a\n    models: [m\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: line \d+"):
        load_config(p)


def test_cli_exits_2_on_a_malformed_config(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("channels:\n  - {name: a, models: [m], weight: -5}\n")
    r = subprocess.run([sys.executable, "-m", "axonsim", "serve", "--config", str(p)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert "channels[0].weight" in r.stderr
    assert "Traceback" not in r.stderr


def test_an_unknown_key_that_is_not_a_name_is_not_quoted_back() -> None:
    """A key pasted where a mapping was expected would be quoted back in the error (and from there
    reach the reload answer and the logs); a name-like unknown key, a typo, still is."""
    secret = "sk-NEW-UPSTREAM-SECRET-123"
    with pytest.raises(ConfigError) as err:
        parse_config({"channels": [{"name": "a", "models": ["m"], "api_keys": [{secret: "main"}]}]})
    assert secret not in str(err.value) and "unknown key of 26 characters" in str(err.value)
    assert "channels[0].api_keys[0]" in str(err.value)
    with pytest.raises(ConfigError) as err:
        parse_config({"channels": [{"name": "a", "models": ["m"], "base_ulr": "http://x"}]})
    assert "channels[0].base_ulr: Extra inputs are not permitted" in str(err.value)
    for key in ("c0ffee1234567890abcdef1234567890", "AKIAIOSFODNN7EXAMPLE", "sk_live_51H8abc"):  # Azure, AWS, Stripe
        with pytest.raises(ConfigError) as err:
            parse_config({"channels": [{"name": "a", "models": ["m"], "api_keys": [{key: "x"}]}]})
        assert key not in str(err.value)


@pytest.mark.parametrize("key", ["sk-abc\ndef", "sk-abc def", "sk-\u00e9t\u00e9", "sk-abc\r", "sk-\x00"])
def test_an_upstream_key_that_cannot_travel_in_a_header_is_refused_unquoted(key: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config({"channels": [{"name": "a", "models": ["m"], "api_keys": ["sk-good", key]}]}, "x.yaml")
    assert "channels[0].api_keys[1].key" in str(err.value) and "printable ASCII" in str(err.value)
    assert key.strip() not in str(err.value)


@pytest.mark.parametrize("where", ["client", "admin"])
def test_client_and_admin_keys_must_travel_in_a_header_too(where: str) -> None:
    bad = "adm-\u2026"  # the README's placeholder once had an ellipsis: accepted, it never authenticated
    gw = {"api_keys": [{"key": bad}]} if where == "client" else {"admin_keys": ["adm-ok", bad]}
    with pytest.raises(ConfigError, match="printable ASCII") as err:
        parse_config({"gateway": gw, "channels": [{"name": "a", "models": ["m"]}]})
    assert bad not in str(err.value)


@pytest.mark.parametrize("gateway, says", [
    # The client opened the admin API with it (a 200 where a gateway key must get 403).
    ({"api_keys": [{"key": "sk-client-key-0001"}], "admin_keys": ["sk-admin-key-0001", "sk-client-key-0001"]},
     r"api_keys\[0\] is also one of admin_keys"),
    # Its traffic was booked to the last project listed, without a word.
    ({"api_keys": [{"key": "sk-client-key-0001", "project": "a"}, {"key": "sk-client-key-0002", "project": "b"},
                   {"key": "sk-client-key-0001", "project": "c"}]}, r"api_keys\[2\] has the key of api_keys\[0\]"),
])
def test_a_key_has_one_use(gateway: dict[str, Any], says: str) -> None:
    with pytest.raises(ConfigError, match=says) as err:
        parse_config({"gateway": gateway, "channels": [{"name": "a", "models": ["m"]}]})
    assert "sk-client-key-0001" not in str(err.value)


@pytest.mark.parametrize("name", ["x-trace\nid", "x trace", "x-tr\u00e4ce", "x:trace", ""])
def test_trace_and_thread_header_names_must_be_http_tokens(name: str) -> None:
    for field in ("trace_header", "thread_header"):
        with pytest.raises(ConfigError, match=f"gateway.{field}"):
            parse_config({"gateway": {field: name}, "channels": [{"name": "a", "models": ["m"]}]})
    cfg = parse_config({"gateway": {"trace_header": "X-Request-Trace_1"}, "channels": [{"name": "a", "models": ["m"]}]})
    assert cfg.gateway.trace_header == "X-Request-Trace_1"


@pytest.mark.parametrize("gateway, says", [
    ({"trace_header": "Content-Length"}, "gateway.trace_header"),  # answers carried two content-lengths
    ({"thread_header": "authorization"}, "gateway.thread_header"),  # the client's key echoed as a thread id
    ({"trace_header": "x-request-id"}, "gateway.trace_header"),
    ({"trace_header": "Retry-After-Ms"}, "gateway.trace_header"),  # an Anthropic 429 carried two
    ({"trace_header": "Request-Id"}, "gateway.trace_header"),  # every /v1/messages answer carried two
    ({"thread_header": "X-AxonSim-Explain"}, "gateway.thread_header"),
    ({"trace_header": "Access-Control-Max-Age"}, "gateway.trace_header"),  # CORS answers' own
    ({"trace_header": "x-ids", "thread_header": "X-IDS"}, "must be different"),
])
def test_trace_and_thread_headers_may_not_be_the_gateways_own(gateway, says) -> None:
    with pytest.raises(ConfigError, match=says):
        parse_config({"gateway": gateway, "channels": [{"name": "a", "models": ["m"]}]})
    assert parse_config({"gateway": {"trace_header": "AH-Trace-Id"}, "channels": [{"name": "a", "models": ["m"]}]})
    # the defaults, written out as the README shows them
    assert parse_config({"gateway": {"trace_header": "x-axonsim-trace-id", "thread_header": "x-axonsim-thread-id"},
                         "channels": [{"name": "a", "models": ["m"]}]})


def test_two_keys_of_one_channel_may_not_share_a_name() -> None:
    with pytest.raises(ConfigError, match=r"channels\[0\].*api_keys\[1\].name: 'same'"):
        parse_config({"channels": [{"name": "a", "models": ["m"], "api_keys": [
            {"key": "sk-1", "name": "same"}, {"key": "sk-2", "name": "same"}]}]})
    # a generated name counts too
    with pytest.raises(ConfigError, match="'a#0'"):
        parse_config({"channels": [{"name": "a", "models": ["m"], "api_keys": ["sk-1", {"key": "sk-2", "name": "a#0"}]}]})


@pytest.mark.parametrize("url, says", [
    ("ftp://h/v1", "http:// or https://"),
    ("http://user:hunter2-secret@h/v1", "credentials"),
    ("http:///v1", "no host"),
    ("http://a..b/v1", "host name"),
    ("http://h:99999/v1", "port"),
    ("http://[::1/v1", "not a URL"),
    ("http://h:0/v1", "port 0"),
    ("http://h/v1?key=x", "query string"),
    ("http://h/v1#part", "fragment"),
    ("http://h/v1 ", "space"),
    ("api.openai.com/v1", "http:// or https://"),
    ("http://h\\x/v1", "backslash"),
    ("http://a\u200b.com/v1", "host name"),
    ("http://xn--zz.com/v1", "host name"),
])
def test_a_base_url_the_proxy_cannot_send_to_is_refused_at_load(url: str, says: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse_config({"channels": [{"name": "a", "base_url": url, "api_keys": ["sk-one-key"], "models": ["m"]}]})
    assert "channels[0].base_url" in str(e.value) and says in str(e.value)
    assert "hunter2" not in str(e.value)


@pytest.mark.parametrize("url", ["http://127.0.0.1:9101/v1", "https://api.openai.com/v1/", "http://[::1]:8080",
                                 "http://my_proxy.internal:4000/openai", "HTTPS://Generativelanguage.googleapis.com",
                                 "http://bücher.example/v1", ""])
def test_base_urls_the_proxy_can_send_to_load(url: str) -> None:
    cfg = parse_config({"channels": [{"name": "a", "base_url": url, "api_keys": ["sk-one-key"], "models": ["m"]}]})
    assert cfg.channels[0].base_url == url


def test_a_config_file_that_is_not_utf8_is_a_config_error(tmp_path) -> None:
    p = tmp_path / "bin.yaml"
    p.write_bytes(b"channels:\n  - {name: a, models: [m]}\n# \xff\xfe\n")
    with pytest.raises(ConfigError, match="bin.yaml: not UTF-8"):
        load_config(p)
    r = subprocess.run([sys.executable, "-m", "axonsim", "serve", "--config", str(p)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "not UTF-8" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize("url", ["redis://127.0.0.1:notaport/0", "redis://:pw-81f3@[::1/15", "redis://h:6379/abc",
                                 "unix://", "redis://:pw-81f3@h:6379?db=abc", "redis://h?socket_timeout=x",
                                 "redis://h?max_connections=-1", "redis://h?socket_timeout=nan"])
def test_a_malformed_redis_url_is_a_config_error_that_hides_the_password(url: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config({"channels": [{"name": "a", "models": ["m"]}], "state": {"url": url}})
    assert "state.url" in str(err.value) and "pw-81f3" not in str(err.value)


@pytest.mark.parametrize("url", ["redis://127.0.0.1:6379/0", "redis://:pw@localhost:6379", "rediss://h:1/2",
                                 "unix:///tmp/redis.sock", "redis://localhost", "redis://h?socket_timeout=2.5&db=3",
                                 "unix:///tmp/r.sock?db=1", "rediss://h?ssl_cert_reqs=none"])
def test_well_formed_redis_urls_pass(url: str) -> None:
    assert parse_config({"channels": [{"name": "a", "models": ["m"]}], "state": {"url": url}}).state.url == url


@pytest.mark.parametrize("url", ["postgresql://postgres:pw-81f3@127.0.0.1:54x32/db", "postgresql://u:pw-81f3@[::1/db"])
def test_a_store_url_the_store_cannot_read_is_a_config_error_that_hides_the_password(url: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config({"channels": [{"name": "a", "models": ["m"]}], "store": {"url": url}})
    assert "store.url" in str(err.value) and "pw-81f3" not in str(err.value)


def test_a_store_password_given_as_a_query_option_is_hidden_and_scrubbed() -> None:
    from server.store.engine import safe_url, url_password

    url = "postgresql+asyncpg://postgres@127.0.0.1:5432/db?password=QSECRET-PW-42&ssl=disable"
    assert "QSECRET" not in safe_url(url) and "password=***" in safe_url(url) and "ssl=disable" in safe_url(url)
    assert url_password(url) == "QSECRET-PW-42"  # what the scrubber masks in stored bodies
    assert url_password("postgresql+asyncpg://u:pw@h/db") == "pw"


@pytest.mark.parametrize("url, shown", [
    ("postgresql://axon:s3cr/et-PW@127.0.0.1:5432/axonsim", "postgresql://axon:***@127.0.0.1:5432/axonsim"),
    ("postgresql://u:p#w-PW@h/db", "postgresql://u:***@h/db"),
    ("postgresql://u:p?w-PW@h/db", "postgresql://u:***@h/db"),
    ("redis://:pa@ss-PW@h:6379/0", "redis://:***@h:6379/0"),  # redis-py: the password is "pa@ss-PW"
    ("redis://h:6379/0?password=x-PW&db=1", "redis://h:6379/0?password=***&db=1"),
    ("postgresql+asyncpg://u:pw-PW@[::1]:5432/db?ssl=disable", "postgresql+asyncpg://u:***@[::1]:5432/db?ssl=disable"),
    ("unix:///tmp/r.sock?password=x-PW", "unix:///tmp/r.sock?password=***"),
    ("sqlite+aiosqlite:////tmp/x.db", "sqlite+aiosqlite:////tmp/x.db"),
    ("sqlite+aiosqlite:///rel.db", "sqlite+aiosqlite:///rel.db"),
    ("postgresql://host/db?application_name=a@b", "postgresql://host/db?application_name=a@b"),
    ("postgresql://u?x:PW9@h/db", "postgresql://u?x:***@h/db"),  # SQLAlchemy: user "u?x", password "PW9"
])
def test_a_url_is_shown_with_its_password_masked_however_a_library_reads_it(url: str, shown: str) -> None:
    from server.store.engine import safe_url

    assert safe_url(url) == shown and "PW" not in safe_url(url)


@pytest.mark.parametrize("value", ["*Xk9-live-SECRET-7781ab", "!Xk9-live-SECRET-7781ab", "!Xk9-live-SECRET-7781ab'q"])
def test_a_yaml_error_does_not_quote_a_value_that_may_be_a_secret(tmp_path, value):
    # Unquoted, a key beginning with `*` is read as an alias and one with `!` as a tag: YAML's
    # message quoted it whole, and a file that does not parse has no keys to mask by.
    from axonsim.config import load_config

    f = tmp_path / "gw.yaml"
    f.write_text(f"gateway:\n  api_keys: [client-key-1234]\nchannels:\n  - name: a\n    models: [m]\n"
                 f"    api_keys:\n      - {value}\n")
    with pytest.raises(ConfigError) as err:
        load_config(f)
    message = str(err.value)
    assert "not valid YAML" in message and "line 7" in message, message
    assert "Xk9-live" not in message and "SECRET" not in message, message
    # a short quoted token (what YAML found where it expected something else) is still named
    g = tmp_path / "tab.yaml"
    g.write_text("channels:\n\t- name: a\n")
    assert "'\\t'" in str(pytest.raises(ConfigError, load_config, g).value)
