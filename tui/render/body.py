"""A message body as the reader wants it: JSON pretty-printed and highlighted, text as text (with
highlighting for the common web types), anything else as a hex dump — always bounded.

Bodies can be a megabyte (the dissectors keep `Limits.max_body`), so only a prefix is shown: the
first `TEXT_LIMIT` characters of text or pretty JSON, the first `HEX_LIMIT` bytes as hex, with a
note saying so. `render_body` is pure and can take tens of milliseconds on a large JSON body, so
the detail screen runs it in a worker thread, never on the UI's event loop.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from rich.console import RenderableType
from rich.syntax import Syntax
from rich.text import Text

from dissect.model import Message
from tui.render.units import safe, size

TEXT_LIMIT = 64 << 10  # characters of text / pretty JSON shown
HEX_LIMIT = 4 << 10  # bytes shown as a hex dump
JSON_PARSE_LIMIT = 8 << 20  # larger bodies are not parsed (shown as text)
THEME = "ansi_dark"  # uses the terminal's own palette, so it reads on dark and light themes

#: content-type fragments -> Pygments lexer for text bodies
LEXERS: tuple[tuple[str, str], ...] = (
    ("html", "html"),
    ("xml", "xml"),
    ("css", "css"),
    ("javascript", "javascript"),
    ("ecmascript", "javascript"),
    ("yaml", "yaml"),
    ("graphql", "graphql"),
)


@dataclass
class BodyView:
    """What the detail view shows for one body: its kind, the renderable and notes about it."""

    kind: str  # "empty" | "json" | "text" | "binary" | "absent"
    renderable: RenderableType
    notes: list[str] = field(default_factory=list)


def content_type(message: Message) -> str:
    return (message.header("content-type") or "").lower()


def is_json_type(ct: str) -> bool:
    base = ct.split(";", 1)[0].strip()
    return base.endswith("/json") or base.endswith("+json") or base == "application/x-ndjson"


def pretty_json(data: bytes, limit: int = TEXT_LIMIT) -> tuple[str, bool] | None:
    """Indented JSON (at most `limit` characters) and whether it was cut, or None if `data` is not
    one JSON document."""
    if len(data) > JSON_PARSE_LIMIT:
        return None
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError):
        return None
    try:
        text = json.dumps(doc, indent=2, ensure_ascii=False)
    except (ValueError, RecursionError):
        return None
    text = safe(text)
    return (text[:limit], True) if len(text) > limit else (text, False)


def as_text(data: bytes, ct: str, truncated: bool) -> str | None:
    """The body as text when it is text: UTF-8 (a multi-byte character cut at the end of a truncated
    body is forgiven), or Latin-1 when the content-type says so; None for binary data."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        if truncated and e.start >= len(data) - 3:
            text = data[: e.start].decode("utf-8")
        elif "charset=iso-8859-1" in ct or "charset=latin-1" in ct or "charset=windows-1252" in ct:
            text = data.decode("latin-1")
        else:
            return None
    sample = text[:TEXT_LIMIT].replace("\t", " ").replace("\n", " ").replace("\r", " ")
    return text if sample.isprintable() else None


def hex_dump(data: bytes, limit: int = HEX_LIMIT) -> str:
    """`hexdump -C` lines for the first `limit` bytes: offset, 16 bytes in two groups, ASCII."""
    shown = data[: max(limit, 0)]
    lines = []
    for off in range(0, len(shown), 16):
        chunk = shown[off : off + 16]
        left = " ".join(f"{b:02x}" for b in chunk[:8])
        right = " ".join(f"{b:02x}" for b in chunk[8:])
        ascii_ = "".join(chr(b) if 0x20 <= b < 0x7F else "." for b in chunk)
        lines.append(f"{off:08x}  {left:<23}  {right:<23}  |{ascii_}|")
    return "\n".join(lines)


def lexer_for(ct: str) -> str | None:
    for fragment, lexer in LEXERS:
        if fragment in ct:
            return lexer
    return None


def highlighted(text: str, lexer: str) -> Syntax:
    return Syntax(text, lexer, theme=THEME, word_wrap=True)  # no background: the widget's own shows


def size_notes(message: Message, info: dict[str, Any], side: str) -> list[str]:
    """Decoded size, wire size, content-encoding and truncation, in words."""
    notes = [f"{size(message.body_size)} body"]
    if message.wire_size != message.body_size:
        notes[0] += f", {size(message.wire_size)} on the wire"
    prefix = "request_" if side == "request" else ""
    encoding = info.get(prefix + "content_encoding") or message.header("content-encoding")
    encoding = encoding if isinstance(encoding, str) else None
    if encoding:
        notes.append(f"content-encoding {safe(str(encoding), one_line=True)} (shown decoded)")
    error = info.get(prefix + "content_encoding_error")
    if error:
        notes.append(f"could not decode the content-encoding: {safe(str(error), one_line=True)}")
    if message.truncated:
        notes.append("truncated: only part of this body was captured")
    return notes


def render_body(
    message: Message | None,
    info: dict[str, Any] | None = None,
    side: str = "response",
    loaded: bool = True,
    text_limit: int = TEXT_LIMIT,
    hex_limit: int = HEX_LIMIT,
) -> BodyView:
    """The body of one side of a call. `loaded=False` for a summary without bodies (the full call
    is still being fetched)."""
    info = info or {}
    if message is None:
        return BodyView("absent", Text(f"no {side} was seen", style="dim"))
    notes = size_notes(message, info, side)
    data = message.body
    if not loaded:
        return BodyView("absent", Text("loading the body…", style="dim italic"), notes)
    if not data:
        msg = "empty body" if message.body_size == 0 else "the body was not kept"
        return BodyView("empty", Text(msg, style="dim"), notes)
    if len(data) < message.body_size and not message.truncated:
        notes.append(f"{size(len(data))} of it kept")
    ct = content_type(message)
    if ct.startswith("application/grpc"):
        notes.append("gRPC messages: decoded in the gRPC tab")
    elif is_json_type(ct) or data.lstrip()[:1] in (b"{", b"["):
        pretty = pretty_json(data, text_limit)
        if pretty is not None:
            pretty_text, cut = pretty
            if cut:
                notes.append(f"showing the first {size(text_limit)} of the pretty-printed JSON")
            return BodyView("json", highlighted(pretty_text, "json"), notes)
        if is_json_type(ct):
            notes.append("not valid JSON" + (" (the body is truncated)" if message.truncated else ""))
    text = None if ct.startswith("application/grpc") else as_text(data, ct, message.truncated)
    if text is not None:
        if len(text) > text_limit:
            notes.append(f"showing the first {text_limit:,} of {len(text):,} characters")
            text = text[:text_limit]
        text = safe(text.replace("\r\n", "\n"))
        lexer = lexer_for(ct)
        shown: RenderableType = highlighted(text, lexer) if lexer else Text(text)
        return BodyView("text", shown, notes)
    if len(data) > hex_limit:
        notes.append(f"binary: showing the first {size(hex_limit)} of {size(len(data))} as hex")
    else:
        notes.append("binary: shown as hex")
    return BodyView("binary", Text(hex_dump(data, hex_limit)), notes)
