"""`podshark demo`'s workload: real services in namespaces, captured with tcpdump, checked from outside.

The module fixture starts a `Demo` with its traffic held, starts tcpdump on its bridge (every packet
between two pods crosses it once) and on the frontend's host-side veth (one of the interfaces the
worker is told to capture), releases the traffic — so every conversation is captured from its first
packet — stops the demo and dissects both captures with `dissect.engine.dissect_path`. Expected
values come from construction — the topology (addresses, edges), the catalog (which ids are known,
broken, unknown), the traffic mix — or from the kernel (process names in /proc, what `ip` lists) and
tshark (request counts on the same capture), never from podshark's own output.

The edge check is the one issue 12 repeats against the live service map: the set of
(client ip, server ip, protocol) of the captured calls is exactly `Topology.edge_tuples()`.

The wire helpers (`dnswire`, `pbwire`) and the fallback DNS server are checked against dnspython
and the protobuf runtime, with Hypothesis feeding them hostile bytes.
"""

from __future__ import annotations

import contextlib
import http.client
import http.server
import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dissect.engine import dissect_path
from dissect.model import Call
from podshark.demo import (
    Demo,
    DemoError,
    Topology,
    catalog,
    cleanup_stale,
    dnswire,
    netns,
    pbwire,
    requirements_missing,
)
from podshark.demo.config import DemoConfig
from podshark.demo.dns import answer, dnsmasq_path, records
from podshark.demo.inventory import WATCH_UPDATES
from podshark.demo.loadgen import MIX
from podshark.demo.topology import EDGES, SERVICES, ZONE
from tests.capture.netlab import Tcpdump, tcpdump

REPO = Path(__file__).resolve().parents[2]
TCPDUMP = shutil.which("tcpdump")
TSHARK = shutil.which("tshark")
RATE = 8.0  # requests/s from loadgen: a full cycle of the mix every 1.25 s
CYCLES = 3  # captured: every kind of call appears at least CYCLES - 1 times whole

root = [pytest.mark.root, pytest.mark.slow, pytest.mark.timeout(300)]
if importlib.util.find_spec("xdist") is not None:
    root.append(pytest.mark.xdist_group("capture-demo"))


# --- capture helpers --------------------------------------------------------------------------------


def tshark_count(path: Path, display_filter: str) -> int:
    assert TSHARK is not None
    res = subprocess.run(
        [TSHARK, "-n", "-r", str(path), "-d", "tcp.port==50051,http2", "-Y", display_filter, "-T", "fields",
         "-e", "frame.number"],
        capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    return len([ln for ln in res.stdout.splitlines() if ln.strip()])


def running(pid: int) -> bool:
    """The process exists and is not a zombie (an orphan waits for init to reap it, which can be slow)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def all_names() -> set[str]:
    """Every namespace and root-namespace interface name, as the kernel lists them."""
    return set(netns.list_netns()) | set(netns.list_links())


# --- the captured run -------------------------------------------------------------------------------


@dataclass
class Run:
    topology: Topology
    bridge_pcap: Path
    veth_pcap: Path
    bridge_cap: Tcpdump
    calls: list[Call]  # from the bridge capture
    veth_calls: list[Call]  # from the frontend's host-side veth
    interfaces: list[str]
    comms: dict[str, str]  # service -> /proc/PID/comm while it ran
    pod_comms: dict[str, list[str]]  # namespace -> comm of every process in it
    pids: dict[str, int]
    cleaned_while_running: list[str]
    left_after_stop: list[str]
    names_after_stop: set[str]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    reason = requirements_missing() or (None if TCPDUMP else "tcpdump is not installed")
    if reason:
        pytest.skip(reason)
    out = tmp_path_factory.mktemp("demo")
    demo = Demo(rate=RATE)
    try:
        demo.start(hold_traffic=True)  # captures start first: every conversation is seen whole
        topo = demo.topology
        pids = demo.pids()
        comms = {n: Path(f"/proc/{p}/comm").read_text().strip() for n, p in pids.items()}
        pod_comms = {
            s.namespace: sorted(
                Path(f"/proc/{p}/comm").read_text().strip() for p in netns.netns_pids(s.namespace)
            )
            for s in topo.services
        }
        cleaned = cleanup_stale()  # must leave this live demo alone
        front_if = topo.service("frontend").host_if
        with (
            tcpdump(None, demo.bridge, out / "bridge.pcap", promiscuous=True) as cap,
            tcpdump(None, front_if, out / "front.pcap", promiscuous=True),
        ):
            demo.release_traffic()
            time.sleep(CYCLES * len(MIX) / RATE + 0.8)  # +0.8: the slowest call of the last cycle ends
        interfaces = demo.interfaces()
    finally:
        demo.stop()
    left = demo.leftovers()
    names = {n for n in all_names() if n.startswith(topo.prefix)}
    yield Run(
        topology=topo,
        bridge_pcap=out / "bridge.pcap",
        veth_pcap=out / "front.pcap",
        bridge_cap=cap,
        calls=list(dissect_path(out / "bridge.pcap")),
        veth_calls=list(dissect_path(out / "front.pcap")),
        interfaces=interfaces,
        comms=comms,
        pod_comms=pod_comms,
        pids=pids,
        cleaned_while_running=cleaned,
        left_after_stop=left,
        names_after_stop=names,
    )


def between(run: Run, client: str, server: str, protocol: str) -> list[Call]:
    c_ip, s_ip = run.topology.ip(client), run.topology.ip(server)
    return [c for c in run.calls if c.src.ip == c_ip and c.dst.ip == s_ip and c.protocol == protocol]


def whole(calls: list[Call]) -> list[Call]:
    """Calls with both halves, neither cut (the capture starts and ends in the middle of the workload)."""
    return [
        c for c in calls if c.request is not None and c.response is not None and "truncated" not in c.flags
    ]


# --- what the capture shows ------------------------------------------------------------------------


class TestCapturedWorkload:
    pytestmark = root

    def test_capture_is_complete(self, run: Run) -> None:
        assert run.bridge_cap.dropped == 0, run.bridge_cap.stderr
        assert run.bridge_cap.captured and run.bridge_cap.captured > 100, run.bridge_cap.stderr

    def test_edges_are_exactly_the_topology(self, run: Run) -> None:
        seen = {(c.src.ip, c.dst.ip, c.protocol) for c in run.calls}
        assert seen == run.topology.edge_tuples()
        # the frontend is in every edge, so its veth alone carries the whole map too
        assert {(c.src.ip, c.dst.ip, c.protocol) for c in run.veth_calls} == run.topology.edge_tuples()

    def test_topology_edges_are_the_declared_ones(self, run: Run) -> None:
        declared = {(e.client, e.server, e.protocol) for e in EDGES}
        assert {(e.client, e.server, e.protocol) for e in run.topology.edges} == declared

    def test_http_frontend_to_api(self, run: Run) -> None:
        calls = whole(between(run, "frontend", "api", "http"))
        by: dict[tuple[str | None, str | None], set[int | None]] = {}
        for c in calls:
            by.setdefault((c.method, c.target), set()).add(c.status)
        assert by[("GET", f"/products/{catalog.UNKNOWN_PRODUCT}")] == {404}
        assert by[("GET", f"/products/{catalog.BROKEN_PRODUCT}")] == {500}
        assert by[("POST", "/orders")] == {201}
        assert 200 in by[("GET", "/products/3")]
        assert {200, 201, 404, 500} <= {c.status for c in calls}
        api_host = run.topology.service("api").dns_name
        for c in calls:
            assert c.request is not None
            headers = {k.lower(): v for k, v in c.request.headers}
            assert headers["authorization"] == "Bearer demo-secret"
            assert headers["host"] == api_host

    def test_order_carries_a_token_and_is_created(self, run: Run) -> None:
        orders = [c for c in whole(between(run, "frontend", "api", "http")) if c.target == "/orders"]
        assert orders
        for c in orders:
            assert c.request is not None and c.response is not None
            body = json.loads(c.request.body)
            assert body["token"].startswith("tok_") and body["product_id"] == 2
            created = json.loads(c.response.body)
            assert created["status"] == "accepted" and created["product_id"] == 2

    def test_catalog_is_gzipped_and_decodes(self, run: Run) -> None:
        lists = [c for c in whole(between(run, "frontend", "api", "http")) if c.target == "/products"]
        assert lists
        for c in lists:
            assert c.response is not None
            assert ("Content-Encoding", "gzip") in c.response.headers
            assert c.response.wire_size < c.response.body_size  # compressed on the wire
            products = json.loads(c.response.body)
            assert [p["id"] for p in products] == sorted(catalog.PRODUCTS)
            assert [p["sku"] for p in products] == [catalog.sku_of(i) for i in sorted(catalog.PRODUCTS)]

    def test_grpc_to_inventory(self, run: Run) -> None:
        calls = whole(between(run, "frontend", "inventory", "grpc"))
        seen = {(c.target, c.status) for c in calls}
        assert ("/demo.Inventory/GetStock", 0) in seen
        assert ("/demo.Inventory/GetStock", 5) in seen  # NOT_FOUND
        assert ("/demo.Inventory/WatchStock", 0) in seen
        assert {t for t, _ in seen} == {"/demo.Inventory/GetStock", "/demo.Inventory/WatchStock"}

    def test_grpc_messages_carry_the_catalog_stock(self, run: Run) -> None:
        """Decode each response's protobuf with the demo's own schema and compare with the catalog."""
        checked = 0
        for c in whole(between(run, "frontend", "inventory", "grpc")):
            assert c.request is not None and c.response is not None
            requested = pbwire.decode_stock_request(grpc_messages(c.request.body)[0])
            replies = [pbwire.decode_stock(m) for m in grpc_messages(c.response.body)]
            if c.status == 5:
                assert requested not in catalog.STOCK and replies == []
                continue
            assert c.status == 0 and requested in catalog.STOCK
            want = WATCH_UPDATES if c.target.endswith("/WatchStock") else 1  # type: ignore[union-attr]
            assert len(replies) == want == c.info["message_counts"]["response"]
            assert replies[0] == pbwire.Stock(requested, catalog.STOCK[requested], catalog.WAREHOUSE)
            checked += 1
        assert checked

    def test_dns_answers_name_the_services(self, run: Run) -> None:
        calls = between(run, "frontend", "dns", "dns")
        assert {c.target for c in calls} == {f"api.{ZONE}", f"inventory.{ZONE}"}
        for c in whole(calls):
            assert c.transport == "udp" and c.status == 0 and c.info["qtype"] == "A"
            service = c.target.split(".")[0]  # type: ignore[union-attr]
            addrs = [a["data"] for a in c.info["answers"] if a["type"] == "A"]
            assert addrs == [run.topology.ip(service)]

    def test_a_slow_call(self, run: Run) -> None:
        slow = [c for c in whole(between(run, "frontend", "api", "http")) if c.target == "/slow"]
        assert slow and all(c.latency_ns is not None and c.latency_ns >= 300_000_000 for c in slow)
        outer = [c for c in whole(between(run, "loadgen", "frontend", "http")) if c.target == "/slow"]
        assert outer and all(c.latency_ns is not None and c.latency_ns >= 300_000_000 for c in outer)

    def test_loadgen_sees_the_errors(self, run: Run) -> None:
        calls = whole(between(run, "loadgen", "frontend", "http"))
        by = {c.target: c.status for c in calls}
        assert by[f"/product/{catalog.UNKNOWN_PRODUCT}"] == 404
        assert by[f"/product/{catalog.BROKEN_PRODUCT}"] == 502
        assert by[f"/stock/{catalog.UNKNOWN_SKU}"] == 404
        assert by["/checkout"] == 201

    @pytest.mark.tshark
    def test_tshark_counts_the_same_requests(self, run: Run) -> None:
        if TSHARK is None:
            pytest.skip("tshark is not installed")
        http = [c for c in run.calls if c.protocol == "http"]
        assert tshark_count(run.bridge_pcap, "http.request") == sum(c.request is not None for c in http)
        assert tshark_count(run.bridge_pcap, "http.response") == sum(c.response is not None for c in http)
        dns = [c for c in run.calls if c.protocol == "dns"]
        assert tshark_count(run.bridge_pcap, "dns.flags.response == 0") == sum(
            c.request is not None for c in dns
        )
        assert tshark_count(run.bridge_pcap, "dns.flags.response == 1") == sum(
            c.response is not None for c in dns
        )

    def test_processes_are_named_after_their_service(self, run: Run) -> None:
        assert run.comms == {s.name: s.name for s in SERVICES}
        dns_ns = run.topology.service("dns").namespace
        if dnsmasq_path() is not None:
            assert run.pod_comms[dns_ns] == ["dns", "dnsmasq"]
        for s in run.topology.services:
            if s.name != "dns":
                assert run.pod_comms[s.namespace] == [s.name]

    def test_interfaces_are_the_host_veths(self, run: Run) -> None:
        assert run.interfaces == [s.host_if for s in run.topology.services]
        assert all(len(n) <= 15 and n.startswith(run.topology.prefix + "-") for n in run.interfaces)

    def test_cleanup_stale_leaves_a_live_demo_alone(self, run: Run) -> None:
        assert not [line for line in run.cleaned_while_running if run.topology.prefix in line]

    def test_stop_removes_everything(self, run: Run) -> None:
        assert run.left_after_stop == []
        assert run.names_after_stop == set()
        assert not (netns.STATE_DIR / f"{run.topology.prefix}.json").exists()
        for name, pid in run.pids.items():
            assert not running(pid), f"{name} (pid {pid}) still runs"


def grpc_messages(body: bytes) -> list[bytes]:
    """The length-prefixed messages of a gRPC body (uncompressed: the demo does not compress)."""
    out, off = [], 0
    while off + 5 <= len(body):
        assert body[off] == 0
        n = int.from_bytes(body[off + 1 : off + 5], "big")
        out.append(body[off + 5 : off + 5 + n])
        off += 5 + n
    assert off == len(body)
    return out


# --- a demo that dies with SIGKILL -----------------------------------------------------------------

KILLED_DEMO = """\
import sys, time
from podshark.demo import Demo
demo = Demo(rate=2.0, dns_backend=sys.argv[1])
demo.start()
print(demo.topology.prefix, flush=True)
time.sleep(600)
"""


@pytest.mark.root
@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.xdist_group("capture-demo")
@pytest.mark.parametrize("dns_backend", ["python", "dnsmasq"])
def test_cleanup_stale_after_sigkill(dns_backend: str) -> None:
    """A SIGKILLed demo leaves its network; its services end by themselves; cleanup_stale removes the rest.

    With the built-in Python DNS server this is also its end-to-end check: a demo only reports started
    after loadgen's first request went through the frontend, whose DNS lookups it must have answered.
    With dnsmasq, dnsmasq must end with its supervisor (PR_SET_PDEATHSIG).
    """
    reason = requirements_missing()
    if reason:
        pytest.skip(reason)
    if dns_backend == "dnsmasq" and dnsmasq_path() is None:
        pytest.skip("dnsmasq is not installed (apt-get install dnsmasq-base)")
    proc = subprocess.Popen(
        [sys.executable, "-c", KILLED_DEMO, dns_backend],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    prefix = ""
    try:
        assert proc.stdout is not None
        prefix = proc.stdout.readline().strip()
        assert prefix, f"demo did not start: {proc.stderr.read() if proc.stderr else ''}"
        names = set(netns.leftovers(prefix))
        services = {p for s in SERVICES for p in netns.netns_pids(f"{prefix}-{s.name}")}
        assert len(names) == len(SERVICES) * 2 + 1  # namespaces, host veths, bridge
        # the Python DNS server runs in the supervisor itself; dnsmasq is a process of its own
        assert len(services) == len(SERVICES) + (dns_backend == "dnsmasq")
        proc.kill()
        proc.wait(timeout=10)
        # the crash left the network behind (else the cleanup below would prove nothing)
        assert set(netns.leftovers(prefix)) == names
        state = netns.read_state(prefix)
        assert state is not None and Path(state["workdir"]).is_dir()
        # the services noticed their parent died and ended themselves
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and any(running(p) for p in services):
            time.sleep(0.1)
        assert not [p for p in services if running(p)]
        removed = cleanup_stale()
        assert netns.leftovers(prefix) == []
        assert not {n for n in all_names() if n.startswith(prefix)}
        assert not (netns.STATE_DIR / f"{prefix}.json").exists()
        assert not Path(state["workdir"]).exists()
        assert {f"namespace {prefix}-{s.name}" for s in SERVICES} <= set(removed)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        if prefix:
            netns.teardown_prefix(prefix)


@pytest.mark.root
@pytest.mark.xdist_group("capture-demo")
def test_requirements_missing_names_root_when_not_root() -> None:
    setpriv = shutil.which("setpriv")
    if setpriv is None or os.geteuid() != 0:
        pytest.skip("needs setpriv and root to drop to an unprivileged user")
    res = subprocess.run(
        [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-c",
         "from podshark.demo import requirements_missing; print(requirements_missing())"],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert "needs root" in res.stdout


def test_demo_error_before_start() -> None:
    demo = Demo()
    with pytest.raises(DemoError, match="start"):
        _ = demo.topology
    demo.stop()  # stopping a demo that never started is fine


@pytest.mark.parametrize(
    "kw",
    [
        {"rate": 0},
        {"rate": -1},
        {"rate": float("nan")},
        {"rate": 1e9},
        {"error_rate": 2},
        {"dns_backend": "bind"},
    ],
)
def test_bad_settings_are_refused(kw: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="demo"):
        Demo(**kw)  # type: ignore[arg-type]


# --- the topology as data --------------------------------------------------------------------------


def test_topology_builds_names_within_kernel_limits() -> None:
    t = Topology.build("psd1a2b", "198.19.200.0/24")
    assert [s.namespace for s in t.services] == [f"psd1a2b-{s.name}" for s in SERVICES]
    assert all(len(s.host_if) <= 15 for s in t.services) and len(t.bridge) <= 15
    assert t.ip("dns") == "198.19.200.53"
    assert t.edge_tuples() == {(t.ip(e.client), t.ip(e.server), e.protocol) for e in EDGES}
    assert Topology.from_json(t.to_json()) == t


@pytest.mark.parametrize(
    ("prefix", "subnet", "match"),
    [
        ("psd1a2", "198.18.1.0/24", "prefix"),
        ("xyz1a2b", "198.18.1.0/24", "prefix"),
        ("psd1a2b", "10.0.0.0/24", "subnet"),
        ("psd1a2b", "198.18.0.0/16", "subnet"),
    ],
)
def test_topology_refuses_bad_names(prefix: str, subnet: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        Topology.build(prefix, subnet)


def test_topology_refuses_an_edge_to_the_wrong_protocol() -> None:
    from podshark.demo.topology import EdgeSpec

    with pytest.raises(ValueError, match="serves"):
        Topology.build("psd1a2b", "198.18.1.0/24", edges=(EdgeSpec("loadgen", "api", "grpc"),))
    with pytest.raises(ValueError, match="unknown"):
        Topology.build("psd1a2b", "198.18.1.0/24", edges=(EdgeSpec("loadgen", "nope", "http"),))


@pytest.mark.parametrize("text", ["", "{}", "[]", '{"prefix": 1}', "not json"])
def test_topology_from_bad_json(text: str) -> None:
    with pytest.raises(ValueError, match="topology"):
        Topology.from_json(text)


def test_config_round_trip(tmp_path: Path) -> None:
    cfg = DemoConfig(
        Topology.build("psd00ff", "198.18.3.0/24"), rate=3.5, error_rate=0.1, dns_backend="python"
    )
    cfg.write(tmp_path)
    assert DemoConfig.read(tmp_path) == cfg
    (tmp_path / "config.json").write_text('{"rate": "x"}')
    with pytest.raises(ValueError, match=r"config\.json"):
        DemoConfig.read(tmp_path)


# --- DNS wire format and the fallback server, against dnspython -------------------------------------

try:  # dnspython is the oracle for the DNS wire format (a dev dependency)
    import dns.message as dns_message
    import dns.rcode
    import dns.rdatatype
except ImportError:  # pragma: no cover
    dns_message = None
requires_dnspython = pytest.mark.skipif(dns_message is None, reason="dnspython is not installed")
TOPO = Topology.build("psd1a2b", "198.18.9.0/24")
TABLE = records(TOPO)


@requires_dnspython
def test_query_is_what_dnspython_reads() -> None:
    m = dns_message.from_wire(dnswire.build_query(0x1234, "api.demo.podshark"))
    assert m.id == 0x1234 and m.flags & 0x0100
    assert [(str(q.name), q.rdtype) for q in m.question] == [("api.demo.podshark.", dns.rdatatype.A)]


@requires_dnspython
@pytest.mark.parametrize("service", [s.name for s in SERVICES])
def test_fallback_server_answers_like_the_records(service: str) -> None:
    name = f"{service}.{ZONE}"
    q = dns_message.make_query(name, "A")
    reply = dns_message.from_wire(answer(q.to_wire(), TABLE))
    assert reply.id == q.id and reply.rcode() == dns.rcode.NOERROR
    assert [rr.address for rrset in reply.answer for rr in rrset] == [TOPO.ip(service)]
    # and our own client reads it the same
    assert dnswire.parse_a_answers(answer(dnswire.build_query(7, name), TABLE) or b"", 7, name) == (
        0,
        [TOPO.ip(service)],
    )


@requires_dnspython
@pytest.mark.parametrize(
    ("name", "rdtype", "rcode", "count"),
    [
        (f"nope.{ZONE}", "A", 3, 0),
        (f"api.{ZONE}", "AAAA", 0, 0),
        ("example.com", "A", 5, 0),
        (f"API.{ZONE}", "A", 0, 1),
    ],
)
def test_fallback_server_edge_cases(name: str, rdtype: str, rcode: int, count: int) -> None:
    q = dns_message.make_query(name, rdtype)
    reply = dns_message.from_wire(answer(q.to_wire(), TABLE))
    assert reply.rcode() == rcode and sum(len(r) for r in reply.answer) == count
    assert str(reply.question[0].name).rstrip(".") == name  # case kept as sent


@requires_dnspython
def test_fallback_server_ignores_responses_and_runts() -> None:
    q = dns_message.make_query(f"api.{ZONE}", "A")
    r = answer(q.to_wire(), TABLE)
    assert r is not None and answer(r, TABLE) is None
    assert answer(b"\x00\x01", TABLE) is None
    formerr = answer(b"\x12\x34\x01\x00" + b"\x00" * 8, TABLE)  # no question
    assert formerr is not None and dns_message.from_wire(formerr).rcode() == 1  # FORMERR


def test_client_refuses_a_mismatched_answer() -> None:
    reply = answer(dnswire.build_query(1, f"api.{ZONE}"), TABLE)
    assert reply is not None
    with pytest.raises(dnswire.DnsError, match="id"):
        dnswire.parse_a_answers(reply, 2, f"api.{ZONE}")
    with pytest.raises(dnswire.DnsError, match="not"):
        dnswire.parse_a_answers(reply, 1, f"inventory.{ZONE}")


def test_compression_loop_is_refused() -> None:
    msg = b"\x00\x01\x81\x00\x00\x01\x00\x00\x00\x00\x00\x00" + b"\xc0\x0c"  # question name points at itself
    with pytest.raises(dnswire.DnsError, match="backwards"):
        dnswire.parse_question(msg)


@given(st.binary(max_size=600))
def test_dns_parsers_never_raise_other_errors(data: bytes) -> None:
    reply = answer(data, TABLE)  # never raises at all
    assert reply is None or len(reply) >= 12
    for parse in (lambda: dnswire.parse_question(data), lambda: dnswire.parse_a_answers(data, 0, "a.b")):
        with contextlib.suppress(dnswire.DnsError):
            parse()


@given(st.data())
def test_dns_answers_survive_byte_flips(data: st.DataObject) -> None:
    reply = bytearray(answer(dnswire.build_query(9, f"api.{ZONE}"), TABLE) or b"")
    i = data.draw(st.integers(0, len(reply) - 1))
    reply[i] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(reply)))
    with contextlib.suppress(dnswire.DnsError):
        dnswire.parse_a_answers(bytes(reply[:cut]), 9, f"api.{ZONE}")


# --- protobuf messages, against the protobuf runtime ------------------------------------------------


def stock_classes() -> tuple[type, type]:
    pytest.importorskip("google.protobuf")
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    fdp = descriptor_pb2.FileDescriptorProto(name="podshark_demo.proto", package="demo", syntax="proto3")
    F = descriptor_pb2.FieldDescriptorProto
    req = fdp.message_type.add(name="StockRequest")
    req.field.add(name="sku", number=1, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL)
    stock = fdp.message_type.add(name="Stock")
    stock.field.add(name="sku", number=1, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL)
    stock.field.add(name="quantity", number=2, type=F.TYPE_INT32, label=F.LABEL_OPTIONAL)
    stock.field.add(name="warehouse", number=3, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    return (
        message_factory.GetMessageClass(pool.FindMessageTypeByName("demo.StockRequest")),
        message_factory.GetMessageClass(pool.FindMessageTypeByName("demo.Stock")),
    )


@given(st.text(max_size=40), st.integers(-(2**31), 2**31 - 1), st.text(max_size=20))
def test_stock_matches_the_protobuf_runtime(sku: str, quantity: int, warehouse: str) -> None:
    StockRequest, StockMsg = stock_classes()
    ours = pbwire.encode_stock(pbwire.Stock(sku, quantity, warehouse))
    theirs = StockMsg.FromString(ours)  # type: ignore[attr-defined]
    assert (theirs.sku, theirs.quantity, theirs.warehouse) == (sku, quantity, warehouse)
    encoded = StockMsg(sku=sku, quantity=quantity, warehouse=warehouse).SerializeToString()
    assert pbwire.decode_stock(encoded) == pbwire.Stock(sku, quantity, warehouse)
    assert pbwire.decode_stock_request(StockRequest(sku=sku).SerializeToString()) == sku
    assert StockRequest.FromString(pbwire.encode_stock_request(sku)).sku == sku  # type: ignore[attr-defined]


@given(st.binary(max_size=200))
def test_protobuf_decoding_never_raises_other_errors(data: bytes) -> None:
    for decode in (pbwire.decode_stock, pbwire.decode_stock_request):
        with contextlib.suppress(pbwire.WireError):
            decode(data)


def test_frontend_gunzip_is_bounded() -> None:
    from podshark.demo.frontend import MAX_RESPONSE, _gunzip

    bomb = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    data = bomb.compress(b"\x00" * (MAX_RESPONSE * 4)) + bomb.flush()
    with pytest.raises(ValueError, match="larger"):
        _gunzip(data)


# --- the api and frontend servers in-process (no namespaces needed) ---------------------------------


@contextlib.contextmanager
def serving(server: http.server.HTTPServer) -> Iterator[tuple[str, int]]:
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server.server_address[0], server.server_address[1]  # type: ignore[misc]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def http_call(
    addr: tuple[str, int],
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection(*addr, timeout=10)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


@pytest.fixture
def api_addr() -> Iterator[tuple[str, int]]:
    from podshark.demo.api import ApiServer

    with serving(ApiServer(("127.0.0.1", 0), error_rate=0.0)) as addr:
        yield addr


AUTH = {"Authorization": "Bearer demo-secret", "Content-Type": "application/json"}


@pytest.mark.parametrize(
    ("method", "path", "body", "headers", "status"),
    [
        ("GET", "/products/3", None, {}, 200),
        ("GET", f"/products/{catalog.UNKNOWN_PRODUCT}", None, {}, 404),
        ("GET", "/products/x1", None, {}, 404),
        ("GET", f"/products/{catalog.BROKEN_PRODUCT}", None, {}, 500),
        ("GET", "/nope", None, {}, 404),
        ("POST", "/orders", b'{"token": "t", "product_id": 2}', AUTH, 201),
        ("POST", "/orders", b'{"token": "t", "product_id": 2}', {"Content-Type": "application/json"}, 401),
        ("POST", "/orders", b"{not json", AUTH, 400),
        ("POST", "/orders", b'{"product_id": 2}', AUTH, 400),
        ("POST", "/orders", b'{"token": "t", "product_id": 999}', AUTH, 400),
        ("POST", "/orders", b"[1, 2]", AUTH, 400),
        ("POST", "/elsewhere", b"{}", AUTH, 404),
    ],
)
def test_api_contract(
    api_addr: tuple[str, int],
    method: str,
    path: str,
    body: bytes | None,
    headers: dict[str, str],
    status: int,
) -> None:
    got, _, data = http_call(api_addr, method, path, body, headers)
    assert got == status
    assert isinstance(json.loads(data), dict)


def test_api_refuses_an_oversized_body(api_addr: tuple[str, int]) -> None:
    from podshark.demo.api import MAX_BODY

    with socket.create_connection(api_addr, timeout=10) as s:
        s.sendall(f"POST /orders HTTP/1.1\r\nHost: x\r\nContent-Length: {MAX_BODY + 1}\r\n\r\n".encode())
        assert s.recv(4096).startswith(b"HTTP/1.1 413 ")
    with socket.create_connection(api_addr, timeout=10) as s:
        s.sendall(b"POST /orders HTTP/1.1\r\nHost: x\r\n\r\n")
        assert s.recv(4096).startswith(b"HTTP/1.1 411 ")


def test_api_gzips_the_catalog_only_when_asked(api_addr: tuple[str, int]) -> None:
    status, headers, data = http_call(api_addr, "GET", "/products", headers={"Accept-Encoding": "gzip"})
    assert status == 200 and headers["content-encoding"] == "gzip"
    assert [p["id"] for p in json.loads(zlib.decompress(data, 16 + zlib.MAX_WBITS))] == sorted(
        catalog.PRODUCTS
    )
    status, headers, data = http_call(api_addr, "GET", "/products")
    assert "content-encoding" not in headers and len(json.loads(data)) == len(catalog.PRODUCTS)
    status, headers, _ = http_call(api_addr, "GET", "/products/1", headers={"Accept-Encoding": "gzip"})
    assert "content-encoding" not in headers  # small bodies stay plain


def test_frontend_names_a_dead_dependency() -> None:
    """With nothing answering DNS, the frontend says 503 and which dependency failed."""
    from podshark.demo.frontend import FrontendServer, Peers

    peers = Peers(Topology.build("psd1a2b", "198.18.9.0/24"))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as closed:
        closed.bind(("127.0.0.1", 0))
        dead = closed.getsockname()
    peers.dns = dead  # a UDP port nobody listens on: ICMP port unreachable, at once
    with serving(FrontendServer(("127.0.0.1", 0), peers)) as addr:
        status, _, data = http_call(addr, "GET", "/product/3")
        assert status == 503 and json.loads(data)["dependency"] == "dns"
        status, _, data = http_call(addr, "GET", "/nowhere")
        assert status == 404
        status, _, data = http_call(addr, "POST", "/checkout", b"[]", {"Content-Type": "application/json"})
        assert status == 400
