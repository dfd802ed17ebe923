"""DNS and Kafka dissection throughput: ``podshark dissect`` against tshark on the same capture.

Two benchmarks live here, each with its own section of BENCHMARKS.md:

- ``dns``: dnsmasq (``--no-resolv --no-hosts``, local records only: A/AAAA host records, TXT, MX, SRV,
  a CNAME, and ``--local=/bench.internal/`` so unknown names get NXDOMAIN; names outside the zone get
  REFUSED) in one network namespace, dnsperf in another, joined by a veth pair; tcpdump on the server's
  veth end records ``port 53``. Each round is a dnsperf run over UDP (8 clients) and a smaller one over
  TCP (8 connections), both rate-limited so tcpdump drops nothing. tshark's command:
  ``tshark -r FILE -Y dns -T fields -e dns.id -e dns.flags.rcode`` (a response has an rcode, a query not).
- ``kafka``: no broker can run here (Kafka is not packaged in Debian 12: only clients and librdkafka
  are), so the capture replays real Kafka conversations: the byte streams of every TCP connection in
  the ``kafka__*`` corpus captures are taken out with podshark's engine and a recording analyzer, split
  into length-prefixed messages, and replayed over real sockets on the loopback of a network namespace
  (MTU 1500, GSO capped at 1500): a small asyncio server answers each request with the response recorded
  for the same bytes (correlation id aside), an asyncio client opens many new connections, 16 at a
  time, each carrying the requests of 1-6 recorded conversations in a row with correlation ids counting
  up from a random start (seeded). So the file has real kernel TCP (handshakes, ACKs, FINs) carrying
  real Kafka payloads (Produce v1/v2/v9, Fetch v12/v13, Metadata v0, ListOffsets v0, ApiVersions v3,
  JoinGroup v7, OffsetCommit v8, Heartbeat). tshark's command: ``tshark -r FILE -d
  tcp.port==PORT,kafka -Y kafka -T fields -e kafka.api_key -e kafka.correlation_id``.

The method is the one of `bench.http1_dissect` and `bench.http2_dissect` (whose helpers are reused):
the capture is made once and cached in ``bench/out/`` (until the file holds at least 120k packets),
each tool gets one untimed warm-up run whose output is counted (the sanity check: queries/responses or
requests/responses each tool found; tshark's split between the two comes from one more untimed run
with ``tcp.dstport``/``dns.flags.response``), then ``runs`` timed runs, interleaved, stdout to
/dev/null, median reported. There is no target ratio; the figures are reported as measured.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import textwrap
import threading
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
from bench.http2_dissect import ProtoCapture, _cached, _low_priority, _server
from bench.report import history_lines, keep, render_section
from dissect.base import ConnContext, Verdict
from dissect.engine import Engine
from dissect.pcapio import CaptureReader

DNS_NAME = "dns"
DNS_TITLE = "DNS dissection throughput (podshark vs tshark)"
KAFKA_NAME = "kafka"
KAFKA_TITLE = "Kafka dissection throughput (podshark vs tshark)"

#: part of the cached file names: bump when the records, the query mix, the corpus or the load change
DNS_CAPTURE_VERSION = "dns-v1"
KAFKA_CAPTURE_VERSION = "kafka-v1"
MIN_PACKETS = traffic.MIN_PACKETS
REPO = Path(__file__).resolve().parent.parent
CORPUS_DIRS = (REPO.parent / "shared" / "corpus", REPO / "fixtures" / "pcaps")

Log = Callable[[str], None]


# --------------------------------------------------------------------------------------- namespaces


@dataclass
class _Pair:
    """Two throw-away network namespaces (client, server) joined by a veth pair, each end in its own.

    Addresses come from 198.18.0.0/15 (RFC 2544 benchmark range); they exist only inside the two
    namespaces. Everything started in them is ended by pid by its owner; `_netns_pair` deletes them.
    """

    client_ns: str
    server_ns: str
    client_if: str
    server_if: str
    client_ip: str = "198.18.200.1"
    server_ip: str = "198.18.200.2"

    def cmd(self, ns: str, argv: list[str]) -> list[str]:
        return ["ip", "netns", "exec", ns, *argv]

    def client(self, argv: list[str]) -> list[str]:
        return self.cmd(self.client_ns, argv)

    def server(self, argv: list[str]) -> list[str]:
        return self.cmd(self.server_ns, argv)


@contextlib.contextmanager
def _netns_pair() -> Iterator[_Pair]:
    if os.geteuid() != 0 or shutil.which("ip") is None:
        raise RuntimeError("the DNS capture needs root and iproute2 (two network namespaces, a veth pair)")
    tag = str(os.getpid())
    pair = _Pair(f"psbench{tag}c", f"psbench{tag}s", f"psbc{tag}", f"psbs{tag}")
    created: list[str] = []

    def ip(*args: str) -> None:
        r = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
        if r.returncode != 0:
            raise RuntimeError(f"ip {' '.join(args)} failed: {r.stderr.strip()}")

    try:
        for ns in (pair.client_ns, pair.server_ns):
            ip("netns", "add", ns)
            created.append(ns)
        ip("link", "add", pair.client_if, "netns", pair.client_ns, "type", "veth",
           "peer", "name", pair.server_if, "netns", pair.server_ns)  # fmt: skip
        for ns, ifname, addr in ((pair.client_ns, pair.client_if, pair.client_ip),
                                 (pair.server_ns, pair.server_if, pair.server_ip)):  # fmt: skip
            ip("-n", ns, "addr", "add", f"{addr}/30", "dev", ifname)
            ip("-n", ns, "link", "set", ifname, "up")
            ip("-n", ns, "link", "set", "lo", "up")
        yield pair
    finally:
        for ns in created:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)


class _Tcpdump:
    """tcpdump on one interface of a namespace with a BPF filter (`traffic._Tcpdump` is loopback/TCP).

    Started the same way: it must print "listening on" before traffic starts, and it is stopped with
    SIGINT so it flushes the file and prints its drop counters.
    """

    def __init__(self, prefix: list[str], iface: str, bpf: str, pcap: Path) -> None:
        argv = ["tcpdump", "-i", iface, "-n", "-U", "--immediate-mode", "-B", "131072", "-Z", "root",
                "-w", str(pcap), bpf]  # fmt: skip
        self.proc: subprocess.Popen[bytes] = subprocess.Popen(
            [*prefix, *argv], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True
        )
        with contextlib.suppress(OSError):  # ahead of the load in the CPU queue, so it drops nothing
            os.setpriority(os.PRIO_PROCESS, self.proc.pid, -10)
        self.lines: list[str] = []
        self._listening = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        if not self._listening.wait(15):
            traffic._stop(self.proc, signal.SIGINT)
            raise RuntimeError(f"tcpdump did not start listening: {self.lines}")

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for raw in self.proc.stderr:
            line = raw.decode(errors="replace").strip()
            self.lines.append(line)
            if "listening on" in line:
                self._listening.set()

    def stop(self) -> list[str]:
        traffic._stop(self.proc, signal.SIGINT, timeout=20)
        self._reader.join(5)
        return [ln for ln in self.lines if "packets" in ln]


def _record(
    dest: Path,
    dump_prefix: list[str],
    iface: str,
    bpf: str,
    one_round: Callable[[], str],
    log: Log,
    min_packets: int,
) -> tuple[int, int, list[str], int]:
    """tcpdump while ``one_round`` runs whole client rounds, until the file holds ``min_packets``.

    Each round opens and closes its own connections inside the capture, so every TCP stream in the file
    runs from handshake to FIN. Returns (packets, wire bytes, tcpdump's statistics, rounds); the file is
    written to a ``.partial.pcap`` and renamed to ``dest`` at the end.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = dest.with_suffix(".partial.pcap")
    partial.unlink(missing_ok=True)
    rounds = 0
    dump = _Tcpdump(dump_prefix, iface, bpf, partial)
    try:
        counter = traffic.PcapCounter(partial)
        while True:
            rounds += 1
            progress = one_round()
            time.sleep(0.5)  # the last FIN/ACK exchange reaches the file
            packets = counter.update()[0]
            log(f"bench: {dest.stem} round {rounds}: {packets} packets so far ({progress})")
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
    return packets, wire, stats, rounds


# ---------------------------------------------------------------------------------------------- DNS

ZONE = "bench.internal"
DNS_HOSTS = 40  # svc-0 .. svc-39, each with an A and an AAAA record
#: dnsperf rates (queries/s): well under what dnsmasq answers on one core, so nothing is lost and
#: tcpdump (on the same two CPUs) keeps up
DNS_UDP_PER_ROUND, DNS_UDP_QPS, DNS_UDP_CLIENTS = 20_000, 12_000, 8
DNS_TCP_PER_ROUND, DNS_TCP_QPS, DNS_TCP_CLIENTS = 2_000, 2_000, 8


def _dnsmasq_argv(tmp: Path, listen: str) -> list[str]:
    """dnsmasq answering from its command line only: no upstream, no /etc/hosts, no config file."""
    argv = ["dnsmasq", "--keep-in-foreground", "--conf-file=/dev/null", "--no-resolv", "--no-hosts",
            "--user=root", f"--pid-file={tmp / 'dnsmasq.pid'}", f"--listen-address={listen}",
            "--bind-interfaces", f"--local=/{ZONE}/", "--max-tcp-connections=64"]  # fmt: skip
    for i in range(DNS_HOSTS):
        argv.append(f"--host-record=svc-{i}.{ZONE},10.20.{i // 250}.{i % 250 + 1},fd00:20::{i + 1:x}")
    for i in range(8):
        argv.append(f"--txt-record=svc-{i}.{ZONE},v=podshark1 svc={i},owner=bench,region=eu-west-{i % 3}")
    argv += [f"--txt-record={ZONE},v=spf1 ip4:10.20.0.0/16 -all"]
    argv += [f"--mx-host={ZONE},mx{i}.{ZONE},{10 * (i + 1)}" for i in range(3)]
    argv += [f"--mx-host=mail.{ZONE},mx0.{ZONE},5"]
    argv += [f"--srv-host=_kafka._tcp.{ZONE},svc-{i}.{ZONE},9092,0,{i + 1}" for i in range(3)]
    argv += [f"--cname=www.{ZONE},svc-0.{ZONE}"]
    return argv


def _dns_queries() -> list[str]:
    """dnsperf's data file: a mix weighted like service traffic (mostly A, then AAAA, some TXT/MX/SRV,
    a share of NXDOMAIN for names in the zone and REFUSED for names outside it)."""
    lines: list[str] = []
    for i in range(200):
        h = f"svc-{i % DNS_HOSTS}.{ZONE}"
        lines += [f"{h} A", f"{h} AAAA", f"svc-{(i * 7) % DNS_HOSTS}.{ZONE} A"]
        if i % 2 == 0:
            lines.append(f"svc-{i % 8}.{ZONE} TXT")
        if i % 4 == 0:
            lines.append(f"{ZONE} MX")
        if i % 5 == 0:
            lines += [f"_kafka._tcp.{ZONE} SRV", f"www.{ZONE} A"]
        if i % 3 == 0:
            lines.append(f"missing-{i}.{ZONE} A")  # NXDOMAIN
        if i % 10 == 0:
            lines.append(f"svc-{i}.elsewhere.example AAAA")  # outside the local zone: REFUSED
    return lines


def _dns_query_packet(name: str) -> bytes:
    """A minimal DNS query (A, IN, recursion desired) for the readiness probe."""
    qname = b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0"
    return struct.pack("!HHHHHH", 0x5053, 0x0100, 1, 0, 0, 0) + qname + struct.pack("!HH", 1, 1)


def _wait_dns(pair: _Pair, proc: subprocess.Popen[bytes], log_file: Path) -> None:
    probe = textwrap.dedent(
        f"""\
        import socket
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.settimeout(0.5)
        s.sendto({_dns_query_packet(f"svc-0.{ZONE}")!r}, ({pair.server_ip!r}, 53))
        s.recv(512)
        """
    )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            err = log_file.read_text(errors="replace") if log_file.exists() else ""
            raise RuntimeError(f"dnsmasq exited with {proc.returncode}: {err[-500:]}")
        r = subprocess.run(pair.client([sys.executable, "-c", probe]), capture_output=True, check=False)
        if r.returncode == 0:
            return
        time.sleep(0.2)
    raise RuntimeError("dnsmasq did not answer within 20 s")


@dataclass
class _Dnsperf:
    sent: int = 0
    completed: int = 0
    lost: int = 0
    rcodes: Counter[str] = field(default_factory=Counter)


def _dnsperf(pair: _Pair, data: Path, mode: str, count: int, qps: int, clients: int) -> _Dnsperf:
    per_file = len(data.read_text().splitlines())
    runs = max(1, count // per_file)
    inflight = clients * (4 if mode == "tcp" else 16)
    argv = ["dnsperf", "-m", mode, "-s", pair.server_ip, "-d", str(data), "-n", str(runs),
            "-c", str(clients), "-q", str(inflight), "-Q", str(qps), "-t", "2"]  # fmt: skip
    r = subprocess.run(
        pair.client([*_low_priority(), *argv]), capture_output=True, text=True, timeout=600, check=False
    )
    if r.returncode != 0:
        raise RuntimeError(f"dnsperf -m {mode} failed ({r.returncode}): {(r.stdout + r.stderr)[-500:]}")
    out = _Dnsperf()
    for line in r.stdout.splitlines():
        words = line.split()
        if line.strip().startswith("Queries sent:"):
            out.sent = int(words[2])
        elif line.strip().startswith("Queries completed:"):
            out.completed = int(words[2])
        elif line.strip().startswith("Queries lost:"):
            out.lost = int(words[2])
        elif line.strip().startswith("Response codes:"):
            for part in line.split(":", 1)[1].split(","):
                code, n, *_ = part.split()
                out.rcodes[code] += int(n)
    return out


def _make_dns_capture(dest: Path, min_packets: int, log: Log) -> ProtoCapture:
    for tool in ("dnsmasq", "dnsperf", "tcpdump", "ip"):
        if shutil.which(tool) is None and not os.path.exists(f"/usr/sbin/{tool}"):
            raise RuntimeError(
                f"{tool} is not installed (apt-get install dnsmasq-base dnsperf tcpdump iproute2)"
            )
    totals = _Dnsperf()
    per_mode: Counter[str] = Counter()
    with tempfile.TemporaryDirectory(prefix="podshark-bench-") as tmpname, _netns_pair() as pair:
        tmp = Path(tmpname)
        tmp.chmod(0o755)
        data = tmp / "queries.txt"
        data.write_text("\n".join(_dns_queries()) + "\n")

        def one_round() -> str:
            for mode, count, qps, clients in (
                ("udp", DNS_UDP_PER_ROUND, DNS_UDP_QPS, DNS_UDP_CLIENTS),
                ("tcp", DNS_TCP_PER_ROUND, DNS_TCP_QPS, DNS_TCP_CLIENTS),
            ):
                got = _dnsperf(pair, data, mode, count, qps, clients)
                totals.sent += got.sent
                totals.completed += got.completed
                totals.lost += got.lost
                totals.rcodes.update(got.rcodes)
                per_mode[mode] += got.completed
            return f"{totals.completed} queries answered, {totals.lost} lost"

        log_file = tmp / "dnsmasq.log"
        with log_file.open("wb") as out:
            server = subprocess.Popen(
                pair.server(_dnsmasq_argv(tmp, pair.server_ip)), stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        try:
            _wait_dns(pair, server, log_file)
            packets, wire, stats, rounds = _record(
                dest, pair.server([]), pair.server_if, "port 53", one_round, log, min_packets
            )
        finally:
            traffic._stop(server)
    rcodes = ", ".join(f"{k} {v:,}" for k, v in totals.rcodes.most_common())
    generator = (
        f"dnsperf (UDP: {DNS_UDP_PER_ROUND:,} queries per round, {DNS_UDP_CLIENTS} clients, "
        f"{DNS_UDP_QPS:,}/s; TCP: {DNS_TCP_PER_ROUND:,}, {DNS_TCP_CLIENTS} connections, {DNS_TCP_QPS:,}/s) "
        f"against dnsmasq with local records only (A/AAAA/TXT/MX/SRV/CNAME); dnsperf: {totals.sent:,} sent, "
        f"{per_mode['udp']:,} answered over UDP and {per_mode['tcp']:,} over TCP, {totals.lost:,} lost; "
        f"rcodes {rcodes}"
    )
    return _write_info(dest, DNS_CAPTURE_VERSION, packets, wire, stats, rounds, totals.completed, 53,
                       generator, netns=True, mtu=1500)  # fmt: skip


def _write_info(
    dest: Path,
    version: str,
    packets: int,
    wire: int,
    stats: list[str],
    rounds: int,
    requests: int,
    port: int,
    generator: str,
    netns: bool,
    mtu: int | None,
) -> ProtoCapture:
    info = ProtoCapture(
        path=str(dest),
        version=version,
        packets=packets,
        wire_bytes=wire,
        file_bytes=dest.stat().st_size,
        created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        netns=netns,
        mtu=mtu,
        requests_sent=requests,
        rounds=rounds,
        tcpdump_stats=stats,
        port=port,
        generator=generator,
    )
    dest.with_suffix(".json").write_text(json.dumps(asdict(info), indent=2) + "\n")
    return info


def dns_capture(min_packets: int = MIN_PACKETS, regen: bool = False, log: Log = print) -> ProtoCapture:
    """The cached dnsperf + dnsmasq capture, made on first use."""
    return _cached(DNS_CAPTURE_VERSION, min_packets, regen, log,
                   lambda dest: _make_dns_capture(dest, min_packets, log))  # fmt: skip


# -------------------------------------------------------------------------------------------- Kafka

#: one replayed conversation: (request bytes, recorded response bytes or b"" when none was recorded)
Conversation = list[tuple[bytes, bytes]]


class _Recorder:
    """An analyzer that claims every TCP connection and keeps both byte streams (as the engine delivers
    them: reassembled, in order; a gap ends what is usable of that direction)."""

    name = "record"

    def __init__(self) -> None:
        self.conns: list[tuple[ConnContext, list[bytearray], list[bool]]] = []

    def detect(self, data: bytes, direction: int, port_hint: int | None) -> Verdict:
        return Verdict.YES

    def new(self, ctx: ConnContext) -> _Recorder.Stream:
        stream = _Recorder.Stream()
        self.conns.append((ctx, stream.bufs, stream.gapped))
        return stream

    class Stream:
        def __init__(self) -> None:
            self.bufs = [bytearray(), bytearray()]
            self.gapped = [False, False]

        def feed(self, direction: int, data: bytes, ts: int) -> None:
            if not self.gapped[direction]:
                self.bufs[direction] += data

        def gap(self, direction: int, n: int, ts: int, snaplen: bool = False) -> None:
            self.gapped[direction] = True

        def note(self, direction: int, flag: str) -> None:
            pass

        def close(self, ts: int) -> None:
            pass


def _messages(data: bytes) -> list[bytes]:
    """Complete length-prefixed Kafka messages (4-byte size first) at the start of ``data``."""
    out, pos = [], 0
    while pos + 4 <= len(data):
        (size,) = struct.unpack_from("!i", data, pos)
        if size < 4 or size > 64 << 20 or pos + 4 + size > len(data):
            break
        out.append(bytes(data[pos : pos + 4 + size]))
        pos += 4 + size
    return out


def _without_id(request: bytes) -> bytes:
    """A request with its correlation id (bytes 8-12: after size, api_key and api_version) zeroed."""
    return request[:8] + bytes(4) + request[12:]


def _looks_like_requests(msgs: list[bytes]) -> bool:
    """Request header v0+: api_key (int16, 0..100), api_version (int16, 0..30), correlation_id."""
    if not msgs or len(msgs[0]) < 12:
        return False
    key, version = struct.unpack_from("!hh", msgs[0], 4)
    return 0 <= key <= 100 and 0 <= version <= 30


def kafka_conversations(log: Log = print) -> tuple[list[Conversation], list[str]]:
    """Every Kafka conversation of the ``kafka__*`` corpus captures, and the files they came from."""
    seen: dict[str, Path] = {}
    for d in CORPUS_DIRS:
        for p in sorted(d.glob("kafka__*.pcap*")):
            seen.setdefault(p.name, p)
    if not seen:
        raise RuntimeError(f"no kafka__* captures in {' or '.join(map(str, CORPUS_DIRS))}")
    convs: list[Conversation] = []
    used: list[str] = []
    for name, path in sorted(seen.items()):
        rec = _Recorder()
        with CaptureReader(path) as r:
            for _ in Engine("bench", analyzers=[rec], udp_analyzers=[]).run(r):  # type: ignore[list-item]
                pass
        found = 0
        for _ctx, bufs, _gapped in rec.conns:
            sides = [_messages(bytes(b)) for b in bufs]
            client = 0 if _looks_like_requests(sides[0]) or not _looks_like_requests(sides[1]) else 1
            requests, responses = sides[client], sides[1 - client]
            if not _looks_like_requests(requests):
                continue
            by_corr: dict[bytes, bytes] = {}
            for m in responses:
                by_corr.setdefault(m[4:8], m)
            conv = [(q, by_corr.pop(q[8:12], b"")) for q in requests]
            convs.append(conv)
            found += 1
        if found:
            used.append(name)
        log(f"bench: {name}: {found} Kafka conversation(s)")
    if not convs:
        raise RuntimeError("no Kafka conversation found in the corpus captures")
    return convs, used


KAFKA_SERVER = textwrap.dedent(
    """\
    # Replays recorded Kafka responses: reads length-prefixed requests and answers each with the response
    # recorded for the same request bytes (the correlation id aside: the answer carries the request's),
    # or not at all when none was recorded, until the client closes.
    import asyncio, json, sys

    port, table_file = int(sys.argv[1]), sys.argv[2]
    with open(table_file) as f:
        table = {bytes.fromhex(k): bytes.fromhex(v) for k, v in json.load(f).items()}
    NO_ID = bytes(4)

    async def handle(reader, writer):
        try:
            while True:
                head = await reader.readexactly(4)
                body = await reader.readexactly(int.from_bytes(head, "big"))
                answer = table.get(head + body[:4] + NO_ID + body[8:])
                if answer:
                    writer.write(answer[:4] + body[4:8] + answer[8:])
                    await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        writer.close()

    async def main():
        server = await asyncio.start_server(handle, "127.0.0.1", port, backlog=4096)
        print("serving", flush=True)
        async with server:
            await server.serve_forever()

    asyncio.run(main())
    """
)

KAFKA_CLIENT = textwrap.dedent(
    """\
    # Replays recorded Kafka requests over TOTAL new TCP connections, CONCURRENCY at a time. A connection
    # carries the requests of 1-6 recorded conversations in a row (as a client keeps its connection to a
    # broker), with correlation ids counting up from a random start, and waits for each recorded answer
    # (checked byte for byte); a conversation whose request was never answered in its capture gets a
    # connection of its own. Seeded by connection number and round: every capture is the same.
    # Prints "requests responses".
    import asyncio, json, random, sys

    port, convs_file, total, concurrency, round_no = (sys.argv[1], sys.argv[2], *map(int, sys.argv[3:6]))
    port = int(port)
    with open(convs_file) as f:
        convs = [[(bytes.fromhex(q), bytes.fromhex(r)) for q, r in c] for c in json.load(f)]
    answered = [c for c in convs if all(r for _, r in c)]
    done = [0, 0]

    def plan(n):
        rnd = random.Random(round_no * 1_000_003 + n)
        conv = convs[n % len(convs)]
        if conv not in answered:
            seq = list(conv)
        else:
            seq = [pair for _ in range(rnd.randint(1, 6)) for pair in rnd.choice(answered)]
        cid = rnd.randrange(1, 1 << 30)
        out = []
        for j, (q, r) in enumerate(seq):
            c = (cid + j).to_bytes(4, "big")
            out.append((q[:8] + c + q[12:], r[:4] + c + r[8:] if r else b""))
        return out

    async def one(seq):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for request, response in seq:
            writer.write(request)
            await writer.drain()
            done[0] += 1
            if response:
                got = await reader.readexactly(len(response))
                if got != response:
                    raise SystemExit("unexpected response bytes")
                done[1] += 1
        writer.close()
        await writer.wait_closed()

    async def main():
        sem = asyncio.Semaphore(concurrency)

        async def guarded(n):
            async with sem:
                await one(plan(n))

        await asyncio.gather(*(guarded(n) for n in range(total)))

    asyncio.run(main())
    print(done[0], done[1])
    """
)

KAFKA_PORT = 9092
KAFKA_CONNS_PER_ROUND = 1_500
KAFKA_CONCURRENCY = 16


def _make_kafka_capture(dest: Path, min_packets: int, log: Log) -> ProtoCapture:
    """Replay rounds on the loopback of a private namespace (MTU 1500, GSO capped at 1500 so segments are
    wire-sized, as in `bench.http2_dissect`); on the host loopback when not root."""
    if shutil.which("tcpdump") is None:
        raise RuntimeError("tcpdump is not installed")
    convs, used = kafka_conversations(log)
    # the server answers by request bytes with the correlation id zeroed; the client expects what the
    # server will answer (the first recording, should two recorded requests differ only in their ids)
    answers: dict[bytes, bytes] = {}
    for conv in convs:
        for q, r in conv:
            if r:
                answers.setdefault(_without_id(q), r)
    convs = [[(q, answers.get(_without_id(q), b"") if r else b"") for q, r in conv] for conv in convs]
    table = {k.hex(): v.hex() for k, v in answers.items()}
    n_req = sum(len(c) for c in convs)
    n_resp = sum(1 for c in convs for _, r in c if r)
    use_netns = os.geteuid() == 0 and shutil.which("ip") is not None
    done = [0, 0]
    rounds_done = [0]
    with (
        tempfile.TemporaryDirectory(prefix="podshark-bench-") as tmpname,
        traffic._Netns(use_netns, 1500) as ns,
    ):
        tmp = Path(tmpname)
        tmp.chmod(0o755)
        if ns.name:
            gso = subprocess.run(["ip", "-n", ns.name, "link", "set", "lo", "gso_max_size", "1500"],
                                 capture_output=True, text=True, check=False)  # fmt: skip
            if gso.returncode != 0:
                log(f"bench: could not cap GSO on the namespace's loopback: {gso.stderr.strip()}")
        port = KAFKA_PORT if ns.name else ns.free_port()
        (tmp / "kafka_server.py").write_text(KAFKA_SERVER)
        (tmp / "kafka_client.py").write_text(KAFKA_CLIENT)
        (tmp / "table.json").write_text(json.dumps(table))
        (tmp / "convs.json").write_text(json.dumps([[(q.hex(), a.hex()) for q, a in c] for c in convs]))

        def one_round() -> str:
            argv = [*_low_priority(), sys.executable, str(tmp / "kafka_client.py"), str(port),
                    str(tmp / "convs.json"), str(KAFKA_CONNS_PER_ROUND), str(KAFKA_CONCURRENCY),
                    str(rounds_done[0])]  # fmt: skip
            rounds_done[0] += 1
            r = subprocess.run(ns.cmd(argv), capture_output=True, text=True, timeout=600, check=False)
            if r.returncode != 0:
                raise RuntimeError(
                    f"Kafka replay client failed ({r.returncode}): {(r.stdout + r.stderr)[-500:]}"
                )
            requests, responses = (int(x) for x in r.stdout.split()[-2:])
            done[0] += requests
            done[1] += responses
            return f"{done[0]} requests sent, {done[1]} responses received"

        # nice: the Python client and server can take both CPUs, and a starved tcpdump drops packets
        argv = [
            *_low_priority(),
            sys.executable,
            str(tmp / "kafka_server.py"),
            str(port),
            str(tmp / "table.json"),
        ]
        with _server(ns, argv, port, tmp / "kafka.log", tmp):
            packets, wire, stats, rounds = _record(
                dest, ns.cmd([]), "lo", f"tcp port {port}", one_round, log, min_packets
            )
    generator = (
        f"replay of {len(convs)} real Kafka conversations ({n_req} requests, {n_resp} with a recorded "
        f"response) from {len(used)} corpus captures ({', '.join(used)}), {KAFKA_CONNS_PER_ROUND:,} new "
        f"connections per round, {KAFKA_CONCURRENCY} at a time (asyncio replay client and server); "
        f"{done[0]:,} requests sent, {done[1]:,} responses received"
    )
    return _write_info(dest, KAFKA_CAPTURE_VERSION, packets, wire, stats, rounds, done[0], port, generator,
                       netns=use_netns, mtu=ns.mtu)  # fmt: skip


def kafka_capture(min_packets: int = MIN_PACKETS, regen: bool = False, log: Log = print) -> ProtoCapture:
    """The cached replay capture of the corpus' Kafka conversations, made on first use."""
    return _cached(KAFKA_CAPTURE_VERSION, min_packets, regen, log,
                   lambda dest: _make_kafka_capture(dest, min_packets, log))  # fmt: skip


# ----------------------------------------------------------------------------------------- measuring


def _tshark_out(argv: list[str]) -> str:
    r = subprocess.run(argv, capture_output=True, check=False, timeout=1800)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed (exit {r.returncode}): {_tail(r.stderr)}")
    return r.stdout.decode("utf-8", errors="replace")


@dataclass
class TsharkCounts:
    """From tshark's warm-up run (the timed command) and one more untimed run that splits directions."""

    lines: int = 0  # frames printed
    messages: int = 0  # DNS messages / Kafka PDUs (a frame may carry several: comma-separated values)
    requests: int = 0  # queries / requests
    responses: int = 0
    values: Counter[str] = field(default_factory=Counter)  # rcodes / api keys


@dataclass(frozen=True)
class Spec:
    """What differs between the two benchmarks."""

    name: str
    title: str
    protocol: str  # podshark's Call.protocol to count
    tshark_args: tuple[str, ...]  # after ``-r FILE``; ``{port}`` is replaced by the capture's port
    split_args: tuple[str, ...]  # the untimed run that tells requests from responses (2 fields)
    capture: Callable[..., ProtoCapture]
    what: tuple[str, str]  # ("queries", "responses") / ("requests", "responses")
    value_name: str  # what tshark's second field / podshark's status is: "rcode" / "api_key"


DNS = Spec(
    DNS_NAME, DNS_TITLE, "dns",
    ("-Y", "dns", "-T", "fields", "-e", "dns.id", "-e", "dns.flags.rcode"),
    ("-Y", "dns", "-T", "fields", "-e", "dns.flags.response", "-e", "dns.id"),
    dns_capture, ("queries", "responses"), "rcode",
)  # fmt: skip
KAFKA = Spec(
    KAFKA_NAME, KAFKA_TITLE, "kafka",
    ("-d", "tcp.port=={port},kafka", "-Y", "kafka", "-T", "fields", "-e", "kafka.api_key", "-e",
     "kafka.correlation_id"),
    ("-d", "tcp.port=={port},kafka", "-Y", "kafka", "-T", "fields", "-e", "tcp.dstport", "-e",
     "kafka.correlation_id"),
    kafka_capture, ("requests", "responses"), "api_key",
)  # fmt: skip


def tshark_argv(spec: Spec, cap: ProtoCapture, args: tuple[str, ...] | None = None) -> list[str]:
    return ["tshark", "-r", str(cap.pcap), *(a.format(port=cap.port) for a in (args or spec.tshark_args))]


def _values(cell: str) -> list[str]:
    return [v for v in cell.strip().split(",") if v]


def count_tshark(spec: Spec, cap: ProtoCapture, counts: TsharkCounts) -> None:
    for line in _tshark_out(tshark_argv(spec, cap)).splitlines():
        first, _, second = line.partition("\t")
        counts.lines += 1
        ids = _values(first) if spec is DNS else _values(second)
        counts.messages += len(ids)
        if spec is DNS:
            counts.values.update(_values(second))  # rcodes: responses only
        else:
            counts.values.update(_values(first))  # api keys: requests, and the responses tshark matched
    for line in _tshark_out(tshark_argv(spec, cap, spec.split_args)).splitlines():
        first, _, second = line.partition("\t")
        if spec is DNS:  # dns.flags.response per message: "0" a query, "1" a response
            for flag in _values(first):
                counts.requests += flag in ("0", "False")
                counts.responses += flag in ("1", "True")
        else:  # sent to the broker's port: requests; from it: responses
            n = len(_values(second))
            if first.strip() == str(cap.port):
                counts.requests += n
            else:
                counts.responses += n


@dataclass
class PodsharkCounts:
    lines: int = 0
    calls: int = 0  # calls of the benchmark's protocol
    with_request: int = 0
    with_response: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    methods: Counter[str] = field(default_factory=Counter)
    protocols: Counter[str] = field(default_factory=Counter)
    flags: Counter[str] = field(default_factory=Counter)


def count_podshark(spec: Spec, cap: ProtoCapture, counts: PodsharkCounts) -> None:
    """Untimed warm-up run of ``podshark dissect --json``; fails when it finds no call of the protocol
    (the dissector is not there yet), which the caller reports as "not measured"."""
    with subprocess.Popen(
        podshark_argv(cap.pcap, json_mode=True), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    ) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            if not line.strip():
                continue
            counts.lines += 1
            call = json.loads(line)
            counts.protocols[str(call.get("protocol"))] += 1
            if call.get("protocol") != spec.protocol:
                continue
            counts.calls += 1
            counts.with_request += call.get("request_ts") is not None
            counts.with_response += call.get("response_ts") is not None
            counts.flags.update(call.get("flags") or [])
            counts.methods[str(call.get("method"))] += 1
            if call.get("status") is not None:
                counts.statuses[str(call["status"])] += 1
        err = proc.stderr.read() if proc.stderr else b""
    if proc.returncode != 0:
        raise RuntimeError(f"podshark dissect --json failed (exit {proc.returncode}): {_tail(err)}")
    if counts.calls == 0:
        seen = ", ".join(f"{k} {v:,}" for k, v in counts.protocols.most_common(4)) or "no calls"
        raise RuntimeError(f"no {spec.protocol} calls in its output ({seen})")


@dataclass
class Result:
    spec: Spec
    when: str
    machine: dict[str, str]
    revision: str
    capture: ProtoCapture
    runs: int
    tshark: Timing
    tshark_counts: TsharkCounts
    podshark_counts: PodsharkCounts
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
        tshark_counts=TsharkCounts(),
        podshark_counts=PodsharkCounts(),
    )
    log(f"bench {spec.name}: warm-up tshark runs on {cap.pcap.name} ({cap.packets} packets)")
    count_tshark(spec, cap, res.tshark_counts)
    log(f"bench {spec.name}: warm-up podshark dissect --json run (counts calls)")
    try:
        count_podshark(spec, cap, res.podshark_counts)
        res.podshark_json, res.podshark_table = Timing(), Timing()
    except (RuntimeError, ValueError) as e:
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
        return "podshark: not yet measured" if res.podshark_missing else "not measured"
    if not t.ok:
        return f"failed: {t.error}"
    cpu = statistics.median(t.cpu)
    return (
        f"{t.median:.2f} s (best {t.best:.2f} s; CPU {cpu:.2f} s) — **{_pps(res.pps(t))} packets/s**, "
        f"{res.capture.wire_bytes / t.median / 1e6:.1f} MB/s"
    )


def _top(c: Counter[str], n: int = 6) -> str:
    return ", ".join(f"{k}: {_n(v)}" for k, v in c.most_common(n)) or "none"


def _ratio(a: int, b: int) -> str:
    return f"{a / b:.3f}" if b else "-"


def _sanity(res: Result) -> str:
    t, p, spec = res.tshark_counts, res.podshark_counts, res.spec
    req, resp = spec.what
    theirs = (
        f"tshark {_n(t.requests)} {req}, {_n(t.responses)} {resp} ({_n(t.messages)} messages in "
        f"{_n(t.lines)} frames; {spec.value_name}s: {_top(t.values)})"
    )
    if res.podshark_missing:
        return f"{theirs} — podshark: not yet measured ({res.podshark_missing})"
    ours = (
        f"podshark {_n(p.calls)} {spec.protocol} calls: {_n(p.with_request)} with a request, "
        f"{_n(p.with_response)} with a response (status: {_top(p.statuses)}; methods: {_top(p.methods)}); "
        f"flags: {_top(p.flags)}; all calls by protocol: {_top(p.protocols)}"
    )
    ratios = (
        f"ratios podshark/tshark: {req} {_ratio(p.with_request, t.requests)}, "
        f"{resp} {_ratio(p.with_response, t.responses)}"
    )
    return f"{ours} — {theirs} — {ratios}"


def history_line(res: Result) -> str:
    ratio = res.ratio_of(res.podshark_table)
    head = f"- {res.when} ({res.revision}, {res.capture.version}): tshark {_pps(res.pps(res.tshark))} pps"
    t, p = res.tshark_counts, res.podshark_counts
    req, resp = res.spec.what
    if ratio is None:
        return f"{head}; podshark: not yet measured; tshark {_n(t.requests)} {req}, {_n(t.responses)} {resp}"
    return (
        f"{head}, podshark {_pps(res.pps(res.podshark_table))} pps, ratio {ratio:.1f}x "
        f"(--json {res.ratio_of(res.podshark_json) or 0:.1f}x); {req}/{resp}: podshark "
        f"{_n(p.with_request)}/{_n(p.with_response)}, tshark {_n(t.requests)}/{_n(t.responses)}"
    )


def render(res: Result, previous_section: str | None) -> str:
    cap, m, spec = res.capture, res.machine, res.spec
    where = (
        "client and server namespaces joined by a veth pair, captured on the server's end"
        if spec is DNS
        else f"network namespace, loopback MTU {cap.mtu}"
    )
    ratio = res.ratio_of(res.podshark_table)
    ratio_cell = "-" if ratio is None else f"**{ratio:.1f}x** (no target; reported as measured)"
    if ratio is not None and res.cpu_ratio is not None:
        ratio_cell += f"; CPU time (user+sys) {res.cpu_ratio:.1f}x"
    json_ratio = res.ratio_of(res.podshark_json)
    tshark_cmd = shlex.join(tshark_argv(spec, cap)).replace(str(cap.pcap), "FILE")
    split_cmd = shlex.join(tshark_argv(spec, cap, spec.split_args)).replace(str(cap.pcap), "FILE")
    req, resp = spec.what
    rows = [
        ("date", res.when),
        ("machine", f"{m['nproc']} CPUs, {m['cpu']}, Python {m['python']}, TShark {m['tshark']} "
                    f"(load average {m['load']} at start)"),
        ("podshark revision", res.revision),
        ("capture", f"`bench/out/{Path(cap.path).name}` ({cap.version}): {cap.generator}; {where}, "
                    f"port {cap.port}; {cap.rounds} rounds"),
        ("packets", _n(cap.packets)),
        ("bytes", f"{_n(cap.wire_bytes)} on the wire ({cap.wire_bytes / cap.packets:.0f} B/packet); "
                  f"file {_n(cap.file_bytes)}"),
        ("tshark fields", _timing_cell(res, res.tshark)),
        ("podshark dissect --json", _timing_cell(res, res.podshark_json)),
        ("podshark dissect (table)", _timing_cell(res, res.podshark_table)),
        ("ratio (`podshark dissect` pps / tshark pps, medians)", ratio_cell),
        ("ratio with `--json`", "-" if json_ratio is None else f"{json_ratio:.1f}x"),
        (f"{req} and {resp} found (sanity check)", _sanity(res)),
    ]  # fmt: skip
    history = keep(history_lines(previous_section), history_line(res))
    return render_section(
        f"## {spec.name}: {spec.title}",
        (
            "`podshark dissect FILE > /dev/null` (a table row per call) and `podshark dissect FILE --json` "
            f"against `{tshark_cmd} > /dev/null` on the same capture in the same run. "
            "Wall clock of the whole "
            f"command, median of {res.runs} timed runs (interleaved, after one untimed warm-up run "
            "of each that "
            "also counts the output; tshark's split into "
            f"{req} and {resp} comes from one more untimed run: `{split_cmd}`); packets/s = packets in the "
            "capture / median time. "
            f"Made by `python -m bench {spec.name}`."
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


def run_dns(previous_section: str | None, runs: int = 3, regen: bool = False, log: Log = print) -> str:
    """``python -m bench dns``."""
    return _run(DNS, previous_section, runs, regen, log)


def run_kafka(previous_section: str | None, runs: int = 3, regen: bool = False, log: Log = print) -> str:
    """``python -m bench kafka``."""
    return _run(KAFKA, previous_section, runs, regen, log)


if __name__ == "__main__":  # python -m bench.dns_kafka_dissect [dns|kafka]: just (re)make the captures
    for which in sys.argv[1:] or [DNS_NAME, KAFKA_NAME]:
        made = dns_capture(regen=True) if which == DNS_NAME else kafka_capture(regen=True)
        print(json.dumps(asdict(made), indent=2))
