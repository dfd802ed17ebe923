"""IPv4/IPv6 fragment reassembly with hard bounds.

A sniffer sees hostile fragment streams (overlaps, never-completed datagrams, fragment floods), so
every datagram in progress is bounded in size, the number in progress is bounded, and stale ones
expire by capture time. Overlapping fragments keep the first copy (what Linux does), which is also
what makes "teardrop"-style overlaps harmless here.
"""

from __future__ import annotations

from collections.abc import Hashable

MAX_DATAGRAM = 65535 + 8  # largest IP payload plus slack for the IPv6 fragment header rounding
MAX_IN_PROGRESS = 4096
TIMEOUT_NS = 30 * 1_000_000_000


class _Datagram:
    __slots__ = ("first_ts", "parts", "size", "total")

    def __init__(self, ts: int) -> None:
        self.parts: dict[int, bytes] = {}
        self.total = -1  # known once the last fragment (MF clear) arrives
        self.size = 0
        self.first_ts = ts


class Fragments:
    """Collects fragments by (src, dst, id, proto); returns the whole payload when complete."""

    def __init__(self, max_in_progress: int = MAX_IN_PROGRESS, timeout_ns: int = TIMEOUT_NS) -> None:
        self._dgrams: dict[Hashable, _Datagram] = {}
        self.max_in_progress = max_in_progress
        self.timeout_ns = timeout_ns
        self.dropped = 0  # datagrams abandoned: too big, expired, or evicted

    def __len__(self) -> int:
        return len(self._dgrams)

    def add(self, key: Hashable, offset: int, more: bool, data: bytes, ts: int) -> bytes | None:
        d = self._dgrams.get(key)
        if d is None:
            if len(self._dgrams) >= self.max_in_progress:
                self._expire(ts, force=True)
            d = self._dgrams[key] = _Datagram(ts)
        end = offset + len(data)
        if end > MAX_DATAGRAM:
            del self._dgrams[key]
            self.dropped += 1
            return None
        if not more:
            d.total = end
        if offset not in d.parts:
            d.parts[offset] = data
            d.size += len(data)
            if d.size > 2 * MAX_DATAGRAM:  # overlap flood: more bytes than any datagram can hold
                del self._dgrams[key]
                self.dropped += 1
                return None
        if d.total < 0 or d.size < d.total:
            return None
        # every byte may be present: stitch in offset order, first copy of an overlap wins
        out = bytearray()
        for off in sorted(d.parts):
            part = d.parts[off]
            if off > len(out):
                return None  # a hole remains (sizes added up only because of overlaps)
            if off + len(part) > len(out):
                out += part[len(out) - off :]
        if len(out) < d.total:
            return None
        del self._dgrams[key]
        return bytes(out[: d.total])

    def _expire(self, now: int, force: bool = False) -> None:
        """Drop datagrams older than the timeout; when ``force``, also the oldest quarter."""
        stale = [k for k, d in self._dgrams.items() if now - d.first_ts > self.timeout_ns]
        if force and not stale:
            ordered = sorted(self._dgrams.items(), key=lambda kv: kv[1].first_ts)
            stale = [k for k, _ in ordered[: max(1, len(ordered) // 4)]]
        for k in stale:
            del self._dgrams[k]
        self.dropped += len(stale)

    def expire(self, now: int) -> None:
        self._expire(now)
