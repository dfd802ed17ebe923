"""HTTP/2 dissector: real HTTP/2 bytes in (made by the `h2` library, or frame by frame with
`hyperframe` + `hpack`), exact calls out.

Direction 0 is the client unless a test says otherwise. `H2Conv` drives an h2 client and an h2 server
against each other and records every byte each one sent, in order, as ``(direction, bytes)`` chunks.
"""

from __future__ import annotations

import gzip
import zlib

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.settings
import hpack
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    PriorityFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)

from dissect.base import Budget, ConnContext, Limits
from dissect.http2 import ANALYZER, HTTP2Dissector
from dissect.http2.frames import PREFACE
from dissect.model import Call, Endpoint, Flag

CLIENT = Endpoint(ip="10.0.0.1", port=40000)
SERVER = Endpoint(ip="10.0.0.2", port=8080)

Chunk = tuple[int, bytes]


def make(
    handshake: bool = True, budget: int = 1 << 30, **limits: int
) -> tuple[HTTP2Dissector, list[Call], ConnContext]:
    calls: list[Call] = []
    ctx = ConnContext(
        flow_id="flow-1",
        endpoints=(CLIENT, SERVER),
        emit=calls.append,
        handshake_seen=handshake,
        limits=Limits(**limits),
        budget=Budget(budget),
    )
    return HTTP2Dissector(ctx, strict=True), calls, ctx


def run(chunks: list[Chunk], handshake: bool = True, close: bool = True, **limits: int) -> list[Call]:
    d, calls, _ = make(handshake, **limits)
    for i, (direction, data) in enumerate(chunks):
        d.feed(direction, data, 100 + i)
    if close:
        d.close(10_000)
    return calls


def summary(c: Call) -> tuple[object, ...]:
    return (c.method, c.target, c.status)


def req_headers(path: str = "/", method: str = "GET", extra: list[tuple[str, str]] | None = None) -> list:
    return [(":method", method), (":path", path), (":scheme", "http"), (":authority", "example.com")] + (
        extra or []
    )


class H2Conv:
    """An h2 client and server talking to each other; `chunks` is the wire, in order."""

    def __init__(self, client_settings: dict | None = None) -> None:
        self.c = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        self.s = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
        self.chunks: list[Chunk] = []
        self.marks: dict[int, int] = {}  # stream id -> index of the chunk that carries its request
        self.c.local_settings = h2.settings.Settings(client=True, initial_values=client_settings or None)
        self.c.initiate_connection()
        self.flush()
        self.s.initiate_connection()
        self.flush()

    def flush(self) -> list[h2.events.Event]:
        """Move bytes both ways until quiet; returns the server's events."""
        events: list[h2.events.Event] = []
        for _ in range(10):
            moved = False
            out = self.c.data_to_send()
            if out:
                self.chunks.append((0, out))
                events += self.s.receive_data(out)
                moved = True
            out = self.s.data_to_send()
            if out:
                self.chunks.append((1, out))
                self.c.receive_data(out)
                moved = True
            if not moved:
                break
        return events

    def request(
        self, sid: int, path: str = "/", method: str = "GET", body: bytes = b"", extra: list | None = None
    ) -> None:
        self.marks[sid] = len(self.chunks)
        self.c.send_headers(sid, req_headers(path, method, extra), end_stream=not body)
        if body:
            self.c.send_data(sid, body, end_stream=True)
        self.flush()

    def respond(
        self,
        sid: int,
        status: int = 200,
        body: bytes = b"",
        headers: list | None = None,
        trailers: list | None = None,
    ) -> None:
        self.s.send_headers(
            sid, [(":status", str(status))] + (headers or []), end_stream=not body and not trailers
        )
        if body:
            self.s.send_data(sid, body, end_stream=not trailers)
        if trailers:
            self.s.send_headers(sid, trailers, end_stream=True)
        self.flush()


def frame_bytes(*frames: Frame) -> bytes:
    return b"".join(f.serialize() for f in frames)


# ---------------------------------------------------------------------------------------------- basics


def test_simple_get_full_record() -> None:
    conv = H2Conv()
    conv.request(1, "/index.html?q=1")
    conv.respond(1, 200, b"hello", headers=[("content-type", "text/plain")])
    d, calls, _ = make()
    for i, (direction, data) in enumerate(conv.chunks):
        d.feed(direction, data, 100 + i)
    assert len(calls) == 1  # emitted as soon as both sides ended, before close
    c = calls[0]
    assert c.protocol == "http2"
    assert c.src is CLIENT and c.dst is SERVER
    assert summary(c) == ("GET", "/index.html?q=1", 200)
    assert c.request is not None and c.response is not None
    assert c.request.headers == req_headers("/index.html?q=1")
    assert c.response.headers == [(":status", "200"), ("content-type", "text/plain")]
    assert (c.response.body, c.response.body_size, c.response.wire_size) == (b"hello", 5, 5)
    assert c.request.body == b"" and c.request.truncated is False
    assert c.info == {"http_version": "2", "stream_id": 1}
    assert c.flags == []
    assert c.request_ts is not None and c.response_ts is not None and c.request_ts < c.response_ts
    d.close(10_000)
    assert len(calls) == 1


def test_server_speaks_first_the_client_is_found_by_its_preface() -> None:
    conv = H2Conv()
    conv.request(1, "/a")
    conv.respond(1, 204)
    # the server's SETTINGS first, then the client's preface
    chunks = [conv.chunks[1], conv.chunks[0], *conv.chunks[2:]]
    calls = run(chunks)
    assert [summary(c) for c in calls] == [("GET", "/a", 204)]
    assert calls[0].src is CLIENT


def test_client_is_direction_one() -> None:
    conv = H2Conv()
    conv.request(1, "/a")
    conv.respond(1, 200, b"x")
    calls = run([(1 - d, b) for d, b in conv.chunks])
    assert [summary(c) for c in calls] == [("GET", "/a", 200)]
    assert calls[0].src is SERVER and calls[0].dst is CLIENT


def test_interleaved_streams_pair_by_id() -> None:
    conv = H2Conv()
    conv.request(1, "/one")
    conv.request(3, "/three", "POST", b"payload")
    conv.request(5, "/five")
    conv.respond(5, 404)
    conv.respond(1, 200, b"1" * 100)
    conv.respond(3, 201, b"created")
    calls = run(conv.chunks)
    assert [summary(c) for c in calls] == [
        ("GET", "/five", 404),
        ("GET", "/one", 200),
        ("POST", "/three", 201),
    ]
    post = calls[2]
    assert post.request is not None and post.request.body == b"payload"
    assert post.info["stream_id"] == 3


def test_content_encoding_decoded_and_wire_size_kept() -> None:
    conv = H2Conv()
    conv.request(1, "/z")
    raw = b"hello world " * 50
    gz = gzip.compress(raw)
    conv.respond(1, 200, gz, headers=[("content-encoding", "gzip")])
    (c,) = run(conv.chunks)
    assert c.response is not None
    assert c.response.body == raw and c.response.body_size == len(raw) and c.response.wire_size == len(gz)
    assert c.info["content_encoding"] == "gzip"


def test_large_body_over_many_frames_and_flow_control() -> None:
    conv = H2Conv()
    conv.request(1, "/big")
    body = bytes(range(256)) * 200  # 51200 bytes: several DATA frames, window updates
    conv.s.send_headers(1, [(":status", "200")])
    sent = 0
    while sent < len(body):
        n = min(conv.s.local_flow_control_window(1), conv.s.max_outbound_frame_size, len(body) - sent)
        n = min(n, conv.s.outbound_flow_control_window)
        conv.s.send_data(1, body[sent : sent + n], end_stream=sent + n == len(body))
        sent += n
        conv.flush()
        conv.c.acknowledge_received_data(n, 1)
        conv.flush()
    (c,) = run(conv.chunks)
    assert c.response is not None and c.response.body == body and not c.response.truncated


# ---------------------------------------------------------------------------------------------- frames


def test_padding_on_data_and_headers_priority_flag() -> None:
    enc = hpack.Encoder()
    block = enc.encode(req_headers("/padded", "POST"))
    h = HeadersFrame(1, block, flags=["END_HEADERS", "PADDED", "PRIORITY"], pad_length=7)
    h.depends_on, h.stream_weight = 0, 15
    data = DataFrame(1, b"body!", flags=["END_STREAM", "PADDED"], pad_length=20)
    senc = hpack.Encoder()
    resp = HeadersFrame(1, senc.encode([(":status", "200")]), flags=["END_HEADERS"])
    rdata = DataFrame(1, b"ok", flags=["END_STREAM", "PADDED"], pad_length=3)
    client = PREFACE + frame_bytes(SettingsFrame(0), h, PriorityFrame(1, depends_on=0, stream_weight=3), data)
    server = frame_bytes(SettingsFrame(0), resp, rdata)
    (c,) = run([(0, client), (1, server)])
    assert summary(c) == ("POST", "/padded", 200)
    assert c.request is not None and c.request.body == b"body!" and c.request.wire_size == 5
    assert c.response is not None and c.response.body == b"ok"
    assert c.flags == []


def test_continuation_frames_are_concatenated() -> None:
    enc = hpack.Encoder()
    block = enc.encode(req_headers("/cont", extra=[("x-long", "v" * 300), ("x-two", "2")]))
    parts = [block[:10], block[10:100], block[100:]]
    client = PREFACE + frame_bytes(
        HeadersFrame(1, parts[0], flags=["END_STREAM"]),
        ContinuationFrame(1, parts[1]),
        ContinuationFrame(1, parts[2], flags=["END_HEADERS"]),
    )
    server = frame_bytes(
        HeadersFrame(1, hpack.Encoder().encode([(":status", "200")]), flags=["END_HEADERS", "END_STREAM"])
    )
    (c,) = run([(0, client), (1, server)])
    assert summary(c) == ("GET", "/cont", 200)
    assert c.request is not None and ("x-long", "v" * 300) in c.request.headers
    assert c.request.headers[-1] == ("x-two", "2")


def test_continuation_interrupted_is_a_parse_error_not_a_crash() -> None:
    enc = hpack.Encoder()
    block = enc.encode(req_headers("/x"))
    client = PREFACE + frame_bytes(
        HeadersFrame(1, block[:5], flags=["END_STREAM"]),
        PingFrame(0, b"12345678"),  # not a CONTINUATION: a protocol error
        HeadersFrame(3, hpack.Encoder().encode(req_headers("/y")), flags=["END_STREAM", "END_HEADERS"]),
    )
    server = frame_bytes(
        HeadersFrame(3, hpack.Encoder().encode([(":status", "200")]), flags=["END_HEADERS", "END_STREAM"])
    )
    calls = run([(0, client), (1, server)])
    assert ("GET", "/y", 200) in [summary(c) for c in calls]


def test_rst_stream_flags_reset_with_error_name() -> None:
    conv = H2Conv()
    conv.c.send_headers(1, req_headers("/slow"), end_stream=True)
    conv.flush()
    conv.c.reset_stream(1, h2.errors.ErrorCodes.CANCEL)
    conv.flush()
    d, calls, _ = make()
    for i, (direction, data) in enumerate(conv.chunks):
        d.feed(direction, data, i)
    assert len(calls) == 1  # the reset emits at once
    c = calls[0]
    assert summary(c) == ("GET", "/slow", None)
    assert Flag.RESET in c.flags and Flag.RESPONSE_MISSING in c.flags
    assert c.info["rst_error"] == "CANCEL"


def test_reset_after_response_headers_keeps_the_response() -> None:
    conv = H2Conv()
    conv.request(1, "/partial")
    conv.s.send_headers(1, [(":status", "200")])
    conv.s.send_data(1, b"part")
    conv.flush()
    conv.s.reset_stream(1, h2.errors.ErrorCodes.INTERNAL_ERROR)
    conv.flush()
    (c,) = run(conv.chunks)
    assert summary(c) == ("GET", "/partial", 200)
    assert c.response is not None and c.response.body == b"part"
    assert Flag.RESET in c.flags and c.info["rst_error"] == "INTERNAL_ERROR"
    assert Flag.RESPONSE_MISSING not in c.flags


def test_goaway_flags_streams_above_last_stream_id() -> None:
    conv = H2Conv()
    conv.request(1, "/kept")
    conv.request(3, "/refused")
    conv.s.close_connection(error_code=h2.errors.ErrorCodes.NO_ERROR, last_stream_id=1)
    conv.flush()
    d, calls, _ = make()
    for i, (direction, data) in enumerate(conv.chunks):
        d.feed(direction, data, i)
    assert [summary(c) for c in calls] == [("GET", "/refused", None)]
    assert Flag.GOAWAY in calls[0].flags and calls[0].info["goaway_error"] == "NO_ERROR"
    assert Flag.RESPONSE_MISSING in calls[0].flags
    d.close(99)
    assert [summary(c) for c in calls][1] == ("GET", "/kept", None)
    assert Flag.GOAWAY not in calls[1].flags


def test_server_push() -> None:
    conv = H2Conv()
    conv.request(1, "/index.html")
    conv.s.push_stream(1, 2, req_headers("/style.css"))
    conv.respond(1, 200, b"<html>")
    conv.s.send_headers(2, [(":status", "200"), ("content-type", "text/css")])
    conv.s.send_data(2, b"body{}", end_stream=True)
    conv.flush()
    calls = run(conv.chunks)
    by_target = {c.target: c for c in calls}
    assert set(by_target) == {"/index.html", "/style.css"}
    push = by_target["/style.css"]
    assert summary(push) == ("GET", "/style.css", 200)
    assert Flag.SERVER_PUSH in push.flags
    assert push.request is not None and push.request.headers == req_headers("/style.css")
    assert push.response is not None and push.response.body == b"body{}"
    assert push.src is CLIENT
    assert Flag.SERVER_PUSH not in by_target["/index.html"].flags


def test_trailers() -> None:
    conv = H2Conv()
    conv.request(1, "/t", extra=[("te", "trailers")])
    conv.respond(1, 200, b"data", headers=[("content-type", "text/plain")], trailers=[("x-checksum", "abc")])
    (c,) = run(conv.chunks)
    assert c.response is not None
    assert c.response.trailers == [("x-checksum", "abc")]
    assert c.response.headers == [(":status", "200"), ("content-type", "text/plain")]


def test_interim_responses_go_to_info() -> None:
    conv = H2Conv()
    conv.c.send_headers(1, req_headers("/upload", "POST", [("expect", "100-continue")]))
    conv.flush()
    conv.s.send_headers(1, [(":status", "100")])
    conv.s.send_headers(1, [(":status", "103"), ("link", "</s.css>")])
    conv.flush()
    conv.c.send_data(1, b"abc", end_stream=True)
    conv.respond(1, 201)
    (c,) = run(conv.chunks)
    assert summary(c) == ("POST", "/upload", 201)
    assert c.info["interim"] == [100, 103]
    assert c.response is not None and c.response.headers == [(":status", "201")]


def test_connect_target_is_authority() -> None:
    enc = hpack.Encoder()
    block = enc.encode([(":method", "CONNECT"), (":authority", "db.internal:5432")])
    client = PREFACE + frame_bytes(
        HeadersFrame(1, block, flags=["END_HEADERS"]), RstStreamFrame(1, error_code=8)
    )
    (c,) = run([(0, client)])
    assert summary(c) == ("CONNECT", "db.internal:5432", None)


def test_unknown_frame_types_window_update_and_ping_are_skipped() -> None:
    unknown = b"\x00\x00\x03\xfa\x00\x00\x00\x00\x01xyz"
    enc = hpack.Encoder()
    client = PREFACE + frame_bytes(SettingsFrame(0), WindowUpdateFrame(0, window_increment=1000)) + unknown
    client += frame_bytes(HeadersFrame(1, enc.encode(req_headers("/u")), flags=["END_HEADERS", "END_STREAM"]))
    server = frame_bytes(SettingsFrame(0, flags=["ACK"]), PingFrame(0, b"pingpong"))
    server += frame_bytes(
        HeadersFrame(1, hpack.Encoder().encode([(":status", "200")]), flags=["END_HEADERS", "END_STREAM"])
    )
    (c,) = run([(0, client), (1, server)])
    assert summary(c) == ("GET", "/u", 200)


def test_settings_header_table_size_applies_to_the_other_direction() -> None:
    conv = H2Conv({h2.settings.SettingCodes.HEADER_TABLE_SIZE: 0})
    d, calls, _ = make()
    for direction, data in conv.chunks:
        d.feed(direction, data, 1)
    assert d.dirs[1].hpack.limit == 0  # the client decodes what the server sends: the server's encoder
    assert d.dirs[0].hpack.limit == 4096
    for sid in (1, 3, 5):
        conv.request(sid, f"/r{sid}", extra=[("x-same", "value")])
        conv.respond(sid, 200, headers=[("x-custom", "same-every-time")])
    calls = run(conv.chunks)
    assert [summary(c) for c in calls] == [("GET", f"/r{s}", 200) for s in (1, 3, 5)]
    assert all(
        c.response is not None and ("x-custom", "same-every-time") in c.response.headers for c in calls
    )
    assert all(Flag.HPACK_DESYNC not in c.flags for c in calls)


def test_many_streams_reuse_the_dynamic_table() -> None:
    conv = H2Conv()
    for i in range(40):
        sid = 1 + 2 * i
        conv.request(sid, f"/item/{i}", extra=[("authorization", "Bearer xyz"), ("x-req", str(i))])
        conv.respond(sid, 200, f"body{i}".encode(), headers=[("content-type", "application/json")])
    calls = run(conv.chunks)
    assert [summary(c) for c in calls] == [("GET", f"/item/{i}", 200) for i in range(40)]
    assert all(c.flags == [] for c in calls)


# ---------------------------------------------------------------------------------------------- gRPC


def test_grpc_stream_becomes_a_grpc_call_with_raw_bodies() -> None:
    conv = H2Conv()
    msg = b"\x00\x00\x00\x00\x03\x08\x96\x01"  # one uncompressed message: field 1 = 150
    conv.c.send_headers(
        1,
        req_headers("/pkg.Svc/Method", "POST", [("content-type", "application/grpc"), ("te", "trailers")]),
    )
    conv.c.send_data(1, msg, end_stream=True)
    conv.flush()
    conv.respond(
        1,
        200,
        msg,
        headers=[("content-type", "application/grpc"), ("grpc-encoding", "identity")],
        trailers=[("grpc-status", "0")],
    )
    (c,) = run(conv.chunks)
    assert c.protocol == "grpc"
    assert (c.method, c.target) == ("POST", "/pkg.Svc/Method")
    assert c.request is not None and c.request.body == msg
    assert c.response is not None and c.response.body == msg


def test_stream_still_open_at_close_is_truncated_not_whole() -> None:
    """A server stream cut by the end of the connection (or capture) before its trailers: the call is
    kept with what arrived, flagged truncated, and has no status; a finished stream beside it is not."""
    conv = H2Conv()
    msg = b"\x00\x00\x00\x00\x03\x08\x96\x01"
    grpc_req = [("content-type", "application/grpc"), ("te", "trailers")]
    for sid in (1, 3):
        conv.c.send_headers(sid, req_headers("/pkg.Svc/Watch", "POST", grpc_req))
        conv.c.send_data(sid, msg, end_stream=True)
    conv.flush()
    conv.respond(1, 200, msg, headers=[("content-type", "application/grpc")], trailers=[("grpc-status", "0")])
    conv.s.send_headers(3, [(":status", "200"), ("content-type", "application/grpc")])
    conv.s.send_data(3, msg + msg)  # two messages, then the capture ends: no END_STREAM, no trailers
    conv.flush()
    calls = {c.info["stream_id"]: c for c in run(conv.chunks)}
    assert calls[1].status == 0 and Flag.TRUNCATED not in calls[1].flags
    cut = calls[3]
    assert cut.status is None and Flag.TRUNCATED in cut.flags
    assert cut.response is not None and cut.response.body == msg + msg


def test_grpc_bodies_are_not_content_decoded() -> None:
    conv = H2Conv()
    raw = zlib.compress(b"x" * 10)
    msg = b"\x01" + len(raw).to_bytes(4, "big") + raw
    conv.c.send_headers(
        1,
        req_headers("/p.S/M", "POST", [("content-type", "application/grpc"), ("content-encoding", "gzip")]),
    )
    conv.c.send_data(1, msg, end_stream=True)
    conv.flush()
    conv.respond(1, 200, headers=[("content-type", "application/grpc")], trailers=[("grpc-status", "0")])
    (c,) = run(conv.chunks)
    assert c.request is not None and c.request.body == msg
    assert "request_content_encoding_error" not in c.info


# ---------------------------------------------------------------------------------------------- limits


def test_body_limit_truncates() -> None:
    conv = H2Conv()
    conv.request(1, "/big")
    conv.respond(1, 200, b"a" * 5000)
    (c,) = run(conv.chunks, max_body=1000)
    assert c.response is not None
    assert c.response.body == b"a" * 1000 and c.response.wire_size == 5000 and c.response.truncated
    assert Flag.TRUNCATED in c.flags


def test_budget_is_returned_after_emit() -> None:
    conv = H2Conv()
    conv.request(1, "/a", "POST", b"q" * 300)
    conv.respond(1, 200, b"r" * 700)
    d, calls, ctx = make(budget=10_000)
    for direction, data in conv.chunks:
        d.feed(direction, data, 1)
    assert len(calls) == 1 and ctx.budget.available == 10_000


def test_open_streams_are_bounded() -> None:
    conv = H2Conv()
    for i in range(10):
        conv.c.send_headers(1 + 2 * i, req_headers(f"/{i}"), end_stream=True)
    conv.flush()
    d, calls, _ = make(max_pending=4)
    for direction, data in conv.chunks:
        d.feed(direction, data, 1)
    assert len(d.streams) <= 4
    assert [c.target for c in calls] == [f"/{i}" for i in range(6)]
    assert all(Flag.RESPONSE_MISSING in c.flags for c in calls)


def test_continuation_flood_is_bounded() -> None:
    d, calls, _ = make(max_header_block=4096)
    d.feed(0, PREFACE + frame_bytes(HeadersFrame(1, b"\x82")), 1)
    for _ in range(200):
        d.feed(0, frame_bytes(ContinuationFrame(1, b"\x40\x03abc\x03def" * 100)), 2)
        assert d.buffered_bytes() <= 4096 + 16384 + 64
    d.feed(0, frame_bytes(ContinuationFrame(1, b"", flags=["END_HEADERS"])), 3)
    d.close(4)
    (c,) = calls
    assert Flag.PARSE_ERROR in c.flags


def test_goaway_from_client_and_frames_after_emit_are_ignored() -> None:
    conv = H2Conv()
    conv.request(1, "/a")
    conv.respond(1, 200, b"x")
    late = frame_bytes(WindowUpdateFrame(1, window_increment=10), RstStreamFrame(1, error_code=5))
    calls = run([*conv.chunks, (0, late), (0, frame_bytes(GoAwayFrame(0, last_stream_id=0)))])
    assert [summary(c) for c in calls] == [("GET", "/a", 200)]
    assert calls[0].flags == []


def test_detection_verdicts_through_the_analyzer() -> None:
    from dissect.base import Verdict

    assert ANALYZER.name == "http2"
    assert ANALYZER.detect(PREFACE + b"\x00", 0, None) == Verdict.YES
    assert isinstance(ANALYZER.new(make()[2]), HTTP2Dissector)
    assert ANALYZER.detect(PREFACE[:10], 0, None) == Verdict.MORE
