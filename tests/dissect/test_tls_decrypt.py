"""Key-log decryption in the TLS dissector, sans-IO, on real sessions (OpenSSL through memory BIOs).

Each test makes a real TLS session in this process with Python's `ssl` (OpenSSL 3), which writes the
NSS key log itself (`SSLContext.keylog_filename`), records the bytes each side sent, and feeds them
to a `TLSDissector` with that key log. What the calls must contain is what the test made the client
and server say; nothing is taken from podshark's own output. Losses are made by cutting the recorded
bytes at known record boundaries. The real-traffic tests (curl, nginx, tshark as the oracle) are in
tests/tlskeys/.
"""

from __future__ import annotations

import base64
import ssl
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dissect.base import ConnContext
from dissect.detect import default_analyzers
from dissect.model import Call, Flag
from dissect.tls import TLSDissector
from dissect.tls.decrypt import prepare
from dissect.tls.keylog import KeyLog
from tests.dissect.test_tls_handshakes import CLIENT, SERVER, TLS12, TLS13, client_context, server_context

SNI = "api.podshark.test"


def request(i: int, body: bytes = b"") -> bytes:
    head = f"POST /item/{i} HTTP/1.1\r\nHost: api\r\nContent-Length: {len(body)}\r\n\r\n".encode()
    return head + body


def response(i: int, size: int) -> bytes:
    body = (f"item {i};".encode() * (size // 7 + 1))[:size]
    return f"HTTP/1.1 200 OK\r\nContent-Length: {size}\r\n\r\n".encode() + body


@dataclass
class Session:
    """The bytes of one TLS session as each side sent them, and the key log OpenSSL wrote."""

    segments: list[tuple[int, bytes]] = field(default_factory=list)  # (direction, bytes)
    keylog: str = ""
    version: str | None = None
    cipher: str | None = None
    etm: bool | None = None

    def stream(self, d: int) -> bytes:
        return b"".join(data for dd, data in self.segments if dd == d)


def make_session(
    tmp_path: Path,
    exchanges: list[tuple[bytes, bytes]],
    *,
    maximum: ssl.TLSVersion = TLS13,
    ciphers: str | None = None,
    no_etm: bool = False,
    alpn: list[str] | None = None,
) -> Session:
    """Handshake, the exchanges (request, response) in order, then close_notify both ways."""
    keyfile = tmp_path / f"keys-{len(list(tmp_path.iterdir()))}.txt"
    cctx = client_context(maximum=maximum, alpn=alpn)
    sctx = server_context(alpn=alpn)
    cctx.keylog_filename = str(keyfile)
    if ciphers:
        cctx.set_ciphers(ciphers)
        sctx.set_ciphers(ciphers)  # Python's server default leaves out the SHA-1 suites
    if no_etm:
        cctx.options |= 1 << 19  # SSL_OP_NO_ENCRYPT_THEN_MAC (OpenSSL 3)
    c_in, c_out, s_in, s_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    client = cctx.wrap_bio(c_in, c_out, server_hostname=SNI)
    server = sctx.wrap_bio(s_in, s_out, server_side=True)
    s = Session()

    def move() -> None:
        for d, out, into in ((0, c_out, s_in), (1, s_out, c_in)):
            data = out.read()
            if data:
                s.segments.append((d, data))
                into.write(data)

    def step(obj: ssl.SSLObject) -> bool:
        try:
            obj.do_handshake()
            return True
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
            return False

    done = [False, False]
    for _ in range(20):
        done[0] = done[0] or step(client)
        move()
        done[1] = done[1] or step(server)
        move()
        if all(done):
            break
    assert all(done), "the handshake did not complete"
    s.version, s.cipher = client.version(), (client.cipher() or (None,))[0]
    for req, resp in exchanges:
        client.write(req)
        move()
        got = b""
        while len(got) < len(req):
            got += server.read(1 << 20)
        server.write(resp)
        move()
        got = b""
        while len(got) < len(resp):
            got += client.read(1 << 20)
        move()
    for obj in (client, server):
        try:
            obj.unwrap()
        except (ssl.SSLWantReadError, ssl.SSLError):
            pass
        move()
    s.keylog = keyfile.read_text()
    s.etm = _server_hello_has_etm(s.stream(1))
    return s


def _records(stream: bytes) -> list[tuple[int, int, int]]:
    """(offset, content type, body length) of each record in one direction's bytes."""
    out, p = [], 0
    while p + 5 <= len(stream):
        ctype, length = stream[p], struct.unpack_from("!H", stream, p + 3)[0]
        out.append((p, ctype, length))
        p += 5 + length
    return out


def _server_hello_has_etm(stream: bytes) -> bool:
    """Does the ServerHello carry encrypt_then_mac (extension 22)? Read off the wire independently."""
    body = stream[5 + 4 : 5 + struct.unpack_from("!H", stream, 3)[0]]
    p = 2 + 32
    p += 1 + body[p]  # session id
    p += 3  # suite, compression
    end = p + 2 + struct.unpack_from("!H", body, p)[0]
    p += 2
    types = []
    while p + 4 <= end:
        etype, elen = struct.unpack_from("!HH", body, p)
        types.append(etype)
        p += 4 + elen
    return 22 in types


def dissect(
    segments: list[tuple[int, bytes]],
    keylog: KeyLog | None,
    *,
    gaps: dict[int, tuple[int, int]] | None = None,
    strict: bool = True,
) -> list[Call]:
    """Feed the segments to a TLS dissector with the key log. ``gaps``: segment index -> (cut start,
    cut length) within that segment, fed as a gap (what a lost packet looks like after reassembly)."""
    calls: list[Call] = []
    ctx = ConnContext(flow_id="t/f1", endpoints=(CLIENT, SERVER), emit=calls.append)
    inner = [a for a in default_analyzers() if a.name != "tls"]
    dis = TLSDissector(ctx, strict=strict, keylog=keylog, inner_analyzers=inner)
    for i, (d, data) in enumerate(segments):
        ts = 1_000_000_000 + i * 1_000_000
        if gaps and i in gaps:
            start, n = gaps[i]
            dis.feed(d, data[:start], ts)
            dis.gap(d, n, ts)
            dis.feed(d, data[start + n :], ts)
        else:
            dis.feed(d, data, ts)
    dis.close(2_000_000_000)
    return calls


def log_of(text: str) -> KeyLog:
    log = KeyLog()
    log.add_text(text)
    return log


def body(call: dict[str, Any], side: str) -> bytes:
    msg = call[side]
    return base64.b64decode(msg["body"]) if msg and msg.get("body") else b""


EXCHANGES = [
    (request(1, b'{"a": 1}'), response(1, 300)),
    (request(2), response(2, 40_000)),  # three records and more
    (request(3, b"x" * 20_000), response(3, 10)),  # the client's request spans records
]

VARIANTS = {
    "tls13-aes128gcm": {"maximum": TLS13},
    "tls12-aes128gcm": {"maximum": TLS12, "ciphers": "ECDHE-ECDSA-AES128-GCM-SHA256"},
    "tls12-aes256gcm": {"maximum": TLS12, "ciphers": "ECDHE-ECDSA-AES256-GCM-SHA384"},
    "tls12-chacha20": {"maximum": TLS12, "ciphers": "ECDHE-ECDSA-CHACHA20-POLY1305"},
    "tls12-cbc-sha1-etm": {"maximum": TLS12, "ciphers": "ECDHE-ECDSA-AES128-SHA"},
    "tls12-cbc-sha384-etm": {"maximum": TLS12, "ciphers": "ECDHE-ECDSA-AES256-SHA384"},
    "tls12-cbc-sha256-no-etm": {"maximum": TLS12, "ciphers": "ECDHE-ECDSA-AES128-SHA256", "no_etm": True},
}


def check_exchanges(calls: list[Call], exchanges: list[tuple[bytes, bytes]]) -> None:
    """One decrypted HTTP call per exchange, in order, with the method, target, status and bodies sent."""
    assert [c.protocol for c in calls] == ["http"] * len(exchanges), [c.to_dict() for c in calls]
    for call, (req, resp) in zip(calls, exchanges, strict=True):
        d = call.to_dict()
        assert d["tls"] is True and d["sni"] == SNI and d["info"]["tls_source"] == "keylog"
        assert d["src"]["port"] == CLIENT.port and d["dst"]["port"] == SERVER.port
        assert d["method"] == "POST" and d["target"] == req.split(b" ")[1].decode()
        assert d["status"] == 200
        assert body(d, "request") == req.split(b"\r\n\r\n", 1)[1]
        assert body(d, "response") == resp.split(b"\r\n\r\n", 1)[1]
        assert Flag.ENCRYPTED not in d["flags"] and not d["flags"], d["flags"]


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_decrypts_each_cipher_family(tmp_path: Path, variant: str) -> None:
    kw = VARIANTS[variant]
    s = make_session(tmp_path, EXCHANGES, **kw)
    assert s.version == ("TLSv1.3" if kw["maximum"] == TLS13 else "TLSv1.2")
    if "ciphers" in kw:
        assert s.cipher == kw["ciphers"]
    if "cbc" in variant:
        assert s.etm is (not kw.get("no_etm", False)), "OpenSSL did not negotiate what the test asked"
    check_exchanges(dissect(s.segments, log_of(s.keylog)), EXCHANGES)


def test_alpn_http11_is_dissected_as_http(tmp_path: Path) -> None:
    s = make_session(tmp_path, EXCHANGES[:1], alpn=["http/1.1"])
    check_exchanges(dissect(s.segments, log_of(s.keylog)), EXCHANGES[:1])


def test_session_without_keys_is_one_opaque_call(tmp_path: Path) -> None:
    s = make_session(tmp_path, EXCHANGES[:1])
    other = make_session(tmp_path, EXCHANGES[:1])
    calls = dissect(s.segments, log_of(other.keylog))
    assert len(calls) == 1
    d = calls[0].to_dict()
    assert d["protocol"] == "tls" and d["method"] == "TLS" and d["target"] == SNI and d["status"] is None
    assert Flag.ENCRYPTED in d["flags"]
    assert d["info"]["keylog"] == "the key log has no secrets for this session"
    assert d["info"]["tls_version"] == "TLS 1.3"
    assert "tls_source" not in d["info"]


def test_no_keylog_at_all_says_nothing_about_keys(tmp_path: Path) -> None:
    s = make_session(tmp_path, EXCHANGES[:1])
    (call,) = dissect(s.segments, None)
    assert Flag.ENCRYPTED in call.flags and "keylog" not in call.info


@pytest.mark.parametrize("maximum", [TLS12, TLS13], ids=["tls12", "tls13"])
def test_wrong_secrets_leave_the_session_opaque(tmp_path: Path, maximum: ssl.TLSVersion) -> None:
    s = make_session(tmp_path, EXCHANGES[:2], maximum=maximum)
    lines = []
    for line in s.keylog.splitlines():
        if line and not line.startswith("#"):
            label, random, secret = line.split()
            flipped = f"{int(secret[:2], 16) ^ 1:02x}" + secret[2:]
            lines.append(f"{label} {random} {flipped}")
    (call,) = dissect(s.segments, log_of("\n".join(lines)))
    assert call.protocol == "tls" and Flag.ENCRYPTED in call.flags
    assert call.info["keylog"] == "the key log's secrets do not decrypt this session"


def test_tls13_without_handshake_secrets_still_decrypts_the_application_data(tmp_path: Path) -> None:
    s = make_session(tmp_path, EXCHANGES)
    only_traffic = "\n".join(line for line in s.keylog.splitlines() if "_TRAFFIC_SECRET_0" in line)
    assert only_traffic.count("\n") == 1  # client and server
    check_exchanges(dissect(s.segments, log_of(only_traffic)), EXCHANGES)


def test_handshake_only_session_is_a_decrypted_tls_call(tmp_path: Path) -> None:
    s = make_session(tmp_path, [])
    (call,) = dissect(s.segments, log_of(s.keylog))
    d = call.to_dict()
    assert d["protocol"] == "tls" and Flag.ENCRYPTED not in d["flags"]
    assert d["info"]["tls_source"] == "keylog"
    # the close_notify alerts travelled encrypted (TLS 1.3 hides them in application data): now readable
    assert {"from": "client", "level": "warning", "description": "close_notify"} in d["info"]["alerts"]
    assert {"from": "server", "level": "warning", "description": "close_notify"} in d["info"]["alerts"]
    assert "encrypted_extensions" in d["info"]["handshake"]["server"]
    assert "finished" in d["info"]["handshake"]["client"]


def _segment_of(s: Session, d: int, offset: int) -> tuple[int, int]:
    """(segment index, offset inside it) of byte ``offset`` of direction ``d``'s stream."""
    pos = 0
    for i, (dd, data) in enumerate(s.segments):
        if dd != d:
            continue
        if offset < pos + len(data):
            return i, offset - pos
        pos += len(data)
    raise AssertionError("offset past the stream")


@pytest.mark.parametrize("variant", ["tls13-aes128gcm", "tls12-cbc-sha1-etm", "tls12-chacha20"])
def test_a_gap_inside_a_record_costs_that_record_only(tmp_path: Path, variant: str) -> None:
    """100 bytes lost in the middle of the big response's second record: that call is flagged gap,
    the calls after it decrypt (the record's sequence number was accounted for)."""
    s = make_session(tmp_path, EXCHANGES, **VARIANTS[variant])
    server = s.stream(1)
    big = [r for r in _records(server) if r[1] == 23 and r[2] > 10_000]
    offset, _ctype, _length = big[1]
    i, at = _segment_of(s, 1, offset + 500)
    calls = dissect(s.segments, log_of(s.keylog), gaps={i: (at, 100)})
    assert [c.target for c in calls] == ["/item/1", "/item/2", "/item/3"]
    assert Flag.GAP in calls[1].flags
    check_exchanges([calls[0], calls[2]], [EXCHANGES[0], EXCHANGES[2]])


@pytest.mark.parametrize("variant", ["tls13-aes128gcm", "tls12-aes256gcm", "tls12-cbc-sha256-no-etm"])
def test_lost_record_boundaries_are_found_again(tmp_path: Path, variant: str) -> None:
    """Bytes lost across a record boundary (the record layer loses sync and searches for it again,
    and the decrypter for the sequence number): the next exchange still decrypts."""
    s = make_session(tmp_path, EXCHANGES, **VARIANTS[variant])
    big = [r for r in _records(s.stream(1)) if r[1] == 23 and r[2] > 10_000]
    (off_a, _, len_a), _second = big[0], big[1]
    cut_from = off_a + 5 + len_a - 300  # the end of one record and the header of the next
    i, at = _segment_of(s, 1, cut_from)
    seg_len = len(s.segments[i][1])
    calls = dissect(s.segments, log_of(s.keylog), gaps={i: (at, min(600, seg_len - at))})
    targets = [c.target for c in calls if c.protocol == "http"]
    assert "/item/3" in targets
    last = next(c for c in calls if c.target == "/item/3")
    check_exchanges([last], [EXCHANGES[2]])


def test_prepare_explains_what_cannot_be_decrypted() -> None:
    assert prepare({}, None, None, b"", b"", False) == "the ServerHello was not seen"
    assert prepare({}, 0x000A, 0x0303, b"r" * 32, b"s" * 32, False) == (
        "cipher suite TLS_RSA_WITH_3DES_EDE_CBC_SHA is not supported for decryption"
    )
    assert prepare({}, 0x1301, 0x0304, b"r" * 32, b"s" * 32, False) == (
        "the key log has no CLIENT_HANDSHAKE_TRAFFIC_SECRET or CLIENT_TRAFFIC_SECRET_0 for this session"
    )
    assert prepare({}, 0xC02F, 0x0303, b"r" * 32, b"s" * 32, False) == (
        "the key log has no CLIENT_RANDOM line for this session"
    )


@pytest.fixture(scope="module")
def fuzz_session(tmp_path_factory: pytest.TempPathFactory) -> Session:
    return make_session(
        tmp_path_factory.mktemp("fuzz"),
        EXCHANGES[:2],
        maximum=TLS12,
        ciphers=VARIANTS["tls12-cbc-sha1-etm"]["ciphers"],
    )


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_hostile_bytes_after_the_handshake_never_raise(fuzz_session: Session, data: st.DataObject) -> None:
    """Flipped, cut and inserted bytes in the protected records: flags and gaps, never an exception
    (strict mode re-raises the dissector's internal errors, so a bug would fail here)."""
    segs = list(fuzz_session.segments)
    first_protected = next(i for i, (d, b) in enumerate(segs) if d == 0 and b[0] in (20, 23) and i > 1)
    i = data.draw(st.integers(first_protected, len(segs) - 1))
    d, buf = segs[i]
    mutable = bytearray(buf)
    for _ in range(data.draw(st.integers(1, 8))):
        op = data.draw(st.sampled_from(["flip", "cut", "insert"]))
        at = data.draw(st.integers(0, max(len(mutable) - 1, 0)))
        if op == "flip" and mutable:
            mutable[at] ^= data.draw(st.integers(1, 255))
        elif op == "cut":
            del mutable[at : at + data.draw(st.integers(1, 64))]
        else:
            mutable[at:at] = data.draw(st.binary(min_size=1, max_size=64))
    segs[i] = (d, bytes(mutable))
    calls = dissect(segs, log_of(fuzz_session.keylog))
    assert calls  # the connection is always reported: decrypted calls or its tls call
