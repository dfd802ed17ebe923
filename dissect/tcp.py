"""TCP stream reassembly: segments in capture order in, in-order bytes and gaps out.

One `TCPConn` per connection, two `Direction`s in it. The fast path — the next expected segment
with nothing buffered — is a comparison and a call into the dissector. Everything else is bounded:

- a segment behind ``next_seq`` is a retransmission: dropped, or trimmed where it overlaps;
- a segment ahead of ``next_seq`` is held (out of order) until the hole fills, up to
  ``Limits.max_ooo_bytes`` per direction and the engine-wide ``ooo_budget``;
- a hole becomes a *gap* handed to the dissector as soon as it is certainly lost: the other side
  acknowledged bytes we never saw (what Zeek calls "ACK above hole"), the buffer limit was hit,
  or the connection ended. Segments cut by the snap length are delivered up to the cut, then a
  gap of the known missing size with ``snaplen=True``.

Sequence numbers are compared modulo 2**32, so wrap-around needs no special case.

Flow accounting (`dissect.flowstats`) reads a few counters here: ``packets`` and ``wire`` per
direction (bumped by the engine, which knows each frame's wire length), ``Direction.retrans`` (the
segments seen again, counted where the retransmission is noted), ``reset`` (ended by a RST) and
``hs`` (the engine's mark for "SYN-ACK seen, the client's ACK not yet"). They cost nothing on the
in-order fast path.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from dissect.base import Budget, Dissector, Limits
from dissect.model import Flag

if TYPE_CHECKING:
    from dissect.flowstats import FlowRecord

FIN, SYN, RST, ACK = 0x01, 0x02, 0x04, 0x10
M32 = 0xFFFFFFFF
HALF = 0x80000000


class Direction:
    """Reassembly state of one direction of a connection."""

    __slots__ = ("done", "fin_seq", "next_seq", "ooo", "ooo_bytes", "retrans")

    def __init__(self) -> None:
        self.next_seq: int | None = None  # next expected sequence number; None until first seen
        self.ooo: dict[int, tuple[bytes, int, int]] = {}  # seq -> (payload, missing, ts)
        self.ooo_bytes = 0
        self.fin_seq: int | None = None  # sequence number the FIN occupies
        self.done = False  # FIN consumed in order
        self.retrans = 0  # segments (or held copies) that repeated bytes already seen


class TCPConn:
    """Reassembles one connection and drives its dissector (``sink``)."""

    __slots__ = (
        "acct",
        "budget",
        "closed",
        "dirs",
        "hs",
        "index",
        "last_ts",
        "limits",
        "packets",
        "reset",
        "sink",
        "wire",
    )

    def __init__(self, sink: Dissector, limits: Limits, budget: Budget, index: int = 0) -> None:
        self.sink = sink
        self.dirs = (Direction(), Direction())
        self.limits = limits
        self.budget = budget  # engine-wide out-of-order bytes
        self.last_ts = 0
        self.closed = False
        self.index = index
        # flow accounting (see the module docstring); only an accounting engine touches them
        self.packets = [0, 0]
        self.wire = [0, 0]
        self.reset = False
        self.hs = False
        self.acct: FlowRecord | None = None

    def segment(self, d: int, seq: int, ack: int, flags: int, payload: bytes, missing: int, ts: int) -> None:
        """One TCP segment of direction ``d`` (``missing``: payload bytes cut by the snap length)."""
        self.last_ts = ts
        if self.closed:
            return  # late packets of a finished connection (retransmissions, stray ACKs)
        st = self.dirs[d]
        if flags & ACK:
            other = self.dirs[d ^ 1]
            if other.next_seq is not None:
                rel = (ack - other.next_seq) & M32
                if rel and rel < HALF:
                    self._acked_beyond(d ^ 1, ack, ts)
        if flags & SYN:
            if st.next_seq is None:
                st.next_seq = (seq + 1) & M32
            seq = (seq + 1) & M32  # data on a SYN (TCP Fast Open) starts after it
        n = len(payload) + missing
        if n:
            if st.next_seq is None:
                st.next_seq = seq  # capture started mid-connection: take the stream as it comes
            rel = (seq - st.next_seq) & M32
            if rel == 0 and not st.ooo:
                st.next_seq = (seq + n) & M32
                if payload:
                    self.sink.feed(d, payload, ts)
                if missing:
                    self.sink.gap(d, missing, ts, True)
            elif rel >= HALF:
                self._behind(d, seq, payload, missing, ts)
            else:
                self._ahead(d, seq, payload, missing, ts)
        if flags & FIN and st.fin_seq is None:
            st.fin_seq = (seq + n) & M32
            if st.next_seq is None:
                st.next_seq = st.fin_seq
        if st.fin_seq is not None and st.next_seq == st.fin_seq and not st.done:
            st.done = True
            st.next_seq = (st.fin_seq + 1) & M32
            if self.dirs[d ^ 1].done:
                self.finish(ts)
                return
        if flags & RST:
            self.reset = True
            self.finish(ts)

    # -- slow paths ----------------------------------------------------------------------------

    def _behind(self, d: int, seq: int, payload: bytes, missing: int, ts: int) -> None:
        """A segment starting before next_seq: a retransmission, wholly or in part."""
        st = self.dirs[d]
        assert st.next_seq is not None
        behind = (st.next_seq - seq) & M32
        st.retrans += 1
        self.sink.note(d, Flag.RETRANSMISSION)
        if behind >= len(payload) + missing:
            return
        if behind < len(payload):
            payload = payload[behind:]
        else:
            missing -= behind - len(payload)
            payload = b""
        self._deliver(d, payload, missing, ts)
        self._drain(d, ts)

    def _ahead(self, d: int, seq: int, payload: bytes, missing: int, ts: int) -> None:
        """A segment beyond a hole: hold it until the hole fills or is certainly lost."""
        st = self.dirs[d]
        if st.next_seq is not None and ((seq - st.next_seq) & M32) == 0:
            self._deliver(d, payload, missing, ts)
            self._drain(d, ts)
            return
        old = st.ooo.get(seq)
        if old is not None:
            if len(old[0]) + old[1] >= len(payload) + missing:
                st.retrans += 1
                self.sink.note(d, Flag.RETRANSMISSION)
                return
            st.ooo_bytes -= len(old[0])
            self.budget.give(len(old[0]))
        st.ooo[seq] = (payload, missing, ts)
        st.ooo_bytes += len(payload)
        self.budget.available -= len(payload)  # may overdraw; repaid as held segments are released
        if st.ooo_bytes > self.limits.max_ooo_bytes or self.budget.available < 0:
            self._skip_hole(d, ts)

    def _deliver(self, d: int, payload: bytes, missing: int, ts: int) -> None:
        st = self.dirs[d]
        assert st.next_seq is not None
        st.next_seq = (st.next_seq + len(payload) + missing) & M32
        if payload:
            self.sink.feed(d, payload, ts)
        if missing:
            self.sink.gap(d, missing, ts, True)

    def _drain(self, d: int, ts: int) -> None:
        """Deliver held segments that now continue the stream; drop those wholly behind it."""
        st = self.dirs[d]
        ooo = st.ooo
        while ooo:
            nxt = st.next_seq
            assert nxt is not None
            item = ooo.pop(nxt, None)
            if item is not None:
                self._release(st, item[0])
                self.sink.note(d, Flag.OUT_OF_ORDER)
                self._deliver(d, item[0], item[1], item[2])
                continue
            # no exact continuation: look for held segments overlapping next_seq or already behind it
            progressed = False
            for seq in list(ooo):
                rel = (seq - nxt) & M32
                if rel >= HALF:  # starts behind next_seq
                    payload, missing, t = ooo.pop(seq)
                    self._release(st, payload)
                    behind = (nxt - seq) & M32
                    if behind < len(payload) + missing:
                        if behind < len(payload):
                            payload = payload[behind:]
                        else:
                            missing -= behind - len(payload)
                            payload = b""
                        self.sink.note(d, Flag.OUT_OF_ORDER)
                        self._deliver(d, payload, missing, t)
                    progressed = True
                    break
            if not progressed:
                return

    def _release(self, st: Direction, payload: bytes) -> None:
        st.ooo_bytes -= len(payload)
        self.budget.give(len(payload))

    def _skip_hole(self, d: int, ts: int, upto: int | None = None) -> None:
        """Declare the hole before the first held segment (or up to ``upto``) lost, then drain."""
        st = self.dirs[d]
        nxt = st.next_seq
        if nxt is None:
            return
        if st.ooo:
            first = min(st.ooo, key=lambda s: (s - nxt) & M32)
            size = (first - nxt) & M32
        elif st.fin_seq is not None and not st.done:
            size = (st.fin_seq - nxt) & M32
        else:
            size = 0
        if upto is not None:
            limit = (upto - nxt) & M32
            if not size or limit < size:
                size = limit
        if size and size < HALF:
            st.next_seq = (nxt + size) & M32
            self.sink.gap(d, size, ts, False)
        self._drain(d, ts)

    def _acked_beyond(self, d: int, ack: int, ts: int) -> None:
        """The peer acknowledged bytes of direction ``d`` that we never saw: they were lost here."""
        st = self.dirs[d]
        nxt = st.next_seq
        assert nxt is not None
        if st.fin_seq is not None and ((st.fin_seq - nxt) & M32) == 0:
            return  # only the FIN is outstanding; it is consumed when its segment arrives
        limit = ack
        if st.fin_seq is not None and ((ack - st.fin_seq) & M32) < HALF:
            limit = st.fin_seq  # the ack also covers the FIN: the hole ends at it
        self._skip_hole(d, ts, upto=limit)
        if st.fin_seq is not None and st.next_seq == st.fin_seq and not st.done:
            st.done = True
            st.next_seq = (st.fin_seq + 1) & M32

    def finish(self, ts: int) -> None:
        """End of the connection (FIN both ways, RST, eviction, end of capture): flush and close."""
        if self.closed:
            return
        for d in (0, 1):
            st = self.dirs[d]
            while st.ooo:
                self._skip_hole(d, ts)
            if st.fin_seq is not None and not st.done and st.next_seq is not None:
                self._skip_hole(d, ts)
        self.closed = True
        self.sink.close(ts)

    def buffered_bytes(self) -> int:
        return self.dirs[0].ooo_bytes + self.dirs[1].ooo_bytes

    def retransmitted(self) -> tuple[int, int]:
        """Retransmitted segments per direction (for flow accounting)."""
        return self.dirs[0].retrans, self.dirs[1].retrans
