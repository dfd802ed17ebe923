"""DNS (and mDNS/LLMNR, the same wire format): content detection plus a sans-IO dissector.

Two analyzers, both named ``dns``, because the framing differs: ``ANALYZER`` judges a TCP stream
(every message behind a 2-byte length, RFC 1035 4.2.2) and ``UDP_ANALYZER`` a datagram (one
message each). `dissect.detect` lists the first among the TCP analyzers and the second among the
UDP ones; `DNSDissector` picks its framing from ``ctx.transport``. See `dissect.dns.dissector`
for pairing and the call, `dissect.dns.message` for the wire format.
"""

from __future__ import annotations

from dissect.base import ConnContext, Dissector, Handoff, Verdict
from dissect.dns.dissector import DNS_TIMEOUT_NS, DNSDissector
from dissect.dns.message import HEADER_LEN, FormatError, header_plausible, parse_message, read_name

__all__ = [
    "ANALYZER",
    "DNS_TIMEOUT_NS",
    "UDP_ANALYZER",
    "DNSAnalyzer",
    "DNSDissector",
    "detect_datagram",
    "detect_stream",
    "parse_message",
]

_CLASSES = frozenset((1, 3, 4, 254, 255))
_NB, _NBSTAT = 32, 33  # NetBIOS name service types: NBNS borrows DNS's format, it is not DNS
_CHAIN_SCAN = 4096  # offsets tried for a mid-stream TCP connection's first message boundary


def _first_entry(data: bytes, off: int, size: int, have: int) -> Verdict:
    """Judge the header at ``off`` of a ``size``-byte message of which ``have`` bytes (from ``off``)
    are present: plausible header, and the first question (or, for an mDNS-style answer-only
    response, the first record) parses. MORE when the bytes end before the verdict is known."""
    if have < HEADER_LEN:
        return Verdict.MORE
    if not header_plausible(data, off, size):
        return Verdict.NO
    end = off + min(size, have)
    cut = have < size
    qd = data[off + 4] << 8 | data[off + 5]
    pos = off + HEADER_LEN
    try:
        name, after = read_name(data, pos, end)
    except FormatError as e:
        return Verdict.MORE if cut and str(e) == "name-out-of-bounds" else Verdict.NO
    fixed = 4 if qd else 10
    if after + fixed > end:
        return Verdict.MORE if cut else Verdict.NO
    rtype = data[after] << 8 | data[after + 1]
    rclass = (data[after + 2] << 8 | data[after + 3]) & 0x7FFF  # mDNS: QU / cache-flush bit
    if rtype == 0 or (rclass not in _CLASSES and rtype != 41):
        return Verdict.NO
    if rtype in (_NB, _NBSTAT) and len(name.split(".", 1)[0]) == 32:
        label = name.split(".", 1)[0]
        if all("A" <= c <= "P" for c in label.upper()):
            return Verdict.NO
    return Verdict.YES


def detect_datagram(data: bytes, direction: int = 0, port_hint: int | None = None) -> Verdict:
    """Is this UDP payload a DNS message? By content; ``port_hint`` is ignored. Never MORE: a
    datagram is whole (what `dissect.detect` shows after a NO is the same datagram and more)."""
    if len(data) < HEADER_LEN:
        return Verdict.NO
    v = _first_entry(data, 0, len(data), len(data))
    return Verdict.YES if v == Verdict.YES else Verdict.NO


def detect_stream(data: bytes, direction: int = 0, port_hint: int | None = None) -> Verdict:
    """Is this the start of a DNS-over-TCP stream (2-byte length, then a plausible message)?

    YES/MORE/NO on the first message; when the first bytes are not one (a capture that started
    inside the connection) YES also for two chained clean messages further on.
    """
    n = len(data)
    if n < 2:
        return Verdict.MORE
    length = data[0] << 8 | data[1]
    if length >= HEADER_LEN:
        v = _first_entry(data, 2, length, n - 2)
        if v != Verdict.NO:
            return v
    return _chain(data)


def _chain(data: bytes) -> Verdict:
    n = len(data)
    for p in range(1, min(n - 2 - HEADER_LEN, _CHAIN_SCAN)):
        length = data[p] << 8 | data[p + 1]
        end = p + 2 + length
        if length < HEADER_LEN or end + 2 + HEADER_LEN > n or not header_plausible(data, p + 2, length):
            continue
        nxt = data[end] << 8 | data[end + 1]
        if nxt < HEADER_LEN or not header_plausible(data, end + 2, nxt):
            continue
        m = parse_message(data[p + 2 : end])
        if m is not None and m.error is None and not m.weird:
            return Verdict.YES
    return Verdict.NO


class DNSAnalyzer:
    """The `dissect.base.Analyzer` for DNS: ``stream`` for TCP framing, else one message a datagram."""

    name = "dns"

    def __init__(self, stream: bool) -> None:
        self.stream = stream

    def detect(self, data: bytes, direction: int, port_hint: int | None) -> Verdict:
        if self.stream:
            return detect_stream(data, direction, port_hint)
        return detect_datagram(data, direction, port_hint)

    def new(self, ctx: ConnContext, handoff: Handoff | None = None) -> Dissector:
        return DNSDissector(ctx, handoff)


ANALYZER = DNSAnalyzer(stream=True)
UDP_ANALYZER = DNSAnalyzer(stream=False)
