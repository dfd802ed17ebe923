"""The eBPF connection tracer (`capture.ebpf`): short-lived clients get their process name.

A curl that exits in milliseconds is gone before any /proc scan; the tracer records it while it
connects. The truth comes from outside podshark: each client's pid from Popen (``ip netns exec`` and
curl/dig are exec'd, so the pid is the client's own), and the 4-tuples from tcpdump on the veth
(checked against curl's own ``%{local_port}`` write-out). A /proc-only index runs alongside as a
control: it must name none of those clients, which shows the test depends on the tracer.

The indexes are started with scans effectively off (first scan only, then hourly; no rescans on
a miss) and *before* the servers start, so the servers too are known only from tracer events
(listen(), the first UDP send).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import subprocess
import tempfile
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import dpkt
import pytest
from hypothesis import given
from hypothesis import strategies as st

from capture.ebpf.conntrace import EVENT_SIZE, SOCKET, ConnTracer, decode_event, decode_sockets
from capture.ebpf.libbpf import BpfError, BpfObject
from capture.procs import ProcessIndex
from tests.capture.test_procs import CLIENT, SERVER, in_cgroup, spawn
from tests.realtraffic import NetnsPair, netns_pair, tcpdump_capture

CURL = shutil.which("curl")
DIG = shutil.which("dig")
HTTP_PORT = 8000
DNS_PORT = 5353
CURL_RUNS = 20
DIG_RUNS = 5

#: A DNS "server" named psk-dns: answers every query with itself, QR and RA set, NOERROR.
DNS_SERVER = textwrap.dedent(
    """\
    import ctypes, socket, sys
    ctypes.CDLL(None).prctl(15, b"psk-dns", 0, 0, 0)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("0.0.0.0", int(sys.argv[1])))
    print("ready", flush=True)
    while True:
        data, peer = s.recvfrom(4096)
        if len(data) >= 12:
            s.sendto(data[:2] + bytes([data[2] | 0x80, 0x80]) + data[4:], peer)
    """
)


def _tracer_unavailable() -> str | None:
    """Why the tracer cannot load here (the test is skipped with it), or None."""
    if os.geteuid() != 0:
        return "needs root (or CAP_BPF+CAP_PERFMON) to load eBPF"
    tracer = ConnTracer(lambda _event: None)
    try:
        tracer.start()
    except BpfError as exc:
        return f"eBPF connect tracer cannot load: {exc}"
    finally:
        tracer.close()
    return None


@pytest.fixture(scope="module")
def tracer_ok() -> None:
    reason = _tracer_unavailable()
    if reason:
        pytest.skip(reason)


@contextlib.contextmanager
def indexes() -> Iterator[tuple[ProcessIndex, ProcessIndex]]:
    """(eBPF index, /proc-only control), both with scans off after the first one."""
    traced = ProcessIndex(ebpf=True, rescan_interval=3600, miss_rescan_interval=3600)
    control = ProcessIndex(ebpf=False, rescan_interval=3600, miss_rescan_interval=3600)
    try:
        warnings = traced.start()
        assert traced.stats()["ebpf"], warnings
        control.start()
        yield traced, control
    finally:
        traced.close()
        control.close()


def _client_ports(pcap: Path, client_ip: str, proto: type) -> list[int]:
    """Source ports of the client's connections (TCP: each SYN; UDP: each datagram), in capture order."""
    ports: list[int] = []
    with pcap.open("rb") as f:
        for _ts, frame in dpkt.pcap.Reader(f):
            ip = dpkt.ethernet.Ethernet(frame).data
            if not isinstance(ip, dpkt.ip.IP) or not isinstance(ip.data, proto):
                continue
            if dpkt.utils.inet_to_str(ip.src) != client_ip:
                continue
            seg = ip.data
            handshake = seg.flags & (dpkt.tcp.TH_SYN | dpkt.tcp.TH_ACK) if proto is dpkt.tcp.TCP else None
            if handshake not in (None, dpkt.tcp.TH_SYN):  # TCP: only the client's SYN
                continue
            ports.append(seg.sport)
    return ports


@pytest.mark.root
@pytest.mark.xdist_group("capture-procs")
def test_short_lived_curls_are_named(tracer_ok: None) -> None:
    if CURL is None:
        pytest.skip("curl is not installed")
    workdir = Path(tempfile.mkdtemp(prefix="psk-conntrace-"))
    try:
        with (
            netns_pair() as pair,
            indexes() as (traced, control),
            spawn(pair, pair.server_ns, SERVER, "psk-httpd", "0.0.0.0", str(HTTP_PORT)) as (httpd, _),
        ):
            url = f"http://{pair.server_ip}:{HTTP_PORT}/"
            runs: list[tuple[int, int]] = []  # (curl pid, its local port)
            with tcpdump_capture(pair, workdir / "curl.pcap", bpf=f"tcp port {HTTP_PORT}") as cap:
                for _ in range(CURL_RUNS):
                    runs.append(_curl(pair, url))
            wire_ports = _client_ports(cap.path, pair.client_ip, dpkt.tcp.TCP)
            assert cap.complete, cap.stderr
            assert sorted(wire_ports) == sorted(port for _pid, port in runs)
            assert len(set(wire_ports)) == CURL_RUNS

            for pid, port in runs:
                with pytest.raises(ProcessLookupError):
                    os.kill(pid, 0)  # the curl is gone: /proc cannot know it any more
                client, server = traced.lookup("tcp", pair.client_ip, port, pair.server_ip, HTTP_PORT)
                assert client is not None and (client.pid, client.name) == (pid, "curl"), port
                assert server is not None and (server.pid, server.name) == (httpd.pid, "psk-httpd")
                assert control.lookup("tcp", pair.client_ip, port, pair.server_ip, HTTP_PORT)[0] is None

            stats = traced.stats()
            assert stats["lost"] == 0
            assert stats["ebpf_counters"]["lost"] == 0
            assert stats["ebpf_counters"]["malformed"] == 0
            assert stats["ebpf_counters"]["callback_errors"] == 0
            assert stats["events"] >= CURL_RUNS + 1  # every connect and the server's listen()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _curl(pair: NetnsPair, url: str) -> tuple[int, int]:
    assert CURL is not None
    proc = subprocess.Popen(
        pair.exec_args(pair.client_ns, [CURL, "-sS", "-o", "/dev/null", "-w", "%{local_port}", url]),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    return proc.pid, int(out)


@pytest.mark.root
@pytest.mark.xdist_group("capture-procs")
def test_short_lived_dig_is_named(tracer_ok: None) -> None:
    if DIG is None:
        pytest.skip("dig is not installed (apt-get install bind9-dnsutils)")
    workdir = Path(tempfile.mkdtemp(prefix="psk-conntrace-"))
    try:
        with (
            netns_pair() as pair,
            indexes() as (traced, control),
            spawn(pair, pair.server_ns, DNS_SERVER, str(DNS_PORT)) as (dns, _),
        ):
            pids: list[int] = []
            with tcpdump_capture(pair, workdir / "dig.pcap", bpf=f"udp port {DNS_PORT}") as cap:
                for i in range(DIG_RUNS):
                    pids.append(_dig(pair, f"q{i}.example.test"))
            wire_ports = _client_ports(cap.path, pair.client_ip, dpkt.udp.UDP)
            assert cap.complete, cap.stderr
            assert len(wire_ports) == DIG_RUNS  # one query per dig, in the order they ran

            for pid, port in zip(pids, wire_ports):
                client, server = traced.lookup("udp", pair.client_ip, port, pair.server_ip, DNS_PORT)
                assert client is not None and (client.pid, client.name) == (pid, "dig"), port
                assert server is not None and (server.pid, server.name) == (dns.pid, "psk-dns")
                assert control.lookup("udp", pair.client_ip, port, pair.server_ip, DNS_PORT)[0] is None
            assert traced.stats()["lost"] == 0
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _dig(pair: NetnsPair, name: str) -> int:
    assert DIG is not None
    proc = subprocess.Popen(
        pair.exec_args(
            pair.client_ns,
            [DIG, f"@{pair.server_ip}", "-p", str(DNS_PORT), "+tries=1", "+time=3", "+noedns", name],
        ),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0 and "status: NOERROR" in out, out + err
    return proc.pid


# --- decoding and error reporting -------------------------------------------------------------------


@given(st.binary(max_size=2 * EVENT_SIZE))
def test_decode_event_never_raises(data: bytes) -> None:
    event = decode_event(data)
    assert event is None or event.transport in ("tcp", "udp")


@given(st.binary(max_size=4 * SOCKET.size + 7))
def test_decode_sockets_never_raises(data: bytes) -> None:
    records, malformed = decode_sockets(data)
    assert len(records) + malformed >= len(data) // SOCKET.size


def test_missing_object_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(BpfError) as info:
        BpfObject(tmp_path / "nothing.bpf.o")
    assert "build.sh" in str(info.value) and "\n" not in str(info.value)


def test_garbage_object_is_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.bpf.o"
    bad.write_bytes(b"\x7fELF not really an object")
    try:
        with pytest.raises(BpfError) as info:
            BpfObject(bad)
    except OSError as exc:  # pragma: no cover - libbpf.so.1 missing: nothing to test
        pytest.skip(str(exc))
    message = str(info.value)
    assert message.startswith("open bad.bpf.o: ") and "\n" not in message


@pytest.mark.root
@pytest.mark.xdist_group("capture-procs")
def test_short_lived_curls_over_ipv6(tracer_ok: None) -> None:
    """The same over IPv6 (the tracer reads the socket's v6 addresses): curl's own write-out is the truth."""
    if CURL is None:
        pytest.skip("curl is not installed")
    client_ip, server_ip = "fd00:5053:6b::1", "fd00:5053:6b::2"
    with netns_pair() as pair:
        for ns, ifname, ip in (
            (pair.client_ns, pair.client_if, client_ip),
            (pair.server_ns, pair.server_if, server_ip),
        ):
            subprocess.run(["ip", "-n", ns, "addr", "add", f"{ip}/64", "dev", ifname, "nodad"], check=True)
        with (
            indexes() as (traced, _control),
            spawn(pair, pair.server_ns, SERVER, "psk-httpd6", "::", str(HTTP_PORT)) as (httpd, _),
        ):
            runs = [_curl(pair, f"http://[{server_ip}]:{HTTP_PORT}/") for _ in range(5)]
            for pid, port in runs:
                client, server = traced.lookup("tcp", client_ip, port, server_ip, HTTP_PORT)
                assert client is not None and (client.pid, client.name) == (pid, "curl"), port
                assert server is not None and (server.pid, server.name) == (httpd.pid, "psk-httpd6")
            assert traced.stats()["lost"] == 0


@contextlib.contextmanager
def container_cgroup(leaf: str) -> Iterator[Path]:
    """A cgroup v2 group named like a container runtime's (``psk-<hex>/<leaf>``), removed afterwards."""
    mounts = Path("/proc/mounts").read_text().splitlines()
    roots = [line.split()[1] for line in mounts if line.split()[2:3] == ["cgroup2"]]
    if not roots:
        pytest.skip("no cgroup v2 hierarchy mounted")
    parent = Path(roots[0]) / f"psk-{secrets.token_hex(3)}"
    group = parent / leaf
    try:
        group.mkdir(parents=True)
    except OSError as exc:
        pytest.skip(f"cannot create a cgroup under {roots[0]}: {exc}")
    try:
        yield group
    finally:
        deadline = time.monotonic() + 10  # our processes have been ended; the kernel may lag a little
        for directory in (group, parent):
            while directory.exists():
                try:
                    directory.rmdir()
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)


@pytest.mark.root
@pytest.mark.xdist_group("capture-procs")
def test_container_ids_from_cgroups(tracer_ok: None) -> None:
    """A short-lived curl in ``docker-<id>.scope`` (its id comes from the tracer: it is gone before
    /proc could be read) and a long-lived client in ``cri-containerd-<id>.scope`` (from /proc)."""
    if CURL is None:
        pytest.skip("curl is not installed")
    curl_id, client_id = secrets.token_hex(32), secrets.token_hex(32)
    with (
        netns_pair() as pair,
        container_cgroup(f"docker-{curl_id}.scope") as curl_group,
        container_cgroup(f"cri-containerd-{client_id}.scope") as client_group,
        indexes() as (traced, _control),
        spawn(pair, pair.server_ns, SERVER, "psk-httpd", "0.0.0.0", str(HTTP_PORT)),
    ):
        url = f"http://{pair.server_ip}:{HTTP_PORT}/"
        curl = subprocess.run(
            in_cgroup(
                curl_group,
                pair.exec_args(pair.client_ns, [CURL, "-sS", "-o", "/dev/null", "-w", "%{local_port}", url]),
            ),
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert curl.returncode == 0, curl.stderr
        client = traced.lookup("tcp", pair.client_ip, int(curl.stdout), pair.server_ip, HTTP_PORT)[0]
        assert client is not None and (client.name, client.container) == ("curl", curl_id)

        with spawn(
            pair, pair.client_ns, CLIENT, "psk-client", pair.server_ip, str(HTTP_PORT), cgroup=client_group
        ) as (holder, port):
            index = ProcessIndex(ebpf=False, rescan_interval=3600)  # a /proc scan after it started
            try:
                index.start()
                found = index.lookup("tcp", pair.client_ip, int(port), pair.server_ip, HTTP_PORT)[0]
            finally:
                index.close()
            assert found is not None
            assert (found.pid, found.name, found.container) == (holder.pid, "psk-client", client_id)
