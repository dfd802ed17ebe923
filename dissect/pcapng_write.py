"""Writing pcapng, sans-IO: functions that return the bytes of each block; the caller writes them.

    w = PcapngWriter()
    out.write(w.header())                                  # Section Header Block
    for ts_ns, linktype, data, orig_len in frames:
        out.write(w.packet(ts_ns, linktype, data, orig_len))  # an IDB the first time a linktype is seen

Why pcapng and not pcap: one file can hold frames of several link types (a node captures Ethernet
and Linux cooked frames, and tools may add others), and
timestamps keep their nanoseconds (`if_tsresol` = 9). Every block is little-endian, as the spec
allows (readers honour the byte-order magic). `orig_len` is kept as captured, so a frame cut by a
snap length still says how long it was on the wire (Wireshark shows "[Packet size limited during
capture]"). Nothing here does I/O, so the hub's export stream and the node worker share it.
"""

from __future__ import annotations

import struct

BT_SHB = 0x0A0D0D0A
BT_IDB = 0x00000001
BT_EPB = 0x00000006
BYTE_ORDER_MAGIC = 0x1A2B3C4D

OPT_END = 0
OPT_SHB_USERAPPL = 4
OPT_IF_NAME = 2
OPT_IF_TSRESOL = 9

MAX_SNAPLEN = 262144  # tcpdump's default and largest snap length; the IDB's snaplen
_U32 = 0xFFFFFFFF

_hdr = struct.Struct("<II")
_epb = struct.Struct("<IIIIIII")  # type, total length, interface, ts high, ts low, caplen, orig_len


def _pad(n: int) -> int:
    return -n % 4


def option(code: int, value: bytes) -> bytes:
    """One option: code, length, value padded to 32 bits."""
    return struct.pack("<HH", code, len(value)) + value + b"\0" * _pad(len(value))


def _block(block_type: int, body: bytes) -> bytes:
    total = 12 + len(body)
    return _hdr.pack(block_type, total) + body + struct.pack("<I", total)


def section_header(application: str = "podshark") -> bytes:
    """The Section Header Block that starts the file (section length unknown: -1)."""
    opts = option(OPT_SHB_USERAPPL, application.encode()) + option(OPT_END, b"")
    return _block(BT_SHB, struct.pack("<IHHq", BYTE_ORDER_MAGIC, 1, 0, -1) + opts)


def interface_description(linktype: int, snaplen: int = MAX_SNAPLEN, name: str | None = None) -> bytes:
    """An Interface Description Block for `linktype`, with nanosecond timestamps (if_tsresol=9)."""
    if not 0 <= linktype <= 0xFFFF:
        raise ValueError(f"linktype {linktype} does not fit pcapng's 16 bits")
    opts = option(OPT_IF_TSRESOL, bytes([9]))
    if name:
        opts += option(OPT_IF_NAME, name.encode())
    opts += option(OPT_END, b"")
    return _block(BT_IDB, struct.pack("<HHI", linktype, 0, snaplen) + opts)


def enhanced_packet(interface_id: int, ts_ns: int, data: bytes, orig_len: int | None = None) -> bytes:
    """An Enhanced Packet Block: `data` as captured, `orig_len` its length on the wire (at least
    `len(data)`; a smaller value is raised to it, as readers reject caplen > orig_len)."""
    caplen = len(data)
    wire = caplen if orig_len is None or orig_len < caplen else min(orig_len, _U32)
    ts = max(ts_ns, 0)
    total = 32 + caplen + _pad(caplen)
    return b"".join(
        (
            _epb.pack(BT_EPB, total, interface_id, (ts >> 32) & _U32, ts & _U32, caplen, wire),
            data,
            b"\0" * _pad(caplen),
            struct.pack("<I", total),
        )
    )


def estimated_size(frames: int, captured_bytes: int) -> int:
    """About how many bytes a pcapng of `frames` frames holding `captured_bytes` takes (an
    Enhanced Packet Block adds 32 bytes and up to 3 of padding per frame; the section and interface
    headers add a few dozen): for progress bars of a download whose exact length is not sent."""
    return captured_bytes + 36 * frames + 64


class PcapngWriter:
    """One section: the header, then packets; an interface per link type, declared on first use."""

    def __init__(self, application: str = "podshark") -> None:
        self.application = application
        self.interfaces: dict[int, int] = {}  # linktype -> interface id
        self.packets = 0

    def header(self) -> bytes:
        return section_header(self.application)

    def packet(self, ts_ns: int, linktype: int, data: bytes, orig_len: int | None = None) -> bytes:
        """The EPB of one frame, preceded by its interface's IDB when this linktype is new."""
        iface = self.interfaces.get(linktype)
        head = b""
        if iface is None:
            iface = self.interfaces[linktype] = len(self.interfaces)
            head = interface_description(linktype)
        self.packets += 1
        return head + enhanced_packet(iface, ts_ns, data, orig_len)
