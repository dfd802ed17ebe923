"""DNS conversations: one dissector per UDP flow or TCP connection, queries paired with responses.

Framing: over UDP every ``feed`` is one datagram and one message; over TCP each message has a
2-byte length prefix (RFC 1035 4.2.2), several messages share a connection and one may be split
across segments. The TCP buffer of a direction never holds more than one message (65535 + 2 bytes)
in sync; a gap inside a message whose length is known keeps the framing (the message comes out cut,
flagged ``gap``/``snaplen``, and the rest of it is skipped); a gap at or across a boundary — or a
capture that started inside the connection — resynchronises at the next length-prefixed message
that parses cleanly, and gives up on the direction's remaining bytes (``resync-failed``) when none
shows up within `RESYNC_LIMIT` bytes.

Pairing is by (client direction, transaction id), with the question checked: a response whose
first question is not its query's (name compared case-insensitively, type, class) is a mismatch —
a call of its own flagged ``request-missing`` with ``question-mismatch`` in ``info["weird"]`` —
and the query keeps waiting. The same query sent again while it waits (same id, same questions) is
a retransmission: one call, counted in ``info["retransmits"]``. A query with no answer is emitted
``response-missing`` once a later message on the flow arrives more than `DNS_TIMEOUT_NS` (capture
time) after its last transmission, when more than ``Limits.max_pending`` wait (the oldest), or at
close (the engine closes idle UDP flows after ``Limits.udp_idle_timeout_ns`` and everything at the
end of input). A response that answers nothing waiting is ``request-missing`` (``method`` and
``target`` null, the name in ``info["qname"]``); one that repeats a response already paired (same
id and question, within the timeout) is also flagged ``retransmission``.

The call (design.md, summary table): ``method`` = opcode name, ``target`` = the first question's
name as sent (no trailing dot, "." for the root), ``status`` = rcode (extended by OPT), headers
empty, ``body`` = the raw message. ``info``:

- ``id``, ``qname``, ``qtype`` ("A", "TYPE65280" when unnamed), ``qclass``; ``questions`` when
  there are several; ``variant`` "mdns"/"llmnr" on ports 5353/5355;
- from the response: ``rcode_name``, ``answers``, ``authority``, ``additional`` (records as dicts:
  ``name``, ``type`` (name, or the number when unnamed), ``ttl``, ``data`` in presentation form,
  typed fields for MX/SRV/SOA/TXT/CAA/SVCB, ``rdata_hex`` for undecoded types), ``omitted_records``;
- ``flags``: ``aa tc rd ra ad cd`` of the response (of the query when there is none);
  ``truncated``: True when the response has TC (the call is flagged ``truncated`` too);
- ``edns``: the query's OPT (``udp_size``, ``do``, ``version``, ``client_subnet`` "1.2.3.0/24",
  ``options``); ``response_edns``: the response's; ``query_records``: records a query carried
  (UPDATE prerequisites and updates, mDNS known answers);
- ``retransmits``, ``weird`` (``compression-loop``, ``counts-exceed-length``, ``bad-rdata``,
  ``question-mismatch``, ``trailing-bytes``…).

Flags: ``parse-error`` (malformed message: what could be read is kept), ``truncated`` (TC, or a
message cut by a gap or the end of the connection), ``gap``/``snaplen``, ``response-missing``,
``request-missing``, ``retransmission``.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from dissect.base import ConnContext, Handoff
from dissect.dns.message import (
    HEADER_LEN,
    DNSMessage,
    class_name,
    header_plausible,
    opcode_name,
    parse_message,
    rcode_name,
    type_name,
)
from dissect.model import Call, Flag, Message

__all__ = ["DNS_TIMEOUT_NS", "MAX_TCP_MESSAGE", "RESYNC_LIMIT", "DNSDissector", "variant_of"]

DNS_TIMEOUT_NS = 5 * 1_000_000_000  # a query unanswered this long (capture time) is response-missing
MAX_TCP_MESSAGE = 65535
RESYNC_LIMIT = 256 << 10  # bytes skipped looking for a message boundary before giving up
RECENT_ANSWERED = 64  # paired responses remembered to recognise duplicates
_CUT_ERRORS = frozenset(("message-cut", "rdata-out-of-bounds", "name-out-of-bounds"))
VARIANT_PORTS = {5353: "mdns", 5355: "llmnr"}


def variant_of(ctx: ConnContext) -> str | None:
    """mDNS or LLMNR (DNS wire format on their own ports), by the flow's ports; None for plain DNS."""
    for ep in ctx.endpoints:
        v = VARIANT_PORTS.get(ep.port or 0)
        if v is not None:
            return v
    return None


@dataclass(slots=True, eq=False)
class _Half:
    """One message seen: a query waiting, or a response."""

    msg: DNSMessage
    raw: bytes
    ts: int
    dir: int
    flags: list[str] = field(default_factory=list)
    truncated: bool = False  # cut by a gap, the snap length or the end of the connection
    last_ts: int = 0  # queries: time of the last retransmission
    retransmits: int = 0
    seq: int = 0
    charged: int = 0  # bytes taken from the shared budget while waiting
    call: Call | None = None  # set once emitted (for a snap-length gap that follows the datagram)
    partner: _Half | None = None  # the other half of that call

    def flag(self, *names: str) -> None:
        for n in names:
            if n not in self.flags:
                self.flags.append(n)


class _Stream:
    """One direction of a TCP connection: the length-prefixed framing state."""

    __slots__ = ("buf", "gave_up", "head_ts", "loss", "notes", "resync", "skip", "skipped")

    def __init__(self, resync: bool) -> None:
        self.buf = bytearray()
        self.head_ts = 0  # capture time of the segment that carried buf[0]
        self.skip = 0  # bytes of a cut message still to come (dropped on arrival)
        self.resync = resync  # looking for a message boundary
        self.skipped = 0  # bytes dropped while resynchronising
        self.gave_up = False
        self.loss: str | None = None  # "gap"/"snaplen" seen since the last message
        self.notes: list[str] = []  # transport notes (retransmission, out-of-order) for the next message


class DNSDissector:
    """The `dissect.base.Dissector` for DNS (and mDNS/LLMNR) over UDP or TCP."""

    def __init__(self, ctx: ConnContext, handoff: Handoff | None = None, strict: bool = False) -> None:
        self.ctx = ctx
        self.strict = strict  # re-raise internal errors (tests); otherwise they are counted
        self.udp = ctx.transport != "tcp"
        self.variant = variant_of(ctx)
        self.mdns = self.variant == "mdns"
        mid = not self.udp and not ctx.handshake_seen
        self.streams = (_Stream(mid), _Stream(mid))
        self.pending: OrderedDict[int, _Half] = OrderedDict()  # seq -> waiting query, oldest first
        self.by_id: dict[tuple[int, int], list[_Half]] = {}  # (client dir, id) -> waiting queries
        self.answered: OrderedDict[tuple[int, int, tuple[str, int, int] | None], int] = OrderedDict()
        self.last: list[_Half | None] = [None, None]  # the message of each direction's last datagram
        self.seq = 0
        self.loss: str | None = None  # a gap was seen: unpaired calls from now on carry it
        self.undecodable = 0  # messages shorter than a header
        self.internal_errors = 0
        self.closed = False
        if handoff is not None:
            for d in (0, 1):
                if handoff.pending[d]:
                    self.feed(d, handoff.pending[d], handoff.ts)

    # ------------------------------------------------------------------ Dissector contract
    def feed(self, direction: int, data: bytes, ts: int) -> None:
        if self.closed or not data:
            return
        d = direction & 1
        try:
            self._expire(ts)
            if self.udp:
                self.last[d] = None
                self._message(d, bytes(data), ts, self.streams[d])
            else:
                self._tcp_feed(d, data, ts)
        except Exception:
            self._internal_error()

    def gap(self, direction: int, n: int, ts: int, snaplen: bool = False) -> None:
        if self.closed or n <= 0:
            return
        d = direction & 1
        what = Flag.SNAPLEN if snaplen else Flag.GAP
        try:
            if self.udp:
                self._udp_cut(d, what)
            else:
                self._tcp_gap(d, n, ts, what)
        except Exception:
            self._internal_error()

    def note(self, direction: int, flag: str) -> None:
        notes = self.streams[direction & 1].notes
        if flag not in notes and len(notes) < 8:
            notes.append(flag)

    def close(self, ts: int) -> None:
        if self.closed:
            return
        try:
            if not self.udp:
                for d in (0, 1):
                    st = self.streams[d]
                    if not st.resync and not st.gave_up and len(st.buf) >= 2 + HEADER_LEN:
                        raw = bytes(st.buf[2:])
                        st.buf.clear()
                        self._message(d, raw, st.head_ts, st, cut=Flag.TRUNCATED)
            while self.pending:
                _, q = self.pending.popitem(last=False)
                self._unlink(q)
                self._emit(q, None)
        except Exception:
            self._internal_error()
        self.closed = True

    def buffered_bytes(self) -> int:
        """Bytes held right now: TCP framing buffers plus the raw queries waiting for answers."""
        return (
            len(self.streams[0].buf)
            + len(self.streams[1].buf)
            + sum(len(q.raw) for q in self.pending.values())
        )

    def _internal_error(self) -> None:
        if self.strict:
            raise
        self.internal_errors += 1

    # ------------------------------------------------------------------ TCP framing
    def _tcp_feed(self, d: int, data: bytes, ts: int) -> None:
        st = self.streams[d]
        if st.gave_up:
            return
        if st.skip:
            k = min(st.skip, len(data))
            st.skip -= k
            data = data[k:]
            if not data:
                return
        buf = st.buf
        old = len(buf)  # bytes from earlier segments: a message starting inside them began at head_ts
        if not old:
            st.head_ts = ts
        buf += data
        pos = 0
        while not st.gave_up:
            if st.resync:
                pos, found = self._find_boundary(st, pos)
                if not found:
                    break
                st.resync = False
            if len(buf) - pos < 2:
                break
            length = buf[pos] << 8 | buf[pos + 1]
            if length < HEADER_LEN:  # not a message: the stream is not where we thought
                st.resync = True
                st.loss = st.loss or Flag.GAP
                self.loss = self.loss or Flag.GAP
                continue
            if len(buf) - pos < 2 + length:
                break
            raw = bytes(buf[pos + 2 : pos + 2 + length])
            start_ts = st.head_ts if pos < old else ts
            pos += 2 + length
            self._message(d, raw, start_ts, st)
        if st.gave_up:
            buf.clear()
            return
        if pos:
            if pos >= old:
                st.head_ts = ts
            del buf[:pos]

    def _find_boundary(self, st: _Stream, pos: int) -> tuple[int, bool]:
        """Where the next plausible message starts in ``st.buf`` (from ``pos``), and whether it is sure.

        A candidate is a length prefix whose message parses cleanly to exactly that length and is
        followed by the end of the bytes so far (a segment boundary) or by another plausible header:
        the first one is ``(offset, True)``. Without one, ``(offset, False)``: wait for more bytes,
        keeping those from ``offset`` on (the first candidate still arriving, or the last bytes that
        could start a header). Each call scans the whole (bounded) buffer, so a false candidate with
        a large length does not hide a real boundary behind it.
        Bytes that can start nothing are dropped and counted; past `RESYNC_LIMIT` of them the
        direction is given up.
        """
        buf = st.buf
        n = len(buf)
        p = pos
        wait = -1  # the first candidate that needs more bytes to be judged
        while p + 2 + HEADER_LEN <= n:
            length = buf[p] << 8 | buf[p + 1]
            if length >= HEADER_LEN and header_plausible(buf, p + 2, length):
                end = p + 2 + length
                if end > n:
                    if wait < 0:
                        wait = p
                else:
                    m = parse_message(bytes(buf[p + 2 : end]), self.mdns)
                    if m is not None and m.error is None and not m.weird:
                        if end == n or (n - end >= 2 + HEADER_LEN and self._plausible_at(buf, end)):
                            self._drop(st, p - pos)
                            return p, True
                        if n - end < 2 + HEADER_LEN and wait < 0:
                            wait = p
            p += 1
        # nothing confirmed: keep from the first candidate still arriving, else the last bytes
        keep = wait if wait >= 0 else max(pos, n - (1 + HEADER_LEN))
        self._drop(st, keep - pos)
        return keep, False

    @staticmethod
    def _plausible_at(buf: bytearray, p: int) -> bool:
        length = buf[p] << 8 | buf[p + 1]
        return length >= HEADER_LEN and header_plausible(buf, p + 2, length)

    def _drop(self, st: _Stream, n: int) -> None:
        if n <= 0:
            return
        st.skipped += n
        if st.skipped > RESYNC_LIMIT and not st.gave_up:
            st.gave_up = True
            self.loss = self.loss or Flag.GAP
            self._weird_all("resync-failed")

    def _tcp_gap(self, d: int, n: int, ts: int, what: str) -> None:
        st = self.streams[d]
        self.loss = what if self.loss is None else self.loss
        st.loss = what
        if st.gave_up:
            return
        if st.skip:
            if n <= st.skip:
                st.skip -= n
                return
            n -= st.skip
            st.skip = 0
            st.resync = True
            st.buf.clear()
            return
        buf = st.buf
        if st.resync or len(buf) < 2:
            st.resync = True
            buf.clear()
            return
        need = 2 + (buf[0] << 8 | buf[1]) - len(buf)  # bytes of the message still to come
        if len(buf) >= 2 + HEADER_LEN:
            raw = bytes(buf[2:])
            self._message(d, raw, st.head_ts, st, cut=what)
        buf.clear()
        if n <= need:
            st.skip = need - n
        else:
            st.resync = True

    # ------------------------------------------------------------------ messages and pairing
    def _udp_cut(self, d: int, what: str) -> None:
        """A snap length (or loss) cut the datagram just fed: mark the message it carried."""
        self.loss = self.loss or what
        half = self.last[d]
        if half is None:
            return
        half.truncated = True
        half.flag(what, Flag.TRUNCATED)
        cut_error = half.msg.error in _CUT_ERRORS
        if cut_error and Flag.PARSE_ERROR in half.flags:
            half.flags.remove(Flag.PARSE_ERROR)
        call = half.call
        if call is not None:  # already emitted during this same packet: still ours to amend
            call.flag(what, Flag.TRUNCATED)
            partner = half.partner
            if (
                cut_error
                and Flag.PARSE_ERROR in call.flags
                and (partner is None or Flag.PARSE_ERROR not in partner.flags)
            ):
                call.flags.remove(Flag.PARSE_ERROR)
            side = call.response if half.msg.qr else call.request
            if side is not None:
                side.truncated = True

    def _message(self, d: int, raw: bytes, ts: int, st: _Stream, cut: str | None = None) -> None:
        msg = parse_message(raw, self.mdns)
        if msg is None:
            self.undecodable += 1
            return
        half = _Half(msg, raw, ts, d, last_ts=ts)
        if st.notes:
            half.flag(*st.notes)
            st.notes.clear()
        if cut is not None:
            half.truncated = True
            half.flag(cut)
            if cut != Flag.TRUNCATED:
                half.flag(Flag.TRUNCATED)
        if msg.error is not None and not (cut is not None and msg.error in _CUT_ERRORS):
            half.flag(Flag.PARSE_ERROR)
        self.last[d] = half
        if msg.qr:
            self._response(half)
        else:
            self._query(half)

    def _query(self, q: _Half) -> None:
        key = (q.dir, q.msg.id)
        waiting = self.by_id.get(key)
        qkey = q.msg.questions_key()
        if waiting:
            for old in waiting:
                if old.msg.questions_key() == qkey and old.msg.opcode == q.msg.opcode:
                    old.retransmits += 1
                    old.last_ts = q.ts
                    old.flag(Flag.RETRANSMISSION)
                    del self.pending[old.seq]  # to the back of the timeout queue
                    self.seq += 1
                    old.seq = self.seq
                    self.pending[old.seq] = old
                    return
        self.seq += 1
        q.seq = self.seq
        q.charged = self.ctx.budget.take(len(q.raw))
        if q.charged < len(q.raw):  # no room left: keep the query, not its bytes
            self.ctx.budget.give(q.charged)
            q.charged = 0
            q.raw = b""
            q.truncated = True
        self.pending[q.seq] = q
        self.by_id.setdefault(key, []).append(q)
        while len(self.pending) > max(1, self.ctx.limits.max_pending):
            _, oldest = self.pending.popitem(last=False)
            self._unlink(oldest)
            self._emit(oldest, None)

    def _response(self, r: _Half) -> None:
        key = (1 - r.dir, r.msg.id)
        waiting = self.by_id.get(key)
        rkey = r.msg.question_key()
        match = None
        if waiting:
            for q in waiting:
                qkey = q.msg.question_key()
                if rkey is None or qkey is None or rkey == qkey:
                    match = q
                    break
            if match is None:
                r.msg.note("question-mismatch")
        if match is not None:
            del self.pending[match.seq]
            self._unlink(match)
            self.answered[(key[0], key[1], rkey)] = r.ts
            if len(self.answered) > RECENT_ANSWERED:
                self.answered.popitem(last=False)
            self._emit(match, r)
            return
        seen = self.answered.get((key[0], key[1], rkey))
        if seen is not None and r.ts - seen <= DNS_TIMEOUT_NS:
            r.flag(Flag.RETRANSMISSION)
        self._emit(None, r)

    def _unlink(self, q: _Half) -> None:
        key = (q.dir, q.msg.id)
        waiting = self.by_id.get(key)
        if waiting is not None:
            waiting[:] = [w for w in waiting if w is not q]
            if not waiting:
                del self.by_id[key]
        if q.charged:
            self.ctx.budget.give(q.charged)
            q.charged = 0

    def _expire(self, now: int) -> None:
        cutoff = now - DNS_TIMEOUT_NS
        pending = self.pending
        while pending:
            seq = next(iter(pending))
            q = pending[seq]
            if q.last_ts >= cutoff:
                break
            del pending[seq]
            self._unlink(q)
            self._emit(q, None)

    def _weird_all(self, word: str) -> None:
        for q in self.pending.values():
            q.msg.note(word)

    # ------------------------------------------------------------------ the call
    def _emit(self, q: _Half | None, r: _Half | None) -> None:
        ctx = self.ctx
        qm = q.msg if q is not None else None
        rm = r.msg if r is not None else None
        first_msg = qm if qm is not None else rm
        assert first_msg is not None
        client = q.dir if q is not None else 1 - r.dir  # type: ignore[union-attr]
        info: dict[str, Any] = {"id": first_msg.id}
        if self.variant is not None:
            info["variant"] = self.variant
        questions = first_msg.questions if first_msg.questions or rm is None else rm.questions
        if questions:
            first = questions[0]
            info["qname"] = first.name
            info["qtype"] = type_name(first.qtype)
            info["qclass"] = class_name(first.qclass)
            if len(questions) > 1:
                info["questions"] = [x.to_dict() for x in questions]
        flags_from = rm if rm is not None else first_msg
        info["flags"] = flags_from.flag_dict()
        if rm is not None:
            info["rcode_name"] = rcode_name(rm.rcode)
            info["answers"] = rm.answers
            info["authority"] = rm.authority
            info["additional"] = rm.additional
            if rm.omitted:
                info["omitted_records"] = rm.omitted
        if qm is not None and qm.edns is not None:
            info["edns"] = qm.edns
        if rm is not None and rm.edns is not None:
            info["response_edns"] = rm.edns
        if qm is not None and (qm.answers or qm.authority or qm.additional):
            info["query_records"] = {
                "answers": qm.answers,
                "authority": qm.authority,
                "additional": qm.additional,
            }
        if q is not None and q.retransmits:
            info["retransmits"] = q.retransmits
        weird: list[str] = []
        for m in (qm, rm):
            if m is not None:
                weird.extend(w for w in m.weird if w not in weird)
        flags: list[str] = []
        for h in (q, r):
            if h is not None:
                flags.extend(f for f in h.flags if f not in flags)
        if rm is not None and rm.tc:
            info["truncated"] = True
            if Flag.TRUNCATED not in flags:
                flags.append(Flag.TRUNCATED)
        if q is None:
            flags.append(Flag.REQUEST_MISSING)
        if r is None:
            flags.append(Flag.RESPONSE_MISSING)
        if (q is None or r is None) and self.loss is not None and self.loss not in flags:
            flags.append(self.loss)
        if weird:
            info["weird"] = weird
        call = Call(
            protocol="dns",
            transport=ctx.transport,
            src=ctx.endpoints[client],
            dst=ctx.endpoints[1 - client],
            flow_id=ctx.flow_id,
            request_ts=q.ts if q is not None else None,
            response_ts=r.ts if r is not None else None,
            method=opcode_name(qm.opcode) if qm is not None else None,
            target=qm.questions[0].name if qm is not None and qm.questions else None,
            status=rm.rcode if rm is not None else None,
            request=_message_of(q),
            response=_message_of(r),
            info=info,
            flags=flags,
        )
        if q is not None:
            q.call, q.partner = call, r
        if r is not None:
            r.call, r.partner = call, q
        ctx.emit(call)


def _message_of(h: _Half | None) -> Message | None:
    if h is None:
        return None
    size = h.msg.size
    return Message(body=h.raw, body_size=size, wire_size=size, truncated=h.truncated)
