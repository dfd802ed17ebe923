"""`podshark ui --hub URL [--token-file F] [--history]`: the terminal UI against a running hub
(after `kubectl port-forward`, or any hub you can reach).

The token is read like every other client's (`--token-file`, else PODSHARK_TOKEN). A hub that is
down or refuses the token does not stop the UI: it opens, says so, and keeps retrying, so it can
be started before the port-forward is up.

An https:// hub is verified with `--ca` (`--cert`/`--key` when it wants a client certificate); the
UI's connection line then names the option to fix when TLS fails (`podshark/tlsconf.py`).
"""

from __future__ import annotations

import argparse
import importlib.util
import ssl
import sys

EXIT_USAGE = 2


def run(args: argparse.Namespace) -> int:
    from hub.auth import AuthError, token_from
    from podshark.tlsconf import TlsConfigError, client_context

    url = args.hub.strip()
    if not url.startswith(("http://", "https://")):
        print(f"podshark: error: --hub must be an http:// or https:// URL, not {url!r}", file=sys.stderr)
        return EXIT_USAGE
    try:
        token = token_from(args.token_file)
        context = client_context(args, url)
    except (AuthError, TlsConfigError) as e:
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
    return run_tui(url, token, context, whole_history=args.history, has_cert=bool(args.cert))


def run_tui(
    url: str,
    token: str | None,
    context: ssl.SSLContext | None,
    *,
    whole_history: bool = False,
    has_cert: bool = False,
) -> int:
    """`tui.app.run_app` with TLS: the app's hub client gets the context and the explanations of
    TLS failures (`podshark tap` opens the UI through this too)."""
    from podshark.tlsconf import explain
    from tui.app import run_app

    return run_app(
        url, token, whole_history, ssl=context, explain=lambda e: explain(e, url, has_cert=has_cert)
    )
