"""The worker's uplink (`capture.uplink.Uplink`) against a real hub process and a real DuckDB.

What the tests send is the oracle: every call is made here with a known id and body, and the hub's
own API (`/api/v1/calls`, `/api/v1/calls/{id}`, `/api/v1/stats`) must give back exactly those calls,
once each, with the bodies as sent, and the worker's own stats as it reported them.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from capture.uplink import Uplink
from dissect.model import Call, Endpoint, Message
from tests.hub.test_service import TOKEN, Hub, get, start_hub

# ---- helpers shared with test_uplink_faults.py and tests/hub/test_export_workers.py


def make_call(node: str, i: int, body_size: int = 64, flow_id: str | None = None) -> Call:
    """Call number `i` of `node`: its id, target and body say which it is."""
    body = (f"call {i} of {node} ".encode() * (body_size // 8 + 1))[:body_size]
    return Call(
        id=f"{node}/{i:026d}",
        protocol="http",
        src=Endpoint(ip="10.0.0.1", port=40000 + i % 20000),
        dst=Endpoint(ip="10.0.0.2", port=8080),
        request_ts=1_700_000_000_000_000_000 + i * 1_000_000,
        response_ts=1_700_000_000_000_000_000 + i * 1_000_000 + 500_000,
        method="POST",
        target=f"/items/{i:08d}",  # fixed width: calls of one body size are all one size
        status=201,
        request=Message(headers=[("Host", "api")], body=body, body_size=len(body), wire_size=len(body)),
        response=Message(headers=[("Content-Type", "text/plain")], body=b"ok", body_size=2, wire_size=2),
        flow_id=flow_id,
    ).finish()


def wait_until(what: str, pred: Callable[[], bool], timeout: float = 60.0, every: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(every)


class Running:
    """An Uplink running on its own event loop thread, as the worker runs it beside capture."""

    def __init__(self, uplink: Uplink) -> None:
        self.uplink = uplink
        self.loop = asyncio.new_event_loop()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._main, name="test-uplink", daemon=True)
        self.thread.start()

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.task = self.loop.create_task(self.uplink.run())
        self.task.add_done_callback(self._ended)
        self.loop.run_forever()  # until close(): run() ends before close() does

    def _ended(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            self.error = task.exception()

    def call(self, fn: Callable[[], Any]) -> Any:
        """Run `fn` on the uplink's loop and return its result (for a consistent snapshot)."""

        async def run() -> Any:
            return fn()

        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(timeout=30)

    def close(self, flush_timeout: float = 20.0) -> None:
        fut = asyncio.run_coroutine_threadsafe(self.uplink.close(flush_timeout), self.loop)
        fut.result(timeout=flush_timeout + 60)
        assert self.task.done(), "Uplink.run() did not return after close()"
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(60)
        assert not self.thread.is_alive()
        self.loop.close()
        assert self.error is None, repr(self.error)


def stored_ids(hub: Hub, node: str) -> list[str]:
    """Every stored call id of `node`, paged through the API (repeats would show as repeats)."""
    ids: list[str] = []
    cursor = ""
    while True:
        q = {"filter": f'id startswith "{node}/"', "limit": "10000", "order": "asc"}
        if cursor:
            q["cursor"] = cursor
        status, body = get(hub, "/api/v1/calls", **q)
        assert status == 200, body
        ids += [c["id"] for c in body["calls"]]
        cursor = body["next_cursor"]
        if cursor is None:
            return ids


def worker_entry(hub: Hub, name: str) -> dict[str, Any] | None:
    status, body = get(hub, "/api/v1/stats")
    assert status == 200, body
    return {w["name"]: w for w in body["workers"]}.get(name)


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    d = tmp_path_factory.mktemp("uplink-hub")
    h = start_hub(d / "db", d / "hub.log")
    try:
        yield h
    finally:
        h.stop()


# ---- tests


def test_calls_are_stored_once_with_their_bodies_and_close_flushes(hub: Hub, tmp_path: Path) -> None:
    node = "up-node-a"
    n = 2_345
    calls = [make_call(node, i, body_size=64 + i % 700) for i in range(n)]
    worker_stats = {"drops": {"kernel": 3, "ebpf": 0}, "tls": [{"pid": 7, "library": "libssl.so.3"}]}
    up = Uplink(
        hub.url,
        TOKEN,
        node,
        spool_dir=tmp_path / "spool",
        batch_max=100,
        batch_interval=0.05,
        window=3,
        stats=lambda: worker_stats,
    )
    r = Running(up)
    try:
        # the capture thread: submits as fast as it can, never waiting
        def feed() -> None:
            for call in calls:
                up.submit(call.to_json_bytes())

        feeder = threading.Thread(target=feed)
        feeder.start()
        feeder.join(60)
        assert not feeder.is_alive()
    finally:
        r.close(flush_timeout=60)
    c = up.counters()
    assert c["submitted"] == n and c["acked"] == n
    assert c["dropped"] == c["invalid"] == c["rejected"] == 0
    assert c["spool_batches"] == c["spool_calls"] == c["buffered"] == 0
    assert c["batches_acked"] >= n // 100  # batches of at most 100 calls
    assert list((tmp_path / "spool").iterdir()) == []  # every acked batch's file is gone

    ids = stored_ids(hub, node)
    assert ids == sorted(c.id for c in calls)  # each once, ids as sent
    for i in (0, 1, 777, n - 1):
        status, body = get(hub, "/api/v1/calls/" + urllib.parse.quote(calls[i].id, safe="/"))
        assert status == 200, body
        assert base64.b64decode(body["request"]["body"]) == calls[i].request.body  # type: ignore[union-attr]
        assert body["target"] == f"/items/{i:08d}" and body["status"] == 201

    w = worker_entry(hub, node)
    assert w is not None and w["calls"] == n
    assert w["batches"] >= n // 100
    assert w["drops"] == {"kernel": 3, "ebpf": 0, "spool": 0, "invalid": 0, "spool_corrupt_batches": 0}
    assert w["reported"]["tls"] == worker_stats["tls"]
    assert w["reported"]["uplink"]["submitted"] <= n  # a report from while it ran
    assert "export" in w["capabilities"] and not w["connected"]


def test_calls_that_are_not_json_are_counted_and_the_rest_go_on(hub: Hub, tmp_path: Path) -> None:
    node = "up-node-b"
    good = [make_call(node, i) for i in range(50)]
    up = Uplink(hub.url, TOKEN, node, spool_dir=tmp_path / "spool", batch_max=7, batch_interval=0.05)
    r = Running(up)
    try:
        for i, c in enumerate(good):
            up.submit(c.to_json_bytes())
            if i % 10 == 0:
                up.submit(b'{"v": 1, "id": "broken')  # cut short: would make its batch unreadable
        up.submit("a str, not bytes")  # type: ignore[arg-type]
        bad_record = json.loads(make_call(node, 999).to_json())
        bad_record["src"]["port"] = 70000  # JSON, but not a valid Call: the hub rejects it by index
        up.submit(json.dumps(bad_record).encode())
    finally:
        r.close(flush_timeout=30)
    counts = up.counters()
    assert counts["invalid"] == 6 and counts["rejected"] == 1 and counts["acked"] == 50
    assert counts["submitted"] == 50 + 6 + 1
    assert stored_ids(hub, node) == sorted(x.id for x in good)


def test_a_wrong_token_is_one_clear_error_and_a_rotated_token_needs_no_restart(
    hub: Hub, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    node = "up-node-c"
    token = ["wrong-token"]
    up = Uplink(
        hub.url,
        lambda: token[0],
        node,
        spool_dir=tmp_path / "spool",
        batch_interval=0.05,
        auth_retry=0.3,
    )
    calls = [make_call(node, i) for i in range(20)]
    caplog.set_level(logging.INFO, logger="podshark.capture.uplink")
    r = Running(up)
    try:
        for c in calls:
            up.submit(c.to_json_bytes())
        wait_until("three refused attempts", lambda: up.counters()["auth_failures"] >= 3)
        assert stored_ids(hub, node) == []
        assert up.counters()["spool_calls"] == 20  # waiting on disk meanwhile
        refused = [r for r in caplog.records if "401" in r.getMessage()]
        assert len(refused) == 1 and refused[0].levelno == logging.ERROR
        assert "token" in refused[0].getMessage()
        token[0] = TOKEN  # the token file was rotated
        wait_until("the calls after the rotation", lambda: up.counters()["acked"] == 20)
    finally:
        r.close()
    assert stored_ids(hub, node) == sorted(c.id for c in calls)
