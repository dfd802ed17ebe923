"""A small network lab for capture tests: namespaces, veths, bridges, tcpdump, in-process traffic.

Why in-process: `in_netns(name)` moves the *calling thread* into a network namespace (setns) and back.
A socket keeps the namespace it was created in, so a test can open a `Ring` or a UDP/TCP socket "inside"
a namespace and then use it from the test itself: no helper processes, exact control over what is sent,
and the ground truth (what was sent) is in the test's hands. tcpdump, the oracle, runs in the namespace
through `ip netns exec`.

Everything made here is uniquely named (`psk<6 hex>...`) and removed in `finally` blocks, even when the
test fails: deleting a namespace deletes its interfaces; processes are ended by their pid.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import secrets
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from capture.afpacket import Frame, Ring, wait
from dissect.pcapio import read_packets

IP = shutil.which("ip")
TCPDUMP = shutil.which("tcpdump")
CLONE_NEWNET = 0x40000000

_libc = ctypes.CDLL(None, use_errno=True)


def unavailable_reason() -> str | None:
    """Why namespace tests cannot run here, or None when they can."""
    if os.geteuid() != 0:
        return "needs root: creates network namespaces and captures packets"
    if IP is None:
        return "iproute2 (`ip`) is not installed"
    if TCPDUMP is None:
        return "tcpdump is not installed (the oracle of these tests)"
    return None


def new_tag() -> str:
    """Six hex digits that make this test's names unique on the machine."""
    return secrets.token_hex(3)


def sh(*args: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """Run a command (with `ip` resolved), raising with its stderr when it fails and `check`."""
    argv = [IP if a == "ip" and IP else a for a in args]
    res = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if check and res.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({res.returncode}): {res.stderr.strip()}")
    return res


@contextlib.contextmanager
def netns(name: str) -> Iterator[str]:
    """A network namespace named `name` with `lo` up; deleted afterwards with whatever runs in it."""
    sh("ip", "netns", "add", name)
    try:
        sh("ip", "-n", name, "link", "set", "lo", "up")
        yield name
    finally:
        res = subprocess.run([IP or "ip", "netns", "pids", name], capture_output=True, text=True)
        for pid in (int(p) for p in res.stdout.split() if p.isdigit()):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        subprocess.run([IP or "ip", "netns", "del", name], capture_output=True)


@contextlib.contextmanager
def in_netns(name: str) -> Iterator[None]:
    """Run the body with the calling thread in network namespace `name`; always come back.

    Sockets (and `Ring`s) created in the body live in that namespace for good; `ip`/subprocesses
    started in the body run there too.
    """
    with open("/proc/thread-self/ns/net", "rb") as home, open(f"/run/netns/{name}", "rb") as there:
        if _libc.setns(there.fileno(), CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns into {name}: {os.strerror(err)}")
        try:
            yield
        finally:
            if _libc.setns(home.fileno(), CLONE_NEWNET) != 0:  # pragma: no cover - would be fatal
                err = ctypes.get_errno()
                raise OSError(err, f"setns back home: {os.strerror(err)}")


def veth(ns_a: str, if_a: str, ns_b: str, if_b: str) -> None:
    """A veth pair with end `if_a` in `ns_a` and `if_b` in `ns_b`, both up (no addresses)."""
    sh("ip", "link", "add", if_a, "netns", ns_a, "type", "veth", "peer", "name", if_b, "netns", ns_b)
    sh("ip", "-n", ns_a, "link", "set", if_a, "up")
    sh("ip", "-n", ns_b, "link", "set", if_b, "up")


def address(ns: str, ifname: str, cidr: str) -> None:
    sh("ip", "-n", ns, "addr", "add", cidr, "dev", ifname)


def no_ipv6_chatter(ns: str) -> None:
    """Turn IPv6 off in `ns`, so router/neighbour solicitations and MLD reports do not join the traffic."""
    sh("ip", "netns", "exec", ns, "sysctl", "-q", "-w", "net.ipv6.conf.all.disable_ipv6=1")
    sh("ip", "netns", "exec", ns, "sysctl", "-q", "-w", "net.ipv6.conf.default.disable_ipv6=1")


@dataclass
class Pair:
    """Namespaces `a` (client side, address `ip_a`) and `b` (`ip_b`) joined by veth `if_a` <-> `if_b`."""

    tag: str
    a: str
    b: str
    if_a: str
    if_b: str
    ip_a: str
    ip_b: str


@contextlib.contextmanager
def pair(*, ipv6: bool = False) -> Iterator[Pair]:
    """Two fresh namespaces joined by a veth on 198.18.<x>.0/30 (RFC 2544 space: never a real network)."""
    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)
    tag = new_tag()
    third = int(tag[:2], 16)
    p = Pair(
        tag,
        f"psk{tag}a",
        f"psk{tag}b",
        f"psk{tag}a0",
        f"psk{tag}b0",
        f"198.18.{third}.1",
        f"198.18.{third}.2",
    )
    with netns(p.a), netns(p.b):
        if not ipv6:
            no_ipv6_chatter(p.a)
            no_ipv6_chatter(p.b)
        veth(p.a, p.if_a, p.b, p.if_b)
        address(p.a, p.if_a, f"{p.ip_a}/30")
        address(p.b, p.if_b, f"{p.ip_b}/30")
        yield p


@dataclass
class Tcpdump:
    """A finished tcpdump capture: its frames (ns timestamps) and its own counters."""

    path: Path
    stderr: str = ""
    captured: int | None = None
    dropped: int | None = None
    frames: list[Frame] = field(default_factory=list)


@contextlib.contextmanager
def tcpdump(
    ns: str | None, ifname: str, out: Path, expr: str = "", *extra: str, promiscuous: bool = False
) -> Iterator[Tcpdump]:
    """tcpdump on `ifname` inside `ns` (None: the root namespace; nanosecond timestamps, whole frames,
    promiscuous only when asked: a bridge sees its ports' unicast only that way), yielding once it is
    capturing; on exit it is stopped, its counters parsed and its frames read."""
    assert IP is not None and TCPDUMP is not None
    cap = Tcpdump(out)
    argv = [
        *([IP, "netns", "exec", ns] if ns is not None else []),
        TCPDUMP,
        "-i",
        ifname,
        "-w",
        str(out),
        "-U",
        "--immediate-mode",
        "-n",
    ]
    if not promiscuous:
        argv.append("-p")
    argv += ["-s", "0", "-B", "32768", "-Z", "root", "--time-stamp-precision=nano", *extra]
    if expr:
        argv.append(expr)
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    listening = threading.Event()

    def read_stderr() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.append(line)
            if "listening on" in line:
                listening.set()
        listening.set()

    reader = threading.Thread(target=read_stderr, daemon=True)
    reader.start()
    try:
        if not listening.wait(10) or proc.poll() is not None:
            raise RuntimeError(f"tcpdump did not start: {''.join(lines).strip()}")
        yield cap
        _settle(out)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        reader.join(timeout=5)
    cap.stderr = "".join(lines)
    for line in lines:
        words = line.split()
        if words and words[0].isdigit():
            if "captured" in line:
                cap.captured = int(words[0])
            elif "dropped by kernel" in line:
                cap.dropped = int(words[0])
    cap.frames = list(read_packets(out))


def _settle(path: Path, quiet: float = 0.3, limit: float = 5.0) -> None:
    """Return once `path` has stopped growing for `quiet` seconds (or after `limit`)."""
    deadline = time.monotonic() + limit
    last, since = -1, time.monotonic()
    while time.monotonic() < deadline:
        size = path.stat().st_size if path.exists() else 0
        if size != last:
            last, since = size, time.monotonic()
        elif time.monotonic() - since >= quiet:
            return
        time.sleep(0.05)


def drain(rings: Sequence[Ring], *, quiet: float = 0.4, limit: float = 15.0) -> list[list[Frame]]:
    """Read every ring until none has had anything for `quiet` seconds (blocks are retired within the
    rings' retire_ms); the frames of each ring, in ring order."""
    got: list[list[Frame]] = [[] for _ in rings]
    index = {id(r): i for i, r in enumerate(rings)}
    deadline = time.monotonic() + limit
    last = time.monotonic()
    while time.monotonic() < deadline and time.monotonic() - last < quiet:
        for ring in wait(rings, 0.05):
            frames = list(ring.packets())
            if frames:
                got[index[id(ring)]].extend(frames)
                last = time.monotonic()
    return got


def udp_send(ns: str, src: tuple[str, int], dst: tuple[str, int], payloads: Iterable[bytes]) -> int:
    """Send each payload as one datagram from `src` to `dst`, inside `ns`; returns how many."""
    with in_netns(ns):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with s:
        s.bind(src)
        n = 0
        for p in payloads:
            s.sendto(p, dst)
            n += 1
    return n


@contextlib.contextmanager
def udp_sink(ns: str, addr: tuple[str, int], *, echo: bool = False) -> Iterator[list[bytes]]:
    """A UDP socket bound to `addr` in `ns` that reads (and, with `echo`, sends back) every datagram,
    so no ICMP port-unreachable joins the traffic; yields the list of datagrams received so far."""
    with in_netns(ns):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    s.bind(addr)
    s.settimeout(0.1)
    got: list[bytes] = []
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            try:
                data, peer = s.recvfrom(65535)
            except TimeoutError:
                continue
            except OSError:
                return
            if echo:
                s.sendto(data, peer)
            got.append(data)  # after the echo: a test waiting for `got` knows the echoes are out

    t = threading.Thread(target=loop, daemon=True)
    t.start()
    try:
        yield got
    finally:
        stop.set()
        t.join(timeout=5)
        s.close()


def tcp_transfer(ns_client: str, ns_server: str, server: tuple[str, int], data: bytes) -> bytes:
    """Send `data` over one TCP connection from `ns_client` to a server in `ns_server` that echoes a
    short digest line back; returns what the server received (to check it against `data`)."""
    with in_netns(ns_server):
        ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind(server)
    ls.listen(1)
    ls.settimeout(10)
    received = bytearray()

    def serve() -> None:
        try:
            conn, _ = ls.accept()
        except OSError:
            return
        with conn:
            conn.settimeout(10)
            while chunk := conn.recv(1 << 16):
                received.extend(chunk)
            conn.sendall(b"got %d\n" % len(received))

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        with in_netns(ns_client):
            c = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        with c:
            c.settimeout(10)
            c.connect(server)
            c.sendall(data)
            c.shutdown(socket.SHUT_WR)
            while c.recv(4096):
                pass
        t.join(timeout=10)
    finally:
        ls.close()
    return bytes(received)


def wait_until(cond: Callable[[], bool], timeout: float = 10, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


# --- reading frames (Ethernet + IPv4, as these tests send them) ---


def ipv4(frame: bytes) -> tuple[int, str, str, int, int]:
    """(protocol, src, dst, sport, dport) of an Ethernet/IPv4 frame; ports 0 unless TCP/UDP, and all
    zero/empty when the frame is not IPv4."""
    if len(frame) < 34 or frame[12:14] != b"\x08\x00":
        return 0, "", "", 0, 0
    ihl = (frame[14] & 15) * 4
    proto = frame[23]
    src, dst = socket.inet_ntoa(frame[26:30]), socket.inet_ntoa(frame[30:34])
    l4 = 14 + ihl
    if proto not in (6, 17) or len(frame) < l4 + 4:
        return proto, src, dst, 0, 0
    sport, dport = int.from_bytes(frame[l4 : l4 + 2], "big"), int.from_bytes(frame[l4 + 2 : l4 + 4], "big")
    return proto, src, dst, sport, dport


def udp_payload(frame: bytes) -> bytes:
    ihl = (frame[14] & 15) * 4
    return frame[14 + ihl + 8 :]


def tcp_segment(frame: bytes) -> tuple[int, bytes]:
    """(sequence number, payload) of an Ethernet/IPv4/TCP frame."""
    ihl = (frame[14] & 15) * 4
    l4 = 14 + ihl
    total = int.from_bytes(frame[16:18], "big")
    doff = (frame[l4 + 12] >> 4) * 4
    return int.from_bytes(frame[l4 + 4 : l4 + 8], "big"), frame[l4 + doff : 14 + total]


def flow_key(frame: bytes) -> tuple[int, tuple[str, int], tuple[str, int]] | None:
    """The direction-free 5-tuple of a TCP/UDP frame."""
    proto, src, dst, sport, dport = ipv4(frame)
    if proto not in (6, 17):
        return None
    one, two = sorted([(src, sport), (dst, dport)])
    return proto, one, two


@dataclass
class Node:
    """Pods `a` and `b` (namespaces) plugged into a `node` namespace through veths `if_a`/`if_b` (the
    node's ends), like a CNI does it: either on one bridge (one subnet) or routed (two subnets)."""

    tag: str
    node: str
    a: str
    b: str
    if_a: str
    if_b: str
    ip_a: str
    ip_b: str


@contextlib.contextmanager
def pod_node(*, routed: bool = False) -> Iterator[Node]:
    """Two pod namespaces on a node namespace: bridged (one /24, frames cross the bridge unchanged) or
    routed (each pod its own /24, the node forwards: TTL, MACs and checksums change on the way)."""
    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)
    tag = new_tag()
    third = int(tag[:2], 16)
    n = Node(tag, f"psk{tag}n", f"psk{tag}a", f"psk{tag}b", f"psk{tag}na", f"psk{tag}nb", "", "")
    with netns(n.node), netns(n.a), netns(n.b):
        for ns in (n.node, n.a, n.b):
            no_ipv6_chatter(ns)
        veth(n.node, n.if_a, n.a, "eth0")
        veth(n.node, n.if_b, n.b, "eth0")
        if routed:
            n.ip_a, n.ip_b = f"198.19.{third}.2", f"198.20.{third}.2"
            address(n.node, n.if_a, f"198.19.{third}.1/24")
            address(n.node, n.if_b, f"198.20.{third}.1/24")
            address(n.a, "eth0", f"{n.ip_a}/24")
            address(n.b, "eth0", f"{n.ip_b}/24")
            sh("ip", "-n", n.a, "route", "add", "default", "via", f"198.19.{third}.1")
            sh("ip", "-n", n.b, "route", "add", "default", "via", f"198.20.{third}.1")
            sh("ip", "netns", "exec", n.node, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1")
        else:
            n.ip_a, n.ip_b = f"198.19.{third}.2", f"198.19.{third}.3"
            sh("ip", "-n", n.node, "link", "add", "br0", "type", "bridge")
            sh("ip", "-n", n.node, "link", "set", "br0", "up")
            for ifname in (n.if_a, n.if_b):
                sh("ip", "-n", n.node, "link", "set", ifname, "master", "br0")
            address(n.a, "eth0", f"{n.ip_a}/24")
            address(n.b, "eth0", f"{n.ip_b}/24")
        yield n
