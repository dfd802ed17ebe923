"""`GET /api/v1/export?from=&to=&filter=&frames=`: the original frames of the matching calls'
connections, as one pcapng stream that Wireshark and tshark open.

    GET /api/v1/export?filter=http%20and%20status%20%3E%3D%20500&from=-1h
        -> 200 application/x-pcapng (attachment), streamed
           X-Podshark-Calls: calls matched, X-Podshark-Connections: their flows,
           X-Podshark-Frames / X-Podshark-Bytes: frames (and their captured bytes) to come, when they
             all come from the hub's store (omitted when workers are asked: their counts are not
             known before they stream),
           X-Podshark-Workers: the workers whose spools answered,
           X-Podshark-Missing-Workers: workers holding selected connections that are disconnected,
             failed or did not answer within `FIRST_DATA_TIMEOUT` seconds (their frames are missing)

The filter and the window select calls exactly as `GET /api/v1/calls` does (the same parser, SQL
compiler and `parse_when`; a filter error is a 400 with `position` and `expected`). The frames come
from two places, merged into one time-ordered stream:

- the store: frames sent in `packets` ingest messages (`podshark import` sends a capture's frames),
  for every selected flow id;
- the workers' packet spools: a live call's flow id is `<node>/<run>/f<n>` and the worker's `hello`
  name is that node, so each connected worker with the capability `export` is asked, over its own
  ingest connection (hub/gather.py), for the selected flow ids that start with `<its name>/`.

Frames come byte for byte with their original `orig_len`, one pcapng interface per link type, ns
timestamps. A worker that is disconnected, answers with an error or sends nothing for
`FIRST_DATA_TIMEOUT` seconds before the stream starts is skipped and named in
`X-Podshark-Missing-Workers`; one that stops answering mid-stream (`IDLE_TIMEOUT` seconds) is
skipped from there on. Either way the export still completes with everything else, a log line
says so, and the file ends with a second pcapng section whose comments name what is missing
(`capinfos` shows them), since headers are already sent by then.

`frames=connections` (the default) exports whole connections: a protocol like HTTP/2 cannot be
decoded without the connection's start (its HPACK state), so a call's frames alone would not do.
`frames=window` keeps only the frames inside the window, widened to the end of the last matching
call: smaller for long-lived connections, at the cost of their beginnings (the workers are sent the
same window).

Memory is bounded whatever the size: `Store.packets` pages through the stored frames, each worker
sends at most a few chunks of about a megabyte ahead of what was written (flow control in
hub/gather.py), and this handler writes about a megabyte at a time, pulling more only once the
previous frames were sent. Each source is time-ordered, so a k-way merge by timestamp (ties: the
store first, then workers by name) gives one time-ordered file. An empty selection is a valid
pcapng with no packets.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import heapq
import itertools
import logging
import re
import struct
import time
from collections.abc import Generator

from aiohttp import web

from dissect.filter import FilterError, parse
from dissect.pcapng_write import BT_SHB, BYTE_ORDER_MAGIC, OPT_END, PcapngWriter, option
from hub import filter_sql
from hub.api import STORE_KEY, BadRequest, bad_filter, bad_request, parse_when
from hub.gather import Exporters, Frame, WorkerGone, WorkerStream
from hub.ingest import WRITER_KEY
from hub.store import Store, StoreError
from hub.workers import Workers

log = logging.getLogger("podshark.hub.export")

CONTENT_TYPE = "application/x-pcapng"
FLUSH_BYTES = 1 << 20
PULL = 512  # frames taken from the store per hop to the thread pool
FIRST_DATA_TIMEOUT = 10.0  # seconds a worker has to start answering
IDLE_TIMEOUT = 10.0  # seconds a worker may then go without sending data
MAX_NAMES_IN_HEADER = 50
OPT_COMMENT = 1


def _pull(frames: Generator[Frame, None, None]) -> list[Frame]:
    return list(itertools.islice(frames, PULL))


def _looks_live(flow_id: str) -> bool:
    """A worker's flow id (`<node>/<run>/f<n>`), as opposed to an import's (`<sha12>/f<n>`)."""
    return flow_id.count("/") >= 2


def _header_names(names: list[str]) -> str:
    """Worker names for a header: they come from workers and stored calls, so keep them to
    characters a node name has and bound their number."""
    safe = [re.sub(r"[^A-Za-z0-9._:-]", "_", n)[:253] for n in names[:MAX_NAMES_IN_HEADER]]
    more = len(names) - len(safe)
    return ", ".join(safe) + (f", +{more} more" if more > 0 else "")


def _note_section(notes: list[str]) -> bytes:
    """A second, empty pcapng section whose comments say what the export is missing."""
    body = struct.pack("<IHHq", BYTE_ORDER_MAGIC, 1, 0, -1)
    for n in notes:
        body += option(OPT_COMMENT, n.encode()[:60000])
    body += option(OPT_END, b"")
    total = 12 + len(body)
    return struct.pack("<II", BT_SHB, total) + body + struct.pack("<I", total)


class _StoreFeed:
    name = "store"

    def __init__(self, store: Store, flow_ids: list[str], f_from: int | None, f_to: int | None) -> None:
        self._gen = store.packets(flow_ids, f_from, f_to)

    async def next(self) -> list[Frame] | None:
        got = await asyncio.get_running_loop().run_in_executor(None, _pull, self._gen)
        return got or None

    async def close(self) -> None:
        # the generator holds a DuckDB cursor: close it in a thread like every other store call
        await asyncio.get_running_loop().run_in_executor(None, self._gen.close)


class _WorkerFeed:
    def __init__(self, stream: WorkerStream, workers: Workers, incomplete: dict[str, str]) -> None:
        self.stream = stream
        self.name = stream.name
        self._workers = workers
        self._incomplete = incomplete

    async def first(self) -> list[Frame] | None:
        """The first frames; raises WorkerGone (the worker is then missing, not incomplete)."""
        return await self._next(FIRST_DATA_TIMEOUT)

    async def next(self) -> list[Frame] | None:
        try:
            return await self._next(IDLE_TIMEOUT)
        except WorkerGone as e:
            self._incomplete[self.name] = f"{e} after {self.stream.frames} frames"
            self._workers.get(self.name).export_failures += 1
            log.warning("export: worker %s %s after %d frames; skipped", self.name, e, self.stream.frames)
            return None

    async def _next(self, timeout: float) -> list[Frame] | None:
        while True:
            got = await self.stream.next(timeout)
            if got is None or got:
                return got

    async def close(self) -> None:
        self.stream.close()


Feed = _StoreFeed | _WorkerFeed


async def _ask_workers(
    exporters: Exporters,
    workers: Workers,
    flow_ids: list[str],
    f_from: int | None,
    f_to: int | None,
    incomplete: dict[str, str],
) -> tuple[list[tuple[_WorkerFeed, list[Frame] | None]], dict[str, str]]:
    """Ask every connected worker for its share of `flow_ids` and wait (concurrently) for each
    one's first frames. Returns the feeds that answered with their first frames, and the workers
    that hold selected connections but cannot give them, with why."""
    by_node: dict[str, list[str]] = {}
    for f in flow_ids:
        node, _, _ = f.partition("/")
        by_node.setdefault(node, []).append(f)
    missing: dict[str, str] = {}
    feeds: list[_WorkerFeed] = []
    for node in sorted(by_node):
        flows = by_node[node]
        if not exporters.is_connected(node):
            if any(_looks_live(f) for f in flows):
                missing[node] = "not connected"
            continue
        stream = exporters.request(node, f_from, f_to, flows)
        if stream is None:
            missing[node] = "not connected"
            continue
        workers.get(node).export_requests += 1
        feeds.append(_WorkerFeed(stream, workers, incomplete))

    async def first(feed: _WorkerFeed) -> list[Frame] | WorkerGone | None:
        try:
            return await feed.first()
        except WorkerGone as e:
            return e

    try:
        heads = await asyncio.gather(*(first(wf) for wf in feeds))
    except BaseException:  # the request went away: the workers stop reading their spools
        for wf in feeds:
            await wf.close()
        raise
    answered: list[tuple[_WorkerFeed, list[Frame] | None]] = []
    for feed, head in zip(feeds, heads):
        if isinstance(head, WorkerGone):
            missing[feed.name] = str(head)
            workers.get(feed.name).export_failures += 1
        else:
            answered.append((feed, head))
    for name, why in missing.items():
        log.warning("export: worker %s holds selected connections but %s; its frames are missing", name, why)
    return answered, missing


async def export(request: web.Request) -> web.StreamResponse:
    store = request.app[STORE_KEY]
    ingest = request.app[WRITER_KEY]
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

    incomplete: dict[str, str] = {}
    answered, missing = await _ask_workers(
        ingest.exporters, ingest.workers, sel.flow_ids, f_from, f_to, incomplete
    )
    feeds: list[Feed] = [_StoreFeed(store, sel.flow_ids, f_from, f_to)]
    feeds += [f for f, _ in answered]
    try:
        stamp = dt.datetime.fromtimestamp(now / 1e9, tz=dt.UTC).strftime("%Y%m%dT%H%M%SZ")
        headers = {
            "Content-Type": CONTENT_TYPE,
            "Content-Disposition": f'attachment; filename="podshark-{stamp}.pcapng"',
            "X-Podshark-Calls": str(sel.calls),
            "X-Podshark-Connections": str(len(sel.flow_ids)),
        }
        if answered:
            headers["X-Podshark-Workers"] = _header_names([f.name for f, _ in answered])
        else:
            headers["X-Podshark-Frames"] = str(count)
            headers["X-Podshark-Bytes"] = str(nbytes)
        if missing:
            headers["X-Podshark-Missing-Workers"] = _header_names(sorted(missing))
        resp = web.StreamResponse(headers=headers)
        await resp.prepare(request)
        heads: list[list[Frame] | None] = [await feeds[0].next()] + [h for _, h in answered]
        written = await _merge(resp, feeds, heads)
        notes = [f"podshark: worker {n}'s frames are missing: {why}" for n, why in sorted(missing.items())]
        notes += [
            f"podshark: worker {n} stopped answering ({why}): its later frames are missing"
            for n, why in sorted(incomplete.items())
        ]
        if notes:
            await resp.write(_note_section(notes))
        log.info(
            "export: %d frames of %d connections (%s)%s",
            written,
            len(sel.flow_ids),
            ", ".join(f"{f.name}: {f.stream.frames}" for f in feeds if isinstance(f, _WorkerFeed))
            or "store only",
            f"; missing: {', '.join(sorted({**missing, **incomplete}))}" if notes else "",
        )
    finally:
        for f in feeds:
            await f.close()
    await resp.write_eof()
    return resp


async def _merge(resp: web.StreamResponse, feeds: list[Feed], heads: list[list[Frame] | None]) -> int:
    """Write the frames of every feed in time order (a k-way merge of time-ordered feeds); returns
    how many frames were written."""
    writer = PcapngWriter()
    buf = bytearray(writer.header())
    bufs: list[list[Frame]] = []
    pos = [0] * len(feeds)
    heap: list[tuple[int, int]] = []
    for k, head in enumerate(heads):
        bufs.append(head or [])
        if head:
            heap.append((head[0][0], k))
    heapq.heapify(heap)
    packet = writer.packet
    while heap:
        if len(heap) == 1:  # one source left: copy it through without the heap
            _, k = heap[0]
            chunk: list[Frame] | None = bufs[k][pos[k] :]
            while chunk:
                for ts, linktype, orig_len, data in chunk:
                    buf += packet(ts, linktype, data, orig_len)
                if len(buf) >= FLUSH_BYTES:
                    await resp.write(bytes(buf))
                    buf.clear()
                chunk = await feeds[k].next()
            break
        _, k = heapq.heappop(heap)
        ts, linktype, orig_len, data = bufs[k][pos[k]]
        buf += packet(ts, linktype, data, orig_len)
        pos[k] += 1
        if len(buf) >= FLUSH_BYTES:
            await resp.write(bytes(buf))
            buf.clear()
        if pos[k] == len(bufs[k]):
            nxt = await feeds[k].next()
            if not nxt:
                continue
            bufs[k], pos[k] = nxt, 0
        heapq.heappush(heap, (bufs[k][pos[k]][0], k))
    await resp.write(bytes(buf))
    return writer.packets


def add_routes(app: web.Application) -> None:
    app.router.add_get("/api/v1/export", export)
