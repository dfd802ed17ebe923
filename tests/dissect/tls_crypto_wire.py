"""Real TLS sessions for the record-cryptography tests, with the wire bytes and the key log.

Two sources, both OpenSSL, neither podshark:

- `memory_session`: Python's `ssl` (OpenSSL 3.0) client and server over `ssl.MemoryBIO` pairs, with
  ``SSLContext.keylog_filename``; for TLS 1.0-1.3 with any suite Python can configure.
- `openssl_session`: ``openssl s_server`` and ``openssl s_client`` processes talking through a
  recording TCP relay on 127.0.0.1, with ``-ciphersuites`` and ``-keylogfile``; for the TLS 1.3
  suites Python cannot select and for KeyUpdate (s_client sends one with update_requested when a
  stdin line is "K").

Also the small wire parsing the tests do themselves, independent of `dissect.tls`: records cut by
their 5-byte headers, the hello randoms, the ServerHello's extension types, and key log lines.
"""

from __future__ import annotations

import contextlib
import datetime
import socket
import ssl
import subprocess
import threading
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

CLIENT, SERVER = 0, 1
SSL_OP_NO_ENCRYPT_THEN_MAC = 1 << 19  # OpenSSL 3 include/openssl/ssl.h
EXT_ENCRYPT_THEN_MAC = 22


def write_cert(directory: Path, kind: str) -> tuple[str, str]:
    """A self-signed certificate with an RSA (``kind="rsa"``) or P-256 key, as PEM files in ``directory``."""
    key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
    key = rsa.generate_private_key(65537, 2048) if kind == "rsa" else ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "crypto.podshark.test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .sign(key, hashes.SHA256())
    )
    certfile, keyfile = directory / f"{kind}-cert.pem", directory / f"{kind}-key.pem"
    certfile.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    keyfile.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return str(certfile), str(keyfile)


# --- wire parsing (the tests' own, deliberately minimal) ----------------------------------------


def records(stream: bytes) -> list[tuple[bytes, bytes]]:
    """(header, body) of every whole record in one direction's bytes."""
    out = []
    pos = 0
    while pos + 5 <= len(stream):
        length = int.from_bytes(stream[pos + 3 : pos + 5], "big")
        if pos + 5 + length > len(stream):
            break
        out.append((stream[pos : pos + 5], stream[pos + 5 : pos + 5 + length]))
        pos += 5 + length
    assert pos == len(stream), "a direction ended inside a record"
    return out


def hello_random(stream: bytes) -> bytes:
    """The random of the hello that opens a direction: record header 5, handshake header 4, version 2."""
    assert stream[0] == 22 and stream[5] in (1, 2), "the direction does not start with a hello"
    return stream[11:43]


def server_hello_extensions(stream: bytes) -> list[int]:
    """The extension types of the ServerHello that opens the server's direction, in order."""
    body = records(stream)[0][1]
    assert body[0] == 2
    pos = 4 + 2 + 32  # handshake header, version, random
    pos += 1 + body[pos]  # session id
    pos += 2 + 1  # cipher suite, compression method
    end = pos + 2 + int.from_bytes(body[pos : pos + 2], "big")
    pos += 2
    types = []
    while pos < end:
        types.append(int.from_bytes(body[pos : pos + 2], "big"))
        pos += 4 + int.from_bytes(body[pos + 2 : pos + 4], "big")
    return types


def parse_keylog(text: str) -> dict[str, tuple[bytes, bytes]]:
    """NSS key log lines -> {label: (client random, secret)}, for a log holding one session."""
    out = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 3 and not line.startswith("#"):
            out[parts[0]] = (bytes.fromhex(parts[1]), bytes.fromhex(parts[2]))
    return out


def handshake_types(buffer: bytearray) -> Iterator[int]:
    """Consume the whole handshake messages at the front of ``buffer``; yield their types."""
    while len(buffer) >= 4:
        length = int.from_bytes(buffer[1:4], "big")
        if len(buffer) < 4 + length:
            return
        kind = buffer[0]
        del buffer[: 4 + length]
        yield kind


# --- sessions ----------------------------------------------------------------------------------------


@dataclass
class Session:
    """One TLS connection as the wire and the key log saw it."""

    streams: list[bytes] = field(default_factory=lambda: [b"", b""])  # client's bytes, server's bytes
    keylog: dict[str, tuple[bytes, bytes]] = field(default_factory=dict)
    version: str | None = None  # "TLSv1.2"
    cipher: str | None = None  # OpenSSL's name
    received: list[bytes] = field(default_factory=lambda: [b"", b""])  # what each side read


def memory_session(
    client_ctx: ssl.SSLContext,
    server_ctx: ssl.SSLContext,
    writes: Sequence[tuple[int, bytes]],
    keylog_dir: Path,
) -> Session:
    """Handshake, then each ``(side, data)`` write in order, each read whole by the other side."""
    keylog = keylog_dir / "keys.log"
    keylog.unlink(missing_ok=True)
    client_ctx.keylog_filename = str(keylog)
    bios = [ssl.MemoryBIO() for _ in range(4)]  # client in/out, server in/out
    ends = [
        client_ctx.wrap_bio(bios[0], bios[1], server_hostname="crypto.podshark.test"),
        server_ctx.wrap_bio(bios[2], bios[3], server_side=True),
    ]
    session = Session()

    def move() -> None:
        for side, (outgoing, peer_in) in enumerate(((bios[1], bios[2]), (bios[3], bios[0]))):
            data = outgoing.read()
            if data:
                session.streams[side] += data
                peer_in.write(data)

    def drain(side: int) -> None:
        with contextlib.suppress(ssl.SSLWantReadError):
            while True:
                chunk = ends[side].read(1 << 17)
                if not chunk:
                    return
                session.received[side] += chunk

    done = [False, False]
    for _ in range(20):
        for side in (CLIENT, SERVER):
            if not done[side]:
                try:
                    ends[side].do_handshake()
                    done[side] = True
                except ssl.SSLWantReadError:
                    pass
            move()
        if all(done):
            break
    assert all(done), "the handshake did not finish"
    session.version = ends[CLIENT].version()
    session.cipher = (ends[CLIENT].cipher() or (None,))[0]
    for side, data in writes:
        ends[side].write(data)
        move()
        drain(1 - side)
        move()  # TLS 1.3: the client's first read takes the tickets; nothing more goes out
    session.keylog = parse_keylog(keylog.read_text())
    return session


def tls_contexts(
    cert: tuple[str, str],
    ciphers: str,
    version: ssl.TLSVersion,
    *,
    no_etm: bool = False,
) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """(client, server) contexts pinned to one version and OpenSSL cipher string (TLS <= 1.2)."""
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.check_hostname = False
    client.verify_mode = ssl.CERT_NONE
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(*cert)
    for ctx in (client, server):
        with warnings.catch_warnings():  # TLS 1.0/1.1 are deprecated, which is why we test them
            warnings.simplefilter("ignore", DeprecationWarning)
            ctx.minimum_version = ctx.maximum_version = version
        if version < ssl.TLSVersion.TLSv1_3:
            ctx.set_ciphers(f"{ciphers}:@SECLEVEL=0")
    if no_etm:
        client.options |= SSL_OP_NO_ENCRYPT_THEN_MAC
    return client, server


class _Relay:
    """A one-connection TCP relay on 127.0.0.1 that records what each side sends."""

    def __init__(self, upstream_port: int) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.upstream_port = upstream_port
        self.streams = [bytearray(), bytearray()]
        self.lock = threading.Lock()
        self.threads: list[threading.Thread] = []
        self.socks: list[socket.socket] = []
        self.accepter = threading.Thread(target=self._accept, daemon=True)
        self.accepter.start()

    def _accept(self) -> None:
        self.listener.settimeout(20)
        try:
            down, _ = self.listener.accept()
        except OSError:
            return
        up = socket.create_connection(("127.0.0.1", self.upstream_port), timeout=20)
        self.socks += [down, up]
        for side, (src, dst) in enumerate(((down, up), (up, down))):
            t = threading.Thread(target=self._pump, args=(side, src, dst), daemon=True)
            t.start()
            self.threads.append(t)

    def _pump(self, side: int, src: socket.socket, dst: socket.socket) -> None:
        src.settimeout(None)
        try:
            while data := src.recv(65536):
                with self.lock:
                    self.streams[side] += data
                dst.sendall(data)
        except OSError:
            pass
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self.listener.close()
        for s in self.socks:
            s.close()
        self.accepter.join(5)
        for t in self.threads:
            t.join(5)


class _Output:
    """Collects a process pipe in a thread so tests can wait for text to appear."""

    def __init__(self, pipe: object) -> None:
        self.text = b""
        self.cond = threading.Condition()
        self.thread = threading.Thread(target=self._read, args=(pipe,), daemon=True)
        self.thread.start()

    def _read(self, pipe: object) -> None:
        read = pipe.read1  # type: ignore[attr-defined]
        while chunk := read(4096):
            with self.cond:
                self.text += chunk
                self.cond.notify_all()

    def wait_for(self, needle: bytes, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        with self.cond:
            while needle not in self.text:
                left = deadline - time.monotonic()
                assert left > 0, f"{needle!r} never appeared in {self.text[-400:]!r}"
                self.cond.wait(left)


def openssl_session(
    ciphersuite: str, cert: tuple[str, str], steps: Sequence[tuple[str, bytes]], tmp: Path
) -> Session:
    """A TLS 1.3 session between ``openssl s_client`` and ``openssl s_server`` with one suite.

    ``steps`` are ``("client" | "server", line)``: the line goes to that side's stdin and the step
    waits until the peer printed it; the line ``b"K\\n"`` to the client makes it send a KeyUpdate
    with update_requested (waited for on its stderr), which the server answers with its own.
    """
    keylog = tmp / "openssl-keys.log"
    keylog.unlink(missing_ok=True)
    procs: list[subprocess.Popen[bytes]] = []
    outputs: list[_Output] = []
    relay: _Relay | None = None
    try:
        server = subprocess.Popen(
            ["openssl", "s_server", "-accept", "127.0.0.1:0", "-cert", cert[0], "-key", cert[1],
             "-tls1_3", "-ciphersuites", ciphersuite, "-naccept", "1"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
        procs.append(server)
        server_out = _Output(server.stdout)
        outputs += [server_out, _Output(server.stderr)]  # read stderr too, so it can never fill up
        server_out.wait_for(b"ACCEPT ")
        port = int(server_out.text.split(b"ACCEPT ", 1)[1].split(b"\n", 1)[0].rsplit(b":", 1)[1])
        relay = _Relay(port)
        client = subprocess.Popen(
            ["openssl", "s_client", "-connect", f"127.0.0.1:{relay.port}", "-tls1_3",
             "-ciphersuites", ciphersuite, "-keylogfile", str(keylog), "-servername", "crypto.podshark.test"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
        procs.append(client)
        client_out, client_err = _Output(client.stdout), _Output(client.stderr)
        outputs += [client_out, client_err]
        client_out.wait_for(b"Verify return code")  # the handshake is done
        sent = [b"", b""]
        for who, line in steps:
            proc, peer_out = (client, server_out) if who == "client" else (server, client_out)
            assert proc.stdin is not None
            proc.stdin.write(line)
            proc.stdin.flush()
            if line == b"K\n":
                client_err.wait_for(b"KEYUPDATE")
            else:
                sent[0 if who == "client" else 1] += line
                peer_out.wait_for(line)
        session = Session(keylog=parse_keylog(keylog.read_text()), version="TLSv1.3", cipher=ciphersuite)
        session.received = [sent[1], sent[0]]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait(10)
        for out in outputs:
            out.thread.join(10)  # the pipes reach EOF once the process is gone
        for p in procs:
            for pipe in (p.stdin, p.stdout, p.stderr):
                if pipe is not None:
                    pipe.close()
        if relay is not None:
            relay.close()
    with relay.lock:
        session.streams = [bytes(relay.streams[0]), bytes(relay.streams[1])]
    return session
