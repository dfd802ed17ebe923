"""Copy as curl: a shell command that sends the captured request again.

The command is built so the server sees what the captured client sent: the method, the
request-target exactly as sent (`--request-target` when a URL would change it), the headers in
their order and case (curl's own defaults — User-Agent, Accept, the form Content-Type, Expect —
suppressed when the original did not have them), and the body byte for byte (`--data-binary`).
What cannot be the same is dropped with a comment: hop-by-hop headers (curl manages the
connection), Content-Length (curl counts the body) and a request Content-Encoding the dissector
already undid (the body podshark keeps is decoded, so it is sent decoded).

Quoting is for bash/zsh: printable ASCII in single quotes, anything else in `$'…'` with `\\xHH`
escapes (so header bytes and bodies survive whatever the locale). A body that holds a NUL byte
(which no shell argument can carry) or is large goes to a file read with `--data-binary @FILE`;
`CurlCommand.body_file`/`body` say which file the caller must write.

HTTP/2 uses `--http2-prior-knowledge` in cleartext (`--http2` over TLS), and gRPC gets a comment
pointing at grpcurl, which needs the service's schema that a capture does not have.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field

from dissect.model import Call

INLINE_LIMIT = 16 << 10  # larger bodies go to a file (shell lines of megabytes help nobody)
EXPECT_THRESHOLD = 1024  # curl adds `Expect: 100-continue` to larger HTTP/1.1 bodies
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "transfer-encoding",
        "upgrade",
        "trailer",
        "http2-settings",
    }
)
DROPPED = frozenset({"host", "content-length"})
# headers curl adds on its own; sent empty (-H 'Name:') to remove them when the original lacked them
CURL_DEFAULTS = ("User-Agent", "Accept")
_URL_SAFE = re.compile(r"^/[A-Za-z0-9\-._~:/?\[\]@!$&'()*+,;=%{}]*$")
_DOT_SEGMENT = re.compile(r"(^|/)\.\.?(/|$|\?)")
_SANITIZE = re.compile(r"[^A-Za-z0-9._-]+")


class CurlError(ValueError):
    """This call cannot be expressed as a curl command; `str()` says why, for the user."""


class NotHTTP(CurlError):
    pass


@dataclass
class CurlCommand:
    text: str
    body_file: str | None = None  # the command reads the body from here: write `body` to it first
    body: bytes = b""
    notes: list[str] = field(default_factory=list)


def sanitize(call_id: str) -> str:
    """A call id as a file-name stem: `a07f2c5b0f0c/000000001` -> `a07f2c5b0f0c-000000001`."""
    return _SANITIZE.sub("-", call_id).strip("-.") or "call"


def quote_bytes(b: bytes) -> str:
    """One shell word holding exactly `b` (which must not contain NUL)."""
    if b"\x00" in b:
        raise ValueError("a shell argument cannot hold a NUL byte")
    if b and all(0x20 <= c < 0x7F for c in b):
        return shlex.quote(b.decode("ascii"))
    out = ["$'"]
    for c in b:
        if c == 0x5C:
            out.append("\\\\")
        elif c == 0x27:
            out.append("\\'")
        elif c == 0x0A:
            out.append("\\n")
        elif c == 0x09:
            out.append("\\t")
        elif c == 0x0D:
            out.append("\\r")
        elif 0x20 <= c < 0x7F:
            out.append(chr(c))
        else:
            out.append(f"\\x{c:02x}")
    out.append("'")
    return "".join(out)


def _wire(s: str) -> bytes:
    """A header or target string back to the bytes that were sent (parsers decode as Latin-1)."""
    try:
        return s.encode("latin-1")
    except UnicodeEncodeError:
        return s.encode("utf-8")


def quote(s: str) -> str:
    return quote_bytes(_wire(s))


def curl_command(call: Call, body_path: str | None = None, inline_limit: int = INLINE_LIMIT) -> CurlCommand:
    """The curl command for an HTTP/1, HTTP/2 or gRPC call; `CurlError` for anything else.

    `body_path`: where a body that cannot be inlined is read from (default
    `./<id>-request.bin`)."""
    if call.protocol not in ("http", "http2", "grpc"):
        raise NotHTTP(f"this is a {call.protocol} call, not an HTTP call: there is no curl command for it")
    req = call.request
    if req is None or not call.method:
        raise CurlError("only the response of this call was captured: there is no request to copy")
    method = call.method
    if method.upper() == "CONNECT":
        raise CurlError("a CONNECT opens a tunnel: copy the calls inside the tunnel instead")
    h2 = call.protocol in ("http2", "grpc")
    comments: list[str] = []
    args: list[str] = ["curl"]

    scheme = (req.header(":scheme") if h2 else None) or ("https" if call.tls else "http")
    authority = req.header(":authority") if h2 else None
    authority = authority or req.header("host") or call.dst.address()
    target = call.target or "/"
    if target.startswith(("http://", "https://")):  # absolute-form: a request to a proxy
        url = target
    elif _URL_SAFE.match(target) and not _DOT_SEGMENT.search(target.split("?", 1)[0]):
        url = f"{scheme}://{authority}{target}"
        if any(c in target for c in "[]{}"):
            args.append("--globoff")
    else:  # `*`, spaces, `#`, dot segments, non-ASCII: sent exactly, not as part of a URL
        url = f"{scheme}://{authority}/"
        args += ["--request-target", quote(target)]

    if h2:
        args.append("--http2" if scheme == "https" else "--http2-prior-knowledge")
    elif call.info.get("http_version") == "1.0":
        args.append("--http1.0")
    elif scheme == "https":
        args.append("--http1.1")

    body = req.body
    if method == "HEAD":
        args.append("--head")
    elif not (method == "GET" and not body) and not (method == "POST" and body):
        args += ["-X", quote(method)]

    decoded_encoding = call.info.get("request_content_encoding")
    names = {name.lower() for name, _ in req.headers}
    dropped: list[str] = []
    for name, val in req.headers:
        low = name.lower()
        if name.startswith(":"):
            continue
        if low in DROPPED or (low in HOP_BY_HOP and not (h2 and low == "te" and val.strip() == "trailers")):
            if low not in ("host",):
                dropped.append(name)
            continue
        if low == "content-encoding" and decoded_encoding:
            dropped.append(name)
            comments.append(f"# the body is sent decoded (it was {decoded_encoding} on the wire)")
            continue
        header = _wire(name) + (b": " + _wire(val) if val else b";")
        args += ["-H", quote_bytes(header)]
    for default in CURL_DEFAULTS:
        if default.lower() not in names:
            args += ["-H", quote(default + ":")]
    if body:
        if "content-type" not in names:
            args += ["-H", quote("Content-Type:")]
        if "expect" not in names and not h2 and len(body) > EXPECT_THRESHOLD:
            args += ["-H", quote("Expect:")]
    if dropped:
        comments.append("# left to curl: " + ", ".join(dict.fromkeys(dropped)))

    body_file = None
    if body:
        if req.truncated or len(body) < req.body_size:
            comments.append(
                f"# the captured body is incomplete: this sends {len(body)} of {req.body_size} bytes"
            )
        if b"\x00" in body or len(body) > inline_limit:
            body_file = body_path or f"./{sanitize(call.id)}-request.bin"
            args += ["--data-binary", quote("@" + body_file)]
            comments.append(f"# the request body is read from {body_file} ({len(body)} bytes)")
        else:
            args += ["--data-binary", quote_bytes(body)]
    if call.protocol == "grpc":
        service, rpc = call.info.get("grpc_service"), call.info.get("grpc_method")
        comments.append(
            "# gRPC: the body is length-prefixed protobuf, sent as captured. With the service's"
            " .proto (or server reflection) grpcurl reads better:"
        )
        comments.append(
            f"#   grpcurl {'-plaintext ' if scheme == 'http' else ''}-d '{{...}}' {authority}"
            f" {service or '<package.Service>'}/{rpc or '<Method>'}"
        )
    args.append(quote(url))
    lines = _wrap(args)
    text = "\n".join([*comments, lines])
    return CurlCommand(text, body_file, body if body_file else b"", [c[2:] for c in comments])


def _wrap(args: list[str]) -> str:
    """`curl` and its options, one option (with its value) per line, joined by `\\`-newlines."""
    groups: list[str] = [args[0]]
    i = 1
    takes_value = {"-H", "-X", "--data-binary", "--request-target"}
    while i < len(args):
        if args[i] in takes_value and i + 1 < len(args):
            groups.append(f"{args[i]} {args[i + 1]}")
            i += 2
        else:
            groups.append(args[i])
            i += 1
    return " \\\n  ".join(groups)
