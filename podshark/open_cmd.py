"""`podshark open FILE [--keylog KEYS] [--db DIR] [--no-ui]`: a capture in an embedded hub, then the TUI.

The capture is loaded the way a user would load it into any hub: an embedded hub starts on loopback
(hub/embedded.py: its own thread, a random port unless `--listen`, a random token unless
PODSHARK_TOKEN or --token-file), and `podshark import`'s client sends the calls and frames through
the ingest WebSocket. The store defaults to a directory per capture under the user's cache
(`~/.cache/podshark/open/<capture id>`, the id being the one calls are numbered with), so opening
the same file again is instant: every call is already stored, and the import finds nothing new.

Then the TUI opens on that hub, showing the whole capture however old it is. With `--no-ui` (or
before the TUI is installed) the hub keeps running until Ctrl-C and the command prints its URL and
token, so `podshark calls`, `podshark export`, curl or a browser can use it.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import signal
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from dissect.tls.keylog import KeyLog

EXIT_FAIL = 1
EXIT_INPUT = 2


def default_db(file: str, keylog: KeyLog | None = None) -> Path:
    """The per-capture store: named by the id its calls get, which a --keylog changes (decrypted
    calls are other calls than the opaque TLS ones of the same file)."""
    from dissect.engine import file_source_id
    from podshark.paths import cache_dir

    return cache_dir("open") / file_source_id(file, keylog)


def run(args: argparse.Namespace) -> int:
    from dissect.tls.keylog import KeyLogError
    from hub.auth import AuthError, token_from
    from hub.embedded import EmbeddedHub
    from podshark import import_cmd
    from podshark.cli import build_parser
    from podshark.dissect_cmd import load_keylog
    from podshark.hub_cmd import split_listen

    if not os.path.isfile(args.file):
        print(f"podshark: error: no such capture file: {args.file}", file=sys.stderr)
        return EXIT_INPUT
    try:
        host, port = split_listen(args.listen)
        token = token_from(args.token_file)
        keylog = load_keylog(args.keylog)
    except (ValueError, AuthError, KeyLogError) as e:
        print(f"podshark: error: {e}", file=sys.stderr)
        return EXIT_INPUT
    try:
        db = args.db or default_db(args.file, keylog)
    except OSError as e:
        print(f"podshark: error: cannot read {args.file}: {e}", file=sys.stderr)
        return EXIT_INPUT
    try:
        hub = EmbeddedHub(db, host=host, port=port, token=token).start()
    except OSError as e:
        print(f"podshark: error: cannot start the hub on {args.listen} with db {db}: {e}", file=sys.stderr)
        return EXIT_FAIL
    try:
        print(f"podshark open: loading {args.file} into {db}", file=sys.stderr, flush=True)
        # the import client with its own defaults, as `podshark import FILE --hub URL` would run
        imp = build_parser().parse_args(
            ["import", args.file, "--hub", hub.url, *(["--keylog", args.keylog] if args.keylog else [])]
        )
        os.environ["PODSHARK_TOKEN"] = hub.token  # the client reads it like any other
        rc = import_cmd.run(imp)
        if rc != 0:
            print("podshark: error: the capture did not load completely (see above)", file=sys.stderr)
            return rc
        ui = not args.no_ui and importlib.util.find_spec("tui.app") is not None
        if ui:
            from tui.app import run_app  # type: ignore[import-not-found, unused-ignore]

            return int(run_app(hub.url, hub.token, whole_history=True))
        if not args.no_ui:
            print("podshark open: the terminal UI is not installed here; serving the hub only")
        print(f"hub:   {hub.url}")
        print(f"token: {hub.token}")
        print(f"try:   PODSHARK_TOKEN={hub.token} podshark calls --hub {hub.url} --limit 20")
        print("Ctrl-C stops the hub.", flush=True)
        _wait_for_signal()
        return 0
    finally:
        hub.stop()


def _wait_for_signal() -> None:
    done = threading.Event()

    def stop(signum: int, frame: object) -> None:
        done.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, stop)
    while not done.wait(3600):
        pass
