"""Decrypted TLS streams through the engine (`dissect.plaintext`), sans-IO.

The encrypted side is real: OpenSSL (through `ssl` memory BIOs) makes the handshake and the
records, which go on the wire as Ethernet/IPv4/TCP frames. The plaintext side is what the eBPF
tracer would hand over for the same connection: the bytes OpenSSL was given and returned, with the
process, its SSL object, direction and addresses. Expected values come from what the test sent.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from dissect.engine import Engine
from dissect.model import Call
from dissect.plaintext import CLIENT, READ, SERVER, UNKNOWN, WRITE
from tests.dissect.test_tls_handshakes import client_context, converse, server_context
from tests.frames import Conversation

S = 1_000_000_000
C_ADDR, S_ADDR = ("10.1.0.5", 41000), ("10.1.0.9", 443)
REQUEST = b"GET /secret/plan HTTP/1.1\r\nHost: api.podshark.test\r\n\r\n"
RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 11\r\n\r\nhello world"


@dataclass
class Traced:
    pid: int
    comm: str
    ssl: int
    local: tuple[str, int]
    remote: tuple[str, int]
    role: int = UNKNOWN


CURL = Traced(101, "curl", 0x5500_0000_1000, C_ADDR, S_ADDR, CLIENT)
NGINX = Traced(202, "nginx", 0x5600_0000_2000, S_ADDR, C_ADDR, SERVER)


def chunk(engine: Engine, who: Traced, direction: int, data: bytes, ts: int, cut: int = 0) -> None:
    assert engine.plain is not None
    engine.plain.chunk(
        ts,
        pid=who.pid,
        comm=who.comm,
        ssl=who.ssl,
        direction=direction,
        role=who.role,
        local=who.local,
        remote=who.remote,
        data=data,
        cut=cut,
    )


def wire(engine: Engine, frames: list[bytes], ts: int) -> int:
    for f in frames:
        engine.packet(ts, 1, f)
        ts += 1_000_000
    return ts


def tls_frames(sni: str = "api.podshark.test") -> list[bytes]:
    """A real TLS 1.3 connection (handshake, one encrypted request and response, FINs) as frames."""
    conv = converse(client_context(), server_context(), sni=sni, request=REQUEST, response=RESPONSE)
    tcp = Conversation(C_ADDR[0], C_ADDR[1], S_ADDR[0], S_ADDR[1])
    return [*tcp.handshake(), *(tcp.send(d, b) for d, b in conv.segments), tcp.fin(0), tcp.fin(1)]


def drain(engine: Engine, now: int | None = None) -> list[Call]:
    if now is None:
        engine.finish()
    else:
        engine.tick(now)
    calls = list(engine.out)
    engine.out.clear()
    return calls


def test_client_side_plaintext_replaces_the_opaque_call_and_keeps_the_sni() -> None:
    engine = Engine("n/r")
    engine.enable_plaintext()
    frames = tls_frames()
    ts = wire(engine, frames[:5], S)  # handshake + ClientHello/ServerHello...
    chunk(engine, CURL, WRITE, REQUEST, ts)
    chunk(engine, CURL, READ, RESPONSE, ts + 2_000_000)
    wire(engine, frames[5:], ts + 3_000_000)
    calls = drain(engine)
    assert [c.protocol for c in calls] == ["http"], [(c.protocol, c.flags) for c in calls]
    (c,) = calls
    assert (c.method, c.target, c.status) == ("GET", "/secret/plan", 200)
    assert c.tls is True and c.info["tls_source"] == "ebpf" and c.sni == "api.podshark.test"
    assert c.response is not None and c.response.body == b"hello world"
    assert (c.src.ip, c.src.port, c.src.process, c.src.pid) == (*C_ADDR, "curl", 101)
    assert (c.dst.ip, c.dst.port) == S_ADDR and c.dst.process is None
    assert engine.plain is not None and engine.plain.stats.replaced == 1


def test_without_plaintext_the_tls_call_is_still_reported() -> None:
    engine = Engine("n/r")
    engine.enable_plaintext()
    wire(engine, tls_frames(), S)
    calls = drain(engine)
    assert [(c.protocol, c.sni) for c in calls] == [("tls", "api.podshark.test")]


def test_held_tls_call_comes_out_after_the_hold_when_live() -> None:
    engine = Engine("n/r")
    engine.enable_plaintext()
    ts = wire(engine, tls_frames(), S)
    assert drain(engine, ts) == []  # held: the plaintext of this connection may still arrive
    assert [c.protocol for c in drain(engine, ts + S)] == ["tls"]


def test_both_ends_traced_give_one_call_naming_both_processes() -> None:
    engine = Engine("n/r")
    engine.enable_plaintext()
    ts = S
    chunk(engine, CURL, WRITE, REQUEST, ts)
    chunk(engine, NGINX, READ, REQUEST, ts + 1)
    chunk(engine, NGINX, WRITE, RESPONSE, ts + 2)
    chunk(engine, CURL, READ, RESPONSE, ts + 3)
    calls = drain(engine)
    assert len(calls) == 1
    (c,) = calls
    assert (c.src.process, c.src.pid, c.dst.process, c.dst.pid) == ("curl", 101, "nginx", 202)
    assert (c.src.ip, c.src.port, c.dst.ip, c.dst.port) == (*C_ADDR, *S_ADDR)
    assert engine.plain is not None and engine.plain.stats.duplicate_chunks == 2


@pytest.mark.parametrize("role", [SERVER, UNKNOWN])
def test_server_only_traced_still_orients_the_call(role: int) -> None:
    """The server's read of the request comes first: by its role, or (unknown role) because the
    side that reads before it writes is taken for the server."""
    engine = Engine("n/r")
    engine.enable_plaintext()
    server = Traced(202, "nginx", 0x77, S_ADDR, C_ADDR, role)
    chunk(engine, server, READ, REQUEST, S)
    chunk(engine, server, WRITE, RESPONSE, S + 1)
    (c,) = drain(engine)
    assert (c.src.ip, c.src.port, c.dst.ip, c.dst.port) == (*C_ADDR, *S_ADDR)
    assert (c.method, c.status, c.dst.process, c.src.process) == ("GET", 200, "nginx", None)


def test_ssl_free_ends_the_conversation() -> None:
    """A response delimited by the end of the connection comes out when the SSL object is freed."""
    engine = Engine("n/r")
    plain = engine.enable_plaintext()
    chunk(engine, CURL, WRITE, b"GET /stream HTTP/1.0\r\n\r\n", S)
    chunk(engine, CURL, READ, b"HTTP/1.0 200 OK\r\n\r\nuntil close", S + 1)
    assert drain(engine, S + 2) == []  # the body may go on
    plain.free(S + 3, CURL.pid, CURL.ssl)
    (c,) = drain(engine, S + 3 + S)
    assert c.response is not None and c.response.body == b"until close" and c.status == 200


def test_bytes_the_tracer_could_not_copy_are_a_gap() -> None:
    engine = Engine("n/r")
    engine.enable_plaintext()
    chunk(engine, CURL, WRITE, REQUEST, S)
    chunk(engine, CURL, READ, RESPONSE[:-5], S + 1, cut=5)  # the last 5 body bytes were not copied
    chunk(engine, CURL, WRITE, REQUEST, S + 2)  # the connection stays in step after the gap
    chunk(engine, CURL, READ, RESPONSE, S + 3)
    calls = drain(engine)
    assert [c.status for c in calls] == [200, 200]
    assert "truncated" in calls[0].flags and "gap" in calls[0].flags
    assert calls[1].response is not None and calls[1].response.body == b"hello world"
    assert not calls[1].flags


def test_the_sni_a_traced_client_set_names_its_calls_without_the_packets() -> None:
    """No ClientHello captured (the packets went elsewhere), but the tracer saw the client set the
    server name on its SSL object before the first byte."""
    engine = Engine("n/r")
    plain = engine.enable_plaintext()
    plain.server_name(CURL.pid, CURL.ssl, "shop.podshark.test")
    plain.server_name(999, 0x1, "someone-else.test")  # another process's SSL object: not ours
    chunk(engine, CURL, WRITE, REQUEST, S)
    chunk(engine, CURL, READ, RESPONSE, S + 1)
    (c,) = drain(engine)
    assert c.sni == "shop.podshark.test" and c.tls is True


def test_the_clients_sni_reaches_a_call_the_server_side_finished_first() -> None:
    """Both ends traced, and the server's records came first (its SSL_read returned before curl's
    SSL_write did): the call is done before the client's SSL object joins, and still gets its SNI."""
    engine = Engine("n/r")
    plain = engine.enable_plaintext()
    plain.server_name(CURL.pid, CURL.ssl, "late.podshark.test")
    chunk(engine, NGINX, READ, REQUEST, S)
    chunk(engine, NGINX, WRITE, RESPONSE, S + 1)  # the call is complete here
    chunk(engine, CURL, WRITE, REQUEST, S + 2)
    chunk(engine, CURL, READ, RESPONSE, S + 3)
    (c,) = drain(engine)
    assert c.sni == "late.podshark.test"
    assert (c.src.process, c.dst.process) == ("curl", "nginx")
