"""The TLS dissector on real handshakes (OpenSSL through `ssl` memory BIOs): what it reports must be
what the test configured and what OpenSSL itself says it negotiated."""

from __future__ import annotations

import ssl
from typing import Any

import pytest

from dissect.model import Flag
from dissect.tls import TLSDissector, TLSSession
from dissect.tls.hello import CIPHER_SUITES
from tests.dissect.test_tls_handshakes import (
    CLIENT,
    SERVER,
    TLS12,
    TLS13,
    Conversation,
    client_context,
    converse,
    run_dissector,
    server_context,
)

OPENSSL_VERSION = {"TLSv1.2": "TLS 1.2", "TLSv1.3": "TLS 1.3"}


def one_call(conv: Conversation, **kw: Any) -> dict[str, Any]:
    calls = run_dissector(conv.segments, **kw)
    assert len(calls) == 1, calls
    return calls[0].to_dict()


def check_negotiated(call: dict[str, Any], conv: Conversation) -> None:
    """What OpenSSL negotiated is what the dissector read off the wire."""
    info = call["info"]
    assert info["tls_version"] == OPENSSL_VERSION[conv.version or ""]
    cid = conv.cipher_id()
    assert cid is not None
    assert info["cipher"] == CIPHER_SUITES.get(cid, f"0x{cid:04x}")


@pytest.mark.parametrize("maximum", [TLS12, TLS13], ids=["tls12", "tls13"])
def test_full_handshake(maximum: ssl.TLSVersion) -> None:
    conv = converse(
        client_context(alpn=["h2", "http/1.1"], maximum=maximum), server_context(alpn=["h2", "http/1.1"])
    )
    assert conv.failed is None and conv.alpn == "h2"
    call = one_call(conv)
    check_negotiated(call, conv)
    info = call["info"]
    assert call["protocol"] == "tls" and call["method"] == "TLS" and call["status"] is None
    assert call["tls"] is True and call["transport"] == "tcp"
    assert call["sni"] == call["target"] == "api.podshark.test"
    assert call["src"]["port"] == CLIENT.port and call["dst"]["port"] == SERVER.port
    assert call["request"] is None and call["response"] is None
    assert call["flags"] == [Flag.ENCRYPTED]
    assert call["request_ts"] == conv.ts(0)  # the ClientHello
    assert call["response_ts"] == conv.ts(1)  # the ServerHello
    assert info["alpn_offered"] == ["h2", "http/1.1"]
    if maximum == TLS13:
        assert info["versions_offered"] == ["TLS 1.3", "TLS 1.2"]
        assert info["alpn"] is None and info["alpn_encrypted"] is True  # in EncryptedExtensions
        assert info["key_share"] == "x25519"
        assert info["alerts"] == []  # 1.3 alerts travel encrypted as application data
    else:
        assert info["versions_offered"] == ["TLS 1.2"]
        assert info["alpn"] == "h2" and info["alpn_encrypted"] is False
        # close_notify after ChangeCipherSpec: an encrypted alert from each side
        assert info["alerts"] == [
            {"from": "client", "encrypted": True},
            {"from": "server", "encrypted": True},
        ]
        assert info["records"]["server"]["handshake"] >= 2  # ServerHello… and the encrypted Finished
        assert "certificate" in info["handshake"]["server"]
    assert info["resumed"] is False and info["session_resumption_offered"] is False
    assert info["bytes"]["client"] > len(b"GET / HTTP/1.1\r\nHost: api\r\n\r\n")
    assert info["bytes"]["server"] > len(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    for side, d in (("client", 0), ("server", 1)):
        assert info["tls_bytes"][side] == len(conv.stream(d))  # every byte is a record byte
    assert info["handshake"]["client"][0] == "client_hello"
    assert info["handshake"]["server"][0] == "server_hello"
    assert len(info["ja3"]) == 32


@pytest.mark.parametrize("server_alpn", [["http/1.1"], None], ids=["http11", "none"])
def test_tls12_alpn_choice_or_none(server_alpn: list[str] | None) -> None:
    conv = converse(client_context(alpn=["h2", "http/1.1"], maximum=TLS12), server_context(alpn=server_alpn))
    info = one_call(conv)["info"]
    assert info["alpn"] == conv.alpn == (server_alpn[0] if server_alpn else None)


def test_no_sni_no_alpn() -> None:
    conv = converse(client_context(), server_context(), sni=None)
    call = one_call(conv)
    assert call["sni"] is None and call["target"] is None
    assert call["info"]["alpn_offered"] == [] and call["info"]["alpn"] is None
    assert call["info"]["alpn_encrypted"] is False


@pytest.mark.parametrize("maximum", [TLS12, TLS13], ids=["tls12", "tls13"])
def test_session_resumption(maximum: ssl.TLSVersion) -> None:
    cctx, sctx = client_context(maximum=maximum), server_context()
    first = converse(cctx, sctx)
    assert first.session is not None
    second = converse(cctx, sctx, session=first.session)
    assert second.session_reused, "OpenSSL did not resume: the test setup is wrong"
    info1, info2 = one_call(first)["info"], one_call(second)["info"]
    assert info1["resumed"] is False and info1["session_resumption_offered"] is False
    assert info2["resumed"] is True and info2["session_resumption_offered"] is True
    check_negotiated(one_call(second), second)
    if maximum == TLS12:
        # abbreviated handshake: no Certificate from the server
        assert "certificate" not in info2["handshake"]["server"]


def test_resumption_offered_but_refused() -> None:
    """A session from one server presented to another that cannot decrypt the ticket: full handshake."""
    cctx = client_context(maximum=TLS12)
    first = converse(cctx, server_context())
    second = converse(cctx, server_context(), session=first.session)
    assert not second.session_reused
    info = one_call(second)["info"]
    assert info["session_resumption_offered"] is True and info["resumed"] is False


def test_hello_retry_request() -> None:
    """The server only accepts P-384, the client's first key share is x25519: HelloRetryRequest."""
    conv = converse(client_context(), server_context(groups="secp384r1"))
    assert conv.failed is None and conv.version == "TLSv1.3"
    call = one_call(conv)
    info = call["info"]
    assert info["hello_retry"] is True
    assert info["key_share"] == "secp384r1"
    assert info["handshake"]["client"] == ["client_hello", "client_hello"]
    check_negotiated(call, conv)
    assert call["response_ts"] == conv.ts(1)  # the HelloRetryRequest: the first round trip
    assert Flag.PARSE_ERROR not in call["flags"]


def test_version_refused_plaintext_alert() -> None:
    """A 1.2-only client against a 1.3-only server: a plaintext protocol_version alert, no ServerHello."""
    conv = converse(client_context(maximum=TLS12), server_context(minimum=TLS13))
    assert conv.failed is not None
    call = one_call(conv)
    assert call["info"]["alerts"] == [{"from": "server", "level": "fatal", "description": "protocol_version"}]
    assert Flag.RESPONSE_MISSING in call["flags"] and call["response_ts"] is None
    assert call["info"]["tls_version"] is None


def test_client_hello_only() -> None:
    conv = converse(client_context(alpn=["h2"]), server_context())
    call = one_call(Conversation(segments=conv.segments[:1]))
    assert call["flags"] == [Flag.ENCRYPTED, Flag.RESPONSE_MISSING]
    assert call["sni"] == "api.podshark.test" and call["info"]["alpn_offered"] == ["h2"]


def test_server_side_only() -> None:
    """The client's bytes were never captured: the server's ServerHello still tells who is who."""
    conv = converse(client_context(maximum=TLS12), server_context())
    server = [(d, b) for d, b in conv.segments if d == 1]
    calls = run_dissector([(1, b) for _, b in server])
    (call,) = calls
    assert call.src == CLIENT and call.dst == SERVER  # direction 1 sent the ServerHello: it is the server
    assert Flag.REQUEST_MISSING in call.flags
    assert call.info["tls_version"] == "TLS 1.2"


@pytest.mark.parametrize("cut", [0, 1, 100])
def test_mid_stream(cut: int) -> None:
    """The capture starts after the handshake (and possibly inside a record): mid-stream, counted."""
    conv = converse(client_context(), server_context(), request=b"x" * 5000, response=b"y" * 20000)
    segs = conv.segments[4:]  # after both Finished flights
    d0, first = segs[0]
    segs = [(d0, first[cut:]), *segs[1:]]
    call = one_call(Conversation(segments=segs), handshake_seen=False)
    assert call["flags"] == [Flag.ENCRYPTED, Flag.MID_STREAM]
    assert call["request_ts"] == conv.ts(0)  # when the connection was first seen
    assert call["sni"] is None and call["info"]["tls_version"] is None
    # the mid-stream side with the lower port is the server
    assert call["src"]["port"] == CLIENT.port
    assert call["info"]["bytes"]["server"] >= 20000


def test_gap_inside_application_data_keeps_counting() -> None:
    conv = converse(client_context(), server_context(), response=b"z" * 40000)
    calls: list = []
    from dissect.base import ConnContext

    dis = TLSDissector(ConnContext(flow_id="f", endpoints=(CLIENT, SERVER), emit=calls.append), strict=True)
    full = run_dissector(conv.segments)[0]
    for i, (d, data) in enumerate(conv.segments):
        if d == 1 and len(data) > 30000:  # lose 1000 bytes in the middle of the big response
            dis.feed(d, data[:10000], conv.ts(i))
            dis.gap(d, 1000, conv.ts(i))
            dis.feed(d, data[11000:], conv.ts(i))
        else:
            dis.feed(d, data, conv.ts(i))
    dis.close(0)
    (call,) = calls
    assert Flag.GAP in call.flags and Flag.PARSE_ERROR not in call.flags
    assert call.info["bytes"] == full.info["bytes"]  # lost bytes inside a record still count
    assert call.info["records"] == full.info["records"]


def test_gap_across_records_resynchronises() -> None:
    conv = converse(client_context(), server_context(), response=b"z" * 60000)
    server = conv.stream(1)
    big = max(range(len(conv.segments)), key=lambda i: len(conv.segments[i][1]))
    calls: list = []
    from dissect.base import ConnContext

    dis = TLSDissector(ConnContext(flow_id="f", endpoints=(CLIENT, SERVER), emit=calls.append), strict=True)
    for i, (d, data) in enumerate(conv.segments):
        if i == big:
            dis.feed(d, data[:1000], conv.ts(i))
            dis.gap(d, 20000, conv.ts(i), snaplen=True)  # more than one record: the boundary is lost
            dis.feed(d, data[21000:], conv.ts(i))
        else:
            dis.feed(d, data, conv.ts(i))
    dis.close(0)
    (call,) = calls
    assert Flag.SNAPLEN in call.flags
    assert call.info["records"]["server"]["application_data"] >= 2  # found the boundary again
    assert call.info["bytes"]["server"] < len(server)
    assert call.info["tls_version"] == "TLS 1.3"


def test_one_call_per_connection_and_close_is_idempotent() -> None:
    conv = converse(client_context(), server_context())
    calls: list = []
    from dissect.base import ConnContext

    dis = TLSDissector(ConnContext(flow_id="f", endpoints=(CLIENT, SERVER), emit=calls.append))
    for i, (d, data) in enumerate(conv.segments):
        dis.feed(d, data, conv.ts(i))
    dis.close(1)
    dis.close(2)
    dis.feed(0, b"\x17\x03\x03\x00\x01x", 3)
    assert len(calls) == 1
    assert dis.buffered_bytes() == 0


def test_nothing_tls_emits_nothing() -> None:
    assert run_dissector([(0, b"\x16\x03")]) == []


def test_session_accepts_plaintext_later() -> None:
    """The hook for the eBPF tracer / key-log decryption: plaintext goes to an inner dissector."""
    got: list[tuple[int, bytes]] = []

    class Inner:
        def feed(self, direction: int, data: bytes, ts: int) -> None:
            got.append((direction, data))

        def gap(self, direction: int, n: int, ts: int, snaplen: bool = False) -> None: ...
        def note(self, direction: int, flag: str) -> None: ...
        def close(self, ts: int) -> None: ...

    s = TLSSession()
    s.plaintext(0, b"before", 1)
    s.inner = Inner()
    s.plaintext(1, b"after", 2)
    assert got == [(1, b"after")] and s.plaintext_bytes == [6, 5]


def test_client_hello_in_many_records() -> None:
    """A ClientHello split over several handshake records (allowed, rare): reassembled."""
    conv = converse(client_context(alpn=["h2"]), server_context())
    ch = conv.segments[0][1]
    body = ch[5:]
    records = b"".join(
        b"\x16\x03\x01" + len(body[i : i + 100]).to_bytes(2, "big") + body[i : i + 100]
        for i in range(0, len(body), 100)
    )
    call = one_call(Conversation(segments=[(0, records), *conv.segments[1:]]))
    assert call["sni"] == "api.podshark.test" and call["info"]["alpn_offered"] == ["h2"]
    assert call["info"]["records"]["client"]["handshake"] == (len(body) + 99) // 100
    assert Flag.PARSE_ERROR not in call["flags"]


def test_syn_missed_but_hello_seen() -> None:
    """The capture missed the SYN but not the conversation: the hellos are parsed, not mid-stream."""
    conv = converse(client_context(alpn=["h2"]), server_context(alpn=["h2"]))
    call = one_call(conv, handshake_seen=False)
    assert call["flags"] == [Flag.ENCRYPTED]
    assert call["sni"] == "api.podshark.test" and call["info"]["tls_version"] == "TLS 1.3"
    check_negotiated(call, conv)
