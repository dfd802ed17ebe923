"""`podshark worker --hub URL`: capture this node's traffic and stream its calls to a hub.

The options are shared with `podshark local` and `podshark demo` (`add_capture_options`,
`worker_config`), which run the same worker against an embedded hub. Exit codes: 0 after a clean
stop (SIGTERM/SIGINT: the last calls are flushed to the hub), 1 when the worker failed while
running, 2 when it could not start (the message says what to do).

TLS to the hub (`--hub https://...` with `--hub-ca`, `--hub-cert`, `--hub-key`: `podshark/tlsconf.py`)
is set up before capture starts: an unreadable or mismatched file stops the worker with exit 2, and
a client certificate the hub will refuse (no clientAuth, expired, not from `--hub-ca`) is a warning
at startup. At run time the uplink's connection lines carry what to fix when TLS is the problem.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import socket
import ssl
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from capture.worker import WorkerConfig

EXIT_FAIL = 1
EXIT_INPUT = 2


def add_capture_options(p: argparse.ArgumentParser, *, state_default: str) -> None:
    """The options every live-capture command takes."""
    from podshark.cli import _size

    p.add_argument(
        "--interface",
        "-i",
        action="append",
        default=None,
        metavar="IF",
        help="capture on IF (a name or a glob such as 'veth*'; repeat for more). Default: every interface "
        "that carries pod traffic on this node (veth host ends, CNI bridges), re-scanned as pods come and go",
    )
    p.add_argument(
        "--node",
        default=None,
        metavar="NAME",
        help="this node's name, in call ids and for the Kubernetes pod watch (default: $NODE_NAME, which "
        "the DaemonSet sets from spec.nodeName, else the hostname)",
    )
    p.add_argument(
        "--capture-filter",
        "-f",
        default=None,
        metavar="EXPR",
        help="tcpdump/pcap filter expression applied in the kernel (needs tcpdump to compile it)",
    )
    p.add_argument(
        "--procs",
        type=int,
        default=1,
        metavar="N",
        help="capture processes (PACKET_FANOUT by flow hash) when one core is not enough (default 1)",
    )
    p.add_argument(
        "--state-dir",
        type=Path,
        default=Path(state_default),
        metavar="DIR",
        help=f"packet spool and unacknowledged batches (default {state_default})",
    )
    p.add_argument(
        "--spool-size",
        type=_size,
        default=512 << 20,
        metavar="SIZE",
        help="raw packets kept on this node for pcap export (default 512MiB; the oldest go first)",
    )
    p.add_argument(
        "--uplink-spool-size",
        type=_size,
        default=256 << 20,
        metavar="SIZE",
        help="calls kept on disk while the hub is unreachable (default 256MiB; what does not fit is "
        "dropped, counted and reported to the hub)",
    )
    p.add_argument(
        "--ring-size",
        type=_size,
        default=64 << 20,
        metavar="SIZE",
        help="kernel ring per interface (default 64MiB; bigger absorbs longer bursts)",
    )
    p.add_argument(
        "--redact-header",
        action="append",
        default=[],
        metavar="NAME",
        help="also mask this header's values (default: Authorization, Cookie, Set-Cookie, "
        "Proxy-Authorization, X-Api-Key)",
    )
    p.add_argument(
        "--redact-json-key",
        action="append",
        default=[],
        metavar="KEY",
        help="also mask this JSON body / form / query key (default: password, token, secret)",
    )
    p.add_argument(
        "--no-default-redaction",
        action="store_true",
        help="mask only what --redact-header/--redact-json-key name",
    )
    p.add_argument(
        "--flow-interval",
        type=_flow_interval,
        default=10.0,
        metavar="SECONDS",
        help="flow accounting: bytes, packets, connections, resets, retransmissions and handshake "
        "RTT of every TCP connection and UDP flow (dissected or not), sent to the hub per this many "
        "seconds (default 10; a divisor of 60 keeps intervals inside the hub's minutes; 0 turns it off)",
    )
    p.add_argument(
        "--no-identity", action="store_true", help="do not look up the processes behind connections"
    )
    p.add_argument(
        "--tls",
        action="store_true",
        help="also trace TLS plaintext with eBPF uprobes on OpenSSL (libssl.so.3) in every process "
        "(needs root and a kernel with BTF; says why and goes on without it otherwise)",
    )
    k8s = p.add_argument_group(
        "Kubernetes identity",
        "pod, workload, service, namespace, node and labels on every call. In a pod this uses the "
        "ServiceAccount by itself; elsewhere pass --kubeconfig.",
    )
    k8s.add_argument(
        "--kubeconfig",
        default=None,
        metavar="PATH",
        help="watch the cluster this kubeconfig names (an unusable one stops the worker)",
    )
    k8s.add_argument(
        "--k8s-context", default=None, metavar="NAME", help="kubeconfig context (default: current)"
    )
    k8s.add_argument(
        "--k8s-pods",
        choices=("node", "cluster"),
        default="node",
        help="which pods to watch: this node's only (default; peers on other nodes are named from "
        "Endpoints), or every pod (small clusters; one pod stream per node for the API server)",
    )
    k8s.add_argument("--no-k8s", action="store_true", help="no Kubernetes identity, even in a cluster")
    p.add_argument(
        "--no-ebpf",
        action="store_true",
        help="process identity from /proc only (short-lived clients such as curl may show no process)",
    )


def _flow_interval(text: str) -> float:
    """--flow-interval: 0 (off) or at least one second."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if value != 0 and not 1 <= value <= 3600:
        raise argparse.ArgumentTypeError(f"{text} s: use 0 (off) or 1 to 3600 seconds")
    return value


def worker_config(
    args: argparse.Namespace, hub: str, token: str | Callable[[], str | None] | None
) -> WorkerConfig:
    from capture.redact import DEFAULT_HEADERS, DEFAULT_JSON_KEYS
    from capture.worker import WorkerConfig

    headers = [] if args.no_default_redaction else list(DEFAULT_HEADERS)
    keys = [] if args.no_default_redaction else list(DEFAULT_JSON_KEYS)
    return WorkerConfig(
        hub=hub,
        token=token,
        node=args.node or os.environ.get("NODE_NAME") or socket.gethostname(),
        interfaces=args.interface,
        capture_filter=args.capture_filter,
        procs=args.procs,
        state_dir=args.state_dir,
        packet_spool_bytes=args.spool_size,
        uplink_spool_bytes=args.uplink_spool_size,
        ring_bytes=args.ring_size,
        redact_headers=headers + args.redact_header,
        redact_json_keys=keys + args.redact_json_key,
        identity=not args.no_identity,
        ebpf=not args.no_ebpf,
        tls=args.tls,
        k8s="off" if args.no_k8s else ("on" if args.kubeconfig else "auto"),
        kubeconfig=args.kubeconfig,
        k8s_context=args.k8s_context,
        k8s_scope=args.k8s_pods,
        flow_interval=args.flow_interval,
    )


def hub_tls(args: argparse.Namespace) -> ssl.SSLContext | None:
    """The uplink's TLS context from --hub-ca/--hub-cert/--hub-key (None for an http:// hub), and
    warnings about a client certificate the hub will refuse. TlsConfigError for unusable options."""
    from podshark.tlsconf import WORKER_FLAGS, client_cert_warnings, client_context

    ctx = client_context(args, args.hub, WORKER_FLAGS)
    if ctx is None:
        return None
    if args.hub_cert:
        for warning in client_cert_warnings(args.hub_cert, args.hub_ca, WORKER_FLAGS):
            logging.getLogger("podshark.worker").warning("%s", warning)
    return ctx


def capture_problem() -> str | None:
    """Why this process cannot capture (one line with what to do), or None."""
    try:
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
    except PermissionError:
        return "capturing needs root (or the CAP_NET_RAW and CAP_NET_ADMIN capabilities): run it with sudo"
    except OSError as e:
        return f"cannot open an AF_PACKET socket: {e.strerror} (Linux only)"
    s.close()
    return None


def run(args: argparse.Namespace) -> int:
    from capture.worker import Worker, WorkerError
    from hub.auth import AuthError, token_from
    from podshark.tlsconf import TlsConfigError, uplink_explainer

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if args.procs < 1:
        print("podshark: error: --procs must be at least 1", file=sys.stderr)
        return EXIT_INPUT
    try:
        token = token_from(args.token_file)
    except AuthError as e:
        print(f"podshark: error: {e}", file=sys.stderr)
        return EXIT_INPUT
    try:
        ssl_context = hub_tls(args)
    except TlsConfigError as e:
        print(f"podshark: error: {e}", file=sys.stderr)
        return EXIT_INPUT
    problem = capture_problem()
    if problem:
        print(f"podshark: error: {problem}", file=sys.stderr)
        return EXIT_INPUT
    token_file = args.token_file
    # re-read before every (re)connection, so a rotated token file needs no restart
    config = worker_config(args, args.hub, (lambda: token_from(token_file)) if token_file else token)
    config.ssl = ssl_context
    config.explain_failure = uplink_explainer(args.hub, has_cert=bool(args.hub_cert))
    worker = Worker(config)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await worker.run(stop)

    try:
        asyncio.run(main())
    except WorkerError as e:
        print(f"podshark: error: {e}", file=sys.stderr)
        return EXIT_INPUT if not worker.capturing else EXIT_FAIL
    except OSError as e:
        print(f"podshark: error: {e}", file=sys.stderr)
        return EXIT_FAIL
    counters = worker.uplink.counters() if worker.uplink is not None else {}
    print(
        f"podshark worker: {worker.calls} calls, {counters.get('acked', 0)} acknowledged by the hub, "
        f"{counters.get('dropped', 0)} dropped",
        file=sys.stderr,
    )
    return 0


def default_state_dir() -> str:
    """/var/lib/podshark for root (the DaemonSet's hostPath), else the user's cache."""
    if os.geteuid() == 0:
        return "/var/lib/podshark"
    from podshark.paths import cache_dir

    return str(cache_dir("worker"))
