"""`GET /api/v1/export?from=&to=&filter=&frames=`: the original frames of the matching calls'
connections, as one pcapng stream that Wireshark and tshark open.

    GET /api/v1/export?filter=http%20and%20status%20%3E%3D%20500&from=-1h
        -> 200 application/x-pcapng (attachment), streamed
           X-Podshark-Calls: calls matched, X-Podshark-Connections: their flows,
           X-Podshark-Frames / X-Podshark-Bytes: frames (and their captured bytes) to come

The filter and the window select calls exactly as `GET /api/v1/calls` does (the same parser, SQL
compiler and `parse_when`; a filter error is a 400 with `position` and `expected`). The frames are
those stored for the calls' `flow_id`s (`packets` ingest messages: `podshark import` sends a
capture's frames; workers will send their spools' frames behind the same endpoint), time-ordered,
byte for byte with their original `orig_len`, one pcapng interface per link type, ns timestamps.

`frames=connections` (the default) exports whole connections: a protocol like HTTP/2 cannot be
decoded without the connection's start (its HPACK state), so a call's frames alone would not do.
`frames=window` keeps only the frames inside the window, widened to the end of the last matching
call: smaller for long-lived connections, at the cost of their beginnings.

Memory is bounded whatever the size: `Store.packets` pages through the frames and this handler
writes about a megabyte at a time, pulling the next frames in a thread only once the previous ones
were sent. An empty selection is a valid pcapng with no packets.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import time
from collections.abc import Generator

from aiohttp import web

from dissect.filter import FilterError, parse
from dissect.pcapng_write import PcapngWriter
from hub import filter_sql
from hub.api import STORE_KEY, BadRequest, bad_filter, bad_request, parse_when
from hub.store import StoreError

CONTENT_TYPE = "application/x-pcapng"
FLUSH_BYTES = 1 << 20
PULL = 512  # frames taken from the store per hop to the thread pool


def _pull(frames: Generator[tuple[int, int, int, bytes], None, None]) -> list[tuple[int, int, int, bytes]]:
    return list(itertools.islice(frames, PULL))


async def export(request: web.Request) -> web.StreamResponse:
    store = request.app[STORE_KEY]
    q = request.query
    now = time.time_ns()
    try:
        try:
            flt = parse(q.get("filter", ""), now_ns=now)
        except FilterError as e:
            return bad_filter(e)
        where, params = filter_sql.compile(flt)
        from_ns = parse_when(q["from"], now) if q.get("from") else None
        to_ns = parse_when(q["to"], now) if q.get("to") else None
        mode = q.get("frames", "connections")
        if mode not in ("connections", "window"):
            raise BadRequest(f"frames must be connections or window, not {mode!r}")
        loop = asyncio.get_running_loop()
        sel = await loop.run_in_executor(None, store.flow_ids, where, params, from_ns, to_ns)
        f_from = f_to = None
        if mode == "window":
            f_from = from_ns
            if to_ns is not None:
                f_to = max(to_ns, (sel.last_ts or 0) + 1)
        count, nbytes = await loop.run_in_executor(None, store.count_packets, sel.flow_ids, f_from, f_to)
    except (BadRequest, StoreError) as e:
        return bad_request(str(e))
    stamp = dt.datetime.fromtimestamp(now / 1e9, tz=dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    resp = web.StreamResponse(
        headers={
            "Content-Type": CONTENT_TYPE,
            "Content-Disposition": f'attachment; filename="podshark-{stamp}.pcapng"',
            "X-Podshark-Calls": str(sel.calls),
            "X-Podshark-Connections": str(len(sel.flow_ids)),
            "X-Podshark-Frames": str(count),
            "X-Podshark-Bytes": str(nbytes),
        }
    )
    await resp.prepare(request)
    writer = PcapngWriter()
    buf = bytearray(writer.header())
    frames = store.packets(sel.flow_ids, f_from, f_to)
    try:
        while True:
            got = await loop.run_in_executor(None, _pull, frames)
            if not got:
                break
            for ts, linktype, orig_len, data in got:
                buf += writer.packet(ts, linktype, data, orig_len)
            if len(buf) >= FLUSH_BYTES:
                await resp.write(bytes(buf))
                buf.clear()
        await resp.write(bytes(buf))
    finally:
        # the generator holds a DuckDB cursor: close it in a thread like every other store call
        await loop.run_in_executor(None, frames.close)
    await resp.write_eof()
    return resp


def add_routes(app: web.Application) -> None:
    app.router.add_get("/api/v1/export", export)
