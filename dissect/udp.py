"""UDP flows: datagrams keep their boundaries, so there is nothing to reassemble.

A `UDPFlow` hands each datagram to its dissector as one `feed` (a DNS query is one datagram); a
datagram cut by the snap length is fed up to the cut and followed by a gap of the missing size.
A flow has no FIN, so it ends when it has been idle for ``Limits.udp_idle_timeout_ns`` of capture
time or at the end of input; dissectors that wait for answers (DNS) also time out by themselves.
"""

from __future__ import annotations

from dissect.base import Dissector


class UDPFlow:
    """One UDP 4-tuple (both directions) and its dissector (``sink``)."""

    __slots__ = ("closed", "index", "last_ts", "sink")

    def __init__(self, sink: Dissector, index: int = 0) -> None:
        self.sink = sink
        self.index = index
        self.last_ts = 0
        self.closed = False

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
