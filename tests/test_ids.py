"""The ids the gateway makes up (server/ids.py): their shape, order and uniqueness, within and across processes."""

from __future__ import annotations

import os
import re
import time

import pytest

from server import ids

REQUEST_ID = re.compile(r"req_[0-9a-f]{24}")
TRACE_ID = re.compile(rb"[0-9a-f]{32}")


def test_request_ids_are_time_ordered_hex_with_the_process_prefix() -> None:
    before = time.time_ns() // 1_000_000
    a = ids.new_request_id()
    after = time.time_ns() // 1_000_000
    assert REQUEST_ID.fullmatch(a)
    assert before <= int(a[4:16], 16) <= after  # the first 12 hex digits: Unix milliseconds
    time.sleep(0.002)
    b = ids.new_request_id()
    assert b > a  # a later millisecond sorts later, so the store's primary key appends
    assert a[16:22] == b[16:22]  # the process's prefix


def test_a_made_up_trace_or_thread_id_is_derived_from_the_request_id() -> None:
    rid = ids.new_request_id().encode()
    trace, thread = ids.derived_id(rid, ids.TRACE), ids.derived_id(rid, ids.THREAD)
    assert TRACE_ID.fullmatch(trace) and TRACE_ID.fullmatch(thread)  # 32 hex digits, as W3C trace ids
    assert trace[:24] == thread[:24] == rid[4:] and trace != thread


def test_ids_do_not_repeat() -> None:
    n = 50_000
    assert len({ids.new_request_id() for _ in range(n)}) == n


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_worker_draws_its_own_prefix() -> None:
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report its ids and leave without running the parent's cleanup
        try:
            os.write(w, ids.new_request_id().encode())
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        child = f.read().decode()
    os.waitpid(pid, 0)
    assert REQUEST_ID.fullmatch(child)
    assert child[16:22] != ids.new_request_id()[16:22]  # 1 in 16.7 million that a child draws the same


def test_a_clients_long_id_is_cut_on_a_character_boundary() -> None:
    assert ids.client_id(b"x" * 300) == b"x" * ids.MAX_CLIENT_ID
    assert ids.client_id(b"short") == b"short"
    for ch in ("é", "日", "😀"):  # 2, 3 and 4 bytes, cut at every offset
        for pad in range(ids.MAX_CLIENT_ID - 4, ids.MAX_CLIENT_ID + 1):
            raw = ("a" * pad + ch * 3).encode()
            cut = ids.client_id(raw)
            assert len(cut) <= ids.MAX_CLIENT_ID and raw.startswith(cut)
            text = cut.decode()  # whole characters only
            assert len(cut) > ids.MAX_CLIENT_ID - len(ch.encode()), text  # and no more cut than needed


def test_an_id_is_text_as_utf8_and_other_bytes_one_character_each() -> None:
    assert ids.id_text("trace-é-日本".encode()) == "trace-é-日本"
    assert ids.id_text(b"caf\xe9") == "café"
    assert ids.id_text(b"plain-1") == "plain-1"
