"""Hostile input on the ingest WebSocket, and the writer's back-pressure.

Hypothesis writes the frames: random text and bytes, JSON of the right shape with the wrong types,
real calls with one field replaced by arbitrary JSON, deep nesting, huge numbers. Whatever comes in,
a real hub process must answer only with `error` or `ack` messages, keep the connection, store the
valid call that follows, and stay healthy.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dissect.model import Call
from hub.ingest import Conn, Writer, _Pending
from hub.store import Store
from tests.hub.test_service import TOKEN, Hub, _call, get, start_hub

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=20,
)
CALL_FIELDS = list(json.loads(_call("x/1").to_json()))


@st.composite
def hostile_frame(draw: st.DrawFn) -> str | bytes:
    kind = draw(st.integers(0, 6))
    if kind == 0:
        return draw(st.text(max_size=200))
    if kind == 1:
        return draw(st.binary(max_size=200))
    if kind == 2:  # the envelope's fields with arbitrary values
        msg = {
            "type": draw(st.sampled_from(["calls", "hello", "packets", "stats", "ack", "", "x" * 300])),
            **draw(
                st.dictionaries(st.sampled_from(["seq", "calls", "worker", "capabilities", "drops"]), JSON)
            ),
        }
        return json.dumps(msg)
    if kind == 3:  # a real call with one field replaced
        call = json.loads(_call(f"hostile/{draw(st.integers(0, 10**6))}").to_json())
        call[draw(st.sampled_from(CALL_FIELDS))] = draw(JSON)
        return json.dumps({"type": "calls", "seq": draw(st.integers(-(2**70), 2**70)), "calls": [call]})
    if kind == 4:  # nesting deeper than any parser should follow
        depth = draw(st.integers(100, 5000))
        return '{"type":"calls","seq":1,"calls":[' + "[" * depth + "]" * depth + "]}"
    if kind == 5:
        return json.dumps({"type": "stats", "drops": draw(JSON), "tls": draw(JSON)})
    return json.dumps(draw(JSON))


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    d = tmp_path_factory.mktemp("hostile")
    h = start_hub(d / "db", d / "hub.log")
    try:
        yield h
    finally:
        h.stop()


async def _session(url: str, frames: list[str | bytes], good: Call, seq: int) -> list[dict[str, Any]]:
    replies: list[dict[str, Any]] = []
    async with (
        aiohttp.ClientSession(headers={"Authorization": f"Bearer {TOKEN}"}) as s,
        s.ws_connect(url + "/api/v1/ingest") as ws,
    ):
        await ws.send_str('{"type":"hello","worker":"hostile","capabilities":[]}')
        for f in frames:
            if isinstance(f, bytes):
                await ws.send_bytes(f)
            else:
                await ws.send_str(f)
        await ws.send_str(f'{{"type":"calls","seq":{seq},"calls":[{good.to_json()}]}}')
        while True:
            msg = await asyncio.wait_for(ws.receive(), 30)
            assert msg.type == aiohttp.WSMsgType.TEXT, f"the hub ended the stream: {msg}"
            replies.append(json.loads(msg.data))
            if replies[-1].get("type") == "ack" and replies[-1].get("seq") == seq:
                return replies


_counter = iter(range(10**9))


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow], deadline=None)
@given(st.lists(hostile_frame(), min_size=1, max_size=6))
def test_hostile_frames_get_errors_and_the_stream_goes_on(hub: Hub, frames: list[str | bytes]) -> None:
    n = next(_counter)
    good = _call(f"hostile-good/{n}")
    seq = 10**6 + n  # above any seq a hostile frame could have drawn in the usual range
    replies = _session_run(hub, frames, good, seq)
    assert {r["type"] for r in replies} <= {"ack", "error"}
    for r in replies:
        if r["type"] == "error":
            assert isinstance(r["error"], str) and r["error"]
    ack = [r for r in replies if r["type"] == "ack" and r.get("seq") == seq][-1]
    assert ack["calls"] == 1 and ack["rejected"] == 0
    status, body = get(hub, f"/api/v1/calls/{good.id}")
    assert status == 200 and body["id"] == good.id


def _session_run(hub: Hub, frames: list[str | bytes], good: Call, seq: int) -> list[dict[str, Any]]:
    return asyncio.run(_session(hub.url, frames, good, seq))


def test_the_hub_is_healthy_after_the_storm(hub: Hub) -> None:
    assert get(hub, "/healthz", token=None) == (200, {"ok": True})
    status, body = get(hub, "/api/v1/stats")
    assert status == 200 and body["ingest"]["commit_errors"] == 0


# ---- back-pressure


class _HeldStore(Store):
    """A real store whose commits wait until the test lets them go (to make the writer fall behind)."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.go = threading.Event()

    def add_new(self, calls: list[Call], now_ns: int) -> list[Call]:  # what the writer calls
        self.go.wait(30)
        return super().add_new(calls, now_ns)


def test_a_writer_that_falls_behind_makes_ingest_wait(tmp_path: Path) -> None:
    async def scenario() -> None:
        store = _HeldStore(tmp_path)
        writer = Writer(store, interval=0.01, max_calls=10, max_queued=25)
        writer.start()
        conn = Conn()
        try:
            for i in range(3):  # 30 calls queued: over the limit
                writer.submit(_Pending(conn, i, [_call(f"bp/{i}/{k}") for k in range(10)], 0))
            waiting = asyncio.ensure_future(writer.room())
            await asyncio.sleep(0.2)
            assert not waiting.done(), "ingest must wait while the writer is behind"
            store.go.set()
            await asyncio.wait_for(waiting, 10)
            deadline = time.monotonic() + 10
            while writer.queued and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            assert writer.queued == 0
            assert store.count() == 30
        finally:
            store.go.set()
            await writer.stop()
            store.close()

    asyncio.run(scenario())
