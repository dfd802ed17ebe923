"""`podshark clean`: remove what `podshark tap` installed (its namespace, and the cluster role and
binding named after it) and the copy of the hub's CA certificate tap kept for this cluster and
namespace. Safe to run twice; other namespaces' installations are left alone."""

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
    from podshark.tap import tls
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
    ca = tls.local_ca_path(api.configuration.host, args.namespace)
    try:
        if tls.remove_local_ca(ca):
            deleted.append(str(ca))
            print(f"podshark clean: removed the local copy of the hub's CA, {ca}", file=sys.stderr)
    except OSError as e:
        print(f"podshark clean: warning: cannot remove {ca}: {e.strerror}", file=sys.stderr)
    if not deleted:
        print(f"podshark clean: nothing of podshark in namespace {args.namespace}", file=sys.stderr)
    return 0
