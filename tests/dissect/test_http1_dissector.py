"""HTTP/1.x dissector: concrete byte streams in, exact calls out.

Direction 0 is the client unless a test says otherwise; timestamps are small integers so the
expected request_ts/response_ts read easily.
"""

from __future__ import annotations

import gzip

from dissect.base import Budget, ConnContext, Limits
from dissect.http1 import ANALYZER, HTTP1Dissector
from dissect.model import Call, Endpoint, Flag

CLIENT = Endpoint(ip="10.0.0.1", port=40000)
SERVER = Endpoint(ip="10.0.0.2", port=8080)


def make(
    handshake: bool = True, budget: int = 1 << 30, **limits: int
) -> tuple[HTTP1Dissector, list[Call], ConnContext]:
    calls: list[Call] = []
    ctx = ConnContext(
        flow_id="flow-1",
        endpoints=(CLIENT, SERVER),
        emit=calls.append,
        handshake_seen=handshake,
        limits=Limits(**limits),
        budget=Budget(budget),
    )
    return HTTP1Dissector(ctx, strict=True), calls, ctx


def summary(c: Call) -> tuple[object, ...]:
    return (c.method, c.target, c.status)


def bodies(c: Call) -> tuple[bytes | None, bytes | None]:
    return (
        None if c.request is None else c.request.body,
        None if c.response is None else c.response.body,
    )


# ---------------------------------------------------------------------------------------------- basics


def test_simple_get_full_record() -> None:
    d, calls, _ = make()
    d.feed(0, b"GET /index.html?q=1 HTTP/1.1\r\nHost: example.com\r\nAccept: */*\r\n\r\n", 100)
    assert calls == []
    d.feed(1, b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello", 250)
    assert len(calls) == 1
    c = calls[0]
    assert c.protocol == "http"
    assert c.transport == "tcp"
    assert c.flow_id == "flow-1"
    assert c.id == ""
    assert c.src is CLIENT and c.dst is SERVER
    assert (c.request_ts, c.response_ts) == (100, 250)
    assert c.finish().latency_ns == 150
    assert summary(c) == ("GET", "/index.html?q=1", 200)
    assert c.request is not None and c.response is not None
    assert c.request.headers == [("Host", "example.com"), ("Accept", "*/*")]
    assert (c.request.body, c.request.body_size, c.request.wire_size) == (b"", 0, 0)
    assert c.response.headers == [("Content-Type", "text/plain"), ("Content-Length", "5")]
    assert (c.response.body, c.response.body_size, c.response.wire_size) == (b"hello", 5, 5)
    assert c.response.truncated is False
    assert c.info == {"http_version": "1.1"}
    assert c.flags == []
    d.close(300)
    assert len(calls) == 1


def test_keep_alive_sequence() -> None:
    d, calls, _ = make()
    for i in range(3):
        d.feed(0, f"GET /{i} HTTP/1.1\r\nHost: a\r\n\r\n".encode(), 10 * i)
        d.feed(1, f"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n{i}".encode(), 10 * i + 5)
    assert [summary(c) for c in calls] == [("GET", f"/{i}", 200) for i in range(3)]
    assert [c.response.body for c in calls if c.response] == [b"0", b"1", b"2"]
    assert [(c.request_ts, c.response_ts) for c in calls] == [(0, 5), (10, 15), (20, 25)]


def test_pipelining_several_messages_per_segment() -> None:
    d, calls, _ = make()
    d.feed(
        0,
        b"GET /a HTTP/1.1\r\nHost: h\r\n\r\n"
        b"POST /b HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\n\r\nbody"
        b"DELETE /c HTTP/1.1\r\nHost: h\r\n\r\n",
        1,
    )
    d.feed(
        1,
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nA"
        b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nBB\r\n0\r\n\r\n"
        b"HTTP/1.1 204 No Content\r\n\r\n",
        2,
    )
    assert [summary(c) for c in calls] == [("GET", "/a", 200), ("POST", "/b", 201), ("DELETE", "/c", 204)]
    assert [bodies(c) for c in calls] == [(b"", b"A"), (b"body", b"BB"), (b"", b"")]
    assert all(c.flags == [] for c in calls)


def test_chunked_with_extensions_and_trailers() -> None:
    d, calls, _ = make()
    d.feed(0, b"GET /wiki HTTP/1.1\r\nHost: w\r\nTE: trailers\r\n\r\n", 1)
    d.feed(
        1,
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: Expires\r\n\r\n"
        b"4;name=value\r\nWiki\r\n5 ; ext\r\npedia\r\nE\r\n in\r\n\r\nchunks.\r\n0\r\n"
        b"Expires: Wed, 21 Oct 2015 07:28:00 GMT\r\nX-Checksum: abc\r\n\r\n",
        2,
    )
    (c,) = calls
    assert c.response is not None
    assert c.response.body == b"Wikipedia in\r\n\r\nchunks."
    assert c.response.wire_size == 4 + 5 + 14
    assert c.response.body_size == 23
    assert c.response.trailers == [("Expires", "Wed, 21 Oct 2015 07:28:00 GMT"), ("X-Checksum", "abc")]
    assert c.flags == []


def test_chunked_request_body() -> None:
    d, calls, _ = make()
    d.feed(0, b"PUT /up HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n", 1)
    d.feed(1, b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n", 2)
    (c,) = calls
    assert summary(c) == ("PUT", "/up", 201)
    assert bodies(c) == (b"abc", b"")


def test_close_delimited_response_completes_at_close() -> None:
    d, calls, _ = make()
    d.feed(0, b"GET / HTTP/1.0\r\n\r\n", 1)
    d.feed(1, b"HTTP/1.0 200 OK\r\nContent-Type: text/html\r\n\r\n<html>", 2)
    d.feed(1, b"</html>", 3)
    assert calls == []
    d.close(4)
    (c,) = calls
    assert summary(c) == ("GET", "/", 200)
    assert c.response is not None
    assert c.response.body == b"<html></html>"
    assert c.response.truncated is False
    assert c.info == {"http_version": "1.0"}
    assert c.flags == []


def test_head_response_has_no_body_despite_content_length() -> None:
    d, calls, _ = make()
    d.feed(0, b"HEAD /big HTTP/1.1\r\nHost: h\r\n\r\nGET /small HTTP/1.1\r\nHost: h\r\n\r\n", 1)
    d.feed(
        1,
        b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        2,
    )
    assert [summary(c) for c in calls] == [("HEAD", "/big", 200), ("GET", "/small", 200)]
    assert [bodies(c) for c in calls] == [(b"", b""), (b"", b"ok")]
    assert calls[0].response is not None and calls[0].response.wire_size == 0


def test_204_and_304_have_no_body() -> None:
    d, calls, _ = make()
    d.feed(0, b"GET /a HTTP/1.1\r\n\r\nGET /b HTTP/1.1\r\n\r\nGET /c HTTP/1.1\r\n\r\n", 1)
    d.feed(
        1,
        b"HTTP/1.1 304 Not Modified\r\nContent-Length: 50\r\nETag: x\r\n\r\n"
        b"HTTP/1.1 204 No Content\r\nContent-Length: 9\r\n\r\n"
        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nyes",
        2,
    )
    assert [c.status for c in calls] == [304, 204, 200]
    assert [bodies(c)[1] for c in calls] == [b"", b"", b"yes"]


def test_expect_100_continue() -> None:
    d, calls, _ = make()
    d.feed(0, b"POST /upload HTTP/1.1\r\nContent-Length: 6\r\nExpect: 100-continue\r\n\r\n", 1)
    d.feed(1, b"HTTP/1.1 100 Continue\r\n\r\n", 2)
    assert calls == []
    d.feed(0, b"123456", 3)
    d.feed(1, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", 4)
    (c,) = calls
    assert summary(c) == ("POST", "/upload", 200)
    assert bodies(c) == (b"123456", b"ok")
    assert c.info == {"http_version": "1.1", "interim": [100]}
    assert c.response_ts == 4
    assert c.flags == []


def test_final_response_before_request_body_finishes() -> None:
    d, calls, _ = make()
    d.feed(0, b"POST /x HTTP/1.1\r\nContent-Length: 10\r\n\r\n12345", 1)
    d.feed(1, b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 0\r\n\r\n", 2)
    assert calls == []  # the request is still being sent
    d.feed(0, b"67890", 3)
    (c,) = calls
    assert summary(c) == ("POST", "/x", 413)
    assert bodies(c) == (b"1234567890", b"")


def test_websocket_upgrade_stops_parsing_and_keeps_post_switch_bytes() -> None:
    d, calls, _ = make(detect_window=16)
    d.feed(
        0,
        b"GET /chat HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        1,
    )
    d.feed(
        1,
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n\x81\x05hello",
        2,
    )
    (c,) = calls
    assert summary(c) == ("GET", "/chat", 101)
    assert c.flags == [Flag.UPGRADE]
    assert c.info == {"http_version": "1.1", "upgrade": "websocket"}
    assert d.switched_to == "websocket"
    d.feed(0, b"\x81\x85\x00\x00\x00\x00hello GET / HTTP/1.1\r\n\r\n", 3)
    d.feed(1, b"HTTP/1.1 200 OK\r\n\r\n", 4)
    d.close(5)
    assert len(calls) == 1  # nothing after the switch is parsed
    assert bytes(d.post_switch[1]) == (b"\x81\x05hello" + b"HTTP/1.1 200 OK\r\n\r\n")[:16]
    assert bytes(d.post_switch[0]) == b"\x81\x85\x00\x00\x00\x00hello GET "


def test_h2c_upgrade_preface_sent_before_101_is_held_for_handoff() -> None:
    d, calls, _ = make()
    d.feed(0, b"GET / HTTP/1.1\r\nHost: h\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n", 1)
    d.feed(0, b"HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n", 2)
    preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00"
    d.feed(0, preface, 3)  # capture order put the preface before the 101
    assert calls == []
    d.feed(1, b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n", 4)
    d.feed(1, b"\x00\x00\x00\x04\x00\x00\x00\x00\x00", 5)
    (c,) = calls
    assert summary(c) == ("GET", "/", 101)
    assert c.request_ts == 1
    assert c.info["upgrade"] == "h2c"
    assert Flag.UPGRADE in c.flags
    assert Flag.PARSE_ERROR not in c.flags
    assert d.switched_to == "h2c"
    assert bytes(d.post_switch[0]) == preface
    assert bytes(d.post_switch[1]) == b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"


def test_upgrade_refused_releases_held_requests() -> None:
    d, calls, _ = make()
    d.feed(0, b"GET /a HTTP/1.1\r\nUpgrade: h2c\r\n\r\nGET /b HTTP/1.1\r\n\r\n", 1)
    d.feed(1, b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nA", 2)
    d.feed(1, b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nB", 3)
    assert [summary(c) for c in calls] == [("GET", "/a", 200), ("GET", "/b", 200)]
    assert [c.request_ts for c in calls] == [1, 1]
    assert all(Flag.UPGRADE not in c.flags for c in calls)
    assert d.switched_to is None


def test_connect_tunnel() -> None:
    d, calls, _ = make()
    d.feed(0, b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n", 1)
    d.feed(1, b"HTTP/1.1 200 Connection established\r\n\r\n", 2)
    d.feed(0, b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", 3)
    d.feed(1, b"\x16\x03\x03\x00\x7a", 4)
    d.close(5)
    (c,) = calls
    assert summary(c) == ("CONNECT", "example.com:443", 200)
    assert c.info == {"http_version": "1.1", "upgrade": "tunnel"}
    assert c.flags == [Flag.UPGRADE]
    assert d.switched_to == "tunnel"
    assert bytes(d.post_switch[0]) == b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"
    assert bytes(d.post_switch[1]) == b"\x16\x03\x03\x00\x7a"


def test_connect_refused_is_a_normal_call() -> None:
    d, calls, _ = make()
    d.feed(0, b"CONNECT example.com:443 HTTP/1.1\r\n\r\n", 1)
    d.feed(1, b"HTTP/1.1 407 Proxy Authentication Required\r\nContent-Length: 4\r\n\r\nauth", 2)
    d.feed(0, b"GET http://example.com/ HTTP/1.1\r\n\r\n", 3)
    d.feed(1, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", 4)
    assert [summary(c) for c in calls] == [
        ("CONNECT", "example.com:443", 407),
        ("GET", "http://example.com/", 200),
    ]
    assert calls[0].flags == []
    assert d.switched_to is None


def test_obs_fold_joined_with_one_space() -> None:
    d, calls, _ = make()
    d.feed(0, b"GET / HTTP/1.1\r\nX-Long: first\r\n   second\r\n\tthird\r\nHost: h\r\n\r\n", 1)
    d.feed(1, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", 2)
    (c,) = calls
    assert c.request is not None
    assert c.request.headers == [("X-Long", "first second third"), ("Host", "h")]
    assert c.info["weird"] == ["obs-fold"]


def test_bare_lf_line_endings() -> None:
    d, calls, _ = make()
    d.feed(0, b"GET /lf HTTP/1.1\nHost: h\n\nGET /mixed HTTP/1.1\r\nHost: h\n\r\n", 1)
    d.feed(1, b"HTTP/1.1 200 OK\nContent-Length: 2\n\nokHTTP/1.1 404 Not Found\ncontent-length: 0\n\n", 2)
    assert [summary(c) for c in calls] == [("GET", "/lf", 200), ("GET", "/mixed", 404)]
    assert calls[0].request is not None and calls[0].request.headers == [("Host", "h")]
    assert calls[1].request is not None and calls[1].request.headers == [("Host", "h")]
    assert bodies(calls[0]) == (b"", b"ok")


def test_http_1_0() -> None:
    d, calls, _ = make()
    d.feed(0, b"GET /old HTTP/1.0\r\nUser-Agent: ancient\r\n\r\n", 1)
    d.feed(1, b"HTTP/1.0 404 Not Found\r\nContent-Length: 3\r\n\r\nnah", 2)
    (c,) = calls
    assert summary(c) == ("GET", "/old", 404)
    assert c.info["http_version"] == "1.0"


def test_any_method_token() -> None:
    d, calls, _ = make()
    methods = ["PROPFIND", "MKCOL", "COPY", "LOCK", "BREW", "FOOBAR_X", "get", "M-SEARCH", "X.Y"]
    for m in methods:
        d.feed(0, f"{m} /m HTTP/1.1\r\nHost: h\r\n\r\n".encode(), 1)
    d.feed(1, b"HTTP/1.1 207 Multi-Status\r\nContent-Length: 0\r\n\r\n" * len(methods), 2)
    assert [c.method for c in calls] == methods
    assert all(c.status == 207 and c.flags == [] for c in calls)


def test_headers_keep_case_order_and_repeats() -> None:
    d, calls, _ = make()
    d.feed(
        0, b"GET / HTTP/1.1\r\nhOsT: h\r\nCookie: a=1\r\nCookie: b=2\r\nX-Empty:\r\nX-Sp:   v  \r\n\r\n", 1
    )
    d.feed(1, b"HTTP/1.1 200 OK\r\nSet-Cookie: x\r\nSet-Cookie: y\r\nContent-Length: 0\r\n\r\n", 2)
    (c,) = calls
    assert c.request is not None and c.response is not None
    assert c.request.headers == [
        ("hOsT", "h"),
        ("Cookie", "a=1"),
        ("Cookie", "b=2"),
        ("X-Empty", ""),
        ("X-Sp", "v"),
    ]
    assert c.response.header_values("set-cookie") == ["x", "y"]


def test_header_bytes_utf8_else_latin1() -> None:
    d, calls, _ = make()
    d.feed(0, "GET /caf\u00e9 HTTP/1.1\r\nX-U: caf\u00e9\r\n".encode() + b"X-L: caf\xe9\r\n\r\n", 1)
    d.feed(1, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", 2)
    (c,) = calls
    assert c.target == "/caf\u00e9"
    assert c.request is not None
    assert c.request.headers == [("X-U", "caf\u00e9"), ("X-L", "caf\u00e9")]


def test_client_on_direction_1() -> None:
    d, calls, _ = make()
    d.feed(1, b"GET /rev HTTP/1.1\r\n\r\n", 1)
    d.feed(0, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", 2)
    (c,) = calls
    assert c.src is SERVER and c.dst is CLIENT  # endpoints[1] is the client here
    assert summary(c) == ("GET", "/rev", 200)


def test_status_line_first_decides_the_server() -> None:
    d, calls, _ = make()
    d.feed(0, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", 1)  # direction 0 is the server
    d.feed(1, b"GET /next HTTP/1.1\r\n\r\n", 2)
    d.feed(0, b"HTTP/1.1 204 No Content\r\n\r\n", 3)
    assert [(c.method, c.status, c.flags) for c in calls] == [
        (None, 200, [Flag.REQUEST_MISSING]),
        ("GET", 204, []),
    ]
    assert calls[1].src is SERVER


def test_byte_by_byte_feeding_keeps_first_byte_timestamp() -> None:
    d, calls, _ = make()
    req = b"POST /p HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc"
    resp = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nx\r\n0\r\nT: 1\r\n\r\n"
    for i, b in enumerate(req):
        d.feed(0, bytes([b]), 1000 + i)
    for i, b in enumerate(resp):
        d.feed(1, bytes([b]), 2000 + i)
    (c,) = calls
    assert (c.request_ts, c.response_ts) == (1000, 2000)
    assert bodies(c) == (b"abc", b"x")
    assert c.response is not None and c.response.trailers == [("T", "1")]


def test_leading_empty_lines_are_ignored() -> None:
    d, calls, _ = make()
    d.feed(0, b"\r\n\r\nGET / HTTP/1.1\r\n\r\n", 1)
    d.feed(1, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", 2)
    assert [(summary(c), c.flags) for c in calls] == [(("GET", "/", 200), [])]


# ------------------------------------------------------------------------------------- content coding


def test_gzip_response_is_decoded() -> None:
    d, calls, _ = make()
    payload = b'{"items": [1, 2, 3], "ok": true}'
    wire = gzip.compress(payload)
    d.feed(0, b"GET /j HTTP/1.1\r\nAccept-Encoding: gzip\r\n\r\n", 1)
    d.feed(
        1, b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: %d\r\n\r\n" % len(wire) + wire, 2
    )
    (c,) = calls
    assert c.response is not None
    assert c.response.body == payload
    assert c.response.body_size == len(payload)
    assert c.response.wire_size == len(wire)
    assert c.info == {"http_version": "1.1", "content_encoding": "gzip"}


def test_gzip_chunked_response_wire_size_excludes_framing() -> None:
    d, calls, _ = make()
    wire = gzip.compress(b"A" * 1000)
    half = len(wire) // 2
    d.feed(0, b"GET / HTTP/1.1\r\n\r\n", 1)
    d.feed(
        1,
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Encoding: gzip\r\n\r\n"
        + b"%x\r\n" % half
        + wire[:half]
        + b"\r\n"
        + b"%x\r\n" % (len(wire) - half)
        + wire[half:]
        + b"\r\n0\r\n\r\n",
        2,
    )
    (c,) = calls
    assert c.response is not None
    assert (c.response.body, c.response.body_size, c.response.wire_size) == (b"A" * 1000, 1000, len(wire))


def test_corrupt_content_encoding_keeps_raw_body() -> None:
    d, calls, _ = make()
    d.feed(0, b"GET / HTTP/1.1\r\n\r\n", 1)
    d.feed(1, b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: 7\r\n\r\nnot-gz!", 2)
    (c,) = calls
    assert c.response is not None
    assert c.response.body == b"not-gz!"
    assert "content_encoding_error" in c.info
    assert "content_encoding" not in c.info


# ------------------------------------------------------------------------------------------- limits


def test_body_beyond_max_body_is_counted_not_kept() -> None:
    d, calls, _ = make(max_body=10)
    d.feed(0, b"POST /u HTTP/1.1\r\nContent-Length: 26\r\n\r\nabcdefghij", 1)
    d.feed(0, b"klmnopqrstuvwxyz", 2)
    d.feed(1, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", 3)
    (c,) = calls
    assert c.request is not None
    assert (c.request.body, c.request.body_size, c.request.wire_size) == (b"abcdefghij", 26, 26)
    assert c.request.truncated is True
    assert c.flags == [Flag.TRUNCATED]


def test_gzip_bomb_is_cut_at_max_body() -> None:
    d, calls, _ = make(max_body=2000)
    wire = gzip.compress(b"\0" * 1_000_000)
    assert len(wire) < 2000
    d.feed(0, b"GET / HTTP/1.1\r\n\r\n", 1)
    d.feed(
        1, b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: %d\r\n\r\n" % len(wire) + wire, 2
    )
    (c,) = calls
    assert c.response is not None
    assert c.response.body == b"\0" * 2000
    assert c.response.truncated is True
    assert c.response.wire_size == len(wire)
    assert Flag.TRUNCATED in c.flags


def test_budget_refusal_truncates_and_is_given_back() -> None:
    d, calls, ctx = make(budget=8)
    d.feed(0, b"GET / HTTP/1.1\r\n\r\n", 1)
    d.feed(1, b"HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\n0123456789ab", 2)
    (c,) = calls
    assert c.response is not None
    assert (c.response.body, c.response.wire_size, c.response.truncated) == (b"01234567", 12, True)
    assert ctx.budget.available == 8  # given back on emit
    d.feed(0, b"GET / HTTP/1.1\r\n\r\n", 3)
    d.feed(1, b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nwxyz", 4)
    assert calls[1].response is not None and calls[1].response.body == b"wxyz"
    assert ctx.budget.available == 8


def test_budget_held_while_request_waits() -> None:
    d, _, ctx = make(budget=100)
    d.feed(0, b"POST / HTTP/1.1\r\nContent-Length: 30\r\n\r\n" + b"x" * 30, 1)
    assert ctx.budget.available == 70
    assert d.buffered_bytes() == 30
    d.close(2)
    assert ctx.budget.available == 100


def test_oversized_header_block_is_a_parse_error_then_resync() -> None:
    d, calls, _ = make(max_header_block=200)
    d.feed(0, b"GET /huge HTTP/1.1\r\n" + b"X-Pad: " + b"p" * 300 + b"\r\n", 1)
    d.feed(0, b"X-More: 1\r\n\r\nGET /ok HTTP/1.1\r\nHost: h\r\n\r\n", 2)
    d.feed(1, b"HTTP/1.1 431 Too Large\r\nContent-Length: 0\r\n\r\n", 3)
    d.feed(1, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", 4)
    assert d.buffered_bytes() == 0
    # the huge request could not be parsed; /ok is found by resync. The first response is then
    # paired with /ok (FIFO), the second has no request left.
    assert [(c.method, c.target, c.status) for c in calls] == [("GET", "/ok", 431), (None, None, 200)]
    assert Flag.PARSE_ERROR in calls[0].flags
    assert calls[0].info["weird"] == ["header-block-too-large"]
    # everything from the start of the huge head up to /ok was skipped
    assert calls[0].info["skipped_bytes"] == 20 + 7 + 300 + 2 + len(b"X-More: 1\r\n\r\n")


def test_pending_overflow_emits_oldest_as_response_missing() -> None:
    d, calls, _ = make(max_pending=2)
    for i in range(3):
        d.feed(0, f"GET /{i} HTTP/1.1\r\n\r\n".encode(), i)
    assert [(c.target, c.status, c.flags) for c in calls] == [("/0", None, [Flag.RESPONSE_MISSING])]
    d.feed(1, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", 10)
    assert [(c.target, c.status) for c in calls] == [("/0", None), ("/1", 200)]


# ----------------------------------------------------------------------------------- missing halves


def test_response_without_request() -> None:
    d, calls, _ = make()
    d.feed(1, b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 3\r\n\r\nerr", 7)
    (c,) = calls
    assert (c.method, c.target, c.status, c.request) == (None, None, 500, None)
    assert (c.request_ts, c.response_ts) == (None, 7)
    assert c.flags == [Flag.REQUEST_MISSING]
    assert c.info == {"http_version": "1.1"}
    assert c.src is CLIENT  # direction 1 answered, so direction 0 is the client


def test_request_without_response() -> None:
    d, calls, _ = make()
    d.feed(0, b"GET /lost HTTP/1.1\r\n\r\n", 1)
    d.close(2)
    (c,) = calls
    assert (c.method, c.target, c.status, c.response, c.response_ts) == ("GET", "/lost", None, None, None)
    assert c.flags == [Flag.RESPONSE_MISSING]


def test_close_mid_body_truncates() -> None:
    d, calls, _ = make()
    d.feed(0, b"GET / HTTP/1.1\r\n\r\n", 1)
    d.feed(1, b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n12345", 2)
    d.close(3)
    (c,) = calls
    assert c.response is not None
    assert (c.response.body, c.response.wire_size, c.response.truncated) == (b"12345", 5, True)
    assert c.flags == [Flag.TRUNCATED]
    assert c.info["weird"] == ["incomplete-message"]


# --------------------------------------------------------------------------------------------- gaps


def test_gap_inside_content_length_body_stays_in_sync() -> None:
    d, calls, _ = make()
    d.feed(0, b"GET /1 HTTP/1.1\r\n\r\nGET /2 HTTP/1.1\r\n\r\n", 1)
    d.feed(1, b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n0123", 2)
    d.gap(1, 4, 3)
    d.feed(1, b"89HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", 4)
    assert [summary(c) for c in calls] == [("GET", "/1", 200), ("GET", "/2", 200)]
    r0 = calls[0].response
    assert r0 is not None
    assert (r0.body, r0.wire_size, r0.body_size, r0.truncated) == (b"0123", 10, 10, True)
    assert calls[0].flags == [Flag.GAP, Flag.TRUNCATED]
    assert calls[1].flags == []
    assert bodies(calls[1]) == (b"", b"ok")


def test_snaplen_gap_uses_snaplen_flag() -> None:
    d, calls, _ = make()
    d.feed(0, b"POST / HTTP/1.1\r\nContent-Length: 8\r\n\r\nab", 1)
    d.gap(0, 6, 2, snaplen=True)
    d.feed(1, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", 3)
    (c,) = calls
    assert c.flags == [Flag.SNAPLEN, Flag.TRUNCATED]
    assert c.request is not None and (c.request.body, c.request.wire_size) == (b"ab", 8)


def test_gap_inside_chunk_data_stays_in_sync() -> None:
    d, calls, _ = make()
    d.feed(0, b"GET / HTTP/1.1\r\n\r\n", 1)
    d.feed(1, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\na\r\n01", 2)
    d.gap(1, 5, 3)
    d.feed(1, b"789\r\n3\r\nabc\r\n0\r\n\r\n", 4)
    (c,) = calls
    assert c.response is not None
    assert (c.response.body, c.response.wire_size, c.response.truncated) == (b"01", 13, True)
    assert c.flags == [Flag.GAP, Flag.TRUNCATED]


def test_gap_inside_close_delimited_body() -> None:
    d, calls, _ = make()
    d.feed(0, b"GET / HTTP/1.0\r\n\r\n", 1)
    d.feed(1, b"HTTP/1.0 200 OK\r\n\r\nabc", 2)
    d.gap(1, 100, 3)
    d.feed(1, b"xyz", 4)
    d.close(5)
    (c,) = calls
    assert c.response is not None
    assert (c.response.body, c.response.wire_size, c.response.truncated) == (b"abc", 106, True)
    assert c.flags == [Flag.GAP, Flag.TRUNCATED]


def test_gap_at_response_boundary_retires_oldest_request() -> None:
    d, calls, _ = make()
    d.feed(0, b"GET /1 HTTP/1.1\r\n\r\nGET /2 HTTP/1.1\r\n\r\nGET /3 HTTP/1.1\r\n\r\n", 1)
    d.gap(1, 60, 2)  # the whole first response was lost
    assert [(c.target, c.status, c.flags) for c in calls] == [("/1", None, [Flag.GAP, Flag.RESPONSE_MISSING])]
    d.feed(
        1, b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n2HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n3", 3
    )
    assert [(c.target, bodies(c)[1], c.flags) for c in calls[1:]] == [("/2", b"2", []), ("/3", b"3", [])]


def test_gap_at_request_boundary_pushes_placeholder() -> None:
    d, calls, _ = make()
    d.feed(0, b"GET /1 HTTP/1.1\r\n\r\n", 1)
    d.gap(0, 40, 2)  # a whole request was lost
    d.feed(0, b"GET /3 HTTP/1.1\r\n\r\n", 3)
    d.feed(1, b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n1", 4)
    d.feed(1, b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n2", 5)
    d.feed(1, b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n3", 6)
    assert [(c.target, bodies(c)[1], c.flags) for c in calls] == [
        ("/1", b"1", []),
        (None, b"2", [Flag.GAP, Flag.REQUEST_MISSING]),
        ("/3", b"3", []),
    ]


def test_gap_inside_response_head_after_start_line() -> None:
    d, calls, _ = make()
    d.feed(0, b"GET /1 HTTP/1.1\r\n\r\nGET /2 HTTP/1.1\r\n\r\n", 1)
    d.feed(1, b"HTTP/1.1 302 Found\r\nLocation: /x\r\nConte", 2)
    d.gap(1, 30, 3)
    # resync skips the rest of the lost response (its body) and finds the next one
    d.feed(1, b"nt body\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", 4)
    assert [(c.target, c.status) for c in calls] == [("/1", 302), ("/2", 200)]
    r0 = calls[0].response
    assert r0 is not None and r0.headers == [("Location", "/x")] and r0.truncated
    assert calls[0].flags == [Flag.GAP, Flag.TRUNCATED]
    assert calls[1].flags == []
    assert calls[1].info["skipped_bytes"] == len(b"nt body\r\n")


def test_gap_inside_request_head_keeps_request_for_its_response() -> None:
    d, calls, _ = make()
    d.feed(0, b"GET /partial HTTP/1.1\r\nHost: h\r\nUser-Ag", 1)
    d.gap(0, 20, 2)
    d.feed(0, b"ent\r\n\r\nGET /next HTTP/1.1\r\n\r\n", 3)
    d.feed(1, b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nA", 4)
    d.feed(1, b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nB", 5)
    assert [(c.target, bodies(c)[1]) for c in calls] == [("/partial", b"A"), ("/next", b"B")]
    assert calls[0].request is not None and calls[0].request.headers == [("Host", "h")]
    assert calls[0].flags == [Flag.GAP, Flag.TRUNCATED]
    assert calls[1].flags == []


def test_gap_inside_start_line_counts_as_lost_message() -> None:
    d, calls, _ = make()
    d.feed(0, b"GET /1 HTTP/1.1\r\n\r\nGET /2 HTTP/1.1\r\n\r\n", 1)
    d.feed(1, b"HTTP/1.1 2", 2)
    d.gap(1, 40, 3)
    d.feed(1, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", 4)
    assert [(c.target, c.status, c.flags) for c in calls] == [
        ("/1", None, [Flag.GAP, Flag.RESPONSE_MISSING]),
        ("/2", 200, []),
    ]


def test_gap_in_chunk_size_line_ends_message_and_resyncs() -> None:
    d, calls, _ = make()
    d.feed(0, b"GET /1 HTTP/1.1\r\n\r\nGET /2 HTTP/1.1\r\n\r\n", 1)
    d.feed(1, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n1", 2)
    d.gap(1, 10, 3)
    d.feed(1, b"zz\r\n0\r\n\r\nHTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n", 4)
    assert [(c.target, c.status) for c in calls] == [("/1", 200), ("/2", 404)]
    assert bodies(calls[0])[1] == b"abc"
    assert calls[0].flags == [Flag.GAP, Flag.TRUNCATED]
    assert calls[1].flags == []


def test_gap_past_end_of_body_loses_next_message_start() -> None:
    d, calls, _ = make()
    d.feed(0, b"GET /1 HTTP/1.1\r\n\r\nGET /2 HTTP/1.1\r\n\r\nGET /3 HTTP/1.1\r\n\r\n", 1)
    d.feed(1, b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nab", 2)
    d.gap(1, 20, 3)  # 2 bytes of body, then the start of the second response
    d.feed(1, b"\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n3", 4)
    assert [(c.target, c.status, c.flags) for c in calls] == [
        ("/1", 200, [Flag.GAP, Flag.TRUNCATED]),
        ("/2", None, [Flag.GAP, Flag.RESPONSE_MISSING]),
        ("/3", 200, []),
    ]


# ---------------------------------------------------------------------------- mid-stream and resync


def test_mid_stream_capture_resyncs_both_directions() -> None:
    d, calls, _ = make(handshake=False)
    d.feed(0, b"dy of an earlier response\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi", 1)
    d.feed(1, b"rest of a request body\r\nGET /next HTTP/1.1\r\nHost: h\r\n\r\n", 2)
    d.feed(0, b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n", 3)
    d.feed(1, b"GET /third HTTP/1.1\r\n\r\n", 4)
    d.feed(0, b"HTTP/1.1 202 Accepted\r\nContent-Length: 0\r\n\r\n", 5)
    assert [(c.method, c.target, c.status) for c in calls] == [
        (None, None, 200),
        ("GET", "/next", 201),
        ("GET", "/third", 202),
    ]
    assert calls[0].flags == [Flag.MID_STREAM, Flag.REQUEST_MISSING]
    assert calls[0].info["skipped_bytes"] == len(b"dy of an earlier response\r\n")
    assert calls[0].src is SERVER  # direction 1 sent the request line, so it is the client
    assert calls[1].flags == [Flag.MID_STREAM]
    assert calls[1].info["skipped_bytes"] == len(b"rest of a request body\r\n")
    assert calls[2].flags == []
    assert "skipped_bytes" not in calls[2].info


def test_mid_stream_start_line_split_across_feeds() -> None:
    d, calls, _ = make(handshake=False)
    d.feed(0, b"garbage\r\nGET /sp", 1)
    d.feed(0, b"lit HTTP/1.1\r\nHo", 2)
    d.feed(0, b"st: h\r\n\r\n", 3)
    d.feed(1, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", 4)
    (c,) = calls
    assert summary(c) == ("GET", "/split", 200)
    assert c.request_ts == 1
    assert c.info["skipped_bytes"] == len(b"garbage\r\n")
    assert c.flags == [Flag.MID_STREAM]


def test_mid_stream_message_starting_a_new_segment_after_a_body_tail() -> None:
    # a body does not end with a newline: the next message starts at a packet boundary, mid-"line"
    d, calls, _ = make(handshake=False)
    d.feed(1, b"tail of an earlier body", 1)
    d.feed(0, b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n", 2)
    d.feed(1, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", 3)
    (c,) = calls
    assert summary(c) == ("GET", "/a", 200)
    assert c.info["skipped_bytes"] == len(b"tail of an earlier body")
    assert c.flags == [Flag.MID_STREAM]


def test_mid_stream_long_line_then_packet_boundary() -> None:
    d, calls, _ = make(handshake=False, max_header_block=512)
    d.feed(1, b"z" * 3000, 1)  # longer than any start line we would keep
    d.feed(0, b"GET /a HTTP/1.1\r\n\r\n", 2)
    d.feed(1, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", 3)
    assert [summary(c) for c in calls] == [("GET", "/a", 200)]
    assert calls[0].info["skipped_bytes"] == 3000


def test_start_line_inside_a_segment_but_not_at_a_line_start_is_ignored() -> None:
    d, calls, _ = make(handshake=False)
    d.feed(0, b"GET /a HTTP/1.1\r\n\r\n", 1)
    d.feed(1, b"xxHTTP/1.1 500 Fake\r\nA: b\r\n\r\n", 2)
    d.close(3)
    assert [(c.target, c.status) for c in calls] == [("/a", None)]


def test_resync_does_not_invent_calls_from_body_text() -> None:
    d, calls, _ = make(handshake=False)
    # looks like a status line but is not followed by a header line: rejected
    d.feed(1, b"xx\r\nHTTP/1.1 200 OK\r\nnot a header line\r\n", 1)
    # a request line inside what the response direction sends: wrong kind once roles are known
    d.feed(0, b"GET /real HTTP/1.1\r\nHost: h\r\n\r\n", 2)
    d.feed(1, b"GET /fake HTTP/1.1\r\nHost: x\r\n\r\n", 3)
    d.close(4)
    assert [(c.target, c.status, c.flags) for c in calls] == [
        ("/real", None, [Flag.MID_STREAM, Flag.RESPONSE_MISSING])
    ]


def test_garbage_start_line_is_parse_error_and_resync() -> None:
    d, calls, _ = make()
    d.feed(0, b"GET / HTTP/1.1\r\n\r\n", 1)
    d.feed(1, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", 2)
    d.feed(0, b"\x16\x03\x01 garbage here\r\nmore\r\nGET /after HTTP/1.1\r\nHost: h\r\n\r\n", 3)
    d.feed(1, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", 4)
    assert [c.target for c in calls] == ["/", "/after"]
    assert calls[1].flags == [Flag.PARSE_ERROR]
    assert calls[1].info["weird"] == ["bad-start-line"]
    assert calls[1].info["skipped_bytes"] == len(b"\x16\x03\x01 garbage here\r\nmore\r\n")


def test_bad_chunk_size_is_parse_error() -> None:
    d, calls, _ = make()
    d.feed(0, b"GET / HTTP/1.1\r\n\r\n", 1)
    d.feed(1, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\nzz\r\n", 2)
    (c,) = calls
    assert c.response is not None and c.response.body == b"ok" and c.response.truncated
    assert c.flags == [Flag.PARSE_ERROR, Flag.TRUNCATED]
    assert c.info["weird"] == ["bad-chunk-size"]


# ------------------------------------------------------------------------------------------ anomalies


def test_content_length_and_chunked_prefers_chunked() -> None:
    d, calls, _ = make()
    d.feed(
        0,
        b"POST / HTTP/1.1\r\nContent-Length: 100\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        1,
    )
    d.feed(1, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", 2)
    (c,) = calls
    assert bodies(c) == (b"abc", b"")
    assert c.info["weird"] == ["both-content-length-and-chunked"]
    assert c.flags == []


def test_duplicate_differing_content_length() -> None:
    d, calls, _ = make()
    d.feed(0, b"GET / HTTP/1.1\r\n\r\n", 1)
    d.feed(1, b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 5\r\n\r\nabc", 2)
    (c,) = calls
    assert bodies(c)[1] == b"abc"  # the first value frames the body
    assert c.info["weird"] == ["duplicate-content-length"]


def test_identical_repeated_content_length_is_fine() -> None:
    d, calls, _ = make()
    d.feed(0, b"GET / HTTP/1.1\r\n\r\n", 1)
    d.feed(1, b"HTTP/1.1 200 OK\r\nContent-Length: 3, 3\r\n\r\nabc", 2)
    (c,) = calls
    assert bodies(c)[1] == b"abc"
    assert "weird" not in c.info


def test_bad_header_line_is_weird_and_skipped() -> None:
    d, calls, _ = make()
    d.feed(0, b"GET / HTTP/1.1\r\nHost: h\r\nthis line has no colon\r\nBad Name: v\r\nOk: 1\r\n\r\n", 1)
    d.feed(1, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", 2)
    (c,) = calls
    assert c.request is not None and c.request.headers == [("Host", "h"), ("Ok", "1")]
    assert c.info["weird"] == ["bad-header-line"]


# ------------------------------------------------------------------------------------ transport notes


def test_note_attaches_to_message_in_progress_or_next() -> None:
    d, calls, _ = make()
    d.note(0, Flag.OUT_OF_ORDER)  # nothing in progress: goes to the next request
    d.feed(0, b"POST / HTTP/1.1\r\nContent-Length: 4\r\n\r\nab", 1)
    d.note(0, Flag.RETRANSMISSION)  # body in progress
    d.feed(0, b"cd", 2)
    d.feed(1, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", 3)
    d.note(1, Flag.RETRANSMISSION)  # after the response: belongs to the next one
    d.feed(0, b"GET /2 HTTP/1.1\r\n\r\n", 4)
    d.feed(1, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", 5)
    assert [c.flags for c in calls] == [[Flag.OUT_OF_ORDER, Flag.RETRANSMISSION], [Flag.RETRANSMISSION]]


def test_never_raises_on_odd_calls() -> None:
    d, calls, _ = make()
    d.gap(0, 0, 1)
    d.gap(1, -5, 1)
    d.feed(0, b"", 1)
    d.note(1, "whatever")
    d.close(2)
    d.close(3)
    d.feed(0, b"GET / HTTP/1.1\r\n\r\n", 4)  # after close: ignored
    assert calls == []


def test_analyzer_entry_point() -> None:
    assert ANALYZER.name == "http"
    calls: list[Call] = []
    ctx = ConnContext("f", (CLIENT, SERVER), calls.append)
    d = ANALYZER.new(ctx)
    d.feed(0, b"GET / HTTP/1.1\r\n\r\n", 1)
    d.close(2)
    assert [c.flags for c in calls] == [[Flag.RESPONSE_MISSING]]


# ---------------------------------------------------------------------------------- losses on both sides


def test_lost_request_and_response_declared_response_first_do_not_shift_pairing() -> None:
    """Zeek's zero-length-bodies-with-drops: a request and its response are both lost, and the
    reassembler declares the response side's gap first (it learns of the request side's hole only
    from the server's next ACK). Later calls must still pair with their own responses."""
    d, calls, _ = make()
    d.feed(0, b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n", 1)
    d.feed(1, b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\na", 2)
    d.gap(1, 40, 3)  # the response to the lost /lost
    d.gap(0, 30, 3)  # the lost request itself
    d.feed(0, b"GET /b HTTP/1.1\r\nHost: x\r\n\r\n", 4)
    d.feed(1, b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nb", 5)
    d.close(6)
    assert [(summary(c), bodies(c)[1], c.flags) for c in calls] == [
        (("GET", "/a", 200), b"a", []),
        (("GET", "/b", 200), b"b", []),
    ]


def test_request_seen_after_a_lost_response_clears_the_credit() -> None:
    """A lost response with nothing waiting does not swallow a later, genuine lost request."""
    d, calls, _ = make()
    d.feed(0, b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n", 1)
    d.feed(1, b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\na", 2)
    d.gap(1, 40, 3)
    d.feed(0, b"GET /b HTTP/1.1\r\nHost: x\r\n\r\n", 4)
    d.gap(0, 30, 5)  # a request lost after /b
    d.feed(1, b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nb", 6)
    d.feed(1, b"HTTP/1.1 404 Not Found\r\nContent-Length: 1\r\n\r\nc", 7)
    d.close(8)
    assert [(summary(c), c.flags) for c in calls] == [
        (("GET", "/a", 200), []),
        (("GET", "/b", 200), []),
        ((None, None, 404), [Flag.GAP, Flag.REQUEST_MISSING]),
    ]


def test_broken_request_lines_with_a_known_method_are_requests() -> None:
    """Zeek's methods.pcap: servers answer these, and tshark shows them as requests."""
    for line, target in ((b"OPTIONS", ""), (b"GET /HTTP/1.1", "/HTTP/1.1"), (b"GET / HTTP/1.", "/")):
        d, calls, _ = make()
        d.feed(0, line + b"\r\nHost: x\r\n\r\n", 1)
        d.feed(1, b"HTTP/1.0 400 Bad Request\r\nContent-Length: 0\r\n\r\n", 2)
        d.close(3)
        assert [summary(c) for c in calls] == [(line.split()[0].decode(), target, 400)]
        assert "bad-request-line" in calls[0].info["weird"]


def test_a_garbage_request_line_leaves_its_response_unpaired() -> None:
    d, calls, _ = make()
    d.feed(0, b"GET/ HTTP/1.1\r\nHost: x\r\n\r\n", 1)
    d.feed(1, b"HTTP/1.0 400 Bad Request\r\nContent-Length: 0\r\n\r\n", 2)
    d.close(3)
    assert [(summary(c), Flag.REQUEST_MISSING in c.flags) for c in calls] == [((None, None, 400), True)]
