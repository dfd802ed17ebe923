"""DNS wire format (RFC 1035 and friends): one message's header, questions and resource records.

`parse_message` never raises: a malformed message comes back with what could be read, its first
fatal problem in ``error`` and every anomaly in ``weird`` (the words are stable: tests and filters
use them). Everything is bounded by the message itself:

- a compression pointer must point strictly backwards, before the start of the label run it
  interrupts (so every jump lands earlier than the last one and a name always ends); one that
  points into its own run or forwards is ``compression-loop``, never followed; the number of jumps
  is bounded too, and a name longer than 255 bytes on the wire is ``name-too-long``;
- counts that cannot fit in the message (every question needs 5 bytes, every record 11) are
  ``counts-exceed-length`` and parsing stops where the bytes end; at most `MAX_RECORDS` records per
  section are decoded for display, the rest are counted in ``omitted``;
- record data is decoded for display for the common types (A, AAAA, CNAME, NS, PTR, DNAME, MX,
  TXT, SRV, SOA, CAA, SVCB/HTTPS basics) and as RFC 3597 hex for the others; EDNS (OPT) becomes
  `DNSMessage.edns` with the client subnet option (8) decoded and the other options listed.

Names are in presentation form without the trailing dot, case kept as sent ("." is the root);
``.`` and ``\\`` inside a label are backslash-escaped and bytes outside printable ASCII are
``\\DDD``, as dig prints them.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "CLASS_NAMES",
    "MAX_RECORDS",
    "OPCODE_NAMES",
    "RCODE_NAMES",
    "TYPE_NAMES",
    "DNSMessage",
    "FormatError",
    "Question",
    "class_name",
    "header_plausible",
    "opcode_name",
    "parse_message",
    "rcode_name",
    "read_name",
    "type_name",
]

HEADER_LEN = 12
MAX_NAME = 255  # bytes on the wire, length octets and the root label included
MAX_JUMPS = 64  # compression pointers followed for one name (real names need a handful)
MAX_RECORDS = 512  # records decoded per section; more are counted, not kept
MAX_QUESTIONS = 32
MAX_TXT_STRINGS = 256
MAX_OPTIONS = 64

OPCODE_NAMES: dict[int, str] = {0: "QUERY", 1: "IQUERY", 2: "STATUS", 4: "NOTIFY", 5: "UPDATE", 6: "DSO"}

RCODE_NAMES: dict[int, str] = {
    0: "NOERROR",
    1: "FORMERR",
    2: "SERVFAIL",
    3: "NXDOMAIN",
    4: "NOTIMP",
    5: "REFUSED",
    6: "YXDOMAIN",
    7: "YXRRSET",
    8: "NXRRSET",
    9: "NOTAUTH",
    10: "NOTZONE",
    11: "DSOTYPENI",
    16: "BADVERS",
    17: "BADKEY",
    18: "BADTIME",
    19: "BADMODE",
    20: "BADNAME",
    21: "BADALG",
    22: "BADTRUNC",
    23: "BADCOOKIE",
}

TYPE_NAMES: dict[int, str] = {
    1: "A", 2: "NS", 3: "MD", 4: "MF", 5: "CNAME", 6: "SOA", 7: "MB", 8: "MG", 9: "MR", 10: "NULL",
    11: "WKS", 12: "PTR", 13: "HINFO", 14: "MINFO", 15: "MX", 16: "TXT", 17: "RP", 18: "AFSDB",
    19: "X25", 20: "ISDN", 21: "RT", 22: "NSAP", 23: "NSAP-PTR", 24: "SIG", 25: "KEY", 26: "PX",
    27: "GPOS", 28: "AAAA", 29: "LOC", 30: "NXT", 31: "EID", 32: "NIMLOC", 33: "SRV", 34: "ATMA",
    35: "NAPTR", 36: "KX", 37: "CERT", 38: "A6", 39: "DNAME", 40: "SINK", 41: "OPT", 42: "APL",
    43: "DS", 44: "SSHFP", 45: "IPSECKEY", 46: "RRSIG", 47: "NSEC", 48: "DNSKEY", 49: "DHCID",
    50: "NSEC3", 51: "NSEC3PARAM", 52: "TLSA", 53: "SMIMEA", 55: "HIP", 56: "NINFO", 57: "RKEY",
    58: "TALINK", 59: "CDS", 60: "CDNSKEY", 61: "OPENPGPKEY", 62: "CSYNC", 63: "ZONEMD", 64: "SVCB",
    65: "HTTPS", 99: "SPF", 100: "UINFO", 101: "UID", 102: "GID", 103: "UNSPEC", 104: "NID",
    105: "L32", 106: "L64", 107: "LP", 108: "EUI48", 109: "EUI64", 249: "TKEY", 250: "TSIG",
    251: "IXFR", 252: "AXFR", 253: "MAILB", 254: "MAILA", 255: "ANY", 256: "URI", 257: "CAA",
    258: "AVC", 259: "DOA", 260: "AMTRELAY", 261: "RESINFO", 32768: "TA", 32769: "DLV",
}  # fmt: skip

CLASS_NAMES: dict[int, str] = {1: "IN", 3: "CH", 4: "HS", 254: "NONE", 255: "ANY"}

EDNS_OPTION_NAMES: dict[int, str] = {
    1: "LLQ",
    2: "UL",
    3: "NSID",
    5: "DAU",
    6: "DHU",
    7: "N3U",
    8: "ECS",
    9: "EXPIRE",
    10: "COOKIE",
    11: "TCP-KEEPALIVE",
    12: "PADDING",
    13: "CHAIN",
    14: "KEY-TAG",
    15: "EDE",
    16: "CLIENT-TAG",
    17: "SERVER-TAG",
    18: "REPORT-CHANNEL",
    19: "ZONEVERSION",
}

SVC_PARAM_NAMES: dict[int, str] = {
    0: "mandatory",
    1: "alpn",
    2: "no-default-alpn",
    3: "port",
    4: "ipv4hint",
    5: "ech",
    6: "ipv6hint",
    7: "dohpath",
    8: "ohttp",
}

T_A, T_NS, T_CNAME, T_SOA, T_PTR, T_MX, T_TXT, T_AAAA, T_SRV, T_DNAME, T_OPT = (
    1, 2, 5, 6, 12, 15, 16, 28, 33, 39, 41,
)  # fmt: skip
T_SVCB, T_HTTPS, T_CAA = 64, 65, 257
_NAME_TYPES = frozenset((T_NS, 3, 4, T_CNAME, 7, 8, 9, T_PTR, T_DNAME))  # rdata is one domain name
OPT_ECS = 8


def type_name(t: int) -> str:
    """The mnemonic of an RR type, or RFC 3597's ``TYPE<n>`` for unnamed ones."""
    return TYPE_NAMES.get(t) or f"TYPE{t}"


def class_name(c: int) -> str:
    return CLASS_NAMES.get(c) or f"CLASS{c}"


def opcode_name(op: int) -> str:
    return OPCODE_NAMES.get(op) or f"OPCODE{op}"


def rcode_name(rc: int) -> str:
    return RCODE_NAMES.get(rc) or f"RCODE{rc}"


class FormatError(Exception):
    """A fatal problem inside one message; its text is the weird word. `parse_message` turns it into
    ``error``, detection into NO; it never leaves this package."""


# -- names ---------------------------------------------------------------------------------------

_PLAIN = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_*")


_PLAIN_BYTES = bytes(sorted(_PLAIN))
# label bytes -> presentation text; labels repeat all the time ("com", service names). Bounded.
_LABELS: dict[bytes, str] = {}
_LABELS_MAX = 1 << 16


def _label_text(label: bytes) -> str:
    text = _LABELS.get(label)
    if text is None:
        text = _label_escape(label)
        if len(_LABELS) >= _LABELS_MAX:
            _LABELS.clear()
        _LABELS[label] = text
    return text


def _label_escape(label: bytes) -> str:
    if not label.translate(None, _PLAIN_BYTES):  # every byte plain: one C-level check
        return label.decode("ascii")
    out = []
    for b in label:
        if b in (0x2E, 0x5C):  # '.' and '\' inside a label
            out.append("\\" + chr(b))
        elif 0x21 <= b <= 0x7E:
            out.append(chr(b))
        else:
            out.append(f"\\{b:03d}")
    return "".join(out)


def read_name(buf: bytes, off: int, end: int) -> tuple[str, int]:
    """The name at ``off`` (presentation form, no trailing dot) and the offset just after it.

    Raises `FormatError` with the weird word (``compression-loop``, ``name-too-long``, ``name-out-of-bounds``,
    ``bad-label-type``): the caller decides what that means for the message.
    """
    labels: list[str] = []
    total = 1  # the root label's length octet
    pos = off
    run_start = off  # where the current run of labels began (a pointer must land before it)
    after = -1
    jumps = 0
    while True:
        if pos >= end:
            raise FormatError("name-out-of-bounds")
        n = buf[pos]
        if n == 0:
            if after < 0:
                after = pos + 1
            break
        kind = n & 0xC0
        if kind == 0xC0:
            if pos + 1 >= end:
                raise FormatError("name-out-of-bounds")
            target = (n & 0x3F) << 8 | buf[pos + 1]
            if after < 0:
                after = pos + 2
            jumps += 1
            if target >= run_start or jumps > MAX_JUMPS:
                raise FormatError("compression-loop")
            pos = run_start = target
            continue
        if kind:
            raise FormatError("bad-label-type")  # 0x40 extended labels (obsolete), 0x80 reserved
        total += n + 1
        if total > MAX_NAME:
            raise FormatError("name-too-long")
        if pos + 1 + n > end:
            raise FormatError("name-out-of-bounds")
        labels.append(_label_text(buf[pos + 1 : pos + 1 + n]))
        pos += 1 + n
    return (".".join(labels) if labels else "."), after


# -- the message ---------------------------------------------------------------------------------


@dataclass(slots=True, frozen=True)
class Question:
    name: str
    qtype: int
    qclass: int  # without the mDNS unicast-response bit
    unicast_response: bool = False  # mDNS "QU" question

    def key(self) -> tuple[str, int, int]:
        """What a response's question must repeat (names compare case-insensitively)."""
        return (self.name.lower(), self.qtype, self.qclass)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "name": self.name,
            "type": type_name(self.qtype),
            "class": class_name(self.qclass),
        }
        if self.unicast_response:
            d["unicast_response"] = True
        return d


@dataclass(slots=True)
class DNSMessage:
    """One parsed message. Sections hold display dicts (``name``, ``type``, ``ttl``, ``data``…)."""

    id: int = 0
    flags: int = 0  # the 16-bit flags word (QR, opcode, AA, TC, RD, RA, Z, AD, CD, rcode)
    qdcount: int = 0
    ancount: int = 0
    nscount: int = 0
    arcount: int = 0
    size: int = 0
    questions: list[Question] = field(default_factory=list)
    answers: list[dict[str, Any]] = field(default_factory=list)
    authority: list[dict[str, Any]] = field(default_factory=list)
    additional: list[dict[str, Any]] = field(default_factory=list)
    edns: dict[str, Any] | None = None
    ext_rcode: int = 0  # upper 8 bits of the rcode, from OPT
    omitted: int = 0  # records beyond MAX_RECORDS per section: counted, not decoded
    error: str | None = None  # the first fatal problem (parsing stopped there)
    weird: list[str] = field(default_factory=list)
    cut: bool = False  # the bytes ended before the counts said (truncated capture or gap)

    @property
    def qr(self) -> bool:
        return bool(self.flags & 0x8000)

    @property
    def opcode(self) -> int:
        return (self.flags >> 11) & 0xF

    @property
    def tc(self) -> bool:
        return bool(self.flags & 0x0200)

    @property
    def rcode(self) -> int:
        """The full rcode: 4 header bits plus OPT's extended bits when an OPT record was seen."""
        return self.ext_rcode << 4 | (self.flags & 0xF)

    def flag_dict(self) -> dict[str, bool]:
        f = self.flags
        return {
            "aa": bool(f & 0x0400),
            "tc": bool(f & 0x0200),
            "rd": bool(f & 0x0100),
            "ra": bool(f & 0x0080),
            "ad": bool(f & 0x0020),
            "cd": bool(f & 0x0010),
        }

    def question_key(self) -> tuple[str, int, int] | None:
        return self.questions[0].key() if self.questions else None

    def questions_key(self) -> tuple[tuple[str, int, int], ...]:
        return tuple(q.key() for q in self.questions)

    def note(self, word: str) -> None:
        if word not in self.weird and len(self.weird) < 16:
            self.weird.append(word)


def header_plausible(buf: bytes | bytearray, off: int, size: int) -> bool:
    """Cheap checks on a header at ``off`` of a ``size``-byte message (12 header bytes present).

    Known opcode; 0 < questions <= 8 (0 only for a response that carries answers: mDNS
    announcements); counts that fit in ``size`` bytes. Used for detection and TCP resync.
    """
    if size < HEADER_LEN:
        return False
    flags = buf[off + 2] << 8 | buf[off + 3]
    if (flags >> 11) & 0xF not in OPCODE_NAMES:
        return False
    qd = buf[off + 4] << 8 | buf[off + 5]
    an = buf[off + 6] << 8 | buf[off + 7]
    ns = buf[off + 8] << 8 | buf[off + 9]
    ar = buf[off + 10] << 8 | buf[off + 11]
    if qd > 8 or (qd == 0 and not (flags & 0x8000 and an)):
        return False
    return qd * 5 + (an + ns + ar) * 11 <= size - HEADER_LEN


def parse_message(buf: bytes, mdns: bool = False) -> DNSMessage | None:
    """Parse one message; None when it is shorter than a header. Never raises.

    ``mdns``: the class field's top bit is mDNS's unicast-response (questions) or cache-flush
    (records) bit, not part of the class.
    """
    size = len(buf)
    if size < HEADER_LEN:
        return None
    m = DNSMessage(
        id=buf[0] << 8 | buf[1],
        flags=buf[2] << 8 | buf[3],
        qdcount=buf[4] << 8 | buf[5],
        ancount=buf[6] << 8 | buf[7],
        nscount=buf[8] << 8 | buf[9],
        arcount=buf[10] << 8 | buf[11],
        size=size,
    )
    try:
        _parse_body(buf, m, mdns)
    except FormatError as e:
        m.error = str(e)
        m.note(str(e))
    except (IndexError, ValueError):  # defensive: a bound check missed somewhere is still not a crash
        m.error = "malformed"
        m.note("malformed")
    return m


def _parse_body(buf: bytes, m: DNSMessage, mdns: bool) -> None:
    size = m.size
    if m.qdcount * 5 + (m.ancount + m.nscount + m.arcount) * 11 > size - HEADER_LEN:
        m.note("counts-exceed-length")
    pos = HEADER_LEN
    for i in range(m.qdcount):
        if pos >= size:
            m.cut = True
            raise FormatError("message-cut")
        name, pos = read_name(buf, pos, size)
        if pos + 4 > size:
            m.cut = True
            raise FormatError("message-cut")
        qtype = buf[pos] << 8 | buf[pos + 1]
        qclass = buf[pos + 2] << 8 | buf[pos + 3]
        pos += 4
        qu = False
        if mdns and qclass & 0x8000:
            qclass &= 0x7FFF
            qu = True
        if i < MAX_QUESTIONS:
            m.questions.append(Question(name, qtype, qclass, qu))
    for count, section in ((m.ancount, m.answers), (m.nscount, m.authority), (m.arcount, m.additional)):
        for _ in range(count):
            if pos >= size:
                m.cut = True
                raise FormatError("message-cut")
            pos = _parse_rr(buf, pos, size, m, section, mdns)
    if pos < size:
        m.note("trailing-bytes")


def _parse_rr(
    buf: bytes, pos: int, size: int, m: DNSMessage, section: list[dict[str, Any]], mdns: bool
) -> int:
    name, pos = read_name(buf, pos, size)
    if pos + 10 > size:
        m.cut = True
        raise FormatError("message-cut")
    rtype = buf[pos] << 8 | buf[pos + 1]
    rclass = buf[pos + 2] << 8 | buf[pos + 3]
    ttl = int.from_bytes(buf[pos + 4 : pos + 8], "big")
    rdlen = buf[pos + 8] << 8 | buf[pos + 9]
    start = pos + 10
    end = start + rdlen
    if end > size:
        m.cut = True
        raise FormatError("rdata-out-of-bounds")
    if rtype == T_OPT and section is m.additional:
        _parse_opt(buf, start, end, name, rclass, ttl, m)
        return end
    if len(section) >= MAX_RECORDS:
        m.omitted += 1
        return end
    rr: dict[str, Any] = {"name": name, "type": TYPE_NAMES.get(rtype, rtype)}
    if mdns and rclass & 0x8000:
        rclass &= 0x7FFF
        rr["cache_flush"] = True
    if rclass != 1:
        rr["class"] = class_name(rclass)
    rr["ttl"] = ttl
    try:
        _rdata(buf, start, end, rtype, rr)
    except FormatError as e:
        m.note(str(e))
        if m.error is None and str(e) == "compression-loop":
            m.error = "compression-loop"
        rr["data"] = _generic(buf[start:end])
        rr["rdata_hex"] = buf[start:end].hex()
        m.note("bad-rdata")
    section.append(rr)
    return end


def _generic(rdata: bytes) -> str:
    return f"\\# {len(rdata)} {rdata.hex()}" if rdata else "\\# 0"


def _char_string(buf: bytes, pos: int, end: int) -> tuple[str, int]:
    if pos >= end:
        raise FormatError("bad-rdata")
    n = buf[pos]
    if pos + 1 + n > end:
        raise FormatError("bad-rdata")
    raw = buf[pos + 1 : pos + 1 + n]
    return raw.decode("utf-8", "backslashreplace"), pos + 1 + n


def _quoted(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _rdata(buf: bytes, start: int, end: int, rtype: int, rr: dict[str, Any]) -> None:
    """Decode the rdata of one record into ``rr`` (``data`` always; typed fields for some types)."""
    n = end - start
    if rtype == T_A:
        if n != 4:
            raise FormatError("bad-rdata")
        rr["data"] = ".".join(str(b) for b in buf[start:end])
    elif rtype == T_AAAA:
        if n != 16:
            raise FormatError("bad-rdata")
        rr["data"] = str(ipaddress.IPv6Address(buf[start:end]))
    elif rtype in _NAME_TYPES:
        name, after = read_name(buf, start, end if rtype == T_DNAME else len(buf))
        if after != end:
            raise FormatError("bad-rdata")
        rr["data"] = name
    elif rtype in (T_MX, 18, 21, 36):  # MX, AFSDB, RT, KX
        if n < 3:
            raise FormatError("bad-rdata")
        pref = buf[start] << 8 | buf[start + 1]
        name, after = read_name(buf, start + 2, len(buf))
        if after != end:
            raise FormatError("bad-rdata")
        rr["data"] = f"{pref} {name}"
        if rtype == T_MX:
            rr["preference"], rr["exchange"] = pref, name
    elif rtype in (T_TXT, 99):  # TXT, SPF
        strings: list[str] = []
        pos = start
        while pos < end:
            s, pos = _char_string(buf, pos, end)
            if len(strings) < MAX_TXT_STRINGS:
                strings.append(s)
        rr["data"] = " ".join(_quoted(s) for s in strings)
        rr["strings"] = strings
    elif rtype == T_SRV:
        if n < 7:
            raise FormatError("bad-rdata")
        prio, weight, port = (int.from_bytes(buf[start + i : start + i + 2], "big") for i in (0, 2, 4))
        target, after = read_name(buf, start + 6, len(buf))
        if after != end:
            raise FormatError("bad-rdata")
        rr["data"] = f"{prio} {weight} {port} {target}"
        rr.update(priority=prio, weight=weight, port=port, target=target)
    elif rtype == T_SOA:
        mname, pos = read_name(buf, start, len(buf))
        rname, pos = read_name(buf, pos, len(buf))
        if pos + 20 != end:
            raise FormatError("bad-rdata")
        serial, refresh, retry, expire, minimum = (
            int.from_bytes(buf[pos + i : pos + i + 4], "big") for i in range(0, 20, 4)
        )
        rr["data"] = f"{mname} {rname} {serial} {refresh} {retry} {expire} {minimum}"
        rr.update(mname=mname, rname=rname, serial=serial, minimum=minimum)
    elif rtype == T_CAA:
        if n < 2 or start + 2 + buf[start + 1] > end:
            raise FormatError("bad-rdata")
        flags, tlen = buf[start], buf[start + 1]
        tag = buf[start + 2 : start + 2 + tlen].decode("ascii", "backslashreplace")
        value = buf[start + 2 + tlen : end].decode("utf-8", "backslashreplace")
        rr["data"] = f"{flags} {tag} {_quoted(value)}"
        rr.update(flags=flags, tag=tag, value=value)
    elif rtype in (T_SVCB, T_HTTPS):
        if n < 3:
            raise FormatError("bad-rdata")
        prio = buf[start] << 8 | buf[start + 1]
        target, pos = read_name(buf, start + 2, end)
        params = _svc_params(buf, pos, end)
        shown = " ".join(f"{k}={v}" if v != "" else k for k, v in params.items())
        rr["data"] = f"{prio} {target}" + (f" {shown}" if shown else "")
        rr.update(priority=prio, target=target, params=params)
    else:
        rr["data"] = _generic(buf[start:end])
        rr["rdata_hex"] = buf[start:end].hex()


def _svc_params(buf: bytes, pos: int, end: int) -> dict[str, str]:
    params: dict[str, str] = {}
    while pos < end:
        if pos + 4 > end:
            raise FormatError("bad-rdata")
        key = buf[pos] << 8 | buf[pos + 1]
        ln = buf[pos + 2] << 8 | buf[pos + 3]
        val = buf[pos + 4 : pos + 4 + ln]
        if pos + 4 + ln > end:
            raise FormatError("bad-rdata")
        pos += 4 + ln
        name = SVC_PARAM_NAMES.get(key) or f"key{key}"
        if key == 1:  # alpn: length-prefixed ids
            ids: list[str] = []
            i = 0
            while i < len(val):
                ids.append(val[i + 1 : i + 1 + val[i]].decode("ascii", "backslashreplace"))
                i += 1 + val[i]
            params[name] = ",".join(ids)
        elif key == 3 and ln == 2:
            params[name] = str(val[0] << 8 | val[1])
        elif key == 4 and ln % 4 == 0:
            params[name] = ",".join(".".join(str(b) for b in val[i : i + 4]) for i in range(0, ln, 4))
        elif key == 6 and ln % 16 == 0:
            params[name] = ",".join(str(ipaddress.IPv6Address(val[i : i + 16])) for i in range(0, ln, 16))
        elif key == 2 and ln == 0:
            params[name] = ""
        else:
            params[name] = val.hex()
    return params


def _parse_opt(buf: bytes, start: int, end: int, name: str, rclass: int, ttl: int, m: DNSMessage) -> None:
    if m.edns is not None:
        m.note("multiple-opt")
        return
    if name != ".":
        m.note("opt-not-root")
    m.ext_rcode = ttl >> 24
    edns: dict[str, Any] = {
        "udp_size": rclass,
        "version": (ttl >> 16) & 0xFF,
        "do": bool(ttl & 0x8000),
    }
    options: list[dict[str, Any]] = []
    pos = start
    while pos < end:
        if pos + 4 > end:
            m.note("bad-edns-option")
            break
        code = buf[pos] << 8 | buf[pos + 1]
        ln = buf[pos + 2] << 8 | buf[pos + 3]
        data = buf[pos + 4 : pos + 4 + ln]
        if pos + 4 + ln > end:
            m.note("bad-edns-option")
            break
        pos += 4 + ln
        if code == OPT_ECS and "client_subnet" not in edns:
            ecs = _ecs(data)
            if ecs is None:
                m.note("bad-ecs")
            else:
                edns["client_subnet"], scope = ecs
                if scope:
                    edns["client_subnet_scope"] = scope
                continue
        if len(options) < MAX_OPTIONS:
            options.append(
                {"code": code, "name": EDNS_OPTION_NAMES.get(code, f"OPT{code}"), "data": data.hex()}
            )
    if options:
        edns["options"] = options
    m.edns = edns


def _ecs(data: bytes) -> tuple[str, int] | None:
    """RFC 7871 client subnet: ("1.2.3.0/24", scope prefix) or None when malformed."""
    if len(data) < 4:
        return None
    family = data[0] << 8 | data[1]
    source, scope = data[2], data[3]
    addr = data[4:]
    width = {1: 4, 2: 16}.get(family)
    if width is None or source > width * 8 or len(addr) != (source + 7) // 8:
        return None
    raw = addr + bytes(width - len(addr))
    ip = ipaddress.IPv4Address(raw) if width == 4 else ipaddress.IPv6Address(raw)
    return f"{ip}/{source}", scope
