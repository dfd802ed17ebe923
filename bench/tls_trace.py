"""What tracing TLS costs: an HTTPS client and server with and without the eBPF tracer, and what the
Python side drains while it runs.

Setup (root; a clear error otherwise): a private network namespace with only its loopback up. In it,
Debian's nginx (one worker process, TLS with a self-signed EC certificate made with `cryptography`,
keep-alive without limit, access log off) serves a small ``return 200`` body at ``/`` and a 64 KiB
file at ``/64k.bin``. The client, also in the namespace, is ``wrk -t1 -c8`` over HTTPS (Debian's wrk
links libssl.so.3, checked with ldd: it is traced too) for STEP_SECONDS per step; without wrk (or a
wrk that does not link libssl), PY_CLIENTS Python processes, each a keep-alive `http.client`
HTTPS loop. Both ends map the same libssl file, so one attachment traces both, as on a node where a
client pod and a server pod share an image layer.

Steps, interleaved in every run (the order alternates between runs, so a drift of the machine's
load hits both modes alike), for each response size (small, 64 KiB):

1. **without the tracer**: nothing loaded;
2. **with the tracer**: on a thread of this process, what the worker's capture thread does with TLS:
   a `capture.tls.TlsCapture` (its `start()`: `TlsTracer` loaded, /proc scanned, the probes attached
   to every libssl file mapped, the re-scan thread started) over a real `dissect.engine.Engine`;
   every DRAIN_EVERY_S (the worker's ``pipe.step(0.05)`` when no packet arrives), or as soon as the
   ring buffer is a quarter full (its wake-up fd, which the capture thread polls with its packet
   sockets: `TlsCapture.wakeup_fds`), `TlsCapture.step()` drains the ring buffer into the engine;
   the engine ticks every half second, and the calls are taken out of ``engine.out``. No AF_PACKET
   capture, no worker, no hub: this is the tracer and its consumer. After the client stops, the
   thread drains until the tracer has nothing more, then
   `step()`, `Engine.finish()` and `TlsCapture.close()`.
3. **the 64 KiB responses once more with the tracer, with a timeout of FAST_DRAIN_S**: the
   wake-up bounds how full the ring gets, the timeout how long small amounts wait; drops that
   remain come from the draining thread not being scheduled (wrk and nginx keep both cores busy)
   for longer than the rest of the 32 MiB ring takes to fill.

Figures, per step:

- **requests/s**: wrk's ``N requests in S`` (Python clients: their counts / their own seconds);
  only 2xx responses count (errors are reported).
- **CPU per request**: client CPU (user + system, from `os.wait4`) plus nginx's worker CPU over the
  client's run (/proc/PID/stat), divided by requests. The uprobes' cost is paid in the traced
  processes (the breakpoint trap and our BPF programs run in their context), so the difference
  with and without the tracer, divided by the SSL calls that moved plaintext per request (the
  kernel's ``calls`` counter), is the **cost per traced SSL call** in µs of CPU. SSL calls that
  return WANT_READ are probed too and their cost is in that figure. The wall-clock difference per
  request (1/requests/s) is given beside it.
- **Python side**: events and plaintext bytes that came out of `TlsTracer.drain` (counted by a thin
  wrapper around it), calls out of the engine, and the draining thread's own CPU time
  (`time.thread_time`, load and attach included): events/s and MB/s over the client's seconds, µs of
  CPU per event, and events per CPU-second (what one core could drain). The /proc re-scan thread's
  CPU is not in it.
- **drops**: the tracer's ``drops`` counter (records the full ring buffer refused); the bytes they
  carried reach the engine as gaps (`TlsCapture.lost_bytes`).
- **sanity**: calls out of the engine that are whole (HTTP, status 200, no flag, ``tls`` true,
  both processes named) against the requests the client counted. With both ends traced there
  must be one call per request; fewer means drops or a connection cut at the end of the step.

Other tracers: other TLS tracers on the machine (a `podshark worker --tls` or a test) probe the same
libssl and would slow both modes. Before each step the benchmark waits (up to OTHER_TRACER_WAIT_S)
until no other program named ``tls_write_enter`` is loaded, and watches for one while the step runs
(`bpftool prog show` every half second); a step that ran beside one is run again (up to
CROWDED_RETRIES times), and if it still did it is marked in the table and left out of the medians
unless no step of its kind ran alone.

All the programs share the machine's cores: on 2 cores, wrk and nginx take one each, and the
draining thread competes with them. The requests/s ratio is therefore pessimistic for a node with
idle cores; the CPU-per-call figure does not depend on that.
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import json
import os
import re
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.http1_dissect import machine, podshark_revision
from bench.hub_calls import process_cpu_seconds
from bench.report import history_lines, keep, render_section

NAME = "tls_trace"
TITLE = "TLS tracing: cost to an HTTPS client and server, and what the Python side drains"

STEP_SECONDS = 5.0  # client run per step
CONNECTIONS = 8  # wrk -c (keep-alive connections)
PY_CLIENTS = 4  # Python client processes when wrk is not usable (one connection each)
PORT = 8443
ADDRESS = "127.0.0.1"
DRAIN_EVERY_S = 0.05  # capture.backend's pipe.step(0.05): the worker's cadence when no packet arrives
FAST_DRAIN_S = 0.005  # the 64 KiB responses once more, drained this often: the cost without drops
TICK_EVERY_NS = 500_000_000  # capture.pipeline's engine tick
TAIL_LIMIT_S = 30.0  # after the client: how long the thread may take to drain what is left
OTHER_TRACER_WAIT_S = 300.0
CROWDED_RETRIES = 3  # a step that ran beside another TLS tracer is run again, up to this many times
TRACER_PROGRAM = "tls_write_enter"  # a program of tlstrace.bpf.c (names are cut at 15 characters)
BIG_BYTES = 64 << 10

#: (key, label, path, drain cadences measured with the tracer): the responses measured
WORKLOADS: tuple[tuple[str, str, str, tuple[float, ...]], ...] = (
    ("small", "small response", "/", (DRAIN_EVERY_S,)),
    ("64k", "64 KiB response", "/64k.bin", (DRAIN_EVERY_S, FAST_DRAIN_S)),
)
SMALL_BODY = "podshark tls bench: hello\n"

Log = Callable[[str], None]


# ------------------------------------------------------------------------------------------- results


@dataclass
class Step:
    run: int
    workload: str
    drain_s: float  # the draining thread's cadence; 0: without the tracer
    requests: int = 0
    seconds: float = 0.0
    errors: int = 0
    client_cpu: float = 0.0
    server_cpu: float = 0.0
    other_tracers: int = 0  # other TLS tracers' programs seen loaded around the step
    # with the tracer only:
    events: int = 0  # records out of TlsTracer.drain
    data_bytes: int = 0  # plaintext bytes they carried
    foreign_events: int = 0  # from processes other than the client and nginx
    calls: int = 0  # out of the engine
    whole_calls: int = 0  # HTTP 200, tls, no flag, both processes named
    ssl_calls: int = 0  # the kernel's count of SSL calls that moved plaintext
    drops: int = 0
    lost_bytes: int = 0
    drain_cpu: float = 0.0
    tail_s: float = 0.0  # draining after the client stopped
    start_ms: float = 0.0  # TlsCapture.start(): load, /proc scan, attach
    counters: dict[str, int] = field(default_factory=dict)

    @property
    def traced(self) -> bool:
        return self.drain_s > 0

    def per_s(self, x: float) -> float:
        return x / self.seconds if self.seconds else 0.0

    @property
    def rps(self) -> float:
        return self.per_s(self.requests)

    @property
    def cpu_us_per_request(self) -> float:
        return (self.client_cpu + self.server_cpu) / self.requests * 1e6 if self.requests else 0.0


# ------------------------------------------------------------------------------------------ processes


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


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


@contextlib.contextmanager
def _netns() -> Iterator[str]:
    """A fresh network namespace with its loopback up; any process left in it is killed at the end."""
    ns = f"psktb{secrets.token_hex(3)}"
    _ip("netns", "add", ns)
    try:
        _ip("-n", ns, "link", "set", "lo", "up")
        yield ns
    finally:
        left = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout.split()
        for pid in left:  # only ours can be in a namespace we just made
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid), signal.SIGKILL)
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)


def _in_ns(ns: str, argv: list[str]) -> list[str]:
    return ["ip", "netns", "exec", ns, *argv]


def _cert_files(d: Path) -> tuple[Path, Path]:
    """A self-signed EC P-256 certificate for bench.podshark.test and 127.0.0.1, and its key."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bench.podshark.test")])
    now = datetime.datetime.now(datetime.UTC)
    san = x509.SubjectAlternativeName(
        [x509.DNSName("bench.podshark.test"), x509.IPAddress(ipaddress.ip_address(ADDRESS))]
    )
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
user root root;
worker_processes 1;
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
    default_type application/octet-stream;
    keepalive_requests 1000000;
    keepalive_timeout 120s;
    server {{
        listen {address}:{port} ssl;
        server_name bench.podshark.test;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        location = / {{ default_type text/plain; return 200 "{body}"; }}
        location = /64k.bin {{ root {tmp}/static; }}
    }}
}}
"""


@dataclass
class Nginx:
    proc: subprocess.Popen[bytes]
    worker_pid: int
    pids: set[int]  # master and worker


@contextlib.contextmanager
def _nginx(ns: str, tmp: Path) -> Iterator[Nginx]:
    """nginx serving HTTPS in ``ns`` until the block ends; fails with its error log if it cannot."""
    if shutil.which("nginx") is None:
        raise RuntimeError("nginx is not installed (apt-get install nginx-light; make bench does)")
    cert, key = _cert_files(tmp)
    (tmp / "static").mkdir()
    (tmp / "static" / "64k.bin").write_bytes(os.urandom(BIG_BYTES))  # incompressible, like media
    conf = tmp / "nginx.conf"
    body = SMALL_BODY.replace("\n", "\\n")
    conf.write_text(_NGINX_CONF.format(tmp=tmp, address=ADDRESS, port=PORT, cert=cert, key=key, body=body))
    argv = ["nginx", "-p", str(tmp), "-e", str(tmp / "error.log"), "-c", str(conf)]
    proc = subprocess.Popen(
        _in_ns(ns, argv), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    try:
        deadline = time.monotonic() + 15
        while True:
            if proc.poll() is not None:
                err = (tmp / "error.log").read_text() if (tmp / "error.log").exists() else ""
                raise RuntimeError(f"nginx exited with {proc.returncode}: {err[-2000:]}")
            r = subprocess.run(
                _in_ns(ns, ["curl", "-sk", "-o", "/dev/null", "-w", "%{http_code}", _url("/")]),
                capture_output=True,
                text=True,
                check=False,
            )
            if r.stdout == "200":
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"nginx did not answer HTTPS within 15 s (curl: {r.stdout} {r.stderr})")
            time.sleep(0.1)
        kids = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
        if len(kids) != 1:
            raise RuntimeError(f"expected one nginx worker process under {proc.pid}, found {kids}")
        worker = int(kids[0])
        yield Nginx(proc, worker, {proc.pid, worker})
    finally:
        _stop(proc, signal.SIGQUIT)


def _url(path: str) -> str:
    return f"https://{ADDRESS}:{PORT}{path}"


def wrk_usable() -> str | None:
    """None when wrk is installed and links libssl dynamically (so it is traced); else why not."""
    wrk = shutil.which("wrk")
    if wrk is None:
        return "wrk is not installed"
    out = subprocess.run(["ldd", wrk], capture_output=True, text=True).stdout
    if "libssl.so" not in out:
        return f"{wrk} does not link libssl dynamically (ldd), so the tracer would not see it"
    return None


_PY_CLIENT = """\
import http.client, ssl, sys, time
port, path, seconds = int(sys.argv[1]), sys.argv[2], float(sys.argv[3])
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
conn = http.client.HTTPSConnection("{address}", port, context=ctx)
ok = errors = 0
t0 = time.monotonic()
end = t0 + seconds
while time.monotonic() < end:
    try:
        conn.request("GET", path)
        r = conn.getresponse()
        r.read()
        if 200 <= r.status < 300:
            ok += 1
        else:
            errors += 1
    except (OSError, http.client.HTTPException):
        errors += 1
        conn.close()
        conn = http.client.HTTPSConnection("{address}", port, context=ctx)
print(ok, errors, time.monotonic() - t0)
"""

_WRK_REQUESTS = re.compile(r"(\d+) requests in ([\d.]+)(ms|s|m)\b")
_WRK_ERRORS = re.compile(r"Non-2xx or 3xx responses: (\d+)|Socket errors: connect (\d+), read (\d+), "
                         r"write (\d+), timeout (\d+)")  # fmt: skip


def parse_wrk(out: str) -> tuple[int, float, int]:
    """(requests, seconds, errors) from wrk's report; requests are the 2xx/3xx ones."""
    m = _WRK_REQUESTS.search(out)
    if m is None:
        raise RuntimeError(f"no 'N requests in S' line in wrk's output: {out[-1000:]}")
    seconds = float(m.group(2)) * {"ms": 1e-3, "s": 1.0, "m": 60.0}[m.group(3)]
    errors = non2xx = 0
    for e in _WRK_ERRORS.finditer(out):
        if e.group(1) is not None:
            non2xx = int(e.group(1))
        else:
            errors += sum(int(g) for g in e.groups()[1:])
    return int(m.group(1)) - non2xx, seconds, errors + non2xx


def _reap(proc: subprocess.Popen[str], timeout: float) -> tuple[str, float]:
    """Wait for a client we started: its output and its CPU seconds (user + system, from wait4)."""
    assert proc.stdout is not None
    timer = threading.Timer(timeout, lambda: _kill(proc.pid))
    timer.start()
    try:
        out = proc.stdout.read()
        _, status, usage = os.wait4(proc.pid, 0)
    finally:
        timer.cancel()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"client {proc.args!r} exited with {proc.returncode}: {out[-1000:]}")
    return out, usage.ru_utime + usage.ru_stime


def _kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def run_client(
    ns: str, path: str, seconds: float, pids: set[int], use_wrk: bool
) -> tuple[int, float, int, float]:
    """(requests, seconds, errors, client CPU seconds) of one client run; ``pids`` gets the clients'."""
    if use_wrk:
        argv = ["wrk", "-t1", f"-c{CONNECTIONS}", f"-d{seconds:g}s", _url(path)]
        procs = [
            subprocess.Popen(_in_ns(ns, argv), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        ]
    else:
        script = _PY_CLIENT.format(address=ADDRESS)
        argv = [sys.executable, "-I", "-c", script, str(PORT), path, str(seconds)]
        procs = [
            subprocess.Popen(_in_ns(ns, argv), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            for _ in range(PY_CLIENTS)
        ]
    pids.update(p.pid for p in procs)  # `ip netns exec` execs the client: the same pid
    requests = errors = 0
    took = cpu = 0.0
    try:
        for p in procs:
            out, used = _reap(p, seconds + 60)
            cpu += used
            if use_wrk:
                n, took, e = parse_wrk(out)
            else:
                words = out.split()
                n, e, took = int(words[0]), int(words[1]), max(took, float(words[2]))
            requests += n
            errors += e
    finally:
        for p in procs:
            if p.returncode is None:
                _kill(p.pid)
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(p.pid, 0)
                p.returncode = -signal.SIGKILL
    return requests, took, errors, cpu


def tls_programs() -> int:
    """TLS tracer programs loaded now (ours included, when loaded), by name."""
    try:
        out = subprocess.run(
            ["bpftool", "-j", "prog", "show"], capture_output=True, text=True, timeout=30, check=True
        ).stdout
        return sum(1 for p in json.loads(out or "[]") if p.get("name") == TRACER_PROGRAM)
    except (OSError, subprocess.SubprocessError, ValueError):
        return 0  # without bpftool the check is skipped (said in the section)


def _wait_alone(log: Log) -> int:
    """Wait until no other TLS tracer is loaded (up to OTHER_TRACER_WAIT_S); how many are left."""
    deadline = time.monotonic() + OTHER_TRACER_WAIT_S
    said = False
    while (n := tls_programs()) and time.monotonic() < deadline:
        if not said:
            log(f"bench: {n} other TLS tracer(s) loaded on this machine; waiting for them to go")
            said = True
        time.sleep(2)
    return n


class TracerWatch(threading.Thread):
    """Samples `tls_programs` every half second while a step runs: another tracer may come and go
    within the step (a test loads one for a few seconds). `most` is the largest count seen."""

    def __init__(self) -> None:
        super().__init__(name="bench-tls-watch", daemon=True)
        self.most = 0
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.5):
            self.most = max(self.most, tls_programs())

    def __enter__(self) -> TracerWatch:
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.done.set()
        self.join(5)


# ------------------------------------------------------------------------------------------ draining


class Drainer(threading.Thread):
    """The worker's capture thread, TLS side only: TlsCapture + Engine, stepped every ``drain_s``."""

    def __init__(self, ours: set[int], drain_s: float) -> None:
        super().__init__(name="bench-tls-drain", daemon=True)
        self.ours = ours  # pids of the client and nginx (read only here; the main thread adds to it)
        self.drain_s = drain_s
        self.ready = threading.Event()
        self.stop = threading.Event()
        self.error: str | None = None
        self.received = 0  # tracer.received at the last step, for the main thread's idle check
        self.events = self.data_bytes = self.foreign = 0
        self.calls = self.whole = 0
        self.cpu = 0.0
        self.start_ms = 0.0
        self.lost_bytes = 0
        self.counters: dict[str, int] = {}

    def _count(self, drain: Callable[..., list[Any]]) -> Callable[..., list[Any]]:
        """`drain` counting what it hands out (a few ns per event: nothing next to decoding it)."""

        def counted(*args: Any, **kw: Any) -> list[Any]:
            events = drain(*args, **kw)
            ours = self.ours
            for ev in events:
                data = getattr(ev, "data", None)  # a TlsClose has none
                if data is not None:
                    self.data_bytes += len(data)
                if ev.pid not in ours:
                    self.foreign += 1
            self.events += len(events)
            return events

        return counted

    def _take(self, out: list[Any]) -> None:
        for c in out:
            self.calls += 1
            if (
                c.protocol == "http"
                and c.tls
                and c.status == 200
                and not c.flags
                and c.src.process
                and c.dst.process
            ):
                self.whole += 1
        out.clear()

    def run(self) -> None:
        from capture.afpacket import wait
        from capture.ids import CallIds
        from capture.tls import TlsCapture
        from dissect.engine import Engine

        cpu0 = time.thread_time()
        try:
            engine = Engine("bench/tls", call_id=CallIds("bench"))
            tls = TlsCapture(engine)
            t0 = time.perf_counter()
            why = tls.start()
            self.start_ms = (time.perf_counter() - t0) * 1000
            if why is not None:
                self.error = why
                return
            try:
                tls.tracer.drain = self._count(tls.tracer.drain)
                self.ready.set()
                next_tick = 0
                while not self.stop.is_set():  # capture.pipeline.Pipeline.step, without rings
                    wait([], self.drain_s, tls.wakeup_fds())  # or sooner: the ring is a quarter full
                    tls.step()
                    self.received = tls.tracer.received
                    now = time.time_ns()
                    if now >= next_tick:
                        next_tick = now + TICK_EVERY_NS
                        engine.tick(now)
                    self._take(engine.out)
                tls.step()  # capture.pipeline.Pipeline.finish
                self.counters = dict(tls.tracer.counters())
                engine.finish()
                self._take(engine.out)
                self.lost_bytes = tls.lost_bytes
            finally:
                tls.close()
        except Exception as e:  # reported by the main thread, which must not wait for ever
            self.error = f"{type(e).__name__}: {e}"
        finally:
            self.cpu = time.thread_time() - cpu0
            self.ready.set()


# --------------------------------------------------------------------------------------- measuring


def _start_drainer(ours: set[int], drain_s: float) -> Drainer:
    drainer = Drainer(ours, drain_s)
    drainer.start()
    if not drainer.ready.wait(60):
        drainer.stop.set()
        raise RuntimeError("the TLS tracer did not start within 60 s")
    if drainer.error is not None:
        drainer.join(10)
        raise RuntimeError(f"the TLS tracer did not start: {drainer.error}")
    return drainer


def _wait_drained(drainer: Drainer) -> float:
    """Seconds until the tracer has had nothing new for three looks in a row (or TAIL_LIMIT_S)."""
    t_end = time.monotonic()
    last, still = -1, 0
    while still < 3 and time.monotonic() - t_end < TAIL_LIMIT_S and drainer.is_alive():
        time.sleep(max(drainer.drain_s * 2, 0.02))
        still = still + 1 if drainer.received == last else 0
        last = drainer.received
    return time.monotonic() - t_end


def _step(
    ns: str, nginx: Nginx, workload: str, path: str, drain_s: float, run: int, use_wrk: bool, log: Log
) -> Step:
    """One client run of STEP_SECONDS, with the tracer when ``drain_s`` > 0."""
    step = Step(run, workload, drain_s)
    step.other_tracers = _wait_alone(log)
    ours = set(nginx.pids)
    drainer = _start_drainer(ours, drain_s) if drain_s else None
    try:
        cpu0 = process_cpu_seconds(nginx.worker_pid)
        with TracerWatch() as watch:
            step.requests, step.seconds, step.errors, step.client_cpu = run_client(
                ns, path, STEP_SECONDS, ours, use_wrk
            )
            step.server_cpu = process_cpu_seconds(nginx.worker_pid) - cpu0
        others = watch.most - (1 if drainer is not None else 0)  # ours is one of them
        step.other_tracers = max(step.other_tracers, others)
        if drainer is not None:
            step.tail_s = _wait_drained(drainer)
    finally:
        if drainer is not None:
            drainer.stop.set()
            drainer.join(60)
    if drainer is not None:
        if drainer.error is not None:
            raise RuntimeError(f"draining failed: {drainer.error}")
        c = drainer.counters
        step.events, step.data_bytes = drainer.events, drainer.data_bytes
        step.foreign_events, step.calls, step.whole_calls = drainer.foreign, drainer.calls, drainer.whole
        step.drain_cpu, step.lost_bytes, step.start_ms = drainer.cpu, drainer.lost_bytes, drainer.start_ms
        step.ssl_calls, step.drops, step.counters = c.get("calls", 0), c.get("drops", 0), c
        extra = (
            f", {step.per_s(step.events):,.0f} events/s, {step.per_s(step.data_bytes) / 1e6:,.1f} MB/s, "
            f"{step.whole_calls:,} whole calls, drain CPU {step.per_s(step.drain_cpu):.0%}, "
            f"{step.drops:,} drops"
        )
    else:
        extra = ""
    mode = f"traced, drain timeout {drain_s * 1000:.0f} ms" if drain_s else "without tracer"
    crowd = " (another TLS tracer was loaded)" if step.other_tracers else ""
    log(
        f"bench: run {run + 1} {workload:>5} {mode}{crowd}: {step.rps:,.0f} req/s, "
        f"{step.cpu_us_per_request:.0f} µs CPU/request{extra}"
    )
    return step


def measure(runs: int = 3, log: Log = print) -> dict[str, Any]:
    if os.geteuid() != 0:
        raise RuntimeError(
            "the TLS tracing benchmark needs root (eBPF uprobes, a network namespace): "
            "run `sudo .venv/bin/python -m bench tls_trace`"
        )
    for tool in ("ip", "curl", "nginx"):
        if shutil.which(tool) is None:
            raise RuntimeError(f"{tool} is not installed (apt-get install iproute2 curl nginx-light)")
    why_not_wrk = wrk_usable()
    use_wrk = why_not_wrk is None
    if not use_wrk:
        log(f"bench: {why_not_wrk}; using {PY_CLIENTS} Python ssl keep-alive clients")
    steps: list[Step] = []
    with (
        tempfile.TemporaryDirectory(prefix="podshark-bench-tls-") as tmpname,
        _netns() as ns,
        _nginx(ns, Path(tmpname)) as nginx,
    ):
        for run in range(runs):
            for workload, _, path, cadences in WORKLOADS:
                modes = (0.0, *cadences)
                for drain_s in modes if run % 2 == 0 else reversed(modes):  # alternate the order
                    for attempt in range(CROWDED_RETRIES + 1):
                        step = _step(ns, nginx, workload, path, drain_s, run, use_wrk, log)
                        if not step.other_tracers or attempt == CROWDED_RETRIES:
                            break
                        log("bench: another TLS tracer came during that step; running it again")
                    steps.append(step)
    return {"steps": steps, "client": "wrk" if use_wrk else "python", "why_not_wrk": why_not_wrk}


# ---------------------------------------------------------------------------------------- reporting


def _med(xs: list[float]) -> float:
    return statistics.median(xs) if xs else 0.0


@dataclass
class Summary:
    """Medians over the runs for one response size, without the tracer and with it at one cadence."""

    label: str
    drain_s: float
    rps_off: float
    rps_on: float
    cpu_off: float  # µs per request
    cpu_on: float
    ssl_calls_per_request: float
    events_s: float
    mb_s: float
    calls_s: float
    drain_core: float  # share of one core
    us_per_event: float
    events_per_cpu_s: float
    drops: int  # sum over the runs
    lost_bytes: int
    whole: int  # sum over the runs
    requests_on: int  # sum over the runs
    foreign: int
    tail_s: float
    crowded: bool  # the medians include steps run beside another TLS tracer (no clean one)

    @property
    def ratio(self) -> float:
        return self.rps_on / self.rps_off if self.rps_off else 0.0

    @property
    def us_per_ssl_call(self) -> float:
        if not self.ssl_calls_per_request:
            return 0.0
        return (self.cpu_on - self.cpu_off) / self.ssl_calls_per_request

    @property
    def wall_us_per_request(self) -> float:
        if not (self.rps_on and self.rps_off):
            return 0.0
        return (1 / self.rps_on - 1 / self.rps_off) * 1e6


def _alone(steps: list[Step]) -> list[Step]:
    return [s for s in steps if not s.other_tracers] or steps


def summarize(steps: list[Step], workload: str, label: str, drain_s: float) -> Summary:
    """Medians of the steps that ran alone (no other TLS tracer loaded); of all of them when none did."""
    off = _alone([s for s in steps if s.workload == workload and not s.traced])
    on = _alone([s for s in steps if s.workload == workload and s.drain_s == drain_s])
    return Summary(
        label=label if drain_s == DRAIN_EVERY_S else f"{label}, drain timeout {drain_s * 1000:.0f} ms",
        drain_s=drain_s,
        rps_off=_med([s.rps for s in off]),
        rps_on=_med([s.rps for s in on]),
        cpu_off=_med([s.cpu_us_per_request for s in off]),
        cpu_on=_med([s.cpu_us_per_request for s in on]),
        ssl_calls_per_request=_med([s.ssl_calls / s.requests for s in on if s.requests]),
        events_s=_med([s.per_s(s.events) for s in on]),
        mb_s=_med([s.per_s(s.data_bytes) / 1e6 for s in on]),
        calls_s=_med([s.per_s(s.calls) for s in on]),
        drain_core=_med([s.per_s(s.drain_cpu) for s in on]),
        us_per_event=_med([s.drain_cpu / s.events * 1e6 for s in on if s.events]),
        events_per_cpu_s=_med([s.events / s.drain_cpu for s in on if s.drain_cpu]),
        drops=sum(s.drops for s in on),
        lost_bytes=sum(s.lost_bytes for s in on),
        whole=sum(s.whole_calls for s in on),
        requests_on=sum(s.requests for s in on),
        foreign=sum(s.foreign_events for s in on),
        tail_s=max((s.tail_s for s in on), default=0.0),
        crowded=any(s.other_tracers for s in [*off, *on]),
    )


def _rows(s: Summary) -> list[tuple[str, str]]:
    return [
        (
            f"{s.label}: requests/s",
            f"**{s.rps_off:,.0f} without, {s.rps_on:,.0f} with the tracer ({s.ratio:.2f}x)**",
        ),
        (
            f"{s.label}: cost",
            f"client + nginx CPU {s.cpu_off:.0f} -> {s.cpu_on:.0f} µs per request; "
            f"{s.ssl_calls_per_request:.1f} traced SSL calls per request: "
            f"**{s.us_per_ssl_call:.1f} µs of CPU per SSL call**; "
            f"wall time +{s.wall_us_per_request:.0f} µs per request",
        ),
        (
            f"{s.label}: Python side",
            f"**{s.events_s:,.0f} events/s, {s.mb_s:,.1f} MB/s** drained, {s.calls_s:,.0f} calls/s "
            f"out of the engine; draining thread {s.drain_core:.0%} of a core, "
            f"{s.us_per_event:.1f} µs per event (~{s.events_per_cpu_s:,.0f} events per CPU-second)",
        ),
        (
            f"{s.label}: drops, sanity",
            f"**{s.drops:,} records dropped** by the ring buffer ({s.lost_bytes:,} bytes as gaps); "
            f"{s.whole:,} whole calls for {s.requests_on:,} requests"
            + (f"; {s.foreign:,} events from other processes" if s.foreign else "")
            + (f"; drained {s.tail_s:.1f} s after the client stopped" if s.tail_s > 1 else ""),
        ),
    ]


def _table(steps: list[Step]) -> list[str]:
    table = [
        "| run | response | tracer | requests/s | CPU µs/request | SSL calls/request | events/s | MB/s "
        "| calls/s | drain CPU | drops | whole calls / requests |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for st in steps:
        mode = f"drain timeout {st.drain_s * 1000:.0f} ms" if st.traced else "off"
        mode += " (other tracer loaded)" if st.other_tracers else ""
        lead = f"| {st.run + 1} | {st.workload} | {mode} | {st.rps:,.0f} | {st.cpu_us_per_request:.0f} |"
        if not st.traced:
            table.append(lead + " | | | | | | |")
            continue
        table.append(
            f"{lead} {st.ssl_calls / st.requests if st.requests else 0:.1f} | {st.per_s(st.events):,.0f} | "
            f"{st.per_s(st.data_bytes) / 1e6:,.1f} | {st.per_s(st.calls):,.0f} | "
            f"{st.per_s(st.drain_cpu):.0%} | {st.drops:,} | {st.whole_calls:,} / {st.requests:,} |"
        )
    return table


def run(previous: str | None = None, runs: int = 3, regen: bool = False, log: Log = print) -> str:
    del regen  # nothing is cached: every run makes its own server and traffic
    res = measure(runs=runs, log=log)
    steps: list[Step] = res["steps"]
    sums = [
        summarize(steps, key, label, drain_s) for key, label, _, cadences in WORKLOADS for drain_s in cadences
    ]
    m = machine()
    client = (
        f"wrk -t1 -c{CONNECTIONS} (links libssl.so.3: traced)"
        if res["client"] == "wrk"
        else f"{PY_CLIENTS} Python ssl keep-alive clients ({res['why_not_wrk']})"
    )
    rows = [
        (
            "measured",
            f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} at {podshark_revision()}, "
            f"{m['nproc']} CPUs ({m['cpu']}), load {m['load']}",
        ),
        (
            "setup",
            f"nginx (1 worker) and {client} over HTTPS keep-alive in a private network namespace; "
            f"{STEP_SECONDS:.0f} s per step, {runs} interleaved runs, medians",
        ),
    ]
    for s in sums:
        rows += _rows(s)
    start_ms = _med([s.start_ms for s in steps if s.traced])
    rows.append(("TlsCapture.start()", f"{start_ms:.0f} ms (load, /proc scan, attach)"))
    crowded = sum(1 for s in steps if s.other_tracers)
    if crowded:
        used = [s.label for s in sums if s.crowded]
        rows.append(
            (
                "other TLS tracers",
                f"{crowded} of {len(steps)} steps ran while another TLS tracer was loaded (marked below); "
                + (
                    f"**the medians of {', '.join(used)} include such steps**"
                    if used
                    else "the medians above leave them out"
                ),
            )
        )
    small = sums[0]
    big = next(s for s in sums if s.label.startswith("64") and s.drain_s == DRAIN_EVERY_S)
    fast = next((s for s in sums if s.drain_s == FAST_DRAIN_S), big)
    summary = (
        f"- {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} {podshark_revision()}: small "
        f"{small.rps_off:,.0f} -> {small.rps_on:,.0f} req/s ({small.ratio:.2f}x, "
        f"{small.us_per_ssl_call:.1f} µs CPU/SSL call), 64 KiB {big.rps_off:,.0f} -> {big.rps_on:,.0f} req/s "
        f"({big.ratio:.2f}x, {big.drops:,} drops at {DRAIN_EVERY_S * 1000:.0f} ms, {fast.drops:,} at "
        f"{fast.drain_s * 1000:.0f} ms); drained {small.events_s:,.0f} events/s "
        f"({small.us_per_event:.1f} µs each), {fast.mb_s:,.0f} MB/s"
    )
    intro = (
        f"`python -m bench {NAME}` (root). An HTTPS client and nginx, each step run without and with "
        "the TLS tracer (`capture.tls.TlsCapture` over a real engine on a thread, drained as the "
        "worker's capture thread does: when the ring buffer is a quarter full, else every "
        f"{DRAIN_EVERY_S * 1000:.0f} ms; the 64 KiB responses also with a {FAST_DRAIN_S * 1000:.0f} ms "
        "timeout). No AF_PACKET capture, "
        "worker or hub. Both ends are traced. **Client, server and the draining thread share this "
        "machine's cores**, so the requests/s ratio is a pessimistic one; the CPU per SSL call is not "
        "affected by that. See the module docstring for how each figure is taken."
    )
    return render_section(
        f"## {TITLE}", intro, rows, keep(history_lines(previous), summary), tables=_table(steps)
    )
