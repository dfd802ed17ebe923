"""AF_PACKET capture through a TPACKET_V3 memory-mapped ring, one socket per interface.

Why TPACKET_V3: the kernel writes frames straight into a ring of blocks shared with us and hands over a
whole block at a time (when it is full, or `retire_ms` after its first frame), so reading costs no
system call per packet (recv() from Python manages ~50k packets/s). The read loop (`Ring._read_block`)
is written for speed: one `struct.unpack_from` per frame header, its packet-type byte (for the
interface counters), one bytes copy per frame (slicing the mmap), one tuple per frame, nothing
else; it reads 1.2-1.9 million frames/s per core (64- to 1500-byte frames from tcpreplay on a veth,
measured before the interface counters were added), so the time goes to what the caller does.

Frames arrive as the kernel's taps see them, which differs from the wire in ways that matter:

- veth and `lo` carry GSO/GRO super-frames of up to 64 KiB (more with BIG TCP). TPACKET_V3 packs
  variable-size frames into blocks, so a block (1 MiB by default) holds the largest frame whole; a frame
  that still does not fit is cut by the kernel (tp_snaplen < tp_len) and is passed on with
  orig_len = tp_len, which the engine treats as a gap of known size.
- On `lo` every packet passes the tap twice, once leaving (PACKET_OUTGOING) and once arriving. We ask the
  kernel not to give us outgoing frames there (PACKET_IGNORE_OUTGOING; if the kernel refuses, the
  read loop skips them), so each packet is seen once, as libpcap does.
- Checksums of locally sent packets are often not computed yet (checksum offload): they are never
  looked at here, and a packet is never dropped for one.
- Traffic per interface (`Ring.traffic`): every frame the ring delivers is counted as received or
  sent by its packet type (PACKET_OUTGOING is sent), in bytes as `tp_len` says, which is what the
  kernel's /sys/class/net/IF/statistics count (link-layer header included, a GSO super-frame as one
  packet). Frames the capture filter refused or the ring dropped are not counted. On `lo` the kernel
  does not hand us outgoing frames, everything looped is both sent and received (sent = received),
  and its counters leave out the 14-byte Ethernet header its taps show (so do ours).
- A VLAN tag the kernel took out of the frame into packet metadata (the receive path does that before
  the taps see it; NICs and veth with VLAN offload do it on send) is put back, as libpcap does, so
  frames equal tcpdump's byte for byte.

Socket set-up order matters: the socket is created with protocol 0 (it receives nothing), the ring and
the filter are installed, and only then is it bound to the interface with ETH_P_ALL. A socket created
with ETH_P_ALL would receive every interface's packets, unfiltered, until bound.

Only socket, mmap, select and struct from the standard library (ctypes for the filter program); no
third-party code runs in the capture path.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import mmap
import operator
import os
import select
import socket
import struct
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import NamedTuple

# --- constants from <linux/if_packet.h>, <linux/if_ether.h>, <linux/if_arp.h>, <asm/socket.h> ---
SOL_PACKET = 263
PACKET_RX_RING = 5
PACKET_STATISTICS = 6
PACKET_VERSION = 10
PACKET_FANOUT = 18
PACKET_IGNORE_OUTGOING = 23
TPACKET_V3 = 2
SO_ATTACH_FILTER = 26
SO_DETACH_FILTER = 27
ETH_P_ALL = 0x0003
_SIOCGIFHWADDR = 0x8927

PACKET_OUTGOING = 4  # sll_pkttype of a frame the host sends

FANOUT_HASH = 0  # by the symmetric flow hash: both directions of a flow to the same member
FANOUT_LB = 1  # round robin
FANOUT_CPU = 2  # by the CPU that received the packet
FANOUT_ROLLOVER = 3
FANOUT_RND = 4
FANOUT_QM = 5  # by the receive queue
PACKET_FANOUT_FLAG_DEFRAG = 0x8000  # reassemble IP fragments before hashing, so they stay together
_FANOUT_MODES = frozenset({FANOUT_HASH, FANOUT_LB, FANOUT_CPU, FANOUT_ROLLOVER, FANOUT_RND, FANOUT_QM})

TP_STATUS_KERNEL = 0
TP_STATUS_USER = 1
TP_STATUS_VLAN_VALID = 1 << 4
TP_STATUS_VLAN_TPID_VALID = 1 << 6

ARPHRD_ETHER = 1
ARPHRD_LOOPBACK = 772
ARPHRD_RAWIP = 519
ARPHRD_NONE = 0xFFFE
ARPHRD_TUNNEL = 768  # ipip
ARPHRD_TUNNEL6 = 769  # ip6tnl
ARPHRD_SIT = 776  # sit (6in4)

LINKTYPE_ETHERNET = 1
LINKTYPE_RAW = 101

#: ARPHRD (the device's hardware type) -> the pcap LINKTYPE of the frames a SOCK_RAW packet socket
#: gives on it. Loopback frames carry a (zeroed) Ethernet header. tun, WireGuard (ARPHRD_NONE), raw-IP
#: modems and IP-in-IP tunnels carry no link header at all: the frame starts with the IP header.
ARPHRD_TO_LINKTYPE: dict[int, int] = {
    ARPHRD_ETHER: LINKTYPE_ETHERNET,
    ARPHRD_LOOPBACK: LINKTYPE_ETHERNET,
    ARPHRD_NONE: LINKTYPE_RAW,
    ARPHRD_RAWIP: LINKTYPE_RAW,
    ARPHRD_TUNNEL: LINKTYPE_RAW,
    ARPHRD_TUNNEL6: LINKTYPE_RAW,
    ARPHRD_SIT: LINKTYPE_RAW,
}

# --- ring layout ---
_BLOCK_STATUS = 8  # struct tpacket_block_desc: version, offset_to_priv, then tpacket_hdr_v1
_BLOCK_HDR = struct.Struct("<II")  # num_pkts, offset_to_first_pkt (at offset 12)
# struct tpacket3_hdr: tp_next_offset, tp_sec, tp_nsec, tp_snaplen, tp_len, tp_status, tp_mac, and,
# in the same unpack (cheaper than indexing the map again), the sockaddr_ll's sll_pkttype
_SLL_PKTTYPE = 48 + 10  # sockaddr_ll follows the 48-byte tpacket3_hdr; sll_pkttype is its byte 10
_FRAME_HDR = struct.Struct(f"<IIIIIIH{_SLL_PKTTYPE - 26}xB")
_VLAN = struct.Struct("<IHH")  # tp_vlan_tci, tp_vlan_tpid, padding (at offset 32 of tpacket3_hdr)
_ETH_HEADER = 14
_FRAME_SIZE = 2048  # TPACKET_V3 packs frames of any size into a block; this only has to be valid
_MIN_BLOCK = 1 << 17  # 128 KiB: holds a 64 KiB GSO frame with its headers
_STATS_V3 = struct.Struct("<III")  # tp_packets (includes drops), tp_drops, tp_freeze_q_cnt
_NS = 1_000_000_000

#: (ts_ns, linktype, frame, orig_len) — the same shape `dissect` reads from capture files
Frame = tuple[int, int, bytes, int]
#: a classic BPF program: (code, jt, jf, k) rows, as `capture.capture_filter.compile_filter` gives
BPF = Sequence[tuple[int, int, int, int]]
#: a program, or a function of the interface's LINKTYPE giving one (None: no filter)
BPFArg = BPF | Callable[[int], BPF | None] | None


class CaptureError(Exception):
    """Capturing cannot start or go on. The message is one line that says what to do."""


class RingStats(NamedTuple):
    """Cumulative counters of one ring since it was opened.

    `packets` were delivered into the ring; `drops` passed the filter but found the ring full (the
    reader was too slow); `freezes` counts the times the kernel found every block still held by the
    reader. `packets + drops` is what the filter accepted (tcpdump's "received by filter").
    """

    packets: int
    drops: int
    freezes: int

    @property
    def received(self) -> int:
        return self.packets + self.drops


class _SockFilter(ctypes.Structure):
    _fields_ = (
        ("code", ctypes.c_uint16),
        ("jt", ctypes.c_uint8),
        ("jf", ctypes.c_uint8),
        ("k", ctypes.c_uint32),
    )


class _SockFprog(ctypes.Structure):
    _fields_ = (("len", ctypes.c_uint16), ("filter", ctypes.POINTER(_SockFilter)))


def _arphrd(sock: socket.socket, ifname: str) -> int:
    """The interface's hardware type (ARPHRD_*), asked before binding (SIOCGIFHWADDR)."""
    try:
        ifreq = fcntl.ioctl(sock, _SIOCGIFHWADDR, struct.pack("16sH14x", ifname.encode()[:15], 0))
    except OSError:
        raise CaptureError(f"no interface named {ifname!r} (see `ip link`)") from None
    return int(struct.unpack_from("H", ifreq, 16)[0])


def linktype_for_arphrd(arphrd: int) -> int | None:
    """The pcap LINKTYPE of a device's frames, or None when podshark cannot decode them."""
    return ARPHRD_TO_LINKTYPE.get(arphrd)


def attach_bpf(sock: socket.socket, bpf: BPF | None) -> None:
    """Install a classic BPF program (a list of (code, jt, jf, k)) on `sock`; None removes the filter."""
    if bpf is None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, SO_DETACH_FILTER, 0)
        except OSError as e:
            if e.errno != errno.ENOENT:  # no filter was attached: nothing to remove
                raise
        return
    if not 0 < len(bpf) <= 4096:
        raise CaptureError(f"a capture filter program must have 1 to 4096 instructions, not {len(bpf)}")
    insns = (_SockFilter * len(bpf))()
    try:
        for i, (code, jt, jf, k) in enumerate(bpf):
            insns[i] = _SockFilter(code, jt, jf, k & 0xFFFFFFFF)
    except (TypeError, ValueError, OverflowError) as e:
        raise CaptureError(f"malformed capture filter instruction {i}: {e}") from None
    prog = _SockFprog(len(bpf), insns)
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, bytes(prog))
    except OSError as e:
        raise CaptureError(
            f"the kernel refused the capture filter ({e.strerror}): check --capture-filter"
        ) from None


class Ring:
    """One AF_PACKET socket bound to one interface, with a TPACKET_V3 receive ring.

    `bpf` is a classic BPF program from `capture.capture_filter.compile_filter`, or a function of the
    interface's LINKTYPE returning one (the link type is only known here, and the filter must be in
    place before the socket is bound, or unfiltered frames get in). `fanout` is (group_id, mode):
    sockets on the *same interface* in the same group share its packets, one member each
    (FANOUT_HASH: by the symmetric flow hash, so both directions of a flow go to one member). With
    FANOUT_HASH the kernel reassembles IP fragments before hashing so they follow their flow; the
    member then receives the whole datagram as one frame instead of the fragments. The kernel keeps
    one group per interface, and the member a hash picks is its position in join order; so that one
    flow goes to the same worker on every interface, open each interface's members in the same worker
    order (see `open_fanout`). `skip_outgoing` None means: skip PACKET_OUTGOING frames on loopback only.

    One reader at a time: a Ring is not thread-safe.

    Memory: the ring is `block_size * blocks` bytes of kernel memory (64 MiB by default), mapped into
    this process.
    """

    def __init__(
        self,
        ifname: str,
        *,
        block_size: int = 1 << 20,
        blocks: int = 64,
        retire_ms: int = 50,
        bpf: BPFArg = None,
        fanout: tuple[int, int] | None = None,
        skip_outgoing: bool | None = None,
    ) -> None:
        page = mmap.PAGESIZE
        if block_size < _MIN_BLOCK or block_size % page:
            raise CaptureError(
                f"ring block size must be a multiple of {page} and at least {_MIN_BLOCK} bytes"
                f" (a 64 KiB GSO frame must fit), not {block_size}"
            )
        if blocks < 2:
            raise CaptureError(f"a ring needs at least 2 blocks, not {blocks}")
        if not 0 < retire_ms < 1 << 31:
            raise CaptureError(f"retire_ms must be a positive number of milliseconds, not {retire_ms}")
        self.name = ifname
        self.block_size = block_size
        self.blocks = blocks
        self._sock: socket.socket | None = None
        self._map: mmap.mmap | None = None
        self._cur = 0  # the block the kernel hands over next
        self._pending: Iterator[Frame] = iter(())  # frames of a block read but not yet taken
        self._totals = [0, 0, 0]
        self._traffic = [0, 0, 0, 0]  # rx_packets, rx_bytes, tx_packets, tx_bytes (see `traffic`)
        self._skip_out = False
        self.linktype = LINKTYPE_ETHERNET
        self.arphrd = ARPHRD_ETHER
        #: why capturing on this ring ended (its interface went away), or None
        self.error: str | None = None
        try:
            self.ifindex = socket.if_nametoindex(ifname)
        except OSError:
            raise CaptureError(f"no interface named {ifname!r} (see `ip link`)") from None
        try:
            sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        except PermissionError:
            raise CaptureError(
                "capturing needs root or CAP_NET_RAW: run as root (or grant the process CAP_NET_RAW)"
            ) from None
        self._sock = sock
        try:
            self._setup(sock, block_size, blocks, retire_ms, bpf, fanout, skip_outgoing)
        except BaseException:
            self.close()
            raise

    def _setup(
        self,
        sock: socket.socket,
        block_size: int,
        blocks: int,
        retire_ms: int,
        bpf: BPFArg,
        fanout: tuple[int, int] | None,
        skip_outgoing: bool | None,
    ) -> None:
        ifname = self.name
        try:
            sock.setsockopt(SOL_PACKET, PACKET_VERSION, TPACKET_V3)
        except OSError as e:
            raise CaptureError(
                f"this kernel has no TPACKET_V3 rings ({e.strerror}): Linux 3.2 or newer"
            ) from None
        req = struct.pack(
            "<7I", block_size, blocks, _FRAME_SIZE, (block_size // _FRAME_SIZE) * blocks, retire_ms, 0, 0
        )
        try:
            sock.setsockopt(SOL_PACKET, PACKET_RX_RING, req)
            self._map = mmap.mmap(
                sock.fileno(), block_size * blocks, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE
            )
        except OSError as e:
            raise CaptureError(
                f"cannot set up a {block_size * blocks >> 20} MiB capture ring on {ifname} ({e.strerror}):"
                " free memory or use fewer/smaller blocks"
            ) from None
        hatype = _arphrd(sock, ifname)
        linktype = linktype_for_arphrd(hatype)
        if linktype is None:
            raise CaptureError(
                f"{ifname} has link type ARPHRD {hatype}, whose frames podshark cannot decode:"
                " capture the pod interfaces (veths) instead, or leave it out of --interface"
            )
        self.linktype = linktype
        self.arphrd = hatype
        program = bpf(linktype) if callable(bpf) else bpf
        if program is not None:
            attach_bpf(sock, program)
        try:
            sock.bind((ifname, ETH_P_ALL))
        except OSError as e:
            if e.errno in (errno.ENODEV, errno.ENXIO):
                raise CaptureError(f"no interface named {ifname!r} (see `ip link`)") from None
            raise CaptureError(f"cannot capture on {ifname} ({e.strerror})") from None
        skip = hatype == ARPHRD_LOOPBACK if skip_outgoing is None else skip_outgoing
        if skip:
            try:
                sock.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
            except OSError:
                self._skip_out = True  # kernel older than 4.20: the read loop skips them instead
        if fanout is not None:
            group, mode = fanout
            if not 0 <= group <= 0xFFFF or mode not in _FANOUT_MODES:
                raise CaptureError(f"bad fanout {fanout!r}: group 0-65535 and a FANOUT_* mode")
            flags = PACKET_FANOUT_FLAG_DEFRAG if mode == FANOUT_HASH else 0
            try:
                sock.setsockopt(SOL_PACKET, PACKET_FANOUT, struct.pack("<I", group | (mode | flags) << 16))
            except OSError as e:
                raise CaptureError(
                    f"cannot join fanout group {group} on {ifname} ({e.strerror}):"
                    " the group is in use with another mode or on another interface; pick another group id"
                ) from None
        # The filter was attached before binding, so no unfiltered frame got in. Fanout can only be
        # joined once bound: frames of the microseconds in between reach this member as well as the
        # group's. Harmless (a few packets seen by two members), and unavoidable.

    # --- reading ---

    def fileno(self) -> int:
        if self._sock is None:
            raise CaptureError(f"the capture ring on {self.name} is closed")
        return self._sock.fileno()

    def ready(self) -> bool:
        """True when `packets()` has something to give without waiting."""
        if self._map is None:
            return False
        if operator.length_hint(self._pending):
            return True
        return bool(self._map[self._cur * self.block_size + _BLOCK_STATUS] & TP_STATUS_USER)

    def packets(self) -> Iterator[Frame]:
        """Every frame of every block the kernel has handed over; never blocks.

        Each block goes back to the kernel as soon as its frames are copied out, before they are
        yielded. Stopping early loses nothing: the rest comes first on the next call. When the
        interface has gone away this yields what was left, then nothing (`error` says why).
        """
        yield from self._pending
        while True:
            batch = self._read_block()
            if batch is None:
                return
            self._pending = it = iter(batch)
            yield from it

    def _read_block(self) -> list[Frame] | None:
        m = self._map
        if m is None:
            return None
        base = self._cur * self.block_size
        if not m[base + _BLOCK_STATUS] & TP_STATUS_USER:
            return None
        num, p = _BLOCK_HDR.unpack_from(m, base + 12)
        p += base
        out: list[Frame] = []
        append = out.append
        unpack = _FRAME_HDR.unpack_from
        lt = self.linktype
        skip_out = self._skip_out
        nbytes = txp = txb = 0  # all frames' bytes, sent frames and bytes: received = the rest
        for _ in range(num):
            nxt, sec, nsec, snap, length, status, mac, pkttype = unpack(m, p)
            if pkttype == PACKET_OUTGOING:
                if skip_out:
                    p += nxt
                    continue
                txp += 1
                txb += length
            nbytes += length
            if status & TP_STATUS_VLAN_VALID and lt == LINKTYPE_ETHERNET:
                append((sec * _NS + nsec, lt, self._with_vlan(m, p, mac, snap, status), length + 4))
            else:
                append((sec * _NS + nsec, lt, m[p + mac : p + mac + snap], length))
            p += nxt
        m[base + _BLOCK_STATUS : base + _BLOCK_STATUS + 4] = b"\0\0\0\0"  # back to TP_STATUS_KERNEL
        self._cur = (self._cur + 1) % self.blocks
        t = self._traffic
        t[0] += len(out) - txp
        t[1] += nbytes - txb
        t[2] += txp
        t[3] += txb
        return out

    @staticmethod
    def _with_vlan(m: mmap.mmap, p: int, mac: int, snap: int, status: int) -> bytes:
        """The frame with the 802.1Q tag the driver stripped put back after the MAC addresses."""
        tci, tpid, _ = _VLAN.unpack_from(m, p + 32)
        if not status & TP_STATUS_VLAN_TPID_VALID:
            tpid = 0x8100
        start = p + mac
        return m[start : start + 12] + struct.pack(">HH", tpid, tci) + m[start + 12 : start + snap]

    def _note_error(self) -> bool:
        """poll() reported an error on the socket (the kernel says ENETDOWN when the interface goes
        down or away). Reading SO_ERROR clears it, so poll() does not report it again. True when
        the ring's interface is gone for good."""
        sock = self._sock
        if sock is None or self.error is not None:
            return False
        err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if not self.gone():
            return False  # down, not deleted: the kernel resumes capturing when it comes back up
        why = os.strerror(err) if err else "interface removed"
        self.error = f"capture on {self.name} ended: the interface went away ({why}); close this ring"
        return True

    def gone(self) -> bool:
        """True once the interface this ring was bound to no longer exists (deleted, or moved away)."""
        if self._sock is None:
            return True
        try:
            return self._sock.getsockname()[0] != self.name  # the kernel unbinds it (ifindex -1)
        except OSError:
            return True

    # --- control ---

    def attach_filter(self, bpf: BPF | None) -> None:
        """Replace the capture filter (None: capture everything). Frames already in the ring were
        accepted by the previous filter and are still delivered."""
        if self._sock is None:
            raise CaptureError(f"the capture ring on {self.name} is closed")
        attach_bpf(self._sock, bpf)

    def stats(self) -> RingStats:
        """Counters since open. The kernel resets its counters on every read, so they are summed here."""
        if self._sock is not None:
            raw = self._sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, _STATS_V3.size)
            total, drops, freezes = _STATS_V3.unpack(raw)
            t = self._totals
            t[0] += total - drops
            t[1] += drops
            t[2] += freezes
        return RingStats(*self._totals)

    def traffic(self) -> dict[str, int]:
        """Frames and bytes received and sent on the interface since the ring opened, counted from
        the frames read so far (see the module docstring for what matches the kernel's counters)."""
        rxp, rxb, txp, txb = self._traffic
        if self.arphrd == ARPHRD_LOOPBACK:
            # the kernel counts lo's bytes without the (zeroed) Ethernet header its taps show, and
            # every looped packet as sent and received; we only see it arrive
            rxb -= _ETH_HEADER * rxp
            txp, txb = rxp, rxb
        return {"rx_bytes": rxb, "rx_packets": rxp, "tx_bytes": txb, "tx_packets": txp}

    def close(self) -> None:
        """Unmap the ring and close the socket; safe to call more than once."""
        if self._sock is not None:
            try:
                self.stats()  # keep the final counters readable after close
            except OSError:
                pass
        self._pending = iter(())
        if self._map is not None:
            self._map.close()
            self._map = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def __enter__(self) -> Ring:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._sock is None else f"fd={self._sock.fileno()}"
        return f"Ring({self.name!r}, ifindex={self.ifindex}, {state})"


def wait(rings: Iterable[Ring], timeout: float | None, also: Iterable[int] = ()) -> list[Ring]:
    """The rings with frames ready, waiting up to `timeout` seconds (None: until one is); returns at
    once when a ring already has a block ready. A ring whose interface went away is returned once,
    with its `error` set: read what is left with `packets()`, then close it. File descriptors in
    `also` (the TLS tracer's ring buffer) end the wait too when readable; they are not returned."""
    live = [r for r in rings if r._sock is not None]
    ready = [r for r in live if r.ready()]
    extra = list(also)
    if ready or not (live or extra):
        return ready
    poller = select.poll()
    by_fd = {r.fileno(): r for r in live}
    for fd in by_fd:
        poller.register(fd, select.POLLIN | select.POLLERR)
    for fd in extra:
        poller.register(fd, select.POLLIN)
    ms = None if timeout is None else max(0, int(timeout * 1000))
    try:
        events = poller.poll(ms)
    except InterruptedError:
        events = []
    out = []
    for fd, ev in events:
        ring = by_fd.get(fd)
        if ring is None:
            continue  # one of `also`: the caller looks at it
        ended = bool(ev & (select.POLLERR | select.POLLHUP | select.POLLNVAL)) and ring._note_error()
        if ended or ring.ready():
            out.append(ring)
    return out


def open_fanout(ifname: str, members: int, group_id: int, **ring_args: object) -> list[Ring]:
    """`members` rings on `ifname` in one FANOUT_HASH group, joined in list order.

    The kernel picks a member by its position in join order, so opening every interface's members
    here, in the same worker order, sends a flow to the same worker index on every interface (as
    long as none leaves the group: a member closing reshuffles the positions). Hand ring i of every
    interface to worker i (fork after opening, or pass the fds).
    """
    rings: list[Ring] = []
    try:
        for _ in range(members):
            rings.append(Ring(ifname, fanout=(group_id, FANOUT_HASH), **ring_args))  # type: ignore[arg-type]
    except BaseException:
        for r in rings:
            r.close()
        raise
    return rings
