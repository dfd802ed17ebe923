"""TLS decryption with a key log: podshark against tshark given the same key log, and against itself
without one, on captures of real HTTPS traffic.

Why these three passes, in one run, on the same bytes: decryption has two costs worth a figure. One is
relative to the tool people already use for it (`tshark -o tls.keylog_file:KEYS`); the other is what
the key log adds to podshark's own pass over the same file, where each session is one opaque ``tls``
call (the record layer is still parsed and counted). Both are ratios of times taken in the same run,
interleaved, on this machine, so they carry to other machines far better than a MB/s figure does.

**Captures** (made once, cached in ``bench/out/`` as ``tls-keylog-vN-VARIANT.pcap`` with the
``.keys`` the client wrote and a ``.json`` describing them; ``--regen`` makes new ones): nginx (one
worker, a self-signed EC P-256 certificate made with `cryptography`) serves five files of 0.3-48 KB
over HTTPS in a private network namespace whose loopback has MTU 1500 and GSO capped at 1500 bytes
(wire-sized segments, so TLS records span several of them); ``h2load`` with ``SSLKEYLOGFILE`` makes
:data:`REQUESTS` requests over :data:`CONNECTIONS` connections (HTTP/1.1 keep-alive, or HTTP/2 with
up to 10 streams at once); tcpdump records the server's port. One capture per variant:

- TLS 1.3 AES-128-GCM, HTTP/1.1;
- TLS 1.3 AES-128-GCM, HTTP/2;
- TLS 1.2 ECDHE-ECDSA-AES128-SHA256 (AES-128-CBC, HMAC-SHA256, encrypt-then-MAC), HTTP/1.1.

The server block of each port allows only the variant's version and suite, and h2load asks for the
same. A capture is only kept when tshark (with the key log) finds one ServerHello per connection,
each with the variant's version, suite, ALPN and encrypt-then-MAC setting, the key log has secrets
for every connection, h2load saw every request succeed and tcpdump dropped nothing.

**Measured**, per capture, in the same run: ``tshark -r FILE -o tls.keylog_file:KEYS -o
tcp.reassemble_out_of_order:TRUE -d tcp.port==PORT,tls -Y http|http2 -T fields -e METHOD -e STATUS``
(stdout to /dev/null; wall clock and CPU of the whole command; out-of-order reassembly because the
loaded loopback retransmits, see `OOO_PREF`), podshark in this process — `KeyLog.from_path` and
`dissect.engine.dissect_path` with it, every call iterated — and the same `dissect_path` without a
key log (the opaque pass). One untimed warm-up of each whose output is counted, then ``runs`` timed
rounds with the order of the three rotating, best and median reported. tshark's start-up (the same
command on an empty capture) is shown apart; it is in tshark's times, as interpreter start-up is not
in podshark's.

**Sanity**, which fails the benchmark: podshark's decrypted calls (the variant's protocol,
``info.tls_source == "keylog"``) must equal tshark's requests and h2load's, with as many responses,
and no session may stay opaque; the opaque pass must find one ``tls`` call per connection and no
HTTP; every timed pass must count what its warm-up counted.
"""

from __future__ import annotations

import contextlib
import datetime
import gc
import ipaddress
import json
import os
import random
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench import traffic
from bench.http1_dissect import Timing, _n, _tail, machine, podshark_revision, timed_run
from bench.http2_dissect import _wait_port
from bench.report import history_lines, keep, previous_figure, render_section, vs_previous
from dissect.engine import dissect_path
from dissect.tls.keylog import KeyLog

NAME = "tls_keylog"
TITLE = "TLS decryption with a key log (podshark vs tshark, and vs the opaque pass)"

#: part of the cached file names: bump when the site, the load, the suites or the server change
CAPTURE_VERSION = "tls-keylog-v1"
REQUESTS = 4_800
CONNECTIONS = 32
H2_STREAMS = 10  # concurrent streams per HTTP/2 connection (h2load -m)
HOST = "bench.podshark.test"  # the SNI: h2load sends none for an address
TLS13_PORT, TLS12_PORT = 8443, 8444  # in the private namespace; on the host, whatever is free
MAX_ATTEMPTS = 3  # capture attempts per variant when tcpdump drops packets

Log = Callable[[str], None]


# ------------------------------------------------------------------------------------------ variants


@dataclass(frozen=True)
class Variant:
    """One capture's TLS parameters, and what tshark must find in each of its ServerHellos."""

    key: str  # file name part and history label
    title: str
    tls13: bool
    h2: bool
    suite: str  # OpenSSL's name (h2load's --ciphers / --tls13-ciphers, nginx's setting)
    iana: str
    cipher: int  # the ServerHello's cipher_suite
    etm: bool  # the ServerHello must (True) or must not carry encrypt_then_mac (extension 22)

    @property
    def version(self) -> int:
        return 0x0304 if self.tls13 else 0x0303

    @property
    def alpn(self) -> str:
        return "h2" if self.h2 else "http/1.1"

    @property
    def protocol(self) -> str:
        """The `Call.protocol` of the decrypted calls."""
        return "http2" if self.h2 else "http"

    def negotiated(self) -> str:
        """The ServerHello parameters as `_server_hellos` spells them."""
        return _hello_text(self.version, self.cipher, self.alpn, self.etm)

    def h2load_args(self) -> list[str]:
        suite = f"--tls13-ciphers={self.suite}" if self.tls13 else f"--ciphers={self.suite}"
        load = ["-m", str(H2_STREAMS)] if self.h2 else ["--h1"]  # --h1: ALPN http/1.1 only
        return [suite, *load]


VARIANTS = (
    Variant("tls13-aes128gcm-http1", "TLS 1.3 AES-128-GCM, HTTP/1.1", True, False,
            "TLS_AES_128_GCM_SHA256", "TLS_AES_128_GCM_SHA256", 0x1301, False),
    Variant("tls13-aes128gcm-h2", "TLS 1.3 AES-128-GCM, HTTP/2", True, True,
            "TLS_AES_128_GCM_SHA256", "TLS_AES_128_GCM_SHA256", 0x1301, False),
    Variant("tls12-aes128cbcsha256-etm-http1", "TLS 1.2 AES-128-CBC-SHA256 (encrypt-then-MAC), HTTP/1.1",
            False, False, "ECDHE-ECDSA-AES128-SHA256", "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256", 0xC023,
            True),
)  # fmt: skip

_VERSION_NAMES = {0x0303: "TLS 1.2", 0x0304: "TLS 1.3"}


def _hello_text(version: int | None, cipher: int | None, alpn: str | None, etm: bool) -> str:
    ver = _VERSION_NAMES.get(version or 0, f"version {version:#06x}" if version else "no version")
    suite = f"suite {cipher:#06x}" if cipher is not None else "no suite"
    return f"{ver}, {suite}, ALPN {alpn or 'none'}, encrypt-then-MAC {'on' if etm else 'off'}"


# ------------------------------------------------------------------------------------------- the site


#: what h2load cycles through on each connection: small API answers dominate, a few pages and blobs
#: make responses of many records and segments (mean about 8 KB a response)
URL_PATHS = ("/api/items.json", "/small.txt", "/api/items.json", "/page.html", "/api/items.json",
             "/small.txt", "/data.json", "/api/items.json", "/page.html", "/blob.bin")  # fmt: skip


def _write_site(htdocs: Path) -> None:
    """The files nginx serves; seeded, so every capture carries the same bodies."""
    rnd = random.Random(1111)
    words = ["pod", "shark", "record", "cipher", "secret", "nonce", "ticket", "alpn", "mac", "stream"]
    htdocs.mkdir(parents=True)
    (htdocs / "api").mkdir()
    items = [{"id": n, "sku": f"SKU-{n:05d}", "qty": n % 7} for n in range(8)]
    (htdocs / "api" / "items.json").write_text(json.dumps(items))  # ~300 B
    (htdocs / "small.txt").write_text(" ".join(rnd.choice(words) for _ in range(180)))  # ~1.2 KB
    para = " ".join(rnd.choice(words) for _ in range(900))
    (htdocs / "page.html").write_text(f"<!doctype html><html><body><p>{para}</p></body></html>\n")  # ~6 KB
    rows = [{"id": n, "name": rnd.choice(words), "score": rnd.random()} for n in range(340)]
    (htdocs / "data.json").write_text(json.dumps(rows))  # ~18 KB
    (htdocs / "blob.bin").write_bytes(rnd.randbytes(48_000))  # incompressible, like media


def _cert_files(d: Path) -> tuple[Path, Path]:
    """A self-signed EC P-256 certificate for `HOST` and 127.0.0.1 (ECDSA: the TLS 1.2 suite's)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, HOST)])
    now = datetime.datetime.now(datetime.UTC)
    san = x509.SubjectAlternativeName([x509.DNSName(HOST), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=7))
        .add_extension(san, critical=False)
        .sign(key, hashes.SHA256())
    )
    certfile, keyfile = d / "cert.pem", d / "key.pem"
    certfile.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    keyfile.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return certfile, keyfile


_NGINX_CONF = """\
{user}worker_processes 1;
daemon off;
master_process on;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    types {{ text/html html; application/json json; text/plain txt; application/octet-stream bin; }}
    keepalive_requests 1000000;
    keepalive_timeout 120s;
    http2_max_requests 1000000;
    ssl_certificate {cert};
    ssl_certificate_key {key};
    root {tmp}/htdocs;
    server {{
        listen 127.0.0.1:{port13} ssl http2;
        server_name {host};
        ssl_protocols TLSv1.3;
        ssl_conf_command Ciphersuites TLS_AES_128_GCM_SHA256;
    }}
    server {{
        listen 127.0.0.1:{port12} ssl http2;
        server_name {host};
        ssl_protocols TLSv1.2;
        ssl_ciphers ECDHE-ECDSA-AES128-SHA256;
    }}
}}
"""


@contextlib.contextmanager
def _nginx(ns: traffic._Netns, tmp: Path, port13: int, port12: int) -> Iterator[None]:
    """nginx serving both ports until the block ends; fails with its error log if it cannot start."""
    cert, key = _cert_files(tmp)
    _write_site(tmp / "htdocs")
    conf = tmp / "nginx.conf"
    user = "user root root;\n" if os.geteuid() == 0 else ""
    conf.write_text(_NGINX_CONF.format(user=user, tmp=tmp, cert=cert, key=key, host=HOST,
                                       port13=port13, port12=port12))  # fmt: skip
    argv = ["nginx", "-p", str(tmp), "-e", str(tmp / "error.log"), "-c", str(conf)]
    proc = subprocess.Popen(
        ns.cmd(argv), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    try:
        for port in (port13, port12):
            _wait_port(ns, port, proc, tmp / "error.log")
        yield
    finally:
        traffic._stop(proc, signal.SIGQUIT)


# ------------------------------------------------------------------------------------------ captures


@dataclass
class TlsCapture:
    """One cached capture and its key log, and what they were checked to contain (JSON beside them)."""

    variant: str
    version: str
    path: str
    keys: str
    port: int
    packets: int
    wire_bytes: int
    file_bytes: int
    created: str
    netns: bool
    mtu: int | None
    generator: str
    requests_sent: int  # h2load's "succeeded"
    connections: int
    keylog_sessions: int  # distinct client randoms in the key log
    server_hellos: dict[str, int] = field(default_factory=dict)  # negotiated parameters -> count
    tcpdump_stats: list[str] = field(default_factory=list)

    @property
    def pcap(self) -> Path:
        return Path(self.path)

    @property
    def keylog(self) -> Path:
        return Path(self.keys)


def _dest(v: Variant) -> Path:
    return traffic.OUT_DIR / f"{CAPTURE_VERSION}-{v.key}.pcap"


def _load_cached(v: Variant) -> TlsCapture | None:
    dest = _dest(v)
    meta = dest.with_suffix(".json")
    if not (dest.exists() and meta.exists() and dest.with_suffix(".keys").exists()):
        return None
    try:
        info = TlsCapture(**json.loads(meta.read_text()))
    except (TypeError, ValueError):
        return None
    if info.version != CAPTURE_VERSION or info.variant != v.key or info.packets <= 0:
        return None
    info.path, info.keys = str(dest), str(dest.with_suffix(".keys"))
    return info


def _keylog_sessions(keys: Path) -> int:
    """Distinct client randoms in an NSS key log (the second field of every secret line)."""
    randoms = set()
    for line in keys.read_text(errors="replace").splitlines():
        parts = line.split()
        if len(parts) == 3 and not line.startswith("#"):
            randoms.add(parts[1].lower())
    return len(randoms)


def _h2load_succeeded(out: str) -> int:
    """From h2load's "requests: N total, N started, N done, N succeeded, ..." line."""
    for line in out.splitlines():
        if line.startswith("requests:"):
            for part in line.split(":", 1)[1].split(","):
                words = part.split()
                if len(words) == 2 and words[1] == "succeeded":
                    return int(words[0])
    raise RuntimeError(f"h2load printed no request summary: {out[-500:]}")


def _server_hellos(pcap: Path, keys: Path, port: int) -> Counter[str]:
    """Per connection, the version, suite, ALPN and encrypt-then-MAC the server chose, as tshark
    reads them with the key log (TLS 1.3's ALPN is in the encrypted EncryptedExtensions)."""
    argv = ["tshark", "-r", str(pcap), "-o", f"tls.keylog_file:{keys}", "-d", f"tcp.port=={port},tls",
            "-Y", "tls.handshake.type == 2 || tls.handshake.type == 8", "-T", "fields", "-E", "aggregator=|",
            "-e", "tcp.stream", "-e", "tls.handshake.type", "-e", "tls.handshake.version",
            "-e", "tls.handshake.extensions.supported_version", "-e", "tls.handshake.ciphersuite",
            "-e", "tls.handshake.extensions_alpn_str", "-e", "tls.handshake.extension.type"]  # fmt: skip
    r = subprocess.run(argv, capture_output=True, timeout=900, check=False)
    if r.returncode != 0:
        raise RuntimeError(f"tshark could not read {pcap.name}: {_tail(r.stderr)}")
    streams: dict[str, dict[str, Any]] = {}
    for line in r.stdout.decode(errors="replace").splitlines():
        cols = (line.split("\t") + [""] * 7)[:7]
        stream, types, versions, supported, suites, alpns, exts = (c.split("|") if c else [] for c in cols)
        if not stream:
            continue
        s = streams.setdefault(stream[0], {"version": None, "cipher": None, "alpn": None, "etm": False})
        if "2" in types:  # the ServerHello's own fields (a frame may carry more handshake messages)
            s["version"] = int((supported or versions)[-1], 0) if (supported or versions) else None
            s["cipher"] = int(suites[0], 0) if suites else None
            s["etm"] = s["etm"] or "22" in exts
        if alpns:
            s["alpn"] = alpns[-1]
    return Counter(_hello_text(s["version"], s["cipher"], s["alpn"], s["etm"]) for s in streams.values())


def _capture_one(v: Variant, ns: traffic._Netns, tmp: Path, port: int, log: Log) -> TlsCapture:
    """tcpdump on the server's port while one h2load run makes every connection, start to FIN."""
    dest = _dest(v)
    partial, keys = dest.with_suffix(".partial.pcap"), tmp / f"{v.key}.keys"
    partial.unlink(missing_ok=True)
    keys.unlink(missing_ok=True)
    urls = [f"https://{HOST}:{port}{p}" for p in URL_PATHS]
    argv = ["h2load", "-n", str(REQUESTS), "-c", str(CONNECTIONS), *v.h2load_args(),
            f"--connect-to=127.0.0.1:{port}", *urls]  # fmt: skip
    dump = traffic._Tcpdump(ns, partial, port)
    with contextlib.suppress(OSError):  # ahead of the load in the CPU queue, so it drops nothing
        os.setpriority(os.PRIO_PROCESS, dump.proc.pid, -10)
    try:
        env = dict(os.environ, SSLKEYLOGFILE=str(keys))
        r = subprocess.run(ns.cmd(argv), capture_output=True, text=True, timeout=900, env=env, check=False)
        time.sleep(0.5)  # the last FIN/ACK exchange reaches the file
    finally:
        stats = dump.stop()
    if r.returncode != 0:
        raise RuntimeError(f"h2load failed (exit {r.returncode}): {(r.stdout + r.stderr)[-500:]}")
    succeeded = _h2load_succeeded(r.stdout)
    if succeeded != REQUESTS:
        raise RuntimeError(f"h2load: {succeeded} of {REQUESTS} requests succeeded: {r.stdout[-500:]}")
    dropped = [s for s in stats if "dropped" in s and not s.startswith("0 ")]
    if dropped:
        partial.unlink(missing_ok=True)
        raise _Dropped(f"tcpdump dropped packets ({'; '.join(dropped)})")
    if not keys.exists():
        raise RuntimeError(f"h2load wrote no key log to {keys} (SSLKEYLOGFILE): is it built with OpenSSL?")
    sessions = _keylog_sessions(keys)
    hellos = _server_hellos(partial, keys, port)
    want = {v.negotiated(): CONNECTIONS}
    if dict(hellos) != want or sessions != CONNECTIONS:
        raise RuntimeError(
            f"{v.key}: the capture is not what was asked: ServerHellos {dict(hellos)} (want {want}); "
            f"key log secrets for {sessions} sessions (want {CONNECTIONS})"
        )
    packets, wire = traffic.count_pcap(partial)
    partial.replace(dest)
    shutil.copyfile(keys, dest.with_suffix(".keys"))
    info = TlsCapture(
        variant=v.key,
        version=CAPTURE_VERSION,
        path=str(dest),
        keys=str(dest.with_suffix(".keys")),
        port=port,
        packets=packets,
        wire_bytes=wire,
        file_bytes=dest.stat().st_size,
        created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        netns=ns.name is not None,
        mtu=ns.mtu,
        generator=shlex.join(["h2load", *argv[argv.index("h2load") + 1 :]]),
        requests_sent=succeeded,
        connections=CONNECTIONS,
        keylog_sessions=sessions,
        server_hellos=dict(hellos),
        tcpdump_stats=stats,
    )
    dest.with_suffix(".json").write_text(json.dumps(asdict(info), indent=2) + "\n")
    log(f"bench {NAME}: made {dest.name}: {packets:,} packets, {wire / 1e6:.1f} MB, {succeeded:,} requests")
    return info


class _Dropped(RuntimeError):
    """tcpdump lost packets: the attempt is discarded and made again."""


def _free_ports() -> tuple[int, int]:
    """Two free ports on the host loopback (the fixed ones are only sure to be free in our namespace)."""
    with socket.socket() as a, socket.socket() as b:
        a.bind(("127.0.0.1", 0))
        b.bind(("127.0.0.1", 0))
        return int(a.getsockname()[1]), int(b.getsockname()[1])


def _make(todo: list[Variant], log: Log) -> dict[str, TlsCapture]:
    for tool, pkg in (("nginx", "nginx-light"), ("h2load", "nghttp2-client"), ("tcpdump", "tcpdump")):
        if shutil.which(tool) is None:
            raise RuntimeError(f"{tool} is not installed (apt-get install {pkg})")
    use_netns = os.geteuid() == 0 and shutil.which("ip") is not None
    if not use_netns:
        log(f"bench {NAME}: not root: capturing on the host loopback (MTU 64 KiB: few, large segments)")
    traffic.OUT_DIR.mkdir(parents=True, exist_ok=True)
    made: dict[str, TlsCapture] = {}
    with (
        tempfile.TemporaryDirectory(prefix="podshark-bench-tls-") as tmpname,
        traffic._Netns(use_netns, 1500) as ns,
    ):
        tmp = Path(tmpname)
        tmp.chmod(0o755)
        if ns.name:
            # loopback hands tcpdump GSO super-segments of up to 64 KiB even at MTU 1500; cap GSO at
            # the MTU so the file holds wire-sized segments, as a capture on a pod's veth would
            r = subprocess.run(["ip", "-n", ns.name, "link", "set", "lo", "gso_max_size", "1500"],
                               capture_output=True, text=True, check=False)  # fmt: skip
            if r.returncode != 0:
                log(f"bench {NAME}: could not cap GSO on the namespace's loopback: {r.stderr.strip()}")
        port13, port12 = (TLS13_PORT, TLS12_PORT) if ns.name else _free_ports()
        with _nginx(ns, tmp, port13, port12):
            for v in todo:
                port = port13 if v.tls13 else port12
                for attempt in range(1, MAX_ATTEMPTS + 1):
                    log(f"bench {NAME}: capturing {v.key} (attempt {attempt})")
                    try:
                        made[v.key] = _capture_one(v, ns, tmp, port, log)
                        break
                    except _Dropped as e:
                        if attempt == MAX_ATTEMPTS:
                            raise RuntimeError(
                                f"{v.key}: {e} in {MAX_ATTEMPTS} attempts: the machine is too busy; "
                                "try again when it is quieter"
                            ) from None
                        log(f"bench {NAME}: {e}; capturing again")
    return made


def captures(regen: bool = False, log: Log = print) -> list[tuple[Variant, TlsCapture]]:
    """Every variant's capture: the cached ones, the missing ones (or all, with ``regen``) made now."""
    cached = {} if regen else {v.key: c for v in VARIANTS if (c := _load_cached(v)) is not None}
    todo = [v for v in VARIANTS if v.key not in cached]
    for v in VARIANTS:
        if v.key in cached:
            log(f"bench {NAME}: reusing {_dest(v)} (--regen to make a new one)")
    if todo:
        cached.update(_make(todo, log))
        wanted = {_dest(v).stem for v in VARIANTS}
        for stale in traffic.OUT_DIR.glob("tls-keylog-v*.*"):
            if stale.name.split(".")[0] not in wanted:
                stale.unlink()
    return [(v, cached[v.key]) for v in VARIANTS]


# ------------------------------------------------------------------------------------------ tshark


AGG = "\x1f"  # tshark's separator between occurrences of a field: in no method or status
#: loopback under load drops and retransmits, and the capture then has segments out of order;
#: tshark's default gives up on such a connection (a few hundred responses of one connection
#: missing), podshark's reassembly does not, so tshark is timed with this on (it costs it nothing)
OOO_PREF = "tcp.reassemble_out_of_order:TRUE"


def tshark_argv(v: Variant, cap: TlsCapture, pcap: Path | None = None) -> list[str]:
    """The timed command: one line of fields per packet with an HTTP message (or HTTP/2 HEADERS)."""
    if v.h2:
        fields = ("http2.headers.method", "http2.headers.status")
    else:
        fields = ("http.request.method", "http.response.code")
    return ["tshark", "-r", str(pcap or cap.pcap), "-o", f"tls.keylog_file:{cap.keys}", "-o", OOO_PREF,
            "-d", f"tcp.port=={cap.port},tls", "-Y", "http2" if v.h2 else "http", "-T", "fields",
            "-E", f"aggregator={AGG}", "-e", fields[0], "-e", fields[1]]  # fmt: skip


@dataclass
class TsharkCounts:
    requests: int = 0  # methods printed
    responses: int = 0  # statuses printed


def count_tshark(argv: list[str]) -> TsharkCounts:
    r = subprocess.run(argv, capture_output=True, timeout=1800, check=False)
    if r.returncode != 0:
        raise RuntimeError(f"tshark failed (exit {r.returncode}): {_tail(r.stderr)}")
    counts = TsharkCounts()
    for line in r.stdout.decode(errors="replace").splitlines():
        method, _, status = line.partition("\t")
        counts.requests += len([m for m in method.split(AGG) if m])
        counts.responses += len([s for s in status.strip().split(AGG) if s])
    return counts


def _empty_like(pcap: Path, dest: Path) -> Path:
    """A capture with the same header and no packets: tshark's start-up alone."""
    with pcap.open("rb") as f:
        dest.write_bytes(f.read(24))
    return dest


# ---------------------------------------------------------------------------------------- podshark


@dataclass
class PassCounts:
    """What one podshark pass yielded."""

    calls: int = 0
    decrypted: int = 0  # calls of the variant's protocol from the key log
    with_response: int = 0  # of those
    opaque: int = 0  # tls calls flagged encrypted (a session without keys)
    protocols: Counter[str] = field(default_factory=Counter)

    def key(self) -> tuple[int, int, int, int]:
        return (self.calls, self.decrypted, self.with_response, self.opaque)


def podshark_pass(v: Variant, cap: TlsCapture, with_keylog: bool) -> tuple[float, float, PassCounts]:
    """One in-process pass over the capture: (wall seconds, CPU seconds, what it yielded).

    Reading the key log is part of the decrypting pass, as it is of ``podshark dissect --keylog``.
    """
    counts = PassCounts()
    protocol = v.protocol
    gc.collect()
    cpu0, t0 = time.process_time(), time.perf_counter()
    keylog = KeyLog.from_path(cap.keylog) if with_keylog else None
    for call in dissect_path(cap.pcap, keylog=keylog):
        counts.calls += 1
        counts.protocols[call.protocol] += 1
        if call.protocol == protocol and call.info.get("tls_source") == "keylog":
            counts.decrypted += 1
            counts.with_response += call.response is not None
        elif call.protocol == "tls" and "encrypted" in call.flags:
            counts.opaque += 1
    return time.perf_counter() - t0, time.process_time() - cpu0, counts


# ---------------------------------------------------------------------------------------- measuring


@dataclass
class VariantResult:
    variant: Variant
    capture: TlsCapture
    tshark: Timing = field(default_factory=Timing)
    tshark_startup: Timing = field(default_factory=Timing)
    keylog: Timing = field(default_factory=Timing)
    opaque: Timing = field(default_factory=Timing)
    tshark_counts: TsharkCounts = field(default_factory=TsharkCounts)
    keylog_counts: PassCounts = field(default_factory=PassCounts)
    opaque_counts: PassCounts = field(default_factory=PassCounts)

    @property
    def requests(self) -> int:
        return self.keylog_counts.decrypted

    def mbps(self, t: Timing, best: bool = False) -> float:
        return self.capture.wire_bytes / (t.best if best else t.median) / 1e6

    def calls_per_s(self, t: Timing) -> float:
        return self.requests / t.median

    def vs_tshark(self, how: str = "median") -> float:
        """podshark's throughput over tshark's (both decrypting): above 1, podshark is faster."""
        return _ratio(self.tshark, self.keylog, how)

    def vs_opaque(self, how: str = "median") -> float:
        """The decrypting pass's time over the opaque pass's: what the key log multiplies it by."""
        return _ratio(self.keylog, self.opaque, how)


def _ratio(num: Timing, den: Timing, how: str) -> float:
    pick: Callable[[Timing], float] = {
        "median": lambda t: t.median,
        "best": lambda t: t.best,
        "cpu": lambda t: statistics.median(t.cpu),
    }[how]
    d = pick(den)
    return pick(num) / d if d > 0 else float("nan")


def _check(res: VariantResult) -> None:
    """The sanity checks (see the module docstring): a mismatch is a broken benchmark, not a figure."""
    v, cap, tc, kc, oc = res.variant, res.capture, res.tshark_counts, res.keylog_counts, res.opaque_counts
    problems = []
    if kc.decrypted != tc.requests or kc.decrypted != cap.requests_sent:
        problems.append(
            f"podshark decrypted {kc.decrypted:,} {v.protocol} calls, tshark found {tc.requests:,} requests, "
            f"h2load made {cap.requests_sent:,}"
        )
    if kc.with_response != tc.responses:
        problems.append(f"podshark paired {kc.with_response:,} responses, tshark found {tc.responses:,}")
    if kc.opaque:
        problems.append(f"{kc.opaque} sessions stayed opaque with the key log")
    if oc.opaque != cap.connections or oc.protocols.get(v.protocol):
        problems.append(
            f"the opaque pass found {oc.opaque} encrypted tls calls for {cap.connections} connections "
            f"(calls by protocol: {dict(oc.protocols)})"
        )
    if problems:
        raise RuntimeError(
            f"{v.key}: the passes disagree, so their times would not compare: {'; '.join(problems)} "
            f"(capture {cap.pcap}, key log {cap.keylog}; `podshark dissect FILE --keylog KEYS` shows "
            "which sessions failed, --regen makes a new capture)"
        )


def measure_variant(v: Variant, cap: TlsCapture, runs: int, tmp: Path, log: Log) -> VariantResult:
    res = VariantResult(v, cap)
    log(f"bench {NAME}: {v.key}: warm-up runs ({cap.packets:,} packets, {cap.wire_bytes / 1e6:.1f} MB)")
    res.tshark_counts = count_tshark(tshark_argv(v, cap))
    _, _, res.keylog_counts = podshark_pass(v, cap, with_keylog=True)
    _, _, res.opaque_counts = podshark_pass(v, cap, with_keylog=False)
    _check(res)
    empty = _empty_like(cap.pcap, tmp / f"{v.key}-empty.pcap")

    def tshark() -> None:
        timed_run(tshark_argv(v, cap), res.tshark, timeout=1800)
        if res.tshark.error:
            raise RuntimeError(f"{v.key}: tshark failed: {res.tshark.error}")

    def ours(with_keylog: bool) -> Callable[[], None]:
        def one() -> None:
            wall, cpu, counts = podshark_pass(v, cap, with_keylog)
            want = res.keylog_counts if with_keylog else res.opaque_counts
            if counts.key() != want.key():
                raise RuntimeError(f"{v.key}: a timed pass counted {counts.key()}, its warm-up {want.key()}")
            t = res.keylog if with_keylog else res.opaque
            t.wall.append(wall)
            t.cpu.append(cpu)

        return one

    steps = [tshark, ours(True), ours(False)]
    for i in range(runs):
        log(f"bench {NAME}: {v.key}: timed round {i + 1}/{runs}")
        for step in steps[i % 3 :] + steps[: i % 3]:  # rotate, so no pass always follows the same one
            step()
        timed_run(tshark_argv(v, cap, pcap=empty), res.tshark_startup, timeout=120)
    return res


@dataclass
class Result:
    when: str
    machine: dict[str, str]
    load_end: str
    revision: str
    runs: int
    variants: list[VariantResult]


def measure(runs: int = 3, regen: bool = False, log: Log = print) -> Result:
    if shutil.which("tshark") is None:
        raise RuntimeError("tshark is not installed (apt-get install tshark)")
    caps = captures(regen=regen, log=log)
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    mach, revision = machine(), podshark_revision()
    with tempfile.TemporaryDirectory(prefix="podshark-bench-tls-") as tmp:
        results = [measure_variant(v, cap, runs, Path(tmp), log) for v, cap in caps]
    return Result(when, mach, _loadavg(), revision, runs, results)


def _loadavg() -> str:
    try:
        return Path("/proc/loadavg").read_text().split()[0]
    except (OSError, IndexError):
        return "?"


# ---------------------------------------------------------------------------------------- rendering


def _s(t: Timing) -> str:
    return f"{t.median:.2f}" if t.ok else "-"


def _headline(r: VariantResult) -> str:
    return (
        f"**podshark {r.mbps(r.keylog):.1f} MB/s, {r.calls_per_s(r.keylog):,.0f} calls/s: "
        f"{r.vs_tshark():.2f}x tshark** ({r.mbps(r.tshark):.1f} MB/s); decrypting takes "
        f"**{r.vs_opaque():.2f}x the opaque pass's time** ({r.mbps(r.opaque):.1f} MB/s)"
    )


def _tables(res: Result) -> list[str]:
    caps = [
        "| capture | negotiated (tshark, every ServerHello) | connections | requests: h2load / tshark / "
        "podshark (responses) | packets | on the wire |",
        "|---|---|---|---|---|---|",
    ]
    times = [
        "| capture | pass | median s | best s | CPU s (median) | MB/s (median) | MB/s (best) | calls/s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    ratios = [
        "| capture | podshark / tshark throughput: median, best, CPU "
        "| key log / opaque time: median, best, CPU |",
        "|---|---|---|",
    ]
    for r in res.variants:
        cap, tc, kc = r.capture, r.tshark_counts, r.keylog_counts
        named = f"{r.variant.iana} ({r.variant.cipher:#06x})"
        hello = "; ".join(
            f"{text.replace(f'suite {r.variant.cipher:#06x}', named)} ×{n}"
            for text, n in cap.server_hellos.items()
        )
        caps.append(
            f"| `{Path(cap.path).name}` | {hello} | {cap.connections} | "
            f"{_n(cap.requests_sent)} / {_n(tc.requests)} ({_n(tc.responses)}) / {_n(kc.decrypted)} "
            f"({_n(kc.with_response)}) | {_n(cap.packets)} | {cap.wire_bytes / 1e6:.1f} MB |"
        )
        for label, t, calls in (
            ("tshark with the key log", r.tshark, True),
            ("podshark with the key log", r.keylog, True),
            ("podshark without (opaque)", r.opaque, False),
        ):
            cpu = statistics.median(t.cpu)
            times.append(
                f"| {r.variant.key} | {label} | {t.median:.2f} | {t.best:.2f} | {cpu:.2f} | "
                f"{r.mbps(t):.1f} | {r.mbps(t, best=True):.1f} | "
                f"{f'{r.calls_per_s(t):,.0f}' if calls else '-'} |"
            )
        times.append(
            f"| {r.variant.key} | tshark start-up (same command, empty capture; in tshark's times) | "
            f"{_s(r.tshark_startup)} | {r.tshark_startup.best:.2f} | "
            f"{statistics.median(r.tshark_startup.cpu):.2f} | | | |"
        )
        ratios.append(
            f"| {r.variant.key} | **{r.vs_tshark():.2f}x**, {r.vs_tshark('best'):.2f}x, "
            f"{r.vs_tshark('cpu'):.2f}x | **{r.vs_opaque():.2f}x**, {r.vs_opaque('best'):.2f}x, "
            f"{r.vs_opaque('cpu'):.2f}x |"
        )
    return [*caps, "", *times, "", *ratios]


def history_line(res: Result, old: list[str]) -> str:
    parts = []
    for r in res.variants:
        label = f"{r.variant.key} podshark/tshark"
        ratio = r.vs_tshark()
        parts.append(
            f"{label} {ratio:.2f}{vs_previous(ratio, previous_figure(old, label))}, "
            f"key log/opaque {r.vs_opaque():.2f}, {r.mbps(r.keylog):.1f} MB/s"
        )
    head = f"- {res.when} ({res.revision}, {CAPTURE_VERSION}, load {res.machine['load']})"
    return f"{head}: {'; '.join(parts)}"


def render(res: Result, previous_section: str | None) -> str:
    m = res.machine
    first = res.variants[0].capture
    where = f"network namespace, loopback MTU {first.mtu}, GSO 1500" if first.netns else "host loopback"
    rows = [
        ("date", res.when),
        ("machine", f"{m['nproc']} CPUs, {m['cpu']}, Python {m['python']}, TShark {m['tshark']} "
                    f"(load average {m['load']} at start, {res.load_end} at the end)"),
        ("podshark revision", res.revision),
        ("captures", f"nginx (1 worker, EC P-256 certificate) and `{first.generator.split(' --')[0]} ...` "
                     f"with SSLKEYLOGFILE ({CONNECTIONS} connections; HTTP/2 with up to {H2_STREAMS} "
                     f"streams at once), {where}; `bench/out/{CAPTURE_VERSION}-*.pcap` and `.keys`"),
        *((r.variant.title, _headline(r)) for r in res.variants),
    ]  # fmt: skip
    old = history_lines(previous_section)
    return render_section(
        f"## {NAME}: {TITLE}",
        (
            "On each capture, in the same run: `tshark -r FILE -o tls.keylog_file:KEYS -o "
            f"{OOO_PREF} -d tcp.port==PORT,tls -Y http -T fields -e http.request.method "
            "-e http.response.code` (HTTP/2: "
            "`-Y http2`, `-e http2.headers.method -e http2.headers.status`) with stdout to /dev/null, "
            "against podshark in the benchmark's process: `KeyLog.from_path(KEYS)` and "
            "`dissect_path(FILE, keylog=...)` with every call iterated, and the same without a key log "
            "(each session one opaque `tls` call). One untimed warm-up of each, whose counts must agree "
            f"(podshark's decrypted calls = tshark's requests = h2load's), then {res.runs} timed rounds "
            "in rotating order; wall clock, median and best, CPU time beside them. MB/s = bytes on the "
            "wire / seconds; calls/s = requests / seconds. podshark / tshark is a throughput ratio "
            "(above 1: podshark is faster); key log / opaque is a time ratio (what decryption "
            "multiplies podshark's pass by). Made by `python -m bench tls_keylog`."
        ),
        rows,
        keep(old, history_line(res, old)),
        tables=_tables(res),
    )


def summary(res: Result) -> str:
    lines = [f"{NAME}: load {res.machine['load']} at start, {res.load_end} at the end"]
    for r in res.variants:
        cap = r.capture
        lines.append(
            f"  {r.variant.key}: {cap.packets:,} packets, {cap.wire_bytes / 1e6:.1f} MB, "
            f"{r.requests:,} calls decrypted = tshark's {r.tshark_counts.requests:,} requests"
        )
        for label, t in (("tshark", r.tshark), ("podshark keylog", r.keylog), ("podshark opaque", r.opaque)):
            runs = ", ".join(f"{w:.2f}" for w in t.wall)
            lines.append(
                f"    {label:16} median {t.median:.2f} s, best {t.best:.2f} s ({runs}) -> "
                f"{r.mbps(t):.1f} MB/s"
            )
        lines.append(
            f"    podshark/tshark {r.vs_tshark():.2f}x (best {r.vs_tshark('best'):.2f}x, "
            f"CPU {r.vs_tshark('cpu'):.2f}x); key log/opaque {r.vs_opaque():.2f}x "
            f"(best {r.vs_opaque('best'):.2f}x, CPU {r.vs_opaque('cpu'):.2f}x); tshark start-up "
            f"{r.tshark_startup.median:.2f} s"
        )
    return "\n".join(lines)


def run(previous_section: str | None, runs: int = 3, regen: bool = False, log: Log = print) -> str:
    """Entry point used by ``python -m bench``: measure, print the summary, return the new section."""
    res = measure(runs=runs, regen=regen, log=log)
    print(summary(res), flush=True)
    return render(res, previous_section)


if __name__ == "__main__":  # python -m bench.tls_keylog: just (re)make the captures
    for _variant, made in captures(regen=True):
        print(json.dumps(asdict(made), indent=2))
