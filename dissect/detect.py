"""Protocol detection by content: which analyzer owns a new connection.

Until an analyzer claims it, a connection's sink is a `Detecting` object that records what the
reassembler delivers (bounded by ``Limits.detect_window`` per direction), asks every registered
analyzer about the bytes, and on the first YES creates that analyzer's dissector and replays the
record into it. Ports are only a hint: an HTTP server on 9092 is still HTTP.

A connection whose handshake was seen must declare itself in its first bytes, so an analyzer that
says NO to the first bytes of both sides is out. One that started before the capture may show its
first message boundary later, so analyzers keep looking until the window is full.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from dissect.base import Analyzer, ConnContext, Dissector, Verdict

if TYPE_CHECKING:
    from dissect.tls.keylog import KeyLog


def default_analyzers(keylog: KeyLog | None = None) -> list[Analyzer]:
    """Every TCP analyzer podshark ships, most specific first.

    With a ``keylog``, TLS connections whose secrets it holds are decrypted and their plaintext goes
    to the other analyzers (`dissect.tls.TLSAnalyzer`).

    Kafka comes before DNS: both frame messages with a length prefix, but a DNS-over-TCP stream can
    never look like a Kafka request (its first four bytes read as an absurd size), while DNS's
    mid-stream scan for chained messages would otherwise run over every Kafka connection.
    """
    from dissect.dns import ANALYZER as DNS
    from dissect.http1 import ANALYZER as HTTP1
    from dissect.http2 import ANALYZER as HTTP2
    from dissect.kafka import ANALYZER as KAFKA
    from dissect.tls import ANALYZER as TLS
    from dissect.tls import TLSAnalyzer

    if keylog is None:
        return [HTTP1, TLS, HTTP2, KAFKA, DNS]
    tls = TLSAnalyzer(keylog, inner=[HTTP1, HTTP2, KAFKA, DNS])
    return [HTTP1, tls, HTTP2, KAFKA, DNS]


def default_udp_analyzers() -> list[Analyzer]:
    """Every UDP analyzer podshark ships. Each datagram is a message start, so detection is clean."""
    from dissect.dns import UDP_ANALYZER as DNS

    return [DNS]


class Ignored:
    """Sink for connections no analyzer claimed: their bytes are dropped."""

    __slots__ = ()

    def feed(self, direction: int, data: bytes, ts: int) -> None:
        pass

    def gap(self, direction: int, n: int, ts: int, snaplen: bool = False) -> None:
        pass

    def note(self, direction: int, flag: str) -> None:
        pass

    def close(self, ts: int) -> None:
        pass


IGNORED = Ignored()

_Event = tuple[int, int, object, int, bool]  # (kind, direction, payload, ts, snaplen)
_FEED, _GAP, _NOTE = 0, 1, 2


class Detecting:
    """The sink of a connection whose protocol is not known yet."""

    __slots__ = (
        "analyzers",
        "buf",
        "clean",
        "ctx",
        "events",
        "full",
        "maybe",
        "no",
        "on_decided",
        "port_hint",
        "rejected",
    )

    def __init__(
        self,
        ctx: ConnContext,
        analyzers: Sequence[Analyzer],
        port_hint: int | None,
        on_decided: Callable[[Dissector], None],
    ) -> None:
        self.ctx = ctx
        self.analyzers = list(analyzers)
        self.port_hint = port_hint
        self.on_decided = on_decided
        self.buf = (bytearray(), bytearray())
        self.full = [False, False]
        self.events: list[_Event] = []
        self.rejected: set[str] = set()
        self.no: dict[str, set[int]] = {}  # analyzer -> directions whose clean start it refused
        self.maybe: Analyzer | None = None  # the first analyzer that asked for more bytes
        # a direction starts clean when its first bytes arrived in order after a seen handshake:
        # then they must be a message start, and an analyzer that says NO to them is out
        self.clean = [ctx.handshake_seen, ctx.handshake_seen]

    def feed(self, direction: int, data: bytes, ts: int) -> None:
        window = self.ctx.limits.detect_window
        buf = self.buf[direction]
        room = window - len(buf)
        if len(data) > room:
            self.events.append((_FEED, direction, data[:room], ts, False))
            self.events.append((_GAP, direction, len(data) - room, ts, False))
            buf += data[:room]
            self.full[direction] = True
        else:
            self.events.append((_FEED, direction, data, ts, False))
            buf += data
        self._judge(direction)

    def gap(self, direction: int, n: int, ts: int, snaplen: bool = False) -> None:
        if not self.buf[direction]:
            self.clean[direction] = False
        self.events.append((_GAP, direction, n, ts, snaplen))

    def note(self, direction: int, flag: str) -> None:
        self.events.append((_NOTE, direction, flag, 0, False))

    def close(self, ts: int) -> None:
        # Nothing said YES. An analyzer that was still asking for more gets the bytes: a message
        # cut by the end of the connection is still worth a call (its dissector flags what's missing).
        if self.maybe is not None and self.maybe.name not in self.rejected:
            self._decide(self.maybe).close(ts)
            return
        self.on_decided(IGNORED)
        self.events.clear()

    def _judge(self, direction: int) -> None:
        data = bytes(self.buf[direction])
        clean = self.clean[direction]
        for a in self.analyzers:
            if a.name in self.rejected:
                continue
            v = a.detect(data, direction, self.port_hint)
            if v == Verdict.YES:
                self._decide(a)
                return
            if v == Verdict.NO and clean:
                # Out only when both sides opened with something else: a client's broken first
                # line may still be answered by a server that speaks the protocol plainly.
                said_no = self.no.setdefault(a.name, set())
                said_no.add(direction)
                if len(said_no) == 2:
                    self.rejected.add(a.name)
            elif v == Verdict.MORE and self.maybe is None:
                self.maybe = a
        # A full window without a YES is as much as we look at: memory stays bounded.
        if len(self.rejected) == len(self.analyzers) or self.full[direction]:
            self.on_decided(IGNORED)
            self.events.clear()

    def _decide(self, analyzer: Analyzer) -> Dissector:
        dissector = analyzer.new(self.ctx)
        self.on_decided(dissector)
        events, self.events = self.events, []
        for kind, d, payload, ts, snaplen in events:
            if kind == _FEED:
                dissector.feed(d, payload, ts)  # type: ignore[arg-type]
            elif kind == _GAP:
                dissector.gap(d, payload, ts, snaplen)  # type: ignore[arg-type]
            else:
                dissector.note(d, payload)  # type: ignore[arg-type]
        return dissector
