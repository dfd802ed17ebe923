"""Schema-less protobuf decoding against real encodings made by the ``protobuf`` package.

Every expected value comes from the schema and the values the test put in (`tests.grpc_lab` builds
``lab.proto`` at run time; descriptor.proto's own messages and the well-known types are protobufs
too), never from podshark's output.
"""

from __future__ import annotations

import json
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dissect.protobuf import MAX_HEX_BYTES, MAX_TEXT_CHARS, decode

pytest.importorskip("google.protobuf")

from google.protobuf import any_pb2, descriptor_pb2, struct_pb2, timestamp_pb2

from tests.grpc_lab import item, lab_messages, query


def by_number(fields: list[dict]) -> dict[int, list[dict]]:
    out: dict[int, list[dict]] = {}
    for f in fields:
        out.setdefault(f["field"], []).append(f)
    return out


def one(fields: list[dict], number: int) -> dict:
    got = by_number(fields)[number]
    assert len(got) == 1, got
    return got[0]


def test_scalar_types_of_every_wire_type() -> None:
    _, Item = lab_messages()
    data = Item(
        id=1234567890123,
        name="widget",
        price=19.99,
        weight=2.5,
        delta=-3,
        serial=0xDEADBEEFCAFEF00D,
        blob=b"\x00\x01\xfe\xff",
        active=True,
        tags=[1, 300, 70000],
        neg=-5,
        sf=-7,
    ).SerializeToString()
    fields = decode(data)
    assert fields is not None
    assert [f["field"] for f in fields] == [1, 2, 3, 4, 5, 6, 7, 8, 9, 11, 12]  # serialised in number order
    assert one(fields, 1) == {"field": 1, "wire": "varint", "value": 1234567890123}
    assert one(fields, 2) == {"field": 2, "wire": "len", "type": "string", "value": "widget"}
    price = one(fields, 3)
    assert price["wire"] == "i64" and price["double"] == 19.99
    assert price["value"] == struct.unpack("<Q", struct.pack("<d", 19.99))[0]
    weight = one(fields, 4)
    assert weight["wire"] == "i32" and weight["float"] == 2.5
    delta = one(fields, 5)  # sint32 -3 is zigzag 5 on the wire
    assert delta == {"field": 5, "wire": "varint", "value": 5}
    serial = one(fields, 6)
    assert serial["wire"] == "i64" and serial["value"] == 0xDEADBEEFCAFEF00D
    assert serial["signed"] == 0xDEADBEEFCAFEF00D - (1 << 64)
    assert one(fields, 7) == {
        "field": 7,
        "wire": "len",
        "type": "bytes",
        "value": {"hex": "0001feff", "size": 4},
    }
    assert one(fields, 8) == {"field": 8, "wire": "varint", "value": 1}
    # packed repeated int32: one length-delimited field holding varints 1, 300, 70000; not text, and
    # not a message (0x01 would be a tag of field 0) -> bytes
    packed = bytes([1]) + bytes([0xAC, 0x02]) + bytes([0xF0, 0xA2, 0x04])
    assert one(fields, 9) == {
        "field": 9,
        "wire": "len",
        "type": "bytes",
        "value": {"hex": packed.hex(), "size": 6},
    }
    neg = one(fields, 11)  # negative int32 is sent as a 10-byte varint (sign-extended to 64 bits)
    assert neg["value"] == (1 << 64) - 5 and neg["signed"] == -5
    sf = one(fields, 12)
    assert sf["wire"] == "i32" and sf["signed"] == -7 and sf["value"] == (1 << 32) - 7
    json.dumps(fields)  # JSON-friendly all the way down


def test_nested_messages() -> None:
    inner = item(2, "inner", child=item(3, "innermost"))
    data = item(1, "outer", child=inner)
    fields = decode(data)
    assert fields is not None
    child = one(fields, 10)
    assert child["wire"] == "len" and child["type"] == "message"
    assert one(child["value"], 1)["value"] == 2
    assert one(child["value"], 2)["value"] == "inner"
    grandchild = one(child["value"], 10)
    assert grandchild["type"] == "message"
    assert one(grandchild["value"], 2)["value"] == "innermost"


def test_file_descriptor_proto() -> None:
    fdp = descriptor_pb2.FileDescriptorProto(name="shop.proto", package="shop.v1", dependency=["a.proto"])
    msg = fdp.message_type.add(name="Order")
    msg.field.add(name="order_id", number=1, type=descriptor_pb2.FieldDescriptorProto.TYPE_STRING)
    msg.field.add(name="qty", number=7, type=descriptor_pb2.FieldDescriptorProto.TYPE_UINT32)
    fields = decode(fdp.SerializeToString())
    assert fields is not None
    # FileDescriptorProto: 1 name, 2 package, 3 dependency, 4 message_type
    assert one(fields, 1)["value"] == "shop.proto"
    assert one(fields, 2)["value"] == "shop.v1"
    assert one(fields, 3)["value"] == "a.proto"
    order = one(fields, 4)
    assert order["type"] == "message"
    assert one(order["value"], 1)["value"] == "Order"  # DescriptorProto.name
    fdescs = by_number(order["value"])[2]  # DescriptorProto.field
    assert len(fdescs) == 2
    first, second = (f["value"] for f in fdescs)
    assert one(first, 1)["value"] == "order_id" and one(first, 3)["value"] == 1  # name, number
    assert one(first, 5)["value"] == descriptor_pb2.FieldDescriptorProto.TYPE_STRING  # type
    assert one(second, 1)["value"] == "qty" and one(second, 3)["value"] == 7


def test_well_known_types() -> None:
    ts = timestamp_pb2.Timestamp(seconds=1_763_700_000, nanos=123_456_789)
    assert decode(ts.SerializeToString()) == [
        {"field": 1, "wire": "varint", "value": 1_763_700_000},
        {"field": 2, "wire": "varint", "value": 123_456_789},
    ]
    a = any_pb2.Any()
    a.Pack(ts)
    fields = decode(a.SerializeToString())
    assert fields is not None
    assert one(fields, 1)["value"] == "type.googleapis.com/google.protobuf.Timestamp"
    packed = one(fields, 2)
    assert packed["type"] == "message"
    assert [f["value"] for f in packed["value"]] == [1_763_700_000, 123_456_789]

    s = struct_pb2.Struct()
    s.update({"price": 2.5})
    fields = decode(s.SerializeToString())
    assert fields is not None
    entry = one(fields, 1)["value"]  # map<string, Value> fields: entries with key=1, value=2
    assert one(entry, 1)["value"] == "price"
    value = one(entry, 2)["value"]
    assert one(value, 2)["double"] == 2.5  # Value.number_value = 2


def test_text_that_looks_like_a_message_stays_text() -> None:
    # "hi" = 0x68 0x69 would parse as field 13 varint 0x69; printable text is preferred
    data = query(5, "hi")
    assert decode(data) == [
        {"field": 1, "wire": "varint", "value": 5},
        {"field": 2, "wire": "len", "type": "string", "value": "hi"},
    ]


def test_message_starting_with_newline_is_a_message() -> None:
    # an embedded {1: "foo.proto"} is b"\n\tfoo.proto": printable, but starts with a control char
    inner = descriptor_pb2.FileDescriptorProto(name="foo.proto").SerializeToString()
    assert inner == b"\n\tfoo.proto"
    data = b"\x0a" + bytes([len(inner)]) + inner
    fields = decode(data)
    assert fields == [
        {
            "field": 1,
            "wire": "len",
            "type": "message",
            "value": [{"field": 1, "wire": "len", "type": "string", "value": "foo.proto"}],
        }
    ]


def test_utf8_text_and_empty() -> None:
    fields = decode(query(0, "naïve ☃ 日本"))
    assert fields == [{"field": 2, "wire": "len", "type": "string", "value": "naïve ☃ 日本"}]
    assert decode(b"") == []
    assert decode(b"\x12\x00") == [{"field": 2, "wire": "len", "type": "string", "value": ""}]


@pytest.mark.parametrize(
    "data",
    [
        b"\x08",  # tag without its varint
        b"\x08\x96",  # varint cut
        b"\x12\x05abc",  # length beyond the data
        b"\x00\x01",  # field number 0
        b"\x0b\x0c",  # group start/end (wire types 3/4)
        b"\x0e",  # wire type 6
        b"\x0f",  # wire type 7
        b"\x09\x00\x00",  # i64 cut
        b"\x0d\x00",  # i32 cut
        b"\xff" * 11,  # varint longer than 10 bytes
        b"\xc0\xb8\x09\x01",  # field 19000: reserved for the implementation
        b"GET / HTTP/1.1\r\n",
    ],
)
def test_not_protobuf(data: bytes) -> None:
    assert decode(data) is None


def test_depth_limit_shows_deep_payload_as_bytes() -> None:
    data = item(0, "leaf")
    for i in range(12):
        data = item(i + 1, "", child=data)
    fields = decode(data, max_depth=3)
    assert fields is not None
    level = fields
    for _ in range(2):
        level = one(level, 10)["value"]
        assert isinstance(level, list)
    deepest = one(level, 10)
    assert deepest["type"] == "bytes"  # depth 3 reached: not parsed further


def test_field_budget() -> None:
    _, Item = lab_messages()
    data = Item(id=1, tags=[]).SerializeToString() + b"".join(b"\x08" + bytes([i]) for i in range(30))
    fields = decode(data, max_fields=10)
    assert fields is not None
    assert len(fields) == 11
    assert fields[-1] == {"omitted_bytes": len(data) - 2 * 10}
    assert decode(data + b"\x0f", max_fields=10) is None  # the unshown rest is still checked (within bounds)


def test_long_values_are_cut_for_display() -> None:
    _, Item = lab_messages()
    data = Item(name="x" * (MAX_TEXT_CHARS + 10), blob=bytes(range(256)) * 8).SerializeToString()
    fields = decode(data)
    assert fields is not None
    name = one(fields, 2)
    assert len(name["value"]) == MAX_TEXT_CHARS and name["size"] == MAX_TEXT_CHARS + 10
    blob = one(fields, 7)
    assert blob["value"]["size"] == 2048 and len(blob["value"]["hex"]) == 2 * MAX_HEX_BYTES


@given(st.binary(max_size=2048))
def test_random_bytes_never_raise(data: bytes) -> None:
    fields = decode(data, max_fields=200)
    if fields is not None:
        json.dumps(fields)
        assert _count(fields) <= 200 + 1


@given(st.binary(max_size=512), st.integers(min_value=0, max_value=10), st.integers(0, 50))
def test_random_bounds(data: bytes, depth: int, max_fields: int) -> None:
    fields = decode(b"\x0a" + bytes([min(len(data), 127)]) + data[:127] + data, depth, max_fields)
    if fields is not None:
        assert _count(fields) <= max_fields + 1


def _count(fields: list[dict]) -> int:
    n = 0
    for f in fields:
        n += 1
        if f.get("type") == "message":
            n += _count(f["value"])
    return n
