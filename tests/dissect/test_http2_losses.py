"""HTTP/2 when bytes are missing: mid-stream captures, gaps inside and between frames, resync;
detection; and the h2c Upgrade handed over from HTTP/1 through the engine."""

from __future__ import annotations

import os
import random

import hpack
from hyperframe.frame import DataFrame, HeadersFrame

from dissect.base import Verdict
from dissect.engine import Engine
from dissect.http2.detect import detect
from dissect.http2.frames import PREFACE
from dissect.model import Call, Flag
from tests.dissect.test_http2_dissector import CLIENT, H2Conv, frame_bytes, make, req_headers, run, summary
from tests.frames import Conversation

S = 1_000_000_000


def conversation(n: int = 6) -> H2Conv:
    conv = H2Conv()
    for i in range(n):
        sid = 1 + 2 * i
        conv.request(sid, f"/item/{i}", extra=[("x-trace", "t" * 20), ("x-n", str(i))])
        conv.respond(sid, 200, f"body-{i}".encode() * 10, headers=[("content-type", "text/plain")])
    return conv


def chunks_after(conv: H2Conv, sid: int) -> list[tuple[int, bytes]]:
    """The wire from the request of stream ``sid`` on (h2 writes whole frames, so chunks are frames)."""
    return conv.chunks[conv.marks[sid] :]


# ---------------------------------------------------------------------------------------------- mid-stream


def test_mid_stream_capture_resyncs_and_flags_desync() -> None:
    conv = conversation()
    calls = run(chunks_after(conv, 7), handshake=False)
    assert [c.status for c in calls] == [200, 200, 200]
    assert [c.method for c in calls] == ["GET"] * 3
    for c in calls:
        assert c.request is not None and c.response is not None
        assert c.response.body.startswith(b"body-")
        assert Flag.REQUEST_MISSING not in c.flags
    assert calls[0].src is CLIENT


def test_mid_stream_from_the_middle_of_a_frame() -> None:
    conv = conversation()
    wire = b"".join(b for d, b in chunks_after(conv, 5) if d == 0)
    server = [(d, b) for d, b in chunks_after(conv, 5) if d == 1]
    d, calls, _ = make(handshake=False)
    d.feed(0, wire[5:], 1)  # starts inside a frame header
    for i, (direction, b) in enumerate(server):
        d.feed(direction, b, 2 + i)
    d.close(100)
    assert d.skipped > 0
    statuses = sorted(c.status for c in calls if c.status is not None)
    assert statuses == [200, 200, 200, 200]
    assert all(c.request is not None or Flag.REQUEST_MISSING in c.flags for c in calls)


def test_data_without_headers_mid_stream_is_still_a_call() -> None:
    conv = H2Conv()
    conv.request(1, "/up", "POST", b"x" * 50)
    conv.respond(1, 200, b"done")
    only_data = [(d, b) for d, b in conv.chunks if d == 1][-1:]  # server's HEADERS+DATA
    calls = run(only_data, handshake=False)
    (c,) = calls
    assert c.status == 200 and c.method is None and c.target is None
    assert Flag.REQUEST_MISSING in c.flags and Flag.MID_STREAM in c.flags
    assert c.response is not None and c.response.body == b"done"


def test_mid_stream_unknown_indexes_are_placeholders() -> None:
    enc = hpack.Encoder()
    enc.encode(req_headers("/first", extra=[("x-api-key", "secret")]))
    block = enc.encode(req_headers("/second", extra=[("x-api-key", "secret")]))
    client = frame_bytes(
        HeadersFrame(3, block, flags=["END_HEADERS", "END_STREAM"]), DataFrame(3, b"", flags=["END_STREAM"])
    )
    server = frame_bytes(
        HeadersFrame(3, hpack.Encoder().encode([(":status", "204")]), flags=["END_HEADERS", "END_STREAM"])
    )
    (c,) = run([(0, client), (1, server)], handshake=False)
    assert summary(c)[0] == "GET" and c.status == 204
    assert Flag.HPACK_DESYNC in c.flags
    assert c.request is not None and any(n.startswith("<hpack-") for n, _ in c.request.headers)


# ---------------------------------------------------------------------------------------------- gaps


def test_gap_inside_data_truncates_and_stays_aligned() -> None:
    conv = H2Conv()
    conv.request(1, "/a")
    conv.respond(1, 200, b"A" * 1000)
    conv.request(3, "/b")
    conv.respond(3, 200, b"B" * 10)
    d, calls, _ = make()
    resp1 = next(i for i, (dd, b) in enumerate(conv.chunks) if dd == 1 and b"A" * 100 in b)
    for i, (direction, b) in enumerate(conv.chunks):
        if i == resp1:
            k = b.index(b"A" * 100)
            d.feed(1, b[: k + 100], i)
            d.gap(1, 300, i)
            d.feed(1, b[k + 400 :], i)
        else:
            d.feed(direction, b, i)
    d.close(99)
    assert [summary(c) for c in calls] == [("GET", "/a", 200), ("GET", "/b", 200)]
    a = calls[0]
    assert a.response is not None and a.response.body == b"A" * 700 and a.response.wire_size == 1000
    assert Flag.GAP in a.flags and Flag.TRUNCATED in a.flags
    assert calls[1].flags == []


def test_snaplen_gap_is_flagged_snaplen() -> None:
    conv = H2Conv()
    conv.request(1, "/a")
    conv.respond(1, 200, b"A" * 1000)
    d, calls, _ = make()
    for i, (direction, b) in enumerate(conv.chunks):
        if direction == 1 and b"A" * 100 in b:
            k = b.index(b"A" * 100)
            d.feed(1, b[:k], i)
            d.gap(1, len(b) - k, i, snaplen=True)
        else:
            d.feed(direction, b, i)
    d.close(99)
    (c,) = calls
    assert Flag.SNAPLEN in c.flags and Flag.TRUNCATED in c.flags and c.status == 200


def test_gap_inside_headers_desyncs_that_direction_only() -> None:
    conv = conversation(4)
    d, calls, _ = make()
    target = conv.marks[3]
    for i, (direction, b) in enumerate(conv.chunks):
        if i == target:
            d.feed(0, b[:12], i)  # the HEADERS frame header and 3 bytes of its block
            d.gap(0, len(b) - 12, i)
        else:
            d.feed(direction, b, i)
    d.close(99)
    by_sid = {c.info["stream_id"]: c for c in calls}
    assert summary(by_sid[1]) == ("GET", "/item/0", 200) and by_sid[1].flags == []
    lost = by_sid[3]
    assert Flag.GAP in lost.flags and lost.method is None and lost.status == 200
    for sid in (5, 7):  # later requests decode with an incomplete table
        c = by_sid[sid]
        assert c.method == "GET" and c.status == 200
        assert Flag.HPACK_DESYNC in c.flags
        assert c.response is not None  # the server's direction kept its table
        assert ("content-type", "text/plain") in c.response.headers


def test_gap_over_a_frame_boundary_resyncs() -> None:
    conv = conversation(5)
    d, calls, _ = make()
    lost = next(i for i, (dd, b) in enumerate(conv.chunks) if dd == 1 and b"body-1" in b)
    for i, (direction, b) in enumerate(conv.chunks):
        if i == lost:
            d.gap(1, len(b) + 0, i)  # a whole server write, frame headers included
        else:
            d.feed(direction, b, i)
    d.close(99)
    by_sid = {c.info["stream_id"]: c for c in calls}
    assert len(by_sid) == 5
    assert by_sid[3].status is None and Flag.GAP in by_sid[3].flags
    assert all(by_sid[s].status == 200 for s in (1, 5, 7, 9))


# ---------------------------------------------------------------------------------------------- detection


def test_detect_preface_and_prefixes() -> None:
    assert detect(PREFACE) == Verdict.YES
    assert detect(PREFACE[:5]) == Verdict.MORE
    assert detect(b"") == Verdict.MORE
    assert detect(b"\x00\x00") == Verdict.MORE
    assert detect(b"PRI * HTTP/1.1\r\n") == Verdict.NO


def test_detect_mid_stream_frames() -> None:
    conv = conversation(3)
    for d, b in chunks_after(conv, 3):
        assert detect(b, d) in (Verdict.YES, Verdict.MORE)
    server_first = next(b for d, b in conv.chunks if d == 1)
    assert detect(server_first) == Verdict.YES  # SETTINGS (+ more) from the server
    single = frame_bytes(HeadersFrame(1, hpack.Encoder().encode([(":status", "200")]), flags=["END_HEADERS"]))
    assert detect(single) == Verdict.YES


def test_detect_refuses_other_protocols() -> None:
    tls = bytes.fromhex("16030100a5010000a10303") + os.urandom(60)  # a ClientHello's first bytes
    assert detect(tls) == Verdict.NO
    kafka = b"\x00\x00\x00\x2b\x00\x03\x00\x09\x00\x00\x00\x01\x00\x0bconsumer-1\x00\x00\x00\x01\x00\x05topic"
    assert detect(kafka) == Verdict.NO
    assert detect(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n") == Verdict.NO
    assert detect(b"\x00" * 64) == Verdict.NO
    rng = random.Random(7)
    yes = sum(detect(rng.randbytes(200)) == Verdict.YES for _ in range(5000))
    assert yes == 0


# ---------------------------------------------------------------------------------------------- engine


def _engine(frames: list[tuple[int, bytes]]) -> list[Call]:
    e = Engine("test")
    return list(e.run((ts, 1, f, len(f)) for ts, f in frames))


def test_h2c_upgrade_through_the_engine_is_two_calls() -> None:
    conv = H2Conv()
    # h2's server side of an h2c upgrade: it answers stream 1 after the 101
    srv = conv.s
    up_req = (
        b"GET /upgrade-me?x=1 HTTP/1.1\r\nHost: example.com\r\nConnection: Upgrade, HTTP2-Settings\r\n"
        b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n"
    )
    import h2.config
    import h2.connection

    server = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    client.initiate_upgrade_connection()
    server.initiate_upgrade_connection(b"AAMAAABkAARAAAAAAAIAAAAA")
    c_pre = client.data_to_send()
    s_pre = server.data_to_send()
    server.receive_data(c_pre)
    server.send_headers(1, [(":status", "200"), ("content-type", "text/plain")])
    server.send_data(1, b"upgraded!", end_stream=True)
    s_resp = server.data_to_send()
    del srv
    tcp = Conversation("10.0.0.1", 40000, "10.0.0.2", 80)
    frames = [(i, f) for i, f in enumerate(tcp.handshake())]
    frames += [
        (1 * S, tcp.send(0, up_req)),
        (
            2 * S,
            tcp.send(1, b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n"),
        ),
        (3 * S, tcp.send(0, c_pre)),
        (4 * S, tcp.send(1, s_pre + s_resp)),
        (5 * S, tcp.fin(0)),
        (6 * S, tcp.fin(1)),
    ]
    calls = _engine(frames)
    assert [(c.protocol, c.method, c.target, c.status) for c in calls] == [
        ("http", "GET", "/upgrade-me?x=1", 101),
        ("http2", "GET", "/upgrade-me?x=1", 200),
    ]
    h2call = calls[1]
    assert h2call.request is not None and ("Upgrade", "h2c") in h2call.request.headers
    assert h2call.response is not None and h2call.response.body == b"upgraded!"
    assert h2call.flags == [] and h2call.request_ts == 1 * S and h2call.response_ts == 4 * S
    assert h2call.src.port == 40000


def test_prior_knowledge_through_the_engine() -> None:
    conv = conversation(2)
    tcp = Conversation("10.0.0.1", 40000, "10.0.0.2", 8080)
    frames = [(i, f) for i, f in enumerate(tcp.handshake())]
    frames += [((10 + i) * S, tcp.send(d, b)) for i, (d, b) in enumerate(conv.chunks)]
    calls = _engine(frames)
    assert [(c.protocol, c.method, c.target, c.status) for c in calls] == [
        ("http2", "GET", "/item/0", 200),
        ("http2", "GET", "/item/1", 200),
    ]
    assert all(c.latency_ns is not None and c.latency_ns > 0 for c in calls)
