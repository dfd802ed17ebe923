"""Kafka dissector: requests and responses encoded by kafka-python (an independent implementation of
Apache Kafka's message definitions) and by hand from the protocol guide, decoded by podshark.

Each test writes the field values it encodes and checks podshark's call against them: decode(encode(x))
== x, plus framing, pairing, losses and bounds.
"""

from __future__ import annotations

import gzip
import struct
from collections.abc import Sequence
from typing import Any

import cramjam
import pytest
import zstandard
from kafka.protocol.consumer import FetchRequest, FetchResponse
from kafka.protocol.metadata import ApiVersionsRequest, MetadataRequest, MetadataResponse
from kafka.protocol.producer import ProduceRequest, ProduceResponse
from kafka.record.default_records import DefaultRecordBatchBuilder

from dissect.base import Limits, Verdict
from dissect.kafka import ANALYZER, detect
from dissect.model import Flag
from tests.dissect.kafka_helpers import CLIENT, SERVER, make, req, resp, run

# ---------------------------------------------------------------------- builders


def batch(
    records: Sequence[tuple[bytes | None, bytes | None, Sequence[tuple[str, bytes]]]], base_offset: int = 0
) -> bytes:
    """A RecordBatch v2 built by kafka-python (uncompressed)."""
    b = DefaultRecordBatchBuilder(
        magic=2, compression_type=0, is_transactional=False, producer_id=-1, producer_epoch=-1,
        base_sequence=-1, batch_size=1 << 20,
    )  # fmt: skip
    for i, (k, v, h) in enumerate(records):
        b.append(i, timestamp=1_700_000_000_000 + i, key=k, value=v, headers=h)
    out = bytearray(b.build())
    struct.pack_into(">q", out, 0, base_offset)
    return bytes(out)


def compress_batch(raw: bytes, codec: int) -> bytes:
    """Recompress a batch's records section with ``codec`` (RecordBatch v2 layout: the records start
    at byte 61; bits 0-2 of the attributes at byte 21 name the codec; batchLength at byte 8 counts
    from byte 12). The CRC is not recomputed: podshark does not verify it."""
    head, recs = bytearray(raw[:61]), raw[61:]
    if codec == 1:
        body = gzip.compress(recs)
    elif codec == 2:  # Xerial framing, as the Java client writes snappy
        block = bytes(cramjam.snappy.compress_raw(recs))
        body = b"\x82SNAPPY\x00" + struct.pack(">ii", 1, 1) + struct.pack(">i", len(block)) + block
    elif codec == 3:
        body = bytes(cramjam.lz4.compress(recs))
    else:
        body = zstandard.ZstdCompressor().compress(recs)
    struct.pack_into(">h", head, 21, codec)
    struct.pack_into(">i", head, 8, 49 + len(body))
    return bytes(head) + body


def produce(version: int, topic: str, records: bytes, acks: int = 1) -> Any:
    P = ProduceRequest
    return P[version](
        transactional_id=None, acks=acks, timeout_ms=1500,
        topic_data=[P.TopicProduceData(name=topic, partition_data=[
            P.TopicProduceData.PartitionProduceData(index=0, records=records)])],
    )  # fmt: skip


def produce_response(version: int, topic: str, error: int, offset: int) -> Any:
    R = ProduceResponse
    T = R.TopicProduceResponse
    return R[version](
        responses=[T(name=topic, partition_responses=[
            T.PartitionProduceResponse(index=0, error_code=error, base_offset=offset, log_append_time_ms=-1,
                                       log_start_offset=0, record_errors=[], error_message=None)])],
        throttle_time_ms=0,
    )  # fmt: skip


def fetch_response(version: int, topic: str, records: bytes, error: int = 0) -> Any:
    R = FetchResponse
    T = R.FetchableTopicResponse
    return R[version](
        throttle_time_ms=0, error_code=0, session_id=0,
        responses=[T(topic=topic, partitions=[T.PartitionData(
            partition_index=0, error_code=error, high_watermark=10, last_stable_offset=10,
            log_start_offset=0, aborted_transactions=None, preferred_read_replica=-1, records=records)])],
    )  # fmt: skip


def fetch_request(version: int, topic: str) -> Any:
    F = FetchRequest
    return F[version](
        replica_id=-1, max_wait_ms=500, min_bytes=1, max_bytes=1 << 20, isolation_level=0, session_id=0,
        session_epoch=-1,
        topics=[F.FetchTopic(topic=topic, partitions=[F.FetchTopic.FetchPartition(
            partition=0, current_leader_epoch=-1, fetch_offset=5, last_fetched_epoch=-1, log_start_offset=-1,
            partition_max_bytes=1 << 20)])],
        forgotten_topics_data=[], rack_id="",
    )  # fmt: skip


def metadata_response(version: int, topics: list[tuple[str, int]]) -> Any:
    R = MetadataResponse
    T = R.MetadataResponseTopic
    return R[version](
        throttle_time_ms=0,
        brokers=[R.MetadataResponseBroker(node_id=1, host="broker-1", port=9092, rack=None)],
        cluster_id="c1", controller_id=1,
        topics=[T(error_code=err, name=name, is_internal=False, partitions=[])
                for name, err in topics],
    )  # fmt: skip


# ---------------------------------------------------------------------- decoding


@pytest.mark.parametrize("version", [0, 1, 4, 9, 12])
def test_metadata_topics_and_first_error(version: int) -> None:
    m = MetadataRequest[version](
        topics=[MetadataRequest.MetadataRequestTopic(name=n) for n in ("orders", "pay")],
        allow_auto_topic_creation=False, include_cluster_authorized_operations=False,
        include_topic_authorized_operations=False,
    )  # fmt: skip
    r = metadata_response(version, [("orders", 0), ("pay", 3)])
    (call,) = run([(0, req(m, 5)), (1, resp(r, 5))])
    assert call.protocol == "kafka"
    assert (call.method, call.target, call.status) == ("Metadata", "orders,pay", 3)
    assert call.src == CLIENT and call.dst == SERVER
    i = call.info
    assert (i["api_key"], i["api_version"], i["correlation_id"], i["client_id"]) == (
        3,
        version,
        5,
        "podshark-test",
    )
    assert i["decoded"] is True and "decode_errors" not in i
    assert i["response"]["brokers"][0]["host"] == "broker-1"
    assert i["error"] == "UNKNOWN_TOPIC_OR_PARTITION"
    assert call.flags == []
    assert call.request is not None and call.response is not None
    assert (
        call.request.body_size == len(req(m, 5)) - 4 and call.request.wire_size == call.request.body_size + 4
    )


def test_metadata_all_topics_has_empty_target() -> None:
    m = MetadataRequest[1](topics=None)
    (call,) = run([(0, req(m, 1)), (1, resp(metadata_response(1, [("a", 0)]), 1))])
    assert (call.target, call.status) == ("", 0)
    assert call.info["request"]["topics"] is None


@pytest.mark.parametrize("version", [3, 7, 9])
def test_produce_records_and_response(version: int) -> None:
    recs = batch([(b"k1", b"hello", [("trace", b"abc")]), (None, b"\x00\x01\xff", [])], base_offset=0)
    (call,) = run(
        [
            (0, req(produce(version, "orders", recs), 9)),
            (1, resp(produce_response(version, "orders", 0, 42), 9)),
        ]
    )
    assert (call.method, call.target, call.status) == ("Produce", "orders", 0)
    part = call.info["request"]["topic_data"][0]["partition_data"][0]
    r = part["records"]
    assert (r["batches"], r["count"], r["magic"], r["compression"]) == (1, 2, 2, "none")
    assert r["records"][0]["key"] == {"size": 2, "text": "k1"}
    assert r["records"][0]["value"] == {"size": 5, "text": "hello"}
    assert r["records"][0]["headers"] == [["trace", {"size": 3, "text": "abc"}]]
    assert r["records"][0]["timestamp"] == 1_700_000_000_000
    assert r["records"][1]["key"] is None
    assert r["records"][1]["value"] == {"size": 3, "base64": "AAH/"}
    assert r["records"][1]["offset"] == 1
    assert call.info["request"]["acks"] == 1 and call.info["request"]["timeout_ms"] == 1500
    assert call.info["response"]["responses"][0]["partition_responses"][0]["base_offset"] == 42
    assert call.info["record_count"] == 2


def test_produce_error_is_status() -> None:
    recs = batch([(None, b"x", [])])
    (call,) = run([(0, req(produce(9, "t", recs), 1)), (1, resp(produce_response(9, "t", 10, -1), 1))])
    assert call.status == 10 and call.info["error"] == "MESSAGE_TOO_LARGE"


def test_produce_acks_zero_has_no_response() -> None:
    recs = batch([(None, b"x", [])])
    calls = run([(0, req(produce(8, "t", recs, acks=0), 1)), (0, req(produce(8, "t", recs, acks=0), 2))])
    assert [c.info["correlation_id"] for c in calls] == [1, 2]
    for c in calls:
        assert c.response is None and c.status is None
        assert c.info["no_response"] is True
        assert Flag.RESPONSE_MISSING not in c.flags


@pytest.mark.parametrize(("codec", "name"), [(1, "gzip"), (2, "snappy"), (3, "lz4"), (4, "zstd")])
def test_fetch_response_compressed_records(codec: int, name: str) -> None:
    raw = batch([(b"key", b"value-%d" % i, []) for i in range(5)], base_offset=100)
    comp = compress_batch(raw, codec)
    (call,) = run(
        [(0, req(fetch_request(12, "orders"), 3)), (1, resp(fetch_response(12, "orders", comp), 3))]
    )
    assert (call.method, call.target, call.status) == ("Fetch", "orders", 0)
    r = call.info["response"]["responses"][0]["partitions"][0]["records"]
    assert r["compression"] == name and r["count"] == 5 and "errors" not in r
    assert [x["value"]["text"] for x in r["records"]] == [f"value-{i}" for i in range(5)]
    assert [x["offset"] for x in r["records"]] == [100, 101, 102, 103, 104]
    assert call.info["record_count"] == 5


def test_snappy_raw_block() -> None:
    raw = batch([(None, b"v", [])])
    head = bytearray(raw[:61])
    body = bytes(cramjam.snappy.compress_raw(raw[61:]))
    struct.pack_into(">h", head, 21, 2)
    struct.pack_into(">i", head, 8, 49 + len(body))
    (call,) = run(
        [(0, req(fetch_request(11, "t"), 3)), (1, resp(fetch_response(11, "t", bytes(head) + body), 3))]
    )
    r = call.info["response"]["responses"][0]["partitions"][0]["records"]
    assert r["records"][0]["value"]["text"] == "v"


def test_decompression_bomb_is_refused() -> None:
    raw = batch([(None, b"\x00" * 200_000, [])])
    comp = compress_batch(raw, 4)
    limits = Limits(max_body=64 << 10)
    (call,) = run(
        [(0, req(fetch_request(12, "t"), 3)), (1, resp(fetch_response(12, "t", comp), 3))], limits=limits
    )
    r = call.info["response"]["responses"][0]["partitions"][0]["records"]
    assert r["count"] == 1 and "records" not in r
    assert "expands beyond" in r["errors"][0]


def test_values_are_bounded_but_counts_complete() -> None:
    raw = batch([(None, b"a" * 10_000, [])] * 3 + [(None, b"b", [])] * 150)
    (call,) = run([(0, req(produce(9, "t", raw), 1)), (1, resp(produce_response(9, "t", 0, 0), 1))])
    r = call.info["request"]["topic_data"][0]["partition_data"][0]["records"]
    assert r["count"] == 153
    assert len(r["records"]) == 100
    assert r["records"][0]["value"]["size"] == 10_000
    assert len(r["records"][0]["value"]["text"]) == 4096 and r["records"][0]["value"]["truncated"] is True


def test_api_versions_flexible_request_v0_response_header() -> None:
    m = ApiVersionsRequest[3](client_software_name="podshark", client_software_version="1.0")
    # ApiVersionsResponse v3 by hand: header v0 (correlation id only), then error_code int16 0,
    # api_keys compact array of 1 (uvarint 2): key 0, min 0, max 9, tagged 0; throttle int32 0; tagged 0
    body = (
        struct.pack(">ih", 11, 0)
        + b"\x02"
        + struct.pack(">hhh", 0, 0, 9)
        + b"\x00"
        + struct.pack(">i", 0)
        + b"\x00"
    )
    (call,) = run([(0, req(m, 11)), (1, struct.pack(">i", len(body)) + body)])
    assert call.method == "ApiVersions" and call.status == 0
    assert call.info["request"] == {"client_software_name": "podshark", "client_software_version": "1.0"}
    assert call.info["response"]["api_keys"] == [{"api_key": 0, "min_version": 0, "max_version": 9}]


def test_api_versions_unsupported_version_answered_in_v0() -> None:
    m = ApiVersionsRequest[4](client_software_name="x", client_software_version="1")
    # KIP-511: a broker that does not know v4 answers UNSUPPORTED_VERSION (35) in the v0 layout
    body = struct.pack(">ihi", 4, 35, 1) + struct.pack(">hhh", 18, 0, 3)
    (call,) = run([(0, req(m, 4)), (1, struct.pack(">i", len(body)) + body)])
    assert call.status == 35 and call.info["error"] == "UNSUPPORTED_VERSION"
    assert call.info["response"]["api_keys"] == [{"api_key": 18, "min_version": 0, "max_version": 3}]


def hand_request(
    key: int, version: int, corr: int, client_id: bytes, body: bytes, flexible: bool = False
) -> bytes:
    """Request header v1/v2 by the protocol guide: api_key int16, api_version int16, correlation_id
    int32, client_id nullable string (int16 length even in v2), tagged fields (v2 only)."""
    msg = struct.pack(">hhi", key, version, corr) + struct.pack(">h", len(client_id)) + client_id
    msg += (b"\x00" if flexible else b"") + body
    return struct.pack(">i", len(msg)) + msg


def test_undecoded_api_is_still_a_call() -> None:
    # CreateTopics (19) v7: flexible; podshark has no schema for it
    r = hand_request(19, 7, 77, b"admin", b"\x01\x00\x00\x00\x00\x00\x00", flexible=True)
    answer = struct.pack(">i", 77) + b"\x00" + b"\x00" * 6
    (call,) = run([(0, r), (1, struct.pack(">i", len(answer)) + answer)])
    assert (call.method, call.target, call.status) == ("CreateTopics", "", None)
    assert call.info["decoded"] is False
    assert (call.info["api_key"], call.info["api_version"], call.info["correlation_id"]) == (19, 7, 77)
    assert call.info["client_id"] == "admin"
    assert call.response is not None and call.flags == []


def test_unknown_version_of_known_api_not_decoded() -> None:
    r = hand_request(3, 19, 1, b"c", b"\x00" * 8, flexible=True)
    answer = struct.pack(">i", 1) + b"\x00" * 4
    (call,) = run([(0, r), (1, struct.pack(">i", len(answer)) + answer)])
    assert call.method == "Metadata" and call.info["decoded"] is False and call.status is None


# ---------------------------------------------------------------------- pairing, losses, bounds


def test_pipelined_and_out_of_order_responses_pair_by_correlation_id() -> None:
    reqs = [
        req(MetadataRequest[1](topics=[MetadataRequest.MetadataRequestTopic(name=f"t{i}")]), i)
        for i in (1, 2, 3)
    ]
    resps = {i: resp(metadata_response(1, [(f"t{i}", i)]), i) for i in (1, 2, 3)}
    calls = run([(0, b"".join(reqs)), (1, resps[2] + resps[1]), (1, resps[3])])
    got = sorted((c.info["correlation_id"], c.target, c.status) for c in calls)
    assert got == [(1, "t1", 1), (2, "t2", 2), (3, "t3", 3)]
    assert all(c.flags == [] for c in calls)


def test_response_without_request_mid_stream() -> None:
    r = resp(metadata_response(1, [("a", 0)]), 42)
    (call,) = run([(1, r)], handshake=False)
    assert call.method is None and call.target is None and call.request is None
    assert call.info == {"correlation_id": 42, "decoded": False}
    assert Flag.REQUEST_MISSING in call.flags and Flag.MID_STREAM in call.flags


def test_mid_stream_resyncs_on_request_header() -> None:
    m1 = req(MetadataRequest[1](topics=[MetadataRequest.MetadataRequestTopic(name="aa")]), 1)
    m2 = req(MetadataRequest[1](topics=[MetadataRequest.MetadataRequestTopic(name="bb")]), 2)
    r2 = resp(metadata_response(1, [("bb", 0)]), 2)
    # the capture starts 7 bytes into the first request
    calls = run([(0, m1[7:] + m2), (1, r2)], handshake=False)
    assert [(c.method, c.target, c.info["correlation_id"]) for c in calls] == [("Metadata", "bb", 2)]


def test_gap_inside_message_keeps_alignment() -> None:
    recs = batch([(None, b"x" * 300, [])])
    p1 = req(produce(9, "t", recs), 1)
    p2 = req(produce(9, "u", recs), 2)
    d, calls = make()
    d.feed(0, p1[:100], 1)
    d.gap(0, 50, 2)
    d.feed(0, p1[150:] + p2, 3)
    d.feed(1, resp(produce_response(9, "t", 0, 1), 1) + resp(produce_response(9, "u", 0, 2), 2), 4)
    d.close(5)
    assert [(c.target, c.info["correlation_id"]) for c in calls] == [("t", 1), ("u", 2)]
    assert Flag.GAP in calls[0].flags and Flag.TRUNCATED in calls[0].flags
    assert calls[0].request is not None and calls[0].request.truncated
    assert calls[1].flags == []


def test_gap_at_boundary_resyncs_and_orphans_response() -> None:
    m = [
        req(MetadataRequest[1](topics=[MetadataRequest.MetadataRequestTopic(name=n)]), i)
        for i, n in ((1, "a"), (2, "b"))
    ]
    d, calls = make()
    d.gap(0, len(m[0]), 1)  # the first request was lost entirely
    d.feed(0, m[1], 2)
    d.feed(1, resp(metadata_response(1, [("a", 0)]), 1) + resp(metadata_response(1, [("b", 0)]), 2), 3)
    d.close(4)
    assert sorted((c.method or "", c.info["correlation_id"]) for c in calls) == [("", 1), ("Metadata", 2)]
    orphan = next(c for c in calls if c.method is None)
    assert Flag.REQUEST_MISSING in orphan.flags


def test_lost_response_is_declared_missing_when_next_answer_arrives() -> None:
    m = [
        req(MetadataRequest[1](topics=[MetadataRequest.MetadataRequestTopic(name=n)]), i)
        for i, n in ((1, "a"), (2, "b"))
    ]
    r1 = resp(metadata_response(1, [("a", 0)]), 1)
    d, calls = make()
    d.feed(0, m[0] + m[1], 1)
    d.gap(1, len(r1), 2)
    d.feed(1, resp(metadata_response(1, [("b", 0)]), 2), 3)
    assert [(c.info["correlation_id"], c.response is None) for c in calls] == [(1, True), (2, False)]
    assert Flag.RESPONSE_MISSING in calls[0].flags and Flag.GAP in calls[0].flags


def test_large_fetch_response_truncated_and_partially_decoded() -> None:
    raw = batch([(None, b"v" * 1000, [])] * 50)
    limits = Limits(max_body=8 << 10)
    d, calls = make(limits=limits)
    d.feed(0, req(fetch_request(12, "big"), 1), 1)
    whole = resp(fetch_response(12, "big", raw), 1)
    for i in range(0, len(whole), 1000):
        d.feed(1, whole[i : i + 1000], 2)
        assert d.buffered_bytes() <= (8 << 10) + 4 + len(req(fetch_request(12, "big"), 1))
    d.close(3)
    (call,) = calls
    assert call.response is not None and call.response.truncated
    assert call.response.body_size == len(whole) - 4 and len(call.response.body) == 8 << 10
    assert Flag.TRUNCATED in call.flags and Flag.PARSE_ERROR not in call.flags
    part = call.info["response"]["responses"][0]["partitions"][0]
    assert part["high_watermark"] == 10
    assert part["records"]["partial_batch"] is True and part["records"]["size"] == len(raw)


def test_pending_requests_bounded() -> None:
    limits = Limits(max_pending=4)
    d, calls = make(limits=limits)
    for i in range(10):
        d.feed(0, req(MetadataRequest[1](topics=None), i), i)
    assert len(d.pending) == 4
    assert [c.info["correlation_id"] for c in calls] == list(range(6))
    assert all(Flag.RESPONSE_MISSING in c.flags for c in calls)


def test_implausible_size_is_flagged_not_followed() -> None:
    d, calls = make()
    d.feed(0, b"\x7f\xff\xff\xff" + b"\x00" * 100, 1)
    d.feed(0, req(MetadataRequest[1](topics=None), 3), 2)
    d.close(3)
    assert d.parse_errors >= 1
    assert [c.info["correlation_id"] for c in calls] == [3]
    assert Flag.PARSE_ERROR in calls[0].flags


# ---------------------------------------------------------------------- detection


def test_detect_requests() -> None:
    m = req(MetadataRequest[1](topics=None), 1)
    assert detect(m) == Verdict.YES
    assert ANALYZER.detect(m[:6], 0, None) == Verdict.MORE
    assert detect(b"") == Verdict.MORE
    assert detect(req(produce(9, "t", batch([(None, b"x", [])])), 1)) == Verdict.YES
    assert detect(hand_request(19, 7, 1, b"admin", b"\x01\x00")) == Verdict.YES


API_VERSIONS_V3_RESPONSE = bytes.fromhex(
    "000001b30000000200003c0000000000090000010000000c000002000000070000030000000b00000400000005000005"
    "000000030000060000000700000700000003000008000000080000090000000800000a0000000400000b000000070000"
    "0c0000000400000d0000000400000e0000000500000f0000000500001000000004000011000000010000120000000300"
    "001300000007000014000000060000150000000200001600000004000017000000040000180000000300001900000003"
    "00001a0000000300001b0000000100001c0000000300001d0000000200001e0000000200001f00000002000020000000"
    "040000210000000200002200000002000023000000020000240000000200002500000003000026000000020000270000"
    "0002000028000000020000290000000200002a0000000200002b0000000200002c0000000100002d0000000000002e00"
    "00000000002f000000000000300000000100003100000001000032000000000000330000000000003800000000000039"
    "0000000000003c0000000000003d00000000000041000000000000420000000000004300000000000000000001010800"
    "00000000000000"
)


@pytest.mark.parametrize(
    "data",
    [
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        b"HTTP/1.1 200 OK\r\n\r\n",
        bytes.fromhex("160301020001") + b"\x00" * 40,  # TLS ClientHello record
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        # DNS over TCP: length 29, id 0x1234, flags 0x0100 (RD), 1 question www.example.com A IN
        bytes.fromhex("001d12340100000100000000000003777777076578616d706c6503636f6d0000010001"),
        # DNS over TCP response: flags 0x8180
        bytes.fromhex("002d12348180000100010000000003777777076578616d706c6503636f6d0000010001"),
        # a Kafka response alone (only a correlation id): the ApiVersions v3 answer of
        # kafka__deepflow_api-versions-v3.pcap (frame 2, whole)
        API_VERSIONS_V3_RESPONSE,
    ],
)
def test_detect_says_no_to_other_protocols(data: bytes) -> None:
    assert detect(data) == Verdict.NO


def test_detect_mid_stream_finds_a_request_later() -> None:
    m = req(MetadataRequest[1](topics=[MetadataRequest.MetadataRequestTopic(name="orders")]), 9)
    assert detect(b"\x01\x02garbage-tail-of-previous-message" + m) == Verdict.YES


@pytest.mark.parametrize(
    "name",
    [
        "dns__arkime_dns-tcp.pcap",
        "dns__zeek_dns-tcp-long-connection.pcap",
        "http1__zeek_bro.org.pcap",
        "mixed__zeek_wikipedia.pcap",
        "http2__arkime_http2-nghttp2.pcap",
        "grpc__deepflow_grpc-unary.pcap",
    ],
)
def test_kafka_alone_claims_nothing_in_other_captures(name: str) -> None:
    """With Kafka as the only analyzer, DNS-over-TCP, HTTP/1, TLS, HTTP/2 and gRPC captures give no
    Kafka call: content detection does not mistake them (mid-stream scanning included)."""
    from dissect.engine import Engine
    from dissect.pcapio import CaptureReader
    from tests.conftest import FIXTURES

    path = FIXTURES / name
    if not path.exists():
        pytest.skip(f"{path} is missing")
    calls = list(Engine("t", analyzers=[ANALYZER]).run(CaptureReader(str(path))))
    assert [c for c in calls if c.protocol == "kafka"] == []
