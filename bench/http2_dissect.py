"""HTTP/2 and gRPC dissection throughput: ``podshark dissect`` against tshark on the same capture.

Two benchmarks live here, each with its own section of BENCHMARKS.md:

- ``http2``: nghttpd (cleartext, prior knowledge) serves files of 0.2-24 KB; ``h2load -c 8 -m 10``
  cycles through them (8 connections, up to 10 concurrent streams each, so DATA frames of different
  streams interleave and HPACK's dynamic table is in constant use). tshark's command:
  ``tshark -r FILE -d tcp.port==PORT,http2 -Y http2 -T fields -e http2.streamid -e http2.headers.status``.
- ``grpc``: a grpcio server with generic (raw bytes, no protoc) handlers for a unary and a
  server-streaming method, driven by a small grpcio load client (``ghz`` is not packaged): many
  concurrent unary calls plus streams of 20 messages, protobuf-encoded by hand, about 1 in 50 unary
  calls answered NOT_FOUND. The brief's ``-Y grpc -T fields -e grpc.status_code`` does not run on
  TShark 4.0 (no such field), so tshark's command is ``-Y 'grpc || http2.header.name ==
  "grpc-status"' -T fields -e http2.header.name -e http2.header.value`` and grpc-status is read from
  the header pairs.

The method is the one of `bench.http1_dissect` (whose helpers are reused): the capture is made once
and cached in ``bench/out/`` (tcpdump in a private network namespace whose loopback has MTU 1500 and
GSO capped at 1500 bytes, so segments are wire-sized; until the file holds at least 120k packets),
each tool gets one untimed warm-up run whose output is counted (the sanity check: streams or RPCs
each tool found; tshark also once more with out-of-order TCP reassembly on), then ``runs`` timed
runs, interleaved, stdout to /dev/null, median reported. There is no target ratio for these; the
figures are reported as measured.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from bench import traffic
from bench.http1_dissect import (
    Timing,
    _n,
    _pps,
    _tail,
    machine,
    podshark_argv,
    podshark_revision,
    timed_run,
)
from bench.report import history_lines, keep, render_section

NAME = "http2"
TITLE = "HTTP/2 dissection throughput (podshark vs tshark)"
GRPC_NAME = "grpc"
GRPC_TITLE = "gRPC dissection throughput (podshark vs tshark)"

#: part of the cached file names: bump when the served files, the load or the client change
HTTP2_CAPTURE_VERSION = "http2-v1"
GRPC_CAPTURE_VERSION = "grpc-v1"
MIN_PACKETS = traffic.MIN_PACKETS
REPO = Path(__file__).resolve().parent.parent

Log = Callable[[str], None]


@dataclass
class ProtoCapture(traffic.CaptureInfo):
    """`traffic.CaptureInfo` plus the server port (tshark needs it for ``-d``) and the load generator."""

    port: int = 0
    generator: str = ""


# ------------------------------------------------------------------------------------------ servers


def _http2_site(htdocs: Path) -> list[str]:
    """Files nghttpd serves (deterministic), returning their URL paths."""
    rnd = random.Random(4242)
    words = ["pod", "shark", "stream", "frame", "hpack", "window", "settings", "node", "kube"]
    sizes = {"tiny.json": 180, "small.txt": 900, "page.html": 4_500, "data.json": 12_000, "big.txt": 24_000}
    paths = []
    for name, size in sizes.items():
        text = " ".join(rnd.choice(words) for _ in range(size // 4))
        (htdocs / name).write_text(text[:size])
        paths.append(f"/{name}")
    # weight the mix towards small answers, as API traffic is
    return ["/tiny.json", "/tiny.json", "/small.txt", "/tiny.json", "/page.html", "/small.txt", "/data.json",
            "/tiny.json", "/big.txt"]  # fmt: skip


def _low_priority() -> list[str]:
    """Prefix for a CPU-hungry load process: lowest priority and, with 2+ CPUs, off CPU 0 (tcpdump's)."""
    prefix = ["nice", "-n", "19"]
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    if len(cpus) >= 2 and shutil.which("taskset"):
        prefix = ["taskset", "-c", ",".join(map(str, cpus[1:])), *prefix]
    return prefix


def _wait_port(ns: traffic._Netns, port: int, proc: subprocess.Popen[bytes], log_file: Path) -> None:
    """Until something accepts TCP connections on 127.0.0.1:port in the namespace (or `proc` died)."""
    probe = f"import socket; socket.create_connection(('127.0.0.1', {port}), timeout=1).close()"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            err = log_file.read_text(errors="replace") if log_file.exists() else ""
            raise RuntimeError(f"server exited with {proc.returncode}: {err[-500:]}")
        r = subprocess.run(ns.cmd([sys.executable, "-c", probe]), capture_output=True, check=False)
        if r.returncode == 0:
            return
        time.sleep(0.2)
    raise RuntimeError(f"server did not listen on port {port} within 20 s")


@contextlib.contextmanager
def _server(ns: traffic._Netns, argv: list[str], port: int, log_file: Path, cwd: Path) -> Iterator[None]:
    with log_file.open("wb") as out:
        proc = subprocess.Popen(
            ns.cmd(argv), stdout=out, stderr=subprocess.STDOUT, cwd=cwd, start_new_session=True
        )
    try:
        _wait_port(ns, port, proc, log_file)
        yield
    finally:
        traffic._stop(proc)


GRPC_SERVER = textwrap.dedent(
    """\
    # grpcio server with generic handlers on raw bytes (no protoc): /bench.Echo/Unary answers one
    # message, /bench.Echo/Stream answers 20; about one unary call in 50 fails with NOT_FOUND.
    import sys, time
    from concurrent import futures
    import grpc

    def varint(n):
        out = bytearray()
        while True:
            b, n = n & 0x7F, n >> 7
            out.append(b | (0x80 if n else 0))
            if not n:
                return bytes(out)

    def msg(i, text):
        t = text.encode()
        return b"\\x08" + varint(i) + b"\\x12" + varint(len(t)) + t

    def unary(request, context):
        n = len(request)
        if request[1] % 50 == 7:  # low bits of the order number (field 1)
            context.abort(grpc.StatusCode.NOT_FOUND, "no such order")
        return msg(n, "order accepted " + "x" * (n % 40))

    def stream(request, context):
        for i in range(20):
            yield msg(i, "update %d of order %d" % (i, len(request)))

    handlers = {
        "Unary": grpc.unary_unary_rpc_method_handler(unary),
        "Stream": grpc.unary_stream_rpc_method_handler(stream),
    }
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("bench.Echo", handlers),))
    server.add_insecure_port("127.0.0.1:" + sys.argv[1])
    server.start()
    print("serving", flush=True)
    server.wait_for_termination()
    """
)

GRPC_CLIENT = textwrap.dedent(
    """\
    # grpcio load client: CHANNELS channels, each keeping up to INFLIGHT unary calls in flight;
    # every 10th call is a server stream. Prints the number of RPCs completed.
    import sys, threading
    import grpc

    port, total, channels, inflight = (int(a) for a in sys.argv[1:5])

    def varint(n):
        out = bytearray()
        while True:
            b, n = n & 0x7F, n >> 7
            out.append(b | (0x80 if n else 0))
            if not n:
                return bytes(out)

    def request(i):
        sku = ("SKU-%06d" % i).encode() + b"-" * (i % 23)
        return b"\\x08" + varint(i) + b"\\x12" + varint(len(sku)) + sku + b"\\x18" + varint(i % 7 + 1)

    done = [0]
    lock = threading.Lock()

    def worker(w):
        ch = grpc.insecure_channel("127.0.0.1:%d" % port)
        unary = ch.unary_unary("/bench.Echo/Unary")
        stream = ch.unary_stream("/bench.Echo/Stream")
        mine = range(w, total, channels)
        pending = []
        for i in mine:
            if i % 10 == 3:
                list(stream(request(i)))
                with lock:
                    done[0] += 1
                continue
            pending.append(unary.future(request(i)))
            if len(pending) >= inflight:
                for f in pending:
                    try:
                        f.result()
                    except grpc.RpcError:
                        pass
                with lock:
                    done[0] += len(pending)
                pending = []
        for f in pending:
            try:
                f.result()
            except grpc.RpcError:
                pass
        with lock:
            done[0] += len(pending)
        ch.close()

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(channels)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(done[0])
    """
)


# ----------------------------------------------------------------------------------------- captures


def _make_capture(
    dest: Path,
    version: str,
    generator: str,
    min_packets: int,
    start_server: Callable[[traffic._Netns, Path, int], contextlib.AbstractContextManager[None]],
    client_round: Callable[[traffic._Netns, Path, int], int],
    log: Log,
) -> ProtoCapture:
    """tcpdump on the namespace's loopback while client rounds run to completion, until enough packets.

    Each round is a whole client run (connections opened and closed inside the capture), so every
    TCP stream in the file runs from handshake to FIN.
    """
    for tool in ("tcpdump", "ip") if os.geteuid() == 0 else ("tcpdump",):
        if shutil.which(tool) is None:
            raise RuntimeError(f"{tool} is not installed")
    use_netns = os.geteuid() == 0 and shutil.which("ip") is not None
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = dest.with_suffix(".partial.pcap")
    partial.unlink(missing_ok=True)
    requests = rounds = 0
    with (
        tempfile.TemporaryDirectory(prefix="podshark-bench-") as tmpname,
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
                log(f"bench: could not cap GSO on the namespace's loopback: {r.stderr.strip()}")
        port = ns.free_port()
        with start_server(ns, tmp, port):
            dump = traffic._Tcpdump(ns, partial, port)
            with contextlib.suppress(OSError):  # ahead of the load in the CPU queue, so it drops nothing
                os.setpriority(os.PRIO_PROCESS, dump.proc.pid, -10)
            try:
                counter = traffic.PcapCounter(partial)
                while True:
                    rounds += 1
                    requests += client_round(ns, tmp, port)
                    time.sleep(0.5)  # the last FIN/ACK exchange reaches the file
                    packets = counter.update()[0]
                    log(f"bench: {version} round {rounds}: {packets} packets so far ({requests} requests)")
                    if packets >= min_packets:
                        break
                    if rounds >= 30:
                        raise RuntimeError(f"capture stuck at {packets} packets after {rounds} rounds")
            finally:
                stats = dump.stop()
    packets, wire = traffic.count_pcap(partial)
    dropped = [s for s in stats if "dropped by kernel" in s and not s.startswith("0 ")]
    if dropped:
        log(f"bench: warning: tcpdump reports drops: {dropped}")
    partial.replace(dest)
    info = ProtoCapture(
        path=str(dest),
        version=version,
        packets=packets,
        wire_bytes=wire,
        file_bytes=dest.stat().st_size,
        created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        netns=use_netns,
        mtu=ns.mtu,
        requests_sent=requests,
        rounds=rounds,
        tcpdump_stats=stats,
        port=port,
        generator=generator,
    )
    dest.with_suffix(".json").write_text(json.dumps(asdict(info), indent=2) + "\n")
    return info


def _cached(
    version: str, min_packets: int, regen: bool, log: Log, make: Callable[[Path], ProtoCapture]
) -> ProtoCapture:
    dest = traffic.OUT_DIR / f"{version}.pcap"
    meta = dest.with_suffix(".json")
    if not regen and dest.exists() and meta.exists():
        try:
            info: ProtoCapture | None = ProtoCapture(**json.loads(meta.read_text()))
        except (TypeError, ValueError):
            info = None
        if info and info.version == version and info.packets >= min_packets:
            info.path = str(dest)
            log(f"bench: reusing {dest} ({info.packets} packets; --regen to make a new one)")
            return info
    log(f"bench: making {dest} (at least {min_packets} packets)")
    info = make(dest)
    prefix = version.rsplit("-v", 1)[0] + "-v"
    for stale in traffic.OUT_DIR.glob(f"{prefix}*.*"):
        if stale.stem != version and stale.suffix in (".pcap", ".json"):
            stale.unlink()
    return info


H2LOAD_PER_ROUND = 5_000


def http2_capture(min_packets: int = MIN_PACKETS, regen: bool = False, log: Log = print) -> ProtoCapture:
    """The cached h2load + nghttpd capture, made on first use."""
    for tool in ("nghttpd", "h2load"):
        if shutil.which(tool) is None and not os.path.exists(f"/usr/sbin/{tool}"):
            raise RuntimeError(f"{tool} is not installed (apt-get install nghttp2-server nghttp2-client)")
    nghttpd = shutil.which("nghttpd") or "/usr/sbin/nghttpd"
    paths: list[str] = []

    @contextlib.contextmanager
    def server(ns: traffic._Netns, tmp: Path, port: int) -> Iterator[None]:
        htdocs = tmp / "htdocs"
        htdocs.mkdir()
        paths.extend(_http2_site(htdocs))
        argv = [nghttpd, "--no-tls", "-a", "127.0.0.1", "-d", str(htdocs), str(port)]
        with _server(ns, argv, port, tmp / "nghttpd.log", tmp):
            yield

    def client(ns: traffic._Netns, tmp: Path, port: int) -> int:
        urls = [f"http://127.0.0.1:{port}{p}" for p in paths]
        argv = ["h2load", "-n", str(H2LOAD_PER_ROUND), "-c", "8", "-m", "10", *urls]
        r = subprocess.run(ns.cmd(argv), capture_output=True, text=True, timeout=600, check=False)
        if r.returncode != 0 or " 0 errored" not in r.stdout:
            raise RuntimeError(f"h2load failed ({r.returncode}): {(r.stdout + r.stderr)[-500:]}")
        for line in r.stdout.splitlines():
            if line.startswith("requests:"):
                return int(line.split(",")[3].split()[0])  # "N succeeded"
        return 0

    generator = f"h2load -n {H2LOAD_PER_ROUND} -c 8 -m 10 per round, nghttpd --no-tls"
    return _cached(
        HTTP2_CAPTURE_VERSION, min_packets, regen, log,
        lambda dest: _make_capture(dest, HTTP2_CAPTURE_VERSION, generator, min_packets, server, client, log),
    )  # fmt: skip


GRPC_PER_ROUND = 6_000


def grpc_capture(min_packets: int = MIN_PACKETS, regen: bool = False, log: Log = print) -> ProtoCapture:
    """The cached grpcio capture, made on first use."""
    try:
        import grpc  # noqa: F401  (the server and client run under this interpreter)
    except ImportError as e:
        raise RuntimeError("grpcio is not installed (pip install grpcio)") from e

    @contextlib.contextmanager
    def server(ns: traffic._Netns, tmp: Path, port: int) -> Iterator[None]:
        (tmp / "grpc_server.py").write_text(GRPC_SERVER)
        # nice: Python client and server can take both CPUs, and a starved tcpdump drops packets
        argv = [*_low_priority(), sys.executable, str(tmp / "grpc_server.py"), str(port)]
        with _server(ns, argv, port, tmp / "grpc.log", tmp):
            yield

    def client(ns: traffic._Netns, tmp: Path, port: int) -> int:
        (tmp / "grpc_client.py").write_text(GRPC_CLIENT)
        argv = [*_low_priority(), sys.executable, str(tmp / "grpc_client.py"), str(port), str(GRPC_PER_ROUND),
                "4", "16"]  # fmt: skip
        r = subprocess.run(ns.cmd(argv), capture_output=True, text=True, timeout=600, check=False)
        if r.returncode != 0:
            raise RuntimeError(f"gRPC client failed ({r.returncode}): {r.stderr[-500:]}")
        return int(r.stdout.strip().splitlines()[-1])

    generator = (
        f"grpcio client, {GRPC_PER_ROUND} RPCs per round (4 channels, 16 unary in flight, "
        "1 in 10 a 20-message stream), grpcio server with generic handlers"
    )
    return _cached(
        GRPC_CAPTURE_VERSION, min_packets, regen, log,
        lambda dest: _make_capture(dest, GRPC_CAPTURE_VERSION, generator, min_packets, server, client, log),
    )  # fmt: skip


# ----------------------------------------------------------------------------------------- measuring


AGG = "\x1f"  # tshark's separator between occurrences of a field (-E aggregator): in no header value


def _http2_statuses(stdout: str) -> Counter[str]:
    """``:status`` values from ``-e http2.streamid -e http2.headers.status`` lines."""
    out: Counter[str] = Counter()
    for line in stdout.splitlines():
        out.update(v for v in line.split("\t")[-1].strip().split(",") if v)
    return out


def _grpc_statuses(stdout: str) -> Counter[str]:
    """``grpc-status`` values from ``-E aggregator=US -e http2.header.name -e http2.header.value`` lines."""
    out: Counter[str] = Counter()
    for line in stdout.splitlines():
        names, _, values = line.partition("\t")
        out.update(v for n, v in zip(names.split(AGG), values.split(AGG)) if n == "grpc-status")
    return out


@dataclass(frozen=True)
class Spec:
    """What differs between the two benchmarks."""

    name: str
    title: str
    protocol: str  # podshark's Call.protocol to count
    tshark_args: tuple[str, ...]  # after ``-r FILE -d tcp.port==PORT,http2``
    parse: Callable[[str], Counter[str]]  # tshark's output -> status values found
    capture: Callable[..., ProtoCapture]
    what: str  # "streams" / "RPCs"


HTTP2 = Spec(
    NAME, TITLE, "http2",
    ("-Y", "http2", "-T", "fields", "-e", "http2.streamid", "-e", "http2.headers.status"),
    _http2_statuses, http2_capture, "streams",
)  # fmt: skip
#: TShark 4.0 has no ``grpc.status_code`` field (newer ones do): grpc-status is read from the HTTP/2
#: header fields of the frames that carry gRPC messages or a grpc-status
GRPC = Spec(
    GRPC_NAME, GRPC_TITLE, "grpc",
    ("-Y", 'grpc || http2.header.name == "grpc-status"', "-T", "fields", "-E", f"aggregator={AGG}",
     "-e", "http2.header.name", "-e", "http2.header.value"),
    _grpc_statuses, grpc_capture, "RPCs",
)  # fmt: skip


def tshark_argv(spec: Spec, cap: ProtoCapture, *prefs: str) -> list[str]:
    opts = [a for p in prefs for a in ("-o", p)]
    return ["tshark", "-r", str(cap.pcap), *opts, "-d", f"tcp.port=={cap.port},http2", *spec.tshark_args]


#: tshark's TCP reassembly gives up on a stream at an out-of-order segment unless told otherwise; the
#: timed command keeps the defaults, a second untimed count shows what tshark finds with it on
OOO_PREF = "tcp.reassemble_out_of_order:TRUE"


@dataclass
class Counts:
    """Sanity counts from the warm-up runs."""

    tshark_status: int = 0  # status values printed (HTTP/2 response HEADERS; gRPC grpc-status)
    tshark_status_values: Counter[str] = field(default_factory=Counter)
    tshark_ooo_status: int = 0  # the same with out-of-order reassembly on
    podshark_lines: int = 0
    podshark_calls: int = 0  # calls of the benchmark's protocol
    podshark_with_status: int = 0
    podshark_status_values: Counter[str] = field(default_factory=Counter)
    podshark_protocols: Counter[str] = field(default_factory=Counter)
    podshark_flags: Counter[str] = field(default_factory=Counter)


def _tshark_out(argv: list[str]) -> str:
    r = subprocess.run(argv, capture_output=True, check=False, timeout=1800)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed (exit {r.returncode}): {_tail(r.stderr)}")
    return r.stdout.decode("utf-8", errors="replace")


def count_tshark(spec: Spec, cap: ProtoCapture, counts: Counts) -> None:
    counts.tshark_status_values = spec.parse(_tshark_out(tshark_argv(spec, cap)))
    counts.tshark_status = sum(counts.tshark_status_values.values())
    counts.tshark_ooo_status = sum(spec.parse(_tshark_out(tshark_argv(spec, cap, OOO_PREF))).values())


def count_podshark(spec: Spec, cap: ProtoCapture, counts: Counts) -> None:
    with subprocess.Popen(
        podshark_argv(cap.pcap, json_mode=True), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    ) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            if not line.strip():
                continue
            counts.podshark_lines += 1
            call = json.loads(line)
            counts.podshark_protocols[call.get("protocol")] += 1
            if call.get("protocol") != spec.protocol:
                continue
            counts.podshark_calls += 1
            counts.podshark_flags.update(call.get("flags") or [])
            if call.get("status") is not None:
                counts.podshark_with_status += 1
                counts.podshark_status_values[str(call["status"])] += 1
        err = proc.stderr.read() if proc.stderr else b""
    if proc.returncode != 0:
        raise RuntimeError(f"podshark dissect --json failed (exit {proc.returncode}): {_tail(err)}")


@dataclass
class Result:
    spec: Spec
    when: str
    machine: dict[str, str]
    revision: str
    capture: ProtoCapture
    runs: int
    tshark: Timing
    counts: Counts
    podshark_json: Timing | None = None
    podshark_table: Timing | None = None
    podshark_missing: str | None = None

    def pps(self, t: Timing | None) -> float | None:
        return self.capture.packets / t.median if t and t.ok else None

    def ratio_of(self, t: Timing | None) -> float | None:
        ours, theirs = self.pps(t), self.pps(self.tshark)
        return ours / theirs if ours and theirs else None

    @property
    def cpu_ratio(self) -> float | None:
        ours, theirs = self.podshark_table, self.tshark
        if not (ours and ours.ok and theirs.ok):
            return None
        mine = statistics.median(ours.cpu)
        return statistics.median(theirs.cpu) / mine if mine > 0 else None


def measure(spec: Spec, runs: int = 3, regen: bool = False, log: Log = print) -> Result:
    if shutil.which("tshark") is None:
        raise RuntimeError("tshark is not installed (apt-get install tshark)")
    cap = spec.capture(regen=regen, log=log)
    res = Result(
        spec=spec,
        when=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        machine=machine(),
        revision=podshark_revision(),
        capture=cap,
        runs=runs,
        tshark=Timing(),
        counts=Counts(),
    )
    log(f"bench {spec.name}: warm-up tshark run on {cap.pcap.name} ({cap.packets} packets)")
    count_tshark(spec, cap, res.counts)
    log(f"bench {spec.name}: warm-up podshark dissect --json run (counts calls)")
    try:
        count_podshark(spec, cap, res.counts)
        res.podshark_json, res.podshark_table = Timing(), Timing()
    except RuntimeError as e:
        res.podshark_missing = str(e)
        log(f"bench {spec.name}: podshark not measured: {e}")
    for i in range(runs):
        log(f"bench {spec.name}: timed round {i + 1}/{runs}")
        timed_run(tshark_argv(spec, cap), res.tshark, timeout=1800)
        if res.podshark_json is not None:
            timed_run(podshark_argv(cap.pcap, json_mode=True), res.podshark_json)
        if res.podshark_table is not None:
            timed_run(podshark_argv(cap.pcap, json_mode=False), res.podshark_table)
    if res.tshark.error:
        raise RuntimeError(f"tshark failed: {res.tshark.error}")
    return res


# ---------------------------------------------------------------------------------------- rendering


def _timing_cell(res: Result, t: Timing | None) -> str:
    if t is None:
        return f"not measured ({res.podshark_missing})"
    if not t.ok:
        return f"failed: {t.error}"
    cpu = statistics.median(t.cpu)
    return (
        f"{t.median:.2f} s (best {t.best:.2f} s; CPU {cpu:.2f} s) — **{_pps(res.pps(t))} packets/s**, "
        f"{res.capture.wire_bytes / t.median / 1e6:.1f} MB/s"
    )


def _top(c: Counter[str], n: int = 6) -> str:
    return ", ".join(f"{k}: {_n(v)}" for k, v in c.most_common(n)) or "none"


def _sanity(res: Result) -> str:
    c, spec = res.counts, res.spec
    what = "response HEADERS with `:status`" if spec.name == NAME else "`grpc-status` values"
    theirs = (
        f"tshark {_n(c.tshark_status)} {what} ({_top(c.tshark_status_values)}); "
        f"{_n(c.tshark_ooo_status)} with `-o {OOO_PREF}`"
    )
    if res.podshark_missing:
        return f"{theirs} — podshark: not measured"
    ours = (
        f"podshark {_n(c.podshark_calls)} {spec.protocol} calls, {_n(c.podshark_with_status)} with a status "
        f"({_top(c.podshark_status_values)}); flags: {_top(c.podshark_flags)}; all calls by protocol: "
        f"{_top(c.podshark_protocols)}"
    )
    return f"{ours} — {theirs}"


def history_line(res: Result) -> str:
    ratio = res.ratio_of(res.podshark_table)
    head = f"- {res.when} ({res.revision}, {res.capture.version}): tshark {_pps(res.pps(res.tshark))} pps"
    if ratio is None:
        return f"{head}; podshark: not measured"
    c = res.counts
    return (
        f"{head}, podshark {_pps(res.pps(res.podshark_table))} pps, ratio {ratio:.1f}x "
        f"(--json {res.ratio_of(res.podshark_json) or 0:.1f}x); {res.spec.what}: podshark "
        f"{_n(c.podshark_with_status)}, tshark {_n(c.tshark_status)}"
    )


def render(res: Result, previous_section: str | None) -> str:
    cap, m, spec = res.capture, res.machine, res.spec
    where = f"network namespace, loopback MTU {cap.mtu}" if cap.netns else "host loopback"
    ratio = res.ratio_of(res.podshark_table)
    ratio_cell = "-" if ratio is None else f"**{ratio:.1f}x** (no target; reported as measured)"
    if ratio is not None and res.cpu_ratio is not None:
        ratio_cell += f"; CPU time (user+sys) {res.cpu_ratio:.1f}x"
    json_ratio = res.ratio_of(res.podshark_json)
    tshark_cmd = shlex.join(tshark_argv(spec, cap)).replace(str(cap.pcap), "FILE")
    tshark_cmd = tshark_cmd.replace(f"'aggregator={AGG}'", "aggregator=$'\\x1f'")
    rows = [
        ("date", res.when),
        ("machine", f"{m['nproc']} CPUs, {m['cpu']}, Python {m['python']}, TShark {m['tshark']} "
                    f"(load average {m['load']} at start)"),
        ("podshark revision", res.revision),
        ("capture", f"`bench/out/{Path(cap.path).name}` ({cap.version}): {cap.generator}; {where}, "
                    f"port {cap.port}; {_n(cap.requests_sent)} requests completed by the client in "
                    f"{cap.rounds} rounds"),
        ("packets", _n(cap.packets)),
        ("bytes", f"{_n(cap.wire_bytes)} on the wire ({cap.wire_bytes / cap.packets:.0f} B/packet); "
                  f"file {_n(cap.file_bytes)}"),
        ("tshark fields", _timing_cell(res, res.tshark)),
        ("podshark dissect --json", _timing_cell(res, res.podshark_json)),
        ("podshark dissect (table)", _timing_cell(res, res.podshark_table)),
        ("ratio (`podshark dissect` pps / tshark pps, medians)", ratio_cell),
        ("ratio with `--json`", "-" if json_ratio is None else f"{json_ratio:.1f}x"),
        (f"{spec.what} found (sanity check)", _sanity(res)),
    ]  # fmt: skip
    history = keep(history_lines(previous_section), history_line(res))
    return render_section(
        f"## {spec.name}: {spec.title}",
        (
            "`podshark dissect FILE > /dev/null` (a table row per call) and `podshark dissect FILE --json` "
            f"against `{tshark_cmd} > /dev/null` on the same capture in the same run. "
            "Wall clock of the whole "
            "command, "
            f"median of {res.runs} timed runs (interleaved, after one untimed warm-up run of each that also "
            f"counts the output); packets/s = packets in the capture / median time. Made by "
            f"`python -m bench {spec.name}`."
        ),
        rows,
        history,
    )


def summary(res: Result) -> str:
    cap = res.capture
    lines = [f"{res.spec.name}: {cap.packets:,} packets, {cap.wire_bytes:,} bytes ({cap.pcap})"]
    for label, t in (("tshark", res.tshark), ("podshark --json", res.podshark_json),
                     ("podshark table", res.podshark_table)):  # fmt: skip
        if t is None:
            lines.append(f"  {label:16} not measured ({res.podshark_missing})")
        elif not t.ok:
            lines.append(f"  {label:16} FAILED: {t.error}")
        else:
            lines.append(
                f"  {label:16} median {t.median:.2f} s, best {t.best:.2f} s -> {_pps(res.pps(t))} packets/s"
            )
    lines.append(f"  {_sanity(res)}")
    ratio = res.ratio_of(res.podshark_table)
    if ratio is not None:
        lines.append(
            f"  ratio podshark dissect/tshark {ratio:.1f}x, "
            f"--json {res.ratio_of(res.podshark_json) or 0:.1f}x"
        )
    return "\n".join(lines)


def _run(spec: Spec, previous_section: str | None, runs: int, regen: bool, log: Log) -> str:
    res = measure(spec, runs=runs, regen=regen, log=log)
    print(summary(res), flush=True)
    return render(res, previous_section)


def run(previous_section: str | None, runs: int = 3, regen: bool = False, log: Log = print) -> str:
    """``python -m bench http2``."""
    return _run(HTTP2, previous_section, runs, regen, log)


def run_grpc(previous_section: str | None, runs: int = 3, regen: bool = False, log: Log = print) -> str:
    """``python -m bench grpc``."""
    return _run(GRPC, previous_section, runs, regen, log)


if __name__ == "__main__":  # python -m bench.http2_dissect [http2|grpc]: just (re)make the captures
    which = sys.argv[1:] or [NAME, GRPC_NAME]
    for name in which:
        made = http2_capture(regen=True) if name == NAME else grpc_capture(regen=True)
        print(json.dumps(asdict(made), indent=2))
