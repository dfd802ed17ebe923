"""`dissect.grpc.apply` on HTTP/2 calls shaped the way the HTTP/2 dissector hands them over.

Bodies are real gRPC framing (flag byte, 4-byte big-endian length) around real protobuf encodings
(`tests.grpc_lab`'s run-time schema) compressed with the real gzip/zlib; expected values come from
what the test put in.
"""

from __future__ import annotations

import base64
import gzip
import json
import struct
import zlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dissect.base import Limits
from dissect.grpc import MAX_MESSAGES, apply, is_grpc
from dissect.model import Call, Endpoint, Flag, Message

pytest.importorskip("google.protobuf")

from tests.grpc_lab import item, query


def frame(payload: bytes, compressed: bool = False) -> bytes:
    return struct.pack("!BI", int(compressed), len(payload)) + payload


def h2call(
    path: str = "/shop.v1.Cart/GetCart",
    req_body: bytes = b"",
    resp_body: bytes | None = b"",
    *,
    req_headers: list[tuple[str, str]] | None = None,
    resp_headers: list[tuple[str, str]] | None = None,
    trailers: list[tuple[str, str]] | None = None,
    status: int | None = 200,
    resp_truncated: bool = False,
    content_type: str = "application/grpc",
) -> Call:
    req = Message(
        headers=[
            (":method", "POST"),
            (":scheme", "http"),
            (":path", path),
            (":authority", "cart:7070"),
            ("content-type", content_type),
            ("te", "trailers"),
            *(req_headers or []),
        ],
        body=req_body,
        body_size=len(req_body),
        wire_size=len(req_body),
    )
    resp = None
    if resp_body is not None:
        resp = Message(
            headers=resp_headers
            if resp_headers is not None
            else [(":status", str(status)), ("content-type", content_type)],
            trailers=trailers if trailers is not None else [("grpc-status", "0")],
            body=resp_body,
            body_size=len(resp_body),
            wire_size=len(resp_body),
            truncated=resp_truncated,
        )
    return Call(
        protocol="http2",
        src=Endpoint(ip="10.0.0.1", port=40000),
        dst=Endpoint(ip="10.0.0.2", port=7070),
        method="POST",
        target=path,
        status=status,
        request=req,
        response=resp,
        flags=[Flag.TRUNCATED] if resp_truncated else [],
    )


LIMITS = Limits()


def field_values(msg: dict) -> dict[int, object]:
    return {f["field"]: f["value"] for f in msg["fields"]}


@pytest.mark.parametrize(
    ("ct", "ok"),
    [
        ("application/grpc", True),
        ("application/grpc+proto", True),
        ("application/grpc+json", True),
        ("Application/GRPC; charset=utf-8", True),
        ("application/grpc-web", True),
        ("application/grpc-web+proto", True),
        ("application/grpc-web-text", True),
        ("application/grpc-web-text+proto", True),
        ("application/json", False),
        ("application/grpcx", False),
        ("text/plain", False),
        ("", False),
        (None, False),
    ],
)
def test_is_grpc(ct: str | None, ok: bool) -> None:
    assert is_grpc(ct) is ok


def test_unary_ok() -> None:
    req, resp = query(42), item(42, "widget", price=9.5)
    call = h2call(req_body=frame(req), resp_body=frame(resp))
    apply(call, LIMITS)
    assert call.protocol == "grpc"
    assert (call.method, call.target, call.status) == ("POST", "/shop.v1.Cart/GetCart", 0)
    assert call.info["http_status"] == 200
    assert call.info["grpc_service"] == "shop.v1.Cart" and call.info["grpc_method"] == "GetCart"
    assert call.info["message_counts"] == {"request": 1, "response": 1}
    (rq,) = call.info["messages"]["request"]
    (rs,) = call.info["messages"]["response"]
    assert rq["compressed"] is False and rq["length"] == len(req)
    assert field_values(rq) == {1: 42}
    assert rs["length"] == len(resp)
    v = field_values(rs)
    assert v[1] == 42 and v[2] == "widget"
    assert "error" not in rs and "truncated" not in rs
    assert "grpc_encoding" not in call.info and "grpc_message" not in call.info
    json.dumps(call.to_dict())  # the whole record stays JSON-encodable
    Call.from_json(call.to_json())


def test_streaming_keeps_every_message() -> None:
    reqs = [item(i, f"up-{i}") for i in range(3)]
    resps = [item(100 + i, f"down-{i}") for i in range(7)]
    call = h2call(req_body=b"".join(map(frame, reqs)), resp_body=b"".join(map(frame, resps)))
    apply(call, LIMITS)
    assert call.info["message_counts"] == {"request": 3, "response": 7}
    assert [field_values(m)[2] for m in call.info["messages"]["request"]] == ["up-0", "up-1", "up-2"]
    assert [field_values(m)[1] for m in call.info["messages"]["response"]] == list(range(100, 107))


def test_error_status_percent_decoded_message_trailers_only() -> None:
    # trailers-only response: grpc-status in the only HEADERS block, no DATA
    call = h2call(
        resp_body=b"",
        resp_headers=[
            (":status", "200"),
            ("content-type", "application/grpc"),
            ("grpc-status", "5"),
            ("grpc-message", "item%2042%20not%20found%3A%20na%C3%AFve%20100%25"),
        ],
        trailers=[],
        req_body=frame(query(42)),
    )
    apply(call, LIMITS)
    assert call.status == 5
    assert call.info["grpc_message"] == "item 42 not found: naïve 100%"
    assert call.info["message_counts"] == {"request": 1, "response": 0}


def test_trailers_win_over_headers_and_malformed_percent() -> None:
    call = h2call(
        resp_body=frame(item(1, "a")),
        trailers=[("grpc-status", "13"), ("grpc-message", "bad %zz escape %E2%82")],
    )
    apply(call, LIMITS)
    assert call.status == 13
    assert call.info["grpc_message"].startswith("bad %zz escape")


def test_no_grpc_status_is_null() -> None:
    call = h2call(resp_body=frame(item(1, "a")), trailers=[])
    apply(call, LIMITS)
    assert call.status is None and call.info["http_status"] == 200


def test_response_missing() -> None:
    call = h2call(req_body=frame(query(1)), resp_body=None, status=None)
    call.flag(Flag.RESPONSE_MISSING)
    apply(call, LIMITS)
    assert call.status is None and call.info["http_status"] is None
    assert call.info["message_counts"] == {"request": 1, "response": 0}
    assert Flag.RESPONSE_MISSING in call.flags


def test_non_numeric_status_is_a_parse_error() -> None:
    call = h2call(resp_body=b"", trailers=[("grpc-status", "OK")])
    apply(call, LIMITS)
    assert call.status is None and Flag.PARSE_ERROR in call.flags
    assert call.info["grpc_status_raw"] == "OK"


@pytest.mark.parametrize(("encoding", "compress"), [("gzip", gzip.compress), ("deflate", zlib.compress)])
def test_compressed_messages(encoding: str, compress: object) -> None:
    payload = item(7, "compressible " * 50)
    wire = compress(payload)  # type: ignore[operator]
    call = h2call(
        req_body=frame(query(7)) + frame(wire, compressed=True),
        resp_body=frame(wire, compressed=True),
        req_headers=[("grpc-encoding", encoding)],
        resp_headers=[(":status", "200"), ("content-type", "application/grpc"), ("grpc-encoding", encoding)],
    )
    apply(call, LIMITS)
    assert call.info["grpc_encoding"] == {"request": encoding, "response": encoding}
    plain, packed = call.info["messages"]["request"]
    assert plain["compressed"] is False and field_values(plain) == {1: 7}
    assert packed["compressed"] is True and packed["length"] == len(wire)
    assert packed["decompressed_length"] == len(payload)
    assert field_values(packed)[2] == "compressible " * 50
    (rs,) = call.info["messages"]["response"]
    assert field_values(rs)[1] == 7


def test_unsupported_or_missing_compression_is_noted() -> None:
    call = h2call(
        req_body=frame(b"\x00snappy-bytes", compressed=True),
        resp_body=frame(b"zz", compressed=True),
        req_headers=[("grpc-encoding", "snappy")],
    )
    apply(call, LIMITS)
    (rq,) = call.info["messages"]["request"]
    assert rq["fields"] is None and "snappy" in rq["error"]
    (rs,) = call.info["messages"]["response"]
    assert rs["error"] == "compressed flag set but no grpc-encoding"
    assert call.info["grpc_encoding"] == {"request": "snappy"}


def test_corrupt_gzip_is_an_error_not_an_exception() -> None:
    call = h2call(
        resp_body=frame(b"\x1f\x8b\x08\x00garbage", compressed=True),
        resp_headers=[(":status", "200"), ("content-type", "application/grpc"), ("grpc-encoding", "gzip")],
    )
    apply(call, LIMITS)
    (rs,) = call.info["messages"]["response"]
    assert rs["fields"] is None and rs["error"].startswith("decompression failed")


def test_decompression_bomb_is_bounded() -> None:
    bomb = gzip.compress(b"\x00" * (4 << 20))
    call = h2call(
        resp_body=frame(bomb, compressed=True),
        resp_headers=[(":status", "200"), ("content-type", "application/grpc"), ("grpc-encoding", "gzip")],
    )
    apply(call, Limits(max_body=64 << 10))
    (rs,) = call.info["messages"]["response"]
    assert rs["fields"] is None and "size limit" in rs["error"]


def test_body_cut_mid_message() -> None:
    whole = [item(i, "x" * 40) for i in range(1, 4)]
    body = b"".join(map(frame, whole))
    cut = body[: len(frame(whole[0])) + 20]  # the second message's payload is cut
    call = h2call(resp_body=cut, resp_truncated=True)
    apply(call, LIMITS)
    first, second = call.info["messages"]["response"]
    assert field_values(first)[1] == 1 and "truncated" not in first
    assert second["truncated"] is True and second["length"] == len(whole[1]) and second["fields"] is None
    assert call.info["message_counts"]["response"] == 2
    assert Flag.TRUNCATED in call.flags

    call = h2call(resp_body=body[: len(frame(whole[0])) + 3])  # the prefix itself is cut
    apply(call, LIMITS)
    assert call.info["messages"]["response"][1] == {
        "compressed": False,
        "length": None,
        "fields": None,
        "truncated": True,
    }
    assert Flag.TRUNCATED in call.flags


def test_not_protobuf_payload() -> None:
    call = h2call(resp_body=frame(b"\x0f\xff\xff"))
    apply(call, LIMITS)
    (rs,) = call.info["messages"]["response"]
    assert rs["fields"] is None and rs["error"] == "not a protobuf message"


def test_empty_message() -> None:
    call = h2call(req_body=frame(b""), resp_body=frame(b""))  # e.g. google.protobuf.Empty
    apply(call, LIMITS)
    assert call.info["messages"]["request"] == [{"compressed": False, "length": 0, "fields": []}]


def test_json_codec() -> None:
    call = h2call(
        req_body=frame(b'{"id": 1}'),
        resp_body=frame(b'{"name": "x"}'),
        content_type="application/grpc+json",
    )
    apply(call, LIMITS)
    assert call.info["messages"]["request"][0]["text"] == '{"id": 1}'
    assert call.info["messages"]["response"][0]["fields"] is None


def test_message_listing_is_bounded_but_counted() -> None:
    n = MAX_MESSAGES + 250
    call = h2call(resp_body=frame(query(1)) * n)
    apply(call, LIMITS)
    assert call.info["message_counts"]["response"] == n
    assert len(call.info["messages"]["response"]) == MAX_MESSAGES


def test_grpc_web_trailers_in_body() -> None:
    trailer_block = b"grpc-status: 7\r\ngrpc-message: denied\r\n"
    body = frame(item(1, "a")) + struct.pack("!BI", 0x80, len(trailer_block)) + trailer_block
    call = h2call(resp_body=body, trailers=[], content_type="application/grpc-web+proto")
    apply(call, LIMITS)
    assert call.status == 7 and call.info["grpc_message"] == "denied"
    assert call.info["message_counts"]["response"] == 1
    assert call.response is not None and ("grpc-status", "7") in call.response.trailers


def test_grpc_web_text_base64() -> None:
    trailer_block = b"grpc-status: 0\r\n"
    # the server base64-encodes each frame on its own: padded chunks back to back
    body = base64.b64encode(frame(item(3, "b"))) + base64.b64encode(
        struct.pack("!BI", 0x80, len(trailer_block)) + trailer_block
    )
    req = base64.b64encode(frame(query(3)))
    call = h2call(req_body=req, resp_body=body, trailers=[], content_type="application/grpc-web-text")
    apply(call, LIMITS)
    assert call.status == 0
    assert field_values(call.info["messages"]["request"][0]) == {1: 3}
    assert field_values(call.info["messages"]["response"][0])[2] == "b"


@given(st.binary(max_size=4096), st.binary(max_size=512), st.sampled_from(["gzip", "deflate", "x", ""]))
def test_random_bodies_never_raise(resp: bytes, req: bytes, enc: str) -> None:
    call = h2call(
        req_body=req,
        resp_body=resp,
        req_headers=[("grpc-encoding", enc)],
        resp_headers=[(":status", "2x"), ("grpc-encoding", enc), ("grpc-status", "\x00")],
        trailers=[("grpc-message", "%%%")],
    )
    apply(call, Limits(max_body=4096))
    assert call.protocol == "grpc"
    assert Flag.PARSE_ERROR in call.flags or call.status is None
    Call.from_json(call.to_json())
    for side in ("request", "response"):
        assert len(call.info["messages"][side]) <= MAX_MESSAGES


@given(st.lists(st.binary(max_size=64), max_size=20), st.integers(0, 2000))
def test_framed_random_payloads_cut_anywhere(payloads: list[bytes], cut: int) -> None:
    body = b"".join(frame(p) for p in payloads)
    call = h2call(resp_body=body[:cut], resp_truncated=cut < len(body))
    apply(call, LIMITS)
    msgs = call.info["messages"]["response"]
    complete = [m for m in msgs if "truncated" not in m]
    assert [m["length"] for m in complete] == [len(p) for p in payloads[: len(complete)]]
    assert len(msgs) - len(complete) <= 1
    json.dumps(call.info)


def test_empty_grpc_message_is_left_out() -> None:
    # grpc-core sends `grpc-message:` (empty) with every OK status
    call = h2call(resp_body=frame(item(1, "a")), trailers=[("grpc-status", "0"), ("grpc-message", "")])
    apply(call, LIMITS)
    assert call.status == 0 and "grpc_message" not in call.info
