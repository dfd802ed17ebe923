"""Per-minute traffic aggregates: who talked to whom, how much, how well, kept for 30 days.

The calls store answers "what happened" and keeps days; operators also ask "how much, between whom,
and is it normal" over weeks. Keeping weeks of calls costs too much, so the hub also keeps, in its own
DuckDB file (`aggregates.duckdb` in the hub's db directory, its own retention: `podshark hub
--aggregate-retain`, default 30 days), one row per minute and *edge*: (client node, server node,
protocol, transport), where a node is what `hub.nodes.node_of` makes of an endpoint (a workload, a
pod, a service, an address inside the cluster, or an external one). A row holds:

- from the calls (a writer listener, fed every committed batch): calls per status class
  (`dissect.model.status_class`; errors are the `5xx` and `error` classes, as `dissect.filter.ERRORS`)
  and a latency histogram of fixed log-scale buckets (`LATENCY_BOUNDS_NS`, three per octave from 4 µs
  to 69 s), so p50/p99 over any window come from sums, within a bucket (±12%);
- from the workers' `flows` messages (`FlowRecord`, the wire form of `dissect.flowstats`'
  FlowAggregate): bytes and packets each way, connections opened/closed/active, resets,
  retransmissions, handshake RTT and connection duration (sums, counts and maxima).

Per-pod totals (`pods()`) are the same rows seen from each end, so they need no table of their own.

Cost. A call costs a dict update on the event loop (`add_calls`: two cached node look-ups, a counter
list, a bisect into the histogram); the current minute lives in memory and is written when it is
over plus `GRACE_NS`, in one transaction per flush (`flush`, from the hub's timer every few seconds,
and everything at shutdown). Calls of a minute already written (a slow call, an imported capture)
start a new in-memory row that the next flush appends: queries SUM over rows, so a minute may have
several. Flows are different: a worker's `flows` message is acknowledged only once its rows are
durable, so `add_flows` commits them at once into `pending` (DuckDB's WAL: a `kill -9` after the ack
loses nothing), and the flush folds each finished minute's pending rows into one row of `minutes`
in the same transaction that writes the calls' rows. A kill -9 loses at most the calls of the last
minute or two from the aggregates (never from the calls store).

Layout. `series` numbers the edges once (id, both nodes' kind/id/namespace/name, protocol,
transport), so the fact tables hold two integers and the measures; `minutes` (minute since the epoch,
series, measures) is appended in time order, so DuckDB's zone maps skip the minutes outside a window;
`pending` has the same columns; `hours` (hour since the epoch, ...) holds the roll-up.

Roll-up and retention (`enforce`, when the file is opened and then every `ENFORCE_EVERY_S`). Size
and query time grow with rows, and the rows' bytes are the counters themselves (64 B a row
compressed): a month of 200 busy edges by minute is 8.6 million rows, 0.5 GiB, and most of a second
to sum. So the minutes of an hour that ended more than `rollup_after_ns` (2 days) ago are folded into
one hour row per edge: a month of 200 edges is then 0.7 million rows (`python -m bench
hub_aggregates` measures both). Retention then deletes the minutes and hours older than the limit,
and the edges no row uses any more, and checkpoints, so DuckDB reuses the freed blocks: the file
stays bounded at about the size of the retained window (DuckDB never truncates a file).

Windows. A query sums the rows that overlap [from, to): every minute (and, past the roll-up age,
every hour) that overlaps counts whole, so a window of a few seconds (an imported capture's) still
finds its minute, and an old one its hour; `seconds` stays the window's length, so rates over a
window that is not whole minutes (hours, when old) are off by at most one row at each end.

Bounds, because the keys come from the traffic (a port scan from the internet is a new external node
per address): at most `max_open_keys` edges in memory across the open minutes and `max_series`
numbered edges; past either, traffic is counted on the edge (`OTHER`, `OTHER`) and in
`health()["folded_total"]`. Node look-ups are cached (bounded) and the cache is dropped when the
cluster ranges change (`ClusterRanges.generation`).

Threads. `add_calls` and `prepare_flows` run on the event loop; `add_flows`, `flush`, `enforce`,
`edges` and `pods` in executor threads. Writes are serialised by one lock; a readers-writer gate keeps
`edges()` from seeing a flushing minute twice (in memory and in the file) or not at all.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import itertools
import logging
import math
import re
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import duckdb
import msgspec
import pyarrow as pa
from aiohttp import web

from dissect.model import STATUS_CLASSES, Call, Endpoint, status_class
from hub.metrics import AggregateCounters, EdgeDelta
from hub.nodes import ClusterRanges, MapNode, node_of

log = logging.getLogger("podshark.hub.aggregates")

__all__ = [
    "AGGREGATES_KEY",
    "DEFAULT_RETAIN_NS",
    "DEFAULT_ROLLUP_AFTER_NS",
    "FILE_NAME",
    "FLOW_DECODER",
    "HOUR_NS",
    "LATENCY_BOUNDS_NS",
    "LATENCY_BUCKETS",
    "MINUTE_NS",
    "OTHER",
    "Aggregates",
    "AggregatesError",
    "EdgeRow",
    "FlowRecord",
    "FlowRow",
    "PodRow",
    "bucket_bounds",
    "latency_bucket",
    "percentile_ns",
]

SECOND = 1_000_000_000
MINUTE_NS = 60 * SECOND
HOUR_NS = 60 * MINUTE_NS
DAY_NS = 86_400 * SECOND
DEFAULT_RETAIN_NS = 30 * DAY_NS
#: minute rows older than this are folded into hour rows (the alerts' 24 h baseline stays by minute)
DEFAULT_ROLLUP_AFTER_NS = 2 * DAY_NS
FILE_NAME = "aggregates.duckdb"
LAYOUT = 1  # the file's table layout; a file of another layout is refused with what to do

GRACE_NS = 10 * SECOND  # a minute is written this long after it is over (late calls still make it)
# queries read the open minutes from memory, so this is only how much a kill -9 can lose, and how
# often a stream of late calls (an import of an old capture) rewrites rows for the same minutes
FLUSH_EVERY_S = 15.0
ENFORCE_EVERY_S = 600.0
MAX_FUTURE_NS = 10 * MINUTE_NS  # traffic stamped further ahead of the hub's clock is refused
MAX_FLOW_SPAN_NS = 3600 * SECOND  # a flow aggregate covers one worker interval (10 s by default)
MAX_COUNT = 1 << 62  # any one counter of a flow aggregate; sums stay far inside 64 bits
MAX_IDENTITY = 512  # characters of an identity field (Kubernetes names are at most 253)
MAX_NODE_CACHE = 65_536
MAX_CLASS_CACHE = 4096
MAX_OPEN_KEYS = 200_000
MAX_SERIES = 200_000
_I32 = (1 << 31) - 1

#: the node everything past the bounds is counted under
OTHER = MapNode("other", "other", None, "other")
_OVERFLOW_KEY = (OTHER.id, OTHER.id, "other", "other")

# ---- the latency histogram

#: bucket upper bounds, ns: 2^(12 + i/3) for i in 0..72 (4.1 µs .. 68.7 s); bucket 0 is everything
#: below the first bound, the last bucket everything from the last bound up
LATENCY_BOUNDS_NS: tuple[int, ...] = tuple(round(2 ** (12 + i / 3)) for i in range(73))
LATENCY_BUCKETS = len(LATENCY_BOUNDS_NS) + 1


def latency_bucket(ns: int) -> int:
    """The histogram bucket of a latency: bucket i holds [bounds(i)[0], bounds(i)[1])."""
    return bisect.bisect_right(LATENCY_BOUNDS_NS, ns)


def bucket_bounds(i: int) -> tuple[int, int | None]:
    """[low, high) of bucket i in ns; high is None for the last (open) bucket."""
    lo = 0 if i == 0 else LATENCY_BOUNDS_NS[i - 1]
    hi = LATENCY_BOUNDS_NS[i] if i < len(LATENCY_BOUNDS_NS) else None
    return lo, hi


def _bucket_value(i: int) -> int:
    """What a bucket reports: the geometric middle of its bounds (within ±12% of anything in it);
    the first and last, which have no second bound, report as if they were as wide as the others."""
    lo, hi = bucket_bounds(i)
    if hi is None:
        return lo
    if lo == 0:
        lo = round(hi / 2 ** (1 / 3))
    return round(math.sqrt(lo * hi))


def percentile_ns(hist: Sequence[int], q: float) -> int | None:
    """The q-quantile (0 < q <= 1) of a histogram by nearest rank: the value of the bucket that holds
    the ceil(q * n)-th smallest latency. None for an empty histogram."""
    total = sum(hist)
    if total <= 0:
        return None
    rank = max(1, math.ceil(q * total))
    running = 0
    for i, n in enumerate(hist):
        running += n
        if running >= rank:
            return _bucket_value(i)
    return _bucket_value(len(hist) - 1)


# ---- the columns of a minute row (and of the in-memory accumulators, in the same order)

_CLASS_COLUMNS = tuple(f"c_{c}" for c in STATUS_CLASSES)
SUMMED = (
    "calls",
    *_CLASS_COLUMNS,
    "latency_count",
    "latency_sum_ns",
    "bytes_cs",
    "bytes_sc",
    "packets_cs",
    "packets_sc",
    "opened",
    "closed",
    "resets",
    "retrans_cs",
    "retrans_sc",
    "rtt_sum_ns",
    "rtt_count",
    "duration_sum_ns",
    "duration_count",
)
MAXED = ("active_max", "rtt_max_ns", "duration_max_ns")
HIST = tuple(f"h{i}" for i in range(LATENCY_BUCKETS))
COLUMNS = SUMMED + MAXED + HIST
_IX = {c: i for i, c in enumerate(COLUMNS)}
_CALLS = _IX["calls"]
_CLASS_IX = {c: _IX[f"c_{c}"] for c in STATUS_CLASSES}
_LAT_COUNT = _IX["latency_count"]
_LAT_SUM = _IX["latency_sum_ns"]
_H0 = _IX["h0"]
_MAX_IX = frozenset(_IX[c] for c in MAXED)
_FIRST_HIST = len(SUMMED) + len(MAXED)

_MEASURES_DDL = ", ".join(f"{c} {'INTEGER' if c in HIST else 'BIGINT'} NOT NULL" for c in COLUMNS)
_FACT_DDL = f"minute INTEGER NOT NULL, series INTEGER NOT NULL, {_MEASURES_DDL}"
_HOURS_DDL = f"hour INTEGER NOT NULL, series INTEGER NOT NULL, {_MEASURES_DDL}"
_SERIES_COLUMNS = (
    "id",
    "src_kind",
    "src_id",
    "src_namespace",
    "src_name",
    "dst_kind",
    "dst_id",
    "dst_namespace",
    "dst_name",
    "protocol",
    "transport",
)
_SERIES_DDL = (
    "id INTEGER NOT NULL, src_kind VARCHAR NOT NULL, src_id VARCHAR NOT NULL, src_namespace VARCHAR, "
    "src_name VARCHAR NOT NULL, dst_kind VARCHAR NOT NULL, dst_id VARCHAR NOT NULL, dst_namespace VARCHAR, "
    "dst_name VARCHAR NOT NULL, protocol VARCHAR, transport VARCHAR NOT NULL"
)
_AGG_SQL = ", ".join(f"{'max' if c in MAXED else 'sum'}({c})" for c in COLUMNS)
_FACT_ARROW = pa.schema(
    [("minute", pa.int32()), ("series", pa.int32())]
    + [(c, pa.int32() if c in HIST else pa.int64()) for c in COLUMNS]
)

Key = tuple[str, str, str | None, str]  # src node id, dst node id, protocol, transport


@dataclass(slots=True)
class _Acc:
    """One edge's measures in one minute (in memory), in COLUMNS order."""

    src: MapNode
    dst: MapNode
    protocol: str | None
    transport: str
    values: list[int]


def _zeros() -> list[int]:
    return [0] * len(COLUMNS)


def _merge(into: list[int], other: Sequence[int]) -> None:
    for i, v in enumerate(other):
        if i in _MAX_IX:
            if v > into[i]:
                into[i] = v
        else:
            into[i] += v


# ---- the flows message


Count = Annotated[int, msgspec.Meta(ge=0, le=MAX_COUNT)]
Pair = Annotated[list[Count], msgspec.Meta(min_length=2, max_length=2)]
Timestamp = Annotated[int, msgspec.Meta(ge=0, le=(1 << 63) - 1)]


class FlowRecord(msgspec.Struct, kw_only=True):
    """One flow aggregate as a worker sends it (`dissect.flowstats.FlowAggregate`'s JSON), with the
    bounds the hub needs: every counter a non-negative integer, pairs of exactly two. Unknown fields
    are ignored, so a newer worker's additions do not make its flows invalid."""

    v: int = 1
    start_ts: Timestamp
    end_ts: Timestamp
    transport: str
    src: Endpoint
    dst: Endpoint
    protocol: str | None = None
    bytes: Pair
    packets: Pair
    opened: Count = 0
    closed: Count = 0
    active: Count = 0
    resets: Count = 0
    retransmissions: Pair = msgspec.field(default_factory=lambda: [0, 0])
    rtt_ns_sum: Count = 0
    rtt_count: Count = 0
    rtt_ns_max: Count = 0
    duration_ns_sum: Count = 0
    duration_count: Count = 0
    duration_ns_max: Count = 0


FLOW_DECODER = msgspec.json.Decoder(FlowRecord)
_PROTOCOL_RE = re.compile(r"[A-Za-z0-9_.+-]{1,32}")
_IDENTITY_FIELDS = ("ip", "pod", "namespace", "workload", "service", "node")

#: one edge's flow measures in one minute, ready for `add_flows`
FlowRow = tuple[int, Key, _Acc]


# ---- what queries return


@dataclass(frozen=True, slots=True)
class EdgeRow:
    """One (src node, dst node, protocol, transport) summed over a window."""

    src: MapNode
    dst: MapNode
    protocol: str | None
    transport: str
    calls: int
    errors: int  # the dissect.filter.ERRORS classes: 5xx and error
    status: dict[str, int]  # status class -> calls, the classes with any
    latency_p50_ns: int | None  # from the histogram: within ±12% of the exact value
    latency_p99_ns: int | None
    bytes: tuple[int, int]  # [client->server, server->client], frame bytes on the wire, from flows
    packets: tuple[int, int]
    opened: int
    closed: int
    active_max: int  # most connections open at the end of one worker's flow interval
    resets: int
    retransmissions: int
    rtt_avg_ns: int | None  # TCP handshake round trip at the capture point
    duration_avg_ns: int | None  # of the connections that closed in the window
    seconds: float  # the window's length, for rates


@dataclass(frozen=True, slots=True)
class PodRow:
    """One node's traffic over a window, from the edges it is an end of: as a client (src) it sends
    the client->server bytes, as a server (dst) it receives them. A node that talks to itself counts
    both ways."""

    node: MapNode
    rx_bytes: int
    tx_bytes: int
    rx_packets: int
    tx_packets: int
    connections_in: int  # opened to it (as a server)
    connections_out: int  # opened by it (as a client)
    calls_in: int  # served
    calls_out: int  # made
    errors_in: int
    errors_out: int
    seconds: float


_POD_FIELDS = (
    "rx_bytes",
    "tx_bytes",
    "rx_packets",
    "tx_packets",
    "connections_in",
    "connections_out",
    "calls_in",
    "calls_out",
    "errors_in",
    "errors_out",
)


class AggregatesError(Exception):
    """The aggregates file cannot be used (locked by another hub, another layout, damaged)."""


class _Gate:
    """Readers-writer gate: `edges()` readers share it, a flush holds it alone while a minute moves
    from memory to the file, so no reader sees that minute twice or not at all. A waiting flush
    goes before readers that arrive after it."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._writer = False
        self._waiting = 0

    @contextlib.contextmanager
    def shared(self) -> Iterator[None]:
        with self._cond:
            while self._writer or self._waiting:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                self._cond.notify_all()

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        with self._cond:
            self._waiting += 1
            try:
                while self._writer or self._readers:
                    self._cond.wait()
            finally:
                self._waiting -= 1
            self._writer = True
        try:
            yield
        finally:
            with self._cond:
                self._writer = False
                self._cond.notify_all()


@dataclass
class _Health:
    calls_total: int = 0  # calls counted into the aggregates
    calls_skipped_total: int = 0  # without a timestamp, older than the retention, or too far ahead
    flows_total: int = 0  # flow aggregates committed
    rows_written_total: int = 0  # minute rows appended by flushes
    rows_dropped_total: int = 0  # minute and hour rows removed by retention
    rows_rolled_total: int = 0  # minute rows folded into hour rows
    folded_total: int = 0  # adds counted on (other, other) because a bound was reached
    flush_errors_total: int = 0
    add_seconds: float = 0.0  # time spent counting calls on the event loop (`add_calls`)
    write_seconds: float = 0.0  # time spent writing: flushes, flows commits, retention


class Aggregates:
    """The per-minute aggregates of one hub (see the module docstring)."""

    def __init__(
        self,
        path: Path,
        retain_ns: int = DEFAULT_RETAIN_NS,
        ranges: ClusterRanges | None = None,
        *,
        rollup_after_ns: int = DEFAULT_ROLLUP_AFTER_NS,
        top_n: int = 50,
        max_open_keys: int = MAX_OPEN_KEYS,
        max_series: int = MAX_SERIES,
        clock: Callable[[], int] = time.time_ns,
    ) -> None:
        if retain_ns <= 0:
            raise ValueError("retain_ns must be positive")
        self.path = Path(path)
        self.retain_ns = retain_ns
        self.rollup_after_ns = rollup_after_ns
        self.ranges = ranges if ranges is not None else ClusterRanges()
        self.max_open_keys = max_open_keys
        self.max_series = max_series
        self._clock = clock
        self.counters = AggregateCounters(top_n=top_n, clock=clock)
        self._health = _Health()
        self._health_lock = threading.Lock()
        self._lock = threading.Lock()  # the open minutes and the node cache (event loop vs threads)
        self._write_lock = threading.Lock()  # one writer of the file at a time
        self._gate = _Gate()
        self._open: dict[int, dict[Key, _Acc]] = {}  # minute -> edge -> calls measures
        self._open_keys = 0
        self._nodes: dict[tuple[str | None, ...], MapNode] = {}
        self._class_ix: dict[tuple[str, int | None], int] = {}
        self._nodes_generation = -1
        self._series: dict[Key, int] = {}
        self._series_info: dict[int, tuple[MapNode, MapNode, str | None, str]] = {}
        self._next_series = 0
        self._batches = itertools.count()
        self._closed = False
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = duckdb.connect(str(self.path))
        except duckdb.Error as e:
            raise AggregatesError(
                f"cannot open the aggregates file {self.path}: {e}. If another hub uses this --db "
                "directory, stop it; if the file is damaged, move it away (the calls are not in it) "
                "and the hub starts a new one"
            ) from e
        try:
            self._db.execute("SET autoinstall_known_extensions = false")
            self._db.execute("SET autoload_known_extensions = false")
            self._setup()
            self.enforce()  # a shorter retention applies from the start, not ten minutes later
        except duckdb.Error as e:
            self._db.close()
            raise AggregatesError(
                f"the aggregates file {self.path} cannot be read: {e}. Move it away (the calls are not "
                "in it) and the hub starts a new one"
            ) from e
        except Exception:
            self._db.close()
            raise

    def _setup(self) -> None:
        con = self._db
        con.execute("CREATE TABLE IF NOT EXISTS meta (key VARCHAR NOT NULL, value VARCHAR NOT NULL)")
        rows = con.execute("SELECT value FROM meta WHERE key = 'layout'").fetchall()
        if rows and rows[0][0] != str(LAYOUT):
            raise AggregatesError(
                f"{self.path} has aggregates layout {rows[0][0]}, this podshark writes {LAYOUT}: "
                "move the file away to start new aggregates (the calls are not in it)"
            )
        con.execute("BEGIN")
        if not rows:
            con.execute("INSERT INTO meta VALUES ('layout', ?)", [str(LAYOUT)])
        con.execute(f"CREATE TABLE IF NOT EXISTS series ({_SERIES_DDL})")
        con.execute(f"CREATE TABLE IF NOT EXISTS minutes ({_FACT_DDL})")
        con.execute(f"CREATE TABLE IF NOT EXISTS pending ({_FACT_DDL})")
        con.execute(f"CREATE TABLE IF NOT EXISTS hours ({_HOURS_DDL})")
        con.execute("COMMIT")
        for row in con.execute(f"SELECT {', '.join(_SERIES_COLUMNS)} FROM series").fetchall():
            sid, sk, si, sn, sname, dk, di, dn, dname, protocol, transport = row
            src, dst = MapNode(sk, si, sn, sname), MapNode(dk, di, dn, dname)
            self._series[(si, di, protocol, transport)] = sid
            self._series_info[sid] = (src, dst, protocol, transport)
            self._next_series = max(self._next_series, sid + 1)

    # ---- nodes

    def _check_generation(self) -> None:
        if self._nodes_generation != self.ranges.generation:
            self._nodes.clear()
            self._nodes_generation = self.ranges.generation

    def node(self, ep: Endpoint) -> MapNode:
        """`hub.nodes.node_of`, cached (call with `_lock` held or from the event loop). An endpoint
        with no address and no identity is `OTHER`: that is how a worker sends the flows it folded
        past its own key bound (dissect/flowstats.py), and what an over-long identity becomes."""
        key = (ep.namespace, ep.workload) if ep.workload else (ep.pod, ep.service, ep.namespace, ep.ip)
        node = self._nodes.get(key)
        if node is None:
            # the key holds exactly what decides the node (node_of: a workload, else the rest)
            if any(v is not None and len(v) > MAX_IDENTITY for v in key) or all(v is None for v in key):
                node = OTHER
            else:
                node = node_of(ep, self.ranges)
            if len(self._nodes) >= MAX_NODE_CACHE:
                self._nodes.clear()
            self._nodes[key] = node
        return node

    # ---- calls (the writer's listener, on the event loop)

    def add_calls(self, calls: Sequence[Call]) -> None:
        """Count a committed batch of calls into its minutes (in memory until `flush`)."""
        if not calls:
            return
        started = time.perf_counter()
        now = self._clock()
        oldest, newest = now - self.retain_ns, now + MAX_FUTURE_NS
        skipped = 0
        counted = 0
        bounds = LATENCY_BOUNDS_NS
        with self._lock:
            self._check_generation()
            node, nodes = self.node, self._nodes
            classes = self._class_ix
            opened = self._open
            bucket: dict[Key, _Acc] = {}
            bucket_minute = None
            for c in calls:
                ts = c.request_ts
                if ts is None:
                    ts = c.response_ts
                if ts is None or ts < oldest or ts > newest:
                    skipped += 1
                    continue
                minute = ts // MINUTE_NS
                # the node cache inline (this loop is the per-call cost of the aggregates)
                # (the key as `node` makes it: a workload decides alone, with its namespace)
                e = c.src
                w = e.workload
                src = nodes.get((e.namespace, w) if w else (e.pod, e.service, e.namespace, e.ip)) or node(e)
                e = c.dst
                w = e.workload
                dst = nodes.get((e.namespace, w) if w else (e.pod, e.service, e.namespace, e.ip)) or node(e)
                protocol = c.protocol
                key = (src.id, dst.id, protocol, c.transport)
                if minute != bucket_minute:  # a batch's calls are mostly of one minute
                    found = opened.get(minute)
                    bucket = opened[minute] = {} if found is None else found
                    bucket_minute = minute
                acc = bucket.get(key)
                if acc is None:
                    acc = self._new_acc(bucket, key, src, dst, protocol, c.transport)
                v = acc.values
                v[_CALLS] += 1
                status = c.status
                ci = classes.get((protocol, status))
                if ci is None:
                    ci = self._class_index(protocol, status)
                v[ci] += 1
                lat = c.latency_ns
                if lat is not None and lat >= 0:
                    v[_LAT_COUNT] += 1
                    v[_LAT_SUM] += lat
                    v[_H0 + bisect.bisect_right(bounds, lat)] += 1
                counted += 1
            self._health.calls_total += counted
            self._health.calls_skipped_total += skipped
            self._health.add_seconds += time.perf_counter() - started

    def _class_index(self, protocol: str, status: int | None) -> int:
        """The column of a (protocol, status)'s class (`dissect.model.status_class`), cached: a few
        hundred distinct pairs in practice; the cache is dropped past MAX_CLASS_CACHE."""
        if len(self._class_ix) >= MAX_CLASS_CACHE:
            self._class_ix.clear()
        ci = self._class_ix[(protocol, status)] = _CLASS_IX[status_class(protocol, status)]
        return ci

    def _new_acc(
        self, bucket: dict[Key, _Acc], key: Key, src: MapNode, dst: MapNode, protocol: str | None, t: str
    ) -> _Acc:
        """A new in-memory row, or the minute's overflow row once `max_open_keys` are open. A
        protocol that is no dissector's name or a transport other than tcp/udp (a broken or hostile
        worker's call) is counted as protocol/transport `other`, not as an edge per value."""
        if protocol is not None and not _PROTOCOL_RE.fullmatch(protocol):
            protocol = "other"
        if t not in ("tcp", "udp"):
            t = "other"
        if (protocol, t) != key[2:]:
            self._note(folded_total=1)
            key = (key[0], key[1], protocol, t)
            acc = bucket.get(key)
            if acc is not None:
                return acc
        if self._open_keys >= self.max_open_keys:
            self._note(folded_total=1)
            acc = bucket.get(_OVERFLOW_KEY)
            if acc is not None:
                return acc
            key, src, dst, protocol, t = _OVERFLOW_KEY, OTHER, OTHER, "other", "other"
        acc = bucket[key] = _Acc(src, dst, protocol, t, _zeros())
        self._open_keys += 1
        return acc

    # ---- flows (validated and prepared on the event loop, committed in the writer's thread)

    def flow_problem(self, f: FlowRecord, now_ns: int) -> str | None:
        """Why a decoded flow aggregate cannot be counted, or None. The decoder checked the types
        and the counters' ranges; this checks what the types do not say."""
        if f.v != 1:
            return f"unsupported flow aggregate version {f.v!r} (this hub reads 1)"
        if f.transport not in ("tcp", "udp"):
            return f"transport must be tcp or udp, not {f.transport[:32]!r}"
        if f.end_ts < f.start_ts:
            return f"end_ts {f.end_ts} is before start_ts {f.start_ts}"
        if f.end_ts - f.start_ts > MAX_FLOW_SPAN_NS:
            span = (f.end_ts - f.start_ts) // SECOND
            return (
                f"the interval spans {span} s; a flow aggregate covers at most {MAX_FLOW_SPAN_NS // SECOND} s"
            )
        if f.start_ts > now_ns + MAX_FUTURE_NS:
            ahead = (f.start_ts - now_ns) // SECOND
            return f"start_ts is {ahead} s ahead of the hub's clock: check the node's clock (NTP)"
        if f.protocol is not None and not _PROTOCOL_RE.fullmatch(f.protocol):
            return "protocol must be 1-32 letters, digits or _.+- (a dissector name)"
        for end, e in (("src", f.src), ("dst", f.dst)):
            if e.port is not None and not 0 <= e.port <= 65535:
                return f"{end}.port {e.port} is not a port number (0-65535)"
            for name in _IDENTITY_FIELDS:
                value = getattr(e, name)
                if value is not None and len(value) > MAX_IDENTITY:
                    return f"{end}.{name} is {len(value)} characters; at most {MAX_IDENTITY}"
        return None

    def expired(self, f: FlowRecord, now_ns: int) -> bool:
        """Is the flow older than the retention? (acknowledged, not stored: it would be dropped)"""
        return f.end_ts < now_ns - self.retain_ns

    def prepare_flows(self, flows: Sequence[FlowRecord]) -> list[FlowRow]:
        """Valid flow aggregates as one row per (minute, edge): the minute the interval starts in.
        Connections open at an interval's end add up over the flows of that interval (the pods of a
        workload, several server ports); the row keeps the largest such sum."""
        rows: dict[tuple[int, Key], _Acc] = {}
        active: dict[tuple[int, Key, int], int] = {}
        with self._lock:
            self._check_generation()
            for f in flows:
                minute = f.start_ts // MINUTE_NS
                src, dst = self.node(f.src), self.node(f.dst)
                key = (src.id, dst.id, f.protocol, f.transport)
                acc = rows.get((minute, key))
                if acc is None:
                    acc = rows[(minute, key)] = _Acc(src, dst, f.protocol, f.transport, _zeros())
                v = acc.values
                v[_IX["bytes_cs"]] += f.bytes[0]
                v[_IX["bytes_sc"]] += f.bytes[1]
                v[_IX["packets_cs"]] += f.packets[0]
                v[_IX["packets_sc"]] += f.packets[1]
                v[_IX["opened"]] += f.opened
                v[_IX["closed"]] += f.closed
                v[_IX["resets"]] += f.resets
                v[_IX["retrans_cs"]] += f.retransmissions[0]
                v[_IX["retrans_sc"]] += f.retransmissions[1]
                v[_IX["rtt_sum_ns"]] += f.rtt_ns_sum
                v[_IX["rtt_count"]] += f.rtt_count
                v[_IX["duration_sum_ns"]] += f.duration_ns_sum
                v[_IX["duration_count"]] += f.duration_count
                v[_IX["rtt_max_ns"]] = max(v[_IX["rtt_max_ns"]], f.rtt_ns_max)
                v[_IX["duration_max_ns"]] = max(v[_IX["duration_max_ns"]], f.duration_ns_max)
                slot = (minute, key, f.end_ts)
                total = active[slot] = active.get(slot, 0) + f.active
                v[_IX["active_max"]] = max(v[_IX["active_max"]], total)
        return [(minute, key, acc) for (minute, key), acc in rows.items()]

    def add_flows(self, rows: Sequence[FlowRow]) -> int:
        """Commit prepared flow rows (durable when this returns); returns how many rows."""
        if not rows:
            return 0
        started = time.perf_counter()
        with self._write_lock:
            self._check_open()
            con = self._db
            created: list[int] = []
            con.execute("BEGIN")
            try:
                table = self._fact_table(
                    [(m, self._series_id(key, acc, created), acc) for m, key, acc in rows]
                )
                self._insert_series(created)
                name = f"flows_{next(self._batches)}"
                con.register(name, table)
                try:
                    con.execute(f"INSERT INTO pending SELECT * FROM {name}")
                finally:
                    con.unregister(name)
                con.execute("COMMIT")
            except BaseException:
                self._rollback(created)
                raise
        for _, _key, acc in rows:
            self.counters.add(acc.src.id, acc.dst.id, acc.protocol, acc.transport, _flow_delta(acc.values))
        self._note(flows_total=len(rows), write_seconds=time.perf_counter() - started)
        return len(rows)

    # ---- writing minutes

    def _series_id(self, key: Key, acc: _Acc, created: list[int]) -> int:
        """The number of an edge, numbering it (in `created`) when new; past `max_series` the
        overflow edge's."""
        sid = self._series.get(key)
        if sid is not None:
            return sid
        if len(self._series) >= self.max_series and key != _OVERFLOW_KEY:
            self._note(folded_total=1)
            overflow = _Acc(OTHER, OTHER, "other", "other", acc.values)
            return self._series_id(_OVERFLOW_KEY, overflow, created)
        sid = self._next_series
        self._next_series += 1
        self._series[key] = sid
        self._series_info[sid] = (acc.src, acc.dst, acc.protocol, acc.transport)
        created.append(sid)
        return sid

    def _insert_series(self, created: list[int]) -> None:
        if not created:
            return
        columns: list[list[Any]] = [[] for _ in _SERIES_COLUMNS]
        for sid in created:
            src, dst, protocol, transport = self._series_info[sid]
            for col, value in zip(
                columns, (sid, *_node_columns(src), *_node_columns(dst), protocol, transport), strict=True
            ):
                col.append(value)
        table = pa.Table.from_arrays(
            [pa.array(columns[0], pa.int32()), *(pa.array(c, pa.string()) for c in columns[1:])],
            names=list(_SERIES_COLUMNS),
        )
        name = f"series_{next(self._batches)}"
        self._db.register(name, table)
        try:
            self._db.execute(f"INSERT INTO series SELECT * FROM {name}")
        finally:
            self._db.unregister(name)

    def _rollback(self, created: list[int]) -> None:
        with contextlib.suppress(duckdb.Error):
            self._db.execute("ROLLBACK")
        for sid in created:
            src, dst, protocol, transport = self._series_info.pop(sid)
            self._series.pop((src.id, dst.id, protocol, transport), None)

    def _fact_table(self, rows: Sequence[tuple[int, int, _Acc]]) -> pa.Table:
        columns: list[list[int]] = [[] for _ in range(2 + len(COLUMNS))]
        for minute, sid, acc in rows:
            columns[0].append(minute)
            columns[1].append(sid)
            for i, v in enumerate(acc.values):
                # a counter past its column (hostile sums) is clamped rather than failing the commit
                cap = _I32 if i >= _FIRST_HIST else MAX_COUNT
                columns[2 + i].append(v if v <= cap else cap)
        return pa.Table.from_arrays(
            [pa.array(col, type=f.type) for col, f in zip(columns, _FACT_ARROW, strict=True)],
            schema=_FACT_ARROW,
        )

    def flush(self, now_ns: int | None = None, *, everything: bool = False) -> int:
        """Write the minutes that are over (plus `GRACE_NS`), or all of them at shutdown, and fold
        the flows of those minutes from `pending` into one row per edge; returns rows written."""
        now = self._clock() if now_ns is None else now_ns
        last = (now - GRACE_NS) // MINUTE_NS - 1  # the latest minute that is over
        upto = (1 << 31) - 1 if everything else last
        started = time.perf_counter()
        with self._write_lock, self._gate.exclusive():
            self._check_open()
            with self._lock:
                taken = {m: self._open.pop(m) for m in sorted(self._open) if m <= upto}
                self._open_keys -= sum(len(b) for b in taken.values())
            try:
                written = self._write_minutes(taken, upto)
            except BaseException:
                self._note(flush_errors_total=1)
                with self._lock:  # back into memory: the next flush tries again
                    for m, bucket in taken.items():
                        into = self._open.setdefault(m, {})
                        for key, acc in bucket.items():
                            if key in into:
                                _merge(into[key].values, acc.values)
                            else:
                                into[key] = acc
                                self._open_keys += 1
                raise
        for bucket in taken.values():
            for acc in bucket.values():
                self.counters.add(
                    acc.src.id, acc.dst.id, acc.protocol, acc.transport, _call_delta(acc.values)
                )
        self._note(rows_written_total=written, write_seconds=time.perf_counter() - started)
        return written

    def _write_minutes(self, taken: dict[int, dict[Key, _Acc]], upto: int) -> int:
        con = self._db
        created: list[int] = []
        con.execute("BEGIN")
        try:
            facts = [
                (m, self._series_id(key, acc, created), acc)
                for m, b in taken.items()
                for key, acc in b.items()
            ]
            self._insert_series(created)
            name = f"calls_{next(self._batches)}"
            con.register(name, self._fact_table(facts))
            try:
                columns = ", ".join(("minute", "series", *COLUMNS))
                ((written,),) = con.execute(
                    f"INSERT INTO minutes SELECT minute, series, {_AGG_SQL} FROM ("
                    f"SELECT {columns} FROM pending WHERE minute <= ? "
                    f"UNION ALL SELECT {columns} FROM {name}) "
                    "GROUP BY minute, series ORDER BY minute, series",
                    [upto],
                ).fetchall()
            finally:
                con.unregister(name)
            con.execute("DELETE FROM pending WHERE minute <= ?", [upto])
            con.execute("COMMIT")
        except BaseException:
            self._rollback(created)
            raise
        return int(written)

    # ---- retention

    def enforce(self, now_ns: int | None = None) -> int:
        """Retention and roll-up: delete the minutes and hours older than the retention, fold the
        minutes of the hours that ended more than `rollup_after_ns` ago into hour rows, and forget
        the edges no row uses any more. Returns the rows deleted by retention."""
        now = self._clock() if now_ns is None else now_ns
        limit = now - self.retain_ns
        cutoff = limit // MINUTE_NS  # the minutes before this one ended before the limit
        hour_cutoff = limit // HOUR_NS
        rolled_before = (now - self.rollup_after_ns) // HOUR_NS * 60  # first minute kept by minute
        dropped = rolled = 0
        started = time.perf_counter()
        with self._write_lock, self._gate.exclusive():
            self._check_open()
            con = self._db
            con.execute("BEGIN")
            try:
                for table, column, before in (
                    ("minutes", "minute", cutoff),
                    ("pending", "minute", cutoff),
                    ("hours", "hour", hour_cutoff),
                ):
                    ((n,),) = con.execute(f"DELETE FROM {table} WHERE {column} < ?", [before]).fetchall()
                    dropped += int(n)
                ((hour_rows,),) = con.execute(
                    f"INSERT INTO hours SELECT minute // 60, series, {_AGG_SQL} FROM minutes "
                    "WHERE minute < ? GROUP BY minute // 60, series ORDER BY 1, 2",
                    [rolled_before],
                ).fetchall()
                if hour_rows:
                    ((rolled,),) = con.execute(
                        "DELETE FROM minutes WHERE minute < ?", [rolled_before]
                    ).fetchall()
                gone = [
                    r[0]
                    for r in con.execute(
                        "DELETE FROM series WHERE id NOT IN (SELECT DISTINCT series FROM minutes "
                        "UNION SELECT DISTINCT series FROM pending UNION SELECT DISTINCT series FROM hours) "
                        "RETURNING id"
                    ).fetchall()
                ]
                con.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(duckdb.Error):
                    con.execute("ROLLBACK")
                raise
            for sid in gone:
                src, dst, protocol, transport = self._series_info.pop(sid)
                self._series.pop((src.id, dst.id, protocol, transport), None)
            with self._lock:
                for m in [m for m in self._open if m < cutoff]:
                    self._open_keys -= len(self._open.pop(m))
            if dropped or rolled:
                con.execute("CHECKPOINT")  # the freed blocks become reusable; the WAL folds in
        self._note(
            rows_dropped_total=dropped,
            rows_rolled_total=int(rolled),
            write_seconds=time.perf_counter() - started,
        )
        return dropped

    # ---- reading

    def _window(self, from_ns: int, to_ns: int) -> dict[Key, _Acc]:
        """Every edge's measures summed over the minutes (and, past the roll-up age, the hours)
        that overlap [from_ns, to_ns): a row counts whole or not at all."""
        out: dict[Key, _Acc] = {}
        if to_ns <= from_ns:
            return out
        i32 = (-(1 << 31), (1 << 31) - 1)
        lo = min(max(from_ns // MINUTE_NS, i32[0]), i32[1])
        hi = min(max(-(-to_ns // MINUTE_NS), i32[0]), i32[1])
        hlo = min(max(from_ns // HOUR_NS, i32[0]), i32[1])
        hhi = min(max(-(-to_ns // HOUR_NS), i32[0]), i32[1])
        with self._gate.shared():
            self._check_open()
            with self._lock:
                for m, bucket in self._open.items():
                    if lo <= m < hi:
                        for key, acc in bucket.items():
                            have = out.get(key)
                            if have is None:
                                out[key] = _Acc(
                                    acc.src, acc.dst, acc.protocol, acc.transport, list(acc.values)
                                )
                            else:
                                _merge(have.values, acc.values)
            con = self._db.cursor()
            try:
                rows = con.execute(
                    f"SELECT series, {_AGG_SQL} FROM ("
                    "SELECT * FROM minutes WHERE minute >= ? AND minute < ? "
                    "UNION ALL SELECT * FROM pending WHERE minute >= ? AND minute < ? "
                    "UNION ALL SELECT * FROM hours WHERE hour >= ? AND hour < ?) GROUP BY series",
                    [lo, hi, lo, hi, hlo, hhi],
                ).fetchall()
            finally:
                con.close()
            info = self._series_info
            for sid, *values in rows:
                edge = info.get(sid)
                if edge is None:  # a row of an edge the series table lost: nothing to name it by
                    log.warning("aggregates: rows of unknown edge %s skipped", sid)
                    continue
                src, dst, protocol, transport = edge
                key = (src.id, dst.id, protocol, transport)
                have = out.get(key)
                ints = [int(v) for v in values]
                if have is None:
                    out[key] = _Acc(src, dst, protocol, transport, ints)
                else:
                    _merge(have.values, ints)
        return out

    def edges(self, from_ns: int, to_ns: int) -> list[EdgeRow]:
        """Every edge with traffic in the minutes (hours, past the roll-up age) that overlap
        [from_ns, to_ns), summed; `seconds` is the window's length."""
        seconds = max(0, to_ns - from_ns) / SECOND
        return [_edge_row(acc, seconds) for acc in self._window(from_ns, to_ns).values()]

    def pods(self, from_ns: int, to_ns: int) -> list[PodRow]:
        """Every node that is an end of an edge with traffic in the window, with its totals."""
        seconds = max(0, to_ns - from_ns) / SECOND
        sums: dict[str, dict[str, int]] = {}
        nodes: dict[str, MapNode] = {}
        for acc in self._window(from_ns, to_ns).values():
            v = acc.values
            errors = v[_CLASS_IX["5xx"]] + v[_CLASS_IX["error"]]
            cs, sc = (v[_IX["bytes_cs"]], v[_IX["packets_cs"]]), (v[_IX["bytes_sc"]], v[_IX["packets_sc"]])
            # the client sends client->server and receives server->client; the server the reverse
            for node, role, sent, got in ((acc.src, "out", cs, sc), (acc.dst, "in", sc, cs)):
                nodes.setdefault(node.id, node)
                t = sums.setdefault(node.id, dict.fromkeys(_POD_FIELDS, 0))
                t["tx_bytes"] += sent[0]
                t["tx_packets"] += sent[1]
                t["rx_bytes"] += got[0]
                t["rx_packets"] += got[1]
                t[f"connections_{role}"] += v[_IX["opened"]]
                t[f"calls_{role}"] += v[_CALLS]
                t[f"errors_{role}"] += errors
        return [PodRow(node=nodes[nid], seconds=seconds, **t) for nid, t in sums.items()]

    # ---- the service's side

    def _note(self, **deltas: float) -> None:
        """Add to the health counters (the flush, flows and retention threads all do)."""
        with self._health_lock:
            for name, delta in deltas.items():
                setattr(self._health, name, getattr(self._health, name) + delta)

    def health(self) -> dict[str, float]:
        """Counters and sizes for /metrics (no query)."""
        h = self._health
        with self._lock:
            open_minutes, open_keys = len(self._open), self._open_keys
        return {
            "calls_total": h.calls_total,
            "calls_skipped_total": h.calls_skipped_total,
            "flows_total": h.flows_total,
            "rows_written_total": h.rows_written_total,
            "rows_dropped_total": h.rows_dropped_total,
            "rows_rolled_total": h.rows_rolled_total,
            "folded_total": h.folded_total + self.counters.folded_edges,
            "flush_errors_total": h.flush_errors_total,
            "add_seconds_total": round(h.add_seconds, 6),
            "write_seconds_total": round(h.write_seconds, 6),
            "open_minutes": open_minutes,
            "open_edges": open_keys,
            "edges": len(self._series),
            "file_bytes": self.size_bytes(),
        }

    def size_bytes(self) -> int:
        """Bytes on disk, WAL included."""
        total = 0
        for p in (self.path, Path(str(self.path) + ".wal")):
            with contextlib.suppress(FileNotFoundError):
                total += p.stat().st_size
        return total

    async def maintain(self) -> None:
        """The hub's timer: flush every `FLUSH_EVERY_S`, retention at once and every
        `ENFORCE_EVERY_S`; runs until cancelled. Failures are logged and retried next time."""
        loop = asyncio.get_running_loop()
        next_enforce = time.monotonic() + ENFORCE_EVERY_S  # the constructor enforced once
        while True:
            if time.monotonic() >= next_enforce:
                next_enforce = time.monotonic() + ENFORCE_EVERY_S
                try:
                    await loop.run_in_executor(None, self.enforce)
                except Exception:
                    log.exception("aggregates retention failed; retrying in %.0f s", ENFORCE_EVERY_S)
            try:
                await loop.run_in_executor(None, self.flush)
            except Exception:
                log.exception("aggregates flush failed; the minutes stay in memory and are retried")
            await asyncio.sleep(FLUSH_EVERY_S)

    def close(self) -> None:
        """Write every open minute, fold `pending`, checkpoint and close the file."""
        if self._closed:
            return
        try:
            self.flush(everything=True)
        except Exception:
            log.exception("aggregates: the last flush failed; the open minutes' calls are lost")
        with self._write_lock:
            self._closed = True
            with contextlib.suppress(duckdb.Error):
                self._db.execute("CHECKPOINT")
            self._db.close()

    def _check_open(self) -> None:
        if self._closed:
            raise AggregatesError("the aggregates are closed")

    def __enter__(self) -> Aggregates:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


#: the application's aggregates (hub/app.py sets it)
AGGREGATES_KEY: web.AppKey[Aggregates] = web.AppKey("aggregates", Aggregates)


def _node_columns(n: MapNode) -> tuple[str, str, str | None, str]:
    return (n.kind, n.id, n.namespace, n.name)


def _edge_row(acc: _Acc, seconds: float) -> EdgeRow:
    v = acc.values
    hist = v[_H0 : _H0 + LATENCY_BUCKETS]
    rtt_n, dur_n = v[_IX["rtt_count"]], v[_IX["duration_count"]]
    return EdgeRow(
        src=acc.src,
        dst=acc.dst,
        protocol=acc.protocol,
        transport=acc.transport,
        calls=v[_CALLS],
        errors=v[_CLASS_IX["5xx"]] + v[_CLASS_IX["error"]],
        status={c: v[i] for c, i in _CLASS_IX.items() if v[i]},
        latency_p50_ns=percentile_ns(hist, 0.5),
        latency_p99_ns=percentile_ns(hist, 0.99),
        bytes=(v[_IX["bytes_cs"]], v[_IX["bytes_sc"]]),
        packets=(v[_IX["packets_cs"]], v[_IX["packets_sc"]]),
        opened=v[_IX["opened"]],
        closed=v[_IX["closed"]],
        active_max=v[_IX["active_max"]],
        resets=v[_IX["resets"]],
        retransmissions=v[_IX["retrans_cs"]] + v[_IX["retrans_sc"]],
        rtt_avg_ns=v[_IX["rtt_sum_ns"]] // rtt_n if rtt_n else None,
        duration_avg_ns=v[_IX["duration_sum_ns"]] // dur_n if dur_n else None,
        seconds=seconds,
    )


def _call_delta(v: Sequence[int]) -> EdgeDelta:
    return EdgeDelta(calls={c: v[i] for c, i in _CLASS_IX.items() if v[i]})


def _flow_delta(v: Sequence[int]) -> EdgeDelta:
    return EdgeDelta(
        bytes=(v[_IX["bytes_cs"]], v[_IX["bytes_sc"]]),
        packets=(v[_IX["packets_cs"]], v[_IX["packets_sc"]]),
        opened=v[_IX["opened"]],
        closed=v[_IX["closed"]],
        resets=v[_IX["resets"]],
        retransmissions=v[_IX["retrans_cs"]] + v[_IX["retrans_sc"]],
        active=v[_IX["active_max"]],
    )


def describe(rows: Sequence[EdgeRow]) -> list[dict[str, Any]]:
    """Edge rows as plain dicts (for logs and tests)."""
    return [
        {
            "src": r.src.id,
            "dst": r.dst.id,
            "protocol": r.protocol,
            "transport": r.transport,
            "calls": r.calls,
            "errors": r.errors,
            "status": r.status,
            "p50_ns": r.latency_p50_ns,
            "p99_ns": r.latency_p99_ns,
            "bytes": list(r.bytes),
            "packets": list(r.packets),
            "opened": r.opened,
            "closed": r.closed,
            "active_max": r.active_max,
            "resets": r.resets,
            "retransmissions": r.retransmissions,
            "rtt_avg_ns": r.rtt_avg_ns,
            "duration_avg_ns": r.duration_avg_ns,
        }
        for r in rows
    ]
