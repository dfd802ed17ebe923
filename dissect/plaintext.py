"""Decrypted TLS streams (from the eBPF tracer) joined to the connections the capture sees.

The node's TLS tracer hands over plaintext as the process saw it: one chunk per SSL_read/SSL_write,
with the process, its SSL object, which way the bytes went and the socket's local and remote
address when the kernel side could tell. This module turns those chunks into calls with the same
dissectors a cleartext TCP connection gets, and reconciles them with the packet side:

- **One conversation per TLS connection.** Chunks are filed by the connection's address pair
  (either order), so when both ends are traced on this node (curl and nginx on one host) the first
  SSL object to deliver bytes feeds the dissector and the other end's bytes — the same bytes, seen
  from the other side — only name the other process. Without addresses a chunk is filed by its
  (pid, SSL object).
- **Roles.** The tracer says client or server when it saw the handshake being started
  (SSL_connect / SSL_set_connect_state and the accept twins); otherwise the side that writes first
  is the client, which holds for HTTP, HTTP/2 and gRPC.
- **The opaque call goes.** The packet side still dissects the encrypted bytes and, at the end of
  the connection, emits its one ``tls`` call. For a connection whose plaintext was traced that call
  is dropped (counted in ``replaced``), and its SNI goes onto the decrypted calls instead.
- **Holding back, briefly.** The two sides arrive on separate paths (the BPF ring buffer and the
  AF_PACKET ring, whose blocks are handed over up to a few milliseconds late), so neither can wait
  for the other in order. Decrypted calls and ``tls`` calls are both held for `HOLD_NS` and settled
  when released: a held ``tls`` call whose connection turned out to be decrypted is dropped; a
  decrypted call takes the SNI from the live connection's ClientHello, from a held or recent ``tls``
  call of the same address pair, or stays without one.
- **Export.** With a frame hook, each decrypted connection also produces synthetic TCP frames
  carrying the plaintext (`dissect.synthetic`) under its own flow id, so the pcap of a decrypted
  call shows the conversation as Wireshark would show a cleartext one (the encrypted frames stay
  under the packet side's flow id).

Sans-IO: this is fed by the capture layer and knows nothing of eBPF or sockets.
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from dissect.base import Analyzer, Budget, ConnContext, Dissector, Limits
from dissect.detect import Detecting
from dissect.flows import FlowTable
from dissect.model import Call, Endpoint
from dissect.tcp import TCPConn

if TYPE_CHECKING:
    from dissect.synthetic import SyntheticTcp

HOLD_NS = 500_000_000  # how long decrypted and opaque TLS calls wait for the other side
RECENT_MAX = 65_536  # address pairs remembered after their connection went (replaced / SNI)
RECENT_NS = 120 * 1_000_000_000
MAX_CONNS = 50_000  # decrypted connections tracked at once; the least recently active are closed
WRITE, READ = 0, 1  # a chunk's direction as the traced process saw it
UNKNOWN, CLIENT, SERVER = 0, 1, 2  # the traced process's role

Addr = tuple[str, int]
PairKey = tuple[Addr, Addr]  # the two ends, sorted
FrameHook = Callable[[int, int, bytes, int, str], None]


def pair_key(a: Addr, b: Addr) -> PairKey:
    return (a, b) if a <= b else (b, a)


@dataclass(slots=True)
class Side:
    """A traced process at one end of a decrypted connection."""

    pid: int
    comm: str
    ssl: int
    local: Addr | None


@dataclass(slots=True, eq=False)
class PlainConn:
    """One decrypted TLS connection: its dissector, which traced side feeds it, and its frames."""

    key: object  # the address pair, or (pid, SSL object) when the addresses are unknown
    pair: PairKey | None
    ctx: ConnContext
    sink: Dissector
    feeder: Side
    feeder_is_client: bool
    last_ts: int
    synth: SyntheticTcp | None = None
    others: list[Side] = field(default_factory=list)
    closed: bool = False
    sni: str | None = None  # what the client set (the tracer saw SSL_set_tlsext_host_name)


@dataclass(slots=True)
class PlaintextStats:
    chunks: int = 0
    bytes: int = 0
    duplicate_chunks: int = 0  # the other end of a connection already fed by one side
    cut_bytes: int = 0  # plaintext the tracer could not copy (reported as gaps)
    connections: int = 0
    calls: int = 0
    replaced: int = 0  # opaque tls calls dropped because their plaintext was dissected
    evicted: int = 0


class Plaintext:
    """Decrypted connections of one engine (see the module docstring)."""

    def __init__(
        self,
        *,
        analyzers: Sequence[Analyzer],
        limits: Limits,
        budget: Budget,
        new_flow_id: Callable[[], str],
        name: Callable[[Call], None],
        clock: Callable[[], int],
        out: list[Call],
        packets: FlowTable[TCPConn],
        on_frame: FrameHook | None = None,
    ) -> None:
        self.analyzers = [a for a in analyzers if a.name != "tls"]  # it is plaintext now
        self.limits = limits
        self.budget = budget
        self.new_flow_id = new_flow_id
        self.name = name  # gives a call its id (the engine's numbering)
        self.clock = clock  # the engine's time (packets' time base): what holds run on
        self.out = out
        self.packets = packets  # the packet side's TCP connections, for the SNI
        self.on_frame = on_frame
        self.conns: OrderedDict[object, PlainConn] = OrderedDict()  # least recently active first
        self.by_ssl: dict[tuple[int, int], PlainConn] = {}
        # (release at, call, address pair, its decrypted connection or None for a tls call)
        self.held: list[tuple[int, Call, PairKey | None, PlainConn | None]] = []
        self.decrypted: OrderedDict[PairKey, int] = OrderedDict()  # pair -> last seen ts
        self.sni: OrderedDict[PairKey, str] = OrderedDict()  # from tls calls that went by
        self.sni_by_ssl: OrderedDict[tuple[int, int], str] = OrderedDict()  # set before any byte
        self.stats = PlaintextStats()

    # -- input ---------------------------------------------------------------------------------

    def chunk(
        self,
        ts: int,
        *,
        pid: int,
        comm: str,
        ssl: int,
        direction: int,
        role: int,
        local: Addr | None,
        remote: Addr | None,
        data: bytes,
        cut: int = 0,
    ) -> None:
        """Plaintext one process read (``direction`` READ) or wrote (WRITE) on one SSL object;
        ``cut`` bytes of that call after ``data`` were not copied and count as a gap."""
        st = self.stats
        st.chunks += 1
        st.bytes += len(data)
        conn = self.by_ssl.get((pid, ssl))
        if conn is None:
            conn = self._attach(ts, pid, comm, ssl, direction, role, local, remote)
            if conn is None:  # the other end of a connection already fed by one side
                st.duplicate_chunks += 1
                return
        elif conn.feeder.ssl != ssl or conn.feeder.pid != pid:
            st.duplicate_chunks += 1
            return
        if conn.feeder.local is None and local is not None:
            conn.feeder.local = local
        conn.last_ts = ts
        self.conns.move_to_end(conn.key)
        if conn.pair is not None:
            self._mark_decrypted(conn.pair, ts)
        d = self._conn_direction(conn, direction)
        if data:
            conn.sink.feed(d, data, ts)
            if conn.synth is not None and self.on_frame is not None:
                self._frames(conn, conn.synth.data(d, data, ts))
        if cut > 0:
            st.cut_bytes += cut
            conn.sink.gap(d, cut, ts)
            if conn.synth is not None and self.on_frame is not None:
                self._frames(conn, conn.synth.gap(d, cut, ts))

    def server_name(self, pid: int, ssl: int, name: str) -> None:
        """A traced client set the SNI of this SSL object (before its handshake, usually)."""
        conn = self.by_ssl.get((pid, ssl))
        if conn is not None:
            conn.sni = name
            return
        self.sni_by_ssl[(pid, ssl)] = name
        self.sni_by_ssl.move_to_end((pid, ssl))
        if len(self.sni_by_ssl) > RECENT_MAX:
            self.sni_by_ssl.popitem(last=False)

    def free(self, ts: int, pid: int, ssl: int) -> None:
        """The SSL object went away (SSL_free): its connection's last calls come out."""
        conn = self.by_ssl.pop((pid, ssl), None)
        if conn is None:
            return
        if conn.feeder.pid == pid and conn.feeder.ssl == ssl:
            self._close(conn, ts)
        else:
            conn.others = [s for s in conn.others if not (s.pid == pid and s.ssl == ssl)]

    # -- calls on their way out ----------------------------------------------------------------

    def hold_opaque(self, call: Call) -> None:
        """A ``tls`` call from the packet side: held, then dropped if its plaintext was dissected."""
        key = _call_pair(call)
        if key is not None and call.sni:
            self._remember_sni(key, call.sni)
        self.held.append((self.clock() + HOLD_NS, call, key, None))

    def tick(self, now: int) -> None:
        """Release what has been held long enough; close decrypted connections idle too long."""
        idle_before = now - self.limits.idle_timeout_ns
        while self.conns:
            conn = next(iter(self.conns.values()))
            if conn.last_ts >= idle_before:
                break
            self._close(conn, now)
        self._release(now)
        limit = now - RECENT_NS
        while self.decrypted and next(iter(self.decrypted.values())) < limit:
            self.decrypted.popitem(last=False)

    def finish(self, now: int) -> None:
        """End of input: close every decrypted connection and release everything held."""
        for conn in list(self.conns.values()):
            self._close(conn, now)
        self._release(None)

    # -- internals -----------------------------------------------------------------------------

    def _attach(
        self,
        ts: int,
        pid: int,
        comm: str,
        ssl: int,
        direction: int,
        role: int,
        local: Addr | None,
        remote: Addr | None,
    ) -> PlainConn | None:
        side = Side(pid, comm, ssl, local)
        pair = pair_key(local, remote) if local is not None and remote is not None else None
        key: object = pair if pair is not None else (pid, ssl)
        sni = self.sni_by_ssl.pop((pid, ssl), None)
        conn = self.conns.get(key)
        if conn is not None and not conn.closed:
            conn.others.append(side)
            self.by_ssl[(pid, ssl)] = conn
            self._name_sides(conn)
            if sni is not None:
                conn.sni = sni
            return None
        is_client = role == CLIENT or (role == UNKNOWN and direction == WRITE)
        if local is not None and remote is not None:
            client, server = (local, remote) if is_client else (remote, local)
            eps = (Endpoint(ip=client[0], port=client[1]), Endpoint(ip=server[0], port=server[1]))
        else:
            eps = (Endpoint(), Endpoint())
        ctx = ConnContext(
            flow_id=self.new_flow_id(),
            endpoints=eps,
            emit=self._emit_plain,  # replaced below, once the connection exists
            handshake_seen=True,  # the tracer sees every byte from the first SSL call on
            limits=self.limits,
            budget=self.budget,
        )
        port_hint = eps[1].port
        conn = PlainConn(key, pair, ctx, None, side, is_client, ts, sni=sni)  # type: ignore[arg-type]
        ctx.emit = lambda call: self._emit_plain(call, conn)

        def decided(dissector: Dissector) -> None:
            conn.sink = dissector

        conn.sink = Detecting(ctx, self.analyzers, port_hint, decided)
        if len(self.conns) >= MAX_CONNS:
            oldest = next(iter(self.conns.values()))
            self.stats.evicted += 1
            self._close(oldest, ts)
        self.conns[key] = conn
        self.by_ssl[(pid, ssl)] = conn
        self.stats.connections += 1
        self._name_sides(conn)
        if self.on_frame is not None and local is not None and remote is not None:
            c, s = eps
            assert c.ip is not None and c.port is not None and s.ip is not None and s.port is not None
            from dissect.synthetic import SyntheticTcp  # only when frames are wanted (export)

            try:
                conn.synth = SyntheticTcp(c.ip, c.port, s.ip, s.port, ts)
            except ValueError:  # an address the frame builder cannot write: no export frames
                conn.synth = None
            if conn.synth is not None:
                self._frames(conn, conn.synth.open(ts))
        return conn

    @staticmethod
    def _conn_direction(conn: PlainConn, direction: int) -> int:
        """The connection's direction (0 client->server) of bytes the feeder read or wrote."""
        wrote = direction == WRITE
        return 0 if wrote == conn.feeder_is_client else 1

    def _name_sides(self, conn: PlainConn) -> None:
        """Put the traced processes' names on the endpoints they are (by local address)."""
        client, server = conn.ctx.endpoints
        for side in (conn.feeder, *conn.others):
            if side.local is not None:
                ep = client if (client.ip, client.port) == side.local else server
                if (ep.ip, ep.port) != side.local:
                    continue
            elif side is conn.feeder:
                ep = client if conn.feeder_is_client else server
            else:
                continue
            ep.pid, ep.process = side.pid, side.comm

    def _close(self, conn: PlainConn, ts: int) -> None:
        if conn.closed:
            return
        conn.closed = True
        self.conns.pop(conn.key, None)
        for side in (conn.feeder, *conn.others):
            if self.by_ssl.get((side.pid, side.ssl)) is conn:
                del self.by_ssl[(side.pid, side.ssl)]
        conn.sink.close(ts)
        if conn.synth is not None and self.on_frame is not None:
            self._frames(conn, conn.synth.close(ts))

    def _frames(self, conn: PlainConn, frames: list[tuple[int, int, bytes]]) -> None:
        hook = self.on_frame
        assert hook is not None
        flow = conn.ctx.flow_id
        for ts, linktype, frame in frames:
            hook(ts, linktype, frame, len(frame), flow)

    def _emit_plain(self, call: Call, conn: PlainConn | None = None) -> None:
        """A decrypted connection's dissector finished a call: mark it and hold it."""
        self.name(call)
        call.tls = True
        if conn is not None and conn.sni is not None:
            call.sni = conn.sni
        call.info["tls_source"] = "ebpf"
        self.stats.calls += 1
        self.held.append((self.clock() + HOLD_NS, call, _call_pair(call), conn))

    def _mark_decrypted(self, key: PairKey, ts: int) -> None:
        self.decrypted[key] = ts
        self.decrypted.move_to_end(key)
        if len(self.decrypted) > RECENT_MAX:
            self.decrypted.popitem(last=False)

    def _remember_sni(self, key: PairKey, sni: str) -> None:
        self.sni[key] = sni
        self.sni.move_to_end(key)
        if len(self.sni) > RECENT_MAX:
            self.sni.popitem(last=False)

    def _live_sni(self, key: PairKey) -> str | None:
        """The SNI of the packet side's live connection between the pair, if it saw the hello."""
        (ip_a, port_a), (ip_b, port_b) = key
        try:
            a, b = ipaddress.ip_address(ip_a).packed, ipaddress.ip_address(ip_b).packed
        except ValueError:
            return None
        hit = self.packets.by_key.get((a, port_a, b, port_b))
        if hit is None:
            return None
        session = getattr(hit[0].sink, "session", None)
        sni = getattr(session, "sni", None)
        return sni if isinstance(sni, str) else None

    def _release(self, now: int | None) -> None:
        """Settle held calls due by ``now`` (all of them when None), oldest first, into ``out``."""
        if not self.held:
            return
        keep: list[tuple[int, Call, PairKey | None, PlainConn | None]] = []
        for held in self.held:
            due, call, key, conn = held
            if now is not None and due > now:
                keep.append(held)
                continue
            if call.protocol == "tls" and not call.info.get("tls_source"):
                if key is not None and key in self.decrypted:
                    self.stats.replaced += 1
                    continue
                self.out.append(call)
                continue
            if call.sni is None and conn is not None:
                call.sni = conn.sni  # the client's SSL object may have joined after this call ended
            if key is not None and call.sni is None:
                call.sni = self.sni.get(key) or self._live_sni(key)
            self.out.append(call)
        self.held = keep


def _call_pair(call: Call) -> PairKey | None:
    s, d = call.src, call.dst
    if s.ip is None or s.port is None or d.ip is None or d.port is None:
        return None
    return pair_key((s.ip, s.port), (d.ip, d.port))
