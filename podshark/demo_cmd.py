"""`podshark demo`: a small multi-service workload of our own, captured live and opened in the TUI.

The workload (podshark/demo/) runs in network namespaces joined by a bridge, like pods on a node: a
load generator calls a frontend, which looks its backends up in DNS and calls an HTTP API and a gRPC
service — with some errors and some slow calls, and a bearer token that the worker redacts. The
worker captures the pods' host-side interfaces into an embedded hub, exactly as `podshark local`
does, and the TUI opens on it. Everything the demo made is removed when it ends (and a demo killed
with -9 is cleaned up by the next one).
"""

from __future__ import annotations

import argparse
import sys

EXIT_INPUT = 2


def run(args: argparse.Namespace) -> int:
    from podshark.demo import Demo, requirements_missing
    from podshark.local_cmd import live_session
    from podshark.worker_cmd import capture_problem

    problem = requirements_missing() or capture_problem()
    if problem:
        print(f"podshark: error: {problem}", file=sys.stderr)
        print("  (without root, browse a capture file instead: podshark open FILE.pcap)", file=sys.stderr)
        return EXIT_INPUT
    try:
        demo = Demo(rate=args.rate)
    except ValueError as e:
        print(f"podshark: error: {e}", file=sys.stderr)
        return EXIT_INPUT
    print(
        "podshark demo: starting the workload (namespaces, dns, api, inventory, frontend, loadgen)",
        file=sys.stderr,
    )
    try:
        # traffic waits until the worker captures, so every conversation is seen from its start
        demo.start(hold_traffic=True)
    except Exception as e:
        demo.stop()
        print(f"podshark: error: the demo workload did not start: {e}", file=sys.stderr)
        return 1
    try:
        edges = ", ".join(f"{e.client}->{e.server} ({e.protocol})" for e in demo.topology.edges)
        return live_session(
            args,
            "demo",
            demo.interfaces(),
            banner=f"podshark demo: topology {edges}",
            on_capturing=demo.release_traffic,
        )
    finally:
        demo.stop()
