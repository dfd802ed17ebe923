"""The eBPF TLS tracer (`capture.ebpf.tlstrace`) against real TLS: OpenSSL's plaintext, per connection.

The truth comes from the processes at both ends, never from the tracer: a Python ssl server
(separate process) logs, per connection, its peer and every plaintext byte it received and sent;
the Python ssl client (separate process) prints, per connection, its socket's getsockname() /
getpeername() and every byte it sent and received; curl prints its own ``%{local_port}``. Both
ends link the system's ``libssl.so.3`` (Python's ``_ssl`` and libcurl; checked with ldd), so one
attachment of that file traces both. The tracer's streams, joined by stream offset per
(pid, SSL*, direction), must equal those bytes exactly, with the right pid, name, role and 4-tuple.

Draining once the processes say they are done is complete: a uretprobe runs before the traced call
returns to its caller, so every record of a call is in the ring before the process can report it.
Other processes on the machine may use TLS while these tests run: every check selects events by
the pids this test started.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from capture.ebpf.libbpf import BpfError
from capture.ebpf.tlstrace import (
    DIRECTION_READ,
    DIRECTION_WRITE,
    HEADER,
    KIND_CLOSE,
    KIND_DATA,
    KIND_SNI,
    ROLE_CLIENT,
    ROLE_SERVER,
    TlsClose,
    TlsData,
    TlsEvent,
    TlsSni,
    TlsTracer,
    decode_event,
)
from tests.capture.tlsnginx import nginx_tls_conf
from tests.dissect.test_tls_handshakes import cert_files
from tests.realtraffic import NGINX, netns_pair

CURL = shutil.which("curl")
LIBSSL = "/lib/x86_64-linux-gnu/libssl.so.3"
BIG_BODY = b"".join(b"%07d\n" % i for i in range(131072))  # 1 MiB, every line different
SERVER_NAME = "psk-tlssrv"
CLIENT_NAME = "psk-tlscli"

#: An HTTP/1.1 server over Python's ssl: GET /big answers BIG_BODY, other GETs ``path=<target>``,
#: a POST ``got <n> bytes``. Logs one JSON line per connection when it ends (after the SSL object
#: is freed): its local and peer address and every plaintext byte received and sent.
SERVER = r"""
import base64, ctypes, json, socket, ssl, sys, threading
cert, key, host, port, name, log_path = sys.argv[1:7]
ctypes.CDLL(None).prctl(15, name.encode(), 0, 0, 0)
BIG = b"".join(b"%07d\n" % i for i in range(131072))
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(cert, key)
listener = socket.create_server((host, int(port)), backlog=64)
lock = threading.Lock()

def serve(raw):
    received, sent = bytearray(), bytearray()
    local, peer = raw.getsockname()[:2], raw.getpeername()[:2]
    try:
        with ctx.wrap_socket(raw, server_side=True) as s:
            buf = b""
            while True:
                while b"\r\n\r\n" not in buf:
                    data = s.recv(65536)
                    if not data:
                        return
                    received += data
                    buf += data
                head, _, buf = buf.partition(b"\r\n\r\n")
                lines = head.split(b"\r\n")
                method, target, _ = lines[0].split(b" ", 2)
                length = 0
                for line in lines[1:]:
                    k, _, v = line.partition(b":")
                    if k.strip().lower() == b"content-length":
                        length = int(v)
                while len(buf) < length:
                    data = s.recv(65536)
                    if not data:
                        return
                    received += data
                    buf += data
                body_in, buf = buf[:length], buf[length:]
                if method == b"POST":
                    body = b"got %d bytes" % len(body_in)
                else:
                    body = BIG if target == b"/big" else b"path=" + target
                resp = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
                resp += b"Content-Length: %d\r\n\r\n" % len(body)
                s.sendall(resp + body)
                sent += resp + body
    except (OSError, ValueError):
        pass
    finally:
        record = {"local": list(local), "peer": list(peer),
                  "received": base64.b64encode(received).decode(), "sent": base64.b64encode(sent).decode()}
        with lock, open(log_path, "a") as log:
            log.write(json.dumps(record) + "\n")

print(listener.getsockname()[1], flush=True)
while True:
    conn, _ = listener.accept()
    threading.Thread(target=serve, args=(conn,), daemon=True).start()
"""

#: A Python ssl client: `conns` connections, all established before any request (so they are in
#: flight together), each sending the requests of `spec` ([method, target, body], the target made
#: unique per connection); prints per connection its tuple and every plaintext byte sent and received.
CLIENT = r"""
import base64, ctypes, json, socket, ssl, sys, threading
host, port, name = sys.argv[1], int(sys.argv[2]), sys.argv[3]
conns, spec = int(sys.argv[4]), json.loads(sys.argv[5])
ctypes.CDLL(None).prctl(15, name.encode(), 0, 0, 0)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
barrier = threading.Barrier(conns)
results = [None] * conns

def run(i):
    s = ctx.wrap_socket(socket.create_connection((host, port)), server_hostname="psk-test")
    local, remote = s.getsockname()[:2], s.getpeername()[:2]
    sent, received, buf = bytearray(), bytearray(), b""
    barrier.wait()
    for method, target, body in spec:
        body = body.encode()
        req = (f"{method} {target}{'?c=%d' % i if conns > 1 else ''} HTTP/1.1\r\nHost: psk-test\r\n"
               f"User-Agent: {name}\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body
        s.sendall(req)
        sent += req
        while b"\r\n\r\n" not in buf:
            data = s.recv(65536)
            assert data, "server closed"
            received += data
            buf += data
        head, _, rest = buf.partition(b"\r\n\r\n")
        fields = dict(line.split(b":", 1) for line in head.split(b"\r\n")[1:])
        length = int(fields[b"Content-Length"])
        while len(rest) < length:
            data = s.recv(65536)
            assert data, "server closed"
            received += data
            rest += data
        buf = rest[length:]
    s.close()
    results[i] = {"local": list(local), "remote": list(remote),
                  "sent": base64.b64encode(sent).decode(), "received": base64.b64encode(received).decode()}

threads = [threading.Thread(target=run, args=(i,)) for i in range(conns)]
for t in threads:
    t.start()
for t in threads:
    t.join()
print(json.dumps(results), flush=True)
"""


# --- fixtures ---------------------------------------------------------------------------------------


def _tracer_unavailable() -> str | None:
    if os.geteuid() != 0:
        return "needs root (or CAP_BPF+CAP_PERFMON) to load eBPF"
    if not os.path.exists(LIBSSL):
        return f"{LIBSSL} is not installed"
    try:
        TlsTracer().close()
    except BpfError as exc:
        return f"the TLS tracer cannot load here: {exc}"
    return None


@pytest.fixture(scope="module")
def tracer_ok() -> None:
    reason = _tracer_unavailable()
    if reason:
        pytest.skip(reason)
    python_ssl = subprocess.run(
        ["ldd", _ssl_module()], capture_output=True, text=True, check=False
    ).stdout  # the truth of "Python's ssl uses the system libssl" for this interpreter
    if os.path.realpath(LIBSSL) not in {os.path.realpath(p) for p in python_ssl.split() if "libssl" in p}:
        pytest.skip(f"this Python's _ssl does not link {LIBSSL}: {python_ssl.strip()}")


def _ssl_module() -> str:
    import _ssl

    return str(_ssl.__file__)


@pytest.fixture(scope="module")
def certs() -> tuple[Path, Path]:
    """A self-signed certificate (EC P-256, 127.0.0.1 among its names) and its key."""
    cert, key = cert_files()
    return Path(cert), Path(key)


@contextlib.contextmanager
def tracer(**kwargs: object) -> Iterator[TlsTracer]:
    t = TlsTracer(**kwargs)  # type: ignore[arg-type]
    try:
        assert t.attach(LIBSSL) is None
        yield t
    finally:
        t.close()


@dataclass
class Server:
    proc: subprocess.Popen[str]
    port: int
    log: Path

    def connections(self, count: int, timeout: float = 20) -> list[dict[str, Any]]:
        """The server's records of its first `count` connections (waits until they have ended)."""
        deadline = time.monotonic() + timeout
        while True:
            text = self.log.read_text() if self.log.exists() else ""
            lines = text.split("\n")[:-1]  # whole lines only: the server may be writing the next one
            if len(lines) >= count:
                return [json.loads(line) for line in lines]
            assert self.proc.poll() is None, "the TLS server died"
            assert time.monotonic() < deadline, f"{len(lines)} of {count} connections logged"
            time.sleep(0.02)


@contextlib.contextmanager
def tls_server(
    certs: tuple[Path, Path], *, host: str = "127.0.0.1", prefix: list[str] | None = None
) -> Iterator[Server]:
    workdir = Path(tempfile.mkdtemp(prefix="psk-tlssrv-"))
    cert, key = certs
    proc = subprocess.Popen(
        [
            *(prefix or []),
            sys.executable,
            "-c",
            SERVER,
            str(cert),
            str(key),
            host,
            "0",
            SERVER_NAME,
            str(workdir / "log.jsonl"),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        port = proc.stdout.readline().strip()
        assert port.isdigit(), f"server did not start (exit {proc.poll()})"
        yield Server(proc, int(port), workdir / "log.jsonl")
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        shutil.rmtree(workdir, ignore_errors=True)


@dataclass
class ClientConn:
    local: tuple[str, int]
    remote: tuple[str, int]
    sent: bytes
    received: bytes


def python_client(
    host: str, port: int, spec: list[list[str]], *, conns: int = 1, prefix: list[str] | None = None
) -> tuple[int, list[ClientConn]]:
    """Run the Python ssl client to completion: (its pid, its connections as it saw them)."""
    proc = subprocess.Popen(
        [
            *(prefix or []),
            sys.executable,
            "-c",
            CLIENT,
            host,
            str(port),
            CLIENT_NAME,
            str(conns),
            json.dumps(spec),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    results = [
        ClientConn(
            (r["local"][0], r["local"][1]),
            (r["remote"][0], r["remote"][1]),
            base64.b64decode(r["sent"]),
            base64.b64decode(r["received"]),
        )
        for r in json.loads(out)
    ]
    return proc.pid, results


# --- joining the tracer's output ------------------------------------------------------------------


@dataclass
class Stream:
    """What the tracer reported for one connection of one process (pid, SSL*, until its SSL_free):
    both directions joined, and the metadata every chunk carried."""

    pid: int
    ssl: int
    comms: set[str] = field(default_factory=set)
    roles: set[int] = field(default_factory=set)
    tuples: set[tuple[tuple[str, int] | None, tuple[str, int] | None]] = field(default_factory=set)
    netns: set[int] = field(default_factory=set)
    data: dict[int, bytearray] = field(
        default_factory=lambda: {DIRECTION_WRITE: bytearray(), DIRECTION_READ: bytearray()}
    )
    position: dict[int, int] = field(default_factory=lambda: {DIRECTION_WRITE: 0, DIRECTION_READ: 0})
    cut: dict[int, int] = field(default_factory=lambda: {DIRECTION_WRITE: 0, DIRECTION_READ: 0})
    chunks: list[TlsData] = field(default_factory=list)
    close: TlsClose | None = None
    sni: str | None = None

    @property
    def written(self) -> bytes:
        return bytes(self.data[DIRECTION_WRITE])

    @property
    def read(self) -> bytes:
        return bytes(self.data[DIRECTION_READ])


def streams(events: Iterable[TlsEvent], pids: set[int]) -> list[Stream]:
    """Join data chunks per (pid, ssl, direction) in arrival order, asserting that each chunk starts
    exactly where the previous one (plus any cut tail) ended. A close ends the (pid, ssl): data after
    it is a new connection whose SSL* got the same address from the allocator."""
    done: list[Stream] = []
    open_: dict[tuple[int, int], Stream] = {}
    for event in events:
        if event.pid not in pids:
            continue
        key = (event.pid, event.ssl)
        s = open_.get(key)
        if s is None:
            s = open_[key] = Stream(event.pid, event.ssl)
        if isinstance(event, TlsClose):
            s.close = event
            done.append(open_.pop(key))
            continue
        if isinstance(event, TlsSni):
            s.sni = event.name
            continue
        s.comms.add(event.comm)
        s.roles.add(event.role)
        s.tuples.add((event.local, event.remote))
        s.netns.add(event.netns)
        s.chunks.append(event)
        d = event.direction
        assert event.stream_offset == s.position[d], (event.stream_offset, s.position[d], event)
        s.data[d] += event.data
        s.position[d] = event.stream_offset + len(event.data)
        if event.offset + len(event.data) == event.length - event.cut:  # the call's last chunk
            s.position[d] += event.cut
            s.cut[d] += event.cut
    return done + list(open_.values())


def only(found: Iterable[Stream], what: str) -> Stream:
    matches = list(found)
    assert len(matches) == 1, f"{what}: {len(matches)} streams"
    return matches[0]


def by_tuple(found: list[Stream], pid: int, local: tuple[str, int], remote: tuple[str, int]) -> Stream:
    return only(
        (s for s in found if s.pid == pid and s.tuples == {(local, remote)}),
        f"pid {pid} {local}->{remote}",
    )


def check_conn(
    found: Stream, *, pid: int, comm: str, role: int, written: bytes, read: bytes, netns: int | None = None
) -> None:
    """One traced connection end equals the truth: name, role, both byte streams, closed once at the end."""
    assert (found.pid, found.comms, found.roles) == (pid, {comm}, {role})
    assert found.written == written
    assert found.read == read
    assert found.cut == {DIRECTION_WRITE: 0, DIRECTION_READ: 0}
    assert found.close is not None, "SSL_free gave a close"
    assert (found.close.written, found.close.read) == (len(written), len(read))
    if netns is not None:
        assert found.netns == {netns}


def netns_inode(pid: int) -> int:
    return os.stat(f"/proc/{pid}/ns/net").st_ino


# --- the tests ----------------------------------------------------------------------------------------

SMALL_SPEC = [["GET", "/hello", ""], ["POST", "/submit", "x" * 3000], ["GET", "/again", ""]]


@pytest.mark.root
@pytest.mark.xdist_group("capture-tlstrace")
@pytest.mark.parametrize("hook", ["sock", "syscall"])
def test_curl_and_python_client(tracer_ok: None, certs: tuple[Path, Path], hook: str) -> None:
    """curl (SSL_set_bio: the tuple comes from the socket hook) and a Python client (SSL_set_fd)."""
    if CURL is None:
        pytest.skip("curl is not installed")
    with tracer(tuple_hook=hook) as t, tls_server(certs) as server:
        assert t.tuple_source == {"sock": "sock_send_length/sock_recv_length", "syscall": "sys_enter"}[hook]
        started = time.time_ns()
        base = f"https://127.0.0.1:{server.port}"
        curl = subprocess.Popen(
            [
                CURL,
                "-sk",
                "--http1.1",
                "-o",
                "/dev/null",
                "-o",
                "/dev/null",
                "-w",
                "%{local_port}\n",
                f"{base}/one",
                f"{base}/two",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        out, err = curl.communicate(timeout=30)
        assert curl.returncode == 0, err
        curl_ports = {int(p) for p in out.split()}
        assert len(curl_ports) == 1, "curl reused its connection for both URLs"
        client_pid, (conn,) = python_client("127.0.0.1", server.port, SMALL_SPEC)
        records = server.connections(2)
        events = t.drain()
        finished = time.time_ns()

        found = streams(events, {curl.pid, client_pid, server.proc.pid})
        server_ep = ("127.0.0.1", server.port)
        curl_ep = ("127.0.0.1", curl_ports.pop())
        (curl_record,) = [r for r in records if tuple(r["peer"]) == curl_ep]
        srv_received = base64.b64decode(curl_record["received"])
        srv_sent = base64.b64decode(curl_record["sent"])
        assert srv_received.startswith(b"GET /one HTTP/1.1\r\n") and b"GET /two HTTP/1.1\r\n" in srv_received
        check_conn(
            by_tuple(found, curl.pid, curl_ep, server_ep),
            pid=curl.pid,
            comm="curl",
            role=ROLE_CLIENT,
            written=srv_received,
            read=srv_sent,
        )
        check_conn(
            by_tuple(found, server.proc.pid, server_ep, curl_ep),
            pid=server.proc.pid,
            comm=SERVER_NAME,
            role=ROLE_SERVER,
            written=srv_sent,
            read=srv_received,
        )

        assert conn.remote == server_ep
        check_conn(
            by_tuple(found, client_pid, conn.local, conn.remote),
            pid=client_pid,
            comm=CLIENT_NAME,
            role=ROLE_CLIENT,
            written=conn.sent,
            read=conn.received,
        )
        check_conn(
            by_tuple(found, server.proc.pid, conn.remote, conn.local),
            pid=server.proc.pid,
            comm=SERVER_NAME,
            role=ROLE_SERVER,
            written=conn.received,
            read=conn.sent,
        )
        assert conn.sent.count(b"HTTP/1.1\r\n") == len(SMALL_SPEC)

        ours = [e for e in events if e.pid in (curl.pid, client_pid, server.proc.pid)]
        assert all(started <= e.ts <= finished for e in ours), "timestamps are wall-clock ns"
        assert [e.ts for e in ours] == sorted(e.ts for e in ours), "ring order is time order"
        assert {e.tid for e in ours if e.pid == curl.pid} == {curl.pid}  # curl is single-threaded
        counters = t.counters()
        assert counters["drops"] == 0 and counters["malformed"] == 0 and counters["read_errors"] == 0


@pytest.mark.root
@pytest.mark.xdist_group("capture-tlstrace")
def test_set_fd_alone_names_python_but_not_curl(tracer_ok: None, certs: tuple[Path, Path]) -> None:
    """With no socket hook only SSL_set_fd gives tuples: the Python server (SSL_set_fd) has one,
    curl (SSL_set_bio) has none, and each of curl's calls is counted in ``no_tuple``."""
    if CURL is None:
        pytest.skip("curl is not installed")
    with tracer(tuple_hook="none") as t, tls_server(certs) as server:
        before = t.counters()["no_tuple"]
        curl = subprocess.Popen(
            [
                CURL,
                "-sk",
                "--http1.1",
                "-o",
                "/dev/null",
                "-w",
                "%{local_port}",
                f"https://127.0.0.1:{server.port}/x",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        out, err = curl.communicate(timeout=30)
        assert curl.returncode == 0, err
        (record,) = server.connections(1)
        found = streams(t.drain(), {server.proc.pid, curl.pid})
        curl_ep, server_ep = ("127.0.0.1", int(out)), ("127.0.0.1", server.port)
        srv = by_tuple(found, server.proc.pid, server_ep, curl_ep)
        check_conn(
            srv,
            pid=server.proc.pid,
            comm=SERVER_NAME,
            role=ROLE_SERVER,
            written=base64.b64decode(record["sent"]),
            read=base64.b64decode(record["received"]),
        )
        curl_stream = only((s for s in found if s.pid == curl.pid), "curl's stream")
        check_conn(
            curl_stream, pid=curl.pid, comm="curl", role=ROLE_CLIENT, written=srv.read, read=srv.written
        )
        assert curl_stream.tuples == {(None, None)} and curl_stream.netns == {0}
        assert t.counters()["no_tuple"] - before >= len(curl_stream.chunks)


H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


@contextlib.contextmanager
def nginx_tls(certs: tuple[Path, Path]) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    """Debian's nginx serving HTTPS (HTTP/1.1 and HTTP/2) on 127.0.0.1: (master process, port)."""
    if NGINX is None:
        pytest.skip("nginx is not installed")
    workdir = Path(tempfile.mkdtemp(prefix="psk-tlsnginx-"))
    os.chmod(workdir, 0o755)  # the worker runs unprivileged
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    conf = workdir / "nginx.conf"
    answer = 'location / { return 200 "path=$request_uri\\n"; }'
    conf.write_text(nginx_tls_conf(workdir, "127.0.0.1", port, certs[0], certs[1], answer))
    proc = subprocess.Popen(
        [NGINX, "-c", str(conf), "-p", str(workdir), "-e", str(workdir / "error.log")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            assert proc.poll() is None, (workdir / "error.log").read_text(errors="replace")
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            assert time.monotonic() < deadline, "nginx did not listen"
            time.sleep(0.05)
        yield proc, port
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGQUIT)  # graceful: the master ends its worker
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
        shutil.rmtree(workdir, ignore_errors=True)


def _parent(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


@pytest.mark.root
@pytest.mark.xdist_group("capture-tlstrace")
@pytest.mark.parametrize("http", ["--http1.1", "--http2"])
def test_curl_against_nginx(tracer_ok: None, certs: tuple[Path, Path], http: str) -> None:
    """nginx (SSL_set_fd, non-blocking SSL_read/SSL_write) and curl, HTTP/1.1 and HTTP/2 over TLS."""
    if CURL is None:
        pytest.skip("curl is not installed")
    with tracer() as t, nginx_tls(certs) as (nginx, port):
        base = f"https://127.0.0.1:{port}"
        curl = subprocess.Popen(
            [CURL, "-sk", http, "-o", "/dev/null", "-o", "/dev/null", "-w", "%{local_port} %{http_version}\n",
             f"{base}/a", f"{base}/b"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        out, err = curl.communicate(timeout=30)
        assert curl.returncode == 0, err
        versions = {line.split()[1] for line in out.splitlines()}
        assert versions == {"2" if http == "--http2" else "1.1"}
        (curl_port,) = {int(line.split()[0]) for line in out.splitlines()}
        curl_ep, server_ep = ("127.0.0.1", curl_port), ("127.0.0.1", port)

        events: list[TlsEvent] = []
        deadline = time.monotonic() + 10  # nginx frees its SSL* when it notices curl's close
        while True:
            events += t.drain()
            workers = {
                e.pid
                for e in events
                if isinstance(e, TlsData) and (e.local, e.remote) == (server_ep, curl_ep)
            }
            if workers and any(isinstance(e, TlsClose) and e.pid in workers for e in events):
                break
            assert time.monotonic() < deadline, f"no close from nginx (workers {workers})"
            time.sleep(0.05)
        (worker,) = workers
        assert _parent(worker) == nginx.pid
        found = streams(events, {curl.pid, worker})
        client = by_tuple(found, curl.pid, curl_ep, server_ep)
        server = by_tuple(found, worker, server_ep, curl_ep)
        assert (client.comms, client.roles, server.comms, server.roles) == (
            {"curl"}, {ROLE_CLIENT}, {"nginx"}, {ROLE_SERVER},
        )  # fmt: skip
        assert server.read == client.written and server.written == client.read
        if http == "--http2":
            assert client.written.startswith(H2_PREFACE)
        else:
            assert (
                client.written.startswith(b"GET /a HTTP/1.1\r\n") and b"GET /b HTTP/1.1\r\n" in client.written
            )
        assert client.read.count(b"path=/a\n") == 1 and client.read.count(b"path=/b\n") == 1
        assert client.close is not None and server.close is not None
        assert (server.close.written, server.close.read) == (len(server.written), len(server.read))


@pytest.mark.root
@pytest.mark.xdist_group("capture-tlstrace")
def test_large_response_and_cut(tracer_ok: None, certs: tuple[Path, Path]) -> None:
    """1 MiB response: the reader's SSL_read calls (<= 16 KiB each) arrive whole; the server's single
    SSL_write of the whole response is cut at max_call_bytes, and the cut is reported exactly."""
    cap = 256 << 10
    with tracer(max_call_bytes=cap) as t, tls_server(certs) as server:
        client_pid, (conn,) = python_client("127.0.0.1", server.port, [["GET", "/big", ""]])
        server.connections(1)
        events = t.drain(max_events=5)
        assert len(events) == 5, "a bounded drain leaves the rest for the next one"
        events += t.drain()
        head = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n" % len(BIG_BODY)
        response = head + BIG_BODY
        assert conn.received == response

        found = streams(events, {client_pid, server.proc.pid})
        client = by_tuple(found, client_pid, conn.local, conn.remote)
        assert client.read == response and client.cut[DIRECTION_READ] == 0
        assert client.written == conn.sent

        srv = by_tuple(found, server.proc.pid, conn.remote, conn.local)
        assert srv.read == conn.sent
        calls = [c for c in srv.chunks if c.direction == DIRECTION_WRITE and c.offset == 0]
        assert sum(c.length for c in calls) == len(response)
        position = 0
        for call in calls:
            kept = min(call.length, cap)
            assert call.cut == call.length - kept
            chunks = [c for c in srv.chunks if c.direction == DIRECTION_WRITE and c.seq == call.seq]
            assert [c.offset for c in chunks] == list(range(0, kept, 16384))
            assert b"".join(c.data for c in chunks) == response[position : position + kept]
            position += call.length
        assert srv.cut[DIRECTION_WRITE] == len(response) - len(srv.written) > 0
        counters = t.counters()
        assert counters["truncated"] >= 1 and counters["drops"] == 0


@pytest.mark.root
@pytest.mark.xdist_group("capture-tlstrace")
def test_concurrent_connections_kept_apart(tracer_ok: None, certs: tuple[Path, Path]) -> None:
    conns = 4
    spec = [["GET", f"/item/{n}", ""] for n in range(5)] + [["POST", "/upload", "y" * 20000]]
    with tracer() as t, tls_server(certs) as server:
        client_pid, results = python_client("127.0.0.1", server.port, spec, conns=conns)
        server.connections(conns)
        found = streams(t.drain(), {client_pid, server.proc.pid})
        client_ssls, server_ssls = set(), set()
        for conn in results:
            client = by_tuple(found, client_pid, conn.local, conn.remote)
            check_conn(
                client,
                pid=client_pid,
                comm=CLIENT_NAME,
                role=ROLE_CLIENT,
                written=conn.sent,
                read=conn.received,
            )
            srv = by_tuple(found, server.proc.pid, conn.remote, conn.local)
            check_conn(
                srv,
                pid=server.proc.pid,
                comm=SERVER_NAME,
                role=ROLE_SERVER,
                written=conn.received,
                read=conn.sent,
            )
            client_ssls.add(client.ssl)
            server_ssls.add(srv.ssl)
        assert len(client_ssls) == len(server_ssls) == conns
        # the connections really overlapped: each one's first request precedes another's last response
        ours = [s for s in found if s.pid == client_pid]
        firsts = [min(c.ts for c in s.chunks) for s in ours]
        lasts = [max(c.ts for c in s.chunks) for s in ours]
        assert max(firsts) < min(lasts)


@pytest.mark.root
@pytest.mark.xdist_group("capture-tlstrace")
def test_server_in_its_own_network_namespace(tracer_ok: None, certs: tuple[Path, Path]) -> None:
    """Server and client in two namespaces joined by a veth: both traced, tuples in their namespace."""
    with (
        netns_pair() as pair,
        tracer() as t,
        tls_server(certs, host=pair.server_ip, prefix=pair.exec_args(pair.server_ns, [])) as server,
    ):
        client_pid, (conn,) = python_client(
            pair.server_ip, server.port, SMALL_SPEC, prefix=pair.exec_args(pair.client_ns, [])
        )
        server.connections(1)
        found = streams(t.drain(), {client_pid, server.proc.pid})
        server_netns = netns_inode(server.proc.pid)
        assert server_netns == os.stat(f"/run/netns/{pair.server_ns}").st_ino
        assert server_netns != netns_inode(os.getpid())
        assert conn.local[0] == pair.client_ip and conn.remote == (pair.server_ip, server.port)
        srv = by_tuple(found, server.proc.pid, conn.remote, conn.local)
        check_conn(
            srv,
            pid=server.proc.pid,
            comm=SERVER_NAME,
            role=ROLE_SERVER,
            written=conn.received,
            read=conn.sent,
            netns=server_netns,
        )
        client = by_tuple(found, client_pid, conn.local, conn.remote)
        check_conn(
            client, pid=client_pid, comm=CLIENT_NAME, role=ROLE_CLIENT, written=conn.sent, read=conn.received
        )
        assert client.netns == {os.stat(f"/run/netns/{pair.client_ns}").st_ino} != {server_netns}


@pytest.mark.root
@pytest.mark.xdist_group("capture-tlstrace")
def test_ring_full_drops_are_counted(tracer_ok: None, certs: tuple[Path, Path]) -> None:
    """A 16 KiB ring, not drained during a 1 MiB transfer: records are dropped and counted; what
    arrives is still exact (each chunk equals the response at its stream offset)."""
    with tracer(ring_bytes=16384) as t, tls_server(certs) as server:
        client_pid, (conn,) = python_client("127.0.0.1", server.port, [["GET", "/big", ""]])
        server.connections(1)
        before = t.counters()
        events = t.drain()
        after = t.counters()
        assert before["drops"] > 0
        assert before["events"] <= after["received"] <= after["events"]
        reads = [
            e for e in events
            if isinstance(e, TlsData) and e.pid == client_pid and e.direction == DIRECTION_READ
        ]  # fmt: skip
        assert reads and sum(len(e.data) for e in reads) < len(conn.received)
        for e in reads:
            assert e.data == conn.received[e.stream_offset : e.stream_offset + len(e.data)]


@pytest.mark.root
@pytest.mark.xdist_group("capture-tlstrace")
def test_attach_is_per_file(tracer_ok: None, certs: tuple[Path, Path], tmp_path: Path) -> None:
    with tracer() as t:
        same = f"/proc/{os.getpid()}/root{os.path.realpath(LIBSSL)}"
        assert t.attach(same) is None and t.attach(os.path.realpath(LIBSSL)) is None
        assert t.attach(LIBSSL) is None  # twice by the same path: nothing new
        (attachment,) = t.attachments()
        assert attachment.paths == (LIBSSL, same, os.path.realpath(LIBSSL)) and attachment.missing == ()
        assert attachment.inode == os.stat(LIBSSL).st_ino

        reason = t.attach(tmp_path / "missing.so")
        assert reason is not None and "missing.so" in reason and "\n" not in reason
        reason = t.attach("/lib/x86_64-linux-gnu/libc.so.6")
        assert reason is not None and "no SSL_read" in reason and "\n" not in reason
        assert len(t.attachments()) == 1

        with tls_server(certs) as server:
            assert t.detach(LIBSSL) and t.detach(same)
            client_pid, _ = python_client("127.0.0.1", server.port, [["GET", "/traced", ""]])
            server.connections(1)
            assert any(e.pid == client_pid for e in t.drain()), "one path of the file is still attached"

            assert t.detach(os.path.realpath(LIBSSL)) and not t.detach(LIBSSL)
            assert t.attachments() == []
            client_pid, _ = python_client("127.0.0.1", server.port, [["GET", "/quiet", ""]])
            server.connections(2)
            assert [e for e in t.drain() if e.pid in (client_pid, server.proc.pid)] == []


# --- decoding (no root) -------------------------------------------------------------------------------


@given(st.binary(max_size=3 * HEADER.size))
def test_decode_never_raises(sample: bytes) -> None:
    event = decode_event(sample)
    assert event is None or isinstance(event, (TlsData, TlsClose, TlsSni))


def _record(
    kind: int = KIND_DATA, data: bytes = b"GET / HTTP/1.1\r\n", over: dict[str, int] | None = None
) -> bytes:
    fields = {"ts": 5, "ssl": 0x55AA, "seq": 100, "length": len(data), "cut": 0, "tgid": 42, "tid": 43,
              "offset": 0, "netns": 4026531840, "data_len": len(data), "family": 2, "lport": 443,
              "rport": 51000, "kind": kind, "direction": DIRECTION_READ, "role": ROLE_SERVER}  # fmt: skip
    fields.update(over or {})
    header = HEADER.pack(
        *fields.values(),
        bytes([10, 0, 0, 1]) + bytes(12),
        bytes([10, 0, 0, 2]) + bytes(12),
        b"nginx\0".ljust(16, b"\0"),
    )
    return header + data


def test_decode_sni() -> None:
    sni = decode_event(_record(KIND_SNI, b"api.podshark.test", {"family": 0}))
    assert isinstance(sni, TlsSni) and (sni.pid, sni.ssl, sni.name) == (42, 0x55AA, "api.podshark.test")
    assert decode_event(_record(KIND_SNI, b"", {"data_len": 0})) is None  # an empty name is malformed


def test_curl_sets_the_sni_before_its_first_byte(tracer_ok: None, certs: tuple[Path, Path]) -> None:
    """curl names the server with SSL_set_tlsext_host_name (SSL_ctrl): the tracer reports the name on
    the same SSL* as the connection's plaintext, before it."""
    if CURL is None:
        pytest.skip("curl is not installed")
    with tracer() as t, tls_server(certs) as server:
        name = "sni-check.podshark.test"
        curl = subprocess.run(
            [CURL, "-sk", "--http1.1", "-o", "/dev/null", "--resolve", f"{name}:{server.port}:127.0.0.1",
             f"https://{name}:{server.port}/sni"],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert curl.returncode == 0, curl.stderr
        events = t.drain()
    mine = [e for e in events if e.comm == "curl"]
    snis = [e for e in mine if isinstance(e, TlsSni)]
    assert [e.name for e in snis] == [name]
    first_data = next(i for i, e in enumerate(mine) if isinstance(e, TlsData))
    assert mine.index(snis[0]) < first_data and mine[first_data].ssl == snis[0].ssl


def test_decode_fields() -> None:
    event = decode_event(_record())
    assert isinstance(event, TlsData)
    assert (event.pid, event.tid, event.comm, event.ssl) == (42, 43, "nginx", 0x55AA)
    assert (event.local, event.remote, event.netns) == (("10.0.0.1", 443), ("10.0.0.2", 51000), 4026531840)
    assert (event.data, event.stream_offset, event.role) == (b"GET / HTTP/1.1\r\n", 100, ROLE_SERVER)
    mono_to_wall = time.time_ns() - time.monotonic_ns()
    assert abs(event.ts - (5 + mono_to_wall)) < 50_000_000

    mapped = _record(over={"family": 10})
    mapped = mapped[:72] + bytes(10) + b"\xff\xff" + bytes([192, 0, 2, 7]) + mapped[88:]
    v6 = decode_event(mapped)
    assert isinstance(v6, TlsData) and v6.local == ("192.0.2.7", 443), "IPv4-mapped IPv6 as IPv4"

    close = decode_event(_record(KIND_CLOSE, b"", {"seq": 7, "length": 9, "data_len": 0}))
    assert isinstance(close, TlsClose) and (close.pid, close.ssl, close.written, close.read) == (
        42,
        0x55AA,
        7,
        9,
    )


@pytest.mark.parametrize(
    "bad",
    [
        {"data_len": 3},  # says 3 bytes, carries 16
        {"direction": 2},
        {"role": 7},
        {"kind": 9},
        {"offset": 10},  # offset + data > length
        {"cut": 1000},  # more cut than the call's length
        {"family": 99},
    ],
)
def test_decode_rejects_malformed(bad: dict[str, int]) -> None:
    assert decode_event(_record(over=bad)) is None


def test_missing_object_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(BpfError) as info:
        TlsTracer(tmp_path / "nothing.bpf.o")
    assert "build.sh" in str(info.value) and "\n" not in str(info.value)


def test_bad_settings_are_refused() -> None:
    for kwargs in (
        {"max_call_bytes": 0},
        {"max_call_bytes": 2 << 20},
        {"ring_bytes": 12345},
        {"tuple_hook": "x"},
    ):
        with pytest.raises(ValueError):
            TlsTracer(**kwargs)
