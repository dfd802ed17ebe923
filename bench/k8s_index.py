"""What Kubernetes identity costs the worker: per-call resolution time, memory per 10k pods, build time.

A synthetic cluster in the API's JSON shape (the shape a watch delivers): 1,000 Deployments of 10
pods each (ReplicaSet owners, two containers with containerd ids, labels including
pod-template-hash), one ClusterIP Service per Deployment with a core/v1 Endpoints listing its 10
pods, 50 Nodes each running one hostNetwork DaemonSet pod with a declared port. Objects carry the
bulk real ones do (managedFields, specs, conditions) so parsing costs what it will in a cluster.

Measured, in one process, with `capture.k8s.index.IdentityIndex`:

- **build**: `apply(kind, "ADDED", obj, ts)` of every object (a relist's worth), median of the runs;
- **memory**: `tracemalloc`'s current size after the build, objects generated inside the trace and
  dropped before reading it, so it is what the index keeps (records, interned strings, tables);
  once for the whole cluster and once for the 10k pods alone;
- **resolve**: `resolve(ip, port, ts)` over a fixed mix of addresses (70 % pod IP and port, 15 %
  ClusterIP, 5 % node IP and DaemonSet port, 5 % node IP and an ephemeral port, 5 % unknown),
  timed in batches of 10,000; the median batch divided by its size is the µs per call;
- **tag**: `tag(call)` of calls from pods to ClusterIPs (two resolutions, Endpoint fields filled),
  on fresh Call objects each batch, timed the same way;
- **worker view**: what one node's worker holds with its default watches (capture.k8s.cluster:
  its own node's pods, every Service, Endpoints, owner and Node): memory, and the same address mix
  resolved there, where most pod IPs are on other nodes and are named from the Endpoints'
  targetRefs (kind "endpoint"), and a mix of addresses in other nodes' pod CIDRs that no service
  lists (kind "pod-cidr": the node only).

History lines compare with the previous run (`Nx previous`). Wall-clock figures depend on how busy
the machine is; the load average at start is recorded.
"""

from __future__ import annotations

import gc
import random
import statistics
import time
import tracemalloc
from collections.abc import Callable, Iterator
from typing import Any

from bench.http1_dissect import machine, podshark_revision
from bench.report import history_lines, keep, previous_figure, render_section, vs_previous
from capture.k8s.index import IdentityIndex
from dissect.model import Call, Endpoint

NAME = "k8s_index"
TITLE = "Kubernetes identity index: resolution cost and memory per 10k pods"

Log = Callable[[str], None]
Obj = tuple[str, dict[str, Any]]

S = 10**9
T0 = 1_700_000_000 * S
DEPLOYMENTS = 1_000
REPLICAS = 10
NODES = 50
BATCH = 10_000
BATCHES = 20
CREATED = "2023-11-14T22:13:20Z"


def _meta(name: str, ns: str | None, uid: str, **extra: Any) -> dict[str, Any]:
    m: dict[str, Any] = {
        "name": name,
        "uid": uid,
        "resourceVersion": str(random.randrange(10**6, 10**7)),
        "creationTimestamp": CREATED,
        "managedFields": [
            {
                "manager": "kube-controller-manager",
                "operation": "Update",
                "apiVersion": "v1",
                "time": CREATED,
                "fieldsType": "FieldsV1",
                "fieldsV1": {"f:metadata": {"f:labels": {".": {}, "f:app": {}}}, "f:spec": {}},
            }
        ],
        **extra,
    }
    if ns is not None:
        m["namespace"] = ns
    return m


def pod_ip(i: int) -> str:
    return f"10.{244 + i // 65536}.{i // 256 % 256}.{i % 256}"


def node_ip(n: int) -> str:
    return f"10.0.{(n + 1) // 256}.{(n + 1) % 256}"


def service_ip(d: int) -> str:
    return f"10.96.{(d + 1) // 256}.{(d + 1) % 256}"


def pod_cidr(n: int) -> str:
    """Node n's pod CIDR for pods that back no service (the Deployments' pods use `pod_ip`)."""
    return f"10.250.{n}.0/24"


def cluster(pods_only: bool = False, view: str | None = None) -> Iterator[Obj]:
    """The synthetic cluster's objects, in list order: nodes, owners, pods, services, endpoints.
    `view`: only that node's pods (a worker's default watch); everything else stays."""
    rnd = random.Random(9)
    if not pods_only:
        for n in range(NODES):
            name = f"node-{n:03d}"
            yield (
                "Node",
                {
                    "metadata": _meta(name, None, f"node-uid-{n}", labels={"kubernetes.io/hostname": name}),
                    "status": {
                        "addresses": [
                            {"type": "InternalIP", "address": node_ip(n)},
                            {"type": "Hostname", "address": name},
                        ],
                        "capacity": {"cpu": "8", "memory": "32Gi", "pods": "110"},
                    },
                    "spec": {"podCIDR": pod_cidr(n), "podCIDRs": [pod_cidr(n)]},
                },
            )
    i = 0
    for d in range(DEPLOYMENTS):
        ns = f"team-{d % 40:02d}"
        dep = f"svc-{d:04d}"
        template_hash = f"{rnd.getrandbits(40):010x}"
        rs = f"{dep}-{template_hash}"
        if not pods_only:
            owner = {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "name": dep,
                "uid": f"dep-{d}",
                "controller": True,
            }
            yield ("Deployment", {"metadata": _meta(dep, ns, f"dep-{d}"), "spec": {"replicas": REPLICAS}})
            yield ("ReplicaSet", {"metadata": _meta(rs, ns, f"rs-{d}", ownerReferences=[owner]), "spec": {}})
        members = []
        for _ in range(REPLICAS):
            name = f"{rs}-{_rand_suffix(rnd)}"
            ip = pod_ip(i)
            node = f"node-{i % NODES:03d}"
            members.append((ip, name, f"pod-uid-{i}", node))
            if view is None or node == view:
                yield ("Pod", _pod(name, ns, f"pod-uid-{i}", ip, node, node_ip(i % NODES), rs, d, i))
            i += 1
        if not pods_only:
            ports = [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080}]
            yield (
                "Service",
                {
                    "metadata": _meta(dep, ns, f"svc-uid-{d}"),
                    "spec": {"clusterIP": service_ip(d), "clusterIPs": [service_ip(d)], "ports": ports},
                },
            )
            subset = {
                "addresses": [
                    {
                        "ip": ip,
                        "nodeName": node,
                        "targetRef": {"kind": "Pod", "namespace": ns, "name": name, "uid": uid},
                    }
                    for ip, name, uid, node in members
                ],
                "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            }
            yield ("Endpoints", {"metadata": _meta(dep, ns, f"ep-uid-{d}"), "subsets": [subset]})
    if not pods_only:
        for n in range(NODES):
            node = f"node-{n:03d}"
            if view is not None and node != view:
                continue
            ds = {
                "apiVersion": "apps/v1",
                "kind": "DaemonSet",
                "name": "exporter",
                "uid": "ds",
                "controller": True,
            }
            obj = _pod(
                f"exporter-{n:03d}", "monitoring", f"ds-pod-{n}", node_ip(n), node, node_ip(n), None, 0, n
            )
            obj["metadata"]["ownerReferences"] = [ds]
            obj["spec"]["hostNetwork"] = True
            obj["spec"]["containers"][0]["ports"] = [
                {"containerPort": 9100, "hostPort": 9100, "protocol": "TCP"}
            ]
            yield ("Pod", obj)


def _rand_suffix(rnd: random.Random) -> str:
    """A generated pod-name suffix: 5 characters of Kubernetes' random alphabet (no vowels)."""
    return "".join(rnd.choice("bcdfghjklmnpqrstvwxz2456789") for _ in range(5))


def _pod(
    name: str, ns: str, uid: str, ip: str, node: str, host_ip: str, rs: str | None, d: int, i: int
) -> dict[str, Any]:
    labels = {"app": f"svc-{d:04d}", "team": ns, "version": "v1"}
    m = _meta(name, ns, uid, labels=labels)
    if rs is not None:
        labels["pod-template-hash"] = rs.rsplit("-", 1)[1]
        m["ownerReferences"] = [
            {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": rs, "uid": f"rs-{d}", "controller": True}
        ]
    containers = [
        {
            "name": c,
            "image": f"registry.example/{c}:1.2.3",
            "ports": [{"containerPort": 8080, "protocol": "TCP", "name": "http"}] if c == "app" else [],
            "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}},
            "env": [{"name": "MODE", "value": "production"}],
            "readinessProbe": {"httpGet": {"path": "/healthz", "port": 8080}, "periodSeconds": 5},
        }
        for c in ("app", "proxy")
    ]
    statuses = [
        {
            "name": c,
            "ready": True,
            "restartCount": 0,
            "image": f"registry.example/{c}:1.2.3",
            "containerID": f"containerd://{(i * 2 + k):064x}",
            "state": {"running": {"startedAt": CREATED}},
        }
        for k, c in enumerate(("app", "proxy"))
    ]
    return {
        "metadata": m,
        "spec": {
            "nodeName": node,
            "containers": containers,
            "restartPolicy": "Always",
            "dnsPolicy": "ClusterFirst",
        },
        "status": {
            "phase": "Running",
            "hostIP": host_ip,
            "podIP": ip,
            "podIPs": [{"ip": ip}],
            "startTime": CREATED,
            "conditions": [
                {"type": t, "status": "True"} for t in ("Initialized", "Ready", "ContainersReady")
            ],
            "containerStatuses": statuses,
        },
    }


def build(objs: list[Obj]) -> IdentityIndex:
    index = IdentityIndex()
    for kind, obj in objs:
        index.apply(kind, "ADDED", obj, T0)
    return index


def traced_bytes(pods_only: bool, view: str | None = None) -> tuple[int, IdentityIndex]:
    """Bytes the index keeps once the API objects it was fed are gone."""
    gc.collect()
    tracemalloc.start()
    try:
        objs = list(cluster(pods_only, view))
        index = build(objs)
        del objs
        gc.collect()
        current, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return current, index


def queries(n: int) -> list[tuple[str, int | None]]:
    rnd = random.Random(3)
    pods = DEPLOYMENTS * REPLICAS
    out: list[tuple[str, int | None]] = []
    for _ in range(n):
        r = rnd.random()
        if r < 0.70:
            out.append((pod_ip(rnd.randrange(pods)), 8080))
        elif r < 0.85:
            out.append((service_ip(rnd.randrange(DEPLOYMENTS)), 80))
        elif r < 0.90:
            out.append((node_ip(rnd.randrange(NODES)), 9100))
        elif r < 0.95:
            out.append((node_ip(rnd.randrange(NODES)), rnd.randrange(32768, 60999)))
        else:
            out.append((f"192.168.{rnd.randrange(256)}.{rnd.randrange(256)}", 443))
    return out


def cidr_queries(n: int) -> list[tuple[str, int | None]]:
    """Addresses in other nodes' pod CIDRs that no Service lists (pods with no service)."""
    rnd = random.Random(4)
    return [(f"10.250.{rnd.randrange(1, NODES)}.{rnd.randrange(2, 255)}", 8080) for _ in range(n)]


def time_resolve(index: IdentityIndex, qs: list[tuple[str, int | None]]) -> list[float]:
    """Seconds per call of each batch."""
    resolve = index.resolve
    ts = T0 + 60 * S
    out = []
    for b in range(BATCHES):
        batch = qs[b * BATCH : (b + 1) * BATCH]
        t0 = time.perf_counter()
        for ip, port in batch:
            resolve(ip, port, ts)
        out.append((time.perf_counter() - t0) / len(batch))
    return out


def time_tag(index: IdentityIndex) -> tuple[list[float], int]:
    """Seconds per tagged call of each batch, and how many calls got both a pod and a service."""
    rnd = random.Random(5)
    pods = DEPLOYMENTS * REPLICAS
    tag = index.tag
    out = []
    named = 0
    for _ in range(BATCHES // 2):
        calls = [
            Call(
                protocol="http",
                src=Endpoint(ip=pod_ip(rnd.randrange(pods)), port=rnd.randrange(32768, 60999)),
                dst=Endpoint(ip=service_ip(rnd.randrange(DEPLOYMENTS)), port=80),
                request_ts=T0 + 60 * S,
            )
            for _ in range(BATCH)
        ]
        t0 = time.perf_counter()
        for call in calls:
            tag(call)
        out.append((time.perf_counter() - t0) / len(calls))
        named += sum(1 for c in calls if c.src.pod is not None and c.dst.service is not None)
    return out, named


def measure(runs: int = 3, log: Log = print) -> dict[str, Any]:
    objs = list(cluster())
    kinds: dict[str, int] = {}
    for kind, _ in objs:
        kinds[kind] = kinds.get(kind, 0) + 1
    builds = []
    index = IdentityIndex()
    for r in range(runs):
        gc.collect()
        t0 = time.perf_counter()
        index = build(objs)
        builds.append(time.perf_counter() - t0)
        log(f"bench: build {r + 1}/{runs}: {builds[-1]:.2f} s for {len(objs):,} objects")
    del objs
    stats = index.stats()
    ts = T0 + 60 * S
    missing = [pod_ip(i) for i in range(DEPLOYMENTS * REPLICAS) if index.resolve(pod_ip(i), 8080, ts) is None]
    missing += [service_ip(d) for d in range(DEPLOYMENTS) if index.resolve(service_ip(d), 80, ts) is None]
    if stats["skipped_total"] or stats["internal_errors"] or missing:
        raise RuntimeError(f"the synthetic cluster was not fully applied: {missing[:5]} unknown, {stats}")
    qs = queries(BATCH * BATCHES)
    unresolved = sum(1 for ip, port in qs[:BATCH] if index.resolve(ip, port, T0 + 60 * S) is None)
    resolve_times: list[float] = []
    tag_times: list[float] = []
    named = 0
    for r in range(runs):
        resolve_times += time_resolve(index, qs)
        t, named = time_tag(index)
        tag_times += t
        log(f"bench: run {r + 1}/{runs}: resolve {statistics.median(resolve_times) * 1e6:.2f} µs/call")
    del index
    full_bytes, _ = traced_bytes(pods_only=False)
    pods_bytes, _ = traced_bytes(pods_only=True)
    log(f"bench: memory {full_bytes / 2**20:.1f} MiB (cluster), {pods_bytes / 2**20:.1f} MiB (pods alone)")
    view = "node-000"
    view_bytes, view_index = traced_bytes(pods_only=False, view=view)
    vstats = view_index.stats()
    if vstats["skipped_total"] or vstats["internal_errors"] or vstats.get("ignored_total"):
        raise RuntimeError(f"the worker view was not fully applied: {vstats}")
    ts = T0 + 60 * S
    kinds_seen: dict[str, int] = {}
    for ip, port in qs[:BATCH]:
        ident = view_index.resolve(ip, port, ts)
        key = ident.kind if ident is not None else "unknown"
        kinds_seen[key] = kinds_seen.get(key, 0) + 1
    cq = cidr_queries(BATCH * BATCHES)
    cidr_named = sum(1 for ip, port in cq[:BATCH] if (x := view_index.resolve(ip, port, ts)) and x.node)
    view_resolve: list[float] = []
    view_cidr: list[float] = []
    for r in range(runs):
        view_resolve += time_resolve(view_index, qs)
        view_cidr += time_resolve(view_index, cq)
        log(f"bench: worker view run {r + 1}/{runs}: {statistics.median(view_resolve) * 1e6:.2f} µs/call")
    return {
        "view_bytes": view_bytes,
        "view_pods": vstats["pods"],
        "view_resolve": view_resolve,
        "view_cidr": view_cidr,
        "view_kinds": kinds_seen,
        "cidr_named": cidr_named,
        "kinds": kinds,
        "build": builds,
        "resolve": resolve_times,
        "tag": tag_times,
        "tag_named": named,
        "unresolved": unresolved,
        "full_bytes": full_bytes,
        "pods_bytes": pods_bytes,
    }


def run(previous: str | None = None, runs: int = 3, regen: bool = False, log: Log = print) -> str:
    del regen  # nothing cached: the cluster is generated in memory
    res = measure(runs=runs, log=log)
    old = history_lines(previous)
    pods = DEPLOYMENTS * REPLICAS
    kinds: dict[str, int] = res["kinds"]
    n_objs = sum(kinds.values())
    build_s = statistics.median(res["build"])
    resolve_us = statistics.median(res["resolve"]) * 1e6
    tag_us = statistics.median(res["tag"]) * 1e6
    view_us = statistics.median(res["view_resolve"]) * 1e6
    cidr_us = statistics.median(res["view_cidr"]) * 1e6
    full_mib = res["full_bytes"] / 2**20
    pods_mib = res["pods_bytes"] / 2**20
    all_pods = kinds["Pod"]
    per_10k_full = full_mib * 10_000 / all_pods
    per_10k_pods = pods_mib * 10_000 / pods
    m = machine()
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    rows = [
        ("measured", f"{when} at {podshark_revision()}, {m['nproc']} CPUs ({m['cpu']}), load {m['load']}"),
        ("cluster", ", ".join(f"{n:,} {k}" for k, n in kinds.items())),
        (
            "resolve",
            f"**{resolve_us:.2f} µs per call** (median of {len(res['resolve'])} batches of {BATCH:,}); "
            f"{res['unresolved']:,} of the first {BATCH:,} addresses unknown (the 5 % outside the cluster)",
        ),
        (
            "tag",
            f"**{tag_us:.2f} µs per call** (both ends, pod → ClusterIP); "
            f"{res['tag_named']:,} of {BATCHES // 2 * BATCH:,} calls named a pod and a service",
        ),
        (
            "memory",
            f"**{per_10k_full:.1f} MiB per 10k pods** with their services, endpoints, owners and nodes "
            f"({full_mib:.1f} MiB for {all_pods:,} pods); pods alone {per_10k_pods:.1f} MiB per 10k "
            f"({res['pods_bytes'] / pods:,.0f} bytes per pod)",
        ),
        (
            "worker view",
            f"one node's default watches (its {res['view_pods']:,} pods, every Service, Endpoints, owner "
            f"and Node): **{res['view_bytes'] / 2**20:.1f} MiB**; the same address mix resolves in "
            f"**{view_us:.2f} µs per call**, the first {BATCH:,} as "
            + ", ".join(f"{n:,} {k}" for k, n in sorted(res["view_kinds"].items()))
            + f"; an address in another node's pod CIDR that no service lists (node only) "
            f"**{cidr_us:.2f} µs** ({res['cidr_named']:,} of {BATCH:,} named a node)",
        ),
        (
            "build",
            f"{build_s:.2f} s for {n_objs:,} objects ({n_objs / build_s:,.0f} objects/s; "
            f"{build_s / n_objs * 1e6:.1f} µs per object, parsing included)",
        ),
    ]
    summary = (
        f"- {when} {podshark_revision()}: resolve {resolve_us:.2f} µs/call"
        f"{vs_previous(resolve_us, previous_figure(old, 'resolve'))}, tag {tag_us:.2f} µs/call"
        f"{vs_previous(tag_us, previous_figure(old, 'tag'))}, memory {per_10k_full:.1f} MiB per 10k pods"
        f"{vs_previous(per_10k_full, previous_figure(old, 'memory'))}, worker view {view_us:.2f} µs/call"
        f"{vs_previous(view_us, previous_figure(old, 'worker view'))}, build {build_s:.2f} s"
        f"{vs_previous(build_s, previous_figure(old, 'build'))}"
    )
    intro = (
        f"`python -m bench {NAME}`. A synthetic cluster in the API's JSON shape fed to "
        "`capture.k8s.index.IdentityIndex` in one process: build (every object applied once), memory "
        "(tracemalloc, API objects dropped), resolution of a fixed address mix and tagging of pod → "
        "ClusterIP calls, medians over batches (see `bench/README.md`)."
    )
    return render_section(f"## {TITLE}", intro, rows, keep(old, summary))
