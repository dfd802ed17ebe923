"""capture.dedupe: the same packet on two interfaces is seen once; distinct packets never merge.

Frames are built here field by field (so the test says exactly which field differs), then the real
thing: pods on a bridge and pods on a routed node, both node-side veths captured with `Ring`.
"""

from __future__ import annotations

import collections
import os
import struct
from typing import Any

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from capture.afpacket import Frame, Ring
from capture.capture_filter import compile_filter
from capture.dedupe import PAYLOAD_BYTES, Deduper, packet_key
from tests.capture import netlab as nl

ETH = 1
MS = 1_000_000


def build(
    *,
    v6: bool = False,
    proto: int = 6,
    src: bytes = b"\x0a\x00\x00\x01",
    dst: bytes = b"\x0a\x00\x00\x02",
    ttl: int = 64,
    tos: int = 0,
    ip_id: int = 0x1234,
    flow: int = 0xABCDE,
    sport: int = 40000,
    dport: int = 80,
    seq: int = 1000,
    ack: int = 2000,
    flags: int = 0x18,
    window: int = 502,
    options: bytes = b"",
    payload: bytes = b"GET / HTTP/1.1\r\n\r\n",
    csum: int = 0,
    macs: bytes = b"\x02" * 6 + b"\x04" * 6,
) -> bytes:
    """An Ethernet frame carrying IPv4/IPv6 and TCP/UDP with every field as given."""
    if proto == 6:
        options += b"\x01" * (-len(options) % 4)
        l4 = struct.pack(
            ">HHIIBBHHH", sport, dport, seq, ack, (5 + len(options) // 4) << 4, flags, window, csum, 0
        )
        l4 += options + payload
    else:
        l4 = struct.pack(">HHHH", sport, dport, 8 + len(payload), csum) + payload
    if v6:
        src6, dst6 = src.rjust(16, b"\xfd"), dst.rjust(16, b"\xfd")
        word = 6 << 28 | tos << 20 | flow
        ip = struct.pack(">IHBB", word, len(l4), proto, ttl) + src6 + dst6
        return macs + b"\x86\xdd" + ip + l4
    ip = struct.pack(">BBHHHBBH", 0x45, tos, 20 + len(l4), ip_id, 0x4000, ttl, proto, csum) + src + dst
    return macs + b"\x08\x00" + ip + l4


def timestamps(tsval: int, tsecr: int = 7) -> bytes:
    return b"\x01\x01\x08\x0a" + struct.pack(">II", tsval, tsecr)


packets = st.fixed_dictionaries(
    {
        "v6": st.booleans(),
        "proto": st.sampled_from([6, 17]),
        "src": st.binary(min_size=4, max_size=4),
        "dst": st.binary(min_size=4, max_size=4),
        "ip_id": st.integers(0, 0xFFFF),
        "flow": st.integers(0, 0xFFFFF),
        "sport": st.integers(1, 0xFFFF),
        "dport": st.integers(1, 0xFFFF),
        "seq": st.integers(0, 2**32 - 1),
        "ack": st.integers(0, 2**32 - 1),
        "window": st.integers(0, 0xFFFF),
        "options": st.sampled_from([b"", timestamps(5000), b"\x02\x04\x05\xb4" + timestamps(1)]),
        "payload": st.binary(max_size=120),
    }
)


@given(
    packets,
    st.integers(1, 255),
    st.integers(0, 255),
    st.integers(0, 0xFFFF),
    st.binary(min_size=12, max_size=12),
)
def test_what_forwarding_changes_does_not_matter(
    fields: dict[str, Any], ttl: int, tos: int, csum: int, macs: bytes
) -> None:
    """The copy on the second interface differs in TTL, TOS/traffic class, checksums and MACs: a duplicate."""
    d = Deduper()
    assert not d.duplicate(ETH, build(**fields), 10 * MS)
    assert d.duplicate(ETH, build(**fields, ttl=ttl, tos=tos, csum=csum, macs=macs), 10 * MS + 50_000)
    assert (d.seen, d.duplicates) == (2, 1)


CHANGES = {
    "src": lambda f: {"src": bytes([f["src"][0] ^ 1]) + f["src"][1:]},
    "dst": lambda f: {"dst": f["dst"][:3] + bytes([f["dst"][3] ^ 0x80])},
    "sport": lambda f: {"sport": f["sport"] % 0xFFFF + 1},
    "dport": lambda f: {"dport": f["dport"] % 0xFFFF + 1},
    "seq": lambda f: {"seq": (f["seq"] + 1) % 2**32},
    "ack": lambda f: {"ack": (f["ack"] + 1) % 2**32},
    "window": lambda f: {"window": f["window"] ^ 1},
    "tsval": lambda f: {"options": timestamps(4999)},
    "payload": lambda f: {
        "payload": bytes([f["payload"][0] ^ 1]) + f["payload"][1:] if f["payload"] else b"?"
    },
    "length": lambda f: {"payload": f["payload"] + b"!"},
    "ip_id": lambda f: {"ip_id": f["ip_id"] ^ 1},
    "flow": lambda f: {"flow": f["flow"] ^ 1},
}


@given(packets, st.sampled_from(sorted(CHANGES)))
def test_a_packet_differing_in_identity_is_not_a_duplicate(fields: dict[str, Any], change: str) -> None:
    base = build(**fields)
    other = build(**{**fields, **CHANGES[change](fields)})
    assume(other != base)  # TCP options of a UDP packet, the IPv4 id of an IPv6 one: not in the frame
    d = Deduper()
    assert not d.duplicate(ETH, base, 0)
    assert not d.duplicate(ETH, other, 1000)
    assert d.duplicate(ETH, other, 2000)  # but itself again is


def test_tcp_retransmission_with_a_new_tsval_is_not_a_duplicate() -> None:
    """IPv6 (no identification), same seq/ack/window/payload: only the timestamp option tells a real
    retransmission from the copy on the other interface — and it does."""
    d = Deduper()
    original = build(v6=True, options=timestamps(777000))
    assert not d.duplicate(ETH, original, 0)
    assert d.duplicate(ETH, build(v6=True, options=timestamps(777000), ttl=63), 30_000)  # the other veth
    assert not d.duplicate(
        ETH, build(v6=True, options=timestamps(777003)), 3 * MS
    )  # retransmitted 3 ms later
    # IPv4: the identification differs even within the same millisecond
    assert not d.duplicate(ETH, build(ip_id=1), 0)
    assert not d.duplicate(ETH, build(ip_id=2), 100_000)


def test_window_and_order() -> None:
    d = Deduper(window_ns=100 * MS)
    f = build()
    assert not d.duplicate(ETH, f, 1000 * MS)
    assert d.duplicate(ETH, f, 1000 * MS - 40 * MS)  # read from a ring that lags: earlier timestamp
    assert d.duplicate(ETH, f, 1099 * MS)
    assert not d.duplicate(ETH, f, 1101 * MS)  # too far apart: a new packet
    assert d.duplicate(ETH, f, 1150 * MS)  # ... which the next copy duplicates


def test_non_ip_and_truncated_frames() -> None:
    d = Deduper()
    arp = b"\xff" * 6 + b"\x02" * 6 + b"\x08\x06" + bytes(28)
    assert not d.duplicate(ETH, arp, 0) and not d.duplicate(ETH, arp, 1)
    assert packet_key(ETH, arp) is None
    for cut in range(0, 80):
        packet_key(ETH, build()[:cut])  # never raises on a runt
    head = build(payload=b"A" * 200)[: 14 + 20 + 20 + 10]  # a snap length cut the payload
    assert not d.duplicate(ETH, head, 0) and d.duplicate(ETH, head, 10)
    assert packet_key(101, build()[14:]) == packet_key(ETH, build())  # raw IP link type: same identity


def test_only_the_first_payload_bytes_count() -> None:
    a = build(payload=b"x" * PAYLOAD_BYTES + b"tail one")
    b = build(payload=b"x" * PAYLOAD_BYTES + b"tail two")
    assert packet_key(ETH, a) == packet_key(ETH, b)  # same length, same head: one packet as far as we know


@given(st.binary(max_size=200), st.sampled_from([1, 101, 113, 276, 0]))
def test_hostile_frames_never_raise(frame: bytes, linktype: int) -> None:
    d = Deduper(max_entries=64)
    assert d.duplicate(linktype, frame, 0) in (False, True)
    assert d.duplicate(linktype, frame, 1) is (packet_key(linktype, frame) is not None)


@pytest.mark.slow
def test_memory_is_bounded_over_a_million_distinct_packets() -> None:
    """1M distinct packets: within one window (a burst) the cap holds; over time the window does."""
    cap = 1 << 16
    burst = Deduper(window_ns=250 * MS, max_entries=cap)
    steady = Deduper(window_ns=10 * MS)
    frame = bytearray(build())
    seq_at = 14 + 20 + 4
    peak_burst = peak_steady = 0
    for i in range(1_000_000):
        struct.pack_into(">I", frame, seq_at, i)
        f = bytes(frame)
        assert not burst.duplicate(ETH, f, 5 * MS)  # all at one instant
        assert not steady.duplicate(ETH, f, i * 1000)  # 1M packets/s
        if i % 4096 == 0:
            peak_burst = max(peak_burst, burst.held)
            peak_steady = max(peak_steady, steady.held)
    assert max(peak_burst, burst.held) <= cap
    assert burst.early_rotations >= 1_000_000 // cap
    assert max(peak_steady, steady.held) <= 2 * 10 * MS // 1000 + 1  # two windows of packets at most
    assert steady.early_rotations == 0


# --- real captures ----------------------------------------------------------------------------------


def _capture_both(n: nl.Node, udp: int, tcp_bytes: int) -> tuple[list[Frame], list[Frame]]:
    """Traffic between the pods, captured on both node-side veths; (frames of a's veth, of b's)."""
    expr = "ip and (udp port 5010 or tcp port 7010)"
    with nl.in_netns(n.node):
        ring_a = Ring(n.if_a, bpf=compile_filter(expr))
        ring_b = Ring(n.if_b, bpf=compile_filter(expr))
    with ring_a, ring_b:
        with nl.udp_sink(n.b, (n.ip_b, 5010), echo=True) as got:
            nl.udp_send(n.a, (n.ip_a, 6010), (n.ip_b, 5010), [b"ping %04d" % i for i in range(udp)])
            nl.wait_until(lambda: len(got) == udp, what="every datagram echoed")
        data = os.urandom(tcp_bytes)
        assert nl.tcp_transfer(n.a, n.b, (n.ip_b, 7010), data) == data
        got_a, got_b = nl.drain([ring_a, ring_b])
        assert ring_a.stats().drops == ring_b.stats().drops == 0
    return got_a, got_b


def _dedupe(*captures: list[Frame]) -> tuple[list[Frame], Deduper]:
    d = Deduper()
    merged = sorted((f for c in captures for f in c), key=lambda f: f[0])
    return [f for f in merged if not d.duplicate(f[1], f[2], f[0])], d


@pytest.mark.root
@pytest.mark.xdist_group("capture-dedupe")
def test_bridged_pods_each_packet_once() -> None:
    """pod a -> bridge -> pod b, both veths captured: after dedupe, exactly one veth's frames."""
    with nl.pod_node() as n:
        got_a, got_b = _capture_both(n, udp=100, tcp_bytes=1_000_000)
    assert len(got_a) == len(got_b) >= 200
    kept, d = _dedupe(got_a, got_b)
    assert collections.Counter(f[2] for f in kept) == collections.Counter(f[2] for f in got_a)
    assert d.duplicates == len(got_b)


@pytest.mark.root
@pytest.mark.xdist_group("capture-dedupe")
def test_routed_pods_each_packet_once_despite_ttl_mac_and_checksum() -> None:
    """pod a -> node routes -> pod b: the copies differ (TTL, MACs, IP checksum) yet are one packet."""
    with nl.pod_node(routed=True) as n:
        got_a, got_b = _capture_both(n, udp=100, tcp_bytes=1_000_000)
    assert len(got_a) == len(got_b) >= 200
    assert not set(f[2] for f in got_a) & set(f[2] for f in got_b)  # no copy is byte-identical
    kept, d = _dedupe(got_a, got_b)
    assert len(kept) == len(got_a) and d.duplicates == len(got_b)
    # each packet kept from the interface it crossed first: a's requests, b's answers
    from_a = [f for f in kept if nl.ipv4(f[2])[1] == n.ip_a]
    assert collections.Counter(f[2] for f in from_a) == collections.Counter(
        f[2] for f in got_a if nl.ipv4(f[2])[1] == n.ip_a
    )
