"""The engine on real frames: ids, connection lifetime, bounds, and hostile input."""

from __future__ import annotations

import hashlib
import random

from hypothesis import given
from hypothesis import strategies as st

from dissect.base import Limits
from dissect.engine import Engine, dissect_path, file_source_id
from dissect.model import Call, Flag
from tests.conftest import FIXTURES
from tests.frames import SYN, Conversation, tcp_frame

S = 1_000_000_000
REQ = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n"
RESP = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


def run(frames: list[tuple[int, bytes]], limits: Limits | None = None) -> tuple[Engine, list[Call]]:
    e = Engine("test", limits)
    return e, list(e.run((ts, 1, f, len(f)) for ts, f in frames))


def test_ids_are_the_file_hash_and_a_sortable_index() -> None:
    path = FIXTURES / "http1__zeek_pipelined-requests.pcap"
    sha = hashlib.sha256(path.read_bytes()).hexdigest()[:12]
    assert file_source_id(path) == sha
    calls = list(dissect_path(path))
    assert calls and all(c.id.startswith(sha + "/") for c in calls)
    ids = [c.id for c in calls]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert [c.id for c in dissect_path(path)] == ids  # the same file gives the same ids
    assert all(c.flow_id and c.flow_id.startswith(sha + "/") for c in calls)


def test_a_simple_exchange_and_latency() -> None:
    c = Conversation("10.0.0.1", 40000, "10.0.0.2", 80)
    frames = [(i, f) for i, f in enumerate(c.handshake())]
    frames += [(10 * S, c.send(0, REQ)), (10 * S + 5_000_000, c.send(1, RESP))]
    _, calls = run(frames)
    assert len(calls) == 1
    call = calls[0]
    assert (call.method, call.target, call.status) == ("GET", "/a", 200)
    assert call.latency_ns == 5_000_000
    assert (call.src.ip, call.src.port, call.dst.ip, call.dst.port) == ("10.0.0.1", 40000, "10.0.0.2", 80)
    assert Flag.MID_STREAM not in call.flags


def test_idle_connection_is_closed_before_the_end_of_input() -> None:
    """A request that never gets an answer comes out once its connection has been idle long enough."""
    lim = Limits(idle_timeout_ns=60 * S)
    c = Conversation("10.0.0.1", 40000, "10.0.0.2", 80)
    frames = [(i, f) for i, f in enumerate(c.handshake())] + [(1 * S, c.send(0, REQ))]
    # then 20k packets of another, busy connection over the next 5 minutes
    other = Conversation("10.0.0.3", 40001, "10.0.0.4", 80)
    frames += [(2 * S + i, f) for i, f in enumerate(other.handshake())]
    for i in range(10_000):
        ts = 2 * S + i * 30_000_000
        frames += [(ts, other.send(0, REQ)), (ts + 1000, other.send(1, RESP))]
    e = Engine("test", lim)
    seen_at = None
    for n, call in enumerate(e.run((ts, 1, f, len(f)) for ts, f in frames)):
        if call.src.port == 40000:
            seen_at = e.packets
            assert Flag.RESPONSE_MISSING in call.flags and call.response is None
            assert n < 10_000
    assert seen_at is not None and seen_at < len(frames)


def test_connection_table_is_bounded() -> None:
    lim = Limits(max_connections=100)
    e = Engine("test", lim)
    for i in range(1000):
        f = tcp_frame("10.0.0.1", 1024 + i, "10.0.0.2", 80, 5, 0, SYN)
        e.packet(i, 1, f)
        assert len(e.tcp) <= 100
    e.finish()


def test_port_reuse_with_a_new_syn_is_a_new_connection() -> None:
    frames: list[tuple[int, bytes]] = []
    for k, isn in enumerate((1000, 500_000)):
        c = Conversation("10.0.0.1", 40000, "10.0.0.2", 80, isn_c=isn, isn_s=isn + 7)
        base = k * 100 * S
        frames += [(base + i, f) for i, f in enumerate(c.handshake())]
        frames += [(base + 10, c.send(0, REQ)), (base + 20, c.send(1, RESP)), (base + 30, c.fin(0))]
        frames += [(base + 40, c.fin(1))]
    _, calls = run(frames)
    assert [(c.status, c.flags) for c in calls] == [(200, []), (200, [])]
    assert calls[0].flow_id != calls[1].flow_id


def test_capture_starting_mid_connection() -> None:
    c = Conversation("10.0.0.1", 40000, "10.0.0.2", 80)
    c.handshake()  # happened before the capture started
    frames = [(1, c.send(1, b"tail of an earlier body")), (2, c.send(0, REQ)), (3, c.send(1, RESP))]
    _, calls = run(frames)
    assert [(x.method, x.target, x.status) for x in calls] == [("GET", "/a", 200)]


@given(st.lists(st.binary(max_size=200), max_size=60), st.integers(0, 2**32))
def test_random_frames_never_raise(frames: list[bytes], seed: int) -> None:
    rnd = random.Random(seed)
    e = Engine("fuzz", Limits(max_ooo_bytes=4096, max_connections=16))
    for i, f in enumerate(frames):
        e.packet(i, rnd.choice([1, 101, 113, 276, 0, 12]), f)
        assert e.buffered_bytes() <= 16 * 2 * (4096 + 1500)
    e.finish()


@given(st.data())
def test_mutated_real_frames_never_raise(data: st.DataObject) -> None:
    c = Conversation("10.0.0.1", 40000, "10.0.0.2", 80)
    frames = [*c.handshake(), c.send(0, REQ), c.send(1, RESP), c.send(0, REQ), c.send(1, RESP)]
    e = Engine("fuzz")
    for i, f in enumerate(frames):
        b = bytearray(f)
        for _ in range(data.draw(st.integers(0, 4))):
            pos = data.draw(st.integers(0, len(b) - 1))
            b[pos] = data.draw(st.integers(0, 255))
        cut = data.draw(st.integers(0, len(b)))
        e.packet(i, 1, bytes(b[:cut]) if data.draw(st.booleans()) else bytes(b))
    e.finish()


def test_detection_is_by_content_not_port() -> None:
    """HTTP on Kafka's port is HTTP; a TLS ClientHello on port 80 is TLS, not HTTP."""
    http = Conversation("10.0.0.1", 40000, "10.0.0.2", 9092)
    frames = [(i, f) for i, f in enumerate(http.handshake())]
    frames += [(10, http.send(0, REQ)), (11, http.send(1, RESP))]
    tls = Conversation("10.0.0.3", 40001, "10.0.0.4", 80)
    hello = bytes.fromhex("16030100a5010000a10303") + bytes(range(32)) + b"\x00" * 60
    frames += [(20 + i, f) for i, f in enumerate(tls.handshake())]
    frames += [
        (30, tls.send(0, hello)),
        (31, tls.send(1, bytes.fromhex("160303003d020000390303") + b"\x01" * 50)),
    ]
    _, calls = run(frames)
    assert sorted((c.protocol, c.dst.port, c.method, c.status) for c in calls) == [
        ("http", 9092, "GET", 200),
        ("tls", 80, "TLS", None),
    ]


def test_connect_tunnel_hands_over_to_detection_and_tls_is_seen_inside() -> None:
    """CONNECT then TLS through the tunnel: the CONNECT call, then a tls call with the inner SNI."""
    from tests.dissect.test_tls_handshakes import client_context, converse, server_context

    tls = converse(client_context(), server_context(), sni="inner.podshark.test")
    c = Conversation("10.0.0.1", 40000, "10.0.0.2", 3128)
    frames = [(i, f) for i, f in enumerate(c.handshake())]
    frames += [
        (10, c.send(0, b"CONNECT inner.podshark.test:443 HTTP/1.1\r\nHost: inner.podshark.test:443\r\n\r\n"))
    ]
    frames += [(11, c.send(1, b"HTTP/1.1 200 Connection established\r\n\r\n"))]
    for k, (direction, data) in enumerate(tls.segments):
        frames.append((20 + k, c.send(direction, data)))
    frames += [(90, c.fin(0)), (91, c.fin(1))]
    _, calls = run(frames)
    got = [(x.protocol, x.method, x.target, x.status) for x in calls]
    assert got == [
        ("http", "CONNECT", "inner.podshark.test:443", 200),
        ("tls", "TLS", "inner.podshark.test", None),
    ]
    assert "upgrade" in calls[0].flags and calls[0].info["upgrade"] == "tunnel"
    assert calls[1].sni == "inner.podshark.test" and "encrypted" in calls[1].flags


def test_udp_datagrams_reach_a_udp_analyzer_one_feed_each() -> None:
    """Every UDP datagram of a real DNS capture arrives whole, in its flow, in order (tshark counts)."""
    import subprocess

    from dissect.base import ConnContext, Verdict
    from dissect.pcapio import CaptureReader

    class Rec:
        def __init__(self, ctx: ConnContext, seen: list[tuple[str, int, int]]) -> None:
            self.ctx, self.seen = ctx, seen

        def feed(self, direction: int, data: bytes, ts: int) -> None:
            self.seen.append((self.ctx.flow_id, direction, len(data)))

        def gap(self, direction: int, n: int, ts: int, snaplen: bool = False) -> None:
            raise AssertionError("no snap length in this capture")

        def note(self, direction: int, flag: str) -> None:
            pass

        def close(self, ts: int) -> None:
            pass

    class TakeAll:
        name = "rec"

        def __init__(self) -> None:
            self.seen: list[tuple[str, int, int]] = []

        def detect(self, data: bytes, direction: int, port_hint: int | None) -> Verdict:
            return Verdict.YES

        def new(self, ctx: ConnContext, handoff: object = None) -> Rec:
            assert ctx.transport == "udp"
            return Rec(ctx, self.seen)

    path = FIXTURES / "dns__ndpi_dns_fragmented.pcap"
    rec = TakeAll()
    with CaptureReader(path) as r:
        list(Engine("t", analyzers=[], udp_analyzers=[rec]).run(r))
    lengths = subprocess.run(
        ["tshark", "-r", str(path), "-Y", "udp", "-T", "fields", "-e", "udp.length"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    # tshark shows each reassembled datagram once (on its last fragment), as we deliver it
    assert sorted(n for _, _, n in rec.seen) == sorted(int(x) - 8 for x in lengths)
