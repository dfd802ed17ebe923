"""The live WebSocket `/api/v1/live`: the fan-out on its own (no network), then a real hub process.

The oracle for what a live client must see is `dissect_path` on the captures imported after it
connected, filtered with `dissect.filter`'s predicate. Each exchange ends with a barrier: a
synthetic call that matches the filter, ingested after the imports, so "every call before the
barrier" is exactly what the imports produced (the hub publishes in commit order).
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from dissect.filter import parse
from dissect.model import Call, Endpoint, Message
from hub.live import LiveHub
from tests.hub.test_service import FILES, TOKEN, Hub, get, import_ok, oracle, start_hub

AUTH = {"Authorization": f"Bearer {TOKEN}"}
BASE_TS = 1_600_000_000_000_000_000
MS = 1_000_000


def make_call(
    call_id: str,
    ts: int = BASE_TS,
    *,
    protocol: str = "http",
    status: int = 200,
    header: str = "",
    body: bytes = b"",
) -> Call:
    """A synthetic call; `header` pads the request headers (they are part of the summary), `body`
    the response body (not part of it)."""
    headers = [("Host", "api")] + ([("X-Pad", header)] if header else [])
    return Call(
        id=call_id,
        protocol=protocol,
        transport="tcp" if protocol != "dns" else "udp",
        src=Endpoint(ip="10.0.0.1", port=40000),
        dst=Endpoint(ip="10.0.0.2", port=8080 if protocol != "dns" else 53),
        request_ts=ts,
        response_ts=ts + 5 * MS,
        method="GET" if protocol != "dns" else "QUERY",
        target="/x" if protocol != "dns" else "example.test",
        status=status if protocol != "dns" else 0,
        request=Message(headers=headers, body_size=0),
        response=Message(headers=[("Content-Type", "text/plain")], body=body, body_size=len(body)),
    ).finish()


# ---- the fan-out without a network


class Recorder:
    """A subscriber's `send`: keeps every message; blocks while `gate` is clear."""

    def __init__(self, open_gate: bool = True) -> None:
        self.messages: list[dict[str, Any]] = []
        self.gate = asyncio.Event()
        if open_gate:
            self.gate.set()

    async def __call__(self, data: bytes) -> None:
        await self.gate.wait()
        self.messages.append(json.loads(data))

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [m for m in self.messages if m["type"] == kind]

    def ids(self) -> list[str]:
        return [c["id"] for m in self.of("calls") for c in m["calls"]]


def _calls(prefix: str, n: int, status: Callable[[int], int] = lambda i: 200) -> list[Call]:
    calls = [
        make_call(f"{prefix}/{i:05d}", BASE_TS + i * MS, status=status(i), body=b"b" * 10) for i in range(n)
    ]
    for c in calls:
        c.ingest_ts = BASE_TS  # the store sets it before the writer publishes
    return calls


def test_publish_matches_coalesces_and_sends_summaries() -> None:
    async def main() -> Recorder:
        hub = LiveHub(interval=0.3)
        rec = Recorder()
        sub = hub.subscribe(parse("status == 200"), rec)
        await asyncio.sleep(0.4)  # the hello goes out at once, then the sender rests an interval
        calls = _calls("a", 40, status=lambda i: 200 if i % 2 else 500)
        hub.publish(calls[:10])
        hub.publish(calls[10:20])  # same tick: one message
        await asyncio.sleep(0.05)
        for k in (20, 30):  # both within the interval after that flush: coalesced into one more
            hub.publish(calls[k : k + 10])
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.5)
        assert hub.stats() == {"subscribers": 1, "published": 40, "duplicates": 0, "sent": 20, "missed": 0}
        await hub.unsubscribe(sub)
        assert hub.stats()["subscribers"] == 0 and hub.stats()["sent"] == 20
        return rec

    rec = asyncio.run(main())
    kinds = [m["type"] for m in rec.messages]
    assert kinds == ["hello", "calls", "calls"]
    hello = rec.messages[0]
    assert hello["filter"] == "status == 200" and hello["interval_ms"] == 300 and hello["server_time"] > 0
    first, second = (m["calls"] for m in rec.of("calls"))
    assert [c["id"] for c in first] == [f"a/{i:05d}" for i in range(1, 20, 2)]
    assert [c["id"] for c in second] == [f"a/{i:05d}" for i in range(21, 40, 2)]
    want = _calls("a", 2, status=lambda i: 200)[1]
    assert first[0] == json.loads(want.to_json_bytes(bodies=False))
    assert "body" not in first[0]["response"] and first[0]["response"]["body_size"] == 10


def test_overflow_drops_the_oldest_and_counts_them_where_they_were() -> None:
    async def main() -> tuple[Recorder, Recorder, dict[str, int]]:
        hub = LiveHub(max_buffer=30, interval=0.05)
        slow, fast = Recorder(open_gate=False), Recorder()
        hub.subscribe(parse(""), slow)
        hub.subscribe(parse(""), fast)
        await asyncio.sleep(0.05)
        calls = _calls("o", 140)
        for k in range(0, 100, 25):  # the slow one's sender is stuck on its hello meanwhile
            hub.publish(calls[k : k + 25])
            await asyncio.sleep(0.15)
        slow.gate.set()
        await asyncio.sleep(0.2)
        hub.publish(calls[100:140])  # a burst larger than any buffer: both lose its 10 oldest
        await asyncio.sleep(0.2)
        return slow, fast, hub.stats()

    slow, fast, stats = asyncio.run(main())
    # the fast subscriber was never held up by the stuck one
    assert fast.ids()[:100] == [f"o/{i:05d}" for i in range(100)]
    # slow: hello, 70 missed, the 30 newest; then the burst: 10 missed, its 30 newest
    kinds = [m["type"] for m in slow.messages]
    assert kinds == ["hello", "missed", "calls", "missed", "calls"], kinds
    assert slow.messages[1]["count"] == 70
    assert [c["id"] for c in slow.messages[2]["calls"]] == [f"o/{i:05d}" for i in range(70, 100)]
    assert slow.messages[3]["count"] == 10
    assert [c["id"] for c in slow.messages[4]["calls"]] == [f"o/{i:05d}" for i in range(110, 140)]
    assert fast.messages[-2:] == [{"type": "missed", "count": 10}, slow.messages[4]]
    received = len(slow.ids()) + len(fast.ids())
    missed = sum(m["count"] for r in (slow, fast) for m in r.of("missed"))
    assert received + missed == 2 * 140 and missed == 90
    assert stats == {"subscribers": 2, "published": 140, "duplicates": 0, "sent": received, "missed": missed}


def test_byte_bound_and_filter_change_and_duplicates() -> None:
    async def main() -> Recorder:
        hub = LiveHub(max_bytes=4000, interval=0.05)
        rec = Recorder(open_gate=False)
        sub = hub.subscribe(parse("status == 200"), rec)
        await asyncio.sleep(0.02)
        calls = _calls("b", 20)
        one = len(calls[0].to_json_bytes(bodies=False))
        hub.publish(calls)
        assert len(sub.buffer) == 4000 // one and sub.buffered_bytes <= 4000
        sub.set_filter(parse("status == 500"))  # discards what the old filter buffered
        assert not sub.buffer and sub.missed == 0
        errors = _calls("e", 3, status=lambda i: 500)
        hub.publish(errors + errors[:1], new=3)  # a repeated id inside a batch: once
        hub.publish(errors, new=0)  # nothing new was stored: nothing to publish
        rec.gate.set()
        await asyncio.sleep(0.2)
        assert hub.stats()["duplicates"] == 4
        return rec

    rec = asyncio.run(main())
    assert [m["type"] for m in rec.messages] == ["hello", "filter", "calls"]
    assert rec.messages[1] == {"type": "filter", "filter": "status == 500", "canonical": "status == 500"}
    assert rec.ids() == ["e/00000", "e/00001", "e/00002"]


# ---- against a real hub


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[Hub]:
    h = start_hub(tmp_path / "db", tmp_path / "hub.log")
    try:
        yield h
    finally:
        h.stop()


def ws_url(hub: Hub, path: str) -> str:
    return hub.url.replace("http://", "ws://") + path


async def ingest(hub: Hub, calls: Sequence[Call], batch: int = 500, ack_timeout: float = 60) -> int:
    """Send calls over the ingest WebSocket and wait for every ack; each ack must come within
    `ack_timeout` of the previous one. Returns the number of acks."""
    async with (
        aiohttp.ClientSession() as s,
        s.ws_connect(ws_url(hub, "/api/v1/ingest"), headers=AUTH, max_msg_size=0) as ws,
    ):
        await ws.send_str('{"type":"hello","worker":"test-live","capabilities":["calls"]}')
        seqs = set()
        for seq, k in enumerate(range(0, len(calls), batch), 1):
            body = b",".join(c.to_json_bytes() for c in calls[k : k + batch])
            await ws.send_str(f'{{"type":"calls","seq":{seq},"calls":[{body.decode()}]}}')
            seqs.add(seq)
        acked = 0
        while seqs:
            msg = await asyncio.wait_for(ws.receive(), ack_timeout)
            assert msg.type == aiohttp.WSMsgType.TEXT, msg
            m = json.loads(msg.data)
            assert m["type"] == "ack", m
            seqs.discard(m["seq"])
            acked += 1
        return acked


class Live:
    """A live client: collects calls and missed counts until a barrier call arrives."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.messages: list[dict[str, Any]] = []

    async def next(self, timeout: float = 60) -> dict[str, Any]:
        msg = await asyncio.wait_for(self.ws.receive(), timeout)
        assert msg.type == aiohttp.WSMsgType.TEXT, msg
        m: dict[str, Any] = json.loads(msg.data)
        self.messages.append(m)
        return m

    async def until_call(self, call_id: str) -> list[dict[str, Any]]:
        """Summaries received up to (without) the call `call_id`."""
        got: list[dict[str, Any]] = []
        while True:
            m = await self.next()
            if m["type"] == "calls":
                for c in m["calls"]:
                    if c["id"] == call_id:
                        return got
                    got.append(c)
            else:
                assert m["type"] != "error", m

    async def until(self, kind: str) -> dict[str, Any]:
        while True:
            m = await self.next()
            if m["type"] == kind:
                return m
            assert m["type"] != "calls", f"a call arrived while waiting for {kind}: {m}"


async def barrier(hub: Hub, live: Live, name: str) -> list[dict[str, Any]]:
    await ingest(hub, [make_call(f"barrier/{name}", protocol="http", status=299)])
    return await live.until_call(f"barrier/{name}")


def _summary_view(d: dict[str, Any]) -> dict[str, Any]:
    return {**d, "ingest_ts": None}


def _oracle_view(c: Call) -> dict[str, Any]:
    return {**c.to_dict(bodies=False), "ingest_ts": None}


BARRIER = " or status == 299"


def test_a_live_client_sees_exactly_the_matching_calls_imported_after_it_connected(hub: Hub) -> None:
    import_ok(hub, FILES[0])  # before the client connects: never sent to it
    text = "(http2 or dns or (http and status == 200))"

    async def main() -> tuple[dict[str, Any], list[dict[str, Any]], list[dict[str, Any]]]:
        async with (
            aiohttp.ClientSession() as s,
            s.ws_connect(
                ws_url(hub, "/api/v1/live"), params={"filter": text + BARRIER}, headers=AUTH, max_msg_size=0
            ) as ws,
        ):
            live = Live(ws)
            hello = await live.next()
            for f in FILES[1:]:
                await asyncio.to_thread(import_ok, hub, f)
            got = await barrier(hub, live, "1")
            # importing a capture again stores nothing new, so nothing is published
            await asyncio.to_thread(import_ok, hub, FILES[1])
            again = await barrier(hub, live, "2")
            return hello, got, again

    hello, got, again = asyncio.run(main())
    assert hello["type"] == "hello" and hello["filter"] == text + BARRIER
    want = oracle(FILES[1:], text)
    assert len(want) > 10 and {c.protocol for c in want} == {"http2", "dns"}
    assert len(oracle(FILES[1:], "not " + text)) > 0  # kafka calls were imported and filtered out
    assert sorted(c["id"] for c in got) == sorted(c.id for c in want)
    by_id = {c.id: c for c in want}
    for c in got:
        assert c["ingest_ts"] > 0
        assert _summary_view(c) == _oracle_view(by_id[c["id"]])
    assert again == []


def test_filter_change_without_reconnecting(hub: Hub) -> None:
    dns_file, kafka_file, http_file = FILES[3], FILES[2], FILES[0]

    async def main() -> tuple[dict[str, Any], list[dict[str, Any]], dict[str, Any], list[dict[str, Any]]]:
        async with (
            aiohttp.ClientSession() as s,
            s.ws_connect(ws_url(hub, "/api/v1/live"), params={"filter": "dns" + BARRIER}, headers=AUTH) as ws,
        ):
            live = Live(ws)
            await live.until("hello")
            await ws.send_str(json.dumps({"type": "filter", "filter": "status ="}))
            error = await live.until("error")
            await asyncio.to_thread(import_ok, hub, dns_file)  # the old filter is still in force
            dns_calls = await barrier(hub, live, "1")
            await ws.send_str(json.dumps({"type": "filter", "filter": "kafka" + BARRIER}))
            reply = await live.until("filter")
            await asyncio.to_thread(import_ok, hub, http_file)
            await asyncio.to_thread(import_ok, hub, kafka_file)
            kafka_calls = await barrier(hub, live, "2")
            return error, dns_calls, reply, kafka_calls

    error, dns_calls, reply, kafka_calls = asyncio.run(main())
    assert error["position"] == 7 and '"=="' in error["error"]
    assert sorted(c["id"] for c in dns_calls) == sorted(c.id for c in oracle([dns_file], "dns"))
    assert reply == {"type": "filter", "filter": "kafka" + BARRIER, "canonical": "kafka or status == 299"}
    want = oracle([kafka_file], "kafka")
    assert want and sorted(c["id"] for c in kafka_calls) == sorted(c.id for c in want)


def test_bad_filter_is_a_400_with_position_and_no_token_a_401(hub: Hub) -> None:
    status, body = get(hub, "/api/v1/live", filter="http and status = 200")
    assert status == 400 and body["position"] == 16 and '"=="' in body["error"]
    status, body = get(hub, "/api/v1/live", filter="status ==")
    assert status == 400 and body["position"] == 9 and body["expected"] == "a value"

    async def handshake(headers: dict[str, str], **params: str) -> int:
        async with aiohttp.ClientSession() as s:
            try:
                async with s.ws_connect(ws_url(hub, "/api/v1/live"), headers=headers, params=params):
                    return 101
            except aiohttp.WSServerHandshakeError as e:
                return e.status

    assert asyncio.run(handshake({})) == 401
    assert asyncio.run(handshake({"Authorization": "Bearer wrong"})) == 401
    assert asyncio.run(handshake({}, filter="status ==")) == 401  # auth first: no filter oracle for strangers
    assert asyncio.run(handshake(AUTH, filter="status ==")) == 400
    assert asyncio.run(handshake(AUTH, filter="http")) == 101


def _small_receive_buffer(addr_info: Any) -> socket.socket:
    """A client socket whose kernel receive buffer stays small (setting it turns autotuning off),
    so a client that does not read pushes back on the hub after a few hundred KiB."""
    family, type_, proto, _, _ = addr_info
    sock = socket.socket(family=family, type=type_, proto=proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 << 10)
    sock.setblocking(False)
    return sock


def test_a_client_that_does_not_read_never_stalls_ingest_and_learns_what_it_missed(hub: Hub) -> None:
    n = 16_000
    # a 2 KB header puts ~2.5 KB into each summary: the 12,000 matching summaries (~30 MB) are far
    # more than the hub buffers for one client (16 MiB) plus the sockets' buffers
    calls = [
        make_call(
            f"slow/{i:05d}",
            BASE_TS + i * MS,
            status=500 if i % 4 == 0 else 200,
            header="p" * 2000,
            body=b"B" * 1000,
        )
        for i in range(n)
    ]
    matching = [c.id for c in calls if c.status == 200]
    errors = [c.id for c in calls if c.status == 500]

    async def main() -> tuple[int, list[dict[str, Any]], list[dict[str, Any]]]:
        slow_conn = aiohttp.TCPConnector(socket_factory=_small_receive_buffer)
        async with (
            aiohttp.ClientSession(connector=slow_conn) as slow_session,
            aiohttp.ClientSession() as s,
            slow_session.ws_connect(
                ws_url(hub, "/api/v1/live"), params={"filter": "status == 200"}, headers=AUTH, max_msg_size=0
            ) as slow_ws,
            s.ws_connect(
                ws_url(hub, "/api/v1/live"), params={"filter": "status == 500"}, headers=AUTH, max_msg_size=0
            ) as fast_ws,
        ):
            fast = Live(fast_ws)
            await fast.until("hello")
            # the slow client reads nothing while all of this is ingested
            acks = await ingest(hub, calls, batch=500, ack_timeout=60)
            got_fast: list[dict[str, Any]] = []
            while len(got_fast) < len(errors):
                m = await fast.next()
                got_fast += m.get("calls", [])
                assert m["type"] != "missed"
            assert [c["id"] for c in got_fast] == errors
            # now read the slow one: every matching call was either received or counted as missed
            slow = Live(slow_ws)
            sequence: list[dict[str, Any]] = []
            received = missed = 0
            while received + missed < len(matching):
                m = await slow.next()
                if m["type"] == "calls":
                    received += len(m["calls"])
                    sequence += m["calls"]
                elif m["type"] == "missed":
                    missed += m["count"]
                    sequence.append(m)
            return acks, sequence, slow.messages

    acks, sequence, messages = asyncio.run(main())
    assert acks == n // 500
    assert messages[0]["type"] == "hello"
    missed = [m["count"] for m in sequence if m.get("type") == "missed"]
    got = [c["id"] for c in sequence if "id" in c]
    assert sum(missed) > 0 and len(got) + sum(missed) == len(matching)
    # in order, no duplicates, and every `missed` stands exactly for the calls skipped there
    position = 0
    for item in sequence:
        if item.get("type") == "missed":
            position += item["count"]
        else:
            assert item["id"] == matching[position]
            position += 1
    assert position == len(matching)
    status, stats = get(hub, "/api/v1/stats")
    assert status == 200, stats
    live = stats["live"]
    assert live["subscribers"] == 0 or live["subscribers"] == 2  # the sockets may still be closing
    assert live["missed"] >= sum(missed) and live["sent"] >= len(got) + len(errors)
