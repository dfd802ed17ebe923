"""The parser's caches (header lines, start lines, whole header blocks) must be invisible:
a message built from a cache hit equals one parsed afresh, and the caches stay bounded."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from dissect.base import Budget, Limits
from dissect.http1 import parser as P
from dissect.http1.parser import HttpMessage, MessageParser

FIELDS = [
    "is_request",
    "method",
    "target",
    "status",
    "reason",
    "version",
    "headers",
    "weird",
    "framing",
    "length",
    "ce",
    "upgrade",
    "hold",
]


def fields(m: HttpMessage | None) -> tuple[object, ...] | None:
    return None if m is None else tuple(getattr(m, f) for f in FIELDS)


def parser(role: str | None) -> MessageParser:
    p = MessageParser(0, None, Limits(), Budget(1 << 20), bytearray())  # type: ignore[arg-type]
    p.role = role
    return p


names = st.sampled_from(
    [
        "Host",
        "Content-Length",
        "content-length",
        "Transfer-Encoding",
        "Content-Encoding",
        "Upgrade",
        "X-A",
        "Bad Name",
    ]
)
values = st.sampled_from(["", "0", "12", "5, 5", "chunked", "gzip", "h2c", " padded ", "a\tb", "\xe9t\xe9"])
lines = st.one_of(
    st.tuples(names, values).map(lambda nv: f"{nv[0]}: {nv[1]}"),
    st.sampled_from([" folded", "no colon", ":empty name", ""]),
)
starts = st.sampled_from(
    [
        *("GET / HTTP/1.1", "HEAD /x HTTP/1.0", "OPTIONS", "CONNECT a:443 HTTP/1.1"),
        *("HTTP/1.1 200 OK", "HTTP/1.0 304", "HTTP/1.1 101 Switching", "garbage", "HTTP/2 200"),
    ]
)


@given(
    starts,
    st.lists(lines, max_size=6),
    st.sampled_from(["\r\n", "\n"]),
    st.sampled_from([None, "request", "response"]),
)
def test_a_cached_block_builds_the_same_message(
    start: str, hdrs: list[str], eol: str, role: str | None
) -> None:
    block = eol.join([start, *hdrs]).encode()
    P._BLOCKS.pop(block, None)
    fresh = parser(role)._parse_block(block, 1)
    first = parser(role)._build(block, 1)  # miss: parses and fills the cache
    again = parser(role)._build(block, 1)  # hit
    assert fields(first) == fields(fresh) == fields(again)
    if again is not None and first is not None:
        assert again.headers is not first.headers  # each message owns its list
        again.headers.append(("X", "y"))
        assert fields(parser(role)._build(block, 1)) == fields(fresh)


def test_caches_stay_bounded() -> None:
    p = parser(None)
    for i in range(P._BLOCKS_MAX + 10):
        p._build(f"GET /{i} HTTP/1.1\r\nX-N: {i}".encode(), 1)
    assert len(P._BLOCKS) <= P._BLOCKS_MAX
    assert len(P._LINES) <= P._LINES_MAX
    assert len(P._STARTS) <= P._STARTS_MAX
