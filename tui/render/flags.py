"""The call's flags, each with a one-line meaning, so `gap` or `hpack-desync` tells the reader
what was lost and what to trust (the vocabulary is `dissect.model.Flag`)."""

from __future__ import annotations

from rich.table import Table
from rich.text import Text

from dissect.model import Flag

MEANINGS: dict[str, str] = {
    Flag.GAP: "bytes of the conversation were never captured; what follows a hole may be partial",
    Flag.SNAPLEN: "packets were cut by the capture's snap length (a gap of known size)",
    Flag.OUT_OF_ORDER: "segments arrived out of order and were put back in order",
    Flag.RETRANSMISSION: "segments or messages were sent twice; the copy was dropped",
    Flag.MID_STREAM: "the capture started inside this connection; its start was not seen",
    Flag.RESPONSE_MISSING: "no response was seen for this request",
    Flag.REQUEST_MISSING: "only the response was seen; the request was lost or before the capture",
    Flag.TRUNCATED: "a body was cut, at the size limit or by lost bytes",
    Flag.PARSE_ERROR: "some bytes did not parse as the protocol; what could be read is kept",
    Flag.HPACK_DESYNC: "HTTP/2 header compression state was unknown; some header names are guesses",
    Flag.SERVER_PUSH: "a response the server pushed (HTTP/2 PUSH_PROMISE), not requested",
    Flag.RESET: "the stream was reset (HTTP/2 RST_STREAM) before it finished",
    Flag.GOAWAY: "the connection was closing (HTTP/2 GOAWAY) while this call was open",
    Flag.UPGRADE: "the connection switched protocols after this call (101 or CONNECT)",
    Flag.ENCRYPTED: "TLS without the plaintext: only the handshake is known",
    Flag.REDACTED: "some header or body values were redacted by the worker",
}

#: flags that mean the record is incomplete (shown in yellow) rather than merely informative
WARNINGS = frozenset(
    {
        Flag.GAP,
        Flag.SNAPLEN,
        Flag.RESPONSE_MISSING,
        Flag.REQUEST_MISSING,
        Flag.TRUNCATED,
        Flag.PARSE_ERROR,
        Flag.HPACK_DESYNC,
        Flag.RESET,
    }
)


def meaning(flag: str) -> str:
    return MEANINGS.get(flag, "(a flag this version of podshark does not know)")


def flags_view(flags: list[str]) -> Table | Text:
    """A table of flag and meaning, or a line saying nothing unusual happened."""
    if not flags:
        return Text("none: the call was seen whole", style="green")
    t = Table.grid(padding=(0, 2))
    t.add_column(no_wrap=True)
    t.add_column(overflow="fold")
    for f in flags:
        t.add_row(Text(f, style="bold yellow" if f in WARNINGS else "bold"), meaning(f))
    return t
