"""The inventory service's two protobuf messages, encoded by hand (no protoc step, no generated code).

The schema, as it would be written in ``demo.proto``:

    package demo;
    message StockRequest { string sku = 1; }
    message Stock        { string sku = 1; int32 quantity = 2; string warehouse = 3; }
    service Inventory {
      rpc GetStock (StockRequest) returns (Stock);
      rpc WatchStock (StockRequest) returns (stream Stock);
    }

These are real protobuf bytes (tag = field << 3 | wire type, varints, length-delimited strings), so
podshark's schema-less decoder shows fields 1, 2, 3 with the values sent. Decoding is what a server
does with bytes from the network: bounded, skipping unknown fields as protobuf requires, and any
malformed input raises `WireError` (the server answers INVALID_ARGUMENT), never another exception.
"""

from __future__ import annotations

from dataclasses import dataclass

MAX_MESSAGE = 64 * 1024  # the demo's messages are tiny; anything bigger is refused
_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5


class WireError(ValueError):
    """Bytes that are not a valid message of the demo schema."""


@dataclass(frozen=True, slots=True)
class Stock:
    sku: str
    quantity: int
    warehouse: str


def _varint(value: int) -> bytes:
    if value < 0:
        value &= (1 << 64) - 1  # int32 negatives are sign-extended to 10 bytes, as protobuf does
    out = bytearray()
    while True:
        b = value & 0x7F
        value >>= 7
        if value:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _read_varint(buf: bytes, off: int) -> tuple[int, int]:
    result = shift = 0
    for i in range(10):
        if off + i >= len(buf):
            raise WireError("varint runs past the end of the message")
        b = buf[off + i]
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, off + i + 1
        shift += 7
    raise WireError("varint longer than 10 bytes")


def _string_field(number: int, value: str) -> bytes:
    raw = value.encode()
    return _varint(number << 3 | _LEN) + _varint(len(raw)) + raw


def _fields(buf: bytes) -> dict[int, int | bytes]:
    """Last value of each field (protobuf's rule for repeated scalars), unknown wire types refused."""
    if len(buf) > MAX_MESSAGE:
        raise WireError(f"message of {len(buf)} bytes is larger than {MAX_MESSAGE}")
    out: dict[int, int | bytes] = {}
    off = 0
    while off < len(buf):
        key, off = _read_varint(buf, off)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise WireError("field number 0")
        if wire == _VARINT:
            value, off = _read_varint(buf, off)
            out[number] = value
        elif wire == _LEN:
            n, off = _read_varint(buf, off)
            if off + n > len(buf):
                raise WireError(f"field {number}: {n} bytes announced, {len(buf) - off} left")
            out[number] = bytes(buf[off : off + n])
            off += n
        elif wire in (_I64, _I32):
            size = 8 if wire == _I64 else 4
            if off + size > len(buf):
                raise WireError(f"field {number}: fixed value cut off")
            out[number] = int.from_bytes(buf[off : off + size], "little")
            off += size
        else:
            raise WireError(f"field {number}: unsupported wire type {wire}")
    return out


def _text(fields: dict[int, int | bytes], number: int) -> str:
    value = fields.get(number, b"")
    if not isinstance(value, bytes):
        raise WireError(f"field {number} should be a string")
    try:
        return value.decode()
    except UnicodeDecodeError as e:
        raise WireError(f"field {number} is not UTF-8") from e


def encode_stock_request(sku: str) -> bytes:
    return _string_field(1, sku)


def decode_stock_request(buf: bytes) -> str:
    """The SKU asked for."""
    return _text(_fields(buf), 1)


def encode_stock(stock: Stock) -> bytes:
    return (
        _string_field(1, stock.sku)
        + _varint(2 << 3 | _VARINT)
        + _varint(stock.quantity)
        + _string_field(3, stock.warehouse)
    )


def decode_stock(buf: bytes) -> Stock:
    fields = _fields(buf)
    qty = fields.get(2, 0)
    if not isinstance(qty, int):
        raise WireError("field 2 should be a varint")
    qty &= 0xFFFFFFFF
    if qty >= 1 << 31:
        qty -= 1 << 32  # int32: the low 32 bits, two's complement
    return Stock(sku=_text(fields, 1), quantity=qty, warehouse=_text(fields, 3))
