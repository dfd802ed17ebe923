"""capture.afpacket against the kernel and tcpdump: real namespaces, real veths, real traffic.

Ground truth comes from construction (the datagrams and bytes the test sends) and from tcpdump
(libpcap's own TPACKET_V3 capture of the same interface at the same time), never from our output.
"""

from __future__ import annotations

import collections
import fcntl
import http.server
import itertools
import os
import shutil
import socket
import struct
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from capture import capture_filter
from capture.afpacket import (
    LINKTYPE_ETHERNET,
    LINKTYPE_RAW,
    CaptureError,
    Frame,
    Ring,
    open_fanout,
    wait,
)
from capture.capture_filter import CaptureFilterError, compile_filter
from tests.capture import netlab as nl

pytestmark = [pytest.mark.root, pytest.mark.xdist_group("capture-afpacket")]

REPO = Path(__file__).resolve().parents[2]
TUNSETIFF, TUNSETLINK, IFF_TUN, IFF_NO_PI, ARPHRD_IPGRE = 0x400454CA, 0x400454CD, 0x0001, 0x1000, 778
TS_TOLERANCE_NS = 5_000_000  # both read the same skb timestamp; TX copies may differ by microseconds


def _same_frames(ours: list[Frame], theirs: list[Frame]) -> None:
    """The same frames: same bytes, same wire length, timestamps within tolerance.

    Compared as multisets: two packets handled at the same moment on two CPUs (one arriving, one
    leaving) can reach two packet sockets in either order, so only the order within one direction of
    one flow is fixed (checked where it matters, on the payloads).
    """
    assert len(ours) == len(theirs), (len(ours), len(theirs))
    a_sorted = sorted(ours, key=lambda f: (f[2], f[0]))
    b_sorted = sorted(theirs, key=lambda f: (f[2], f[0]))
    for a, b in zip(a_sorted, b_sorted):
        assert a[2] == b[2], "a frame differs from tcpdump's"
        assert a[3] == b[3], f"orig_len {a[3]} != tcpdump's {b[3]}"
        assert abs(a[0] - b[0]) <= TS_TOLERANCE_NS, f"timestamps {a[0]} / {b[0]}"


def _covered(segments: list[tuple[int, bytes]]) -> bytes:
    """The byte stream the TCP segments (seq, payload) of one direction carry, from the lowest seq.

    Sequence numbers wrap at 2**32 (the random initial one can sit just below it), so "lowest" is
    measured as a signed distance from the first data segment, not by comparing raw numbers."""
    with_data = [(seq, data) for seq, data in segments if data]
    if not with_data:
        return b""
    first = with_data[0][0]

    def offset(seq: int) -> int:  # signed distance from `first`, modulo 2**32
        return (seq - first + (1 << 31)) % (1 << 32) - (1 << 31)

    base = min(offset(seq) for seq, _ in with_data)
    buf = bytearray()
    for off, data in sorted((offset(seq) - base, data) for seq, data in with_data):
        if off <= len(buf):
            buf[off : off + len(data)] = data
    return bytes(buf)


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = f"path={self.path}\n".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


def test_covered_follows_sequence_numbers_across_the_wrap() -> None:
    data = bytes(range(256)) * 40
    start = (1 << 32) - 1000  # the stream crosses 2**32 after 1,000 bytes
    segments = [((start + off) % (1 << 32), data[off : off + 700]) for off in range(0, len(data), 700)]
    shuffled = segments[3:] + segments[:3]  # capture order need not be sequence order
    assert _covered(shuffled) == data
    assert _covered([(start, b""), *segments]) == data  # a bare ACK carries nothing


def test_frames_equal_tcpdump_udp_tcp_http_and_gso(tmp_path: Path) -> None:
    """UDP datagrams, a 3 MB TCP transfer and curl against http.server, captured on a veth by a Ring and
    by tcpdump at once: the same frames byte for byte, and GSO frames (> 1514 bytes) whole."""
    n_udp = 300
    data = os.urandom(3_000_000)
    with nl.pair() as p:
        with nl.in_netns(p.b):
            ring = Ring(p.if_b, bpf=compile_filter("udp or tcp"))
            httpd = http.server.ThreadingHTTPServer((p.ip_b, 8080), _Handler)
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        try:
            with (
                ring,
                nl.tcpdump(p.b, p.if_b, tmp_path / "b.pcap", "udp or tcp") as td,
                nl.udp_sink(p.b, (p.ip_b, 5000)) as got,
            ):
                payloads = [b"datagram %05d " % i + b"." * (i % 700) for i in range(n_udp)]
                nl.udp_send(p.a, (p.ip_a, 6000), (p.ip_b, 5000), payloads)
                assert nl.tcp_transfer(p.a, p.b, (p.ip_b, 7000), data) == data
                curl = nl.sh("ip", "netns", "exec", p.a, "curl", "-s", f"http://{p.ip_b}:8080/item/42")
                assert curl.stdout == "path=/item/42\n"
                nl.wait_until(lambda: len(got) == n_udp, what="the sink to receive every datagram")
                frames = nl.drain([ring])[0]
            assert td.dropped == 0
        finally:
            httpd.shutdown()
            httpd.server_close()
    _same_frames(frames, td.frames)
    assert {f[1] for f in frames} == {LINKTYPE_ETHERNET}
    udp = [nl.udp_payload(f[2]) for f in frames if nl.ipv4(f[2])[0] == 17]
    assert udp == payloads  # every datagram once, in order
    to_7000 = [nl.tcp_segment(f[2]) for f in frames if nl.ipv4(f[2])[4] == 7000]
    assert _covered(to_7000) == data  # the whole transfer, from the segments as captured
    big = [f for f in frames if len(f[2]) > 1514]
    assert big, "no GSO frame on the veth: the TCP transfer should produce some"
    for _ts, _lt, frame, orig_len in big:
        ip_total = int.from_bytes(frame[16:18], "big")
        assert len(frame) == orig_len == 14 + ip_total  # whole, as the IP header says
    assert any(b"path=/item/42" in f[2] for f in frames)


def test_bpf_filter_keeps_what_tcpdump_keeps_and_can_be_changed(tmp_path: Path) -> None:
    n = 120
    expr = "udp port 5001"
    with nl.pair() as p:
        with nl.in_netns(p.b):
            ring = Ring(p.if_b, bpf=lambda lt: compile_filter(expr, lt))  # a program per link type
            everything = Ring(p.if_b)
        with ring, everything:
            with (
                nl.tcpdump(p.b, p.if_b, tmp_path / "f.pcap", expr) as td,
                nl.udp_sink(p.b, (p.ip_b, 5001)),
                nl.udp_sink(p.b, (p.ip_b, 5002)),
            ):
                for port in (5001, 5002):
                    nl.udp_send(p.a, (p.ip_a, 6001), (p.ip_b, port), [b"%d-%d" % (port, i) for i in range(n)])
                frames, all_frames = nl.drain([ring, everything])
            _same_frames(frames, td.frames)
            assert len(frames) == n
            assert {nl.ipv4(f[2])[4] for f in frames} == {5001}
            assert len(all_frames) >= 2 * n  # the unfiltered ring saw both ports

            ring.attach_filter(compile_filter("udp port 5002"))
            with nl.udp_sink(p.b, (p.ip_b, 5001)), nl.udp_sink(p.b, (p.ip_b, 5002)):
                for port in (5001, 5002):
                    nl.udp_send(p.a, (p.ip_a, 6002), (p.ip_b, port), [b"x%d" % i for i in range(n)])
                after = nl.drain([ring])[0]
            assert len(after) == n
            assert {nl.ipv4(f[2])[4] for f in after} == {5002}


def test_snaplen_cut_frames_keep_their_wire_length() -> None:
    """A filter returning a snap length (tcpdump -s) cuts frames; orig_len still says how long they were."""
    with nl.pair() as p:
        with nl.in_netns(p.b):
            ring = Ring(p.if_b, bpf=compile_filter("udp port 5003", snaplen=100))
        with ring, nl.udp_sink(p.b, (p.ip_b, 5003)):
            sizes = [10, 86, 500, 1400]
            nl.udp_send(p.a, (p.ip_a, 6003), (p.ip_b, 5003), [b"z" * s for s in sizes])
            frames = nl.drain([ring])[0]
    assert [f[3] for f in frames] == [14 + 20 + 8 + s for s in sizes]
    assert [len(f[2]) for f in frames] == [min(100, 14 + 20 + 8 + s) for s in sizes]


def test_loopback_sees_each_packet_once(tmp_path: Path) -> None:
    """On lo every packet passes the tap twice (leaving and arriving); a Ring yields it once, like tcpdump."""
    n = 200
    reason = nl.unavailable_reason()
    if reason:
        pytest.skip(reason)
    ns = f"psk{nl.new_tag()}l"
    with nl.netns(ns):
        expr = "udp port 5004"
        with nl.in_netns(ns):
            once = Ring("lo", bpf=compile_filter(expr))
            twice = Ring("lo", bpf=compile_filter(expr), skip_outgoing=False)
        with (
            once,
            twice,
            nl.tcpdump(ns, "lo", tmp_path / "lo.pcap", expr) as td,
            nl.udp_sink(ns, ("127.0.0.1", 5004)),
        ):
            nl.udp_send(ns, ("127.0.0.1", 6004), ("127.0.0.1", 5004), [b"lo %d" % i for i in range(n)])
            nl.wait_until(once.ready, what="a retired block")
            first = list(itertools.islice(once.packets(), 5))  # a reader that stops early loses nothing
            frames, doubled = nl.drain([once, twice])
            frames = first + frames
    assert len(frames) == n  # what was sent
    assert [nl.udp_payload(f[2]) for f in frames] == [b"lo %d" % i for i in range(n)]
    _same_frames(frames, td.frames)
    assert len(doubled) == 2 * n  # the trap is real: without skipping, each packet twice


def test_vlan_tag_stripped_by_the_kernel_is_put_back(tmp_path: Path) -> None:
    """The receive path takes an 802.1Q/802.1ad tag out of the frame into packet metadata before the
    taps see it; frames must still carry it: exactly as sent, and as tcpdump shows them."""
    with nl.pair() as p:
        with nl.in_netns(p.a):
            tx = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        with nl.in_netns(p.b):
            # The filter runs on the frame as the kernel holds it: matching the inner EtherType at
            # offset 12 proves the tag was taken out, so the frames below had it put back by the Ring.
            ring = Ring(p.if_b, bpf=compile_filter("ether proto 0x88b5"))
        with ring, tx, nl.tcpdump(p.b, p.if_b, tmp_path / "v.pcap") as td:
            tx.bind((p.if_a, 0))
            src = tx.getsockname()[4]
            sent = []
            for i in range(20):
                tpid = b"\x81\x00" if i % 2 else b"\x88\xa8"
                tci = (i % 8) << 13 | 42 + i
                frame = b"\xff" * 6 + src + tpid + tci.to_bytes(2, "big") + b"\x88\xb5" + b"tagged %02d" % i
                frame += b"\0" * (60 - len(frame))
                tx.send(frame)
                sent.append(frame)
            frames = nl.drain([ring])[0]
    assert [f[2] for f in frames] == sent
    assert [f[3] for f in frames] == [len(f) for f in sent]
    _same_frames(frames, [f for f in td.frames if f[2] in sent])


def test_drops_are_counted_when_the_ring_is_not_read() -> None:
    n = 3000
    with nl.pair() as p:
        with nl.in_netns(p.b):
            ring = Ring(p.if_b, block_size=1 << 17, blocks=2, bpf=compile_filter("udp port 5006"))
        with ring:
            with nl.udp_sink(p.b, (p.ip_b, 5006)) as got:
                nl.udp_send(
                    p.a, (p.ip_a, 6006), (p.ip_b, 5006), [b"%05d" % i + b"-" * 1000 for i in range(n)]
                )
                nl.wait_until(lambda: len(got) == n, what="the sink to receive every datagram")
            stats = ring.stats()
            assert stats.drops > 0
            assert stats.packets + stats.drops == n == stats.received
            frames = nl.drain([ring])[0]
            assert len(frames) == stats.packets
            assert ring.stats().packets == stats.packets  # cumulative: the kernel reset its own on read
            # the ring works again once read: nothing more is dropped
            with nl.udp_sink(p.b, (p.ip_b, 5006)):
                nl.udp_send(p.a, (p.ip_a, 6007), (p.ip_b, 5006), [b"again %d" % i for i in range(50)])
                more = nl.drain([ring])[0]
            assert len(more) == 50
            assert ring.stats().drops == stats.drops


def test_fanout_hash_splits_flows_between_rings() -> None:
    """Two rings in one FANOUT_HASH group: disjoint, together everything, each flow (both directions) in
    one ring only. A third ring outside the group is the reference."""
    flows, per_flow = 24, 10
    group = int(nl.new_tag(), 16) & 0xFFFF
    with nl.pair() as p:
        with nl.in_netns(p.b):
            members = open_fanout(p.if_b, 2, group, bpf=compile_filter("udp port 5007 or tcp port 7007"))
            reference = Ring(p.if_b, bpf=compile_filter("udp port 5007 or tcp port 7007"))
        try:
            with nl.udp_sink(p.b, (p.ip_b, 5007), echo=True) as got:
                for f in range(flows):
                    datagrams = [b"f%d-%d" % (f, i) for i in range(per_flow)]
                    nl.udp_send(p.a, (p.ip_a, 20000 + f), (p.ip_b, 5007), datagrams)
                nl.wait_until(lambda: len(got) == flows * per_flow, what="every datagram echoed")
                data = os.urandom(200_000)
                assert nl.tcp_transfer(p.a, p.b, (p.ip_b, 7007), data) == data
                one, two, ref = nl.drain([*members, reference])
        finally:
            for r in (*members, reference):
                r.close()
    frames = lambda fs: collections.Counter(f[2] for f in fs)  # noqa: E731 (each socket stamps its own time)
    assert frames(one) + frames(two) == frames(ref)
    assert not frames(one) & frames(two)
    assert len([f for f in ref if nl.ipv4(f[2])[0] == 17]) == 2 * flows * per_flow
    flows_one = {nl.flow_key(f[2]) for f in one}
    flows_two = {nl.flow_key(f[2]) for f in two}
    assert flows_one and flows_two, "24 flows all hashed to one member: the group did not split"
    assert not flows_one & flows_two  # a flow, both directions, in one member only


def test_fanout_sends_a_flow_to_the_same_member_on_every_interface() -> None:
    """Pods on a bridge, both node-side veths fanned out to 2 members joined in the same order: a flow
    lands on member i on both interfaces, so one worker process sees both copies (and dedupes them)."""
    flows = 16
    expr = "udp port 5008"
    with nl.pod_node() as n:
        with nl.in_netns(n.node):
            on_a = open_fanout(n.if_a, 2, 1, bpf=compile_filter(expr))
            on_b = open_fanout(n.if_b, 2, 2, bpf=compile_filter(expr))
        try:
            with nl.udp_sink(n.b, (n.ip_b, 5008), echo=True) as got:
                for f in range(flows):
                    datagrams = [b"q%d-%d" % (f, i) for i in range(4)]
                    nl.udp_send(n.a, (n.ip_a, 21000 + f), (n.ip_b, 5008), datagrams)
                nl.wait_until(lambda: len(got) == 4 * flows, what="every datagram echoed")
                a0, a1, b0, b1 = nl.drain([*on_a, *on_b])
        finally:
            for r in (*on_a, *on_b):
                r.close()
    assert len(a0) + len(a1) == len(b0) + len(b1) == 2 * 4 * flows
    flows_of = lambda fs: {nl.flow_key(f[2]) for f in fs}  # noqa: E731
    assert flows_of(a0) == flows_of(b0) and flows_of(a1) == flows_of(b1)
    assert len(flows_of(a0) | flows_of(a1)) == flows


def test_open_errors_say_what_to_do() -> None:
    with pytest.raises(CaptureError, match="no interface named 'psknosuchif'"):
        Ring("psknosuchif")
    with pytest.raises(CaptureError, match="block size"):
        Ring("lo", block_size=4096)
    with pytest.raises(CaptureError, match="fanout"):
        Ring("lo", fanout=(1, 99))


def test_not_root_is_told_to_get_cap_net_raw() -> None:
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("setpriv (util-linux) is not installed")
    code = "from capture.afpacket import Ring\ntry:\n    Ring('lo')\nexcept Exception as e:\n    print(e)\n"
    res = subprocess.run(
        [
            setpriv,
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
            sys.executable,
            "-c",
            code,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd="/",
        env={"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(REPO), "PYTHONDONTWRITEBYTECODE": "1"},
    )
    assert "capturing needs root or CAP_NET_RAW" in res.stdout, res.stdout + res.stderr


def test_link_types_raw_ip_and_refused() -> None:
    """A tun device (ARPHRD_NONE) gives raw IP frames; a device whose frames we cannot decode is refused."""
    reason = nl.unavailable_reason()
    if reason:
        pytest.skip(reason)
    ns = f"psk{nl.new_tag()}t"
    with nl.netns(ns):
        nl.sh("ip", "-n", ns, "tuntap", "add", "dev", "tun0", "mode", "tun")
        with nl.in_netns(ns), Ring("tun0") as tun:
            assert tun.linktype == LINKTYPE_RAW
        # a tun device can claim any hardware type (TUNSETLINK); ARPHRD_IPGRE frames start with a
        # GRE-specific header podshark does not decode
        with nl.in_netns(ns):
            fd = os.open("/dev/net/tun", os.O_RDWR)
            try:
                fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH14x", b"weird0", IFF_TUN | IFF_NO_PI))
                fcntl.ioctl(fd, TUNSETLINK, ARPHRD_IPGRE)
                with pytest.raises(CaptureError, match="ARPHRD 778, whose frames podshark cannot decode"):
                    Ring("weird0")
            finally:
                os.close(fd)


def test_interface_going_away_ends_the_ring_without_an_exception() -> None:
    with nl.pair() as p:
        with nl.in_netns(p.b):
            ring = Ring(p.if_b)
        with ring:
            nl.sh("ip", "-n", p.b, "link", "set", p.if_b, "down")  # down is not gone
            assert wait([ring], 0.3) == []
            assert ring.error is None and not ring.gone()
            nl.sh("ip", "-n", p.b, "link", "set", p.if_b, "up")
            nl.sh("ip", "-n", p.a, "link", "del", p.if_a)  # deletes both ends of the veth
            assert wait([ring], 2) == [ring]
            assert ring.gone()
            assert ring.error is not None and "went away" in ring.error
            list(ring.packets())  # what was left; no exception
            assert wait([ring], 0.2) == []  # reported once
        assert ring.fileno
        with pytest.raises(CaptureError, match="closed"):
            ring.fileno()


def test_capture_filter_errors_say_what_to_do(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(CaptureFilterError, match="bad capture filter 'udp port nosuchport': unknown port"):
        compile_filter("udp port nosuchport")
    with pytest.raises(CaptureFilterError, match="syntax error"):
        compile_filter("tcp and and")
    with pytest.raises(CaptureFilterError, match="not supported on link type 147"):
        compile_filter("tcp", linktype=147)
    assert compile_filter("tcp", 1) == compile_filter("tcp", 1) != compile_filter("tcp", 101)
    # no tcpdump anywhere: say how to get it (or how to do without)
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.setattr(capture_filter, "TCPDUMP_PATHS", ())
    advice = r"install tcpdump \(apt-get install tcpdump\) or drop --capture-filter"
    with pytest.raises(CaptureFilterError, match=advice):
        compile_filter("udp and port 4242")  # not cached yet
