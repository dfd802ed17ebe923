"""The TLS record layer of one direction, streamed: headers parsed, bodies counted, never buffered.

A record is ``type(1) version(2) length(2)`` then ``length`` bytes (RFC 8446 §5.1). `RecordStream`
takes the in-order bytes of one direction in pieces of any size and

- counts records and body bytes per content type;
- reassembles *plaintext handshake messages* (which may span records, and several may share one)
  and hands the ones the owner wants (ClientHello, ServerHello) to it whole, at most
  `MAX_HANDSHAKE_MESSAGE` bytes; other handshake messages are announced by type and skipped;
- hands plaintext alerts (at most `MAX_ALERT_KEPT` body bytes) and ChangeCipherSpec to the owner;
- keeps nothing of application data (or of encrypted handshake): its bytes are only counted —
  unless the owner holds the session's keys and sets ``collect``: then each protected record
  (alert, handshake, application data) is kept whole and handed to ``on_record`` when it ends, so
  it can be decrypted (`dissect.tls.decrypt`); a record a gap hit goes to ``on_record_lost`` and a
  lost boundary to ``on_stream_lost``, so the owner's record sequence number stays right.

So the bytes it holds are at most a record header (5), a handshake header (4), one wanted handshake
message and, when collecting, one record body (`MAX_RECORD`). Nothing raises on input: a record
header that cannot be TLS (unknown type, major version not 3, length over 2^14 + 2048) or a gap that
loses the record boundary makes the stream *lost*; it then resynchronises at the first offset where
two record headers chain (the second one starts exactly where the first one's length says), again
without buffering bodies. The same search finds the first record boundary of a connection captured
mid-stream.
"""

from __future__ import annotations

import re
import struct
from typing import Protocol

__all__ = [
    "ALERT",
    "APPLICATION_DATA",
    "CHANGE_CIPHER_SPEC",
    "CONTENT_TYPES",
    "HANDSHAKE",
    "HANDSHAKE_TYPES",
    "HEARTBEAT",
    "MAX_HANDSHAKE_MESSAGE",
    "MAX_RECORD",
    "RecordHandler",
    "RecordStream",
    "find_record_chain",
    "valid_header",
]

CHANGE_CIPHER_SPEC = 20
ALERT = 21
HANDSHAKE = 22
APPLICATION_DATA = 23
HEARTBEAT = 24
CONTENT_TYPES: dict[int, str] = {
    CHANGE_CIPHER_SPEC: "change_cipher_spec",
    ALERT: "alert",
    HANDSHAKE: "handshake",
    APPLICATION_DATA: "application_data",
    HEARTBEAT: "heartbeat",
}

HANDSHAKE_TYPES: dict[int, str] = {
    0: "hello_request",
    1: "client_hello",
    2: "server_hello",
    4: "new_session_ticket",
    5: "end_of_early_data",
    8: "encrypted_extensions",
    11: "certificate",
    12: "server_key_exchange",
    13: "certificate_request",
    14: "server_hello_done",
    15: "certificate_verify",
    16: "client_key_exchange",
    20: "finished",
    22: "certificate_status",
    24: "key_update",
}

#: The largest record body any version allows (TLSCiphertext: 2^14 + 2048).
MAX_RECORD = (1 << 14) + 2048
#: The largest handshake message reassembled (ClientHellos with post-quantum key shares are ~2 KiB).
MAX_HANDSHAKE_MESSAGE = 64 << 10
#: Alert body bytes kept per record (a plaintext alert is 2 bytes; an encrypted one is longer).
MAX_ALERT_KEPT = 8
#: Record boundary candidates remembered while resynchronising.
MAX_CANDIDATES = 256

_hdr = struct.Struct("!BBBH").unpack_from
# Where a record header could start: a content type, major version 3, minor 0..4 (overlapping matches).
_HEADER_AT = re.compile(rb"(?=[\x14-\x18]\x03[\x00-\x04])")

SYNC, LOST = 0, 1


def valid_header(data: bytes, pos: int = 0) -> int:
    """The body length of a plausible record header at ``pos`` (5 bytes must be there), else -1."""
    ctype, major, minor, length = _hdr(data, pos)
    if ctype < CHANGE_CIPHER_SPEC or ctype > HEARTBEAT or major != 3 or minor > 4 or length > MAX_RECORD:
        return -1
    if length == 0 and ctype != APPLICATION_DATA:
        return -1  # only application data may be empty
    return length


def find_record_chain(data: bytes, start: int = 0, limit: int | None = None, chain: int = 2) -> int:
    """The first offset in ``data[start:limit]`` where ``chain`` record headers follow each other.

    Returns the offset of the first header of the chain, or -1. A chain of 2 has a false-positive
    rate around 2^-40 per offset on random bytes; of 3, 2^-60.
    """
    end = len(data) if limit is None else min(limit, len(data))
    n = len(data)
    for m in _HEADER_AT.finditer(data, start, end):
        p = m.start()
        q = p
        for _ in range(chain):
            if q + 5 > n:
                break
            length = valid_header(data, q)
            if length < 0:
                break
            q += 5 + length
        else:
            return p
    return -1


class RecordHandler(Protocol):
    """What a `RecordStream` reports to its owner (the TLS dissector)."""

    def wants(self, stream: RecordStream, msg_type: int) -> bool:
        """Should the body of this plaintext handshake message be reassembled and handed over?"""
        ...

    def on_handshake(
        self, stream: RecordStream, msg_type: int, body: bytes | None, length: int, ts: int
    ) -> None:
        """A plaintext handshake message ended; ``body`` is None when it was not kept (or lost)."""

    def on_ccs(self, stream: RecordStream, ts: int) -> None:
        """A ChangeCipherSpec record ended."""

    def on_alert(self, stream: RecordStream, body: bytes, length: int, ts: int) -> None:
        """An alert record ended (``body``: its first bytes; plaintext only if not ``stream.encrypted``)."""

    def on_error(self, stream: RecordStream, reason: str) -> None:
        """Bytes that cannot be TLS: the stream is resynchronising."""

    def on_record(self, stream: RecordStream, header: bytes, body: bytes, ts: int) -> None:
        """``collect`` only: a whole protected record (not ChangeCipherSpec), to be decrypted."""

    def on_record_lost(self, stream: RecordStream, header: bytes, body: bytes, ts: int) -> None:
        """``collect`` only: a record ended but a gap hit it; ``body`` has zeros where bytes were lost."""

    def on_stream_lost(self, stream: RecordStream, seen: int) -> None:
        """``collect`` only: record boundaries were lost, ``seen`` bytes (header included) into the
        record then in progress; an unknown number of records will be missed."""

    def on_resynced(self, stream: RecordStream, lost: int) -> None:
        """``collect`` only: boundaries found again, ``lost`` stream bytes after the loss point."""


class RecordStream:
    """One direction's record layer (see the module docstring)."""

    __slots__ = (
        "alert_buf",
        "bytes",
        "candidates",
        "carry",
        "collect",
        "collect_next",
        "ctype",
        "damaged",
        "direction",
        "encrypted",
        "feed_base",
        "first_ts",
        "gaps",
        "handler",
        "hdr",
        "hs_body",
        "hs_hdr",
        "hs_keep",
        "hs_len",
        "hs_lost",
        "hs_rem",
        "hs_ts",
        "hs_type",
        "lost_from",
        "lost_gaps",
        "offset",
        "probe",
        "rec_body",
        "rec_hdr",
        "rec_len",
        "records",
        "rem",
        "skipped",
        "state",
        "synced",
        "total_bytes",
    )

    def __init__(self, direction: int, handler: RecordHandler, *, lost: bool = False) -> None:
        self.direction = direction
        self.handler = handler
        # Set by the owner once this direction's records are protected (TLS <= 1.2: after its
        # ChangeCipherSpec; TLS 1.3: the server after its ServerHello). Handshake and alert records are
        # then only counted.
        self.encrypted = False
        # Set by the owner when it can decrypt: protected records are then kept whole (see on_record).
        self.collect = False
        self.collect_next = False  # start collecting at the next record header (see start_collecting)
        self.rec_hdr = b""  # collecting: the current record's header
        self.rec_body = bytearray()  # collecting: the current record's body so far
        self.state = LOST if lost else SYNC
        self.synced = not lost  # ever found a record boundary
        self.hdr = bytearray()  # a record header split across feeds (< 5 bytes)
        self.ctype = 0
        self.rem = 0  # body bytes of the current record still to come
        self.rec_len = 0  # body length of the current record
        self.damaged = False  # a gap hit the current record
        self.offset = 0  # absolute stream offset of the next byte (gaps included)
        self.feed_base = 0  # stream offset of the first byte of the current feed
        self.lost_from = 0  # LOST: where boundaries were lost
        self.lost_gaps = 0  # LOST: bytes lost to gaps since then
        self.probe = lost  # LOST at the stream start: a hello at offset 0 is a boundary
        self.carry = b""  # LOST: the last bytes of the previous feed (< 5), a header may start there
        # LOST: offset where a header should be -> (content type, length) of the record pointing there
        self.candidates: dict[int, tuple[int, int]] = {}
        self.records: dict[int, int] = {}  # content type -> records seen
        self.bytes: dict[int, int] = {}  # content type -> body bytes seen
        self.total_bytes = 0  # every byte of this direction that was parsed as records (headers too)
        self.skipped = 0  # bytes that were not records (before a resync); see `unparsed`
        self.gaps = 0  # bytes lost (gaps), inside or between records
        self.first_ts: int | None = None
        self.alert_buf = bytearray()
        # plaintext handshake message reassembly
        self.hs_hdr = bytearray()
        self.hs_type = -1  # -1: reading a handshake header
        self.hs_len = 0
        self.hs_rem = 0
        self.hs_keep = False
        self.hs_body = bytearray()
        self.hs_ts = 0
        self.hs_lost = False  # a gap hit the handshake stream: wait for the next record to restart

    # ------------------------------------------------------------------ input
    def feed(self, data: bytes, ts: int) -> None:
        pos = 0
        n = len(data)
        base = self.feed_base = self.offset
        while pos < n:
            if self.state == LOST:
                pos = self._resync(data, pos, base + pos)
                continue
            if self.rem == 0:
                pos = self._header(data, pos, ts)
                continue
            take = min(self.rem, n - pos)
            self._body(data, pos, pos + take, ts)
            pos += take
            self.rem -= take
            if self.rem == 0:
                self._record_end(ts)
        self.offset = base + n

    def _header(self, data: bytes, pos: int, ts: int) -> int:
        n = len(data)
        hdr = self.hdr
        if hdr or n - pos < 5:
            need = 5 - len(hdr)
            hdr += data[pos : pos + need]
            pos += min(need, n - pos)
            if len(hdr) < 5:
                return pos
            raw = bytes(hdr)
            hdr.clear()
            start, where = 0, raw
        else:
            start, where = pos, data
            pos += 5
        length = valid_header(where, start)
        if length < 0:
            # not a record: look for the next boundary from the byte after this header's start
            bad = where[start : start + 5]
            self.handler.on_error(self, f"not a TLS record header: {bad.hex()}")
            self._lose(self.feed_base + pos - 5)
            self.carry = bad[1:]
            return pos
        ctype = where[start]
        self.ctype = ctype
        self.rem = self.rec_len = length
        self.damaged = False
        if self.collect_next:
            self.collect, self.collect_next = True, False
        if self.collect:
            self.rec_hdr = bytes(where[start : start + 5])
            self.rec_body = bytearray()
        self.records[ctype] = self.records.get(ctype, 0) + 1
        self.total_bytes += 5 + length
        if self.first_ts is None:
            self.first_ts = ts
        if ctype == ALERT:
            self.alert_buf.clear()
        elif ctype == HANDSHAKE and self.hs_lost and not self.encrypted:
            self.hs_lost = False  # restart handshake parsing at this record's start
            self._hs_reset()
        if length == 0:
            self._record_end(ts)
        return pos

    def _body(self, data: bytes, start: int, end: int, ts: int) -> None:
        ctype = self.ctype
        self.bytes[ctype] = self.bytes.get(ctype, 0) + (end - start)
        if self.collect and ctype != CHANGE_CIPHER_SPEC:
            self.rec_body += data[start:end]
        if ctype == HANDSHAKE:
            if not self.encrypted and not self.hs_lost:
                self._hs_feed(data, start, end, ts)
        elif ctype == ALERT:
            room = MAX_ALERT_KEPT - len(self.alert_buf)
            if room > 0:
                self.alert_buf += data[start : min(end, start + room)]

    def _record_end(self, ts: int) -> None:
        ctype = self.ctype
        if self.collect and ctype != CHANGE_CIPHER_SPEC:
            body, self.rec_body = self.rec_body, bytearray()
            if self.damaged:
                self.handler.on_record_lost(self, self.rec_hdr, bytes(body), ts)
            else:
                self.handler.on_record(self, self.rec_hdr, bytes(body), ts)
            if ctype == ALERT:
                self.alert_buf.clear()  # the owner reports the alert, decrypted or not
                return
        if self.damaged:
            self.alert_buf.clear()
        elif ctype == CHANGE_CIPHER_SPEC:
            self.handler.on_ccs(self, ts)
        elif ctype == ALERT:
            self.handler.on_alert(self, bytes(self.alert_buf), self.rec_len, ts)
            self.alert_buf.clear()

    def start_collecting(self) -> None:
        """Keep protected records whole from the next record header on (the owner has the keys)."""
        if not self.collect:
            self.collect_next = True

    def stop_collecting(self) -> None:
        self.collect = self.collect_next = False
        self.rec_body = bytearray()

    def protect(self) -> None:
        """From now on this direction's records are encrypted: count them, parse nothing."""
        if not self.encrypted:
            self.encrypted = True
            self._hs_reset()

    # ------------------------------------------------------------------ handshake messages
    def _hs_reset(self) -> None:
        self.hs_hdr.clear()
        self.hs_type = -1
        self.hs_rem = 0
        self.hs_keep = False
        self.hs_body = bytearray()

    def _hs_feed(self, data: bytes, pos: int, end: int, ts: int) -> None:
        while pos < end:
            if self.hs_type < 0:
                if not self.hs_hdr:
                    self.hs_ts = ts
                need = 4 - len(self.hs_hdr)
                self.hs_hdr += data[pos : min(end, pos + need)]
                pos += min(need, end - pos)
                if len(self.hs_hdr) < 4:
                    return
                h = self.hs_hdr
                self.hs_type = h[0]
                self.hs_len = self.hs_rem = (h[1] << 16) | (h[2] << 8) | h[3]
                self.hs_hdr = bytearray()
                self.hs_keep = self.hs_len <= MAX_HANDSHAKE_MESSAGE and self.handler.wants(self, self.hs_type)
                if self.hs_rem == 0:
                    self._hs_done()
                continue
            take = min(self.hs_rem, end - pos)
            if self.hs_keep:
                self.hs_body += data[pos : pos + take]
            pos += take
            self.hs_rem -= take
            if self.hs_rem == 0:
                self._hs_done()

    def _hs_done(self) -> None:
        msg_type, length, ts = self.hs_type, self.hs_len, self.hs_ts
        body = bytes(self.hs_body) if self.hs_keep else None
        self._hs_reset()
        self.handler.on_handshake(self, msg_type, body, length, ts)

    # ------------------------------------------------------------------ losses
    def gap(self, n: int) -> None:
        """``n`` bytes of this direction were lost."""
        if n <= 0:
            return
        self.gaps += n
        if self.state == SYNC and not self.hdr and n <= self.rem:
            # inside the current record: the next boundary is still known
            if self.collect and self.ctype != CHANGE_CIPHER_SPEC:
                self.rec_body += bytes(n)  # zeros keep the positions of the bytes that follow
            self.rem -= n
            self.bytes[self.ctype] = self.bytes.get(self.ctype, 0) + n
            if self.ctype == HANDSHAKE:
                self._hs_lose()
            self.damaged = True  # not seen whole: an alert or CCS in it is not reported
        else:
            if self.state == SYNC:
                if self.ctype == HANDSHAKE:
                    self._hs_lose()
                self._lose(self.offset)
            self.hs_lost = True
            self._hs_reset()
            self.lost_gaps += n
            self.carry = b""
            self.probe = False
        self.offset += n

    def _hs_lose(self) -> None:
        """A gap hit the plaintext handshake: the message in progress is reported lost (body None)."""
        if not self.encrypted and not self.hs_lost and self.hs_type >= 0:
            msg_type, length, ts = self.hs_type, self.hs_len, self.hs_ts
            self.hs_lost = True
            self._hs_reset()
            self.handler.on_handshake(self, msg_type, None, length, ts)
        self.hs_lost = True
        self._hs_reset()

    # ------------------------------------------------------------------ resynchronisation
    def _resync(self, data: bytes, pos: int, at: int) -> int:
        """LOST: look for two chained record headers in ``data[pos:]`` (``at`` is its stream offset).

        Returns where parsing continues: at the boundary found (state SYNC), or ``len(data)``.
        """
        carry = self.carry
        buf = carry + data[pos:] if carry else data[pos:]
        base = at - len(carry)  # stream offset of buf[0]
        if self.probe:
            # The very start of a connection whose handshake was not seen: a hello right there is
            # taken as the boundary (the SYN was missed, the conversation was not).
            if len(buf) < 6:
                self.carry = buf
                return len(data)
            self.probe = False
            if buf[0] == HANDSHAKE and valid_header(buf, 0) >= 4 and buf[5] in (1, 2):
                return self._synced(base, 0, buf, carry, pos, at, None)
        last = len(buf) - 5  # the last index with a whole header in buf
        cands = self.candidates
        for m in _HEADER_AT.finditer(buf):
            i = m.start()
            if i > last:
                break
            length = valid_header(buf, i)
            if length < 0:
                continue
            p = base + i
            prev = cands.pop(p, None)
            if prev is not None:
                return self._synced(p, i, buf, carry, pos, at, prev)
            if len(cands) < MAX_CANDIDATES:
                cands.setdefault(p + 5 + length, (buf[i], length))
        # nothing yet: remember the tail (a header may straddle feeds) and forget passed candidates
        end = at + len(data) - pos
        keep = min(4, len(buf))
        self.carry = buf[len(buf) - keep :] if keep else b""
        horizon = end - keep
        if cands:
            self.candidates = {q: d for q, d in cands.items() if q >= horizon}
        return len(data)

    def _synced(
        self, p: int, i: int, buf: bytes, carry: bytes, pos: int, at: int, prev: tuple[int, int] | None
    ) -> int:
        """A record boundary at stream offset ``p`` (``buf[i]``): parse from there on."""
        unparsed = p - self.lost_from - self.lost_gaps
        if prev is not None:
            # the record that pointed here was one too: count it
            pctype, plen = prev
            self.records[pctype] = self.records.get(pctype, 0) + 1
            self.bytes[pctype] = self.bytes.get(pctype, 0) + plen
            self.total_bytes += 5 + plen
            unparsed -= 5 + plen
            self.hs_lost = True  # a handshake message may have started before p
        self.skipped += max(unparsed, 0)
        if self.collect:
            self.handler.on_resynced(self, p - self.lost_from)
        self.lost_gaps = 0
        self.state = SYNC
        self.synced = True
        self.candidates = {}
        self.carry = b""
        if p >= at:
            return pos + (p - at)
        self.hdr = bytearray(buf[i : len(carry)])  # the header starts in the carried bytes
        return pos

    def unparsed(self) -> int:
        """Bytes that were not records: skipped before a resync, plus those still being searched."""
        if self.state == LOST:
            return self.skipped + max(self.offset - self.lost_from - self.lost_gaps, 0)
        return self.skipped

    def _lose(self, at: int) -> None:
        """Record boundaries are lost from stream offset ``at`` on."""
        if self.collect:
            self.rec_body = bytearray()
            if self.state == SYNC:
                seen = 5 + self.rec_len - self.rem if self.rem else len(self.hdr)
                self.handler.on_stream_lost(self, seen)
        self.state = LOST
        self.lost_from = at
        self.lost_gaps = 0
        self.candidates = {}
        self.hdr.clear()
        self.rem = 0

    def buffered_bytes(self) -> int:
        return (
            len(self.hdr)
            + len(self.hs_hdr)
            + len(self.hs_body)
            + len(self.carry)
            + len(self.alert_buf)
            + len(self.rec_body)
        )
