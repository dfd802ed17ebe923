"""Flow accounting: per-connection counters folded, per interval, into `FlowAggregate` records.

Calls say what happened; flow aggregates say how much, between whom: bytes and packets each way,
connections opened, closed and still open, resets, retransmissions, handshake round trips and
connection durations — also for traffic no dissector understood. The engine counts on its packet
path (`dissect.engine.Engine` with ``accounting=``); this module is the sans-IO bookkeeping:

- every TCP connection and UDP flow of an accounting engine carries a `FlowRecord` (who is the
  client, the key's addresses, the protocol its dissector chose, the handshake's timing) and a
  few counters the engine bumps per frame (``packets`` and ``wire``, two-element lists indexed by
  direction) or the reassembler bumps on its slow paths (retransmissions, RST);
- `FlowAccounting.roll` closes an interval: it walks the live flows, folds what changed since the
  last fold into one `FlowAggregate` per (transport, client ip, server ip, server port, protocol)
  and counts the open ones as ``active``; a flow that leaves the table (idle, evicted, replaced by a
  new connection on its 4-tuple) is folded at that moment (`FlowAccounting.dropped`), as closed.

Why fold per interval instead of per packet: a packet then costs two list increments on the
engine's hot path, and everything else (dict lookups, tuples, aggregates) happens once per flow per
interval. Why client ip but no client port: ephemeral ports would make one key per connection;
the server's port names the service.

Who is the client (the aggregates' ``src``): for TCP the SYN sender; a connection first seen with
its SYN-ACK has the other side as client; one first seen mid-stream has the side with the higher
(ephemeral) port as client, the first sender when the ports are equal. For UDP the first
datagram's destination is the server, unless the datagram came from a port below 1024 to one that
is not (a DNS server's answer seen before the query).

A connection's protocol is the analyzer that took it, as of the first interval it was folded in:
it keeps that key for life (see `FlowRecord.decided`), so per-key opened, closed and active stay
consistent; an h2c upgrade stays under "http", a connection still being detected then under None.
An HTTP/2 connection whose first gRPC call ended before that is "grpc", like its calls
(`FlowRecord.called`), so calls and flows meet on one service-map edge.

Bounds: at most ``max_keys`` aggregates per interval; the flows of further keys are folded into one
"other" aggregate per transport (addresses and port None) and counted in ``overflow``. End of input
(`FlowAccounting.stop`) is not an ending for the connections still open: the last, partial interval
reports them as active, never as closed, so a worker restart does not look like a wave of closes.
"""

from __future__ import annotations

import builtins
from collections.abc import Iterable
from typing import Any, Protocol

import msgspec

from dissect.model import Endpoint

SCHEMA_VERSION = 1
DEFAULT_INTERVAL_NS = 10 * 1_000_000_000
DEFAULT_MAX_KEYS = 10_000
MIN_INTERVAL_NS = 1_000_000  # 1 ms: shorter only makes work (tests use short ones)

Key = tuple[str, str | None, str | None, int | None, str | None]  # transport, client, server, port, proto


class FlowAggregate(msgspec.Struct, kw_only=True):
    """The traffic of one (transport, client ip, server ip, server port, protocol) in one interval.

    Pairs are ``[client->server, server->client]``; ``bytes`` are frame bytes on the wire (the
    frame's wire length, link-layer header included). Declared in the order of the JSON form.
    """

    v: int = SCHEMA_VERSION
    start_ts: int  # interval start, ns (capture clock)
    end_ts: int  # interval end, ns
    transport: str  # "tcp" | "udp"
    src: Endpoint  # the client side: ip (+ identity); port None (ephemeral ports folded)
    dst: Endpoint  # the server side: ip, port (+ identity)
    protocol: str | None  # the dissector that took these connections ("http", "tls", ...), None if none
    bytes: list[int]  # [client->server, server->client]: frame bytes on the wire (L2 included)
    packets: list[int]  # [client->server, server->client]
    opened: int = 0  # connections/flows first seen in the interval (TCP: SYN seen or mid-stream start)
    closed: int = 0  # ended in the interval (FIN/RST, idle timeout, eviction)
    active: int = 0  # open at end_ts
    resets: int = 0  # connections that ended with a RST
    retransmissions: list[int]  # [c->s, s->c] segments the reassembler saw again
    rtt_ns_sum: int = 0  # TCP handshake RTT (SYN -> the ACK of the SYN-ACK, at the capture point)
    rtt_count: int = 0
    rtt_ns_max: int = 0
    duration_ns_sum: int = 0  # first packet -> last, of the connections closed in the interval
    duration_count: int = 0
    duration_ns_max: int = 0

    def to_json_bytes(self) -> builtins.bytes:
        return _encode(self)

    @classmethod
    def from_json(cls, data: builtins.bytes | str) -> FlowAggregate:
        """Decode and validate one aggregate (raises msgspec.ValidationError / DecodeError)."""
        agg = _decode(data)
        if agg.v != SCHEMA_VERSION:
            raise msgspec.ValidationError(f"flow aggregate schema v{agg.v} is not v{SCHEMA_VERSION}")
        return agg


_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(FlowAggregate).decode


def tcp_client(first_flags: int, sport: int, dport: int) -> int:
    """Which direction (0: the first packet's sender) is the client of a new TCP connection."""
    syn, ack = first_flags & 0x02, first_flags & 0x10
    if syn and not ack:
        return 0
    if syn and ack:
        return 1  # a SYN-ACK first: its sender is the server
    return 1 if dport > sport else 0  # mid-stream: the ephemeral (higher) port is the client's


def udp_client(sport: int, dport: int) -> int:
    """Which direction (0: the first datagram's sender) is the client of a new UDP flow."""
    return 1 if sport < 1024 <= dport else 0


class FlowRecord:
    """What accounting keeps per connection besides the counters the engine bumps.

    Snapshots (``pc``... ``rs``) are the counters as last folded, in client/server order, so each
    interval gets the difference. ``syn_ts`` is the client's latest SYN before a SYN-ACK; the engine
    sets ``rtt_ns`` when the client's first ACK after the SYN-ACK passes.
    """

    __slots__ = (
        "agg",
        "bc",
        "bs",
        "cip",
        "client",
        "closed",
        "epoch",
        "first_ts",
        "opened",
        "pc",
        "protocol",
        "ps",
        "rc",
        "rs",
        "rtt_done",
        "rtt_ns",
        "sip",
        "sport",
        "syn_ts",
        "transport",
    )

    def __init__(
        self, transport: str, client: int, ip0: str, port0: int, ip1: str, port1: int, first_ts: int
    ) -> None:
        self.transport = transport
        self.client = client
        if client == 0:
            self.cip, self.sip, self.sport = ip0, ip1, port1
        else:
            self.cip, self.sip, self.sport = ip1, ip0, port0
        self.first_ts = first_ts
        self.protocol: str | None = None
        self.syn_ts: int | None = None
        self.rtt_ns = -1
        self.rtt_done = False
        self.opened = False
        self.closed = False
        self.pc = self.ps = self.bc = self.bs = self.rc = self.rs = 0
        self.agg: FlowAggregate | None = None  # the aggregate it was folded into in interval `epoch`
        self.epoch = -1

    def decided(self, protocol: str | None) -> None:
        """The engine gave the connection a dissector (or handed it to another). The key follows
        only until the connection was first folded: from then on it keeps its key, so its opening,
        traffic and closing add up in one aggregate (a connection whose protocol was still being
        detected at its first interval's end stays under None)."""
        if not self.opened:
            self.protocol = protocol

    def called(self, protocol: str) -> None:
        """A call of this connection came out: its protocol names the connection when it is more
        specific than the dissector's (gRPC calls on an HTTP/2 connection), so flows and calls meet on
        one map edge — again only until the first fold (a connection whose first call ends later,
        a long gRPC stream, stays under "http2")."""
        if protocol != self.protocol and self.protocol == "http2" and protocol == "grpc":
            self.decided(protocol)

    def key(self) -> Key:
        return (self.transport, self.cip, self.sip, self.sport, self.protocol)


class CountedFlow(Protocol):
    """A TCP connection (`dissect.tcp.TCPConn`) or UDP flow (`dissect.udp.UDPFlow`) as accounting
    sees it."""

    packets: list[int]  # per direction (0: the first packet's sender)
    wire: list[int]
    closed: bool
    reset: bool
    last_ts: int
    acct: FlowRecord | None

    def retransmitted(self) -> tuple[int, int]: ...


class FlowAccounting:
    """Folds counted flows into aggregates per interval (see the module docstring).

    The engine calls `roll` when a packet's time (or the clock's) reaches `end`, `dropped` for each
    flow leaving its tables and `stop` at the end of input; finished aggregates collect in `out`,
    which the caller drains. Intervals are aligned to multiples of ``interval_ns`` since the epoch,
    so workers' intervals line up with each other and with the hub's minutes.
    """

    def __init__(self, interval_ns: int = DEFAULT_INTERVAL_NS, max_keys: int = DEFAULT_MAX_KEYS) -> None:
        if interval_ns < MIN_INTERVAL_NS:
            raise ValueError(f"the flow interval must be at least {MIN_INTERVAL_NS} ns, not {interval_ns}")
        if max_keys < 1:
            raise ValueError(f"max_keys must be at least 1, not {max_keys}")
        self.interval_ns = interval_ns
        self.max_keys = max_keys
        self.start: int | None = None  # the current interval, once the first packet set it
        self.end: int | None = None
        self.out: list[FlowAggregate] = []
        self.stopped = False
        self._aggs: dict[Key, FlowAggregate] = {}
        self._other: dict[str, FlowAggregate] = {}
        self._epoch = 0  # numbers the intervals, so a record knows whether its `agg` is this one's
        # counters, for the worker's stats
        self.intervals = 0
        self.aggregates = 0  # emitted
        self.overflow = 0  # flow contributions folded into "other" (keys over max_keys)
        self.flows_opened = 0
        self.flows_closed = 0

    # -- the interval ------------------------------------------------------------------------------

    def roll(self, now: int, flows: Iterable[CountedFlow]) -> int:
        """Time reached `end` (or this is the first packet): close the current interval, if any,
        and start the one holding ``now``. Returns the new interval's end (the engine's next check)."""
        if self.start is not None and self.end is not None and not self.stopped:
            self._close(self.end, flows, final=False)
        self.start = now - now % self.interval_ns
        self.end = self.start + self.interval_ns
        return self.end

    def stop(self, now: int, flows: Iterable[CountedFlow]) -> None:
        """End of input: emit the partial interval (open connections stay active, not closed) and
        ignore the drops that follow. Safe to call more than once."""
        if self.stopped:
            return
        if self.start is not None and self.end is not None:
            self._close(min(self.end, max(now, self.start + 1)), flows, final=True)
        self.stopped = True

    def dropped(self, flow: CountedFlow) -> None:
        """``flow`` leaves its table (idle, evicted, replaced, ended): fold its last counts, closed."""
        if self.stopped or self.start is None:
            return
        rec = flow.acct
        if rec is not None:
            self._fold(flow, rec, ending=True)

    def _close(self, end: int, flows: Iterable[CountedFlow], final: bool) -> None:
        """Fold every flow, count the open ones as active, emit the interval's aggregates."""
        epoch = self._epoch
        for flow in flows:
            rec = flow.acct
            if rec is None:
                continue
            self._fold(flow, rec, ending=False)
            if flow.closed:
                continue
            agg = rec.agg if rec.epoch == epoch else self._aggs.get(rec.key())
            if agg is not None:
                agg.active += 1
        start = self.start if self.start is not None else end
        for agg in self._aggs.values():
            agg.start_ts, agg.end_ts = start, end
            self.out.append(agg)
        for agg in self._other.values():
            agg.start_ts, agg.end_ts = start, end
            self.out.append(agg)
        self.aggregates += len(self._aggs) + len(self._other)
        self.intervals += 1
        self._aggs = {}
        self._other = {}
        self._epoch = epoch + 1

    # -- folding -----------------------------------------------------------------------------------

    def _fold(self, flow: CountedFlow, rec: FlowRecord, ending: bool) -> None:
        c = rec.client
        s = c ^ 1
        p, w = flow.packets, flow.wire
        pc, ps, bc, bs = p[c] - rec.pc, p[s] - rec.ps, w[c] - rec.bc, w[s] - rec.bs
        r = flow.retransmitted()
        rc, rs = r[c] - rec.rc, r[s] - rec.rs
        opened = not rec.opened
        closed = (ending or flow.closed) and not rec.closed
        rtt = rec.rtt_ns if rec.rtt_ns >= 0 and not rec.rtt_done else -1
        if not (pc or ps or bc or bs or rc or rs or opened or closed or rtt >= 0):
            return
        agg = self._aggregate(rec)
        rec.agg, rec.epoch = agg, self._epoch
        if pc or ps or bc or bs:
            agg.packets[0] += pc
            agg.packets[1] += ps
            agg.bytes[0] += bc
            agg.bytes[1] += bs
            rec.pc, rec.ps, rec.bc, rec.bs = p[c], p[s], w[c], w[s]
        if rc or rs:
            agg.retransmissions[0] += rc
            agg.retransmissions[1] += rs
            rec.rc, rec.rs = r[c], r[s]
        if opened:
            rec.opened = True
            agg.opened += 1
            self.flows_opened += 1
        if rtt >= 0:
            rec.rtt_done = True
            agg.rtt_count += 1
            agg.rtt_ns_sum += rtt
            if rtt > agg.rtt_ns_max:
                agg.rtt_ns_max = rtt
        if closed:
            rec.closed = True
            agg.closed += 1
            self.flows_closed += 1
            if flow.reset:
                agg.resets += 1
            duration = max(flow.last_ts - rec.first_ts, 0)
            agg.duration_count += 1
            agg.duration_ns_sum += duration
            if duration > agg.duration_ns_max:
                agg.duration_ns_max = duration

    def _aggregate(self, rec: FlowRecord) -> FlowAggregate:
        """This interval's aggregate for the record's key; the transport's "other" one past max_keys."""
        key = rec.key()
        agg = self._aggs.get(key)
        if agg is not None:
            return agg
        if len(self._aggs) < self.max_keys:
            agg = self._aggs[key] = _new(rec.transport, rec.cip, rec.sip, rec.sport, rec.protocol)
            return agg
        self.overflow += 1
        other = self._other.get(rec.transport)
        if other is None:
            other = self._other[rec.transport] = _new(rec.transport, None, None, None, None)
        return other

    def stats(self) -> dict[str, Any]:
        return {
            "interval_s": self.interval_ns / 1e9,
            "intervals": self.intervals,
            "aggregates": self.aggregates,
            "overflow": self.overflow,
            "max_keys": self.max_keys,
            "opened": self.flows_opened,
            "closed": self.flows_closed,
        }


def _new(
    transport: str, cip: str | None, sip: str | None, sport: int | None, protocol: str | None
) -> FlowAggregate:
    return FlowAggregate(
        start_ts=0,
        end_ts=0,
        transport=transport,
        src=Endpoint(ip=cip),
        dst=Endpoint(ip=sip, port=sport),
        protocol=protocol,
        bytes=[0, 0],
        packets=[0, 0],
        retransmissions=[0, 0],
    )


def is_other(agg: FlowAggregate) -> bool:
    """True for the aggregate that holds the flows of keys beyond the per-interval cap."""
    return agg.src.ip is None and agg.dst.ip is None


__all__ = [
    "DEFAULT_INTERVAL_NS",
    "DEFAULT_MAX_KEYS",
    "CountedFlow",
    "FlowAccounting",
    "FlowAggregate",
    "FlowRecord",
    "is_other",
    "tcp_client",
    "udp_client",
]
