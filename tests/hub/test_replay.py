"""The replay WebSocket `/api/v1/replay` against a real hub process.

Synthetic calls with known start times go in through the ingest WebSocket (in reverse order, so
the replay's order comes from the timestamps, not from arrival); the replay must send them in
start-time order, spaced as they were (scaled by the speed), filtered, and end with the count.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import statistics
import time
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest

from dissect.model import Call
from hub.replay import MESSAGE_CALLS, PAGE
from tests.hub.test_live import AUTH, make_call, ws_url
from tests.hub.test_live import ingest as ingest_calls
from tests.hub.test_service import Hub, get, start_hub

S = 1_000_000_000
MS = 1_000_000
T0 = 1_650_000_000 * S  # the 2 s window: 21 calls, 100 ms apart
BIG = 1_660_000_000 * S  # another window: more calls than one page, 1 ms apart
BIG_N = 2 * PAGE + 345


def window_calls() -> list[Call]:
    calls = [
        make_call(f"replay/{i:02d}", T0 + i * 100 * MS, protocol="http" if i % 2 == 0 else "dns")
        for i in range(21)
    ]
    calls.append(make_call("replay/before", T0 - S))
    calls.append(make_call("replay/after", T0 + 5 * S))
    return calls


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    d = tmp_path_factory.mktemp("replay")
    h = start_hub(d / "db", d / "hub.log")
    try:
        calls = window_calls()[::-1]
        calls += [make_call(f"big/{i:05d}", BIG + i * MS) for i in range(BIG_N)][::-1]
        asyncio.run(ingest_calls(h, calls, batch=300))
        yield h
    finally:
        h.stop()


class Result:
    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []
        self.arrivals: list[tuple[float, str]] = []  # (monotonic time, call id)
        self.closed_with: int | None = None

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [m for m in self.messages if m["type"] == kind]

    @property
    def ids(self) -> list[str]:
        return [i for _, i in self.arrivals]

    @property
    def duration(self) -> float:
        return self.arrivals[-1][0] - self.arrivals[0][0]


async def replay(hub: Hub, params: dict[str, str], on_call: Any = None, errors_ok: bool = False) -> Result:
    """Run a replay to its end; `on_call(ws, result)` runs after each calls message."""
    res = Result()
    async with (
        aiohttp.ClientSession() as s,
        s.ws_connect(ws_url(hub, "/api/v1/replay"), params=params, headers=AUTH, max_msg_size=0) as ws,
    ):
        while True:
            msg = await asyncio.wait_for(ws.receive(), 60)
            if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING):
                res.closed_with = msg.data if msg.type == aiohttp.WSMsgType.CLOSE else None
                return res
            assert msg.type == aiohttp.WSMsgType.TEXT, msg
            now = time.monotonic()
            m = json.loads(msg.data)
            res.messages.append(m)
            assert errors_ok or m["type"] != "error", m
            if m["type"] == "calls":
                res.arrivals += [(now, c["id"]) for c in m["calls"]]
                if on_call is not None:
                    await on_call(ws, res)


def run(hub: Hub, **params: str) -> Result:
    return asyncio.run(replay(hub, params))


WINDOW = {"from": str(T0), "to": str(T0 + 2100 * MS)}
ALL = [f"replay/{i:02d}" for i in range(21)]


def test_1x_keeps_order_and_spacing(hub: Hub) -> None:
    res = run(hub, **WINDOW, speed="1")
    assert res.ids == ALL
    hello = res.messages[0]
    assert hello["type"] == "hello" and hello["speed"] == 1.0
    assert (hello["from"], hello["to"]) == (T0, T0 + 2100 * MS)
    assert res.messages[-1] == {"type": "end", "calls": 21} and res.closed_with == 1000
    assert 1.8 <= res.duration <= 3.0, res.duration
    times = [t for t, _ in res.arrivals]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert 0.07 <= statistics.median(gaps) <= 0.15, gaps
    # each call arrives close to its place in the original timeline (lateness does not add up)
    for k, t in enumerate(times):
        assert abs(t - times[0] - k * 0.1) < 0.3, (k, t - times[0])
    # summaries, as the live socket sends them
    first = res.of("calls")[0]["calls"][0]
    assert first["request_ts"] == T0 and "body" not in first["response"] and first["ingest_ts"] > 0


def test_10x_takes_a_tenth(hub: Hub) -> None:
    res = run(hub, **WINDOW, speed="10")
    assert res.ids == ALL
    assert 0.15 <= res.duration <= 1.0, res.duration


def test_max_sends_at_once_and_filters(hub: Hub) -> None:
    res = run(hub, **WINDOW, speed="max")
    assert res.ids == ALL
    assert len(res.of("calls")) == 1  # everything was due at once: one message
    assert res.messages[0]["speed"] == "max"
    res = run(hub, **WINDOW, speed="max", filter="http")
    assert res.ids == ALL[::2] and res.messages[-1] == {"type": "end", "calls": 11}
    assert res.messages[0]["filter"] == "http"
    # a filtered replay at 1x still spans the window of its own first and last call
    res = run(hub, **WINDOW, speed="1x", filter="dns")
    assert res.ids == ALL[1::2] and 1.6 <= res.duration <= 2.8, res.duration


def test_window_bounds_and_an_empty_window(hub: Hub) -> None:
    res = run(hub, **{"from": str(T0 + 100 * MS), "to": str(T0 + 300 * MS)}, speed="max")
    assert res.ids == ["replay/01", "replay/02"]  # from inclusive, to exclusive
    res = run(hub, **{"from": str(T0 - 2 * S), "to": str(T0 + 10 * S)}, speed="max")
    assert res.ids == ["replay/before", *ALL, "replay/after"]
    res = run(hub, **{"from": "2001-01-01T00:00:00Z", "to": "2001-01-02T00:00:00Z"})
    assert [m["type"] for m in res.messages] == ["hello", "end"] and res.messages[-1]["calls"] == 0


def test_more_than_a_page_in_order(hub: Hub) -> None:
    res = run(hub, **{"from": str(BIG), "to": str(BIG + S * 60)}, speed="max")
    assert res.ids == [f"big/{i:05d}" for i in range(BIG_N)]
    assert all(len(m["calls"]) <= MESSAGE_CALLS for m in res.of("calls")) and len(res.of("calls")) >= 3
    assert res.messages[-1] == {"type": "end", "calls": BIG_N}


def test_pause_resume_and_speed_change(hub: Hub) -> None:
    state: dict[str, Any] = {}
    tasks: list[asyncio.Task[None]] = []

    async def resume_later(ws: aiohttp.ClientWebSocketResponse) -> None:
        await asyncio.sleep(0.6)  # at 1x about six calls would arrive meanwhile
        await ws.send_str('{"type": "speed", "speed": "fast"}')  # refused; the replay goes on
        state["resumed"] = time.monotonic()
        await ws.send_str('{"type": "resume"}')

    async def control(ws: aiohttp.ClientWebSocketResponse, res: Result) -> None:
        if len(res.arrivals) == 3 and "paused" not in state:
            state["paused"] = time.monotonic()
            await ws.send_str('{"type": "pause"}')
            tasks.append(asyncio.get_running_loop().create_task(resume_later(ws)))
        elif len(res.arrivals) == 6 and "max" not in state:
            state["max"] = time.monotonic()
            await ws.send_str('{"type": "speed", "speed": "max"}')

    res = asyncio.run(replay(hub, {**WINDOW, "speed": "1"}, on_call=control, errors_ok=True))
    assert res.ids == ALL
    arrived = dict((i, t) for t, i in res.arrivals)
    assert not [i for t, i in res.arrivals if state["paused"] + 0.05 < t < state["resumed"]]
    # the first call after the pause keeps what was left of its 100 ms spacing
    assert 0 < arrived["replay/03"] - state["resumed"] < 0.25
    # after the switch to max, the last 15 calls (1.5 s at 1x) came at once
    assert res.arrivals[-1][0] - state["max"] < 0.8
    progress = res.of("progress")
    assert [p["paused"] for p in progress[:1]] == [True] and progress[-1]["speed"] == "max"
    assert not progress[-1]["paused"] and any(p["speed"] == 1.0 and not p["paused"] for p in progress)
    (error,) = res.of("error")
    assert "speed must be" in error["error"]
    assert res.messages[-1] == {"type": "end", "calls": 21}


def test_bad_parameters_are_400s_and_no_token_a_401(hub: Hub) -> None:
    cases = [
        ({"to": "now"}, "needs from"),
        ({"from": "-5m"}, "needs to"),
        ({"from": "now", "to": "-5m"}, "must be after"),
        ({"from": "yesterday", "to": "now"}, "not a time"),
        ({**WINDOW, "speed": "0"}, "speed"),
        ({**WINDOW, "speed": "-1"}, "speed"),
        ({**WINDOW, "speed": "fast"}, "speed"),
        ({**WINDOW, "speed": "inf"}, "speed"),
        ({**WINDOW, "speed": "nan"}, "speed"),
    ]
    for query, text in cases:
        status, body = get(hub, "/api/v1/replay", **query)
        assert status == 400 and text in body["error"], (query, body)
    status, body = get(hub, "/api/v1/replay", **WINDOW, filter="status ==")
    assert status == 400 and body["position"] == 9 and body["expected"] == "a value"

    async def handshake(headers: dict[str, str], **params: str) -> int:
        async with aiohttp.ClientSession() as s:
            try:
                async with s.ws_connect(ws_url(hub, "/api/v1/replay"), headers=headers, params=params):
                    return 101
            except aiohttp.WSServerHandshakeError as e:
                return e.status

    assert asyncio.run(handshake({}, **WINDOW)) == 401
    assert asyncio.run(handshake(AUTH, **WINDOW, speed="0")) == 400
    assert asyncio.run(handshake(AUTH, **WINDOW)) == 101
