"""`podshark hub --db PATH --listen HOST:PORT`: the hub service (ingest, store, query API).

With `--tls-cert`/`--tls-key` it serves HTTPS and WSS; with `--client-ca` it also asks clients for
a certificate from that CA and requires one on the ingest WebSocket (workers, `podshark import`), or
on every endpoint but the probes with `--client-cert-required-for all` (`hub/tls.py`). The bearer
token stays required either way.

The per-minute traffic aggregates (`hub/aggregates.py`) keep their own retention,
`--aggregate-retain` (default 30d); `--cluster-cidr` (repeatable) names the cluster's pod, service
and node ranges, so addresses outside them show as external on the service map (workers add their
nodes' ranges themselves).

`--alerts FILE` loads alert rules (`hub/alert_rules.py`: measures, thresholds or baselines, a
webhook); a file that does not validate stops the hub before it listens, exit 2, with one line naming
the rule, the key and what is wrong.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import sys

EXIT_USAGE = 2


def add_aggregate_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group(
        "aggregates",
        "Per-minute traffic aggregates (who talks to whom: calls, errors, latency, bytes, connections) "
        "kept in aggregates.duckdb beside the calls, for the service map and /metrics.",
    )
    g.add_argument(
        "--aggregate-retain",
        default="30d",
        metavar="AGE",
        help="drop aggregate minutes older than AGE (default 30d); independent of --retain",
    )
    g.add_argument(
        "--cluster-cidr",
        action="append",
        default=[],
        metavar="CIDR",
        help="an address range inside the cluster (pod, service or node network; repeatable); "
        "traffic to addresses outside every range shows as external. Without any (and without "
        "workers reporting theirs) the private ranges count as the cluster",
    )


def add_alert_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group(
        "alerts",
        "Rules evaluated in the hub over the calls and the aggregates (a filter, a measure such as "
        "calls_per_s, error_rate, p99_latency_ms or bytes_per_s, a fixed threshold or N times the "
        "rolling baseline, a for-duration); firing and resolved events are in GET /api/v1/alerts, the "
        "TUI and /metrics, and POSTed to the file's webhook with retries.",
    )
    g.add_argument(
        "--alerts",
        default=None,
        metavar="FILE",
        help="YAML alert rules (the format: README, 'Alerts'); alert history and the state of firing "
        "rules are kept in alerts.duckdb in --db",
    )


def aggregate_options(args: argparse.Namespace) -> tuple[int, list[str]] | str:
    """(retention ns, cluster CIDRs) from the options, or what is wrong with them."""
    from dissect.filter import parse_duration

    text = getattr(args, "aggregate_retain", "30d")
    retain_ns = parse_duration(text)
    if not retain_ns or retain_ns <= 0:
        return f"--aggregate-retain wants a duration like 30d or 12h, not {text!r}"
    cidrs: list[str] = list(getattr(args, "cluster_cidr", []) or [])
    for c in cidrs:
        try:
            ipaddress.ip_network(c, strict=False)
        except ValueError:
            return f"--cluster-cidr wants an address range like 10.244.0.0/16, not {c!r}"
    return retain_ns, cidrs


def add_tls_arguments(p: argparse.ArgumentParser) -> None:
    """The hub command's TLS options."""
    g = p.add_argument_group(
        "TLS",
        "Serve HTTPS/WSS with --tls-cert and --tls-key (podshark certs makes hub.crt and hub.key). "
        "--client-ca makes workers prove who they are: the ingest WebSocket then needs a client "
        "certificate issued by that CA with extendedKeyUsage clientAuth (podshark certs --worker); "
        "a certificate from another CA, or a server certificate, is refused during the TLS handshake, "
        "a missing one with 403, each with a line in this log. People with the token keep the read "
        "API without a certificate unless --client-cert-required-for all.",
    )
    g.add_argument("--tls-cert", default=None, metavar="FILE", help="PEM server certificate (chain)")
    g.add_argument("--tls-key", default=None, metavar="FILE", help="PEM private key of --tls-cert")
    g.add_argument(
        "--client-ca", default=None, metavar="FILE", help="PEM CA whose client certificates workers present"
    )
    g.add_argument(
        "--client-cert-required-for",
        choices=("ingest", "all"),
        default="ingest",
        help="with --client-ca: 'ingest' (default: the workers' WebSocket) or 'all' (every endpoint but "
        "/healthz and /readyz, which the kubelet probes without a certificate)",
    )


def tls_problem(args: argparse.Namespace) -> str | None:
    """What is wrong with the combination of TLS options, or None."""
    if bool(args.tls_cert) != bool(args.tls_key):
        return "--tls-cert and --tls-key go together (the certificate and its private key)"
    if args.client_ca and not args.tls_cert:
        return "--client-ca needs --tls-cert and --tls-key: client certificates exist only over TLS"
    if args.client_cert_required_for == "all" and not args.client_ca:
        return "--client-cert-required-for all needs --client-ca (the CA the client certificates come from)"
    return None


def split_listen(text: str) -> tuple[str, int]:
    """`HOST:PORT`, `[::1]:PORT` or `:PORT` (all interfaces)."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"--listen wants HOST:PORT, not {text!r}")
    host = host.strip("[]") or "0.0.0.0"
    return host, int(port)


def run(args: argparse.Namespace) -> int:
    from aiohttp import web

    from dissect.filter import parse_duration
    from hub.aggregates import AggregatesError
    from hub.alert_rules import RulesError, load_rules
    from hub.alerts import AlertsError
    from hub.app import make_app
    from hub.auth import AuthError, check_startup, is_loopback, token_from
    from hub.store import Store
    from hub.tls import TlsSetupError, server_context

    try:
        host, port = split_listen(args.listen)
    except ValueError as e:
        print(f"podshark: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    retain_ns = None
    if args.retain:
        retain_ns = parse_duration(args.retain)
        if not retain_ns:
            print(
                f"podshark: error: --retain wants a duration like 7d or 12h, not {args.retain!r}",
                file=sys.stderr,
            )
            return EXIT_USAGE
    try:
        token = token_from(args.token_file)
        check_startup(token, host, args.insecure_no_token)
    except AuthError as e:
        print(f"podshark: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    problem = tls_problem(args)
    if problem:
        print(f"podshark: error: {problem}", file=sys.stderr)
        return EXIT_USAGE
    agg = aggregate_options(args)
    if isinstance(agg, str):
        print(f"podshark: error: {agg}", file=sys.stderr)
        return EXIT_USAGE
    aggregate_retain_ns, cluster_cidrs = agg
    rules = None
    if getattr(args, "alerts", None):
        try:
            rules = load_rules(args.alerts)
        except RulesError as e:
            print(f"podshark: error: {e}", file=sys.stderr)
            return EXIT_USAGE
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    ssl_context = None
    if args.tls_cert:
        try:
            ssl_context = server_context(args.tls_cert, args.tls_key, args.client_ca)
        except TlsSetupError as e:
            print(f"podshark: error: {e}", file=sys.stderr)
            return EXIT_USAGE
    scope = args.client_cert_required_for if args.client_ca else None
    store = Store(args.db, retain_ns=retain_ns, max_bytes=args.max_size)
    try:
        try:
            app = make_app(
                store,
                token,
                batch_interval=args.batch_interval,
                client_certs=scope,
                aggregate_retain_ns=aggregate_retain_ns,
                cluster_cidrs=cluster_cidrs,
                alerts=rules,
            )
        except (AggregatesError, AlertsError) as e:
            print(f"podshark: error: {e}", file=sys.stderr)
            return 1
        if rules is not None:
            print(
                f"podshark hub: {len(rules.rules)} alert rules from {args.alerts}, evaluated every "
                f"{rules.evaluate_every_ns / 1e9:g} s"
                + (f", webhook {rules.webhook.url}" if rules.webhook else ", no webhook"),
                file=sys.stderr,
                flush=True,
            )
        scheme = "https" if ssl_context else "http"
        where = f"[{host}]" if ":" in host else host
        print(
            f"podshark hub: listening on {scheme}://{where}:{port} (db {args.db})",
            file=sys.stderr,
            flush=True,
        )
        if scope:
            print(
                f"podshark hub: client certificates from {args.client_ca} required for "
                + (
                    "the ingest WebSocket" if scope == "ingest" else "every endpoint but /healthz and /readyz"
                ),
                file=sys.stderr,
                flush=True,
            )
        elif not ssl_context and not is_loopback(host):
            print(
                "podshark hub: warning: plain HTTP on a network address: the token and every call cross "
                "the network readable; serve TLS with --tls-cert/--tls-key (podshark certs)",
                file=sys.stderr,
                flush=True,
            )
        web.run_app(app, host=host, port=port, print=None, access_log=None, ssl_context=ssl_context)
    finally:
        store.close()
    return 0
