"""The replay WebSocket `/api/v1/replay?from=&to=&speed=&filter=`: a past window in its own timing.

    ws = await session.ws_connect(hub + "/api/v1/replay?from=-15m&to=now&speed=10&filter=http",
                                  headers={"Authorization": "Bearer ..."}, max_msg_size=0)

Parameters, checked before the upgrade (a bad one is a plain HTTP 400 `{"error"}`, a filter that
does not parse a 400 with `position` and `expected`, a missing token a 401):

- `from`, `to` (required): the window [from, to) of the calls' start time (request_ts, else
  response_ts: what the store orders by), RFC 3339, relative (`-15m`, resolved when the request
  arrives), `now`, or integer nanoseconds (`hub.api.parse_when`).
- `speed`: `1` (default), `10`, any positive number (a trailing `x` is allowed: `10x`), or `max`.
- `filter`: the filter language, compiled to SQL (the store does the filtering).

Server to client, one JSON text frame per message:

- `{"type": "hello", "from": NS, "to": NS, "speed": 1.0 | "max", "filter": TEXT, "canonical": TEXT,
  "server_time": NS}` first.
- `{"type": "calls", "calls": [SUMMARY, ...]}`: the same shape as the live socket's (`hub/live.py`):
  summaries without bodies, oldest first, in (start time, id) order. The first call goes out at
  once; call `c` is due `(start(c) - start(first)) / speed` seconds later, so the time before the
  first call and after the last is skipped, gaps in between are kept (scaled). Calls due together
  share one message (at most 1,000 calls or about 1 MiB each), and messages are at least 20 ms
  apart, so spacing is kept to within about 20 ms; at `max` messages are sent as fast as the client
  reads them.
- `{"type": "progress", "position": NS | null, "sent": N, "speed": X | "max", "paused": BOOL}`:
  about once a second while waiting, and after every pause/resume/speed change. `position` is the
  replay clock in capture time (for a banner: "replaying 12:03:15"); null before the first call.
- `{"type": "error", "error": TEXT}`: a client message the hub refused (the replay goes on), or a
  store failure (then the socket closes).
- `{"type": "end", "calls": N}` after the last call; then the hub closes the socket (code 1000).

Client to server: `{"type": "pause"}`, `{"type": "resume"}`, `{"type": "speed", "speed": 10 | "max"}`;
each is answered with a `progress` message. A speed change keeps the replay clock where it is and
runs on from there at the new rate.

Memory and load. The window is read oldest-first in pages of 1,000 rows with the store's cursor
(`Store.query(order="asc", cursor=...)`, in a thread executor), one page read ahead, so a replay
holds at most a few pages whatever the window. Each page is a new query from the cursor on. A
replay never drops calls: a client that reads slowly makes the replay fall behind, and whatever is
due by then goes out together. Calls stored into the window after the replay has passed that point
are not replayed; the window is not a snapshot.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import deque
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

import msgspec
from aiohttp import WSMsgType, web

from dissect.filter import Filter, FilterError, parse
from hub import filter_sql
from hub.api import STORE_KEY, BadRequest, bad_filter, bad_request, parse_when
from hub.live import MAX_CONTROL, Send, close_all
from hub.store import Store, StoreError

log = logging.getLogger("podshark.hub.replay")

PAGE = 1_000  # rows per store query
MESSAGE_CALLS = 1_000  # calls per `calls` message at most
MESSAGE_BYTES = 1 << 20  # and about this many bytes
MIN_GAP = 0.02  # seconds between two `calls` messages when calls are due in a burst
PROGRESS_EVERY = 1.0  # seconds
MAX_SPEED = 1e9  # beyond this, say `max`
HEARTBEAT = 30.0
_COLUMNS = ("request_ts", "response_ts", "record")

_ENCODE = msgspec.json.Encoder()


@dataclass(frozen=True)
class ReplayParams:
    from_ns: int
    to_ns: int
    speed: float | None  # None: as fast as possible
    filter: Filter
    where: str
    args: list[object]


def parse_speed(text: str) -> float | None:
    """`max`, or a positive number (`1`, `10`, `0.5`, `10x`); None means max."""
    t = text.strip().lower()
    if t == "max":
        return None
    try:
        speed = float(t.removesuffix("x"))
    except ValueError:
        speed = math.nan
    if not (speed > 0 and math.isfinite(speed)) or speed > MAX_SPEED:
        raise BadRequest(f"speed must be a positive number like 1 or 10, or max; not {text!r}")
    return speed


def parse_params(query: Mapping[str, str], now_ns: int) -> ReplayParams:
    """Check a replay request's parameters. Raises BadRequest, or FilterError for the filter."""
    missing = [k for k in ("from", "to") if not query.get(k)]
    if missing:
        raise BadRequest(
            f"replay needs {' and '.join(missing)}: a window like from=-15m&to=now "
            "(RFC 3339, relative, or nanoseconds)"
        )
    from_ns = parse_when(query["from"], now_ns)
    to_ns = parse_when(query["to"], now_ns)
    if to_ns <= from_ns:
        raise BadRequest(f"to ({query['to']}) must be after from ({query['from']})")
    speed = parse_speed(query.get("speed", "1"))
    flt = parse(query.get("filter", ""), now_ns=now_ns)
    where, args = filter_sql.compile(flt)
    return ReplayParams(from_ns, to_ns, speed, flt, where, list(args))


class Clock:
    """Maps a call's start time (ns) to the loop time it is due, through pause and speed changes.

    The replay clock reads `anchor_ts` at loop time `anchor_wall` and runs at `speed` (None: it
    jumps to each call as soon as the previous one is sent, `last_ts`)."""

    def __init__(self, speed: float | None) -> None:
        self.speed = speed
        self.paused = False
        self.anchor_ts: int | None = None
        self.anchor_wall = 0.0
        self.last_ts: int | None = None
        self.changed = asyncio.Event()  # set on pause/resume/speed, so a wait ends early

    def start(self, ts: int, now: float) -> None:
        self.anchor_ts, self.anchor_wall = ts, now

    def due(self, ts: int) -> float:
        if self.paused:
            return math.inf
        if self.speed is None or self.anchor_ts is None:
            return -math.inf
        return self.anchor_wall + (ts - self.anchor_ts) / 1e9 / self.speed

    def position(self, now: float) -> int | None:
        if self.anchor_ts is None:
            return None
        if self.paused:
            return self.anchor_ts
        if self.speed is None:
            return self.last_ts if self.last_ts is not None else self.anchor_ts
        return self.anchor_ts + int((now - self.anchor_wall) * self.speed * 1e9)

    def _rebase(self, now: float) -> None:
        pos = self.position(now)
        if pos is not None:
            self.anchor_ts, self.anchor_wall = pos, now

    def set_speed(self, speed: float | None, now: float) -> None:
        if not self.paused:
            self._rebase(now)
        self.speed = speed
        self.changed.set()

    def pause(self, now: float) -> None:
        if not self.paused:
            self._rebase(now)
            self.paused = True
        self.changed.set()

    def resume(self, now: float) -> None:
        if self.paused:
            self.paused = False
            self.anchor_wall = now
        self.changed.set()


class Replay:
    """One replay: reads the window page by page and sends each call when it is due."""

    def __init__(self, store: Store, params: ReplayParams, send: Send) -> None:
        self.store = store
        self.params = params
        self._send = send
        self.clock = Clock(params.speed)
        self.control: deque[bytes] = deque()
        self.sent = 0
        self.finished = False  # ended (or failed) on its own: the socket is being closed
        self._report = False
        self._last_progress = 0.0
        self._last_flush = -math.inf
        self._pending: list[str] = []
        self._pending_bytes = 0

    # ---- client requests (called from the socket's reader, on the loop)

    def say(self, msg: dict[str, Any]) -> None:
        """Queue a reply; beyond MAX_CONTROL unsent ones, further replies are dropped."""
        if len(self.control) < MAX_CONTROL:
            self.control.append(_ENCODE.encode(msg))
        self.clock.changed.set()

    def on_client_message(self, data: str) -> None:
        try:
            msg = msgspec.json.decode(data)
        except msgspec.DecodeError as e:
            self.say({"type": "error", "error": f"not JSON: {e}"})
            return
        kind = msg.get("type") if isinstance(msg, dict) else None
        now = asyncio.get_running_loop().time()
        if kind == "pause":
            self.clock.pause(now)
        elif kind == "resume":
            self.clock.resume(now)
        elif kind == "speed":
            try:
                self.clock.set_speed(parse_speed(str(msg.get("speed", ""))), now)
            except BadRequest as e:
                self.say({"type": "error", "error": str(e)})
                return
        else:
            self.say(
                {
                    "type": "error",
                    "error": f'unknown message {kind!r}: send {{"type": "pause"}}, {{"type": "resume"}} '
                    'or {"type": "speed", "speed": 10}',
                }
            )
            return
        self._report = True

    # ---- the replay

    async def run(self) -> None:
        p = self.params
        await self._send(
            _ENCODE.encode(
                {
                    "type": "hello",
                    "from": p.from_ns,
                    "to": p.to_ns,
                    "speed": "max" if p.speed is None else p.speed,
                    "filter": p.filter.text,
                    "canonical": str(p.filter),
                    "server_time": time.time_ns(),
                }
            )
        )
        loop = asyncio.get_running_loop()
        self._last_progress = loop.time()
        clock = self.clock
        async for rows in self._pages():
            for request_ts, response_ts, record in rows:
                ts = request_ts if request_ts is not None else (response_ts or 0)
                if clock.anchor_ts is None:
                    clock.start(ts, loop.time())
                while True:
                    clock.changed.clear()
                    await self._say_control()
                    now = loop.time()
                    due = clock.due(ts)
                    if due <= now:
                        break
                    if self._pending and now >= self._last_flush + MIN_GAP:
                        await self._flush()
                        continue
                    until = min(due, self._last_flush + MIN_GAP) if self._pending else due
                    await self._maybe_progress(now)
                    timeout = min(until - now, PROGRESS_EVERY)
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(clock.changed.wait(), timeout)
                self._pending.append(record)
                self._pending_bytes += len(record)
                clock.last_ts = ts
                if len(self._pending) >= MESSAGE_CALLS or self._pending_bytes >= MESSAGE_BYTES:
                    await self._flush()
                    await self._say_control()
        await self._flush()
        await self._say_control()
        await self._send(b'{"type":"end","calls":%d}' % self.sent)

    async def _flush(self) -> None:
        if not self._pending:
            return
        items, self._pending, self._pending_bytes = self._pending, [], 0
        body = '{"type":"calls","calls":[' + ",".join(items) + "]}"
        await self._send(body.encode())
        self.sent += len(items)
        self._last_flush = asyncio.get_running_loop().time()
        await self._maybe_progress(self._last_flush)

    async def _say_control(self) -> None:
        while self.control:
            await self._send(self.control.popleft())
        if self._report:
            await self._progress(asyncio.get_running_loop().time())

    async def _maybe_progress(self, now: float) -> None:
        if self._report or now - self._last_progress >= PROGRESS_EVERY:
            await self._progress(now)

    async def _progress(self, now: float) -> None:
        self._report = False
        self._last_progress = now
        c = self.clock
        await self._send(
            _ENCODE.encode(
                {
                    "type": "progress",
                    "position": c.position(now),
                    "sent": self.sent,
                    "speed": "max" if c.speed is None else c.speed,
                    "paused": c.paused,
                }
            )
        )

    async def _pages(self) -> AsyncIterator[list[tuple[Any, ...]]]:
        """The window's rows, page by page, oldest first; the next page is read while this one
        is sent (at most one page waits in the queue)."""
        p = self.params
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[list[tuple[Any, ...]] | BaseException | None] = asyncio.Queue(maxsize=1)

        def read(cursor: str | None) -> tuple[list[tuple[Any, ...]], str | None]:
            return self.store.query(
                p.where,
                p.args,
                from_ns=p.from_ns,
                to_ns=p.to_ns,
                limit=PAGE,
                order="asc",
                cursor=cursor,
                columns=_COLUMNS,
            )

        async def produce() -> None:
            cursor: str | None = None
            try:
                while True:
                    rows, cursor = await loop.run_in_executor(None, read, cursor)
                    await queue.put(rows)
                    if cursor is None:
                        break
                await queue.put(None)
            except Exception as e:
                await queue.put(e)

        task = loop.create_task(produce(), name="replay-pages")
        try:
            while True:
                item = await queue.get()
                if item is None:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


# ---- the WebSocket

_SOCKETS: web.AppKey[set[web.WebSocketResponse]] = web.AppKey("replay_sockets", set)


async def handle_replay(request: web.Request) -> web.StreamResponse:
    try:
        params = parse_params(request.query, time.time_ns())
    except FilterError as e:
        return bad_filter(e)
    except BadRequest as e:
        return bad_request(str(e))
    ws = web.WebSocketResponse(heartbeat=HEARTBEAT, max_msg_size=1 << 16)
    await ws.prepare(request)
    sockets = request.app[_SOCKETS]
    sockets.add(ws)

    async def send(data: bytes) -> None:
        await ws.send_frame(data, WSMsgType.TEXT)

    replay = Replay(request.app[STORE_KEY], params, send)
    task = asyncio.get_running_loop().create_task(_run(replay, ws), name="replay")
    try:
        async for msg in ws:
            if msg.type == WSMsgType.TEXT:
                replay.on_client_message(msg.data)
            elif msg.type == WSMsgType.BINARY:
                replay.say({"type": "error", "error": "send JSON text messages, not binary"})
            elif msg.type == WSMsgType.ERROR:
                break
    finally:
        sockets.discard(ws)
        if not replay.finished:  # the client left (or the hub stops): stop reading the store
            task.cancel()
        # else the task is closing the socket: it reads the client's close reply (bounded by
        # aiohttp's close timeout), and cancelling it would turn a clean close into 1006
        with contextlib.suppress(asyncio.CancelledError):
            await task
    return ws


async def _run(replay: Replay, ws: web.WebSocketResponse) -> None:
    """Run the replay, then close the socket (which ends the handler's read loop)."""
    try:
        await replay.run()
        replay.finished = True
    except (ConnectionError, RuntimeError) as e:
        log.debug("replay client went away: %s", e)
        return
    except StoreError as e:
        with contextlib.suppress(ConnectionError, RuntimeError):
            await ws.send_str(_ENCODE.encode({"type": "error", "error": f"store: {e}"}).decode())
    except Exception as e:
        log.exception("replay failed")
        with contextlib.suppress(ConnectionError, RuntimeError):
            await ws.send_str(_ENCODE.encode({"type": "error", "error": f"replay failed: {e}"}).decode())
    replay.finished = True
    await ws.close()


async def _close_sockets(app: web.Application) -> None:
    await close_all(app[_SOCKETS])


def add_routes(app: web.Application) -> None:
    app[_SOCKETS] = set()
    app.router.add_get("/api/v1/replay", handle_replay)
    app.on_shutdown.append(_close_sockets)
