"""`podshark clean`: remove what `podshark tap` installed (its namespace, and the cluster role and
binding named after it). Safe to run twice; other namespaces' installations are left alone."""

from __future__ import annotations

import argparse
import sys

EXIT_FAIL = 1
EXIT_INPUT = 2


def add_arguments(p: argparse.ArgumentParser) -> None:
    from podshark.tap_cmd import add_cluster_options

    add_cluster_options(p)
    p.add_argument(
        "--wait", type=float, default=120.0, metavar="S", help="wait for the namespace to go (0: don't)"
    )


def run(args: argparse.Namespace) -> int:
    from podshark.tap.kube import TapError, api_client, clean

    try:
        api = api_client(args.kubeconfig, args.context)
    except TapError as e:
        print(f"podshark: error: {e}", file=sys.stderr)
        return EXIT_INPUT
    try:
        deleted = clean(
            api,
            args.namespace,
            wait=args.wait,
            progress=lambda line: print(f"podshark clean: {line}", file=sys.stderr),
        )
    except TapError as e:
        print(f"podshark: error: {e}", file=sys.stderr)
        return EXIT_FAIL
    if not deleted:
        print(f"podshark clean: nothing of podshark in namespace {args.namespace}", file=sys.stderr)
    return 0
