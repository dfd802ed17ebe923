"""Kafka dissector under Hypothesis: arbitrary bytes never raise, absurd lengths and counts are
refused (flagged) rather than followed, any split of a stream gives the same calls, memory stays
bounded."""

from __future__ import annotations

import struct

from hypothesis import given
from hypothesis import strategies as st
from kafka.protocol.metadata import MetadataRequest

from dissect.base import Limits
from dissect.kafka import detect
from dissect.kafka.apis import DECODED, decode_body, is_flexible
from dissect.kafka.records import RecordBudget, summarize_records
from dissect.model import Call
from tests.dissect.kafka_helpers import make, req, resp
from tests.dissect.test_kafka_dissector import batch, metadata_response, produce, produce_response

LIMITS = Limits(max_body=4096, max_pending=8)


def summary(calls: list[Call]) -> list[tuple[object, ...]]:
    return [
        (
            c.method,
            c.target,
            c.status,
            c.info.get("correlation_id"),
            tuple(c.flags),
            c.request is None,
            c.response is None,
        )
        for c in calls
    ]


def _stream() -> list[tuple[int, bytes]]:
    recs = batch([(b"k", b"v" * 50, [("h", b"x")]), (None, b"w", [])])
    out: list[tuple[int, bytes]] = []
    for i in range(1, 4):
        out.append((0, req(MetadataRequest[4](topics=[MetadataRequest.MetadataRequestTopic(name=f"t{i}")],
                                              allow_auto_topic_creation=False), i)))  # fmt: skip
        out.append((0, req(produce(9, f"t{i}", recs), 100 + i)))
        out.append((1, resp(metadata_response(4, [(f"t{i}", i % 2)]), i)))
        out.append((1, resp(produce_response(9, f"t{i}", 0, i), 100 + i)))
    return out


STREAM = _stream()


@given(st.lists(st.tuples(st.integers(0, 1), st.binary(max_size=300)), max_size=30), st.booleans())
def test_arbitrary_bytes_never_raise(chunks: list[tuple[int, bytes]], handshake: bool) -> None:
    d, calls = make(handshake, LIMITS)
    for i, (direction, data) in enumerate(chunks):
        d.feed(direction, data, i)
        assert d.buffered_bytes() <= 2 * (64 << 10) + 2 * 4096 + 8 * 4096
    d.close(99)
    assert d.internal_errors == 0
    for c in calls:
        c.to_json()  # every call is encodable


@given(st.binary(max_size=400))
def test_detect_never_raises(data: bytes) -> None:
    detect(data)


@given(st.sampled_from(sorted(DECODED)), st.integers(0, 20), st.booleans(), st.binary(max_size=200))
def test_decode_body_never_raises(key: int, version: int, response: bool, data: bytes) -> None:
    request_schema, response_schema, _ = DECODED[key]
    schema = response_schema if response else request_schema
    d = decode_body(schema, data, 0, version, is_flexible(key, version), False, RecordBudget())
    assert d.complete or d.error


@given(st.binary(max_size=300), st.integers(0, 1 << 31))
def test_records_never_raise(data: bytes, declared: int) -> None:
    summarize_records(data, declared, RecordBudget())


def test_absurd_counts_are_refused_not_followed() -> None:
    # Metadata v1 request whose topics array claims 2^31 - 1 elements in 4 bytes
    body = struct.pack(">hhih", 3, 1, 1, 1) + b"c" + struct.pack(">i", 0x7FFFFFFF) + b"\x00" * 4
    d, calls = make(True, LIMITS)
    d.feed(0, struct.pack(">i", len(body)) + body, 1)
    d.close(2)
    (call,) = calls
    assert "parse-error" in call.flags
    assert "exceeds" in call.info["decode_errors"][0]


@given(st.lists(st.integers(1, 2000), max_size=12))
def test_any_split_gives_the_same_calls(cuts: list[int]) -> None:
    ref_d, ref = make(True, LIMITS)
    for i, (direction, data) in enumerate(STREAM):
        ref_d.feed(direction, data, i)
    ref_d.close(99)
    d, calls = make(True, LIMITS)
    for i, (direction, data) in enumerate(STREAM):
        pos = 0
        for c in cuts:
            if pos >= len(data):
                break
            d.feed(direction, data[pos : pos + c], i)
            pos += c
        if pos < len(data):
            d.feed(direction, data[pos:], i)
    d.close(99)
    assert summary(calls) == summary(ref)
    assert len(ref) == 6 and all(c.flags == [] for c in ref)
    assert [c.info for c in calls] == [c.info for c in ref]


@given(st.integers(0, 2000), st.integers(1, 3000))
def test_a_gap_never_raises_and_stays_bounded(at: int, n: int) -> None:
    whole = b"".join(data for direction, data in STREAM if direction == 0)
    d, _ = make(True, LIMITS)
    d.feed(0, whole[:at], 1)
    d.gap(0, n, 2)
    d.feed(0, whole[at + n :], 3)
    d.close(4)
    assert d.internal_errors == 0 and d.buffered_bytes() == 0
