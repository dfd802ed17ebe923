"""The node worker: AF_PACKET capture, eBPF TLS tracing, identity, spool and uplink to the hub.

May import `dissect` only (see ARCHITECTURE.md, "Layering").
"""
