"""`podshark local`: worker + embedded hub + TUI on this machine, live.

Everything runs in this one process, and still talks through the real interfaces: the hub on its own
thread (hub/embedded.py) serves its API on loopback with a random token, the worker (capture/worker.py)
runs on another thread and streams to the hub's ingest WebSocket, and the TUI on the main thread is the
same client `podshark ui` is. The worker leaves the hub's own port out of the capture, or the TUI's
requests would show up as calls, each one making more.

Default interfaces: every interface that is up, loopback included (a laptop has no pod veths); the
store keeps its history under ~/.cache/podshark/local unless `--db` says otherwise. With `--no-ui`
(scripts, CI, a machine without a terminal) it captures until Ctrl-C or `--duration`, then prints a
summary and how to query the hub.
"""

from __future__ import annotations

import argparse
import importlib.util
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from podshark.paths import cache_dir

EXIT_FAIL = 1
EXIT_INPUT = 2


def add_session_options(p: argparse.ArgumentParser, name: str) -> None:
    """Options of the live sessions (`local`, `demo`): where the hub keeps its store, and the UI."""
    p.add_argument(
        "--db",
        type=Path,
        default=None,
        metavar="DIR",
        help=f"store directory (default ~/.cache/podshark/{name}/db)",
    )
    p.add_argument(
        "--listen", default="127.0.0.1:0", metavar="HOST:PORT", help="hub address (default: a free port)"
    )
    p.add_argument(
        "--no-ui", action="store_true", help="no TUI: capture until Ctrl-C or --duration, then summarise"
    )
    p.add_argument("--duration", type=float, default=None, metavar="SECONDS", help="stop after this long")


def up_interfaces() -> list[str]:
    from capture.interfaces import list_interfaces

    return [i.name for i in list_interfaces() if i.up]


def run(args: argparse.Namespace) -> int:
    from podshark.worker_cmd import capture_problem

    problem = capture_problem()
    if problem:
        print(f"podshark: error: podshark local captures live: {problem}", file=sys.stderr)
        print("  (to browse a capture file without root: podshark open FILE.pcap)", file=sys.stderr)
        return EXIT_INPUT
    interfaces = args.interface or up_interfaces()
    return live_session(args, "local", interfaces)


def live_session(
    args: argparse.Namespace,
    name: str,
    interfaces: list[str],
    banner: str = "",
    on_capturing: Callable[[], None] | None = None,
) -> int:
    """Embedded hub + worker on ``interfaces`` + TUI (or wait), as `local` and `demo` run them."""
    from capture.worker import Worker, WorkerError
    from hub.auth import AuthError, token_from
    from hub.embedded import EmbeddedHub
    from podshark.hub_cmd import split_listen
    from podshark.worker_cmd import worker_config

    try:
        host, port = split_listen(args.listen)
        token = token_from(getattr(args, "token_file", None))
    except (ValueError, AuthError) as e:
        print(f"podshark: error: {e}", file=sys.stderr)
        return EXIT_INPUT
    db = args.db or cache_dir(name) / "db"
    try:
        hub = EmbeddedHub(db, host=host, port=port, token=token).start()
    except OSError as e:
        print(f"podshark: error: cannot start the hub on {args.listen} with db {db}: {e}", file=sys.stderr)
        return EXIT_FAIL
    worker: Worker | None = None
    try:
        args.interface = interfaces
        if args.state_dir is None:
            args.state_dir = cache_dir(name) / "state"
        worker = Worker(worker_config(args, hub.url, hub.token))
        try:
            worker.start_in_thread()
        except (WorkerError, OSError) as e:
            print(f"podshark: error: {e}", file=sys.stderr)
            return EXIT_INPUT
        print(
            f"podshark {name}: capturing on {', '.join(sorted(worker.capturing)) or 'nothing yet'}",
            file=sys.stderr,
        )
        for w in worker.warnings:
            print(f"podshark {name}: {w}", file=sys.stderr)
        if banner:
            print(banner, file=sys.stderr)
        if on_capturing is not None:
            on_capturing()
        ui = not args.no_ui and sys.stdout.isatty() and importlib.util.find_spec("tui.app") is not None
        if ui:
            from tui.app import run_app  # type: ignore[import-not-found, unused-ignore]

            return int(run_app(hub.url, hub.token, whole_history=False))
        print(f"hub:   {hub.url}")
        print(f"token: {hub.token}")
        print(f"try:   PODSHARK_TOKEN={hub.token} podshark ui --hub {hub.url}", flush=True)
        _wait(args.duration)
        return 0
    finally:
        if worker is not None:
            worker.stop()
            _summary(name, worker)
        hub.stop()


def _summary(name: str, worker: Any) -> None:
    counters = worker.uplink.counters() if worker.uplink is not None else {}
    stats = worker.stats()
    print(
        f"podshark {name}: {worker.calls} calls ({counters.get('acked', 0)} stored), "
        f"{stats.get('packets_captured', 0)} packets, "
        f"{stats['drops'].get('kernel', 0)} dropped by the kernel, "
        f"{counters.get('dropped', 0)} calls dropped by the uplink",
        file=sys.stderr,
    )


def _wait(duration: float | None) -> None:
    done = threading.Event()

    def stop(signum: int, frame: object) -> None:
        done.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, stop)
    deadline = None if duration is None else time.monotonic() + duration
    while not done.is_set():
        left = 3600.0 if deadline is None else deadline - time.monotonic()
        if left <= 0:
            break
        done.wait(min(left, 3600.0))
