"""HTTP/2 over cleartext (prior knowledge or h2c Upgrade): detection plus a sans-IO dissector.

`HTTP2Dissector` turns each stream into one ``http2`` call (``grpc`` when `dissect.grpc` recognises
the content-type); `dissect.http2.hpack` is its HPACK decoder, `dissect.http2.frames` the frame
table. Registered as ``ANALYZER`` (name ``"http2"``), which the HTTP/1 dissector's h2c Upgrade
hands over to through `dissect.base.Handoff`.
"""

from __future__ import annotations

from dissect.base import ConnContext, Dissector, Handoff, Verdict
from dissect.http2.detect import detect
from dissect.http2.dissector import HTTP2Dissector

__all__ = ["ANALYZER", "HTTP2Analyzer", "HTTP2Dissector"]


class HTTP2Analyzer:
    """The `dissect.base.Analyzer` for cleartext HTTP/2."""

    name = "http2"

    def detect(self, data: bytes, direction: int, port_hint: int | None) -> Verdict:
        return detect(data, direction, port_hint)

    def new(self, ctx: ConnContext, handoff: Handoff | None = None) -> Dissector:
        return HTTP2Dissector(ctx, handoff)


ANALYZER = HTTP2Analyzer()
