"""Calls whose numbers do not fit the store are refused one by one at ingest, with the field named.

msgspec checks types, not ranges; the store keeps ports as INTEGER and times, sizes and statuses as
BIGINT, and one value out of range would fail the whole commit, taking every other worker's calls
of that second with it. A real hub process must reject just the bad call (an `error` naming the
field, counted in the ack) and store the others of the same message.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from tests.hub.test_service import _call, _ingest_session, get, start_hub

BAD = [
    ("src.port", lambda d: d["src"].__setitem__("port", 70000)),
    ("dst.port", lambda d: d["dst"].__setitem__("port", -1)),
    ("request_ts", lambda d: d.__setitem__("request_ts", 1 << 63)),
    ("status", lambda d: d.__setitem__("status", -(1 << 63) - 1)),
    ("src.pid", lambda d: d["src"].__setitem__("pid", (1 << 64) - 1)),
    ("response.body_size", lambda d: d["response"].__setitem__("body_size", 1 << 63)),
]


@pytest.mark.slow
def test_out_of_range_numbers_are_refused_per_call(tmp_path: Path) -> None:
    h = start_hub(tmp_path / "db", tmp_path / "hub.log")
    try:
        calls = []
        for i, (_, spoil) in enumerate(BAD):
            d = json.loads(_call(f"range-test/bad-{i}").to_json())
            if d.get("response") is None:
                d["response"] = {"headers": [], "trailers": [], "body_size": 0, "wire_size": 0, "body": ""}
            spoil(d)
            calls.append(json.dumps(d))
        good = [_call(f"range-test/good-{i}").to_json() for i in range(2)]
        frame = '{"type":"calls","seq":1,"calls":[' + ",".join([good[0], *calls, good[1]]) + "]}"
        got = asyncio.run(_ingest_session(h.url, [frame], until_seq=1))
        errors = [m for m in got if m["type"] == "error"]
        ack = next(m for m in got if m["type"] == "ack")
        assert ack["calls"] == 2 and ack["rejected"] == len(BAD)
        assert [e["index"] for e in errors] == list(range(1, len(BAD) + 1))
        for e, (field, _) in zip(errors, BAD, strict=True):
            assert e["error"].startswith(field + " "), e
        for i in range(2):
            status, body = get(h, f"/api/v1/calls/range-test/good-{i}")
            assert status == 200 and body["id"] == f"range-test/good-{i}"
        status, _ = get(h, "/api/v1/calls/range-test/bad-0")
        assert status == 404
    finally:
        h.stop()
