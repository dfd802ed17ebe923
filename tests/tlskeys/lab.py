"""Real TLS traffic with its key log: nginx (HTTPS, HTTP/1.1 and HTTP/2 by ALPN) and curl in a netns pair.

Why: key-log decryption is only trustworthy if it opens what real TLS stacks write: OpenSSL's record
splitting, TLS 1.3 NewSessionTickets, encrypt-then-mac negotiation, key updates. Here nginx and curl
(both on the system's OpenSSL 3.0) talk over a veth pair, tcpdump records the packets, and curl (or
``openssl s_client``) writes the session secrets to an NSS key log (``SSLKEYLOGFILE``). The test knows
what every exchange carried because it wrote the files nginx serves and the bodies curl posts
(`site_files`, `POST_BODY`, `plan`); tshark given the same key log (`tests.tlskeys.oracle`) is the
independent view of the same packets.

What one capture holds (`KeyLab.capture`): two TLS connections to the same server with different SNIs:

- connection ``a.keylab.test``: one curl process, three GETs on one keep-alive connection: a small
  text file, a 100,000-byte binary (many TLS records, many TCP segments) and a JSON document nginx
  sends gzip'd (curl ``--compressed``);
- connection ``b.keylab.test``: one POST whose 20,000-byte body spans two records, answered
  ``201`` by a backend behind nginx (which reads the whole body first), naming its length.

The server's TLS knobs come from the client side (``--tlsv1.x``/``--tls-max``, ``--ciphers``,
``--tls13-ciphers``, ``--http1.1``/``--http2``) against nginx's defaults, except encrypt-then-mac:
OpenSSL negotiates it by default for CBC suites, and a second port of the same nginx
(`NOETM_PORT`) turns it off (``ssl_conf_command Options -EncryptThenMac``). The oracle proves each
capture got what was asked (version, cipher suite, ALPN, extension 22 in the ServerHello or not).

`KeyLab.keyupdate` drives ``openssl s_client`` through two TLS 1.3 key updates (``K``: update and
ask the peer to update too) between three GETs on one connection.

Everything is uniquely named and removed in ``finally`` blocks (namespaces via
`tests.realtraffic.netns_pair`, nginx by its pid, temporary directories); only processes started
here are ended, by pid.

``python -m tests.tlskeys.lab --fixtures DIR`` (root) regenerates the committed captures in
fixtures/pcaps/tls/ (see `write_fixtures`).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import ipaddress
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import pytest

from tests.realtraffic import (
    NGINX,
    NetnsPair,
    _terminate,
    netns_pair,
    netns_unavailable_reason,
    tcpdump_capture,
)

CURL = shutil.which("curl")
OPENSSL = shutil.which("openssl")
EDITCAP = shutil.which("editcap")

DOMAIN = "keylab.test"
#: nginx with OpenSSL's defaults (encrypt-then-mac offered back for CBC suites)
PORT = 8443
#: the same site with ``ssl_conf_command Options -EncryptThenMac``: CBC records MAC-then-encrypt
NOETM_PORT = 8444
CAPTURE_BPF = f"tcp port {PORT} or tcp port {NOETM_PORT}"

#: the two connections of a capture, one SNI each
SNI_A = f"a.{DOMAIN}"
SNI_B = f"b.{DOMAIN}"
#: the connection `KeyLab.keyupdate` makes
SNI_KEYUPDATE = f"k.{DOMAIN}"

SUBMIT_PATH = "/submit"
SUBMIT_STATUS = 201
#: nginx answers the POST through a proxy hop to a backend on the server's loopback: `return` alone
#: would answer before reading the body (and reset the HTTP/2 stream while curl still sends it);
#: proxying makes nginx read the whole body first, and the backend's answer names its length
BACKEND_PORT = 8081
#: ``/n/<anything>`` answers ``n=<request uri>\n``: bodies by construction for any target
NAMED_PREFIX = "/n/"


def submit_answer(body: bytes) -> bytes:
    """What the POST to `SUBMIT_PATH` answers: the body length nginx passed on (all of it)."""
    return f"accepted {len(body)} bytes\n".encode()


def named_answer(target: str) -> bytes:
    """What nginx answers for a target under `NAMED_PREFIX`."""
    return f"n={target}\n".encode()


# ------------------------------------------------------------------------------------------ the site


def site_files() -> dict[str, bytes]:
    """Every static file nginx serves, by URL path. Seeded: each run (and the committed fixtures)
    serves the same bytes, so a test without root can know the bodies of a fixture by construction."""
    rnd = random.Random(1111)
    words = ["pod", "shark", "record", "cipher", "secret", "nonce", "update", "ticket", "alpn", "mac"]
    doc = [{"id": n, "name": rnd.choice(words), "tags": rnd.sample(words, 3)} for n in range(400)]
    return {
        "/hello.txt": b"hello from the podshark key lab\n",
        "/big.bin": rnd.randbytes(100_000),
        "/medium.bin": rnd.randbytes(40_000),
        "/gz/page.json": json.dumps(doc, separators=(",", ":")).encode(),
    }


#: the POST body of connection B (20,000 bytes: more than one 16 KiB TLS record)
POST_BODY = bytes(random.Random(2222).choice(b"abcdefghij0123456789") for _ in range(20_000))


@dataclass(frozen=True, slots=True)
class Exchange:
    """One request and its answer as the test made them: the ground truth for a call."""

    method: str
    target: str
    status: int
    request_body: bytes
    response_body: bytes  # decoded (as curl would hand it to the user)
    gzip: bool = False  # nginx sends it with Content-Encoding: gzip

    @property
    def summary(self) -> tuple[str, str, int]:
        return (self.method, self.target, self.status)


@dataclass(frozen=True, slots=True)
class Conn:
    """One TLS connection of a capture: its SNI and its exchanges in order."""

    sni: str
    exchanges: tuple[Exchange, ...]


def plan(small: bool = False) -> tuple[Conn, Conn]:
    """The two connections every `KeyLab.capture` makes (see the module docstring). ``small``
    fetches the 40,000-byte file instead of the 100,000-byte one: the committed fixtures are made
    so, to keep the repository light (still three records and dozens of TCP segments)."""
    files = site_files()
    big = "/medium.bin" if small else "/big.bin"
    a = Conn(
        SNI_A,
        (
            Exchange("GET", "/hello.txt", 200, b"", files["/hello.txt"]),
            Exchange("GET", big, 200, b"", files[big]),
            Exchange("GET", "/gz/page.json", 200, b"", files["/gz/page.json"], gzip=True),
        ),
    )
    b = Conn(SNI_B, (Exchange("POST", SUBMIT_PATH, SUBMIT_STATUS, POST_BODY, submit_answer(POST_BODY)),))
    return a, b


# ------------------------------------------------------------------------------------ the variants


@dataclass(frozen=True, slots=True)
class Suite:
    """A cipher suite as curl names it (OpenSSL names) and as the IANA registry (and tshark) does."""

    label: str  # short, for test ids and file names
    version: str  # "TLS 1.2" | "TLS 1.3"
    openssl: str
    iana: str
    cbc: bool = False


SUITES_13 = (
    Suite("aes128gcm", "TLS 1.3", "TLS_AES_128_GCM_SHA256", "TLS_AES_128_GCM_SHA256"),
    Suite("aes256gcm", "TLS 1.3", "TLS_AES_256_GCM_SHA384", "TLS_AES_256_GCM_SHA384"),
    Suite("chacha", "TLS 1.3", "TLS_CHACHA20_POLY1305_SHA256", "TLS_CHACHA20_POLY1305_SHA256"),
)
SUITES_12 = (
    Suite("aes128gcm", "TLS 1.2", "ECDHE-RSA-AES128-GCM-SHA256", "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256"),
    Suite("aes256gcm", "TLS 1.2", "ECDHE-RSA-AES256-GCM-SHA384", "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384"),
    Suite("chacha", "TLS 1.2", "ECDHE-RSA-CHACHA20-POLY1305", "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256"),
    Suite("aes128cbc", "TLS 1.2", "ECDHE-RSA-AES128-SHA", "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA", cbc=True),
    Suite(
        "aes256cbc384",
        "TLS 1.2",
        "ECDHE-RSA-AES256-SHA384",
        "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA384",
        cbc=True,
    ),
)

ALPNS = ("http/1.1", "h2")


@dataclass(frozen=True, slots=True)
class Variant:
    """One capture's TLS parameters: suite, application protocol, encrypt-then-mac on or off."""

    suite: Suite
    alpn: str  # "http/1.1" | "h2"
    etm: bool = True  # only meaningful for CBC suites: False = the server refuses encrypt-then-mac

    @property
    def name(self) -> str:
        """``tls13-chacha-h2``, ``tls12-aes128cbc-noetm-http1``: test ids and file names."""
        ver = "tls13" if self.suite.version == "TLS 1.3" else "tls12"
        etm = "" if self.etm or not self.suite.cbc else "-noetm"
        app = "h2" if self.alpn == "h2" else "http1"
        return f"{ver}-{self.suite.label}{etm}-{app}"

    @property
    def port(self) -> int:
        return PORT if self.etm else NOETM_PORT

    @property
    def protocol(self) -> str:
        """The protocol podshark's calls of this capture must carry."""
        return "http2" if self.alpn == "h2" else "http"

    @property
    def expect_etm(self) -> bool:
        """Whether the ServerHello must carry encrypt_then_mac (22): only CBC suites negotiate it."""
        return self.suite.cbc and self.etm

    def curl_config(self) -> list[str]:
        """curl config-file lines that force this variant (the server accepts all of them). They are
        per-transfer options, so they are repeated after every ``next``."""
        if self.suite.version == "TLS 1.3":
            tls = ["tlsv1.3", f'tls13-ciphers = "{self.suite.openssl}"']
        else:
            tls = ["tlsv1.2", 'tls-max = "1.2"', f'ciphers = "{self.suite.openssl}"']
        return [*tls, "http2" if self.alpn == "h2" else "http1.1"]


def variants() -> list[Variant]:
    """Every combination the issue asks for: each suite with each ALPN, CBC also without ETM."""
    out = [Variant(s, a) for s in (*SUITES_13, *SUITES_12) for a in ALPNS]
    out += [Variant(s, a, etm=False) for s in SUITES_12 if s.cbc for a in ALPNS]
    return out


# --------------------------------------------------------------------------------------- the server

NGINX_CONF = """\
daemon off;
master_process on;
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 256; }}
http {{
    access_log off;
    client_body_temp_path {dir}/client_body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    types {{ text/plain txt; application/json json; application/octet-stream bin; }}
    default_type text/plain;
    keepalive_timeout 120s;
    client_max_body_size 1m;
    ssl_certificate {cert};
    ssl_certificate_key {key};
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_ciphers HIGH:!aNULL:!MD5;
    ssl_session_tickets off;
{servers}
    server {{
        listen 127.0.0.1:{backend};
        location = {submit} {{ return {status} "accepted $content_length bytes\\n"; }}
    }}
}}
"""

SERVER_BLOCK = """\
    server {{
        listen {ip}:{port} ssl http2;
        server_name *.{domain};
        root {root};
        {extra}
        location /gz/ {{ gzip on; gzip_types application/json; gzip_min_length 0; }}
        location = {submit} {{ proxy_pass http://127.0.0.1:{backend}; proxy_http_version 1.1; }}
        location {named} {{ return 200 "n=$request_uri\\n"; }}
    }}
"""


def cert_files(directory: Path) -> tuple[Path, Path]:
    """A self-signed RSA certificate for ``*.keylab.test`` and its key, written to `directory`.

    RSA because the TLS 1.2 suites the issue names are ECDHE-RSA ones; 2048 bits is what a real
    server has and generates in well under a second."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, DOMAIN)])
    now = datetime.datetime.now(datetime.UTC)
    san = x509.SubjectAlternativeName(
        [x509.DNSName(DOMAIN), x509.DNSName(f"*.{DOMAIN}"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
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
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    certfile, keyfile = directory / "cert.pem", directory / "key.pem"
    certfile.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    keyfile.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    keyfile.chmod(0o644)  # nginx reads it as root before dropping privileges, but be explicit
    return certfile, keyfile


def nginx_conf(workdir: Path, ip: str, cert: Path, key: Path, htdocs: Path) -> str:
    """nginx.conf for the lab: the same site on `PORT` and, without encrypt-then-mac, `NOETM_PORT`."""
    servers = "".join(
        SERVER_BLOCK.format(
            ip=ip,
            port=port,
            domain=DOMAIN,
            root=htdocs,
            extra=extra,
            submit=SUBMIT_PATH,
            backend=BACKEND_PORT,
            named=NAMED_PREFIX,
        )
        for port, extra in ((PORT, ""), (NOETM_PORT, "ssl_conf_command Options -EncryptThenMac;"))
    )
    return NGINX_CONF.format(
        dir=workdir,
        cert=cert,
        key=key,
        servers=servers,
        backend=BACKEND_PORT,
        submit=SUBMIT_PATH,
        status=SUBMIT_STATUS,
    )


def tools_missing_reason() -> str | None:
    """Why the key lab cannot run here (root, namespaces, programs), or None."""
    reason = netns_unavailable_reason()
    if reason:
        return reason
    missing = [
        name
        for name, path in (("nginx", NGINX), ("curl", CURL), ("openssl", OPENSSL), ("tcpdump", "tcpdump"))
        if not (path and (os.path.exists(path) or shutil.which(path)))
    ]
    if missing:
        return f"not installed: {', '.join(missing)} (apt-get install nginx-light curl openssl tcpdump)"
    return None


# ------------------------------------------------------------------------------------------ results


@dataclass(slots=True)
class TlsCapture:
    """A finished capture, its key log, and what the test sent over each connection."""

    name: str
    pcap: Path
    keylog: Path
    conns: tuple[Conn, ...]
    variant: Variant | None = None
    complete: bool = True  # tcpdump's counters: nothing dropped
    tcpdump: str = ""

    def conn(self, sni: str) -> Conn:
        return next(c for c in self.conns if c.sni == sni)


@dataclass(slots=True)
class KeyLab:
    """The namespace pair, nginx (both ports), its certificate and a scratch directory."""

    pair: NetnsPair
    workdir: Path
    cert: Path
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    _made: dict[str, TlsCapture] = field(default_factory=dict)

    @property
    def ip(self) -> str:
        return self.pair.server_ip

    def url(self, sni: str, port: int, target: str) -> str:
        return f"https://{sni}:{port}{target}"

    def curl(self, conn: Conn, variant: Variant, keylog: Path, name: str) -> None:
        """One curl process for all of `conn`'s exchanges (so one TLS connection), secrets to `keylog`.

        A curl config file holds the URLs, separated by ``next`` so that a POST's options stay with
        its URL; curl still reuses the connection across ``next``. ``Expect:`` is emptied so curl
        sends a body at once instead of waiting for ``100 Continue``.
        """
        assert CURL is not None
        per_transfer = [
            f'resolve = "{conn.sni}:{variant.port}:{self.ip}"',
            f'cacert = "{self.cert}"',
            "compressed",
            'header = "Expect:"',
            "max-time = 30",
            'write-out = "%{http_version} %{response_code} %{num_connects}\\n"',
            'output = "/dev/null"',
            *variant.curl_config(),
        ]
        lines: list[str] = []
        for i, ex in enumerate(conn.exchanges):
            if i:
                lines.append("next")
            lines += per_transfer
            lines.append(f'url = "{self.url(conn.sni, variant.port, ex.target)}"')
            if ex.method == "POST":
                body = self.workdir / f"{name}.body"
                body.write_bytes(ex.request_body)
                lines.append(f'data-binary = "@{body}"')
            elif ex.method != "GET":
                lines.append(f'request = "{ex.method}"')
        cfg = self.workdir / f"{name}.curl"
        cfg.write_text("\n".join(lines) + "\n")
        args = ["env", f"SSLKEYLOGFILE={keylog}", CURL, "-sS", "--fail", "--config", str(cfg)]
        res = self.pair.client(args, timeout=90, check=False)
        if res.returncode != 0:
            raise RuntimeError(f"curl {name} failed ({res.returncode}): {res.stderr.strip()[-600:]}")
        # every transfer must have used the asked-for HTTP version, got its status, and all but the
        # first must have reused the first one's connection (num_connects 0)
        want = "2" if variant.alpn == "h2" else "1.1"
        expect = [f"{want} {ex.status} {int(i == 0)}" for i, ex in enumerate(conn.exchanges)]
        got = res.stdout.splitlines()
        if got != expect:
            raise RuntimeError(f"curl {name}: expected {expect} (version, status, new connection), got {got}")

    def capture(self, variant: Variant, small: bool = False) -> TlsCapture:
        """Capture `plan(small)` under `variant` (made once per lab, then reused by every test asking)."""
        name = variant.name + ("-small" if small else "")
        if name in self._made:
            return self._made[name]
        out = self.workdir / f"{name}.pcap"
        keylog = self.workdir / f"{name}.keys"
        conns = plan(small)
        with tcpdump_capture(self.pair, out, bpf=CAPTURE_BPF) as cap:
            for n, conn in enumerate(conns):
                self.curl(conn, variant, keylog, f"{name}-{n}")
        if not keylog.exists():
            raise RuntimeError(f"curl wrote no key log to {keylog}: was it built without SSLKEYLOGFILE?")
        made = TlsCapture(name, out, keylog, conns, variant, cap.complete, cap.stderr)
        self._made[name] = made
        return made

    def keyupdate(self, name: str = "tls13-keyupdate-http1", updates: int = 2) -> TlsCapture:
        """One TLS 1.3 connection through ``openssl s_client``: GET, then ``K`` (KeyUpdate with
        update_requested: both sides move to new keys), GET, ``K``, GET — each line only after the
        previous answer (or the KEYUPDATE notice) came back. ``updates`` K lines, ``updates + 1`` GETs."""
        if name in self._made:
            return self._made[name]
        assert OPENSSL is not None
        out = self.workdir / f"{name}.pcap"
        keylog = self.workdir / f"{name}.keys"
        targets = [f"{NAMED_PREFIX}{i}" for i in range(1, updates + 2)]
        exchanges = tuple(Exchange("GET", t, 200, b"", named_answer(t)) for t in targets)
        args = [
            OPENSSL, "s_client", "-connect", f"{self.ip}:{PORT}", "-servername", SNI_KEYUPDATE,
            "-keylogfile", str(keylog), "-tls1_3", "-crlf", "-brief", "-CAfile", str(self.cert),
        ]  # fmt: skip
        client = SClient(self.pair.exec_args(self.pair.client_ns, args))
        with tcpdump_capture(self.pair, out, bpf=CAPTURE_BPF) as cap, client as sc:
            sc.wait_err("CONNECTION ESTABLISHED")
            for i, ex in enumerate(exchanges):
                if i:
                    sc.send(b"K\n")
                    sc.wait_err("KEYUPDATE", count=i)
                sc.send(f"GET {ex.target} HTTP/1.1\nHost: {SNI_KEYUPDATE}\n\n".encode())
                sc.wait_out(ex.response_body)
        made = TlsCapture(
            name, out, keylog, (Conn(SNI_KEYUPDATE, exchanges),), None, cap.complete, cap.stderr
        )
        self._made[name] = made
        return made


class SClient:
    """``openssl s_client`` driven line by line: stdin written by us, stdout/stderr read by threads,
    so we can wait for each answer before writing the next line (s_client reads stdin in chunks and
    only treats ``K`` as a command when it starts a chunk)."""

    def __init__(self, args: Sequence[str]) -> None:
        self.args = list(args)
        self.out = bytearray()
        self.err = bytearray()
        self.cond = threading.Condition()
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> SClient:
        self.proc = subprocess.Popen(
            self.args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        assert self.proc.stdout is not None and self.proc.stderr is not None
        for stream, buf in ((self.proc.stdout, self.out), (self.proc.stderr, self.err)):
            threading.Thread(target=self._pump, args=(stream, buf), daemon=True).start()
        return self

    def _pump(self, stream: IO[bytes], buf: bytearray) -> None:
        while chunk := stream.read1(65536):  # type: ignore[attr-defined]  # a BufferedReader
            with self.cond:
                buf += chunk
                self.cond.notify_all()
        with self.cond:
            self.cond.notify_all()

    def send(self, data: bytes) -> None:
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write(data)
        self.proc.stdin.flush()

    def _wait(self, buf: bytearray, what: bytes, count: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        with self.cond:
            while bytes(buf).count(what) < count:
                left = deadline - time.monotonic()
                assert self.proc is not None
                if left <= 0 or self.proc.poll() is not None:
                    raise RuntimeError(
                        f"s_client: no {what!r} (x{count}) after {timeout}s; "
                        f"stderr: {bytes(self.err).decode(errors='replace')[-600:]}; "
                        f"stdout: {bytes(self.out).decode(errors='replace')[-600:]}"
                    )
                self.cond.wait(min(left, 0.2))

    def wait_out(self, what: bytes, count: int = 1, timeout: float = 20) -> None:
        self._wait(self.out, what, count, timeout)

    def wait_err(self, what: str, count: int = 1, timeout: float = 20) -> None:
        self._wait(self.err, what.encode(), count, timeout)

    def __exit__(self, *exc: object) -> None:
        if self.proc is None:
            return
        with contextlib.suppress(OSError):
            assert self.proc.stdin is not None
            self.proc.stdin.close()  # EOF: s_client sends close_notify and exits
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            _terminate(self.proc)


def _wait_https(lab: KeyLab, proc: subprocess.Popen[bytes], port: int, timeout: float = 15) -> None:
    """Poll nginx over HTTPS on `port` until it answers; fail early (with its log) if it died."""
    assert CURL is not None
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            log = lab.workdir / "error.log"
            text = log.read_text(errors="replace") if log.exists() else ""
            raise RuntimeError(f"nginx exited ({proc.returncode}): {text.strip()[-800:]}")
        res = lab.pair.client(
            [CURL, "-sS", "--max-time", "2", "--cacert", str(lab.cert), "--resolve",
             f"{SNI_A}:{port}:{lab.ip}", lab.url(SNI_A, port, "/hello.txt")],
            check=False, timeout=10,
        )  # fmt: skip
        if res.returncode == 0 and res.stdout.encode() == site_files()["/hello.txt"]:
            return
        last = res.stderr
        time.sleep(0.1)
    raise RuntimeError(f"nginx did not answer HTTPS on {port} within {timeout}s: {last.strip()}")


@contextlib.contextmanager
def key_lab() -> Iterator[KeyLab]:
    """Namespaces + nginx (both ports) + the site, all removed on exit."""
    reason = tools_missing_reason()
    if reason:
        pytest.skip(reason)
    assert NGINX is not None
    workdir = Path(tempfile.mkdtemp(prefix="psk-keylab-"))
    os.chmod(workdir, 0o755)  # nginx workers run as an unprivileged user and read the site
    try:
        with netns_pair() as pair:
            htdocs = workdir / "htdocs"
            for url_path, data in site_files().items():
                dest = htdocs / url_path.lstrip("/")
                dest.parent.mkdir(parents=True, exist_ok=True)
                dest.write_bytes(data)
                os.chmod(dest.parent, 0o755)
            cert, key = cert_files(workdir)
            conf = workdir / "nginx.conf"
            conf.write_text(nginx_conf(workdir, pair.server_ip, cert, key, htdocs))
            lab = KeyLab(pair=pair, workdir=workdir, cert=cert)
            proc = subprocess.Popen(
                pair.exec_args(
                    pair.server_ns,
                    [NGINX, "-c", str(conf), "-p", str(workdir), "-e", str(workdir / "error.log")],
                ),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            lab.procs.append(proc)
            try:
                for port in (PORT, NOETM_PORT):
                    _wait_https(lab, proc, port)
                yield lab
            finally:
                for p in lab.procs:
                    _terminate(p, signal.SIGQUIT)  # graceful: the master ends its workers
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


# ---------------------------------------------------------------------------------- key log tools


def keylog_lines(path: Path) -> list[str]:
    """The key log's lines (NSS format: ``LABEL <client_random hex> <secret hex>``)."""
    return [line for line in path.read_text().splitlines() if line.strip()]


def keylog_for(path: Path, client_randoms: Sequence[str], out: Path) -> Path:
    """Write to `out` only the lines of `path` that belong to the given client randoms (hex)."""
    keep = {r.lower() for r in client_randoms}
    lines = [ln for ln in keylog_lines(path) if len(ln.split()) == 3 and ln.split()[1].lower() in keep]
    out.write_text("".join(f"{ln}\n" for ln in lines))
    return out


def inject_secrets(pcap: Path, keylog: Path, out: Path) -> Path:
    """A pcapng with `keylog` in a Decryption Secrets Block, made by the real tool (editcap)."""
    if EDITCAP is None:
        pytest.skip("editcap is not installed (apt-get install wireshark-common)")
    res = subprocess.run(
        [EDITCAP, "--inject-secrets", f"tls,{keylog}", str(pcap), str(out)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if res.returncode != 0:
        raise RuntimeError(f"editcap --inject-secrets failed ({res.returncode}): {res.stderr.strip()}")
    return out


# ---------------------------------------------------------------------------------------- fixtures


@dataclass(frozen=True, slots=True)
class Fixture:
    """A committed capture (fixtures/pcaps/tls/): its variant, and where its secrets are."""

    file: str
    variant: str  # a `Variant.name`
    dsb: bool = False  # secrets in the pcapng's Decryption Secrets Block, no key log beside it

    @property
    def keys(self) -> str | None:
        """The key log's file name beside the capture (``NAME.keys``), None for a DSB capture."""
        return None if self.dsb else f"{Path(self.file).stem}.keys"

    def find_variant(self) -> Variant:
        return next(v for v in variants() if v.name == self.variant)


FIXTURES = (
    Fixture("tls13-chacha-h2.pcap", "tls13-chacha-h2"),
    Fixture("tls12-cbc-noetm-http1.pcap", "tls12-aes128cbc-noetm-http1"),
    Fixture("tls12-gcm-http1-dsb.pcapng", "tls12-aes256gcm-http1", dsb=True),
)
#: the command that makes them (PROVENANCE.tsv's ``path`` column)
FIXTURE_COMMAND = "python -m tests.tlskeys.lab --fixtures fixtures/pcaps/tls"


def write_fixtures(directory: Path) -> list[Path]:
    """Make the committed captures with `plan(small=True)`: each pcap with its key log beside it,
    and one pcapng whose Decryption Secrets Block holds the key log (no ``.keys`` file)."""
    directory.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    with key_lab() as lab:
        for fx in FIXTURES:
            cap = lab.capture(fx.find_variant(), small=True)
            if not cap.complete:
                raise RuntimeError(f"{fx.variant}: tcpdump dropped packets: {cap.tcpdump.strip()}")
            dest = directory / fx.file
            if fx.keys is None:
                inject_secrets(cap.pcap, cap.keylog, dest)
            else:
                shutil.copyfile(cap.pcap, dest)
                shutil.copyfile(cap.keylog, directory / fx.keys)
                written.append(directory / fx.keys)
            written.append(dest)
    return written


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.tlskeys.lab", description=__doc__.split("\n")[0])
    parser.add_argument("--fixtures", type=Path, required=True, help="directory to write the captures to")
    args = parser.parse_args(argv)
    for p in write_fixtures(args.fixtures):
        print(p)
    return 0


if __name__ == "__main__":
    sys.exit(main())
