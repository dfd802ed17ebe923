"""Hypothesis over the TLS dissector and parsers: never raises, stays bounded, and any re-split of the
same bytes gives the same call."""

from __future__ import annotations

import functools

from hypothesis import given
from hypothesis import strategies as st

from dissect.base import ConnContext, Verdict
from dissect.model import Call
from dissect.tls import TLSDissector, detect
from dissect.tls.hello import parse_client_hello, parse_server_hello
from dissect.tls.records import MAX_HANDSHAKE_MESSAGE
from tests.dissect.test_tls_handshakes import (
    CLIENT,
    SERVER,
    TLS12,
    TLS13,
    Conversation,
    client_context,
    converse,
    run_dissector,
    server_context,
)


@functools.lru_cache(maxsize=1)
def real_conversations() -> tuple[Conversation, ...]:
    """A few real conversations, made once: TLS 1.3 and 1.2, resumed, HelloRetryRequest, alert."""
    cctx, sctx = client_context(alpn=["h2", "http/1.1"]), server_context(alpn=["h2"])
    first = converse(cctx, sctx, response=b"r" * 20000)
    c12, s12 = client_context(maximum=TLS12), server_context()
    first12 = converse(c12, s12)
    return (
        first,
        converse(cctx, sctx, session=first.session),
        first12,
        converse(c12, s12, session=first12.session),
        converse(client_context(), server_context(groups="secp384r1")),
        converse(client_context(maximum=TLS12), server_context(minimum=TLS13)),
    )


def feed_all(
    segments: list[tuple[int, bytes]], *, handshake_seen: bool = True, strict: bool = True
) -> Call | None:
    calls: list[Call] = []
    ctx = ConnContext(
        flow_id="f", endpoints=(CLIENT, SERVER), emit=calls.append, handshake_seen=handshake_seen
    )
    dis = TLSDissector(ctx, strict=strict)
    for d, data in segments:
        dis.feed(d, data, 5)
        assert dis.buffered_bytes() <= 2 * (MAX_HANDSHAKE_MESSAGE + 64)
    dis.close(9)
    assert len(calls) <= 1
    return calls[0] if calls else None


def resplit(segments: list[tuple[int, bytes]], cuts: list[int]) -> list[tuple[int, bytes]]:
    """The same bytes in the same order, cut at other places (each piece keeps its direction)."""
    out: list[tuple[int, bytes]] = []
    k = 0
    for d, data in segments:
        pos = 0
        while pos < len(data):
            step = cuts[k % len(cuts)] if cuts else len(data)
            k += 1
            out.append((d, data[pos : pos + step]))
            pos += step
    return out


@given(st.integers(0, 5), st.lists(st.integers(1, 700), min_size=1, max_size=20))
def test_any_split_gives_the_same_call(which: int, cuts: list[int]) -> None:
    conv = real_conversations()[which]
    whole = feed_all(conv.segments)
    split = feed_all(resplit(conv.segments, cuts))
    assert whole is not None and split is not None
    assert split.to_dict() == whole.to_dict()


@given(st.integers(0, 3), st.integers(0, 3000), st.lists(st.integers(1, 700), min_size=1, max_size=20))
def test_mid_stream_resync_is_split_independent(which: int, skip: int, cuts: list[int]) -> None:
    """A capture starting anywhere inside the conversation: the resync finds the same boundaries
    however the bytes are cut into pieces."""
    conv = real_conversations()[which]
    segs = [(0, conv.stream(0)[skip:]), (1, conv.stream(1)[skip:])]
    whole = feed_all(segs, handshake_seen=False)
    split = feed_all(resplit(segs, cuts), handshake_seen=False)
    assert (whole is None) == (split is None)
    if whole is not None and split is not None:
        assert split.to_dict() == whole.to_dict()
        assert whole.info["tls_bytes"]["server"] + whole.info.get("unparsed_bytes", {}).get(
            "server", 0
        ) == len(segs[1][1])


@given(st.binary(max_size=4000), st.binary(max_size=4000), st.booleans())
def test_random_bytes_never_raise(a: bytes, b: bytes, seen: bool) -> None:
    feed_all([(0, a), (1, b)], handshake_seen=seen)
    detect(a)
    parse_client_hello(a)
    parse_server_hello(b)


@given(
    st.integers(0, 5),
    st.lists(st.tuples(st.integers(0, 1 << 20), st.integers(0, 255)), min_size=1, max_size=8),
    st.booleans(),
)
def test_mutated_real_handshakes_never_raise(which: int, edits: list[tuple[int, int]], seen: bool) -> None:
    conv = real_conversations()[which]
    streams = [bytearray(conv.stream(0)), bytearray(conv.stream(1))]
    for pos, val in edits:
        s = streams[pos & 1]
        if s:
            s[(pos >> 1) % len(s)] = val
    call = feed_all(
        [(0, bytes(streams[0][:600])), (1, bytes(streams[1])), (0, bytes(streams[0][600:]))],
        handshake_seen=seen,
    )
    if call is not None:
        call.to_json()  # always encodable


@given(st.integers(0, 5), st.integers(0, 5000), st.integers(1, 30000), st.integers(0, 1))
def test_gaps_never_raise_and_stay_bounded(which: int, at: int, n: int, direction: int) -> None:
    conv = real_conversations()[which]
    calls: list[Call] = []
    dis = TLSDissector(ConnContext(flow_id="f", endpoints=(CLIENT, SERVER), emit=calls.append), strict=True)
    for d, data in conv.segments:
        if d == direction and 0 <= at < len(data):
            dis.feed(d, data[:at], 1)
            dis.gap(d, n, 1)
            dis.feed(d, data[at + n :], 1)
            at = -1
        else:
            dis.feed(d, data, 1)
    dis.close(2)
    assert len(calls) == 1


@given(st.integers(0, 5), st.integers(6, 600))
def test_detect_real_hello_prefixes(which: int, n: int) -> None:
    """Any prefix of a real hello from 6 bytes on is YES, from either side; shorter ones are MORE."""
    conv = real_conversations()[which]
    for d in (0, 1):
        hello = conv.stream(d)
        if hello[:1] != b"\x16":
            continue  # the refused conversation: the server only sent an alert
        assert detect(hello[:n], d) == Verdict.YES
        assert detect(hello[: n % 6], d) == Verdict.MORE


def test_huge_handshake_message_is_not_buffered() -> None:
    """A 'ClientHello' announcing 1 MiB: skipped, never buffered, reported as a parse error."""
    body = b"\x01" + (1 << 20).to_bytes(3, "big")
    records = [b"\x16\x03\x01\x40\x00" + (body + b"\x00" * (0x4000 - 4))]
    records += [b"\x16\x03\x01\x40\x00" + b"\x00" * 0x4000 for _ in range(70)]
    call = feed_all([(0, r) for r in records])
    assert call is not None and "parse-error" in call.flags
    assert "client-hello-too-large" in call.info["weird"]
    assert run_dissector([(0, b"".join(records))])[0].info["weird"] == call.info["weird"]
