"""The Call record and its JSON form, as ../shared/design.md fixes them."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from dissect.model import SCHEMA_VERSION, Call, Endpoint, Flag, Message

# The design's example, verbatim (bodies shortened to valid base64).
DESIGN_EXAMPLE = {
    "v": 1,
    "id": "node-a/01JD3Q4X9ZK2M8R5T7V0W1Y2Z3",
    "ingest_ts": 1763700000200000000,
    "protocol": "http",
    "transport": "tcp",
    "tls": False,
    "sni": None,
    "src": {"ip": "10.1.0.7", "port": 51234, "pod": "web-5d9c7-abcde", "namespace": "shop",
            "workload": "Deployment/web", "service": None, "node": "node-a", "container": "web",
            "pid": 812, "process": "node", "labels": {"app": "web"}},
    "dst": {"ip": "10.96.0.12", "port": 8080, "pod": "api-7f9-xyz", "namespace": "shop",
            "workload": "Deployment/api", "service": "api", "node": "node-b", "container": "api",
            "pid": None, "process": None, "labels": {"app": "api"}},
    "request_ts": 1763700000123456789,
    "response_ts": 1763700000168456789,
    "latency_ns": 45000000,
    "method": "POST",
    "target": "/v1/orders?x=1",
    "status": 201,
    "request": {"headers": [["Host", "api"], ["Content-Type", "application/json"]], "trailers": [],
                "body_size": 24, "wire_size": 24,
                "body": "eyJza3UiOiAiYWJjIiwgInF0eSI6IDF9", "truncated": False},
    "response": {"headers": [["Content-Type", "application/json"], ["Content-Encoding", "gzip"]],
                 "trailers": [], "body_size": 17, "wire_size": 37, "body": "eyJpZCI6IDQyfQ==",
                 "truncated": False},
    "info": {},
    "flags": [],
}  # fmt: skip


def test_design_example_round_trips_exactly() -> None:
    call = Call.from_dict(DESIGN_EXAMPLE)
    assert call.latency_ns == 45_000_000
    assert call.request is not None and call.request.header("content-type") == "application/json"
    out = call.to_dict()
    expected = dict(DESIGN_EXAMPLE, flow_id=None)
    assert call.finish().latency_ns == 45_000_000
    assert out == expected
    assert json.loads(call.to_json()) == expected


def test_field_order_of_the_json_form_follows_the_design() -> None:
    keys = list(Call.from_dict(DESIGN_EXAMPLE).to_dict())
    design_order = list(DESIGN_EXAMPLE)
    assert keys[: len(design_order)] == design_order


def test_response_missing_shape() -> None:
    c = Call(protocol="http", src=Endpoint(ip="10.0.0.1", port=1), dst=Endpoint(ip="10.0.0.2", port=80))
    c.request = Message(headers=[("Host", "x")])
    c.flag(Flag.RESPONSE_MISSING, Flag.RESPONSE_MISSING)
    d = json.loads(c.to_json())
    assert d["response"] is None and d["status"] is None and d["latency_ns"] is None
    assert d["flags"] == ["response-missing"]
    assert d["v"] == SCHEMA_VERSION


def test_unknown_schema_version_is_refused_with_a_clear_message() -> None:
    for read in (Call.from_dict, lambda d: Call.from_json(json.dumps(d))):
        try:
            read(dict(DESIGN_EXAMPLE, v=99))
        except ValueError as e:
            assert "schema version 99" in str(e)
        else:
            raise AssertionError("a record of another schema version must not be read silently")


def test_malformed_records_are_refused_with_a_clear_message() -> None:
    bad = [
        b"{not json",
        json.dumps(dict(DESIGN_EXAMPLE, status="two hundred")).encode(),
        json.dumps({k: v for k, v in DESIGN_EXAMPLE.items() if k != "protocol"}).encode(),
        json.dumps(dict(DESIGN_EXAMPLE, request={"headers": "Host: x"})).encode(),
    ]
    for raw in bad:
        try:
            Call.from_json(raw)
        except ValueError as e:
            assert str(e)
        else:
            raise AssertionError(f"accepted {raw[:60]!r}")


def test_bodies_can_be_left_out() -> None:
    d = Call.from_dict(DESIGN_EXAMPLE).to_dict(bodies=False)
    assert "body" not in d["request"] and d["request"]["body_size"] == 24
    j = json.loads(Call.from_dict(DESIGN_EXAMPLE).to_json(bodies=False))
    expected = dict(DESIGN_EXAMPLE, flow_id=None)
    for side in ("request", "response"):
        expected[side] = {k: v for k, v in DESIGN_EXAMPLE[side].items() if k != "body"}  # type: ignore[union-attr]
    assert j == expected


texts = st.text(max_size=20)
headers = st.lists(st.tuples(texts, texts), max_size=5)
messages = st.builds(
    Message,
    headers=headers,
    trailers=headers,
    body=st.binary(max_size=64),
    body_size=st.integers(0, 10**9),
    wire_size=st.integers(0, 10**9),
    truncated=st.booleans(),
)
endpoints = st.builds(
    Endpoint,
    ip=st.none() | st.ip_addresses().map(str),
    port=st.none() | st.integers(0, 65535),
    pod=st.none() | texts,
    namespace=st.none() | texts,
    workload=st.none() | texts,
    labels=st.dictionaries(texts, texts, max_size=3),
    pid=st.none() | st.integers(0, 2**31),
)
calls = st.builds(
    Call,
    protocol=st.sampled_from(["http", "http2", "grpc", "dns", "kafka", "tls"]),
    src=endpoints,
    dst=endpoints,
    id=texts,
    request_ts=st.none() | st.integers(0, 2**63),
    response_ts=st.none() | st.integers(0, 2**63),
    method=st.none() | texts,
    target=st.none() | texts,
    status=st.none() | st.integers(-(2**31), 2**31),
    request=st.none() | messages,
    response=st.none() | messages,
    info=st.dictionaries(
        texts,
        st.integers(-(2**63), 2**63 - 1) | texts | st.lists(st.integers(0, 2**32), max_size=3),
        max_size=3,
    ),
    flags=st.lists(st.sampled_from(Flag.ALL), unique=True),
    flow_id=st.none() | texts,
)


@given(calls)
def test_any_call_round_trips_through_json(call: Call) -> None:
    assert Call.from_json(call.to_json()) == call
