"""Kubernetes API objects (plain dicts, as the API server sends them) turned into small records.

The index (`capture.k8s.index`) never keeps the API's dicts: a Pod as listed is 5-20 KB of JSON
(managedFields, specs, probes, statuses) of which identity needs a few hundred bytes. Each parser
takes the object exactly as `kubectl get -o json` or a watch event's ``object`` has it (camelCase
keys; ``ApiClient().sanitize_for_serialization(model)`` gives the same shape from the `kubernetes`
package's typed models) and returns a frozen record holding only what the index uses.

Objects come from the network, so each parser is defensive: a field of the wrong type is treated as
absent, lists and strings are capped (a hostile or corrupt object cannot make the index grow without
bound), and an object that cannot name itself (no name, no namespace where one is required) raises
`BadObject`, which the index counts and skips. Nothing here raises anything else for any JSON value.
The fields that name *other* objects or address ranges (an endpoint's targetRef and node, a Node's
pod CIDRs) are checked against the API's own syntax, because the index hands them out as identity;
a malformed one is dropped and reported in the record's ``ignored`` (field, count) pairs for the
index to count.
"""

from __future__ import annotations

import collections
import datetime
import ipaddress
import re
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from capture.procs import container_id, normalize_ip

# Caps. The API server's own validation keeps real objects far below them; they only bound what a
# hostile or corrupt object can cost.
MAX_NAME = 253  # DNS subdomain: names, namespaces, node names
MAX_LABEL_KEY = 317  # prefix (253) + "/" + name (63)
MAX_LABEL_VALUE = 63
MAX_LABELS = 128
MAX_IPS = 16  # podIPs/clusterIPs hold at most 2 (dual stack); node addresses a handful
MAX_PORTS = 256
MAX_CONTAINERS = 64
MAX_ADDRESSES = 5000  # Endpoints are truncated at 1000 addresses by the API; slices hold 100
MAX_NAMESPACE = 63  # namespaces are DNS labels
# The widest pod CIDR a node may claim. Controllers hand out /24 (IPv4) and /64 (IPv6) by default and
# a single-node cluster may take a /16; a "0.0.0.0/0" would name that node for every address.
MIN_POD_CIDR_PREFIX = {4: 8, 6: 32}

TERMINAL_PHASES = frozenset({"Succeeded", "Failed"})


class BadObject(ValueError):
    """The object cannot be used (no name, no namespace...); `reason` is a short, countable phrase."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class OwnerRef:
    """The controlling owner of an object (``metadata.ownerReferences`` with ``controller: true``)."""

    kind: str
    name: str
    uid: str | None


@dataclass(frozen=True, slots=True)
class DeclaredPort:
    """A port a pod's container declares; `host_port` is where the node forwards to it (or None)."""

    container: str
    port: int
    host_port: int | None


@dataclass(frozen=True, slots=True)
class PodInfo:
    """What identity needs of a Pod."""

    namespace: str
    name: str
    uid: str | None
    created_ns: int | None
    labels: dict[str, str]  # never mutated once built: Identity objects share it
    owner: OwnerRef | None
    template_hash: str | None  # the pod-template-hash label the Deployment controller sets
    node: str | None
    host_network: bool
    ips: tuple[str, ...]  # status.podIPs (else podIP): for hostNetwork pods these are node IPs
    host_ips: tuple[str, ...]  # status.hostIPs (else hostIP): the node's address(es)
    ports: tuple[DeclaredPort, ...]
    containers: tuple[str, ...]  # names of the long-running containers (app containers, sidecars)
    container_ids: tuple[tuple[str, str], ...]  # (64-hex id, container name), current and last state
    terminal: bool  # phase Succeeded/Failed: the sandbox is gone, the IP free for another pod

    def container_for_port(self, port: int | None) -> str | None:
        """The container that declares ``port`` (or the only container); None when it is not clear."""
        if port is not None:
            found: str | None = None
            for p in self.ports:
                if p.port == port or p.host_port == port:
                    if found is None:
                        found = p.container
                    elif found != p.container:
                        return None  # declared by two containers
            if found is not None:
                return found
        return self.containers[0] if len(self.containers) == 1 else None


@dataclass(frozen=True, slots=True)
class ServicePort:
    name: str
    port: int
    node_port: int | None


@dataclass(frozen=True, slots=True)
class ServiceInfo:
    """What identity needs of a Service: the addresses that reach it and its ports."""

    namespace: str
    name: str
    uid: str | None
    created_ns: int | None
    ips: tuple[str, ...]  # clusterIPs, externalIPs and load-balancer ingress IPs
    ports: tuple[ServicePort, ...]
    ref: str  # "namespace/name"
    port_set: frozenset[int]  # the service ports, for a quick "does it serve this port"


@dataclass(frozen=True, slots=True)
class PodRef:
    """A pod as an endpoint's ``targetRef`` names it: all the index knows of a pod on another node.

    `node` is the endpoint's ``nodeName`` (v1beta1 slices: its ``kubernetes.io/hostname`` topology
    label, which is the node name wherever the kubelet's hostname is not overridden).
    """

    namespace: str
    name: str
    uid: str | None
    node: str | None


# (IP version, prefix length, the network's top prefix-length bits as an int): a pod CIDR in the form
# the index looks addresses up by (an address shifted right by its host bits).
PodCidr = tuple[int, int, int]

# (field, how many values of it were dropped as malformed): see the module docstring.
Ignored = tuple[tuple[str, int], ...]

# (name, port): a port of an endpoint as Endpoints/EndpointSlices list it. The name is the service
# port's name (empty for a single-port service); port None means "every port" (slices allow that).
EndpointPort = tuple[str, int | None]


@dataclass(frozen=True, slots=True)
class EndpointsInfo:
    """The addresses behind one service, from a core/v1 Endpoints or a discovery EndpointSlice."""

    namespace: str
    name: str  # the object's own name (a slice's is generated)
    uid: str | None
    created_ns: int | None
    service: str  # the service's name: the Endpoints name, or the slice's service-name label
    members: tuple[tuple[str, tuple[EndpointPort, ...]], ...]  # (ip, its ports), ready or not
    targets: tuple[tuple[str, PodRef], ...] = ()  # (ip, its pod) for the members a Pod targetRef names
    ignored: Ignored = ()


@dataclass(frozen=True, slots=True)
class OwnerInfo:
    """A workload object (ReplicaSet, Deployment, StatefulSet, DaemonSet, Job, CronJob)."""

    kind: str
    namespace: str
    name: str
    uid: str | None
    owner: OwnerRef | None


@dataclass(frozen=True, slots=True)
class NodeInfo:
    name: str
    uid: str | None
    created_ns: int | None
    ips: tuple[str, ...]  # InternalIP and ExternalIP addresses
    pod_cidrs: tuple[PodCidr, ...] = ()  # spec.podCIDRs (else spec.podCIDR)
    ignored: Ignored = ()


# --- field access that never raises -----------------------------------------------------------------


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _list(value: Any, cap: int) -> list[Any]:
    return value[:cap] if isinstance(value, list) else []


def _str(value: Any, cap: int = MAX_NAME) -> str | None:
    """A non-empty string within the cap, else None; interned: names repeat across objects."""
    if isinstance(value, str) and 0 < len(value) <= cap:
        return sys.intern(value)
    return None


def _port(value: Any) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool) and 0 < value < 65536:
        return value
    return None


def _ip(value: Any) -> str | None:
    if isinstance(value, str) and len(value) <= 64:
        return normalize_ip(value)
    return None


def _unique(items: Iterable[str | None], cap: int) -> tuple[str, ...]:
    out: list[str] = []
    for item in items:
        if item is not None and item not in out:
            out.append(item)
            if len(out) >= cap:
                break
    return tuple(out)


def parse_time(value: Any) -> int | None:
    """An RFC 3339 timestamp (``2024-05-01T12:00:00Z``) as nanoseconds since the epoch, else None."""
    if not isinstance(value, str) or not 0 < len(value) <= 64:
        return None
    try:
        when = datetime.datetime.fromisoformat(value)
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.UTC)
    try:
        return int(when.timestamp()) * 1_000_000_000 + when.microsecond * 1000
    except (OverflowError, OSError, ValueError):
        return None


def _meta(obj: Any, namespaced: bool) -> tuple[dict[str, Any], str, str, str | None, int | None]:
    """(metadata, namespace or "", name, uid, creation time); BadObject when it cannot be named."""
    if not isinstance(obj, dict):
        raise BadObject("not an object")
    meta = _dict(obj.get("metadata"))
    name = _str(meta.get("name"))
    if name is None:
        raise BadObject("no name")
    namespace = ""
    if namespaced:
        ns = _str(meta.get("namespace"))
        if ns is None:
            raise BadObject("no namespace")
        namespace = ns
    uid = _str(meta.get("uid"), 64)
    return meta, namespace, name, uid, parse_time(meta.get("creationTimestamp"))


def _labels(meta: dict[str, Any]) -> dict[str, str]:
    raw = meta.get("labels")
    if not isinstance(raw, dict):
        return {}
    out: dict[str, str] = {}
    for key, value in raw.items():
        k = _str(key, MAX_LABEL_KEY)
        if k is None or not isinstance(value, str) or len(value) > MAX_LABEL_VALUE:
            continue
        out[k] = sys.intern(value)
        if len(out) >= MAX_LABELS:
            break
    return out


def _controller(meta: dict[str, Any]) -> OwnerRef | None:
    """The owner reference marked ``controller: true``; else the first usable one."""
    first: OwnerRef | None = None
    for ref in _list(meta.get("ownerReferences"), 16):
        ref = _dict(ref)
        kind, name = _str(ref.get("kind"), 63), _str(ref.get("name"))
        if kind is None or name is None:
            continue
        owner = OwnerRef(kind, name, _str(ref.get("uid"), 64))
        if ref.get("controller") is True:
            return owner
        if first is None:
            first = owner
    return first


def _address_list(entries: Any, key: str) -> tuple[str, ...]:
    """IPs from ``[{key: ip}, ...]`` (podIPs, hostIPs, addresses...)."""
    return _unique((_ip(_dict(e).get(key)) for e in _list(entries, MAX_IPS)), MAX_IPS)


# DNS-1123 names, as the API server validates them: pod and node names are subdomains, namespaces
# labels. Anything else in a reference is not a name Kubernetes could have written.
_SUBDOMAIN = re.compile(r"[a-z0-9](?:[-a-z0-9.]*[a-z0-9])?")
_LABEL = re.compile(r"[a-z0-9](?:[-a-z0-9]*[a-z0-9])?")
_UID = re.compile(r"[0-9A-Za-z](?:[-0-9A-Za-z_.]*[0-9A-Za-z])?")


def _name(value: Any, pattern: re.Pattern[str], cap: int) -> str | None:
    """``value`` when it is a well-formed name within ``cap`` characters (interned), else None."""
    if isinstance(value, str) and 0 < len(value) <= cap and pattern.fullmatch(value):
        return sys.intern(value)
    return None


class _Drops:
    """Counts of malformed values dropped while parsing one object, by field (fixed names only)."""

    __slots__ = ("counts",)

    def __init__(self) -> None:
        self.counts: collections.Counter[str] = collections.Counter()

    def add(self, field: str) -> None:
        self.counts[field] += 1

    def result(self) -> Ignored:
        return tuple(self.counts.items())


def _pod_target(ref: Any, namespace: str, node: Any, node_field: str, drops: _Drops) -> PodRef | None:
    """The pod an endpoint address's ``targetRef`` names (only ``kind: Pod``), with its node.

    No targetRef (an address outside the cluster) and references to other kinds are not errors;
    a reference that is not an object, or a Pod reference whose name or namespace is not a valid
    name, is dropped and counted. A malformed uid or node name only loses that field (counted).
    """
    if ref is None:
        return None
    if not isinstance(ref, dict):
        drops.add("targetRef")
        return None
    kind = ref.get("kind")
    if kind != "Pod":
        if not isinstance(kind, str):
            drops.add("targetRef")
        return None
    name = _name(ref.get("name"), _SUBDOMAIN, MAX_NAME)
    if name is None:
        drops.add("targetRef.name")
        return None
    ns_raw = ref.get("namespace")
    ns = namespace  # the API may leave it out for a pod of the object's own namespace
    if ns_raw is not None and ns_raw != "":
        valid = _name(ns_raw, _LABEL, MAX_NAMESPACE)
        if valid is None:
            drops.add("targetRef.namespace")
            return None
        ns = valid
    uid_raw = ref.get("uid")
    uid = _name(uid_raw, _UID, 64)
    if uid is None and uid_raw is not None and uid_raw != "":
        drops.add("targetRef.uid")
    node_name = _name(node, _SUBDOMAIN, MAX_NAME)
    if node_name is None and node is not None and node != "":
        drops.add(node_field)
    return PodRef(ns, name, uid, node_name)


def _pod_cidr(value: Any) -> PodCidr | None:
    """``"10.244.1.0/24"`` (or IPv6) as a `PodCidr`; None for anything malformed or too wide.

    Host bits are masked off (the API server accepts ``10.244.1.7/24`` as the same range).
    """
    if not isinstance(value, str) or not 0 < len(value) <= 64 or "/" not in value or "%" in value:
        return None
    try:
        net = ipaddress.ip_network(value, strict=False)
    except (ValueError, TypeError):
        return None
    if net.prefixlen < MIN_POD_CIDR_PREFIX[net.version]:
        return None
    host_bits = net.max_prefixlen - net.prefixlen
    return (net.version, net.prefixlen, int(net.network_address) >> host_bits)


# --- kinds ------------------------------------------------------------------------------------------


class SharedFields:
    """Labels and owner references shared by the pods of one owner, bounded.

    Replicas of one template carry equal labels and the same owner reference; one dict per pod
    would be a tenth of what the index keeps per pod. Each owner's last pod's fields are kept and
    an equal newcomer takes them instead of its own copy (never modified afterwards: Identity
    objects hand them out). At most `max_groups` owners are remembered; past that the memory starts
    over, which only costs sharing.
    """

    def __init__(self, max_groups: int = 100_000) -> None:
        self._last: dict[tuple[str, str, str], tuple[dict[str, str], OwnerRef]] = {}
        self._max = max_groups

    def share(
        self, namespace: str, owner: OwnerRef, labels: dict[str, str]
    ) -> tuple[dict[str, str], OwnerRef]:
        """``labels`` and ``owner``, or the equal ones of the owner's previous pod."""
        group = (namespace, owner.kind, owner.name)
        last = self._last.get(group)
        if last is None:
            if len(self._last) >= self._max:
                self._last.clear()
        else:
            if last[0] == labels:
                labels = last[0]
            if last[1] == owner:
                owner = last[1]
        self._last[group] = (labels, owner)
        return labels, owner


def parse_pod(obj: Any, shared: SharedFields | None = None) -> PodInfo:
    meta, namespace, name, uid, created = _meta(obj, namespaced=True)
    labels = _labels(meta)
    owner = _controller(meta)
    if shared is not None and owner is not None:
        labels, owner = shared.share(namespace, owner, labels)
    spec = _dict(obj.get("spec"))
    status = _dict(obj.get("status"))
    host_network = spec.get("hostNetwork") is True
    ips = _address_list(status.get("podIPs"), "ip") or _unique([_ip(status.get("podIP"))], 1)
    host_ips = _address_list(status.get("hostIPs"), "ip") or _unique([_ip(status.get("hostIP"))], 1)

    ports: list[DeclaredPort] = []
    containers: list[str] = []
    for field, long_running in (("containers", None), ("initContainers", "Always")):
        for c in _list(spec.get(field), MAX_CONTAINERS):
            c = _dict(c)
            cname = _str(c.get("name"), 63)
            if cname is None:
                continue
            # init containers are gone before the pod serves, except "sidecar" ones (restartPolicy Always)
            if long_running is not None and c.get("restartPolicy") != long_running:
                continue
            containers.append(cname)
            for p in _list(c.get("ports"), MAX_PORTS):
                p = _dict(p)
                port = _port(p.get("containerPort"))
                if port is not None and len(ports) < MAX_PORTS:
                    ports.append(DeclaredPort(cname, port, _port(p.get("hostPort"))))

    ids: list[tuple[str, str]] = []
    for field in ("containerStatuses", "initContainerStatuses", "ephemeralContainerStatuses"):
        for cs in _list(status.get(field), MAX_CONTAINERS):
            cs = _dict(cs)
            cname = _str(cs.get("name"), 63)
            if cname is None:
                continue
            last = _dict(_dict(cs.get("lastState")).get("terminated"))
            for raw in (cs.get("containerID"), last.get("containerID")):
                cid = container_ref_id(raw)
                if cid is not None and all(cid != seen for seen, _ in ids):
                    ids.append((cid, cname))

    hash_label = labels.get("pod-template-hash")
    return PodInfo(
        namespace=namespace,
        name=name,
        uid=uid,
        created_ns=created,
        labels=labels,
        owner=owner,
        template_hash=hash_label,
        node=_str(spec.get("nodeName")),
        host_network=host_network,
        ips=ips,
        host_ips=host_ips,
        ports=tuple(ports),
        containers=tuple(containers),
        container_ids=tuple(ids[: 2 * MAX_CONTAINERS]),
        terminal=status.get("phase") in TERMINAL_PHASES,
    )


def container_ref_id(raw: Any) -> str | None:
    """The 64-hex id in ``containerd://<id>`` (docker://, cri-o://); what capture.procs reports."""
    if not isinstance(raw, str) or not 0 < len(raw) <= 128:
        return None
    _, sep, rest = raw.partition("://")
    return container_id(rest if sep else raw)


def parse_service(obj: Any) -> ServiceInfo:
    _, namespace, name, uid, created = _meta(obj, namespaced=True)
    spec = _dict(obj.get("spec"))
    status = _dict(obj.get("status"))
    cluster = [_ip(ip) for ip in _list(spec.get("clusterIPs"), MAX_IPS)] or [_ip(spec.get("clusterIP"))]
    external = [_ip(ip) for ip in _list(spec.get("externalIPs"), MAX_IPS)]
    ingress = [_ip(_dict(i).get("ip")) for i in _list(_dict(status.get("loadBalancer")).get("ingress"), 16)]
    ports: list[ServicePort] = []
    for p in _list(spec.get("ports"), MAX_PORTS):
        p = _dict(p)
        port = _port(p.get("port"))
        if port is not None:
            ports.append(ServicePort(_str(p.get("name"), 63) or "", port, _port(p.get("nodePort"))))
    return ServiceInfo(
        namespace=namespace,
        name=name,
        uid=uid,
        created_ns=created,
        ips=_unique([*cluster, *external, *ingress], MAX_IPS),  # "None" (headless) is no IP
        ports=tuple(ports),
        ref=f"{namespace}/{name}",
        port_set=frozenset(p.port for p in ports),
    )


def _endpoint_ports(entries: Any, slice_shape: bool) -> tuple[EndpointPort, ...]:
    out: list[EndpointPort] = []
    for p in _list(entries, MAX_PORTS):
        p = _dict(p)
        port = _port(p.get("port"))
        if port is None and not (slice_shape and p.get("port") is None):
            continue  # Endpoints require a port; a slice's missing port means "all ports"
        out.append((_str(p.get("name"), 63) or "", port))
    return tuple(out)


def parse_endpoints(obj: Any) -> EndpointsInfo:
    """core/v1 Endpoints: named after its service; ``subsets`` of addresses sharing ports."""
    _, namespace, name, uid, created = _meta(obj, namespaced=True)
    members: dict[str, tuple[EndpointPort, ...]] = {}
    targets: dict[str, PodRef] = {}
    drops = _Drops()
    for subset in _list(obj.get("subsets"), MAX_ADDRESSES):
        subset = _dict(subset)
        ports = _endpoint_ports(subset.get("ports"), slice_shape=False)
        for field in ("addresses", "notReadyAddresses"):
            for a in _list(subset.get(field), MAX_ADDRESSES):
                a = _dict(a)
                ip = _ip(a.get("ip"))
                if ip is None or (ip not in members and len(members) >= MAX_ADDRESSES):
                    continue
                members[ip] = _merge_ports(members.get(ip), ports)
                if ip not in targets:  # one address in several subsets (ports) names one pod
                    target = _pod_target(a.get("targetRef"), namespace, a.get("nodeName"), "nodeName", drops)
                    if target is not None:
                        targets[ip] = target
    return EndpointsInfo(
        namespace, name, uid, created, name, tuple(members.items()), tuple(targets.items()), drops.result()
    )


def parse_endpoint_slice(obj: Any) -> EndpointsInfo:
    """discovery.k8s.io v1 or v1beta1 EndpointSlice (the shapes agree on everything used here but
    the node: v1 has ``nodeName``, v1beta1 the ``kubernetes.io/hostname`` topology label)."""
    meta, namespace, name, uid, created = _meta(obj, namespaced=True)
    service = _str(_dict(meta.get("labels")).get("kubernetes.io/service-name"))
    if service is None:
        raise BadObject("no kubernetes.io/service-name label")
    ports = _endpoint_ports(obj.get("ports"), slice_shape=True)
    members: dict[str, tuple[EndpointPort, ...]] = {}
    targets: dict[str, PodRef] = {}
    drops = _Drops()
    if obj.get("addressType") in (None, "IPv4", "IPv6"):  # FQDN slices name hosts, not addresses
        for e in _list(obj.get("endpoints"), MAX_ADDRESSES):
            e = _dict(e)
            target: PodRef | None = None
            looked = False
            for raw in _list(e.get("addresses"), MAX_IPS):
                ip = _ip(raw)
                if ip is None or (ip not in members and len(members) >= MAX_ADDRESSES):
                    continue
                members[ip] = ports
                if not looked:  # parsed once per endpoint: its addresses are one pod's
                    looked = True
                    node, field = e.get("nodeName"), "nodeName"
                    if node is None:
                        node, field = _dict(e.get("topology")).get("kubernetes.io/hostname"), "topology"
                    target = _pod_target(e.get("targetRef"), namespace, node, field, drops)
                if target is not None and ip not in targets:
                    targets[ip] = target
    return EndpointsInfo(
        namespace, name, uid, created, service, tuple(members.items()), tuple(targets.items()), drops.result()
    )


def _merge_ports(
    old: tuple[EndpointPort, ...] | None, new: tuple[EndpointPort, ...]
) -> tuple[EndpointPort, ...]:
    if not old:
        return new
    return old + tuple(p for p in new if p not in old)


def parse_owner(kind: str, obj: Any) -> OwnerInfo:
    meta, namespace, name, uid, _ = _meta(obj, namespaced=True)
    return OwnerInfo(kind, namespace, name, uid, _controller(meta))


def parse_node(obj: Any) -> NodeInfo:
    _, _, name, uid, created = _meta(obj, namespaced=False)
    addresses = _list(_dict(obj.get("status")).get("addresses"), MAX_IPS)
    ips = _unique(
        (
            _ip(_dict(a).get("address"))
            for a in addresses
            if _dict(a).get("type") in ("InternalIP", "ExternalIP")
        ),
        MAX_IPS,
    )
    spec = _dict(obj.get("spec"))
    drops = _Drops()
    raw = spec.get("podCIDRs")  # dual stack: one per family; podCIDR is its first entry
    if raw is None:
        raw = [] if spec.get("podCIDR") in (None, "") else [spec.get("podCIDR")]
    elif not isinstance(raw, list):
        drops.add("podCIDR")
    cidrs: list[PodCidr] = []
    for value in _list(raw, MAX_IPS):
        cidr = _pod_cidr(value)
        if cidr is None:
            drops.add("podCIDR")
        elif cidr not in cidrs:
            cidrs.append(cidr)
    return NodeInfo(name, uid, created, ips, tuple(cidrs), drops.result())
