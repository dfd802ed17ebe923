"""Real TLS conversations for the TLS tests: a real OpenSSL (Python's `ssl`) over memory BIOs.

A client and a server `ssl.SSLObject` talk through `ssl.MemoryBIO`s; every flight each side writes
is recorded as ``(direction, bytes)`` (0 = client), so tests feed the dissector exactly the bytes
OpenSSL put on the wire, and know by construction what was configured (SNI, ALPN, versions,
resumption) and what OpenSSL negotiated (`ssl.SSLObject.version`, ``cipher``,
``selected_alpn_protocol``, ``session_reused``). The server's certificate is self-signed, made here
with `cryptography`.

The tests in this module check the helper itself; the dissector tests import it.
"""

from __future__ import annotations

import atexit
import datetime
import functools
import ipaddress
import shutil
import ssl
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from dissect.base import ConnContext
from dissect.model import Call, Endpoint

CLIENT = Endpoint(ip="10.0.0.1", port=51000)
SERVER = Endpoint(ip="10.0.0.2", port=443)
TLS12, TLS13 = ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3


@functools.lru_cache(maxsize=1)
def cert_files() -> tuple[str, str]:
    """A self-signed EC certificate (SAN: a few names and 127.0.0.1) and its key, as PEM files."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "podshark.test")])
    now = datetime.datetime.now(datetime.UTC)
    san = x509.SubjectAlternativeName(
        [
            x509.DNSName("podshark.test"),
            x509.DNSName("api.podshark.test"),
            x509.DNSName("*.podshark.test"),
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        ]
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(san, critical=False)
        .sign(key, hashes.SHA256())
    )
    d = Path(tempfile.mkdtemp(prefix="psk-tls-"))
    atexit.register(shutil.rmtree, d, True)
    certfile, keyfile = d / "cert.pem", d / "key.pem"
    certfile.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    keyfile.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return str(certfile), str(keyfile)


def server_context(
    *,
    alpn: list[str] | None = None,
    minimum: ssl.TLSVersion = TLS12,
    maximum: ssl.TLSVersion = TLS13,
    groups: str | None = None,
) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(*cert_files())
    ctx.minimum_version, ctx.maximum_version = minimum, maximum
    if alpn:
        ctx.set_alpn_protocols(alpn)
    if groups:
        ctx.set_ecdh_curve(groups)
    return ctx


def client_context(
    *, alpn: list[str] | None = None, minimum: ssl.TLSVersion = TLS12, maximum: ssl.TLSVersion = TLS13
) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.minimum_version, ctx.maximum_version = minimum, maximum
    if alpn:
        ctx.set_alpn_protocols(alpn)
    return ctx


@dataclass
class Conversation:
    """What one TLS connection put on the wire, and what OpenSSL says it negotiated."""

    segments: list[tuple[int, bytes]] = field(default_factory=list)  # (direction, bytes), 0 = client
    version: str | None = None  # "TLSv1.3"
    cipher: str | None = None  # OpenSSL's name
    alpn: str | None = None
    session_reused: bool = False
    session: ssl.SSLSession | None = None
    failed: str | None = None  # the handshake error, when it failed

    def ts(self, i: int) -> int:
        """The timestamp tests give segment ``i`` (1 ms apart)."""
        return 1_000_000_000 + i * 1_000_000

    def stream(self, d: int) -> bytes:
        return b"".join(b for dd, b in self.segments if dd == d)

    def cipher_id(self) -> int | None:
        """The IANA code of the negotiated suite, from OpenSSL's own table."""
        for c in ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).get_ciphers():
            if c["name"] == self.cipher:
                return int(c["id"]) & 0xFFFF
        return None


def converse(
    client_ctx: ssl.SSLContext,
    server_ctx: ssl.SSLContext,
    *,
    sni: str | None = "api.podshark.test",
    session: ssl.SSLSession | None = None,
    request: bytes = b"GET / HTTP/1.1\r\nHost: api\r\n\r\n",
    response: bytes = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
    close: bool = True,
) -> Conversation:
    """Handshake, one request and response, then close_notify both ways (unless ``close`` is False)."""
    c_in, c_out, s_in, s_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    client = client_ctx.wrap_bio(c_in, c_out, server_hostname=sni, session=session)
    server = server_ctx.wrap_bio(s_in, s_out, server_side=True)
    conv = Conversation()

    def move() -> bool:
        moved = False
        data = c_out.read()
        if data:
            conv.segments.append((0, data))
            s_in.write(data)
            moved = True
        data = s_out.read()
        if data:
            conv.segments.append((1, data))
            c_in.write(data)
            moved = True
        return moved

    def step(obj: ssl.SSLObject) -> bool:
        try:
            obj.do_handshake()
            return True
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
            return False

    done = [False, False]
    try:
        for _ in range(20):
            done[0] = done[0] or step(client)
            move()
            done[1] = done[1] or step(server)
            move()
            if all(done):
                break
    except ssl.SSLError as e:
        conv.failed = str(e)
        move()
        return conv
    conv.version, conv.cipher = client.version(), (client.cipher() or (None,))[0]
    conv.alpn = client.selected_alpn_protocol()
    client.write(request)
    move()
    server.read(65536)
    server.write(response)
    move()
    client.read(65536)  # also takes TLS 1.3 NewSessionTickets, so the session can be resumed
    move()
    conv.session_reused = client.session_reused
    conv.session = client.session
    if close:
        for obj in (client, server):
            try:
                obj.unwrap()
            except (ssl.SSLWantReadError, ssl.SSLError):
                pass
            move()
    return conv


def run_dissector(
    segments: list[tuple[int, bytes]],
    *,
    handshake_seen: bool = True,
    strict: bool = True,
    ts: list[int] | None = None,
) -> list[Call]:
    """Feed segments (direction, bytes) into a fresh `TLSDissector`, close it, return its calls."""
    from dissect.tls import TLSDissector

    calls: list[Call] = []
    ctx = ConnContext(
        flow_id="t/f1", endpoints=(CLIENT, SERVER), emit=calls.append, handshake_seen=handshake_seen
    )
    dis = TLSDissector(ctx, strict=strict)
    for i, (d, data) in enumerate(segments):
        dis.feed(d, data, ts[i] if ts is not None else 1_000_000_000 + i * 1_000_000)
    dis.close(2_000_000_000)
    return calls


# --------------------------------------------------------------------------- the helper's own checks


def test_tls13_conversation_completes() -> None:
    conv = converse(client_context(alpn=["h2"]), server_context(alpn=["h2"]))
    assert conv.failed is None
    assert conv.version == "TLSv1.3" and conv.alpn == "h2"
    assert conv.segments[0][0] == 0 and conv.segments[0][1][:1] == b"\x16"
    assert conv.cipher_id() == 0x1302  # OpenSSL 3's preferred TLS 1.3 suite


def test_tls12_conversation_completes() -> None:
    conv = converse(client_context(maximum=TLS12), server_context())
    assert conv.failed is None and conv.version == "TLSv1.2"
    assert conv.cipher_id() is not None
