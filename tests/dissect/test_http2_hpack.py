"""HPACK decoder against the `hpack` package's encoder: exact tables, eviction, size updates, Huffman,
and partial decoding when the dynamic table is unknown."""

from __future__ import annotations

import hpack
from hypothesis import given
from hypothesis import strategies as st

from dissect.http2.hpack import UNKNOWN_VALUE, HpackDecoder, placeholder_name

HEADERS = [
    [(":method", "GET"), (":path", "/a"), ("user-agent", "curl/8"), ("x-id", "1")],
    [(":method", "GET"), (":path", "/b"), ("user-agent", "curl/8"), ("x-id", "2")],
    [(":status", "200"), ("content-type", "application/json"), ("x-long", "v" * 200)],
    [(":method", "POST"), (":path", "/a"), ("user-agent", "curl/8"), ("cookie", "s=" + "c" * 90)],
]


def test_round_trip_with_dynamic_table_and_huffman() -> None:
    for huffman in (True, False):
        enc = hpack.Encoder()
        dec = HpackDecoder()
        for block in HEADERS * 3:
            res = dec.decode(enc.encode(block, huffman=huffman))
            assert res.headers == block and not res.desync and res.error is None
        assert dec.entries  # the table was used


def test_eviction_and_size_update_match_the_encoder() -> None:
    enc = hpack.Encoder()
    enc.header_table_size = 150  # emits a dynamic table size update in the next block
    dec = HpackDecoder()
    ref = hpack.Decoder()
    for i in range(30):
        block = [("x-a", f"value-{i % 4}"), ("x-b", "b" * (i % 7)), (":path", f"/{i % 3}")]
        raw = enc.encode(block)
        assert dec.decode(raw).headers == ref.decode(raw) == block
        assert dec.size <= 150 and dec.max_size == 150
    enc.header_table_size = 0
    raw = enc.encode([("x-a", "value-1")])
    assert dec.decode(raw).headers == [("x-a", "value-1")]
    assert dec.size == 0 and not dec.entries


def test_entry_larger_than_the_table_empties_it() -> None:
    enc = hpack.Encoder()
    enc.header_table_size = 64
    dec = HpackDecoder()
    assert dec.decode(enc.encode([("b", "c")])).headers == [("b", "c")]
    assert len(dec.entries) == 1
    res = dec.decode(enc.encode([("a", "x" * 100), ("b", "c")]))
    assert res.headers == [("a", "x" * 100), ("b", "c")] and not res.desync


def test_set_limit_shrinks_the_table() -> None:
    enc = hpack.Encoder()
    dec = HpackDecoder()
    dec.decode(enc.encode(HEADERS[2]))
    assert dec.size > 0
    dec.set_limit(0)
    assert dec.size == 0 and dec.max_size == 0
    dec.set_limit(1 << 30)
    assert dec.limit == 64 << 10


def test_unknown_dynamic_entries_decode_as_placeholders() -> None:
    enc = hpack.Encoder()
    enc.encode(HEADERS[0])  # the observer never sees this block
    raw = enc.encode(HEADERS[1] + [("x-new", "fresh")])
    dec = HpackDecoder(complete=False)
    res = dec.decode(raw)
    assert res.desync and res.error is None
    names = [n for n, _ in res.headers]
    assert res.headers[0] == (":method", "GET")  # static
    assert ("x-new", "fresh") in res.headers  # literal
    assert any(n.startswith("<hpack-") for n in names)
    # user-agent was indexed by the unseen block: its entry is unknown
    assert (placeholder_name(63), UNKNOWN_VALUE) in res.headers or ("user-agent", "curl/8") not in res.headers
    # entries learnt after the loss are right: the same block again decodes its new entries exactly
    res2 = dec.decode(enc.encode([("x-new", "fresh"), ("x-id", "2")]))
    assert res2.headers[0] == ("x-new", "fresh")
    # x-id's *name* came from the unseen block, so its re-used entry still has a placeholder name
    assert res2.headers[1][1] == "2" and res2.headers[1][0].startswith("<hpack-")


def test_malformed_blocks_return_what_decoded() -> None:
    dec = HpackDecoder()
    enc = hpack.Encoder()
    good = enc.encode([(":method", "GET"), ("x", "y")])
    res = dec.decode(good + b"\x40\x85abc")  # a literal whose string is cut
    assert res.headers[:2] == [(":method", "GET"), ("x", "y")]
    assert res.error is not None and res.desync and not dec.complete
    assert dec.decode(b"\x80").error is not None  # index 0
    assert dec.decode(b"\xff\xff\xff\xff\xff\xff\xff").error is not None  # integer too large
    assert dec.decode(b"\x00\x81\xff\x00").error is not None  # bad huffman (EOS)


@given(st.binary(max_size=300))
def test_random_blocks_never_raise(data: bytes) -> None:
    dec = HpackDecoder()
    dec.decode(data)
    dec.decode(data)
    assert dec.size <= dec.max_size <= 64 << 10
