"""What a call's or flow's endpoint is on the service map: a workload, a pod, a service, a node, an
address inside the cluster, or an address outside it.

The map, the per-minute aggregates and the alerts all key traffic by these nodes, so they must agree:
one function, `node_of`, decides. Most specific identity wins: a workload (``namespace/Kind/name``),
else a bare pod, else a service, else a cluster node (by name), else the address — ``external`` when
it lies outside every cluster range (`ClusterRanges`), ``ip`` when inside. An external address is
what makes unexpected egress stand out.

Cluster ranges come from the hub's ``--cluster-cidr`` options and from what workers report (their
nodes' pod CIDRs and addresses). With none known at all, the private, shared, loopback and
link-local ranges count as the cluster, which is right for a lab and for most clusters.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

from dissect.model import Endpoint

__all__ = ["DEFAULT_INTERNAL", "MAX_RANGES", "ClusterRanges", "MapNode", "node_of"]

KINDS = ("workload", "pod", "service", "node", "ip", "external")
MAX_RANGES = 4096  # ranges kept; more from workers are dropped (a hostile or huge report)

#: what counts as inside when no cluster range is known
DEFAULT_INTERNAL = (
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "100.64.0.0/10",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "198.18.0.0/15",
    "fc00::/7",
    "fe80::/10",
    "::1/128",
)

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class ClusterRanges:
    """The address ranges that are "the cluster": configured ones plus those workers reported."""

    __slots__ = ("_configured", "_reported")

    def __init__(self, configured: Iterable[str] = ()) -> None:
        self._configured: list[Network] = [ipaddress.ip_network(c, strict=False) for c in configured]
        self._reported: dict[str, list[Network]] = {}  # worker -> its ranges

    def report(self, worker: str, ranges: Iterable[str]) -> int:
        """A worker's ranges (replacing what it reported before); returns how many were usable."""
        nets: list[Network] = []
        for r in ranges:
            if len(nets) >= MAX_RANGES:
                break
            try:
                nets.append(ipaddress.ip_network(str(r), strict=False))
            except ValueError:
                continue
        self._reported[worker] = nets
        return len(nets)

    def networks(self) -> list[Network]:
        """Every known range; the defaults when none is known."""
        nets = list(self._configured)
        for reported in self._reported.values():
            nets.extend(reported)
        if not nets:
            nets = [ipaddress.ip_network(c) for c in DEFAULT_INTERNAL]
        return nets

    def contains(self, ip: str) -> bool:
        """Is ``ip`` inside the cluster? An unparsable address is taken as inside (never "egress")."""
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            return True
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped
        return any(addr.version == n.version and addr in n for n in self.networks())


@dataclass(frozen=True, slots=True)
class MapNode:
    """One node of the service map. ``id`` is unique and stable across queries."""

    kind: str  # one of KINDS
    id: str  # "shop/Deployment/web", "shop/pod/web-0", "shop/svc/api", "node/node-a", "ip/10.1.2.3"
    namespace: str | None
    name: str  # what to show: "Deployment/web", "web-0", "api", "node-a", "10.1.2.3"

    @property
    def external(self) -> bool:
        return self.kind == "external"


def node_of(ep: Endpoint, ranges: ClusterRanges) -> MapNode:
    """The map node of an endpoint (see the module docstring for the order)."""
    ns = ep.namespace
    if ep.workload:
        return MapNode("workload", f"{ns or ''}/{ep.workload}", ns, ep.workload)
    if ep.pod:
        return MapNode("pod", f"{ns or ''}/pod/{ep.pod}", ns, ep.pod)
    if ep.service:
        return MapNode("service", f"{ns or ''}/svc/{ep.service}", ns, ep.service)
    ip = ep.ip or "?"
    if ep.node and not ns:
        return MapNode("node", f"node/{ep.node}", None, ep.node)
    if ranges.contains(ip):
        return MapNode("ip", f"ip/{ip}", None, ip)
    return MapNode("external", f"external/{ip}", None, ip)
