"""Entry point of one demo service process.

``python -m podshark.demo.serve --workdir DIR --service NAME --parent PID``

The demo starts each service with ``ip netns exec <namespace>`` in front of this, so the process
runs inside its pod's network namespace. In order, it: names itself after the service (process
identity then shows ``api``, not ``python3``), ties its life to the demo process (`--parent`), reads
``<workdir>/config.json`` and serves; the service reports ready through
``<workdir>/ready/<service>`` (see `podshark.demo.runtime.Lifecycle`). Anything fatal is one line on stderr —
which the demo sends to ``<workdir>/logs/<service>.log`` and quotes when start-up fails — and a
non-zero exit.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from pathlib import Path

from podshark.demo.runtime import Lifecycle, log, set_process_name, start_lifeline

#: service name -> module with ``serve(cfg, life)`` (see `podshark.demo.runtime.Lifecycle`)
SERVICE_MODULES = {
    "api": "podshark.demo.api",
    "inventory": "podshark.demo.inventory",
    "dns": "podshark.demo.dns",
    "frontend": "podshark.demo.frontend",
    "loadgen": "podshark.demo.loadgen",
}


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m podshark.demo.serve", description="run one demo service")
    p.add_argument("--workdir", required=True, type=Path)
    p.add_argument("--service", required=True, choices=sorted(SERVICE_MODULES))
    p.add_argument("--parent", required=True, type=int, help="pid of the demo; the service ends when it does")
    args = p.parse_args(argv)
    set_process_name(args.service)  # first, before any thread exists: threads inherit the name
    start_lifeline(args.parent)
    from podshark.demo.config import DemoConfig

    try:
        cfg = DemoConfig.read(args.workdir)
        module = importlib.import_module(SERVICE_MODULES[args.service])
    except (ValueError, ImportError) as e:
        log(args.service, f"cannot start: {e}")
        return 1
    try:
        module.serve(cfg, Lifecycle(args.workdir, args.service))
    except KeyboardInterrupt:
        return 0
    except OSError as e:
        log(args.service, f"stopped: {e}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
