"""L2–L4 header decoding on the hot path: frame bytes in, transport payload out.

This runs once per packet, so it is written as straight-line code over ``bytes`` indexing and
``struct.unpack_from`` — no per-layer objects (dpkt objects cost several microseconds a packet;
this costs well under one). Unusual shapes (IP options, IPv6 extension headers, fragments) take
slower branches; the common Ethernet/IPv4/TCP case takes the fewest steps.

`decode` returns an `L4` tuple: ``(proto, src, dst, data, off, end, missing)`` where ``src`` and
``dst`` are the raw address bytes (4 or 16), ``data[off:end]`` is the transport header + payload,
and ``missing`` counts bytes of the IP datagram that the snap length cut off.
"""

from __future__ import annotations

import ipaddress

from dissect.ipfrag import Fragments

L4 = tuple[int, bytes, bytes, bytes, int, int, int]

# link-layer types (https://www.tcpdump.org/linktypes.html)
LINKTYPE_NULL = 0
LINKTYPE_ETHERNET = 1
LINKTYPE_RAW = 101
LINKTYPE_RAW_OLD_12 = 12
LINKTYPE_RAW_OLD_14 = 14
LINKTYPE_LOOP = 108
LINKTYPE_LINUX_SLL = 113
LINKTYPE_IPV4 = 228
LINKTYPE_IPV6 = 229
LINKTYPE_LINUX_SLL2 = 276

IPPROTO_TCP = 6
IPPROTO_UDP = 17

_ETH_VLAN = (0x8100, 0x88A8, 0x9100)
_V6_EXT = (0, 43, 60)  # hop-by-hop, routing, destination options: skipped
_AF_INET6 = (10, 24, 28, 30)  # BSD loopback AF_INET6 values differ by OS


def _l3(linktype: int, f: bytes) -> int:
    """Offset of the IP header in the frame, or -1 when it is not IP."""
    n = len(f)
    if linktype in (LINKTYPE_ETHERNET, LINKTYPE_LINUX_SLL):
        off = 14 if linktype == LINKTYPE_ETHERNET else 16  # the EtherType ends the fixed header
        if n < off:
            return -1
        et = f[off - 2] << 8 | f[off - 1]
        while et in _ETH_VLAN and n >= off + 4:  # 802.1Q / 802.1ad tags, any depth
            et = f[off + 2] << 8 | f[off + 3]
            off += 4
        return off if et in (0x0800, 0x86DD) else -1
    if linktype == LINKTYPE_LINUX_SLL2:
        if n < 20:
            return -1
        et = f[0] << 8 | f[1]
        return 20 if et in (0x0800, 0x86DD) else -1
    if linktype in (LINKTYPE_RAW, LINKTYPE_RAW_OLD_12, LINKTYPE_RAW_OLD_14, LINKTYPE_IPV4, LINKTYPE_IPV6):
        return 0
    if linktype in (LINKTYPE_NULL, LINKTYPE_LOOP):
        if n < 4:
            return -1
        # NULL stores the AF in host byte order; LOOP in network order. Accept either.
        fam = int.from_bytes(f[:4], "little")
        if fam > 0xFFFF:
            fam = int.from_bytes(f[:4], "big")
        return 4 if fam == 2 or fam in _AF_INET6 else -1
    return -1


def decode(linktype: int, f: bytes, frags: Fragments, ts: int) -> L4 | None:
    """The transport segment of a frame, reassembling IP fragments through ``frags``.

    Returns None for anything that is not (yet) a complete TCP/UDP segment: other protocols,
    runt frames, fragments still waiting for their siblings.
    """
    if linktype == LINKTYPE_ETHERNET and len(f) >= 34 and f[12] == 8 and f[13] == 0:
        off = 14  # fast path: untagged Ethernet + IPv4
    else:
        off = _l3(linktype, f)
        if off < 0 or len(f) < off + 20:
            return None
    v = f[off] >> 4
    if v == 4:
        ihl = (f[off] & 15) << 2
        if ihl < 20:
            return None
        total = f[off + 2] << 8 | f[off + 3]
        end = off + total
        if total == 0:  # TSO on the capturing host: the length field is not filled in
            end = len(f)
        elif total < ihl:
            return None
        missing = end - len(f) if end > len(f) else 0
        if missing:
            end = len(f)
        proto = f[off + 9]
        src = f[off + 12 : off + 16]
        dst = f[off + 16 : off + 20]
        fragword = f[off + 6] << 8 | f[off + 7]
        if fragword & 0x3FFF:  # more-fragments set or a non-zero offset
            if missing:
                return None  # a cut fragment cannot be reassembled
            key = (src, dst, f[off + 4 : off + 6], proto)
            whole = frags.add(key, (fragword & 0x1FFF) << 3, bool(fragword & 0x2000), f[off + ihl : end], ts)
            if whole is None:
                return None
            return proto, src, dst, whole, 0, len(whole), 0
        return proto, src, dst, f, off + ihl, end, missing
    if v == 6:
        if len(f) < off + 40:
            return None
        plen = f[off + 4] << 8 | f[off + 5]
        nh = f[off + 6]
        src = f[off + 8 : off + 24]
        dst = f[off + 24 : off + 40]
        p = off + 40
        end = p + plen if plen else len(f)  # plen 0: jumbogram / TSO
        missing = end - len(f) if end > len(f) else 0
        if missing:
            end = len(f)
        while nh in _V6_EXT:
            if p + 2 > end:
                return None
            nh, hlen = f[p], (f[p + 1] + 1) << 3
            p += hlen
        if nh == 44:  # fragment header
            if p + 8 > end or missing:
                return None
            nh2 = f[p]
            offword = f[p + 2] << 8 | f[p + 3]
            key = (src, dst, f[p + 4 : p + 8], nh2)
            whole = frags.add(key, offword & 0xFFF8, bool(offword & 1), f[p + 8 : end], ts)
            if whole is None:
                return None
            q = 0  # extension headers may also follow the fragment header (RFC 8200 §4.1)
            while nh2 in _V6_EXT:
                if q + 2 > len(whole):
                    return None
                nh2, q = whole[q], q + ((whole[q + 1] + 1) << 3)
            if q > len(whole):
                return None
            return nh2, src, dst, whole, q, len(whole), 0
        if p > end:
            return None
        return nh, src, dst, f, p, end, missing
    return None


def ip_text(raw: bytes) -> str:
    """Printable form of a raw 4- or 16-byte address (compressed IPv6, as Wireshark shows it)."""
    if len(raw) == 4:
        return f"{raw[0]}.{raw[1]}.{raw[2]}.{raw[3]}"
    return str(ipaddress.IPv6Address(raw))


__all__ = ["IPPROTO_TCP", "IPPROTO_UDP", "L4", "decode", "ip_text"]
