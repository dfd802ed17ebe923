"""TLS detection by content, alone and through the engine with the default analyzers: HTTP on 443 is
HTTP, TLS on 80 is TLS, and neither steals the other's connections."""

from __future__ import annotations

import os

from dissect.base import Verdict
from dissect.detect import default_analyzers
from dissect.engine import Engine
from dissect.model import Call, Flag
from dissect.tls import detect
from tests.dissect.test_tls_handshakes import Conversation, client_context, converse, server_context
from tests.frames import Conversation as TCPConversation

ETHERNET = 1


def tls_conv(**kw: object) -> Conversation:
    return converse(client_context(alpn=["h2", "http/1.1"]), server_context(alpn=["http/1.1"]), **kw)  # type: ignore[arg-type]


def test_client_hello_is_yes_and_prefixes_are_more() -> None:
    ch = tls_conv().segments[0][1]
    assert detect(ch) == Verdict.YES
    assert detect(ch[:6]) == Verdict.YES
    for n in range(6):
        assert detect(ch[:n]) == Verdict.MORE, n


def test_server_hello_is_yes() -> None:
    sh = tls_conv().segments[1][1]
    assert detect(sh, 1) == Verdict.YES


def test_not_tls() -> None:
    assert detect(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n") == Verdict.NO
    assert detect(b"HTTP/1.1 200 OK\r\n") == Verdict.NO
    assert detect(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00") == Verdict.NO
    assert detect(b"\x16\x02\x01\x00\x10\x01") == Verdict.NO  # major version 2
    assert detect(b"\x16\x03\x05") == Verdict.NO  # minor version 5
    assert detect(b"\x16\x03\x01\x50\x00\x01") == Verdict.NO  # longer than any record
    assert detect(b"\x16\x03\x01\x00\x40\x0b\x00\x00\x3c") == Verdict.NO  # a Certificate first
    assert detect(b"\x16\x03\x01\x00\x40\x01\x00\x00\x02") == Verdict.NO  # a hello too short
    # SSLv2-compatible ClientHello (out of scope)
    assert detect(bytes.fromhex("8046010301002d0000001000000500000400000a")) == Verdict.NO
    assert detect(b"\x00" * 64) == Verdict.NO
    for _ in range(200):
        assert detect(os.urandom(3000)) != Verdict.YES


def test_mid_stream_application_data() -> None:
    conv = converse(client_context(), server_context(), response=b"y" * 40000)
    server = conv.stream(1)
    tail = b"".join(b for d, b in conv.segments[5:] if d == 1)  # application data only
    assert tail[:1] == b"\x17"
    assert detect(tail[:5]) == Verdict.MORE
    assert detect(tail[:100]) == Verdict.MORE  # the first record is not over yet
    assert detect(tail) == Verdict.YES
    assert detect(tail[7:]) == Verdict.YES  # starting inside a record: three chained headers
    assert len(server) > 40000


def engine_calls(frames: list[bytes]) -> list[Call]:
    e = Engine("test", analyzers=default_analyzers())
    for i, f in enumerate(frames):
        e.packet(1_000_000_000 + i * 1_000_000, ETHERNET, f)
    e.finish()
    return list(e.out)


def tcp_frames(segments: list[tuple[int, bytes]], sport: int) -> list[bytes]:
    tcp = TCPConversation("10.1.0.1", 40000, "10.1.0.2", sport)
    frames = tcp.handshake()
    for d, data in segments:
        for i in range(0, len(data), 1400):
            frames.append(tcp.send(d, data[i : i + 1400]))
    frames += [tcp.fin(0), tcp.fin(1)]
    return frames


def test_tls_on_port_80_is_tls() -> None:
    conv = tls_conv(request=b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    calls = engine_calls(tcp_frames(conv.segments, 80))
    assert [c.protocol for c in calls] == ["tls"]
    (call,) = calls
    assert call.sni == "api.podshark.test" and call.dst.port == 80 and call.src.port == 40000
    assert call.flags == [Flag.ENCRYPTED]
    assert call.latency_ns == 1_000_000  # the ServerHello is the frame after the ClientHello
    assert call.info["tls_version"] == "TLS 1.3" and call.flow_id is not None


def test_http_on_port_443_is_http() -> None:
    req = b"GET /x HTTP/1.1\r\nHost: x\r\n\r\n"
    resp = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    calls = engine_calls(tcp_frames([(0, req), (1, resp)], 443))
    assert [(c.protocol, c.method, c.target, c.status) for c in calls] == [("http", "GET", "/x", 200)]


def test_both_side_by_side() -> None:
    """Several connections of each kind in one capture, on each other's ports."""
    frames: list[bytes] = []
    for k, port in enumerate((80, 443, 8080)):
        conv = tls_conv()
        tcp = TCPConversation("10.1.0.1", 41000 + k, "10.1.0.2", port)
        frames += tcp.handshake() + [tcp.send(d, b) for d, b in conv.segments] + [tcp.fin(0), tcp.fin(1)]
        http = TCPConversation("10.1.0.1", 42000 + k, "10.1.0.2", port)
        frames += http.handshake()
        frames += [http.send(0, b"GET /h HTTP/1.1\r\nHost: x\r\n\r\n")]
        frames += [http.send(1, b"HTTP/1.1 204 No Content\r\n\r\n"), http.fin(0), http.fin(1)]
    calls = engine_calls(frames)
    got = sorted((c.protocol, c.dst.port, c.src.port) for c in calls)
    assert got == sorted(
        [("tls", p, 41000 + k) for k, p in enumerate((80, 443, 8080))]
        + [("http", p, 42000 + k) for k, p in enumerate((80, 443, 8080))]
    )


def test_mid_stream_connection_through_the_engine() -> None:
    """No SYN, no hello: the capture starts inside the encrypted conversation."""
    conv = converse(client_context(), server_context(), request=b"q" * 3000, response=b"r" * 30000)
    tcp = TCPConversation("10.1.0.1", 43000, "10.1.0.2", 443)
    tcp.handshake()  # advance the sequence numbers; these frames are not captured
    frames = []
    for i, (d, data) in enumerate(conv.segments):
        f = tcp.send(d, data)
        if i >= 4:
            frames.append(f)
    calls = engine_calls(frames)
    assert [c.protocol for c in calls] == ["tls"]
    assert calls[0].flags == [Flag.ENCRYPTED, Flag.MID_STREAM]
    assert calls[0].dst.port == 443
