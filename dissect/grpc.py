"""gRPC over HTTP/2: a finished ``http2`` call whose content-type is gRPC becomes a ``grpc`` call.

The HTTP/2 dissector calls `apply` on every stream `is_grpc` accepts, right before emitting it. The
call then has, per the design's summary table: ``protocol`` "grpc", ``method`` "POST" (unchanged),
``target`` the ``:path`` (``/package.Service/Method``), ``status`` the ``grpc-status`` (int) from the
response trailers — or from the response headers of a trailers-only response — and None when no
``grpc-status`` arrived. ``info`` gets:

- ``http_status``: the ``:status`` (int) the HTTP/2 call had;
- ``grpc_message``: ``grpc-message`` percent-decoded (the spec's encoding of UTF-8), when present and
  not empty (grpc-core sends an empty one with every OK);
- ``grpc_service`` / ``grpc_method``: the two halves of a well-formed ``/pkg.Service/Method`` path;
- ``grpc_encoding``: ``{"request": "gzip", "response": "gzip"}``, the ``grpc-encoding`` of each
  direction that declared a compression (identity is left out; no key at all when neither did);
- ``messages``: ``{"request": [...], "response": [...]}``, one small dict per length-prefixed
  message, in order: ``{"compressed": bool, "length": <wire length>, "fields": <protobuf tree, see
  dissect.protobuf, or None>}`` plus ``"error"`` when the message could not be decoded and
  ``"truncated": True`` when the body ended inside it (cut at ``Limits.max_body``, a gap, a reset);
  a message whose 5-byte prefix itself was cut has ``"length": None``;
- ``message_counts``: ``{"request": n, "response": m}``: every message seen, also those beyond the
  listing bound.

Content-types (`is_grpc`): ``application/grpc`` and ``application/grpc+<codec>`` (proto, json, …),
and gRPC-Web: ``application/grpc-web[+codec]`` and ``application/grpc-web-text[+codec]`` (base64
bodies). Messages are decoded as protobuf for no codec or ``+proto``, shown as text for ``+json``,
and left undecoded (with an ``error`` naming the codec) otherwise. gRPC-Web carries its trailers as
a body frame with flag bit 0x80: those are parsed and appended to ``response.trailers``, where
native gRPC has them, and do not count as messages.

Compressed messages (flag bit 0) are undone with the direction's ``grpc-encoding`` (gzip, deflate;
others such as snappy leave an ``error``) by `dissect.content_encoding`, output bounded. All work
is bounded: at most `MAX_MESSAGES` listed per direction, decompressed bytes and protobuf fields per
call from a fixed budget; messages past a budget are listed with ``"error": "not decoded: ..."``.
`apply` never raises: anything unexpected becomes the flag ``parse-error``.
"""

from __future__ import annotations

import base64
import binascii
import re
import struct
from typing import Any
from urllib.parse import unquote

from dissect.base import Limits
from dissect.content_encoding import decode_body, parse_encodings
from dissect.model import Call, Flag, Header
from dissect.protobuf import MAX_TEXT_CHARS
from dissect.protobuf import decode as decode_protobuf

__all__ = ["MAX_FIELDS_PER_CALL", "MAX_MESSAGES", "apply", "is_grpc"]

MAX_MESSAGES = 1000  # messages listed per direction (all are counted)
MAX_FIELDS_PER_CALL = 20_000  # protobuf fields decoded across all messages of one call
_CT = re.compile(r"^application/grpc(-web(-text)?)?(\+([a-z0-9._-]+))?$")
_GRPC_STATUS = re.compile(r"^[0-9]{1,10}$")
_PATH = re.compile(r"^/([^/?#]+)/([^/?#]+)$")
_prefix = struct.Struct("!BI").unpack_from


def is_grpc(content_type: str | None) -> bool:
    """True for gRPC and gRPC-Web content-types (parameters after ``;`` and case are ignored)."""
    return _parse_ct(content_type) is not None


def _parse_ct(content_type: str | None) -> tuple[bool, bool, str] | None:
    """``(web, text, codec)`` of a gRPC content-type, or None for anything else."""
    if not content_type:
        return None
    m = _CT.match(content_type.split(";", 1)[0].strip().lower())
    if m is None:
        return None
    return m.group(1) is not None, m.group(2) is not None, m.group(4) or "proto"


def apply(call: Call, limits: Limits) -> None:
    """Turn a finished HTTP/2 call into a gRPC call, in place. Never raises."""
    try:
        _apply(call, limits)
    except Exception as e:  # pragma: no cover - defensive: dissectors never raise on input
        call.flag(Flag.PARSE_ERROR)
        call.info["grpc_error"] = f"{type(e).__name__}: {e}"


def _header(headers: list[Header], name: str) -> str | None:
    for k, v in headers:
        if k.lower() == name:
            return v
    return None


def _apply(call: Call, limits: Limits) -> None:
    req, resp = call.request, call.response
    info = dict(call.info)
    call.protocol = "grpc"

    http_status = call.status
    if resp is not None:
        raw = _header(resp.headers, ":status")
        if raw is not None and raw.strip().isdigit():
            http_status = int(raw.strip())
    info["http_status"] = http_status

    if call.target:
        m = _PATH.match(call.target)
        if m:
            info["grpc_service"], info["grpc_method"] = m.group(1), m.group(2)

    ct = None
    for msg in (req, resp):
        if msg is not None and ct is None:
            ct = _parse_ct(_header(msg.headers, "content-type"))
    web, text, codec = ct if ct is not None else (False, False, "proto")

    budget = _Budget(limits)
    messages: dict[str, list[dict[str, Any]]] = {}
    counts: dict[str, int] = {}
    encodings: dict[str, str] = {}
    for side, msg in (("request", req), ("response", resp)):
        if msg is None:
            messages[side], counts[side] = [], 0
            continue
        enc = _header(msg.headers, "grpc-encoding")
        enc_name = ",".join(parse_encodings(enc)) if enc else ""
        if enc_name:
            encodings[side] = enc_name
        body = msg.body
        if text:
            body, bad = _unbase64(body, limits.max_body)
            if bad:
                call.flag(Flag.PARSE_ERROR)
        listed, count, web_trailers, cut_inside = _split(body, web, enc_name, codec, budget)
        messages[side], counts[side] = listed, count
        if web_trailers and side == "response":
            msg.trailers = [*msg.trailers, *web_trailers]
        if cut_inside:
            call.flag(Flag.TRUNCATED)
    if encodings:
        info["grpc_encoding"] = encodings

    status = None
    grpc_message = None
    if resp is not None:
        status_raw = _header(resp.trailers, "grpc-status")
        grpc_message = _header(resp.trailers, "grpc-message")
        if status_raw is None:  # trailers-only response: everything is in the one HEADERS block
            status_raw = _header(resp.headers, "grpc-status")
            if grpc_message is None:
                grpc_message = _header(resp.headers, "grpc-message")
        if status_raw is not None:
            s = status_raw.strip()
            if _GRPC_STATUS.match(s):
                status = int(s)
            else:
                info["grpc_status_raw"] = status_raw[:256]
                call.flag(Flag.PARSE_ERROR)
    call.status = status
    if grpc_message:  # grpc-core sends an empty one with every OK status: noise, not a message
        info["grpc_message"] = unquote(grpc_message, errors="replace")

    info["messages"] = messages
    info["message_counts"] = counts
    call.info = info


class _Budget:
    """What one call may spend on decoding: decompressed bytes and protobuf fields."""

    __slots__ = ("bytes", "fields", "per_message")

    def __init__(self, limits: Limits) -> None:
        self.per_message = max(limits.max_body, 0)
        self.bytes = self.per_message * 2  # both directions' worth of decoded payload
        self.fields = MAX_FIELDS_PER_CALL


def _split(
    body: bytes, web: bool, encoding: str, codec: str, budget: _Budget
) -> tuple[list[dict[str, Any]], int, list[Header], bool]:
    """Walk the length-prefixed messages of one direction's body.

    Returns (listed messages, count, gRPC-Web trailers, whether the body ended inside a message).
    """
    listed: list[dict[str, Any]] = []
    trailers: list[Header] = []
    count = 0
    pos, end = 0, len(body)
    while pos < end:
        if end - pos < 5:  # the prefix itself is cut
            count += 1
            if len(listed) < MAX_MESSAGES:
                listed.append(
                    {"compressed": bool(body[pos] & 1), "length": None, "fields": None, "truncated": True}
                )
            return listed, count, trailers, True
        flag, length = _prefix(body, pos)
        start = pos + 5
        stop = start + length
        payload = body[start:stop]
        partial = stop > end
        pos = stop
        if web and flag & 0x80:  # gRPC-Web trailers frame: HTTP/1-style header lines
            trailers.extend(_web_trailers(payload))
            continue
        count += 1
        if len(listed) >= MAX_MESSAGES:
            continue
        listed.append(_message(flag, length, payload, partial, encoding, codec, budget))
    return listed, count, trailers, pos > end


def _message(
    flag: int, length: int, payload: bytes, partial: bool, encoding: str, codec: str, budget: _Budget
) -> dict[str, Any]:
    compressed = bool(flag & 1)
    out: dict[str, Any] = {"compressed": compressed, "length": length, "fields": None}
    if partial:
        out["truncated"] = True
        return out
    if flag & ~1:
        out["error"] = f"unknown flag byte 0x{flag:02x}"
        return out
    if budget.bytes <= 0 or budget.fields <= 0:
        out["error"] = "not decoded: per-call decoding budget spent"
        return out
    data = payload
    if compressed:
        if not encoding:
            out["error"] = "compressed flag set but no grpc-encoding"
            return out
        res = decode_body(payload, encoding, min(budget.bytes, budget.per_message))
        if res.error is not None:
            out["error"] = f"decompression failed: {res.error}"
            return out
        if res.truncated:
            out["error"] = "not decoded: decompressed message exceeds the size limit"
            budget.bytes = 0
            return out
        data = res.body
        out["decompressed_length"] = len(data)
    budget.bytes -= len(data)
    if codec == "proto":
        fields = decode_protobuf(data, max_fields=min(budget.fields, 10_000))
        if fields is None:
            out["error"] = "not a protobuf message"
        else:
            out["fields"] = fields
            budget.fields -= _size(fields)
    elif codec == "json":
        text = data.decode("utf-8", errors="replace")
        out["text"] = text[:MAX_TEXT_CHARS]
    else:
        out["error"] = f"codec {codec!r} is not decoded"
    return out


def _size(fields: list[dict[str, Any]]) -> int:
    """Fields in a decoded tree (iterative, bounded by the tree itself)."""
    n = 0
    stack = [fields]
    while stack:
        level = stack.pop()
        n += len(level)
        for f in level:
            if f.get("type") == "message":
                stack.append(f["value"])
    return n


def _web_trailers(payload: bytes) -> list[Header]:
    out: list[Header] = []
    for line in payload.decode("latin-1").split("\n"):
        name, sep, value = line.rstrip("\r").partition(":")
        if sep and name.strip():
            out.append((name.strip().lower(), value.strip()))
        if len(out) >= 256:
            break
    return out


def _unbase64(body: bytes, limit: int) -> tuple[bytes, bool]:
    """gRPC-Web-Text: the body is base64, possibly several padded chunks back to back.

    Returns the decoded bytes (at most ``limit``) and whether anything could not be decoded."""
    out = bytearray()
    clean = re.sub(rb"[^A-Za-z0-9+/=]", b"", body)
    for chunk in re.findall(rb"[A-Za-z0-9+/]+=*", clean):
        usable = len(chunk) - len(chunk) % 4 if not chunk.endswith(b"=") else len(chunk)
        try:
            out += base64.b64decode(chunk[:usable])
        except (binascii.Error, ValueError):
            return bytes(out[:limit]), True
        if usable != len(chunk) or len(out) > limit:
            return bytes(out[:limit]), True
    return bytes(out), False
