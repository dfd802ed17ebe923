"""Undo HTTP Content-Encoding, protocol-neutral (HTTP/1.x now, HTTP/2 later), with bounded output.

`decode_body(raw, "gzip, br", limit)` undoes the codings in reverse order of application (the header
lists them in the order they were applied) and never materialises more than ``limit`` bytes of any
stage, so a decompression bomb costs at most ``limit`` bytes of memory per stage. Codings:
``gzip``/``x-gzip`` (multi-member too), ``deflate`` (zlib-wrapped, or raw deflate as some servers
send it), ``br`` (the ``brotli`` package), ``zstd`` (the ``zstandard`` package), ``identity``.

Nothing here raises on bad input: an unknown coding or a corrupt stream comes back as ``error`` with
the raw bytes kept as ``body``.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass

import brotli as _brotli
import zstandard as _zstd

__all__ = ["DecodeResult", "decode_body", "parse_encodings"]

_CHUNK = 64 << 10  # input fed to incremental decompressors per step


@dataclass(slots=True)
class DecodeResult:
    """The outcome of undoing a Content-Encoding.

    ``body``: decoded bytes (at most ``limit``), or the raw input when ``error`` is set.
    ``size``: ``len(body)``; when ``truncated`` the real decoded size is larger and unknown (counting it
    would mean decompressing a possible bomb to the end).
    ``truncated``: output was cut at ``limit``, or the input ended before the stream did.
    ``error``: why decoding failed (unknown coding, corrupt stream), else None.
    ``encodings``: the codings undone, in the order they were listed.
    """

    body: bytes
    size: int
    truncated: bool = False
    error: str | None = None
    encodings: tuple[str, ...] = ()


class _DecodeError(Exception):
    pass


def parse_encodings(encodings: str | None) -> list[str]:
    """``"gzip, br"`` -> ``["gzip", "br"]`` (lowercased; empty items and ``identity`` dropped)."""
    if not encodings:
        return []
    out = []
    for item in encodings.split(","):
        e = item.strip().lower()
        if e and e != "identity":
            out.append(e)
    return out


def _zlib_stream(data: bytes, wbits: int, limit: int, complete: bool) -> tuple[bytes, bool]:
    """Decompress one or more concatenated zlib-family members, output bounded by ``limit``."""
    out = bytearray()
    truncated = False
    while True:
        d = zlib.decompressobj(wbits)
        try:
            chunk = d.decompress(data, limit + 1 - len(out))
        except zlib.error as e:
            raise _DecodeError(f"{e}") from None
        out += chunk
        if len(out) > limit:
            del out[limit:]
            return bytes(out), True
        if not d.eof:
            if d.unconsumed_tail:  # only possible when output hit max_length; handled above
                return bytes(out), True
            try:  # flush what is buffered; input ended before the stream end
                out += d.flush(limit + 1 - len(out))
            except zlib.error as e:  # pragma: no cover - flush of a valid prefix does not fail
                raise _DecodeError(f"{e}") from None
            if len(out) > limit:
                del out[limit:]
            if complete:
                raise _DecodeError("stream ended early")
            return bytes(out), True
        data = d.unused_data
        # gzip may carry several members; anything else after the stream end is ignored
        if wbits != 31 or not data or data[:2] != b"\x1f\x8b":
            return bytes(out), truncated


def _gzip(data: bytes, limit: int, complete: bool) -> tuple[bytes, bool]:
    return _zlib_stream(data, 31, limit, complete)


def _deflate(data: bytes, limit: int, complete: bool) -> tuple[bytes, bool]:
    # RFC 9110 "deflate" is zlib-wrapped; some servers send raw deflate. A zlib header is CMF/FLG with
    # CM=8 and (CMF*256+FLG) % 31 == 0.
    if len(data) >= 2 and data[0] & 0x0F == 8 and (data[0] << 8 | data[1]) % 31 == 0:
        try:
            return _zlib_stream(data, 15, limit, complete)
        except _DecodeError:
            pass
    return _zlib_stream(data, -15, limit, complete)


def _br(data: bytes, limit: int, complete: bool) -> tuple[bytes, bool]:
    d = _brotli.Decompressor()
    out = bytearray()
    try:
        try:
            chunk = d.process(data, output_buffer_limit=limit + 1)
            out += chunk
            while len(out) <= limit and not d.is_finished() and not d.can_accept_more_data():
                out += d.process(b"", output_buffer_limit=limit + 1 - len(out))
        except TypeError:  # pragma: no cover - brotli < 1.2 has no output limit: feed small pieces
            step = 1024
            for i in range(0, len(data), step):
                out += d.process(data[i : i + step])
                if len(out) > limit:
                    break
        finished = d.is_finished()
    except _brotli.error as e:
        raise _DecodeError(f"br: {e}") from None
    if len(out) > limit:
        del out[limit:]
        return bytes(out), True
    if not finished:
        if complete:
            raise _DecodeError("br: stream ended early")
        return bytes(out), True
    return bytes(out), False


def _zstd_decode(data: bytes, limit: int, complete: bool) -> tuple[bytes, bool]:
    out = bytearray()
    try:
        reader = _zstd.ZstdDecompressor().stream_reader(data, read_across_frames=True)
        while len(out) <= limit:
            chunk = reader.read(min(_CHUNK, limit + 1 - len(out)))
            if not chunk:
                break
            out += chunk
    except _zstd.ZstdError as e:
        raise _DecodeError(f"zstd: {e}") from None
    if len(out) > limit:
        del out[limit:]
        return bytes(out), True
    # zstandard's reader does not tell a cut stream from a finished one; a frame header check is the
    # best available: empty output from non-empty input means nothing decodable was there.
    if data and not out and data[:4] != b"\x28\xb5\x2f\xfd":
        raise _DecodeError("zstd: not a zstd frame")
    return bytes(out), not complete


_DECODERS: dict[str, Callable[[bytes, int, bool], tuple[bytes, bool]]] = {
    "gzip": _gzip,
    "x-gzip": _gzip,
    "deflate": _deflate,
    "br": _br,
    "zstd": _zstd_decode,
}


def decode_body(raw: bytes, encodings: str | None, limit: int, complete: bool = True) -> DecodeResult:
    """Undo ``encodings`` (a Content-Encoding header value) on ``raw``, keeping at most ``limit`` bytes.

    ``complete=False`` says ``raw`` is only a prefix of the body (cut at a size limit or by a gap): a
    stream that stops early is then reported as ``truncated``, not as an error.
    """
    codings = parse_encodings(encodings)
    if not codings:
        body = raw[:limit] if len(raw) > limit else raw
        return DecodeResult(bytes(body), len(body), len(raw) > limit or not complete)
    for c in codings:
        if c not in _DECODERS:
            return DecodeResult(raw, len(raw), not complete, f"unsupported content-encoding: {c}", ())
    data = bytes(raw)
    truncated = not complete
    try:
        for c in reversed(codings):
            data, cut = _DECODERS[c](data, limit, not truncated)
            truncated = truncated or cut
    except _DecodeError as e:
        return DecodeResult(raw, len(raw), not complete, str(e), ())
    except Exception as e:  # a decompressor library misbehaving must not take the dissector down
        return DecodeResult(raw, len(raw), not complete, f"{type(e).__name__}: {e}", ())
    return DecodeResult(data, len(data), truncated, None, tuple(codings))
