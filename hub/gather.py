"""Frames from the workers' packet spools, asked for over each worker's own ingest connection.

The hub never connects to a worker (workers may sit behind NAT or a firewall that only lets them
out); a worker that said `hello` with the capability `export` is asked on the WebSocket it already
keeps open, and answers on it between its `calls` batches:

    hub -> worker  {"type": "export-request", "id": ID, "from": ns|null, "to": ns|null, "flow_ids": [...]}
    worker -> hub  {"type": "export-data", "id": ID, "seq": k, "packets": [{flow_id, ts, orig_len,
                    linktype, data (base64)}], "done": false}        (about 1 MiB of frames each)
    hub -> worker  {"type": "export-next", "id": ID}                  (after taking each chunk)
    worker -> hub  ... the last chunk has "done": true, or "error": "..." (and done)
    hub -> worker  {"type": "export-cancel", "id": ID}                (the hub gave up or finished early)

Flow control keeps the hub's memory bounded: a worker sends at most two chunks ahead of the
`export-next`s it was given, so each stream holds at most `MAX_AHEAD` chunks here; a worker that
sends more is cut off (its stream fails) rather than buffered. `Exporters` is the registry (which
worker names can be asked, and the open requests by id); `WorkerStream` is one worker's answer to
one request, read by `hub/export.py`, which merges the streams with the store's frames by time.
Everything here runs on the event loop.
"""

from __future__ import annotations

import asyncio
import secrets
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Protocol

Frame = tuple[int, int, int, bytes]  # ts, linktype, orig_len, data: what Store.packets yields
MAX_AHEAD = 4  # chunks one stream may hold before the worker is considered to ignore flow control
_RECENT = 1024  # ids of ended requests remembered, so chunks already on the wire are ignored quietly


class Sender(Protocol):
    """An ingest connection as this module needs it (hub.ingest.Conn)."""

    worker: str
    closed: bool

    def send(self, msg: dict[str, Any]) -> None: ...


class WorkerGone(Exception):
    """A worker's stream ended without its `done`: the text says why (for the export's note)."""


@dataclass
class _Chunk:
    frames: list[Frame]
    done: bool
    error: str | None


@dataclass
class WorkerStream:
    """One worker's answer to one export request, chunk by chunk."""

    name: str
    conn: Sender
    req_id: str
    registry: Exporters
    queue: asyncio.Queue[_Chunk | WorkerGone] = field(default_factory=asyncio.Queue)
    finished: bool = False
    next_seq: int = 0
    frames: int = 0
    rejected: int = 0  # frames of this stream the hub could not read

    async def next(self, timeout: float) -> list[Frame] | None:
        """The frames of the next chunk (possibly empty), or None once the worker said done.
        Raises `WorkerGone` when the worker disconnects, fails, breaks the protocol or sends nothing
        for `timeout` seconds; the request is then cancelled on the worker."""
        if self.finished:
            return None
        try:
            item = await asyncio.wait_for(self.queue.get(), timeout)
        except TimeoutError:
            self.close()
            raise WorkerGone(f"sent no data for {timeout:g} s") from None
        if isinstance(item, WorkerGone):
            self.close()
            raise item
        if item.error is not None:
            self.close(cancel=False)
            raise WorkerGone(f"failed: {item.error}")
        self.frames += len(item.frames)
        if item.done:
            self.finished = True
            self.registry.end(self)
        elif not self.conn.closed:
            self.conn.send({"type": "export-next", "id": self.req_id})
        return item.frames

    def close(self, cancel: bool = True) -> None:
        """Stop (an export that ends early, or fails): the worker is told to stop reading."""
        if self.finished:
            return
        self.finished = True
        if cancel and not self.conn.closed:
            self.conn.send({"type": "export-cancel", "id": self.req_id})
        self.registry.end(self)

    def fail(self, why: str) -> None:
        """Wake the reader with `WorkerGone(why)` (from the ingest side); later chunks of this
        request are ignored."""
        self.queue.put_nowait(WorkerGone(why))
        self.registry.end(self)


class Exporters:
    """Which workers can be asked for frames, and the export requests waiting for their data."""

    def __init__(self) -> None:
        self._conns: dict[str, Sender] = {}
        self._streams: dict[str, WorkerStream] = {}
        self._ended: OrderedDict[str, None] = OrderedDict()

    # -- connections (hub/ingest.py)

    def register(self, name: str, conn: Sender) -> None:
        """`conn` said hello as `name` with the capability `export`; the newest connection wins."""
        self._conns[name] = conn

    def unregister(self, conn: Sender) -> None:
        """`conn` closed (or said hello again without `export`): its open streams fail."""
        for name, c in list(self._conns.items()):
            if c is conn:
                del self._conns[name]
        for s in list(self._streams.values()):
            if s.conn is conn:
                s.fail("disconnected")

    def connected(self) -> list[str]:
        return sorted(n for n, c in self._conns.items() if not c.closed)

    def is_connected(self, name: str) -> bool:
        c = self._conns.get(name)
        return c is not None and not c.closed

    def deliver(
        self,
        conn: Sender,
        req_id: str,
        seq: int,
        frames: list[Frame],
        done: bool,
        error: str | None,
        rejected: int,
    ) -> str | None:
        """An `export-data` chunk from `conn`; returns an error text for the worker, or None."""
        s = self._streams.get(req_id)
        if s is None or s.conn is not conn:
            if req_id in self._ended:
                return None  # sent before our cancel reached the worker
            return f"no export {req_id!r} is waiting for data from this worker"
        s.rejected += rejected
        if seq != s.next_seq:
            s.fail(f"sent chunk {seq} where {s.next_seq} was due")
            return f"export {req_id}: chunk {seq} out of order (expected {s.next_seq}); export abandoned"
        s.next_seq += 1
        if s.queue.qsize() >= MAX_AHEAD:
            s.fail(f"sent more than {MAX_AHEAD} chunks ahead of export-next")
            return f"export {req_id}: more than {MAX_AHEAD} chunks ahead of export-next; export abandoned"
        s.queue.put_nowait(_Chunk(frames, done, error))
        return None

    # -- requests (hub/export.py)

    def request(
        self, name: str, from_ns: int | None, to_ns: int | None, flow_ids: list[str]
    ) -> WorkerStream | None:
        """Ask worker `name` for the frames of `flow_ids` in [from_ns, to_ns); None if it is not
        connected (or cannot export)."""
        conn = self._conns.get(name)
        if conn is None or conn.closed:
            return None
        req_id = secrets.token_hex(8)
        stream = WorkerStream(name, conn, req_id, self)
        self._streams[req_id] = stream
        conn.send(
            {"type": "export-request", "id": req_id, "from": from_ns, "to": to_ns, "flow_ids": flow_ids}
        )
        return stream

    def end(self, stream: WorkerStream) -> None:
        if self._streams.get(stream.req_id) is stream:
            del self._streams[stream.req_id]
            self._ended[stream.req_id] = None
            while len(self._ended) > _RECENT:
                self._ended.popitem(last=False)

    def open_requests(self) -> int:
        return len(self._streams)
