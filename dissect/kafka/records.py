"""Kafka record data: RecordBatch v2 (magic 2) and the older MessageSet (magic 0 and 1).

`summarize_records(data, declared, budget)` describes the ``records`` field of a Produce request or a
Fetch response partition as a JSON-ready dict:

- ``batches``: batches seen; ``count``: records they declare (from each batch header, so the count is
  complete even when records are not shown or cannot be decompressed); ``magic``: the format(s);
- ``compression``: ``none`` | ``gzip`` | ``snappy`` | ``lz4`` | ``zstd`` (the first batch's);
- ``records``: up to `RecordBudget.max_records` records per message, each with ``offset``,
  ``timestamp``, ``key``, ``value`` (rendered by `render_bytes`: UTF-8 text when printable, else
  base64; at most 4 KiB each) and ``headers``;
- ``partial_batch``: the data ends inside a batch. A Fetch response normally does (the broker cuts
  at ``max_bytes``), and so does a message cut by podshark's size limit;
- ``size``: the declared size of the field; ``errors``: what could not be read (bounded list).

Compressed batches are decompressed with a bound (`RecordBudget.max_decompressed` per batch):
gzip (zlib) and zstd through `dissect.content_encoding`, snappy (raw or Xerial-framed, as the Java
client writes it) and lz4 (frame format) through ``cramjam``. Layouts follow
https://kafka.apache.org/documentation/#recordbatch and #messageset.
"""

from __future__ import annotations

import base64
import struct
from dataclasses import dataclass
from typing import Any

import cramjam

from dissect.content_encoding import decode_body
from dissect.kafka.wire import KafkaDecodeError, Reader

__all__ = ["COMPRESSION", "RecordBudget", "render_bytes", "summarize_records"]

COMPRESSION = {0: "none", 1: "gzip", 2: "snappy", 3: "lz4", 4: "zstd"}
BATCH_HEADER = 61  # RecordBatch v2 header up to and including the records count
MAX_ERRORS = 8
MAX_BATCHES_LISTED = 1 << 20  # batches are only counted; this bounds the loop on garbage


@dataclass(slots=True)
class RecordBudget:
    """Bounds shared by every records field of one message."""

    max_records: int = 100  # records shown per message (counts are always complete)
    max_value: int = 4096  # bytes of one key/value/header value shown
    max_decompressed: int = 1 << 20  # bytes one compressed batch may expand to
    shown: int = 0


def render_bytes(b: bytes, limit: int) -> dict[str, Any]:
    """``{"size": n, "text": …}`` when printable UTF-8, else ``{"size": n, "base64": …}``; cut at
    ``limit`` bytes (``"truncated": true``)."""
    size = len(b)
    cut = size > limit
    part = b[:limit] if cut else b
    out: dict[str, Any] = {"size": size}
    text = _printable(part, cut)
    if text is not None:
        out["text"] = text
    else:
        out["base64"] = base64.b64encode(part).decode("ascii")
    if cut:
        out["truncated"] = True
    return out


def _printable(b: bytes, cut: bool) -> str | None:
    try:
        s = b.decode("utf-8")
    except UnicodeDecodeError as e:
        # a cut may split a multi-byte character: accept when only the last 1-3 bytes fail
        if not cut or e.start < len(b) - 3:
            return None
        s = b[: e.start].decode("utf-8")
    if s.translate(_TEXT_WHITESPACE).isprintable():  # one C-level check, tabs and newlines allowed
        return s
    return None


_TEXT_WHITESPACE = {9: None, 10: None, 13: None}


def summarize_records(data: bytes, declared: int, budget: RecordBudget) -> dict[str, Any]:
    """Describe record data; ``data`` may be shorter than ``declared`` (cut). Never raises."""
    out: dict[str, Any] = {"size": declared, "batches": 0, "count": 0, "records": []}
    if len(data) < declared:
        out["cut"] = True
    try:
        _batches(data, out, budget)
    except (KafkaDecodeError, ValueError, OverflowError) as e:  # pragma: no cover - _batches catches its own
        _error(out, str(e))
    if not out["records"]:
        del out["records"]
    return out


def _error(out: dict[str, Any], what: str) -> None:
    errs = out.setdefault("errors", [])
    if len(errs) < MAX_ERRORS:
        errs.append(what)


def _batches(data: bytes, out: dict[str, Any], budget: RecordBudget) -> None:
    pos, n = 0, len(data)
    magics: list[int] = []
    while pos < n and out["batches"] < MAX_BATCHES_LISTED:
        if n - pos < 17:
            out["partial_batch"] = True
            return
        offset, length = struct.unpack_from(">qi", data, pos)
        magic = data[pos + 16]
        if length < 0 or (magic == 2 and length < BATCH_HEADER - 12) or (magic < 2 and length < 14):
            _error(out, f"bad batch length {length} at {pos}")
            return
        if magic > 2:
            _error(out, f"unknown magic {magic} at {pos}")
            return
        if magic not in magics:
            magics.append(magic)
            out["magic"] = magics[0] if len(magics) == 1 else list(magics)
        end = pos + 12 + length
        if end > n:
            out["partial_batch"] = True
            if magic == 2 and n - pos >= BATCH_HEADER:
                _batch_v2(data, pos, n, out, budget, partial=True)
            return
        if magic == 2:
            _batch_v2(data, pos, end, out, budget, partial=False)
        else:
            _message(data, pos, end, offset, magic, out, budget)
        out["batches"] += 1
        pos = end


def _batch_v2(
    data: bytes, pos: int, end: int, out: dict[str, Any], budget: RecordBudget, partial: bool
) -> None:
    base_offset = struct.unpack_from(">q", data, pos)[0]
    attributes = struct.unpack_from(">h", data, pos + 21)[0]
    base_ts = struct.unpack_from(">q", data, pos + 27)[0]
    producer_id = struct.unpack_from(">q", data, pos + 43)[0]
    count = struct.unpack_from(">i", data, pos + 57)[0]
    codec = attributes & 7
    if out["batches"] == 0 and "compression" not in out:
        out["compression"] = COMPRESSION.get(codec, str(codec))
        if attributes & 0x10:
            out["transactional"] = True
        if producer_id >= 0:
            out["producer_id"] = producer_id
    if attributes & 0x20:
        out["control_batches"] = out.get("control_batches", 0) + 1
    if partial:
        return  # its records are not all here: counted as a partial batch, not as records
    if count < 0:
        _error(out, f"negative record count {count}")
        return
    out["count"] += count
    if budget.shown >= budget.max_records:
        return
    payload = data[pos + BATCH_HEADER : end]
    if codec:
        raw = _decompress(codec, payload, budget.max_decompressed)
        if isinstance(raw, str):
            _error(out, raw)
            return
        payload = raw
    r = Reader(payload)
    try:
        for _ in range(count):
            if budget.shown >= budget.max_records:
                return
            out["records"].append(_record_v2(r, base_offset, base_ts, budget))
            budget.shown += 1
    except KafkaDecodeError as e:
        _error(out, f"record: {e}")


def _record_v2(r: Reader, base_offset: int, base_ts: int, budget: RecordBudget) -> dict[str, Any]:
    length = r.varint()
    if length < 0 or length > r.remaining:
        raise KafkaDecodeError(f"record length {length} exceeds the {r.remaining} bytes left")
    sub = Reader(r.data, r.pos, r.pos + length)
    r.skip(length)
    sub.int8()  # attributes: unused
    ts_delta = sub.varlong()
    off_delta = sub.varint()
    rec: dict[str, Any] = {"offset": base_offset + off_delta, "timestamp": base_ts + ts_delta}
    rec["key"] = _varbytes(sub, budget)
    rec["value"] = _varbytes(sub, budget)
    nh = sub.varint()
    if nh < 0 or nh > sub.remaining // 2:
        raise KafkaDecodeError(f"header count {nh} exceeds the bytes left")
    headers = []
    for _ in range(nh):
        klen = sub.varint()
        if klen < 0 or klen > sub.remaining:
            raise KafkaDecodeError(f"header key length {klen}")
        key = sub.raw(klen).decode("utf-8", "replace")
        headers.append([key, _varbytes(sub, budget)])
    rec["headers"] = headers
    return rec


def _varbytes(r: Reader, budget: RecordBudget) -> dict[str, Any] | None:
    n = r.varint()
    if n < 0:
        return None
    if n > r.remaining:
        raise KafkaDecodeError(f"length {n} exceeds the {r.remaining} bytes left")
    return render_bytes(r.raw(n), budget.max_value)


def _message(
    data: bytes, pos: int, end: int, offset: int, magic: int, out: dict[str, Any], budget: RecordBudget
) -> None:
    """One MessageSet entry (magic 0/1). A compressed one wraps an inner message set in its value."""
    r = Reader(data, pos + 12 + 4 + 1, end)  # after offset, size, crc, magic
    try:
        attributes = r.int8()
        ts = r.int64() if magic == 1 else None
        key = r.bytes_()
        value = r.bytes_()
    except KafkaDecodeError as e:
        _error(out, f"message: {e}")
        return
    codec = attributes & 7
    if "compression" not in out:
        out["compression"] = COMPRESSION.get(codec, str(codec))
    if codec and value is not None:
        raw = _decompress(codec, value, budget.max_decompressed)
        if isinstance(raw, str):
            _error(out, raw)
            out["count"] += 1  # the wrapper at least
            return
        inner: dict[str, Any] = {"batches": 0, "count": 0, "records": []}
        _batches(raw, inner, budget)
        out["count"] += inner["count"]
        out["records"].extend(inner["records"])
        for err in inner.get("errors", ()):
            _error(out, err)
        return
    out["count"] += 1
    if budget.shown < budget.max_records:
        rec: dict[str, Any] = {"offset": offset, "timestamp": ts}
        rec["key"] = None if key is None else render_bytes(key, budget.max_value)
        rec["value"] = None if value is None else render_bytes(value, budget.max_value)
        rec["headers"] = []
        out["records"].append(rec)
        budget.shown += 1


# ---------------------------------------------------------------------- decompression

_XERIAL = b"\x82SNAPPY\x00"
_LZ4_MAGIC = b"\x04\x22\x4d\x18"
_LZ4_BLOCK_MAX = {4: 64 << 10, 5: 256 << 10, 6: 1 << 20, 7: 4 << 20}


def _decompress(codec: int, data: bytes, limit: int) -> bytes | str:
    """Decompressed bytes (at most ``limit``; a batch that expands further is reported, not cut), or
    an error string."""
    try:
        if codec in (1, 4):
            res = decode_body(data, "gzip" if codec == 1 else "zstd", limit)
            if res.error is not None:
                return f"{COMPRESSION[codec]}: {res.error}"
            if res.truncated:
                return f"{COMPRESSION[codec]}: expands beyond {limit} bytes"
            return res.body
        if codec == 2:
            return _snappy(data, limit)
        if codec == 3:
            return _lz4(data, limit)
    except Exception as e:  # a decompressor library failing must not take the dissector down
        return f"{COMPRESSION.get(codec, codec)}: {type(e).__name__}: {e}"
    return f"unknown compression codec {codec}"


def _snappy_block(block: bytes, room: int) -> bytes | str:
    size = int(cramjam.snappy.decompress_raw_len(block))
    if size > room:
        return f"snappy: expands beyond the {room} bytes allowed"
    return bytes(cramjam.snappy.decompress_raw(block))


def _snappy(data: bytes, limit: int) -> bytes | str:
    if not data.startswith(_XERIAL):
        return _snappy_block(data, limit)
    out = bytearray()
    pos = 16  # magic, version, compatible version
    while pos < len(data):
        if pos + 4 > len(data):
            return "snappy: Xerial block header cut"
        n = struct.unpack_from(">i", data, pos)[0]
        pos += 4
        if n < 0 or pos + n > len(data):
            return "snappy: Xerial block length out of range"
        part = _snappy_block(data[pos : pos + n], limit - len(out))
        if isinstance(part, str):
            return part
        out += part
        pos += n
    return bytes(out)


def _lz4(data: bytes, limit: int) -> bytes | str:
    """LZ4 frame format, block by block so the output stays bounded (Kafka writes independent
    blocks; a frame with linked blocks is decompressed whole only when its worst case is small)."""
    if not data.startswith(_LZ4_MAGIC) or len(data) < 7:
        return "lz4: not an LZ4 frame"
    flg, bd = data[4], data[5]
    pos = 6
    if flg & 0x08:  # content size
        pos += 8
    if flg & 0x01:  # dictionary id
        pos += 4
    pos += 1  # header checksum
    if not flg & 0x20:  # linked blocks: no block-by-block bound, so bound the input instead
        if len(data) * 255 > limit * 4:
            return "lz4: linked-block frame too large to decompress within bounds"
        out = bytes(cramjam.lz4.decompress(data))
        return out if len(out) <= limit else f"lz4: expands beyond {limit} bytes"
    block_max = _LZ4_BLOCK_MAX.get((bd >> 4) & 7, 4 << 20)
    checksum = 4 if flg & 0x10 else 0
    buf = bytearray()
    while True:
        if pos + 4 > len(data):
            return "lz4: frame cut"
        word = struct.unpack_from("<I", data, pos)[0]
        pos += 4
        if word == 0:
            return bytes(buf)
        n = word & 0x7FFFFFFF
        if pos + n > len(data):
            return "lz4: block cut"
        block = data[pos : pos + n]
        pos += n + checksum
        if word & 0x80000000:
            part = block
        else:
            part = bytes(cramjam.lz4.decompress_block(block, output_len=block_max))
        if len(buf) + len(part) > limit:
            return f"lz4: expands beyond {limit} bytes"
        buf += part
