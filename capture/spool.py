"""The packet spool: the raw frames of recent connections, kept on the node for pcap export.

The worker hands every frame that belongs to a TCP connection or UDP flow to `PacketSpool.add` (the
engine's ``on_frame`` hook). When the hub exports a window, the uplink answers with `read_spool`,
which gathers the frames of that window (and of the requested flows) from every capture process's
directory, in time order. The store is bounded: the oldest whole segments are deleted first.

Layout. One *root*; each capture process (PACKET_FANOUT member) writes its own directory, an
immediate subdirectory of the root (segments directly in the root are read too). A directory holds
numbered *segment* files: ``<seq>.open`` while being written, renamed ``<seq>_<min ts>_<max ts>.pks``
when sealed, so a reader skips a sealed segment outside the window from its name alone. A segment is
a sequence of *blocks*, one per flush (``flush_bytes`` of frames, or the lead's ~1/s `flush`), then,
once sealed, an *index* and a fixed-size *trailer*. All integers little-endian::

    block   = header table payload
    header  = "PSKB" u16 version, u16 0, u32 table_len, u32 payload_len, u32 frames,
              i64 min_ts, i64 max_ts, u32 crc32(header[:36] + table + payload)          (40 bytes)
    table   = u32 n, n * (u16 len, utf-8 flow id)        the block's flow ids, interned as 0..n-1
    payload = frames * (i64 ts, u16 linktype, u32 orig_len, u32 caplen, u32 flow, caplen bytes)
              sorted by ts (the writer sorts a block whose frames arrived out of order)
    index   = "PSKI" u32 body_len, body:
              i64 min_ts, i64 max_ts, u32 frames, u32 n_flows, u32 n_blocks,
              n_flows * (u16 len, flow id),                 every flow id of the segment
              n_blocks * (u64 offset, u32 length, i64 min_ts, i64 max_ts, u32 frames, u32 n_refs,
                          n_refs * u32 index into the segment's flow ids)
    trailer = "PSKX" u16 version, u16 0, u64 index offset, u32 index length, u32 crc32(index)   (24)

So an export of a few flows reads a sealed segment's index, skips the segment when it holds none of
them, and reads only the blocks that do; the open segment (no index yet) is walked block header by
block header, which is cheap (one small read per block). Everything a reader needs is on disk: a
reader in another process sees every flushed block.

Robustness. The writer appends whole blocks with one ``writev``, and the reader trusts a block only
when its length fits in the file and its CRC matches, so reading while the writer appends is safe, a
crash mid-write (a torn last block, or a block of zeros from delayed allocation) is ignored, and a
restart recovers the directory: a segment left open is cut after its last good block and sealed; a
segment with nothing readable is deleted (counted). Garbage or hostile files are skipped with a
counted warning, never an exception. Files whose names do not follow the pattern are not ours and
are left alone (and not counted in the bound).

Bounds. Bytes on disk per writer directory stay <= ``max_bytes`` (the lead divides the node's budget
among capture processes) and the number of segments <= ``max_segments`` (at low traffic a segment
per ``segment_seconds`` would otherwise pile up small files). A frame longer than
``min(MAX_FRAME, flush_bytes)`` is stored cut, with its original length kept (as a snap length
would); ``orig_len`` may always exceed the stored length.

Time order. Within one writer, frames come in capture order, which is nearly time order; each block
is sorted when written, and the reader merges blocks lazily (a block is opened only once the merge
reaches its first timestamp), so the output is in time order whatever the overlap, and frames with
equal timestamps keep the order they were added. Memory: the blocks whose time ranges overlap the
current point of the merge (normally one or two; more only if the clock stepped back and forth).

Threads: a `PacketSpool` belongs to the one thread that calls `add` (the capture loop); call
`flush` and `close` from that thread too. Readers may run anywhere.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import heapq
import logging
import os
import re
import struct
import zlib
from collections import deque
from collections.abc import Collection, Iterator
from pathlib import Path

__all__ = ["MAX_FRAME", "PacketSpool", "SpoolReadStats", "read_spool"]

log = logging.getLogger(__name__)

VERSION = 1
MAX_FRAME = 256 << 10  # longer frames (BIG TCP GSO) are stored cut, orig_len kept
MAX_FLOW_ID = 1024  # bytes of a flow id; longer ones are refused (ours are ~40)
_MAX_BLOCK_PART = 64 << 20  # a reader refuses larger tables/payloads/indexes as hostile
_MAX_WARNINGS = 20

_BLOCK_MAGIC = b"PSKB"
_INDEX_MAGIC = b"PSKI"
_TRAILER_MAGIC = b"PSKX"
_HEADER = struct.Struct("<4sHHIIIqqI")  # 40 bytes
_RECORD = struct.Struct("<qHIII")  # 22 bytes
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_INDEX_HEAD = struct.Struct("<4sI")
_INDEX_BODY = struct.Struct("<qqIII")
_INDEX_BLOCK = struct.Struct("<QIqqII")
_TRAILER = struct.Struct("<4sHHQII")  # 24 bytes
_pack_record = _RECORD.pack
_unpack_record = _RECORD.unpack_from

_SEALED_RE = re.compile(r"^(\d{10})_(-?\d{1,20})_(-?\d{1,20})\.pks$")
_OPEN_RE = re.compile(r"^(\d{10})\.open$")
_LOCK_NAME = ".lock"


def _sealed_name(seq: int, min_ts: int, max_ts: int) -> str:
    return f"{seq:010d}_{min_ts}_{max_ts}.pks"


def _open_name(seq: int) -> str:
    return f"{seq:010d}.open"


# -- on-disk structures, shared by the writer (recovery) and the readers -----------------------------


@dataclasses.dataclass(slots=True)
class _Block:
    """Where one block is, what times and flows it holds."""

    offset: int
    length: int
    min_ts: int
    max_ts: int
    frames: int
    flows: list[str]  # the flow ids it holds (from its table, or its refs in the segment index)


class _Corrupt(Exception):
    """A segment's structure is broken: the reader skips the rest of it (with a warning)."""


def _parse_table(table: bytes | memoryview) -> list[str]:
    """The flow ids of a block table (or an index's flow list), bounds-checked."""
    if len(table) < 4:
        raise _Corrupt("flow table shorter than its count")
    (n,) = _U32.unpack_from(table, 0)
    if n > len(table) // 2:
        raise _Corrupt(f"flow table claims {n} ids in {len(table)} bytes")
    flows, off = _parse_flow_list(table, 4, n)
    if off != len(table):
        raise _Corrupt("flow table has trailing bytes")
    return flows


def _parse_flow_list(buf: bytes | memoryview, off: int, n: int) -> tuple[list[str], int]:
    flows = []
    end = len(buf)
    for _ in range(n):
        if off + 2 > end:
            raise _Corrupt("flow id cut")
        (ln,) = _U16.unpack_from(buf, off)
        off += 2
        if off + ln > end:
            raise _Corrupt("flow id cut")
        try:
            flows.append(bytes(buf[off : off + ln]).decode("utf-8"))
        except UnicodeDecodeError:
            raise _Corrupt("flow id is not UTF-8") from None
        off += ln
    return flows, off


def _read_header(fd: int, offset: int, size: int) -> tuple[tuple[int, ...], bytes] | None:
    """The block header at ``offset``: its fields and raw bytes. None at a clean end (EOF, or the
    index of a sealed segment) or a torn tail; `_Corrupt` when the bytes are not a block header."""
    if offset + _HEADER.size > size:
        return None  # EOF, or a header still being written
    raw = os.pread(fd, _HEADER.size, offset)
    if len(raw) < _HEADER.size:
        return None
    if raw[:4] == _INDEX_MAGIC:
        return None
    magic, version, _zero, table_len, payload_len, frames, min_ts, max_ts, _crc = _HEADER.unpack(raw)
    if magic != _BLOCK_MAGIC:
        raise _Corrupt(f"no block at offset {offset} (magic {magic!r})")
    if version != VERSION:
        raise _Corrupt(f"block version {version} at offset {offset} (this podshark reads {VERSION})")
    if table_len > _MAX_BLOCK_PART or payload_len > _MAX_BLOCK_PART or min_ts > max_ts:
        raise _Corrupt(f"implausible block header at offset {offset}")
    if frames > payload_len // _RECORD.size:
        raise _Corrupt(f"block at offset {offset} claims {frames} frames in {payload_len} bytes")
    return (table_len, payload_len, frames, min_ts, max_ts), raw


def _walk(fd: int, size: int, verify: bool) -> tuple[list[_Block], int, bool]:
    """Blocks of a segment found by following block headers from the start.

    Returns (blocks, end of the last good block, torn) where torn means the file ends inside a
    block (a write in progress or a crash). ``verify`` reads and checks every frame of every block
    (recovery does; readers check the blocks they read anyway). Raises `_Corrupt` only if the
    first block is bad; later corruption ends the walk with what was good before it (the caller
    warns, seeing an end before the end of the file).
    """
    blocks: list[_Block] = []
    off = 0
    while True:
        try:
            got = _read_header(fd, off, size)
        except _Corrupt:
            if not blocks:
                raise
            return blocks, off, False
        if got is None:
            torn = off < size and os.pread(fd, 4, off)[:4] != _INDEX_MAGIC
            return blocks, off, torn
        (table_len, payload_len, frames, min_ts, max_ts), _raw = got
        length = _HEADER.size + table_len + payload_len
        if off + length > size:
            return blocks, off, True
        block = _Block(off, length, min_ts, max_ts, frames, [])
        try:
            if verify:  # every frame of the block, CRC and bounds (a recovery keeps only good blocks)
                block.flows = sorted({r[4] for r in _read_block_records(fd, block)})
            else:
                block.flows = _parse_table(os.pread(fd, table_len, off + _HEADER.size))
        except _Corrupt:
            if not blocks:
                raise
            return blocks, off, False
        blocks.append(block)
        off += length


@dataclasses.dataclass(slots=True)
class _Index:
    min_ts: int
    max_ts: int
    frames: int
    flows: set[str]
    blocks: list[_Block]
    data_end: int  # where the index starts: the end of the blocks


def _read_index(fd: int, size: int) -> _Index | None:
    """The index of a sealed segment, or None when it has none (open, torn) or it does not check out."""
    if size < _TRAILER.size + _INDEX_HEAD.size:
        return None
    trailer = os.pread(fd, _TRAILER.size, size - _TRAILER.size)
    magic, version, _z, ix_off, ix_len, crc = _TRAILER.unpack(trailer)
    if magic != _TRAILER_MAGIC or version != VERSION or ix_off + ix_len != size - _TRAILER.size:
        return None
    if ix_len < _INDEX_HEAD.size + _INDEX_BODY.size or ix_len > _MAX_BLOCK_PART:
        return None
    raw = os.pread(fd, ix_len, ix_off)
    if len(raw) != ix_len or zlib.crc32(raw) != crc:
        return None
    head_magic, body_len = _INDEX_HEAD.unpack_from(raw, 0)
    if head_magic != _INDEX_MAGIC or body_len != ix_len - _INDEX_HEAD.size:
        return None
    try:
        return _parse_index(memoryview(raw)[_INDEX_HEAD.size :], ix_off)
    except (_Corrupt, struct.error):
        return None


def _parse_index(body: memoryview, data_end: int) -> _Index:
    min_ts, max_ts, frames, n_flows, n_blocks = _INDEX_BODY.unpack_from(body, 0)
    if n_flows > len(body) // 2 or n_blocks > len(body) // _INDEX_BLOCK.size:
        raise _Corrupt("index counts exceed its size")
    seg_flows, off = _parse_flow_list(body, _INDEX_BODY.size, n_flows)
    blocks = []
    for _ in range(n_blocks):
        b_off, b_len, b_min, b_max, b_frames, n_refs = _INDEX_BLOCK.unpack_from(body, off)
        off += _INDEX_BLOCK.size
        if off + 4 * n_refs > len(body) or b_off + b_len > data_end or b_min > b_max:
            raise _Corrupt("index block entry out of range")
        refs = struct.unpack_from(f"<{n_refs}I", body, off)
        off += 4 * n_refs
        if refs and max(refs) >= n_flows:
            raise _Corrupt("index refers to an unknown flow")
        blocks.append(_Block(b_off, b_len, b_min, b_max, b_frames, [seg_flows[r] for r in refs]))
    if off != len(body):
        raise _Corrupt("index has trailing bytes")
    return _Index(min_ts, max_ts, frames, set(seg_flows), blocks, data_end)


def _read_block_records(fd: int, block: _Block) -> list[tuple[int, int, int, bytes, str]]:
    """Every frame of one block, CRC-checked and bounds-checked, sorted by time (stable)."""
    raw = os.pread(fd, block.length, block.offset)
    if len(raw) != block.length:
        raise _Corrupt(f"block at offset {block.offset} is cut")
    got = _HEADER.unpack_from(raw, 0)
    magic, version, _z, table_len, payload_len, frames, _min, _max, crc = got
    if magic != _BLOCK_MAGIC or version != VERSION or _HEADER.size + table_len + payload_len != block.length:
        raise _Corrupt(f"block at offset {block.offset} does not match its index")
    if _block_crc(raw) != crc:
        raise _Corrupt(f"block at offset {block.offset} fails its CRC")
    view = memoryview(raw)
    flows = _parse_table(view[_HEADER.size : _HEADER.size + table_len])
    out = []
    off = _HEADER.size + table_len
    end = block.length
    sorted_ = True
    last = None
    for _ in range(frames):
        if off + _RECORD.size > end:
            raise _Corrupt(f"block at offset {block.offset}: frame header cut")
        ts, linktype, orig_len, caplen, flow = _unpack_record(raw, off)
        off += _RECORD.size
        if off + caplen > end or flow >= len(flows):
            raise _Corrupt(f"block at offset {block.offset}: frame out of range")
        out.append((ts, linktype, orig_len, raw[off : off + caplen], flows[flow]))
        off += caplen
        if last is not None and ts < last:
            sorted_ = False
        last = ts
    if off != end:
        raise _Corrupt(f"block at offset {block.offset}: {end - off} bytes after its frames")
    if not sorted_:  # the writer sorts; a block that is not sorted was not written by it
        out.sort(key=lambda r: r[0])
    return out


def _block_crc(raw: bytes) -> int:
    return zlib.crc32(memoryview(raw)[_HEADER.size :], zlib.crc32(memoryview(raw)[:36]))


# -- the writer --------------------------------------------------------------------------------------


@dataclasses.dataclass(slots=True)
class _Segment:
    """A segment on disk: sealed (in `PacketSpool._sealed`) or the one being appended to."""

    seq: int
    path: Path
    size: int = 0
    frames: int = 0
    min_ts: int = 0
    max_ts: int = 0
    fd: int = -1  # open for appending (the active segment only)
    flows: dict[str, int] = dataclasses.field(default_factory=dict)  # segment-level interning
    flow_bytes: int = 0  # sum of (2 + len) of the flow ids, for the index size
    blocks: list[tuple[int, int, int, int, int, list[int]]] = dataclasses.field(default_factory=list)
    block_bytes: int = 0  # index bytes of the block entries

    def index_size(self) -> int:
        """Bytes that sealing adds (index record and trailer), exactly."""
        return _INDEX_HEAD.size + _INDEX_BODY.size + self.flow_bytes + self.block_bytes + _TRAILER.size


class PacketSpool:
    """The writer, one per capture process: frames in, bounded time-indexed segments on disk.

    `add` costs about a microsecond: it appends the frame to an in-memory block; a full block
    (``flush_bytes``) is written with one system call. `flush` makes everything added so far readable;
    the lead calls it about once a second. See the module docstring for the layout and the bounds.
    """

    def __init__(
        self,
        directory: Path,
        *,
        max_bytes: int = 512 << 20,
        segment_bytes: int = 16 << 20,
        segment_seconds: float = 30.0,
        flush_bytes: int = 1 << 20,
        max_segments: int = 10_000,
    ) -> None:
        if flush_bytes < 1024:
            raise ValueError(f"flush_bytes={flush_bytes}: use at least 1024")
        if segment_bytes < 4 * flush_bytes + 4096:
            raise ValueError(
                f"segment_bytes={segment_bytes} is too small for flush_bytes={flush_bytes}: "
                f"use at least 4 * flush_bytes + 4096 = {4 * flush_bytes + 4096}"
            )
        if max_bytes < 2 * segment_bytes:
            raise ValueError(
                f"max_bytes={max_bytes} must hold two segments: use at least 2 * segment_bytes = "
                f"{2 * segment_bytes} (or smaller segments)"
            )
        if segment_seconds <= 0 or max_segments < 2:
            raise ValueError("segment_seconds must be > 0 and max_segments >= 2")
        self.directory = Path(directory)
        self.max_bytes = max_bytes
        self.segment_bytes = segment_bytes
        self.segment_ns = int(segment_seconds * 1e9)
        self.flush_bytes = flush_bytes
        self.max_segments = max_segments
        self._max_frame = min(MAX_FRAME, flush_bytes)
        self._closed = False

        # the block being filled
        self._buf = bytearray()
        self._flows: dict[str, int] = {}
        self._table_bytes = 0
        self._frames = 0
        self._first = 0
        self._last = 0
        self._unsorted = False

        self._sealed: deque[_Segment] = deque()
        self._active: _Segment | None = None
        self._bytes = 0  # on disk: sealed segments + the active one
        self._next_seq = 0
        self._blocked_frames = 0  # frames handed to _write_block (so `add` need not count)
        self._counts = dict.fromkeys(
            (
                "cut_frames",
                "rejected_frames",
                "evicted_segments",
                "evicted_frames",
                "write_errors",
                "dropped_frames",
                "recovered_segments",
                "discarded_segments",
            ),
            0,
        )
        self.directory.mkdir(parents=True, exist_ok=True)
        self._lock_fd = self._lock()
        try:
            self._recover()
            self._evict(0)
        except BaseException:
            os.close(self._lock_fd)
            raise

    # -- the hot path --------------------------------------------------------------------------

    def add(self, ts: int, linktype: int, frame: bytes, orig_len: int, flow_id: str) -> None:
        """Keep one frame of ``flow_id`` (the engine's on_frame hook). Never raises on bad values:
        they are counted in ``rejected_frames``."""
        ix = self._flows.get(flow_id)
        if ix is None:
            ix = self._intern(flow_id)
            if ix < 0:
                return
        n = len(frame)
        if n > self._max_frame:
            frame = frame[: self._max_frame]
            n = self._max_frame
            self._counts["cut_frames"] += 1
        try:
            rec = _pack_record(ts, linktype, orig_len, n, ix)
        except (struct.error, TypeError):
            self._counts["rejected_frames"] += 1
            return
        buf = self._buf
        if self._frames:
            if ts < self._last:
                self._unsorted = True
            else:
                self._last = ts
        else:
            self._first = self._last = ts
        buf += rec
        buf += frame
        self._frames += 1
        if len(buf) >= self.flush_bytes:
            self._write_block()

    def _intern(self, flow_id: str) -> int:
        """A new flow id in the current block: its table index, or -1 when it cannot be stored."""
        try:
            size = len(flow_id.encode("utf-8"))
        except (AttributeError, UnicodeError):
            size = MAX_FLOW_ID + 1
        if size > MAX_FLOW_ID:
            self._counts["rejected_frames"] += 1
            return -1
        if self._table_bytes + 2 + size > self.flush_bytes // 2:
            self._write_block()  # keeps a block's table (and its index entry) bounded
        ix = self._flows[flow_id] = len(self._flows)
        self._table_bytes += 2 + size
        return ix

    # -- flushing ------------------------------------------------------------------------------

    def flush(self) -> None:
        """Write what was added so far: afterwards readers (in any process) see it."""
        self._write_block()

    def close(self) -> None:
        """Flush, seal the open segment (so its index is on disk) and release the directory."""
        if self._closed:
            return
        try:
            self._write_block()
            if self._active is not None:
                self._seal()
        finally:
            self._closed = True
            # `add` after close must not buffer frames that will never be written: with a zero
            # threshold its next frame reaches `_write_block`, which raises (no cost on the hot path)
            self.flush_bytes = 0
            os.close(self._lock_fd)

    def __enter__(self) -> PacketSpool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _write_block(self) -> None:
        if self._closed:
            raise RuntimeError(f"packet spool {self.directory} is closed")
        if not self._frames:
            return
        payload = self._buf
        flows = list(self._flows)  # insertion order == table index
        frames = self._frames
        if self._unsorted:
            payload, min_ts, max_ts = _sorted_payload(payload, frames)
        else:
            min_ts, max_ts = self._first, self._last
        self._buf = bytearray()
        self._flows = {}
        self._table_bytes = 0
        self._frames = 0
        self._unsorted = False
        self._blocked_frames += frames

        table = bytearray(_U32.pack(len(flows)))
        for f in flows:
            b = f.encode("utf-8")
            table += _U16.pack(len(b))
            table += b
        head = _HEADER.pack(_BLOCK_MAGIC, VERSION, 0, len(table), len(payload), frames, min_ts, max_ts, 0)
        crc = zlib.crc32(payload, zlib.crc32(table, zlib.crc32(head[:36])))
        head = head[:36] + _U32.pack(crc)
        length = len(head) + len(table) + len(payload)

        seg = self._active
        if seg is not None:
            grown = _grown_index(seg, flows)
            too_big = seg.size + length + seg.index_size() + grown > self.segment_bytes
            too_old = max_ts - seg.min_ts >= self.segment_ns
            if too_big or too_old:
                self._seal()
                seg = None
        if seg is None:
            self._evict(1)  # room for one more segment in the count
            seg = self._open_segment(min_ts)
            if seg is None:
                self._counts["write_errors"] += 1
                self._counts["dropped_frames"] += frames
                return
        self._evict(length + _grown_index(seg, flows), keep=seg)
        try:
            written = os.writev(seg.fd, [head, table, payload])
        except OSError as e:
            written = -1
            error: str = e.strerror or str(e)
        else:
            error = f"short write ({written} of {length} bytes)"
        if written != length:
            self._counts["dropped_frames"] += frames
            self._write_failed(seg, error)
            return
        seg.size += length
        self._bytes += length
        if not seg.frames:
            seg.min_ts, seg.max_ts = min_ts, max_ts
        else:
            seg.min_ts, seg.max_ts = min(seg.min_ts, min_ts), max(seg.max_ts, max_ts)
        seg.frames += frames
        refs = []
        for f in flows:
            r = seg.flows.get(f)
            if r is None:
                r = seg.flows[f] = len(seg.flows)
                seg.flow_bytes += 2 + len(f.encode("utf-8"))
            refs.append(r)
        seg.blocks.append((seg.size - length, length, min_ts, max_ts, frames, refs))
        seg.block_bytes += _INDEX_BLOCK.size + 4 * len(refs)

    def _write_failed(self, seg: _Segment, error: str) -> None:
        """A block could not be written (disk full, I/O error): drop it, keep the segment whole."""
        self._counts["write_errors"] += 1
        log.warning("packet spool %s: could not write a block (%s); its frames are dropped", seg.path, error)
        try:
            os.ftruncate(seg.fd, seg.size)
        except OSError:
            # The segment may now end in a torn block, which readers ignore. Stop appending to it
            # (a block after a torn one would be unreachable) and count what is on disk.
            os.close(seg.fd)
            seg.fd = -1
            self._active = None
            actual = _file_size(seg.path)
            self._bytes += max(0, actual - seg.size)
            seg.size = max(seg.size, actual)
            self._sealed.append(seg)

    def _open_segment(self, first_ts: int) -> _Segment | None:
        seq = self._next_seq
        self._next_seq += 1
        path = self.directory / _open_name(seq)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC, 0o640)
        except OSError as e:
            log.warning("packet spool: cannot create %s (%s); frames dropped until it can", path, e.strerror)
            return None
        seg = _Segment(seq, path, min_ts=first_ts, max_ts=first_ts, fd=fd)
        self._active = seg
        return seg

    def _seal(self) -> None:
        """Append the index and trailer to the active segment and give it its time-range name."""
        seg = self._active
        assert seg is not None
        self._active = None
        if seg.fd >= 0:
            index = _build_index(seg)
            try:
                written = os.write(seg.fd, index)
            except OSError:
                written = -1
            if written == len(index):
                seg.size += len(index)
                self._bytes += len(index)
            else:  # readers walk a segment without an index; only the speed-up is lost
                self._counts["write_errors"] += 1
                with contextlib.suppress(OSError):
                    os.ftruncate(seg.fd, seg.size)
            os.close(seg.fd)
            seg.fd = -1
        if not seg.frames:
            self._delete(seg)
            return
        sealed = self.directory / _sealed_name(seg.seq, seg.min_ts, seg.max_ts)
        try:
            os.rename(seg.path, sealed)
            seg.path = sealed
        except OSError as e:
            log.warning("packet spool: cannot rename %s (%s); it stays readable as is", seg.path, e.strerror)
        seg.flows = {}
        seg.blocks = []
        self._sealed.append(seg)

    # -- bounds --------------------------------------------------------------------------------

    def _evict(self, incoming: int, keep: _Segment | None = None) -> None:
        """Delete the oldest sealed segments until ``incoming`` more bytes (plus the active segment's
        index, written when it is sealed) fit in ``max_bytes``, and one more segment fits in the
        count when a new segment is about to be opened (``keep`` is None)."""
        reserve = self._active.index_size() if self._active is not None else 0
        while self._sealed:
            over_bytes = self._bytes + reserve + incoming > self.max_bytes
            count = len(self._sealed) + (self._active is not None) + (keep is None and incoming > 0)
            if not over_bytes and count <= self.max_segments:
                return
            seg = self._sealed.popleft()
            self._counts["evicted_segments"] += 1
            self._counts["evicted_frames"] += seg.frames
            self._delete(seg)

    def _delete(self, seg: _Segment) -> None:
        try:
            os.unlink(seg.path)
        except FileNotFoundError:
            pass
        except OSError as e:
            log.warning("packet spool: cannot delete %s (%s)", seg.path, e.strerror)
            return  # still on disk: still counted
        self._bytes -= seg.size

    # -- startup -------------------------------------------------------------------------------

    def _lock(self) -> int:
        """One writer per directory: two would interleave blocks. A clear error if taken."""
        path = self.directory / _LOCK_NAME
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o640)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise RuntimeError(
                f"packet spool {self.directory} is in use by another capture process; give each "
                "capture process its own directory under the spool root"
            ) from None
        return fd

    def _recover(self) -> None:
        """Take over what an earlier run left: sealed segments as they are, open (or broken) ones
        cut after their last good block and sealed; unreadable ones deleted."""
        found = []
        for entry in os.scandir(self.directory):
            m = _SEALED_RE.match(entry.name) or _OPEN_RE.match(entry.name)
            if m is not None and entry.is_file(follow_symlinks=False):
                found.append((int(m.group(1)), Path(entry.path), m.re is _SEALED_RE))
        found.sort()
        for seq, path, sealed in found:
            self._next_seq = max(self._next_seq, seq + 1)
            seg = self._recover_segment(seq, path, sealed)
            if seg is not None:
                self._sealed.append(seg)
                self._bytes += seg.size

    def _recover_segment(self, seq: int, path: Path, sealed: bool) -> _Segment | None:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except OSError as e:
            log.warning("packet spool: cannot open %s (%s); left alone", path, e.strerror)
            return None
        try:
            size = os.fstat(fd).st_size
            index = _read_index(fd, size) if sealed else None
            if index is not None and path.name == _sealed_name(seq, index.min_ts, index.max_ts):
                return _Segment(seq, path, size, index.frames, index.min_ts, index.max_ts)
            try:
                blocks, end, _torn = _walk(fd, size, verify=True)
            except _Corrupt as e:
                blocks, end = [], 0
                log.warning("packet spool: %s is unreadable (%s); deleted", path, e)
            if not blocks:
                self._counts["discarded_segments"] += 1
                os.close(fd)
                fd = -1
                with contextlib.suppress(OSError):
                    os.unlink(path)
                return None
            os.ftruncate(fd, end)
            seg = _Segment(seq, path, end, fd=fd)
            seg.min_ts = min(b.min_ts for b in blocks)
            seg.max_ts = max(b.max_ts for b in blocks)
            for b in blocks:
                seg.frames += b.frames
                refs = []
                for f in b.flows:
                    r = seg.flows.get(f)
                    if r is None:
                        r = seg.flows[f] = len(seg.flows)
                        seg.flow_bytes += 2 + len(f.encode("utf-8"))
                    refs.append(r)
                seg.blocks.append((b.offset, b.length, b.min_ts, b.max_ts, b.frames, refs))
                seg.block_bytes += _INDEX_BLOCK.size + 4 * len(refs)
            index_bytes = _build_index(seg)
            os.pwrite(fd, index_bytes, end)
            seg.size = end + len(index_bytes)
            new_path = self.directory / _sealed_name(seq, seg.min_ts, seg.max_ts)
            os.rename(path, new_path)
            self._counts["recovered_segments"] += 1
            log.info("packet spool: recovered %s (%d frames) as %s", path.name, seg.frames, new_path.name)
            return _Segment(seq, new_path, seg.size, seg.frames, seg.min_ts, seg.max_ts)
        except OSError as e:
            log.warning("packet spool: cannot recover %s (%s); left alone", path, e.strerror)
            return None
        finally:
            if fd >= 0:
                os.close(fd)

    # -- reporting -----------------------------------------------------------------------------

    def stats(self) -> dict[str, int]:
        """Bytes and segments on disk, frames on disk and pending, the oldest timestamp kept,
        and what was evicted, cut, rejected or dropped on write errors (counters of this run;
        ``bytes``, ``segments``, ``frames`` and ``oldest_ts`` include what an earlier run left)."""
        segs = list(self._sealed) + ([self._active] if self._active is not None else [])
        with_frames = [s for s in segs if s.frames]
        return {
            "bytes": self._bytes,
            "segments": len(segs),
            "frames": sum(s.frames for s in segs),
            "pending_frames": self._frames,
            "pending_bytes": len(self._buf),
            "oldest_ts": min((s.min_ts for s in with_frames), default=0),
            "added_frames": self._blocked_frames + self._frames,
            **self._counts,
        }


def _grown_index(seg: _Segment, flows: list[str]) -> int:
    """How much a block with these flows adds to the segment's index."""
    new = sum(2 + len(f.encode("utf-8")) for f in flows if f not in seg.flows)
    return new + _INDEX_BLOCK.size + 4 * len(flows)


def _build_index(seg: _Segment) -> bytes:
    body = bytearray(_INDEX_BODY.pack(seg.min_ts, seg.max_ts, seg.frames, len(seg.flows), len(seg.blocks)))
    for f in seg.flows:
        b = f.encode("utf-8")
        body += _U16.pack(len(b))
        body += b
    for off, length, b_min, b_max, frames, refs in seg.blocks:
        body += _INDEX_BLOCK.pack(off, length, b_min, b_max, frames, len(refs))
        body += struct.pack(f"<{len(refs)}I", *refs)
    record = _INDEX_HEAD.pack(_INDEX_MAGIC, len(body)) + bytes(body)
    trailer = _TRAILER.pack(_TRAILER_MAGIC, VERSION, 0, seg.size, len(record), zlib.crc32(record))
    return record + trailer


def _sorted_payload(payload: bytearray, frames: int) -> tuple[bytearray, int, int]:
    """The block's records in time order (stable: equal timestamps keep their order)."""
    spans = []
    off = 0
    for _ in range(frames):
        ts = _unpack_record(payload, off)[0]
        end = off + _RECORD.size + _unpack_record(payload, off)[3]
        spans.append((ts, off, end))
        off = end
    spans.sort(key=lambda s: s[0])
    out = bytearray()
    for _ts, a, b in spans:
        out += payload[a:b]
    return out, spans[0][0], spans[-1][0]


def _file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


# -- the reader ------------------------------------------------------------------------------------


@dataclasses.dataclass
class SpoolReadStats:
    """What one `read_spool` saw, for the export's report and the worker's metrics."""

    segments: int = 0  # segment files considered
    segments_skipped: int = 0  # outside the window, or without the requested flows
    blocks: int = 0  # blocks read
    blocks_skipped: int = 0  # blocks outside the window or without the flows
    frames: int = 0  # frames returned
    corrupt: int = 0  # segments or blocks skipped as corrupt or hostile (each logged)
    torn: int = 0  # segments ending in a partly written block (a write in progress or a crash)
    vanished: int = 0  # segments evicted by the writer while this read was under way
    warnings: list[str] = dataclasses.field(default_factory=list)  # the first few, for a report

    def warn(self, message: str) -> None:
        self.corrupt += 1
        log.warning("packet spool: %s", message)
        if len(self.warnings) < _MAX_WARNINGS:
            self.warnings.append(message)


@dataclasses.dataclass(slots=True)
class _Planned:
    """A block to read: its place in the merge and where it is."""

    min_ts: int
    rank: tuple[int, int, int]  # (writer directory, segment seq, offset): the order it was written
    directory: Path
    seq: int
    name: str
    block: _Block


def spool_directories(root: Path) -> list[Path]:
    """The writer directories under a spool root: the root itself, then its subdirectories by name."""
    root = Path(root)
    dirs = [root]
    try:
        dirs += sorted(
            (Path(e.path) for e in os.scandir(root) if e.is_dir(follow_symlinks=False)),
            key=lambda p: p.name,
        )
    except OSError:
        pass
    return dirs


def read_spool(
    root: Path,
    from_ns: int | None,
    to_ns: int | None,
    flow_ids: Collection[str] | None,
    *,
    stats: SpoolReadStats | None = None,
) -> Iterator[tuple[int, int, int, bytes, str]]:
    """Frames ``(ts, linktype, orig_len, data, flow_id)`` with ``from_ns <= ts <= to_ns`` (None: open
    ended) of the given flows (None: every flow; empty: none), from every writer directory under
    ``root``, in time order. Problems on disk are counted in ``stats`` and logged, never raised.
    """
    st = stats if stats is not None else SpoolReadStats()
    lo = from_ns if from_ns is not None else -(1 << 63)
    hi = to_ns if to_ns is not None else (1 << 63) - 1
    wanted = None if flow_ids is None else frozenset(flow_ids)
    if (wanted is not None and not wanted) or lo > hi:
        return
    planned: list[_Planned] = []
    for d_rank, directory in enumerate(spool_directories(root)):
        planned += _plan_directory(directory, d_rank, lo, hi, wanted, st)
    yield from _merge(planned, lo, hi, wanted, st)


def _plan_directory(
    directory: Path, d_rank: int, lo: int, hi: int, wanted: frozenset[str] | None, st: SpoolReadStats
) -> list[_Planned]:
    """The blocks of one writer directory that may hold frames of the window and flows."""
    try:
        names = [e.name for e in os.scandir(directory) if e.is_file(follow_symlinks=False)]
    except OSError:
        return []
    out = []
    for name in sorted(names):
        m = _SEALED_RE.match(name)
        if m is None:
            m = _OPEN_RE.match(name)
            if m is None:
                continue
        st.segments += 1
        seq = int(m.group(1))
        if m.re is _SEALED_RE and (int(m.group(3)) < lo or int(m.group(2)) > hi):
            st.segments_skipped += 1
            continue
        blocks = _segment_blocks(directory, seq, name, wanted, st)
        if blocks is None:
            st.segments_skipped += 1
            continue
        for b in blocks:
            if b.max_ts < lo or b.min_ts > hi or (wanted is not None and wanted.isdisjoint(b.flows)):
                st.blocks_skipped += 1
                continue
            out.append(_Planned(b.min_ts, (d_rank, seq, b.offset), directory, seq, name, b))
    return out


def _segment_blocks(
    directory: Path, seq: int, name: str, wanted: frozenset[str] | None, st: SpoolReadStats
) -> list[_Block] | None:
    """A segment's blocks: from its index when sealed, else by walking it. None: skip it."""
    fd = _open_for_read(directory, seq, name)
    if fd is None:
        st.vanished += 1
        return None
    try:
        size = os.fstat(fd).st_size
        index = _read_index(fd, size)
        if index is not None:
            if wanted is not None and wanted.isdisjoint(index.flows):
                return None
            return index.blocks
        try:
            blocks, end, torn = _walk(fd, size, verify=False)
        except _Corrupt as e:
            st.warn(f"{directory / name}: {e}; skipped")
            return None
        if torn:
            st.torn += 1
        elif end < size and os.pread(fd, 4, end) != _INDEX_MAGIC:
            st.warn(f"{directory / name}: unreadable after offset {end}; read up to there")
        return blocks
    except OSError as e:
        st.warn(f"{directory / name}: {e.strerror}; skipped")
        return None
    finally:
        os.close(fd)


def _open_for_read(directory: Path, seq: int, name: str) -> int | None:
    """Open a segment by name; if the writer sealed (renamed) it meanwhile, by its new name.
    None when it is gone (evicted)."""
    try:
        return os.open(directory / name, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        pass
    except OSError:
        return None
    prefix = f"{seq:010d}_"
    try:
        for e in os.scandir(directory):
            if e.name.startswith(prefix) and _SEALED_RE.match(e.name):
                return os.open(e.path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    return None


def _merge(
    planned: list[_Planned], lo: int, hi: int, wanted: frozenset[str] | None, st: SpoolReadStats
) -> Iterator[tuple[int, int, int, bytes, str]]:
    """Time-ordered frames of the planned blocks, opening each block only when the merge reaches
    its first timestamp. Ties go to the block written first (and, within a block, capture order)."""
    planned.sort(key=lambda p: (p.min_ts, p.rank))
    heap: list[tuple[int, tuple[int, int, int], int, list[tuple[int, int, int, bytes, str]]]] = []
    i = 0
    while i < len(planned) or heap:
        while i < len(planned) and (not heap or planned[i].min_ts <= heap[0][0]):
            p = planned[i]
            i += 1
            recs = _load(p, lo, hi, wanted, st)
            if recs:
                heapq.heappush(heap, (recs[0][0], p.rank, 0, recs))
        if not heap:
            continue
        _ts, rank, j, recs = heap[0]
        st.frames += 1
        yield recs[j]
        if j + 1 < len(recs):
            heapq.heapreplace(heap, (recs[j + 1][0], rank, j + 1, recs))
        else:
            heapq.heappop(heap)


def _load(
    p: _Planned, lo: int, hi: int, wanted: frozenset[str] | None, st: SpoolReadStats
) -> list[tuple[int, int, int, bytes, str]]:
    fd = _open_for_read(p.directory, p.seq, p.name)
    if fd is None:
        st.vanished += 1
        return []
    try:
        recs = _read_block_records(fd, p.block)
    except _Corrupt as e:
        st.warn(f"{p.directory / p.name}: {e}; block skipped")
        return []
    except OSError as e:
        st.warn(f"{p.directory / p.name}: {e.strerror}; block skipped")
        return []
    finally:
        os.close(fd)
    st.blocks += 1
    return [r for r in recs if lo <= r[0] <= hi and (wanted is None or r[4] in wanted)]
