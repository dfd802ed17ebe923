"""The hub's query API: `GET /api/v1/calls`, `GET /api/v1/calls/{id}`, `GET /api/v1/map`, `GET /healthz`.

    GET /api/v1/calls?filter=&from=&to=&limit=&cursor=&order=desc|asc&bodies=0|1
        -> {"calls": [Call JSON, ...], "next_cursor": "..." | null}

    GET /api/v1/map?from=&to=&filter=&limit=&source=auto|calls|aggregates
        -> the service map (hub/mapping.py)

Summaries (the stored `record`, no bodies) unless `bodies=1`. `from`/`to` bound the call's start
time (request_ts, else response_ts), RFC 3339 or relative (`-5m`, resolved when the request
arrives) or integer nanoseconds. A filter that does not parse is a 400 with `error`, `position` and
`expected`; any other bad parameter is a 400 with `error`. Queries run in a thread, on their own
DuckDB cursor, beside the writer.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import msgspec
from aiohttp import web

from dissect.filter import FilterError, parse, parse_duration, parse_time
from hub import filter_sql, schema
from hub.store import Store, StoreError

DEFAULT_LIMIT = 100
MAX_LIMIT = 10_000

STORE_KEY: web.AppKey[Store] = web.AppKey("store", Store)


class BadRequest(Exception):
    pass


def parse_when(text: str, now_ns: int) -> int:
    """RFC 3339, relative (`-5m`, `-1h30m`), `now`, or integer ns since the epoch."""
    t = text.strip()
    if t == "now":
        return now_ns
    if t.startswith("-"):
        d = parse_duration(t[1:])
        if d is not None:
            return now_ns - d
    if t.isdigit():
        return int(t)
    ns = parse_time(t)
    if ns is None:
        raise BadRequest(f"not a time: {text!r} (RFC 3339 like 2025-11-21T10:00:00Z, or relative like -5m)")
    return ns


def bad_request(message: str, **extra: object) -> web.Response:
    return web.json_response({"error": message, **extra}, status=400)


def filter_error(e: FilterError) -> dict[str, Any]:
    """The body of a 400 (or of a WebSocket `error` message) for a filter that does not parse:
    every endpoint that takes a filter answers the same way."""
    return {"error": f"filter: {e.message}", "position": e.position, "expected": e.expected}


def bad_filter(e: FilterError) -> web.Response:
    return web.json_response(filter_error(e), status=400)


async def list_calls(request: web.Request) -> web.Response:
    store = request.app[STORE_KEY]
    q = request.query
    now = time.time_ns()
    try:
        text = q.get("filter", "")
        try:
            flt = parse(text, now_ns=now)
        except FilterError as e:
            return bad_filter(e)
        where, params = filter_sql.compile(flt)
        from_ns = parse_when(q["from"], now) if q.get("from") else None
        to_ns = parse_when(q["to"], now) if q.get("to") else None
        try:
            limit = int(q.get("limit", DEFAULT_LIMIT))
        except ValueError:
            raise BadRequest(f"limit must be an integer, not {q.get('limit')!r}") from None
        if not 1 <= limit <= MAX_LIMIT:
            raise BadRequest(f"limit must be between 1 and {MAX_LIMIT}")
        order = q.get("order", "desc")
        bodies = q.get("bodies", "0") in ("1", "true", "yes")
        cursor = q.get("cursor") or None
        columns = schema.RECORD_COLUMNS if bodies else ("record",)
        loop = asyncio.get_running_loop()
        rows, nxt = await loop.run_in_executor(
            None,
            lambda: store.query(
                where,
                params,
                from_ns=from_ns,
                to_ns=to_ns,
                limit=limit,
                order=order,
                cursor=cursor,
                columns=columns,
            ),
        )
    except (BadRequest, StoreError) as e:
        return bad_request(str(e))
    if bodies:
        items = [schema.call_from_row(*r).to_json_bytes() for r in rows]
    else:
        items = [r[0].encode() if isinstance(r[0], str) else bytes(r[0]) for r in rows]
    body = b'{"calls":[' + b",".join(items) + b'],"next_cursor":' + msgspec.json.encode(nxt) + b"}"
    return web.Response(body=body, content_type="application/json")


async def get_call(request: web.Request) -> web.Response:
    store = request.app[STORE_KEY]
    call_id = request.match_info["id"]
    loop = asyncio.get_running_loop()
    call = await loop.run_in_executor(None, store.get, call_id)
    if call is None:
        return web.json_response({"error": f"no call {call_id!r}"}, status=404)
    return web.Response(body=call.to_json_bytes(), content_type="application/json")


async def healthz(request: web.Request) -> web.Response:
    """The process answers (liveness)."""
    return web.json_response({"ok": True})


async def readyz(request: web.Request) -> web.Response:
    """The hub can take calls (readiness): 503 with the reason while its last commit failed (a store
    directory it cannot write, a full disk), so the calls workers send are not acknowledged and stay
    in their spools until it can."""
    from hub.ingest import WRITER_KEY

    writer = request.app.get(WRITER_KEY)
    error = getattr(writer, "store_error", None)
    if error:
        return web.json_response({"ok": False, "error": f"the store cannot commit: {error}"}, status=503)
    return web.json_response({"ok": True})


def add_routes(app: web.Application) -> None:
    # hub.mapping builds on this module (parse_when, the 400 answers): imported here, not at the top
    from hub.mapping import get_map

    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/api/v1/calls", list_calls)
    # ids hold a slash (`<capture sha>/<index>`, `<node>/<ULID>`): match the rest of the path
    app.router.add_get("/api/v1/calls/{id:.+}", get_call)
    app.router.add_get("/api/v1/map", get_map)
