"""`GET /metrics`: the hub's Prometheus text exposition.

Two kinds of numbers:

- counters the hub keeps since it started, in memory: calls committed per protocol and status class,
  a latency histogram per protocol (`CallCounters`, a writer listener: it sees each committed batch
  once, so the counters cost a dict update per call and never a query), ingest counters
  (`hub.ingest.Stats`), live fan-out counters;
- gauges read at scrape time: store size and partitions, the writer's queue depth, connected
  workers, and each worker's own drop counters from its last `stats` message (`hub/workers.py`).

Names follow the Prometheus conventions (`_total` counters, base units: seconds, bytes). Label
values are escaped as the text format requires; worker names and drop kinds come from workers, so
they are bounded there (hub/workers.py) to keep the series count bounded.

The per-minute aggregates (hub/aggregates.py) add per-edge and per-endpoint counters
(`AggregateCounters`): calls by status class, bytes, packets, connections, resets and
retransmissions, counted once per key and minute as the aggregates flush (calls) or commit (flows),
never per call. Their `src`/`dst`/`endpoint` labels are map node ids (hub/nodes.py), which come from
the traffic, so their number is bounded: only the `top_n` nodes with the most bytes plus calls over
the last `rank_minutes` keep their own label; everything else is counted under `other`. The folding
happens when a count is added, never at scrape time, so every series only ever grows (a node that
joins the top starts a new series at zero; `other` never goes down), which is what `rate()` needs.
Series nobody added to for `STALE_NS` (an hour) are dropped, so the labels present are the nodes
that were in the top at some point in the last hour: a few times `top_n` when the busiest change
often, never the cluster's whole population.
"""

from __future__ import annotations

import bisect
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from dissect.model import STATUS_CLASSES, Call, status_class

# latency histogram bounds, seconds (Prometheus' default buckets plus finer ones for fast services)
BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_BUCKETS_NS = tuple(int(b * 1e9) for b in BUCKETS)


class CallCounters:
    """Per-protocol call counts by status class and latency histograms, since the hub started."""

    def __init__(self) -> None:
        self.calls: dict[tuple[str, str], int] = {}
        # protocol -> (bucket counts (non-cumulative, one extra for +Inf), sum ns, count)
        self.latency: dict[str, tuple[list[int], int, int]] = {}

    def __call__(self, calls: Sequence[Call]) -> None:
        counts = self.calls
        for c in calls:
            key = (c.protocol, status_class(c.protocol, c.status))
            counts[key] = counts.get(key, 0) + 1
            lat = c.latency_ns
            if lat is not None and lat >= 0:
                hist = self.latency.get(c.protocol)
                if hist is None:
                    hist = self.latency[c.protocol] = ([0] * (len(BUCKETS) + 1), 0, 0)
                hist[0][bisect.bisect_left(_BUCKETS_NS, lat)] += 1
                self.latency[c.protocol] = (hist[0], hist[1] + lat, hist[2] + 1)


def escape(value: str) -> str:
    """A label value as the text format wants it."""
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(labels: dict[str, str]) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{escape(v)}"' for k, v in labels.items()) + "}"


def _num(v: float) -> str:
    if isinstance(v, int):
        return str(v)
    return repr(float(v))


class Exposition:
    """Builds the text: one HELP and TYPE line per family, then its samples."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def family(
        self, name: str, kind: str, help_text: str, samples: Iterable[tuple[dict[str, str], float]]
    ) -> None:
        self.lines.append(f"# HELP {name} {help_text}")
        self.lines.append(f"# TYPE {name} {kind}")
        for labels, value in samples:
            self.lines.append(f"{name}{_labels(labels)} {_num(value)}")

    def histogram(
        self, name: str, help_text: str, per_protocol: dict[str, tuple[list[int], int, int]]
    ) -> None:
        self.lines.append(f"# HELP {name} {help_text}")
        self.lines.append(f"# TYPE {name} histogram")
        for proto in sorted(per_protocol):
            buckets, total_ns, count = per_protocol[proto]
            running = 0
            for bound, n in zip(BUCKETS, buckets, strict=False):
                running += n
                self.lines.append(f"{name}_bucket{_labels({'protocol': proto, 'le': repr(bound)})} {running}")
            self.lines.append(f"{name}_bucket{_labels({'protocol': proto, 'le': '+Inf'})} {count}")
            self.lines.append(f"{name}_sum{_labels({'protocol': proto})} {total_ns / 1e9!r}")
            self.lines.append(f"{name}_count{_labels({'protocol': proto})} {count}")

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


def render(
    counters: CallCounters,
    ingest: Any,
    workers: Sequence[Any],
    store_bytes: int,
    partitions: int,
    queue_depth: int,
    live: dict[str, Any] | None,
    started_ns: int,
) -> str:
    """The whole exposition. `ingest` is a `hub.ingest.Stats`, `workers` `hub.workers.WorkerState`s."""
    out = Exposition()
    out.family(
        "podshark_hub_start_time_seconds",
        "gauge",
        "When this hub process started (Unix time).",
        [({}, started_ns / 1e9)],
    )
    out.family(
        "podshark_calls_total",
        "counter",
        "Calls committed to the store since the hub started, by protocol and status class.",
        [({"protocol": p, "status_class": k}, n) for (p, k), n in sorted(counters.calls.items())],
    )
    out.histogram(
        "podshark_call_latency_seconds",
        "Request-to-response latency of committed calls, by protocol.",
        counters.latency,
    )
    for attr, help_text in (
        ("batches", "calls messages received on the ingest WebSocket."),
        ("calls_received", "Valid calls received on the ingest WebSocket."),
        ("calls_stored", "Calls stored that were new (a call id seen twice is stored once)."),
        ("calls_rejected", "Calls refused as invalid (each answered with an error)."),
        ("packets_messages", "packets messages received on the ingest WebSocket."),
        ("flows_messages", "flows messages received on the ingest WebSocket."),
        ("flows_received", "Valid flow aggregates received in flows messages."),
        ("flows_rejected", "Flow aggregates refused as invalid (each answered with an error)."),
        ("flows_expired", "Flow aggregates older than the aggregates' retention, acknowledged and dropped."),
        ("frame_errors", "Ingest frames answered with an error."),
        ("commits", "Store commits by the writer."),
        ("commit_errors", "Store commits that failed (their batches were not acknowledged)."),
    ):
        out.family(f"podshark_hub_ingest_{attr}_total", "counter", help_text, [({}, getattr(ingest, attr))])
    out.family(
        "podshark_hub_ingest_queue_batches",
        "gauge",
        "Batches waiting for the writer.",
        [({}, queue_depth)],
    )
    out.family(
        "podshark_hub_store_bytes", "gauge", "Bytes on disk of the store, WALs included.", [({}, store_bytes)]
    )
    out.family("podshark_hub_store_partitions", "gauge", "Partition files in the store.", [({}, partitions)])
    now = time.time_ns()
    out.family(
        "podshark_worker_connected",
        "gauge",
        "1 while a worker has an ingest connection open.",
        [({"worker": w.name}, 1 if w.connections else 0) for w in workers],
    )
    out.family(
        "podshark_worker_last_seen_seconds",
        "gauge",
        "Seconds since the hub last heard from a worker.",
        [({"worker": w.name}, round((now - w.last_seen_ns) / 1e9, 3)) for w in workers if w.last_seen_ns],
    )
    out.family(
        "podshark_worker_calls_total",
        "counter",
        "Calls a worker sent (valid or not).",
        [({"worker": w.name}, w.calls) for w in workers],
    )
    out.family(
        "podshark_worker_drops_total",
        "counter",
        "What a worker reports it had to drop, by kind (kernel ring, eBPF ring buffer, full spool, ...).",
        [({"worker": w.name, "kind": k}, v) for w in workers for k, v in sorted(w.drops.items())],
    )
    if live is not None:
        for key, value in sorted(live.items()):
            if isinstance(value, int) and not isinstance(value, bool):
                kind = "gauge" if key in ("subscribers",) else "counter"
                name = f"podshark_hub_live_{key}" + ("_total" if kind == "counter" else "")
                out.family(name, kind, f"Live fan-out: {key}.", [({}, value)])
    return out.text()


# ---- the aggregates' per-edge and per-endpoint counters

OTHER = "other"  # the label of everything outside the top nodes (and of protocols past MAX_PROTOCOLS)
NO_PROTOCOL = "none"  # the protocol label of traffic no dissector took
MAX_PROTOCOLS = 32  # distinct protocol labels; more are counted as `other`
MAX_EDGE_SERIES = 10_000  # edge label sets; past it new ones are counted as (other, other)
STALE_NS = 3600 * 1_000_000_000  # a series not added to for this long is dropped
ACTIVE_FRESH_NS = 180 * 1_000_000_000  # an active-connections report older than this no longer counts
MINUTE_NS = 60 * 1_000_000_000

# per edge label set: calls per status class (STATUS_CLASSES order), then these
_EDGE_FIELDS = (
    "bytes_cs",
    "bytes_sc",
    "packets_cs",
    "packets_sc",
    "opened",
    "closed",
    "resets",
    "retransmissions",
)
_E = {name: len(STATUS_CLASSES) + i for i, name in enumerate(_EDGE_FIELDS)}
_EDGE_LEN = len(STATUS_CLASSES) + len(_EDGE_FIELDS)
# per endpoint label: as client, then as server
_ENDPOINT_FIELDS = (
    "rx_bytes",
    "tx_bytes",
    "rx_packets",
    "tx_packets",
    "calls_client",
    "calls_server",
    "errors_client",
    "errors_server",
    "opened_client",
    "opened_server",
)
_P = {name: i for i, name in enumerate(_ENDPOINT_FIELDS)}
_ERROR_CLASSES = ("5xx", "error")  # dissect.filter.ERRORS, by status class
_CLASS_INDEX = {c: i for i, c in enumerate(STATUS_CLASSES)}


@dataclass(slots=True)
class EdgeDelta:
    """What one (src, dst, protocol, transport) key added in one minute (or one flows commit)."""

    calls: dict[str, int] = field(default_factory=dict)  # status class -> calls
    bytes: tuple[int, int] = (0, 0)  # client->server, server->client
    packets: tuple[int, int] = (0, 0)
    opened: int = 0
    closed: int = 0
    resets: int = 0
    retransmissions: int = 0
    active: int | None = None  # connections open at the end of the last flow interval (flows only)

    @property
    def weight(self) -> int:
        """What ranks a node: bytes plus calls."""
        return self.bytes[0] + self.bytes[1] + sum(self.calls.values())


EdgeLabels = tuple[str, str, str, str]  # src, dst, protocol, transport


class AggregateCounters:
    """Counters since the hub started, by edge and by endpoint, labelled by the busiest nodes.

    `add` is called by hub/aggregates.py from its flush and commit threads; `render` from the event
    loop; one lock keeps them apart (a few hundred keys per minute, never per call)."""

    def __init__(
        self,
        top_n: int = 50,
        rank_minutes: int = 15,
        clock: Callable[[], int] = time.time_ns,
        max_edge_series: int = MAX_EDGE_SERIES,
    ) -> None:
        self.top_n = top_n
        self.rank_minutes = rank_minutes
        self.max_edge_series = max_edge_series
        self._clock = clock
        self._lock = threading.Lock()
        # node id -> weight, per wall-clock minute, the last `rank_minutes` of them
        self._scores: deque[tuple[int, dict[str, int]]] = deque()
        self._top: frozenset[str] = frozenset()
        self._ranked_minute = -1
        self.edges: dict[EdgeLabels, list[int]] = {}
        self.endpoints: dict[str, list[int]] = {}
        self._touched: dict[EdgeLabels | str, int] = {}  # series -> wall ns it was last added to
        self._active: dict[tuple[str, str, str, str], tuple[int, int]] = {}  # raw key -> (ns, active)
        self._protocols: set[str] = set()
        self.folded_edges = 0  # adds counted under (other, other) because MAX_EDGE_SERIES was reached

    # -- ranking

    def _score(self, now_ns: int, node_id: str, weight: int) -> None:
        minute = now_ns // MINUTE_NS
        if not self._scores or self._scores[-1][0] != minute:
            self._scores.append((minute, {}))
            while self._scores and self._scores[0][0] <= minute - self.rank_minutes:
                self._scores.popleft()
        bucket = self._scores[-1][1]
        bucket[node_id] = bucket.get(node_id, 0) + weight

    def _rank(self, now_ns: int, force: bool = False) -> None:
        """The top nodes, recomputed at most once a wall-clock minute (and when a node outside the
        top first shows up, so a busy newcomer gets its label at once rather than a minute late)."""
        minute = now_ns // MINUTE_NS
        if minute == self._ranked_minute and not force:
            return
        total: dict[str, int] = {}
        for m, bucket in self._scores:
            if m > minute - self.rank_minutes:
                for node_id, w in bucket.items():
                    total[node_id] = total.get(node_id, 0) + w
        ranked = sorted(total, key=lambda k: (-total[k], k))[: self.top_n]
        self._top = frozenset(ranked)
        self._ranked_minute = minute

    def top(self) -> frozenset[str]:
        with self._lock:
            self._rank(self._clock())
            return self._top

    def _label(self, node_id: str) -> str:
        return node_id if node_id in self._top else OTHER

    def _protocol(self, protocol: str | None) -> str:
        if protocol is None:
            return NO_PROTOCOL
        if protocol in self._protocols:
            return protocol
        if len(self._protocols) < MAX_PROTOCOLS:
            self._protocols.add(protocol)
            return protocol
        return OTHER

    # -- counting

    def add(self, src_id: str, dst_id: str, protocol: str | None, transport: str, d: EdgeDelta) -> None:
        now = self._clock()
        with self._lock:
            weight = d.weight
            self._score(now, src_id, weight)
            if dst_id != src_id:
                self._score(now, dst_id, weight)
            unseen = (src_id not in self._top or dst_id not in self._top) and len(self._top) < self.top_n
            self._rank(now, force=unseen)
            src, dst = self._label(src_id), self._label(dst_id)
            proto = self._protocol(protocol)
            labels: EdgeLabels = (src, dst, proto, transport if transport in ("tcp", "udp") else OTHER)
            row = self.edges.get(labels)
            if row is None and len(self.edges) >= self.max_edge_series:
                self._prune(now)  # stale series make room before anything is folded
            if row is None:
                if len(self.edges) >= self.max_edge_series:
                    self.folded_edges += 1
                    labels = (OTHER, OTHER, OTHER, OTHER)
                    row = self.edges.get(labels)
                if row is None:
                    row = self.edges[labels] = [0] * _EDGE_LEN
            for cls, n in d.calls.items():
                row[
                    STATUS_CLASSES.index(cls) if cls in STATUS_CLASSES else STATUS_CLASSES.index("other")
                ] += n
            row[_E["bytes_cs"]] += d.bytes[0]
            row[_E["bytes_sc"]] += d.bytes[1]
            row[_E["packets_cs"]] += d.packets[0]
            row[_E["packets_sc"]] += d.packets[1]
            row[_E["opened"]] += d.opened
            row[_E["closed"]] += d.closed
            row[_E["resets"]] += d.resets
            row[_E["retransmissions"]] += d.retransmissions
            self._touched[labels] = now
            if d.active is not None:
                self._active[(src_id, dst_id, proto, transport)] = (now, d.active)
            calls = sum(d.calls.values())
            errors = sum(d.calls.get(c, 0) for c in _ERROR_CLASSES)
            client = self._endpoint(src, now)
            client[_P["tx_bytes"]] += d.bytes[0]
            client[_P["rx_bytes"]] += d.bytes[1]
            client[_P["tx_packets"]] += d.packets[0]
            client[_P["rx_packets"]] += d.packets[1]
            client[_P["calls_client"]] += calls
            client[_P["errors_client"]] += errors
            client[_P["opened_client"]] += d.opened
            server = self._endpoint(dst, now)
            server[_P["rx_bytes"]] += d.bytes[0]
            server[_P["tx_bytes"]] += d.bytes[1]
            server[_P["rx_packets"]] += d.packets[0]
            server[_P["tx_packets"]] += d.packets[1]
            server[_P["calls_server"]] += calls
            server[_P["errors_server"]] += errors
            server[_P["opened_server"]] += d.opened

    def _endpoint(self, label: str, now: int) -> list[int]:
        row = self.endpoints.get(label)
        if row is None:
            row = self.endpoints[label] = [0] * len(_ENDPOINT_FIELDS)
        self._touched[label] = now
        return row

    def _prune(self, now: int) -> None:
        for key in [k for k, t in self._touched.items() if now - t > STALE_NS]:
            del self._touched[key]
            if isinstance(key, tuple):
                self.edges.pop(key, None)
            else:
                self.endpoints.pop(key, None)
        for raw in [k for k, (t, _) in self._active.items() if now - t > ACTIVE_FRESH_NS]:
            del self._active[raw]

    def snapshot(self) -> tuple[dict[EdgeLabels, list[int]], dict[str, list[int]], dict[EdgeLabels, int]]:
        """Copies of the edge and endpoint counters and the active-connection gauges (folded by the
        current top), after dropping stale series."""
        now = self._clock()
        with self._lock:
            self._prune(now)
            self._rank(now)
            active: dict[EdgeLabels, int] = {}
            for (src, dst, proto, transport), (_, n) in self._active.items():
                key = (self._label(src), self._label(dst), proto, transport)
                active[key] = active.get(key, 0) + n
            return (
                {k: list(v) for k, v in self.edges.items()},
                {k: list(v) for k, v in self.endpoints.items()},
                active,
            )


#: what the aggregates' own numbers (`hub.aggregates.Aggregates.health`) mean on /metrics
AGGREGATES_HELP = {
    "calls_total": "Calls counted into the aggregates.",
    "calls_skipped_total": "Calls left out: no timestamp, older than --aggregate-retain, or far ahead.",
    "flows_total": "Flow aggregate rows committed (per edge and minute of a flows message).",
    "rows_written_total": "Minute rows the flushes appended.",
    "rows_dropped_total": "Minute and hour rows deleted by retention.",
    "rows_rolled_total": "Minute rows folded into hour rows (older than two days).",
    "folded_total": "Counts put on the edge (other, other) because a bound on edges was reached.",
    "flush_errors_total": "Flushes that failed (their minutes stay in memory and are retried).",
    "add_seconds_total": "Seconds the hub's event loop spent counting calls into the aggregates.",
    "write_seconds_total": "Seconds spent writing the aggregates file (flushes, flows, retention).",
    "open_minutes": "Minutes of calls held in memory, not yet written.",
    "open_edges": "Edge rows held in memory across those minutes.",
    "edges": "Edges (client, server, protocol, transport) numbered in the file.",
    "file_bytes": "Bytes on disk of aggregates.duckdb, WAL included.",
}


def render_aggregates(counters: AggregateCounters, health: dict[str, float]) -> str:
    """The aggregates' families: per edge and per endpoint, then the aggregates store's own health
    (`health`: name -> value from `hub.aggregates.Aggregates.health`)."""
    edges, endpoints, active = counters.snapshot()
    out = Exposition()
    edge_keys = sorted(edges)

    def edge_labels(k: EdgeLabels) -> dict[str, str]:
        return {"src": k[0], "dst": k[1], "protocol": k[2], "transport": k[3]}

    out.family(
        "podshark_edge_calls_total",
        "counter",
        "Calls from src to dst by protocol and status class (top nodes by traffic keep their label; "
        "the rest are 'other').",
        [
            ({**edge_labels(k), "status_class": cls}, edges[k][i])
            for k in edge_keys
            for i, cls in enumerate(STATUS_CLASSES)
            if edges[k][i]
        ],
    )
    for name, cs, sc, help_text in (
        ("bytes", "bytes_cs", "bytes_sc", "Frame bytes on the wire between src and dst, by direction."),
        ("packets", "packets_cs", "packets_sc", "Packets between src and dst, by direction."),
    ):
        out.family(
            f"podshark_edge_{name}_total",
            "counter",
            help_text,
            [
                ({**edge_labels(k), "direction": direction}, edges[k][_E[f]])
                for k in edge_keys
                for direction, f in (("client_to_server", cs), ("server_to_client", sc))
            ],
        )
    for name, f, help_text in (
        ("connections_opened", "opened", "Connections (UDP: flows) opened from src to dst."),
        ("connections_closed", "closed", "Connections (UDP: flows) from src to dst that ended."),
        ("resets", "resets", "Connections from src to dst that ended with a RST."),
        ("retransmissions", "retransmissions", "TCP segments between src and dst seen again."),
    ):
        out.family(
            f"podshark_edge_{name}_total",
            "counter",
            help_text,
            [(edge_labels(k), edges[k][_E[f]]) for k in edge_keys],
        )
    out.family(
        "podshark_edge_connections_active",
        "gauge",
        "Connections from src to dst open at the end of the workers' last flow interval.",
        [(edge_labels(k), active[k]) for k in sorted(active)],
    )
    labels = sorted(endpoints)
    for name, rx, tx, help_text in (
        ("bytes", "rx_bytes", "tx_bytes", "Frame bytes an endpoint received (rx) and sent (tx)."),
        ("packets", "rx_packets", "tx_packets", "Packets an endpoint received (rx) and sent (tx)."),
    ):
        out.family(
            f"podshark_endpoint_{name}_total",
            "counter",
            help_text,
            [
                ({"endpoint": e, "direction": d}, endpoints[e][_P[f]])
                for e in labels
                for d, f in (("rx", rx), ("tx", tx))
            ],
        )
    for name, prefix, help_text in (
        ("calls", "calls", "Calls an endpoint made (role client) and served (role server)."),
        ("call_errors", "errors", "Failed calls (5xx, non-zero status) by the endpoint's role."),
        ("connections_opened", "opened", "Connections an endpoint opened (client) and accepted (server)."),
    ):
        out.family(
            f"podshark_endpoint_{name}_total",
            "counter",
            help_text,
            [
                ({"endpoint": e, "role": role}, endpoints[e][_P[f"{prefix}_{role}"]])
                for e in labels
                for role in ("client", "server")
            ],
        )
    out.family(
        "podshark_metrics_top_endpoints",
        "gauge",
        "Endpoints that keep their own label (the busiest by bytes plus calls); the rest are 'other'.",
        [({}, len(counters.top()))],
    )
    for key in sorted(health):
        kind = "counter" if key.endswith("_total") else "gauge"
        help_text = AGGREGATES_HELP.get(key, f"Aggregates: {key}.")
        out.family(f"podshark_aggregates_{key}", kind, help_text, [({}, health[key])])
    return out.text()
