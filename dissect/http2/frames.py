"""HTTP/2 frame headers (RFC 9113 section 4.1): parsing, the frame-type table, plausibility.

A frame header is 9 bytes: a 24-bit payload length, an 8-bit type, 8 bits of flags and a reserved
bit plus a 31-bit stream id. `plausible` says whether 9 bytes could be a real frame header — a known
type, only the flags that type defines, the stream-id rule of the type, a length the type allows —
which is what detection and resynchronisation (a capture that starts mid-connection, or lost bytes)
chain together: random bytes rarely pass twice in a row.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

__all__ = [
    "CONTINUATION",
    "DATA",
    "DEFAULT_MAX_FRAME",
    "GOAWAY",
    "HEADERS",
    "MAX_FRAME_CAP",
    "PING",
    "PREFACE",
    "PRIORITY",
    "PUSH_PROMISE",
    "RST_STREAM",
    "SETTINGS",
    "TYPES",
    "WINDOW_UPDATE",
    "FrameType",
    "chain",
    "error_name",
    "header",
    "plausible",
]

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DEFAULT_MAX_FRAME = 16384  # SETTINGS_MAX_FRAME_SIZE until a peer says otherwise
MAX_FRAME_CAP = (1 << 24) - 1  # the protocol's largest frame payload

DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS = 0, 1, 2, 3, 4
PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = 5, 6, 7, 8, 9

# flags
END_STREAM = 0x1
ACK = 0x1
END_HEADERS = 0x4
PADDED = 0x8
PRIORITY_FLAG = 0x20

# stream-id rules
_ZERO, _NONZERO, _ANY = 0, 1, 2


class FrameType(NamedTuple):
    name: str
    flags: int  # the flags this type defines; others must be 0 on the wire
    stream: int  # _ZERO, _NONZERO or _ANY
    fixed: int  # exact payload length, or -1
    min_len: int  # smallest payload length


TYPES: dict[int, FrameType] = {
    DATA: FrameType("DATA", END_STREAM | PADDED, _NONZERO, -1, 0),
    HEADERS: FrameType("HEADERS", END_STREAM | END_HEADERS | PADDED | PRIORITY_FLAG, _NONZERO, -1, 1),
    PRIORITY: FrameType("PRIORITY", 0, _NONZERO, 5, 5),
    RST_STREAM: FrameType("RST_STREAM", 0, _NONZERO, 4, 4),
    SETTINGS: FrameType("SETTINGS", ACK, _ZERO, -1, 0),
    PUSH_PROMISE: FrameType("PUSH_PROMISE", END_HEADERS | PADDED, _NONZERO, -1, 4),
    PING: FrameType("PING", ACK, _ZERO, 8, 8),
    GOAWAY: FrameType("GOAWAY", 0, _ZERO, -1, 8),
    WINDOW_UPDATE: FrameType("WINDOW_UPDATE", 0, _ANY, 4, 4),
    CONTINUATION: FrameType("CONTINUATION", END_HEADERS, _NONZERO, -1, 0),
}

_ERRORS = (
    "NO_ERROR",
    "PROTOCOL_ERROR",
    "INTERNAL_ERROR",
    "FLOW_CONTROL_ERROR",
    "SETTINGS_TIMEOUT",
    "STREAM_CLOSED",
    "FRAME_SIZE_ERROR",
    "REFUSED_STREAM",
    "CANCEL",
    "COMPRESSION_ERROR",
    "CONNECT_ERROR",
    "ENHANCE_YOUR_CALM",
    "INADEQUATE_SECURITY",
    "HTTP_1_1_REQUIRED",
)

_HDR = struct.Struct(">BHBBL")
_unpack = _HDR.unpack_from


def error_name(code: int) -> str:
    """RST_STREAM / GOAWAY error code -> its RFC name (``0x1f`` for unknown codes)."""
    return _ERRORS[code] if 0 <= code < len(_ERRORS) else hex(code)


def header(buf: bytes, pos: int) -> tuple[int, int, int, int, int]:
    """(length, type, flags, stream_id, reserved_bit) of the frame header at ``buf[pos:pos+9]``."""
    hi, lo, t, f, sid = _unpack(buf, pos)
    return hi << 16 | lo, t, f, sid & 0x7FFFFFFF, sid >> 31


def plausible(buf: bytes, pos: int, max_len: int, client: bool | None = None, strict: bool = False) -> bool:
    """Could the 9 bytes at ``pos`` be a real frame header?

    ``max_len``: the largest payload accepted. ``client``: True when these bytes come from the client
    (its HEADERS, DATA and CONTINUATION are on odd streams and it never sends PUSH_PROMISE), False
    from the server, None when unknown. ``strict`` (detection) also refuses legal but rare shapes
    that random bytes produce easily (an empty DATA frame that does not end its stream).
    """
    length, t, f, sid, reserved = header(buf, pos)
    if reserved or length > max_len:
        return False
    ft = TYPES.get(t)
    if ft is None or f & ~ft.flags:
        return False
    if ft.stream == _ZERO:
        if sid:
            return False
    elif ft.stream == _NONZERO and not sid:
        return False
    if ft.fixed >= 0:
        if length != ft.fixed:
            return False
    else:
        need = ft.min_len
        if f & PADDED:
            need += 1
        if t == HEADERS and f & PRIORITY_FLAG:
            need += 5
        if length < need:
            return False
    if t == SETTINGS and (length % 6 or (f & ACK and length)):
        return False
    if client and (t == PUSH_PROMISE or (t in (DATA, HEADERS, CONTINUATION) and not sid & 1)):
        return False
    # strict: an empty DATA frame that does not end its stream is legal but rare, and random bytes make it
    return not (strict and t == DATA and not length and not f & END_STREAM)


# chain() results
FAIL, OK, WAIT = 0, 1, 2


def chain(
    buf: bytes,
    pos: int,
    max_len: int,
    client: bool | None = None,
    aligned: bool = False,
    strict: bool = False,
) -> int:
    """Is ``pos`` a frame boundary? Two plausible headers in a row say OK.

    ``aligned``: ``pos`` is where a packet started; then a single plausible frame that exactly fills
    the rest of ``buf`` is enough (a lone frame in its own packet, common on quiet connections).
    WAIT: the answer needs more bytes.
    """
    n = len(buf)
    if n - pos < 9:
        return WAIT
    if not plausible(buf, pos, max_len, client, strict):
        return FAIL
    end = pos + 9 + header(buf, pos)[0]
    if end + 9 <= n:
        return OK if plausible(buf, end, max_len, client, strict) else FAIL
    if aligned and end == n:
        return OK
    return WAIT
