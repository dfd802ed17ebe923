"""The live WebSocket `/api/v1/live?filter=`: summaries of newly stored calls, per-client filter.

    ws = await session.ws_connect(hub + "/api/v1/live?filter=http%20and%20status%20>=%20500",
                                  headers={"Authorization": "Bearer ..."}, max_msg_size=0)

The filter is parsed before the upgrade: a filter that does not parse is a plain HTTP 400
`{"error", "position", "expected"}` (as `GET /api/v1/calls` answers), a missing or wrong token a
401. After the upgrade every message is one JSON text frame with a `type`.

Server to client:

- `{"type": "hello", "filter": TEXT, "canonical": TEXT, "server_time": NS, "interval_ms": 100,
  "buffer": N}` first, once. `canonical` is the filter as the hub understood it (`str(Filter)`).
- `{"type": "calls", "calls": [SUMMARY, ...]}`: calls that match the filter, in the order they
  were committed (so `ingest_ts` never decreases), at most one flush per `interval_ms` (a call
  after a quiet spell goes out at once; under load they are coalesced, and one flush is cut into
  messages of about 1 MiB). A SUMMARY is the call's JSON form without bodies — exactly what
  `GET /api/v1/calls` lists; fetch the whole call with `GET /api/v1/calls/{id}`.
- `{"type": "missed", "count": N}`: N matching calls were dropped because this client read too
  slowly. It sits exactly where they were: every call before it was sent, every call after it is
  newer than the dropped ones (a TUI can show one "N calls missed" row there).
- `{"type": "filter", "filter": TEXT, "canonical": TEXT}`: the reply to a filter change; every call
  after it matches the new filter.
- `{"type": "error", "error": TEXT, ["position": N, "expected": TEXT]}`: a client message the hub
  refused (position and expected for a filter that does not parse); the stream goes on.

Client to server:

- `{"type": "filter", "filter": TEXT}`: change the filter without reconnecting. Calls buffered
  under the old filter and not yet sent are discarded (with any pending missed count), so the
  client can clear its table when the reply comes. A filter that does not parse gets an `error`
  naming the position, and the old filter stays.

Pings: the hub pings every 30 s (aiohttp heartbeat) and closes a connection that does not answer.

Fan-out (`LiveHub`). The ingest writer calls `publish(calls)` on the event loop after each commit
(`ingest.Writer.listeners`). It is synchronous and never awaits: per call it runs each subscriber's
compiled predicate (`dissect.filter.Filter.matches`, parsed once), encodes the summary once if any
subscriber wants it, and appends it to the subscribers' buffers. Each subscriber has its own sender
task, so a client that reads slowly (or not at all) only delays itself; the writer never waits for
a client. A buffer holds at most `max_buffer` summaries and `max_bytes` bytes (defaults: 20,000 —
one full writer commit — and 16 MiB); when it overflows the OLDEST unsent summaries are dropped and
counted: a live view wants the newest calls, and the `missed` message marks the gap. A summary is
encoded before it is buffered, so a buffer never keeps a call's bodies alive.

Duplicates. The store keeps one copy of a call id, but the writer hands the listeners the whole
committed batch. The writer's `stats.calls_stored` grows by the number of new rows of that commit,
so the listener knows how many were new: a batch with none new (a capture imported again, a batch
resent after its ack was lost) is not published, and repeated ids inside one batch are published
once. Known limitation: a commit that mixes new calls and already stored ones (a re-import running
while other calls arrive) is published whole, duplicates included.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import msgspec
from aiohttp import WSMsgType, web

from dissect.filter import Filter, FilterError, parse
from dissect.model import Call
from hub.api import bad_filter, filter_error
from hub.ingest import Writer

log = logging.getLogger("podshark.hub.live")

INTERVAL = 0.1  # seconds between flushes to one client
MAX_BUFFER = 20_000  # summaries per client (the writer commits at most 20,000 calls at once)
MAX_BYTES = 16 << 20  # bytes of summaries per client
MESSAGE_BYTES = 1 << 20  # a flush is cut into `calls` messages of about this size
MAX_CLIENT_MESSAGE = 1 << 20  # a filter is at most 100,000 characters (dissect.filter.MAX_LENGTH)
MAX_CONTROL = 64  # replies queued for one client
HEARTBEAT = 30.0

Send = Callable[[bytes], Awaitable[None]]

_ENCODE = msgspec.json.Encoder()


class _ClientMessage(msgspec.Struct):
    type: str
    filter: str | None = None


_CLIENT = msgspec.json.Decoder(_ClientMessage)


class Subscriber:
    """One live client: its filter, its bounded buffer of encoded summaries, and its sender task.

    Everything but `run` is synchronous and called on the event loop, so no locks are needed."""

    def __init__(
        self,
        flt: Filter,
        send: Send,
        *,
        max_buffer: int = MAX_BUFFER,
        max_bytes: int = MAX_BYTES,
        interval: float = INTERVAL,
    ) -> None:
        self.filter = flt
        self.matches = flt.matches
        self._send = send
        self.max_buffer = max_buffer
        self.max_bytes = max_bytes
        self.interval = interval
        self.buffer: deque[bytes] = deque()
        self.buffered_bytes = 0
        self.missed = 0  # dropped since the last `missed` message
        self.control: deque[bytes] = deque()  # hello, filter replies, errors: sent before calls
        self.sent_calls = 0
        self.missed_calls = 0
        self._wake = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    def offer(self, summary: bytes) -> None:
        """Buffer one summary; drop the oldest while over either bound (never the only one)."""
        buf = self.buffer
        buf.append(summary)
        self.buffered_bytes += len(summary)
        while len(buf) > 1 and (len(buf) > self.max_buffer or self.buffered_bytes > self.max_bytes):
            self.buffered_bytes -= len(buf.popleft())
            self.missed += 1
            self.missed_calls += 1
        self._wake.set()

    def say(self, msg: dict[str, Any]) -> None:
        """Queue a control message; it goes out before any buffered call. A client that keeps
        sending while it does not read loses replies beyond MAX_CONTROL instead of growing this."""
        if len(self.control) < MAX_CONTROL:
            self.control.append(_ENCODE.encode(msg))
        self._wake.set()

    def set_filter(self, flt: Filter) -> None:
        """Switch filters: what the old one buffered (and its missed count) is discarded."""
        self.filter = flt
        self.matches = flt.matches
        self.buffer.clear()
        self.buffered_bytes = 0
        self.missed = 0
        self.say({"type": "filter", "filter": flt.text, "canonical": str(flt)})

    def _take(self) -> list[bytes]:
        """Pop about MESSAGE_BYTES of the oldest summaries (at least one)."""
        out: list[bytes] = []
        size = 0
        buf = self.buffer
        while buf and (not out or size + len(buf[0]) <= MESSAGE_BYTES):
            item = buf.popleft()
            size += len(item)
            out.append(item)
        self.buffered_bytes -= size
        return out

    async def run(self) -> None:
        """The sender: wake on news, send control messages, then `missed` and `calls` in buffer
        order, then rest for `interval` so what arrives meanwhile is coalesced."""
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                while self.control or self.missed or self.buffer:
                    if self.control:
                        await self._send(self.control.popleft())
                    elif self.missed:
                        n, self.missed = self.missed, 0
                        await self._send(b'{"type":"missed","count":%d}' % n)
                    else:
                        items = self._take()
                        await self._send(b'{"type":"calls","calls":[' + b",".join(items) + b"]}")
                        self.sent_calls += len(items)
                await asyncio.sleep(self.interval)
        except (ConnectionError, RuntimeError) as e:
            # the client went away (aiohttp raises ConnectionResetError, or RuntimeError once closed)
            log.debug("live sender ends: %s", e)


class LiveHub:
    """Fan-out of committed calls to live subscribers (network-free: a subscriber is a `send`)."""

    def __init__(
        self,
        *,
        max_buffer: int = MAX_BUFFER,
        max_bytes: int = MAX_BYTES,
        interval: float = INTERVAL,
    ) -> None:
        self.max_buffer = max_buffer
        self.max_bytes = max_bytes
        self.interval = interval
        self.subscribers: list[Subscriber] = []
        self.published = 0  # calls handed to publish() while anyone listened (after dedup)
        self.duplicates = 0  # calls not published because the store already had them
        # totals of subscribers that have left (stats() adds the current ones)
        self._gone_sent = 0
        self._gone_missed = 0

    def subscribe(self, flt: Filter, send: Send) -> Subscriber:
        """Add a subscriber and start its sender; the `hello` is its first message."""
        sub = Subscriber(
            flt, send, max_buffer=self.max_buffer, max_bytes=self.max_bytes, interval=self.interval
        )
        sub.say(
            {
                "type": "hello",
                "filter": flt.text,
                "canonical": str(flt),
                "server_time": time.time_ns(),
                "interval_ms": round(self.interval * 1000),
                "buffer": self.max_buffer,
            }
        )
        sub.task = asyncio.get_running_loop().create_task(sub.run(), name="live-sender")
        self.subscribers = [*self.subscribers, sub]  # a new list: publish() may be iterating
        return sub

    async def unsubscribe(self, sub: Subscriber) -> None:
        if sub in self.subscribers:
            self.subscribers = [s for s in self.subscribers if s is not sub]
            self._gone_sent += sub.sent_calls
            self._gone_missed += sub.missed_calls
        if sub.task is not None:
            sub.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sub.task
            sub.task = None

    def publish(self, calls: Sequence[Call], new: int | None = None) -> None:
        """Offer committed calls to every subscriber whose filter matches. `new` is how many of
        them the store did not have yet (None: unknown, all): 0 publishes nothing, and a repeated
        id inside the batch is offered once. Never awaits."""
        subs = self.subscribers
        if not subs or not calls:
            return
        if new is not None and new <= 0:
            self.duplicates += len(calls)
            return
        unique = _first_of_each(calls)
        self.duplicates += len(calls) - len(unique)
        calls = unique
        self.published += len(calls)
        if len(subs) == 1:
            sub = subs[0]
            matches, offer = sub.matches, sub.offer
            for call in calls:
                if matches(call):
                    offer(call.to_json_bytes(bodies=False))
            return
        for call in calls:
            summary: bytes | None = None
            for sub in subs:
                if sub.matches(call):
                    if summary is None:
                        summary = call.to_json_bytes(bodies=False)
                    sub.offer(summary)

    def listener(self, writer: Writer) -> Callable[[Sequence[Call]], None]:
        """The callable for `writer.listeners`: it reads how many calls the commit stored from the
        writer's counter (incremented just before the listeners run) and publishes."""
        last = writer.stats.calls_stored

        def on_commit(calls: Sequence[Call]) -> None:
            nonlocal last
            stored = writer.stats.calls_stored
            new, last = stored - last, stored
            self.publish(calls, new)

        return on_commit

    def stats(self) -> dict[str, int]:
        """For the stats endpoint: current subscribers and totals since the hub started."""
        subs = self.subscribers
        return {
            "subscribers": len(subs),
            "published": self.published,
            "duplicates": self.duplicates,
            "sent": self._gone_sent + sum(s.sent_calls for s in subs),
            "missed": self._gone_missed + sum(s.missed_calls for s in subs),
        }

    async def close(self) -> None:
        for sub in list(self.subscribers):
            await self.unsubscribe(sub)


def _first_of_each(calls: Sequence[Call]) -> Sequence[Call]:
    """The calls with repeated ids removed (first kept, as the store keeps it)."""
    ids = {c.id for c in calls}
    if len(ids) == len(calls):
        return calls
    out: list[Call] = []
    for c in calls:
        if c.id in ids:
            ids.discard(c.id)
            out.append(c)
    return out


# ---- the WebSocket

LIVE_KEY: web.AppKey[LiveHub] = web.AppKey("live", LiveHub)
_SOCKETS: web.AppKey[set[web.WebSocketResponse]] = web.AppKey("live_sockets", set)


async def handle_live(request: web.Request) -> web.StreamResponse:
    text = request.query.get("filter", "")
    try:
        flt = parse(text)
    except FilterError as e:
        return bad_filter(e)
    hub = request.app[LIVE_KEY]
    ws = web.WebSocketResponse(heartbeat=HEARTBEAT, max_msg_size=MAX_CLIENT_MESSAGE)
    await ws.prepare(request)
    sockets = request.app[_SOCKETS]
    sockets.add(ws)

    async def send(data: bytes) -> None:
        await ws.send_frame(data, WSMsgType.TEXT)

    sub = hub.subscribe(flt, send)
    try:
        async for msg in ws:
            if msg.type == WSMsgType.TEXT:
                _on_client_message(sub, msg.data)
            elif msg.type == WSMsgType.BINARY:
                sub.say({"type": "error", "error": "send JSON text messages, not binary"})
            elif msg.type == WSMsgType.ERROR:
                break
    finally:
        sockets.discard(ws)
        await hub.unsubscribe(sub)
    return ws


def _on_client_message(sub: Subscriber, data: str) -> None:
    try:
        msg = _CLIENT.decode(data)
    except msgspec.DecodeError as e:  # ValidationError is a DecodeError
        sub.say({"type": "error", "error": f'not a valid message ({e}): send {{"type": "filter", ...}}'})
        return
    if msg.type != "filter" or msg.filter is None:
        sub.say(
            {
                "type": "error",
                "error": f'unknown message {msg.type!r}: send {{"type": "filter", "filter": "..."}}',
            }
        )
        return
    try:
        flt = parse(msg.filter)
    except FilterError as e:
        sub.say({"type": "error", **filter_error(e)})
        return
    sub.set_filter(flt)


async def _close_sockets(app: web.Application) -> None:
    """On shutdown: close live sockets (else the server waits for them) and stop the senders."""
    await close_all(app[_SOCKETS])
    await app[LIVE_KEY].close()


async def close_all(sockets: set[web.WebSocketResponse]) -> None:
    """Close WebSockets with 1001 (going away), not waiting long for a client that does not read."""

    async def one(ws: web.WebSocketResponse) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(ws.close(code=1001, message=b"hub shutting down"), 2.0)

    await asyncio.gather(*(one(ws) for ws in list(sockets)))


def setup(app: web.Application, writer: Writer) -> LiveHub:
    """Create the app's LiveHub, listen to the writer's commits, add the route."""
    hub = LiveHub()
    app[LIVE_KEY] = hub
    app[_SOCKETS] = set()
    writer.listeners.append(hub.listener(writer))
    app.router.add_get("/api/v1/live", handle_live)
    app.on_shutdown.append(_close_sockets)
    return hub
