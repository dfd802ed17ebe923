"""Just enough of the DNS wire format (RFC 1035) for the demo's resolver and its fallback server.

Why not dnspython: it is a test-only dependency, and the demo needs two small things — build an A
query and read the A records of the answer (the frontend resolves its peers with a real UDP query
per request, so the capture shows DNS), and, when dnsmasq is not installed, answer such queries.
Everything here parses bytes from the network, so it is bounded and strict: any malformed input
raises `DnsError` (never IndexError or struct.error), names are at most 255 bytes, compression
pointers must point strictly backwards and are followed at most `MAX_POINTERS` times.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

TYPE_A = 1
TYPE_AAAA = 28
CLASS_IN = 1
RCODE_NOERROR = 0
RCODE_FORMERR = 1
RCODE_SERVFAIL = 2
RCODE_NXDOMAIN = 3
RCODE_NOTIMP = 4
RCODE_REFUSED = 5
MAX_NAME = 255
MAX_POINTERS = 16
MAX_RECORDS = 64  # answers read from one message; more is hostile for the demo's names

_HEADER = struct.Struct("!HHHHHH")
_RR = struct.Struct("!HHIH")
_Q = struct.Struct("!HH")


class DnsError(ValueError):
    """The bytes are not a DNS message this module can read (the text says what is wrong)."""


@dataclass(frozen=True, slots=True)
class Question:
    txid: int
    flags: int
    name: str  # as sent, without the trailing dot
    qtype: int
    qclass: int
    end: int  # offset just past the question in the message


def encode_name(name: str) -> bytes:
    """``api.demo.podshark`` -> length-prefixed labels; DnsError for an empty or oversized label."""
    out = bytearray()
    for label in name.rstrip(".").split("."):
        raw = label.encode("ascii", "strict") if label.isascii() else b""
        if not raw or len(raw) > 63:
            raise DnsError(f"bad DNS label {label!r} in {name!r}")
        out += bytes([len(raw)]) + raw
    out += b"\x00"
    if len(out) > MAX_NAME:
        raise DnsError(f"DNS name {name!r} is longer than {MAX_NAME} bytes")
    return bytes(out)


def build_query(txid: int, name: str, qtype: int = TYPE_A) -> bytes:
    """A standard recursive-desired query for one name."""
    return _HEADER.pack(txid & 0xFFFF, 0x0100, 1, 0, 0, 0) + encode_name(name) + _Q.pack(qtype, CLASS_IN)


def read_name(msg: bytes, off: int) -> tuple[str, int]:
    """The name at `off` and the offset just past it (past the first pointer, if any)."""
    labels: list[str] = []
    total = 0
    end: int | None = None
    pointers = 0
    while True:
        if off >= len(msg):
            raise DnsError("name runs past the end of the message")
        n = msg[off]
        if n == 0:
            off += 1
            break
        if n & 0xC0 == 0xC0:
            if off + 1 >= len(msg):
                raise DnsError("compression pointer cut off")
            target = ((n & 0x3F) << 8) | msg[off + 1]
            if target >= off:
                raise DnsError("compression pointer does not point backwards")
            pointers += 1
            if pointers > MAX_POINTERS:
                raise DnsError("too many compression pointers")
            if end is None:
                end = off + 2
            off = target
            continue
        if n & 0xC0:
            raise DnsError(f"unsupported label type 0x{n & 0xC0:02x}")
        label = msg[off + 1 : off + 1 + n]
        if len(label) != n:
            raise DnsError("label runs past the end of the message")
        total += n + 1
        if total > MAX_NAME:
            raise DnsError("name longer than 255 bytes")
        labels.append(label.decode("ascii", "replace"))
        off += 1 + n
    return ".".join(labels), (end if end is not None else off)


def parse_question(msg: bytes) -> Question:
    """Header and the single question of a query (DnsError unless there is exactly one)."""
    if len(msg) < _HEADER.size:
        raise DnsError(f"message of {len(msg)} bytes is shorter than a DNS header")
    txid, flags, qd, _an, _ns, _ar = _HEADER.unpack_from(msg)
    if qd != 1:
        raise DnsError(f"expected one question, got {qd}")
    name, off = read_name(msg, _HEADER.size)
    if off + _Q.size > len(msg):
        raise DnsError("question type/class cut off")
    qtype, qclass = _Q.unpack_from(msg, off)
    return Question(txid, flags, name, qtype, qclass, off + _Q.size)


def parse_a_answers(msg: bytes, txid: int, name: str) -> tuple[int, list[str]]:
    """(rcode, IPv4 addresses of `name`'s A records, CNAMEs not followed) of a response to our query.

    DnsError when it is not a response to query `txid` for `name`: a stray or spoofed datagram must
    not be taken as the answer.
    """
    q = parse_question(msg)
    if not q.flags & 0x8000:
        raise DnsError("not a response (QR bit clear)")
    if q.txid != txid:
        raise DnsError(f"response id {q.txid} does not match query id {txid}")
    if q.name.lower() != name.rstrip(".").lower():
        raise DnsError(f"response is for {q.name!r}, not {name!r}")
    rcode = q.flags & 0x000F
    ancount = _HEADER.unpack_from(msg)[3]
    if ancount > MAX_RECORDS:
        raise DnsError(f"{ancount} answers is more than {MAX_RECORDS}")
    off = q.end
    addrs: list[str] = []
    for _ in range(ancount):
        rname, off = read_name(msg, off)
        if off + _RR.size > len(msg):
            raise DnsError("resource record header cut off")
        rtype, rclass, _ttl, rdlen = _RR.unpack_from(msg, off)
        off += _RR.size
        rdata = msg[off : off + rdlen]
        if len(rdata) != rdlen:
            raise DnsError("resource record data cut off")
        off += rdlen
        if rtype == TYPE_A and rclass == CLASS_IN and rname.lower() == q.name.lower():
            if rdlen != 4:
                raise DnsError(f"A record of {rdlen} bytes")
            addrs.append(".".join(str(b) for b in rdata))
    return rcode, addrs


def build_response(query: Question, msg: bytes, rcode: int, a_records: list[str], ttl: int = 5) -> bytes:
    """The answer to `query` (parsed from `msg`): its question echoed, then one A record per address."""
    rd = query.flags & 0x0100
    flags = 0x8000 | 0x0400 | rd | (rcode & 0xF)  # QR, AA, RD copied, RA clear: we recurse for nobody
    question = msg[_HEADER.size : query.end]
    out = bytearray(_HEADER.pack(query.txid, flags, 1, len(a_records), 0, 0))
    out += question
    for addr in a_records:
        octets = bytes(int(p) for p in addr.split("."))
        out += b"\xc0\x0c" + _RR.pack(TYPE_A, CLASS_IN, ttl, 4) + octets  # name: pointer to the question
    return bytes(out)


def error_response(msg: bytes, rcode: int) -> bytes | None:
    """A header-only answer with `rcode` for a query we cannot parse; None when even the header is cut."""
    if len(msg) < _HEADER.size:
        return None
    txid, flags = struct.unpack_from("!HH", msg)
    if flags & 0x8000:
        return None  # never answer a response: two servers could ping-pong forever
    return _HEADER.pack(txid, 0x8000 | (flags & 0x7900) | (rcode & 0xF), 0, 0, 0, 0)
