"""An HPACK (RFC 7541) *decoder* that survives not knowing the dynamic table.

One `HpackDecoder` per direction of a connection. It keeps the dynamic table exactly (insertion,
eviction by size, dynamic table size updates bounded by the peer's ``SETTINGS_HEADER_TABLE_SIZE``
and by `MAX_TABLE_SIZE`), and Huffman-decodes strings with the `hpack` package's table-driven
decoder.

What a passive observer needs on top: a capture that starts mid-connection, or that lost a header
block to a gap, does not know every entry of the table. The decoder then runs *incomplete*
(``complete`` False): the entries it does know are still right — they are the newest ones, inserted
after the state was lost, and eviction removes the unknown older ones first — and an index past them
decodes to a placeholder instead of failing the block:

- an indexed field whose entry is unknown becomes ``(placeholder_name(i), UNKNOWN_VALUE)``;
- a literal whose *name* is an unknown index becomes ``(placeholder_name(i), value)``;

and the block is reported ``desync``. Static-table references and literals always decode. A block
that is itself malformed (cut integer or string, bad Huffman code) returns what decoded before the
error, with ``error`` set; the decoder then drops its table and goes incomplete, since the rest of
the block may have inserted entries.
"""

from __future__ import annotations

from collections import deque

from hpack.huffman_table import decode_huffman
from hpack.table import HeaderTable

__all__ = [
    "DEFAULT_TABLE_SIZE",
    "MAX_TABLE_SIZE",
    "STATIC_TABLE",
    "UNKNOWN_VALUE",
    "DecodedBlock",
    "HpackDecoder",
    "placeholder_name",
]

Header = tuple[str, str]

DEFAULT_TABLE_SIZE = 4096
MAX_TABLE_SIZE = 64 << 10  # a peer may advertise more; we never keep more than this
_MAX_INT = 1 << 28  # larger integers are a malformed (or hostile) block
UNKNOWN_VALUE = "?"


def _text(b: bytes) -> str:
    try:
        return b.decode()
    except UnicodeDecodeError:
        return b.decode("latin-1")


STATIC_TABLE: tuple[Header, ...] = tuple((_text(n), _text(v)) for n, v in HeaderTable.STATIC_TABLE)
_STATIC_LEN = len(STATIC_TABLE)  # 61


def placeholder_name(index: int) -> str:
    """The name shown for a dynamic-table entry the decoder never saw (HPACK index ``index``)."""
    return f"<hpack-{index}>"


class DecodedBlock:
    """The result of decoding one header block."""

    __slots__ = ("desync", "error", "headers")

    def __init__(self, headers: list[Header], desync: bool, error: str | None) -> None:
        self.headers = headers
        self.desync = desync  # an index referred to an entry this decoder does not know
        self.error = error  # the block itself was malformed (decoding stopped there)


class _Malformed(Exception):
    pass


class HpackDecoder:
    """One direction's HPACK decoding state."""

    __slots__ = ("complete", "entries", "limit", "max_size", "size")

    def __init__(self, complete: bool = True) -> None:
        # newest first: entries[0] is HPACK index 62. (name, value, size)
        self.entries: deque[tuple[str, str, int]] = deque()
        self.size = 0
        self.max_size = DEFAULT_TABLE_SIZE
        self.limit = DEFAULT_TABLE_SIZE  # SETTINGS_HEADER_TABLE_SIZE of the decoding side
        self.complete = complete  # False: older entries exist that we never saw

    # ---------------------------------------------------------------- table state
    def set_limit(self, n: int) -> None:
        """The decoding endpoint advertised ``SETTINGS_HEADER_TABLE_SIZE = n``.

        The encoder must then announce a size within it; a table larger than the new limit is shrunk
        at once (the encoder may not use entries beyond it anyway).
        """
        self.limit = min(max(n, 0), MAX_TABLE_SIZE)
        if self.max_size > self.limit:
            self.max_size = self.limit
            self._evict(0)

    def lose_state(self) -> None:
        """The table may have changed in ways we did not see (a lost header block, a resync)."""
        self.entries.clear()
        self.size = 0
        self.complete = False

    def table_bytes(self) -> int:
        return self.size

    def _evict(self, room: int) -> None:
        entries = self.entries
        cap = self.max_size - room
        while entries and self.size > cap:
            self.size -= entries.pop()[2]

    def _insert(self, name: str, value: str, size: int) -> None:
        if size > self.max_size:  # larger than the whole table: empties it (RFC 7541 4.4)
            self.entries.clear()
            self.size = 0
            return
        self._evict(size)
        self.entries.appendleft((name, value, size))
        self.size += size

    def _lookup(self, index: int) -> tuple[str, str, bool]:
        """(name, value, known) for HPACK index ``index`` (1-based)."""
        if 0 < index <= _STATIC_LEN:
            n, v = STATIC_TABLE[index - 1]
            return n, v, True
        j = index - _STATIC_LEN - 1
        if 0 <= j < len(self.entries):
            n, v, _ = self.entries[j]
            return n, v, True
        if index == 0:
            raise _Malformed("index 0")
        # unknown: an entry older than what we saw (incomplete table), or a broken encoder
        return placeholder_name(index), UNKNOWN_VALUE, False

    # ---------------------------------------------------------------- decoding
    def decode(self, block: bytes) -> DecodedBlock:
        """Decode one complete header block. Never raises."""
        out: list[Header] = []
        desync = False
        pos = 0
        n = len(block)
        try:
            while pos < n:
                b = block[pos]
                if b & 0x80:  # indexed header field
                    index, pos = _int(block, pos, 7)
                    name, value, known = self._lookup(index)
                    if not known:
                        desync = True
                    out.append((name, value))
                elif b & 0x40 or not b & 0x20:  # a literal (with incremental indexing, or not)
                    indexing = bool(b & 0x40)
                    index, pos = _int(block, pos, 6 if indexing else 4)
                    if index:
                        name, _, known = self._lookup(index)
                        if not known:
                            desync = True
                        raw_name_len = len(name.encode()) if known else 0
                    else:
                        raw, pos = _string(block, pos)
                        name = _text(raw)
                        raw_name_len = len(raw)
                    raw_value, pos = _string(block, pos)
                    value = _text(raw_value)
                    out.append((name, value))
                    if indexing:
                        self._insert(name, value, 32 + raw_name_len + len(raw_value))
                else:  # 001xxxxx: dynamic table size update
                    size, pos = _int(block, pos, 5)
                    self.max_size = min(size, MAX_TABLE_SIZE)  # lenient: trust the encoder's size
                    self._evict(0)
        except _Malformed as e:
            self.lose_state()
            return DecodedBlock(out, True, str(e))
        if desync:
            self.complete = False
        return DecodedBlock(out, desync, None)


def _int(buf: bytes, pos: int, prefix: int) -> tuple[int, int]:
    mask = (1 << prefix) - 1
    v = buf[pos] & mask
    pos += 1
    if v < mask:
        return v, pos
    shift = 0
    n = len(buf)
    while True:
        if pos >= n:
            raise _Malformed("integer cut")
        b = buf[pos]
        pos += 1
        v += (b & 0x7F) << shift
        if v > _MAX_INT:
            raise _Malformed("integer too large")
        if not b & 0x80:
            return v, pos
        shift += 7


def _string(buf: bytes, pos: int) -> tuple[bytes, int]:
    if pos >= len(buf):
        raise _Malformed("string cut")
    huff = buf[pos] & 0x80
    length, pos = _int(buf, pos, 7)
    end = pos + length
    if end > len(buf):
        raise _Malformed("string cut")
    raw = buf[pos:end]
    if huff:
        try:
            raw = decode_huffman(raw)
        except Exception:
            raise _Malformed("bad huffman code") from None
    return raw, end
