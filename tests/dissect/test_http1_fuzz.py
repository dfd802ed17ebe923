"""Property tests: any split of a valid stream gives the same calls; no input makes the dissector
raise or grow its buffers past a bound derived from `Limits`."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from dissect.base import Budget, ConnContext, Limits
from dissect.http1 import HTTP1Dissector
from dissect.http1.parser import MAX_CHUNK_LINE, RESYNC_TAIL
from dissect.model import Call, Endpoint, Flag

CLIENT = Endpoint(ip="10.0.0.1", port=40000)
SERVER = Endpoint(ip="10.0.0.2", port=80)

TOKEN_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_."
METHODS = ["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD", "PROPFIND", "MKCOL", "X-CUSTOM"]


@dataclass
class Side:
    wire: bytes
    headers: list[tuple[str, str]]
    body: bytes
    trailers: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class Exchange:
    method: str
    target: str
    status: int
    request: Side
    response: Side


header_st = st.tuples(
    st.text(TOKEN_CHARS, min_size=1, max_size=12).filter(
        lambda n: n.lower() not in ("content-length", "transfer-encoding", "content-encoding", "upgrade")
    ),
    st.text("abcdefghijklmnopqrstuvwxyz0123456789 ;=/,.-", max_size=30).map(str.strip),
)


@st.composite
def framed(draw: st.DrawFn, start: str, allow_body: bool) -> Side:
    """A start line + headers + a body framed by Content-Length or chunked."""
    headers = draw(st.lists(header_st, max_size=4))
    body = draw(st.binary(max_size=300)) if allow_body else b""
    framing = draw(st.sampled_from(["cl", "chunked", "none"])) if allow_body else "none"
    trailers: list[tuple[str, str]] = []
    if framing == "none" and (body or start.startswith("HTTP/")):
        framing = "cl"  # a response without a length would be close-delimited
    if framing == "cl":
        headers = [*headers, ("Content-Length", str(len(body)))]
        payload = body
    elif framing == "chunked":
        headers = [*headers, ("Transfer-Encoding", "chunked")]
        cuts = sorted(draw(st.lists(st.integers(0, len(body)), max_size=4)))
        pieces = [body[a:b] for a, b in zip([0, *cuts], [*cuts, len(body)], strict=True)]
        payload = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces if p)
        trailers = draw(st.lists(header_st, max_size=2))
        payload += b"0\r\n" + b"".join(f"{k}: {v}\r\n".encode() for k, v in trailers) + b"\r\n"
    else:
        payload = b""
    head = start + "\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers) + "\r\n"
    return Side(head.encode() + payload, headers, body, trailers)


@st.composite
def exchange(draw: st.DrawFn) -> Exchange:
    method = draw(st.sampled_from(METHODS))
    target = "/" + draw(st.text("abcdefghijklmnopqrstuvwxyz0123456789/-_.?=&%", max_size=20))
    status = draw(st.sampled_from([200, 201, 204, 206, 301, 304, 404, 500]))
    req = draw(framed(f"{method} {target} HTTP/1.1", True))
    has_body = status not in (204, 304)
    resp = draw(framed(f"HTTP/1.1 {status} Reason Phrase", has_body))
    if method == "HEAD":  # the response announces a length but sends no body
        resp = Side(resp.wire[: resp.wire.index(b"\r\n\r\n") + 4], resp.headers, b"", [])
        if "chunked" in resp.wire.decode("latin-1"):
            resp.trailers = []
    return Exchange(method, target, status, req, resp)


def make(
    strict: bool = True, handshake: bool = True, limits: dict[str, int] | None = None
) -> tuple[HTTP1Dissector, list[Call]]:
    calls: list[Call] = []
    ctx = ConnContext(
        "flow",
        (CLIENT, SERVER),
        calls.append,
        handshake_seen=handshake,
        limits=Limits(**(limits or {})),
        budget=Budget(1 << 30),
    )
    return HTTP1Dissector(ctx, strict=strict), calls


def chunks(data: bytes, cuts: list[int]) -> list[tuple[int, int]]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [(a, b) for a, b in itertools.pairwise(points) if b > a]


@given(st.lists(exchange(), min_size=1, max_size=5), st.data())
def test_any_split_and_interleaving_gives_the_same_calls(
    exchanges: list[Exchange], data: st.DataObject
) -> None:
    client = b"".join(e.request.wire for e in exchanges)
    server = b"".join(e.response.wire for e in exchanges)
    req_end: list[int] = []
    resp_start: list[int] = []
    pos_c = pos_s = 0
    for e in exchanges:
        pos_c += len(e.request.wire)
        req_end.append(pos_c)
        resp_start.append(pos_s)
        pos_s += len(e.response.wire)
    cc = chunks(client, data.draw(st.lists(st.integers(0, 1 << 16), max_size=12), label="client cuts"))
    sc = chunks(server, data.draw(st.lists(st.integers(0, 1 << 16), max_size=12), label="server cuts"))
    d, calls = make()
    fed_c = 0
    ts = 0
    while cc or sc:
        # a response chunk may go only once every request it answers has been sent in full
        server_ok = False
        if sc:
            end = sc[0][1]
            last = max(i for i, s in enumerate(resp_start) if s < end)
            server_ok = fed_c >= req_end[last]
        if sc and server_ok and (not cc or data.draw(st.booleans(), label="server first")):
            a, b = sc.pop(0)
            d.feed(1, server[a:b], ts)
        else:
            a, b = cc.pop(0)
            d.feed(0, client[a:b], ts)
            fed_c = b
        ts += 1
    d.close(ts)
    got: list[tuple[object, ...]] = [
        (
            c.method,
            c.target,
            c.status,
            c.request and (c.request.headers, c.request.body, c.request.trailers),
            c.response and (c.response.headers, c.response.body, c.response.trailers),
            c.flags,
        )
        for c in calls
    ]
    want: list[tuple[object, ...]] = [
        (
            e.method,
            e.target,
            e.status,
            (e.request.headers, e.request.body, e.request.trailers),
            (e.response.headers, e.response.body, e.response.trailers),
            [],
        )
        for e in exchanges
    ]
    assert got == want
    assert d.buffered_bytes() == 0


LIMITS = {"max_body": 4096, "max_header_block": 8192, "max_pending": 8, "detect_window": 1024}


def bound() -> int:
    per_dir = max(LIMITS["max_header_block"], MAX_CHUNK_LINE, RESYNC_TAIL) + 2 * LIMITS["detect_window"]
    return 2 * per_dir + (LIMITS["max_pending"] + 3) * LIMITS["max_body"]


mutation = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 1 << 20), st.integers(1, 255)),
    st.tuples(st.just("insert"), st.integers(0, 1 << 20), st.binary(min_size=1, max_size=40)),
    st.tuples(st.just("delete"), st.integers(0, 1 << 20), st.integers(1, 40)),
    st.tuples(st.just("truncate"), st.integers(0, 1 << 20), st.just(0)),
)


def mutate(data: bytes, muts: list[tuple[str, int, Any]]) -> bytes:
    b = bytearray(data)
    for kind, at, arg in muts:
        i = at % (len(b) + 1)
        if kind == "flip" and i < len(b):
            b[i] ^= arg
        elif kind == "insert":
            b[i:i] = arg
        elif kind == "delete":
            del b[i : i + arg]
        elif kind == "truncate":
            del b[i:]
    return bytes(b)


event = st.one_of(
    st.tuples(st.just("feed"), st.integers(0, 1), st.integers(1, 3000)),
    st.tuples(st.just("gap"), st.integers(0, 1), st.integers(1, 5000)),
    st.tuples(st.just("snap"), st.integers(0, 1), st.integers(1, 5000)),
    st.tuples(st.just("note"), st.integers(0, 1), st.integers(0, 1)),
)


def run_hostile(streams: tuple[bytes, bytes], events: list[tuple[str, int, int]], handshake: bool) -> None:
    d, calls = make(strict=True, handshake=handshake, limits=LIMITS)
    budget = d.ctx.budget
    pos = [0, 0]
    limit = bound()
    ts = 0
    for kind, direction, n in events:
        ts += 1
        if kind == "feed":
            s = streams[direction]
            piece = s[pos[direction] : pos[direction] + n]
            pos[direction] += n
            if piece:
                d.feed(direction, piece, ts)
        elif kind in ("gap", "snap"):
            pos[direction] += n
            d.gap(direction, n, ts, snaplen=kind == "snap")
        else:
            d.note(direction, Flag.RETRANSMISSION if n else Flag.OUT_OF_ORDER)
        assert d.buffered_bytes() <= limit
    for direction in (0, 1):  # the rest of both streams, in big pieces
        s = streams[direction]
        while pos[direction] < len(s):
            d.feed(direction, s[pos[direction] : pos[direction] + 1500], ts)
            pos[direction] += 1500
            assert d.buffered_bytes() <= limit
    d.close(ts + 1)
    assert budget.available == budget.limit  # every byte taken was given back
    assert d.internal_errors == 0
    for c in calls:
        assert c.protocol == "http"
        assert c.request is not None or c.response is not None
        for m in (c.request, c.response):
            if m is not None:
                assert len(m.body) <= LIMITS["max_body"] or "content_encoding_error" in c.info


@given(
    st.lists(exchange(), min_size=1, max_size=4), st.lists(mutation, max_size=6), st.lists(event, max_size=30)
)
def test_mutated_streams_never_raise_and_stay_bounded(
    exchanges: list[Exchange], muts: list[tuple[str, int, Any]], events: list[tuple[str, int, int]]
) -> None:
    client = mutate(b"".join(e.request.wire for e in exchanges), muts[: len(muts) // 2])
    server = mutate(b"".join(e.response.wire for e in exchanges), muts[len(muts) // 2 :])
    run_hostile((client, server), events, handshake=True)


@given(st.binary(max_size=4000), st.binary(max_size=4000), st.lists(event, max_size=30), st.booleans())
def test_random_bytes_never_raise_and_stay_bounded(
    a: bytes, b: bytes, events: list[tuple[str, int, int]], handshake: bool
) -> None:
    run_hostile((a, b), events, handshake)


PIECES = [
    b"GET / HTTP/1.1\r\n",
    b"HTTP/1.1 200 OK\r\n",
    b"HTTP/1.1 101 Switching Protocols\r\n",
    b"HTTP/1.1 100 Continue\r\n",
    b"CONNECT h:443 HTTP/1.1\r\n",
    b"HEAD /h HTTP/1.0\r\n",
    b"Content-Length: 5\r\n",
    b"Content-Length: 99999999\r\n",
    b"Transfer-Encoding: chunked\r\n",
    b"Content-Encoding: gzip\r\n",
    b"Upgrade: h2c\r\n",
    b"Host: x\r\n",
    b" folded\r\n",
    b"\r\n",
    b"\n",
    b"5\r\nhello\r\n",
    b"0\r\n\r\n",
    b"ffffffff\r\n",
    b"abc",
    b"x" * 5000,
]


@given(
    st.lists(st.sampled_from(PIECES), max_size=40),
    st.lists(st.sampled_from(PIECES), max_size=40),
    st.lists(event, max_size=40),
    st.booleans(),
)
def test_http_shaped_noise_never_raises_and_stays_bounded(
    a: list[bytes], b: list[bytes], events: list[tuple[str, int, int]], handshake: bool
) -> None:
    run_hostile((b"".join(a), b"".join(b)), events, handshake)


def test_endless_header_and_endless_body_stay_bounded() -> None:
    d, calls = make(limits=LIMITS)
    d.feed(0, b"POST / HTTP/1.1\r\nContent-Length: 100000000\r\n\r\n", 1)
    for i in range(200):
        d.feed(0, b"z" * 1400, i)
        assert d.buffered_bytes() <= LIMITS["max_body"]
    d.feed(1, b"HTTP/1.1 200 OK\r\n", 1)
    for i in range(200):
        d.feed(1, b"X-H: " + b"h" * 1400 + b"\r\n", i)
        assert d.buffered_bytes() <= bound()
    d.close(1000)
    assert [c.method for c in calls] == ["POST"]
