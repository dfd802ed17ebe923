"""The worker's one WebSocket to the hub: calls out in acknowledged batches, spooled on disk until
the hub has committed them, and the node's packet spool served back for pcap export.

    up = Uplink("http://hub:8080", token, "node-a", spool_dir=Path("/var/lib/podshark/uplink"),
                stats=worker_stats, export=lambda f, t, flows: read_spool(root, f, t, flows))
    task = asyncio.create_task(up.run())
    up.submit(call.to_json_bytes())        # from the capture thread: O(1), never blocks, never raises
    await up.close()                       # flush, wait for acks (bounded), stop

How a call travels, and where it can be lost (every loss is counted and reported, never silent):

1. `submit()` appends the call's JSON to an in-memory buffer under a lock held for a few
   instructions. The buffer is bounded in bytes (`buffer_max_bytes`): when the event loop cannot keep
   up, a call that does not fit is dropped and counted. Capture never waits on the network or disk.
2. The batcher (on the event loop, every `batch_interval` or as soon as `batch_max` calls are
   waiting) cuts the buffer into batches and writes each to the spool directory once, as one file
   (`BatchSpool`). A call that is not one JSON value is dropped as `invalid`: it would make its
   whole batch unreadable to the hub.
3. The sender sends spooled batches in order, at most `window` unacknowledged at a time, each as
   `{"type": "calls", "seq": <batch id>, ...}`. The hub acks a batch after its commit (so an acked
   call survives a `kill -9` of the hub); only then is its file deleted.
4. On a reconnect every unacknowledged batch is resent in order; the hub deduplicates by call id,
   so a batch that was committed but whose ack was lost is stored once.

The spool is bounded (`spool_max_bytes`). When a new batch does not fit, the oldest batches that
were never sent are deleted to make room, and their calls counted in `dropped`; when only batches
already sent remain (at most `window`, plus what an earlier process left), the new batch itself is
dropped. Why the oldest: the packet spool on the node keeps the newest frames too, so the calls kept
are those whose packets can still be exported, and after an outage an SRE wants what is happening
now. Why never a batch once sent: the hub may have stored it with its ack lost, and counting its
calls as dropped would then overstate the loss; the check "stored + dropped == submitted" is exact
because of this rule. `dropped` goes to the hub as `drops["spool"]` in each `stats` message (every
`STATS_INTERVAL` seconds and right after connecting), merged with the worker's own `stats()` dict,
so `/api/v1/stats` and `/metrics` show it.

Failure policy: an unreachable hub is retried with backoff (capped at `BACKOFF_CAP` seconds) and
logged once per change of state, not per retry. A 401 is logged once as a clear error and retried
every `auth_retry` seconds without stopping: `token` may be a callable that re-reads the token file,
so rotating the token needs no restart. A restarted worker finds its spool directory as it was
left: the batches there are resent first (a batch torn by a crash is detected by its length and
CRC and discarded, counted as `spool_corrupt`).

Flow aggregates (`submit_flows`, from the worker's flow accounting) travel the same way in `flows`
batches: their own bounded buffer, the same spool, sequence numbers, window, acks and resends. A hub
that does not take them — an `error` about a flows batch saying so (`wire.REFUSALS`: "unknown
message type", "not accepted"), or a `hello` from the hub whose capabilities leave "flows" out —
gets none for the rest of that connection: the flows batches spooled for it are deleted and counted
(`flows_unsupported`, and in `drops.flows`), new ones are counted and dropped at once, and calls go
on as before. The next connection tries again (the hub may have been upgraded meanwhile).

Export: the hub sends `export-request` {id, from, to, flow_ids}; the `export` callable (the packet
spool's reader) runs in a thread of its own and its frames go back as `export-data` chunks of about
`export_chunk_bytes`, at most `EXPORT_AHEAD` chunks ahead of the hub's `export-next`, until one
with `done: true` (or `error`). `export-cancel`, a disconnect or a hub that stops pulling for
`EXPORT_IDLE` seconds ends it. Calls keep flowing meanwhile on the same socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import struct
import threading
import time
import zlib
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from capture import wire

log = logging.getLogger("podshark.capture.uplink")

STATS_INTERVAL = 2.0
BACKOFF_FIRST = 0.2
BACKOFF_CAP = 5.0
CONNECT_TIMEOUT = 10.0
HEARTBEAT = 30.0
MAX_HUB_MESSAGE = 64 << 20  # an export request naming a million flows fits
MAX_CALL_BYTES = 64 << 20  # a bigger "call" is not one (bodies are bounded by the dissectors)
BATCH_MAX_BYTES = 4 << 20  # a batch is cut at this many bytes of call JSON, whatever its count
EXPORT_AHEAD = 2  # export-data chunks sent ahead of the hub's export-next
EXPORT_IDLE = 60.0  # seconds without export-next before the worker gives an export up
MAX_EXPORTS = 4  # concurrent export requests per connection
LOG_FIRST_ERRORS = 5  # hub error messages logged per connection (then every 1000th)

ExportFn = Callable[[int | None, int | None, list[str]], Iterable[tuple[int, int, int, bytes, str]]]
TokenSource = str | None | Callable[[], str | None]


# ---- the on-disk spool of unacknowledged batches

_HEADER = struct.Struct("<4sIII")  # magic, records, payload length, crc32 of the payload
_MAGIC = b"PSB1"  # a batch of calls
_MAGIC_FLOWS = b"PSF1"  # a batch of flow aggregates (dissect.flowstats)
_KINDS = {_MAGIC: "calls", _MAGIC_FLOWS: "flows"}
_MAGIC_OF = {kind: magic for magic, kind in _KINDS.items()}
_SUFFIX = ".batch"
_TMP = ".tmp"


class SpoolCorrupt(Exception):
    """A batch file whose length or checksum does not match its header."""


@dataclass
class SpooledBatch:
    id: int
    calls: int  # records in the batch: calls, or flow aggregates when kind is "flows"
    size: int  # bytes on disk
    sent: bool  # sent at least once (or left by an earlier process): its fate is unknown, never dropped
    kind: str = "calls"  # "calls" | "flows": which message carries it


class BatchSpool:
    """Unacknowledged batches, one file per batch: `<id, 16 digits>.batch` = a 16-byte header
    (magic, record count, payload length, CRC-32) and the records' JSON joined by commas. The magic
    says what the records are: calls (`PSB1`) or flow aggregates (`PSF1`); both kinds share the
    ids (the hub's sequence numbers), the bound and the send order.

    One file per batch makes an ack a single unlink and a resend a single read, and a crash can only
    tear the file being written: it is written as `.tmp` and renamed, and the header's length and
    CRC catch what the page cache had not written after a power loss (no fsync per batch: a worker
    restart must not resend garbage, but a power cut may lose the last seconds, which the node's
    capture lost anyway). The bookkeeping (`batches`, `unsent`, `bytes`) is the event loop's; the
    file I/O runs in threads (`write`, `read`).
    """

    def __init__(self, directory: Path, max_bytes: int) -> None:
        self.dir = directory
        self.max_bytes = max_bytes
        self.batches: dict[int, SpooledBatch] = {}  # every batch on disk, in id (= send) order
        self.unsent: dict[int, SpooledBatch] = {}  # the ones that may be dropped, oldest first
        self.bytes = 0
        self.unsent_bytes = 0
        self.calls = 0  # calls in the batches on disk
        self.flows = 0  # flow aggregates in the batches on disk
        self.corrupt = 0  # files discarded: torn or damaged
        self.dropped_at_start = 0  # calls of leftover batches over a (smaller) bound
        self.flows_dropped_at_start = 0  # ... and flow aggregates
        self.next_id = 1
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise OSError(f"cannot create the uplink spool directory {directory}: {e.strerror or e}") from e
        self._scan()

    def path(self, batch_id: int) -> Path:
        return self.dir / f"{batch_id:016d}{_SUFFIX}"

    def _scan(self) -> None:
        """Adopt what an earlier process left: whole batches are kept (and resent first), a `.tmp`
        (a write cut short) or a file whose length disagrees with its header is deleted."""
        found: list[SpooledBatch] = []
        for p in self.dir.iterdir():
            stem, _, ext = p.name.partition(".")
            if not stem.isdigit() or "." + ext not in (_SUFFIX, _TMP):
                continue  # not ours: left alone
            if "." + ext == _TMP:
                self._discard(p)
                continue
            head = _read_header(p)
            if head is None:
                self._discard(p)
                continue
            kind, calls, size = head
            found.append(SpooledBatch(int(stem), calls, size, sent=True, kind=kind))
        found.sort(key=lambda b: b.id)
        for b in found:
            self._add(b)
        if found:
            self.next_id = found[-1].id + 1
            log.info(
                "uplink spool %s: %d batches (%d calls) left by an earlier run will be resent",
                self.dir,
                len(found),
                self.calls,
            )
        while self.bytes > self.max_bytes and self.batches:
            oldest = next(iter(self.batches.values()))
            self.forget(oldest)
            if oldest.kind == "flows":
                self.flows_dropped_at_start += oldest.calls
            else:
                self.dropped_at_start += oldest.calls
            with contextlib.suppress(OSError):
                self.path(oldest.id).unlink()
        if self.dropped_at_start:
            log.warning(
                "uplink spool %s is over its bound of %d bytes: dropped the %d oldest calls left there",
                self.dir,
                self.max_bytes,
                self.dropped_at_start,
            )

    def _discard(self, p: Path) -> None:
        self.corrupt += 1
        log.warning("uplink spool: %s is torn or damaged (a crash mid-write?); deleted", p)
        with contextlib.suppress(OSError):
            p.unlink()

    def _add(self, b: SpooledBatch) -> None:
        self.batches[b.id] = b
        self.bytes += b.size
        if b.kind == "flows":
            self.flows += b.calls
        else:
            self.calls += b.calls
        if not b.sent:
            self.unsent[b.id] = b
            self.unsent_bytes += b.size

    def forget(self, b: SpooledBatch) -> None:
        """Take `b` out of the books (the caller deletes its file)."""
        if self.batches.pop(b.id, None) is None:
            return
        self.bytes -= b.size
        if b.kind == "flows":
            self.flows -= b.calls
        else:
            self.calls -= b.calls
        if self.unsent.pop(b.id, None) is not None:
            self.unsent_bytes -= b.size

    def mark_sent(self, b: SpooledBatch) -> None:
        b.sent = True
        if self.unsent.pop(b.id, None) is not None:
            self.unsent_bytes -= b.size

    def make_room(self, size: int) -> tuple[bool, list[SpooledBatch]]:
        """Room for a new batch of `size` bytes: (whether it fits, the batches given up for it).
        Only never-sent batches are given up, oldest first; when even all of them would not make
        room, none is, and the new batch is the one that does not fit."""
        if self.bytes - self.unsent_bytes + size > self.max_bytes:
            return False, []
        evicted: list[SpooledBatch] = []
        while self.bytes + size > self.max_bytes:
            oldest = next(iter(self.unsent.values()))
            self.forget(oldest)
            evicted.append(oldest)
        return True, evicted

    def admit(self, calls: int, size: int, kind: str = "calls") -> SpooledBatch:
        """The books' entry for a batch just written (`write`) under the next id."""
        b = SpooledBatch(self.next_id, calls, size, sent=False, kind=kind)
        self.next_id += 1
        self._add(b)
        return b

    # -- file I/O (threads)

    def write(
        self, batch_id: int, calls: int, payload: bytes, delete: Sequence[int] = (), kind: str = "calls"
    ) -> None:
        """Write one batch of ``kind`` (as .tmp, then renamed), after deleting the files of `delete`."""
        for old in delete:
            with contextlib.suppress(FileNotFoundError):
                self.path(old).unlink()
        path = self.path(batch_id)
        tmp = path.with_suffix(_TMP)
        try:
            with open(tmp, "wb") as f:
                f.write(_HEADER.pack(_MAGIC_OF[kind], calls, len(payload), zlib.crc32(payload)))
                f.write(payload)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise

    def read(self, batch_id: int) -> bytes:
        """The payload of a batch, checked against its header; `SpoolCorrupt` if it does not match."""
        data = self.path(batch_id).read_bytes()
        if len(data) < _HEADER.size:
            raise SpoolCorrupt(f"{self.path(batch_id)}: {len(data)} bytes, shorter than its header")
        magic, _calls, length, crc = _HEADER.unpack_from(data)
        payload = data[_HEADER.size :]
        if magic not in _KINDS or length != len(payload) or zlib.crc32(payload) != crc:
            raise SpoolCorrupt(f"{self.path(batch_id)}: length or checksum does not match its header")
        return payload

    def delete(self, batch_id: int) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path(batch_id).unlink()


def _read_header(p: Path) -> tuple[str, int, int] | None:
    """(kind, records, size on disk) of a batch file whose header is whole and whose length matches."""
    try:
        with open(p, "rb") as f:
            head = f.read(_HEADER.size)
            size = os.fstat(f.fileno()).st_size
    except OSError:
        return None
    if len(head) < _HEADER.size:
        return None
    magic, calls, length, _crc = _HEADER.unpack(head)
    kind = _KINDS.get(magic)
    if kind is None or size != _HEADER.size + length or (calls == 0) != (length == 0):
        return None
    return kind, calls, size


def _valid(call: object) -> bool:
    return isinstance(call, bytes | bytearray) and len(call) <= MAX_CALL_BYTES and wire.is_json(bytes(call))


# ---- export jobs (one thread each)


class _ExportJob:
    """One `export-request`: the `export` callable runs in this job's thread, which encodes its
    frames into chunks and hands each to the event loop to send, waiting for a credit first (the
    hub's `export-next`), so neither side ever holds more than `EXPORT_AHEAD` chunks of it."""

    def __init__(
        self,
        uplink: Uplink,
        ws: aiohttp.ClientWebSocketResponse,
        req: wire.HubMessage,
        fn: ExportFn,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        assert req.id is not None
        self.id: str | int = req.id
        self._req = req
        self._uplink = uplink
        self._ws = ws
        self._fn = fn
        self._loop = loop
        self._credits = threading.Semaphore(EXPORT_AHEAD)
        self.cancelled = threading.Event()
        self.thread = threading.Thread(target=self._main, name=f"podshark-export-{req.id}", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def credit(self) -> None:
        self._credits.release()

    def cancel(self) -> None:
        self.cancelled.set()
        self._credits.release()

    def _main(self) -> None:
        req = self._req
        frames_sent = 0
        seq = 0
        source: Iterable[tuple[int, int, int, bytes, str]] | None = None
        chunk_bytes = self._uplink.export_chunk_bytes
        try:
            source = self._fn(req.from_ns, req.to_ns, list(req.flow_ids))
            it: Iterator[tuple[int, int, int, bytes, str]] = iter(source)
            done = False
            while not done:
                frames: list[bytes] = []
                size = 0
                for ts, linktype, orig_len, data, flow_id in it:
                    frames.append(wire.frame(ts, linktype, orig_len, data, flow_id))
                    size += len(data)
                    if size >= chunk_bytes:
                        break
                else:
                    done = True
                if not self._wait_credit() or not self._post(wire.export_data(self.id, seq, frames, done)):
                    return
                seq += 1
                frames_sent += len(frames)
            log.info("export %s: sent %d frames in %d chunks", self.id, frames_sent, seq)
        except Exception as e:
            if not self.cancelled.is_set():
                log.warning("export %s failed after %d frames: %r", self.id, frames_sent, e)
                self._uplink.counts.export_errors += 1
                self._post(wire.export_data(self.id, seq, [], True, error=f"{type(e).__name__}: {e}"))
        finally:
            close = getattr(source, "close", None)
            if close is not None:
                with contextlib.suppress(Exception):
                    close()
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._uplink._export_ended, self)

    def _wait_credit(self) -> bool:
        waited = 0.0
        while not self._credits.acquire(timeout=0.5):
            if self.cancelled.is_set():
                return False
            waited += 0.5
            if waited >= EXPORT_IDLE:
                log.warning("export %s: the hub asked for no data for %.0f s; given up", self.id, waited)
                return False
        return not self.cancelled.is_set()

    def _post(self, data: bytes) -> bool:
        """Send on the event loop and wait until written (so the socket's back-pressure reaches
        this thread, never a queue)."""
        if self.cancelled.is_set():
            return False
        try:
            fut = asyncio.run_coroutine_threadsafe(self._uplink._send(self._ws, data), self._loop)
            fut.result(timeout=EXPORT_IDLE)
        except Exception:
            return False
        return True


# ---- the uplink


@dataclass
class _Counts:
    sent: int = 0  # calls sent, resends included
    acked: int = 0  # calls the hub stored (acked minus rejected)
    rejected: int = 0  # calls the hub refused (invalid records)
    dropped_spool: int = 0  # calls given up for a full spool (or an unwritable one)
    invalid: int = 0  # calls that were not one JSON value, or too large
    batches_sent: int = 0
    batches_acked: int = 0
    connects: int = 0
    reconnects: int = 0
    auth_failures: int = 0  # 401 (token) and 403 (client certificate) answers
    tls_failures: int = 0  # TLS handshakes that failed (untrusted hub, refused client certificate)
    hub_errors: int = 0  # error messages from the hub, and messages that were not understood
    exports: int = 0
    export_errors: int = 0
    flows_sent: int = 0  # flow aggregates sent, resends included
    flows_acked: int = 0
    flows_rejected: int = 0
    flows_dropped: int = 0  # given up: buffer or spool full, unwritable spool
    flows_invalid: int = 0  # not one JSON value, or too large
    flows_unsupported: int = 0  # dropped because the hub does not take flows


class Uplink:
    """The worker's connection to the hub (see the module docstring): `submit()` from any thread,
    `run()` and `close()` on one event loop."""

    def __init__(
        self,
        hub_url: str,
        token: TokenSource,
        worker: str,
        *,
        spool_dir: Path,
        spool_max_bytes: int = 256 << 20,
        batch_max: int = 1000,
        batch_interval: float = 0.25,
        window: int = 8,
        capabilities: Sequence[str] = ("calls", "export"),
        stats: Callable[[], dict[str, Any]] | None = None,
        export: ExportFn | None = None,
        ssl: Any = None,
        explain: Callable[[BaseException | str], str | None] | None = None,
        buffer_max_bytes: int = 64 << 20,
        auth_retry: float = 15.0,
        export_chunk_bytes: int = 1 << 20,
        flows_buffer_max_bytes: int = 16 << 20,
    ) -> None:
        """`token` is the bearer token, or a callable returning it (called before each connection
        attempt, so a rotated token file is picked up). `stats()` is the worker's own report (its
        `drops` are merged with the uplink's). `export(from_ns, to_ns, flow_ids)` yields (ts,
        linktype, orig_len, data, flow_id) in time order. `ssl` is passed to aiohttp (an
        `ssl.SSLContext` for a private CA or client certificates). `explain(failure)` names the fix
        for a connection failure in the words of the command that started the worker (its option
        names), or None; TLS failures and a 403 (the hub wants a client certificate) get their own
        state and line. `flows_buffer_max_bytes` bounds the flow aggregates waiting to be spooled
        (apart from the calls' buffer, so neither can crowd the other out). Raises ValueError for a
        hub URL that is not one, OSError when the spool directory cannot be made."""
        if batch_max < 1 or window < 1 or spool_max_bytes < 1 or buffer_max_bytes < 1:
            raise ValueError("batch_max, window, spool_max_bytes and buffer_max_bytes must be positive")
        self.url = wire.ingest_url(hub_url)
        self.worker = worker
        self.batch_max = batch_max
        self.batch_interval = batch_interval
        self.window = window
        self.capabilities = list(capabilities)
        self.auth_retry = auth_retry
        self.export_chunk_bytes = export_chunk_bytes
        self.buffer_max_bytes = buffer_max_bytes
        self.spool = BatchSpool(Path(spool_dir), spool_max_bytes)
        self.counts = _Counts(
            dropped_spool=self.spool.dropped_at_start, flows_dropped=self.spool.flows_dropped_at_start
        )
        self.flows_buffer_max_bytes = flows_buffer_max_bytes
        self._token = token
        self._stats_fn = stats
        self._export_fn = export
        self._ssl = ssl
        self._explain = explain
        # submit side (any thread), under _lock
        self._lock = threading.Lock()
        self._buf: list[bytes] = []
        self._buf_bytes = 0  # bytes submitted and not yet spooled (or dropped)
        self._buf_calls = 0  # calls submitted and not yet spooled (or dropped)
        self._submitted = 0
        self._overflow = 0  # calls refused by submit: buffer full, or after close
        self._accepting = True
        self._woken = False
        self._fbuf: list[bytes] = []  # flow aggregates submitted, not yet spooled
        self._fbuf_bytes = 0
        self._flows_submitted = 0
        self._flows_overflow = 0  # refused by submit_flows: buffer full, or after close
        self._flows_refused_at_submit = 0  # refused by submit_flows: the hub does not take flows
        # does the connected hub take `flows`? None: not known yet (they are sent); False: it said no,
        # so none are sent or kept until the next connection
        self._hub_flows: bool | None = None
        self._flows_refusal_logged = False
        # event-loop side
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake = asyncio.Event()
        self._more = asyncio.Event()  # a batch to send, or room in the window
        self._drained = asyncio.Event()  # nothing left unacknowledged
        self._stop = asyncio.Event()
        self._finished = asyncio.Event()
        self._spooling = asyncio.Lock()
        self._send_lock = asyncio.Lock()
        self._running = False
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._to_send: deque[int] = deque()
        self._in_flight: set[int] = set()
        self._jobs: dict[str | int, _ExportJob] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._state = "starting"
        self._errors_this_conn = 0
        self._spool_full = False
        self._spool_error = False
        self._stats_warned = False

    # ---- the capture thread's side

    def submit(self, call_json: bytes) -> None:
        """Queue one call (its JSON). O(1), thread-safe; never blocks on the hub or the disk and
        never raises: a call that does not fit the bounded buffer is dropped and counted."""
        try:
            n = len(call_json)
            with self._lock:
                self._submitted += 1
                if not self._accepting or self._buf_bytes + n > self.buffer_max_bytes:
                    self._overflow += 1
                    return
                self._buf.append(call_json)
                self._buf_bytes += n
                self._buf_calls += 1
                if self._woken or (len(self._buf) < self.batch_max and self._buf_bytes < BATCH_MAX_BYTES):
                    return
                self._woken = True
            loop = self._loop
            if loop is not None:
                loop.call_soon_threadsafe(self._wake.set)
        except Exception:  # a closed loop, a call without len(): never the capture thread's problem
            with contextlib.suppress(Exception):
                self._overflow += 1

    def submit_flows(self, records: Sequence[bytes]) -> None:
        """Queue flow aggregates (their JSON), like `submit`: O(len), thread-safe, never blocks or
        raises. Dropped and counted when their buffer is full, after close, or while the connected hub
        does not take flows."""
        try:
            n = len(records)
            size = sum(len(r) for r in records)
            with self._lock:
                self._flows_submitted += n
                if self._hub_flows is False:
                    self._flows_refused_at_submit += n
                    return
                if not self._accepting or self._fbuf_bytes + size > self.flows_buffer_max_bytes:
                    self._flows_overflow += n
                    return
                self._fbuf.extend(records)
                self._fbuf_bytes += size
                if self._woken or len(self._fbuf) < self.batch_max:
                    return
                self._woken = True
            loop = self._loop
            if loop is not None:
                loop.call_soon_threadsafe(self._wake.set)
        except Exception:  # a closed loop, records without len(): never the capture thread's problem
            with contextlib.suppress(Exception):
                self._flows_overflow += 1

    def counters(self) -> dict[str, int]:
        """A snapshot: what was submitted, where it is now, and what became of it. At rest,
        submitted == acked + rejected + dropped + invalid + buffered + spool_calls."""
        c = self.counts
        return {
            "submitted": self._submitted,
            "buffered": self._buf_calls,
            "buffered_bytes": self._buf_bytes,
            "sent": c.sent,
            "acked": c.acked,
            "rejected": c.rejected,
            "dropped": self._overflow + c.dropped_spool,
            "invalid": c.invalid,
            "spool_calls": self.spool.calls,
            "spool_bytes": self.spool.bytes,
            "spool_batches": len(self.spool.batches),
            "spool_corrupt": self.spool.corrupt,
            "in_flight": len(self._in_flight),
            "batches_sent": c.batches_sent,
            "batches_acked": c.batches_acked,
            "connected": int(self._ws is not None),
            "connects": c.connects,
            "reconnects": c.reconnects,
            "auth_failures": c.auth_failures,
            "tls_failures": c.tls_failures,
            "hub_errors": c.hub_errors,
            "exports": c.exports,
            "export_errors": c.export_errors,
            # flow aggregates: at rest flows_submitted == flows_acked + flows_rejected + flows_dropped
            #   + flows_invalid + flows_unsupported + flows_buffered + flows_spooled
            "flows_submitted": self._flows_submitted,
            "flows_buffered": len(self._fbuf),
            "flows_spooled": self.spool.flows,
            "flows_sent": c.flows_sent,
            "flows_acked": c.flows_acked,
            "flows_rejected": c.flows_rejected,
            "flows_dropped": self._flows_overflow + c.flows_dropped,
            "flows_invalid": c.flows_invalid,
            "flows_unsupported": c.flows_unsupported + self._flows_refused_at_submit,
            "hub_takes_flows": -1 if self._hub_flows is None else int(self._hub_flows),
        }

    # ---- lifecycle

    async def run(self) -> None:
        """Connect and keep connected (backoff on failure) until `close()`."""
        if self._running:
            raise RuntimeError("Uplink.run() is already running")
        self._running = True
        self._loop = asyncio.get_running_loop()
        self._finished.clear()
        batcher = asyncio.create_task(self._batcher(), name="uplink-batcher")
        try:
            await self._connect_loop()
        finally:
            batcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await batcher
            async with self._spooling:  # a spooling round the cancel did not stop ends first
                pass
            for job in list(self._jobs.values()):
                job.cancel()
            self._running = False
            self._finished.set()

    async def close(self, flush_timeout: float = 5.0) -> None:
        """Stop taking calls, spool what is buffered, wait up to `flush_timeout` seconds for the
        hub to acknowledge everything, then disconnect. What is still unacknowledged stays in the
        spool directory, and the next worker started on it sends it."""
        deadline = time.monotonic() + flush_timeout
        with self._lock:
            self._accepting = False
        await self._spool_buffer()
        while self._running and self.spool.batches:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            self._drained.clear()
            if not self.spool.batches:
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._drained.wait(), left)
        self._stop.set()
        ws = self._ws
        if ws is not None:
            with contextlib.suppress(Exception):
                await ws.close()
        if self._running:
            await self._finished.wait()
        if self.spool.batches:
            log.warning(
                "uplink closed with %d calls (%d batches) unacknowledged; they stay in %s for the next run",
                self.spool.calls,
                len(self.spool.batches),
                self.spool.dir,
            )

    # ---- batching into the spool

    async def _batcher(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.batch_interval)
            self._wake.clear()
            try:
                # shielded: a cancelled batcher must not lose the calls it has taken from the buffer
                await asyncio.shield(self._spool_buffer())
            except Exception:  # a bug must not stop batching: the next round tries again
                log.exception("uplink: spooling calls failed")

    async def _spool_buffer(self) -> None:
        """Move everything buffered into the spool, `batch_max` calls (or `BATCH_MAX_BYTES`) a batch."""
        async with self._spooling:
            with self._lock:
                taken, self._buf = self._buf, []
                self._woken = False
            total_bytes = sum(len(c) for c in taken)
            accounted = released_calls = released_bytes = 0  # spooled, dropped or invalid; released
            batch: list[bytes] = []
            batch_bytes = 0
            try:
                for k, call in enumerate(taken, 1):
                    if not _valid(call):
                        self.counts.invalid += 1
                        accounted += 1
                        n = self.counts.invalid
                        if n in (1, 10, 100, 1000) or not n % 10000:
                            log.warning("uplink: %d calls were not JSON (or too large) and were dropped", n)
                    else:
                        batch.append(bytes(call))
                        batch_bytes += len(call)
                    if len(batch) >= self.batch_max or batch_bytes >= BATCH_MAX_BYTES:
                        await self._add_batch(batch)
                        accounted += len(batch)
                        batch, batch_bytes = [], 0
                        done_bytes = sum(len(c) for c in taken[released_calls:k])
                        self._release(k - released_calls, done_bytes)
                        released_calls, released_bytes = k, released_bytes + done_bytes
                if batch:
                    await self._add_batch(batch)
                    accounted += len(batch)
            finally:
                # whatever an unexpected error left unspooled is counted, never silently lost
                self.counts.dropped_spool += len(taken) - accounted
                self._release(len(taken) - released_calls, total_bytes - released_bytes)
            await self._spool_flows()

    async def _spool_flows(self) -> None:
        """Move the buffered flow aggregates into the spool as `flows` batches (caller holds
        `_spooling`)."""
        with self._lock:
            taken, self._fbuf = self._fbuf, []
            self._fbuf_bytes = 0
        accounted = 0
        try:
            batch: list[bytes] = []
            batch_bytes = 0
            for rec in taken:
                if not _valid(rec):
                    self.counts.flows_invalid += 1
                    accounted += 1
                    continue
                batch.append(bytes(rec))
                batch_bytes += len(rec)
                if len(batch) >= self.batch_max or batch_bytes >= BATCH_MAX_BYTES:
                    await self._add_batch(batch, "flows")
                    accounted += len(batch)
                    batch, batch_bytes = [], 0
            if batch:
                await self._add_batch(batch, "flows")
                accounted += len(batch)
        finally:
            self.counts.flows_dropped += len(taken) - accounted

    def _release(self, calls: int, nbytes: int) -> None:
        with self._lock:
            self._buf_calls -= calls
            self._buf_bytes -= nbytes

    async def _add_batch(self, calls: list[bytes], kind: str = "calls") -> None:
        """Spool one batch of ``kind`` ("calls" or "flows"); what does not fit is counted by kind."""
        if kind == "flows" and self._hub_flows is False:
            self.counts.flows_unsupported += len(calls)  # the hub said no since they were buffered
            return
        payload = b",".join(calls)
        size = _HEADER.size + len(payload)
        fits, evicted = self.spool.make_room(size)
        lost_calls = sum(b.calls for b in evicted if b.kind == "calls")
        lost_flows = sum(b.calls for b in evicted if b.kind == "flows")
        if not fits:
            if kind == "flows":
                lost_flows += len(calls)
            else:
                lost_calls += len(calls)
        self.counts.dropped_spool += lost_calls
        self.counts.flows_dropped += lost_flows
        if lost_calls or lost_flows:
            if not self._spool_full:
                self._spool_full = True
                log.warning(
                    "uplink spool %s is full (%d bytes unacknowledged): dropping calls and flow aggregates, "
                    "the oldest unsent first (counted, reported to the hub as drops.spool and drops.flows) "
                    "until the hub catches up",
                    self.spool.dir,
                    self.spool.bytes,
                )
        elif self._spool_full and self.spool.bytes + size <= self.spool.max_bytes // 2:
            self._spool_full = False
            log.info("uplink spool %s has room again", self.spool.dir)
        if not fits:
            return
        batch_id = self.spool.next_id
        try:
            await asyncio.to_thread(
                self.spool.write, batch_id, len(calls), payload, [b.id for b in evicted], kind
            )
        except OSError as e:
            if kind == "flows":
                self.counts.flows_dropped += len(calls)
            else:
                self.counts.dropped_spool += len(calls)
            if not self._spool_error:
                self._spool_error = True
                log.error(
                    "cannot write the uplink spool %s: %s; calls are dropped (counted as drops.spool) until "
                    "it can be written: check the disk's free space and the directory's permissions",
                    self.spool.dir,
                    e.strerror or e,
                )
            return
        if self._spool_error:
            self._spool_error = False
            log.info("the uplink spool %s can be written again", self.spool.dir)
        b = self.spool.admit(len(calls), size, kind)
        assert b.id == batch_id
        if self._ws is not None:
            self._to_send.append(b.id)
            self._more.set()

    # ---- the connection

    def _current_token(self) -> str | None:
        t = self._token
        return t() if callable(t) else t

    def _set_state(self, state: str, message: str, level: int) -> None:
        """Log `message` only when the state changes: a hub down for an hour is one line, not 1000."""
        if state != self._state:
            log.log(level, "%s", message)
            self._state = state

    async def _connect_loop(self) -> None:
        attempts = 0
        timeout = aiohttp.ClientTimeout(total=None, connect=CONNECT_TIMEOUT, sock_connect=CONNECT_TIMEOUT)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            while not self._stop.is_set():
                # raced against close(): a connect to a black-holed hub must not hold up shutdown
                attempt = asyncio.create_task(self._attempt(session), name="uplink-connection")
                stopper = asyncio.create_task(self._stop.wait())
                try:
                    await asyncio.wait({attempt, stopper}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    stopper.cancel()
                    if not attempt.done():
                        attempt.cancel()
                        with contextlib.suppress(asyncio.CancelledError):
                            await attempt
                if self._stop.is_set() or attempt.cancelled():
                    break
                connected, delay = attempt.result()
                attempts = 0 if connected else attempts + 1
                if delay is None:
                    delay = min(BACKOFF_FIRST * 2 ** min(attempts, 10), BACKOFF_CAP)
                    delay *= random.uniform(0.5, 1.0)  # workers restarted together do not retry together
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), delay)

    async def _attempt(self, session: aiohttp.ClientSession) -> tuple[bool, float | None]:
        """One connection attempt and, if it succeeds, the session on it. Returns whether it
        connected, and the delay before the next attempt when not the usual backoff. Every failure
        is logged here (once per state) and never raised."""
        try:
            token = self._current_token()
            headers = {"Authorization": f"Bearer {token}"} if token else {}
            async with session.ws_connect(
                self.url,
                headers=headers,
                heartbeat=HEARTBEAT,
                max_msg_size=MAX_HUB_MESSAGE,
                ssl=self._ssl if self._ssl is not None else True,
            ) as ws:
                await self._session(ws)
            if not self._stop.is_set():
                text = f"the hub at {self.url} closed the connection; reconnecting"
                self._set_state("down", text, logging.WARNING)
            return True, None
        except aiohttp.WSServerHandshakeError as e:
            if e.status == 401:
                self.counts.auth_failures += 1
                self._set_state(
                    "unauthorized",
                    f"the hub at {self.url} refused the token (401): give the worker the hub's "
                    f"token (PODSHARK_TOKEN or --token-file); retrying every {self.auth_retry:g} s, "
                    "calls are spooled meanwhile",
                    logging.ERROR,
                )
            elif e.status == 403:  # a podshark hub's only 403 on ingest: no (accepted) client certificate
                self.counts.auth_failures += 1
                why = self._hint(e) or "it requires a client certificate from workers (its --client-ca)"
                self._set_state(
                    "forbidden",
                    f"the hub at {self.url} refused the ingest WebSocket (403): {why}; retrying every "
                    f"{self.auth_retry:g} s, calls are spooled meanwhile",
                    logging.ERROR,
                )
            else:
                self._set_state(
                    f"refused-{e.status}",
                    f"the hub at {self.url} answered {e.status} to the ingest WebSocket: is it a "
                    f"podshark hub? retrying every {self.auth_retry:g} s",
                    logging.ERROR,
                )
            return False, self.auth_retry
        except aiohttp.ClientSSLError as e:  # certificate not trusted, handshake refused
            self.counts.tls_failures += 1
            tls_hint = self._hint(e)
            self._set_state(
                "tls",
                f"TLS with the hub at {self.url} failed: {e}"
                + (f" — {tls_hint}" if tls_hint else "")
                + f"; retrying every {self.auth_retry:g} s, calls are spooled meanwhile",
                logging.ERROR,
            )
            return False, self.auth_retry
        except (aiohttp.ClientError, OSError, TimeoutError) as e:
            hint = self._hint(e)
            self._set_state(
                "unreachable" if hint is None else f"unreachable: {hint}",
                f"cannot reach the hub at {self.url}: {e or type(e).__name__}"
                + (f" — {hint}" if hint else "")
                + f"; retrying with backoff, calls are spooled in {self.spool.dir} meanwhile",
                logging.WARNING,
            )
            return False, None
        except Exception:
            log.exception("uplink: connection to %s failed unexpectedly; reconnecting", self.url)
            return False, None

    def _hint(self, failure: BaseException) -> str | None:
        """The fix for a connection failure, from the `explain` hook (never raises)."""
        if self._explain is None:
            return None
        try:
            return self._explain(failure)
        except Exception:
            log.debug("uplink: explain hook failed", exc_info=True)
            return None

    async def _session(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        """One connection: hello, stats, then send, receive and report until it ends."""
        c = self.counts
        c.connects += 1
        if c.connects > 1:
            c.reconnects += 1
        self._in_flight.clear()
        self._to_send = deque(self.spool.batches)
        self._errors_this_conn = 0
        self._hub_flows = None  # a new hub (or the same one upgraded): flows are offered again
        self._flows_refusal_logged = False
        self._ws = ws
        self._state = "connected"
        log.info(
            "connected to the hub at %s as %s; %d unacknowledged batches (%d calls) to send",
            self.url,
            self.worker,
            len(self.spool.batches),
            self.spool.calls,
        )
        tasks: list[asyncio.Task[Any]] = []
        try:
            await self._send(ws, wire.hello(self.worker, self.capabilities))
            await self._send_stats(ws)
            tasks = [
                asyncio.create_task(self._sender(ws), name="uplink-sender"),
                asyncio.create_task(self._receiver(ws), name="uplink-receiver"),
                asyncio.create_task(self._stats_loop(ws), name="uplink-stats"),
            ]
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for t in done:
                exc = t.exception()
                if exc is not None and not isinstance(exc, ConnectionError | aiohttp.ClientError):
                    log.error("uplink: %s failed: %r; reconnecting", t.get_name(), exc, exc_info=exc)
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self._ws = None
            self._in_flight.clear()
            for job in list(self._jobs.values()):
                job.cancel()
            if not ws.closed:
                with contextlib.suppress(Exception):
                    await ws.close()

    async def _send(self, ws: aiohttp.ClientWebSocketResponse, data: bytes) -> None:
        async with self._send_lock:
            await ws.send_bytes(data)

    async def _sender(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        spool = self.spool
        while True:
            self._more.clear()
            while len(self._in_flight) < self.window and self._to_send:
                b = spool.batches.get(self._to_send.popleft())
                if b is None:  # acked or given up since it was queued
                    continue
                if b.kind == "flows" and self._hub_flows is False:
                    self._drop_flows_batch(b)  # spooled before the hub said it does not take them
                    continue
                spool.mark_sent(b)
                try:
                    payload = await asyncio.to_thread(spool.read, b.id)
                except (SpoolCorrupt, OSError) as e:
                    spool.forget(b)
                    spool.corrupt += 1
                    spool.delete(b.id)
                    log.error("uplink spool: batch %d (%d calls) unreadable (%s); deleted", b.id, b.calls, e)
                    continue
                if b.id not in spool.batches:
                    continue
                self._in_flight.add(b.id)
                await self._send(ws, wire.batch_message(b.kind, b.id, payload))
                if b.kind == "flows":
                    self.counts.flows_sent += b.calls
                else:
                    self.counts.sent += b.calls
                self.counts.batches_sent += 1
            await self._more.wait()

    async def _receiver(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        async for msg in ws:
            if msg.type in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
                if not self._on_hub(ws, msg.data):
                    return
            elif msg.type == aiohttp.WSMsgType.ERROR:
                return

    async def _stats_loop(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        while True:
            await asyncio.sleep(STATS_INTERVAL)
            await self._send_stats(ws)

    def stats_body(self) -> dict[str, Any]:
        """The `stats` message: the worker's own report with the uplink's drops merged into its
        `drops`, and the uplink's counters under `uplink`."""
        own: dict[str, Any] = {}
        if self._stats_fn is not None:
            try:
                got = self._stats_fn()
                if isinstance(got, dict):
                    own = dict(got)
            except Exception as e:
                if not self._stats_warned:
                    self._stats_warned = True
                    log.warning("uplink: the worker's stats callback failed: %r; sending the uplink's", e)
        drops = own.get("drops")
        drops = dict(drops) if isinstance(drops, dict) else {}
        counters = self.counters()
        drops["spool"] = counters["dropped"]
        drops["invalid"] = counters["invalid"]
        if "flows" in self.capabilities:  # flow aggregates lost for any reason (the breakdown is in uplink)
            lost = counters["flows_dropped"] + counters["flows_invalid"] + counters["flows_unsupported"]
            drops["flows"] = lost
        drops["spool_corrupt_batches"] = counters["spool_corrupt"]
        own["drops"] = drops
        own["uplink"] = counters
        return own

    async def _send_stats(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        body = self.stats_body()
        try:
            data = wire.stats_message(body)
        except (TypeError, ValueError, OverflowError) as e:
            if not self._stats_warned:
                self._stats_warned = True
                log.warning("uplink: the worker's stats are not JSON (%s); sending the uplink's only", e)
            data = wire.stats_message({"drops": {"spool": body["drops"]["spool"]}, "uplink": body["uplink"]})
        await self._send(ws, data)

    # ---- what the hub says

    def _hub_error(self, text: str) -> None:
        self.counts.hub_errors += 1
        self._errors_this_conn += 1
        n = self._errors_this_conn
        if n <= LOG_FIRST_ERRORS or not n % 1000:
            more = f" ({n} errors on this connection)" if n > LOG_FIRST_ERRORS else ""
            log.warning("hub: %s%s", text, more)

    def _on_hub(self, ws: aiohttp.ClientWebSocketResponse, data: str | bytes) -> bool:
        """Handle one message from the hub; False to drop the connection (and resend after a backoff)."""
        try:
            m = wire.decode_hub(data)
        except wire.WireError as e:
            self._hub_error(f"a message from the hub was not understood: {e}")
            return True
        if m.type == "ack":
            self._on_ack(m)
        elif m.type == "hello":
            if m.capabilities is not None:
                if "flows" in m.capabilities:
                    self._hub_flows = True
                else:
                    self._refuse_flows("its hello does not list the capability flows")
        elif m.type == "error":
            return self._on_error(m)
        elif m.type == "export-request":
            self._on_export_request(ws, m)
        elif m.type == "export-next":
            job = self._jobs.get(m.id) if m.id is not None else None
            if job is not None:
                job.credit()
        elif m.type == "export-cancel":
            job = self._jobs.get(m.id) if m.id is not None else None
            if job is not None:
                job.cancel()
        else:
            log.debug("hub: ignored a %r message", m.type)
        return True

    def _on_ack(self, m: wire.HubMessage) -> None:
        if m.seq is None or m.seq not in self._in_flight:
            return  # not ours on this connection (a duplicate, or a hub confused): nothing to free
        self._in_flight.discard(m.seq)
        b = self.spool.batches.get(m.seq)
        if b is not None:
            rejected = min(m.rejected, b.calls)
            if b.kind == "flows":
                self._hub_flows = True
                self.counts.flows_acked += b.calls - rejected
                self.counts.flows_rejected += rejected
            else:
                self.counts.acked += b.calls - rejected
                self.counts.rejected += rejected
            self.counts.batches_acked += 1
            self.spool.forget(b)
            self.spool.delete(b.id)
        if not self.spool.batches:
            self._drained.set()
        self._more.set()

    def _on_error(self, m: wire.HubMessage) -> bool:
        text = m.error or "(no text)"
        if m.index is None and any(r in text for r in wire.REFUSALS):
            # a hub that does not take flow aggregates, about one of our flows batches (or about one
            # dropped already when it first said so)
            b = self.spool.batches.get(m.seq) if m.seq is not None else None
            if (b is None and "flows" in text) or (b is not None and b.kind == "flows"):
                self._refuse_flows(text)
                return True
        if m.index is not None or m.seq is None or m.seq not in self._in_flight:
            # one bad call (its batch's ack follows, with `rejected`), or an error about no batch
            self._hub_error(text if m.seq is None else f"batch {m.seq}: {text}")
            return True
        if text.startswith("not stored"):
            # the hub's commit failed (its disk?): keep the batch, reconnect after a backoff, resend
            self._hub_error(f"batch {m.seq}: {text}; resending after a reconnect")
            return False
        # the hub cannot take this batch at all: resending would fail the same way
        b = self.spool.batches.get(m.seq)
        self._in_flight.discard(m.seq)
        if b is not None:
            if b.kind == "flows":
                self.counts.flows_rejected += b.calls
            else:
                self.counts.rejected += b.calls
            self.spool.forget(b)
            self.spool.delete(b.id)
            self._hub_error(
                f"batch {m.seq} ({b.calls} {b.kind}) refused by the hub: {text}; counted rejected"
            )
        if not self.spool.batches:
            self._drained.set()
        self._more.set()
        return True

    def _refuse_flows(self, why: str) -> None:
        """The connected hub does not take flow aggregates: drop (and count) every flows batch and
        the buffered ones, and take none until the next connection. Calls are not affected."""
        self._hub_flows = False
        if not self._flows_refusal_logged:
            self._flows_refusal_logged = True
            log.warning(
                "the hub at %s does not take flow aggregates (%s): this worker's traffic metrics are not "
                "stored there (counted as drops.flows); calls go on. Upgrade the hub to get them.",
                self.url,
                why,
            )
        for b in [b for b in self.spool.batches.values() if b.kind == "flows"]:
            self._drop_flows_batch(b)
        with self._lock:
            dropped, self._fbuf = self._fbuf, []
            self._fbuf_bytes = 0
        self.counts.flows_unsupported += len(dropped)
        if not self.spool.batches:
            self._drained.set()
        self._more.set()

    def _drop_flows_batch(self, b: SpooledBatch) -> None:
        self._in_flight.discard(b.id)
        self.counts.flows_unsupported += b.calls
        self.spool.forget(b)
        self.spool.delete(b.id)

    # ---- export

    def _on_export_request(self, ws: aiohttp.ClientWebSocketResponse, m: wire.HubMessage) -> None:
        if m.id is None:
            self._hub_error("an export-request without an id; ignored")
            return
        self.counts.exports += 1
        problem = None
        if self._export_fn is None:
            problem = "this worker keeps no packet spool (started without export)"
        elif m.id in self._jobs:
            problem = f"export {m.id!r} is already running"
        elif len(self._jobs) >= MAX_EXPORTS:
            problem = f"{MAX_EXPORTS} exports are already running on this worker; try again"
        if problem is not None or self._export_fn is None or self._loop is None:
            self.counts.export_errors += 1
            self._spawn(self._send(ws, wire.export_data(m.id, 0, [], True, error=problem or "not running")))
            return
        job = _ExportJob(self, ws, m, self._export_fn, self._loop)
        self._jobs[job.id] = job
        log.info("export %s: %d flows, window %s..%s", job.id, len(m.flow_ids), m.from_ns, m.to_ns)
        job.start()

    def _export_ended(self, job: _ExportJob) -> None:
        if self._jobs.get(job.id) is job:
            del self._jobs[job.id]

    def _spawn(self, coro: Any) -> None:
        task: asyncio.Task[Any] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.debug("uplink: background send failed: %r", task.exception())
