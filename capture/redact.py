"""Redaction on the node, before anything leaves it: credentials in calls and in spooled frames.

What is masked (names and keys case-insensitive, every repeat):

- headers and trailers named in ``headers`` (default Authorization, Cookie, Set-Cookie,
  Proxy-Authorization, X-Api-Key), in requests and responses, HTTP/1, HTTP/2 and gRPC metadata
  alike: the value becomes the mask, the header stays (the user sees that it was sent);
- values under the keys in ``json_keys`` (default password, token, secret; exact key names):
  in JSON bodies at any depth (objects inside arrays too), in
  ``application/x-www-form-urlencoded`` bodies, in the query string of the target (and of HTTP/2's
  ``:path`` and the URL headers Location, Content-Location and Referer), in JSON text held in JSON
  strings (an escaped document inside a document), and in JSON text inside ``info`` (Kafka record
  values, say).

A JSON body is parsed, masked and re-serialised compactly (only when something was masked; the
bytes are untouched otherwise). Every value under a configured key becomes the mask string,
whatever its type: an array or object under ``"secret"`` is secret too. ``body_size`` and
``wire_size`` keep describing the original message as it was on the wire. A body that is not JSON,
or is JSON cut short (a truncated body, a gap), is still scanned byte by byte for ``"key": value``
pairs, so a truncated body cannot leak a secret; a value that is an object or array in such a body
is not masked (its extent is unknown), nor are keys written with ``\\u`` escapes. Multipart bodies
are scanned the same way: JSON pairs inside are masked, a form field named ``password`` is not.
Names match case-insensitively in their ASCII letters; other letters match only in lower case.

Raw frames (`Redactor.frame`), for the packet spool and pcap export, are masked in place with ``*``
bytes, the length unchanged so TCP sequence numbers stay valid (checksums are left stale; Wireshark
reports them and carries on): in the TCP payload of Ethernet (VLAN-tagged too), Linux cooked and raw
IPv4/IPv6 frames, the values of configured HTTP/1 header lines, of ``"key": value`` JSON pairs and
of ``key=value`` query/form pairs (keys as written: a percent-encoded key name is recognised in
calls, not in raw frames). The limits, honestly: a frame is masked on its own, so a header
line or JSON pair split across two TCP segments keeps the part in the second segment (the first
segment's part is masked up to its end); HTTP/2 headers are HPACK-coded and compressed bodies are
compressed, so neither is masked in raw frames (their calls are); TLS is opaque anyway. A frame
with nothing to mask costs one lower-casing of its bytes and one ``in`` test per configured name.
"""

from __future__ import annotations

import json
import re
import struct
from collections.abc import Iterable
from typing import Any
from urllib.parse import unquote_plus

from dissect.model import Call, Flag, Header, Message

__all__ = ["DEFAULT_HEADERS", "DEFAULT_JSON_KEYS", "Redactor"]

DEFAULT_HEADERS = ("Authorization", "Cookie", "Set-Cookie", "Proxy-Authorization", "X-Api-Key")
DEFAULT_JSON_KEYS = ("password", "token", "secret")

_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")  # an HTTP header name (RFC 9110 token)
_QUERY_PROTOCOLS = frozenset({"http", "http2", "grpc"})
_URL_HEADERS = frozenset({":path", "location", "content-location", "referer"})  # query strings masked
_INFO_DEPTH = 32  # how deep `info` is searched for JSON text
_u16 = struct.Struct("!H").unpack_from


class Redactor:
    """Masks configured headers and JSON/form/query keys in calls and in raw frames (see module doc)."""

    def __init__(
        self,
        headers: Iterable[str] = DEFAULT_HEADERS,
        json_keys: Iterable[str] = DEFAULT_JSON_KEYS,
        mask: str = "[REDACTED]",
    ) -> None:
        names = [h.strip() for h in headers]
        for h in names:
            if not _TOKEN.match(h):
                raise ValueError(
                    f"--redact-header {h!r} is not a header name (letters, digits and -_.!#$%&'*+^`|~ only)"
                )
        keys = list(json_keys)
        for k in keys:
            if not k or '"' in k or "\\" in k or any(c in k for c in "&=#\r\n"):
                raise ValueError(
                    f"--redact-json-key {k!r}: use a plain key name (no quotes, \\, &, =, # or newlines)"
                )
        self.headers = frozenset(h.lower() for h in names)
        self.json_keys = frozenset(k.lower() for k in keys)
        self.mask = mask
        self._mask_json = json.dumps(mask, ensure_ascii=False).encode("utf-8")
        self._compile()

    def _compile(self) -> None:
        keys = sorted((re.escape(k.encode("utf-8")) for k in self.json_keys), key=len, reverse=True)
        names = sorted((re.escape(h.encode("ascii")) for h in self.headers), key=len, reverse=True)
        key_alt = b"|".join(keys)
        never = b"(?!)"  # an empty alternation matches everything; this matches nothing
        # "key" : value  -- value a string (possibly cut short: no closing quote) or a bare scalar
        self._json_pair = re.compile(
            rb'"(?:' + (key_alt or never) + rb')"\s*:\s*(?:"((?:[^"\\]|\\[\s\S])*)"?|([^\s,}\]"{\[]+))',
            re.IGNORECASE,
        )
        # key=value in a query string or form body (key possibly percent-encoded: checked after decoding)
        self._kv_pair = re.compile(rb"(?:^|(?<=[?&;\s]))([^=&?;\s]{1,256})=([^&#\s\"']*)")
        self._header_line = re.compile(
            rb"(?:^|(?<=\n))(?:" + (b"|".join(names) or never) + rb")[ \t]*:[ \t]*([^\r\n]*)", re.IGNORECASE
        )
        # The cheap test "could this hold anything to mask": lower-case the bytes once and look for
        # each name with `in` (CPython's `re` is an order of magnitude slower at case-insensitive
        # alternations). A needle that contains another one is implied by it and dropped.
        words = {w.lower() for w in (*self.headers, *self.json_keys)}
        words = {w for w in words if not any(o != w and o in w for o in words)}
        self._needles = tuple(sorted(w.encode("utf-8") for w in words))
        self._needles_text = tuple(sorted(words))

    def _hinted(self, data: bytes) -> bool:
        return any(map(data.lower().__contains__, self._needles))

    def _hinted_text(self, text: str) -> bool:
        return any(map(text.lower().__contains__, self._needles_text))

    # -- calls ---------------------------------------------------------------------------------

    def call(self, call: Call) -> bool:
        """Mask ``call`` in place; True (and the ``redacted`` flag added) when anything was masked."""
        changed = False
        for msg in (call.request, call.response):
            if msg is not None:
                changed |= self._message(msg, call.protocol)
        if call.target and call.protocol in _QUERY_PROTOCOLS and "?" in call.target:
            target = self._query(call.target)
            if target != call.target:
                call.target = target
                changed = True
        if call.info:
            changed |= self._info(call.info, 0)
        if changed:
            call.flag(Flag.REDACTED)
        return changed

    def _message(self, msg: Message, protocol: str) -> bool:
        changed = False
        headers = self._headers(msg.headers, protocol)
        if headers is not None:
            msg.headers = headers
            changed = True
        trailers = self._headers(msg.trailers, protocol)
        if trailers is not None:
            msg.trailers = trailers
            changed = True
        if (
            msg.body
            and _scannable(ctype := (msg.header("content-type") or "").lower(), msg.body)
            and (
                self._hinted(msg.body) or b"%" in msg.body  # a form key may be percent-encoded
            )
        ):
            body = self._body(msg.body, ctype)
            if body is not None:
                msg.body = body
                changed = True
        return changed

    def _headers(self, headers: list[Header], protocol: str) -> list[Header] | None:
        """The headers with configured values masked, or None when nothing changed."""
        out: list[Header] | None = None
        names = self.headers
        for i, (name, value) in enumerate(headers):
            low = name.lower()
            if low in names:
                new = self.mask
            elif low in _URL_HEADERS and protocol in _QUERY_PROTOCOLS and "?" in value:
                new = self._query(value)
            else:
                continue
            if new != value:
                if out is None:
                    out = list(headers)
                out[i] = (name, new)
        return out

    def _query(self, target: str) -> str:
        """A request target with configured query parameters masked (the path and fragment kept)."""
        path, _, rest = target.partition("?")
        if "%" not in rest and not self._hinted_text(rest):  # a key may be percent-encoded
            return target
        query, hash_, fragment = rest.partition("#")
        masked = self._pairs(query.encode("utf-8", "surrogateescape"))
        if masked is None:
            return target
        return path + "?" + masked.decode("utf-8", "surrogateescape") + hash_ + fragment

    def _pairs(self, data: bytes) -> bytes | None:
        """``k=v&k=v`` (a query string or a form body) with configured keys' values masked."""
        mask = self.mask.encode("utf-8")
        spans = [
            m.span(2) for m in self._kv_pair.finditer(data) if m.group(2) != mask and self._is_key(m.group(1))
        ]
        return _replace(data, spans, mask) if spans else None

    def _is_key(self, raw: bytes) -> bool:
        return unquote_plus(raw.decode("latin-1")).lower() in self.json_keys

    def _body(self, body: bytes, content_type: str) -> bytes | None:
        """The body with configured keys masked, or None when nothing changed."""
        if "x-www-form-urlencoded" in content_type:
            return self._pairs(body)
        return self._json_text(body)

    def _json_text(self, data: bytes) -> bytes | None:
        """JSON (or JSON-looking) bytes with configured keys masked, or None when nothing changed."""
        head = data[:64].lstrip()
        if head[:1] in (b"{", b"["):
            try:
                doc = json.loads(data)
            except (ValueError, RecursionError):
                pass  # cut short or not JSON after all: the byte scan below
            else:
                if not self._mask_doc(doc):
                    return None
                try:
                    return json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
                except (ValueError, RecursionError):
                    pass
        return self._scan(data)

    def _mask_doc(self, doc: Any) -> bool:
        """Mask configured keys in a parsed JSON document, at any depth, without recursion."""
        changed = False
        keys = self.json_keys
        mask = self.mask
        stack = [doc]
        while stack:
            node = stack.pop()
            if isinstance(node, dict):
                for k, v in node.items():
                    if k.lower() in keys:
                        if v != mask:
                            node[k] = mask
                            changed = True
                    elif isinstance(v, dict | list):
                        stack.append(v)
                    elif isinstance(v, str) and (new := self._embedded(v)) is not None:
                        node[k] = new
                        changed = True
            elif isinstance(node, list):
                for i, v in enumerate(node):
                    if isinstance(v, dict | list):
                        stack.append(v)
                    elif isinstance(v, str) and (new := self._embedded(v)) is not None:
                        node[i] = new
                        changed = True
        return changed

    def _embedded(self, text: str) -> str | None:
        """A JSON string that holds JSON text itself (an escaped document), masked; None if unchanged."""
        if '"' not in text or not self._hinted_text(text):
            return None
        new = self._json_text(text.encode("utf-8", "surrogatepass"))
        return None if new is None else new.decode("utf-8", "replace")

    def _scan(self, data: bytes) -> bytes | None:
        """Byte-level ``"key": value`` masking for bodies that do not parse as JSON."""
        spans = []
        for m in self._json_pair.finditer(data):
            if m.group(1) is not None:  # a string: replaced with its quotes (the closing one may be cut)
                a, b = m.start(1) - 1, m.end()
            else:
                a, b = m.span(2)
            if data[a:b] != self._mask_json:
                spans.append((a, b))
        return _replace(data, spans, self._mask_json) if spans else None

    def _info(self, node: Any, depth: int) -> bool:
        """Mask JSON text held in ``info`` strings (Kafka record values and the like)."""
        if depth > _INFO_DEPTH:
            return False
        changed = False
        if isinstance(node, dict):
            items: Iterable[tuple[Any, Any]] = node.items()
        elif isinstance(node, list):
            items = enumerate(node)
        else:
            return False
        for k, v in list(items):
            if isinstance(v, str):
                new = self._embedded(v)
                if new is not None:
                    node[k] = new
                    changed = True
            elif isinstance(v, dict | list):
                changed |= self._info(v, depth + 1)
        return changed

    # -- raw frames ----------------------------------------------------------------------------

    def frame(self, linktype: int, frame: bytes) -> bytes:
        """The frame with credentials in its TCP payload masked by ``*`` bytes, same length.

        Returns ``frame`` itself when there is nothing to mask. Never raises on any bytes.
        """
        if not self._hinted(frame):
            return frame
        span = _tcp_payload(linktype, frame)
        if span is None:
            return frame
        start, end = span
        payload = frame[start:end]
        spans: list[tuple[int, int]] = [m.span(1) for m in self._header_line.finditer(payload)]
        for m in self._json_pair.finditer(payload):
            spans.append(m.span(1) if m.group(1) is not None else m.span(2))
        spans += [m.span(2) for m in self._kv_pair.finditer(payload) if self._is_key(m.group(1))]
        spans = [(a, b) for a, b in spans if b > a]
        if not spans:
            return frame
        out = bytearray(frame)
        for a, b in spans:
            out[start + a : start + b] = b"*" * (b - a)
        return bytes(out)


def _replace(data: bytes, spans: list[tuple[int, int]], new: bytes) -> bytes:
    """``data`` with each (non-overlapping, after sorting) span replaced by ``new``."""
    out = bytearray()
    pos = 0
    for a, b in sorted(spans):
        if a < pos:
            continue
        out += data[pos:a]
        out += new
        pos = b
    out += data[pos:]
    return bytes(out)


# -- where a frame's TCP payload is ------------------------------------------------------------------

_ETH_VLAN = (0x8100, 0x88A8, 0x9100)
_V6_SKIP = (0, 43, 60)  # hop-by-hop, routing, destination options


def _l3_offset(linktype: int, f: bytes) -> int:
    """Offset of the IP header, or -1 for link types and frames we do not mask."""
    n = len(f)
    if linktype in (1, 113):  # Ethernet, Linux cooked v1
        off = 14 if linktype == 1 else 16
        if n < off:
            return -1
        et = _u16(f, off - 2)[0]
        while et in _ETH_VLAN and n >= off + 4:
            et = _u16(f, off + 2)[0]
            off += 4
        return off if et in (0x0800, 0x86DD) else -1
    if linktype == 276:  # Linux cooked v2
        return 20 if n >= 20 and _u16(f, 0)[0] in (0x0800, 0x86DD) else -1
    if linktype in (101, 12, 14, 228, 229):  # raw IP
        return 0
    return -1


def _tcp_payload(linktype: int, f: bytes) -> tuple[int, int] | None:
    """(start, end) of the TCP payload in the frame (or of the data of a later IP fragment)."""
    ip = _l3_offset(linktype, f)
    n = len(f)
    if ip < 0 or ip >= n:
        return None
    version = f[ip] >> 4
    if version == 4:
        ihl = (f[ip] & 15) * 4
        if ihl < 20 or ip + ihl > n or f[ip + 9] != 6:
            return None
        total = _u16(f, ip + 2)[0]
        end = n if total == 0 else min(n, ip + total)  # 0: TSO, the length is the frame's
        frag_off = _u16(f, ip + 6)[0] & 0x1FFF
        l4 = ip + ihl
        if frag_off:  # a later fragment: payload bytes without a TCP header
            return (l4, end) if l4 < end else None
    elif version == 6:
        if ip + 40 > n:
            return None
        plen = _u16(f, ip + 4)[0]
        end = n if plen == 0 else min(n, ip + 40 + plen)  # 0: jumbogram or TSO
        nh = f[ip + 6]
        l4 = ip + 40
        for _ in range(8):
            if nh in _V6_SKIP:
                if l4 + 2 > end:
                    return None
                nh, l4 = f[l4], l4 + (f[l4 + 1] + 1) * 8
            elif nh == 44:  # fragment header
                if l4 + 8 > end:
                    return None
                later = _u16(f, l4 + 2)[0] & 0xFFF8
                nh, l4 = f[l4], l4 + 8
                if later:
                    return (l4, end) if nh == 6 and l4 < end else None
            else:
                break
        if nh != 6:
            return None
    else:
        return None
    if l4 + 20 > end:
        return None
    start = l4 + (f[l4 + 12] >> 4) * 4
    if start < l4 + 20 or start >= end:
        return None
    return start, end


# Bodies of these types hold no JSON or form keys to mask (HTML, images, fonts, archives, protobuf):
# skipping them spares the case-insensitive scan of every page a busy node serves. A body without a
# content type, or one that starts like JSON, is always scanned.
_OPAQUE_TYPES = (
    "text/html",
    "image/",
    "audio/",
    "video/",
    "font/",
    "application/octet-stream",
    "application/grpc",
    "application/x-protobuf",
    "application/protobuf",
    "application/zip",
    "application/gzip",
    "application/pdf",
    "application/wasm",
)


def _scannable(content_type: str, body: bytes) -> bool:
    if not content_type or not content_type.startswith(_OPAQUE_TYPES):
        return True
    return body[:1] in (b"{", b"[")
