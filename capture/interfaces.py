"""Which interfaces to capture on: discovery, the pod-traffic default, explicit choices, and a cheap watch.

Discovery asks the kernel directly over rtnetlink (an RTM_GETLINK dump): one system call pair gives
every link's name, index, hardware type, state, kind (veth, bridge, vxlan...), bridge master and —
for a veth — whether its peer lives in another network namespace (IFLA_LINK_NETNSID). That is what
`ip -d link` shows, without depending on iproute2 being in the image, without parsing its output, and
it answers for the network namespace of the calling thread (sysfs answers for the namespace it was
mounted in).

Pod veths come and go all the time; `InterfaceWatch` re-lists every second or two and reports what
appeared and what went away, so the worker opens and closes rings to match.
"""

from __future__ import annotations

import fnmatch
import os
import socket
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from capture.afpacket import ARPHRD_ETHER, ARPHRD_LOOPBACK, CaptureError, linktype_for_arphrd

# rtnetlink constants (<linux/netlink.h>, <linux/rtnetlink.h>, <linux/if_link.h>)
NETLINK_ROUTE = 0
RTM_NEWLINK = 16
RTM_GETLINK = 18
NLM_F_REQUEST = 0x1
NLM_F_DUMP = 0x300
NLMSG_ERROR = 2
NLMSG_DONE = 3
IFLA_IFNAME = 3
IFLA_MASTER = 10
IFLA_OPERSTATE = 16
IFLA_LINKINFO = 18
IFLA_LINK_NETNSID = 37
IFLA_INFO_KIND = 1
IFF_UP = 0x1
IF_OPER_UP = 6
IF_OPER_UNKNOWN = 0  # loopback and many virtual devices report "unknown" while working

_NLMSG = struct.Struct("=IHHII")  # len, type, flags, seq, pid
_IFINFO = struct.Struct("=BxHiII")  # family, type (ARPHRD), index, flags, change
_RTA = struct.Struct("=HH")  # len, type
_MAX_DUMP_BYTES = 64 << 20  # a node with tens of thousands of links is ~10 MiB; more is a broken reply

#: Name prefixes of devices that CNI plugins create for pod traffic (host ends of pod veths, their
#: bridges and overlay devices). Matching is on the name, so a device renamed by hand is not matched.
CNI_PREFIXES: tuple[str, ...] = (
    "cali",  # Calico pod veths (and vxlan.calico via "vxlan")
    "lxc",  # Cilium pod veths (lxc<hash>) and lxc_health
    "cilium",  # cilium_host, cilium_net, cilium_vxlan, cilium_geneve
    "flannel",  # flannel.1 (VXLAN), flannel-wg (WireGuard)
    "cni",  # cni0: the bridge of the bridge/flannel plugins
    "cbr",  # cbr0: kubenet's bridge
    "weave",  # Weave Net bridge
    "vxlan",  # vxlan.calico and generic VXLAN overlays
    "genev_sys",  # OVN-Kubernetes / Antrea geneve
    "eni",  # AWS VPC CNI pod veths
    "gke",  # GKE (dataplane v1) pod veths
    "azv",  # Azure CNI pod veths
    "antrea-gw",  # Antrea gateway
    "ovn-k8s",  # OVN-Kubernetes management port
    "kube-bridge",  # kube-router's bridge
    "docker0",  # Docker's default bridge (kind, minikube with the docker driver)
)


@dataclass(frozen=True)
class Interface:
    """One network interface as the kernel describes it.

    `kind` is the rtnetlink link kind (veth, bridge, dummy, vxlan, tun, wireguard...), or "loopback",
    "ethernet" (a device without a link kind: a physical NIC) or "other". `linktype` is the pcap
    LINKTYPE a capture on it yields, None when podshark cannot decode its frames. `peer_netns` is the
    network-namespace id (as this namespace numbers it) of the other end of a veth or of a tunnel's
    underlay, when it lives in another namespace; None otherwise.
    """

    name: str
    index: int
    kind: str
    linktype: int | None
    up: bool
    peer_netns: int | None = None
    master: int | None = None  # ifindex of the bridge (or bond) this interface is a port of
    arphrd: int = ARPHRD_ETHER


def _attrs(buf: bytes, pos: int, end: int) -> Iterator[tuple[int, bytes]]:
    """The (type, payload) of each rtattr in buf[pos:end]; stops at a malformed one."""
    while pos + 4 <= end:
        length, typ = _RTA.unpack_from(buf, pos)
        if length < 4 or pos + length > end:
            return
        yield typ & 0x3FFF, buf[pos + 4 : pos + length]  # strip NLA_F_NESTED / NLA_F_NET_BYTEORDER
        pos += (length + 3) & ~3


def _parse_link(msg: bytes, pos: int, end: int) -> Interface | None:
    if pos + _IFINFO.size > end:
        return None
    _family, arphrd, index, flags, _change = _IFINFO.unpack_from(msg, pos)
    name = kind = None
    operstate = IF_OPER_UNKNOWN
    netnsid = master = None
    for typ, val in _attrs(msg, pos + _IFINFO.size, end):
        if typ == IFLA_IFNAME:
            name = val.split(b"\0", 1)[0].decode("utf-8", "replace")
        elif typ == IFLA_OPERSTATE and val:
            operstate = val[0]
        elif typ == IFLA_LINK_NETNSID and len(val) >= 4:
            netnsid = struct.unpack_from("=i", val)[0]
        elif typ == IFLA_MASTER and len(val) >= 4:
            master = struct.unpack_from("=I", val)[0] or None
        elif typ == IFLA_LINKINFO:
            for ityp, ival in _attrs(val, 0, len(val)):
                if ityp == IFLA_INFO_KIND:
                    kind = ival.split(b"\0", 1)[0].decode("ascii", "replace")
    if name is None:
        return None
    if kind is None:
        kind = "loopback" if arphrd == ARPHRD_LOOPBACK else "ethernet" if arphrd == ARPHRD_ETHER else "other"
    up = bool(flags & IFF_UP) and operstate in (IF_OPER_UP, IF_OPER_UNKNOWN)
    return Interface(
        name=name,
        index=index,
        kind=kind,
        linktype=linktype_for_arphrd(arphrd),
        up=up,
        peer_netns=netnsid if netnsid is not None and netnsid >= 0 else None,
        master=master,
        arphrd=arphrd,
    )


def list_interfaces() -> list[Interface]:
    """Every interface of this network namespace, ordered by index (an RTM_GETLINK dump)."""
    try:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_ROUTE)
    except OSError as e:
        raise CaptureError(
            f"cannot list network interfaces: rtnetlink is unavailable ({e.strerror})"
        ) from None
    with sock:
        sock.settimeout(5)
        sock.bind((0, 0))
        seq = int.from_bytes(os.urandom(4), "little") or 1
        body = _IFINFO.pack(socket.AF_UNSPEC, 0, 0, 0, 0)
        sock.send(
            _NLMSG.pack(_NLMSG.size + len(body), RTM_GETLINK, NLM_F_REQUEST | NLM_F_DUMP, seq, 0) + body
        )
        found: dict[int, Interface] = {}
        total = 0
        while True:
            try:
                data = sock.recv(1 << 16)
            except TimeoutError:
                raise CaptureError(
                    "listing network interfaces timed out (rtnetlink did not answer)"
                ) from None
            total += len(data)
            if not data or total > _MAX_DUMP_BYTES:
                raise CaptureError("listing network interfaces failed: rtnetlink sent a broken reply")
            pos = 0
            while pos + _NLMSG.size <= len(data):
                length, typ, _flags, mseq, _pid = _NLMSG.unpack_from(data, pos)
                if length < _NLMSG.size or pos + length > len(data):
                    break
                if mseq == seq:
                    if typ == NLMSG_DONE:
                        return sorted(found.values(), key=lambda i: i.index)
                    if typ == NLMSG_ERROR:
                        code = -struct.unpack_from("=i", data, pos + _NLMSG.size)[0]
                        raise CaptureError(f"listing network interfaces failed: {os.strerror(code)}")
                    if typ == RTM_NEWLINK:
                        link = _parse_link(data, pos + _NLMSG.size, pos + length)
                        if link is not None:
                            found[link.index] = link
                pos += (length + 3) & ~3


def _is_pod_interface(iface: Interface) -> bool:
    if iface.linktype is None:
        return False  # cannot decode its frames (an IP-in-GRE tunnel, say): its traffic is on the veths
    if iface.kind == "veth" and iface.peer_netns is not None:
        return True
    return iface.name.startswith(CNI_PREFIXES)


def pod_interfaces(ifaces: Iterable[Interface]) -> list[Interface]:
    """The default capture set: every interface that carries pod traffic on this node.

    The rule, in order:

    1. Interfaces whose frames podshark cannot decode (no pcap link type) are left out.
    2. The host end of a veth pair whose other end lives in another network namespace is a pod's
       interface: every CNI that plugs pods in with veths (bridge, flannel, Calico, Cilium, kindnet,
       AWS/Azure/GKE CNIs...) leaves the host end here and moves the other into the pod. A veth with
       both ends in this namespace is plumbing, not a pod.
    3. Devices named with a known CNI prefix (`CNI_PREFIXES`: cali*, lxc*, cilium*, flannel*, cni*,
       cbr*, weave*, vxlan*, eni*, gke*, azv*, kube-bridge, docker0...) carry pod traffic too: bridges
       and overlay devices, where traffic between nodes passes.

    Loopback, physical NICs, dummies and anything else are not included: pass them explicitly
    (`select_interfaces`). Interfaces that are down are included (a new pod's veth comes up a moment
    after it appears, and a ring bound while it is down captures once it is up). A packet crossing a
    bridge shows on the sending pod's veth, possibly the bridge, and the receiving pod's veth: that is
    what `capture.dedupe` is for.
    """
    return [i for i in ifaces if _is_pod_interface(i)]


def _matches(iface: Interface, pattern: str) -> bool:
    """`pattern` names `iface` exactly, or globs it; a glob never picks loopback up by accident."""
    if iface.name == pattern:
        return True
    return iface.kind != "loopback" and fnmatch.fnmatchcase(iface.name, pattern)


def select_interfaces(patterns: list[str] | None, ifaces: list[Interface] | None = None) -> list[Interface]:
    """The interfaces to capture on: None -> `pod_interfaces`; else every interface whose name equals a
    pattern or matches it as an fnmatch glob (`cali*`, `veth?`). Loopback is included only when a
    pattern names or matches it. A pattern that matches nothing is an error naming the interfaces
    there are, so a typo does not silently capture nothing.
    """
    if ifaces is None:
        ifaces = list_interfaces()
    if patterns is None:
        return pod_interfaces(ifaces)
    chosen: dict[int, Interface] = {}
    for pattern in patterns:
        hits = [i for i in ifaces if _matches(i, pattern)]
        if not hits:
            names = ", ".join(i.name for i in ifaces) or "none"
            raise CaptureError(f"no interface matches {pattern!r} (interfaces here: {names}; see `ip link`)")
        for i in hits:
            chosen.setdefault(i.index, i)
    return sorted(chosen.values(), key=lambda i: i.index)


class InterfaceWatch:
    """Reports which interfaces appeared and which went away since the last call.

    `changes()` is cheap enough for every second or two: one rtnetlink dump, compared by (name,
    ifindex). An interface that went away and came back under the same name (a restarted pod's veth)
    has another ifindex: it is reported removed and added, so its old ring is closed and a new one
    opened. `patterns` as for `select_interfaces` (None: the pod-traffic default); unlike there, a
    pattern matching nothing is not an error (the interface may appear later). The first call reports
    every current interface as added.
    """

    def __init__(self, patterns: list[str] | None = None) -> None:
        self.patterns = patterns
        self._known: dict[str, int] = {}

    def current(self) -> list[Interface]:
        ifaces = list_interfaces()
        if self.patterns is None:
            return pod_interfaces(ifaces)
        return [i for i in ifaces if any(_matches(i, p) for p in self.patterns)]

    def changes(self) -> tuple[list[Interface], list[str]]:
        """(interfaces added, names removed) since the previous call."""
        now = {i.name: i for i in self.current()}
        removed = [name for name, idx in self._known.items() if name not in now or now[name].index != idx]
        added = [i for name, i in now.items() if self._known.get(name) != i.index]
        self._known = {name: i.index for name, i in now.items()}
        return added, removed
