"""The service map: who talks to whom, `GET /api/v1/map?from=&to=&filter=&limit=&source=`.

    {"from": ns, "to": ns, "seconds": 900.0, "source": "aggregates" | "calls", "edges_omitted": 0,
     "nodes": [{"id", "kind", "namespace", "name", "external"}, ...],
     "edges": [{"src", "dst", "protocol", "transport", "calls", "calls_per_s", "errors", "error_rate",
                "p50_ms", "p99_ms", "bytes": [c->s, s->c], "bytes_per_s", "connections", "status",
                "filter"}, ...]}

Nodes are `hub.nodes.MapNode`s: the one function `node_of` decides what an endpoint is (workload, pod,
service, node, an address inside the cluster, or an external address), so the map, the aggregates and
the alerts name things alike. An edge is one (client node, server node, protocol, transport).

Two sources, because they answer different questions:

- Without a filter the edges come from the per-minute aggregates (`hub/aggregates.py`): calls *and*
  flows, so traffic that was never dissected (a database protocol we do not parse, TLS without keys
  that never became a call) is still an edge, with bytes and no calls, and a 30-day window costs a
  sum over minute rows. Latency percentiles come from the stored histogram (bucket precision). The
  aggregates count the minutes that *start* in the window, and only traffic within their retention:
  a window that starts before it (an imported capture from last year) is answered from the calls.
- With a filter they come from the calls that match (hub/filter_sql.py over the calls table), since
  the aggregates cannot answer arbitrary filters. Bytes are then the request and response wire
  sizes, connections the distinct connections (`flow_id`) behind the calls, and p50/p99 exact
  (`quantile_disc`, as /api/v1/stats). `source=calls` asks for this path without a filter; a hub
  without aggregates always answers from the calls.

Each edge carries a `filter`: a filter-language expression that selects exactly that edge's calls
(the TUI puts it in the call list when the user picks the edge). It spells out every identity the
node's kind depends on — a pod node is "this pod *and no workload*", because `node_of` would have made
the pod a workload node otherwise — so edges' filters never overlap, and their calls add up to the
map's. The one thing a filter cannot tell apart is two spellings of one address (`10.0.0.1` and
`::ffff:10.0.0.1` compare equal in the language; they are two nodes here). An identity that the
language cannot spell (a lone surrogate in a name), and the aggregates' overflow node `other` (the
traffic past their bounds, of many nodes), give `filter: null`.

In the calls path the node of each end is computed in SQL (`node_key_sql`, held to `node_of` by a
property test) as (kind, namespace, name) with "addr" for the address kinds; Python then asks the
cluster ranges whether each address is inside (`node_from_key`), so `--cluster-cidr` and what
workers report apply at query time, and grouping, counting and percentiles stay in DuckDB whatever
the window holds. At most `limit` edges (busiest first) are returned; how many were left out is
`edges_omitted`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import duckdb
from aiohttp import web

from dissect.filter import ERRORS, All, FilterError, ip_to_int, parse, quote
from dissect.model import STATUS_CLASSES, Endpoint
from hub import filter_sql
from hub.api import STORE_KEY, BadRequest, bad_filter, bad_request, parse_when
from hub.nodes import ClusterRanges, MapNode, node_of
from hub.stats import CLASS_SQL
from hub.store import TS_SQL, Store

__all__ = [
    "AGGREGATES_KEY",
    "DEFAULT_WINDOW_NS",
    "MAX_LIMIT",
    "RANGES_KEY",
    "MapEdge",
    "MapQuery",
    "ServiceMap",
    "build",
    "edge_filter",
    "from_calls",
    "from_edge_rows",
    "get_map",
    "node_filter",
    "node_from_key",
    "node_key_sql",
    "parse_query",
]

DEFAULT_WINDOW_NS = 15 * 60 * 1_000_000_000  # without `from`: the last 15 minutes
DEFAULT_LIMIT = 1000
MAX_LIMIT = 10_000
SOURCES = ("auto", "calls", "aggregates")
MAX_TIME_NS = (1 << 63) - 1  # times are BIGINT nanoseconds in both stores

_ERRORS_SQL, _ERRORS_PARAMS = filter_sql.compile(parse(ERRORS))


@dataclass(frozen=True, slots=True)
class MapEdge:
    """One edge summed over the window. `bytes` is [client->server, server->client]."""

    src: MapNode
    dst: MapNode
    protocol: str | None
    transport: str
    calls: int
    errors: int
    status: dict[str, int]
    p50_ns: int | None
    p99_ns: int | None
    bytes: tuple[int, int]
    connections: int
    seconds: float  # the window the rates are over

    def weight(self) -> tuple[int, int]:
        """How busy the edge is, for ordering and for `limit`: calls, then bytes."""
        return (self.calls, self.bytes[0] + self.bytes[1])

    def to_dict(self) -> dict[str, Any]:
        seconds = self.seconds if self.seconds > 0 else 1.0
        return {
            "src": self.src.id,
            "dst": self.dst.id,
            "protocol": self.protocol,
            "transport": self.transport,
            "calls": self.calls,
            "calls_per_s": self.calls / seconds,
            "errors": self.errors,
            "error_rate": self.errors / self.calls if self.calls else None,
            "p50_ms": None if self.p50_ns is None else self.p50_ns / 1e6,
            "p99_ms": None if self.p99_ns is None else self.p99_ns / 1e6,
            "bytes": list(self.bytes),
            "bytes_per_s": (self.bytes[0] + self.bytes[1]) / seconds,
            "connections": self.connections,
            "status": dict(self.status),
            "filter": edge_filter(self.src, self.dst, self.protocol, self.transport),
        }


@dataclass(frozen=True, slots=True)
class ServiceMap:
    """A window's map: `to_dict()` is the JSON body of `GET /api/v1/map`."""

    from_ns: int
    to_ns: int
    source: str  # "aggregates" | "calls"
    edges: list[MapEdge]  # busiest first
    omitted: int = 0  # edges beyond the limit

    @property
    def seconds(self) -> float:
        return (self.to_ns - self.from_ns) / 1e9

    def nodes(self) -> list[MapNode]:
        """Every node an edge touches, once, by id."""
        seen: dict[str, MapNode] = {}
        for e in self.edges:
            seen.setdefault(e.src.id, e.src)
            seen.setdefault(e.dst.id, e.dst)
        return [seen[k] for k in sorted(seen)]

    def to_dict(self) -> dict[str, Any]:
        return {
            "from": self.from_ns,
            "to": self.to_ns,
            "seconds": self.seconds,
            "source": self.source,
            "edges_omitted": self.omitted,
            "nodes": [
                {"id": n.id, "kind": n.kind, "namespace": n.namespace, "name": n.name, "external": n.external}
                for n in self.nodes()
            ],
            "edges": [e.to_dict() for e in self.edges],
        }


def _busiest_first(edges: Iterable[MapEdge]) -> list[MapEdge]:
    return sorted(
        edges,
        key=lambda e: (-e.weight()[0], -e.weight()[1], e.src.id, e.dst.id, e.protocol or "", e.transport),
    )


# ---- edge filters: the filter-language expression that selects exactly an edge's calls


_FILTERABLE = frozenset({"workload", "pod", "service", "ip", "external"})


def _absent(field: str) -> str:
    """No value, or empty text: what `node_of` treats as "not known" (it tests truthiness)."""
    return f'not {field} != ""'


def _exact_text_regex(text: str) -> str:
    """A pattern (in the language's shared subset) matching exactly `text`, every character but ASCII
    letters and digits written as a code point, so nothing in it is a metacharacter."""
    body = "".join(c if c.isascii() and c.isalnum() else f"\\x{{{ord(c):x}}}" for c in text)
    return f"^{body}$"


def _ip_clause(end: str, ip: str) -> str:
    if ip == "?":  # node_of's name for an end without an address (None or empty text), or "?" itself
        return f'(not {end}.ip ~ "(?s)." or {end}.ip ~ {quote(_exact_text_regex("?"))})'
    if ip_to_int(ip) is not None:
        return f"{end}.ip == {quote(ip)}"
    return f"{end}.ip ~ {quote(_exact_text_regex(ip))}"  # text that is not an address: as text


def node_filter(end: str, node: MapNode) -> str:
    """The conditions on `end` ("src" or "dst") under which `node_of` gives `node`."""
    ns = f"{end}.namespace"
    in_ns = f"{ns} == {quote(node.namespace)}" if node.namespace else _absent(ns)
    wl, pod, svc = (f"{end}.{k}" for k in ("workload", "pod", "service"))
    if node.kind == "workload":
        parts = [in_ns, f"{wl} == {quote(node.name)}"]
    elif node.kind == "pod":
        parts = [in_ns, f"{pod} == {quote(node.name)}", _absent(wl)]
    elif node.kind == "service":
        parts = [in_ns, f"{svc} == {quote(node.name)}", _absent(wl), _absent(pod)]
    else:  # "ip" / "external": the address, and none of the identities that would have named it
        parts = [_ip_clause(end, node.name), _absent(wl), _absent(pod), _absent(svc)]
    return " and ".join(parts)


def edge_filter(src: MapNode, dst: MapNode, protocol: str | None, transport: str) -> str | None:
    """A filter selecting exactly the calls of the edge; None when a name cannot be spelled in the
    language (checked by parsing the result, so what is returned always parses), or when an end is
    the aggregates' overflow node, which stands for many."""
    if src.kind not in _FILTERABLE or dst.kind not in _FILTERABLE:
        return None  # the aggregates' overflow node ("other") stands for traffic of many nodes
    text = " and ".join(
        [
            node_filter("src", src),
            node_filter("dst", dst),
            f"protocol == {quote(protocol)}" if protocol else _absent("protocol"),
            f"transport == {quote(transport)}" if transport else _absent("transport"),
        ]
    )
    try:
        parse(text)
    except FilterError:
        return None
    return text


# ---- the map from the calls


def node_key_sql(end: str) -> tuple[str, str, str]:
    """SQL for (kind, namespace, name) of `end`'s node, over the calls table's columns: `node_of` in
    SQL, with the address kinds ("ip", "external") left as "addr" for `node_from_key` to decide.
    Namespace is '' for the kinds without one."""

    def known(col: str) -> str:
        return f"coalesce({end}_{col}, '') <> ''"

    ns = f"coalesce({end}_namespace, '')"
    kind = (
        f"CASE WHEN {known('workload')} THEN 'workload' WHEN {known('pod')} THEN 'pod' "
        f"WHEN {known('service')} THEN 'service' ELSE 'addr' END"
    )
    namespace = f"CASE WHEN {known('workload')} OR {known('pod')} OR {known('service')} THEN {ns} ELSE '' END"
    name = (
        f"CASE WHEN {known('workload')} THEN {end}_workload WHEN {known('pod')} THEN {end}_pod "
        f"WHEN {known('service')} THEN {end}_service "
        f"ELSE coalesce(nullif({end}_ip, ''), '?') END"
    )
    return kind, namespace, name


def node_from_key(kind: str, namespace: str, name: str, ranges: ClusterRanges) -> MapNode:
    """The MapNode of a `node_key_sql` key, through `node_of` itself (so ids are made one way)."""
    ns = namespace or None
    if kind == "workload":
        ep = Endpoint(namespace=ns, workload=name)
    elif kind == "pod":
        ep = Endpoint(namespace=ns, pod=name)
    elif kind == "service":
        ep = Endpoint(namespace=ns, service=name)
    else:
        ep = Endpoint(ip=name)
    return node_of(ep, ranges)


_SRC_KEY = node_key_sql("src")
_DST_KEY = node_key_sql("dst")
_CLASS_COUNTS = ", ".join(f"count(*) FILTER (WHERE class = '{c}')" for c in STATUS_CLASSES)


def from_calls(
    store: Store,
    where: str,
    params: Sequence[object],
    from_ns: int,
    to_ns: int,
    ranges: ClusterRanges,
    limit: int = DEFAULT_LIMIT,
) -> ServiceMap:
    """The map of the calls in [from_ns, to_ns) (by start time) that match `where` (a WHERE fragment
    from hub/filter_sql.py with its parameters)."""

    def run(con: duckdb.DuckDBPyConnection, calls: str) -> tuple[list[tuple[Any, ...]], int]:
        cond = f"({where}) AND " if where.strip() else ""
        con.execute(
            "CREATE TEMP TABLE map_sel AS SELECT "
            f"{_SRC_KEY[0]} AS sk, {_SRC_KEY[1]} AS sns, {_SRC_KEY[2]} AS sn, "
            f"{_DST_KEY[0]} AS dk, {_DST_KEY[1]} AS dns, {_DST_KEY[2]} AS dn, "
            "nullif(protocol, '') AS proto, coalesce(transport, '') AS tr, latency_ns, "
            f"({_ERRORS_SQL}) AS is_error, {CLASS_SQL} AS class, "
            "request_wire_size, response_wire_size, flow_id "
            f"FROM {calls} AS c WHERE {cond}{TS_SQL} >= ? AND {TS_SQL} < ?",
            [*_ERRORS_PARAMS, *params, from_ns, to_ns],
        )
        try:
            rows = con.execute(
                "SELECT sk, sns, sn, dk, dns, dn, proto, tr, count(*) AS n, "
                "count(*) FILTER (WHERE is_error), quantile_disc(latency_ns, [0.5, 0.99]), "
                "coalesce(sum(request_wire_size), 0) AS up, coalesce(sum(response_wire_size), 0) AS down, "
                f"count(DISTINCT flow_id), {_CLASS_COUNTS} "
                "FROM map_sel GROUP BY sk, sns, sn, dk, dns, dn, proto, tr "
                "ORDER BY n DESC, up + down DESC, sk, sns, sn, dk, dns, dn, proto, tr LIMIT ?",
                [limit],
            ).fetchall()
            total = con.execute(
                "SELECT count(*) FROM (SELECT DISTINCT sk, sns, sn, dk, dns, dn, proto, tr FROM map_sel)"
            ).fetchone()
        finally:
            con.execute("DROP TABLE map_sel")
        return rows, int(total[0]) if total else 0

    got = store.read(run)
    rows, total = got if got is not None else ([], 0)
    seconds = (to_ns - from_ns) / 1e9
    nodes: dict[tuple[str, str, str], MapNode] = {}

    def node(key: tuple[str, str, str]) -> MapNode:
        n = nodes.get(key)
        if n is None:
            n = nodes[key] = node_from_key(*key, ranges)
        return n

    edges = []
    for row in rows:
        sk, sns, sn, dk, dns, dn, proto, tr, n, errors, qs, up, down, conns, *classes = row
        edges.append(
            MapEdge(
                src=node((sk, sns, sn)),
                dst=node((dk, dns, dn)),
                protocol=proto,
                transport=tr,
                calls=n,
                errors=errors,
                status={c: k for c, k in zip(STATUS_CLASSES, classes, strict=True) if k},
                p50_ns=None if qs is None else qs[0],
                p99_ns=None if qs is None else qs[1],
                bytes=(int(up), int(down)),
                connections=conns,
                seconds=seconds,
            )
        )
    return ServiceMap(from_ns, to_ns, "calls", _busiest_first(edges), max(total - len(edges), 0))


# ---- the map from the aggregates


class EdgeLike(Protocol):
    """What the map reads of `hub.aggregates.EdgeRow` (kept structural, so this module does not
    depend on the aggregates store being importable)."""

    @property
    def src(self) -> MapNode: ...
    @property
    def dst(self) -> MapNode: ...
    @property
    def protocol(self) -> str | None: ...
    @property
    def transport(self) -> str: ...
    @property
    def calls(self) -> int: ...
    @property
    def errors(self) -> int: ...
    @property
    def status(self) -> dict[str, int]: ...
    @property
    def latency_p50_ns(self) -> int | None: ...
    @property
    def latency_p99_ns(self) -> int | None: ...
    @property
    def bytes(self) -> tuple[int, int]: ...
    @property
    def opened(self) -> int: ...
    @property
    def seconds(self) -> float: ...


def from_edge_rows(
    rows: Iterable[EdgeLike], from_ns: int, to_ns: int, limit: int = DEFAULT_LIMIT
) -> ServiceMap:
    """The map of the aggregates' edge rows of the window (the busiest `limit` of them)."""
    edges = _busiest_first(
        _grpc_traffic_joined(
            MapEdge(
                src=r.src,
                dst=r.dst,
                protocol=r.protocol or None,
                transport=r.transport,
                calls=r.calls,
                errors=r.errors,
                status={k: v for k, v in r.status.items() if v},
                p50_ns=r.latency_p50_ns,
                p99_ns=r.latency_p99_ns,
                bytes=(int(r.bytes[0]), int(r.bytes[1])),
                connections=r.opened,
                seconds=r.seconds if r.seconds > 0 else (to_ns - from_ns) / 1e9,
            )
            for r in rows
        )
    )
    return ServiceMap(from_ns, to_ns, "aggregates", edges[:limit], max(len(edges) - limit, 0))


def _grpc_traffic_joined(edges: Iterable[MapEdge]) -> list[MapEdge]:
    """gRPC runs on HTTP/2: a worker names a connection's flows "grpc" only when a gRPC call of it
    ended before its first interval closed, so a connection opened just before an interval
    boundary leaves "http2" traffic without calls beside the pair's "grpc" edge. That traffic is
    the gRPC edge's: its bytes and connections join it, and no second edge shows."""
    out = list(edges)
    grpc = {(e.src.id, e.dst.id, e.transport) for e in out if e.protocol == "grpc"}
    extra: dict[tuple[str, str, str], tuple[int, int, int]] = {}
    kept: list[MapEdge] = []
    for e in out:
        key = (e.src.id, e.dst.id, e.transport)
        if e.protocol == "http2" and not e.calls and key in grpc:
            b0, b1, c = extra.get(key, (0, 0, 0))
            extra[key] = (b0 + e.bytes[0], b1 + e.bytes[1], c + e.connections)
        else:
            kept.append(e)
    if not extra:
        return kept
    joined: list[MapEdge] = []
    for e in kept:
        add = extra.get((e.src.id, e.dst.id, e.transport)) if e.protocol == "grpc" else None
        if add is not None:
            e = dataclasses.replace(
                e, bytes=(e.bytes[0] + add[0], e.bytes[1] + add[1]), connections=e.connections + add[2]
            )
        joined.append(e)
    return joined


# ---- the route


class AggregatesLike(Protocol):
    retain_ns: int

    def edges(self, from_ns: int, to_ns: int) -> Sequence[EdgeLike]: ...


AGGREGATES_KEY: web.AppKey[Any] = web.AppKey("map_aggregates", object)
RANGES_KEY: web.AppKey[ClusterRanges] = web.AppKey("map_cluster_ranges", ClusterRanges)


@dataclass(frozen=True, slots=True)
class MapQuery:
    from_ns: int
    to_ns: int
    where: str
    params: list[object]
    filtered: bool
    limit: int
    source: str


def parse_query(q: Any, now: int) -> MapQuery:
    """The request's parameters; BadRequest (400) or FilterError (400 with position) when wrong."""
    flt = parse(q.get("filter", ""), now_ns=now)
    where, params = filter_sql.compile(flt)
    to_ns = parse_when(q["to"], now) if q.get("to") else now
    from_ns = parse_when(q["from"], now) if q.get("from") else to_ns - DEFAULT_WINDOW_NS
    for name, ns in (("from", from_ns), ("to", to_ns)):
        if not 0 <= ns <= MAX_TIME_NS:
            raise BadRequest(f"{name} is outside the years 1970-2262 that nanosecond times can hold")
    if to_ns <= from_ns:
        raise BadRequest("to must be after from")
    text = q.get("limit")
    try:
        limit = DEFAULT_LIMIT if text is None else int(text)
    except ValueError:
        raise BadRequest(f"limit must be an integer, not {text!r}") from None
    if not 1 <= limit <= MAX_LIMIT:
        raise BadRequest(f"limit must be between 1 and {MAX_LIMIT}")
    source = q.get("source", "auto")
    if source not in SOURCES:
        raise BadRequest(f"source must be one of {', '.join(SOURCES)}, not {source!r}")
    filtered = not isinstance(flt.root, All)
    if source == "aggregates" and filtered:
        raise BadRequest("the aggregates cannot answer a filter: drop source=aggregates or the filter")
    return MapQuery(from_ns, to_ns, where, list(params), filtered, limit, source)


def build(
    store: Store, aggregates: AggregatesLike | None, ranges: ClusterRanges, mq: MapQuery, now_ns: int
) -> ServiceMap:
    """The map a query asks for, from the source that can answer it (blocking: run in a thread).
    `auto` takes the aggregates when there is no filter and the window starts within their
    retention (they never counted older traffic: an imported capture from last year is mapped from
    its calls)."""
    if aggregates is not None and (
        mq.source == "aggregates"
        or (mq.source == "auto" and not mq.filtered and mq.from_ns >= now_ns - aggregates.retain_ns)
    ):
        return from_edge_rows(aggregates.edges(mq.from_ns, mq.to_ns), mq.from_ns, mq.to_ns, mq.limit)
    return from_calls(store, mq.where, mq.params, mq.from_ns, mq.to_ns, ranges, mq.limit)


async def get_map(request: web.Request) -> web.Response:
    now = time.time_ns()
    try:
        mq = parse_query(request.query, now)
    except FilterError as e:
        return bad_filter(e)
    except BadRequest as e:
        return bad_request(str(e))
    app = request.app
    aggregates = app.get(AGGREGATES_KEY)
    if mq.source == "aggregates" and aggregates is None:
        return bad_request("this hub keeps no aggregates: ask without source=aggregates")
    ranges = app.get(RANGES_KEY) or getattr(aggregates, "ranges", None) or ClusterRanges()
    store = app[STORE_KEY]
    smap = await asyncio.get_running_loop().run_in_executor(None, build, store, aggregates, ranges, mq, now)
    return web.json_response(smap.to_dict())
