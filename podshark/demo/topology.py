"""The demo's topology as data: which services run, where, what they serve, and who calls whom.

This is the one place the shape of `podshark demo` is declared. The network builder reads it to
create namespaces and addresses, each service reads it (as JSON, from the file the demo writes) to
find its own address and its peers', and the tests read it to check that the captured service map
has exactly these edges — so a service that starts calling something new without a line here is a
test failure, not a silent change of the picture.

`SERVICES` and `EDGES` are the static declaration; `Topology.build` turns them into one run's
concrete names and addresses:

- namespace ``<prefix>-<service>`` (a "pod"), e.g. ``psd1a2b-frontend``;
- host end of the pod's veth ``<prefix>-<short>`` in the root namespace (``<= 15`` characters, the
  kernel's IFNAMSIZ limit), attached to the bridge ``<prefix>-br``; the pod end is ``eth0``;
- address ``<subnet>.<host>`` of a /24 inside 198.18.0.0/15 (RFC 2544 benchmarking space, never
  routed), so the demo cannot collide with a real network;
- DNS name ``<service>.demo.podshark``.
"""

from __future__ import annotations

import ipaddress
import json
import re
from dataclasses import asdict, dataclass
from typing import Any

ZONE = "demo.podshark"
PREFIX_RE = re.compile(r"^psd[0-9a-f]{4}$")
IFNAMSIZ = 15  # longest interface name the kernel accepts (16 bytes with the NUL)
BENCH_NET = ipaddress.ip_network("198.18.0.0/15")


@dataclass(frozen=True, slots=True)
class ServiceSpec:
    """One service as declared: its name (process name, DNS label, namespace suffix) and what it serves."""

    name: str
    short: str  # suffix of the host-side veth name; at most 7 characters (8 go to "psdXXXX-")
    host: int  # last octet of its address in the run's /24
    port: int | None  # None: a pure client (loadgen) that listens on nothing
    protocol: str | None  # the Call protocol of what it serves: http | grpc | dns
    transport: str = "tcp"


@dataclass(frozen=True, slots=True)
class EdgeSpec:
    """A client calling a server with a protocol: one edge of the service map."""

    client: str
    server: str
    protocol: str


SERVICES: tuple[ServiceSpec, ...] = (
    ServiceSpec("loadgen", "loadgen", host=10, port=None, protocol=None),
    ServiceSpec("frontend", "front", host=11, port=8080, protocol="http"),
    ServiceSpec("api", "api", host=12, port=80, protocol="http"),
    ServiceSpec("inventory", "inv", host=13, port=50051, protocol="grpc"),
    ServiceSpec("dns", "dns", host=53, port=53, protocol="dns", transport="udp"),
)

EDGES: tuple[EdgeSpec, ...] = (
    EdgeSpec("loadgen", "frontend", "http"),
    EdgeSpec("frontend", "dns", "dns"),
    EdgeSpec("frontend", "api", "http"),
    EdgeSpec("frontend", "inventory", "grpc"),
)


@dataclass(frozen=True, slots=True)
class Service:
    """A service of one run: the declaration plus its namespace, interface names and address."""

    name: str
    namespace: str
    host_if: str  # host end of the veth, in the root namespace, attached to the bridge
    pod_if: str  # pod end of the veth, inside `namespace`
    ip: str
    port: int | None
    protocol: str | None
    transport: str

    @property
    def dns_name(self) -> str:
        return f"{self.name}.{ZONE}"


@dataclass(frozen=True, slots=True)
class Edge:
    """client -> server with the protocol their calls carry (`Call.protocol`)."""

    client: str
    server: str
    protocol: str


@dataclass(frozen=True, slots=True)
class Topology:
    """One run's concrete topology: services with names and addresses, and the edges between them."""

    prefix: str
    subnet: str  # "198.18.7.0/24"
    bridge: str
    services: tuple[Service, ...]
    edges: tuple[Edge, ...]

    @classmethod
    def build(
        cls,
        prefix: str,
        subnet: str,
        specs: tuple[ServiceSpec, ...] = SERVICES,
        edges: tuple[EdgeSpec, ...] = EDGES,
    ) -> Topology:
        """Materialise the declaration for `prefix` (``psd`` + 4 hex) and `subnet` (a /24 of 198.18.0.0/15).

        Raises ValueError for a declaration that cannot work (a name too long for an interface, two
        services on one address, an edge naming an unknown service or a server that serves
        another protocol), so a bad edit fails at once with the reason.
        """
        if not PREFIX_RE.match(prefix):
            raise ValueError(f"demo prefix {prefix!r} must be 'psd' and 4 hex digits")
        net = ipaddress.ip_network(subnet)
        if net.prefixlen != 24 or not net.subnet_of(BENCH_NET):  # type: ignore[arg-type]
            raise ValueError(f"demo subnet {subnet} must be a /24 inside {BENCH_NET}")
        services = []
        for s in specs:
            host_if = f"{prefix}-{s.short}"
            if len(host_if) > IFNAMSIZ:
                raise ValueError(f"interface name {host_if!r} is longer than {IFNAMSIZ} characters")
            if not 1 <= s.host <= 254:
                raise ValueError(f"service {s.name}: host octet {s.host} is not a usable address")
            services.append(
                Service(
                    name=s.name,
                    namespace=f"{prefix}-{s.name}",
                    host_if=host_if,
                    pod_if="eth0",
                    ip=str(net.network_address + s.host),
                    port=s.port,
                    protocol=s.protocol,
                    transport=s.transport,
                )
            )
        topo = cls(
            prefix=prefix,
            subnet=str(net),
            bridge=f"{prefix}-br",
            services=tuple(services),
            edges=tuple(Edge(e.client, e.server, e.protocol) for e in edges),
        )
        topo.validate()
        return topo

    def validate(self) -> None:
        """Raise ValueError when names or addresses clash or an edge does not fit its server."""
        by_name = {s.name: s for s in self.services}
        for what, values in (
            ("service name", [s.name for s in self.services]),
            ("address", [s.ip for s in self.services]),
            ("interface", [s.host_if for s in self.services] + [self.bridge]),
        ):
            dupes = sorted({v for v in values if values.count(v) > 1})
            if dupes:
                raise ValueError(f"demo topology: duplicate {what}: {', '.join(dupes)}")
        for e in self.edges:
            if e.client not in by_name or e.server not in by_name:
                raise ValueError(f"demo topology: edge {e.client} -> {e.server} names an unknown service")
            server = by_name[e.server]
            if server.protocol != e.protocol or server.port is None:
                raise ValueError(
                    f"demo topology: edge {e.client} -> {e.server} is {e.protocol}, "
                    f"but {e.server} serves {server.protocol}"
                )

    def service(self, name: str) -> Service:
        """The service called `name` (KeyError names the known ones when there is none)."""
        for s in self.services:
            if s.name == name:
                return s
        raise KeyError(f"no demo service {name!r} (known: {', '.join(s.name for s in self.services)})")

    def ip(self, name: str) -> str:
        return self.service(name).ip

    def edge_tuples(self) -> set[tuple[str, str, str]]:
        """The edges as (client ip, server ip, protocol): exactly what a capture's calls must show."""
        return {(self.ip(e.client), self.ip(e.server), e.protocol) for e in self.edges}

    def host_interfaces(self) -> list[str]:
        """Host ends of every pod's veth, in declaration order."""
        return [s.host_if for s in self.services]

    def namespaces(self) -> list[str]:
        return [s.namespace for s in self.services]

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    @classmethod
    def from_json(cls, text: str) -> Topology:
        """The inverse of `to_json`; ValueError for anything that is not a valid topology."""
        try:
            d: dict[str, Any] = json.loads(text)
            topo = cls(
                prefix=str(d["prefix"]),
                subnet=str(d["subnet"]),
                bridge=str(d["bridge"]),
                services=tuple(Service(**s) for s in d["services"]),
                edges=tuple(Edge(**e) for e in d["edges"]),
            )
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"not a demo topology: {e}") from e
        topo.validate()
        return topo
