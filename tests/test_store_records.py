"""The store's plain records (server/store/records.py): built like dataclasses, compared and shown like them."""

from __future__ import annotations

import time

from server.store import AttemptRow, RequestRecord

REQUEST_FIELDS = ["project", "model", "client_format", "status", "outcome", "id", "created_at", "key_name", "stream",
                  "error", "latency", "ttft", "overhead", "prompt_tokens", "completion_tokens", "cached_tokens",
                  "reasoning_tokens", "cost", "trace_id", "thread_id", "channel", "request_body", "response_body",
                  "attempts"]
ATTEMPT_FIELDS = ["n", "channel", "upstream_model", "status", "key_name", "error", "error_kind", "latency", "ttft",
                  "cost", "decision"]


def attempt() -> AttemptRow:
    return AttemptRow(2, "alpha", "up-m", 503, "alpha#1", "busy", "overloaded", 0.25, None, 0.0, {"next": "failover"})


def record() -> RequestRecord:
    return RequestRecord("proj", "m", "anthropic", 200, "completed", "req_1", 1700000000.5, "app", True, None, 1.5,
                         0.2, 0.001, 10, 20, 3, 4, 0.01, "t", "th", "beta", b"{}", "ok", [attempt()])


def test_positional_arguments_follow_the_field_order() -> None:
    a = attempt()
    assert [getattr(a, f) for f in ATTEMPT_FIELDS] == [2, "alpha", "up-m", 503, "alpha#1", "busy", "overloaded", 0.25,
                                                       None, 0.0, {"next": "failover"}]
    r = record()
    assert [getattr(r, f) for f in REQUEST_FIELDS] == ["proj", "m", "anthropic", 200, "completed", "req_1",
                                                       1700000000.5, "app", True, None, 1.5, 0.2, 0.001, 10, 20, 3, 4,
                                                       0.01, "t", "th", "beta", b"{}", "ok", [attempt()]]
    assert RequestRecord(**{f: getattr(r, f) for f in REQUEST_FIELDS}) == r  # keywords too (the store's reads)


def test_defaults() -> None:
    before = time.time()
    r = RequestRecord(project="p", model="m", client_format="openai_chat", status=200, outcome="completed")
    assert r.id.startswith("req_") and before <= r.created_at <= time.time()
    assert (r.stream, r.prompt_tokens, r.cost, r.attempts) == (False, 0, None, [])
    assert RequestRecord("p", "m", "openai_chat", 200, "completed").attempts is not r.attempts  # a list each
    a = AttemptRow(1, "c", "m", 200)
    assert [getattr(a, f) for f in ATTEMPT_FIELDS[4:]] == [None] * 7


def test_equality_is_by_value_and_repr_names_every_field() -> None:
    assert record() == record() and attempt() == attempt()
    other = record()
    other.attempts[0].status = 200
    assert other != record()
    assert record() != "not a record" and attempt() != None  # noqa: E711
    text = repr(record())
    assert text.startswith("RequestRecord(project='proj', model='m'") and "AttemptRow(n=2, channel='alpha'" in text


def test_as_dict_is_plain_data() -> None:
    d = record().as_dict()
    assert list(d) == REQUEST_FIELDS
    assert d["request_body"] == "{}" and d["response_body"] == "ok"  # bytes as text
    assert d["attempts"] == [dict(zip(ATTEMPT_FIELDS, [2, "alpha", "up-m", 503, "alpha#1", "busy", "overloaded", 0.25,
                                                       None, 0.0, {"next": "failover"}], strict=True))]
