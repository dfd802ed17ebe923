"""`podshark hub --db PATH --listen HOST:PORT`: the hub service (ingest, store, query API)."""

from __future__ import annotations

import argparse
import logging
import sys

EXIT_USAGE = 2


def split_listen(text: str) -> tuple[str, int]:
    """`HOST:PORT`, `[::1]:PORT` or `:PORT` (all interfaces)."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"--listen wants HOST:PORT, not {text!r}")
    host = host.strip("[]") or "0.0.0.0"
    return host, int(port)


def run(args: argparse.Namespace) -> int:
    from aiohttp import web

    from dissect.filter import parse_duration
    from hub.app import make_app
    from hub.auth import AuthError, check_startup, token_from
    from hub.store import Store

    try:
        host, port = split_listen(args.listen)
    except ValueError as e:
        print(f"podshark: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    retain_ns = None
    if args.retain:
        retain_ns = parse_duration(args.retain)
        if not retain_ns:
            print(
                f"podshark: error: --retain wants a duration like 7d or 12h, not {args.retain!r}",
                file=sys.stderr,
            )
            return EXIT_USAGE
    try:
        token = token_from(args.token_file)
        check_startup(token, host, args.insecure_no_token)
    except AuthError as e:
        print(f"podshark: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    store = Store(args.db, retain_ns=retain_ns, max_bytes=args.max_size)
    try:
        app = make_app(store, token, batch_interval=args.batch_interval)
        print(f"podshark hub: listening on http://{host}:{port} (db {args.db})", file=sys.stderr, flush=True)
        web.run_app(app, host=host, port=port, print=None, access_log=None)
    finally:
        store.close()
    return 0
