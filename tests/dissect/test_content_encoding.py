"""Content-Encoding decoding with real compressors, bounded output, corrupt streams."""

from __future__ import annotations

import gzip
import zlib

import brotli
import pytest
import zstandard
from hypothesis import given
from hypothesis import strategies as st

from dissect.content_encoding import decode_body, parse_encodings

TEXT = b"The quick brown fox jumps over the lazy dog. " * 40


def raw_deflate(data: bytes) -> bytes:
    c = zlib.compressobj(6, zlib.DEFLATED, -15)
    return c.compress(data) + c.flush()


ENCODERS = {
    "gzip": gzip.compress,
    "x-gzip": gzip.compress,
    "deflate": zlib.compress,
    "br": brotli.compress,
    "zstd": lambda b: zstandard.ZstdCompressor().compress(b),
}


@pytest.mark.parametrize("name", sorted(ENCODERS))
def test_each_coding_round_trips(name: str) -> None:
    res = decode_body(ENCODERS[name](TEXT), name, 1 << 20)
    assert res.error is None
    assert res.body == TEXT
    assert res.size == len(TEXT)
    assert res.truncated is False
    assert res.encodings == (name,)


def test_raw_deflate_is_accepted() -> None:
    res = decode_body(raw_deflate(TEXT), "deflate", 1 << 20)
    assert (res.body, res.error, res.truncated) == (TEXT, None, False)


def test_coding_names_are_case_insensitive_and_trimmed() -> None:
    res = decode_body(gzip.compress(b"hi"), "  GZip ", 100)
    assert res.body == b"hi"
    assert parse_encodings(" gzip , identity,BR ") == ["gzip", "br"]
    assert parse_encodings(None) == []


def test_stacked_codings_are_undone_in_reverse_order() -> None:
    # "gzip, br": gzip was applied first, then br; decoding undoes br first
    wire = brotli.compress(gzip.compress(TEXT))
    res = decode_body(wire, "gzip, br", 1 << 20)
    assert res.error is None
    assert res.body == TEXT
    assert res.encodings == ("gzip", "br")
    # the wrong order must fail, not silently produce garbage
    assert decode_body(wire, "br, gzip", 1 << 20).error is not None


def test_identity_and_empty() -> None:
    assert decode_body(b"abc", "identity", 10).body == b"abc"
    assert decode_body(b"abc", None, 10).body == b"abc"
    cut = decode_body(b"abcdef", None, 4)
    assert (cut.body, cut.size, cut.truncated) == (b"abcd", 4, True)


def test_multi_member_gzip() -> None:
    wire = gzip.compress(b"hello ") + gzip.compress(b"world")
    assert decode_body(wire, "gzip", 100).body == b"hello world"


def test_multi_frame_zstd() -> None:
    c = zstandard.ZstdCompressor()
    assert decode_body(c.compress(b"ab") + c.compress(b"cd"), "zstd", 100).body == b"abcd"


@pytest.mark.parametrize("name", ["gzip", "deflate", "br", "zstd"])
def test_decompression_bomb_is_bounded(name: str) -> None:
    bomb = ENCODERS[name](b"\0" * (32 << 20))  # 32 MiB of zeros, a few KiB on the wire
    assert len(bomb) < 64 << 10
    res = decode_body(bomb, name, 4096)
    assert res.error is None
    assert res.truncated is True
    assert res.size == 4096
    assert res.body == b"\0" * 4096


def test_stacked_bomb_is_bounded_at_every_stage() -> None:
    bomb = brotli.compress(gzip.compress(b"\0" * (16 << 20)))
    res = decode_body(bomb, "gzip, br", 1000)
    assert (res.size, res.truncated, res.error) == (1000, True, None)


@pytest.mark.parametrize("name", ["gzip", "deflate", "br", "zstd"])
def test_corrupt_stream_reports_error_and_keeps_raw(name: str) -> None:
    raw = b"this is definitely not compressed data"
    res = decode_body(raw, name, 1 << 20)
    assert res.error is not None
    assert res.body == raw
    assert res.size == len(raw)
    assert res.encodings == ()


def test_unknown_coding_is_an_error_with_raw_kept() -> None:
    res = decode_body(b"xyz", "compress", 100)
    assert res.error == "unsupported content-encoding: compress"
    assert res.body == b"xyz"


@pytest.mark.parametrize("name", ["gzip", "deflate", "br"])
def test_cut_stream(name: str) -> None:
    wire = ENCODERS[name](TEXT)
    cut = wire[: len(wire) // 2]
    # a complete body that stops early is corrupt
    assert decode_body(cut, name, 1 << 20).error is not None
    # a body known to be a prefix decodes to a prefix, flagged truncated
    res = decode_body(cut, name, 1 << 20, complete=False)
    assert res.error is None
    assert res.truncated is True
    assert TEXT.startswith(res.body)


def test_trailing_garbage_after_gzip_is_ignored() -> None:
    assert decode_body(gzip.compress(b"ok") + b"\0\0junk", "gzip", 100).body == b"ok"


@given(st.binary(max_size=2000), st.sampled_from(sorted(ENCODERS)), st.integers(0, 3000))
def test_round_trip_and_limit(data: bytes, name: str, limit: int) -> None:
    res = decode_body(ENCODERS[name](data), name, limit)
    assert res.error is None
    assert res.body == data[:limit]
    assert res.truncated == (len(data) > limit)


@given(st.binary(max_size=500), st.sampled_from(["gzip", "deflate", "br", "zstd", "gzip, br", "x"]))
def test_garbage_never_raises(data: bytes, name: str) -> None:
    res = decode_body(data, name, 1000)
    assert len(res.body) <= max(1000, len(data))
    assert res.error is not None or len(res.body) <= 1000
