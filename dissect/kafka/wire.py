"""Kafka wire primitives: a small bounded cursor over one message's bytes.

Every read checks the bounds first and raises `KafkaDecodeError` (private to the Kafka dissector,
which catches it) instead of reading past the end or following an absurd length or count. Lengths
and counts are checked against the bytes that remain: an array of N elements needs at least N bytes,
so a count larger than what is left is refused before anything is allocated.

The encodings are those of the Kafka protocol guide (https://kafka.apache.org/protocol#protocol_types):
big-endian fixed-width integers; ``varint``/``varlong`` zig-zag encoded like protobuf's ``sint32``/
``sint64``; ``unsigned_varint`` plain base-128; classic strings/bytes/arrays with int16/int32/int32
length (-1 = null); "compact" ones (flexible versions) with ``unsigned_varint`` length + 1 (0 = null);
tagged fields as a count followed by (tag, size, bytes) triples.
"""

from __future__ import annotations

import struct
import uuid

__all__ = ["KafkaDecodeError", "Reader"]

_I16 = struct.Struct(">h")
_U16 = struct.Struct(">H")
_I32 = struct.Struct(">i")
_I64 = struct.Struct(">q")
_F64 = struct.Struct(">d")


class KafkaDecodeError(Exception):
    """Bytes that do not follow the schema (short, absurd length or count, bad varint)."""


class Reader:
    """A cursor over ``data[pos:end]``. ``truncated`` says the bytes were cut short on purpose (the
    message was longer than what was kept): running out of bytes then is expected, not malformed."""

    __slots__ = ("data", "end", "pos")

    def __init__(self, data: bytes | bytearray | memoryview, pos: int = 0, end: int | None = None) -> None:
        self.data = bytes(data) if not isinstance(data, bytes) else data
        self.pos = pos
        self.end = len(self.data) if end is None else min(end, len(self.data))

    @property
    def remaining(self) -> int:
        return self.end - self.pos

    def _need(self, n: int) -> int:
        p = self.pos
        if n < 0 or p + n > self.end:
            raise KafkaDecodeError(f"need {n} bytes at offset {p}, {self.end - p} left")
        self.pos = p + n
        return p

    # ------------------------------------------------------------------ fixed width
    def int8(self) -> int:
        p = self._need(1)
        v = self.data[p]
        return v - 256 if v > 127 else v

    def boolean(self) -> bool:
        return self.int8() != 0

    def int16(self) -> int:
        return int(_I16.unpack_from(self.data, self._need(2))[0])

    def uint16(self) -> int:
        return int(_U16.unpack_from(self.data, self._need(2))[0])

    def int32(self) -> int:
        return int(_I32.unpack_from(self.data, self._need(4))[0])

    def int64(self) -> int:
        return int(_I64.unpack_from(self.data, self._need(8))[0])

    def float64(self) -> float:
        return float(_F64.unpack_from(self.data, self._need(8))[0])

    def uuid(self) -> str:
        p = self._need(16)
        return str(uuid.UUID(bytes=self.data[p : p + 16]))

    def raw(self, n: int) -> bytes:
        p = self._need(n)
        return self.data[p : p + n]

    def skip(self, n: int) -> None:
        self._need(n)

    # ------------------------------------------------------------------ variable length
    def uvarint(self, max_bytes: int = 5) -> int:
        """Unsigned base-128 varint (``max_bytes`` 5 for 32-bit, 10 for 64-bit values)."""
        data, p, end = self.data, self.pos, self.end
        result = shift = 0
        for i in range(max_bytes):
            if p + i >= end:
                raise KafkaDecodeError(f"varint cut at offset {p + i}")
            b = data[p + i]
            result |= (b & 0x7F) << shift
            if not b & 0x80:
                self.pos = p + i + 1
                return result
            shift += 7
        raise KafkaDecodeError(f"varint longer than {max_bytes} bytes at offset {p}")

    def varint(self) -> int:
        """Zig-zag signed 32-bit varint."""
        v = self.uvarint(5)
        return (v >> 1) ^ -(v & 1)

    def varlong(self) -> int:
        """Zig-zag signed 64-bit varint."""
        v = self.uvarint(10)
        return (v >> 1) ^ -(v & 1)

    def _length(self, n: int, what: str) -> int:
        if n > self.end - self.pos:
            raise KafkaDecodeError(
                f"{what} length {n} at offset {self.pos} exceeds the {self.remaining} bytes left"
            )
        return n

    def string(self, compact: bool = False) -> str | None:
        """A (nullable) string; invalid UTF-8 is replaced, never an error."""
        n = self.uvarint() - 1 if compact else self.int16()
        if n < 0:
            if n == -1:
                return None
            raise KafkaDecodeError(f"negative string length {n}")
        p = self._need(self._length(n, "string"))
        return self.data[p : p + n].decode("utf-8", "replace")

    def bytes_(self, compact: bool = False) -> bytes | None:
        """(Nullable) bytes: int32 length, or compact uvarint length + 1."""
        n = self.uvarint() - 1 if compact else self.int32()
        if n < 0:
            if n == -1:
                return None
            raise KafkaDecodeError(f"negative bytes length {n}")
        p = self._need(self._length(n, "bytes"))
        return self.data[p : p + n]

    def bytes_span(self, compact: bool = False) -> tuple[int, int] | None:
        """Like `bytes_` but returns (start, declared length) without copying; the declared length
        may run past the end of a cut message (the caller decides what a partial value means)."""
        n = self.uvarint() - 1 if compact else self.int32()
        if n < 0:
            if n == -1:
                return None
            raise KafkaDecodeError(f"negative bytes length {n}")
        start = self.pos
        self.pos = min(self.end, start + n)
        return start, n

    def array_len(self, compact: bool = False, min_size: int = 1) -> int:
        """An array's element count (-1 = null); refused when the remaining bytes cannot hold it."""
        n = self.uvarint() - 1 if compact else self.int32()
        if n < -1:
            raise KafkaDecodeError(f"negative array length {n}")
        if n > 0 and n * max(min_size, 1) > self.end - self.pos:
            raise KafkaDecodeError(
                f"array count {n} at offset {self.pos} exceeds the {self.remaining} bytes left"
            )
        return n

    def tagged_fields(self) -> int:
        """Skip a tagged-field section; returns how many tagged fields it held."""
        count = self.uvarint()
        if count > self.end - self.pos:
            raise KafkaDecodeError(f"tagged field count {count} exceeds the bytes left")
        for _ in range(count):
            self.uvarint()  # tag
            size = self.uvarint()
            self._need(self._length(size, "tagged field"))
        return count
