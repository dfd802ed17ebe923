"""TCP reassembly: what the dissector receives for hand-built and randomised segment sequences.

The sink here is a recorder, not a mock of anything real: `TCPConn` is sans-IO and its output is
exactly the sequence of feed/gap/note/close calls, which is what these tests check.
"""

from __future__ import annotations

import random

from hypothesis import given
from hypothesis import strategies as st

from dissect.base import Budget, Limits
from dissect.model import Flag
from dissect.tcp import ACK, FIN, RST, SYN, TCPConn


class Recorder:
    """Rebuilds each direction's stream, with lost bytes shown as '?' so offsets stay comparable."""

    def __init__(self) -> None:
        self.streams = [bytearray(), bytearray()]
        self.gaps: list[tuple[int, int, bool]] = []
        self.notes: list[tuple[int, str]] = []
        self.closed = False

    def feed(self, direction: int, data: bytes, ts: int) -> None:
        assert not self.closed
        self.streams[direction] += data

    def gap(self, direction: int, n: int, ts: int, snaplen: bool = False) -> None:
        assert n > 0
        self.gaps.append((direction, n, snaplen))
        self.streams[direction] += b"?" * n

    def note(self, direction: int, flag: str) -> None:
        self.notes.append((direction, flag))

    def close(self, ts: int) -> None:
        self.closed = True


def conn(limits: Limits | None = None) -> tuple[TCPConn, Recorder]:
    rec = Recorder()
    lim = limits or Limits()
    return TCPConn(rec, lim, Budget(lim.max_ooo_total)), rec


def handshake(c: TCPConn, isn_a: int, isn_b: int) -> None:
    c.segment(0, isn_a, 0, SYN, b"", 0, 1)
    c.segment(1, isn_b, (isn_a + 1) & 0xFFFFFFFF, SYN | ACK, b"", 0, 2)
    c.segment(0, (isn_a + 1) & 0xFFFFFFFF, (isn_b + 1) & 0xFFFFFFFF, ACK, b"", 0, 3)


def test_in_order_both_directions_and_fin_close() -> None:
    c, r = conn()
    handshake(c, 1000, 5000)
    c.segment(0, 1001, 5001, ACK, b"hello ", 0, 4)
    c.segment(0, 1007, 5001, ACK, b"world", 0, 5)
    c.segment(1, 5001, 1012, ACK, b"reply", 0, 6)
    c.segment(0, 1012, 5006, ACK | FIN, b"", 0, 7)
    assert not r.closed
    c.segment(1, 5006, 1013, ACK | FIN, b"", 0, 8)
    assert r.closed and c.closed
    assert bytes(r.streams[0]) == b"hello world"
    assert bytes(r.streams[1]) == b"reply"
    assert r.gaps == [] and r.notes == []


def test_out_of_order_is_reordered_and_noted() -> None:
    c, r = conn()
    handshake(c, 0, 0)
    c.segment(0, 1 + 5, 1, ACK, b"56789", 0, 4)
    c.segment(0, 1 + 10, 1, ACK, b"ABC", 0, 5)
    assert bytes(r.streams[0]) == b""
    c.segment(0, 1, 1, ACK, b"01234", 0, 6)
    assert bytes(r.streams[0]) == b"0123456789ABC"
    assert (0, Flag.OUT_OF_ORDER) in r.notes


def test_retransmission_dropped_and_partial_overlap_trimmed() -> None:
    c, r = conn()
    handshake(c, 10, 20)
    c.segment(0, 11, 21, ACK, b"abcdef", 0, 4)
    c.segment(0, 11, 21, ACK, b"abcdef", 0, 5)  # full retransmission
    c.segment(0, 14, 21, ACK, b"defGHI", 0, 6)  # overlaps the tail, adds new bytes
    assert bytes(r.streams[0]) == b"abcdefGHI"
    assert (0, Flag.RETRANSMISSION) in r.notes


def test_sequence_wraparound() -> None:
    c, r = conn()
    isn = 0xFFFFFFFF - 3
    handshake(c, isn, 7)
    c.segment(0, (isn + 1) & 0xFFFFFFFF, 8, ACK, b"before", 0, 4)  # crosses 2**32
    c.segment(0, (isn + 7) & 0xFFFFFFFF, 8, ACK, b"-after", 0, 5)
    assert bytes(r.streams[0]) == b"before-after"
    assert r.gaps == []


def test_ack_above_hole_declares_gap_before_the_peers_data() -> None:
    c, r = conn()
    handshake(c, 100, 200)
    c.segment(0, 101, 201, ACK, b"GET /a", 0, 4)
    c.segment(1, 201, 107, ACK, b"resp-a", 0, 5)
    # server segment [207, 217) is lost; the client acknowledges it while sending its next request
    c.segment(0, 107, 217, ACK, b"GET /b", 0, 6)
    assert r.gaps == [(1, 10, False)]
    c.segment(1, 217, 113, ACK, b"resp-b", 0, 7)
    assert bytes(r.streams[1]) == b"resp-a" + b"?" * 10 + b"resp-b"


def test_buffer_limit_forces_gap() -> None:
    c, r = conn(Limits(max_ooo_bytes=100))
    handshake(c, 0, 0)
    c.segment(0, 1 + 50, 1, ACK, b"x" * 60, 0, 4)
    assert r.gaps == []
    c.segment(0, 1 + 110, 1, ACK, b"y" * 60, 0, 5)  # 120 bytes held > 100: the hole is given up
    assert r.gaps == [(0, 50, False)]
    assert bytes(r.streams[0]).startswith(b"?" * 50 + b"x" * 60)


def test_global_budget_bounds_all_connections() -> None:
    budget = Budget(1000)
    lim = Limits()
    recs = [Recorder() for _ in range(5)]
    conns = [TCPConn(rec, lim, budget) for rec in recs]
    for c in conns:
        handshake(c, 0, 0)
        c.segment(0, 500, 1, ACK, b"z" * 400, 0, 4)
    assert budget.available >= 0
    assert sum(c.buffered_bytes() for c in conns) <= 1000
    assert any(rec.gaps for rec in recs)


def test_snaplen_cut_segment_gives_known_gap() -> None:
    c, r = conn()
    handshake(c, 0, 0)
    c.segment(0, 1, 1, ACK, b"abc", 7, 4)  # 10-byte segment, 7 bytes cut by the snap length
    c.segment(0, 11, 1, ACK, b"next", 0, 5)
    assert r.gaps == [(0, 7, True)]
    assert bytes(r.streams[0]) == b"abc" + b"?" * 7 + b"next"


def test_mid_stream_starts_at_first_segment_seen() -> None:
    c, r = conn()
    c.segment(0, 123456, 999, ACK, b"tail of something", 0, 1)
    c.segment(1, 999, 123473, ACK, b"answer", 0, 2)
    assert bytes(r.streams[0]) == b"tail of something"
    assert bytes(r.streams[1]) == b"answer"


def test_rst_closes_and_flushes_held_segments_as_gap() -> None:
    c, r = conn()
    handshake(c, 0, 0)
    c.segment(0, 1, 1, ACK, b"aa", 0, 4)
    c.segment(0, 10, 1, ACK, b"held", 0, 5)
    c.segment(1, 1, 3, RST | ACK, b"", 0, 6)
    assert r.closed
    assert bytes(r.streams[0]) == b"aa" + b"?" * 7 + b"held"


def test_late_packets_after_close_are_ignored() -> None:
    c, r = conn()
    handshake(c, 0, 0)
    c.segment(0, 1, 1, ACK | FIN, b"bye", 0, 4)
    c.segment(1, 1, 5, ACK | FIN, b"", 0, 5)
    assert r.closed
    c.segment(0, 1, 2, ACK, b"bye", 0, 6)  # a late retransmission must not reach a closed dissector


@given(
    data=st.binary(min_size=1, max_size=3000),
    isn=st.integers(0, 0xFFFFFFFF),
    seed=st.integers(0, 2**32),
    dup=st.floats(0, 0.5),
)
def test_any_order_and_duplication_rebuilds_the_stream(data: bytes, isn: int, seed: int, dup: float) -> None:
    """With every byte present at least once, arrival order and duplicates never change the stream."""
    rnd = random.Random(seed)
    segs = []
    i = 0
    while i < len(data):
        n = rnd.randint(1, 200)
        segs.append((i, data[i : i + n]))
        i += n
    # some overlapping re-segmentations, as a sender retransmitting with a new MSS would make
    extra = []
    for off, s in segs:
        if rnd.random() < dup:
            cut = rnd.randint(0, len(s) - 1)
            extra.append((off + cut, data[off + cut : off + cut + rnd.randint(1, 300)]))
    allsegs = segs + extra
    rnd.shuffle(allsegs)
    c, r = conn()
    handshake(c, isn, 0)
    for off, s in allsegs:
        c.segment(0, (isn + 1 + off) & 0xFFFFFFFF, 1, ACK, s, 0, 10)
    c.finish(11)
    assert bytes(r.streams[0]) == data
    assert r.gaps == []


@given(
    data=st.binary(min_size=1, max_size=3000),
    seed=st.integers(0, 2**32),
    loss=st.floats(0, 0.6),
    max_ooo=st.integers(1, 2000),
)
def test_losses_become_gaps_of_the_right_size_and_memory_stays_bounded(
    data: bytes, seed: int, loss: float, max_ooo: int
) -> None:
    """Whatever is lost or reordered: delivered bytes sit at their true offsets; held bytes stay bounded."""
    rnd = random.Random(seed)
    segs = []
    i = 0
    while i < len(data):
        n = rnd.randint(1, 150)
        segs.append((i, data[i : i + n]))
        i += n
    kept = [s for s in segs if rnd.random() >= loss]
    # mild reordering: swap neighbours
    for j in range(len(kept) - 1):
        if rnd.random() < 0.3:
            kept[j], kept[j + 1] = kept[j + 1], kept[j]
    c, r = conn(Limits(max_ooo_bytes=max_ooo))
    handshake(c, 0, 0)
    for off, s in kept:
        c.segment(0, 1 + off, 1, ACK, s, 0, 10)
        assert c.buffered_bytes() <= max_ooo + 150
    # the receiver's FIN tells where the stream ends
    c.segment(0, 1 + len(data), 1, ACK | FIN, b"", 0, 11)
    c.finish(12)
    out = bytes(r.streams[0])
    assert len(out) == len(data)  # the FIN fixes the end: every lost byte became part of a gap
    for k, b in enumerate(out):
        assert b == data[k] or b == ord("?")
