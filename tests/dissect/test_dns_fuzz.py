"""Hypothesis on the DNS parser and dissector: arbitrary bytes never raise, compression loops and absurd
lengths are flagged and never followed, and a TCP stream split anywhere gives the same calls."""

from __future__ import annotations

import struct

import dns.message
import dns.rrset
from hypothesis import given
from hypothesis import strategies as st

from dissect.base import ConnContext, Limits
from dissect.dns import detect_datagram, detect_stream
from dissect.dns.dissector import DNSDissector
from dissect.dns.message import MAX_NAME, parse_message
from dissect.model import Call, Endpoint


def make(transport: str, handshake_seen: bool = True) -> tuple[DNSDissector, list[Call]]:
    calls: list[Call] = []
    ctx = ConnContext(
        flow_id="t/f1",
        endpoints=(Endpoint(ip="10.0.0.1", port=40000), Endpoint(ip="10.0.0.53", port=53)),
        emit=calls.append,
        transport=transport,
        handshake_seen=handshake_seen,
        limits=Limits(max_pending=16),
    )
    return DNSDissector(ctx, strict=True), calls


@given(st.binary(max_size=600), st.booleans())
def test_parse_never_raises(data: bytes, mdns: bool) -> None:
    m = parse_message(data, mdns)
    if m is None:
        assert len(data) < 12
        return
    for q in m.questions:
        assert len(q.name) <= 4 * MAX_NAME  # escapes at most quadruple a byte


@given(st.binary(max_size=300), st.binary(max_size=300))
def test_detect_never_raises(a: bytes, b: bytes) -> None:
    detect_datagram(a)
    detect_stream(a)
    detect_stream(b + a)


@given(st.lists(st.tuples(st.integers(0, 1), st.binary(max_size=200), st.integers(0, 10**10)), max_size=30))
def test_udp_dissector_never_raises(events: list[tuple[int, bytes, int]]) -> None:
    d, _calls = make("udp")
    for direction, data, ts in events:
        d.feed(direction, data, ts)
    d.close(10**11)
    assert d.internal_errors == 0


@given(
    st.lists(
        st.one_of(
            st.tuples(st.just("feed"), st.integers(0, 1), st.binary(max_size=300)),
            st.tuples(st.just("gap"), st.integers(0, 1), st.integers(1, 5000)),
        ),
        max_size=40,
    ),
    st.booleans(),
)
def test_tcp_dissector_never_raises_and_stays_bounded(
    events: list[tuple[str, int, object]], seen: bool
) -> None:
    d, _calls = make("tcp", seen)
    for kind, direction, arg in events:
        if kind == "feed":
            d.feed(direction, arg, 1)  # type: ignore[arg-type]
        else:
            d.gap(direction, arg, 1)  # type: ignore[arg-type]
        assert d.buffered_bytes() <= 3 * 65537
    d.close(2)


@st.composite
def pointer_mazes(draw: st.DrawFn) -> bytes:
    """A header and then a name made of labels and pointers anywhere (loops, forward, self)."""
    parts = draw(
        st.lists(
            st.one_of(
                st.binary(min_size=1, max_size=10).map(lambda b: bytes([len(b)]) + b),
                st.integers(0, 80).map(lambda off: struct.pack("!H", 0xC000 | off)),
            ),
            min_size=1,
            max_size=12,
        )
    )
    return (
        struct.pack("!HHHHHH", 1, 0x0100, 1, 1, 0, 0)
        + b"".join(parts)
        + b"\x00\x00\x01\x00\x01"
        + b"\xc0\x0c"
    )


@given(pointer_mazes())
def test_compression_never_followed_into_a_loop(wire: bytes) -> None:
    m = parse_message(wire)
    assert m is not None
    if m.error is not None:
        assert m.error in {
            "compression-loop",
            "name-out-of-bounds",
            "name-too-long",
            "message-cut",
            "rdata-out-of-bounds",
            "bad-label-type",
        }


@given(st.integers(1, 0xFFFF), st.integers(1, 0xFFFF), st.integers(1, 0xFFFF))
def test_absurd_counts_are_flagged(an: int, ns: int, ar: int) -> None:
    q = dns.message.make_query("example.com", "A").to_wire()
    wire = q[:6] + struct.pack("!HHH", an, ns, ar) + q[12:]
    m = parse_message(wire)
    assert m is not None and "counts-exceed-length" in m.weird and m.error is not None


def _conversation(n: int) -> tuple[bytes, bytes]:
    qs, rs = b"", b""
    for i in range(n):
        q = dns.message.make_query(f"h{i}.Example.net", "TXT" if i % 2 else "A")
        q.id = 1000 + i
        r = dns.message.make_response(q)
        rd = '"x"' if i % 2 else f"10.0.0.{i}"
        r.answer.append(dns.rrset.from_text(q.question[0].name, 30, "IN", q.question[0].rdtype, rd))
        for m, buf in ((q, "q"), (r, "r")):
            w = m.to_wire()
            framed = struct.pack("!H", len(w)) + w
            if buf == "q":
                qs += framed
            else:
                rs += framed
    return qs, rs


def _summary(calls: list[Call]) -> list[tuple[object, ...]]:
    return [(c.target, c.status, c.info["id"], tuple(c.flags), c.request_ts, c.response_ts) for c in calls]


@given(st.integers(1, 6), st.data())
def test_tcp_split_anywhere_same_calls(n: int, data: st.DataObject) -> None:
    qs, rs = _conversation(n)
    whole, want = make("tcp")
    whole.feed(0, qs, 5)
    whole.feed(1, rs, 5)
    whole.close(6)
    cuts_q = sorted(data.draw(st.sets(st.integers(1, len(qs) - 1), max_size=10)))
    cuts_r = sorted(data.draw(st.sets(st.integers(1, len(rs) - 1), max_size=10)))
    d, got = make("tcp")
    for buf, cuts, direction in ((qs, cuts_q, 0), (rs, cuts_r, 1)):
        prev = 0
        for c in [*cuts, len(buf)]:
            d.feed(direction, buf[prev:c], 5)
            prev = c
    d.close(6)
    assert _summary(got) == _summary(want)
    assert len(want) == n and all(c.flags == [] for c in want)
