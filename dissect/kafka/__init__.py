"""Kafka: content detection plus a sans-IO dissector of the Kafka wire protocol, as ``ANALYZER``.

One call per request/response pair, paired by correlation id: method = API name, target = the
request's topic names comma-joined, status = the top-level error code, else the first non-zero
nested one, else 0. See `dissect.kafka.dissector` for framing, losses and bounds, `dissect.kafka.apis`
for the decoded APIs and `dissect.kafka.records` for record batches.
"""

from __future__ import annotations

from dissect.base import ConnContext, Dissector, Handoff, Verdict
from dissect.kafka.dissector import SCAN_LIMIT, KafkaDissector, find_request, request_verdict

__all__ = ["ANALYZER", "KafkaAnalyzer", "KafkaDissector", "detect"]


def detect(data: bytes, direction: int = 0, port_hint: int | None = None) -> Verdict:
    """Judge the first bytes one side sent. By content only; ``port_hint`` is ignored.

    YES: a request header at the first byte — size 10..100 MiB, a known api key, version <= 20, a
    non-negative correlation id, a client id whose length fits and whose bytes are printable ASCII
    (and, when the whole request is here and its API is decoded, a body that decodes exactly). MORE:
    too few bytes to tell. A response alone (only a correlation id) is NO: the request side decides.
    Mid-stream captures: YES also when a request header that passes the same test (whole request
    present and decoding exactly, or followed by a second plausible header) starts within the first
    4 KiB.
    """
    v = request_verdict(data, 0)
    if v != Verdict.NO:
        return v
    start = 1
    while start < min(len(data), SCAN_LIMIT):
        at, yes = find_request(data, start, SCAN_LIMIT + 14)
        if at < 0 or not yes:
            return Verdict.NO
        size = int.from_bytes(data[at : at + 4], "big")
        nxt = at + 4 + size
        # a strong candidate: the whole request decoded (request_verdict checks it when it is all
        # here), or a second plausible header right where the first one ends
        if nxt <= len(data) and (nxt == len(data) or request_verdict(data, nxt) == Verdict.YES):
            whole = _whole_known(data, at)
            if whole or request_verdict(data, nxt) == Verdict.YES:
                return Verdict.YES
        start = at + 1
    return Verdict.NO


def _whole_known(data: bytes, at: int) -> bool:
    from dissect.kafka.apis import DECODED

    key = int.from_bytes(data[at + 4 : at + 6], "big")
    return key in DECODED


class KafkaAnalyzer:
    """The `dissect.base.Analyzer` for Kafka over TCP."""

    name = "kafka"

    def detect(self, data: bytes, direction: int, port_hint: int | None) -> Verdict:
        return detect(data, direction, port_hint)

    def new(self, ctx: ConnContext, handoff: Handoff | None = None) -> Dissector:
        return KafkaDissector(ctx, handoff)


ANALYZER = KafkaAnalyzer()
