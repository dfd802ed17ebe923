"""The ingest WebSocket `/api/v1/ingest` and the hub's one writer.

Messages are JSON objects with a `type`:

- `hello` {worker, capabilities}: who is talking (kept for logs and, later, per-worker health).
- `calls` {seq, calls: [Call JSON]}: every call is validated (`Call.from_json`, msgspec); the valid
  ones go to the writer, and `{"type": "ack", "seq": seq}` comes back only once the batch holding
  them is committed to the store. Invalid calls are reported in an `error` message (with `seq` and
  `index`) and counted in the ack's `rejected`; resending them would not help.
- `packets` {seq, ...}: accepted and counted, not stored yet (export is a later step); acked at once.
- anything else that is not a JSON object with a known type: `{"type": "error", "error": ...}`,
  and the stream goes on.

The writer (`Writer`) is one task: it takes batches off a queue, gathers them for about a second
(or until `max_calls`), runs one `Store.add` in a thread (one bulk insert, one transaction) and then
queues the acks on each connection's sender. The store deduplicates by id, so a batch resent after
a reconnect is stored once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec
from aiohttp import WSMsgType, web

from dissect.model import Call
from hub.store import Store
from hub.workers import Workers, WorkerState

log = logging.getLogger("podshark.hub.ingest")


class _Envelope(msgspec.Struct):
    type: str
    seq: int | None = None
    calls: list[msgspec.Raw] = []
    worker: str | None = None
    capabilities: list[str] = []


_ENVELOPE = msgspec.json.Decoder(_Envelope)


@dataclass
class Stats:
    batches: int = 0
    calls_received: int = 0
    calls_stored: int = 0
    calls_rejected: int = 0
    packets_messages: int = 0
    frame_errors: int = 0
    commits: int = 0
    commit_errors: int = 0


@dataclass
class Conn:
    """One ingest connection: its outbound queue (one sender task writes the socket)."""

    worker: str = "?"
    state: WorkerState | None = None  # the registry entry of `worker` (hub/workers.py)
    out: asyncio.Queue[dict[str, Any] | None] = field(default_factory=asyncio.Queue)
    closed: bool = False

    def send(self, msg: dict[str, Any]) -> None:
        if not self.closed:
            self.out.put_nowait(msg)


@dataclass
class _Pending:
    conn: Conn
    seq: int | None
    calls: list[Call]
    rejected: int


class Writer:
    """The one writer: batches into Store.add about once a second, then acks."""

    def __init__(
        self,
        store: Store,
        interval: float = 1.0,
        max_calls: int = 20_000,
        enforce_every: float = 60.0,
    ) -> None:
        self.store = store
        self.interval = interval
        self.max_calls = max_calls
        self.enforce_every = enforce_every
        self.queue: asyncio.Queue[_Pending | None] = asyncio.Queue()
        self.stats = Stats()
        self._task: asyncio.Task[None] | None = None
        # called on the event loop with the calls of every committed batch (live fan-out, stats)
        self.listeners: list[Callable[[Sequence[Call]], None]] = []
        self.workers = Workers()
        self._last_enforce = time.monotonic()

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="hub-writer")

    async def stop(self) -> None:
        """Commit what is queued, then end."""
        if self._task is not None:
            await self.queue.put(None)
            await self._task
            self._task = None

    def submit(self, item: _Pending) -> None:
        self.queue.put_nowait(item)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        stopping = False
        while not stopping:
            first = await self.queue.get()
            if first is None:
                break
            batch = [first]
            n = len(first.calls)
            deadline = loop.time() + self.interval
            while n < self.max_calls:
                timeout = deadline - loop.time()
                if timeout <= 0:
                    break
                try:
                    item = await asyncio.wait_for(self.queue.get(), timeout)
                except TimeoutError:
                    break
                if item is None:
                    stopping = True
                    break
                batch.append(item)
                n += len(item.calls)
            await self._commit(batch)
            if self.store.retain_ns is not None or self.store.max_bytes is not None:
                now = time.monotonic()
                if now - self._last_enforce >= self.enforce_every:
                    self._last_enforce = now
                    try:
                        await loop.run_in_executor(None, self.store.enforce, time.time_ns())
                    except Exception:
                        log.exception("retention failed")
        # drain anything queued after the stop marker (nothing should be)
        rest = [i for i in _drain(self.queue) if i is not None]
        if rest:
            await self._commit(rest)

    async def _commit(self, batch: list[_Pending]) -> None:
        calls = [c for p in batch for c in p.calls]
        loop = asyncio.get_running_loop()
        try:
            if calls:
                new = await loop.run_in_executor(None, self.store.add, calls, time.time_ns())
                self.stats.calls_stored += new
            self.stats.commits += 1
        except Exception as e:
            self.stats.commit_errors += 1
            log.exception("store.add failed")
            for p in batch:
                p.conn.send({"type": "error", "seq": p.seq, "error": f"not stored: {e}"})
            return
        for listener in self.listeners:
            try:
                listener(calls)
            except Exception:
                log.exception("listener %r failed", listener)
        for p in batch:
            if p.seq is not None:
                p.conn.send({"type": "ack", "seq": p.seq, "calls": len(p.calls), "rejected": p.rejected})


def _drain(q: asyncio.Queue[_Pending | None]) -> list[_Pending | None]:
    out: list[_Pending | None] = []
    while True:
        try:
            out.append(q.get_nowait())
        except asyncio.QueueEmpty:
            return out


WRITER_KEY: web.AppKey[Writer] = web.AppKey("writer", Writer)


async def handle_ingest(request: web.Request) -> web.WebSocketResponse:
    writer = request.app[WRITER_KEY]
    ws = web.WebSocketResponse(heartbeat=30.0, max_msg_size=256 << 20)
    await ws.prepare(request)
    conn = Conn()
    sender = asyncio.get_running_loop().create_task(_send_loop(ws, conn))
    try:
        async for msg in ws:
            if msg.type in (WSMsgType.TEXT, WSMsgType.BINARY):
                _handle_frame(msg.data, conn, writer)
            elif msg.type == WSMsgType.ERROR:
                break
    finally:
        conn.closed = True
        if conn.state is not None:
            writer.workers.disconnected(conn.state)
        conn.out.put_nowait(None)
        with contextlib.suppress(Exception):
            await sender
    return ws


async def _send_loop(ws: web.WebSocketResponse, conn: Conn) -> None:
    while True:
        msg = await conn.out.get()
        if msg is None or ws.closed:
            return
        try:
            await ws.send_str(msgspec.json.encode(msg).decode())
        except (ConnectionError, RuntimeError):
            return


def _error(conn: Conn, writer: Writer, text: str, **extra: Any) -> None:
    writer.stats.frame_errors += 1
    if conn.state is not None:
        conn.state.errors += 1
    conn.send({"type": "error", "error": text, **extra})


def _handle_frame(data: str | bytes, conn: Conn, writer: Writer) -> None:
    """Decode the envelope and hand the message to its type's handler (`HANDLERS`)."""
    try:
        env = _ENVELOPE.decode(data)
    except msgspec.ValidationError as e:
        _error(conn, writer, f"not a valid message: {e}")
        return
    except msgspec.DecodeError as e:
        _error(conn, writer, f"not JSON: {e}")
        return
    handler = HANDLERS.get(env.type)
    if handler is None:
        _error(conn, writer, f"unknown message type {env.type!r}", seq=env.seq)
        return
    if env.type != "hello":
        _count(env, conn, writer)
    handler(env, data, conn, writer)


def _count(env: _Envelope, conn: Conn, writer: Writer) -> None:
    """Per-worker activity (hub/workers.py); a client that never said hello is worker "?"."""
    if conn.state is None:
        conn.state = writer.workers.get(conn.worker)
        writer.workers.connected(conn.state, [])
    state = conn.state
    state.last_seen_ns = time.time_ns()
    if env.type == "calls":
        state.batches += 1
        state.calls += len(env.calls)
    elif env.type == "packets":
        state.packets_messages += 1


def _on_hello(env: _Envelope, data: str | bytes, conn: Conn, writer: Writer) -> None:
    name = env.worker or "?"
    if conn.state is not None and conn.state.name != name:
        writer.workers.disconnected(conn.state)
        conn.state = None
    conn.worker = name
    if conn.state is None:
        conn.state = writer.workers.get(name)
        writer.workers.connected(conn.state, env.capabilities)
    else:
        conn.state.capabilities = [c[:64] for c in env.capabilities[:32]]
    log.info("worker %s connected (%s)", conn.worker, ",".join(env.capabilities))


def _on_packets(env: _Envelope, data: str | bytes, conn: Conn, writer: Writer) -> None:
    writer.stats.packets_messages += 1
    if env.seq is not None:
        conn.send({"type": "ack", "seq": env.seq, "stored": False})


def _on_calls(env: _Envelope, data: str | bytes, conn: Conn, writer: Writer) -> None:
    if env.seq is None:
        _error(conn, writer, "a calls message needs a seq")
        return
    good: list[Call] = []
    rejected = 0
    for i, raw in enumerate(env.calls):
        try:
            call = Call.from_json(bytes(raw))
            if not call.id:
                raise ValueError("call has no id")
        except ValueError as e:
            rejected += 1
            _error(conn, writer, str(e), seq=env.seq, index=i)
            continue
        good.append(call)
    writer.stats.batches += 1
    writer.stats.calls_received += len(good)
    writer.stats.calls_rejected += rejected
    writer.submit(_Pending(conn, env.seq, good, rejected))


_STATS = msgspec.json.Decoder(dict[str, Any])


def _on_stats(env: _Envelope, data: str | bytes, conn: Conn, writer: Writer) -> None:
    """A worker's report on itself (drops, TLS coverage): kept for /api/v1/stats and /metrics."""
    assert conn.state is not None  # set by _handle_frame
    err = writer.workers.report(conn.state, _STATS.decode(data), len(data))
    if err is not None:
        _error(conn, writer, err, seq=env.seq)


# One handler per message type: (envelope, the raw frame for handlers that decode more, conn, writer).
HANDLERS: dict[str, Callable[[_Envelope, str | bytes, Conn, Writer], None]] = {
    "hello": _on_hello,
    "calls": _on_calls,
    "packets": _on_packets,
    "stats": _on_stats,
}
