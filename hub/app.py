"""The hub's aiohttp application: `make_app(store, token)`.

Routes: `GET /healthz` (open), and behind the bearer token (`hub/auth.py`): `GET /api/v1/calls`,
`GET /api/v1/calls/{id}` (`hub/api.py`) and the ingest WebSocket `/api/v1/ingest`
(`hub/ingest.py`, whose writer task starts and stops with the application), `GET /api/v1/stats`
and `GET /metrics` (`hub/stats.py`, `hub/metrics.py`), the live WebSocket `/api/v1/live`
(`hub/live.py`, fed by the writer's commits) and the replay WebSocket `/api/v1/replay`
(`hub/replay.py`), and `GET /api/v1/export` (`hub/export.py`: a pcapng of the frames of the
matching calls' connections).

The per-minute aggregates (`hub/aggregates.py`, `aggregates.duckdb` beside the calls) are fed by the
writer (committed calls, `flows` messages); their timer (flush, retention) runs with the application
and they are flushed and closed after the writer stopped, so the last calls are in them. `/metrics`
gets their per-edge and per-endpoint counters appended (`metrics.render_aggregates`). The service map
(`hub/mapping.py`) reads them through `mapping.AGGREGATES_KEY` and the cluster ranges through
`mapping.RANGES_KEY`.

With a rules file (`alerts`: `hub/alert_rules.py`), the alert engine (`hub/alerts.py`,
`alerts.duckdb` beside the calls) evaluates on its own timer and posts to the webhook from its own
task; both stop first at shutdown, before the writer and the aggregates they read. `GET
/api/v1/alerts` answers with no rules and no events without a file; `/metrics` gets the alerts'
families appended.

With `client_certs` ("ingest" or "all", for a hub serving TLS with a client CA: `hub/tls.py`), the
requests that scope covers also need a verified client certificate; that check runs before the
token's.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence

from aiohttp import web

from hub import alerts as alerting
from hub import api, auth, export, ingest, live, mapping, replay, stats, tls
from hub.aggregates import AGGREGATES_KEY, DEFAULT_RETAIN_NS, FILE_NAME, Aggregates
from hub.alert_rules import RulesFile
from hub.nodes import ClusterRanges
from hub.store import Store


def make_app(
    store: Store,
    token: str | None,
    *,
    batch_interval: float = 0.5,
    batch_max_calls: int = 20_000,
    client_certs: str | None = None,
    aggregate_retain_ns: int = DEFAULT_RETAIN_NS,
    cluster_cidrs: Sequence[str] = (),
    aggregates: Aggregates | None = None,
    alerts: RulesFile | alerting.AlertEngine | None = None,
) -> web.Application:
    """`token=None` means no auth (only allowed on loopback: `auth.check_startup`). `client_certs`:
    None, or the scope (`tls.SCOPES`) in which a client certificate is required. The aggregates are
    `aggregates`, else opened in the store's directory with `aggregate_retain_ns` and `cluster_cidrs`
    (`hub.aggregates.AggregatesError` when the file cannot be used); the application closes them.
    `alerts`: validated rules (an engine is made over the store's directory: `hub.alerts.AlertsError`
    when its file cannot be used), or an engine; the application stops it."""
    if aggregates is None:
        aggregates = Aggregates(store.root / FILE_NAME, aggregate_retain_ns, ClusterRanges(cluster_cidrs))
    engine: alerting.AlertEngine | None = None
    if isinstance(alerts, RulesFile):
        try:
            engine = alerting.AlertEngine(alerts, store.root, store, aggregates)
        except BaseException:
            aggregates.close()
            raise
    elif alerts is not None:
        engine = alerts
    middlewares = [auth.middleware(token)]
    if client_certs is not None:
        middlewares.insert(0, tls.middleware(client_certs))
    app = web.Application(middlewares=middlewares, client_max_size=64 << 20)
    app[api.STORE_KEY] = store
    app[AGGREGATES_KEY] = aggregates
    app[mapping.AGGREGATES_KEY] = aggregates
    app[mapping.RANGES_KEY] = aggregates.ranges
    writer = ingest.Writer(store, interval=batch_interval, max_calls=batch_max_calls, aggregates=aggregates)
    app[ingest.WRITER_KEY] = writer

    async def aggregates_ctx(app: web.Application) -> AsyncIterator[None]:
        timer = asyncio.get_running_loop().create_task(aggregates.maintain(), name="hub-aggregates")
        yield
        timer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await timer
        # after the writer stopped (cleanup runs in reverse): its last commits are counted
        await asyncio.get_running_loop().run_in_executor(None, aggregates.close)

    async def writer_ctx(app: web.Application) -> AsyncIterator[None]:
        writer.start()
        yield
        await writer.stop()

    app.cleanup_ctx.append(aggregates_ctx)
    app.cleanup_ctx.append(writer_ctx)
    if engine is not None:
        app[alerting.ALERTS_KEY] = engine

        async def alerts_ctx(app: web.Application) -> AsyncIterator[None]:
            engine.start()
            yield
            await engine.stop()  # first at shutdown: it reads the aggregates and the store

        app.cleanup_ctx.append(alerts_ctx)
    alerting.add_routes(app)
    api.add_routes(app)
    app.router.add_get("/api/v1/ingest", ingest.handle_ingest)
    stats.setup(app)
    app[stats.LIVE_STATS_KEY] = live.setup(app, writer).stats
    replay.add_routes(app)
    export.add_routes(app)
    return app
