"""Capture-filter expressions (tcpdump syntax) compiled to classic BPF for the kernel.

Why tcpdump: the expression language is libpcap's, and libpcap's compiler is the one every SRE's
filters were written for. `tcpdump -dd -y <DLT> -s <snaplen> EXPR` prints the program as C array rows
without opening any interface (it compiles for the given link type), so no root, no device and no
binding to libpcap are needed. When tcpdump is not installed the error says how to get it, or to run
without a capture filter.

Known difference from a live tcpdump: for `vlan` expressions a live libpcap on Linux emits code that
reads the VLAN tag the driver stripped (SKF_AD_VLAN_TAG_PRESENT); compiled without a device the code
looks for the tag inside the frame, which the kernel has already taken out, so `vlan` filters do not
match offloaded tags.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from functools import lru_cache

BPFProgram = list[tuple[int, int, int, int]]

#: pcap LINKTYPE -> the DLT name tcpdump's -y takes
_DLT_NAMES = {
    1: "EN10MB",
    101: "RAW",
    113: "LINUX_SLL",
    276: "LINUX_SLL2",
    12: "RAW",
    228: "IPV4",
    229: "IPV6",
}
_ROW = re.compile(r"\{\s*(0x[0-9a-fA-F]+),\s*(\d+),\s*(\d+),\s*(0x[0-9a-fA-F]+)\s*\},?")
_MAX_EXPR = 64 << 10
_MAX_INSNS = 4096  # the kernel's BPF_MAXINSNS
#: where to look when tcpdump is not on PATH (a service's PATH often lacks /usr/sbin)
TCPDUMP_PATHS: tuple[str, ...] = ("/usr/sbin/tcpdump", "/usr/bin/tcpdump")


class CaptureFilterError(Exception):
    """The capture filter cannot be compiled. The message is one line that says what to do."""


def compile_filter(expr: str, linktype: int = 1, snaplen: int = 262144) -> BPFProgram:
    """The classic BPF program for `expr` on frames of `linktype`, as (code, jt, jf, k) rows.

    Cached per (expr, linktype, snaplen): re-attaching the same filter to a new interface costs no
    process start. Raises CaptureFilterError with tcpdump's own message for a wrong expression.
    """
    return list(_compile(expr, linktype, snaplen))


@lru_cache(maxsize=64)
def _compile(expr: str, linktype: int, snaplen: int) -> tuple[tuple[int, int, int, int], ...]:
    dlt = _DLT_NAMES.get(linktype)
    if dlt is None:
        raise CaptureFilterError(
            f"capture filters are not supported on link type {linktype}: drop --capture-filter"
        )
    if not 0 < snaplen <= 262144:
        raise CaptureFilterError(f"snap length must be 1 to 262144 bytes, not {snaplen}")
    if len(expr) > _MAX_EXPR or "\0" in expr:
        raise CaptureFilterError("the capture filter is too long or contains a NUL byte")
    tcpdump = shutil.which("tcpdump") or next((p for p in TCPDUMP_PATHS if os.access(p, os.X_OK)), None)
    if tcpdump is None:
        raise CaptureFilterError(
            "compiling a capture filter needs tcpdump: install tcpdump (apt-get install tcpdump)"
            " or drop --capture-filter"
        )
    try:
        res = subprocess.run(
            [tcpdump, "-dd", "-y", dlt, "-s", str(snaplen), "--", expr],
            capture_output=True,
            text=True,
            timeout=30,
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        raise CaptureFilterError(f"could not run {tcpdump} to compile the capture filter: {e}") from None
    if res.returncode != 0:
        msg = " ".join(line.strip() for line in res.stderr.splitlines() if line.strip()) or "no message"
        msg = msg.removeprefix("tcpdump: ")
        raise CaptureFilterError(f"bad capture filter {expr!r}: {msg}")
    rows = tuple(
        (int(m.group(1), 16), int(m.group(2)), int(m.group(3)), int(m.group(4), 16))
        for m in _ROW.finditer(res.stdout)
    )
    if not rows or len(rows) > _MAX_INSNS:
        raise CaptureFilterError(
            f"tcpdump compiled {expr!r} into {len(rows)} instructions; the kernel takes 1 to {_MAX_INSNS}:"
            " simplify the filter"
        )
    return rows
