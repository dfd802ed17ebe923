"""Recognising HTTP/1.x by content: strict start lines, used both for detection and for resync.

The strict forms (what a resync or a mid-stream detection accepts, so no call is ever invented):

- request line: ``METHOD SP request-target SP HTTP/1.[01] CRLF`` with METHOD 1..20 of ``A-Z _ -``
  (starting with a letter) and a target without whitespace or control bytes;
- status line: ``HTTP/1.[01] SP 3DIGIT [SP reason] CRLF``;

each followed by a header line ``token ":" value`` (or the empty line ending a header-less head).
Bare LF is accepted wherever CRLF is.
"""

from __future__ import annotations

import re

from dissect.base import Verdict

__all__ = [
    "HEADER_LINE",
    "START_LINE",
    "STATUS_LINE",
    "detect",
    "find_start",
    "match_start",
]

# One strict start line at a line start (MULTILINE '^' = buffer start or just after '\n').
# group "req": a request line; group "st": a status line.
START_LINE = re.compile(
    rb"^(?:(?P<req>[A-Z][A-Z_-]{0,19} [^\x00-\x20\x7f]+ HTTP/1\.[01])"
    rb"|(?P<st>HTTP/1\.[01] [0-9]{3}(?: [^\r\n]*)?))\r?\n",
    re.MULTILINE,
)
_START_AT = re.compile(START_LINE.pattern[1:])  # the same, anchored at a given position
STATUS_LINE = re.compile(rb"HTTP/1\.[01] [0-9]{3}(?: [^\r\n]*)?\r?\n")
# What must follow a strict start line: a header line with a token name, or the empty line.
HEADER_LINE = re.compile(rb"(?:[!#$%&'*+.^_`|~0-9A-Za-z-]+:[^\r\n]*)?\r?\n")

# A proper prefix of something that could still become a strict start line.
_REQ_PREFIX = re.compile(
    rb"[A-Z][A-Z_-]{0,19}(?: (?:[^\x00-\x20\x7f]+"
    rb"(?: (?:H(?:T(?:T(?:P(?:/(?:1(?:\.(?:[01]\r?)?)?)?)?)?)?)?)?)?)?)?\Z"
)
_STATUS_PREFIX = re.compile(rb"HTTP/1\.(?:[01](?: (?:[0-9]{0,2}|[0-9]{3}(?: [^\r\n]*)?\r?)?)?)?\Z")
_PRINTABLE = frozenset(range(0x20, 0x7F)) | {9, 10, 13}


def match_start(buf: bytes, pos: int, want: str | None = None) -> tuple[int, str | None]:
    """Like `find_start`, but only at exactly ``pos`` (a packet boundary, say)."""
    m = _START_AT.match(buf, pos)
    if m is None:
        return -1, None
    kind = "request" if m.group("req") is not None else "response"
    if want is not None and kind != want:
        return -1, None
    end = m.end()
    if buf.find(b"\n", end) < 0:
        return pos, None
    if HEADER_LINE.match(buf, end):
        return pos, kind
    return -1, None


def find_start(buf: bytes, pos: int = 0, want: str | None = None) -> tuple[int, str | None]:
    """Find the first strict start line at a line start in ``buf[pos:]`` followed by a header line.

    ``pos`` itself counts as a line start. ``want`` is "request", "response" or None (either). Returns
    ``(offset, kind)`` for a match, ``(offset, None)`` when a candidate's following line has not fully
    arrived (wait for more bytes from ``offset``), and ``(-1, None)`` when nothing matched.
    """
    m = _START_AT.match(buf, pos) or START_LINE.search(buf, pos)
    while m is not None:
        kind = "request" if m.group("req") is not None else "response"
        end = m.end()
        if want is None or kind == want:
            if buf.find(b"\n", end) < 0:
                return m.start(), None  # header line not complete yet
            if HEADER_LINE.match(buf, end):
                return m.start(), kind
        m = START_LINE.search(buf, end)
    return -1, None


def _could_start(data: bytes) -> bool:
    """Is ``data`` (with no complete line) a proper prefix of a strict start line?"""
    if len(data) < 7:
        if b"HTTP/1."[: len(data)] == data:
            return True
    elif data.startswith(b"HTTP/1."):
        return _STATUS_PREFIX.match(data) is not None
    return _REQ_PREFIX.match(data) is not None


def detect(data: bytes, direction: int = 0, port_hint: int | None = None) -> Verdict:
    """Judge the first bytes one side sent. By content only; ``port_hint`` is ignored."""
    if not data:
        return Verdict.MORE
    nl = data.find(b"\n")
    if nl < 0:
        if _could_start(data):
            return Verdict.MORE
        if len(data) < 8 and all(b in _PRINTABLE for b in data):
            return Verdict.MORE
        return Verdict.NO
    first = START_LINE.match(data)
    if first is not None:
        return Verdict.YES  # a strict start line at the very beginning; headers need not be complete
    # mid-stream: a strict start line plus a valid header line at some line start
    off, kind = find_start(data)
    if off >= 0:
        if kind is not None:
            return Verdict.YES
        # the last candidate's header line is still incomplete: tell the caller to look again
        return Verdict.MORE
    return Verdict.NO
