"""Who is sending to the hub: one `WorkerState` per worker name, for stats, /metrics and the TUI.

A worker is known by the name in its `hello` (`podshark import` says `import`). The registry keeps
what the hub itself saw on the ingest connection (connected or not, since when, last message, how
many calls and packets messages, errors) and the last `stats` message the worker sent about itself:

    {"type": "stats", "drops": {"kernel": 12, "spool": 0, ...}, "tls": [{...}, ...], ...}

`drops` are counters the worker keeps (kernel ring drops from PACKET_STATISTICS, eBPF ring-buffer
drops, and `spool`: the calls its uplink dropped from a full spool, capture/uplink.py); the hub
reports them as they are, so data the node had to
give up is visible here rather than silently missing. Other keys are kept as sent, bounded in size
(`MAX_STATS_BYTES`) so a hostile or broken worker cannot grow the hub's memory; the number of
workers is bounded too (`MAX_WORKERS`, the oldest disconnected one is forgotten first).

`cluster_ranges` (the CIDRs a worker knows are the cluster: its nodes' pod CIDRs and addresses) go
to the hub's `hub.nodes.ClusterRanges`, which decides what is an external address on the service map
and in the aggregates. Workers repeat them every few seconds, so they are parsed only when they
differ from the last report (kept to compare); `to_dict` shows how many came and how many parsed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from hub.nodes import MAX_RANGES, ClusterRanges

MAX_WORKERS = 4096
# 4096 cluster ranges in IPv6 text are ~180 KB; the rest of a stats message is a few KB
MAX_STATS_BYTES = 256 << 10
MAX_CIDR_TEXT = 64
MAX_NAME = 253  # a node name


@dataclass
class WorkerState:
    name: str
    connections: int = 0  # open ingest connections under this name now
    connected_ns: int | None = None  # when the current (or last) connection opened
    disconnected_ns: int | None = None
    last_seen_ns: int | None = None
    capabilities: list[str] = field(default_factory=list)
    calls: int = 0  # calls received in `calls` messages
    batches: int = 0
    packets_messages: int = 0
    flows_messages: int = 0
    flows: int = 0  # flow aggregates received in `flows` messages
    errors: int = 0  # frames answered with an error
    export_requests: int = 0  # export requests the hub sent it (hub/export.py)
    export_failures: int = 0  # ... that it did not answer in full: disconnected, silent, or failed
    drops: dict[str, int] = field(default_factory=dict)  # from the worker's own `stats`
    reported: dict[str, Any] = field(default_factory=dict)  # the rest of its last `stats`
    cluster_ranges: list[str] = field(default_factory=list)  # as last reported (to skip repeats)
    cluster_ranges_usable: int = 0  # how many of them parsed as CIDRs

    def to_dict(self, now_ns: int) -> dict[str, Any]:
        return {
            "name": self.name,
            "connected": self.connections > 0,
            "connected_ts": self.connected_ns,
            "disconnected_ts": self.disconnected_ns,
            "last_seen_ts": self.last_seen_ns,
            "idle_s": None if self.last_seen_ns is None else round((now_ns - self.last_seen_ns) / 1e9, 3),
            "capabilities": self.capabilities,
            "calls": self.calls,
            "batches": self.batches,
            "packets_messages": self.packets_messages,
            "flows_messages": self.flows_messages,
            "flows": self.flows,
            "cluster_ranges": {"reported": len(self.cluster_ranges), "usable": self.cluster_ranges_usable},
            "errors": self.errors,
            "export_requests": self.export_requests,
            "export_failures": self.export_failures,
            "drops": self.drops,
            "reported": self.reported,
        }


class Workers:
    """The registry (event-loop only: no locking). `ranges`: where reported cluster ranges go."""

    def __init__(self, ranges: ClusterRanges | None = None) -> None:
        self._by_name: dict[str, WorkerState] = {}
        self.ranges = ranges

    def get(self, name: str) -> WorkerState:
        name = name[:MAX_NAME] or "?"
        state = self._by_name.get(name)
        if state is None:
            if len(self._by_name) >= MAX_WORKERS:
                self._forget_one()
            state = self._by_name[name] = WorkerState(name)
        return state

    def _forget_one(self) -> None:
        idle = [w for w in self._by_name.values() if w.connections == 0]
        victim = min(idle or self._by_name.values(), key=lambda w: w.last_seen_ns or 0)
        del self._by_name[victim.name]
        if self.ranges is not None:
            self.ranges.forget(victim.name)

    def connected(self, state: WorkerState, capabilities: list[str], now_ns: int | None = None) -> None:
        now = time.time_ns() if now_ns is None else now_ns
        state.connections += 1
        state.connected_ns = now
        state.last_seen_ns = now
        state.capabilities = [c[:64] for c in capabilities[:32]]

    def disconnected(self, state: WorkerState, now_ns: int | None = None) -> None:
        state.connections = max(0, state.connections - 1)
        if state.connections == 0:
            state.disconnected_ns = time.time_ns() if now_ns is None else now_ns

    def report(self, state: WorkerState, body: dict[str, Any], size: int) -> str | None:
        """Keep a worker's `stats` message; returns an error text when it cannot be kept."""
        if size > MAX_STATS_BYTES:
            return f"stats message of {size} bytes is over the {MAX_STATS_BYTES} byte limit; not kept"
        drops = body.get("drops", {})
        if not isinstance(drops, dict) or not all(
            isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool) and v >= 0
            for k, v in drops.items()
        ):
            return 'stats "drops" must be an object of non-negative integer counters'
        ranges = body.get("cluster_ranges", [])
        if (
            not isinstance(ranges, list)
            or len(ranges) > MAX_RANGES
            or not all(isinstance(r, str) and len(r) <= MAX_CIDR_TEXT for r in ranges)
        ):
            return f'stats "cluster_ranges" must be a list of at most {MAX_RANGES} CIDR strings'
        state.drops = {k[:64]: v for k, v in drops.items()}
        skip = ("type", "drops", "seq", "cluster_ranges")
        state.reported = {k: v for k, v in body.items() if k not in skip}
        if ranges != state.cluster_ranges:
            state.cluster_ranges = ranges
            state.cluster_ranges_usable = self.ranges.report(state.name, ranges) if self.ranges else 0
        return None

    def all(self) -> list[WorkerState]:
        return sorted(self._by_name.values(), key=lambda w: w.name)
