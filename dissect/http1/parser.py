"""One direction of an HTTP/1.x connection: a sans-IO, push-driven message parser.

The parser turns in-order bytes into `HttpMessage` objects and reports them to a `Sink` (the
connection's dissector): ``on_head`` when a start line and header block are complete (the sink may
override the body framing: a response to HEAD has none, a 2xx to CONNECT switches protocols),
``on_end`` when the message is complete, ``on_lost`` when a gap swallowed the start of a message.

States and what moves between them (one handler per state, see ``_HANDLERS``)::

    state        consumes                         next
    IDLE         start line + header block        IDLE (no body) | BODY | CHUNK_SIZE | CLOSE_BODY |
                                                  HOLD (request with Upgrade/CONNECT) | SWITCHED |
                                                  RESYNC (bad start line, header block too large)
    BODY         Content-Length bytes             IDLE | HOLD
    CHUNK_SIZE   "hex[;ext]" line                 CHUNK_DATA | TRAILERS | RESYNC (bad size)
    CHUNK_DATA   chunk bytes                      CHUNK_END
    CHUNK_END    CRLF after chunk data            CHUNK_SIZE | RESYNC (bad terminator)
    TRAILERS     trailer block + empty line       IDLE | HOLD
    CLOSE_BODY   everything until close           (close) DONE
    RESYNC       skips to a strict start line     IDLE
    HOLD         buffers (bounded) until the      IDLE (re-fed: no switch) | SWITCHED
                 response says whether the
                 connection switched protocols
    SWITCHED     keeps the first detect_window    -
                 bytes for a later handoff
    DONE         nothing (closed)                 -

Every buffer is bounded: a partial header block by ``Limits.max_header_block``, a chunk-size line
by `MAX_CHUNK_LINE`, the resync tail by `RESYNC_TAIL`, held and post-switch bytes by
``Limits.detect_window``, kept body bytes by ``Limits.max_body`` per message and by the shared `Budget`.
"""

from __future__ import annotations

import re
from typing import Any, Protocol

from dissect.base import Budget, Limits
from dissect.content_encoding import decode_body
from dissect.http1.detect import find_start, match_start
from dissect.model import Flag, Header

__all__ = [
    "F_CHUNKED",
    "F_CLOSE",
    "F_LENGTH",
    "F_NONE",
    "F_SWITCH",
    "HttpMessage",
    "MessageParser",
    "Sink",
]

# parser states
IDLE, BODY, CHUNK_SIZE, CHUNK_DATA, CHUNK_END, TRAILERS, CLOSE_BODY, RESYNC, HOLD, SWITCHED, DONE = range(11)
STATE_NAMES = (
    "IDLE",
    "BODY",
    "CHUNK_SIZE",
    "CHUNK_DATA",
    "CHUNK_END",
    "TRAILERS",
    "CLOSE_BODY",
    "RESYNC",
    "HOLD",
    "SWITCHED",
    "DONE",
)

# body framing of a message, decided when its head is complete
F_NONE, F_LENGTH, F_CHUNKED, F_CLOSE, F_SWITCH = range(5)

MAX_CHUNK_LINE = 4096  # a chunk-size line (with extensions) longer than this is a framing error
RESYNC_TAIL = 8192  # bytes kept between feeds while scanning for a start line (at most max_header_block)
MAX_INTERIM = 16  # 1xx statuses remembered per request
MAX_WEIRD = 16  # distinct anomaly names remembered per message

_BLANKS = re.compile(rb"[\r\n]+")
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_HEX = b"0123456789abcdefABCDEF"
# Methods recognised even on a broken request line: the IANA registry (RFC 9110, WebDAV, DeltaV…)
# plus the extensions Wireshark also knows (Microsoft RPC over HTTP, SCCM, SSDP).
_KNOWN_METHODS = frozenset(
    {
        *("GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH", "PROPFIND"),
        *("PROPPATCH", "MKCOL", "COPY", "MOVE", "LOCK", "UNLOCK", "SEARCH", "REPORT", "MERGE", "PURGE"),
        *("ACL", "BIND", "UNBIND", "REBIND", "CHECKIN", "CHECKOUT", "UNCHECKOUT", "LABEL", "UPDATE"),
        *("VERSION-CONTROL", "BASELINE-CONTROL", "MKACTIVITY", "MKWORKSPACE", "MKCALENDAR", "ORDERPATCH"),
        *("MKREDIRECTREF", "UPDATEREDIRECTREF", "NOTIFY", "SUBSCRIBE", "UNSUBSCRIBE", "POLL", "M-SEARCH"),
        *("BPROPFIND", "BPROPPATCH", "BMOVE", "BCOPY", "BDELETE", "CCM_POST", "RPC_CONNECT"),
        *("RPC_IN_DATA", "RPC_OUT_DATA", "QUERY"),
    }
)
_VERSIONS = {"HTTP/1.1": "1.1", "HTTP/1.0": "1.0"}
BAD_VERSION = "?"  # a request line with a known method but no valid HTTP version
_FRAMING_HEADERS = frozenset(("content-length", "transfer-encoding", "content-encoding", "upgrade"))


def _dec(b: bytes) -> str:
    try:
        return b.decode()
    except UnicodeDecodeError:
        return b.decode("latin-1")


class HttpMessage:
    """One request or response as parsed, plus the pairing state the dissector keeps on it."""

    __slots__ = (
        "body",
        "body_size",
        "budget",
        "ce",
        "ce_applied",
        "ce_error",
        "complete",
        "emitted",
        "flags",
        "framing",
        "headers",
        "hold",
        "interim",
        "is_request",
        "kept",
        "length",
        "method",
        "parts",
        "placeholder",
        "reason",
        "req",
        "resolved",
        "resp",
        "room",
        "skipped",
        "status",
        "target",
        "trailers",
        "truncated",
        "ts",
        "upgrade",
        "version",
        "weird",
        "wire_size",
    )

    def __init__(self, is_request: bool, ts: int, headers: list[Header], room: int) -> None:
        self.is_request = is_request
        self.ts = ts
        self.headers = headers
        self.room = room  # body bytes this message may still keep (max_body, budget)
        self.method: str | None = None
        self.target: str | None = None
        self.status: int | None = None
        self.reason: str | None = None
        self.version = "1.1"
        self.trailers: list[Header] = []
        self.parts: list[bytes] = []
        self.kept = 0  # bytes held by this message (raw parts, then the decoded body)
        self.budget = 0  # bytes taken from the shared Budget, given back on emit
        self.wire_size = 0
        self.truncated = False
        self.flags: list[str] = []
        self.weird: list[str] | None = None
        self.skipped = 0
        self.ce: str | None = None
        self.ce_applied: str | None = None
        self.ce_error: str | None = None
        self.upgrade: str | None = None
        self.framing = F_NONE
        self.length = 0
        self.hold = False
        self.body = b""
        self.body_size = 0
        self.complete = False
        # pairing state, owned by the dissector
        self.req: HttpMessage | None = None
        self.resp: HttpMessage | None = None
        self.resolved = False
        self.emitted = False
        self.placeholder = False
        self.interim: list[int] | None = None

    def flag(self, name: str) -> None:
        if name not in self.flags:
            self.flags.append(name)

    def add_weird(self, name: str) -> None:
        w = self.weird
        if w is None:
            self.weird = [name]
        elif name not in w and len(w) < MAX_WEIRD:
            w.append(name)

    def __repr__(self) -> str:  # pragma: no cover - debugging aid
        what = f"{self.method} {self.target}" if self.is_request else f"{self.status}"
        return f"<HttpMessage {what} flags={self.flags} wire={self.wire_size}>"


class Sink(Protocol):
    """What a parser reports to (the dissector)."""

    def on_head(self, parser: MessageParser, msg: HttpMessage) -> None: ...

    def on_end(self, parser: MessageParser, msg: HttpMessage) -> None: ...

    def on_lost(self, parser: MessageParser, flag: str) -> None: ...


# Whole header lines already parsed -> (the (name, value) pair, lowercased name if it matters for
# framing else ""). Real traffic repeats most lines exactly ("Connection: keep-alive", "Server: …"),
# so one dict lookup replaces a partition, a token check, a lower() and a strip. Bounded: cleared
# when full, so hostile traffic with unique lines costs a miss each, never memory.
_LINES: dict[str, tuple[Header, str]] = {}
_LINES_MAX = 8192


def _parse_fields(
    lines: list[str], start: int, msg: HttpMessage, out: list[Header]
) -> list[tuple[str, str]] | None:
    """Parse ``name: value`` lines into ``out``; returns (lowercased name, value) of framing headers."""
    framing: list[tuple[str, str]] | None = None
    cache = _LINES
    for i in range(start, len(lines)):
        line = lines[i]
        hit = cache.get(line)
        if hit is None:
            name, sep, value = line.partition(":")
            c = line[:1]
            if c == " " or c == "\t":  # obs-fold: continuation of the previous value
                if out:
                    prev, pv = out[-1]
                    more = line.strip(" \t\r")
                    out[-1] = (prev, f"{pv} {more}" if pv else more)
                    msg.add_weird("obs-fold")
                else:
                    msg.add_weird("bad-header-line")
                continue
            if not sep or not name or _TOKEN.fullmatch(name) is None:
                if line.strip(" \t\r"):
                    msg.add_weird("bad-header-line")
                continue
            low = name.lower()
            hit = ((name, value.strip(" \t\r")), low if low in _FRAMING_HEADERS else "")
            if len(cache) >= _LINES_MAX:
                cache.clear()
            cache[line] = hit
        header, kind = hit
        out.append(header)
        if kind:
            if framing is None:
                framing = [(kind, header[1])]
            else:
                framing.append((kind, header[1]))
    return framing


def _block_end(data: bytes, pos: int) -> tuple[int, int]:
    """Where the block starting at ``pos`` ends: (index of its last line's LF, index after the empty line).

    Finds the first empty line, accepting CRLF and bare LF. (-1, -1) when not there yet.
    """
    e = data.find(b"\n\r\n", pos)
    if e >= 0:
        f = data.find(b"\n\n", pos, e + 1)
        if f >= 0:
            return f, f + 2
        return e, e + 3
    f = data.find(b"\n\n", pos)
    if f >= 0:
        return f, f + 2
    return -1, -1


# header block -> everything `_build` derives from it (see there). Bounded, cleared when full.
_BLOCKS: dict[bytes, tuple[Any, ...]] = {}
_BLOCKS_MAX = 4096
_BLOCK_CACHE_MAX_LEN = 4096

# start line -> its parse, or None when it is not one: status lines repeat all the time. Bounded.
_STARTS: dict[str, tuple[str, str, str, str] | None] = {}
_STARTS_MAX = 8192


def _parse_start_line(line: str) -> tuple[str, str, str, str] | None:
    """(kind, a, b, version): request (method, target) or response (code, reason); None if neither."""
    text = line.rstrip("\r")
    if text.startswith("HTTP/"):
        parts = text.split(" ", 2)
        if len(parts) < 2:
            return None
        ver = _VERSIONS.get(parts[0])
        code = parts[1]
        if ver is None or len(code) != 3 or not code.isdigit() or not code.isascii():
            return None
        kind = "response"
        a, b = code, parts[2] if len(parts) > 2 else ""
    else:
        parts = text.split(" ")
        if len(parts) != 3:
            parts = text.split()
        if parts and parts[0] in _KNOWN_METHODS and len(parts) <= 3:
            # A known method is a request even when the rest of the line is broken ("OPTIONS",
            # "GET /HTTP/1.1", "GET / HTTP/1."): servers answer these, and tshark shows them so.
            a = parts[0]
            b = parts[1] if len(parts) > 1 else ""
            v = parts[2] if len(parts) > 2 else ""
            ver = _VERSIONS.get(v, BAD_VERSION)
        elif len(parts) == 3:
            a, b, v = parts
            ver = _VERSIONS.get(v)
            if ver is None or not b or _TOKEN.fullmatch(a) is None:
                return None
        else:
            return None
        kind = "request"
    return kind, a, b, ver


class MessageParser:
    """Parses one direction. Feed it in-order bytes; it calls the `Sink` as messages take shape."""

    def __init__(
        self,
        direction: int,
        sink: Sink,
        limits: Limits,
        budget: Budget,
        post: bytearray,
        resync: bool = False,
    ) -> None:
        self.direction = direction
        self.sink = sink
        self.limits = limits
        self.budget = budget
        self.max_body = limits.max_body
        self.max_head = max(limits.max_header_block, 64)
        self.tail_max = max(256, min(self.max_head, RESYNC_TAIL))
        self.role: str | None = None  # "request" | "response", set by the dissector
        self.state = RESYNC if resync else IDLE
        self.midstream = resync  # messages before the first complete one get Flag.MID_STREAM
        self.midline = False  # RESYNC: the next bytes do not start at a line start
        self.buf = b""  # unconsumed bytes: partial head, chunk line, resync tail
        self.buf_ts = 0
        self._pre = 0  # length of the buf prefix in the data being processed
        self._pre_ts = 0
        self.scan_from = 0  # IDLE: offset in buf already searched for the end of the head
        self.cur: HttpMessage | None = None  # message whose body is in progress
        self.remaining = 0  # BODY / CHUNK_DATA: bytes left
        self.skipped = 0  # bytes skipped by resync since the last message
        self.pending_flags: list[str] = []  # notes for the next message
        self.pending_weird: list[str] = []
        self.held: list[tuple[bytes, int]] = []  # HOLD
        self.held_size = 0
        self.post = post  # SWITCHED: the first detect_window bytes after the switch
        self.post_open = True

    # ------------------------------------------------------------------ input
    def feed(self, data: bytes, ts: int) -> None:
        if not data:
            return
        if self.buf:
            self._pre = len(self.buf)
            self._pre_ts = self.buf_ts
            data = self.buf + data
            self.buf = b""
        else:
            self._pre = 0
        handlers = _HANDLERS
        pos = 0
        n = len(data)
        while pos < n:
            pos = handlers[self.state](self, data, pos, ts)

    def _ts(self, pos: int, ts: int) -> int:
        return self._pre_ts if pos < self._pre else ts

    def _stash(self, data: bytes, pos: int, ts: int) -> int:
        """Keep ``data[pos:]`` for the next feed; returns the new position (end of data)."""
        self.buf = data[pos:] if pos else data
        self.buf_ts = self._ts(pos, ts)
        return len(data)

    # ------------------------------------------------------------------ state handlers
    def _h_idle(self, data: bytes, pos: int, ts: int) -> int:
        n = len(data)
        c = data[pos]
        if c == 13 or c == 10:  # empty lines before a start line are ignored (RFC 9112 2.2)
            m = _BLANKS.match(data, pos)
            pos = m.end() if m else pos + 1
            if pos >= n:
                return n
        scan = pos
        if pos == 0 and self._pre and self.scan_from:
            scan = self.scan_from
        end, body = _block_end(data, scan)
        if end < 0:
            size = n - pos
            if size > self.max_head:
                return self._head_error(data, pos, "header-block-too-large")
            nl = data.find(b"\n", pos)
            if nl >= 0 and self._start_line(_dec(data[pos:nl])) is None:
                return self._head_error(data, pos, "bad-start-line")
            self.scan_from = max(0, size - 2)
            return self._stash(data, pos, ts)
        self.scan_from = 0
        if end - pos > self.max_head:
            return self._head_error(data, pos, "header-block-too-large")
        msg = self._build(data[pos:end], self._ts(pos, ts))
        if msg is None:
            return self._head_error(data, pos, "bad-start-line")
        self._begin(msg)
        fr = msg.framing
        if fr == F_LENGTH:
            length = msg.length
            if n - body >= length:  # fast path: the whole body is here
                self._keep(msg, data[body : body + length])
                self._end(msg, HOLD if msg.hold else IDLE)
                return body + length
            self.remaining = length
            self.state = BODY
        elif fr == F_NONE:
            self._end(msg, HOLD if msg.hold else IDLE)
        elif fr == F_CHUNKED:
            self.state = CHUNK_SIZE
        elif fr == F_CLOSE:
            self.state = CLOSE_BODY
        else:  # F_SWITCH
            self._end(msg, SWITCHED)
        return body

    def _body_bytes(self, msg: HttpMessage, data: bytes, pos: int) -> int:
        """Keep up to ``remaining`` body bytes from ``data[pos:]``; returns the position after them."""
        n = len(data)
        r = self.remaining
        if n - pos < r:
            self._keep(msg, data[pos:] if pos else data)
            self.remaining = r - (n - pos)
            return n
        self._keep(msg, data if pos == 0 and r == n else data[pos : pos + r])
        self.remaining = 0
        return pos + r

    def _h_body(self, data: bytes, pos: int, ts: int) -> int:
        msg = self.cur
        assert msg is not None
        pos = self._body_bytes(msg, data, pos)
        if not self.remaining:
            self._end(msg, HOLD if msg.hold else IDLE)
        return pos

    def _h_chunk_size(self, data: bytes, pos: int, ts: int) -> int:
        nl = data.find(b"\n", pos)
        if nl < 0:
            if len(data) - pos > MAX_CHUNK_LINE:
                return self._broken(data, pos, "bad-chunk-size")
            return self._stash(data, pos, ts)
        size_part = data[pos:nl].split(b";", 1)[0].strip(b" \t\r")
        if not size_part or len(size_part) > 16 or size_part.strip(_HEX):
            return self._broken(data, pos, "bad-chunk-size")
        size = int(size_part, 16)
        if size == 0:
            self.state = TRAILERS
        else:
            self.remaining = size
            self.state = CHUNK_DATA
        return nl + 1

    def _h_chunk_data(self, data: bytes, pos: int, ts: int) -> int:
        msg = self.cur
        assert msg is not None
        pos = self._body_bytes(msg, data, pos)
        if not self.remaining:
            self.state = CHUNK_END
        return pos

    def _h_chunk_end(self, data: bytes, pos: int, ts: int) -> int:
        c = data[pos]
        if c == 10:
            self.state = CHUNK_SIZE
            return pos + 1
        if c == 13:
            if pos + 1 >= len(data):
                return self._stash(data, pos, ts)
            if data[pos + 1] == 10:
                self.state = CHUNK_SIZE
                return pos + 2
        return self._broken(data, pos, "bad-chunk-terminator")

    def _h_trailers(self, data: bytes, pos: int, ts: int) -> int:
        msg = self.cur
        assert msg is not None
        c = data[pos]
        if c == 10:
            self._end(msg, HOLD if msg.hold else IDLE)
            return pos + 1
        if c == 13:
            if pos + 1 >= len(data):
                return self._stash(data, pos, ts)
            if data[pos + 1] == 10:
                self._end(msg, HOLD if msg.hold else IDLE)
                return pos + 2
        end, after = _block_end(data, pos)
        if end < 0:
            if len(data) - pos > self.max_head:
                return self._broken(data, pos, "trailers-too-large")
            return self._stash(data, pos, ts)
        if end - pos > self.max_head:
            return self._broken(data, pos, "trailers-too-large")
        block = data[pos:end]
        try:
            lines = block.decode().split("\n")
        except UnicodeDecodeError:
            lines = [_dec(b) for b in block.split(b"\n")]
        _parse_fields(lines, 0, msg, msg.trailers)
        self._end(msg, HOLD if msg.hold else IDLE)
        return after

    def _h_close_body(self, data: bytes, pos: int, ts: int) -> int:
        msg = self.cur
        assert msg is not None
        self._keep(msg, data[pos:] if pos else data)
        return len(data)

    def _h_resync(self, data: bytes, pos: int, ts: int) -> int:
        """Skip to the next strict start line (see `dissect.http1.detect`).

        Candidates are line starts, plus packet boundaries: a body does not end with a newline, and a
        new message usually starts a new segment.
        """
        n = len(data)
        if self.midline:  # the bytes here continue a line: the first line start is after a LF
            off, kind = match_start(data, pos, self.role) if pos == 0 else (-1, None)
            if off >= 0:
                self.midline = False
                if kind is not None:
                    self.state = IDLE
                    self.scan_from = 0
                    return off
                return self._stash(data, off, ts)
            nl = data.find(b"\n", pos)
            if nl < 0:
                self.skipped += n - pos
                return n
            self.skipped += nl + 1 - pos
            pos = nl + 1
            self.midline = False
            if pos >= n:
                return n
        off, kind = find_start(data, pos, self.role)
        seam = self._pre  # where this feed's bytes begin, after a kept tail
        if pos < seam < n and (off < 0 or off > seam):
            o2, k2 = match_start(data, seam, self.role)
            if o2 >= 0:
                off, kind = o2, k2
        if off >= 0:
            self.skipped += off - pos
            if kind is not None:
                self.state = IDLE
                self.scan_from = 0
                return off
            if n - off <= self.tail_max:  # a candidate whose header line has not fully arrived
                return self._stash(data, off, ts)
            self.skipped += n - off
            self.midline = True
            return n
        ls = max(data.rfind(b"\n", pos) + 1, pos)
        if n - ls > self.tail_max:  # a line this long is no start line; skip to its end
            self.skipped += n - pos
            self.midline = True
            return n
        self.skipped += ls - pos
        return self._stash(data, ls, ts) if ls < n else n

    def _h_hold(self, data: bytes, pos: int, ts: int) -> int:
        chunk = data[pos:] if pos else data
        self.held.append((chunk, self._ts(pos, ts)))
        self.held_size += len(chunk)
        if self.held_size > self.limits.detect_window:  # no decision came: parse them as HTTP
            self.release()
        return len(data)

    def _h_switched(self, data: bytes, pos: int, ts: int) -> int:
        self._post(data[pos:] if pos else data)
        return len(data)

    def _h_done(self, data: bytes, pos: int, ts: int) -> int:
        return len(data)

    # ------------------------------------------------------------------ head
    def _start_line(self, line: str) -> tuple[str, str, str, str] | None:
        """(kind, a, b, version) of a start line: request (method, target), response (code, reason)."""
        if line in _STARTS:
            sl = _STARTS[line]
        else:
            sl = _parse_start_line(line)
            if len(_STARTS) >= _STARTS_MAX:
                _STARTS.clear()
            _STARTS[line] = sl
        if sl is not None and self.role is not None and sl[0] != self.role:
            return None
        return sl

    def _build(self, block: bytes, ts: int) -> HttpMessage | None:
        """A message from a header block (start line + header lines, without the empty line).

        Parsing a block depends on nothing but its bytes (and the role, checked on the way out), so
        the result is cached by block: a client repeats the same request head again and again
        (polling, health checks, retries) and a server's heads change only when their Date does.
        """
        hit = _BLOCKS.get(block)
        if hit is not None:
            if self.role is not None and (self.role == "request") is not hit[0]:
                return None
            msg = HttpMessage(hit[0], ts, list(hit[6]), self.max_body)
            (
                _,
                msg.method,
                msg.target,
                msg.status,
                msg.reason,
                msg.version,
                _,
                weird,
                msg.framing,
                msg.length,
                msg.ce,
                msg.upgrade,
                msg.hold,
            ) = hit
            if weird is not None:
                msg.weird = list(weird)
            return msg
        built = self._parse_block(block, ts)
        if built is None:
            return None
        msg = built
        if len(block) <= _BLOCK_CACHE_MAX_LEN:
            if len(_BLOCKS) >= _BLOCKS_MAX:
                _BLOCKS.clear()
            _BLOCKS[block] = (
                msg.is_request,
                msg.method,
                msg.target,
                msg.status,
                msg.reason,
                msg.version,
                tuple(msg.headers),
                None if msg.weird is None else tuple(msg.weird),
                msg.framing,
                msg.length,
                msg.ce,
                msg.upgrade,
                msg.hold,
            )
        return msg

    def _parse_block(self, block: bytes, ts: int) -> HttpMessage | None:
        """`_build` without the cache."""
        try:
            lines = block.decode().split("\n")
        except UnicodeDecodeError:
            lines = [_dec(b) for b in block.split(b"\n")]
        sl = self._start_line(lines[0])
        if sl is None:
            return None
        kind, a, b, ver = sl
        headers: list[Header] = []
        msg = HttpMessage(kind == "request", ts, headers, self.max_body)
        msg.version = ver
        if ver == BAD_VERSION:
            msg.add_weird("bad-request-line")
        if kind == "request":
            msg.method = a
            msg.target = b
        else:
            msg.status = int(a)
            msg.reason = b
        framing = _parse_fields(lines, 1, msg, headers)
        cl: int | None = None
        te: str | None = None
        has_cl = False
        if framing is not None:
            cl_vals: list[str] = []
            te_vals: list[str] = []
            ce_vals: list[str] = []
            for low, value in framing:
                if low == "content-length":
                    cl_vals.append(value)
                elif low == "transfer-encoding":
                    te_vals.append(value)
                elif low == "content-encoding":
                    ce_vals.append(value)
                elif msg.upgrade is None:
                    msg.upgrade = value
            if cl_vals:
                has_cl = True
                cl = self._content_length(cl_vals, msg)
            if te_vals:
                te = ", ".join(te_vals)
            if ce_vals:
                ce = ", ".join(ce_vals)
                if ce.strip().lower() != "identity":
                    msg.ce = ce
        req = msg.is_request
        if te is not None:
            if has_cl:
                msg.add_weird("both-content-length-and-chunked")
            if te.rsplit(",", 1)[-1].strip().lower() == "chunked":
                msg.framing = F_CHUNKED
            elif req:
                msg.add_weird("bad-transfer-encoding")
                msg.framing = F_NONE
            else:
                msg.framing = F_CLOSE
        elif cl is not None:
            if cl:
                msg.framing = F_LENGTH
                msg.length = cl
        elif not req:
            msg.framing = F_CLOSE
        if req:
            msg.hold = msg.upgrade is not None or a == "CONNECT"
        else:
            st = msg.status or 0
            if st == 101:
                msg.framing = F_SWITCH
            elif st < 200 or st == 204 or st == 304:
                msg.framing = F_NONE
        return msg

    @staticmethod
    def _content_length(values: list[str], msg: HttpMessage) -> int | None:
        if len(values) == 1 and values[0].isdigit() and values[0].isascii():
            return int(values[0])
        found: list[int] = []
        for v in values:
            for item in v.split(","):
                item = item.strip()
                if not item.isdigit() or not item.isascii():
                    msg.add_weird("bad-content-length")
                    continue
                found.append(int(item))
        if not found:
            return None
        if any(x != found[0] for x in found):
            msg.add_weird("duplicate-content-length")
        return found[0]

    def _begin(self, msg: HttpMessage) -> None:
        """A head is complete: attach pending notes, report it, and make it the message in progress."""
        if self.midstream:
            msg.flags.append(Flag.MID_STREAM)
        if self.pending_flags:
            for f in self.pending_flags:
                msg.flag(f)
            self.pending_flags = []
        if self.pending_weird:
            for w in self.pending_weird:
                msg.add_weird(w)
            self.pending_weird = []
        if self.skipped:
            msg.skipped = self.skipped
            self.skipped = 0
        self.cur = msg
        self.sink.on_head(self, msg)

    def _head_error(self, data: bytes, pos: int, weird: str) -> int:
        """The bytes at ``pos`` are not a usable head: note it for the next message, then resync."""
        self.scan_from = 0
        if Flag.PARSE_ERROR not in self.pending_flags:
            self.pending_flags.append(Flag.PARSE_ERROR)
        if weird not in self.pending_weird:
            self.pending_weird.append(weird)
        self.state = RESYNC
        if weird == "header-block-too-large":
            # skip what we have; the next start line is somewhere after it
            self.skipped += len(data) - pos
            self.midline = True
            return len(data)
        return pos  # the resync scan skips the bad line itself

    def _broken(self, data: bytes, pos: int, weird: str) -> int:
        """Body framing broke inside a message: end it as truncated, then resync."""
        msg = self.cur
        if msg is not None:
            msg.flag(Flag.PARSE_ERROR)
            msg.add_weird(weird)
            msg.truncated = True
            self._end(msg, RESYNC)
        else:  # pragma: no cover - framing states always have a message
            self.state = RESYNC
        self.midline = False
        return pos if self.state == RESYNC else len(data)

    # ------------------------------------------------------------------ body
    def _keep(self, msg: HttpMessage, chunk: bytes) -> None:
        ln = len(chunk)
        msg.wire_size += ln
        room = msg.room
        if room <= 0:
            if ln:
                msg.truncated = True
            return
        if ln > room:
            chunk = chunk[:room]
            msg.truncated = True
            ln = room
        got = self.budget.take(ln)
        if got < ln:
            chunk = chunk[:got]
            msg.truncated = True
            msg.room = 0
        else:
            msg.room = room - got
        if got:
            msg.parts.append(chunk)
            msg.kept += got
            msg.budget += got

    def _end(self, msg: HttpMessage, next_state: int) -> None:
        """The message is complete (or given up on): assemble and decode its body, report it."""
        parts = msg.parts
        if parts:
            raw = parts[0] if len(parts) == 1 else b"".join(parts)
            msg.parts = []
            if msg.ce is not None:
                res = decode_body(raw, msg.ce, self.max_body, complete=not msg.truncated)
                if res.error is None:
                    msg.body = res.body
                    msg.body_size = res.size
                    if res.encodings:
                        msg.ce_applied = ", ".join(res.encodings)
                    if res.truncated:
                        msg.truncated = True
                else:
                    msg.body = raw
                    msg.body_size = len(raw)
                    msg.ce_error = res.error
                msg.kept = len(msg.body)
            else:
                msg.body = raw
                msg.body_size = msg.wire_size
        else:
            msg.body_size = msg.wire_size if msg.ce is None else 0
        msg.complete = True
        if self.cur is msg:
            self.cur = None
        self.midstream = False
        self.state = next_state
        self.sink.on_end(self, msg)

    # ------------------------------------------------------------------ transport events
    def note(self, flag: str) -> None:
        if self.cur is not None:
            self.cur.flag(flag)
        elif flag not in self.pending_flags:
            self.pending_flags.append(flag)

    def gap(self, n: int, snaplen: bool = False) -> None:
        flag = Flag.SNAPLEN if snaplen else Flag.GAP
        st = self.state
        msg = self.cur
        if st == SWITCHED:
            self.post_open = False  # the bytes kept so far are a prefix; nothing after a hole
            return
        if st == DONE or n <= 0:
            return
        if st == HOLD:
            self.held = []
            self.held_size = 0
            self._to_resync(flag)
            return
        if st == RESYNC:
            self.buf = b""
            self.midline = False
            return
        if st == IDLE:
            buf, self.buf = self.buf, b""
            self.scan_from = 0
            if not (buf and self._partial_head(buf, self.buf_ts, flag)):
                self.sink.on_lost(self, flag)  # the start of a message was lost
            self._to_resync(None)
            return
        assert msg is not None
        msg.flag(flag)
        msg.truncated = True
        msg.room = 0
        if st == BODY:
            r = self.remaining
            if n < r:
                msg.wire_size += n
                self.remaining = r - n
                return
            msg.wire_size += r
            self.remaining = 0
            self._end(msg, HOLD if msg.hold else IDLE)
            if n > r:  # the start of the next message was lost too
                if self.state == HOLD:
                    self.held = []
                    self.held_size = 0
                self.sink.on_lost(self, flag)
                self._to_resync(None)
            return
        if st == CHUNK_DATA and n <= self.remaining:
            msg.wire_size += n
            self.remaining -= n
            if self.remaining == 0:
                self.state = CHUNK_END
            return
        if st == CLOSE_BODY:
            msg.wire_size += n
            return
        # chunk framing lost (size line, terminator, trailers, or a gap past the chunk's end)
        self.buf = b""
        if st == CHUNK_DATA:
            msg.wire_size += self.remaining
        self._end(msg, RESYNC)
        self.midline = False

    def _to_resync(self, flag: str | None) -> None:
        self.state = RESYNC
        self.buf = b""
        self.midline = False
        if flag is not None and flag not in self.pending_flags:
            self.pending_flags.append(flag)

    def _partial_head(self, buf: bytes, ts: int, flag: str | None) -> bool:
        """A head cut short (gap or close): report what is known if its start line is complete."""
        last = buf.rfind(b"\n")
        if last < 0:
            return False
        msg = self._build(buf[:last], ts)
        if msg is None:
            return False
        msg.framing = F_NONE
        msg.hold = False
        msg.truncated = True
        if flag is not None:
            msg.flags.append(flag)
        else:
            msg.add_weird("incomplete-message")
        self._begin(msg)
        if msg.framing == F_SWITCH:
            msg.framing = F_NONE
        msg.hold = False
        self._end(msg, RESYNC)
        return True

    def release(self) -> None:
        """HOLD is over without a protocol switch: parse the held bytes as HTTP/1."""
        if self.state != HOLD:
            return
        held = self.held
        self.held = []
        self.held_size = 0
        self.state = IDLE
        for chunk, ts in held:
            self.feed(chunk, ts)

    def switch(self) -> None:
        """The connection switched protocols: keep what follows (bounded), parse nothing more."""
        st = self.state
        if st in (SWITCHED, DONE):
            return
        pending = self.buf if st == IDLE else b""
        self.buf = b""
        held = self.held
        self.held = []
        self.held_size = 0
        self.state = SWITCHED
        msg = self.cur
        if msg is not None:
            if st != CLOSE_BODY:  # a body the switch cut short
                msg.truncated = True
            self._end(msg, SWITCHED)
        if pending:
            self._post(pending)
        for chunk, _ in held:
            self._post(chunk)

    def _post(self, data: bytes) -> None:
        if not self.post_open:
            return
        room = self.limits.detect_window - len(self.post)
        if room > 0:
            self.post += data[:room] if len(data) > room else data

    def close(self) -> None:
        """End of the connection: finish what is in progress."""
        if self.state == HOLD:
            self.release()
        st = self.state
        if st == IDLE and self.buf:
            buf, self.buf = self.buf, b""
            self._partial_head(buf, self.buf_ts, None)
        elif st in (BODY, CHUNK_SIZE, CHUNK_DATA, CHUNK_END, TRAILERS):
            msg = self.cur
            assert msg is not None
            msg.truncated = True
            msg.add_weird("incomplete-message")
            self.buf = b""
            self._end(msg, DONE)
        elif st == CLOSE_BODY:
            msg = self.cur
            assert msg is not None
            self._end(msg, DONE)
        self.state = DONE
        self.buf = b""

    def buffered_bytes(self) -> int:
        n = len(self.buf) + self.held_size + len(self.post)
        if self.cur is not None:
            n += self.cur.kept
        return n


_HANDLERS = (
    MessageParser._h_idle,
    MessageParser._h_body,
    MessageParser._h_chunk_size,
    MessageParser._h_chunk_data,
    MessageParser._h_chunk_end,
    MessageParser._h_trailers,
    MessageParser._h_close_body,
    MessageParser._h_resync,
    MessageParser._h_hold,
    MessageParser._h_switched,
    MessageParser._h_done,
)
