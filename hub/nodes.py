"""What a call's or flow's endpoint is on the service map: a workload, a pod, a service, a node, an
address inside the cluster, or an address outside it.

The map, the per-minute aggregates and the alerts all key traffic by these nodes, so they must agree:
one function, `node_of`, decides. Most specific identity wins: a workload (``namespace/Kind/name``),
else a bare pod, else a service, else the address — ``external`` when it lies outside every cluster
range (`ClusterRanges`), ``ip`` when inside. An external address is what makes unexpected egress
stand out. An endpoint's ``node`` does not name it: the worker puts its own node on every end whose
process it found, so it says where the process ran, not what the address is (and flows, which carry
no process identity, must land on the same node as the calls of the same connection).

Cluster ranges come from the hub's ``--cluster-cidr`` options and from what workers report (their
nodes' pod CIDRs and addresses). With none known at all, the private, shared, loopback and
link-local ranges count as the cluster, which is right for a lab and for most clusters.
"""

from __future__ import annotations

import bisect
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

from dissect.model import Endpoint

__all__ = ["DEFAULT_INTERNAL", "MAX_RANGES", "MAX_TOTAL_RANGES", "ClusterRanges", "MapNode", "node_of"]

KINDS = ("workload", "pod", "service", "ip", "external")
MAX_RANGES = 4096  # ranges kept per worker; more are dropped (a hostile or huge report)
MAX_TOTAL_RANGES = 65536  # over all workers: a thousand nodes' pod CIDRs and addresses fit

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
    """The address ranges that are "the cluster": configured ones plus those workers reported.

    `contains` is called for every address the aggregates have not seen yet, so it bisects merged
    integer intervals (rebuilt when the ranges change) rather than testing each network: with a few
    hundred workers reporting their pod CIDRs, a linear scan cost milliseconds per address.
    `generation` changes whenever the answer of `contains` may have changed, so callers that cache
    answers (hub/aggregates.py) know when to drop them.
    """

    __slots__ = ("_configured", "_index", "_index_generation", "_reported", "generation")

    def __init__(self, configured: Iterable[str] = ()) -> None:
        self._configured: list[Network] = [ipaddress.ip_network(c, strict=False) for c in configured]
        self._reported: dict[str, list[Network]] = {}  # worker -> its ranges
        self.generation = 0
        self._index: dict[int, tuple[list[int], list[int]]] = {}  # version -> (starts, ends)
        self._index_generation = -1

    def report(self, worker: str, ranges: Iterable[str]) -> int:
        """A worker's ranges (replacing what it reported before); returns how many were usable.
        At most MAX_RANGES per worker and MAX_TOTAL_RANGES over all workers are kept."""
        room = MAX_TOTAL_RANGES - sum(len(v) for k, v in self._reported.items() if k != worker)
        limit = max(0, min(MAX_RANGES, room))
        nets: list[Network] = []
        for r in ranges:
            if len(nets) >= limit:
                break
            try:
                nets.append(ipaddress.ip_network(str(r), strict=False))
            except ValueError:
                continue
        if self._reported.get(worker) != nets:
            self._reported[worker] = nets
            self.generation += 1
        return len(nets)

    def forget(self, worker: str) -> None:
        """Drop what a worker reported (the hub forgot the worker)."""
        if self._reported.pop(worker, None) is not None:
            self.generation += 1

    def networks(self) -> list[Network]:
        """Every known range; the defaults when none is known."""
        nets = list(self._configured)
        for reported in self._reported.values():
            nets.extend(reported)
        if not nets:
            nets = [ipaddress.ip_network(c) for c in DEFAULT_INTERNAL]
        return nets

    def _intervals(self) -> dict[int, tuple[list[int], list[int]]]:
        if self._index_generation != self.generation:
            spans: dict[int, list[tuple[int, int]]] = {4: [], 6: []}
            for n in self.networks():
                spans[n.version].append((int(n.network_address), int(n.broadcast_address)))
            index: dict[int, tuple[list[int], list[int]]] = {}
            for version, items in spans.items():
                starts: list[int] = []
                ends: list[int] = []
                for lo, hi in sorted(items):
                    if ends and lo <= ends[-1] + 1:
                        ends[-1] = max(ends[-1], hi)
                    else:
                        starts.append(lo)
                        ends.append(hi)
                index[version] = (starts, ends)
            self._index = index
            self._index_generation = self.generation
        return self._index

    def contains(self, ip: str) -> bool:
        """Is ``ip`` inside the cluster? An unparsable address is taken as inside (never "egress")."""
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            return True
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped
        starts, ends = self._intervals()[addr.version]
        value = int(addr)
        i = bisect.bisect_right(starts, value) - 1
        return i >= 0 and value <= ends[i]


@dataclass(frozen=True, slots=True)
class MapNode:
    """One node of the service map. ``id`` is unique and stable across queries."""

    kind: str  # one of KINDS
    id: str  # "shop/Deployment/web", "shop/pod/web-0", "shop/svc/api", "ip/10.1.2.3", "external/1.2.3.4"
    namespace: str | None
    name: str  # what to show: "Deployment/web", "web-0", "api", "10.1.2.3"

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
    if ranges.contains(ip):
        return MapNode("ip", f"ip/{ip}", None, ip)
    return MapNode("external", f"external/{ip}", None, ip)
