"""``python -m podshark.demo``: run the demo workload by hand until Ctrl-C (or clean up after a crash).

Prints the topology and the interfaces to capture, e.g. for ``tcpdump -i psd1a2b-br -w demo.pcap``
or ``podshark worker --interface ...``; ``--cleanup`` only removes what killed demos left behind.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Sequence
from types import FrameType

from podshark.demo.netns import cleanup_stale
from podshark.demo.workload import Demo, DemoError, requirements_missing


def describe(demo: Demo) -> str:
    t = demo.topology
    lines = [f"demo {t.prefix}: subnet {t.subnet}, bridge {t.bridge}"]
    for s in t.services:
        serves = f"{s.protocol} on {s.port}/{s.transport}" if s.port else "client only"
        lines.append(f"  {s.name:<10} {s.ip:<15} ns {s.namespace:<18} veth {s.host_if:<15} {serves}")
    lines.append("edges:")
    lines += [f"  {e.client} -> {e.server} ({e.protocol})" for e in t.edges]
    lines.append(f"capture: {' '.join(demo.interfaces())}  (or the bridge alone: {t.bridge})")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m podshark.demo", description=__doc__)
    p.add_argument("--rate", type=float, default=5.0, help="loadgen requests per second (default 5)")
    p.add_argument("--dns", choices=("auto", "dnsmasq", "python"), default="auto", help="DNS server to run")
    p.add_argument("--cleanup", action="store_true", help="only remove the leftovers of killed demos")
    args = p.parse_args(argv)
    reason = requirements_missing()
    if reason:
        print(f"error: {reason}", file=sys.stderr)
        return 1
    if args.cleanup:
        removed = cleanup_stale()
        print("\n".join(removed) if removed else "nothing to clean up")
        return 0
    done = threading.Event()

    def stop(signum: int, frame: FrameType | None) -> None:
        done.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        demo = Demo(rate=args.rate, dns_backend=args.dns)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        demo.start()
    except DemoError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    try:
        for line in demo.cleaned:
            print(f"removed leftover: {line}", file=sys.stderr)
        print(describe(demo), flush=True)
        print("running; Ctrl-C stops and removes everything", file=sys.stderr, flush=True)
        done.wait()
    finally:
        demo.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
