"""`podshark calls --hub URL --filter EXPR`: a hub's history, as a table or JSON lines.

Pages through `GET /api/v1/calls` oldest first with the cursor until the matches (or `--limit`)
run out. `--json` prints each call's JSON form as the hub sent it, bodies included unless
`--no-bodies`. An https:// hub is verified with `--ca` (and `--cert`/`--key` when it wants a client
certificate: `podshark/tlsconf.py`); a TLS failure is one line naming the option to fix.
"""

from __future__ import annotations

import argparse
import os
import ssl
import sys

import msgspec

from podshark.hub_get import EXIT_USAGE, HubError, hub_get

PAGE = 1000


class _Page(msgspec.Struct):
    calls: list[msgspec.Raw]
    next_cursor: str | None = None


def fetch_page(
    hub: str,
    token: str | None,
    params: dict[str, str],
    context: ssl.SSLContext | None = None,
    has_cert: bool = False,
) -> tuple[list[bytes], str | None]:
    """One page: the raw JSON of each call, and the next cursor. `context`: TLS for an https:// hub."""
    body = hub_get(hub, "/api/v1/calls", params, token, context, has_cert=has_cert)
    page = msgspec.json.decode(body, type=_Page)
    return [bytes(c) for c in page.calls], page.next_cursor


def run(args: argparse.Namespace) -> int:
    from dissect.model import Call
    from hub.auth import AuthError, token_from
    from podshark.dissect_cmd import TableWriter
    from podshark.tlsconf import TlsConfigError, client_context

    try:
        token = token_from(args.token_file)
        context = client_context(args, args.hub)
    except (AuthError, TlsConfigError) as e:
        print(f"podshark: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    if args.limit is not None and args.limit < 1:
        print("podshark: error: --limit must be at least 1", file=sys.stderr)
        return EXIT_USAGE
    params = {"filter": args.filter, "order": "asc"}
    if args.from_:
        params["from"] = args.from_
    if args.to:
        params["to"] = args.to
    if args.json and not args.no_bodies:
        params["bodies"] = "1"
    out = sys.stdout
    table = None if args.json else TableWriter(out)
    left = args.limit
    cursor: str | None = None
    try:
        while True:
            page = PAGE if left is None else min(PAGE, left)
            q = dict(params, limit=str(page))
            if cursor:
                q["cursor"] = cursor
            calls, cursor = fetch_page(args.hub, token, q, context, bool(args.cert))
            for raw in calls:
                if table is None:
                    out.write(raw.decode() + "\n")
                else:
                    table.write(Call.from_json(raw))
            if table is not None:
                table.flush()
            out.flush()
            if left is not None:
                left -= len(calls)
                if left <= 0:
                    break
            if cursor is None:
                break
    except HubError as e:
        print(f"podshark: error: {e}", file=sys.stderr)
        return e.code
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    if table is not None:
        table.close()
    return 0
