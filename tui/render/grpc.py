"""gRPC: the status and the protobuf messages of both directions as a tree.

The messages are decoded without a schema by `dissect.protobuf` (called from `dissect.grpc`), so
the tree shows field numbers and wire types, with the readings the bytes support (a string, a
nested message, a double beside the raw i64). `info["messages"]` is already bounded by the
dissector; the tree adds its own node bound so a call with thousands of fields stays a quick
widget to build.
"""

from __future__ import annotations

from typing import Any

from rich.table import Table
from rich.text import Text
from textual.widgets import Tree
from textual.widgets.tree import TreeNode

from dissect.model import Call
from tui.render.overview import key_value_table
from tui.render.status import status_text
from tui.render.units import as_dict, as_list, safe, size, value

MAX_NODES = 5000  # tree nodes built; past this a leaf says how much was left out
EXPAND_LINES = 60  # nested messages open (depth-first) while this many field lines are on show
LABEL_CHARS = 200  # a string value longer than this is cut in its label


def grpc_summary(call: Call) -> Table:
    """Service, method, status with its name, grpc-message, HTTP status and compression."""
    info = call.info
    t = key_value_table()
    t.add_row("service", value(info.get("grpc_service")))
    t.add_row("method", value(info.get("grpc_method")))
    t.add_row("grpc-status", status_text("grpc", call.status, info))
    if info.get("grpc_status_raw") is not None:
        t.add_row("unparsed status", value(info["grpc_status_raw"]))
    t.add_row("grpc-message", value(info.get("grpc_message")))
    t.add_row("HTTP status", value(info.get("http_status")))
    encodings = as_dict(info.get("grpc_encoding"))
    if encodings:
        t.add_row("compression", Text(", ".join(f"{k} {v}" for k, v in encodings.items())))
    counts = as_dict(info.get("message_counts"))
    if counts:
        t.add_row(
            "messages",
            Text(f"{counts.get('request', 0)} request, {counts.get('response', 0)} response"),
        )
    if info.get("grpc_error"):
        t.add_row("decoding error", value(info["grpc_error"]))
    return t


def field_label(f: dict[str, Any]) -> Text:
    """One protobuf field as a line: number, value and the wire type it came as."""
    out = Text()
    if "omitted_bytes" in f:
        out.append(f"… {size(f['omitted_bytes'])} more not decoded (field budget spent)", style="dim")
        return out
    out.append(str(f.get("field", "?")), style="bold cyan")
    wire = f.get("wire", "?")
    kind = f.get("type")
    v = f.get("value")
    if kind == "message":
        n = len(v) if isinstance(v, list) else 0
        out.append(f"  message  ({n} field{'s' if n != 1 else ''})", style="dim")
        return out
    out.append(": ")
    if kind == "string":
        text = safe(str(v), one_line=True)
        shown = text if len(text) <= LABEL_CHARS else text[:LABEL_CHARS] + "…"
        out.append(f'"{shown}"', style="green")
        extra = f"string, {size(f['size'])}" if "size" in f else "string"
    elif kind == "bytes":
        hexed = safe(str(v.get("hex", "")), one_line=True) if isinstance(v, dict) else ""
        n = v.get("size", len(hexed) // 2) if isinstance(v, dict) else 0
        shown = hexed if len(hexed) <= 64 else hexed[:64] + "…"
        out.append(shown, style="yellow")
        extra = f"bytes, {size(n)}"
    else:
        out.append(str(v), style="bold")
        extra = str(wire)
        if "signed" in f:
            out.append(f" = {f['signed']} signed")
        if "double" in f:
            out.append(f" = {f['double']!r} double")
        if "float" in f:
            out.append(f" = {f['float']!r} float")
    out.append(f"  ({extra})", style="dim")
    return out


def message_label(side: str, index: int, m: dict[str, Any]) -> Text:
    """`request #1 · 237 B` plus compression, truncation and decoding errors."""
    out = Text(f"{side} #{index + 1}", style="bold")
    length = m.get("length")
    out.append(f" · {size(length)}" if length is not None else " · length cut off")
    if m.get("compressed"):
        dl = m.get("decompressed_length")
        out.append(" · compressed" + (f" ({size(dl)} decompressed)" if dl is not None else ""))
    if m.get("truncated"):
        out.append(" · truncated (not decoded)", style="yellow")
    if m.get("error"):
        out.append(f" · {safe(str(m['error']), one_line=True)}", style="red")
    return out


class _Builder:
    """Adds nodes until `MAX_NODES`, then one leaf per level saying what was left out. Nested
    messages open depth-first while the lines on show stay within `EXPAND_LINES`, so the first
    messages read in full and a large call still opens as an outline."""

    def __init__(self) -> None:
        self.left = MAX_NODES
        self.lines = 0

    def fields(self, parent: TreeNode[Any], fields: list[dict[str, Any]], shown: bool) -> None:
        if shown:
            self.lines += len(fields)
        for i, f in enumerate(fields):
            if not isinstance(f, dict):
                continue
            if self.left <= 0:
                parent.add_leaf(Text(f"… {len(fields) - i} more fields not shown", style="dim"))
                return
            self.left -= 1
            v = f.get("value")
            if f.get("type") == "message" and isinstance(v, list) and v:
                expand = shown and self.lines + len(v) <= EXPAND_LINES
                node = parent.add(field_label(f), data=f, expand=expand)
                self.fields(node, v, expand)
            else:
                parent.add_leaf(field_label(f), data=f)


def grpc_tree(call: Call) -> Tree[Any]:
    """The messages of both directions as a Textual `Tree` (field numbers, values, wire types)."""
    info = call.info
    messages = as_dict(info.get("messages"))
    counts = as_dict(info.get("message_counts"))
    builder = _Builder()
    tree: Tree[Any] = Tree(Text("messages", style="bold"), id="grpc-tree")
    tree.root.expand()
    tree.show_root = False
    for side in ("request", "response"):
        listed = [m for m in as_list(messages.get(side)) if isinstance(m, dict)]
        n = counts.get(side, len(listed))
        n = n if isinstance(n, int) else len(listed)
        label = Text(f"{side}: {n} message{'s' if n != 1 else ''}", style="bold")
        if n > len(listed):
            label.append(f" ({len(listed)} listed)", style="dim")
        side_node = tree.root.add(label, expand=True)
        if not listed:
            side_node.add_leaf(Text("no messages", style="dim"))
        for i, m in enumerate(listed):
            fields = m.get("fields")
            node = side_node.add(message_label(side, i, m), data=m, expand=True)
            if fields and isinstance(fields, list):
                builder.fields(node, fields, shown=True)
            elif "text" in m:
                node.add_leaf(Text(safe(str(m["text"]), one_line=True)[:LABEL_CHARS]))
            elif fields == [] and not m.get("error"):
                node.add_leaf(Text("empty message", style="dim"))
    return tree


def tree_lines(tree: Tree[Any]) -> list[str]:
    """Every node's label as plain text, depth-first with indentation (for tests and copying)."""
    out: list[str] = []

    def walk(node: TreeNode[Any], depth: int) -> None:
        label = node.label
        out.append("  " * depth + (label.plain if isinstance(label, Text) else str(label)))
        for child in node.children:
            walk(child, depth + 1)

    for child in tree.root.children:
        walk(child, 0)
    return out
