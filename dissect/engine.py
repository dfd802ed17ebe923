"""The engine: frames in, `Call`s out. The same object serves a capture file and a live ring.

Per packet: decode L2–L4 (`dissect.packet`), find the connection in one dict lookup (each
connection is filed under both of its 4-tuples, with the direction), and hand the segment to
its `TCPConn`, which drives the protocol dissector. Dissectors emit finished calls through their
context; the engine stamps each with its id and yields it.

Connections end on FIN/RST (they linger, closed, so late retransmissions are not mistaken for a
new conversation), when idle for ``Limits.idle_timeout_ns`` of capture time, when the table is
full (least recently active first), or at the end of input.

Frames for export: an optional ``on_frame(ts, linktype, frame, orig_len, flow_id)`` hook sees every
frame that belongs to a TCP connection or UDP flow, with the flow id its calls carry, right after the
frame was dispatched. With the hook set, each frame goes through `_frame` (one call per frame, with
its own copy of the fast path); without it `run`'s inlined loop is untouched. The frames of a
fragmented IP datagram are held (`dissect.fragframes`) until the datagram is whole and are then
handed over with its flow; fragments of a datagram that never completes belong to no flow and are
not reported.

Flow accounting (``accounting=FlowAccounting(...)``, `dissect.flowstats`; off by default, so
``podshark dissect`` and ``import`` run as fast as before): every frame of a flow adds its wire length
and one packet to its flow's per-direction counters, the handshake's round trip is timed, and at
each interval boundary (a packet's time, or `tick`'s clock, reaching it) the flows are folded into
`FlowAggregate` records left in ``accounting.out``. With accounting or the frame hook, each frame
goes through `_frame`, which inlines the same fast path as `run` (one decode, one lookup) and adds
the two counter increments to it; the general path dispatches, then finds the flow the frame went to.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import struct
from collections.abc import Callable, Iterable, Iterator, Sequence

from dissect.base import Analyzer, Budget, ConnContext, Dissector, Handoff, Limits
from dissect.detect import IGNORED, Detecting, default_analyzers, default_udp_analyzers
from dissect.flows import FlowTable
from dissect.flowstats import FlowAccounting, FlowRecord, tcp_client, udp_client
from dissect.fragframes import HeldFragments, frag_key
from dissect.ipfrag import Fragments
from dissect.model import Call, Endpoint
from dissect.packet import IPPROTO_TCP, IPPROTO_UDP, L4, decode, ip_text
from dissect.pcapio import CaptureError, CaptureReader, Packet
from dissect.plaintext import Plaintext
from dissect.tcp import ACK, SYN, TCPConn
from dissect.tls.keylog import SECRETS_TYPE_TLS, KeyLog
from dissect.udp import UDPFlow

_tcp_hdr = struct.Struct("!HHIIBB").unpack_from
_SWEEP_EVERY = 8192  # packets between idle sweeps
LINGER_NS = 30 * 1_000_000_000  # how long a finished connection absorbs late packets
# (ts ns, linktype, frame as captured, length on the wire, flow id) of a frame of a flow, for export
FrameHook = Callable[[int, int, bytes, int, str], None]
_NEVER = 1 << 63  # the interval end of an engine without accounting: no packet time reaches it


class _Named:
    """An analyzer that notes its name when it makes a dissector, for flow accounting.

    `Detecting` hands the engine only the dissector it chose; the connection's aggregates are keyed
    by the analyzer's name. Detecting calls ``new`` and then, at once, the engine's ``decided``
    callback, so the name noted here is the chosen one's. Only an accounting engine wraps its
    analyzers; ``detect`` is the analyzer's own bound method, so detection costs the same."""

    __slots__ = ("detect", "inner", "name", "noted")

    def __init__(self, inner: Analyzer, noted: list[str | None]) -> None:
        self.inner = inner
        self.name = inner.name
        self.detect = inner.detect
        self.noted = noted

    def new(self, ctx: ConnContext, handoff: Handoff | None = None) -> Dissector:
        dissector = self.inner.new(ctx, handoff)
        self.noted[0] = self.name
        return dissector


class Engine:
    """Reassembles and dissects a stream of frames from one source (a file or a node).

    ``source`` prefixes every id: the first 12 hex digits of a capture file's sha256 for imports
    (so importing the same file twice gives the same ids) or the node name for live capture.
    """

    def __init__(
        self,
        source: str,
        limits: Limits | None = None,
        analyzers: Sequence[Analyzer] | None = None,
        call_id: Callable[[int], str] | None = None,
        udp_analyzers: Sequence[Analyzer] | None = None,
        on_frame: FrameHook | None = None,
        accounting: FlowAccounting | None = None,
    ) -> None:
        self.source = source
        self.on_frame = on_frame  # see the module docstring; None keeps the inlined hot path
        self.accounting = accounting  # flow accounting (see the module docstring); None: off
        self.held_frags = HeldFragments()
        self.limits = limits or Limits()
        self.analyzers = list(analyzers) if analyzers is not None else default_analyzers()
        self.udp_analyzers = list(udp_analyzers) if udp_analyzers is not None else default_udp_analyzers()
        self.tcp: FlowTable[TCPConn] = FlowTable()
        self.udp: FlowTable[UDPFlow] = FlowTable()
        self.frags = Fragments()
        self.ooo_budget = Budget(self.limits.max_ooo_total)
        self.body_budget = Budget(self.limits.max_body_total)
        self.out: list[Call] = []
        self._calls = 0
        self._conn_index = 0
        self._call_id = call_id  # default: `<source>/<index>`, the index zero-padded so ids sort
        self._prefix = source + "/"
        self._since_sweep = 0
        self.now = 0
        self.packets = 0
        self.undecoded = 0  # frames that were not TCP (or not yet: fragments)
        self.plain: Plaintext | None = None  # decrypted TLS streams, once `enable_plaintext` is called
        self._acct_end = _NEVER  # the current accounting interval's end (0: not started)
        self._noted: list[str | None] = [None]  # the protocol the last analyzer made a dissector for
        if accounting is not None:
            self._acct_end = 0
            self.analyzers = [_Named(a, self._noted) for a in self.analyzers]
            self.udp_analyzers = [_Named(a, self._noted) for a in self.udp_analyzers]
            self.tcp.on_drop = accounting.dropped
            self.udp.on_drop = accounting.dropped

    def enable_plaintext(self) -> Plaintext:
        """Accept decrypted TLS streams (`dissect.plaintext`): from now on the packet side's opaque
        ``tls`` calls are held briefly so the decrypted calls of the same connection can replace them."""
        if self.plain is None:
            self.plain = Plaintext(
                analyzers=self.analyzers,
                limits=self.limits,
                budget=self.body_budget,
                new_flow_id=self._new_flow_id,
                name=self._name,
                clock=lambda: self.now,
                out=self.out,
                packets=self.tcp,
                on_frame=self.on_frame,
            )
        return self.plain

    # -- input ---------------------------------------------------------------------------------

    def run(self, packets: Iterable[Packet]) -> Iterator[Call]:
        """Dissect every packet, yielding calls as they complete, then flush at the end."""
        if self.on_frame is not None or self.accounting is not None:
            yield from self._run_framed(packets)
            return
        out = self.out
        dispatch = self._dispatch
        flows = self.tcp.by_key
        frags = self.frags
        tcp_hdr = _tcp_hdr
        fast = 0  # packets taken by the inlined path since the counters were last brought up to date
        room = _SWEEP_EVERY - self._since_sweep
        ts = self.now
        for ts, linktype, frame, _wire in packets:
            # The common case inlined: a TCP segment of a known connection. Everything else, and
            # one packet in _SWEEP_EVERY (for the idle sweep), goes through `_dispatch`.
            seg = decode(linktype, frame, frags, ts)
            if seg is not None and seg[0] == 6 and fast < room:
                _proto, src, dst, data, off, end, missing = seg
                if end - off >= 20:
                    sport, dport, seq, ack, doff, flags = tcp_hdr(data, off)
                    hit = flows.get((src, sport, dst, dport))
                    start = off + ((doff >> 4) << 2)
                    if hit is not None and not flags & SYN and start <= end:
                        fast += 1
                        hit[0].segment(hit[1], seq, ack, flags, data[start:end], missing, ts)
                        if out:
                            self._count(fast, ts)
                            room -= fast
                            fast = 0
                            yield from out
                            out.clear()
                        continue
            self._count(fast, ts)
            fast = 0
            dispatch(ts, seg)
            room = _SWEEP_EVERY - self._since_sweep
            if out:
                yield from out
                out.clear()
        self._count(fast, ts)
        self.finish()
        yield from out
        out.clear()

    def packet(self, ts: int, linktype: int, frame: bytes, orig_len: int | None = None) -> None:
        """One captured frame (``orig_len``: its length on the wire, default as captured).
        Finished calls are appended to ``self.out``."""
        if self.on_frame is not None or self.accounting is not None:
            self._frame(ts, linktype, frame, len(frame) if orig_len is None else orig_len)
        else:
            self._dispatch(ts, decode(linktype, frame, self.frags, ts))

    # -- the frame hook (export) and flow accounting ------------------------------------------------

    def _run_framed(self, packets: Iterable[Packet]) -> Iterator[Call]:
        """`run` with the frame hook or accounting: every packet through `_frame`."""
        out = self.out
        frame_ = self._frame
        for ts, linktype, frame, wire in packets:
            frame_(ts, linktype, frame, wire)
            if out:
                yield from out
                out.clear()
        self.finish()
        yield from out
        out.clear()

    def _frame(self, ts: int, linktype: int, frame: bytes, wire: int) -> None:
        """One frame with the hook and/or accounting: the fast path of `run` (a segment of a known
        connection), counted and handed to the hook; anything else is dispatched, then its flow is
        looked up (it may be new) to count the frame and tell the hook."""
        if ts >= self._acct_end:
            self._roll(ts)
        seg = decode(linktype, frame, self.frags, ts)
        if seg is not None and seg[0] == 6 and self._since_sweep < _SWEEP_EVERY - 1:
            _proto, src, dst, data, off, end, missing = seg
            if end - off >= 20:
                sport, dport, seq, ack, doff, flags = _tcp_hdr(data, off)
                hit = self.tcp.by_key.get((src, sport, dst, dport))
                start = off + ((doff >> 4) << 2)
                if hit is not None and not flags & SYN and start <= end:
                    self.packets += 1
                    self._since_sweep += 1
                    self.now = ts
                    conn, d = hit
                    if self.accounting is not None:
                        conn.packets[d] += 1
                        conn.wire[d] += wire
                        if conn.hs:  # between the SYN-ACK and the client's ACK
                            self._tcp_timing(conn, d, flags, ts)
                    conn.segment(d, seq, ack, flags, data[start:end], missing, ts)
                    hook = self.on_frame
                    if hook is not None:
                        hook(ts, linktype, frame, wire, self._prefix + "f" + str(conn.index))
                    return
        self._dispatch(ts, seg)
        self._after(ts, linktype, frame, wire, seg)

    def _after(self, ts: int, linktype: int, frame: bytes, wire: int, seg: L4 | None) -> None:
        """After `_dispatch`: count the frame to its flow and hand it to the hook (by the flow
        tables' key), with the held fragments of its datagram when it completed one."""
        hook = self.on_frame
        if seg is None:
            key = frag_key(linktype, frame) if hook is not None else None
            if key is not None:  # a fragment of a datagram not whole yet: its flow is not known
                self.held_frags.hold(key, ts, linktype, frame, wire)
            return
        proto, src, dst, data, off, end, _missing = seg
        held = []
        if data is not frame and hook is not None:  # reassembled from fragments: the earlier ones were held
            key = frag_key(linktype, frame)
            if key is not None:
                held = self.held_frags.release(key)
        if end - off < 4 or proto not in (IPPROTO_TCP, IPPROTO_UDP):
            return
        k = (src, data[off] << 8 | data[off + 1], dst, data[off + 2] << 8 | data[off + 3])
        hit = (self.tcp if proto == IPPROTO_TCP else self.udp).by_key.get(k)
        if hit is None:
            return
        flow, d = hit
        if self.accounting is not None:
            flow.packets[d] += 1
            flow.wire[d] += wire
            if held:  # the datagram's earlier fragments, on the wire before it
                flow.packets[d] += len(held)
                flow.wire[d] += sum(h[3] for h in held)
            if proto == IPPROTO_TCP and end - off >= 14 and isinstance(flow, TCPConn):
                self._tcp_timing(flow, d, data[off + 13], ts)
        if hook is None:
            return
        flow_id = self._prefix + "f" + str(flow.index)
        for h_ts, h_linktype, h_frame, h_wire in held:
            hook(h_ts, h_linktype, h_frame, h_wire, flow_id)
        hook(ts, linktype, frame, wire, flow_id)

    def _tcp_timing(self, conn: TCPConn, d: int, flags: int, ts: int) -> None:
        """The handshake's round trip at the capture point: from the client's SYN (the last one
        before the SYN-ACK, so a retransmitted SYN does not count its timeout) to the client's first
        ACK after the SYN-ACK."""
        rec = conn.acct
        if rec is None or rec.rtt_ns >= 0:
            return
        if flags & SYN:
            if not flags & ACK:
                if d == rec.client and not conn.hs:
                    rec.syn_ts = ts
            elif d != rec.client and rec.syn_ts is not None:
                conn.hs = True
        elif conn.hs and d == rec.client and flags & ACK:
            conn.hs = False
            if rec.syn_ts is not None:
                rec.rtt_ns = max(ts - rec.syn_ts, 0)

    def _roll(self, now: int) -> None:
        """An accounting interval ends (or the first one starts): fold the flows into aggregates."""
        acct = self.accounting
        if acct is None:
            return
        if acct.stopped:
            self._acct_end = _NEVER
            return
        self._acct_end = acct.roll(now, self._counted_flows())

    def _counted_flows(self) -> Iterator[TCPConn | UDPFlow]:
        yield from self.tcp.by_index.values()
        yield from self.udp.by_index.values()

    def _count(self, n: int, ts: int) -> None:
        """Bring the packet counters up to date after ``n`` packets of the inlined path."""
        self.packets += n
        self._since_sweep += n
        self.now = ts

    def _dispatch(self, ts: int, seg: L4 | None) -> None:
        self.packets += 1
        self.now = ts
        self._since_sweep += 1
        if self._since_sweep >= _SWEEP_EVERY:
            self._sweep(ts)
        if seg is None:
            self.undecoded += 1
            return
        if seg[0] != IPPROTO_TCP:
            if seg[0] == IPPROTO_UDP and self.udp_analyzers:
                self._udp(ts, seg)
            else:
                self.undecoded += 1
            return
        _proto, src, dst, data, off, end, missing = seg
        if end - off < 20:
            self.undecoded += 1
            return
        sport, dport, seq, ack, doff, flags = _tcp_hdr(data, off)
        start = off + ((doff >> 4) << 2)
        if start > end:  # header cut by the snap length: sequence space lost is unknown here
            payload = b""
            missing = max(missing - (start - end), 0)
        else:
            payload = data[start:end]
        hit = self.tcp.by_key.get((src, sport, dst, dport))
        if hit is None or (flags & SYN and not flags & ACK and self._reused(hit, seq)):
            conn = self._new_conn(src, sport, dst, dport, flags, ts)
            d = 0
        else:
            conn, d = hit
        conn.segment(d, seq, ack, flags, payload, missing, ts)

    # -- connections ---------------------------------------------------------------------------

    @staticmethod
    def _reused(hit: tuple[TCPConn, int], seq: int) -> bool:
        """A SYN on a known 4-tuple starts a new connection unless it repeats the first one's SYN."""
        conn, d = hit
        nxt = conn.dirs[d].next_seq
        return conn.closed or nxt is None or nxt != (seq + 1) & 0xFFFFFFFF

    def _new_conn(self, src: bytes, sport: int, dst: bytes, dport: int, flags: int, ts: int) -> TCPConn:
        old = self.tcp.by_key.get((src, sport, dst, dport))
        if old is not None:
            self.tcp.drop(old[0], ts)
        if len(self.tcp) >= self.limits.max_connections:
            self.tcp.evict(ts)
        self._conn_index += 1
        idx = self._conn_index
        handshake = bool(flags & SYN) and not flags & ACK
        a = Endpoint(ip=ip_text(src), port=sport)
        b = Endpoint(ip=ip_text(dst), port=dport)
        ctx = ConnContext(
            flow_id=f"{self.source}/f{idx}",
            endpoints=(a, b),
            emit=self._emit,
            handshake_seen=handshake,
            limits=self.limits,
            budget=self.body_budget,
        )
        conn = TCPConn(None, self.limits, self.ooo_budget, idx)  # type: ignore[arg-type]
        port_hint = min(sport, dport)
        if self.accounting is not None:
            client = tcp_client(flags, sport, dport)
            acct = conn.acct = FlowRecord("tcp", client, a.ip or "", sport, b.ip or "", dport, ts)
            emit = self._emit

            def emit_counted(call: Call) -> None:
                acct.called(call.protocol)  # gRPC over an HTTP/2 connection: its flows say grpc too
                emit(call)

            ctx.emit = emit_counted
        noted = self._noted

        def decided(dissector: Dissector) -> None:
            conn.sink = dissector
            if conn.acct is not None:
                conn.acct.decided(None if dissector is IGNORED else noted[0])

        def switch(h: Handoff) -> None:
            """A dissector hands the connection on (h2c Upgrade, CONNECT): see `base.Handoff`."""
            new: Dissector
            if h.protocol:
                analyzer = next((a for a in self.analyzers if a.name == h.protocol), None)
                if analyzer is None:
                    return
                new = analyzer.new(ctx, h)
                if conn.acct is not None:
                    conn.acct.decided(h.protocol)
            else:  # a tunnel: whatever it carries starts clean, like a fresh connection
                new = Detecting(
                    dataclasses.replace(ctx, handshake_seen=True), self.analyzers, port_hint, decided
                )
            conn.sink = new
            first = h.client_dir if h.client_dir is not None else 0
            for d in (first, 1 - first):
                if h.pending[d]:
                    conn.sink.feed(d, h.pending[d], h.ts)

        ctx.switch = switch
        conn.sink = Detecting(ctx, self.analyzers, port_hint, decided)
        conn.last_ts = ts
        self.tcp.add(conn, src, sport, dst, dport)
        return conn

    def _udp(self, ts: int, seg: L4) -> None:
        _proto, src, dst, data, off, end, missing = seg
        if end - off < 8:
            self.undecoded += 1
            return
        sport = data[off] << 8 | data[off + 1]
        dport = data[off + 2] << 8 | data[off + 3]
        hit = self.udp.by_key.get((src, sport, dst, dport))
        if hit is None:
            flow = self._new_udp(src, sport, dst, dport, ts)
            d = 0
        else:
            flow, d = hit
        flow.datagram(d, data[off + 8 : end], missing, ts)

    def _new_udp(self, src: bytes, sport: int, dst: bytes, dport: int, ts: int) -> UDPFlow:
        if len(self.udp) >= self.limits.max_connections:
            self.udp.evict(ts)
        self._conn_index += 1
        idx = self._conn_index
        a = Endpoint(ip=ip_text(src), port=sport)
        b = Endpoint(ip=ip_text(dst), port=dport)
        ctx = ConnContext(
            flow_id=f"{self.source}/f{idx}",
            endpoints=(a, b),
            emit=self._emit,
            transport="udp",
            handshake_seen=True,  # every datagram starts a message
            limits=self.limits,
            budget=self.body_budget,
        )
        flow = UDPFlow(IGNORED, idx)
        if self.accounting is not None:
            client = udp_client(sport, dport)
            flow.acct = FlowRecord("udp", client, a.ip or "", sport, b.ip or "", dport, ts)
        noted = self._noted

        def decided(dissector: Dissector) -> None:
            flow.sink = dissector
            if flow.acct is not None:
                flow.acct.decided(None if dissector is IGNORED else noted[0])

        flow.sink = Detecting(ctx, self.udp_analyzers, min(sport, dport), decided)
        flow.last_ts = ts
        self.udp.add(flow, src, sport, dst, dport)
        return flow

    def tick(self, now_ns: int) -> None:
        """Live capture: time passes without packets. Close what went idle by ``now_ns`` (a clock in
        the packets' time base), so a quiet connection's last calls come out; they land in ``self.out``."""
        if now_ns > self.now:
            self.now = now_ns
        if self.now >= self._acct_end:
            self._roll(self.now)
        self._sweep(self.now)
        if self.plain is not None:
            self.plain.tick(self.now)

    def _sweep(self, now: int) -> None:
        """Close idle flows and forget finished connections whose linger time is over."""
        self._since_sweep = 0
        self.tcp.sweep(now, now - self.limits.idle_timeout_ns, now - LINGER_NS)
        self.udp.sweep(now, now - self.limits.udp_idle_timeout_ns)
        self.frags.expire(now)

    def finish(self) -> None:
        """End of input: every flow is closed and its pending calls flushed, oldest first. Flow
        accounting emits its last, partial interval first (with the open flows as active)."""
        if self.accounting is not None:
            self.accounting.stop(self.now, self._counted_flows())
            self._acct_end = _NEVER
        for conn in self.tcp.flows():
            self.tcp.drop(conn, self.now)
        for flow in self.udp.flows():
            self.udp.drop(flow, self.now)
        if self.plain is not None:
            self.plain.finish(self.now)

    # -- output --------------------------------------------------------------------------------

    def _emit(self, call: Call) -> None:
        self._name(call)
        if self.plain is not None and call.protocol == "tls":
            self.plain.hold_opaque(call)  # it may yet be replaced by its decrypted calls
            return
        self.out.append(call)

    def _name(self, call: Call) -> None:
        """Number the call (its id) and fill in its latency."""
        self._calls = n = self._calls + 1
        call.id = self._prefix + str(n).zfill(9) if self._call_id is None else self._call_id(n)
        if call.request_ts is not None and call.response_ts is not None:  # Call.finish(), inlined
            call.latency_ns = call.response_ts - call.request_ts

    def _new_flow_id(self) -> str:
        self._conn_index += 1
        return f"{self.source}/f{self._conn_index}"

    @property
    def calls(self) -> int:
        return self._calls

    def buffered_bytes(self) -> int:
        """Reassembly bytes held right now (for memory-bound tests and `doctor`)."""
        return sum(c.buffered_bytes() for c in self.tcp.flows())


def file_source_id(path: str | os.PathLike[str], keylog: KeyLog | None = None) -> str:
    """The id prefix of an imported capture: the first 12 hex digits of the file's sha256.

    Dissected with a key log given apart from the file, the same capture yields other calls (the
    decrypted ones instead of opaque ``tls`` calls), so they must not share ids with a plain import:
    then the prefix is the sha256 of the file's digest and the key log's `KeyLog.fingerprint`.
    Secrets inside the file (pcapng secrets blocks) are part of the file and change nothing.
    """
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    if keylog is not None and len(keylog):
        return hashlib.sha256(h.digest() + keylog.fingerprint()).hexdigest()[:12]
    return h.hexdigest()[:12]


def file_engine(
    path: str | os.PathLike[str],
    limits: Limits | None = None,
    keylog: KeyLog | None = None,
    on_frame: FrameHook | None = None,
) -> tuple[CaptureReader, Engine, KeyLog]:
    """A reader and an engine for a capture file, with TLS decryption wired in.

    The key log (``keylog``, or an empty one) also receives the secrets of the file's pcapng
    Decryption Secrets Blocks as the reader meets them, so a capture that carries its own keys is
    decrypted without one. Raises `CaptureError` when the file cannot be read.
    """
    log = keylog if keylog is not None else KeyLog()

    def secrets(kind: int, data: bytes) -> None:
        if kind == SECRETS_TYPE_TLS:
            log.add_text(data, source="pcapng secrets block")

    reader = CaptureReader(path, on_secrets=secrets)  # the clear errors for a file that is not there
    try:
        source = file_source_id(path, keylog)
    except OSError as e:
        reader.close()
        raise CaptureError(f"{os.fspath(path)}: cannot read ({e.strerror or e})") from None
    engine = Engine(source, limits, analyzers=default_analyzers(log), on_frame=on_frame)
    return reader, engine, log


def dissect_path(
    path: str | os.PathLike[str], limits: Limits | None = None, keylog: KeyLog | None = None
) -> Iterator[Call]:
    """Every call in a capture file, in the order they complete. Raises `CaptureError` early.

    TLS is decrypted with ``keylog`` and with the secrets the file itself carries (pcapng).
    """
    reader, engine, _log = file_engine(path, limits, keylog)
    try:
        yield from engine.run(reader)
    finally:
        reader.close()
