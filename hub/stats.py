"""`GET /api/v1/stats` and `GET /metrics`.

    GET /api/v1/stats?from=&to=&filter=&buckets=60&top=10

answers, for the calls whose start time (request_ts, else response_ts) is in the window and that
match the filter:

- `window`: the bounds used. Without `from`/`to` the window is the stored calls' own first and last
  start times, so a capture imported from last year still has meaningful rates.
- `total` and `protocols[]`: calls, calls per second over the window, errors and error rate, counts
  per status class (`dissect.model.status_class`: `2xx`..`5xx` for HTTP, `ok`/`error` for gRPC, DNS
  and Kafka, `none` without a status), and latency percentiles (p50, p90, p99, max; ns).
- `series`: calls per protocol and errors per time bucket (`buckets` of them across the window), for
  sparklines and plots.
- `top_servers` / `top_clients`: the busiest destinations and sources, by workload (falling back to
  service, pod, then address: `ip:port` for servers, `ip` for clients, whose ports are ephemeral),
  with namespace, calls, errors and p99 latency.
- `ingest`, `workers`, `live`, `store`: the hub's own health: ingest counters, each worker's
  connection, activity and the drops it reports (hub/workers.py), the live fan-out, store size.

"Error" is one definition everywhere: `dissect.filter.ERRORS` (HTTP 5xx; non-zero gRPC, DNS and
Kafka status), which is also what `status_class` calls `5xx` and `error`; the SQL here is the filter
compiled by hub/filter_sql.py, not a second copy. The aggregates run in a thread on their own DuckDB
cursor and snapshot (`Store.read`), beside the writer; user text only ever reaches them as `?`
parameters.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from typing import Any

import duckdb
from aiohttp import web

from dissect.filter import ERRORS, FilterError, parse
from hub import filter_sql, metrics
from hub.aggregates import AGGREGATES_KEY
from hub.alerts import ALERTS_KEY
from hub.api import STORE_KEY, BadRequest, bad_filter, bad_request, parse_when
from hub.ingest import WRITER_KEY
from hub.store import TS_SQL, Store

MAX_BUCKETS = 1000
MAX_TOP = 100
QUANTILES = (0.5, 0.9, 0.99)
PROMETHEUS_TEXT = "text/plain; version=0.0.4; charset=utf-8"

COUNTERS_KEY: web.AppKey[metrics.CallCounters] = web.AppKey("call_counters", metrics.CallCounters)
STARTED_KEY: web.AppKey[int] = web.AppKey("started_ns", int)
# the live fan-out's stats() (hub/live.py), when the app has one
LIVE_STATS_KEY: web.AppKey[Any] = web.AppKey("live_stats", object)

_ERRORS_SQL, _ERRORS_PARAMS = filter_sql.compile(parse(ERRORS))
# dissect.model.status_class in SQL (a test holds the two to the same answers)
CLASS_SQL = (
    "CASE WHEN status IS NULL THEN 'none' "
    "WHEN protocol IN ('http', 'http2') THEN "
    "(CASE WHEN status BETWEEN 100 AND 599 THEN CAST(status // 100 AS VARCHAR) || 'xx' ELSE 'other' END) "
    "WHEN status = 0 THEN 'ok' ELSE 'error' END"
)
_SERVER_KEY = (
    "coalesce(dst_workload, dst_service, dst_pod, "
    "CASE WHEN dst_port IS NULL THEN dst_ip WHEN contains(dst_ip, ':') "
    "THEN '[' || dst_ip || ']:' || CAST(dst_port AS VARCHAR) "
    "ELSE dst_ip || ':' || CAST(dst_port AS VARCHAR) END)"
)
_CLIENT_KEY = "coalesce(src_workload, src_service, src_pod, src_ip)"


@dataclasses.dataclass(frozen=True)
class Query:
    where: str
    params: list[object]
    from_ns: int | None
    to_ns: int | None
    buckets: int
    top: int


def aggregate(store: Store, q: Query) -> dict[str, Any]:
    """The call statistics of a window and filter (the `GET /api/v1/stats` body minus hub health)."""

    def run(con: duckdb.DuckDBPyConnection, calls: str) -> dict[str, Any]:
        conds = [f"({q.where})"] if q.where.strip() else []
        args: list[object] = list(q.params)
        if q.from_ns is not None:
            conds.append(f"{TS_SQL} >= ?")
            args.append(q.from_ns)
        if q.to_ns is not None:
            conds.append(f"{TS_SQL} < ?")
            args.append(q.to_ns)
        where = " AND ".join(conds) or "true"
        # one scan into a temporary view-like CTE would be re-evaluated per use in DuckDB; the
        # selected rows are small (a few columns), so materialise them once
        con.execute(
            f"CREATE TEMP TABLE sel AS SELECT {TS_SQL} AS ts, protocol, status, latency_ns, "
            f"({_ERRORS_SQL}) AS is_error, {CLASS_SQL} AS class, "
            f"{_SERVER_KEY} AS server, dst_namespace AS server_ns, "
            f"{_CLIENT_KEY} AS client, src_namespace AS client_ns "
            f"FROM {calls} AS c WHERE {where}",
            [*_ERRORS_PARAMS, *args],
        )
        try:
            return _summarise(con, q)
        finally:
            con.execute("DROP TABLE sel")

    out = store.read(run)
    return out if out is not None else _summarise_empty(q)


def _latency(row: tuple[Any, ...]) -> dict[str, int | None]:
    qs, mx = row
    if qs is None:
        return {"p50": None, "p90": None, "p99": None, "max": None}
    return {"p50": qs[0], "p90": qs[1], "p99": qs[2], "max": mx}


def _summarise_empty(q: Query) -> dict[str, Any]:
    return {
        "window": {"from": q.from_ns, "to": q.to_ns, "seconds": None},
        "total": {
            "calls": 0,
            "rate": 0.0,
            "errors": 0,
            "error_rate": 0.0,
            "status": {},
            "latency": _latency((None, None)),
        },
        "protocols": [],
        "series": {"start": q.from_ns, "bucket_ns": None, "protocols": {}, "errors": []},
        "top_servers": [],
        "top_clients": [],
    }


def _summarise(con: duckdb.DuckDBPyConnection, q: Query) -> dict[str, Any]:
    first_last = con.execute("SELECT min(ts), max(ts), count(*) FROM sel").fetchone()
    assert first_last is not None
    lo, hi, total = first_last
    if not total:
        return _summarise_empty(q)
    start = q.from_ns if q.from_ns is not None else lo
    end = q.to_ns if q.to_ns is not None else hi + 1
    seconds = max(end - start, 1) / 1e9
    quant = f"quantile_disc(latency_ns, {list(QUANTILES)!r})"

    def rate(n: int) -> float:
        return n / seconds

    per_proto: dict[str, dict[str, Any]] = {}
    for proto, n, errors, qs, mx in con.execute(
        f"SELECT protocol, count(*), count(*) FILTER (WHERE is_error), {quant}, max(latency_ns) "
        "FROM sel GROUP BY protocol ORDER BY count(*) DESC, protocol"
    ).fetchall():
        per_proto[proto] = {
            "protocol": proto,
            "calls": n,
            "rate": rate(n),
            "errors": errors,
            "error_rate": round(errors / n, 6),
            "status": {},
            "latency": _latency((qs, mx)),
        }
    totals: dict[str, int] = {}
    for proto, cls, n in con.execute(
        "SELECT protocol, class, count(*) FROM sel GROUP BY ALL ORDER BY ALL"
    ).fetchall():
        per_proto[proto]["status"][cls] = n
        totals[cls] = totals.get(cls, 0) + n
    all_row = con.execute(
        f"SELECT count(*) FILTER (WHERE is_error), {quant}, max(latency_ns) FROM sel"
    ).fetchone()
    assert all_row is not None
    errors = all_row[0]

    bucket_ns = max(1, -(-(end - start) // q.buckets))
    series: dict[str, list[int]] = {p: [0] * q.buckets for p in per_proto}
    err_series = [0] * q.buckets
    for proto, k, n, e in con.execute(
        "SELECT protocol, least((ts - ?) // ?, ?) AS k, count(*), count(*) FILTER (WHERE is_error) "
        "FROM sel WHERE ts >= ? GROUP BY ALL",
        [start, bucket_ns, q.buckets - 1, start],
    ).fetchall():
        series[proto][int(k)] += n
        err_series[int(k)] += e

    def top(key: str, ns: str) -> list[dict[str, Any]]:
        rows = con.execute(
            f"SELECT {key}, {ns}, count(*), count(*) FILTER (WHERE is_error), "
            "quantile_disc(latency_ns, 0.99) "
            f"FROM sel WHERE {key} IS NOT NULL GROUP BY ALL ORDER BY 3 DESC, 1, 2 LIMIT ?",
            [q.top],
        ).fetchall()
        return [
            {"name": name, "namespace": nsv, "calls": n, "rate": rate(n), "errors": e, "p99": p99}
            for name, nsv, n, e, p99 in rows
        ]

    return {
        "window": {"from": start, "to": end, "seconds": round(seconds, 6)},
        "total": {
            "calls": total,
            "rate": rate(total),
            "errors": errors,
            "error_rate": round(errors / total, 6),
            "status": totals,
            "latency": _latency((all_row[1], all_row[2])),
        },
        "protocols": list(per_proto.values()),
        "series": {"start": start, "bucket_ns": bucket_ns, "protocols": series, "errors": err_series},
        "top_servers": top("server", "server_ns"),
        "top_clients": top("client", "client_ns"),
    }


def _int_param(q: Any, name: str, default: int, hi: int) -> int:
    text = q.get(name)
    if text is None:
        return default
    try:
        v = int(text)
    except ValueError:
        raise BadRequest(f"{name} must be an integer, not {text!r}") from None
    if not 1 <= v <= hi:
        raise BadRequest(f"{name} must be between 1 and {hi}")
    return v


def _health(app: web.Application) -> dict[str, Any]:
    store = app[STORE_KEY]
    writer = app[WRITER_KEY]
    now = time.time_ns()
    live = app.get(LIVE_STATS_KEY)
    return {
        "now": now,
        "started_ts": app[STARTED_KEY],
        "ingest": {**dataclasses.asdict(writer.stats), "queue_batches": writer.queue.qsize()},
        "workers": [w.to_dict(now) for w in writer.workers.all()],
        "live": live() if live is not None else None,
        "store": {"bytes": store.size_bytes(), "partitions": len(store.partitions())},
    }


async def get_stats(request: web.Request) -> web.Response:
    q = request.query
    now = time.time_ns()
    try:
        try:
            flt = parse(q.get("filter", ""), now_ns=now)
        except FilterError as e:
            return bad_filter(e)
        where, params = filter_sql.compile(flt)
        query = Query(
            where,
            list(params),
            parse_when(q["from"], now) if q.get("from") else None,
            parse_when(q["to"], now) if q.get("to") else None,
            _int_param(q, "buckets", 60, MAX_BUCKETS),
            _int_param(q, "top", 10, MAX_TOP),
        )
        if query.from_ns is not None and query.to_ns is not None and query.to_ns <= query.from_ns:
            raise BadRequest("to must be after from")
    except BadRequest as e:
        return bad_request(str(e))
    store = request.app[STORE_KEY]
    body = await asyncio.get_running_loop().run_in_executor(None, aggregate, store, query)
    body.update(_health(request.app))
    return web.json_response(body)


async def get_metrics(request: web.Request) -> web.Response:
    app = request.app
    store = app[STORE_KEY]
    writer = app[WRITER_KEY]
    live = app.get(LIVE_STATS_KEY)
    text = metrics.render(
        app[COUNTERS_KEY],
        writer.stats,
        writer.workers.all(),
        store.size_bytes(),
        len(store.partitions()),
        writer.queue.qsize(),
        live() if live is not None else None,
        app[STARTED_KEY],
    )
    agg = app.get(AGGREGATES_KEY)
    if agg is not None:  # per edge and per endpoint, from memory (no query), bounded cardinality
        text += metrics.render_aggregates(agg.counters, agg.health())
    alerts = app.get(ALERTS_KEY)
    if alerts is not None:  # rule states, events, evaluations and the webhook, from memory
        text += alerts.metrics_text()
    return web.Response(body=text.encode(), headers={"Content-Type": PROMETHEUS_TEXT})


def setup(app: web.Application) -> None:
    """Routes, and the counters fed by the writer (call after the writer is in `app`)."""
    counters = metrics.CallCounters()
    app[COUNTERS_KEY] = counters
    app[STARTED_KEY] = time.time_ns()
    app[WRITER_KEY].listeners.append(counters)
    app.router.add_get("/api/v1/stats", get_stats)
    app.router.add_get("/metrics", get_metrics)
