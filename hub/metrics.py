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
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Iterable, Sequence
from typing import Any

from dissect.model import Call, status_class

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
