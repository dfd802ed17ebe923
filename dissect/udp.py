"""UDP flows: datagrams keep their boundaries, so there is nothing to reassemble.

A `UDPFlow` hands each datagram to its dissector as one `feed` (a DNS query is one datagram); a
datagram cut by the snap length is fed up to the cut and followed by a gap of the missing size.
A flow has no FIN, so it ends when it has been idle for ``Limits.udp_idle_timeout_ns`` of capture
time or at the end of input; dissectors that wait for answers (DNS) also time out by themselves.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from dissect.base import Dissector

if TYPE_CHECKING:
    from dissect.flowstats import FlowRecord


class UDPFlow:
    """One UDP 4-tuple (both directions) and its dissector (``sink``).

    ``packets`` and ``wire`` (per direction) and ``acct`` are flow accounting's (`dissect.flowstats`):
    an accounting engine bumps the counters per datagram; a UDP flow never ends with a reset and
    has nothing to retransmit."""

    __slots__ = ("acct", "closed", "index", "last_ts", "packets", "reset", "sink", "wire")

    def __init__(self, sink: Dissector, index: int = 0) -> None:
        self.sink = sink
        self.index = index
        self.last_ts = 0
        self.closed = False
        self.packets = [0, 0]
        self.wire = [0, 0]
        self.reset = False
        self.acct: FlowRecord | None = None

    def datagram(self, d: int, payload: bytes, missing: int, ts: int) -> None:
        self.last_ts = ts
        if payload:
            self.sink.feed(d, payload, ts)
        if missing:
            self.sink.gap(d, missing, ts, True)

    def finish(self, ts: int) -> None:
        if not self.closed:
            self.closed = True
            self.sink.close(ts)

    def buffered_bytes(self) -> int:
        return 0

    def retransmitted(self) -> tuple[int, int]:
        return 0, 0
