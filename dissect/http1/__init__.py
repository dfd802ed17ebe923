"""HTTP/1.x: content detection plus a sans-IO dissector (`HTTP1Dissector`), registered as ``ANALYZER``."""

from __future__ import annotations

from dissect.base import ConnContext, Dissector, Handoff, Verdict
from dissect.http1.detect import detect
from dissect.http1.dissector import HTTP1Dissector

__all__ = ["ANALYZER", "HTTP1Analyzer", "HTTP1Dissector"]


class HTTP1Analyzer:
    """The `dissect.base.Analyzer` for HTTP/1.0 and 1.1."""

    name = "http"

    def detect(self, data: bytes, direction: int, port_hint: int | None) -> Verdict:
        return detect(data, direction, port_hint)

    def new(self, ctx: ConnContext, handoff: Handoff | None = None) -> Dissector:
        return HTTP1Dissector(ctx)


ANALYZER = HTTP1Analyzer()
