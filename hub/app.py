"""The hub's aiohttp application: `make_app(store, token)`.

Routes: `GET /healthz` (open), and behind the bearer token (`hub/auth.py`): `GET /api/v1/calls`,
`GET /api/v1/calls/{id}` (`hub/api.py`) and the ingest WebSocket `/api/v1/ingest`
(`hub/ingest.py`, whose writer task starts and stops with the application), `GET /api/v1/stats`
and `GET /metrics` (`hub/stats.py`, `hub/metrics.py`), the live WebSocket `/api/v1/live`
(`hub/live.py`, fed by the writer's commits) and the replay WebSocket `/api/v1/replay`
(`hub/replay.py`), and `GET /api/v1/export` (`hub/export.py`: a pcapng of the frames of the
matching calls' connections).

With `client_certs` ("ingest" or "all", for a hub serving TLS with a client CA: `hub/tls.py`), the
requests that scope covers also need a verified client certificate; that check runs before the
token's.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from hub import api, auth, export, ingest, live, replay, stats, tls
from hub.store import Store


def make_app(
    store: Store,
    token: str | None,
    *,
    batch_interval: float = 0.5,
    batch_max_calls: int = 20_000,
    client_certs: str | None = None,
) -> web.Application:
    """`token=None` means no auth (only allowed on loopback: `auth.check_startup`). `client_certs`:
    None, or the scope (`tls.SCOPES`) in which a client certificate is required."""
    middlewares = [auth.middleware(token)]
    if client_certs is not None:
        middlewares.insert(0, tls.middleware(client_certs))
    app = web.Application(middlewares=middlewares, client_max_size=64 << 20)
    app[api.STORE_KEY] = store
    writer = ingest.Writer(store, interval=batch_interval, max_calls=batch_max_calls)
    app[ingest.WRITER_KEY] = writer

    async def writer_ctx(app: web.Application) -> AsyncIterator[None]:
        writer.start()
        yield
        await writer.stop()

    app.cleanup_ctx.append(writer_ctx)
    api.add_routes(app)
    app.router.add_get("/api/v1/ingest", ingest.handle_ingest)
    stats.setup(app)
    app[stats.LIVE_STATS_KEY] = live.setup(app, writer).stats
    replay.add_routes(app)
    export.add_routes(app)
    return app
