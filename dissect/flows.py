"""The table of live flows (TCP connections or UDP 4-tuples) of one engine.

Each flow is filed under both of its 4-tuples with the direction that tuple means, so finding the
flow of a packet is one dict lookup (`by_key`, used directly on the engine's hot path). Flows are
also kept by index in creation order, which is the order they are finished in at the end of input.

``on_drop`` (set by an engine that does flow accounting) sees every flow right after it was finished
and just before it is forgotten, whatever the reason (idle, linger over, eviction, a new connection
on its 4-tuple, end of input), so its last counts are not lost with it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, Protocol, TypeVar

Key = tuple[bytes, int, bytes, int]


class Flow(Protocol):
    index: int
    last_ts: int
    closed: bool

    def finish(self, ts: int) -> None: ...


F = TypeVar("F", bound=Flow)


class FlowTable(Generic[F]):
    def __init__(self) -> None:
        self.by_key: dict[Key, tuple[F, int]] = {}
        self.by_index: dict[int, F] = {}
        self._keys: dict[int, tuple[Key, Key]] = {}
        self.on_drop: Callable[[F], None] | None = None  # see the module docstring

    def __len__(self) -> int:
        return len(self.by_index)

    def flows(self) -> list[F]:
        return list(self.by_index.values())

    def add(self, flow: F, src: bytes, sport: int, dst: bytes, dport: int) -> None:
        """File ``flow`` under (src→dst) as direction 0 and (dst→src) as direction 1."""
        k0, k1 = (src, sport, dst, dport), (dst, dport, src, sport)
        self.by_key[k0] = (flow, 0)
        self.by_key[k1] = (flow, 1)
        self.by_index[flow.index] = flow
        self._keys[flow.index] = (k0, k1)

    def drop(self, flow: F, ts: int) -> None:
        """Finish ``flow`` (its dissector flushes) and forget it."""
        flow.finish(ts)
        if self.on_drop is not None:
            self.on_drop(flow)
        for k in self._keys.pop(flow.index, ()):
            hit = self.by_key.get(k)
            if hit is not None and hit[0] is flow:
                del self.by_key[k]
        self.by_index.pop(flow.index, None)

    def evict(self, ts: int, fraction: int = 10) -> None:
        """The table is full: finish the least recently active tenth, finished flows first."""
        victims = sorted(self.by_index.values(), key=lambda f: (not f.closed, f.last_ts))
        for flow in victims[: max(1, len(victims) // fraction)]:
            self.drop(flow, ts)

    def sweep(self, ts: int, idle_before: int, linger_before: int | None = None) -> None:
        """Finish flows silent since ``idle_before``, and finished ones past ``linger_before``."""
        for flow in [
            f
            for f in self.by_index.values()
            if f.last_ts < idle_before
            or (linger_before is not None and f.closed and f.last_ts < linger_before)
        ]:
            self.drop(flow, ts)
