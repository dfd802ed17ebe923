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


MAX_PARTS = 8192  # fragments accepted per datagram (64 KiB in 8-byte pieces)


class _Datagram:
    """One datagram in progress: the bytes so far and which ranges of it they cover."""

    __slots__ = ("buf", "covered", "first_ts", "parts", "total")

    def __init__(self, ts: int) -> None:
        self.buf = bytearray()
        self.covered: list[list[int]] = []  # sorted, disjoint [start, end) ranges already filled
        self.total = -1  # known once the last fragment (MF clear) arrives
        self.parts = 0
        self.first_ts = ts

    def fill(self, offset: int, data: bytes) -> None:
        """Copy ``data`` at ``offset`` into the bytes not covered yet: the first copy of a byte wins."""
        end = offset + len(data)
        if len(self.buf) < end:
            self.buf.extend(bytes(end - len(self.buf)))
        pos = offset
        for a, b in self.covered:
            if b <= pos:
                continue
            if a >= end:
                break
            if a > pos:
                self.buf[pos:a] = data[pos - offset : a - offset]
            pos = max(pos, b)
            if pos >= end:
                break
        if pos < end:
            self.buf[pos:end] = data[pos - offset :]
        merged: list[list[int]] = []
        for a, b in sorted([*self.covered, [offset, end]]):
            if merged and a <= merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], b)
            else:
                merged.append([a, b])
        self.covered = merged

    def complete(self) -> bool:
        return self.total >= 0 and len(self.covered) == 1 and self.covered[0] == [0, self.total]


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
        if d is not None and ts - d.first_ts > self.timeout_ns:
            del self._dgrams[key]  # a stale datagram must not be completed by a reused IP id
            self.dropped += 1
            d = None
        if d is None:
            if len(self._dgrams) >= self.max_in_progress:
                self._expire(ts, force=True)
            d = self._dgrams[key] = _Datagram(ts)
        end = offset + len(data)
        d.parts += 1
        if end > MAX_DATAGRAM or d.parts > MAX_PARTS or (d.total >= 0 and end > d.total):
            del self._dgrams[key]
            self.dropped += 1
            return None
        if not more:
            if d.covered and d.covered[-1][1] > end:
                del self._dgrams[key]  # bytes already seen beyond the claimed end: inconsistent
                self.dropped += 1
                return None
            d.total = end
        if data:
            d.fill(offset, data)
        if not d.complete():
            return None
        del self._dgrams[key]
        return bytes(d.buf[: d.total])

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
