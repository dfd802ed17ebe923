"""Hypothesis over real HTTP/2 conversations (made by h2) and over hostile bytes.

- any re-split of the bytes each side sent gives the same calls;
- random bytes, mutated conversations, cuts and gaps never raise (strict mode turns an internal error
  into an exception) and the dissector's buffers stay bounded by `Limits`.
"""

from __future__ import annotations

import functools

from hypothesis import given
from hypothesis import strategies as st

from dissect.model import Call
from tests.dissect.test_http2_dissector import H2Conv, make

MAX_BODY = 4096
MAX_BLOCK = 8192
# frame buffer (a non-DATA frame up to the skip threshold) + header block + two HPACK tables + bodies
BOUND = (64 << 10) + 9 + MAX_BLOCK + 2 * (64 << 10) + 2 * 16 * MAX_BODY


@functools.cache
def conversation() -> tuple[tuple[int, bytes], ...]:
    conv = H2Conv()
    for i in range(8):
        sid = 1 + 2 * i
        body = (b"payload-%d " % i) * (i * 40)
        conv.request(
            sid,
            f"/r/{i}?q={'x' * i}",
            "POST" if i % 2 else "GET",
            body if i % 2 else b"",
            extra=[("x-n", str(i)), ("cookie", "c" * (i * 10))],
        )
        trailers = [("x-t", str(i))] if i % 3 == 0 else None
        if i == 0:
            conv.s.push_stream(
                1, 2, [(":method", "GET"), (":path", "/p"), (":scheme", "http"), (":authority", "a")]
            )
            conv.flush()
        conv.respond(
            sid, 200 + i, body[: 300 * i], headers=[("content-type", "text/plain")], trailers=trailers
        )
    conv.s.send_headers(2, [(":status", "200")], end_stream=True)
    conv.flush()
    return tuple(conv.chunks)


def key(c: Call) -> tuple[object, ...]:
    return (
        c.info.get("stream_id"), c.method, c.target, c.status, tuple(c.flags),
        None if c.request is None else (tuple(c.request.headers), c.request.body, tuple(c.request.trailers)),
        None if c.response is None
        else (tuple(c.response.headers), c.response.body, tuple(c.response.trailers)),
    )  # fmt: skip


def feed_all(chunks: list[tuple[int, bytes]], handshake: bool = True) -> list[Call]:
    d, calls, _ = make(handshake, max_body=MAX_BODY, max_header_block=MAX_BLOCK)
    for i, (direction, b) in enumerate(chunks):
        d.feed(direction, b, i)
    d.close(1 << 40)
    return calls


def test_reference_conversation() -> None:
    calls = feed_all(list(conversation()))
    assert len(calls) == 9
    assert all(c.flags in ([], ["server-push"]) for c in calls)


@given(st.data())
def test_any_split_gives_the_same_calls(data: st.DataObject) -> None:
    chunks = list(conversation())
    want = sorted(map(key, feed_all(chunks)), key=repr)
    resplit: list[tuple[int, bytes]] = []
    for d, b in chunks:
        cuts = sorted(data.draw(st.lists(st.integers(0, len(b)), max_size=6)))
        prev = 0
        for c in [*cuts, len(b)]:
            if c > prev:
                resplit.append((d, b[prev:c]))
                prev = c
    got = sorted(map(key, feed_all(resplit)), key=repr)
    # timestamps differ with the split; the records must not
    assert got == want


@given(st.lists(st.tuples(st.integers(0, 1), st.binary(max_size=400)), max_size=20), st.booleans())
def test_random_bytes_never_raise(chunks: list[tuple[int, bytes]], handshake: bool) -> None:
    d, _, _ = make(handshake, max_body=MAX_BODY, max_header_block=MAX_BLOCK)
    for i, (direction, b) in enumerate(chunks):
        d.feed(direction, b, i)
        assert d.buffered_bytes() <= BOUND
    d.close(0)


@given(st.data(), st.booleans())
def test_mutated_conversations_never_raise_and_stay_bounded(data: st.DataObject, handshake: bool) -> None:
    chunks = list(conversation())
    d, calls, _ = make(handshake, max_body=MAX_BODY, max_header_block=MAX_BLOCK)
    for i, (direction, b) in enumerate(chunks):
        op = data.draw(st.sampled_from(["keep", "keep", "flip", "cut", "gap", "insert", "drop"]))
        if op == "flip" and b:
            j = data.draw(st.integers(0, len(b) - 1))
            b = b[:j] + bytes([b[j] ^ data.draw(st.integers(1, 255))]) + b[j + 1 :]
        elif op == "cut" and b:
            b = b[: data.draw(st.integers(0, len(b)))]
        elif op == "insert":
            b = data.draw(st.binary(max_size=50)) + b
        elif op == "drop":
            continue
        if op == "gap" and b:
            j = data.draw(st.integers(0, len(b)))
            d.feed(direction, b[:j], i)
            d.gap(direction, len(b) - j, i, data.draw(st.booleans()))
        else:
            d.feed(direction, b, i)
        assert d.buffered_bytes() <= BOUND
    d.close(1 << 40)
    for c in calls:
        c.to_json()  # every record encodes
