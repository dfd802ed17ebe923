"""`podshark dissect FILE`: a capture's calls as a table, or as JSON lines with --json."""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
import sys
import time
from typing import TextIO

from dissect.base import Limits
from dissect.engine import file_engine
from dissect.model import Call
from dissect.pcapio import CaptureError
from dissect.tls.keylog import KeyLog, KeyLogError
from podshark.progress import Progress

EXIT_INPUT = 2
PROGRESS_MIN_BYTES = 8 << 20


def load_keylog(path: str | None) -> KeyLog | None:
    """The --keylog file, or None without the option. Raises `KeyLogError` (one line to print)."""
    if path is None:
        return None
    log = KeyLog.from_path(path)
    if not len(log):
        raise KeyLogError(
            f"{path}: no TLS secrets in this file ({log.summary()}); a key log has lines like "
            "'CLIENT_RANDOM <hex> <hex>', written by clients started with SSLKEYLOGFILE set"
        )
    return log


def run(args: argparse.Namespace) -> int:
    limits = Limits()
    if args.max_body is not None:
        limits.max_body = args.max_body
    try:
        keylog = load_keylog(getattr(args, "keylog", None))
        reader, engine, secrets = file_engine(args.file, limits, keylog)
    except (CaptureError, KeyLogError) as e:
        print(f"podshark: error: {e}", file=sys.stderr)
        return EXIT_INPUT
    tls = TlsTally()
    show = args.progress == "always" or (
        args.progress == "auto" and reader.size >= PROGRESS_MIN_BYTES and sys.stderr.isatty()
    )
    progress = Progress(reader.size, os.path.basename(args.file), enabled=show)
    out = sys.stdout
    if args.json:
        writer: JsonWriter | TableWriter = JsonWriter(out, bodies=not args.no_bodies)
    else:
        width = None
        if out.isatty() and not args.wide:
            width = max(shutil.get_terminal_size().columns - (TableWriter.FIXED + 1), 20)
        writer = TableWriter(out, target_width=width)
    started = time.monotonic()
    try:
        for n, call in enumerate(engine.run(reader), 1):
            tls.add(call)
            writer.write(call)
            if show and not n & 255:
                progress.update(reader.position(), engine.packets, n)
        writer.close()
        out.flush()
    except BrokenPipeError:
        # `podshark dissect big.pcap | head`: the reader went away; that is not an error.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    finally:
        progress.close()
        reader.close()
    for w in reader.stats.warnings:
        print(f"podshark: warning: {w}", file=sys.stderr)
    if len(secrets):
        print(f"podshark: {tls.summary(secrets)}", file=sys.stderr)
    if sys.stderr.isatty() or args.progress == "always":
        took = time.monotonic() - started
        print(
            f"{engine.calls:,} calls from {engine.packets:,} packets in {took:.2f}s",
            file=sys.stderr,
        )
    return 0


class TlsTally:
    """How many TLS sessions were decrypted and why the others were not, for one closing line."""

    def __init__(self) -> None:
        self.decrypted: set[str] = set()  # flow ids
        self.opaque: dict[str, int] = {}  # reason -> sessions

    def add(self, call: Call) -> None:
        if call.info.get("tls_source") == "keylog":
            self.decrypted.add(call.flow_id or call.id)
        elif call.protocol == "tls":
            why = call.info.get("keylog") or "no keys"
            self.opaque[why] = self.opaque.get(why, 0) + 1

    def summary(self, keylog: KeyLog) -> str:
        n = len(self.decrypted)
        text = f"TLS: {n} session{'s' if n != 1 else ''} decrypted"
        for why, count in sorted(self.opaque.items(), key=lambda kv: -kv[1]):
            text += f"; {count} not: {why}"
        return f"{text} ({keylog.summary()})"


class JsonWriter:
    """JSON lines, encoded straight into one buffer and written a megabyte at a time."""

    def __init__(self, out: TextIO, bodies: bool = True) -> None:
        self.text = out
        self.out = getattr(out, "buffer", None)
        self.bodies = bodies
        self.buf = bytearray()

    def write(self, call: Call) -> None:
        call.encode_into(self.buf, self.bodies)
        if len(self.buf) >= 1 << 20:
            self.flush()

    def flush(self) -> None:
        if self.buf:
            if self.out is not None:
                self.text.flush()
                self.out.write(self.buf)
            else:
                self.text.write(self.buf.decode())
            self.buf.clear()

    def close(self) -> None:
        self.flush()


DAY_NS = 86_400 * 1_000_000_000


def fmt_time(ts: int | None) -> str:
    """HH:MM:SS.mmm in UTC, by integer arithmetic (this runs once per row)."""
    if ts is None:
        return "-"
    ms = (ts % DAY_NS) // 1_000_000
    s, ms = divmod(ms, 1000)
    m, s = divmod(s, 60)
    h, m = divmod(m, 60)
    return f"{h:02d}:{m:02d}:{s:02d}.{ms:03d}"


def fmt_latency(ns: int | None) -> str:
    if ns is None:
        return "-"
    if ns < 1_000_000:
        return f"{ns / 1000:.0f}µs"
    if ns < 1_000_000_000:
        return f"{ns / 1e6:.1f}ms"
    return f"{ns / 1e9:.2f}s"


def fmt_size(n: int | None) -> str:
    if n is None:
        return "-"
    if n < 1024:
        return f"{n}B"
    if n < 1 << 20:
        return f"{n / 1024:.1f}K"
    return f"{n / (1 << 20):.1f}M"


class TableWriter:
    """A readable, aligned table: one call per line, the date once per day in a heading."""

    TARGET = 40  # column width when targets are printed whole (they may overflow it)

    # columns other than TARGET; on a terminal TARGET gets what is left of the width
    FIXED = 12 + 1 + 6 + 1 + 8 + 1 + 6 + 1 + 8 + 1 + 7 + 2 + 44 + 1 + 16

    def __init__(self, out: TextIO, target_width: int | None = None) -> None:
        self.out = out
        self.target_width = target_width  # None: targets in full (pipes, files, --wide)
        self.col = self.TARGET if target_width is None else target_width
        self.day = -1
        self.lines: list[str] = [
            f"{'TIME':<12} {'PROTO':<6} {'METHOD':<8} {'TARGET':<{self.col}} {'STATUS':>6} {'LATENCY':>8} "
            f"{'SIZE':>7}  {'CLIENT -> SERVER':<44} FLAGS"
        ]
        self._second = -1
        self._hms = ""
        self._peers: tuple[object, object, str] = (None, None, "")

    def write(self, call: Call) -> None:
        ts = call.ts
        second = ts // 1_000_000_000
        if second != self._second:  # the date line and HH:MM:SS change at most once a second
            self._second = second
            day = ts // DAY_NS
            if day != self.day:
                self.day = day
                date = dt.datetime.fromtimestamp(day * 86_400, tz=dt.UTC).strftime("%Y-%m-%d UTC")
                self.lines.append(f"# {date}")
            self._hms = fmt_time(ts)[:8]
        src, dst = call.src, call.dst
        cached = self._peers
        if cached[0] is src and cached[1] is dst:  # every call of a connection shares its endpoints
            peers = cached[2]
        else:
            peers = f"{src.address()} -> {dst.address()}"
            self._peers = (src, dst, peers)
        resp = call.response
        status = call.status
        target = call.target or "-"
        if "\n" in target:
            target = target.replace("\n", "\\n")
        tw = self.target_width
        if tw is not None and len(target) > tw:
            target = target[: tw - 1] + "…"
        self.lines.append(
            f"{self._hms}.{(ts // 1_000_000) % 1000:03d} {call.protocol:<6} {call.method or '-':<8} "
            f"{target:<{self.col}} {'-' if status is None else status:>6} {fmt_latency(call.latency_ns):>8} "
            f"{fmt_size(None if resp is None else resp.body_size):>7}  {peers:<44} {','.join(call.flags)}"
        )
        if len(self.lines) >= 256:
            self.flush()

    def flush(self) -> None:
        if self.lines:
            self.out.write("\n".join(self.lines) + "\n")
            self.lines.clear()

    def close(self) -> None:
        self.flush()
