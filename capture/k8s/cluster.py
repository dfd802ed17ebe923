"""The worker's view of the cluster: Kubernetes watches feeding the identity index that tags calls.

    k8s = ClusterIdentity(node="node-a", kubeconfig=None)   # None: in-cluster ServiceAccount
    warnings = k8s.start(sync_timeout=15)                    # K8sConfigError when there is no API
    k8s.tag(call)                                            # on the capture thread, per call
    k8s.tag_flow(aggregate)                                  # ... per flow aggregate
    k8s.cluster_ranges()                                     # pod CIDRs and node addresses
    k8s.stats()                                              # for the worker's stats message
    k8s.close()

What a node watches (`scope="node"`, the default), and why: a worker sees only the traffic of its
own node's pods, so it needs every detail (labels, owners, containers) only for those. It watches

* Pods with ``fieldSelector=spec.nodeName=NODE`` — the kubelet's own watch, served from the API
  server's watch cache; each pod event goes to one node, not to all of them;
* Services and Endpoints (EndpointSlices from v1.21) cluster-wide — kube-proxy's watches, which every
  cluster already serves to every node. Their targetRefs name the pods behind each service address
  on other nodes, so the remote end of most calls (a client calling a service) is still named: pod,
  namespace, node, service, and the workload when its owner is known (`IdentityIndex.resolve`,
  kind "endpoint");
* the owner kinds (ReplicaSet, Deployment, StatefulSet, DaemonSet, Job, CronJob) and Nodes
  cluster-wide: they change rarely (a rollout, a node joining), unlike pods.

A remote pod that backs no service is named only by its node (the pod CIDR it falls in), never
guessed. `scope="cluster"` watches every pod instead: right for a small cluster or a laptop
(`podshark local --kubeconfig`), and what makes remote clients fully named too; it costs the API
server one pod stream per node. The hub does not hold watches: it stays a pure store of calls
(design.md's layering keeps Kubernetes access in capture/), and a worker keeps tagging from its
last known state while the API server is down.
"""

from __future__ import annotations

import ipaddress
import logging
import time
import urllib.parse
from dataclasses import asdict
from typing import Any

from capture.k8s.index import IdentityIndex
from capture.k8s.watch import DEFAULT_KINDS, K8sConfigError, Selector, Watcher, load_api_client
from dissect.flowstats import FlowAggregate
from dissect.model import Call

log = logging.getLogger("capture.k8s")

SCOPES = ("node", "cluster")
PRUNE_INTERVAL_S = 30.0  # a quiet cluster sends no events, so ended ranges are pruned on a timer too
MAX_RANGES = 4096  # cluster_ranges reported (design: the hub keeps at most this many per worker)

__all__ = ["SCOPES", "ClusterIdentity", "K8sConfigError"]


class ClusterIdentity:
    """Watches (see the module docstring) + `IdentityIndex`; `tag` fills a call's two ends."""

    def __init__(
        self,
        node: str,
        *,
        kubeconfig: str | None = None,
        context: str | None = None,
        scope: str = "node",
        api: Any = None,
        watch_timeout_s: float = 300.0,
    ) -> None:
        """`api`: an ApiClient to use instead of loading one (tests); else `kubeconfig`, else the
        in-cluster ServiceAccount."""
        if scope not in SCOPES:
            raise ValueError(f"scope must be one of {SCOPES}, not {scope!r}")
        self.node = node
        self.scope = scope
        self.kubeconfig = kubeconfig
        self.context = context
        self.index = IdentityIndex()
        self._api = api
        self._watch_timeout_s = watch_timeout_s
        self.watcher: Watcher | None = None
        self.server = ""
        self._last_prune = 0.0
        self.tagged = 0
        self.tagged_flows = 0

    def start(self, sync_timeout: float = 15.0) -> list[str]:
        """Connect and start watching; wait up to `sync_timeout` for the first lists (calls captured
        before then are tagged with whatever has arrived). Returns warnings for the operator; raises
        K8sConfigError when there is no usable API configuration."""
        api = self._api if self._api is not None else load_api_client(self.kubeconfig, self.context)
        self.server = _server_of(api)
        selectors = {"Pod": Selector.for_node(self.node)} if self.scope == "node" else {}
        self.watcher = Watcher(
            api, self.index, DEFAULT_KINDS, selectors=selectors, watch_timeout_s=self._watch_timeout_s
        ).start()
        warnings: list[str] = []
        if not self.watcher.wait_synced(sync_timeout):
            stats = self.watcher.stats()
            waiting = sorted(k for k, s in stats.items() if not s.synced and s.served is not False)
            errors = sorted({s.last_error for s in stats.values() if s.last_error})
            warnings.append(
                f"Kubernetes API {self.server}: not every kind listed after {sync_timeout:g}s "
                f"(waiting for {', '.join(waiting)}"
                + (f"; last error: {errors[0]}" if errors else "")
                + "); calls are tagged as objects arrive"
            )
        else:
            if self.scope == "node" and not _node_exists(api, self.node):
                warnings.append(
                    f"Kubernetes has no node named {self.node!r}, so no pod of this node is watched: "
                    "pass --node with the node's Kubernetes name (the DaemonSet sets NODE_NAME from "
                    "spec.nodeName)"
                )
        log.info(
            "kubernetes identity from %s (%s pods): %s", self.server, self.scope, _summary(self.index.stats())
        )
        return warnings

    def tag(self, call: Call) -> None:
        """Fill both ends of ``call`` at its time (only fields still empty)."""
        self.index.tag(call)
        self.tagged += 1

    def tag_flow(self, agg: FlowAggregate) -> None:
        """Fill both ends of a flow aggregate as a call's ends are filled (`tag`), at the interval's
        start: the same index, the same order of evidence. The client's port was folded away, so
        its end is named by address alone (a pod, a node, a pod CIDR)."""
        probe = Call(protocol=agg.protocol or "", transport=agg.transport, src=agg.src, dst=agg.dst)
        probe.request_ts = agg.start_ts
        self.index.tag(probe)  # fills agg.src and agg.dst in place: the probe holds the same objects
        self.tagged_flows += 1

    def cluster_ranges(self) -> list[str]:
        """The cluster's address ranges as this worker knows them: every node's pod CIDRs and
        addresses (as /32 or /128), adjacent ranges merged, the widest first, at most MAX_RANGES.
        What the hub takes as "inside the cluster" when it names an endpoint external."""
        nodes = self.index.nodes()
        v4: list[ipaddress.IPv4Network] = []
        v6: list[ipaddress.IPv6Network] = []
        for info in nodes:
            for ip in info.ips:
                try:
                    net = ipaddress.ip_network(ip)
                except ValueError:
                    continue
                if isinstance(net, ipaddress.IPv4Network):
                    v4.append(net)
                else:
                    v6.append(net)
            for version, plen, prefix in info.pod_cidrs:
                try:
                    if version == 4:
                        v4.append(ipaddress.IPv4Network((prefix << (32 - plen), plen)))
                    else:
                        v6.append(ipaddress.IPv6Network((prefix << (128 - plen), plen)))
                except ValueError:
                    continue
        merged: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = [
            *ipaddress.collapse_addresses(v4),
            *ipaddress.collapse_addresses(v6),
        ]
        # widest first (most addresses), so a cut at MAX_RANGES keeps the most of the cluster
        merged.sort(key=lambda n: (n.prefixlen - n.max_prefixlen, n.version, int(n.network_address)))
        return [str(n) for n in merged[:MAX_RANGES]]

    def tick(self) -> None:
        """From the worker's timer: prune ranges that ended long ago when no events arrive."""
        now = time.monotonic()
        if now - self._last_prune >= PRUNE_INTERVAL_S:
            self._last_prune = now
            self.index.prune(time.time_ns())

    def synced(self) -> bool:
        return self.watcher is not None and self.watcher.synced()

    def stats(self) -> dict[str, Any]:
        """What the hub shows: the API server, scope, each kind's watch, and the index's sizes."""
        kinds: dict[str, Any] = {}
        if self.watcher is not None:
            for name, s in self.watcher.stats().items():
                d = asdict(s)
                kinds[name] = {
                    k: d[k]
                    for k in (
                        "watched",
                        "served",
                        "synced",
                        "connected",
                        "objects",
                        "relists",
                        "reconnects",
                        "failures",
                        "last_error",
                    )
                }
        return {
            "enabled": True,
            "server": self.server,
            "scope": self.scope,
            "node": self.node,
            "synced": self.synced(),
            "tagged": self.tagged,
            "tagged_flows": self.tagged_flows,
            "kinds": kinds,
            "index": self.index.stats(),
        }

    def close(self) -> None:
        if self.watcher is not None:
            self.watcher.stop()


def _server_of(api: Any) -> str:
    """The API server's host:port, for messages (never the credentials)."""
    host = str(getattr(getattr(api, "configuration", None), "host", "") or "")
    u = urllib.parse.urlsplit(host)
    return u.netloc or host


def _node_exists(api: Any, name: str) -> bool:
    """Whether the API server knows node `name` (True when it cannot tell: no `get` on nodes)."""
    from kubernetes import client

    try:
        response: Any = client.CoreV1Api(api).read_node(name, _preload_content=False)
        response.release_conn()
    except client.ApiException as e:
        return e.status != 404
    except Exception:  # unreachable just after syncing: the watches will say so
        return True
    return True


def _summary(idx: dict[str, Any]) -> str:
    return ", ".join(f"{idx[k]} {k}" for k in ("pods", "services", "endpoint_sources", "owners", "nodes"))
