"""The `podshark` command: one argparse front door, each subcommand in its own module.

Subcommand modules are imported only when chosen, so each stage pulls in just its own
dependencies (the worker never imports DuckDB, the hub never imports Textual).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from podshark import __version__

EXIT_USAGE = 2  # bad arguments or unreadable input: the message says what to do


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="podshark",
        description="Full-payload traffic analyzer: every API call, who made it, and what went wrong.",
        epilog="Run 'podshark COMMAND --help' for the options of a command.",
    )
    p.add_argument("--version", action="version", version=f"podshark {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    d = sub.add_parser(
        "dissect",
        help="read a pcap/pcapng file and print its calls",
        description=(
            "Reassemble the TCP conversations of a capture (pcap or pcapng, optionally gzip-compressed) "
            "and print one line per call: HTTP/1.x request/response pairs with status, latency and "
            "anomaly flags. --json prints the full Call record (headers and base64 bodies) per line."
        ),
    )
    d.add_argument("file", help="capture file (.pcap, .pcapng, optionally .gz)")
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


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    if args.command == "dissect":
        from podshark.dissect_cmd import run

        return run(args)
    parser.error(f"unknown command {args.command!r}")
    return EXIT_USAGE
