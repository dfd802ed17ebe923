"""Differential test: podshark's Kafka calls on the corpus captures against tshark (through pyshark).

Every ``kafka__*`` capture of ``../shared/corpus`` is copied into ``fixtures/pcaps`` (provenance in
the corpus manifest). tshark is told to decode the non-standard port 36333 as Kafka where the
manifest says so. For every Kafka request tshark shows, the oracle records ``kafka.api_key``,
``kafka.api_version``, ``kafka.correlation_id`` and the ``kafka.topic_name`` values; for every
response paired with it (``kafka.request_frame``) the ``kafka.error`` values. podshark must give one
call per request with the same key, version, correlation id and topics, a response exactly when
tshark paired one, and ``status`` equal to the first non-zero of tshark's error codes (0 when none).

tshark 4.0 does not decode some flexible versions (it says "Unsupported Produce version. Supports
v0-8", "Unsupported Fetch version. Supports v0-11", then marks the packet malformed and does not pair
the response). For those the header fields still come from tshark, and the body is checked against
the Kafka protocol specification (https://kafka.apache.org/protocol) in `HAND_DECODED`: expected
values decoded by hand from the bytes, with the reasoning written next to them.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from dissect.model import Call, Flag
from tests.conftest import FIXTURES
from tests.tshark_oracle import TSHARK, requires_pyshark, requires_tshark, tshark_retry

pytestmark = [pytest.mark.tshark, requires_tshark, requires_pyshark, pytest.mark.timeout(120)]

#: file -> the port tshark must be told is Kafka (MANIFEST.tsv: "[tshark: -d tcp.port==N,kafka]")
FILES: dict[str, int | None] = {
    "kafka__gosniffer_kafka.pcap": None,
    "kafka__arkime_kafka.pcap": None,
    "kafka__deepflow_produce-v9.pcap": 36333,
    "kafka__deepflow_fetch-v12-ok.pcap": 36333,
    "kafka__deepflow_produce-v2.pcap": None,
    "kafka__deepflow_api-versions-v3.pcap": None,
    "kafka__deepflow_join-group-v7.pcap": 36333,
    "kafka__deepflow_mixed-with-unsupported.pcap": None,
}

#: (file, correlation id) -> what the specification says podshark must decode where tshark 4.0 cannot.
HAND_DECODED: dict[tuple[str, int], dict[str, Any]] = {
    # Produce v9 (flexible: compact strings/arrays = uvarint length + 1, tagged fields). Request body
    # after the header (client id "console-producer", tagged 00): transactional_id 00 = null,
    # acks 0001 = 1, timeout_ms 000005dc = 1500, topic_data 02 = 1 topic, name 09 "zqy-test" (8 bytes),
    # partition_data 02 = 1, index 00000000, records 64 = 99 bytes: one RecordBatch v2 (magic 02,
    # attributes 0000 = uncompressed, records count 00000001) whose record has a null key (01 = -1
    # zig-zag) and a 31-byte value (3e = 31 zig-zag) of "q". Response: correlation 0000002f, tagged 00,
    # responses 02 = 1 "zqy-test", partition 0, error_code 0000, base_offset 0x23 = 35,
    # log_append_time -1, log_start_offset 0x10 = 16, record_errors 01 = empty, error_message 00 = null.
    ("kafka__deepflow_produce-v9.pcap", 47): {
        "target": "zqy-test",
        "status": 0,
        "request": {"acks": 1, "timeout_ms": 1500, "transactional_id": None},
        "records": (1, "q" * 31),
        "response_partition": {"index": 0, "error_code": 0, "base_offset": 35, "log_start_offset": 16},
    },
    # Fetch v12 request: replica_id ffffffff = -1, max_wait_ms 000001f4 = 500, min_bytes 1,
    # max_bytes 03200000 = 52428800, isolation 00, session_id 2f2671c5, session_epoch 00003420,
    # topics 02 = 1 "zqy-test", partitions 02 = 1: partition 0, current_leader_epoch 0,
    # fetch_offset 0x24 = 36, last_fetched_epoch -1, log_start_offset -1, partition_max_bytes 0x100000.
    # Response: correlation 00003cf3, tagged 00, throttle 0, error_code 0000, session_id 2f2671c5,
    # responses 01 = empty (nothing new for this incremental fetch session), tagged 00.
    ("kafka__deepflow_fetch-v12-ok.pcap", 15603): {
        "target": "zqy-test",
        "status": 0,
        "request": {"max_wait_ms": 500, "min_bytes": 1, "max_bytes": 52428800, "session_id": 0x2F2671C5},
        "fetch_partition": {"partition": 0, "fetch_offset": 36, "partition_max_bytes": 1 << 20},
        "response": {"error_code": 0, "session_id": 0x2F2671C5, "responses": []},
    },
    # Fetch v13 (topic ids instead of names): topics 01 = empty, forgotten 01 = empty, rack "".
    # Response: throttle 0, error 0, session_id 0x47011fe8, responses 01 = empty: target "" (no topic).
    ("kafka__deepflow_mixed-with-unsupported.pcap", 15551976): {
        "target": "",
        "status": 0,
        "request": {"max_wait_ms": 500, "session_id": 0x47011FE8, "topics": []},
        "response": {"error_code": 0, "session_id": 0x47011FE8, "responses": []},
    },
}


@dataclass
class TsharkRequest:
    frame: int
    api_key: int
    api_version: int
    correlation_id: int
    topics: list[str] = field(default_factory=list)
    malformed: bool = False
    response_errors: list[int] | None = None  # None: tshark paired no response


def _all(layer: Any, name: str) -> list[str]:
    c = layer.get_field(name)
    if c is None:
        return []
    return [str(f.show) for f in (getattr(c, "all_fields", None) or [c])]


@cache
@tshark_retry
def tshark_requests(path: str, port: int | None) -> list[TsharkRequest]:
    import pyshark

    cap = pyshark.FileCapture(
        path,
        keep_packets=False,
        decode_as={f"tcp.port=={port}": "kafka"} if port else None,
        custom_parameters=["-2"],
        tshark_path=TSHARK,
    )
    requests: dict[int, TsharkRequest] = {}
    responses: list[tuple[int, list[int]]] = []
    try:
        for pkt in cap:
            malformed = any(layer.layer_name == "_ws.malformed" for layer in pkt.layers)
            for layer in pkt.get_multiple_layers("kafka"):
                req_frame = _all(layer, "request_frame")
                if req_frame:
                    responses.append((int(req_frame[0]), [int(e) for e in _all(layer, "error")]))
                elif _all(layer, "api_key") and _all(layer, "api_version"):
                    requests[int(pkt.number)] = TsharkRequest(
                        frame=int(pkt.number),
                        api_key=int(_all(layer, "api_key")[0]),
                        api_version=int(_all(layer, "api_version")[0]),
                        correlation_id=int(_all(layer, "correlation_id")[0]),
                        topics=_all(layer, "topic_name"),
                        malformed=malformed,
                    )
    finally:
        cap.close()
    for frame, errors in responses:
        if frame in requests:
            requests[frame].response_errors = errors
    return list(requests.values())


@cache
def podshark_calls(path: Path) -> tuple[Call, ...]:
    from dissect.engine import dissect_path

    return tuple(dissect_path(str(path)))


def fixture(name: str) -> Path:
    path = FIXTURES / name
    if not path.exists():
        pytest.skip(f"{path} is missing: copy it from ../shared/corpus")
    return path


def by_correlation(calls: tuple[Call, ...]) -> dict[tuple[int, int], Call]:
    """(api key, correlation id) -> call: unique in these captures (two connections of one file may
    both start at correlation id 1, with different APIs)."""
    out: dict[tuple[int, int], Call] = {}
    for c in calls:
        if c.protocol == "kafka":
            key = (c.info["api_key"], c.info["correlation_id"])
            assert key not in out, "one call per (api key, correlation id) on these captures"
            out[key] = c
    return out


@pytest.mark.parametrize("name", sorted(FILES))
def test_calls_match_tshark(name: str) -> None:
    path = fixture(name)
    expected = tshark_requests(str(path), FILES[name])
    assert expected, "tshark shows Kafka requests in every corpus capture"
    calls = by_correlation(podshark_calls(path))
    assert sorted(calls) == sorted((r.api_key, r.correlation_id) for r in expected)
    for r in expected:
        call = calls[r.api_key, r.correlation_id]
        assert (call.info["api_key"], call.info["api_version"]) == (r.api_key, r.api_version)
        hand = HAND_DECODED.get((name, r.correlation_id))
        if r.malformed:
            # tshark 4.0 gave up on this version's body: the specification decides (HAND_DECODED)
            assert hand is not None, f"frame {r.frame}: tshark could not decode it; add it to HAND_DECODED"
            continue
        assert call.target == ",".join(dict.fromkeys(r.topics)), f"frame {r.frame}"
        if r.response_errors is None:
            assert call.response is None and Flag.RESPONSE_MISSING in call.flags
            assert call.status is None
        else:
            assert call.response is not None
            assert call.status == next((e for e in r.response_errors if e), 0), f"frame {r.frame}"
        assert call.info["decoded"] is True


@pytest.mark.parametrize(("name", "corr"), sorted(HAND_DECODED))
def test_versions_tshark_cannot_decode(name: str, corr: int) -> None:
    spec = HAND_DECODED[(name, corr)]
    (call,) = [c for c in podshark_calls(fixture(name)) if c.info.get("correlation_id") == corr]
    assert call.info["decoded"] is True and "decode_errors" not in call.info
    assert (call.target, call.status) == (spec["target"], spec["status"])
    for k, v in spec.get("request", {}).items():
        assert call.info["request"][k] == v, k
    for k, v in spec.get("response", {}).items():
        assert call.info["response"][k] == v, k
    if "records" in spec:
        count, value = spec["records"]
        recs = call.info["request"]["topic_data"][0]["partition_data"][0]["records"]
        assert recs["count"] == count and recs["compression"] == "none"
        assert recs["records"][0]["key"] is None and recs["records"][0]["value"]["text"] == value
    if "response_partition" in spec:
        part = call.info["response"]["responses"][0]["partition_responses"][0]
        assert {k: part[k] for k in spec["response_partition"]} == spec["response_partition"]
    if "fetch_partition" in spec:
        part = call.info["request"]["topics"][0]["partitions"][0]
        assert {k: part[k] for k in spec["fetch_partition"]} == spec["fetch_partition"]


def test_tshark_really_cannot_decode_them() -> None:
    """The hand-decoded list must not hide a regression: tshark marks each of them malformed."""
    malformed: dict[str, set[int]] = defaultdict(set)
    for name in FILES:
        for r in tshark_requests(str(fixture(name)), FILES[name]):
            if r.malformed:
                malformed[name].add(r.correlation_id)
    assert {(n, c) for n, cs in malformed.items() for c in cs} == set(HAND_DECODED)
