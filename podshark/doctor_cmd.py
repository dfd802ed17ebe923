"""`podshark doctor`: can this node capture, and what will it see? Also, with --hub, what workers say.

On the node (run it where the worker runs, as the worker runs): root or the capabilities, AF_PACKET,
the capture-filter compiler (tcpdump), BTF and libbpf, whether the eBPF connect tracer and the TLS
tracer load here, which interfaces the worker would capture, and — the question people ask when an
HTTPS call is missing — per process, whether its TLS can be traced: OpenSSL through libssl is,
statically linked TLS (Go's crypto/tls, BoringSSL in Envoy) is not, and doctor says so by name.

With ``--hub URL``: each worker's own report from the hub's stats (connected, drops, whether its TLS
tracer runs and why not, the processes it could not cover).

One line per check: ``ok``, ``warn`` (works, with less) or ``FAIL`` (the worker cannot do its job),
each with what to do next. Exit 0 without FAIL, 1 with, 2 on a usage error.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import ssl
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

OK, WARN, FAIL = "ok", "warn", "FAIL"
CAP_NET_RAW, CAP_NET_ADMIN, CAP_SYS_ADMIN, CAP_PERFMON, CAP_BPF = 13, 12, 21, 38, 39
MAX_PROCESS_LINES = 40


class Report:
    def __init__(self) -> None:
        self.failed = False

    def line(self, status: str, what: str, detail: str = "") -> None:
        if status == FAIL:
            self.failed = True
        print(f"{status:<5} {what}" + (f": {detail}" if detail else ""))

    def section(self, title: str) -> None:
        print(f"\n{title}")


def _caps() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("CapEff:"):
            return int(line.split()[1], 16)
    return 0


def _node(r: Report, tls_processes: bool) -> None:
    from podshark.worker_cmd import capture_problem

    r.section("capture (this node)")
    caps = _caps()
    if os.geteuid() == 0:
        r.line(OK, "running as root")
    else:
        r.line(
            WARN, "not root", "the worker needs root, or CAP_NET_RAW+CAP_NET_ADMIN (and CAP_BPF+CAP_PERFMON)"
        )
    problem = capture_problem()
    r.line(FAIL if problem else OK, "AF_PACKET capture", problem or "raw sockets open")
    tcpdump = shutil.which("tcpdump")
    r.line(
        OK if tcpdump else WARN,
        "capture filters",
        f"compiled with {tcpdump}"
        if tcpdump
        else "tcpdump not found: --capture-filter is refused "
        "and the hub's own traffic is dropped after dissection (apt-get install tcpdump)",
    )
    try:
        from capture.interfaces import select_interfaces

        names = [i.name for i in select_interfaces(None)]
        r.line(OK if names else WARN, "interfaces the worker captures by default", " ".join(names[:20]) or
               "none yet (pod interfaces appear as pods start; or pass --interface)")  # fmt: skip
    except Exception as e:  # doctor reports, never crashes
        r.line(WARN, "interfaces", str(e))

    r.section("eBPF (process identity and TLS plaintext)")
    btf = Path("/sys/kernel/btf/vmlinux")
    r.line(OK if btf.exists() else FAIL, "kernel BTF", str(btf) if btf.exists() else
           "missing: this kernel was built without CONFIG_DEBUG_INFO_BTF; eBPF features are off")  # fmt: skip
    bpf_caps = (caps & (1 << CAP_BPF) and caps & (1 << CAP_PERFMON)) or caps & (1 << CAP_SYS_ADMIN)
    r.line(OK if bpf_caps else WARN, "eBPF capabilities", "present" if bpf_caps else
           "missing CAP_BPF+CAP_PERFMON (or CAP_SYS_ADMIN): run the worker as root")  # fmt: skip
    from capture.ebpf.libbpf import BpfError, library

    try:
        library()
        r.line(OK, "libbpf", "libbpf.so.1 loads")
    except BpfError as e:
        r.line(WARN, "libbpf", str(e))
        return
    try:
        from capture.ebpf.conntrace import ConnTracer

        ct = ConnTracer(lambda _event: None)
        ct.start()
        ct.close()
        r.line(OK, "connect tracer", "short-lived clients (curl, probes) get a process name")
    except (BpfError, OSError) as e:
        r.line(WARN, "connect tracer", f"{e} — process names come from /proc scans only")
    try:
        from capture.ebpf.tlstrace import TlsTracer

        tracer = TlsTracer()
        r.line(OK, "TLS tracer", f"loads ({tracer.load_ms:.0f} ms); connections found through "
               f"{tracer.tuple_source}; `podshark worker --tls` decrypts OpenSSL traffic")  # fmt: skip
        tracer.close()
    except (BpfError, OSError) as e:
        r.line(WARN, "TLS tracer", f"{e} — `--tls` would capture without plaintext")
    if tls_processes:
        _tls_coverage(r)


def _tls_coverage(r: Report) -> None:
    from capture.tlslibs import Scanner

    r.section("TLS per process (this node)")
    scan = Scanner().scan()
    counts = {k: v for k, v in scan.coverage().items() if v}
    print("      " + ", ".join(f"{k}: {v}" for k, v in sorted(counts.items())))
    procs = sorted(
        (p for p in scan.processes.values() if p.verdict != "no-tls"),
        key=lambda p: (p.traced, p.comm, p.pid),
    )
    for p in procs[:MAX_PROCESS_LINES]:
        status = OK if p.traced else WARN
        notes = f" (also: {'; '.join(p.notes)})" if p.notes else ""
        r.line(status, f"pid {p.pid} {p.comm}", f"{p.verdict}: {p.reason}{notes}")
    if len(procs) > MAX_PROCESS_LINES:
        print(f"      ... and {len(procs) - MAX_PROCESS_LINES} more")
    for lib in scan.libraries.values():
        r.line(OK, f"library {lib.name}", f"{lib.path} ({len(lib.pids)} processes)")


def _hub(
    r: Report, url: str, token: str | None, context: ssl.SSLContext | None = None, has_cert: bool = False
) -> None:
    from podshark.tlsconf import explain, forbidden

    r.section(f"workers (from {url})")
    req = urllib.request.Request(url.rstrip("/") + "/api/v1/stats")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=15, context=context) as resp:
            stats: dict[str, Any] = json.load(resp)
    except urllib.error.HTTPError as e:
        if e.code == 403:
            r.line(FAIL, "hub stats", forbidden())
            return
        hint = " (set PODSHARK_TOKEN or --token-file)" if e.code == 401 else ""
        r.line(FAIL, "hub stats", f"HTTP {e.code}{hint}")
        return
    except (urllib.error.URLError, OSError, ValueError) as e:
        tls = explain(e, url, has_cert=has_cert) if not isinstance(e, ValueError) else None
        r.line(
            FAIL, "hub stats", tls or f"cannot reach {url}: {getattr(e, 'reason', e)} (is it port-forwarded?)"
        )
        return
    workers = [w for w in stats.get("workers", []) if w.get("name") != "import"]
    if not workers:
        r.line(WARN, "workers", "none has connected to this hub")
    for w in workers:
        name = w.get("name")
        drops = {k: v for k, v in (w.get("drops") or {}).items() if v}
        status = OK if w.get("connected") and not drops else WARN
        r.line(status, f"worker {name}", ("connected" if w.get("connected") else "disconnected") +
               (f", drops {drops}" if drops else ", no drops"))  # fmt: skip
        _kubernetes(r, str(name), (w.get("reported") or {}).get("kubernetes"))
        tls = (w.get("reported") or {}).get("tls")
        if not tls:
            r.line(WARN, f"  {name} TLS", "not traced (the worker runs without --tls)")
            continue
        if not tls.get("enabled"):
            r.line(WARN, f"  {name} TLS", tls.get("reason") or "not traced")
            continue
        libs = tls.get("libraries") or []
        r.line(OK, f"  {name} TLS", f"traced in {len(libs)} libssl file(s)")
        for p in tls.get("processes") or []:
            if not p.get("traced"):
                r.line(
                    WARN,
                    f"  {name} pid {p.get('pid')} {p.get('comm')}",
                    f"{p.get('verdict')}: {p.get('reason')}",
                )


def _kubernetes(r: Report, name: str, k8s: dict[str, Any] | None) -> None:
    """One line for a worker's Kubernetes identity, and one per watch that is not well."""
    if not k8s:
        return  # a worker from before Kubernetes identity existed
    if not k8s.get("enabled"):
        r.line(WARN, f"  {name} Kubernetes", f"no identity: {k8s.get('reason') or 'off'}")
        return
    idx = k8s.get("index") or {}
    sizes = ", ".join(f"{idx.get(k, 0)} {k}" for k in ("pods", "services", "owners", "nodes"))
    kinds = k8s.get("kinds") or {}
    r.line(
        OK if k8s.get("synced") else WARN,
        f"  {name} Kubernetes",
        f"{k8s.get('server')}, {k8s.get('scope')} pods of {k8s.get('node')}: {sizes}"
        + ("" if k8s.get("synced") else " (not every kind listed yet)"),
    )
    for kind, st in sorted(kinds.items()):
        if st.get("served") is False:
            continue
        if not st.get("connected") or st.get("last_error"):
            state = "watching" if st.get("connected") else "not connected"
            r.line(WARN, f"  {name} watch {kind}", f"{state}; {st.get('failures', 0)} failures; "
                   f"last error: {st.get('last_error') or '-'}")  # fmt: skip


def run(args: argparse.Namespace) -> int:
    from hub.auth import AuthError, token_from
    from podshark.tlsconf import TlsConfigError, client_context

    r = Report()
    token, context = None, None
    if args.hub:  # options first: a typo in them should not wait for the node's checks
        try:
            token = token_from(args.token_file)
            context = client_context(args, args.hub)
        except (AuthError, TlsConfigError) as e:
            print(f"podshark: error: {e}", file=sys.stderr)
            return 2
    if not args.hub_only:
        _node(r, tls_processes=not args.no_processes)
    if args.hub:
        _hub(r, args.hub, token, context, bool(args.cert))
    return 1 if r.failed else 0
