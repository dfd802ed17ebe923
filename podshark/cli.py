"""The `podshark` command: one argparse front door, each subcommand in its own module.

Subcommand modules are imported only when chosen, so each stage pulls in just its own
dependencies (the worker never imports DuckDB, the hub never imports Textual).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from podshark import __version__

EXIT_USAGE = 2  # bad arguments or unreadable input: the message says what to do


def add_keylog_option(p: argparse.ArgumentParser) -> None:
    """--keylog, shared by the commands that read a capture file."""
    p.add_argument(
        "--keylog",
        default=None,
        metavar="KEYS",
        help=(
            "TLS key log (NSS format, as SSLKEYLOGFILE writes it) to decrypt TLS 1.2 and 1.3 sessions; "
            "secrets a pcapng carries in Decryption Secrets Blocks are used without it"
        ),
    )


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="podshark",
        description="Full-payload traffic analyzer: every API call, who made it, and what went wrong.",
        epilog="Run 'podshark COMMAND --help' for the options of a command.",
    )
    p.add_argument("--version", action="version", version=f"podshark {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    from dissect.filter import HELP as filter_help  # small and pure: shown by calls/export --help
    from podshark.tlsconf import WORKER_FLAGS, add_client_options  # --ca/--cert/--key for https:// hubs

    d = sub.add_parser(
        "dissect",
        help="read a pcap/pcapng file and print its calls",
        description=(
            "Reassemble the TCP conversations of a capture (pcap or pcapng, optionally gzip-compressed) "
            "and print one line per call: HTTP/1.x, HTTP/2, gRPC, DNS and Kafka request/response pairs "
            "with status, latency and anomaly flags, and one line per TLS session (decrypted into its "
            "calls with --keylog). --json prints the full Call record (headers and base64 bodies) per line."
        ),
    )
    d.add_argument("file", help="capture file (.pcap, .pcapng, optionally .gz)")
    add_keylog_option(d)
    d.add_argument("--json", action="store_true", help="one Call JSON object per line (the hub API's form)")
    d.add_argument("--no-bodies", action="store_true", help="with --json: leave bodies out")
    d.add_argument(
        "--wide",
        action="store_true",
        help="table: never shorten targets (a terminal gets them cut to its width; pipes get them whole)",
    )
    d.add_argument(
        "--progress",
        choices=("auto", "always", "never"),
        default="auto",
        help="progress bar on stderr: auto shows it for files over 8 MB when stderr is a terminal",
    )
    d.add_argument(
        "--max-body",
        type=_size,
        default=None,
        metavar="SIZE",
        help="decoded body bytes kept per message (default 1MiB; larger bodies are marked truncated)",
    )
    h = sub.add_parser(
        "hub",
        help="run the hub: ingest WebSocket, DuckDB store and query API",
        description=(
            "The hub service. Workers and 'podshark import' send calls to its ingest WebSocket; "
            "'podshark calls' and the TUI query it. Every endpoint but /healthz needs the bearer token "
            "from PODSHARK_TOKEN or --token-file."
        ),
    )
    h.add_argument("--db", required=True, type=Path, metavar="DIR", help="directory of the DuckDB files")
    h.add_argument("--listen", default="127.0.0.1:8898", metavar="HOST:PORT", help="default 127.0.0.1:8898")
    h.add_argument("--retain", default=None, metavar="AGE", help="drop calls stored longer ago (e.g. 7d)")
    h.add_argument("--max-size", type=_size, default=None, metavar="SIZE", help="keep the store under SIZE")
    h.add_argument("--token-file", default=None, metavar="FILE", help="file holding the bearer token")
    h.add_argument(
        "--insecure-no-token",
        action="store_true",
        help="run without a token (only on a loopback address)",
    )
    h.add_argument("--batch-interval", type=float, default=0.5, help=argparse.SUPPRESS)
    from podshark.hub_cmd import add_aggregate_arguments, add_alert_arguments, add_tls_arguments

    add_aggregate_arguments(h)
    add_alert_arguments(h)
    add_tls_arguments(h)

    i = sub.add_parser(
        "import",
        help="dissect a capture and send its calls to a hub",
        description=(
            "Dissect a pcap/pcapng file and send its calls to a running hub over the ingest WebSocket, "
            "in numbered batches that the hub acknowledges once stored. Importing a file twice stores "
            "its calls once."
        ),
    )
    i.add_argument("file", help="capture file (.pcap, .pcapng, optionally .gz)")
    add_keylog_option(i)
    i.add_argument("--hub", required=True, metavar="URL", help="hub URL, e.g. http://127.0.0.1:8898")
    i.add_argument("--token-file", default=None, metavar="FILE", help="file holding the bearer token")
    add_client_options(i)
    i.add_argument("--batch", type=int, default=1000, metavar="N", help="calls per batch (default 1000)")
    i.add_argument("--no-packets", action="store_true", help="send calls only, not the frames (no export)")
    i.add_argument(
        "--progress",
        choices=("auto", "always", "never"),
        default="auto",
        help="progress bar on stderr: auto shows it for files over 8 MB when stderr is a terminal",
    )

    c = sub.add_parser(
        "calls",
        epilog=filter_help,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        help="query a hub's history (table or JSON lines)",
        description=(
            "Print the calls a hub holds that match a filter, oldest first. Without --from/--to all "
            "history is searched; without --limit every match is printed."
        ),
    )
    c.add_argument("--hub", required=True, metavar="URL", help="hub URL, e.g. http://127.0.0.1:8898")
    c.add_argument("--filter", default="", metavar="EXPR", help="filter expression (default: every call)")
    c.add_argument("--from", dest="from_", default=None, metavar="T", help="RFC 3339 or relative (-5m)")
    c.add_argument("--to", default=None, metavar="T", help="RFC 3339 or relative (-5m)")
    c.add_argument("--limit", type=int, default=None, metavar="N", help="print at most N calls")
    c.add_argument("--json", action="store_true", help="one Call JSON object per line, bodies included")
    c.add_argument("--no-bodies", action="store_true", help="with --json: leave bodies out")
    c.add_argument("--token-file", default=None, metavar="FILE", help="file holding the bearer token")
    add_client_options(c)

    mp = sub.add_parser(
        "map",
        epilog=filter_help,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        help="the service map: who calls whom, with rates, errors, latency and bytes",
        description=(
            "Print a hub's service map for a window (default the last 15 minutes): one edge per client, "
            "server and protocol with calls/s, error rate, p50/p99 latency, bytes/s and connections; "
            "addresses outside the cluster are marked external. Without --filter it comes from the "
            "hub's aggregates (traffic that was never dissected included); with one, or for a window "
            "older than the aggregates keep, from the matching calls. --format dot writes Graphviz "
            "(podshark map --format dot | dot -Tsvg > map.svg); json carries each edge's filter, "
            "which selects exactly its calls in 'podshark calls'."
        ),
    )
    mp.add_argument("--hub", required=True, metavar="URL", help="hub URL, e.g. http://127.0.0.1:8898")
    mp.add_argument("--filter", default="", metavar="EXPR", help="only the calls that match (default: all)")
    mp.add_argument("--from", dest="from_", default=None, metavar="T", help="RFC 3339 or relative (-1h)")
    mp.add_argument("--to", default=None, metavar="T", help="RFC 3339 or relative (default: now)")
    mp.add_argument(
        "--format",
        choices=("table", "json", "dot"),
        default=None,
        help="output (default: table on a terminal, json otherwise)",
    )
    mp.add_argument("--limit", type=int, default=None, metavar="N", help="at most N edges, busiest first")
    mp.add_argument(
        "--source",
        choices=("auto", "calls", "aggregates"),
        default="auto",
        help="auto: aggregates without --filter, calls with one; calls: exact percentiles from the calls",
    )
    mp.add_argument("--token-file", default=None, metavar="FILE", help="file holding the bearer token")
    add_client_options(mp)

    e = sub.add_parser(
        "export",
        epilog=filter_help,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        help="write the frames of matching calls' connections to a pcapng file",
        description=(
            "Ask a hub for a pcapng of the original frames of the connections behind the calls that "
            "match a filter and window, byte for byte, for Wireshark or tshark. Without --from/--to "
            "all history is searched. --frames window keeps only the frames inside the window."
        ),
    )
    e.add_argument("--hub", required=True, metavar="URL", help="hub URL, e.g. http://127.0.0.1:8898")
    e.add_argument("--filter", default="", metavar="EXPR", help="filter expression (default: every call)")
    e.add_argument("--from", dest="from_", default=None, metavar="T", help="RFC 3339 or relative (-5m)")
    e.add_argument("--to", default=None, metavar="T", help="RFC 3339 or relative (-5m)")
    e.add_argument(
        "--frames",
        choices=("connections", "window"),
        default="connections",
        help="whole connections (default; HTTP/2 needs their start) or only frames inside the window",
    )
    e.add_argument("-o", "--output", required=True, metavar="OUT.pcapng", help="file to write ('-': stdout)")
    e.add_argument("--token-file", default=None, metavar="FILE", help="file holding the bearer token")
    add_client_options(e)
    e.add_argument(
        "--progress",
        choices=("auto", "always", "never"),
        default="auto",
        help="progress bar on stderr: auto shows it when stderr is a terminal",
    )

    o = sub.add_parser(
        "open",
        help="load a capture into an embedded hub and browse it",
        description=(
            "Start a hub on loopback, load the capture into it (calls and frames, as `podshark import` "
            "does) and open the terminal UI on the whole capture. The store is kept per capture under "
            "~/.cache/podshark/open/, so opening the same file again is instant. With --no-ui the hub "
            "keeps running until Ctrl-C and its URL and token are printed, for `podshark calls`, "
            "`podshark export` or curl."
        ),
    )
    o.add_argument("file", help="capture file (.pcap, .pcapng, optionally .gz)")
    add_keylog_option(o)
    o.add_argument("--db", type=Path, default=None, metavar="DIR", help="store directory (default: per file)")
    o.add_argument(
        "--listen",
        default="127.0.0.1:0",
        metavar="HOST:PORT",
        help="hub address (default: a free local port)",
    )
    o.add_argument("--token-file", default=None, metavar="FILE", help="hub token (default: a random one)")
    o.add_argument("--no-ui", action="store_true", help="serve the hub and print its URL and token; no TUI")

    u = sub.add_parser(
        "ui",
        help="the terminal UI against a running hub",
        description=(
            "Browse a hub's calls live in the terminal: filter, details, replay, export, stats. The token "
            "comes from PODSHARK_TOKEN or --token-file. The UI opens even when the hub is down or refuses "
            "the token, says so, and keeps retrying."
        ),
    )
    u.add_argument("--hub", required=True, metavar="URL", help="hub URL, e.g. http://127.0.0.1:8898")
    u.add_argument("--token-file", default=None, metavar="FILE", help="file holding the bearer token")
    add_client_options(u)
    u.add_argument(
        "--history",
        action="store_true",
        help="start with the stored history, newest first (default: the live view; j/G load history)",
    )
    from podshark.worker_cmd import add_capture_options, default_state_dir

    w = sub.add_parser(
        "worker",
        help="capture this node's traffic and stream the calls to a hub",
        description=(
            "The node worker: AF_PACKET capture on this node's pod interfaces (or --interface), HTTP/1, "
            "HTTP/2, gRPC, DNS and Kafka dissection, the process behind each connection, redaction of "
            "secrets, and one WebSocket to the hub with an on-disk spool while the hub is away. Raw "
            "packets stay in a bounded spool on the node for the hub's pcap export. Needs root (or "
            "CAP_NET_RAW+CAP_NET_ADMIN). The token comes from PODSHARK_TOKEN or --token-file."
        ),
    )
    w.add_argument("--hub", required=True, metavar="URL", help="hub URL, e.g. http://podshark-hub:8898")
    w.add_argument("--token-file", default=None, metavar="FILE", help="file holding the bearer token")
    add_client_options(w, WORKER_FLAGS)
    add_capture_options(w, state_default=default_state_dir())

    from podshark.local_cmd import add_session_options
    from podshark.paths import cache_dir

    lo = sub.add_parser(
        "local",
        help="capture this machine live into an embedded hub and browse it (root)",
        description=(
            "Worker, hub and TUI in one process on this machine: every interface that is up (loopback "
            "included) unless --interface says otherwise, the hub's own port left out. The history is "
            "kept under ~/.cache/podshark/local/db. Needs root (or CAP_NET_RAW+CAP_NET_ADMIN)."
        ),
    )
    add_session_options(lo, "local")
    add_capture_options(lo, state_default=str(cache_dir("local") / "state"))

    dm = sub.add_parser(
        "demo",
        help="run a small multi-service workload in network namespaces and browse it live (root)",
        description=(
            "Builds a few 'pods' (network namespaces on a bridge): a load generator, a frontend, an HTTP "
            "API, a gRPC inventory service and DNS, with some errors and slow calls; captures them live "
            "into an embedded hub and opens the TUI. Everything is removed when the demo ends."
        ),
    )
    dm.add_argument(
        "--rate", type=float, default=5.0, metavar="N", help="frontend requests per second (default 5)"
    )
    add_session_options(dm, "demo")
    add_capture_options(dm, state_default=str(cache_dir("demo") / "state"))

    dr = sub.add_parser(
        "doctor",
        help="check this node can capture (AF_PACKET, eBPF, TLS per process) and what workers report",
        description=(
            "Checks, on this node: root/capabilities, AF_PACKET, tcpdump for capture filters, BTF and "
            "libbpf, whether the eBPF connect tracer and the TLS tracer load, the interfaces the worker "
            "would capture, and per process whether its TLS can be traced (OpenSSL's libssl: yes; Go "
            "crypto/tls or BoringSSL linked in: no, said by name). With --hub, each worker's own report. "
            "Exit 0 when nothing failed, 1 otherwise."
        ),
    )
    dr.add_argument("--hub", default=None, metavar="URL", help="also show what the hub's workers report")
    dr.add_argument("--token-file", default=None, metavar="FILE", help="file holding the hub's bearer token")
    add_client_options(dr)
    dr.add_argument("--hub-only", action="store_true", help="skip the checks of this node")
    dr.add_argument("--no-processes", action="store_true", help="skip the per-process TLS scan")
    tp = sub.add_parser(
        "tap",
        help="install podshark in the cluster, port-forward its hub and open the UI",
        description=(
            "Renders manifests/ for the options (namespace, image, a random token kept across re-runs, "
            "storage), applies them to the kubeconfig's context, waits for the worker DaemonSet and the "
            "hub with progress, port-forwards the hub to localhost (restarted if it drops) and opens the "
            "TUI. Everything stays installed afterwards: `podshark clean` removes it."
        ),
    )
    from podshark import clean_cmd, tap_cmd

    tap_cmd.add_arguments(tp)
    cl = sub.add_parser("clean", help="remove what podshark tap installed")
    clean_cmd.add_arguments(cl)
    ce = sub.add_parser(
        "certs",
        help="make a CA, the hub's certificate and worker/client certificates (TLS, mutual TLS)",
        description=(
            "Writes into DIR a private CA (ca.crt, ca.key; reused when DIR has one), the hub's server "
            "certificate (hub.crt, hub.key) for the --hub-name names plus localhost, 127.0.0.1 and ::1, "
            "and a client certificate per --worker and --client (NAME.crt, NAME.key). ECDSA P-256; keys "
            "mode 0600. Existing files are kept unless --force. Prints the hub, worker and client "
            "commands that use them."
        ),
    )
    from podshark import certs_cmd

    certs_cmd.add_arguments(ce)
    return p


def _size(text: str) -> int:
    """Parse `1048576`, `512k`, `1M`, `1MiB` into bytes."""
    t = text.strip().lower().removesuffix("ib").removesuffix("b")
    mult = 1
    if t and t[-1] in "kmg":
        mult = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}[t[-1]]
        t = t[:-1]
    try:
        n = int(float(t) * mult)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (try 1048576, 512k or 1MiB)") from None
    if n < 0:
        raise argparse.ArgumentTypeError("a size cannot be negative")
    return n


# command -> the module whose `run(args) -> int` carries it out, imported only when chosen
COMMANDS: dict[str, str] = {
    "dissect": "podshark.dissect_cmd",
    "hub": "podshark.hub_cmd",
    "import": "podshark.import_cmd",
    "calls": "podshark.calls_cmd",
    "map": "podshark.map_cmd",
    "export": "podshark.export_cmd",
    "open": "podshark.open_cmd",
    "ui": "podshark.ui_cmd",
    "worker": "podshark.worker_cmd",
    "local": "podshark.local_cmd",
    "demo": "podshark.demo_cmd",
    "doctor": "podshark.doctor_cmd",
    "tap": "podshark.tap_cmd",
    "clean": "podshark.clean_cmd",
    "certs": "podshark.certs_cmd",
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    module = COMMANDS.get(args.command)
    if module is None:
        parser.error(f"unknown command {args.command!r}")
    run: Callable[[argparse.Namespace], int] = importlib.import_module(module).run
    return run(args)
