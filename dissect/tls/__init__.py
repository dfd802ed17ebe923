"""TLS: content detection plus a sans-IO dissector of the handshake (`TLSDissector`), as ``ANALYZER``.

Without keys a TLS connection is one call with what the handshake shows in plaintext (SNI, ALPN,
versions, cipher suite, resumption) and how many bytes each side sent; see `dissect.tls.dissector`.
With a key log (`dissect.tls.keylog`) its records are decrypted (`dissect.tls.decrypt`, with the
record cryptography in `dissect.tls.crypto`) and the plaintext dissected like a cleartext connection.
"""

from __future__ import annotations

from collections.abc import Sequence

from dissect.base import Analyzer, ConnContext, Dissector, Handoff, Verdict
from dissect.tls.dissector import TLSDissector, TLSSession
from dissect.tls.keylog import KeyLog
from dissect.tls.records import HANDSHAKE, MAX_RECORD, find_record_chain, valid_header

__all__ = ["ANALYZER", "TLSAnalyzer", "TLSDissector", "TLSSession", "detect"]

_MIN_HELLO = 38  # the smallest ServerHello body: version, random, empty session id, suite, compression
_OTHER_TYPES = (20, 21, 23, 24)  # change_cipher_spec, alert, application_data, heartbeat


def _header_prefix_ok(data: bytes) -> bool:
    """Could ``data`` (shorter than 5 bytes) be the start of a record header?"""
    n = len(data)
    return (n < 2 or data[1] == 3) and (n < 3 or data[2] <= 4)


def detect(data: bytes, direction: int = 0, port_hint: int | None = None) -> Verdict:
    """Judge the first bytes one side sent. By content only; ``port_hint`` is ignored.

    YES: a handshake record (0x16, version 3.0-3.4, length <= 2^14 + 2048) whose first message is a
    ClientHello or a ServerHello (the client's may have been lost). MORE: fewer than 6 bytes that could
    start one. An SSLv2-compatible ClientHello is NO.

    Connections captured mid-stream start with application data: YES also when the bytes start with
    two chained record headers (the second one exactly where the first one's length says), or contain
    three chained headers further on (a capture that starts inside a record); MORE while the first
    record of such a chain is still arriving.
    """
    n = len(data)
    if n == 0:
        return Verdict.MORE
    b0 = data[0]
    if b0 == HANDSHAKE:
        if n < 5:
            return Verdict.MORE if _header_prefix_ok(data) else Verdict.NO
        length = valid_header(data, 0)
        if length < 4:
            return Verdict.NO
        if n < 6:
            return Verdict.MORE
        if data[5] not in (1, 2):
            return Verdict.NO
        if n >= 9 and int.from_bytes(data[6:9], "big") < _MIN_HELLO:
            return Verdict.NO
        if n >= 10 and data[9] != 3:  # the hello's legacy_version: major 3
            return Verdict.NO
        return Verdict.YES
    if b0 in _OTHER_TYPES:
        if n < 5:
            return Verdict.MORE if _header_prefix_ok(data) else Verdict.NO
        length = valid_header(data, 0)
        if length >= 0:
            nxt = 5 + length
            if n < nxt + 5:
                return Verdict.MORE
            if valid_header(data, nxt) >= 0:
                return Verdict.YES
    if find_record_chain(data, 1, MAX_RECORD + 5, chain=3) >= 0:
        return Verdict.YES
    return Verdict.NO


class TLSAnalyzer:
    """The `dissect.base.Analyzer` for TLS over TCP (SSL 3.0 to TLS 1.3).

    With a ``keylog`` its connections are decrypted when the key log holds their secrets, and the
    plaintext is dissected by ``inner`` (the other analyzers; `dissect.detect.default_analyzers`
    fills it in). The key log may grow while a capture is read (pcapng secrets blocks).
    """

    name = "tls"

    def __init__(self, keylog: KeyLog | None = None, inner: Sequence[Analyzer] = ()) -> None:
        self.keylog = keylog
        self.inner: list[Analyzer] = list(inner)

    def detect(self, data: bytes, direction: int, port_hint: int | None) -> Verdict:
        return detect(data, direction, port_hint)

    def new(self, ctx: ConnContext, handoff: Handoff | None = None) -> Dissector:
        return TLSDissector(ctx, handoff, keylog=self.keylog, inner_analyzers=self.inner)


ANALYZER = TLSAnalyzer()
