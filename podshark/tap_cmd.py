"""`podshark tap`: install podshark in the current cluster, wait for it, port-forward the hub, open the TUI.

    podshark tap                                  # namespace podshark, kubeconfig's current context
    podshark tap --dry-run > podshark.yaml        # the manifests (Secret with a fresh token included)
    podshark tap --context prod --namespace ops-podshark --storage hostpath --no-ui

TLS is on unless `--no-tls`: the hub serves HTTPS and requires the workers' client certificates,
from a Secret tap makes (or keeps, like the token: `podshark/tap/tls.py`). tap's own port-forward
client trusts that CA, whose certificate it writes under ~/.config/podshark/tap/ for other clients
(`podshark ui --hub https://127.0.0.1:PORT --ca ...`, which tap prints).

Exit codes: 0 after the UI (or, with --no-ui, Ctrl-C) ends; 1 when the cluster refused or the
rollout did not finish; 2 for bad options or an unusable kubeconfig. Everything stays installed
when tap exits: `podshark clean` removes it.
"""

from __future__ import annotations

import argparse
import secrets
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path

EXIT_FAIL = 1
EXIT_INPUT = 2


def add_cluster_options(p: argparse.ArgumentParser) -> None:
    """Which cluster and namespace: shared by tap and clean."""
    from podshark.tap.render import DEFAULT_NAMESPACE

    p.add_argument("--namespace", "-n", default=DEFAULT_NAMESPACE, help=f"default {DEFAULT_NAMESPACE}")
    p.add_argument("--context", default=None, metavar="CTX", help="kubeconfig context (default: current)")
    p.add_argument(
        "--kubeconfig", default=None, metavar="PATH", help="default: $KUBECONFIG, else ~/.kube/config"
    )


def add_arguments(p: argparse.ArgumentParser) -> None:
    from podshark.tap.render import DEFAULT_IMAGE, STORAGE

    add_cluster_options(p)
    p.add_argument(
        "--image", default=DEFAULT_IMAGE, metavar="IMG", help=f"worker and hub image ({DEFAULT_IMAGE})"
    )
    p.add_argument(
        "--storage",
        choices=STORAGE,
        default="pvc",
        help="the hub's store: a PersistentVolumeClaim (default; needs a storage provisioner) or a "
        "hostPath directory on the hub's node (clusters without one; lost if the hub moves)",
    )
    p.add_argument("--storage-size", default="20Gi", metavar="SIZE", help="PVC size (default 20Gi)")
    p.add_argument(
        "--worker-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="extra argument for every worker, e.g. --worker-arg=--k8s-pods=cluster (repeatable)",
    )
    p.add_argument(
        "--patch",
        action="append",
        default=[],
        type=Path,
        metavar="FILE",
        help="YAML of partial objects (kind, metadata.name and what to change) merged into the manifests "
        "by name, like a strategic merge patch; e.g. imagePullSecrets, nodeSelector, resources (repeatable)",
    )
    p.add_argument("--dry-run", action="store_true", help="print the manifests as YAML and change nothing")
    p.add_argument(
        "--server-dry-run",
        action="store_true",
        help="send everything to the API server with dryRun=All (validation and admission, nothing stored)",
    )
    p.add_argument("--timeout", type=float, default=300.0, metavar="S", help="rollout wait (default 300 s)")
    p.add_argument(
        "--port", type=int, default=None, metavar="N", help="local port for the hub (default: free)"
    )
    p.add_argument("--no-ui", action="store_true", help="print the hub URL and token, forward until Ctrl-C")
    p.add_argument(
        "--no-tls",
        action="store_true",
        help="plain HTTP between workers and hub and on the API (only where something else encrypts "
        "the cluster's traffic, e.g. a service mesh); default: HTTPS, and workers prove themselves with "
        "client certificates",
    )


def run(args: argparse.Namespace) -> int:
    from podshark.tap import tls
    from podshark.tap.forward import ForwardError, PortForward
    from podshark.tap.kube import TapError, api_client, apply, existing_token, wait_rollout
    from podshark.tap.render import RenderError, TapOptions, load_patches, render, to_yaml

    def say(text: str) -> None:
        print(f"podshark tap: {text}", file=sys.stderr, flush=True)

    opts = TapOptions(
        namespace=args.namespace,
        image=args.image,
        storage=args.storage,
        storage_size=args.storage_size,
        worker_args=list(args.worker_arg),
        tls=not args.no_tls,
    )
    try:
        for path in args.patch:
            opts.patches += load_patches(path)
    except RenderError as e:
        print(f"podshark: error: {e}", file=sys.stderr)
        return EXIT_INPUT
    if args.dry_run:
        opts.token = secrets.token_urlsafe(32)
        try:
            sys.stdout.write(to_yaml(render(opts)))
        except RenderError as e:
            print(f"podshark: error: {e}", file=sys.stderr)
            return EXIT_INPUT
        return 0
    try:
        api = api_client(args.kubeconfig, args.context)
        opts.token = existing_token(api, opts.namespace) or secrets.token_urlsafe(32)
        if opts.tls:
            opts.tls_material = _tls_material(api, opts.namespace, say)
        objs = render(opts)
    except (TapError, RenderError) as e:
        print(f"podshark: error: {e}", file=sys.stderr)
        return EXIT_INPUT
    where = f"{api.configuration.host}" + (f" (context {args.context})" if args.context else "")
    say(f"{'checking' if args.server_dry_run else 'installing'} in namespace {opts.namespace} at {where}")
    try:
        apply(api, objs, dry_run=args.server_dry_run, progress=lambda line: say(line))
        if args.server_dry_run:
            say("the API server accepted every object; nothing was stored")
            return 0
        wait_rollout(api, opts.namespace, args.timeout, progress=lambda line: say(line))
    except TapError as e:
        print(f"podshark: error: {e}", file=sys.stderr)
        return EXIT_FAIL
    ca_path = None
    context = None
    if opts.tls_material is not None:
        from podshark.tlsconf import TlsConfigError, build_client_context

        ca_path = tls.local_ca_path(api.configuration.host, opts.namespace)
        try:
            tls.write_local_ca(ca_path, opts.tls_material)
            context = build_client_context("https://127.0.0.1", str(ca_path))
        except (OSError, TlsConfigError) as e:
            print(f"podshark: error: cannot keep the hub's CA in {ca_path}: {e}", file=sys.stderr)
            return EXIT_FAIL
    try:
        forward = PortForward(
            opts.namespace,
            local_port=args.port,
            kubeconfig=args.kubeconfig,
            context=args.context,
            scheme="https" if context is not None else "http",
        ).start()
    except ForwardError as e:
        print(f"podshark: error: {e}", file=sys.stderr)
        return EXIT_FAIL
    say(f"hub forwarded to {forward.url}; remove everything with: podshark clean -n {opts.namespace}")
    if ca_path is not None:
        say(f"other clients: podshark ui --hub {forward.url} --ca {ca_path}  (calls, export: the same --ca)")
    try:
        if args.no_ui:
            print(f"hub:   {forward.url}\ntoken: {opts.token}", flush=True)
            if ca_path is not None:
                print(f"ca:    {ca_path}", flush=True)
            stop = threading.Event()
            signal.signal(signal.SIGTERM, lambda *_: stop.set())
            try:
                stop.wait()
            except KeyboardInterrupt:
                pass
            return 0
        from podshark.ui_cmd import run_tui

        return run_tui(forward.url, opts.token, context)
    finally:
        forward.stop()


def _tls_material(api: object, namespace: str, say: Callable[[str], None]) -> dict[str, str]:
    """The TLS Secret already in the namespace when it is usable, else a fresh set (said why)."""
    from podshark.tap import tls
    from podshark.tap.kube import existing_secret

    have = existing_secret(api, namespace, tls.SECRET)
    if have:
        why = tls.problem(have, namespace)
        if why is None:
            return {k: have[k] for k in tls.KEYS}
        say(f"new TLS certificates: the {tls.SECRET} Secret in {namespace} cannot be kept ({why})")
    return tls.make_material(namespace)
