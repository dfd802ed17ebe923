"""Make (and cache) captures of real traffic for the benchmarks.

The HTTP/1.1 capture is produced by real programs rather than synthesised: nginx serves a handful of
locations, wrk drives it over keep-alive connections and tcpdump records the loopback interface. A
synthetic generator would only exercise the paths its author thought of; real client/server pairs give
real segmentation, delayed ACKs, chunked gzip bodies, redirects and 404s.

When running as root the whole thing happens inside a private network namespace whose loopback has a
1500-byte MTU, so larger responses span several TCP segments as they would on a pod network (the
kernel's TSO on loopback still merges some of them into segments of a few MSS). Without root it falls
back to the host loopback (64 KiB MTU: almost every response is one segment).

Captures are cached in ``bench/out/`` under a name that contains :data:`HTTP1_CAPTURE_VERSION`, so
reruns measure the same bytes; bump the version whenever the traffic mix changes, or pass ``regen``.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

OUT_DIR = Path(__file__).resolve().parent / "out"

#: Part of the cached file name: change it when the nginx config, the wrk script or the sizes change.
HTTP1_CAPTURE_VERSION = "http1-v2"

#: The issue asks for at least 100k packets; aim a little higher so a short last round still qualifies.
MIN_PACKETS = 120_000

Log = Callable[[str], None]


@dataclass
class CaptureInfo:
    """What a capture contains and how it was made (stored next to the pcap as JSON)."""

    path: str
    version: str
    packets: int
    wire_bytes: int
    file_bytes: int
    created: str
    netns: bool
    mtu: int | None
    requests_sent: int
    rounds: int
    tcpdump_stats: list[str] = field(default_factory=list)

    @property
    def pcap(self) -> Path:
        return Path(self.path)


# --------------------------------------------------------------------------------------------- pcap


class PcapCounter:
    """Counts the packets of a classic pcap file incrementally, as tcpdump (``-U``) keeps appending.

    This is how the capture loop knows when it has enough without stopping tcpdump; a record that is
    only half written is left for the next call.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.packets = 0
        self.wire_bytes = 0
        self._rec: struct.Struct | None = None

    def update(self) -> tuple[int, int]:
        """Read what was appended since the last call; return (packets, sum of original lengths)."""
        if not self.path.exists():
            return 0, 0
        with self.path.open("rb") as f:
            if self._rec is None:
                head = f.read(24)
                if len(head) < 24:
                    return 0, 0
                magic = head[:4]
                if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1"):
                    self._rec = struct.Struct("<IIII")
                elif magic in (b"\xa1\xb2\xc3\xd4", b"\xa1\xb2\x3c\x4d"):
                    self._rec = struct.Struct(">IIII")
                else:
                    raise ValueError(f"{self.path}: not a classic pcap file (magic {magic.hex()})")
                self.offset = 24
            f.seek(self.offset)
            data = f.read()
        rec = self._rec
        pos, end = 0, len(data)
        while pos + 16 <= end:
            _, _, incl, orig = rec.unpack_from(data, pos)
            if pos + 16 + incl > end:
                break
            self.packets += 1
            self.wire_bytes += orig
            pos += 16 + incl
        self.offset += pos
        return self.packets, self.wire_bytes


def count_pcap(path: Path) -> tuple[int, int]:
    """Return (packets, sum of original lengths) of a classic pcap file."""
    return PcapCounter(path).update()


# ---------------------------------------------------------------------------------------- processes


class _Netns:
    """A throw-away network namespace, or the host namespace when not root.

    Everything (nginx, wrk, tcpdump) runs through :meth:`cmd`, so the rest of the code does not care which.
    """

    def __init__(self, use: bool, mtu: int) -> None:
        self.name = f"psbench{os.getpid()}" if use else None
        self.mtu = mtu if use else None

    def __enter__(self) -> _Netns:
        if self.name:
            subprocess.run(["ip", "netns", "add", self.name], check=True)
            subprocess.run(
                ["ip", "-n", self.name, "link", "set", "lo", "mtu", str(self.mtu), "up"], check=True
            )
        return self

    def __exit__(self, *exc: object) -> None:
        if self.name:
            subprocess.run(["ip", "netns", "del", self.name], check=False)

    def cmd(self, argv: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.name, *argv] if self.name else argv

    def free_port(self) -> int:
        """A fresh namespace has every port free; on the host ask the kernel for one."""
        if self.name:
            return 8080
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return int(s.getsockname()[1])


def _stop(proc: subprocess.Popen[Any] | None, sig: int = signal.SIGTERM, timeout: float = 10) -> None:
    """Stop one process we started (by its pid only), escalating to SIGKILL if it lingers."""
    if proc is None or proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(sig)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait(timeout=5)


class _Tcpdump:
    """tcpdump writing a pcap, started and stopped the way that loses no packets.

    It must really be listening before traffic starts (its stderr says "listening on"), and it must be
    stopped with SIGINT so it flushes the file and prints its drop counters, which are kept as evidence.
    """

    def __init__(self, ns: _Netns, pcap: Path, port: int) -> None:
        # --immediate-mode: without it TPACKET_V3 hands packets over in blocks retired up to 1 s late, so
        # the file lags (the size check overshoots) and packets still in the ring at SIGINT — the final
        # FINs — are lost. -B (KiB) gives a large ring so bursts don't drop; -U flushes every packet.
        argv = ["tcpdump", "-i", "lo", "-n", "-U", "--immediate-mode", "-B", "131072", "-w", str(pcap)]
        if os.geteuid() == 0:
            argv += ["-Z", "root"]  # the file lives in a root-owned tree; don't drop to user tcpdump
        argv.append(f"tcp port {port}")
        self.proc: subprocess.Popen[bytes] = subprocess.Popen(
            ns.cmd(argv), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True
        )
        self.lines: list[str] = []
        self._listening = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        if not self._listening.wait(15):
            _stop(self.proc, signal.SIGINT)
            raise RuntimeError(f"tcpdump did not start listening: {self.lines}")

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for raw in self.proc.stderr:
            line = raw.decode(errors="replace").strip()
            self.lines.append(line)
            if "listening on" in line:
                self._listening.set()

    def stop(self) -> list[str]:
        """SIGINT, wait, and return tcpdump's closing statistics ("N packets captured", "... dropped")."""
        _stop(self.proc, signal.SIGINT, timeout=20)
        self._reader.join(5)
        return [ln for ln in self.lines if "packets" in ln]


# ------------------------------------------------------------------------------------------- server


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
    types {{ text/html html; application/json json; application/octet-stream bin; text/css css; }}
    default_type text/plain;
    keepalive_requests 1000000;
    keepalive_timeout 120s;
    gzip on;
    gzip_min_length 1024;
    gzip_types application/json text/css;
    server {{
        listen 127.0.0.1:{port};
        server_name bench.local;
        location = / {{ return 200 "podshark bench: hello\\n"; }}
        location = /healthz {{ return 204; }}
        location = /api/items {{
            default_type application/json;
            return 200 '{items}';
        }}
        location = /api/echo {{
            default_type application/json;
            return 201 '{{"ok":true,"id":"01JD3Q4X9ZK2M8R5T7V0W1Y2Z3"}}';
        }}
        location = /old {{ return 302 /api/items; }}
        location /static/ {{ alias {tmp}/static/; }}
    }}
}}
"""

# Paths and their share of requests. Small API calls dominate, as in service-to-service traffic; a few
# static files of a few KB (some gzip'd and chunked) make responses span several segments.
_WRK_LUA = """\
-- Requests are built in init() because wrk.host (hence the Host header) is only known there.
local reqs, i = {}, 0
local function add(n, method, path, headers, body)
  for _ = 1, n do table.insert(reqs, wrk.format(method, path, headers, body)) end
end
function init(args)
  add(6, "GET", "/api/items", {["Accept"] = "application/json", ["User-Agent"] = "bench/1"})
  add(3, "GET", "/", nil)
  add(2, "GET", "/healthz", nil)
  add(3, "POST", "/api/echo", {["Content-Type"] = "application/json"},
      '{"name":"podshark","items":[1,2,3],"note":"a small json body for the echo endpoint"}')
  add(2, "GET", "/static/page.html", nil)
  add(1, "GET", "/static/page.html", {["Accept-Encoding"] = "gzip"})
  add(1, "GET", "/static/data.json", {["Accept-Encoding"] = "gzip, br"})
  add(1, "GET", "/static/logo.bin", nil)
  add(1, "GET", "/missing/thing?x=1", nil)
  add(1, "GET", "/old", nil)
end
request = function()
  i = i + 1
  return reqs[(i % #reqs) + 1]
end
"""


def _write_site(tmp: Path, port: int) -> Path:
    """Write the nginx config and static files; deterministic (seeded) so every capture is alike."""
    rnd = random.Random(1234)
    static = tmp / "static"
    static.mkdir()
    words = ["pod", "shark", "call", "trace", "node", "kube", "packet", "stream", "latency", "hub"]
    para = " ".join(rnd.choice(words) for _ in range(700))
    (static / "page.html").write_text(f"<!doctype html><html><body><p>{para}</p></body></html>\n")  # ~4.5 KB
    rows = [{"id": n, "name": rnd.choice(words), "score": rnd.random()} for n in range(450)]
    (static / "data.json").write_text(json.dumps(rows))  # ~24 KB, gzip'd to a few KB when asked
    (static / "logo.bin").write_bytes(rnd.randbytes(1500))
    items = json.dumps([{"id": n, "sku": f"SKU-{n:05d}", "qty": n % 7} for n in range(8)])
    user = "user root root;\n" if os.geteuid() == 0 else ""
    conf = tmp / "nginx.conf"
    conf.write_text(_NGINX_CONF.format(user=user, tmp=tmp, port=port, items=items))
    (tmp / "bench.lua").write_text(_WRK_LUA)
    return conf


def _wait_http(ns: _Netns, port: int, nginx: subprocess.Popen[bytes], log_file: Path) -> None:
    """Poll until nginx answers, failing early (with its error log) if it died."""
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if nginx.poll() is not None:
            err = log_file.read_text() if log_file.exists() else ""
            raise RuntimeError(f"nginx exited with {nginx.returncode}: {err}")
        r = subprocess.run(
            ns.cmd(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", f"http://127.0.0.1:{port}/"]),
            capture_output=True,
            text=True,
            check=False,
        )
        if r.stdout == "200":
            return
        time.sleep(0.1)
    raise RuntimeError("nginx did not answer within 15 s")


_ROUND_SECONDS = 60  # a client round's own time cap; normally it is interrupted long before


def _start_client(ns: _Netns, tmp: Path, port: int, connections: int, use_wrk: bool) -> subprocess.Popen[str]:
    """Start one client round: wrk (keep-alive, several connections) or, without wrk, a Python client.

    Both run until interrupted with SIGINT (or their time cap) and then print how many requests they
    made; interrupting rather than guessing a duration keeps the capture close to the wanted size.
    """
    if use_wrk:
        argv = ["wrk", "-t1", f"-c{connections}", f"-d{_ROUND_SECONDS}s", "-s", str(tmp / "bench.lua")]
        argv.append(f"http://127.0.0.1:{port}/")
    else:
        argv = ["python3", "-c", _PY_CLIENT.format(port=port, seconds=_ROUND_SECONDS)]
    return subprocess.Popen(
        ns.cmd(argv), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )


def _client_requests(out: str) -> int:
    """Requests made, from wrk's "N requests in ..." line or the Python client's bare number."""
    for line in out.splitlines():
        words = line.split()
        if "requests in" in line or (len(words) == 1 and words[0].isdigit()):
            return int(words[0])
    return 0


_PY_CLIENT = """
import http.client, time
paths = ["/api/items", "/", "/healthz", "/static/page.html", "/static/data.json", "/missing", "/old"]
n, end = 0, time.monotonic() + {seconds}
c = http.client.HTTPConnection("127.0.0.1", {port})
try:
    while time.monotonic() < end:
        if n % 5 == 0:
            body = b'{{"n": %d}}' % n
            c.request("POST", "/api/echo", body=body, headers={{"Content-Type": "application/json"}})
        else:
            headers = {{"Accept-Encoding": "gzip"}} if n % 3 == 0 else {{}}
            c.request("GET", paths[n % len(paths)], headers=headers)
        c.getresponse().read()
        n += 1
except KeyboardInterrupt:
    pass
c.close()
print(n)
"""


# ----------------------------------------------------------------------------------------- capture


def _check_tools() -> None:
    for tool in ("nginx", "tcpdump", "curl"):
        if shutil.which(tool) is None:
            raise RuntimeError(f"{tool} is not installed (apt-get install nginx-light tcpdump curl)")


@contextlib.contextmanager
def _nginx(ns: _Netns, tmp: Path, conf: Path, port: int) -> Iterator[None]:
    argv = ["nginx", "-p", str(tmp), "-e", str(tmp / "error.log"), "-c", str(conf)]
    proc = subprocess.Popen(
        ns.cmd(argv), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    try:
        _wait_http(ns, port, proc, tmp / "error.log")
        yield
    finally:
        _stop(proc, signal.SIGQUIT)


def make_http1_capture(
    dest: Path,
    min_packets: int = MIN_PACKETS,
    log: Log = print,
    connections: int = 8,
) -> CaptureInfo:
    """Capture nginx + wrk HTTP/1.1 traffic into ``dest`` until it holds at least ``min_packets`` packets.

    One tcpdump records while the client runs; the growing file is counted every 0.2 s and the client
    gets SIGINT as soon as there is enough (a fixed duration would over- or undershoot by a factor of
    several depending on the machine). wrk then exits and the kernel closes its connections, so every
    TCP stream in the file runs from handshake to FIN and tshark and podshark see the same calls. A
    client that ends on its own (its time cap) is followed by another round.
    """
    _check_tools()
    use_netns = os.geteuid() == 0 and shutil.which("ip") is not None
    have_wrk = shutil.which("wrk") is not None
    if not have_wrk:
        log("bench: wrk not found; falling back to a Python keep-alive client (fewer packets/s)")
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = dest.with_suffix(".partial.pcap")
    partial.unlink(missing_ok=True)
    requests = rounds = 0
    with tempfile.TemporaryDirectory(prefix="podshark-bench-") as tmpname, _Netns(use_netns, 1500) as ns:
        tmp = Path(tmpname)
        tmp.chmod(0o755)
        port = ns.free_port()
        conf = _write_site(tmp, port)
        with _nginx(ns, tmp, conf, port):
            dump = _Tcpdump(ns, partial, port)
            try:
                counter = PcapCounter(partial)
                while True:
                    rounds += 1
                    client = _start_client(ns, tmp, port, connections, have_wrk)
                    try:
                        while client.poll() is None and counter.update()[0] < min_packets:
                            time.sleep(0.2)
                        ended_itself = client.poll() is not None
                    finally:
                        _stop(client, signal.SIGINT)
                    out = client.stdout.read() if client.stdout else ""
                    if ended_itself and client.returncode != 0:
                        raise RuntimeError(f"HTTP client failed (exit {client.returncode}): {out[-500:]}")
                    requests += _client_requests(out)
                    time.sleep(0.5)  # let the last FIN/ACK exchange land in the file
                    packets = counter.update()[0]
                    log(f"bench: capture round {rounds}: {packets} packets so far ({requests} requests)")
                    if packets >= min_packets:
                        break
                    if rounds >= 10:
                        raise RuntimeError(f"capture stuck at {packets} packets after {rounds} rounds")
            finally:
                stats = dump.stop()
    packets, wire = count_pcap(partial)
    dropped = [s for s in stats if "dropped by kernel" in s and not s.startswith("0 ")]
    if dropped:
        log(f"bench: warning: tcpdump reports drops: {dropped}")
    partial.replace(dest)
    info = CaptureInfo(
        path=str(dest),
        version=HTTP1_CAPTURE_VERSION,
        packets=packets,
        wire_bytes=wire,
        file_bytes=dest.stat().st_size,
        created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        netns=use_netns,
        mtu=ns.mtu,
        requests_sent=requests,
        rounds=rounds,
        tcpdump_stats=stats,
    )
    dest.with_suffix(".json").write_text(json.dumps(asdict(info), indent=2) + "\n")
    return info


def http1_capture(
    out_dir: Path = OUT_DIR, min_packets: int = MIN_PACKETS, regen: bool = False, log: Log = print
) -> CaptureInfo:
    """The cached HTTP/1.1 capture, made on first use (or when ``regen``, or when it is too small)."""
    dest = out_dir / f"{HTTP1_CAPTURE_VERSION}.pcap"
    meta = dest.with_suffix(".json")
    if not regen and dest.exists() and meta.exists():
        try:
            info = CaptureInfo(**json.loads(meta.read_text()))
        except (TypeError, ValueError):
            info = None
        if info and info.version == HTTP1_CAPTURE_VERSION and info.packets >= min_packets:
            info.path = str(dest)
            log(f"bench: reusing {dest} ({info.packets} packets; --regen to make a new one)")
            return info
    log(f"bench: making {dest} (at least {min_packets} packets of nginx + wrk HTTP/1.1 traffic)")
    info = make_http1_capture(dest, min_packets=min_packets, log=log)
    for stale in out_dir.glob("http1-v*.*"):  # captures of older versions are tens of MB each
        if stale.stem != HTTP1_CAPTURE_VERSION and stale.suffix in (".pcap", ".json"):
            stale.unlink()
    return info


if __name__ == "__main__":  # handy on its own: python -m bench.traffic
    print(json.dumps(asdict(http1_capture(regen=True)), indent=2))
