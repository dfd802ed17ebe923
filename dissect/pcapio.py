"""Reading pcap and pcapng captures, gzip-compressed or not, in bounded memory.

Why not dpkt's readers: the per-packet cost of the reader is part of every packet's budget, and we
need precise control of what happens at a truncated end (read up to the cut, warn) and on a corrupt
record (stop there, keep what was read). Both formats are simple enough that a struct-based reader
over a sliding buffer is short, fast and exact. dpkt remains the library for writing captures.

A reader yields ``(ts_ns, linktype, frame, wire_len)`` tuples; ``frame`` is the captured bytes
(possibly shorter than ``wire_len`` when the capture's snap length cut it).
"""

from __future__ import annotations

import gzip
import os
import struct
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import BinaryIO

Packet = tuple[int, int, bytes, int]

_CHUNK = 1 << 20
_GZ_PIECE = 64 << 10
_MAX_WARNINGS = 20
_MAX_RECORD = 1 << 26  # 64 MiB: larger "records" mean the file is corrupt, not a jumbo frame

PCAP_MAGIC = {
    b"\xd4\xc3\xb2\xa1": ("<", 1000),  # little-endian, microseconds
    b"\xa1\xb2\xc3\xd4": (">", 1000),
    b"\x4d\x3c\xb2\xa1": ("<", 1),  # nanoseconds
    b"\xa1\xb2\x3c\x4d": (">", 1),
}
PCAPNG_SHB = b"\x0a\x0d\x0d\x0a"
_MIN_BLOCK = {6: 32, 2: 32, 3: 16, 1: 20, 0x0A0D0D0A: 28, 10: 20}  # smallest valid length per block type
DSB = 10  # Decryption Secrets Block: (secrets type, bytes), e.g. TLS key log lines
# (secrets type, secrets bytes) of a Decryption Secrets Block, handed over as the block is read
SecretsHook = Callable[[int, bytes], None]
GZIP_MAGIC = b"\x1f\x8b"


class CaptureError(Exception):
    """The file cannot be read as a capture. The message is one line that says what to do."""


@dataclass
class ReadStats:
    """What the reader saw, for progress reporting and the closing warning."""

    packets: int = 0
    warnings: list[str] = field(default_factory=list)
    secrets_blocks: int = 0  # pcapng Decryption Secrets Blocks met


class _Source:
    """A sliding window over a binary stream: `need(n)` makes n bytes available at `pos`."""

    __slots__ = ("_compressed", "_read", "buf", "eof", "f", "pos")

    def __init__(self, f: BinaryIO, head: bytes, compressed: bool) -> None:
        self.f = f
        # gzip: read1 in modest pieces, because when a gzip stream ends early GzipFile raises and
        # throws away what it decompressed in that call; each call must carry little
        self._read = f.read1 if compressed else f.read  # type: ignore[attr-defined]
        self._compressed = compressed
        self.buf = head
        self.pos = 0
        self.eof = False

    def need(self, n: int) -> bool:
        """True when ``n`` bytes are available from ``pos``; False only at end of input.

        Refills to at least 1 MiB at a time with one join, so the copy cost per byte stays constant.
        Data read before an exception (a cut gzip stream) is kept in the buffer.
        """
        if len(self.buf) - self.pos >= n:
            return True
        if self.eof:
            return False
        pieces = [self.buf[self.pos :]]
        have = len(pieces[0])
        want = max(n, _CHUNK)
        try:
            while have < want:
                chunk = self._read(_GZ_PIECE if self._compressed else want - have)
                if not chunk:
                    self.eof = True
                    break
                pieces.append(chunk)
                have += len(chunk)
        finally:
            self.buf = b"".join(pieces)
            self.pos = 0
        return have >= n

    def remaining(self) -> int:
        return len(self.buf) - self.pos


class CaptureReader:
    """Iterate the packets of a pcap/pcapng file (gzip-compressed or not).

    Errors about the file as a whole (missing, empty, not a capture, header cut) raise
    `CaptureError` from the constructor. Problems met later — a record cut at the end, a corrupt
    record — stop iteration with a warning in ``stats.warnings``; every packet before them is kept.

    ``on_secrets`` receives the contents of each pcapng Decryption Secrets Block when the reader
    passes it, before the packets that follow it (the first block is read by the constructor, so it
    must be given here).
    """

    def __init__(self, path: str | os.PathLike[str], on_secrets: SecretsHook | None = None) -> None:
        self.path = os.fspath(path)
        self.on_secrets = on_secrets
        try:
            self.size = os.path.getsize(self.path)
            raw = open(self.path, "rb")  # noqa: SIM115 - owned by the reader, closed in close()
        except FileNotFoundError:
            raise CaptureError(f"{self.path}: no such file") from None
        except IsADirectoryError:
            raise CaptureError(f"{self.path}: is a directory, not a capture file") from None
        except PermissionError:
            raise CaptureError(f"{self.path}: permission denied (try sudo, or copy the file)") from None
        self._raw = raw
        self.stats = ReadStats()
        if self.size == 0:
            raw.close()
            raise CaptureError(f"{self.path}: file is empty (0 bytes); nothing was captured")
        head = raw.read(4)
        stream: BinaryIO = raw
        self.compressed = head[:2] == GZIP_MAGIC
        if self.compressed:
            raw.seek(0)
            stream = gzip.GzipFile(fileobj=raw, mode="rb")  # type: ignore[assignment]
            try:
                head = stream.read(4)
            except (OSError, EOFError, zlib.error) as e:
                raw.close()
                raise CaptureError(f"{self.path}: gzip data is corrupt ({e})") from None
        self._stream = stream
        self._src = _Source(stream, head, self.compressed)
        if len(head) < 4:
            self.close()
            raise CaptureError(f"{self.path}: file is too short ({len(head)} bytes) to be a capture")
        if head in PCAP_MAGIC:
            self.format = "pcap"
            self._iter = self._pcap()
        elif head == PCAPNG_SHB:
            self.format = "pcapng"
            self._iter = self._pcapng()
        else:
            self.close()
            raise CaptureError(
                f"{self.path}: not a pcap or pcapng file (starts with 0x{head.hex()}); "
                "podshark reads pcap and pcapng, optionally gzip-compressed"
            )
        self._prime()

    def _prime(self) -> None:
        """Parse the file header now, so a cut or bogus header is an error, not a warning."""
        try:
            first = next(self._iter)
        except StopIteration:
            self._first: Packet | None = None
            return
        self._first = first

    # -- public ------------------------------------------------------------------------------

    def __iter__(self) -> Iterator[Packet]:
        # the format generators count packets themselves (stats.packets), cheaply
        if self._first is not None:
            first, self._first = self._first, None
            yield first
        yield from self._iter

    def position(self) -> int:
        """Bytes of the file consumed so far (compressed bytes for gzip), for progress bars."""
        try:
            return self._raw.tell()
        except (OSError, ValueError):
            return self.size

    def close(self) -> None:
        try:
            self._stream.close()
        finally:
            self._raw.close()

    def __enter__(self) -> CaptureReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- formats -----------------------------------------------------------------------------

    def _warn(self, msg: str) -> None:
        """Record a warning; a hostile file full of bad blocks gets a count, not a flood."""
        w = self.stats.warnings
        if len(w) < _MAX_WARNINGS:
            w.append(f"{self.path}: {msg}")
        elif len(w) == _MAX_WARNINGS:
            w.append(f"{self.path}: more warnings were suppressed")

    def _read_guard(self, n: int) -> bool:
        """`need` that turns a corrupt gzip stream into a warning instead of an exception."""
        try:
            return self._src.need(n)
        except EOFError:
            self._warn(
                f"compressed capture is cut short after {self.stats.packets} packets; read up to the cut"
            )
            self._src.eof = True
            return self._src.remaining() >= n
        except (OSError, zlib.error) as e:
            self._warn(f"compressed data is corrupt after {self.stats.packets} packets ({e}); stopped there")
            self._src.eof = True
            self._src.buf = b""
            self._src.pos = 0
            return False

    def _pcap(self) -> Iterator[Packet]:
        src = self._src
        if not self._read_guard(24):
            raise CaptureError(f"{self.path}: pcap file header is cut short ({src.remaining()} of 24 bytes)")
        endian, ns_per_tick = PCAP_MAGIC[src.buf[src.pos : src.pos + 4]]
        _maj, _min, _tz, _sig, snaplen, network = struct.unpack_from(endian + "HHiIII", src.buf, src.pos + 4)
        linktype = network & 0x0FFFFFFF
        src.pos += 24
        rec = struct.Struct(endian + "IIII")
        unpack = rec.unpack_from
        limit = max(snaplen, 262144) if snaplen else _MAX_RECORD
        limit = min(limit, _MAX_RECORD)
        sec_ns = 1_000_000_000
        stats = self.stats
        count = 0
        while True:
            # fast path: header and packet already in the buffer (all but one packet per MiB)
            buf = src.buf
            pos = src.pos
            if pos + 16 <= len(buf):
                sec, frac, incl, orig = unpack(buf, pos)
                end = pos + 16 + incl
                if end <= len(buf) and incl <= limit:
                    src.pos = end
                    count += 1
                    yield sec * sec_ns + frac * ns_per_tick, linktype, buf[pos + 16 : end], orig
                    continue
            stats.packets = count
            if not self._read_guard(16):
                if src.remaining():
                    self._warn(
                        f"capture is cut short inside a record header after {self.stats.packets} packets"
                    )
                return
            sec, frac, incl, orig = unpack(src.buf, src.pos)
            if incl > limit:
                self._warn(
                    f"corrupt record after {self.stats.packets} packets (captured length {incl} "
                    f"exceeds the snap length {snaplen}); stopped reading there"
                )
                return
            if not self._read_guard(16 + incl):
                self._warn(
                    f"capture is cut short inside packet {self.stats.packets + 1} "
                    f"({src.remaining() - 16} of {incl} bytes); read up to the cut"
                )
                return
            start = src.pos + 16
            src.pos = start + incl
            count += 1
            stats.packets = count
            yield sec * sec_ns + frac * ns_per_tick, linktype, src.buf[start : src.pos], orig

    def _pcapng(self) -> Iterator[Packet]:
        src = self._src
        endian = "<"
        # per interface: (linktype, ns numerator, ns denominator, offset ns): ts_ns = ts * num // den + off
        ifaces: list[tuple[int, int, int, int]] = []
        first = True
        while True:
            if not self._read_guard(12):
                if src.remaining():
                    if first:
                        raise CaptureError(f"{self.path}: pcapng section header is cut short")
                    self._warn(
                        f"capture is cut short inside a block header after {self.stats.packets} packets"
                    )
                return
            btype_raw = src.buf[src.pos : src.pos + 4]
            if btype_raw == PCAPNG_SHB:
                bom = src.buf[src.pos + 8 : src.pos + 12]
                if bom == b"\x4d\x3c\x2b\x1a":
                    endian = "<"
                elif bom == b"\x1a\x2b\x3c\x4d":
                    endian = ">"
                else:
                    msg = f"bad pcapng byte-order magic 0x{bom.hex()}"
                    if first:
                        raise CaptureError(f"{self.path}: {msg}; the file is corrupt")
                    self._warn(f"{msg} after {self.stats.packets} packets; stopped reading there")
                    return
                ifaces = []
            btype, blen = struct.unpack_from(endian + "II", src.buf, src.pos)
            if blen < 12 or blen % 4 or blen > _MAX_RECORD:
                msg = f"corrupt pcapng block (type 0x{btype:x}, length {blen})"
                if first:
                    raise CaptureError(f"{self.path}: {msg}; the file is corrupt")
                self._warn(f"{msg} after {self.stats.packets} packets; stopped reading there")
                return
            if not self._read_guard(blen):
                if first:
                    raise CaptureError(f"{self.path}: pcapng section header is cut short")
                self._warn(
                    f"capture is cut short inside a block after {self.stats.packets} packets; "
                    "read up to the cut"
                )
                return
            first = False
            b = src.buf
            p = src.pos
            src.pos = p + blen
            body = p + 8
            body_end = p + blen - 4
            if blen < _MIN_BLOCK.get(btype, 12):
                self._warn(f"pcapng block of type {btype} is too short ({blen} bytes); skipped")
                continue
            if btype == 6:  # Enhanced Packet Block
                iid, hi, lo, caplen, orig = struct.unpack_from(endian + "IIIII", b, body)
                if iid >= len(ifaces) or body + 20 + caplen > body_end:
                    self._warn(f"packet block for unknown interface {iid} or bad length skipped")
                    continue
                lt, num, den, tsoff = ifaces[iid]
                self.stats.packets += 1
                yield ((hi << 32) | lo) * num // den + tsoff, lt, b[body + 20 : body + 20 + caplen], orig
            elif btype == 1:  # Interface Description Block
                lt = struct.unpack_from(endian + "H", b, body)[0]
                num, den = 1000, 1  # default resolution: microseconds
                tsoff = 0
                for code, val in _options(b, body + 8, body_end, endian):
                    if code == 14 and len(val) == 8:  # if_tsoffset: seconds to add to every timestamp
                        tsoff = struct.unpack(endian + "q", val)[0] * 1_000_000_000
                    if code == 9 and val:  # if_tsresol
                        r = val[0]
                        if r & 0x80:
                            num, den = 1_000_000_000, 1 << (r & 0x7F)
                        else:
                            e = r & 0x7F
                            num, den = (10 ** (9 - e), 1) if e <= 9 else (1, 10 ** (e - 9))
                ifaces.append((lt, num, den, tsoff))
            elif btype == 3:  # Simple Packet Block: no timestamp, interface 0
                if not ifaces:
                    continue
                orig = struct.unpack_from(endian + "I", b, body)[0]
                caplen = min(orig, body_end - body - 4)
                self.stats.packets += 1
                yield 0, ifaces[0][0], b[body + 4 : body + 4 + caplen], orig
            elif btype == 2:  # obsolete Packet Block
                iid, _drops, hi, lo, caplen, orig = struct.unpack_from(endian + "HHIIII", b, body)
                if iid >= len(ifaces) or body + 20 + caplen > body_end:
                    continue
                lt, num, den, tsoff = ifaces[iid]
                self.stats.packets += 1
                yield ((hi << 32) | lo) * num // den + tsoff, lt, b[body + 20 : body + 20 + caplen], orig
            elif btype == DSB:
                self._secrets(b, body, body_end, endian)
            # every other block type (statistics, name resolution, custom…) carries no packets

    def _secrets(self, b: bytes, body: int, body_end: int, endian: str) -> None:
        """A Decryption Secrets Block: its secrets go to ``on_secrets`` (malformed: a warning)."""
        self.stats.secrets_blocks += 1
        stype, slen = struct.unpack_from(endian + "II", b, body)
        if body + 8 + slen > body_end:
            self._warn(f"decryption secrets block with a bad length ({slen} bytes) skipped")
            return
        if self.on_secrets is not None:
            self.on_secrets(stype, bytes(b[body + 8 : body + 8 + slen]))


def _options(b: bytes, p: int, end: int, endian: str) -> Iterator[tuple[int, bytes]]:
    """The (code, value) options of a pcapng block, stopping at opt_endofopt or a bad length."""
    while p + 4 <= end:
        code, ln = struct.unpack_from(endian + "HH", b, p)
        if code == 0:
            return
        p += 4
        if p + ln > end:
            return
        yield code, b[p : p + ln]
        p += (ln + 3) & ~3


def read_packets(path: str | os.PathLike[str]) -> Iterator[Packet]:
    """Convenience: iterate the packets of a file (warnings are dropped; use CaptureReader to see them)."""
    with CaptureReader(path) as r:
        yield from r


def sniff_bytes(data: bytes) -> str | None:
    """The format of a capture held in memory ("pcap", "pcapng", "gzip"), or None."""
    if data[:2] == GZIP_MAGIC:
        return "gzip"
    if data[:4] in PCAP_MAGIC:
        return "pcap"
    if data[:4] == PCAPNG_SHB:
        return "pcapng"
    return None


__all__ = ["CaptureError", "CaptureReader", "Packet", "ReadStats", "read_packets", "sniff_bytes"]
