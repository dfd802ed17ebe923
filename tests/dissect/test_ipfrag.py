"""IP fragment reassembly: against tshark on real and re-fragmented captures, and its hard bounds.

Three layers of evidence. (1) A real HTTP capture whose IPv4 packets we fragment ourselves (in
order, reversed, shuffled with a duplicate) must give the same TCP streams as the original, and
tshark, which reassembles IPv4 fragments by default, must find the same HTTP requests, which
proves the fragments are valid. (2) Real captures with fragmented DNS over IPv4 and IPv6: at every
frame we return exactly the datagram tshark shows there (length and DNS id), and nothing where
tshark still waits for fragments. (3) `Fragments` on its own: overlaps, holes, size, time and count
bounds, and Hypothesis for hostile fragment streams.
"""

from __future__ import annotations

import random
import struct
import subprocess
from pathlib import Path

import dpkt
import pytest
from hypothesis import given
from hypothesis import strategies as st

from dissect.ipfrag import MAX_DATAGRAM, Fragments
from dissect.packet import decode
from dissect.pcapio import CaptureReader
from tests.conftest import FIXTURES
from tests.dissect.test_tcp_follow_tshark import ours as streams

HTTP_V4 = FIXTURES / "http1__zeek_pipelined-requests.pcap"
DNS_FRAG_V4 = FIXTURES / "dns__ndpi_dns_fragmented.pcap"  # IPv4 and IPv6 fragmented DNS answers
DNS_FRAG_V6 = FIXTURES / "dns__zeek_ipv6-fragmented-dns.pcap"  # IPv6, incl. a lone last fragment


def _csum(hdr: bytes) -> int:
    s = sum(struct.unpack(f"!{len(hdr) // 2}H", hdr))
    while s > 0xFFFF:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def fragment_v4(ip: bytes, ident: int) -> list[bytes]:
    """Split an IPv4 datagram into 3+ valid fragments: 8-byte offsets, MF, lengths, checksums."""
    ihl = (ip[0] & 15) * 4
    payload = ip[ihl:]
    size = max(8, (len(payload) // 3) & ~7)
    out = []
    for off in range(0, len(payload), size):
        chunk = payload[off : off + size]
        h = bytearray(ip[:ihl])
        more = off + size < len(payload)
        struct.pack_into(
            "!HHHBBH", h, 2, ihl + len(chunk), ident, (0x2000 if more else 0) | off >> 3, h[8], h[9], 0
        )
        struct.pack_into("!H", h, 10, _csum(bytes(h)))
        out.append(bytes(h) + chunk)
    assert len(out) >= 3
    return out


def _has_tcp_payload(ip: bytes) -> bool:
    ihl = (ip[0] & 15) * 4
    return ip[9] == 6 and len(ip) > ihl + ((ip[ihl + 12] >> 4) * 4)


def refragment(src: Path, dst: Path, order: str) -> int:
    """Write ``src`` with every IPv4 packet carrying TCP payload fragmented; returns how many were."""
    rng = random.Random(7)
    ident = 0x1000
    n = 0
    with src.open("rb") as f, dst.open("wb") as g:
        w = dpkt.pcap.Writer(g, linktype=1)
        for ts, buf in dpkt.pcap.Reader(f):
            eth, ip = buf[:14], buf[14:]
            assert eth[12:14] == b"\x08\x00"
            ip = ip[: struct.unpack_from("!H", ip, 2)[0]]
            if not _has_tcp_payload(ip):
                w.writepkt(buf, ts=ts)
                continue
            n += 1
            ident += 1  # fresh ids: a reused id would be a different test (of id reuse)
            frags = fragment_v4(ip, ident)
            if order == "reversed":
                frags.reverse()
            elif order == "shuffled+duplicate":
                rng.shuffle(frags)
                frags.insert(rng.randrange(len(frags)), frags[rng.randrange(len(frags) - 1)])
            for fr in frags:
                w.writepkt(eth + fr, ts=ts)
    return n


def http_requests(path: Path) -> list[str]:
    res = subprocess.run(
        ["tshark", "-r", str(path), "-Y", "http.request", "-T", "fields", "-e", "http.request.uri"],
        capture_output=True,
        text=True,
        check=True,
    )
    return res.stdout.split()


@pytest.mark.tshark
@pytest.mark.parametrize("order", ["in-order", "reversed", "shuffled+duplicate"])
def test_fragmented_ipv4_http_gives_the_same_streams(order: str, tmp_path: Path) -> None:
    new = tmp_path / f"{order}.pcap"
    assert refragment(HTTP_V4, new, order) >= 10
    ref = streams(HTTP_V4)
    assert ref
    assert streams(new) == ref
    uris = http_requests(HTTP_V4)
    assert len(uris) == 5
    assert http_requests(new) == uris, "tshark does not reassemble our fragments: they are invalid"


# -- real fragmented captures: our datagrams are tshark's ---------------------------------------------

_FIELDS = ("frame.number", "udp.length", "dns.id", "tcp.len", "ip.fragment", "ipv6.fragment")


def tshark_view(path: Path) -> list[dict[str, str]]:
    """Per frame: the fields above (first occurrence; fragment lists as tshark prints them)."""
    cmd = ["tshark", "-r", str(path), "-T", "fields"] + [x for f in _FIELDS for x in ("-e", f)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return [dict(zip(_FIELDS, line.split("\t"))) for line in out.splitlines()]


def check_against_tshark(path: Path) -> int:
    """Decode every frame with one shared `Fragments`; returns how many datagrams were reassembled."""
    ref = tshark_view(path)
    frags = Fragments()
    reassembled = 0
    with CaptureReader(path) as r:
        frames = list(r)
    assert len(frames) == len(ref)
    for (ts, lt, frame, _wire), t in zip(frames, ref):
        n = t["frame.number"]
        got = decode(lt, frame, frags, ts)
        if t["udp.length"]:
            assert got is not None, f"frame {n}: tshark has a UDP datagram, we have none"
            proto, _s, _d, data, off, end, missing = got
            assert proto == 17 and missing == 0, f"frame {n}: protocol {proto}"
            assert end - off == int(t["udp.length"].split(",")[0]), f"frame {n}: length"
            if t["dns.id"]:
                assert data[off + 8 : off + 10] == int(t["dns.id"].split(",")[0], 16).to_bytes(2, "big")
            if t["ip.fragment"] or t["ipv6.fragment"]:
                assert data is not frame, f"frame {n}: tshark reassembled fragments here"
                reassembled += 1
        elif t["tcp.len"]:
            assert got is not None and got[0] == 6, f"frame {n}: TCP"
        else:
            assert got is None, f"frame {n}: tshark is still waiting for fragments, we returned {got}"
    return reassembled


@pytest.mark.tshark
@pytest.mark.parametrize(
    ("path", "expected"),
    [(DNS_FRAG_V4, 7), (DNS_FRAG_V6, 1)],
    ids=lambda p: p.name if isinstance(p, Path) else str(p),
)
def test_real_fragmented_dns_matches_tshark(path: Path, expected: int) -> None:
    """``expected`` is how many reassembled datagrams tshark shows; it guards the oracle itself."""
    assert check_against_tshark(path) == expected


def _v6_udp_datagram() -> tuple[bytes, bytes, float]:
    """(Ethernet+IPv6 header template, the 3238-byte reassembled DNS datagram, ts) of the v6 capture."""
    frags = Fragments()
    with CaptureReader(DNS_FRAG_V6) as r:
        for ts, lt, frame, _ in r:
            got = decode(lt, frame, frags, ts)
            if got is not None and got[3] is not frame:
                return frame[:54], got[3][got[4] : got[5]], ts / 1e9
    raise AssertionError("no reassembled datagram in the fixture")


def _fragment_v6(template: bytes, fragmentable: bytes, first_nh: int, before: bytes = b"") -> list[bytes]:
    """IPv6 fragments; ``before`` is the unfragmentable part (hop-by-hop) ahead of the fragment header."""
    eth, ip6 = template[:14], template[14:54]
    out = []
    size = 1232
    for off in range(0, len(fragmentable), size):
        chunk = fragmentable[off : off + size]
        more = off + size < len(fragmentable)
        fh = bytes([first_nh, 0]) + struct.pack("!HI", off | more, 0xBEEF)
        ext = before + fh
        nh = 0 if before else 44
        hdr = ip6[:4] + struct.pack("!HB", len(ext) + len(chunk), nh) + ip6[7:40]
        out.append(eth + hdr + ext + chunk)
    return out


@pytest.mark.tshark
@pytest.mark.parametrize("shape", ["hop-by-hop-before-fragment", "destination-options-after-fragment"])
def test_ipv6_fragments_with_extension_headers(shape: str, tmp_path: Path) -> None:
    """RFC 8200 order: hop-by-hop is unfragmentable (before the fragment header); destination options
    for the final destination are fragmentable (after it, inside the reassembled payload)."""
    template, udp, ts = _v6_udp_datagram()
    if shape == "hop-by-hop-before-fragment":
        frames = _fragment_v6(template, udp, 17, before=bytes([44, 0, 1, 4, 0, 0, 0, 0]))
    else:
        frames = _fragment_v6(template, bytes([17, 0, 1, 4, 0, 0, 0, 0]) + udp, 60)
    path = tmp_path / f"{shape}.pcap"
    with path.open("wb") as g:
        w = dpkt.pcap.Writer(g, linktype=1)
        for fr in frames:
            w.writepkt(fr, ts=ts)
    assert check_against_tshark(path) == 1


# -- Fragments on its own -------------------------------------------------------------------------------


def test_in_order_fragments_complete() -> None:
    f = Fragments()
    assert f.add("k", 0, True, b"a" * 8, 0) is None
    assert f.add("k", 8, True, b"b" * 8, 0) is None
    assert f.add("k", 16, False, b"c" * 3, 0) == b"a" * 8 + b"b" * 8 + b"ccc"
    assert len(f) == 0


def test_overlap_first_copy_wins_when_it_has_the_lower_offset() -> None:
    f = Fragments()
    f.add("k", 0, True, b"A" * 16, 0)
    f.add("k", 8, True, b"B" * 16, 1)
    assert f.add("k", 24, False, b"C" * 8, 2) == b"A" * 16 + b"B" * 8 + b"C" * 8


def test_overlap_first_copy_wins_when_it_has_the_higher_offset() -> None:
    """Bytes 8..16 arrive first in B; the later A must not replace them (module docstring, line 6)."""
    f = Fragments()
    f.add("k", 8, True, b"B" * 16, 0)
    f.add("k", 0, True, b"A" * 16, 1)
    assert f.add("k", 24, False, b"C" * 8, 2) == b"A" * 8 + b"B" * 16 + b"C" * 8


def test_longer_copy_at_the_same_offset_contributes_its_new_bytes() -> None:
    """First copy wins for bytes 0..8; bytes 8..16 exist only in the second copy and must be used."""
    f = Fragments()
    f.add("k", 0, True, b"A" * 8, 0)
    f.add("k", 0, True, b"B" * 16, 1)
    assert f.add("k", 16, False, b"C" * 8, 2) == b"A" * 8 + b"B" * 8 + b"C" * 8


def test_exact_duplicates_are_harmless() -> None:
    f = Fragments()
    for _ in range(3):
        assert f.add("k", 0, True, b"A" * 8, 0) is None
    assert f.add("k", 8, False, b"B" * 8, 0) == b"A" * 8 + b"B" * 8


def test_a_hole_never_completes_even_when_overlaps_add_up() -> None:
    """40 bytes received for a 40-byte datagram, but 24..32 is missing: sizes lie with overlaps."""
    f = Fragments()
    assert f.add("k", 0, True, b"A" * 16, 0) is None
    assert f.add("k", 8, True, b"B" * 16, 0) is None
    assert f.add("k", 32, False, b"C" * 8, 0) is None
    assert f.add("k", 32, False, b"C" * 8, 0) is None
    assert len(f) == 1
    assert f.add("k", 24, True, b"D" * 8, 0) == b"A" * 16 + b"B" * 8 + b"D" * 8 + b"C" * 8


def test_oversize_datagram_is_dropped() -> None:
    f = Fragments()
    assert f.add("k", 0, True, b"A" * 1480, 0) is None
    assert f.add("k", 65528, False, b"B" * 100, 0) is None  # ends past 65543 bytes
    assert len(f) == 0 and f.dropped == 1
    assert f.add("k", 1480, False, b"C" * 8, 0) is None, "the first part was dropped with the datagram"


def test_stale_datagrams_expire_by_capture_time() -> None:
    f = Fragments(timeout_ns=1000)
    f.add("old", 0, True, b"A" * 8, 0)
    f.add("new", 0, True, b"A" * 8, 900)
    f.expire(1000)
    assert len(f) == 2, "not older than the timeout yet"
    f.expire(1500)
    assert len(f) == 1 and f.dropped == 1
    assert f.add("old", 8, False, b"B" * 8, 1500) is None, "the expired first part is gone"
    assert f.add("new", 8, False, b"B" * 8, 1500) == b"A" * 8 + b"B" * 8


def test_table_full_evicts_the_oldest() -> None:
    f = Fragments(max_in_progress=8)
    for i in range(8):
        f.add(i, 0, True, b"A" * 8, i)
    f.add(8, 0, True, b"A" * 8, 8)
    assert len(f) <= 8 and f.dropped >= 1
    assert f.add(0, 8, False, b"B" * 8, 9) is None, "the oldest datagram was evicted"
    assert f.add(8, 8, False, b"B" * 8, 9) == b"A" * 8 + b"B" * 8, "the newest survives"
    assert f.add(7, 8, False, b"B" * 8, 9) == b"A" * 8 + b"B" * 8


def test_overlap_flood_is_bounded() -> None:
    """Thousands of overlapping 8000-byte fragments of one datagram: the buffer never outgrows one
    datagram, and past MAX_PARTS fragments the datagram is dropped."""
    from dissect.ipfrag import MAX_DATAGRAM, MAX_PARTS

    f = Fragments()
    for i in range(MAX_PARTS + 10):
        assert f.add("k", (i * 8) % 50_000, True, b"x" * 8000, 0) is None
        for d in f._dgrams.values():
            assert len(d.buf) <= MAX_DATAGRAM
        if len(f) == 0:
            break
    assert len(f) == 0 and f.dropped == 1


@given(
    payload=st.binary(min_size=1, max_size=3000),
    size8=st.integers(1, 200),
    seed=st.integers(0, 2**32 - 1),
    dups=st.integers(0, 5),
)
def test_any_order_with_duplicates_reassembles_once(payload: bytes, size8: int, seed: int, dups: int) -> None:
    """Fragments in any order, duplicates arriving before the last new piece: one exact result, at the end."""
    size = size8 * 8
    pieces = [(o, o + size < len(payload), payload[o : o + size]) for o in range(0, len(payload), size)]
    rng = random.Random(seed)
    rng.shuffle(pieces)
    seq = pieces[:-1]
    for _ in range(dups if seq else 0):
        seq.insert(rng.randrange(len(seq) + 1), rng.choice(pieces[:-1]))
    seq.append(pieces[-1])
    f = Fragments()
    results = [f.add("k", o, more, data, 0) for o, more, data in seq]
    assert results[:-1] == [None] * (len(seq) - 1)
    assert results[-1] == payload
    assert len(f) == 0


_fragment = st.tuples(
    st.integers(0, 5),  # datagram key: few keys, so fragments collide and overlap
    st.integers(0, 8300).map(lambda x: x * 8),  # offsets up to and past the maximum datagram
    st.booleans(),
    st.integers(0, 3000),
    st.integers(0, 50),  # time step
)


@given(st.lists(_fragment, max_size=300), st.integers(1, 4))
def test_random_fragments_never_raise_and_stay_bounded(
    frags: list[tuple[int, int, bool, int, int]], cap: int
) -> None:
    f = Fragments(max_in_progress=cap, timeout_ns=100)
    ts = 0
    for key, off, more, n, step in frags:
        ts += step
        out = f.add(key, off, more, b"\xab" * n, ts)
        assert out is None or len(out) <= MAX_DATAGRAM
        assert len(f) <= cap
        if step > 45:
            f.expire(ts)
