"""Kafka wire primitives (`dissect.kafka.wire`) against the encodings of the protocol guide."""

from __future__ import annotations

import pytest

from dissect.kafka.wire import KafkaDecodeError, Reader


def test_fixed_width_big_endian() -> None:
    r = Reader(bytes.fromhex("fffffe00000102800000000000000001"))
    assert r.int8() == -1
    assert r.int16() == -2
    assert r.int32() == 258
    assert r.int64() == -(1 << 63)
    assert r.boolean() is True
    assert r.remaining == 0
    with pytest.raises(KafkaDecodeError):
        r.int8()


@pytest.mark.parametrize(
    ("raw", "value"),
    [("00", 0), ("01", -1), ("02", 1), ("03", -2), ("feffffff0f", 2147483647), ("ffffffff0f", -2147483648)],
)
def test_varint_zigzag(raw: str, value: int) -> None:
    # protocol guide: varint is zig-zag encoded like protobuf sint32
    assert Reader(bytes.fromhex(raw)).varint() == value


def test_varlong_and_uvarint() -> None:
    assert Reader(bytes.fromhex("ac02")).uvarint() == 300
    assert Reader(bytes.fromhex("feffffffffffffffff01")).varlong() == (1 << 63) - 1
    with pytest.raises(KafkaDecodeError):
        Reader(bytes.fromhex("ffffffffff7f")).uvarint()  # 6 bytes: longer than a 32-bit varint
    with pytest.raises(KafkaDecodeError):
        Reader(bytes.fromhex("80")).uvarint()  # cut


def test_strings_classic_and_compact() -> None:
    assert Reader(b"\x00\x03abc").string() == "abc"
    assert Reader(b"\xff\xff").string() is None
    assert Reader(b"\x04abc").string(compact=True) == "abc"  # compact: length + 1
    assert Reader(b"\x00").string(compact=True) is None
    with pytest.raises(KafkaDecodeError):
        Reader(b"\x7f\xffabc").string()  # absurd length: refused, not followed
    with pytest.raises(KafkaDecodeError):
        Reader(b"\xff\xfe").string()


def test_bytes_and_arrays() -> None:
    assert Reader(b"\x00\x00\x00\x02hi").bytes_() == b"hi"
    assert Reader(b"\xff\xff\xff\xff").bytes_() is None
    assert Reader(b"\x03hi").bytes_(compact=True) == b"hi"
    assert Reader(b"\x00\x00\x00\x02\x00\x00").array_len() == 2
    assert Reader(b"\xff\xff\xff\xff").array_len() == -1
    with pytest.raises(KafkaDecodeError):
        Reader(b"\x7f\xff\xff\xff" + b"\x00" * 100).array_len()  # 2^31 elements in 100 bytes
    with pytest.raises(KafkaDecodeError):
        Reader(b"\x00\x00\x00\x10" + b"\x00" * 20).array_len(min_size=4)


def test_tagged_fields_skipped() -> None:
    r = Reader(bytes.fromhex("020002abcd0501ff") + b"x")
    assert r.tagged_fields() == 2
    assert r.raw(1) == b"x"
    with pytest.raises(KafkaDecodeError):
        Reader(bytes.fromhex("01007f")).tagged_fields()
