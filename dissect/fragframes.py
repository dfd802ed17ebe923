"""The frames of IP fragments, held until their datagram is whole and so has a flow.

Export writes the original frames of a connection. A fragmented datagram's first frames decode to
nothing (`packet.decode` returns None until `Fragments` completes the datagram), so the engine's
frame hook cannot tell yet which flow they belong to. `HeldFragments` keeps those frames under the
same key `packet.decode` gives the datagram to `Fragments`; when the last fragment completes it,
the engine takes the held frames back (`release`) and hands them to the hook with the flow of the
reassembled datagram, so an exported pcap holds every fragment Wireshark needs to reassemble it.

Bounded like `Fragments`: at most `max_datagrams` datagrams and `max_bytes` bytes held; the oldest
datagram goes first (a datagram that never completes is dropped that way, or on reuse of its key
after `Fragments` gave up on it — its frames then belong to no call anyway).
"""

from __future__ import annotations

from collections.abc import Hashable

from dissect.packet import _l3

_V6_EXT = (0, 43, 60)  # hop-by-hop, routing, destination options (as in dissect.packet)

# (ts, linktype, frame, wire length) of one held fragment
Held = tuple[int, int, bytes, int]


def frag_key(linktype: int, f: bytes) -> Hashable | None:
    """The reassembly key `packet.decode` files this frame under, or None when it is no IP fragment."""
    off = _l3(linktype, f)
    if off < 0 or len(f) < off + 20:
        return None
    v = f[off] >> 4
    if v == 4:
        fragword = f[off + 6] << 8 | f[off + 7]
        if not fragword & 0x3FFF:
            return None
        return (f[off + 12 : off + 16], f[off + 16 : off + 20], f[off + 4 : off + 6], f[off + 9])
    if v == 6 and len(f) >= off + 40:
        nh = f[off + 6]
        p = off + 40
        while nh in _V6_EXT:
            if p + 2 > len(f):
                return None
            nh, p = f[p], p + ((f[p + 1] + 1) << 3)
        if nh != 44 or p + 8 > len(f):
            return None
        return (f[off + 8 : off + 24], f[off + 24 : off + 40], f[p + 4 : p + 8], f[p])
    return None


class HeldFragments:
    """Fragment frames by datagram key, in arrival order, within fixed bounds."""

    def __init__(self, max_datagrams: int = 1024, max_bytes: int = 16 << 20) -> None:
        self.max_datagrams = max_datagrams
        self.max_bytes = max_bytes
        self._held: dict[Hashable, list[Held]] = {}
        self._bytes = 0
        self.dropped = 0  # frames let go without a flow

    def __len__(self) -> int:
        return len(self._held)

    def hold(self, key: Hashable, ts: int, linktype: int, frame: bytes, wire: int) -> None:
        if len(frame) > self.max_bytes:
            self.dropped += 1
            return
        self._held.setdefault(key, []).append((ts, linktype, frame, wire))
        self._bytes += len(frame)
        while self._bytes > self.max_bytes or len(self._held) > self.max_datagrams:
            oldest = next(iter(self._held))
            self._forget(oldest)

    def release(self, key: Hashable) -> list[Held]:
        """The frames held for `key` (its datagram is now whole), forgetting them."""
        frames = self._held.pop(key, [])
        self._bytes -= sum(len(f) for _, _, f, _ in frames)
        return frames

    def _forget(self, key: Hashable) -> None:
        frames = self._held.pop(key)
        self._bytes -= sum(len(f) for _, _, f, _ in frames)
        self.dropped += len(frames)
