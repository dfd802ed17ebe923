"""Kafka connection dissector: size-prefixed framing per direction, pairing by correlation id.

Each direction is a sequence of messages ``[int32 size][size bytes]``. Requests start with the
request header (api_key, api_version, correlation_id, client_id; tagged fields in header v2) and
responses with the response header (correlation_id; tagged fields in header v1). A request is
decoded as soon as it is complete and waits in ``pending`` (keyed by correlation id, with its api
key and version) until its response, which is then decoded at once with that key and version.

Framing keeps us aligned: a gap inside a message of known size loses that message's bytes (it is
flagged ``gap``/``snaplen`` and ``truncated``) but the next message starts where the size says. A
gap that hits a size prefix, or an implausible size, loses the alignment: the direction then hunts
for a plausible request header (client side) or for a size followed by the correlation id of a
waiting request (server side). A capture that starts mid-connection starts hunting too, accepting
a plausible size at the very first byte.

Kafka answers a connection's requests in order, so once the server side has lost bytes, a response
declares every request sent before its own ``response-missing`` (without a loss they keep waiting:
pairing is by correlation id, whatever the order). Produce with ``acks=0`` gets no response at all: it
is emitted at once, with ``info.no_response`` set.

Memory: each direction keeps at most ``Limits.max_body`` bytes of the message in progress (the
rest is counted and skipped: a large Fetch response is decoded from its kept prefix and marked
``truncated``); at most ``Limits.max_pending`` requests wait; the hunt window is 64 KiB.
"""

from __future__ import annotations

import re
import struct
from typing import Any

from dissect.base import ConnContext, Handoff, Verdict
from dissect.kafka.apis import (
    API_NAMES,
    DECODED,
    MAX_API_VERSION,
    Decoded,
    api_name,
    decode_body,
    is_flexible,
    response_header_version,
)
from dissect.kafka.records import RecordBudget
from dissect.kafka.wire import KafkaDecodeError, Reader
from dissect.model import Call, Flag, Message

__all__ = ["MAX_MESSAGE", "KafkaDissector", "find_request", "request_verdict"]

MAX_MESSAGE = 100 << 20  # larger than any broker's socket.request.max.bytes default (100 MiB)
MIN_REQUEST = 10  # api_key, api_version, correlation_id, client_id length
HUNT_WINDOW = 64 << 10
SCAN_LIMIT = 4096  # bytes detection scans for a request header past the first byte
WEAK_WAIT = 60_000  # a request without client id this small must arrive whole before a YES

_SIZE = 0
_BODY = 1
_HUNT = 2

ERROR_NAMES: dict[int, str] = {
    -1: "UNKNOWN_SERVER_ERROR",
    1: "OFFSET_OUT_OF_RANGE",
    2: "CORRUPT_MESSAGE",
    3: "UNKNOWN_TOPIC_OR_PARTITION",
    5: "LEADER_NOT_AVAILABLE",
    6: "NOT_LEADER_OR_FOLLOWER",
    7: "REQUEST_TIMED_OUT",
    10: "MESSAGE_TOO_LARGE",
    14: "COORDINATOR_LOAD_IN_PROGRESS",
    15: "COORDINATOR_NOT_AVAILABLE",
    16: "NOT_COORDINATOR",
    17: "INVALID_TOPIC_EXCEPTION",
    19: "NOT_ENOUGH_REPLICAS",
    22: "ILLEGAL_GENERATION",
    25: "UNKNOWN_MEMBER_ID",
    27: "REBALANCE_IN_PROGRESS",
    29: "TOPIC_AUTHORIZATION_FAILED",
    30: "GROUP_AUTHORIZATION_FAILED",
    31: "CLUSTER_AUTHORIZATION_FAILED",
    35: "UNSUPPORTED_VERSION",
    36: "TOPIC_ALREADY_EXISTS",
    41: "NOT_CONTROLLER",
    42: "INVALID_REQUEST",
    58: "SASL_AUTHENTICATION_FAILED",
    72: "LISTENER_NOT_FOUND",
    79: "MEMBER_ID_REQUIRED",
    82: "FENCED_INSTANCE_ID",
    87: "GROUP_MAX_SIZE_REACHED",
    100: "UNKNOWN_TOPIC_ID",
}


def request_verdict(data: bytes | bytearray, i: int = 0) -> Verdict:
    """Is there a plausible request header at ``data[i:]``? MORE when the bytes stop too early."""
    n = len(data) - i
    if n < 4:
        return Verdict.MORE if n <= 0 or data[i] == 0 else Verdict.NO
    size = int.from_bytes(data[i : i + 4], "big")
    if size < MIN_REQUEST or size > MAX_MESSAGE:
        return Verdict.NO
    if n < 6:
        return Verdict.MORE
    key = (data[i + 4] << 8) | data[i + 5]
    if key not in API_NAMES:
        return Verdict.NO
    if n < 8:
        return Verdict.MORE
    version = (data[i + 6] << 8) | data[i + 7]
    if version > MAX_API_VERSION:
        return Verdict.NO
    if n < 9:
        return Verdict.MORE
    if data[i + 8] & 0x80:  # negative correlation id: no client does that
        return Verdict.NO
    if n < 14:
        return Verdict.MORE
    clen = struct.unpack_from(">h", data, i + 12)[0]
    if clen < -1 or clen > size - MIN_REQUEST:
        return Verdict.NO
    if n < 14 + max(clen, 0):
        return Verdict.MORE
    cid = data[i + 14 : i + 14 + clen] if clen > 0 else b""
    if any(b < 0x20 or b > 0x7E for b in cid):
        return Verdict.NO
    if n >= 4 + size:
        if key in DECODED:
            # the whole request is here: it must decode exactly with its schema
            return Verdict.YES if _decodes(bytes(data[i + 4 : i + 4 + size]), key, version) else Verdict.NO
        return Verdict.YES
    if clen <= 0 and size <= WEAK_WAIT:
        # no client id: weak evidence (a response can look like this); wait for the whole message
        return Verdict.MORE
    return Verdict.YES


def _decodes(msg: bytes, key: int, version: int) -> bool:
    req = _parse_request_header(msg)
    if req is None:
        return False
    schema = DECODED.get(key)
    if schema is None or version > schema[2]:
        return True
    d = decode_body(schema[0], msg, req[4], version, is_flexible(key, version), False, RecordBudget(0))
    return d.complete


# candidate request starts: a size below 16 MiB, an api key below 256, a version below 21
_CANDIDATE = re.compile(rb"(?=\x00.{3}\x00.\x00[\x00-\x14])", re.S)  # lookahead: overlapping


def find_request(data: bytes | bytearray, start: int = 0, limit: int | None = None) -> tuple[int, bool]:
    """The first offset >= ``start`` with a plausible request header: (offset, True) for a YES,
    (offset, False) for the first that needs more bytes, (-1, False) when there is none."""
    end = len(data) if limit is None else min(len(data), limit)
    more = -1
    for m in _CANDIDATE.finditer(data, start, end):
        i = m.start()
        v = request_verdict(data, i)
        if v == Verdict.YES:
            return i, True
        if v == Verdict.MORE and more < 0:
            more = i
    # a tail too short for the pattern may still start a header
    tail = max(start, end - 8)
    if more < 0:
        for i in range(tail, end):
            if request_verdict(data, i) == Verdict.MORE:
                more = i
                break
    return more, False


def _size_chain(buf: bytes | bytearray) -> Verdict:
    """Does ``buf`` start with a size-framed message: YES when the message ends exactly at the end of
    ``buf`` or is followed by another plausible size, MORE when ``buf`` ends inside it."""
    if len(buf) < 4:
        return Verdict.MORE
    size = int.from_bytes(buf[0:4], "big")
    if size < 4 or size > MAX_MESSAGE:
        return Verdict.NO
    end = 4 + size
    if end == len(buf):
        return Verdict.YES
    if end > len(buf) or end + 4 > len(buf):
        return Verdict.MORE
    nxt = int.from_bytes(buf[end : end + 4], "big")
    return Verdict.YES if 4 <= nxt <= MAX_MESSAGE else Verdict.NO


def _parse_request_header(msg: bytes) -> tuple[int, int, int, str | None, int] | None:
    """(api_key, api_version, correlation_id, client_id, body offset) or None when implausible."""
    try:
        r = Reader(msg)
        key, version, corr = r.int16(), r.int16(), r.int32()
        if key not in API_NAMES or not 0 <= version <= MAX_API_VERSION:
            return None
        cid = r.string(False)
        if is_flexible(key, version):
            r.tagged_fields()
        return key, version, corr, cid, r.pos
    except KafkaDecodeError:
        return None


class _Pending:
    __slots__ = (
        "api_key",
        "api_version",
        "client_id",
        "correlation_id",
        "decoded",
        "flags",
        "message",
        "reserved",
        "seq",
        "ts",
    )

    def __init__(self) -> None:
        self.api_key = 0
        self.api_version = 0
        self.correlation_id = 0
        self.client_id: str | None = None
        self.decoded: Decoded | None = None
        self.flags: list[str] = []
        self.message: Message | None = None
        self.reserved = 0
        self.seq = 0
        self.ts = 0


class _Side:
    """One direction's framing state."""

    __slots__ = (
        "buf",
        "flags",
        "fresh",
        "got",
        "hdr",
        "hole",
        "hunt",
        "keep",
        "reserved",
        "size",
        "state",
        "ts",
    )

    def __init__(self, hunting: bool) -> None:
        self.state = _HUNT if hunting else _SIZE
        self.fresh = hunting  # mid-stream: the very first bytes may be a message start of either kind
        self.hdr = bytearray()
        self.hunt = bytearray()
        self.buf = bytearray()
        self.size = 0
        self.got = 0
        self.keep = 0
        self.reserved = 0
        self.hole = False
        self.ts = 0
        self.flags: list[str] = []  # for the message in progress (or the next one)

    def buffered(self) -> int:
        return len(self.hdr) + len(self.hunt) + len(self.buf)


class KafkaDissector:
    """One TCP connection's Kafka dissector (see `dissect.base.Dissector`)."""

    def __init__(self, ctx: ConnContext, handoff: Handoff | None = None, strict: bool = False) -> None:
        self.ctx = ctx
        self.strict = strict  # re-raise internal errors (tests); otherwise they become flags
        hunting = not ctx.handshake_seen
        self.sides = (_Side(hunting), _Side(hunting))
        # with the handshake seen, direction 0 sent the SYN: the Kafka client (it always connects);
        # mid-stream, the first complete message that decodes as a request tells
        self.client: int | None = 0 if ctx.handshake_seen else None
        self.pending: dict[int, _Pending] = {}
        self.seq = 0
        self.closed = False
        self.gapped = [False, False]
        self.parse_errors = 0
        self.internal_errors = 0
        self.conn_flags: list[str] = []  # parse errors etc. not tied to one message
        if handoff is not None:
            if handoff.client_dir is not None:
                self.client = handoff.client_dir
            for d in (0, 1):
                if handoff.pending[d]:
                    self.feed(d, handoff.pending[d], handoff.ts)

    # ------------------------------------------------------------------ Dissector contract
    def feed(self, direction: int, data: bytes, ts: int) -> None:
        if self.closed or not data:
            return
        try:
            self._feed(direction & 1, data, ts)
        except Exception:
            if self.strict:
                raise
            self._internal_error(direction & 1)

    def gap(self, direction: int, n: int, ts: int, snaplen: bool = False) -> None:
        if self.closed or n <= 0:
            return
        try:
            self._gap(direction & 1, n, ts, snaplen)
        except Exception:
            if self.strict:
                raise
            self._internal_error(direction & 1)

    def note(self, direction: int, flag: str) -> None:
        if self.closed:
            return
        side = self.sides[direction & 1]
        if flag not in side.flags:
            side.flags.append(flag)

    def close(self, ts: int) -> None:
        if self.closed:
            return
        try:
            for d in (0, 1):
                side = self.sides[d]
                if side.state == _BODY and side.got > 0:
                    side.flags.append(Flag.TRUNCATED)
                    self._complete(d, ts)
            for p in list(self.pending.values()):
                self._emit_missing(p)
            self.pending.clear()
        except Exception:
            if self.strict:
                raise
            self.internal_errors += 1
        self.closed = True
        for side in self.sides:
            self._release(side)
            side.hunt = bytearray()
            side.hdr = bytearray()

    def buffered_bytes(self) -> int:
        """Bytes held: messages in progress, hunt windows, and the raw bytes of waiting requests."""
        held = sum(s.buffered() for s in self.sides)
        return held + sum(len(p.message.body) for p in self.pending.values() if p.message is not None)

    # ------------------------------------------------------------------ framing
    def _feed(self, d: int, data: bytes, ts: int) -> None:
        side = self.sides[d]
        pos, n = 0, len(data)
        while pos < n:
            if side.state == _BODY:
                take = min(side.size - side.got, n - pos)
                if not side.hole and len(side.buf) < side.keep:
                    room = side.keep - len(side.buf)
                    side.buf += data[pos : pos + min(take, room)]
                side.got += take
                pos += take
                if side.got >= side.size:
                    self._complete(d, ts)
            elif side.state == _SIZE:
                take = min(4 - len(side.hdr), n - pos)
                side.hdr += data[pos : pos + take]
                pos += take
                if len(side.hdr) == 4:
                    self._start(d, ts)
            else:
                self._hunt(d, data[pos:], ts)
                return

    def _start(self, d: int, ts: int) -> None:
        side = self.sides[d]
        size = int.from_bytes(side.hdr, "big")
        if size < 4 or size > MAX_MESSAGE:
            self._parse_error(f"implausible message size {size}")
            side.state = _HUNT
            side.hunt = bytearray(side.hdr[1:])
            side.hdr.clear()
            return
        side.hdr.clear()
        side.state = _BODY
        side.size = size
        side.got = 0
        side.hole = False
        side.ts = ts
        want = min(size, self.ctx.limits.max_body)
        side.reserved = self.ctx.budget.take(want)
        side.keep = side.reserved
        side.buf = bytearray()

    def _hunt(self, d: int, data: bytes, ts: int) -> None:
        side = self.sides[d]
        side.hunt += data
        buf = side.hunt
        if side.fresh:
            at = self._fresh_start(d, buf)
            if at == -2:
                return  # need more bytes to judge the first ones
            side.fresh = False
            more = at >= 0
        else:
            at, more = self._find_start(d, buf)
        if at < 0 or not more:
            keep_from = at if at >= 0 else max(0, len(buf) - 8)
            if len(buf) - keep_from > HUNT_WINDOW:
                keep_from = len(buf) - HUNT_WINDOW
            del buf[:keep_from]
            return
        rest = bytes(buf[at:])
        side.hunt = bytearray()
        side.state = _SIZE
        self._feed(d, rest, ts)

    def _fresh_start(self, d: int, buf: bytearray) -> int:
        """Mid-stream, the first bytes of a direction: the offset of the first message start found,
        -1 when there is none, -2 when more bytes are needed to tell."""
        maybe_request = self.client is None or self.client == d
        if maybe_request:
            v = request_verdict(buf, 0)
            if v == Verdict.YES:
                return 0
            if v == Verdict.MORE and len(buf) < HUNT_WINDOW:
                return -2
        chain = _size_chain(buf)
        if chain == Verdict.YES or (chain != Verdict.NO and self.client is not None and self.client != d):
            # a response (or a request of an API we cannot check) starting at the first byte: its
            # size is followed by another plausible size or ends exactly where the bytes do
            return 0
        at, yes = self._find_start(d, buf) if maybe_request else (-1, False)
        if yes:
            return at
        if chain == Verdict.MORE and len(buf) < HUNT_WINDOW:
            return -2
        return -1

    def _find_start(self, d: int, buf: bytearray) -> tuple[int, bool]:
        if self.client is None or self.client == d:
            return find_request(buf)
        # server side: a plausible size followed by the correlation id of a waiting request
        more = -1
        for corr in self.pending:
            pat = corr.to_bytes(4, "big", signed=True)
            i = buf.find(pat, 4)
            while i >= 4:
                size = int.from_bytes(buf[i - 4 : i], "big")
                if 4 <= size <= MAX_MESSAGE:
                    return i - 4, True
                i = buf.find(pat, i + 1)
        return more, False

    def _gap(self, d: int, n: int, ts: int, snaplen: bool) -> None:
        side = self.sides[d]
        self.gapped[d] = True
        flag = Flag.SNAPLEN if snaplen else Flag.GAP
        if side.state == _BODY:
            rem = side.size - side.got
            side.hole = True
            if flag not in side.flags:
                side.flags.append(flag)
            if n < rem:
                side.got += n
                return
            side.got = side.size
            self._complete(d, ts)
            n -= rem
            if n == 0:
                return  # the gap ended exactly at the message end: still aligned
        # alignment lost
        side.hdr.clear()
        side.hunt.clear()
        side.state = _HUNT
        if flag not in side.flags:
            side.flags.append(flag)

    def _release(self, side: _Side) -> None:
        if side.reserved:
            self.ctx.budget.give(side.reserved)
            side.reserved = 0
        side.buf = bytearray()

    def _complete(self, d: int, ts: int) -> None:
        side = self.sides[d]
        msg = bytes(side.buf)
        size = side.size
        flags = side.flags
        side.flags = []
        start_ts = side.ts
        self._release(side)
        side.state = _SIZE
        side.size = side.got = 0
        cut = len(msg) < size
        if cut and Flag.TRUNCATED not in flags:
            flags.append(Flag.TRUNCATED)
        if self.client is None:
            self.client = d if self._looks_like_request(msg, cut) else 1 - d
        if d == self.client:
            self._request(msg, size, cut, flags, start_ts)
        else:
            self._response(msg, size, cut, flags, ts)

    def _looks_like_request(self, msg: bytes, cut: bool) -> bool:
        hdr = _parse_request_header(msg)
        if hdr is None:
            return False
        if cut:
            return True
        return _decodes(msg, hdr[0], hdr[1])

    # ------------------------------------------------------------------ messages
    def _message(self, msg: bytes, size: int, cut: bool) -> Message:
        return Message(headers=[], body=msg, body_size=size, wire_size=size + 4, truncated=cut)

    def _request(self, msg: bytes, size: int, cut: bool, flags: list[str], ts: int) -> None:
        hdr = _parse_request_header(msg)
        if hdr is None:
            self._parse_error("request header not plausible")
            return
        key, version, corr, cid, body_at = hdr
        p = _Pending()
        p.api_key, p.api_version, p.correlation_id, p.client_id = key, version, corr, cid
        p.ts = ts
        p.flags = flags
        p.message = self._message(msg, size, cut)
        self.seq += 1
        p.seq = self.seq
        schema = DECODED.get(key)
        if schema is not None and version <= schema[2]:
            p.decoded = decode_body(
                schema[0], msg, body_at, version, is_flexible(key, version), cut, self._budget()
            )
        if key == 0 and p.decoded is not None and p.decoded.body.get("acks") == 0:
            self._emit(p, None, None, no_response=True)
            return
        old = self.pending.pop(corr, None)
        if old is not None:
            self._emit_missing(old)
        self.pending[corr] = p
        while len(self.pending) > self.ctx.limits.max_pending:
            oldest = next(iter(self.pending))
            self._emit_missing(self.pending.pop(oldest))

    def _budget(self) -> RecordBudget:
        return RecordBudget(max_decompressed=self.ctx.limits.max_body)

    def _response(self, msg: bytes, size: int, cut: bool, flags: list[str], ts: int) -> None:
        if len(msg) < 4:
            self._parse_error("response shorter than its header")
            return
        corr = struct.unpack_from(">i", msg, 0)[0]
        p = self.pending.pop(corr, None)
        resp = self._message(msg, size, cut)
        if p is None:
            self._emit_orphan(corr, resp, flags, ts)
            return
        # Kafka answers a connection's requests in order, so after a loss on the server side every
        # request sent before this one will not be answered any more. Without a loss they wait:
        # pairing is by correlation id, so an out-of-order answer still finds its request.
        while self.pending and self.gapped[1 - (self.client or 0)]:
            first = next(iter(self.pending.values()))
            if first.seq > p.seq:
                break
            self._emit_missing(self.pending.pop(first.correlation_id))
        decoded: Decoded | None = None
        schema = DECODED.get(p.api_key)
        key, version = p.api_key, p.api_version
        if schema is not None and version <= schema[2]:
            try:
                r = Reader(msg, 4)
                if response_header_version(key, version) == 1:
                    r.tagged_fields()
                at = r.pos
            except KafkaDecodeError:
                at = -1
            if at >= 0:
                decoded = decode_body(
                    schema[1], msg, at, version, is_flexible(key, version), cut, self._budget()
                )
                if key == 18 and not decoded.complete and version > 0:
                    # a broker that does not support the version answers ApiVersions in v0 (KIP-511)
                    v0 = decode_body(schema[1], msg, at, 0, False, cut, self._budget())
                    if v0.complete:
                        decoded = v0
        self._emit(p, resp, decoded, resp_flags=flags, resp_ts=ts)

    # ------------------------------------------------------------------ calls
    def _endpoints(self) -> tuple[Any, Any]:
        c = 0 if self.client is None else self.client
        return self.ctx.endpoints[c], self.ctx.endpoints[1 - c]

    def _emit(
        self,
        p: _Pending,
        resp: Message | None,
        decoded: Decoded | None,
        resp_flags: list[str] | None = None,
        resp_ts: int | None = None,
        no_response: bool = False,
    ) -> None:
        src, dst = self._endpoints()
        info: dict[str, Any] = {
            "api_key": p.api_key,
            "api_version": p.api_version,
            "correlation_id": p.correlation_id,
            "client_id": p.client_id,
        }
        req_dec = p.decoded
        decoded_ok = req_dec is not None
        info["decoded"] = decoded_ok and (resp is None or decoded is not None)
        target = ""
        if req_dec is not None:
            info["request"] = req_dec.body
            target = ",".join(req_dec.topics)
            if req_dec.error:
                info.setdefault("decode_errors", []).append(f"request: {req_dec.error}")
        flags = list(p.flags)
        status: int | None = None
        if decoded is not None:
            info["response"] = decoded.body
            status = decoded.status
            if decoded.error:
                info.setdefault("decode_errors", []).append(f"response: {decoded.error}")
        if status:
            info["error"] = ERROR_NAMES.get(status, str(status))
        count = _record_count(req_dec, decoded, p.api_key)
        if count is not None:
            info["record_count"] = count
        if no_response:
            info["no_response"] = True  # Produce with acks=0: the broker sends nothing back
        for f in resp_flags or ():
            if f not in flags:
                flags.append(f)
        if resp is None and not no_response:
            flags.append(Flag.RESPONSE_MISSING)
            if self.gapped[1 - (self.client or 0)] and Flag.GAP not in flags:
                flags.append(Flag.GAP)
        if "decode_errors" in info and any(
            not e.split(": ", 1)[1].startswith("cut") for e in info["decode_errors"]
        ):
            flags.append(Flag.PARSE_ERROR)
        self._flush_conn_flags(flags)
        call = Call(
            protocol="kafka",
            transport=self.ctx.transport,
            src=src,
            dst=dst,
            request_ts=p.ts,
            response_ts=resp_ts if resp is not None else None,
            method=api_name(p.api_key),
            target=target,
            status=status,
            request=p.message,
            response=resp,
            info=info,
            flags=flags,
            flow_id=self.ctx.flow_id,
        )
        self.ctx.emit(call.finish())

    def _emit_missing(self, p: _Pending) -> None:
        self._emit(p, None, None)

    def _emit_orphan(self, corr: int, resp: Message, flags: list[str], ts: int) -> None:
        src, dst = self._endpoints()
        flags = list(flags)
        flags.append(Flag.REQUEST_MISSING)
        if not self.ctx.handshake_seen:
            flags.append(Flag.MID_STREAM)
        self._flush_conn_flags(flags)
        call = Call(
            protocol="kafka",
            transport=self.ctx.transport,
            src=src,
            dst=dst,
            response_ts=ts,
            response=resp,
            info={"correlation_id": corr, "decoded": False},
            flags=flags,
            flow_id=self.ctx.flow_id,
        )
        self.ctx.emit(call.finish())

    def _flush_conn_flags(self, flags: list[str]) -> None:
        for f in self.conn_flags:
            if f not in flags:
                flags.append(f)
        self.conn_flags.clear()

    def _parse_error(self, what: str) -> None:
        self.parse_errors += 1
        if Flag.PARSE_ERROR not in self.conn_flags:
            self.conn_flags.append(Flag.PARSE_ERROR)

    def _internal_error(self, d: int) -> None:
        """A bug of ours met input it did not expect: drop this direction's state and resync."""
        self.internal_errors += 1
        side = self.sides[d]
        self._release(side)
        side.state = _HUNT
        side.hunt = bytearray()
        side.hdr = bytearray()
        self._parse_error("internal error")


def _record_count(req: Decoded | None, resp: Decoded | None, key: int) -> int | None:
    """Produce requests and Fetch responses: the records they carry (complete counts)."""
    tree: dict[str, Any] | None = None
    if key == 0 and req is not None:
        tree = req.body
        outer, inner = "topic_data", "partition_data"
    elif key == 1 and resp is not None:
        tree = resp.body
        outer, inner = "responses", "partitions"
    if tree is None:
        return None
    total = 0
    for t in tree.get(outer) or ():
        for part in t.get(inner) or ():
            recs = part.get("records")
            if isinstance(recs, dict):
                total += int(recs.get("count", 0))
    return total
