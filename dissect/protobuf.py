"""Protocol Buffers without a schema: wire-format bytes -> a field-number tree for display.

The wire format says how to split a message into fields (tag = field number << 3 | wire type), but
not what a field means; this module recovers what the bytes themselves say, like
``protoc --decode_raw``. `decode` returns a list of fields, each a small JSON-friendly dict:

- ``{"field": 1, "wire": "varint", "value": 150}`` — unsigned; ``"signed"`` is added when the value
  only makes sense as a negative int64 (>= 2**63, how int32/int64 negatives are sent);
- ``{"field": 2, "wire": "i64", "value": <uint64>, "double": 2.5}`` and
  ``{"field": 3, "wire": "i32", "value": <uint32>, "float": 2.5}``: the raw integer, ``"signed"``
  when the top bit is set, and the float reading when it is a plausible number (finite and of a
  magnitude real data has; random bits read as floats are rarely that);
- ``{"field": 4, "wire": "len", "type": "message", "value": [...fields...]}`` — a nested message,
  ``"type": "string"`` with a ``str`` value, or ``"type": "bytes"`` with ``{"hex": ..., "size": n}``.

Length-delimited fields are ambiguous (string, bytes, nested message, packed repeated scalars all
look the same). The order of guesses: printable UTF-8 text that does not start with a control
character is a string (a short text often also parses as a message, and reading it as one would be
wrong far more often than not); otherwise a nested message when the bytes parse *completely* as one
with plausible tags (valid wire types, field numbers outside the reserved 19000-19999); otherwise
text when it is printable UTF-8 (one starting with a newline, say); otherwise bytes. An empty payload
is the empty string.

Bounds: nesting stops at ``max_depth`` (deeper payloads are shown as bytes/text), at most
``max_fields`` fields are returned in the whole tree, and the total parsing work (including nested
guesses that failed) is a small multiple of that. When the field budget runs out the message's list
ends with ``{"omitted_bytes": n}`` (the framing of those bytes is still checked, within the same work
bound). Long strings and byte values are cut for display (``"size"`` then
gives the full length in bytes). Groups (wire types 3 and 4, deprecated since proto2) are not
accepted. Nothing here raises on any input.
"""

from __future__ import annotations

import math
import struct
from typing import Any

__all__ = ["MAX_HEX_BYTES", "MAX_TEXT_CHARS", "decode"]

MAX_TEXT_CHARS = 4096  # a string value longer than this is cut for display ("size" keeps the length)
MAX_HEX_BYTES = 1024  # bytes values show at most this many bytes as hex
_MAX_FIELD_NUMBER = (1 << 29) - 1
_RESERVED = range(19000, 20000)
_WORK_FACTOR = 4  # parse steps allowed per returned field (failed nested guesses cost work too)
_WIRE = ("varint", "i64", "len", None, None, "i32")  # 3/4 are groups (refused), 6/7 do not exist
_WS = str.maketrans("", "", "\t\n\r")
_unpack_d = struct.Struct("<d").unpack_from
_unpack_f = struct.Struct("<f").unpack_from
_unpack_q = struct.Struct("<Q").unpack_from
_unpack_i = struct.Struct("<I").unpack_from


class _Invalid(Exception):
    """The bytes are not a protobuf message (internal: never escapes `decode`)."""


class _Budget:
    __slots__ = ("fields", "initial_work", "work")

    def __init__(self, fields: int) -> None:
        self.fields = fields
        self.work = self.initial_work = fields * _WORK_FACTOR + 16


def decode(data: bytes, max_depth: int = 8, max_fields: int = 10_000) -> list[dict[str, Any]] | None:
    """The field tree of a protobuf message, or None when ``data`` is not a valid message.

    ``b""`` is a valid (empty) message and gives ``[]``.
    """
    try:
        budget = _Budget(max(int(max_fields), 0))
        return _message(memoryview(bytes(data)), max(int(max_depth), 1), budget, top=True)
    except _Invalid:
        return None
    except Exception:  # pragma: no cover - a bug here must not take a dissector down
        return None


def _varint(buf: memoryview, pos: int, end: int) -> tuple[int, int]:
    result = 0
    shift = 0
    while True:
        if pos >= end or shift > 63:
            raise _Invalid
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result & 0xFFFFFFFFFFFFFFFF, pos
        shift += 7


def _message(buf: memoryview, depth: int, budget: _Budget, top: bool = False) -> list[dict[str, Any]]:
    """Parse all of ``buf`` as one message; raises `_Invalid` if it is not one (or, when nested, if
    the budget runs out: the caller then shows the payload as bytes)."""
    out: list[dict[str, Any]] = []
    pos, end = 0, len(buf)
    while pos < end:
        if budget.fields <= 0 or budget.work <= 0:
            if top:
                _validate_rest(buf, pos, end, budget.initial_work)
                out.append({"omitted_bytes": end - pos})
                return out
            raise _Invalid
        budget.work -= 1
        tag, pos = _varint(buf, pos, end)
        number, wt = tag >> 3, tag & 7
        if number == 0 or number > _MAX_FIELD_NUMBER or number in _RESERVED or wt > 5:
            raise _Invalid
        wire = _WIRE[wt]
        if wire is None:
            raise _Invalid
        field: dict[str, Any]
        if wt == 0:
            v, pos = _varint(buf, pos, end)
            field = {"field": number, "wire": wire, "value": v}
            if v >= 1 << 63:
                field["signed"] = v - (1 << 64)
        elif wt == 1:
            if pos + 8 > end:
                raise _Invalid
            v = _unpack_q(buf, pos)[0]
            field = {"field": number, "wire": wire, "value": v}
            if v >= 1 << 63:
                field["signed"] = v - (1 << 64)
            d = _unpack_d(buf, pos)[0]
            if _plausible(d):
                field["double"] = d
            pos += 8
        elif wt == 5:
            if pos + 4 > end:
                raise _Invalid
            v = _unpack_i(buf, pos)[0]
            field = {"field": number, "wire": wire, "value": v}
            if v >= 1 << 31:
                field["signed"] = v - (1 << 32)
            f = _unpack_f(buf, pos)[0]
            if _plausible(f, 1e-7, 1e12):
                field["float"] = float(f"{f:.7g}")
            pos += 4
        else:
            n, pos = _varint(buf, pos, end)
            if n > end - pos:
                raise _Invalid
            field = _length_delimited(number, buf[pos : pos + n], depth, budget)
            pos += n
        budget.fields -= 1
        out.append(field)
    return out


def _validate_rest(buf: memoryview, pos: int, end: int, steps: int) -> None:
    """Check the framing of the fields the budget does not let us show: no nesting, and at most
    ``steps`` fields (past that the rest is taken on trust, so the cost stays bounded)."""
    while pos < end and steps > 0:
        steps -= 1
        tag, pos = _varint(buf, pos, end)
        number, wt = tag >> 3, tag & 7
        if number == 0 or number > _MAX_FIELD_NUMBER or wt > 5 or _WIRE[wt] is None:
            raise _Invalid
        if wt == 0:
            _, pos = _varint(buf, pos, end)
        elif wt == 1:
            pos += 8
        elif wt == 5:
            pos += 4
        else:
            n, pos = _varint(buf, pos, end)
            pos += n
        if pos > end:
            raise _Invalid


def _plausible(x: float, lo: float = 1e-12, hi: float = 1e18) -> bool:
    return math.isfinite(x) and (x == 0.0 or lo <= abs(x) <= hi)


def _length_delimited(number: int, payload: memoryview, depth: int, budget: _Budget) -> dict[str, Any]:
    n = len(payload)
    if n == 0:
        return {"field": number, "wire": "len", "type": "string", "value": ""}
    raw = payload.tobytes()
    text: str | None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    printable = text is not None and (text.isprintable() or text.translate(_WS).isprintable())
    if printable and text is not None and text[0] not in "\t\n\r":
        return _text_field(number, text, n)
    if depth > 1 and budget.fields > 0 and budget.work > 0:
        saved = budget.fields
        try:
            nested = _message(payload, depth - 1, budget)
        except _Invalid:
            budget.fields = saved
        else:
            return {"field": number, "wire": "len", "type": "message", "value": nested}
    if printable and text is not None:
        return _text_field(number, text, n)
    shown = raw[:MAX_HEX_BYTES]
    return {"field": number, "wire": "len", "type": "bytes", "value": {"hex": shown.hex(), "size": n}}


def _text_field(number: int, text: str, size: int) -> dict[str, Any]:
    field: dict[str, Any] = {"field": number, "wire": "len", "type": "string", "value": text}
    if len(text) > MAX_TEXT_CHARS:
        field["value"] = text[:MAX_TEXT_CHARS]
        field["size"] = size
    return field
