"""The contract between transport reassembly and protocol dissectors.

A protocol module (``dissect/http1``, later ``http2``, ``dns``, ``kafka``…) provides an `Analyzer`:
a content-based detector plus a factory for one `Dissector` per connection. The dissector is
sans-IO and push-driven: the reassembler feeds it both directions in capture order and it emits
finished `Call` records through ``ctx.emit``. It never blocks, never raises on bad input (bad input
becomes flags), and keeps its buffers within the bounds in `Limits`.

Directions are numbered by the reassembler: 0 is the side that sent the first SYN, or — when the
capture started mid-connection — the side of the first packet seen. The dissector decides which
side is the client from content (a request line, a status line) and sets ``src``/``dst`` so that
``src`` is always the client.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Protocol

from dissect.model import Call, Endpoint


@dataclass(slots=True)
class Limits:
    """Memory bounds. Every buffer a dissector or reassembler keeps is sized by one of these."""

    max_body: int = 1 << 20  # bytes of decoded body kept per message; the rest is counted, not kept
    max_header_block: int = 64 << 10  # a header block larger than this is a parse error
    max_pending: int = 1024  # requests waiting for responses on one connection (pipelining)
    max_ooo_bytes: int = 1 << 20  # out-of-order bytes buffered per direction before declaring a gap
    max_ooo_total: int = 256 << 20  # out-of-order bytes buffered across all connections
    max_body_total: int = 512 << 20  # body bytes buffered across all connections
    detect_window: int = 64 << 10  # bytes looked at per direction to recognise a protocol
    max_connections: int = 200_000  # live connections tracked; the least recently active are evicted
    idle_timeout_ns: int = 600 * 1_000_000_000  # a connection silent this long is closed
    udp_idle_timeout_ns: int = 60 * 1_000_000_000  # a UDP flow silent this long is closed


class Budget:
    """A shared byte budget (one per engine) so the sum of all buffers stays bounded.

    Per-connection limits alone do not bound memory when there are many connections; dissectors
    ``take`` from this before buffering body bytes and ``give`` back when a message is emitted.
    """

    __slots__ = ("available", "limit")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.available = limit

    def take(self, n: int) -> int:
        """Reserve up to ``n`` bytes; returns how many were granted (possibly 0)."""
        got = n if n <= self.available else max(self.available, 0)
        self.available -= got
        return got

    def give(self, n: int) -> None:
        self.available = min(self.limit, self.available + n)


@dataclass(slots=True)
class Handoff:
    """A connection changing protocol mid-stream (h2c Upgrade, CONNECT tunnel), passed to the next
    dissector through `ConnContext.switch`."""

    protocol: str  # analyzer name ("http2"), or "" to detect what the tunnel carries
    pending: tuple[bytes, bytes]  # bytes each direction already sent after the switch point
    ts: int
    client_dir: int | None = None  # which direction is the client, when known
    request: Call | None = None  # h2c: the HTTP/1 call that asked for the upgrade (it is stream 1)


@dataclass(slots=True)
class ConnContext:
    """What a dissector knows about its connection, and where its calls go."""

    flow_id: str
    endpoints: tuple[Endpoint, Endpoint]  # indexed by direction
    emit: Callable[[Call], None]
    transport: str = "tcp"
    handshake_seen: bool = True  # False: the capture started inside this connection
    limits: Limits = field(default_factory=Limits)
    budget: Budget = field(default_factory=lambda: Budget(512 << 20))
    # Hand the connection to another protocol's dissector from now on; set by the engine (None in
    # sans-IO tests that do not exercise switching). The new dissector receives Handoff.pending.
    switch: Callable[[Handoff], None] | None = None


class Verdict(IntEnum):
    NO = 0  # this is not my protocol
    MORE = 1  # could be mine: show me more bytes
    YES = 2  # mine


class Dissector(Protocol):
    """One connection's protocol state machine. All methods return nothing; calls go to ctx.emit."""

    def feed(self, direction: int, data: bytes, ts: int) -> None:
        """In-order payload bytes of one direction, with the capture timestamp (ns) of their packet."""

    def gap(self, direction: int, n: int, ts: int, snaplen: bool = False) -> None:
        """``n`` bytes of this direction were lost (or cut by the snap length when ``snaplen``)."""

    def note(self, direction: int, flag: str) -> None:
        """A transport anomaly (retransmission, out-of-order) touched the message now in progress."""

    def close(self, ts: int) -> None:
        """The connection ended (FIN/RST, eviction, end of capture): flush everything pending."""


class Analyzer(Protocol):
    """A protocol module's entry point, registered in `dissect.detect`."""

    name: str

    def detect(self, data: bytes, direction: int, port_hint: int | None) -> Verdict:
        """Judge the first bytes one side sent (``data`` is at most ``Limits.detect_window`` long)."""
        ...

    def new(self, ctx: ConnContext, handoff: Handoff | None = None) -> Dissector:
        """A dissector for one connection; ``handoff`` when it takes over from another protocol."""
        ...
