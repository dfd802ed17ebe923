"""Synthetic TCP frames that carry decrypted TLS plaintext, so a pcap export shows the conversation.

The eBPF TLS tracer sees plaintext chunks of a connection (its 4-tuple, the direction, a timestamp),
never the TCP segments that carried them encrypted. For `podshark export` the worker turns those
chunks into a TCP conversation of its own — same addresses and ports, the plaintext as payload — and
puts its frames into the packet spool, so Wireshark (or `podshark dissect`) reads the decrypted
exchange like any other capture::

    conn = SyntheticTcp("10.1.0.7", 51234, "10.96.0.12", 443, ts)
    frames = conn.open(ts)                          # SYN, SYN/ACK, ACK
    frames += conn.data(0, b"GET / HTTP/1.1...", ts)  # client -> server
    frames += conn.gap(1, 1 << 20, ts)              # the tracer cut a huge write: nothing sent
    frames += conn.close(ts)                        # FIN/ACK both ways
    # each frame: (ts ns, LINKTYPE_ETHERNET, Ethernet/IPv4|IPv6/TCP bytes); orig_len = len(frame)

What the frames look like, and why:

- Ethernet (linktype 1) with IPv4 or IPv6, so the frames share the export's Ethernet interface with
  the captured ones. IPv4-mapped IPv6 addresses (what a dual-stack socket reports) are written as
  IPv4, which is what was on the wire. IP and TCP checksums are correct (Wireshark's checksum
  validation passes), TTL / hop limit 64, IPv4 DF set with an incrementing id per direction, IPv6
  flow label fixed per direction — what a Linux sender does.
- **The marker.** Every MAC address starts with ``02:70:73`` (locally administered, then "ps"),
  followed by three bytes hashed from the IP address (stable: one host, one MAC). Real NICs carry
  vendor (universally administered) addresses; random local ones (veth, VMs) match the prefix at
  both ends of a frame with odds of about 1 in 10**13. It survives any rewrite of the IP layer's
  fields, and costs nothing per frame. Wireshark display filter for synthetic frames:
  ``eth.src[0:3] == 02:70:73``; code: `is_synthetic`. (A pcapng packet comment cannot travel
  through the spool, which stores bare frames; an IP-level marker such as a fixed IPv4 id has no
  IPv6 counterpart and would make every frame look like an IP-id anomaly.)
- Segments carry at most ``mss`` bytes, default `MAX_SEGMENT` = 65495: the largest that fits an
  IPv4 datagram (65535 - 20 - 20; IPv6 would allow 20 more, one size keeps it simple), which is
  what Linux loopback uses, so Wireshark users know these 64 KiB segments. Fewer, larger frames make
  the spool and the capture thread cheaper (a 200 KB response is 4 frames, not 140), and Wireshark
  reassembles HTTP, HTTP/2 and gRPC across segments of any size. The SYN and SYN/ACK advertise this
  MSS; no window scaling, a constant window of 65535.
- ACKs: every segment acknowledges everything the other side sent, so a request/response exchange
  needs no extra frames. A pure ACK from the receiver is added only when a segment would otherwise
  take the bytes in flight to the advertised window (a long one-way transfer): it goes just before
  that segment, so the window is never reached and Wireshark flags neither "window full" nor
  duplicate ACKs (an ACK is sent only when it acknowledges new bytes). One ACK per ~64 KiB is what
  delayed ACKs look like. After a gap the ACK goes just after the segment instead (an ACK before it
  would cover only unseen bytes and draw one more Wireshark warning).
- `gap` advances the sequence number without sending anything. The next segment of that direction
  is flagged by Wireshark as "TCP Previous segment not captured", and the other side's next ACK as
  "ACKed segment that wasn't captured" (it did receive those bytes); `podshark dissect` flags the
  call ``gap``. Per GiB of one gap, an empty segment at the new sequence number and the other
  side's ACK of it are sent, so neither sequence nor ACK numbers jump by 2**31 or more between two
  frames (analyzers compare them modulo 2**32 and would read a larger jump as a retransmission).
- Timestamps never go backwards within a connection (the tracer's events may arrive a little out of
  order between CPUs): a frame older than the previous one takes the previous one's timestamp.
- Sequence numbers, IPv4 ids and flow labels are derived from the 4-tuple and the initial
  timestamp: the same input gives the same bytes (reproducible exports and tests), and a later
  connection on the same 4-tuple starts elsewhere in sequence space, as a real one would.

Cost: no buffering (each call returns the frames of what it was given and keeps only counters), one
``struct.pack`` per header and one pass over the payload for the TCP checksum
(``int.from_bytes(...) % 0xFFFF``: the ones' complement sum, as 2**16 = 1 modulo 0xFFFF), about
2 µs per KiB — called per plaintext chunk in the capture thread.

Reading these frames in Wireshark (tshark 4.0; tests/dissect/test_synthetic.py checks each point):

- Plaintext HTTP on a port Wireshark does not give to TLS (8080, 80...) is decoded as is.
- HTTP/1.x on 443 is decoded without any setting: the TLS dissector that owns port 443 declines
  bytes that are not TLS records, and TCP's heuristics hand them to HTTP. Each message carries a
  "Unencrypted HTTP protocol detected over encrypted port" warning, which here is simply true.
- HTTP/2 (and gRPC) on 443 needs Decode As: the TLS dissector takes the server's binary frames for
  "Continuation Data", and Wireshark 4.0 has no TCP heuristic for HTTP/2 (its HTTP/2 heuristics sit
  under TLS and HTTP only; ``tcp.try_heuristic_first`` does not help). ``-d tcp.port==443,http`` in
  tshark (Analyze > Decode As... > HTTP in Wireshark) covers both versions: HTTP hands the
  connection preface on to HTTP/2. ``-d tcp.port==443,http2`` works for HTTP/2 alone.
"""

from __future__ import annotations

import hashlib
import ipaddress
import struct

from dissect.packet import LINKTYPE_ETHERNET

#: (ts ns, linktype, frame bytes); the frame is never cut, so its length on the wire is len(frame)
Frame = tuple[int, int, bytes]

MAX_SEGMENT = 65535 - 20 - 20  # largest TCP payload in one IPv4 datagram (and within IPv6's)
WINDOW = 65535  # advertised by both sides, unscaled
TTL = 64
MAC_PREFIX = b"\x02ps"  # 02:70:73 — locally administered; marks every synthetic frame
GAP_STEP = 1 << 30  # per this many gap bytes an empty segment + its ACK: no jump reaches 2**31
MAX_GAP = 1 << 40  # one gap() larger than this is a caller bug, not a cut TLS write (those are < 2 GiB)

FIN, SYN, PSH, ACK = 0x01, 0x02, 0x08, 0x10
_M32 = 0xFFFFFFFF
_ETH_IPV4 = b"\x08\x00"
_ETH_IPV6 = b"\x86\xdd"

_tcp = struct.Struct("!HHIIBBHHH")  # ports, seq, ack, data offset, flags, window, checksum, urgent
_ip4 = struct.Struct("!BBHHHBBH4s4s")  # ver/ihl, tos, total length, id, DF/frag, ttl, proto, checksum
_ip6 = struct.Struct("!IHBB16s16s")  # version/class/flow, payload length, next header, hop limit


def _mac(addr: bytes) -> bytes:
    """The synthetic MAC of an IP address: the marker prefix, then 3 bytes hashed from the address."""
    return MAC_PREFIX + hashlib.blake2s(addr, digest_size=3, person=b"psk-mac").digest()


def _cksum(partial: int) -> int:
    """The Internet checksum from a sum of 16-bit words taken modulo 0xFFFF.

    The ones' complement sum R of words that are not all zero lies in 1..0xFFFF and is congruent
    to the plain sum modulo 0xFFFF, so R = s, or 0xFFFF when s is 0; the checksum is ~R.
    """
    s = partial % 0xFFFF
    return 0xFFFF - s if s else 0


def _packed(text: str, role: str) -> bytes:
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        raise ValueError(f"{role} address {text!r} is not an IPv4 or IPv6 address") from None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped.packed  # a dual-stack socket's view of an IPv4 peer
    return addr.packed


def is_synthetic(linktype: int, frame: bytes) -> bool:
    """Whether a frame was made here (both MAC addresses carry the marker prefix)."""
    return linktype == LINKTYPE_ETHERNET and frame[0:3] == MAC_PREFIX and frame[6:9] == MAC_PREFIX


class SyntheticTcp:
    """One synthetic TCP connection; direction 0 is client -> server, 1 is server -> client.

    Every method returns the frames to store, in order, and keeps nothing of the payload. Calls
    that make no sense at that point are harmless: `open` after data was sent returns nothing (the
    conversation then starts mid-stream, as a capture that began late would), `data` and `gap`
    after `close` return nothing and count the bytes in ``late_bytes``, a second `close` returns
    nothing. A connection never opened is valid: its frames start mid-stream.

    Raises ValueError for arguments that are a programming error: an address that is not IP, client
    and server of different families, a port outside 0..65535, a direction other than 0 or 1, a
    negative or absurd gap, an mss outside 1..MAX_SEGMENT.
    """

    __slots__ = (
        "_acked",
        "_ends",
        "_eth",
        "_ip6_word",
        "_ip_const",
        "_ipid",
        "_last_ts",
        "_seq",
        "_skipped",
        "_tcp_const",
        "_v4",
        "closed",
        "frames",
        "late_bytes",
        "mss",
        "ports",
        "sent",
    )

    def __init__(
        self,
        client_ip: str,
        client_port: int,
        server_ip: str,
        server_port: int,
        ts: int,
        *,
        mss: int = MAX_SEGMENT,
    ) -> None:
        client = _packed(client_ip, "client")
        server = _packed(server_ip, "server")
        if len(client) != len(server):
            raise ValueError(
                f"client {client_ip} and server {server_ip} are of different IP families; "
                "a TCP connection has one (map IPv4 peers of a dual-stack socket with ::ffff:a.b.c.d)"
            )
        for role, port in (("client", client_port), ("server", server_port)):
            if not 0 <= port <= 0xFFFF:
                raise ValueError(f"{role} port {port} is outside 0..65535")
        if not 1 <= mss <= MAX_SEGMENT:
            raise ValueError(f"mss {mss} is outside 1..{MAX_SEGMENT} (an IPv4 datagram holds at most that)")
        self.mss = mss
        self.ports = (client_port, server_port)
        self._v4 = len(client) == 4
        self._ends = ((client, server), (server, client))  # (source, destination) by direction
        key = client + server + struct.pack("!HHQ", client_port, server_port, ts & 0xFFFFFFFFFFFFFFFF)
        seed = hashlib.blake2s(key, digest_size=20).digest()
        isn = struct.unpack_from("!II", seed)
        self._seq = [isn[0], isn[1]]  # next sequence number each direction sends
        self._acked = [isn[0], isn[1]]  # how far the other side has acknowledged each direction
        self._skipped = [0, 0]  # bytes skipped by gap() since the direction's last frame
        self._ipid = list(struct.unpack_from("!HH", seed, 8))
        flow = struct.unpack_from("!II", seed, 12)
        self._ip6_word = (0x60000000 | flow[0] & 0xFFFFF, 0x60000000 | flow[1] & 0xFFFFF)
        mac = (_mac(client), _mac(server))
        ethertype = _ETH_IPV4 if self._v4 else _ETH_IPV6
        self._eth = (mac[1] + mac[0] + ethertype, mac[0] + mac[1] + ethertype)  # dst, src, type
        # Header sums that do not change per segment, modulo 0xFFFF (2**16 = 1 mod 0xFFFF, so a
        # multi-word field's value is congruent to the sum of its 16-bit words): the TCP pseudo
        # header's addresses and protocol plus the ports and window, the same in both directions;
        # the IPv4 header's fields but its length and id.
        addr_sum = int.from_bytes(client + server, "big")
        self._tcp_const = (addr_sum + 6 + client_port + server_port + WINDOW) % 0xFFFF
        self._ip_const = (0x4500 + 0x4000 + (TTL << 8 | 6) + addr_sum) % 0xFFFF
        self._last_ts = ts
        self.sent = False  # any frame made yet (open() only starts a connection that has none)
        self.closed = False
        self.frames = 0
        self.late_bytes = 0

    # -- the conversation ----------------------------------------------------------------------

    def open(self, ts: int) -> list[Frame]:
        """The three-way handshake (SYN and SYN/ACK advertise the MSS), or nothing once data flowed."""
        if self.sent or self.closed:
            return []
        mss_opt = b"\x02\x04" + self.mss.to_bytes(2, "big")
        out = [self._segment(0, SYN, b"", ts, mss_opt)]
        self._seq[0] = (self._seq[0] + 1) & _M32
        out.append(self._segment(1, SYN | ACK, b"", ts, mss_opt))
        self._seq[1] = (self._seq[1] + 1) & _M32
        out.append(self._segment(0, ACK, b"", ts))
        return out

    def data(self, direction: int, payload: bytes | bytearray | memoryview, ts: int) -> list[Frame]:
        """``payload`` sent in ``direction``: segments of at most ``mss`` bytes, PSH on the last."""
        self._check(direction)
        if not isinstance(payload, bytes):
            payload = bytes(payload)  # a bytearray could change under us; a memoryview may not be bytes
        n = len(payload)
        if not n:
            return []
        if self.closed:
            self.late_bytes += n
            return []
        out: list[Frame] = []
        mss = self.mss
        view = memoryview(payload) if n > mss else payload  # slices without copying
        peer = 1 - direction
        for off in range(0, n, mss):
            chunk = view[off : off + mss]
            size = len(chunk)
            flags = ACK | PSH if off + size >= n else ACK
            inflight = (self._seq[direction] - self._acked[direction]) & _M32
            if inflight + size < WINDOW:
                out.append(self._segment(direction, flags, chunk, ts))
            elif self._skipped[direction] and inflight + size > WINDOW:
                # right after a gap the segment goes first: an ACK before it would acknowledge only
                # bytes no frame showed, one more warning in Wireshark
                out.append(self._segment(direction, flags, chunk, ts))
                out.append(self._segment(peer, ACK, b"", ts))
            else:
                out.append(self._segment(peer, ACK, b"", ts))
                out.append(self._segment(direction, flags, chunk, ts))
        return out

    def gap(self, direction: int, n: int, ts: int) -> list[Frame]:
        """``n`` bytes of ``direction`` that were never seen: the sequence number moves on silently.

        Normally returns nothing; per GiB skipped, an empty segment and the other side's ACK of it
        keep every jump in sequence numbers between two frames below 2**31.
        """
        self._check(direction)
        if not 0 <= n <= MAX_GAP:
            raise ValueError(f"gap of {n} bytes: expected 0..{MAX_GAP} (one cut TLS write is < 2 GiB)")
        if self.closed:
            self.late_bytes += n
            return []
        out: list[Frame] = []
        while n:
            step = min(n, GAP_STEP - self._skipped[direction])
            self._seq[direction] = (self._seq[direction] + step) & _M32
            self._skipped[direction] += step
            n -= step
            if self._skipped[direction] >= GAP_STEP:
                out.append(self._segment(direction, ACK, b"", ts))
                out.append(self._segment(1 - direction, ACK, b"", ts))
        return out

    def close(self, ts: int, initiator: int = 0) -> list[Frame]:
        """FIN/ACK from ``initiator``, FIN/ACK back, the last ACK; nothing if already closed."""
        self._check(initiator)
        if self.closed:
            return []
        peer = 1 - initiator
        out = [self._segment(initiator, FIN | ACK, b"", ts)]
        self._seq[initiator] = (self._seq[initiator] + 1) & _M32
        out.append(self._segment(peer, FIN | ACK, b"", ts))
        self._seq[peer] = (self._seq[peer] + 1) & _M32
        out.append(self._segment(initiator, ACK, b"", ts))
        self.closed = True
        return out

    def next_seq(self, direction: int) -> int:
        """The sequence number the next byte of ``direction`` will carry."""
        self._check(direction)
        return self._seq[direction]

    # -- frames --------------------------------------------------------------------------------

    @staticmethod
    def _check(direction: int) -> None:
        if direction not in (0, 1):
            raise ValueError(f"direction {direction!r}: 0 is client -> server, 1 is server -> client")

    def _segment(
        self, d: int, flags: int, payload: bytes | memoryview, ts: int, options: bytes = b""
    ) -> Frame:
        """One frame of direction ``d`` at the current sequence number; advances it by the payload."""
        if ts < self._last_ts:
            ts = self._last_ts
        self._last_ts = ts
        seq = self._seq[d]
        ack = self._seq[1 - d] if flags & ACK else 0
        n = len(payload)
        hlen = 20 + len(options)
        tcp_len = hlen + n
        # payload words start at an even offset; an odd last byte is padded with a zero on the right
        psum = int.from_bytes(payload, "big") % 0xFFFF
        if n & 1:
            psum <<= 8
        total = self._tcp_const + tcp_len + seq + ack + ((hlen << 10) | flags) + psum
        if options:
            total += int.from_bytes(options, "big")
        sport, dport = self.ports if d == 0 else self.ports[::-1]
        tcp = _tcp.pack(sport, dport, seq, ack, hlen << 2, flags, WINDOW, _cksum(total), 0) + options
        src, dst = self._ends[d]
        if self._v4:
            ipid = self._ipid[d]
            self._ipid[d] = (ipid + 1) & 0xFFFF
            ip_len = 20 + tcp_len
            ip_sum = _cksum(self._ip_const + ip_len + ipid)
            ip = _ip4.pack(0x45, 0, ip_len, ipid, 0x4000, TTL, 6, ip_sum, src, dst)
        else:
            ip = _ip6.pack(self._ip6_word[d], tcp_len, 6, TTL, src, dst)
        self._seq[d] = (seq + n) & _M32
        self._acked[1 - d] = self._seq[1 - d] if flags & ACK else self._acked[1 - d]
        self._skipped[d] = 0
        self.sent = True
        self.frames += 1
        return ts, LINKTYPE_ETHERNET, b"".join((self._eth[d], ip, tcp, payload))


__all__ = [
    "GAP_STEP",
    "MAC_PREFIX",
    "MAX_GAP",
    "MAX_SEGMENT",
    "WINDOW",
    "Frame",
    "SyntheticTcp",
    "is_synthetic",
]
