"""capture.interfaces: discovery over rtnetlink, the pod-traffic default, globs and the watch.

Each test runs discovery inside a fresh network namespace (the test thread moves there with
`netlab.in_netns`), so the machine's own interfaces do not matter and names like `cni0` are free.
`ip -d -j link` (iproute2) is the oracle for what the kernel reports. Unrelated devices are `ifb`s:
the `dummy` driver is not built into every kernel.
"""

from __future__ import annotations

import contextlib
import json
import struct
from collections.abc import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from capture.afpacket import LINKTYPE_ETHERNET, CaptureError
from capture.interfaces import (
    IFLA_IFNAME,
    IFLA_INFO_KIND,
    IFLA_LINK_NETNSID,
    IFLA_LINKINFO,
    IFLA_MASTER,
    IFLA_OPERSTATE,
    Interface,
    InterfaceWatch,
    _parse_link,
    list_interfaces,
    pod_interfaces,
    select_interfaces,
)
from tests.capture import netlab as nl


@contextlib.contextmanager
def fresh_node() -> Iterator[tuple[str, str, str]]:
    """A "node" namespace and two "pod" namespaces (names), all deleted afterwards."""
    reason = nl.unavailable_reason()
    if reason:
        pytest.skip(reason)
    tag = nl.new_tag()
    with nl.netns(f"psk{tag}n") as node, nl.netns(f"psk{tag}p") as pod, nl.netns(f"psk{tag}q") as pod2:
        yield node, pod, pod2


def pod_veth(node: str, pod: str, name: str = "vpod") -> None:
    """A veth like a CNI makes: `name` in the node namespace, its peer `eth0` in the pod's."""
    nl.sh("ip", "link", "add", name, "netns", node, "type", "veth", "peer", "name", "eth0", "netns", pod)


def names(ifaces: list[Interface]) -> list[str]:
    return [i.name for i in ifaces]


@pytest.mark.root
@pytest.mark.xdist_group("capture-interfaces")
def test_list_interfaces_agrees_with_iproute2() -> None:
    with fresh_node() as (node, pod, _):
        pod_veth(node, pod)
        nl.sh("ip", "-n", node, "link", "add", "br0", "type", "bridge")
        nl.sh("ip", "-n", node, "link", "add", "d0", "type", "ifb")
        nl.sh("ip", "-n", node, "link", "set", "vpod", "master", "br0")
        nl.sh("ip", "-n", node, "link", "set", "vpod", "up")
        nl.sh("ip", "-n", node, "link", "set", "br0", "up")
        with nl.in_netns(node):
            ours = {i.name: i for i in list_interfaces()}
        theirs = json.loads(nl.sh("ip", "-n", node, "-d", "-j", "link", "show").stdout)
    assert set(ours) == {t["ifname"] for t in theirs} == {"lo", "vpod", "br0", "d0"}
    by_index = {i.index: i for i in ours.values()}
    for t in theirs:
        mine = ours[t["ifname"]]
        assert mine.index == t["ifindex"]
        assert mine.kind == t.get("linkinfo", {}).get("info_kind", "loopback" if t["ifname"] == "lo" else "?")
        assert mine.peer_netns == t.get("link_netnsid")
        assert (mine.master and by_index[mine.master].name) == t.get("master")
        assert mine.up == ("UP" in t["flags"] and t["operstate"] in ("UP", "UNKNOWN"))
    assert ours["vpod"].linktype == ours["lo"].linktype == LINKTYPE_ETHERNET


@pytest.mark.root
@pytest.mark.xdist_group("capture-interfaces")
def test_pod_interfaces_are_pod_veths_and_cni_devices() -> None:
    with fresh_node() as (node, pod, pod2):
        pod_veth(node, pod)
        pod_veth(node, pod2, "cali1a2b")
        nl.sh("ip", "-n", node, "link", "add", "vxlan7", "type", "vxlan", "id", "7", "dstport", "4789")
        nl.sh("ip", "-n", node, "link", "add", "plumb0", "type", "veth", "peer", "name", "plumb1")  # same ns
        nl.sh("ip", "-n", node, "link", "add", "d0", "type", "ifb")  # unrelated
        nl.sh("ip", "-n", node, "link", "add", "cni0", "type", "bridge")  # a CNI bridge, by name
        nl.sh("ip", "-n", node, "link", "add", "br7", "type", "bridge")  # some other bridge
        with nl.in_netns(node):
            everything = list_interfaces()
            chosen = pod_interfaces(everything)
            default = select_interfaces(None)
    assert sorted(names(chosen)) == ["cali1a2b", "cni0", "vpod", "vxlan7"]
    assert names(default) == names(chosen)
    vpod = next(i for i in chosen if i.name == "vpod")
    assert vpod.kind == "veth" and vpod.peer_netns is not None
    plumb = next(i for i in everything if i.name == "plumb0")
    assert plumb.kind == "veth" and plumb.peer_netns is None


@pytest.mark.root
@pytest.mark.xdist_group("capture-interfaces")
def test_select_interfaces_by_name_and_glob() -> None:
    with fresh_node() as (node, _, _):
        for name in ("a1", "a2", "b1"):
            nl.sh("ip", "-n", node, "link", "add", name, "type", "ifb")
        with nl.in_netns(node):
            assert names(select_interfaces(["a*"])) == ["a1", "a2"]
            assert names(select_interfaces(["b1", "a1", "a?"])) == ["a1", "a2", "b1"]  # by index, once each
            assert names(select_interfaces(["*"])) == ["a1", "a2", "b1"]  # a glob never picks up lo
            assert names(select_interfaces(["lo", "b*"])) == ["lo", "b1"]
            with pytest.raises(CaptureError, match=r"no interface matches 'c\*'.*a1, a2, b1"):
                select_interfaces(["c*"])
            assert select_interfaces(None) == []  # no pod interfaces here


@pytest.mark.root
@pytest.mark.xdist_group("capture-interfaces")
def test_watch_reports_interfaces_coming_and_going() -> None:
    with fresh_node() as (node, pod, _):

        def changes(watch: InterfaceWatch) -> tuple[list[str], list[str]]:
            with nl.in_netns(node):
                added, removed = watch.changes()
            return names(added), removed

        def new_pod_veth() -> None:
            pod_veth(node, pod)

        watch = InterfaceWatch()
        everything = InterfaceWatch(["*"])
        assert changes(watch) == ([], [])
        assert changes(everything) == ([], [])  # only lo, which a glob does not pick up
        new_pod_veth()
        nl.sh("ip", "-n", node, "link", "add", "d0", "type", "ifb")
        assert changes(watch) == (["vpod"], [])  # the ifb is not a pod interface
        assert changes(everything) == (["vpod", "d0"], [])
        assert changes(watch) == ([], [])
        nl.sh("ip", "-n", node, "link", "del", "vpod")
        assert changes(watch) == ([], ["vpod"])
        new_pod_veth()
        assert changes(watch) == (["vpod"], [])
        # gone and back under the same name between two looks: another ifindex, so removed + added
        nl.sh("ip", "-n", node, "link", "del", "vpod")
        new_pod_veth()
        assert changes(watch) == (["vpod"], ["vpod"])
        assert changes(everything) == (["vpod"], ["vpod"])


@given(st.binary(max_size=300))
def test_hostile_netlink_link_messages_never_raise(data: bytes) -> None:
    link = _parse_link(data, 0, len(data))
    assert link is None or isinstance(link.name, str)


def _rta(typ: int, val: bytes) -> bytes:
    raw = struct.pack("=HH", 4 + len(val), typ) + val
    return raw + b"\0" * (-len(raw) % 4)


def _unparsed(typ: int) -> bool:
    return typ not in (IFLA_IFNAME, IFLA_MASTER, IFLA_OPERSTATE, IFLA_LINKINFO, IFLA_LINK_NETNSID)


@given(
    name=st.text(st.characters(min_codepoint=33, max_codepoint=0x2FF), min_size=1, max_size=15),
    kind=st.text(st.characters(min_codepoint=97, max_codepoint=122), min_size=1, max_size=12),
    netnsid=st.integers(-1, 1000),
    other=st.lists(st.tuples(st.integers(0, 0x3FFF).filter(_unparsed), st.binary(max_size=9))),
)
def test_link_attributes_are_found_among_others(
    name: str, kind: str, netnsid: int, other: list[tuple[int, bytes]]
) -> None:
    """A link message as the kernel builds one, with unknown attributes around ours: ours are read."""
    body = struct.pack("=BxHiII", 0, 1, 7, 1, 0)
    attrs = [_rta(t, v) for t, v in other]
    attrs.insert(len(attrs) // 2, _rta(IFLA_IFNAME, name.encode() + b"\0"))
    attrs.append(_rta(IFLA_LINKINFO | 0x8000, _rta(IFLA_INFO_KIND, kind.encode() + b"\0")))  # NLA_F_NESTED
    attrs.append(_rta(IFLA_LINK_NETNSID, struct.pack("=i", netnsid)))
    msg = body + b"".join(attrs)
    link = _parse_link(msg, 0, len(msg))
    assert link is not None
    assert (link.name, link.index, link.kind, link.up) == (name, 7, kind, True)
    assert link.peer_netns == (netnsid if netnsid >= 0 else None)
