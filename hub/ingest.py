"""The ingest WebSocket `/api/v1/ingest` and the hub's one writer.

Messages are JSON objects with a `type`:

- `hello` {worker, capabilities}: who is talking (kept for logs and, later, per-worker health).
- `calls` {seq, calls: [Call JSON]}: every call is validated (`Call.from_json`, msgspec); the valid
  ones go to the writer, and `{"type": "ack", "seq": seq}` comes back only once the batch holding
  them is committed to the store. Invalid calls are reported in an `error` message (with `seq` and
  `index`) and counted in the ack's `rejected`; resending them would not help.
- `packets` {seq, linktype, packets: [{flow_id, ts, orig_len, data, linktype?}]}: raw frames for
  pcap export (`data` base64, `ts` ns, `orig_len` the length on the wire, default len(data); a
  packet's own `linktype` overrides the message's). Validated one by one like calls (a bad packet is
  an `error` with `seq` and `index`, counted in the ack's `rejected`), stored by the same writer with
  `Store.add_packets` and acked after that commit: `{"type": "ack", "seq", "packets", "rejected"}`.
- `flows` {seq, flows: [FlowAggregate JSON]}: a worker's per-interval flow accounting (bytes,
  packets, connections per client/server pair; `hub.aggregates.FlowRecord`). Validated one by one
  (a bad flow is an `error` with `seq` and `index`, counted in the ack's `rejected`), turned into
  per-minute rows of the aggregates (`hub/aggregates.py`) and committed by the same writer, then
  acked: `{"type": "ack", "seq", "flows", "rejected"}`, so an acknowledged flow survives `kill -9`.
  Flows older than the aggregates' retention are acknowledged and dropped (`flows_expired`).
- `stats` {drops, cluster_ranges, ...}: the worker's report on itself (hub/workers.py).
- `export-data` {id, seq, packets, done, error?}: a chunk of a worker's answer to an
  `export-request` the hub sent it (hub/gather.py has the exchange; hub/export.py asks): each frame
  validated like a `packets` frame (with its own `linktype`), then handed to the waiting export.
  A worker whose `hello` lists the capability `export` is registered (`Writer.exporters`) under its
  name while its connection is open, so the export endpoint can ask it.
- anything else that is not a JSON object with a known type: `{"type": "error", "error": ...}`,
  and the stream goes on.

The writer (`Writer`) is one task: it takes batches off a queue, gathers them for half a second
(the hub's `--batch-interval`; or until `max_calls`), runs one `Store.add` in a thread (one bulk
insert, one transaction), and one `Store.add_packets` for the frames of the `packets` messages among
them, and the aggregates' `add_flows` for the rows of the `flows` messages, and then queues the acks
on each connection's sender. With aggregates, every committed batch of calls is also counted into
them (a listener: `Aggregates.add_calls`). Half a second keeps a live call's delay
from packet to the TUI under a second while a commit still carries thousands of calls. The store
deduplicates by id, so a batch resent after a reconnect is stored once.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any

import msgspec
from aiohttp import WSMsgType, web

from dissect.model import SCHEMA_VERSION, Call
from hub.aggregates import FLOW_DECODER, Aggregates, FlowRecord, FlowRow
from hub.gather import Exporters, Frame
from hub.store import PacketRow, Store
from hub.workers import Workers, WorkerState

log = logging.getLogger("podshark.hub.ingest")


class _Envelope(msgspec.Struct):
    type: str
    seq: int | None = None
    calls: list[msgspec.Raw] = []
    linktype: int | None = None  # packets: the link type of the message's frames
    packets: list[msgspec.Raw] = []
    flows: list[msgspec.Raw] = []
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
    packets_received: int = 0
    packets_stored: int = 0
    packets_rejected: int = 0
    flows_messages: int = 0
    flows_received: int = 0
    flows_rejected: int = 0
    flows_expired: int = 0
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
    packets: list[PacketRow] | None = None  # a `packets` message's valid frames
    flows: list[FlowRow] | None = None  # a `flows` message's rows for the aggregates
    flow_count: int = 0  # the valid flows behind them (what the ack reports)

    @property
    def size(self) -> int:
        """Calls, frames and flows: what the writer's batch size and back-pressure count."""
        return len(self.calls) + (len(self.packets) if self.packets else 0) + self.flow_count


class Writer:
    """The one writer: batches into Store.add about once a second, then acks."""

    def __init__(
        self,
        store: Store,
        interval: float = 1.0,
        max_calls: int = 20_000,
        enforce_every: float = 60.0,
        max_queued: int = 200_000,
        aggregates: Aggregates | None = None,
    ) -> None:
        self.store = store
        self.aggregates = aggregates
        self.interval = interval
        self.max_calls = max_calls
        self.enforce_every = enforce_every
        self.queue: asyncio.Queue[_Pending | None] = asyncio.Queue()
        self.stats = Stats()
        self._task: asyncio.Task[None] | None = None
        # called on the event loop with the calls of every committed batch (live fan-out, stats)
        self.listeners: list[Callable[[Sequence[Call]], None]] = []
        if aggregates is not None:
            self.listeners.append(aggregates.add_calls)
        # workers' reported cluster ranges feed the ranges the aggregates key nodes by
        self.workers = Workers(aggregates.ranges if aggregates is not None else None)
        self.exporters = Exporters()  # connections that can be asked for frames (hub/gather.py)
        self.max_queued = max_queued
        self.queued = 0  # calls and frames submitted and not yet committed (or failed)
        self._room = asyncio.Event()
        self._room.set()
        self._last_enforce = time.monotonic()
        # why the last commit failed, until one succeeds: /readyz reports it (hub/api.py), so an
        # orchestrator stops sending traffic to a hub that cannot store, and says why
        self.store_error: str | None = None

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
        self.queued += item.size
        if self.queued >= self.max_queued:
            self._room.clear()

    async def room(self) -> None:
        """Wait while the writer is `max_queued` calls and frames behind: the ingest handlers stop
        reading their sockets meanwhile, so TCP pushes back on the workers (which spool) instead of
        the hub's memory growing without bound."""
        await self._room.wait()

    def _done(self, batch: list[_Pending]) -> None:
        self.queued -= sum(p.size for p in batch)
        if self.queued < self.max_queued:
            self._room.set()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        stopping = False
        while not stopping:
            first = await self.queue.get()
            if first is None:
                break
            batch = [first]
            n = first.size
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
                n += item.size
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
        try:
            await self._store(batch)
        finally:
            self._done(batch)

    async def _store(self, batch: list[_Pending]) -> None:
        calls = [c for p in batch for c in p.calls]
        loop = asyncio.get_running_loop()
        try:
            stored: list[Call] = []
            if calls:
                stored = await loop.run_in_executor(None, _add_and_thaw, self.store, calls, time.time_ns())
                self.stats.calls_stored += len(stored)
            frames = [r for p in batch if p.packets for r in p.packets]
            if frames:
                new = await loop.run_in_executor(None, self.store.add_packets, frames, time.time_ns())
                self.stats.packets_stored += new
            rows = [r for p in batch if p.flows for r in p.flows]
            if rows and self.aggregates is not None:
                await loop.run_in_executor(None, self.aggregates.add_flows, rows)
            self.stats.commits += 1
            self.store_error = None
        except Exception as e:
            self.stats.commit_errors += 1
            self.store_error = " ".join(str(e).split())[:500] or type(e).__name__
            log.exception("store.add failed")
            for p in batch:
                p.conn.send({"type": "error", "seq": p.seq, "error": f"not stored: {e}"})
            return
        for listener in self.listeners:  # the calls stored now: not those of a resent batch again
            try:
                listener(stored)
            except Exception:
                log.exception("listener %r failed", listener)
        for p in batch:
            if p.seq is not None:
                p.conn.send(_ack(p))


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
                await writer.room()
            elif msg.type == WSMsgType.ERROR:
                break
    finally:
        conn.closed = True
        writer.exporters.unregister(conn)
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
    except RecursionError:
        _error(conn, writer, "JSON nested too deeply; not read")
        return
    handler = HANDLERS.get(env.type)
    if handler is None:
        _error(conn, writer, f"unknown message type {env.type!r}", seq=env.seq)
        return
    if env.type != "hello":
        _count(env, conn, writer)
    try:
        handler(env, data, conn, writer)
    except Exception as e:  # a bug here must cost one message, never the worker's connection
        log.exception("ingest: %s message from %s failed", env.type, conn.worker)
        _error(conn, writer, f"the hub failed on this {env.type} message: {e!r}", seq=env.seq)


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
    elif env.type == "flows":
        state.flows_messages += 1
        state.flows += len(env.flows)


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
    writer.exporters.unregister(conn)
    if "export" in env.capabilities and name != "?":
        writer.exporters.register(conn.state.name, conn)
    log.info("worker %s connected (%s)", conn.worker, ",".join(c[:64] for c in env.capabilities[:32]))


# ---- packets (raw frames for pcap export)

MAX_FRAME = 262144  # tcpdump's largest snap length: a longer "frame" is not one
MAX_FLOW_ID = 256
MAX_ERRORS_PER_MESSAGE = 20  # a message of a million bad packets gets 20 errors and a count


class _Frame(msgspec.Struct):
    """One packet of a `packets` message; the bounds are those of pcapng and of the store."""

    flow_id: Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_FLOW_ID)]
    ts: Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)]
    data: Annotated[bytes, msgspec.Meta(max_length=MAX_FRAME)]
    orig_len: Annotated[int, msgspec.Meta(ge=0, le=0xFFFFFFFF)] | None = None
    linktype: Annotated[int, msgspec.Meta(ge=0, le=0xFFFF)] | None = None


_FRAME = msgspec.json.Decoder(_Frame)


def _ack(p: _Pending) -> dict[str, Any]:
    if p.flows is not None:
        return {"type": "ack", "seq": p.seq, "flows": p.flow_count, "rejected": p.rejected}
    if p.packets is not None:
        return {"type": "ack", "seq": p.seq, "packets": len(p.packets), "rejected": p.rejected}
    return {"type": "ack", "seq": p.seq, "calls": len(p.calls), "rejected": p.rejected}


def _on_packets(env: _Envelope, data: str | bytes, conn: Conn, writer: Writer) -> None:
    """Validate each frame, number identical ones (`rep`, see `hub.store.PACKET_COLUMNS`) and queue
    the valid ones for the writer, which acks after the commit."""
    writer.stats.packets_messages += 1
    if env.seq is None:
        _error(conn, writer, "a packets message needs a seq")
        return
    msg_linktype = env.linktype
    if msg_linktype is not None and not 0 <= msg_linktype <= 0xFFFF:
        _error(conn, writer, f"linktype {msg_linktype} is not a pcap link type (0..65535)", seq=env.seq)
        msg_linktype = None
    rows: list[PacketRow] = []
    reps: dict[tuple[str, int, bytes], int] = {}
    rejected = 0
    for i, raw in enumerate(env.packets):
        try:
            f = _FRAME.decode(raw)
            linktype = f.linktype if f.linktype is not None else msg_linktype
            if linktype is None:
                raise ValueError("no linktype: give one on the message or on the packet")
            orig_len = len(f.data) if f.orig_len is None else f.orig_len
            if orig_len < len(f.data):
                raise ValueError(f"orig_len {orig_len} is less than the {len(f.data)} bytes captured")
        except (msgspec.DecodeError, ValueError) as e:
            rejected += 1
            if rejected <= MAX_ERRORS_PER_MESSAGE:
                _error(conn, writer, f"packet: {e}", seq=env.seq, index=i)
            continue
        key = (f.flow_id, f.ts, f.data)
        rep = reps.get(key, 0)
        reps[key] = rep + 1
        rows.append((f.flow_id, f.ts, rep, linktype, orig_len, f.data))
    if rejected > MAX_ERRORS_PER_MESSAGE:
        more = rejected - MAX_ERRORS_PER_MESSAGE
        _error(conn, writer, f"{more} more bad packets not reported", seq=env.seq)
    writer.stats.packets_received += len(rows)
    writer.stats.packets_rejected += rejected
    writer.submit(_Pending(conn, env.seq, [], rejected, rows))


_CALL = msgspec.json.Decoder(Call)
_I64 = (1 << 63) - 1


def _call_problem(c: Call) -> str | None:
    """Why a decoded call cannot be stored, or None. msgspec checked the types; this checks what
    the types do not say: the schema version, an id, ports that are ports, and integers that fit
    the store's 64-bit columns (one out-of-range value would fail the whole commit)."""
    if c.v != SCHEMA_VERSION:
        return f"unsupported Call schema version {c.v!r} (this podshark reads {SCHEMA_VERSION})"
    if not c.id:
        return "call has no id"
    for end, e in (("src", c.src), ("dst", c.dst)):
        if e.port is not None and not 0 <= e.port <= 65535:
            return f"{end}.port {e.port} is not a port number (0-65535)"
        if e.pid is not None and not -_I64 <= e.pid <= _I64:
            return f"{end}.pid {e.pid} does not fit in 64 bits"
    q, r = c.request, c.response
    for name, v in (
        ("ingest_ts", c.ingest_ts),
        ("request_ts", c.request_ts),
        ("response_ts", c.response_ts),
        ("latency_ns", c.latency_ns),
        ("status", c.status),
        ("request.body_size", None if q is None else q.body_size),
        ("request.wire_size", None if q is None else q.wire_size),
        ("response.body_size", None if r is None else r.body_size),
        ("response.wire_size", None if r is None else r.wire_size),
    ):
        if v is not None and not -_I64 <= v <= _I64:
            return f"{name} {v} does not fit in 64 bits"
    return None


# A full collection at most this often frees reference cycles among frozen objects (`_add_and_thaw`).
FULL_COLLECTION_EVERY = 60.0
_last_full_collection = time.monotonic()


def _add_and_thaw(store: Store, calls: list[Call], now_ns: int) -> list[Call]:
    """`Store.add_new`, then give the decoded calls back to the garbage collector.

    `_on_calls` freezes what it decodes (`gc.freeze`): thousands of calls wait up to a second or
    two for their commit, and every young-generation collection meanwhile walked them again (a
    fifth of the hub's CPU at 20k calls/s, for objects that never form cycles and die by reference
    counting). Once their batch is stored they are thawed into the oldest generation. Whatever
    else was frozen along the way is thawed too, and a full collection at most once a minute frees
    any cycles among it, so garbage cycles wait at most that long."""
    global _last_full_collection
    try:
        return store.add_new(calls, now_ns)
    finally:
        gc.unfreeze()
        now = time.monotonic()
        if now - _last_full_collection >= FULL_COLLECTION_EVERY:
            _last_full_collection = now
            gc.collect()


def _on_calls(env: _Envelope, data: str | bytes, conn: Conn, writer: Writer) -> None:
    if env.seq is None:
        _error(conn, writer, "a calls message needs a seq")
        return
    good: list[Call] = []
    rejected = 0
    decode = _CALL.decode
    # The decoded calls hold no reference cycles and live until their commit: no collection while
    # they are made (it doubled the cost of decoding), and frozen once made, so the collections
    # until their commit skip them (the writer thaws them: `_add_and_thaw`).
    collecting = gc.isenabled()
    gc.disable()
    try:
        for i, raw in enumerate(env.calls):
            try:
                call = decode(raw)
            except msgspec.ValidationError as e:
                problem = f"not a valid Call record: {e}"
            except msgspec.DecodeError as e:
                problem = f"not JSON: {e}"
            else:
                why = _call_problem(call)
                if why is None:
                    good.append(call)
                    continue
                problem = why
            rejected += 1
            _error(conn, writer, problem, seq=env.seq, index=i)
    finally:
        if good:  # their commit thaws them (a message with no valid call freezes nothing)
            gc.freeze()
        if collecting:
            gc.enable()
    writer.stats.batches += 1
    writer.stats.calls_received += len(good)
    writer.stats.calls_rejected += rejected
    writer.submit(_Pending(conn, env.seq, good, rejected))


class _ExportData(msgspec.Struct):
    """An `export-data` chunk (hub/gather.py); its packets are read one by one like `packets`."""

    id: Annotated[str, msgspec.Meta(max_length=128)]
    seq: int
    packets: list[msgspec.Raw] = []
    done: bool = False
    error: Annotated[str, msgspec.Meta(max_length=4096)] | None = None


_EXPORT_DATA = msgspec.json.Decoder(_ExportData)


def _on_export_data(env: _Envelope, data: str | bytes, conn: Conn, writer: Writer) -> None:
    """Validate a chunk's frames and hand them to the export waiting for them (hub/gather.py)."""
    try:
        msg = _EXPORT_DATA.decode(data)
    except msgspec.DecodeError as e:  # ValidationError is a DecodeError
        _error(conn, writer, f"export-data: {e}")
        return
    frames: list[Frame] = []
    rejected = 0
    for i, raw in enumerate(msg.packets):
        try:
            f = _FRAME.decode(raw)
            if f.linktype is None:
                raise ValueError("no linktype")
            orig_len = len(f.data) if f.orig_len is None else f.orig_len
            if orig_len < len(f.data):
                raise ValueError(f"orig_len {orig_len} is less than the {len(f.data)} bytes captured")
        except (msgspec.DecodeError, ValueError) as e:
            rejected += 1
            if rejected <= MAX_ERRORS_PER_MESSAGE:
                _error(conn, writer, f"export-data packet: {e}", id=msg.id, seq=msg.seq, index=i)
            continue
        frames.append((f.ts, f.linktype, orig_len, f.data))
    err = writer.exporters.deliver(conn, msg.id, msg.seq, frames, msg.done, msg.error, rejected)
    if err is not None:
        _error(conn, writer, err, id=msg.id, seq=msg.seq)


def _on_flows(env: _Envelope, data: str | bytes, conn: Conn, writer: Writer) -> None:
    """Validate each flow aggregate, turn the valid ones into per-minute rows of the aggregates
    (node look-ups here, on the loop, where the node cache lives) and queue them for the writer,
    which commits them and then acks."""
    writer.stats.flows_messages += 1
    if env.seq is None:
        _error(conn, writer, "a flows message needs a seq")
        return
    aggregates = writer.aggregates
    if aggregates is None:
        _error(conn, writer, "this hub keeps no aggregates: flows are not accepted", seq=env.seq)
        return
    now = time.time_ns()
    good: list[FlowRecord] = []
    rejected = expired = 0
    for i, raw in enumerate(env.flows):
        try:
            flow = FLOW_DECODER.decode(raw)
        except msgspec.DecodeError as e:  # ValidationError is a DecodeError
            problem: str | None = f"not a valid flow aggregate: {e}"
        else:
            problem = aggregates.flow_problem(flow, now)
            if problem is None:
                if aggregates.expired(flow, now):
                    expired += 1
                else:
                    good.append(flow)
                continue
        rejected += 1
        if rejected <= MAX_ERRORS_PER_MESSAGE:
            _error(conn, writer, f"flow: {problem}", seq=env.seq, index=i)
    if rejected > MAX_ERRORS_PER_MESSAGE:
        _error(conn, writer, f"{rejected - MAX_ERRORS_PER_MESSAGE} more bad flows not reported", seq=env.seq)
    writer.stats.flows_received += len(good)
    writer.stats.flows_rejected += rejected
    writer.stats.flows_expired += expired
    rows = aggregates.prepare_flows(good)
    writer.submit(_Pending(conn, env.seq, [], rejected, flows=rows, flow_count=len(good) + expired))


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
    "flows": _on_flows,
    "stats": _on_stats,
    "export-data": _on_export_data,
}
