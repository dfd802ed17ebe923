"""Recognising cleartext HTTP/2 by content.

- YES: the client connection preface ``PRI * HTTP/2.0\\r\\n\\r\\nSM\\r\\n\\r\\n``; or, for a connection
  seen from its middle, two plausible frame headers in a row starting at offset 0, or one plausible
  HEADERS or SETTINGS frame that exactly fills the bytes seen.
- MORE: a proper prefix of the preface, fewer than 9 bytes that could start a frame header, or a
  plausible first frame whose successor has not arrived yet.
- NO: anything else.

Detection runs after HTTP/1 and TLS (see `dissect.detect.default_analyzers`), so it only sees what
they refused. Frames are checked strictly (`frames.plausible` with ``strict``) and lengths are capped
at `DETECT_MAX_LEN`, so length-prefixed binary protocols (Kafka, TLS records) are not taken for it.
"""

from __future__ import annotations

from dissect.base import Verdict
from dissect.http2.frames import HEADERS, OK, PREFACE, SETTINGS, WAIT, chain, header, plausible

__all__ = ["DETECT_MAX_LEN", "detect"]

DETECT_MAX_LEN = 1 << 20  # larger first frames are possible (SETTINGS_MAX_FRAME_SIZE) but not credible


def detect(data: bytes, direction: int = 0, port_hint: int | None = None) -> Verdict:
    """Judge the first bytes one side sent. By content only; ``port_hint`` is ignored."""
    n = len(data)
    if n >= 24:
        if data.startswith(PREFACE):
            return Verdict.YES
    elif PREFACE.startswith(data):
        return Verdict.MORE
    if n < 9:
        # a frame header's length starts with a small byte (lengths stay below DETECT_MAX_LEN)
        return Verdict.MORE if data[0] < DETECT_MAX_LEN >> 16 else Verdict.NO
    r = chain(data, 0, DETECT_MAX_LEN, strict=True)
    if r == OK:
        return Verdict.YES
    if r == WAIT:
        length, t, _, _, _ = header(data, 0)
        if 9 + length == n and t in (HEADERS, SETTINGS) and plausible(data, 0, DETECT_MAX_LEN, strict=True):
            return Verdict.YES
        return Verdict.MORE
    return Verdict.NO
