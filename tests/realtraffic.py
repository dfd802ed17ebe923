"""Real traffic for tests: two network namespaces joined by a veth pair, nginx in one, curl in the other.

Why: corpus pcaps are someone else's traffic, frozen. To test that podshark pairs *every* request
with *its* response, we need traffic whose ground truth we know by construction: nginx answers each
URI with a body that names the URI (``path=/item/0042``), so a call is right exactly when its response
body names its own target. tcpdump records the real packets from the veth, so the pcap has everything
a real capture has (kernel segmentation, ACKs, timing), not a synthetic approximation.

Everything made here is uniquely named (``psk-<hex>``) and always removed — namespaces, the veth pair
(it dies with its namespaces), nginx, tcpdump and temporary directories — in ``finally`` blocks, even
when the test fails. Only processes this module started are ended, by their pid.

Addresses come from 198.18.0.0/15 (RFC 2544 benchmark range), a /30 per pair; they exist only inside
the two namespaces, so they can never clash with a real network.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import textwrap
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

IP = shutil.which("ip")
NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)
TCPDUMP = shutil.which("tcpdump")
CURL = shutil.which("curl")


def netns_unavailable_reason() -> str | None:
    """Why real-traffic tests cannot run here, or None when they can."""
    if os.geteuid() != 0:
        return "needs root: creates network namespaces and captures with tcpdump"
    if IP is None:
        return "iproute2 (`ip`) is not installed"
    probe = subprocess.run([IP, "netns", "list"], capture_output=True, text=True)
    if probe.returncode != 0:
        return f"`ip netns` is unavailable: {probe.stderr.strip()}"
    return None


def tools_missing_reason(*tools: str) -> str | None:
    """Why a test that needs these programs cannot run, or None when all are installed."""
    found = {"nginx": NGINX, "tcpdump": TCPDUMP, "curl": CURL, "ip": IP}
    missing = [t for t in tools if not (found.get(t) or shutil.which(t))]
    return f"not installed: {', '.join(missing)}" if missing else None


#: Mark for tests that need root and network namespaces; skips with the reason when unavailable.
_netns_reason = netns_unavailable_reason()
requires_netns = pytest.mark.skipif(_netns_reason is not None, reason=_netns_reason or "")
root_mark = pytest.mark.root


def _run(args: Sequence[str], *, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout)
    if check and res.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed ({res.returncode}): {res.stderr.strip()}")
    return res


def _terminate(proc: subprocess.Popen[bytes] | subprocess.Popen[str], sig: int = signal.SIGTERM) -> None:
    """End one process we started, by its pid: `sig`, then SIGKILL if it does not go."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(sig)
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait(timeout=5)


@dataclass(slots=True)
class NetnsPair:
    """A client and a server namespace joined by one veth pair, each end with an address of a /30."""

    tag: str
    client_ns: str
    server_ns: str
    client_if: str
    server_if: str
    client_ip: str
    server_ip: str

    def exec_args(self, ns: str, args: Sequence[str]) -> list[str]:
        """`args` run inside namespace `ns` (``ip netns exec`` execs the program, so pids are its own)."""
        assert IP is not None
        return [IP, "netns", "exec", ns, *args]

    def client(
        self, args: Sequence[str], *, timeout: float = 60, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Run a command to completion in the client namespace."""
        return _run(self.exec_args(self.client_ns, args), timeout=timeout, check=check)

    def server(
        self, args: Sequence[str], *, timeout: float = 60, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Run a command to completion in the server namespace."""
        return _run(self.exec_args(self.server_ns, args), timeout=timeout, check=check)


def _pids_in(ns: str) -> list[int]:
    if IP is None:
        return []
    res = subprocess.run([IP, "netns", "pids", ns], capture_output=True, text=True)
    return [int(p) for p in res.stdout.split() if p.isdigit()]


@contextlib.contextmanager
def netns_pair() -> Iterator[NetnsPair]:
    """Create a uniquely named namespace pair with a veth between them; always delete it afterwards."""
    reason = netns_unavailable_reason()
    if reason:
        pytest.skip(reason)
    assert IP is not None
    tag = secrets.token_hex(4)
    third = int(tag[:2], 16)  # 198.18.<x>.0/30 — the x only has to differ from nothing: it's per-namespace
    pair = NetnsPair(
        tag=tag,
        client_ns=f"psk-{tag}-c",
        server_ns=f"psk-{tag}-s",
        client_if=f"pskc{tag}",
        server_if=f"psks{tag}",
        client_ip=f"198.18.{third}.1",
        server_ip=f"198.18.{third}.2",
    )
    created: list[str] = []
    try:
        for ns in (pair.client_ns, pair.server_ns):
            _run([IP, "netns", "add", ns])
            created.append(ns)
        # create the veth with each end directly inside its namespace: nothing appears in the host's
        _run(
            [IP, "link", "add", pair.client_if, "netns", pair.client_ns, "type", "veth",
             "peer", "name", pair.server_if, "netns", pair.server_ns]
        )  # fmt: skip
        for ns, ifname, ip in (
            (pair.client_ns, pair.client_if, pair.client_ip),
            (pair.server_ns, pair.server_if, pair.server_ip),
        ):
            _run([IP, "-n", ns, "addr", "add", f"{ip}/30", "dev", ifname])
            _run([IP, "-n", ns, "link", "set", ifname, "up"])
            _run([IP, "-n", ns, "link", "set", "lo", "up"])
        yield pair
    finally:
        for ns in created:
            # anything still running in our own namespace was started by this test: end it by pid
            for pid in _pids_in(ns):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            subprocess.run([IP, "netns", "del", ns], capture_output=True)


NGINX_CONF = """\
daemon off;
master_process on;
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log {dir}/access.log;
    client_body_temp_path {dir}/client_body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    keepalive_requests 100000;
    keepalive_timeout 120s;
    default_type text/plain;
    server {{
        listen {ip}:{port};
        location / {{
            return 200 "path=$request_uri\\n";
        }}
    }}
}}
"""


@dataclass(slots=True)
class NginxServer:
    """A running nginx in the server namespace that answers every URI with ``path=<uri>``."""

    pair: NetnsPair
    port: int
    workdir: Path
    proc: subprocess.Popen[bytes]

    @property
    def base_url(self) -> str:
        return f"http://{self.pair.server_ip}:{self.port}"


def expected_body(target: str) -> bytes:
    """What NGINX_CONF answers for `target`: the ground truth a paired call's response must carry."""
    return f"path={target}\n".encode()


@contextlib.contextmanager
def nginx_server(pair: NetnsPair, *, port: int = 80) -> Iterator[NginxServer]:
    """Run nginx (generated config, everything in a temp dir) in the server namespace until exit."""
    if NGINX is None:
        pytest.skip("nginx is not installed (apt-get install nginx-light)")
    workdir = Path(tempfile.mkdtemp(prefix=f"psk-{pair.tag}-nginx-"))
    os.chmod(workdir, 0o755)  # nginx workers run as an unprivileged user
    proc: subprocess.Popen[bytes] | None = None
    try:
        conf = workdir / "nginx.conf"
        conf.write_text(NGINX_CONF.format(dir=workdir, ip=pair.server_ip, port=port))
        proc = subprocess.Popen(
            pair.exec_args(
                pair.server_ns, [NGINX, "-c", str(conf), "-p", str(workdir), "-e", str(workdir / "error.log")]
            ),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        server = NginxServer(pair=pair, port=port, workdir=workdir, proc=proc)
        _wait_http_ready(server)
        yield server
    finally:
        if proc is not None:
            _terminate(proc, signal.SIGQUIT)  # graceful stop: master ends its workers
        shutil.rmtree(workdir, ignore_errors=True)


def _wait_http_ready(server: NginxServer, timeout: float = 10) -> None:
    assert CURL is not None, "curl is needed to probe nginx"
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            err = (
                (server.workdir / "error.log").read_text(errors="replace")
                if (server.workdir / "error.log").exists()
                else ""
            )
            raise RuntimeError(f"nginx exited ({server.proc.returncode}): {err.strip()}")
        res = server.pair.client(
            [CURL, "-s", "--max-time", "1", f"{server.base_url}/ready"], check=False, timeout=5
        )
        if res.returncode == 0 and res.stdout == "path=/ready\n":
            return
        last = res.stderr
        time.sleep(0.05)
    raise RuntimeError(f"nginx did not answer within {timeout}s: {last}")


@dataclass(slots=True)
class Capture:
    """A finished tcpdump capture: the pcap and tcpdump's own counters (drops must be 0 to trust it)."""

    path: Path
    captured: int | None = None
    received_by_filter: int | None = None
    dropped_by_kernel: int | None = None

    @property
    def complete(self) -> bool:
        """tcpdump wrote every packet the filter accepted and the kernel dropped none."""
        return (
            self.dropped_by_kernel == 0
            and self.captured is not None
            and self.captured == self.received_by_filter
        )

    stderr: str = ""


@contextlib.contextmanager
def tcpdump_capture(
    pair: NetnsPair,
    out: Path,
    *,
    bpf: str = "tcp port 80",
    snaplen: int = 0,
    buffer_kib: int = 65536,
    ready_timeout: float = 10,
) -> Iterator[Capture]:
    """tcpdump on the server end of the veth, writing `out`; yields once it is really capturing.

    tcpdump only prints "listening on" after the socket is bound and the filter attached, so traffic
    sent after that is in the file. Immediate mode and a large kernel buffer (`buffer_kib`) keep a
    burst of hundreds of small packets from being dropped on a busy 2-core machine. On exit tcpdump
    gets SIGINT (it flushes and prints its counters) and is waited for; the counters are filled into
    the yielded `Capture`.
    """
    if TCPDUMP is None:
        pytest.skip("tcpdump is not installed")
    cap = Capture(path=out)
    proc = subprocess.Popen(
        pair.exec_args(
            pair.server_ns,
            [
                TCPDUMP,
                "-i",
                pair.server_if,
                "-w",
                str(out),
                "-U",
                "--immediate-mode",
                "-B",
                str(buffer_kib),
                "-n",
                "-Z",
                "root",
                "-s",
                str(snaplen),
                bpf,
            ],
        ),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: list[str] = []
    listening = threading.Event()

    def _read_stderr() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.append(line)
            if "listening on" in line:
                listening.set()
        listening.set()  # EOF: unblock the waiter, which then sees the process has exited

    reader = threading.Thread(target=_read_stderr, daemon=True)
    reader.start()
    try:
        if not listening.wait(ready_timeout) or proc.poll() is not None:
            raise RuntimeError(f"tcpdump did not start capturing: {''.join(lines).strip()}")
        yield cap
    finally:
        # let the last packets (FIN/ACK) reach the file before stopping: with -U and immediate mode
        # each packet is written as it arrives, so a file that stopped growing is complete
        _wait_quiet(out)
        _terminate(proc, signal.SIGINT)
        reader.join(timeout=5)
        cap.stderr = "".join(lines)
        for line in lines:
            words = line.split()
            if "captured" in line and words and words[0].isdigit():
                cap.captured = int(words[0])
            if "received by filter" in line and words and words[0].isdigit():
                cap.received_by_filter = int(words[0])
            if "dropped by kernel" in line and words and words[0].isdigit():
                cap.dropped_by_kernel = int(words[0])


def _wait_quiet(path: Path, quiet: float = 0.3, limit: float = 5.0) -> None:
    """Return once `path` has not grown for `quiet` seconds (or after `limit` seconds)."""
    deadline = time.monotonic() + limit
    last_size, last_change = -1, time.monotonic()
    while time.monotonic() < deadline:
        size = path.stat().st_size if path.exists() else 0
        now = time.monotonic()
        if size != last_size:
            last_size, last_change = size, now
        elif now - last_change >= quiet:
            return
        time.sleep(0.05)


def curl_get_many(pair: NetnsPair, urls: Sequence[str], workdir: Path, *, timeout: float = 60) -> None:
    """Fetch every URL, in order, with ONE curl process, so curl reuses one keep-alive connection.

    The URLs go into a ``--config`` file (a command line would be too long); each response body is
    discarded, the test reads it back from the capture instead.
    """
    if CURL is None:
        pytest.skip("curl is not installed")
    cfg = workdir / "curl.cfg"
    cfg.write_text("".join(f'url = "{u}"\noutput = "/dev/null"\n' for u in urls))
    res = pair.client([CURL, "-s", "-S", "--fail", "--config", str(cfg)], timeout=timeout, check=False)
    if res.returncode != 0:
        raise RuntimeError(f"curl failed ({res.returncode}): {res.stderr.strip()}")


PIPELINE_CLIENT = textwrap.dedent(
    """\
    import socket, sys
    host, port, n = sys.argv[1], int(sys.argv[2]), len(sys.argv) - 3
    head = b" HTTP/1.1\\r\\nHost: " + host.encode() + b"\\r\\n\\r\\n"
    reqs = b"".join(b"GET " + t.encode() + head for t in sys.argv[3:])
    s = socket.create_connection((host, port), timeout=10)
    s.sendall(reqs)  # one write: the requests share TCP segments (true pipelining)
    want, got = n, b""
    while got.count(b"HTTP/1.1 ") < want:
        chunk = s.recv(65536)
        if not chunk:
            break
        got += chunk
    s.close()
    print(got.count(b"HTTP/1.1 "))
    """
)


def send_pipelined(
    pair: NetnsPair, server: NginxServer, targets: Sequence[str], *, timeout: float = 30
) -> int:
    """Send all `targets` as pipelined GETs in a single write on one connection; returns responses read."""
    res = pair.client(
        ["python3", "-c", PIPELINE_CLIENT, pair.server_ip, str(server.port), *targets], timeout=timeout
    )
    return int(res.stdout.strip() or 0)


@dataclass(slots=True)
class Lab:
    """Everything a real-traffic test needs: the namespaces, nginx, and a scratch directory."""

    pair: NetnsPair
    nginx: NginxServer
    workdir: Path
    notes: list[str] = field(default_factory=list)

    @contextlib.contextmanager
    def capture(self, name: str = "capture.pcap", **kw: object) -> Iterator[Capture]:
        """tcpdump around the body of the ``with``; see `tcpdump_capture`."""
        with tcpdump_capture(self.pair, self.workdir / name, **kw) as cap:  # type: ignore[arg-type]
            yield cap


@contextlib.contextmanager
def http_lab() -> Iterator[Lab]:
    """Namespaces + nginx + a temp dir, all removed on exit (even when the body raises)."""
    workdir = Path(tempfile.mkdtemp(prefix="psk-lab-"))
    try:
        with netns_pair() as pair, nginx_server(pair) as server:
            yield Lab(pair=pair, nginx=server, workdir=workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


# --- pytest fixtures (import them into a test module: ``from realtraffic import lab``) -------------


@pytest.fixture
def netns() -> Iterator[NetnsPair]:
    """A fresh namespace pair for one test."""
    with netns_pair() as pair:
        yield pair


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    """Namespaces + nginx shared by a module's tests (each test makes its own captures in it)."""
    reason = netns_unavailable_reason() or tools_missing_reason("nginx", "tcpdump", "curl")
    if reason:
        pytest.skip(reason)
    with http_lab() as the_lab:
        yield the_lab
