"""``python -m podshark.demo``: run the demo workload by hand until Ctrl-C (or clean up after a crash).

Prints the topology and the interfaces to capture, e.g. for ``tcpdump -i psd1a2b-br -w demo.pcap``
or ``podshark worker --interface ...``; ``--cleanup`` only removes what killed demos left behind;
``--record FILE --seconds N`` writes N seconds of the demo's traffic (tcpdump on its bridge, from the
first request on) to a pcap and ends: that is how fixtures/pcaps/demo__podshark_demo.pcap was made.
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


def record(demo: Demo, path: str, seconds: float) -> int:
    """tcpdump on the bridge (promiscuous: one copy of each packet), then let the traffic go."""
    import subprocess
    import time

    dump = subprocess.Popen(
        ["tcpdump", "-i", demo.bridge, "-s", "0", "-U", "-w", path],
        stderr=subprocess.PIPE,
        text=True,
    )
    assert dump.stderr is not None
    line = dump.stderr.readline()  # "listening on ...": capturing from here on
    if "listening" not in line:
        dump.kill()
        print(f"error: tcpdump did not start: {line.strip()}", file=sys.stderr)
        return 1
    demo.release_traffic()
    time.sleep(seconds)
    demo.stop()  # connections end (FIN) while tcpdump still listens
    time.sleep(0.5)
    dump.terminate()
    _out, err = dump.communicate(timeout=10)
    print(f"wrote {path}: {(line + err).strip().splitlines()[-3:]}", file=sys.stderr)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m podshark.demo", description=__doc__)
    p.add_argument("--rate", type=float, default=5.0, help="loadgen requests per second (default 5)")
    p.add_argument("--dns", choices=("auto", "dnsmasq", "python"), default="auto", help="DNS server to run")
    p.add_argument("--cleanup", action="store_true", help="only remove the leftovers of killed demos")
    p.add_argument("--record", metavar="FILE", help="write the traffic to FILE (pcap, by tcpdump) and stop")
    p.add_argument("--seconds", type=float, default=20.0, help="with --record: how long (default 20)")
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
        demo.start(hold_traffic=args.record is not None)
    except DemoError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if args.record is not None:
        try:
            return record(demo, args.record, args.seconds)
        finally:
            demo.stop()
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
