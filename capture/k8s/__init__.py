"""Kubernetes identity: which pod, workload, service and node an address or a container was.

`index` holds the identity of cluster objects over time and answers per call (sans-IO: it is fed
watch events and never talks to the API server itself); `objects` turns API objects into the small
records it keeps; `spans` is its time-range bookkeeping. Importing this package does not import the
`kubernetes` client: the worker image without Kubernetes access stays lean.
"""

from capture.k8s.index import Backend, Identity, IdentityIndex

__all__ = ["Backend", "Identity", "IdentityIndex"]
