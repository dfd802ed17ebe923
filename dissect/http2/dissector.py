"""HTTP/2 over cleartext: one `HTTP2Dissector` per connection, one `Call` per stream.

Each direction has a frame parser (`_Dir`) and its own HPACK decoder. Frames are parsed where they
are: DATA payloads are streamed into the stream's body as they arrive (never buffered whole), other
frames are buffered until complete (header-block frames at most ``Limits.max_header_block``; larger
ones are skipped and counted as lost). Header blocks are HEADERS or PUSH_PROMISE plus CONTINUATION
frames, concatenated until END_HEADERS and decoded once.

Streams pair by id. A stream has two halves, indexed by direction, so frames can be filed before
we know which side is the client (a capture that starts mid-connection); roles are fixed by content
— the preface sender, the side sending ``:method``, the side answering with ``:status`` or
promising pushes — and by the h2c handoff. A stream's call is emitted once both halves ended
(END_STREAM), when it is reset, when a GOAWAY rules it out, when too many streams are open (the
oldest goes), and at close.

Losses (see ``gap``): a gap inside a frame payload loses that frame only — the frame lengths keep
the parser aligned — DATA marks the call truncated, a lost header block makes that direction's
HPACK state unknown (``hpack-desync`` on the calls whose blocks then refer to unknown entries). A gap
that swallowed a frame header, or a capture that starts mid-connection, resynchronises: the parser
looks for a chain of plausible frame headers (`frames.chain`) and decodes on with an incomplete
dynamic table.
"""

from __future__ import annotations

import base64
import re
import struct
from typing import Any

from dissect.base import ConnContext, Handoff
from dissect.content_encoding import decode_body
from dissect.http2.frames import (
    CONTINUATION,
    DATA,
    DEFAULT_MAX_FRAME,
    GOAWAY,
    HEADERS,
    MAX_FRAME_CAP,
    OK,
    PADDED,
    PREFACE,
    PRIORITY_FLAG,
    PUSH_PROMISE,
    RST_STREAM,
    SETTINGS,
    WAIT,
    chain,
    error_name,
    header,
)
from dissect.http2.hpack import HpackDecoder
from dissect.model import Call, Flag, Message

__all__ = ["HTTP2Dissector"]

Header = tuple[str, str]

# per-direction parser states
_START = 0  # first bytes of a connection seen from its start: a client preface, or frames
_FRAMES = 1  # aligned on frame boundaries
_RESYNC = 2  # looking for a frame boundary

_END_STREAM = 0x1
_END_HEADERS = 0x4
_ACK = 0x1

_MAX_DONE = 4096  # emitted stream ids remembered so their late frames are not new calls
_MAX_STARTS = 64  # packet starts remembered while resynchronising
_MAX_INTERIM = 8
_MAX_SKIP_FRAME = 64 << 10  # non-DATA frames larger than this (or the header-block limit) are skipped

_U32 = struct.Struct(">L")
_SETTING = struct.Struct(">HL")

# a possible frame header: small length (< 16 MiB), a known type, reserved bit clear
_CANDIDATE = re.compile(rb"(?=[\x00-\xff]{3}[\x00-\x09][\x00-\xff][\x00-\x7f])", re.DOTALL)
_CANDIDATE_SMALL = re.compile(rb"(?=\x00[\x00-\x40][\x00-\xff][\x00-\x09][\x00-\xff][\x00-\x7f])", re.DOTALL)


class _Half:
    """What one direction sent on one stream (the request or the response, once roles are known)."""

    __slots__ = (
        "body",
        "budget",
        "ended",
        "headers",
        "hts",
        "interim",
        "kept",
        "lost",
        "seen",
        "trailers",
        "ts",
        "wire",
    )

    def __init__(self) -> None:
        self.headers: list[Header] | None = None
        self.trailers: list[Header] = []
        self.interim: list[int] = []
        self.body = bytearray()
        self.kept = 0
        self.budget = 0
        self.wire = 0
        self.lost = False  # body bytes were cut (limit, budget, gap)
        self.ended = False
        self.seen = False
        self.ts: int | None = None  # first frame
        self.hts: int | None = None  # the (final) header block


class _Stream:
    __slots__ = ("flags", "halves", "info", "method", "sid", "target")

    def __init__(self, sid: int) -> None:
        self.sid = sid
        self.halves = (_Half(), _Half())
        self.flags: list[str] = []
        self.info: dict[str, Any] = {}
        self.method: str | None = None  # h2c stream 1: from the HTTP/1 request
        self.target: str | None = None

    def flag(self, f: str) -> None:
        if f not in self.flags:
            self.flags.append(f)


class _Block:
    """A header block being collected: HEADERS/PUSH_PROMISE + CONTINUATION until END_HEADERS."""

    __slots__ = ("end_stream", "frags", "kind", "overflow", "promised", "sid", "size", "ts")

    def __init__(self, kind: int, sid: int, end_stream: bool, promised: int, ts: int) -> None:
        self.kind = kind
        self.sid = sid
        self.end_stream = end_stream
        self.promised = promised
        self.ts = ts
        self.frags: list[bytes] = []
        self.size = 0
        self.overflow = False


class _Dir:
    """One direction's frame parser."""

    __slots__ = (
        "base",
        "block",
        "buf",
        "d",
        "data_end",
        "data_left",
        "data_sid",
        "hint",
        "hpack",
        "left",
        "lost_kind",
        "lost_sid",
        "pad",
        "starts",
        "state",
    )

    def __init__(self, d: int, state: int, complete: bool) -> None:
        self.d = d
        self.state = state
        self.buf = b""
        self.base = 0  # stream offset of buf[0] (resync bookkeeping)
        self.starts: list[int] = []  # stream offsets where packets started (resync)
        self.hpack = HpackDecoder(complete)
        self.hint = DEFAULT_MAX_FRAME  # largest frame this side may send (peer's SETTINGS)
        self.block: _Block | None = None
        # a frame payload being streamed (DATA) or skipped: bytes still to come
        self.left = 0
        self.data_sid = 0  # DATA: the stream (0: skipping a lost or oversized frame)
        self.data_left = 0  # DATA: body bytes still to come (the rest of `left` is padding)
        self.data_end = False  # DATA: END_STREAM is set
        self.pad = 0
        self.lost_kind = -1  # skipping: the type of the frame being skipped
        self.lost_sid = 0


class HTTP2Dissector:
    """One connection's HTTP/2 dissector (see `dissect.base.Dissector`)."""

    def __init__(self, ctx: ConnContext, handoff: Handoff | None = None, strict: bool = False) -> None:
        self.ctx = ctx
        self.strict = strict  # re-raise internal errors (tests); otherwise they become flags
        limits = ctx.limits
        self.max_body = limits.max_body
        self.max_block = max(1, limits.max_header_block)
        self.max_pending = max(1, limits.max_pending)
        self.midstream = not ctx.handshake_seen and handoff is None
        state = _RESYNC if self.midstream else _START
        complete = not self.midstream
        self.dirs = (_Dir(0, state, complete), _Dir(1, state, complete))
        self.streams: dict[int, _Stream] = {}
        self.done: dict[int, None] = {}  # emitted stream ids (ordered set, bounded)
        self.client_dir: int | None = None
        self._src, self._dst = ctx.endpoints
        self.closed = False
        self.internal_errors = 0
        self.skipped = 0  # bytes passed over while resynchronising
        self.goaway: tuple[int, str] | None = None
        if handoff is not None:
            self._from_handoff(handoff)

    # ------------------------------------------------------------------ Dissector contract
    def feed(self, direction: int, data: bytes, ts: int) -> None:
        if self.closed or not data:
            return
        s = self.dirs[direction & 1]
        try:
            if s.state == _RESYNC:
                starts = s.starts
                starts.append(s.base + len(s.buf))
                if len(starts) > _MAX_STARTS:
                    del starts[0]
            self._run(s, s.buf + data if s.buf else data, ts)
        except Exception:
            self._internal_error(s)

    def gap(self, direction: int, n: int, ts: int, snaplen: bool = False) -> None:
        if self.closed or n <= 0:
            return
        s = self.dirs[direction & 1]
        try:
            self._gap(s, n, Flag.SNAPLEN if snaplen else Flag.GAP)
        except Exception:
            self._internal_error(s)

    def note(self, direction: int, flag: str) -> None:
        if self.closed:
            return
        s = self.dirs[direction & 1]
        sid = s.data_sid if s.left else (s.block.sid if s.block is not None else 0)
        st = self.streams.get(sid)
        if st is not None:
            st.flag(flag)

    def close(self, ts: int) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            for s in self.dirs:
                if s.state == _RESYNC and s.buf:
                    self._resync_at_close(s, ts)
                if s.left and s.data_sid:  # the connection ended inside a DATA frame
                    st = self.streams.get(s.data_sid)
                    if st is not None:
                        st.halves[s.d].lost = True
                if s.state == _FRAMES and s.buf:  # ... or inside some other frame
                    sid = header(s.buf, 0)[3] if len(s.buf) >= 9 else 0
                    st = self.streams.get(sid)
                    if st is not None:
                        st.halves[s.d].lost = True
                if s.block is not None:
                    st = self.streams.get(s.block.sid)
                    if st is not None:
                        st.flag(Flag.PARSE_ERROR)
                    s.block = None
            for st in list(self.streams.values()):
                for half in st.halves:
                    if half.seen and not half.ended:  # the connection (or capture) ended mid-message
                        half.lost = True
                self._emit(st)
        except Exception:
            if self.strict:
                raise
            self.internal_errors += 1

    def buffered_bytes(self) -> int:
        """Bytes this dissector holds right now: frame buffers, header blocks, bodies, HPACK tables."""
        n = 0
        for s in self.dirs:
            n += len(s.buf) + s.hpack.table_bytes()
            if s.block is not None:
                n += s.block.size
        for st in self.streams.values():
            n += st.halves[0].kept + st.halves[1].kept
        return n

    # ------------------------------------------------------------------ setup
    def _from_handoff(self, h: Handoff) -> None:
        """h2c Upgrade: the HTTP/1 request is stream 1; the client's preface follows the 101."""
        cd = h.client_dir if h.client_dir is not None else 0
        self._set_client(cd)
        self.dirs[1 - cd].state = _FRAMES  # the server's first bytes are its SETTINGS frame
        req = h.request
        if req is None:
            return
        st = self._stream(1)
        if st is None:  # pragma: no cover - a fresh dissector has no streams
            return
        half = st.halves[cd]
        half.seen = True
        half.ended = True
        half.ts = req.request_ts
        st.method, st.target = req.method, req.target
        if req.request is not None:
            m = req.request
            half.headers = list(m.headers)
            half.trailers = list(m.trailers)
            half.body += m.body
            half.kept = len(m.body)  # already counted by HTTP/1's budget, which it gave back
            half.wire = m.wire_size
            half.lost = m.truncated
            settings = m.header("HTTP2-Settings")
            if settings:
                try:
                    raw = base64.urlsafe_b64decode(settings.strip() + "=" * (-len(settings.strip()) % 4))
                except Exception:
                    raw = b""
                self._settings(self.dirs[cd], raw)

    def _set_client(self, d: int) -> None:
        self.client_dir = d
        eps = self.ctx.endpoints
        self._src = eps[d]
        self._dst = eps[1 - d]

    # ------------------------------------------------------------------ frame loop
    def _run(self, s: _Dir, buf: bytes, ts: int) -> None:
        pos = 0
        n = len(buf)
        while pos < n:
            if s.left:
                take = s.left if s.left <= n - pos else n - pos
                if s.data_sid:
                    body = s.data_left if s.data_left <= take else take
                    if body:
                        self._body(s.data_sid, s.d, buf if body == n else buf[pos : pos + body])
                        s.data_left -= body
                s.left -= take
                pos += take
                if not s.left:
                    self._frame_done(s)
                continue
            state = s.state
            if state == _FRAMES:
                if n - pos < 9:
                    break
                length, t, flags, sid, _ = header(buf, pos)
                if t == DATA:
                    if flags & PADDED:
                        if n - pos < 10:
                            break
                        pad = buf[pos + 9]
                        if pad >= length:
                            self._protocol_error(s, sid)
                            pos += 9
                            s.left, s.data_sid, s.lost_kind, s.lost_sid = length, 0, DATA, sid
                            continue
                        pos += 10
                        body = length - 1 - pad
                    else:
                        pos += 9
                        body = length
                    self._data_start(s, sid, flags, body, ts)
                    s.left = length - (1 if flags & PADDED else 0)
                    s.data_left = body
                    if not s.left:
                        self._frame_done(s)
                    continue
                if length > _MAX_SKIP_FRAME or (
                    length > self.max_block and t in (HEADERS, CONTINUATION, PUSH_PROMISE)
                ):
                    pos += 9
                    self._lose_frame(s, t, sid, flags)
                    s.left, s.data_sid = length, 0
                    if not length:
                        self._frame_done(s)
                    continue
                end = pos + 9 + length
                if end > n:
                    break
                self._frame(s, t, flags, sid, buf[pos + 9 : end], ts)
                pos = end
            elif state == _RESYNC:
                pos = self._resync(s, buf, pos)
                if s.state == _RESYNC:
                    break
            else:  # _START
                rest = n - pos
                if rest >= 24:
                    if buf.startswith(PREFACE, pos):
                        pos += 24
                        if self.client_dir is None:
                            self._set_client(s.d)
                    s.state = _FRAMES
                elif PREFACE.startswith(buf[pos:]):
                    break
                else:
                    s.state = _FRAMES
        if pos >= n:
            s.base += n
            s.buf = b""
        else:
            s.base += pos
            s.buf = buf[pos:] if pos else buf

    def _frame_done(self, s: _Dir) -> None:
        """The payload of the DATA frame being streamed (or of a skipped frame) is over."""
        if s.data_sid:
            sid, s.data_sid = s.data_sid, 0
            if s.data_end:
                self._end(sid, s.d)
        s.lost_kind = -1

    def _frame(self, s: _Dir, t: int, flags: int, sid: int, payload: bytes, ts: int) -> None:
        block = s.block
        if block is not None and (t != CONTINUATION or sid != block.sid):
            # the block was interrupted: a protocol error; its table updates are lost
            s.block = None
            s.hpack.lose_state()
            self._protocol_error(s, block.sid)
            block = None
        if t == HEADERS:
            if not sid:
                return
            off, end = 0, len(payload)
            if flags & PADDED:
                off = 1
                end -= payload[0] if payload else 0
            if flags & PRIORITY_FLAG:
                off += 5
            if end < off:
                self._protocol_error(s, sid)
                s.hpack.lose_state()
                return
            b = _Block(HEADERS, sid, bool(flags & _END_STREAM), 0, ts)
            self._fragment(s, b, payload[off:end], flags)
        elif t == CONTINUATION:
            if block is None:
                return  # its HEADERS was lost (or never sent): nothing to attach it to
            self._fragment(s, block, payload, flags)
        elif t == RST_STREAM:
            st = self.streams.get(sid)
            if st is not None and len(payload) >= 4:
                st.flag(Flag.RESET)
                st.info["rst_error"] = error_name(_U32.unpack_from(payload)[0])
                self._emit(st)
        elif t == SETTINGS:
            if not flags & _ACK:
                self._settings(s, payload)
        elif t == PUSH_PROMISE:
            if not sid or len(payload) < 4:
                return
            off, end = 0, len(payload)
            if flags & PADDED:
                off = 1
                end -= payload[0]
            if end < off + 4:
                self._protocol_error(s, sid)
                s.hpack.lose_state()
                return
            promised = _U32.unpack_from(payload, off)[0] & 0x7FFFFFFF
            b = _Block(PUSH_PROMISE, sid, False, promised, ts)
            self._fragment(s, b, payload[off + 4 : end], flags)
        elif t == GOAWAY and len(payload) >= 8:
            last, code = struct.unpack_from(">LL", payload)
            self._goaway(s, last & 0x7FFFFFFF, error_name(code))
        # PRIORITY, PING, WINDOW_UPDATE and unknown types carry nothing a call shows

    def _fragment(self, s: _Dir, b: _Block, frag: bytes, flags: int) -> None:
        if not b.overflow:
            if b.size + len(frag) > self.max_block:
                b.overflow = True  # a CONTINUATION flood, or a huge block: not kept
                b.frags = []
                b.size = 0
            else:
                b.frags.append(frag)
                b.size += len(frag)
        if flags & _END_HEADERS:
            s.block = None
            self._block_done(s, b)
        else:
            s.block = b

    def _settings(self, s: _Dir, payload: bytes) -> None:
        """Settings sent by direction ``s`` bind what the *other* direction sends."""
        other = self.dirs[1 - s.d]
        for off in range(0, len(payload) - 5, 6):
            ident, value = _SETTING.unpack_from(payload, off)
            if ident == 1:  # SETTINGS_HEADER_TABLE_SIZE: the other side's encoder, our decoder of it
                other.hpack.set_limit(value)
            elif ident == 5:  # SETTINGS_MAX_FRAME_SIZE
                other.hint = min(max(value, DEFAULT_MAX_FRAME), MAX_FRAME_CAP)

    def _goaway(self, s: _Dir, last: int, error: str) -> None:
        """Streams above ``last`` that the GOAWAY's receiver opened will never be processed."""
        self.goaway = (last, error)
        sender_is_client = self.client_dir == s.d if self.client_dir is not None else None
        for st in list(self.streams.values()):
            if st.sid <= last:
                continue
            if sender_is_client is not None and (st.sid & 1) != (0 if sender_is_client else 1):
                continue  # opened by the GOAWAY's sender: not covered
            h0, h1 = st.halves
            if h0.ended and h1.ended:
                continue
            st.flag(Flag.GOAWAY)
            st.info["goaway_error"] = error
            self._emit(st)

    # ------------------------------------------------------------------ header blocks
    def _block_done(self, s: _Dir, b: _Block) -> None:
        d = s.d
        if b.overflow:
            s.hpack.lose_state()
            fields: list[Header] = []
            desync = True
            error: str | None = "header block too large"
        else:
            raw = b.frags[0] if len(b.frags) == 1 else b"".join(b.frags)
            res = s.hpack.decode(raw)
            fields, desync, error = res.headers, res.desync, res.error
        if b.kind == PUSH_PROMISE:
            if self.client_dir is None:
                self._set_client(1 - d)
            if b.sid in self.done and b.promised in self.done:
                return
            st = self._stream(b.promised, b.ts)
            if st is None:
                return
            st.flag(Flag.SERVER_PUSH)
            half = st.halves[1 - d]  # the promised request belongs to the client's half
            half.seen = True
            half.headers = fields
            half.ended = True
            if half.ts is None:
                half.ts = b.ts
            half.hts = b.ts
            self._block_flags(st, desync, error)
            return
        # HEADERS
        method = status = None
        for k, v in fields:
            if k and k[0] == ":":
                if k == ":method":
                    method = v
                elif k == ":status":
                    status = v
            else:
                break
        if self.client_dir is None:
            if method is not None:
                self._set_client(d)
            elif status is not None:
                self._set_client(1 - d)
        if b.sid in self.done:
            return  # a late block (trailers after a reset): decoded for the table, nothing to show
        st = self._stream(b.sid, b.ts)
        if st is None:
            return
        half = st.halves[d]
        half.seen = True
        if half.ts is None:
            half.ts = b.ts
        self._block_flags(st, desync, error)
        if half.headers is None:
            code = _status(status)
            if code is not None and 100 <= code < 200 and code != 101:
                if len(half.interim) < _MAX_INTERIM:
                    half.interim.append(code)
                if half.hts is None:
                    half.hts = b.ts
            else:
                half.headers = fields
                half.hts = b.ts
        elif half.trailers:
            half.trailers.extend(fields)
        else:
            half.trailers = fields
        if b.end_stream:
            self._end(b.sid, d)

    def _block_flags(self, st: _Stream, desync: bool, error: str | None) -> None:
        if desync:
            st.flag(Flag.HPACK_DESYNC)
        if error is not None:
            st.flag(Flag.PARSE_ERROR)
            st.info["hpack_error"] = error

    # ------------------------------------------------------------------ streams
    def _stream(self, sid: int, ts: int | None = None) -> _Stream | None:
        """The stream ``sid``, created if new; None for the connection (0) and emitted streams."""
        st = self.streams.get(sid)
        if st is not None:
            return st
        if not sid or sid in self.done:
            return None
        if len(self.streams) >= self.max_pending:
            old = next(iter(self.streams.values()))
            old.info.setdefault("weird", []).append("pending-overflow")
            self._emit(old)
        st = _Stream(sid)
        self.streams[sid] = st
        return st

    def _data_start(self, s: _Dir, sid: int, flags: int, body: int, ts: int) -> None:
        st = self._stream(sid, ts) if sid not in self.done else None
        s.data_sid = sid if st is not None else 0
        s.data_end = bool(flags & _END_STREAM)
        if st is not None:
            half = st.halves[s.d]
            half.seen = True
            if half.ts is None:
                half.ts = ts

    def _body(self, sid: int, d: int, chunk: bytes) -> None:
        st = self.streams.get(sid)
        if st is None:
            return
        half = st.halves[d]
        n = len(chunk)
        half.wire += n
        room = self.max_body - half.kept
        if room <= 0:
            half.lost = True
            return
        want = n if n <= room else room
        got = self.ctx.budget.take(want)
        half.budget += got
        if got:
            half.body += chunk if got == n else chunk[:got]
            half.kept += got
        if got < n:
            half.lost = True

    def _end(self, sid: int, d: int) -> None:
        st = self.streams.get(sid)
        if st is None:
            return
        h = st.halves
        h[d].ended = True
        if h[0].ended and h[1].ended:
            self._emit(st)

    # ------------------------------------------------------------------ losses
    def _gap(self, s: _Dir, n: int, flag: str) -> None:
        if s.state == _START:
            s.state = _RESYNC
            s.hpack.lose_state()
        if s.left:  # inside a streamed or skipped payload
            lost = n if n <= s.left else s.left
            if s.data_sid:
                st = self.streams.get(s.data_sid)
                if st is not None:
                    half = st.halves[s.d]
                    body_lost = lost if lost <= s.data_left else s.data_left
                    s.data_left -= body_lost
                    half.wire += body_lost
                    half.lost = True
                    st.flag(flag)
            s.left -= lost
            n -= lost
            if not s.left:
                self._frame_done(s)
            if not n:
                return
        elif s.state == _FRAMES and len(s.buf) >= 9:
            length, t, flags, sid, _ = header(s.buf, 0)
            r = 9 + length - len(s.buf)  # bytes of this frame still to come
            if r > 0:
                s.buf = b""
                self._lose_frame(s, t, sid, flags, flag, length)
                if n < r:
                    s.left, s.data_sid = r - n, 0
                    s.base += n
                    return
                n -= r
                if s.lost_kind >= 0:
                    s.lost_kind = -1
                if not n:
                    return
        # the gap swallowed a frame header: find the next boundary
        self._lost_boundary(s, flag)

    def _lose_frame(
        self, s: _Dir, t: int, sid: int, flags: int, flag: str | None = None, length: int = 0
    ) -> None:
        """A whole non-DATA frame is lost (a gap, or too large to keep)."""
        s.lost_kind, s.lost_sid = t, sid
        if t in (HEADERS, CONTINUATION, PUSH_PROMISE):
            s.hpack.lose_state()
            if s.block is not None:
                sid = s.block.sid
            s.block = None
            st = self.streams.get(sid) if sid not in self.done else None
            if st is None and t == HEADERS:
                st = self._stream(sid)
            if st is not None:
                st.flag(flag or Flag.PARSE_ERROR)
                st.halves[s.d].seen = True
                if flags & _END_STREAM and t == HEADERS:
                    self._end(sid, s.d)
        elif t == DATA:
            st = self.streams.get(sid)
            if st is not None:
                half = st.halves[s.d]
                half.seen = True
                half.lost = True
                half.wire += length
                st.flag(flag or Flag.PARSE_ERROR)
                if flags & _END_STREAM:
                    self._end(sid, s.d)
        elif flag is not None:
            st = self.streams.get(sid)
            if st is not None:
                st.flag(flag)

    def _lost_boundary(self, s: _Dir, flag: str) -> None:
        s.state = _RESYNC
        s.buf = b""
        s.left = 0
        s.data_sid = 0
        s.starts = []
        s.hpack.lose_state()
        if s.block is not None:
            st = self.streams.get(s.block.sid)
            if st is not None:
                st.flag(flag)
            s.block = None
        for st in self.streams.values():  # any open stream may have lost bytes of this direction
            h = st.halves[s.d]
            if not h.ended:
                st.flag(flag)

    def _protocol_error(self, s: _Dir, sid: int) -> None:
        st = self.streams.get(sid)
        if st is not None:
            st.flag(Flag.PARSE_ERROR)

    def _resync(self, s: _Dir, buf: bytes, pos: int) -> int:
        """Find the next frame boundary in ``buf[pos:]``; returns where to go on from."""
        n = len(buf)
        pre = buf.find(PREFACE, pos)
        client = None if self.client_dir is None else self.client_dir == s.d
        hint = s.hint
        pattern = _CANDIDATE_SMALL if hint <= DEFAULT_MAX_FRAME else _CANDIDATE
        starts = s.starts
        base = s.base
        for m in pattern.finditer(buf, pos):
            c = m.start()
            if 0 <= pre < c:
                break
            r = chain(buf, c, hint, client, aligned=(base + c) in starts)
            if r == OK:
                self.skipped += c - pos
                s.state = _FRAMES
                return c
            if r == WAIT:
                self.skipped += c - pos
                return c  # keep the candidate and wait for more bytes
        if pre >= 0:
            self.skipped += pre - pos
            if self.client_dir is None:
                self._set_client(s.d)
            s.state = _FRAMES  # a preface: the connection starts here, with empty tables
            s.hpack = HpackDecoder(True)
            return pre + 24
        keep = max(pos, n - 8)
        self.skipped += keep - pos
        if len(starts) > 1:
            s.starts = [x for x in starts if x >= base + keep]
        return keep

    def _resync_at_close(self, s: _Dir, ts: int) -> None:
        """Still resynchronising at the end: trust a frame at a packet start (its successor never came)."""
        buf = s.buf
        client = None if self.client_dir is None else self.client_dir == s.d
        for x in s.starts:
            c = x - s.base
            if 0 <= c <= len(buf) - 9 and chain(buf, c, s.hint, client, aligned=True) != 0:
                s.state = _FRAMES
                s.buf = b""
                self._run(s, buf[c:], ts)
                return

    def _internal_error(self, s: _Dir) -> None:
        """A bug must not take the pipeline down: note it and resynchronise that direction."""
        if self.strict:
            raise
        self.internal_errors += 1
        try:
            s.state = _RESYNC
            s.buf = b""
            s.left = 0
            s.data_sid = 0
            s.block = None
            s.hpack.lose_state()
        except Exception:  # pragma: no cover
            pass

    # ------------------------------------------------------------------ calls
    def _emit(self, st: _Stream) -> None:
        sid = st.sid
        if self.streams.pop(sid, None) is None:
            return
        done = self.done
        done[sid] = None
        if len(done) > _MAX_DONE:
            del done[next(iter(done))]
        ctx = self.ctx
        cd = self.client_dir
        if cd is None:
            cd = self._guess_client()
        qh, ph = st.halves[cd], st.halves[1 - cd]
        info: dict[str, Any] = {"http_version": "2", "stream_id": sid}
        info.update(st.info)
        flags = list(st.flags)
        req_headers = qh.headers
        resp_headers = ph.headers
        content_type = _get(req_headers, "content-type") or _get(resp_headers, "content-type")
        grpc = _is_grpc(content_type)
        request = self._message(qh, grpc, info, "request_") if qh.seen else None
        response = self._message(ph, grpc, info, "") if ph.seen else None
        budget = qh.budget + ph.budget
        qh.budget = ph.budget = 0
        method = st.method if st.method is not None else _get(req_headers, ":method")
        target: str | None
        if st.target is not None:
            target = st.target
        elif method == "CONNECT":
            target = _get(req_headers, ":authority")
        else:
            target = _get(req_headers, ":path")
        if ph.interim:
            info["interim"] = ph.interim
        call = Call(
            protocol="http2",
            src=self._src,
            dst=self._dst,
            transport=ctx.transport,
            flow_id=ctx.flow_id,
            request_ts=qh.ts,
            response_ts=ph.hts if ph.hts is not None else ph.ts,
            method=method,
            target=target,
            status=_status(_get(resp_headers, ":status")),
            request=request,
            response=response,
            info=info,
            flags=flags,
        )
        if req_headers is None:
            call.flag(Flag.REQUEST_MISSING)
            if self.midstream:
                call.flag(Flag.MID_STREAM)
        if response is None:
            call.flag(Flag.RESPONSE_MISSING)
        if qh.lost or ph.lost:
            call.flag(Flag.TRUNCATED)
        if grpc:
            self._grpc(call)
        if budget:
            ctx.budget.give(budget)
        ctx.emit(call)

    def _message(self, h: _Half, grpc: bool, info: dict[str, Any], prefix: str) -> Message:
        raw = bytes(h.body)
        h.body = bytearray()
        h.kept = 0
        headers = h.headers if h.headers is not None else []
        if grpc:
            body, size, truncated = raw, len(raw), h.lost
        else:
            enc = _get(headers, "content-encoding")
            if enc:
                res = decode_body(raw, enc, self.max_body, complete=not h.lost)
                body, size, truncated = res.body, res.size, res.truncated
                if res.error is not None:
                    info[prefix + "content_encoding_error"] = res.error
                elif res.encodings:
                    info[prefix + "content_encoding"] = ",".join(res.encodings)
            else:
                body, size, truncated = raw, len(raw), h.lost
        return Message(
            headers=headers,
            trailers=h.trailers,
            body=body,
            body_size=size,
            wire_size=h.wire,
            truncated=truncated,
        )

    def _grpc(self, call: Call) -> None:
        try:
            from dissect import grpc
        except ImportError:  # pragma: no cover - the gRPC module ships with podshark
            return
        try:
            grpc.apply(call, self.ctx.limits)
        except Exception:
            if self.strict:
                raise
            call.flag(Flag.PARSE_ERROR)

    def _guess_client(self) -> int:
        """No content said which side is the client: the side on the higher port, else direction 0."""
        a, b = self.ctx.endpoints
        d = 1 if (a.port is not None and b.port is not None and b.port > a.port) else 0
        self._set_client(d)
        return d


def _get(headers: list[Header] | None, name: str) -> str | None:
    if not headers:
        return None
    for k, v in headers:
        if k == name or (k.lower() == name):
            return v
    return None


def _status(v: str | None) -> int | None:
    if v is None:
        return None
    t = v.strip()
    if len(t) == 3 and t.isdigit():
        return int(t)
    return None


def _is_grpc(content_type: str | None) -> bool:
    if not content_type:
        return False
    try:
        from dissect.grpc import is_grpc
    except ImportError:  # pragma: no cover
        return content_type.lower().startswith("application/grpc")
    return is_grpc(content_type)
