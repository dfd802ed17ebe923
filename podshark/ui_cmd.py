"""`podshark ui --hub URL [--token-file F] [--history]`: the terminal UI against a running hub
(after `kubectl port-forward`, or any hub you can reach).

The token is read like every other client's (`--token-file`, else PODSHARK_TOKEN). A hub that is
down or refuses the token does not stop the UI: it opens, says so, and keeps retrying, so it can
be started before the port-forward is up.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys

EXIT_USAGE = 2


def run(args: argparse.Namespace) -> int:
    from hub.auth import AuthError, token_from

    url = args.hub.strip()
    if not url.startswith(("http://", "https://")):
        print(f"podshark: error: --hub must be an http:// or https:// URL, not {url!r}", file=sys.stderr)
        return EXIT_USAGE
    try:
        token = token_from(args.token_file)
    except AuthError as e:
        print(f"podshark: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    if importlib.util.find_spec("textual") is None:
        print(
            "podshark: error: the terminal UI needs Textual; install podshark with its dependencies "
            "(pipx install podshark) or use 'podshark calls'",
            file=sys.stderr,
        )
        return EXIT_USAGE
    if token is None:
        print(
            "podshark ui: no token (set PODSHARK_TOKEN or --token-file); only a hub started with "
            "--insecure-no-token will answer",
            file=sys.stderr,
        )
    from tui.app import run_app

    return run_app(url, token, whole_history=args.history)
