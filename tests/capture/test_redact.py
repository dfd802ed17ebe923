"""Redaction on the node (`capture.redact`): calls and raw frames.

Calls come from real bytes through the real engine (HTTP/1 frames built with dpkt, HTTP/2 and gRPC
written by the h2 library) or are built directly where the dissector cannot make the shape (a body
cut mid-value, Kafka record text). Expected values come from what the test sent: the secrets and
where they are, the JSON documents (masked by a small independent function here), and tshark's
reading of the masked frames. "Nothing else changed" compares the whole Call JSON.
"""

from __future__ import annotations

import copy
import json
import shutil
import socket
import subprocess
from pathlib import Path
from typing import Any

import dpkt
import h2.config
import h2.connection
import pytest
from hypothesis import given
from hypothesis import strategies as st

from capture.redact import DEFAULT_HEADERS, DEFAULT_JSON_KEYS, Redactor
from dissect.engine import Engine
from dissect.model import Call, Endpoint, Flag, Message
from tests.frames import Conversation, write_pcap

MASK = "[REDACTED]"


def dissect(frames: list[bytes]) -> list[Call]:
    packets = [(1_000_000_000 + i * 1000, 1, f, len(f)) for i, f in enumerate(frames)]
    return list(Engine("t").run(packets))


def masked_doc(doc: Any, keys: set[str]) -> Any:
    """The test's own model of JSON masking: every value under a key in ``keys`` becomes MASK."""
    if isinstance(doc, dict):
        return {k: (MASK if k.lower() in keys else masked_doc(v, keys)) for k, v in doc.items()}
    if isinstance(doc, list):
        return [masked_doc(v, keys) for v in doc]
    return doc


def compact(doc: Any) -> bytes:
    return json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode()


# -- HTTP/1 from real frames -------------------------------------------------------------------------

LOGIN_DOC = {
    "user": "bob",
    "Password": "hunter2",
    "profile": {"name": "Bob", "TOKEN": 12345, "keys": [{"secret": {"nested": "x"}}, {"secret": None}]},
    "flags": [True, False],
    "tokens": "not a configured key",
}
LOGIN_BODY = json.dumps(LOGIN_DOC, indent=1).encode()  # not compact: re-serialising shows
REQ_HEAD = [
    ("Host", "api"),
    ("Authorization", "Bearer s3cr3t-a"),
    ("cookie", "a=1"),
    ("COOKIE", "b=2"),
    ("X-API-KEY", "k-123"),
    ("Content-Type", "application/json"),
    ("Content-Length", str(len(LOGIN_BODY))),
]
TARGET = "/login?user=bob&Token=abc%20d&password=hunter2&tokens=keep#frag"
RESP_HEAD = [
    ("Set-Cookie", "sid=1; HttpOnly"),
    ("set-cookie", "sid2=2"),
    ("Proxy-Authorization", "Basic cHJveHk="),
    ("Transfer-Encoding", "chunked"),
    ("Trailer", "X-Api-Key"),
]
RESP_TRAILERS = [("X-Api-Key", "trailer-secret"), ("Server-Timing", "t=1")]


def http1_frames() -> tuple[list[bytes], bytes, bytes]:
    """The frames of one HTTP/1.1 exchange, and the request and response bytes as sent."""
    req = f"POST {TARGET} HTTP/1.1\r\n".encode() + b"".join(f"{k}: {v}\r\n".encode() for k, v in REQ_HEAD)
    req += b"\r\n" + LOGIN_BODY
    resp = b"HTTP/1.1 200 OK\r\n" + b"".join(f"{k}: {v}\r\n".encode() for k, v in RESP_HEAD) + b"\r\n"
    resp += b"5\r\nhello\r\n0\r\n" + b"".join(f"{k}: {v}\r\n".encode() for k, v in RESP_TRAILERS) + b"\r\n"
    c = Conversation("10.0.0.1", 40000, "10.0.0.2", 8080)
    return [*c.handshake(), c.send(0, req), c.send(1, resp), c.fin(0), c.fin(1)], req, resp


def test_http1_call_headers_trailers_query_and_json_body() -> None:
    frames, _req, _resp = http1_frames()
    (call,) = dissect(frames)
    before = call.to_dict()
    assert Redactor().call(call) is True
    expected = copy.deepcopy(before)
    secret_headers = {h.lower() for h in DEFAULT_HEADERS}
    expected["request"]["headers"] = [[k, MASK if k.lower() in secret_headers else v] for k, v in REQ_HEAD]
    expected["response"]["headers"] = [[k, MASK if k.lower() in secret_headers else v] for k, v in RESP_HEAD]
    expected["response"]["trailers"] = [
        [k, MASK if k.lower() in secret_headers else v] for k, v in RESP_TRAILERS
    ]
    expected["target"] = f"/login?user=bob&Token={MASK}&password={MASK}&tokens=keep#frag"
    body = compact(masked_doc(LOGIN_DOC, set(DEFAULT_JSON_KEYS)))
    expected["request"]["body"] = _b64(body)
    expected["flags"] = [Flag.REDACTED]
    # body_size and wire_size still describe the message as it was on the wire
    assert expected["request"]["body_size"] == len(LOGIN_BODY)
    assert call.to_dict() == expected
    # once masked, there is nothing left to mask
    assert Redactor().call(call) is False
    assert call.to_dict() == expected


def _b64(data: bytes) -> str:
    import base64

    return base64.b64encode(data).decode()


def test_custom_names_replace_the_defaults() -> None:
    frames, _req, _resp = http1_frames()
    (call,) = dissect(frames)
    before = call.to_dict()
    red = Redactor(headers=["x-api-key", "Host"], json_keys=["USER", "name"], mask="***")
    assert red.call(call)
    expected = copy.deepcopy(before)
    expected["request"]["headers"] = [
        [k, "***" if k.lower() in ("x-api-key", "host") else v] for k, v in REQ_HEAD
    ]
    expected["response"]["trailers"] = [[k, "***" if k == "X-Api-Key" else v] for k, v in RESP_TRAILERS]
    expected["target"] = "/login?user=***&Token=abc%20d&password=hunter2&tokens=keep#frag"
    doc = copy.deepcopy(LOGIN_DOC)
    doc["user"] = "***"
    doc["profile"]["name"] = "***"
    expected["request"]["body"] = _b64(compact(doc))
    expected["flags"] = [Flag.REDACTED]
    assert call.to_dict() == expected


def test_a_call_with_nothing_to_mask_is_untouched() -> None:
    c = Conversation("10.0.0.1", 40001, "10.0.0.2", 80)
    body = b'{"user":"bob","count":3}'
    req = (
        b"POST /x?a=1 HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\nContent-Length: 24\r\n\r\n"
        + body
    )
    resp = b"HTTP/1.1 204 No Content\r\nServer: t\r\n\r\n"
    (call,) = dissect([*c.handshake(), c.send(0, req), c.send(1, resp), c.fin(0), c.fin(1)])
    before = call.to_json()
    assert Redactor().call(call) is False
    assert call.to_json() == before
    assert Flag.REDACTED not in call.flags


# -- HTTP/2 and gRPC from real h2 bytes ----------------------------------------------------------------


class H2Wire:
    """An h2 client and server; every byte they exchange becomes a TCP segment of one conversation."""

    def __init__(self) -> None:
        self.conv = Conversation("10.0.1.1", 50000, "10.0.1.2", 50051)
        self.frames = self.conv.handshake()
        self.c = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        self.s = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
        self.c.initiate_connection()
        self.s.initiate_connection()
        self.pump()

    def pump(self) -> None:
        for _ in range(10):
            moved = False
            for side, conn, peer in ((0, self.c, self.s), (1, self.s, self.c)):
                out = conn.data_to_send()
                if out:
                    self.frames.append(self.conv.send(side, out))
                    peer.receive_data(out)
                    moved = True
            if not moved:
                return

    def exchange(
        self,
        req: list[tuple[str, str]],
        req_body: bytes,
        resp: list[tuple[str, str]],
        resp_body: bytes,
        trailers: list[tuple[str, str]],
    ) -> None:
        sid = self.c.get_next_available_stream_id()
        self.c.send_headers(sid, req, end_stream=not req_body)
        if req_body:
            self.c.send_data(sid, req_body, end_stream=True)
        self.pump()
        self.s.send_headers(sid, resp)
        self.s.send_data(sid, resp_body)
        self.s.send_headers(sid, trailers, end_stream=True)
        self.pump()

    def calls(self) -> list[Call]:
        return dissect([*self.frames, self.conv.fin(0), self.conv.fin(1)])


def test_grpc_metadata_and_trailers() -> None:
    wire = H2Wire()
    req = [
        (":method", "POST"),
        (":scheme", "http"),
        (":path", "/auth.Login/Check"),
        (":authority", "auth:50051"),
        ("content-type", "application/grpc"),
        ("authorization", "Bearer grpc-secret"),
        ("x-api-key", "g-key"),
        ("x-request-id", "r-1"),
    ]
    message = b"\x00\x00\x00\x00\x05" + b"\x0a\x03bob"  # field 1 = "bob"
    resp = [(":status", "200"), ("content-type", "application/grpc"), ("set-cookie", "lb=3")]
    trailers = [("grpc-status", "0"), ("x-api-key", "trailer-key"), ("grpc-message", "ok")]
    wire.exchange(req, message, resp, message, trailers)
    (call,) = wire.calls()
    assert call.protocol == "grpc"
    before = call.to_dict()
    assert Redactor().call(call)
    expected = copy.deepcopy(before)
    names = {h.lower() for h in DEFAULT_HEADERS}
    expected["request"]["headers"] = [[k, MASK if k in names else v] for k, v in before["request"]["headers"]]
    expected["response"]["headers"] = [
        [k, MASK if k in names else v] for k, v in before["response"]["headers"]
    ]
    expected["response"]["trailers"] = [
        [k, MASK if k in names else v] for k, v in before["response"]["trailers"]
    ]
    expected["flags"] = [*before["flags"], Flag.REDACTED]
    assert call.to_dict() == expected
    # what was sent, masked: every configured header, repeats and trailers included
    assert call.request is not None and call.response is not None
    assert call.request.header_values("authorization") == [MASK]
    assert call.request.header_values("x-request-id") == ["r-1"]
    assert dict(call.response.trailers) == {"grpc-status": "0", "x-api-key": MASK, "grpc-message": "ok"}


def test_http2_split_cookies_path_query_and_json() -> None:
    wire = H2Wire()
    doc = {"data": [{"id": 1, "secret": "s1"}, {"id": 2, "Secret": ["a", "b"]}], "token": None}
    req = [
        (":method", "PUT"),
        (":scheme", "http"),
        (":path", "/v1/items?token=tk1&page=2"),
        (":authority", "api"),
        ("cookie", "a=1"),
        ("cookie", "b=2"),  # HTTP/2 clients split cookies into several fields
        ("content-type", "application/json"),
    ]
    resp = [(":status", "200"), ("content-type", "application/json")]
    wire.exchange(req, json.dumps(doc).encode(), resp, b'{"ok":true,"password":"p"}', [("x-trailer", "1")])
    (call,) = wire.calls()
    assert call.protocol == "http2"
    before = call.to_dict()
    assert Redactor().call(call)
    expected = copy.deepcopy(before)
    expected["target"] = f"/v1/items?token={MASK}&page=2"
    expected["request"]["headers"] = [
        [k, {":path": expected["target"], "cookie": MASK}.get(k, v)] for k, v in before["request"]["headers"]
    ]
    expected["request"]["body"] = _b64(compact(masked_doc(doc, {"secret", "token"})))
    expected["response"]["body"] = _b64(b'{"ok":true,"password":"' + MASK.encode() + b'"}')
    expected["flags"] = [*before["flags"], Flag.REDACTED]
    assert call.to_dict() == expected


# -- bodies the parser cannot take, forms, info ---------------------------------------------------------


def _call(body: bytes, content_type: str = "application/json", target: str = "/", **kw: Any) -> Call:
    return Call(
        protocol="http",
        src=Endpoint(ip="10.0.0.1", port=1),
        dst=Endpoint(ip="10.0.0.2", port=2),
        method="POST",
        target=target,
        request=Message(
            headers=[("Content-Type", content_type)], body=body, body_size=len(body), truncated=True
        ),
        **kw,
    )


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        # cut mid-value: the secret's beginning must not leak
        (b'{"user":"bob","password":"hun', b'{"user":"bob","password":"[REDACTED]"'),
        (b'{"a":{"Token": "abc\\"def", "x": 1, "more', b'{"a":{"Token": "[REDACTED]", "x": 1, "more'),
        (b'{"secret": 12345, "n": tru', b'{"secret": "[REDACTED]", "n": tru'),
        (b'[{"token":true},{"token":null},{"tok', b'[{"token":"[REDACTED]"},{"token":"[REDACTED]"},{"tok'),
        # cut before the value: nothing of it was captured, nothing to mask
        (b'{"password":', None),
        (b'{"passw', None),
        # not JSON at all, but JSON pairs inside (a log line, say)
        (b'level=info msg={"password":"pw1"} user=x', b'level=info msg={"password":"[REDACTED]"} user=x'),
    ],
)
def test_truncated_or_non_json_bodies_are_scanned(body: bytes, expected: bytes | None) -> None:
    call = _call(body)
    assert Redactor().call(call) is (expected is not None)
    assert call.request is not None
    assert call.request.body == (body if expected is None else expected)
    assert call.request.body_size == len(body)


def test_percent_encoded_key_names_alone() -> None:
    call = _call(b"a=1&pass%77ord=x", "application/x-www-form-urlencoded", target="/q?%54oken=t&b=2")
    assert Redactor().call(call)
    assert call.request is not None
    assert call.request.body == b"a=1&pass%77ord=[REDACTED]"
    assert call.target == "/q?%54oken=[REDACTED]&b=2"


def test_form_bodies() -> None:
    body = b"user=bob&password=p%40ss&Token=x+y&tokens=keep&pass+word=keep&pass%77ord=enc&secret="
    call = _call(body, "application/x-www-form-urlencoded; charset=utf-8")
    assert Redactor().call(call)
    assert call.request is not None
    assert call.request.body == (
        b"user=bob&password=[REDACTED]&Token=[REDACTED]&tokens=keep&pass+word=keep"
        b"&pass%77ord=[REDACTED]&secret=[REDACTED]"
    )


def test_escaped_json_inside_json_and_urls_in_location_headers() -> None:
    inner = {"user": "u", "password": "pw"}
    call = _call(json.dumps({"event": json.dumps(inner), "n": 1}).encode())
    call.response = Message(headers=[("Location", "/cb?token=abc&x=1#f"), ("Server", "a?token=b")])
    assert Redactor().call(call)
    assert call.request is not None
    assert json.loads(call.request.body) == {
        "event": compact(masked_doc(inner, {"password"})).decode(),
        "n": 1,
    }
    assert call.response.headers == [("Location", f"/cb?token={MASK}&x=1#f"), ("Server", "a?token=b")]


def test_json_text_inside_info_is_masked() -> None:
    value = '{"user":"u","password":"kafka-pw"}'
    info = {"api_key": 0, "request": {"topics": [{"records": [{"key": "k", "value": value}]}]}}
    call = _call(b"", info=info)
    call.protocol = "kafka"
    assert Redactor().call(call)
    assert call.info["request"]["topics"][0]["records"][0] == {
        "key": "k",
        "value": '{"user":"u","password":"[REDACTED]"}',
    }


def test_bad_configuration_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="--redact-header"):
        Redactor(headers=["Authorization:"])
    with pytest.raises(ValueError, match="--redact-json-key"):
        Redactor(json_keys=['pass"word'])


_text = st.text(st.sampled_from('ab"{}[]:,=&?\\ \r\nPasswordTOKENsecret%+1'), max_size=80)


@given(
    body=st.binary(max_size=300) | _text.map(str.encode),
    content_type=st.sampled_from(["application/json", "application/x-www-form-urlencoded", "text/plain", ""]),
    target=_text,
    headers=st.lists(
        st.tuples(st.sampled_from(["Cookie", "x", ":path", "AUTHORIZATION"]), _text), max_size=4
    ),
)
def test_call_never_raises(
    body: bytes, content_type: str, target: str, headers: list[tuple[str, str]]
) -> None:
    call = _call(body, content_type, target)
    assert call.request is not None
    call.request.headers += headers
    call.info = {"x": [target, {"y": target}]}
    Redactor().call(call)
    assert call.request.body_size == len(body)


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(
            st.sampled_from(["a", "Token", "PASSWORD", "secret", "b", "tokens"]), inner, max_size=4
        )
    ),
    max_leaves=20,
)


@given(doc=_json)
def test_json_bodies_match_an_independent_model(doc: Any) -> None:
    body = json.dumps(doc).encode()
    call = _call(body)
    changed = Redactor().call(call)
    expected = masked_doc(doc, {"token", "password", "secret"})
    assert call.request is not None
    if changed:
        assert json.loads(call.request.body) == expected
    else:
        assert expected == doc and call.request.body == body


# -- raw frames --------------------------------------------------------------------------------------


def _tcp_payload(frame: bytes, linktype: int = 1) -> bytes:
    pkt: Any = dpkt.ethernet.Ethernet(frame).data if linktype == 1 else _raw_ip(frame)
    return bytes(pkt.data.data)


def _raw_ip(frame: bytes) -> Any:
    return dpkt.ip.IP(frame) if frame[0] >> 4 == 4 else dpkt.ip6.IP6(frame)


def _assert_masked(
    original: bytes, masked: bytes, payload: bytes, secrets: list[tuple[bytes, bytes]]
) -> None:
    """Same length; each secret (given as ``(what precedes it, its bytes)`` in what was sent) is all
    '*', and nothing else changed."""
    assert len(masked) == len(original)
    start = original.index(payload)
    expect = bytearray(original)
    for anchor, secret in secrets:
        pos = start + payload.index(anchor + secret) + len(anchor)
        expect[pos : pos + len(secret)] = b"*" * len(secret)
    assert masked == bytes(expect)


REQUEST_SECRETS = [
    (b"Token=", b"abc%20d"),
    (b"&password=", b"hunter2"),
    (b"Authorization: ", b"Bearer s3cr3t-a"),
    (b"cookie: ", b"a=1"),
    (b"COOKIE: ", b"b=2"),
    (b"X-API-KEY: ", b"k-123"),
    (b'"Password": "', b"hunter2"),
    (b'"TOKEN": ', b"12345"),
    (b'"secret": ', b"null"),
    # not masked in raw frames (documented): the object under "secret" (its extent is not scanned)
]
RESPONSE_SECRETS = [
    (b"Set-Cookie: ", b"sid=1; HttpOnly"),
    (b"set-cookie: ", b"sid2=2"),
    (b"Proxy-Authorization: ", b"Basic cHJveHk="),
    (b"X-Api-Key: ", b"trailer-secret"),
]


def test_frame_masks_an_http1_request_in_place() -> None:
    frames, req, resp = http1_frames()
    red = Redactor()
    request_frame, response_frame = frames[3], frames[4]
    assert _tcp_payload(request_frame) == req and _tcp_payload(response_frame) == resp
    _assert_masked(request_frame, red.frame(1, request_frame), req, REQUEST_SECRETS)
    _assert_masked(response_frame, red.frame(1, response_frame), resp, RESPONSE_SECRETS)
    # the handshake and FINs have nothing to mask: the very same object comes back
    for f in (*frames[:3], *frames[5:]):
        assert red.frame(1, f) is f


@pytest.mark.tshark
def test_tshark_reads_the_masked_frames(tmp_path: Path) -> None:
    frames, _req, _resp = http1_frames()
    red = Redactor()
    path = tmp_path / "masked.pcap"
    write_pcap(str(path), [(1_000_000_000 + i * 1000, red.frame(1, f)) for i, f in enumerate(frames)])
    tshark = shutil.which("tshark")
    assert tshark
    out = subprocess.run(
        [
            tshark,
            "-r",
            str(path),
            "-Y",
            "http",
            "-T",
            "fields",
            "-E",
            "separator=|",
            "-e",
            "http.authorization",
            "-e",
            "http.cookie",
            "-e",
            "http.set_cookie",
            "-e",
            "http.request.uri",
            "-e",
            "tcp.len",
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout.splitlines()
    request_row = next(r for r in out if r.split("|")[0])
    auth, cookie, _set_cookie, uri, tcp_len = request_row.split("|")
    assert auth == "*" * len("Bearer s3cr3t-a")
    assert cookie.split(",") == ["***", "***"]
    assert uri == "/login?user=bob&Token=*******&password=*******&tokens=keep#frag"
    assert int(tcp_len) == len(_tcp_payload(frames[3]))
    response_row = next(r for r in out if r.split("|")[2])
    assert response_row.split("|")[2].split(",") == ["*" * len("sid=1; HttpOnly"), "*" * len("sid2=2")]


def _ipv6_tcp(payload: bytes) -> bytes:
    tcp = dpkt.tcp.TCP(sport=1234, dport=80, seq=1, ack=1, flags=dpkt.tcp.TH_ACK, data=payload)
    ip6 = dpkt.ip6.IP6(
        src=socket.inet_pton(socket.AF_INET6, "fd00::1"),
        dst=socket.inet_pton(socket.AF_INET6, "fd00::2"),
        nxt=dpkt.ip.IP_PROTO_TCP,
        hlim=64,
        data=tcp,
        plen=len(tcp),
    )
    return bytes(ip6)


def test_frame_raw_ipv6_vlan_and_a_later_fragment() -> None:
    red = Redactor()
    payload = b'POST /a HTTP/1.1\r\nx-api-key: v6key\r\n\r\n{"token": "v6tok"}'
    raw6 = _ipv6_tcp(payload)
    _assert_masked(
        raw6, red.frame(101, raw6), payload, [(b"x-api-key: ", b"v6key"), (b'"token": "', b"v6tok")]
    )
    # 802.1Q-tagged Ethernet around IPv4
    plain = Conversation("10.1.0.1", 1, "10.1.0.2", 80).send(0, payload)
    tagged = plain[:12] + b"\x81\x00\x00\x05" + plain[12:]
    _assert_masked(
        tagged, red.frame(1, tagged), payload, [(b"x-api-key: ", b"v6key"), (b'"token": "', b"v6tok")]
    )
    # the second fragment of an IPv4 datagram: no TCP header, its data is scanned all the same
    data = b"\r\nAuthorization: frag-secret\r\n"
    ip = dpkt.ip.IP(src=b"\x0a\0\0\x01", dst=b"\x0a\0\0\x02", p=6, offset=1480, data=data)
    ip.len = len(ip)
    frag = bytes(ip)
    _assert_masked(frag, red.frame(101, frag), data, [(b"Authorization: ", b"frag-secret")])
    # UDP carries no HTTP/1: left alone even when it holds a configured word
    udp = dpkt.ip.IP(
        src=b"\x0a\0\0\x01",
        dst=b"\x0a\0\0\x02",
        p=17,
        data=dpkt.udp.UDP(sport=1, dport=2, data=b'{"password":"x"}'),
    )
    udp.len = len(udp)
    assert red.frame(101, bytes(udp)) == bytes(udp)


def test_frame_limit_a_header_split_across_segments() -> None:
    """Documented limit: each frame is masked on its own."""
    red = Redactor()
    c = Conversation("10.0.0.1", 40002, "10.0.0.2", 80)
    head = b"GET / HTTP/1.1\r\nAuthorization: Bearer first-half"
    tail = b"-second-half\r\nHost: a\r\n\r\n"
    f1, f2 = c.send(0, head), c.send(0, tail)
    _assert_masked(f1, red.frame(1, f1), head, [(b"Authorization: ", b"Bearer first-half")])
    assert red.frame(1, f2) is f2  # the rest of the value is in a frame of its own


_tokens = st.sampled_from(
    [
        b"\r\n",
        b"Authorization",
        b"COOKIE",
        b": ",
        b":",
        b'"',
        b'"password"',
        b"token",
        b"=",
        b"&",
        b"?",
        b"\\",
        b"{",
        b"}",
        b" ",
        b"abc",
        b"\xff",
        b"\x00",
    ]
)


@given(
    linktype=st.sampled_from([0, 1, 12, 14, 101, 113, 228, 229, 276, 9999]),
    head=st.binary(max_size=80),
    payload=st.lists(_tokens | st.binary(max_size=6), max_size=40).map(b"".join),
    valid=st.booleans(),
)
def test_frame_never_raises_and_only_writes_stars(
    linktype: int, head: bytes, payload: bytes, valid: bool
) -> None:
    frame = Conversation("10.0.0.1", 1, "10.0.0.2", 2).send(0, payload) if valid else head + payload
    out = Redactor().frame(linktype, frame)
    assert len(out) == len(frame)
    assert all(a == b or b == ord("*") for a, b in zip(frame, out))
