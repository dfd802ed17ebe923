"""One packet seen on two interfaces of the node counts once.

When both ends of a conversation run on one node, each packet crosses two (or three) captured
interfaces: the sending pod's veth, maybe the bridge, the receiving pod's veth. The dissector must see
it once, or every call comes out twice. `Deduper.duplicate` answers, per frame, "was this packet
already seen (on another interface) a moment ago?".

The key is the packet's identity at L3/L4, leaving out what bridging or routing between two veths on
one node changes (MAC addresses, IPv4 TTL / IPv6 hop limit, the IP and L4 checksums — which offload
may not even have filled in yet — and the TOS/traffic-class byte):

- IPv4: source, destination, total length, identification, flags + fragment offset, protocol;
  IPv6: source, destination, payload length, next header, flow label;
- TCP: ports, sequence and acknowledgement numbers, data offset + flags, window, every option
  (timestamps included); UDP: ports and length; other protocols: nothing more;
- the first `PAYLOAD_BYTES` bytes after the L4 header (after the IP header for other protocols).

Why a real TCP retransmission is not taken for a duplicate: Linux gives every IPv4 packet it sends a
new identification, so the retransmitted copy differs in the IP header; with TCP timestamps on (the
Linux default) its TSval differs too once a millisecond has passed; and its acknowledgement number and
window usually moved on. When could it be? An IPv6 retransmission (no identification) sent within the
same millisecond tick as the original or with timestamps off, carrying the same ack and window, inside
the window of `window_ns`. Such a copy is byte-identical in everything a dissector reads, so dropping
it loses only the `retransmission` flag, never data.

Addresses and ports are part of the key, so traffic that NAT rewrites between the two interfaces
(a Service's DNAT by kube-proxy between two pods of one node) is not collapsed: each side is a complete,
consistent conversation of its own (client -> service IP, client -> pod). Collapsing them packet by
packet would keep, say, the request from one side and the response from the other, and the dissector
would see two half conversations.

Frames are compared by their kernel timestamps, not by when they were read, so the order in which
rings are read does not matter, as long as the same packet's copies are less than `window_ns` apart
(forwarding between veths takes micro- to milliseconds). Memory is bounded: keys live in two
generations of at most `window_ns` of capture time each, and at most `max_entries` keys are held in
all; a burst beyond that starts a new generation early (`early_rotations`), which can only let a
duplicate through, never drop a distinct packet.
"""

from __future__ import annotations

from dissect.packet import _l3

PAYLOAD_BYTES = 48
_V6_EXT = (0, 43, 60)  # hop-by-hop, routing, destination options: walked over to reach TCP/UDP
_MAX_EXT = 8  # extension headers walked at most (hostile chains)


def packet_key(linktype: int, f: bytes) -> bytes | None:
    """The bytes that identify this packet across interfaces, or None when it is not IP."""
    off = _l3(linktype, f)
    n = len(f)
    if off < 0 or n < off + 20:
        return None
    v = f[off] >> 4
    if v == 4:
        ihl = (f[off] & 15) << 2
        if ihl < 20:
            return None
        proto = f[off + 9]
        head = b"4" + f[off + 2 : off + 8] + f[off + 9 : off + 10] + f[off + 12 : off + 20]
        l4 = off + ihl
        if (f[off + 6] & 0x1F) | f[off + 7]:  # a non-first fragment has no L4 header
            return head + f[l4 : l4 + PAYLOAD_BYTES]
    elif v == 6:
        if n < off + 40:
            return None
        proto = f[off + 6]
        head = b"6" + bytes((f[off + 1] & 0x0F,)) + f[off + 2 : off + 7] + f[off + 8 : off + 40]
        l4 = off + 40
        hops = 0
        while proto in _V6_EXT and hops < _MAX_EXT and l4 + 2 <= n:
            proto, l4 = f[l4], l4 + ((f[l4 + 1] + 1) << 3)
            hops += 1
        if proto == 44:  # fragment header: the fragment's identification and offset identify it
            return head + f[l4 : l4 + 8 + PAYLOAD_BYTES]
    else:
        return None
    if proto == 6 and n >= l4 + 20:
        doff = (f[l4 + 12] >> 4) << 2
        return head + f[l4 : l4 + 16] + f[l4 + 20 : l4 + max(doff, 20) + PAYLOAD_BYTES]
    if proto == 17 and n >= l4 + 8:
        return head + f[l4 : l4 + 6] + f[l4 + 8 : l4 + 8 + PAYLOAD_BYTES]
    return head + f[l4 : l4 + PAYLOAD_BYTES]


class Deduper:
    """Remembers packets for `window_ns` of capture time and says when one comes again.

    Counters: `seen` (frames asked about), `duplicates` (answered True), `early_rotations` (a burst
    filled `max_entries` before the window passed). `held` is how many keys are in memory.
    """

    __slots__ = (
        "_cur",
        "_gen_start",
        "_old",
        "duplicates",
        "early_rotations",
        "max_entries",
        "seen",
        "window_ns",
    )

    def __init__(self, window_ns: int = 250_000_000, max_entries: int = 1 << 18) -> None:
        if window_ns <= 0 or max_entries < 2:
            raise ValueError("window_ns must be positive and max_entries at least 2")
        self.window_ns = window_ns
        self.max_entries = max_entries
        self._cur: dict[int, int] = {}  # hash of the key -> ts of its first sighting
        self._old: dict[int, int] = {}
        self._gen_start = -1
        self.seen = 0
        self.duplicates = 0
        self.early_rotations = 0

    @property
    def held(self) -> int:
        return len(self._cur) + len(self._old)

    def duplicate(self, linktype: int, frame: bytes, ts_ns: int) -> bool:
        """True when the same packet was seen less than `window_ns` before or after `ts_ns`."""
        self.seen += 1
        key = packet_key(linktype, frame)
        if key is None:
            return False
        age = ts_ns - self._gen_start
        if age >= self.window_ns or age < -self.window_ns:  # the window moved on, or the clock jumped back
            self._rotate(ts_ns)
        h = hash(key)  # 64-bit SipHash: distinct packets share one with odds of 2**-64 a pair
        prev = self._cur.get(h)
        if prev is None:
            prev = self._old.get(h)
        if prev is not None and -self.window_ns <= ts_ns - prev <= self.window_ns:
            self.duplicates += 1
            return True
        cur = self._cur
        if len(cur) >= self.max_entries >> 1:
            self.early_rotations += 1
            self._old, self._cur, self._gen_start = cur, {}, ts_ns
            cur = self._cur
        cur[h] = ts_ns
        return False

    def _rotate(self, ts_ns: int) -> None:
        """Start a new generation; the previous one is kept one more window, older ones go."""
        if self._gen_start >= 0 and 0 <= ts_ns - self._gen_start < 2 * self.window_ns:
            self._old = self._cur
        else:
            self._old = {}  # a pause of more than two windows: nothing older can match
        self._cur = {}
        self._gen_start = ts_ns
