"""`podshark map --hub URL [--from T --to T] [--filter EXPR] [--format table|json|dot]`: the service map.

Asks the hub's `GET /api/v1/map` (hub/mapping.py) for the window and filter and prints it:

- `table` (the default on a terminal): one line per edge, busiest first — client, server, protocol,
  calls/s, error rate, p50/p99, bytes/s, connections — external nodes marked `[external]`, so
  unexpected egress stands out;
- `json` (the default into a pipe): the hub's answer as it came;
- `dot`: a Graphviz digraph (`podshark map --format dot | dot -Tsvg > map.svg`): one node per map
  node, external ones drawn apart (red dashed ellipses), edge labels with protocol, calls/s, error
  rate, p99 and bytes/s; edges with errors coloured, edges with bytes but no calls dashed.

Each edge of the JSON carries `filter`, the expression that selects exactly its calls:
`podshark calls --hub URL --filter "$(jq -r '.edges[0].filter' map.json)"` lists them. Same token and
TLS options as `podshark calls`. Exit 0, 1 when the hub fails or cannot be reached, 2 for bad
options or a parameter the hub refused (the message says which, and where in the filter).
"""

from __future__ import annotations

import argparse
import math
import os
import ssl
import sys
from typing import TextIO

import msgspec

from podshark.hub_get import EXIT_USAGE, HubError, hub_get

NAME_WIDTH = 48  # node names longer than this are shortened in the table on a terminal


class MapNodeJson(msgspec.Struct):
    id: str
    kind: str
    name: str
    namespace: str | None = None
    external: bool = False


class MapEdgeJson(msgspec.Struct):
    src: str
    dst: str
    transport: str
    calls: int
    calls_per_s: float
    errors: int
    bytes: list[int]
    bytes_per_s: float
    connections: int
    protocol: str | None = None
    error_rate: float | None = None
    p50_ms: float | None = None
    p99_ms: float | None = None
    filter: str | None = None


class MapJson(msgspec.Struct):
    source: str
    seconds: float
    nodes: list[MapNodeJson]
    edges: list[MapEdgeJson]
    edges_omitted: int = 0
    from_: int = msgspec.field(name="from", default=0)
    to: int = 0


def fetch_map(
    hub: str,
    token: str | None,
    params: dict[str, str],
    context: ssl.SSLContext | None = None,
    has_cert: bool = False,
) -> bytes:
    """The raw JSON of `GET /api/v1/map`; HubError with the hub's reason (code 2 for a 400)."""
    return hub_get(hub, "/api/v1/map", params, token, context, has_cert=has_cert, timeout=300)


def decode(body: bytes) -> MapJson:
    try:
        return msgspec.json.decode(body, type=MapJson)
    except msgspec.DecodeError as e:
        raise HubError(f"the hub's answer is not a service map: {e}") from None


# ---- human units


def fmt_rate(per_s: float) -> str:
    if per_s == 0:
        return "0"
    if per_s >= 100:
        return f"{per_s:.0f}"
    if per_s >= 0.01:
        return f"{per_s:.2f}"
    return f"{per_s:.1e}"


def fmt_ms(ms: float | None) -> str:
    if ms is None:
        return "-"
    if ms >= 1000:
        return f"{ms / 1000:.2f}s"
    if ms >= 1:
        return f"{ms:.1f}ms"
    return f"{ms * 1000:.0f}µs"


def fmt_bytes_rate(per_s: float) -> str:
    if 0 < per_s < 1:
        return f"{per_s:.1e} B/s"
    units = ("B/s", "KiB/s", "MiB/s", "GiB/s", "TiB/s")
    v = per_s
    for u in units:
        if v < 1024 or u == units[-1]:
            return f"{v:.0f} {u}" if u == "B/s" else f"{v:.1f} {u}"
        v /= 1024
    return f"{v:.1f} TiB/s"  # not reached


def fmt_seconds(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.3g}{unit}"
    return f"{seconds:.3g}s"


def fmt_error_rate(rate: float | None) -> str:
    return "-" if rate is None else f"{rate * 100:.1f}%"


def node_label(n: MapNodeJson | None, node_id: str) -> str:
    """What the table shows for a node: its id (namespaced kinds), the bare address inside the
    cluster, and the address marked `[external]` outside it."""
    if n is None:
        return node_id
    if n.external:
        return f"{n.name} [external]"
    if n.kind == "ip":
        return n.name
    return n.id


def _printable(text: str) -> str:
    return "".join(c if c.isprintable() else "?" for c in text)


# ---- table


def write_table(m: MapJson, out: TextIO, width: int | None) -> None:
    """One line per edge, columns sized to their contents (node names capped at `width`)."""
    nodes = {n.id: n for n in m.nodes}

    def name(node_id: str) -> str:
        text = _printable(node_label(nodes.get(node_id), node_id))
        if width is not None and len(text) > width:
            text = text[: width - 1] + "…"
        return text

    head = ("SOURCE", "DESTINATION", "PROTO", "CALLS/S", "ERRORS", "P50", "P99", "BYTES/S", "CONNS")
    rows = [
        (
            name(e.src),
            name(e.dst),
            _printable(e.protocol or f"({e.transport})"),
            fmt_rate(e.calls_per_s),
            fmt_error_rate(e.error_rate),
            fmt_ms(e.p50_ms),
            fmt_ms(e.p99_ms),
            fmt_bytes_rate(e.bytes_per_s),
            str(e.connections),
        )
        for e in m.edges
    ]
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    right = {3, 4, 5, 6, 7, 8}
    for r in [head, *rows]:
        cells = [
            c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))
        ]
        out.write("  ".join(cells).rstrip() + "\n")
    external = sum(1 for n in m.nodes if n.external)
    summary = (
        f"# {len(m.edges)} edges, {len(m.nodes)} nodes ({external} external), "
        f"{fmt_seconds(m.seconds)} window, from the {m.source}"
    )
    if m.edges_omitted:
        summary += f"; {m.edges_omitted} quieter edges left out (raise --limit)"
    out.write(summary + "\n")


# ---- Graphviz DOT


def dot_quote(text: str) -> str:
    """A DOT quoted string showing `text`: control characters become spaces, backslashes are doubled
    (a label reads `\\\\` as one) and quotes escaped. Older Graphviz scanners do not pair backslashes,
    so for them a string ending in one swallows its closing quote: such text gets a trailing space."""
    clean = "".join(c if c.isprintable() else " " for c in text)
    body = clean.replace("\\", "\\\\").replace('"', '\\"')
    if body.endswith("\\"):
        body += " "
    return f'"{body}"'


def _label(*lines: str) -> str:
    """A quoted DOT label of several lines (`\\n` is DOT's centred line break)."""
    return '"' + "\\n".join(dot_quote(line)[1:-1] for line in lines) + '"'


def write_dot(m: MapJson, out: TextIO) -> None:
    """The map as a Graphviz digraph (rankdir LR). Node ids in the DOT are `n0`, `n1`, ... (the map's
    ids hold any text a worker reported): the map id is each node's `tooltip`, the label shows the name."""
    from dissect.filter import render_time

    title = f"podshark service map {render_time(m.from_)} .. {render_time(m.to)} (from the {m.source})"
    out.write("digraph podshark {\n")
    out.write(f'  graph [rankdir=LR, fontname="Helvetica", labelloc=t, label={dot_quote(title)}];\n')
    out.write('  node [shape=box, style="rounded,filled", fillcolor="#e8f0fe", fontname="Helvetica"];\n')
    out.write('  edge [fontname="Helvetica", fontsize=10];\n')
    nodes = list(m.nodes)
    known = {n.id for n in nodes}
    for e in m.edges:  # an edge naming a node the list lacks still draws (as an address node)
        for node_id in (e.src, e.dst):
            if node_id not in known:
                known.add(node_id)
                nodes.append(MapNodeJson(id=node_id, kind="ip", name=node_id))
    dot_id = {n.id: f"n{i}" for i, n in enumerate(nodes)}
    for n in nodes:
        if n.external:
            attrs = (
                f"label={_label(n.name, 'external')}, shape=ellipse, "
                'style="filled,dashed", fillcolor="#fde2e1", color="#c5221f"'
            )
        elif n.kind in ("workload", "pod", "service"):
            kind = "" if n.kind == "workload" else n.kind
            attrs = f"label={_label(n.name, ' '.join(x for x in (kind, n.namespace or '') if x))}"
        elif n.kind == "node":
            attrs = f'label={_label(n.name, "node")}, fillcolor="#eeeeee"'
        else:
            attrs = f'label={_label(n.name)}, fillcolor="#f1f3f4"'
        out.write(f"  {dot_id[n.id]} [{attrs}, tooltip={dot_quote(n.id)}];\n")
    for e in m.edges:
        proto = e.protocol or e.transport
        lines = [f"{proto} {fmt_rate(e.calls_per_s)}/s" if e.calls else proto]
        if e.calls:
            lines.append(f"err {fmt_error_rate(e.error_rate)} p99 {fmt_ms(e.p99_ms)}")
        lines.append(fmt_bytes_rate(e.bytes_per_s))
        style = [f"label={_label(*lines)}"]
        if e.error_rate is not None and e.error_rate >= 0.05:
            style.append('color="#c5221f", fontcolor="#c5221f"')
        elif e.errors:
            style.append('color="#e37400", fontcolor="#e37400"')
        if not e.calls:
            style.append('style=dashed, color="#80868b"')
        style.append(f"penwidth={1 + min(4.0, math.log10(1 + e.calls_per_s)):.2f}")
        out.write(f"  {dot_id[e.src]} -> {dot_id[e.dst]} [{', '.join(style)}];\n")
    out.write("}\n")


# ---- the command


def run(args: argparse.Namespace) -> int:
    from hub.auth import AuthError, token_from
    from podshark.tlsconf import TlsConfigError, client_context

    try:
        token = token_from(args.token_file)
        context = client_context(args, args.hub)
    except (AuthError, TlsConfigError) as e:
        print(f"podshark: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    params = {"filter": args.filter, "source": args.source}
    if args.from_:
        params["from"] = args.from_
    if args.to:
        params["to"] = args.to
    if args.limit is not None:
        params["limit"] = str(args.limit)
    fmt = args.format or ("table" if sys.stdout.isatty() else "json")
    out = sys.stdout
    try:
        body = fetch_map(args.hub, token, params, context, bool(args.cert))
        if fmt == "json":
            decode(body)  # refuse to pass on something that is not a map
            out.write(body.decode() + "\n")
        elif fmt == "dot":
            write_dot(decode(body), out)
        else:
            write_table(decode(body), out, NAME_WIDTH if out.isatty() else None)
        out.flush()
    except HubError as e:
        print(f"podshark: error: {e}", file=sys.stderr)
        return e.code
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    return 0
