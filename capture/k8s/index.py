"""Who an address was, at a given time: the Kubernetes identity index the worker tags calls with.

Sans-IO: watch events go in (`apply`, and `replace` after a relist), questions come out (`resolve`,
`by_container`, `service_backends`, `tag`). Whoever talks to the API server (capture.k8s.watch, or a
hub serving resolutions to its workers) feeds it; every time is the caller's, in nanoseconds since
the epoch, the same clock as the capture's packet timestamps. Nothing here blocks, sleeps or reads
the clock, so tests drive it with plain dicts and chosen times.

What an address resolves to, in this order:

1. a pod's own IP (status.podIPs, not hostNetwork): the pod, its namespace, its workload (climbing
   ReplicaSet -> Deployment and Job -> CronJob through ``ownerReferences``; a pod without a
   controller is ``Pod/name``), labels, node, and the services whose Endpoints/EndpointSlices list
   that IP at that time (a call that reached the pod after kube-proxy's DNAT still names the
   service; when several do, one whose endpoint ports include the call's port is preferred);
2. a node IP and a port a pod serves there: hostNetwork pods' containerPorts, and hostPorts of any
   pod (the node forwards those to the pod);
3. an address an Endpoints/EndpointSlice ``targetRef`` names a Pod for (``kind="endpoint"``): a pod
   this index has no Pod object for, typically one on another node when each worker watches only
   its own node's pods. It gets the pod's name, namespace and uid from the reference, its node from
   the endpoint, the services as in 1, no labels, and a workload only when the pod's generated name
   leads to an owner object the index holds (``<owner>-<5 random chars>`` for ReplicaSet, DaemonSet
   and Job pods, ``<statefulset>-<ordinal>``; see `_owner_candidates`), climbed as in 1; never a
   guess. When several sources list the address then, the one that listed it last wins. A node IP
   (the endpoint of a hostNetwork pod) matches only on a port the endpoint lists;
4. a Service's ClusterIP, externalIP or load-balancer IP: the service (``service`` is its name,
   ``namespace`` its namespace). Which pod answered is not knowable from the address alone;
   `service_backends` lists the candidates at that time for a caller that wants them;
5. a node IP and one of a Service's nodePorts: that service, on that node;
6. a node IP alone: the node (a hostNetwork client's ephemeral port matches no declared port; its
   process, through its container id and `by_container`, can still name the pod);
7. an address inside a Node's ``spec.podCIDRs`` (``kind="pod-cidr"``): only the node, the most
   specific range first. A pod nobody lists (no Pod object, in no endpoint) still gets its node.

IP reuse. Every address keeps its holders as time ranges (`capture.k8s.spans`): a pod's IP from when
it got it (the event that first showed it; for a pod first seen already running, its
creationTimestamp, but never before the previous holder let go) to its deletion, its terminal phase
or the IP changing; a new pod claiming an IP ends the previous holder's range then, even when that
pod's DELETED event comes later (the two arrive in any order). An endpoint's pod holds its address
while a source lists it for that pod: from the event that listed it (a source first seen already
listing it: since the source's creation, but never before another pod's listing of the address
ended) to the event that drops it or the source's deletion. A pod CIDR is its node's while the Node
has it. `ip_lead_ns` lets an address resolve to a pod (or an endpoint's pod) for a moment before its
IP was *seen*, when nothing else held the address then: the kubelet reports a pod's IP after the
pod already has it. Ended ranges are kept `history_ns`, bounded in
number; objects that still exist are kept as long as they exist, at most `max_objects` per kind.

Hostile or malformed objects (missing fields, wrong types) never raise: `apply` counts them under
`stats()["skipped"]` and goes on; malformed references inside a usable object (a targetRef, a node
name, a pod CIDR) are dropped and counted under `stats()["ignored"]`. One lock guards everything:
the watch thread writes, the capture thread reads, and a resolution costs a few microseconds
(bench/k8s_index.py).
"""

from __future__ import annotations

import collections
import logging
import socket
import threading
from collections.abc import Callable, Hashable, Iterable
from typing import Any

import msgspec

from capture.k8s.objects import (
    BadObject,
    EndpointPort,
    Ignored,
    NodeInfo,
    OwnerRef,
    PodCidr,
    PodInfo,
    PodRef,
    ServiceInfo,
    SharedFields,
    container_ref_id,
    parse_endpoint_slice,
    parse_endpoints,
    parse_node,
    parse_owner,
    parse_pod,
    parse_service,
)
from capture.k8s.spans import History, Span, Table
from capture.procs import normalize_ip
from dissect.model import Call, Endpoint

log = logging.getLogger("capture.k8s.index")

OWNER_KINDS = ("ReplicaSet", "Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob")
KINDS = ("Pod", "Service", "Endpoints", "EndpointSlice", *OWNER_KINDS, "Node")
ADDED, MODIFIED, DELETED = "ADDED", "MODIFIED", "DELETED"

DEFAULT_HISTORY_NS = 600 * 10**9  # ended ranges kept 10 minutes: calls are tagged when they complete
DEFAULT_MAX_HISTORY = 200_000  # ended ranges kept at most (about 100 bytes each)
DEFAULT_IP_LEAD_NS = 5 * 10**9  # how long before its IP was seen a pod may already have been using it
DEFAULT_MAX_OBJECTS = 1_000_000  # live objects per kind; far above any cluster Kubernetes supports
PRUNE_EVERY_NS = 10**9  # `apply` prunes ended ranges at most once a second of event time
HOST_HINTS_MAX = 65_536  # host IP -> node name learnt from pods, for clusters whose Nodes we cannot watch
ADDR_CACHE_MAX = 16_384  # parsed addresses kept for pod CIDR lookups (~100 bytes each), cleared when full

# A controller kind climbed through to name the workload: a ReplicaSet is an implementation detail of
# its Deployment, a Job of its CronJob. Anything else is the workload itself.
_CLIMB = frozenset({"ReplicaSet", "Job"})

# Pods a controller creates are named by the API server from the controller's ``generateName``,
# ``<owner>-``, plus 5 characters of this alphabet (k8s.io/apimachinery/pkg/util/rand: no vowels, no
# 0, 1 or 3, so that no word or look-alike appears). StatefulSet pods are ``<statefulset>-<ordinal>``.
_RAND_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"
_RAND_KINDS = ("ReplicaSet", "DaemonSet", "Job")  # whose pods take a random suffix, in the order tried


class Identity(msgspec.Struct, frozen=True):
    """Who an address (or a container) was. `kind` says what matched; unknown fields are None.

    `labels` is shared with the index and must not be modified (`tag` copies it into the call).
    `services` lists every ``namespace/name`` that selected the pod at that time (or that the
    address belongs to); `service` is the one name the call's Endpoint gets. A msgspec Struct:
    built per resolution, it must be cheap (a tenth of a frozen dataclass), and it encodes to JSON
    as is for a hub that serves resolutions to workers.
    """

    # "pod" | "host-port" | "endpoint" | "service" | "node-port" | "node" | "pod-cidr" | "container"
    kind: str
    pod: str | None = None
    namespace: str | None = None
    workload: str | None = None  # "Deployment/web", "StatefulSet/db", "Pod/debug"...
    service: str | None = None
    services: tuple[str, ...] = ()
    node: str | None = None
    labels: dict[str, str] = {}
    pod_uid: str | None = None
    container: str | None = None  # container name, when the port (or the pod's shape) tells


class Backend(msgspec.Struct, frozen=True):
    """One address behind a service at some time, with its port for the asked service port."""

    ip: str
    port: int | None
    identity: Identity | None


class _State:
    """A live object: its latest record and the spans it holds open."""

    __slots__ = ("info", "open", "wl", "wl_for", "wl_gen")

    def __init__(self, info: Any) -> None:
        self.info = info
        self.open: list[Span] = []
        self.wl: str | None = None  # cached workload, valid for (wl_for, wl_gen)
        self.wl_for: Any = None
        self.wl_gen = -1

    def __repr__(self) -> str:
        return f"_State({self.info!r})"


class _PodCidrs:
    """Nodes' pod CIDRs over time, looked up with one dict probe per prefix length on record.

    One `Table` per (IP version, prefix length) maps a network's prefix bits (the address shifted
    right by the host bits) to the spans of the node states that held that range. A lookup shifts
    the address once per prefix length held, the longest first (the most specific range wins), so
    its cost does not grow with the number of nodes.
    """

    __slots__ = ("addrs", "by_len", "held", "lens")

    def __init__(self) -> None:
        self.by_len: dict[tuple[int, int], Table] = {}  # (version, prefix length) -> prefix bits -> spans
        # IP version -> ((host bits, table), ...) for the non-empty tables, the longest prefix first
        self.lens: dict[int, tuple[tuple[int, Table], ...]] = {}
        self.held: frozenset[tuple[int, int]] = frozenset()  # the (version, prefix length) in lens
        # address text -> its integer value (-1: not an address). A lookup asks about the same peers
        # over and over; parsing costs half of it.
        self.addrs: dict[str, int] = {}

    def table(self, version: int, plen: int) -> Table:
        """The table of ``version``/``plen`` ranges (at most 33 + 129 of them ever exist)."""
        table = self.by_len.get((version, plen))
        if table is None:
            table = self.by_len[(version, plen)] = Table(f"pod_cidrs/{version}/{plen}")
        return table

    def added(self, cidrs: tuple[PodCidr, ...]) -> None:
        """Spans of ``cidrs`` were opened: make sure their prefix lengths are tried."""
        if any((version, plen) not in self.held for version, plen, _ in cidrs):
            self.refresh()

    def refresh(self) -> None:
        """Recompute which prefix lengths a lookup tries (after ranges were added or pruned)."""
        lens: dict[int, list[tuple[int, int, Table]]] = {}
        for (version, plen), table in self.by_len.items():
            if len(table):
                lens.setdefault(version, []).append((plen, (32 if version == 4 else 128) - plen, table))
        self.held = frozenset((version, plen) for version, held in lens.items() for plen, _, _ in held)
        self.lens = {
            version: tuple((bits, table) for _, bits, table in sorted(held, key=lambda h: -h[0]))
            for version, held in lens.items()
        }

    def __len__(self) -> int:
        return sum(len(table) for table in self.by_len.values())

    def node_at(self, ip: str, ts: int) -> str | None:
        """The node whose pod CIDR holds ``ip`` at ``ts`` (the most specific range), else None."""
        v6 = ":" in ip
        pairs = self.lens.get(6 if v6 else 4)
        if pairs is None:
            return None
        addr = self.addrs.get(ip)
        if addr is None:
            if len(ip) > 45:  # longer than any address text: not worth a parse, nor a cache entry
                return None
            try:
                addr = int.from_bytes(socket.inet_pton(socket.AF_INET6 if v6 else socket.AF_INET, ip), "big")
            except (OSError, ValueError):  # not an address (an embedded NUL is a ValueError)
                addr = -1
            if len(self.addrs) >= ADDR_CACHE_MAX:
                self.addrs.clear()
            self.addrs[ip] = addr
        if addr < 0:
            return None
        for bits, table in pairs:
            span = table.at(addr >> bits, ts)
            if span is not None:
                name: str = span.value.info.name
                return name
        return None


class _Target:
    """A pod an endpoint names (`PodRef`) and the ports its source lists for the address.

    The value of an ``endpoint_targets`` span. Equal by content, so that a source's next event
    listing the same pod keeps the span (and its start); it caches the inferred workload for one
    owner generation, as `_State` does for pods.
    """

    __slots__ = ("hash", "ports", "ref", "wl", "wl_gen")

    def __init__(self, ref: PodRef, ports: tuple[EndpointPort, ...]) -> None:
        self.ref = ref
        self.ports = ports
        self.hash = hash((ref, ports))
        self.wl: str | None = None
        self.wl_gen = -1

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, _Target)
            and self.hash == other.hash
            and self.ref == other.ref
            and self.ports == other.ports
        )

    def __hash__(self) -> int:
        return self.hash

    def __repr__(self) -> str:
        return f"_Target({self.ref!r}, {self.ports!r})"


Wanted = set[tuple[Table, Hashable, Hashable]]


class IdentityIndex:
    """The identity of cluster addresses over time (see the module docstring)."""

    def __init__(
        self,
        *,
        history_ns: int = DEFAULT_HISTORY_NS,
        max_history: int = DEFAULT_MAX_HISTORY,
        ip_lead_ns: int = DEFAULT_IP_LEAD_NS,
        max_objects: int = DEFAULT_MAX_OBJECTS,
    ) -> None:
        if ip_lead_ns < 0 or max_objects < 1:
            raise ValueError("ip_lead_ns must be >= 0 and max_objects >= 1")
        self._history = History(history_ns, max_history)
        self._lead = ip_lead_ns
        self._max_objects = max_objects
        self._lock = threading.Lock()
        # Keep the attributes below 30: past that CPython 3.11 stops sharing instance dict keys and
        # every attribute read in `resolve` gets slower (measured +10 % per resolution).
        # address tables: key -> spans of holders
        self._pod_ips = Table("pod_ips")  # ip -> pod state (one holder at a time)
        self._host_ports = Table("host_ports")  # (ip, port) -> pod state
        self._containers = Table("containers")  # container id -> pod state
        self._service_ips = Table("service_ips")  # ip -> service state
        self._node_ports = Table("node_ports")  # port -> service state
        self._members_by_ip = Table("members_by_ip")  # ip -> (ns, service, "ns/service", ports)
        self._members_by_service = Table("members_by_service")  # (ns, service) -> (ip, ports)
        self._node_ips = Table("node_ips")  # ip -> node state
        self._targets = Table("endpoint_targets")  # ip -> _Target: a pod an endpoint names (per source)
        self._pod_cidrs = _PodCidrs()  # nodes' pod CIDRs -> node state
        self._owners = Table("owners")  # (kind, ns, name) -> its controller OwnerRef or None
        self._shared = SharedFields()  # labels and owner refs shared by replicas
        self._host_hints: dict[str, str] = {}  # host IP -> node name, from pods (no time: nodes stay)
        # live objects by name
        self._pods: dict[Hashable, _State] = {}
        self._services: dict[Hashable, _State] = {}
        self._sources: dict[Hashable, _State] = {}  # (kind, ns, name): Endpoints and EndpointSlices
        self._owner_objs: dict[Hashable, _State] = {}  # (kind, ns, name)
        self._nodes: dict[Hashable, _State] = {}
        self._owner_gen = 0  # bumped when an owner chain may have changed: invalidates cached workloads
        self._now = 0  # latest event time seen
        self._last_prune = 0
        self._counts: collections.Counter[str] = collections.Counter()
        self._handlers: dict[str, Callable[[str, str, Any, int], Hashable]] = {
            "Pod": self._apply_pod,
            "Service": self._apply_service,
            "Endpoints": self._apply_source,
            "EndpointSlice": self._apply_source,
            "Node": self._apply_node,
            **dict.fromkeys(OWNER_KINDS, self._apply_owner),
        }
        self._live: dict[str, dict[Hashable, _State]] = {
            "Pod": self._pods,
            "Service": self._services,
            "Endpoints": self._sources,
            "EndpointSlice": self._sources,
            "Node": self._nodes,
            **dict.fromkeys(OWNER_KINDS, self._owner_objs),
        }

    # -- feeding -------------------------------------------------------------------------------------

    def apply(self, kind: str, event_type: str, obj: Any, ts_ns: int) -> None:
        """One watch event (``ADDED``/``MODIFIED``/``DELETED``) of ``kind`` observed at ``ts_ns``.

        An unusable event (unknown kind or type, malformed object) is counted in `stats()["skipped"]`
        and otherwise ignored. BOOKMARK and ERROR events carry no identity: the watcher handles
        them; passed here they are counted as skipped too.
        """
        with self._lock:
            self._apply_one(kind, event_type, obj, ts_ns)
            self._maybe_prune()

    def replace(self, kind: str, objs: Iterable[Any], ts_ns: int, namespace: str | None = None) -> None:
        """A fresh list of every ``kind`` object (after a 410 Gone, or at start).

        Objects missing from the list are ended at ``ts_ns``, as if deleted then. With ``namespace``,
        only that namespace's objects are candidates (a watch scoped to one namespace); a watch
        scoped by a selector must not call this with a partial list of a kind another watch feeds.
        The lock is taken per object, not for the whole list: a relist of a big cluster takes
        a second, and the capture thread's resolutions must not wait for it.
        """
        live = self._live.get(kind) if isinstance(kind, str) else None
        if live is None:
            with self._lock:
                self._counts["skipped.unknown kind"] += 1
            return
        seen: set[Hashable] = set()
        try:
            for obj in objs:
                with self._lock:
                    key = self._apply_one(kind, ADDED, obj, ts_ns)
                if key is not None:
                    seen.add(key)
        except TypeError:  # not iterable: nothing to compare with, keep what we have
            with self._lock:
                self._counts[f"skipped.{kind}.list not iterable"] += 1
            return
        with self._lock:
            gone = [
                key
                for key, st in live.items()
                if key not in seen
                and _kind_of(key, kind) == kind
                and (namespace is None or getattr(st.info, "namespace", None) == namespace)
            ]
            for key in gone:
                self._end_object(live, key, ts_ns)
                self._counts[f"relist.{kind}.ended"] += 1
            self._counts[f"relist.{kind}"] += 1
            self._maybe_prune()

    def prune(self, now_ns: int) -> int:
        """Drop the ranges that ended more than `history_ns` before ``now_ns``; how many.

        `apply` does this on its own as event time advances; call it from a timer when events may
        stop for long (a quiet cluster) and memory should still be returned.
        """
        with self._lock:
            self._now = max(self._now, now_ns)
            return self._prune()

    # -- questions -----------------------------------------------------------------------------------

    def nodes(self) -> list[NodeInfo]:
        """The nodes known now (their addresses and pod CIDRs), a snapshot."""
        with self._lock:
            return [st.info for st in self._nodes.values()]

    def resolve(self, ip: str | None, port: int | None, ts_ns: int) -> Identity | None:
        """Who ``ip`` (and ``port``) was at ``ts_ns``, or None when the index does not know."""
        if ip is None:
            return None
        with self._lock:
            return self._resolve(ip, port, ts_ns)

    def by_container(self, container: str | None) -> Identity | None:
        """The pod of a container id (64 hex as capture.procs reports, or ``containerd://…``).

        Container ids are never reused, so no time is needed; ids of deleted pods and of
        containers that restarted stay known for the history time.
        """
        if not container:
            return None
        with self._lock:
            return self._by_container(container)

    def service_backends(
        self, namespace: str, name: str, ts_ns: int, port: int | None = None
    ) -> list[Backend]:
        """The addresses behind service ``namespace/name`` at ``ts_ns`` (ready or not), sorted by IP.

        With ``port`` (a service port), each backend carries the endpoint port it maps to, and
        backends that do not serve it are left out. Each backend's identity is resolved at
        ``ts_ns`` too (None for addresses outside the cluster, e.g. a hand-written Endpoints).
        """
        with self._lock:
            wanted_name: str | None = None
            svc = self._services.get((namespace, name))
            if port is not None and svc is not None:
                for sp in svc.info.ports:
                    if sp.port == port:
                        wanted_name = sp.name
                        break
                else:
                    return []  # not a port of this service: nothing serves it
            out: dict[str, Backend] = {}
            for span in self._members_by_service.covering((namespace, name), ts_ns):
                ip, ports = span.value
                target: int | None = None
                if wanted_name is not None:
                    match = [p for n, p in ports if n == wanted_name]
                    if not match:
                        continue
                    target = match[0]
                if ip not in out or (out[ip].port is None and target is not None):
                    out[ip] = Backend(ip, target, self._resolve(ip, target, ts_ns))
            return [out[ip] for ip in sorted(out)]

    def tag(self, call: Call) -> None:
        """Fill ``call.src`` and ``call.dst`` with identity at the call's time, in place.

        Only empty fields are filled: what the worker already knows (process, pid, the node it
        runs on) stays. An end whose ``container`` holds a container id (capture.procs puts it
        there) is named by that container's pod first: the process's own pod is better evidence
        than an address a hostNetwork pod shares with its node. The address then adds what the
        container cannot (the service a ClusterIP belongs to), unless it names another pod: then
        the container wins and the disagreement is counted.
        """
        ts = call.request_ts if call.request_ts is not None else call.response_ts
        with self._lock:
            if ts is None:
                ts = self._now
            self._tag(call.src, ts)
            self._tag(call.dst, ts)

    def stats(self) -> dict[str, Any]:
        """Sizes and counters, for the worker's stats message and for tests."""
        with self._lock:
            skipped = {k[8:]: v for k, v in self._counts.items() if k.startswith("skipped.")}
            ignored = {k[8:]: v for k, v in self._counts.items() if k.startswith("ignored.")}
            other = {k: v for k, v in self._counts.items() if not k.startswith(("skipped.", "ignored."))}
            return {
                "pods": len(self._pods),
                "services": len(self._services),
                "endpoint_sources": len(self._sources),
                "owners": len(self._owner_objs),
                "nodes": len(self._nodes),
                "addresses": len(self._pod_ips) + len(self._service_ips) + len(self._node_ips),
                "endpoint_targets": len(self._targets),
                "pod_cidrs": len(self._pod_cidrs),
                "containers": len(self._containers),
                "history": len(self._history),
                "history_pruned": self._history.pruned,
                "history_evicted": self._history.evicted,
                "skipped": skipped,
                "skipped_total": sum(skipped.values()),
                "ignored": ignored,  # malformed references dropped from usable objects, per kind.field
                "ignored_total": sum(ignored.values()),
                "counts": other,
                "internal_errors": self._counts["internal_errors"],
            }

    # -- apply, per kind (lock held) -----------------------------------------------------------------

    def _apply_one(self, kind: str, event_type: str, obj: Any, ts: int) -> Hashable | None:
        handler = self._handlers.get(kind) if isinstance(kind, str) else None
        if handler is None:
            self._counts["skipped.unknown kind"] += 1  # never the name itself: counters stay few
            return None
        if event_type not in (ADDED, MODIFIED, DELETED):
            known = event_type if event_type in ("BOOKMARK", "ERROR") else "unknown"
            self._counts[f"skipped.{kind}.{known} event"] += 1
            return None
        if not isinstance(ts, int) or isinstance(ts, bool):
            self._counts[f"skipped.{kind}.time not an int"] += 1
            return None
        self._now = max(self._now, ts)
        try:
            key = handler(kind, event_type, obj, ts)
        except BadObject as e:
            self._counts[f"skipped.{kind}.{e.reason}"] += 1
            return None
        except Exception:  # a bug here must not stop the watch that feeds every other object
            self._counts["internal_errors"] += 1
            if self._counts["internal_errors"] == 1:
                log.exception("identity index: a %s %s event could not be applied", kind, event_type)
            return None
        self._counts[f"events.{kind}.{event_type}"] += 1
        return key

    def _apply_pod(self, kind: str, event: str, obj: Any, ts: int) -> Hashable:
        info = parse_pod(obj, self._shared)
        key = (info.namespace, info.name)
        if event == DELETED:
            self._delete(self._pods, key, info.uid, kind, ts)
            return key
        st, first = self._upsert(self._pods, key, info, kind, ts)
        wanted: Wanted = set()
        if not info.terminal:  # a finished pod's sandbox, and with it its IP, is gone
            if info.host_network:
                for ip in info.ips or info.host_ips:
                    for p in info.ports:
                        wanted.add((self._host_ports, (ip, p.port), st))
            else:
                for ip in info.ips:
                    wanted.add((self._pod_ips, ip, st))
                for p in info.ports:
                    if p.host_port is not None:
                        for ip in info.host_ips:
                            wanted.add((self._host_ports, (ip, p.host_port), st))
            for cid, _ in info.container_ids:
                wanted.add((self._containers, cid, st))
        if info.node is not None:
            for ip in info.host_ips:
                if ip in self._host_hints or len(self._host_hints) < HOST_HINTS_MAX:
                    self._host_hints[ip] = info.node
        self._sync(st, wanted, ts, _first_start(first, info.created_ns, ts))
        return key

    def _apply_service(self, kind: str, event: str, obj: Any, ts: int) -> Hashable:
        info = parse_service(obj)
        key = (info.namespace, info.name)
        if event == DELETED:
            self._delete(self._services, key, info.uid, kind, ts)
            return key
        st, first = self._upsert(self._services, key, info, kind, ts)
        wanted: Wanted = {(self._service_ips, ip, st) for ip in info.ips}
        wanted.update((self._node_ports, p.node_port, st) for p in info.ports if p.node_port is not None)
        self._sync(st, wanted, ts, _first_start(first, info.created_ns, ts))
        return key

    def _apply_source(self, kind: str, event: str, obj: Any, ts: int) -> Hashable:
        info = parse_endpoints(obj) if kind == "Endpoints" else parse_endpoint_slice(obj)
        key = (kind, info.namespace, info.name)
        if event == DELETED:
            self._delete(self._sources, key, info.uid, kind, ts)
            return key
        self._count_ignored(kind, info.ignored)
        st, first = self._upsert(self._sources, key, info, kind, ts)
        service = (info.namespace, info.service)
        ref = f"{info.namespace}/{info.service}"
        values: dict[int, tuple[str, str, str, tuple[EndpointPort, ...]]] = {}  # one per ports tuple
        targets = dict(info.targets)
        wanted: Wanted = set()
        for member in info.members:  # the (ip, ports) tuples themselves: no copies per address
            ip, ports = member
            value = values.get(id(ports))
            if value is None:
                value = values[id(ports)] = (info.namespace, info.service, ref, ports)
            wanted.add((self._members_by_ip, ip, value))
            wanted.add((self._members_by_service, service, member))
            target = targets.get(ip)
            if target is not None:
                wanted.add((self._targets, ip, _Target(target, ports)))
        self._sync(st, wanted, ts, _first_start(first, info.created_ns, ts))
        return key

    def _apply_owner(self, kind: str, event: str, obj: Any, ts: int) -> Hashable:
        info = parse_owner(kind, obj)
        key = (kind, info.namespace, info.name)
        if event == DELETED:
            self._delete(self._owner_objs, key, info.uid, kind, ts)
            return key
        st, first = self._upsert(self._owner_objs, key, info, kind, ts)
        # only the controller reference matters: a ReplicaSet's frequent status updates change nothing
        changed = first or st.open == [] or st.open[0].value != info.owner
        self._sync(st, {(self._owners, key, info.owner)}, ts, _first_start(first, None, ts))
        if changed:
            self._owner_gen += 1
        return key

    def _apply_node(self, kind: str, event: str, obj: Any, ts: int) -> Hashable:
        info = parse_node(obj)
        key = info.name
        if event == DELETED:
            self._delete(self._nodes, key, info.uid, kind, ts)
            return key
        self._count_ignored(kind, info.ignored)
        st, first = self._upsert(self._nodes, key, info, kind, ts)
        wanted: Wanted = {(self._node_ips, ip, st) for ip in info.ips}
        wanted.update((self._pod_cidrs.table(v, plen), prefix, st) for v, plen, prefix in info.pod_cidrs)
        self._sync(st, wanted, ts, _first_start(first, info.created_ns, ts))
        self._pod_cidrs.added(info.pod_cidrs)
        return key

    def _count_ignored(self, kind: str, ignored: Ignored) -> None:
        for field, n in ignored:  # field names are the parsers' own, never the object's text
            self._counts[f"ignored.{kind}.{field}"] += n

    # -- state bookkeeping (lock held) ---------------------------------------------------------------

    def _upsert(
        self, live: dict[Hashable, _State], key: Hashable, info: Any, kind: str, ts: int
    ) -> tuple[_State, bool]:
        """The live state for ``key`` with ``info`` as its record; True when it is new.

        A known name with another uid is a new object (deleted and recreated while we did not see
        it, e.g. a StatefulSet's ``web-0``): the old one is ended first.
        """
        st = live.get(key)
        if st is not None and info.uid and st.info.uid and info.uid != st.info.uid:
            self._end_object(live, key, ts)
            self._counts[f"recreated.{kind}"] += 1
            st = None
        if st is None:
            if len(live) >= self._max_objects:
                raise BadObject("over max_objects")
            st = _State(info)
            live[key] = st
            return st, True
        st.info = info
        return st, False

    def _delete(
        self, live: dict[Hashable, _State], key: Hashable, uid: str | None, kind: str, ts: int
    ) -> None:
        st = live.get(key)
        if st is None:
            self._counts[f"deleted_unknown.{kind}"] += 1
            return
        if uid and st.info.uid and uid != st.info.uid:
            self._counts[f"deleted_stale.{kind}"] += 1  # an older object of that name: already replaced
            return
        self._end_object(live, key, ts)

    def _end_object(self, live: dict[Hashable, _State], key: Hashable, ts: int) -> None:
        st = live.pop(key)
        for span in st.open:
            self._end(span, ts)
        st.open = []

    def _end(self, span: Span, ts: int) -> None:
        if span.table is self._owners and span.end is None:
            self._owner_gen += 1
        self._history.end(span, ts)

    def _sync(self, st: _State, wanted: Wanted, ts: int, first_start: int | None) -> None:
        """Make ``st``'s open spans exactly ``wanted``: end the others at ``ts``, open the new ones
        (at ``first_start`` when the object was seen for the first time, else at ``ts``)."""
        keep: list[Span] = []
        have: set[tuple[Table, Hashable, Hashable]] = set()
        for span in st.open:
            ident = (span.table, span.key, span.value)
            if ident in wanted and ident not in have:
                keep.append(span)  # possibly ended already, by a pod that took its IP
                have.add(ident)
            else:
                self._end(span, ts)
        start = ts if first_start is None else first_start
        for table, key, value in wanted:
            if (table, key, value) not in have:
                keep.append(self._open(table, key, value, start, ts))
        st.open = keep

    def _open(self, table: Table, key: Hashable, value: Any, start: int, ts: int) -> Span:
        start = min(start, ts)
        if table is self._targets:
            # Several sources may list one address at once, but a source first seen (its range
            # starting at its creation) must not claim it from before another pod's listing ended.
            for s in table.all(key):
                if s.end is not None and s.end > start and s.value.ref != value.ref:
                    start = min(s.end, ts)
            return table.open(key, value, start)
        if table is not self._pod_ips:
            return table.open(key, value, start)
        # A pod IP has one holder at a time: never start before the previous holder let go, and
        # take the address from a holder still on record (its DELETED event may come later).
        spans = table.all(key)
        for s in spans:
            if s.end is not None and s.end > start:
                start = min(s.end, ts)
        born_ended: int | None = None
        for s in list(spans):
            if s.end is None:
                if s.start <= start:
                    self._history.end(s, start)
                    self._counts["ip_taken_over"] += 1
                elif born_ended is None or s.start < born_ended:
                    born_ended = s.start  # a newer holder exists already (a relist in any order)
        span = table.open(key, value, start)
        if born_ended is not None:
            self._history.end(span, born_ended)
        return span

    def _maybe_prune(self) -> None:
        if self._now - self._last_prune >= PRUNE_EVERY_NS:
            self._prune()

    def _prune(self) -> int:
        self._last_prune = self._now
        n = self._history.prune(self._now)
        if n:
            self._owner_gen += 1  # an owner may be gone: cached workloads must be recomputed
            self._pod_cidrs.refresh()  # a range may be gone, and with it its prefix length
        return n

    # -- questions (lock held) -----------------------------------------------------------------------

    def _resolve(self, ip: str, port: int | None, ts: int) -> Identity | None:
        if not isinstance(ip, str):
            return None
        found = self._resolve_exact(ip, port, ts)
        if found is None:
            canonical = normalize_ip(ip)  # "::FFFF:10.0.0.1", "fd00:0::1": other spellings
            if canonical is not None and canonical != ip:
                found = self._resolve_exact(canonical, port, ts)
        return found

    def _resolve_exact(self, ip: str, port: int | None, ts: int) -> Identity | None:
        span = self._pod_ips.at(ip, ts, self._lead)
        if span is not None:
            return self._pod_identity(span.value, ip, port, ts, "pod")
        if port is not None:
            span = self._host_ports.at((ip, port), ts, self._lead)
            if span is not None:
                return self._pod_identity(span.value, ip, port, ts, "host-port")
        node = self._node_at(ip, ts)
        if ip in self._targets.spans:  # tested here: a method call would cost every other address
            span = self._target_at(ip, port, ts, node is not None)
            if span is not None:
                return self._endpoint_identity(span.value, ip, port, ts)
        services = self._service_ips.covering(ip, ts)
        if services:
            serving = [s for s in services if port in s.value.info.port_set]
            if serving or node is None:  # an externalIP on a node IP is the service on its ports only
                return self._service_identity(serving or services, "service", None)
        if node is None:
            if not self._pod_cidrs.lens:
                return None
            cidr_node = self._pod_cidrs.node_at(ip, ts)
            return None if cidr_node is None else Identity("pod-cidr", node=cidr_node)
        if port is not None:
            services = self._node_ports.covering(port, ts)
            if services:
                return self._service_identity(services, "node-port", node)
        return Identity("node", node=node)

    def _node_at(self, ip: str, ts: int) -> str | None:
        span = self._node_ips.at(ip, ts)
        if span is not None:
            name: str = span.value.info.name
            return name
        return self._host_hints.get(ip)

    def _target_at(self, ip: str, port: int | None, ts: int, node_ip: bool) -> Span | None:
        """The endpoint pod holding ``ip`` at ``ts``. A node IP is shared by the node and all its
        hostNetwork pods, so there only an endpoint listed for ``port`` is that pod (and no
        ip_lead applies: the node held the address before)."""
        if not node_ip:
            return self._targets.at(ip, ts, self._lead)
        best: Span | None = None
        for s in self._targets.covering(ip, ts):
            if _serves(s.value.ports, port) and (best is None or s.start > best.start):
                best = s
        return best

    def _endpoint_identity(self, target: _Target, ip: str, port: int | None, ts: int) -> Identity:
        ref = target.ref
        service, services = self._services_of(ip, port, ts, ref.namespace)
        return Identity(
            "endpoint",
            pod=ref.name,
            namespace=ref.namespace,
            workload=self._target_workload(target),
            service=service,
            services=services,
            node=ref.node,
            pod_uid=ref.uid,
        )

    def _target_workload(self, target: _Target) -> str | None:
        """The workload of a pod known only by name: the first of `_owner_candidates` the index
        holds an owner object for (live, or ended within the history), climbed as a pod's own
        controller is; else None."""
        if target.wl_gen == self._owner_gen:
            return target.wl
        ref = target.ref
        wl: str | None = None
        for kind, owner in _owner_candidates(ref.name):
            if self._owners.latest((kind, ref.namespace, owner)) is not None:
                wl = self._controller_workload(kind, owner, ref.namespace, None)
                break
        target.wl, target.wl_gen = wl, self._owner_gen
        return wl

    def _service_identity(self, spans: list[Span], kind: str, node: str | None) -> Identity:
        if len(spans) == 1:
            info: ServiceInfo = spans[0].value.info
            refs: tuple[str, ...] = (info.ref,)
        else:
            info = max(spans, key=lambda s: s.start).value.info  # two services on one address: the newer
            refs = tuple(sorted({s.value.info.ref for s in spans}))
        return Identity(kind, namespace=info.namespace, service=info.name, services=refs, node=node)

    def _pod_identity(self, st: _State, ip: str, port: int | None, ts: int, kind: str) -> Identity:
        info: PodInfo = st.info
        service, services = self._services_of(ip, port, ts, info.namespace)
        return Identity(
            kind,
            pod=info.name,
            namespace=info.namespace,
            workload=self._workload(st),
            service=service,
            services=services,
            node=info.node,
            labels=info.labels,
            pod_uid=info.uid,
            container=info.container_for_port(port),
        )

    def _services_of(
        self, ip: str, port: int | None, ts: int, namespace: str
    ) -> tuple[str | None, tuple[str, ...]]:
        """(the service name for the Endpoint, every ``ns/name`` listing ``ip`` at ``ts``)."""
        held = self._members_by_ip.spans.get(ip)
        if held is None:
            return None, ()
        if isinstance(held, Span):  # the common case: one service, one source
            if held.start <= ts and (held.end is None or ts < held.end):
                return held.value[1], (held.value[2],)
            return None, ()
        ranked: list[tuple[int, str, str]] = []  # (rank, "ns/name", name): lower rank is preferred
        for s in held:
            if s.start <= ts and (s.end is None or ts < s.end):
                ns, name, ref, ports = s.value
                rank = (0 if _serves(ports, port) else 2) + (0 if ns == namespace else 1)
                ranked.append((rank, ref, name))
        if not ranked:
            return None, ()
        ranked.sort()
        return ranked[0][2], tuple(sorted({ref for _, ref, _ in ranked}))

    def _workload(self, st: _State) -> str:
        if st.wl is not None and st.wl_for is st.info and st.wl_gen == self._owner_gen:
            return st.wl
        info: PodInfo = st.info
        ref = info.owner
        if ref is None or ref.kind == "Node":  # a bare pod, or a static pod mirrored by its kubelet
            wl = f"Pod/{info.name}"
        else:
            wl = self._controller_workload(ref.kind, ref.name, info.namespace, info.template_hash)
        st.wl, st.wl_for, st.wl_gen = wl, st.info, self._owner_gen
        return wl

    def _controller_workload(self, kind: str, name: str, namespace: str, template_hash: str | None) -> str:
        """``Kind/name`` of the workload a pod's controller ``kind/name`` belongs to, climbing
        ReplicaSet -> Deployment and Job -> CronJob through the owners on record."""
        wl = f"{kind}/{name}"
        if kind in _CLIMB:
            span = self._owners.latest((kind, namespace, name))
            if span is not None:
                above: OwnerRef | None = span.value
                if above is not None:
                    wl = f"{above.kind}/{above.name}"
            elif kind == "ReplicaSet" and _deployment_made(name, template_hash):
                # ReplicaSet not (yet) seen: only the Deployment controller sets pod-template-hash
                # and names its ReplicaSets <deployment>-<hash>
                cut = len(name) - len(template_hash or "") - 1
                wl = f"Deployment/{name[:cut]}"
        return wl

    def _by_container(self, container: str) -> Identity | None:
        span = self._containers.latest(container)
        if span is None:
            cid = container_ref_id(container)
            if cid is None or cid == container:
                return None
            span = self._containers.latest(cid)
            if span is None:
                return None
        st = span.value
        info: PodInfo = st.info
        cname = next((name for c, name in info.container_ids if c == span.key), None)
        return Identity(
            "container",
            pod=info.name,
            namespace=info.namespace,
            workload=self._workload(st),
            node=info.node,
            labels=info.labels,
            pod_uid=info.uid,
            container=cname,
        )

    def _tag(self, ep: Endpoint, ts: int) -> None:
        own = self._by_container(ep.container) if ep.container else None
        addr = self._resolve(ep.ip, ep.port, ts) if ep.ip is not None else None
        if own is not None:
            _fill(ep, own)
            if addr is not None:
                if addr.pod is None or (addr.pod, addr.namespace) == (own.pod, own.namespace):
                    _fill(ep, addr)
                else:
                    self._counts["tag_disagreements"] += 1
        elif addr is not None:
            _fill(ep, addr)


def _first_start(first: bool, created: int | None, ts: int) -> int | None:
    """When an object first seen already holding its addresses has held them since: its creation."""
    if not first:
        return None
    return created if created is not None and created <= ts else ts


def _deployment_made(replicaset: str, template_hash: str | None) -> bool:
    """Whether a ReplicaSet's name is ``<deployment>-<pod-template-hash>`` (only Deployments do that)."""
    if not template_hash:
        return False
    suffix = f"-{template_hash}"
    return len(replicaset) > len(suffix) and replicaset.endswith(suffix)


def _owner_candidates(pod: str) -> list[tuple[str, str]]:
    """The (kind, name) owners a pod's name could have been generated from, in the order to try.

    The suffix's shape decides first: 5 characters of the random alphabet -> ReplicaSet, DaemonSet,
    then Job, each named by the rest of the name (then, for an Indexed Job's pod
    ``<job>-<index>-<random>``, that Job); an ordinal (decimal, no leading zero) -> StatefulSet. A
    suffix of both shapes (5 digits of the alphabet: one random suffix in a thousand, or an ordinal
    past 20,000) tries the random-suffix kinds first. The API server cuts owner names past 57
    characters in their pods' names: such pods match nothing and get no workload.
    """
    prefix, dash, suffix = pod.rpartition("-")
    if not dash or not prefix:
        return []
    out: list[tuple[str, str]] = []
    if len(suffix) == 5 and not suffix.strip(_RAND_ALPHABET):
        out.extend((kind, prefix) for kind in _RAND_KINDS)
        job, dash, index = prefix.rpartition("-")
        if dash and job and _is_ordinal(index):
            out.append(("Job", job))
    if _is_ordinal(suffix):
        out.append(("StatefulSet", prefix))
    return out


def _is_ordinal(text: str) -> bool:
    return text.isascii() and text.isdigit() and (text == "0" or text[0] != "0")


def _serves(ports: tuple[EndpointPort, ...], port: int | None) -> bool:
    return port is not None and any(p is None or p == port for _, p in ports)


def _kind_of(key: Hashable, kind: str) -> str:
    """The kind a live-table key belongs to: tables shared by several kinds key by (kind, ...)."""
    if isinstance(key, tuple) and len(key) == 3:
        return str(key[0])
    return kind


def _fill(ep: Endpoint, ident: Identity) -> None:
    if ep.pod is None:
        ep.pod = ident.pod
    if ep.namespace is None:
        ep.namespace = ident.namespace
    if ep.workload is None:
        ep.workload = ident.workload
    if ep.service is None:
        ep.service = ident.service
    if ep.node is None:
        ep.node = ident.node
    if ep.container is None:
        ep.container = ident.container
    if not ep.labels and ident.labels:
        ep.labels = dict(ident.labels)


__all__ = ["ADDED", "DELETED", "KINDS", "MODIFIED", "OWNER_KINDS", "Backend", "Identity", "IdentityIndex"]
