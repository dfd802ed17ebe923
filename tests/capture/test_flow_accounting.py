"""Flow accounting on the worker, against the kernel, tshark and what the test's clients did.

Two pods on a bridge (`tests/capture/podnet.py`), a server pod answering HTTP (bodies of the size
the path asks for), holding TCP connections open until the client closes them, and echoing UDP;
`podshark worker` captures the two host-side veths and sends to a small ingest receiver written
here (the hub's `flows` handler is written apart; this receiver speaks the ingest protocol: hello,
acks by seq). Known by construction: how many connections each client opened, which one it reset,
how long it held the others, every datagram's size. The oracles: the kernel's interface counters
(/sys/class/net/IF/statistics, read before and after while the worker reported the same quiet
state) and tshark's conversation statistics on a tcpdump of the server's veth.

The uplink's side of a hub without flows (today's hub answers "unknown message type", a hub may
also say what it takes in a hello) and the Kubernetes tagging of aggregates run without root.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import re
import secrets
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import WSMsgType, web

from capture.afpacket import Ring
from capture.uplink import BatchSpool, Uplink
from dissect.flowstats import FlowAggregate
from dissect.model import Endpoint
from tests.capture.netlab import drain, in_netns, netns, no_ipv6_chatter, tcpdump, udp_send, udp_sink
from tests.capture.podnet import PodNet, podnet
from tests.capture.test_uplink import Running, make_call, wait_until
from tests.hub.test_service import REPO, _env, get, start_hub
from tests.realtraffic import netns_unavailable_reason, tools_missing_reason

PODSHARK = str(REPO / ".venv" / "bin" / "podshark")
HTTP_PORT, HOLD_PORT, RESET_PORT, UDP_PORT = 8081, 9100, 9101, 9200
SIZES = [5, 100, 1_000, 10_000, 100_000, 1_000_000]  # HTTP bodies, one curl (one connection) each
HOLDS = 3  # connections held open HOLD_S seconds, then closed by the client
HOLD_S = 2.0
DATAGRAMS = [10, 100, 500, 1000, 1400]  # UDP payloads, each echoed
ETH_IP_UDP = 14 + 20 + 8
OPAQUE = b"SSH-2.0-psk\r\n"  # a first line no analyzer claims: these connections have no protocol


# ---- an ingest receiver: the hub's side of the protocol, as much as the worker needs


@dataclass
class Receiver:
    """A WebSocket ingest endpoint on 127.0.0.1 recording what workers send. ``mode`` "accept" acks
    flows like calls; any other mode is the text of the error a hub that does not take them answers
    (REFUSALS: the words of a hub without the message type, and of one keeping no aggregates). ``hello``:
    capabilities announced to each worker on connect (None: say nothing, like today's hub)."""

    mode: str = "accept"
    hello: list[str] | None = None
    url: str = ""
    lock: threading.Lock = field(default_factory=threading.Lock)
    hellos: list[dict[str, Any]] = field(default_factory=list)
    stats: list[dict[str, Any]] = field(default_factory=list)
    flows: list[dict[str, Any]] = field(default_factory=list)
    flow_messages: int = 0
    calls: int = 0

    def __post_init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._main, name="test-ingest", daemon=True)
        self._runner: web.AppRunner | None = None

    def start(self) -> Receiver:
        self._thread.start()
        assert self._ready.wait(10), "the ingest receiver did not start"
        return self

    def stop(self) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def _main(self) -> None:
        asyncio.set_event_loop(self._loop)
        app = web.Application()
        app.router.add_get("/api/v1/ingest", self._ingest)
        self._runner = web.AppRunner(app)
        self._loop.run_until_complete(self._runner.setup())
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        self._loop.run_until_complete(web.SockSite(self._runner, sock).start())
        self._ready.set()
        self._loop.run_forever()

    async def _ingest(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(max_msg_size=64 << 20)
        await ws.prepare(request)
        if self.hello is not None:
            await ws.send_str(json.dumps({"type": "hello", "capabilities": self.hello}))
        async for msg in ws:
            if msg.type not in (WSMsgType.TEXT, WSMsgType.BINARY):
                continue
            body = json.loads(msg.data)
            kind = body.get("type")
            with self.lock:
                if kind == "hello":
                    self.hellos.append(body)
                elif kind == "stats":
                    self.stats.append(body)
                elif kind == "calls":
                    self.calls += len(body["calls"])
                elif kind == "flows":
                    self.flow_messages += 1
                    if self.mode == "accept":
                        self.flows.extend(body["flows"])
            if kind == "calls":
                await ws.send_str(
                    json.dumps({"type": "ack", "seq": body["seq"], "calls": len(body["calls"])})
                )
            elif kind == "flows" and self.mode == "accept":
                await ws.send_str(
                    json.dumps({"type": "ack", "seq": body["seq"], "flows": len(body["flows"])})
                )
            elif kind == "flows":
                await ws.send_str(json.dumps({"type": "error", "error": self.mode, "seq": body["seq"]}))
        return ws

    def last_stats(self) -> dict[str, Any]:
        with self.lock:
            return dict(self.stats[-1]) if self.stats else {}


@contextlib.contextmanager
def receiver(mode: str = "accept", hello: list[str] | None = None) -> Iterator[Receiver]:
    r = Receiver(mode, hello).start()
    try:
        yield r
    finally:
        r.stop()


# ---- the traffic: a server pod and a client pod

SERVER_PY = r"""
import socket, sys, threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
host = sys.argv[1]

class Sized(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"  # one request per connection, closed by the server
    def do_GET(self):
        n = int(self.path.strip("/"))
        self.send_response(200)
        self.send_header("Content-Length", str(n))
        self.end_headers()
        self.wfile.write(b"x" * n)
    def log_message(self, *args):
        pass

def drain(c):
    try:
        while c.recv(65536):
            pass
    except OSError:
        pass
    c.close()

def hold(port):
    srv = socket.create_server((host, port))
    while True:
        c, _ = srv.accept()
        threading.Thread(target=drain, args=(c,), daemon=True).start()

def echo(port):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((host, port))
    while True:
        data, peer = s.recvfrom(65535)
        s.sendto(data, peer)

for target, port in ((hold, %(hold)d), (hold, %(reset)d), (echo, %(udp)d)):
    threading.Thread(target=target, args=(port,), daemon=True).start()
ThreadingHTTPServer((host, %(http)d), Sized).serve_forever()
"""

CLIENT_PY = r"""
import json, socket, struct, sys, time
server = sys.argv[1]
out = {}
held = []
for _ in range(%(holds)d):
    c = socket.create_connection((server, %(hold)d))
    c.sendall(%(opaque)r)
    held.append(c)
t0 = time.monotonic()
time.sleep(%(hold_s)r)
for c in held:
    c.close()
out["held_s"] = time.monotonic() - t0
r = socket.create_connection((server, %(reset)d))
r.sendall(%(opaque)r)
time.sleep(0.2)
r.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
r.close()  # linger 0: a RST instead of a FIN
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u.settimeout(5)
u.connect((server, %(udp)d))
echoed = []
for n in %(datagrams)r:
    u.send(b"d" * n)
    echoed.append(len(u.recv(65535)))
out["echoed"] = echoed
print(json.dumps(out))
"""


def _kernel(ifaces: list[str]) -> dict[str, dict[str, int]]:
    keys = ("rx_bytes", "rx_packets", "tx_bytes", "tx_packets")
    return {i: {k: int(Path(f"/sys/class/net/{i}/statistics/{k}").read_text()) for k in keys} for i in ifaces}


def _reported(stats: dict[str, Any], ifaces: list[str]) -> dict[str, dict[str, int]]:
    keys = ("rx_bytes", "rx_packets", "tx_bytes", "tx_packets")
    got = stats.get("interfaces", {})
    return {i: {k: int(got.get(i, {}).get(k, -1)) for k in keys} for i in ifaces}


def quiet_snapshot(
    hub: Receiver, ifaces: list[str], timeout: float = 60
) -> tuple[dict[str, dict[str, int]], dict[str, dict[str, int]]]:
    """(kernel counters, the worker's counters) at a moment both agree nothing moved: two stats
    messages in a row (2 s apart) report the same, and the kernel's counters did not change between
    them either. Background chatter (ARP) only delays the moment."""
    deadline = time.monotonic() + timeout
    prev: tuple[Any, Any] | None = None
    while time.monotonic() < deadline:
        seen = len(hub.stats)
        wait_until("a stats message", lambda: len(hub.stats) > seen, timeout=10)  # noqa: B023
        now = (_kernel(ifaces), _reported(hub.last_stats(), ifaces))
        if prev == now:
            return now
        prev = now
    raise AssertionError(f"interface counters never settled: {prev}")


@dataclass
class Run:
    """What one worker run over the test's traffic gave, and the oracles' view of it."""

    net: PodNet
    ifaces: list[str]
    client_ip: str
    server_ip: str
    kernel: tuple[dict[str, dict[str, int]], dict[str, dict[str, int]]]  # before, after
    worker: tuple[dict[str, dict[str, int]], dict[str, dict[str, int]]]
    flows: list[FlowAggregate]
    client_out: dict[str, Any]
    pcap: Path
    hellos: list[dict[str, Any]]
    last_stats: dict[str, Any]
    worker_log: str

    def by_port(self, transport: str, port: int) -> list[FlowAggregate]:
        return [
            a
            for a in self.flows
            if a.transport == transport
            and a.dst.port == port
            and a.dst.ip == self.server_ip
            and a.src.ip == self.client_ip
        ]


def _skip_reason() -> str | None:
    return netns_unavailable_reason() or tools_missing_reason("curl", "tcpdump", "tshark")


@pytest.fixture(scope="module", params=[1, 2], ids=["procs1", "procs2"])
def run(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[Run]:
    """One worker run with the traffic of the whole module: in one capture process, and in two
    (PACKET_FANOUT: each process folds its own flows, the parent sends them and sums the counters)."""
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    tmp = tmp_path_factory.mktemp("flows")
    server_py, client_py = tmp / "server.py", tmp / "client.py"
    ports = {"http": HTTP_PORT, "hold": HOLD_PORT, "reset": RESET_PORT, "udp": UDP_PORT}
    server_py.write_text(SERVER_PY % ports)
    client_py.write_text(
        CLIENT_PY % {**ports, "holds": HOLDS, "hold_s": HOLD_S, "opaque": OPAQUE, "datagrams": DATAGRAMS}
    )
    with podnet("client", "server") as net, receiver() as hub:
        client, server = net.pods["client"], net.pods["server"]
        for pod in (client, server):
            no_ipv6_chatter(pod.netns)
        net.spawn(server, [sys.executable, str(server_py), server.ip])
        deadline = time.monotonic() + 20
        while net.run(client, ["bash", "-c", f"exec 3<>/dev/tcp/{server.ip}/{HTTP_PORT}"]).returncode:
            assert time.monotonic() < deadline, "the test server did not start"
            time.sleep(0.2)
        ifaces = [client.host_if, server.host_if]
        log = tmp / "worker.log"
        argv = [
            PODSHARK,
            "worker",
            "--hub",
            hub.url,
            "--node",
            "flow-node",
            "--state-dir",
            str(tmp / "state"),
        ]
        argv += ["--interface", ifaces[0], "--interface", ifaces[1], "--flow-interval", "1"]
        argv += ["--no-identity", "--no-k8s", "--procs", str(request.param)]
        with log.open("ab") as out:
            worker = subprocess.Popen(argv, cwd=REPO, env=_env(), stdout=out, stderr=subprocess.STDOUT)
        try:
            wait_until(
                "the worker to capture both veths",
                lambda: (
                    worker.poll() is None and all(i in hub.last_stats().get("interfaces", {}) for i in ifaces)
                ),
                timeout=60,
            )
            k0, w0 = quiet_snapshot(hub, ifaces)
            pcap = tmp / "server-veth.pcap"
            with tcpdump(None, server.host_if, pcap):
                for n in SIZES:
                    r = net.run(
                        client, ["curl", "-sS", "--max-time", "20", f"http://{server.ip}:{HTTP_PORT}/{n}"]
                    )
                    assert r.returncode == 0 and r.stdout == b"x" * n, r.stderr
                r = net.run(client, [sys.executable, str(client_py), server.ip], timeout=60)
                assert r.returncode == 0, r.stderr.decode()
                client_out = json.loads(r.stdout)
                time.sleep(1.0)  # the last FINs and ACKs
            k1, w1 = quiet_snapshot(hub, ifaces)
            last_stats = hub.last_stats()
        finally:
            worker.terminate()
            try:
                worker.wait(30)
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait()
        assert worker.returncode == 0, log.read_text()[-3000:]
        with hub.lock:
            flows = [FlowAggregate.from_json(json.dumps(f)) for f in hub.flows]
            hellos = list(hub.hellos)
        yield Run(
            net,
            ifaces,
            client.ip,
            server.ip,
            (k0, k1),
            (w0, w1),
            flows,
            client_out,
            pcap,
            hellos,
            last_stats,
            log.read_text(),
        )


_ROOT_MARKS = [pytest.mark.root, pytest.mark.slow, pytest.mark.timeout(300)]
if importlib.util.find_spec("xdist") is not None:
    _ROOT_MARKS.append(pytest.mark.xdist_group("capture-flows"))


def root(fn: Callable[..., None]) -> Callable[..., None]:
    """The marks of the tests on the shared namespace run: root, slow, one xdist group (the run
    fixture is module-scoped, so they must share a process)."""
    for mark in _ROOT_MARKS:
        fn = mark(fn)
    return fn


# ---- against the kernel


@root
def test_interface_bytes_and_packets_agree_with_the_kernel_counters(run: Run) -> None:
    (k0, k1), (w0, w1) = run.kernel, run.worker
    for i in run.ifaces:
        for key in ("rx_bytes", "rx_packets", "tx_bytes", "tx_packets"):
            kernel = k1[i][key] - k0[i][key]
            ours = w1[i][key] - w0[i][key]
            assert kernel > 0, (i, key)
            assert abs(ours - kernel) <= kernel * 0.01, (i, key, ours, kernel)


@root
def test_a_loopback_ring_counts_each_packet_as_received_and_sent_like_the_kernel() -> None:
    """On `lo` the ring gets no outgoing copies (PACKET_IGNORE_OUTGOING), and the kernel counts every
    looped packet both ways: the ring's sent figures are its received ones."""
    if netns_unavailable_reason():
        pytest.skip(netns_unavailable_reason() or "")
    ns = f"psk{secrets.token_hex(3)}lo"
    with netns(ns):

        def kernel() -> dict[str, int]:
            keys = ("rx_bytes", "rx_packets", "tx_bytes", "tx_packets")
            cat = ["ip", "netns", "exec", ns, "cat", *(f"/sys/class/net/lo/statistics/{k}" for k in keys)]
            values = subprocess.run(cat, capture_output=True, text=True, check=True).stdout.split()
            return dict(zip(keys, map(int, values), strict=True))

        with in_netns(ns):
            ring = Ring("lo", block_size=1 << 17, blocks=4, retire_ms=10)
        with ring, udp_sink(ns, ("127.0.0.1", 9300)) as got:
            before = kernel()
            sent = udp_send(ns, ("127.0.0.1", 9301), ("127.0.0.1", 9300), [b"p" * n for n in (1, 200, 1400)])
            wait_until("the datagrams", lambda: len(got) == sent, timeout=10)
            drain([ring])
            after = kernel()
            traffic = ring.traffic()
    delta = {k: after[k] - before[k] for k in after}
    assert delta["rx_packets"] == sent and traffic == delta, (traffic, delta)


# ---- against what the clients did


def _sum(aggs: list[FlowAggregate], name: str) -> int:
    return sum(getattr(a, name) for a in aggs)


@root
def test_connection_counts_resets_and_durations_are_what_the_clients_did(run: Run) -> None:
    http = run.by_port("tcp", HTTP_PORT)
    assert {a.protocol for a in http} == {"http"}
    assert (_sum(http, "opened"), _sum(http, "closed"), _sum(http, "resets")) == (len(SIZES), len(SIZES), 0)
    assert _sum(http, "rtt_count") == len(SIZES) and _sum(http, "duration_count") == len(SIZES)
    assert sum(a.bytes[1] for a in http) > sum(SIZES)  # every body, plus headers and frames

    held = run.by_port("tcp", HOLD_PORT)
    assert {a.protocol for a in held} == {None}
    assert (_sum(held, "opened"), _sum(held, "closed"), _sum(held, "resets")) == (HOLDS, HOLDS, 0)
    assert _sum(held, "duration_count") == HOLDS
    longest = max(a.duration_ns_max for a in held) / 1e9
    mean = _sum(held, "duration_ns_sum") / HOLDS / 1e9
    assert HOLD_S <= mean <= longest <= run.client_out["held_s"] + 0.5, (mean, longest, run.client_out)
    # open while held: some interval saw all of them active at once (with --procs 2 each process
    # reports the connections the kernel gave it: the interval's aggregates add up)
    active: dict[int, int] = {}
    for a in held:
        active[a.start_ts] = active.get(a.start_ts, 0) + a.active
    assert max(active.values()) == HOLDS

    reset = run.by_port("tcp", RESET_PORT)
    assert (_sum(reset, "opened"), _sum(reset, "closed"), _sum(reset, "resets")) == (1, 1, 1)

    udp = run.by_port("udp", UDP_PORT)
    assert run.client_out["echoed"] == DATAGRAMS
    assert _sum(udp, "opened") == 1 and _sum(udp, "closed") == 0  # UDP ends only by idling out
    assert [sum(a.packets[d] for a in udp) for d in (0, 1)] == [len(DATAGRAMS)] * 2
    expected = sum(ETH_IP_UDP + n for n in DATAGRAMS)
    assert [sum(a.bytes[d] for a in udp) for d in (0, 1)] == [expected, expected]


@root
def test_intervals_are_the_flow_interval_and_the_hello_lists_flows(run: Run) -> None:
    assert run.hellos and "flows" in run.hellos[0]["capabilities"]
    for a in run.flows:
        assert a.start_ts % 1_000_000_000 == 0 and a.start_ts < a.end_ts <= a.start_ts + 1_000_000_000
    flows = run.last_stats["flow_accounting"]
    assert flows["interval_s"] == 1.0 and flows["overflow"] == 0 and flows["sent"] >= 1
    assert run.last_stats["cluster_ranges"] == []  # no Kubernetes
    uplink = run.last_stats["uplink"]
    assert uplink["flows_dropped"] == 0 and uplink["flows_unsupported"] == 0


# ---- against tshark


def _tshark(args: list[str]) -> str:
    r = subprocess.run(["tshark", "-n", "-r", *args], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return r.stdout


def _tshark_flows(pcap: Path, proto: str, port: int) -> dict[str, Any]:
    """tshark's view of the conversations with server port ``port``: conversations, frames each way
    (from `-z conv`), bytes each way (frame lengths per frame: conv prints large byte counts in kB),
    durations."""
    conv = _tshark([str(pcap), "-q", "-z", f"conv,{proto}"])
    convs: list[dict[str, Any]] = []
    for line in conv.splitlines():
        m = re.match(r"^\S+:(\d+)\s+<->\s+\S+:(\d+)\s+(.*)$", line)
        if not m or port not in (int(m.group(1)), int(m.group(2))):
            continue
        # frames bytes unit | frames bytes unit | frames bytes unit | start | duration, where the
        # first group ("<-") is B->A and the second ("->") A->B
        words = m.group(3).split()
        b_to_a, a_to_b = int(words[0]), int(words[3])
        server_is_b = int(m.group(2)) == port
        frames = [a_to_b, b_to_a] if server_is_b else [b_to_a, a_to_b]
        convs.append({"frames": frames, "duration": float(words[-1])})
    fields = _tshark(
        [
            str(pcap),
            "-Y",
            f"{proto}.port == {port}",
            "-T",
            "fields",
            "-e",
            f"{proto}.dstport",
            "-e",
            "frame.len",
        ]
    )
    sizes = [0, 0]
    for line in fields.splitlines():
        dport, length = line.split("\t")
        sizes[0 if int(dport) == port else 1] += int(length)
    return {
        "conversations": len(convs),
        "frames": [sum(c["frames"][d] for c in convs) for d in (0, 1)],
        "bytes": sizes,
        "durations": [c["duration"] for c in convs],
    }


@root
@pytest.mark.tshark
@pytest.mark.parametrize(
    ("proto", "port"), [("tcp", HTTP_PORT), ("tcp", HOLD_PORT), ("tcp", RESET_PORT), ("udp", UDP_PORT)]
)
def test_per_flow_bytes_and_packets_agree_with_tshark_conversations(run: Run, proto: str, port: int) -> None:
    oracle = _tshark_flows(run.pcap, proto, port)
    ours = run.by_port(proto, port)
    assert [sum(a.packets[d] for a in ours) for d in (0, 1)] == oracle["frames"]
    assert [sum(a.bytes[d] for a in ours) for d in (0, 1)] == oracle["bytes"]
    assert _sum(ours, "opened") == oracle["conversations"]
    if proto == "tcp":
        # each connection's duration, first frame to last, as tshark measured it on the server's veth
        assert abs(_sum(ours, "duration_ns_sum") / 1e9 - sum(oracle["durations"])) < 0.01 * len(ours) + 0.01


# ---- a real hub


@root
def test_a_real_hub_stores_the_calls_and_acks_the_flows_of_a_real_worker(tmp_path: Path) -> None:
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    hub = start_hub(tmp_path / "db", tmp_path / "hub.log")
    worker: subprocess.Popen[bytes] | None = None
    log = tmp_path / "worker.log"
    try:
        with podnet("client", "server") as net:
            client, server = net.pods["client"], net.pods["server"]
            net.spawn(
                server, [sys.executable, "-m", "tests.capture.echo_http", server.ip, str(HTTP_PORT)], cwd=REPO
            )
            argv = [PODSHARK, "worker", "--hub", hub.url, "--node", "flow-hub-node"]
            argv += ["--state-dir", str(tmp_path / "state"), "--interface", net.glob, "--flow-interval", "1"]
            argv += ["--no-identity", "--no-k8s"]
            with log.open("ab") as out:
                worker = subprocess.Popen(argv, cwd=REPO, env=_env(), stdout=out, stderr=subprocess.STDOUT)

            def reported() -> dict[str, Any]:
                status, body = get(hub, "/api/v1/stats")
                assert status == 200, body
                w = {w["name"]: w for w in body["workers"]}.get("flow-hub-node") or {}
                return dict(
                    w.get("reported") or {}, drops=w.get("drops"), cluster_ranges=w.get("cluster_ranges")
                )

            deadline = time.monotonic() + 60
            while reported().get("interface_count") != 3:  # the bridge and the two veths
                assert worker.poll() is None, log.read_text()[-3000:]
                assert time.monotonic() < deadline, (reported(), log.read_text()[-3000:])
                time.sleep(0.2)
            nonce = secrets.token_hex(4)
            for i in range(5):
                url = f"http://{server.ip}:{HTTP_PORT}/flows/{i}-{nonce}"
                deadline = time.monotonic() + 20
                while net.run(client, ["curl", "-sS", "--max-time", "5", url]).returncode:
                    assert time.monotonic() < deadline, "the echo server did not answer"
                    time.sleep(0.2)

            def stored() -> int:
                status, body = get(hub, "/api/v1/calls", filter=f'target contains "{nonce}"', limit="100")
                assert status == 200, body
                return len(body["calls"])

            wait_until("the calls", lambda: stored() >= 5, timeout=60)
            wait_until(
                "flows acked by the hub",
                lambda: reported().get("uplink", {}).get("flows_acked", 0) >= 1,
                timeout=60,
            )
            w = reported()
            assert stored() == 5
            up = w["uplink"]
            assert up["flows_rejected"] == 0 and up["flows_unsupported"] == 0 and w["drops"]["flows"] == 0
            assert up["hub_takes_flows"] == 1
            veth = w["interfaces"][server.host_if]
            assert veth["rx_packets"] > 0 and veth["tx_packets"] > 0 and veth["rx_bytes"] > veth["rx_packets"]
            assert w["flow_accounting"]["intervals"] >= 1
            assert w["cluster_ranges"] == {"reported": 0, "usable": 0}  # no Kubernetes
    finally:
        if worker is not None and worker.poll() is None:
            worker.terminate()
            try:
                worker.wait(30)
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait()
        hub.stop()
    assert worker is not None and worker.returncode == 0, log.read_text()[-3000:]


# ---- a hub without flows: the uplink's side (no root)


def _agg(i: int) -> bytes:
    return FlowAggregate(
        start_ts=i * 10**9,
        end_ts=(i + 1) * 10**9,
        transport="tcp",
        src=Endpoint(ip="10.0.0.1"),
        dst=Endpoint(ip="10.0.0.2", port=80),
        protocol="http",
        bytes=[i, i],
        packets=[1, 1],
        retransmissions=[0, 0],
    ).to_json_bytes()


def _uplink(url: str, tmp: Path, **kw: Any) -> Uplink:
    return Uplink(
        url,
        None,
        "flow-test",
        spool_dir=tmp / "spool",
        capabilities=("calls", "export", "flows"),
        batch_interval=0.05,
        **kw,
    )


def _balanced(c: dict[str, int]) -> bool:
    return c["flows_submitted"] == (
        c["flows_acked"]
        + c["flows_rejected"]
        + c["flows_dropped"]
        + c["flows_invalid"]
        + c["flows_unsupported"]
        + c["flows_buffered"]
        + c["flows_spooled"]
    )


def test_flows_are_acked_by_a_hub_that_takes_them(tmp_path: Path) -> None:
    with receiver("accept") as hub:
        up = Running(_uplink(hub.url, tmp_path))
        try:
            up.uplink.submit_flows([_agg(i) for i in range(25)])
            for i in range(10):
                up.uplink.submit(make_call("flow-test", i).to_json_bytes())
            wait_until("acks", lambda: up.call(up.uplink.counters)["flows_acked"] == 25, timeout=30)
            wait_until("call acks", lambda: up.call(up.uplink.counters)["acked"] == 10, timeout=30)
        finally:
            up.close()
        c = up.uplink.counters()
        assert c["hub_takes_flows"] == 1 and _balanced(c)
        assert sorted(f["bytes"][0] for f in hub.flows) == list(range(25))
        assert "drops" in up.uplink.stats_body() and up.uplink.stats_body()["drops"]["flows"] == 0


REFUSALS = ["unknown message type 'flows'", "this hub keeps no aggregates: flows are not accepted"]


@pytest.mark.parametrize("refusal", REFUSALS)
def test_a_hub_that_does_not_take_flows_gets_none_after_saying_so_and_calls_go_on(
    tmp_path: Path, refusal: str
) -> None:
    with receiver(refusal) as hub:
        up = Running(_uplink(hub.url, tmp_path))
        try:
            up.uplink.submit_flows([_agg(i) for i in range(5)])
            wait_until("the refusal", lambda: up.call(up.uplink.counters)["hub_takes_flows"] == 0, timeout=30)
            seen = hub.flow_messages
            up.uplink.submit_flows([_agg(i) for i in range(5, 9)])  # dropped at once: no message
            for i in range(20):
                up.uplink.submit(make_call("flow-test", i).to_json_bytes())
            wait_until("call acks", lambda: up.call(up.uplink.counters)["acked"] == 20, timeout=30)
            c = up.call(up.uplink.counters)
        finally:
            up.close()
        assert hub.flow_messages == seen and hub.calls == 20
        assert c["flows_unsupported"] == 9 and c["flows_spooled"] == 0 and _balanced(c)
        assert c["acked"] == 20 and c["rejected"] == 0 and c["dropped"] == 0
        assert up.uplink.stats_body()["drops"]["flows"] == 9
        assert not list((tmp_path / "spool").glob("*.batch"))  # nothing kept for a hub that will not take it


def test_a_hub_whose_hello_leaves_flows_out_is_never_sent_one(tmp_path: Path) -> None:
    with receiver("accept", hello=["calls", "export"]) as hub:
        up = Running(_uplink(hub.url, tmp_path))
        try:
            wait_until(
                "the hub's hello", lambda: up.call(up.uplink.counters)["hub_takes_flows"] == 0, timeout=30
            )
            up.uplink.submit_flows([_agg(i) for i in range(3)])
            up.uplink.submit(make_call("flow-test", 1).to_json_bytes())
            wait_until("the call's ack", lambda: up.call(up.uplink.counters)["acked"] == 1, timeout=30)
        finally:
            up.close()
        assert hub.flow_messages == 0 and up.uplink.counters()["flows_unsupported"] == 3


def test_spooled_flows_survive_a_restart_as_flows(tmp_path: Path) -> None:
    """A flows batch left on disk is found again as one (its kind is in the file), resent as `flows`."""
    spool = BatchSpool(tmp_path / "spool", 1 << 20)
    payload = b",".join(_agg(i) for i in range(4))
    spool.write(spool.next_id, 4, payload, kind="flows")
    spool.admit(4, 16 + len(payload), "flows")
    spool.write(spool.next_id, 1, make_call("n", 1).to_json_bytes())
    again = BatchSpool(tmp_path / "spool", 1 << 20)
    assert [(b.kind, b.calls) for b in again.batches.values()] == [("flows", 4), ("calls", 1)]
    assert (again.flows, again.calls) == (4, 1)
    with receiver("accept") as hub:
        up = Running(_uplink(hub.url, tmp_path))
        try:
            wait_until("the resend", lambda: len(hub.flows) == 4 and hub.calls == 1, timeout=30)
        finally:
            up.close()


# ---- Kubernetes identity on aggregates, and the cluster's ranges (no root, no cluster)


def test_aggregates_are_tagged_like_calls_and_ranges_come_from_the_nodes() -> None:
    from capture.k8s.cluster import ClusterIdentity
    from tests.identity.test_index import NODE_A, NODE_A_IP, NODE_B, NODE_B_IP, T0, node, pod

    k8s = ClusterIdentity(NODE_A, api=object())
    idx = k8s.index
    idx.apply("Node", "ADDED", {**node(NODE_A, NODE_A_IP), "spec": {"podCIDRs": ["10.9.0.0/24"]}}, T0)
    idx.apply(
        "Node", "ADDED", {**node(NODE_B, NODE_B_IP), "spec": {"podCIDRs": ["10.9.1.0/24", "fd00:9::/64"]}}, T0
    )
    idx.apply("Pod", "ADDED", pod("web-0", ip="10.9.0.5", labels={"app": "web"}), T0)
    idx.apply("Pod", "ADDED", pod("api-0", ip="10.9.0.6", labels={"app": "api"}), T0)
    agg = FlowAggregate.from_json(_agg(0))
    agg.src, agg.dst = Endpoint(ip="10.9.0.5"), Endpoint(ip="10.9.0.6", port=80)
    agg.start_ts = T0 + 10**9
    k8s.tag_flow(agg)
    assert (agg.src.pod, agg.src.namespace, agg.src.labels) == ("web-0", "shop", {"app": "web"})
    assert (agg.dst.pod, agg.dst.node, agg.dst.port) == ("api-0", NODE_A, 80)
    assert agg.src.port is None  # folded away, not invented
    remote = FlowAggregate.from_json(_agg(0))
    remote.src, remote.dst = Endpoint(ip="10.9.1.7"), Endpoint(ip="192.0.2.1", port=443)
    remote.start_ts = T0 + 10**9
    k8s.tag_flow(remote)
    assert remote.src.node == NODE_B and remote.src.pod is None  # a pod CIDR names the node only
    assert remote.dst.pod is None and remote.dst.node is None  # outside the cluster
    # pod CIDRs 10.9.0.0/24 and 10.9.1.0/24 merge; node addresses are /32s
    assert k8s.cluster_ranges() == ["fd00:9::/64", "10.9.0.0/23", f"{NODE_A_IP}/32", f"{NODE_B_IP}/32"]
    assert k8s.stats()["tagged_flows"] == 2


# ---- the option


@pytest.mark.parametrize(("text", "seconds"), [("10", 10.0), ("0", 0.0), ("2.5", 2.5), ("60", 60.0)])
def test_flow_interval_option_reaches_the_worker_config(text: str, seconds: float) -> None:
    from podshark.cli import build_parser
    from podshark.worker_cmd import worker_config

    args = build_parser().parse_args(["worker", "--hub", "http://h:1", "--flow-interval", text])
    assert worker_config(args, args.hub, None).flow_interval == seconds
    default = build_parser().parse_args(["worker", "--hub", "http://h:1"])
    assert worker_config(default, default.hub, None).flow_interval == 10.0


@pytest.mark.parametrize("text", ["-1", "0.5", "3601", "ten", "nan"])
def test_a_bad_flow_interval_is_refused_with_the_range(text: str, capsys: pytest.CaptureFixture[str]) -> None:
    from podshark.cli import build_parser

    with pytest.raises(SystemExit):
        build_parser().parse_args(["worker", "--hub", "http://h:1", "--flow-interval", text])
    err = capsys.readouterr().err
    assert "--flow-interval" in err and ("0 (off) or 1 to 3600 seconds" in err or "not a number" in err)
