"""HTTP/1.x detection, strict start-line matching and the per-direction parser on its own."""

from __future__ import annotations

import pytest

from dissect.base import Budget, Limits, Verdict
from dissect.http1 import ANALYZER
from dissect.http1.detect import detect, find_start
from dissect.http1.parser import (
    BODY,
    CHUNK_DATA,
    CLOSE_BODY,
    IDLE,
    RESYNC,
    RESYNC_TAIL,
    HttpMessage,
    MessageParser,
    _block_end,
)
from dissect.model import Flag

# ------------------------------------------------------------------------------------------ detection


@pytest.mark.parametrize(
    "data",
    [
        b"GET / HTTP/1.1\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        b"PROPFIND /dav/ HTTP/1.1\r\nDepth: 1\r\n",
        b"M-SEARCH * HTTP/1.1\r\n",
        b"HTTP/1.1 200 OK\r\n",
        b"HTTP/1.0 404\r\n",
        b"HTTP/1.1 200 OK\nContent-Length: 0\n\n",
        # mid-stream: a start line plus a header line at a line start further on
        b"tail of a body\r\nHTTP/1.1 200 OK\r\nServer: x\r\n",
        b"\x00\x01binary\nPOST /api HTTP/1.1\nHost: h\n",
    ],
)
def test_detect_yes(data: bytes) -> None:
    assert detect(data, 0, None) is Verdict.YES
    assert ANALYZER.detect(data, 1, 9092) is Verdict.YES  # port is no argument against content


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"G",
        b"GE",
        b"GET",
        b"GET ",
        b"GET /x",
        b"GET /x HTTP/1.",
        b"HTTP/1.",
        b"HTTP/1.1 20",
        b"H",
        b"ab",
    ],
)
def test_detect_more(data: bytes) -> None:
    assert detect(data, 0, None) is Verdict.MORE


@pytest.mark.parametrize(
    "data",
    [
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",  # TLS ClientHello
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",  # HTTP/2 preface
        b"SSH-2.0-OpenSSH_9.6\r\n",
        b"get / http/1.1\r\n",  # strict forms only
        b"GET / HTTP/1.1 extra\r\nHost: x\r\n",
        b"HTTP/1.1 2000 OK\r\n",
        b"hello world, this is just text\n",
        b"tail of a body\r\nHTTP/1.1 200 OK\r\nnot a header\r\n",
        b"\x00\x00\x00\x10\x00\x00\x00\x01\x00\x00",
    ],
)
def test_detect_no(data: bytes) -> None:
    assert detect(data, 0, 80) is Verdict.NO


def test_detect_mid_stream_header_line_pending_is_more() -> None:
    assert detect(b"xx\r\nGET / HTTP/1.1\r\nHo", 0, None) is Verdict.MORE


# ------------------------------------------------------------------------------------------ find_start


def test_find_start_offsets_and_kinds() -> None:
    buf = b"junk\r\nGET / HTTP/1.1\r\nHost: a\r\n"
    assert find_start(buf) == (6, "request")
    assert find_start(buf, 0, "response") == (-1, None)
    assert find_start(b"HTTP/1.1 204 No Content\r\n\r\n") == (0, "response")
    assert find_start(b"x GET / HTTP/1.1\r\nHost: a\r\n") == (-1, None)  # not at a line start
    assert find_start(b"ab\nGET / HTTP/1.1\r\n") == (3, None)  # header line not complete yet
    assert find_start(b"GET / HTTP/1.1\r\nbad line\r\nGET /2 HTTP/1.1\r\nA: b\r\n") == (26, "request")


def test_find_start_treats_pos_as_line_start() -> None:
    buf = b"abcGET / HTTP/1.1\r\nA: b\r\n"
    assert find_start(buf, 3) == (3, "request")
    assert find_start(buf, 0) == (-1, None)


def test_block_end() -> None:
    assert _block_end(b"GET / HTTP/1.1\r\nA: b\r\n\r\nBODY", 0) == (21, 24)
    assert _block_end(b"GET / HTTP/1.1\nA: b\n\nBODY", 0) == (19, 21)
    assert _block_end(b"GET / HTTP/1.1\nA: b\n\r\nBODY", 0) == (19, 22)
    assert _block_end(b"GET / HTTP/1.1\r\nA: b\r\n", 0) == (-1, -1)


# ------------------------------------------------------------------------------------- parser alone


class Recorder:
    """A Sink that records events as tuples."""

    def __init__(self) -> None:
        self.events: list[tuple[object, ...]] = []

    def on_head(self, parser: MessageParser, msg: HttpMessage) -> None:
        self.events.append(("head", msg.method or msg.status))

    def on_end(self, parser: MessageParser, msg: HttpMessage) -> None:
        self.events.append(("end", msg.method or msg.status, msg.body, msg.truncated, tuple(msg.flags)))

    def on_lost(self, parser: MessageParser, flag: str) -> None:
        self.events.append(("lost", flag))


def parser(resync: bool = False, **limits: int) -> tuple[MessageParser, Recorder]:
    rec = Recorder()
    return MessageParser(0, rec, Limits(**limits), Budget(1 << 30), bytearray(), resync), rec


def test_parser_states_through_a_chunked_message() -> None:
    p, rec = parser()
    assert p.state == IDLE
    p.feed(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab", 1)
    assert p.state == CHUNK_DATA and p.remaining == 3
    assert rec.events == [("head", "POST")]
    p.feed(b"cde\r\n0\r\n\r\n", 2)
    assert p.state == IDLE
    assert rec.events[-1] == ("end", "POST", b"abcde", False, ())
    assert p.buffered_bytes() == 0


def test_parser_content_length_body_state() -> None:
    p, rec = parser()
    p.feed(b"PUT /x HTTP/1.1\r\nContent-Length: 10\r\n\r\n123", 1)
    assert (p.state, p.remaining) == (BODY, 7)
    assert p.buffered_bytes() == 3
    p.feed(b"4567890GET", 2)
    assert rec.events[-1] == ("end", "PUT", b"1234567890", False, ())
    assert p.state == IDLE and p.buf == b"GET"


def test_response_without_length_is_close_delimited() -> None:
    p, rec = parser()
    p.feed(b"HTTP/1.1 200 OK\r\n\r\nabc", 1)
    assert p.state == CLOSE_BODY
    p.close()
    assert rec.events == [("head", 200), ("end", 200, b"abc", False, ())]


def test_parser_gap_at_boundary_reports_lost() -> None:
    p, rec = parser()
    p.gap(100, snaplen=True)
    assert rec.events == [("lost", Flag.SNAPLEN)]
    assert p.state == RESYNC


def test_resync_tail_is_bounded() -> None:
    p, _ = parser(resync=True)
    for _ in range(100):
        p.feed(b"x" * 1000, 1)  # one endless line: nothing to keep
        assert p.buffered_bytes() <= RESYNC_TAIL
    for _ in range(100):
        p.feed(b"y" * 999 + b"\n", 1)
        assert p.buffered_bytes() <= RESYNC_TAIL
    assert p.skipped == 200_000


def test_partial_head_is_bounded_by_max_header_block() -> None:
    p, rec = parser(max_header_block=1000)
    p.feed(b"GET / HTTP/1.1\r\n", 1)
    for _ in range(20):
        p.feed(b"X-A: " + b"a" * 95 + b"\r\n", 1)
        assert p.buffered_bytes() <= 1000
    assert p.state == RESYNC
    p.feed(b"\r\nGET /2 HTTP/1.1\r\n\r\n", 2)
    assert rec.events[0] == ("head", "GET")
    assert rec.events[1][0:2] == ("end", "GET")
    assert Flag.PARSE_ERROR in rec.events[1][4]  # type: ignore[operator]


def test_garbage_first_line_resyncs_without_waiting_for_a_block_end() -> None:
    p, rec = parser()
    p.feed(b"\x16\x03\x01 hello\r\npartial", 1)
    assert p.state == RESYNC
    assert rec.events == []
    assert p.buffered_bytes() == len(b"partial")


def test_header_name_cache_does_not_accept_lines_without_colon() -> None:
    p, rec = parser()
    p.feed(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", 1)  # "Host" is now a known-good name
    p.feed(b"GET / HTTP/1.1\r\nHost\r\n\r\n", 2)
    assert rec.events[-1][0] == "end"
    assert p.role is None


def test_request_after_upgrade_request_is_held() -> None:
    p, rec = parser()
    p.feed(b"GET / HTTP/1.1\r\nUpgrade: websocket\r\n\r\nGET /next HTTP/1.1\r\n\r\n", 1)
    assert [e[0:2] for e in rec.events] == [("head", "GET"), ("end", "GET")]
    assert p.held_size == len(b"GET /next HTTP/1.1\r\n\r\n")
    p.release()
    assert [e[0:2] for e in rec.events[2:]] == [("head", "GET"), ("end", "GET")]
    assert p.held_size == 0


def test_hold_is_bounded_by_detect_window() -> None:
    p, rec = parser(detect_window=64)
    p.feed(b"GET / HTTP/1.1\r\nUpgrade: h2c\r\n\r\n", 1)
    p.feed(b"GET /a HTTP/1.1\r\n\r\n", 2)
    assert p.held_size > 0
    p.feed(b"GET /b HTTP/1.1\r\n\r\nGET /c HTTP/1.1\r\n\r\nGET /d HTTP/1.1\r\n\r\n", 3)
    assert p.held_size == 0  # released by itself: parsed as HTTP/1
    assert [e[1] for e in rec.events if e[0] == "end"] == ["GET"] * 5
