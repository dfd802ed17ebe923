"""`podshark demo`: a small multi-service workload of our own, in network namespaces, to capture live.

The shop: ``loadgen`` calls ``frontend`` (HTTP), which resolves its peers through ``dns``
(dnsmasq, or a built-in server), calls ``api`` (HTTP/1.1 JSON, with 404s, 500s, gzip and slow
calls) and ``inventory`` (gRPC, unary and server streaming, NOT_FOUND). Each service is a process
named after itself in a namespace of its own ("pod"), joined to the others by a bridge in the root
namespace, so the traffic between pods crosses the root namespace like on a Kubernetes node.

Modules: `topology` (the services and edges, as data: the one place the shape is declared),
`netns` (namespaces, veths, bridge, stale cleanup), `workload` (`Demo`: start, wait, stop),
`serve` (the entry point of each service process) and one module per service (`api`,
`inventory`, `dns`, `frontend`, `loadgen`) with their small wire helpers (`dnswire`, `pbwire`).

This package imports nothing heavy: grpcio is imported inside the inventory and frontend processes
only, so ``import podshark.demo`` works without it (`requirements_missing` says what to install).
"""

from podshark.demo.netns import cleanup_stale
from podshark.demo.topology import Edge, Service, Topology
from podshark.demo.workload import Demo, DemoError, requirements_missing

__all__ = ["Demo", "DemoError", "Edge", "Service", "Topology", "cleanup_stale", "requirements_missing"]
